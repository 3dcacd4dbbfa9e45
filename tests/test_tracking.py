"""W&B and TensorBoard across a run's attempts: a stopped and resumed run goes on in the same W&B run and the same
TensorBoard curve (ftctl.trainer.tracking); a new run into a fresh output gets a W&B run of its own."""

from __future__ import annotations

import json
import os
import shutil
import signal

import pytest

from ftctl.trainer.tracking import run_name, wandb_env
from tests.trainer_fixtures import make_run

pytest.importorskip("wandb")


def _train(spec, plan, callbacks=()):
    from ftctl.trainer.run import train

    return train(spec, plan, callbacks=callbacks, echo=lambda line: None)


def _stop_at(step: int, sig=signal.SIGUSR2):
    from transformers import TrainerCallback

    class SendSignal(TrainerCallback):  # what Slurm's --signal=B:USR2@lead does
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == step:
                os.kill(os.getpid(), sig)

    return SendSignal()


def _wandb_runs(out) -> list[str]:
    """The W&B run id of each attempt's offline directory (offline-run-DATE_TIME-ID) in the output."""
    return sorted(p.name.rsplit("-", 1)[1] for p in (out / "wandb").glob("offline-run-*"))


def test_a_stopped_and_requeued_run_logs_to_the_same_wandb_run_a_fresh_one_to_its_own(
    tiny_model_dir, tiny_data, tmp_path, one_thread, offline_wandb, monkeypatch
):
    from transformers import TrainerCallback

    shown = []

    class ShownName(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            import wandb

            shown.append(wandb.run.name)

    out = tmp_path / "out"
    spec, plan = make_run(
        tiny_model_dir, tiny_data, out, "fft", max_steps=6, save_steps=100, resume="auto", wandb_name="shown"
    )
    assert _train(spec, plan, callbacks=[_stop_at(2), ShownName()]).status == "preempted"
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # the requeued attempt of the same job
    monkeypatch.setenv("FTCTL_ATTEMPT", "1")
    assert _train(spec, plan).status == "complete"
    assert set(shown) == {"shown"}  # axolotl's wandb_name (WANDB_NAME), not the run's name ftctl-fft-...

    first, second = _wandb_runs(out)  # each attempt's directory, W&B's own files kept with the output
    assert first == second
    starts = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"start"' in line]
    assert [s["wandb_run_id"] for s in starts] == [first, first]
    assert "WANDB_RUN_ID" not in os.environ  # the trainer called in-process leaves the environment as it was

    monkeypatch.delenv("SLURM_RESTART_COUNT")
    monkeypatch.delenv("FTCTL_ATTEMPT")
    shutil.rmtree(out)  # a new run into the same path, in the same process (the trainer ended its W&B session)
    spec, plan = make_run(tiny_model_dir, tiny_data, out, "fft", max_steps=2, save_steps=100, report_to="wandb")
    assert _train(spec, plan).status == "complete"
    (other,) = _wandb_runs(out)
    assert other != first


def test_the_users_wandb_variables_win(tmp_path):
    checkpoint = tmp_path / "out" / "checkpoint-3"
    checkpoint.mkdir(parents=True)
    (checkpoint / "ftctl-metrics.jsonl").write_text(
        json.dumps({"step": 0, "event": "start", "wandb_run_id": "recorded"}) + "\n" + json.dumps({"step": 1}) + "\n"
    )
    resumed = wandb_env("wandb", str(tmp_path / "out"), str(checkpoint), {})
    assert resumed == {"WANDB_RUN_ID": "recorded", "WANDB_RESUME": "allow", "WANDB_DIR": str(tmp_path / "out")}
    mine = {"WANDB_RUN_ID": "mine", "WANDB_RESUME": "must", "WANDB_DIR": "/elsewhere"}
    assert wandb_env("wandb,tensorboard", str(tmp_path / "out"), str(checkpoint), mine) == {}
    assert wandb_env("tensorboard", str(tmp_path / "out"), str(checkpoint), {}) == {}
    fresh = wandb_env("wandb", str(tmp_path / "out"), None, {})["WANDB_RUN_ID"]
    assert fresh != "recorded" and len(fresh) == 8


def test_wandb_shows_the_users_wandb_name_else_the_runs(monkeypatch):
    """transformers passes TrainingArguments.run_name to wandb.init(name=...), which wins over WANDB_NAME."""
    from ftctl.spec import build

    monkeypatch.delenv("WANDB_NAME", raising=False)
    axolotl = build({"model_name_or_path": "Org/M", "wandb_project": "p", "wandb_name": "mine", "run_name": "r"})
    assert run_name(axolotl) == "mine"
    assert run_name(build({"model_name_or_path": "Org/M", "run_name": "r"})) == "r"
    monkeypatch.setenv("WANDB_NAME", "exported")
    assert run_name(build({"model_name_or_path": "Org/M", "run_name": "r"})) == "exported"


def test_tensorboard_has_each_step_once_after_a_resume_from_an_earlier_checkpoint(
    tiny_model_dir, tiny_data, tmp_path, one_thread
):
    """A run killed at step 5 resumes checkpoint-3: steps 4 and 5 are trained and logged again, and TensorBoard
    shows each step once, in one run: the output's runs/."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from transformers import TrainerCallback

    class Crash(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 6:  # steps up to 5 logged, checkpoint-3 the newest
                raise RuntimeError("killed")

    out = tmp_path / "out"
    spec, plan = make_run(
        tiny_model_dir, tiny_data, out, "fft", max_steps=8, save_steps=3, resume="auto", report_to="tensorboard"
    )
    with pytest.raises(RuntimeError, match="killed"):
        _train(spec, plan, callbacks=[Crash()])
    assert _train(spec, plan).status == "complete"

    curves = EventAccumulator(str(out / "runs"))
    curves.Reload()
    assert [e.step for e in curves.Scalars("train/loss")] == list(range(1, 9))
    assert not [p for p in (out / "runs").iterdir() if p.is_dir()]  # one run in TensorBoard, not one per attempt


def test_an_object_store_output_has_every_attempts_tensorboard_files_from_the_first_checkpoint(
    tiny_model_dir, tiny_data, tmp_path, one_thread, s3_bucket, monkeypatch
):
    """A run into a bucket stopped on node a and recovered on node b (a SkyPilot spot recovery, a fresh disk): the
    store has node a's event files from its stop checkpoint on, and after the run both nodes', one curve in it."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from ftctl import storage

    uri = f"{s3_bucket}/runs/tracked"
    spec, plan = make_run(
        tiny_model_dir, tiny_data, uri, "fft", max_steps=6, save_steps=100, resume="auto", report_to="tensorboard"
    )
    monkeypatch.setenv("FTCTL_LOCAL_DIR", str(tmp_path / "node-a"))
    assert _train(spec, plan, callbacks=[_stop_at(2, signal.SIGTERM)]).status == "preempted"
    stopped = [e["name"] for e in storage.ls(storage.join(uri, "runs"))]
    assert len(stopped) == 1 and stopped[0].startswith("events.out.tfevents.")

    monkeypatch.setenv("FTCTL_LOCAL_DIR", str(tmp_path / "node-b"))
    assert _train(spec, plan).status == "complete"
    pulled = tmp_path / "pulled"
    storage.get_dir(storage.join(uri, "runs"), str(pulled))
    assert len(list(pulled.iterdir())) == 2
    curves = EventAccumulator(str(pulled))
    curves.Reload()
    assert [e.step for e in curves.Scalars("train/loss")] == list(range(1, 7))
