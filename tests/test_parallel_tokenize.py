"""Tokenizing on several processes (data._tokenized): the same rows, token ids, labels, order, statistics and problem
report as one process; small data stays in one; a process that dies or raises is one FtctlError line, no wait."""

from __future__ import annotations

import json
import os
import random

import pytest

from ftctl.errors import FtctlError
from ftctl.trainer import data

from .test_masks_equivalence import _conversation, _text


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """Two data files (a mix: a source column) of every kind of row: conversations (weight 0 turns, long ones that
    truncate or lose every trained token), plain and prompt-completion text, rows with errors of their own, a
    conversation the template refuses and one that writes a special token out."""
    rng = random.Random(11)
    lines = []
    for k in range(360):
        kind = k % 9
        if kind == 0:
            lines.append(json.dumps({"text": _text(rng) + "x"}))
        elif kind == 1:
            lines.append(json.dumps({"prompt": _text(rng) + "q", "completion": _text(rng) + "a"}))
        elif kind == 2 and k % 4 == 0:
            lines.append('{"messages": [')  # not JSON
        elif kind == 3 and k % 4 == 0:
            lines.append(json.dumps({"messages": [{"role": "user", "content": "only a question"}]}))
        elif kind == 4 and k % 5 == 0:
            lines.append(
                json.dumps(
                    {
                        "messages": [
                            {"role": "user", "content": "hi <|im_end|> there"},
                            {"role": "assistant", "content": "ok"},
                        ]
                    }
                )
            )
        elif kind == 5 and k % 5 == 0:  # every trained token past max_length
            lines.append(
                json.dumps(
                    {"messages": [{"role": "user", "content": "long " * 300}, {"role": "assistant", "content": "a"}]}
                )
            )
        else:
            lines.append(json.dumps({"messages": _conversation(rng, tools=False)}))
    root = tmp_path_factory.mktemp("parallel")
    a, b = root / "a.jsonl", root / "b.jsonl"
    a.write_text("\n".join(lines[:250]) + "\n")
    b.write_text("\n".join(lines[250:]) + "\n")
    return f"{a},{b}"


def _everything(report, dataset) -> dict:
    return {
        "render": report.render(every_row=True),
        "errors": report.errors,
        "warnings": report.warnings,
        "notes": report.notes,
        "stats": report.stats,
        "samples": report.samples,
        "bad_at": report.bad_at,
        "columns": dataset.column_names,
        "rows": dataset.to_dict(),
    }


def test_two_processes_give_what_one_does(mixed, tiny_tokenizer, tmp_path, monkeypatch):
    pids = tmp_path / "pids"
    real = data._tokenize_rows

    def counted(work, lo, hi):
        with open(pids, "a") as f:
            f.write(f"{os.getpid()}\n")
        return real(work, lo, hi)

    monkeypatch.setattr(data, "_tokenize_rows", counted)
    for options in ({"sources": True, "show": 4}, {"every_token": True}):
        one = data.prepare_data(mixed, tiny_tokenizer, 96, num_proc=1, **options)
        assert set(pids.read_text().split()) == {str(os.getpid())}
        pids.unlink()
        two = data.prepare_data(mixed, tiny_tokenizer, 96, num_proc=2, **options)
        assert len(set(pids.read_text().split()) - {str(os.getpid())}) == 2  # two other processes tokenized
        assert len(pids.read_text().split()) == 8  # 4 chunks a process
        pids.unlink()
        assert _everything(*two) == _everything(*one)
        report, dataset = one
        # the rows cover every case: errors of their own and the template's, masked, past the end, truncated, mixed
        assert report.bad_rows > 20 and report.stats.truncated_rows > 5 and len(dataset) > 200
        assert any("special tokens" in w for w in report.warnings) and len(report.stats.datasets) == 2
    assert data.rows_digest(two[1]) == data.rows_digest(one[1])


