"""`ftctl status` (task 149's patch to backend.py and cli.py): its exit code says the job's state, for scripts that
poll it, and a running job's lines say the step of its total, its pace, the time left and its newest checkpoint."""

from __future__ import annotations

import json
import time

from click.testing import CliRunner


def _job(tmp_path, monkeypatch, state, rows=None):
    """A recorded docker job whose status is ``state`` (its run dir with ``rows`` as metrics.jsonl)."""
    from ftctl.backend import JobRef, JobStatus, record_job
    from ftctl.docker.backend import DockerBackend

    monkeypatch.setenv("FTCTL_HOME", str(tmp_path / "home"))
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    if rows is not None:
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    record_job(JobRef("docker", "c1", str(run), "r", str(run)))
    monkeypatch.setattr(DockerBackend, "status", lambda self, ref: JobStatus(state, f"c1 {state.value}"))
    monkeypatch.setattr(DockerBackend, "log_tail", lambda self, ref: "error: rank 0: out of data\n")
    monkeypatch.setattr(DockerBackend, "stop_note", lambda self, ref: None)
    return run


def test_status_exits_by_the_jobs_state_and_says_its_codes(tmp_path, monkeypatch):
    """Before: 0 for every state, a failed job's too: a script polling `ftctl status` had to parse its text. With
    --exit-code (git diff's flag) the code says the state; without it, 0 whatever the state (scripts that read the
    text, and the `ftctl status` a poll loop calls, are not ended by a failed job's code)."""
    from ftctl.backend import JobState
    from ftctl.cli import main

    for state, code in [
        (JobState.PENDING, 0),
        (JobState.RUNNING, 0),
        (JobState.SUCCEEDED, 0),
        (JobState.FAILED, 1),
        (JobState.CANCELLED, 3),
        (JobState.PREEMPTED, 3),
        (JobState.UNKNOWN, 4),
    ]:
        _job(tmp_path, monkeypatch, state)
        said = CliRunner().invoke(main, ["status", "--exit-code", "c1"])
        assert said.exit_code == code, (state, said.output)
        assert CliRunner().invoke(main, ["status", "c1"]).exit_code == 0
    assert CliRunner().invoke(main, ["status", "nope"]).exit_code == 2  # no such job
    helped = CliRunner().invoke(main, ["status", "--help"]).output
    assert (
        "--exit-code" in helped
        and "1  failed" in helped
        and "3  stopped before its end" in helped
        and "0  pending, training or complete" in helped
    )


def test_a_running_jobs_status_says_step_of_total_pace_time_left_and_newest_checkpoint(tmp_path, monkeypatch):
    from ftctl.backend import JobState, status_lines
    from ftctl.checkpoints.manifest import write_manifest
    from tests.s3_fixtures import make_checkpoint

    now = time.time()
    rows = [{"step": 0, "event": "start", "time": now - 100}]
    rows += [{"step": s, "loss": 2.0, "time": now - 100 + s, "max_steps": 400} for s in range(10, 110, 10)]
    run = _job(tmp_path, monkeypatch, JobState.RUNNING, rows)
    write_manifest(str(make_checkpoint(run, 100)), 100, 1, "h")
    lines = status_lines("c1")
    assert lines[0] == "c1 RUNNING"
    assert lines[1].startswith("step 100/400 (25%)  loss 2.0000  1.0 s a step, ~"), lines
    assert lines[1].endswith(" min left")
    assert lines[2] == "newest checkpoint: checkpoint-100, saved 0 s ago"
    _job(tmp_path, monkeypatch, JobState.FAILED, rows)  # ended: no time left, no checkpoint line; its error
    assert status_lines("c1") == [
        "c1 FAILED",
        "error: rank 0: out of data",
        "step 100/400 (25%)  loss 2.0000  1.0 s a step",
    ]
