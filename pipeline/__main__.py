"""Command line: `python -m pipeline STAGE [options]`, the `cmd` of every stage in dvc.yaml.

python -m pipeline --help
python -m pipeline train --model resnet10t --fold 0
python -m pipeline summary        # CV score, local leaderboard score, submission path
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from pipeline.files import PipelineError, read_json

STAGES = ("download", "prepare", "folds", "train", "predict", "ensemble", "submit", "upload")


def summary() -> None:
    cv, local = Path("metrics/cv.json"), Path("submissions/local_score.json")
    sub = Path("submissions/submission.csv")
    if cv.exists():
        c = read_json(cv)
        print(f"CV {c['metric']}: {c['cv']:.4f}")
    if local.exists():
        s = read_json(local)
        for metric in (k for k in s if k not in ("rows", "note")):
            print(f"local leaderboard {metric}: {s[metric]:.4f}")
    print(f"submission: {sub.resolve() if sub.exists() else 'not written yet'}")


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in (*STAGES, "summary"):
        print(__doc__.strip() + "\n\nstages: " + ", ".join(STAGES), file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    try:
        if argv[0] == "summary":
            summary()
        else:
            importlib.import_module(f"pipeline.stages.{argv[0]}").main(argv[1:])
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
