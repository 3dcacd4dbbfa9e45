"""Which tokens ftctl trains, against TRL's own preprocessing of the same rows: the labels TRL's SFTTrainer builds
(assistant_only_loss=True, with the training chat template it swaps in for the model's: {% generation %} markers; and
completion_only_loss on prompt-completion rows), token by token, with the chat templates of Qwen2.5 (tool calls
too), Qwen3, Llama 3, Gemma and Phi-3 as TRL ships them, over the tiny tokenizer given each model's special tokens.

The two agree on every token but whitespace: TRL's training templates put the line break after an end-of-turn token
(`<|im_end|>\\n`, `<end_of_turn>\\n`, `<|end|>\\n`) and the one ending ChatML's assistant header in the generation
block, tokens the model is never asked to write (the header is the prompt, and generation stops at the end of turn);
ftctl trains the answer and its end-of-turn token (docs/data.md). Everything ftctl trains, TRL trains; everything TRL
alone trains is whitespace. Phi-3's template ends the conversation with eos: trained after the last answer by TRL
and by ftctl, after one turn as after several (ftctl left it out of multi-turn rows)."""

from __future__ import annotations

import copy
import json
from importlib.resources import files

import pytest

from ftctl.trainer.data import IGNORE_INDEX, prepare_data

# (TRL's copy of the model's template, special tokens its tokenizer has beside the tiny one's ChatML pair, eos, bos)
MODELS = {
    "qwen2_5": ("qwen2_5", [], "<|im_end|>", None),
    "qwen3": ("qwen3", ["<think>", "</think>"], "<|im_end|>", None),
    "llama3": (
        "llama3",
        ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        "<|eot_id|>",
        "<|begin_of_text|>",
    ),
    "gemma": ("gemma", ["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"], "<eos>", "<bos>"),
    "phi3": (
        "phi3",
        ["<s>", "<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"],
        "<|endoftext|>",
        "<s>",
    ),
}
ONE = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello friend"}]
MORE = [
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello friend"},
    {"role": "user", "content": "And again?"},
    {"role": "assistant", "content": "Bye now"},
]
SYSTEM = [{"role": "system", "content": "Be brief."}]
CALL = {"id": "abc123XYZ", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather of a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
TOOL_TURNS = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "abc123XYZ", "name": "get_weather", "content": "sunny"},
    {"role": "assistant", "content": "It is sunny."},
]


def _tokenizer(tiny_tokenizer, model: str):
    template, special, eos, bos = MODELS[model]
    tokenizer = copy.deepcopy(tiny_tokenizer)
    if special:
        tokenizer.add_special_tokens({"additional_special_tokens": special})
    tokenizer.eos_token = eos
    if bos:
        tokenizer.bos_token = bos
    tokenizer.chat_template = (files("trl") / "chat_templates" / f"{template}.jinja").read_text()
    return tokenizer


def _ftctl(tokenizer, rows, tmp_path) -> list[tuple[list[int], list[bool]]]:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    report, dataset = prepare_data(str(path), tokenizer, 2048)  # untruncated (TRL's: max_length=None)
    assert report.ok, report.errors
    return [(list(row["input_ids"]), [label != IGNORE_INDEX for label in row["labels"]]) for row in dataset]


