"""pseudo.extra: unlabeled images beyond the test set, indexed by the `extra` stage, predicted by
each fold's teachers, selected with the test set and trained on by the students; never validated
on, never submitted."""

from __future__ import annotations

import json
import shutil
import zipfile

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline import batches, roles, specs
from pipeline.files import PipelineError
from pipeline.index import read_folds, read_index, read_pool
from pipeline.params import parse_params
from pipeline.preds import has_preds, read_preds, write_preds
from pipeline.stages import extra, predict, pseudolabel, train
from tests.conftest import CLASSES, class_image, tiny_params
from tests.test_pseudo import fake_teacher, pseudo_params, teach


def write_pool(root, n: int = 3, size: int = 20, seed: int = 1):
    """n images of the tiny classes in a folder with a subfolder, plus what is not an image."""
    rng = np.random.default_rng(seed)
    (root / "more").mkdir(parents=True)
    for i in range(n):
        where = root / "more" if i % 2 else root
        Image.fromarray(class_image(i % 3, size, rng)).save(where / f"x{i}.png")
    (root / "notes.txt").write_text("not an image")
    (root / ".DS_Store").write_bytes(b"\0")
    return root


def prepare_cfg(cache_size: int | None = 16):
    return parse_params(tiny_params({"prepare": {"cache_size": cache_size}})).prepare


def test_a_folder_is_indexed_in_place_and_cached_at_the_prepare_size(workdir):
    pool = write_pool(workdir / "pool")
    meta = extra.run(str(pool), prepare_cfg())
    got = read_pool(str(pool))
    assert got.test["id"].tolist() == ["extra/more/x1.png", "extra/x0.png", "extra/x2.png"]
    assert got.test["path"].tolist() == [str(pool.resolve() / i[6:]) for i in got.test["id"]]
    assert got.images("test").shape == (3, 16, 16, 3) and meta["n_test"] == 3
    assert read_pool(None).test.empty  # no pseudo.extra: nothing read


def test_an_archive_is_extracted_and_gives_the_same_ids(workdir):
    pool = write_pool(workdir / "pool")
    archive = workdir / "pool.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in sorted(pool.rglob("*")):
            z.write(f, f.relative_to(pool).as_posix())
    extra.run(str(archive), prepare_cfg(None))
    got = read_pool(str(archive))
    assert got.test["id"].tolist() == ["extra/more/x1.png", "extra/x0.png", "extra/x2.png"]
    assert got.images("test") is None  # no cache: the files are decoded where they were put
    assert all((workdir / p).is_file() for p in got.test["path"])
    assert got.test["path"][0] == "data/extra/images/more/x1.png"


