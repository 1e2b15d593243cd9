"""init: point the pipeline at a competition. Fetches or links its data as the download stage
does, reads it as prepare does, and writes params.yaml with what a competitor would have set by
hand, each decision printed with its evidence (and saved in data/init.txt).

    python -m pipeline init dog-breed-identification    # a Kaggle slug (the Kaggle CLI)
    python -m pipeline init --path /kaggle/input/NAME   # a local copy: a folder or an archive
    python -m pipeline init SLUG --force                # over a params.yaml with uncommitted edits

Only the keys it decides change; every comment and the key order stay. It refuses to overwrite
a params.yaml that differs from the committed one unless --force, and prints the `git diff`.
The rules (documented in README "A real competition"):

- metric: Kaggle's name of the evaluation metric mapped onto ours (KAGGLE_METRICS); an unknown
  one is named and competition.metric left as it was. Offline (--path): guessed from the sample
  submission's shape, and said to be a guess.
- image size: the largest of SIZES not above the median shorter side (at most CPU_MAX_SIZE
  without a GPU); the backbone from BACKBONES by that size and the machine.
- flips: none for glyph-like images (small, one channel), all for overhead or microscopy (TIFF
  files, or OVERHEAD words in the slug), else horizontal: a guess, and the report says so.
- class weights `effective` when the largest class outnumbers the smallest IMBALANCE times.
- the pseudolabel round on when the test set is at least half the training set (what
  pseudolabel warns about otherwise).
"""

from __future__ import annotations

import argparse
import math
import re
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from pipeline import kaggle, layouts, metrics, params_file
from pipeline.files import PipelineError, write_text
from pipeline.params import Competition, load_params, parse_params
from pipeline.stages import download, prepare

PARAMS, REPORT, RAW = Path("params.yaml"), Path("data/init.txt"), Path("data/raw")

# Kaggle's evaluation metric names (lower case, letters and digits only) -> competition.metric
KAGGLE_METRICS = {
    "categorizationaccuracy": "accuracy", "accuracy": "accuracy", "accuracyscore": "accuracy",
    "multiclassloss": "log_loss", "multiclasslogloss": "log_loss", "logloss": "log_loss",
    "binarycrossentropy": "log_loss", "areaunderreceiveroperatingcharacteristiccurve": "roc_auc",
    "auc": "roc_auc", "rocauc": "roc_auc", "meanf2score": "f2_samples", "f2score": "f2_samples",
    "microaveragedf1score": "f1_micro", "f1micro": "f1_micro",
    "quadraticweightedkappa": "qwk", "cohenkappa": "qwk", "qwk": "qwk",
}  # fmt: skip
SIZES = (32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 384, 448, 512)  # px, network input
CPU_MAX_SIZE = 224  # px: larger inputs make an epoch on CPU too slow to iterate on
# (smallest image side it suits, px) -> backbone, by machine; the first that fits is taken
BACKBONES = {"gpu": ((64, "efficientnet_b0"), (0, "resnet18")),
             "cpu": ((64, "efficientnet_lite0"), (0, "resnet10t"))}  # fmt: skip
GLYPH_SIDE = 64  # px: one-channel images this small are digits, letters or glyphs: no flips
OVERHEAD = ("satellite", "aerial", "planet", "amazon", "airbus", "ship", "iceberg", "histopath",
            "cancer", "cell", "microscop", "protein", "malaria", "blood", "patholog", "tissue",
            "cassava", "galaxy", "plankton")  # fmt: skip
CROP_PCT = 0.875  # photos: validation sees this central share of each side (timm's)
IMBALANCE = 5.0  # largest / smallest class count from which the loss is class-weighted
GROUP_WORDS = ("patient", "group", "subject", "user", "case", "study", "individual", "site")
SAMPLE_IMAGES = 200  # images opened for the statistics


@dataclass
class Decision:
    key: str  # "section.key" in params.yaml, or "" for a finding that sets nothing
    value: object
    why: str
    guess: bool = False

    def line(self) -> str:
        what = f"{self.key or 'found'}: {params_file.flow(self.value)}"
        return f"  {what:<40} {self.why}{' (a guess: check it)' if self.guess else ''}"


# --- what the competition is ------------------------------------------------------------------


def kaggle_metric(comp: Competition) -> Decision:
    """competition.metric from Kaggle's metadata; an unknown name is reported, not guessed."""
    name = kaggle.competition_metadata(comp.name)["metric"]
    ours = KAGGLE_METRICS.get(re.sub(r"[^a-z0-9]", "", name.lower()))
    if ours is None:
        return Decision(
            "", name, f"UNKNOWN METRIC: Kaggle scores with '{name}', which has no counterpart "
            f"here; competition.metric is left at '{comp.metric}': set it yourself (one of "
            f"{', '.join(metrics.METRICS)})",
        )  # fmt: skip
    return Decision("competition.metric", ours, f"Kaggle's evaluation metric is '{name}'")


