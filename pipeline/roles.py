"""Teachers and students run the same train and predict stages; only their folders differ.

Every teacher backbone has one student per fold, in folders named by the teacher
(students/models/TEACHER/foldK); its backbone is the teacher's, or the one pseudo.backbones maps
the teacher to (Params.students()), so dvc.yaml fans both out over train.backbones.

A student folder holding only `skipped.json` was written with `pseudo.enabled: false`: no student
trained, and the final ensemble takes the teachers. Those skip outputs are written before torch
is loaded (`skip_without_torch`), so a round that is off costs DVC a second per stage, not ten.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from pipeline.files import atomic_dir, read_json, write_json
from pipeline.params import load_params

SKIPPED = "skipped.json"
PLAIN = "plain"  # in a model folder: the train stage's predictions without TTA, for predict
DISABLED = "pseudo.enabled is false: the submission comes from the teachers"


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


def skipped(folder: Path) -> str | None:
    """Why a student's folder holds no model, or None when it does."""
    marker = folder / SKIPPED
    return read_json(marker)["skipped"] if marker.exists() else None


def write_skips(stage: str, name: str, fold: int, why: str) -> None:
    """A skipped student's DVC outputs of `stage` (train or predict), holding only the reason."""
    if stage == "train":
        with atomic_dir(STUDENT.models / name / f"fold{fold}") as tmp:
            write_json(tmp / SKIPPED, {"skipped": why})
        with atomic_dir(STUDENT.live / name / f"fold{fold}") as tmp:
            (tmp / "plots").mkdir()  # declared in dvc.yaml: there, and empty
            write_json(tmp / "metrics.json", {"skipped": why})
    else:
        with atomic_dir(STUDENT.preds / name / f"fold{fold}") as tmp:
            write_json(tmp / SKIPPED, {"skipped": why})
    print(f"{stage}: student {name} fold {fold} skipped: {why}")


def skip_without_torch(stage: str, argv: list[str]) -> bool:
    """`train`/`predict --student` with pseudo.enabled false: write the skip outputs, True."""
    if stage not in ("train", "predict") or "--student" not in argv:
        return False
    ap = argparse.ArgumentParser(prog=f"python -m pipeline {stage}")  # as the stage's own:
    ap.add_argument("--model", required=True)  # a usage error exits 2 before anything runs
    ap.add_argument("--fold", type=int, required=True)
    ap.add_argument("--student", action="store_true")
    a = ap.parse_args(argv)
    if load_params().pseudo.enabled:
        return False
    write_skips(stage, a.model, a.fold, DISABLED)
    return True
