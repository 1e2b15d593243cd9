"""How the torch-free stages grow with the competition: seconds and peak RSS per stage and size.

    nice -n 10 python benchmarks/scale.py     # N 1k, 10k, 100k x C 10, 1000 x label, probs
    nice -n 10 python benchmarks/scale.py --sizes 1000,10000 --classes 10 --kinds label
    python benchmarks/scale.py --sizes 200 --classes 3 --kinds probs --folds 2 \\
        --stages ensemble,submit --work /tmp/scale --keep          # a quick look, kept on disk
    python benchmarks/scale.py --rev HEAD~1 ...        # the code of a commit (git archive)

Each case (N images, C classes, a `label` or `probs` submission) is a synthetic competition in
the layout Kaggle ships (train.csv id,label; train/<id>.png and test/<id>.png, N of each, 16x16;
sample_submission.csv: id,label or id and one column per class) and a fresh copy of the project
(pipeline/, dvc.yaml, params.yaml; of the working tree, or of --rev) pointed at it: metric
accuracy (label) or log_loss (probs), --folds folds, --backbones backbones, prepare.cache_size
16, pseudo.enabled, no TTA. Then, each as its own process in the copy, timed:

    source download prepare extra folds  python -m pipeline download --manifest, download, ...
    train (fake)                         this script: fake weights, model.json and plain/ preds
    predict                              python -m pipeline predict, every backbone and fold
    ensemble pseudolabel                 python -m pipeline ensemble, pseudolabel
    train_student (fake) predict_student the same for the students (predict --student)
    ensemble_final submit                python -m pipeline ensemble --final, submit
    later_rounds                         pseudolabel, train and predict --student --round 2 and 3:
                                         the skip outputs `dvc repro` writes (ensemble_final's
                                         `rounds` dependency)
    dvc_commit dvc_status                `dvc commit -f` of those stages (their dvc.lock), then
                                         `dvc status` of them with nothing changed

The fake train writes what the train stage leaves for the torch-free ones (the plain
predictions predict copies when there is no TTA, model.json, the weights pseudolabel hashes),
with the package's own writers (pipeline.preds.write_preds, files.write_json, atomic_dir):
it never knows the prediction file format. Probabilities are a softmax of Gaussian logits with
the true class (80 % of rows; else a random one) raised by ln C + U(-2, 6), so that top
probabilities spread over (0, 1) and pseudolabel keeps part of the test set. No solution.csv:
submit scores no local leaderboard, as on a real competition.

Seconds: wall time of the stage's process. Peak RSS: ru_maxrss of the rusage os.wait4 returns
for that process (the largest RSS of it and of any child it waited for). predict and
predict_student: the sum of the seconds of their runs (one per backbone and fold), the largest
RSS. Every process runs under RLIMIT_AS = --mem-limit GiB (address space, mapped files too: a
stage past it fails to allocate and the table says "killed past X GiB after T s") and
--timeout seconds. A failed stage ends its case; the table says why below it. Growth exponent:
log(v_b / v_a) / log(b / a) between the two largest sizes (a, b), for seconds and for RSS.
Cases with fewer than --folds training images per class cannot be split (the folds stage says
so) and stop there. Disk: a case holds its predictions twice (the project and DVC's cache) until
it ends; 100k x 1000 float32 is about 0.4 GB per test prediction file.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SELF = Path(__file__).resolve()
BIN = Path(sys.executable).parent  # the venv's python and dvc
STAGES = ("source", "download", "prepare", "extra", "folds", "train", "predict", "ensemble",
          "pseudolabel", "train_student", "predict_student", "ensemble_final", "submit",
          "later_rounds", "dvc_commit", "dvc_status")  # fmt: skip
LATER = ("pseudolabel", "train_student", "predict_student")  # rounds 2 and 3: skip outputs
LOCKED = (*STAGES[:-3], *(f"{s}_{r}" for r in (2, 3) for s in LATER))  # dvc.yaml's names
FAKE = {"train": "teacher", "train_student": "student"}
METRIC = {"label": "accuracy", "probs": "log_loss"}
OOM = ("MemoryError", "Unable to allocate", "Cannot allocate memory", "Memory allocation",
       "bad_alloc", "out of memory")  # fmt: skip  # what a process that hit RLIMIT_AS says
HIT = 0.8  # share of rows whose boosted class is the true one
SIDE = 16  # px, every image


@dataclass(frozen=True)
class Case:
    n: int  # training images, and as many test images
    c: int  # classes
    kind: str  # label | probs: the sample submission's shape

    @property
    def name(self) -> str:
        return f"{short(self.n)}x{self.c}-{self.kind}"


@dataclass
class Result:
    seconds: float
    rss: int  # bytes
    error: str | None = None  # None: it finished
    note: str | None = None  # the log's last error line, or what dvc status reported


def short(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def class_name(k: int) -> str:
    return f"c{k:04d}"


# --- the synthetic competition ------------------------------------------------------------


def png_variants(count: int, seed: int) -> list[bytes]:
    """A few different 16x16 RGB PNGs, encoded once: every image file is one of them."""
    rng, out = np.random.default_rng(seed), []
    for _ in range(count):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def write_sample(path: Path, ids: list[str], c: int, kind: str) -> None:
    """id,label (the first class), or id and one probability column per class (1/C each)."""
    head = "id,label\n" if kind == "label" else "id," + ",".join(map(class_name, range(c))) + "\n"
    tail = f",{class_name(0)}\n" if kind == "label" else f",{1 / c:.6f}" * c + "\n"
    with open(path, "w") as f:
        f.write(head)
        for s in range(0, len(ids), 1000):
            f.write("".join(i + tail for i in ids[s : s + 1000]))


def write_competition(dest: Path, case: Case, seed: int) -> None:
    """train.csv (id,label; classes in turn), train/ and test/ PNGs, sample_submission.csv."""
    pngs = png_variants(16, seed)
    ids = {split: [f"{split[:2]}{i:07d}" for i in range(case.n)] for split in ("train", "test")}
    for split, names in ids.items():
        (dest / split).mkdir(parents=True)
        for i, name in enumerate(names):
            (dest / split / f"{name}.png").write_bytes(pngs[i % len(pngs)])
    labels = [class_name(i % case.c) for i in range(case.n)]
    pd.DataFrame({"id": ids["train"], "label": labels}).to_csv(dest / "train.csv", index=False)
    write_sample(dest / "sample_submission.csv", ids["test"], case.c, case.kind)


def merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def copy_code(proj: Path, rev: str | None) -> None:
    """pipeline/, dvc.yaml, params.yaml and .dvcignore of the working tree, or of commit `rev`."""
    names = ["pipeline", "dvc.yaml", "params.yaml", ".dvcignore"]
    proj.mkdir(parents=True)
    if rev is not None:
        git = ["git", "-C", str(ROOT), "archive", rev, *names]
        tar = subprocess.run(git, capture_output=True, check=True).stdout
        with tarfile.open(fileobj=io.BytesIO(tar)) as t:
            t.extractall(proj, filter="data")
        return
    shutil.copytree(ROOT / "pipeline", proj / "pipeline",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    for name in names[1:]:
        shutil.copy(ROOT / name, proj / name)


def make_project(proj: Path, comp: Path, case: Case, a: argparse.Namespace) -> None:
    """The project's code, its params pointed at `comp`, and its own DVC repo (no git)."""
    copy_code(proj, a.rev)
    source = {"source": "path", "path": str(comp), "name": f"scale-{case.name}"}
    over = {
        "base": {"folds": list(range(a.folds)), "image_size": SIDE},
        "prepare": {"cache_size": SIDE},
        "competition": source | {"metric": METRIC[case.kind]},
        "train": {"backbones": [f"b{i}" for i in range(a.backbones)]},
        "tta": {"views": [], "random": 0},  # predict copies the train stage's plain predictions
        "pseudo": {"enabled": True, "extra": None, "rounds": 1},
        "diagnose": {"enabled": False},
    }
    params = merge(yaml.safe_load((proj / "params.yaml").read_text()), over)
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (["init", "--no-scm", "-q"], ["config", "core.analytics", "false"]):
        subprocess.run([str(BIN / "dvc"), *cmd], cwd=proj, env=child_env(proj), check=True)


