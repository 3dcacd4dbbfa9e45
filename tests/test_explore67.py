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


AXOLOTL = {"base_model": "m", "datasets": [{"path": "d.jsonl", "type": "chat_template"}], "adapter": "lora"}


def test_axolotls_kernel_switches_and_kernel_plugins_are_taken():
    """axolotl's example files set Liger's and its LoRA kernels' switches and the CutCrossEntropy/Liger plugins (the
    same math, faster): each was refused as an unknown key (`ftctl keys` lists them); plugins alone stopped 103 of its 226
    SFT examples."""
    from ftctl.spec import build

    plugins = ["axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin", "axolotl.integrations.liger.LigerPlugin"]
    kernels = {"liger_rms_norm": True, "liger_cross_entropy": False, "lora_qkv_kernel": True, "lora_o_kernel": True}
    notes: list[str] = []
    spec = build({**AXOLOTL, "plugins": plugins, **kernels, "peft_use_dora": True}, notes=notes)
    assert spec.method == "lora" and spec.use_dora is True
    assert any("plugins" in n and "lora_qkv_kernel" in n and "left to ftctl" in n for n in notes), notes


def test_an_axolotl_plugin_that_changes_what_trains_is_refused_saying_which_may_stay():
    import pytest

    from ftctl.errors import FtctlError
    from ftctl.spec import build

    with pytest.raises(FtctlError, match="CutCrossEntropyPlugin and LigerPlugin may stay"):
        build({**AXOLOTL, "plugins": ["axolotl.integrations.swanlab.SwanLabPlugin"]})


def test_llama_factorys_loss_and_checkpointing_switches_say_what_they_are_here():
    """train_on_prompt (the loss on the prompts too) was an unknown key with no word of assistant_only_loss;
    disable_gradient_checkpointing suggested 'gradient_checkpointing', its opposite."""
    import pytest

    from ftctl.errors import FtctlError
    from ftctl.spec import build

    lf = {"model_name_or_path": "m", "stage": "sft", "finetuning_type": "lora"}
    with pytest.raises(FtctlError) as e:
        build({**lf, "train_on_prompt": True, "disable_gradient_checkpointing": True, "mask_history": True})
    said = str(e.value)
    assert "true is assistant_only_loss: false (every token)" in said
    assert "disable_gradient_checkpointing: true is gradient_checkpointing: false here" in said
    assert "Did you mean" not in said and "mask_history (the last turn's answer alone trains) is not offered" in said
