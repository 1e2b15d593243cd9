"""Who trains, from what: a teacher's or a student's run (Spec), the student's pseudolabels
checked against what pseudolabel recorded, and the resume key (`fingerprint`: the params
sections and pseudo keys that shape the weights, the data, the inputs and the package's code).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import roles
from pipeline.files import PipelineError, read_json, sha256
from pipeline.index import (
    Index,
    read_index,
    read_pool,
)
from pipeline.params import Params, Pseudo
from pipeline.preds import pred_files, read_probs
from pipeline.roles import TEACHER, Role
from pipeline.shaping import SECTIONS, STUDENT_KEYS, excluded
from pipeline.source import source_chunks


@dataclass(frozen=True)
class Spec:
    """What differs between a teacher's run and a student's; everything else is one path."""

    role: Role
    head_epochs: int
    epochs: int  # of the unfrozen phase
    lr: float | str  # peak LR of the head group, or "auto"
    init: Path | None = None  # weights to start from (the fold's teacher); None: model.pretrained
    pseudo: pd.DataFrame | None = None  # the student's pseudolabels: id, one target per class
    mix: Pseudo | None = None  # ratio, weight and its ramp-up
    files: tuple[Path, ...] = ()  # inputs beyond train.csv and folds.csv in the resume key
    pretrained: bool = False  # starts from pretrained weights (hub or file): fine-tuning
    matched: int = 0  # the control: the student's pseudolabel count, its batches' size and number


def backbone(p: Params, name: str, student: bool) -> str:
    """The timm name to train: `name` for a teacher; for the student in folder `name` (named by
    its teacher), the backbone pseudo.backbones gives it."""
    if not student:
        return name
    if name not in p.students():
        raise PipelineError(
            f"--model {name} --student: a student is named by its teacher, one of "
            f"train.backbones {p.train.backbones}"
        )
    return p.students()[name]


def teacher_spec(p: Params, name: str) -> Spec:
    return Spec(TEACHER, p.head_epochs(name), p.train.epochs, p.train.lr,
                pretrained=p.model.weights(name) is not False)  # fmt: skip


def student_spec(p: Params, name: str, fold: int, round_: int = 1) -> Spec | str:
    """Round `round_`'s student of fold `fold` (in teacher `name`'s folder), or why there is
    none (pseudo.enabled is false, or the round is past pseudo.rounds)."""
    ps, why = p.pseudo, roles.not_run(p.pseudo, round_)
    if why is not None:
        return why
    folder = roles.pseudo_dir(round_) / f"fold{fold}"
    frame, source = read_pseudolabels(folder, read_index(), round_)
    matched = len(frame) if ps.control else 0
    if ps.control:  # the same student, init, epochs, LR and batches; labeled rows only
        frame = frame.iloc[:0]
    init = None
    if ps.init == "teacher":  # round 1: fold k's teacher; round r: round r - 1's student
        init = roles.labeller(round_).models / name / f"fold{fold}" / "model.safetensors"
        check_teacher(init, source["teacher_weights"].get(name), folder, round_)
    arch = backbone(p, name, student=True)
    head = p.head_epochs(arch) if ps.init == "scratch" else 0  # a refined teacher has its head
    files = (folder / "labels.csv", *pred_files(folder, "targets"))
    files = files if init is None else (*files, init)
    return Spec(roles.student(round_), head, ps.epochs, ps.lr, init, frame, ps, files,
                pretrained=p.model.weights(arch) is not False, matched=matched)  # fmt: skip


def read_pseudolabels(folder: Path, index: Index, round_: int = 1) -> tuple[pd.DataFrame, dict]:
    """labels.csv (id, label, confidence), targets.npy (one column per class) and source.json as
    pseudolabel wrote them, checked against the index: one frame, id, label, confidence, classes."""
    labels, source = folder / "labels.csv", folder / "source.json"
    stage = pseudolabel_stage(round_)
    for f in (labels, *pred_files(folder, "targets"), source):
        if not f.exists():
            raise PipelineError(f"{f}: missing; run `dvc repro {stage}` first")
    info = read_json(source)
    if not info.get("enabled") or "teacher_weights" not in info:
        raise PipelineError(f"{source}: not written for this round; run `dvc repro {stage}`")
    frame = pd.read_csv(labels, dtype={"id": str, "label": str}, keep_default_na=False)
    missing = [c for c in ("id", "label", "confidence") if c not in frame.columns]
    if not missing:
        frame = with_targets(frame, folder, index.classes, stage)
    unknown = set(frame["id"]) - set(index.test["id"]) if "id" in frame else set()
    if unknown:  # pseudo.extra's images (data/extra/, read only when needed)
        unknown -= set(read_pool().test["id"])
    if missing or unknown:
        what = (
            f"no column {missing[:3]}"
            if missing
            else f"ids not in the test set or pseudo.extra's images {sorted(unknown)[:3]}"
        )
        raise PipelineError(f"{labels}: {what}; run `dvc repro {stage}`")
    return frame, info


def with_targets(frame: pd.DataFrame, folder: Path, classes: list[str], stage: str) -> pd.DataFrame:
    """labels.csv's rows with targets.npy's class columns beside them (the same ids, in order)."""
    ids, targets = read_probs(folder, "targets", classes)
    if not np.array_equal(ids.to_numpy(), frame["id"].to_numpy()):
        raise PipelineError(
            f"{folder / 'targets.json'}: its ids are not those of {folder / 'labels.csv'}; run "
            f"`dvc repro {stage}`"
        )
    cols = pd.DataFrame(np.asarray(targets), columns=classes, index=frame.index)
    return pd.concat([frame[["id", "label", "confidence"]], cols], axis=1)


def pseudolabel_stage(round_: int) -> str:
    """dvc.yaml's name of round `round_`'s pseudolabel stage."""
    return "pseudolabel" if round_ == 1 else f"pseudolabel_{round_}"


def check_teacher(weights: Path, recorded: str | None, folder: Path, round_: int = 1) -> None:
    """The teacher a student refines must be the one that made its pseudolabels (in round r > 1:
    round r - 1's student)."""
    if not weights.exists():
        who = "the fold's teacher" if round_ == 1 else f"round {round_ - 1}'s student"
        raise PipelineError(f"{weights}: missing; pseudo.init: teacher needs {who}")
    if recorded != sha256(weights):
        raise PipelineError(
            f"{weights} is not the teacher recorded in {folder}/source.json; run `dvc repro` "
            "to relabel"
        )


def fingerprint(p: Params, name: str, fold: int, *files: Path, student: bool = False) -> dict:
    """What shapes this run, part by part (params, data, weights, code): a checkpoint resumes
    only when every part matches, and a mismatch names the parts that differ."""
    sections = {k: getattr(p, k).model_dump(exclude=set(excluded(k, student))) for k in SECTIONS}
    if student:  # the selection keys act through the labels file, which is hashed
        sections["pseudo"] = p.pseudo.model_dump(include=set(STUDENT_KEYS))
    params = json.dumps([sections, p.competition.metric, name, fold], sort_keys=True)
    weights = p.model.weights(name)
    return {
        "params": _digest([params.encode()]),
        # train.csv, meta.json (it holds the sha256 of every image file and the cache size),
        # folds.csv and a student's pseudolabels and teacher
        "data": _digest(f.read_bytes() for f in files),
        "weights": sha256(weights) if isinstance(weights, str) else str(weights),
        "code": _digest(source_chunks()),  # the package, every module
    }


def _digest(chunks) -> str:
    h = hashlib.sha256()
    for c in chunks:
        h.update(len(c).to_bytes(8, "little") + c)
    return h.hexdigest()[:16]
