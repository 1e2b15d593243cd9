"""The package's floors hold: entry points, stages, shared pieces. A stage never imports another
stage, a shared piece never imports a stage, no import circle, and no module or function longer
than a reader can hold (README "Code layout")."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

PACKAGE = ROOT / "pipeline"
# the command line, the warm server, init and the Kaggle notebook's script run stages themselves
ENTRY = {"pipeline.__main__", "pipeline.cli", "pipeline.warm", "pipeline.init", "pipeline.kernel"}
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 450, 60


def modules() -> dict[str, Path]:
    out = {}
    for f in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(f.relative_to(ROOT).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = f
    return out


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The package modules `path` imports anywhere (functions included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                full = f"{node.module}.{a.name}"
                found.add(full if full in known else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {m for m in found if m in known and m != "pipeline"}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(path, known) - {name} for name, path in known.items()}


def is_stage(name: str) -> bool:
    return name.startswith("pipeline.stages.")


def cycle(g: dict[str, set[str]]) -> list[str] | None:
    """One import circle, or None (depth-first search with the path kept)."""
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(v: str, path: list[str]) -> list[str] | None:
        state[v] = 1
        for w in sorted(g[v]):
            if state.get(w) == 1:
                return path[path.index(w) :] + [w] if w in path else [v, w]
            if w not in state and (found := visit(w, path + [w])):
                return found
        state[v] = 2
        return None

    for v in sorted(g):
        if v not in state and (found := visit(v, [v])):
            return found
    return None


def test_no_import_circle():
    assert cycle(graph()) is None


def test_the_cycle_finder_finds_one():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None


def test_stages_import_no_stage_and_shared_pieces_import_none():
    bad = [
        f"{name} imports {dep}"
        for name, deps in graph().items()
        if name not in ENTRY
        for dep in sorted(deps)
        if is_stage(dep)
    ]
    assert bad == []


def test_no_module_or_function_too_long_to_read():
    long = []
    for name, path in modules().items():
        text = path.read_text()
        if len(text.splitlines()) > MAX_MODULE_LINES:
            long.append(f"{name}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                first = node.decorator_list[0].lineno if node.decorator_list else node.lineno
                if node.end_lineno - first + 1 > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {node.end_lineno - first + 1} lines")
    assert long == []


def unexplained_imports(text: str) -> list[int]:
    """Lines of imports inside functions whose block (imports in a row) carries no comment on
    one of its lines or the line above: why it is not at the top of the module."""
    lines, out = text.splitlines(), []
    for fn in ast.walk(ast.parse(text)):
        if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in fn.body if isinstance(fn.body, list) else []:
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            i = node.lineno - 1
            while i > 0 and (
                not lines[i - 1].strip() or lines[i - 1].lstrip().startswith(("import ", "from "))
            ):
                i -= 1  # up to the block's first line (blank lines inside it allowed)
            j = node.end_lineno - 1
            block = lines[max(i - 1, 0) : j + 1]
            said = "#" in lines[i - 1] if i > 0 else False
            if not said and not any("#" in line for line in block[1:]):
                out.append(node.lineno)
    return out


def test_imports_inside_functions_say_why():
    bad = [
        f"{name}:{line}"
        for name, path in modules().items()
        for line in unexplained_imports(path.read_text())
    ]
    assert bad == []


def test_the_import_rule_reads_a_comment_on_the_block():
    text = "def f():\n    import os  # here: light\n    import sys\n\n\ndef g():\n    import re\n"
    assert unexplained_imports(text) == [7]
