"""Session 60's data-path leftovers (helper 301).

1. A file whose first object spans several lines (one pretty-printed row, or several one after another: `jq .`'s
   output, which `datasets`' json loader reads as rows where the file fits its 10 MB chunk) is read a value at a
   time as it streams: it was read whole (4.7x the file at the peak for one object), and several such objects were
   refused a line each, as broken JSON Lines (a 144 MB file: 2.3 million problems).
2. tool_datasets.py (TRAIN_FLAGS: the fields that say whether a turn trains) is in the tokenized-rows cache key.
3. A process that keeps no cache entry (ftctl eval's held-out rows; RANK without LOCAL_RANK) writes its tokens to a
   directory of its own as they are made, the dataset memory-mapped from it, removed as the process ends: they were
   held in memory, 8 bytes a token.
"""

from __future__ import annotations

import codecs
import itertools
import json
import os
import random
import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

from ftctl.trainer import formats
from ftctl.trainer.formats import load_rows

REPO = Path(__file__).resolve().parents[1]
BLOCKS = (1, 2, 3, 5, 7, 64, 4096)
_CHAT = {
    "id": "r%d",
    "conversations": [{"from": "human", "value": 'a [list] ] { , " \\ é日本🎉'}, {"from": "gpt", "value": "x"}],
}


def _pretty(*records) -> str:
    """Records as `jq .` writes them: each pretty-printed, a line break after it."""
    return "".join(json.dumps(r, indent=2, ensure_ascii=False) + "\n" for r in records)


def _chat(i: int) -> dict:
    return {**_CHAT, "id": f"r{i}"}


def _rows(path, monkeypatch, block=None):
    with monkeypatch.context() as m:
        if block is not None:
            m.setattr(formats, "READ_BLOCK", block)
        return [(row.where, row.format, row.problems, row.messages, row.text) for row in load_rows(str(path))[1]]


def _said(path, monkeypatch, block=None):
    return [(where, problems) for where, _, problems, _, _ in _rows(path, monkeypatch, block)]


VALUES = {
    "one object": _pretty(_chat(0)),
    "three objects": _pretty(*(_chat(i) for i in range(3))),
    "CRLF, tabs, no line break between": "{\r\n\t" + json.dumps(_chat(0))[1:] + json.dumps(_chat(1)) + "\r\n\r\n",
    "then JSON Lines": _pretty(_chat(0)) + json.dumps(_chat(1)) + "\n" + json.dumps({"text": "plain"}) + "\n",
    "values that are no rows": '{\n "text": "a"\n}\n[1, 2]\n12345678901234567890 -1.5e-10 "s" null\n{}',
    "half a surrogate pair": '{\n "text": "\\ud83c alone"\n}\n{"text": "\\\\ud83c escaped"}\n',
    "broken third": _pretty(_chat(0), _chat(1)) + '{\n  "id": 3\n  "x": 1\n}\n',
    "a comma between": _pretty(_chat(0)).rstrip() + ",\n" + _pretty(_chat(1)),
    "trailing garbage": _pretty(_chat(0)) + "\n oops",
    "cut in a string": _pretty(_chat(0)) + '{\n "text": "abc',
    "cut in a number": _pretty(_chat(0)) + '{\n "n": 1.',
    "too deep": '{\n "a": ' + "[" * 5000 + "]" * 5000 + "}\n",
    "broken first, pretty": '{\n  "text": "a",\n}\n{\n  "text": "b"\n}\n',
    "broken first, JSON Lines": '{"text": "a"\n{"text": "b"}\n{"text": "c"}\n',
    "cut first line, JSON Lines": '{"text": "a\n{"text": "b"}\n',
    "only a brace": "{\n",
}


@pytest.mark.parametrize("name", sorted(VALUES))
def test_values_over_several_lines_are_read_alike_in_blocks_of_any_size(tmp_path, monkeypatch, name):
    """The same rows, or the same one problem, whatever the blocks the file is read in (a value, a \\uXXXX escape, a
    number, a UTF-8 character, a CRLF or the BOM cut between two), under a .json and a .jsonl name, with a BOM."""
    raw = VALUES[name].encode()
    for i, (content, ext) in enumerate(itertools.product((raw, codecs.BOM_UTF8 + raw), (".json", ".jsonl"))):
        path = tmp_path / f"d{i}{ext}"
        path.write_bytes(content)
        want = _rows(path, monkeypatch)
        for block in BLOCKS:
            assert _rows(path, monkeypatch, block) == want, (name, block, content[:80])


