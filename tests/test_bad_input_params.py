"""Params refused before any work starts, the students following train.backbones, the kernel
predicting as predict does, steps counted one way, and seeds that never collide or drift on
resume (issue 20, items 7, 14, 16 and 17)."""

from __future__ import annotations

import json
import random
import re
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml
from accelerate import Accelerator

from pipeline import batches, kernel, roles, specs
from pipeline.params import parse_params
from pipeline.preds import has_preds
from pipeline.roles import STUDENT
from pipeline.stages import ensemble, predict, train
from tests import test_bad_input as matrix
from tests.conftest import tiny_params
from tests.test_bad_input import Case
from tests.test_pseudo import teach
from tests.test_reliability import interrupted_after_first_epoch


def params(over: dict):
    return lambda raw: over


# --- item 7: every value the params check can judge, refused by name before any stage works --

PARAMS_CASES = [
    Case("no backbone", params({"train": {"backbones": []}}),
         r"key 'train\.backbones': needs at least one timm model name"),
    Case("a backbone twice", params({"train": {"backbones": ["resnet10t", "resnet10t"]}}),
         r"key 'train\.backbones': lists \['resnet10t'\] twice"),
    Case("mean of two channels", params({"model": {"mean": [0.5, 0.5]}}),
         r"key 'model\.mean': needs 3 values, one per RGB channel.*\(got \[0\.5, 0\.5\]\)"),
    Case("std with a zero", params({"model": {"std": [0.2, 0.0, 0.2]}}),
         r"key 'model\.std': needs 3 values.*above 0"),
    Case("mean in 0-255", params({"model": {"mean": [124, 116, 104]}}),
         r"key 'model\.mean': .*fraction of 255.*\[0\.485, 0\.456, 0\.406\]"),
    Case("no fold", params({"base": {"folds": []}}), r"key 'base\.folds': .*K >= 2"),
    Case("a fold twice", params({"base": {"folds": [0, 1, 1]}}),
         r"key 'base\.folds': .*each once \(got \[0, 1, 1\]\)"),
    Case("negative seed", params({"base": {"seed": -1}}),
         r"key 'base\.seed'.*greater than or equal to 0 \(got -1\)"),
    Case("students listed the old way", params({"pseudo": {"backbones": ["resnet10t"]}}),
         r"key 'pseudo\.backbones': is null .*following train\.backbones.*not a list"),
    Case("a student of no teacher", params({"pseudo": {"backbones": {"resnet18": "resnet34"}}}),
         r"pseudo\.backbones maps \['resnet18'\], not in train\.backbones"),
    Case("a refined teacher of another backbone",
         params({"pseudo": {"backbones": {"resnet10t": "resnet18"}}}),
         r"pseudo\.init: teacher refines each teacher's own backbone.*pseudo\.init: scratch"),
    Case("two scratch students of one backbone",
         params({"train": {"backbones": ["resnet10t", "test_resnet"]},
                 "pseudo": {"init": "scratch", "backbones": {"resnet10t": "test_resnet"}}}),
         r"pseudo\.backbones: two teachers' students are both test_resnet"),
    Case("more rounds than dvc.yaml defines", params({"pseudo": {"rounds": 4}}),
         r"key 'pseudo\.rounds'.*less than or equal to 3 \(got 4\)"),
    Case("rounds from the leaking ensemble",
         params({"pseudo": {"rounds": 2, "source": "ensemble"}}),
         r"pseudo\.rounds > 1 labels each round from the last round's students.*source: fold"),
    Case("extra images with the ensemble's labels",
         params({"pseudo": {"extra": "pool", "source": "ensemble"}}),
         r"pseudo\.extra's images are labelled by each fold's teachers; use pseudo\.source: fold"),
    Case("weights per backbone, one missing",
         params({"train": {"backbones": ["resnet10t", "test_resnet"]},
                 "model": {"pretrained": {"resnet10t": True}}}),
         r"model\.pretrained maps each backbone trained to its weights .*\['test_resnet'\] "
         r"missing; the backbones trained: \['resnet10t', 'test_resnet'\]"),
    Case("weights per backbone, a typo",
         params({"model": {"pretrained": {"resnet10t": True, "resnet10": False}}}),
         r"model\.pretrained maps .*: \['resnet10'\] not a backbone"),
    Case("weights for a scratch student missing",
         params({"model": {"pretrained": {"resnet10t": True}},
                 "pseudo": {"init": "scratch", "backbones": {"resnet10t": "test_resnet"}}}),
         r"model\.pretrained maps .*\['test_resnet'\] missing; the backbones trained: "
         r"\['resnet10t', 'test_resnet'\]"),
]  # fmt: skip


@pytest.mark.parametrize("case", PARAMS_CASES, ids=[c.name for c in PARAMS_CASES])
def test_bad_params_are_refused_by_name(case: Case, tmp_path, monkeypatch, capsys):
    matrix.test_bad_input(case, tmp_path, monkeypatch, capsys)  # exit 1, one line, nothing written


