"""`ftctl cancel` of a SkyPilot job asks its trainer for a checkpoint through the run's object store (SkyPilot's own
cancel kills the job at once, explore14 N3: the trainer saved nothing). The trainer side on CPU with moto and the tiny
model; the cancel side with SkyPilot's SDK a stand-in (tests/test_sky_jobs.py's) and a stand-in trainer that answers
through the trainer's own StopRequest."""

from __future__ import annotations

import json
import re
import threading
import time

import pytest

from ftctl import storage
from ftctl.checkpoints import list_checkpoints
from ftctl.runpaths import STOP_REQUEST, STOP_REQUEST_UNTIL
from ftctl.trainer import callbacks
from tests.test_sky_jobs import FakeSky, cluster_job, forget_ended
from tests.trainer_fixtures import make_run

TRAINING_LOG = "ftctl: node 0 of 1\nattention: sdpa; Liger kernels: off\nstep 3/100  loss 2.1  ETA 0:01:00\n"


def test_a_run_into_s3_stops_at_a_committed_checkpoint_on_the_request_and_a_relaunch_trains_on(
    tiny_model_dir, tiny_data, tmp_path, one_thread, s3_bucket, monkeypatch
):
    """The request appears at step 2 (what `ftctl cancel` writes): the run saves, commits and stops as preempted
    (a stop, not a failure), and names its checkpoint in the request. The same run launched again, the answered
    request still there, trains to its end."""
    from transformers import TrainerCallback

    from ftctl.trainer.run import train

    uri = f"{s3_bucket}/runs/tiny"
    request = storage.join(uri, STOP_REQUEST)
    monkeypatch.setattr(callbacks, "STOP_REQUEST_POLL_S", 0.1)

    class Cancel(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                storage.filesystem(request)[0].pipe_file(request.removeprefix("s3://"), b'{"job": "c/2"}')
            if state.global_step >= 2:
                time.sleep(0.3)  # a step of a real model: the watcher asks between steps

    spec, plan = make_run(
        tiny_model_dir, tiny_data, uri, "lora", max_steps=12, save_steps=100, resume="auto", lora_r=4, lora_alpha=8
    )
    monkeypatch.setenv("FTCTL_LOCAL_DIR", str(tmp_path / "node-a"))
    monkeypatch.setenv("FTCTL_STATUS_FILE", str(tmp_path / "status"))
    first = train(spec, plan, callbacks=[Cancel()], echo=lambda line: None)
    assert first.status == "preempted" and 2 <= first.global_step < 12
    assert (tmp_path / "status").read_text().strip() == "preempted"
    name = f"checkpoint-{first.global_step}"
    assert [c.name for c in list_checkpoints(uri) if c.complete] == [name]
    answered = json.loads(storage.read_text(request))
    assert isinstance(answered.pop("seen_unix"), float)  # heard at once, before the checkpoint
    assert answered == {"job": "c/2", "checkpoint": name}
    stop = [json.loads(line) for line in (tmp_path / "node-a" / "metrics.jsonl").read_text().splitlines()][-1]
    assert stop["event"] == "stop" and stop["signal"] == callbacks.STOP_REQUEST_SIGNAL and stop["in_store"] is True

    monkeypatch.setenv("FTCTL_LOCAL_DIR", str(tmp_path / "node-b"))  # a fresh node: resumes the store's checkpoint
    second = train(spec, plan, echo=lambda line: None)
    assert second.status == "complete" and second.global_step == 12


def test_a_request_there_before_the_run_started_is_no_stop(s3_bucket, monkeypatch):
    """The watcher alone: a request there at its start is an earlier job's; a new one (other text) is a stop."""
    uri = f"{s3_bucket}/run"
    request = storage.join(uri, STOP_REQUEST)
    fs = storage.filesystem(request)[0]
    fs.pipe_file(request.removeprefix("s3://"), b'{"job": "c/1", "checkpoint": "checkpoint-5"}')
    watcher = callbacks.StopRequest(uri, poll_s=0.05)
    watcher.start()
    try:
        assert not watcher.seen.wait(0.5)
        fs.pipe_file(request.removeprefix("s3://"), b'{"job": "c/2"}')
        assert watcher.seen.wait(5)
    finally:
        watcher.close()


TASK = "sky-managed-2026-12-06-08-00-00-000000_run_3-0"  # $SKYPILOT_TASK_ID of managed job 3's trainer


@pytest.mark.parametrize(
    "there, stops",
    [
        ({"job": "managed/3", "task": "_run_3-0"}, True),  # written while this job set up or loaded: heeded
        ({"job": "managed/13", "task": "_run_13-0"}, False),  # another job's
        ({"job": "managed/3", "task": "_run_3-0", "checkpoint": "checkpoint-5"}, False),  # its stop is done
        ({"task": "3-0"}, False),  # not how ftctl names a task (managed/13's would end so too)
        ({"job": "managed/3"}, False),  # an older ftctl's request: no task named
        ([1], False),  # not ftctl's
    ],
)
def test_a_request_there_as_the_watch_begins_is_a_stop_only_for_this_job_unanswered(s3_bucket, there, stops):
    """`ftctl cancel` writes its request without asking SkyPilot's log first whether the trainer trains (~30 s of
    each cancel on the test's infra): a trainer that starts watching after it heeds one naming its own SkyPilot task,
    and says it heard it (seen_unix) at once."""
    uri = f"{s3_bucket}/run"
    request = storage.join(uri, STOP_REQUEST)
    fs = storage.filesystem(request)[0]
    fs.pipe_file(request.removeprefix("s3://"), json.dumps(there).encode())
    watcher = callbacks.StopRequest(uri, poll_s=0.05, task=TASK)
    watcher.start()
    try:
        assert watcher.seen.wait(0.5 if stops else 0.3) is stops
        if stops:
            for _ in range(100):  # heard: said in the request, the rest of it kept
                if "seen_unix" in (now := json.loads(storage.read_text(request))):
                    break
                time.sleep(0.02)
            assert {k: v for k, v in now.items() if k != "seen_unix"} == there and "checkpoint" not in now
            watcher.stopping_at("checkpoint-8")
            for _ in range(100):
                if "checkpoint" in (now := json.loads(storage.read_text(request))):
                    break
                time.sleep(0.02)
            assert now["checkpoint"] == "checkpoint-8" and now["task"] == "_run_3-0"
        else:
            assert json.loads(storage.read_text(request)) == there  # nothing written
    finally:
        watcher.close()


def test_cancel_asks_at_once_and_a_trainer_that_starts_watching_after_stops_at_it(
    monkeypatch, committed, tmp_path, s3_bucket
):
    """The cancel writes its request naming the job's task before any log tail (the stand-in's log says nothing of
    training, and is asked for nothing); the trainer starts watching only once it is there, heeds it, and the cancel
    returns with its committed checkpoint."""
    from ftctl.sky import backend as sky_backend

    monkeypatch.setattr(sky_backend, "CANCEL_POLL_S", 0.05)
    sky = FakeSky(managed={3: "RUNNING"}, log="").install(monkeypatch)
    tails = []
    sky.mod.jobs.tail_logs = lambda **kw: tails.append(kw)
    from ftctl.backend import JobRef

    ref = JobRef("sky", "managed/3", "/nonexistent/run", "run", committed, {"sky_job_id": 3, "managed": True})
    fs, path = storage.filesystem(storage.join(committed, STOP_REQUEST))
    trainer = callbacks.StopRequest(committed, poll_s=0.05, task=TASK)

    def start_after_the_request():
        for _ in range(200):
            if fs.exists(path):
                break
            time.sleep(0.02)
        trainer.start()  # the request is there as it starts watching
        if trainer.seen.wait(5):
            trainer.stopping_at("checkpoint-50")
            _commit(committed, 50, tmp_path)

    said = _cancel_beside(start_after_the_request, trainer, ref, wait_s=10)
    assert tails == [] and sky.cancelled == [3]
    assert said[0].startswith("stopping managed/3: SkyPilot's jobs controller ends it"), said
    assert said[1].startswith("its trainer saved checkpoint-50 as it stopped"), said


def _cancel_beside(stand_in, trainer, ref, wait_s: int) -> list[str]:
    """`ftctl cancel` of ``ref``'s lines, while ``stand_in`` (in a thread) plays the trainer's part; then the
    trainer's watch is closed."""
    from ftctl.sky.backend import SkyBackend

    thread = threading.Thread(target=stand_in)
    thread.start()
    try:
        return SkyBackend().cancel(ref, wait_s=wait_s).splitlines()
    finally:
        trainer.close()
        thread.join()


def _commit(output: str, step: int, tmp_path) -> None:
    """What the trainer's uploader does with its stop checkpoint: files, then the manifest that commits them."""
    from ftctl.checkpoints import push, write_manifest

    stage = tmp_path / f"stage-{step}"
    ckpt = stage / f"checkpoint-{step}"
    ckpt.mkdir(parents=True)
    (ckpt / "adapter_model.safetensors").write_bytes(b"weights")
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step, "max_steps": 100}))
    write_manifest(str(ckpt), step, 1, "digest")
    push(str(stage), output, echo=lambda *_: None)


