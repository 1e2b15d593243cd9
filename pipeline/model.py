"""timm backbones: creation with timm, local or hub weights, saving and loading for prediction.

`pretrained` is True (timm's own hub download), False (random init) or a path to a local file
(safetensors or a torch state dict) that timm loads through `pretrained_cfg_overlay`, adapting the
classifier to the competition's number of classes exactly as it does for hub weights.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import numpy as np
import timm
import torch
from safetensors.torch import load_file, save_file
from timm.layers import DropPath
from timm.models import group_parameters
from torch import nn

from pipeline.files import PipelineError, atomic_path, read_json, weights_file, write_json


def create(
    name: str, num_classes: int, pretrained: bool | str, drop_rate: float = 0.0,
    drop_path_rate: float = 0.0,
):  # fmt: skip
    """The timm model; with drop_path_rate, one that has stochastic depth (else refused, named:
    most timm classes without it reject the key, check_drop_path catches one that ignores it)."""
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.75)
        hint = f"did you mean {' or '.join(close)}?" if close else "see timm.list_models()"
        raise PipelineError(f"model '{name}' is not a timm model; {hint}")
    kwargs: dict = {"num_classes": num_classes, "drop_rate": drop_rate}
    if drop_path_rate:  # only when set: today's backbones without stochastic depth still build
        kwargs["drop_path_rate"] = drop_path_rate
    if isinstance(pretrained, str):
        path = weights_file(pretrained)
        check_names(path, name, num_classes)
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(path.resolve())})
    else:
        kwargs["pretrained"] = pretrained
    try:
        net = timm.create_model(name, **kwargs)
    except Exception as e:  # whatever the weights file holds, say what it is
        if isinstance(e, TypeError) and "drop_path_rate" in str(e):
            raise no_drop_path(name) from None  # the model's class takes no such argument
        if isinstance(pretrained, str):
            why = weights_problem(e, name)
            raise PipelineError(f"model.pretrained: {pretrained}: {why}") from None
        if pretrained is True and isinstance(e, (RuntimeError, OSError)):
            raise PipelineError(
                f"could not fetch pretrained weights for '{name}' ({e}); offline, set "
                "model.pretrained to a local weights file"
            ) from None
        raise
    if pretrained is not False:
        zero_new_classifier(net, num_classes)
    return check_drop_path(net, name, drop_path_rate)


def zero_new_classifier(net: nn.Module, num_classes: int) -> None:
    """A new classifier on pretrained features starts at zero (BiT's rule): the first loss is
    ln(classes) and the first steps fit the head. timm's own init of a new head is the one for
    training from scratch; on pretrained features it gives logits of tens (efficientnet's scales
    by 1/sqrt(classes): a 4-class head starts near loss 6) that the first epochs spend undoing.
    timm keeps the file's classifier when the classes match its config's: then nothing is new."""
    if num_classes == net.pretrained_cfg.get("num_classes"):
        return
    last = [m for m in net.get_classifier().modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    for q in last[-1].parameters() if last else ():
        nn.init.zeros_(q)


def check_drop_path(net: nn.Module, name: str, rate: float) -> nn.Module:
    """The model, if a rate above 0 built timm's DropPath layers somewhere in it."""
    if rate and not any(isinstance(m, DropPath) for m in net.modules()):
        raise no_drop_path(name)  # the key was taken and ignored: it would do nothing
    return net


def no_drop_path(name: str) -> PipelineError:
    return PipelineError(
        f"model.drop_path_rate: {name} has no stochastic depth in timm (no DropPath layer); set "
        "model.drop_path_rate: 0 for it, or use a backbone that has it (resnet*, efficientnet*, "
        "convnext*, vit*)"
    )


def check_names(path: Path, name: str, num_classes: int) -> None:
    """Refuse a weights file whose tensor names are not the backbone's: timm drops the classifier
    of the file and then loads non-strictly, so foreign names would leave a random-init network
    with no error at all."""
    try:
        state = timm.models.load_state_dict(str(path))
    except Exception as e:
        raise PipelineError(f"model.pretrained: {path}: {weights_problem(e, name)}") from None
    with torch.device("meta"):  # names and shapes only: no memory, no init time
        net = timm.create_model(name, num_classes=num_classes, pretrained=False)
    why = name_mismatch(shapes(state), shapes(net.state_dict()), classifier_names(net), name)
    if why:
        raise PipelineError(f"model.pretrained: {path}: {why}")


def shapes(state: dict) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape, in order, less BatchNorm's step counters (never needed to load)."""
    return {
        k: tuple(v.shape)
        for k, v in state.items()
        if isinstance(v, torch.Tensor) and not k.endswith("num_batches_tracked")
    }


def classifier_names(net: nn.Module) -> tuple[str, ...]:
    """Prefixes of the classifier's tensors, which timm replaces for the competition's classes."""
    head = net.pretrained_cfg.get("classifier") or ()
    return tuple(f"{c}." for c in ((head,) if isinstance(head, str) else head))


def name_mismatch(file: dict, model: dict, head: tuple[str, ...], name: str) -> str | None:
    """What differs between the file's tensors and the model's (classifiers aside): how many, the
    first in the model's order with the file's nearest candidate, and what to do; None: all fit."""
    file = {k: v for k, v in file.items() if not k.startswith(head)}
    model = {k: v for k, v in model.items() if not k.startswith(head)}
    missing = [k for k in model if k not in file]
    extra = [k for k in file if k not in model]
    if not missing and not extra:
        return None
    if missing:
        k = missing[0]
        alike = [e for e in extra if file[e] == model[k]] or extra  # same shape first
        instead = f"; the file has '{alike[0]}' {file[alike[0]]} unknown to {name}" if alike else ""
        first = f"{name}'s '{k}' {model[k]} is not in the file{instead}"
    else:
        first = f"the file's '{extra[0]}' {file[extra[0]]} has no place in {name}"
    return (
        f"does not fit {name}: {len(missing)} of its {len(model)} tensors are not in the file, "
        f"{len(extra)} of the file's {len(file)} are unknown to it; first, {first}; rename the "
        "file's tensors to timm's names (benchmarks/weights.py does it for EfficientNet-PyTorch "
        "files) or set train.backbones to the architecture the file was saved from"
    )


def weights_problem(e: Exception, name: str) -> str:
    """Why a local weights file does not load, in one line."""
    text = str(e)
    lines = [ln.strip() for ln in text.splitlines()]
    fit = [ln for ln in lines if ln.startswith(("size mismatch", "Missing key", "Unexpected key"))]
    if fit:
        return f"does not fit {name} ({fit[0][:150]}); use weights of this very architecture"
    if "weights_only" in text:
        return (
            "holds pickled Python objects (a whole saved model or custom classes), which are "
            "never unpickled; save model.state_dict() as .safetensors or with torch.save"
        )
    if isinstance(e, AttributeError):  # timm calls .items() on whatever torch.load returned
        return "holds no state dict (tensor names to tensors); save model.state_dict()"
    return f"not a readable weights file, corrupt or truncated ({type(e).__name__}: {text[:80]})"


def data_config(
    model: torch.nn.Module, mean: list[float] | None = None, std: list[float] | None = None
) -> dict:
    """Input normalisation: the params' override, else timm's data config for this model."""
    cfg = timm.data.resolve_model_data_config(model)
    return {"mean": tuple(mean or cfg["mean"]), "std": tuple(std or cfg["std"])}


def input_size(model: torch.nn.Module, size: int | None) -> int:
    """Square input side in px: the params' override, else the model's default (timm)."""
    return size or int(timm.data.resolve_model_data_config(model)["input_size"][-1])


def _fine_groups(model: nn.Module) -> list[list[str]]:
    """Parameter names in input-to-output order, grouped by timm's group_matcher when the model
    has one, otherwise by top-level child module."""
    if hasattr(model, "group_matcher"):
        grouped = group_parameters(model, model.group_matcher(coarse=False))
        return [grouped[k] for k in sorted(grouped)]
    groups: dict[str, list[str]] = {}
    for name, _ in model.named_parameters():
        groups.setdefault(name.split(".")[0], []).append(name)
    return list(groups.values())


def layer_groups(model: nn.Module, n_groups: int) -> list[tuple[str, list[nn.Parameter]]]:
    """`n_groups` contiguous groups of parameters, input side first; the last is the classifier.

    timm's fine groups (stem, stages/blocks, …) are merged into n_groups - 1 body groups of about
    equal numbers of fine groups; the head is exactly `model.get_classifier()`.
    """
    params = dict(model.named_parameters())
    head_ids = {id(p) for p in model.get_classifier().parameters()}
    fine = [[n for n in g if id(params[n]) not in head_ids] for g in _fine_groups(model)]
    seen = {n for g in fine for n in g}
    leftover = [n for n, p in params.items() if n not in seen and id(p) not in head_ids]
    fine = [g for g in fine if g] + ([leftover] if leftover else [])
    chunks = np.array_split(np.arange(len(fine)), min(n_groups - 1, len(fine)))
    groups = [
        (f"body{i}", [params[n] for k in chunk for n in fine[k]]) for i, chunk in enumerate(chunks)
    ]
    return groups + [("head", [p for p in model.get_classifier().parameters()])]


def batchnorm_modules(model: nn.Module, outside: list[nn.Parameter]) -> list[nn.Module]:
    """BatchNorm layers whose parameters are not in `outside` (i.e. those of frozen groups)."""
    keep = {id(p) for p in outside}
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        and not any(id(p) in keep for p in m.parameters(recurse=False))
    ]


def summary(groups: list[tuple[str, list[nn.Parameter]]], trainable: dict[str, set[str]]) -> str:
    """One line per group: parameters, and in which phases it trains."""
    lines = []
    for name, ps in groups:
        phases = [ph for ph, names in trainable.items() if name in names]
        n = sum(p.numel() for p in ps)
        lines.append(f"  {name:<6} {n:>11,} params  trains in: {', '.join(phases) or '-'}")
    return "\n".join(lines)


def save_weights(model: torch.nn.Module, path: Path) -> None:
    """The state dict as one safetensors file, written atomically."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp))


def save(model: torch.nn.Module, folder: Path, info: dict) -> None:
    """Weights as safetensors plus model.json describing how to rebuild the model."""
    save_weights(model, folder / "model.safetensors")
    write_json(folder / "model.json", info)


def load(folder: Path) -> tuple[torch.nn.Module, dict]:
    """Rebuild a model saved by `save` (random init, then the saved weights)."""
    info = read_json(folder / "model.json")
    model = timm.create_model(info["name"], pretrained=False, num_classes=len(info["classes"]))
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    return model.eval(), info
