"""Command line: `python -m pipeline STAGE [options]`, the `cmd` of every stage in dvc.yaml.

python -m pipeline --help
python -m pipeline train --model resnet10t --fold 0
python -m pipeline summary        # CV score, local leaderboard score, submission path
python -m pipeline init SLUG      # a new competition: fetch it, write params.yaml (--path DIR)
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from pipeline.errors import PipelineError  # the client of a warm stage imports no pandas
from pipeline.failures import os_failure

STAGES = (
    "download",
    "prepare",
    "extra",
    "folds",
    "train",
    "predict",
    "ensemble",
    "pseudolabel",
    "diagnose",
    "report",
    "submit",
    "export",
    "upload",
)


COMMANDS = ("summary", "init")  # not stages: no DVC stage runs them


def summary() -> None:
    # here: the command line imports no pandas or YAML until a command needs them
    from pipeline.files import read_json

    cv, local = Path("metrics/final.json"), Path("submissions/local_score.json")
    sub = Path("submissions/submission.csv")
    if cv.exists():
        c = read_json(cv)
        print(f"CV {c['metric']}: {c['cv']:.4f} (submitted: {c['submitted']})")
        if "student_cv" in c:
            print(
                f"  teachers {c['teacher_cv']:.4f}, students {c['student_cv']:.4f} "
                f"({c['student_minus_teacher']:+.4f}), pseudolabels from: {c['pseudo_source']}"
            )
        if c.get("fell_back"):
            print(f"  the teachers are submitted: {c['fell_back']}")
        if "warning" in c:
            print(f"  WARNING: {c['warning']}")
    if local.exists():
        s = read_json(local)
        for metric in (k for k, v in s.items() if isinstance(v, float)):  # rows etc.: ints
            teachers = s.get("teachers", {}).get(metric)
            alone = "" if teachers is None else f" (teachers alone: {teachers:.4f})"
            print(f"local leaderboard {metric}: {s[metric]:.4f}{alone}")
        if "unscored_rows" in s:
            print(f"  {s['unscored_rows']} rows not scored: their solution classes were never "
                  f"in training ({', '.join(s['unknown_classes'][:5])})")  # fmt: skip
    print(f"submission: {sub.resolve() if sub.exists() else 'not written yet'}")
    stages, unknown = stale_stages()
    stale = list(dict.fromkeys(source_changed() + stages))  # the source first, once
    if unknown:
        print(f"WARNING: {unknown}: these outputs may be stale; run `dvc status` to see")
    if stale:
        print(
            f"WARNING: these outputs are not those of the current params, data and code: "
            f"{len(stale)} stage(s) changed since ({', '.join(stale[:4])}"
            f"{', …' if len(stale) > 4 else ''}); the last `dvc repro` failed or did not run. "
            "Rerun `dvc repro` before trusting or uploading them."
        )


def stale_stages(timeout: float = 120) -> tuple[list[str], str | None]:
    """(Stages whose inputs changed since they last ran (`dvc status`), why that could not be
    told or None); nothing outside a DVC project."""
    if not Path("dvc.yaml").exists():
        return [], None
    try:
        res = subprocess.run(
            [sys.executable, "-m", "dvc", "status", "--json"],
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
        changes = json.loads(res.stdout or "{}")
    except subprocess.TimeoutExpired:
        return [], f"`dvc status` gave no answer within {timeout:.0f} s"
    except (json.JSONDecodeError, OSError) as e:
        return [], f"`dvc status` failed ({type(e).__name__})"
    if res.returncode != 0:
        return [], f"`dvc status` failed: {(res.stderr.strip().splitlines() or ['?'])[-1]}"
    return [s for s, what in changes.items() if what != ["always changed"]], None  # `source`


def source_changed() -> list[str]:
    """["source"] when a local source folder no longer matches the listing download was made
    from, or data/raw the listing download wrote: `dvc status` cannot see either before the
    always-changed `source` stage runs again."""
    # here: the command line imports no pandas or YAML until a command needs them
    from pipeline.files import read_json
    from pipeline.params import load_params
    from pipeline.stages.download import MANIFEST, check_raw, manifest

    if not MANIFEST.exists():
        return []
    comp = load_params().competition
    try:
        now = manifest(comp)
        check_raw(now)
    except PipelineError:  # the folder is gone, or data/raw edited: the source stage says so
        return ["source"]
    return ["source"] if read_json(MANIFEST) != now else []


def line_buffered() -> None:
    """Progress lines as they happen, also when the output is a pipe (`dvc repro | tee log`)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(line_buffering=True)


Handoff = Callable[[list[str]], "int | None"]  # runs a stage elsewhere (its exit code) or None


def main(argv: list[str], handoff: Handoff | None = None) -> int:
    """Run a command or stage, its errors as one line each (and an exit code); `handoff` may
    run a stage in another process first (the warm server: pipeline/__main__.py)."""
    line_buffered()
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in (*STAGES, *COMMANDS):
        print(__doc__.strip() + "\n\nstages: " + ", ".join(STAGES), file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    try:
        dispatch(argv, handoff)
    except SystemExit as e:  # argparse: 0 after --help, 2 after a usage error (also when warm)
        return e.code if isinstance(e.code, int) else int(e.code is not None)
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            f"interrupted: {argv[0]} stopped; nothing it writes is ever half-written; rerun it "
            "(training resumes after its last finished epoch)",
            file=sys.stderr,
        )
        return 130
    except BrokenPipeError:  # the reader left (`summary | head`): as any command-line tool, quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit's flush
        return 141  # 128 + SIGPIPE, what a shell reports for a command its pipe closed
    except Exception as e:  # a bug, not bad input: one line, the traceback on request
        if os.environ.get("PIPELINE_DEBUG") == "1":
            raise
        print(f"error: {os_failure(e, argv[0]) or unexpected(e, argv[0])}", file=sys.stderr)
        return 1
    return 0


def unexpected(e: Exception, stage: str) -> str:
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    hint = "(unexpected: rerun with PIPELINE_DEBUG=1 for the traceback)"
    return f"{stage}: {type(e).__name__}: {first}\n{hint}"


def dispatch(argv: list[str], handoff: Handoff | None = None) -> None:
    if argv[0] == "init":
        from pipeline import init  # loads the stages it reuses (download, prepare)

        return init.main(argv[1:])
    if argv[0] == "summary":
        argparse.ArgumentParser(prog="python -m pipeline summary",
                                description="CV, local leaderboard score, submission path, "
                                "and whether they are stale").parse_args(argv[1:])  # fmt: skip
        return summary()
    code = None if handoff is None else handoff(argv)
    if code is not None:  # the warm server ran it (and printed what it had to say)
        raise SystemExit(code)
    # here: the command line imports no pandas or YAML until a command needs them
    from pipeline.roles import skip_without_torch

    helping = "-h" in argv or "--help" in argv  # the stage's own parser prints its help
    if helping or not skip_without_torch(argv[0], argv[1:]):
        importlib.import_module(f"pipeline.stages.{argv[0]}").main(argv[1:])
