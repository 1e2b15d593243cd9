"""Bad input in where the data comes from: folders behind links, a local source that changes
between runs, phone photos turned by EXIF, archives shipped beside their extracted folders, `~`
in competition.path. Each case runs the real commands (`python -m pipeline STAGE` in-process, or
`dvc repro` in a copy of the project)."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline import cli
from pipeline.index import load_image, read_index, resize
from tests import layout_fixtures as lf
from tests.conftest import TINY_PARAMS, Project, merge, write_csv_competition
from tests.test_bad_input import write_params
from tests.test_e2e import ran

sys.path.insert(0, str(Path(__file__).parent))
from fake_kaggle import FakeCreds, FakeKaggle  # noqa: E402


def run_stages(*stages: str, capsys=None) -> None:
    for stage in stages:
        assert cli.main([stage]) == 0, capsys.readouterr().err if capsys else stage


def index_of(root: Path):
    return read_index(root / "data" / "prepared")


# --- item 3: linked folders --------------------------------------------------------------------


def relink(folder: Path, elsewhere: Path) -> None:
    """Move `folder` to `elsewhere` and leave a link to it in its place."""
    elsewhere.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(folder, elsewhere)
    folder.symlink_to(elsewhere, target_is_directory=True)


LINKS = {
    "a linked class folder": lambda comp, away: relink(comp / "train" / lf.SPECIES[-1], away),
    "a linked train folder": lambda comp, away: relink(comp / "train", away),
    "a link cycle": lambda comp, away: (comp / "train" / lf.SPECIES[0] / "loop").symlink_to(
        comp / "train"
    ),
}


@pytest.mark.parametrize("where", ["path source", "data/raw"])
@pytest.mark.parametrize("link", list(LINKS))
def test_linked_folders_are_followed(link, where, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    comp = tmp_path / "comp" if where == "path source" else tmp_path / "data" / "raw"
    lf.plant_seedlings(comp)
    LINKS[link](comp, tmp_path / "elsewhere" / "away")
    write_params(tmp_path, {"competition": {"path": str(comp), "metric": "f1_micro"}})
    run_stages(*(["download"] if where == "path source" else []), "prepare")
    index = index_of(tmp_path)
    assert index.classes == sorted(lf.SPECIES)
    assert index.train["label"].value_counts().to_dict() == {sp: 6 for sp in lf.SPECIES}
    assert index.train["path"].map(lambda p: Path(p).is_file()).all()


# --- item 5: EXIF orientation -------------------------------------------------------------------


def upright_photo() -> np.ndarray:
    """24 px tall, 12 wide, in flat blocks (JPEG keeps them): red top, green middle, blue foot."""
    img = np.zeros((24, 12, 3), np.uint8)
    img[:8, :, 0], img[8:16, :, 1], img[16:, :, 2] = 220, 220, 220
    return img


def save_turned(path: Path, img: np.ndarray) -> None:
    """As a phone held upright saves it: the sensor's pixels (turned 90 degrees anticlockwise)
    and EXIF Orientation 6 (turn them 90 degrees clockwise to show)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(img).transpose(Image.Transpose.ROTATE_90).save(
        path, quality=95, exif=exif.tobytes()
    )