def _trl(tokenizer, rows, tmp_path, **config) -> list[tuple[list[int], list[bool]]]:
    """The rows as TRL's SFTTrainer prepares them (its tokenizing and label building, nothing of ftctl's)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from tests.tiny_fixtures import make_tiny_model

    # every row with its tools' JSON, as TRL reads them, or None (Dataset.from_list takes the first row's columns)
    rows = [{**row, "tools": json.dumps(row["tools"]) if "tools" in row else None} for row in rows]
    args = SFTConfig(output_dir=str(tmp_path / "trl"), report_to=[], max_length=None, use_cpu=True, **config)
    trainer = SFTTrainer(
        model=make_tiny_model(tokenizer),
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=copy.deepcopy(tokenizer),
    )
    return [(row["input_ids"], [label != IGNORE_INDEX for label in row["labels"]]) for row in trainer.train_dataset]


def _only_whitespace_apart(tokenizer, ours, theirs):
    """The same tokens; every token ftctl trains TRL trains; every token TRL alone trains is whitespace."""
    for (ids, mask), (their_ids, their_mask) in zip(ours, theirs, strict=True):
        assert ids == their_ids, (tokenizer.decode(ids), tokenizer.decode(their_ids))
        ftctl_only = [tokenizer.decode([t]) for t, a, b in zip(ids, mask, their_mask) if a and not b]
        trl_only = [tokenizer.decode([t]) for t, a, b in zip(ids, mask, their_mask) if b and not a]
        assert not ftctl_only, ftctl_only
        assert all(not piece.strip() for piece in trl_only), (trl_only, tokenizer.decode(ids))


def _trained(tokenizer, row) -> list[str]:
    """The row's runs of trained tokens, decoded."""
    ids, mask = row
    runs, run = [], []
    for token, trained in [*zip(ids, mask), (None, False)]:
        if trained:
            run.append(token)
        elif run:
            runs.append(tokenizer.decode(run))
            run = []
    return runs


@pytest.mark.parametrize("model", MODELS)
def test_ftctl_trains_what_trls_assistant_only_loss_trains_but_whitespace(tiny_tokenizer, tmp_path, model):
    tokenizer = _tokenizer(tiny_tokenizer, model)
    # Gemma refuses a system turn; TRL's Qwen3 training template writes the thinking block into every earlier turn,
    # which the model's own drops (ftctl renders the model's): compared on one turn
    rows = [{"messages": ONE}] + {
        "gemma": [{"messages": MORE}],
        "qwen3": [],
    }.get(model, [{"messages": SYSTEM + MORE}])
    if model == "qwen2_5":
        rows.append({"messages": TOOL_TURNS, "tools": TOOLS})
    ours = _ftctl(tokenizer, rows, tmp_path)
    _only_whitespace_apart(tokenizer, ours, _trl(tokenizer, rows, tmp_path, assistant_only_loss=True))
    if model == "phi3":  # the eos closing the conversation trains after one turn and after several alike
        assert [_trained(tokenizer, row)[-1] for row in ours] == [
            "Hello friend<|end|>\n<|endoftext|>",
            "Bye now<|end|>\n<|endoftext|>",
        ]


def test_prompt_completion_rows_train_what_trls_completion_only_loss_trains(tiny_tokenizer, tmp_path):
    """Text: the completion and eos, the token that holds the prompt's end and the completion's start too, exactly
    as TRL's. Turns (Qwen2.5's template): the completion's answers, but for whitespace, as TRL's with and without
    assistant_only_loss; a tool result inside the completion is context in ftctl, trained by TRL's
    completion_only_loss alone."""
    tokenizer = _tokenizer(tiny_tokenizer, "qwen2_5")
    text = [
        {"prompt": "The capital of France is", "completion": " Paris."},
        {"prompt": "The capital of France is ", "completion": "Paris."},  # the prompt's last space
    ]
    ours = _ftctl(tokenizer, text, tmp_path)
    assert ours == _trl(tokenizer, text, tmp_path)
    assert [[run.strip() for run in _trained(tokenizer, row)] for row in ours] == 2 * [["Paris.<|im_end|>"]]

    turns = [
        {"prompt": SYSTEM + MORE[:3], "completion": MORE[3:]},
        {"prompt": TOOL_TURNS[:1], "completion": TOOL_TURNS[1:], "tools": TOOLS},
    ]
    ours = _ftctl(tokenizer, turns, tmp_path)
    _only_whitespace_apart(tokenizer, ours, _trl(tokenizer, turns, tmp_path, assistant_only_loss=True))
    theirs = _trl(tokenizer, turns, tmp_path)  # completion_only_loss alone: every token of the completion
    _only_whitespace_apart(tokenizer, ours[:1], theirs[:1])
    ids, mask = ours[1]
    trl_only = tokenizer.decode([t for t, a, b in zip(ids, mask, theirs[1][1]) if b and not a])
    assert "sunny" in trl_only and "<tool_response>" in trl_only
