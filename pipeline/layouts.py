"""Recognise how a competition ships its data and turn it into the canonical index frames.

Layouts (`competition.layout`, detected when `auto`):

    csv              a label CSV (id, label[, group]) beside a train image folder of <id>.<ext>
                     (dog-breed labels.csv, cifar-10 trainLabels.csv, aptos train.csv with
                     id_code/diagnosis and train_images/, histopathologic train_labels.csv with
                     .tif files, planet train_v2.csv with space-separated tags and train-jpg/),
                     or one-hot: a 0/1 column per class (plant-pathology-2020 train.csv of
                     image_id,healthy,multiple_diseases,rust,scab), possibly with one images/
                     folder holding both splits (Train_0.jpg … Test_0.jpg)
    class_folders    train/<class>/*.png (plant-seedlings); the test ids are file names
    filename_labels  train/<label>.<n>.jpg (dogs-vs-cats-redux); test/<n>.jpg
    pixels_csv       train.csv of label, pixel0..pixelK (digit-recognizer, square grayscale) and
                     test.csv of pixels whose rows are sample_submission's ids in order

Train and test image folders are the top-level folders whose names start with "train" / "test"
(test, test_images, test-jpg and test-jpg-additional alike). Test ids are sample_submission's
first column; an id names its image by file name (plant-seedlings "0021e90e4.png") or by file name
without the suffix (everyone else). Of several label CSVs the one whose values name the most
images is read (train.csv, not a labels.csv of label,name beside it); `competition.label_csv` names
it outright. CSVs separated by `;` or tabs (a spreadsheet's export) are read as such. Errors
say what was found and what was expected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.files import PipelineError, walk
from pipeline.params import Competition

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".gif"}
# known label CSV names, most specific first; any other CSV naming "train" or "label" follows
LABEL_CSVS = ("labels.csv", "trainLabels.csv", "train_labels.csv", "train_v2.csv", "train.csv")
NOT_LABELS = ("sample", "solution", "test")  # CSV names that never hold training labels
PIXEL_PREFIX = "pixel"
DELIMITERS = (",", ";", "\t")  # Kaggle ships commas; spreadsheets in comma-decimal locales ";"


@dataclass
class Layout:
    name: str
    task: str  # single_label | multi_label
    train: pd.DataFrame  # id, path, label (multi-label: space-separated tags)[, group]
    test: pd.DataFrame  # id, path
    sample: pd.DataFrame  # sample_submission.csv as read (all strings)
    sample_path: Path
    # pixels_csv only: uint8 images (N, H, W) per split; prepare writes them out as PNGs
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    id_base: int | None = None  # pixels_csv: the first test id (digit-recognizer counts from 1)
    note: str = ""  # what a person should know about a choice made (printed by prepare)


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


def find_sample_submission(raw: Path) -> Path:
    exact = raw / "sample_submission.csv"
    if exact.exists():
        return exact
    found = sorted(p for p in raw.rglob("*.csv") if "sample" in p.name.lower())
    if not found:
        raise PipelineError(
            f"{exact}: missing; every competition ships a sample submission and the submission "
            "is shaped from it"
        )
    return found[0]


def _listing(raw: Path) -> str:
    files = sorted(p.name for p in raw.iterdir() if p.is_file())
    dirs = sorted(p.name + "/" for p in raw.iterdir() if p.is_dir())
    return f"files {files[:10]} and folders {dirs[:10]}"


def image_dirs(raw: Path, prefix: str) -> list[Path]:
    return sorted(p for p in raw.iterdir() if p.is_dir() and p.name.lower().startswith(prefix))


def images_in(folder: Path, recursive: bool = True) -> list[Path]:
    """Image files under `folder`, linked sub-folders followed (files.walk)."""
    if recursive:
        found = [d / n for d, _, names in walk(folder) for n in names]
    else:
        found = list(folder.iterdir())
    return sorted(p for p in found if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def image_lookup(folders: list[Path]) -> dict[str, Path]:
    """{file name: path} and {file name without suffix: path} for every image in `folders`.

    Two files answering to one id (planet's train-jpg/x.jpg beside train-tif-v2/x.tif) would
    make the choice silent, so that stops with both names."""
    files = [p for f in folders for p in images_in(f)]
    by_stem: dict[str, Path] = {}
    for p in files:
        other = by_stem.setdefault(p.stem, p)
        if other != p:
            raise PipelineError(
                f"two images for id '{p.stem}': {other} and {p}; keep one image folder in "
                "data/raw (e.g. download only the files you train on with competition.files)"
            )
    return {**by_stem, **{p.name: p for p in files}}


def attach_paths(frame: pd.DataFrame, files: dict[str, Path], source: str) -> pd.DataFrame:
    """Add a path column; every id must have an image file, or the rows are named."""
    missing = [(i, r) for i, r in enumerate(frame["id"]) if r not in files]
    if missing:
        rows = ", ".join(f"row {i + 2} (id '{r}')" for i, r in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise PipelineError(f"{source}: no image file for {rows}{more}")
    return frame.assign(path=[str(files[r]) for r in frame["id"]])


def shared_image_dirs(raw: Path) -> list[Path]:
    """Top-level image folders named neither train* nor test*: one folder for both splits
    (plant-pathology-2020's images/Train_0.jpg … images/Test_0.jpg)."""
    return [
        d
        for d in image_dirs(raw, "")
        if not d.name.lower().startswith(("train", "test", ".", "__")) and images_in(d)
    ]


def train_image_dirs(raw: Path) -> list[Path]:
    return image_dirs(raw, "train") or shared_image_dirs(raw)


def test_from_sample(raw: Path, sample: pd.DataFrame, sample_path: Path) -> pd.DataFrame:
    dirs = image_dirs(raw, "test") or shared_image_dirs(raw)
    if not dirs:
        raise PipelineError(
            f"{raw}: found {_listing(raw)}; expected a test image folder (test/, test_images/, …) "
            f"holding the ids of {sample_path.name}"
        )
    test = pd.DataFrame({"id": sample.iloc[:, 0]})
    return attach_paths(test, image_lookup(dirs), str(sample_path))


# --- detection --------------------------------------------------------------------------------


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


def pixel_columns(columns: list[str]) -> list[str]:
    return [c for c in columns if c.startswith(PIXEL_PREFIX) and c[len(PIXEL_PREFIX) :].isdigit()]


def _header(path: Path) -> list[str]:
    return list(read_csv(path, nrows=0).columns)


def class_folder_dir(raw: Path) -> Path | None:
    """The train folder holding one sub-folder of images per class (two classes at least)."""
    for d in image_dirs(raw, "train"):
        subs = [s for s in sorted(d.iterdir()) if s.is_dir() and images_in(s)]
        if len(subs) >= 2 and not images_in(d, recursive=False):
            return d
    return None


def filename_label(stem: str) -> str | None:
    head, dot, _ = stem.partition(".")
    return head if dot and head else None


def looks_like_filename_labels(raw: Path) -> bool:
    """Every train image is <label>.<rest> and labels repeat (a few labels, many files)."""
    files = [p for d in image_dirs(raw, "train") for p in images_in(d)]
    labels = [filename_label(p.stem) for p in files]
    return bool(files) and None not in labels and 2 <= len(set(labels)) <= len(files) / 2


def detect(raw: Path, comp: Competition) -> str:
    csvs = label_csv_candidates(raw, comp)
    if any(pixel_columns(_header(path)) for path in csvs):
        return "pixels_csv"
    if csvs and train_image_dirs(raw):
        return "csv"
    if class_folder_dir(raw) is not None:
        return "class_folders"
    if looks_like_filename_labels(raw):
        return "filename_labels"
    raise PipelineError(
        f"{raw}: found {_listing(raw)}; expected one of: a label CSV ({', '.join(LABEL_CSVS)}) "
        "beside a train image folder (or one images/ folder for both splits), train/<class>/ "
        "folders of images, train/<label>.<n>.<ext> files, or a train.csv of pixel0..pixelN "
        "columns; set competition.layout (and competition.label_csv)"
    )


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


# --- readers ----------------------------------------------------------------------------------


def _column_error(path: Path, columns: list[str], why: str) -> PipelineError:
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
        raise _column_error(path, list(labels.columns), f"no column names train images like {some}")
    return best


def guess_label_column(labels: pd.DataFrame, taken: set[str], sample: pd.DataFrame, path: Path):
    rest = [c for c in labels.columns if c not in taken]
    if len(rest) == 1:
        return rest[0]
    if len(sample.columns) == 2 and sample.columns[1] in rest:  # the column the submission asks
        return sample.columns[1]
    raise _column_error(path, list(labels.columns), f"{len(rest)} candidates for the label")


def _check_column(name: str | None, labels: pd.DataFrame, key: str, path: Path) -> None:
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


def _check_labels(train: pd.DataFrame, path: Path) -> None:
    empty = train.index[train["label"].str.strip() == ""]
    if len(empty):
        rows = ", ".join(f"row {i + 2} (id '{train['id'][i]}')" for i in empty[:5])
        raise PipelineError(f"{path}: empty label in {rows}")


def read_csv_layout(raw: Path, comp: Competition, sample: pd.DataFrame, sample_path: Path):
    paths = label_csv_candidates(raw, comp)
    if not paths:
        raise PipelineError(
            f"{raw}: found {_listing(raw)}; expected a label CSV named one of {list(LABEL_CSVS)} "
            "(or set competition.label_csv)"
        )
    dirs = train_image_dirs(raw)
    if not dirs:
        raise PipelineError(
            f"{raw}: found {_listing(raw)}; expected a train image folder (train/, "
            "train_images/, …) or one images/ folder for both splits"
        )
    files = image_lookup(dirs)
    path, note = choose_label_csv(paths, files)
    labels = read_csv(path)
    for key in ("id_column", "label_column", "group_column"):
        _check_column(getattr(comp, key), labels, key, path)
    if labels.shape[1] < 2:
        raise _column_error(path, list(labels.columns), "found one column")
    id_col = comp.id_column or guess_id_column(labels, files, path)
    train, task = label_frame(labels, id_col, comp, sample, path)
    if comp.group_column:
        train["group"] = labels[comp.group_column]
    train = attach_paths(train, files, str(path))
    test = test_from_sample(raw, sample, sample_path)
    return Layout("csv", task, train, test, sample, sample_path, note=note)


def label_frame(labels: pd.DataFrame, id_col: str, comp: Competition, sample, path: Path):
    """(id, label) rows and the task, from one label column or from one-hot columns."""
    taken = {id_col, comp.group_column} - {None}
    rest = [c for c in labels.columns if c not in taken]
    if comp.label_column is None and one_hot(labels[rest], sample):
        return one_hot_labels(labels, id_col, rest, comp, path)
    label_col = comp.label_column or guess_label_column(labels, taken, sample, path)
    train = pd.DataFrame({"id": labels[id_col], "label": labels[label_col].str.strip()})
    check_unique_ids(train["id"], path)
    _check_labels(train, path)
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


def _unique_ids(files: list[Path], root: Path) -> list[str]:
    """File names as ids; relative paths where two classes hold the same file name."""
    names = [p.name for p in files]
    if len(set(names)) == len(names):
        return names
    return [p.relative_to(root).as_posix() for p in files]


def read_class_folders(raw: Path, comp: Competition, sample: pd.DataFrame, sample_path: Path):
    root = class_folder_dir(raw)
    if root is None:
        raise PipelineError(
            f"{raw}: found {_listing(raw)}; expected a train/ folder with one sub-folder of images "
            "per class (two at least)"
        )
    files = [p for sub in sorted(root.iterdir()) if sub.is_dir() for p in images_in(sub)]
    labels = [p.relative_to(root).parts[0] for p in files]
    train = pd.DataFrame(
        {"id": _unique_ids(files, root), "path": [str(p) for p in files], "label": labels}
    )
    test = test_from_sample(raw, sample, sample_path)
    return Layout("class_folders", _single(comp, "class_folders"), train, test, sample, sample_path)


def read_filename_labels(raw: Path, comp: Competition, sample: pd.DataFrame, sample_path: Path):
    files = [p for d in image_dirs(raw, "train") for p in images_in(d)]
    bad = [p for p in files if filename_label(p.stem) is None]
    if not files or bad:
        example = f"e.g. {bad[0]}" if bad else "no train images"
        raise PipelineError(
            f"{raw}: expected train images named <label>.<n>.<ext> (cat.123.jpg), found {example}"
        )
    train = pd.DataFrame(
        {
            "id": [p.stem for p in files],
            "path": [str(p) for p in files],
            "label": [filename_label(p.stem) for p in files],
        }
    )
    dup = train["id"][train["id"].duplicated()]
    if len(dup):
        raise PipelineError(f"{raw}: two train images share the id '{dup.iloc[0]}'")
    test = test_from_sample(raw, sample, sample_path)
    task = _single(comp, "filename_labels")
    return Layout("filename_labels", task, train, test, sample, sample_path)


def _single(comp: Competition, layout: str) -> str:
    if comp.task == "multi_label":
        raise PipelineError(
            f"competition.task: multi_label needs tags in a label CSV; layout '{layout}' has one "
            "label per image"
        )
    return "single_label"


def _pixels(frame: pd.DataFrame, cols: list[str], path: Path) -> np.ndarray:
    side = math.isqrt(len(cols))
    if side * side != len(cols):
        raise PipelineError(
            f"{path}: {len(cols)} pixel columns; expected a square image (e.g. 784 = 28 x 28)"
        )
    values = frame[cols].apply(pd.to_numeric, errors="coerce").to_numpy()
    bad = np.isnan(values) | (values < 0) | (values > 255)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise PipelineError(
            f"{path}: row {r + 2} column '{cols[c]}' has '{frame[cols[c]].iloc[r]}'; expected a "
            "pixel value 0-255"
        )
    return values.astype(np.uint8).reshape(len(frame), side, side)


def read_pixels_csv(raw: Path, comp: Competition, sample: pd.DataFrame, sample_path: Path):
    candidates = label_csv_candidates(raw, comp)
    train_path = next((p for p in candidates if pixel_columns(_header(p))), None)
    test_path = raw / "test.csv"
    if train_path is None or not test_path.exists():
        raise PipelineError(
            f"{raw}: found {_listing(raw)}; expected train.csv and test.csv with columns "
            "pixel0..pixelN"
        )
    labels, test_frame = read_csv(train_path), read_csv(test_path)
    cols = pixel_columns(list(labels.columns))
    _check_column(comp.label_column, labels, "label_column", train_path)
    rest = [c for c in labels.columns if c not in cols and c != comp.group_column]
    label_col = comp.label_column or (rest[0] if len(rest) == 1 else None)
    if label_col is None:
        raise _column_error(train_path, rest, "besides the pixels, one column holds the label")
    if pixel_columns(list(test_frame.columns)) != cols:
        raise PipelineError(f"{test_path}: expected the same pixel columns as {train_path.name}")
    train = pd.DataFrame({"id": [str(i) for i in range(len(labels))], "label": labels[label_col]})
    _check_labels(train, train_path)
    if comp.group_column:
        train["group"] = labels[comp.group_column]
    base = _id_base(sample, len(test_frame), sample_path, test_path)
    test = pd.DataFrame({"id": [str(base + i) for i in range(len(test_frame))]})
    arrays = {
        "train": _pixels(labels, cols, train_path),
        "test": _pixels(test_frame, cols, test_path),
    }
    task = _single(comp, "pixels_csv")
    return Layout("pixels_csv", task, train, test, sample, sample_path, arrays, base)


def _id_base(sample: pd.DataFrame, n: int, sample_path: Path, test_path: Path) -> int:
    """Test row i has id base + i: sample ids must be consecutive integers (ImageId 1..N)."""
    ids = pd.to_numeric(sample.iloc[:, 0], errors="coerce")
    if len(ids) != n or ids.isna().any():
        raise PipelineError(
            f"{sample_path}: {len(ids)} rows with ids like {sample.iloc[:3, 0].tolist()}; expected "
            f"{n} integer ids, one per row of {test_path.name}"
        )
    base = int(ids.min())
    if sorted(ids.astype(int)) != list(range(base, base + n)):
        raise PipelineError(
            f"{sample_path}: ids are not consecutive integers {base}..{base + n - 1}"
        )
    return base


READERS = {
    "csv": read_csv_layout,
    "class_folders": read_class_folders,
    "filename_labels": read_filename_labels,
    "pixels_csv": read_pixels_csv,
}


def read(raw: Path, comp: Competition) -> Layout:
    """The competition in data/raw as index frames, by `competition.layout` or detection."""
    name = comp.layout if comp.layout != "auto" else detect(raw, comp)
    sample_path = find_sample_submission(raw)
    sample = read_csv(sample_path)
    check_unique_ids(sample.iloc[:, 0], sample_path)
    if sample.shape[1] < 2:
        raise PipelineError(
            f"{sample_path}: columns {list(sample.columns)}; expected an id column and at least "
            "one value column"
        )
    layout = READERS[name](raw, comp, sample, sample_path)
    check_one_id_per_image(layout.train)
    if layout.task == "single_label":
        layout.train["label"] = whole_numbers(layout.train["label"])
    return layout


def check_one_id_per_image(train: pd.DataFrame) -> None:
    """One image file under two ids (76014 and 76014.png) would be two conflicting rows."""
    if train.empty or "path" not in train:
        return
    dup = train[train["path"].duplicated(keep=False)]
    if len(dup):
        first = dup["path"].iloc[0]
        ids = train.loc[train["path"] == first, "id"].tolist()
        raise PipelineError(
            f"{first}: one image listed under {len(ids)} ids {ids[:4]}; {dup['path'].nunique()} "
            "image(s) are; keep one row per image in the label CSV"
        )


def whole_numbers(labels: pd.Series) -> pd.Series:
    """Class labels written as floats (0.0, 1.0, ...) become the integers they are."""
    if len(labels) and labels.str.fullmatch(r"-?\d+\.0*").all():
        return labels.str.replace(r"\.0*$", "", regex=True)
    return labels
