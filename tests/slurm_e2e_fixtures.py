"""Driving ftctl's command line against the real Slurm test cluster (tests/slurm_fixtures.py).

Every call is ``ftctl ...`` in a subprocess with the cluster's environment (SLURM_CONF, the venv's
bin first on PATH, so jobs find this venv's torchrun without a --setup line) and FTCTL_HOME in a
temporary directory, exactly as a user on a login node would run it.

    e2e (module fixture) -> E2E: .ftctl(*args), .launch(*args) -> job id, .status_line(job),
                                 .wait_finished(job), .scratch (a directory every node sees)
    run_args(model, output, **overrides) -> the RUN FLAGS of a small 2-node CPU lora run
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.slurm_fixtures import SlurmCluster

FTCTL = str(Path(sys.executable).parent / "ftctl")
FINISHED = (
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "BOOT_FAIL",
    "DEADLINE",
)
# the small run every end-to-end test trains (one place, so the preempted run and the reference agree)
TRAIN_OVERRIDES = {
    "max_steps": 16,
    "save_steps": 4,
    "global_batch_size": 4,
    "model_max_length": 128,
    "logging_steps": 1,
    "seed": 7,
}


def run_args(model, output, nodes: int = 2, data="builtin:demo", **overrides) -> list[str]:
    """RUN FLAGS of a CPU lora run of the tiny model (on the demo data), on ``nodes`` nodes."""
    args = [
        "--backend",
        "slurm",
        "--method",
        "lora",
        "--gpus",
        "cpu",
        "--nodes",
        str(nodes),
        "--partition",
        "debug",
        "--model",
        str(model),
        "--data",
        str(data),
        "--output",
        str(output),
    ]
    for key, value in {**TRAIN_OVERRIDES, **overrides}.items():
        args += ["-o", f"{key}={value}"]
    return args


@dataclass
class E2E:
    cluster: SlurmCluster
    env: dict[str, str]
    scratch: Path  # this module's directory on the nodes' shared filesystem

    def ftctl(
        self, *args: str, check: bool = True, timeout: float = 60, env=None, cwd=None
    ) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [FTCTL, *args],
            env=env or self.env,
            cwd=cwd or self.scratch,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"ftctl {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def launch(self, *args: str, cwd=None) -> str:
        """``ftctl launch ...``; the job id it printed."""
        out = self.ftctl("launch", *args, cwd=cwd).stdout
        found = re.search(r"^submitted Slurm job (\d+)$", out, re.M)
        assert found, out
        return found.group(1)

    def status_line(self, job: str) -> str:
        """The first line of ``ftctl status JOB``: the job's state (a second one says its last logged step)."""
        return (self.ftctl("status", job).stdout.strip().splitlines() or [""])[0]

    def wait_status(self, job: str, words, timeout: float, seen: list | None = None) -> str:
        """Poll ``ftctl status JOB`` until its line holds one of ``words``; every line seen is
        appended to ``seen``."""
        words = (words,) if isinstance(words, str) else tuple(words)
        deadline = time.monotonic() + timeout
        line = ""
        while time.monotonic() < deadline:
            line = self.status_line(job)
            if seen is not None and (not seen or seen[-1] != line):
                seen.append(line)
            if any(f" {w}" in line for w in words):
                return line
            time.sleep(0.5)
        raise AssertionError(
            f"job {job}: still '{line}' after {timeout} s, wanted {words}; cluster logs in {self.cluster.base / 'log'}"
        )

    def wait_finished(self, job: str, timeout: float, seen: list | None = None) -> str:
        return self.wait_status(job, FINISHED, timeout, seen)

    def scancel(self, job: str) -> None:
        self.cluster.run("scancel", job, check=False)


@pytest.fixture(scope="module")
def e2e(slurm_cluster, tmp_path_factory) -> E2E:  # noqa: F811
    home = tmp_path_factory.mktemp("ftctl-home")
    scratch = Path(tempfile.mkdtemp(prefix="e2e-", dir=slurm_cluster.scratch))
    env = {**slurm_cluster.env, "FTCTL_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    env.pop("FTCTL_DEBUG", None)  # errors must reach the user as one line, not a traceback
    return E2E(cluster=slurm_cluster, env=env, scratch=scratch)


# ------------------------------------------------------------------------------------ reading runs
def metrics(run_dir: Path) -> list[dict]:
    """The per-step records of metrics.jsonl (the end-of-training summaries left out)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    return [r for r in rows if "loss" in r]


def processes_mentioning(text: str) -> list[int]:
    """Pids of the processes whose command line holds ``text`` (the nodes' namespaces share the
    host's pid namespace, so the jobs' processes are visible here)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            pids.append(int(proc.name))
    return pids


def wait_until(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{what}: not after {timeout} s")
