"""gpt-oss as the Hub stores it: experts in MXFP4 (config.json's quantization_config quant_method "mxfp4")."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from ftctl.errors import FtctlError
from ftctl.plan import PlanError, make_plan
from ftctl.spec import build
from tests.test_families219 import GPT_OSS
from tests.trainer_fixtures import make_run

# what openai/gpt-oss-20b's config.json says of its storage
MXFP4 = {
    "quant_method": "mxfp4",
    "modules_to_not_convert": [
        "model.layers.*.self_attn",
        "model.layers.*.mlp.router",
        "model.embed_tokens",
        "lm_head",
    ],
}


@pytest.fixture
def mxfp4_dir(tmp_path, tiny_model_dir):
    """A tiny random gpt-oss saved as the Hub's: each expert stack as MXFP4 nibbles (E, out, in/32, 16) and their
    power-of-two scales (E, out, in/32), the rest bf16; the tiny tokenizer beside it."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = {**GPT_OSS, "hidden_size": 64, "intermediate_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
           "num_key_value_heads": 2, "head_dim": 16, "num_local_experts": 4, "num_experts_per_tok": 2,
           "vocab_size": 512}  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg), dtype=torch.bfloat16)
    weights = {k: v.contiguous() for k, v in model.state_dict().items()}
    for name in [k for k in weights if k.endswith(("experts.gate_up_proj", "experts.down_proj"))]:
        experts, width_in, width_out = weights.pop(name).shape
        weights[f"{name}_blocks"] = torch.randint(0, 256, (experts, width_out, width_in // 32, 16), dtype=torch.uint8)
        weights[f"{name}_scales"] = torch.full((experts, width_out, width_in // 32), 124, dtype=torch.uint8)  # 2^-3
    out = tmp_path / "gpt-oss-mxfp4"
    out.mkdir()
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps({**cfg, "torch_dtype": "bfloat16", "quantization_config": MXFP4}))
    for f in tiny_model_dir.iterdir():
        if f.name.startswith(("tokenizer", "chat_template", "special_tokens")):
            shutil.copy(f, out / f.name)
    return out


def test_lora_loads_the_experts_dequantized_as_the_plan_counts_them(mxfp4_dir):
    """ftctl loaded it with no quantization config: transformers fetched its MXFP4 kernels from the Hub (here: a
    ValueError, the Hub unreachable) or ran them, whose quantizer says it does not train. Now transformers' own
    dequantization (Mxfp4Config(dequantize=True), as OpenAI's fine-tuning cookbook loads it), the plan saying so."""
    import torch
    from safetensors.torch import load_file
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    from ftctl.trainer.model import load_model

    spec = build({"method": "lora", "gpus": "cpu", "model_name_or_path": str(mxfp4_dir)})
    plan = make_plan(spec)
    note = next(n for n in plan.notes if n.startswith("stored in MXFP4"))
    assert "loaded dequantized to fp32 (transformers' Mxfp4Config(dequantize=True)" in note
    assert f"({plan.memory['weights']:.1f} GB)" in note
    model = load_model(spec, plan, on_cpu=True)
    experts = model.model.layers[0].mlp.experts
    assert type(experts).__name__ == "GptOssExperts" and getattr(model, "hf_quantizer", None) is None
    stored = load_file(str(mxfp4_dir / "model.safetensors"))
    blocks, scales = (stored[f"model.layers.0.mlp.experts.gate_up_proj_{k}"] for k in ("blocks", "scales"))
    assert torch.equal(experts.gate_up_proj, convert_moe_packed_tensors(blocks, scales, dtype=torch.float32))
    assert experts.gate_up_proj.dtype == torch.float32 and experts.gate_up_proj.abs().sum() > 0


def test_qlora_is_refused_in_one_line_saying_what_runs(mxfp4_dir):
    """qlora met the checkpoint's own quantization_config in from_pretrained: transformers' "The model is quantized
    with Mxfp4Config but you are passing a BitsAndBytesConfig config" on the node, after the job started."""
    from ftctl.trainer.model import load_model

    said = (
        f"qlora of {mxfp4_dir} does not run: it is stored in MXFP4, which transformers loads as stored or dequantized "
        "to bf16, never as bitsandbytes 4-bit. Use --method lora (ftctl loads it dequantized to bf16), or qlora of a "
        "bf16 copy of it."
    )
    with pytest.raises(PlanError) as e:
        make_plan(build({"method": "qlora", "gpus": "cpu", "model_name_or_path": str(mxfp4_dir)}))
    assert str(e.value) == said
    # a qlora plan made otherwise (an ftctl before this refusal) is refused at the load, in the same words
    spec = build({"method": "qlora", "gpus": "cpu", "model_name_or_path": str(mxfp4_dir)})
    lora_plan = make_plan(replace(spec, method="lora"))
    with pytest.raises(FtctlError) as e:
        load_model(spec, replace(lora_plan, method="qlora"), on_cpu=True)
    assert str(e.value) == said


def test_gpt_oss_20b_plans_its_dequantized_weights_and_no_qlora_is_offered(tmp_path):
    """Its published shape: lora counts 16-bit weights (41.8 GB) and says why; fft trains the dequantized weights
    (it was refused as stored quantized, naming qlora); a refusal offers no qlora of it."""
    (tmp_path / "config.json").write_text(json.dumps({**GPT_OSS, "quantization_config": MXFP4}))
    lora = make_plan(build({"method": "lora", "gpus": "1xH100", "model_name_or_path": str(tmp_path)}))
    assert lora.memory["weights"] == pytest.approx(41.8, abs=0.1)
    assert any(n.startswith("stored in MXFP4: loaded dequantized to bf16") for n in lora.notes)
    fft = make_plan(build({"method": "fft", "gpus": "8xH100", "model_name_or_path": str(tmp_path)}))
    assert fft.weights_dtype in ("bf16", "fp32")
    with pytest.raises(PlanError) as e:
        make_plan(build({"method": "lora", "gpus": "1xA10G", "model_name_or_path": str(tmp_path)}))
    assert "Nearest plans that fit: " in str(e.value) and "qlora" not in str(e.value), str(e.value)


def test_a_lora_run_over_mxfp4_merges_and_answers_as_trained(mxfp4_dir, tiny_data, tmp_path, one_thread):
    """merge refused it as stored quantized ("cannot be saved as a plain model ... the unquantized model it was made
    from", which OpenAI did not publish) and chat and eval stopped in transformers' fetch of its MXFP4 kernels from
    the Hub. Now the merged model (plain, no quantization_config) gives PEFT's logits over the dequantized base."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from ftctl.trainer import trained as trained_mod
    from ftctl.trainer.merge import merge
    from ftctl.trainer.model import load_model
    from ftctl.trainer.run import train

    spec, plan = make_run(
        mxfp4_dir,
        tiny_data,
        tmp_path / "run",
        "lora",
        max_steps=1,
        save_steps=1,
        model_max_length=64,
        lora_dropout=0,
    )
    run = Path(train(spec, plan, echo=lambda line: None).output_dir)
    ids = torch.randint(0, 512, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = PeftModel.from_pretrained(load_model(spec, plan, on_cpu=True), str(run)).eval()(ids).logits
        loaded = trained_mod.load(trained_mod.find(str(run), adapter_only=True), "fp32")  # what chat and eval load
        assert torch.allclose(loaded.eval()(ids).logits, want, atol=1e-5)
        merged = merge(str(run), str(tmp_path / "merged"))
        assert "quantization_config" not in json.loads((Path(merged) / "config.json").read_text())
        got = AutoModelForCausalLM.from_pretrained(merged).eval()(ids).logits
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
