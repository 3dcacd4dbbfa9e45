"""What `ftctl status` and `ftctl logs` say of a Slurm job, against fake Slurm commands (no cluster): squeue prints
the line a test gives it, as Slurm 22.05's `squeue --Format ...:|` does. The real cluster's side is in
tests/test_slurm_scheduler.py and tests/test_slurm_relaunch.py."""

from __future__ import annotations

import json
import time

import pytest

from ftctl.backend import JobRef, record_job, status_lines
from ftctl.errors import FtctlError
from ftctl.slurm import scheduler
from tests.render_fixtures import fake_slurm

T0 = 1_700_000_000  # the holder's trainer starts here


def _at(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t))


@pytest.fixture
def squeue(tmp_path, monkeypatch):
    """Fake squeue (it prints what the test writes with ``say``) and scontrol (no controller host to ping; it forgot
    every job), first on PATH; the jobs record in its own FTCTL_HOME."""
    bin_dir = tmp_path / "bin"
    out = bin_dir / "squeue.out"
    scripts = {
        "squeue": f"cat {out}",
        "scontrol": 'case "$1" in ping) exit 0;; esac; echo "Invalid job id specified" >&2; exit 1',
    }
    fake_slurm(bin_dir, monkeypatch, scripts, tmp_path / "home")

    def say(job, state, nodes="", reason="None", exit_code=0, signal=0, start=None, end=None, restarts=0):
        wait_status = (exit_code << 8) | signal
        started, ended = (_at(t) if t is not None else "N/A" for t in (start, end))
        out.write_text(f"{job}|{state}|{nodes}|{reason}|{restarts}|{wait_status}|{started}|{ended}|\n")

    return say


def test_an_ended_jobs_stale_pending_reason_is_left_out(squeue):
    """A job cancelled while pending showed `28 CANCELLED (Resources) exit 0`: why it waited, not why it ended."""
    squeue("28", "CANCELLED", reason="Resources")
    assert scheduler.status("28").describe() == "28 CANCELLED exit 0"
    squeue("29", "PENDING", reason="Resources")
    assert scheduler.status("29").describe() == "29 PENDING (Resources)"


def test_logs_of_a_job_that_ended_without_output_says_so(squeue, tmp_path):
    """`ftctl logs 17` of a job that failed before it wrote slurm-17.out said it "may still be pending"."""
    log = tmp_path / "run" / "slurm-17.out"
    squeue("17", "FAILED", nodes="node2", reason="JobLaunchFailure", exit_code=15, signal=181)
    with pytest.raises(FtctlError) as e:
        scheduler.logs("17", path=log)
    assert str(e.value) == f"job 17 FAILED on node2 exit 0 signal 53: it ended before it wrote any output ({log})"
    squeue("18", "PENDING", reason="Priority")  # Slurm says it is queued: not "may still be pending", nor an error
    scheduler.logs("18", path=tmp_path / "run" / "slurm-18.out")  # (test_slurm292: the line it prints, exit 0)


def test_status_of_a_job_slurm_could_not_start_says_where_to_look(squeue, tmp_path, monkeypatch):
    """A run dir the nodes could not write (read-only there) showed `17 FAILED on node2 (JobLaunchFailure) exit 15
    signal 53` and nothing else: slurm-17.out is opened before the script runs, so there is no log to read either.
    A run dir on this machine's /tmp is named as the cause (launch warns of it too: tests/test_slurm_batch135.py)."""
    from ftctl.slurm import backend as slurm_backend

    run = tmp_path / "run"
    run.mkdir()
    record_job(JobRef("slurm", "17", str(run), "r", str(run)))
    squeue("17", "FAILED", nodes="node2", reason="JobLaunchFailure", exit_code=15, signal=181)
    assert status_lines("17")[1] == (
        f"Slurm could not start the job on node2 (JobLaunchFailure): its run dir ({run}, where slurm-17.out is "
        f"written) is on {slurm_backend.node_local(str(run))}, which the nodes do not see; launch it again with "
        "--output on a filesystem the nodes share (home, project or scratch space)"
    )
    assert slurm_backend.node_local(str(run)).startswith("this machine's ")  # pytest's tmp_path: under /tmp
    monkeypatch.setattr(slurm_backend, "node_local", lambda path: None)  # a shared filesystem
    assert status_lines("17") == [
        "17 FAILED on node2 exit 0 signal 53",  # squeue's 4021, as scontrol says it (0:53)
        f"Slurm could not start the job on node2 (JobLaunchFailure): often the run dir ({run}, where slurm-17.out is "
        "written) is not writable there or not on a filesystem the nodes see; that node's slurmd log says why",
    ]