SHAPE_METRICS = {  # submission kind (with metric accuracy) -> the metric such a sample suggests
    "probs": ("log_loss", "one probability column per class"),
    "tags": ("f2_samples", "space-separated tags"),
    "binary": ("roc_auc", "one probability column"),
    "label": ("accuracy", "one label column"),
}


def shape_metric(layout: layouts.Layout, classes: list[str]) -> Decision:
    kind = prepare.submission_kind(layout.sample, classes, layout.task, "accuracy", "auto")
    metric, shape = SHAPE_METRICS[kind]
    why = f"offline: sample_submission has {shape}; check the competition's Evaluation page"
    return Decision("competition.metric", metric, why, guess=True)


def layout_decisions(layout: layouts.Layout, classes: list[str], metric: str) -> list[Decision]:
    """Layout, task, submission kind and (binary) the positive class, as prepare detects them."""
    metrics.check_applies(metric, layout.task)
    kind = prepare.submission_kind(layout.sample, classes, layout.task, metric, "auto")
    out = [
        Decision("competition.layout", layout.name, f"{len(layout.train)} train and "
                 f"{len(layout.test)} test images found this way"),
        Decision("competition.task", layout.task, f"{len(classes)} classes"
                 + (" (rows hold several tags)" if layout.task == "multi_label" else "")),
        Decision("competition.submission", kind,
                 f"sample_submission's columns {list(layout.sample.columns)[:4]}"),
    ]  # fmt: skip
    if kind == "binary":
        pos = prepare.positive_class(classes, layout.sample, None)
        return out + [Decision("competition.positive_class", pos, "the class the sample's "
                               "column names, or the later of the two")]  # fmt: skip
    return out + [Decision("competition.positive_class", None, "not a binary submission")]


def group_decisions(comp: Competition, layout: layouts.Layout, n_classes: int) -> list[Decision]:
    """The label CSV's id column, and its columns whose values repeat across rows but are too
    many to be labels (a patient id): candidates for competition.group_column."""
    none = Decision("competition.group_column", None, "no label CSV column names a group")
    if layout.name != "csv":
        return [none]
    files = layouts.image_lookup(layouts.train_image_dirs(RAW))
    path, _ = layouts.choose_label_csv(layouts.label_csv_candidates(RAW, comp), files)
    labels = layouts.read_csv(path)
    id_col = layouts.guess_id_column(labels, files, path)
    out = [Decision("", id_col, f"the id column of {path.name}: its values name the images")]
    names = set(layout.train["label"]) | set(layout.sample.columns)
    for col in (c for c in labels.columns if c != id_col and c not in names):
        n = labels[col].nunique()
        if not n_classes < n < len(labels) or set(labels[col].astype(str).str.strip()) <= names:
            continue  # a label column (or one-hot), or a value per row
        named = any(w in col.lower() for w in GROUP_WORDS)
        why = (f"{n} values over {len(labels)} rows (about {len(labels) / n:.1f} rows each): "
               "rows of one group should share a fold")  # fmt: skip
        out.append(Decision("competition.group_column" if named else "", col, why, guess=named))
    chosen = [d for d in out[1:] if d.key][:1] or [none]
    return out[:1] + chosen + [d for d in out[1:] if not d.key]


# --- what the images are -----------------------------------------------------------------------


def image_stats(layout: layouts.Layout, seed: int) -> dict:
    """Sizes (width, height), modes and file types of up to SAMPLE_IMAGES training images."""
    if layout.arrays:  # pixels in a CSV: one-channel 8-bit arrays
        n, h, w = layout.arrays["train"].shape[:3]
        return {"sides": np.array([[w, h]]), "modes": Counter({"L": n}), "tiff": False, "n": n}
    paths = layout.train["path"].to_numpy()
    pick = np.random.default_rng(seed).permutation(len(paths))[:SAMPLE_IMAGES]
    sides, modes = [], Counter()
    for p in paths[pick]:
        with Image.open(p) as im:
            sides.append(im.size)
            modes[im.mode] += 1
    tiff = any(str(p).lower().endswith((".tif", ".tiff")) for p in paths[pick])
    return {"sides": np.array(sides), "modes": modes, "tiff": tiff, "n": len(pick)}


