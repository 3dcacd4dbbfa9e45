"""sft under activation checkpointing on a model whose input embedding is frozen (an untied head, as the tests' tiny
Llama): the backward stops at the lowest trainable block, as it does without checkpointing, and trains the same
weights (callbacks.FrozenInputsNoGradient)."""

from __future__ import annotations

import math

from tests.trainer_fixtures import make_run


def _sft(tiny_model_dir, tiny_data, out, checkpointing: bool):
    import torch
    from safetensors.torch import load_file
    from transformers import TrainerCallback

    from ftctl.trainer.methods import transformer_blocks
    from ftctl.trainer.run import train

    needs_grad: list[bool] = []  # each block's input: requires a gradient (the backward runs through it)

    class Inputs(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            def seen(block, args, kwargs):
                hidden = args[0] if args else kwargs["hidden_states"]
                if torch.is_grad_enabled() and len(needs_grad) < len(blocks):
                    needs_grad.append(hidden.requires_grad)

            _, blocks = transformer_blocks(model)
            for block in blocks:
                block.register_forward_pre_hook(seen, with_kwargs=True)

    spec, plan = make_run(
        tiny_model_dir, tiny_data, out, "sft", trainable_layers=1, gradient_checkpointing=checkpointing, max_steps=3
    )
    assert plan.gradient_checkpointing is checkpointing
    result = train(spec, plan, callbacks=[Inputs()], echo=lambda line: None)
    assert result.status == "complete" and math.isfinite(result.final_loss)
    return needs_grad, load_file(f"{result.output_dir}/model.safetensors")


def test_sft_under_checkpointing_runs_no_backward_through_frozen_blocks(
    tiny_model_dir, tiny_data, tmp_path, one_thread
):
    import torch

    plain, plain_weights = _sft(tiny_model_dir, tiny_data, tmp_path / "plain", checkpointing=False)
    checkpointed, weights = _sft(tiny_model_dir, tiny_data, tmp_path / "checkpointed", checkpointing=True)

    assert plain == [False, False]  # the embedding and block 0 frozen: no gradient is asked of block 1's input either
    assert checkpointed == plain  # was [True, True]: the embedding's output made to require one
    assert weights.keys() == plain_weights.keys()
    for name, tensor in weights.items():
        assert torch.allclose(tensor, plain_weights[name], atol=1e-6), name