# --- the fake train stage (run in the project copy, importing its pipeline) -----------------


def fake_probs(targets: np.ndarray, c: int, rng: np.random.Generator) -> np.ndarray:
    """Softmax of N(0, 1) logits with one class per row raised by ln C + U(-2, 6): the true
    one for HIT of the rows, a random one for the others. float32, built 8,192 rows at a time."""
    out = np.empty((len(targets), c), dtype=np.float32)
    for s in range(0, len(targets), 8192):
        t = targets[s : s + 8192].copy()
        wrong = rng.random(len(t)) > HIT
        t[wrong] = rng.integers(0, c, int(wrong.sum()))
        z = rng.standard_normal((len(t), c), dtype=np.float32)
        z[np.arange(len(t)), t] += np.log(c) + rng.uniform(-2, 6, len(t)).astype(np.float32)
        z = np.exp(z - z.max(1, keepdims=True))
        out[s : s + len(t)] = z / z.sum(1, keepdims=True)
    return out


def fake_fold(index, folds: pd.DataFrame, role, model: str, k: int, seed: int) -> None:
    """What train writes for one backbone and fold, through the package's own writers."""
    from safetensors.numpy import save_file

    from pipeline.files import atomic_dir, write_json
    from pipeline.index import encode_labels, fold_rows
    from pipeline.preds import write_preds
    from pipeline.roles import PLAIN

    classes, task = index.classes, index.meta["task"]
    rng = np.random.default_rng(seed)
    _, valid = fold_rows(index, folds, k)
    truth = {
        "oof": encode_labels(index.train["label"].iloc[valid], classes, task),
        "test": np.array([int(i[2:]) % len(classes) for i in index.test["id"]]),
    }
    ids = {"oof": index.train["id"].iloc[valid], "test": index.test["id"]}
    info = {"name": model, "fold": k, "role": role.name, "task": task, "classes": classes,
            "fake": "benchmarks/scale.py"}  # fmt: skip
    with atomic_dir(role.models / model / f"fold{k}") as tmp:
        save_file({"weight": rng.standard_normal(64).astype(np.float32)},
                  str(tmp / "model.safetensors"))  # fmt: skip
        write_json(tmp / "model.json", info)
        for split in ("oof", "test"):
            probs = fake_probs(truth[split], len(classes), rng)
            write_preds(tmp / PLAIN, split, ids[split], probs, classes)
    with atomic_dir(role.live / model / f"fold{k}") as tmp:  # train's dvclive outputs
        (tmp / "plots").mkdir()
        write_json(tmp / "metrics.json", {"fake": True})


