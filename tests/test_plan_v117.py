"""The plan against what ftctl's trainer measured on an H100 in v117 (bench/NOTES.md; bench/longctx_step_gpu.py, 65,536
tokens a step, documents of the row's length): lora's weights run faster on wider models (0.349 of peak at a hidden
size of 2,048, 0.445 at 3,072, 0.544 at 4,096: plan.ADAPTER_MFU), qlora at lora's step, and under gradient
checkpointing each block the backward reaches runs its forward again. Each measured number is v117's; before these
changes the plan said 1.49x the 8B's lora step, 0.76x the checkpointed tied sft step, and planned sft's memory under
checkpointing under the tied peaks."""

from __future__ import annotations

import json

import pytest

from ftctl.plan import ADAPTER_MFU, adapter_mfu, flops_per_token, make_plan
from tests.render_fixtures import make_spec

LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "torch_dtype": "bfloat16", "vocab_size": 128256}
SHAPES = {  # bench/gpu_train.py's (the 1B with Llama 3.2 1B's 131,072 positions, as longctx_step_gpu.py runs it)
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32, head_dim=64,
               num_key_value_heads=8, max_position_embeddings=131072, tie_word_embeddings=True),
    "1b-untied": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                      head_dim=64, num_key_value_heads=8, max_position_embeddings=131072, tie_word_embeddings=False),
    "3b": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
               num_key_value_heads=8, max_position_embeddings=131072, tie_word_embeddings=True),
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, max_position_embeddings=8192, tie_word_embeddings=False),
}  # fmt: skip


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    dirs = {}
    for name, shape in SHAPES.items():
        path = tmp_path_factory.mktemp(name)
        (path / "config.json").write_text(json.dumps({**LLAMA, **shape}))
        dirs[name] = str(path)
    return dirs


def _plan(model: str, method: str, length: int, *more: str):
    overrides = [f"model_max_length={length}", f"global_batch_size={65536 // length}", *more]
    overrides += ["trainable_layers=2"] if method == "sft" else []
    return make_plan(make_spec(overrides, model_name_or_path=model, method=method, gpus="1xH100"))


def test_the_adapters_speed_grows_with_the_width_and_stays_within_what_was_measured():
    assert ADAPTER_MFU == ((2048, 0.35), (3072, 0.445), (4096, 0.54))
    assert adapter_mfu(896) == adapter_mfu(2048) == 0.35  # narrower: the narrowest measured
    assert adapter_mfu(2560) == pytest.approx((0.35 + 0.445) / 2)
    assert adapter_mfu(8192) == adapter_mfu(4096) == 0.54  # wider: not extrapolated (a step planned long, not short)


@pytest.mark.parametrize(
    "shape, method, length, measured",
    [
        ("1b", "lora", 2048, 1.0368),
        ("1b", "qlora", 2048, 1.0343),
        ("1b", "qlora", 16384, 1.7511),
        ("3b", "lora", 2048, 2.1747),
        ("8b", "lora", 2048, 4.3488),
        ("8b", "qlora", 2048, 4.492),
        ("8b", "lora", 8192, 5.5553),
    ],
)
def test_adapter_steps_are_v117s_within_5_percent(shapes, shape, method, length, measured):
    """At one speed (0.35) the plan said 1.24x the 3B's step and 1.49x the 8B's."""
    plan = _plan(shapes[shape], method, length)
    assert not plan.gradient_checkpointing
    assert plan.step_s == pytest.approx(measured, rel=0.05)


@pytest.mark.parametrize(
    "shape, length, measured",
    [("1b", 2048, 1.0803), ("1b", 16384, 1.9984), ("1b-untied", 2048, 0.5644), ("1b-untied", 16384, 0.8359)],
)
def test_checkpointed_sft_steps_are_v117s_within_20_percent(shapes, shape, length, measured):
    """The tied head's backward reaches every block, so every block's forward runs again (the plan said 0.82 s and
    1.54 s before it counted that: 0.76x); the untied model's reaches its 2 trained blocks only."""
    plan = _plan(shapes[shape], "sft", length, "gradient_checkpointing=true")
    assert plan.step_s == pytest.approx(measured, rel=0.2)
    if shape == "1b":
        assert plan.step_s == pytest.approx(measured, rel=0.06)


def test_checkpointing_adds_the_forward_of_the_blocks_the_backward_reaches(shapes):
    off = _plan(shapes["1b-untied"], "sft", 2048, "gradient_checkpointing=false")
    on = _plan(shapes["1b-untied"], "sft", 2048, "gradient_checkpointing=true")
    m = on.model
    per_block = (m.params_b - 2 * m.vocab * m.hidden / 1e9) / m.layers * 1e9  # untied: the embedding and the head out
    assert flops_per_token(on, 2048)[0] - flops_per_token(off, 2048)[0] == pytest.approx(2 * 2 * per_block, rel=1e-6)
    lora_off = _plan(shapes["8b"], "lora", 2048, "gradient_checkpointing=false")
    lora_on = _plan(shapes["8b"], "lora", 2048, "gradient_checkpointing=true")
    attention_off, attention_on = flops_per_token(lora_off, 2048)[1], flops_per_token(lora_on, 2048)[1]
    assert attention_on == pytest.approx(attention_off * 4 / 3)


@pytest.mark.parametrize(
    "shape, length, measured",
    [("1b", 2048, 14.89), ("1b", 16384, 18.3), ("1b-untied", 2048, 13.36), ("1b-untied", 16384, 15.78)],
)
def test_checkpointed_sft_memory_is_over_v117s_peak_by_under_20_percent(shapes, shape, length, measured):
    """The tied peaks were planned 1.5% and 3.8% under (the head's gradient, made first, counted as freeing the blocks'
    inputs), the untied 19-20% over (the inputs of frozen blocks the backward never reaches counted)."""
    plan = _plan(shapes[shape], "sft", length, "gradient_checkpointing=true")
    planned = plan.memory_gb * 1e9 / 2**30
    assert measured < planned < measured * 1.2


@pytest.mark.parametrize(
    "shape, method, measured",
    [("1b", "lora", 1.4119), ("1b", "fft", 1.2705), ("8b", "lora", 5.9421), ("8b", "qlora", 6.0274)],
)
def test_checkpointed_steps_are_v117ds_within_6_percent(shapes, shape, method, measured):
    """v117d: checkpointing cost lora 1.36x its step, fft 1.18x (the forward's 2 x params again over 4 and 6); the
    plan without the recompute was 0.74x-0.81x of these."""
    plan = _plan(shapes[shape], method, 2048, "gradient_checkpointing=true")
    assert plan.step_s == pytest.approx(measured, rel=0.06)
