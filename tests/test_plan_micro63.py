"""Each micro-batch passes the trained weights through memory beyond its matmuls (plan.micro_batch_seconds): the fp32
masters cast for the forward, each gradient added into the accumulated one. v117, H100: fft of the 3B shape at
micro-batch 2 (16 micro-batches a step) took 3.10 s a step where its FLOPs alone planned 2.68 (0.86x); the 1B's rows
at 2 micro-batches a step stay within a few percent. Measured numbers are bench/NOTES.md's (v112, v113, v117)."""

from __future__ import annotations

import pytest

from ftctl import gpus
from ftctl.plan import MICRO_BATCH_BYTES, make_plan, micro_batch_seconds
from tests.render_fixtures import make_spec
from tests.test_plan_v117 import _plan, shapes  # noqa: F401 (the module fixture)


@pytest.mark.parametrize(
    "shape, length, more, measured",
    [
        ("3b", 2048, ["per_device_train_batch_size=2"], 3.097),  # v117: 16 micro-batches
        ("1b", 2048, [], 1.0217),  # v112: 2 micro-batches of 16
        ("1b", 2048, [], 1.0792),  # v113: the same row again
        ("1b", 8192, [], 1.3537),  # v112
        ("1b", 16384, [], 1.7215),  # v112
    ],
)
def test_fft_steps_are_the_measured_within_6_percent_at_any_micro_batch(shapes, shape, length, more, measured):  # noqa: F811
    plan = _plan(shapes[shape], "fft", length, *more)
    assert plan.step_s == pytest.approx(measured, rel=0.06)


def test_fewer_larger_micro_batches_plan_a_shorter_fft_step(shapes):  # noqa: F811
    """The same tokens a step in 16 micro-batches of 2 or 8 of 4: the FLOPs are the same, the weights' passes not."""
    small, large = (
        _plan(shapes["3b"], "fft", 2048, f"per_device_train_batch_size={n}", "gradient_checkpointing=false")
        for n in (2, 4)
    )
    assert (small.gradient_accumulation_steps, large.gradient_accumulation_steps) == (16, 8)
    passes = micro_batch_seconds(small)
    assert passes == pytest.approx(small.trainable_params_b * 1e9 * MICRO_BATCH_BYTES / 3.35e12)
    assert small.step_s - large.step_s == pytest.approx(8 * passes, abs=0.002)


def test_sharded_strategies_pass_each_gpus_shard_and_adapters_hardly_any(shapes):  # noqa: F811
    """fft of the 8B on 8 H100s shards its gradients (ZeRO-2, -3 or FSDP): each GPU passes an eighth of them."""
    spec = make_spec(["model_max_length=2048"], model_name_or_path=shapes["8b"], method="fft", gpus="8xH100")
    sharded = make_plan(spec)
    assert sharded.strategy in ("zero2", "zero3", "fsdp"), sharded.strategy
    whole = sharded.trainable_params_b * 1e9 * MICRO_BATCH_BYTES / 3.35e12
    assert micro_batch_seconds(sharded) == pytest.approx(whole / 8 if sharded.strategy != "fsdp" else whole)
    fsdp = make_plan(make_spec(["model_max_length=2048", "strategy=fsdp", "global_batch_size=64",
                                "per_device_train_batch_size=1"], model_name_or_path=shapes["8b"], method="fft",
                               gpus="8xH100"))  # fmt: skip
    assert fsdp.gradient_accumulation_steps == 8
    assert micro_batch_seconds(fsdp) == pytest.approx(whole)  # FSDP2 accumulates unsharded gradients (no_sync)
    lora = _plan(shapes["8b"], "lora", 2048)
    assert micro_batch_seconds(lora) < 0.01 * whole
    assert all(t.memory_tbps >= 0.2 for t in gpus.TIERS.values())  # every card has its bandwidth (RTX3060-8GB: 0.24)
