"""Two runs at once on one machine (explore28): a sweep firing launches into one run, `ftctl train` into a run that
trains, launches recording their jobs together, runs into sibling object-store prefixes."""

from __future__ import annotations

import json
import threading

import pytest

from ftctl.backend import JobRef, _jobs_file, launch, record_job, recorded_jobs, write_files
from ftctl.errors import FtctlError
from tests.render_fixtures import make_spec, prepared


def _flags(tiny_model_dir, tiny_data, out, lr: float) -> tuple[list[str], dict]:
    flags = dict(backend="local", gpus="cpu", model_name_or_path=str(tiny_model_dir), data_path=str(tiny_data))
    return [f"learning_rate={lr}", "max_steps=2"], {**flags, "output_dir": str(out)}


def _rendered(tiny_model_dir, tiny_data, out, lr: float):
    overrides, flags = _flags(tiny_model_dir, tiny_data, out, lr)
    return prepared(overrides, **flags)


def test_a_sweep_launching_into_one_run_at_once_trains_one_with_its_own_settings(
    tmp_path, monkeypatch, capsys, tiny_model_dir, tiny_data
):
    """`for lr in ...; do ftctl launch ... -o learning_rate=$lr & done` without --output: four launches into one
    run directory (runs/<name>). Each passed its checks before any trainer held the run's lock; each replaced
    spec.json, so the one trainer that won trained with another launch's learning rate (its terminal said nothing),
    and the others left their refusals in its records. The first launch holds the run until its run ends; the
    others are refused at once, naming it, and write nothing."""
    from ftctl.local.backend import LocalBackend

    out = tmp_path / "runs" / "sweep"
    launches = [_rendered(tiny_model_dir, tiny_data, out, lr) for lr in (1e-4, 2e-4, 3e-4, 4e-4)]
    training, done = threading.Event(), threading.Event()
    trained_with = []

    def send(self, rendered):  # the foreground run: its trainer reads spec.json once it has started
        if not training.is_set():
            training.set()
            done.wait(30)
        trained_with.append(json.loads(rendered.paths.spec.read_text())["spec"]["learning_rate"])

    monkeypatch.setattr(LocalBackend, "send", send)
    first = threading.Thread(target=LocalBackend().submit, args=(launches[0],))
    first.start()
    try:
        assert training.wait(30)
        for rendered in launches[1:]:
            with pytest.raises(FtctlError) as refused:
                LocalBackend().submit(rendered)
            said = str(refused.value)
            assert said.startswith(f"{out} is being launched into by `ftctl launch` (pid "), said
            assert said.endswith("or give this run another --output."), said  # --output given: not run_name
        overrides, flags = _flags(tiny_model_dir, tiny_data, out, 5e-4)
        with pytest.raises(FtctlError, match="the launch would stop at the 1 error"):  # a dry run says so too
            launch(make_spec(overrides, **flags), dry_run=True)
        assert f"{out} is being launched into by `ftctl launch` (pid " in capsys.readouterr().err
    finally:
        done.set()
        first.join(30)
    assert trained_with == [1e-4]  # the first launch's own settings
    assert json.loads((out / "spec.json").read_text())["spec"]["learning_rate"] == 1e-4
    assert not list((out / ".ftctl").glob("spec.*.json"))  # no relaunch moved it aside
    LocalBackend().submit(launches[1])  # once it ended, the next launch goes ahead
    assert trained_with == [1e-4, 2e-4]


def test_launches_into_one_store_output_under_other_run_names_are_kept_apart(
    tmp_path, monkeypatch, tiny_model_dir, tiny_data
):
    """Two launches into s3://b/run from one working directory with other run names (two run directories here):
    one output, one run; s3://b/run-2, a sibling prefix, is another."""
    from ftctl.backend import launching

    monkeypatch.chdir(tmp_path)

    def launch(output: str, run_name: str):
        return prepared(
            [f"run_name={run_name}"],
            backend="local",
            gpus="cpu",
            model_name_or_path=str(tiny_model_dir),
            data_path=str(tiny_data),
            output_dir=output,
        )

    first, second, sibling = launch("s3://b/run", "a"), launch("s3://b/run", "b"), launch("s3://b/run-2", "c")
    assert first.run_dir != second.run_dir
    with launching(first):
        with pytest.raises(FtctlError, match="^s3://b/run is being launched into by `ftctl launch` "):
            with launching(second):
                pass
        with launching(sibling):
            pass


