"""Training data: the dataset over the index (cache or files), class weights, the balanced
sampler and the albumentations transforms. The index itself lives in `pipeline.index`."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from timm.data.mixup import Mixup, one_hot

from pipeline.files import PipelineError
from pipeline.index import Index, encode_labels, load_image, square
from pipeline.params import Augment
from pipeline.transforms import Transform, epoch_strength


class ImageDataset(torch.utils.data.Dataset):
    """Rows of the index as (image tensor, label); images come from the cache or from files."""

    def __init__(
        self,
        transform: Transform,
        size: int,
        labels: np.ndarray | None = None,
        cache: np.ndarray | None = None,
        paths: list[str] | None = None,
        rows: np.ndarray | None = None,  # with cache: its rows to use (memory-mapped, not copied)
        mode: str = "squish",  # with paths: how a file that is not square is made square
    ) -> None:
        if (cache is None) == (paths is None):
            raise ValueError("give exactly one of cache= or paths=")
        self.cache, self.paths, self.labels = cache, paths, labels
        if cache is not None:
            self.rows = np.arange(len(cache)) if rows is None else np.asarray(rows)
        self.transform, self.size, self.mode = transform, size, mode

    def __len__(self) -> int:
        return len(self.rows) if self.cache is not None else len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, np.ndarray | int]:
        if self.cache is not None:
            img = np.asarray(self.cache[self.rows[i]])
        else:
            img = square(load_image(self.paths[i]), self.mode)  # as prepare caches it
        x = self.transform(image=img, size=self.size)["image"]
        return x, (self.labels[i] if self.labels is not None else -1)


class Seeded(torch.utils.data.Dataset):
    """A training dataset whose augmentation draws depend only on (epoch seed, the batch's
    indices): the DataLoader fetches a whole batch through __getitems__, which seeds the
    transform first. Every batch draws differently, and any number of workers gives the same
    batches, hence the same weights (albumentations would otherwise copy one generator state
    into every worker, and the workers would repeat each other's draws)."""

    def __init__(self, dataset: torch.utils.data.Dataset, transforms: list[Transform], seed: int):
        self.dataset, self.seed = dataset, seed
        self.transforms = list({id(t): t for t in transforms}.values())  # each one once

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: list[int]) -> list:
        states = np.random.SeedSequence([self.seed, *map(int, indices)])
        for tf, state in zip(
            self.transforms, states.generate_state(len(self.transforms)), strict=True
        ):
            tf.set_random_seed(int(state))
        return [self.dataset[i] for i in indices]


class EpochData(torch.utils.data.Dataset):
    """Every epoch of a run through one DataLoader, so that its workers persist (they are forked
    once, not once an epoch): `build(epoch, total)` makes that epoch's dataset (its augmentation
    strength, image size and seed). `at` writes the epoch into shared memory before its pass, and
    each process, a worker or the main one, rebuilds its own copy when it sees a new one."""

    def __init__(self, build: Callable[[int, int], torch.utils.data.Dataset]) -> None:
        self.build = build
        self.when = torch.zeros(2, dtype=torch.int64).share_memory_()  # (epoch, total)
        self.built: tuple[tuple[int, int], torch.utils.data.Dataset] | None = None

    def at(self, epoch: int, total: int) -> None:
        self.when[0], self.when[1] = epoch, total

    @property
    def dataset(self) -> torch.utils.data.Dataset:
        when = (int(self.when[0]), int(self.when[1]))
        if self.built is None or self.built[0] != when:
            self.built = when, self.build(*when)
        return self.built[1]

    def __len__(self) -> int:  # every epoch has the same items, only their transforms differ
        return len(self.built[1] if self.built is not None else self.dataset)

    def __getitem__(self, i: int):
        return self.dataset[i]

    def __getitems__(self, indices: list[int]) -> list:
        return self.dataset.__getitems__(indices)


