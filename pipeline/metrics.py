"""Competition metrics, multi-label thresholds, and shaping and validating a submission.

Every metric takes probabilities (N, C) and targets: integer class ids (N,) for single-label tasks
or a multi-hot array (N, C) for multi-label ones. `score` orients it so that higher is better
(losses negated) for checkpoint selection; `report` gives every metric that applies in its natural
sign. Multi-label decisions are `probs >= threshold` per class, and never empty: a row with no
class over its threshold gets its most probable class (every Kaggle multi-label task has at least
one tag per image).

Ordinal targets scored by quadratic weighted kappa (aptos diagnosis 0-4) stay a classification:
the class ids are decoded by the expected value sum_k k * p_k, rounded, which uses the whole
distribution (a 50/50 split between grades 1 and 3 decodes to 2) and beats argmax on kappa.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.files import PipelineError

SINGLE, MULTI = "single_label", "multi_label"
EPS = 1e-15  # Kaggle clips probabilities to [EPS, 1 - EPS] before taking logs
# float32 probabilities blended as logits (tta.combine: logits): 1 - 1e-15 rounds to 1 in float32
LOGIT_EPS = 1e-7
THRESHOLD_GRID = np.round(np.arange(0.05, 0.96, 0.05), 2)  # candidates per class when tuning


def task_of(targets: np.ndarray) -> str:
    return MULTI if targets.ndim == 2 else SINGLE


def decide_tags(probs: np.ndarray, thresholds: np.ndarray | float = 0.5) -> np.ndarray:
    """Multi-label decisions (N, C) bool: over the class threshold, at least one per row."""
    out = probs >= thresholds
    empty = ~out.any(1)
    out[empty, probs[empty].argmax(1)] = True
    return out


def decode_labels(probs: np.ndarray, metric: str) -> np.ndarray:
    """Class ids: argmax, or the rounded expected class id for kappa (ordinal targets)."""
    if metric == "qwk":
        expected = probs @ np.arange(probs.shape[1]) / probs.sum(1)
        return np.clip(np.rint(expected), 0, probs.shape[1] - 1).astype(int)
    return probs.argmax(1)


def confusion_pairs(
    probs: np.ndarray, targets: np.ndarray, classes: list[str], metric: str, thresholds
) -> pd.DataFrame:
    """(actual, predicted) rows for DVC's confusion template.

    Single-label: one row per image, the prediction decoded as for the metric. Multi-label: one
    row per true tag (predicted: the tag itself when it was predicted, else "(missed)") and one
    per wrongly predicted tag (actual "(none)").
    """
    names = np.array(classes)
    if targets.ndim == 1:
        return pd.DataFrame(
            {"actual": names[targets.astype(int)], "predicted": names[decode_labels(probs, metric)]}
        )
    pred, true = decide_tags(probs, thresholds), targets > 0.5
    rows = []
    for p_row, t_row in zip(pred, true, strict=True):
        rows += [
            (c, c if p else "(missed)") for c, p in zip(names[t_row], p_row[t_row], strict=True)
        ]
        rows += [("(none)", c) for c in names[p_row & ~t_row]]
    return pd.DataFrame(rows, columns=["actual", "predicted"])


def _decisions(probs: np.ndarray, targets: np.ndarray, thresholds) -> tuple[np.ndarray, np.ndarray]:
    """(predicted, true) as (N, C) bool for either task."""
    if targets.ndim == 2:
        return decide_tags(probs, thresholds), targets > 0.5
    eye = np.eye(probs.shape[1], dtype=bool)
    return eye[probs.argmax(1)], eye[targets.astype(int)]


def _accuracy(probs, targets, thresholds) -> float:
    """Single-label: share of argmax hits. Multi-label: exact-match (subset) accuracy."""
    pred, true = _decisions(probs, targets, thresholds)
    return float((pred == true).all(1).mean())


def row_log_loss(probs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Each row's log loss, probabilities clipped to [EPS, 1 - EPS]: -log p of its class, or for
    multi-label the mean binary cross-entropy over its classes."""
    p = np.clip(probs, EPS, 1 - EPS)
    if targets.ndim == 2:
        return -(targets * np.log(p) + (1 - targets) * np.log(1 - p)).mean(1)
    return -np.log(p[np.arange(len(p)), targets.astype(int)])


def _log_loss(probs, targets, thresholds) -> float:
    p = np.clip(probs, EPS, 1 - EPS)
    if targets.ndim == 2:  # mean binary cross-entropy over every (row, class)
        y = targets > 0.5
        return float(-np.mean(np.where(y, np.log(p), np.log(1 - p))))
    p = p / p.sum(1, keepdims=True)
    return float(-np.mean(np.log(p[np.arange(len(p)), targets.astype(int)])))


