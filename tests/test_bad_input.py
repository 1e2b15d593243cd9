"""The bad-input matrix: every case is either handled as a competitor expects, or stops its stage
with a short message naming the file, row, column or key, exit code 1, no traceback and no
partial output. Each case runs the real command (`python -m pipeline STAGE`) in-process."""

from __future__ import annotations

import io
import os
import re
import shutil
import sys
import zipfile
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import timm
import torch
import yaml
from PIL import Image
from safetensors.torch import save_file

from pipeline import cli
from pipeline.index import read_index
from tests.conftest import ROOT, TINY_PARAMS, merge, write_csv_competition

sys.path.insert(0, str(Path(__file__).parent))
from fake_kaggle import FakeCreds, FakeKaggle  # noqa: E402

TRAIN = ("train", "--model", "resnet10t", "--fold", "0")


@dataclass(frozen=True)
class Case:
    name: str
    break_it: Callable[[Path], dict | None]  # (data/raw) -> params overrides
    error: str | None  # a regex the one-line message matches; None: accepted
    argv: tuple[str, ...] = ("prepare",)
    check: Callable[[Path], None] | None = None  # for accepted cases
    before: tuple[str, ...] = ()  # stages that run (and succeed) first
    output: str = "data/prepared"  # what must not exist after an error
    kaggle: bool = False  # the real Kaggle CLI against the loopback fake, no credentials set


def first_train_image(raw: Path) -> Path:
    return sorted((raw / "train").glob("*.png"))[0]


def overwrite(data: bytes) -> Callable[[Path], None]:
    def f(raw: Path) -> None:
        first_train_image(raw).write_bytes(data)

    return f


def truncate(raw: Path) -> None:
    f = first_train_image(raw)
    f.write_bytes(f.read_bytes()[:40])


def edit_csv(name: str, fn: Callable[[pd.DataFrame], pd.DataFrame]) -> Callable[[Path], None]:
    def f(raw: Path) -> None:
        frame = pd.read_csv(raw / name, dtype=str, keep_default_na=False)
        fn(frame).to_csv(raw / name, index=False)

    return f


def image_as(mode: str, n: int = 5) -> Callable[[Path], None]:
    """The first n training images re-saved in a PIL mode (colour cue kept in the values)."""

    def f(raw: Path) -> None:
        for path in sorted((raw / "train").glob("*.png"))[:n]:
            rgb = Image.open(path).convert("RGB")
            if mode == "I;16":
                a = np.asarray(rgb.convert("L")).astype(np.uint16) * 257
                Image.fromarray(a).save(path)
            elif mode in ("I", "F"):  # 32-bit TIFFs: integers of 16-bit range, floats in [0, 1]
                a = np.asarray(rgb.convert("L")).astype(np.float64)
                a = (a * 257).astype(np.int32) if mode == "I" else (a / 255).astype(np.float32)
                Image.fromarray(a).save(path.with_suffix(".tif"))
                path.unlink()
            elif mode == "CMYK":
                rgb.convert("CMYK").save(path.with_suffix(".jpg"), quality=95)
                path.unlink()
            else:
                rgb.convert(mode).save(path)

    return f


def huge(raw: Path) -> None:
    img = np.random.default_rng(0).integers(0, 255, (3000, 3000, 3), dtype=np.uint8)
    Image.fromarray(img).save(first_train_image(raw))


def latin1(raw: Path) -> None:
    text = (raw / "train.csv").read_text().replace("tr003,cat", "tr003,chat noir é")
    (raw / "train.csv").write_bytes(text.encode("latin-1"))


def bom_crlf(raw: Path) -> None:
    text = (raw / "train.csv").read_text()
    (raw / "train.csv").write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())


def float_labels(raw: Path) -> None:
    frame = pd.read_csv(raw / "train.csv", dtype=str)
    frame["label"] = frame["label"].map({"cat": "0.0", "dog": "1.0", "fox": "2.0"})
    frame.to_csv(raw / "train.csv", index=False)
    sample = pd.read_csv(raw / "sample_submission.csv", dtype=str).assign(label="0")
    sample.to_csv(raw / "sample_submission.csv", index=False)


def two_ids_one_image(raw: Path) -> None:
    frame = pd.read_csv(raw / "train.csv", dtype=str)
    extra = pd.DataFrame({"id": [frame["id"][0] + ".png"], "label": ["fox"]})
    pd.concat([frame, extra]).to_csv(raw / "train.csv", index=False)


def classes_of(meta_classes: list[str]) -> Callable[[Path], None]:
    def check(root: Path) -> None:
        assert read_index(root / "data" / "prepared").classes == meta_classes

    return check


def decoded(root: Path) -> None:
    cache = read_index(root / "data" / "prepared").images("train")
    assert cache.shape[1:] == (16, 16, 3) and cache.dtype == np.uint8
    assert cache[:5].reshape(5, -1).std(1).min() > 0  # not binarised to flat 0/255 images


