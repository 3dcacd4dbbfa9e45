"""The launch checks the disk a local run into object storage is staged on (preflight.check_disk's staging): the
local backend names the directory its trainer stages in, in this environment and the run's -o env."""

from __future__ import annotations

import pytest

from ftctl.errors import FtctlError
from tests.render_fixtures import make_spec


def test_a_local_launch_into_a_store_checks_the_disk_it_stages_on(tmp_path, monkeypatch):
    from ftctl import backend, preflight
    from ftctl.local.backend import LocalBackend
    from ftctl.trainer.run import output_dirs

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FTCTL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FTCTL_LOCAL_DIR", raising=False)
    flags = dict(method="lora", gpus="cpu", backend="local", output_dir="s3://b/run")
    spec = make_spec([], model_name_or_path="HuggingFaceTB/SmolLM2-135M", **flags)
    assert LocalBackend().staging_here(spec) == output_dirs(spec)[0].rstrip("/")
    moved = make_spec(
        [f"env=FTCTL_LOCAL_DIR={tmp_path / 'big'}"],
        model_name_or_path="HuggingFaceTB/SmolLM2-135M",
        **flags,
    )
    assert LocalBackend().staging_here(moved) == str(tmp_path / "big")
    asked = {}

    def stop(*args, **kwargs):
        asked.update(kwargs)
        raise FtctlError("stopped here")

    monkeypatch.setattr(preflight, "preflight", stop)
    with pytest.raises(FtctlError, match="stopped here"):
        backend.launch(spec, dry_run=True)
    assert asked["staging"] == output_dirs(spec)[0]


def test_saves_per_epoch_is_costed_once_the_trainer_counts_an_epoch(caplog):
    """The plan cannot count an epoch's steps (it reads no data); the trainer does (callbacks.StepsAsGiven), and
    warns where saves_per_epoch's checkpoints would spend the run saving (plan.checkpoint_cost's epoch_steps)."""
    import functools
    import logging
    from types import SimpleNamespace

    from transformers import TrainerControl, TrainerState

    from ftctl.plan import checkpoint_cost, make_plan
    from ftctl.trainer.callbacks import StepsAsGiven

    spec = make_spec(
        ["saves_per_epoch=4"],
        model_name_or_path="meta-llama/Llama-3.1-8B",
        method="fft",
        gpus="8xH100",
    )
    plan = make_plan(spec)
    args = SimpleNamespace(logging_steps=1, eval_steps=None, save_steps=100, gradient_accumulation_steps=1)

    def begin(batches: int) -> TrainerState:
        state = TrainerState(max_steps=batches)
        given = StepsAsGiven(4, cost=functools.partial(checkpoint_cost, spec, plan))
        given.on_train_begin(args, state, TrainerControl(), train_dataloader=[None] * batches)
        return state

    with caplog.at_level(logging.WARNING, logger="ftctl.trainer.callbacks"):
        assert begin(2_000).save_steps == 500
    (said,) = [
        r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == StepsAsGiven.__module__
    ]
    assert said.startswith("saves_per_epoch=4 (2,000 steps an epoch): checkpoints every 500 steps (")
    assert "-o save_steps=3000 in place of saves_per_epoch" in said  # fft's step at plan.FULL_MFU (v112): ~0.8 s
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ftctl.trainer.callbacks"):
        assert begin(100_000).save_steps == 25_000
    assert not [r for r in caplog.records if r.levelno == logging.WARNING and r.name == StepsAsGiven.__module__]
