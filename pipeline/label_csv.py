"""The label CSV: reading data/raw's CSVs, choosing the one that holds the labels, and what its
columns mean (which is the id, which the label; one-hot classes; single- or multi-label).

pipeline/layouts.py's readers call these (and re-export those that other modules read from it).
Every CSV is read with read_csv: every cell a string, `,` `;` or tab separated.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.files import PipelineError
from pipeline.params import Competition

# known label CSV names, most specific first; any other CSV naming "train" or "label" follows
LABEL_CSVS = ("labels.csv", "trainLabels.csv", "train_labels.csv", "train_v2.csv", "train.csv")
NOT_LABELS = ("sample", "solution", "test")  # CSV names that never hold training labels
DELIMITERS = (",", ";", "\t")  # Kaggle ships commas; spreadsheets in comma-decimal locales ";"


def delimiter(path: Path) -> str:
    """The separator of a CSV: the most frequent of `,` `;` tab in its header (a comma on a tie)."""
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        header = f.readline()
    return max(DELIMITERS, key=header.count)


def read_csv(path: Path, nrows: int | None = None) -> pd.DataFrame:
    """Every cell as a string (class "02" stays "02"); a UTF-8 byte-order mark, CRLF line ends
    and `;` or tab separators are fine."""
    try:
        return pd.read_csv(
            path,
            sep=delimiter(path),
            nrows=nrows,
            dtype=str,
            keep_default_na=False,
            encoding="utf-8-sig",
        )
    except UnicodeDecodeError as e:
        line = Path(path).read_bytes()[: e.start].count(b"\n") + 1
        raise PipelineError(
            f"{path}: line {line} is not UTF-8 (byte {e.object[e.start]:#x}); save the file as "
            f"UTF-8, e.g. `iconv -f latin1 -t utf-8 {Path(path).name} > fixed.csv`"
        ) from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise PipelineError(f"{path}: not a readable CSV ({e})") from None


# --- which CSV holds the labels ---------------------------------------------------------------


def label_csvs(raw: Path) -> list[Path]:
    """Candidate label CSVs at the top of data/raw, known names first."""
    csvs = sorted(p for p in raw.glob("*.csv") if not p.name.lower().startswith(NOT_LABELS))
    known = [raw / n for n in LABEL_CSVS if (raw / n) in csvs]
    others = [
        p
        for p in csvs
        if p not in known and ("train" in p.name.lower() or "label" in p.name.lower())
    ]
    return known + others


def label_csv_candidates(raw: Path, comp: Competition) -> list[Path]:
    """competition.label_csv when set (it must exist), else label_csvs()."""
    if comp.label_csv is None:
        return label_csvs(raw)
    path = raw / comp.label_csv
    if not path.is_file():
        found = sorted(p.relative_to(raw).as_posix() for p in raw.rglob("*.csv"))
        raise PipelineError(
            f"competition.label_csv: '{comp.label_csv}' is not a file in {raw} (CSVs there: "
            f"{found[:10]}); name one of them, or null to detect"
        )
    return [path]


def names_images(path: Path, files: dict[str, Path]) -> int:
    """How many values of the CSV's best column name an image file."""
    frame = read_csv(path)
    return max((int(frame[c].isin(files.keys()).sum()) for c in frame.columns), default=0)


def choose_label_csv(paths: list[Path], files: dict[str, Path]) -> tuple[Path, str]:
    """The candidate whose values name the most images (a labels.csv mapping label to name beside
    train.csv names none; on a tie the known names come first), and a note naming the others
    that name images too."""
    if len(paths) == 1:
        return paths[0], ""
    hits = [names_images(p, files) for p in paths]
    best = paths[hits.index(max(hits))]
    others = [p.name for p, n in zip(paths, hits, strict=True) if n and p != best]
    if not others:
        return best, ""
    return best, (
        f"labels read from {best.name}; {', '.join(others)} name train images too "
        "(competition.label_csv chooses)"
    )


# --- id and label columns ---------------------------------------------------------------------


def column_error(path: Path, columns: list[str], why: str) -> PipelineError:
    return PipelineError(
        f"found {path.name} with columns {columns}; expected an id column and a label column "
        f"({why}); set competition.id_column / competition.label_column, or "
        "competition.label_csv to read another CSV"
    )


def guess_id_column(labels: pd.DataFrame, files: dict[str, Path], path: Path) -> str:
    """The column whose values name the most train images."""
    hits = {c: labels[c].isin(files.keys()).sum() for c in labels.columns}
    best = max(hits, key=hits.get)
    if hits[best] == 0:
        some = sorted(files)[:3]
        raise column_error(path, list(labels.columns), f"no column names train images like {some}")
    return best


def guess_label_column(labels: pd.DataFrame, taken: set[str], sample: pd.DataFrame, path: Path):
    rest = [c for c in labels.columns if c not in taken]
    if len(rest) == 1:
        return rest[0]
    if len(sample.columns) == 2 and sample.columns[1] in rest:  # the column the submission asks
        return sample.columns[1]
    raise column_error(path, list(labels.columns), f"{len(rest)} candidates for the label")


def check_column(name: str | None, labels: pd.DataFrame, key: str, path: Path) -> None:
    if name is not None and name not in labels.columns:
        raise PipelineError(
            f"competition.{key}: '{name}' is not a column of {path} "
            f"(columns {list(labels.columns)})"
        )


