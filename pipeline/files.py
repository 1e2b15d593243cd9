"""Atomic file and folder writes: a killed stage leaves either the old output or none, never half.

Every stage writes through these helpers: the content goes to a temporary sibling first and is
renamed into place only once it is complete (rename is atomic on one filesystem).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.errors import PipelineError

__all__ = ["PipelineError"]  # re-exported: stages import it from here


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = _umask()  # temporary files are private (0600/0700); outputs get the user's usual mode


FULL_BELOW = 1 << 20  # bytes: a write that failed with less left than this ran out of space


def full_disk(e: Exception, dest: Path) -> OSError | None:
    """A write into `dest` that failed on a full disk, as an ENOSPC naming `dest` (write(2)'s
    carries no path; torch.save and safetensors raise their own errors); None otherwise. Checked
    before the temporary is removed, while the space it took is still taken."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        e.filename = str(dest) if e.filename is None else e.filename
        return None  # raised as it is
    if isinstance(e, PipelineError):
        return None
    with contextlib.suppress(OSError):
        if shutil.disk_usage(dest.parent).free < FULL_BELOW:
            return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dest))
    return None


@contextlib.contextmanager
def atomic_path(dest: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `dest`; on success move it to `dest`, on error delete it."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if tmp.exists():
            os.chmod(tmp, 0o666 & ~UMASK)
        os.replace(tmp, dest)
    except Exception as e:
        full = full_disk(e, dest)
        if full is not None:
            raise full from e
        raise
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(dest: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside `dest`; on success it replaces `dest` whole."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~UMASK)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except Exception as e:
        full = full_disk(e, dest)
        if full is not None:
            raise full from e
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text(dest: str | Path, text: str) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_text(text)


def write_json(dest: str | Path, obj: Any) -> None:
    write_text(dest, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_csv(dest: str | Path, df: pd.DataFrame) -> None:
    with atomic_path(dest) as tmp:
        df.to_csv(tmp, index=False)


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def walk(root: str | Path) -> Iterator[tuple[Path, list[str], list[str]]]:
    """os.walk in sorted order that also enters linked folders (`train/4 -> /elsewhere`): data is
    read in place, so a link is as good as a folder. A link back to a folder it is inside (a
    cycle, `train/4/all -> ..`) is not entered: what it holds is walked, or left out, already."""
    inside = {str(root): frozenset(os.path.realpath(p) for p in Path(root).absolute().parents)}
    for folder, dirs, files in os.walk(root, followlinks=True):
        above = inside.pop(folder) | {os.path.realpath(folder)}
        dirs[:] = sorted(d for d in dirs if os.path.realpath(os.path.join(folder, d)) not in above)
        inside.update({os.path.join(folder, d): above for d in dirs})
        yield Path(folder), dirs, sorted(files)


JUNK = ("__MACOSX", ".DS_Store", "Thumbs.db")  # what zipping on a Mac or Windows adds


def listing(src: Path) -> dict:
    """A local folder's (or one archive's) relative file names, sizes and modification times,
    as a digest (never the contents: 100k images are listed in a second)."""
    src = src.resolve()
    tree = walk(src) if src.is_dir() else [(src.parent, [], [src.name])]  # an archive: itself
    entries = [
        ((folder / n).relative_to(src.parent).as_posix(), *_size_time(folder / n))
        for folder, _, names in tree
        for n in names
        if n not in JUNK and not n.startswith("._")
    ]
    digest = hashlib.sha256(json.dumps(entries).encode()).hexdigest()
    size = sum(e[1] for e in entries)
    return {"path": str(src), "files": len(entries), "bytes": size, "listing_sha256": digest}


def _size_time(path: Path) -> tuple[int, int]:
    try:
        st = path.stat()
    except OSError:  # a link to nothing: counted, so that it is noticed once it is mended
        return -1, 0
    return st.st_size, st.st_mtime_ns


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
