"""The command line's own refusals, run as the real command (`python -m pipeline ...`):

- `--help` prints usage and exits 0 without running the stage, a bad option exits 2, in-process
  and through the warm server (PIPELINE_WARM=1);
- an operating-system failure (a full disk, a model folder deleted by hand, a denied permission)
  is one plain line naming the path and what to do, exit 1, not the wording meant for bugs;
- `ensemble --final` refuses before it writes anything; `submit` names a thresholds.json that
  lacks a class; a local solution.csv holding a class the training labels never had scores the
  other rows and says which ones it could not.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline import cli, warm
from pipeline.index import read_index
from pipeline.preds import write_preds
from tests.conftest import CLASSES, ROOT, tiny_params

HELP = [(s,) for s in (*cli.STAGES, "summary")] + [("train", "--student"), ("predict", "--student")]
RUNS = {
    "train": ("--model", "resnet10t", "--fold", "0"),
    "predict": ("--model", "m", "--fold", "0"),
}


@pytest.mark.parametrize("argv", HELP, ids=" ".join)
def test_help_prints_usage_and_runs_nothing(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no params.yaml, no data: a stage that ran would fail
    assert cli.main([*argv, "--help"]) == 0
    assert capsys.readouterr().out.startswith(f"usage: python -m pipeline {argv[0]}")
    assert list(tmp_path.iterdir()) == []
    assert cli.main([*argv, *RUNS.get(argv[0], ()), "--no-such-option"]) == 2
    assert "error: unrecognized arguments: --no-such-option" in capsys.readouterr().err


@pytest.mark.parametrize("stage", ["train", "predict"])
def test_a_skipped_student_refuses_a_bad_option_too(stage, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump(tiny_params({"pseudo": {"enabled": False}}))
    )
    assert cli.main([stage, *RUNS[stage], "--student", "--no-such-option"]) == 2
    assert "error: unrecognized arguments: --no-such-option" in capsys.readouterr().err
    assert not (tmp_path / "students").exists()
    assert cli.main([stage, *RUNS[stage], "--student"]) == 0  # the skip outputs, no torch
    assert (tmp_path / "students").exists()


@pytest.mark.parametrize("stage", ["train", "predict"])
def test_a_later_round_is_a_students_round_within_the_rounds_dvc_yaml_defines(
    stage, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params()))  # pseudo.rounds: 1
    assert cli.main([stage, *RUNS[stage], "--round", "2"]) == 2
    assert "--round 2 is a students' round: add --student" in capsys.readouterr().err
    assert cli.main([stage, *RUNS[stage], "--student", "--round", "4"]) == 2
    assert "argument --round: invalid choice: 4" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [tmp_path / "params.yaml"]
    assert cli.main([stage, *RUNS[stage], "--student", "--round", "2"]) == 0  # past the rounds:
    skip = tmp_path / "rounds/2" / ("models" if stage == "train" else "preds") / RUNS[stage][1]
    why = json.loads((skip / "fold0/skipped.json").read_text())["skipped"]  # its outputs say why
    assert why == "pseudo.rounds is 1: there is no round 2"


def run_warm(cwd: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PIPELINE_WARM": "1"}
    return subprocess.run([sys.executable, "-m", "pipeline", *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


@pytest.mark.skipif(not hasattr(os, "fork"), reason="warm start needs fork")
def test_help_and_usage_errors_keep_argparse_exit_codes_through_the_warm_server(tmp_path):
    for stage in warm.WARM:
        helped = run_warm(tmp_path, stage, "--help")
        assert helped.returncode == 0, helped.stderr
        assert helped.stdout.startswith(f"usage: python -m pipeline {stage}")
        bad = run_warm(tmp_path, stage, *RUNS.get(stage, ()), "--no-such-option")
        assert bad.returncode == 2, bad.stderr
        assert "error: unrecognized arguments: --no-such-option" in bad.stderr
    assert list(tmp_path.iterdir()) == []


# ---- operating-system failures ---------------------------------------------------------------


@pytest.fixture
def project(workdir: Path) -> Path:
    """A prepared tiny competition with its folds, the project's dvc.yaml and tiny params."""
    (workdir / "params.yaml").write_text(yaml.safe_dump(tiny_params()))
    shutil.copy(ROOT / "dvc.yaml", workdir / "dvc.yaml")
    return workdir


def one_line(err: str, pattern: str) -> None:
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert "PIPELINE_DEBUG" not in err and "unexpected" not in err and "Traceback" not in err
    assert re.search(pattern, err), err


