#!/usr/bin/env bash
# The README's second command: install, then run the whole test suite (a real Slurm cluster and an S3
# server are started on this machine by the tests themselves).
set -euo pipefail
cd "$(dirname "$0")/.."
FTCTL_SETUP_TESTS=1 bash scripts/setup.sh
export FTCTL_SKY_PYTHON="$PWD/.venv-sky/bin/python"
# Python caches what it compiles (ftctl's modules, and the tests' as pytest rewrites their asserts) in __pycache__/
# (git ignores it): an environment that exports PYTHONDONTWRITEBYTECODE (this project's CI does) had every python the
# suite starts (~one per CLI call, trainer, rank) compile ftctl's CLI and backend modules again, ~0.25 s each, and each
# worker the tests' modules: 180 s -> 163 s for tests/test_cli.py, test_docs_commands.py, test_local_backend.py and
# test_explore30.py in one process.
unset PYTHONDONTWRITEBYTECODE
# lint and format first: a second is cheaper than a red suite
.venv/bin/ruff check .
.venv/bin/ruff format --check .
# DeepSpeed's CPU Adam (the ZeRO-Offload tests' optimizer) is compiled on its first use: ~95 s of g++ CPU time, which
# the first offload test waited for, inside its 300 s limit. It is built here instead, one compiler at a time, while
# the first tests run, into the directory those tests load it from (tests/test_distributed.py DS_ENV), through the
# trainer's own loader (ftctl/trainer/op_build.py): it holds an flock beside torch's build lock, so a test that gets
# there first waits on it ("waiting for <host>'s build of cpu_adam"), then loads it; and it removes a torch lock file
# that a killed build left there (an interrupted run of this script left one, and every offload test waited on it
# until its limit). Always asked: a build there from another checkout (another .venv path: other include paths) is
# compiled again by ninja, an up-to-date one costs a few seconds. Not niced: beside two busy test workers a niced g++
# got so little CPU that the first offload test, reached ~4 min in, still waited past its limit. The venv's bin first on
# PATH, as the tests have it (tests/conftest.py): its ninja (1.13, pip's) and /usr/bin/ninja (1.11) do not read each
# other's build log, and a build by the other one was compiled again in full by the first offload test (165 s).
# Its output: .venv/cpu-adam.log.
EXT="$(.venv/bin/python -c 'import tempfile; print(tempfile.gettempdir())')/ftctl-torch-extensions"
PATH="$PWD/.venv/bin:$PATH" TORCH_EXTENSIONS_DIR="$EXT" MAX_JOBS=1 nohup .venv/bin/python -m ftctl.trainer.op_build \
  cpu_adam >.venv/cpu-adam.log 2>&1 &
# Two pytest-xdist workers, one a core: most tests wait on subprocesses (Slurm, SkyPilot, torchrun), and one process
# kept ~0.85 of the 2 cores busy. Whatever exists once per machine (the Slurm test cluster, SkyPilot's infra on it,
# the docker stand-in) is used by one worker only: tests/conftest.py puts those tests in one xdist group, which
# --dist loadgroup runs on one worker from the start (the largest group is handed out first) while the other worker
# takes the rest. `bash scripts/test.sh -n 0 ...` runs in one process, as before.
exec .venv/bin/python -m pytest -q -ra --durations=25 -n 2 --dist loadgroup "$@"
