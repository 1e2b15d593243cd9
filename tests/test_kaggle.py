"""Kaggle I/O against a loopback fake Kaggle: the real `kaggle` CLI runs as a subprocess.

    pytest tests/test_kaggle.py

Every test runs with HOME in a temporary folder (a real ~/.kaggle is never read), the CLI
pointed at tests/fake_kaggle.py on 127.0.0.1, and a check at teardown that neither the captured
output nor any file written under tmp_path holds a credential value.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import sys
import tarfile
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from pipeline import kaggle
from pipeline.files import PipelineError, write_json
from pipeline.stages import upload

sys.path.insert(0, str(Path(__file__).parent))
from fake_kaggle import FakeCreds, FakeKaggle  # noqa: E402

CREDS = FakeCreds(
    username="fakeuser123", key="secretkey-XYZ-8f3a1c0d", api_token="tokenvalue-QRS-77b2e9aa"
)
SECRETS = (CREDS.key, CREDS.api_token)
COMP = "fake-comp"


# ---- fixtures and helpers --------------------------------------------------------------------


class Output:
    """Captured stdout/stderr, kept so that teardown can scan all of it for secrets."""

    def __init__(self, capfd: pytest.CaptureFixture[str]) -> None:
        self._capfd = capfd
        self.seen = ""

    def read(self) -> str:
        captured = self._capfd.readouterr()
        self.seen += captured.out + captured.err
        return captured.out + captured.err


@pytest.fixture
def output(capfd: pytest.CaptureFixture[str]) -> Output:
    return Output(capfd)


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, output: Output):
    """A running fake Kaggle, the CLI pointed at it, no credentials set (tests add them)."""
    home = tmp_path / "home"
    home.mkdir()
    for key in list(os.environ):
        if key.startswith("KAGGLE_") or key.lower().endswith("_proxy") or key == "VERBOSE":
            monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    with FakeKaggle(CREDS) as server:
        for key, value in server.env().items():
            monkeypatch.setenv(key, value)
        yield server
    output.read()
    assert_no_secrets(output.seen, tmp_path)


@pytest.fixture
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAGGLE_USERNAME", CREDS.username)
    monkeypatch.setenv("KAGGLE_KEY", CREDS.key)


def assert_no_secrets(text: str, root: Path) -> None:
    for secret in SECRETS:
        assert secret not in text
        for path in root.rglob("*"):
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), path


def make_zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def make_tar(entries: dict[str, bytes], mode: str = "w", links: dict[str, str] | None = None):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tf.addfile(info)
    return buf.getvalue()


def tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != kaggle.MARKER
    }


TRAIN_IMAGES = {"train/a.png": b"png-a", "train/b.png": b"png-b"}
TEST_IMAGES = {"1.png": b"png-1", "2.png": b"png-2"}  # zipped without a folder
CSVS = {"train.csv": b"id,label\na,cat\nb,dog\n", "sample_submission.csv": b"id,label\n1,cat\n"}


def bundle_with_nested_zips() -> bytes:
    return make_zip(
        {**CSVS, "train.zip": make_zip(TRAIN_IMAGES), "test.zip": make_zip(TEST_IMAGES)}
    )


# ---- download --------------------------------------------------------------------------------


def test_download_extracts_bundle_and_nested_archives(fake, api_key, tmp_path):
    fake.add_competition(COMP, bundle=bundle_with_nested_zips())
    dest = tmp_path / "data" / "raw"

    kaggle.download_competition(COMP, dest)

    expected = {**CSVS, **TRAIN_IMAGES, **{f"test/{k}": v for k, v in TEST_IMAGES.items()}}
    assert tree(dest) == expected
    assert fake.api_calls() == ["DownloadDataFiles"]
    assert fake.calls[0].body == {"competitionName": COMP}
    # Only data/raw appears beside it: no temporary folders left behind.
    assert [p.name for p in dest.parent.iterdir()] == ["raw"]


def test_finished_download_is_not_repeated_unless_forced(fake, api_key, tmp_path, output):
    fake.add_competition(COMP, bundle=bundle_with_nested_zips())
    dest = tmp_path / "raw"
    kaggle.download_competition(COMP, dest)
    first = len(fake.calls)
    output.read()

    kaggle.download_competition(COMP, dest)
    assert len(fake.calls) == first
    assert "already" in output.read()

    kaggle.download_competition(COMP, dest, force=True)
    assert fake.api_calls() == ["DownloadDataFiles", "DownloadDataFiles"]
    assert tree(dest)["train.csv"] == CSVS["train.csv"]


def test_download_of_chosen_files_and_7z_archives(fake, api_key, tmp_path):
    import py7zr  # a project dependency: this check never skips

    seven = io.BytesIO()
    with py7zr.SevenZipFile(seven, "w") as zf:  # planet's layout: a tar inside a 7z
        zf.writestr(make_tar({"train-jpg/x.jpg": b"jpg-x"}), "train-jpg.tar")
    files = {"train.csv": CSVS["train.csv"], "train-jpg.tar.7z": seven.getvalue()}
    fake.add_competition(COMP, bundle=b"", files=files)
    dest = tmp_path / "raw"

    kaggle.download_competition(COMP, dest, files=["train.csv", "train-jpg.tar.7z"])

    assert tree(dest) == {"train.csv": CSVS["train.csv"], "train-jpg/x.jpg": b"jpg-x"}
    assert [c.body["fileName"] for c in fake.calls if c.method == "POST"] == list(files)
    # A different selection of files is a different download: it is fetched, not skipped.
    fake.competitions[COMP].bundle = bundle_with_nested_zips()
    kaggle.download_competition(COMP, dest)
    assert "train-jpg/x.jpg" not in tree(dest)


@pytest.mark.parametrize(
    "bundle",
    [
        make_zip({"train.csv": b"ok", "../evil.txt": b"pwned"}),
        make_zip({"train.csv": b"ok", "train.zip": make_zip({"../../evil.txt": b"pwned"})}),
    ],
    ids=["top-level", "nested"],
)
def test_zip_slip_is_refused_and_nothing_written_outside(fake, api_key, tmp_path, bundle):
    fake.add_competition(COMP, bundle=bundle)
    dest = tmp_path / "data" / "raw"

    with pytest.raises(PipelineError, match=r"refusing to extract .*evil\.txt"):
        kaggle.download_competition(COMP, dest)

    assert not dest.exists()
    assert not list(tmp_path.rglob("evil.txt"))
    assert list(dest.parent.iterdir()) == []


def test_truncated_bundle_is_reported_by_name(fake, api_key, tmp_path):
    good = bundle_with_nested_zips()
    fake.add_competition(COMP, bundle=good[: len(good) // 2])
    dest = tmp_path / "raw"
    with pytest.raises(PipelineError, match=rf"{COMP}\.zip is truncated or corrupt"):
        kaggle.download_competition(COMP, dest)
    assert not dest.exists()


# ---- the errors a user meets -----------------------------------------------------------------


def test_rules_not_accepted_names_the_rules_page(fake, api_key, tmp_path):
    fake.add_competition(COMP, bundle=bundle_with_nested_zips(), rules_accepted=False)
    dest = tmp_path / "raw"
    with pytest.raises(PipelineError) as err:
        kaggle.download_competition(COMP, dest)
    assert f"https://www.kaggle.com/competitions/{COMP}/rules" in str(err.value)
    assert "403" in str(err.value)
    assert not dest.exists()


def test_missing_credentials_names_every_way_to_set_them(fake, tmp_path):
    fake.add_competition(COMP, bundle=bundle_with_nested_zips())
    dest = tmp_path / "raw"
    with pytest.raises(PipelineError) as err:
        kaggle.download_competition(COMP, dest)
    for hint in ("~/.kaggle/kaggle.json", "KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        assert hint in str(err.value)
    assert fake.calls == []  # the CLI stops before sending anything
    assert not dest.exists()


def test_api_token_alone_is_enough(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("KAGGLE_API_TOKEN", CREDS.api_token)
    fake.add_competition(COMP, bundle=bundle_with_nested_zips())
    kaggle.download_competition(COMP, tmp_path / "raw")
    assert tree(tmp_path / "raw")["train.csv"] == CSVS["train.csv"]


def test_unknown_competition(fake, api_key, tmp_path):
    dest = tmp_path / "raw"
    with pytest.raises(PipelineError, match=r"no competition 'no-such-comp' \(404\)"):
        kaggle.download_competition("no-such-comp", dest)
    assert not dest.exists()


def test_failed_download_keeps_the_previous_one(fake, api_key, tmp_path):
    fake.add_competition(COMP, bundle=bundle_with_nested_zips())
    dest = tmp_path / "raw"
    kaggle.download_competition(COMP, dest)
    before = tree(dest)
    fake.competitions[COMP].rules_accepted = False
    with pytest.raises(PipelineError):
        kaggle.download_competition(COMP, dest, force=True)
    assert tree(dest) == before


def test_no_network(fake, api_key, tmp_path, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on once this closes
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for var in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.setenv(var, f"http://127.0.0.1:{port}")
    with pytest.raises(PipelineError, match="cannot reach Kaggle"):
        kaggle.download_competition(COMP, tmp_path / "raw")


@pytest.mark.parametrize("port", [44013, 40301, 34040])
def test_a_status_code_is_never_read_from_a_port_number(port):
    refused = (
        f"ProxyError('Unable to connect to proxy', NewConnectionError(\"Failed to establish a new "
        f'connection: [Errno 111] Connection refused")) for http://127.0.0.1:{port}'
    )
    assert kaggle._explain_failure(refused, COMP, ["competitions", "download"]).startswith(
        "cannot reach Kaggle"
    )  # the port's digits once read as a 401: "no Kaggle credentials found"
    assert kaggle._explain_failure("401 - Unauthorized", COMP, ["competitions", "download"]) == (
        kaggle.CREDENTIALS_HELP
    )
    assert "(403)" in kaggle._explain_failure("HTTP 403", COMP, ["competitions", "download"])


def test_kaggle_command_missing(fake, tmp_path, monkeypatch):
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setattr(sys, "executable", str(empty / "python"))
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(PipelineError, match="pip install kaggle"):
        kaggle.download_competition(COMP, tmp_path / "raw")


def test_cli_output_echoing_credentials_is_not_relayed(fake, api_key, tmp_path, capfd):
    fake.add_competition(COMP, bundle=b"", echo_auth=True)
    with pytest.raises(PipelineError) as err:
        kaggle.download_competition(COMP, tmp_path / "raw")
    assert "withheld" in str(err.value)
    assert CREDS.key not in str(err.value)
    assert CREDS.key not in capfd.readouterr().err  # nor in what was shown live


def test_download_shows_the_cli_progress_as_it_comes(fake, api_key, tmp_path, capfd):
    fake.add_competition(COMP, bundle=bundle_with_nested_zips())
    kaggle.download_competition(COMP, tmp_path / "raw")
    streamed = capfd.readouterr().err
    assert f"Downloading {COMP}.zip" in streamed and "100%|" in streamed  # the CLI's own bar


# ---- safe_extract on its own -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("abs.zip", make_zip({"/etc/evil.txt": b"x"})),
        ("slip.tar", make_tar({"../evil.txt": b"x"})),
        ("abs.tar.gz", make_tar({"/tmp/evil.txt": b"x"}, mode="w:gz")),
        ("link.tar", make_tar({}, links={"data/escape": "../../outside"})),
    ],
)
def test_safe_extract_refuses_escaping_entries(tmp_path, name, data):
    archive = tmp_path / name
    archive.write_bytes(data)
    dest = tmp_path / "out"
    with pytest.raises(PipelineError, match=f"refusing to extract {name}"):
        kaggle.safe_extract(archive, dest)
    assert not any(dest.rglob("*"))


def test_safe_extract_tar_gz_and_inner_links(tmp_path):
    data = make_tar({"d/a.txt": b"a"}, mode="w:gz", links={"d/b.txt": "a.txt"})
    archive = tmp_path / "x.tar.gz"
    archive.write_bytes(data)
    kaggle.safe_extract(archive, tmp_path / "out")
    assert (tmp_path / "out/d/b.txt").read_bytes() == b"a"


@pytest.mark.parametrize("name", ["t.zip", "t.tar.gz"])
def test_safe_extract_reports_truncation(tmp_path, name):
    full = make_zip({"a.bin": bytes(range(256)) * 64}) if name.endswith("zip") else None
    full = full or make_tar({"a.bin": bytes(range(256)) * 64}, mode="w:gz")
    archive = tmp_path / name
    archive.write_bytes(full[: len(full) // 2])
    with pytest.raises(PipelineError, match=rf"{name} is truncated or corrupt"):
        kaggle.safe_extract(archive, tmp_path / "out")


def test_7z_without_py7zr_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "py7zr", None)  # makes `import py7zr` fail
    archive = tmp_path / "train.7z"
    archive.write_bytes(b"7z\xbc\xaf\x27\x1c")
    with pytest.raises(PipelineError, match=r"train\.7z .*pip install py7zr"):
        kaggle.safe_extract(archive, tmp_path / "out")


# ---- upload ----------------------------------------------------------------------------------


SAMPLE = "id,label\n1,cat\n2,cat\n3,cat\n"
GOOD = "id,label\n1,dog\n2,cat\n3,dog\n"


def stage_files(root: Path, submission: str = GOOD) -> dict[str, Path]:
    """The files `upload` reads, as the earlier stages leave them."""
    prepared = root / "data" / "prepared"
    prepared.mkdir(parents=True)
    (prepared / "sample_submission.csv").write_text(SAMPLE)
    write_json(prepared / "meta.json", {"classes": ["cat", "dog"], "submission_kind": "label"})
    write_json(root / "metrics" / "cv.json", {"metric": "accuracy", "cv": 0.975})
    sub = root / "submissions" / "submission.csv"
    sub.parent.mkdir()
    sub.write_text(submission)
    return {
        "submission": sub,
        "prepared_dir": prepared,
        "metrics_path": root / "metrics" / "cv.json",
        "receipt_path": root / "submissions" / "receipt.json",
        "history": root / "submissions" / "history.csv",
    }


def run_upload(paths: dict[str, Path], enabled: bool = True, attempts: int = 3):
    return upload.run(
        competition=COMP,
        enabled=enabled,
        message=None,
        poll_attempts=attempts,
        poll_interval_s=0.0,
        models=["resnet18", "convnext_tiny"],
        **paths,
    )


def test_upload_sends_the_exact_bytes_and_records_the_receipt(fake, api_key, tmp_path):
    fake.add_competition(COMP, bundle=b"", public_score="0.87654")
    paths = stage_files(tmp_path)

    run_upload(paths)

    sent = paths["submission"].read_bytes()
    assert list(fake.uploads.values()) == [sent]
    receipt = json.loads(paths["receipt_path"].read_text())
    (created,) = fake.submissions
    assert receipt["submission_ref"] == created["ref"]
    assert receipt["status"] == "complete"
    assert receipt["public_score"] == pytest.approx(0.87654)
    assert receipt["sha256"] == hashlib.sha256(sent).hexdigest()
    assert receipt["message"] == created["description"]
    for part in ("accuracy=0.97500", "resnet18", "convnext_tiny", "git "):
        assert part in receipt["message"]
    assert fake.api_calls()[:2] == ["StartSubmissionUpload", "CreateSubmission"]
    assert "ListSubmissions" in fake.api_calls()


def test_two_uploads_make_two_history_rows_and_refresh_fills_their_scores(fake, api_key, tmp_path):
    fake.add_competition(COMP, bundle=b"", statuses=["PENDING", "PENDING", "COMPLETE"],
                         public_score="0.5")  # fmt: skip
    paths = stage_files(tmp_path)
    run_upload(paths, attempts=1)
    run_upload(paths, attempts=1)
    history = pd.read_csv(paths["history"])
    assert len(history) == 2 and (history["status"] == "pending").all()
    assert history["cv"].tolist() == [0.975, 0.975] and history["public_score"].isna().all()
    assert history["submission_ref"].tolist() == [s["ref"] for s in fake.submissions]
    assert history["git_rev"].notna().all() and history["params_hash"].notna().all()
    plot = paths["history"].with_name("cv_lb.json")
    assert json.loads(plot.read_text()) == []  # nothing scored yet: nothing to draw
    upload.refresh(paths["history"], attempts=1, interval_s=0.0)
    history = pd.read_csv(paths["history"])
    assert (history["status"] == "complete").all()
    assert history["public_score"].tolist() == [0.5, 0.5]
    points = json.loads(plot.read_text())
    assert [(p["cv"], p["public_score"]) for p in points] == [(0.975, 0.5), (0.975, 0.5)]


def test_message_names_cv_scores_models_and_revision(tmp_path):
    cv = tmp_path / "cv.json"
    write_json(cv, {"accuracy": 0.5, "logloss": 1.25, "folds": [0, 1]})
    message = upload.build_message(cv, ["resnet18"])
    assert message.startswith("cv accuracy=0.50000, logloss=1.25000 | models resnet18 | git ")
    assert len(upload.build_message(cv, ["m" * 300])) <= upload.MAX_MESSAGE_LEN


def test_upload_polls_a_bounded_number_of_times(fake, api_key, tmp_path):
    fake.add_competition(COMP, bundle=b"", statuses=["PENDING"])
    receipt = run_upload(stage_files(tmp_path), attempts=2)
    assert receipt["status"] == "pending"
    assert receipt["public_score"] is None
    assert fake.api_calls().count("ListSubmissions") == 2


def test_upload_scoring_error_fails_after_writing_the_receipt(fake, api_key, tmp_path):
    fake.add_competition(COMP, bundle=b"", statuses=["ERROR"])
    paths = stage_files(tmp_path)
    with pytest.raises(PipelineError, match="could not score"):
        run_upload(paths)
    assert json.loads(paths["receipt_path"].read_text())["status"] == "error"


@pytest.mark.parametrize(
    "bad",
    [
        "id,label\n1,dog\n2,cat\n",  # an id missing
        "id,label\n1,dog\n2,cat\n3,dog\n3,dog\n",  # an id twice
        "id,label\n1,dog\n2,\n3,dog\n",  # an empty value
        "id,label\n1,dog\n2,bird\n3,dog\n",  # not a class
        "id,prediction\n1,dog\n2,cat\n3,dog\n",  # wrong column
    ],
)
def test_invalid_submission_is_never_sent(fake, api_key, tmp_path, bad):
    fake.add_competition(COMP, bundle=b"")
    paths = stage_files(tmp_path, submission=bad)
    with pytest.raises(PipelineError, match="submission.csv"):
        run_upload(paths)
    assert fake.calls == []
    assert not paths["receipt_path"].exists()


def test_disabled_upload_writes_a_skipped_receipt_with_the_local_score(fake, api_key, tmp_path):
    paths = stage_files(tmp_path)
    write_json(paths["submission"].parent / "local_score.json", {"accuracy": 0.9612})
    run_upload(paths, enabled=False)
    receipt = json.loads(paths["receipt_path"].read_text())
    assert receipt["status"] == "skipped"
    assert receipt["local_score"] == {"accuracy": 0.9612}
    assert fake.calls == []


def test_upload_rules_not_accepted(fake, api_key, tmp_path):
    fake.add_competition(COMP, bundle=b"", rules_accepted=False)
    paths = stage_files(tmp_path)
    with pytest.raises(PipelineError, match=f"competitions/{COMP}/rules"):
        run_upload(paths)
    assert fake.uploads == {}
    assert not paths["receipt_path"].exists()


# ---- the download stage as a command ---------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("rules", "competitions/{comp}/rules"),
        ("unknown", "competition.name"),
        ("no_credentials", "KAGGLE_API_TOKEN"),
    ],
)
def test_download_stage_exits_non_zero_with_the_message(
    fake, tmp_path, monkeypatch, output, case, expected
):
    import subprocess

    import yaml

    from tests.conftest import tiny_params

    if case != "no_credentials":
        monkeypatch.setenv("KAGGLE_USERNAME", CREDS.username)
        monkeypatch.setenv("KAGGLE_KEY", CREDS.key)
    if case != "unknown":
        fake.add_competition(COMP, bundle=bundle_with_nested_zips(), rules_accepted=case != "rules")
    work = tmp_path / "work"
    work.mkdir()
    params = tiny_params({"competition": {"source": "kaggle", "name": COMP}})
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    res = subprocess.run(
        [sys.executable, "-m", "pipeline", "download"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 1
    assert res.stderr.startswith("error: ")
    assert expected.format(comp=COMP) in res.stderr
    assert "Traceback" not in res.stderr
    assert not (work / "data" / "raw").exists()
    assert_no_secrets(res.stdout + res.stderr, work)


def test_safe_extract_refuses_links_in_7z(tmp_path):
    import py7zr

    src = tmp_path / "src"
    src.mkdir()
    (src / "up").symlink_to("../..")
    archive = tmp_path / "x.7z"
    with py7zr.SevenZipFile(archive, "w", dereference=False) as zf:
        zf.write(src / "up", "up")
    with pytest.raises(PipelineError, match=r"refusing to extract x\.7z: link 'up'"):
        kaggle.safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out" / "up").exists()
