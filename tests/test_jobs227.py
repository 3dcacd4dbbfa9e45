"""`ftctl jobs`: a local run's OUTPUT (its directory, the job's id) is not written out twice, the relaunch hint several
stopped runs share is said once below the table; `ftctl jobs --prune` drops, and says, the records of jobs whose run
directory and output are gone, a job's older records and lines cut short, and nothing else."""

from __future__ import annotations

import json

from click.testing import CliRunner

from ftctl.backend import JobState, JobStatus
from ftctl.cli import main
from ftctl.docker.backend import DockerBackend
from ftctl.local.backend import LocalBackend

NOTHING_SAVED = "the same `ftctl launch` starts it again: nothing was saved"


def rec(job: str, run_dir: str, output: str, t: float, backend: str = "local") -> str:
    return json.dumps(dict(backend=backend, job_id=job, run_dir=run_dir, name="n", output=output, time=t))


def test_a_local_runs_output_and_a_shared_relaunch_hint_are_said_once(tmp_path, monkeypatch):
    monkeypatch.setenv("FTCTL_HOME", str(tmp_path))
    a, b, c = (str(tmp_path / name) for name in "abc")
    lines = [rec(a, a, a, 100), rec(b, b, b, 200), rec(c, c, "s3://bucket/c", 300)]
    lines += [rec("d1", a, "out1", 400, "docker"), rec("d2", a, "out2", 500, "docker")]
    (tmp_path / "jobs.jsonl").write_text("\n".join(lines) + "\n")
    hints = {a: NOTHING_SAVED, b: NOTHING_SAVED, c: "the same `ftctl launch` resumes it from checkpoint-4"}
    monkeypatch.setattr(
        LocalBackend,
        "status",
        lambda self, ref: JobStatus(
            JobState.PREEMPTED, f"{ref.job_id} local run, stopped before the end ({hints[ref.job_id]})"
        ),
    )
    monkeypatch.setattr(DockerBackend, "status", lambda self, ref: JobStatus(JobState.RUNNING, "x RUNNING (on host h)"))
    out = CliRunner().invoke(main, ["jobs"])
    assert out.exit_code == 0, out.output
    rows = {line.split()[0]: line for line in out.stdout.splitlines()[1:6]}
    assert rows[a].split()[1:3] == ["local", "=JOB"] and rows[c].split()[2] == "s3://bucket/c"
    assert rows[a].endswith("local run, stopped before the end (1 below)") and rows[b].endswith("(1 below)")
    assert rows[c].endswith(f"stopped before the end ({hints[c]})")  # its own: said in its row
    assert rows["d1"].endswith("RUNNING (on host h)") and rows["d2"].endswith("RUNNING (on host h)")  # not a hint
    assert out.stdout.splitlines()[6:] == [f"(1) {NOTHING_SAVED}"]


def test_prune_drops_the_records_of_runs_gone_from_here_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("FTCTL_HOME", str(tmp_path))
    here, gone, moved = tmp_path / "here", str(tmp_path / "gone"), str(tmp_path / "moved")
    here.mkdir()
    lines = [
        rec(str(here), str(here), str(here), 100),  # superseded by its relaunch's record below
        rec(gone, gone, gone, 200),  # run directory and output deleted
        rec(moved, moved, "s3://bucket/run", 300),  # its output is in the store: kept
        rec("7", gone, "relative/out", 400, "docker"),  # a relative output: where it is depends on the cwd: kept
        rec("8", gone, str(here), 500, "docker"),  # its output is still here: kept
        rec(str(here), str(here), str(here), 600),
    ]
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("\n".join(lines) + '\n{"backend": "lo\n')
    pruned = CliRunner().invoke(main, ["jobs", "--prune"])
    assert pruned.exit_code == 0, pruned.output
    assert pruned.stdout == (
        f"Dropped 3 records from {jobs}: 1 for jobs whose run directory and output are gone ({gone}); 1 superseded by "
        "a later record of the same job; 1 cut short. Kept 4 jobs.\n"
    )
    assert jobs.read_text().splitlines() == lines[2:]
    again = CliRunner().invoke(main, ["jobs", "--prune"])
    assert again.stdout == f"Nothing to prune in {jobs}: 4 jobs, each with its run directory or output here.\n"
    assert jobs.read_text().splitlines() == lines[2:]