def test_builds_recorded_at_once_are_all_kept():
    """Two `ftctl build`s ending at once (an image for each cluster, in two terminals) each read the user's config
    before the other wrote it: the second's write lost the first's record (6 at once kept 1)."""
    from ftctl import userconfig

    builds = [
        threading.Thread(target=userconfig.record, args=(f"ghcr.io/o/ftctl:t{i}", "pushed", "A100")) for i in range(6)
    ]
    for t in builds:
        t.start()
    for t in builds:
        t.join()
    assert sorted(b.image for b in userconfig.load().built) == [f"ghcr.io/o/ftctl:t{i}" for i in range(6)]


def test_ftctl_train_into_a_run_that_trains_leaves_its_spec_json_alone(tmp_path, tiny_model_dir, tiny_data):
    """`ftctl train` (no backend check) into a run another terminal trains: it replaced that run's spec.json (the
    settings its resume reads) before its own trainer was refused by the run's lock."""
    from click.testing import CliRunner

    from ftctl.cli import main
    from ftctl.trainer.run import only_trainer

    out = tmp_path / "run"
    running = _rendered(tiny_model_dir, tiny_data, out, 1e-4)
    write_files(running)
    before = running.paths.spec.read_text()
    args = ["train", "--gpus", "cpu", "--model", str(tiny_model_dir), "--data", str(tiny_data), "--output", str(out)]
    with only_trainer(str(out)):  # its trainer holds the run
        result = CliRunner().invoke(
            main, [*args, "-o", "learning_rate=0.00002", "-o", "max_steps=2", "--method", "lora"]
        )
    assert result.exit_code != 0 and f"{out} is being trained into by pid " in result.output, result.output
    assert "Traceback" not in result.output
    assert running.paths.spec.read_text() == before and not list((out / ".ftctl").glob("spec.*.json"))


def test_a_job_recorded_after_a_line_cut_short_is_still_listed():
    """A launch killed (or a full disk) mid-write leaves a line without its newline: the next launch's record was
    appended to it, unreadable with it, and `ftctl status JOB` of that job said no such job was launched here."""
    record_job(JobRef("slurm", "41", "/r/a", "a", "/r/a"))
    jobs = _jobs_file()
    jobs.write_text(jobs.read_text() + jobs.read_text()[:30])  # cut short
    record_job(JobRef("slurm", "42", "/r/b", "b", "/r/b"))
    assert [ref.job_id for ref, _ in recorded_jobs()] == ["42", "41"]


def test_runs_into_sibling_prefixes_see_only_their_own(s3_bucket):
    """s3://b/run and s3://b/run-2 (a sweep's outputs): a listing by prefix alone would give run the other's
    checkpoints, lease and final model. Each sees its own."""
    from ftctl import lease, storage
    from ftctl.checkpoints import list_checkpoints
    from ftctl.checkpoints.settings import final_saved

    run, other = f"{s3_bucket}/run", f"{s3_bucket}/run-2"
    for rel in ("checkpoint-7/model.safetensors", "checkpoint-7/ftctl-manifest.json", "adapter_config.json"):
        storage.put_if(storage.join(other, rel), b"{}")
    holder = lease.Holder(other, None, "run-2")
    holder.take()
    try:
        assert lease.refusal(other) and lease.refusal(run) is None
        assert list_checkpoints(run) == [] and [c.step for c in list_checkpoints(other)] == [7]
        assert not final_saved(run) and storage.file_sizes(run) == {}
    finally:
        holder.close()
