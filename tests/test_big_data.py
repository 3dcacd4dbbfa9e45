"""A large dataset across the trainer's starts (explore20): the tokenized rows are kept in the run's directory
(runpaths.DATA_CACHE) and a resume, a requeue or another node reads them instead of tokenizing the data again (300k
conversations: half an hour and 30 GB on a core); any change that changes the tokens tokenizes again."""

from __future__ import annotations

import json
import os

import pytest

from ftctl.errors import FtctlError
from ftctl.runpaths import DATA_CACHE
from ftctl.spec import build
from ftctl.trainer import data

ROWS = 300


def _conversation(i: int, answer: str = "") -> dict:
    return {
        "id": f"c{i}",
        "conversations": [
            {"from": "human", "value": f"What is {i} times {i % 7}?"},
            {"from": "gpt", "value": answer or f"It is {i * (i % 7)}, as {i} taken {i % 7} times gives."},
        ],
    }


@pytest.fixture
def big(tmp_path):
    """A ShareGPT file of ROWS conversations and an Alpaca one, a run directory's cache and a tokenizer call counter."""
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("".join(json.dumps(_conversation(i)) + "\n" for i in range(ROWS)))
    b.write_text("".join(json.dumps({"instruction": f"Spell {i}.", "output": str(i)[::-1]}) + "\n" for i in range(40)))
    return a, b, str(tmp_path / "run" / DATA_CACHE)


@pytest.fixture
def tokenized(monkeypatch):
    """The paths prepare_data tokenized, in order."""
    calls = []
    real = data.prepare_data

    def counted(path, *args, **kwargs):
        calls.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(data, "prepare_data", counted)
    return calls


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from ftctl.trainer.model import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


def _spec(**values):
    return build({"model_max_length": 128, "seed": 3, **values})


def _same(one, other) -> bool:
    if isinstance(one, dict):
        return one.keys() == other.keys() and all(_same(one[k], other[k]) for k in one)
    return data.rows_digest(one) == data.rows_digest(other) and len(one) == len(other)


def test_a_second_start_reads_the_tokenized_rows(big, tokenized, tokenizer):
    a, _, cache = big
    spec = _spec(data_path=str(a))
    said, stats = [], []
    first, _ = data.build_datasets(spec, tokenizer, said.append, stats, cache)
    assert tokenized == [str(a)] and len(first) == ROWS
    assert said[0] == f"{a}: tokenizing the rows ..." and f"{ROWS} rows tokenized in " in said[1]
    entry = said[1].split(" kept in ")[1].split(" for a resume")[0]
    assert os.path.dirname(entry) == cache and os.path.isfile(os.path.join(entry, "ftctl-data-stats.json"))

    said, again = [], []
    second, _ = data.build_datasets(spec, tokenizer, said.append, again, cache)
    assert tokenized == [str(a)]  # not tokenized again
    assert said == [f"{a}: {ROWS} rows tokenized at an earlier start, read from {entry}"]
    assert _same(first, second) and again == stats  # the statistics too (plain text or not)
    assert os.listdir(cache) == [os.path.basename(entry)]  # nothing half-written left beside it


def test_eval_split_a_mix_and_held_out_data_are_the_same_from_the_cache(big, tokenized, tokenizer, tmp_path):
    a, b, cache = big
    held = tmp_path / "held.jsonl"
    held.write_text("".join(json.dumps(_conversation(i, "Held out.")) + "\n" for i in range(ROWS, ROWS + 20)))
    for values in (
        {"data_path": f"{a},{b}", "eval_split": 0.1},
        {"data_path": {str(a): 0.5, str(b): 2}, "eval_data_path": f"{held},{b}"},
    ):
        spec = _spec(**values)
        before = len(tokenized)
        first = data.build_datasets(spec, tokenizer, cache_dir=cache)
        made = len(tokenized)
        second = data.build_datasets(spec, tokenizer, cache_dir=cache)
        assert made > before and len(tokenized) == made  # every dataset read from the cache the second time
        assert _same(first[0], second[0]) and _same(first[1], second[1])


