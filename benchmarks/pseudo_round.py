"""Does the pseudolabel round help? `dvc repro` on real small competitions, teachers vs students.

    python benchmarks/pseudo_round.py                       # demo, tiny, multilabel
    python benchmarks/pseudo_round.py tiny --set pseudo.threshold=0.8 --set pseudo.ratio=2

Each competition runs in a fresh copy of the project under a temporary folder (the project's
params.yaml, plus the overrides below and --set); prints one line per competition: teacher CV,
student CV, their difference, and the local leaderboard of the students and of the teachers
alone. `tiny` and `multilabel` come from benchmarks/competitions.py. CPU-bound: minutes each.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import Project, merge  # noqa: E402

OVERRIDES = {  # per competition: what its size needs (see the README's benchmark table)
    "demo": {},
    "tiny": {"train": {"batch_size": 16, "epochs": 20}},  # 100 images: 5 steps per epoch
    "multilabel": {"competition": {"metric": "f2_samples"}},
}


def parse_set(items: list[str]) -> dict:
    """`a.b=v` pairs as a nested dict; values parsed as YAML (numbers, booleans, lists)."""
    out: dict = {}
    for item in items:
        key, _, value = item.partition("=")
        *parents, leaf = key.split(".")
        node = out
        for k in parents:
            node = node.setdefault(k, {})
        node[leaf] = yaml.safe_load(value)
    return out


def run(kind: str, work: Path, extra: dict) -> dict:
    proj = Project(work / "proj")
    comp = {"source": "demo"}
    if kind != "demo":
        script = ROOT / "benchmarks" / "competitions.py"
        subprocess.run([sys.executable, str(script), kind, str(work / "comp")], check=True)
        comp = {"source": "path", "path": str(work / "comp"), "name": kind}
    proj.set_params(merge(merge(OVERRIDES[kind], {"competition": comp}), extra))
    proj.run(["dvc", "repro"])
    final = json.loads((proj.path / "metrics/final.json").read_text())
    local = json.loads((proj.path / "submissions/local_score.json").read_text())
    return {"final": final, "local": local}


def line(kind: str, r: dict) -> str:
    f, local, m = r["final"], r["local"], r["final"]["metric"]
    return (
        f"{kind:<10} {m:<10} teachers {f['teacher_cv']:.4f}  students {f['student_cv']:.4f}  "
        f"({f['student_minus_teacher']:+.4f})  local LB students {local[m]:.4f}, teachers "
        f"{local['teachers'][m]:.4f} ({local[m] - local['teachers'][m]:+.4f})"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("kinds", nargs="*", choices=[*OVERRIDES, []], help=", ".join(OVERRIDES))
    ap.add_argument("--set", action="append", default=[], help="params override, a.b=value")
    a = ap.parse_args()
    extra = parse_set(a.set)
    for kind in a.kinds or OVERRIDES:
        with tempfile.TemporaryDirectory() as tmp:
            print(line(kind, run(kind, Path(tmp), extra)), flush=True)


if __name__ == "__main__":
    main()