@pytest.fixture
def committed(s3_bucket, tmp_path) -> str:
    """s3://.../run holding a committed checkpoint-40."""
    _commit(f"{s3_bucket}/run", 40, tmp_path)
    return f"{s3_bucket}/run"


def test_cancel_of_a_training_job_waits_for_its_stop_checkpoint_then_cancels(monkeypatch, committed, tmp_path):
    """explore14 N3: SkyPilot's cancel killed the trainer at step 514 and the relaunch resumed checkpoint-500. Now the
    cancel asks through the store, waits for the checkpoint the trainer names to be committed, then cancels."""
    from ftctl import backend
    from ftctl.backend import record_job
    from ftctl.sky import backend as sky_backend

    monkeypatch.setattr(sky_backend, "CANCEL_POLL_S", 0.05)
    sky = FakeSky(now="hash-1", jobs={2: "RUNNING"}, log=TRAINING_LOG).install(monkeypatch)
    ref = cluster_job(2, output=committed)
    record_job(ref)
    trainer = callbacks.StopRequest(committed, poll_s=0.05)  # the trainer's rank 0, watching the run's output
    trainer.start()
    time.sleep(0.5)  # it has read what was there as it started (nothing)

    def stop_when_asked():
        if trainer.seen.wait(10):
            assert sky.cancelled == []  # not killed before its checkpoint is in
            trainer.stopping_at("checkpoint-50")
            time.sleep(0.3)  # saved, then uploaded: the cancel waits for the commit, not the answer
            _commit(committed, 50, tmp_path)

    said = _cancel_beside(stop_when_asked, trainer, ref, wait_s=20)
    assert sky.cancelled == [2]
    note = f"its trainer saved checkpoint-50 as it stopped; the same `ftctl launch` resumes it from checkpoint-50 in {committed}"
    assert said == ["cancelled c/2", note]
    assert backend.status_lines("c/2") == ["c/2 CANCELLED (on cluster c)", note]