def test_values_over_several_lines_read_as_rows(tmp_path, monkeypatch):
    """Each value a row, numbered as a JSON list's elements; where one does not parse, the file's one problem at its
    line and column (none of its rows read, as of a JSON list); where the first does not parse, JSON Lines whose first
    line is broken (a line each, as before) only where its next line is JSON."""

    def said(name, text, block=5):
        path = tmp_path / name
        path.write_bytes(text.encode() if isinstance(text, str) else text)
        return _said(path, monkeypatch, block)

    assert said("a.json", VALUES["three objects"]) == [(f"a.json row {i + 1} (id 'r{i}')", []) for i in range(3)]
    assert said("a.jsonl", VALUES["three objects"]) == [(f"a.jsonl row {i + 1} (id 'r{i}')", []) for i in range(3)]
    assert said("b.json", VALUES["one object"]) == [("b.json row 1 (id 'r0')", [])]  # as before
    line = _pretty(_chat(0), _chat(1)).count("\n") + 3  # '  "x": 1' after '  "id": 3' without a comma
    assert said("c.json", VALUES["broken third"]) == [
        (f"c.json line {line}", ["invalid JSON: Expecting ',' delimiter (column 3)"])
    ]
    line = _pretty(_chat(0)).count("\n")  # the comma after the first object's closing brace
    assert said("d.json", VALUES["a comma between"]) == [
        (f"d.json line {line}", ["invalid JSON: Expecting value (column 2)"])
    ]
    # a pretty-printed object that does not parse: its problem, not one a line (each line of it was a row's problem)
    assert said("e.json", VALUES["broken first, pretty"]) == [
        ("e.json line 3", ["invalid JSON: Expecting property name enclosed in double quotes (column 1)"])
    ]
    assert said("f.jsonl", VALUES["broken first, JSON Lines"]) == [  # as before
        ("f.jsonl line 1", ["invalid JSON: Expecting ',' delimiter (column 13)"]),
        ("f.jsonl line 2", []),
        ("f.jsonl line 3", []),
    ]
    # a byte that is not UTF-8 (Latin-1's é) in the second object: the file's one problem, with how to convert it
    latin = _pretty({"text": "a"}).encode() + _pretty({"text": "caf\xe9"}).encode("latin-1")
    assert said("g.json", latin) == [
        (
            "g.json line 5",
            [
                "not UTF-8 text (byte 0xe9 at column 15): convert the file to UTF-8, e.g. iconv -f latin1 -t utf-8 "
                "g.json > g.utf8.json"
            ],
        )
    ]
    # in the first object: the same one problem, not one a line
    assert said("h.json", latin.replace(b'"a"', b'"\xe9"', 1)) == [
        (
            "h.json line 2",
            [
                "not UTF-8 text (byte 0xe9 at column 12): convert the file to UTF-8, e.g. iconv -f latin1 -t utf-8 "
                "h.json > h.utf8.json"
            ],
        )
    ]
    rows = _rows(tmp_path / "a.json", monkeypatch)
    assert rows[2][1] == "sharegpt" and rows[2][3][0]["content"] == _CHAT["conversations"][0]["value"]


def _whole(raw: bytes) -> list | None:
    """The values of a whole file's text one after another (None where it is not that)."""
    try:
        text = raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError:
        return None
    decoder, at, values = json.JSONDecoder(), 0, []
    space = formats._JSON_SPACE
    at = space.match(text, at).end()
    while at < len(text):
        try:
            value, at = decoder.raw_decode(text, at)
        except (ValueError, RecursionError):
            return None
        values.append(value)
        at = space.match(text, at).end()
    return values


