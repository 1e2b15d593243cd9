"""params.yaml edited in place: a value replaced on its own line, every comment, blank line and
key order kept (a YAML dump would drop the comments that document each key).

    set_values(text, {"competition.metric": "log_loss", "train.backbones": ["resnet18"]})

Only the two levels params.yaml has (`section:` then `  key: value`) are edited, and only keys
that already exist: a new key would be a param no stage reads.
"""

from __future__ import annotations

import re

import yaml

from pipeline.errors import PipelineError

SECTION = re.compile(r"^([A-Za-z_]\w*):(\s*(#.*)?)$")
KEY = re.compile(r"^(\s+)([A-Za-z_]\w*):( *)(.*?)(\s+#.*)?$")


def flow(value: object) -> str:
    """One value as a flow-style YAML scalar or sequence (`[a, b]`, `null`, `0.875`)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def key_lines(lines: list[str]) -> dict[str, int]:
    """ "section.key" -> its line number, for every value line directly under a section."""
    where, section = {}, None
    for i, line in enumerate(lines):
        head = SECTION.match(line)
        if head:
            section = head.group(1)
            continue
        key = KEY.match(line)
        if key and section is not None and len(key.group(1)) == 2:
            where[f"{section}.{key.group(2)}"] = i
    return where


def replaced(line: str, value: object) -> str:
    """The line with its value replaced; its comment kept at the same column where it fits."""
    indent, name, _, old, comment = KEY.match(line).groups()
    start = f"{indent}{name}: {flow(value)}"
    if not comment:
        return start
    column = len(line) - len(comment.lstrip())  # the column of its `#`
    return start + " " * max(column - len(start), 1) + comment.lstrip()


def span(lines: list[str], i: int) -> int:
    """Lines the value of key line i takes: 1, or more for a block value below the key (`- a`
    items at its indentation or deeper, or a mapping indented deeper)."""
    indent, _, _, value, _ = KEY.match(lines[i]).groups()
    if value:  # a value on the key's own line: what follows (a comment's continuation) stays
        return 1
    indent, n = len(indent), 1
    for line in lines[i + 1 :]:
        stripped = line.lstrip()
        depth = len(line) - len(stripped)
        if not stripped or not (depth > indent or (depth == indent and stripped.startswith("- "))):
            break
        n += 1
    return n


def set_values(text: str, values: dict[str, object]) -> str:
    """`text` (params.yaml) with each "section.key" set to its value; the rest byte for byte."""
    lines = text.split("\n")
    where = key_lines(lines)
    unknown = [k for k in values if k not in where]
    if unknown:
        raise PipelineError(f"params.yaml: no key {unknown[:3]} to set")
    for key in sorted(values, key=where.get, reverse=True):  # later lines first: spans shift
        i = where[key]
        lines[i : i + span(lines, i)] = [replaced(lines[i], values[key])]
    out = "\n".join(lines)
    got = yaml.safe_load(out)
    for key, value in values.items():  # what was written reads back as meant
        section, name = key.split(".")
        if got[section][name] != value:
            raise PipelineError(f"params.yaml: {key} would read back as {got[section][name]!r}")
    return out
