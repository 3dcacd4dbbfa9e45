"""The hours after a launch (explore33, task 141): a local run into object storage (a moto S3 server on loopback) seen
the next day from another directory, its run directory deleted, its checkpoints and merge loaded from the store, and a
run whose loss went NaN. One shared qlora run into S3 (its checkpoints, its final adapter)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftctl.errors import FtctlError
from tests.s3_fixtures import fake_aws
from tests.trainer_fixtures import make_run


@pytest.fixture(scope="module")
def store_run(moto_s3, tiny_model_dir, tiny_data, tmp_path_factory):
    """(the run's output URI, a copy of it with its checkpoints and spec.json but no final adapter: a run stopped before
    its end) of a finished lora run into a fresh bucket: checkpoint-1, checkpoint-2, its final adapter."""
    import boto3
    import torch

    from ftctl.trainer.run import train

    with pytest.MonkeyPatch.context() as mp:
        fake_aws(mp, tmp_path_factory.mktemp("aws"), moto_s3.endpoint)
        mp.setenv("FTCTL_CACHE", str(tmp_path_factory.mktemp("cache")))
        bucket = moto_s3.make_bucket()
        run = f"s3://{bucket}/runs/q"
        torch.set_num_threads(1)
        spec, plan = make_run(tiny_model_dir, tiny_data, run, "lora", lora_r=4, max_steps=2, save_steps=1)
        train(spec, plan, echo=lambda line: None)
        s3 = boto3.client("s3", endpoint_url=moto_s3.endpoint)
        for obj in s3.list_objects_v2(Bucket=bucket, Prefix="runs/q/")["Contents"]:
            rel = obj["Key"].removeprefix("runs/q/")
            if rel.startswith("checkpoint-") or rel == "spec.json":
                s3.copy_object(
                    Bucket=bucket, Key=f"runs/stopped/{rel}", CopySource={"Bucket": bucket, "Key": obj["Key"]}
                )
        yield run, f"s3://{bucket}/runs/stopped"


def test_a_checkpoint_in_the_store_loads_as_its_run_trained_it(store_run):
    """`ftctl chat s3://.../checkpoint-N`: before, the checkpoint's files came without the run's spec.json, so its
    method and precision were unknown: a qlora checkpoint's adapter loaded on the 16-bit base (another model than the
    one it learned against; `ftctl chat` of the same checkpoint pulled loaded it "in 4 bits"), and on a GPU in bf16
    whatever the run trained in."""
    from ftctl.trainer import chat

    run, _ = store_run
    loaded = chat.load(f"{run}/checkpoint-1")
    assert loaded.what.startswith(f"LoRA adapter {run}/checkpoint-1 on ")
    assert (loaded.found.method, loaded.found.precision) == ("lora", "fp32")


def test_a_stopped_run_in_the_store_talks_from_its_newest_committed_checkpoint(store_run, caplog):
    """A run with no final adapter yet (cancelled, or training) loads its newest committed checkpoint, as a local run
    directory does, and says which; before, it was refused with `ftctl sync pull` to run first."""
    from ftctl.trainer import chat

    _, stopped = store_run
    with caplog.at_level("WARNING", logger="ftctl"):
        loaded = chat.load(stopped)
    assert loaded.what.startswith(f"LoRA adapter {stopped}/checkpoint-2 on ")
    assert f"{stopped} has no final model or adapter yet: loading its newest checkpoint, checkpoint-2" in caplog.text


def test_a_merged_model_in_the_store_names_its_base_for_compare(store_run, tiny_model_dir):
    """`ftctl eval s3://.../merged --compare` (what `ftctl merge s3://RUN` writes): before, the merge came without its
    run's spec.json and --compare failed naming a temporary directory ("/tmp/ftctl-chat-... names no base model")."""
    from ftctl import storage
    from ftctl.trainer import chat

    run, _ = store_run
    for file in Path(tiny_model_dir).iterdir():
        storage.put_file(str(file), f"{run}/merged/{file.name}")
    loaded = chat.load(f"{run}/merged")
    assert loaded.what == f"model {run}/merged, fp32 on CPU"
    assert loaded.found.base == str(tiny_model_dir)


