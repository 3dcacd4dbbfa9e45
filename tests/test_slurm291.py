"""Helper 291's fixes from walking ftctl on Slurm as a university user (notes/explore61-slurm.md).

A site's Slurm defaults written into ~/.config/ftctl/config.yaml (partition:, account:, a slurm: block) are refused
in one line that names every unknown key once and says where such defaults go: sbatch's own SBATCH_* variables,
which a launch takes as sbatch does, or a run file. (tests/conftest.py gives every test its own XDG_CONFIG_HOME.)
"""

from __future__ import annotations

import pytest
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


# ------------------------------------------------------------------------------------------ --sbatch-arg refusals
@pytest.mark.parametrize(
    "arg,said",
    [
        # held `ftctl launch` until the job ended (a launch stopped meanwhile left the job unrecorded)
        ("--wait", "--sbatch-arg=--wait (--wait): sbatch would wait for the job to end before it says its id"),
        ("-W", "--sbatch-arg '-W' (sbatch's --wait): sbatch would wait for the job to end"),
        # submitted nothing, said as "sbatch printed '' instead of a job id; check that `sbatch` on PATH is Slurm's"
        (
            "--test-only",
            "--sbatch-arg=--test-only (--test-only): sbatch would submit nothing; `ftctl launch --dry-run`",
        ),
        # said as "ftctl writes #SBATCH --array itself": it never does
        (
            "--array=0-3",
            "--sbatch-arg=--array=0-3: ftctl leaves #SBATCH --array out on purpose; one job trains one run",
        ),
        ("--error=e.txt", "--sbatch-arg=--error=e.txt: ftctl leaves #SBATCH --error out on purpose"),
        # sbatch's short forms were "pass one long option per flag ... (no spaces or newlines ...)"
        ("-A lab", "--sbatch-arg '-A lab' (sbatch's --account): ftctl writes #SBATCH --account itself"),
        ("-t30", "--sbatch-arg '-t30' (sbatch's --time): ftctl writes #SBATCH --time itself"),
        (
            "-x node2",
            "--sbatch-arg '-x node2': -x is sbatch's --exclude; pass it long, as one flag: "
            "--sbatch-arg=--exclude=node2 (Slurm",
        ),
        ("-C", "-C is sbatch's --constraint; pass it long, as one flag: --sbatch-arg=--constraint=VALUE"),
    ],
)
def test_sbatch_args_an_sbatch_user_writes_are_said_in_sbatchs_words(arg, said):
    from ftctl.errors import FtctlError
    from tests.render_fixtures import prepared

    with pytest.raises(FtctlError) as e:
        prepared(backend="slurm", gpus="cpu", output_dir="/fixed/out", sbatch_args=[arg])
    assert said in str(e.value) and "\n" not in str(e.value)


def test_sbatch_args_that_pass_through_still_do():
    from tests.render_fixtures import prepared

    args = ["--exclude=node2", "--constraint=a100|h100", "--mail-type=END,FAIL", "--wait-all-nodes=1", "--hold"]
    text = prepared(backend="slurm", gpus="cpu", output_dir="/fixed/out", sbatch_args=args).files["job.sbatch"]
    assert all(f"#SBATCH {a}\n" in text for a in args)


# ------------------------------------------------------------------------------------------ time limit vs lead
def test_a_time_limit_within_slurms_early_signal_of_the_lead_is_said():
    """--time 00:01:00 -o signal_lead_s=30 was taken silently; on the test cluster USR2 came 10 s into the job, before
    its first step: the attempt saved checkpoint-1 and stopped (sbatch: the signal may come up to 60 s early)."""
    from ftctl.spec import build

    notes: list[str] = []
    assert build({"time": "00:01:00", "signal_lead_s": 30}, notes=notes).signal_lead_s == 30
    assert (
        "time=00:01:00 is 30 s longer than signal_lead_s=30, and Slurm may send its USR2 up to 60 s earlier than asked"
        " (man sbatch, --signal): it can come as the job starts, and each attempt stops at its first step; raise --time "
        "past signal_lead_s + 60 s"
    ) in notes
    for time, lead in (("00:02:00", 60), ("01:00:00", 120), ("UNLIMITED", 120)):  # a minute or more: nothing said
        notes = []
        build({"time": time, "signal_lead_s": lead}, notes=notes)
        assert not [n for n in notes if "earlier than asked" in n], (time, notes)


# ------------------------------------------------------------------------------------------ sbatch's refusals (real)
def test_sbatch_refusing_an_exclude_or_a_feature_names_them(slurm_cluster, tmp_path):
    """Both nodes of debug asked for with one excluded: the hint named GPUs, CPUs and memory alone; a --constraint no
    node has was Slurm's "Invalid feature specification" with no hint."""
    from ftctl.errors import FtctlError
    from ftctl.slurm.scheduler import submit

    def refusal(*lines: str) -> str:
        script = tmp_path / "job.sbatch"
        script.write_text("#!/bin/bash\n" + "".join(f"#SBATCH {line}\n" for line in lines) + "true\n")
        with pytest.raises(FtctlError) as e:
            submit(script, tmp_path, env=slurm_cluster.env)
        return str(e.value)

    said = refusal("--partition=debug", "--nodes=2", "--exclude=node2")
    assert "Requested node configuration is not available" in said
    assert "or too few are left by an --sbatch-arg's --exclude, --nodelist or --constraint for its --nodes" in said
    said = refusal("--partition=debug", "--constraint=skylake")
    assert "Invalid feature specification" in said
    assert "--constraint names a feature no node of the cluster has: `sinfo -o '%P %N %f'`" in said


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
