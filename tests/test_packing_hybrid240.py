"""Packing models whose layers are not all attention (explore47): linear-attention and state-space layers carry a
state along the row, so a packed row's documents stay apart only where CUDA kernels take the boundaries."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from ftctl.errors import FtctlError
from ftctl.trainer import attention
from ftctl.trainer.attention import SDPA, VARLEN


def test_hybrid_models_are_not_packed_by_default():
    """The plan's default (plan.py asks default_packing): varlen attention packs an attention-only model, never one
    with recurrent layers, whose exactness depends on kernels the node may not have."""
    assert attention.default_packing(VARLEN, "qwen3") and attention.default_packing(VARLEN, "llama4")
    for model_type in (
        "qwen3_5",
        "qwen3_5_moe_text",
        "qwen3_next",
        "granitemoehybrid",
        "falcon_h1",
        "kimi_linear",
    ):
        assert not attention.default_packing(VARLEN, model_type), model_type
    assert not attention.default_packing(SDPA, "qwen3")


def test_a_packed_hybrid_run_is_refused_before_the_model_loads(monkeypatch):
    """On CPU, transformers' torch paths take no boundaries: refused in one line naming the fix (before, the run
    stopped at its first step with transformers' ValueError, after the data and the model were loaded)."""
    with pytest.raises(FtctlError) as e:
        attention.resolve(SDPA, "qwen3_5_text", on_cpu=True, packed=True)
    assert "packing is not exact for qwen3_5_text on CPU" in str(e.value)
    assert "flash-linear-attention and causal-conv1d on a CUDA GPU: -o packing=false" in str(e.value)
    assert attention.resolve(SDPA, "qwen3_5_text", on_cpu=True, packed=False).attn_implementation == SDPA
    assert attention.resolve(SDPA, "qwen3", on_cpu=True, packed=True).attn_implementation == SDPA

    # a GPU node: refused while a kernel that takes the boundaries does not import, taken where all do
    monkeypatch.setattr(attention, "missing_boundary_kernels", lambda model_type: ("mamba-ssm",))
    with pytest.raises(
        FtctlError,
        match="needs mamba-ssm and causal-conv1d on the GPU .* pip install mamba-ssm on",
    ):
        attention.resolve(SDPA, "granitemoehybrid", on_cpu=False, packed=True)
    monkeypatch.setattr(attention, "missing_boundary_kernels", lambda model_type: ())
    assert attention.resolve(SDPA, "falcon_h1", on_cpu=False, packed=True).attn_implementation == SDPA
    # Granite 4 hybrid's mask leaves the position ids out: packed only under varlen attention
    with pytest.raises(
        FtctlError,
        match="packing granitemoehybrid under sdpa attention would let its documents",
    ):
        attention.resolve(SDPA, "granitemoehybrid", on_cpu=False, packed=True)
    monkeypatch.setattr(attention, "runnable", lambda *a, **k: attention.TORCH_VARLEN)
    kernels = attention.resolve(VARLEN, "granitemoehybrid", on_cpu=False, packed=True)
    assert kernels.attn_implementation == attention.TORCH_VARLEN
    # Kimi Linear: transformers hands its KDA layers no cu_seqlens, whatever is installed
    with pytest.raises(
        FtctlError,
        match="packing is not exact for kimi_linear: .* no document boundaries",
    ):
        attention.resolve(SDPA, "kimi_linear", on_cpu=False, packed=True)


def test_missing_boundary_kernels_without_a_gpu():
    assert attention.missing_boundary_kernels("qwen3_5") == (
        "flash-linear-attention",
        "causal-conv1d",
    )
    assert attention.missing_boundary_kernels("qwen3") == ()


def test_every_recurrent_model_type_of_transformers_is_known():
    """A transformers upgrade that brings a model with linear-attention or state-space layers must add it to
    RECURRENT_MODEL_TYPES, or it would be packed by default (read from the modeling code: no model is built)."""
    from transformers.models.auto.configuration_auto import model_type_to_module_name
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
    )

    marker = re.compile(r"causal_conv1d|selective_scan|gated_delta_rule|mamba_chunk_scan|recurrent_state|_kda\b")
    recurrent = set()
    for model_type in set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES) | set(MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES):
        spec = importlib.util.find_spec(f"transformers.models.{model_type_to_module_name(model_type)}")
        if spec and any(marker.search(f.read_text()) for f in Path(spec.origin).parent.glob("modeling_*.py")):
            recurrent.add(model_type)
    assert {
        "qwen3_5",
        "granitemoehybrid",
        "kimi_linear",
        "falcon_h1",
    } <= recurrent  # the marker finds them
    assert recurrent <= attention.RECURRENT_MODEL_TYPES, sorted(recurrent - attention.RECURRENT_MODEL_TYPES)
    assert not recurrent & {"qwen3", "llama4", "gemma3", "gemma4", "llama"}


