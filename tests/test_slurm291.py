"""Helper 291's fixes from walking ftctl on Slurm as a university user (notes/explore61-slurm.md).

A site's Slurm defaults written into ~/.config/ftctl/config.yaml (partition:, account:, a slurm: block) are refused
in one line that names every unknown key once and says where such defaults go: sbatch's own SBATCH_* variables,
which a launch takes as sbatch does, or a run file. (tests/conftest.py gives every test its own XDG_CONFIG_HOME.)
"""

from __future__ import annotations

from click.testing import CliRunner

from ftctl import userconfig
from ftctl.cli import main


def _write(text: str) -> None:
    path = userconfig.config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _render_error(text: str) -> str:
    _write(text)
    r = CliRunner().invoke(main, ["render", "--backend", "slurm", "--gpus", "cpu", "--output", "/fixed/out"])
    assert r.exit_code == 2, r.output
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    return r.stderr


def test_site_slurm_defaults_in_the_config_say_where_they_go():
    said = _render_error("backend: slurm\npartition: short\naccount: lab\n")
    assert said.startswith(f"error: {userconfig.config_path()}: unknown keys 'partition', 'account'. The keys are ")
    assert said.count("The keys are") == 1  # once, not once a key
    assert "`export SBATCH_PARTITION=... SBATCH_ACCOUNT=...`" in said
    assert "for a run without --partition/--account" in said and "-c run.yaml" in said
    assert said.endswith("Fix it by hand.\n")


def test_a_slurm_block_names_every_sbatch_default():
    said = _render_error("slurm:\n  partition: short\n  qos: normal\n")
    assert "unknown key 'slurm'. The keys are backend, image, slurm_container, built;" in said
    assert "SBATCH_PARTITION=... SBATCH_ACCOUNT=... SBATCH_QOS=... SBATCH_TIMELIMIT=..." in said


def test_a_misspelt_key_is_still_one_guess_and_no_slurm_words():
    said = _render_error("imgae: x\n")
    assert "unknown key 'imgae'. Did you mean 'image'? The keys are backend, image, slurm_container, built." in said
    assert "SBATCH_" not in said


def test_cancel_takes_several_jobs_as_scancel_does(tmp_path, monkeypatch):
    """`ftctl cancel 6 7 8` was click's "Got unexpected extra arguments (7 8)": each is cancelled in turn now, one that
    cannot be is said in its own error line, and the others still are (exit 2). On the test cluster: two held jobs
    and an unknown id between them were cancelled and said so (notes/explore61-slurm.md finding 8)."""
    monkeypatch.setenv("FTCTL_HOME", str(tmp_path))
    r = CliRunner().invoke(main, ["cancel", "998", "999", "998"])
    assert r.exit_code == 2, r.output
    lines = r.stderr.splitlines()
    assert [line[:22] for line in lines] == ["error: No job '998' wa", "error: No job '999' wa"]  # 998 once
    r = CliRunner().invoke(main, ["cancel"])
    assert r.exit_code == 2 and "Missing argument 'JOB...'. Give a job's id" in r.stderr
