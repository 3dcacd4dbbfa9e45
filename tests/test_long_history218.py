"""A long run's records: metrics.jsonl with a row a logged step (a million rows, 200 MB, at logging_steps=1 on a long
run). `ftctl status` and `ftctl chat`/`eval`'s start parsed every row: 6 s and 1.6 GB for status at a million rows,
4.5 s more before chat loaded its model. They parse the records they show (starts, evaluations, the ends of the
trainer's steps) and count the rest. Checked on the algorithm, with a few thousand rows: how many lines are parsed."""

from __future__ import annotations

import json

import pytest

ROWS = 3000


def _metrics(path, rows=ROWS, cut=False):
    """metrics.jsonl as the trainer writes it (callbacks.MetricsCallback, run.record_start): an earlier trainer's rows,
    then this one's start record, a row a step (0.8 s apart, the first 60 s in), an evaluation every 500 steps."""
    lines = [{"step": 0, "event": "start", "time": 0.0, "attention": "sdpa", "plain_text": True}]
    lines += [{"step": s, "loss": 9.0, "lr": 1e-5, "grad_norm": 1.0, "tokens": s, "time": float(s)} for s in (1, 2)]
    lines.append({"step": 0, "event": "start", "time": 100.0, "attention": "sdpa", "plain_text": False})
    for s in range(1, rows + 1):
        at = 100.0 + 60.0 + 0.8 * (s - 1)
        row = {"step": s, "loss": 2.0 - s / rows, "lr": 1e-5, "grad_norm": 0.8, "tokens": 650 * s}
        lines.append({**row, "tokens_per_s": 800.0, "epoch": s / rows, "time": at, "max_steps": 2 * rows})
        if s % 500 == 0:
            lines.append({"step": s, "event": "eval", "time": at, "eval_loss": 1.0 + (s == rows), "epoch": s / rows})
    text = "".join(json.dumps(line) + "\n" for line in lines)
    path.write_text(text + ('{"step": 3001, "loss": 0.5, "lr": 1e-5, "time": 99' if cut else ""))
    return path


@pytest.fixture
def parsed(monkeypatch):
    """How many lines json.loads parses."""
    calls = []
    loads = json.loads
    monkeypatch.setattr(json, "loads", lambda s, *a, **k: calls.append(1) or loads(s, *a, **k))
    return calls


@pytest.mark.parametrize("cut", [False, True], ids=["whole", "last-row-cut-short"])
def test_status_of_a_long_history_parses_its_records_not_every_row(tmp_path, parsed, cut):
    from ftctl.backend import JobRef, progress

    metrics = _metrics(tmp_path / "metrics.jsonl", cut=cut)
    ref = JobRef("local", str(tmp_path), str(tmp_path), "run", str(tmp_path))
    said = progress(ref, ran=None, own=None, metrics=metrics, running=True)
    # this trainer's steps only (the earlier one's before its start record), the pace from its second step on
    assert said.startswith("step 3000/6000 (50%)  loss 1.0000  800 tok/s  0.80 s a step, ~")
    assert said.endswith("; held-out loss 2.0000 at step 3000 (lowest 1.0000 at step 500)")
    assert len(parsed) < 30, len(parsed)  # was a line each: 3,000 and more


def test_the_summary_of_records_is_the_summary_of_their_lines(tmp_path):
    """progress.summary (records, as tests and the store's copy give them) says what summary_of_lines says."""
    from ftctl.progress import records, summary, summary_of_lines

    text = _metrics(tmp_path / "metrics.jsonl", rows=40).read_text()
    for running in (True, False):
        lines = summary_of_lines(text.splitlines(), lambda start: True, running, now=300.0)
        assert summary(records(text), lambda start: True, running, now=300.0) == lines
        assert lines.startswith("step 40/80 (50%)  loss 1.0000  800 tok/s  0.80 s a step")


def test_chat_and_a_running_trainers_step_read_the_start_records_not_every_row(tmp_path, parsed):
    """`ftctl chat`/`eval` ask whether the run trained on plain text (its last start record); status of a run an
    older trainer holds says its last step: neither parses the rows between."""
    from ftctl.trainer.trained import Trained, _logged_step

    metrics = _metrics(tmp_path / "metrics.jsonl", cut=True)
    assert Trained(tmp_path, adapter=False).plain_text is False  # the last start's, not the first's
    assert _logged_step(metrics, since=100.0) == "step 3000/6000"  # the row cut short is left out
    assert _logged_step(metrics, since=1e9) == "no step logged yet"
    assert len(parsed) < 12, len(parsed)


