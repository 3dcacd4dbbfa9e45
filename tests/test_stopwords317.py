"""Helper 317's patch (/work/notes/task-317-extra.patch): the stop's name in words reaches `ftctl status` (progress)
and ftctl's torchrun names the signal it turned into the workers' stop file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_a_stop_named_in_words_reads_as_the_trainers_stop():
    """progress.TRAINER_ENDED took the stop's name for one word: a Slurm job's "stopped on stop file at step 5, but
    its checkpoint-5 did not reach" the store read as nothing (its trainer not ended), and the launcher's "SIGTERM to
    ftctl launch" the same."""
    from ftctl.progress import _trainer_ended

    cut = "ftctl: error: stopped on stop file at step 5, but its checkpoint-5 did not reach s3://b/r (x); it is kept"
    assert _trainer_ended([cut]) == "its trainer stopped at step 5 on stop file (not committed to the store)"
    said = (
        "W ftctl.trainer.run: stopped on SIGTERM to ftctl launch after saving step 7; resume with the same output dir"
    )
    assert _trainer_ended([said]) == "its trainer stopped at step 7 on SIGTERM to ftctl launch"


SIGNALLED_TORCHRUN = """
import os, signal, sys
from torch.distributed.elastic.multiprocessing.api import SignalException
from ftctl.envvars import STOP_ENV
from ftctl.trainer import torchrun
torchrun.stop_through_file(SignalException)
os.kill(os.getpid(), signal.SIGTERM)
print(open(os.environ[STOP_ENV]).read().strip())
"""


def test_ftctl_torchrun_writes_the_signal_into_the_stop_file_it_makes(tmp_path):
    """ftctl's torchrun, signalled (a docker stop, a SkyPilot cancel), touched the workers' stop file: their lines
    said "stopping at step N (stop file)". It now writes the signal's name, where no writer said another reason
    first (the local launcher's "SIGTERM to ftctl launch" stands)."""
    from ftctl.envvars import STOP_ENV

    stop = tmp_path / "stop"
    env = {**os.environ, "PYTHONPATH": str(REPO), STOP_ENV: str(stop)}
    run = [sys.executable, "-c", SIGNALLED_TORCHRUN]
    out = subprocess.run(run, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "SIGTERM", out.stdout + out.stderr
    stop.write_text("SIGTERM to ftctl launch\n")
    out = subprocess.run(run, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "SIGTERM to ftctl launch", out.stdout + out.stderr
