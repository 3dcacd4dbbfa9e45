"""What a run sends and saves beyond its output (task 138): no usage ping to the Hub from TRL's trainer unless the user
asked for one, an FSDP run's adapter gathered whole without its frozen base, and what W&B gets when a run resumes
from a checkpoint before the last step it logged."""

from __future__ import annotations

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
    assert HUB_TELEMETRY_ENV not in __import__("os").environ and constants.HF_HUB_DISABLE_TELEMETRY is False
    monkeypatch.setenv("DO_NOT_TRACK", "1")  # the user's own switch, kept
    restore_env(set_env({}))
    assert constants.HF_HUB_DISABLE_TELEMETRY is True
