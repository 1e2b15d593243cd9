"""Typed, strict view of params.yaml: one frozen model per section, unknown keys rejected by name.

params.yaml is the one home of defaults: nothing here has a default value, so code and file can
never disagree. `load_params()` validates the whole file (a typo in any section stops every stage)
and each stage then reads only the sections it declares in dvc.yaml.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from pipeline.files import PipelineError
from pipeline.params_checks import check_recipe, check_students, check_weights
from pipeline.params_errors import error_message, read_yaml

Count = Annotated[int, Field(ge=0)]  # epochs, workers, attempts: zero allowed
Size = Annotated[int, Field(ge=1)]  # batch sizes, steps, cycle lengths
Pos = Annotated[float, Field(gt=0)]  # learning rates, divisors
MAX_ROUNDS = 3  # pseudo.rounds: dvc.yaml defines the stages of rounds 2 and 3
Frac = Annotated[float, Field(ge=0, lt=1)]  # label smoothing, beta


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Base(Section):
    seed: Annotated[int, Field(ge=0)]  # every run's seeds are hashed from it (train.run_seed)
    folds: list[int]  # fold ids; dvc.yaml fans train/predict out over this list
    image_size: Size | None  # px, square network input; None: the backbone's default input size
    # validation and prediction see the central crop_pct of each (cached) image's side, resized
    # to image_size; 1: the whole image (timm's ImageNet models: 0.875 with a larger cache)
    crop_pct: Annotated[float, Field(gt=0, le=1)]

    @field_validator("folds")
    @classmethod
    def _folds_are_range(cls, v: list[int]) -> list[int]:
        if len(v) < 2 or sorted(v) != list(range(len(v))):
            raise ValueError("must be 0, 1, …, K-1 with K >= 2, each once")
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
    label_csv: str | None  # the label CSV, a file name relative to data/raw; None: detected
    id_column: str | None  # in the label CSV
    label_column: str | None  # in the label CSV (multi-label: space-separated tags)
    group_column: str | None  # in the label CSV; rows sharing a group share a fold
    positive_class: str | None  # binary submissions write P(this class)


class Prepare(Section):
    cache_size: Size | None  # px; resize once into a uint8 array, None: decode every epoch
    resize: Literal["squish", "crop", "pad"]  # a photo that is not square: index.square


IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


class Model(Section):
    # true: timm download, false: random init, str: a local weights file; or one of those per
    # backbone, {name: value}, naming every backbone trained (teachers, students from scratch)
    pretrained: bool | str | dict[str, bool | str]
    drop_rate: Annotated[float, Field(ge=0, lt=1)]  # dropout probability before the classifier
    drop_path_rate: Annotated[float, Field(ge=0, lt=1)]  # stochastic depth (timm's), 0: none
    n_groups: int  # layer groups for differential LRs, the head included (>= 2)
    # input normalisation per RGB channel, fractions of 255; None: the model's own (timm's)
    mean: list[Annotated[float, Field(ge=0, le=1)]] | None
    std: list[Annotated[float, Field(gt=0, le=1)]] | None

    @field_validator("mean", "std", mode="before")
    @classmethod
    def _one_per_channel(cls, v: object, info: ValidationInfo) -> object:
        """3 fractions of 255 (std above 0): a wrong length or 0-255 values, named at once."""
        if not isinstance(v, list) or not all(isinstance(x, (int, float)) for x in v):
            return v  # null, or not numbers: the type's own message
        low = (lambda x: x > 0) if info.field_name == "std" else (lambda x: x >= 0)
        if len(v) != 3 or not all(low(x) and x <= 1 for x in v):
            raise ValueError(
                f"needs 3 values, one per RGB channel, each a fraction of 255 "
                f"{'above 0 and ' if info.field_name == 'std' else ''}up to 1 (ImageNet's "
                f"{info.field_name}: {IMAGENET[info.field_name]}); or null for the backbone's own"
            )
        return v

    def weights(self, name: str) -> bool | str:
        """`pretrained` for backbone `name` (params validation checked a mapping names it)."""
        return self.pretrained[name] if isinstance(self.pretrained, dict) else self.pretrained

    @field_validator("n_groups")
    @classmethod
    def _two_groups_or_more(cls, v: int) -> int:
        if v < 2:
            raise ValueError("must be >= 2 (body and head)")
        return v


class Head(Section):
    epochs: Count | Literal["auto"]  # epochs with everything but the head frozen (0: skip the
    # phase); auto: Params.head_epochs()
    lr: Pos | Literal["auto"]  # peak LR of the head phase; auto: LR range test
    train_bn: bool  # BatchNorm of frozen groups keeps training (fastai's default)
    precompute: bool  # train the head on backbone features computed once (frozen BN, no aug)


class LrFind(Section):
    start: Pos  # first LR of the exponential sweep
    end: Pos  # last LR
    steps: Annotated[int, Field(ge=3)]  # batches in the sweep (stops early once the loss diverges)
    suggestion: Literal["valley", "minimum", "steepest"]  # minimum: LR at lowest loss / 10


class Train(Section):
    backbones: list[str]  # timm model names; dvc.yaml fans out over backbones x folds
    epochs: Count  # epochs of the unfrozen phase
    sizes: list[Size] | None  # progressive resizing: epochs split evenly, the last is the input
    batch_size: Size | Literal["auto"]  # auto: from the number of training rows (train.py)
    accumulate: Size  # batches whose gradients add up to one optimizer step (1: every batch)
    lr: Pos | Literal["auto"]  # peak LR of the head group; auto: LR range test
    lr_mult: Annotated[
        float, Field(ge=1)
    ]  # first layer group's LR = lr / lr_mult, geometric in between
    schedule: Literal["one_cycle", "sgdr"]
    pct_start: Annotated[float, Field(gt=0, lt=1)]  # one_cycle: fraction of steps spent warming up
    div: Pos  # one_cycle: start lr = lr / div
    final_div: Pos  # one_cycle: end lr = lr / final_div (also sgdr's floor)
    cycle_len: Size  # sgdr: epochs in the first cycle
    cycle_mult: Size  # sgdr: each cycle is this many times longer than the last
    weight_decay: Annotated[float, Field(ge=0)]  # AdamW, decoupled; never on norms and biases
    class_weights: Literal["none", "balanced", "effective"]
    effective_beta: Frac  # class_weights: effective — (1 - beta) / (1 - beta ** n_class)
    sampler: Literal["shuffle", "balanced"]  # balanced: draw every class equally often
    label_smoothing: Frac
    num_workers: Count | Literal["auto"]  # DataLoader workers; auto: from the machine
    mixed_precision: Literal["no", "bf16", "fp16"]  # autocast on GPU only
    compile: bool  # torch.compile the model (GPU only)
    # decay of an EMA of the weights (timm's ModelEmaV3, with its warm-up); 0 or None: off
    ema: Annotated[float, Field(ge=0, lt=1)] | None

    @field_validator("backbones")
    @classmethod
    def _some_backbones(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("needs at least one timm model name, e.g. [resnet18]")
        twice = sorted({b for b in v if v.count(b) > 1})
        if twice or not all(b.strip() for b in v):
            what = f"{twice} twice" if twice else "an empty name"
            raise ValueError(f"lists {what}: name each backbone once")
        return v


NonNeg = Annotated[float, Field(ge=0)]
Unit = Annotated[float, Field(ge=0, le=1)]


class Augment(Section):
    ramp: Literal["linear", "cosine"]  # how the strength rises from strength_start to strength_end
    strength_start: Unit  # strength s of the first epoch: every magnitude below times s
    strength_end: Unit  # … of the last epoch before the clean ones
    clean_epochs: Count  # the last epochs train at clean_strength
    clean_strength: Unit  # 0: no augmentation at all in those epochs
    flips: Literal["none", "horizontal", "all"]  # all: + vertical flips and 90° rotations
    rotate: NonNeg  # degrees at strength 1
    shift: NonNeg  # fraction of the image side at strength 1
    scale: NonNeg  # relative zoom range at strength 1
    # random-resized crop at strength 1: [min, max] share of the image's area and of its aspect
    # ratio (width / height); both [1, 1]: off. Strength s narrows them towards 1 (s = 0: off)
    crop_scale: list[Annotated[float, Field(gt=0, le=1)]]
    crop_ratio: list[Pos]
    brightness: NonNeg  # brightness/contrast range at strength 1
    hue: Annotated[float, Field(ge=0, le=0.5)]  # hue shift (fraction of the colour wheel)
    saturation: NonNeg  # saturation range at strength 1
    blur: NonNeg  # largest Gaussian blur sigma (px) at strength 1
    noise: Unit  # largest Gaussian noise std (fraction of 255) at strength 1
    cutout: Unit  # side of a dropped square (fraction of the image side) at strength 1
    # Beta(alpha, alpha) of mixup / cutmix (0: off); a batch is mixed with chance = strength s
    mixup: NonNeg
    cutmix: NonNeg

    @field_validator("crop_scale", "crop_ratio")
    @classmethod
    def _a_range(cls, v: list[float], info: ValidationInfo) -> list[float]:
        if len(v) != 2 or v[0] > v[1]:
            e = {"crop_scale": "[0.35, 1.0]", "crop_ratio": "[0.75, 1.333]"}[info.field_name]
            raise ValueError(f"must be [min, max] with min <= max, e.g. {e}; [1, 1]: off")
        return v


TTA_VIEWS = ("identity", "hflip", "vflip", "rot90s", "transposes", "shift", "zoom")


class Tta(Section):
    views: list[Literal[TTA_VIEWS]]  # each feeds the model; averaged into the augmented output
    random: Count  # draws of the training augmentation at random_strength, also averaged
    random_strength: Unit
    combine: Literal["probs", "logits"]  # views averaged as probabilities or as logits
    beta: Unit | Literal["auto"]  # weight of the plain prediction (fastai); auto: tuned on OOF
    batch_size: Size


class Ensemble(Section):
    weights: Literal["equal", "fit"]  # fit: non-negative, summing to 1, fitted on other folds
    snapshots: bool  # SGDR snapshots (train.schedule: sgdr) join the blend as one member each


NOISE_MODEL_KEYS = {"model.drop_rate", "model.drop_path_rate"}  # pseudo.noise's model keys


class Pseudo(Section):
    enabled: bool  # false: no student trains; the submission comes from the teachers
    source: Literal["fold", "ensemble"]  # fold: fold k's teachers label for fold k's student
    threshold: Annotated[float, Field(ge=0, le=1)]  # keep an image if its top probability >= it
    class_cap: bool  # a class keeps at most its training share of all confident images
    soft: bool  # train on the teacher's probabilities (true) or on hard labels (false)
    temperature: Pos  # soft targets p ** (1 / T), renormalised: T < 1 sharpens
    ratio: Annotated[float, Field(ge=2, le=4)]  # N of pseudo:labeled = 1:N in every batch
    weighting: Literal["cut", "confidence", "online"]  # cut: the threshold keeps, each weighs
    # `weight`; confidence: no cut, each image weighs `weight` x its confidence rescaled from
    # chance to 1; online (FixMatch): no cut, each image's target is the student's own
    # prediction on a weak view of it, counted (weighing `weight`) where it reaches the threshold
    weight: Annotated[float, Field(ge=0)]  # loss weight of a pseudolabeled image
    weight_rampup: Count  # epochs over which that weight rises linearly from 0 (0: from the start)
    init: Literal["teacher", "scratch"]  # student starts from fold k's teacher, or afresh
    # each teacher's student (dvc.yaml: students fan out over train.backbones x folds, in folders
    # named by the teacher); None: the teacher's own backbone; {teacher: timm name}: another one
    backbones: dict[str, str] | None
    epochs: Count  # the student's unfrozen-phase epochs (train.epochs for teachers)
    lr: Pos | Literal["auto"]  # the student's peak LR of the head group (train.lr for teachers)
    blend_teachers: bool  # the final ensemble averages teachers and students, not students alone
    submit: Literal["auto", "students"]  # auto: the teachers when the students score worse
    # the students train on labeled rows only: what their extra epochs alone give; true: labeled
    # rows fill the pseudolabels' places, drop: the student's batches without the pseudolabels
    control: bool | Literal["drop"]
    # round r's students label the test set for round r + 1's; the last round's are submitted
    rounds: Annotated[int, Field(ge=1, le=MAX_ROUNDS)]
    # all: pseudo.noise's augment keys augment every image a student trains on; pseudolabels:
    # only the pseudolabeled ones (FixMatch's strong view), the labeled rows keep the teachers'
    noise_on: Literal["all", "pseudolabels"]  # (before noise: its validator reads it)
    # the students' own noise (Noisy Student): {augment.KEY or model.drop_rate / drop_path_rate:
    # value} over the teachers' params; {}: the teachers' noise
    noise: dict[str, float | str | bool | list[float]]
    # unlabeled images beyond the test set (a folder or an archive): predicted by each fold's
    # teachers and selected with the test set; never validated on, never submitted
    extra: str | None

    @field_validator("noise")
    @classmethod
    def _noise_keys(cls, v: dict, info: ValidationInfo) -> dict:
        allowed = {f"augment.{k}" for k in Augment.model_fields} | NOISE_MODEL_KEYS
        unknown = sorted(set(v) - allowed)
        if unknown:
            raise ValueError(
                f"{unknown[0]!r} is not a student noise key: augment.* (e.g. "
                "augment.strength_start, augment.mixup), model.drop_rate or model.drop_path_rate"
            )
        batchwide = sorted(set(v) & {"augment.mixup", "augment.cutmix"})
        if info.data.get("noise_on") == "pseudolabels" and batchwide:
            raise ValueError(
                f"{batchwide[0]} mixes whole batches, labeled rows too; with pseudo.noise_on: "
                "pseudolabels give per-image keys only (e.g. augment.cutout)"
            )
        return v

    @field_validator("backbones", mode="before")
    @classmethod
    def _mapping(cls, v: object) -> object:
        if isinstance(v, list):
            raise ValueError(
                "is null (each teacher's student has the teacher's backbone, following "
                "train.backbones) or a mapping {teacher: student backbone}, e.g. "
                "{resnet18: efficientnet_b0} with pseudo.init: scratch; not a list"
            )
        return v

    @field_validator("ratio", mode="before")
    @classmethod
    def _ratio_named(cls, v: object) -> object:
        if isinstance(v, (int, float)) and not 2 <= v <= 4:
            raise ValueError(f"1:N pseudo:labeled needs N from 2 to 4, got {v}")
        return v


class Upload(Section):
    enabled: bool  # false: write a "skipped" receipt; true: really submit with the Kaggle CLI
    message: str | None  # None: CV score, backbones and git revision
    poll_attempts: Count  # times to ask Kaggle for the score before giving up (status: pending)
    poll_interval_s: Annotated[float, Field(ge=0)]


class Export(Section):
    enabled: bool  # true: a code competition; export/ is written and upload submits the kernel
    owner: str | None  # the Kaggle username owning the dataset and the kernel (required if on)
    dataset: str | None  # the dataset's slug; None: COMPETITION-models
    kernel: str | None  # the kernel's slug; None: COMPETITION-inference
    gpu: bool  # the kernel asks for a GPU accelerator
    private: bool  # dataset and kernel private


class Diagnose(Section):
    enabled: bool  # false: the stage writes a note and no images
    model: str | None  # None: the first backbone of what is submitted (students, or teachers)
    fold: Count  # whose validation rows are shown (one of base.folds)
    per_class: Size  # Grad-CAM images per class
    max_classes: Size  # the most frequent classes shown when there are more
    top_losses: Count  # images in the top-losses grid
    size: Annotated[int, Field(ge=32, le=512)]  # px, the side of each image shown


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
    ensemble: Ensemble
    pseudo: Pseudo
    upload: Upload
    diagnose: Diagnose
    export: Export

    @model_validator(mode="after")
    def _across_sections(self) -> Params:
        check_students(self)
        check_weights(self)  # before head_epochs, which reads a mapping's entries
        if self.head_epochs() + self.train.epochs < 1:
            raise ValueError("head.epochs + train.epochs must be at least 1")
        if self.lr_find.end <= self.lr_find.start:
            raise ValueError("lr_find.end must be larger than lr_find.start")
        check_recipe(self)
        self.noised("augment"), self.noised("model")  # pseudo.noise's values, as sections do
        if self.diagnose.fold not in self.base.folds:
            raise ValueError(f"diagnose.fold {self.diagnose.fold} is not in base.folds")
        return self

    def head_epochs(self, name: str | None = None) -> int:
        """head.epochs, `auto` resolved: 1 when backbone `name` starts from pretrained weights (a
        new classifier on top of trained features is fitted first, as fastai's fine_tune does,
        so its first gradients do not wreck the features), 0 from random init (nothing worth
        freezing). Without a name: the fewest over every backbone trained."""
        if self.head.epochs != "auto":
            return self.head.epochs
        names = [name] if name is not None else self.trained_backbones()
        return min(0 if self.model.weights(n) is False else 1 for n in names)

    def trained_backbones(self) -> list[str]:
        """Every backbone that starts from model.pretrained: the teachers, and the students from
        scratch (a student refining its teacher starts from the teacher's weights)."""
        students = list(self.students().values()) if self.students_from_weights() else []
        return list(dict.fromkeys([*self.train.backbones, *students]))

    def student(self) -> Params:
        """The teachers' params with pseudo.noise's keys (augment's: if pseudo.noise_on: all)."""
        names = ["model"] + ([] if self.pseudo.noise_on == "pseudolabels" else ["augment"])
        return self.model_copy(update={name: self.noised(name) for name in names})

    def pseudo_augment(self) -> Augment:  # the pseudolabeled images': pseudo.noise's augment keys
        return self.noised("augment")

    def noised(self, name: str):
        """Section `name` (augment or model) with pseudo.noise's keys of that section."""
        section, noise = getattr(self, name), self.pseudo.noise.items()
        try:
            part = {k.split(".")[1]: v for k, v in noise if k.split(".")[0] == name}
            return type(section).model_validate(section.model_dump() | part)
        except ValidationError as e:
            err = e.errors()[0]
            where = f"{name}.{err['loc'][0]}" if err["loc"] else name
            msg = err["msg"].removeprefix("Value error, ")
            raise ValueError(f"pseudo.noise: {where}: {msg}") from None

    def students_from_weights(self) -> bool:
        """Whether students train, each from model.pretrained (init: scratch), not its teacher."""
        return self.pseudo.enabled and self.pseudo.init == "scratch"

    def students(self) -> dict[str, str]:
        """Each teacher's student: {its folder name (the teacher's backbone): its backbone}."""
        over = self.pseudo.backbones or {}
        return {t: over.get(t, t) for t in self.train.backbones}


def parse_params(raw: object, source: str = "params.yaml") -> Params:
    if not isinstance(raw, dict):
        raise PipelineError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as e:
        raise PipelineError(error_message(e, Params, source)) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    return parse_params(read_yaml(path), str(path))
