"""Long-context plans (explore57): a refusal's leanest plan sized in the card's precision, an offload refusal that
does not ask for RAM the node has, RoPE scaling read from config.json as the model's context, and rope_scaling as a
run key refused with how to extend a context."""

from __future__ import annotations

import re

import pytest

from ftctl.errors import FtctlError
from ftctl.plan import HEADROOM, PlanError, make_plan, scaled_context
from tests.render_fixtures import make_spec, write_model_config

LLAMA_31_8B = {  # meta-llama/Llama-3.1-8B's config.json, its shape and RoPE
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "intermediate_size": 14336,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "tie_word_embeddings": False,
    "max_position_embeddings": 131072,
    "rope_scaling": {
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
}
QWEN_25_7B = {  # Qwen/Qwen2.5-7B-Instruct's
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "hidden_size": 3584,
    "num_hidden_layers": 28,
    "intermediate_size": 18944,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "head_dim": 128,
    "vocab_size": 152064,
    "tie_word_embeddings": False,
    "max_position_embeddings": 32768,
}
LLAMA_2_7B = {  # meta-llama/Llama-2-7b-hf's: 4,096 positions, multi-head K/V
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "intermediate_size": 11008,
    "num_key_value_heads": 32,
    "head_dim": 128,
    "vocab_size": 32000,
    "tie_word_embeddings": False,
    "max_position_embeddings": 4096,
}


def _plan(model, gpus, *overrides, **flags):
    return make_plan(make_spec(list(overrides), model_name_or_path=str(model), gpus=gpus, **flags))


def test_a_refusal_sizes_its_leanest_plan_in_the_cards_precision(tmp_path):
    """8B qlora of 32,768-token rows on V100s (fp16: qlora's residual stream in fp32) was refused saying its leanest
    plan needed 21.5 GB of the 31.4 it plans within: sized in bf16. The need a refusal names is over what it fits in."""
    model = write_model_config(tmp_path / "llama31", **LLAMA_31_8B)
    with pytest.raises(PlanError) as e:
        _plan(model, "8xV100-32GB", "model_max_length=32768", method="qlora")
    said = str(e.value)
    need = float(re.search(r"needs about ([\d.]+) GB per GPU", said).group(1))
    within = float(re.search(r"ftctl plans within 92% of it \(([\d.]+) GB\)", said).group(1))
    assert need > within, said
    assert need == pytest.approx(33.3, abs=0.3)  # fp16: activations 25.8 GB (14.0 in bf16)
    # the same leanest plan on an A100 (bf16) is what fits there: the two agree where the precision is bf16
    fits = _plan(model, "8xA100", "model_max_length=32768", method="qlora")
    assert fits.precision == "bf16" and fits.memory_gb <= fits.gpu_memory_gb * HEADROOM


def test_an_offload_refused_for_its_gpus_asks_for_no_ram_the_node_has(tmp_path):
    """Qwen2.5-7B fft of 131,072-token rows on 8xA100: one row's activations do not fit the GPUs, offloaded or not.
    The node was assumed to have 640 GB, and the refusal said the offload needed 210 GB of it: '-o
    host_memory_gb=211 if it has that much'."""
    model = write_model_config(tmp_path / "qwen25", **QWEN_25_7B)
    with pytest.raises(PlanError) as e:
        _plan(model, "8xA100", "model_max_length=131072", method="fft")
    said = str(e.value)
    assert "Offloading to CPU RAM (zero2_offload, zero3_offload) does not make it fit the GPUs either." in said
    assert "host_memory_gb=" not in said.split("Nearest plans")[0], said
    assert "-o model_max_length=65536 on these 8xA100 (zero3_offload" in said  # the shorter rows that do fit
    # where RAM is what is short, the refusal still names the amount (one A10G: 48 GB assumed, 168 needed)
    with pytest.raises(PlanError) as e:
        _plan(model, "1xA10G", "model_max_length=8192", method="fft")
    assert "would need ~168 GB of host RAM per node, which has 48 GB assumed" in str(e.value)
    assert "-o host_memory_gb=169 if it has that much" in str(e.value)


@pytest.mark.parametrize(
    ("config", "kind", "context"),
    [
        ({"max_position_embeddings": 4096}, "llama", 4096),
        ({"max_position_embeddings": 4096, "rope_scaling": {"type": "linear", "factor": 4.0}}, "llama", 16384),
        (  # Qwen2.5's YaRN, as its model card says to add it
            {
                "max_position_embeddings": 32768,
                "rope_scaling": {"factor": 4.0, "original_max_position_embeddings": 32768, "type": "yarn"},
            },
            "qwen2",
            131072,
        ),
        (  # transformers 5's config.to_dict()
            {"max_position_embeddings": 2048, "rope_parameters": {"rope_type": "dynamic", "factor": 2.0}},
            "llama",
            4096,
        ),
        (LLAMA_31_8B, "llama", 131072),  # llama3's scaling is in max_position_embeddings already
        ({"max_position_embeddings": 131072, "rope_scaling": {"rope_type": "linear", "factor": 8.0}}, "gemma3", 131072),
        ({"max_position_embeddings": 4096, "rope_parameters": {"rope_type": "default", "rope_theta": 1e4}}, "", 4096),
        ({"max_position_embeddings": 4096, "rope_scaling": {"type": "linear", "factor": True}}, "llama", 4096),
        ({}, "llama", 0),
    ],
)
def test_the_context_is_max_position_embeddings_stretched_by_a_rope_scaling(config, kind, context):
    assert scaled_context(config, kind) == context


def test_a_config_that_scales_rope_plans_past_max_position_embeddings_without_a_note(tmp_path):
    """lmsys/vicuna-7b-v1.5-16k's config: max_position_embeddings 4,096 and linear RoPE scaling x4. Its 16,384-token
    runs were told to cut rows to 4,096 'unless you are extending its context', which its config does."""
    plain = write_model_config(tmp_path / "llama2", **LLAMA_2_7B)
    scaled = write_model_config(tmp_path / "llama2-16k", **LLAMA_2_7B, rope_scaling={"type": "linear", "factor": 4.0})
    over = "model_max_length 16384 is over the model's context of 4096 tokens"
    assert any(over in n for n in _plan(plain, "1xH100", "model_max_length=16384").notes)
    assert not any("context" in n for n in _plan(scaled, "1xH100", "model_max_length=16384").notes)
    assert any(
        "model_max_length 32768 is over the model's context of 16384 tokens" in n
        for n in _plan(scaled, "1xH100", "model_max_length=32768").notes
    )


def test_rope_scaling_as_a_run_key_says_how_to_extend_a_context(tmp_path):
    """axolotl's rope_scaling: {type: linear, factor: 4} (and LLaMA-Factory's rope_scaling: linear) were refused as an
    unknown key and nothing more: a user extending a 4k model to 16k had no way named."""
    for given in (["rope_scaling=linear"], ["rope_scaling={type: linear, factor: 4.0}"]):
        with pytest.raises(FtctlError) as e:
            make_spec(given, model_name_or_path="lmsys/vicuna-7b-v1.5")
        said = str(e.value)
        assert "Unknown key 'rope_scaling' (-o). Not a run key" in said
        assert "add rope_scaling to DIR/config.json" in said and "--model DIR -o model_max_length=N" in said


def test_the_trainers_over_context_warning_counts_the_configs_rope_scaling(tiny_model_dir, tmp_path):
    """The trainer's own warning (trainer/run.over_context) reads the context as the plan does: a copy of the tiny model
    (512 positions) whose config stretches RoPE linearly x4 trains 2,048-token rows without it, and is warned past that
    with the stretched context named."""
    import json
    import shutil

    from ftctl.spec import build
    from ftctl.trainer.run import over_context

    scaled = tmp_path / "scaled"
    shutil.copytree(tiny_model_dir, scaled)
    config = json.loads((scaled / "config.json").read_text())
    assert config["max_position_embeddings"] == 512
    config["rope_scaling"] = {"rope_type": "linear", "factor": 4.0}
    (scaled / "config.json").write_text(json.dumps(config))
    spec = {"model_name_or_path": str(scaled), "gpus": "cpu"}
    assert over_context(build({**spec, "model_max_length": 2048})) is None
    said = over_context(build({**spec, "model_max_length": 4096}))
    assert said.startswith("model_max_length 4096 is over the model's context of 2048 tokens"), said
    assert "RoPE scaling" in said and "-o model_max_length=2048" in said
