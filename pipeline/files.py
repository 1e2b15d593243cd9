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

import numpy as np
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


def _raise_if_full(e: Exception, dest: Path) -> None:
    """Raise full_disk's error for a failed write into `dest` when it has one (the caller then
    re-raises `e` itself); called before the temporary is removed."""
    full = full_disk(e, dest)
    if full is not None:
        raise full from e


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
        _raise_if_full(e, dest)
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
        _raise_if_full(e, dest)
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


def weights_file(pretrained: str) -> Path:
    """model.pretrained's local weights file, refused by name when it is not there (the `source`
    stage checks it before anything runs, `train` again as it loads it)."""
    path = Path(pretrained)
    if not path.is_file():
        raise PipelineError(f"model.pretrained: weights file '{path}' not found")
    return path


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


MANY_PROBS = 16  # probability columns from which write_probs_csv formats them itself
PROBS_TEXT = 6  # significant digits of a probability in a submission (1.23456e-05): two
# groups of three digits, each looked up in THREE_DIGITS ("000" to "999")
THREE_DIGITS = np.array([[48 + n // 100, 48 + n // 10 % 10, 48 + n % 10] for n in range(1000)],
                        np.uint8)  # fmt: skip


def probs_text(values: np.ndarray) -> np.ndarray:
    """Probabilities in [0, 1] as fixed-width text `d.ddddde±dd` (PROBS_TEXT significant
    digits), an (..., 11) uint8 array: formatted by array arithmetic, not float by float."""
    v = np.asarray(values, dtype=np.float64)
    zero = v <= 0
    e = np.floor(np.log10(np.where(zero, 1.0, v))).astype(np.int64)
    m = np.rint(v / 10.0**e * 10 ** (PROBS_TEXT - 1)).astype(np.int64)
    carried = m >= 10**PROBS_TEXT  # 9.999996e-01 rounds to 1.00000e+00
    m, e = np.where(carried, m // 10, m), e + carried
    m, e = np.where(zero, 0, m), np.where(zero, 0, e)
    digits = np.concatenate([THREE_DIGITS[m // 1000], THREE_DIGITS[m % 1000]], -1)
    out = np.empty((*v.shape, PROBS_TEXT + 5), np.uint8)
    out[..., 0], out[..., 1] = digits[..., 0], ord(".")
    out[..., 2 : PROBS_TEXT + 1] = digits[..., 1:]
    out[..., -4], out[..., -3] = ord("e"), np.where(e < 0, ord("-"), ord("+"))
    out[..., -2], out[..., -1] = 48 + abs(e) // 10, 48 + abs(e) % 10
    return out


def write_probs_csv(dest: str | Path, frame: pd.DataFrame, chunk: int = 4096) -> None:
    """A CSV of text columns (ids, labels) then probability columns: with MANY_PROBS or more,
    their text is made by probs_text a chunk of rows at a time (pandas formats float by float
    in Python); otherwise, or when a text cell holds a line break, as pandas writes it."""
    floats = [pd.api.types.is_float_dtype(frame[c]) for c in frame.columns]
    lead = floats.index(True) if True in floats else len(floats)
    few = len(floats) - lead < MANY_PROBS or not all(floats[lead:])
    heads = (
        []
        if lead == 0 or few
        else frame.iloc[:, :lead]
        .to_csv(header=False, index=False, lineterminator="\n")
        .split("\n")[:-1]
    )
    if lead == 0 or few or len(heads) != len(frame):  # len: a line break inside a text cell
        write_csv(dest, frame)
        return
    values = frame.iloc[:, lead:].to_numpy()
    with atomic_path(dest) as tmp, open(tmp, "wb") as f:
        f.write(frame.iloc[:0].to_csv(index=False, lineterminator="\n").encode())
        for start in range(0, len(frame), chunk):
            text = probs_text(values[start : start + chunk])
            cells = np.concatenate([text, np.full((*text.shape[:2], 1), ord(","), np.uint8)], 2)
            cells[:, -1, -1] = ord("\n")
            rows = cells.reshape(len(cells), -1)
            lines = zip(heads[start : start + chunk], rows, strict=True)
            f.write(b"".join(h.encode() + b"," + r.tobytes() for h, r in lines))
