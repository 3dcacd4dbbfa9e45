"""all-linear LoRA of a multimodal model (Gemma 3 4B-27B: Gemma3ForConditionalGeneration, what AutoModelForCausalLM
builds for gemma3) adapts its language model only: ftctl trains on text, which never reaches the vision tower."""

from __future__ import annotations

import json
import logging

import pytest

TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=1,
            head_dim=16, sliding_window=8)  # fmt: skip
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, image_size=28,
              patch_size=14)  # fmt: skip
LANGUAGE = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
            "mlp.up_proj", "mlp.down_proj"}  # fmt: skip


def tiny_gemma3(vocab_size=128, **ids):
    import torch
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    torch.manual_seed(0)
    config = Gemma3Config(text_config={**TEXT, "vocab_size": vocab_size, **ids}, vision_config=VISION,
                          mm_tokens_per_image=4)  # fmt: skip
    return Gemma3ForConditionalGeneration(config)


def adapted(peft_model) -> set[str]:
    """The modules that hold LoRA adapters, by their names in the model (base_model.model. left out)."""
    return {
        n.removeprefix("base_model.model.").split(".lora_A")[0]
        for n, _ in peft_model.named_parameters()
        if ".lora_A." in n
    }


def test_all_linear_adapts_the_language_model_and_the_plan_counts_it(tmp_path):
    """PEFT's all-linear adapted the SigLIP vision tower's attention and MLP too (a third more adapters here), which
    text rows never train; the plan counts the language model's."""
    from peft import get_peft_model

    from ftctl.plan import make_plan
    from ftctl.spec import build
    from ftctl.trainer.methods import lora_config

    model = tiny_gemma3()
    model.save_pretrained(tmp_path)
    spec = build({"method": "lora", "gpus": "cpu", "model_name_or_path": str(tmp_path)})
    peft_model = get_peft_model(model, lora_config(spec, model))
    modules = adapted(peft_model)
    assert not [m for m in modules if not m.startswith("model.language_model.layers.")]  # no vision_tower, no head
    assert {m.split(".", 4)[-1] for m in modules} == LANGUAGE and len(modules) == 3 * len(LANGUAGE)
    trained = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert make_plan(spec).trainable_params_b * 1e9 == pytest.approx(trained, rel=1e-9)
    # named targets stay as given: q_proj is the vision tower's too
    named = build({"method": "lora", "model_name_or_path": "m", "lora_target_modules": "q_proj"})
    assert any(".vision_tower." in m for m in adapted(get_peft_model(tiny_gemma3(), lora_config(named, model))))


def test_a_text_model_keeps_peft_s_all_linear(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from ftctl.spec import build
    from ftctl.trainer.methods import lora_config

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert lora_config(build({"method": "lora", "model_name_or_path": "m"}), model).target_modules == "all-linear"


def test_a_multimodal_lora_run_trains_on_cpu(tmp_path, tiny_data, one_thread, caplog):
    """A tiny Gemma 3 with the tiny tokenizer through the trainer: adapters on the language model only, the loss
    falls. A resume of its checkpoint adapts the same modules without a word; one saved with PEFT's all-linear (the
    vision tower's too) resumes with those, and says so."""
    from peft import LoraConfig, get_peft_model

    from ftctl.trainer import methods
    from ftctl.trainer.run import train
    from tests.tiny_fixtures import make_tiny_tokenizer
    from tests.trainer_fixtures import make_run, read_metrics

    tokenizer = make_tiny_tokenizer()
    ids = dict(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    model_dir = tmp_path / "gemma3"
    tiny_gemma3(len(tokenizer), **ids).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    run = dict(max_steps=4, save_steps=4, learning_rate=3e-3, model_max_length=64)
    result = train(*make_run(model_dir, tiny_data, tmp_path / "out", "lora", **run), echo=print)
    losses = [r["loss"] for r in read_metrics(result.output_dir)]
    assert len(losses) == 4 and losses[-1] < losses[0]
    checkpoint = tmp_path / "out" / "checkpoint-4"
    saved = json.loads((checkpoint / "adapter_config.json").read_text())
    assert "language_model" in saved["target_modules"]

    spec, _ = make_run(model_dir, tiny_data, tmp_path / "out2", "lora")
    model = tiny_gemma3(len(tokenizer), **ids)
    with caplog.at_level(logging.WARNING, logger="ftctl"):
        same = methods.checkpoint_targets(methods.lora_config(spec, model), str(checkpoint), model)
    assert same.target_modules == saved["target_modules"] and "resuming with" not in caplog.text
    older = tmp_path / "checkpoint-2"
    get_peft_model(tiny_gemma3(len(tokenizer), **ids), LoraConfig(target_modules="all-linear")).save_pretrained(older)
    with caplog.at_level(logging.WARNING, logger="ftctl"):
        resumed = methods.checkpoint_targets(methods.lora_config(spec, model), str(older), model)
    assert any(".vision_tower." in m for m in adapted(get_peft_model(model, resumed)))
    assert "resuming with checkpoint-2's adapters on down_proj, fc1, fc2" in caplog.text
