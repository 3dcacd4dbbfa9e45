"""all-linear LoRA of a mixture of experts: the attention and every expert's projections, never the router, on each
MoE family transformers 5 fuses (methods.expert_weights)."""

from __future__ import annotations

import pytest

MOE = {
    "qwen3_moe": dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, head_dim=16),
    "mixtral": dict(num_local_experts=4, num_experts_per_tok=2),
    "gpt_oss": dict(num_local_experts=4, num_experts_per_tok=2, head_dim=16, sliding_window=16,
                    layer_types=["sliding_attention", "full_attention"]),
}  # fmt: skip


def adapted(model, config) -> set[str]:
    """The modules that got adapters, each named from its layer on: self_attn.q_proj, mlp.experts, mlp.gate ..."""
    from peft import get_peft_model

    peft_model = get_peft_model(model, config)
    return {
        n.split(".layers.1.")[1].replace(".base_layer", "").split(".lora_A")[0]
        for n, _ in peft_model.named_parameters()
        if ".layers.1." in n and ".lora_A." in n
    }


@pytest.mark.parametrize("model_type", MOE)
def test_all_linear_adapts_each_moes_experts_and_not_its_router(model_type):
    """PEFT's all-linear adapted Qwen3-MoE's and Mixtral's router (mlp.gate: its map of transformers 4's Linear
    named gate) and none of gpt-oss's experts, which the plan counts."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from ftctl.spec import build
    from ftctl.trainer.methods import lora_config

    cfg = AutoConfig.for_model(model_type, hidden_size=64, intermediate_size=32, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, vocab_size=128, **MOE[model_type])  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg)
    spec = build({"method": "lora", "model_name_or_path": "m", "lora_r": 4})
    config = lora_config(spec, model)
    assert config.lora_dropout == 0  # ParamWrapper's
    assert adapted(model, config) == {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                                      "mlp.experts"}  # fmt: skip
    lora_a = {n: p.shape for n, p in model.named_parameters() if ".layers.1.mlp.experts" in n and "lora_A" in n}
    assert sorted(s[0] for s in lora_a.values()) == [4 * 4, 2 * 4 * 4]  # r a down_proj, 2r a gate_up_proj, 4 experts


def test_a_dense_model_with_a_3d_weight_keeps_its_lora_dropout():
    """Qwen3.5's linear attention has a 3-D conv1d weight (SigLIP's probe in Gemma 3's vision tower too): no expert,
    so the default dropout stays and one the run sets is not refused as if it were."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from ftctl.spec import build
    from ftctl.trainer.methods import lora_config

    cfg = AutoConfig.for_model("qwen3_5_text", hidden_size=64, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=128,
                               linear_num_key_heads=2, linear_num_value_heads=2, linear_key_head_dim=16,
                               linear_value_head_dim=16)  # fmt: skip
    model = AutoModelForCausalLM.from_config(cfg)
    assert any(p.dim() == 3 for p in model.parameters())
    for dropout in (0.05, 0.1):  # the default, and one set
        spec = build({"method": "lora", "model_name_or_path": "m", "lora_dropout": dropout})
        assert lora_config(spec, model).lora_dropout == dropout
        assert not lora_config(spec, model).target_parameters


def test_the_fields_expert_names_adapt_the_experts_and_a_typo_is_told_them():
    """Qwen3-MoE recipes name gate_proj, up_proj, down_proj (transformers 4's expert Linears, which PEFT maps onto the
    fused experts): they were refused ('no module is named gate_proj. Did you mean v_proj?'); now they train the
    experts, without dropout, and without the router. A typo is told the names, each hint once."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from ftctl.errors import FtctlError
    from ftctl.spec import build
    from ftctl.trainer.methods import lora_config

    common = dict(hidden_size=64, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=128)  # fmt: skip
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model("qwen3_moe", **common, **MOE["qwen3_moe"]))
    recipe = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
    config = lora_config(build({"method": "lora", "model_name_or_path": "m", "lora_target_modules": recipe}), model)
    assert config.lora_dropout == 0
    assert adapted(model, config) == {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                                      "mlp.experts"}  # fmt: skip
    with pytest.raises(FtctlError, match=r"'gate_prj'\. Did you mean 'gate_proj'\? Its experts and router"):
        lora_config(build({"method": "lora", "model_name_or_path": "m", "lora_target_modules": "gate_prj"}), model)
    torch.manual_seed(0)
    phi3 = AutoModelForCausalLM.from_config(AutoConfig.for_model("phi3", **common, pad_token_id=0))
    with pytest.raises(FtctlError) as refused:
        lora_config(build({"method": "lora", "model_name_or_path": "m", "lora_target_modules": "q_proj,v_proj"}), phi3)
    assert str(refused.value).count("Did you mean 'qkv_proj'?") == 1