def fake_train(role_name: str) -> None:
    """Every backbone and fold of the role (teacher, or round 1's student), as params say."""
    import pipeline
    from pipeline.index import read_folds, read_index
    from pipeline.params import load_params
    from pipeline.roles import STUDENT, TEACHER

    here = Path.cwd().resolve()
    if not Path(pipeline.__file__).resolve().is_relative_to(here):
        raise SystemExit(f"fake train: imported {pipeline.__file__}, not the copy in {here}")
    p, index, folds = load_params(), read_index(), read_folds()
    role = TEACHER if role_name == "teacher" else STUDENT
    for b, model in enumerate(p.train.backbones):
        for k in p.base.folds:
            fake_fold(index, folds, role, model, k, seed=1000 * b + 10 * k + role.round)
    print(f"fake train: {role_name}s {p.train.backbones}, folds {p.base.folds}")


# --- running and measuring a stage ----------------------------------------------------------


def child_env(proj: Path) -> dict:
    """The project's package first, the venv's python and dvc on PATH, no warm server (each
    stage its own process, so that its RSS is its own)."""
    env = {k: v for k, v in os.environ.items() if k != "PIPELINE_WARM"}
    env |= {"PYTHONPATH": str(proj), "DVC_NO_ANALYTICS": "1"}
    env["PATH"] = str(BIN) + os.pathsep + env.get("PATH", "")
    return env


