"""Chat rows -> token ids with a loss mask: assistant content and its end-of-turn token only.

The model's chat template renders the whole conversation. For every assistant turn i we render the
conversation up to the turn before it with the generation prompt (``P``) and up to the turn itself
(``R``); both must be prefixes of the whole rendering. The characters ``R[len(P):]``, less trailing
whitespace, are the assistant's text plus the template's end-of-turn marker (``<|im_end|>``,
``<|eot_id|>``, ``</s>``...). A token is trained on when its first character lies in such a span
(fast tokenizers' offset mappings). This works with templates that lack ``{% generation %}``
markers, which is most of them. Templates that render an earlier turn otherwise once later turns follow (Qwen3
drops its thinking, Mistral v0.3 moves the system prompt into the last user turn, Phi-3 ends the conversation with
eos) are not prefixes, and one without a generation prompt (Alpaca's) writes the turn's header with it: there the
whole conversation is rendered again with the turn's text replaced, where the two differ is the turn's text, and its
span runs on over its tool calls to its end-of-turn token (the last turn's over the eos closing the conversation,
as on the prefix path: Phi-3's trains after one turn as after several); it starts where the generation prompt
ends, where that is a prefix of the whole, as on the prefix path (what the template writes after the prompt, Qwen3's
``<think>`` block, trains in a one-turn row and a longer one alike).

Tool use renders as the template writes it (``tools=``): an assistant turn's span holds its tool calls, a ``tool``
turn (a result) is context like a user's. The template is probed once for what of tool use it writes out; one
that drops the calls, the results or the schemas (or refuses them) refuses the rows that hold them, with one message;
one that refuses call ids other than 9 letters and digits (Mistral's) gets them shortened (formats.short_call_ids), and
one that refuses text beside a turn's calls (Mistral v3's) refuses those rows saying the ways on.

Truncation keeps the first ``max_length`` tokens and drops the rest (the end of the conversation).
Plain-text rows are trained on entirely (bos as the tokenizer adds it, eos appended); a prompt-completion row's
text from the completion's first character on (the same rule at its start), and its conversation's assistant
turns from the completion's first message on.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ftctl.errors import FtctlError
from ftctl.trainer.formats import REASONING_KEYS, short_call_ids

# FastChat's Vicuna v1.1 conversation template, for tokenizers that ship no chat template.
VICUNA_TEMPLATE = (
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{{ messages[0]['content'] + ' ' }}{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{{ 'A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user\\'s questions. ' }}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for m in loop_messages -%}"
    "{%- if m['role'] == 'user' -%}{{ 'USER: ' + m['content'] + ' ' }}"
    "{%- elif m['role'] == 'assistant' -%}{{ 'ASSISTANT: ' + m['content'] + eos_token }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'ASSISTANT:' }}{%- endif -%}"
)

_BATCH = 512
# what encode_texts asks the tokenizer for: no attention mask or token types, lists it would build per row for nothing
_IDS_AND_OFFSETS = {"return_offsets_mapping": True, "return_attention_mask": False, "return_token_type_ids": False}
_PROBE = "\0ftctl-turn-probe\0"  # a turn's text no template writes, to find where it writes the real one


@dataclass
class Encoded:
    """One tokenised row: ids and mask already truncated; ``length`` is the length before."""

    input_ids: list[int]
    mask: list[int]  # 1 where the loss is computed
    length: int
    trainable_before: int  # trainable tokens before truncation
    joined: bool = False  # a prompt-completion row's text: one token holds the prompt's end and the completion's start


def chat_template_from(source: str) -> str:
    """The chat template ``source`` names (TRL's chat_template_path): a Jinja file's text (local or in object
    storage), or the template of the tokenizer in a model directory or of a hub id."""
    from ftctl import storage

    path = Path(source).expanduser()
    if path.is_file() or storage.is_remote(source):
        text = storage.read_text(source) if storage.is_remote(source) else path.read_text()
        if "{{" not in text and "{%" not in text:
            raise FtctlError(f"chat_template_path {source}: the file holds no Jinja ({{{{ }}}} or {{% %}}).")
        return text
    from transformers import AutoTokenizer

    from ftctl.trainer.model import resolve_model

    try:
        template = AutoTokenizer.from_pretrained(resolve_model(source)).chat_template
    except OSError as e:
        raise FtctlError(f"chat_template_path {source}: cannot load its tokenizer ({e}).") from None
    if not isinstance(template, str) or not template:
        raise FtctlError(
            f"chat_template_path {source}: its tokenizer has no chat template (or several by name): pass a "
            "Jinja file, or a model whose tokenizer has one."
        )
    return template


def use_chat_template(tokenizer, source: str | None):
    """``tokenizer`` with the template ``source`` names (a run's chat_template_path) in place of its own; as it is
    without one."""
    if source:
        tokenizer.chat_template = chat_template_from(source)
    return tokenizer


def end_of_turn_ids(tokenizer) -> list[int]:
    """The special token the chat template closes an assistant turn with, beside eos (Llama 3's <|eot_id|>,
    ChatML's <|im_end|>): where generation stops. Empty where the turn ends in eos or in plain text."""
    first = _probe(tokenizer).close_id
    return [first] if first is not None and first != tokenizer.eos_token_id else []


_PROBES: dict = {}  # (tokenizer, chat template) -> _Probe: one probe a template, not one a row


@dataclass(frozen=True)
class _Probe:
    """What a chat template writes around an assistant turn, found once by rendering a probe conversation."""

    close_id: int | None  # the special token right after a turn's text; None where there is none (or unknown)
    close: str | None  # its text; None where there is none, "" where the probe's conversation is refused
    written: str  # what the template writes after a turn's text, up to the first line break
    # it writes an assistant turn's header with the turn's text, not as a generation prompt (Alpaca's "### Response:"
    # comes with the answer): the prefix renderings would put the header in the answer's span
    header_with_turn: bool


def _template_key(tokenizer) -> tuple:
    template = getattr(tokenizer, "chat_template", None)  # a dict where a tokenizer has several by name
    return (id(tokenizer), len(tokenizer), tokenizer.eos_token, json.dumps(template, sort_keys=True))


def _probe(tokenizer) -> _Probe:
    key = _template_key(tokenizer)
    if key not in _PROBES:
        marker = "ftctl-end-of-turn-probe"
        messages = [{"role": "user", "content": "?"}, {"role": "assistant", "content": marker}]
        try:
            text = _render(tokenizer, messages)
        except Exception:  # noqa: BLE001  a template that refuses this conversation: what closes a turn is unknown
            _PROBES[key] = _Probe(None, "", "", False)
            return _PROBES[key]
        header_with_turn = False
        try:
            asked = _render(tokenizer, messages[:1], generation_prompt=True)
            if asked == _render(tokenizer, messages[:1]) and text.startswith(asked):  # no generation prompt
                header_with_turn = bool(text[len(asked) : text.find(marker)].strip())  # Llama 2's " " is none
        except Exception:  # noqa: BLE001  a template that refuses a lone user turn: its prefixes are tried as ever
            pass
        after = text[text.rfind(marker) + len(marker) :].lstrip()
        ids = tokenizer(after, add_special_tokens=False)["input_ids"][:1] if after else []
        special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
        first = ids[0] if ids and ids[0] in special else None
        close = tokenizer.decode([first]) if first is not None else None
        close = close if close and after.startswith(close) else None
        _PROBES[key] = _Probe(first, close, after.split("\n", 1)[0], header_with_turn)
    return _PROBES[key]


def turn_close_problem(tokenizer) -> str | None:
    """Why the model would not learn to stop, where the chat template closes an assistant turn with no special
    token of this tokenizer (a template of another model's, -o chat_template_path: Llama 3's <|eot_id|> on a
    ChatML tokenizer is 8 ordinary tokens, learned as text, and generation never stops); None where it does."""
    probe = _probe(tokenizer)
    if probe.close_id is not None or probe.close == "":  # it closes turns, or what it writes is unknown
        return None
    written = probe.written
    pieces = len(tokenizer(written, add_special_tokens=False)["input_ids"]) if written else 0
    what = f"writes {written!r} ({pieces} ordinary tokens of this tokenizer)" if written else "writes nothing"
    return (
        f"after an assistant turn the chat template {what}, no special token: the model will not learn to stop. Use "
        f"a template whose turns end with one of the tokenizer's own ({tokenizer.eos_token!r} is its eos)"
    )


def ensure_chat_template(tokenizer) -> str | None:
    """Give a tokenizer without a chat template FastChat's Vicuna v1.1 one; return a note saying so."""
    if getattr(tokenizer, "chat_template", None):
        return None
    if tokenizer.eos_token is None:
        raise FtctlError(
            "The tokenizer has neither a chat template nor an eos token, so assistant turns cannot be "
            "ended: use a model whose tokenizer defines a chat template, or plain-text rows ({'text': ...})."
        )
    bos = tokenizer.bos_token_id
    adds_bos = bos is not None and tokenizer("x")["input_ids"][:1] == [bos]  # chat rows are tokenized without it
    tokenizer.chat_template = ("{{ bos_token }}" if adds_bos else "") + VICUNA_TEMPLATE  # as FastChat's rows start
    return (
        "the tokenizer has no chat template: conversations are rendered with FastChat's Vicuna v1.1 "
        f"template (USER: ... ASSISTANT: ...{tokenizer.eos_token}), saved with the tokenizer"
    )


class MaskError(ValueError):
    """A conversation the loss mask cannot be placed on; its message says why, for the row's error line."""


ESCAPED_QUOTE = "&#34;"  # a quote as Jinja's Markup escapes it
_TOOL_PROBES: dict = {}  # (tokenizer, chat template) -> _ToolProbe | None


@dataclass(frozen=True)
class _ToolProbe:
    """What a chat template makes of a tool-calling conversation (TRL's supports_tool_calling asks the same), found
    once by rendering a probe conversation whose every part is a word no template writes itself."""

    drops: frozenset[str]  # the parts it leaves out of its rendering: "tool calls", "tool results", "tools"
    refusal: str | None  # its own error for the conversation (Gemma's "roles must alternate user/assistant...")
    # it adds a call's arguments to text (DeepSeek-V3's), or escapes what it adds them to (Mistral's, `'...' +
    # arguments|tojson|safe`, which writes &#34; for every quote before them): they are given as their JSON
    text_arguments: bool
    # it refuses a call id that is not 9 letters and digits (Mistral's, in its own words): such ids are shortened
    short_ids: bool = False
    # its refusal of an assistant turn with text beside its tool calls (Mistral v3's format has no such turn)
    text_with_calls: str | None = None


def _tool_probe(tokenizer) -> _ToolProbe | None:
    """The template's _ToolProbe; None where the probe fails otherwise (nothing is known: every row's own
    rendering is checked)."""
    from jinja2 import TemplateError

    key = _template_key(tokenizer)
    if key in _TOOL_PROBES:
        return _TOOL_PROBES[key]
    arguments = {"ftctl_probe_key": "ftctl_probe_value"}
    call = {"id": "ftctlprb1", "type": "function", "function": {"name": "ftctl_probe_call", "arguments": arguments}}
    messages = [
        {"role": "user", "content": "?"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "name": "ftctl_probe_call", "content": "ftctl_probe_result"},
        {"role": "assistant", "content": "!"},
    ]
    schema = {"name": "ftctl_probe_schema", "description": "?", "parameters": {"type": "object", "properties": {}}}
    tools = [{"type": "function", "function": schema}]
    parts = {
        "tool calls": ("ftctl_probe_call", "ftctl_probe_value"),
        "tool results": ("ftctl_probe_result",),
        "tools": ("ftctl_probe_schema",),
    }
    try:
        try:
            text, text_arguments = _render(tokenizer, messages, tools=tools), False
            if ESCAPED_QUOTE in text:  # Markup, `|safe`, escaping the text it is added to
                raise TypeError
        except TypeError:  # DeepSeek-V3's `'...' + arguments`: TRL's probe tries their JSON text next, as here
            text, text_arguments = _render(tokenizer, _arguments_as_text(messages), tools=tools), True
    except TemplateError as e:  # its own refusal where it renders a conversation without tools (else each row says)
        probe = _ToolProbe(frozenset(), str(e), False) if _renders(tokenizer, [messages[0], messages[-1]]) else None
    except Exception:  # noqa: BLE001  a template that fails otherwise: what it renders is unknown
        probe = None
    else:
        drops = frozenset(part for part, words in parts.items() if not all(w in text for w in words))
        sent = _arguments_as_text(messages) if text_arguments else messages
        probe = _ToolProbe(drops, None, text_arguments, *_refused_calls(tokenizer, sent, tools))
    _TOOL_PROBES[key] = probe
    return probe


def _refused_calls(tokenizer, messages: list[dict], tools: list) -> tuple[bool, str | None]:
    """(whether the template refuses a call id of another length than the probe's 9 letters and digits, its
    refusal of a turn with text beside its calls): the probe conversation ``messages``, which it renders, rendered
    with an OpenAI-style id, and with text in its calling turn."""
    from jinja2 import TemplateError

    call = messages[1]["tool_calls"][0]
    long_id = "call_ftctlProbe0123456789ab"  # OpenAI's: call_ and 24 letters and digits
    other = [*messages]
    other[1] = {**messages[1], "tool_calls": [{**call, "id": long_id}]}
    other[2] = {**messages[2], "tool_call_id": long_id}
    said = [*messages]
    said[1] = {**messages[1], "content": "ftctl_probe_text"}
    refusals = []
    for conversation in (other, said):
        try:
            _render(tokenizer, conversation, tools=tools)
            refusals.append(None)
        except TemplateError as e:
            refusals.append(str(e))
    return refusals[0] is not None, refusals[1]


def _renders(tokenizer, messages: list[dict]) -> bool:
    try:
        _render(tokenizer, messages)
    except Exception:  # noqa: BLE001  any failure: it does not
        return False
    return True


def _tool_parts(messages: list[dict], tools: list | None) -> set[str]:
    """The parts of a tool-calling conversation ``messages`` and ``tools`` hold (_ToolProbe.drops' names)."""
    parts = {"tools"} if tools else set()
    parts |= {"tool calls"} if any(m.get("tool_calls") for m in messages) else set()
    return parts | ({"tool results"} if any(m["role"] == "tool" for m in messages) else set())


def _arguments_as_text(messages: list[dict]) -> list[dict]:
    """``messages`` with their tool calls' arguments as JSON text, for a template that adds them to text."""

    def text(call: dict) -> dict:
        arguments = call["function"]["arguments"]
        arguments = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
        return {**call, "function": {**call["function"], "arguments": arguments}}

    return [{**m, "tool_calls": [text(c) for c in m["tool_calls"]]} if m.get("tool_calls") else m for m in messages]


def _tool_use(tokenizer, messages: list[dict], tools: list | None) -> list[dict]:
    """``messages`` as the chat template takes them (their calls' arguments as text where it wants text). Raises
    MaskError where the template cannot render what the conversation holds of tool use: it would be left out of
    the rendering, and the model trained on the answers without it (a call as an empty answer). One message for
    every such row, so that the report names them in one line."""
    parts = _tool_parts(messages, tools)
    probe = _tool_probe(tokenizer) if parts else None
    if probe is None:
        return messages
    fix = (
        "train with a chat template that renders tool use, -o chat_template_path=TEMPLATE.jinja or a model whose "
        "template does (e.g. Qwen/Qwen2.5-7B-Instruct; ftctl data check: --chat-template-path), or leave these rows out"
    )
    if probe.refusal:
        raise MaskError(
            f"the chat template cannot render a tool-calling conversation (it says: {probe.refusal}); {fix}"
        )
    if dropped := [part for part in ("tool calls", "tool results", "tools") if part in parts & probe.drops]:
        said = {
            "tool calls": "tool calls ('tool_calls')",
            "tool results": "tool results",
            "tools": "the 'tools' schemas",
        }
        raise MaskError(
            f"the chat template does not render {' or '.join(said[p] for p in dropped)}: training would leave them "
            f"out; {fix}"
        )
    if probe.text_with_calls and any(m.get("tool_calls") and m["content"].strip() for m in messages):
        raise MaskError(
            f"an assistant turn has text beside its tool calls, which the chat template refuses ({probe.text_with_calls!r}"
            "; Mistral v3's format has no such turn, and joins a text turn before a calling one into it): empty the "
            "'content' of the turns that call tools (their calls train alone), train with a template that writes both "
            "(Mistral's v11 and later: -o chat_template_path=TEMPLATE.jinja; ftctl data check: --chat-template-path), "
            "or leave these rows out"
        )
    if probe.short_ids:
        messages = short_call_ids(messages)
    return _arguments_as_text(messages) if probe.text_arguments else messages


def renames_call_ids(tokenizer, messages: list[dict]) -> bool:
    """Whether the chat template gets other call ids than ``messages`` give (short_call_ids: Mistral's)."""
    if not any(m.get("tool_calls") or m["role"] == "tool" for m in messages):
        return False
    probe = _tool_probe(tokenizer)
    return bool(probe and probe.short_ids) and short_call_ids(messages) is not messages


def _render(tokenizer, messages, generation_prompt=False, tools=None) -> str:
    return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=generation_prompt)


def assistant_spans(
    tokenizer, messages: list[dict], first: int = 0, tools: list | None = None
) -> tuple[str, list[tuple[int, int]], bool]:
    """(rendered text, char spans to train on, whether every span ends with the template's end-of-turn token or eos): the
    assistant turns from message ``first`` on (a prompt-completion row's completion), their tool calls included,
    but those of weight 0.

    Raises MaskError with a user-facing message when a trained turn has nothing before it, the template cannot be
    split into turns, or drops a tool call, a tool result or the tools' schemas (_tool_use; a call alone would train
    the model to answer with nothing)."""
    messages = _tool_use(tokenizer, messages, tools)
    full = _render(tokenizer, messages, tools=tools)
    trained = [
        i
        for i, m in enumerate(messages)
        if m["role"] == "assistant" and i >= first and m.get("weight") != 0  # weight 0: OpenAI's "not trained"
    ]
    if trained and trained[0] == 0:  # transformers refuses to render the empty conversation before it
        raise MaskError(
            "the conversation starts with an assistant turn, with nothing to answer: start it with a user (or "
            "system) turn"
        )
    try:
        if _probe(tokenizer).header_with_turn:
            raise _NotAPrefix
        spans = [_prefix_span(tokenizer, messages, i, tools, full) for i in trained]
    except _NotAPrefix:
        spans = _found_spans(tokenizer, full, messages, trained, tools)
    has_eot, ends = True, tuple(x for x in (_probe(tokenizer).close, tokenizer.eos_token) if x)
    for i, (start, end) in zip(trained, spans):
        m = messages[i]
        for call in m.get("tool_calls") or ():
            if call["function"]["name"] not in full[start:end]:
                raise MaskError(
                    f"the chat template does not render tool calls: turn {i + 1}'s call to "
                    f"{call['function']['name']!r} is missing from its rendering; use a template that does "
                    "(-o chat_template_path=...)"
                )
        said = full[start:end].rstrip()
        if said and not (ends and said.endswith(ends)):
            has_eot = False  # the model would not learn to stop (data.py warns: turn_close_problem)
    spans = _thinking_kept(messages, trained, spans, full)
    return full, [(start, end) for start, end in spans if end > start], has_eot


def _thinking(message: dict) -> tuple[str, str] | None:
    """(where it is, the text) of an assistant turn's reasoning: a REASONING_KEYS field, else the ``<think>`` block
    its content starts with; None where it has none."""
    for key in REASONING_KEYS:
        if isinstance(message.get(key), str) and message[key].strip():
            return repr(key), message[key].strip()
    content = message.get("content")
    if isinstance(content, str) and "</think>" in content:
        said = content.split("</think>")[0].split("<think>")[-1].strip()
        return ("its <think> block", said) if said else None
    return None


def _thinking_kept(messages: list[dict], trained: list[int], spans: list, full: str) -> list:
    """``spans`` less those of turns whose reasoning the chat template leaves out. After the last user turn, the
    turn the model writes as it would when asked, that is a MaskError (a DeepSeek-R1-Distill template cuts every
    answer's content before its ``</think>``): the answer would train alone, the model taught to answer without
    thinking, silently. Before it (Qwen3's drops the reasoning of those turns, as it renders a conversation asked)
    the turn is context: its bare answer, which the model never writes so, trained the same lesson."""
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=-1)
    kept = []
    for i, (start, end) in zip(trained, spans):
        if (said := _thinking(messages[i])) and said[1] not in full[start:end]:
            if i < last_user:
                continue
            raise MaskError(
                f"the chat template leaves turn {i + 1}'s reasoning ({said[0]}) out of the conversation's rendering: "
                "the answer would train without it, the model taught to answer without thinking; train with a "
                "template that writes it (-o chat_template_path=TEMPLATE.jinja: TRL's chat_templates/*_training.jinja "
                "keep it; ftctl data check: --chat-template-path), or drop the reasoning from the rows"
            )
        kept.append((start, end))
    return kept


class _NotAPrefix(Exception):
    """The chat template renders an earlier turn otherwise once later turns follow."""


def _prefix_span(tokenizer, messages, i, tools, full) -> tuple[int, int]:
    """Turn i's span: from the end of the conversation before it with the generation prompt to the end of the
    conversation up to it (both prefixes of the whole rendering), less trailing whitespace."""
    before = _render(tokenizer, messages[:i], generation_prompt=True, tools=tools)
    upto = _render(tokenizer, messages[: i + 1], tools=tools)
    if not (full.startswith(before) and full.startswith(upto) and upto.startswith(before)):
        raise _NotAPrefix
    return len(before), len(upto.rstrip())


def _found_spans(tokenizer, full: str, messages: list[dict], trained: list[int], tools) -> list[tuple[int, int]]:
    """The trained turns' spans where the template's renderings are not prefixes of the whole: the conversation is
    rendered again with turn i's text replaced, and where the two renderings differ is that text as the template
    writes it (trimmed, its thinking dropped...), from the generation prompt's end where that is a prefix of the whole;
    the span runs on over its tool calls to the end-of-turn token, and the conversation's last turn's over the eos the
    template closes the conversation with, as the prefix path's does (Phi-3's, which TRL's Phi-3 training template
    trains too)."""
    probe = _probe(tokenizer)
    close = probe.close
    spans = []
    for i in trained:
        m = messages[i]
        other = _render(tokenizer, [*messages[:i], {**m, "content": _PROBE}, *messages[i + 1 :]], tools=tools)
        start = len(os.path.commonprefix([full, other]))
        end = len(full) - len(os.path.commonprefix([full[start:][::-1], other[start:][::-1]]))
        if not probe.header_with_turn and (asked := _generation_prompt_end(tokenizer, full, messages[:i], tools)):
            start = min(start, asked)  # what the template writes after its prompt trains, as on the prefix path
        if end == start and m["content"].strip() and not m.get("tool_calls"):
            raise MaskError(
                f"cannot place the loss mask: the chat template leaves turn {i + 1}'s text out of the whole "
                "conversation's rendering; use a template that renders every turn (-o chat_template_path=...)"
            )
        calls = [c["function"]["name"] for c in m.get("tool_calls") or ()]
        if close and (at := full.find(close, end)) >= 0:
            gap = full[end:at]  # nothing but the turn's tool calls before its end of turn: never the next turn
            if not gap.strip() or (calls and all(name in gap for name in calls)):
                end = at + len(close)
        if i == len(messages) - 1 and tokenizer.eos_token and full[end:].strip() == tokenizer.eos_token:
            end = len(full.rstrip())  # the eos closing the conversation (Phi-3's) trains, as on the prefix path
        spans.append((start, end))
    return spans


def _generation_prompt_end(tokenizer, full: str, before: list[dict], tools) -> int | None:
    """Where the generation prompt after ``before`` ends in the whole rendering ``full``, where that rendering is a
    prefix of it (Qwen3's thinking gate: the ``<think>`` block it writes before the last answer trains, as a one-turn
    row's does and TRL's Qwen3 training template has it); None where it is not."""
    try:
        asked = _render(tokenizer, before, generation_prompt=True, tools=tools)
    except Exception:  # noqa: BLE001  a template that refuses the conversation cut there: the found start stands
        return None
    return len(asked) if full.startswith(asked) else None


def encode_texts(
    tokenizer, texts: list[str], spans: list[list[tuple[int, int]] | int], max_length: int
) -> list[Encoded]:
    """Tokenise rendered texts (batched) and mark tokens starting inside their spans.

    An int ``spans[k]`` means plain text, with bos/eos added: the character the loss starts at (0: every token; a
    prompt-completion row's completion: its tokens and eos)."""
    import numpy as np

    out: list[Encoded] = []
    for lo in range(0, len(texts), _BATCH):
        chunk, chunk_spans = texts[lo : lo + _BATCH], spans[lo : lo + _BATCH]
        chat = [k for k, s in enumerate(chunk_spans) if not isinstance(s, int)]
        plain = [k for k, s in enumerate(chunk_spans) if isinstance(s, int)]
        encoded: dict[int, tuple[list[int], list[int]]] = {}
        joined: set[int] = set()
        if chat:
            enc = tokenizer([chunk[k] for k in chat], add_special_tokens=False, **_IDS_AND_OFFSETS)
            for k, ids, offsets in zip(chat, enc["input_ids"], enc["offset_mapping"]):
                # a token starting in a span trains, and so does one that straddles its start: where the
                # generation prompt ends in a space ("ASSISTANT: "), byte-level BPE merges it into the answer's
                # first token (" AMBER"), which would otherwise never be learned (numpy: a token by span table, not
                # a Python test per token and span)
                s, e = _starts_ends(offsets)
                a, b = _starts_ends(chunk_spans[k])
                inside = ((a <= s[:, None]) & (s[:, None] < b)) | ((s[:, None] < a) & (a < e[:, None]))
                encoded[k] = (list(ids), inside.any(axis=1).astype(np.int64))
        if plain:
            enc = tokenizer([chunk[k] for k in plain], add_special_tokens=True, **_IDS_AND_OFFSETS)
            eos = tokenizer.eos_token_id
            for k, ids, offsets in zip(plain, enc["input_ids"], enc["offset_mapping"]):
                start = chunk_spans[k]
                ids = list(ids)
                # the same rule as a chat span's start; bos and the special tokens (offsets 0, 0) train with the text
                # from its first character only
                s, e = _starts_ends(offsets)
                straddles = (s < start) & (start < e)
                mask = (s >= start) | straddles if start else np.ones(len(s), dtype=bool)
                if start and straddles.any():
                    joined.add(k)
                if eos is not None and (not ids or ids[-1] != eos):
                    ids.append(eos)
                    mask = np.append(mask, True)
                encoded[k] = (ids, mask.astype(np.int64))
        for k in range(len(chunk)):
            ids, mask = encoded[k]
            kept = mask[:max_length].tolist()
            out.append(Encoded(ids[:max_length], kept, len(ids), int(mask.sum()), k in joined))
    return out


def _starts_ends(pairs) -> tuple:
    """(first, second) of each pair in ``pairs`` (offsets, spans) as int64 arrays; empty arrays where none."""
    from itertools import chain

    import numpy as np

    # fromiter over the flattened pairs: ~2.5x faster than np.asarray of a list of tuples (which finds the shape first)
    both = np.fromiter(chain.from_iterable(pairs), dtype=np.int64, count=2 * len(pairs)).reshape(-1, 2)
    return both[:, 0], both[:, 1]


def labels_of(encoded: Encoded, ignore: int) -> list[int]:
    """The row's labels: its token ids where the loss is computed, ``ignore`` elsewhere."""
    import numpy as np

    ids = np.fromiter(encoded.input_ids, dtype=np.int64, count=len(encoded.input_ids))
    mask = np.fromiter(encoded.mask, dtype=bool, count=len(encoded.mask))
    return np.where(mask, ids, ignore).tolist()


def require_fast(tokenizer) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise FtctlError(
            f"The tokenizer {type(tokenizer).__name__} is not a fast tokenizer, and loss masks need its "
            "offset mappings: load it with AutoTokenizer.from_pretrained(..., use_fast=True) "
            "(install `tokenizers`), or convert it."
        )
