"""What the training recipe buys on the demo: augmentation schedules, TTA and its beta, blends.

    python benchmarks/recipe.py                      # schedule, linear, blend (about 25 min here)
    python benchmarks/recipe.py schedule linear      # only these variants

Every variant runs the teachers of the demo (`pseudo.enabled: false`) with `dvc repro` in a
fresh copy of the project: params.yaml plus the variant's overrides. Printed per variant: the CV
(OOF accuracy, 5 folds) without TTA (beta 1), with the views alone (beta 0), with the old equal
average of plain and views (beta 0.5) and with beta tuned per fold (`auto`, what predict
writes), the local leaderboard of what was submitted, and for the blend variant every member's
CV next to the blend with equal and with fitted weights.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.preds import read_probs  # noqa: E402
from tests.conftest import Project, merge  # noqa: E402

ROUND_OFF = {"pseudo": {"enabled": False}}
VARIANTS = {
    "schedule": {},  # params.yaml: cosine ramp, one clean epoch
    "linear": {"augment": {"ramp": "linear", "clean_epochs": 0}},  # the previous schedule
    "blend": {  # two backbones, SGDR snapshots, fitted weights
        "train": {
            "backbones": ["resnet10t", "mobilenetv3_small_100"],
            "schedule": "sgdr",
            "cycle_len": 4,
            "cycle_mult": 2,
        },  # cycles end at epochs 4 and 12
        "ensemble": {"weights": "fit", "snapshots": True},
    },  # fmt: skip
}


def tta_table(proj: Path, model: str, folds: list[int]) -> dict[str, float]:
    """OOF accuracy of one model at beta 1, 0, 0.5 and as predicted (auto), from views.npz."""
    os.chdir(proj)
    from pipeline.index import encode_labels, read_index
    from pipeline.stages.predict import blend_tta

    index = read_index()
    hits: dict[str, list[bool]] = {"1": [], "0": [], "0.5": [], "auto": []}
    betas = []
    for k in folds:
        fold = proj / "preds" / model / f"fold{k}"
        npz = np.load(fold / "views.npz")
        outs = {key.split("/")[1]: npz[key] for key in npz.files if key.startswith("oof/")}
        info = json.loads((fold / "tta.json").read_text())
        betas.append(info["beta"])
        rows = read_probs(fold, "oof", index.classes)[0]
        labels = index.train.set_index("id").loc[rows, "label"]
        y = encode_labels(labels, index.classes, "single_label")
        for name, beta in (("1", 1.0), ("0", 0.0), ("0.5", 0.5), ("auto", info["beta"])):
            probs = blend_tta(outs, beta, "probs", "single_label")
            hits[name] += list(probs.argmax(1) == y)
    return {**{f"beta {k}": float(np.mean(v)) for k, v in hits.items()}, "betas": betas}


def run(name: str, work: Path) -> dict:
    proj = Project(work / "proj")
    proj.set_params(merge(ROUND_OFF, VARIANTS[name]))
    proj.run(["dvc", "repro"])
    p = proj.params()
    cv = json.loads((proj.path / "metrics/cv.json").read_text())
    local = json.loads((proj.path / "submissions/local_score.json").read_text())
    out = {"cv": cv, "local": local["accuracy"], "tta": {}}
    for model in p["train"]["backbones"]:
        out["tta"][model] = tta_table(proj.path, model, p["base"]["folds"])
    if name == "blend":
        out["equal"] = equal_blend(proj.path, p)
    os.chdir(ROOT)
    return out


def equal_blend(proj: Path, p: dict) -> float:
    from pipeline.index import read_index
    from pipeline.stages.ensemble import collect, evaluate

    index = read_index()
    folders = {n: proj / "preds" / n for n in p["train"]["backbones"]}
    chosen, _ = collect(index, folders, p["base"]["folds"], True)
    return evaluate(index, "accuracy", chosen, "equal").report["accuracy"]


def show(name: str, r: dict) -> None:
    print(f"== {name}: CV accuracy {r['cv']['cv']:.4f}, local LB {r['local']:.4f}")
    for model, t in r["tta"].items():
        cells = ", ".join(f"{k} {v:.4f}" for k, v in t.items() if k != "betas")
        print(f"   {model}: {cells} (auto betas {t['betas']})")
    if name == "blend":
        for member, v in r["cv"]["single"].items():
            print(f"   {member:<40} {v:.4f}")
        print(f"   blend, equal weights {r['equal']:.4f}; fitted {r['cv']['cv']:.4f} "
              f"(weights {r['cv']['members']})")  # fmt: skip
    sys.stdout.flush()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variants", nargs="*", choices=[*VARIANTS, []], help=", ".join(VARIANTS))
    a = ap.parse_args()
    for name in a.variants or VARIANTS:
        with tempfile.TemporaryDirectory() as tmp:
            show(name, run(name, Path(tmp)))


if __name__ == "__main__":
    main()