def _llama4(**fields):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(
        "llama4_text", hidden_size=32, intermediate_size=64, intermediate_size_mlp=64, num_hidden_layers=4,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, num_local_experts=2, num_experts_per_tok=1,
        interleave_moe_layer_step=4, no_rope_layer_interval=4, vocab_size=64, pad_token_id=0, **fields,
    )  # fmt: skip
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg, attn_implementation=attention.TORCH_VARLEN).eval()


def test_llama4_past_its_chunk_or_floor_scale_is_refused_by_the_varlen_attention():
    """Llama 4's chunked layers (attention_chunk_size: 8192) under ftctl's varlen attention attended to the whole
    document, silently (logits 0.56 off eager's on a tiny model); its NoPE layers' query scaling reads the place in
    the row, which packing moves past floor_scale (8192). Scaled down to 8 here: refused at the step, in one line."""
    import torch

    attention.register_varlen(attention.TORCH_VARLEN, masks=False)
    ids = torch.arange(2, 23)[None]  # 21 tokens
    with torch.no_grad():
        with pytest.raises(
            FtctlError,
            match="chunked attention layers attend within 8-token chunks, .* a 21-token document",
        ):
            _llama4(attention_chunk_size=8)(input_ids=ids, use_cache=False)
        model = _llama4(attention_chunk_size=64, floor_scale=8)
        model(input_ids=ids, use_cache=False)  # one document: its own place in the row
        cu = torch.tensor([0, 13, 21], dtype=torch.int32)
        packed = dict(
            cu_seq_lens_q=cu,
            cu_seq_lens_k=cu,
            max_length_q=13,
            max_length_k=13,
            use_cache=False,
        )
        position_ids = torch.cat([torch.arange(13), torch.arange(8)])[None]
        with pytest.raises(
            FtctlError,
            match="NoPE layers scale .* from its token 8 on .* packed row of 21 tokens",
        ):
            model(input_ids=ids, position_ids=position_ids, **packed)


# Qwen3.5's text model (Qwen/Qwen3.5-*'s text_config: numbers only, 4 layers): 3 Gated DeltaNet layers, 1 attention
QWEN35 = dict(
    model_type="qwen3_5_text", hidden_size=2048, intermediate_size=6144, num_hidden_layers=4, num_attention_heads=16,
    num_key_value_heads=2, head_dim=256, vocab_size=248320, linear_num_key_heads=16, linear_num_value_heads=32,
    linear_key_head_dim=128, linear_value_head_dim=128, linear_conv_kernel_dim=4, max_position_embeddings=262144,
    layer_types=["linear_attention", "linear_attention", "linear_attention", "full_attention"],
)  # fmt: skip


def test_the_plan_packs_no_hybrid_model_and_refuses_it_on_cpu(tmp_path):
    """ftctl plan --gpus 1xH100 of Qwen3.5: varlen attention without packing (before: "+ packing", and the run
    stopped at its first step without flash-linear-attention and causal-conv1d); -o packing=true is left to the
    node's kernels on a GPU, refused on CPU before the job; Granite 4 hybrid refused where the plan's attention is
    sdpa (a V100)."""
    import json

    from ftctl.plan import make_plan
    from tests.render_fixtures import make_spec

    (tmp_path / "config.json").write_text(json.dumps(QWEN35))
    plan = make_plan(make_spec(model=str(tmp_path), method="lora"), "1xH100")
    assert plan.attn_implementation == VARLEN and not plan.packing
    assert make_plan(make_spec(["packing=true"], model=str(tmp_path), method="lora"), "1xH100").packing
    with pytest.raises(
        FtctlError,
        match="packing is not exact for qwen3_5_text on CPU: .* -o packing=false",
    ):
        make_plan(make_spec(["packing=true"], model=str(tmp_path), method="lora"), "cpu")
    (tmp_path / "config.json").write_text(json.dumps({**QWEN35, "model_type": "granitemoehybrid"}))
    assert make_plan(make_spec(["packing=true"], model=str(tmp_path), method="lora"), "1xH100").packing
    with pytest.raises(FtctlError, match="packing granitemoehybrid under sdpa attention"):
        make_plan(
            make_spec(["packing=true"], model=str(tmp_path), method="lora"),
            "1xV100-32GB",
        )


