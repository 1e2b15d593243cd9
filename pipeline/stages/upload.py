"""upload: validate submissions/submission.csv and send it to Kaggle, leaving a receipt.

    python -m pipeline upload                 # reads upload.* and competition.name from params
    python -m pipeline.stages.upload          # the same, by hand

With `upload.enabled: false` (the default for real competitions, and the demo) nothing is sent:
submissions/receipt.json says "skipped" and carries the local score written by `submit` if any.
Otherwise the file is checked against data/prepared/sample_submission.csv (an invalid file is
never sent), submitted with `kaggle competitions submit`, and the listing is polled a bounded
number of times for the scoring status and public score. A code competition (export.enabled)
submits the output of the notebook that `python -m pipeline export --push` pushed
(`kaggle competitions submit COMPETITION -k OWNER/KERNEL -v VERSION -f submission.csv`), and
refuses when the export changed since that push.

Receipt: {"status": "skipped" | "complete" | "pending" | "error", "competition", "file",
"sha256", "message", "submission_ref", "public_score", "kernel", "kernel_version", ...}; it
never holds credentials. Every real submission also appends a row to submissions/history.csv
(time, CV, public score, message, params hash, git revision, kernel and version) and rewrites
submissions/cv_lb.json, the scored rows that `dvc plots show` draws as public score against CV.

    python -m pipeline upload --refresh   # ask Kaggle again for the scores still pending
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from pipeline import kaggle
from pipeline.bundle import bundle_digest
from pipeline.files import PipelineError, read_json, sha256, write_csv, write_json
from pipeline.metrics import read_sample, validate_submission
from pipeline.params import load_params

PUSHED = Path("submissions/kernel.json")  # what `python -m pipeline export --push` recorded

MAX_MESSAGE_LEN = 250  # characters; Kaggle truncates long submission descriptions
HISTORY = Path("submissions/history.csv")
COLUMNS = ["time", "competition", "metric", "cv", "public_score", "status", "message",
           "params_hash", "git_rev", "kernel", "kernel_version", "submission_ref"]  # fmt: skip


def append_history(path: Path, receipt: dict[str, Any], metrics_path: Path) -> None:
    """One row per submission, then the plot's data (submissions/cv_lb.json) from all rows."""
    cv = read_json(metrics_path) if metrics_path.exists() else {}
    row = {
        "time": receipt["submitted_at"], "competition": receipt["competition"],
        "metric": cv.get("metric"), "cv": cv.get("cv"), "public_score": receipt["public_score"],
        "status": receipt["status"], "message": receipt["message"],
        "params_hash": params_hash(), "git_rev": _git_rev(), "kernel": receipt.get("kernel"),
        "kernel_version": receipt.get("kernel_version"),
        "submission_ref": receipt["submission_ref"],
    }  # fmt: skip
    rows = read_history(path)
    write_history(path, pd.concat([rows, pd.DataFrame([row], columns=COLUMNS)], ignore_index=True))


def read_history(path: Path) -> pd.DataFrame:
    if not path.exists():
        return pd.DataFrame(columns=COLUMNS)
    frame = pd.read_csv(path, dtype={"git_rev": str, "params_hash": str, "message": str})
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise PipelineError(f"{path}: no column {missing[0]}; move the file aside to start anew")
    return frame[COLUMNS]


def write_history(path: Path, rows: pd.DataFrame) -> None:
    """history.csv, and cv_lb.json beside it: the rows with both a CV and a public score."""
    write_csv(path, rows)
    scored = rows.dropna(subset=["cv", "public_score"])
    points = [
        {"cv": float(r.cv), "public_score": float(r.public_score), "time": str(r.time),
         "message": str(r.message), "git_rev": str(r.git_rev)}
        for r in scored.itertuples()
    ]  # fmt: skip
    write_json(path.with_name("cv_lb.json"), points)


def refresh(path: Path, attempts: int, interval_s: float) -> pd.DataFrame:
    """Poll Kaggle again for every row still pending; rewrite history and plot data."""
    rows = read_history(path)
    for i in rows.index[rows["status"] == "pending"]:
        ref = rows.at[i, "submission_ref"]
        ref = int(ref) if pd.notna(ref) else None
        got = kaggle.poll_submission(rows.at[i, "competition"], ref, str(rows.at[i, "message"]),
                                     attempts, interval_s)  # fmt: skip
        rows.at[i, "status"], rows.at[i, "public_score"] = got["status"], got["public_score"]
    write_history(path, rows)
    done = int((rows["status"] != "pending").sum())
    print(f"upload --refresh: {done} of {len(rows)} submissions scored -> {path}")
    return rows


def params_hash(path: Path = Path("params.yaml")) -> str | None:
    """A digest of the params' values (comments and layout aside): which settings scored what."""
    if not path.exists():
        return None
    values = json.dumps(yaml.safe_load(path.read_text()), sort_keys=True, default=str)
    return hashlib.sha256(values.encode()).hexdigest()[:12]


def pushed_kernel(pushed: Path, export_dir: Path) -> dict[str, Any]:
    """The notebook `export --push` pushed, if it is of the current export."""
    if not pushed.exists():
        raise PipelineError(
            f"{pushed}: missing; a code competition submits a notebook: run "
            "`python -m pipeline export --push`, wait for it to run on Kaggle, then upload"
        )
    record = read_json(pushed)
    if record.get("bundle_sha256") != bundle_digest(export_dir):
        raise PipelineError(
            f"{pushed}: kernel {record.get('kernel')} version {record.get('version')} was "
            f"pushed from another export than {export_dir}/; run `python -m pipeline export --push`"
        )
    return record


