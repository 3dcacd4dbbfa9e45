#!/usr/bin/env bash
# The README's second command: install, then run the whole test suite (a real Slurm cluster and an S3
# server are started on this machine by the tests themselves).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export FTCTL_SKY_PYTHON="$PWD/.venv-sky/bin/python"
# lint and format first: a second is cheaper than a red suite
.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/python -m pytest -q -ra --durations=25 "$@"
