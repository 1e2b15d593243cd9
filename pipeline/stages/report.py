"""report: the data of the plots page, and a page template that renders with no network.

    python -m pipeline report
    dvc plots show             # then open dvc_plots/index.html (works offline)

Reads every teacher's and student's dvclive folder, metrics/final.json and
metrics/final_confusion.csv; writes reports/ (JSON lists, one object per point, as dvc.yaml's
top-level `plots:` read them with the templates in .dvc/plots/):

- curves.json: per run (teacher or student, model, fold) and epoch: train and valid loss, the
  valid metric, the peak LR, augmentation strength and image size, with the run's learning-curve
  verdict and kept epoch; with train.ema also the EMA weights' valid loss and metric, and which
  weights the run kept (kept_weights: raw or ema)
- schedule.json: the head group's LR at every optimizer step, and the augmentation strength
- lr_find.json: every LR range test (loss against LR) with the LR it chose
- confusion.json: the OOF confusion matrix of what is submitted, counts and the share of each
  actual class (every cell, zeros included); past 30 classes, of the 30 most confused, the
  others together as "(other)"
- per_class.json: per class precision and recall of that matrix
- teacher_student.json: each fold's kept-epoch metric for teachers and students, and the CV
- page.html: DVC's HTML template with Vega, Vega-Lite and Vega-Embed inlined
  (.dvc/config `plots.html_template`), so that the page needs no CDN
"""

from __future__ import annotations

import argparse
import contextlib
import html
import json
import os
from pathlib import Path

import pandas as pd

from pipeline.files import PipelineError, atomic_dir, read_json, write_text
from pipeline.params import Params, load_params
from pipeline.roles import TEACHER, Role, student

OUT = Path("reports")
CONFUSION_CLASSES = 30  # the matrix shows the classes most confused, the others as "(other)"
OTHER = "(other)"
PAGE = """<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
<title>{title}</title>
<script>{bundle}</script>
<script>
// every chart's menu keeps "save as SVG/PNG" and drops the links to the online Vega editor
const embedOffline = window.vegaEmbed;
window.vegaEmbed = (el, spec, opt) => embedOffline(el, spec, Object.assign(
  {{actions: {{export: true, source: false, compiled: false, editor: false}}}}, opt));
</script>
<style>
body {{ font-family: sans-serif; margin: 16px; }}
.vega-embed {{ display: block !important; width: fit-content; margin: 8px 0 28px; }}
p.note {{ color: #555; margin: 2px 0; }}
</style>
</head>
<body>
<h2>{title}</h2>
{notes}
{{plot_divs}}
</body>
</html>
"""


def live_runs(p: Params) -> list[tuple[str, str, int, Path]]:
    """(role, model, fold, dvclive folder) of the runs the params name: the teachers, and the
    students when the round is on (folders of other backbones or folds are left out)."""
    roles: list[tuple[Role, list[str]]] = [(TEACHER, p.train.backbones)]
    if p.pseudo.enabled:  # every round's students; a student's folder: its teacher's name
        roles += [(student(r), p.train.backbones) for r in range(1, p.pseudo.rounds + 1)]
    runs = []
    for role, names in roles:
        for name, fold in ((n, k) for n in names for k in p.base.folds):
            folder = role.live / name / f"fold{fold}"
            if not (folder / "metrics.json").exists():
                raise PipelineError(f"{folder}/metrics.json: missing; run `dvc repro` first")
            if "skipped" not in read_json(folder / "metrics.json"):
                runs.append((role.name, name, fold, folder))
    return runs


def read_tsv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t") if path.exists() else pd.DataFrame()


def run_curves(role: str, model: str, fold: int, folder: Path) -> pd.DataFrame:
    """One run's per-epoch rows (dvclive's step is the 0-based epoch)."""
    summary = read_json(folder / "metrics.json")
    metric = next(k for k in summary if k.startswith("valid_") and k != "valid_loss")
    frame = None
    names = ("train_loss", "valid_loss", metric, "peak_lr", "augment_strength", "image_size",
             "ema_valid_loss", f"ema_{metric}")  # fmt: skip
    for name in names:
        col = read_tsv(folder / "plots" / "metrics" / f"{name}.tsv")
        if col.empty:
            continue
        col = col[["step", name]]
        frame = col if frame is None else frame.merge(col, on="step", how="outer")
    if frame is None:
        raise PipelineError(f"{folder}/plots/metrics: no per-epoch curves; rerun its train stage")
    frame = frame.rename(columns={metric: "valid_metric", f"ema_{metric}": "ema_valid_metric"})
    frame.insert(0, "epoch", frame.pop("step") + 1)
    verdict = summary.get("learning_curve", "")
    return frame.assign(
        role=role, model=model, fold=fold, run=f"{role} {model}", metric=metric[6:],
        verdict=verdict, best_epoch=summary.get("best_epoch"),
        kept_weights=summary.get("kept_weights", "raw"),
    )  # fmt: skip


