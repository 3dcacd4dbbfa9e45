"""`ftctl status` where a run's progress is not read from live metrics (task 158): a Slurm job staged on its nodes'
disks is read from its log, whose step lines carry no time (the log's last write dates them; a job that logged no step
for much longer than its steps take may be stuck); a store run whose job, node or log is gone is read from its newest
complete checkpoint's copy of metrics.jsonl (the moto S3 server)."""

from __future__ import annotations

import json
import os
import re
import time

import pytest

from ftctl.backend import JobRef, record_job, status_lines
from ftctl.errors import FtctlError
from tests.s3_fixtures import make_checkpoint
from tests.test_slurm_status import squeue  # noqa: F401 - the fake squeue fixture

LOG = (
    "ftctl: job 7 attempt 0 on node3 (head node3)\n"
    "attention: sdpa; Liger kernels: off\n"
    "step 200/400  loss 1.3000  lr 1.00e-04  grad 0.5  3,400 tok/s  ETA 0:05:18\n"
    "step 210/400  loss 1.2345  lr 1.00e-04  grad 0.5  3,400 tok/s  ETA 0:05:02\n"
)


def test_a_log_step_line_is_dated_by_the_logs_last_write_and_an_old_one_says_the_job_may_be_stuck():
    """Before: `ETA 0:05:02 at that line of its log` whether that line was 20 s or 40 min old."""
    from ftctl.progress import clock, logged_step

    now = time.time()
    lines = LOG.splitlines()
    # 20 s after the line (the log's last): the trainer's ETA (302 s for 190 steps: 1.59 s a step) counted from then
    fresh = logged_step(lines, True, written=now - 20, now=now, job="7")
    assert (
        fresh
        == f"step 210/400 (52%)  loss 1.2345  3,400 tok/s  1.6 s a step, ~5 min left, logged at {clock(now - 20, now)}, 20 s ago"
    )
    # 40 min: a step comes every 10 x 1.59 s; said how old, the ETA as it was then, and where to look
    old = logged_step(lines, True, written=now - 2400, now=now, job="7").splitlines()
    assert old == [
        f"step 210/400 (52%)  loss 1.2345  3,400 tok/s  1.6 s a step, ~5 min left at that step, logged at "
        f"{clock(now - 2400, now)}, 40 min ago",
        "no step logged for 40 min where one came every ~16 s: the job may be stuck (or in a long evaluation or "
        "save); `ftctl logs 7` shows what it wrote last",
    ]
    # lines after it (an NCCL warning 40 min on, the log written 1 min ago): the line is older than the log's write,
    # and older than the first line after it that logging dated
    dated = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now - 1800))
    later = [*lines, f"{dated},123 [rank 0] ftctl.trainer: saving checkpoint-210", "NCCL WARN timeout"]
    said = logged_step(later, True, written=now - 60, now=now, job="7").splitlines()
    assert said[0].endswith(f"left at that step, logged before {clock(now - 1800, now)}, over 30 min ago"), said
    assert said[1].startswith("no step logged for 30 min where one came every ~16 s; its log was last written 60 s ago")
    # an ended job's: its step, no time left; an undated log (SkyPilot's tail): as before
    assert logged_step(lines, False, written=now - 2400, now=now) == "step 210/400 (52%)  loss 1.2345  3,400 tok/s"
    assert logged_step(lines, True).endswith("ETA 0:05:02 at that line of its log")


def test_status_of_a_slurm_job_staged_on_its_nodes_dates_its_log_line(squeue, tmp_path, monkeypatch):  # noqa: F811
    """The job of the brief: RUNNING, metrics on the nodes, its log's last step line 40 min old."""
    run = tmp_path / "run"
    run.mkdir()
    record_job(JobRef("slurm", "7", str(run), "r", "s3://b/runs/r1"))
    monkeypatch.setenv("FTCTL_LOCAL_DIR", str(tmp_path / "on-the-node"))  # its staging dir: not on this machine
    log = run / "slurm-7.out"
    log.write_text(LOG)
    old = time.time() - 2400
    os.utime(log, (old, old))
    squeue("7", "RUNNING", nodes="node3")
    lines = status_lines("7")
    assert lines[0] == "7 RUNNING on node3"
    assert lines[1].endswith(", 40 min ago") and "ETA" not in lines[1], lines
    assert lines[2].startswith("no step logged for 40 min") and lines[2].endswith(
        "`ftctl logs 7` shows what it wrote last"
    )
    assert lines[3].startswith("newest checkpoint: s3://b/runs/r1 cannot be listed now (")  # no credentials here


