"""Users from other tools (helper 169): axolotl's test_datasets (eval datasets, entries as datasets') read as
eval_data_path with their column maps; LLaMA-Factory's dataset_info.json num_samples as data_weights; its mix keys
given by -o with a run file's dataset read as the same keys in one file."""

from __future__ import annotations

import json

import pytest

from ftctl.errors import FtctlError
from ftctl.spec import build
from tests.test_foreign159 import _llama_factory


def test_axolotls_test_datasets_are_the_held_out_data_read_by_their_entries_names(tmp_path, tiny_tokenizer):
    """test_datasets was refused ("Unknown key ... are eval_data_path here"), so an axolotl file with eval datasets
    had to be rewritten: its entries' paths are eval_data_path, their column maps data_columns (by path, as
    datasets'), and the entries are refused as datasets' are (a local file's split other than train, name ...)."""
    from ftctl.trainer.data import prepare_data
    from tests.test_data import EOT, trained_spans

    chat = [{"speaker": "USER", "text": "Q"}, {"speaker": "BOT", "text": "A"}]
    (tmp_path / "train.jsonl").write_text(json.dumps({"chat": chat}) + "\n")
    (tmp_path / "eval.jsonl").write_text(json.dumps({"chat": [chat[0], {**chat[1], "text": "E"}]}) + "\n")
    entry = {
        "type": "chat_template",
        "field_messages": "chat",
        "message_property_mappings": {"role": "speaker", "content": "text"},
        "roles": {"user": ["USER"], "assistant": ["BOT"]},
    }
    train, held = str(tmp_path / "train.jsonl"), str(tmp_path / "eval.jsonl")
    notes = []
    config = {"datasets": [{"path": train, **entry}], "test_datasets": [{"path": held, "split": "train", **entry}]}
    spec = build({**config, "method": "lora"}, notes=notes)
    assert (spec.data_path, spec.eval_data_path) == (train, held)
    assert set(spec.data_columns) == {train, held}, spec.data_columns
    assert any(n.startswith("test_datasets (run file): their paths are eval_data_path") for n in notes), notes
    report, rows = prepare_data(spec.eval_data_path, tiny_tokenizer, 256, columns=spec.data_columns, show=1)
    assert report.ok, report.errors
    assert trained_spans(tiny_tokenizer, rows[0]["input_ids"], rows[0]["labels"]) == [f"E{EOT}"]
    hub = build({"test_datasets": [{"path": "org/name", "split": "test", "type": "chat_template"}]})
    assert hub.eval_data_path == "hf://datasets/org/name"  # a Hub dataset's held-out split is its test split
    for asked, said in [
        ({"path": held, "split": "test"}, r"eval.jsonl's split: 'test': a Hub dataset's train split is read"),
        ({"path": "org/name", "split": "train"}, r"org/name's split: 'train': a Hub dataset's held-out data is read"),
        ({"path": "org/name", "name": "en"}, r"org/name's name: 'en': name the configuration's files"),
        ({**entry, "path": held, "type": {"format": "Q: {instruction}"}}, r"type's format: 'Q: \{instruction\}'"),
    ]:
        with pytest.raises(FtctlError, match=r"'test_datasets' \(run file\): .*" + said):
            build({"test_datasets": [asked]})


@pytest.mark.parametrize(
    "samples, mix, weights, rows",
    [
        ({"a": 10}, {}, "0.5,1", (10, 400)),  # fewer rows than the file: that many drawn
        ({"a": 50, "b": 100}, {"mix_strategy": "concat"}, "2.5,0.25", (50, 100)),  # more: repeated
        # sampled first, then interleaved: a's 10 rows and b's 400 at 0.5,0.5 stop at a's 10 (10 + 10)
        ({"a": 10}, {"mix_strategy": "interleave_under", "interleave_probs": "0.5,0.5"}, "0.5,0.025", (10, 10)),
    ],
)
def test_llama_factorys_num_samples_are_the_data_weights_that_draw_that_many_rows(
    tmp_path, monkeypatch, samples, mix, weights, rows
):
    """dataset_info.json's num_samples (an entry's rows to draw) was dropped without a word: every row trained once.
    Now it is the data_weights of num_samples / the file's rows (20 and 400 here), before a mix's shares."""
    from ftctl.trainer.data import mixed_rows

    _llama_factory(tmp_path, monkeypatch)
    info = json.loads((tmp_path / "data/dataset_info.json").read_text())
    for name, n in samples.items():
        info[name]["num_samples"] = n
    info["hub"]["num_samples"] = 5
    info["b_eval"] = {"file_name": "b.jsonl", "num_samples": 5}
    (tmp_path / "data/dataset_info.json").write_text(json.dumps(info))
    notes = []
    spec = build({"dataset": "a,b", "method": "lora", **mix}, notes=notes)
    assert spec.data_weights == weights
    assert tuple(mixed_rows(n, float(w)) for n, w in zip((20, 400), weights.split(","))) == rows
    assert any(f"are data_weights {weights} here: data/a.json 20 rows x" in n for n in notes), notes
    with pytest.raises(FtctlError, match=r"num_samples: data/a.json \d+.*\(run file\) and data_weights both mix"):
        build({"dataset": "a,b", "data_weights": "1,1", **mix})
    with pytest.raises(FtctlError, match=r"hf://datasets/org/name is no local JSON file.*num_samples / the dataset"):
        build({"dataset": "a,hub"})
    with pytest.raises(FtctlError, match=r"entry 'b_eval' gives num_samples, and ftctl evaluates every held-out row"):
        build({"dataset": "a", "eval_dataset": "b_eval"})


def test_llama_factorys_mix_keys_given_by_o_read_as_in_the_run_file(tmp_path, monkeypatch):
    """-o mix_strategy=... -o interleave_probs=... beside a run file's dataset were refused ("Unknown key
    'mix_strategy' (-o)") while the same keys in the run file worked: the layers' keys are read together, a later
    layer's winning, and the weights come in the last layer giving one (its data_weights refused beside them)."""
    _llama_factory(tmp_path, monkeypatch)
    run = {"dataset": "a,b", "method": "lora"}
    overrides = ["mix_strategy=interleave_under", "interleave_probs=0.7,0.3"]
    notes = []
    spec = build(run, overrides=overrides, notes=notes)
    assert (
        spec.data_weights
        == build({**run, "mix_strategy": "interleave_under", "interleave_probs": "0.7,0.3"}).data_weights
    )
    assert spec.data_weights == "1,0.0214286"
    assert any(n.startswith("mix_strategy: interleave_under, interleave_probs: 0.7,0.3 (-o) are") for n in notes)
    mixed = build({**run, "mix_strategy": "interleave_over"}, overrides=["interleave_probs=0.7,0.3"], notes=notes)
    assert mixed.data_weights == "46.6667,1", notes[-1]
    assert "(run file, -o) are data_weights" in notes[-1], notes[-1]
    with pytest.raises(FtctlError, match=r"\(-o\) and data_weights both mix the datasets: keep one"):
        build(run, overrides=[*overrides, "data_weights=1,1"])
    with pytest.raises(FtctlError, match=r"interleave_probs \(run file, -o\) mixes by shares with mix_strategy"):
        build({**run, "mix_strategy": "concat"}, overrides=["interleave_probs=0.7,0.3"])
