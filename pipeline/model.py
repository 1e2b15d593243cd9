"""timm backbones: creation with timm, local or hub weights, saving and loading for prediction.

`pretrained` is True (timm's own hub download), False (random init) or a path to a local file
(safetensors or a torch state dict) that timm loads through `pretrained_cfg_overlay`, adapting the
classifier to the competition's number of classes exactly as it does for hub weights.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from safetensors.torch import load_file, save_file

from pipeline.files import PipelineError, atomic_path, read_json, write_json


def create(name: str, num_classes: int, pretrained: bool | str, drop_rate: float = 0.0):
    if not timm.is_model(name):
        raise PipelineError(f"model '{name}' is not a timm model (see timm.list_models())")
    kwargs: dict = {"num_classes": num_classes, "drop_rate": drop_rate}
    if isinstance(pretrained, str):
        path = Path(pretrained)
        if not path.is_file():
            raise PipelineError(f"model.pretrained: weights file '{path}' not found")
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(path.resolve())})
    else:
        kwargs["pretrained"] = pretrained
    try:
        return timm.create_model(name, **kwargs)
    except (RuntimeError, OSError) as e:
        if pretrained is True:
            raise PipelineError(
                f"could not fetch pretrained weights for '{name}' ({e}); offline, set "
                "model.pretrained to a local weights file"
            ) from None
        raise


def data_config(model: torch.nn.Module) -> dict:
    """timm's normalisation for this model (mean/std) as plain tuples."""
    cfg = timm.data.resolve_model_data_config(model)
    return {"mean": tuple(cfg["mean"]), "std": tuple(cfg["std"])}


def save(model: torch.nn.Module, folder: Path, info: dict) -> None:
    """Weights as safetensors plus model.json describing how to rebuild the model."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(folder / "model.safetensors") as tmp:
        save_file(state, str(tmp))
    write_json(folder / "model.json", info)


def load(folder: Path) -> tuple[torch.nn.Module, dict]:
    """Rebuild a model saved by `save` (random init, then the saved weights)."""
    info = read_json(folder / "model.json")
    model = timm.create_model(info["name"], pretrained=False, num_classes=len(info["classes"]))
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    return model.eval(), info