class EpochBatches(torch.utils.data.Sampler):
    """EpochData's batch sampler: each pass yields the batches of the epoch set there."""

    def __init__(self, data: EpochData, batches: Callable[[int, int], list[list[int]]]) -> None:
        self.data, self.batches = data, batches
        self.made: tuple[tuple[int, int], list[list[int]]] | None = None

    def current(self) -> list[list[int]]:
        when = (int(self.data.when[0]), int(self.data.when[1]))
        if self.made is None or self.made[0] != when:
            self.made = when, self.batches(*when)
        return self.made[1]

    def __iter__(self):
        return iter(self.current())

    def __len__(self) -> int:
        return len(self.current())


def class_weights(targets: np.ndarray, n_classes: int, kind: str, beta: float) -> np.ndarray | None:
    """Loss weights per class from the training rows' targets (ids or multi-hot).

    balanced: n / (C * count) — scikit-learn's compute_class_weight; effective: the effective
    number of samples (1 - beta) / (1 - beta**count) (Cui et al. 2019), scaled to mean 1.
    For multi-label targets the weights are BCE's pos_weight (negatives / positives per class).
    """
    if kind == "none":
        return None
    if targets.ndim == 2:
        pos = targets.sum(0).clip(min=1)
        return ((len(targets) - pos) / pos).astype(np.float32)
    counts = np.bincount(targets, minlength=n_classes)
    if (counts == 0).any():
        raise PipelineError(
            f"class weights: classes {np.flatnonzero(counts == 0).tolist()} have no rows"
        )
    if kind == "balanced":
        from sklearn.utils.class_weight import compute_class_weight  # slow import: only here

        return compute_class_weight("balanced", classes=np.arange(n_classes), y=targets)
    w = (1 - beta) / (1 - beta**counts)
    return w * n_classes / w.sum()


def balanced_sampler(targets: np.ndarray, seed: int) -> torch.utils.data.WeightedRandomSampler:
    """Draws rows so that every class is equally likely (single-label)."""
    counts = np.bincount(targets)
    weights = torch.as_tensor(1.0 / counts[targets], dtype=torch.double)
    g = torch.Generator().manual_seed(seed)
    return torch.utils.data.WeightedRandomSampler(weights, len(targets), generator=g)


def split_dataset(
    index: Index, split: str, rows: np.ndarray, transform: Transform, size: int
) -> ImageDataset:
    """Dataset over `rows` (positions in index.<split>); train rows carry encoded labels."""
    frame = index.train if split == "train" else index.test
    frame = frame.iloc[rows]
    labels = None
    if split == "train":
        labels = encode_labels(
            frame["label"], index.classes, index.meta.get("task", "single_label")
        )
    cache = index.images(split)
    if cache is not None:
        return ImageDataset(transform, size, labels, cache=cache, rows=rows)
    mode = index.meta.get("resize", "squish")
    return ImageDataset(transform, size, labels, paths=frame["path"].tolist(), mode=mode)


class BatchMix:
    """mixup / cutmix of a training batch with its own reverse (row i with row n-1-i), one λ and
    one choice per batch: timm's Mixup in mode "batch", with timm's draws (global numpy, which the
    loop's checkpoint saves and restores). With both alphas on, each mixed batch is cutmix or
    mixup half the time (switch_prob 0.5, timm's default).

    The chance that a batch is mixed is the epoch's augmentation strength (epoch_strength): it
    rises with the ramp, reaches 1 at strength 1 and is 0 in clean epochs. Targets come back as
    probability vectors, so they reach the loss as a student's soft pseudolabels do (class
    weights, label smoothing and per-image weights applied there, not here).

    timm's Mixup is driven through `_mix_batch` (its image mixing, returning λ) rather than its
    `__call__`, which refuses odd batches (a student's last batch) and returns no λ; λ is needed
    to mix a student's per-image weights with the targets (mix_targets).
    """

    def __init__(self, aug: Augment, n_classes: int) -> None:
        self.aug, self.n_classes = aug, n_classes
        self.mixer = Mixup(mixup_alpha=aug.mixup, cutmix_alpha=aug.cutmix, mode="batch",
                           label_smoothing=0.0, num_classes=n_classes)  # fmt: skip

    def __call__(self, batch: tuple, epoch: int, total: int) -> tuple:
        """(images, targets[, weights]) of epoch `epoch` (0-based) of `total`, maybe mixed."""
        self.mixer.mix_prob = epoch_strength(self.aug, epoch, total)
        x, y, *w = batch
        lam = float(self.mixer._mix_batch(x))  # x is mixed in place; 1.0: left as it was
        if lam == 1.0:
            return batch
        dense = y.float() if y.ndim == 2 else one_hot(y, self.n_classes)
        return (x, *mix_targets(dense, w[0] if w else None, lam))


