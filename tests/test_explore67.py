"""explore67: migrating from axolotl, LLaMA-Factory, TRL and FastChat (/work/notes/explore67-migrate.md). A TRL
command line pasted after `ftctl launch` is said as the ftctl line that trains it, with what ftctl keeps of its own
where TRL's differs (the loss on a conversation's every token, the rate, the batch), as a run file's notes say them;
`trl sft ...` pasted as `ftctl launch sft ...` loses its `sft`, which launch read as a run file."""

from __future__ import annotations

import shlex


def _said(*args: str) -> list[str]:
    from click.testing import CliRunner

    from ftctl.cli import main

    r = CliRunner().invoke(main, list(args))
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    return r.output.strip().splitlines()


TRL = "--model_name_or_path Qwen/Qwen2.5-0.5B --dataset_name trl-lib/Capybara --use_peft --output_dir out"


def test_a_pasted_trl_line_says_what_ftctl_keeps_of_its_own():
    """The suggested line trained a conversation's assistant turns only at ftctl's batch of 32 and 2e-4 where TRL's
    sft trains every token at 8 a GPU and 2e-5, and neither the message nor the run's notes said so (a run file in
    TRL's words says each)."""
    said = _said("launch", "--gpus", "1xA100", *TRL.split())
    why = said[-2]
    assert "ftctl's own kept, which the line leaves out" in why
    assert "-o assistant_only_loss=false for TRL's" in why
    assert "-o learning_rate=2e-5 for TRL's" in why
    assert "-o per_device_train_batch_size=8 -o gradient_accumulation_steps=1 for TRL's" in why


def test_a_pasted_trl_line_that_gives_them_is_not_told_of_them():
    line = TRL + " --assistant_only_loss True --learning_rate 1e-4 --per_device_train_batch_size 2"
    why = _said("launch", "--gpus", "1xA100", *line.split())[-2]
    assert "ftctl's own kept" not in why and "assistant_only_loss=false" not in why


def test_trls_command_word_pasted_after_launch_is_left_out():
    """`trl sft --model_name_or_path ...` with `trl` replaced: the suggested line kept `sft`, and running it said
    "Run file 'sft' does not exist"."""
    said = _said("launch", "sft", "--gpus", "1xA100", *TRL.split())
    words = shlex.split(said[-1])
    assert "sft" not in words and words[:2] == ["ftctl", "launch"]
    assert "left out: sft" in said[-2]
