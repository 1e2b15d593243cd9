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

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from safetensors.torch import load_file
from torch import nn

from pipeline import curves, metrics, model, roles, schedules
from pipeline.data import (
    EpochBatches,
    EpochData,
    Seeded,
    Weighted,
    balanced_sampler,
    batch_mix,
    build_transforms,
    class_weights,
    confidence_weights,
    epoch_strength,
    mixed_batches,
    pseudo_per_batch,
    split_dataset,
)
from pipeline.files import PipelineError, atomic_dir, read_json, sha256
from pipeline.index import (
    FOLDS,
    Index,
    encode_labels,
    fold_rows,
    read_folds,
    read_index,
    read_pool,
)
from pipeline.inference import predict_split
from pipeline.loop import LoopConfig, Phase, accelerator, fit, steps_per_epoch
from pipeline.params import Params, Pseudo, Train, Tta, load_params
from pipeline.preds import pred_files, read_probs, write_preds
from pipeline.roles import PLAIN, TEACHER, Role, write_skips

AUTO_STEPS = 16  # train.batch_size: auto lowers the batch until an epoch has this many steps
MIN_STEPS = 200  # fewer optimizer steps in all than this prints a warning
SECTIONS = ("base", "model", "head", "lr_find", "train", "augment")  # what shapes the weights
CODE = Path(__file__).resolve().parents[1]  # the pipeline package: its code is in the resume key
Loader = torch.utils.data.DataLoader


@dataclass(frozen=True)
class Spec:
    """What differs between a teacher's run and a student's; everything else is one path."""

    role: Role
    head_epochs: int
    epochs: int  # of the unfrozen phase
    lr: float | str  # peak LR of the head group, or "auto"
    init: Path | None = None  # weights to start from (the fold's teacher); None: model.pretrained
    pseudo: pd.DataFrame | None = None  # the student's pseudolabels: id, one target per class
    mix: Pseudo | None = None  # ratio, weight and its ramp-up
    files: tuple[Path, ...] = ()  # inputs beyond train.csv and folds.csv in the resume key
    pretrained: bool = False  # starts from pretrained weights (hub or file): fine-tuning


@dataclass(frozen=True)
class FoldData:
    index: Index
    task: str
    train_rows: np.ndarray  # positions in index.train
    valid_rows: np.ndarray
    targets: np.ndarray  # the training rows' encoded labels (ids, or multi-hot)
    size: int  # network input, px: the last of `sizes`, what predict uses
    sizes: list[int]  # progressive resizing: the sizes epochs train at, smallest first
    batch: int  # train.batch_size, or the one `auto` picked for these rows
    norm: dict  # mean, std
    workers: int  # DataLoader workers: train.num_workers, or the ones `auto` picked
    pin: bool  # pinned host memory (GPU)


def backbone(p: Params, name: str, student: bool) -> str:
    """The timm name to train: `name` for a teacher; for the student in folder `name` (named by
    its teacher), the backbone pseudo.backbones gives it."""
    if not student:
        return name
    if name not in p.students():
        raise PipelineError(
            f"--model {name} --student: a student is named by its teacher, one of "
            f"train.backbones {p.train.backbones}"
        )
    return p.students()[name]


def teacher_spec(p: Params) -> Spec:
    return Spec(TEACHER, p.head_epochs(), p.train.epochs, p.train.lr,
                pretrained=p.model.pretrained is not False)  # fmt: skip


def student_spec(p: Params, name: str, fold: int, round_: int = 1) -> Spec | str:
    """Round `round_`'s student of fold `fold`, or why there is none (pseudo.enabled is false,
    or the round is past pseudo.rounds)."""
    ps, why = p.pseudo, roles.not_run(p.pseudo, round_)
    if why is not None:
        return why
    folder = roles.pseudo_dir(round_) / f"fold{fold}"
    frame, source = read_pseudolabels(folder, read_index(), round_)
    if ps.control:  # the same student, init, epochs and LR; labeled batches only
        frame = frame.iloc[:0]
    init = None
    if ps.init == "teacher":  # round 1: fold k's teacher; round r: round r - 1's student
        init = roles.labeller(round_).models / name / f"fold{fold}" / "model.safetensors"
        check_teacher(init, source["teacher_weights"].get(name), folder, round_)
    head = p.head_epochs() if ps.init == "scratch" else 0  # a refined teacher has its head
    files = (folder / "labels.csv", *pred_files(folder, "targets"))
    files = files if init is None else (*files, init)
    return Spec(roles.student(round_), head, ps.epochs, ps.lr, init, frame, ps, files,
                pretrained=p.model.pretrained is not False)  # fmt: skip


