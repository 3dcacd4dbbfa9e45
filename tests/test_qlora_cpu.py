"""qlora on CPU: bitsandbytes' 4-bit layers keep their training layout through the held-out evaluations."""

from __future__ import annotations

from tests.trainer_fixtures import make_run


def test_qlora_on_cpu_trains_through_its_base_after_a_held_out_evaluation(
    tiny_model_dir, tiny_data, tmp_path, one_thread
):
    """explore16: on a CPU with AVX512-BF16 a Linear4bit repacks its weight for inference at its first forward in eval
    mode without grad (the held-out loss), for good, and its matmul (gemv_4bit) then has no backward: the steps after
    the first evaluation sent no gradient through the frozen base (torch: 'bitsandbytes::gemv_4bit: an autograd
    kernel was not registered ... may lead to silently incorrect behavior'). The same batch's gradients, before and
    after an evaluation, are the same."""
    import torch

    from ftctl.trainer.methods import apply_method
    from ftctl.trainer.model import load_model

    spec, plan = make_run(tiny_model_dir, tiny_data, tmp_path / "out", "qlora", lora_dropout=0.0)
    model = apply_method(load_model(spec, plan, on_cpu=True), spec, plan)
    ids = torch.tensor([[5, 9, 17, 33, 65, 129, 200, 7, 11, 42]])

    def gradients():
        model.train()
        model.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and ".layers.0." in n}

    before = gradients()
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)
    after = gradients()
    assert before and any(g.abs().sum() > 0 for g in before.values())
    for name, grad in before.items():
        assert torch.allclose(grad, after[name], rtol=1e-5, atol=1e-8), name
