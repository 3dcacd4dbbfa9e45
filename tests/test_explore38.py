"""Runs an older ftctl wrote, read by this one (explore38, helper 206): a user upgrades ftctl between a preemption and
its requeue, or while a run trains, or weeks later to chat/merge/eval it.

tests/data/older/<date>/ holds what ftctl of that day wrote for a local lora run stopped at step 11 (its spec.json,
checkpoint-5's ftctl-manifest.json) and the spec.json of a qlora run rendered for one H100 (a Slurm requeue reads it
with the ftctl installed then). Paths in them are MODEL, DATA and RUN, put back by each test."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

OLDER = Path(__file__).parent / "data" / "older"
DAYS = ("2026-12-01", "2026-12-03", "2026-12-05")


def _put(text: str, model, data, run) -> str:
    return text.replace('"MODEL"', f'"{model}"').replace('"DATA"', f'"{data}"').replace('"RUN"', f'"{run}"')


@pytest.mark.parametrize("day", DAYS)
def test_an_older_ftctls_spec_json_is_read_and_its_checkpoint_goes_on_unchanged(
    day, tiny_model_dir, tiny_data, tmp_path
):
    """What a requeued Slurm job's trainer (`python -m ftctl.trainer --spec spec.json`, the new ftctl) reads: the
    spec.json and checkpoint manifest of that day's ftctl; the same settings resume with no 'other settings' line."""
    from ftctl.checkpoints.settings import compare, settings
    from ftctl.plan import load_run

    run = tmp_path / "run"
    for name in ("spec.json", "qlora-h100-spec.json"):
        (tmp_path / name).write_text(_put((OLDER / day / name).read_text(), tiny_model_dir, tiny_data, run))
    spec, plan = load_run(str(tmp_path / "spec.json"))
    assert (spec.method, spec.lora_r, spec.max_steps, spec.save_steps) == ("lora", 4, 60, 5)
    assert (plan.global_batch_size, plan.learning_rate, plan.optim) == (32, 2e-4, "adamw_torch_fused")
    assert load_run(str(tmp_path / "qlora-h100-spec.json"))[1].method == "qlora"

    import json

    manifest = json.loads(
        _put((OLDER / day / "checkpoint-5-manifest.json").read_text(), tiny_model_dir, tiny_data, run)
    )
    recorded = manifest.get("settings")
    if day == "2026-12-01":
        assert recorded is None  # recorded from 12-02 on: a relaunch compares the run's spec.json instead (by hand)
        return
    assert compare(str(run / "checkpoint-5"), recorded, settings(spec, plan)) is None