def run(
    *,
    competition: str,
    enabled: bool,
    message: str | None,
    poll_attempts: int,
    poll_interval_s: float,
    submission: Path,
    prepared_dir: Path,
    metrics_path: Path,
    receipt_path: Path,
    models: list[str],
    kernel: dict[str, Any] | None = None,
    history: Path = HISTORY,
) -> dict[str, Any]:
    """Validate, then submit (or skip); write and return the receipt. `kernel`: a code
    competition's pushed notebook ({"kernel": owner/slug, "version": n})."""
    validate(submission, prepared_dir)
    receipt: dict[str, Any] = {
        "status": "skipped",
        "competition": competition,
        "file": str(submission),
        "sha256": sha256(submission),
        "message": None,
        "submission_ref": None,
        "public_score": None,
    }
    if not enabled:
        local_score = receipt_path.parent / "local_score.json"
        receipt["reason"] = "upload.enabled is false"
        if local_score.exists():
            receipt["local_score"] = read_json(local_score)
        write_json(receipt_path, receipt)
        print(f"upload skipped (upload.enabled: false); receipt in {receipt_path}")
        return receipt

    text = message or build_message(metrics_path, models)
    if kernel is None:
        ref = kaggle.submit(competition, submission, text)
    else:
        ref = kaggle.submit_kernel(competition, kernel["kernel"], kernel["version"], text)
        receipt |= {"kernel": kernel["kernel"], "kernel_version": kernel["version"]}
    result = kaggle.poll_submission(competition, ref, text, poll_attempts, poll_interval_s)
    receipt.update(result, message=text, submitted_at=_now())
    write_json(receipt_path, receipt)
    append_history(history, receipt, metrics_path)
    print(
        f"submitted to {competition}: ref {receipt['submission_ref']}, status {receipt['status']}, "
        f"public score {receipt['public_score']}"
    )
    if receipt["status"] == "error":
        raise PipelineError(
            f"Kaggle could not score submission {receipt['submission_ref']}: see "
            f"https://www.kaggle.com/competitions/{competition}/submissions"
        )
    return receipt


def validate(submission: Path, prepared_dir: Path) -> None:
    """Raise PipelineError (naming file, column, row) unless `submission` is uploadable."""
    if not submission.exists():
        raise PipelineError(f"{submission}: not found (run `dvc repro submit` first)")
    meta = read_json(prepared_dir / "meta.json")
    sample = read_sample(prepared_dir / "sample_submission.csv")
    kind = meta["submission_kind"]
    validate_submission(read_submission(submission, kind), sample, meta["classes"], kind,
                        str(submission))  # fmt: skip


def read_submission(path: Path, kind: str) -> pd.DataFrame:
    """Labels and tags as text, as written (classes such as "NA" or "None" stay themselves);
    probabilities as numbers (an empty cell is missing, a word stays text and is named)."""
    if kind not in ("probs", "binary"):
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    columns = pd.read_csv(path, nrows=0).columns.tolist()
    return pd.read_csv(path, dtype={columns[0]: str}, keep_default_na=False,
                       na_values={c: [""] for c in columns[1:]})  # fmt: skip


def build_message(metrics_path: Path, models: list[str]) -> str:
    """'cv accuracy=0.98120 | models resnet18,convnext_tiny | git 1a2b3c4' (CV, models, commit)."""
    cv = read_json(metrics_path) if metrics_path.exists() else {}
    parts = [f"cv {_cv_scores(cv) or 'n/a'}", f"models {','.join(models) or 'n/a'}"]
    return " | ".join([*parts, f"git {_git_rev()}"])[:MAX_MESSAGE_LEN]


def _cv_scores(cv: dict[str, Any]) -> str:
    """{"metric": "accuracy", "cv": 0.98} or {"accuracy": 0.98, ...} -> 'accuracy=0.98000'."""
    if isinstance(cv.get("metric"), str) and isinstance(cv.get("cv"), (int, float)):
        cv = {cv["metric"]: cv["cv"]}
    numbers = {
        k: v for k, v in cv.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    return ", ".join(f"{k}={v:.5f}" for k, v in numbers.items())


def _git_rev() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"  # not a git checkout (e.g. a Kaggle notebook) or git missing
    return f"{rev}+dirty" if dirty else rev


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline upload", description=__doc__)
    ap.add_argument("--refresh", action="store_true", help="poll the pending scores again")
    a = ap.parse_args(argv)
    p = load_params()
    up = p.upload  # enabled, message, poll_attempts, poll_interval_s
    if a.refresh:
        refresh(HISTORY, up.poll_attempts, up.poll_interval_s)
        return 0
    code = p.export.enabled and up.enabled
    run(
        competition=p.competition.name,
        enabled=up.enabled,
        message=up.message,
        poll_attempts=up.poll_attempts,
        poll_interval_s=up.poll_interval_s,
        submission=Path("submissions/submission.csv"),
        prepared_dir=Path("data/prepared"),
        metrics_path=Path("metrics/final.json"),
        receipt_path=Path("submissions/receipt.json"),
        models=p.train.backbones
        + ([f"students {','.join(p.students().values())}"] if p.pseudo.enabled else []),
        kernel=pushed_kernel(PUSHED, Path("export")) if code else None,
    )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except PipelineError as e:
        sys.exit(f"error: {e}")
