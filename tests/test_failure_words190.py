"""How ftctl speaks of a run that stopped or failed outside `ftctl launch` (helper 190): a killed `ftctl train` is
resumed by the same `ftctl train`; torchrun run by hand ends its report with the rank's own error; an FTCTL_* variable
ftctl reads none of is named once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

FTCTL = str(Path(sys.executable).parent / "ftctl")


# ------------------------------------------------------------------------------------------ the command that resumes
def test_a_killed_ftctl_train_run_is_resumed_by_the_same_ftctl_train(tmp_path, tiny_model_dir, tiny_data):
    """`ftctl status` and `ftctl cancel` of a run started with `ftctl train` said "the same `ftctl launch` resumes it":
    they name `ftctl train`, which started it (its run directory's launch lock says so). `ftctl cancel` stops it with
    a checkpoint, as it stops a launch's."""
    out = tmp_path / "run"
    args = ["train", "--gpus", "cpu", "--model", str(tiny_model_dir), "--data", str(tiny_data), "--output", str(out)]
    args += ["-o", "max_steps=400", "-o", "save_steps=1000", "-o", "model_max_length=64"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    trainer = subprocess.Popen([FTCTL, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock, deadline = out / ".ftctl" / "train.lock", time.monotonic() + 120
    try:
        while not (lock.exists() and lock.read_text().strip()):  # the trainer holds the run
            assert trainer.poll() is None and time.monotonic() < deadline, trainer.communicate()
            time.sleep(0.1)
        cancel = subprocess.run([FTCTL, "cancel", str(out)], env=env, capture_output=True, text=True, timeout=60)
        # `ftctl train`'s trainer watches the stop file `ftctl cancel` creates, as a launch's does (it said "asked
        # RUN to stop" and trained on; then, explore38, it named `kill -TERM PID` instead)
        assert cancel.returncode == 0 and cancel.stdout.startswith(f"asked {out} (pid {trainer.pid} on "), cancel
        assert trainer.wait(timeout=120) == 128 + signal.SIGTERM, trainer.communicate()  # stopped, not finished
    finally:
        trainer.kill()
        trainer.communicate(timeout=60)
    saved = sorted(p.name for p in out.glob("checkpoint-*"))
    assert len(saved) == 1 and not (out / ".ftctl" / "stop-heard").exists(), saved  # the step it stopped at
    status = subprocess.run([FTCTL, "status", "--exit-code", str(out)], env=env, capture_output=True, text=True)
    assert status.returncode == 3, status
    assert status.stdout.startswith(f"{out} local run, stopped before the end"), status.stdout
    assert "the same `ftctl train` resumes it" in status.stdout, status.stdout


def test_a_run_names_the_command_that_launched_it_and_both_where_none_did(tmp_path):
    """The launch lock's holder line (`ftctl launch` or `ftctl train`) is the record; a run directory without one (a
    trainer run by hand, an older ftctl's run) is resumed by either."""
    from ftctl.backend import _launch_lock, launched_by, same_command
    from ftctl.runpaths import RunPaths

    run = tmp_path / "run"
    run.mkdir()
    assert launched_by(run) is None and same_command(run) == "the same `ftctl launch` or `ftctl train`"
    RunPaths(run).launch_lock.parent.mkdir()
    for command in ("ftctl launch", "ftctl train"):
        _launch_lock(RunPaths(run).launch_lock, str(run), command).close()
        assert launched_by(run) == command and same_command(run) == f"the same `{command}`"


# ------------------------------------------------------------------------------------------ torchrun run by hand
def test_torchrun_by_hand_ends_its_report_with_the_ranks_own_error(tmp_path):
    """`torchrun -m ftctl.trainer` run by hand (2 gloo processes, a spec.json that is not ftctl's): torchrun's own
    ChildFailedError report, which ftctl cannot keep its process from printing, ended in "To enable traceback see:
    https://pytorch.org/docs/stable/elastic/errors.html"; its root cause now says the rank's error, which the ranks of
    the node said once above it (both fail; or one, and torchrun stops the other: torch's words for that rank)."""
    from tests.trainer_fixtures import REPO, subprocess_env

    bad = tmp_path / "spec.json"
    bad.write_text("{}")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    proc = subprocess.run(
        [*torchrun, "-m", "ftctl.trainer", "--spec", str(bad)],
        env=subprocess_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    said = f"{bad} is not a spec file written by ftctl"
    assert proc.returncode != 0 and proc.stderr.count(f"error: {said}") == 1, proc.stderr
    root = proc.stderr.split("Root Cause (first observed failure):", 1)[1]
    assert f"  traceback : {said}" in root, proc.stderr
    # a rank torchrun stopped after the other failed (exit 143, no error of its own) keeps torch's words in the
    # report's other failures; the root cause never does
    assert "To enable traceback see" not in root, proc.stderr


def test_a_rank_leaves_its_cause_for_torchrun_whole_once_a_node_and_no_interruption(tmp_path, monkeypatch):
    """The error file torch's ErrorHandler would write ($TORCHELASTIC_ERROR_FILE): the first rank of the node to fail
    so writes its error whole, the next its first line (a bad dataset's rows once), for a cause only (the ranks torchrun
    stops after it are no cause), nothing without torchrun."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    from ftctl import failures

    attempt = tmp_path / "attempt_0"
    files = [attempt / str(rank) / "error.json" for rank in range(3)]
    for f in files:
        f.parent.mkdir(parents=True)
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(files[0]))
    bad = "1 of 1 rows with errors (1 listed) in the data x.json; fix or remove these rows:\n  x.json row 1: no role"
    failures.record("config", bad)
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(files[1]))
    failures.record("config", bad)  # the same error on the next rank: its rows once
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(files[2]))
    failures.record("interrupted", "interrupted by SIGTERM (preempted, cancelled, or its job stopped)")
    first, second = (json.loads(f.read_text())["message"] for f in files[:2])
    assert first["message"] == first["extraInfo"]["py_callstack"] == bad
    assert second["message"] == second["extraInfo"]["py_callstack"] == bad.splitlines()[0]
    assert not files[2].exists()
    # torch's own reading of them: the root cause is a rank that failed, not the rank torchrun stopped after it in the
    # same second (ftctl's torchrun said that one was killed by SIGTERM, and that a relaunch would resume)
    again = tmp_path / "attempt_1" / "1" / "error.json"
    again.parent.mkdir(parents=True)
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(again))
    failures.record("config", bad)
    stopped = ProcessFailure(local_rank=0, pid=10, exitcode=-15, error_file=str(tmp_path / "none.json"))
    failed = ProcessFailure(local_rank=1, pid=11, exitcode=2, error_file=str(again))
    rank, cause = ChildFailedError("ftctl.trainer", {0: stopped, 1: failed}).get_first_failure()
    assert rank == 1 and cause.message["message"] == bad, (stopped.timestamp, failed.timestamp)
    monkeypatch.delenv("TORCHELASTIC_ERROR_FILE")
    failures.record("error", "RuntimeError: boom")  # no torchrun: nothing written, nothing raised


# ------------------------------------------------------------------------------------------ FTCTL_* variables
def test_an_ftctl_variable_ftctl_reads_none_of_is_said_once_and_the_command_runs(tmp_path, monkeypatch):
    """FTCTL_CAHCE_DIRECTORY, FTCTL_SKIP_PREFLIGHT: set for nothing, silently (only a run's -o env= near a known name was
    refused). Every command names them once on stderr, with the nearest setting where one is close and the ones ftctl
    reads, and goes on; the tests' own FTCTL_TEST_* are nobody's typo."""
    from click.testing import CliRunner

    from ftctl.cli import main
    from ftctl.envvars import KNOWN, SETTINGS, unknown_set

    assert set(SETTINGS) <= KNOWN
    assert unknown_set({"FTCTL_HOME": "h", "FTCTL_TEST_CACHE": "c", "FTCTL_SETUP_TESTS": "1", "PATH": "/bin"}) is None
    said = unknown_set({"FTCTL_CACHE_DIR": "/data"})
    assert said.startswith(
        "warning: FTCTL_CACHE_DIR (did you mean FTCTL_CACHE?) is set in this environment, but ftctl reads no such "
        "variable: it changes nothing. The ones it reads: FTCTL_BACKEND, FTCTL_HOME, FTCTL_CACHE, "
    ), said
    assert said.endswith(" (docs/configuration.md).")
    monkeypatch.setenv("FTCTL_CAHCE_DIRECTORY", "/data")
    monkeypatch.setenv("FTCTL_SKIP_PREFLIGHT", "1")
    monkeypatch.setenv("FTCTL_TEST_MARK", "1")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["jobs"])
    assert result.exit_code == 0 and result.stdout.startswith("No jobs launched from here yet"), result.output
    assert result.stderr.count("warning: ") == 1, result.stderr
    assert result.stderr.startswith(
        "warning: FTCTL_CAHCE_DIRECTORY, FTCTL_SKIP_PREFLIGHT are set in this environment, but ftctl reads no such "
        "variables: they change nothing."
    ), result.stderr


def test_the_tests_and_scripts_set_no_ftctl_variable_ftctl_would_warn_of():
    """Every FTCTL_* name in tests/ and scripts/ is one ftctl reads, the tests' own (FTCTL_TEST_*, envvars.TESTS_OWN),
    or one of those below, none of which is set where ftctl runs: a name the CLI warns of would be said in the output
    of every test that runs ftctl with it."""
    import re

    from ftctl.envvars import KNOWN, TESTS_OWN, TESTS_PREFIX

    root = Path(__file__).resolve().parent.parent
    files = [*root.joinpath("tests").rglob("*.py"), *root.joinpath("tests").rglob("*.sh"), *root.glob("scripts/*")]
    named = {m for f in files if f.is_file() for m in re.findall(r"\bFTCTL_[A-Z0-9_]*[A-Z0-9]\b", f.read_text())}
    assert {"FTCTL_HOME", "FTCTL_TEST_HOLD", "FTCTL_SETUP_TESTS"} <= named  # the scan sees them
    not_set = {
        "FTCTL_SET",  # shell-local names of the rendered scripts (launch.py), asserted on
        "FTCTL_AT",
        "FTCTL_NOT_SET",  # in a setup line's text (test_sky_yaml)
        "FTCTL_STOP_REQUEST_POLL",  # typos given to -o env= on purpose, which launch refuses (test_bad_input175)
        "FTCTL_DOCKER_SAME_PATH",
        "FTCTL_CAHCE_DIRECTORY",  # this file's, set for one test by monkeypatch
        "FTCTL_SKIP_PREFLIGHT",
        "FTCTL_CACHE_DIR",
    }
    unknown = {n for n in named - KNOWN - TESTS_OWN if not n.startswith(TESTS_PREFIX)}
    assert unknown == not_set, unknown ^ not_set
