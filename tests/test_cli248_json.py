"""Helper 248: `ftctl jobs --json` and `ftctl status JOB --json` (scripts parsed the table and the status line), made
from the same record as the text; another backend's option is refused by the flag the user typed (--time, not time),
and `--backend sky --time 2h` says SkyPilot takes no time limit rather than Slurm's time formats."""

from __future__ import annotations

import json
import time

from click.testing import CliRunner


def _job(tmp_path, monkeypatch, state, rows=None, job="c1"):
    """A recorded docker job whose status is ``state`` (its run dir with ``rows`` as metrics.jsonl)."""
    from ftctl.backend import JobRef, JobStatus, record_job
    from ftctl.docker.backend import DockerBackend

    monkeypatch.setenv("FTCTL_HOME", str(tmp_path / "home"))
    run = tmp_path / job
    run.mkdir(exist_ok=True)
    if rows is not None:
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    record_job(JobRef("docker", job, str(run), "r", str(run)))
    monkeypatch.setattr(DockerBackend, "status", lambda self, ref: JobStatus(state, f"{ref.job_id} {state.value}"))
    monkeypatch.setattr(DockerBackend, "log_tail", lambda self, ref: "error: rank 0: out of data\n")
    monkeypatch.setattr(DockerBackend, "stop_note", lambda self, ref: None)
    return run


def _rows(max_steps=400):
    now = time.time()
    rows = [{"step": 0, "event": "start", "time": now - 100}]
    rows += [{"step": s, "loss": 2.0, "time": now - 100 + s, "max_steps": max_steps} for s in range(10, 110, 10)]
    return [*rows, {"step": 100, "event": "eval", "eval_loss": 1.5}]


def test_status_json_is_the_status_lines_as_fields(tmp_path, monkeypatch):
    from ftctl.backend import JobState
    from ftctl.cli import main

    _job(tmp_path, monkeypatch, JobState.RUNNING, _rows())
    text = CliRunner().invoke(main, ["status", "c1"])
    said = CliRunner().invoke(main, ["status", "--json", "c1"])
    assert said.exit_code == 0, said.output
    got = json.loads(said.stdout)  # stdout is the JSON alone
    assert got["lines"] == text.stdout.splitlines()  # one record: the text and the JSON
    assert got["job"] == "c1" and got["backend"] == "docker" and got["output"] == str(tmp_path / "c1")
    assert (got["state"], got["exit_code"], got["state_line"], got["error"]) == ("RUNNING", 0, "c1 RUNNING", None)
    assert (got["step"], got["total_steps"], got["loss"]) == (100, 400, 2.0)
    assert got["step_time"] == "1.0 s" and got["time_left"].endswith(" min")
    assert (got["held_out_loss"], got["held_out_step"]) == (1.5, 100)
    assert got["checkpoint"] == "no checkpoint saved yet"

    _job(tmp_path, monkeypatch, JobState.FAILED, _rows())  # ended: its error, no time left; --exit-code still exits 1
    said = CliRunner().invoke(main, ["status", "--json", "--exit-code", "c1"])
    got = json.loads(said.stdout)
    assert said.exit_code == 1 and got["state"] == "FAILED" and got["exit_code"] == 1
    assert got["error"] == "rank 0: out of data" and got["time_left"] is None and got["checkpoint"] is None
    assert got["lines"][1] == "error: rank 0: out of data"

    said = CliRunner().invoke(main, ["status", "--json", "nope"])  # an error: stderr, nothing on stdout
    assert said.exit_code == 2 and said.stdout == "" and "ftctl jobs" in said.stderr


def test_status_json_of_a_step_only_its_log_says(tmp_path, monkeypatch):
    """A job whose metrics.jsonl is staged on its nodes: its step line from its log (Backend.logged_progress), and the
    JSON's fields with it."""
    from ftctl import backend, progress
    from ftctl.backend import JobRef, JobState, JobStatus, record_job
    from ftctl.cli import main
    from ftctl.docker.backend import DockerBackend

    monkeypatch.setenv("FTCTL_HOME", str(tmp_path / "home"))
    record_job(JobRef("docker", "c9", str(tmp_path / "c9"), "r", "s3://b/r"))
    monkeypatch.setattr(DockerBackend, "status", lambda self, ref: JobStatus(JobState.RUNNING, "c9 RUNNING"))
    log = "step 12/40  loss 1.5  lr 2.00e-04  grad 0.808  380 tok/s  ETA 0:00:28\n"
    monkeypatch.setattr(DockerBackend, "logged_progress", lambda self, ref, running: backend.logged_step(log, running))
    monkeypatch.setattr(progress, "newest_checkpoint", lambda *a: "newest checkpoint: checkpoint-8, in s3://b/r")
    said = CliRunner().invoke(main, ["status", "--json", "c9"])
    got = json.loads(said.stdout)
    assert got["lines"][1] == "step 12/40 (30%)  loss 1.5000  380 tok/s  ETA 0:00:28 at that line of its log"
    assert (got["step"], got["total_steps"], got["loss"], got["tokens_per_s"]) == (12, 40, 1.5, 380.0)
    assert (got["step_time"], got["time_left"], got["held_out_loss"]) == (None, "ETA 0:00:28", None)
    assert got["checkpoint"] == "newest checkpoint: checkpoint-8, in s3://b/r"