PNG_HEADER = b"\x89PNG\r\n\x1a\n"
CASES = [
    Case("corrupt image", overwrite(PNG_HEADER + b"garbage" * 20), r"1 unreadable image.*tr000"),
    Case("truncated image", truncate, r"1 unreadable image.*tr000"),
    Case("zero-byte image", overwrite(b""), r"tr000\.png \(empty file: 0 bytes\)"),
    Case("missing train image", lambda raw: first_train_image(raw).unlink(), r"tr000"),
    Case(
        "duplicate train id",
        edit_csv("train.csv", lambda f: pd.concat([f, f[:1]])),
        r"train\.csv: id 'tr000' appears 2 times",
    ),  # fmt: skip
    Case(
        "duplicate sample id",
        edit_csv("sample_submission.csv", lambda f: pd.concat([f, f[:1]])),
        r"sample_submission\.csv: id '.*' appears 2 times",
    ),  # fmt: skip
    Case(
        "empty label",
        edit_csv("train.csv", lambda f: f.assign(label=f["label"].where(f.index != 3, ""))),
        r"row 5 \(id 'tr003'\)",
    ),  # fmt: skip
    Case(
        "sample ids match no test image",
        edit_csv("sample_submission.csv", lambda f: f.assign(id="zz" + f["id"])),
        r"zzte",
    ),
    Case(
        "label column missing", lambda raw: {"competition": {"label_column": "breed"}}, r"breed"
    ),  # fmt: skip
    Case("non-UTF-8 CSV", latin1, r"train\.csv: line 5 is not UTF-8.*iconv"),
    Case("BOM and CRLF CSV", bom_crlf, None, check=classes_of(["cat", "dog", "fox"])),
    Case("labels written as floats", float_labels, None, check=classes_of(["0", "1", "2"])),
    Case("one image under two ids", two_ids_one_image, r"one image listed under 2 ids"),
    Case("grayscale images", image_as("L"), None, check=decoded),
    Case("RGBA images", image_as("RGBA"), None, check=decoded),
    Case("palette images", image_as("P"), None, check=decoded),
    Case("1-bit images", image_as("1"), None, check=decoded),
    Case("16-bit grayscale images", image_as("I;16"), None, check=decoded),
    Case("CMYK JPEG images", image_as("CMYK"), None, check=decoded),
    Case("32-bit integer TIFF images", image_as("I"), None, check=decoded),
    Case("32-bit float TIFF images", image_as("F"), None, check=decoded),
    Case("a huge image", huge, None, check=decoded),
    Case("unknown param", lambda raw: {"train": {"epochz": 3}}, r"unknown key 'train\.epochz'"),
    Case("mistyped param", lambda raw: {"train": {"epochs": "ten"}}, r"key 'train\.epochs'"),
    Case(
        "out-of-range param", lambda raw: {"model": {"drop_rate": 1.5}}, r"key 'model\.drop_rate'"
    ),  # fmt: skip
]


def few_of_one_class(raw: Path) -> None:
    frame = pd.read_csv(raw / "train.csv", dtype=str)
    frame.loc[frame.index[frame["label"] == "fox"][1:], "label"] = "cat"  # one fox left
    frame.to_csv(raw / "train.csv", index=False)


def weights(kind: str) -> Callable[[Path], dict]:
    """model.pretrained pointing at a weights file that cannot load into resnet10t."""

    def f(raw: Path) -> dict:
        suffix = ".safetensors" if kind in ("mismatch", "corrupt") else ".pth"
        path = raw.parent / f"{kind.replace(' ', '_')}{suffix}"
        if kind == "mismatch":
            net = timm.create_model("resnet18", num_classes=3)
            save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
        elif kind == "whole model":
            torch.save(timm.create_model("resnet10t", num_classes=3), path)
        elif kind == "pickle":
            torch.save({"fc.weight": Fraction(1, 3)}, path)
        else:  # corrupt safetensors
            path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}" + bytes(64))
        return {"model": {"pretrained": str(path)}}

    return f


def local_zip(members: dict[str, bytes], truncate_to: int | None = None) -> Callable:
    def f(raw: Path) -> dict:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            for name, data in members.items():
                z.writestr(name, data)
        data = buf.getvalue()[:truncate_to]
        (raw.parent / "comp.zip").write_bytes(data)
        shutil.rmtree(raw)
        return {"competition": {"path": str(raw.parent / "comp.zip")}}

    return f


