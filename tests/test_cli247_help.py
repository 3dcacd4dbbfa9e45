"""The CLI as a newcomer meets it (helper 247, explore51): `ftctl --help` lists each command in one whole line, an
option given to the wrong command names the command that takes it, and `launch --help` / `plan --help` show examples
that parse."""

from __future__ import annotations

import shlex

import click
import pytest
from click.testing import CliRunner

from ftctl.cli import main


@pytest.mark.parametrize("group", [[], ["data"], ["sync"]])
def test_the_command_list_says_each_command_in_a_whole_line(group):
    """It was cut at ~65 columns mid-phrase for 9 of 18 commands ("cancel  Cancel a launched job (on Slurm, docker
    and SkyPilot its...")."""
    out = CliRunner().invoke(main, [*group, "--help"], terminal_width=80).output
    listed = out.split("Commands:\n", 1)[1].splitlines()
    assert listed and not [line for line in listed if line.rstrip().endswith("...")], out
    command = main if not group else main.commands[group[0]]
    assert sorted(line.split()[0] for line in listed) == sorted(command.commands), out


@pytest.mark.parametrize(
    "args,said",
    [
        (["launch", "--follow"], "No such option '--follow' (`ftctl logs` takes it: `ftctl logs --help`)."),
        (["status", "-f", "JOB"], "No such option '-f' (`ftctl logs` takes it: `ftctl logs --help`)."),
        (["render", "--dry-run"], "No such option '--dry-run' (`ftctl build` and `ftctl launch` take it)."),
        # click offered the nearest of cancel's own: "Did you mean '--now'?"
        (["cancel", "--follow", "JOB"], "No such option '--follow' (`ftctl logs` takes it: `ftctl logs --help`)."),
        # was "backend is a run key: -o backend=VALUE": train trains here whatever -o backend says
        (["train", "--backend", "slurm"], "for `ftctl train`, which trains here, in this process: `ftctl launch`"),
        (["train", "--partition", "gpu"], "No such option '--partition' for `ftctl train`"),
    ],
)
def test_an_option_of_another_command_names_that_command(args, said):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and said in result.output, result.output
    assert "Did you mean" not in result.output and "-o backend" not in result.output, result.output
    assert "Traceback" not in result.output


def test_an_unknown_option_of_no_command_is_said_as_click_says_it():
    result = CliRunner().invoke(main, ["plan", "--data-path", "x"])
    assert result.exit_code == 2 and "No such option: --data-path" in result.output, result.output


@pytest.mark.parametrize(
    "args, meant",
    [
        (["merge", "x", "--output", "y"], "--out"),  # not "`ftctl launch`, `ftctl plan` ... take it"
        (["launch", "--out", "runs/x"], "--output"),  # not `ftctl merge`
        (["plan", "--gpu", "8xA100"], "--gpus"),  # alone, not among --gpus, --nodes ... (click's three)
    ],
)
def test_this_commands_own_form_of_an_option_is_the_one_suggested(args, meant):
    """The review of 7a1fd41: an option another command takes was said in its place where this command has it under
    a longer or shorter name."""
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and f"Did you mean '{meant}'?" in result.output, result.output
    assert "takes it" not in result.output and "take it" not in result.output


def _examples(name: str) -> list[list[str]]:
    said = main.commands[name].epilog or ""
    return [shlex.split(line.strip()) for line in said.splitlines() if line.strip().startswith("ftctl ")]


@pytest.mark.parametrize("name", ["launch", "plan"])
def test_the_examples_in_help_parse(name):
    """`launch --help` had no example: its 23 options, and nothing that shows how they go together."""
    examples = _examples(name)
    assert len(examples) >= 3, main.commands[name].epilog
    for argv in examples:
        assert argv[:2] == ["ftctl", name], argv
        command = main.commands[name]
        with click.Context(main, info_name="ftctl") as parent:
            command.make_context(name, argv[2:], parent=parent)  # a renamed flag raises NoSuchOption
    assert "Examples:" in CliRunner().invoke(main, [name, "--help"]).output