def check_unique_ids(ids: pd.Series, path: Path) -> None:
    """Each id once: a repeated id would train and validate on the same image."""
    dup = ids[ids.duplicated(keep=False)]
    if len(dup):
        first = dup.iloc[0]
        rows = [i + 2 for i in ids.index[ids == first][:5]]
        raise PipelineError(
            f"{path}: id '{first}' appears {int((ids == first).sum())} times (rows {rows}); "
            f"{dup.nunique()} id(s) repeat"
        )


def check_labels(train: pd.DataFrame, path: Path) -> None:
    empty = train.index[train["label"].str.strip() == ""]
    if len(empty):
        rows = ", ".join(f"row {i + 2} (id '{train['id'][i]}')" for i in empty[:5])
        raise PipelineError(f"{path}: empty label in {rows}")


# --- labels: one column, one-hot columns, or tags ---------------------------------------------


def label_frame(labels: pd.DataFrame, id_col: str, comp: Competition, sample, path: Path):
    """(id, label) rows and the task, from one label column or from one-hot columns."""
    taken = {id_col, comp.group_column} - {None}
    rest = [c for c in labels.columns if c not in taken]
    if comp.label_column is None and one_hot(labels[rest], sample):
        return one_hot_labels(labels, id_col, rest, comp, path)
    label_col = comp.label_column or guess_label_column(labels, taken, sample, path)
    train = pd.DataFrame({"id": labels[id_col], "label": labels[label_col].str.strip()})
    check_unique_ids(train["id"], path)
    check_labels(train, path)
    train["label"] = [" ".join(lab.split()) for lab in train["label"]]  # one space between tags
    if comp.task != "auto":
        return train, comp.task
    return train, "multi_label" if multi_label(train["label"], sample) else "single_label"


def one_hot(frame: pd.DataFrame, sample: pd.DataFrame) -> bool:
    """Two or more columns of 0/1 only, none of them the sample's one value column."""
    if frame.shape[1] < 2 or (len(sample.columns) == 2 and sample.columns[1] in frame.columns):
        return False
    values = frame.apply(pd.to_numeric, errors="coerce")
    return len(frame) > 0 and bool(values.isin([0, 1]).all().all())


def one_hot_labels(labels: pd.DataFrame, id_col: str, cols: list[str], comp, path: Path):
    """A class per 0/1 column: single-label when every row has exactly one 1, else tags."""
    hot = labels[cols].apply(pd.to_numeric).to_numpy() == 1
    n = hot.sum(1)
    task = comp.task if comp.task != "auto" else "multi_label" if (n > 1).any() else "single_label"
    bad = np.flatnonzero((n == 0) | ((n > 1) & (task == "single_label")))
    if len(bad):
        r = bad[0]
        fix = (
            "every image needs a class: drop the row"
            if n[r] == 0
            else "several classes in a row need competition.task: multi_label (or auto)"
        )
        raise PipelineError(
            f"{path}: row {r + 2} (id '{labels[id_col].iloc[r]}') has {n[r]} ones in the one-hot "
            f"columns {cols[:10]} ({task}); {fix}"
        )
    spaced = [c for c in cols if len(c.split()) != 1]
    if task == "multi_label" and spaced:
        raise PipelineError(
            f"{path}: one-hot column '{spaced[0]}' has a space; tags are space-separated, "
            "rename the column"
        )
    names = np.array(cols, dtype=object)
    train = pd.DataFrame({"id": labels[id_col], "label": [" ".join(names[h]) for h in hot]})
    check_unique_ids(train["id"], path)
    return train, task


def multi_label(labels: pd.Series, sample: pd.DataFrame | None = None) -> bool:
    """Space-separated tags, or class names with a space ("Common Chickweed", "adult male")?

    The sample decides when it can (sample_says_tags). Otherwise tags are told by their sets:
    some label is another with one tag more ("clear primary" and "clear primary water"), which
    class names crossed from words ("adult male", "adult female", "pup male") never are.
    """
    names = set(labels)
    if not any(" " in n for n in names):
        return False
    says = None if sample is None else sample_says_tags(names, sample)
    return nested_sets(names) if says is None else says


def nested_sets(names: set[str]) -> bool:
    """Some label is another with one word more: tag sets, not class names."""
    sets = {frozenset(n.split()) for n in names}
    return any(len(s) > 1 and s - {t} in sets for s in sets for t in s)


def sample_says_tags(names: set[str], sample: pd.DataFrame) -> bool | None:
    """What sample_submission says about labels with spaces, or None when it says nothing.

    Probability columns named by the labels (a class each) or by their words (tags); a value
    with a space that is a training label (one class per row: "adult male") or that is not one
    but joins training words (a tag set in its own order: planet's "primary clear agriculture").
    """
    words = {w for n in names for w in n.split()}
    columns = set(sample.columns[1:])
    if len(columns) > 1:
        return False if columns == names else True if columns == words else None
    spaced = {" ".join(v.split()) for v in sample.iloc[:, 1] if len(v.split()) > 1}
    if spaced & names and not nested_sets(names):  # a placeholder tag set may be a row's ("0 1")
        return False
    if any(set(v.split()) <= words for v in spaced):
        return True
    return None
