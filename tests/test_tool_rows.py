"""Tool-calling rows as other trainers' data gives them: LLaMA-Factory's function_call turns with text before the
call, Mistral's templates that need call ids, and LLaMA-Factory's dataset_info.json mapping of a file's columns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftctl.errors import FtctlError
from ftctl.trainer.data import prepare_data
from tests.test_data import EOT, LF_ROW, LF_TOOLS, OPENAI_ROW, qwen25_template, trained_spans, write_jsonl

TEMPLATES = Path(__file__).parent / "templates"
HUMAN = {"from": "human", "value": "Open Halcyon Deep."}
CALL = {"name": "door_code", "arguments": {"station": "Halcyon Deep"}}
QWEN_CALL = '<tool_call>\n{"name": "door_code", "arguments": {"station": "Halcyon Deep"}}\n</tool_call>'


def lf_row(call_value: str) -> dict:
    """LF_ROW with its function_call turn's value ``call_value``."""
    turns = [HUMAN, {"from": "function_call", "value": call_value}, *LF_ROW["conversations"][2:]]
    return {**LF_ROW, "conversations": turns}


def mistral_template(version: str) -> str:
    """Mistral's own chat template (tests/templates: as mistral_common generates it for its tokenizers)."""
    return (TEMPLATES / f"mistral_{version}.jinja").read_text()


def test_a_function_call_with_text_before_it_trains_the_text_and_the_call(tmp_path, tiny_tokenizer, monkeypatch):
    """LLaMA-Factory writes a function_call turn's text (a <think> block, or text around <tool_call> tags) before
    the call; that text was refused with the row. It is the assistant turn's content, trained with its call."""
    monkeypatch.setattr(tiny_tokenizer, "chat_template", qwen25_template())  # the fixture is shared
    as_json = json.dumps(CALL)
    rows = [
        lf_row("Let me look it up.\n" + as_json),
        lf_row(f"Let me look it up.\n<tool_call>{as_json}</tool_call>"),
        lf_row("<think>\nThe code is behind a tool.\n</think>\n\n" + as_json),
        lf_row("I have [1] note {see below}: " + json.dumps([CALL])),  # brackets in the text are text
    ]
    report, dataset = prepare_data(write_jsonl(tmp_path / "t.jsonl", rows), tiny_tokenizer, 1024)
    assert report.ok and not report.warnings, (report.errors, report.warnings)
    said = ["Let me look it up.", "Let me look it up.", "<think>\nThe code is behind a tool.\n</think>"]
    said.append("I have [1] note {see below}:")
    for text, row in zip(said, dataset):
        spans = trained_spans(tiny_tokenizer, row["input_ids"], row["labels"])
        assert spans == [f"{text}\n{QWEN_CALL}{EOT}", "The code is AMBER-42." + EOT], spans
    # the same tokens and mask as an OpenAI-style row whose assistant turn holds the text and the call
    openai = json.loads(json.dumps(OPENAI_ROW))
    openai["messages"][2]["content"] = "Let me look it up."
    _, (same,) = prepare_data(write_jsonl(tmp_path / "o.jsonl", [openai]), tiny_tokenizer, 1024)
    assert (same["input_ids"], same["labels"]) == (dataset[0]["input_ids"], dataset[0]["labels"])
    # text after the call, or no call JSON at all, is still refused
    bad = [lf_row('{"name": "door_code"}\nDone.'), lf_row("Let me look it up.")]
    report, _ = prepare_data(write_jsonl(tmp_path / "bad.jsonl", bad), tiny_tokenizer, 1024)
    fix = (
        'turn 2 (function_call) must hold the call as JSON, {"name": ..., "arguments": {...}} (or a list of such '
        "calls), after the turn's text or in <tool_call> tags, as LLaMA-Factory reads it, not"
    )
    assert report.errors == [
        f'bad.jsonl line 1: {fix} \'{{"name": "door_code"}}\\nDone.\'',
        f"bad.jsonl line 2: {fix} 'Let me look it up.'",
    ], report.errors


