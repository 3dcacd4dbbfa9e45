"""A real, throw-away Slurm cluster for the tests: fixtures ``slurm_cluster`` and ``slurm``.

``slurm_cluster`` (session scope) starts tests/slurm/start-cluster.sh: munged + slurmctld on this
machine and three slurmd nodes, each in its own network namespace on a private bridge with no
route out (node1 and node2 in partition ``debug``, CPU only; node3 in partition ``gpu`` with two
stand-in GPUs of type ``tiny``). It is always stopped at the end of the session, also when tests
fail or are interrupted (Ctrl-C, SIGTERM).

Each test session takes one of ``SLOTS`` slots by an exclusive lock on /tmp/ftctl-slurm-K.lock;
a slot has its own directory, subnet, bridge, namespace names and controller port, so sessions
running at the same time (two engineers, two pytest runs) do not touch each other's cluster.
Whatever is found in a slot whose lock we now hold was left by a session that died: the start
script stops it first.

``slurm`` (function scope) is the same cluster with SLURM_CONF (and PATH, venv first) set in
os.environ for the test, so code that calls Slurm's commands with the process environment
(ftctl.slurm.scheduler) finds it. Jobs run with the environment of the sbatch that submitted them
(Slurm's default --export=ALL): SLURM_CONF reaches them, so `scontrol requeue` / `scontrol show
hostnames` work inside jobs, and `python` / `torchrun` are this venv's (ftctl is installed in it
editable). The nodes see the host's filesystem, so any directory (tmp_path, ``scratch``) is shared.

``SlurmCluster.new_partition(name, DefMemPerCPU=...)`` adds a partition of the CPU nodes with slurm.conf settings of
the test's own for a ``with`` block (`scontrol create`, ~10 ms, then deleted): debug and gpu stay as every test sees
them.

The cluster schedules every 2 s and a requeued job starts again ~7 s after `scontrol requeue`
(cred_expire=5; a real cluster's default makes that 120 s), with no `scontrol update`.

``slurm_memcg_cluster`` (session scope) is a second cluster, of its own slot, that enforces memory as university
clusters do (start-cluster.sh MEMCG=1: CR_Core_Memory, TaskPlugin=task/cgroup, ConstrainRAMSpace=yes): a job over its
--mem is killed by its cgroup's out-of-memory killer, where the default cluster counts memory and never enforces it.
Two CPU nodes (debug), no GPU node; only the tests that ask for it start it (~1 s). Needs cgroup v1's memory
controller at /sys/fs/cgroup/memory (skipped where it is not there).

Needs root (network namespaces); installs slurmctld/slurmd/slurm-client/munge with apt on first
use (~13 s). Start takes about 1 s once installed, stop under 1 s.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent / "slurm"
SLOTS = 8
NODES = ["node1", "node2"]
GPU_NODES = ["node3"]
GPUS_PER_NODE = 2
GPU_TYPE = "tiny"


@dataclass
class SlurmCluster:
    """A running test cluster: what tests need to submit to it and inspect it."""

    slot: int
    base: Path  # the cluster's own directory (config, state, logs)
    env: dict[str, str]  # os.environ + SLURM_CONF: pass to subprocess / ftctl.slurm calls
    scratch: Path  # a directory every node sees (the host filesystem)
    nodes: list[str] = field(default_factory=lambda: list(NODES))
    gpu_nodes: list[str] = field(default_factory=lambda: list(GPU_NODES))
    partition: str = "debug"  # default partition: the CPU nodes
    gpu_partition: str = "gpu"
    python: str = sys.executable

    @property
    def conf(self) -> str:
        return self.env["SLURM_CONF"]

    def run(self, *argv: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
        """A Slurm command (``cluster.run("squeue", "-h")``) against this cluster."""
        return subprocess.run(list(argv), env=self.env, capture_output=True, text=True, check=check, timeout=60, **kw)

    def state(self, job_id: str) -> str:
        """The job's state word from squeue -t all ('' when unknown)."""
        out = self.run("squeue", "-h", "-t", "all", "-j", str(job_id), "-o", "%T", check=False).stdout.split()
        return out[0] if out else ""

    def wait_state(self, job_id: str, states, timeout: float = 60.0) -> str:
        """Wait until the job is in one of ``states``; returns the state (fails on timeout)."""
        states = {states} if isinstance(states, str) else set(states)
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = self.state(job_id)
            if state in states:
                return state
            time.sleep(0.2)
        raise AssertionError(
            f"job {job_id} still {state or 'unknown'} after {timeout} s, "
            f"wanted {sorted(states)}; logs in {self.base / 'log'}"
        )

    def wait_done(self, job_id: str, timeout: float = 60.0) -> str:
        from ftctl.slurm.scheduler import FINISHED_STATES

        return self.wait_state(job_id, FINISHED_STATES, timeout)

    def cancel_all(self) -> None:
        """Cancel every job (between tests that need the nodes free)."""
        self.run("scancel", "--user=root", check=False)

    @contextlib.contextmanager
    def new_partition(self, name: str, nodes: str = "node[1-2]", **settings: str):
        """A partition of the CPU nodes (beside debug, which stays as it is) with slurm.conf's ``settings``
        (DefMemPerCPU="2048", DefMemPerNode=..., MaxMemPerCPU=...), made in the running controller (`scontrol create`,
        no restart: ~10 ms) for the ``with`` block, then its jobs cancelled and it deleted, so the other tests' sinfo and
        doctor see debug and gpu only, as before."""
        words = [f"PartitionName={name}", f"Nodes={nodes}", "MaxTime=INFINITE", "State=UP"]
        self.run("scontrol", "create", *words, *(f"{k}={v}" for k, v in settings.items()))
        try:
            yield name
        finally:
            self.run("scancel", f"--partition={name}", check=False)
            for _ in range(50):  # a partition with jobs in it is not deleted
                if self.run("scontrol", "delete", f"PartitionName={name}", check=False).returncode == 0:
                    break
                time.sleep(0.2)