def _holder(tmp_path, run: Path, env: dict) -> subprocess.Popen:
    """A process holding ``run``'s trainer lock as a trainer of ftctl 2026-12-03 did (its words without a zone)."""
    code = (
        "import fcntl, os, socket, sys, time\n"
        f"fh = open({str(run / '.ftctl' / 'train.lock')!r}, 'w')\n"
        "fcntl.flock(fh, fcntl.LOCK_EX)\n"
        "fh.write(f'pid {os.getpid()} on {socket.gethostname()} since 2026-12-03 10:00:49\\n'); fh.flush()\n"
        "print('held', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_cancel_of_a_trainer_that_watches_no_stop_file_says_how_to_stop_it(tmp_path, tiny_model_dir, tiny_data):
    """A local run launched by ftctl from before 2026-12-03 (its launcher set no FTCTL_STOP_FILE), still training
    after the upgrade, or one of `ftctl train`: cancel said 'asked RUN to stop: it saves a checkpoint at its next
    step' and the trainer trained on to its end. Now: one line naming its pid and `kill -TERM PID`, rc != 0."""
    from ftctl.backend import JobRef
    from ftctl.envvars import STOP_ENV
    from ftctl.errors import FtctlError
    from ftctl.local.backend import LocalBackend

    run = tmp_path / "run"
    (run / ".ftctl").mkdir(parents=True)
    (run / "spec.json").write_text(
        _put((OLDER / "2026-12-01" / "spec.json").read_text(), tiny_model_dir, tiny_data, run)
    )
    ref = JobRef("local", str(run), str(run), "ftctl-lora-tiny-model", str(run))
    stop = run / ".ftctl" / "stop"
    env = {k: v for k, v in os.environ.items() if k != STOP_ENV}
    old = _holder(tmp_path, run, env)
    try:
        with pytest.raises(FtctlError) as said:
            LocalBackend().cancel(ref)
        assert f"is trained by pid {old.pid} on {socket.gethostname()} since 2026-12-03 10:00:49" in str(said.value)
        assert f"stop it with `kill -TERM {old.pid}`, which saves a checkpoint at its next step" in str(said.value)
        assert not stop.exists()
    finally:
        old.kill()
        old.wait()
    time.sleep(0.05)
    new = _holder(tmp_path, run, {**env, STOP_ENV: str(stop)})  # this ftctl's launcher: the stop file is heard
    try:
        assert LocalBackend().cancel(ref).startswith(f"asked {run} (pid {new.pid} on ")
        assert stop.is_file()
    finally:
        new.kill()
        new.wait()


def test_status_of_a_run_a_pre_lock_trainer_may_still_train_says_so(tmp_path, tiny_model_dir, tiny_data):
    """A run launched by ftctl from before 2026-12-02 (its trainer took no lock), still training after the upgrade:
    status said 'stopped before the end (the same `ftctl launch` ... resumes it)', and that relaunch trained beside
    it, each rotating the other's checkpoints away (a merge meanwhile: a FileNotFoundError traceback)."""
    from ftctl.backend import JobRef
    from ftctl.local.backend import LocalBackend
    from ftctl.trainer.trained import UNLOCKED_RECENT_S

    run = tmp_path / "run"
    (run / ".ftctl").mkdir(parents=True)
    (run / "spec.json").write_text(
        _put((OLDER / "2026-12-01" / "spec.json").read_text(), tiny_model_dir, tiny_data, run)
    )
    (run / "metrics.jsonl").write_text('{"step": 11, "loss": 6.2}\n')  # written now: by the old trainer, training
    ref = JobRef("local", str(run), str(run), "ftctl-lora-tiny-model", str(run))
    assert "local run, stopped before the end" in LocalBackend().status(ref).text  # no mark of an older ftctl
    (run / ".ftctl-resume.lock").touch()  # what its trainer took at the top as it started (resume=auto)
    said = LocalBackend().status(ref).text
    assert said.startswith(f"{run} local run, may still be training (its metrics.jsonl was written ")
    assert "of an ftctl from before 2026-12-02, takes no lock to tell; relaunch it only once that trainer" in said

    (run / ".ftctl" / "status").write_text("preempted\n")  # it ended, and said so
    assert "local run, stopped before the end" in LocalBackend().status(ref).text
    (run / ".ftctl" / "status").unlink()
    before = time.time() - UNLOCKED_RECENT_S - 60
    os.utime(run / "metrics.jsonl", (before, before))  # its last step long ago: killed, not training
    assert "local run, stopped before the end" in LocalBackend().status(ref).text
    os.utime(run / "metrics.jsonl")
    (run / ".ftctl" / "train.lock").touch()  # a trainer since 2026-12-02 took the lock (none holds it now)
    assert "local run, stopped before the end" in LocalBackend().status(ref).text


def _files(run: Path) -> dict[str, tuple[bytes, float]]:
    """Every file of ``run`` but its launch lock (`ftctl train` takes it before its checks, as every launch does)."""
    files = (p for p in run.rglob("*") if p.is_file() and p.name != "launch.lock")
    return {str(p.relative_to(run)): (p.read_bytes(), p.stat().st_mtime) for p in files}


def test_a_relaunch_into_a_run_a_pre_lock_trainer_may_still_train_is_refused(tmp_path, tiny_model_dir, tiny_data):
    """Status said it (a73b307), yet `ftctl launch` (and `ftctl train`) of that run trained beside the older ftctl's
    trainer, each rotating the other's checkpoints away. Now one line, rc 2, the run untouched: the evidence, the pid
    of that trainer where its command line names the run's spec.json, how to stop it and how to go on once it has
    ended; not refused once its metrics.jsonl is older than the window, or once that ftctl's lock file is removed."""
    from ftctl.backend import held_run, prepare
    from ftctl.local.backend import LocalBackend
    from ftctl.spec import build
    from ftctl.trainer.trained import UNLOCKED_RECENT_S

    run = tmp_path / "run"
    (run / ".ftctl").mkdir(parents=True)
    (run / "spec.json").write_text(
        _put((OLDER / "2026-12-01" / "spec.json").read_text(), tiny_model_dir, tiny_data, run)
    )
    (run / "metrics.jsonl").write_text('{"step": 11, "loss": 6.2}\n')  # written now: by the old trainer, training
    (run / ".ftctl-resume.lock").touch()  # what its trainer took at the top as it started
    # the older launcher's trainer: `python -m ftctl.trainer --spec RUN/spec.json`
    old = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "--spec", str(run / "spec.json")])
    args = ["--gpus", "cpu", "--model", str(tiny_model_dir), "--data", str(tiny_data), "--output", str(run)]
    args += ["--method", "lora", "-o", "max_steps=1"]  # (without the refusal: one step, not 60)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    before = _files(run)
    try:
        for command in (["launch", "--backend", "local"], ["train"]):
            ftctl = str(Path(sys.executable).parent / "ftctl")
            said = subprocess.run([ftctl, *command, *args], env=env, capture_output=True, text=True, timeout=120)
            assert said.returncode == 2, (command, said.stdout, said.stderr)
            line = said.stderr.strip()
            assert "\n" not in line and "Traceback" not in line, said.stderr
            assert line.startswith(f"error: {run} may still be training (its metrics.jsonl was written "), line
            assert "of an ftctl from before 2026-12-02, takes no lock to tell): a second trainer there" in line
            assert f"stop it (`kill -TERM {old.pid}`: it saves a checkpoint at its next step)" in line
            assert f"relaunch once metrics.jsonl is {UNLOCKED_RECENT_S // 60} min old, or now after `rm " in line
            assert _files(run) == before, command  # no spec.json replaced, no status cleared, no record
        said = LocalBackend().status(_ref(run)).text  # status names that trainer too
        assert f"relaunch it only once that trainer (pid {old.pid}) has ended)" in said
    finally:
        old.kill()
        old.wait()
    spec = build({"method": "lora", "gpus": "cpu", "backend": "local", "output_dir": str(run)})
    assert "find its process (`ps -ef | grep ftctl`) and `kill -TERM` it" in held_run(spec)  # no pid known
    assert held_run(build({"method": "lora", "gpus": "cpu", "backend": "slurm", "output_dir": str(run)})) is None
    (run / ".ftctl-resume.lock").unlink()  # the user knows it has ended: the override the line names
    assert held_run(spec) is None
    (run / ".ftctl-resume.lock").touch()
    assert held_run(spec) is not None
    long_ago = time.time() - UNLOCKED_RECENT_S - 60
    os.utime(run / "metrics.jsonl", (long_ago, long_ago))  # its last step long ago: ended
    assert held_run(spec) is None
    given = {"model_name_or_path": str(tiny_model_dir), "data_path": str(tiny_data), "max_steps": 1}
    LocalBackend().check(prepare(build({**given, "method": "lora", "gpus": "cpu", "output_dir": str(run)})))


def _ref(run: Path):
    from ftctl.backend import JobRef

    return JobRef("local", str(run), str(run), "ftctl-lora-tiny-model", str(run))