def test_fuzzed_values_read_alike(tmp_path, monkeypatch):
    """Pretty-printed rows with a byte deleted, inserted or the file cut: the same rows or problem in any block size,
    and where the whole file is still values one after another whose first spans lines, those values as the rows."""
    rng = random.Random(301)
    records = [_chat(i) for i in range(5)] + [{"text": "\\u00e9 x"}, {"text": "1234567890"}]
    for k in range(30):
        rng.shuffle(records)
        raw = bytearray(_pretty(*records[: rng.randint(1, len(records))]).encode())
        at = rng.randrange(3, len(raw))
        if k % 3 == 0:
            del raw[at]
        elif k % 3 == 1:
            raw.insert(at, rng.choice(b'[]{},:"\\x0\n1e.-\xff'))
        else:
            raw = raw[:at]
        path = tmp_path / f"f{k}.json"
        path.write_bytes(bytes(raw))
        want = _rows(path, monkeypatch)
        for block in (1, 13, 100):
            assert _rows(path, monkeypatch, block) == want, (bytes(raw), block)
        first = formats._first_line(bytes(raw))
        if (values := _whole(bytes(raw))) is not None and not formats._is_json(first):
            assert [row[0].split(" (")[0] for row in want] == [f"f{k}.json row {i + 1}" for i in range(len(values))]


