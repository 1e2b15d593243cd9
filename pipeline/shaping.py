"""Which params shape what, in one place. The resume key of a training run (specs.fingerprint),
the pseudolabels' provenance (pseudolabel's source.json) and the `params:` of dvc.yaml's train,
train_student and pseudolabel stages (held equal by tests/test_deps.py) all derive from here."""

from __future__ import annotations

SECTIONS = ("base", "model", "head", "lr_find", "train", "augment")  # every key shapes weights,
NOT_WEIGHTS = {  # but these: which model it is, how fast it runs, what folds.csv already holds
    "base": frozenset({"folds"}),
    "train": frozenset({"backbones", "num_workers", "compile"}),
}
STUDENT_OWN = frozenset({"epochs", "lr"})  # train.* keys a student takes from pseudo.* instead
# the pseudo keys that shape a student's weights (its selection acts through its labels file;
# with weighting: online, threshold, soft and temperature act in training too)
STUDENT_KEYS = frozenset({"init", "ratio", "weight", "weighting", "weight_rampup", "epochs", "lr",
                          "control", "noise", "noise_on", "backbones", "threshold", "soft",
                          "temperature"})  # fmt: skip
# the pseudo keys that choose the pseudolabels, recorded in pseudo/foldK/source.json
SELECTION = ("enabled", "source", "threshold", "weighting", "class_cap", "soft", "temperature",
             "extra")  # fmt: skip
ALSO = ("competition.metric",)  # outside those sections: the metric picks the kept epoch


def excluded(section: str, student: bool = False) -> frozenset[str]:
    """The keys of `section` that do not shape a (student's) weights."""
    own = STUDENT_OWN if student and section == "train" else frozenset()
    return NOT_WEIGHTS.get(section, frozenset()) | own
