"""explore53: FastChat's, TRL's and qlora.py's command lines, pasted after `ftctl launch` as their authors wrote them,
are said as one ftctl line that trains as the tool trains them: the tool's defaults the line leaves out written into
it, argparse's lists joined, the dataset flag as --data, refused flags left out and named, and the keys those recipes
set that ask for nothing ftctl does otherwise taken with a note (/work/notes/explore53-migration.md)."""

from __future__ import annotations

import shlex

import pytest


def _said(*args: str) -> list[str]:
    from click.testing import CliRunner

    from ftctl.cli import main

    r = CliRunner().invoke(main, list(args))
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    return r.output.strip().splitlines()


def _overrides(line: str) -> dict[str, str]:
    """The -o KEY=VALUE pairs of a suggested line, and its --data/--method flags, by key."""
    words, found = shlex.split(line), {}
    for flag, value in zip(words, words[1:]):
        if flag == "-o":
            key, _, val = value.partition("=")
            found[key] = val
        elif flag in ("--data", "--method"):
            found[flag] = value
    return found


# trl/scripts/sft.py's LoRA example, as its docstring writes it (the model and dataset names kept)
TRL_LORA = (
    "--model_name_or_path Qwen/Qwen2.5-0.5B --dataset_name trl-lib/Capybara --learning_rate 2.0e-4 --num_train_epochs 1"
    " --packing --per_device_train_batch_size 2 --gradient_accumulation_steps 8 --gradient_checkpointing --use_peft"
    " --lora_r 32 --lora_alpha 16 --lora_target_modules q_proj k_proj v_proj o_proj --output_dir Qwen2-0.5B-SFT"
    " --push_to_hub"
)


def test_a_trl_line_is_said_with_trls_defaults_its_dataset_its_lists_and_without_what_is_refused():
    """The suggested line was `--dataset_name trl-lib/Capybara` (refused next: "Did you mean '--data'?"),
    `-o lora_target_modules=q_proj k_proj ...` (stray words), `-o push_to_hub=true` (refused next), and trained with
    ftctl's cosine, 3% warm-up and 2,048 tokens where TRL's are linear, none and 1,024, unsaid."""
    said = _said("launch", "--gpus", "1xA100", *TRL_LORA.split())
    line = said[-1].strip()
    found = _overrides(line)
    assert found["--data"] == "hf://datasets/trl-lib/Capybara"
    assert found["lora_target_modules"] == "q_proj,k_proj,v_proj,o_proj"
    assert (found["lr_scheduler_type"], found["warmup_ratio"], found["model_max_length"]) == ("linear", "0", "1024")
    assert "push_to_hub" not in found and "--dataset_name" not in line and "--method" not in found
    assert "refused here, so left out: --push_to_hub: ftctl merge RUN writes a plain model directory" in said[-2]
    assert "TRL's defaults, which the line leaves out" in said[-2]
    assert "ftctl's own: -o model_max_length=2048 -o lr_scheduler_type=cosine -o warmup_ratio=0.03" in said[-2]


def test_the_suggested_trl_line_builds_as_trl_trains_it():
    from ftctl.spec import build

    line = _said("launch", "--gpus", "1xA100", *TRL_LORA.split())[-1]
    pairs = [w for f, w in zip(shlex.split(line), shlex.split(line)[1:]) if f == "-o"]
    spec = build(overrides=pairs, notes=[])
    assert (spec.method, spec.lr_scheduler_type, spec.warmup_ratio, spec.model_max_length) == (
        "lora",
        "linear",
        0,
        1024,
    )
    assert spec.lora_target_modules == "q_proj,k_proj,v_proj,o_proj" and spec.packing is True


def test_a_trl_line_without_use_peft_trains_every_weight():
    """TRL's sft.py without --use_peft is a full fine-tune; at a rate of 1e-4 or more the line planned LoRA (ftctl's
    default), unsaid. Now said, and lora kept there as for a run file in TRL's words (review-57 R1: the line became
    --method fft at 2e-4, where the same keys in a run file train lora); at a full fine-tune's rate, --method fft. A
    LoRA line keeps PEFT's own modules for the model (TRL's lora_target_modules None)."""
    from ftctl.spec import build

    said = _said("launch", "--model_name_or_path", "m/x", "--dataset_name", "d.jsonl", "--learning_rate", "1e-4")
    found = _overrides(said[-1])
    assert "--method" not in found
    assert "no --use_peft: TRL's sft would train every weight; here lora" in said[-2]
    assert build({"model_name_or_path": "m/x", "dataset_name": "d.jsonl", "learning_rate": 1e-4}, notes=[]).method == (
        "lora"
    )
    said = _said("launch", "--model_name_or_path", "m/x", "--dataset_name", "d.jsonl", "--learning_rate", "2e-5")
    found = _overrides(said[-1])
    assert found["--method"] == "fft" and "lora_target_modules" not in found
    assert "--method fft: learning_rate 2e-05 with no LoRA flag" in said[-2]
    lora = _overrides(_said("launch", "--model_name_or_path", "m/x", "--dataset_name", "d.jsonl", "--use_peft")[-1])
    assert "--method" not in lora and lora["lora_target_modules"] == "peft-default"


