"""extra: index and check pseudo.extra's unlabeled images into data/extra/, as prepare does the
test set.

    python -m pipeline extra      # reads pseudo.extra, pseudo.enabled and prepare.* from params

`pseudo.extra` is a folder (read in place, every image file under it) or an archive (.zip, .tar,
.7z: extracted into data/extra/images/) of images without labels, e.g. an earlier competition's
data. Every image is decoded once (an unreadable one is named, and nothing is written) and, with
`prepare.cache_size`, resized into the same cache as the test set's. Their ids are `extra/` and
the path under the folder, never a test id. Each fold's teachers predict them beside the test set
(preds/.../extra.csv) and pseudolabel selects from both; they are never validated on and never
submitted. Without pseudo.extra (or with pseudo.enabled false) the index is empty.

Writes data/extra/test.csv (id, path), meta.json (source, n_test, cache_size, resize,
images_sha256) and test_images.npy with a cache: the layout of an index's test split
(index.read_pool).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from pipeline import kaggle
from pipeline.decode import decode_all, unreadable
from pipeline.files import JUNK, PipelineError, atomic_dir, walk, write_csv, write_json
from pipeline.index import EXTRA
from pipeline.params import Prepare, load_params

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")
ID_PREFIX = "extra/"


def image_files(root: Path) -> list[Path]:
    """Every image file under `root`, sorted by its path (what zipping on a Mac adds left out)."""
    found = [
        folder / n
        for folder, _, names in walk(root)
        for n in names
        if n.lower().endswith(IMAGE_SUFFIXES) and n not in JUNK and not n.startswith("._")
        and "__MACOSX" not in folder.parts
    ]  # fmt: skip
    return sorted(found, key=lambda f: f.relative_to(root).as_posix())


def source_images(extra: str, tmp: Path, out: Path) -> tuple[pd.DataFrame, list[str]]:
    """(id, path as the index records it) of every image, and the files to decode now: a folder
    in place, an archive extracted under tmp/images (recorded as out/images)."""
    src = Path(extra).expanduser()
    if not src.exists():
        raise PipelineError(f"pseudo.extra: '{extra}' does not exist")
    if src.is_dir():
        root, recorded = src.resolve(), src.resolve()
    else:
        kaggle.safe_extract(src, tmp / "images")
        root, recorded = tmp / "images", out / "images"
    files = image_files(root)
    if not files:
        raise PipelineError(
            f"pseudo.extra: no image file ({', '.join(IMAGE_SUFFIXES)}) in '{extra}'"
        )
    rel = [f.relative_to(root).as_posix() for f in files]
    frame = pd.DataFrame(
        {"id": [ID_PREFIX + r for r in rel], "path": [str(recorded / r) for r in rel]}
    )
    return frame, [str(f) for f in files]


def run(extra: str | None, cfg: Prepare, out: Path = EXTRA) -> dict:
    meta: dict = {"source": extra, "n_test": 0, "cache_size": cfg.cache_size, "resize": cfg.resize}
    with atomic_dir(out) as tmp:  # the index and its cache appear together or not at all
        frame = pd.DataFrame(columns=["id", "path"])
        if extra is not None:
            frame, decode = source_images(extra, tmp, out)
            cache = tmp / "test_images.npy"
            bad, meta["images_sha256"] = decode_all(
                decode, cache, cfg.cache_size, cfg.resize, stage="extra"
            )
            if bad:
                raise unreadable(bad, "pseudo.extra: ")
            meta["n_test"] = len(frame)
        write_csv(tmp / "test.csv", frame)
        write_json(tmp / "meta.json", meta)
    print(
        "extra: no pseudo.extra: only the test set is pseudolabelled"
        if extra is None
        else f"extra: {len(frame)} unlabeled images from '{extra}' -> {out}/"
    )
    return meta


def main(argv: list[str]) -> None:
    argparse.ArgumentParser(prog="python -m pipeline extra").parse_args(argv)
    p = load_params()
    run(p.pseudo.extra if p.pseudo.enabled else None, p.prepare)
