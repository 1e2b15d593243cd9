"""The package's own source as bytes to hash: the resume key (pipeline/specs.py) and the warm
server's socket name (pipeline/warm.py) both hold it, so an edit to any module restarts both.
The standard library only: the warm client stays light."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def source_chunks() -> Iterator[bytes]:
    """Each module's path (relative to the package) and bytes, in a stable order."""
    for f in sorted(PACKAGE.rglob("*.py")):
        yield f.relative_to(PACKAGE).as_posix().encode() + f.read_bytes()
