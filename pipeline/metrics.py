"""Competition metrics, and shaping and validating a submission against sample_submission.csv.

Metrics take class probabilities (N, C) and integer targets (N,) and return a float where higher
is better (losses are negated by `score`, reported positive by `report`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, log_loss

from pipeline.files import PipelineError


def _accuracy(probs: np.ndarray, targets: np.ndarray) -> float:
    return float(accuracy_score(targets, probs.argmax(1)))


def _log_loss(probs: np.ndarray, targets: np.ndarray) -> float:
    p = np.clip(probs, 1e-15, 1 - 1e-15)  # Kaggle clips before taking logs
    p = p / p.sum(1, keepdims=True)
    return float(log_loss(targets, p, labels=np.arange(probs.shape[1])))


# name -> (function, higher_is_better)
METRICS: dict[str, tuple[Callable[[np.ndarray, np.ndarray], float], bool]] = {
    "accuracy": (_accuracy, True),
    "log_loss": (_log_loss, False),
}


def score(name: str, probs: np.ndarray, targets: np.ndarray) -> float:
    """The metric oriented so that higher is better (for checkpoint selection)."""
    fn, higher = METRICS[name]
    value = fn(probs, targets)
    return value if higher else -value


def report(probs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """Every metric that applies, in its natural sign."""
    return {name: round(fn(probs, targets), 6) for name, (fn, _) in METRICS.items()}


def shape_submission(
    ids: list[str], probs: np.ndarray, classes: list[str], sample: pd.DataFrame, kind: str
) -> pd.DataFrame:
    """Turn test probabilities into sample_submission's shape: its columns and its id order."""
    id_col = sample.columns[0]
    by_id = pd.DataFrame(probs, index=pd.Index(ids, name=id_col), columns=classes)
    missing = set(sample[id_col].astype(str)) - set(by_id.index)
    if missing:
        raise PipelineError(
            f"sample_submission.csv: {len(missing)} ids have no prediction, "
            f"e.g. {sorted(missing)[:3]}"
        )
    ordered = by_id.loc[sample[id_col].astype(str)]
    if kind == "label":
        label_col = sample.columns[1]
        out = pd.DataFrame({id_col: sample[id_col], label_col: ordered.idxmax(axis=1).to_numpy()})
        # keep integer class names integer, as sample_submission has them
        if pd.api.types.is_integer_dtype(sample[label_col]):
            out[label_col] = out[label_col].astype(int)
        return out
    raise PipelineError(f"submission kind '{kind}' is not supported")


def validate_submission(
    sub: pd.DataFrame, sample: pd.DataFrame, classes: list[str], kind: str, source: str
) -> None:
    """Raise PipelineError naming `source`, the column and rows unless `sub` is uploadable."""
    if list(sub.columns) != list(sample.columns):
        raise PipelineError(
            f"{source}: columns {list(sub.columns)} differ from sample_submission's "
            f"{list(sample.columns)}"
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
        bad = sub[col].isna()
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
        col = sub.columns[1]
        for r, tags in enumerate(sub[col].astype(str)):
            unknown = set(tags.split()) - set(classes)
            if unknown:
                raise PipelineError(
                    f"{source}: column '{col}' row {r + 2} has unknown tags {sorted(unknown)}"
                )
    else:
        raise PipelineError(f"submission kind '{kind}' is not supported")
