"""The plots page: every chart the issue names, no network reference, rendered by a real browser.

`check_plots_page` runs on the end-to-end pipeline (test_e2e.py). The browser test builds a page
from real training runs in-process (faster than `dvc repro`) and opens it in headless Chromium
with every network request sent to a dead proxy.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from tests.conftest import DVC, ROOT, init_dvc, tiny_params

CHARTS = {  # dvc.yaml's top-level plot ids -> a field their data must carry
    "loss": "valid_loss",
    "metric": "valid_metric",
    "lr_find": "chosen",
    "lr_schedule": "lr",
    "augmentation": "augment_strength",
    "confusion": "count",
    "confusion_normalized": "share",
    "per_class": "measure",
    "teacher_student": "score",
}
IMAGES = ("diagnose_gradcam.png", "diagnose_top_losses.png")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def page_specs(html: str) -> dict[str, dict]:
    """{div id: the Vega-Lite spec DVC embedded} of a `dvc plots show` page."""
    div = r'<div id = "([^"]+)">\s*<script[^>]*>\s*var spec = (.*?);\s*vegaEmbed'
    found = re.findall(div, html, flags=re.S)
    return {div: json.loads(spec) for div, spec in found}


def network_references(html: str) -> list[str]:
    """Anything the page would fetch: src/href/url()/@import with a scheme, or a $schema URL."""
    fetched = re.findall(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//[^"' >]+""", html)
    fetched += re.findall(r"url\(\s*['\"]?(?:https?:)?//[^)]+\)|@import[^;]+", html)
    return fetched + re.findall(r'"\$schema"\s*:\s*"[^"]+"', html)


def check_plots_page(root: Path, run) -> None:
    """`dvc plots show` in a pipeline folder: every chart with data, the heatmaps, no network."""
    run(["dvc", "plots", "show"])
    html = (root / "dvc_plots" / "index.html").read_text()
    specs = page_specs(html)
    missing = set(CHARTS) - set(specs)
    assert not missing, f"charts missing from the page: {sorted(missing)}"
    for chart, field in CHARTS.items():
        values = specs[chart]["data"]["values"]
        assert values and field in values[0], f"{chart}: no data with '{field}'"
        assert not re.search(r"https?://", json.dumps(specs[chart])), chart
    roles = {row["run"].split()[0] for row in specs["teacher_student"]["data"]["values"]}
    assert {"teacher", "student"} <= roles  # the comparison once pseudolabels exist
    for image in IMAGES:
        assert f'src="static/workspace_{image}"' in html
        assert (root / "dvc_plots" / "static" / f"workspace_{image}").exists()
    assert network_references(html) == []
    assert "vegaEmbed" in html and len(html) > 500_000  # Vega, Vega-Lite and Vega-Embed inlined


def build_page_in_process(root: Path) -> Path:
    """Two folds trained (LR range test on), predicted, blended, reported; `dvc plots show`."""
    from pipeline.params import parse_params
    from pipeline.stages import ensemble, predict, report, train

    raw = tiny_params({"train": {"lr": "auto"}, "lr_find": {"steps": 12}})
    raw["pseudo"]["enabled"] = False
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    shutil.copy(ROOT / "dvc.yaml", root / "dvc.yaml")

    def run(cmd: list[str]) -> subprocess.CompletedProcess:
        cmd = [DVC, *cmd[1:]] if cmd[0] == "dvc" else cmd
        return subprocess.run(cmd, cwd=root, capture_output=True, text=True, check=True)

    init_dvc(run)
    p = parse_params(raw)
    for fold in p.base.folds:
        train.run(p, "resnet10t", fold)
        predict.run(p, "resnet10t", fold)
    ensemble.run(p.train.backbones, p.base.folds, p.competition.metric, p.ensemble)
    ensemble.run_final(p)
    report.run()
    run(["dvc", "plots", "show", "-q"])
    return root / "dvc_plots" / "index.html"


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (apt-get install chromium)")
def test_plots_page_renders_offline_in_headless_chromium(workdir):
    page = build_page_in_process(workdir)
    html = page.read_text()
    assert network_references(html) == []
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           "--proxy-server=127.0.0.1:9", "--virtual-time-budget=10000"]  # fmt: skip
    dom = subprocess.run([*cmd, "--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=120, check=True).stdout  # fmt: skip
    drawn = re.findall(r'<svg[^>]*class="marks"', dom)  # one per chart Vega drew
    specs = page_specs(html)  # a plot whose file is absent (no upload yet) is an empty spec,
    charts = [c for c, spec in specs.items() if spec.get("data", {}).get("values")]
    assert len(drawn) == len(specs) and len(charts) >= 8, (len(drawn), charts)  # drawn empty
    shot = workdir / "page.png"
    subprocess.run([*cmd, "--window-size=1200,2400", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120, check=True)  # fmt: skip
    im = np.asarray(Image.open(shot).convert("L"))
    assert im.shape == (2400, 1200)
    dark = int((im < 128).sum())
    assert dark > 5000  # lines, bars, labels: a blank page would have none beyond the title


def test_the_vega_bundle_is_kept_per_vl_convert_version_and_rebuilt_when_damaged(
    tmp_path, monkeypatch
):
    import vl_convert

    from pipeline.stages import report

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    calls = []
    real = vl_convert.javascript_bundle
    monkeypatch.setattr(vl_convert, "javascript_bundle", lambda: calls.append(1) or real())
    first = report.vega_bundle()
    kept = tmp_path / "kaggle-image-pipeline" / f"vega-bundle-{vl_convert.__version__}.js"
    assert kept.read_text(encoding="utf-8") == first and "window.vegaEmbed" in first
    assert report.vega_bundle() == first and calls == [1]  # the second page reads the file
    kept.write_text("window.vega = (function(){", encoding="utf-8")  # not a whole bundle
    assert report.vega_bundle() == first and calls == [1, 1]
    assert kept.read_text(encoding="utf-8") == first


def test_the_confusion_matrix_of_many_classes_keeps_the_most_confused():
    from pipeline.stages import report

    names = [f"c{i}" for i in range(200)]
    right = pd.DataFrame({"actual": names * 5, "predicted": names * 5})
    wrong = pd.DataFrame({"actual": ["c7"] * 9 + ["c3"] * 4, "predicted": ["c9"] * 9 + ["c8"] * 4})
    cells = report.confusion(pd.concat([right, wrong], ignore_index=True))
    shown = set(cells["actual"]) | set(cells["predicted"])
    assert {"c7", "c9", "c3", "c8", "(other)"} <= shown and len(shown) == 31
    assert len(cells) == 31 * 31  # not 200 x 200
    at = cells.set_index(["actual", "predicted"])["count"]
    assert at["c7", "c9"] == 9 and at["c7", "c7"] == 5 and at["(other)", "(other)"] == 5 * 170
    few = report.confusion(wrong)  # few classes: every one of them
    assert set(few["actual"]) == {"c7", "c3"}
