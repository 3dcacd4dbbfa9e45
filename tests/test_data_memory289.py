"""The rows read are not held whole as Python objects (task 289; explore56 item 15): load_rows streams a JSON Lines file
a block at a time (the file's bytes were held while its rows were read) and keeps its rows packed (formats.Rows:
marshalled and compressed, ~2x the file as Row objects before), and prepare_data keeps only where a row with a problem,
truncated or written out is (data._light), not the row. Peaks by tracemalloc (Python's allocations: the tokenizer's
own are not in them), in this process."""

from __future__ import annotations

import datetime
import gzip
import json
import random
import tracemalloc

import pytest

from ftctl.trainer import data, formats
from ftctl.trainer.formats import Row, load_rows

WORDS = "the of and to in is that for it as was with be by on not he this are or his from at which".split()


def _conversations(path, rows: int, seed: int = 289, words: tuple[int, int] = (50, 400)):
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(rows):
            turns = []
            for _ in range(rng.randint(1, 4)):
                turns += [
                    {"from": "human", "value": " ".join(rng.choices(WORDS, k=20))},
                    {"from": "gpt", "value": " ".join(rng.choices(WORDS, k=rng.randint(*words)))},
                ]
            f.write(json.dumps({"id": i, "conversations": turns}) + "\n")
    return path


def _traced(call):
    """(what ``call`` returns, the Python memory it still holds, its peak), in bytes."""
    tracemalloc.start()
    try:
        got = call()
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return got, held, peak


def test_rows_read_are_not_held_whole(tmp_path, monkeypatch):
    """2,000 conversations, 4.6 MB of JSON Lines: held as Row objects they were 1.8x the file, more at the peak of
    the reading (the file's bytes beside them); packed, 0.6x held and 0.8x at the peak here (small blobs, a block of
    the file, a batch of rows being packed)."""
    monkeypatch.setattr(formats, "READ_BLOCK", 2**16, raising=False)
    monkeypatch.setattr(formats, "PACKED_ROWS", 128, raising=False)
    path = _conversations(tmp_path / "rows.jsonl", 2000)
    size = path.stat().st_size
    (files, rows), held, peak = _traced(lambda: load_rows(str(path)))
    assert len(rows) == 2000 and not any(row.problems for row in rows)
    assert held < 0.8 * size, f"{held / size:.2f}x the file held after its rows were read"
    assert peak < 1.5 * size, f"{peak / size:.2f}x the file at the peak of reading its rows"
    assert rows[1999].where == "rows.jsonl line 2000 (id 1999)" and rows[0].format == "sharegpt"


def test_prepare_data_keeps_no_row_whole(tmp_path, tiny_tokenizer, monkeypatch):
    """Every row truncated at max length 64 (or left out, its answer past it): the report lists them all, by where
    they are. The Python memory prepare_data holds as the tokenizing starts and after each chunk (its progress
    calls; a chunk's own lists come and go) stays below the rows as objects (1.6x the file as the tokenizing
    started): the rows packed (0.3x), and of the truncated ones, where they are (a Row with its messages kept for
    each: the rows whole again, had they been read packed; 0.6x -> 2.5x over the chunks)."""
    monkeypatch.setattr(formats, "READ_BLOCK", 2**16, raising=False)
    monkeypatch.setattr(formats, "PACKED_ROWS", 64, raising=False)
    monkeypatch.setattr(data, "_CHUNK", 30)
    path = _conversations(tmp_path / "rows.jsonl", 240, words=(150, 300))
    size = path.stat().st_size
    # what a first call allocates for good (datasets imported, the chat template compiled): not the rows'
    data.prepare_data(str(_conversations(tmp_path / "few.jsonl", 20)), tiny_tokenizer, 64, num_proc=1)
    held: list[int] = []

    def progress(done, rows):
        held.append(tracemalloc.get_traced_memory()[0] - before)

    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        report, dataset = data.prepare_data(str(path), tiny_tokenizer, 64, num_proc=1, progress=progress)
    finally:
        tracemalloc.stop()
    assert report.ok and report.stats.truncated_rows == len(dataset) > 230  # and a row or two past the end: left out
    assert len(report.every_row) == 240
    assert any(line.startswith("rows.jsonl line 240 (id 239): ") for line in report.every_row)
    assert len(held) == 9, held  # as the tokenizing starts, then after each of 8 chunks
    said = f"{[round(n / size, 2) for n in held]}x the file held while tokenizing"
    assert held[0] < 0.6 * size, said  # the rows read (packed)
    assert held[-1] - held[1] < 0.6 * size, said  # what the report keeps of the rows since the first chunk