AUC_BLOCK = 64  # classes whose columns are copied out and sorted together


def _binary_aucs(true: np.ndarray, probs: np.ndarray, cols: list[int]) -> list[float]:
    """Mann-Whitney form of each column's ROC AUC, ties counted half (what scikit-learn
    computes), for the columns with both classes present. A positive's average rank is read off
    the sorted column (searchsorted), a block of columns copied and sorted at a time."""
    out = []
    for start in range(0, len(cols), AUC_BLOCK):
        ks = cols[start : start + AUC_BLOCK]
        scores, ys = np.ascontiguousarray(probs[:, ks].T), np.ascontiguousarray(true[:, ks].T)
        for s, ordered, y in zip(scores, np.sort(scores, axis=1), ys, strict=True):
            n_pos = int(y.sum())
            if not 0 < n_pos < len(y):
                continue
            pos = s[y]
            lo, hi = np.searchsorted(ordered, pos, "left"), np.searchsorted(ordered, pos, "right")
            ranks = lo + (hi - lo + 1) / 2  # 1-based average rank among ties
            out.append(float((ranks.sum() - n_pos * (n_pos + 1) / 2) / (n_pos * (len(y) - n_pos))))
    return out


def _roc_auc(probs, targets, thresholds) -> float:
    """Binary: AUC of the second class. Otherwise macro mean over classes (one-vs-rest).

    Classes absent from (or filling) the targets have no AUC and are skipped; with none left
    (a tiny validation fold) the score is 0.5, chance, so that checkpoint selection still works.
    """
    _, true = _decisions(probs, targets, thresholds)
    cols = [1] if targets.ndim == 1 and probs.shape[1] == 2 else list(range(probs.shape[1]))
    aucs = _binary_aucs(true, probs, cols)
    return float(np.mean(aucs)) if aucs else 0.5


def _fbeta_samples(beta: float) -> Callable[..., float]:
    def fn(probs, targets, thresholds) -> float:
        pred, true = _decisions(probs, targets, thresholds)
        tp = (pred & true).sum(1)
        b2 = beta**2
        denom = (1 + b2) * tp + b2 * (true & ~pred).sum(1) + (pred & ~true).sum(1)
        # decisions are never empty, so denom > 0 for every row
        return float(np.mean((1 + b2) * tp / denom))

    return fn


def _f1_micro(probs, targets, thresholds) -> float:
    pred, true = _decisions(probs, targets, thresholds)
    tp = (pred & true).sum()
    denom = 2 * tp + (pred & ~true).sum() + (true & ~pred).sum()
    return float(2 * tp / denom) if denom else 0.0


def _qwk(probs, targets, thresholds) -> float:
    """Cohen's kappa with quadratic weights between the targets and decoded class ids."""
    c = probs.shape[1]
    pred, true = decode_labels(probs, "qwk"), targets.astype(int)
    observed = np.zeros((c, c))
    np.add.at(observed, (true, pred), 1)
    expected = np.outer(observed.sum(1), observed.sum(0)) / len(true)
    i = np.arange(c)
    weights = (i[:, None] - i[None, :]) ** 2 / max(c - 1, 1) ** 2
    chance = (weights * expected).sum()
    # one class everywhere on both sides: kappa is undefined; 0 means "no skill shown"
    return float(1 - (weights * observed).sum() / chance) if chance else 0.0


@dataclass(frozen=True)
class Metric:
    fn: Callable[[np.ndarray, np.ndarray, np.ndarray | float], float]
    higher_is_better: bool
    tasks: tuple[str, ...]
    thresholded: bool  # multi-label: depends on the decisions, so thresholds are tuned for it


METRICS: dict[str, Metric] = {
    "accuracy": Metric(_accuracy, True, (SINGLE, MULTI), True),
    "log_loss": Metric(_log_loss, False, (SINGLE, MULTI), False),
    "roc_auc": Metric(_roc_auc, True, (SINGLE, MULTI), False),
    "f2_samples": Metric(_fbeta_samples(2.0), True, (MULTI,), True),  # planet
    "f1_micro": Metric(_f1_micro, True, (SINGLE, MULTI), True),
    "qwk": Metric(_qwk, True, (SINGLE,), False),  # aptos; ordinal class ids 0..C-1
}


