"""`python -m pipeline init`: a competition's params.yaml written from its data and metadata,
every comment kept, each decision with its evidence; uncommitted edits refused unless --force."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline import init, params_file
from pipeline.files import PipelineError
from pipeline.params import load_params
from tests import layout_fixtures as lf
from tests.conftest import ROOT, TINY_PARAMS, Project, merge
from tests.fake_kaggle import FakeCreds, FakeKaggle

CREDS = FakeCreds(username="someone", key="k" * 32, api_token="t" * 32)
# layout fixture -> (layout, task, submission, metric guessed offline from the sample, flips)
EXPECTED = {
    "csv": ("csv", "single_label", "label", "accuracy", "horizontal"),
    "class_folders": ("class_folders", "single_label", "label", "accuracy", "horizontal"),
    "filename_labels": ("filename_labels", "single_label", "binary", "roc_auc", "horizontal"),
    "pixels_csv": ("pixels_csv", "single_label", "label", "accuracy", "none"),
    "multi_label": ("csv", "multi_label", "tags", "f2_samples", "horizontal"),
}


def git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout


@pytest.fixture
def proj(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The repository's params.yaml, committed, in the working folder; no GPU."""
    root = tmp_path / "proj"
    root.mkdir()
    shutil.copy(ROOT / "params.yaml", root / "params.yaml")
    monkeypatch.chdir(root)
    git("init", "-q")
    git("add", "params.yaml")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "params")
    monkeypatch.setattr(init, "gpu_visible", lambda: False)
    return root


def comments(text: str) -> list[str]:
    return [line.split("#", 1)[1] for line in text.splitlines() if "#" in line]


def keys(text: str) -> list[str]:
    return [m.group(0) for m in re.finditer(r"^\s*\w+:", text, re.M)]


@pytest.mark.parametrize("name", list(lf.LAYOUTS))
def test_init_on_each_layout_writes_what_it_detects_and_keeps_every_comment(proj, name, capsys):
    comp = proj.parent / "comp"
    lf.LAYOUTS[name](comp)
    before = (proj / "params.yaml").read_text()
    report = init.run(None, str(comp), pretrained=False)
    after = (proj / "params.yaml").read_text()
    assert comments(after) == comments(before) and keys(after) == keys(before)
    p = load_params()  # the params check every stage runs
    layout, task, kind, metric, flips = EXPECTED[name]
    c = p.competition
    assert (c.source, c.path, c.layout, c.task, c.submission) == ("path", str(comp), layout,
                                                                  task, kind)  # fmt: skip
    assert c.metric == metric and "offline: sample_submission has" in report
    assert c.positive_class == ("dog" if kind == "binary" else None)
    assert p.augment.flips == flips and p.tta.views == ([] if flips == "none" else ["hflip"])
    assert (p.base.image_size, p.prepare.cache_size, p.train.backbones) == (32, 32, ["resnet10t"])
    assert p.model.pretrained is False and p.pseudo.enabled is False  # test sets are small here
    assert (proj / "data/init.txt").read_text().strip() == report.strip()
    out = capsys.readouterr().out
    assert f"+  layout: {layout}" in out and "-  source: demo" in out  # the git diff


def csv_competition(
    root: Path, counts: dict[str, int], n_test: int, groups: int = 0, shape=(30, 40)
) -> None:
    """train.csv (id, label[, patient_id]), train/ and test/ PNGs (30 x 40 px), a label sample."""
    rng = np.random.default_rng(0)
    labels = [c for c, n in counts.items() for _ in range(n)]
    ids = [f"im{i}" for i in range(len(labels) + n_test)]
    for i, name in enumerate(ids):
        split = "train" if i < len(labels) else "test"
        lf.save(root / split / f"{name}.png", rng.integers(0, 255, (*shape, 3), dtype=np.uint8))
    train = pd.DataFrame({"id": ids[: len(labels)], "label": labels})
    if groups:
        train["patient_id"] = [f"p{i % groups}" for i in range(len(labels))]
    train.to_csv(root / "train.csv", index=False)
    pd.DataFrame({"id": ids[len(labels) :], "label": labels[0]}).to_csv(
        root / "sample_submission.csv", index=False
    )


