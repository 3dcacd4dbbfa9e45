"""The vectorised loss mask (masks.encode_texts, masks.labels_of: numpy) gives exactly the token ids, masks and labels
of the pure-Python code it replaced (kept here as the reference), over generated conversations: system, user,
assistant and tool turns, tool calls, weight-0 turns, several turns, every template path (prefix renderings, found
spans, generation markers, Vicuna for a tokenizer without a template), plain and prompt-completion text, with and
without bos, and truncation at every length."""

from __future__ import annotations

import copy
import json
import random
from importlib.resources import files
from pathlib import Path

import pytest

from ftctl.trainer import data as data_mod
from ftctl.trainer import masks
from ftctl.trainer.masks import Encoded, assistant_spans, encode_texts, labels_of

TEMPLATES = Path(__file__).parent / "templates"
IGNORE = -100


def reference_encode_texts(tokenizer, texts, spans, max_length):
    """masks.encode_texts as it was before numpy (commit 58e667f), a Python test per token and span."""
    out = []
    for lo in range(0, len(texts), masks._BATCH):
        chunk, chunk_spans = texts[lo : lo + masks._BATCH], spans[lo : lo + masks._BATCH]
        chat = [k for k, s in enumerate(chunk_spans) if not isinstance(s, int)]
        plain = [k for k, s in enumerate(chunk_spans) if isinstance(s, int)]
        encoded, joined = {}, set()
        if chat:
            enc = tokenizer([chunk[k] for k in chat], add_special_tokens=False, return_offsets_mapping=True)
            for k, ids, offsets in zip(chat, enc["input_ids"], enc["offset_mapping"]):
                row_spans = chunk_spans[k]
                mask = [int(any(a <= s < b or s < a < e for a, b in row_spans)) for s, e in offsets]
                encoded[k] = (list(ids), mask)
        if plain:
            enc = tokenizer([chunk[k] for k in plain], add_special_tokens=True, return_offsets_mapping=True)
            eos = tokenizer.eos_token_id
            for k, ids, offsets in zip(plain, enc["input_ids"], enc["offset_mapping"]):
                start = chunk_spans[k]
                ids = list(ids)
                mask = [int(not start or s >= start or s < start < e) for s, e in offsets]
                if start and any(s < start < e for s, e in offsets):
                    joined.add(k)
                if eos is not None and (not ids or ids[-1] != eos):
                    ids.append(eos)
                    mask.append(1)
                encoded[k] = (ids, mask)
        for k in range(len(chunk)):
            ids, mask = encoded[k]
            out.append(Encoded(ids[:max_length], mask[:max_length], len(ids), sum(mask), k in joined))
    return out


def reference_labels(enc, ignore):
    return [t if m else ignore for t, m in zip(enc.input_ids, enc.mask)]


WORDS = ["hello", "world", "AMBER-42", " spaced", "tab\there", "new\nline", "café", "日本語", "🙂", "x", "", "  ", "?"]
WORDS += ["<|im_end|>", "ASSISTANT:", "USER: hi", "[INST]", "{json}", "a" * 40, "1234567890"]


def _text(rng: random.Random) -> str:
    said = "".join(rng.choice(WORDS) + rng.choice(["", " ", "  ", "\n"]) for _ in range(rng.randint(1, 12)))
    return rng.choice(["", " ", "\n"]) + said if rng.random() < 0.2 else said


def _conversation(rng: random.Random, tools: bool) -> list[dict]:
    messages = [{"role": "system", "content": _text(rng)}] if rng.random() < 0.3 else []
    for turn in range(rng.randint(1, 4)):
        messages.append({"role": "user", "content": _text(rng)})
        if tools and rng.random() < 0.4:
            call_id = f"call{turn}abcd"
            call = {"id": call_id, "type": "function", "function": {"name": f"get_{turn}", "arguments": {"q": "x"}}}
            messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
            messages.append({"role": "tool", "tool_call_id": call_id, "name": f"get_{turn}", "content": _text(rng)})
        answer = {"role": "assistant", "content": _text(rng)}
        if rng.random() < 0.2:
            answer["weight"] = 0
        messages.append(answer)
    return messages


SCHEMA = [{"type": "function", "function": {"name": "get_0", "description": "?", "parameters": {"type": "object"}}}]


def _templates():
    trl = files("trl") / "chat_templates"
    return {
        "chatml": None,  # the tiny tokenizer's own
        "vicuna": masks.VICUNA_TEMPLATE,
        "qwen2_5 (tools)": (trl / "qwen2_5.jinja").read_text(),
        "qwen2_5_training (generation markers)": (trl / "qwen2_5_training.jinja").read_text(),
        "qwen3 (found spans)": (trl / "qwen3.jinja").read_text(),
        "llama3_training (generation markers)": (trl / "llama3_training.jinja").read_text(),
        "mistral_v3": (TEMPLATES / "mistral_v3.jinja").read_text(),
        "mistral_v11": (TEMPLATES / "mistral_v11.jinja").read_text(),
    }


