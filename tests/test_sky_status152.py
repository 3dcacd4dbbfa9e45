"""`ftctl status` of a SkyPilot job that runs asks SkyPilot once: its state and its log's tail (the step line it
shows) in one python. It started a second one for the tail (log_tail): a python importing SkyPilot is 2-8 s on the
test infra, loaded, each `ftctl status` poll 15-24 s (task 152). SkyPilot's SDK a stand-in (tests/test_sky_jobs.py)."""

from __future__ import annotations

from ftctl import backend
from ftctl.backend import JobRef, JobState, record_job
from ftctl.sky import backend as sky_backend
from ftctl.sky import bridge
from ftctl.sky.backend import SkyBackend
from tests.test_sky_jobs import SETUP_LOG, FakeSky, cluster_job

STEP_LOG = "\x1b[36m(head, rank=0, pid=7)\x1b[0m step 27/100000  loss 6.2716  946 tok/s  ETA 21:12:48\n"


def _calls(monkeypatch) -> list[tuple[str, bool]]:
    calls = []
    call = bridge.call
    monkeypatch.setattr(bridge, "call", lambda op, **kw: calls.append((op, kw.get("tails", False))) or call(op, **kw))
    return calls


def test_status_of_a_running_job_asks_its_state_and_log_tail_in_one_skypilot_call(monkeypatch):
    sky = FakeSky(now="hash-1", jobs={1: "RUNNING"}, managed={3: "RUNNING"}, log=STEP_LOG).install(monkeypatch)
    sky.mod.jobs.tail_logs = lambda job_id, follow, tail=0, output_stream=None: output_stream.write(STEP_LOG)
    record_job(cluster_job(1))
    record_job(JobRef("sky", "managed/3", "/nonexistent/run", "run", "s3://b/m", {"sky_job_id": 3, "managed": True}))
    calls = _calls(monkeypatch)
    for job, first in (("c/1", "c/1 RUNNING (on cluster c)"), ("managed/3", "managed/3 RUNNING (managed job)")):
        calls.clear()
        lines = backend.status_lines(job)
        assert lines[:2] == [first, "step 27/100000 (0%)  loss 6.2716  946 tok/s  ETA 21:12:48 at that line of its log"]
        assert calls == [("statuses", True)], calls
    # a failed job's error line, from the same call
    sky.jobs[1] = "FAILED_SETUP"
    sky.log = SETUP_LOG
    calls.clear()
    assert backend.status_lines("c/1")[1].startswith("error: a setup line failed: nosuchtool --init")
    assert calls == [("statuses", True)], calls


def test_the_waits_of_cancel_and_ftctl_jobs_ask_no_log(monkeypatch):
    """What polls the state (`ftctl jobs`, cancel's wait for SkyPilot to stop the job) reads no log: a managed job's
    tail took 31 s on the test infra."""
    monkeypatch.setattr(sky_backend, "CANCEL_POLL_S", 0)
    FakeSky(now="hash-1", jobs={1: "RUNNING", 2: "PENDING"}).install(monkeypatch)
    calls = _calls(monkeypatch)
    record_job(cluster_job(2))
    backend.jobs_table(20)
    assert calls == [("statuses", False)], calls
    calls.clear()
    assert SkyBackend().cancel(cluster_job(1)).startswith("cancelled c/1")
    # no question has the tail: the stop request is written before any log is read (1c90459); here the store cannot
    # be written (no credentials), so SkyPilot's cancel comes at once
    assert ("cancel", False) in calls and not any(tails for _, tails in calls), calls


def test_cancels_wait_for_the_stop_checkpoint_reads_the_store_often_and_asks_skypilot_seldom(monkeypatch):
    """While `ftctl cancel` waits for the checkpoint its trainer saves at the stop request, it read the store and asked
    SkyPilot for the job's state every 3 s: a SkyPilot question is 4-10 s on the test infra, loaded, so the committed
    checkpoint was seen up to one late, and the cluster test's cancel took 52 s. The store is read every CANCEL_POLL_S,
    SkyPilot asked every STATE_EVERY_S."""
    import types

    from ftctl import storage

    clock = [0.0]
    monkeypatch.setattr(sky_backend.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(sky_backend.time, "sleep", lambda s: clock.__setitem__(0, clock[0] + s))
    monkeypatch.setattr(sky_backend, "run_spec", lambda ref: types.SimpleNamespace(s3_endpoint_url=None))
    fs = types.SimpleNamespace(pipe_file=lambda path, data: None)
    monkeypatch.setattr(storage, "filesystem", lambda uri, endpoint, quick=False: (fs, uri))
    read = []  # the trainer heard the request at once (seen_unix); its answer is committed at the 10th read (30 s)
    monkeypatch.setattr(sky_backend, "request_answer", lambda ref, ours: read.append(1) or {"seen_unix": 1.0})
    monkeypatch.setattr(sky_backend, "committed_stop", lambda ref, answer: "checkpoint-9" if len(read) >= 10 else None)
    asked = []
    running = JobState.RUNNING
    monkeypatch.setattr(
        SkyBackend,
        "_state",
        lambda self, ref, tail=False: asked.append(clock[0]) or types.SimpleNamespace(state=running),
    )
    assert SkyBackend()._stop_at_checkpoint(cluster_job(1), wait_s=120) == "checkpoint-9"
    assert len(read) == 10 and clock[0] == 10 * sky_backend.CANCEL_POLL_S
    assert asked == [15.0], asked  # once in 30 s (was at each of the 9 reads before the answer)
