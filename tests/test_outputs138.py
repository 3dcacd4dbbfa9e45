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


def test_a_lora_run_under_fsdp_saves_its_adapter_gathered_alone(tiny_model_dir, tmp_path, monkeypatch):
    """sft_trainer.save_model under FSDP (each checkpoint-N and the final save): a PEFT model's save takes the
    trainable weights distributed.adapter_state_dict gathers (tests/test_distributed.py runs it on 2 FSDP2 ranks),
    never accelerate's get_state_dict of the whole model, and PEFT writes from them the adapter_model.safetensors it
    writes of the whole model. A model that is no adapter (fft) is saved as transformers saves it."""
    from types import SimpleNamespace

    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from ftctl.trainer import sft_trainer

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = get_peft_model(base, LoraConfig(r=2))
    trained = {name for name, p in model.named_parameters() if p.requires_grad}
    monkeypatch.setattr(  # the gather of 2 ranks, as one process has it
        sft_trainer,
        "adapter_state_dict",
        lambda m: {k: v for k, v in m.state_dict().items() if k in trained},
        raising=False,
    )

    def whole_model(m):
        raise AssertionError("the whole model was gathered")

    plugin = SimpleNamespace(state_dict_type="StateDictType.FULL_STATE_DICT")
    accelerator = SimpleNamespace(
        unwrap_model=lambda m, **kwargs: m, get_state_dict=whole_model, state=SimpleNamespace(fsdp_plugin=plugin)
    )
    trainer = object.__new__(sft_trainer.SFTTrainer)  # the attributes save_model reads, no training set up
    trainer.is_fsdp_enabled, trainer.model, trainer.accelerator = True, model, accelerator
    trainer.args = SimpleNamespace(output_dir=str(tmp_path), push_to_hub=False)
    trainer._save = lambda out, state_dict=None: model.save_pretrained(out, state_dict=state_dict)
    sft_trainer.SFTTrainer.save_model(trainer, str(tmp_path / "gathered"))
    model.save_pretrained(tmp_path / "peft")
    gathered, own = (load_file(tmp_path / d / "adapter_model.safetensors") for d in ("gathered", "peft"))
    assert own and gathered.keys() == own.keys() and all(torch.equal(gathered[k], own[k]) for k in own)
    trainer.model = base  # fft: transformers' FULL_STATE_DICT save, as before
    with pytest.raises(AssertionError, match="the whole model was gathered"):
        sft_trainer.SFTTrainer.save_model(trainer, str(tmp_path / "full"))


def test_a_resumed_wandb_run_logs_the_steps_trained_again_and_says_they_show_twice(
    tiny_model_dir, tiny_data, tmp_path, one_thread, monkeypatch
):
    """W&B offline: a run killed at step 5 resumes checkpoint-3 in the same W&B run and logs steps 4 and 5 to it
    again (transformers' callback gives W&B no step of its own: nothing is dropped). Online, W&B hands back the
    run's summary (its last train/global_step, 5: set here as it would come), and the attempt says those steps show
    twice in W&B's charts."""
    wandb = pytest.importorskip("wandb")
    from transformers import TrainerCallback

    from ftctl.trainer.run import train
    from ftctl.trainer.tracking import finish_wandb
    from tests.trainer_fixtures import make_run

    for name in ("WANDB_RUN_ID", "WANDB_RESUME", "WANDB_DIR", "WANDB_PROJECT", "WANDB_NAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logged = []
    log = wandb.sdk.wandb_run.Run.log

    def recorded(run, data, *args, **kwargs):  # what transformers' callback hands W&B (wandb.log is run.log)
        if "train/loss" in data:
            logged.append((run.id, data["train/global_step"], kwargs.get("step")))
        return log(run, data, *args, **kwargs)

    monkeypatch.setattr(wandb.sdk.wandb_run.Run, "log", recorded)

    class Crash(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 6:  # steps up to 5 logged, checkpoint-3 the newest
                raise RuntimeError("killed")

    class OnlineSummary(TrainerCallback):  # what W&B hands back of a run resumed online (none offline)
        def on_train_begin(self, args, state, control, **kwargs):
            wandb.run.summary["train/global_step"] = 5

    out = tmp_path / "out"
    spec, plan = make_run(
        tiny_model_dir, tiny_data, out, "fft", max_steps=7, save_steps=3, resume="auto", report_to="wandb"
    )
    try:
        with pytest.raises(RuntimeError, match="killed"):
            train(spec, plan, callbacks=[Crash()], echo=lambda line: None)
        said = []
        assert train(spec, plan, callbacks=[OnlineSummary()], echo=said.append).status == "complete"
    finally:
        finish_wandb()
    (first,) = {run for run, _, _ in logged}
    assert [step for _, step, _ in logged] == [1, 2, 3, 4, 5, 4, 5, 6, 7]
    assert {step for _, _, step in logged} == {None}  # W&B's own _step: none dropped for coming after a later one
    assert [line for line in said if line.startswith("W&B: ")] == [
        f"W&B: run {first} logged up to step 5; steps 4-5, trained again from checkpoint-3, are logged to it again, "
        "and W&B keeps their earlier values too: its charts show them twice (metrics.jsonl and TensorBoard's runs/ "
        "hold the new ones only)"
    ]
