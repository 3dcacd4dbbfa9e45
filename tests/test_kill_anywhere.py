"""A run killed at any moment (explore22's chaos sweep of the real trainer, SIGKILL/SIGTERM/SIGINT at random points,
local and s3 outputs): each moment the sweep found that left something half done, stopped exactly there."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from ftctl import checkpoints as C
from tests.s3_fixtures import make_checkpoint


class Killed(BaseException):
    """What a SIGKILL leaves, in-process: nothing after the moment it is raised at runs (no handler, no finally of
    ftctl's catches a BaseException it does not know)."""


def dying_at(monkeypatch, module, name: str, call: int) -> None:
    """``module.name`` raises Killed at its ``call``-th call."""
    real, seen = getattr(module, name), [0]

    def dying(*args, **kwargs):
        seen[0] += 1
        if seen[0] == call:
            raise Killed(f"{name} call {call}")
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, dying)


def test_a_kill_while_rotation_deletes_a_checkpoint_leaves_no_half_checkpoint(tmp_path, monkeypatch):
    """The sweep's fft run killed 0.1 s after checkpoint-6 appeared, and resumed: it ended with a checkpoint-2 that
    held part of its files. transformers' rotation deleted it in place after checkpoint-8 was committed, and the kill
    came halfway; the resume took checkpoint-8 and nothing ever removed the rest (`ftctl sync ls` listed it as
    incomplete for good). Now a rotated checkpoint is moved aside first, and the resume clears what is left of it."""
    run = tmp_path / "run"
    for step in (2, 4, 6):
        C.write_manifest(str(make_checkpoint(run, step)), step, 1, "h")
    make_checkpoint(run, 8)  # saved by the Trainer; on_save commits it, then rotates checkpoint-2 away
    from ftctl.trainer.sync_callback import CheckpointSyncCallback, resume_checkpoint

    args = SimpleNamespace(output_dir=str(run), world_size=1)
    state = SimpleNamespace(global_step=8, is_world_process_zero=True, best_model_checkpoint=None)
    with monkeypatch.context() as m:
        dying_at(m, os, "unlink", 2)  # killed at the second file deleted: checkpoint-2's
        with pytest.raises(Killed):
            CheckpointSyncCallback(None, rotate=3).on_save(args, state, None)
    assert not C.verify(str(run / "checkpoint-8"))  # committed before the rotation

    assert resume_checkpoint(str(run)) == str(run / "checkpoint-8")
    listed = C.list_checkpoints(str(run))
    assert [(c.name, c.complete) for c in listed] == [
        ("checkpoint-4", True),
        ("checkpoint-6", True),
        ("checkpoint-8", True),
    ], [(c.name, c.problems) for c in listed]
    assert not (run / C.DELETING_DIR).exists()  # what the kill left of it, cleared by the resume


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the uploader's thread, killed
def test_a_kill_while_retention_deletes_a_checkpoint_in_the_store_is_cleared_by_the_runs_end(s3_bucket, tmp_path):
    """Killed after retention withdrew checkpoint-2's manifest in the store, before its files went (the uploader's
    thread dies there: Killed is no Exception it retries). Its resume from checkpoint-8, the last step, commits no
    later checkpoint, whose retention would delete what is left: the store kept checkpoint-2's files for good
    (incomplete in `ftctl sync ls`). The end of the run, once its final model is in, deletes them."""
    from ftctl import storage
    from ftctl.checkpoints import upload

    remote, run = f"{s3_bucket}/run", tmp_path / "run"
    real_rm = storage.rm

    def dying_rm(uri, recursive=False, endpoint_url=None):
        if recursive:  # the manifest is gone (the first rm of a deletion): its files next
            raise Killed(uri)
        real_rm(uri, recursive, endpoint_url)

    up = C.Uploader(remote, keep_last=3, backoff=(0.1, 0.5), poll_interval=0.1)
    try:
        upload.storage.rm = dying_rm
        for step in (2, 4, 6, 8):
            C.write_manifest(str(make_checkpoint(run, step)), step, 1, "h")
            up.submit(str(run / f"checkpoint-{step}"))
        up._thread.join(30)  # killed in checkpoint-8's retention
        assert not up._thread.is_alive()
    finally:
        upload.storage.rm = real_rm
        up.close()
    assert [(c.step, c.complete) for c in C.list_checkpoints(remote)] == [(2, False), (4, True), (6, True), (8, True)]

    (run / "adapter_model.safetensors").write_bytes(b"weights")  # the resumed run's final model, then its config
    (run / "adapter_config.json").write_text("{}")
    up = C.Uploader(remote, keep_last=3, backoff=(0.1, 0.5), poll_interval=0.1)
    up.submit_final(str(run))
    assert up.wait(30)
    up.close()
    assert [(c.step, c.complete) for c in C.list_checkpoints(remote)] == [(4, True), (6, True), (8, True)]