def test_a_fastchat_train_lora_line_gets_its_lora_modules_and_its_lora_bias_is_taken():
    """train_lora.py adapts q_proj and v_proj unless told (its LoraArguments); the line trained all-linear, unsaid.
    Its --lora_bias none was "Unknown key 'lora_bias'. Did you mean 'lora_r'?"."""
    from ftctl.spec import build

    fastchat = "--model_name_or_path m/x --lora_r 8 --lora_alpha 16 --data_path d.json --learning_rate 2e-5"
    fastchat += " --q_lora True --lora_bias none --lora_weight_path '' --model_max_length 2048"
    said = _said("launch", *shlex.split(fastchat))
    found = _overrides(said[-1])
    assert found["lora_target_modules"] == "q_proj,v_proj" and "--method" not in found
    assert "lora_target_modules: FastChat's defaults" in said[-2]
    spec = build(overrides=[f"{k}={v}" for k, v in found.items() if not k.startswith("--")], notes=[])
    assert (spec.method, spec.lora_r, spec.lora_target_modules) == ("qlora", 8, "q_proj,v_proj")
    with pytest.raises(Exception, match="lora_bias"):
        build(overrides=["lora_bias=all"])


def test_a_qlora_py_line_keeps_its_dataset_and_its_defaults_ask_for_nothing_refused():
    """qlora.py's guanaco script: --dataset FILE was left out (the line then trained the bundled demo data), and its
    --group_by_length (qlora.py's default) and --do_mmlu_eval were refused, so the script could not launch."""
    from ftctl.spec import build

    qlora = "--model_name_or_path m/x --dataset d.jsonl --dataset_format alpaca --group_by_length --do_mmlu_eval"
    qlora += " --bits 4 --double_quant --lora_modules all --learning_rate 0.0002 --source_max_len 16"
    said = _said("launch", *qlora.split())
    found = _overrides(said[-1])
    assert found["--data"] == "d.jsonl" and found["group_by_length"] == "true"
    assert "left out: --source_max_len" in said[-2]
    notes: list[str] = []
    spec = build(
        overrides=["group_by_length=true", "do_mmlu_eval=true", "dataset_format=alpaca", "bits=4"], notes=notes
    )
    assert spec.method == "qlora"
    assert any(n.startswith("group_by_length") and "(-o): left out" in n for n in notes), notes
    named = _said("launch", "--model_name_or_path", "m/x", "--dataset", "alpaca", "--bits", "4")[-1]
    assert "--data" not in named  # qlora.py's own dataset names are no file: left out, said


def test_json_mappings_that_ask_for_what_ftctl_does_are_taken():
    """--gradient_checkpointing_kwargs '{"use_reentrant": false}' (HF's argparse takes a dict as JSON) was refused;
    the same as a YAML mapping was taken."""
    from ftctl.spec import build

    build(overrides=['gradient_checkpointing_kwargs={"use_reentrant": false}'], notes=[])
    with pytest.raises(Exception, match="gradient_checkpointing_kwargs"):
        build(overrides=['gradient_checkpointing_kwargs={"use_reentrant": true}'])


def test_a_lone_dataset_name_says_it_is_data():
    said = _said("launch", "--dataset_name", "trl-lib/Capybara")[-1]
    assert "dataset_name is data_path here: --data PATH, or -o data_path=PATH" in said


def test_qlora_pys_input_output_rows_are_said_as_prompt_completion_too():
    """{"input", "output"} rows (qlora.py's input-output format: no chat template, the loss on the output) were told
    to become Alpaca's instruction, which the chat template renders: prompt/completion is what qlora.py trained."""
    from ftctl.trainer.formats import to_row

    (problem,) = to_row("a.jsonl line 1", {"input": "Q", "output": "A"}).problems
    assert "or 'input' -> 'prompt', 'output' -> 'completion' (qlora.py's input-output" in problem, problem
    (other,) = to_row("a.jsonl line 1", {"question": "Q", "answer": "A"}).problems
    assert "qlora.py" not in other


def test_a_refused_flag_that_changes_what_trains_stays_in_the_line_named():
    """Left out of the line, --dataset_train_split train_sft would train the train split unsaid: it stays, named with
    why, for the user to change; a Hub push (the run trains the same without it) is left out."""
    said = _said("launch", "--model_name_or_path", "m/x", "--dataset_name", "o/d", "--dataset_train_split", "train_sft")
    assert "-o dataset_train_split=train_sft" in said[-1]
    assert (
        "(refused here, change or leave out: --dataset_train_split train_sft: a Hub dataset's train split" in said[-2]
    )


def test_accelerate_launchs_flags_and_the_script_are_left_out_named():
    """`accelerate launch --config_file multi_gpu.yaml --num_processes=1 trl/scripts/sft.py ...` pasted from
    --config_file on was "Did you mean '--config'?" (accelerate's config read as a run file); the script path stayed
    in the line as the run file."""
    line = "--config_file multi_gpu.yaml --num_processes=1 trl/scripts/sft.py --model_name m/x --dataset_name d.jsonl"
    said = _said("launch", *line.split(), "--use_peft")
    assert "config_file is not a run key here. accelerate launch's" in said[-3]
    assert "left out: --config_file, --num_processes, trl/scripts/sft.py;" in said[-2]
    assert said[-1].strip().startswith("ftctl launch --model m/x --data d.jsonl -o use_peft=true")
