"""Multi-head latent attention (DeepSeek-V2/V3, Kimi K2): the kernel check and the plan take the head width the varlen
kernel sees (queries and keys of qk_nope_head_dim + qk_rope_head_dim, values padded to it), not config.head_dim,
which is the rotary part alone."""

from __future__ import annotations

import json

MLA = dict(vocab_size=128, hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=4, moe_intermediate_size=32, n_routed_experts=4, n_shared_experts=1,
           num_experts_per_tok=2, first_k_dense_replace=1, n_group=1, topk_group=1, q_lora_rank=32, kv_lora_rank=16,
           qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=16)  # fmt: skip


def test_the_kernel_is_probed_at_the_width_it_runs(monkeypatch):
    """config.head_dim is 8 here (qk_rope_head_dim): the probe ran a kernel of 8 a head where the run hands it 24 (on
    Blackwell, FlashAttention 4's limit of 128 passed DeepSeek-V3's probe of 64 and failed its run of 192)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from ftctl.trainer import attention

    cfg = AutoConfig.for_model("deepseek_v3", **MLA)
    assert cfg.head_dim == 8
    shape = attention.AttentionShape.of(cfg, "bfloat16")
    assert (shape.head_dim, shape.heads, shape.kv_heads) == (24, 4, 4)

    widths = []
    reference = attention._reference_varlen

    def kernel(q, k, v, *args):
        widths.append((q.shape[-1], k.shape[-1], v.shape[-1]))
        return reference(q, k, v, *args)

    monkeypatch.setattr(attention, "_reference_varlen", kernel)  # the CPU path's kernel
    attention.register_varlen(attention.TORCH_VARLEN)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation=attention.TORCH_VARLEN)
    model(torch.randint(0, 128, (1, 8)))
    assert set(widths) == {(24, 24, 24)}  # what the run hands the kernel (values zero-padded to 24)
    assert attention.probe(kernel, shape, "cpu") is None
    assert widths[-1] == (shape.head_dim,) * 3  # what the probe hands it


def test_published_configs_head_widths(tmp_path):
    """DeepSeek-V3's 192 (config.head_dim 64), MiMo-V2-Flash's 192 (values 128), Llama's hidden / heads; the plan's
    K/V width (its activations' kv_width_bytes) of DeepSeek-V3 is its 128 heads of 192, not of 64."""
    from transformers import AutoConfig

    from ftctl.plan import model_shape
    from ftctl.trainer.attention import AttentionShape, head_width

    assert AttentionShape.of(AutoConfig.for_model("deepseek_v3"), "bfloat16").head_dim == 192
    assert head_width(AutoConfig.for_model("mimo_v2_flash")) == 192
    assert head_width({"hidden_size": 4096, "num_attention_heads": 32}) == 128
    assert head_width({"hidden_size": 4096}) is None
    config = {"model_type": "deepseek_v3", "hidden_size": 7168, "num_hidden_layers": 61, "num_attention_heads": 128,
              "num_key_value_heads": 128, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
              "kv_lora_rank": 512, "q_lora_rank": 1536, "n_routed_experts": 256, "moe_intermediate_size": 2048,
              "intermediate_size": 18432, "first_k_dense_replace": 3, "n_shared_experts": 1, "vocab_size": 129280}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert model_shape(str(tmp_path)).kv_dim == 128 * 192
