"""predict: out-of-fold and test probabilities of one trained model, with TTA.

    python -m pipeline predict --model resnet10t --fold 0             # reads tta.* from params
    python -m pipeline predict --model resnet10t --fold 0 --student   # fold 0's student

TTA: the plain prediction is blended with the mean over augmented views (fastai's `beta`):
    final = beta * plain + (1 - beta) * mean(views)
Named views are tensor ops applied to each batch on the device; `tta.random` adds draws of the
training augmentation at `tta.random_strength` (albumentations, in the loader). Views average as
probabilities or as logits (`tta.combine`). `tta.beta: auto` picks the best of 0, 0.1, …, 1 by
competition.metric on the fold's OOF rows (ties: the lower log loss).

Writes preds/<model>/fold<k>/ (students: students/preds/...): oof (the fold's validation rows)
and test, each a prediction file (pipeline/preds.py: oof.npy, float32 rows x classes, and
oof.json, its ids and classes), as blended; with TTA also oof_plain and test_plain without it
and views.npz (every view's probabilities, for tuning); tta.json (views, beta, the OOF metric of
plain, TTA and the blend); and for SGDR models snapshots/cycle<i>/ (oof, test, tta.json), the
same TTA over each snapshot; with pseudo.extra, extra: its images (data/extra/) through the kept
weights, the same views and beta. Without TTA the plain predictions are the blended ones, written
once. Only `tta` and competition.metric are read from params, so changing them reruns predict
and what follows, never training. With no view and no random draw (`tta.views: []`,
`tta.random: 0`) and no extra images predict loads no model and no torch: it takes the plain
predictions the train stage wrote beside the weights (`models/<model>/fold<k>/plain/`), the same
numbers a model run would give.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline import metrics
from pipeline.files import atomic_dir, read_json, write_json
from pipeline.index import Index, encode_labels, fold_rows, read_folds, read_index, read_pool
from pipeline.params import Augment, Params, Tta, load_params
from pipeline.preds import blend_tta, read_probs, write_preds
from pipeline.roles import PLAIN, TEACHER, Role, parse_stage, skipped, student, write_skips

BETAS = np.round(np.linspace(0, 1, 11), 2)  # tta.beta: auto tries 0, 0.1, ..., 1 on OOF rows
SPLITS = ("oof", "test")


def choose_beta(outs, targets: np.ndarray, metric: str, combine: str, task: str) -> float:
    """The beta of BETAS that scores best on these (OOF) rows; ties: the lower log loss."""

    def key(beta: float) -> tuple[float, float]:
        blended = blend_tta(outs, beta, combine, task)
        return metrics.score(metric, blended, targets), -metrics.value("log_loss", blended, targets)

    return float(max(BETAS, key=key))


def model_views(net, index: Index, fold: int, tta: Tta, info: dict, device) -> dict:
    """{split: {view: probs}} of one model on one fold, through the model (torch)."""
    # here: torch only when a model predicts (not for tta.views: [])
    from pipeline.inference import predict_split

    info = {**info, "augment": Augment(**info["augment"]) if info.get("augment") else None}
    _, valid_rows = fold_rows(index, read_folds(), fold)
    return {
        "oof": predict_split(net, index, "train", valid_rows, tta, info, device),
        "test": predict_split(net, index, "test", np.arange(len(index.test)), tta, info, device),
    }


def plain_views(folder: Path, classes: list[str]) -> dict:
    """The same without TTA, from the plain predictions the train stage wrote (no torch)."""
    return {s: {"plain": read_probs(folder, s, classes)[1]} for s in SPLITS}


def tta_report(outs: dict, index: Index, fold: int, tta: Tta, info: dict, metric: str):
    """(beta, tta.json's report): beta as set, or tuned on the fold's OOF rows."""
    _, valid_rows = fold_rows(index, read_folds(), fold)
    targets = encode_labels(index.train["label"].iloc[valid_rows], index.classes, info["task"])
    task, beta = info["task"], tta.beta
    if len(outs["oof"]) == 1:  # no view and no random draw: the plain prediction alone
        beta = 1.0
    elif beta == "auto":
        beta = choose_beta(outs["oof"], targets, metric, tta.combine, task)
    oof = outs["oof"]
    report = {
        "views": tta.views, "random": tta.random, "combine": tta.combine, "beta": beta,
        "beta_auto": tta.beta == "auto", "metric": metric,
        "oof_plain": metrics.value(metric, oof["plain"], targets),
        "oof_tta": metrics.value(metric, blend_tta(oof, 0.0, tta.combine, task), targets),
        "oof_blend": metrics.value(metric, blend_tta(oof, beta, tta.combine, task), targets),
    }  # fmt: skip
    return float(beta), report


def write_fold(folder: Path, index: Index, fold: int, outs, beta: float, tta: Tta, info) -> None:
    """oof and test (blended) in `folder`; with TTA views also *_plain (without them) and
    views.npz."""
    _, valid_rows = fold_rows(index, read_folds(), fold)
    ids = {"oof": index.train["id"].iloc[valid_rows], "test": index.test["id"]}
    for split, views in outs.items():
        blended = blend_tta(views, beta, tta.combine, info["task"])
        write_preds(folder, split, ids[split], blended, info["classes"])
        if len(views) > 1:
            write_preds(folder, f"{split}_plain", ids[split], views["plain"], info["classes"])
    if any(len(views) > 1 for views in outs.values()):
        arrays = {f"{s}/{v}": a for s, views in outs.items() for v, a in views.items()}
        np.savez_compressed(folder / "views.npz", **arrays)


def weight_sets(src: Path) -> list[tuple[str, Path]]:
    """(output subfolder, weights) of the kept model and of every SGDR snapshot."""
    snaps = sorted((src / "snapshots").glob("cycle*.safetensors"))
    return [("", src / "model.safetensors"), *((f"snapshots/{s.stem}", s) for s in snaps)]


def predictor(src: Path, tta: Tta, fold: int):
    """(weights, sub) -> {split: {view: probs}}: the train stage's plain predictions when there
    is no TTA (no torch loaded), else the model run on every view."""
    info = read_json(src / "model.json")
    if not tta.views and not tta.random and (src / PLAIN).is_dir():
        return info, lambda weights, sub: plain_views(src / PLAIN / sub, info["classes"])
    # here: torch only when a model predicts (not for tta.views: [])
    from safetensors.torch import load_file

    from pipeline.inference import load_model

    net, _, device = load_model(src)

    def views(weights: Path, sub: str) -> dict:
        net.load_state_dict(load_file(str(weights)))
        return model_views(net, read_index(), fold, tta, info, device)

    return info, views


def pool_preds(src: Path, tta: Tta, info: dict, beta: float, extra: str | None):
    """(ids, probs) of pseudo.extra's images (index.read_pool) through the kept weights, with
    the test set's views and beta; None when there are none (no torch loaded then)."""
    pool = read_pool(extra)
    if not len(pool.test):
        return None
    # here: torch only when a model predicts (not for tta.views: [])
    from pipeline.inference import load_model, predict_split

    net, _, device = load_model(src)
    info = {**info, "augment": Augment(**info["augment"]) if info.get("augment") else None}
    views = predict_split(net, pool, "test", np.arange(len(pool.test)), tta, info, device)
    return pool.test["id"], blend_tta(views, beta, tta.combine, info["task"])


def run(p: Params, name: str, fold: int, role: Role = TEACHER) -> None:
    tta, metric = p.tta, p.competition.metric
    src = role.models / name / f"fold{fold}"
    why = skipped(src)
    if why is not None:  # no student trained: nothing to predict, and the folder says why
        write_skips("predict", name, fold, why, role)
        return
    info, views = predictor(src, tta, fold)
    index = read_index()
    out = role.preds / name / f"fold{fold}"
    with atomic_dir(out) as tmp:  # every file appears together or not at all
        for sub, weights in weight_sets(src):
            outs = views(weights, sub)
            beta, report = tta_report(outs, index, fold, tta, info, metric)
            (tmp / sub).mkdir(parents=True, exist_ok=True)
            write_fold(tmp / sub, index, fold, outs, beta, tta, info)
            write_json(tmp / sub / "tta.json", report)  # its beta: what an exported kernel uses
            if not sub:
                kept = outs, beta, report
        outs, beta, report = kept
        extra = pool_preds(src, tta, info, beta, p.pseudo.extra)
        if extra is not None:
            write_preds(tmp, "extra", *extra, info["classes"])
    n_extra = "" if extra is None else f" + {len(extra[0])} extra"
    print(
        f"predict: {role.name} {name} fold {fold}, {len(outs['oof']['plain'])} oof + "
        f"{len(index.test)} test{n_extra} rows, TTA {tta.views} + {tta.random} random, beta {beta} "
        f"(OOF {metric}: plain {report['oof_plain']:.4f}, TTA {report['oof_tta']:.4f}, "
        f"blend {report['oof_blend']:.4f}) -> {out}/"
    )


def main(argv: list[str]) -> None:
    a = parse_stage("predict", argv)
    run(load_params(), a.model, a.fold, student(a.round) if a.student else TEACHER)
