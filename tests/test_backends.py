"""The run directory launch writes: whole files, and never a silent overwrite of another run."""

import json
import sys
from pathlib import Path

import pytest

from ftctl.backend import JobRef, prepare, write_files
from ftctl.errors import FtctlError
from ftctl.spec import build


def _prep(tmp_path, **flags):
    values = dict(
        method="lora",
        gpus="1xA100",
        backend="slurm",
        output_dir=str(tmp_path / "run"),
        model_name_or_path="lmsys/vicuna-7b-v1.5",
        data_path="s3://b/conv.json",
    )
    values.update(flags)
    return prepare(build(values))


def test_relaunch_with_other_placement_reuses_the_run_dir(tmp_path):
    write_files(_prep(tmp_path, partition="a"))
    write_files(_prep(tmp_path, partition="b", time="01:00:00"))  # where it runs may change: resume
    assert "--partition=b" in (tmp_path / "run" / "job.sbatch").read_text()
    assert not list((tmp_path / "run").glob(".*.tmp"))  # files land whole (temp file + rename)


def test_a_launch_that_is_not_sent_leaves_the_run_dir_as_it_was(tmp_path, monkeypatch):
    """sbatch refusing (or not reaching) the cluster left the relaunch's spec.json in the run dir, where the job
    still running there read it at its requeue: an unsent launch puts the files back, and a new run dir goes."""
    from ftctl.backend import get

    write_files(_prep(tmp_path))
    run = tmp_path / "run"
    before = {p.relative_to(run): p.read_text() for p in run.rglob("*") if p.is_file()}
    fakes = tmp_path / "bin"  # no sinfo on this PATH: the cluster is not asked; sbatch refuses
    fakes.mkdir()
    (fakes / "sbatch").write_text("#!/bin/sh\necho 'sbatch: error: invalid partition specified: a' >&2\nexit 1\n")
    (fakes / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fakes}:{Path(sys.executable).parent}")
    with pytest.raises(FtctlError, match="invalid partition"):
        get("slurm").submit(_prep(tmp_path, learning_rate=1e-5, partition="a"))
    assert {p.relative_to(run): p.read_text() for p in run.rglob("*") if p.is_file()} == before
    with pytest.raises(FtctlError, match="invalid partition"):
        get("slurm").submit(_prep(tmp_path, output_dir=str(tmp_path / "fresh" / "run")))
    assert not (tmp_path / "fresh").exists()  # with the parent the launch made for it
    # an answer that is no job id: sbatch may have taken the job, so what it reads stays
    (fakes / "sbatch").write_text("#!/bin/sh\necho 'Submitted batch job 42 on cluster main'\n")
    with pytest.raises(FtctlError, match="instead of a job id"):
        get("slurm").submit(_prep(tmp_path, learning_rate=1e-5, partition="a"))
    assert '"learning_rate": 1e-05' in (run / "spec.json").read_text()


def test_relaunch_with_other_training_settings_keeps_the_earlier_spec(tmp_path, capsys):
    """The trainer resumes the run's checkpoint under the new settings (checkpoints.settings); the launcher says what
    changed and keeps the spec.json it replaces."""
    write_files(_prep(tmp_path))
    before = (tmp_path / "run" / "spec.json").read_text()
    write_files(_prep(tmp_path, learning_rate=1e-5))
    kept = list((tmp_path / "run" / ".ftctl").glob("spec.*.json"))
    assert len(kept) == 1 and kept[0].read_text() == before
    assert (
        capsys.readouterr().err
        == f"relaunching {tmp_path / 'run'} with other learning_rate (its earlier spec.json: {kept[0]})\n"
    )
    assert '"learning_rate": 1e-05' in (tmp_path / "run" / "spec.json").read_text()


def test_a_launch_onto_a_full_disk_says_so_and_leaves_the_run_dir_as_it_was(small_disk):
    """A relaunch onto a full disk moved the earlier spec.json aside, then failed writing the new one: a traceback,
    an empty .spec.json.tmp and no spec.json in the run dir. Every file is written before any is replaced."""
    from tests.disk_fixtures import fill

    write_files(_prep(small_disk))
    run = small_disk / "run"
    before = {p.relative_to(run): p.read_text() for p in run.rglob("*") if p.is_file()}
    fill(small_disk)
    with pytest.raises(FtctlError, match=rf"^no space left on the disk of {run} \(0 bytes free\) to write the run's"):
        write_files(_prep(small_disk, learning_rate=1e-5))  # a relaunch with other settings
    assert {p.relative_to(run): p.read_text() for p in run.rglob("*") if p.is_file()} == before
    write_files(_prep(small_disk))  # the same launch again: its files are there already, nothing to write
    with pytest.raises(FtctlError, match="nothing in the run dir was changed"):
        write_files(_prep(small_disk, output_dir=str(small_disk / "new" / "run")))
    assert not (small_disk / "new").exists()


