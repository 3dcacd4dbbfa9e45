"""explore67 #1: a TRL or FastChat run file (and a pasted TRL line) that leaves num_train_epochs out trains
transformers' TrainingArguments' 3 epochs, as SFTConfig and FastChat's scripts do; it trained ftctl's 1, unsaid,
a third of the run TRL would train (docs/other-tools.md's own sft.yaml example among them)."""

from __future__ import annotations

import shlex


def test_a_trl_file_without_num_train_epochs_trains_trls_three():
    from ftctl.spec import build

    notes: list[str] = []
    spec = build({"model_name_or_path": "m", "dataset_name": "d.jsonl", "use_peft": True}, notes=notes)
    assert spec.num_train_epochs == 3
    assert any("num_train_epochs 3" in n and "-o num_train_epochs=1" in n for n in notes), notes
    fastchat = build({"model_name_or_path": "m", "q_lora": True, "learning_rate": 2e-4})
    assert fastchat.num_train_epochs == 3


def test_max_steps_or_a_given_epoch_count_keeps_its_own():
    from ftctl.spec import build

    trl = {"model_name_or_path": "m", "dataset_name": "d.jsonl", "use_peft": True}
    notes: list[str] = []
    assert build({**trl, "max_steps": 40}, notes=notes).num_train_epochs == 1  # (max_steps decides the length)
    assert not any("num_train_epochs" in n for n in notes), notes
    assert build(trl, overrides=["max_steps=40"]).max_steps == 40
    assert build({**trl, "num_train_epochs": 2}).num_train_epochs == 2
    assert build(trl, overrides=["num_train_epochs=1"]).num_train_epochs == 1


def test_a_pasted_trl_line_gets_trls_epochs_unless_it_gives_max_steps():
    from click.testing import CliRunner

    from ftctl.cli import main

    line = "--model_name_or_path Qwen/Qwen2.5-0.5B --dataset_name trl-lib/Capybara --use_peft --output_dir out"
    said = CliRunner().invoke(main, ["launch", "--gpus", "1xA100", *line.split()]).output.strip().splitlines()
    assert "num_train_epochs=3" in shlex.split(said[-1])
    said = CliRunner().invoke(main, ["launch", "--gpus", "1xA100", *line.split(), "--max_steps", "50"]).output
    assert "num_train_epochs" not in said.strip().splitlines()[-1]
