"""Model families other than Llama through the trainer's methods: tiny random models built from their configs."""

from __future__ import annotations

import json

import pytest


def test_sft_trains_the_top_blocks_of_a_multimodal_gemma3s_language_model():
    """Gemma 3 4B-27B are Gemma3ForConditionalGeneration (AutoModelForCausalLM's for gemma3): its config has no
    num_hidden_layers of its own, and sft stopped on the node ('cannot find the transformer blocks'); its vision
    tower's layers, as many as the language model's here, are not the blocks."""
    import torch
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    from ftctl.trainer.methods import freeze_below_top_blocks

    text = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                num_key_value_heads=1, head_dim=16, sliding_window=8)  # fmt: skip
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, image_size=28,
                  patch_size=14)  # fmt: skip
    torch.manual_seed(0)
    model = Gemma3ForConditionalGeneration(Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4))
    trained = freeze_below_top_blocks(model, 2)
    blocks = {n.split(".layers.")[1].split(".")[0] for n in trained if ".layers." in n}
    assert blocks == {"1", "2"}
    assert all(n.startswith(("model.language_model.", "lm_head.")) for n in trained)
    assert "model.language_model.norm.weight" in trained


GPT_OSS = dict(model_type="gpt_oss", hidden_size=2880, intermediate_size=2880, num_hidden_layers=24,
               num_attention_heads=64, num_key_value_heads=8, head_dim=64, num_local_experts=32,
               num_experts_per_tok=4, vocab_size=201088, sliding_window=128, tie_word_embeddings=False)  # fmt: skip


@pytest.mark.parametrize("gpus", ["1xH100", "1xA100-80GB", "cpu"])
def test_gpt_oss_plans_eager_attention_which_keeps_its_sinks(tmp_path, gpus):
    """gpt-oss adds learned sink logits to its attention: transformers refuses SDPA for it (every CPU run stopped on
    the node with its ValueError) and hands the sinks to no flash-attn 2 kernel (an A100/H100 run with flash-attn
    trained without them, unsaid). The plan says eager and counts its scores."""
    from ftctl.plan import make_plan
    from ftctl.spec import build

    (tmp_path / "config.json").write_text(json.dumps(GPT_OSS))
    model = str(tmp_path) if gpus != "cpu" else _tiny_gpt_oss(tmp_path)
    plan = make_plan(build({"method": "lora", "gpus": gpus, "model_name_or_path": model}))
    assert plan.attn_implementation == "eager"
    assert plan.memory["attention_scores"] > 0
    assert any("sink logits" in n for n in plan.notes)


def _tiny_gpt_oss(tmp_path) -> str:
    small = tmp_path / "small"
    small.mkdir()
    cfg = {**GPT_OSS, "hidden_size": 64, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
           "num_key_value_heads": 2, "head_dim": 16, "num_local_experts": 4, "num_experts_per_tok": 2,
           "vocab_size": 256}  # fmt: skip
    (small / "config.json").write_text(json.dumps(cfg))
    return str(small)


def test_a_model_with_sinks_runs_eager_whatever_kernel_the_plan_named():
    """At run time too (a plan from before, or -o attn_implementation=varlen): never a kernel that leaves them out."""
    from ftctl.trainer.attention import AttentionShape, resolve

    shape = AttentionShape(head_dim=64, heads=8, kv_heads=8, dtype="bfloat16", sinks=True)
    for planned in ("varlen", "sdpa", "flash_attention_2"):
        assert resolve(planned, "gpt_oss", on_cpu=True, shape=shape).attn_implementation == "eager"


def test_varlen_attention_runs_multi_head_latent_attention_whose_values_are_narrower():
    """DeepSeek-V2/V3's attention (MLA) hands the attention values of 16 where queries and keys have 24 per head: the
    varlen path reshaped the values to the queries' width ('shape [...] is invalid') at the first step of
    every GPU run of them. Now the same logits as eager attention."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from ftctl.trainer.attention import TORCH_VARLEN, register_varlen

    register_varlen(TORCH_VARLEN)
    cfg = AutoConfig.for_model("deepseek_v3", vocab_size=128, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=4, moe_intermediate_size=32,
                               n_routed_experts=4, n_shared_experts=1, num_experts_per_tok=2, first_k_dense_replace=1,
                               n_group=1, topk_group=1, q_lora_rank=32, kv_lora_rank=16, qk_rope_head_dim=8,
                               qk_nope_head_dim=16, v_head_dim=16)  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    ids = torch.randint(0, 128, (2, 12))
    eager = model(ids).logits
    model.set_attn_implementation(TORCH_VARLEN)
    torch.testing.assert_close(model(ids).logits, eager, atol=1e-5, rtol=1e-5)
