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
say what was found and what was expected. The label CSV's reading, choice and columns are
pipeline/label_csv.py's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.files import PipelineError, walk
from pipeline.label_csv import (
    LABEL_CSVS,
    check_column,
    check_labels,
    check_unique_ids,
    choose_label_csv,
    column_error,
    delimiter,
    guess_id_column,
    label_csv_candidates,
    label_frame,
    multi_label,
    read_csv,
)
from pipeline.params import Competition

__all__ = ["delimiter", "multi_label"]  # re-exported: prepare and the tests read them from here

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".gif"}
PIXEL_PREFIX = "pixel"


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


# --- readers ----------------------------------------------------------------------------------


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
        check_column(getattr(comp, key), labels, key, path)
    if labels.shape[1] < 2:
        raise column_error(path, list(labels.columns), "found one column")
    id_col = comp.id_column or guess_id_column(labels, files, path)
    train, task = label_frame(labels, id_col, comp, sample, path)
    if comp.group_column:
        train["group"] = labels[comp.group_column]
    train = attach_paths(train, files, str(path))
    test = test_from_sample(raw, sample, sample_path)
    return Layout("csv", task, train, test, sample, sample_path, note=note)


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
    check_column(comp.label_column, labels, "label_column", train_path)
    rest = [c for c in labels.columns if c not in cols and c != comp.group_column]
    label_col = comp.label_column or (rest[0] if len(rest) == 1 else None)
    if label_col is None:
        raise column_error(train_path, rest, "besides the pixels, one column holds the label")
    if pixel_columns(list(test_frame.columns)) != cols:
        raise PipelineError(f"{test_path}: expected the same pixel columns as {train_path.name}")
    train = pd.DataFrame({"id": [str(i) for i in range(len(labels))], "label": labels[label_col]})
    check_labels(train, train_path)
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
