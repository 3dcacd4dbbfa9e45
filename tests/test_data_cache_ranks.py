"""The tokenized-rows cache across a node's processes (data.build_dataset): its LOCAL_RANK 0 tokenizes and keeps the
rows, the node's others wait for them on the disk and read them (8 GPUs a node tokenized 8 times at once: 8 x 3 GB);
where the disk refused them (or the tokenizing failed) the others are told and tokenize on their own."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import traceback
from pathlib import Path

import pytest

from ftctl.errors import FtctlError
from ftctl.runpaths import DATA_CACHE
from ftctl.trainer import data
from tests.disk_fixtures import fill

ROWS = 24


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from ftctl.trainer.model import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


@pytest.fixture
def rows(tmp_path):
    path = tmp_path / "conv.jsonl"
    path.write_text(
        "".join(
            json.dumps(
                {
                    "conversations": [
                        {"from": "human", "value": f"Add {i} and {i}."},
                        {"from": "gpt", "value": str(2 * i)},
                    ]
                }
            )
            + "\n"
            for i in range(ROWS)
        )
    )
    return path


def _process(local_rank: int, path, tokenizer, cache: str, out, waiting, go) -> None:
    """One process of a node (forked: what the test process imported is there), as torchrun starts it: build_dataset
    with its RANK/LOCAL_RANK; what it did, in ``out``/rank-N.json."""
    try:
        os.environ.update(RANK=str(local_rank), LOCAL_RANK=str(local_rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2")
        data.WAIT_POLL_S = 0.05
        prepare, wait = data.prepare_data, data._wait_for_entry

        def counted(*args, **kwargs):
            with open(out / "tokenized", "a") as f:
                f.write(f"{local_rank}\n")
            return prepare(*args, **kwargs)

        def waited(entry):
            waiting.set()
            return wait(entry)

        data.prepare_data, data._wait_for_entry = counted, waited
        if local_rank == 0:
            go.wait(30)  # the other one waits first: it reads what this one writes, not an entry found there
        said, stats = [], []
        try:
            dataset = data.build_dataset(str(path), tokenizer, 128, stats=stats, cache_dir=cache, echo=said.append)
            done = {"digest": data.rows_digest(dataset), "rows": len(dataset), "stats": repr(stats)}
        except FtctlError as e:
            done = {"error": str(e)}
        entry = Path(cache, data.cache_key(str(path), tokenizer, 128))
        done.update(said=said, mark=str(data._not_kept_mark(entry)))
        (out / f"rank-{local_rank}.json").write_text(json.dumps(done))
    except BaseException:  # noqa: BLE001 — the test says it
        (out / f"rank-{local_rank}.json").write_text(json.dumps({"crash": traceback.format_exc()}))
    finally:
        os._exit(0)


def _node(path, tokenizer, cache: str, out) -> tuple[dict, dict, list[str]]:
    """Two processes of one node, LOCAL_RANK 1 waiting before LOCAL_RANK 0 starts: (rank 0's, rank 1's, the local
    ranks that tokenized)."""
    fork = multiprocessing.get_context("fork")
    waiting = fork.Event()
    procs = [fork.Process(target=_process, args=(r, path, tokenizer, cache, out, waiting, waiting)) for r in (1, 0)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert not any(p.is_alive() for p in procs), "a process still waits"
    done = [json.loads((out / f"rank-{r}.json").read_text()) for r in (0, 1)]
    for d in done:
        assert "crash" not in d, d.get("crash")
        Path(d["mark"]).unlink(missing_ok=True)  # in the node's temporary directory
    tokenized = sorted((out / "tokenized").read_text().split()) if (out / "tokenized").exists() else []
    return done[0], done[1], tokenized


def test_one_process_a_node_tokenizes_the_others_read_its_rows(rows, tokenizer, tmp_path):
    cache = str(tmp_path / "run" / DATA_CACHE)
    first, other, tokenized = _node(rows, tokenizer, cache, tmp_path)
    assert tokenized == ["0"]  # LOCAL_RANK 1 waited for the rows, did not tokenize them too
    assert first["rows"] == other["rows"] == ROWS and first["digest"] == other["digest"]
    assert first["stats"] == other["stats"]  # the rows' DataStats too: read from the entry
    assert first["said"][0] == f"{rows}: tokenizing the rows ..." and " kept in " in first["said"][1]
    assert other["said"] == []  # a waiting process says nothing
    assert not os.path.exists(first["mark"]) and len(os.listdir(cache)) == 1


def test_where_the_disk_refused_the_rows_the_others_tokenize_them(rows, tokenizer, small_disk, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    cache = str(small_disk / DATA_CACHE)
    fill(small_disk)
    first, other, tokenized = _node(rows, tokenizer, cache, out)
    assert tokenized == ["0", "1"]  # told by the mark, not waiting for ever
    assert first["rows"] == other["rows"] == ROWS and first["digest"] == other["digest"]
    assert "not kept for a resume" in first["said"][1] and "No space left" in first["said"][1]
    assert first["said"][1].endswith("; this node's other processes tokenize them too")
    assert other["said"] == [] and first["mark"] == other["mark"]


def test_where_the_first_process_fails_the_others_fail_alike(rows, tokenizer, tmp_path):
    rows.write_text(rows.read_text() + '{"conversations": []}\n')
    first, other, tokenized = _node(rows, tokenizer, str(tmp_path / "run" / DATA_CACHE), tmp_path)
    assert tokenized == ["0", "1"] and "rows with errors" in first["error"] and first["error"] == other["error"]


def test_a_full_disk_says_what_the_tokenized_rows_take_there(tmp_path, monkeypatch):
    import ftctl.preflight
    from ftctl.trainer.run import room_to_save

    monkeypatch.setattr(ftctl.preflight, "checkpoint_gb", lambda plan: (0.002, 0.001))
    with pytest.raises(FtctlError) as got, room_to_save(None, str(tmp_path), None, final=False):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert "tokenized rows" not in str(got.value)  # none kept: nothing said of them
    entry = tmp_path / DATA_CACHE / "KEY"
    entry.mkdir(parents=True)
    (entry / "data-00000-of-00001.arrow").write_bytes(b"r" * 300_000)
    with pytest.raises(FtctlError) as got, room_to_save(None, str(tmp_path), None, final=False):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert str(got.value).endswith(
        f"; the tokenized rows kept there for a resume take 0.3 MB ({tmp_path / DATA_CACHE}): removing them frees "
        "that, and a resume tokenizes the data again"
    )