def test_imbalance_a_group_column_wide_images_and_a_big_test_set(proj):
    comp = proj.parent / "comp"
    csv_competition(comp, {"a": 30, "b": 5}, n_test=20, groups=10)
    report = init.run(None, str(comp), pretrained=False)
    p = load_params()
    assert p.train.class_weights == "effective" and "30/5 = 6.0 (at least 5)" in report
    assert p.competition.group_column == "patient_id" and "10 values over 35 rows" in report
    assert p.prepare.resize == "pad" and p.pseudo.enabled is True  # 40x30: wider than 1.25
    csv_competition(proj.parent / "even", {"a": 12, "b": 10}, n_test=4, shape=(32, 32))
    init.run(None, str(proj.parent / "even"), force=True, pretrained=False)
    p = load_params()
    assert (p.train.class_weights, p.competition.group_column) == ("none", None)
    assert p.prepare.resize == "squish" and p.pseudo.enabled is False


def test_init_refuses_uncommitted_edits_unless_forced(proj, capsys):
    comp = proj.parent / "comp"
    lf.digit_recognizer(comp)
    epochs = load_params().train.epochs
    text = (proj / "params.yaml").read_text()
    edited = text.replace(f"\n  epochs: {epochs}\n", f"\n  epochs: {epochs + 1}\n", 1)
    assert edited != text
    (proj / "params.yaml").write_text(edited)
    with pytest.raises(PipelineError, match="params.yaml differs from the committed one.*--force"):
        init.run(None, str(comp), pretrained=False)
    assert (proj / "params.yaml").read_text() == edited and not (proj / "data/raw").exists()
    init.run(None, str(comp), force=True, pretrained=False)
    p = load_params()
    assert p.train.epochs == epochs + 1 and p.competition.layout == "pixels_csv"


