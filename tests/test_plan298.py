"""sdpa's mask in the plan's memory, as measured on an H100 (bench/NOTES.md v112 and v112b, helper 286's rows in
bench/results/2026-12-07-h100-session60-v112.json; the fit: helper 298).

Under a mask (an unpacked micro-batch of several rows, a packed row) each layer keeps a 16-bit copy of it, 2 B a
score, and transformers repeats K/V to every query head (repeat_kv: torch's sdpa takes GQA only without a mask), 2 x
2 x (q_width - kv_dim) bytes a token and layer. Fitted on the six masked rows against the same tokens unmasked: 2.01
B and 6,022 B; each row's rise within 0.05 GiB of the count. Without the term three cases the plan said fit at 60.5
GiB ran out of the card's 79.2 GiB. The shape is bench/longctx_step_gpu.py's (Llama-3.2-1B's, 131,072-token context)
and its spec: 65,536 tokens a step on 1xH100, read from a config.json as the bench's run read its model's. Expected
values are the formula written out, not read from plan.py's functions."""

from __future__ import annotations

import json

import pytest

from ftctl.errors import FtctlError
from ftctl.gpus import TIERS
from ftctl.plan import HEADROOM, SDPA_ONE_ROW_TOKENS, make_plan
from tests.render_fixtures import make_spec

GIB = 2**30
LAYERS, HIDDEN, KV = 16, 2048, 512
H100_GB = TIERS["H100"].capacity_gb  # 79.1 GiB: 84.9 GB
SDPA = "attn_implementation=sdpa"
PACK = "packing=true"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """bench/gpu_train.py's SHAPES['1b'] at the 131,072-token context bench/longctx_step_gpu.py gives it."""
    root = tmp_path_factory.mktemp("llama-1b128k")
    cfg = dict(
        model_type="llama",
        architectures=["LlamaForCausalLM"],
        hidden_size=HIDDEN,
        intermediate_size=8192,
        num_hidden_layers=LAYERS,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        rope_theta=500000.0,
        max_position_embeddings=131072,
        tie_word_embeddings=True,
    )
    (root / "config.json").write_text(json.dumps(cfg))
    return str(root)


def _plan(model, length: int, *more: str, method: str = "lora", gpus: str = "1xH100"):
    """bench/longctx_step_gpu.py's spec: rows of ``length`` tokens, 65,536 tokens a step."""
    overrides = [f"model_max_length={length}", f"global_batch_size={65536 // length}", "seed=7", *more]
    spec = make_spec(overrides, method=method, model_name_or_path=model, gpus=gpus)
    return spec, make_plan(spec)


def _mask_gb(rows: int, row: int, tokens: int) -> float:
    """16 layers x (2 B a masked score + K/V repeated from 8 to 32 heads: 4 x (2,048 - 512) B a token)."""
    return LAYERS * (2 * rows * row * row + 4 * (HIDDEN - KV) * tokens) / 1e9


# (variant overrides, L, micro-batch, its measured peak_alloc_gib); micro-batch forced as the bench's -o did, or as
# the plan then chose it (16 x 2,048: the same either way)
MASKED = [
    ((SDPA,), 2048, 16, 63.61),  # lora_sdpa_pad, documents 1,977-2,040 tokens
    ((SDPA,), 2048, 2, 11.03),
    ((SDPA,), 4096, 2, 19.09),
    ((SDPA,), 8192, 2, 36.68),
    ((SDPA, PACK), 2048, 2, 11.27),  # lora_sdpa_pack: one row of 4,080 tokens
    ((SDPA, PACK), 2048, 4, 20.05),  # 8,160
]


@pytest.mark.parametrize("more, length, micro, peak", MASKED)
def test_a_masked_micro_batch_counts_its_mask_and_repeated_kv(model, more, length, micro, peak):
    """The term is the count at model_max_length, and the plan is no longer under the measured peaks (it was 5% under
    at 16 x 2,048 and 11% under at 2 x 8,192): 3% to 13% over now, as the unmasked plans of those shapes are."""
    spec, plan = _plan(model, length, *more, f"per_device_train_batch_size={micro}")
    assert plan.per_device_train_batch_size == micro and plan.attn_implementation == "sdpa"
    packed = PACK in more
    rows, row = (1, micro * length) if packed else (micro, length)
    assert plan.memory["sdpa_mask"] == pytest.approx(_mask_gb(rows, row, micro * length), abs=0.006)
    assert 1.02 < plan.memory_gb * 1e9 / GIB / peak < 1.14
    assert "sdpa_mask" in plan.table(spec)  # named in the memory/device row