def test_cancel_asks_for_the_start_records_alone(tmp_path, parsed):
    """`ftctl cancel` asks whether the job's trainer started (its start record in metrics.jsonl)."""
    from ftctl.backend import starts_in

    starts = starts_in(_metrics(tmp_path / "metrics.jsonl", cut=True))
    assert [s["time"] for s in starts] == [0.0, 100.0] and len(parsed) == 2


def test_a_stores_many_checkpoints_are_listed_with_their_manifests_read_at_once(tmp_path, s3_bucket, monkeypatch):
    """`ftctl sync ls/push/pull`, resume and status list a run's checkpoints in its store, a manifest read each (two
    requests): one after another, 300 checkpoints took `ftctl sync ls` 9.6 s on a loopback S3 server (a request's
    time each, more from a laptop to a cloud's store). They are read at once (resume.MANIFEST_READS)."""
    import threading
    import time

    from ftctl import storage
    from ftctl.checkpoints import resume
    from ftctl.checkpoints.manifest import MANIFEST, write_manifest

    uri = f"{s3_bucket}/run"
    for step in range(1, 13):
        ckpt = tmp_path / f"checkpoint-{step}"
        ckpt.mkdir()
        (ckpt / "model.safetensors").write_text(str(step))
        write_manifest(str(ckpt), step, 1, "abc")
        for name in ("model.safetensors", MANIFEST):
            storage.put_file(str(ckpt / name), f"{uri}/checkpoint-{step}/{name}")
    reading, most, lock = [0], [0], threading.Lock()
    read = resume.read_manifest

    def slow_read(*args, **kwargs):  # a store a long way off
        with lock:
            reading[0] += 1
            most[0] = max(most[0], reading[0])
        time.sleep(0.1)
        try:
            return read(*args, **kwargs)
        finally:
            with lock:
                reading[0] -= 1

    monkeypatch.setattr(resume, "read_manifest", slow_read)
    listed = resume.list_checkpoints(uri)
    assert [c.step for c in listed] == list(range(1, 13)) and all(c.complete for c in listed)
    assert most[0] > 4, most[0]  # one at a time before


def test_status_from_the_stores_newest_checkpoint_parses_its_records_not_every_row(tmp_path, parsed):
    """`ftctl status s3://...` of a run whose metrics.jsonl is not seen here says what its newest checkpoint's copy
    (ftctl-metrics.jsonl, whole) says: it parsed every row, twice."""
    from ftctl.checkpoints.manifest import write_manifest
    from ftctl.progress import stored

    ckpt = tmp_path / "checkpoint-3000"
    ckpt.mkdir()
    _metrics(ckpt / "ftctl-metrics.jsonl")
    write_manifest(str(ckpt), 3000, 1, "abc")
    parsed.clear()
    said, _ = stored(str(tmp_path), None)
    assert said.startswith("step 3000/6000 (50%)  loss 1.0000  800 tok/s  0.80 s a step; held-out loss 2.0000")
    assert len(parsed) < 30, len(parsed)


def test_a_long_log_is_copied_a_chunk_at_a_time(tmp_path, monkeypatch):
    """`ftctl logs` of a long run (a step line a step: 100 MB at a million steps) read the whole log into memory
    (317 MB resident for a 98 MB log); it copies it a chunk at a time, a character split between two kept whole."""
    import io

    from ftctl import logfile

    monkeypatch.setattr(logfile, "COPY_CHUNK", 1000, raising=False)
    log = tmp_path / "train.log"
    text = "".join(f"step {s}/9000  loss 1.2345  ETA 0:00:11  ünïcode\n" for s in range(1, 400))
    log.write_text(text)
    writes = []

    class Out(io.StringIO):
        def write(self, s):
            writes.append(len(s))
            return super().write(s)

    out = Out()
    assert logfile.copy_new(log, 0, out, logfile.new_decoder()) == len(text.encode())
    assert out.getvalue() == text and max(writes) <= 1000 and len(writes) > 10
