#!/usr/bin/env bash
# The README's first command: install, then fine-tune SmolLM2-135M-Instruct on the bundled dataset.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/ftctl demo "$@"
