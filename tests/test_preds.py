"""Prediction files (pipeline/preds.py): float32 arrays beside their ids and classes, read mapped
from disk, averaged a file at a time; and a probabilities submission checked as numbers."""

import json

import numpy as np
import pandas as pd
import pytest

from pipeline.files import PipelineError
from pipeline.preds import has_preds, mean_preds, read_preds, read_probs, write_preds
from pipeline.stages import upload

CLASSES = ["cat", "dog", "fox"]


def probs(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).dirichlet(np.ones(3), n)


def test_written_once_as_float32_and_read_mapped_with_the_columns_asked_for(tmp_path):
    p = probs(5, 0)
    write_preds(tmp_path, "oof", [f"i{k}" for k in range(5)], p, CLASSES)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["oof.json", "oof.npy"]
    assert json.loads((tmp_path / "oof.json").read_text())["classes"] == CLASSES
    ids, mapped = read_probs(tmp_path, "oof", CLASSES)
    assert isinstance(mapped, np.memmap) and mapped.dtype == np.float32
    assert ids.tolist() == [f"i{k}" for k in range(5)]
    np.testing.assert_array_equal(mapped, p.astype(np.float32))
    frame = read_preds(tmp_path, "oof", ["fox", "cat", "dog"])  # any order of the classes
    np.testing.assert_array_equal(frame["fox"], p[:, 2].astype(np.float32))
    assert list(frame.columns) == ["fox", "cat", "dog"] and frame.index.name == "id"


def test_a_missing_file_a_missing_or_extra_class_and_a_torn_pair_are_named(tmp_path):
    with pytest.raises(PipelineError, match=r"oof.npy: missing; run `dvc repro`"):
        read_probs(tmp_path, "oof", CLASSES)
    write_preds(tmp_path, "oof", ["a", "b"], probs(2, 0), CLASSES)
    assert has_preds(tmp_path, "oof") and not has_preds(tmp_path, "test")
    with pytest.raises(PipelineError, match=r"oof.npy: no column for classes \['owl'\]"):
        read_probs(tmp_path, "oof", [*CLASSES, "owl"])
    with pytest.raises(PipelineError, match=r"oof.npy: columns for classes \['fox'\] the comp"):
        read_probs(tmp_path, "oof", ["dog", "cat"])  # a stale file of more classes
    np.save(tmp_path / "oof.npy", probs(3, 1).astype(np.float32))  # rows of another run
    with pytest.raises(PipelineError, match=r"oof.npy: shape \(3, 3\) does not match .*oof.json"):
        read_probs(tmp_path, "oof", CLASSES)
    with pytest.raises(ValueError, match=r"shape \(2, 3\), ids x classes \(3, 3\)"):
        write_preds(tmp_path, "test", ["a", "b", "c"], probs(2, 0), CLASSES)


def test_the_mean_aligns_rows_by_id_and_refuses_other_ids(tmp_path):
    a, b = probs(4, 0), probs(4, 1)
    write_preds(tmp_path / "a", "test", ["w", "x", "y", "z"], a, CLASSES)
    write_preds(tmp_path / "b", "test", ["z", "y", "x", "w"], b[::-1], CLASSES)
    ids, mean = mean_preds([(tmp_path / "a", "test"), (tmp_path / "b", "test")], CLASSES)
    assert ids.tolist() == ["w", "x", "y", "z"]
    np.testing.assert_allclose(mean, (a + b) / 2, rtol=1e-6)
    write_preds(tmp_path / "c", "test", ["w", "x", "y", "q"], b, CLASSES)
    with pytest.raises(PipelineError, match=r"c/test.npy: its ids are not those of .*a/test.npy"):
        mean_preds([(tmp_path / "a", "test"), (tmp_path / "c", "test")], CLASSES)


@pytest.mark.parametrize(
    ("cell", "message"),
    [("", r"column 'dog' is empty at row 3"),
     ("abc", r"column 'dog' row 3 has 'abc', not a probability"),
     ("1.5", r"column 'dog' row 3 has '1.5', not a probability")],
)  # fmt: skip
def test_upload_checks_probabilities_as_numbers_and_names_the_cell(tmp_path, cell, message):
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    (prepared / "meta.json").write_text(
        json.dumps({"classes": CLASSES, "submission_kind": "probs"})
    )
    sample = pd.DataFrame({"id": ["NA", "b", "c"], **{c: 0.5 for c in CLASSES}})
    sample.to_csv(prepared / "sample_submission.csv", index=False)
    sub = sample.astype({"dog": object})
    sub.loc[1, "dog"] = cell
    sub.to_csv(tmp_path / "submission.csv", index=False)
    with pytest.raises(PipelineError, match=message):
        upload.validate(tmp_path / "submission.csv", prepared)
    sample.to_csv(tmp_path / "submission.csv", index=False)  # the id "NA" stays text
    upload.validate(tmp_path / "submission.csv", prepared)
