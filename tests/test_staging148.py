"""Disk a user never asked to spend (task 148): a finished run into object storage gives back what it staged on this
disk once the store is seen to hold it (checkpoints.staging), and chat/eval of a checkpoint in the store download
what loading reads, not its optimizer state."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.s3_fixtures import fake_aws, make_checkpoint
from tests.trainer_fixtures import make_run


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def finished(moto_s3, tiny_model_dir, tiny_data, tmp_path_factory):
    """(the run's output URI, its staging directory, the ftctl log lines) of a finished lora run into a fresh bucket:
    checkpoint-1, checkpoint-2, its final adapter (as tests/test_explore33.py's store_run)."""
    import torch

    from ftctl.trainer.run import train

    stage = tmp_path_factory.mktemp("stage")
    with pytest.MonkeyPatch.context() as mp:
        fake_aws(mp, tmp_path_factory.mktemp("aws"), moto_s3.endpoint)
        mp.setenv("FTCTL_LOCAL_DIR", str(stage))
        run = f"s3://{moto_s3.make_bucket()}/runs/r"
        torch.set_num_threads(1)
        lines, logger = _Lines(), logging.getLogger("ftctl")
        level = logger.level
        logger.addHandler(lines)
        logger.setLevel(logging.INFO)
        try:
            spec, plan = make_run(tiny_model_dir, tiny_data, run, "lora", lora_r=4, max_steps=2, save_steps=1)
            assert train(spec, plan, echo=lambda line: None).status == "complete"
        finally:
            logger.removeHandler(lines)
            logger.setLevel(level)
        yield run, stage, lines.lines


def test_a_finished_run_into_a_store_gives_back_what_it_staged(finished):
    """Before, the run's checkpoints and final model stayed in FTCTL_CACHE/runs/... after the store committed them,
    forever (a 7B fft: ~100 GB a run, one run after another). Now they are removed once the store is seen to hold
    them, said in one line; the run's records stay (ftctl status/logs read them there)."""
    from ftctl.checkpoints import list_checkpoints
    from ftctl.checkpoints.settings import final_saved

    run, stage, lines = finished
    left = sorted(p.name for p in stage.iterdir())
    assert not [name for name in left if name.startswith("checkpoint-") or name.startswith("adapter_")], left
    assert {"spec.json", "metrics.jsonl"} <= set(left)
    assert [c.name for c in list_checkpoints(run) if c.complete] == ["checkpoint-1", "checkpoint-2"]
    assert final_saved(run)
    (said,) = [line for line in lines if line.startswith("freed ")]
    assert said.endswith(
        f"checkpoint-1, checkpoint-2, the final model staged in {stage}, all in {run} (-o keep_staging=true keeps them)"
    )


def test_chat_of_a_store_checkpoint_downloads_no_optimizer_state(finished, monkeypatch):
    """`ftctl chat s3://.../checkpoint-N` downloaded every top-level file of it, optimizer.pt, scheduler.pt and the
    rng states too (an fft's optimizer: ~12 bytes a parameter, 96 GB for 8B): only what loading reads now."""
    from ftctl import storage
    from ftctl.trainer import chat

    run, _, _ = finished
    assert storage.exists(f"{run}/checkpoint-1/optimizer.pt")
    got = []
    real = storage.get_file

    def get_file(uri, local, *args, **kwargs):
        got.append(uri.rsplit("/", 1)[1])
        return real(uri, local, *args, **kwargs)

    monkeypatch.setattr(storage, "get_file", get_file)
    loaded = chat.load(f"{run}/checkpoint-1")
    assert loaded.what.startswith(f"LoRA adapter {run}/checkpoint-1 on ")
    assert "adapter_model.safetensors" in got and "spec.json" in got
    assert not [name for name in got if name.startswith(("optimizer", "scheduler", "rng_state"))], got


# ---------------------------------------------------------------- what is not removed


def _staged_run(tmp_path: Path, store: str, steps=(1, 2)) -> Path:
    """A staging directory with committed checkpoints and a final model, all uploaded to ``store``."""
    from ftctl import storage
    from ftctl.checkpoints import upload_checkpoint, write_manifest

    local = tmp_path / "stage"
    for step in steps:
        ckpt = make_checkpoint(local, step)
        write_manifest(str(ckpt), step, 1, "h")
        upload_checkpoint(str(ckpt), f"{store}/checkpoint-{step}")
    for name, data in {"model.safetensors": b"w" * 100, "config.json": b"{}", "spec.json": b"{}"}.items():
        (local / name).write_bytes(data)
        storage.put_file(str(local / name), f"{store}/{name}")
    (local / "metrics.jsonl").write_text("{}\n")
    return local


def _names(local: Path) -> set[str]:
    return {p.name for p in local.iterdir() if not p.name.startswith(".")}


def test_only_what_the_store_holds_is_removed(s3_bucket, tmp_path):
    from ftctl import storage
    from ftctl.checkpoints import staging, write_manifest

    store = f"{s3_bucket}/r"
    local = _staged_run(tmp_path, store, steps=(1, 2, 3))
    # checkpoint-1 changed here since its upload (another run's of that name): not the store's
    (local / "checkpoint-1" / "optimizer.pt").write_bytes(b"other")
    write_manifest(str(local / "checkpoint-1"), 1, 1, "h")
    freed = staging.free(str(local), store)
    assert freed.removed == ["checkpoint-2", "checkpoint-3", "the final model"]
    assert freed.kept == "checkpoint-1 (its optimizer.pt is not the store's)"
    assert _names(local) == {"checkpoint-1", "spec.json", "metrics.jsonl"}
    assert freed.size > 2 * 8000
    # nothing at all where the store lacks the newest checkpoint or the final model
    local = _staged_run(tmp_path / "b", f"{s3_bucket}/b")
    storage.rm(f"{s3_bucket}/b/checkpoint-2/ftctl-manifest.json")
    freed = staging.free(str(local), f"{s3_bucket}/b")
    assert (freed.removed, freed.kept) == ([], "its newest checkpoint, checkpoint-2, is not committed in the store")
    local = _staged_run(tmp_path / "c", f"{s3_bucket}/c")
    storage.rm(f"{s3_bucket}/c/config.json")
    assert staging.free(str(local), f"{s3_bucket}/c").kept == f"{s3_bucket}/c holds no final model"
    assert _names(local) >= {"checkpoint-1", "checkpoint-2", "model.safetensors", "config.json"}


def test_keep_staging_and_another_node_of_a_shared_directory_keep_it(s3_bucket, tmp_path):
    from ftctl.trainer.sync_callback import CheckpointSyncCallback

    local = _staged_run(tmp_path, f"{s3_bucket}/k")
    CheckpointSyncCallback(f"{s3_bucket}/k", keep_staging=True).free_staging(str(local))
    follower = CheckpointSyncCallback(f"{s3_bucket}/k")
    follower.lists_files = False  # a node staging into the directory of a node before it: that one frees it
    follower.free_staging(str(local))
    assert {"checkpoint-1", "checkpoint-2", "model.safetensors"} <= _names(local)
    CheckpointSyncCallback(f"{s3_bucket}/k").free_staging(str(local))
    assert _names(local) == {"spec.json", "metrics.jsonl"}


def test_sync_clean_frees_finished_runs_staged_earlier_and_leaves_one_training(s3_bucket, tmp_path):
    """`ftctl sync clean`: the staging directories of runs that finished before their trainer freed its own (or kept
    with keep_staging): each freed where its store holds it, one training now left alone."""
    import fcntl
    import json

    from ftctl.checkpoints import staging
    from ftctl.runpaths import RunPaths, open_lock

    runs = tmp_path / "runs"
    runs.mkdir()
    done = _staged_run(tmp_path / "a", f"{s3_bucket}/done").rename(runs / "done")
    busy = _staged_run(tmp_path / "b", f"{s3_bucket}/busy").rename(runs / "busy")
    for local, name in ((done, "done"), (busy, "busy")):
        (local / "spec.json").write_text(json.dumps({"spec": {"output_dir": f"{s3_bucket}/{name}"}}))
    (runs / "not-a-run").mkdir()
    RunPaths(busy).train_lock.parent.mkdir(parents=True)
    said = []
    with open_lock(RunPaths(busy).train_lock) as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        freed = staging.clean(runs, echo=said.append)
    assert freed > 0 and _names(done) == {"spec.json", "metrics.jsonl"}
    assert {"checkpoint-1", "checkpoint-2", "model.safetensors"} <= _names(busy)
    assert said[0] == f"left {busy}: a run is training into {s3_bucket}/busy from it now"
    assert said[1].startswith("freed ") and said[1].endswith(f"staged in {done}, all in {s3_bucket}/done")
    assert said[2].startswith("freed ") and said[2].endswith(f" in {runs}")