def reap(proc: subprocess.Popen, deadline: float) -> tuple[int, resource.struct_rusage, bool]:
    """(exit status, rusage, timed out) of `proc`, killed with its process group at deadline."""
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, usage, False
        if time.perf_counter() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, usage, True
        time.sleep(0.02)


def owned_group():
    """tests.conftest's (SIGTERM or Ctrl-C to this script kills the stage's group), imported in
    the process that measures only: a fake stage (this script in a project's copy) must import
    that copy's pipeline, so ROOT is not on its sys.path."""
    if sys.path[0] != str(ROOT):
        sys.path.insert(0, str(ROOT))
    from tests.conftest import owned_group as owned

    return owned


def measure(cmd: list[str], proj: Path, log: Path, limit_gib: float, timeout: float) -> Result:
    """One process: wall seconds, peak RSS and, when it failed, why."""
    cap = int(limit_gib * 2**30)
    owned = owned_group()  # imported before the clock starts

    def limit() -> None:  # in the child, before exec: it and everything it starts
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    with open(log, "ab") as out:
        out.write(f"$ {' '.join(cmd)}\n".encode())
        out.flush()
        start = time.perf_counter()
        popen = partial(subprocess.Popen, cmd, cwd=proj, env=child_env(proj), stdout=out,
                        stderr=subprocess.STDOUT, preexec_fn=limit,
                        start_new_session=True)  # fmt: skip
        with owned(popen) as proc:
            rc, usage, late = reap(proc, start + timeout)
    seconds, rss = time.perf_counter() - start, usage.ru_maxrss * 1024  # Linux: KiB
    if rc == 0:
        return Result(seconds, rss)
    text = log.read_text(errors="replace")[-20000:]
    if late:
        return Result(seconds, rss, f"timed out after {timeout:.0f} s")
    if rc < 0 or any(s in text for s in OOM):
        return Result(seconds, rss, f"killed past {limit_gib:g} GiB after {seconds:.1f} s")
    return Result(seconds, rss, f"failed (exit {rc}) after {seconds:.1f} s", last_error(text))


def last_error(text: str) -> str:
    lines = [x.strip() for x in text.splitlines() if x.strip() and not x.startswith("$ ")]
    errors = [x for x in lines if x.startswith("error:") or x.startswith("ERROR")]
    return (errors or lines or ["(no output)"])[-1][:300]


def commands(folds: int, backbones: int) -> dict[str, list[list[str]]]:
    py, dvc = [sys.executable, "-m", "pipeline"], str(BIN / "dvc")
    models = [f"b{i}" for i in range(backbones)]

    def predict(*extra: str) -> list[list[str]]:
        return [[*py, "predict", "--model", m, "--fold", str(k), *extra]
                for m in models for k in range(folds)]  # fmt: skip

    return {
        "source": [[*py, "download", "--manifest"]],
        "download": [[*py, "download"]],
        "prepare": [[*py, "prepare"]],
        "extra": [[*py, "extra"]],
        "folds": [[*py, "folds"]],
        "train": [[sys.executable, str(SELF), "--fake-train", "teacher"]],
        "predict": predict(),
        "ensemble": [[*py, "ensemble"]],
        "pseudolabel": [[*py, "pseudolabel"]],
        "train_student": [[sys.executable, str(SELF), "--fake-train", "student"]],
        "predict_student": predict("--student"),
        "ensemble_final": [[*py, "ensemble", "--final"]],
        "submit": [[*py, "submit"]],
        "later_rounds": later_rounds(py, models, folds),
        "dvc_commit": [[dvc, "commit", "-f", *LOCKED]],
        "dvc_status": [[dvc, "status", "--json", *LOCKED]],
    }


