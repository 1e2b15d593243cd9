"""Every image file decoded once: the check prepare and extra make before anything is written,
and the resize-once cache they save, each image written at its index of a memory-mapped .npy
(the bytes np.save writes for the stack, never the whole stack in memory).

Decoding runs on threads, one per core: Pillow and OpenCV release the GIL while they decode and
resize, and a stage may run in a fork of the warm server (pipeline/warm.py), where forking worker
processes after torch's import can deadlock and spawning them costs each worker the imports again.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import TypeVar

import numpy as np
from numpy.lib.format import open_memmap
from PIL import UnidentifiedImageError

from pipeline.files import PipelineError
from pipeline.index import load_image, resize
from pipeline.progress import progress

T = TypeVar("T")
R = TypeVar("R")
CHUNK = 8  # images per task: fewer hand-offs between threads
AHEAD = 4  # tasks queued per thread: bounds the file bytes held until the hash reaches them


def decode_all(
    paths: list[str],
    dest: Path,
    size: int | None,
    mode: str = "squish",
    stage: str = "prepare",
    workers: int | None = None,
) -> tuple[list[str], str]:
    """Open every image once; with `size`, save them resized as `mode` says to the .npy `dest`
    (removed again when a file is unreadable). Returns the unreadable files and the sha256 of
    every file's length and bytes in order (training's resume key). `workers` threads decode
    (default: default_workers()); 1 decodes one file after another in this thread."""
    shape = (len(paths), size, size, 3)
    cache = open_memmap(dest, mode="w+", dtype=np.uint8, shape=shape) if size else None
    task = partial(decode_chunk, paths, cache, size, mode)
    chunks = [range(s, min(s + CHUNK, len(paths))) for s in range(0, len(paths), CHUNK)]
    done = (one for chunk in in_order(task, chunks, workers or default_workers()) for one in chunk)
    h, bad = hashlib.sha256(), []
    desc = f"{stage}: decoding images"
    for p, (data, problem) in zip(paths, progress(done, len(paths), desc, "image"), strict=True):
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
        if problem:
            bad.append(f"{p} ({problem})")
    del task, cache  # unmapped: the file holds every image
    if bad and size:
        Path(dest).unlink()
    return bad, h.hexdigest()


def default_workers() -> int:
    """One thread per core this process may run on; OMP_NUM_THREADS where set (the tests set 1
    so that two test workers do not fight over the cores)."""
    limit = os.environ.get("OMP_NUM_THREADS", "")
    if limit.isdigit() and int(limit) > 0:
        return int(limit)
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def in_order(fn: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """fn of each item on `workers` threads (this one for 1), yielded in the items' order, with
    at most AHEAD tasks per thread started before their turn."""
    if workers == 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(workers) as pool:
        pending = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) > AHEAD * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def decode_chunk(
    paths: list[str], cache: np.ndarray | None, size: int | None, mode: str, chunk: range
) -> list[tuple[bytes, str | None]]:
    return [decode_one(paths[i], cache, i, size, mode) for i in chunk]


def decode_one(
    path: str, cache: np.ndarray | None, i: int, size: int | None, mode: str
) -> tuple[bytes, str | None]:
    """The file's bytes and why it is unreadable; None: readable, and resized into cache[i]."""
    data = Path(path).read_bytes()
    if not data:
        return data, "empty file: 0 bytes"
    try:
        img = load_image(io.BytesIO(data))
    except UnidentifiedImageError:
        return data, "not an image format PIL can read"
    except Exception as e:  # PIL raises many types for broken files; all mean "unreadable"
        return data, f"{type(e).__name__}: {e}"
    if cache is not None:
        cache[i] = resize(img, size, mode)
    return data, None


def unreadable(bad: list[str], what: str = "") -> PipelineError:
    """The error naming the first 20 unreadable files (and how many more), `what` before it."""
    listed = "\n  ".join(bad[:20])
    more = f"\n  … and {len(bad) - 20} more" if len(bad) > 20 else ""
    return PipelineError(f"{what}{len(bad)} unreadable image(s):\n  {listed}{more}")
