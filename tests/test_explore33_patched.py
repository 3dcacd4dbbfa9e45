"""explore33 (task 141), the fixes in files helper 141 does not own (task-141-extra.patch): the trainer registers
trainer/diverged.py's StopWhenDiverged, `ftctl jobs` says how many older jobs it left out, the refusal of a run a
trainer holds names `ftctl cancel`, and s3fs's "Found credentials" INFO line is quiet."""

from __future__ import annotations

import json
import logging
import shutil

import datasets
import pytest

from ftctl.errors import FtctlError
from tests.trainer_fixtures import make_run


def test_the_trainer_stops_at_a_nan_loss_by_itself(tiny_model_dir, tiny_data, tmp_path):
    """A base whose weights give NaN (an inf in one weight) trained to its end and said `complete` before."""
    import torch
    from transformers import AutoModelForCausalLM

    from ftctl.trainer.run import train

    base = tmp_path / "base"
    shutil.copytree(tiny_model_dir, base)
    model = AutoModelForCausalLM.from_pretrained(base)
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[0, 0] = float("inf")
    model.save_pretrained(base)
    torch.set_num_threads(1)
    spec, plan = make_run(base, tiny_data, tmp_path / "out", "lora", lora_r=4, max_steps=4, save_steps=2)
    with pytest.raises(FtctlError, match=rf"the loss is nan at step 1, before any update: .*`ftctl eval {base} --data"):
        train(spec, plan, echo=lambda line: None)
    assert not (tmp_path / "out" / "checkpoint-2").exists()


def test_jobs_says_how_many_older_jobs_it_left_out(tmp_path, monkeypatch):
    """`ftctl jobs` shows the newest 20: a sweep's 30 runs lost their oldest 10 without a word."""
    from ftctl.backend import jobs_table

    monkeypatch.setenv("FTCTL_HOME", str(tmp_path))
    lines = []
    for i in range(3):
        run = tmp_path / f"r{i}"
        run.mkdir()
        lines.append(json.dumps(dict(backend="local", job_id=f"j{i}", run_dir=str(run), name="n", output=str(run))))
    (tmp_path / "jobs.jsonl").write_text("\n".join(lines) + "\n")
    assert jobs_table(2).splitlines()[-1] == "(the newest 2 of 3 jobs: `ftctl jobs -n 3` lists them all)"
    assert "of 3 jobs" not in jobs_table(3)


def test_a_launch_into_a_run_a_trainer_holds_names_the_cancel_that_stops_it(tmp_path):
    from ftctl.backend import held_run
    from ftctl.spec import build
    from ftctl.trainer.run import only_trainer

    out = tmp_path / "out"
    spec = build({"method": "lora", "gpus": "cpu", "output_dir": str(out)})
    with only_trainer(str(out)):
        said = held_run(spec)
    assert f"stop it (`ftctl cancel {out}` saves a checkpoint first)" in said


def test_s3fs_naming_where_it_found_credentials_is_quiet(caplog):
    from ftctl import quiet

    quiet.install()
    with caplog.at_level(logging.DEBUG, logger="aiobotocore.credentials"):
        logging.getLogger("aiobotocore.credentials").info("Found credentials in environment variables.")
    assert [r.levelno for r in caplog.records] == [logging.DEBUG]


def test_a_run_dir_typed_in_another_directory_names_the_one_launched_elsewhere(tmp_path, monkeypatch):
    """`ftctl status runs/r1` the next day from another directory: before, "No job 'runs/r1' was launched from here",
    though `ftctl jobs` listed /elsewhere/runs/r1."""
    from ftctl.backend import JobRef, find_job, record_job

    monkeypatch.setenv("FTCTL_HOME", str(tmp_path / "home"))
    run = tmp_path / "day1" / "runs" / "r1"
    run.mkdir(parents=True)
    record_job(JobRef("local", str(run), str(run), "r1", str(run)))
    (tmp_path / "day2").mkdir()
    monkeypatch.chdir(tmp_path / "day2")
    for typed in ("runs/r1", "r1"):
        with pytest.raises(FtctlError) as said:
            find_job(typed)
        assert str(said.value) == (
            f"No run directory {typed} in {tmp_path / 'day2'}, and no job of that id. A run directory of that name "
            f"was launched from another directory: {run}; give its whole path (`ftctl jobs` lists them)."
        )
    with pytest.raises(FtctlError, match="No job 'runs/r2' was launched from here"):
        find_job("runs/r2")


def test_eval_of_the_data_the_run_trained_on_says_it_is_not_held_out(tiny_data, tmp_path, monkeypatch):
    """`ftctl eval RUN --data conv.json` of the run's own training file printed its "held-out" loss as any other."""
    from types import SimpleNamespace

    from click.testing import CliRunner

    from ftctl.cli import main
    from ftctl.trainer import chat, heldout

    spec = {"data_path": str(tiny_data), "eval_split": 0.0, "model_max_length": 64}
    found = SimpleNamespace(recorded=lambda section, key: spec.get(key))
    monkeypatch.setattr(chat, "locate", lambda run, *a, **kw: SimpleNamespace(plain=False))  # eval finds runs first
    monkeypatch.setattr(
        chat, "load", lambda run, **kw: SimpleNamespace(found=found, tokenizer=None, model=None, download=None)
    )
    monkeypatch.setattr(
        "ftctl.trainer.data.build_dataset",
        lambda *a, **kw: datasets.Dataset.from_list([{"input_ids": [1, 2], "labels": [1, 2]}]),
    )
    monkeypatch.setattr(heldout, "score", lambda *a, **kw: heldout.Score(1.0, 0.5, 48, 600))
    got = CliRunner().invoke(main, ["eval", str(tmp_path), "--data", str(tiny_data)])
    assert got.exit_code == 0, got.output
    assert f"note: {tiny_data}: the run trained on its rows, so this loss is lower" in got.stderr
