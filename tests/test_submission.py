"""A submission is shaped like sample_submission.csv and checked before it is written."""

import numpy as np
import pandas as pd
import pytest

from pipeline.files import PipelineError
from pipeline.metrics import shape_submission, validate_submission

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
