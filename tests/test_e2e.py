"""End to end: `dvc repro` on a tiny generated competition, in a temporary copy of the project."""

import json

import pandas as pd
import pytest

from pipeline.preds import read_preds
from tests.code_competition import check_code_competition
from tests.test_plots import check_plots_page

pytestmark = pytest.mark.slow


def ran(result) -> list[str]:
    """The stages `dvc repro` ran, less `source` (it lists the data's source on every run)."""
    names = [line.split("'")[1] for line in result.stdout.splitlines()
             if line.startswith("Running stage")]  # fmt: skip
    return [n for n in names if n != "source"]


TEACHERS = {"train@resnet10t-0", "train@resnet10t-1", "predict@resnet10t-0", "ensemble"}
ROUND = {
    "pseudolabel",
    "train_student@resnet10t-0",
    "train_student@resnet10t-1",
    "predict_student@resnet10t-1",
    "ensemble_final",
    "submit",
}


RECIPE = {  # two backbones, SGDR with a snapshot per cycle (epochs 1 and 3), fitted weights,
    # the peak LR from an LR range test
    "train": {
        "backbones": ["resnet10t", "test_resnet"],
        "schedule": "sgdr",
        "epochs": 3,
        "lr": "auto",
    },
    "lr_find": {"steps": 20},
    "ensemble": {"weights": "fit", "snapshots": True},
    "tta": {"views": ["hflip", "shift"], "beta": "auto"},
}


def test_dvc_repro_end_to_end(project, tiny_comp, tmp_path):
    project.set_params(RECIPE)
    first = project.run(["dvc", "repro"])
    assert [s for s in ran(first) if s != "extra"][:3] == ["download", "prepare", "folds"]
    raw = project.path / "data/raw/train.csv"  # a local folder: linked, and DVC keeps the links
    assert raw.is_symlink() and raw.resolve() == (tiny_comp / "train.csv").resolve()
    order = ran(first)
    assert TEACHERS | ROUND | {"upload", "diagnose", "report"} <= set(order)
    # teacher -> pseudolabel -> student -> final ensemble -> submit
    steps = ["ensemble", "pseudolabel", "train_student@resnet10t-0", "ensemble_final", "submit"]
    assert [order.index(s) for s in steps] == sorted(order.index(s) for s in steps)
    assert (project.path / "students/models/resnet10t/fold0/model.safetensors").exists()
    final = json.loads((project.path / "metrics/final.json").read_text())
    assert final["submitted"] == "student resnet10t, student test_resnet"  # one per teacher
    assert {"teacher_cv", "student_cv", "student_minus_teacher"} <= set(final)
    summary = project.run(["pipeline", "summary"]).stdout
    assert "teachers" in summary and "students" in summary
    assert "WARNING" not in summary

    sub = pd.read_csv(project.path / "submissions/submission.csv", dtype=str)
    sample = pd.read_csv(tiny_comp / "sample_submission.csv", dtype=str)
    assert list(sub.columns) == list(sample.columns)
    assert sub["id"].tolist() == sample["id"].tolist()
    assert set(sub["label"]) <= {"cat", "dog", "fox"}
    assert (project.path / "models/resnet10t/fold1/model.safetensors").exists()
    assert "accuracy" in project.run(["dvc", "metrics", "show"]).stdout
    check_plots_page(project.path, project.run)
    check_blend_report(project)
    check_code_competition(project, tiny_comp, tmp_path)  # and back to a CSV competition
    project.set_params({"diagnose": {"enabled": False}})  # the reruns below: no heatmaps
    assert set(ran(project.run(["dvc", "repro"]))) == {"diagnose", "export", "upload"}

    # nothing changed: nothing runs
    assert ran(project.run(["dvc", "repro"])) == []
    # only the pseudolabel threshold (now nothing is kept): the round reruns, no teacher does
    project.set_params({"pseudo": {"threshold": 1.0}})
    stale = project.run(["pipeline", "summary"]).stdout  # as after a failed rerun
    assert "WARNING: these outputs are not those of the current params" in stale
    assert "pseudolabel" in stale
    pseudo = ran(project.run(["dvc", "repro"]))
    assert {"pseudolabel", "train_student@resnet10t-0", "ensemble_final", "submit"} <= set(pseudo)
    assert (
        not any(s.startswith(("train@", "predict@")) for s in pseudo) and "ensemble" not in pseudo
    )
    # the final blend only: no student retrains
    project.set_params({"pseudo": {"blend_teachers": True}})
    blend = ran(project.run(["dvc", "repro"]))
    assert "ensemble_final" in blend and not any(s.startswith("train_") for s in blend)
    # no round: the teachers make the submission, no teacher reruns
    project.set_params({"pseudo": {"enabled": False}})
    off = ran(project.run(["dvc", "repro"]))
    assert not any(s.startswith(("train@", "predict@")) for s in off)
    final = json.loads((project.path / "metrics/final.json").read_text())
    assert final["submitted"] == "teacher resnet10t, teacher test_resnet"
    assert "student_cv" not in final
    # (the round stays off below: the teachers' own reruns)
    # only TTA: predict and what follows, never training
    project.set_params({"tta": {"views": ["identity"], "beta": 0.5}})
    tta = ran(project.run(["dvc", "repro"]))
    assert "predict@resnet10t-1" in tta and not any(s.startswith("train@") for s in tta)
    assert ran(project.run(["dvc", "repro", "submit"])) == []
    # one train param makes every teacher stale, nothing upstream
    project.set_params({"train": {"lr": 0.002}})
    stale = project.run(["dvc", "status"]).stdout
    assert "train@resnet10t-0" in stale and "train@test_resnet-1" in stale
    assert not any(f"{s}:" in stale.split() for s in ("download", "prepare", "folds"))


