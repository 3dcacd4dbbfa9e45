#!/usr/bin/env bash
# Install ftctl for this machine into .venv (trainer + tests) and .venv-sky (SkyPilot, whose click
# pin conflicts with transformers). Idempotent: a second run only checks. Quiet: pip's output goes to
# .venv/setup.log, shown (its end) only when a step fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LOG=.venv/setup.log
sha() { if command -v sha256sum >/dev/null 2>&1; then sha256sum "$@"; else shasum -a 256 "$@"; fi; }  # macOS: shasum
stamp() { sha pyproject.toml constraints.txt | sha | cut -c1-16; }
quietly() {
  if ! "$@" >>"$LOG" 2>&1; then
    echo "setup: failed: $*" >&2
    tail -n 25 "$LOG" >&2
    echo "setup: the whole output is in $LOG" >&2
    exit 1
  fi
}
new_venv() {  # "$PY" -m venv DIR, where $PY is a Python ftctl runs on (pyproject.toml: >=3.10)
  if ! command -v "$PY" >/dev/null 2>&1; then
    echo "setup: $PY is not found: install Python 3.10 or newer, or name one with PYTHON=python3.11" >&2
    exit 1
  fi
  if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' >/dev/null 2>&1; then
    # macOS's python3 (/usr/bin, Xcode's) is 3.9: pip then failed on torch's pin ("no matching distribution")
    echo "setup: $PY ($(command -v "$PY" || echo "not found")) is Python $("$PY" -c 'import platform; print(platform.python_version())' 2>/dev/null || echo "?"); ftctl needs 3.10 or newer: run it again with PYTHON=python3.11 (brew install python@3.11, or uv python install 3.11)" >&2
    exit 1
  fi
  quietly "$PY" -m venv "$1"
}
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore PIP_NO_WARN_SCRIPT_LOCATION=1
if [ ! -x .venv/bin/python ] || [ "$(cat .venv/.ftctl-stamp 2>/dev/null)" != "$(stamp)" ]; then
  echo "setup: installing the trainer environment into .venv (about 2 minutes; log: $LOG)"
  mkdir -p .venv && : >"$LOG"
  [ -x .venv/bin/python ] || new_venv .venv
  quietly .venv/bin/pip install -q --upgrade pip
  # torch first, pinned: this machine has a local CPU wheel; an unpinned torch pulls a multi-GB CUDA build.
  quietly .venv/bin/pip install -q "torch==$(grep '^torch==' constraints.txt | cut -d= -f3)"
  DS_BUILD_OPS=0 quietly .venv/bin/pip install -q -c constraints.txt -e ".[train,dev]"
  stamp > .venv/.ftctl-stamp
fi
if [ ! -x .venv-sky/bin/python ] || [ "$(cat .venv-sky/.ftctl-stamp 2>/dev/null)" != "$(stamp)" ]; then
  echo "setup: installing SkyPilot into .venv-sky (log: $LOG)"
  [ -x .venv-sky/bin/python ] || new_venv .venv-sky
  quietly .venv-sky/bin/pip install -q --upgrade pip
  quietly .venv-sky/bin/pip install -q -e ".[sky]"
  stamp > .venv-sky/.ftctl-stamp
fi
# Azurite, Azure Blob's emulator (tests/test_azure.py runs against it), into .azurite/ at this version: its newest
# whose node is v20's (3.36 wants node 21). Only for the tests (scripts/test.sh sets FTCTL_SETUP_TESTS=1): the demo
# and a user's install skip it (186 MB, ~45 s). Needs node and npm; without them the rest is set up, and the Azure
# tests fail, saying how to install them.
AZURITE=3.35.0
if [ "${FTCTL_SETUP_TESTS:-0}" != 1 ]; then
  :
elif ! command -v npm >/dev/null 2>&1; then
  echo "setup: no npm here: tests/test_azure.py needs Azurite; install node and npm (apt-get install nodejs npm), then run scripts/test.sh again" >&2
elif [ "$(cat .azurite/.ftctl-version 2>/dev/null)" != "$AZURITE" ] || [ ! -x .azurite/node_modules/.bin/azurite-blob ]; then
  echo "setup: installing Azurite $AZURITE into .azurite (the Azure tests' blob store; log: $LOG)"
  mkdir -p .azurite
  quietly npm install --prefix .azurite --save-exact --no-audit --no-fund --loglevel=error "azurite@$AZURITE"
  echo "$AZURITE" > .azurite/.ftctl-version
fi
# A real container engine for tests/test_docker_real.py (the docker backend against podman, docker's CLI without a
# daemon) and its image: a Debian root file system without Python (the tests mount this checkout's), built with
# mmdebstrap into .podman/rootfs.tar (~56 MB, ~15 s from Debian's mirror). Only for the tests (FTCTL_SETUP_TESTS=1),
# as root (podman runs rootful there), on Debian: installs podman, runc and mmdebstrap from apt where they are missing
# (~30 MB). Where that fails the rest is set up, and those tests fail, saying what is missing.
PODMAN_IMAGE=1  # the rootfs recipe below: a change rebuilds it
podman_for_tests() {
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "setup: not root with apt-get here: tests/test_docker_real.py needs podman, runc and mmdebstrap (apt-get install podman runc mmdebstrap, as root), then run scripts/test.sh again" >&2
    return 0
  fi
  if ! command -v podman >/dev/null 2>&1 || ! command -v runc >/dev/null 2>&1 || ! command -v mmdebstrap >/dev/null 2>&1; then
    echo "setup: installing podman, runc and mmdebstrap from apt (tests/test_docker_real.py's container engine; log: $LOG)"
    quietly apt-get update -q
    DEBIAN_FRONTEND=noninteractive quietly apt-get install -y -q podman runc mmdebstrap
  fi
  if [ "$(cat .podman/.ftctl-version 2>/dev/null)" != "$PODMAN_IMAGE" ] || [ ! -f .podman/rootfs.tar ]; then
    local release
    release="$(. /etc/os-release && echo "$VERSION_CODENAME")"
    echo "setup: building the docker tests' image into .podman (Debian $release, ~56 MB; log: $LOG)"
    rm -rf .podman && mkdir -p .podman
    # the trainer's python (this machine's) needs the libraries of this release: its libc, libstdc++, ssl, sqlite ...
    quietly mmdebstrap --mode=root --variant=extract \
      --include=base-files,base-passwd,dash,coreutils,libc6,libstdc++6,libgcc-s1,libssl3,libsqlite3-0,libffi8,libbz2-1.0,liblzma5,zlib1g,libuuid1,libexpat1 \
      "$release" .podman/rootfs http://deb.debian.org/debian
    # (errexit is off here: the subshell is tested below)
    cp .podman/rootfs/usr/share/base-passwd/passwd.master .podman/rootfs/etc/passwd &&
      cp .podman/rootfs/usr/share/base-passwd/group.master .podman/rootfs/etc/group &&
      tar -C .podman/rootfs -cf .podman/rootfs.tar.tmp . && mv .podman/rootfs.tar.tmp .podman/rootfs.tar &&
      rm -rf .podman/rootfs && echo "$PODMAN_IMAGE" >.podman/.ftctl-version
  fi
}
if [ "${FTCTL_SETUP_TESTS:-0}" = 1 ]; then
  (podman_for_tests) || echo "setup: the docker tests' engine is not set up (above): tests/test_docker_real.py fails until it is" >&2
fi