def _with_bos(tokenizer):
    from tokenizers import processors

    bos = tokenizer.convert_ids_to_tokens(0)
    tokenizer.bos_token = bos
    tokenizer._tokenizer.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, 0)])
    return tokenizer


def _rows(tokenizer, rng: random.Random, tools: bool, n: int) -> tuple[list[str], list]:
    texts, spans = [], []
    for _ in range(n):
        messages = _conversation(rng, tools)
        try:
            text, row_spans, _ = assistant_spans(tokenizer, messages, 0, SCHEMA if tools else None)
        except Exception:  # noqa: BLE001  rows a template refuses (MaskError, its own errors) are never encoded
            continue
        texts.append(text)
        spans.append(row_spans)
        texts.append(text)
        spans.append([(0, len(text))])  # every_token
    for _ in range(n // 2):  # plain text and prompt-completion text (the completion's first character, maybe mid-token)
        text = _text(rng) + _text(rng)
        texts.append(text)
        spans.append(rng.choice([0, rng.randint(0, max(len(text), 1))]))
    return texts, spans


def _same(tokenizer, texts, spans, max_length):
    new, old = (
        encode_texts(tokenizer, texts, spans, max_length),
        reference_encode_texts(tokenizer, texts, spans, max_length),
    )
    assert len(new) == len(old)
    for k, (a, b) in enumerate(zip(new, old)):
        assert a == b, (k, texts[k], spans[k])
        assert [type(x) for x in a.mask] == [type(x) for x in b.mask]  # Python ints, as before
        assert labels_of(a, IGNORE) == reference_labels(b, IGNORE)
    return new


@pytest.mark.parametrize(("name", "bos"), [*((name, False) for name in _templates()), ("chatml", True)])
def test_encoded_rows_and_labels_are_those_of_the_reference(tiny_tokenizer, name, bos):
    """bos: a tokenizer that adds it to plain text (chat rows are tokenized without special tokens)."""
    tokenizer = copy.deepcopy(tiny_tokenizer)
    if (template := _templates()[name]) is not None:
        tokenizer.chat_template = template
    if bos:
        tokenizer = _with_bos(tokenizer)
    rng = random.Random(f"{name}-{bos}")
    texts, spans = _rows(tokenizer, rng, tools="tools" in name or "mistral" in name, n=40)
    chat = [s for s in spans if not isinstance(s, int)]
    assert len(chat) >= 30 and any(len(s) > 1 for s in chat)  # 15 conversations or more, some of several answers
    whole = _same(tokenizer, texts, spans, 10**6)
    assert any(0 < sum(e.mask) < len(e.mask) for e in whole)
    # truncation at every boundary of some chat and plain rows: where the mask changes, at the ends, one past
    rows = [k for k in range(len(whole)) if not isinstance(spans[k], int)][:6] + [
        k for k in range(len(whole)) if isinstance(spans[k], int)
    ][:3]
    cuts = {1, 2}
    for k in rows:
        mask = whole[k].mask
        cuts |= {n + d for n in range(1, len(mask)) if mask[n] != mask[n - 1] for d in (0, 1)}
        cuts |= {len(mask) - 1, len(mask), len(mask) + 1}
    for max_length in sorted(cuts - {0}):
        _same(tokenizer, [texts[k] for k in rows], [spans[k] for k in rows], max_length)
    if name == "chatml" and not bos:  # more rows than masks._BATCH: rows of a later batch keep their own spans
        _same(tokenizer, texts * (masks._BATCH // len(texts) + 1), spans * (masks._BATCH // len(texts) + 1), 64)


def test_edge_rows_are_those_of_the_reference(tiny_tokenizer):
    texts = ["", "", "x", "x", "hello world", "hello world", "<|im_end|>", " a"]
    spans = [[], 0, [], 5, [(0, 0)], [(3, 2), (0, 1), (6, 11), (6, 11)], 3, [(1, 2)]]
    for max_length in (1, 2, 3, 100):
        _same(tiny_tokenizer, texts, spans, max_length)


def test_prepare_data_gives_the_dataset_and_report_of_the_reference(tmp_path, tiny_tokenizer, monkeypatch):
    rng = random.Random(7)
    lines = []
    for k in range(120):
        if k % 6 == 0:
            lines.append({"text": _text(rng) + "x"})
        elif k % 6 == 1:
            lines.append({"prompt": _text(rng) + "q", "completion": _text(rng) + "a"})
        else:
            lines.append({"messages": _conversation(rng, tools=False)})
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    for every_token in (False, True):
        for max_length in (16, 48, 512):
            new_report, new = data_mod.prepare_data(
                str(path), tiny_tokenizer, max_length, every_token=every_token, show=5
            )
            with monkeypatch.context() as m:
                m.setattr(data_mod, "encode_texts", reference_encode_texts)
                m.setattr(data_mod, "labels_of", reference_labels)
                old_report, old = data_mod.prepare_data(
                    str(path), tiny_tokenizer, max_length, every_token=every_token, show=5
                )
            assert new["input_ids"] == old["input_ids"] and new["labels"] == old["labels"]
            assert new_report.render() == old_report.render() and new_report.samples == old_report.samples
            assert len(new) > (60 if max_length == 512 else 10)