def run_tables(runs) -> dict[str, pd.DataFrame]:
    curves, steps, tests = [], [], []
    for role, model, fold, folder in runs:
        label = {"role": role, "model": model, "fold": fold, "run": f"{role} {model}"}
        curves.append(run_curves(role, model, fold, folder))
        sched = read_tsv(folder / "plots" / "schedule.tsv")
        if not sched.empty:
            steps.append(sched.assign(**label))
        chosen = read_json(folder / "metrics.json").get("lr_find", {})
        for phase, value in chosen.items():
            test = read_tsv(folder / "plots" / "lr_find" / f"{phase}.tsv")
            tests.append(test.assign(**label, phase=phase, chosen=value))
    return {
        "curves": pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(),
        "schedule": pd.concat(steps, ignore_index=True) if steps else pd.DataFrame(),
        "lr_find": pd.concat(tests, ignore_index=True) if tests else pd.DataFrame(),
    }


def most_confused(pairs: pd.DataFrame, keep: int = CONFUSION_CLASSES) -> pd.DataFrame:
    """The pairs with every class but the `keep` most confused ones (in the most wrong pairs,
    as actual or predicted; then the most rows) named "(other)": the matrix grows with
    min(classes, keep)², not with the classes²."""
    named = set(pairs["actual"]) | set(pairs["predicted"])
    if len(named - {"(none)", "(missed)"}) <= keep:
        return pairs
    wrong = pairs[pairs["actual"] != pairs["predicted"]]
    rows = pd.concat([pairs["actual"], pairs["predicted"]]).value_counts()
    errors = pd.concat([wrong["actual"], wrong["predicted"]]).value_counts()
    rank = pd.DataFrame({"errors": errors.reindex(rows.index, fill_value=0), "rows": rows})
    rank = rank.drop(index=["(none)", "(missed)"], errors="ignore")
    order = rank.sort_values(["errors", "rows"], ascending=False, kind="stable").index
    top = {*order[:keep], "(none)", "(missed)"}
    return pairs.assign(**{c: pairs[c].where(pairs[c].isin(top), OTHER) for c in pairs.columns})


def confusion(pairs: pd.DataFrame) -> pd.DataFrame:
    """Every (actual, predicted) cell with its count and its share of the actual class's rows,
    of the classes most confused (most_confused)."""
    pairs = most_confused(pairs)
    actual = sorted(set(pairs["actual"]))
    predicted = sorted(set(pairs["predicted"]) | set(actual) - {"(none)"})
    counts = pd.crosstab(pairs["actual"], pairs["predicted"]).reindex(
        index=actual, columns=predicted, fill_value=0
    )
    cells = counts.stack().rename("count").reset_index()
    cells.columns = ["actual", "predicted", "count"]
    totals = cells.groupby("actual")["count"].transform("sum")
    cells["share"] = (cells["count"] / totals.where(totals > 0, 1)).round(4)
    return cells


