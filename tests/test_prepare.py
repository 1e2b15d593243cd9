"""prepare: index + cache on good data; on bad data one clear message and no output at all."""

import numpy as np
import pandas as pd
import pytest

from pipeline.files import PipelineError
from pipeline.index import load_image, read_index
from pipeline.params import Prepare
from pipeline.stages.prepare import run
from tests import layout_fixtures as lf
from tests.layout_fixtures import competition


def test_index_and_cache(tiny_comp, tmp_path):
    out = tmp_path / "prepared"
    run(Prepare(cache_size=16, resize="squish"), competition(), raw=tiny_comp, out=out)
    index = read_index(out)
    assert index.classes == ["cat", "dog", "fox"]
    assert len(index.train) == 36 and len(index.test) == 12
    sample = pd.read_csv(tiny_comp / "sample_submission.csv")
    assert index.test["id"].tolist() == sample["id"].tolist()
    cache = index.images("train")
    assert cache.shape == (36, 16, 16, 3) and cache.dtype == np.uint8
    assert index.images("test").shape == (12, 16, 16, 3)


def test_without_cache_no_arrays(tiny_comp, tmp_path):
    run(
        Prepare(cache_size=None, resize="squish"),
        competition(),
        raw=tiny_comp,
        out=tmp_path / "prepared",
    )
    assert read_index(tmp_path / "prepared").images("train") is None


def _expect_failure(raw, out, pattern):
    with pytest.raises(PipelineError, match=pattern):
        run(Prepare(cache_size=16, resize="squish"), competition(), raw=raw, out=out)
    assert not out.exists()
    assert not list(out.parent.glob(".prepared*"))  # no temporary left behind either


def test_missing_image_names_row(tiny_comp, tmp_path):
    (tiny_comp / "train" / "tr004.png").unlink()
    _expect_failure(
        tiny_comp, tmp_path / "prepared", r"train\.csv: no image file for row 6 \(id 'tr004'\)"
    )


def test_empty_label_names_row(tiny_comp, tmp_path):
    train = pd.read_csv(tiny_comp / "train.csv")
    train.loc[2, "label"] = ""
    train.to_csv(tiny_comp / "train.csv", index=False)
    _expect_failure(
        tiny_comp, tmp_path / "prepared", r"train\.csv: empty label in row 4 \(id 'tr002'\)"
    )


def test_missing_sample_submission_named(tiny_comp, tmp_path):
    (tiny_comp / "sample_submission.csv").unlink()
    _expect_failure(tiny_comp, tmp_path / "prepared", r"sample_submission\.csv: missing")


def test_unreadable_images_listed(tiny_comp, tmp_path):
    (tiny_comp / "train" / "tr007.png").write_bytes(b"not a png")
    (tiny_comp / "test" / "te001.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(PipelineError) as err:
        run(
            Prepare(cache_size=16, resize="squish"),
            competition(),
            raw=tiny_comp,
            out=tmp_path / "prepared",
        )
    assert "2 unreadable image(s)" in str(err.value)
    assert "tr007.png" in str(err.value) and "te001.png" in str(err.value)
    assert not (tmp_path / "prepared").exists()


def test_meta_carries_task_classes_and_submission_shape(tiny_comp, tmp_path):
    meta = run(
        Prepare(cache_size=None, resize="squish"),
        competition(),
        raw=tiny_comp,
        out=tmp_path / "prepared",
    )
    assert meta == read_index(tmp_path / "prepared").meta
    assert meta["task"] == "single_label" and meta["classes"] == ["cat", "dog", "fox"]
    assert (meta["submission_kind"], meta["id_column"], meta["layout"]) == ("label", "id", "csv")
    copied = (tmp_path / "prepared" / "sample_submission.csv").read_bytes()
    assert copied == (tiny_comp / "sample_submission.csv").read_bytes()


def test_pixels_become_readable_png_files(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "prepared"
    lf.digit_recognizer(raw, n_train=8, n_test=3)
    run(Prepare(cache_size=None, resize="squish"), competition(), raw=raw, out=out)
    index = read_index(out)
    assert index.test["id"].tolist() == ["1", "2", "3"]
    train_csv = pd.read_csv(raw / "train.csv")
    for row in (0, 5):
        img = load_image(index.train["path"][row])  # a path that works once prepare is done
        assert img.shape == (28, 28, 3)
        want = train_csv.iloc[row, 1:].to_numpy().reshape(28, 28)
        assert (img[..., 0] == want).all()
        assert index.train["label"][row] == str(train_csv["label"][row])


def test_group_column_reaches_the_index(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "prepared"
    lf.aptos(raw)
    train = pd.read_csv(raw / "train.csv")
    train.insert(1, "patient", [f"p{i // 2}" for i in range(len(train))])
    train.to_csv(raw / "train.csv", index=False)
    run(
        Prepare(cache_size=None, resize="squish"),
        competition(group_column="patient"),
        raw=raw,
        out=out,
    )
    index = read_index(out)
    assert index.train["group"].tolist() == train["patient"].tolist()
    assert index.train["label"].tolist() == train["diagnosis"].astype(str).tolist()


def test_metric_of_the_other_task_stops_prepare(tmp_path):
    raw = tmp_path / "raw"
    lf.aptos(raw)
    with pytest.raises(PipelineError, match="'f2_samples' applies to multi_label tasks"):
        run(
            Prepare(cache_size=None, resize="squish"),
            competition(metric="f2_samples"),
            raw=raw,
            out=tmp_path / "p",
        )
    assert not (tmp_path / "p").exists()


def test_repeated_training_id_names_its_rows(tiny_comp, tmp_path):
    train = pd.read_csv(tiny_comp / "train.csv")
    train.loc[5, "id"] = train.loc[1, "id"]
    train.to_csv(tiny_comp / "train.csv", index=False)
    _expect_failure(
        tiny_comp,
        tmp_path / "prepared",
        r"train\.csv: id 'tr001' appears 2 times \(rows \[3, 7\]\)",
    )


def test_repeated_sample_id_is_named(tiny_comp, tmp_path):
    sample = pd.read_csv(tiny_comp / "sample_submission.csv")
    sample.loc[3, "id"] = sample.loc[0, "id"]
    sample.to_csv(tiny_comp / "sample_submission.csv", index=False)
    _expect_failure(
        tiny_comp, tmp_path / "prepared", r"sample_submission\.csv: id '.*' appears 2 times"
    )


def test_two_images_for_one_id_are_named(tiny_comp, tmp_path):
    (tiny_comp / "train_extra").mkdir()
    (tiny_comp / "train_extra" / "tr003.jpg").write_bytes(
        (tiny_comp / "train" / "tr003.png").read_bytes()
    )
    _expect_failure(tiny_comp, tmp_path / "prepared", r"two images for id 'tr003'")
