"""The plan's step time counts attention's own FLOPs (explore57 finding 8): at long context they outweigh the weights',
and a step time linear in tokens put a 128k run's checkpoints hours apart and its price several times low.

The expected values here are written from the formula, not from plan.py: PaLM's model FLOPs a token (Chowdhery et al.
2022, appendix B) are 6 N + 12 L H Q T, L layers, H heads of Q dims, T tokens of context; a causal mask halves the
second term (a token attends to those before it). Adapters skip the weight gradients (4 N, not 6 N); attention has no
weights, so its term stays whole. Llama-3-8B's shape (its config.json): 32 layers, 32 heads of 128, 8.03B params."""

from __future__ import annotations

import math

import pytest

from ftctl.gpus import TIERS
from ftctl.plan import (
    ADAPTER_MFU,
    ATTENTION_MFU,
    CHECKPOINT_MINUTES,
    FULL_MFU,
    attention_flops,
    make_plan,
    micro_batch_seconds,
    tokens_per_second,
)
from ftctl.preflight import train_seconds
from ftctl.sky.cost import describe
from tests.render_fixtures import make_spec

LLAMA_8B = "meta-llama/Llama-3.1-8B"
LAYERS, HEADS, HEAD_DIM, PARAMS = 32, 32, 128, 8.03e9
H100_FLOPS = 989e12  # the H100 SXM sheet's dense bf16 tensor peak


def _plan(length: int, method: str = "lora", gpus: str = "8xH100", *more: str):
    spec = make_spec([f"model_max_length={length}", *more], model_name_or_path=LLAMA_8B, method=method, gpus=gpus)
    return spec, make_plan(spec)


def _palm_causal(length: int) -> float:
    return 12 * LAYERS * HEADS * HEAD_DIM * length / 2


def _seconds(plan, length: int, weights: float, attention: float = 0.0) -> float:
    """A step of the plan's global batch of ``length``-token rows at ``weights`` + ``attention`` FLOPs a token, the
    weights' at MFU of its GPUs' peak (FULL_MFU for a full update's 6 N: bench/NOTES.md v112) and attention's at
    ATTENTION_MFU (slower: measured, bench/NOTES.md v110)."""
    speed = _weights_mfu(weights)
    weights, attention = _recomputed(plan, weights, attention)
    passes = plan.gradient_accumulation_steps * micro_batch_seconds(plan)  # the trained weights, each micro-batch
    return (
        plan.global_batch_size * length * (weights / speed + attention / ATTENTION_MFU) / (plan.world_size * H100_FLOPS)
        + passes
    )


def _recomputed(plan, weights: float, attention: float) -> tuple[float, float]:
    """Under gradient checkpointing each block's forward runs again in the backward: 2 x its weights (the 8B's less
    one embedding: its config unread, counted tied, the larger) and attention's forward third once more."""
    if not plan.gradient_checkpointing:
        return weights, attention
    return weights + 2 * (PARAMS - 128256 * 4096), attention * 4 / 3


def _weights_mfu(weights: float) -> float:
    return FULL_MFU if weights == 6 * PARAMS else dict(ADAPTER_MFU)[4096]  # an adapter's at the 8B's width (v117)


def _row(spec, plan, name: str) -> str:
    return next(line for line in plan.table(spec).splitlines() if line.startswith(f"{name} "))


@pytest.mark.parametrize("method,weights", [("fft", 6), ("lora", 4)])
def test_short_rows_take_about_what_the_weights_alone_said(method, weights):
    """At 2,048 tokens attention is a few % of an 8B's FLOPs: the step time moves that much (at attention's slower
    speed, up to ~11% for an adapter's 4 N at its 8B speed), no more."""
    assert TIERS["H100"].peak_tflops * 1e12 == H100_FLOPS
    spec, plan = _plan(2048, method)
    linear = _seconds(plan, 2048, weights * PARAMS)  # the estimate before attention was counted
    assert plan.step_s == pytest.approx(_seconds(plan, 2048, weights * PARAMS, _palm_causal(2048)), abs=0.001)
    assert 1.0 < plan.step_s / linear < 1.12


