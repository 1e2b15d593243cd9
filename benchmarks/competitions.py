"""Lay out real small image competitions the way Kaggle ships them, to check the pipeline beyond
its built-in demo. tiny, binary and multilabel come from scikit-learn's bundled digits (1,797
real 8x8 scans); elpv from real solar-cell scans that pip installs.

    python benchmarks/competitions.py tiny DEST [--seed N]        # csv layout, 4 classes
    python benchmarks/competitions.py binary DEST [--seed N]      # csv layout, digits 3 and 8
    python benchmarks/competitions.py multilabel DEST [--seed N]  # planet layout, digit tags
    python benchmarks/competitions.py fewlabels DEST [--seed N]   # csv layout, 10 classes
    python benchmarks/competitions.py elpv DEST [--test-ratio 1:2] [--limit N]   # ordinal grades
    python benchmarks/competitions.py elpv-defect DEST [--test-ratio 1:2]   # defective or not

elpv: the 2,624 electroluminescence scans of solar cells of `pip install elpv-dataset` (300x300
grayscale PNG; CC BY-NC-SA 4.0, so they are written where you ask at run time and never enter
this repository). The defect probability {0, 1/3, 2/3, 1} becomes the ordinal grade 0..3
(1508/295/106/715 images) as aptos2019 grades retinas: train.csv (id,grade,type; type is the
module, mono or poly, for competition.group_column or as an extra), train/<id>.png,
test/<id>.png, sample_submission.csv (id,grade) and the private solution.csv (id,grade). The
test split is stratified by grade and module type and seeded; --test-ratio TEST:TRAIN sets its
size (default 1:2, a third of the scans); --limit N keeps a stratified N of all the scans (quick
runs). Point params.yaml at it with competition.metric: qwk and competition.label_column: grade.

elpv-defect: the same scans and split as a binary competition, as the ELPV papers pose it: a cell
is `defective` when its defect probability is over a half (grades 2 and 3, 821 of 2,624), else
`functional`; train.csv (id,cell,type), sample_submission.csv and solution.csv (id,cell). Point
params.yaml at it with competition.metric: roc_auc and competition.label_column: cell.

binary: digits 3 and 8 as 100 training and 200 test images, laid out as tiny.

fewlabels: all ten digits as 150 training and 1,500 test images, laid out as tiny: few labels and
a test set ten times larger, where a semi-supervised round should pay.

tiny: digits 3, 5, 8 and 9 (the most confusable) as 100 training and 400 test images, stratified:
train.csv (id,label), train/<id>.png, test/<id>.png, sample_submission.csv (id,label) and the
private solution.csv (id,label) in the sample's order, as pipeline/stages/download.py:write_demo.

multilabel: 16x16 images holding two or three different digits of 0-5 in a 2x2 grid of 8x8 cells
(the rest empty); the tags are the digits present. Mirrors planet: train_v2.csv (image_name,tags),
train-jpg/train_<n>.png, test-jpg/test_<n>.png (PNG kept: JPEG would smear 8 px digits),
sample_submission.csv and solution.csv (image_name,tags). The source digits are split into a
train pool and a test pool first, so no digit scan appears in both splits.

DEST must not exist or be empty; the competition is written beside it and renamed into place.
Then point params.yaml at it: competition.source: path, competition.path: DEST (multilabel also
competition.metric: f2_samples).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

TINY_CLASSES = (3, 5, 8, 9)
TINY_TRAIN, TINY_TEST = 100, 400
BINARY_CLASSES = (3, 8)
BINARY_TRAIN, BINARY_TEST = 100, 200
TAGS = tuple(range(6))  # multilabel: the digits used as tags
ML_TRAIN, ML_TEST = 600, 600
FEW_TRAIN, FEW_TEST = 150, 1500
CELL = 8  # px, one digit


def digits_uint8() -> tuple[np.ndarray, np.ndarray]:
    """The digits as uint8 grayscale (0-16 scaled to 0-255, as write_demo) and their targets."""
    d = load_digits()
    return (d.images * (255 / 16)).round().astype(np.uint8), d.target


def random_ids(n: int, rng: np.random.Generator) -> np.ndarray:
    """n distinct random 5-digit ids, as write_demo draws them."""
    return np.array([f"{k:05d}" for k in rng.permutation(100_000)[:n]])


def save_png(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img, mode="L").save(path)


def write_tiny(dest: Path, seed: int) -> None:
    """csv layout: a stratified 100/400 split of four confusable digit classes."""
    write_digits(dest, seed, TINY_CLASSES, TINY_TRAIN, TINY_TEST)


def write_binary(dest: Path, seed: int) -> None:
    """csv layout: a stratified 100/200 split of digits 3 and 8, a two-class tiny competition."""
    write_digits(dest, seed, BINARY_CLASSES, BINARY_TRAIN, BINARY_TEST)


def write_fewlabels(dest: Path, seed: int) -> None:
    """csv layout: a stratified 150/1,500 split of all ten digits."""
    write_digits(dest, seed, tuple(range(10)), FEW_TRAIN, FEW_TEST)


def write_digits(dest: Path, seed: int, classes, n_train: int, n_test: int) -> None:
    images, target = digits_uint8()
    rng = np.random.default_rng(seed)
    rows = np.flatnonzero(np.isin(target, classes))
    tr, te = train_test_split(
        rows, train_size=n_train, test_size=n_test, stratify=target[rows], random_state=seed
    )
    ids = random_ids(len(images), rng)
    for split, idx in (("train", tr), ("test", te)):
        for i in idx:
            save_png(dest / split / f"{ids[i]}.png", images[i])
    pd.DataFrame({"id": ids[tr], "label": target[tr]}).to_csv(dest / "train.csv", index=False)
    order = rng.permutation(te)  # the sample's order is its own, not the files'
    sample = pd.DataFrame({"id": ids[order], "label": classes[0]})
    sample.to_csv(dest / "sample_submission.csv", index=False)
    sample.assign(label=target[order]).to_csv(dest / "solution.csv", index=False)


def composite(pool: dict[int, np.ndarray], images: np.ndarray, rng: np.random.Generator):
    """One 16x16 image of 2-3 different digits in random cells of a 2x2 grid, and its tags."""
    tags = sorted(rng.choice(TAGS, size=rng.integers(2, 4), replace=False).tolist())
    canvas = np.zeros((2 * CELL, 2 * CELL), dtype=np.uint8)
    for tag, cell in zip(tags, rng.permutation(4), strict=False):
        r, c = divmod(int(cell), 2)
        canvas[r * CELL : (r + 1) * CELL, c * CELL : (c + 1) * CELL] = images[rng.choice(pool[tag])]
    return canvas, " ".join(map(str, tags))


def tag_pools(target: np.ndarray, seed: int) -> tuple[dict[int, np.ndarray], dict]:
    """Source digits of each tag split half/half into a train pool and a test pool."""
    rows = np.flatnonzero(np.isin(target, TAGS))
    tr, te = train_test_split(rows, test_size=0.5, stratify=target[rows], random_state=seed)
    return ({t: tr[target[tr] == t] for t in TAGS}, {t: te[target[te] == t] for t in TAGS})


def write_split(folder: Path, prefix: str, n: int, pool: dict, images, rng) -> pd.DataFrame:
    names, tags = [f"{prefix}_{i}" for i in range(n)], []
    for name in names:
        img, t = composite(pool, images, rng)
        save_png(folder / f"{name}.png", img)
        tags.append(t)
    return pd.DataFrame({"image_name": names, "tags": tags})


def write_multilabel(dest: Path, seed: int) -> None:
    """planet layout: train_v2.csv + train-jpg/, test-jpg/, tags of the digits present."""
    images, target = digits_uint8()
    rng = np.random.default_rng(seed)
    train_pool, test_pool = tag_pools(target, seed)
    train = write_split(dest / "train-jpg", "train", ML_TRAIN, train_pool, images, rng)
    test = write_split(dest / "test-jpg", "test", ML_TEST, test_pool, images, rng)
    train.to_csv(dest / "train_v2.csv", index=False)
    test.assign(tags="0 1").to_csv(dest / "sample_submission.csv", index=False)
    test.to_csv(dest / "solution.csv", index=False)


def elpv_labels() -> tuple[Path, pd.DataFrame]:
    """The elpv-dataset wheel's image folder and its labels: file, grade 0..3, module type."""
    spec = importlib.util.find_spec("elpv_dataset")
    if spec is None:
        sys.exit("error: elpv needs `pip install elpv-dataset` (benchmarks only)")
    data = Path(spec.origin).parent / "data"
    rows = pd.read_csv(data / "labels.csv", sep=r"\s+", names=["file", "prob", "type"])
    grade = (rows["prob"] * 3).round().astype(int)  # 0, 1/3, 2/3, 1 -> 0..3
    return data, rows.assign(grade=grade)[["file", "grade", "type"]]


