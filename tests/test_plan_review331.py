"""Review 331 #1: under gradient checkpointing sft of an untied model keeps the inputs of the blocks it trains only
(1e70ba9). Their count was math.ceil of trained_blocks, the float inverse of _trainable_b's count: 1.0000000000000002
blocks for Llama 3.1 8B's top 1, so two blocks' inputs were planned (about 0.27 GB at 16 x 2,048 tokens)."""

from __future__ import annotations

import dataclasses

import pytest

from ftctl import plan as P


@pytest.mark.parametrize("model", ["meta-llama/llama-3.1-8b", "qwen/qwen2.5-7b", "mistralai/mistral-7b-v0.1"])
def test_each_trained_block_of_an_untied_sft_keeps_one_input(model):
    shape = dataclasses.replace(P.KNOWN_MODELS[model], tied=False)

    def activations(layers: int) -> float:
        spec = dataclasses.replace(P.RunSpec(), trainable_layers=layers)
        trainable = P._trainable_b("sft", shape, spec)
        return P.memory_terms("sft", "single", shape, 1, 16, 2048, True, trainable)["activations"]

    one_input = 2 * shape.hidden * 16 * 2048 / 1e9  # a block's input, bf16, the micro-batch's tokens
    for layers in range(1, 9):
        assert activations(layers + 1) - activations(layers) == pytest.approx(one_input), layers