def bundle(writer) -> bytes:
    """A competition as Kaggle serves it: one zip of its files."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        writer(Path(d))
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for f in sorted(Path(d).rglob("*")):
                if f.is_file():
                    zf.write(f, f.relative_to(d).as_posix())
        return buf.getvalue()


@pytest.fixture
def fake(proj, monkeypatch):
    for key in list(os.environ):
        if key.startswith("KAGGLE_") or key.lower().endswith("_proxy"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(proj.parent))
    monkeypatch.setenv("KAGGLE_USERNAME", CREDS.username)
    monkeypatch.setenv("KAGGLE_KEY", CREDS.key)
    with FakeKaggle(CREDS) as server:
        for key, value in server.env().items():
            monkeypatch.setenv(key, value)
        yield server


KAGGLE = {  # layout fixture -> (slug, Kaggle's name of its metric, ours)
    "csv": ("aptos2019-blindness-detection", "Quadratic Weighted Kappa", "qwk"),
    "class_folders": ("plant-seedlings-classification", "MeanFScoreBeta", None),
    "filename_labels": ("dogs-vs-cats-redux-kernels-edition", "Log Loss", "log_loss"),
    "pixels_csv": ("digit-recognizer", "Categorization Accuracy", "accuracy"),
    "multi_label": ("planet-understanding-the-amazon-from-space", "Mean F2-Score", "f2_samples"),
}


@pytest.mark.parametrize("name", list(lf.LAYOUTS))
def test_init_from_kaggle_takes_the_metric_from_the_competitions_metadata(fake, proj, name):
    slug, kaggle_name, ours = KAGGLE[name]
    fake.add_competition(slug, bundle(lf.LAYOUTS[name]), metric=kaggle_name)
    report = init.run(slug, None, pretrained=False)
    p = load_params()
    assert (p.competition.source, p.competition.name, p.competition.path) == ("kaggle", slug, None)
    assert p.competition.layout == EXPECTED[name][0] and p.competition.task == EXPECTED[name][1]
    assert p.competition.metric == (ours or "accuracy")  # unknown: left as the file had it
    said = f"Kaggle's evaluation metric is '{kaggle_name}'" if ours else "UNKNOWN METRIC"
    assert said in report and "ListCompetitions" in fake.api_calls()
    assert p.augment.flips == ("all" if name == "multi_label" else EXPECTED[name][4])  # planet


def test_a_kaggle_probs_submission_gets_the_log_loss_kaggle_names(fake, proj):
    fake.add_competition("dog-breed-identification", bundle(lf.dog_breed),
                         metric="Multi Class Log Loss")  # fmt: skip
    report = init.run("dog-breed-identification", None, pretrained=False)
    p = load_params()
    assert p.competition.metric == "log_loss" and p.competition.submission == "probs"
    assert "Kaggle's evaluation metric is 'Multi Class Log Loss'" in report
    seen = "16 images: median 12x12 px, shorter side 12-12 px, width/height 1.00-1.00, colour (RGB)"
    assert f"{seen}, 8-bit" in report


def test_an_unknown_kaggle_metric_is_reported_not_guessed(fake, proj):
    fake.add_competition("plant-seedlings-classification", bundle(lf.plant_seedlings),
                         metric="Mean Jaccard Overlap")  # fmt: skip
    report = init.run("plant-seedlings-classification", None, pretrained=False)
    assert "UNKNOWN METRIC: Kaggle scores with 'Mean Jaccard Overlap'" in report
    assert "left at 'accuracy': set it yourself" in report
    assert not any(line.lstrip().startswith("competition.metric:") for line in report.splitlines())
    assert load_params().competition.metric == "accuracy"  # as it was, not a guess


def test_bad_command_lines_are_refused_before_anything_is_written(proj, capsys):
    from pipeline.__main__ import main

    assert (
        main(["init"]) == 2
        and "name a Kaggle competition or give --path" in capsys.readouterr().err
    )
    assert main(["init", "--path", str(proj / "nowhere")]) == 1
    assert "nowhere' does not exist" in capsys.readouterr().err
    assert main(["init", "--path", str(proj), "--pretrained", "no.pth"]) == 2
    assert "no.pth: no such weights file" in capsys.readouterr().err
    assert git("status", "--porcelain") == "" and not (proj / "data").exists()


def test_the_params_editor_keeps_each_comment_at_its_column():
    text = "a:\n  x: 1        # one\n  longer_key: [p, q] # two\n"
    out = params_file.set_values(text, {"a.x": [0.35, 1.0], "a.longer_key": None})
    assert out == "a:\n  x: [0.35, 1.0] # one\n  longer_key: null   # two\n"
    block = "a:\n  x:\n  - p\n  - q\n  y: 1  # one\n       # its second line\nb:\n  z: 2\n"
    assert params_file.set_values(block, {"a.x": ["r"], "a.y": 3}) == (
        "a:\n  x: [r]\n  y: 3  # one\n       # its second line\nb:\n  z: 2\n"
    )  # a block list (as yaml.safe_dump writes it) replaced whole; a comment's lines kept
    with pytest.raises(PipelineError, match=r"no key \['a.y'\]"):
        params_file.set_values(text, {"a.y": 1})


@pytest.mark.slow
def test_dvc_repro_runs_end_to_end_on_what_init_wrote(tmp_path):
    comp = tmp_path / "comp"
    lf.digit_recognizer(comp)
    proj = Project(tmp_path / "proj")
    proj.set_params(merge(TINY_PARAMS, {"pseudo": {"enabled": True}}))
    for args in (
        ["init", "-q"],
        ["add", "params.yaml"],
        ["-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "p"],
    ):
        proj.run(["git", *args])  # fmt: skip
    proj.run(["python", "-m", "pipeline", "init", "--path", str(comp), "--pretrained", "false"])
    assert proj.params()["competition"]["layout"] == "pixels_csv"
    proj.run(["dvc", "repro"])
    sub = pd.read_csv(proj.path / "submissions/submission.csv")
    assert sub["ImageId"].tolist() == list(range(1, 7)) and set(sub["Label"]) <= {0, 1, 2, 3}
