"""A code competition, after an end-to-end `dvc repro`: the export stage, its kernel run from a
/kaggle/input-like tree with no DVC, the real Kaggle CLI pushing both folders to the fake
Kaggle, and two code-competition uploads with their history rows."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd

from tests.fake_kaggle import FakeCreds, FakeKaggle
from tests.test_plots import page_specs

CREDS = FakeCreds(username="fakeuser123", key="secretkey-XYZ-8f3a1c0d", api_token="tok-QRS-77b2")
BLOCKED = ("dvc", "dvclive", "pytorch_grad_cam", "vl_convert", "iterstrat")  # not on Kaggle


def check_code_competition(project, tiny_comp: Path, tmp: Path) -> None:
    name = project.params()["competition"]["name"]
    project.set_params({"export": {"enabled": True, "owner": CREDS.username}})
    runs = project.run(["dvc", "repro"]).stdout
    assert "Running stage 'export'" in runs and "Running stage 'train" not in runs
    export = project.path / "export"
    check_metadata(export, name)
    check_kernel_run(export, tiny_comp, name, project.path / "submissions/submission.csv", tmp)
    with FakeKaggle(CREDS) as fake:
        env = {**project.env, **fake.env(), "HOME": str(tmp / "home"),
               "KAGGLE_USERNAME": CREDS.username, "KAGGLE_KEY": CREDS.key}  # fmt: skip
        check_push(project, fake, env, export, name)
        check_uploads(project, fake, env, name)
    project.set_params({"export": {"enabled": False}, "upload": {"enabled": False}})


def check_metadata(export: Path, name: str) -> None:
    """The files the Kaggle CLI reads, with the fields it requires."""
    ds = json.loads((export / "dataset/dataset-metadata.json").read_text())
    assert ds["id"] == f"{CREDS.username}/{name}-models" and 6 <= len(ds["title"]) <= 50
    assert ds["licenses"] == [{"name": "CC0-1.0"}]
    meta = json.loads((export / "kernel/kernel-metadata.json").read_text())
    assert meta["id"] == f"{CREDS.username}/{name}-inference"
    assert meta["code_file"] == "kernel.py" and (export / "kernel/kernel.py").exists()
    assert (meta["language"], meta["kernel_type"]) == ("python", "script")
    assert meta["enable_internet"] is False and meta["enable_gpu"] is False
    assert meta["dataset_sources"] == [ds["id"]] and meta["competition_sources"] == [name]
    bundle = json.loads((export / "dataset/bundle.json").read_text())
    labels = [m["label"] for m in bundle["members"]]
    assert labels == list(bundle["decision"]["weights"])  # the final blend, in its order
    weights = list(export.glob("dataset/models/**/*.safetensors"))
    assert len(weights) == sum(len(e) for m in bundle["members"] for e in m["folds"].values())
    assert (export / "dataset/pipeline/kernel.py").exists()


def kaggle_tree(export: Path, tiny_comp: Path, name: str, root: Path) -> Path:
    """/kaggle/input/{COMPETITION, DATASET} and /kaggle/working, as a notebook sees them."""
    shutil.copytree(tiny_comp, root / "input" / name)
    (root / "input" / name / "solution.csv").unlink(missing_ok=True)
    shutil.copytree(export / "dataset", root / "input" / f"{name}-models")
    (root / "working").mkdir()
    blocker = root / "blocked"
    for module in BLOCKED:  # importing any of these fails, as on Kaggle's image
        (blocker / module).mkdir(parents=True)
        (blocker / module / "__init__.py").write_text(f"raise ImportError('no {module} here')\n")
    return root


def check_kernel_run(export: Path, tiny_comp: Path, name: str, expected: Path, tmp: Path) -> None:
    root = kaggle_tree(export, tiny_comp, name, tmp / "kaggle")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and "PROXY" not in k.upper()}
    env |= {
        "KAGGLE_INPUT": str(root / "input"),
        "KAGGLE_WORKING": str(root / "working"),
        "PYTHONPATH": str(root / "blocked"),
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
    }  # fmt: skip  (any network use fails)
    script = export / "kernel/kernel.py"
    res = subprocess.run([sys.executable, str(script)], cwd=root / "working", env=env,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    package = root / "input" / f"{name}-models" / "pipeline"
    assert f"pipeline package: {package}" in res.stdout  # the dataset's copy, not the checkout
    written = root / "working/submission.csv"
    assert written.read_bytes() == expected.read_bytes()
    data = root / "working/run/data/raw"  # the input read in place: links, no copies
    files = [p for p in data.rglob("*") if not p.is_dir()]
    assert files and all(p.is_symlink() for p in files)


def check_push(project, fake: FakeKaggle, env: dict, export: Path, name: str) -> None:
    ref, kernel = f"{CREDS.username}/{name}-models", f"{CREDS.username}/{name}-inference"
    for n in (1, 2):
        res = subprocess.run([sys.executable, "-m", "pipeline", "export", "--push"],
                             cwd=project.path, env=env, capture_output=True, text=True)  # fmt: skip
        assert res.returncode == 0, res.stdout + res.stderr
        assert len(fake.datasets[ref]) == n and len(fake.kernels[kernel]) == n
    first, second = fake.datasets[ref]
    assert first.request["slug"] == f"{name}-models" and first.request["licenseName"] == "CC0-1.0"
    assert second.request["datasetSlug"] == f"{name}-models"  # a new version, not a new dataset
    calls = fake.api_calls()
    assert calls.count("CreateDataset") == 1 and calls.count("CreateDatasetVersion") == 1
    files = first.files
    assert {"bundle.json", "params.yaml", "models.zip", "pipeline.zip"} <= set(files)
    with zipfile.ZipFile(io.BytesIO(files["pipeline.zip"])) as z:
        assert "kernel.py" in z.namelist() and "stages/predict.py" in z.namelist()
    with zipfile.ZipFile(io.BytesIO(files["models.zip"])) as z:
        assert any(n.endswith("model.safetensors") for n in z.namelist())
    pushed = fake.kernels[kernel][-1]
    assert pushed["text"] == (export / "kernel/kernel.py").read_text()
    assert pushed["datasetDataSources"] == [ref] and pushed["competitionDataSources"] == [name]
    assert pushed["enableInternet"] is False and pushed["kernelType"] == "script"
    record = json.loads((project.path / "submissions/kernel.json").read_text())
    assert (record["kernel"], record["version"]) == (kernel, 2)


def check_uploads(project, fake: FakeKaggle, env: dict, name: str) -> None:
    fake.add_competition(name, bundle=b"", statuses=["COMPLETE"])
    project.set_params({"upload": {"enabled": True, "poll_interval_s": 0.0}})
    for _ in range(2):
        res = subprocess.run([sys.executable, "-m", "pipeline", "upload"], cwd=project.path,
                             env=env, capture_output=True, text=True)  # fmt: skip
        assert res.returncode == 0, res.stdout + res.stderr
    kernel = f"{CREDS.username}/{name}-inference"
    assert [(s["kernel"], s["kernel_version"]) for s in fake.submissions] == [(kernel, 2)] * 2
    assert all(s["file"] == "submission.csv" for s in fake.submissions)
    receipt = json.loads((project.path / "submissions/receipt.json").read_text())
    assert (receipt["kernel"], receipt["kernel_version"], receipt["status"]) == (
        kernel, 2, "complete")  # fmt: skip
    history = pd.read_csv(project.path / "submissions/history.csv")
    cv = json.loads((project.path / "metrics/final.json").read_text())["cv"]
    assert len(history) == 2 and (history["kernel_version"] == 2).all()
    assert history["cv"].tolist() == [cv, cv] and history["public_score"].notna().all()
    points = json.loads((project.path / "submissions/cv_lb.json").read_text())
    assert [p["cv"] for p in points] == [cv, cv] and len(points) == 2
    project.run(["dvc", "plots", "show"])  # the page draws them: public score against CV
    specs = page_specs((project.path / "dvc_plots/index.html").read_text())
    drawn = specs["cv_lb"]["data"]["values"]
    assert [(float(d["cv"]), float(d["public_score"])) for d in drawn] == [(cv, 0.91234)] * 2