def test_dvc_repro_refuses_bad_params_at_its_first_stage(project):
    """`dvc repro` stops at download, the first stage, before any data is written."""
    for over, key in (
        ({"train": {"backbones": []}}, "train.backbones"),
        ({"model": {"mean": [0.5, 0.5]}}, "model.mean"),
    ):
        good = project.params()
        project.set_params(over)
        res = project.run(["dvc", "repro"], check=False)
        assert res.returncode != 0
        assert re.search(rf"error: params\.yaml: key '{re.escape(key)}'", res.stderr), res.stderr
        assert "Traceback" not in res.stderr and "Running stage 'prepare'" not in res.stdout
        assert not (project.path / "data").exists()
        (project.path / "params.yaml").write_text(yaml.safe_dump(good))


@pytest.mark.slow
def test_editing_train_backbones_alone_reruns_every_stage_with_its_students(project):
    """The demo's params name test_resnet; the tiny project edits train.backbones alone (to
    resnet10t): the students follow it, in folders named by their teachers."""
    assert project.params()["pseudo"]["backbones"] is None
    assert (project.params()["train"]["backbones"], project.params()["pseudo"]["enabled"]) == (
        ["resnet10t"], True)  # fmt: skip
    dag = project.run(["dvc", "dag", "--md"]).stdout
    assert "train_student@resnet10t-0" in dag and "predict_student@resnet10t-1" in dag
    assert "test_resnet" not in dag
    project.run(["dvc", "repro"])
    for k in (0, 1):
        info = json.loads(
            (project.path / f"students/models/resnet10t/fold{k}/model.json").read_text()
        )
        assert (info["name"], info["role"]) == ("resnet10t", "student")
    final = json.loads((project.path / "metrics/final.json").read_text())
    assert final["submitted"] == "student resnet10t"
    assert (project.path / "submissions/submission.csv").exists()
    assert project.changed() == {}


def test_a_scratch_student_of_another_backbone_lives_in_its_teachers_folder(workdir):
    teach(workdir)
    other = {"threshold": 0.0, "init": "scratch", "backbones": {"resnet10t": "test_resnet"}}
    p = parse_params(tiny_params({"pseudo": other}))
    assert p.students() == {"resnet10t": "test_resnet"}
    train.run(p, "resnet10t", 1, student=True)
    predict.run(p, "resnet10t", 1, STUDENT)
    folder = workdir / "students/models/resnet10t/fold1"
    assert json.loads((folder / "model.json").read_text())["name"] == "test_resnet"
    assert has_preds(workdir / "students/preds/resnet10t/fold1", "test")
    members = ensemble.final_members(p)
    assert members == {"student test_resnet of resnet10t": STUDENT.preds / "resnet10t"}
    with pytest.raises(Exception, match=r"--model test_resnet --student: a student is named by"):
        specs.backbone(p, "test_resnet", True)


# --- item 14: the exported kernel's probabilities are predict's -----------------------------


@pytest.mark.parametrize("views", [["hflip"], []])
def test_kernel_predicts_what_predict_wrote(workdir, views):
    """Both load the model through inference.load_model (channels_last) and run the same TTA;
    on the same CPU the float operations are the same, so the files are equal byte for byte
    (without views predict takes the train stage's plain predictions, also channels_last)."""
    p = parse_params(tiny_params({"tta": {"views": views}}))
    train.run(p, "resnet10t", 0)
    predict.run(p, "resnet10t", 0)
    preds = workdir / "preds/resnet10t/fold0"
    beta = json.loads((preds / "tta.json").read_text())["beta"]
    entry = {"dir": "models/resnet10t/fold0", "beta": beta}
    kernel.fold_test(workdir, entry, train.read_index(), p, workdir / "kernel_out")
    for name in ("test.npy", "test.json"):
        assert (workdir / "kernel_out" / name).read_bytes() == (preds / name).read_bytes()


# --- item 16: the step-count warning and batch_size: auto count steps one way ----------------


def test_epoch_steps_are_the_loaders_steps():
    p = parse_params(tiny_params({}))
    for rows, batch, ratio in ((3660, 64, 3.0), (100, 8, 2.0), (97, 16, 4.0), (3660, 64, None),
                               (7, 16, None), (49, 16, 3.0)):  # fmt: skip
        pseudo = None if ratio is None else pd.DataFrame({"id": [f"te{i}" for i in range(50)]})
        spec = specs.Spec(STUDENT if ratio else roles.TEACHER, 0, 3, 0.002, None, pseudo,
                          p.pseudo.model_copy(update={"ratio": ratio or 3.0}))  # fmt: skip
        d = fold(rows, batch)
        made = batches.epoch_batches(p, spec, d, 0, 0, 3)
        steps = batches.epoch_steps(rows, batch, ratio, pseudo=50 if ratio else 0)
        assert steps == len(made), (rows, batch, ratio)


