"""Review 61's findings (/work/notes/review-61.md), each a test that failed before its fix."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ftctl.errors import FtctlError

REPO = Path(__file__).resolve().parent.parent

NOHUP_TORCHRUN = """
import os, signal
signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as `nohup` leaves it
from torch.distributed.elastic.multiprocessing.api import SignalException
from ftctl.envvars import STOP_ENV
from ftctl.trainer import torchrun
torchrun.stop_through_file(SignalException)
os.kill(os.getpid(), signal.SIGHUP)  # the terminal closes while torchrun waits in its rendezvous
print(signal.getsignal(signal.SIGHUP) is signal.SIG_IGN, os.path.exists(os.environ[STOP_ENV]))
"""


def test_a_nohup_torchrun_ignores_sighup_before_its_workers_start():
    """torchrun.stop_through_file installs on_signal for SIGHUP even where nohup ignores it: until torch's
    PContext.start (the rendezvous: minutes on a multi-node job) a SIGHUP touched the stop file."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("FTCTL_STOP_FILE", None)
    out = subprocess.run([sys.executable, "-c", NOHUP_TORCHRUN], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "False"], out.stdout + out.stderr
    assert "SIGHUP" not in out.stderr


def test_the_cpu_refusal_says_its_pflop_without_an_exponent():
    from ftctl.plan import make_plan
    from ftctl.spec import RunSpec

    said = {}
    for size in ("405b",):
        spec = RunSpec(model_name_or_path="x/y", model_params=size, gpus="cpu", method="lora")
        with pytest.raises(FtctlError) as e:
            make_plan(spec)
        said[size] = str(e.value)
    assert "e+" not in said["405b"], said["405b"]  # was "~1.1e+02 PFLOP"