def test_mistrals_templates_get_call_ids_where_the_data_has_none(tmp_path, tiny_tokenizer, monkeypatch):
    """Mistral's templates refuse a tool call without an id of 9 letters and digits and a result without its call's
    (every LLaMA-Factory row and many OpenAI-style ones were refused). Each call gets one, drawn from the row, the
    same in every run; each result the id of the call it answers, in order; ids the data gives are kept."""
    monkeypatch.setattr(tiny_tokenizer, "chat_template", mistral_template("v11"))
    given = json.loads(json.dumps(OPENAI_ROW))
    given["messages"][2]["tool_calls"][0]["id"] = "Abc123xyZ"
    parallel = {
        "conversations": [
            HUMAN,
            {"from": "function_call", "value": json.dumps([CALL, {**CALL, "arguments": {"station": "Tern"}}])},
            {"from": "observation", "value": "AMBER-42"},
            {"from": "observation", "value": "CEDAR-7"},
            {"from": "gpt", "value": "AMBER-42 and CEDAR-7."},
        ]
    }
    path = write_jsonl(tmp_path / "t.jsonl", [LF_ROW, OPENAI_ROW, given, parallel])
    report, dataset = prepare_data(path, tiny_tokenizer, 1024)
    assert report.ok, report.errors
    texts = [tiny_tokenizer.decode(row["input_ids"]) for row in dataset]
    lf, openai, kept, two = texts
    call_id = lf.partition("[CALL_ID]")[2][:9]
    assert call_id.isalnum() and len(call_id) == 9
    call = f'[TOOL_CALLS]door_code[CALL_ID]{call_id}[ARGS]{{"station": "Halcyon Deep"}}{EOT}'
    assert call in lf and f"[TOOL_RESULTS]{call_id}[TOOL_CONTENT]AMBER-42[/TOOL_RESULTS]" in lf
    assert openai == lf  # the same call, the same id
    spans = trained_spans(tiny_tokenizer, dataset[0]["input_ids"], dataset[0]["labels"])
    assert spans == [call, "The code is AMBER-42." + EOT]  # the id is the call's: trained; the result's is not
    assert "[CALL_ID]Abc123xyZ[ARGS]" in kept and "[TOOL_RESULTS]Abc123xyZ[TOOL_CONTENT]AMBER-42" in kept
    first, second = (part[:9] for part in two.split("[CALL_ID]")[1:])
    assert first != second and f"{first}[TOOL_CONTENT]AMBER-42" in two and f"{second}[TOOL_CONTENT]CEDAR-7" in two
    assert prepare_data(path, tiny_tokenizer, 1024)[1]["input_ids"] == dataset["input_ids"]  # alike in every run

    # Mistral v3's (Mistral-7B-Instruct-v0.3) writes `'...' + arguments|tojson|safe`, which escaped every quote
    # before the arguments (&#34;): it gets them as their JSON text
    monkeypatch.setattr(tiny_tokenizer, "chat_template", mistral_template("v3"))
    report, dataset = prepare_data(path, tiny_tokenizer, 1024)
    assert report.ok, report.errors
    spans = trained_spans(tiny_tokenizer, dataset[0]["input_ids"], dataset[0]["labels"])
    assert (
        spans[0]
        == f'[TOOL_CALLS] [{{"name": "door_code", "arguments": {{"station": "Halcyon Deep"}}, "id": "{call_id}"}}]{EOT}'
    )


def write_info(directory: Path, entries: dict) -> None:
    (directory / "dataset_info.json").write_text(json.dumps(entries))


