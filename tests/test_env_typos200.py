"""FTCTL_* variables ftctl reads none of (helper 200). A run's env naming one (`-o env=FTCTL_SKIP_PREFLIGHT=1`, a
switch guessed at, or a run file's `env:`; a name tests/test_failure_words190.py allows the tests) passed silently unless
it was close to a known name: it is refused like a misspelling, naming the settings. A trainer run by hand (`python -m
ftctl.trainer`, torchrun, sbatch of a rendered script) said nothing of the unknown FTCTL_* variables of its environment:
its rank 0 warns once, unless an ftctl command started it (that command said it, and marks its children's environment:
envvars.CHECKED_ENV). No training: the trainer stops at a missing spec."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from ftctl import envvars
from ftctl.cli import main

PLAN = ["plan", "--gpus", "cpu", "--model-params", "135m"]
FAR = "env FTCTL_SKIP_PREFLIGHT: ftctl reads no such variable, so it would change nothing. The ones it reads: FTCTL_BACKEND, "


def test_a_run_env_naming_an_ftctl_variable_ftctl_reads_none_of_is_refused():
    said = envvars.setting_problem("FTCTL_SKIP_PREFLIGHT", "1")
    assert said.startswith(FAR) and said.endswith(
        f"{envvars.TORCH_INDEX_ENV} (docs/configuration.md). A variable of your own: name it without FTCTL_."
    ), said
    assert "\n" not in said
    close = envvars.setting_problem("FTCTL_STOP_REQUEST_POLL", "2")  # the nearest where one is close, as before
    assert close == "env FTCTL_STOP_REQUEST_POLL: ftctl reads no such variable; did you mean FTCTL_STOP_REQUEST_POLL_S?"
    for name in ("FTCTL_TEST_MARK", "FTCTL_SETUP_TESTS", "FTCTL_HOME", "FTCTL_VERBOSE", "MY_FTCTL_THING"):
        assert envvars.setting_problem(name, "1") is None, name  # the tests' own, known ones, no FTCTL_ prefix


@pytest.mark.parametrize("given", ["flag", "run file"])
def test_launch_and_plan_refuse_it_from_a_flag_or_a_run_file(tmp_path, given):
    data = tmp_path / "qa.jsonl"
    data.write_text('{"instruction": "q", "output": "a"}\n')
    if given == "flag":
        argv = [*PLAN, "--data", str(data), "-o", "env=FTCTL_SKIP_PREFLIGHT=1"]
    else:
        (tmp_path / "run.yaml").write_text(f"data_path: {data}\nenv:\n  FTCTL_SKIP_PREFLIGHT: 1\n  OTHER: x\n")
        argv = [*PLAN, "-c", str(tmp_path / "run.yaml")]
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and FAR in result.output, result.output
    assert "Traceback" not in result.output


def _trainer(tmp_path, **env):
    """`python -m ftctl.trainer` by hand, with a spec that is not there: it fails at once, after its warning."""
    environ = {k: v for k, v in os.environ.items() if k != envvars.CHECKED_ENV}
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-m", "ftctl.trainer", "--spec", str(tmp_path / "missing.json")],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_trainer_run_by_hand_warns_once_on_rank_0_and_not_where_ftctl_started_it(tmp_path):
    alone = _trainer(tmp_path, FTCTL_SKIP_PREFLIGHT="1", FTCTL_TEST_MARK="1")
    assert alone.returncode == 2, alone.stderr
    lines = alone.stderr.splitlines()
    assert lines[0] == envvars.unknown_set({"FTCTL_SKIP_PREFLIGHT": "1"}), alone.stderr
    assert lines[0].startswith(
        "warning: FTCTL_SKIP_PREFLIGHT is set in this environment, but ftctl reads no such variable"
    )
    assert alone.stderr.count("warning: ") == 1 and "error: Spec file" in alone.stderr, alone.stderr
    other_rank = _trainer(
        tmp_path, FTCTL_SKIP_PREFLIGHT="1", RANK="1", LOCAL_RANK="1"
    )  # torchrun's other ranks: silent
    started = _trainer(tmp_path, FTCTL_SKIP_PREFLIGHT="1", **{envvars.CHECKED_ENV: "1"})  # the command said it
    for proc in (other_rank, started):
        assert proc.returncode == 2 and "warning" not in proc.stderr and "error: Spec file" in proc.stderr, proc.stderr


def test_every_ftctl_command_marks_the_environment_of_the_trainer_it_starts(tmp_path, monkeypatch):
    """cli.main says the warning and sets CHECKED_ENV, which `ftctl train`'s in-process trainer, launch's local
    torchrun and a Slurm job (--export=ALL) inherit: said once, by the command, not again by the trainer."""
    monkeypatch.delenv(envvars.CHECKED_ENV, raising=False)  # restored (removed) after the test
    monkeypatch.setenv("FTCTL_SKIP_PREFLIGHT", "1")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["jobs"])
    assert result.exit_code == 0 and result.stderr.count("warning: FTCTL_SKIP_PREFLIGHT is set") == 1, result.output
    assert os.environ.get(envvars.CHECKED_ENV) == "1"
    assert envvars.unknown_unsaid(os.environ) is None
    assert envvars.unknown_unsaid({"FTCTL_SKIP_PREFLIGHT": "1"}) == envvars.unknown_set({"FTCTL_SKIP_PREFLIGHT": "1"})
