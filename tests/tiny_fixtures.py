"""A tiny chat model directory for tests: byte-level BPE tokenizer + random LlamaForCausalLM.

The tokenizer (vocab 512) is trained on the bundled demo dataset's text and carries a ChatML chat
template with ``<|im_start|>``/``<|im_end|>`` special tokens (pad = eos = ``<|im_end|>``, no bos),
like SmolLM2's. The model is a random Llama (hidden 64, intermediate 128, 2 layers, 4 heads, 2 kv
heads). Both are saved with ``save_pretrained`` into one directory, so ``AutoTokenizer`` and
``AutoModelForCausalLM.from_pretrained(path)`` load it like any hub model. Builds offline in ~1 s.

        from tests.tiny_fixtures import make_tiny_model_dir
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|im_end|>", "<|im_start|>"]
VOCAB_SIZE = 512
MAX_LENGTH = 512


def _demo_texts() -> list[str]:
    from ftctl.demo import demo_data_path

    rows = json.loads(demo_data_path().read_text())
    texts = [turn["value"] for row in rows for turn in row["conversations"]]
    return texts + ["system", "user", "assistant", "human", "gpt"]


def make_tiny_tokenizer():
    """A PreTrainedTokenizerFast: byte-level BPE, vocab 512, ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_demo_texts(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        additional_special_tokens=["<|im_start|>"],
        chat_template=CHATML_TEMPLATE,
        model_max_length=MAX_LENGTH,
    )


def make_tiny_model(tokenizer, seed: int = 0):
    """A random LlamaForCausalLM sized for tests (fp32, ~70k parameters)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=MAX_LENGTH,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def make_tiny_model_dir(path) -> Path:
    """Write the tiny tokenizer + random Llama into ``path`` (created); return it as a Path."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tiny_tokenizer()
    model = make_tiny_model(tokenizer)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """Path of a saved tiny chat model directory (tokenizer + random Llama), built once a session."""
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    """The tiny model's tokenizer, loaded back with AutoTokenizer (what the trainer does)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)
