"""Every stage's code deps in dvc.yaml are exactly the pipeline modules its command imports.

A stage's `cmd` is `python -m pipeline STAGE ...`, which runs `pipeline/stages/STAGE.py`. The
modules it needs are the transitive closure of the `pipeline.*` imports of that file, read
statically from the source (imports inside functions included, since a stage imports torch-side
modules lazily). A module missing from `deps` means an edit to it leaves `dvc status` clean and
the outputs stale; a module listed but never imported reruns the stage (retrains a model) for an
edit that cannot change it. Both fail here, naming the stage and the module.

Not required anywhere (the CLI floor every command passes through, which shapes no output):
- `pipeline/__main__.py` and `pipeline/cli.py` parse the stage name and print errors. Their one
  lazy import that does shape outputs, `roles.skip_without_torch` (a skipped student's outputs),
  serves train and predict, which import `pipeline.roles` themselves, so the closure below holds
  it anyway.
- `pipeline/warm.py` is the warm-start client/server: it runs the same stage code in a forked
  process and never changes what is written (tests/test_warm.py holds the outputs equal).
- `pipeline/errors.py` defines the exception class that the CLI prints; the warm client imports
  it without pandas. Listing these in every stage would rerun the whole graph, every model
  retrained, for a change to an error message.
`pipeline/failures.py` (the one-line messages for a full disk, a missing file, a denied
permission) is imported by `cli.py` alone, so no stage's closure reaches it either.
Package `__init__.py` files count only when they hold code (today they are docstrings).
"""

from __future__ import annotations

import ast
import re
import textwrap
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

FLOOR = {"pipeline/__main__.py", "pipeline/cli.py", "pipeline/warm.py", "pipeline/errors.py"}
# stages that may depend on a whole folder of the package, and why
WHOLE_PACKAGE = {"export": "the package itself is copied into the Kaggle dataset it writes"}
# imports not followed for a stage, and why (none today: upload takes bundle_digest from
# pipeline/bundle.py, not from export, whose imports would make an edit to the ensemble submit
# an unchanged file to Kaggle again, a daily-limited submission)
CUT: dict[tuple[str, str], str] = {}
CMD = re.compile(r"python -m pipeline (\w+)")


def module_file(root: Path, name: str) -> str | None:
    """`pipeline.a.b` -> 'pipeline/a/b.py' (or its package's __init__.py); None outside."""
    if name != "pipeline" and not name.startswith("pipeline."):
        return None
    base = root.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.exists():
            return path.relative_to(root).as_posix()
    return None


def imported(root: Path, rel: str) -> set[str]:
    """The pipeline files that `rel` imports anywhere in its body (functions included)."""
    path = root / rel
    package = rel.removesuffix(".py").replace("/", ".")
    if not rel.endswith("__init__.py"):
        package = package.rpartition(".")[0]
    else:
        package = package.removesuffix(".__init__")
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), rel)):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the file's package, up level - 1
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names.append(base)
            names += [f"{base}.{a.name}" for a in node.names]  # `from pipeline import model`
    found = set()
    for name in names:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a, a.b and a.b.c
            f = module_file(root, ".".join(parts[:i]))
            if f:
                found.add(f)
    return found


def has_code(root: Path, rel: str) -> bool:
    body = ast.parse((root / rel).read_text()).body
    return any(not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)) for n in body)


def closure(root: Path, stage_module: str, cut: set[str] = frozenset()) -> set[str]:
    seen, todo = set(), [stage_module]
    while todo:
        rel = todo.pop()
        if rel in seen:
            continue
        seen.add(rel)
        todo += imported(root, rel) - seen - cut
    return {f for f in seen - FLOOR if not f.endswith("__init__.py") or has_code(root, f)}


def dep_paths(stage: dict) -> list[str]:
    """A stage's deps as paths (an entry may be a mapping `path: {options}`)."""
    return [d if isinstance(d, str) else next(iter(d)) for d in stage.get("deps", [])]


def problems(root: Path) -> list[str]:
    """One line per stage whose code deps differ from what its command imports."""
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    out = []
    for name, stage in stages.items():
        m = CMD.search(stage["cmd"])
        if not m:
            out.append(f"{name}: cmd is not `python -m pipeline STAGE`")
            continue
        cut = {module for (stage_name, module) in CUT if stage_name == name}
        needed = closure(root, f"pipeline/stages/{m.group(1)}.py", cut)
        deps = [d.rstrip("/") for d in dep_paths(stage) if d.startswith("pipeline")]
        folders = [d for d in deps if (root / d).is_dir()]
        if folders and name not in WHOLE_PACKAGE:
            out.append(f"{name}: depends on the folder {folders}: list its modules instead")
        covered = {f for f in needed if any(f.startswith(d + "/") for d in folders)}
        missing = sorted(needed - set(deps) - covered)
        extra = sorted(d for d in deps if d not in needed and d not in folders)
        if missing:
            out.append(f"{name}: imports but does not depend on {', '.join(missing)}")
        if extra:
            out.append(f"{name}: depends on but never imports {', '.join(extra)}")
    return out