def test_a_stopped_run_whose_disk_cannot_hold_another_checkpoint_says_so(small_disk):
    """A run stopped of a full disk said only that the same launch resumes it, which failed again at its next save:
    status says it resumes once its disk has room, with the free space and what a checkpoint takes."""
    from ftctl.checkpoints import write_manifest
    from ftctl.local.backend import LocalBackend
    from tests.disk_fixtures import fill

    write_files(_prep(small_disk))
    run = small_disk / "run"
    ckpt = run / "checkpoint-2"
    ckpt.mkdir()
    (ckpt / "model.safetensors").write_bytes(b"w" * 10_000)
    write_manifest(str(ckpt), 2, 1, "digest")
    ref = JobRef("local", str(run), str(run), "r", str(run))
    # no launch lock (write_files alone): whichever of the two started it
    said = LocalBackend().status(ref).text
    assert said.endswith("(the same `ftctl launch` or `ftctl train` resumes it from checkpoint-2)")
    (run / ".ftctl-quarantine" / "checkpoint-4-1").mkdir(parents=True)  # a partial save that resume set aside
    (run / ".ftctl-quarantine" / "checkpoint-4-1" / "model.safetensors").write_bytes(b"w" * 8000)
    fill(small_disk)
    said = LocalBackend().status(ref).text
    assert said.endswith(
        "resumes it from checkpoint-2 once its disk has room for another checkpoint: 0 bytes free of the 10 KB one "
        f"takes; rm -r {run / '.ftctl-quarantine'} frees 8 KB (the partial ones set aside))"
    )


def test_a_relaunch_over_a_spec_json_cut_short_keeps_it_and_goes_on(tmp_path, capsys):
    """A spec.json cut short (a trainer killed or out of disk while rewriting it, before it wrote it whole) made every
    later launch into the run dir a JSONDecodeError traceback. It is kept aside, said, and the launch goes on."""
    write_files(_prep(tmp_path))
    spec = tmp_path / "run" / "spec.json"
    cut = spec.read_text()[:1000]
    spec.write_text(cut)
    write_files(_prep(tmp_path, learning_rate=1e-5))
    [kept] = (tmp_path / "run" / ".ftctl").glob("spec.*.json")
    assert kept.read_text() == cut and '"learning_rate": 1e-05' in spec.read_text()
    assert capsys.readouterr().err == (
        f"relaunching {tmp_path / 'run'}, whose spec.json could not be read (cut short?; kept as {kept}): the trainer "
        "compares the settings its checkpoints were saved with\n"
    )
    spec.write_bytes(b'{"spec": {"learning_rate": \xc3')  # cut in the middle of a character
    put_back = write_files(_prep(tmp_path, learning_rate=1e-5))
    assert '"learning_rate": 1e-05' in spec.read_text()
    put_back()  # a launch that was not sent: the earlier spec.json again, byte for byte
    assert spec.read_bytes() == b'{"spec": {"learning_rate": \xc3'


def test_relaunch_over_checkpoints_of_another_kind_of_run_is_refused(tmp_path):
    write_files(_prep(tmp_path))
    write_files(_prep(tmp_path, method="qlora"))  # nothing trained there yet: nothing to protect
    (tmp_path / "run" / "checkpoint-100").mkdir()
    before = (tmp_path / "run" / "spec.json").read_text()
    with pytest.raises(FtctlError) as e:
        write_files(_prep(tmp_path, method="lora", lora_r=8))
    assert str(e.value) == (
        f"{tmp_path / 'run'} holds checkpoints of a run with lora_r=16, method=qlora, which this one cannot continue: choose "
        "another --output, or delete that directory first if its run is not needed."
    )
    assert (tmp_path / "run" / "spec.json").read_text() == before  # the first run's spec is untouched


