"""The rules params.yaml must keep across sections, beyond each key's own type and range: the
students against the teachers (`check_students`), model.pretrained's mapping against the
backbones (`check_weights`) and the training recipe against its epochs (`check_recipe`).
pipeline/params.py's `Params` runs them as it validates the file; each raises ValueError, which
`parse_params` turns into one line naming the keys. Each takes that `Params` (not imported here:
params.py imports this module).
"""

from __future__ import annotations


def check_students(p) -> None:
    """Each student maps to a teacher, is a model of its own, and can start as pseudo.init says."""
    ps, teachers = p.pseudo, p.train.backbones
    unknown = sorted(set(ps.backbones or {}) - set(teachers))
    if unknown:
        raise ValueError(
            f"pseudo.backbones maps {unknown}, not in train.backbones {teachers}: map a "
            "teacher to its student's backbone, or set pseudo.backbones: null"
        )
    other = {t: s for t, s in p.students().items() if s != t}
    if ps.enabled and ps.init == "teacher" and other:
        raise ValueError(
            f"pseudo.init: teacher refines each teacher's own backbone, but pseudo.backbones "
            f"gives {other}; use pseudo.init: scratch for another backbone"
        )
    if ps.enabled and ps.rounds > 1 and ps.source == "ensemble":
        raise ValueError(
            "pseudo.rounds > 1 labels each round from the last round's students of the same "
            "fold; use pseudo.source: fold (source: ensemble is for one round)"
        )
    if ps.enabled and ps.extra is not None and ps.source == "ensemble":
        raise ValueError(
            "pseudo.extra's images are labelled by each fold's teachers; use pseudo.source: "
            "fold (the ensemble's blend covers the test set only)"
        )
    if ps.enabled and ps.weighting == "online":
        check_online(p)
    archs = list(p.students().values())
    twice = sorted({s for s in archs if archs.count(s) > 1})
    if ps.enabled and twice:  # from scratch on the same pseudolabels: one model, twice
        raise ValueError(
            f"pseudo.backbones: two teachers' students are both {twice[0]} from scratch, "
            "the same model trained twice; map only one of them"
        )


def check_online(p) -> None:
    """pseudo.weighting: online's two views: the weak one is the teachers' augmentation, the
    strong one pseudo.noise's on the unlabeled images only; both whole images."""
    if p.pseudo.noise_on != "pseudolabels":
        raise ValueError(
            "pseudo.weighting: online takes its weak view from the teachers' augmentation and "
            "its strong view from pseudo.noise; set pseudo.noise_on: pseudolabels (with all, "
            "the noise would augment the weak view too)"
        )
    mixing = [k for k in ("mixup", "cutmix") if getattr(p.augment, k) > 0]
    if mixing:
        raise ValueError(
            f"pseudo.weighting: online needs each unlabeled image whole (its weak and strong "
            f"views), and augment.{mixing[0]} mixes whole batches: set it to 0.0, or use "
            "pseudo.weighting: cut"
        )


def check_weights(p) -> None:
    """model.pretrained as a mapping names every backbone trained (a typo is no backbone)."""
    given = p.model.pretrained
    if not isinstance(given, dict):
        return
    need, named = p.trained_backbones(), {*p.train.backbones, *p.students().values()}
    missing, unknown = [n for n in need if n not in given], sorted(set(given) - named)
    if missing or unknown:
        what = [f"{missing} missing"] * bool(missing)
        what += [f"{unknown} not a backbone"] * bool(unknown)
        raise ValueError(
            f"model.pretrained maps each backbone trained to its weights (true, false or a "
            f"file): {', '.join(what)}; the backbones trained: {need}"
        )


def check_recipe(p) -> None:
    """Every run has an augmented epoch (so a student of no epochs is refused here, naming
    pseudo.epochs), and progressive resizing ends at the input size."""
    ps, aug, sizes = p.pseudo, p.augment, p.train.sizes
    head = p.head_epochs()
    runs = [("head.epochs + train.epochs", head + p.train.epochs)]
    if ps.enabled:
        runs.append(("pseudo.epochs", ps.epochs + (head * (ps.init == "scratch"))))
    for what, epochs in runs:
        if aug.clean_epochs >= epochs:
            raise ValueError(
                f"augment.clean_epochs ({aug.clean_epochs}) leaves no augmented epoch in "
                f"{what} ({epochs})"
            )
    if sizes is not None:
        if not sizes or sizes != sorted(sizes):
            raise ValueError(f"train.sizes must be a non-empty, rising list, got {sizes}")
        if p.base.image_size is not None and sizes[-1] != p.base.image_size:
            raise ValueError(
                f"train.sizes ends at {sizes[-1]} but base.image_size is "
                f"{p.base.image_size}: the last size is the one predict uses"
            )
