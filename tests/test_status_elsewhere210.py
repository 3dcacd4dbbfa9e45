"""`ftctl status` of a run into object storage that moved between machines (explore39): stopped on one machine, then
trained on, or finished, by a job launched from another (another machine or FTCTL_HOME). The store says which: a live
lease (its trainer trains it now), or its final model beside a newest checkpoint that trained every step. Before,
the machine where it had stopped said "stopped before the end" (exit 3) of a run training or complete elsewhere, and
its stale steps; a machine that launched no job into it said UNKNOWN (exit 4) of a run its lease showed training."""

from __future__ import annotations

import dataclasses
import json

from ftctl.backend import JobRef, record_job, status_report
from ftctl.checkpoints.settings import TRAINER_STATE
from ftctl.spec import RunSpec
from ftctl.storage import join, put_file, rm
from tests.s3_fixtures import make_checkpoint


def _push_checkpoint(tmp_path, output: str, step: int, max_steps: int) -> None:
    """checkpoint-<step> committed to ``output``: its trainer_state at ``step`` of ``max_steps``, its metrics copy."""
    from ftctl.checkpoints import push, write_manifest

    stage = tmp_path / f"stage-{step}"
    ckpt = make_checkpoint(stage, step)
    (ckpt / TRAINER_STATE).write_text(json.dumps({"global_step": step, "max_steps": max_steps}))
    row = {"step": step, "loss": 1.5, "time": 1000.0 + step, "max_steps": max_steps}
    (ckpt / "ftctl-metrics.jsonl").write_text(json.dumps(row) + "\n")
    write_manifest(str(ckpt), step, 1, "h")
    push(str(stage), output, echo=lambda *_: None)


def _put(tmp_path, uri: str, text: str) -> None:
    local = tmp_path / "put.tmp"
    local.write_text(text)
    put_file(str(local), uri)


def test_a_run_stopped_here_and_trained_or_finished_elsewhere_says_so(s3_bucket, tmp_path, monkeypatch):
    from ftctl.lease import uri_of

    output = f"{s3_bucket}/run"
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    spec = RunSpec(output_dir=output, max_steps=3)
    (run / "spec.json").write_text(json.dumps({"spec": spec.to_dict()}))
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 2.0, "time": 1000.0, "max_steps": 3}) + "\n")
    record_job(JobRef("local", str(run), str(run), "r", output))
    _push_checkpoint(tmp_path, output, 2, 3)

    lines, code = status_report(str(run))  # stopped here, nothing since: the same launch resumes it
    assert code == 3 and "stopped before the end" in lines[0], lines
    assert lines[0].endswith(f"resumes it from checkpoint-2 in {output})"), lines

    # another machine's trainer holds the store's lease now: training (exit 0), with the store's step, not step 1 here
    _put(tmp_path, uri_of(output), json.dumps({"holder": "process 999", "host": "m2", "run": "r", "renewed_unix": 0}))
    lines, code = status_report(str(run))
    assert code == 0, lines
    assert lines[0] == (
        f"{run} local run, stopped here; went on elsewhere, training: {output} is being trained into by process 999 "
        "(run r, renewed 0 s ago), a job launched from another machine or FTCTL_HOME (`ftctl status JOB` there says "
        "more)"
    )
    assert lines[1].startswith("step 2/3 (66%)  loss 1.5000") and len(lines) == 2, lines
    monkeypatch.setenv("FTCTL_HOME", str(tmp_path / "another-home"))  # no job into it launched from there
    lines, code = status_report(output)
    assert code == 0 and lines[0].startswith(f"{output} RUNNING, training: {output} is being trained into by"), lines
    assert lines[1].startswith("step 2/3 (66%)"), lines

    # that job finished it: its last checkpoint and its final adapter in the store, the lease let go
    rm(uri_of(output))
    _push_checkpoint(tmp_path, output, 3, 3)
    _put(tmp_path, join(output, "adapter_config.json"), "{}")
    lines, code = status_report(output)
    assert code == 0 and lines[0].startswith(
        f"{output} SUCCEEDED, complete: {output} holds its final model, trained to step 3 of 3"
    ), lines
    monkeypatch.setenv("FTCTL_HOME", str(tmp_path / "home-of-the-job"))
    record_job(JobRef("local", str(run), str(run), "r", output))
    lines, code = status_report(str(run))
    assert code == 0 and lines[0] == (
        f"{run} local run, stopped here; went on elsewhere, complete: {output} holds its final model, trained to step "
        "3 of 3"
    ), lines
    assert lines[1].startswith("step 3/3 (100%)"), lines

    # a run asked for more steps than that job trained is not complete: the same launch goes on (exit 3)
    (run / "spec.json").write_text(json.dumps({"spec": dataclasses.replace(spec, max_steps=5).to_dict()}))
    lines, code = status_report(str(run))
    assert code == 3 and "stopped before the end" in lines[0], lines


def test_status_without_a_job_names_what_it_takes_and_ftctl_jobs():
    """Before: click's `Error: Missing argument 'JOB'.` alone, on a machine where the user knows no job id."""
    from click.testing import CliRunner

    from ftctl.cli import main

    said = CliRunner().invoke(main, ["status"])
    assert said.exit_code == 2, said.output
    assert "status [OPTIONS] JOB\n" in said.output  # JOB still shown as needed
    assert "its object-store output (s3://bucket/run, from any machine). `ftctl jobs` lists the jobs" in said.output


def test_resume_of_a_checkpoint_its_store_no_longer_holds_is_refused_naming_those_it_holds(s3_bucket, tmp_path):
    """resume=s3://.../checkpoint-10 that save_total_limit had deleted: before, refused as "goes back to step 10 ...
    move them out of it (or delete them)" (which led to a job resuming from nothing there), or, with no later one,
    not checked before the job started."""
    from ftctl.preflight import check_resume

    output = f"{s3_bucket}/run"
    _push_checkpoint(tmp_path, output, 20, 30)
    for gone in ("checkpoint-10", "checkpoint-99"):
        said = check_resume(RunSpec(output_dir=output, resume=f"{output}/{gone}"), None)
        assert [f.what for f in said] == [
            f"resume={output}/{gone}: {output} holds no complete {gone} (save_total_limit deletes the older ones; "
            f"`ftctl sync ls {output}` lists them); it holds checkpoint-20: resume=auto goes on from checkpoint-20."
        ]
