"""A .json file that is one JSON list (ShareGPT's, FastChat's) is read an element at a time as it streams (task 294):
json.loads of it whole held its text and every row as Python objects at once (~4x the file at the peak). The rows,
and where it does not parse the one problem, are json.loads's of the whole file, read in blocks of any size (1 byte
up: an element, a \\uXXXX escape, a number, a UTF-8 character or the BOM cut between two)."""

from __future__ import annotations

import codecs
import gzip
import itertools
import json
import random
import tracemalloc

import pytest

from ftctl.trainer import formats
from ftctl.trainer.formats import load_rows

BLOCKS = (1, 2, 3, 5, 7, 64, 4096)


def _whole(file, name, endpoint_url):
    """The reading before (formats._records of a file that starts with a list until task 294): the file's bytes
    joined, json.loads of them whole (a .jsonl file's where it is one list, else JSON Lines)."""
    with (gzip.open if file.endswith(".gz") else open)(file, "rb") as f:
        raw = f.read().removeprefix(codecs.BOM_UTF8)
    records = formats._json_records(raw, file.lower(), name)
    if formats._LONE_SURROGATE.search(raw):
        records = ((u, n, formats._surrogate_problem(r) or r) for u, n, r in records)
    yield from records


def _rows(path, monkeypatch, block=None):
    with monkeypatch.context() as m:
        if block is None:
            m.setattr(formats, "_records", _whole)
        else:
            m.setattr(formats, "READ_BLOCK", block)
        files, rows = load_rows(str(path))
    return list(rows)


_CHAT = '{"id": "r%d", "conversations": [{"from": "human", "value": "a [list] ] { , \\" \\\\"}, {"from": "gpt", "value": "é日本🎉 \\ud83d\\ude00 %s"}]}'
TRICKY = {
    "brackets and strings": "[" + ", ".join(_CHAT % (i, "x" * i) for i in range(6)) + "]",
    "pretty, CRLF, spaces": "\r\n  [\r\n\t" + ",\r\n\t".join(_CHAT % (i, "") for i in range(3)) + "\r\n]\r\n\r\n",
    "nested arrays, numbers": '[[1, [2, [3, []]]], 1234567890123456789, -1.5e-10, 0, true, null, "s", {}, {"a": [[]]}]',
    "half a surrogate pair": '[{"text": "\\ud83c alone"}, {"text": "\\\\ud83c escaped"}, {"text": "ok"}]',
    "empty list": "[ \n ]\n",
    "no rows but a list": "[[]]",
    "invalid in the middle": "[" + _CHAT % (1, "") + ",\n" + _CHAT % (2, "") + ',\n{"id": 3 "x": 1}]',
    "trailing comma": "[" + _CHAT % (1, "") + ",\n]",
    "unterminated string": '[{"text": "abc',
    "unclosed list": "[" + _CHAT % (1, "") + ",\n" + _CHAT % (2, ""),
    "trailing garbage": "[" + _CHAT % (1, "") + "]\n\n  oops",
    "a second list": "[1]\n[2]",
    "a form feed before it": "\x0c[1]",
    "bad escape": '[{"text": "\\x"}]',
    "a number cut": "[1, 2.]",
    "too deep": "[" + "[" * 5000 + "]" * 5000 + "]",
}


@pytest.mark.parametrize("name", sorted(TRICKY))
def test_rows_are_those_of_the_whole_file(tmp_path, monkeypatch, name):
    """Under a .json name, and a .jsonl one (a list read as one where json.loads of the whole file reads it, else the
    file read again as JSON Lines: a line each, or one problem where its first line is not JSON)."""
    raw = TRICKY[name].encode()
    for i, (content, ext) in enumerate(itertools.product((raw, codecs.BOM_UTF8 + raw), (".json", ".jsonl"))):
        path = tmp_path / f"d{i}{ext}"
        path.write_bytes(content)
        want = _rows(path, monkeypatch)
        for block in BLOCKS:
            assert _rows(path, monkeypatch, block) == want, (name, block, content[:80])


def test_not_utf8_anywhere_is_the_problem_as_before(tmp_path, monkeypatch):
    """A byte that is not UTF-8 (or a character cut at the end) anywhere in the file is its one problem, even past a
    JSON error, as when the whole file was decoded first; its line and column (bytes) in the file."""
    good = ("[" + ",\n".join(_CHAT % (i, "é" * i) for i in range(4)) + "]").encode()
    cases = [good.replace(b"r2", b"r\xff"), good.replace(b"r3", b"r\xe9x"), good + b"\xe2\x82", good[:-1] + b"} x \xc3"]
    for i, raw in enumerate(cases):
        path = tmp_path / f"bad{i}.json"
        path.write_bytes(raw)
        want = _rows(path, monkeypatch)
        assert len(want) == 1 and want[0].problems[0].startswith("not UTF-8 text (byte 0x"), want
        for block in BLOCKS:
            assert _rows(path, monkeypatch, block) == want, (i, block)
        path = tmp_path / f"bad{i}.jsonl"  # under a .jsonl name: JSON Lines, a problem a line
        path.write_bytes(raw)
        want = _rows(path, monkeypatch)
        assert len(want) > 1 and sum(bool(row.problems) for row in want) == len(want)
        for block in (1, 7, 4096):
            assert _rows(path, monkeypatch, block) == want, (i, block)
    (row,) = _rows(tmp_path / "bad0.json", monkeypatch, 3)
    assert row.where == "bad0.json line 3" and row.problems == [
        "not UTF-8 text (byte 0xff at column 10): convert the file to UTF-8, e.g. iconv -f latin1 -t utf-8 bad0.json "
        "> bad0.utf8.json"
    ]