@pytest.mark.parametrize("method,weights", [("fft", 6), ("lora", 4)])
def test_a_128k_step_counts_attention_as_the_formula_says(method, weights):
    spec, plan = _plan(131072, method)
    assert (plan.model.layers, plan.model.attention_heads, plan.model.q_width) == (LAYERS, HEADS, HEADS * HEAD_DIM)
    assert attention_flops(plan, 131072) == _palm_causal(131072) == pytest.approx(1.031e11, rel=1e-3)
    expected = _seconds(plan, 131072, weights * PARAMS, _palm_causal(131072))
    assert plan.step_s == pytest.approx(expected, abs=0.001)
    assert plan.step_s > 3 * _seconds(plan, 131072, weights * PARAMS)  # what the plan said before: 3-4x low
    rate = tokens_per_second(plan, 131072)
    assert rate == pytest.approx(plan.global_batch_size * 131072 / expected, rel=1e-6)
    # the plan's row says it, and why it is an upper bound
    counted = _recomputed(plan, weights * PARAMS, _palm_causal(131072))
    share = counted[1] / sum(counted)
    assert _row(spec, plan, "step time") == (
        f"step time      ~{expected:.0f} s est. at {_weights_mfu(weights * PARAMS):.0%} of the GPUs' 16-bit peak ({ATTENTION_MFU:.0%} for attention); "
        f"attention is {share:.0%} of the "
        "FLOPs, counted at 131,072-token documents (model_max_length, an upper bound: shorter packed documents take "
        "less)"
    )


def test_a_32k_step_is_in_between():
    spec, plan = _plan(32768, "fft")
    assert plan.step_s == pytest.approx(_seconds(plan, 32768, 6 * PARAMS, _palm_causal(32768)), abs=0.001)
    assert "attention is 35% of the FLOPs, counted at 32,768-token documents" in _row(spec, plan, "step time")


def test_checkpoints_are_spaced_by_the_longer_step():
    """lora at 128k on 8 H100s: an adapter writes in a second, so 30 minutes of training decide the cadence: ~5 steps
    of ~326 s (attention at its own, slower speed; under gradient checkpointing, its forward twice), where a step of
    the weights' FLOPs alone made it 36 (35 before the recompute was counted, and the 8B's adapter speed)."""
    spec, plan = _plan(131072, "lora")
    step = _seconds(plan, 131072, 4 * PARAMS, _palm_causal(131072))
    assert plan.save_steps == math.floor(CHECKPOINT_MINUTES * 60 / step) == 5
    assert math.floor(CHECKPOINT_MINUTES * 60 / _seconds(plan, 131072, 4 * PARAMS)) == 38  # the old one: 35
    assert _row(spec, plan, "checkpoints").startswith(f"checkpoints    every 5 steps (~27 min at ~{step:.0f} s a step")


def test_the_price_follows_the_step_time():
    spec, plan = _plan(131072, "fft", "8xH100", "max_steps=100")
    step = _seconds(plan, 131072, 6 * PARAMS, _palm_causal(131072))
    assert train_seconds(spec, plan) == pytest.approx(100 * step, rel=1e-4)
    best = {"cloud": "GCP", "region": "us-central1", "instance_type": "a3-highgpu-8g", "spot": False}
    total = describe({**best, "hourly_per_node": 90.0}, spec, plan).splitlines()[1]
    hours = 100 * step / 3600
    rate = plan.global_batch_size * 131072 / step
    assert total.startswith(f"est. total     ${hours * 90:,.2f} for ~{hours:.2f} h of training"), total
    assert (
        f"tokens at ~{rate:,.0f} tokens/s, {FULL_MFU:.0%} of peak assumed ({ATTENTION_MFU:.0%} for attention); attention is 69% of the FLOPs"
        in total
    ), total


def test_unpacked_rows_and_masked_packing_are_said_as_what_they_count():
    """Unpacked rows: one document each, model_max_length the longest. A packed row under sdpa's block-diagonal mask
    (V100: no FlashAttention) has all of its (row x row) scores computed: attention not halved."""
    spec, plan = _plan(8192, "lora", "1xH100", "packing=false")
    assert attention_flops(plan, 8192) == _palm_causal(8192)
    assert "counted at 8,192-token rows (model_max_length, an upper bound: shorter rows take less)" in _row(
        spec, plan, "step time"
    )
    spec, plan = _plan(8192, "qlora", "1xV100", "packing=true")
    assert plan.attn_implementation == "sdpa" and plan.packing
    assert attention_flops(plan, 8192) == 2 * _palm_causal(8192)
    assert (
        "counted over whole 8,192-token rows (sdpa computes every score of a packed row, a micro-batch's 1 x 8,192 "
        "tokens, masked or not)" in _row(spec, plan, "step time")
    )


def test_no_step_time_row_on_cpu():
    spec = make_spec([], model_name_or_path="HuggingFaceTB/SmolLM2-135M-Instruct", method="lora", gpus="cpu")
    plan = make_plan(spec)
    assert plan.step_s is None and not any(line.startswith("step time") for line in plan.table(spec).splitlines())
