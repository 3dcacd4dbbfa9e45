"""ftctl's SFTTrainer: the logs of TRL's own, without a host wait inside the training step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.trainer_fixtures import make_run

LOGGED = ("loss", "grad_norm", "entropy", "mean_token_accuracy", "num_tokens", "num_input_tokens_seen")
SYNCS = ("item", "__bool__", "__float__", "__int__", "tolist")  # what turns a tensor into a Python value
# the trainers' own code (on CPU, torch's single-tensor Adam and SDPA's mask check also take values from
# tensors: CPU paths, on a GPU the fused AdamW and the varlen kernels do not)
TRAINER_FILES = ("trl/trainer/sft_trainer.py", "transformers/trainer.py", "ftctl/trainer/sft_trainer.py")


def _run(spec, plan, monkeypatch, trainer_cls=None):
    """Train; return (the log records, how many times a trainer took a Python value from a tensor between
    each step's begin and end)."""
    import sys

    import torch
    from transformers import TrainerCallback

    import ftctl.trainer.sft_trainer as sft_trainer
    from ftctl.trainer.run import train

    if trainer_cls is not None:
        monkeypatch.setattr(sft_trainer, "SFTTrainer", trainer_cls)
    count = {"n": 0, "on": False}
    for name in SYNCS:
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _original=original, **k):
            count["n"] += count["on"] and sys._getframe(1).f_code.co_filename.endswith(TRAINER_FILES)
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)

    class Watch(TrainerCallback):
        def __init__(self):
            self.logs: list[dict] = []
            self.per_step: list[int] = []

        def on_step_begin(self, args, state, control, **kwargs):
            count.update(n=0, on=True)

        def on_step_end(self, args, state, control, **kwargs):
            count["on"] = False
            self.per_step.append(count["n"])

        def on_log(self, args, state, control, logs=None, **kwargs):
            if "loss" in logs:
                self.logs.append(dict(logs))

    watch = Watch()
    result = train(spec, plan, callbacks=[watch], echo=lambda line: None)
    assert result.status == "complete"
    return watch.logs, watch.per_step


@pytest.mark.parametrize("method", ["fft", "lora"])
def test_same_logs_as_trls_trainer_and_no_host_wait_in_a_step(
    method, tiny_model_dir, tiny_data, tmp_path, one_thread, monkeypatch
):
    from trl import SFTTrainer as TrlSFTTrainer

    runs = {}
    for name, cls in (("ftctl", None), ("trl", TrlSFTTrainer)):
        spec, plan = make_run(
            tiny_model_dir, tiny_data, tmp_path / name, method, max_steps=4, save_steps=2, logging_steps=2
        )
        runs[name] = _run(spec, plan, monkeypatch, cls)
        monkeypatch.undo()
    (ours, our_steps), (trls, trl_steps) = runs["ftctl"], runs["trl"]

    assert [r["epoch"] for r in ours] == [r["epoch"] for r in trls] and len(ours) == 2
    for a, b in zip(ours, trls):
        for key in LOGGED:
            assert a[key] == pytest.approx(b[key], rel=1e-6), key
    assert ours[-1]["num_input_tokens_seen"] > ours[0]["num_input_tokens_seen"] > 0
    for step in (2, 4):  # the checkpoints record the tokens seen up to their step
        states = [json.loads(Path(tmp_path, n, f"checkpoint-{step}", "trainer_state.json").read_text()) for n in runs]
        assert states[0]["num_input_tokens_seen"] == states[1]["num_input_tokens_seen"] > 0

    assert our_steps == [0, 0, 0, 0]  # nothing in a step waits for the device
    assert all(n >= 3 for n in trl_steps)  # TRL's metrics and token counts do, every step
