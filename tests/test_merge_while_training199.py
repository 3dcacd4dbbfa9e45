"""`ftctl merge RUN` of a run that trains now: refused in one line naming the run's step, its trainer and its newest
committed checkpoint, which `ftctl merge RUN/checkpoint-N` merges while it trains on. It merged, unsaid, whatever
RUN held: a relaunch extending max_steps merged the earlier run's final adapter into RUN/merged; a run with no final
adapter yet, its newest checkpoint. A checkpoint not committed yet (no manifest: being written) is never merged.

"Training" is the trainer's own lock (trainer.run.only_trainer, held here as the trainer holds it), the launcher's
(backend._launch_lock, as `ftctl train` takes it before its trainer starts) and, for an object-store output, the
trainer's lease (lease.Holder on the session's moto S3)."""

from __future__ import annotations

import json
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.s3_fixtures import s3_bucket, s3_env  # noqa: F401 - fixtures
from tests.trainer_fixtures import make_run


@pytest.fixture(scope="module")
def finished(tiny_model_dir, tiny_data, tmp_path_factory) -> Path:
    """A finished 2-step lora run of the tiny model: its final adapter and checkpoint-2."""
    import torch

    from ftctl.trainer.run import train

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        spec, plan = make_run(
            tiny_model_dir,
            tiny_data,
            tmp_path_factory.mktemp("m199") / "run",
            "lora",
            lora_r=4,
            max_steps=2,
            save_steps=2,
        )
        return Path(train(spec, plan, echo=lambda line: None).output_dir)
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def run(finished, tmp_path) -> Path:
    """A copy of the finished run, to be relaunched with max_steps=4 (training): checkpoint-4 is being written (its
    files saved, no manifest yet)."""
    from ftctl.checkpoints import MANIFEST

    out = tmp_path / "run"
    shutil.copytree(finished, out)
    shutil.copytree(out / "checkpoint-2", out / "checkpoint-4")
    (out / "checkpoint-4" / MANIFEST).unlink()
    return out


@contextmanager
def training(run: Path, logged: bool = True):
    """The relaunch training: its trainer holds the run's lock (trainer.run.only_trainer, as the trainer takes it),
    then (``logged``) writes its "start" record (run.record_start) and logs step 3 of 4 (callbacks.MetricsCallback)."""
    from ftctl.trainer.run import only_trainer

    with only_trainer(str(run)):
        if logged:
            with (run / "metrics.jsonl").open("a") as f:
                f.write(json.dumps({"step": 0, "event": "start", "time": round(time.time(), 3)}) + "\n")
                f.write(json.dumps({"step": 3, "loss": 1.5, "max_steps": 4, "time": round(time.time(), 3)}) + "\n")
        yield


def _merge(*args):
    from ftctl.cli import main

    return CliRunner().invoke(main, ["merge", *map(str, args)])


def test_a_relaunched_run_is_not_merged_from_its_earlier_final_adapter(run):
    with training(run):
        said = _merge(run)
    assert said.exit_code == 2, said.output
    assert "Traceback" not in said.output
    assert f"{run} is still training (step 3/4; pid " in said.output
    assert "the final adapter in it is an earlier run's until this run saves its own as it ends" in said.output
    assert f"`ftctl merge {run / 'checkpoint-2'}`" in said.output  # the newest committed, not checkpoint-4
    assert len(said.output.strip().splitlines()) == 1
    assert not (run / "merged").exists()


def test_a_committed_checkpoint_merges_while_the_run_trains_and_one_being_written_never(run):
    with training(run):
        merged = _merge(run / "checkpoint-2")
        writing = _merge(run / "checkpoint-4")
    assert merged.exit_code == 0, merged.output
    assert (run / "merged-checkpoint-2" / "model.safetensors").is_file()
    assert writing.exit_code == 2, writing.output
    assert f"{run / 'checkpoint-4'} is not committed yet: its run is still training (step 3/4; pid " in writing.output
    assert f"`ftctl merge {run / 'checkpoint-2'}`, the newest" in writing.output
    assert not (run / "merged-checkpoint-4").exists()
    after = _merge(run / "checkpoint-4")  # the trainer gone: a save cut short, never merged either
    assert after.exit_code == 2 and "not a complete checkpoint (no ftctl-manifest.json" in after.output, after.output


def test_a_run_without_a_final_adapter_yet_and_one_being_launched(run):
    from ftctl.backend import _launch_lock
    from ftctl.runpaths import FINAL_MARKS, RunPaths

    for mark in FINAL_MARKS:
        (run / mark).unlink(missing_ok=True)
    with training(run, logged=False):  # loading: metrics.jsonl's rows are the earlier run's (step 2/2), not its own
        said = _merge(run)
    assert said.exit_code == 2, said.output
    assert "is still training (no step logged yet; pid " in said.output and "it has no final adapter yet" in said.output
    assert f"`ftctl merge {run / 'checkpoint-2'}`" in said.output

    lock = _launch_lock(RunPaths(run).launch_lock, str(run), "ftctl train")  # its trainer not started yet
    try:
        said = _merge(run)
    finally:
        lock.close()
    assert said.exit_code == 2, said.output
    assert f"{run} is being launched into by `ftctl train` (pid " in said.output


def test_an_object_store_run_whose_trainer_holds_its_lease(finished, s3_bucket):  # noqa: F811 - fixture
    from ftctl import lease, storage
    from ftctl.checkpoints import MANIFEST

    uri = f"{s3_bucket}/run"
    for rel in storage.local_files(str(finished)):
        storage.put_file(str(finished / rel), storage.join(uri, *rel.split("/")))
        if rel.startswith("checkpoint-2/") and not rel.endswith(MANIFEST):  # checkpoint-4 being uploaded: no manifest
            storage.put_file(str(finished / rel), storage.join(uri, "checkpoint-4", rel.split("/", 1)[1]))
    holder = lease.Holder(uri, None, "r")
    holder.take()
    try:
        said = _merge(uri)
        uploading = _merge(f"{uri}/checkpoint-4")
    finally:
        holder.close()
    assert said.exit_code == 2, said.output
    assert f"{uri} is still training (" in said.output and "earlier run's" in said.output
    assert f"`ftctl merge {uri}/checkpoint-2`" in said.output
    assert uploading.exit_code == 2, uploading.output
    assert f"{uri}/checkpoint-4 is not committed yet: its run is still training (" in uploading.output
