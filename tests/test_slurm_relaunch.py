"""A launch into a run directory a Slurm job still uses, a cancel that saved nothing, and a controller that does not
answer, on the real test cluster (tests/slurm_fixtures.py). Jobs here are stand-ins (`sbatch --wrap`): a process
holding the run dir's lock as the trainer does, a step that outlasts KillWait."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

import pytest

from ftctl.backend import JobRef, get, jobs_table, launch, record_job, refuse_a_second_job, status_lines, write_files
from ftctl.errors import FtctlError
from ftctl.slurm import scheduler
from tests.render_fixtures import make_spec, prepared


@pytest.fixture(autouse=True)
def own_home(tmp_path, monkeypatch):
    monkeypatch.setenv("FTCTL_HOME", str(tmp_path / "home"))  # the jobs record: this test's alone


def _flags(run: Path, **more):
    return dict(
        backend="slurm",
        gpus="cpu",
        partition="debug",
        model_name_or_path="org/m",
        model_params="1m",
        output_dir=str(run),
        data_path="builtin:demo",
        **more,
    )


def _sbatch(slurm, cwd: Path, body: str, *args: str) -> str:
    script = cwd / f"stand-in-{time.monotonic_ns()}.sh"
    script.write_text("#!/bin/bash\n" + body)
    out = slurm.run("sbatch", "--parsable", "-p", "debug", "-o", str(cwd / "slurm-%j.out"), *args, str(script), cwd=cwd)
    return out.stdout.strip().split(";")[0]


def _wait_for(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


# ---------------------------------------------------------------------------- B1: a run dir still trained into
def test_a_launch_into_a_run_dir_whose_trainer_holds_its_lock_writes_nothing(slurm, tmp_path):
    """A job launched from another FTCTL_HOME (or by hand) trains into the run dir: this launch's own registry knows
    nothing of it, and it rewrote spec.json before its job was refused by the trainer's lock; the first job's next
    requeue went on with these settings. Refused now before anything is written, naming the holder; once the holder
    ended (its lock file stays, not held) the relaunch goes ahead."""
    run = tmp_path / "run"
    write_files(prepared(**_flags(run, learning_rate=2e-4)))  # the first launch's files
    before = {p.name: p.read_text() for p in run.iterdir() if p.is_file()}
    elsewhere = tmp_path / "elsewhere"  # submitted from another directory: only the lock says who trains there
    elsewhere.mkdir()
    lock = run / ".ftctl" / "train.lock"
    lock.parent.mkdir(exist_ok=True)
    holder = elsewhere / "holder.py"  # as trainer.run.only_trainer holds it
    holder.write_text(
        "import fcntl, os, socket, sys, time\n"
        "fh = open(sys.argv[1], 'a+')\n"
        "fcntl.flock(fh, fcntl.LOCK_EX)\n"
        "fh.seek(0); fh.truncate(); fh.write(f'pid {os.getpid()} on {socket.gethostname()} since now\\n'); fh.flush()\n"
        "time.sleep(300)\n"
    )
    job = _sbatch(
        slurm, elsewhere, f"exec {shlex.quote(sys.executable)} {shlex.quote(str(holder))} {shlex.quote(str(lock))}\n"
    )
    try:
        _wait_for(lambda: lock.exists() and "since now" in lock.read_text())
        other = prepared(**_flags(run, learning_rate=0.05))
        with pytest.raises(FtctlError) as e:
            get("slurm").submit(other)
        said = str(e.value)
        assert "\n" not in said and said.startswith(f"{run} is being trained into by pid ")
        assert " on node" in said and "scancel JOB" in said and "another --output" in said
        assert {p.name: p.read_text() for p in run.iterdir() if p.is_file()} == before  # spec.json, job.sbatch kept
        assert not list((run / ".ftctl").glob("spec.*.json"))  # no earlier spec.json set aside either
        with pytest.raises(FtctlError, match="the launch would stop at the 1 error"):  # the dry run says it too
            launch(make_spec(**_flags(run, learning_rate=0.05)), dry_run=True)
    finally:
        slurm.run("scancel", job, check=False)
    slurm.wait_done(job)
    _wait_for(lambda: scheduler.status(job).finished)
    assert "since now" in lock.read_text()  # what a job that ended leaves: not held, so not refused
    get("slurm").check(other)
    refuse_a_second_job(other)


def test_a_launch_into_a_run_dir_a_queued_job_was_submitted_from_is_refused(slurm, tmp_path):
    """A job submitted from the run dir by someone else (its trainer not started yet, or on a disk whose locks the
    nodes do not share) reads spec.json when it starts or is requeued: named, with its user, before anything is
    written."""
    run = tmp_path / "run"
    write_files(prepared(**_flags(run)))
    spec_json = (run / "spec.json").read_text()
    job = _sbatch(slurm, run, "sleep 300\n")
    try:
        other = prepared(**_flags(run, learning_rate=0.05))
        with pytest.raises(FtctlError) as e:
            get("slurm").submit(other)
        said = str(e.value)
        assert said.startswith(f"Slurm job {job} ") and ", user root" in said and f"submitted from {run}" in said
        assert f"`scancel {job}`" in said
        assert (run / "spec.json").read_text() == spec_json
        # a job of this launcher's own registry is named by refuse_a_second_job, in its words
        record_job(JobRef("slurm", job, str(run), "n", str(run)))
        # queued (PENDING, it has not started yet) or training, as the job is by now
        with pytest.raises(FtctlError, match=f"job {job} \\(slurm: .*\\) (is queued to train|is still training) into"):
            get("slurm").submit(other)
    finally:
        slurm.run("scancel", job, check=False)
    slurm.wait_done(job)
    get("slurm").check(other)  # ended: the relaunch goes ahead


# ---------------------------------------------------------------------------- B4: what a cancel saved
def _stand_in_trainer(slurm, run: Path, on_term: str) -> str:
    """A job in ``run`` whose 'trainer' is in a step when TERM comes: ``on_term`` is what the batch shell does then."""
    return _sbatch(
        slurm,
        run,
        f"""\
        trap '{on_term}' TERM
        echo started
        while true; do sleep 0.2; done
        """,
    )


def test_cancel_says_no_checkpoint_was_saved_when_the_step_outlasted_killwait(slurm, tmp_path):
    """The trainer saves at a step boundary; a step longer than KillWait (5 s here, 30 s by default) is killed first,
    and `cancel` said only "cancelled", `status` the same as for a cancel that saved. Both say it now, and where the
    same launch goes on (here: from step 0)."""
    run = tmp_path / "run"
    write_files(prepared(**_flags(run)))
    job = _stand_in_trainer(slurm, run, "echo TERM: still in a long step")  # ignores TERM: SIGKILL at KillWait
    ref = JobRef("slurm", job, str(run), "n", str(run))
    record_job(ref)
    slurm.wait_state(job, "RUNNING")
    _wait_for(lambda: (run / f"slurm-{job}.out").exists())
    said = get("slurm").cancel(ref)
    assert said.startswith(f"cancelled {job}: no checkpoint was saved as it stopped"), said
    assert said.endswith(": the same `ftctl launch` starts it again: nothing was saved")
    lines = status_lines(job)
    assert lines[0].startswith(f"{job} CANCELLED") and lines[1] == said.removeprefix(f"cancelled {job}: ")


def test_cancel_says_the_checkpoint_saved_at_the_stop(slurm, tmp_path):
    run = tmp_path / "run"
    write_files(prepared(**_flags(run)))
    job = _stand_in_trainer(slurm, run, f'echo preempted > "$SLURM_SUBMIT_DIR/status.{"$SLURM_JOB_ID"}.0"; exit 143')
    ref = JobRef("slurm", job, str(run), "n", str(run))
    record_job(ref)
    slurm.wait_state(job, "RUNNING")
    _wait_for(lambda: (run / f"slurm-{job}.out").exists())
    said = get("slurm").cancel(ref)
    assert said.startswith(f"cancelled {job}: its trainer saved a checkpoint as it stopped: the same `ftctl launch`")
    assert status_lines(job)[1].startswith("its trainer saved a checkpoint as it stopped")


def test_cancel_of_a_pending_job_says_it_never_started(slurm, tmp_path):
    run = tmp_path / "run"
    write_files(prepared(**_flags(run)))
    job = _sbatch(slurm, run, "sleep 300\n", "--begin=now+1hour")
    ref = JobRef("slurm", job, str(run), "n", str(run))
    record_job(ref)
    said = get("slurm").cancel(ref)
    assert (
        said
        == f"cancelled {job} (PENDING: it had not started): the same `ftctl launch` starts it again: nothing was saved"
    )


# ---------------------------------------------------------------------------- B7: a controller that does not answer
def test_jobs_waits_for_a_controller_that_does_not_answer_once(slurm, tmp_path, monkeypatch):
    """slurmctld down: every squeue waits ~9 s for it (`squeue --jobs`: 18 s), and `ftctl jobs` asked once a job: 54 s
    before anything was printed. It asks once now (`scontrol ping` says a refused connection at once), and says where
    the controller is, not only to point SLURM_CONF elsewhere."""
    etc = tmp_path / "etc"  # the cluster's configuration, its controller on a port nothing listens on
    shutil.copytree(Path(slurm.conf).parent, etc)
    conf = etc / "slurm.conf"
    text = conf.read_text()
    port = next(line.split("=", 1)[1] for line in text.splitlines() if line.startswith("SlurmctldPort="))
    conf.write_text(text.replace(f"SlurmctldPort={port}", "SlurmctldPort=9"))
    monkeypatch.setenv("SLURM_CONF", str(conf))
    for job in range(101, 107):
        record_job(JobRef("slurm", str(job), str(tmp_path / f"r{job}"), "n", str(tmp_path / f"r{job}")))
    started = time.monotonic()
    table = jobs_table(20)
    took = time.monotonic() - started
    assert took < 8, f"{took:.1f} s"
    lines = table.splitlines()
    assert sum("unknown (1 below)" in line for line in lines) == 6
    assert lines[-1].startswith("(1) the Slurm controller at vm:9 (") and "does not answer" in lines[-1]
    assert f"SLURM_CONF={conf}" in lines[-1]
    for call in (lambda: scheduler.status("101"), lambda: scheduler.cancel("101")):
        started = time.monotonic()
        with pytest.raises(FtctlError, match="^the Slurm controller at vm:9 .* does not answer"):
            call()
        assert time.monotonic() - started < 3


# ---------------------------------------------------------------------------- B6: a partition the cluster lacks
def test_a_dry_run_says_a_partition_the_cluster_does_not_have(slurm, tmp_path, capsys):
    spec = make_spec(**{**_flags(tmp_path / "run"), "partition": "debgu"})
    with pytest.raises(FtctlError, match="the launch would stop at the 1 error"):
        launch(spec, dry_run=True)
    assert "no partition 'debgu' on this cluster (its partitions: debug, gpu): pass --partition debug" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------- explore11: an object-store output
def _commit_to_store(bucket: str, run: Path, step: int, created_unix: float | None = None) -> None:
    """checkpoint-<step> committed to ``bucket``/r1 as the trainer's uploader commits it (its files, then its
    manifest); ``created_unix``: when its manifest says it was written."""
    from ftctl.checkpoints import MANIFEST, upload_checkpoint, write_manifest
    from tests.s3_fixtures import make_checkpoint

    ckpt = make_checkpoint(run / "staged", step)
    manifest = write_manifest(str(ckpt), step, world_size=1, spec_hash="h")
    if created_unix is not None:
        (ckpt / MANIFEST).write_text(json.dumps({**manifest, "created_unix": created_unix}))
    upload_checkpoint(str(ckpt), f"{bucket}/r1/checkpoint-{step}")


def test_cancel_of_a_store_run_says_whether_the_stop_checkpoint_reached_the_store(
    slurm, s3_bucket, tmp_path, monkeypatch
):
    """A run into object storage: the trainer writes `preempted` once it saved its stop checkpoint on the node, also
    where its upload then did not finish (the store down for upload_wait_s, or Slurm's SIGKILL at KillWait after a
    TERM). `cancel` and `status` said "saved a checkpoint ...: the same launch resumes it", and the relaunch on a
    fresh node started from the store's older one, or from step 0 (explore11, on the 2-node cluster with the store
    down). They now say what the store holds: the stop's checkpoint where this attempt committed one."""
    run = tmp_path / "run"
    run.mkdir()
    out = f"{s3_bucket}/r1"
    _commit_to_store(s3_bucket, tmp_path, 4, created_unix=time.time() - 3600)  # an earlier job's
    stopped = f'echo preempted > "$SLURM_SUBMIT_DIR/status.{"$SLURM_JOB_ID"}.0"; exit 143'

    job = _stand_in_trainer(slurm, run, stopped)  # its upload never came
    ref = JobRef("slurm", job, str(run), "n", out)
    record_job(ref)
    slurm.wait_state(job, "RUNNING")
    _wait_for(lambda: (run / f"slurm-{job}.out").exists())
    said = get("slurm").cancel(ref)
    assert said == (
        f"cancelled {job}: its trainer saved a checkpoint as it stopped, but its upload to {out} did not finish "
        f"(`ftctl logs {job}` says why): the same `ftctl launch` resumes it only on nodes whose disk still holds "
        f"that copy, elsewhere resumes it from checkpoint-4 in {out}"
    )
    assert status_lines(job)[1] == said.removeprefix(f"cancelled {job}: ")

    job = _stand_in_trainer(slurm, run, stopped)
    ref = JobRef("slurm", job, str(run), "n", out)
    record_job(ref)
    slurm.wait_state(job, "RUNNING")
    _wait_for(lambda: (run / f"slurm-{job}.out").exists())
    _commit_to_store(s3_bucket, tmp_path, 9)  # its stop checkpoint, committed while it ran
    said = get("slurm").cancel(ref)
    assert said == (
        f"cancelled {job}: its trainer saved a checkpoint as it stopped: the same `ftctl launch` resumes it from "
        f"checkpoint-9 in {out}"
    )
    saved = job
    # killed at KillWait before it wrote its status (a TERM: `cancel --now`, a preemption): "the same `ftctl launch`
    # resumes it" said nothing of what; a fresh node resumes the store's newest
    job = _stand_in_trainer(slurm, run, "echo TERM: still in a long step")
    ref = JobRef("slurm", job, str(run), "n", out)
    record_job(ref)
    slurm.wait_state(job, "RUNNING")
    _wait_for(lambda: (run / f"slurm-{job}.out").exists())
    assert get("slurm").cancel(ref) == (
        f"cancelled {job}: no checkpoint of its stop reached {out} (its trainer saves at a step boundary, then "
        "uploads, and Slurm killed it at KillWait first, or it was not training yet): the same `ftctl launch` resumes "
        f"it from checkpoint-9 in {out}"
    )
    # a disk the nodes share with this machine (a home; here FTCTL_LOCAL_DIR, which the job takes from this
    # environment) where the trainer staged the run: a whole checkpoint there newer than the store's is what the
    # relaunch resumes on those nodes, and sends to the store (it said "starts it again" of a run it resumed)
    from ftctl.checkpoints import write_manifest
    from ftctl.runpaths import UPLOADED_RECORD
    from tests.s3_fixtures import make_checkpoint

    disk = tmp_path / "node-disk"
    monkeypatch.setenv("FTCTL_LOCAL_DIR", str(disk))
    make_checkpoint(disk, 12)  # no manifest: never whole, never resumed
    write_manifest(str(make_checkpoint(disk, 11)), 11, world_size=1, spec_hash="h")
    assert status_lines(job)[1].endswith(
        f": the same `ftctl launch` resumes it from {disk / 'checkpoint-11'} on nodes that share this disk (not in "
        f"{out} yet: it sends it there); elsewhere resumes it from checkpoint-9 in {out}"
    )
    (disk / UPLOADED_RECORD).parent.mkdir()
    (disk / UPLOADED_RECORD).write_text("checkpoint-11\n")  # the store had it, and holds it no longer: not resumed
    assert status_lines(job)[1].endswith(f": the same `ftctl launch` resumes it from checkpoint-9 in {out}")
    # ... unless the store holds it uncommitted: a node's share sent (recorded as sent), the commit never came
    # (SIGKILL at KillWait): the relaunch there resumes it (as on the 2-node cluster: explore11)
    from ftctl.checkpoints import upload_checkpoint

    share = make_checkpoint(tmp_path / "share", 11)
    write_manifest(str(share), 11, world_size=1, spec_hash="h", name="manifest.node-0.json")
    upload_checkpoint(str(share), f"{out}/checkpoint-11", "manifest.node-0.json")
    assert status_lines(job)[1].endswith(
        f"resumes it from {disk / 'checkpoint-11'} on nodes that share this disk (not in "
        f"{out} yet: it sends it there); elsewhere resumes it from checkpoint-9 in {out}"
    )
    # the store not answering now: one line, no traceback (botocore's error went through)
    from tests.s3_fixtures import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    assert status_lines(job)[1].endswith(
        f": the same `ftctl launch` resumes it from the newest checkpoint committed to {out} (Cannot reach the S3 "
        f"endpoint {os.environ['AWS_ENDPOINT_URL']} for {out}: check -o s3_endpoint_url=URL (ftctl sync: "
        "--endpoint-url URL) or AWS_ENDPOINT_URL (is the store running there?) and the network)"
    )
    assert status_lines(saved)[1].startswith(
        f"its trainer saved a checkpoint as it stopped; whether {out} holds it cannot be said now (Cannot reach the S3 "
    )


