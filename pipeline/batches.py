"""The batches of one fold's training: its rows, input sizes, normalisation and batch size
(FoldData), the batch-size and step rules, the seeded loaders of every epoch (labeled rows mixed
with pseudolabeled ones for a student) and the validation loader.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator
from torch import nn

from pipeline import model, roles, schedules
from pipeline.data import (
    EpochBatches,
    EpochData,
    Seeded,
    TwoViews,
    Weighted,
    balanced_sampler,
    confidence_weights,
    mixed_batches,
    pseudo_per_batch,
    split_dataset,
    two_views_batch,
)
from pipeline.files import PipelineError
from pipeline.index import (
    Index,
    encode_labels,
    fold_rows,
    read_folds,
    read_pool,
)
from pipeline.params import Params, Train
from pipeline.roles import TEACHER
from pipeline.specs import Spec
from pipeline.steps import steps_per_epoch
from pipeline.transforms import build_transforms, epoch_strength

AUTO_STEPS = 16  # train.batch_size: auto lowers the batch until an epoch has this many steps
MIN_STEPS = 200  # fewer optimizer steps in all than this prints a warning
Loader = torch.utils.data.DataLoader


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


SEED_STREAMS = ("init", "epoch", "pseudo", "workers")  # what a seed is for, within one run


def run_seed(seed: int, fold: int, role: str, stream: str, epoch: int = 0) -> int:
    """A 32-bit seed for one random stream of one run (base.seed, fold, the teacher or a round's
    student), e.g. one epoch's shuffling and augmentation: the same draws again after a resume.
    The whole tuple is hashed (SeedSequence), so no two runs or streams share seeds the way
    seed + fold did (seed 42 fold 1 was seed 43 fold 0)."""
    words = [seed, fold, roles.by_name(role).round, SEED_STREAMS.index(stream), epoch]
    return int(np.random.SeedSequence(words).generate_state(1)[0])


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


def epoch_steps(
    rows: int, batch: int, ratio: float | None = None, accumulate: int = 1, pseudo: int = 0
) -> int:
    """Optimizer steps in one epoch over `rows` training rows, exactly as epoch_batches makes
    the batches and loop.accumulate steps over them (one every `accumulate` batches, one more for
    a rest): a teacher's shuffle drops a last partial batch (when there is more than one); a
    student's epoch (`ratio`: pseudo:labeled = 1:ratio) is one pass over the labeled rows, each
    batch topped up with pseudolabels (at 1:3 a batch of 64 holds 48 labeled rows), or over its
    `pseudo` pseudolabels when they need more batches (0: as many as fit in the labeled pass)."""
    if ratio is None:
        n = len(torch.utils.data.BatchSampler(range(rows), batch, drop_last=rows > batch))
    else:
        n = len(mixed_batches(np.arange(rows), pseudo or 1, batch, ratio, 0))
    return steps_per_epoch(n, accumulate)


def mix_ratio(spec: Spec | None) -> float | None:
    """pseudo.ratio for a student with pseudolabels to mix in, or for its control (batches of the
    same size and number); None for batches of labeled rows."""
    return spec.mix.ratio if n_pseudo(spec) else None


def n_pseudo(spec: Spec | None) -> int:
    """The pseudolabels a student's batches are sized by: its own, or the control's student's."""
    if spec is None or spec.pseudo is None:
        return 0
    return len(spec.pseudo) or spec.matched


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
    per_epoch = epoch_steps(len(d.train_rows), d.batch, ratio, accumulate, n_pseudo(spec))
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
        collate_fn=two_views_batch if online(spec) else None,
    )

    def at(epoch: int, total: int) -> Loader:
        data.at(epoch, total)
        return loader

    return at


