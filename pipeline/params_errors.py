"""What goes wrong reading params.yaml, said in one line each: a missing or unparsable file
(`read_yaml`), and pydantic's validation errors as the params keys they name (`error_message`).

pipeline/params.py's `load_params` and `parse_params` call these; try one by hand:
    python -c "from pipeline.params import parse_params; parse_params({'base': {}})"
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError

from pipeline.files import PipelineError


def read_yaml(path: Path) -> object:
    """The file's content as YAML loads it (any type; parse_params checks it)."""
    if not path.exists():
        raise PipelineError(f"{path}: not found (run from the project folder)")
    with open(path) as f:
        try:
            return yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise PipelineError(f"{path}: not valid YAML: {e}") from None


def _where(loc: tuple, root: type[BaseModel]) -> str:
    """The params key of an error location, without pydantic's union-branch names."""
    parts, model = [], root
    for item in loc:
        fields = getattr(model, "model_fields", {})
        if isinstance(item, str) and item in fields:
            parts.append(item)
            model = fields[item].annotation
        elif isinstance(item, int) and parts:
            parts.append(str(item))  # position in a list
        else:
            if fields and isinstance(item, str):
                parts.append(item)  # a key the section does not have
            break
    return ".".join(parts)


def error_message(e: ValidationError, root: type[BaseModel], source: str) -> str:
    """One line per error of validating `source` as `root` (params.Params), naming its key."""
    lines = []
    for err in e.errors():
        key = _where(err["loc"], root)
        if not key:  # a rule across sections
            lines.append(f"{source}: {err['msg'].removeprefix('Value error, ')}")
        elif err["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key '{key}'")
        elif err["type"] == "missing":
            lines.append(f"{source}: missing key '{key}'")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"{source}: key '{key}': {msg} (got {err['input']!r})")
    # a union (e.g. a number or "auto") fails once per branch: say each only once
    return "\n".join(dict.fromkeys(lines))