def read_pseudolabels(folder: Path, index: Index, round_: int = 1) -> tuple[pd.DataFrame, dict]:
    """labels.csv (id, label, confidence), targets.npy (one column per class) and source.json as
    pseudolabel wrote them, checked against the index: one frame, id, label, confidence, classes."""
    labels, source = folder / "labels.csv", folder / "source.json"
    stage = pseudolabel_stage(round_)
    for f in (labels, source):
        if not f.exists():
            raise PipelineError(f"{f}: missing; run `dvc repro {stage}` first")
    info = read_json(source)
    if not info.get("enabled") or "teacher_weights" not in info:
        raise PipelineError(f"{source}: not written for this round; run `dvc repro {stage}`")
    frame = pd.read_csv(labels, dtype={"id": str, "label": str}, keep_default_na=False)
    missing = [c for c in ("id", "label", "confidence") if c not in frame.columns]
    if not missing:
        frame = with_targets(frame, folder, index.classes, stage)
    unknown = set(frame["id"]) - set(index.test["id"]) if "id" in frame else set()
    if unknown:  # pseudo.extra's images (data/extra/, read only when needed)
        unknown -= set(read_pool().test["id"])
    if missing or unknown:
        what = (
            f"no column {missing[:3]}"
            if missing
            else f"ids not in the test set or pseudo.extra's images {sorted(unknown)[:3]}"
        )
        raise PipelineError(f"{labels}: {what}; run `dvc repro {stage}`")
    return frame, info


def with_targets(frame: pd.DataFrame, folder: Path, classes: list[str], stage: str) -> pd.DataFrame:
    """labels.csv's rows with targets.npy's class columns beside them (the same ids, in order)."""
    try:
        ids, targets = read_probs(folder, "targets", classes)
    except PipelineError as e:
        raise PipelineError(f"{e}; run `dvc repro {stage}`") from None
    if not np.array_equal(ids.to_numpy(), frame["id"].to_numpy()):
        raise PipelineError(
            f"{folder / 'targets.json'}: its ids are not those of {folder / 'labels.csv'}; run "
            f"`dvc repro {stage}`"
        )
    cols = pd.DataFrame(np.asarray(targets), columns=classes, index=frame.index)
    return pd.concat([frame[["id", "label", "confidence"]], cols], axis=1)


def pseudolabel_stage(round_: int) -> str:
    """dvc.yaml's name of round `round_`'s pseudolabel stage."""
    return "pseudolabel" if round_ == 1 else f"pseudolabel_{round_}"


def check_teacher(weights: Path, recorded: str | None, folder: Path, round_: int = 1) -> None:
    """The teacher a student refines must be the one that made its pseudolabels (in round r > 1:
    round r - 1's student)."""
    if not weights.exists():
        who = "the fold's teacher" if round_ == 1 else f"round {round_ - 1}'s student"
        raise PipelineError(f"{weights}: missing; pseudo.init: teacher needs {who}")
    if recorded != sha256(weights):
        raise PipelineError(
            f"{weights} is not the teacher recorded in {folder}/source.json; run `dvc repro` "
            "to relabel"
        )


# the pseudo keys that shape a student's weights (dvc.yaml's train_student lists them too)
STUDENT_KEYS = {"init", "ratio", "weight", "weighting", "weight_rampup", "epochs", "lr", "control",
                "noise"}  # fmt: skip