def wrapped_zip(raw: Path) -> dict:
    """The competition zipped on a Mac: one wrapper folder, __MACOSX/ and ._ files beside it."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for f in sorted(raw.rglob("*")):
            if f.is_file():
                rel = f.relative_to(raw).as_posix()
                z.writestr(f"mycomp/{rel}", f.read_bytes())
                z.writestr(f"__MACOSX/mycomp/._{f.name}", b"\x00\x05")
        z.writestr("mycomp/.DS_Store", b"junk")
    (raw.parent / "comp.zip").write_bytes(buf.getvalue())
    shutil.rmtree(raw)
    return {"competition": {"path": str(raw.parent / "comp.zip")}}


def extra_image(raw: Path) -> None:
    Image.new("RGB", (12, 12)).save(raw / "train" / "unlisted.png")


def three_columns(raw: Path) -> None:
    frame = pd.read_csv(raw / "train.csv", dtype=str)
    frame = frame.rename(columns={"label": "breed"}).assign(species=frame["label"])
    frame.to_csv(raw / "train.csv", index=False)


def unlisted_ignored(root: Path) -> None:
    assert len(read_index(root / "data/prepared").train) == 36


def downloaded_and_prepared(root: Path) -> None:
    assert (root / "data/raw/train.csv").exists() and not (root / "data/raw/__MACOSX").exists()
    assert not list((root / "data/raw").rglob("._*"))
    assert len(read_index(root / "data/prepared").train) == 36


MISTYPED = {"train": {"backbones": ["resnet10"]}, "pseudo": {"enabled": False}}


def from_kaggle(raw: Path) -> dict:
    shutil.rmtree(raw)
    return {"competition": {"source": "kaggle", "name": "fake-comp"}}


TAIL = [
    Case("missing Kaggle credentials", from_kaggle, r"KAGGLE_USERNAME.*KAGGLE_API_TOKEN",
         argv=("download",), output="data/raw", kaggle=True),
    Case("zip with a wrapper folder and __MACOSX", wrapped_zip, None, argv=("prepare",),
         before=("download",), check=downloaded_and_prepared),
    Case("an image not in the label CSV", extra_image, None, check=unlisted_ignored),
    Case("ambiguous label columns", three_columns,
         r"train\.csv.*breed.*species.*competition\.label_column"),  # fmt: skip
    Case("a class with fewer images than folds", few_of_one_class,
         r"class 'fox' has 1 images, fewer than the 2 folds.*fewest possible",
         argv=("folds",), before=("prepare",), output="folds/folds.csv"),
    Case("folds param out of range", lambda raw: {"base": {"folds": [0]}},
         r"key 'base\.folds': .*K >= 2.* \(got \[0\]\)$", argv=("folds",)),
    Case("empty test folder", lambda raw: [p.unlink() for p in (raw / "test").glob("*")] and None,
         r"te0"),
    Case("mistyped backbone", lambda raw: MISTYPED,
         r"model 'resnet10' is not a timm model; did you mean resnet10t", before=("prepare",
         "folds"), argv=("train", "--model", "resnet10", "--fold", "0"), output="models"),
    *[Case(f"weights file: {kind}", weights(kind), pattern, argv=TRAIN,
           before=("prepare", "folds"), output="models")
      for kind, pattern in (
          ("mismatch", r"does not fit resnet10t: .*'conv1\.0\.weight' \(24, 3, 3, 3\) is not in"),
          ("whole model", r"pickled Python objects"),
          ("pickle", r"pickled Python objects"),
          ("corrupt", r"not a readable weights file"),
      )],
    Case("zip traversal", local_zip({"../evil.txt": b"x", "train.csv": b"id,label\n"}),
         r"evil", argv=("download",), output="data/raw"),
    Case("truncated zip", local_zip({"train.csv": bytes(5000)}, truncate_to=300),
         r"comp\.zip", argv=("download",), output="data/raw"),
]  # fmt: skip
CASES += TAIL


def write_params(root: Path, over: dict | None) -> None:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    params = merge(merge(raw, TINY_PARAMS), {"competition": {"source": "path", "path": "x"}})
    params = merge(params, over or {})
    (root / "params.yaml").write_text(yaml.safe_dump(params))


def offline_kaggle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stack: ExitStack) -> None:
    """No credentials anywhere; the CLI's HTTP goes to a fake Kaggle on 127.0.0.1 only."""
    for key in list(os.environ):
        if key.startswith("KAGGLE_") or key.lower().endswith("_proxy"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "home" / ".config"))
    server = stack.enter_context(FakeKaggle(FakeCreds(username="u", key="k", api_token="t")))
    for key, value in server.env().items():
        monkeypatch.setenv(key, value)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    raw = write_csv_competition(tmp_path / "data" / "raw")
    write_params(tmp_path, case.break_it(raw))
    with ExitStack() as stack:
        if case.kaggle:
            offline_kaggle(tmp_path, monkeypatch, stack)
        for stage in case.before:
            assert cli.main([stage]) == 0, capsys.readouterr().err
        capsys.readouterr()
        code = cli.main(list(case.argv))
    err = capsys.readouterr().err
    if case.error is None:
        assert code == 0, err
        case.check(tmp_path)
        return
    assert code == 1
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[0].startswith("error: ") and len(lines) <= 3, err
    assert re.search(case.error, err, re.S), err
    out = tmp_path / case.output
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}*"))  # no temporary left behind either
