"""The tokens seen (transformers' state.num_input_tokens_seen) are the tokens the steps trained on, at each step's end.

bench/NOTES.md v110 (an H100) read it at each step's end and found 0.8x a step's tokens: ftctl summed the count on the
device and added it to the state only when a log or a checkpoint read it, and on a GPU a step's log is written at the
next step's end (SFTTrainer.defer_logs), so at step N's end the state held steps 1..N-2's tokens (over steps 2-6, one
difference of 0 in 5). The logs, metrics.jsonl and trainer_state.json held the right number; a callback reading the
state at a step's end (the bench's clock) did not. Here, for packed and unpacked rows, one and two micro-batches a step,
logs written late as on a GPU: the state at every step's end is the sum of the real tokens (no padding) of the batches
the model was given, the logs and metrics.jsonl say the same at their steps, and after one epoch all of it is the
dataset's rows' tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.trainer_fixtures import make_run

ROWS = 12


def _real_tokens(batch: dict) -> int:
    """A micro-batch's tokens that are no padding, from what the model was given: a padded batch's rows without
    their padding (the mask's zeros); a padding-free packed row (one row, no mask) up to its last document's last
    token (the padding after it is at position 0). The test checks these against the dataset's rows too."""
    ids, mask, positions = batch["input_ids"], batch.get("attention_mask"), batch.get("position_ids")
    if mask is not None:
        return sum(len(row) - row.count(0) for row in mask.tolist())
    assert ids.shape[0] == 1 and positions is not None
    return max(i + 1 for i, at in enumerate(positions[0].tolist()) if at != 0)  # after it: padding (position 0)


@pytest.mark.parametrize("packing", [True, False], ids=["packed", "unpacked"])
@pytest.mark.parametrize("accumulation", [1, 2], ids=["ga1", "ga2"])
def test_the_tokens_seen_at_each_steps_end_are_the_steps_tokens(
    packing, accumulation, tiny_model_dir, tmp_path, one_thread, monkeypatch
):
    from transformers import TrainerCallback

    from ftctl.demo import demo_data_path
    from ftctl.trainer.run import train
    from ftctl.trainer.sft_trainer import SFTTrainer

    data = tmp_path / "rows.json"
    data.write_text(json.dumps(json.loads(demo_data_path().read_text())[:ROWS]))
    monkeypatch.setattr(SFTTrainer, "defer_logs", True)  # as on a GPU: each step's log written at the next one's end

    class Watch(TrainerCallback):
        def __init__(self):
            self.micro: list[int] = []  # each micro-batch's real tokens, in order
            self.at_end: list[int] = []  # the state's tokens seen at each step's end
            self.logged: dict[int, int] = {}  # step -> the tokens seen its log says
            self.dataset_tokens = None

        def on_train_begin(self, args, state, control, model=None, train_dataloader=None, **kwargs):
            self.dataset_tokens = sum(len(row["input_ids"]) for row in train_dataloader.dataset)
            model.register_forward_pre_hook(
                lambda module, a, kw: self.micro.append(_real_tokens(kw)) if module.training else None,
                with_kwargs=True,
            )

        def on_step_end(self, args, state, control, **kwargs):
            self.at_end.append(state.num_input_tokens_seen)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if "loss" in logs:
                self.logged[state.global_step] = logs["num_input_tokens_seen"]

    spec, plan = make_run(
        tiny_model_dir, data, tmp_path / "out", "lora", max_steps=-1, num_train_epochs=1, save_steps=2,
        logging_steps=1, global_batch_size=2 * accumulation, per_device_train_batch_size=2, packing=packing,
        model_max_length=64,
    )  # fmt: skip
    assert plan.packing is packing and plan.gradient_accumulation_steps == accumulation
    watch = Watch()
    result = train(spec, plan, callbacks=[watch], echo=lambda line: None)
    assert result.status == "complete"

    steps = len(watch.at_end)
    assert steps >= 3 and len(watch.micro) > steps * (accumulation - 1)
    ends = [min((i + 1) * accumulation, len(watch.micro)) for i in range(steps)]
    truth = [sum(watch.micro[:end]) for end in ends]
    assert watch.at_end == truth  # the state at each step's end: every token of the steps done
    assert watch.logged == dict(enumerate(truth, start=1))  # each step's log: its own step's
    assert truth[-1] == watch.dataset_tokens  # one epoch: every token of the dataset's rows, no padding
    metrics = [json.loads(line) for line in Path(tmp_path, "out", "metrics.jsonl").read_text().splitlines()]
    assert [r["tokens"] for r in metrics if "loss" in r and "event" not in r] == truth  # what `ftctl status` reads
    state = json.loads(Path(tmp_path, "out", "checkpoint-2", "trainer_state.json").read_text())
    assert state["num_input_tokens_seen"] == truth[1]
