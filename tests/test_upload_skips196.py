"""Uploads that fall behind the saves skip what retention would delete at once (helper 196).

A run with fast steps and frequent saves queued 120+ checkpoints behind its store, each sent and then deleted by
retention (save_total_limit) right after, and a stop's checkpoint waited a minute behind them. The store here is
moto_server; its slowness is a gate on the first upload, opened once every checkpoint is queued (no sleeps).
"""

from __future__ import annotations

import logging
import os
import threading

import pytest

from ftctl import checkpoints as C
from ftctl import storage
from ftctl.checkpoints import upload
from tests.s3_fixtures import make_checkpoint

FAST = dict(backoff=(0.1, 0.5), poll_interval=0.1)


@pytest.fixture
def slow_store(monkeypatch):
    """Every upload's destination, in order; the first upload held until ``gate`` is set (``held`` says it is)."""
    sent: list[str] = []
    held, gate = threading.Event(), threading.Event()
    put = upload._put

    def gated(fs, local, uri):
        sent.append(uri)
        if not held.is_set():
            held.set()
            assert gate.wait(30), "the test never opened the gate"
        put(fs, local, uri)

    monkeypatch.setattr(upload, "_put", gated)
    return sent, held, gate


def queue_behind(up: C.Uploader, run, steps, held: threading.Event, gate: threading.Event) -> int:
    """Checkpoints ``steps`` queued while the first one's upload is held; the lag then. The gate is opened after."""
    for i, step in enumerate(steps):
        ckpt = make_checkpoint(run, step)
        C.write_manifest(str(ckpt), step, 1, "h")
        up.submit(str(ckpt))
        if i == 0:
            assert held.wait(30)  # the first one is under way: it is sent whole
    lag, _ = up.lag()
    gate.set()
    return lag


def sent_names(sent: list[str], remote: str) -> set[str]:
    return {uri[len(remote) + 1 :].split("/", 1)[0] for uri in sent if uri.startswith(remote + "/")}


def test_a_queue_behind_a_slow_store_sends_only_what_retention_keeps(s3_bucket, tmp_path, slow_store, caplog):
    sent, held, gate = slow_store
    remote, run = f"{s3_bucket}/run", tmp_path / "run"
    up = C.Uploader(remote, keep_last=2, **FAST)
    caplog.set_level(logging.INFO, logger="ftctl")
    lag = queue_behind(up, run, [5, 10, 15, 20, 25, 30, 35, 40], held, gate)
    assert lag == 8
    assert up.wait(30)  # the newest (a stop's checkpoint) committed
    up.close()

    # checkpoint-5 was under way; 10..30 were superseded before their upload: not one of their files written
    assert sent_names(sent, remote) == {"checkpoint-5", "checkpoint-35", "checkpoint-40"}
    listed = C.list_checkpoints(remote)
    assert [(c.name, c.complete) for c in listed] == [("checkpoint-35", True), ("checkpoint-40", True)]
    skips = [r.getMessage() for r in caplog.records if "superseded before their upload" in r.getMessage()]
    assert len(skips) == 1, skips  # one line for the batch
    assert "skipped checkpoint-10, ..., checkpoint-30 (5 checkpoints)" in skips[0]
    assert "lag now: 2 checkpoint(s)" in skips[0]  # what is left: the two that retention keeps
    assert not os.listdir(run / C.STAGING_DIR)  # their hard links are gone too

    # a relaunch on a fresh node resumes from the store's newest, downloaded and verified
    fresh = tmp_path / "fresh"
    path = C.latest_complete(str(fresh), remote)
    assert path == str(fresh / "checkpoint-40")
    assert (fresh / "checkpoint-40" / "model.safetensors").read_bytes() == (
        run / "checkpoint-40" / "model.safetensors"
    ).read_bytes()


def test_the_best_checkpoint_is_sent_and_without_a_limit_every_one(s3_bucket, tmp_path, slow_store, monkeypatch):
    """load_best_model_at_end: the best (protected, as retention keeps it) is uploaded though superseded; with no
    save_total_limit nothing is superseded."""
    sent, held, gate = slow_store
    remote, run = f"{s3_bucket}/run", tmp_path / "run"
    up = C.Uploader(remote, keep_last=1, **FAST)
    up.protected = {"checkpoint-2"}
    queue_behind(up, run, [1, 2, 3, 4], held, gate)
    assert up.wait(30)
    up.close()
    assert sent_names(sent, remote) == {"checkpoint-1", "checkpoint-2", "checkpoint-4"}
    assert [c.name for c in C.list_checkpoints(remote) if c.complete] == ["checkpoint-2", "checkpoint-4"]

    sent.clear()
    held.clear()
    gate.clear()
    remote = f"{s3_bucket}/unlimited"
    up = C.Uploader(remote, **FAST)
    queue_behind(up, tmp_path / "run2", [1, 2, 3], held, gate)
    assert up.wait(30)
    up.close()
    assert sent_names(sent, remote) == {"checkpoint-1", "checkpoint-2", "checkpoint-3"}
    assert storage.ls(remote)