def test_how_many_processes(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: set(range(16)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert data._processes(None, 300) == 1  # the demo's rows: no pool to start
    assert data._processes(None, 2 * data.ROWS_A_PROCESS) == 2
    assert data._processes(None, 300_000) == 16  # the cores this process may run on, not more
    assert data._processes(None, 300_000, sharing=8) == 2  # every rank of 8 tokenizes: a share each
    assert data._processes(1, 300_000) == 1  # -o dataset_num_proc=1: one process
    assert data._processes(4, 3) == 3  # not more than a process a row


def test_small_data_starts_no_process(mixed, tiny_tokenizer, monkeypatch):
    import concurrent.futures

    def refused(*args, **kwargs):
        raise AssertionError("a process pool for a few hundred rows")

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", refused)
    report, dataset = data.prepare_data(mixed, tiny_tokenizer, 96)
    assert len(dataset) > 200


def test_a_process_that_dies_or_raises_is_one_line(mixed, tiny_tokenizer, monkeypatch):
    real, parent, was = data._tokenize_rows, os.getpid(), os.environ.get("TOKENIZERS_PARALLELISM")

    def dies(work, lo, hi):
        if os.getpid() != parent and lo > 0:
            os._exit(9)  # the kernel's OOM killer, as the pool sees it
        return real(work, lo, hi)

    monkeypatch.setattr(data, "_tokenize_rows", dies)
    with pytest.raises(FtctlError) as e:
        data.prepare_data(mixed, tiny_tokenizer, 96, num_proc=2)
    assert "\n" not in str(e.value) and "-o dataset_num_proc=1" in str(e.value)

    def raises(work, lo, hi):
        raise FtctlError("the tokenizer file cannot be read: fix it")

    monkeypatch.setattr(data, "_tokenize_rows", raises)
    with pytest.raises(FtctlError, match="^the tokenizer file cannot be read: fix it$"):
        data.prepare_data(mixed, tiny_tokenizer, 96, num_proc=2)
    assert os.environ.get("TOKENIZERS_PARALLELISM") == was  # the forked processes' setting is not this one's


def test_the_processes_do_not_change_the_cache_key(tiny_tokenizer, tmp_path):
    path = tmp_path / "good.jsonl"
    turns = [
        [{"role": "user", "content": f"What is {i}?"}, {"role": "assistant", "content": f"{i}."}] for i in range(40)
    ]
    path.write_text("".join(json.dumps({"messages": messages}) + "\n" for messages in turns))
    said, cache = [], str(tmp_path / "cache")
    first = data.build_dataset(str(path), tiny_tokenizer, 96, cache_dir=cache, echo=said.append, num_proc=2)
    again = data.build_dataset(str(path), tiny_tokenizer, 96, cache_dir=cache, echo=said.append, num_proc=1)
    assert "tokenized at an earlier start" in said[-1] and data.rows_digest(first) == data.rows_digest(again)


_ORPHAN = """
import os, sys, time
from ftctl.trainer import data

def slow(work, lo, hi):
    with open(sys.argv[1], "a") as f:
        f.write(f"{os.getpid()}\\n")
    time.sleep(60)

data._tokenize_rows = slow
list(data._tokenized(data._Work([None] * 8, None, 8, False, None), 2))
"""


def test_the_processes_end_with_the_one_that_started_them(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    pids = tmp_path / "pids"
    parent = subprocess.Popen([sys.executable, "-c", _ORPHAN, str(pids)])
    try:
        deadline = time.monotonic() + 20
        while len(pids.read_text().split() if pids.exists() else []) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        children = [int(pid) for pid in pids.read_text().split()]
        assert len(children) == 2
    finally:
        parent.send_signal(signal.SIGKILL)  # the kernel's OOM killer, torchrun's last word
        parent.wait()
    deadline, alive = time.monotonic() + 5, children
    try:
        while alive := [pid for pid in children if "zombie" not in _state(pid)]:
            assert time.monotonic() < deadline, "a tokenizing process outlived the one that started it"
            time.sleep(0.05)
    finally:
        for pid in alive:
            os.kill(pid, signal.SIGKILL)


def _state(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/status").read().split("State:")[1].split("\n")[0].lower()
    except (OSError, IndexError):
        return "zombie"


def test_the_run_says_how_many(tiny_tokenizer, tmp_path, monkeypatch):
    """-o dataset_num_proc=N (TRL's key) is the processes that tokenize the training and held-out rows."""
    from ftctl.spec import build

    path = tmp_path / "rows.jsonl"
    turns = [
        [{"role": "user", "content": f"Is {i} odd?"}, {"role": "assistant", "content": str(i % 2)}] for i in range(9)
    ]
    path.write_text("".join(json.dumps({"messages": messages}) + "\n" for messages in turns))
    asked, real = [], data._processes
    monkeypatch.setattr(data, "_processes", lambda n, rows, sharing=1: asked.append(n) or real(n, rows, sharing))
    spec = build({"data_path": str(path), "eval_data_path": str(path), "model_max_length": 64})
    object.__setattr__(spec, "dataset_num_proc", 1)  # spec.py's key (/work/notes/task-119-extra.patch)
    data.build_datasets(spec, tiny_tokenizer)
    assert asked == [1, 1]