def epoch_dataset(p: Params, spec: Spec, d: FoldData, fold: int, epoch: int, total: int):
    """One epoch's training items; a student's are mixed with pseudolabels, weights attached.
    The pseudolabeled places take p.pseudo_augment() (pseudo.noise_on); the control's hold
    labeled rows, again, under that augmentation."""
    seed = run_seed(p.base.seed, fold, spec.role.name, "epoch", epoch)
    tf = epoch_transform(p.augment, epoch, total, d, seed)
    size = epoch_size(d.sizes, epoch, total)
    ds = split_dataset(d.index, "train", d.train_rows, tf, size)
    if spec.pseudo is None:
        return Seeded(ds, [tf], seed)
    strong = p.pseudo_augment()
    tf_ps = tf if strong == p.augment else epoch_transform(strong, epoch, total, d, seed)
    n_classes = len(d.index.classes)
    targets = d.targets if d.targets.ndim == 2 else np.eye(n_classes)[d.targets]
    labeled = Weighted(ds, targets, 1.0)
    if spec.matched:  # the control: its fill indexes this copy (mixed_batches)
        again = split_dataset(d.index, "train", d.train_rows, tf_ps, size)
        return Seeded(concat(labeled, Weighted(again, targets, 1.0)), [tf, tf_ps], seed)
    pseudo, order = pseudo_images(d.index, spec.pseudo["id"], tf_ps, size)
    rows = spec.pseudo.iloc[order]
    weight = schedules.rampup(epoch, spec.mix.weight_rampup, spec.mix.weight)
    if spec.mix.weighting == "confidence":
        multi = d.index.meta["task"] == "multi_label"
        weight = weight * confidence_weights(rows["confidence"], n_classes, multi)
    pseudo = Weighted(pseudo, rows[d.index.classes].to_numpy(), weight)
    if online(spec):  # FixMatch: the student's weak view makes the target
        weak, _ = pseudo_images(d.index, spec.pseudo["id"], tf, size)
        labeled, pseudo = TwoViews(labeled), TwoViews(pseudo, weak)
    return Seeded(concat(labeled, pseudo), [tf, tf_ps], seed)


def online(spec: Spec) -> bool:
    """A student that makes its own targets (pseudo.weighting: online), with images to make
    them on (not a control, whose batches hold labeled rows only)."""
    ps = spec.mix
    return ps is not None and ps.weighting == "online" and not spec.matched and len(spec.pseudo) > 0


def epoch_transform(aug, epoch: int, total: int, d: FoldData, seed: int):
    """The training transform at this epoch's scheduled strength of `aug`."""
    return build_transforms("train", epoch_strength(aug, epoch, total), aug, **d.norm, seed=seed)


def concat(*parts: torch.utils.data.Dataset) -> torch.utils.data.ConcatDataset:
    return torch.utils.data.ConcatDataset(parts)


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
        fill = spec.matched > 0  # the control
        made = mixed_batches(np.array(order), n_pseudo(spec), d.batch, spec.mix.ratio, mix_seed,
                             fill)  # fmt: skip
        return without_copies(made, n) if spec.mix.control == "drop" else made
    return list(torch.utils.data.BatchSampler(order, d.batch, drop_last=n > d.batch))


def without_copies(batches: list[list[int]], n: int) -> list[list[int]]:
    """pseudo.control: drop: the control's batches with the pseudolabels' places left out (the
    student's labeled rows, step for step); a last batch under two rows (BatchNorm needs two)
    takes the first batch's first rows, so that the steps stay as many (epoch_steps)."""
    kept = [[i for i in b if i < n] for b in batches]
    kept[-1] += kept[0][: max(0, 2 - len(kept[-1]))]
    return kept


def valid_loader(p: Params, d: FoldData, acc: Accelerator) -> Loader:
    """Fold k's validation rows with their real labels, never a pseudolabel."""
    plain = build_transforms("valid", 0, None, **d.norm, crop_pct=p.base.crop_pct)
    ds = split_dataset(d.index, "train", d.valid_rows, plain, d.size)
    loader = Loader(ds, batch_size=d.batch * 2, num_workers=d.workers, pin_memory=d.pin,
                    persistent_workers=d.workers > 0)  # fmt: skip
    return acc.prepare(loader)


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
