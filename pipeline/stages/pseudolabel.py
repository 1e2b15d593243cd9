"""pseudolabel: label the test set for every fold's student, from that fold's teachers only.

    python -m pipeline pseudolabel      # reads pseudo.*, train.backbones, base.folds, metric

`pseudo.source: fold` (the default): fold k's student learns from the mean of the fold-k teachers'
test predictions (preds/<model>/fold<k>/test.npy, TTA-averaged over every teacher backbone). Those
teachers never trained on fold k's validation rows, so the student's CV on them stays honest.
`source: ensemble` gives every fold the blend of all teachers (ensemble/test.npy); the other
folds' teachers trained on fold k's validation rows, so that CV is optimistic.

Selection: an image is kept when its confidence reaches `pseudo.threshold` (single-label: the top
probability; multi-label: every tag's probability outside [1 - t, t]); with `weighting:
confidence` every image is (the student weighs each by its confidence instead), and with
`weighting: online` every image, uncapped (the student makes each image's target itself and
applies the threshold to its own confidence, every step). With `class_cap` (single-label), a
class keeps at most its share of the fold's training rows times the number of confident images
(the most confident stay; a hard class with few keeps them all: `cap_counts`).
Targets: the probabilities (`soft`, sharpened by `temperature`) or hard labels (multi-label: tags
through thresholds tuned on the other folds' out-of-fold predictions, or the ensemble's).

With `pseudo.extra`, its images (data/extra/, predicted by the same teachers: extra.npy beside
test.npy) are selected together with the test set, by the same threshold and class cap.

Writes pseudo/fold<k>/labels.csv (id, label, confidence), pseudo/fold<k>/targets.npy with
targets.json (one float32 target column per class, rows in labels.csv's order: what the student
trains on), pseudo/fold<k>/source.json (provenance: source, teachers and the sha256 of
their weights, settings, counts) and metrics/pseudo.json (kept, dropped and capped per class and
fold).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import metrics
from pipeline.files import PipelineError, atomic_dir, sha256, write_csv, write_json
from pipeline.index import Index, encode_labels, fold_rows, read_folds, read_index, read_pool
from pipeline.params import Pseudo, load_params
from pipeline.preds import fold_blend, read_preds, read_thresholds, write_preds
from pipeline.roles import labeller, not_run, pseudo_dir, round_arg
from pipeline.shaping import SELECTION
from pipeline.targets import confidence, sharpened

LEAK_WARNING = (
    "WARNING: pseudo.source: ensemble labels every fold's student with the blend of all "
    "teachers; the teachers of the other folds trained on fold k's validation rows, so the "
    "students' CV is optimistic (it leaks validation labels). Use source: fold for an honest CV."
)


# --- selection: pure functions of the probabilities ---------------------------------------


def cap_counts(available: np.ndarray, shares: np.ndarray) -> np.ndarray:
    """Images per class: all of a class's confident images, up to its training share of every
    confident image (N, all classes together): min(available_c, ceil(share_c * N)).

    A class with few confident images (a hard one) keeps all of them and takes nothing from the
    others; one with more than its share keeps its most confident share_c * N. Capping at a share
    of what is *kept* instead would let the least confident class set everyone's count (one hard
    class with 23 confident images held 10 classes to about 23 each).
    """
    return np.minimum(available, np.ceil(shares * available.sum() - 1e-9).astype(int))


def cap_to_shares(pred: np.ndarray, conf: np.ndarray, keep: np.ndarray, shares: np.ndarray):
    """Keep the most confident images of each class, as many as `cap_counts` allows: one sort
    of the confident images by class, then by confidence (ties in row order)."""
    rows = np.flatnonzero(keep)
    order = rows[np.lexsort((-conf[rows], pred[rows]))]
    cls = pred[order]
    rank = np.arange(len(order)) - np.searchsorted(cls, cls)  # place within its class
    n = cap_counts(np.bincount(cls, minlength=len(shares)), shares)
    out = np.zeros_like(keep)
    out[order[rank < n[cls]]] = True
    return out


def select(
    probs: np.ndarray, task: str, threshold: float, shares: np.ndarray | None = None
) -> np.ndarray:
    """Boolean mask of the kept images: confidence >= threshold, then the class cap if given."""
    top = None if task == "multi_label" else probs.argmax(1)
    return kept_rows(confidence(probs, task), top, threshold, shares)


def kept_rows(conf: np.ndarray, top: np.ndarray | None, threshold: float, shares) -> np.ndarray:
    """`select` given each image's confidence and (single-label) top class."""
    keep = conf >= threshold
    if shares is not None and top is not None:
        keep = cap_to_shares(top, conf, keep, shares)
    return keep


def hard_targets(probs: np.ndarray, task: str, thresholds: np.ndarray | None) -> np.ndarray:
    """One-hot of the top class; multi-label: the tags over their thresholds (multi-hot)."""
    if task == "multi_label":
        return metrics.decide_tags(probs, 0.5 if thresholds is None else thresholds).astype(float)
    out = np.zeros(probs.shape, np.float32)
    out[np.arange(len(probs)), probs.argmax(1)] = 1
    return out