def test_a_full_disk_names_the_output_and_the_space_left(project, monkeypatch, capsys):
    before = (project / "folds/folds.csv").read_bytes()

    def full(self, path, *args, **kwargs):  # what a write(2) on a full disk raises: no path
        Path(path).write_text("id,la")  # a first block made it
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(pd.DataFrame, "to_csv", full)
    assert cli.main(["folds"]) == 1
    one_line(
        capsys.readouterr().err,
        r"^error: no space left on device writing folds/folds\.csv: [\d.]+ (B|[KMG]iB) free on "
        r"its filesystem, about [\d.]+ (B|KiB) needed \(the size of the folds/folds\.csv it "
        r"replaces\); free some space.*rerun folds$",
    )
    assert (project / "folds/folds.csv").read_bytes() == before
    assert sorted(p.name for p in (project / "folds").iterdir()) == ["folds.csv"]


def test_a_full_disk_behind_a_library_error_is_still_a_full_disk(project, monkeypatch, capsys):
    """torch.save on a full disk raises RuntimeError('... unexpected pos 576 vs 534'), and
    safetensors its own error: the write helpers see the filesystem full and say so."""

    def full(self, path, *args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    monkeypatch.setattr(pd.DataFrame, "to_csv", full)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(free=0))
    assert cli.main(["folds"]) == 1
    one_line(
        capsys.readouterr().err,
        r"^error: no space left on device writing folds/folds\.csv: 0 B free on its filesystem",
    )
    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(free=9e9))
    assert cli.main(["folds"]) == 1  # the same error with room to spare: a bug, said as one
    assert "unexpected: rerun with PIPELINE_DEBUG=1" in capsys.readouterr().err


def test_a_model_folder_deleted_by_hand_names_it_and_the_stage_to_rerun(project, capsys):
    folder = project / "models/resnet10t/fold0"
    folder.mkdir(parents=True)
    (folder / "model.json").write_text("{}")
    shutil.rmtree(project / "models")  # by hand, behind DVC's back
    assert cli.main(["predict", "--model", "resnet10t", "--fold", "0"]) == 1
    one_line(
        capsys.readouterr().err,
        r"^error: models/resnet10t/fold0/model\.json: missing \(deleted\?\); it is an output of "
        r"stage train@resnet10t-0: rerun `dvc repro` \(or `dvc repro train@resnet10t-0`\)",
    )
    assert not (project / "preds").exists()


def test_a_denied_permission_names_the_output_not_its_temporary(project, monkeypatch, capsys):
    def denied(*args, dir=None, **kwargs):  # noqa: A002 (mkstemp's own name)
        tmp = Path(dir, f"{kwargs['prefix']}k2j4x9q1{kwargs['suffix']}").resolve()
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(tmp))

    monkeypatch.setattr("tempfile.mkstemp", denied)  # root passes chmod: simulate the refusal
    assert cli.main(["folds"]) == 1
    one_line(
        capsys.readouterr().err,
        r"^error: folds/folds\.csv: permission denied \(folds reads or writes it\); give this "
        r"user access",
    )


def test_a_real_bug_keeps_the_unexpected_wording(project, monkeypatch, capsys):
    monkeypatch.setattr(pd.DataFrame, "to_csv", lambda *a, **k: 1 / 0)
    assert cli.main(["folds"]) == 1
    assert "unexpected: rerun with PIPELINE_DEBUG=1" in capsys.readouterr().err


# ---- ensemble --final and submit -------------------------------------------------------------


def teacher_preds(root: Path, seed: int = 0) -> None:
    """preds/resnet10t/fold{0,1}/ oof and test as predict writes them: mostly right, no torch."""
    rng = np.random.default_rng(seed)
    index, folds = read_index(root / "data/prepared"), pd.read_csv(root / "folds/folds.csv")
    for k in (0, 1):
        rows = folds[folds["fold"] == k]
        for name, ids, labels in (("oof", rows["id"], rows["label"]),
                                  ("test", index.test["id"], None)):  # fmt: skip
            probs = rng.dirichlet(np.ones(3), len(ids))
            if labels is not None:
                probs[np.arange(len(ids)), [CLASSES.index(c) for c in labels]] += 2
            folder = root / "preds/resnet10t" / f"fold{k}"
            write_preds(folder, name, ids, probs / probs.sum(1, keepdims=True), CLASSES)


@pytest.fixture
def blended(workdir: Path, capsys) -> Path:
    """Teachers' predictions, `ensemble` and `ensemble --final` run (pseudo.enabled: false)."""
    params = tiny_params({"pseudo": {"enabled": False}})
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))
    teacher_preds(workdir)
    assert cli.main(["ensemble"]) == 0, capsys.readouterr().err
    assert cli.main(["ensemble", "--final"]) == 0, capsys.readouterr().err
    capsys.readouterr()
    return workdir


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}  # fmt: skip