def test_a_relaunch_on_other_data_over_checkpoints_asks_for_the_checkpoint_by_name(tmp_path):
    """Every run of a method and model defaults to one output dir: a new experiment on other data would silently go
    on from the last one's adapter. Continuing on new data is said with resume=<checkpoint>; the schedule's length
    (max_steps) changes freely; a checkpoint without its manifest (a save that died) holds nothing to continue."""
    from ftctl.checkpoints import write_manifest
    from tests.s3_fixtures import make_checkpoint

    write_files(_prep(tmp_path))
    run = tmp_path / "run"
    make_checkpoint(run, 5)
    write_files(_prep(tmp_path, data_path="s3://b/other.json"))  # no manifest: not complete, nothing to continue
    write_manifest(str(run / "checkpoint-5"), 5, 1, "h")
    write_files(_prep(tmp_path, data_path="s3://b/other.json", max_steps=99))
    with pytest.raises(FtctlError) as e:
        write_files(_prep(tmp_path, data_path="s3://b/third.json"))
    assert str(e.value) == (
        f"{run} holds checkpoint-5 of a run trained on data_path=s3://b/other.json; this launch names other data. To go "
        f"on training that run on it: -o resume={run / 'checkpoint-5'}. For a new run: another --output."
    )
    write_files(_prep(tmp_path, data_path="s3://b/third.json", resume=str(run / "checkpoint-5")))
    assert '"data_path": "s3://b/third.json"' in (run / "spec.json").read_text()


def test_a_launch_into_the_run_of_a_job_still_queued_or_running_is_refused(tmp_path, monkeypatch):
    """Two jobs writing one run's checkpoints interleave them (a user saw 78 metrics rows for 40 steps); a finished
    job's directory is relaunched (it resumes), and a job whose backend cannot answer does not block."""
    from ftctl.backend import JobState, JobStatus, record_job, refuse_a_second_job
    from ftctl.docker.backend import DockerBackend

    monkeypatch.setenv("FTCTL_HOME", str(tmp_path / "home"))
    rendered = _prep(tmp_path)
    states = {}
    monkeypatch.setattr(DockerBackend, "status", lambda self, ref: states[ref.job_id])
    for job, run_dir in (("c1", rendered.run_dir), ("c2", tmp_path / "other")):
        record_job(JobRef("docker", job, str(run_dir), "n", str(run_dir)))
    states["c2"] = JobStatus(JobState.RUNNING, "c2 RUNNING (running)")  # another run's: not asked about
    for state in (JobState.SUCCEEDED, JobState.FAILED, JobState.PREEMPTED):
        states["c1"] = JobStatus(state, f"c1 {state.value}")
        refuse_a_second_job(rendered)
    states["c1"] = JobStatus(JobState.RUNNING, "c1 RUNNING (running)")
    with pytest.raises(FtctlError) as e:
        refuse_a_second_job(rendered)
    assert str(e.value) == (
        f"job c1 (docker: RUNNING (running)) is still training into {rendered.run_dir}; a second job there would write "
        "the same checkpoints. Wait for it, `ftctl cancel c1`, or choose another --output."
    )
    remote = _prep(tmp_path, output_dir="s3://b/runs/r1")  # an object-store output: the same URI is the same run
    record_job(JobRef("docker", "c3", str(tmp_path / "elsewhere"), "n", "s3://b/runs/r1"))
    states["c3"] = JobStatus(JobState.PENDING, "c3 PENDING (created)")
    with pytest.raises(FtctlError, match="job c3 ") as e:
        refuse_a_second_job(remote)
    assert "job c3 (docker: PENDING (created)) is queued to train into s3://b/runs/r1; " in str(e.value)  # not training


def test_a_spec_json_older_than_a_key_counts_it_at_its_default(tmp_path, capsys):
    """A run dir written before a training key existed (eval_split here) is the same run relaunched."""
    import json

    write_files(_prep(tmp_path))
    path = tmp_path / "run" / "spec.json"
    data = json.loads(path.read_text())
    del data["spec"]["eval_split"]
    path.write_text(json.dumps(data))
    write_files(_prep(tmp_path))
    assert capsys.readouterr().err == "" and not (tmp_path / "run" / ".ftctl").exists()
    write_files(_prep(tmp_path, eval_split=0.1))
    assert "with other eval_split (its earlier spec.json: " in capsys.readouterr().err
    # written when global_batch_size, save_steps and warmup_ratio held their defaults, not "not given" (None)
    data = json.loads(path.read_text())
    assert data["spec"]["global_batch_size"] is None
    data["spec"].update(global_batch_size=32, save_steps=100, warmup_ratio=0.03)
    path.write_text(json.dumps(data))
    write_files(_prep(tmp_path, eval_split=0.1))
    assert capsys.readouterr().err == ""