def test_cancel_of_a_requeued_job_waiting_to_start_again_says_it_ran(slurm, tmp_path):
    """A job requeued (its time limit's USR2, `scontrol requeue`, a preemption) waits PENDING for its next attempt:
    `cancel` then said "(PENDING: it had not started)" of a job that had trained and checkpointed (explore11)."""
    run = tmp_path / "run"
    write_files(prepared(**_flags(run)))
    job = _sbatch(slurm, run, "sleep 300\n", "--requeue")
    ref = JobRef("slurm", job, str(run), "n", str(run))
    record_job(ref)
    slurm.wait_state(job, "RUNNING")
    slurm.run("scontrol", "requeue", job)
    slurm.wait_state(job, "PENDING")
    said = get("slurm").cancel(ref)
    assert said == (
        f"cancelled {job} (PENDING after 1 requeue: its next attempt had not started): the same `ftctl launch` "
        "starts it again: nothing was saved"
    )


def test_cancel_of_a_store_run_whose_trainer_is_loading_on_a_shared_disk_is_at_once(
    slurm, s3_bucket, tmp_path, monkeypatch, capsys
):
    """A run into object storage keeps its metrics.jsonl in the staging dir on its nodes: `cancel` always asked for a
    checkpoint, and waited signal_lead_s (120 s) of a trainer still loading, which cannot save (explore11 F7). Where
    this machine shares that disk (a home; here FTCTL_LOCAL_DIR, which the job takes from this environment) and a
    trainer holds its lock without a start record of this attempt, it is cancelled at once; one that started training
    is asked, and `status` shows its steps from there (F6: it showed none)."""
    from ftctl.slurm.render import CANCEL_TRAP

    run, disk = tmp_path / "run", tmp_path / "node-disk"
    run.mkdir()
    (run / "job.sbatch").write_text(f"#!/bin/bash\n{CANCEL_TRAP}\n")  # a script that takes the request
    monkeypatch.setenv("FTCTL_LOCAL_DIR", str(disk))
    lock, metrics = disk / ".ftctl" / "train.lock", disk / "metrics.jsonl"
    lock.parent.mkdir(parents=True)
    trainer = tmp_path / "trainer.py"  # holds the lock as trainer.run.only_trainer; a start record once it trains
    trainer.write_text(
        "import fcntl, json, os, sys, time\n"
        "fh = open(sys.argv[1], 'a+')\n"
        "fcntl.flock(fh, fcntl.LOCK_EX)\n"
        "fh.seek(0); fh.truncate(); fh.write(f'pid {os.getpid()} since now\\n'); fh.flush()\n"
        "if sys.argv[3] == 'trains':\n"
        "    start = {'step': 0, 'event': 'start', 'time': time.time(), 'slurm_job_id': os.environ['SLURM_JOB_ID'],\n"
        "             'slurm_restart_count': 0}\n"
        "    with open(sys.argv[2], 'a') as f:\n"
        "        f.write(json.dumps(start) + '\\n' + json.dumps({'step': 3, 'loss': 1.5}) + '\\n')\n"
        "time.sleep(300)\n"
    )

    def job(how: str) -> JobRef:
        lock.unlink(missing_ok=True)
        argv = " ".join(shlex.quote(str(a)) for a in (sys.executable, trainer, lock, metrics, how))
        ref = JobRef(
            "slurm",
            _sbatch(slurm, run, f"trap 'echo asked' USR1\n{argv} &\nwhile true; do sleep 0.2; done\n"),
            str(run),
            "n",
            f"{s3_bucket}/r1",
        )
        record_job(ref)
        slurm.wait_state(ref.job_id, "RUNNING")
        _wait_for(lambda: lock.exists() and "since now" in lock.read_text())
        return ref

    loading = job("loads")
    said = get("slurm").cancel(loading)
    assert said.startswith(f"cancelled {loading.job_id}: no checkpoint of its stop reached {s3_bucket}/r1"), said
    err = capsys.readouterr().err
    assert "at once (its trainer had not started training: nothing since the last checkpoint to save)" in err
    assert "asked job" not in err

    training = job("trains")
    _wait_for(lambda: metrics.exists() and f'"slurm_job_id": "{training.job_id}"' in metrics.read_text())
    assert status_lines(training.job_id)[1:2] == ["step 3  loss 1.5000"]  # then its newest checkpoint
    get("slurm").cancel(training, wait_s=0)
    assert f"asked job {training.job_id}'s trainer for a checkpoint" in capsys.readouterr().err