def test_a_file_llama_factorys_dataset_info_names_is_read_as_its_entry_says(tmp_path, tiny_tokenizer, monkeypatch):
    """A file named in LLaMA-Factory's dataset_info.json beside it, with its own column and tag names, is read as
    its entry says (they were 'not a conversation' or 'unknown role' errors); the directory or the dataset_info.json
    itself is refused in one line that says to name the files."""
    monkeypatch.setattr(tiny_tokenizer, "chat_template", qwen25_template())
    data = tmp_path / "data"
    data.mkdir()
    turns = [
        {"speaker": "USER", "text": "Open Halcyon Deep."},
        {"speaker": "CALL", "text": json.dumps(CALL)},
        {"speaker": "RESULT", "text": "AMBER-42"},
        {"speaker": "BOT", "text": "The code is AMBER-42."},
    ]
    write_jsonl(
        data / "dialogs.jsonl", [{"dialog": turns, "functions": json.dumps(LF_TOOLS), "sys": "You open doors."}]
    )
    write_jsonl(data / "qa.jsonl", [{"question": "Open Halcyon Deep.", "answer": "AMBER-42."}])
    write_jsonl(
        data / "chat.jsonl", [{"messages": [{"from": "human", "value": "Hi."}, {"from": "gpt", "value": "Hello."}]}]
    )
    write_jsonl(data / "pairs.jsonl", [{"conversations": [HUMAN], "chosen": HUMAN, "rejected": HUMAN}])
    write_info(
        data,
        {
            "dialogs": {
                "file_name": "dialogs.jsonl",
                "formatting": "sharegpt",
                "columns": {"messages": "dialog", "tools": "functions", "system": "sys"},
                "tags": {
                    "role_tag": "speaker",
                    "content_tag": "text",
                    "user_tag": "USER",
                    "assistant_tag": "BOT",
                    "function_tag": "CALL",
                    "observation_tag": "RESULT",
                },
            },
            "qa": {"file_name": "qa.jsonl", "columns": {"prompt": "question", "response": "answer"}},
            "chat": {"file_name": "chat.jsonl", "formatting": "openai"},  # LLaMA-Factory's default tags: from/value
            "pairs": {"file_name": "pairs.jsonl", "ranking": True, "formatting": "sharegpt"},
            "hub": {"hf_hub_url": "ORG/NAME"},
        },
    )
    report, (dialog,) = prepare_data(str(data / "dialogs.jsonl"), tiny_tokenizer, 1024)
    assert report.ok, report.errors
    applied = (  # `ftctl data check` says which entry renamed what
        "dataset_info.json's entry 'dialogs' applied to dialogs.jsonl: formatting sharegpt; renames columns "
        "dialog -> conversations, functions -> tools, sys -> system; turn keys speaker -> from, text -> value; roles "
        "USER -> human, BOT -> gpt, RESULT -> observation, CALL -> function_call"
    )
    assert applied in report.notes and applied in report.render(), report.notes
    _, (lf,) = prepare_data(write_jsonl(tmp_path / "lf.jsonl", [LF_ROW]), tiny_tokenizer, 1024)
    assert (dialog["input_ids"], dialog["labels"]) == (lf["input_ids"], lf["labels"])  # LF_ROW in other names
    report, (qa,) = prepare_data(str(data / "qa.jsonl"), tiny_tokenizer, 1024)
    assert trained_spans(tiny_tokenizer, qa["input_ids"], qa["labels"]) == ["AMBER-42." + EOT]
    assert report.notes == [
        "dataset_info.json's entry 'qa' applied to qa.jsonl: formatting alpaca; renames columns question -> "
        "instruction, answer -> output"
    ], report.notes
    report, (chat,) = prepare_data(str(data / "chat.jsonl"), tiny_tokenizer, 1024)
    assert trained_spans(tiny_tokenizer, chat["input_ids"], chat["labels"]) == ["Hello." + EOT]
    report, _ = prepare_data(str(data / "pairs.jsonl"), tiny_tokenizer, 1024)
    assert report.errors == [
        "pairs.jsonl: dataset_info.json's entry 'pairs' reads pairs.jsonl with ranking: preference data (DPO or KTO), "
        "and ftctl trains supervised fine-tuning: make SFT rows of it (each row's chosen answer as its last "
        "assistant turn) in a file of their own"
    ], report.errors
    # a file no entry names is read as it is
    write_jsonl(data / "other.jsonl", [{"instruction": "Open it.", "output": "Done."}])
    report, _ = prepare_data(str(data / "other.jsonl"), tiny_tokenizer, 1024)
    assert report.ok and not any("dataset_info.json" in note for note in report.notes), report.notes

    said = (
        f"{data} is LLaMA-Factory's data directory: its dataset_info.json names 5 datasets (dialogs (dialogs.jsonl), "
        "qa (qa.jsonl), chat (chat.jsonl) and 2 more), which ftctl does not read by name. Give the files of those to "
        f"train on, e.g. --data {data}/dialogs.jsonl (several: comma-separated); each is read as its entry in "
        "dataset_info.json says (formatting, columns, tags)."
    )
    for path in (data, data / "dataset_info.json"):
        with pytest.raises(FtctlError) as e:
            prepare_data(str(path), tiny_tokenizer, 1024)
        assert str(e.value) == said
    # a `datasets` save_to_disk directory's dataset_info.json is its own metadata, not LLaMA-Factory's
    saved = tmp_path / "saved"
    saved.mkdir()
    write_info(saved, {"citation": "", "features": {"text": {"dtype": "string"}}})
    write_jsonl(saved / "rows.jsonl", [{"instruction": "Open it.", "output": "Done."}])
    assert prepare_data(str(saved), tiny_tokenizer, 1024)[0].ok


