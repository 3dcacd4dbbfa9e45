"""The trainer's tokenized rows are written to the data cache as they are made (task 295): build_dataset with a cache
directory has prepare_data write each chunk's token ids and labels to an arrow file in the entry's new directory
(data._TokenColumns' spill), which becomes the entry's file; they were held in the process (int32 ids and labels, 8
bytes a token: 300k conversations of ~200M tokens, 1.6 GB) until the last row was tokenized, then saved. Each runs in a
fresh process (pyarrow's allocator's peak, Linux's peak RSS), with the tests' tiny tokenizer."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
WORDS = "the of and to in is that for it as was with be by on not he this are or his from at which".split()

# build_dataset of the rows in argv[1] with a cache in each of argv[2:] (CACHE:LIMIT), in turn: the peak of pyarrow's
# allocations (where the token columns are: tracemalloc does not see them) and of the RSS over each, the tokens, the
# dataset's digest (rows_digest), its files, and the lines said. LIMIT: the disk refuses files past this size (EFBIG, as a
# full disk's ENOSPC: an OSError, no signal), from this build on; an argument chunk=N: N rows tokenized at a time;
# check: check_data's report instead (its peak, tokens, ok)
_BUILD = r"""
import json, os, sys
sys.path.insert(0, os.path.join(os.getcwd(), "tests"))
import datasets, pyarrow as pa, pyarrow.compute  # noqa: F401 (imported before: not the step's memory)
from ftctl.trainer import data
from tiny_fixtures import make_tiny_tokenizer
def rss():
    status = open("/proc/self/status").read()
    return [int(status.split(k + ":")[1].split()[0]) * 1024 for k in ("VmRSS", "VmHWM")]
tokenizer = make_tiny_tokenizer()
pool = pa.default_memory_pool()
for job in sys.argv[2:]:
    if job.startswith("chunk="):  # rows tokenized at a time
        data._CHUNK = int(job[6:])
        continue
    if job == "check":  # ftctl data check's (and the launch preflight's) report of the rows
        before = pool.max_memory()
        report = data.check_data(sys.argv[1], tokenizer, 256, num_proc=1)
        print(json.dumps({"pool_peak": pool.max_memory() - before, "tokens": report.stats.tokens, "ok": report.ok}))
        continue
    cache, limit = job.rsplit(":", 1)
    if int(limit):
        import resource, signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (int(limit), resource.RLIM_INFINITY))
    said, stats = [], []
    before = pool.max_memory()
    rss_before, _ = rss()
    open("/proc/self/clear_refs", "w").write("5")
    dataset = data.build_dataset(sys.argv[1], tokenizer, 256, stats=stats, cache_dir=cache, echo=said.append,
                                 num_proc=1)
    _, rss_peak = rss()
    print(json.dumps({"pool_peak": pool.max_memory() - before, "rss_peak": rss_peak - rss_before,
                      "tokens": stats[0].tokens, "rows": len(dataset), "digest": data.rows_digest(dataset),
                      "files": [f["filename"] for f in dataset.cache_files], "said": said}))
"""


def _conversations(path: Path, rows: int, seed: int = 295) -> Path:
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(rows):
            turns = []
            for _ in range(rng.randint(1, 3)):
                turns += [
                    {"from": "human", "value": " ".join(rng.choices(WORDS, k=rng.randint(5, 30)))},
                    {"from": "gpt", "value": " ".join(rng.choices(WORDS, k=rng.randint(10, 120)))},
                ]
            f.write(json.dumps({"id": i, "conversations": turns}) + "\n")
    return path


def _build(data: Path, *caches: tuple[Path, int] | str, chunk: int = 0) -> list[dict]:
    """_BUILD's builds of ``data`` with each (cache directory, file size limit or 0), or "check", in one fresh
    process."""
    jobs = [f"chunk={chunk}"] * bool(chunk) + [job if isinstance(job, str) else f"{job[0]}:{job[1]}" for job in caches]
    done = subprocess.run(
        [sys.executable, "-c", _BUILD, str(data), *jobs],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.strip().splitlines()[-len(caches) :]]


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux's peak RSS reset")
def test_the_tokens_are_not_held_until_the_cache_is_written(tmp_path):
    """3,000 conversations (~0.67M tokens, 5.3 MB of int32 ids and labels): held in pyarrow's memory whole until the
    entry was saved (the allocator's peak 1.34x those bytes), a chunk of 512 rows of them at a time now (0.26x)."""
    (got,) = _build(_conversations(tmp_path / "rows.jsonl", 3000), (tmp_path / "cache", 0))
    token_bytes = 8 * got["tokens"]
    assert got["rows"] == 3000 and token_bytes > 4 * 2**20
    assert got["pool_peak"] < 0.5 * token_bytes, (
        f"pyarrow held {got['pool_peak'] >> 10} KB at its peak for {token_bytes >> 10} KB of tokens"
    )
    (entry,) = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    assert got["files"] == [str(entry / "data-00000-of-00001.arrow")]  # the entry's own file, memory-mapped
    assert sorted(p.name for p in entry.iterdir()) == [
        "data-00000-of-00001.arrow",
        "dataset_info.json",
        "ftctl-data-stats.json",
        "state.json",
    ]
    assert "kept in" in got["said"][-1]


# rows_digest of 400 rows of _conversations(seed 295) at max length 256 with the tiny tokenizer, as the code before
# task 295 made them (its prepare_data and _write_cached, read back from the cache; in memory where not kept)
_BEFORE = "4d61f6e3127527ad9eb7f7c58b9ddc91"


def test_the_rows_are_the_tokens_they_were(tmp_path):
    """The same token ids and labels, in the same order, as the rows held in memory made (the digest a checkpoint
    records: rows_digest), written to the cache as they are made, read back from it at a second start, and held in
    memory where the disk refuses them partway (chunks of 100 rows, ~180 KB each, and a file limit of 512 KB: two chunks
    written, the third refused, those two read back; none kept)."""
    rows = _conversations(tmp_path / "rows.jsonl", 400)
    caches = (tmp_path / "cache", 0), (tmp_path / "cache", 0), (tmp_path / "no", 2**19)
    first, again, refused = _build(rows, *caches, chunk=100)
    assert "read from" in again["said"][-1]
    assert "not kept for a resume" in refused["said"][-1] and not refused["files"]
    assert first["digest"] == again["digest"] == refused["digest"] == _BEFORE
    assert first["rows"] == refused["rows"] == 400


def test_data_check_holds_no_tokens(tmp_path):
    """check_data (``ftctl data check``, the launch preflight's check of the rows) keeps the report alone: the rows'
    tokens were made into a dataset it threw away, held whole until the last row was tokenized (pyarrow's peak 1.1x
    their bytes: 200M tokens, 1.6 GB on the laptop that launches), a chunk of them at a time now."""
    (got,) = _build(_conversations(tmp_path / "rows.jsonl", 3000), "check")
    token_bytes = 8 * got["tokens"]
    assert got["ok"] and token_bytes > 4 * 2**20
    assert got["pool_peak"] < 0.5 * token_bytes, (
        f"pyarrow held {got['pool_peak'] >> 10} KB at its peak for {token_bytes >> 10} KB of tokens"
    )