def test_status_of_a_job_whose_trainer_never_trained_shows_no_step(squeue, tmp_path):
    """Job 30, refused at the trainer's lock (exit 2) while job 29 of another FTCTL_HOME trained into the same
    directory, showed job 29's `step 122 loss 5.7702`. The run's metrics are a job's own where its trainer wrote a
    "start" record while the job ran."""
    run = tmp_path / "run"
    run.mkdir()
    rows = [{"step": 0, "event": "start", "time": T0 + 20}]
    rows += [{"step": s, "loss": 6.0 - s / 100, "time": T0 + 20 + s} for s in range(1, 123)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    record_job(JobRef("slurm", "30", str(run), "r", str(run)))
    squeue("30", "FAILED", nodes="node1", exit_code=2, start=T0 + 60, end=T0 + 68)
    assert status_lines("30") == ["30 FAILED on node1 exit 2"]
    squeue("30", "RUNNING", nodes="node1", start=T0 + 60, end=T0 + 3600)  # loading its model: no step of its own yet
    assert status_lines("30") == ["30 RUNNING on node1"]
    squeue("30", "RUNNING", nodes="node1", start=T0, end=T0 + 3600)  # the trainer that wrote these rows is its own
    lines = status_lines("30")  # running: the time a step takes, and how long ago the last was logged (no total)
    assert lines[:1] == ["30 RUNNING on node1"] and lines[2:] == ["no checkpoint saved yet"]
    assert lines[1].startswith("step 122  loss 4.7800  1.0 s a step, logged ") and lines[1].endswith(" days ago")
    squeue("30", "FAILED", nodes="node1", exit_code=1, start=T0, end=T0 + 200)
    assert status_lines("30")[-1] == "step 122  loss 4.7800  1.0 s a step"


def _metrics(run, *trainers) -> None:
    """metrics.jsonl of trainers that took the run directory in turn: (start record, (first, last) step)."""
    rows = []
    for start, (first, last) in trainers:
        rows.append({"step": 0, "event": "start", **start})
        rows += [{"step": s, "loss": 6.0 - s / 100, "time": start["time"] + s} for s in range(first, last + 1)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_status_matches_the_jobs_own_trainer_by_its_job_id(squeue, tmp_path, monkeypatch):
    """P7 (explore6): the steps were a job's where any start record fell within the job's start and end, as squeue
    says them: job 30, refused at job 29's lock, showed job 29's steps once job 29's requeued attempt started while
    job 30 waited at the lock; and job 29 showed the steps of job 31, launched from another FTCTL_HOME later. The
    trainer names its Slurm job in its start record; a record without it (an older ftctl's) is matched by time."""
    run = tmp_path / "run"
    run.mkdir()
    _metrics(
        run,
        ({"time": T0 + 20, "slurm_job_id": "29", "slurm_restart_count": 0}, (1, 78)),
        ({"time": T0 + 200, "slurm_job_id": "29", "slurm_restart_count": 1}, (79, 122)),  # requeued
        ({"time": T0 + 900, "slurm_job_id": "31", "slurm_restart_count": 0}, (123, 140)),
    )
    record_job(JobRef("slurm", "30", str(run), "r", str(run)))
    # job 30 ran from T0+190 to T0+210, refused at the lock: job 29's second attempt started within that
    squeue("30", "FAILED", nodes="node2", exit_code=2, start=T0 + 190, end=T0 + 210)
    assert status_lines("30") == ["30 FAILED on node2 exit 2"]
    # job 29, launched from another FTCTL_HOME: its own last step (its second attempt's), not job 31's
    monkeypatch.setenv("FTCTL_HOME", str(tmp_path / "home29"))
    record_job(JobRef("slurm", "29", str(run), "r", str(run)))
    squeue("29", "FAILED", nodes="node1", exit_code=1, start=T0 + 200, end=T0 + 400)
    assert status_lines("29")[-1] == "step 122  loss 4.7800  1.0 s a step"
    squeue("29", "RUNNING", nodes="node1", start=T0 + 5000, end=T0 + 9000)  # clocks apart: the id still says it
    assert status_lines("29")[1].startswith("step 122  loss 4.7800  1.0 s a step, logged ")
    # an older ftctl's start records name no job: the time window, as before
    _metrics(run, ({"time": T0 + 20}, (1, 78)), ({"time": T0 + 200, "slurm_job_id": "31"}, (79, 90)))
    squeue("29", "FAILED", nodes="node1", exit_code=1, start=T0, end=T0 + 100)
    assert status_lines("29")[-1] == "step 78  loss 5.2200  1.0 s a step"
    squeue("29", "FAILED", nodes="node1", exit_code=1, start=T0 + 150, end=T0 + 300)
    assert status_lines("29") == ["29 FAILED on node1 exit 1"]  # the window holds only job 31's start


def test_status_of_a_requeued_job_says_how_its_last_attempt_ended(squeue, tmp_path, monkeypatch):
    """H (explore11): the store down at a USR2, the stop's checkpoint not in the store; the requeued job waiting for
    its next attempt showed `2 PENDING (BeginTime), restarts 1` alone, while its log said where the checkpoint was
    kept and that a fresh node starts from step 0. Now status shows the last attempt's error line (none: nothing)."""
    run = tmp_path / "run"
    run.mkdir()
    record_job(JobRef("slurm", "2", str(run), "r", "s3://b/runs/r1"))
    monkeypatch.setenv("FTCTL_LOCAL_DIR", str(tmp_path / "on-the-node"))  # its staging dir: not on this machine
    kept = "stopped on SIGUSR2 at step 5, but its checkpoint-5 did not reach s3://b/runs/r1 (...); it is kept in /n/c-5"
    log = run / "slurm-2.out"
    log.write_text(
        "ftctl: job 2 attempt 0 on node[1-2] (head node1)\nstep 1/20  loss 6.2784\n"
        "ftctl: USR2 (time limit or preemption): checkpointing\n"
        f"error: {kept}\nftctl: trainer exited with 0, status preempted\nftctl: requeueing job 2\n"
    )
    squeue("2", "PENDING", reason="BeginTime", restarts=1)
    step = "step 1/20 (5%)  loss 6.2784"  # the log's (explore11 F6): the staging dir is not on this machine
    assert status_lines("2") == ["2 PENDING (BeginTime), restarts 1", f"its attempt 0 ended: {kept}", step]
    squeue("2", "RUNNING", nodes="node[1-2]", restarts=1)  # attempt 1 says itself where it starts from
    lines = status_lines("2")  # running: its newest checkpoint, or that the store cannot be asked (no credentials)
    # the log's last attempt (attempt 0) stopped: no time left, and where (helper 297: it said the step's age)
    assert lines[0] == "2 RUNNING on node[1-2], restarts 1"
    assert lines[1] == f"{step}; its trainer stopped at step 5 on SIGUSR2 (not committed to the store)", lines
    assert lines[2].startswith("newest checkpoint: s3://b/runs/r1 cannot be listed now (No credentials for ")
    log.write_text(log.read_text().replace(f"error: {kept}\n", ""))  # a stop the store committed: it goes on
    squeue("2", "PENDING", reason="BeginTime", restarts=1)
    assert status_lines("2") == [
        "2 PENDING (BeginTime), restarts 1",
        "requeued: Slurm starts it again by itself once a requeued job's hold is over (BeginTime: about 2 minutes on "
        "most clusters); its trainer resumes from the newest checkpoint in s3://b/runs/r1. Nothing to do",
        step,
    ]


def test_record_start_names_the_slurm_job_and_attempt(tmp_path, monkeypatch):
    """The trainer's start record in a Slurm job (what the reader above matches on); none outside one."""
    from types import SimpleNamespace

    from ftctl.trainer.run import record_start

    kernels = SimpleNamespace(attention="sdpa", liger=False, record=lambda: {"attn_implementation": "sdpa"})
    path = tmp_path / "metrics.jsonl"
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    record_start(str(path), kernels, False, echo=lambda line: None)
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    record_start(str(path), kernels, False, echo=lambda line: None)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    record_start(str(path), kernels, False, echo=lambda line: None)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r.get("slurm_job_id"), r.get("slurm_restart_count")) for r in records] == [
        (None, None),
        ("42", 0),
        ("42", 2),
    ]