def test_the_fit_against_the_peaks_rise_over_unmasked_rows():
    """The six rows' peaks less the unmasked peak of the same tokens (measured: 31.19 GiB at 2 x 8,184, 58.68 at 16 x
    2,040; linear between), against the count at the rows' own lengths: within 0.05 GiB each (0.043 at 16 x 2,040)."""
    slope = (58.68 - 31.19) / (32640 - 16368)
    rows = [  # (rows, tokens a row, tokens, measured peak)
        (16, 2040, 16 * 2040, 63.61),
        (2, 2040, 2 * 2040, 11.03),
        (2, 4088, 2 * 4088, 19.09),
        (2, 8184, 2 * 8184, 36.68),
        (1, 4080, 4080, 11.27),
        (1, 8160, 8160, 20.05),
    ]
    for n, row, tokens, peak in rows:
        unmasked = 31.19 + slope * (tokens - 16368)
        assert _mask_gb(n, row, tokens) * 1e9 / GIB == pytest.approx(peak - unmasked, abs=0.05)


@pytest.mark.parametrize(
    "more, length, micro",
    [((SDPA,), 16384, 2), ((SDPA, PACK), 2048, 16), ((SDPA, PACK), 16384, 2)],
)
def test_the_three_that_ran_out_of_memory_do_not_fit_an_h100(model, more, length, micro):
    """v112's three out-of-memory rows (the plan's micro-batch then, no checkpointing), planned at 60.5 GiB before: the
    mask alone is 17-35 GB, and the plan over the card (planned on an H200 to see it); on the H100 it is refused."""
    packed = PACK in more
    rows, row = (1, micro * length) if packed else (micro, length)
    asked = (f"per_device_train_batch_size={micro}", "gradient_checkpointing=false")
    spec, plan = _plan(model, length, *more, *asked, gpus="1xH200")
    assert plan.per_device_train_batch_size == micro and not plan.gradient_checkpointing
    assert plan.memory["sdpa_mask"] == pytest.approx(_mask_gb(rows, row, micro * length), abs=0.006)
    assert plan.memory_gb > H100_GB  # 85.3, 102.5, 102.5 GB
    with pytest.raises(FtctlError, match=f"with {', '.join(asked)} does not fit 1xH100"):
        _plan(model, length, *more, *asked)


@pytest.mark.parametrize(
    "more, length, micro, tokens_a_row, masked",
    [
        ((SDPA,), 16384, 1, 16384, False),  # one row: no mask (is_causal), as v112's unpadded rows got
        ((SDPA, PACK), 2048, 8, 8 * 2048, True),  # one packed row of 16,384 tokens under its mask
        ((SDPA, PACK), 16384, 1, 16384, True),
    ],
)
def test_unforced_they_are_planned_at_a_micro_batch_that_fits(model, more, length, micro, tokens_a_row, masked):
    spec, plan = _plan(model, length, *more)
    assert (plan.per_device_train_batch_size, plan.gradient_checkpointing) == (micro, False)
    assert plan.memory_gb <= HEADROOM * H100_GB
    if masked:
        assert plan.memory["sdpa_mask"] == pytest.approx(_mask_gb(1, tokens_a_row, tokens_a_row), abs=0.006)
    else:
        assert "sdpa_mask" not in plan.memory


@pytest.mark.parametrize(
    "more, length, method, measured_plan_gib",
    [
        ((), 2048, "lora", 60.47),  # the JSON's plan_peak_gib: what the plan said before this change
        ((), 16384, "lora", 60.47),
        ((), 2048, "fft", 59.76),
        ((), 8192, "fft", 59.76),
        ((), 16384, "fft", 59.76),
        ((SDPA, "per_device_train_batch_size=1"), 8192, "lora", 18.75),  # one sdpa row: no mask (not measured)
    ],
)
def test_plans_without_a_mask_are_unchanged(model, more, length, method, measured_plan_gib):
    spec, plan = _plan(model, length, *more, method=method)
    assert "sdpa_mask" not in plan.memory
    assert plan.memory_gb * 1e9 / GIB == pytest.approx(measured_plan_gib, rel=0.01)


