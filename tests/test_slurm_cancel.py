"""What `ftctl cancel` does with a Slurm job, against fake Slurm commands (no cluster): squeue prints the job's line
as Slurm 22.05's `squeue --Format ...:|` does, scancel records its arguments (a plain one ends the job). The real
cluster's side: tests/test_slurm_e2e.py (a checkpoint first, then the job cancelled, not requeued)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ftctl.backend import JobRef, record_job
from ftctl.cli import main
from ftctl.slurm import render
from ftctl.slurm.backend import SlurmBackend
from tests.render_fixtures import fake_slurm

JOB = "42"


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    """Fake squeue, scancel and scontrol first on PATH (KillWait 1 s); job 42 RUNNING (restarts 0) from a run dir
    whose script can take the checkpoint request; the calls of scancel, one a line."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    state, calls = bin_dir / "state", bin_dir / "scancel.calls"
    state.write_text("RUNNING")
    scripts = {
        "squeue": f'echo "{JOB}|$(cat {state})|node1|None|0|0|N/A|N/A|"',
        # a signal leaves the job running; a plain scancel ends it
        "scancel": f'echo "$*" >> {calls}; case "$1" in --signal=*) ;; *) echo CANCELLED > {state};; esac',
        "scontrol": 'case "$1" in ping) exit 0;; show) echo "KillWait                = 1 sec";; esac',
    }
    fake_slurm(bin_dir, monkeypatch, scripts, tmp_path / "home")
    run = tmp_path / "run"
    run.mkdir()
    (run / "job.sbatch").write_text(f"#!/bin/bash\n{render.CANCEL_TRAP}\n")
    (run / f"slurm-{JOB}.out").write_text("")
    ref = JobRef("slurm", JOB, str(run), "r", str(run))
    record_job(ref)
    return ref, calls


def _trained(run: Path, job: str = JOB, attempt: int = 0) -> None:
    rows = [{"step": 0, "event": "start", "time": 1.0, "slurm_job_id": job, "slurm_restart_count": attempt}]
    rows += [{"step": 1, "loss": 2.0}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_a_trainer_that_has_not_started_training_is_cancelled_at_once(cluster, capsys):
    """Nothing since the last checkpoint to save: no request, no wait for one. A start record of another job, or of
    this job's earlier attempt, is not this attempt's trainer."""
    ref, calls = cluster
    _trained(ref.paths.root, job="41")
    out = SlurmBackend().cancel(ref)
    assert calls.read_text() == f"{JOB}\n"
    assert out.startswith(f"cancelled {JOB}: no checkpoint was saved as it stopped")
    assert (
        "(its trainer had not started training: nothing since the last checkpoint to save)" in capsys.readouterr().err
    )


def test_a_script_without_the_trap_is_cancelled_at_once(cluster, capsys):
    """An older ftctl's script dies of the request's signal (no trap): a plain scancel, as before."""
    ref, calls = cluster
    _trained(ref.paths.root)
    ref.paths.sbatch.write_text("#!/bin/bash\ntrap on_term TERM\n")
    SlurmBackend().cancel(ref)
    assert calls.read_text() == f"{JOB}\n"
    assert "an older ftctl's) cannot ask its trainer for a checkpoint" in capsys.readouterr().err


def test_no_checkpoint_within_the_wait_cancels_all_the_same(cluster, capsys):
    """The request to the batch shell alone, then, with no checkpoint within --wait, a plain scancel that says so."""
    ref, calls = cluster
    _trained(ref.paths.root)
    out = SlurmBackend().cancel(ref, wait_s=0)
    assert calls.read_text() == f"--signal=USR1 --batch {JOB}\n{JOB}\n"
    err = capsys.readouterr().err
    assert f"asked job {JOB}'s trainer for a checkpoint at its next step boundary; waiting up to 0 s" in err
    assert "(no checkpoint within 0 s (`ftctl cancel --wait SECONDS` gives its trainer longer))" in err
    assert out.startswith(f"cancelled {JOB}: no checkpoint was saved as it stopped")


def test_cancel_options_are_slurms(cluster, tmp_path):
    """--now and --wait are refused for a job of a backend whose cancel does not take them, and together."""
    ref, calls = cluster
    record_job(JobRef("local", str(tmp_path / "local-run"), str(tmp_path / "local-run"), "r", "out"))
    proc = CliRunner().invoke(main, ["cancel", "--now", str(tmp_path / "local-run")])
    assert proc.exit_code == 2 and "--now: job " in proc.output and "runs on local" in proc.output
    proc = CliRunner().invoke(main, ["cancel", "--now", "--wait", "5", JOB])
    assert proc.exit_code == 2 and "pass --now or --wait, not both" in proc.output
    assert not calls.exists()
    proc = CliRunner().invoke(main, ["cancel", "--now", JOB])
    assert proc.exit_code == 0, proc.output
    assert calls.read_text() == f"{JOB}\n"


def test_a_store_run_staged_on_the_nodes_own_disks_is_read_from_its_log(
    cluster, s3_bucket, tmp_path, monkeypatch, capsys
):
    """explore11 F6/F7 where the staging dir is on the nodes' own disks (not seen here): `status` showed no step and
    `cancel` of a trainer still loading asked for a checkpoint and waited signal_lead_s (120 s) for one it cannot
    save. The job's log is seen here: this attempt's lines without the trainer's start line (written with its start
    record) mean loading, and its last step line is the step status shows."""
    from types import SimpleNamespace

    from ftctl.backend import status_lines
    from ftctl.trainer.callbacks import MetricsCallback
    from ftctl.trainer.run import record_start

    ref, calls = cluster
    ref = JobRef("slurm", JOB, ref.run_dir, "r", f"{s3_bucket}/r1")
    record_job(ref)
    monkeypatch.setenv("FTCTL_LOCAL_DIR", str(tmp_path / "on-the-node"))  # the staging dir: not on this machine
    log = ref.paths.slurm_log(JOB)
    log.write_text(f"ftctl: job {JOB} attempt 0 on node1 (head node1)\nloading the model\n")
    assert status_lines(JOB) == [f"{JOB} RUNNING on node1"]
    assert SlurmBackend().cancel(ref).startswith(f"cancelled {JOB}: ")
    assert calls.read_text() == f"{JOB}\n"  # no request: a plain scancel
    assert (
        "(its trainer had not started training: nothing since the last checkpoint to save)" in capsys.readouterr().err
    )

    said = []  # the trainer's own lines: its start line, a logged step
    kernels = SimpleNamespace(attention="sdpa", liger=False, record=lambda: {})
    record_start(str(tmp_path / "metrics.jsonl"), kernels, False, echo=said.append)
    state = SimpleNamespace(global_step=3, max_steps=40)
    said.append(MetricsCallback._progress({"loss": 1.5, "lr": 2e-4, "grad_norm": 0.8, "tokens_per_s": 1175}, state, 9))
    log.write_text(log.read_text() + "\n".join(said) + "\n")
    Path(calls).unlink()
    Path(calls.parent / "state").write_text("RUNNING")
    lines = status_lines(JOB)  # the log's step line, of its total, with the trainer's ETA dated by the log; the store's
    assert lines[::2] == [f"{JOB} RUNNING on node1", f"no checkpoint committed to {s3_bucket}/r1 yet"]
    assert lines[1].startswith("step 3/40 (7%)  loss 1.5000  1,175 tok/s  0.24 s a step, ~")
    assert " left, logged at " in lines[1]
    SlurmBackend().cancel(ref, wait_s=0)
    assert calls.read_text().startswith(f"--signal={render.CANCEL_SIGNAL}")  # asked for a checkpoint first
