"""Operating-system failures a user fixes (a full disk, a file deleted by hand, a denied
permission): one plain line naming the path and what to do, not the wording meant for bugs.

`python -m pipeline` (and so the warm server's child, which runs the same `main`) prints these
for any exception whose cause chain holds such an OSError. Standard library only: the warm
client imports this before any stage.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from pathlib import Path

FULL = (errno.ENOSPC, errno.EDQUOT)
DENIED = (errno.EACCES, errno.EPERM, errno.EROFS)


def os_failure(e: BaseException, stage: str) -> str | None:
    """One line for a full disk, a missing file or a denied permission anywhere in `e`'s chain;
    None for anything else (a bug)."""
    err = os_cause(e)
    if err is None:
        return None
    path = shown(err.filename) if err.filename is not None else None
    if err.errno in FULL:
        return full_disk(err.errno, path, stage)
    if path is None:
        return None
    if err.errno == errno.ENOENT:
        return f"{path}: missing (deleted?); {rebuild(path)}"
    why = "read-only file system" if err.errno == errno.EROFS else "permission denied"
    return (
        f"{path}: {why} ({stage} reads or writes it); give this user access to it (`ls -l "
        f"{path}`, `chmod u+rw`) or run where it can write, then rerun {stage}"
    )


def os_cause(e: BaseException | None) -> OSError | None:
    while e is not None:
        if isinstance(e, OSError) and e.errno in (*FULL, *DENIED, errno.ENOENT):
            return e
        e = e.__cause__ or e.__context__
    return None


def shown(filename: str | bytes | int) -> str:
    """A path relative to the project folder when it is inside it; an atomic write's temporary
    sibling (`.folds.csv.k2j4.tmp`, `.final.x8a1.tmp/oof.csv`: pipeline/files.py) as the
    output it was for."""
    path = Path(os.fsdecode(filename) if not isinstance(filename, int) else str(filename))
    path = Path(*(re.sub(r"^\.(.+)\.[^.]+\.tmp$", r"\1", part) for part in path.parts))
    with contextlib.suppress(ValueError):
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    return str(path)


def full_disk(code: int, path: str | None, stage: str) -> str:
    """The output that did not fit, the space left there, and the space it needs if known."""
    where = Path(path) if path else Path.cwd()
    probe = next(p for p in (where, *where.resolve().parents) if p.exists())
    free = shutil.disk_usage(probe).free
    last = size(where) if path and where.exists() else 0  # the output it was replacing
    need = f", about {human(last)} needed (the size of the {path} it replaces)" if last else ""
    return (
        f"{os.strerror(code).lower()} writing {path or f'under {where}'}: {human(free)} free on "
        f"its filesystem{need}; free some space (or move the project to a larger disk), then "
        f"rerun {stage}"
    )


def size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def rebuild(path: str) -> str:
    """What brings a missing file back: the dvc.yaml stage whose output holds it."""
    stage = producer(path)
    if stage is None:
        return "check the path, or rerun the stage that writes it (`dvc repro` rebuilds it)"
    return (
        f"it is an output of stage {stage}: rerun `dvc repro` (or `dvc repro {stage}`), which "
        "rebuilds or restores it"
    )


def producer(path: str) -> str | None:
    """The dvc.yaml stage (as `dvc repro` names it: train@resnet10t-0) whose outputs hold path."""
    try:
        import yaml  # here: only on a failure that names a file

        stages = yaml.safe_load(Path("dvc.yaml").read_text())["stages"]
    except (OSError, ValueError, KeyError, TypeError, ImportError):
        return None
    for name, stage in stages.items():
        for out in outputs(stage):
            m = re.match(out_pattern(out), path)
            if m:
                keys = list(stage.get("matrix", {}))
                if keys and all(k in m.groupdict() for k in keys):
                    return f"{name}@" + "-".join(m.group(k) for k in keys)
                return name
    return None


def out_pattern(out: str) -> str:
    """dvc.yaml's `models/${item.model}/fold${item.fold}` as a regex of that path or below."""
    parts = re.split(r"(\$\{[^}]*\})", out)
    item = re.compile(r"\$\{item\.(\w+)\}")
    return "".join(
        f"(?P<{m.group(1)}>[^/]+)" if (m := item.fullmatch(p)) else
        "[^/]+" if p.startswith("${") else re.escape(p)
        for p in parts
    ) + "(/|$)"  # fmt: skip


def outputs(stage: dict) -> list[str]:
    outs = [*stage.get("outs", []), *stage.get("metrics", []), *stage.get("plots", [])]
    return [o if isinstance(o, str) else next(iter(o)) for o in outs]