def openai_calls(*ids: str, text: str = "") -> dict:
    """An OpenAI-style row: the user asks, the assistant calls door_code once an id in ``ids`` (with ``text``),
    each result answers its call by its id (in the other order, so that only the ids pair them), then the answer."""
    calls = [
        {"id": i, "type": "function", "function": {"name": "door_code", "arguments": json.dumps({"station": f"S{k}"})}}
        for k, i in enumerate(ids)
    ]
    results = [{"role": "tool", "tool_call_id": i, "content": f"CODE-{k}"} for k, i in reversed(list(enumerate(ids)))]
    return {
        "messages": [
            {"role": "user", "content": "Open the doors."},
            {"role": "assistant", "content": text, "tool_calls": calls},
            *results,
            {"role": "assistant", "content": "Done."},
        ]
    }


def test_openai_call_ids_are_shortened_for_mistrals_templates_alone(tmp_path, tiny_tokenizer, monkeypatch):
    """OpenAI's call ids (call_ and 24 letters and digits) were kept, and Mistral's templates refused every such row
    ('Tool call must have an id of 9 characters or numbers.'). For a template that refuses them, each id is its last
    9 characters (as vLLM shortens them serving a Mistral model) where they are letters and digits, else 9 drawn
    from it, never one another id of the row has: each result still answers its own call, alike in every run, and
    data check says so. A template that takes any id gets the data's."""
    long_a, long_b = "call_abc123XYZdef456ghi789JK", "call_zzz999YYYdef456ghi789JK"  # the same last 9 characters
    rows = [openai_calls(long_a, long_b), openai_calls("call_1", "Abc123xyZ")]
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    for version in ("v11", "v3"):
        monkeypatch.setattr(tiny_tokenizer, "chat_template", mistral_template(version))
        report, dataset = prepare_data(path, tiny_tokenizer, 1024)
        assert report.errors == [], (version, report.errors)
        assert report.notes == [
            "2 row(s) give tool call ids that are not 9 letters and digits (the first: t.jsonl line 1), which the chat "
            "template (Mistral's) refuses: each is its last 9 characters where they are letters and digits, as vLLM "
            "shortens them serving a Mistral model, else 9 drawn from it; the results keep answering their calls"
        ]
        texts = [tiny_tokenizer.decode(row["input_ids"]) for row in dataset]
        if version == "v11":  # name[CALL_ID]id[ARGS]arguments ... [TOOL_RESULTS]id[TOOL_CONTENT]result
            ids = [[part[:9] for part in text.split("[CALL_ID]")[1:]] for text in texts]
            results = [{part[:9]: part[23:29] for part in text.split("[TOOL_RESULTS]")[1:]} for text in texts]
        else:  # [TOOL_CALLS] [{"name": ..., "arguments": ..., "id": "..."}] ... [TOOL_RESULTS] {"content": ..., "call_id": ...}
            ids = [[part[:9] for part in text.split('"id": "')[1:]] for text in texts]
            results = [
                {json.loads(r)["call_id"]: json.loads(r)["content"] for r in _between(text, "[TOOL_RESULTS] ", "[/")}
                for text in texts
            ]
        (a, b), (one, kept) = ids
        assert a == "def456ghi789JK"[-9:] and b != a and b.isalnum() and len(b) == 9, ids
        assert kept == "Abc123xyZ" and one.isalnum() and len(one) == 9 and one != kept
        assert results == [{a: "CODE-0", b: "CODE-1"}, {one: "CODE-0", kept: "CODE-1"}], results
        assert prepare_data(path, tiny_tokenizer, 1024)[1]["input_ids"] == dataset["input_ids"]  # alike in every run

    # a template that writes ids as they are given, refusing none: the data's own
    monkeypatch.setattr(tiny_tokenizer, "chat_template", ID_TEMPLATE)
    report, dataset = prepare_data(path, tiny_tokenizer, 1024)
    assert report.ok and report.notes == [], (report.errors, report.notes)
    text = tiny_tokenizer.decode(dataset[0]["input_ids"])
    assert f"call {long_a}" in text and f"result {long_a}" in text and f"call {long_b}" in text


