"""download: put the competition's files in data/raw/ exactly as Kaggle ships them.

    python -m pipeline download            # reads competition.* and base.seed from params.yaml

Sources: `demo` writes the embedded digits competition (offline), `kaggle` runs the Kaggle CLI,
`path` reads a local folder in place or extracts a local .zip (on Kaggle: /kaggle/input/NAME).
A folder is not copied: data/raw/ mirrors its tree with a symbolic link per file (Kaggle's working
disk is 20 GB, a competition's input can be more; linked folders are followed); only archives
inside it are extracted.

    python -m pipeline download --manifest # data/source.json: the source's file list (the
                                           # `source` stage, run by every `dvc repro`)

The manifest lists a local folder's file names, sizes and times, so that an image added to or
removed from it reruns download (links rebuilt) and prepare; with `demo` and `kaggle` it never
changes, and a Kaggle download is never repeated. data/weights/ lists model.pretrained's weights
files the same way (size and time), one file per teacher (teachers/T.json) and one per teacher's
student (students/T.json), so a file replaced under the same name retrains only the models that
start from it.

Download's own output is data/raw.json, the same listing of data/raw (what prepare and submit
depend on): DVC never hashes the images on `dvc status` (100k of them took half a minute). A
data/raw changed by hand after download listed it is refused by the `source` stage, which says
how to take it.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from pipeline import kaggle
from pipeline.files import (
    JUNK,
    PipelineError,
    atomic_dir,
    listing,
    read_json,
    walk,
    weights_file,
    write_json,
)
from pipeline.params import Competition, Params, load_params

RAW = Path("data/raw")
MANIFEST = Path("data/source.json")  # the `source` stage's output, a dependency of download
EXTRA_MANIFEST = Path("data/extra_source.json")  # and of the `extra` stage
WEIGHTS_LISTINGS = Path("data/weights")  # and of each teacher's and each student's training
RAW_LISTING = Path("data/raw.json")  # download's output: what prepare and submit depend on
SKEWED = {3: 1 / 3, 8: 1 / 3}  # class -> fraction of its training images the demo keeps


def write_demo(dest: Path, seed: int) -> None:
    """A real, small competition from scikit-learn's bundled digits (1,797 8x8 images).

    train.csv (id,label) + train/<id>.png, test/<id>.png, sample_submission.csv (id,label) and a
    private solution.csv that only the local leaderboard in `submit` reads. Two classes keep a
    third of their training images so that imbalance handling matters.
    """
    digits = load_digits()
    rng = np.random.default_rng(seed)
    images = (digits.images * (255 / 16)).round().astype(np.uint8)
    ids = np.array([f"{n:05d}" for n in rng.permutation(100_000)[: len(images)]])
    tr, te = train_test_split(
        np.arange(len(images)), test_size=0.25, stratify=digits.target, random_state=seed
    )
    keep = [i for i in tr if rng.random() < SKEWED.get(int(digits.target[i]), 1.0)]
    for split, rows in (("train", keep), ("test", te)):
        (dest / split).mkdir(parents=True)
        for i in rows:
            Image.fromarray(images[i], mode="L").save(dest / split / f"{ids[i]}.png")
    pd.DataFrame({"id": ids[keep], "label": digits.target[keep]}).to_csv(
        dest / "train.csv", index=False
    )
    order = rng.permutation(te)  # sample_submission's order is its own, not the files'
    pd.DataFrame({"id": ids[order], "label": 0}).to_csv(dest / "sample_submission.csv", index=False)
    pd.DataFrame({"id": ids[order], "label": digits.target[order]}).to_csv(
        dest / "solution.csv", index=False
    )


def link_tree(src: Path, dest: Path) -> None:
    """dest/ mirrors src/: real folders (linked folders too), and a symbolic link to every file
    (absolute target). A link in src to nothing is left out and named: mirrored, it would break
    DVC's hashing of data/raw on every run; an image the labels list is then reported missing
    by prepare, by row."""
    src, broken = src.resolve(), []
    for folder, _, files in walk(src):
        rel = folder.relative_to(src)
        (dest / rel).mkdir(parents=True, exist_ok=True)
        for name in files:
            if (folder / name).exists():
                (dest / rel / name).symlink_to(folder / name)
            else:
                broken.append((rel / name).as_posix())
    if broken:
        print(
            f"warning: {len(broken)} link(s) in {src} point to nothing and are left out: "
            f"{', '.join(broken[:5])}{', …' if len(broken) > 5 else ''}"
        )


def local_source(comp: Competition) -> Path:
    """competition.path, `~` expanded; it must exist."""
    if not comp.path:
        raise PipelineError("competition.path: required when competition.source is 'path'")
    src = Path(comp.path).expanduser()
    if not src.exists():
        raise PipelineError(f"competition.path: '{comp.path}' does not exist")
    return src


def manifest(comp: Competition) -> dict:
    """What the download stage's output is made from, cheap to compute: for a local folder the
    listing of its files (files.listing), so that DVC reruns download and prepare exactly when it
    changed. Demo and Kaggle downloads are fixed by the stage's params alone."""
    if comp.source != "path":
        return {"source": comp.source}
    return {"source": "path", **listing(local_source(comp))}


