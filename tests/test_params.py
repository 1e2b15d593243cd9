"""params.yaml is strict: an unknown or mistyped key stops everything and is named."""

import copy

import pytest
import yaml

from pipeline.files import PipelineError
from pipeline.params import load_params, parse_params
from tests.conftest import ROOT


@pytest.fixture
def raw() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_project_params_load(raw):
    p = parse_params(raw)
    assert p.base.folds == list(range(len(p.base.folds)))
    assert p.competition.source == "demo"  # the embedded, offline default


def test_unknown_key_is_named(raw):
    bad = copy.deepcopy(raw)
    bad["train"]["lrr"] = 0.1
    with pytest.raises(PipelineError, match=r"unknown key 'train\.lrr'"):
        parse_params(bad)


def test_unknown_section_is_named(raw):
    bad = copy.deepcopy(raw)
    bad["trian"] = {"epochs": 3}
    with pytest.raises(PipelineError, match=r"unknown key 'trian'"):
        parse_params(bad)


def test_mistyped_value_is_named(raw):
    bad = copy.deepcopy(raw)
    bad["train"]["epochs"] = "ten"
    with pytest.raises(PipelineError, match=r"'train\.epochs'.*'ten'"):
        parse_params(bad)


def test_missing_key_is_named(raw):
    bad = copy.deepcopy(raw)
    del bad["tta"]["views"]
    with pytest.raises(PipelineError, match=r"missing key 'tta\.views'"):
        parse_params(bad)


def test_folds_must_be_a_range(raw):
    bad = copy.deepcopy(raw)
    bad["base"]["folds"] = [0, 2]
    with pytest.raises(PipelineError, match=r"base\.folds"):
        parse_params(bad)


def test_load_names_the_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("base: [unclosed\n")
    with pytest.raises(PipelineError, match="params.yaml: not valid YAML"):
        load_params(path)
    with pytest.raises(PipelineError, match="not found"):
        load_params(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        (
            "train",
            "batch_size",
            0,
            r"'train\.batch_size': Input should be greater than or equal to 1",
        ),
        ("train", "cycle_len", 0, r"'train\.cycle_len'"),
        ("train", "lr", -0.1, r"'train\.lr'"),
        ("train", "label_smoothing", 1.0, r"'train\.label_smoothing'"),
        ("lr_find", "steps", 2, r"'lr_find\.steps'"),
    ],
)
def test_out_of_range_values_are_named(raw, section, key, value, message):
    bad = copy.deepcopy(raw)
    bad[section][key] = value
    with pytest.raises(PipelineError, match=message):
        parse_params(bad)


def test_rules_across_sections(raw):
    bad = copy.deepcopy(raw)
    bad["head"]["epochs"], bad["train"]["epochs"] = 0, 0
    with pytest.raises(PipelineError, match=r"head\.epochs \+ train\.epochs must be at least 1"):
        parse_params(bad)


def test_a_student_of_no_epochs_is_named(raw):
    for init, head in (("teacher", 1), ("scratch", 0)):  # a refined teacher has no head phase
        bad = copy.deepcopy(raw)
        bad["pseudo"].update(epochs=0, init=init)
        bad["head"]["epochs"], bad["augment"]["clean_epochs"] = head, 0
        with pytest.raises(PipelineError, match=r"no augmented epoch in pseudo\.epochs \(0\)"):
            parse_params(bad)
