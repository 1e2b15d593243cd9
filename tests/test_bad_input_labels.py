"""Bad input about labels (issue 20): class names with spaces, classes with leading zeros, a second
CSV beside the label CSV, one-hot labels with one images/ folder for both splits, and CSVs that
are not comma-separated. Each case runs the real command in-process through the runner of the
bad-input matrix (tests/test_bad_input.py); accepted cases go on to `submit` from a blend written
as `ensemble --final` writes it, so the labels are followed from data/raw into submission.csv."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.files import PipelineError
from pipeline.index import read_index
from pipeline.metrics import shape_submission, validate_submission
from pipeline.params import Prepare
from pipeline.preds import read_preds, write_preds
from pipeline.stages import prepare, upload
from tests.conftest import write_csv_competition
from tests.layout_fixtures import competition
from tests.test_bad_input import Case
from tests.test_bad_input import test_bad_input as run_case

AGE_SEX = [
    "adult male",
    "adult female",
    "juvenile male",
    "juvenile female",
    "pup male",
    "pup female",
]
ZEROS = ["00", "01", "02", "04"]
PLANT = ["healthy", "multiple_diseases", "rust", "scab"]  # plant-pathology-2020
SUBMIT = {"argv": ("submit",), "before": ("prepare",), "output": "submissions/submission.csv"}


def relabel(classes: list[str], sample_value: str, sep: str = ",") -> Callable[[Path], object]:
    """The tiny competition's train.csv labelled with `classes` in turn, the sample's value column
    set to `sample_value`, both written with `sep`; the blend predicts class i % C for test id
    te<i> (final/, as `ensemble --final` writes it)."""

    def f(raw: Path) -> None:
        train = pd.read_csv(raw / "train.csv", dtype=str)
        train["label"] = [classes[i % len(classes)] for i in range(len(train))]
        train.to_csv(raw / "train.csv", index=False, sep=sep)
        sample = pd.read_csv(raw / "sample_submission.csv", dtype=str).assign(label=sample_value)
        sample.to_csv(raw / "sample_submission.csv", index=False, sep=sep)
        write_blend(raw.parent.parent, classes, sample["id"].tolist())

    return f


def write_blend(root: Path, classes: list[str], ids: list[str]) -> None:
    """final/test (a probability per class, pipeline/preds.py) and final/thresholds.json."""
    probs = np.full((len(ids), len(classes)), 0.3 / (len(classes) - 1))
    probs[np.arange(len(ids)), [expected_class(i, len(classes)) for i in ids]] = 0.7
    (root / "final").mkdir(exist_ok=True)
    write_preds(root / "final", "test", ids, probs, classes)
    (root / "final" / "thresholds.json").write_text(json.dumps({"thresholds": None}))


def expected_class(test_id: str, n: int) -> int:
    return int("".join(ch for ch in test_id if ch.isdigit())) % n


def submitted(root: Path) -> pd.DataFrame:
    """submission.csv as Kaggle reads it (text), after upload's own check passed on it."""
    upload.validate(root / "submissions/submission.csv", root / "data/prepared")
    return pd.read_csv(root / "submissions/submission.csv", dtype=str, keep_default_na=False)


def labels_submitted(classes: list[str], task: str = "single_label") -> Callable[[Path], object]:
    """The index holds `classes` as written; each submitted value is the blend's class, verbatim."""

    def check(root: Path) -> None:
        index = read_index(root / "data/prepared")
        assert (index.meta["task"], index.meta["submission_kind"]) == (task, "label")
        assert index.classes == sorted(classes)  # the names as written, in sorted order
        assert set(index.train["label"]) == set(classes)
        sub = submitted(root)
        want = [classes[expected_class(i, len(classes))] for i in sub["id"]]
        assert sub["label"].tolist() == want

    return check


# --- item 2: single-label class names with spaces ---------------------------------------------


def planet_like(sample_value: str) -> Callable[[Path], object]:
    """Tag sets where some set is another with one tag more ("clear" and "clear primary")."""
    sets = ["clear", "clear primary", "cloudy", "cloudy water", "clear primary water", "haze"]

    def f(raw: Path) -> None:
        relabel(sets, sample_value)(raw)

    return f


def tags_index(root: Path) -> None:
    index = read_index(root / "data/prepared")
    assert (index.meta["task"], index.meta["submission_kind"]) == ("multi_label", "tags")
    assert index.classes == ["clear", "cloudy", "haze", "primary", "water"]


# --- item 6: classes with leading zeros ---------------------------------------------------------


def zeros_kept(root: Path) -> None:
    labels_submitted(ZEROS)(root)
    text = (root / "submissions/submission.csv").read_text()
    assert ",02\n" in text and ",2\n" not in text
    folds = pd.read_csv(root / "folds/folds.csv", dtype=str)
    assert set(folds["label"]) == set(ZEROS)