def _launched(run_dir: Path, output: str, spec_from: str) -> tuple:
    """A local launch's run directory into ``output`` (its spec.json, as `ftctl launch` writes it) and its JobRef."""
    from ftctl import storage
    from ftctl.backend import JobRef

    run_dir.mkdir(parents=True)
    record = json.loads(storage.read_text(f"{spec_from}/spec.json"))
    record["spec"]["output_dir"] = output
    (run_dir / "spec.json").write_text(json.dumps(record))
    return JobRef("local", str(run_dir), str(run_dir), run_dir.name, output)


def test_status_of_a_stopped_local_run_into_the_store_names_the_checkpoint_it_resumes_and_a_deleted_run_dir(
    store_run, tmp_path
):
    """`ftctl status` of a local run into S3 that was cancelled: it names the checkpoint the same launch resumes from,
    and where (before: "resumes it"); once its run directory is deleted, says so with what the store still holds
    (before: "stopped before the end", as if nothing had happened)."""
    import shutil

    from ftctl.backend import JobState
    from ftctl.local.backend import LocalBackend

    run, stopped = store_run
    ref = _launched(tmp_path / "runs" / "stopped", stopped, run)
    said = LocalBackend().status(ref)
    assert said.text == (
        f"{ref.job_id} local run, stopped before the end (the same `ftctl launch` or `ftctl train` resumes it from "
        f"checkpoint-2 in {stopped})"
    )
    shutil.rmtree(ref.run_dir)
    said = LocalBackend().status(ref)
    assert said.text == (
        f"{ref.job_id} local run: its run directory is gone (deleted or moved); {stopped} holds its checkpoints up "
        "to checkpoint-2: the same `ftctl launch` resumes it from there"
    )
    done = _launched(tmp_path / "runs" / "done", run, run)
    shutil.rmtree(done.run_dir)
    said = LocalBackend().status(done)
    assert said.state is JobState.SUCCEEDED
    assert said.text.endswith(f"gone (deleted or moved); its final model is in {run} (`ftctl chat {run}`)")


def test_logs_of_a_deleted_run_dir_points_at_no_file_that_is_not_there(store_run, tmp_path, capsys):
    """`ftctl logs` of a run whose run directory is gone: its state line alone; before, it also said each logged step
    was a line of RUN/metrics.jsonl, in the deleted directory."""
    import shutil

    from ftctl.local.backend import LocalBackend

    run, stopped = store_run
    ref = _launched(tmp_path / "runs" / "stopped", stopped, run)
    shutil.rmtree(ref.run_dir)
    LocalBackend().logs(ref, follow=False)
    out = capsys.readouterr().out
    assert "its run directory is gone" in out and "metrics.jsonl" not in out


def test_sync_ls_of_the_run_dir_of_a_run_into_the_store_lists_the_stores(store_run, tmp_path):
    """`ftctl sync ls RUN_DIR`, the job id `ftctl jobs` shows for a local run into S3: before, "no checkpoints under
    RUN_DIR" while the store held them."""
    from ftctl.checkpoints import sync

    run, stopped = store_run
    ref = _launched(tmp_path / "runs" / "stopped", stopped, run)
    lines = []
    found = sync.ls(ref.run_dir, echo=lines.append)
    assert lines[0] == f"{ref.run_dir} is the run directory of a run into {stopped}: its checkpoints there"
    assert [c.name for c in found] == ["checkpoint-1", "checkpoint-2"]


def _poison(at: int):
    """A callback that makes the adapter's weights NaN before step ``at`` (what a diverging update does)."""
    import torch
    from transformers import TrainerCallback

    class Poison(TrainerCallback):
        def on_step_begin(self, args, state, control, model=None, **kwargs):
            if state.global_step + 1 == at:
                with torch.no_grad():
                    for name, p in model.named_parameters():
                        if "lora_B" in name:
                            p.fill_(float("nan"))
            return control

    return Poison()


def test_a_run_whose_loss_goes_nan_stops_there_naming_the_checkpoint_and_the_learning_rate(
    tiny_model_dir, tiny_data, tmp_path
):
    """A loss that went NaN at step 4 stops the run there, before that step's checkpoint (its weights NaN), naming
    the last sound checkpoint and a lower learning rate; before, the run trained NaN weights to its end and said
    `complete`, then offered `ftctl chat`."""
    import torch

    from ftctl.trainer.diverged import StopWhenDiverged
    from ftctl.trainer.run import train

    torch.set_num_threads(1)
    out = tmp_path / "nan"
    spec, plan = make_run(tiny_model_dir, tiny_data, out, "lora", lora_r=4, max_steps=6, save_steps=2)
    with pytest.raises(FtctlError) as said:
        train(spec, plan, callbacks=[_poison(at=4), StopWhenDiverged()], echo=lambda line: None)
    assert str(said.value).startswith("training diverged: the loss is nan at step 4 (the last finite loss: ")
    assert str(said.value).endswith(
        "Relaunch with a lower learning rate, -o learning_rate=0.0001 (a tenth of this run's 0.001): it resumes from "
        "checkpoint-2, the last one saved before."
    )
    assert not (out / "checkpoint-4").exists() and not (out / "adapter_config.json").exists()


