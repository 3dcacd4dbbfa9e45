"""A 2026 user's training data (helper 334, explore68): a row's system prompt in a column beside its turns was left
out silently where the row is a conversational prompt-completion one, or the column is OpenOrca's ``system_prompt``:
the template's default system prompt (Qwen2.5's "You are Qwen...") trained in its place."""

from __future__ import annotations

import pytest

from ftctl.trainer.data import prepare_data
from ftctl.trainer.formats import to_row
from tests.test_data import EOT, trained_spans, write_jsonl

HI = [{"role": "user", "content": "Hi"}]
HELLO = [{"role": "assistant", "content": "Hello"}]


@pytest.mark.parametrize(
    "record",
    [
        {"system": "Be terse.", "prompt": HI, "completion": HELLO},  # TRL's conversational prompt-completion
        {"system_prompt": "Be terse.", "messages": HI + HELLO},  # OpenOrca's column name
        {
            "system_prompt": "Be terse.",
            "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}],
        },
        {"system_prompt": "Be terse.", "instruction": "Hi", "output": "Hello"},  # OpenOrca's, renamed as ftctl says
    ],
)
def test_a_system_prompt_column_is_the_rows_system_turn(record):
    row = to_row("r", record)
    assert not row.problems, row.problems
    assert row.messages[0] == {"role": "system", "content": "Be terse."}, row.messages
    assert [m["role"] for m in row.messages] == ["system", "user", "assistant"]


def test_a_prompt_completion_rows_system_column_is_context_and_its_completion_alone_trains(tmp_path, tiny_tokenizer):
    shot = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Shot"},
        {"role": "user", "content": "Again"},
    ]
    rows = [
        {"system": "Be terse.", "prompt": shot, "completion": HELLO},
        {"system": "Be terse.", "prompt": [{"role": "system", "content": "Other"}, *HI], "completion": HELLO},
    ]
    report, dataset = prepare_data(write_jsonl(tmp_path / "pc.jsonl", rows), tiny_tokenizer, 256)
    assert len(report.errors) == 1 and "a 'system' field and a system turn both: keep one" in report.errors[0]
    (row,) = dataset
    assert tiny_tokenizer.decode(row["input_ids"]).startswith("<|im_start|>system\nBe terse.<|im_end|>")
    assert trained_spans(tiny_tokenizer, row["input_ids"], row["labels"]) == ["Hello" + EOT]  # the shot is context


THINK = {"role": "assistant", "content": "<think>\nAdd two and two.\n</think>\n\n4"}
REASONED = {"role": "assistant", "content": "6", "reasoning_content": "Add three and three."}


def test_a_template_that_drops_every_answers_thinking_refuses_the_rows_naming_one_that_keeps_it(
    tmp_path, tiny_tokenizer, monkeypatch
):
    """DeepSeek-R1-Distill's template cuts each answer's content before its </think>: reasoning in the content (as
    ftctl's own refusal of a dropped reasoning_content advises) trained the bare answers, silently. Refused, naming
    a template that keeps it; with TRL's training copy the thinking trains; Qwen3's, which drops only the thinking
    before the last user turn, still trains the last turn's."""
    from importlib.resources import files

    templates = files("trl") / "chat_templates"
    rows = [{"messages": [{"role": "user", "content": "2+2?"}, THINK]}]
    rows.append({"messages": [*rows[0]["messages"], {"role": "user", "content": "3+3?"}, REASONED]})
    data = write_jsonl(tmp_path / "r.jsonl", rows)
    monkeypatch.setattr(tiny_tokenizer, "chat_template", (templates / "deepseek_r1_distill.jinja").read_text())
    report, _ = prepare_data(data, tiny_tokenizer, 256)
    assert report.bad_rows == 2, report.errors
    assert "the chat template leaves turn 2's reasoning (its <think> block) out" in report.errors[0], report.errors
    assert "TRL's chat_templates/*_training.jinja keep it" in report.errors[0]
    assert "does not write the assistant turns' 'reasoning_content'" in report.errors[1]  # data.py's, as before
    keeps = (templates / "deepseek_r1_distill_training.jinja").read_text()
    monkeypatch.setattr(tiny_tokenizer, "chat_template", keeps)
    report, dataset = prepare_data(write_jsonl(tmp_path / "t.jsonl", rows[:1]), tiny_tokenizer, 256)
    assert report.ok, report.errors
    (span,) = trained_spans(tiny_tokenizer, dataset[0]["input_ids"], dataset[0]["labels"])
    assert "Add two and two.\n</think>\n\n4" in span, span
    monkeypatch.setattr(tiny_tokenizer, "chat_template", (templates / "qwen3.jinja").read_text())
    report, dataset = prepare_data(data, tiny_tokenizer, 256)
    assert report.ok, report.errors
    spans = trained_spans(tiny_tokenizer, dataset[1]["input_ids"], dataset[1]["labels"])
    assert spans[-1] == f"<think>\nAdd three and three.\n</think>\n\n6{EOT}", spans


def test_a_tool_result_given_as_an_object_says_to_write_it_as_json_text():
    """A tool turn's result as an object ({"temp": 20}, as tool datasets often hold it) was refused as "is an
    object, not text", nothing said of what to give instead (a template would write Python's repr of it)."""
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    turns = [*HI, {"role": "assistant", "content": None, "tool_calls": [call]}, {"role": "tool", "content": {"t": 20}}]
    (problem,) = to_row("r", {"messages": [*turns, *HELLO]}).problems
    assert problem == (
        "not a conversation: turn 3 'content' is an object, not text (a tool's result is given to the chat template "
        "as text: write it as its JSON text)"
    )
    (problem,) = to_row("r", {"messages": [*HI, {"role": "assistant", "content": {"t": 20}}]}).problems
    assert problem.endswith("is an object, not text")  # an answer's: as before


