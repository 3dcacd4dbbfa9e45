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


@pytest.mark.parametrize(
    "args",
    [["plan", "--bogus"], ["lanch"], ["status", "--exit-code"], ["launch", "--method", "x"], ["--bogus"]],
)
def test_clicks_refusals_say_error_as_ftctls_own_do(args):
    """Two styles were printed: click's `Error: ...` for a usage error, ftctl's `error: ...` for the rest. Now one:
    click's usage lines, then the message after ftctl's `error: `, the last line; exit 2 as before."""
    said = CliRunner().invoke(main, args)
    lines = said.output.strip().splitlines()
    assert said.exit_code == 2 and lines[0].startswith("Usage: ") and "--help' for help." in lines[1], said.output
    assert lines[-1].startswith("error: ") and "Error:" not in said.output, said.output


@pytest.mark.parametrize(
    "args,line",
    [
        (["--follow", "logs", "12"], "options of `ftctl logs` go after it: `ftctl logs --follow 12`."),
        (["-f", "logs", "12"], "options of `ftctl logs` go after it: `ftctl logs -f 12`."),
        (["-v", "--tail", "5", "logs", "12"], "`ftctl -v logs --tail 5 12`."),  # ftctl's own -v stays before
        (["--data", "demo", "launch"], "options of `ftctl launch` go after it: `ftctl launch --data demo`."),
        (["--endpoint-url", "http://x", "sync", "ls", "s3://b/r"], "`ftctl sync ls --endpoint-url http://x s3://b/r`."),
        (["--out", "a b", "merge", "r"], "`ftctl merge --out 'a b' r`."),
    ],
)
def test_an_option_before_its_command_is_said_with_the_line_that_works(args, line):
    """`ftctl --follow logs JOB` said only "No such option: --follow" (ftctl parses its own options there)."""
    said = CliRunner().invoke(main, args)
    assert said.exit_code == 2 and said.output.strip().splitlines()[-1].endswith(line), said.output
    option = next(a for a in args if a != "-v")
    assert said.output.strip().splitlines()[-1].startswith(f"error: No such option '{option}' for `ftctl`: ")


def test_an_option_no_command_after_it_takes_names_those_that_do():
    said = CliRunner().invoke(main, ["--json", "logs", "12"]).output.strip().splitlines()[-1]
    assert said == "error: No such option '--json' (`ftctl jobs`, `ftctl plan` and `ftctl status` take it).", said
    said = CliRunner().invoke(main, ["--follow"]).output.strip().splitlines()[-1]
    assert said == "error: No such option '--follow' (`ftctl logs` takes it: `ftctl logs --help`).", said


def test_a_bare_launch_says_first_that_it_is_the_demo(tmp_path, monkeypatch):
    """`ftctl launch` alone (a newcomer probing it) trains the demo model on the demo data here, and said nothing of
    it: its first line now says so, and how to run one's own. Not where the user gave data, nor where the launch
    goes to a cluster or a cloud (the preflight warns of the demo's model and data there)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FTCTL_BACKEND", raising=False)
    said = CliRunner().invoke(main, ["launch", "--dry-run", "--gpus", "cpu"])
    assert said.exit_code == 0, said.output
    assert said.stderr.splitlines()[0] == (
        "note: this is the demo: HuggingFaceTB/SmolLM2-135M-Instruct on bundled conversations, --model's and "
        "--data's defaults; yours: ftctl launch --model ORG/NAME --data FILE.jsonl"
    )
    (tmp_path / "chats.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    mine = CliRunner().invoke(main, ["launch", "--dry-run", "--gpus", "cpu", "--data", "chats.jsonl"])
    assert "this is the demo" not in mine.output
    slurm = ["launch", "--dry-run", "--backend", "slurm", "--gpus", "cpu", "--output", str(tmp_path / "o")]
    assert "this is the demo" not in CliRunner().invoke(main, slurm).output
    # named by hand, the demo's data is no default left out (nor is an error then said second)
    sky = ["launch", "--infra", "aws", "--data", "builtin:demo", "--output", "s3://b/x", "--dry-run"]
    assert CliRunner().invoke(main, sky).output.startswith("error: --gpus is required for --backend sky: ")
    assert CliRunner().invoke(main, sky[:3] + sky[5:]).output.startswith("error: --gpus is required")  # sky's
