"""`python -m pipeline STAGE [options]`: the command line (pipeline/cli.py), a stage handed to
the warm server first when PIPELINE_WARM=1 (pipeline/warm.py)."""

from __future__ import annotations

import sys

from pipeline import cli, warm


def handoff(argv: list[str]) -> int | None:
    """The stage's exit code when the warm server ran it; None: run it here."""
    return warm.run(argv) if warm.wanted(argv) else None


def main(argv: list[str]) -> int:
    return cli.main(argv, handoff)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