def test_openais_older_function_call_is_the_turns_tool_call_and_llama_31s_ipython_a_tool_result():
    """An assistant turn's function_call (OpenAI's functions API, before tool_calls) was left out: with text beside
    it the text alone trained, the call silently gone; without, "content is null". Llama 3.1's role ipython (its
    tool results) was an unknown role."""
    call = {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    for content in ("Let me check.", None, ""):
        turns = [
            *HI,
            {"role": "assistant", "content": content, "function_call": call},
            {"role": "tool", "content": "sunny"},
        ]
        row = to_row("r", {"messages": [*turns, *HELLO]})
        assert not row.problems, row.problems
        assert row.messages[1]["content"] == (content or "")
        assert [{k: v for k, v in c.items() if k != "id"} for c in row.messages[1]["tool_calls"]] == [  # ids drawn
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
        ]
    turns = [*HI, {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": call}]}]
    row = to_row("r", {"messages": [*turns, {"role": "ipython", "content": "sunny"}, *HELLO]})
    assert not row.problems and row.messages[2]["role"] == "tool", (row.problems, row.messages)


def test_tools_and_call_arguments_arrow_stored_as_structs_lose_the_nulls_arrow_gave_them(tmp_path):
    """A `datasets` Dataset (Parquet, save_to_disk) holds every row's tools and call arguments as one struct type:
    each schema listed every other tool's properties as null, and each call's arguments every other call's, which
    trained ('{"city": "Paris", "query": null}'). The nulls are left out; a JSON Lines row's are as written."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from ftctl.trainer.formats import load_rows

    def row(name: str, args: dict, properties: dict) -> dict:
        call = {"id": "c1", "type": "function", "function": {"name": name, "arguments": args}}
        turns = [*HI, {"role": "assistant", "content": "", "tool_calls": [call]}, {"role": "tool", "content": "R"}]
        schema = {"type": "object", "properties": properties}
        return {
            "messages": [*turns, *HELLO],
            "tools": [{"type": "function", "function": {"name": name, "parameters": schema}}],
        }

    records = [
        row("get_weather", {"city": "Paris"}, {"city": {"type": "string"}}),
        row("search", {"query": "x", "limit": 3}, {"query": {"type": "string"}, "limit": {"type": "integer"}}),
    ]
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "t.parquet")  # as datasets' to_parquet writes them
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pa.Table.from_pylist(records).to_pylist()))
    first, written = (load_rows(str(tmp_path / name))[1][0] for name in ("t.parquet", "t.jsonl"))
    assert first.messages[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    assert first.tools[0]["function"]["parameters"]["properties"] == {"city": {"type": "string"}}
    assert written.messages[1]["tool_calls"][0]["function"]["arguments"] == {
        "city": "Paris",
        "query": None,
        "limit": None,
    }
    assert written.tools == first.tools  # a schema's nulls: left out in any file (a JSON row's arguments: as written)


def test_a_system_column_beside_a_text_prompt_and_completion_is_refused_saying_where_to_put_it():
    """Text prompt-completion rows have no turns: their 'system' column was left out silently."""
    (problem,) = to_row("r", {"system": "Be terse.", "prompt": "Q: Hi\\nA:", "completion": " Hello"}).problems
    assert problem.startswith("a 'system' field beside a text prompt and completion, which no chat template renders")
    assert "write it into the 'prompt' text" in problem
    assert not to_row("r", {"system": "", "prompt": "Q: Hi\\nA:", "completion": " Hello"}).problems


def test_qwen3s_earlier_turns_whose_thinking_it_drops_are_context(tmp_path, tiny_tokenizer, monkeypatch):
    """Qwen3's template drops the thinking of the turns before the last user turn: their bare answers trained ("4"
    straight after the assistant header, no <think> block at all), teaching the model to answer without thinking,
    while the data's reasoning for them went nowhere (TRL's Qwen3 training template trains it). They are context,
    as the model sees them when asked; the last turn trains with its thinking. An earlier turn without reasoning
    still trains."""
    from importlib.resources import files

    monkeypatch.setattr(tiny_tokenizer, "chat_template", (files("trl") / "chat_templates" / "qwen3.jinja").read_text())
    plain = {"role": "assistant", "content": "Hello"}
    rows = [
        {"messages": [{"role": "user", "content": "2+2?"}, THINK, {"role": "user", "content": "3+3?"}, REASONED]},
        {"messages": [*HI, plain, {"role": "user", "content": "3+3?"}, REASONED]},
    ]
    report, dataset = prepare_data(write_jsonl(tmp_path / "q.jsonl", rows), tiny_tokenizer, 256)
    assert report.ok, report.errors
    last = f"<think>\nAdd three and three.\n</think>\n\n6{EOT}"
    assert trained_spans(tiny_tokenizer, dataset[0]["input_ids"], dataset[0]["labels"]) == [last]
    assert trained_spans(tiny_tokenizer, dataset[1]["input_ids"], dataset[1]["labels"]) == ["Hello" + EOT, last]
