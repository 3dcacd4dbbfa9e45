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


def _written(path: Path, size: int, byte: bytes = b"a") -> Path:
    path.write_bytes((b'{"text": "' + byte * (size - 13) + b'"}\n')[:size])
    return path


def _aged(monkeypatch, after_s: float = 0.2) -> None:
    """Files written KNOWN_AFTER_S ago have their digests kept: a shorter wait than a filesystem's coarsest tick."""
    import time

    from ftctl.trainer import formats

    monkeypatch.setattr(formats, "KNOWN_AFTER_S", after_s)
    time.sleep(after_s + 0.05)


def test_data_digest_read_where_the_file_is_unchanged(tmp_path, monkeypatch):
    """A data file's digest is kept by its stat (device, inode, size, mtime, ctime) and read, not taken again, while
    that stays (a resume of a run on 856 MB hashed it again: 14 s at each start); a write in place of the same size
    with the mtime set back (cp -p, touch -r) moves the ctime: hashed again."""
    import os

    from ftctl.trainer.formats import KNOWN_BYTES, data_digest

    data = _written(tmp_path / "big.jsonl", KNOWN_BYTES + 1)
    known = tmp_path / "cache" / "digests.json"
    _aged(monkeypatch)
    first = data_digest(str(data), known=str(known))
    assert first == data_digest(str(data))  # the same digest as without a file of them
    kept = json.loads(known.read_text())
    (stat,) = kept["files"].values()
    assert stat[:3] == [os.stat(data).st_dev, os.stat(data).st_ino, data.stat().st_size]
    stat[5] = "0" * 32  # another digest for the same stat: read, so the data's digest follows it
    known.write_text(json.dumps(kept))
    assert data_digest(str(data), known=str(known)) != first
    before = os.stat(data)
    with data.open("r+b") as f:  # the same inode and size; the mtime set back as cp -p does
        f.seek(20)
        f.write(b"b")
    os.utime(data, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(data).st_mtime_ns == before.st_mtime_ns and os.stat(data).st_ino == before.st_ino
    edited = data_digest(str(data), known=str(known))
    assert edited == data_digest(str(data)) != first


def test_data_digest_of_a_file_just_written_not_kept(tmp_path):
    """A file written KNOWN_AFTER_S ago or less, or smaller than KNOWN_BYTES, is hashed at each start: a filesystem's
    coarse timestamps could give a write right after the hashing the same stat; a small file costs nothing."""
    from ftctl.trainer.formats import KNOWN_BYTES, data_digest

    data = _written(tmp_path / "new.jsonl", KNOWN_BYTES + 1)
    small = _written(tmp_path / "small.jsonl", 1000)
    known = tmp_path / "digests.json"
    assert data_digest(f"{data},{small}", known=str(known)) == data_digest(f"{data},{small}")
    assert not known.exists()


def test_build_dataset_keeps_the_digests_in_its_cache(tmp_path, tiny_model_dir, monkeypatch):
    """The trainer's build_dataset keeps the data files' digests beside its entries (data.DIGESTS) and reads them
    at the next start: an entry found by the digest kept."""
    from ftctl.trainer import data, formats
    from ftctl.trainer.model import load_tokenizer

    monkeypatch.setattr(formats, "KNOWN_BYTES", 0)
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        "".join(
            json.dumps({"messages": [{"role": "user", "content": f"{i}?"}, {"role": "assistant", "content": "Yes."}]})
            + "\n"
            for i in range(8)
        )
    )
    _aged(monkeypatch)
    cache, tokenizer = tmp_path / "cache", load_tokenizer(str(tiny_model_dir))
    said: list[str] = []
    data.build_dataset(str(rows), tokenizer, 64, cache_dir=str(cache), echo=said.append, num_proc=1)
    kept = json.loads((cache / data.DIGESTS).read_text())
    assert list(kept["files"]) == [str(rows)]
    data.build_dataset(str(rows), tokenizer, 64, cache_dir=str(cache), echo=said.append, num_proc=1)
    assert "tokenized at an earlier start" in said[-1]
    kept["files"][str(rows)][5] = "0" * 32  # read at the next start: another key, tokenized again
    (cache / data.DIGESTS).write_text(json.dumps(kept))
    data.build_dataset(str(rows), tokenizer, 64, cache_dir=str(cache), echo=said.append, num_proc=1)
    assert "kept in" in said[-1]


@pytest.mark.parametrize("kept", ["not json", '{"version": 1, "files": []}', '{"version": 1, "files": {"F": [1, 2]}}'])
def test_data_digest_with_a_damaged_file_of_them(tmp_path, monkeypatch, kept):
    """A digests file that cannot be read as written (a disk filled while it was, another version's) costs a hashing
    and is written anew, readable by the run's group as the other files of the run directory are."""
    import stat

    from ftctl.trainer.formats import KNOWN_BYTES, data_digest

    data = _written(tmp_path / "big.jsonl", KNOWN_BYTES + 1)
    known = tmp_path / "digests.json"
    known.write_text(kept.replace('"F"', json.dumps(str(data))))
    _aged(monkeypatch)
    assert data_digest(str(data), known=str(known)) == data_digest(str(data))
    assert list(json.loads(known.read_text())["files"]) == [str(data)]
    assert stat.S_IMODE(known.stat().st_mode) & 0o044
