"""A submission is shaped like sample_submission.csv and checked before it is written."""

import numpy as np
import pandas as pd
import pytest

from pipeline.files import PipelineError
from pipeline.index import read_index
from pipeline.metrics import shape_submission, validate_submission
from pipeline.params import Prepare
from pipeline.preds import read_preds, write_preds
from pipeline.stages import ensemble, prepare, submit
from tests import layout_fixtures as lf
from tests.layout_fixtures import competition

CLASSES = ["0", "1", "2"]


@pytest.fixture
def sample() -> pd.DataFrame:
    return pd.DataFrame({"id": ["c", "a", "b"], "label": [0, 0, 0]})


def test_shape_follows_sample_ids_and_types(sample):
    probs = np.array([[0.9, 0.1, 0.0], [0.1, 0.1, 0.8], [0.2, 0.7, 0.1]])  # rows a, b, c
    sub = shape_submission(["a", "b", "c"], probs, CLASSES, sample, "label")
    assert list(sub.columns) == ["id", "label"]
    assert sub["id"].tolist() == ["c", "a", "b"]
    assert sub["label"].tolist() == [1, 0, 2]
    assert pd.api.types.is_integer_dtype(sub["label"])
    validate_submission(sub, sample, CLASSES, "label", "sub.csv")


def test_shape_refuses_missing_predictions(sample):
    with pytest.raises(PipelineError, match="1 ids have no prediction"):
        shape_submission(["a", "b"], np.eye(3)[:2], CLASSES, sample, "label")


@pytest.mark.parametrize(
    ("sub", "message"),
    [
        (pd.DataFrame({"id": ["c", "a", "b"], "target": [0, 1, 2]}), r"columns \['id', 'target'\]"),
        (
            pd.DataFrame({"id": ["c", "a", "a"], "label": [0, 1, 2]}),
            r"id 'a' appears more than once \(row 4\)",
        ),
        (
            pd.DataFrame({"id": ["c", "a", "z"], "label": [0, 1, 2]}),
            r"1 missing \(e\.g\. \['b'\]\), 1 unknown",
        ),
        (
            pd.DataFrame({"id": ["c", "a", "b"], "label": [0, None, 2]}),
            r"column 'label' is empty at row 3",
        ),
        (
            pd.DataFrame({"id": ["c", "a", "b"], "label": [0, 7, 2]}),
            r"row 3 has '7', not one of the classes",
        ),
    ],
)
def test_invalid_submissions_rejected_with_row(sample, sub, message):
    with pytest.raises(PipelineError, match=message) as err:
        validate_submission(sub, sample, CLASSES, "label", "submissions/submission.csv")
    assert "submissions/submission.csv" in str(err.value)


def test_probabilities_must_be_in_unit_interval():
    sample = pd.DataFrame({"id": ["a", "b"], "cat": [0.5, 0.5], "dog": [0.5, 0.5]})
    ok = pd.DataFrame({"id": ["a", "b"], "cat": [0.2, 1.0], "dog": [0.8, 0.0]})
    validate_submission(ok, sample, ["cat", "dog"], "probs", "s.csv")
    bad = ok.assign(dog=[0.8, 1.5])
    with pytest.raises(PipelineError, match=r"column 'dog' row 3 has '1.5'"):
        validate_submission(bad, sample, ["cat", "dog"], "probs", "s.csv")


def test_probability_columns_follow_the_sample_order():
    sample = pd.DataFrame({"id": ["b", "a"], "dog": [0.5, 0.5], "cat": [0.5, 0.5]})
    probs = np.array([[0.9, 0.1], [0.3, 0.7]])  # rows a, b; columns cat, dog
    sub = shape_submission(["a", "b"], probs, ["cat", "dog"], sample, "probs")
    assert list(sub.columns) == ["id", "dog", "cat"]
    assert sub.to_dict("list") == {"id": ["b", "a"], "dog": [0.7, 0.1], "cat": [0.3, 0.9]}
    validate_submission(sub, sample, ["cat", "dog"], "probs", "s.csv")


def test_binary_writes_the_positive_class_probability():
    sample = pd.DataFrame({"id": [2, 1], "label": [0.5, 0.5]})
    probs = np.array([[0.8, 0.2], [0.25, 0.75]])  # ids 1, 2; columns cat, dog
    sub = shape_submission(
        ["1", "2"], probs, ["cat", "dog"], sample, "binary", positive_class="dog"
    )
    assert sub["id"].tolist() == [2, 1]  # the sample's ids, type kept
    assert sub["label"].tolist() == [0.75, 0.2]
    validate_submission(sub, sample, ["cat", "dog"], "binary", "s.csv")


