"""The trainer's memory with a large dataset (task 273; explore56 items 2 and 15): the tokenized rows become a
datasets.Dataset without datasets pickling the whole table to name it (its fingerprint: ~3x the tokens' bytes at
once, the ~4 GB jump of a 300k-row run between the tokenizing and step 1), and a JSON Lines file's rows are read
without a second copy of the file, a bytes object a line. Each peak is measured in a fresh process (VmHWM): a process
that had a larger peak before reuses its freed pages, and would hide one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

_PEAK = """
import sys
def rss():
    status = open("/proc/self/status").read()
    return [int(status.split(k + ":")[1].split()[0]) * 1024 for k in ("VmRSS", "VmHWM")]
def reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM back to VmRSS (Linux 4.0)
"""

# a table of tokenized rows as prepare_data makes it (_TokenColumns, a chunk of 4,096 rows at a time): ~94 MB
_TOKENIZED = (
    _PEAK
    + """
import datasets  # noqa: F401 (imported by dataset(): not its memory)
import numpy as np
import pyarrow.compute  # noqa: F401
from ftctl.trainer import data
rng = np.random.default_rng(0)
columns = data._TokenColumns(sources=False)
for _ in range(6):
    lengths = rng.integers(200, 800, 4096)
    ends = np.zeros(4097, dtype=np.int64)
    np.cumsum(lengths, out=ends[1:])
    ids = rng.integers(0, 512, int(ends[-1]), dtype=np.int32)
    columns.add(data._Done([], [], ids, ids.copy(), ends), list(range(4096)), [])
before, _ = rss()
reset_peak()
dataset = columns.dataset()
_, peak = rss()
print(dataset.data.nbytes, peak - before, dataset._fingerprint)
"""
)


def _run(script: str, *args: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", script, *args], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.split()


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux's peak RSS reset")
def test_tokenized_rows_are_a_dataset_without_a_copy_of_them():
    """datasets.Dataset(table) without a fingerprint pickles the table with dill to make one: every column combined
    into one array, then into a pickle buffer, ~3x the table's bytes at once (measured: 616 MB of tokens, +2.4 GB;
    explore56's 300k rows, the trainer's 7.85 GB peak). The fingerprint is ftctl's own digest of the values instead
    (test_fingerprint_follows_the_tokens)."""
    table, grown, fingerprint = _run(_TOKENIZED)
    table, grown = int(table), int(grown)
    assert table > 80 * 2**20  # ids and labels, 4 bytes a token each
    assert grown < 0.25 * table, f"building the dataset of {table >> 20} MB of tokens took {grown >> 20} MB more"
    assert len(fingerprint) == 16


def test_fingerprint_follows_the_tokens(tiny_model_dir, tmp_path):
    """Rows that tokenize alike make datasets of one fingerprint; another row, another (datasets names the cache
    files of a map by it); the columns are the tokens as prepare_data made them."""
    from ftctl.trainer.data import prepare_data
    from ftctl.trainer.model import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model_dir))

    def rows(*answers):
        path = tmp_path / f"{'-'.join(answers)}.jsonl"
        path.write_text(
            "".join(
                json.dumps({"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": a}]})
                + "\n"
                for a in answers
            )
        )
        report, dataset = prepare_data(str(path), tokenizer, 64, num_proc=1)
        assert report.ok
        return dataset

    one, again, other = rows("Yes.", "No."), rows("Yes.", "No."), rows("Yes.", "Maybe.")
    assert one._fingerprint == again._fingerprint != other._fingerprint
    assert one["input_ids"] == again["input_ids"] and one["labels"] == again["labels"]
    assert len(one._fingerprint) == 16


_READ = (
    _PEAK
    + """
from ftctl.trainer.formats import load_rows
size = __import__("os").path.getsize(sys.argv[1])
before, _ = rss()
reset_peak()
files, rows = load_rows(sys.argv[1])
_, peak = rss()
print(size, peak - before, len(rows))
"""
)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux's peak RSS reset")
def test_json_lines_read_without_a_copy_a_line(tmp_path):
    """The file's bytes and its rows are held while they are read (2.3x the file here, of few long turns); its lines
    were a second copy of the file, a bytes object each, held until the last row was read (3.3x)."""
    path = tmp_path / "long.jsonl"
    answer = "word " * 4000  # 20 kB an answer: the rows' Python objects about the file's size
    with path.open("w") as f:
        for i in range(1500):
            f.write(
                json.dumps(
                    {"messages": [{"role": "user", "content": f"Q{i}"}, {"role": "assistant", "content": answer}]}
                )
                + "\n"
            )
    size, grown, rows = map(int, _run(_READ, str(path)))
    assert rows == 1500 and size > 25 * 2**20
    assert grown < 2.75 * size, f"reading {size >> 20} MB of JSON Lines took {grown >> 20} MB"


@pytest.mark.parametrize(
    "raw",
    [b"", b"\n", b"a", b"a\n", b"a\nb", b"a\r\nb\rc\n\n", b"\r\r\n\n", b"x\x0by\x0cz\x1c\n", b'  \n\t{"a": 1}\r\n[2]'],
)
def test_lines_as_splitlines(raw):
    """The JSON Lines reader numbers the lines as bytes.splitlines() did (rows' line numbers in every message)."""
    from ftctl.trainer.formats import _first_line, _lines

    assert list(_lines(raw)) == raw.splitlines()
    assert _first_line(raw) == (raw.lstrip().splitlines() or [b""])[0]
