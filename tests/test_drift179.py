"""What the newest trainer stack changes under ftctl (task 179: transformers 5.25, accelerate 1.16 beside the pins).

transformers 5.25 installs `kernels`; with it, bitsandbytes' import (peft imports it in every LoRA/QLoRA run) asks
the Hub for an optional CPU kernel on CPUs with AVX512-BF16, and offline logs a line from every rank. These tests
run where that happens (the `kernels` package installed, such a CPU) and are skipped elsewhere (the pinned stack)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from tests.trainer_fixtures import REPO, subprocess_env


def _has_avx512_bf16() -> bool:
    try:
        return "avx512_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


# the logger's records at every level, after ftctl's quiet.install(): what is lowered arrives as DEBUG
IMPORT_BNB = """
import logging, sys
from ftctl import quiet
quiet.install()
seen = logging.getLogger("kernels._internals.hf_hub")
seen.setLevel(logging.DEBUG)
handler = logging.StreamHandler(sys.stdout)
handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
seen.addHandler(handler)
seen.propagate = False
import bitsandbytes
"""


@pytest.mark.skipif(
    importlib.util.find_spec("kernels") is None or not _has_avx512_bf16(),
    reason="bitsandbytes looks for its Hub kernel only with the `kernels` package and an AVX512-BF16 CPU",
)
def test_bitsandbytes_hub_kernel_offline_is_not_said_on_every_rank(monkeypatch):
    monkeypatch.delenv("FTCTL_VERBOSE", raising=False)
    env = subprocess_env(HF_HUB_OFFLINE="1")
    env.pop("FTCTL_VERBOSE", None)
    proc = subprocess.run(
        [sys.executable, "-c", IMPORT_BNB], env=env, cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = "Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes'"
    said = [x for x in proc.stdout.splitlines() if line in x]
    assert said and all(x.startswith("DEBUG: ") for x in said), proc.stdout + proc.stderr