def test_progress_reads_the_last_step_and_held_out_loss_from_metrics(tmp_path):
    import json

    from ftctl.backend import JobRef, progress

    ref = JobRef("slurm", "42", str(tmp_path), "r", str(tmp_path))
    assert progress(ref) is None  # nothing logged yet
    rows = [
        {"step": 0, "event": "start"},
        {"step": 1, "loss": 2.5, "tokens_per_s": 1000.0},
        {"step": 2, "loss": 2.25, "tokens_per_s": 1234.4},
        {"step": 2, "event": "eval", "eval_loss": 2.4},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 3, "lo')
    assert progress(ref) == "step 2  loss 2.2500  1,234 tok/s; held-out loss 2.4000 at step 2"
    rows += [{"step": 4, "loss": 2.0}, {"step": 4, "event": "eval", "eval_loss": 2.5}]  # above step 2's
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert progress(ref) == "step 4  loss 2.0000; held-out loss 2.5000 at step 4 (lowest 2.4000 at step 2)"


def test_an_earlier_jobs_status_points_at_the_later_job_of_its_run_dir(tmp_path, monkeypatch):
    """`ftctl status 1` of a job relaunched into the same output as job 7 showed job 7's last step."""
    import json

    from ftctl.backend import JobRef, JobState, JobStatus, record_job, status_lines
    from ftctl.docker.backend import DockerBackend

    monkeypatch.setenv("FTCTL_HOME", str(tmp_path))
    for job in ("c1", "c7"):
        record_job(JobRef("docker", job, str(tmp_path / "run"), "n", str(tmp_path / "run")))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text(json.dumps({"step": 8, "loss": 1.5}) + "\n")
    monkeypatch.setattr(DockerBackend, "status", lambda self, ref: JobStatus(JobState.SUCCEEDED, f"{ref.job_id} done"))
    assert status_lines("c7") == ["c7 done", "step 8  loss 1.5000"]
    assert status_lines("c1") == ["c1 done", f"(job c7 was launched into {tmp_path / 'run'} since: ftctl status c7)"]
    for job, output in (("s1", "s3://b/r1"), ("s2", "s3://b/r2")):  # one run dir, two outputs: two runs
        record_job(JobRef("docker", job, str(tmp_path / "store-run"), "n", output))
    assert status_lines("s1") == ["s1 done"]
    # the same run into object storage relaunched: the earlier job's line (a cancel's "the same launch resumes it")
    # was all its status said, after the later job had resumed it, even finished it (explore11)
    record_job(JobRef("docker", "s3", str(tmp_path / "store-run"), "n", "s3://b/r1"))
    assert status_lines("s1") == ["s1 done", "(job s3 was launched into s3://b/r1 since: ftctl status s3)"]


def test_a_local_runs_directory_stands_for_its_job(tmp_path, monkeypatch):
    """A local run an older ftctl trained recorded no job (nor a log): status and logs take its directory (how far it got,
    finished once its final adapter is there), cancel says how to stop it; a directory that is no run is no job."""
    import json

    from click.testing import CliRunner

    from ftctl.cli import main

    monkeypatch.setenv("FTCTL_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    (run / "spec.json").write_text("{}")
    (run / "metrics.jsonl").write_text(json.dumps({"step": 3, "loss": 2.5}) + "\n")

    def cli(*args):
        return CliRunner().invoke(main, list(args))

    status = cli("status", "--exit-code", "runs/r1")
    assert status.exit_code == 3, status.output  # stopped before its end: the same launch resumes it
    assert status.stdout.startswith(
        "runs/r1 local run, stopped before the end (the same `ftctl launch` or `ftctl train` resumes it)"
    )
    assert status.stdout.endswith("\nstep 3  loss 2.5000\n")
    # a trainer holds the run's lock (trainer/run.only_trainer): training now, and by whom
    import fcntl

    from ftctl import failures
    from ftctl.runpaths import RunPaths

    paths = RunPaths(run)
    paths.train_lock.parent.mkdir(parents=True)
    with open(paths.train_lock, "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write("pid 7 on here since 2026-12-02 10:00:00\n")
        held.flush()
        training = cli("status", "runs/r1")
        assert training.exit_code == 0 and training.stdout.startswith(
            "runs/r1 local run, training (pid 7 on here since 2026-12-02 10:00:00)\n"
        )
        assert training.stdout.endswith("\nstep 3  loss 2.5000\nno checkpoint saved yet\n")
    # it failed on its data: the trainer's status word and record say so, and a relaunch would not help
    paths.status_file.write_text("failed\n")
    failures.record("config", "No data at x.json: give a .json file", str(paths.failures))
    failed = cli("status", "--exit-code", "runs/r1")
    assert (
        failed.stdout.startswith("runs/r1 local run, failed\nerror: rank 0 on ")
        and "No data at x.json" in failed.stdout
    )
    assert failed.exit_code == 1  # before: 0, as for a run that trains
    failures.record("interrupted", "stopped by Ctrl-C", str(paths.failures))  # rank 0's record, now an interruption
    assert "stopped before the end" in cli("status", "runs/r1").stdout
    paths.status_file.write_text("complete\n")  # an object-store output's final model is in the store, not here
    complete = cli("status", "runs/r1")
    assert complete.stdout.startswith("runs/r1 local run, complete\n") and complete.exit_code == 0
    paths.status_file.unlink()
    logs = cli("logs", "runs/r1")
    assert (
        logs.exit_code == 0 and "each logged step is a line of runs/r1/metrics.jsonl, the last: step 3" in logs.stdout
    )
    cancel = cli("cancel", "runs/r1")
    assert cancel.exit_code == 2 and "is a local run that is not training now: nothing to cancel" in cancel.output
    (run / "adapter_config.json").write_text("{}")
    complete = cli("status", "runs/r1")
    assert complete.stdout.startswith("runs/r1 local run, complete\n") and complete.exit_code == 0
    other = cli("status", "runs")
    assert other.exit_code == 2 and "No job 'runs' was launched from here" in other.output
    assert "and each run it trains here" in cli("jobs").stdout  # a directory an older ftctl trained: not recorded
    # a directory a Slurm (or docker, SkyPilot) job was launched into stands for that job, the newest one
    from ftctl.backend import find_job, record_job

    for job in ("41", "42"):
        record_job(JobRef("slurm", job, str(run), "r1", str(run)))
    assert find_job("runs/r1")[1].job_id == "42" and find_job(str(run))[1].backend == "slurm"
    assert find_job(f"file://{run}")[1].job_id == "42"  # a file:// URI is the directory it names


def test_a_file_uri_output_is_the_local_directory_it_names(tmp_path):
    """`--output file:///a/b` wrote the run to ./file:/a/b (the trainer stripped the scheme, the launcher did not):
    status and sync disagreed, and the docker render refused the ':' in its volume."""
    from ftctl.backend import run_dir_for

    spec = build(None, {"output_dir": f"file://{tmp_path}/r 1", "backend": "local", "gpus": "cpu"})
    assert spec.output == f"{tmp_path}/r 1" and run_dir_for(spec) == tmp_path / "r 1"


# ------------------------------------------------------------------------------------------ one owner per fact
def test_jobs_lists_each_job_once_newest_first_with_its_state_now(tmp_path, monkeypatch):
    """`ftctl jobs`: the newest record of a job wins, a line cut short by a crash is skipped, a backend that cannot
    say is one word and its reason, never a traceback."""
    import json
    import time

    from click.testing import CliRunner

    from ftctl.backend import JobState, JobStatus
    from ftctl.cli import main
    from ftctl.docker.backend import DockerBackend

    monkeypatch.setenv("FTCTL_HOME", str(tmp_path))
    empty = CliRunner().invoke(main, ["jobs"])
    assert empty.exit_code == 0 and empty.stdout.startswith("No jobs launched from here yet")

    def rec(job, name, t, backend="docker"):
        return json.dumps(
            dict(backend=backend, job_id=job, run_dir=str(tmp_path / name), name="n", output=name, time=t)
        )

    lines = [rec("7", "fg", 100, "local"), rec("c1", "old-name", 200), rec("c2", "other", 300), rec("c1", "first", 400)]
    (tmp_path / "fg").mkdir()  # the local run's directory (one that is gone is said so: test_explore33)
    (tmp_path / "jobs.jsonl").write_text("\n".join(lines) + '\n{"backend": "dock')
    states = {"c1": "c1 RUNNING (running)", "c2": "c2 SUCCEEDED exit 0"}
    monkeypatch.setattr(DockerBackend, "status", lambda self, ref: JobStatus(JobState.RUNNING, states[ref.job_id]))
    out = CliRunner().invoke(main, ["jobs"])
    assert out.exit_code == 0, out.output
    rows = [line.split() for line in out.stdout.splitlines()]
    assert rows[0] == ["JOB", "BACKEND", "OUTPUT", "LAUNCHED", "STATE"]
    assert [r[:3] for r in rows[1:]] == [["c1", "docker", "first"], ["c2", "docker", "other"], ["7", "local", "fg"]]
    assert rows[1][3:6] == time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(400)).split()  # its zone named
    assert rows[1][6:] == ["RUNNING", "(running)"] and rows[2][6:] == ["SUCCEEDED", "exit", "0"]
    assert " ".join(rows[3][6:]).startswith("local run, stopped before the end")  # a local run: its directory says
    newest = CliRunner().invoke(main, ["jobs", "-n", "1"]).stdout.splitlines()
    assert len(newest) == 3 and newest[-1] == "(the newest 1 of 3 jobs: `ftctl jobs -n 3` lists them all)"

    def unreachable(self, ref):
        raise FtctlError("squeue could not reach the Slurm controller (...): point SLURM_CONF at ...")

    monkeypatch.setattr(DockerBackend, "status", unreachable)  # one reason for every job: said once
    out = CliRunner().invoke(main, ["jobs"]).stdout.splitlines()
    assert [line.split()[-3:] for line in out[1:3]] == [["unknown", "(1", "below)"]] * 2
    assert out[-1] == "(1) squeue could not reach the Slurm controller (...): point SLURM_CONF at ..."


def test_several_datasets_reach_every_backend_each_checked_and_bound(tmp_path, monkeypatch):
    """--data twice: each path absolute in spec.json, each mounted into the docker container and bound on Slurm,
    each checked by the preflight under its flag; SkyPilot refuses the local one by name."""
    from click.testing import CliRunner

    from ftctl import preflight
    from ftctl.cli import main
    from ftctl.plan import make_plan

    monkeypatch.chdir(tmp_path)
    for name in ("a.jsonl", "b.jsonl"):
        (tmp_path / name).write_text('{"text": "x"}\n')
    small = "HuggingFaceTB/SmolLM2-135M-Instruct"
    rendered = _prep(tmp_path, data_path=["a.jsonl", "b.jsonl"], backend="docker", gpus="cpu", model_name_or_path=small)
    assert rendered.spec.data_path == f"{tmp_path / 'a.jsonl'},{tmp_path / 'b.jsonl'}"
    assert f"{tmp_path / 'a.jsonl'}:{tmp_path / 'a.jsonl'}" in rendered.text
    assert f"{tmp_path / 'b.jsonl'}:{tmp_path / 'b.jsonl'}" in rendered.text
    slurm = _prep(tmp_path, data_path=["a.jsonl", "b.jsonl"], container="apptainer:x.sif")
    assert str(tmp_path) in slurm.text  # the data's directory bound into the container
    spec = build(dict(data_path=["a.jsonl", "missing.jsonl"], eval_data_path="gone.json", gpus="1xA100"))
    found = [f.text for f in preflight.preflight(spec, make_plan(spec), "slurm") if "No data" in f.text]
    assert [t.split(":")[0] for t in found] == ["--data", "--eval-data"] and "missing.jsonl" in found[0]
    flags = ["render", "--backend", "sky", "--gpus", "1xA100", "--data", "s3://b/x.jsonl", "--data", "a.jsonl"]
    shipped = CliRunner().invoke(main, [*flags, "--output", "s3://b/o"])  # a local dataset ships with the task
    assert shipped.exit_code == 0 and f": {(tmp_path / 'a.jsonl').resolve()}\n" in shipped.output
    refused = CliRunner().invoke(main, [*flags[:-1], "missing.jsonl", "--output", "s3://b/o"])
    assert refused.exit_code == 2 and "--data 'missing.jsonl' is a local path that is no file" in refused.output


def test_s3a_output_is_remote_on_every_backend(tmp_path, monkeypatch):
    """Regression: two is_remote functions disagreed; s3a:// became a local path under the cwd."""
    monkeypatch.chdir(tmp_path)
    r = _prep(tmp_path, output_dir="s3a://bucket/run", run_name="r1")
    assert r.spec.output == "s3a://bucket/run"
    assert r.paths.root == (tmp_path / "runs" / "r1").resolve()


def test_unknown_uri_scheme_is_refused_at_launch(tmp_path):
    """Regression: r2:// was accepted at launch and refused by the trainer on the cluster."""
    with pytest.raises(FtctlError, match="r2://.*s3://"):
        _prep(tmp_path, output_dir="r2://bucket/run")
    with pytest.raises(FtctlError, match="gcs://"):
        _prep(tmp_path, data_path="gcsx://b/x")
    assert _prep(tmp_path, data_path="hf://datasets/o/n/d.jsonl").spec.data_path == "hf://datasets/o/n/d.jsonl"
    with pytest.raises(FtctlError, match="the Hugging Face Hub is read here"):  # a known scheme, read only
        _prep(tmp_path, output_dir="hf://datasets/o/n")


@pytest.mark.parametrize(
    "backend, flags, refused",
    [
        ("slurm", {"spot": True}, "spot (sky)"),
        ("sky", {"partition": "gpu"}, "partition (slurm)"),
        ("docker", {"account": "lab", "time": "1:00:00"}, "account (slurm), time (slurm)"),
        ("local", {"container": "docker:img"}, "container"),
    ],
)
def test_options_of_another_backend_are_refused_with_the_accepted_list(tmp_path, backend, flags, refused):
    extra = {"data_path": "s3://b/d.json", "output_dir": "s3://b/o"} if backend == "sky" else {}
    with pytest.raises(FtctlError) as e:
        _prep(tmp_path, backend=backend, gpus="1xA100", **extra, **flags)
    msg = str(e.value)
    assert f"--backend {backend} does not take {refused}" in msg and f"{backend} accepts:" in msg


def test_options_of_a_backend_not_named_say_to_name_it(tmp_path, monkeypatch):
    """--time without --backend went to this machine and was answered "--backend local does not take time", a
    backend the user never named."""
    monkeypatch.setenv("FTCTL_BACKEND", "local")  # what the user's config may say: not named on the command line
    with pytest.raises(FtctlError) as e:
        _prep(tmp_path, backend=None, gpus=None, time="1:00:00", partition="gpu")
    assert str(e.value).startswith(
        "partition, time are options of --backend slurm, and no --backend was given, so this run goes to local "
        "(FTCTL_BACKEND): add --backend slurm, or remove them."
    )


def test_every_slurm_state_maps_onto_one_job_state():
    from ftctl.backend import JobState
    from ftctl.slurm.backend import SLURM_STATES
    from ftctl.slurm.scheduler import FINISHED_STATES

    assert FINISHED_STATES <= set(SLURM_STATES)
    assert all(
        SLURM_STATES[s] in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.PREEMPTED)
        for s in FINISHED_STATES
    )


def test_one_upload_wait_default():
    from ftctl.spec import RunSpec
    from ftctl.trainer.sync_callback import CheckpointSyncCallback

    assert CheckpointSyncCallback().upload_wait_s == RunSpec.upload_wait_s


def test_no_module_imports_upward():
    """Layers (DESIGN.md): cli and backends -> launch -> plan, preflight and trainer -> spec -> storage, gpus,
    other tools' vocabulary and dataset entries, secret checks -> errors. A lower module never imports a higher one; no
    two modules import each other."""
    import ast
    from pathlib import Path

    import ftctl

    root = Path(ftctl.__file__).parent
    level = {
        "errors": 0,
        "envvars": 0,
        "quiet": 0,
        "terminal": 0,  # what reaches a terminal: printable values, writes after a hang-up
        "storage": 1,
        "gpus": 1,
        "runpaths": 1,
        "hub": 1,
        "failures": 1,
        "demo": 1,
        "tool_vocabulary": 1,  # other tools' keys, read by spec.build (hub)
        "tool_datasets": 1,  # axolotl's and LLaMA-Factory's dataset entries (tool_vocabulary, storage, hub)
        "secret_checks": 1,  # credentials in user values, asked by spec.build and validate (storage)
        "spec": 2,
        "lease": 2,  # storage, runpaths
        "plan": 3,
        "checkpoints": 3,
        "preflight": 3,
        "trainer": 3,
        "progress": 3,  # a run's records read back (runpaths, checkpoints, storage); its durations said by the trainer too
        "launch": 4,
    }
    top = 5  # backend, cli, local, slurm, sky, docker
    edges, problems = set(), []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).with_suffix("")
        me = ".".join(rel.parts)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ftctl."):
                deps = [node.module]
            elif isinstance(node, ast.Import):
                deps = [a.name for a in node.names if a.name.startswith("ftctl.")]
            else:
                continue
            for dep in deps:
                dep = dep[len("ftctl.") :]
                edges.add((me, dep))
                mine, theirs = level.get(rel.parts[0], top), level.get(dep.split(".")[0], top)
                if theirs > mine:
                    problems.append(f"{me} imports {dep}")
    problems += [f"{a} and {b} import each other" for a, b in edges if (b, a) in edges and a < b]
    assert not problems


