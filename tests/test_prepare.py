"""prepare: index + cache on good data; on bad data one clear message and no output at all."""

import numpy as np
import pandas as pd
import pytest

from pipeline.data import read_index
from pipeline.files import PipelineError
from pipeline.params import Prepare
from pipeline.stages.prepare import run


def test_index_and_cache(tiny_comp, tmp_path):
    out = tmp_path / "prepared"
    run(Prepare(cache_size=16), raw=tiny_comp, out=out)
    index = read_index(out)
    assert index.classes == ["cat", "dog", "fox"]
    assert len(index.train) == 36 and len(index.test) == 12
    sample = pd.read_csv(tiny_comp / "sample_submission.csv")
    assert index.test["id"].tolist() == sample["id"].tolist()
    cache = index.images("train")
    assert cache.shape == (36, 16, 16, 3) and cache.dtype == np.uint8
    assert index.images("test").shape == (12, 16, 16, 3)


def test_without_cache_no_arrays(tiny_comp, tmp_path):
    run(Prepare(cache_size=None), raw=tiny_comp, out=tmp_path / "prepared")
    assert read_index(tmp_path / "prepared").images("train") is None


def _expect_failure(raw, out, pattern):
    with pytest.raises(PipelineError, match=pattern):
        run(Prepare(cache_size=16), raw=raw, out=out)
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
        run(Prepare(cache_size=16), raw=tiny_comp, out=tmp_path / "prepared")
    assert "2 unreadable image(s)" in str(err.value)
    assert "tr007.png" in str(err.value) and "te001.png" in str(err.value)
    assert not (tmp_path / "prepared").exists()
