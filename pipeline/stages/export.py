"""export: the two folders a code competition needs, ready for the real Kaggle CLI.

    python -m pipeline export            # writes export/ (export.enabled: true)
    python -m pipeline export --push     # then uploads them: kaggle datasets create (first time)
                                         # or version, and kaggle kernels push

export/dataset/ becomes a Kaggle dataset: what is submitted (final/: the students, or the
teachers) as fold models (model.safetensors, model.json, SGDR snapshots when blended),
bundle.json (the blend: members, their exact weights, each fold model's TTA beta, the
multi-label thresholds), params.yaml, the `pipeline` package itself and dataset-metadata.json.
export/kernel/ becomes the notebook: kernel.py and kernel-metadata.json (the competition and the
dataset as sources, internet off, a GPU if export.gpu). On Kaggle it finds both inputs, runs
`pipeline.kernel` (prepare -> predict with TTA -> blend -> submit, no network, no DVC) and
writes /kaggle/working/submission.csv. With export.enabled false it writes export/skipped.json.

`--push` records the pushed kernel version and the bundle's digest in submissions/kernel.json;
`upload` submits that version's output, and refuses when the export changed since.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from pipeline import kaggle
from pipeline.bundle import OUT, bundle_digest
from pipeline.files import PipelineError, atomic_dir, read_json, sha256, write_json, write_text
from pipeline.params import Params
from pipeline.roles import (
    TEACHER,
    by_name,
    final_members,
    flag_and_params,
    last_student,
    teacher_members,
)

PUSHED = Path("submissions/kernel.json")
PACKAGE = Path(__file__).resolve().parents[1]
KERNEL = PACKAGE / "kernel_script.py"  # the notebook, COMPETITION and DATASET filled in
LICENSE = "CC0-1.0"


def slugs(p: Params) -> tuple[str, str]:
    """(owner/dataset, owner/kernel) as Kaggle references."""
    owner = p.export.owner
    if not owner:
        raise PipelineError("export.owner: set it to your Kaggle username (export.enabled: true)")
    name = p.competition.name
    dataset, kernel = p.export.dataset or f"{name}-models", p.export.kernel or f"{name}-inference"
    for key, slug in (("export.dataset", dataset), ("export.kernel", kernel)):
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]{4,49}", slug):
            raise PipelineError(
                f"{key}: '{slug}' is not a Kaggle slug (5-50 lowercase letters, digits, dashes)"
            )
    return f"{owner}/{dataset}", f"{owner}/{kernel}"


def member_entries(label: str, folder: Path, p: Params, snapshots: bool) -> dict[str, list]:
    """fold -> the weight files a member averages (one model, or its SGDR snapshots) with the
    beta each one's predict stage chose; paths relative to the bundle."""
    role = last_student(p) if label.startswith("student") else TEACHER
    name = folder.name
    out = {}
    for k in p.base.folds:
        src, preds = role.models / name / f"fold{k}", role.preds / name / f"fold{k}"
        rel = f"models/{role.name}/{name}/fold{k}"
        if not snapshots:
            beta = read_json(preds / "tta.json")["beta"]
            out[str(k)] = [{"dir": rel, "beta": beta, "sha256": sha256(src / "model.safetensors")}]
            continue
        out[str(k)] = [
            {"dir": rel, "weights": f"{rel}/snapshots/{w.name}", "sha256": sha256(w),
             "beta": read_json(preds / "snapshots" / w.stem / "tta.json")["beta"]}
            for w in sorted((src / "snapshots").glob("cycle*.safetensors"))
        ]  # fmt: skip
    return out


def bundle_spec(p: Params, final: Path = Path("final")) -> dict:
    """bundle.json: the blend that final/ holds, member by member, in its order."""
    decision = read_json(final / "thresholds.json")
    meta = read_json(Path("data/prepared/meta.json"))
    members, folders = [], {**teacher_members(p), **final_members(p)}  # teachers: the fallback
    for label, weight in decision["weights"].items():
        base = label.removesuffix(" snapshots")
        folder = folders[base]
        folds = member_entries(base, folder, p, label.endswith(" snapshots"))
        members.append({"label": label, "weight": weight, "folds": folds})
    return {
        "competition": p.competition.name, "metric": decision["metric"], "task": meta["task"],
        "classes": meta["classes"], "decision": decision, "members": members,
        "cv": read_json(Path("metrics/final.json"))["cv"],
    }  # fmt: skip