def _stored_run(tmp_path, output: str) -> None:
    """``output`` holding a complete checkpoint-30 (its copy of metrics.jsonl: step 30 of 400) and a checkpoint-40 cut
    short (its metrics copy sent, no manifest): only the complete one counts."""
    from ftctl.checkpoints import push, write_manifest
    from ftctl.storage import put_file

    stage = tmp_path / "stage"
    rows = [{"event": "start", "step": 0, "time": 1000.0}]
    rows += [{"step": s, "loss": 2.0 - s / 100, "time": 1000.0 + s, "max_steps": 400} for s in (10, 20, 30)]
    ckpt = make_checkpoint(stage, 30)
    (ckpt / "ftctl-metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_manifest(str(ckpt), 30, 1, "h")
    push(str(stage), output, echo=lambda *_: None)
    later = tmp_path / "later.jsonl"
    later.write_text(json.dumps({"step": 40, "loss": 1.0, "time": 1040.0, "max_steps": 400}) + "\n")
    put_file(str(later), f"{output}/checkpoint-40/ftctl-metrics.jsonl")


def test_status_of_a_store_run_whose_job_is_gone_reads_its_newest_complete_checkpoint(s3_bucket, tmp_path, monkeypatch):
    """Before: `ftctl status s3://.../run` from a machine that launched no job into it was `error: No job ... was
    launched from here`; an ended job whose node is gone said its state line alone (its store held its last step)."""
    from click.testing import CliRunner

    from ftctl.cli import main
    from ftctl.docker.backend import DockerBackend

    monkeypatch.setenv("FTCTL_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    output = f"{s3_bucket}/run"
    _stored_run(tmp_path, output)
    said = CliRunner().invoke(main, ["status", "--exit-code", output + "/"])
    assert said.exit_code == 4, said.output  # its state is not known here
    lines = said.output.splitlines()
    assert lines[0].startswith(f"{output} UNKNOWN: no job into it was launched from here")
    assert lines[1].startswith("step 30/400 (7%)  loss 1.7000  1.0 s a step (from checkpoint-30, saved "), lines
    assert lines[1].endswith(f", the newest complete checkpoint in {output})") and len(lines) == 2, lines
    # nothing complete there: the error, and that the store holds nothing either (exit 2)
    empty = CliRunner().invoke(main, ["status", f"{s3_bucket}/none"])
    assert empty.exit_code == 2 and "Nor does" in empty.output and "hold a complete checkpoint" in empty.output

    # a job launched from here, ended, its node gone (no metrics, no log here): its state, then the stored step
    from ftctl.backend import JobState, JobStatus

    record_job(JobRef("docker", "c1", str(tmp_path / "gone"), "r", output))
    monkeypatch.setattr(DockerBackend, "status", lambda self, ref: JobStatus(JobState.PREEMPTED, "c1 PREEMPTED"))
    monkeypatch.setattr(DockerBackend, "stop_note", lambda self, ref: None)
    ago = re.compile(r"saved \d+ s ago")
    assert [ago.sub("", line) for line in status_lines("c1")] == ["c1 PREEMPTED", ago.sub("", lines[1])]

    # its backend does not know it (Slurm forgot it): the error, with what the store holds
    def forgot(self, ref):
        raise FtctlError("Slurm has no record of job c1")

    monkeypatch.setattr(DockerBackend, "status", forgot)
    with pytest.raises(FtctlError) as e:
        status_lines("c1")
    assert (
        ago.sub("", str(e.value))
        == f"Slurm has no record of job c1\nits output, {output}, says: {ago.sub('', lines[1])}"
    )