def fingerprint(p: Params, name: str, fold: int, *files: Path, student: bool = False) -> dict:
    """What shapes this run, part by part (params, data, weights, code): a checkpoint resumes
    only when every part matches, and a mismatch names the parts that differ."""
    sections = {k: getattr(p, k).model_dump() for k in SECTIONS}
    unused = {"backbones", "num_workers", "compile"} | ({"epochs", "lr"} if student else set())
    sections["train"] = p.train.model_dump(exclude=unused)  # no effect on these weights
    sections["base"] = p.base.model_dump(exclude={"folds"})  # folds.csv itself is hashed
    if student:  # the selection keys act through the labels file, which is hashed
        sections["pseudo"] = p.pseudo.model_dump(include=STUDENT_KEYS)
    params = json.dumps([sections, p.competition.metric, name, fold], sort_keys=True)
    weights = p.model.pretrained
    code = sorted(CODE.rglob("*.py"))
    return {
        "params": _digest([params.encode()]),
        # train.csv, meta.json (it holds the sha256 of every image file and the cache size),
        # folds.csv and a student's pseudolabels and teacher
        "data": _digest(f.read_bytes() for f in files),
        "weights": sha256(weights) if isinstance(weights, str) else str(weights),
        "code": _digest(f.relative_to(CODE).as_posix().encode() + f.read_bytes() for f in code),
    }


def _digest(chunks) -> str:
    h = hashlib.sha256()
    for c in chunks:
        h.update(len(c).to_bytes(8, "little") + c)
    return h.hexdigest()[:16]


def check_task_settings(tc: Train, task: str) -> None:
    """Settings that only make sense for single-label tasks stop a multi-label run, named."""
    if task != "multi_label":
        return
    for key, value, ok in (
        ("train.sampler", tc.sampler, "shuffle"),
        ("train.class_weights", tc.class_weights, ("none", "balanced")),
        ("train.label_smoothing", tc.label_smoothing, 0.0),
    ):
        if value not in (ok if isinstance(ok, tuple) else (ok,)):
            raise PipelineError(
                f"params.yaml: {key}: {value!r} is for single-label tasks; this competition is "
                f"multi-label (use {ok!r})"
            )


SEED_STREAMS = ("init", "epoch", "pseudo", "workers")  # what a seed is for, within one run


def run_seed(seed: int, fold: int, role: str, stream: str, epoch: int = 0) -> int:
    """A 32-bit seed for one random stream of one run (base.seed, fold, the teacher or a round's
    student), e.g. one epoch's shuffling and augmentation: the same draws again after a resume.
    The whole tuple is hashed (SeedSequence), so no two runs or streams share seeds the way
    seed + fold did (seed 42 fold 1 was seed 43 fold 0)."""
    words = [seed, fold, roles.by_name(role).round, SEED_STREAMS.index(stream), epoch]
    return int(np.random.SeedSequence(words).generate_state(1)[0])


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
    pretrained = p.model.pretrained if spec.init is None else False
    net = model.create(name, n_classes, pretrained, p.model.drop_rate, p.model.drop_path_rate)
    if spec.init is not None:
        net.load_state_dict(load_file(str(spec.init)))
    # channels_last on CPU too: test_resnet's steps +20-40% on the 2-core reference machine,
    # resnet10t equal, resnet18 and efficientnet_b0 at 64 px +5-9% (torch 2.14)
    net = net.to(memory_format=torch.channels_last)
    if torch.cuda.is_available() and p.train.compile:  # on CPU compiling costs more than it saves
        net.compile()  # in place: the state dict keeps its keys
    return net


