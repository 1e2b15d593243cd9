"""Typed, strict view of params.yaml: one frozen model per section, unknown keys rejected by name.

params.yaml is the one home of defaults: nothing here has a default value, so code and file can
never disagree. `load_params()` validates the whole file (a typo in any section stops every stage)
and each stage then reads only the sections it declares in dvc.yaml.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from pipeline.files import PipelineError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Base(Section):
    seed: int
    folds: list[int]  # fold ids; dvc.yaml fans train/predict out over this list
    image_size: int | None  # px, square network input; None: the backbone's default input size

    @field_validator("folds")
    @classmethod
    def _folds_are_range(cls, v: list[int]) -> list[int]:
        if len(v) < 2 or sorted(v) != list(range(len(v))):
            raise ValueError(f"must be 0, 1, …, K-1 with K >= 2, got {v}")
        return v


class Competition(Section):
    source: Literal["demo", "kaggle", "path"]
    name: str
    path: str | None  # source: path — a folder or a .zip
    files: list[str]  # source: kaggle — only these files (empty: the whole competition)
    # drives checkpoint selection, threshold tuning and the CV score (see pipeline/metrics.py)
    metric: Literal["accuracy", "log_loss", "roc_auc", "f2_samples", "f1_micro", "qwk"]
    # the keys below are detected from data/raw when "auto" / None; set one to override
    layout: Literal["auto", "csv", "class_folders", "filename_labels", "pixels_csv"]
    task: Literal["auto", "single_label", "multi_label"]
    submission: Literal["auto", "label", "probs", "binary", "tags"]
    id_column: str | None  # in the label CSV
    label_column: str | None  # in the label CSV (multi-label: space-separated tags)
    group_column: str | None  # in the label CSV; rows sharing a group share a fold
    positive_class: str | None  # binary submissions write P(this class)


class Prepare(Section):
    cache_size: int | None  # px; resize once into a uint8 array, None: decode every epoch


class Model(Section):
    pretrained: bool | str  # true: timm download, false: random init, str: local weights file
    drop_rate: float
    n_groups: int  # layer groups for differential LRs, the head included (>= 2)
    mean: list[float] | None  # input normalisation; None: the model's own (timm data config)
    std: list[float] | None

    @field_validator("n_groups")
    @classmethod
    def _two_groups_or_more(cls, v: int) -> int:
        if v < 2:
            raise ValueError("must be >= 2 (body and head)")
        return v


class Head(Section):
    epochs: int  # epochs with everything but the head frozen (0: skip the phase)
    lr: float | Literal["auto"]  # peak LR of the head phase; auto: LR range test
    train_bn: bool  # BatchNorm of frozen groups keeps training (fastai's default)
    precompute: bool  # train the head on backbone features computed once (frozen BN, no aug)


class LrFind(Section):
    start: float  # first LR of the exponential sweep
    end: float  # last LR
    steps: int  # batches in the sweep (stops early once the loss diverges)
    suggestion: Literal["valley", "minimum", "steepest"]  # minimum: LR at lowest loss / 10


class Train(Section):
    backbones: list[str]  # timm model names; dvc.yaml fans out over backbones x folds
    epochs: int  # epochs of the unfrozen phase
    batch_size: int
    lr: float | Literal["auto"]  # peak LR of the head group; auto: LR range test
    lr_mult: float  # first layer group's LR = lr / lr_mult, geometric in between
    schedule: Literal["one_cycle", "sgdr"]
    pct_start: float  # one_cycle: fraction of steps spent warming up
    div: float  # one_cycle: start lr = lr / div
    final_div: float  # one_cycle: end lr = lr / final_div (also sgdr's floor)
    cycle_len: int  # sgdr: epochs in the first cycle
    cycle_mult: int  # sgdr: each cycle is this many times longer than the last
    weight_decay: float  # AdamW, decoupled; never on norms and biases
    class_weights: Literal["none", "balanced", "effective"]
    effective_beta: float  # class_weights: effective — (1 - beta) / (1 - beta ** n_class)
    sampler: Literal["shuffle", "balanced"]  # balanced: draw every class equally often
    label_smoothing: float
    num_workers: int
    mixed_precision: Literal["no", "bf16", "fp16"]  # autocast on GPU only


class Augment(Section):
    strength_start: float  # multiplier of every augmentation at the first epoch
    strength_end: float  # … and at the last; linear in between
    hflip: bool
    vflip: bool
    rotate: float  # degrees at strength 1
    shift: float  # fraction of the image side at strength 1
    scale: float  # relative zoom range at strength 1
    brightness: float  # brightness/contrast range at strength 1


class Tta(Section):
    views: list[Literal["basic", "hflip", "vflip", "shift"]]
    batch_size: int

    @field_validator("views")
    @classmethod
    def _not_empty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("needs at least one view, e.g. [basic]")
        return v


class Upload(Section):
    enabled: bool  # false: write a "skipped" receipt; true: really submit with the Kaggle CLI
    message: str | None  # None: CV score, backbones and git revision
    poll_attempts: int  # times to ask Kaggle for the score before giving up (status: pending)
    poll_interval_s: float


class Params(Section):
    base: Base
    competition: Competition
    prepare: Prepare
    model: Model
    head: Head
    lr_find: LrFind
    train: Train
    augment: Augment
    tta: Tta
    upload: Upload


def _where(loc: tuple) -> str:
    return ".".join(str(p) for p in loc)


def parse_params(raw: object, source: str = "params.yaml") -> Params:
    if not isinstance(raw, dict):
        raise PipelineError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            key = _where(err["loc"])
            if err["type"] == "extra_forbidden":
                lines.append(f"{source}: unknown key '{key}'")
            elif err["type"] == "missing":
                lines.append(f"{source}: missing key '{key}'")
            else:
                lines.append(f"{source}: key '{key}': {err['msg']} (got {err['input']!r})")
        raise PipelineError("\n".join(lines)) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.exists():
        raise PipelineError(f"{path}: not found (run from the project folder)")
    with open(path) as f:
        try:
            raw = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise PipelineError(f"{path}: not valid YAML: {e}") from None
    return parse_params(raw, str(path))
