"""The attention's q and o projections are heads x head width, not hidden x hidden: Gemma 2/3 and Qwen3 differ (Gemma 3
4B: 8 x 256 = 2048 of 2560; Qwen3-4B: 32 x 128 = 4096 of 2560). The plan's LoRA count is held to PEFT's on a meta
model built from the same published config (numbers only)."""

from __future__ import annotations

import json

import pytest

from ftctl.plan import KNOWN_MODELS, make_plan, model_shape

CONFIGS = {
    "gemma-3-4b": dict(model_type="gemma3_text", hidden_size=2560, intermediate_size=10240, num_hidden_layers=34,
        num_attention_heads=8, num_key_value_heads=4, head_dim=256, vocab_size=262208),
    "gemma-3-27b": dict(model_type="gemma3_text", hidden_size=5376, intermediate_size=21504, num_hidden_layers=62,
        num_attention_heads=32, num_key_value_heads=16, head_dim=128, vocab_size=262208),
    "Qwen3-4B": dict(model_type="qwen3", hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=True),
    "Qwen3-0.6B": dict(model_type="qwen3", hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
        num_attention_heads=16, num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=True),
    "gemma-2-9b": dict(model_type="gemma2", hidden_size=3584, intermediate_size=14336, num_hidden_layers=42,
        num_attention_heads=16, num_key_value_heads=8, head_dim=256, vocab_size=256000),
    "Llama-3.1-8B": dict(model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, vocab_size=128256),
}  # fmt: skip
TARGETS = ("all-linear", "q_proj,v_proj", "q_proj,o_proj")


def peft_count(cfg: dict, spec) -> int:
    """PEFT's trainable parameters for the spec's adapters on a meta-device model of ``cfg``."""
    import torch
    from peft import get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from ftctl.trainer.methods import lora_config

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg))
    return sum(p.numel() for p in get_peft_model(model, lora_config(spec, model)).parameters() if p.requires_grad)


@pytest.mark.parametrize("name", CONFIGS)
def test_lora_counts_q_and_o_at_heads_x_head_width(tmp_path, name):
    """q_proj/o_proj were sized hidden x hidden: Gemma 3 4B's all-linear count was 1.9% over PEFT's, Qwen3-4B's 5.4%
    under, its q_proj,o_proj one 23% under. Two layers: the count is per layer alike, and 62 of 27B's take longer."""
    from ftctl.spec import build

    cfg = {**CONFIGS[name], "num_hidden_layers": 2}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    shape = model_shape(str(tmp_path))
    for targets in TARGETS:
        spec = build({"method": "lora", "gpus": "1xH100", "model_name_or_path": str(tmp_path),
                      "lora_target_modules": targets})  # fmt: skip
        assert make_plan(spec).trainable_params_b * 1e9 == pytest.approx(peft_count(cfg, spec), rel=0.005), targets
    assert shape.q_width == cfg["num_attention_heads"] * cfg.get("head_dim", cfg["hidden_size"] // 32)


def test_a_multimodal_gemma3_s_five_keys_give_its_q_width(tmp_path):
    """google/gemma-3-4b-it's config.json names five keys of its text model: the heads (8) and head_dim (256) come
    from Gemma3TextConfig's defaults, and the q width with them."""
    text = {"hidden_size": 2560, "intermediate_size": 10240, "model_type": "gemma3_text", "num_hidden_layers": 34,
            "rope_scaling": {"factor": 8.0, "rope_type": "linear"}, "sliding_window": 1024}  # fmt: skip
    config = {"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3", "text_config": text}
    (tmp_path / "config.json").write_text(json.dumps(config))
    shape = model_shape(str(tmp_path))
    assert (shape.q_width, shape.kv_dim, shape.hidden) == (2048, 1024, 2560)
    assert shape.projections()["o_proj"] == (2048, 2560)


def test_a_known_gemma2_id_holds_its_q_width():
    """The known ids of Gemma 2 (no config.json at hand) are sized as their config's: 9B's q is 16 x 256 = 4096."""
    from ftctl.spec import build

    shape = KNOWN_MODELS["google/gemma-2-9b"]
    assert shape.projections()["q_proj"] == (3584, 4096)
    spec = build({"method": "lora", "gpus": "1xH100", "model_name_or_path": "google/gemma-2-9b"})
    cfg = {**CONFIGS["gemma-2-9b"], "num_hidden_layers": 2}
    per_layer = peft_count(cfg, spec) / 2
    assert make_plan(spec).trainable_params_b * 1e9 == pytest.approx(per_layer * shape.layers, rel=0.005)