@pytest.mark.parametrize("length", [SDPA_ONE_ROW_TOKENS, 16384, 32768])
def test_long_unpacked_sdpa_rows_go_one_a_micro_batch_and_say_why(model, length):
    """At 8,192 two rows fit (38.2 GiB with the mask), but their mask doubled v112b's step (2.49 s against 1.23 s for
    rows of one length): one row a micro-batch first. At 16k and 32k two rows do not fit without checkpointing: one
    row, and no note (review 60b: said where the card left no choice)."""
    assert SDPA_ONE_ROW_TOKENS == 8192
    spec, plan = _plan(model, length, SDPA)
    assert plan.per_device_train_batch_size == 1 and "sdpa_mask" not in plan.memory
    if length > SDPA_ONE_ROW_TOKENS:
        assert not [n for n in plan.notes if n.startswith(f"one {length:,}-token row a micro-batch")]
        return
    two_rows = _mask_gb(2, length, 2 * length)
    note = next(n for n in plan.notes if n.startswith(f"one {length:,}-token row a micro-batch"))
    assert "padding mask" in note and f"(+{two_rows:.1f} GB at 2 rows)" in note
    assert "-o per_device_train_batch_size to choose" in note


@pytest.mark.parametrize(
    "more, length",
    [
        ((SDPA,), 4096),  # shorter rows keep the largest micro-batch that fits
        ((SDPA, "per_device_train_batch_size=2"), 8192),  # asked for
        ((SDPA, PACK), 8192),  # packed: one row either way
        ((), 16384),  # varlen: no mask
    ],
)
def test_no_one_row_preference_elsewhere(model, more, length):
    spec, plan = _plan(model, length, *more)
    assert plan.per_device_train_batch_size > 1
    assert not any("-token row a micro-batch" in n for n in plan.notes)


def test_short_padded_sdpa_rows_still_fit_sixteen(model):
    """16 x 2,048 under sdpa (v112: 63.61 GiB measured): 65.5 GiB planned with the mask, within the card's 92%."""
    spec, plan = _plan(model, 2048, SDPA)
    assert plan.per_device_train_batch_size == 16
    assert plan.memory_gb * 1e9 / GIB == pytest.approx(60.47 + _mask_gb(16, 2048, 16 * 2048) * 1e9 / GIB, abs=0.02)


def test_a_packed_eager_row_counts_its_scores_over_the_whole_row(model):
    """eager writes out each head's scores of the row it is handed: packed, one row of micro x S tokens, so (micro x
    S)^2 scores, not micro x S^2 (4 x 2,048 packed counted 57 GB of scores, a fourth of its row's)."""
    eager = ("attn_implementation=eager", PACK, "gradient_checkpointing=false")
    heads, per_score = 32, 16 * (4 + 2) + (2 * 4 + 2)  # softmax's fp32 and its 16-bit copy a layer, + one layer's grads
    spec, plan = _plan(model, 2048, *eager, "per_device_train_batch_size=2", gpus="1xH200")
    assert plan.packing and "sdpa_mask" not in plan.memory
    row = 2 * 2048
    assert plan.memory["attention_scores"] == pytest.approx(row**2 * (heads * per_score + 2) / 1e9, abs=0.01)
    # 4 x 2,048 packed: 228 GB of scores (said 57 GB, and that it fit an H100 at 77.1 GB)
    with pytest.raises(FtctlError, match="per_device_train_batch_size=4, gradient_checkpointing=false does not fit"):
        _plan(model, 2048, *eager, "per_device_train_batch_size=4")


def test_on_cpu_the_mask_is_not_added(model):
    """CPU's activations are fitted on sdpa runs of micro-batches 1 and 2 (CPU_ACTIVATION_FACTOR): not counted again."""
    spec, plan = _plan(model, 256, SDPA, "per_device_train_batch_size=2", gpus="cpu")
    assert "sdpa_mask" not in plan.memory


@pytest.mark.parametrize("length, said", [(16384, True), (32768, False)])
def test_the_one_row_note_only_where_two_rows_fit_the_card(model, length, said):
    """Review 60b: the note was said where memory alone left one row, two never fitting (qlora 7B at 8k on a T4):
    its "+N GB at 2 rows" named a choice the card did not have. On a T4 two rows of 16k fit with checkpointing, of
    32k not."""
    spec, plan = _plan(model, length, SDPA, gpus="1xT4")
    assert plan.per_device_train_batch_size == 1
    assert any(n.startswith(f"one {length:,}-token row a micro-batch") for n in plan.notes) is said, plan.notes
