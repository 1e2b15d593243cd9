"""upload: validate submissions/submission.csv and send it to Kaggle, leaving a receipt.

    python -m pipeline upload                 # reads upload.* and competition.name from params
    python -m pipeline.stages.upload          # the same, by hand

With `upload.enabled: false` (the default for real competitions, and the demo) nothing is sent:
submissions/receipt.json says "skipped" and carries the local score written by `submit` if any.
Otherwise the file is checked against data/prepared/sample_submission.csv (an invalid file is
never sent), submitted with `kaggle competitions submit`, and the listing is polled a bounded
number of times for the scoring status and public score.

Receipt: {"status": "skipped" | "complete" | "pending" | "error", "competition", "file",
"sha256", "message", "submission_ref", "public_score", ...}; it never holds credentials.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline import kaggle
from pipeline.files import PipelineError, read_json, sha256, write_json
from pipeline.metrics import validate_submission
from pipeline.params import load_params

MAX_MESSAGE_LEN = 250  # characters; Kaggle truncates long submission descriptions


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
) -> dict[str, Any]:
    """Validate, then submit (or skip); write and return the receipt."""
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
    ref = kaggle.submit(competition, submission, text)
    result = kaggle.poll_submission(competition, ref, text, poll_attempts, poll_interval_s)
    receipt.update(result, message=text, submitted_at=_now())
    write_json(receipt_path, receipt)
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
    # everything as text, as written: ids or classes such as "NA" or "None" stay themselves
    sample = pd.read_csv(prepared_dir / "sample_submission.csv", dtype=str, keep_default_na=False)
    sub = pd.read_csv(submission, dtype=str, keep_default_na=False)
    validate_submission(sub, sample, meta["classes"], meta["submission_kind"], str(submission))


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
    argparse.ArgumentParser(prog="python -m pipeline upload", description=__doc__).parse_args(argv)
    p = load_params()
    up = p.upload  # enabled, message, poll_attempts, poll_interval_s
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
        + ([f"students {','.join(p.pseudo.backbones)}"] if p.pseudo.enabled else []),
    )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except PipelineError as e:
        sys.exit(f"error: {e}")