def test_tags_use_per_class_thresholds_and_are_never_empty():
    sample = pd.DataFrame({"image_name": ["t0", "t1", "t2"], "tags": "primary clear"})
    classes = ["clear", "haze", "primary"]
    probs = np.array([[0.6, 0.3, 0.9], [0.1, 0.15, 0.2], [0.4, 0.2, 0.05]])
    sub = shape_submission(
        ["t0", "t1", "t2"], probs, classes, sample, "tags", thresholds=np.array([0.5, 0.25, 0.5])
    )
    assert sub["tags"].tolist() == ["clear haze primary", "primary", "clear"]
    validate_submission(sub, sample, classes, "tags", "s.csv")
    with pytest.raises(PipelineError, match=r"row 2 has unknown tags \['fog'\]"):
        validate_submission(sub.assign(tags=["fog"] * 3), sample, classes, "tags", "s.csv")


def test_ordinal_labels_decode_by_expected_value_for_kappa():
    sample = pd.DataFrame({"id_code": ["x", "y"], "diagnosis": [0, 0]})
    probs = np.array([[0.5, 0.0, 0.0, 0.5, 0.0], [0.0, 0.1, 0.2, 0.3, 0.4]])
    classes = ["0", "1", "2", "3", "4"]
    sub = shape_submission(["x", "y"], probs, classes, sample, "label", metric="qwk")
    assert sub["diagnosis"].tolist() == [2, 3]
    assert pd.api.types.is_integer_dtype(sub["diagnosis"])
    argmax = shape_submission(["x", "y"], probs, classes, sample, "label", metric="accuracy")
    assert argmax["diagnosis"].tolist() == [0, 4]


def test_string_labels_of_a_folder_competition_with_file_name_ids():
    sample = pd.DataFrame({"file": ["b.png", "a.png"], "species": "Charlock"})
    classes = ["Charlock", "Common Chickweed"]
    sub = shape_submission(
        ["a.png", "b.png"], np.array([[0.2, 0.8], [0.6, 0.4]]), classes, sample, "label"
    )
    assert sub.to_dict("list") == {
        "file": ["b.png", "a.png"],
        "species": ["Charlock", "Common Chickweed"],
    }


def fake_predictions(root, classes, train_ids, test_ids, seed=0):
    """preds/m/fold{0,1}/ oof and test as predict writes them (softmax rows), no training."""
    rng = np.random.default_rng(seed)
    for k in (0, 1):
        for name, ids in (("oof", train_ids[k::2]), ("test", test_ids)):
            probs = rng.dirichlet(np.ones(len(classes)), len(ids))
            write_preds(root / "preds" / "m" / f"fold{k}", name, ids, probs, classes)


@pytest.mark.parametrize(
    ("writer", "kind"), [(lf.dog_breed, "probs"), (lf.histopathologic, "binary")]
)
def test_ensemble_and_submit_stages_shape_like_the_sample(tmp_path, monkeypatch, writer, kind):
    monkeypatch.chdir(tmp_path)
    over = writer(tmp_path / "data" / "raw")
    meta = prepare.run(Prepare(cache_size=None, resize="squish"), competition(**over))
    assert meta["submission_kind"] == kind
    index = read_index()
    fake_predictions(
        tmp_path, meta["classes"], index.train["id"].tolist(), index.test["id"].tolist()
    )
    cv = ensemble.run(["m"], [0, 1], over["metric"])
    assert cv["metric"] == over["metric"] and cv["cv"] == cv[over["metric"]]
    submit.run(over["metric"], blend=tmp_path / "ensemble")
    sub = pd.read_csv(tmp_path / "submissions" / "submission.csv")
    sample = pd.read_csv(tmp_path / "data" / "raw" / "sample_submission.csv")
    assert list(sub.columns) == list(sample.columns)
    assert sub.iloc[:, 0].tolist() == sample.iloc[:, 0].tolist()
    blend = read_preds(tmp_path / "ensemble", "test", meta["classes"]).loc[sub["id"].astype(str)]
    if kind == "probs":  # every class column, in the sample's order, is the blend's
        np.testing.assert_allclose(sub[lf.BREEDS], blend[lf.BREEDS], atol=1e-9)
    else:  # P(1): the sample's integer 0 column becomes a probability
        np.testing.assert_allclose(sub["label"], blend["1"], atol=1e-9)
        assert (sub["label"] > 0).all() and (sub["label"] < 1).all()


