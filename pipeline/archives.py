"""Safe archive extraction: every entry is checked to stay inside the target folder before
anything is written; a truncated or corrupt archive raises a message naming it.

Public functions (kaggle.py re-exports the first two, which the stages call through it):

- `safe_extract(archive, dest)`: extracts one archive (zip, tar, tar.gz/bz2/xz, 7z) into `dest`.
- `extract_nested(root)`: extracts every archive found under `root` in place (train.zip ->
  train/, planet's .tar.7z included), a few levels deep, and deletes the extracted archives.
- `archive_files(archive)`: the names of the files an archive holds, as safe_extract writes them.

Try it by hand:
    python -c "from pipeline.archives import safe_extract as s; s('train.zip', 'out')"
"""

from __future__ import annotations

import gzip
import lzma
import os
import posixpath
import re
import shutil
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from pipeline.files import PipelineError

NESTED_DEPTH = 3  # archives inside archives inside archives; deeper is left alone

_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
_ARCHIVE_SUFFIXES = (".zip", ".7z", *_TAR_SUFFIXES)


# ---- nested archives -------------------------------------------------------------------------


def extract_nested(root: Path) -> None:
    """Extract every archive under `root` in place (train.zip -> train/), a few levels deep."""
    for _ in range(NESTED_DEPTH):
        nested = sorted(p for p in root.rglob("*") if p.is_file() and _is_archive(p))
        if not nested:
            return
        for archive in nested:
            _extract_nested(archive)


def _extract_nested(archive: Path) -> None:
    """Extract beside the archive: a lone entry keeps its name (`train.zip` holding `train/`
    gives `train/`, `train.csv.zip` gives `train.csv`); several go into a folder named after it.
    Where that already exists (`train.zip` shipped beside its extracted `train/`), what is there
    is used and only the archive's files it lacks are extracted into it.
    """
    names = [PurePosixPath(n) for n in archive_files(archive)]
    lone = len({n.parts[0] for n in names}) == 1
    base = archive.parent if lone else archive.parent / _archive_stem(archive.name)
    if not os.path.lexists(base / names[0].parts[0] if lone else base):
        _extract_into(archive, base, lone)
    else:
        missing = [n for n in names if not os.path.lexists(base / n)]
        if missing:
            _extract_into(archive, base, lone, only=missing)
        print(f"{archive.name}: {len(names) - len(missing)} of its {len(names)} files were "
              f"extracted already; {len(missing)} more extracted")  # fmt: skip
    archive.unlink()


def _extract_into(archive: Path, base: Path, lone: bool, only: list[PurePosixPath] | None = None):
    """Extract through a staging folder, then move everything (or the files `only`) to `base`."""
    staging = Path(tempfile.mkdtemp(prefix=".extract.", dir=archive.parent))
    try:
        safe_extract(archive, staging)
        if only is None and lone:
            entry = next(staging.iterdir())
            entry.rename(base / entry.name)
        elif only is None:
            staging.rename(base)
        for name in only or []:
            try:
                (base / name.parent).mkdir(parents=True, exist_ok=True)
            except (FileExistsError, NotADirectoryError):
                raise PipelineError(
                    f"cannot extract {name} of {archive.name}: a file stands where its folder "
                    f"{base / name.parent} goes; remove one of the two"
                ) from None
            (staging / name).rename(base / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def archive_files(archive: Path) -> list[str]:
    """The names of the files (not folders) an archive holds, as safe_extract writes them."""
    lowered = archive.name.lower()
    try:
        if lowered.endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                names = [i.filename for i in zf.infolist() if not i.is_dir()]
        elif lowered.endswith(_TAR_SUFFIXES):
            with tarfile.open(archive) as tf:
                names = [m.name for m in tf.getmembers() if not m.isdir()]
        else:
            names = _7z_files(archive)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError,
            gzip.BadGzipFile) as e:  # fmt: skip
        raise _corrupt(archive, e) from e
    _check_names(archive, names)
    return [PurePosixPath(n.replace("\\", "/")).as_posix() for n in names]


def _7z_files(archive: Path) -> list[str]:
    py7zr = _py7zr(archive)
    try:
        with py7zr.SevenZipFile(archive, mode="r") as zf:
            return [f.filename for f in zf.list() if not f.is_directory]
    except py7zr.exceptions.ArchiveError as e:
        raise _corrupt(archive, e) from e


def _is_archive(path: Path) -> bool:
    return path.name.lower().endswith(_ARCHIVE_SUFFIXES)