def ratio(text: str) -> float:
    """'TEST:TRAIN' (e.g. 1:2) as the test set's share of the scans."""
    test, train = (float(x) for x in text.split(":"))
    return test / (test + train)


SAMPLE = {"grade": 0, "cell": "functional"}  # elpv's sample_submission value


def write_elpv(
    dest: Path, seed: int, test_share: float = 1 / 3, limit: int | None = None, target="grade"
) -> None:
    """csv layout of the solar-cell scans, `target` grades 0..3 (or `cell`: functional or
    defective), the test labels in solution.csv only."""
    data, rows = elpv_labels()
    rows["cell"] = np.where(rows["grade"] >= 2, "defective", "functional")
    strata = rows["grade"].astype(str) + rows["type"]
    if limit:
        rows, _ = train_test_split(rows, train_size=limit, stratify=strata, random_state=seed)
        strata = strata[rows.index]
    tr, te = train_test_split(rows, test_size=test_share, stratify=strata, random_state=seed)
    rng = np.random.default_rng(seed)
    ids = pd.Series(random_ids(len(rows), rng), index=rows.index)
    for split, part in (("train", tr), ("test", te)):
        (dest / split).mkdir(parents=True)
        for i, file in part["file"].items():
            shutil.copyfile(data / file, dest / split / f"{ids[i]}.png")
    tr.assign(id=ids[tr.index])[["id", target, "type"]].to_csv(dest / "train.csv", index=False)
    order = rng.permutation(te.index)  # the sample's order is its own, not the files'
    sample = pd.DataFrame({"id": ids[order].to_numpy(), target: SAMPLE[target]})
    sample.to_csv(dest / "sample_submission.csv", index=False)
    sample.assign(**{target: te[target][order].to_numpy()}).to_csv(dest / "solution.csv",
                                                                   index=False)  # fmt: skip


