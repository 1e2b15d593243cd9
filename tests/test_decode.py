"""decode_all: every image decoded once, on threads, into the cache prepare and extra save; the
same bytes, hash and unreadable-file listing as one file after another in one thread."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.decode import decode_all, unreadable
from pipeline.index import load_image, resize

MODES = ("RGB", "L", "RGBA", "P", "I;16")


def write_images(folder, n: int = 36, seed: int = 0) -> list[str]:
    """n PNG and JPEG files of mixed sizes (none square) and modes."""
    rng = np.random.default_rng(seed)
    folder.mkdir()
    paths = []
    for i in range(n):
        h, w = (int(x) for x in rng.integers(9, 70, 2))
        img = Image.fromarray(rng.integers(0, 256, (h, w + 1, 3), dtype=np.uint8))
        mode = MODES[i % len(MODES)]
        img = img.convert("I;16") if mode == "I;16" else img.convert(mode)
        suffix = ".jpg" if mode in ("RGB", "L") and i % 2 else ".png"
        paths.append(str(folder / f"{i:03d}{suffix}"))
        img.save(paths[-1])
    return paths


def sequential_today(paths: list[str], size: int, mode: str) -> tuple[bytes, str]:
    """What prepare saved before decoding went parallel: np.save of the stacked list, and the
    sha256 of every file's length and bytes in order."""
    h, stack = hashlib.sha256(), []
    for p in paths:
        data = Path(p).read_bytes()
        h.update(len(data).to_bytes(8, "little") + data)
        stack.append(resize(load_image(io.BytesIO(data)), size, mode))
    buf = io.BytesIO()
    np.save(buf, np.stack(stack))
    return buf.getvalue(), h.hexdigest()


@pytest.mark.parametrize("mode", ["squish", "crop", "pad"])
def test_threads_write_the_bytes_one_thread_writes(tmp_path, mode):
    paths = write_images(tmp_path / "images")
    want_bytes, want_hash = sequential_today(paths, 24, mode)
    for workers in (1, 4):
        dest = tmp_path / f"cache_{workers}.npy"
        bad, digest = decode_all(paths, dest, 24, mode, workers=workers)
        assert bad == [] and digest == want_hash
        assert dest.read_bytes() == want_bytes  # every image at its index, np.save's header


def test_order_kept(tmp_path):
    """Each image lands at its own index, whichever thread decoded it."""
    paths = write_images(tmp_path / "images", n=40)
    decode_all(paths, tmp_path / "cache.npy", 16, workers=3)
    cache = np.load(tmp_path / "cache.npy")
    for i in np.random.default_rng(1).permutation(len(paths))[:10]:
        assert np.array_equal(cache[i], resize(load_image(paths[i]), 16, "squish"))


def test_without_size_only_checks_and_hashes(tmp_path):
    paths = write_images(tmp_path / "images", n=12)
    _, want_hash = sequential_today(paths, 8, "squish")
    assert decode_all(paths, tmp_path / "cache.npy", None, workers=2) == ([], want_hash)
    assert not (tmp_path / "cache.npy").exists()


def test_unreadable_files_listed_in_order_and_no_cache(tmp_path):
    paths = write_images(tmp_path / "images")
    Path(paths[3]).write_bytes(b"")
    Path(paths[17]).write_bytes(b"not an image")
    png = Path(paths[30]).read_bytes()
    Path(paths[30]).write_bytes(png[: len(png) // 2])  # truncated
    found = {}
    for workers in (1, 4):
        dest = tmp_path / f"cache_{workers}.npy"
        found[workers] = decode_all(paths, dest, 16, workers=workers)
        assert not dest.exists()
    assert found[1] == found[4]
    bad = found[4][0]
    assert [b.split(" (")[0] for b in bad] == [paths[3], paths[17], paths[30]]
    assert bad[0].endswith("(empty file: 0 bytes)")
    assert bad[1].endswith("(not an image format PIL can read)")
    assert str(unreadable(bad)).startswith("3 unreadable image(s):\n  " + bad[0])
