"""train: fine-tune one timm backbone on one fold's training rows and keep its best epoch.

    python -m pipeline train --model resnet10t --fold 0             # a teacher
    python -m pipeline train --model resnet10t --fold 0 --student   # fold 0's student
    accelerate launch -m pipeline train --model resnet10t --fold 0  # several GPUs or nodes

Phase 1 (`head.epochs`): everything but the classifier frozen — optionally on backbone features
computed once (`head.precompute`). Phase 2 (`train.epochs`): all layer groups trainable with
learning rates spread geometrically from lr / lr_mult (input side) to lr (head), under 1cycle or
SGDR. `lr: auto` runs the LR range test before the phase.

A student (`--student`) is the same run with other inputs: fold k's pseudolabels
(pseudo/fold<k>/labels.csv) mixed into every batch at pseudo:labeled = 1:pseudo.ratio, their loss
weighted by pseudo.weight; `pseudo.epochs` and `pseudo.lr` instead of train's; weights starting
from fold k's teacher (`pseudo.init: teacher`, no head phase) or afresh (`scratch`). Validation
is fold k's real labels only. A student is named by its teacher (`--model` is one of
train.backbones, and so are its folders); it trains the teacher's backbone, or the one
pseudo.backbones maps that teacher to (model.json names what it is).

Reads base, model, head, lr_find, train, augment, competition.metric (and pseudo) from
params.yaml. Writes models/<model>/fold<k>/ (students: students/models/...; model.safetensors of
the best epoch by the competition metric on the fold's validation rows, model.json, SGDR
snapshots) and dvclive/<model>/fold<k>/ (students: students/dvclive/...). A checkpoint after
every epoch lives in checkpoints/ (outside DVC's outputs), so a killed run resumes there.
"""

from __future__ import annotations

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from safetensors.torch import load_file
from torch import nn

from pipeline import metrics, model, roles, schedules
from pipeline.batches import (
    FoldData,
    check_steps,
    epoch_size,
    fold_data,
    n_pseudo,
    online,
    run_seed,
    train_loaders,
    valid_loader,
)
from pipeline.data import batch_mix, class_weights, pseudo_per_batch, split_dataset
from pipeline.index import (
    FOLDS,
    encode_labels,
    read_index,
)
from pipeline.loop import LoopConfig, Phase, accelerator, fit
from pipeline.params import Params, load_params
from pipeline.record import Recorder, save_outputs
from pipeline.roles import write_skips
from pipeline.specs import Spec, backbone, fingerprint, student_spec, teacher_spec
from pipeline.steps import Loader
from pipeline.targets import OnlineTargets
from pipeline.transforms import build_transforms, epoch_strength

PLACEHOLDER_LR = 1e-3  # a phase with lr: auto starts here; the LR range test rescales its groups


def optimizer_groups(name: str, params: list[nn.Parameter], lr: float, wd: float) -> list[dict]:
    """A layer group as two optimizer groups: weight decay on weights, none on norms/biases."""
    decay = [p for p in params if p.ndim > 1]
    rest = [p for p in params if p.ndim <= 1]
    return [
        {"name": name, "params": ps, "lr": lr, "weight_decay": w}
        for ps, w in ((decay, wd), (rest, 0.0))
        if ps
    ]


@torch.no_grad()
def features(net: nn.Module, loader, acc: Accelerator) -> torch.Tensor:
    """Pooled pre-logits features: what the classifier sees, computed once (eval mode)."""
    net.eval()
    out = []
    for x, _ in loader:
        with acc.autocast():
            out.append(net.forward_head(net.forward_features(x.to(acc.device)), pre_logits=True))
    return torch.cat(out).float().cpu()


def weights_checksum(m: nn.Module, acc: Accelerator) -> list[float]:
    """One number per process; equal numbers mean the replicas ended with the same weights."""
    total = sum(p.detach().double().sum() for p in m.parameters()).reshape(1).to(acc.device)
    return acc.gather(total).cpu().tolist()


# --- the pieces of a run ------------------------------------------------------------------