def batch_mix(aug: Augment, n_classes: int) -> BatchMix | None:
    """The training batches' mixer, or None with augment.mixup and augment.cutmix both 0."""
    return BatchMix(aug, n_classes) if aug.mixup > 0 or aug.cutmix > 0 else None


def mix_targets(y: torch.Tensor, w: torch.Tensor | None, lam: float) -> tuple[torch.Tensor, ...]:
    """Target vectors (and per-image loss weights) of a batch mixed with its reverse at λ.

    Without weights: λ y_i + (1-λ) y_j, the last line of timm's mixup_target (which, in timm 1.0.9
    that pyproject allows, takes class ids only, not the vectors of a student or a multi-label
    task). With a student's weights w (1 for a labeled row, pseudo.weight for a pseudolabeled one)
    the whole batch is mixed, labeled and pseudolabeled rows alike, as its rows were drawn (mixing
    within each kind would take two draws and two λ). Each source keeps its own weight: the mixed
    row gets w' = λ w_i + (1-λ) w_j and the target (λ w_i y_i + (1-λ) w_j y_j) / w', so that, each
    row's loss being linear in its target, w' loss(t) = λ w_i loss(y_i) + (1-λ) w_j loss(y_j): a
    pseudolabel weighted 0 (pseudo.weight_rampup) adds nothing through a mix. Rows whose w' is 0
    keep the plain mix (they weigh nothing either way). Probability rows still sum to one.
    """

    def mix(t: torch.Tensor) -> torch.Tensor:
        return t * lam + t.flip(0) * (1.0 - lam)

    if w is None:
        return (mix(y),)
    w = w.to(y.dtype)[:, None]
    mixed_w = mix(w)
    t = torch.where(mixed_w > 0, mix(w * y) / mixed_w.clamp_min(1e-12), mix(y))
    return t, mixed_w[:, 0]


class Weighted(torch.utils.data.Dataset):
    """(image, target vector, loss weight): one item of a student's mixed batch; `weight` is one
    for all or one per item."""

    def __init__(self, images: ImageDataset, targets: np.ndarray, weight) -> None:
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        self.images, self.targets = images, targets.astype(np.float32)
        self.weight = np.broadcast_to(np.asarray(weight, np.float32), (len(images),))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, np.ndarray, np.float32]:
        return self.images[i][0], self.targets[i], self.weight[i]


class TwoViews(torch.utils.data.Dataset):
    """A student's item under pseudo.weighting: online: (image, target, weight, weak view). An
    unlabeled image's weak view is under the teachers' augmentation, and its target is the
    student's to make (steps.online_loss); a labeled row (`weak` None) has none."""

    def __init__(self, items: Weighted, weak: ImageDataset | None = None) -> None:
        if weak is not None and len(weak) != len(items):
            raise ValueError(f"{len(items)} items but {len(weak)} weak views")
        self.items, self.weak = items, weak

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple:
        return *self.items[i], None if self.weak is None else self.weak[i][0]


def two_views_batch(items: list[tuple]) -> tuple:
    """TwoViews' items as (images, targets, weights, the weak views, their rows in the batch):
    only the unlabeled images' weak views travel, and their rows are an index, not a mask, so
    that the step selects them without waiting for the GPU."""
    x, y, w = torch.utils.data.default_collate([item[:3] for item in items])
    own = [k for k, item in enumerate(items) if item[3] is not None]
    weak = torch.stack([items[k][3] for k in own]) if own else x[:0]
    return x, y, w, weak, torch.tensor(own, dtype=torch.int64)