def test_what_changes_the_tokens_tokenizes_again(big, tokenized, tokenizer, tiny_model_dir):
    from ftctl.trainer.model import load_tokenizer

    a, _, cache = big
    data.build_dataset(str(a), tokenizer, 128, cache_dir=cache)
    data.build_dataset(str(a), tokenizer, 128, cache_dir=cache)
    assert len(tokenized) == 1
    data.build_dataset(str(a), tokenizer, 64, cache_dir=cache)  # another max_length
    data.build_dataset(str(a), tokenizer, 128, cache_dir=cache, every_token=True)  # the loss on every token
    data.build_dataset(str(a), tokenizer, 128, cache_dir=cache, held_out=True)
    other = load_tokenizer(str(tiny_model_dir))
    other.chat_template = other.chat_template.replace("'\\n'", "'\\n\\n'")  # another chat template
    data.build_dataset(str(a), other, 128, cache_dir=cache)
    assert len(tokenized) == 5

    # one answer edited, the file's size and time kept: its content decides
    stat = os.stat(a)
    a.write_text(a.read_text().replace("It is 0, as 0", "It is 0, so 0", 1))
    os.utime(a, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert os.stat(a).st_size == stat.st_size
    edited = data.build_dataset(str(a), tokenizer, 128, cache_dir=cache)
    assert len(tokenized) == 6
    assert "so" in tokenizer.decode(edited[0]["input_ids"])


def test_only_the_first_process_writes_and_a_damaged_entry_is_tokenized_again(big, tokenized, tokenizer, monkeypatch):
    a, _, cache = big
    monkeypatch.setenv("RANK", "1")  # another rank: tokenizes as rank 0 does, keeps nothing
    assert len(data.build_dataset(str(a), tokenizer, 128, cache_dir=cache)) == ROWS
    assert not os.path.exists(cache)
    monkeypatch.setenv("RANK", "0")
    data.build_dataset(str(a), tokenizer, 128, cache_dir=cache)
    (entry,) = os.listdir(cache)
    for name in os.listdir(os.path.join(cache, entry)):
        if name.endswith(".arrow"):
            with open(os.path.join(cache, entry, name), "r+b") as f:
                f.truncate(100)
    assert len(data.build_dataset(str(a), tokenizer, 128, cache_dir=cache)) == ROWS
    assert len(tokenized) == 3


def test_rows_with_errors_are_refused_and_nothing_is_kept(big, tokenized, tokenizer):
    a, _, cache = big
    a.write_text(a.read_text() + '{"conversations": []}\n')
    with pytest.raises(FtctlError, match="rows with errors"):
        data.build_dataset(str(a), tokenizer, 128, cache_dir=cache)
    assert not os.path.exists(cache) or not os.listdir(cache)


def test_data_digest_is_the_files_content_in_order(big, tmp_path):
    from ftctl.trainer.formats import data_digest

    a, b, _ = big
    one = data_digest(f"{a},{b}")
    assert one == data_digest(f"{a},{b}") != data_digest(f"{b},{a}")
    copy = tmp_path / "copy" / "a.jsonl"
    copy.parent.mkdir()
    copy.write_bytes(a.read_bytes())
    assert data_digest(str(copy)) == data_digest(str(a))
    (copy.parent / "dataset_info.json").write_text(json.dumps({"x": {"file_name": "a.jsonl"}}))
    assert data_digest(str(copy)) != data_digest(str(a))  # LLaMA-Factory's entry renames its fields


def test_rows_are_tokenized_a_chunk_at_a_time_with_the_same_report(big, tokenizer, monkeypatch):
    """The rows' tokens were Python lists until the end (~110 bytes a token with a real vocabulary: 30 GB for 300k
    conversations); a chunk at a time they go into arrow arrays (4 bytes a token), the report as it was."""
    from ftctl.trainer import masks

    a, _, _ = big
    rows = [json.dumps(_conversation(i, f"It is {i}. " * (1 + 40 * (i % 50 == 0)))) for i in range(ROWS)]
    rows[7] = rows[9] = '{"conversations": []}'
    rows[11] = json.dumps(
        {"messages": [{"role": "user", "content": "hi " * 200}, {"role": "assistant", "content": "x"}]}
    )
    a.write_text("\n".join(rows) + "\n")
    sizes = []
    real = masks.encode_texts

    def counted(tokenizer, texts, *args):
        sizes.append(len(texts))
        return real(tokenizer, texts, *args)

    monkeypatch.setattr(data, "encode_texts", counted)
    whole = data.prepare_data(str(a), tokenizer, 128, sources=True, show=2)
    monkeypatch.setattr(data, "_CHUNK", 100)
    sizes.clear()
    report, dataset = data.prepare_data(str(a), tokenizer, 128, sources=True, show=2)
    assert max(sizes) <= 100 and sum(sizes) == ROWS - 2
    assert report.render() == whole[0].render() and report.errors[0].startswith("a.jsonl lines 8, 10 (2 rows)")
    assert "every label is masked after truncation" in report.warnings[-1]  # line 12: a long question
    assert (report.stats, report.samples) == (whole[0].stats, whole[0].samples)
    assert dataset.features == whole[1].features and dataset.to_dict() == whole[1].to_dict()
