"""Follow-ups of explore51/explore52 (helper 258): click's own refusals masked and escaped as ftctl's error lines are
(one function, cli._shown), two run files given as arguments refused as `-c a.yaml -c b.yaml` is, `build --push`
with a user and password refused without repeating them, and the docs' line that Slurm keeps the job's environment."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from ftctl.cli import main

SECRET = "Zq7wPk2mRx9"  # 11 characters: no token's shape, so only a variable set here names it a secret


def test_a_click_refusal_masks_a_secret_set_here(monkeypatch):
    """click's "Invalid value for '--nodes': 'VALUE' is not a valid integer." repeated a secret's value (one of no
    token's shape, set here as MY_TOKEN): ftctl's own error lines were masked by secret_checks.redacted, click's not."""
    monkeypatch.setenv("MY_TOKEN", SECRET)
    for args in (["plan", "--nodes", SECRET], ["plan", "a.yaml", "b", f"x{SECRET}"]):
        said = CliRunner().invoke(main, args)
        assert said.exit_code == 2 and SECRET not in said.output, said.output
        assert "<MY_TOKEN>" in said.output.splitlines()[-1], said.output


def test_a_click_refusal_shows_control_characters_escaped():
    """An extra argument holding ESC]0;TITLE BEL (a terminal's title set by a pasted value) was sent as it is."""
    said = CliRunner().invoke(main, ["plan", "a.yaml", "b", "junk\x1b]0;TITLE\x07"])
    assert said.exit_code == 2 and "\x1b" not in said.output and "\x07" not in said.output, repr(said.output)
    assert said.output.splitlines()[-1] == r"error: Got unexpected extra arguments (b junk\x1b]0;TITLE\x07)"


@pytest.mark.parametrize("command", [["plan"], ["render"], ["launch", "--dry-run"], ["train"]])
def test_two_run_files_as_arguments_are_refused_as_two_c_are(tmp_path, command):
    """`ftctl plan a.yaml b.yaml` got click's "Got unexpected extra argument (b.yaml)": now what `-c a.yaml -c b.yaml`
    says (ftctl reads one; how to combine them)."""
    a, b, c = (tmp_path / f"{n}.yaml" for n in "abc")
    said = CliRunner().invoke(main, [*command, str(a), str(b)])
    assert said.exit_code == 2 and "Traceback" not in said.output, said.output
    assert said.output.strip().splitlines()[-1] == (
        f"error: Two run files, {a} and {b}: ftctl reads one. Put their keys in one file, or keep one and set the "
        "others' keys with -o KEY=VALUE (flags and -o win over the run file)."
    )
    said = CliRunner().invoke(main, [*command, str(a), "-c", str(b), str(c)]).output
    assert f"error: 3 run files, {a} and {c} and -c {b}: ftctl reads one." in said, said


def test_an_extra_argument_that_is_no_run_file_is_clicks_refusal(tmp_path):
    a = tmp_path / "a.yaml"
    said = CliRunner().invoke(main, ["plan", str(a), "8xA100"])
    assert said.exit_code == 2 and said.output.splitlines()[-1] == "error: Got unexpected extra argument (8xA100)"


def test_the_same_run_file_twice_as_arguments_is_read_once(tmp_path):
    a = tmp_path / "a.yaml"
    a.write_text("method: fft\n")
    args = ["--gpus", "1xA100", "--model-params", "1b", "--model", "x/y", "--json"]
    said = CliRunner().invoke(main, ["plan", str(a), str(a), *args])
    assert said.exit_code == 0 and '"method": "fft"' in said.stdout, said.output


@pytest.mark.parametrize(
    ("push", "login", "then"),
    [
        ("user:PASSw0rd9@ghcr.io/my-org", "ghcr.io", "ghcr.io/my-org"),
        ("user:PASSw0rd9@registry.lab:5000", "registry.lab:5000", "registry.lab:5000"),
        ("https://user:PASSw0rd9@ghcr.io/my-org", "ghcr.io", "ghcr.io/my-org"),
        ("user:PASSw0rd9@Ghcr.io/My Org", "Ghcr.io", "Ghcr.io/NAMESPACE"),
    ],
)
def test_build_push_with_a_password_is_refused_unrepeated(push, login, then):
    """`--push user:PASS@ghcr.io/org` (no scheme: no URI, no token's shape) was repeated whole in check_registry's
    "is not a registry path" line; with https:// it was told to set the object stores' keys. Now one line that says
    `docker login` (the engine's credential store)."""
    said = CliRunner().invoke(main, ["build", "--gpus", "H100", "--push", push, "--dry-run"])
    assert said.exit_code == 2 and "PASSw0rd9" not in said.output and "Traceback" not in said.output, said.output
    assert said.output.count("\n") == 1, said.output
    assert f"`docker login {login}`" in said.output and f"then give --push {then}." in said.output, said.output
    assert "AWS_" not in said.output


def test_build_commands_refuses_a_push_with_a_password():
    """build.commands, whatever calls it: the same refusal before check_registry, which repeats the value."""
    from ftctl.docker import build as image_build
    from ftctl.errors import FtctlError

    with pytest.raises(FtctlError, match="docker login host") as e:
        image_build.commands("H100", push="me:PASSw0rd9@host/repo")
    assert "PASSw0rd9" not in str(e.value)
    assert image_build.push_credentials("ghcr.io/my-org") is None


def test_docs_say_slurm_keeps_the_jobs_environment(tmp_path, monkeypatch):
    """docs/configuration.md's Secrets say that a Slurm job's environment (every variable of the launching shell,
    --export=ALL) is kept by slurmctld and, with job_env, by accounting, and how to keep a secret out; and that holds:
    the script names no --export (sbatch's default, ALL), and another --export is refused."""
    from ftctl.slurm.render import export_refused

    text = (Path(__file__).parents[1] / "docs" / "configuration.md").read_text()
    secrets = text.split("## Secrets", 1)[1].split("\n## ", 1)[0]
    kept = secrets.split("### On Slurm, the job's environment is kept", 1)[1].split("\n### ", 1)[0]
    for said in ("--export=ALL", "AccountingStoreFlags=job_env", "sacct -j JOB --env-vars", "unset the secret"):
        assert said in kept, said
    assert export_refused("NONE", "--sbatch-arg=--export=NONE") and export_refused("ALL", "x") is None
    monkeypatch.chdir(tmp_path)
    args = ["render", "--backend", "slurm", "--gpus", "1xA100", "--model", "x/y", "--model-params", "1b"]
    said = CliRunner().invoke(main, [*args, "--partition", "gpu"])
    assert said.exit_code == 0 and "#SBATCH" in said.stdout, said.output
    assert "--export" not in said.stdout
