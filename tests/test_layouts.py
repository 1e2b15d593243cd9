"""Layouts: each way Kaggle ships a competition is recognised, indexed and shaped; anything else is
refused with what was found and what was expected."""

import pandas as pd
import pytest

from pipeline import layouts
from pipeline.files import PipelineError
from pipeline.params import Prepare
from pipeline.stages.prepare import run
from tests import layout_fixtures as lf
from tests.layout_fixtures import competition

# writer -> (layout, task, submission kind, classes, positive class)
EXPECTED = {
    lf.aptos: ("csv", "single_label", "label", ["0", "1", "2", "3", "4"], None),
    lf.dog_breed: ("csv", "single_label", "probs", sorted(lf.BREEDS), None),
    lf.histopathologic: ("csv", "single_label", "binary", ["0", "1"], "1"),
    lf.cifar10: ("csv", "single_label", "label", ["airplane", "automobile", "bird"], None),
    lf.plant_seedlings: ("class_folders", "single_label", "label", lf.SPECIES, None),
    lf.dogs_vs_cats: ("filename_labels", "single_label", "binary", ["cat", "dog"], "dog"),
    lf.digit_recognizer: ("pixels_csv", "single_label", "label", ["0", "1", "2", "3"], None),
    lf.planet: ("csv", "multi_label", "tags", lf.TAGS, None),
}


@pytest.mark.parametrize("writer", EXPECTED, ids=lambda w: w.__name__)
def test_each_competition_detected_and_indexed(writer, tmp_path):
    raw = tmp_path / "raw"
    over = writer(raw)
    meta = run(
        Prepare(cache_size=8, resize="squish"),
        competition(**over),
        raw=raw,
        out=tmp_path / "prepared",
    )
    layout, task, kind, classes, positive = EXPECTED[writer]
    assert (meta["layout"], meta["task"], meta["submission_kind"]) == (layout, task, kind)
    assert (meta["classes"], meta["positive_class"]) == (classes, positive)
    train = pd.read_csv(tmp_path / "prepared" / "train.csv", dtype=str, keep_default_na=False)
    test = pd.read_csv(tmp_path / "prepared" / "test.csv", dtype=str)
    sample = pd.read_csv(raw / "sample_submission.csv", dtype=str)
    assert test["id"].tolist() == sample.iloc[:, 0].tolist()  # test ids are the sample's
    assert train["id"].is_unique and len(train) == meta["n_train"]
    labels = (
        train["label"].str.split() if task == "multi_label" else train["label"].map(lambda x: [x])
    )
    assert {c for tags in labels for c in tags} == set(classes)


def test_overrides_beat_detection(tmp_path):
    raw = tmp_path / "raw"
    lf.histopathologic(raw)
    meta = run(
        Prepare(cache_size=None, resize="squish"),
        competition(metric="accuracy", submission="label", positive_class="0"),
        raw=raw,
        out=tmp_path / "prepared",
    )
    assert meta["submission_kind"] == "label"  # with accuracy the integer sample reads as labels
    meta = run(
        Prepare(cache_size=None, resize="squish"),
        competition(metric="roc_auc", positive_class="0"),
        raw=raw,
        out=tmp_path / "prepared",
    )
    assert (meta["submission_kind"], meta["positive_class"]) == ("binary", "0")


def test_label_csv_columns_found_by_content_and_named_by_params(tmp_path):
    raw = tmp_path / "raw"
    lf.aptos(raw)
    train = pd.read_csv(raw / "train.csv")
    train.insert(0, "quality", ["good", "bad"] * 12 + ["good"])  # which column is the label?
    train.to_csv(raw / "train.csv", index=False)
    meta = run(
        Prepare(cache_size=None, resize="squish"), competition(), raw=raw, out=tmp_path / "p"
    )
    assert meta["classes"] == ["0", "1", "2", "3", "4"]  # the sample's value column decides
    over = competition(label_column="quality", id_column="id_code", metric="accuracy")
    meta = run(Prepare(cache_size=None, resize="squish"), over, raw=raw, out=tmp_path / "p")
    assert meta["classes"] == ["bad", "good"]


def test_one_class_is_refused(tmp_path):
    raw = tmp_path / "raw"
    lf.aptos(raw)
    train = pd.read_csv(raw / "train.csv").assign(quality="good")
    train.to_csv(raw / "train.csv", index=False)
    with pytest.raises(PipelineError, match=r"found 1 class\(es\) \['good'\]"):
        run(
            Prepare(cache_size=None, resize="squish"),
            competition(label_column="quality", metric="accuracy"),
            raw=raw,
            out=tmp_path / "p",
        )


def test_label_csv_without_an_id_column_names_columns_and_keys(tmp_path):
    raw = tmp_path / "raw"
    lf.cifar10(raw)
    pd.DataFrame({"a": ["x", "y"], "b": ["cat", "dog"]}).to_csv(
        raw / "trainLabels.csv", index=False
    )
    with pytest.raises(PipelineError) as err:
        layouts.read(raw, competition())
    msg = str(err.value)
    assert "found trainLabels.csv with columns ['a', 'b']" in msg
    assert "expected an id column and a label column" in msg
    assert "set competition.id_column / competition.label_column" in msg


