"""Review 60b: the plan's note that unpacked sdpa takes one row a micro-batch at long rows (a padding mask over
several) was said where memory alone left one row, two never fitting (qlora 7B at 8k on a T4): its "+N GB at 2
rows" then named a choice the card did not have. Said only where two rows fit the card too."""

from __future__ import annotations

import json

import pytest

from ftctl.plan import make_plan
from tests.render_fixtures import make_spec


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """bench/gpu_train.py's SHAPES['1b'] at a 131,072-token context (tests/test_plan298.py's)."""
    root = tmp_path_factory.mktemp("llama-1b128k")
    cfg = dict(
        model_type="llama",
        architectures=["LlamaForCausalLM"],
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        rope_theta=500000.0,
        max_position_embeddings=131072,
        tie_word_embeddings=True,
    )
    (root / "config.json").write_text(json.dumps(cfg))
    return str(root)


@pytest.mark.parametrize("length, said", [(16384, True), (32768, False)])
def test_the_one_row_note_only_where_two_rows_fit(model, length, said):
    spec = make_spec(
        [f"model_max_length={length}", f"global_batch_size={65536 // length}", "attn_implementation=sdpa"],
        method="lora",
        model_name_or_path=model,
        gpus="1xT4",
    )
    plan = make_plan(spec)
    assert plan.per_device_train_batch_size == 1
    assert any(n.startswith(f"one {length:,}-token row a micro-batch") for n in plan.notes) is said, plan.notes
