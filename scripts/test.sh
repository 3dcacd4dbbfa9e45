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
# DeepSpeed's CPU Adam (the ZeRO-Offload tests' optimizer) is compiled on its first use: ~95 s of g++ CPU time, which
# the first offload test waited for on both cores. It is built here instead, niced, one compiler at a time, while the
# first tests run (most train on one thread), into the directory those tests load it from (tests/test_distributed.py
# DS_ENV); a test that gets there first waits on torch's build lock, then loads it. Its output: .venv/cpu-adam.log.
EXT="$(.venv/bin/python -c 'import tempfile; print(tempfile.gettempdir())')/ftctl-torch-extensions"
if [ ! -e "$EXT/cpu_adam/cpu_adam.so" ]; then
  TORCH_EXTENSIONS_DIR="$EXT" MAX_JOBS=1 nohup nice .venv/bin/python -c \
    'from deepspeed.ops.op_builder import CPUAdamBuilder; CPUAdamBuilder().load()' >.venv/cpu-adam.log 2>&1 &
fi
exec .venv/bin/python -m pytest -q -ra --durations=25 "$@"