def test_unknown_column_in_params_is_named(tmp_path):
    raw = tmp_path / "raw"
    lf.cifar10(raw)
    with pytest.raises(PipelineError, match=r"competition.label_column: 'breed' is not a column"):
        layouts.read(raw, competition(label_column="breed"))


def test_unrecognised_folder_names_what_it_found(tmp_path):
    raw = tmp_path / "raw"
    (raw / "images").mkdir(parents=True)
    pd.DataFrame({"id": ["1"], "label": ["0"]}).to_csv(raw / "sample_submission.csv", index=False)
    with pytest.raises(PipelineError) as err:
        layouts.read(raw, competition())
    msg = str(err.value)
    assert "found files ['sample_submission.csv'] and folders ['images/']" in msg
    assert "expected one of" in msg and "set competition.layout" in msg


def test_missing_test_image_names_the_sample_row(tmp_path):
    raw = tmp_path / "raw"
    lf.dogs_vs_cats(raw)
    (raw / "test" / "3.jpg").unlink()
    with pytest.raises(
        PipelineError, match=r"sample_submission.csv: no image file for row 4 \(id '3'\)"
    ):
        layouts.read(raw, competition())


def test_non_square_pixel_columns_refused(tmp_path):
    raw = tmp_path / "raw"
    lf.digit_recognizer(raw, n_train=4, n_test=2)
    for name in ("train.csv", "test.csv"):
        frame = pd.read_csv(raw / name)
        frame.drop(columns=["pixel783"]).to_csv(raw / name, index=False)
    with pytest.raises(PipelineError, match="783 pixel columns; expected a square image"):
        layouts.read(raw, competition())


def test_pixel_sample_ids_must_count_the_test_rows(tmp_path):
    raw = tmp_path / "raw"
    lf.digit_recognizer(raw, n_train=4, n_test=3)
    pd.DataFrame({"ImageId": [1, 2, 5], "Label": 0}).to_csv(
        raw / "sample_submission.csv", index=False
    )
    with pytest.raises(PipelineError, match="ids are not consecutive integers 1..3"):
        layouts.read(raw, competition())


def test_multi_word_class_names_stay_single_label():
    words = pd.Series(["Common Chickweed", "Fat Hen", "Loose Silky-bent", "Fat Hen"])
    tags = pd.Series(["clear primary", "clear", "cloudy primary", "clear water", "primary water"])
    assert not layouts.multi_label(words)
    assert layouts.multi_label(tags)


def test_multi_label_task_refused_for_a_layout_without_tags(tmp_path):
    raw = tmp_path / "raw"
    lf.dogs_vs_cats(raw)
    with pytest.raises(PipelineError, match="multi_label needs tags in a label CSV"):
        layouts.read(raw, competition(task="multi_label"))


def test_the_sample_tells_class_names_with_spaces_from_tag_sets():
    age_sex = [f"{a} {s}" for a in ("adult", "juvenile", "pup") for s in ("male", "female")]
    labels = pd.Series(age_sex * 2)  # six labels from five words

    def sample(*values: str) -> pd.DataFrame:
        return pd.DataFrame({"id": [str(i) for i in range(len(values))], "label": list(values)})

    assert not layouts.multi_label(labels)  # no label is another with one word more
    assert not layouts.multi_label(labels, sample("pup female"))  # a class per row
    assert not layouts.multi_label(labels, sample("0", "none"))  # a placeholder says nothing
    assert layouts.multi_label(labels, sample("male pup"))  # a set no row has: tags
    assert not layouts.multi_label(labels, pd.DataFrame(columns=["id", *age_sex]))
    assert layouts.multi_label(labels, pd.DataFrame(columns=["id", "adult", "female", "juvenile",
                                                             "male", "pup"]))  # fmt: skip
    planet = pd.Series(["clear primary", "clear", "cloudy", "clear primary water", "haze"])
    assert layouts.multi_label(planet) and layouts.multi_label(planet, sample("0"))
    assert layouts.multi_label(planet, sample("primary clear agriculture"))
    assert layouts.multi_label(planet, sample("clear primary"))  # a placeholder that is a row's


def test_csv_separator_is_sniffed_from_the_header(tmp_path):
    for sep, text in (
        (",", "id,label\n1,a;b\n"),
        (";", "id;label\n1;a,b\n"),
        ("\t", "id\tl\n1\tx\n"),
    ):
        path = tmp_path / "x.csv"
        path.write_text(text)
        assert layouts.delimiter(path) == sep
        assert layouts.read_csv(path).shape == (1, 2)
    (tmp_path / "one.csv").write_text("id\n1\n")
    assert layouts.delimiter(tmp_path / "one.csv") == ","