def test_runs_into_other_object_store_outputs_have_run_directories_of_their_own(tmp_path, monkeypatch):
    """A sweep from one directory, each point into its own s3:// output: every such run shared runs/<name>, so the
    second was refused ("choose another --output", given already) or taken for a relaunch of the first; and
    `ftctl status s3://...` of a local run found nothing."""
    from ftctl.backend import find_job, run_dir_for

    monkeypatch.chdir(tmp_path)
    one, two = (build(None, {"output_dir": f"s3://b/sweep/lr{i}", "backend": "local", "gpus": "cpu"}) for i in (1, 2))
    assert run_dir_for(one) != run_dir_for(two) and run_dir_for(one).parent == tmp_path / "runs"
    assert run_dir_for(one).name.startswith(f"{one.name}-") and run_dir_for(one) == run_dir_for(one)
    named = build(None, {"output_dir": "s3://b/sweep/lr3", "run_name": "lr3", "gpus": "cpu"})
    assert run_dir_for(named) == tmp_path / "runs" / "lr3"  # a run's own name is its directory's
    run_dir_for(two).mkdir(parents=True)
    (run_dir_for(two) / "spec.json").write_text(json.dumps({"spec": {"output_dir": "s3://b/sweep/lr2"}}))
    assert Path(find_job("s3://b/sweep/lr2/")[1].run_dir).resolve() == run_dir_for(two)
    with pytest.raises(FtctlError, match="No job 's3://b/sweep/lr1' was launched from here"):
        find_job("s3://b/sweep/lr1")