# --- one fold ------------------------------------------------------------------------------


def label_frame(
    probs: pd.DataFrame, task: str, ps: Pseudo, shares: np.ndarray | None, thresholds
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(kept rows: id, label, confidence, targets per class; counts per class: kept, dropped,
    and of those dropped the confident ones the class cap left out)."""
    p, classes, multi = probs.to_numpy(), list(probs.columns), task == "multi_label"
    cut = ps.threshold if ps.weighting == "cut" else 0.0  # else weights, or the students' own cut
    conf, top = confidence(p, task), None if multi else p.argmax(1)
    capped = ps.class_cap and ps.weighting != "online"  # online: the pool is every image
    keep = kept_rows(conf, top, cut, shares if capped else None)
    kept, names = p[keep], np.array(classes)  # targets of the kept rows only
    if multi:
        tags = hard_targets(kept, task, thresholds)
        label = [" ".join(names[row.astype(bool)]) for row in tags]
    else:
        label = names[top[keep]].tolist()
    soft = sharpened(kept, task, ps.temperature) if ps.soft else None
    frame = pd.DataFrame(
        hard_targets(kept, task, thresholds) if soft is None else soft, columns=classes
    )
    frame.insert(0, "confidence", conf[keep].round(6))
    frame.insert(0, "label", label)
    frame.insert(0, "id", probs.index.to_numpy()[keep])
    return frame, class_counts(p, top, thresholds, keep, conf >= cut, classes)


def class_counts(p, top, thresholds, keep, confident, classes: list[str]) -> pd.DataFrame:
    """Images per class kept, dropped, and of those dropped the confident ones the class cap
    left out: single-label by the top class (`top`), multi-label (`top` None) by every tag
    decided on."""
    if top is None:
        tags = metrics.decide_tags(p, 0.5 if thresholds is None else thresholds)

        def count(rows):
            return tags[rows].sum(0)
    else:

        def count(rows):
            return np.bincount(top[rows], minlength=len(classes))

    return pd.DataFrame(
        {"kept": count(keep), "dropped": count(~keep), "capped": count(~keep & confident)},
        index=classes,
    )


def train_shares(index: Index, rows: np.ndarray) -> np.ndarray:
    """Each class's fraction of the fold's training rows (the class cap's proportions)."""
    t = encode_labels(index.train["label"].iloc[rows], index.classes, index.meta["task"])
    return np.bincount(t, minlength=len(index.classes)) / len(t) if t.ndim == 1 else None


def other_folds_thresholds(index: Index, dirs: list[Path], fold: int, folds: list[int], metric):
    """Multi-label thresholds tuned on the OOF predictions of every fold but `fold`: no label of
    fold k's validation rows decides fold k's pseudolabels."""
    oof = pd.concat([fold_blend(dirs, j, "oof", index.classes) for j in folds if j != fold])
    truth = index.train.set_index("id").loc[oof.index, "label"]
    targets = encode_labels(truth, index.classes, "multi_label")
    return metrics.tune_thresholds(metric, oof.to_numpy(), targets)


def teacher_weights(models: Path, backbones: list[str], fold: int) -> dict[str, str]:
    """sha256 of each fold-k teacher's weights: a student refining one checks it is the same."""
    files = {b: models / b / f"fold{fold}" / "model.safetensors" for b in backbones}
    for f in files.values():
        if not f.exists():
            raise PipelineError(f"{f}: missing; run `dvc repro train` first")
    return {b: sha256(f) for b, f in files.items()}


# --- the stage -----------------------------------------------------------------------------


def fold_inputs(index, ps: Pseudo, backbones, folds, fold, metric, preds: Path, ens: Path):
    """(test and extra images' probabilities, multi-label thresholds, who labelled) for fold
    `fold`'s student."""
    multi = index.meta["task"] == "multi_label"
    if ps.source == "ensemble":
        probs = read_preds(ens, "test", index.classes)
        return probs, read_thresholds(ens / "thresholds.json", index.classes), ["ensemble"]
    dirs = [preds / b for b in backbones]
    probs = fold_blend(dirs, fold, "test", index.classes)
    if ps.extra is not None:  # pseudo.extra's images, predicted beside the test set
        probs = pd.concat([probs, fold_blend(dirs, fold, "extra", index.classes)])
    thr = other_folds_thresholds(index, dirs, fold, folds, metric) if multi else None
    return probs, thr, [f"{b} fold {fold}" for b in backbones]


def pool_ids(index: Index, pool: Index) -> pd.Series:
    """The images to label: the test set's, then pseudo.extra's (none of them a test id)."""
    clash = set(pool.test["id"]) & set(index.test["id"])
    if clash:
        raise PipelineError(
            f"{pool.root / 'test.csv'}: ids {sorted(clash)[:3]} are test ids too; rerun "
            "`dvc repro extra`"
        )
    return pd.concat([index.test["id"], pool.test["id"]], ignore_index=True)


def label_fold(
    index: Index, pool: Index, ps: Pseudo, k: int, inputs, fold_table
) -> tuple[pd.DataFrame, dict]:
    """Fold k's kept pseudolabels and its provenance record (with counts per class)."""
    probs, thresholds, who = inputs
    ids = pool_ids(index, pool)
    missing = set(ids) - set(probs.index)
    if missing:
        raise PipelineError(
            f"predictions from {', '.join(who)} lack {len(missing)} test "
            f"{'or extra ' if len(pool.test) else ''}ids (e.g. "
            f"{sorted(missing)[:3]}); rerun `dvc repro predict`"
        )
    shares = train_shares(index, fold_rows(index, fold_table, k)[0])
    frame, counts = label_frame(probs.loc[ids], index.meta["task"], ps, shares, thresholds)
    extra = frame["id"].isin(pool.test["id"])
    info = {"labelled_by": who, "kept": len(frame), "of": len(ids)}
    info |= {"kept_extra": int(extra.sum()), "of_extra": len(pool.test)}
    info["per_class"] = {c: {k: int(v) for k, v in row.items()} for c, row in counts.iterrows()}
    return frame, info


def kept_line(found: dict, n_test: int) -> str:
    """How many images were kept, why the others were not, and each class's count."""
    per_class, kept, n = found["per_class"], found["kept"], found["of"]
    capped = sum(c["capped"] for c in per_class.values())  # single-label: one class an image
    classes = ", ".join(f"{name} {c['kept']}" for name, c in per_class.items())
    what = f"{n} test images" if n == n_test else f"{n_test} test + {n - n_test} extra images"
    extra = f" ({found['kept_extra']} extra)" if n > n_test else ""
    return (
        f"{kept} of {what} kept{extra} ({n - kept - capped} below the threshold, "
        f"{capped} over their class's cap); per class: {classes}"
    )


def run(
    ps: Pseudo,
    backbones: list[str],
    folds: list[int],
    metric: str,
    round_: int = 1,
    ens: Path = Path("ensemble"),
) -> dict:
    """Round `round_`'s pseudolabels, from fold k's teachers (round 1) or round r - 1's students;
    a round that does not run writes empty labels that say why."""
    index, why = read_index(), not_run(ps, round_)
    pool = read_pool(ps.extra if why is None else None)
    by, out = labeller(round_), pseudo_dir(round_)
    report: dict = {"enabled": why is None, "source": ps.source, "threshold": ps.threshold}
    if why is None:
        warn(ps, len(index.train), len(index.test))
    fold_table = read_folds()
    empty = pd.DataFrame(columns=["id", "label", "confidence", *index.classes])
    with atomic_dir(out) as tmp:  # every fold's labels appear together or not at all
        for k in folds:
            info = ps.model_dump(include=set(SELECTION)) | {"enabled": why is None}
            frame = empty
            if why is None:
                info["teacher_weights"] = teacher_weights(by.models, backbones, k)
                inputs = fold_inputs(index, ps, backbones, folds, k, metric, by.preds, ens)
                frame, found = label_fold(index, pool, ps, k, inputs, fold_table)
                info |= found | {"round": round_, "labeller": by.name}
                report[f"fold{k}"] = {k_: found[k_] for k_ in ("kept", "kept_extra", "per_class")}
                print(f"pseudolabel: round {round_}, fold {k}: {kept_line(found, len(index.test))}")
            write_labels(tmp / f"fold{k}", frame, index.classes)
            write_json(tmp / f"fold{k}" / "source.json", info)
    if why is not None:
        print(f"pseudolabel: round {round_}: {why}: no pseudolabels, no student trains")
    write_json(pseudo_metrics(round_), report | ({} if why is None else {"skipped": why}))
    return report


def write_labels(folder: Path, frame: pd.DataFrame, classes: list[str]) -> None:
    """labels.csv (id, label, confidence: what a person reads) and targets.npy (the class
    columns, float32: what the student trains on, never printed as text)."""
    write_csv(folder / "labels.csv", frame[["id", "label", "confidence"]])
    write_preds(folder, "targets", frame["id"], frame[classes].to_numpy(np.float32), classes)


def pseudo_metrics(round_: int) -> Path:
    """metrics/pseudo.json (round 1), metrics/pseudo_round<r>.json."""
    return Path("metrics") / ("pseudo.json" if round_ == 1 else f"pseudo_round{round_}.json")


def warn(ps: Pseudo, n_train: int, n_test: int) -> None:
    if n_test < n_train / 2:
        print(
            f"warning: the test set ({n_test} images) is less than half the training set "
            f"({n_train}); pseudolabels add little when the test set is much smaller"
        )
    if ps.source == "ensemble":
        print(LEAK_WARNING)


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="python -m pipeline pseudolabel")
    round_arg(ap)
    a = ap.parse_args(argv)
    p = load_params()
    run(p.pseudo, p.train.backbones, p.base.folds, p.competition.metric, a.round)
