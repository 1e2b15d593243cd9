"""Bad input, weights files: a file whose tensor names are not the backbone's stops `train` with
the first mismatch (name and shape on both sides) and what to do. timm alone would drop the
file's classifier, load the rest non-strictly and train a random-init network without a word.
A file replaced under the same name retrains the teachers; a missing one stops the first stage."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from pipeline import specs
from pipeline.files import sha256
from pipeline.params import parse_params
from pipeline.stages import download, train
from tests.conftest import tiny_params
from tests.test_bad_input import TRAIN, Case
from tests.test_bad_input import test_bad_input as run_case
from tests.test_e2e import ran
from tests.test_weights import effnet_pytorch_state

LITE0 = ("train", "--model", "efficientnet_lite0", "--fold", "0")


def weights_file(make: Callable[[], object], name: str, backbone: str = "resnet10t") -> Callable:
    """model.pretrained: the file `make` returns (a state dict or anything), saved beside data/."""

    def f(raw: Path) -> dict:
        path, obj = raw.parent / name, make()
        if name.endswith(".safetensors"):
            save_file(obj, str(path))
        else:
            torch.save(obj, path)
        return {"model": {"pretrained": str(path)}, "train": {"backbones": [backbone]}}

    return f


def state_of(model: str, **change: torch.Tensor) -> Callable[[], dict]:
    def make() -> dict:
        state = timm.create_model(model, num_classes=3).state_dict()
        return {k: v.contiguous() for k, v in {**state, **change}.items()}

    return make


CASES = [
    Case("weights in EfficientNet-PyTorch names", weights_file(effnet_pytorch_state,
         "lite0.pth", "efficientnet_lite0"),
         r"does not fit efficientnet_lite0: 245 of its 245 tensors are not in the file, 247 of "
         r"the file's 247 are unknown to it; first, efficientnet_lite0's 'conv_stem\.weight' "
         r"\(32, 3, 3, 3\) is not in the file; the file has '_conv_stem\.weight' \(32, 3, 3, 3\) "
         r".*benchmarks/weights\.py.*train\.backbones",
         argv=LITE0, before=("prepare", "folds"), output="models"),
    Case("weights of a deeper model (resnet34 into resnet18)", weights_file(state_of("resnet34"),
         "r34.safetensors", "resnet18"),
         r"does not fit resnet18: 0 of its \d+ tensors are not in the file, \d+ of the file's \d+ "
         r"are unknown to it; first, the file's 'layer1\.2\.bn1\.bias' \(64,\) has no place in "
         r"resnet18",
         argv=("train", "--model", "resnet18", "--fold", "0"), before=("prepare", "folds"),
         output="models"),
    Case("weights with one tensor of another shape", weights_file(state_of("resnet10t",
         **{"layer1.0.conv1.weight": torch.zeros(8, 32, 3, 3)}), "shape.safetensors"),
         r"does not fit resnet10t \(size mismatch for layer1\.0\.conv1\.weight", argv=TRAIN,
         before=("prepare", "folds"), output="models"),
    Case("weights file holding a list", weights_file(lambda: [torch.zeros(3)], "list.pth"),
         r"list\.pth: holds no state dict", argv=TRAIN, before=("prepare", "folds"),
         output="models"),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_weights(case: Case, tmp_path, monkeypatch, capsys) -> None:
    run_case(case, tmp_path, monkeypatch, capsys)


@pytest.mark.slow
def test_a_weights_file_replaced_under_its_name_retrains_what_starts_from_it(project):
    """model.pretrained names the same files, one file's tensors changed: DVC cannot see a param
    change, so the `source` stage lists each backbone's file and each teacher depends on its own
    listing: only the teachers that start from the changed file retrain."""
    names = ("resnet10t", "test_resnet")
    files = {n: project.path.parent / f"{n}.safetensors" for n in names}
    for name, path in files.items():
        save_file(state_of(name)(), str(path))
    pretrained = {n: str(path) for n, path in files.items()}
    project.set_params({"train": {"backbones": list(names)}, "model": {"pretrained": pretrained},
                        "pseudo": {"enabled": False}})  # fmt: skip
    teachers = [f"train@{n}-{k}" for n in names for k in (0, 1)]
    assert sorted(s for s in ran(project.run(["dvc", "repro", "train"])) if "@" in s) == teachers
    assert ran(project.run(["dvc", "repro", "train"])) == []
    save_file(state_of("test_resnet")(), str(files["test_resnet"]))  # other tensors, same name
    assert sorted(ran(project.run(["dvc", "repro", "train"]))) == teachers[2:]
    path = files["resnet10t"]
    path.unlink()  # refused by the first stage, before anything trains
    res = project.run(["dvc", "repro", "train"], check=False)
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert f"model.pretrained: weights file '{path}' not found" in res.stderr
    assert ran(res) == []


def test_a_mapping_gives_each_backbone_its_own_weights(tmp_path):
    """model.pretrained {backbone: file or true/false}: two backbones, two files, one random."""
    states = {n: state_of(n)() for n in ("resnet10t", "test_resnet")}
    for name, state in states.items():
        save_file(state, str(tmp_path / f"{name}.safetensors"))
    files = {n: str(tmp_path / f"{n}.safetensors") for n in states}
    p = parse_params(tiny_params({"train": {"backbones": list(states)},
                                  "model": {"pretrained": files}}))  # fmt: skip
    for name, state in states.items():
        spec = specs.teacher_spec(p, name)
        assert (spec.head_epochs, spec.pretrained) == (1, True)  # head.epochs auto: fine-tuning
        net = train.build_model(p, name, 3, spec).state_dict()
        first = next(iter(state))  # the stem's first conv: the file's tensor, no other
        assert torch.equal(net[first], state[first]), name
        assert specs.fingerprint(p, name, 0)["weights"] == sha256(files[name])
    p = parse_params(
        tiny_params(
            {
                "train": {"backbones": list(states)},
                "model": {"pretrained": {**files, "test_resnet": False}},
            }
        )
    )
    spec = specs.teacher_spec(p, "test_resnet")
    assert (spec.head_epochs, spec.pretrained) == (0, False)  # random init: no head phase
    assert specs.fingerprint(p, "test_resnet", 0)["weights"] == "False"
    assert p.head_epochs() == 0 and p.head_epochs("resnet10t") == 1
    listings = download.weights_listings(p)
    assert listings["teachers/test_resnet.json"] == {"pretrained": False}
    assert listings["teachers/resnet10t.json"]["listing_sha256"]  # the file's size and time
    assert listings["students/resnet10t.json"] == {"pretrained": "teacher"}  # init: teacher
    scratch = {"enabled": True, "init": "scratch", "backbones": {"resnet10t": "test_resnet"}}
    p = parse_params(tiny_params({"train": {"backbones": ["resnet10t"]},
                                  "model": {"pretrained": files}, "pseudo": scratch}))  # fmt: skip
    listed = download.weights_listings(p)["students/resnet10t.json"]  # its student's file
    assert listed["pretrained"] == files["test_resnet"] != files["resnet10t"]