def test_a_cancelled_jobs_run_finished_since_is_not_said_to_resume(tmp_path, s3_bucket, monkeypatch):
    """explore11 F10: after a later job finished the run, the cancelled job's status still said "the same `ftctl
    launch` resumes it from checkpoint-60", a launch the preflight refuses ("holds this run trained to step 60 of 60").
    Its newest checkpoint trained every step and the final model is saved: the refusal's line is said instead, for a
    local output and one in object storage. A checkpoint short of the end, or without the final model, resumes."""
    from ftctl.backend import resumes_from
    from ftctl.checkpoints import upload_checkpoint, write_manifest
    from ftctl.slurm.backend import goes_on
    from ftctl.storage import put_file
    from tests.s3_fixtures import make_checkpoint

    def checkpoint(where: Path, step: int) -> Path:
        ckpt = make_checkpoint(where, step, {"trainer_state.json": json.dumps({"global_step": step}).encode()})
        write_manifest(str(ckpt), step, world_size=1, spec_hash="h")
        return ckpt

    run = tmp_path / "run"
    ref = JobRef("slurm", "7", str(run), "n", str(run))
    write_files(_prep(tmp_path, backend="slurm", output_dir=str(run), max_steps=4))
    checkpoint(run, 4)
    assert resumes_from(ref) == "resumes it from checkpoint-4"  # stopped before its final model
    (run / "adapter_config.json").write_text("{}")
    finished = f"{run} holds this run trained to step 4 of 4 (checkpoint-4): nothing is left to train"
    assert resumes_from(ref).startswith(f"is refused: {finished}")

    out, staged = f"{s3_bucket}/r1", tmp_path / "staged"
    monkeypatch.chdir(tmp_path)  # the run dir of an object-store output: runs/<run_name> here
    store_run = tmp_path / "runs" / "store-run"
    ref = JobRef("slurm", "8", str(store_run), "n", out)
    write_files(_prep(tmp_path, backend="slurm", output_dir=out, max_steps=4, run_name="store-run"))
    upload_checkpoint(str(checkpoint(staged, 3)), f"{out}/checkpoint-3")
    assert goes_on(ref) == f": the same `ftctl launch` resumes it from checkpoint-3 in {out}"
    upload_checkpoint(str(checkpoint(staged, 4)), f"{out}/checkpoint-4")
    (staged / "adapter_config.json").write_text("{}")
    put_file(str(staged / "adapter_config.json"), f"{out}/adapter_config.json")
    assert goes_on(ref).startswith(
        f": the same `ftctl launch` is refused: {out} holds this run trained to step 4 of 4 (checkpoint-4): nothing is "
        "left to train"
    )