def test_the_plan_examples_plan(tmp_path, monkeypatch):
    """The ones that need no cloud: they exit 0, offline (known model ids)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run.yaml").write_text("method: lora\n")
    for argv in _examples("plan"):
        if "sky" not in argv:
            result = CliRunner().invoke(main, argv[1:])
            assert result.exit_code == 0, (argv, result.output)


@pytest.mark.parametrize("name", ["logs", "cancel", "down"])
def test_a_missing_job_says_what_a_job_is_and_where_ids_are(name):
    """`ftctl logs` right after a launch said click's "Missing argument 'JOB'." alone (status said more)."""
    result = CliRunner().invoke(main, [name])
    job = "JOB..." if name == "cancel" else "JOB"  # cancel takes several, as scancel does
    assert result.exit_code == 2 and f" {name} [OPTIONS] {job}\n" in result.output, result.output
    assert f"Missing argument '{job}'. Give a job's id, its run directory" in result.output, result.output
    assert "`ftctl jobs` lists the jobs launched from here." in result.output


@pytest.mark.parametrize(
    "args,said",
    [
        (
            ["plan", "-v"],
            "No such option '-v' for `ftctl plan`: it is ftctl's own, given before the command: `ftctl -v plan",
        ),
        (["data", "check", "--verbose"], "given before the command: `ftctl --verbose data check ...`."),
        (["logs", "--version", "JOB"], "given before the command: `ftctl --version`."),
    ],
)
def test_ftctls_own_option_after_the_command_says_where_it_goes(args, said):
    """`ftctl plan -v` (uv and gh take -v anywhere) was "No such option '-v'." alone."""
    result = CliRunner().invoke(main, args, prog_name="ftctl")
    assert result.exit_code == 2 and said in result.output, result.output
    assert "Did you mean" not in result.output


def test_python_m_ftctl_runs_the_cli():
    """`python -m ftctl` (a venv whose bin/ is not on PATH) was "No module named ftctl.__main__"."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "ftctl", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("ftctl, version"), done


def test_a_ctrl_c_while_the_cli_loads_is_one_line():
    """Ctrl-C in the first tenth of a second (seconds on a network filesystem) printed an import's traceback."""
    import subprocess
    import sys

    code = (
        "import builtins\n"
        "real = builtins.__import__\n"
        "def interrupted(name, *a, **k):\n"
        "    if name == 'ftctl.cli':\n"
        "        raise KeyboardInterrupt\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = interrupted\n"
        "from ftctl.__main__ import run\n"
        "run()\n"
    )
    done = subprocess.run([sys.executable, "-c", code, "plan"], capture_output=True, text=True)
    assert (done.returncode, done.stderr) == (130, "interrupted\n"), done


def _options():
    def walk(group, path):
        for name, command in sorted(group.commands.items()):
            if isinstance(command, click.Group):
                yield from walk(command, f"{path} {name}")
            else:
                yield from ((f"{path} {name}", p) for p in command.params if isinstance(p, click.Option))

    return list(walk(main, "ftctl"))


def test_every_option_says_what_it_takes_and_does():
    """`--gpus TEXT`, `--time TEXT`, `--output TEXT`: the value's form was only in the text beside it, and
    `chat --max-new-tokens`, `eval --batch-size` had no text at all."""
    free_text = {"prompts", "system"}  # a question, a system message: TEXT is what they take
    untold = [
        f"{where} {p.opts[-1]}"
        for where, p in _options()
        if not p.is_flag and p.type is click.STRING and p.metavar is None and p.name not in free_text
    ]
    assert not untold, untold
    assert not [f"{where} {p.opts[-1]}" for where, p in _options() if not p.help and p.name != "help"]


def test_a_job_id_names_its_run_for_merge_chat_and_eval(tmp_path, monkeypatch):
    """`ftctl launch` prints a job id and `ftctl status 12345` takes it, but `ftctl merge 12345` said "12345 is not
    a directory": now RUN is that job's output where no path 12345 is."""
    from ftctl.backend import JobRef, record_job

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "shared" / "runs" / "r1"
    out.mkdir(parents=True)
    record_job(JobRef("slurm", "12345", str(out), "r1", str(out)))
    result = CliRunner().invoke(main, ["merge", "12345"])
    assert result.exit_code == 2, result.output
    assert f"RUN 12345: the output of job 12345, {out}" in result.output
    assert f"No LoRA adapter (adapter_config.json) in {out}" in result.output, result.output
    (tmp_path / "12345").mkdir()  # a directory of that name is the run, as before
    assert "the output of job" not in CliRunner().invoke(main, ["merge", "12345"]).output
