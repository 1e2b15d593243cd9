"""Teachers and students run the same train and predict stages; only their folders differ.

A student folder holding only `skipped.json` was written with `pseudo.enabled: false`: no student
trained, and the final ensemble takes the teachers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.files import read_json, write_json

SKIPPED = "skipped.json"


@dataclass(frozen=True)
class Role:
    name: str  # teacher | student
    models: Path
    preds: Path
    live: Path  # dvclive folders
    ckpt: Path  # resume checkpoints, outside DVC's outputs


TEACHER = Role("teacher", Path("models"), Path("preds"), Path("dvclive"), Path("checkpoints"))
STUDENT = Role(
    "student",
    Path("students/models"),
    Path("students/preds"),
    Path("students/dvclive"),
    Path("checkpoints/students"),
)


def write_skipped(folder: Path, why: str) -> None:
    write_json(folder / SKIPPED, {"skipped": why})


def skipped(folder: Path) -> str | None:
    """Why a student's folder holds no model, or None when it does."""
    marker = folder / SKIPPED
    return read_json(marker)["skipped"] if marker.exists() else None
