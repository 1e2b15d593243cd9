"""Where export writes the code-competition bundle, and the digest that names it: upload checks
the notebook it submits was pushed from the current bundle, without export's own imports."""

from __future__ import annotations

from pathlib import Path

from pipeline.files import sha256

OUT = Path("export")


def bundle_digest(out: Path = OUT) -> str:
    """bundle.json's digest: it names every weight file's digest and the blend."""
    return sha256(out / "dataset" / "bundle.json")