def later_rounds(py: list[str], models: list[str], folds: int) -> list[list[str]]:
    """Rounds 2 and 3 past pseudo.rounds: their skip outputs, which ensemble_final's `rounds`
    dependency needs in dvc.lock (what `dvc repro` runs, no torch)."""
    out = []
    for r in ("2", "3"):
        out.append([*py, "pseudolabel", "--round", r])
        for stage in ("train", "predict"):
            out += [[*py, stage, "--model", m, "--fold", str(k), "--student", "--round", r]
                    for m in models for k in range(folds)]  # fmt: skip
    return out


def run_stage(stage: str, cmds: list[list[str]], proj: Path, log: Path, a) -> Result:
    """A stage's processes in turn: seconds summed, the largest RSS; the first failure ends it."""
    total = Result(0.0, 0)
    for cmd in cmds:
        r = measure(cmd, proj, log, a.mem_limit, a.timeout)
        total = Result(total.seconds + r.seconds, max(total.rss, r.rss), r.error, r.note)
        if r.error:
            break
    if stage == "dvc_status" and total.error is None:
        total.note = status_note(log)
    return total


def status_note(log: Path) -> str | None:
    """What `dvc status` reported as changed besides the always-changed source, if anything."""
    out = log.read_text(errors="replace").rsplit("$ ", 1)[-1].splitlines()[1:]
    found = [x for x in out if x.strip().startswith("{")]
    status = yaml.safe_load(found[-1]) if found else {}
    changed = {k: v for k, v in (status or {}).items() if v != ["always changed"]}
    return f"dvc status reports changes: {changed}"[:300] if changed else None


def run_case(case: Case, work: Path, a: argparse.Namespace) -> dict[str, Result]:
    """Generate the competition and the project, then every stage up to the last one asked."""
    base = work / case.name
    comp, proj, logs = base / "comp", base / "proj", base / "logs"
    say(f"{case.name}: writing {2 * case.n} images and the project in {base}")
    write_competition(comp, case, a.seed)
    make_project(proj, comp, case, a)
    logs.mkdir()
    cmds, out = commands(a.folds, a.backbones), {}
    last = max(STAGES.index(s) for s in a.stages)
    for stage in STAGES[: last + 1]:
        r = out[stage] = run_stage(stage, cmds[stage], proj, logs / f"{stage}.log", a)
        say(f"{case.name}: {stage:<16} {cell(r)}" + (f"  {r.note}" if r.note else ""))
        if r.error:
            break
    if not a.keep:
        shutil.rmtree(base)
    return {s: r for s, r in out.items() if s in a.stages or r.error}  # why it stopped, too


# --- the table ------------------------------------------------------------------------------


def size(b: float) -> str:
    return f"{b / 2**30:.1f} GiB" if b >= 2**30 else f"{b / 2**20:.0f} MiB"


def cell(r: Result | None) -> str:
    if r is None:
        return "–"
    return r.error or f"{r.seconds:.1f} s / {size(r.rss)}"


def exponent(lo: Result | None, hi: Result | None, ratio: float, field: str) -> str:
    if lo is None or hi is None or lo.error or hi.error:
        return "–"
    return f"{math.log(getattr(hi, field) / getattr(lo, field)) / math.log(ratio):.2f}"


def row_line(stage: str, c: int, kind: str, results, sizes: list[int], notes: list[str]) -> str:
    """One stage's cells for C classes and a submission kind, each size, then the exponents;
    a cell with a note gets its number, the note goes to `notes`."""
    row = {n: results.get(Case(n, c, kind), {}).get(stage) for n in sizes}
    cells = []
    for n, r in row.items():
        mark = ""
        if r is not None and r.note:
            notes.append(f"[{len(notes) + 1}] {short(n)}x{c}-{kind} {stage}: {r.note}")
            mark = f" [{len(notes)}]"
        cells.append(cell(r) + mark)
    lo, hi = sizes[-2:] if len(sizes) > 1 else (None, None)
    exps = [exponent(row.get(lo), row.get(hi), hi / lo, f) if lo else "–"
            for f in ("seconds", "rss")]  # fmt: skip
    label = f"{stage} (fake)" if stage in FAKE else stage
    return "| " + " | ".join([label, str(c), kind, *cells, *exps]) + " |"


