"""Teachers and students run the same train and predict stages; only their folders differ.

Every teacher backbone has one student per fold, in folders named by the teacher
(students/models/TEACHER/foldK); its backbone is the teacher's, or the one pseudo.backbones maps
the teacher to (Params.students()), so dvc.yaml fans both out over train.backbones.

Rounds (`pseudo.rounds`): round 1's students live in students/ and learn from pseudo/; round r's
(r > 1) in rounds/<r>/ (models, preds, dvclive, pseudo), labelled by round r - 1's students of the
same fold and refining them (`init: teacher`). The last round's students are submitted.

A student folder holding only `skipped.json` was written with `pseudo.enabled: false` (or for a
round past `pseudo.rounds`): no student trained, and the final ensemble takes the teachers (or the
last round's students). Those skip outputs are written before torch is loaded
(`skip_without_torch`), so a round that is off costs DVC a second per stage, not ten.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from pipeline.files import PipelineError, atomic_dir, read_json, write_json
from pipeline.params import MAX_ROUNDS, Params, Pseudo, load_params

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
    round: int = 0  # 0: the teachers; r: round r's students


TEACHER = Role("teacher", Path("models"), Path("preds"), Path("dvclive"), Path("checkpoints"))
STUDENT = Role(
    "student",
    Path("students/models"),
    Path("students/preds"),
    Path("students/dvclive"),
    Path("checkpoints/students"),
    1,
)


def student(round_: int = 1) -> Role:
    """Round `round_`'s students."""
    if round_ == 1:
        return STUDENT
    base = Path("rounds") / str(round_)
    return Role(f"student{round_}", base / "models", base / "preds", base / "dvclive",
                Path("checkpoints") / f"round{round_}", round_)  # fmt: skip


def by_name(name: str) -> Role:
    """The role a model.json or an export bundle names: teacher, student, student2, ..."""
    return TEACHER if name == TEACHER.name else student(int(name.removeprefix("student") or 1))


def labeller(round_: int) -> Role:
    """Who labels round `round_`'s test images and whom its students refine (init: teacher)."""
    return TEACHER if round_ == 1 else student(round_ - 1)


def pseudo_dir(round_: int) -> Path:
    """Round `round_`'s pseudolabels (one folder per fold)."""
    return Path("pseudo") if round_ == 1 else Path("rounds") / str(round_) / "pseudo"


def last_student(p: Params) -> Role:
    """The students that are submitted: the last round's."""
    return student(p.pseudo.rounds)


def not_run(ps: Pseudo, round_: int) -> str | None:
    """Why round `round_` trains no student (None: it does)."""
    if not ps.enabled:
        return DISABLED
    if round_ > ps.rounds:
        return f"pseudo.rounds is {ps.rounds}: there is no round {round_}"
    return None


def round_arg(ap: argparse.ArgumentParser) -> None:
    """The `--round R` option of the stages that run per round."""
    ap.add_argument("--round", type=int, default=1, choices=range(1, MAX_ROUNDS + 1),
                    help="the pseudolabel round (students of round 1 by default)")  # fmt: skip


def skipped(folder: Path) -> str | None:
    """Why a student's folder holds no model, or None when it does."""
    marker = folder / SKIPPED
    return read_json(marker)["skipped"] if marker.exists() else None


def write_skips(stage: str, name: str, fold: int, why: str, role: Role = STUDENT) -> None:
    """A skipped student's DVC outputs of `stage` (train or predict), holding only the reason."""
    if stage == "train":
        with atomic_dir(role.models / name / f"fold{fold}") as tmp:
            write_json(tmp / SKIPPED, {"skipped": why})
        with atomic_dir(role.live / name / f"fold{fold}") as tmp:
            (tmp / "plots").mkdir()  # declared in dvc.yaml: there, and empty
            write_json(tmp / "metrics.json", {"skipped": why})
    else:
        with atomic_dir(role.preds / name / f"fold{fold}") as tmp:
            write_json(tmp / SKIPPED, {"skipped": why})
    print(f"{stage}: {role.name} {name} fold {fold} skipped: {why}")


def skip_without_torch(stage: str, argv: list[str]) -> bool:
    """`train`/`predict --student` of a round that does not run (pseudo.enabled false, or past
    pseudo.rounds): write the skip outputs, True."""
    if stage not in ("train", "predict") or "--student" not in argv:
        return False
    a = parse_stage(stage, argv)  # a usage error exits 2 before anything runs
    why = not_run(load_params().pseudo, a.round)
    if why is None:
        return False
    write_skips(stage, a.model, a.fold, why, student(a.round))
    return True


def stage_args(stage: str) -> argparse.ArgumentParser:
    """The command line of train and predict: --model, --fold, --student, --round."""
    ap = argparse.ArgumentParser(prog=f"python -m pipeline {stage}")
    ap.add_argument("--model", required=True)
    ap.add_argument("--fold", type=int, required=True)
    ap.add_argument("--student", action="store_true", help="fold k's student (pseudolabels)")
    round_arg(ap)
    return ap


def parse_stage(stage: str, argv: list[str]) -> argparse.Namespace:
    ap = stage_args(stage)
    a = ap.parse_args(argv)
    if a.round > 1 and not a.student:
        ap.error(f"--round {a.round} is a students' round: add --student")
    return a


def flag_and_params(stage: str, flag: str, what: str, argv: list[str]) -> tuple[bool, Params]:
    """(Whether `--flag` was given, params.yaml): the command line of a stage with one switch."""
    ap = argparse.ArgumentParser(prog=f"python -m pipeline {stage}")
    ap.add_argument(f"--{flag}", action="store_true", help=what)
    return getattr(ap.parse_args(argv), flag), load_params()


# --- what the final ensemble blends ---------------------------------------------------------


def teacher_members(p: Params) -> dict[str, Path]:
    return {f"teacher {n}": TEACHER.preds / n for n in p.train.backbones}


def student_members(p: Params, round_: int) -> dict[str, Path]:
    """Round `round_`'s students, each trained (a skipped one is refused, naming its folder)."""
    role = student(round_)
    students = {  # a student's folder is named by its teacher; its label names its backbone
        f"student {s}" + ("" if s == t else f" of {t}"): role.preds / t
        for t, s in p.students().items()
    }
    for folder in students.values():
        for k in p.base.folds:
            why = skipped(folder / f"fold{k}")
            if why is not None:
                raise PipelineError(f"{folder}/fold{k}: {why}; run `dvc repro` first")
    return students


def final_members(p: Params) -> dict[str, Path]:
    """What the submission blends: the last round's students (+ teachers), or the teachers."""
    teachers = teacher_members(p)
    if not p.pseudo.enabled:
        return teachers
    students = student_members(p, p.pseudo.rounds)
    return {**students, **teachers} if p.pseudo.blend_teachers else students
