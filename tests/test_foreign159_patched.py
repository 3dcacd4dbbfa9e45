"""axolotl's per-dataset column maps end to end (helper 159, with /work/notes/task-159-extra.patch): a run file's
entry -> RunSpec.data_columns -> the launch's absolute paths -> the trainer's rows, their roles and loss."""

from __future__ import annotations

import json

from ftctl.spec import build


def test_an_axolotl_entrys_own_names_train_its_rows(tmp_path, monkeypatch, tiny_tokenizer):
    """field_messages: chat, message_property_mappings {role: speaker, content: text} and roles {user: [USER],
    assistant: [BOT]} were refused with renames to make in the data; the run reads the rows by them: BOT's turns
    train, USER's do not; the launch preflight finds no row problem; the launch's absolute path keeps them."""
    from ftctl import preflight
    from ftctl.backend import absolute_paths
    from ftctl.trainer.data import build_datasets
    from tests.test_data import EOT, trained_spans

    monkeypatch.chdir(tmp_path)
    turns = [{"speaker": "USER", "text": "Q"}, {"speaker": "BOT", "text": "A"}]
    (tmp_path / "chat.jsonl").write_text(json.dumps({"chat": turns}) + "\n")
    entry = {
        "path": "chat.jsonl",
        "type": "chat_template",
        "field_messages": "chat",
        "message_property_mappings": {"role": "speaker", "content": "text"},
        "roles": {"user": ["USER"], "assistant": ["BOT"]},
    }
    notes = []
    spec = build({"adapter": "lora", "datasets": [entry], "model_max_length": 256}, notes=notes)
    assert json.loads(spec.data_columns["chat.jsonl"]) == {
        "messages": "chat",
        "role": "speaker",
        "content": "text",
        "roles": {"USER": "user", "BOT": "assistant"},
    }
    assert "datasets (run file): chat.jsonl's rows read by its entry's names: messages chat, role speaker" in notes[0]
    assert preflight.check_data("chat.jsonl", columns=spec.data_columns) == []
    assert preflight.check_data("chat.jsonl")  # not rows ftctl reads by their own names
    moved = absolute_paths(spec)
    assert list(moved.data_columns) == [moved.data_path] == [str(tmp_path / "chat.jsonl")]
    dataset, _ = build_datasets(moved, tiny_tokenizer)
    assert [trained_spans(tiny_tokenizer, r["input_ids"], r["labels"]) for r in dataset] == [[f"A{EOT}"]]