def test_cancel_now_or_of_a_job_not_training_asks_nothing_and_an_unanswered_request_is_cancelled_after_the_wait(
    monkeypatch, committed, capsys
):
    """A request no trainer heard in HEARD_WAIT_S, of a job whose log says it does not train, and one not answered
    in the wait are taken back: a later job whose task id ends the same (a cluster launched again numbers its jobs
    from 1) would stop at it."""
    from ftctl.sky import backend as sky_backend
    from ftctl.sky.backend import SkyBackend

    monkeypatch.setattr(sky_backend, "CANCEL_POLL_S", 0.05)
    monkeypatch.setattr(sky_backend, "HEARD_WAIT_S", 0.1)  # no trainer hears it: its log says whether it trains
    request = storage.join(committed, STOP_REQUEST)
    for log, now in ((TRAINING_LOG, True), ("ftctl: node 0 of 1\nloading the model\n", False)):
        forget_ended()  # the same job id, RUNNING anew
        sky = FakeSky(now="hash-1", jobs={2: "RUNNING"}, log=log).install(monkeypatch)
        said = SkyBackend().cancel(cluster_job(2, output=committed), now=now).splitlines()
        assert sky.cancelled == [2] and said[0] == "cancelled c/2" and not storage.exists(request)
    forget_ended()
    sky = FakeSky(now="hash-1", jobs={2: "RUNNING"}, log=TRAINING_LOG).install(monkeypatch)
    capsys.readouterr()
    said = SkyBackend().cancel(cluster_job(2, output=committed), wait_s=0).splitlines()
    assert "asked job c/2's trainer for a checkpoint" in capsys.readouterr().err
    assert sky.cancelled == [2] and not storage.exists(request)  # asked; no answer: cancelled all the same
    assert said[1].startswith("SkyPilot's cancel kills the job without waiting for its trainer to save a checkpoint")


def test_a_job_that_ended_at_its_stop_before_skypilots_cancel_says_it_stopped(monkeypatch, committed, tmp_path):
    """The trainer exits 0 once its stop checkpoint is in: SkyPilot may record SUCCEEDED before the cancel comes, which
    read as a finished run."""
    from ftctl import backend
    from ftctl.backend import record_job

    FakeSky(now="hash-1", jobs={2: "SUCCEEDED", 3: "SUCCEEDED"}).install(monkeypatch)
    record_job(cluster_job(2, output=committed))
    request = storage.join(committed, STOP_REQUEST)
    storage.filesystem(request)[0].pipe_file(
        request.removeprefix("s3://"), b'{"job": "c/2", "checkpoint": "checkpoint-50"}'
    )
    _commit(committed, 50, tmp_path)
    assert backend.status_lines("c/2") == [
        "c/2 SUCCEEDED (on cluster c)",
        f"its trainer saved checkpoint-50 as it stopped; the same `ftctl launch` resumes it from checkpoint-50 in {committed}",
    ]
    record_job(cluster_job(3, output=committed))  # another job's SUCCEEDED: not this stop
    assert backend.status_lines("c/3") == ["c/3 SUCCEEDED (on cluster c)"]


