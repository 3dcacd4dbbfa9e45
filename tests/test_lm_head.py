"""trainer/lm_head.py: the LM head's loss with its gradients taken in the forward, against full logits (torch's
tile functions here; TRL's Triton kernels in Triton's interpreter, a subprocess) and against TRL's head and
transformers' own loss in a model."""

from __future__ import annotations

import pytest

from tests.lm_head_checks import against_full_logits, no_label_counts
from tests.trainer_fixtures import interpreted_checks


@pytest.fixture(scope="module")
def interpreted() -> dict:
    return interpreted_checks("lm_head_checks", timeout=300)


def _check(c: dict, trained: bool, bias: bool) -> None:
    for what in ("sum", "entropy", "dh") + (("dw",) + (("db",) if bias else ()) if trained else ()):
        assert c[what] < 1e-5, (what, c)
    if not trained:
        assert c["dw"] is True  # a frozen head gets no gradient
    assert c["top1"][0] == c["top1"][1] > 0


@pytest.mark.parametrize("kernels", [False, True], ids=["torch", "triton-interpreter"])
def test_sums_and_gradients_equal_full_logits(kernels, interpreted):
    """Chunks whose last one is partial, a vocabulary that is no multiple of the kernels' block, a bias; LoRA's
    frozen head; one chunk; a batch with no label that counts."""
    cases = interpreted if kernels else {
        "trained": against_full_logits(30, 16, 300, 7, bias=True, trained=True),
        "frozen": against_full_logits(37, 24, 1100, 16, bias=False, trained=False),
        "one_chunk": against_full_logits(20, 8, 50, 4096, bias=False, trained=True),
        "empty": no_label_counts(),
    }  # fmt: skip
    assert not kernels or interpreted["kernels"]  # the subprocess really ran Triton's kernels
    _check(cases["trained"], trained=True, bias=True)
    _check(cases["frozen"], trained=False, bias=False)
    _check(cases["one_chunk"], trained=True, bias=False)
    assert cases["empty"] == {"values": [0.0, 0.0, 0], "grads_zero": True}


def test_a_second_backward_is_refused():
    import torch

    from ftctl.trainer.lm_head import _HeadLoss

    w = torch.randn(9, 4, requires_grad=True)
    s, _, _ = _HeadLoss.apply(torch.randn(3, 4), w, None, torch.tensor([1, 2, 3]), 8)
    s.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="used once"):
        s.backward()


def _tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    from ftctl.trainer import lm_head

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))  # as TRL's SFTTrainer
    lm_head.add_head(model)
    return model


def test_in_a_model_the_loss_and_every_gradient_equal_transformers_and_the_metrics_trls(tiny_model_dir):
    import torch

    from ftctl.trainer import lm_head

    model = _tiny(tiny_model_dir)
    ids = torch.randint(0, model.config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[0, :10] = -100  # a prompt
    labels[1, 30:] = -100  # padding

    def grads(loss):
        model.zero_grad()
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    scored = lm_head.counting_scored(lambda rows: {"input_ids": ids, "labels": labels})([])["scored"]
    assert scored == 30 + 29  # labels shifted by one: row 0 from position 10 on, row 1 up to 30
    ours = model(input_ids=ids, labels=labels, ftctl_head=True, scored=scored)
    loss = -ours.sum_log_probs / ours.tokens
    ours_grads = grads(loss)
    without_count = model(input_ids=ids, labels=labels, ftctl_head=True)  # the head finds the count itself
    assert float(without_count.sum_log_probs.detach()) == float(ours.sum_log_probs.detach())
    reference = model(input_ids=ids, labels=labels)  # transformers' loss over the full logits
    assert float(loss.detach()) == pytest.approx(float(reference.loss.detach()), rel=1e-6)
    for name, g in grads(reference.loss).items():
        assert torch.allclose(ours_grads[name], g, rtol=1e-4, atol=1e-7), name
    trls = model(input_ids=ids, labels=labels, fused_lm_head=True)
    assert int(ours.tokens) == int(trls.label_mask.sum()) == scored
    assert float(ours.sum_entropy) == pytest.approx(float(trls.entropy.sum()), rel=1e-6)
    assert int(ours.top1) == int(trls.is_top1.sum())


def test_models_with_scaled_or_capped_logits_keep_trls_head(tiny_model_dir):
    from ftctl.trainer import lm_head

    model = _tiny(tiny_model_dir)
    assert lm_head.usable(model)
    model.config.final_logit_softcapping = 30.0  # Gemma 2's
    assert not lm_head.usable(model)
    model.config.final_logit_softcapping = None
    model.config.logits_scaling = 8.0  # Granite's
    assert not lm_head.usable(model)


def test_evaluation_takes_no_gradients(tiny_model_dir, monkeypatch):
    """Under no_grad (evaluation) the forward computes the sums only: no fp32 weight gradient is taken."""
    import torch

    from ftctl.trainer import lm_head

    model = _tiny(tiny_model_dir)
    ids = torch.randint(0, model.config.vocab_size, (1, 24), generator=torch.Generator().manual_seed(1))
    products = []
    real = lm_head._mm_fp32
    monkeypatch.setattr(lm_head, "_mm_fp32", lambda *a, **k: products.append(1) or real(*a, **k))
    with torch.no_grad():
        evaluated = model(input_ids=ids, labels=ids, ftctl_head=True)
    assert products == []
    trained = model(input_ids=ids, labels=ids, ftctl_head=True)
    assert products  # the same call in training takes them
    assert float(evaluated.sum_log_probs) == float(trained.sum_log_probs.detach())
