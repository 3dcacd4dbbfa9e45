"""trainer/lora_dropout.py's dropout + A kernels and lora_up.py's in-place sum, run on CPU by Triton's
interpreter (a subprocess: TRITON_INTERPRET is read when the kernels are defined)."""

from __future__ import annotations

import math

import pytest

from tests.trainer_fixtures import interpreted_checks


@pytest.fixture(scope="module")
def checks(tiny_model_dir) -> dict:
    return interpreted_checks("lora_dropout_checks", str(tiny_model_dir))


@pytest.mark.parametrize("case", ["odd", "lora16"])
def test_the_kernels_equal_torch_applying_their_mask(checks, case):
    """Forward, dx and dA against x * mask / (1 - p) @ A^T in torch, with the kernels' own mask; sizes that
    leave partial tiles (100 rows, K 264, r 8) and LoRA's usual r 16."""
    c = checks[case]
    assert c["shape"][-1] in (8, 16)
    for what in ("h", "dx", "dw"):
        assert c[what] < 1e-5, (what, c)


def test_inputs_past_the_kernels_int32_offsets_take_pefts_path(checks):
    assert checks["usable_at_int32_limit"] == [True, False]


def test_the_mask_keeps_one_minus_p_and_depends_on_the_seed(checks):
    c = checks["odd"]  # p = 0.3
    sigma = math.sqrt(0.3 * 0.7 / c["elements"])
    assert abs(c["kept"] - checks["p_effective"]) < 5 * sigma
    assert abs(checks["lora16"]["kept"] - 0.95) < 5 * math.sqrt(0.05 * 0.95 / checks["lora16"]["elements"])
    assert checks["mask_is_the_hash"]  # the kernels' mask is the documented hash, element by element
    assert checks["same_seed_same_mask"] and checks["mask_independent_of_tiles"]
    # p = 0.5: another seed, rows and columns beside each other agree half the time, as independent draws do
    for key in ("other_seed_other_mask", "row_pairs_equal", "col_pairs_equal"):
        assert abs(checks[key] - 0.5) < 0.03, key


@pytest.mark.parametrize("model", ["model", "model_4bit"])
def test_the_adapters_run_the_kernels_in_training_and_checkpointing_recomputes_the_same_masks(checks, model):
    m = checks[model]
    # training: one node a projection (7 projections x 2 blocks), B's sum inside it; eval has no dropout:
    # the base, A and B's sum added in place where the base's output is a tensor of its own (lora_up.usable), else
    # addmm: bitsandbytes' CPU 4-bit inference path handed back a view in one fresh install, its own tensor in a later
    # one, at the same pinned versions (an unpinned dependency drifted; which one is not known)
    assert m["train_calls"] == 14 and m["eval_calls"] == 0 and m["train_sums"] == 0
    assert m["eval_sums"] == 14 if model == "model" else m["eval_sums"] in (0, 14)
    assert m["checkpointed_calls"] == 28  # forward + recompute
    assert m["adapter_grads"] == 28 and m["grads_nonzero"]
    assert m["checkpointed_max_rel"] == 0.0  # the recompute drew the same masks


@pytest.mark.parametrize("case", ["up_odd", "up16"])
def test_the_in_place_sum_equals_addmm(checks, case):
    """lora_up.add_into writes base + scaling * h @ B^T into the base's output, with addmm's gradients
    (the base's input through the base's output, h, B); a view of another tensor takes addmm's path."""
    c = checks[case]
    for what in ("out", "dx", "dh", "db"):
        assert c[what] < 1e-5, (what, c)
    assert c["in_place"] and not c["view_usable"]


@pytest.mark.parametrize("case", ["projection", "projection_4bit"])
def test_one_node_a_projection_equals_torch(checks, case):
    """lora_projection: the base (a frozen Linear with a bias; a 4-bit one) plus the adapter through the
    kernels' mask, as one autograd node: the output and the gradients of x (the base's and the adapter's,
    summed in the kernel), A and B, against torch; partial tiles, r 8 and 16."""
    c = checks[case]
    for what in ("out", "dx", "da", "db"):
        assert c[what] < 1e-5, (what, c)
    assert not c["trained_base"] and not c["other_dtype"]


def test_one_node_without_the_inputs_gradient_still_trains_the_adapter(checks):
    c = checks["projection_no_dx"]  # the first block's input: a frozen embedding's output
    assert c["dx"] is True  # x.grad stays None
    assert c["da"] < 1e-5 and c["db"] < 1e-5
