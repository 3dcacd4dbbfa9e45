"""explore53's changes to spec.py (/work/notes/task-255-extra.patch; these tests fail until it is applied): a TRL run
file without use_peft says TRL would train every weight, FastChat's model_max_length default (512) fills a train_lora
file's, several keys left out each give their own reason, and a dict key takes HF's JSON text from -o."""

from __future__ import annotations

from ftctl.spec import build


def test_a_trl_file_without_use_peft_says_trl_trains_every_weight():
    """TRL's CLI docs' sft_config.yaml (no use_peft, learning_rate 0.0001) planned LoRA, unsaid: TRL trains every
    weight without use_peft."""
    notes: list[str] = []
    spec = build({"model_name_or_path": "x/y", "dataset_name": "d.jsonl", "learning_rate": 1e-4}, notes=notes)
    assert spec.method == "lora"
    (said,) = [n for n in notes if n.startswith("method lora, ftctl's default, in a run file in TRL's vocabulary")]
    assert "TRL's sft trains every weight unless use_peft: true" in said and "--method fft" in said
    notes = []
    build({"model_name_or_path": "x/y", "dataset_name": "d.jsonl", "use_peft": True}, notes=notes)
    assert not [n for n in notes if "ftctl's default" in n and n.startswith("method")]


def test_a_fastchat_train_lora_file_cuts_at_its_512_tokens():
    """FastChat's train.py and train_lora.py cut at model_max_length 512 unless told; a q_lora file trained 2,048."""
    notes: list[str] = []
    spec = build({"q_lora": True}, notes=notes)
    assert (spec.model_max_length, spec.lora_target_modules) == (512, "q_proj,v_proj")
    assert any(n.startswith("model_max_length 512") and "FastChat's defaults" in n for n in notes), notes
    assert build({"q_lora": True, "model_max_length": 2048}).model_max_length == 2048


def test_keys_left_out_each_say_their_own_reason():
    """qlora.py's group_by_length and do_mmlu_eval, left out together, were both given group_by_length's reason."""
    notes: list[str] = []
    build(overrides=["group_by_length=true", "do_mmlu_eval=true"], notes=notes)
    assert any(n.startswith("group_by_length (-o): left out, batches are drawn at random") for n in notes), notes
    assert any(n.startswith("do_mmlu_eval (-o): left out, no MMLU evaluation runs") for n in notes), notes


def test_a_dict_key_takes_json_text_from_o():
    """-o lr_scheduler_kwargs='{"min_lr_rate": 0.1}' (HF's argparse takes a dict as JSON) was "expects NAME=VALUE
    pairs"."""
    spec = build(overrides=["lr_scheduler_type=cosine_with_min_lr", 'lr_scheduler_kwargs={"min_lr_rate": 0.1}'])
    assert spec.lr_scheduler_kwargs == {"min_lr_rate": "0.1"}