def confidence_weights(conf: np.ndarray, n_classes: int, multi_label: bool) -> np.ndarray:
    """A teacher's confidence rescaled from chance (0) to certainty (1): chance is 1/classes for
    the top probability, 0.5 for a tag's max(p, 1 - p); below chance counts as 0."""
    chance = 0.5 if multi_label else 1 / n_classes
    return np.clip((np.asarray(conf, np.float64) - chance) / (1 - chance), 0, 1)


def pseudo_per_batch(batch_size: int, ratio: float) -> int:
    """Pseudolabeled items in a batch mixed 1:ratio (half rounds up): 64 at 1:3 -> 16 (+ 48)."""
    return int(batch_size / (ratio + 1) + 0.5)


def mixed_batches(
    labeled: np.ndarray, n_pseudo: int, batch_size: int, ratio: float, seed: int,
    fill: bool = False,
) -> list[list[int]]:  # fmt: skip
    """Index batches over [labeled rows..., pseudolabeled rows...] mixed 1:ratio: one epoch is
    one pass over whichever needs more batches, the other reshuffled as often as it takes.

    `labeled` is this epoch's order of the labeled positions. Every batch holds
    pseudo_per_batch(...) pseudolabeled items; the last one takes what is left of the leading
    side and its share of the other (a last batch of one item joins the one before). With few
    pseudolabels (fewer than the labeled rows / ratio) each labeled row is used once and they
    cycle; with more, each pseudolabel is used once and the labeled rows cycle, so that a test
    set larger than the training set is seen whole every epoch. `fill` (the control run):
    the same batches, the pseudolabeled places taken by more labeled rows, indexed in a copy
    of them after the originals (n + i: the copy takes the pseudolabels' augmentation).
    """
    n_ps = pseudo_per_batch(batch_size, ratio) if n_pseudo else 0
    n_lab = batch_size - n_ps
    rng = np.random.default_rng(seed)
    labeled = np.asarray(labeled)
    if n_ps and n_pseudo * n_lab > len(labeled) * n_ps:  # the pseudolabels need more batches
        pseudo = rng.permutation(n_pseudo) + len(labeled)
        ps_sizes, lab_sizes = batch_sizes(n_pseudo, n_ps, n_lab, ratio)
        labs = cycled(labeled, sum(lab_sizes), rng)
    else:
        lab_sizes, ps_sizes = batch_sizes(len(labeled), n_lab, n_ps, 1 / ratio)
        labs = labeled
        pseudo = cycled(np.arange(n_pseudo), sum(ps_sizes), rng) + len(labeled)
    if fill:  # the control: labeled rows where the student's pseudolabels were, from the copy
        pseudo = cycled(labeled, len(pseudo), rng) + len(labeled)  # after them (epoch_dataset)
    la, pa = np.cumsum([0, *lab_sizes]), np.cumsum([0, *ps_sizes])
    return [
        labs[la[i] : la[i + 1]].tolist() + pseudo[pa[i] : pa[i + 1]].tolist()
        for i in range(len(lab_sizes))
    ]


def batch_sizes(n: int, per: int, per_other: int, share: float) -> tuple[list[int], list[int]]:
    """Per batch, how many of the leading side's n items (`per` a batch, the rest in a last one)
    and of the other side's (`per_other`; the last batch `share` of its leading items, half
    rounding up); a last batch of one item joins the one before (BatchNorm needs two)."""
    sizes = [per] * (n // per) + ([n % per] if n % per else [])
    other = [per_other] * len(sizes)
    if per_other and sizes[-1] < per:
        other[-1] = int(sizes[-1] * share + 0.5)
    if len(sizes) > 1 and sizes[-1] + other[-1] < 2:
        sizes[-2:] = [sizes[-2] + sizes[-1]]
        other[-2:] = [other[-2] + other[-1]]
    return sizes, other


def cycled(items: np.ndarray, need: int, rng: np.random.Generator) -> np.ndarray:
    """`need` of `items`, in reshuffled passes over all of them (fewer than one pass: a sample)."""
    if not need:
        return np.zeros(0, int)
    passes = -(-need // len(items))
    return np.concatenate([items[rng.permutation(len(items))] for _ in range(passes)])[:need]
