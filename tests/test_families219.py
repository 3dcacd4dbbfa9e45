"""Model families other than Llama through the trainer's methods: tiny random models built from their configs."""

from __future__ import annotations


def test_sft_trains_the_top_blocks_of_a_multimodal_gemma3s_language_model():
    """Gemma 3 4B-27B are Gemma3ForConditionalGeneration (AutoModelForCausalLM's for gemma3): its config has no
    num_hidden_layers of its own, and sft stopped on the node ('cannot find the transformer blocks'); its vision
    tower's layers, as many as the language model's here, are not the blocks."""
    import torch
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    from ftctl.trainer.methods import freeze_below_top_blocks

    text = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                num_key_value_heads=1, head_dim=16, sliding_window=8)  # fmt: skip
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, image_size=28,
                  patch_size=14)  # fmt: skip
    torch.manual_seed(0)
    model = Gemma3ForConditionalGeneration(Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4))
    trained = freeze_below_top_blocks(model, 2)
    blocks = {n.split(".layers.")[1].split(".")[0] for n in trained if ".layers." in n}
    assert blocks == {"1", "2"}
    assert all(n.startswith(("model.language_model.", "lm_head.")) for n in trained)
    assert "model.language_model.norm.weight" in trained
