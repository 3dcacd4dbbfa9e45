"""A group's FTCTL_CACHE on a login node (explore28, task 128): the demo model another user builds, or cannot be
built by this one."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

import pytest

from tests.user_fixtures import ROOT, as_another_user, shared_dir, theirs


@pytest.fixture
def shared():
    yield from shared_dir()


def test_a_demo_model_another_user_builds_in_a_shared_cache_is_waited_for_and_read(shared, monkeypatch):
    """A group's FTCTL_CACHE on a login node: a second user's `ftctl demo` while the first one's build of the demo
    model held its lock (mode 644, the first user's) was a PermissionError traceback. It waits for that build and
    reads the model."""
    from ftctl.trainer.model import demo_model_dir, ensure_demo_model

    monkeypatch.setenv("FTCTL_CACHE", str(shared / "cache"))
    target = demo_model_dir()
    target.parent.mkdir(parents=True)
    lock_path = target.parent / f".{target.name}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # their build, under way
        theirs(lock_path, 0o644)
        for d in (target.parent, shared / "cache"):
            theirs(d, 0o755)

        def built():  # by its owner, whose own bits are 7
            time.sleep(0.2)
            target.parent.chmod(0o755)
            target.mkdir()
            (target / "config.json").write_text("{}")
            target.chmod(0o755)
            fcntl.flock(lock, fcntl.LOCK_UN)

        code, said = as_another_user(ensure_demo_model, {}, meanwhile=built)
    assert (code, said) == (0, str(target))


def test_a_demo_model_nobody_built_in_a_cache_you_cannot_write_is_one_line(shared, monkeypatch):
    """... and where the model is not built and this user cannot build it there: one line saying what to do."""
    from ftctl.trainer.model import demo_model_dir, ensure_demo_model

    monkeypatch.setenv("FTCTL_CACHE", str(shared / "cache"))
    target = demo_model_dir()
    target.parent.mkdir(parents=True)
    for lock in (False, True):  # no build tried there yet; one tried (its lock left)
        if lock:
            target.parent.chmod(0o755)  # its owner's own bits
            (target.parent / f".{target.name}.lock").touch()
            theirs(target.parent / f".{target.name}.lock", 0o644)
        for d in (target.parent, shared / "cache"):
            theirs(d, 0o755)
        code, said = as_another_user(ensure_demo_model, {})
        assert code == 1, said
        assert said.startswith(f"error: cannot build the demo model in {target.parent}: you cannot write in ftctl's ")
        assert "Set FTCTL_CACHE to a directory of your own, or have the cache made writable by your group" in said


def _fake_build(gguf, out):  # what _convert_gguf leaves, written as safetensors writes weights (0600)
    import torch
    from safetensors.torch import save_file

    out.mkdir()
    save_file({"w": torch.zeros(2)}, out / "model.safetensors")
    (out / "config.json").write_text("{}")


def test_the_demo_model_built_in_a_shared_cache_is_readable_by_the_others(shared, monkeypatch):
    """safetensors writes weights 0600: the demo model one user built in a group's cache had its config.json readable
    to the others but not its model.safetensors (a PermissionError traceback as their `ftctl demo` loaded it). Built,
    its files are as the builder's umask lets files be; one built before that is one line to the others."""
    from ftctl.trainer import model

    monkeypatch.setenv("FTCTL_CACHE", str(shared / "cache"))
    monkeypatch.setattr(model, "_fetch_gguf", lambda work: work.mkdir() or work)
    monkeypatch.setattr(model, "_convert_gguf", _fake_build)
    target = model.ensure_demo_model()
    assert (target / "model.safetensors").stat().st_mode & 0o777 == (target / "config.json").stat().st_mode & 0o777

    def read():
        return len((model.ensure_demo_model() / "model.safetensors").read_bytes()) > 0

    assert as_another_user(read, {}) == (0, "True")
    (target / "model.safetensors").chmod(0o600 if ROOT else 0o200)  # as built before
    code, said = as_another_user(read, {})
    assert code == 1, said
    assert said == (
        f"error: the demo model in {target} is not readable by you (model.safetensors: another user built it): have "
        f"them run chmod -R a+rX {target}, or set FTCTL_CACHE to a directory of your own."
    )


def test_each_checkpoints_weights_are_as_readable_as_its_other_files(tmp_path, tiny_model_dir, tiny_data, one_thread):
    """A checkpoint-N's adapter_model.safetensors was 0600 (safetensors' writer), its other files 0644: a colleague
    resuming the run in a group's directory, or vLLM serving the checkpoint as another user, could not read it."""
    from ftctl.trainer.run import train
    from tests.trainer_fixtures import make_run

    spec, plan = make_run(tiny_model_dir, tiny_data, tmp_path / "run", "lora", max_steps=1, save_steps=1, lora_r=4)
    train(spec, plan, echo=lambda line: None)
    for directory in (tmp_path / "run" / "checkpoint-1", tmp_path / "run"):
        modes = {f.name: f.stat().st_mode & 0o777 for f in directory.iterdir() if f.is_file()}
        assert modes["adapter_model.safetensors"] == modes["adapter_config.json"], (directory, modes)


def test_a_store_outputs_staging_another_user_made_in_a_shared_cache_is_not_this_users(shared, monkeypatch):
    """A run into s3://b/run is staged in FTCTL_CACHE/runs/: in a group's cache a colleague relaunching the run got
    the directory its first attempt's user made (not writable to them: the trainer stopped at its first write). Each
    user stages in a directory of their own; the first keeps its own."""
    from ftctl.runpaths import RunPaths
    from ftctl.trainer.run import only_trainer, output_dirs
    from tests.render_fixtures import make_spec

    monkeypatch.setenv("FTCTL_CACHE", str(shared / "cache"))
    spec = make_spec(backend="local", gpus="cpu", output_dir="s3://b/run")
    (shared / "cache").mkdir()
    theirs(shared / "cache", 0o777)  # the group's
    mine, _ = output_dirs(spec)
    with only_trainer(mine):  # an attempt of the run: its staging made
        pass
    theirs(Path(mine).parent, 0o777)  # the group's (chmod -R g+w): the staging directory itself its user's

    def relaunch():
        if not ROOT:  # this user stands for the other: another uid, as far as the staging's owner goes
            os.getuid = lambda uid=os.getuid(): uid + 1
        local, _ = output_dirs(spec)
        with only_trainer(local):
            return RunPaths(Path(local)).train_lock.is_file() and local != mine

    assert as_another_user(relaunch, {}) == (0, "True")
    assert output_dirs(spec)[0] == mine
