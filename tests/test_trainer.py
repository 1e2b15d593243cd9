"""The transfer-learning trainer: layer groups, weight loading, phases, LR range test, weights."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file
from sklearn.utils.class_weight import compute_class_weight

from pipeline import model, schedules
from pipeline.data import class_weights
from pipeline.files import PipelineError
from pipeline.loop import LoopConfig, LossTally, Phase, _set_lrs, loss_function, lr_range_test
from pipeline.params import LrFind, parse_params
from pipeline.stages import train
from tests.conftest import tiny_params

LF = LrFind(start=1e-7, end=10.0, steps=30, suggestion="valley")


def cfg(**over) -> LoopConfig:
    base = dict(
        task="single_label",
        pct_start=0.25,
        div=25.0,
        final_div=1e4,
        cycle_len=1,
        cycle_mult=2,
        label_smoothing=0.0,
        lr_find=LF,
        key="k",
    )
    return LoopConfig(**{**base, **over})


# --- layer groups -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet10t", "efficientnet_b0", "convnext_atto"])
@pytest.mark.parametrize("n_groups", [3, 4])
def test_layer_groups_end_with_the_head(name, n_groups):
    net = timm.create_model(name, pretrained=False, num_classes=7)
    groups = model.layer_groups(net, n_groups)
    assert len(groups) == n_groups >= 3
    assert groups[-1][0] == "head"
    head = {id(p) for p in net.get_classifier().parameters()}
    assert {id(p) for p in groups[-1][1]} == head
    ids = [id(p) for _, ps in groups for p in ps]
    assert len(ids) == len(set(ids)) == len(list(net.parameters()))  # each parameter once
    first = {id(p) for p in groups[0][1]}
    stem = next(iter(net.parameters()))  # the input-side layer comes first
    assert id(stem) in first


def test_fallback_groups_without_group_matcher():
    class Plain(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = (torch.nn.Linear(4, 4) for _ in range(3))
            self.fc = torch.nn.Linear(4, 2)

        def get_classifier(self) -> torch.nn.Module:
            return self.fc

    net = Plain()
    groups = model.layer_groups(net, 3)
    assert [n for n, _ in groups] == ["body0", "body1", "head"]
    assert {id(p) for p in groups[-1][1]} == {id(p) for p in net.fc.parameters()}
    assert sum(len(ps) for _, ps in groups) == 8


# --- weights ------------------------------------------------------------------------------


def test_local_weights_file_with_1000_class_head_loads_into_10_classes(tmp_path):
    src = timm.create_model("resnet10t", pretrained=False, num_classes=1000)
    file = tmp_path / "resnet10t_imagenet.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(file))
    net = model.create("resnet10t", 10, str(file))
    assert net.get_classifier().out_features == 10
    saved = load_file(str(file))
    mine = net.state_dict()
    body = [k for k in saved if not k.startswith("fc.")]
    assert body and all(torch.equal(mine[k], saved[k]) for k in body)


def test_a_new_head_on_pretrained_weights_starts_at_zero_and_a_kept_one_is_the_files(tmp_path):
    src = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=1000)
    file = tmp_path / "lite0.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(file))
    x = torch.rand(3, 3, 32, 32)
    new = model.create("efficientnet_lite0", 4, str(file)).eval()
    assert all(not q.any() for q in new.get_classifier().parameters())
    loss = torch.nn.functional.cross_entropy(new(x), torch.tensor([0, 1, 3]))
    assert loss.item() == pytest.approx(np.log(4))  # not timm's init: logits of tens at 4 classes
    kept = model.create("efficientnet_lite0", 1000, str(file)).eval()
    assert torch.equal(kept.get_classifier().weight, src.get_classifier().weight)
    scratch = model.create("efficientnet_lite0", 4, False)
    assert scratch.get_classifier().weight.abs().sum() > 0  # from scratch: timm's own init


def test_missing_weights_file_is_named(tmp_path):
    with pytest.raises(PipelineError, match="nope.safetensors' not found"):
        model.create("resnet10t", 3, str(tmp_path / "nope.safetensors"))


# --- schedules on real optimizer groups ---------------------------------------------------


def test_every_group_follows_its_own_1cycle_and_momentum():
    params = [torch.nn.Parameter(torch.zeros(2)) for _ in range(3)]
    peaks = schedules.geometric_lrs(0.01, 100.0, 3)
    assert peaks == pytest.approx([1e-4, 1e-3, 1e-2])
    opt = torch.optim.AdamW(
        [{"params": [p], "lr": lr} for p, lr in zip(params, peaks, strict=True)]
    )
    phase = Phase("full", 4, torch.nn.Identity(), [], lambda e, t: None, None)
    c = cfg()
    total = 41  # steps: 10 warm-up, then 30 down to the last step (40)
    for step, frac_lr, mom in [(0, 1 / 25, 0.95), (10, 1.0, 0.85), (40, 1e-4, 0.95)]:
        _set_lrs(opt, phase, peaks, step, total, 10, c)
        for g, peak in zip(opt.param_groups, peaks, strict=True):
            assert g["lr"] == pytest.approx(peak * frac_lr)
            assert g["betas"][0] == pytest.approx(mom)
    _set_lrs(opt, phase, peaks, 25, total, 10, c)  # half-way down: mean of peak and floor
    for g, peak in zip(opt.param_groups, peaks, strict=True):
        assert g["lr"] == pytest.approx((peak + peak / 1e4) / 2)


def test_sgdr_restarts_per_group():
    params = [torch.nn.Parameter(torch.zeros(2)) for _ in range(2)]
    opt = torch.optim.AdamW([{"params": [p], "lr": 1.0} for p in params])
    phase = Phase("full", 3, torch.nn.Identity(), [], lambda e, t: None, None, schedule="sgdr")
    peaks = [0.1, 1.0]
    for step, frac in [(0, 1.0), (10, 1.0), (20, None), (30, 1.0)]:  # cycles of 1, 2 epochs
        _set_lrs(opt, phase, peaks, step, 30, 10, cfg())
        for g, peak in zip(opt.param_groups, peaks, strict=True):
            want = frac * peak if frac else (peak + peak / 1e4) / 2
            assert g["lr"] == pytest.approx(want)
            assert g["betas"][0] == 0.9
    assert schedules.sgdr_cycle_ends(7, 1, 2) == [1, 3, 7]


# --- LR range test ------------------------------------------------------------------------


def _loader(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 16, 16, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    ds = torch.utils.data.TensorDataset(x, y)
    return lambda epoch, total: torch.utils.data.DataLoader(ds, batch_size=16, shuffle=False)


def test_lr_range_test_restores_model_and_optimizer_bitwise():
    torch.manual_seed(0)
    net = timm.create_model("resnet10t", pretrained=False, num_classes=3)
    acc = Accelerator(cpu=True)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    loss_fn = loss_function(cfg(), acc.device)
    for x, y in _loader()(0, 1):  # a few real steps so Adam has moments to restore
        opt.zero_grad()
        loss_fn(net(x), y).backward()
        opt.step()
    before_model = copy.deepcopy(net.state_dict())
    before_opt = copy.deepcopy(opt.state_dict())
    phase = Phase("full", 1, net, [], _loader(), None)
    lrs, losses = lr_range_test(phase, net, opt, loss_fn, acc, LF)
    assert 3 <= len(lrs) <= LF.steps and lrs[0] == pytest.approx(LF.start)
    assert all(b > a for a, b in zip(lrs, lrs[1:], strict=False))  # exponential sweep upwards
    after_model, after_opt = net.state_dict(), opt.state_dict()
    assert all(torch.equal(before_model[k], after_model[k]) for k in before_model)
    assert before_opt["param_groups"] == after_opt["param_groups"]
    for k, s in before_opt["state"].items():
        for name, v in s.items():
            assert torch.equal(v, after_opt["state"][k][name]), (k, name)
    chosen = schedules.suggest_lr(lrs, losses, "valley")
    assert lrs[0] <= chosen <= lrs[-1]


def test_lr_suggestions_on_a_known_curve():
    lrs = [10 ** (-6 + i * 0.1) for i in range(61)]  # 1e-6 .. 1
    # flat, then falling steadily between 1e-4 and 1e-2, then exploding
    losses = [
        2.0
        if lr < 1e-4
        else 2.0 - (np.log10(lr) + 4) * 0.5
        if lr < 1e-2
        else 1.0 + (np.log10(lr) + 2) * 5
        for lr in lrs
    ]
    assert 1e-4 < schedules.suggest_lr(lrs, losses, "steepest") < 1e-2
    assert schedules.suggest_lr(lrs, losses, "minimum") == pytest.approx(
        lrs[int(np.argmin(losses))] / 10
    )
    assert 1e-4 < schedules.suggest_lr(lrs, losses, "valley") < 1e-2
    assert schedules.smooth([1.0, 1.0, 1.0]) == pytest.approx([1.0, 1.0, 1.0])  # bias-corrected


# --- class weights ------------------------------------------------------------------------


def test_effective_number_weights():
    t = np.array([0] * 90 + [1] * 10)
    w = class_weights(t, 2, "effective", 0.99)
    raw = (1 - 0.99) / (1 - 0.99 ** np.array([90, 10]))
    assert w == pytest.approx(raw * 2 / raw.sum())
    assert w[1] > w[0]
    assert class_weights(t, 2, "none", 0.99) is None


# --- the train stage on a tiny prepared competition ---------------------------------------


def _weights_file(path, n_classes=3):
    torch.manual_seed(1)
    src = timm.create_model("resnet10t", pretrained=False, num_classes=n_classes)
    for m in src.modules():  # non-trivial BatchNorm statistics, so "unchanged" means something
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.9, 1.1)
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    return load_file(str(path))


def _head_only(workdir, **head):
    file = workdir / "init.safetensors"
    init = _weights_file(file)
    p = parse_params(
        tiny_params(
            {
                "model": {"pretrained": str(file)},
                "head": {"epochs": 1, "lr": 0.01, **head},
                "train": {"epochs": 0},
            }
        )
    )
    train.run(p, "resnet10t", 0)
    return init, load_file(str(workdir / "models/resnet10t/fold0/model.safetensors"))


def _changed(init, after):
    return {
        k
        for k in init
        if not k.endswith("num_batches_tracked") and not torch.equal(init[k], after[k])
    }


def test_head_phase_with_frozen_batchnorm_changes_only_the_head(workdir):
    init, after = _head_only(workdir, train_bn=False, precompute=False)
    assert _changed(init, after) == {"fc.weight", "fc.bias"}


def test_head_phase_training_batchnorm_changes_only_head_and_batchnorm(workdir):
    init, after = _head_only(workdir, train_bn=True, precompute=False)
    changed = _changed(init, after) - {"fc.weight", "fc.bias"}
    bn_suffixes = ("weight", "bias", "running_mean", "running_var")
    bn_names = {
        f"{n}.{s}"
        for n, m in timm.create_model("resnet10t").named_modules()
        if isinstance(m, torch.nn.BatchNorm2d)
        for s in bn_suffixes
    }
    assert changed and changed <= bn_names
    assert any(k.endswith("running_mean") for k in changed)  # statistics kept updating


def test_head_phase_on_precomputed_features_changes_only_the_head(workdir, capsys):
    init, after = _head_only(workdir, train_bn=True, precompute=True)
    assert _changed(init, after) == {"fc.weight", "fc.bias"}
    assert "trains in: head, full" in capsys.readouterr().out


def test_balanced_class_weights_match_scikit_learn_on_the_fold(workdir, capsys):
    folds = pd.read_csv("folds/folds.csv")
    folds = folds.drop(folds.index[folds["label"] == "fox"][:10])  # skew one class
    folds.to_csv("folds/folds.csv", index=False)
    prepared = pd.read_csv("data/prepared/train.csv")
    prepared = prepared[prepared["id"].isin(folds["id"])]
    prepared.to_csv("data/prepared/train.csv", index=False)
    np.save(
        "data/prepared/train_images.npy",
        np.load("data/prepared/train_images.npy")[prepared.index.to_numpy()],
    )
    p = parse_params(tiny_params({"train": {"class_weights": "balanced"}}))
    train.run(p, "resnet10t", 1)
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("class weights"))
    logged = {k: float(v) for k, v in (kv.split("=") for kv in line.split(": ")[1].split(", "))}
    fold_labels = folds.loc[folds["fold"] != 1, "label"].to_numpy()
    want = compute_class_weight("balanced", classes=np.array(["cat", "dog", "fox"]), y=fold_labels)
    assert [logged[c] for c in ("cat", "dog", "fox")] == pytest.approx(want, abs=1e-3)
    assert logged["fox"] > logged["cat"]


def test_lr_auto_runs_the_range_test_and_records_it(workdir):
    p = parse_params(tiny_params({"train": {"lr": "auto", "epochs": 1}, "lr_find": {"steps": 12}}))
    train.run(p, "resnet10t", 0)
    live = workdir / "dvclive/resnet10t/fold0"
    curve = pd.read_csv(live / "plots/lr_find/full.tsv", sep="\t")
    assert list(curve.columns) == ["lr", "loss"] and 3 <= len(curve) <= 12
    import json

    chosen = json.loads((live / "metrics.json").read_text())["lr_find"]["full"]
    info = json.loads((workdir / "models/resnet10t/fold0/model.json").read_text())
    assert info["phase_lrs"]["full"][-1] == pytest.approx(chosen)
    assert curve["lr"].min() <= chosen <= curve["lr"].max()


def test_diverging_loss_names_phase_epoch_step_and_lr(workdir):
    p = parse_params(tiny_params({"train": {"lr": 1e12, "div": 1.0, "epochs": 2}}))
    with pytest.raises(
        PipelineError, match=r"in phase 'full', epoch \d+, step \d+, lr .*LR range test"
    ):
        train.run(p, "resnet10t", 0)


def test_loss_tally_reads_the_device_once_per_32_batches_and_names_the_first_bad_one():
    acc = Accelerator(cpu=True)
    sizes = [8, 8, 5] * 20
    losses = [float(i % 7) / 3 for i in range(len(sizes))]
    tally = LossTally(acc, lambda i, v: PipelineError(f"batch {i} loss {v}"))
    for loss, n in zip(losses, sizes, strict=True):
        tally.add(torch.tensor(loss), n)
    want = sum(x * n for x, n in zip(losses, sizes, strict=True)) / sum(sizes)
    assert tally.mean() == pytest.approx(want, rel=1e-6) and tally.seen == sum(sizes)

    def fresh() -> LossTally:
        return LossTally(acc, lambda i, v: PipelineError(f"batch {i} loss {v}"))

    tally = fresh()
    for _ in range(31):
        tally.add(torch.tensor(1.0), 4)
    with pytest.raises(PipelineError, match="batch 31 loss inf"):
        tally.add(torch.tensor(float("inf")), 4)  # the 32nd batch: the first read
    tally = fresh()
    for i in range(40):  # read after batch 31 (all finite); batch 35's nan waits for the end
        tally.add(torch.tensor(float("nan") if i == 35 else 1.0), 4)
    with pytest.raises(PipelineError, match="batch 35 loss nan"):
        tally.mean()


def test_input_size_and_normalisation_follow_timm_unless_overridden():
    net = timm.create_model("convnext_atto", pretrained=False, num_classes=3)
    cfg = timm.data.resolve_model_data_config(net)
    assert model.input_size(net, None) == cfg["input_size"][-1]
    assert model.input_size(net, 48) == 48
    assert model.data_config(net) == {"mean": tuple(cfg["mean"]), "std": tuple(cfg["std"])}
    mine = model.data_config(net, [0.5, 0.5, 0.5], [0.2, 0.2, 0.2])
    assert mine == {"mean": (0.5, 0.5, 0.5), "std": (0.2, 0.2, 0.2)}


def test_sgdr_saves_a_snapshot_at_the_end_of_every_cycle(workdir):
    p = parse_params(
        tiny_params({"train": {"schedule": "sgdr", "epochs": 3, "cycle_len": 1, "cycle_mult": 2}})
    )
    train.run(p, "resnet10t", 0)
    snaps = sorted(f.name for f in (workdir / "models/resnet10t/fold0/snapshots").iterdir())
    assert snaps == ["cycle0.safetensors", "cycle1.safetensors"]  # cycles end at epochs 1 and 3
    last = load_file(str(workdir / "models/resnet10t/fold0/snapshots/cycle1.safetensors"))
    assert last["fc.weight"].shape == (3, 512)


def test_balanced_sampler_draws_every_class_equally_often():
    from pipeline.data import balanced_sampler

    targets = np.array([0] * 900 + [1] * 90 + [2] * 10)
    drawn = targets[list(balanced_sampler(targets, seed=0))]
    counts = np.bincount(drawn, minlength=3) / len(drawn)
    assert counts == pytest.approx([1 / 3] * 3, abs=0.05)
    assert list(balanced_sampler(targets, seed=0)) == list(balanced_sampler(targets, seed=0))


def test_same_params_same_weights(workdir):
    p = parse_params(tiny_params({"train": {"epochs": 2}}))
    weights = []
    for _ in range(2):
        train.run(p, "resnet10t", 1)
        weights.append(load_file(str(workdir / "models/resnet10t/fold1/model.safetensors")))
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_stale_checkpoint_folder_is_cleared_and_output_replaced(workdir):
    stale = workdir / "checkpoints/resnet10t/fold0"
    (stale / "snapshots").mkdir(parents=True)
    (stale / "snapshots" / "cycle7.safetensors").write_bytes(b"left by other params")
    (stale / "state.pt").write_bytes(b"not this run's")
    p = parse_params(tiny_params({"train": {"schedule": "sgdr", "epochs": 1}}))
    train.run(p, "resnet10t", 0)
    train.run(p, "resnet10t", 0)  # again by hand: the finished output is replaced whole
    snaps = sorted(f.name for f in (workdir / "models/resnet10t/fold0/snapshots").iterdir())
    assert snaps == ["cycle0.safetensors"]
    assert not stale.exists()


def test_small_cache_for_a_large_input_is_warned_about(workdir, capsys):
    p = parse_params(tiny_params({"base": {"image_size": 24}}))
    train.run(p, "resnet10t", 0)
    assert (
        "cached at 16 px (prepare.cache_size) and are enlarged to the 24 px"
        in capsys.readouterr().out
    )
