"""Leftovers of tasks 123-126 (helper 183): the trainer's set-up builds DeepSpeed's ops before anything loads them; a
failing rank's error line is said once a node where no launcher collects the records; a run's train.lock left by
another user does not stop a trainer there."""

from __future__ import annotations

import pytest

from tests.tiny_fixtures import tiny_model_dir  # noqa: F401 - fixture
from tests.trainer_fixtures import make_run, tiny_data  # noqa: F401 - fixture
from tests.user_fixtures import as_another_user, shared_dir, theirs


@pytest.fixture
def shared():
    yield from shared_dir()


class Prepared(Exception):
    """What the test's op_build.prepare raises: the set-up reached it, with this DeepSpeed config."""


def test_the_trainers_set_up_builds_the_offloaded_optimizers_op_first(tiny_model_dir, tiny_data, tmp_path, monkeypatch):  # noqa: F811
    """task 126: the trainer's set-up calls op_build.prepare with its DeepSpeed config (the lock a killed CPU Adam
    build left made every later run wait forever, and only prepare's flock clears it) before the data, the model and
    the Trainer, whose engine would build the op itself, past ftctl's lock. Only the offload tests covered it, by
    their real runs (tens of seconds each, a built CPU Adam)."""
    from types import SimpleNamespace

    from ftctl.trainer import distributed, run

    def prepare(deepspeed):
        raise Prepared(deepspeed)

    def training_args(spec, plan, *args, **kwargs):  # TrainingArguments of a DeepSpeed plan would start its group
        return SimpleNamespace(deepspeed=distributed.deepspeed_config(plan, on_cpu=True))

    def load_model(*args, **kwargs):
        raise AssertionError("the model was loaded before DeepSpeed's ops were built (op_build.prepare)")

    monkeypatch.setattr(run.distributed, "init_group", lambda *a, **k: None)  # a group of one, in this process
    monkeypatch.setattr(run, "training_args", training_args)
    monkeypatch.setattr(run.op_build, "prepare", prepare)
    monkeypatch.setattr("ftctl.trainer.model.load_model", load_model)
    spec, plan = make_run(tiny_model_dir, tiny_data, tmp_path / "out", strategy="zero2_offload")
    with pytest.raises(Prepared) as got:
        run.setup(spec, plan, echo=lambda line: None)
    zero = got.value.args[0]["zero_optimization"]
    assert zero["stage"] == 2 and zero["offload_optimizer"]["device"] == "cpu"
    assert not (tmp_path / "out" / ".ftctl" / "data-cache").exists()  # before the data and the model


def test_a_line_is_said_once_by_the_ranks_of_one_torchrun(tmp_path, monkeypatch):
    """task 125: with no launcher collecting the failure records (Slurm, docker, torchrun by hand), every rank that
    failed printed its own `error:` line: a bad dataset, checked by every rank, was said once a rank (2 ranks: twice,
    seen). failures.first_to_say lets the first local rank of a torchrun attempt say a line; another line (a rank's
    own full disk beside another's lost peer) is said too, and so is every line of a process torchrun did not start
    or of another attempt. A rank's lost peer (gloo's "Connection closed by peer") is not said after a rank of its node
    said why it stopped."""
    from ftctl.failures import first_to_say

    monkeypatch.delenv("TORCHELASTIC_ERROR_FILE", raising=False)
    assert first_to_say("error: bad data") and first_to_say("error: bad data")  # not under torchrun: always
    attempt = tmp_path / "torchelastic_x" / "run_y" / "attempt_0"
    for rank in (0, 1):
        (attempt / str(rank)).mkdir(parents=True)
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(attempt / "0" / "error.json"))  # as torchrun sets it
    assert first_to_say("error: bad data")
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(attempt / "1" / "error.json"))
    assert not first_to_say("error: bad data")
    assert first_to_say("error: no space left on the disk of /out")
    lost = "error: RuntimeError: [../gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:36752"
    assert not first_to_say(lost)  # rank 1's gloo lost rank 0, which said why (seen: DDP, checkpoint-6, full disk)
    again = tmp_path / "torchelastic_x" / "run_y" / "attempt_1" / "0"  # a restart of the workers: said again
    again.mkdir(parents=True)
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(again / "error.json"))
    assert first_to_say(lost)  # its peer said nothing here (another node's, or killed without a word)
    assert first_to_say("error: bad data")
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(tmp_path / "gone" / "0" / "error.json"))
    assert first_to_say("error: bad data") and first_to_say("error: bad data")  # no mark possible: said


def test_a_train_lock_another_users_run_left_does_not_stop_a_trainer_there(shared):
    """explore27/task 123: every run leaves .ftctl/train.lock (an flock's file: removing it as the run ends would let
    a process that opened it meanwhile and the next one both hold it). A relaunch, `ftctl status`, a copy of the run
    elsewhere only flock it; but the trainer opened it for writing, so in a group's run directory a colleague's
    relaunch of a run another user had finished (their lock, mode 644) stopped with a PermissionError."""
    from ftctl.runpaths import RunPaths
    from ftctl.trainer.run import only_trainer

    run = shared / "run"
    with only_trainer(str(run)):  # the first user's run, ended
        pass
    lock = RunPaths(run).train_lock
    for d in (run, lock.parent):
        d.chmod(0o777)  # the group's directory (g+w, as other+w to nobody)
    theirs(lock, 0o644)

    def relaunch():
        with only_trainer(str(run)):
            return "trains"

    assert as_another_user(relaunch, {}) == (0, "trains")


def test_a_resume_lock_another_user_left_does_not_stop_a_relaunch_there(shared):
    """The resume lock (a node's processes choose, download or set aside checkpoints in turn) was opened for writing
    at the top of the run directory (".ftctl-resume.lock"): in a group's run directory another user's (mode 644)
    stopped a colleague's relaunch with a PermissionError, as train.lock did. It is ftctl's, in .ftctl/ (runpaths)."""
    from ftctl.runpaths import RESUME_LOCK
    from ftctl.trainer.sync_callback import resume_lock

    run = shared / "run"
    with resume_lock(str(run)):  # the first user's run
        pass
    lock = run / RESUME_LOCK
    assert lock.parent.name == ".ftctl" and not (run / ".ftctl-resume.lock").exists()
    for d in (run, lock.parent):
        d.chmod(0o777)
    theirs(lock, 0o644)

    def relaunch():
        with resume_lock(str(run)):
            return "resumes"

    assert as_another_user(relaunch, {}) == (0, "resumes")