def test_a_chunk_tokenized_at_a_time_is_a_few_hundred_rows(tmp_path, tiny_tokenizer):
    """The tokenizer's Python lists of a chunk of rows (ids and offsets, untruncated: ~300 bytes a token) are the
    tokenizing's peak: a chunk is 512 rows at most (bench/data_memory289.py: 8k generated conversations peaked at
    +368 MB in chunks of 4,096 rows, as before, +196 MB in chunks of 512, the same CPU time). Each chunk's end is a
    progress call."""
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"text": f"row {i}"}) + "\n" for i in range(1100)))
    said: list[int] = []
    report, dataset = data.prepare_data(str(path), tiny_tokenizer, 64, num_proc=1, progress=lambda n, _: said.append(n))
    assert report.ok and len(dataset) == 1100
    assert said == [0, 512, 1024, 1100]


def test_rows_read_back_as_appended(monkeypatch):
    """Rows reads back each Row as it was appended, by index, slice and in order, across its packed blobs; a value
    marshal does not write (a Parquet row's timestamp) is pickled; truncate keeps the first rows."""
    monkeypatch.setattr(formats, "PACKED_ROWS", 3)
    made = [
        Row(
            where=f"a.jsonl line {i}",
            format="openai",
            messages=[{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a", "weight": 0}],
            problems=["empty turn"] * (i % 4 == 0),
            completion_at=i,
            tools=[{"type": "function", "function": {"name": "f", "when": datetime.date(2026, 1, i % 27 + 1)}}]
            if i % 5 == 0
            else None,
            spans=[(0, i)],
            source=i % 2,
            dropped=1,
            at=("a.jsonl", "line", i),
        )
        for i in range(1, 12)
    ]
    rows = formats.Rows()
    for row in made:
        rows.append(row)
    assert len(rows) == 11 and list(rows) == made and rows[4:9] == made[4:9] and rows[-1] == made[-1]
    assert rows[::2] == made[::2] and [rows[i] for i in range(11)] == made
    assert list(rows.problems) == [3, 7] and rows.conversations == 9
    with pytest.raises(IndexError):
        rows[11]
    rows.truncate(7)
    assert list(rows) == made[:7] and list(rows.problems) == [3]
    rows.append(made[10])
    assert list(rows) == [*made[:7], made[10]]


@pytest.mark.parametrize("seed", range(6))
def test_lines_streamed_as_splitlines(seed):
    """A file's lines read a block at a time are its lines as bytes.splitlines() gives them (the rows' numbers), a
    \\r\\n cut between two blocks one line end."""
    rng = random.Random(seed)
    pieces = [b"a", b"bc", b"{}", b" ", b"\n", b"\r", b"\r\n", b"\x0b", b"\x1c", b"\n\n", b"\r\r\n"]
    for _ in range(200):
        raw = b"".join(rng.choices(pieces, k=rng.randint(0, 30)))
        cuts = sorted(rng.sample(range(len(raw) + 1), min(len(raw) + 1, rng.randint(0, 6))))
        blocks = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)])]
        assert list(formats._stream_lines(formats._whole_line_ends(iter(blocks)))) == raw.splitlines(), blocks


LINES = [
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]},
    {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}], "system": "Be brief."},
    {"text": "plain"},
    {"prompt": "2+2=", "completion": " 4"},
    {"instruction": "Add.", "output": "4"},
    {"messages": [{"role": "robot", "content": "x"}]},
]


