"""Helper 272 (review 58, findings 3-5): the card's Training section.

- A spec.json not ftctl's own (beside a downloaded adapter: `ftctl merge` reads it after merging) crashed the section
  with a traceback: num_train_epochs null, a string learning rate or warm-up ratio, adapter_config.json's r null. Now
  an odd value is written as it is or its line left out.
- "loss on: the assistant turns" was said of plain-text rows (every token trains) and prompt-completion rows (the
  completion trains): the card says the run's own words where its metrics.jsonl is there, else what the setting
  decides for each kind of row.
- The warm-up is the one spec.warmup_of gives (RunSpec.warmup's), and 1 step is "1 step".
"""

from __future__ import annotations

import json

import pytest

from ftctl.spec import RunSpec, warmup_of
from ftctl.trainer import model_card

ODD_SPECS = [
    ({"method": "lora"}, "- method: lora\n"),
    ({"method": "lora", "max_steps": -1, "num_train_epochs": None}, "- method: lora\n"),
    ({"method": "fft", "learning_rate": "2e-4"}, "- learning rate: 2e-4\n"),
    ({"method": "fft", "warmup_ratio": "0.03"}, ", warm-up 0.03\n"),
    ({"method": "fft", "num_train_epochs": "3"}, "- steps: 3 epochs\n"),
    ({"method": "fft", "max_steps": "ten"}, "- steps: ten\n"),
    ({"method": "fft", "eval_split": "a tenth"}, "- held-out data: a tenth of the data\n"),
    ({"method": "sft", "model": None}, "- method: sft\n"),
]


@pytest.mark.parametrize(("spec", "line"), ODD_SPECS)
def test_a_spec_json_not_ftctls_own_is_written_as_it_is(spec, line):
    said = model_card.training(spec, {"model": "not a mapping"} if spec.get("model") is None else None)
    assert line in said, said
    assert "- steps:" not in said or "None" not in said.split("- steps:")[1].split("\n")[0], said


def test_an_adapter_config_with_a_null_rank_and_a_foreign_spec_json_make_a_merges_card(tmp_path):
    """write_merged, as `ftctl merge` calls it once the weights are merged: spec.json beside the adapter with a null
    epochs count and a string rate, adapter_config.json with r null; the card is written, no traceback."""
    adapter, out = tmp_path / "adapter", tmp_path / "merged"
    adapter.mkdir()
    out.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": None, "rank_pattern": None, "target_modules": 7}))
    spec = {"method": "lora", "lora_r": None, "max_steps": -1, "num_train_epochs": None, "learning_rate": "1e-4"}
    (adapter / "spec.json").write_text(json.dumps({"spec": spec, "plan": {"packing": "maybe"}}))
    model_card.write_merged(out, str(adapter), "org/base", "lora", "its bf16 weights", trained=adapter)
    card = (out / "README.md").read_text()
    assert "## Training" in card and "- learning rate: 1e-4\n" in card and "- adapted modules: None\n" in card, card
    assert model_card._rank(None, adapter) is None and model_card._rank(8, adapter) == 8
    (adapter / "adapter_config.json").write_text(json.dumps(["not", "a", "mapping"]))
    assert model_card._rank(16, adapter) == 16
    said = model_card.training({"method": "lora", "lora_target_modules": ["q_proj"]}, None, adapter)
    assert "- adapted modules: q_proj\n" in said, said


def test_the_warm_up_is_runspecs_and_one_step_is_singular():
    for steps, ratio in [(None, None), (None, 0.1), (1, 0.5), (0, None), (20, None)]:
        assert RunSpec(warmup_steps=steps, warmup_ratio=ratio).warmup == warmup_of(steps, ratio)
    said = model_card.training({"method": "fft", "warmup_steps": 1, "lr_scheduler_type": "cosine"}, None)
    assert "- schedule: cosine, warm-up 1 step\n" in said, said
    said = model_card.training({"method": "fft", "warmup_steps": 20, "warmup_ratio": 0.5}, None)
    assert "warm-up 20 steps\n" in said, said
    assert "warm-up 3% of the steps\n" in model_card.training({"method": "fft"}, None)
    assert "- steps: 1 epoch\n" in model_card.training({"method": "fft", "num_train_epochs": 1}, None)


def test_the_loss_is_said_as_the_run_said_it_else_for_each_kind_of_row(tmp_path):
    spec = {"method": "lora", "assistant_only_loss": True}
    said = model_card.training(spec, None, tmp_path)  # no metrics.jsonl: the card cannot know the rows' formats
    assert "a conversation's assistant turns only" in said and "a prompt-completion row's completion only" in said, said
    assert "plain text's every token" in said, said
    # the run's start record says which tokens its data's formats trained (data.loss_on, written by the trainer)
    start = {"step": 0, "event": "start", "loss_on": "every token (plain text)"}
    (tmp_path / "metrics.jsonl").write_text(json.dumps(start) + "\n" + json.dumps({"step": 1, "loss": 2.0}) + "\n")
    assert "- loss on: every token (plain text)\n" in model_card.training(spec, None, tmp_path)
    checkpoint = tmp_path / "checkpoint-3"  # a checkpoint's card: the run's metrics.jsonl above it
    checkpoint.mkdir()
    assert "- loss on: every token (plain text)\n" in model_card.training(spec, None, checkpoint)
    elsewhere = tmp_path / "elsewhere" / "run"
    said = model_card.training({"method": "lora", "assistant_only_loss": False}, None, elsewhere)
    assert "- loss on: every token, the prompts' too" in said, said
    assert "- loss on" not in model_card.training({"method": "lora"}, None)  # not known: left out