def evidence(stats: dict) -> str:
    """Sizes, aspect ratios, channels and bit depth of the sampled images, in one line."""
    sides, modes = stats["sides"], stats["modes"]
    short, aspect = sides.min(1), sides[:, 0] / sides[:, 1]
    w, h = np.median(sides, 0)
    depth = "16-bit" if any(m.startswith("I;16") or m == "I" for m in modes) else "8-bit"
    channels = "one channel" if one_channel(modes) else "colour"
    return (
        f"{stats['n']} images: median {w:.0f}x{h:.0f} px, shorter side {short.min()}-"
        f"{short.max()} px, width/height {aspect.min():.2f}-{aspect.max():.2f}, {channels} "
        f"({', '.join(sorted(modes))}), {depth}"
    )


def one_channel(modes: Counter) -> bool:
    return set(modes) <= {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


def image_decisions(stats: dict, gpu: bool, slug: str, pretrained) -> list[Decision]:
    """Input size, cache, resize, backbone, flips and TTA from the images and the machine."""
    sides, modes = stats["sides"], stats["modes"]
    w, h = np.median(sides, 0)
    short = float(min(w, h))
    size = max([s for s in SIZES if s <= min(short, max(SIZES) if gpu else CPU_MAX_SIZE)],
               default=SIZES[0])  # fmt: skip
    backbone = next(b for side, b in BACKBONES["gpu" if gpu else "cpu"] if short >= side)
    glyph = one_channel(modes) and short <= GLYPH_SIDE
    overhead = stats["tiff"] or any(word in slug.lower() for word in OVERHEAD)
    flips = "none" if glyph else "all" if overhead else "horizontal"
    wide = float(np.median(np.abs(np.log(sides[:, 0] / sides[:, 1])))) > math.log(1.25)
    seen = evidence(stats)
    machine = "a GPU" if gpu else f"no GPU (at most {CPU_MAX_SIZE} px)"
    out = [
        Decision("base.image_size", size, f"{seen}; {machine}"),
        Decision("train.backbones", [backbone], f"{'GPU' if gpu else 'CPU'}, images of "
                 f"{short:.0f} px and more" if short >= 64 else "small images"),
        Decision("model.pretrained", pretrained, "ImageNet weights fine-tune best on real images"
                 if pretrained is True else "as --pretrained asks"),  # fmt: skip
        Decision("prepare.resize", "pad" if wide else "squish",
                 "wide or tall images: letterboxed, nothing lost" if wide else "near-square"),
        Decision("augment.flips", flips, "glyph-like: small, one channel" if glyph else
                 "TIFF files or an overhead/microscopy word in the name" if overhead else
                 "photos", guess=True),
        Decision("tta.views", {"none": [], "horizontal": ["hflip"], "all": ["hflip", "vflip"]}
                 [flips], "the flips the model trained with"),
    ]  # fmt: skip
    return out + crop_decisions(size, short, photo=not glyph and size >= 64)


def crop_decisions(size: int, short: float, photo: bool) -> list[Decision]:
    """Photos: random-resized crops from a cache above the input size (timm's crop_pct 0.875)."""
    if not photo:
        return [Decision("prepare.cache_size", size, "the input size: no crops")]
    cache = int(min(8 * math.ceil(size / CROP_PCT / 8), max(short, size)))
    return [
        Decision("prepare.cache_size", cache, f"input size / {CROP_PCT}: room for crops"),
        Decision("base.crop_pct", CROP_PCT, "validation sees the central crop, as timm's"),
        Decision("augment.crop_scale", [0.35, 1.0], "random-resized crops for photos"),
        Decision("augment.crop_ratio", [0.75, 1.333], "random-resized crops for photos"),
    ]


def balance_decisions(layout: layouts.Layout, classes: list[str]) -> list[Decision]:
    """Class weights past the IMBALANCE ratio; the pseudolabel round if the test set is big."""
    labels = layout.train["label"]
    counts = labels.str.split().explode() if layout.task == "multi_label" else labels
    counts = counts.value_counts().reindex(classes, fill_value=0)
    ratio = counts.max() / max(counts.min(), 1)
    weights = "effective" if ratio >= IMBALANCE else "none"
    n_train, n_test = len(layout.train), len(layout.test)
    return [
        Decision("train.class_weights", weights, f"largest/smallest class {counts.max()}/"
                 f"{counts.min()} = {ratio:.1f} ({'at least' if weights != 'none' else 'under'} "
                 f"{IMBALANCE:g})"),
        Decision("pseudo.enabled", n_test >= n_train / 2, f"{n_test} test images, {n_train} "
                 "train: pseudolabels pay when the test set is at least half the training set"),
    ]  # fmt: skip


# --- params.yaml --------------------------------------------------------------------------------


def check_committed(force: bool) -> None:
    """Refuse to overwrite edits to params.yaml that git has not seen, unless `force`."""
    tracked = subprocess.run(["git", "ls-files", "--error-unmatch", str(PARAMS)],
                             capture_output=True, check=False).returncode == 0  # fmt: skip
    clean = (
        tracked
        and subprocess.run(
            ["git", "diff", "--quiet", "HEAD", "--", str(PARAMS)], capture_output=True, check=False
        ).returncode
        == 0
    )
    if not clean and not force:
        what = "differs from the committed one" if tracked else "is not committed in git"
        raise PipelineError(
            f"{PARAMS} {what}: init would overwrite it; commit or stash your edits, or pass --force"
        )


def write_params(decisions: list[Decision]) -> str:
    """params.yaml with the decided keys set, checked as every stage checks it, then written."""
    values = {d.key: d.value for d in decisions if d.key}
    text = params_file.set_values(PARAMS.read_text(), values)
    parse_params(yaml.safe_load(text), str(PARAMS))
    write_text(PARAMS, text)
    diff = subprocess.run(["git", "diff", "--no-color", "--", str(PARAMS)], capture_output=True,
                          text=True, check=False)  # fmt: skip
    return diff.stdout if diff.returncode == 0 else "(not a git repository: no diff)"


# --- the command ----------------------------------------------------------------------------------


def source_of(slug: str | None, path: str | None, comp: Competition) -> Competition:
    """The competition section pointed at the slug or local copy, everything else detected."""
    where = (
        {"source": "kaggle", "name": slug, "path": None}
        if path is None
        else {"source": "path", "path": path, "name": slug or Path(path).name.split(".")[0]}
    )
    detect = {"layout": "auto", "task": "auto", "submission": "auto", "positive_class": None,
              "group_column": None}  # fmt: skip
    return comp.model_copy(update=where | detect)


def decide(comp: Competition, seed: int, gpu: bool, pretrained) -> list[Decision]:
    """Every decision with its evidence, from data/raw (as download left it)."""
    layout = layouts.read(RAW, comp)
    classes = prepare.classes_of(layout.train, layout.task)
    found = [Decision("competition.source", comp.source, "where the data comes from"),
             Decision("competition.name", comp.name, "the competition"),
             Decision("competition.path", comp.path, "its local copy")]  # fmt: skip
    metric = kaggle_metric(comp) if comp.source == "kaggle" else shape_metric(layout, classes)
    found.append(metric)
    m = metric.value if metric.key else comp.metric
    found += layout_decisions(layout, classes, m) + group_decisions(comp, layout, len(classes))
    found += image_decisions(image_stats(layout, seed), gpu, comp.name, pretrained)
    return found + balance_decisions(layout, classes)


def run(slug: str | None, path: str | None, force: bool = False, pretrained=True) -> str:
    """Fetch or link the data, decide, write params.yaml; returns the report."""
    check_committed(force)
    p = load_params()
    comp = source_of(slug, path, p.competition)
    if comp.source == "path":
        download.local_source(comp)  # a missing copy is named before data/ is touched
    download.run(comp, p.base.seed)
    decisions = decide(comp, p.base.seed, gpu_visible(), pretrained)
    report = "init: what params.yaml now says, and why\n" + "\n".join(d.line() for d in decisions)
    diff = write_params(decisions)
    write_text(REPORT, report + "\n")
    print(report)
    print(diff or "init: params.yaml already said all of this")
    print("init: next `dvc repro`; the report is in data/init.txt")
    return report


def gpu_visible() -> bool:
    import torch  # here: the rest of init needs no torch

    return torch.cuda.is_available()


def pretrained_arg(text: str):
    value = {"true": True, "false": False}.get(text.lower(), text)
    if isinstance(value, str) and not Path(value).is_file():
        raise argparse.ArgumentTypeError(f"{value}: no such weights file (or give true, false)")
    return value


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="python -m pipeline init", description=__doc__.split("\n")[0])
    ap.add_argument("competition", nargs="?", help="the Kaggle slug, e.g. dog-breed-identification")
    ap.add_argument("--path", help="a local copy instead: a folder or an archive")
    ap.add_argument("--force", action="store_true", help="overwrite uncommitted params.yaml edits")
    ap.add_argument("--pretrained", type=pretrained_arg, default=True,
                    help="model.pretrained: true (hub), false, or a weights file")  # fmt: skip
    a = ap.parse_args(argv)
    if a.competition is None and a.path is None:
        ap.error("name a Kaggle competition or give --path")
    run(a.competition, a.path, a.force, a.pretrained)