def check_applies(name: str, task: str) -> None:
    if name not in METRICS:
        raise PipelineError(f"competition.metric: unknown metric '{name}', one of {list(METRICS)}")
    if task not in METRICS[name].tasks:
        raise PipelineError(
            f"competition.metric: '{name}' applies to {' and '.join(METRICS[name].tasks)} tasks, "
            f"this one is {task}"
        )


def value(
    name: str, probs: np.ndarray, targets: np.ndarray, thresholds: np.ndarray | float = 0.5
) -> float:
    """The metric in its natural sign."""
    check_applies(name, task_of(targets))
    return METRICS[name].fn(probs, targets, thresholds)


def score(name: str, probs: np.ndarray, targets: np.ndarray) -> float:
    """The metric oriented so that higher is better (checkpoint selection; thresholds at 0.5)."""
    v = value(name, probs, targets)
    return v if METRICS[name].higher_is_better else -v


def report(
    probs: np.ndarray, targets: np.ndarray, thresholds: np.ndarray | float = 0.5
) -> dict[str, float]:
    """Every metric that applies to the task, in its natural sign."""
    task = task_of(targets)
    return {
        name: round(m.fn(probs, targets, thresholds), 6)
        for name, m in METRICS.items()
        if task in m.tasks
    }


def tune_thresholds(name: str, probs: np.ndarray, targets: np.ndarray, passes: int = 2):
    """Per-class thresholds maximising the metric on (out-of-fold) predictions.

    Coordinate ascent from 0.5: each class in turn takes the grid value that scores best with the
    others fixed; only strict improvements are kept, so the result is never worse than 0.5 on the
    same predictions. A metric that ignores decisions (log_loss, roc_auc) keeps 0.5.
    """
    thr = np.full(probs.shape[1], 0.5)
    if not METRICS[name].thresholded:
        return thr
    best = score(name, probs, targets)
    sign = 1 if METRICS[name].higher_is_better else -1
    for _ in range(passes):
        improved = False
        for k in range(len(thr)):
            for t in THRESHOLD_GRID:
                trial = thr.copy()
                trial[k] = t
                s = sign * value(name, probs, targets, trial)
                if s > best + 1e-12:
                    best, thr, improved = s, trial, True
        if not improved:
            break
    return thr


def _is_integer(column: pd.Series) -> bool:
    return pd.api.types.is_integer_dtype(column) or (
        column.astype(str).str.fullmatch(r"-?\d+").all() and len(column) > 0
    )


def _plain_integers(classes: list[str]) -> bool:
    """Class names an integer writes back unchanged: "2" is, "02" and "+2" are not."""
    return all(re.fullmatch(r"-?\d+", c) and c == str(int(c)) for c in classes)


def read_sample(path) -> pd.DataFrame:
    """sample_submission.csv's id column and second column (as text where it is text), its
    every column name in `attrs["columns"]`: a probabilities sample of 1,000 columns is read
    for its header and ids only."""
    if not Path(path).exists():
        raise PipelineError(f"{path}: missing; run `dvc repro prepare` first")
    columns = pd.read_csv(path, nrows=0).columns.tolist()
    sample = pd.read_csv(path, dtype={columns[0]: str}, keep_default_na=False,
                         usecols=range(min(2, len(columns))))  # fmt: skip
    sample.attrs["columns"] = columns
    return sample


def columns_of(sample: pd.DataFrame) -> list[str]:
    """Every column of sample_submission.csv, also when `read_sample` kept two of them."""
    return sample.attrs.get("columns", sample.columns.tolist())


