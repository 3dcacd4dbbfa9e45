"""explore67 #4, #7, #8, #10: axolotl and LLaMA-Factory files that leave a key out train with that tool's default
(axolotl's 512 tokens and LoRA dropout 0; LLaMA-Factory's transformers 3 epochs, linear schedule without warm-up), said
in one note with ftctl's own; the batch and LLaMA-Factory's rate stay ftctl's, noted with the -o for the tool's. The
plan's loss row no longer says TRL trains completions only where the file gave completion_only_loss: false, and its
batch row says "1 sequence". An axolotl type over a model without a chat template says at launch that its rows train
in Vicuna's format."""

from __future__ import annotations

import json

from ftctl.plan import make_plan
from ftctl.spec import build

LLAMA_8B = "meta-llama/Llama-3.1-8B"


def _built(config: dict, **kw):
    notes: list[str] = []
    return build(config, notes=notes, **kw), notes


def test_an_axolotl_file_leaving_keys_out_trains_axolotls_length_and_dropout_said_once():
    axolotl = {"base_model": "m", "datasets": [{"path": "a.json", "type": "alpaca"}], "adapter": "lora"}
    spec, notes = _built({**axolotl, "learning_rate": 2e-4})
    assert (spec.model_max_length, spec.lora_dropout) == (512, 0.0)
    said = [n for n in notes if "axolotl's defaults" in n]
    assert len(said) == 1 and "-o model_max_length=2048 -o lora_dropout=0.05" in said[0], notes
    # the batch stays ftctl's global 32, with the -o for axolotl's 1 x 1 a GPU
    assert spec.global_batch_size is None and spec.per_device_train_batch_size is None
    assert any("-o micro_batch_size=1 -o gradient_accumulation_steps=1 for axolotl's" in n for n in notes), notes
    # given keys keep theirs, and a file in ftctl's words keeps ftctl's
    given, notes = _built({**axolotl, "sequence_len": 1024, "lora_dropout": 0.1, "micro_batch_size": 2})
    assert (given.model_max_length, given.lora_dropout) == (1024, 0.1)
    assert not any("axolotl's defaults" in n or "micro_batch_size=1" in n for n in notes), notes
    ours = build({"model_name_or_path": "m", "data_path": "a.json", "method": "lora"})
    assert (ours.model_max_length, ours.lora_dropout) == (2048, 0.05)


def test_a_llama_factory_file_leaving_keys_out_trains_transformers_epochs_and_schedule_said_once(tmp_path):
    lf = {"model_name_or_path": "m", "stage": "sft", "finetuning_type": "lora", "lora_target": "all"}
    spec, notes = _built(lf)
    assert (spec.num_train_epochs, spec.lr_scheduler_type, spec.warmup_ratio) == (3.0, "linear", 0.0)
    assert (spec.lora_r, spec.lora_alpha, spec.lora_dropout) == (8, 16, 0.0)
    said = [n for n in notes if "LLaMA-Factory's defaults" in n]
    assert len(said) == 1 and "-o num_train_epochs=1 -o lr_scheduler_type=cosine" in said[0], notes
    # the rate and the batch stay ftctl's, each noted with LLaMA-Factory's
    assert spec.learning_rate is None
    assert any("-o learning_rate=5e-5 for LLaMA-Factory's" in n for n in notes), notes
    assert any("-o per_device_train_batch_size=8 -o gradient_accumulation_steps=1 for LLaMA" in n for n in notes)
    # its finetuning_type left out (LLaMA-Factory's default: lora) still trains its LoRA defaults
    assert build({"model_name_or_path": "m", "stage": "sft", "cutoff_len": 1024}).lora_r == 8
    # given keys, or max_steps, keep theirs
    given, notes = _built({**lf, "num_train_epochs": 2, "lr_scheduler_type": "cosine", "warmup_steps": 5})
    assert (given.num_train_epochs, given.lr_scheduler_type, given.warmup_ratio) == (2, "cosine", None)
    assert build({**lf, "max_steps": 30}).num_train_epochs == 1


def _row(spec, name: str) -> str:
    return next(line for line in make_plan(spec).table(spec).splitlines() if line.startswith(f"{name} "))


def test_the_loss_row_says_no_trl_difference_where_the_file_gave_completion_only_loss_false():
    trl = {"model_name_or_path": LLAMA_8B, "dataset_name": "d.jsonl", "use_peft": True}
    off = build({**trl, "completion_only_loss": False}, flags={"gpus": "1xA100"})
    assert not off.assistant_only_loss
    assert "every token" in _row(off, "loss") and "TRL trains" not in _row(off, "loss")
    # assistant_only_loss: false alone: TRL's completion_only_loss (None) still trains completions only there
    every = build({**trl, "assistant_only_loss": False}, flags={"gpus": "1xA100"})
    assert "TRL trains a prompt-completion row's completion only" in _row(every, "loss")


def test_the_batch_row_says_one_sequence():
    spec = build(
        {"model_name_or_path": LLAMA_8B, "data_path": "a.json"},
        flags={"gpus": "1xA100"},
        overrides=["per_device_train_batch_size=1", "gradient_accumulation_steps=1"],
    )
    row = _row(spec, "batch")
    assert "= 1 sequence of" in row and "sequences" not in row, row


def test_an_axolotl_type_over_a_model_without_a_chat_template_says_vicuna_at_launch(tmp_path):
    bare = tmp_path / "notmpl"
    bare.mkdir()
    (bare / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    axolotl = {"base_model": str(bare), "datasets": [{"path": "a.json", "type": "alpaca"}], "learning_rate": 2e-4}
    _, notes = _built(axolotl)
    said = [n for n in notes if "Vicuna" in n]
    assert len(said) == 1 and "a.json's type: alpaca" in said[0] and "### Instruction:" in said[0], notes
    assert "chat_template_path" in said[0]
    # a template given, or the model's own, or a type that writes no prompt: nothing to say
    jinja = tmp_path / "t.jinja"
    jinja.write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    assert not any("Vicuna" in n for n in _built({**axolotl, "chat_template_path": str(jinja)})[1])
    chat = {"path": "a.json", "type": "chat_template"}
    assert not any("Vicuna" in n for n in _built({**axolotl, "datasets": [chat]})[1])
    own = tmp_path / "own"
    own.mkdir()
    (own / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>", "chat_template": "{{ x }}"}))
    assert not any("Vicuna" in n for n in _built({**axolotl, "base_model": str(own)})[1])


def test_a_tool_default_equal_to_ftctls_is_taken_but_not_said_as_a_difference():
    """Review 331 #7: LLaMA-Factory's lora_alpha (twice the rank) at lora_r 16 is ftctl's own 32: it was listed among
    the tool's defaults, with "-o lora_alpha=32" as the way to ftctl's."""
    lf = {"model_name_or_path": "m", "stage": "sft", "finetuning_type": "lora", "lora_target": "all", "lora_rank": 16}
    spec, notes = _built(lf)
    assert spec.lora_alpha == 32
    [said] = [n for n in notes if "LLaMA-Factory's defaults" in n]
    assert "lora_alpha" not in said and "lora_dropout 0" in said, said