# --- item 8: a second CSV beside the label CSV ------------------------------------------------


def label_names_csv(raw: Path) -> None:
    """labels.csv (label, name), the first of the known label CSV names, maps labels to names."""
    pd.DataFrame({"label": ["cat", "dog", "fox"], "name": ["Felis", "Canis", "Vulpes"]}).to_csv(
        raw / "labels.csv", index=False
    )


def coarse_labels_csv(raw: Path) -> None:
    """labels.csv naming every image too (pet / wild): a tie the known name wins."""
    train = pd.read_csv(raw / "train.csv", dtype=str)
    coarse = train.assign(label=np.where(train["label"] == "fox", "wild", "pet"))
    coarse.to_csv(raw / "labels.csv", index=False)


def choose(name: str | None) -> Callable[[Path], object]:
    def f(raw: Path) -> dict:
        coarse_labels_csv(raw)
        return {"competition": {"label_csv": name}}

    return f


def classes_are(classes: list[str]) -> Callable[[Path], object]:
    def check(root: Path) -> None:
        assert read_index(root / "data/prepared").classes == classes

    return check


# --- item 9: one-hot train.csv, one images/ folder for both splits -----------------------------


def plant_pathology(multi: bool = False, empty_row: bool = False) -> Callable[[Path], object]:
    """image_id,healthy,multiple_diseases,rust,scab; images/Train_<i>.jpg and images/Test_<i>.jpg;
    sample_submission with the same columns (0.25 each)."""

    def f(raw: Path) -> None:
        shutil.rmtree(raw)
        rng = np.random.default_rng(0)
        for name in [f"Train_{i}" for i in range(24)] + [f"Test_{i}" for i in range(8)]:
            (raw / "images").mkdir(parents=True, exist_ok=True)
            img = rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)
            Image.fromarray(img).save(raw / "images" / f"{name}.jpg")
        hot = np.eye(len(PLANT), dtype=int)[[i % len(PLANT) for i in range(24)]]
        if multi:
            hot[1::3, 2] = 1  # rust besides another disease
        if empty_row:
            hot[5] = 0
        train = pd.DataFrame(hot, columns=PLANT)
        train.insert(0, "image_id", [f"Train_{i}" for i in range(24)])
        train.to_csv(raw / "train.csv", index=False)
        test_ids = [f"Test_{i}" for i in (3, 1, 0, 2, 7, 6, 5, 4)]  # the sample's own order
        sample = pd.DataFrame({"image_id": test_ids, **{c: 0.25 for c in PLANT}})
        sample.to_csv(raw / "sample_submission.csv", index=False)
        write_blend(raw.parent.parent, PLANT, test_ids)

    return f


def with_layout_csv(raw: Path) -> dict:
    plant_pathology()(raw)
    return {"competition": {"layout": "csv", "metric": "roc_auc"}}


def probs_submitted(root: Path) -> None:
    index = read_index(root / "data/prepared")
    meta = index.meta
    assert (meta["layout"], meta["task"], meta["submission_kind"]) == (
        "csv",
        "single_label",
        "probs",
    )
    assert index.classes == PLANT and len(index.train) == 24
    assert (
        index.test["id"].tolist()
        == pd.read_csv(root / "data/raw/sample_submission.csv")["image_id"].tolist()
    )
    assert all(Path(p).name.startswith("Test_") for p in index.test["path"])
    sub = submitted(root)
    assert list(sub.columns) == ["image_id", *PLANT]
    blend = read_preds(root / "final", "test", PLANT)
    np.testing.assert_allclose(sub[PLANT].astype(float), blend.loc[sub["image_id"], PLANT])


def forced_single_label(raw: Path) -> dict:
    plant_pathology(multi=True)(raw)
    return {"competition": {"task": "single_label"}}


def one_hot_tags(root: Path) -> None:
    index = read_index(root / "data/prepared")
    assert (index.meta["task"], index.classes) == ("multi_label", PLANT)
    assert index.train["label"].tolist()[:3] == ["healthy", "multiple_diseases rust", "rust"]


# --- item 11: CSVs separated by ";" or tabs -----------------------------------------------------


def separated(sep: str) -> Callable[[Path], object]:
    return relabel(["cat", "dog", "fox"], "cat", sep=sep)


def comma_sample(root: Path) -> None:
    labels_submitted(["cat", "dog", "fox"])(root)
    assert (root / "data/prepared/sample_submission.csv").read_text().startswith("id,label\n")
    assert (root / "submissions/submission.csv").read_text().startswith("id,label\n")


