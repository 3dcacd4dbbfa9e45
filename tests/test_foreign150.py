"""Users from other tools, explore32's leftovers (helper 150): a full fine-tune's rate given by -o with no method,
a share written as a percentage, axolotl's turn-key mappings, LLaMA-Factory's dataset names, trust_remote_code."""

from __future__ import annotations

import json

import pytest

from ftctl.errors import FtctlError
from ftctl.spec import build
from tests.test_data import EOT, trained_spans


def test_a_full_fine_tunes_rate_by_o_with_no_method_asks_which():
    """`-o learning_rate=2e-5` (typed by hand, or a pasted line's --learning_rate) with no method trained LoRA, the
    default, at a full fine-tune's rate, where adapters learn little: only a run file's rate asked for the method."""
    with pytest.raises(FtctlError) as e:
        build(None, None, ["learning_rate=2e-5"])
    said = str(e.value)
    assert said.startswith("learning_rate=2e-05 (-o) with no method given: lora, the default, trains adapters"), said
    assert "give --method fft to train every weight, a LoRA rate (-o learning_rate=2e-4), or --method lora" in said
    assert build(None, {"method": "lora"}, ["learning_rate=2e-5"]).learning_rate == 2e-5  # asked for
    assert build(None, {"method": "fft"}, ["learning_rate=2e-5"]).method == "fft"
    assert build(None, None, ["learning_rate=2e-5", "lora_r=16"]).method == "lora"  # a LoRA key says it
    assert build(None, None, ["learning_rate=2e-4"]).method == "lora"
    assert build({"method": "sft"}, None, ["learning_rate=1e-5"]).method == "sft"  # the run file's method


@pytest.mark.parametrize("key, given, number", [("eval_split", "5%", "0.05"), ("warmup_ratio", "3 %", "0.03")])
def test_a_share_written_as_a_percentage_names_the_number(tmp_path, key, given, number):
    """`-o eval_split=5%` was "expects a number" and no more; it names the number (not taken as it is: eval_split of
    1 or more is a number of rows, and 100% read as 1 would hold out one row)."""
    with pytest.raises(FtctlError) as e:
        build(None, None, [f"{key}={given}"])
    assert str(e.value) == (
        f"{key}={given!r} (-o): expects a number, and {given} is {number}: -o {key}={number} ({key}: {number} in a "
        "run file)."
    )
    with pytest.raises(FtctlError, match=r"expects a number\.$"):
        build(None, None, [f"{key}=five"])  # as before


def _axolotl(**entry):
    return {"adapter": "lora", "datasets": [{"path": "chat.jsonl", "type": "chat_template", **entry}]}


def test_axolotls_turn_mappings_say_what_to_rename_in_the_data():
    """axolotl's field_messages: chat with message_property_mappings (or message_field_role/_content) was noted as
    "not read" and then every row failed "not a conversation": read into data_columns since task 159
    (tests/test_foreign159*.py); turns ftctl reads by their own names are taken as they are, with no description."""
    mapped = {"role": "speaker", "content": "text"}
    spec = build(_axolotl(field_messages="chat", message_property_mappings=mapped))
    assert json.loads(spec.data_columns["chat.jsonl"])["messages"] == "chat"
    assert json.loads(build(_axolotl(message_field_content="text")).data_columns["chat.jsonl"])["content"] == "text"
    sharegpt = {"role": "from", "content": "value"}
    notes = []  # what ftctl reads anyway: taken, and not called unread
    spec = build(_axolotl(field_messages="conversations", message_property_mappings=sharegpt), notes=notes)
    assert spec.data_path == "chat.jsonl" and not spec.data_columns
    assert not any("field_messages" in n for n in notes), notes
    assert build(_axolotl(field_messages="messages", message_field_role="role")).data_path == "chat.jsonl"


