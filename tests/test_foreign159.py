"""Users from other tools (helper 159): LLaMA-Factory's mix_strategy/interleave_probs as data_weights, its
dataset_info.json entries naming a Hub dataset's folder, revision, subset or split, and axolotl's per-dataset
column maps (custom type dicts, field_messages, message_property_mappings, roles) read into the data."""

from __future__ import annotations

import json

import pytest

from ftctl.errors import FtctlError
from ftctl.spec import build


def _llama_factory(tmp_path, monkeypatch):
    """data/dataset_info.json with a 20-row Alpaca file, a 400-row messages file and Hub entries."""
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.json").write_text(json.dumps([{"instruction": f"q{i}", "output": "a"} for i in range(20)]))
    turns = [{"role": "user", "content": "u"}, {"role": "assistant", "content": "x"}]
    (data / "b.jsonl").write_text("".join(json.dumps({"messages": turns}) + "\n" for _ in range(400)))
    info = {
        "a": {"file_name": "a.json"},
        "b": {"file_name": "b.jsonl"},
        "b_test": {"file_name": "b.jsonl", "split": "test"},
        "hub": {"hf_hub_url": "org/name"},
        "hub_folder": {"hf_hub_url": "org/name", "folder": "en/", "revision": "v1.0"},
        "hub_subset": {"hf_hub_url": "org/name", "subset": "en"},
        "hub_valid": {"hf_hub_url": "org/name", "split": "validation"},
        "hub_test": {"hf_hub_url": "org/name", "split": "test"},
    }
    (data / "dataset_info.json").write_text(json.dumps(info))


@pytest.mark.parametrize(
    "mix, weights, shares",
    [
        ({"mix_strategy": "interleave_under", "interleave_probs": "0.7,0.3"}, [1, 0.0214286], (20, 9)),
        ({"mix_strategy": "interleave_over", "interleave_probs": [0.7, 0.3]}, [46.6667, 1], (933, 400)),
        ({"mix_strategy": "interleave_under"}, [1, 0.05], (20, 20)),  # interleave_datasets' round robin
    ],
)
def test_llama_factorys_interleave_probs_are_the_data_weights_of_those_shares(
    tmp_path, monkeypatch, mix, weights, shares
):
    """mix_strategy and interleave_probs were refused ("data_weights, one a dataset"), leaving the user to count rows:
    with dataset's entries as local files they are the data_weights that mix those shares as LLaMA-Factory's
    interleave_datasets does (under: stop at the first dataset used up; over: at the last)."""
    from ftctl.trainer.data import mixed_rows

    _llama_factory(tmp_path, monkeypatch)
    notes = []
    spec = build({"dataset": "a,b", "method": "lora", **mix}, notes=notes)
    assert spec.data_path == "data/a.json,data/b.jsonl"
    assert [w for _, w in spec.data_mix] == weights, spec.data_weights
    assert tuple(mixed_rows(n, w) for n, w in zip((20, 400), weights)) == shares
    said = next(n for n in notes if n.startswith("mix_strategy"))
    assert f"(run file) are data_weights {spec.data_weights} here: data/a.json 20 rows x " in said, said


def test_llama_factorys_mix_that_ftctl_cannot_count_is_refused_with_its_fix(tmp_path, monkeypatch):
    _llama_factory(tmp_path, monkeypatch)
    with pytest.raises(FtctlError, match=r"not concat \(LLaMA-Factory refuses it so too\): add mix_strategy: inter"):
        build({"dataset": "a,b", "interleave_probs": "0.7,0.3"})
    with pytest.raises(FtctlError, match="are no shares of the 2 datasets of dataset: give one above 0 each"):
        build({"dataset": "a,b", "mix_strategy": "interleave_under", "interleave_probs": "0.5,0.3"})
    with pytest.raises(FtctlError, match="hf://datasets/org/name is no local JSON file whose rows ftctl counts here"):
        build({"dataset": "a,hub", "mix_strategy": "interleave_over"})
    with pytest.raises(FtctlError, match="and data_weights both mix the datasets: keep one"):
        build({"dataset": "a,b", "mix_strategy": "interleave_under", "data_weights": "1,1"})
    with pytest.raises(
        FtctlError, match=r"mix_strategy: interleave \(run file\) is none of LLaMA-Factory.s: concat, interleave_"
    ):
        build({"dataset": "a,b", "mix_strategy": "interleave"})
    notes = []
    spec = build({"dataset": "a,b", "mix_strategy": "concat", "method": "lora"}, notes=notes)
    assert spec.data_weights is None and "mix_strategy: concat (run file): each dataset's rows once" in notes[-1]


def test_llama_factorys_hub_entries_folder_and_revision_are_read_subset_and_split_refused(tmp_path, monkeypatch):
    """dataset_info.json's folder and revision were dropped (the whole repository's train split read, silently); a
    subset or another split read the train split, silently. The folder and revision are in the path now; a subset
    (a configuration: its files cannot be learnt with nothing downloaded) and a split ftctl does not read are refused
    with the files to give."""
    _llama_factory(tmp_path, monkeypatch)
    spec = build({"dataset": "hub_folder", "eval_dataset": "hub_test", "method": "lora"})
    assert spec.data_path == "hf://datasets/org/name@v1.0/en"
    assert spec.eval_data_path == "hf://datasets/org/name"  # held-out data reads the test split
    with pytest.raises(FtctlError) as e:
        build({"dataset": "hub_subset"})
    assert str(e.value).startswith(
        "dataset (run file): data/dataset_info.json's entry 'hub_subset' names subset 'en' of org/name, a "
        "configuration of the Hub dataset, which ftctl does not read by name (nothing is downloaded to learn its "
        "files): give its files as data_path, hf://datasets/org/name/en/ where the dataset keeps each subset in a "
        "folder of its name"
    ), str(e.value)
    with pytest.raises(FtctlError, match=r"'hub_valid' asks org/name's split 'validation', and ftctl reads a Hub "):
        build({"dataset": "hub_valid"})
    with pytest.raises(FtctlError, match=r"e.g. hf://datasets/org/name/data/validation-\*.parquet\), and drop"):
        build({"eval_dataset": "hub_valid", "dataset": "a"})  # held-out data reads test: the validation files
    with pytest.raises(FtctlError, match="asks file b.jsonl's split 'test', which LLaMA-Factory does not have either"):
        build({"dataset": "b_test"})