def test_text_read_submission_keeps_na_like_ids_and_flags_blank_cells(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("id,label\nNA,None\nnull,cat\n")
    sample = pd.DataFrame({"id": ["NA", "null"], "label": ["cat", "cat"]})
    sub = pd.read_csv(path, dtype=str, keep_default_na=False)
    validate_submission(sub, sample, ["cat", "None"], "label", str(path))
    path.write_text("id,label\nNA, \nnull,cat\n")
    blank = pd.read_csv(path, dtype=str, keep_default_na=False)
    with pytest.raises(PipelineError, match="column 'label' is empty at row 2"):
        validate_submission(blank, sample, ["cat", "None"], "label", str(path))


@pytest.mark.parametrize(
    ("placeholder", "classes", "metric", "kind"),
    [
        ("normal", ["normal", "pneumonia"], "accuracy", "label"),  # class names ask for a label
        ("0", ["cat", "dog"], "accuracy", "label"),  # a whole-number placeholder too
        ("0.5", ["cat", "dog"], "accuracy", "binary"),  # a fraction asks for P(positive)
        ("0", ["0", "1"], "roc_auc", "binary"),  # a probability metric decides
    ],
)
def test_two_class_submission_kind(placeholder, classes, metric, kind):
    from pipeline.stages.prepare import submission_kind

    sample = pd.DataFrame({"id": ["a", "b"], "label": [placeholder] * 2})
    assert submission_kind(sample, classes, "single_label", metric, "auto") == kind


def test_whole_number_placeholder_with_named_classes_writes_names():
    sample = pd.DataFrame({"id": ["a", "b"], "label": [0, 0]})
    sub = shape_submission(
        ["a", "b"], np.array([[0.2, 0.8], [0.9, 0.1]]), ["cat", "dog"], sample, "label"
    )
    assert sub["label"].tolist() == ["dog", "cat"]


def test_many_probability_columns_are_written_as_six_significant_digits(tmp_path):
    from pipeline.files import probs_text
    from pipeline.files import write_probs_csv as write_submission  # labels.csv too

    edge = np.array([0, 1, 0.9999996, 0.5, 0.123456789, 9.9999996e-3, 3.4e-7, 1e-38, 1e-45])
    text = [bytes(t).decode() for t in probs_text(edge.astype(np.float32))]
    assert text[:7] == ["0.00000e+00", "1.00000e+00", "1.00000e+00", "5.00000e-01",
                        "1.23457e-01", "1.00000e-02", "3.40000e-07"]  # fmt: skip
    assert text[7:] == ["1.00000e-38", "1.40130e-45"]  # a float32's smallest, still not 0
    classes = [f"c{i}" for i in range(40)]
    probs = np.random.default_rng(0).dirichlet(np.ones(40) / 8, 9000).astype(np.float32)
    sub = pd.DataFrame(probs, columns=classes)
    sub.insert(0, "id", [f"{i:05d}" for i in range(9000)])  # more rows than one chunk
    write_submission(tmp_path / "s.csv", sub)
    back = pd.read_csv(tmp_path / "s.csv", dtype={"id": str})
    assert list(back.columns) == ["id", *classes] and back["id"].tolist() == sub["id"].tolist()
    np.testing.assert_allclose(back[classes], probs.astype(np.float64), rtol=5e-6, atol=0)
    write_submission(tmp_path / "few.csv", sub.iloc[:, :5])  # a few columns: as pandas writes
    assert (tmp_path / "few.csv").read_text() == sub.iloc[:, :5].to_csv(index=False)
    labels = sub.assign(label=["a, b"] + ["c"] * 8999)[["id", "label", *classes]]  # quoted
    write_submission(tmp_path / "labels.csv", labels)
    back = pd.read_csv(tmp_path / "labels.csv", dtype={"id": str})
    assert back["label"].iloc[0] == "a, b" and back["id"].tolist() == sub["id"].tolist()
    np.testing.assert_allclose(back[classes], probs.astype(np.float64), rtol=5e-6, atol=0)
    broken = labels.assign(label=["a\nb"] + ["c"] * 8999)  # a line break: as pandas writes
    write_submission(tmp_path / "broken.csv", broken)
    assert (tmp_path / "broken.csv").read_text() == broken.to_csv(index=False)