def fold_data(
    p: Params, index: Index, net: nn.Module, fold: int, acc, spec: Spec | None = None
) -> FoldData:  # spec: what the batch size is chosen for (None: an epoch's steps alone)
    task = index.meta.get("task", "single_label")
    check_task_settings(p.train, task)
    train_rows, valid_rows = fold_rows(index, read_folds(), fold)
    sizes = p.train.sizes or [model.input_size(net, p.base.image_size)]
    size = sizes[-1]
    cache = index.images("train")
    if cache is not None and cache.shape[1] < size:
        acc.print(
            f"warning: images were cached at {cache.shape[1]} px (prepare.cache_size) and are "
            f"enlarged to the {size} px input; set prepare.cache_size >= {size} to keep detail"
        )
    targets = encode_labels(index.train["label"].iloc[train_rows], index.classes, task)
    norm = model.data_config(net, p.model.mean, p.model.std)
    ratio = mix_ratio(spec)
    epochs = spec.head_epochs + spec.epochs if spec is not None and from_scratch(spec) else None
    batch = batch_size(p.train.batch_size, len(train_rows), ratio, epochs, p.train.accumulate)
    if p.train.batch_size == "auto":
        mix = "" if ratio is None else f" (+ {pseudo_share(batch, ratio)} pseudolabeled a batch)"
        acc.print(f"train.batch_size: auto -> {batch} for {len(train_rows)} training rows{mix}")
    gpu = torch.cuda.is_available()  # as run() picks the device
    workers = loader_workers(p.train.num_workers, cache is not None, gpu, os.cpu_count() or 1)
    return FoldData(index, task, train_rows, valid_rows, targets, size, sizes, batch, norm,
                    workers, gpu)  # fmt: skip


