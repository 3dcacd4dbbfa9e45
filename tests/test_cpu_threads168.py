"""OpenMP's wait policy of every CPU training process: asleep at its barriers (OMP_WAIT_POLICY=PASSIVE) on a busy
machine, set before torch loads (trainer.distributed.passive_threads_when_busy)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

# the trainer as torchrun starts it (python -m ftctl.trainer), under a load average of 5: what OMP_WAIT_POLICY is
# when it first imports torch (it stops there: torch's own import is not needed to say so)
TRAINER = textwrap.dedent(
    """
    import importlib.abc, os, sys
    os.getloadavg = lambda: (5.0, 5.0, 5.0)

    class Watch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch":
                print("torch imported with OMP_WAIT_POLICY=" + os.environ.get("OMP_WAIT_POLICY", "unset"), flush=True)
                os._exit(0)

    sys.meta_path.insert(0, Watch())
    import ftctl.plan
    def load_run(path):  # the trainer's next step: its spec, then torch
        import torch
    ftctl.plan.load_run = load_run
    import runpy
    sys.argv = ["ftctl.trainer", "--spec", "spec.json"]
    runpy.run_module("ftctl.trainer", run_name="__main__")
    """
)


def _trainer(tmp_path, **env):
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    return subprocess.run(
        [sys.executable, "-c", TRAINER],
        cwd=tmp_path,
        env={**base, "RANK": "0", "LOCAL_WORLD_SIZE": "1", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_cpu_trainer_process_gets_the_wait_policy_before_torch_loads(tmp_path):
    """What a launcher's CPU trainer process (local, Slurm, docker, SkyPilot: torchrun's worker, python -m
    ftctl.trainer) has in its environment when torch first loads, on a machine busier than its threads leave room
    for; its log says so."""
    ran = _trainer(tmp_path, FTCTL_CPU_THREADS="auto", CUDA_VISIBLE_DEVICES="")
    assert ran.returncode == 0, ran.stderr
    assert "torch imported with OMP_WAIT_POLICY=PASSIVE" in ran.stdout, ran.stdout + ran.stderr
    assert f"cpu threads: {len(os.sched_getaffinity(0))} a process" in ran.stdout
    assert "they wait asleep at their barriers (OMP_WAIT_POLICY=PASSIVE: load 5.0 on" in ran.stdout


@pytest.fixture
def before_torch(monkeypatch):
    """This test's process as if torch were not loaded yet, its environment restored after."""
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("FTCTL_CPU_THREADS", "auto")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # restored after: cpu_threads sets it
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    return monkeypatch


def test_busy_is_a_load_that_leaves_fewer_free_cores_than_the_runs_threads(before_torch):
    from ftctl.trainer.distributed import passive_threads_when_busy as passive

    for threads, cpus, load, busy in (
        (2, 2, 1.0, True),  # the trainer's share: all the cores, and a core's worth of other load
        (2, 2, 0.4, False),  # idle: OpenMP's default
        (1, 2, 1.5, False),  # one thread, a core free for it
        (1, 2, 2.0, True),
        (4, 64, 60.0, False),  # a Slurm job's 4 cores of a node the others use 60 of
        (4, 64, 61.0, True),
    ):
        env: dict = {}
        said = passive(threads, env, load=load, cpus=cpus)
        assert bool(said) == busy and env == ({"OMP_WAIT_POLICY": "PASSIVE"} if busy else {}), (threads, cpus, load)
    env = {"OMP_WAIT_POLICY": "ACTIVE"}  # the user's
    assert not passive(2, env, load=9.0, cpus=2) and env == {"OMP_WAIT_POLICY": "ACTIVE"}
    before_torch.setitem(sys.modules, "torch", object())  # loaded: too late, nothing set
    env = {}
    assert not passive(2, env, load=9.0, cpus=2) and env == {}


def test_gpu_runs_keep_openmps_default(before_torch, tmp_path):
    """A process that sees a GPU (driver loaded, CUDA_VISIBLE_DEVICES unset) is left as it was, however busy."""
    from ftctl.trainer import distributed

    before_torch.setattr(os, "getloadavg", lambda: (9.0, 9.0, 9.0))
    driver = tmp_path / "version"
    driver.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15\n")
    before_torch.setattr(distributed, "NVIDIA_DRIVER_FILE", str(driver))
    before_torch.delenv("CUDA_VISIBLE_DEVICES")
    assert distributed.cpu_threads() == "cpu threads: 2 a process (2 cores / 1 on this node; OMP_NUM_THREADS overrides)"
    assert "OMP_WAIT_POLICY" not in os.environ
    before_torch.setenv("CUDA_VISIBLE_DEVICES", "-1")  # every GPU hidden: a CPU run
    assert distributed.cpu_threads().endswith("(OMP_WAIT_POLICY=PASSIVE: load 9.0 on 2 cores, busy)")
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    before_torch.delenv("OMP_WAIT_POLICY")
    before_torch.delenv("FTCTL_CPU_THREADS")  # torchrun started by hand, the user's OMP_NUM_THREADS: still set
    assert (
        distributed.cpu_threads() == "cpu threads: they wait asleep at their barriers (OMP_WAIT_POLICY=PASSIVE: "
        "load 9.0 on 2 cores, busy)"
    )


def test_the_demo_sets_it_before_it_loads_anything(monkeypatch, tmp_path):
    from ftctl.trainer import demo, distributed, model

    class Set(Exception):
        pass

    def called(threads):
        raise Set

    def loaded(echo=None):
        raise AssertionError("the demo loads its model before it sets OpenMP's wait policy")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(model, "ensure_demo_model", loaded)
    monkeypatch.setattr(distributed, "passive_threads_when_busy", called)
    with pytest.raises(Set):  # the demo sets it first, before it imports torch
        demo.run_demo(echo=lambda line: None)