def _script_env(slot: int, **more: str) -> dict[str, str]:
    """The per-slot names the start/stop scripts take (see tests/slurm/start-cluster.sh), and ``more`` of its
    variables (MEMCG="1", GPU_NODES="0")."""
    return {
        "BASE": f"/tmp/ftctl-slurm-{slot}",
        "SUBNET": f"10.200.{slot}",
        "BR": f"slrmbr{slot}",
        "NSP": f"slrm{slot}n",
        "CTL_PORT": str(16817 + 10 * slot),
        "NODES": str(len(NODES)),
        "GPU_NODES": str(len(GPU_NODES)),
        "GPUS_PER_NODE": str(GPUS_PER_NODE),
        "GPU_TYPE": GPU_TYPE,
        **more,
    }


def _venv_path() -> str:
    """PATH with this interpreter's bin directory first: `python` and `torchrun` in jobs are the
    venv's even when pytest was started as .venv/bin/pytest without activating the venv."""
    bindir = str(Path(sys.executable).parent)
    rest = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != bindir]
    return os.pathsep.join([bindir, *rest])


def _take_slot():
    for slot in range(SLOTS):
        fh = open(f"/tmp/ftctl-slurm-{slot}.lock", "w")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            continue
        return slot, fh
    pytest.fail(f"all {SLOTS} Slurm test-cluster slots are taken (/tmp/ftctl-slurm-*.lock)")


def _stop(env: dict[str, str]) -> None:
    subprocess.run([str(HERE / "stop-cluster.sh")], env=env, capture_output=True, timeout=120)


def _cluster(**more: str):
    """Start a cluster in a slot of its own (start-cluster.sh with ``more`` of its variables), yield it, stop it."""
    if os.geteuid() != 0:
        pytest.skip("the Slurm test cluster needs root (network namespaces, daemons as root)")
    slot, lock = _take_slot()
    script_env = {**os.environ, **_script_env(slot, **more)}
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum, frame):  # turn `kill PID` into an exception, so teardown still runs
        raise KeyboardInterrupt(f"signal {signum}")

    if previous in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, on_term)
    try:
        proc = subprocess.run(
            [str(HERE / "start-cluster.sh")], env=script_env, capture_output=True, text=True, timeout=600
        )
        if proc.returncode != 0:
            pytest.fail(f"the Slurm test cluster did not start:\n{proc.stdout}\n{proc.stderr}")
        base = Path(script_env["BASE"])
        scratch = base / "scratch"
        scratch.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "SLURM_CONF": str(base / "etc" / "slurm.conf"), "PATH": _venv_path()}
        gpu_nodes = list(GPU_NODES) if int(script_env["GPU_NODES"]) else []
        yield SlurmCluster(slot=slot, base=base, env=env, scratch=scratch, gpu_nodes=gpu_nodes)
    finally:
        _stop(script_env)
        if previous in (signal.SIG_DFL, None):
            signal.signal(signal.SIGTERM, previous or signal.SIG_DFL)
        lock.close()


@pytest.fixture(scope="session")
def slurm_cluster():
    yield from _cluster()


@pytest.fixture(scope="session")
def slurm_memcg_cluster():
    """A cluster whose jobs are killed over their --mem (MEMCG=1): debug's two CPU nodes, no gpu partition."""
    if not os.access("/sys/fs/cgroup/memory/cgroup.procs", os.W_OK):
        pytest.skip(
            "Slurm's memory enforcement (task/cgroup) needs cgroup v1's memory controller at /sys/fs/cgroup/memory"
        )
    started = _cluster(MEMCG="1", GPU_NODES="0")
    cluster = next(started)
    try:
        if "TaskPlugin=task/cgroup" not in Path(cluster.conf).read_text():
            pytest.fail(f"start-cluster.sh MEMCG=1 did not configure task/cgroup: see {cluster.conf}")
        yield cluster
    finally:
        started.close()  # its teardown: the cluster stopped, its slot let go


@pytest.fixture
def slurm(slurm_cluster, monkeypatch):
    """The cluster, with its SLURM_CONF and PATH (venv first) in os.environ for this test only."""
    monkeypatch.setenv("SLURM_CONF", slurm_cluster.conf)
    monkeypatch.setenv("PATH", slurm_cluster.env["PATH"])
    return slurm_cluster
