"""Models people fine-tune in 2026, sized without the Hub (plan.KNOWN_MODELS): Qwen3 0.6B-32B and 30B-A3B, Mistral 7B
v0.3 were "Cannot tell the size of model ... HF_HUB_OFFLINE is set. Did you mean 'Qwen/Qwen2.5-0.5B-chAt'?": a
suggestion of another model (hub.nearest_id now leaves out one that lacks a number the id typed holds). Each known
shape is checked against what plan's own config reader makes of the model's config.json (written here as the Hub's
files have them), so that a mistyped number in the table fails."""

from __future__ import annotations

import dataclasses

import pytest

from ftctl.errors import FtctlError
from ftctl.hub import nearest_id
from ftctl.plan import KNOWN_MODELS, _shape_from_config, model_shape

QWEN3 = dict(head_dim=128, vocab_size=151936, max_position_embeddings=40960, model_type="qwen3")
CONFIGS = {
    "qwen/qwen3-0.6b": {**QWEN3, "hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 28,
                        "num_attention_heads": 16, "num_key_value_heads": 8, "tie_word_embeddings": True},
    "qwen/qwen3-1.7b": {**QWEN3, "hidden_size": 2048, "intermediate_size": 6144, "num_hidden_layers": 28,
                        "num_attention_heads": 16, "num_key_value_heads": 8, "tie_word_embeddings": True},
    "qwen/qwen3-4b": {**QWEN3, "hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 36,
                      "num_attention_heads": 32, "num_key_value_heads": 8, "tie_word_embeddings": True},
    "qwen/qwen3-8b": {**QWEN3, "hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36,
                      "num_attention_heads": 32, "num_key_value_heads": 8, "tie_word_embeddings": False},
    "qwen/qwen3-14b": {**QWEN3, "hidden_size": 5120, "intermediate_size": 17408, "num_hidden_layers": 40,
                       "num_attention_heads": 40, "num_key_value_heads": 8, "tie_word_embeddings": False},
    "qwen/qwen3-32b": {**QWEN3, "hidden_size": 5120, "intermediate_size": 25600, "num_hidden_layers": 64,
                       "num_attention_heads": 64, "num_key_value_heads": 8, "tie_word_embeddings": False},
    "qwen/qwen3-30b-a3b": {**QWEN3, "model_type": "qwen3_moe", "hidden_size": 2048, "intermediate_size": 6144,
                           "moe_intermediate_size": 768, "num_experts": 128, "num_experts_per_tok": 8,
                           "decoder_sparse_step": 1, "mlp_only_layers": [], "num_hidden_layers": 48,
                           "num_attention_heads": 32, "num_key_value_heads": 4, "tie_word_embeddings": False},
    "mistralai/mistral-7b-v0.3": {"model_type": "mistral", "hidden_size": 4096, "intermediate_size": 14336,
                                  "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                                  "vocab_size": 32768, "max_position_embeddings": 32768, "sliding_window": None,
                                  "tie_word_embeddings": False},
}  # fmt: skip
PUBLISHED = {  # the model cards' total parameters, billions (Qwen3: "Number of Parameters")
    "qwen/qwen3-0.6b": 0.6, "qwen/qwen3-1.7b": 1.7, "qwen/qwen3-4b": 4.0, "qwen/qwen3-8b": 8.2,
    "qwen/qwen3-14b": 14.8, "qwen/qwen3-32b": 32.8, "qwen/qwen3-30b-a3b": 30.5, "mistralai/mistral-7b-v0.3": 7.25,
}  # fmt: skip


def _same(a, b) -> bool:
    """Two shapes that plan the same: heads 0 reads hidden / 128 and q_dim 0 hidden (plan.ModelShape)."""
    return (a.attention_heads, a.q_width, a.params_b) == (b.attention_heads, b.q_width, pytest.approx(b.params_b, 1e-3))


@pytest.mark.parametrize("model", sorted(CONFIGS))
def test_each_known_shape_is_what_its_config_reads_as(model, monkeypatch):
    read = _shape_from_config(CONFIGS[model], "known id")
    known = KNOWN_MODELS[model]
    fields = [f.name for f in dataclasses.fields(known) if f.name not in ("params_b", "heads", "q_dim")]
    assert {f: getattr(known, f) for f in fields} == {f: getattr(read, f) for f in fields}
    assert _same(known, read)
    assert known.params_b == pytest.approx(PUBLISHED[model], abs=0.051)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # sized here, no Hub
    name = model.replace("qwen/qwen", "Qwen/Qwen").replace("/mistral", "/Mistral").replace("b", "B")  # Qwen/Qwen3-8B
    tuned = name.replace("-7B-", "-7B-Instruct-") if "mistral" in model else name + "-Base"
    for variant in (name, tuned):  # Mistral-7B-Instruct-v0.3, Qwen3-8B-Base
        assert model_shape(variant).source == "known id", variant


def test_a_typo_is_told_the_id_and_another_model_is_not():
    assert nearest_id("Qwen/Qwen3-8", KNOWN_MODELS) == "Qwen/Qwen3-8b"
    assert nearest_id("meta-llama/Llama-3.1-8b-instrut", KNOWN_MODELS) == "meta-llama/Llama-3.1-8b-instruct"
    for other in ("Qwen/Qwen3-235B-A22B", "google/gemma-3-12b-it", "Qwen/Qwen2.5-3B", "mistralai/Mistral-7B-v0.2"):
        assert nearest_id(other, KNOWN_MODELS) is None, other


def test_an_unknown_model_offline_is_not_told_another_one(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FtctlError) as e:
        model_shape("Qwen/Qwen3-235B-A22B")
    assert "Did you mean" not in str(e.value) and "--model-params" in str(e.value)