def test_exif_orientation_is_applied_when_cached(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    raw = write_csv_competition(tmp_path / "data" / "raw")
    (raw / "train" / "tr000.png").unlink()
    save_turned(raw / "train" / "tr000.jpg", upright_photo())
    write_params(tmp_path, None)
    run_stages("prepare", capsys=capsys)
    index = index_of(tmp_path)
    row = index.train.index[index.train["id"] == "tr000"][0]
    cached = index.images("train")[row].astype(int)
    want = resize(upright_photo(), 16).astype(int)
    sideways = resize(np.rot90(upright_photo()), 16).astype(int)
    assert np.abs(cached - want).mean() < 8 < np.abs(cached - sideways).mean()
    # the path without a cache (training without prepare.cache_size, diagnose, the kernel)
    decoded = load_image(raw / "train" / "tr000.jpg")
    assert decoded.shape == (24, 12, 3)  # sideways: (12, 24, 3)
    assert np.abs(decoded - upright_photo().astype(int)).mean() < 8


# --- item 10: an archive beside its extracted folder ----------------------------------------------


def zip_of(folder: Path, prefix: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for f in sorted(p for p in folder.rglob("*") if p.is_file()):
            z.writestr(prefix + f.relative_to(folder).as_posix(), f.read_bytes())
    return buf.getvalue()


@pytest.mark.parametrize("prefix", ["train/", ""], ids=["zip of train/", "zip of its files"])
@pytest.mark.parametrize("removed", [0, 2], ids=["complete", "two files missing"])
def test_archive_beside_its_extracted_folder(prefix, removed, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    comp = write_csv_competition(tmp_path / "comp")
    (comp / "train.zip").write_bytes(zip_of(comp / "train", prefix))
    for f in sorted((comp / "train").iterdir())[:removed]:
        f.unlink()
    write_params(tmp_path, {"competition": {"path": str(comp)}})
    run_stages("download", "prepare", capsys=capsys)
    assert f"{36 - removed} of its 36 files were extracted already" in capsys.readouterr().out
    raw = tmp_path / "data" / "raw"
    names = sorted(p.name for p in (raw / "train").iterdir())
    assert names == [f"tr{i:03d}.png" for i in range(36)]
    assert not (raw / "train.zip").exists() and not (raw / "train" / "train").exists()
    assert len(index_of(tmp_path).train) == 36
    assert (comp / "train.zip").exists()  # the source is left alone


# --- item 11: `~` in competition.path ----------------------------------------------------------


def test_home_in_competition_path_is_expanded(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    write_csv_competition(tmp_path / "home" / "comps" / "tiny")
    write_params(tmp_path, {"competition": {"path": "~/comps/tiny"}})
    run_stages("download", "prepare", capsys=capsys)
    assert len(index_of(tmp_path).train) == 36


# --- item 4: a local source that changes --------------------------------------------------------

pytest_slow = pytest.mark.slow


def stale(proj: Project, stages: tuple[str, ...] = ("source", "download", "prepare")) -> str:
    """`dvc status` of the first stages, less the `source` stage (always changed by design)."""
    out = proj.run(["dvc", "status", *stages]).stdout
    return out.replace("source:\n\talways changed\n", "").strip()


@pytest_slow
def test_a_changing_local_source_reruns_download_and_prepare(project, tiny_comp):
    assert ran(project.run(["dvc", "repro", "prepare"])) == ["download", "prepare"]
    assert stale(project) == ""
    assert ran(project.run(["dvc", "repro", "prepare"])) == []  # nothing else reruns
    # an image added (and labelled): download and prepare are stale once the listing is read
    Image.new("RGB", (12, 12), "red").save(tiny_comp / "train" / "tr036.png")
    labels = pd.read_csv(tiny_comp / "train.csv")
    labels.loc[len(labels)] = ["tr036", "cat"]
    labels.to_csv(tiny_comp / "train.csv", index=False)
    assert "(source" in project.run(["pipeline", "summary"]).stdout  # before DVC can see it
    project.run(["dvc", "repro", "source"])
    assert "download:" in stale(project)
    assert ran(project.run(["dvc", "repro", "prepare"])) == ["download", "prepare"]
    assert "tr036" in set(index_of(project.path).train["id"])
    # an image removed (and its row): the dangling link never breaks DVC or download
    (tiny_comp / "train" / "tr000.png").unlink()
    labels[labels["id"] != "tr000"].to_csv(tiny_comp / "train.csv", index=False)
    assert ran(project.run(["dvc", "repro", "download"])) == ["download"]
    assert ran(project.run(["dvc", "repro", "prepare"])) == ["prepare"]
    train = index_of(project.path).train
    assert "tr000" not in set(train["id"]) and len(train) == 36
    assert not (project.path / "data/raw/train/tr000.png").is_symlink()
    assert stale(project) == ""
    # a link in the source to nothing: left out and named; prepare then names the row it lacks
    (tiny_comp / "train" / "gone.png").symlink_to(tiny_comp / "nowhere.png")
    out = project.run(["dvc", "repro", "prepare"]).stdout
    assert "1 link(s)" in out and "train/gone.png" in out
    assert not (project.path / "data/raw/train/gone.png").is_symlink()
    (tiny_comp / "train" / "tr001.png").unlink()
    (tiny_comp / "train" / "tr001.png").symlink_to(tiny_comp / "nowhere.png")
    res = project.run(["dvc", "repro", "prepare"], check=False)
    assert res.returncode != 0 and "Errno" not in res.stderr + res.stdout
    assert "no image file for row 2 (id 'tr001')" in res.stderr + res.stdout


@pytest_slow
def test_demo_and_kaggle_downloads_never_rerun_needlessly(tmp_path, monkeypatch):
    demo = Project(tmp_path / "demo")
    assert ran(demo.run(["dvc", "repro", "download"])) == ["download"]
    assert ran(demo.run(["dvc", "repro", "download"])) == []
    for key in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_CONFIG_DIR"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with FakeKaggle(FakeCreds(username="u", key="k", api_token="t")) as server:
        for key, value in server.env().items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("KAGGLE_USERNAME", "u")
        monkeypatch.setenv("KAGGLE_KEY", "k")
        comp = write_csv_competition(tmp_path / "bundle")
        server.add_competition("fake-comp", bundle=zip_of(comp, ""))
        proj = Project(tmp_path / "kaggle")
        proj.set_params(
            merge(TINY_PARAMS, {"competition": {"source": "kaggle", "name": "fake-comp"}})
        )
        assert ran(proj.run(["dvc", "repro", "download"])) == ["download"]
        calls = len(server.calls)
        assert ran(proj.run(["dvc", "repro", "download"])) == []
        assert len(server.calls) == calls
        assert stale(proj, ("source", "download")) == ""


def test_a_git_repository_without_a_commit_is_one_plain_line(tmp_path, monkeypatch):
    """dvclive reads the current commit: `git init` with nothing committed gets what to do."""
    from dvclive import Live

    from pipeline.files import PipelineError
    from pipeline.record import open_live

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PipelineError, match=r"git in .*commit once \(`git add -A"):
        open_live(Live, tmp_path / "dvclive")
    subprocess.run(["git", "-c", "user.name=u", "-c", "user.email=u@x", "commit", "-q",
                    "--allow-empty", "-m", "init"], check=True)  # fmt: skip
    assert open_live(Live, tmp_path / "dvclive") is not None


@pytest_slow
def test_data_raw_is_listed_not_hashed_and_an_edit_by_hand_is_refused(tmp_path):
    demo = Project(tmp_path / "demo")
    assert ran(demo.run(["dvc", "repro", "prepare"])) == ["download", "prepare"]
    lock = (demo.path / "dvc.lock").read_text()
    assert "data/raw.json" in lock and "path: data/raw\n" not in lock  # no image hashed
    labels = demo.path / "data/raw/train.csv"
    original = labels.read_text()
    labels.write_text(original.replace(",0\n", ",1\n", 1))  # one label edited by hand
    assert "(source" in demo.run(["pipeline", "summary"]).stdout
    res = demo.run(["dvc", "repro", "prepare"], check=False)
    out = res.stdout + res.stderr
    assert res.returncode != 0 and "Traceback" not in out
    assert "data/raw: changed since download listed it in data/raw.json" in out
    assert "`dvc repro -f -s download`" in out
    demo.run(["dvc", "repro", "-f", "-s", "download"])  # the demo written again: the edit undone
    assert labels.read_text() == original
    assert ran(demo.run(["dvc", "repro", "prepare"])) == ["prepare"]
    assert stale(demo) == ""


def test_summary_says_when_dvc_status_cannot_tell(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    assert cli.stale_stages(timeout=1e-6) == ([], "`dvc status` gave no answer within 0 s")
    assert cli.stale_stages()[1].startswith("`dvc status` failed")  # not a DVC repository