def test_status_of_a_job_with_restarts_says_an_attempt_trained_steps_again(squeue, tmp_path, monkeypatch):
    """A COMPLETED job with restarts said nothing of an attempt that trained again what an earlier one had trained
    (its stop checkpoint did not reach the store: kept on another node's disk). Its log, written here by the trainer's
    own lines (step lines, starts_again, the resume's warning), says so, and now status does too; an attempt that
    resumed says nothing."""
    import logging
    from types import SimpleNamespace

    from ftctl import checkpoints as C
    from ftctl.envvars import ATTEMPT_ENV
    from ftctl.failures import ATTEMPT_LINE
    from ftctl.trainer.callbacks import MetricsCallback
    from ftctl.trainer.run import starts_again
    from tests.s3_fixtures import make_checkpoint

    run = tmp_path / "run"
    run.mkdir()
    record_job(JobRef("slurm", "3", str(run), "r", str(run)))
    log = run / "slurm-3.out"
    handler = logging.FileHandler(log)  # the trainer's format (trainer/__main__.py), into the job's log
    handler.setFormatter(logging.Formatter("%(asctime)s [rank 0] %(name)s: %(message)s"))
    logging.getLogger("ftctl").addHandler(handler)

    def say(line: str) -> None:
        handler.flush()
        with open(log, "a") as f:
            f.write(line + "\n")

    def attempt(n: int, *steps: int, starts=lambda: None) -> None:
        say(ATTEMPT_LINE.format(job="3", attempt=n) + " on node1 (head node1)")
        starts()  # where it resumes from, as the trainer says it before it trains
        for step in steps:
            state = SimpleNamespace(global_step=step, max_steps=40)
            say(MetricsCallback._progress({"loss": 1.5, "lr": 2e-4, "grad_norm": 0.8, "tokens_per_s": 900}, state, 9))

    node = tmp_path / "node"
    restarted = lambda: logging.getLogger("ftctl.trainer.run").warning("%s", again)  # noqa: E731 - as run.train
    try:
        attempt(0, 10, 20)  # its checkpoint-20 kept on its node's disk
        monkeypatch.setenv(ATTEMPT_ENV, "1")
        again = starts_again(None, str(node), "s3://b/runs/r1")
        attempt(1, 10, 20, 30, starts=restarted)
        kept = make_checkpoint(node, 10)
        C.write_manifest(str(kept), 10, world_size=1, spec_hash="spec")
        make_checkpoint(node, 30)  # its save cut short
        attempt(2, 20, 30, 40, starts=lambda: C.latest_complete(str(node)))  # "skipping checkpoint-30: ..."
        squeue("3", "COMPLETED", nodes="node1", restarts=2)
        lines = status_lines("3")
        assert lines == [
            "3 COMPLETED on node1 exit 0, restarts 2",
            "its attempt 1 started from step 0 (no complete checkpoint to resume), after the attempts before it had "
            "trained to step 20; attempt 2 passed over checkpoint-30 (incomplete or corrupted), after the attempts before it had "
            "trained to step 30: steps they trained were trained again",
        ]
        text = log.read_text()
        log.write_text(text[: text.index(ATTEMPT_LINE.format(job="3", attempt=1))])  # attempt 0 alone
        attempt(1, 30, 40)  # resumed from its checkpoint-20: nothing said
        assert status_lines("3") == lines[:1]
        log.write_text(text[: text.index("step 10/40")])  # attempt 0 trained nothing: attempt 1 trains nothing again
        attempt(1, 10, 20, 30, 40, starts=restarted)
        assert "starts from step 0" in log.read_text() and status_lines("3") == lines[:1]
    finally:
        logging.getLogger("ftctl").removeHandler(handler)
        handler.close()


def test_a_requeued_job_held_before_its_next_attempt_says_it_goes_on_by_itself(squeue, tmp_path, monkeypatch):
    """After `scontrol requeue` (a preemption, a node failure) status said `14 PENDING (BeginTime), restarts 1` and
    nothing more: Slurm holds a requeued job (~2 minutes) and then starts it again, from its checkpoint."""
    from ftctl.slurm import backend as slurm_backend

    run = tmp_path / "run"
    run.mkdir()
    record_job(JobRef("slurm", "14", str(run), "r", str(run)))
    monkeypatch.setattr(slurm_backend, "resumes_from", lambda ref: "resumes it from checkpoint-5")
    squeue("14", "PENDING", reason="BeginTime", restarts=1)
    assert status_lines("14")[:2] == [
        "14 PENDING (BeginTime), restarts 1",
        "requeued: Slurm starts it again by itself once a requeued job's hold is over (BeginTime: about 2 minutes on "
        "most clusters); its trainer resumes from checkpoint-5. Nothing to do",
    ]
    squeue("14", "PENDING", reason="BeginTime")  # a job launched with --begin: not requeued
    assert status_lines("14") == ["14 PENDING (BeginTime)"]