def build_model(p: Params, name: str, n_classes: int, spec: Spec) -> nn.Module:
    """The timm backbone: from model.pretrained, or from the weights a student refines."""
    pretrained = p.model.weights(name) if spec.init is None else False
    net = model.create(name, n_classes, pretrained, p.model.drop_rate, p.model.drop_path_rate)
    if spec.init is not None:
        net.load_state_dict(load_file(str(spec.init)))
    # channels_last on CPU too: test_resnet's steps +20-40% on the 2-core reference machine,
    # resnet10t equal, resnet18 and efficientnet_b0 at 64 px +5-9% (torch 2.14)
    net = net.to(memory_format=torch.channels_last)
    if torch.cuda.is_available() and p.train.compile:  # on CPU compiling costs more than it saves
        net.compile()  # in place: the state dict keeps its keys
    return net


def precomputed_head(p: Params, head: Phase, net: nn.Module, d: FoldData, fold, acc) -> None:
    """The backbone is fully frozen: run it once and train the classifier on its features."""
    bs = d.batch
    plain = build_transforms("valid", 0, None, **d.norm, crop_pct=p.base.crop_pct)
    f_train, f_valid = (
        features(
            net.to(acc.device),
            Loader(split_dataset(d.index, "train", rows, plain, d.size), batch_size=bs * 2),
            acc,
        )
        for rows in (d.train_rows, d.valid_rows)
    )
    y_valid = encode_labels(d.index.train["label"].iloc[d.valid_rows], d.index.classes, d.task)
    feats = torch.utils.data.TensorDataset(f_train, torch.as_tensor(d.targets))

    def feature_loader(epoch: int, total: int) -> Loader:
        g = torch.Generator().manual_seed(run_seed(p.base.seed, fold, "teacher", "epoch", epoch))
        return Loader(feats, batch_size=bs, shuffle=True, generator=g, drop_last=len(feats) > bs)

    head.module, head.train_loader = net.get_classifier(), feature_loader
    head.valid_loader = acc.prepare(
        Loader(torch.utils.data.TensorDataset(f_valid, torch.as_tensor(y_valid)), batch_size=bs * 2)
    )


def with_mixing(phases: list[Phase], net: nn.Module, mix) -> None:
    """mixup/cutmix (augment.mixup, augment.cutmix) in the phases that train on images: not in
    a head phase on precomputed features (its module is the classifier alone)."""
    for ph in phases:
        if ph.module is net:
            ph.mix = mix


def head_phase(p: Params, spec: Spec, net, groups, loaders, valid, d, fold, acc) -> Phase:
    hc, wd = p.head, p.train.weight_decay
    head_params = groups[-1][1]
    head_lr = PLACEHOLDER_LR if hc.lr == "auto" else hc.lr
    head = Phase(
        "head",
        spec.head_epochs,
        net,
        optimizer_groups("head", head_params, head_lr, wd),
        loaders,
        valid,
        find_lr=hc.lr == "auto",
    )
    if hc.precompute and spec.pseudo is None:  # a student's head sees augmented mixed batches
        precomputed_head(p, head, net, d, fold, acc)
    elif hc.train_bn:  # fastai's default: frozen groups' BatchNorm keeps learning
        bn = [q for m in model.batchnorm_modules(net, head_params) for q in m.parameters()]
        head.groups += optimizer_groups("bn", bn, head_lr, wd)
    else:  # frozen BatchNorm: parameters and running statistics stay as loaded
        head.frozen_bn = model.batchnorm_modules(net, head_params)
    return head


def full_phase(p: Params, spec: Spec, net, groups, loaders, valid) -> Phase:
    tc = p.train
    peaks = schedules.geometric_lrs(
        PLACEHOLDER_LR if spec.lr == "auto" else spec.lr, tc.lr_mult, len(groups)
    )
    opt_groups = [
        g
        for (n, ps), lr in zip(groups, peaks, strict=True)
        for g in optimizer_groups(n, ps, lr, tc.weight_decay)
    ]
    return Phase(
        "full",
        spec.epochs,
        net,
        opt_groups,
        loaders,
        valid,
        schedule=tc.schedule,
        find_lr=spec.lr == "auto",
    )


# --- the recipe ---------------------------------------------------------------------------