CASES = [
    Case("class names with spaces, the sample holds one", relabel(AGE_SEX, "adult male"), None,
         check=labels_submitted(AGE_SEX), **SUBMIT),
    Case("class names with spaces, the sample a placeholder", relabel(AGE_SEX, "0"), None,
         check=labels_submitted(AGE_SEX), **SUBMIT),
    Case("tag sets, the sample a tag set in its own order", planet_like("primary clear"), None,
         check=tags_index),
    Case("tag sets, the sample a placeholder", planet_like("none"), None, check=tags_index),
    Case("classes with leading zeros", relabel(ZEROS, "00"), None, check=zeros_kept,
         argv=("submit",), before=("prepare", "folds"), output="submissions/submission.csv"),
    Case("a labels.csv of label,name beside train.csv", label_names_csv, None,
         check=classes_are(["cat", "dog", "fox"])),
    Case("two label CSVs naming the images: the known name", choose(None), None,
         check=classes_are(["pet", "wild"])),
    Case("two label CSVs naming the images: competition.label_csv", choose("train.csv"), None,
         check=classes_are(["cat", "dog", "fox"])),
    Case("competition.label_csv names no file", choose("nope.csv"),
         r"competition\.label_csv: 'nope\.csv' is not a file in .*data/raw \(CSVs there: "
         r"\['labels\.csv', 'sample_submission\.csv', 'train\.csv'\]\)"),
    Case("one-hot labels, one images/ folder for both splits", plant_pathology(), None,
         check=probs_submitted, **SUBMIT),
    Case("one-hot labels with competition.layout: csv", with_layout_csv, None,
         check=probs_submitted, **SUBMIT),
    Case("one-hot labels, several per row", plant_pathology(multi=True), None, check=one_hot_tags),
    Case("one-hot labels, several per row, competition.task: single_label", forced_single_label,
         r"train\.csv: row 3 \(id 'Train_1'\) has 2 ones .*\(single_label\); several classes "
         r"in a row need competition\.task: multi_label"),
    Case("one-hot labels, a row without a 1", plant_pathology(empty_row=True),
         r"train\.csv: row 7 \(id 'Train_5'\) has 0 ones in the one-hot columns \['healthy', "
         r"'multiple_diseases', 'rust', 'scab'\] \(single_label\); every image needs a class"),
    Case("semicolon-separated CSVs", separated(";"), None, check=comma_sample, **SUBMIT),
    Case("tab-separated CSVs", separated("\t"), None, check=comma_sample, **SUBMIT),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_labels(case: Case, tmp_path, monkeypatch, capsys):
    run_case(case, tmp_path, monkeypatch, capsys)


def test_the_label_csv_chosen_among_several_is_said(tmp_path, capsys):
    raw = write_csv_competition(tmp_path / "raw")
    coarse_labels_csv(raw)
    prepare.run(
        Prepare(cache_size=None, resize="squish"), competition(), raw=raw, out=tmp_path / "p"
    )
    out = capsys.readouterr().out
    assert "prepare: labels read from labels.csv; train.csv name train images too " in out
    assert "(competition.label_csv chooses)" in out
    label_names_csv(raw)  # labels.csv of label,name: names no image, so nothing to say
    meta = prepare.run(
        Prepare(cache_size=None, resize="squish"), competition(), raw=raw, out=tmp_path / "p"
    )
    assert meta["classes"] == ["cat", "dog", "fox"]
    assert "labels read from" not in capsys.readouterr().out


# --- the last check before a submission is written: values are classes, as the labels spell them


@pytest.mark.parametrize(
    ("classes", "kind", "value", "message"),
    [
        (
            AGE_SEX,
            "label",
            "female juvenile",
            r"row 4 has 'female juvenile', not one of the classes",
        ),
        (ZEROS, "label", "2", r"row 4 has '2', not one of the classes \['00', '01', '02', '04'\]"),
        (["clear", "primary"], "tags", "clear clear", r"row 4 repeats a tag in 'clear clear'"),
        (["clear", "primary"], "tags", "clear haze", r"row 4 has unknown tags \['haze'\]"),
    ],
)
def test_a_value_that_is_no_class_is_refused(classes, kind, value, message):
    sample = pd.DataFrame({"id": ["a", "b", "c"], "label": classes[0]})
    sub = sample.assign(label=[classes[0], classes[-1], value])
    validate_submission(sub.iloc[:2], sample.iloc[:2], classes, kind, "sub.csv")
    with pytest.raises(PipelineError, match=message):
        validate_submission(sub, sample, classes, kind, "sub.csv")


def test_leading_zero_classes_are_written_as_spelled_whatever_the_sample_holds():
    for placeholder in (0, "0", "00"):
        sample = pd.DataFrame({"id": ["b", "a"], "label": [placeholder] * 2})
        probs = np.array([[0.1, 0.1, 0.7, 0.1], [0.7, 0.1, 0.1, 0.1]])  # rows a, b
        sub = shape_submission(["a", "b"], probs, ZEROS, sample, "label")
        assert sub["label"].tolist() == ["00", "02"]
        validate_submission(sub, sample, ZEROS, "label", "sub.csv")