def _entry(**entry):
    return {"path": "chat.jsonl", "type": "chat_template", **entry}


def test_axolotls_column_maps_are_read_into_ftctls_description_of_the_data():
    """axolotl's field_messages, message_property_mappings (or message_field_role/_content), roles and a custom
    type's field_* were refused with renames to make in the data: they are ftctl's description of the dataset's own
    names now (data_columns), with axolotl's default roles where the entry gives none."""
    from ftctl.tool_datasets import axolotl_columns

    mapped = {"role": "speaker", "content": "text"}
    described, why = axolotl_columns(_entry(field_messages="chat", message_property_mappings=mapped))
    assert why is None and described == {
        "messages": "chat",
        "role": "speaker",
        "content": "text",
        "roles": {"human": "user", "gpt": "assistant"},
    }
    roles = {"user": ["USER", "client"], "assistant": "BOT"}  # axolotl's replace its defaults
    described, _ = axolotl_columns(_entry(message_field_role="speaker", roles=roles))
    assert described == {
        "messages": "messages",
        "role": "speaker",
        "content": "content",
        "roles": {"USER": "user", "client": "user", "BOT": "assistant"},
    }
    sharegpt = {"field_messages": "conversations", "message_property_mappings": {"role": "from", "content": "value"}}
    assert axolotl_columns(_entry(**sharegpt)) == ({}, None)  # read as they are: nothing to describe
    kind = {"field_instruction": "context", "field_output": "target", "system_prompt": "Be brief.", "format": ""}
    assert axolotl_columns({"path": "qa.jsonl", "type": kind}) == (
        {"instruction": "context", "output": "target", "system_prompt": "Be brief."},
        None,
    )


@pytest.mark.parametrize(
    "entry, said",
    [
        (
            {"type": {"field_instruction": "q", "format": "[INST] {instruction} [/INST]"}},
            "type's format: '[INST] {instruction} [/INST]': ftctl writes each prompt with the model's chat template",
        ),
        ({"type": {"field_instruction": "q", "prompt": "x"}}, "type: prompt are no keys of axolotl's custom type"),
        (
            {"message_property_mappings": {"role": "r", "content": "c", "tool_calls": "calls"}},
            "message_property_mappings' tool_calls: ftctl renames a turn's role and content only: rename 'calls' to",
        ),
        ({"roles": {"human": ["USER"]}}, "roles: human: a chat template's roles are system, user, assistant, tool"),
    ],
)
def test_axolotls_column_maps_ftctl_cannot_honour_are_refused_naming_the_field(entry, said):
    from ftctl.tool_datasets import axolotl_columns

    assert said in axolotl_columns(_entry(**entry))[1]


def test_a_datasets_own_names_train_the_right_roles_and_loss(tmp_path, tiny_tokenizer):
    """Rows read by data_columns (formats.described): a `chat` column of speaker/text turns by USER/BOT trains BOT's
    turns only; a custom type's context/target columns train the target, under the entry's system prompt; a
    dataset without a description beside them is read as before."""
    from ftctl.trainer.data import prepare_data
    from tests.test_data import EOT, trained_spans

    chat = tmp_path / "chat.jsonl"
    turns = [{"speaker": "USER", "text": "Q"}, {"speaker": "BOT", "text": "A"}, {"speaker": "USER", "text": "Q2"}]
    chat.write_text(json.dumps({"chat": [*turns, {"speaker": "BOT", "text": "B"}]}) + "\n")
    qa = tmp_path / "qa.jsonl"
    qa.write_text(json.dumps({"context": "Say hi", "target": "Hi!"}) + "\n")
    plain = tmp_path / "plain.jsonl"
    plain.write_text(
        json.dumps({"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "C"}]})
    )
    columns = {
        str(chat): json.dumps(
            {"messages": "chat", "role": "speaker", "content": "text", "roles": {"USER": "user", "BOT": "assistant"}}
        ),
        str(qa): json.dumps({"instruction": "context", "output": "target", "system_prompt": "Be brief."}),
    }
    path = f"{chat},{qa},{plain}"
    report, rows = prepare_data(path, tiny_tokenizer, 256, columns=columns, show=3)
    assert report.ok, report.errors
    spans = [trained_spans(tiny_tokenizer, r["input_ids"], r["labels"]) for r in rows]
    assert spans == [[f"A{EOT}", f"B{EOT}"], [f"Hi!{EOT}"], [f"C{EOT}"]], spans
    system = tiny_tokenizer.decode(rows[1]["input_ids"])
    assert "Be brief." in system and "Say hi" in system, system
    report, _ = prepare_data(path, tiny_tokenizer, 256)  # without the description: not rows ftctl reads
    assert not report.ok and "keys 'chat'" in report.error_message(), report.error_message()