def _fla_here(monkeypatch, hopper: bool, triton_ok: bool | None, tilelang: bool = False, version: str = "0.6.0"):
    """fla's facts (its version, its fla.utils flags, its TileLang backend's can_use), a CUDA GPU and transformers
    taking fla, as on a GPU node: none of them exists on this machine (no GPU, no fla), so they are put at their
    outermost boundary. ``triton_ok`` None: an fla without the TRITON_ABOVE_3_7_1 flag (0.5)."""
    import sys
    import types

    import transformers.utils

    fla = types.ModuleType("fla")
    fla.__version__ = version
    utils = types.ModuleType("fla.utils")
    utils.IS_NVIDIA_HOPPER, utils.TRITON_ABOVE_3_4_0 = hopper, True
    if triton_ok is not None:
        utils.TRITON_ABOVE_3_7_1 = triton_ok
    backends = types.ModuleType("fla.ops.common.backends.tilelang")
    backends.CommonTileLangBackend = type("CommonTileLangBackend", (), {"can_use": classmethod(lambda cls: tilelang)})
    fla.utils = utils
    monkeypatch.setitem(sys.modules, "fla", fla)
    monkeypatch.setitem(sys.modules, "fla.utils", utils)
    for name in ("fla.ops", "fla.ops.common", "fla.ops.common.backends"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    sys.modules["fla.ops.common.backends"].tilelang = backends
    monkeypatch.setitem(sys.modules, "fla.ops.common.backends.tilelang", backends)
    monkeypatch.setattr(transformers.utils, "is_flash_linear_attention_available", lambda: True)


def test_fla_that_would_stop_the_first_backward_is_refused_before_the_model_loads(monkeypatch):
    """v104: an unpacked Qwen3.5 launch with fla 0.6.0 on an H100 (torch 2.11's Triton) stopped at its first step,
    minutes of autotuning in, with fla's RuntimeError about its gated backward on Hopper. Now resolve() (before the
    model loads) says it in one line with the three ways out; not where tilelang or a new Triton runs it, not on
    another GPU, not for a model without Gated DeltaNet layers, not on CPU."""
    _fla_here(monkeypatch, hopper=True, triton_ok=False)
    with pytest.raises(FtctlError) as e:
        attention.resolve(SDPA, "qwen3_5_text", on_cpu=False, packed=False)
    said = str(e.value)
    assert said.startswith("flash-linear-attention 0.6.0 cannot train qwen3_5_text on this Hopper GPU with Triton ")
    for way_out in ("pip install tilelang", "Triton is 3.7.1 or newer", "pip uninstall flash-linear-attention"):
        assert way_out in said
    assert "\n" not in said
    for model_type in ("qwen3_5", "qwen3_next", "olmo_hybrid"):
        assert attention.fla_training_problem(model_type, on_cpu=False)
    for model_type in ("kimi_linear", "falcon_h1", "qwen3", None):
        assert attention.fla_training_problem(model_type, on_cpu=False) is None, model_type
    assert attention.fla_training_problem("qwen3_5_text", on_cpu=True) is None
    _fla_here(monkeypatch, hopper=True, triton_ok=True)
    assert attention.fla_training_problem("qwen3_5_text", on_cpu=False) is None
    _fla_here(monkeypatch, hopper=False, triton_ok=False)
    assert attention.fla_training_problem("qwen3_5_text", on_cpu=False) is None
    _fla_here(monkeypatch, hopper=True, triton_ok=False, tilelang=True)
    assert attention.fla_training_problem("qwen3_5_text", on_cpu=False) is None
    # fla 0.5 refuses every Triton from 3.4.0 (no TRITON_ABOVE_3_7_1 flag); 0.4 refuses none
    _fla_here(monkeypatch, hopper=True, triton_ok=None, version="0.5.0")
    assert attention.fla_training_problem("qwen3_5_text", on_cpu=False).startswith("flash-linear-attention 0.5.0 ")
    _fla_here(monkeypatch, hopper=True, triton_ok=None, version="0.5.0.dev0")  # review-57b N5: a 0.5 dev build
    assert attention.fla_training_problem("qwen3_5_text", on_cpu=False)
    _fla_here(monkeypatch, hopper=True, triton_ok=None, version="0.4.2")
    assert attention.fla_training_problem("qwen3_5_text", on_cpu=False) is None