@pytest.mark.parametrize("block", [1, 2, 7, 4096])
@pytest.mark.parametrize("gz", [False, True])
def test_json_lines_streamed_as_read_whole(tmp_path, monkeypatch, block, gz):
    """A JSON Lines file read a few bytes at a time gives the rows, problems and line numbers of the file read whole
    (formats._json_lines of its bytes, as _records read it before): line ends of every kind, a BOM, blank lines, a
    line not JSON, one not UTF-8, one with half a surrogate pair; gzipped too."""
    raw = b"\xef\xbb\xbf\n  \r\n" + b"\r\n".join(json.dumps(r).encode() for r in LINES)
    raw += b'\r{"text": "caf\xe9"}\n{"messages": [oops\n\n{"text": "half \\ud83c"}\r\n' + json.dumps(LINES[0]).encode()
    path = tmp_path / ("rows.jsonl.gz" if gz else "rows.jsonl")
    path.write_bytes(gzip.compress(raw) if gz else raw)
    whole = [
        formats.to_row(f"{path.name} {unit} {n}", formats._surrogate_problem(record) or record)
        for unit, n, record in formats._json_lines(raw.removeprefix(b"\xef\xbb\xbf"), path.name)
    ]
    monkeypatch.setattr(formats, "READ_BLOCK", block)
    _, rows = load_rows(str(path))
    assert [(r.where, r.format, r.messages, r.text, r.problems) for r in rows] == [
        (r.where, r.format, r.messages, r.text, r.problems) for r in whole
    ]
    assert [r.at[2] for r in rows] == [3, 4, 5, 6, 7, 8, 9, 10, 12, 13]
    assert "not UTF-8" in rows[6].problems[0] and "invalid JSON" in rows[7].problems[0]
    assert "surrogate" in rows[8].problems[0]


def test_a_file_that_fails_midway_is_one_problem(tmp_path, monkeypatch):
    """A gzipped file whose second member is damaged: its rows read before the failure are not kept (as when the
    file was read whole first), one 'cannot read the file' row for it, the next file's rows after."""
    monkeypatch.setattr(formats, "READ_BLOCK", 64)
    monkeypatch.setattr(formats, "PACKED_ROWS", 4)
    good = b"".join(json.dumps({"text": f"row {i}"}).encode() + b"\n" for i in range(40))
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(good) + b"not gzip at all")
    (tmp_path / "b.jsonl").write_bytes(good[:90])
    _, rows = load_rows(str(tmp_path))
    assert [r.where for r in rows] == ["a.jsonl.gz", *(f"b.jsonl line {i}" for i in range(1, 6))]
    assert rows[0].problems[0].startswith("cannot read the file: ") and rows[0].at is None


def test_parquet_read_a_batch_at_a_time(tmp_path, monkeypatch):
    """A Parquet file of several row groups (and an Arrow stream of several batches) read a batch at a time: its
    rows in order, numbered through."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    monkeypatch.setattr(formats, "PACKED_ROWS", 7)
    table = pa.table({"messages": [LINES[0]["messages"]] * 50, "id": list(range(50))})
    pq.write_table(table, tmp_path / "rows.parquet", row_group_size=9)
    with pa.ipc.new_stream(tmp_path / "rows.arrow", table.schema) as stream:
        for batch in table.to_batches(max_chunksize=11):
            stream.write_batch(batch)
    for name in ("rows.parquet", "rows.arrow"):
        _, rows = load_rows(str(tmp_path / name))
        assert [r.where for r in rows] == [f"{name} row {i + 1} (id {i})" for i in range(50)]
        assert rows[49].messages == LINES[0]["messages"] and not rows.problems


def test_reasoning_the_template_drops_refused_in_every_process(tmp_path, tiny_tokenizer):
    """A row whose reasoning the chat template does not write is refused as it is read back (Rows.amend), in the
    tokenizing processes too: the same errors with one process or two, the other rows kept."""
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"Q{i}?"},
                {"role": "assistant", "content": "A.", **({"reasoning_content": "think"} if i % 3 == 0 else {})},
            ]
        }
        for i in range(30)
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    one, kept = data.prepare_data(str(path), tiny_tokenizer, 64, num_proc=1)
    two, kept2 = data.prepare_data(str(path), tiny_tokenizer, 64, num_proc=2)
    assert one.errors == two.errors and len(one.errors) == 1 and "'reasoning_content'" in one.errors[0]
    assert one.bad_rows == 10 and len(kept) == len(kept2) == 20