def _llama_factory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    info = {
        "alpaca_en_demo": {"file_name": "alpaca_en_demo.json"},
        "dialogs": {
            "file_name": "dialogs.json",
            "formatting": "sharegpt",
            "columns": {"messages": "dialog"},
            "tags": {"role_tag": "speaker", "content_tag": "text", "user_tag": "USER", "assistant_tag": "BOT"},
        },
        "hub": {"hf_hub_url": "org/name"},
        "ms": {"ms_hub_url": "org/name"},
        "hub_qa": {"hf_hub_url": "org/qa", "columns": {"prompt": "question", "response": "answer"}},
    }
    (data / "dataset_info.json").write_text(json.dumps(info))
    (data / "alpaca_en_demo.json").write_text(json.dumps([{"instruction": "Say hi", "input": "", "output": "Hi!"}]))
    dialog = [{"speaker": "USER", "text": "Q"}, {"speaker": "BOT", "text": "A"}]
    (data / "dialogs.json").write_text(json.dumps([{"dialog": dialog}]))


def test_llama_factorys_dataset_names_are_its_dataset_info_files(tmp_path, monkeypatch, tiny_tokenizer):
    """LLaMA-Factory's `dataset: alpaca_en_demo,identity` (entries of dataset_dir's dataset_info.json, in every
    example of it) was refused with a generic example; the names are their file_name files now, each read as its
    entry says (the dialogs' columns, turn keys and roles renamed), the loss on the answers."""
    from ftctl.trainer.data import prepare_data

    _llama_factory(tmp_path, monkeypatch)
    notes = []
    spec = build({"dataset": "alpaca_en_demo,dialogs", "dataset_dir": "data", "eval_dataset": "hub"}, notes=notes)
    assert spec.data_path == "data/alpaca_en_demo.json,data/dialogs.json", spec.data_path
    assert spec.eval_data_path == "hf://datasets/org/name"
    assert notes[0] == (
        "dataset: alpaca_en_demo, dialogs (run file) are data_path data/alpaca_en_demo.json, data/dialogs.json "
        "(data/dataset_info.json's entries; each file read as its entry says)"
    )
    assert build({"dataset": ["dialogs"]}).data_path == "data/dialogs.json"  # dataset_dir's default: data
    with pytest.raises(FtctlError, match=r"'identity' is not an entry of data/dataset_info.json \(it names alpaca_"):
        build({"dataset": "alpaca_en_demo,identity"})
    with pytest.raises(FtctlError, match="entry 'ms' has no file_name or hf_hub_url, which ftctl reads"):
        build({"dataset": "ms"})
    with pytest.raises(FtctlError, match=r"'hub_qa' renames prompt, response, which ftctl applies to a file beside"):
        build({"dataset": "hub_qa"})  # (trainer.formats reads an entry beside its file only)
    with pytest.raises(FtctlError, match="LLaMA-Factory's names entries of its dataset_info.json"):
        build({"dataset": "alpaca_en_demo", "dataset_dir": "elsewhere"})  # no such file: as before
    report, rows = prepare_data(spec.data_path, tiny_tokenizer, 256)
    assert report.ok, report.errors
    spans = [trained_spans(tiny_tokenizer, r["input_ids"], r["labels"]) for r in rows]
    assert sorted(spans) == [[f"A{EOT}"], [f"Hi!{EOT}"]], spans


def test_trust_remote_code_true_is_left_off_with_a_note():
    """trust_remote_code: true, in every LLaMA-Factory example (Llama 3's too, which needs none), was refused; it is
    left off with a note (ftctl never runs a repository's code); other values are still refused."""
    notes = []
    assert build({"trust_remote_code": True, "method": "lora"}, notes=notes).method == "lora"
    assert notes == [
        "trust_remote_code: true (run file), as LLaMA-Factory's examples give it for models that need no remote "
        "code, is left off: models load with transformers' own code for their architecture, never a repository's "
        "(remote code stays off): a model whose architecture your transformers lacks fails to load; use one it "
        "supports"
    ]
    with pytest.raises(FtctlError, match="'trust_remote_code' .-o. is not set by hand here: .*remote code stays off"):
        build(None, None, ["trust_remote_code=x"])