def table(results: dict[Case, dict[str, Result]], a: argparse.Namespace) -> str:
    """A row per stage, class count and submission kind; a column per size; the exponents."""
    sizes = sorted(a.sizes)
    grow = f"{short(sizes[-2])}→{short(sizes[-1])}" if len(sizes) > 1 else "–"
    head = ["stage", "C", "submission", *map(short, sizes), f"t exp {grow}", f"RSS exp {grow}"]
    lines, notes = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)], []
    failed = {s for by_stage in results.values() for s, r in by_stage.items() if r.error}
    for stage in (s for s in STAGES if s in a.stages or s in failed):
        lines += [row_line(stage, c, kind, results, sizes, notes)
                  for c in a.classes for kind in a.kinds]  # fmt: skip
    return "\n".join(lines + ([""] + notes if notes else []))


def header(a: argparse.Namespace) -> str:
    git = ["git", "--no-optional-locks", "-C", str(ROOT)]
    rev = a.rev or "HEAD"
    commit = subprocess.run([*git, "log", "--oneline", "-1", rev], capture_output=True,
                            text=True).stdout.strip()  # fmt: skip
    changed = [*git, "diff", "--quiet", "HEAD", "--", "pipeline", "dvc.yaml", "params.yaml"]
    dirty = a.rev is None and subprocess.run(changed).returncode
    code = f"code: {commit}" + (" + uncommitted changes in the working tree" if dirty else "")
    return (
        f"{code}\nN training + N test images of {SIDE}x{SIDE} px; {a.folds} folds, "
        f"{a.backbones} backbone(s); {os.cpu_count()} CPUs; limits {a.mem_limit:g} GiB "
        f"(RLIMIT_AS), {a.timeout:.0f} s a process; seconds: wall; RSS: peak, os.wait4's "
        "ru_maxrss of each stage process (stages of several runs: seconds summed, the largest RSS)"
    )


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def ints(text: str) -> list[int]:
    return [int(float(x)) for x in text.split(",")]


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=ints, default=[1000, 10000, 100000], help="N, comma-separated")
    ap.add_argument("--classes", type=ints, default=[10, 1000], help="C, comma-separated")
    ap.add_argument("--kinds", type=lambda s: s.split(","), default=["label", "probs"],
                    help="submission shapes: label, probs")  # fmt: skip
    ap.add_argument("--stages", type=lambda s: s.split(","), default=list(STAGES),
                    help=f"those reported (earlier ones run too): {', '.join(STAGES)}")  # fmt: skip
    ap.add_argument("--mem-limit", type=float, default=8.0, help="GiB of address space a process")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds a process")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--backbones", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rev", help="run the code of this commit (default: the working tree)")
    ap.add_argument("--work", type=Path, help="where the cases are written (default: /tmp)")
    ap.add_argument("--keep", action="store_true", help="keep each case in --work")
    ap.add_argument("--fake-train", choices=["teacher", "student"], help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.rev:  # one commit for every case, whatever lands meanwhile
        git = ["git", "-C", str(ROOT), "rev-parse", "--verify", f"{a.rev}^{{commit}}"]
        a.rev = subprocess.run(git, capture_output=True, text=True, check=True).stdout.strip()
    bad = [s for s in a.stages if s not in STAGES] + [k for k in a.kinds if k not in METRIC]
    if bad:
        ap.error(f"unknown stage or kind {bad}")
    return a


def main(argv: list[str] | None = None) -> None:
    a = parse(argv)
    if a.fake_train:  # the train stage's stand-in, in the project copy
        return fake_train(a.fake_train)
    cases = [Case(n, c, k) for c in a.classes for k in a.kinds for n in sorted(a.sizes)]
    if a.work:
        a.work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=a.work) as tmp:
        work = a.work if a.keep and a.work else Path(tmp)
        results = {case: run_case(case, work, a) for case in cases}
    print(header(a) + "\n\n" + table(results, a), flush=True)


if __name__ == "__main__":
    main()