def loop_config(
    p: Params, task: str, weights: np.ndarray | None, key: dict, online: OnlineTargets | None
) -> LoopConfig:
    tc = p.train
    return LoopConfig(
        task=task,
        pct_start=tc.pct_start,
        div=tc.div,
        final_div=tc.final_div,
        cycle_len=tc.cycle_len,
        cycle_mult=tc.cycle_mult,
        label_smoothing=tc.label_smoothing,
        lr_find=p.lr_find,
        class_weights=None if weights is None else [float(w) for w in weights],
        key=key,
        maximize=metrics.METRICS[p.competition.metric].higher_is_better,
        accumulate=tc.accumulate,
        ema=p.train.ema or None,
        online=online,
    )


def online_targets(spec: Spec, task: str) -> OnlineTargets | None:
    """A student's own targets on its unlabeled images (pseudo.weighting: online), if it has any
    (a control has none)."""
    ps = spec.mix
    return OnlineTargets(task, ps.threshold, ps.soft, ps.temperature) if online(spec) else None


def model_info(p: Params, name: str, fold: int, spec: Spec, d: FoldData) -> dict:
    """model.json: how predict rebuilds the model, and what it was trained on."""
    info = {
        "name": name,
        "fold": fold,
        "role": spec.role.name,
        "task": d.task,
        "classes": d.index.classes,
        "image_size": d.size,
        "crop_pct": p.base.crop_pct,  # validation's and prediction's centre crop
        "mean": list(d.norm["mean"]),
        "std": list(d.norm["std"]),
        "metric": p.competition.metric,
        "augment": p.augment.model_dump(),  # for TTA's random draws of the training augmentation
        "batch_size": d.batch,
        "sizes": d.sizes,
        "ema_decay": p.train.ema or None,  # the kept weights may be the average (kept_weights)
    }
    if spec.pseudo is not None:
        info["pseudolabeled"] = len(spec.pseudo)
        info["init"] = str(spec.init) if spec.init else "scratch"
    return info


def run(p: Params, name: str, fold: int, student: bool = False, round_: int = 1) -> None:
    p = p.student() if student else p  # pseudo.noise: the student's augmentation and dropout
    spec = student_spec(p, name, fold, round_) if student else teacher_spec(p, name)
    if isinstance(spec, str):  # no student this time: its outputs say why
        write_skips("train", name, fold, spec, roles.student(round_))
        return
    acc = accelerator(p.train.mixed_precision)
    set_seed(run_seed(p.base.seed, fold, spec.role.name, "init"))  # the init: torch, numpy, random
    index = read_index()
    arch = backbone(p, name, student)
    net = build_model(p, arch, len(index.classes), spec)
    d = fold_data(p, index, net, fold, acc, spec)
    weights = class_weights(d.targets, len(index.classes), p.train.class_weights,
                            p.train.effective_beta)  # fmt: skip
    if weights is not None:
        acc.print(
            f"class weights ({p.train.class_weights}): "
            + ", ".join(f"{c}={w:.3f}" for c, w in zip(index.classes, weights, strict=True))
        )
    loaders, valid = train_loaders(p, spec, d, fold), valid_loader(p, d, acc)
    groups = model.layer_groups(net, p.model.n_groups)
    phases = [full_phase(p, spec, net, groups, loaders, valid)]
    if spec.head_epochs:
        phases.insert(0, head_phase(p, spec, net, groups, loaders, valid, d, fold, acc))
    with_mixing(phases, net, batch_mix(p.augment, len(index.classes)))
    title = f"{spec.role.name} {arch}{'' if arch == name else f' of {name}'}" if student else name
    title = f"{title} fold {fold}"
    about = describe(title, spec, d, groups, phases, acc)
    check_steps(spec, d, acc, p.train.accumulate)
    data = (index.root / "train.csv", index.root / "meta.json", FOLDS, *spec.files)
    key = fingerprint(p, arch, fold, *data, student=student)
    ckpt = spec.role.ckpt / name / f"fold{fold}"
    total = spec.head_epochs + spec.epochs

    def schedule(epoch: int) -> dict:
        return {
            "augment_strength": epoch_strength(p.augment, epoch, total),
            "image_size": epoch_size(d.sizes, epoch, total),
        }

    live = spec.role.live / name / f"fold{fold}"
    rec = Recorder(title, p.competition.metric, live, ckpt, acc, schedule)

    def metric(probs: np.ndarray, t: np.ndarray) -> float:
        return metrics.value(p.competition.metric, probs, t)

    cfg = loop_config(p, d.task, weights, key, online_targets(spec, d.task))
    hist = fit(net, phases, cfg, metric, acc, ckpt / "state.pt", rec.log, rec.best, rec.lr_find,
               rec.snapshot)  # fmt: skip
    check_replicas(net, acc)
    if acc.is_main_process:
        out = spec.role.models / name / f"fold{fold}"
        save_outputs(net, hist, rec, out, model_info(p, arch, fold, spec, d), about, d)
    acc.wait_for_everyone()


