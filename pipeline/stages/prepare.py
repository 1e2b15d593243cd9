"""prepare: index data/raw into data/prepared/ and check every image once.

    python -m pipeline prepare    # reads prepare.* and the competition's layout keys from params

Detects the layout (pipeline/layouts.py), the task (single- or multi-label) and the submission's
shape from sample_submission.csv, each overridable in `competition`. Writes train.csv (id, path,
label[, group]; multi-label labels are space-separated tags), test.csv (id, path), meta.json, a
copy of sample_submission.csv (comma-separated), images/{train,test}/<id>.png for competitions
shipped as pixel columns, and with `prepare.cache_size` the images resized once into uint8 arrays
so that training never decodes a file again. `prepare.resize` says how a photo that is not square
becomes square (index.square): squish (stretched), crop (its centre square) or pad (letterboxed in
black); training and prediction without a cache apply the same mode to the decoded files.

meta.json: task, classes (the model's output order), submission_kind (label | probs | binary |
tags), positive_class (binary: the class whose probability is written), id_column, value_columns
(sample_submission's other columns), layout, id_base (pixels_csv: the first test id), n_train,
n_test, cache_size, resize.
"""

from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path

import pandas as pd
from PIL import Image

from pipeline import layouts, metrics
from pipeline.decode import decode_all, unreadable
from pipeline.files import PipelineError, atomic_dir, write_csv, write_json
from pipeline.index import PREPARED, label_counts, tag_set
from pipeline.params import Competition, Prepare, load_params

RAW = Path("data/raw")
POSITIVE_NAMES = ("1", "true", "yes", "positive", "pos")  # read as "the positive class"


def sort_classes(labels: pd.Series) -> list[str]:
    """Class names in a stable order: numerically when they are all integers."""
    names = sorted(set(labels))
    if all(re.fullmatch(r"-?\d+", n) for n in names):
        return sorted(names, key=int)
    return names


def classes_of(train: pd.DataFrame, task: str) -> list[str]:
    return tag_set(train["label"]) if task == "multi_label" else sort_classes(train["label"])


def _fractions(values: pd.Series) -> bool:
    """Numbers that are not all whole (dogs-vs-cats' 0.5): the sample asks for a probability.
    Class names ("normal") or whole numbers ("0") ask for a label."""
    numbers = pd.to_numeric(values, errors="coerce")
    return bool(len(values)) and numbers.notna().all() and not (numbers % 1 == 0).all()


def submission_kind(
    sample: pd.DataFrame, classes: list[str], task: str, metric: str, override: str
) -> str:
    """How sample_submission asks for predictions.

    Several value columns that are the classes: probs. One column: tags for multi-label; binary
    (one probability) for two classes when the sample holds fractions (dogs-vs-cats 0.5) or the
    metric scores probabilities (histopathologic: roc_auc, sample label 0); else label.
    """
    values = list(sample.columns[1:])
    if len(values) > 1:
        if set(values) != set(classes):
            raise PipelineError(
                f"sample_submission.csv: columns {values[:10]} besides the id; expected one value "
                f"column, or one probability column per class {classes[:10]}"
            )
        kind = "probs"
    elif task == "multi_label":
        kind = "tags"
    elif len(classes) == 2 and (_fractions(sample[values[0]]) or metric in ("roc_auc", "log_loss")):
        kind = "binary"
    else:
        kind = "label"
    if override == "auto" or override == kind:
        return kind
    if override == "probs" or kind == "probs":
        raise PipelineError(
            f"competition.submission: '{override}' does not fit sample_submission.csv's columns "
            f"{list(sample.columns)[:10]}"
        )
    if (override == "tags") != (task == "multi_label") or (
        override == "binary" and len(classes) != 2
    ):
        raise PipelineError(
            f"competition.submission: '{override}' does not fit a {task} task with "
            f"{len(classes)} classes"
        )
    return override


def positive_class(classes: list[str], sample: pd.DataFrame, override: str | None) -> str:
    """The class a binary submission gives the probability of.

    competition.positive_class if set; else the class the sample's column is named after; else
    one named like "1", "true", "yes"; else the later class in sorted order (dog of cat/dog,
    which is what dogs-vs-cats-redux scores as `label`).
    """
    if override is not None:
        if override not in classes:
            raise PipelineError(
                f"competition.positive_class: '{override}' is not one of the classes {classes}"
            )
        return override
    column = sample.columns[1]
    if column in classes:
        return column
    by_name = [c for c in classes if c.lower() in POSITIVE_NAMES]
    return by_name[0] if by_name else classes[-1]


