"""prepare: index data/raw into data/prepared/ and check every image once.

    python -m pipeline prepare             # reads prepare.* from params.yaml

Writes train.csv (id, path, label), test.csv (id, path), meta.json (classes, task, submission
shape), a copy of sample_submission.csv and, with `prepare.cache_size`, the images resized once
into uint8 arrays so that training never decodes a file again.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import layouts
from pipeline.data import PREPARED, load_image, resize
from pipeline.files import PipelineError, atomic_dir, write_csv, write_json
from pipeline.params import Prepare, load_params

RAW = Path("data/raw")


def sort_classes(labels: pd.Series) -> list[str]:
    """Class names in a stable order: numerically when they are all integers."""
    names = sorted(set(labels))
    if all(re.fullmatch(r"-?\d+", n) for n in names):
        return sorted(names, key=int)
    return names


def decode_all(paths: list[str], size: int | None) -> tuple[np.ndarray | None, list[str]]:
    """Open every image once; return the resized stack (if size) and the unreadable files."""
    bad, stack = [], []
    for p in paths:
        try:
            img = load_image(p)
        except Exception as e:  # PIL raises many types for broken files; all mean "unreadable"
            bad.append(f"{p} ({type(e).__name__}: {e})")
            continue
        if size:
            stack.append(resize(img, size))
    return (np.stack(stack) if size and not bad else None), bad


def run(cfg: Prepare, raw: Path = RAW, out: Path = PREPARED) -> None:
    if not raw.is_dir():
        raise PipelineError(f"{raw}: missing; run `dvc repro download` first")
    train, test, sample = layouts.csv_with_folder(raw)
    classes = sort_classes(train["label"])
    with atomic_dir(out) as tmp:
        bad = []
        for split, frame in (("train", train), ("test", test)):
            stack, unreadable = decode_all(frame["path"].tolist(), cfg.cache_size)
            bad += unreadable
            if stack is not None:
                np.save(tmp / f"{split}_images.npy", stack)
        if bad:
            listed = "\n  ".join(bad[:20])
            more = f"\n  … and {len(bad) - 20} more" if len(bad) > 20 else ""
            raise PipelineError(f"{len(bad)} unreadable image(s):\n  {listed}{more}")
        write_csv(tmp / "train.csv", train[["id", "path", "label"]])
        write_csv(tmp / "test.csv", test[["id", "path"]])
        sample.to_csv(tmp / "sample_submission.csv", index=False)
        write_json(
            tmp / "meta.json",
            {
                "task": "single_label",
                "classes": classes,
                "submission_kind": "label",
                "id_column": sample.columns[0],
                "n_train": len(train),
                "n_test": len(test),
            },
        )
    counts = train["label"].value_counts()
    print(
        f"prepare: {len(train)} train images in {len(classes)} classes "
        f"(smallest {counts.idxmin()}: {counts.min()}, largest {counts.idxmax()}: {counts.max()}), "
        f"{len(test)} test images -> {out}/"
    )


def main(argv: list[str]) -> None:
    argparse.ArgumentParser(prog="python -m pipeline prepare").parse_args(argv)
    run(load_params().prepare)
