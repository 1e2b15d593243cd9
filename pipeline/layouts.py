"""Recognise how a competition ships its data and turn it into the canonical index frames.

A layout reader returns (train, test, sample) where train has columns id, path, label and test has
id, path (paths relative to the working folder), and sample is sample_submission.csv as read.
Errors say what was found and what was expected.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.files import PipelineError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".gif"}
LABEL_CSVS = ("train.csv", "labels.csv", "trainLabels.csv", "train_labels.csv")


def read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
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


def images_by_stem(folder: Path) -> dict[str, Path]:
    """{file name without suffix: path} for every image below `folder`."""
    return {p.stem: p for p in sorted(folder.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES}


def find_folder(raw: Path, names: tuple[str, ...]) -> Path:
    for name in names:
        if (raw / name).is_dir():
            return raw / name
    found = sorted(p.name for p in raw.iterdir() if p.is_dir())
    raise PipelineError(
        f"{raw}: expected an image folder named one of {list(names)}, found {found}"
    )


def attach_paths(frame: pd.DataFrame, files: dict[str, Path], source: str) -> pd.DataFrame:
    """Add a path column; every id must have an image file, or the rows are named."""
    missing = [(i, r) for i, r in enumerate(frame["id"]) if r not in files]
    if missing:
        rows = ", ".join(f"row {i + 2} (id '{r}')" for i, r in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise PipelineError(f"{source}: no image file for {rows}{more}")
    return frame.assign(path=[str(files[r]) for r in frame["id"]])


def csv_with_folder(raw: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """train.csv-style labels (id, label) beside train/ and test/ folders of <id>.<ext> files."""
    label_csv = next((raw / n for n in LABEL_CSVS if (raw / n).exists()), None)
    if label_csv is None:
        raise PipelineError(f"{raw}: expected a label CSV named one of {list(LABEL_CSVS)}")
    labels = read_csv(label_csv)
    if labels.shape[1] < 2:
        raise PipelineError(
            f"found {label_csv} with columns {list(labels.columns)}; expected an id column and a "
            "label column"
        )
    train = labels.iloc[:, :2].set_axis(["id", "label"], axis=1)
    empty = train.index[train["label"].str.strip() == ""]
    if len(empty):
        rows = ", ".join(f"row {i + 2} (id '{train['id'][i]}')" for i in empty[:5])
        raise PipelineError(f"{label_csv}: empty label in {rows}")
    train = attach_paths(
        train, images_by_stem(find_folder(raw, ("train", "train_images"))), str(label_csv)
    )
    sample_path = find_sample_submission(raw)
    sample = read_csv(sample_path)
    test = pd.DataFrame({"id": sample.iloc[:, 0]})
    test = attach_paths(
        test, images_by_stem(find_folder(raw, ("test", "test_images"))), str(sample_path)
    )
    return train, test, sample