@pytest.mark.parametrize("break_it", ["metric changed", "teachers' CV missing", "first run"])
def test_ensemble_final_refuses_before_writing(break_it, blended, capsys):
    if break_it == "metric changed":  # metrics/cv.json scored accuracy
        params = yaml.safe_load((blended / "params.yaml").read_text())
        params["competition"]["metric"] = "log_loss"
        (blended / "params.yaml").write_text(yaml.safe_dump(params))
        pattern = r"metrics/cv\.json: scored accuracy, not competition\.metric log_loss"
    else:
        (blended / "metrics/cv.json").unlink()
        pattern = r"metrics/cv\.json: missing; run `dvc repro ensemble` first"
    if break_it == "first run":
        shutil.rmtree(blended / "final")
        for name in ("final.json", "final_confusion.csv"):
            (blended / "metrics" / name).unlink()
    before = snapshot(blended)
    assert cli.main(["ensemble", "--final"]) == 1
    one_line(capsys.readouterr().err, pattern)
    assert snapshot(blended) == before  # final/ and its metrics as they were, or still absent


def multi_label(root: Path, thresholds: dict) -> None:
    """The prepared competition as tags, and a final/ blend whose thresholds.json is given."""
    meta = {"task": "multi_label", "classes": CLASSES, "submission_kind": "tags"}
    (root / "data/prepared/meta.json").write_text(json.dumps(meta))
    index = read_index(root / "data/prepared")
    probs = np.random.default_rng(0).random((len(index.test), 3))
    (root / "final").mkdir()
    write_preds(root / "final", "test", index.test["id"], probs, CLASSES)
    (root / "final/thresholds.json").write_text(json.dumps({"thresholds": thresholds}))


def test_submit_names_a_class_missing_from_thresholds(workdir, capsys):
    (workdir / "params.yaml").write_text(yaml.safe_dump(tiny_params()))
    multi_label(workdir, {"cat": 0.4, "dog": 0.5})  # tuned before `fox` was a class
    assert cli.main(["submit"]) == 1
    one_line(
        capsys.readouterr().err,
        r"final/thresholds\.json: no threshold for class 'fox' \(1 of 3 classes missing\).*"
        r"rerun `dvc repro ensemble_final`",
    )
    assert not (workdir / "submissions").exists()


def test_submit_with_all_thresholds_writes_tags(workdir, capsys):
    (workdir / "params.yaml").write_text(yaml.safe_dump(tiny_params()))
    multi_label(workdir, {"cat": 0.4, "dog": 0.5, "fox": 0.6})
    assert cli.main(["submit"]) == 0, capsys.readouterr().err
    tags = pd.read_csv(workdir / "submissions/submission.csv")["label"]
    assert {t for row in tags for t in row.split()} <= set(CLASSES)


def test_a_local_solution_with_an_unseen_class_scores_the_other_rows(blended, capsys):
    test_ids = read_index(blended / "data/prepared").test["id"]
    truth = [CLASSES[i % 3] for i in range(len(test_ids))]
    truth[1] = truth[4] = "wolf"  # a class the training labels never had
    (blended / "data/raw").mkdir(parents=True)
    pd.DataFrame({"id": test_ids, "label": truth}).to_csv(
        blended / "data/raw/solution.csv", index=False
    )
    assert cli.main(["submit"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    sub = pd.read_csv(blended / "submissions/submission.csv", dtype=str)
    assert len(sub) == len(test_ids) and set(sub["label"]) <= set(CLASSES)
    score = json.loads((blended / "submissions/local_score.json").read_text())
    known = sub.set_index("id").loc[test_ids]["label"].to_numpy() == np.array(truth)
    keep = np.array(truth) != "wolf"
    assert score["accuracy"] == pytest.approx(known[keep].mean())
    assert score["rows"] == 6 and score["unscored_rows"] == 2
    assert score["unscored_ids"] == [test_ids[1], test_ids[4]]
    assert score["unknown_classes"] == ["wolf"]
    assert re.search(rf"2 of 8 rows not scored: .*\(wolf\): ids {test_ids[1]}, {test_ids[4]}", out)


def test_a_reader_that_leaves_early_gets_no_error_line(tmp_path):
    """`python -m pipeline summary | head -1`: the command stops quietly, as any tool does."""
    script = (
        "import sys; from pipeline import cli as m; "
        "m.dispatch = lambda *a: [print('line', i) for i in range(10**6)]; "
        "sys.exit(m.main(['summary']))"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)  # fmt: skip
    assert proc.stdout.readline() == b"line 0\n"
    proc.stdout.close()  # the reader leaves
    assert proc.wait(timeout=60) == 141
    assert proc.stderr.read() == b""
