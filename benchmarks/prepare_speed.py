"""prepare's decoding on every core against one file after another, as ratios measured in one run
(not a test: this machine is shared and noisy).

    .venv/bin/python benchmarks/prepare_speed.py [--upscale 600] [--size 32] [--resize squish]
                                                 [--repeats 3] [--limit N] [--workers N]

Writes the 2,624 ELPV solar-cell scans (`pip install elpv-dataset`: 300x300 grayscale PNGs) as
full-size JPEGs (quality 95) into a temporary folder, with --upscale PX a second set enlarged to
PX x PX (real competitions' photos are larger), and times on each set, alternating, repeat after
repeat: `today` (the loop prepare ran before: a list of arrays, np.stack, np.save),
`decode_all(workers=1)` (the same loop writing into the memory-mapped cache) and `decode_all` on
every core (or --workers). Checks that all three write the same cache bytes and image hash.
Goal: parallel at least 1.7x faster than today on 2 cores.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.competitions import elpv_labels  # noqa: E402
from pipeline.decode import decode_all, default_workers  # noqa: E402
from pipeline.index import load_image, resize  # noqa: E402


def write_jpegs(dest: Path, upscale: int | None, limit: int | None) -> list[str]:
    """The scans as JPEGs (quality 95), full size or enlarged to upscale x upscale."""
    data, rows = elpv_labels()
    dest.mkdir()
    paths = []
    for i, file in enumerate(rows["file"][:limit]):
        with Image.open(data / file) as img:
            img = img.resize((upscale, upscale), Image.Resampling.BICUBIC) if upscale else img
            paths.append(str(dest / f"{i:05d}.jpg"))
            img.save(paths[-1], quality=95)
    return paths


def today(paths: list[str], dest: Path, size: int, mode: str) -> str:
    """The decoding prepare ran before decode_all went parallel (its check of unreadable files
    left out: these are all readable); returns the images' hash."""
    h, stack = hashlib.sha256(), []
    for p in paths:
        data = Path(p).read_bytes()
        h.update(len(data).to_bytes(8, "little") + data)
        stack.append(resize(load_image(io.BytesIO(data)), size, mode))
    np.save(dest, np.stack(stack))
    return h.hexdigest()


def race(paths: list[str], tmp: Path, args: argparse.Namespace, workers: int) -> None:
    """Every way `args.repeats` times, alternating; prints seconds, ratios and the check."""
    ways = {
        "today": lambda dest: today(paths, dest, args.size, args.resize),
        "one thread": lambda dest: decode_all(paths, dest, args.size, args.resize, workers=1)[1],
        f"{workers} threads": lambda dest: decode_all(
            paths, dest, args.size, args.resize, workers=workers
        )[1],
    }
    seconds = {name: [] for name in ways}
    hashes, caches = set(), set()
    for r in range(args.repeats):
        for k, (name, way) in enumerate(ways.items()):
            dest = tmp / f"cache_{k}.npy"
            start = time.perf_counter()
            hashes.add(way(dest))
            seconds[name].append(time.perf_counter() - start)
            caches.add(hashlib.sha256(dest.read_bytes()).hexdigest())
            dest.unlink()
        print(f"  repeat {r + 1}: " + ", ".join(f"{n} {s[-1]:.2f} s" for n, s in seconds.items()))
    parallel = seconds[f"{workers} threads"]
    for name in ("today", "one thread"):
        ratios = [a / b for a, b in zip(seconds[name], parallel, strict=True)]
        listed = ", ".join(f"{x:.2f}" for x in ratios)
        print(f"  {name} / {workers} threads: {listed} (median {statistics.median(ratios):.2f}x)")
    same = len(hashes) == 1 and len(caches) == 1
    print(f"  same cache bytes and images hash: {'yes' if same else 'NO'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--upscale", type=int, default=None, help="px: also time enlarged copies")
    ap.add_argument("--size", type=int, default=32, help="cache px (params.yaml's default)")
    ap.add_argument("--resize", default="squish", choices=["squish", "crop", "pad"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--limit", type=int, default=None, help="only the first N scans")
    ap.add_argument("--workers", type=int, default=None, help="default: every core")
    args = ap.parse_args()
    workers = args.workers or default_workers()
    with tempfile.TemporaryDirectory() as tmp:
        for px in [None] + ([args.upscale] if args.upscale else []):
            paths = write_jpegs(Path(tmp) / f"jpg_{px}", px, args.limit)
            mib = sum(Path(p).stat().st_size for p in paths) / 2**20
            side = f"{px}x{px}" if px else "300x300 (full size)"
            print(f"ELPV {side} JPEG q95: {len(paths)} files, {mib:.1f} MiB; "
                  f"cache {args.size} px {args.resize}")  # fmt: skip
            race(paths, Path(tmp), args, workers)


if __name__ == "__main__":
    main()