def test_every_stage_depends_on_exactly_the_modules_it_imports():
    assert problems(ROOT) == []


def test_the_closure_follows_lazy_and_transitive_imports():
    needed = closure(ROOT, "pipeline/stages/predict.py")
    assert "pipeline/inference.py" in needed  # imported inside a function
    assert "pipeline/progress.py" in needed  # only through inference.py
    assert "pipeline/files.py" in needed  # through everything
    assert not needed & FLOOR


SYNTHETIC_STAGE = """
    from pipeline import helper
    from pipeline.files import write_json


    def main(argv):
        from .lazy import go  # relative and inside a function

        go()
"""


@pytest.fixture
def synthetic(tmp_path: Path) -> Path:
    """A tiny package with one stage `job` whose deps dvc.yaml lists right."""
    stages = tmp_path / "pipeline" / "stages"
    stages.mkdir(parents=True)
    (tmp_path / "pipeline" / "__init__.py").write_text('"""docstring only."""\n')
    (stages / "__init__.py").write_text("")
    (stages / "job.py").write_text(textwrap.dedent(SYNTHETIC_STAGE))
    (stages / "lazy.py").write_text("from pipeline import deep\n\n\ndef go():\n    pass\n")
    for mod in ("helper", "deep", "unused"):
        (tmp_path / "pipeline" / f"{mod}.py").write_text("")
    (tmp_path / "pipeline" / "files.py").write_text("from pipeline.errors import PipelineError\n")
    (tmp_path / "pipeline" / "errors.py").write_text("class PipelineError(Exception): ...\n")
    deps = ["data/x", "pipeline/deep.py", "pipeline/files.py", "pipeline/helper.py",
            "pipeline/stages/job.py", "pipeline/stages/lazy.py"]  # fmt: skip
    write_dvc_yaml(tmp_path, deps)
    return tmp_path


def write_dvc_yaml(root: Path, deps: list) -> None:
    stage = {"matrix": {"fold": [0, 1]}, "cmd": "python -m pipeline job --fold ${item.fold}",
             "deps": ["folds/${item.fold}", *deps]}  # fmt: skip
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"job": stage}}))


def test_a_synthetic_stage_with_its_deps_right_passes(synthetic: Path):
    assert problems(synthetic) == []


def test_a_module_missing_from_deps_is_named(synthetic: Path):
    deps = dep_paths(yaml.safe_load((synthetic / "dvc.yaml").read_text())["stages"]["job"])
    write_dvc_yaml(synthetic, [d for d in deps[1:] if d != "pipeline/deep.py"])
    assert problems(synthetic) == ["job: imports but does not depend on pipeline/deep.py"]


def test_a_module_listed_but_never_imported_is_named(synthetic: Path):
    deps = dep_paths(yaml.safe_load((synthetic / "dvc.yaml").read_text())["stages"]["job"])
    write_dvc_yaml(synthetic, [*deps[1:], {"pipeline/unused.py": {}}])
    assert problems(synthetic) == ["job: depends on but never imports pipeline/unused.py"]


def test_a_whole_package_dep_is_refused_outside_the_exceptions(synthetic: Path):
    write_dvc_yaml(synthetic, ["pipeline"])
    assert problems(synthetic) == [
        "job: depends on the folder ['pipeline']: list its modules instead"
    ]  # fmt: skip


def test_an_init_with_code_counts(synthetic: Path):
    (synthetic / "pipeline" / "__init__.py").write_text("X = 1\n")
    assert problems(synthetic) == [
        "job: imports but does not depend on pipeline/__init__.py"
    ]  # fmt: skip


def shaping_keys(student: bool) -> set[str]:
    """dvc.yaml's params of a (student's) train stage, as pipeline/shaping.py derives them: a
    whole section where every key shapes the weights, else its keys one by one."""
    from pipeline.params import Params
    from pipeline.shaping import ALSO, SECTIONS, STUDENT_KEYS, excluded

    out = set(ALSO)
    for s in SECTIONS:
        fields, ex = set(Params.model_fields[s].annotation.model_fields), excluded(s, student)
        out |= {f"{s}.{f}" for f in fields - ex} if ex else {s}
    return out | ({f"pseudo.{k}" for k in STUDENT_KEYS | {"enabled"}} if student else set())


def test_dvc_yaml_params_are_what_shaping_says_shapes_each_stage():
    from pipeline.shaping import SELECTION

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert set(stages["train"]["params"]) == shaping_keys(student=False)
    for name in ("train_student", "train_student_2", "train_student_3"):
        assert set(stages[name]["params"]) == shaping_keys(student=True), name
    selection = {f"pseudo.{k}" for k in SELECTION} | {"train.backbones", "base.folds"}
    assert set(stages["pseudolabel"]["params"]) == selection | {"competition.metric"}