def describe(title: str, spec: Spec, d: FoldData, groups, phases, acc) -> str:
    """What trains in which phase (printed, and returned for the model's summary.txt); for a
    student, how its batches are mixed."""
    trainable = {ph.name: {g["name"] for g in ph.groups} for ph in phases}
    counts = {ph.name: sum(q.numel() for g in ph.groups for q in g["params"]) for ph in phases}
    extra = "" if spec.pseudo is None else f" + {len(spec.pseudo)} pseudolabeled test images"
    text = (
        f"{title}: {len(d.train_rows)} train / {len(d.valid_rows)} valid rows{extra}, "
        f"{len(groups)} layer groups\n{model.summary(groups, trainable)}\n"
        "  trainable: " + ", ".join(f"{n:,} in {ph}" for ph, n in counts.items()) + "\n"
        f"  input: {d.size} px" + (f" (progressive: {d.sizes})" if len(d.sizes) > 1 else "")
        + f", batch {d.batch}"
    )  # fmt: skip
    acc.print(text)
    if spec.pseudo is not None:
        mix_note(spec, d.batch, len(d.train_rows), acc)
    return text


WEIGHTING_NOTES = {  # how each pseudolabeled image's loss is weighted and targeted
    "cut": "",
    "confidence": " x each image's confidence",
    "online": ", its target the student's own on a weak view, counted where that reaches {t}",
}


def mix_note(spec: Spec, batch: int, rows: int, acc: Accelerator) -> None:
    mixed = pseudo_per_batch(batch, spec.mix.ratio)
    left = batch - mixed  # the labeled rows of a mixed batch
    n = mixed if len(spec.pseudo) else 0
    labeled = left if spec.mix.control == "drop" else batch - n
    kept = n_pseudo(spec)
    if kept * (batch - n) > rows * n > 0:
        acc.print(
            f"an epoch: one pass over the {kept} pseudolabels, the {rows} labeled rows "
            f"{kept * (batch - n) / (rows * n):.1f} times (pseudo.ratio {spec.mix.ratio})"
        )
    if spec.mix.noise:
        on = " (augment keys: the pseudolabeled images only)" * (spec.mix.noise_on != "all")
        acc.print(f"student noise{on}: " + ", ".join(f"{k} {v}" for k, v in spec.mix.noise.items()))
    if spec.mix.control:
        how = (
            f"of {batch}" if spec.mix.control is True else f"of {left} (the pseudolabels left out)"
        )
        acc.print(
            "pseudo.control: the student trains on labeled rows only (the control run), in as "
            f"many batches {how} as with its {spec.matched} pseudolabels"
        )
    elif not len(spec.pseudo):
        acc.print(
            f"warning: no test image reached pseudo.threshold {spec.mix.threshold}; the student "
            "trains on labeled rows only"
        )
    acc.print(
        f"batches: {n} pseudolabeled + {labeled} labeled "
        f"({n / (n + labeled):.1%} pseudo), pseudo loss weight {spec.mix.weight}"
        + ("" if spec.matched else WEIGHTING_NOTES[spec.mix.weighting]).format(t=spec.mix.threshold)
        + (f" ramped up over {spec.mix.weight_rampup} epochs" if spec.mix.weight_rampup else "")
    )


def check_replicas(net: nn.Module, acc: Accelerator) -> None:
    sums = weights_checksum(net, acc)
    if len(sums) > 1:
        if len(set(sums)) != 1:
            raise RuntimeError(f"replicas diverged: weight checksums {sums}")
        acc.print(f"weights identical on {len(sums)} processes (checksum {sums[0]:.6f})")


def main(argv: list[str]) -> None:
    a = roles.parse_stage("train", argv)
    run(load_params(), a.model, a.fold, student=a.student, round_=a.round)