def extra_manifest(extra: str | None) -> dict:
    """The same listing of pseudo.extra's folder or archive (the `extra` stage's dependency)."""
    if extra is None:
        return {"extra": None}
    src = Path(extra).expanduser()
    if not src.exists():
        raise PipelineError(f"pseudo.extra: '{extra}' does not exist")
    return {"extra": extra, **listing(src)}


def weights_manifest(pretrained: bool | str) -> dict:
    """One backbone's model.pretrained, and for a local weights file its size and time
    (files.listing): a file replaced under the same name retrains what starts from it, as a
    param change would."""
    if not isinstance(pretrained, str):
        return {"pretrained": pretrained}
    return {"pretrained": pretrained, **listing(weights_file(pretrained))}


def weights_listings(p: Params) -> dict[str, dict]:
    """data/weights/'s files: teachers/T.json, teacher T's weights, and students/T.json, its
    student's (a student refining its teacher starts from no file), so that train@T-K and
    train_student@T-K depend on their own backbone's file only."""
    scratch, out = p.students_from_weights(), {}
    for teacher, student in p.students().items():
        out[f"teachers/{teacher}.json"] = weights_manifest(p.model.weights(teacher))
        out[f"students/{teacher}.json"] = (
            weights_manifest(p.model.weights(student)) if scratch else {"pretrained": "teacher"}
        )
    return out


def write_listings(folder: Path, files: dict[str, dict]) -> None:
    with atomic_dir(folder) as tmp:
        for rel, obj in files.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            write_json(tmp / rel, obj)


def from_local(src: Path, dest: Path) -> None:
    """A folder is linked in place, an archive extracted; archives inside (train.zip) are
    extracted too."""
    if src.is_dir():
        link_tree(src, dest)
    else:
        kaggle.safe_extract(src, dest)
    tidy(dest)
    kaggle.extract_nested(dest)


def tidy(dest: Path) -> None:
    """What zipping on a Mac or Windows adds goes (__MACOSX/, .DS_Store, ._* files), and a single
    wrapper folder (mycomp/train.csv ...) is unwrapped, so the layout is found at the top."""
    for p in sorted(dest.rglob("*"), reverse=True):
        if p.name in JUNK or p.name.startswith("._"):
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink(missing_ok=True)
    entries = list(dest.iterdir())
    if len(entries) == 1 and entries[0].is_dir():
        wrapper = entries[0].rename(dest / f".{entries[0].name}.unwrap")
        for child in wrapper.iterdir():
            child.rename(dest / child.name)
        wrapper.rmdir()


def raw_listing(made_from: dict, raw: Path = RAW) -> dict:
    """data/raw's file names, sizes and times (files.listing, a link's target's) and the source
    manifest it was made from."""
    return {"made_from": made_from, **{k: v for k, v in listing(raw).items() if k != "path"}}


def check_raw(now: dict) -> None:
    """Refuse a data/raw changed since download listed it while the source did not change (an
    edit by hand): prepare would not rerun on it."""
    listed = read_json(RAW_LISTING) if RAW_LISTING.exists() else {}
    if listed.get("made_from") != now:
        return  # never downloaded, or the source changed: download reruns anyway
    if not RAW.is_dir() or raw_listing(now) != listed:
        raise PipelineError(
            f"{RAW}: {'missing' if not RAW.is_dir() else 'changed'} since download listed it in "
            f"{RAW_LISTING}; run `dvc repro -f -s download` to download again (a finished Kaggle "
            "download is not repeated: data/raw is listed as it is now), or undo the change"
        )


def run(comp: Competition, seed: int, raw: Path = RAW, force: bool = False) -> None:
    if comp.source == "kaggle":
        kaggle.download_competition(comp.name, raw, files=comp.files or None, force=force)
    else:
        with atomic_dir(raw) as tmp:
            if comp.source == "demo":
                write_demo(tmp, seed)
            else:
                from_local(local_source(comp), tmp)
        print(f"download: {comp.source} competition '{comp.name}' in {raw}/")
    made_from = manifest(comp)
    write_json(raw.with_suffix(".json"), raw_listing(made_from, raw))  # data/raw.json


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="python -m pipeline download")
    ap.add_argument("--force", action="store_true", help="download again (source: kaggle)")
    ap.add_argument(
        "--manifest", action="store_true", help=f"only write {MANIFEST}, the source's listing"
    )
    a = ap.parse_args(argv)
    p = load_params()
    if a.manifest:
        now = manifest(p.competition)
        check_raw(now)
        write_json(MANIFEST, now)
        write_json(EXTRA_MANIFEST, extra_manifest(p.pseudo.extra if p.pseudo.enabled else None))
        write_listings(WEIGHTS_LISTINGS, weights_listings(p))
    else:
        run(p.competition, p.base.seed, force=a.force)