def test_fuzzed_lists_read_as_whole(tmp_path, monkeypatch):
    """Lists of rows with a byte deleted, inserted or the file cut: the same rows or the same problem."""
    rng = random.Random(294)
    elements = [_CHAT % (i, "") for i in range(8)] + ["123456789", "1.5e-3", "[[[]]]", '"\\u00e9\\ud83c"', "null"]
    for k in range(40):
        rng.shuffle(elements)
        raw = bytearray(("[" + ",\n ".join(elements[: rng.randint(1, len(elements))]) + "]\n").encode())
        at = rng.randrange(1, len(raw))
        if k % 3 == 0:
            del raw[at]
        elif k % 3 == 1:
            raw.insert(at, rng.choice(b'[]{},:"\\x0\n1e.-\xff'))
        else:
            raw = raw[:at]
        path = tmp_path / f"f{k}.json{'l' if k % 2 else ''}"
        path.write_bytes(bytes(raw))
        want = _rows(path, monkeypatch)
        for block in (1, 13, 100):
            assert _rows(path, monkeypatch, block) == want, (bytes(raw), block)


def test_problems_said_as_before(tmp_path, monkeypatch):
    monkeypatch.setattr(formats, "READ_BLOCK", 5)

    def problems(name, text, opener=open):
        path = tmp_path / name
        with opener(path, "wb") as f:
            f.write(text.encode())
        return [(row.where, row.problems) for row in load_rows(str(path))[1]]

    assert problems("a.json", '[{"text": "one"},\n {"text" "two"}]') == [
        ("a.json line 2", ["invalid JSON: Expecting ':' delimiter (column 10)"])
    ]
    assert problems("b.json", '[{"text": "one"}]\n]') == [("b.json line 2", ["invalid JSON: Extra data (column 1)"])]
    assert problems("c.json", '[{"text": "one"},]') == [
        ("c.json line 1", ["invalid JSON: Expecting value (column 18)"])
    ]
    assert problems("d.json", '[{"text": "one"}') == [
        ("d.json line 1", ["invalid JSON: Expecting ',' delimiter (column 17)"])
    ]
    assert problems("e.json", "[]") == []
    assert problems("f.json", "[" * 3000 + "]" * 3000) == [("f.json line 1", [formats.TOO_DEEP])]
    assert problems("g.json.gz", '[{"text": "one"}, {"text": "two"}]', gzip.open) == [
        ("g.json.gz row 1", []),
        ("g.json.gz row 2", []),
    ]
    assert problems("h.json.gz", '[{"text": "one"}, x]', gzip.open) == [
        ("h.json.gz line 1", ["invalid JSON: Expecting value (column 19)"])
    ]
    # not a list: as before (one object over several lines is one row; JSON Lines under a .json name, a line each)
    assert problems("i.json", '{"text":\n "one"}') == [("i.json row 1", [])]
    assert problems("j.json", '{"text": "one"}\n{"text": "two"}') == [("j.json line 1", []), ("j.json line 2", [])]
    assert problems("k.jsonl", "[1]\n[2]")[0][1][0].startswith("not a conversation: a list")  # JSON Lines of lists
    # a list's element that is not a row
    assert problems("l.json", '[{"text": "one"}, 3]')[1] == (
        "l.json row 2",
        [f"not a conversation: a number, {formats.FORMAT_HINT}"],
    )


@pytest.mark.parametrize("ext", [".json", ".jsonl"])
def test_a_json_list_is_not_held_whole(tmp_path, monkeypatch, ext):
    """1,500 conversations, 3.4 MB as one JSON list on one line (json.dump's): read whole, 3.4x the file at the peak
    (its bytes, its text, every row as objects); read an element at a time, 0.8x (the rows held packed, 0.6x, a block
    of the file, a batch of rows being packed)."""
    monkeypatch.setattr(formats, "READ_BLOCK", 2**16)
    monkeypatch.setattr(formats, "PACKED_ROWS", 128)
    rng = random.Random(294)
    words = "the of and to in is that for it as was with be by on not he this are or his from at which".split()
    rows = [
        {
            "id": i,
            "conversations": [
                {"from": f, "value": " ".join(rng.choices(words, k=rng.randint(50, 400)))}
                for f in ("human", "gpt", "human", "gpt")
            ],
        }
        for i in range(1500)
    ]
    path = tmp_path / f"sharegpt{ext}"
    path.write_text(json.dumps(rows))
    del rows
    size = path.stat().st_size
    tracemalloc.start()
    try:
        files, got = load_rows(str(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(got) == 1500 and not any(row.problems for row in got)
    assert got[1499].where == f"sharegpt{ext} row 1500 (id 1499)" and got[0].format == "sharegpt"
    assert peak < 1.2 * size, f"{peak / size:.2f}x the file at the peak of reading its rows"
