"""The inference a code competition's notebook runs on Kaggle: offline, without DVC, from the
bundle the export stage wrote (export/dataset/, uploaded as a Kaggle dataset).

    python -m pipeline.kernel --bundle /kaggle/input/MODELS --competition /kaggle/input/COMP \
        --work /kaggle/working/run --out /kaggle/working/submission.csv

Steps, with the pipeline's own stage code: download (`source: path`, the input linked in place,
never copied) → prepare (index, checks, image cache) → every exported fold model on the test set
with its TTA and the `beta` its predict stage chose → the blend, with the weights and thresholds
the ensemble chose → submit's shaping and checks → the submission CSV. Imports only what Kaggle's
image ships (torch, timm, albumentations, pandas, numpy, scipy, scikit-learn, pydantic,
safetensors, PyYAML) and this package: no dvc, dvclive or accelerate launcher.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from pipeline.files import PipelineError, read_json, write_json, write_probs_csv
from pipeline.index import Index, read_index
from pipeline.params import Params, parse_params
from pipeline.preds import blend_tta, mean_preds, weighted_mean, write_preds

BUNDLE = "bundle.json"


def bundle_params(bundle: Path, competition: Path) -> Params:
    """The exported params, reading the competition from `competition` in place."""
    raw = yaml.safe_load((bundle / "params.yaml").read_text())
    raw["competition"] |= {"source": "path", "path": str(competition)}
    return parse_params(raw, str(bundle / "params.yaml"))


def check_classes(index: Index, spec: dict) -> None:
    if index.classes != spec["classes"] or index.meta["task"] != spec["task"]:
        raise PipelineError(
            f"the competition's data gives classes {index.classes[:6]} ({index.meta['task']}), "
            f"the exported models were trained on {spec['classes'][:6]} ({spec['task']}): "
            "export again from this competition"
        )


def fold_test(bundle: Path, entry: dict, index: Index, p: Params, out: Path) -> None:
    """One fold model's test predictions, as its predict stage blends them, into out/."""
    from safetensors.torch import load_file  # here: torch only once the notebook predicts

    from pipeline.inference import load_model, predict_split

    net, info, device = load_model(bundle / entry["dir"])  # as predict loads it
    if entry.get("weights"):  # an SGDR snapshot of that model
        net.load_state_dict(load_file(str(bundle / entry["weights"])))
    info = {**info, "augment": _augment(info)}
    outs = predict_split(net, index, "test", np.arange(len(index.test)), p.tta, info, device)
    probs = blend_tta(outs, entry["beta"], p.tta.combine, info["task"])
    write_preds(out, "test", index.test["id"], probs, info["classes"])


def _augment(info: dict):
    from pipeline.params import Augment  # here: torch only once the notebook predicts

    return Augment(**info["augment"]) if info.get("augment") else None


def member_test(bundle: Path, member: dict, index: Index, p: Params, work: Path) -> pd.DataFrame:
    """A member's test predictions: the mean over its folds (of the mean over its snapshots)."""
    ids, total = pd.Index(index.test["id"], name="id"), 0
    for k, entries in member["folds"].items():
        dirs = []
        for i, entry in enumerate(entries):
            folder = work / "preds" / member["label"].replace(" ", "_") / f"fold{k}" / str(i)
            fold_test(bundle, entry, index, p, folder)
            dirs.append((folder, "test"))
        total = total + mean_preds(dirs, index.classes, ids)[1]
    return pd.DataFrame(total / len(member["folds"]), index=ids, columns=index.classes)


def run(bundle: Path, competition: Path, work: Path, out: Path) -> pd.DataFrame:
    # here: torch only once the notebook predicts
    from pipeline.stages import download, prepare, submit

    bundle, competition, out = bundle.resolve(), competition.resolve(), out.resolve()
    spec = read_json(bundle / BUNDLE)
    p = bundle_params(bundle, competition)
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)
    download.run(p.competition, p.base.seed)
    prepare.run(p.prepare, p.competition)
    index = read_index()
    check_classes(index, spec)
    members = [member_test(bundle, m, index, p, work) for m in spec["members"]]
    weights = np.array([m["weight"] for m in spec["members"]])
    test = pd.DataFrame(
        weighted_mean([m.to_numpy() for m in members], weights),
        index=members[0].index,
        columns=index.classes,
    )  # as ensemble blends
    final = work / "final"
    final.mkdir(exist_ok=True)
    write_preds(final, "test", test.index, test.to_numpy(), index.classes)
    write_json(final / "thresholds.json", spec["decision"])
    sub = submit.shaped(index, spec["metric"], final, out)
    write_probs_csv(out, sub)
    print(f"kernel: {len(sub)} rows from {len(members)} member(s) -> {out}")
    return sub


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.kernel", description=__doc__)
    ap.add_argument("--bundle", type=Path, required=True, help="the exported dataset's folder")
    ap.add_argument("--competition", type=Path, required=True, help="the competition's input")
    ap.add_argument("--work", type=Path, default=Path("/kaggle/working/run"))
    ap.add_argument("--out", type=Path, default=Path("/kaggle/working/submission.csv"))
    a = ap.parse_args(argv)
    try:
        run(a.bundle, a.competition, a.work, a.out)
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