def test_jobs_json_lists_what_the_table_shows(tmp_path, monkeypatch):
    from ftctl.backend import JobState
    from ftctl.cli import main

    monkeypatch.setenv("FTCTL_HOME", str(tmp_path / "home"))
    said = CliRunner().invoke(main, ["jobs", "--json"])
    assert said.exit_code == 0 and json.loads(said.stdout) == []
    _job(tmp_path, monkeypatch, JobState.SUCCEEDED, job="a1")
    _job(tmp_path, monkeypatch, JobState.SUCCEEDED, job="a2")
    said = CliRunner().invoke(main, ["jobs", "--json", "-n", "1"])
    assert said.exit_code == 0, said.output
    [got] = json.loads(said.stdout)
    assert {k: got[k] for k in ("job", "backend", "name", "output", "state", "state_line")} == {
        "job": "a2",
        "backend": "docker",
        "name": "r",
        "output": str(tmp_path / "a2"),
        "state": "SUCCEEDED",
        "state_line": "SUCCEEDED",
    }
    assert time.strptime(got["launched"], "%Y-%m-%dT%H:%M:%SZ") and got["run_dir"] == str(tmp_path / "a2")
    assert "the newest 1 of 2 jobs" in said.stderr  # a note, on stderr
    table = CliRunner().invoke(main, ["jobs"]).stdout.splitlines()
    assert table[1].split()[0] == "a2" and table[1].endswith("  SUCCEEDED")
    assert "--json" in CliRunner().invoke(main, ["jobs", "--help"]).output


def test_the_step_line_is_written_from_the_fields_the_json_gives():
    """`status --json`'s step fields were read back from the step line's words with a regex (step_fields): now the
    line is written from its fields (ftctl.progress.Progress), which the JSON gives as they are."""
    from ftctl.progress import FIELDS, logged_step, pace, step_text, summary_of_lines

    head = step_text(120, 1.23449, 1234.4, 1000)
    timing = pace({"step": 10, "time": 0}, {"step": 120, "time": 88}, 12, 1000, True, 90)
    assert (head, timing) == ("step 120/1000 (12%)  loss 1.2345  1,234 tok/s", "0.80 s a step, ~12 min left")
    assert head.fields | {k: v for k, v in timing.fields.items() if v is not None} == {
        "step": 120,
        "total_steps": 1000,
        "loss": 1.2345,  # as the line says them
        "tokens_per_s": 1234.0,
        "step_time": "0.80 s",
        "time_left": "12 min",
        "held_out_loss": None,
        "held_out_step": None,
    }
    assert list(head.fields) == list(FIELDS)  # the JSON's order
    rows = [{"step": 0, "event": "start"}, {"step": 8, "loss": 2.0, "max_steps": 40}, {"step": 8, "event": "eval"}]
    rows[-1]["eval_loss"] = float("nan")
    said = summary_of_lines(map(json.dumps, rows), lambda start: True, running=False)
    assert said == "step 8/40 (20%)  loss 2.0000; held-out loss nan at step 8"
    assert {k: v for k, v in said.fields.items() if v is not None} == {
        "step": 8,
        "total_steps": 40,
        "loss": 2.0,
        "held_out_loss": "nan",  # JSON has no NaN
        "held_out_step": 8,
    }
    line = "step 12/40  loss nan  lr 2.00e-04  grad 0.808  380 tok/s  ETA 1 day, 0:00:11"
    logged = logged_step([line], True)  # a log whose time is not known here: the trainer's ETA at that line
    assert logged == "step 12/40 (30%)  loss nan  380 tok/s  ETA 1 day, 0:00:11 at that line of its log"
    assert (logged.fields["loss"], logged.fields["time_left"]) == ("nan", "ETA 1 day, 0:00:11")
    stamped = line.replace("1 day, 0:00:11", "0:00:28  10:00:00 UTC")  # logged 10 min ago, one every 12 s: stuck?
    stuck = logged_step([stamped], True, now=86400 + 10 * 3600 + 600)
    first, warning = stuck.splitlines()
    assert "  1.0 s a step, ~28 s left at that step, logged at " in first and warning.startswith("no step logged")
    assert (stuck.fields["step_time"], stuck.fields["time_left"]) == ("1.0 s", "28 s")  # of its step line


def test_another_backends_flag_is_refused_by_the_flag_typed(tmp_path, monkeypatch):
    """Before: `--backend sky --time 2h` said Slurm's time formats; `--time 02:00:00` and `--sbatch-arg` were refused
    as "time" and "sbatch_args", run keys the user never typed."""
    from ftctl.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FTCTL_HOME", str(tmp_path / "home"))
    base = ["render", "--data", "s3://b/d.jsonl", "--output", "s3://b/o", "--gpus", "1xA100"]
    said = CliRunner().invoke(main, [*base, "--backend", "sky", "--time", "2h"])
    assert said.exit_code != 0 and "Slurm reads" not in said.output
    assert "--backend sky does not take --time (slurm)" in said.output
    assert "SkyPilot puts no time limit on a job: --down" in said.output
    said = CliRunner().invoke(main, [*base, "--backend", "sky", "--sbatch-arg=--qos=x"])
    assert "does not take --sbatch-arg (slurm)" in said.output and "SkyPilot puts" not in said.output
    said = CliRunner().invoke(main, [*base, "--backend", "sky", "-o", "time=2:00:00"])  # given as a key: the key
    assert "does not take time (slurm)" in said.output
