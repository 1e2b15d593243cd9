"""End to end per layout: `dvc repro` on a tiny generated competition in each layout Kaggle ships,
and a submission that matches its sample_submission in columns, ids and value types."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipeline.preds import read_preds
from tests import layout_fixtures as lf
from tests.conftest import TINY_PARAMS, Project, merge

pytestmark = pytest.mark.slow


def repro(
    tmp_path, writer, pseudo: bool = False
) -> tuple[Project, pd.DataFrame, pd.DataFrame, dict]:
    """`dvc repro` on the layout; the pseudolabel round only where `pseudo` (it is slow here)."""
    comp = tmp_path / "comp"
    over = writer(comp)
    proj = Project(tmp_path / "proj")
    comp_params = {"competition": {"source": "path", "path": str(comp), **over}}
    proj.set_params(merge(TINY_PARAMS, {**comp_params, "pseudo": {"enabled": pseudo}}))
    proj.run(["dvc", "repro"])
    sub = pd.read_csv(proj.path / "submissions/submission.csv")
    sample = pd.read_csv(comp / "sample_submission.csv")
    meta = json.loads((proj.path / "data/prepared/meta.json").read_text())
    # exactly the sample's columns, ids in its order, and the same type in every column
    assert list(sub.columns) == list(sample.columns)
    assert sub.iloc[:, 0].tolist() == sample.iloc[:, 0].tolist()
    assert sub.dtypes.to_dict() == sample.dtypes.to_dict()
    return proj, sub, sample, meta


def test_csv_layout_ordinal_aptos(tmp_path):
    _, sub, _, meta = repro(tmp_path, lf.aptos)
    assert (meta["layout"], meta["task"], meta["submission_kind"]) == (
        "csv",
        "single_label",
        "label",
    )
    assert set(sub["diagnosis"]) <= {0, 1, 2, 3, 4}


def test_class_folders_plant_seedlings(tmp_path):
    _, sub, _, meta = repro(tmp_path, lf.plant_seedlings)
    assert (meta["layout"], meta["submission_kind"]) == ("class_folders", "label")
    assert set(sub["species"]) <= set(lf.SPECIES)


def test_label_in_file_name_dogs_vs_cats(tmp_path):
    proj, sub, _, meta = repro(tmp_path, lf.dogs_vs_cats)
    assert (meta["layout"], meta["submission_kind"]) == ("filename_labels", "binary")
    assert meta["positive_class"] == "dog"
    # the written label is P(dog), the final blend's dog column
    blend = read_preds(proj.path / "final", "test", ["cat", "dog"])
    np.testing.assert_allclose(sub["label"], blend.loc[sub["id"].astype(str), "dog"], atol=1e-6)


def test_pixels_in_csv_digit_recognizer(tmp_path):
    proj, sub, _, meta = repro(tmp_path, lf.digit_recognizer)
    assert (meta["layout"], meta["id_base"]) == ("pixels_csv", 1)
    assert sub["ImageId"].tolist() == list(range(1, 7))
    assert set(sub["Label"]) <= {0, 1, 2, 3}
    assert (proj.path / "data/prepared/images/test/1.png").exists()


def test_multi_label_tags_planet(tmp_path):
    proj, sub, _, meta = repro(tmp_path, lf.planet, pseudo=True)
    assert (meta["task"], meta["submission_kind"]) == ("multi_label", "tags")
    tags = sub["tags"].str.split()
    assert all(t and set(t) <= set(lf.TAGS) for t in tags)
    thresholds = json.loads((proj.path / "ensemble/thresholds.json").read_text())["thresholds"]
    assert set(thresholds) == set(lf.TAGS)
    cv = json.loads((proj.path / "metrics/cv.json").read_text())
    assert cv["metric"] == "f2_samples"
    assert cv["f2_samples"] >= cv["at_threshold_0.5"]["f2_samples"]
    # the students learn from tags: pseudolabels are tag sets, the submission is the students'
    labels = pd.read_csv(proj.path / "pseudo/fold0/labels.csv", keep_default_na=False)
    assert len(labels) and all(t and set(t.split()) <= set(lf.TAGS) for t in labels["label"])
    final = json.loads((proj.path / "metrics/final.json").read_text())
    assert final["submitted"] == "student resnet10t" and "student_cv" in final
