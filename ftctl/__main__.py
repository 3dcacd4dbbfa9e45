"""`python -m ftctl` (where the venv's bin/ is not on PATH), and the console script: the CLI, with a Ctrl-C while it
loads (a second on a cluster's network filesystem) said as one during a command is, not as an import's traceback."""

from __future__ import annotations

import sys


def run() -> None:
    try:
        from ftctl.cli import main
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    main(prog_name="ftctl")


if __name__ == "__main__":
    run()
