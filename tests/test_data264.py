"""A large dataset's tokenized rows across starts (explore56): a start with other tokens (the data edited, another
max length) removes the earlier start's entries, which no start reads again (a GB or more each), and what a process
killed while writing one left; a row that cannot be read is refused before the rows are tokenized (300k rows: half an
hour on a core before the error about row 250,000)."""

from __future__ import annotations

import json
import os

import pytest

from ftctl.errors import FtctlError
from ftctl.runpaths import DATA_CACHE
from ftctl.spec import build
from ftctl.trainer import data

ROWS = 60


def _row(i: int) -> str:
    return json.dumps(
        {
            "conversations": [
                {"from": "human", "value": f"What is {i} plus {i}?"},
                {"from": "gpt", "value": f"It is {2 * i}."},
            ]
        }
    )


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from ftctl.trainer.model import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


@pytest.fixture
def files(tmp_path):
    train, held = tmp_path / "train.jsonl", tmp_path / "held.jsonl"
    train.write_text("".join(_row(i) + "\n" for i in range(ROWS)))
    held.write_text("".join(_row(i) + "\n" for i in range(ROWS, ROWS + 20)))
    return train, held, str(tmp_path / "run" / DATA_CACHE)


def _spec(train, held, **values):
    return build({"data_path": str(train), "eval_data_path": str(held), "model_max_length": 128, **values})


def test_a_start_with_other_tokens_removes_the_earlier_starts_entries(files, tokenizer, monkeypatch):
    train, held, cache = files
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    said = []
    data.build_datasets(_spec(train, held), tokenizer, said.append, cache_dir=cache)
    first = sorted(os.listdir(cache))
    assert len(first) == 2  # the training rows and the held-out ones
    trained = said[1].split(" kept in ")[1].split(" for a resume")[0]  # the training rows' entry
    killed = f"{trained}.k1ll3d.new"  # a process killed as it wrote that entry again left this
    os.makedirs(killed)
    with open(os.path.join(killed, "data-00000-of-00001.arrow"), "wb") as f:
        f.write(b"\0" * 1000)

    # the training data edited in place: its rows tokenized again, the held-out ones read from their entry
    train.write_text(train.read_text().replace("It is 0.", "It is zero.", 1))
    said = []
    data.build_datasets(_spec(train, held), tokenizer, said.append, cache_dir=cache)
    assert "tokenizing the rows" in said[0] and "tokenized at an earlier start, read from" in said[-1]
    second = sorted(os.listdir(cache))
    assert len(second) == 2 and set(first) & set(second) and not os.path.exists(killed)
    assert os.path.basename(trained) not in second

    # another max length: both tokenized again; the earlier two removed, by the process that writes them alone
    monkeypatch.setenv("LOCAL_RANK", "1")  # the node's others wait for its first process's, and remove nothing
    monkeypatch.setattr(data, "_wait_for_entry", lambda entry: None)
    data.build_datasets(_spec(train, held, model_max_length=96), tokenizer, cache_dir=cache)
    assert sorted(os.listdir(cache)) == second
    monkeypatch.setenv("LOCAL_RANK", "0")
    data.build_datasets(_spec(train, held, model_max_length=96), tokenizer, cache_dir=cache)
    third = os.listdir(cache)
    assert len(third) == 2 and not set(third) & set(second)


def test_a_row_that_cannot_be_read_is_refused_before_any_row_is_tokenized(files, tokenizer, monkeypatch):
    train, held, cache = files
    lines = train.read_text().splitlines()
    lines[40] = lines[40][:30]  # a line cut short: not JSON
    lines[50] = json.dumps({"question": "What?", "reply": "This."})  # no format ftctl reads
    train.write_text("\n".join(lines) + "\n")
    encoded = []
    real = data.encode_texts
    monkeypatch.setattr(data, "encode_texts", lambda *args: encoded.append(1) or real(*args))
    with pytest.raises(FtctlError) as e:
        data.build_dataset(str(train), tokenizer, 128, cache_dir=cache)
    said = str(e.value)
    assert not encoded, "rows were tokenized before the rows that cannot be read were refused"
    assert said.startswith(f"2 of {ROWS} rows with errors (2 listed) in the data {train}")
    assert "train.jsonl line 41: invalid JSON" in said and "train.jsonl line 51: not a conversation" in said
    assert "--write-valid OUT" in said and "before tokenizing any" in said
    # the data check it names reads the rows at the run's length (128 here, not the default)
    assert " --max-length 128` also lists what the tokenizing finds" in said, said
    assert not os.path.exists(cache) or not os.listdir(cache)

    # `ftctl data check` reads every row still, and tokenizes the others: all their problems in one report
    report = data.check_data(str(train), tokenizer, 128)
    assert encoded and len(report.errors) == 2 and report.stats.rows == ROWS - 2


def test_a_long_tokenizing_says_how_far_it_is(files, tokenizer, monkeypatch):
    """It said `tokenizing the rows ...` and then nothing until the end: half an hour for 300k rows on a core."""
    train, _, cache = files
    monkeypatch.setattr(data, "_CHUNK", 20)  # 60 rows: three chunks
    monkeypatch.setattr(
        data, "PROGRESS_EVERY_S", 0.0, raising=False
    )  # a line after each chunk but the last (at most one a minute)
    said = []
    data.build_dataset(str(train), tokenizer, 128, cache_dir=cache, echo=said.append, num_proc=1)
    assert said[0] == f"{train}: tokenizing the rows ..." and f"{ROWS} rows tokenized in " in said[-1]
    assert [line.split(" rows tokenized")[0] for line in said[1:-1]] == [f"{train}: 20 of 60", f"{train}: 40 of 60"]
    assert said[1].startswith(f"{train}: 20 of 60 rows tokenized (33%), ~") and said[1].endswith(" left")
