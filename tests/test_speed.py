"""The fast paths stay exact: the image cache, loader workers, the time an epoch waits for data."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml
from accelerate import Accelerator
from safetensors.torch import load_file

from pipeline import batches
from pipeline.batches import loader_workers
from pipeline.index import load_image, read_index, resize
from pipeline.loop import LoopConfig, Phase, fit
from pipeline.params import LrFind, Prepare, parse_params
from pipeline.stages import train
from pipeline.stages.prepare import run as prepare
from tests.conftest import ROOT, tiny_params
from tests.layout_fixtures import competition


def test_cache_is_a_direct_decode_and_resize_and_a_new_size_rebuilds_it(tiny_comp, tmp_path):
    out = tmp_path / "prepared"
    for size in (16, 10):  # the source images are 12 px: enlarged, then shrunk
        prepare(Prepare(cache_size=size, resize="squish"), competition(), raw=tiny_comp, out=out)
        index = read_index(out)
        for split, frame in (("train", index.train), ("test", index.test)):
            cache = index.images(split)
            assert cache.shape == (len(frame), size, size, 3)
            direct = np.stack([resize(load_image(p), size) for p in frame["path"]])
            np.testing.assert_array_equal(cache, direct)  # pixel for pixel
        assert index.meta["cache_size"] == size
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["prepare"]
    assert "prepare" in stage["params"] and "data/raw.json" in stage["deps"]  # size or source


@pytest.mark.parametrize(
    ("setting", "cached", "gpu", "cpus", "expected"),
    [
        ("auto", True, False, 2, 0),  # the cached demo on this machine: workers only compete
        ("auto", False, False, 2, 0),  # two cores: nothing to spare
        ("auto", False, False, 8, 4),  # files to decode, cores to spare
        ("auto", True, True, 16, 8),  # a GPU waits for the loader: use the cores
        ("auto", True, True, 1, 0),
        (3, True, False, 2, 3),  # a number is taken as it is
    ],
)
def test_auto_loader_workers_follow_the_machine(setting, cached, gpu, cpus, expected):
    assert loader_workers(setting, cached, gpu, cpus) == expected


class Slow(torch.utils.data.Dataset):
    def __init__(self, delay: float) -> None:
        self.x, self.delay = torch.randn(64, 3, 16, 16), delay

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        time.sleep(self.delay)
        return self.x[i], i % 3


@pytest.mark.parametrize("delay", [0.0, 0.01])
def test_each_epoch_records_the_share_of_time_it_waited_for_data(tmp_path: Path, delay):
    torch.manual_seed(0)
    net = timm.create_model("test_resnet", num_classes=3)
    data = torch.utils.data.DataLoader(Slow(delay), batch_size=16)
    valid = torch.utils.data.DataLoader(Slow(0.0), batch_size=32)
    cfg = LoopConfig(task="single_label", pct_start=0.25, div=25.0, final_div=1e4, cycle_len=1,
                     cycle_mult=2, label_smoothing=0.0, key="k",
                     lr_find=LrFind(start=1e-7, end=10, steps=10, suggestion="valley"))  # fmt: skip
    groups = [{"name": "all", "params": list(net.parameters()), "lr": 1e-3, "weight_decay": 0.0}]
    phase = Phase("full", 1, net, groups, lambda e, t: data, valid)
    hist = fit(net, [phase], cfg, lambda p, t: 0.0, Accelerator(cpu=True), tmp_path / "s.pt",
               lambda r: None, lambda m, r: None)  # fmt: skip
    wait = hist.rows[0]["data_wait"]
    assert 0.0 <= wait <= 1.0
    if delay:  # 16 x 10 ms per batch of 16 against a few ms of a tiny model's step
        assert wait > 0.5, wait
    else:
        assert wait < 0.3, wait


def test_the_numpy_tail_is_albumentations_normalize_and_to_tensor_exactly():
    import albumentations as A
    from albumentations.pytorch import ToTensorV2

    from pipeline.transforms import build_transforms

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, 17, 23, 3), dtype=np.uint8)  # odd sizes: no stride luck
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    reference = A.Compose([A.Normalize(mean=mean, std=std, max_pixel_value=255.0), ToTensorV2()])
    ours = build_transforms("valid", 0, None, mean, std)
    for img in images:
        want, got = reference(image=img)["image"], ours(image=img)["image"]
        assert got.dtype == torch.float32 and got.shape == (3, 17, 23)
        assert got.is_contiguous()
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_loader_workers_are_forked_once_and_serve_every_epoch_its_own_data(workdir, monkeypatch):
    """Two workers for a whole run (a head epoch, the LR range test, two full epochs): forked
    once, each rebuilds the dataset at every new epoch (its augmentation strength, size and seed),
    and the weights are those of a run without workers."""
    built = workdir / "built.txt"
    made = batches.epoch_dataset

    def recording(p, spec, d, fold, epoch, total):
        who = os.getpid() if torch.utils.data.get_worker_info() else "main"
        with built.open("a") as f:
            f.write(f"{who} {epoch} {total}\n")
        return made(p, spec, d, fold, epoch, total)

    monkeypatch.setattr(batches, "epoch_dataset", recording)
    weights = []
    for workers in (2, 0):
        built.unlink(missing_ok=True)
        over = {
            "train": {"num_workers": workers, "epochs": 2, "lr": "auto"},
            "head": {"epochs": 1},
            "lr_find": {"steps": 12},
        }  # the range test passes four times over the 3 batches
        train.run(parse_params(tiny_params(over)), "resnet10t", 0)
        weights.append(load_file("models/resnet10t/fold0/model.safetensors"))
        rows = [line.split() for line in built.read_text().splitlines()]
        by_process = {who: [(int(e), int(t)) for w, e, t in rows if w == who] for who, _, _ in rows}
        each = [(0, 3), (0, 2), (1, 3), (2, 3)]  # (epoch, total): head, range test, full, full
        if workers == 0:
            assert by_process == {"main": each}
        else:  # the main process builds epoch 1 for its length; the workers fork with it built
            assert by_process.pop("main") == each[:1]
            assert len(by_process) == workers  # not forked again for each epoch
            assert all(built == each[1:] for built in by_process.values())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
