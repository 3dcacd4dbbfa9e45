"""CLI leftovers of explore51 (helper 252): RUN of chat/eval/merge found by the lookup `ftctl status` uses, a second
run file refused rather than dropped, click's refusals in ftctl's `error:` style, an option given before its command
said with the line that works, and a bare `ftctl launch` saying it trains the demo."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from ftctl.cli import main


def test_run_is_the_output_of_the_job_launched_into_that_run_directory(tmp_path, monkeypatch, capsys):
    """`ftctl status runs/r1` finds the job launched into runs/r1 (backend.find_job); `ftctl merge runs/r1`, after
    runs/r1 was removed here, said only that runs/r1 is no directory: cli._a_place walked the jobs record itself,
    by job id alone. Now both ask find_job, so they cannot disagree."""
    from ftctl.backend import JobRef, find_job, record_job
    from ftctl.cli import _a_place

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "shared" / "r1"
    out.mkdir(parents=True)
    record_job(JobRef("slurm", "4242", str(tmp_path / "runs" / "r1"), "r1", str(out)))  # runs/r1: gone from here
    assert find_job("runs/r1")[1].job_id == "4242"
    assert _a_place("runs/r1", "RUN") == str(out)
    assert f"RUN runs/r1: the output of job 4242, {out}" in capsys.readouterr().err
    assert _a_place("4242", "RUN") == str(out) and "RUN 4242: the output of job 4242" in capsys.readouterr().err
    # a local run's output is its run directory: the same place typed, not a job's output elsewhere
    r2 = str(tmp_path / "runs" / "r2")
    record_job(JobRef("local", r2, r2, "r2", r2))
    assert _a_place("runs/r2", "RUN") == "runs/r2" and "output of job" not in capsys.readouterr().err
    assert _a_place("nosuch", "RUN") == "nosuch"


@pytest.mark.parametrize("command", [["plan"], ["render"], ["launch", "--dry-run"], ["train"], ["data", "check"]])
def test_a_second_run_file_is_refused_not_dropped(tmp_path, command):
    """`-c a.yaml -c b.yaml` trained with b.yaml alone, a.yaml dropped unsaid (click keeps an option's last value)."""
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("method: fft\n")
    b.write_text("no_such_key: 1\n")  # read alone (the old way), it is refused at once: `train` trains nothing
    said = CliRunner().invoke(main, [*command, "-c", str(a), "-c", str(b)])
    assert said.exit_code == 2 and "Traceback" not in said.output, said.output
    assert said.output.strip().splitlines()[-1] == (
        f"error: Two run files, -c {a} and -c {b}: ftctl reads one. Put their keys in one file, or keep one and set "
        "the others' keys with -o KEY=VALUE (flags and -o win over the run file)."
    )
    if command[0] != "data":  # RUN_FILE and -c: the same refusal
        said = CliRunner().invoke(main, [*command, str(a), "-c", str(b)]).output
        assert f"error: Two run files, {a} and -c {b}: ftctl reads one." in said, said


def test_the_same_run_file_twice_is_read_once(tmp_path):
    a = tmp_path / "a.yaml"
    a.write_text("method: fft\n")
    args = ["--gpus", "1xA100", "--model-params", "1b", "--model", "x/y", "--json"]
    said = CliRunner().invoke(main, ["plan", str(a), "-c", str(a), "-c", str(a), *args])
    assert said.exit_code == 0 and '"method": "fft"' in said.stdout, said.output