def fold(rows: int, batch: int) -> batches.FoldData:
    return batches.FoldData(None, "single_label", np.arange(rows), np.arange(0),
                            np.zeros(rows, int), 32, [32], batch, {}, 0, False)  # fmt: skip


def test_a_scratch_student_at_ratio_3_is_not_warned_after_auto_chose_its_batch(capsys):
    """3660 labeled rows, 3 epochs from scratch at 1:3: auto picks 64 (48 labeled + 16 pseudo, 77
    steps an epoch, 231 in all); the warning once counted 3660 // 64 = 57 steps, 171 in all."""
    p = parse_params(tiny_params({"pseudo": {"init": "scratch", "ratio": 3}}))
    assert batches.batch_size("auto", 3660, ratio=3, epochs=3) == 64
    assert batches.epoch_steps(3660, 64, 3) == 77 and batches.epoch_steps(3660, 64) == 57
    pseudo = pd.DataFrame({"id": ["te0"]})
    spec = specs.Spec(STUDENT, 0, 3, 0.002, None, pseudo, p.pseudo)
    acc = Accelerator(cpu=True)
    batches.check_steps(spec, fold(3660, 64), acc)
    assert "warning" not in capsys.readouterr().out
    batches.check_steps(spec, fold(2000, 64), acc)  # 42 steps an epoch, 126 in all
    out = capsys.readouterr().out
    assert "warning: 126 optimizer steps in all (42 per epoch at batch 64 (48 labeled)" in out
    teacher = specs.Spec(roles.TEACHER, 0, 3, 0.004)
    batches.check_steps(teacher, fold(2000, 64), acc)  # 31 steps of 64 an epoch
    assert "warning: 93 optimizer steps in all (31 per epoch at batch 64 for 2000" in (
        capsys.readouterr().out)  # fmt: skip


# --- item 17: seeds ------------------------------------------------------------------------


def test_run_seeds_never_collide():
    runs = [(s, k, r) for s in range(200) for k in range(10) for r in ("teacher", "student")]
    seeds = {batches.run_seed(s, k, r, "init") for s, k, r in runs}
    assert len(seeds) == len(runs)  # seed 42 fold 1 is no longer seed 43 fold 0
    streams = {batches.run_seed(42, 1, "teacher", st, e) for st in batches.SEED_STREAMS
               for e in range(50)}  # fmt: skip
    assert len(streams) == len(batches.SEED_STREAMS) * 50


def test_a_resumed_run_draws_what_an_unkilled_run_draws(workdir, monkeypatch):
    """Each epoch's dataset draws from Python's `random` (as an augmentation of one's own
    would): the resumed run's draws in epochs 2 and 3 equal the unkilled run's, gauss()'s
    spare value included."""
    draws: list[tuple[int, float]] = []
    real = batches.epoch_dataset

    def drawing(p, spec, d, fold, epoch, total):
        draws.append((epoch, random.gauss(0.0, 1.0)))
        return real(p, spec, d, fold, epoch, total)

    monkeypatch.setattr(batches, "epoch_dataset", drawing)
    p = parse_params(tiny_params({"train": {"epochs": 3}}))
    train.run(p, "resnet10t", 0)
    unkilled = [x for x in draws if x[0] > 0]
    assert len(unkilled) == 2
    for out in ("models", "dvclive"):
        shutil.rmtree(out)
    draws.clear()
    interrupted_after_first_epoch(p, monkeypatch)
    draws.clear()
    train.run(p, "resnet10t", 0)
    assert [x for x in draws if x[0] > 0] == unkilled


# --- pretrained weights: the head phase and the step floor -------------------------------------


@pytest.mark.parametrize(("pretrained", "head"), [(False, 0), (True, 1), ("w.safetensors", 1)])
def test_head_epochs_auto_fits_a_new_head_first_only_on_pretrained_weights(pretrained, head):
    p = parse_params(tiny_params({"model": {"pretrained": pretrained}, "head": {"epochs": "auto"}}))
    assert p.head_epochs() == head and specs.teacher_spec(p, "resnet10t").head_epochs == head
    assert parse_params(tiny_params({"head": {"epochs": 2}})).head_epochs() == 2


def test_fine_tuning_pretrained_weights_has_no_step_floor(capsys):
    """200 steps in all is a from-scratch rule: 140 images fine-tuned from ImageNet weights train
    at batch 8 today, not at the batch the floor would force, and are not warned."""
    acc = Accelerator(cpu=True)
    for pretrained, warned in ((False, True), (True, False)):
        spec = specs.Spec(roles.TEACHER, 1, 4, 0.004, pretrained=pretrained)
        batches.check_steps(spec, fold(112, 16), acc)  # 7 steps an epoch, 35 in all
        assert ("warning: 35 optimizer steps" in capsys.readouterr().out) is warned
    assert batches.batch_size("auto", 2000, epochs=3) == 24  # from scratch: >= 200 steps in all
    assert batches.batch_size("auto", 2000) == 64  # pretrained: >= 16 steps an epoch is enough