def check_blend_report(project) -> None:
    """The blend's CV beside every model's, with and without TTA, and every snapshot set."""
    cv = json.loads((project.path / "metrics/cv.json").read_text())
    names = [
        f"{m}{v}" for m in ("resnet10t", "test_resnet") for v in ("", " (no TTA)", " snapshots")
    ]
    assert set(cv["single"]) == set(names)
    assert set(cv["members"]) == {"resnet10t", "test_resnet", "resnet10t snapshots",
                                  "test_resnet snapshots"}  # fmt: skip
    assert sum(cv["members"].values()) == pytest.approx(1.0)
    assert all(0 <= w <= 1 for w in cv["members"].values())
    snaps = project.path / "preds/test_resnet/fold1/snapshots"
    assert sorted(p.name for p in snaps.iterdir()) == ["cycle0", "cycle1"]
    tta = json.loads((project.path / "preds/resnet10t/fold0/tta.json").read_text())
    assert tta["beta_auto"] and 0 <= tta["beta"] <= 1 and {"oof_plain", "oof_tta"} <= set(tta)


def test_unknown_param_stops_the_stage_with_its_name(project):
    project.set_params({"train": {"epochz": 3}})
    res = project.run(["pipeline", "download"], check=False)
    assert res.returncode == 1
    assert "unknown key 'train.epochz'" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (project.path / "data/raw").exists()


def test_two_rounds_each_labelled_by_the_last_rounds_students_of_the_same_fold(project):
    from pipeline.files import sha256

    project.set_params(
        {"pseudo": {"rounds": 2, "class_cap": False}, "diagnose": {"enabled": False}}
    )
    order = ran(project.run(["dvc", "repro"]))
    steps = ["train_student@resnet10t-0", "pseudolabel_2", "train_student_2@resnet10t-0",
             "predict_student_2@resnet10t-0", "ensemble_final", "submit"]  # fmt: skip
    assert [order.index(s) for s in steps] == sorted(order.index(s) for s in steps)
    r1, r2 = project.path / "students", project.path / "rounds/2"
    for k in (0, 1):
        source = json.loads((r2 / f"pseudo/fold{k}/source.json").read_text())
        weights = r1 / f"models/resnet10t/fold{k}/model.safetensors"
        assert source["round"] == 2 and source["labeller"] == "student"
        assert source["teacher_weights"] == {"resnet10t": sha256(weights)}
        labels = pd.read_csv(r2 / f"pseudo/fold{k}/labels.csv", dtype={"id": str})
        classes = json.loads((r2 / f"pseudo/fold{k}/targets.json").read_text())["classes"]
        targets = read_preds(r2 / f"pseudo/fold{k}", "targets", classes)
        assert targets.index.tolist() == labels["id"].tolist()
        preds = read_preds(r1 / f"preds/resnet10t/fold{k}", "test", classes).loc[targets.index]
        assert len(labels) == 12  # threshold 0, no cap: every test image, round 1's targets
        pd.testing.assert_frame_equal(targets, preds, atol=1e-6, check_dtype=False)
        info = json.loads((r2 / f"models/resnet10t/fold{k}/model.json").read_text())
        assert info["role"] == "student2" and info["init"] == str(weights.relative_to(project.path))
    final = json.loads((project.path / "metrics/final.json").read_text())
    assert set(final["rounds"]) == {"1", "2"} and final["student_cv"] == final["rounds"]["2"]
    r3 = json.loads((project.path / "rounds/3/dvclive/resnet10t/fold0/metrics.json").read_text())
    assert r3 == {"skipped": "pseudo.rounds is 2: there is no round 3"}
    # back to one round: round 2 skips, round 1 and the teachers are kept
    project.set_params({"pseudo": {"rounds": 1}})
    again = ran(project.run(["dvc", "repro"]))
    assert {"pseudolabel_2", "train_student_2@resnet10t-1", "ensemble_final"} <= set(again)
    assert not any(s.startswith(("train@", "train_student@", "pseudolabel@")) for s in again)
    assert "rounds" not in json.loads((project.path / "metrics/final.json").read_text())


def test_extra_images_join_the_round_without_retraining_the_teachers(project, tmp_path):
    from PIL import Image

    from tests.test_extra import write_pool

    project.set_params({"pseudo": {"class_cap": False}, "diagnose": {"enabled": False}})
    project.run(["dvc", "repro"])
    pool = write_pool(tmp_path / "pool", n=4, size=12)
    project.set_params({"pseudo": {"extra": str(pool)}})
    again = ran(project.run(["dvc", "repro"]))
    assert {"extra", "predict@resnet10t-1", "pseudolabel", "train_student@resnet10t-0"} <= set(
        again
    )
    assert not any(s.startswith(("download", "prepare", "folds", "train@")) for s in again)
    for k in (0, 1):  # threshold 0, no cap: every test and extra image, by fold k's teacher
        labels = pd.read_csv(project.path / f"pseudo/fold{k}/labels.csv", dtype={"id": str})
        assert (len(labels), labels["id"].str.startswith("extra/").sum()) == (16, 4)
        info = json.loads(
            (project.path / f"students/models/resnet10t/fold{k}/model.json").read_text()
        )
        assert info["pseudolabeled"] == 16
    sub = pd.read_csv(project.path / "submissions/submission.csv", dtype=str)
    assert len(sub) == 12 and not sub.iloc[:, 0].str.startswith("extra/").any()
    Image.open(pool / "x0.png").save(pool / "x9.png")  # an image added to the pool
    assert ran(project.run(["dvc", "repro", "extra"])) == ["extra"]
    assert len(pd.read_csv(project.path / "data/extra/test.csv")) == 5