def per_class(pairs: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """Precision and recall per class from (actual, predicted) pairs. Single-label pairs are one
    per image; multi-label ones are (c, c) hits, (c, "(missed)") and ("(none)", c): the same two
    ratios hold for both."""
    rows = []
    for c in classes:
        hit = int(((pairs["actual"] == c) & (pairs["predicted"] == c)).sum())
        said, true = int((pairs["predicted"] == c).sum()), int((pairs["actual"] == c).sum())
        for measure, denom in (("precision", said), ("recall", true)):
            value = round(hit / denom, 4) if denom else None
            rows.append({"class": c, "measure": measure, "value": value, "support": true})
    return pd.DataFrame(rows)


def teacher_student(curves: pd.DataFrame, final: dict) -> pd.DataFrame:
    """Each fold's kept-epoch valid metric per run (of the weights kept: the EMA's where
    kept_weights says so), and the CV of the teachers' and students' blends (final.json)."""
    rows = []
    for (run, fold), g in curves.groupby(["run", "fold"]):
        column = "ema_valid_metric" if g["kept_weights"].iloc[0] == "ema" else "valid_metric"
        kept = g.loc[g["epoch"] == g["best_epoch"], column]
        rows.append({"fold": f"fold {fold}", "run": run, "score": float(kept.iloc[0])})
    blends = {
        "teachers' blend": final.get("teacher_cv"),
        "students' blend": final.get("student_cv"),
    }
    if "rounds" in final:  # the last round's is the students' blend
        blends |= {f"students' blend, round {r}": v for r, v in final["rounds"].items()}
        del blends["students' blend"]
    for run, score in blends.items():
        if score is not None:
            rows.append({"fold": "CV (blend, TTA)", "run": run, "score": score})
    return pd.DataFrame(rows)


def notes(final: dict, tables: dict[str, pd.DataFrame]) -> list[str]:
    """The page's header lines: the CV of what is submitted, and why a chart is missing."""
    lines = [f"CV {final['metric']} {final['cv']:.4f}, submitted: {final['submitted']}"]
    if "student_cv" in final:
        lines.append(
            f"teachers {final['teacher_cv']:.4f}, students {final['student_cv']:.4f} "
            f"({final['student_minus_teacher']:+.4f})"
        )
    if final.get("fell_back"):
        lines.append(f"the teachers are submitted: {final['fell_back']} (pseudo.submit: auto)")
    elif final.get("students_worse"):
        why = final["students_worse"]
        lines.append(f"the students are submitted (pseudo.submit: students), though {why}")
    curves = tables["curves"]
    if "ema_valid_metric" in curves:
        runs = curves.drop_duplicates(["run", "fold"])
        lines.append(
            f"EMA of the weights (train.ema): dashed in the valid metric chart; kept in "
            f"{int((runs['kept_weights'] == 'ema').sum())} of {len(runs)} runs, the raw weights "
            "in the others"
        )
    if tables["lr_find"].empty:
        lines.append(
            "No LR range test chart: no run had an LR of `auto` (head.lr, train.lr, pseudo.lr)."
        )
    return lines


def vega_bundle() -> str:
    """Vega, Vega-Lite and Vega-Embed as one script, from the vl-convert wheel. Bundling takes 3 s
    of the stage's 4 on 2 cores, and the script depends only on vl-convert's version: it is kept
    in the user's cache (~/.cache/kaggle-image-pipeline) per version."""
    import vl_convert  # here: the Vega bundle is built only when it is not cached

    home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    kept = home / "kaggle-image-pipeline" / f"vega-bundle-{vl_convert.__version__}.js"
    with contextlib.suppress(OSError, UnicodeDecodeError):
        text = kept.read_text(encoding="utf-8")
        if "window.vegaEmbed" in text:  # written atomically: whole, or not at all
            return text
    text = vl_convert.javascript_bundle()
    with contextlib.suppress(OSError):  # a read-only home only costs the next run 3 s
        kept.parent.mkdir(parents=True, exist_ok=True)
        write_text(kept, text)
    return text


def page(title: str, lines: list[str]) -> str:
    bundle = vega_bundle().replace("</script", "<\\/script")
    body = "\n".join(f'<p class="note">{html.escape(line)}</p>' for line in lines)
    return PAGE.format(title=html.escape(title), bundle=bundle, notes=body)


def records(frame: pd.DataFrame) -> str:
    return frame.to_json(orient="records", double_precision=6)


def run(out: Path = OUT) -> dict[str, int]:
    p = load_params()
    final_json, pairs_csv = Path("metrics/final.json"), Path("metrics/final_confusion.csv")
    for needed in (final_json, pairs_csv):
        if not needed.exists():
            raise PipelineError(f"{needed}: missing; run `dvc repro ensemble_final` first")
    tables = run_tables(live_runs(p))
    pairs = pd.read_csv(pairs_csv, dtype=str, keep_default_na=False)
    classes = json.loads(Path("data/prepared/meta.json").read_text())["classes"]
    tables["confusion"] = confusion(pairs)
    tables["per_class"] = per_class(pairs, classes)
    final = read_json(final_json)
    tables["teacher_student"] = teacher_student(tables["curves"], final)
    with atomic_dir(out) as tmp:
        for name, frame in tables.items():
            write_text(tmp / f"{name}.json", records(frame))
        title = f"{p.competition.name}: pipeline plots"
        write_text(tmp / "page.html", page(title, notes(final, tables)))
    counts = {name: len(frame) for name, frame in tables.items()}
    print("report: " + ", ".join(f"{n} {c} rows" for n, c in counts.items()) + f" in {out}/")
    return counts


def main(argv: list[str]) -> None:
    argparse.ArgumentParser(prog="python -m pipeline report").parse_args(argv)
    run()