def _archive_stem(name: str) -> str:
    """`train-jpg.tar.7z` -> `train-jpg`, `train.zip` -> `train`."""
    lowered = name.lower()
    while True:
        for suffix in sorted(_ARCHIVE_SUFFIXES, key=len, reverse=True):
            if lowered.endswith(suffix) and len(lowered) > len(suffix):
                name, lowered = name[: -len(suffix)], lowered[: -len(suffix)]
                break
        else:
            return name


# ---- safe extraction -------------------------------------------------------------------------


def safe_extract(archive: Path, dest: Path) -> None:
    """Extract `archive` into `dest`; every entry is checked before anything is written."""
    archive, dest = Path(archive), Path(dest)
    lowered = archive.name.lower()
    dest.mkdir(parents=True, exist_ok=True)
    if lowered.endswith(".zip"):
        _extract_zip(archive, dest)
    elif lowered.endswith(_TAR_SUFFIXES):
        _extract_tar(archive, dest)
    elif lowered.endswith(".7z"):
        _extract_7z(archive, dest)
    else:
        raise PipelineError(f"{archive.name}: not an archive format this pipeline extracts")


def _check_names(archive: Path, names: Iterable[str]) -> None:
    """Refuse absolute paths and paths that climb out of the target folder (zip-slip)."""
    for name in names:
        posix = name.replace("\\", "/")
        parts = PurePosixPath(posix).parts
        if posix.startswith("/") or re.match(r"^[A-Za-z]:", posix) or ".." in parts:
            raise PipelineError(
                f"refusing to extract {archive.name}: entry '{name}' would be written outside "
                "the target folder; the archive is unsafe or corrupt"
            )


def _escapes(link_target: str) -> bool:
    normal = posixpath.normpath(link_target.replace("\\", "/"))
    return normal.startswith("/") or normal == ".." or normal.startswith("../")


def _corrupt(archive: Path, err: BaseException) -> PipelineError:
    return PipelineError(
        f"{archive.name} is truncated or corrupt ({type(err).__name__}: {err}); replace it with "
        "a complete copy (a Kaggle download: rerun `python -m pipeline download --force`)"
    )


def _extract_zip(archive: Path, dest: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            _check_names(archive, zf.namelist())
            zf.extractall(dest)
    except (zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError) as e:
        raise _corrupt(archive, e) from e


def _extract_tar(archive: Path, dest: Path) -> None:
    try:
        with tarfile.open(archive) as tf:
            members = tf.getmembers()  # reads the whole index: a truncated tar fails here
            _check_names(archive, (m.name for m in members))
            for m in members:
                # A symlink's target is relative to its folder, a hard link's to the root.
                if m.issym() and _escapes(posixpath.join(posixpath.dirname(m.name), m.linkname)):
                    raise PipelineError(
                        f"refusing to extract {archive.name}: link '{m.name}' points outside "
                        "the target folder"
                    )
                if m.islnk():
                    _check_names(archive, [m.linkname])
                if not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
                    raise PipelineError(
                        f"refusing to extract {archive.name}: '{m.name}' is special"
                    )
            # The "data" filter (Python >= 3.11.4/3.10.12) re-checks links as they are created;
            # a chain of links (x -> ., x/y -> ..) passes per-member checks, so without the
            # filter no link is extracted at all.
            if hasattr(tarfile, "data_filter"):
                tf.extractall(dest, members=members, filter="data")
            elif any(m.issym() or m.islnk() for m in members):
                raise PipelineError(
                    f"refusing to extract {archive.name}: it holds links, which this Python "
                    "cannot extract safely (needs Python >= 3.11.4 or 3.10.12)"
                )
            else:
                tf.extractall(dest, members=members)
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile) as e:
        if isinstance(e, getattr(tarfile, "FilterError", ())):
            raise PipelineError(f"refusing to extract {archive.name}: {e}") from e
        raise _corrupt(archive, e) from e


def _py7zr(archive: Path):
    try:
        import py7zr  # optional: only cifar-10 / planet style competitions ship .7z
    except ImportError as e:
        raise PipelineError(
            f"{archive.name} is a 7z archive: run `pip install py7zr` to extract it"
        ) from e
    return py7zr


def _extract_7z(archive: Path, dest: Path) -> None:
    py7zr = _py7zr(archive)
    try:
        with py7zr.SevenZipFile(archive, mode="r") as zf:
            _check_names(archive, zf.getnames())
            links = [f.filename for f in zf.list() if f.is_symlink]
            if links:  # py7zr does not check where links point: none are extracted
                raise PipelineError(f"refusing to extract {archive.name}: link '{links[0]}'")
            zf.extractall(path=dest)
    except (py7zr.exceptions.ArchiveError, EOFError, lzma.LZMAError) as e:
        raise _corrupt(archive, e) from e
