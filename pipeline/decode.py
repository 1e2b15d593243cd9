"""Every image file decoded once: the check prepare and extra make before anything is written,
and the resize-once cache they save."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
from PIL import UnidentifiedImageError

from pipeline.files import PipelineError
from pipeline.index import load_image, resize
from pipeline.progress import progress


def decode_all(
    paths: list[str], size: int | None, mode: str = "squish", stage: str = "prepare"
) -> tuple[np.ndarray | None, list[str], str]:
    """Open every image once; return the stack resized as `mode` says (if size), the unreadable
    files and the sha256 of every file's bytes in order (training's resume key)."""
    bad, stack, h = [], [], hashlib.sha256()
    for p in progress(paths, len(paths), f"{stage}: decoding images", "image"):
        data = Path(p).read_bytes()
        h.update(len(data).to_bytes(8, "little") + data)
        if not data:
            bad.append(f"{p} (empty file: 0 bytes)")
            continue
        try:
            img = load_image(io.BytesIO(data))
        except UnidentifiedImageError:
            bad.append(f"{p} (not an image format PIL can read)")
            continue
        except Exception as e:  # PIL raises many types for broken files; all mean "unreadable"
            bad.append(f"{p} ({type(e).__name__}: {e})")
            continue
        if size:
            stack.append(resize(img, size, mode))
    return (np.stack(stack) if size and not bad else None), bad, h.hexdigest()


def unreadable(bad: list[str], what: str = "") -> PipelineError:
    """The error naming the first 20 unreadable files (and how many more), `what` before it."""
    listed = "\n  ".join(bad[:20])
    more = f"\n  … and {len(bad) - 20} more" if len(bad) > 20 else ""
    return PipelineError(f"{what}{len(bad)} unreadable image(s):\n  {listed}{more}")
