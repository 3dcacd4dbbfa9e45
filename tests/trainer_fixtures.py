"""Helpers for the trainer tests: tiny data, specs with CPU plans, running the trainer as torchrun does.

from tests.trainer_fixtures import make_run, run_trainer_cli, read_metrics, SUBPROCESS_ENV
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TINY_ROWS = 48


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A small ShareGPT file: the first rows of the bundled demo conversations."""
    from ftctl.demo import demo_data_path

    rows = json.loads(demo_data_path().read_text())[:TINY_ROWS]
    path = tmp_path_factory.mktemp("tiny-data") / "conversations.json"
    path.write_text(json.dumps(rows))
    return path


@pytest.fixture
def one_thread():
    """Tiny models train an order of magnitude faster on one thread than on two busy ones."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_run(model_dir, data, output, method="fft", gpus="cpu", **overrides):
    """(spec, plan) for a short CPU run of the tiny model."""
    from ftctl.plan import make_plan
    from ftctl.spec import build

    values = {
        "method": method,
        "model_name_or_path": str(model_dir),
        "data_path": str(data),
        "output_dir": str(output),
        "max_steps": 6,
        "save_steps": 3,
        "global_batch_size": 4,
        "per_device_train_batch_size": 2,
        "model_max_length": 128,
        "learning_rate": 1e-3,
        "warmup_ratio": 0.0,
        "gpus": gpus,
        "resume": "never",
        "seed": 7,
    }
    values.update(overrides)
    spec = build(values)
    return spec, make_plan(spec)


# accelerate applies FSDP on GPUs only (on CPU processes it trains plain DDP, which ftctl refuses: distributed.py):
# a script that starts with this takes FSDP2 as a GPU run does, each block fully_shard-ed over gloo, the final norm and
# the LM head as accelerate's "tail" group.
FSDP_ON_GLOO = """
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType
import ftctl.trainer.distributed
_settings = ftctl.trainer.distributed.fsdp_settings
ftctl.trainer.distributed.fsdp_settings = lambda plan, on_cpu: _settings(plan, False)
_init = AcceleratorState.__init__
def init(self, *args, fsdp_plugin=None, **kwargs):
    _init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        self.fsdp_plugin = fsdp_plugin
AcceleratorState.__init__ = init
"""


def write_spec(spec, plan, path) -> Path:
    from ftctl.plan import dump_run

    path = Path(path)
    path.write_text(dump_run(spec, plan))
    return path


def subprocess_env(**extra) -> dict:
    env = dict(os.environ)
    env.update(
        {
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
            "TOKENIZERS_PARALLELISM": "false",
        }
    )
    env.update({k: str(v) for k, v in extra.items()})
    return env


def interpreted_checks(module: str, *args: str, timeout: int = 600) -> dict:
    """Run ``python -m tests.<module> ARGS`` with TRITON_INTERPRET=1 (Triton reads it when kernels are defined,
    hence a subprocess) and return the JSON its last line prints."""
    proc = subprocess.run(
        [sys.executable, "-m", f"tests.{module}", *args],
        cwd=REPO,
        env=subprocess_env(TRITON_INTERPRET="1"),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_trainer_cli(spec_path, nproc: int = 1, env=None, timeout=300, prelude: str | None = None):
    """Run ``python -m ftctl.trainer --spec`` (or torchrun with ``nproc`` processes, gloo) and wait.

    ``prelude`` runs the trainer through a script written beside the spec instead, with code that may
    add callbacks: it must define ``CALLBACKS``."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    if prelude is not None:
        script = Path(spec_path).with_name("prelude_runner.py")
        script.write_text(
            prelude + "\nimport sys\nfrom ftctl.plan import load_run\nfrom ftctl.trainer.run import train\n"
            "spec, plan = load_run(sys.argv[1])\ntrain(spec, plan, callbacks=CALLBACKS)\n"
        )
        cmd = [*(torchrun if nproc > 1 else [sys.executable]), str(script), str(spec_path)]
    elif nproc > 1:
        cmd = [*torchrun, "-m", "ftctl.trainer", "--spec", str(spec_path)]
    else:
        cmd = [sys.executable, "-m", "ftctl.trainer", "--spec", str(spec_path)]
    return subprocess.run(cmd, env=env or subprocess_env(), cwd=REPO, capture_output=True, text=True, timeout=timeout)


def read_metrics(output_dir) -> list[dict]:
    """The per-step records of metrics.jsonl (the end-of-training summaries left out)."""
    lines = Path(output_dir, "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "loss" in r]


def losses_by_step(output_dir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(output_dir)}


@pytest.fixture
def offline_wandb(monkeypatch):
    """W&B with no network."""
    import wandb

    for name in ("WANDB_RUN_ID", "WANDB_RESUME", "WANDB_DIR", "WANDB_PROJECT", "WANDB_NAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    yield
    wandb.finish()  # a test that failed mid-run