def shape_submission(
    ids: list[str],
    probs: np.ndarray,
    classes: list[str],
    sample: pd.DataFrame,
    kind: str,
    *,
    metric: str = "accuracy",
    positive_class: str | None = None,
    thresholds: np.ndarray | None = None,
) -> pd.DataFrame:
    """Turn test probabilities into sample_submission's shape: its columns and its id order.

    kind: label (one column of class names, decoded as for `metric`), probs (one column per
    class), binary (one column: P(positive_class)), tags (space-separated, per-class thresholds).
    Class names are written as the training labels spell them: "02" stays "02" whatever the
    sample's "0" looks like, since the leaderboard compares text.
    """
    id_col = sample.columns[0]
    by_id = pd.DataFrame(probs, index=pd.Index([str(i) for i in ids]), columns=classes)
    want = sample[id_col].astype(str)
    missing = set(want) - set(by_id.index)
    if missing:
        raise PipelineError(
            f"sample_submission.csv: {len(missing)} ids have no prediction, "
            f"e.g. {sorted(missing)[:3]}"
        )
    ordered, columns = by_id.loc[want], columns_of(sample)
    out = pd.DataFrame({id_col: sample[id_col].to_numpy()})
    if kind == "label":
        col = sample.columns[1]
        names = np.array(classes, dtype=object)[decode_labels(ordered.to_numpy(), metric)]
        # integers where the sample has integers and the classes read back the same
        as_int = _is_integer(sample[col]) and _plain_integers(classes)
        out[col] = names.astype(int) if as_int else names
    elif kind == "probs":
        unknown = [c for c in columns[1:] if c not in classes]
        if unknown:
            raise PipelineError(f"sample_submission.csv: columns {unknown} are not classes")
        out = pd.concat([out, ordered[columns[1:]].reset_index(drop=True)], axis=1)
    elif kind == "binary":
        if positive_class not in classes:
            raise PipelineError(f"positive class '{positive_class}' is not one of {classes}")
        out[sample.columns[1]] = ordered[positive_class].to_numpy()
    elif kind == "tags":
        thr = np.full(len(classes), 0.5) if thresholds is None else np.asarray(thresholds)
        decided = decide_tags(ordered.to_numpy(), thr)
        names = np.array(classes)
        out[sample.columns[1]] = [" ".join(names[row]) for row in decided]
    else:
        raise PipelineError(f"submission kind '{kind}' is not supported")
    return out


def validate_submission(
    sub: pd.DataFrame, sample: pd.DataFrame, classes: list[str], kind: str, source: str
) -> None:
    """Raise PipelineError naming `source`, the column and rows unless `sub` is uploadable."""
    if list(sub.columns) != columns_of(sample):
        raise PipelineError(
            f"{source}: columns {list(sub.columns)[:12]} differ from sample_submission's "
            f"{columns_of(sample)[:12]}"
        )
    id_col = sample.columns[0]
    ids, want = sub[id_col].astype(str), sample[id_col].astype(str)
    dup = ids[ids.duplicated()]
    if len(dup):
        raise PipelineError(
            f"{source}: id '{dup.iloc[0]}' appears more than once (row {dup.index[0] + 2})"
        )
    if set(ids) != set(want):
        extra, missing = sorted(set(ids) - set(want)), sorted(set(want) - set(ids))
        raise PipelineError(
            f"{source}: ids differ from sample_submission's: "
            f"{len(missing)} missing (e.g. {missing[:3]}), {len(extra)} unknown (e.g. {extra[:3]})"
        )
    for col in sub.columns[1:]:
        bad = empty(sub[col])
        if bad.any():
            raise PipelineError(
                f"{source}: column '{col}' is empty at row {int(np.argmax(bad)) + 2}"
            )
    if kind == "label":
        col = sub.columns[1]
        unknown = ~sub[col].astype(str).isin(set(classes))
        if unknown.any():
            r = int(np.argmax(unknown))
            raise PipelineError(
                f"{source}: column '{col}' row {r + 2} has '{sub[col].iloc[r]}', not one of the "
                f"classes {classes[:10]}"
            )
    elif kind in ("probs", "binary"):
        for col in sub.columns[1:]:
            v = pd.to_numeric(sub[col], errors="coerce")
            bad = v.isna() | (v < 0) | (v > 1)
            if bad.any():
                r = int(np.argmax(bad))
                raise PipelineError(
                    f"{source}: column '{col}' row {r + 2} has '{sub[col].iloc[r]}', "
                    "not a probability in [0, 1]"
                )
    elif kind == "tags":
        _check_tags(sub, classes, source)
    else:
        raise PipelineError(f"submission kind '{kind}' is not supported")


def empty(column: pd.Series) -> pd.Series:
    """Missing or blank cells (text is looked at only in a column that holds text)."""
    if pd.api.types.is_numeric_dtype(column):
        return column.isna()
    return column.isna() | (column.astype(str).str.strip() == "")


def _check_tags(sub: pd.DataFrame, classes: list[str], source: str) -> None:
    """Every cell a set of classes: known tags, each once."""
    col = sub.columns[1]
    for r, tags in enumerate(sub[col].astype(str)):
        unknown = set(tags.split()) - set(classes)
        if unknown:
            raise PipelineError(
                f"{source}: column '{col}' row {r + 2} has unknown tags {sorted(unknown)}, not "
                f"among the classes {classes[:10]}"
            )
        if len(set(tags.split())) < len(tags.split()):
            raise PipelineError(f"{source}: column '{col}' row {r + 2} repeats a tag in '{tags}'")
