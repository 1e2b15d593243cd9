"""The embedded demo competition: Kaggle's layout, skewed, deterministic, solution kept apart."""

import filecmp
import io
import zipfile

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.files import PipelineError
from pipeline.params import Competition
from pipeline.stages.download import SKEWED, run, write_demo


def test_demo_layout_and_skew(tmp_path):
    write_demo(tmp_path, seed=3)
    train = pd.read_csv(tmp_path / "train.csv", dtype={"id": str})
    sample = pd.read_csv(tmp_path / "sample_submission.csv", dtype={"id": str})
    solution = pd.read_csv(tmp_path / "solution.csv", dtype={"id": str})
    assert list(train.columns) == ["id", "label"] == list(sample.columns)
    assert len(train) + len(sample) < 1797  # two classes lost two thirds of their train images
    assert all((tmp_path / "train" / f"{i}.png").exists() for i in train["id"])
    assert all((tmp_path / "test" / f"{i}.png").exists() for i in sample["id"])
    assert not set(train["id"]) & set(sample["id"])
    assert solution["id"].tolist() == sample["id"].tolist()
    counts = train["label"].value_counts()
    for cls in SKEWED:
        assert counts[cls] < 0.5 * counts.drop(list(SKEWED)).median()
    with Image.open(tmp_path / "train" / f"{train['id'][0]}.png") as im:
        assert im.size == (8, 8) and np.asarray(im).max() > 100


def test_demo_is_deterministic_from_seed(tmp_path):
    write_demo(tmp_path / "a", seed=5)
    write_demo(tmp_path / "b", seed=5)
    write_demo(tmp_path / "c", seed=6)
    for name in ("train.csv", "sample_submission.csv", "solution.csv"):
        assert filecmp.cmp(tmp_path / "a" / name, tmp_path / "b" / name, shallow=False)
    assert not filecmp.cmp(
        tmp_path / "a" / "train.csv", tmp_path / "c" / "train.csv", shallow=False
    )


def _zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _path_source(path) -> Competition:
    return Competition(
        source="path",
        name="x",
        path=str(path),
        files=[],
        metric="accuracy",
        layout="auto",
        task="auto",
        submission="auto",
        label_csv=None,
        id_column=None,
        label_column=None,
        group_column=None,
        positive_class=None,
    )


def test_local_competition_zip_with_nested_archives(tmp_path):
    inner = _zip({"train/a.png": b"png-a", "train/b.png": b"png-b"})
    bundle = tmp_path / "dogs-vs-cats.zip"
    bundle.write_bytes(_zip({"train.zip": inner, "sample_submission.csv": b"id,label\n1,0.5\n"}))
    raw = tmp_path / "data" / "raw"
    run(_path_source(bundle), seed=0, raw=raw)
    assert (raw / "train" / "a.png").read_bytes() == b"png-a"
    assert (raw / "sample_submission.csv").exists() and not (raw / "train.zip").exists()
    assert bundle.exists()  # the user's own file is left alone


def test_missing_local_path_is_named(tmp_path):
    with pytest.raises(PipelineError, match="nope.zip' does not exist"):
        run(_path_source(tmp_path / "nope.zip"), seed=0, raw=tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_a_local_folder_is_linked_in_place_never_copied(tmp_path):
    src = tmp_path / "input" / "comp"
    (src / "train").mkdir(parents=True)
    (src / "train.csv").write_text("id,label\na,cat\n")
    (src / "train" / "a.png").write_bytes(b"\x89PNG fake")
    (src / ".DS_Store").write_bytes(b"junk")
    with zipfile.ZipFile(src / "test.zip", "w") as z:
        z.writestr("test/b.png", b"\x89PNG fake too")
    before = sorted(p.relative_to(src) for p in src.rglob("*"))
    raw = tmp_path / "raw"
    run(_path_source(src), seed=0, raw=raw)
    assert (raw / "train.csv").is_symlink() and (raw / "train/a.png").is_symlink()
    assert (raw / "train/a.png").resolve() == (src / "train/a.png").resolve()
    assert (raw / "test/b.png").read_bytes() == b"\x89PNG fake too"  # archives: extracted
    assert not (raw / ".DS_Store").exists() and not (raw / "test.zip").exists()
    assert sorted(p.relative_to(src) for p in src.rglob("*")) == before  # the input untouched
