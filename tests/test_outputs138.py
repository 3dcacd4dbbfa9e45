"""What a run sends and saves beyond its output (task 138): no usage ping to the Hub from TRL's trainer unless the user
asked for one, an FSDP run's adapter gathered whole without its frozen base, and what W&B gets when a run resumes
from a checkpoint before the last step it logged."""

from __future__ import annotations

import os

import pytest

from ftctl.envvars import HUB_TELEMETRY_ENV, telemetry_off


def test_the_trainer_turns_the_hubs_telemetry_off_unless_the_user_set_it(monkeypatch):
    """TRL's trainer sends a usage ping to huggingface.co from rank 0 at each start (huggingface_hub's send_telemetry,
    which reads only HF_HUB_DISABLE_TELEMETRY / DO_NOT_TRACK / offline mode, once, at its import): the trainer sets
    the variable where the user set none, and the hub's switch follows it both ways (the trainer called in-process
    leaves both as they were)."""
    from huggingface_hub import constants

    from ftctl.trainer.tracking import restore_env, set_env

    assert telemetry_off({}) == {HUB_TELEMETRY_ENV: "1"}
    assert telemetry_off({HUB_TELEMETRY_ENV: "0"}) == {}  # the user's choice, whatever it is
    for name in (HUB_TELEMETRY_ENV, "DISABLE_TELEMETRY", "DO_NOT_TRACK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", False)  # as read at import
    before = set_env(telemetry_off({}))
    assert constants.HF_HUB_DISABLE_TELEMETRY is True
    restore_env(before)
    assert HUB_TELEMETRY_ENV not in os.environ and constants.HF_HUB_DISABLE_TELEMETRY is False
    monkeypatch.setenv("DO_NOT_TRACK", "1")  # the user's own switch, kept
    restore_env(set_env({}))
    assert constants.HF_HUB_DISABLE_TELEMETRY is True


def test_a_resume_before_wandbs_last_step_says_those_steps_show_twice(monkeypatch, tmp_path):
    """A W&B run resumed online comes back with its summary, the last train/global_step the earlier attempt logged
    (M): resumed from checkpoint-N < M, the attempt logs steps N+1..M to it again and W&B keeps both (transformers
    logs without W&B's step: nothing is dropped). The line says so; nothing is said where W&B logged no step past
    N, or knows of none (offline: no summary comes back)."""
    wandb = pytest.importorskip("wandb")
    from ftctl.trainer.tracking import finish_wandb, retrained_line

    for name in ("WANDB_RUN_ID", "WANDB_RESUME", "WANDB_PROJECT", "WANDB_NAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = wandb.init(mode="offline", dir=str(tmp_path), id="abc12345")
    try:
        assert retrained_line(3) is None  # offline: W&B hands back no summary
        run.summary["train/global_step"] = 5  # what online W&B hands back of the earlier attempt
        assert retrained_line(3) == (
            "W&B: run abc12345 logged up to step 5; steps 4-5, trained again from checkpoint-3, are logged to it "
            "again, and W&B keeps their earlier values too: its charts show them twice (metrics.jsonl and "
            "TensorBoard's runs/ hold the new ones only)"
        )
        assert "; step 5, trained again from checkpoint-4" in retrained_line(4)
        assert retrained_line(5) is None and retrained_line(0) is None
    finally:
        finish_wandb()  # and its session: W&B reads its variables once a session
