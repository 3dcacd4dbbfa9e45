"""The step time of full fine-tuning and of sdpa, as measured on an H100 (bench/NOTES.md v112, helper 286).

fft's step took lora's time on the 1B shape (its 6 x params ran at 0.53 of peak, lora's 4 x at 0.35): plan.FULL_MFU.
sdpa under a mask computes every score (no causal skipping) at torch's memory-efficient kernel's speed
(plan.MASKED_ATTENTION_MFU); a packed micro-batch is ONE row of micro x model_max_length tokens (TRL's padding-free
collator), whose (row x row) mask v112 recorded; an unpacked micro-batch of several rows gets their padding mask.
The expected values are the formula written out (PaLM's 12 x layers x q_width x tokens, halved where causal
blocks are skipped), not read from plan.py's functions; no timing here."""

from __future__ import annotations

import pytest

from ftctl.gpus import TIERS
from ftctl.plan import (
    ADAPTER_MFU,
    ATTENTION_MFU,
    FULL_MFU,
    MASKED_ATTENTION_MFU,
    attention_flops,
    make_plan,
    micro_batch_seconds,
)
from tests.render_fixtures import make_spec

LLAMA_8B = "meta-llama/Llama-3.1-8B"
LAYERS, Q_WIDTH, PARAMS = 32, 32 * 128, 8.03e9
BLOCKS = PARAMS - 128256 * 4096  # its blocks: less one embedding (its config unread: counted tied, the larger)
ADAPTER_8B = 0.54  # an adapter's weights' speed at the 8B's 4,096 wide GEMMs (v117, H100: 0.544)
H100 = 989e12
ONE_SPEED = 0.35  # every weight's speed before v112 (fft) and v117 (adapters by width): the 1B lora's (v110)


def _plan(method: str, gpus: str, length: int, *more: str):
    spec = make_spec([f"model_max_length={length}", *more], model_name_or_path=LLAMA_8B, method=method, gpus=gpus)
    return spec, make_plan(spec)


def _step(plan, length: int, weights: float, w_mfu: float, attention: float, a_mfu: float) -> float:
    peak = plan.world_size * TIERS[plan.tier].peak_tflops * 1e12
    if plan.gradient_checkpointing:  # each block's forward again in the backward: 2 x its weights, attention's third
        weights, attention = weights + 2 * BLOCKS, attention * 4 / 3
    passes = plan.gradient_accumulation_steps * micro_batch_seconds(plan)  # the trained weights, each micro-batch
    return plan.global_batch_size * length * (weights / w_mfu + attention / a_mfu) / peak + passes


def _row(spec, plan) -> str:
    return next(line for line in plan.table(spec).splitlines() if line.startswith("step time "))


def test_the_measured_speeds():
    assert TIERS["H100"].peak_tflops * 1e12 == H100
    assert (ADAPTER_MFU[0][1], ATTENTION_MFU, FULL_MFU, MASKED_ATTENTION_MFU) == (ONE_SPEED, 0.26, 0.53, 0.14)
    assert dict(ADAPTER_MFU)[4096] == ADAPTER_8B


@pytest.mark.parametrize("method, weights, speed", [("fft", 6, FULL_MFU), ("lora", 4, ADAPTER_8B)])
def test_full_updates_run_their_weights_at_full_mfu(method, weights, speed):
    """fft: 6 x params at FULL_MFU (v112: 1.02 / 1.35 / 1.72 s at 2k / 8k / 16k, the plan 1.03 / 1.34 / 1.75; at
    MFU it said 1.51 / 1.81 / 2.23); adapters at their width's speed, 8B's 0.54 (sft: tests/test_plan_sft61.py). Attention at ATTENTION_MFU for
    all (varlen)."""
    spec, plan = _plan(method, "8xH100", 32768)
    assert plan.attn_implementation == "varlen"
    attention = 12 * LAYERS * Q_WIDTH * 32768 / 2
    assert attention_flops(plan, 32768) == attention
    assert plan.step_s == pytest.approx(_step(plan, 32768, weights * PARAMS, speed, attention, ATTENTION_MFU), abs=1e-3)
    assert f"est. at {speed:.0%} of the GPUs' 16-bit peak (26% for attention)" in _row(spec, plan)


def test_a_full_fine_tune_is_now_about_a_third_quicker_than_it_was_said():
    spec, plan = _plan("fft", "8xH100", 2048)
    old = _step(plan, 2048, 6 * PARAMS, ONE_SPEED, 12 * LAYERS * Q_WIDTH * 2048 / 2, ATTENTION_MFU)
    assert 0.66 < plan.step_s / old < 0.70


def test_a_packed_sdpa_micro_batch_is_one_row_of_every_score():
    """-o packing=true under sdpa: the micro-batch's sequences in one row, its (row x row) scores all computed at the
    masked kernel's speed (v112: 2k rows, micro-batch 4 -> an 8,160-token row, 2.11 s; the plan 2.46 s, where
    counting 2,048-token rows said 1.14 s)."""
    spec, plan = _plan("lora", "1xH100", 2048, "attn_implementation=sdpa", "packing=true")
    micro = plan.per_device_train_batch_size
    assert plan.packing and micro > 1
    attention = 12 * LAYERS * Q_WIDTH * micro * 2048
    assert attention_flops(plan, 2048) == attention
    expected = _step(plan, 2048, 4 * PARAMS, ADAPTER_8B, attention, MASKED_ATTENTION_MFU)
    assert plan.step_s == pytest.approx(expected, abs=1e-3)
    assert (
        f"counted over whole {micro * 2048:,}-token rows (sdpa computes every score of a packed row, a micro-batch's "
        f"{micro} x 2,048 tokens, masked or not)" in _row(spec, plan)
    )
    assert "(14% for attention)" in _row(spec, plan)


def test_an_unpacked_sdpa_micro_batch_of_several_rows_gets_their_padding_mask():
    """sdpa's default: not packed, rows padded to the micro-batch's longest, so a (rows, 1, S, S) mask and every
    score (v112: 2 x 8k, 2.49 s; the plan 2.46 s, where the causal half at 0.26 said 1.35 s)."""
    spec, plan = _plan("lora", "1xH100", 8192, "attn_implementation=sdpa", "per_device_train_batch_size=2")
    assert not plan.packing and plan.per_device_train_batch_size == 2
    attention = 12 * LAYERS * Q_WIDTH * 8192
    assert attention_flops(plan, 8192) == attention
    assert plan.step_s == pytest.approx(
        _step(plan, 8192, 4 * PARAMS, ADAPTER_8B, attention, MASKED_ATTENTION_MFU), abs=1e-3
    )
    assert (
        "counted over whole 8,192-token rows (sdpa computes every score under a micro-batch's padding mask; rows all "
        "of one length get none, and take less)" in _row(spec, plan)
    )


def test_one_unpacked_sdpa_row_has_no_mask_and_keeps_the_causal_half():
    """A micro-batch of one row: no padding, transformers passes is_causal (v112 recorded it): the causal half at
    ATTENTION_MFU, as varlen."""
    spec, plan = _plan("lora", "1xH100", 8192, "attn_implementation=sdpa", "per_device_train_batch_size=1")
    attention = 12 * LAYERS * Q_WIDTH * 8192 / 2
    assert attention_flops(plan, 8192) == attention
    assert plan.step_s == pytest.approx(_step(plan, 8192, 4 * PARAMS, ADAPTER_8B, attention, ATTENTION_MFU), abs=1e-3)
    assert "counted at 8,192-token rows (model_max_length, an upper bound" in _row(spec, plan)