def loader_workers(setting: int | str, cached: bool, gpu: bool, cpus: int) -> int:
    """train.num_workers, or for `auto`: on CPU, 0 with the image cache (reading it is cheap, and
    a worker only takes cores from the model: 10 epochs of the demo take 16 s with 0 workers, 22
    s with 1 here), else half the cores up to 4 to decode files; on GPU, cores - 1 up to 8."""
    if setting != "auto":
        return int(setting)
    if gpu:
        return max(0, min(8, cpus - 1))
    return 0 if cached or cpus <= 2 else min(4, cpus // 2)


def batch_size(
    setting: int | str, rows: int, ratio: float | None = None, epochs: int | None = None,
    accumulate: int = 1,
) -> int:  # fmt: skip
    """`auto`: the largest multiple of 8 up to 64 whose epoch has at least AUTO_STEPS optimizer
    steps and, for a model that starts from random weights (trained `epochs` in all),
    whose run has at least MIN_STEPS; 8 when none has. Steps are counted by epoch_steps, as
    check_steps counts them: with train.accumulate k, one every k batches."""
    if setting != "auto":
        return int(setting)
    for batch in range(64, 8, -8):
        steps = epoch_steps(rows, batch, ratio, accumulate)
        if steps >= AUTO_STEPS and (epochs is None or steps * epochs >= MIN_STEPS):
            return batch
    return 8


def epoch_steps(rows: int, batch: int, ratio: float | None = None, accumulate: int = 1) -> int:
    """Optimizer steps in one epoch over `rows` training rows, exactly as epoch_batches makes
    the batches and loop.accumulate steps over them (one every `accumulate` batches, one more for
    a rest): a teacher's shuffle drops a last partial batch (when there is more than one); a
    student's epoch (`ratio`: pseudo:labeled = 1:ratio) is one pass over the labeled rows, each
    batch topped up with pseudolabels (at 1:3 a batch of 64 holds 48 labeled rows)."""
    if ratio is None:
        n = len(torch.utils.data.BatchSampler(range(rows), batch, drop_last=rows > batch))
    else:
        n = len(mixed_batches(np.arange(rows), rows, batch, ratio, 0))  # the pseudo ids: moot
    return steps_per_epoch(n, accumulate)


def mix_ratio(spec: Spec | None) -> float | None:
    """pseudo.ratio for a student with pseudolabels to mix in; None for batches of labeled rows."""
    mixed = spec is not None and spec.pseudo is not None and len(spec.pseudo) > 0
    return spec.mix.ratio if mixed else None


def pseudo_share(batch: int, ratio: float | None) -> int:
    return 0 if ratio is None else pseudo_per_batch(batch, ratio)


def epoch_size(sizes: list[int], epoch: int, total: int) -> int:
    """Progressive resizing: the epochs split evenly over the sizes, smallest first."""
    return sizes[min(len(sizes) - 1, epoch * len(sizes) // max(1, total))]


def from_scratch(spec: Spec) -> bool:
    """Random init: MIN_STEPS applies. Fine-tuning pretrained weights, or a student refining its
    teacher, continues trained features and converges in far fewer steps (fastai's fine_tune:
    a few epochs of a small data set)."""
    return spec.init is None and not spec.pretrained


def check_steps(spec: Spec, d: FoldData, acc: Accelerator, accumulate: int = 1) -> None:
    """Warn when a model that starts from random weights gets too few optimizer steps."""
    if not from_scratch(spec):
        return
    ratio = mix_ratio(spec)
    per_epoch = epoch_steps(len(d.train_rows), d.batch, ratio, accumulate)
    total = per_epoch * (spec.head_epochs + spec.epochs)
    if total < MIN_STEPS:
        epochs = "train.epochs" if spec.role is TEACHER else "pseudo.epochs"
        labeled = "" if ratio is None else f" ({d.batch - pseudo_share(d.batch, ratio)} labeled)"
        k = "" if accumulate == 1 else f", {accumulate} batches a step"
        lower = "train.batch_size" + ("" if accumulate == 1 else " or train.accumulate")
        acc.print(
            f"warning: {total} optimizer steps in all ({per_epoch} per epoch at batch {d.batch}"
            f"{labeled}{k} for {len(d.train_rows)} rows); under {MIN_STEPS} a model rarely "
            f"converges: raise {epochs} or lower {lower}"
        )


def train_loaders(p: Params, spec: Spec, d: FoldData, fold: int) -> Callable[[int, int], Loader]:
    """(epoch, total epochs) -> the training loader at that epoch. It is one DataLoader for the
    whole run (EpochData), so that its workers persist; each epoch has its scheduled augmentation
    strength and image size (epoch_dataset) and its own shuffle (epoch_batches)."""
    data = EpochData(partial(epoch_dataset, p, spec, d, fold))
    workers_seed = run_seed(p.base.seed, fold, spec.role.name, "workers")
    loader = Loader(
        data,
        batch_sampler=EpochBatches(data, partial(epoch_batches, p, spec, d, fold)),
        num_workers=d.workers,
        pin_memory=d.pin,
        persistent_workers=d.workers > 0,
        generator=torch.Generator().manual_seed(workers_seed),  # the workers' base: not global
    )

    def at(epoch: int, total: int) -> Loader:
        data.at(epoch, total)
        return loader

    return at


def epoch_dataset(p: Params, spec: Spec, d: FoldData, fold: int, epoch: int, total: int):
    """One epoch's training items; a student's are mixed with pseudolabels, weights attached."""
    strength = epoch_strength(p.augment, epoch, total)
    seed = run_seed(p.base.seed, fold, spec.role.name, "epoch", epoch)
    tf = build_transforms("train", strength, p.augment, **d.norm, seed=seed)
    ds = split_dataset(d.index, "train", d.train_rows, tf, epoch_size(d.sizes, epoch, total))
    if spec.pseudo is not None:
        pseudo, order = pseudo_images(d.index, spec.pseudo["id"], tf, ds.size)
        rows = spec.pseudo.iloc[order]
        n_classes = len(d.index.classes)
        targets = d.targets if d.targets.ndim == 2 else np.eye(n_classes)[d.targets]
        weight = schedules.rampup(epoch, spec.mix.weight_rampup, spec.mix.weight)
        if spec.mix.weighting == "confidence":
            multi = d.index.meta["task"] == "multi_label"
            weight = weight * confidence_weights(rows["confidence"], n_classes, multi)
        ds = torch.utils.data.ConcatDataset(
            [Weighted(ds, targets, 1.0), Weighted(pseudo, rows[d.index.classes].to_numpy(), weight)]
        )
    return Seeded(ds, tf, seed)


def pseudo_images(index: Index, ids: pd.Series, tf, size: int):
    """(dataset, order): the pseudolabelled images, the test set's first and then pseudo.extra's
    (data/extra/, read only when an id is one of them), and each one's position in `ids`."""
    sources = [index] if ids.isin(index.test["id"]).all() else [index, read_pool()]
    parts, order = [], []
    for src in sources:
        positions = pd.Series(np.arange(len(src.test)), index=src.test["id"])
        mine = ids.isin(positions.index).to_numpy()
        parts.append(split_dataset(src, "test", positions.loc[ids[mine]].to_numpy(), tf, size))
        order.append(np.flatnonzero(mine))
    images = parts[0] if len(parts) == 1 else torch.utils.data.ConcatDataset(parts)
    return images, np.concatenate(order)


def epoch_batches(p: Params, spec: Spec, d: FoldData, fold: int, epoch: int, total: int):
    """One epoch's index batches: a shuffle (or class-balanced draws) of the training rows; for
    a student, each batch topped up with pseudolabels, pseudo:labeled = 1:pseudo.ratio."""
    seed, n = run_seed(p.base.seed, fold, spec.role.name, "epoch", epoch), len(d.train_rows)
    if p.train.sampler == "balanced":
        order = list(balanced_sampler(d.targets, seed))
    elif spec.pseudo is not None:
        order = np.random.default_rng(seed).permutation(n).tolist()
    else:
        g = torch.Generator().manual_seed(seed)
        torch.empty((), dtype=torch.int64).random_(generator=g)  # as DataLoader(shuffle) drew it
        order = torch.randperm(n, generator=g).tolist()
    if mix_ratio(spec) is not None:
        mix_seed = run_seed(p.base.seed, fold, spec.role.name, "pseudo", epoch)
        return mixed_batches(np.array(order), len(spec.pseudo), d.batch, spec.mix.ratio, mix_seed)
    return list(torch.utils.data.BatchSampler(order, d.batch, drop_last=n > d.batch))


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
    head_lr = 1e-3 if hc.lr == "auto" else hc.lr  # auto: the range test rescales it
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
    peaks = schedules.geometric_lrs(1e-3 if spec.lr == "auto" else spec.lr, tc.lr_mult, len(groups))
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


def valid_loader(p: Params, d: FoldData, acc: Accelerator) -> Loader:
    """Fold k's validation rows with their real labels, never a pseudolabel."""
    plain = build_transforms("valid", 0, None, **d.norm, crop_pct=p.base.crop_pct)
    ds = split_dataset(d.index, "train", d.valid_rows, plain, d.size)
    loader = Loader(ds, batch_size=d.batch * 2, num_workers=d.workers, pin_memory=d.pin,
                    persistent_workers=d.workers > 0)  # fmt: skip
    return acc.prepare(loader)


def open_live(live: type, path: Path):
    """dvclive's logger for one run. It asks git for the current commit, which a repository made
    with `git init` and never committed does not have: a plain line says what to do."""
    from scmrepo.exceptions import SCMError

    try:
        return live(dir=str(path), dvcyaml=None, save_dvc_exp=False, report=None)
    except SCMError as e:
        raise PipelineError(
            f"git in {Path.cwd()}: {e} (dvclive reads the current commit); commit once "
            "(`git add -A && git commit -m init`) or remove the empty .git, then rerun"
        ) from e


class Recorder:
    """Prints and logs every epoch (dvclive), keeps the best weights and the SGDR snapshots."""

    def __init__(
        self, title: str, metric: str, live_path: Path, ckpt: Path, acc: Accelerator,
        schedule: Callable[[int], dict],  # 0-based epoch -> its augmentation strength and size
    ):  # fmt: skip
        self.title, self.metric, self.acc, self.schedule = title, metric, acc, schedule
        self.live_path, self.ckpt = live_path, ckpt
        self.steps: list[str] = []  # plots/schedule.tsv: the LR of every optimizer step
        from dvclive import Live  # here: the loaders and the model need neither dvclive nor dvc

        self.live = open_live(Live, live_path) if acc.is_main_process else None

    def log(self, row: dict) -> None:
        sched = self.schedule(row["epoch"] - 1)
        self.acc.print(
            f"{self.title} epoch {row['epoch']:>3} [{row['phase']}] "
            f"train_loss {row['train_loss']:.4f} valid_loss {row['valid_loss']:.4f} "
            f"valid_{self.metric} {row['valid_metric']:.4f}{ema_note(row, self.metric)} "
            f"({row['images_per_s']:.0f} img/s, "
            f"{row.get('data_wait', 0):.0%} waiting for data, "
            f"augment {sched['augment_strength']:.2f}, {sched['image_size']} px)"
        )
        if self.live is not None:
            self.live.log_metric("train_loss", row["train_loss"])
            self.live.log_metric("valid_loss", row["valid_loss"])
            self.live.log_metric(f"valid_{self.metric}", row["valid_metric"])
            if "ema_valid_metric" in row:  # train.ema: the average's curves beside the raw ones
                self.live.log_metric("ema_valid_loss", row["ema_valid_loss"])
                self.live.log_metric(f"ema_valid_{self.metric}", row["ema_valid_metric"])
            self.live.log_metric("peak_lr", row["lr"])
            self.live.log_metric("images_per_s", row["images_per_s"])
            self.live.log_metric("data_wait", row.get("data_wait", 0.0))
            for k, v in sched.items():
                self.live.log_metric(k, v)
            self.live.next_step()
            self.log_steps(row, sched["augment_strength"])

    def log_steps(self, row: dict, strength: float) -> None:
        """The head group's LR at every step (the schedule itself, not only its peak)."""
        first = len(self.steps)
        self.steps += [
            f"{first + i}\t{row['epoch']}\t{row['phase']}\t{lr:.6g}\t{strength:.4g}\n"
            for i, lr in enumerate(row["step_lrs"])
        ]
        head = "step\tepoch\tphase\tlr\taugment_strength\n"
        (self.live_path / "plots" / "schedule.tsv").write_text(head + "".join(self.steps))

    def keep(self, best: dict, epoch: int) -> None:
        """metrics.json describes the kept epoch, not the last one logged."""
        s = self.live.summary
        s.update(train_loss=best["train_loss"], valid_loss=best["valid_loss"])
        s[f"valid_{self.metric}"] = best["valid_metric"]
        s.update(peak_lr=best["lr"], images_per_s=best["images_per_s"], best_epoch=epoch)
        if "ema_valid_metric" in best:  # the average's at the kept epoch, and which was kept
            s.update(ema_valid_loss=best["ema_valid_loss"], kept_weights=best["kept_weights"])
            s[f"ema_valid_{self.metric}"] = best["ema_valid_metric"]
        s.update(self.schedule(epoch - 1))
        s["step"] = epoch - 1  # dvclive's step of that epoch

    def lr_find(self, phase: str, lrs: list[float], losses: list[float], chosen: float) -> None:
        if self.live is not None:
            curve = "lr\tloss\n" + "".join(
                f"{a:.6g}\t{b:.6g}\n" for a, b in zip(lrs, losses, strict=True)
            )
            (self.live_path / "plots" / "lr_find").mkdir(parents=True, exist_ok=True)
            (self.live_path / "plots" / "lr_find" / f"{phase}.tsv").write_text(curve)
            self.live.summary.setdefault("lr_find", {})[phase] = chosen

    def best(self, m: nn.Module, row: dict) -> None:
        if self.acc.is_main_process:
            model.save_weights(m, self.ckpt / "best.safetensors")

    def snapshot(self, m: nn.Module, cycle: int) -> None:
        if self.acc.is_main_process:
            model.save_weights(m, self.ckpt / "snapshots" / f"cycle{cycle}.safetensors")


def ema_note(row: dict, metric: str) -> str:
    """The EMA's score in an epoch's line, with the weights that scored better (train.ema)."""
    if "ema_valid_metric" not in row:
        return ""
    return f" ema_valid_{metric} {row['ema_valid_metric']:.4f} (better: {row['kept_weights']})"


def kept_score(row: dict) -> tuple[str, float]:
    """Which weights an epoch's row keeps (raw, or the EMA with train.ema), and their score."""
    if row.get("kept_weights") == "ema":
        return "ema", row["ema_valid_metric"]
    return "raw", row["valid_metric"]


NO_TTA = Tta(views=[], random=0, random_strength=0.0, combine="probs", beta=1.0, batch_size=256)


def write_plain(net: nn.Module, folder: Path, info: dict, d: FoldData, device) -> None:
    """plain/ oof and test predictions (and plain/snapshots/cycle<i>/) without TTA, of the kept
    weights and every SGDR snapshot: what predict takes when there is no TTA, loading no model."""
    sets = [("", None), *((f"snapshots/{s.stem}", s) for s in
                          sorted((folder / "snapshots").glob("cycle*.safetensors")))]  # fmt: skip
    splits = {
        "oof": ("train", d.valid_rows, d.index.train["id"].iloc[d.valid_rows]),
        "test": ("test", np.arange(len(d.index.test)), d.index.test["id"]),
    }
    net.eval()
    for sub, weights in sets:
        if weights is not None:
            net.load_state_dict(load_file(str(weights)))
        for name, (split, rows, ids) in splits.items():
            probs = predict_split(net, d.index, split, rows, NO_TTA, info, device)["plain"]
            write_preds(folder / PLAIN / sub, name, ids, probs, info["classes"])


def save_outputs(net, hist, rec: Recorder, out: Path, info: dict, about: str, d: FoldData) -> None:
    """The kept epoch's weights, model.json, summary.txt, snapshots and plain predictions,
    replacing `out` whole."""
    best = hist.rows[hist.best_epoch - 1]
    reading = curves.verdict([r["valid_loss"] for r in hist.rows])
    weights, score = kept_score(best)
    of = " of the EMA weights" if weights == "ema" else ""
    rec.acc.print(
        f"{rec.title}: best epoch {hist.best_epoch} [{best['phase']}] "
        f"(valid_{rec.metric} {score:.4f}{of}) is the one kept; learning curve: {reading}"
    )
    net.load_state_dict(load_file(str(rec.ckpt / "best.safetensors")))
    info = {**info, "best_epoch": hist.best_epoch, "best_valid_metric": score}
    if "ema_valid_metric" in best:  # train.ema: both scores of the kept epoch, and which won
        info.update(kept_weights=weights, raw_valid_metric=best["valid_metric"],
                    ema_valid_metric=best["ema_valid_metric"])  # fmt: skip
    info["learning_curve"] = reading
    with atomic_dir(out) as tmp:  # weights, model.json and snapshots appear together
        model.save(net, tmp, {**info, "phase_lrs": hist.lrs})
        (tmp / "summary.txt").write_text(about + "\n")
        if (rec.ckpt / "snapshots").exists():
            shutil.copytree(rec.ckpt / "snapshots", tmp / "snapshots")
        write_plain(net, tmp, info, d, rec.acc.device)
    rec.keep(best, hist.best_epoch)
    rec.live.summary["learning_curve"] = reading
    rec.live.end()
    shutil.rmtree(rec.ckpt)  # finished: the next run with these params starts afresh


# --- the recipe ---------------------------------------------------------------------------


def loop_config(p: Params, task: str, weights: np.ndarray | None, key: dict) -> LoopConfig:
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
    )


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
    spec = student_spec(p, name, fold, round_) if student else teacher_spec(p)
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

    cfg = loop_config(p, d.task, weights, key)
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
        mix_note(spec, d.batch, acc)
    return text


def mix_note(spec: Spec, batch: int, acc: Accelerator) -> None:
    n = pseudo_per_batch(batch, spec.mix.ratio) if len(spec.pseudo) else 0
    if spec.mix.noise:
        acc.print("student noise: " + ", ".join(f"{k} {v}" for k, v in spec.mix.noise.items()))
    if spec.mix.control:
        acc.print("pseudo.control: the student trains on labeled rows only (the control run)")
    elif not len(spec.pseudo):
        acc.print(
            f"warning: no test image reached pseudo.threshold {spec.mix.threshold}; the student "
            "trains on labeled rows only"
        )
    acc.print(
        f"batches: {n} pseudolabeled + {batch - n} labeled "
        f"({n / batch:.1%} pseudo), pseudo loss weight {spec.mix.weight}"
        + (" x each image's confidence" if spec.mix.weighting == "confidence" else "")
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
