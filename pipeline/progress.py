"""Progress of long loops: a tqdm bar on a terminal, a line every PERIOD seconds elsewhere.

Bars and lines go to stderr, so stdout stays the stage's report. Under DVC or CI (stderr is not
a terminal) a bar's carriage returns would pile up into one endless line: periodic lines instead.
Only the main process reports (`main=False` on the others).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")
PERIOD = 30.0  # seconds between lines when stderr is not a terminal


def progress(
    items: Iterable[T], total: int | None, desc: str, unit: str = "it", main: bool = True
) -> Iterable[T]:
    if not main:
        return items
    if sys.stderr.isatty():
        return tqdm(items, total=total, desc=desc, unit=unit, file=sys.stderr, leave=False)
    return _lines(items, total, desc, unit)


def _lines(items: Iterable[T], total: int | None, desc: str, unit: str) -> Iterator[T]:
    start = last = time.monotonic()
    for done, item in enumerate(items, start=1):
        yield item
        now = time.monotonic()
        if now - last >= PERIOD:
            last = now
            rate = done / (now - start)
            eta = f", about {(total - done) / rate:.0f} s left" if total and rate > 0 else ""
            of = f"/{total}" if total else ""
            print(f"{desc}: {done}{of} {unit} ({rate:.1f} {unit}/s{eta})", file=sys.stderr)