def test_a_broken_image_is_named_and_nothing_is_written(workdir):
    pool = write_pool(workdir / "pool")
    extra.run(str(pool), prepare_cfg())
    before = (workdir / "data/extra/test.csv").read_text()
    (pool / "more" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(PipelineError, match=r"(?s)pseudo.extra: 1 unreadable image.*broken\.jpg"):
        extra.run(str(pool), prepare_cfg())
    assert (workdir / "data/extra/test.csv").read_text() == before
    with pytest.raises(PipelineError, match=r"pseudo.extra: 'nowhere' does not exist"):
        extra.run("nowhere", prepare_cfg())
    (workdir / "empty").mkdir()
    with pytest.raises(PipelineError, match=r"no image file \(.png.*in 'empty'"):
        extra.run("empty", prepare_cfg())


def fake_pool_preds(root, fold: int, ids: list[str], probs: np.ndarray) -> None:
    write_preds(root / "preds" / "m" / f"fold{fold}", "extra", ids, probs, CLASSES)


def test_extra_images_are_kept_by_the_same_threshold_as_the_test_set(workdir, capsys):
    pool = write_pool(workdir / "pool", n=4)
    extra.run(str(pool), prepare_cfg())
    ids = read_pool(str(pool)).test["id"].tolist()
    test = np.array([[0.95, 0.03, 0.02]] * 3 + [[0.4, 0.35, 0.25]] * 5)  # 3 of 8 confident
    extra_probs = np.array([[0.02, 0.96, 0.02], [0.5, 0.3, 0.2], [0.05, 0.05, 0.9], [0.3] * 3])
    for k in (0, 1):
        fake_teacher(workdir, "m", k, test)
        fake_pool_preds(workdir, k, ids, extra_probs)
    ps = pseudo_params(threshold=0.9, class_cap=False, extra=str(pool))
    report = pseudolabel.run(ps, ["m"], [0, 1], "accuracy")
    labels = pd.read_csv(workdir / "pseudo/fold0/labels.csv")
    test_ids = read_index().test["id"].tolist()
    assert labels["id"].tolist() == test_ids[:3] + [ids[0], ids[2]]  # 0.96 and 0.9 kept
    assert labels["label"].tolist() == ["cat"] * 3 + ["dog", "fox"]
    assert report["fold0"]["kept"] == 5 and report["fold0"]["kept_extra"] == 2
    source = json.loads((workdir / "pseudo/fold0/source.json").read_text())
    assert (source["of"], source["of_extra"], source["extra"]) == (12, 4, str(pool))
    out = capsys.readouterr().out
    assert "5 of 8 test + 4 extra images kept (2 extra) (7 below the threshold" in out


def test_an_extra_id_that_is_a_test_id_is_refused(workdir):
    pool = write_pool(workdir / "pool", n=2)
    extra.run(str(pool), prepare_cfg())
    index_ids = read_index().test["id"]
    table = workdir / "data/extra/test.csv"
    frame = pd.read_csv(table)
    frame.loc[0, "id"] = index_ids[0]
    frame.to_csv(table, index=False)
    for k in (0, 1):
        fake_teacher(workdir, "m", k, np.full((8, 3), 1 / 3))
        fake_pool_preds(workdir, k, frame["id"].tolist(), np.full((2, 3), 1 / 3))
    with pytest.raises(PipelineError, match=rf"data/extra/test.csv: ids \['{index_ids[0]}'\]"):
        pseudolabel.run(pseudo_params(extra=str(pool)), ["m"], [0, 1], "accuracy")


def test_students_train_on_extra_images_and_never_validate_on_them(workdir):
    pool = write_pool(workdir / "pool", n=5, size=16)
    extra.run(str(pool), prepare_cfg())
    p = teach(workdir, {"pseudo": {"threshold": 0.0, "class_cap": False, "extra": str(pool)}})
    pool_ids = read_pool(str(pool)).test["id"]
    preds = read_preds(workdir / "preds/resnet10t/fold0", "extra", CLASSES)
    assert preds.index.tolist() == pool_ids.tolist()
    np.testing.assert_allclose(preds.sum(axis=1), 1, atol=1e-5)
    spec = specs.student_spec(p, "resnet10t", 0)
    assert len(spec.pseudo) == 13 and spec.pseudo["id"].isin(pool_ids).sum() == 5
    images, order = batches.pseudo_images(read_index(), spec.pseudo["id"], None, 16)
    test_part, pool_part = images.datasets
    assert (len(test_part), len(pool_part)) == (8, 5)
    assert spec.pseudo["id"].iloc[order[8:]].tolist() == pool_ids.iloc[pool_part.rows].tolist()
    train.run(p, "resnet10t", 0, student=True)
    info = json.loads((workdir / "students/models/resnet10t/fold0/model.json").read_text())
    assert info["pseudolabeled"] == 13
    predict.run(p, "resnet10t", 0, roles.student(1))
    oof = read_preds(workdir / "students/preds/resnet10t/fold0", "oof", CLASSES)
    folds = read_folds()
    assert set(oof.index) == set(folds.loc[folds["fold"] == 0, "id"])  # labeled rows only
    assert has_preds(workdir / "students/preds/resnet10t/fold0", "extra")
    shutil.rmtree(workdir / "data/extra")  # a student whose pool is gone says which stage to run
    with pytest.raises(PipelineError, match=r"data/extra/test.csv: missing; run `dvc repro extra`"):
        specs.student_spec(p, "resnet10t", 0)


def test_the_source_stage_lists_the_pool_and_names_a_missing_one(workdir):
    from pipeline.stages import download

    pool = write_pool(workdir / "pool", n=2)
    before = download.extra_manifest(str(pool))  # x0.png, more/x1.png, notes.txt
    assert before["files"] == 3 and download.extra_manifest(None) == {"extra": None}
    Image.open(pool / "x0.png").save(pool / "x5.png")
    assert download.extra_manifest(str(pool))["listing_sha256"] != before["listing_sha256"]
    with pytest.raises(PipelineError, match=r"pseudo.extra: 'gone' does not exist"):
        download.extra_manifest("gone")