def check_task(layout: layouts.Layout, classes: list[str], metric: str) -> None:
    if len(classes) < 2:
        raise PipelineError(
            f"found {len(classes)} class(es) {classes} in the training labels; expected two or more"
        )
    try:
        metrics.check_applies(metric, layout.task)
    except PipelineError as e:
        raise PipelineError(f"{e} (set competition.task if the detection is wrong)") from None
    if metric == "qwk" and not all(re.fullmatch(r"-?\d+", c) for c in classes):
        raise PipelineError(
            f"competition.metric: qwk needs ordinal integer classes, found {classes[:10]}"
        )


def write_pixel_images(layout: layouts.Layout, tmp: Path, out: Path) -> list[str]:
    """PNG files for pixels-in-CSV competitions; returns the paths to decode now (in tmp).

    The index records the paths they will have once the folder is renamed into place.
    """
    to_decode = []
    for split, frame in (("train", layout.train), ("test", layout.test)):
        folder = tmp / "images" / split
        folder.mkdir(parents=True)
        for img_id, img in zip(frame["id"], layout.arrays[split], strict=True):
            Image.fromarray(img, mode="L").save(folder / f"{img_id}.png")
        frame["path"] = [str(out / "images" / split / f"{i}.png") for i in frame["id"]]
        to_decode += [str(folder / f"{i}.png") for i in frame["id"]]
    return to_decode


def cache_images(layout: layouts.Layout, decode: list[str], cfg: Prepare, tmp: Path) -> dict:
    """Decode every image once (the check) and, with prepare.cache_size, save the resized
    arrays; returns the content hash of each split's image files."""
    bad, hashes = [], {}
    n_train = len(layout.train)
    for split, paths in (("train", decode[:n_train]), ("test", decode[n_train:])):
        cache = tmp / f"{split}_images.npy"
        broken, hashes[split] = decode_all(paths, cache, cfg.cache_size, cfg.resize)
        bad += broken
    if bad:
        raise unreadable(bad)
    return hashes


def run(cfg: Prepare, comp: Competition, raw: Path = RAW, out: Path = PREPARED) -> dict:
    if not raw.is_dir():
        raise PipelineError(f"{raw}: missing; run `dvc repro download` first")
    layout = layouts.read(raw, comp)
    classes = classes_of(layout.train, layout.task)
    check_task(layout, classes, comp.metric)
    kind = submission_kind(layout.sample, classes, layout.task, comp.metric, comp.submission)
    meta = {
        "task": layout.task,
        "classes": classes,
        "submission_kind": kind,
        "positive_class": positive_class(classes, layout.sample, comp.positive_class)
        if kind == "binary"
        else None,
        "id_column": layout.sample.columns[0],
        "value_columns": list(layout.sample.columns[1:]),
        "layout": layout.name,
        "id_base": layout.id_base,
        "n_train": len(layout.train),
        "n_test": len(layout.test),
    }
    with atomic_dir(out) as tmp:
        if layout.arrays:
            decode = write_pixel_images(layout, tmp, out)
        else:
            decode = layout.train["path"].tolist() + layout.test["path"].tolist()
        meta["images_sha256"] = cache_images(layout, decode, cfg, tmp)
        meta["cache_size"] = cfg.cache_size
        meta["resize"] = cfg.resize  # the cache's and the decoded files' square (index.square)
        columns = ["id", "path", "label"] + (["group"] if "group" in layout.train else [])
        write_csv(tmp / "train.csv", layout.train[columns])
        write_csv(tmp / "test.csv", layout.test[["id", "path"]])
        write_sample(layout, tmp / "sample_submission.csv")
        write_json(tmp / "meta.json", meta)
    print(summary(layout, classes, kind, out))
    if layout.note:
        print(f"prepare: {layout.note}")
    return meta


def write_sample(layout: layouts.Layout, dest: Path) -> None:
    """sample_submission.csv byte for byte; one separated by `;` or tabs with commas, as every
    later stage and Kaggle's scorer read it."""
    if layouts.delimiter(layout.sample_path) == ",":
        shutil.copyfile(layout.sample_path, dest)
    else:
        layout.sample.to_csv(dest, index=False)


def summary(layout: layouts.Layout, classes: list[str], kind: str, out: Path) -> str:
    counts = label_counts(layout.train["label"], layout.task)
    return (
        f"prepare: layout {layout.name}, {layout.task}, {len(layout.train)} train images in "
        f"{len(classes)} classes (smallest {counts.idxmin()}: {counts.min()}, largest "
        f"{counts.idxmax()}: {counts.max()}), {len(layout.test)} test images, submission "
        f"'{kind}' -> {out}/"
    )


def main(argv: list[str]) -> None:
    argparse.ArgumentParser(prog="python -m pipeline prepare").parse_args(argv)
    p = load_params()
    run(p.prepare, p.competition)