@pytest.mark.parametrize(
    "until, stops",
    [
        (30, True),  # its cancel still waits: heeded
        (20 - callbacks.STOP_REQUEST_SKEW_S, True),  # past, but within the clocks' skew: heeded
        (-600, False),  # stale: its cancel was killed mid-wait and took nothing back
    ],
)
def test_a_request_there_as_the_watch_begins_is_heeded_only_while_its_cancel_waits(s3_bucket, caplog, until, stops):
    """`ftctl cancel` killed mid-wait (SIGKILL, its machine gone) leaves its request: a later job of the same task
    name and number (a cluster launched again numbers its jobs from 1) stopped at its first step. The request says
    until when its cancel waits (runpaths.STOP_REQUEST_UNTIL); past that, and the clocks' skew, it is stale."""
    import logging

    uri = f"{s3_bucket}/run"
    request = storage.join(uri, STOP_REQUEST)
    there = {"job": "managed/3", "task": "_run_3-0", "id": "a1", "asked_unix": time.time() - 900}
    there[STOP_REQUEST_UNTIL] = round(time.time() + until, 3)
    storage.filesystem(request)[0].pipe_file(request.removeprefix("s3://"), json.dumps(there).encode())
    watcher = callbacks.StopRequest(uri, poll_s=0.05, task=TASK)
    with caplog.at_level(logging.INFO, logger=callbacks.__name__):
        watcher.start()
        try:
            for _ in range(250):  # its first read said what it made of the request there
                if said := [r.getMessage() for r in caplog.records if r.getMessage().startswith(request)]:
                    break
                time.sleep(0.02)
            assert said and watcher.seen.wait(5 if stops else 0.2) is stops, said
        finally:
            watcher.close()
    stale = [line for line in said if "stale" in line]
    if stops:
        assert stale == []
        return
    assert len(stale) == 1 and re.fullmatch(
        rf"{re.escape(request)} asked this job \(_run_3-0\) to stop only until 60\d s ago \(its `ftctl cancel` ended "
        r"without taking it back\): stale, ignored; training on",
        stale[0],
    ), stale
    assert json.loads(storage.read_text(request)) == there  # nothing written: no acknowledgement


def test_cancel_ended_by_sigterm_mid_wait_takes_its_request_back(monkeypatch, committed):
    """A `kill` of `ftctl cancel` as it waits for the checkpoint ran no finally: its request stayed. Now SIGTERM ends
    the wait as Ctrl-C does: the request (which says until when the cancel waits) is taken back, ftctl exits 143 and
    the handler that was there before is back."""
    import os
    import signal

    from ftctl.sky import backend as sky_backend
    from ftctl.sky.backend import SkyBackend

    monkeypatch.setattr(sky_backend, "CANCEL_POLL_S", 0.05)
    sky = FakeSky(now="hash-1", jobs={2: "RUNNING"}, log=TRAINING_LOG).install(monkeypatch)
    fs, path = storage.filesystem(storage.join(committed, STOP_REQUEST))
    written, heard = [], []

    def kill_once_asked():
        for _ in range(200):
            if fs.exists(path):
                written.append(json.loads(fs.cat_file(path)))
                return os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.02)

    def mine(signum, frame):  # without the change: the signal lands here and the cancel waits on
        heard.append(signum)

    before = signal.signal(signal.SIGTERM, mine)
    killer = threading.Thread(target=kill_once_asked)
    killer.start()
    try:
        with pytest.raises(SystemExit) as ended:
            SkyBackend().cancel(cluster_job(2, output=committed), wait_s=3)
        assert signal.getsignal(signal.SIGTERM) is mine  # the handler before is back
    finally:
        killer.join()
        signal.signal(signal.SIGTERM, before)
    assert heard == [] and ended.value.code == 128 + signal.SIGTERM
    assert written and written[0][STOP_REQUEST_UNTIL] == round(written[0]["asked_unix"] + 3, 3)
    assert not fs.exists(path) and sky.cancelled == []  # taken back; the job is not cancelled