@pytest.mark.parametrize("ext", [".json", ".jsonl"])
def test_pretty_printed_rows_are_not_held_whole(tmp_path, monkeypatch, ext):
    """1,200 conversations as `jq .` writes them, 2.9 MB: read a value at a time, 0.6x the file at the peak (the rows
    held packed, a block of the file). Read whole they were refused, a problem a line (94k of them), at 1.6x."""
    monkeypatch.setattr(formats, "READ_BLOCK", 2**16)
    monkeypatch.setattr(formats, "PACKED_ROWS", 128)
    rng = random.Random(301)
    words = "the of and to in is that for it as was with be by on not he this are or his from at which".split()
    path = tmp_path / f"pretty{ext}"
    with open(path, "w") as f:
        for i in range(1200):
            turns = [
                {"from": w, "value": " ".join(rng.choices(words, k=rng.randint(50, 400)))} for w in ("human", "gpt")
            ]
            f.write(_pretty({"id": i, "conversations": turns}))
    size = path.stat().st_size
    tracemalloc.start()
    try:
        files, got = load_rows(str(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(got) == 1200 and not any(row.problems for row in got)
    assert got[1199].where == f"pretty{ext} row 1200 (id 1199)" and got[0].format == "sharegpt"
    assert peak < 1.0 * size, f"{peak / size:.2f}x the file at the peak of reading its rows"


# the cache key of argv[1]'s rows and argv[2]'s tokenizer, by the ftctl on PYTHONPATH
_KEY = "import sys; from ftctl.trainer import data; print(data.cache_key(sys.argv[1], sys.argv[2], 64))"


def test_the_cache_key_names_tool_datasets(tmp_path, tiny_model_dir, tiny_data):
    """formats.py reads whether a turn trains from the fields tool_datasets.TRAIN_FLAGS names: an ftctl whose
    tool_datasets.py differs may make other tokens of the same rows, so the rows another one kept are not read as its
    own: another key. Each ftctl a copy of this one, in a process of its own (the key is of the code as imported)."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "HF_HUB_OFFLINE": "1"}

    def key(site):
        args = [sys.executable, "-c", _KEY, str(tiny_data), str(tiny_model_dir)]
        proc = subprocess.run(
            args, env={**env, "PYTHONPATH": str(site)}, cwd=tmp_path, capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    site = tmp_path / "site"
    shutil.copytree(REPO / "ftctl", site / "ftctl", ignore=shutil.ignore_patterns("__pycache__"))
    before = key(site)
    tool = site / "ftctl" / "tool_datasets.py"
    tool.write_text(tool.read_text() + "\n# the next version\n")
    assert key(site) != before


# argv[1]'s rows tokenized (argv[2]'s tokenizer) with no cache (argv[3] ""), or with the cache argv[3] as a process
# that writes no entry (RANK 1, no LOCAL_RANK): the files the datasets are mapped from, and what the rows are
_BUILD = r"""
import json, sys
from ftctl.trainer import data
path, tokenizer, cache = sys.argv[1:4]
if cache:
    sets = [data.build_dataset(path, tokenizer, 128, cache_dir=cache)]
else:  # two held-out sets, as ftctl eval --data a,b builds them: the second's directory is not the first's
    sets = [data.build_dataset(path, tokenizer, 128, held_out=True) for _ in range(2)]
_, memory = data.prepare_data(path, tokenizer, 128, held_out=not cache)
print(json.dumps({
    "files": [[f["filename"] for f in d.cache_files] for d in sets],
    "same": [data.rows_digest(d) == data.rows_digest(memory) for d in sets],
    "memory": memory.cache_files,
}))
"""


def _build(tiny_data, tiny_model_dir, cache: str, **env):
    args = [sys.executable, "-c", _BUILD, str(tiny_data), str(tiny_model_dir), cache]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **env}
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        env.pop(name, None)
    proc = subprocess.run(
        args, env={**env, **({"RANK": "1"} if cache else {})}, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_held_out_rows_without_a_cache_are_mapped_from_a_directory_removed_at_the_end(
    tmp_path, tiny_model_dir, tiny_data
):
    """ftctl eval's held-out rows (build_dataset with no cache directory): their tokens written to a directory in
    TMPDIR as they are made, the dataset mapped from it (held in memory before: 8 bytes a token), the same rows; the
    directory removed as the process ends. One that a killed process left (its pid gone) is removed by the next."""
    import socket

    host = socket.gethostname().split(".")[0]
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    left = tmp / f"ftctl-tokens.{host}-{int(dead.stdout)}.abcd1234.new"
    (left / "x").mkdir(parents=True)
    said = _build(tiny_data, tiny_model_dir, "", TMPDIR=str(tmp))
    assert said["memory"] == [] and said["same"] == [True, True]
    first, second = (Path(f) for (f,) in said["files"])
    assert first.parent != second.parent
    for file in (first, second):
        assert file.name == "tokens.arrow" and file.parent.parent == tmp
        assert file.parent.name.startswith(f"ftctl-tokens.{host}-") and file.parent.name.endswith(".new")
    assert not first.parent.exists() and not second.parent.exists()  # removed at the process's end
    assert not left.exists()


def test_a_process_that_writes_no_entry_maps_its_tokens_from_a_directory_of_its_own(
    tmp_path, tiny_model_dir, tiny_data
):
    """RANK without LOCAL_RANK (every process tokenizes, RANK 0 keeps the entry): another rank's tokens go to a
    directory of its own in TMPDIR (ftctl-tokens.HOST-PID.XXXX.new, removed by the next on this host if the process is
    killed), not its memory, and nothing of it into the cache (the writing process's alone: test_big_data); the
    directory removed as it ends."""
    cache = tmp_path / "cache"
    said = _build(tiny_data, tiny_model_dir, str(cache))
    assert said["same"] == [True]
    ((file,),) = said["files"]
    file = Path(file)
    assert file.parent.name.startswith("ftctl-tokens.") and file.parent.name.endswith(".new")
    assert file.name == "tokens.arrow" and cache not in file.parents
    assert not file.parent.exists()
    assert not cache.exists() or [p.name for p in cache.iterdir() if p.is_dir()] == []  # no entry: RANK 0 writes it


def test_write_valid_keeps_rows_over_several_lines_as_written(tmp_path, tiny_model_dir):
    """`ftctl data check FILE --write-valid OUT` of rows `jq .` printed: the rows without errors, each as it was
    written (its text and the blank before it), in order; it refused them (rows it could not tell apart)."""
    from click.testing import CliRunner

    from ftctl.cli import main

    rows = [_chat(0), {"id": "empty", "conversations": []}, _chat(2), {"text": ""}, {"text": "the end"}]
    data = tmp_path / "pretty.jsonl"
    data.write_text(_pretty(*rows))
    out = tmp_path / "clean.jsonl"
    args = ["data", "check", str(data), "--model", str(tiny_model_dir), "--max-length", "64", "--write-valid", str(out)]
    got = CliRunner().invoke(main, args)
    assert got.exit_code == 0, got.output
    assert f"Wrote 3 of 5 rows of {data} to {out}, as they were read; left out 2 rows with errors" in got.output
    assert out.read_text() == _pretty(rows[0], rows[2], rows[4])