def copy_models(spec: dict, dest: Path) -> None:
    for member in spec["members"]:
        for entries in member["folds"].values():
            for e in entries:
                role, rest = e["dir"].split("/", 2)[1:]
                src = by_name(role).models / rest
                (dest / e["dir"]).mkdir(parents=True, exist_ok=True)
                for f in ("model.safetensors", "model.json"):
                    shutil.copy2(src / f, dest / e["dir"] / f)
                if "weights" in e:
                    (dest / e["weights"]).parent.mkdir(exist_ok=True)
                    shutil.copy2(src / "snapshots" / Path(e["weights"]).name, dest / e["weights"])


def write_dataset(p: Params, spec: dict, ref: str, dest: Path) -> None:
    copy_models(spec, dest)
    shutil.copytree(PACKAGE, dest / "pipeline",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))  # fmt: skip
    shutil.copy2("params.yaml", dest / "params.yaml")
    write_json(dest / "bundle.json", spec)
    title = f"{p.competition.name} models"[:50].ljust(6, "_")
    write_json(dest / "dataset-metadata.json",
               {"title": title, "id": ref, "licenses": [{"name": LICENSE}]})  # fmt: skip


def write_kernel(p: Params, dataset: str, ref: str, dest: Path) -> None:
    dest.mkdir(parents=True)
    script = KERNEL.read_text()
    script = script.replace("COMPETITION = None", f"COMPETITION = {p.competition.name!r}")
    write_text(dest / "kernel.py", script.replace("DATASET = None", f"DATASET = {dataset!r}"))
    meta = {
        "id": ref, "title": ref.split("/")[1], "code_file": "kernel.py", "language": "python",
        "kernel_type": "script", "is_private": p.export.private, "enable_gpu": p.export.gpu,
        "enable_internet": False, "dataset_sources": [dataset],
        "competition_sources": [p.competition.name], "kernel_sources": [],
    }  # fmt: skip
    write_json(dest / "kernel-metadata.json", meta)


def run(p: Params, out: Path = OUT) -> None:
    with atomic_dir(out) as tmp:
        if not p.export.enabled:
            write_json(tmp / "skipped.json", {"skipped": "export.enabled is false"})
            print("export skipped (export.enabled: false: not a code competition)")
            return
        dataset, kernel = slugs(p)
        spec = bundle_spec(p)
        write_dataset(p, spec, dataset, tmp / "dataset")
        write_kernel(p, dataset, kernel, tmp / "kernel")
    n = sum(len(e) for m in spec["members"] for e in m["folds"].values())
    print(f"export: {n} model(s) of {len(spec['members'])} member(s) -> {out}/dataset ({dataset})"
          f", {out}/kernel ({kernel})")  # fmt: skip


def push(p: Params, out: Path = OUT, pushed: Path = PUSHED) -> dict:
    """Upload export/ with the Kaggle CLI; record the kernel version in submissions/kernel.json."""
    if not (out / "dataset" / "bundle.json").exists():
        raise PipelineError(f"{out}/dataset: no export; set export.enabled: true, `dvc repro`")
    dataset, kernel = slugs(p)
    message = f"cv {read_json(out / 'dataset' / 'bundle.json')['cv']:.5f}"
    created = kaggle.push_dataset(dataset, out / "dataset", message)
    version = kaggle.push_kernel(kernel, out / "kernel")
    record = {"kernel": kernel, "version": version, "dataset": dataset,
              "dataset_created": created, "bundle_sha256": bundle_digest(out)}  # fmt: skip
    write_json(pushed, record)
    print(
        f"export: pushed dataset {dataset} ({'created' if created else 'new version'}) and "
        f"kernel {kernel} version {version}; when it has run on Kaggle, upload submits it"
    )
    return record


def main(argv: list[str]) -> None:
    push_, p = flag_and_params("export", "push", "upload dataset and kernel to Kaggle", argv)
    if push_:
        push(p)
    else:
        run(p)