KINDS: dict[str, Callable[..., None]] = {
    "tiny": write_tiny,
    "binary": write_binary,
    "multilabel": write_multilabel,
    "elpv": write_elpv,
    "elpv-defect": partial(write_elpv, target="cell"),
    "fewlabels": write_fewlabels,
}


def write_into(dest: Path, kind: str, seed: int, **opts) -> None:
    """Write beside `dest`, then rename into place: DEST never holds half a competition."""
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        sys.exit(f"error: {dest} exists and is not an empty folder; pick a new DEST")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        KINDS[kind](tmp, seed, **opts)
        if dest.exists():
            dest.rmdir()
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("kind", choices=sorted(KINDS))
    ap.add_argument("dest", type=Path, help="output folder (must not exist or be empty)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--test-ratio", type=ratio, help="elpv: TEST:TRAIN, default 1:2")
    ap.add_argument("--limit", type=int, help="elpv: keep a stratified N of the scans")
    args = ap.parse_args(argv)
    elpv = args.kind.startswith("elpv")
    opts = {"test_share": args.test_ratio, "limit": args.limit} if elpv else {}
    write_into(args.dest, args.kind, args.seed, **{k: v for k, v in opts.items() if v})
    print(f"{args.kind}: competition written to {args.dest}/")


if __name__ == "__main__":
    main()