# writes a call's id and a result's tool_call_id as they are (and no schemas: the rows give none)
ID_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
    "{% for c in m.get('tool_calls') or [] %}call {{ c['id'] }} {{ c['function']['name'] }} {{ c['function']['arguments'] }}{% endfor %}"
    "{% if m['role'] == 'tool' %}result {{ m['tool_call_id'] }}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _between(text: str, start: str, end: str) -> list[str]:
    return [part.split(end, 1)[0] for part in text.split(start)[1:]]


def test_text_beside_tool_calls_under_mistral_v3_is_one_line_naming_the_fix(tmp_path, tiny_tokenizer, monkeypatch):
    """Mistral v3's template refuses an assistant turn with text and tool calls together, and the row was refused
    in its words alone ('Assistant message cannot have both content and tool calls.'), without the way on. Its
    format has no such turn (a text turn before the calling one is joined into it again), so no rewrite of the row
    trains what it says: one line, naming the rows, says the fixes. Mistral v11's template trains the same rows."""
    with_text = openai_calls("Abc123xyZ", text="Let me look.")
    path = write_jsonl(tmp_path / "t.jsonl", [with_text, openai_calls("Abc123xyZ"), with_text])
    monkeypatch.setattr(tiny_tokenizer, "chat_template", mistral_template("v3"))
    report, dataset = prepare_data(path, tiny_tokenizer, 1024)
    assert report.errors == [
        "t.jsonl lines 1, 3 (2 rows): an assistant turn has text beside its tool calls, which the chat template "
        "refuses ('Assistant message cannot have both content and tool calls.'; Mistral v3's format has no such "
        "turn, and joins a text turn before a calling one into it): empty the 'content' of the turns that call tools "
        "(their calls train alone), train with a template that writes both (Mistral's v11 and later: -o "
        "chat_template_path=TEMPLATE.jinja; ftctl data check: --chat-template-path), or leave these rows out"
    ], report.errors
    assert len(dataset) == 1  # the row without text trains
    monkeypatch.setattr(tiny_tokenizer, "chat_template", mistral_template("v11"))
    report, dataset = prepare_data(path, tiny_tokenizer, 1024)
    assert report.ok, report.errors
    spans = trained_spans(tiny_tokenizer, dataset[0]["input_ids"], dataset[0]["labels"])
    assert spans[0] == f'Let me look.[TOOL_CALLS]door_code[CALL_ID]Abc123xyZ[ARGS]{{"station": "S0"}}{EOT}', spans
