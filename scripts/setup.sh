#!/usr/bin/env bash
# Install ftctl for this machine into .venv (trainer + tests) and .venv-sky (SkyPilot, whose click
# pin conflicts with transformers). Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp() { sha256sum pyproject.toml constraints.txt | sha256sum | cut -c1-16; }
if [ ! -x .venv/bin/python ] || [ "$(cat .venv/.ftctl-stamp 2>/dev/null)" != "$(stamp)" ]; then
  echo "setup: installing the trainer environment into .venv (about 2 minutes)"
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  # torch first, pinned: this machine has a local CPU wheel; an unpinned torch pulls a multi-GB CUDA build.
  .venv/bin/pip install -q "torch==$(grep '^torch==' constraints.txt | cut -d= -f3)"
  DS_BUILD_OPS=0 .venv/bin/pip install -q -c constraints.txt -e ".[train,dev]"
  stamp > .venv/.ftctl-stamp
fi
if [ ! -x .venv-sky/bin/python ] || [ "$(cat .venv-sky/.ftctl-stamp 2>/dev/null)" != "$(stamp)" ]; then
  echo "setup: installing SkyPilot into .venv-sky"
  [ -x .venv-sky/bin/python ] || "$PY" -m venv .venv-sky
  .venv-sky/bin/pip install -q --upgrade pip
  .venv-sky/bin/pip install -q -e ".[sky]"
  stamp > .venv-sky/.ftctl-stamp
fi