def test_a_nan_at_the_first_step_names_the_base_model_or_the_data():
    """A NaN before any update (a base saved in fp16 that overflows, a damaged download) is no learning rate's."""
    from types import SimpleNamespace

    from ftctl.trainer.diverged import FP16_TOLERATED, StopWhenDiverged

    args = SimpleNamespace(fp16=False, learning_rate=2e-4, max_grad_norm=1.0)
    stop = StopWhenDiverged("org/base", "conv.json")
    stop.on_train_begin(args, SimpleNamespace(global_step=0), None)
    with pytest.raises(FtctlError, match=r"at step 1, .*`ftctl eval org/base --data conv.json` scores the base alone"):
        stop.on_log(args, SimpleNamespace(global_step=1), None, logs={"loss": float("nan"), "grad_norm": 1.0})
    fp16 = SimpleNamespace(fp16=True, learning_rate=2e-4, max_grad_norm=0.0)  # the loss scaler skips overflows
    stop = StopWhenDiverged()
    stop.on_log(fp16, SimpleNamespace(global_step=1), None, logs={"loss": 2.0, "grad_norm": float("inf")})
    for step in range(2, 2 + FP16_TOLERATED - 1):
        stop.on_log(fp16, SimpleNamespace(global_step=step), None, logs={"loss": float("nan"), "grad_norm": 1.0})
    with pytest.raises(FtctlError, match=r"-o learning_rate=2e-05 .* and -o max_grad_norm=1.0 \(off in this run\)"):
        stop.on_log(fp16, SimpleNamespace(global_step=9), None, logs={"loss": float("nan"), "grad_norm": 1.0})


def test_eval_names_data_the_run_trained_on(tiny_data, tmp_path):
    """`ftctl eval RUN --data conv.json` with the run's own training file (the `next:` line's HELD_OUT.jsonl taken
    for the file at hand) is said not to be held out; other data is not."""
    from ftctl.trainer import trained
    from ftctl.trainer.heldout import trained_on

    run = tmp_path / "run"
    run.mkdir()
    (run / "spec.json").write_text(json.dumps({"spec": {"data_path": str(tiny_data), "eval_split": 0.05}}))
    (run / "adapter_config.json").write_text("{}")
    found = trained.find(str(run))
    assert trained_on(found, [f"{tiny_data.parent}/../{tiny_data.parent.name}/{tiny_data.name}"]) == (
        f"{tiny_data.parent}/../{tiny_data.parent.name}/{tiny_data.name}: the run trained on its rows, less the 0.05 "
        "it held out (eval_split), so this loss is lower than on rows it never saw; score held-out rows (a file it "
        "did not train on) to compare runs."
    )
    assert trained_on(found, [str(tmp_path / "other.json")]) is None and trained_on(None, [str(tiny_data)]) is None


def test_a_launch_into_the_store_names_where_this_disk_stages_it(tmp_path, monkeypatch, capsys):
    """The launch named the run directory here (its spec.json and train.log) but not the directory under FTCTL_CACHE
    that holds its checkpoints and final model on this disk, kept after the run (a 7B fft's: ~100 GB in ~/.cache)."""
    import sys

    from ftctl.backend import trainer_paths_of
    from ftctl.local.backend import run_foreground
    from tests.render_fixtures import prepared

    monkeypatch.setenv("FTCTL_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    rendered = prepared(backend="local", gpus="cpu", output_dir="s3://b/runs/r1")
    run_foreground(rendered, [sys.executable, "-c", "pass"])
    staged = trainer_paths_of(rendered.spec).root
    assert str(staged).startswith(str(tmp_path / "cache"))
    assert f"(its run directory here: {rendered.run_dir}; staged on this disk in {staged})\n" in capsys.readouterr().err
