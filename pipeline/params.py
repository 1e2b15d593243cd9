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
    image_size: int  # px, square network input

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
    metric: Literal["accuracy"]


class Prepare(Section):
    cache_size: int | None  # px; resize once into a uint8 array, None: decode every epoch


class Model(Section):
    pretrained: bool | str  # true: timm download, false: random init, str: local weights file
    drop_rate: float


class Train(Section):
    backbones: list[str]  # timm model names; dvc.yaml fans out over backbones x folds
    epochs: int
    batch_size: int
    lr: float  # peak of the 1cycle schedule
    pct_start: float  # fraction of steps spent warming up
    div: float  # start lr = lr / div
    final_div: float  # end lr = lr / final_div
    weight_decay: float
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
