"""Bad input as a new user meets it (helper 175, /work/notes/task-175-sweep.md): each case was a traceback, a silent
acceptance of nonsense or a message without its fix. Every one is now one line (or one list of problems) that says
what to write instead, exit 2, no traceback; in-process through click's CliRunner, nothing trained or sent."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from ftctl.cli import main

ROWS = "".join(
    json.dumps({"prompt": f"q{i}", "answer": f"a{i}"}) + "\n" for i in range(4)
)  # a dataset with its own field names


def _files(tmp_path):
    """The files the cases name: @/NAME in a case's argv is tmp_path/NAME."""
    (tmp_path / "qa.jsonl").write_text(ROWS)
    (tmp_path / "binary.yaml").write_bytes(b"\xff\xfe\x00\x01garbage")
    (tmp_path / "dataset_info.json").write_text("{not json")
    named = "type: {field_instruction: prompt, field_output: answer}"
    (tmp_path / "axolotl_named.yaml").write_text(f"datasets:\n  - path: {tmp_path}/other.jsonl\n    {named}\n")
    (tmp_path / "axolotl.yaml").write_text(f"datasets:\n  - path: {tmp_path}/qa.jsonl\n  - type: alpaca\n")
    (tmp_path / "lf.yaml").write_text(f"stage: sft\ndataset: qa\ndataset_dir: {tmp_path}\n")
    return tmp_path


PLAN = ["plan", "--gpus", "cpu", "--model-params", "135m"]

CASES = {
    # ftctl build for no GPU tier: built the default A100,H100 image and recorded it as asked for
    "build-for-cpu": (["build", "--gpus", "cpu", "--dry-run"], "ftctl build compiles flash-attn for GPU tiers"),
    "build-for-nothing": (["build", "--gpus", ",", "--dry-run"], "name them (--gpus H100, or A100,H100)"),
    # a run file that is no text (a binary given by mistake): UnicodeDecodeError's traceback
    "binary-run-file": (
        [*PLAN, "-c", "@/binary.yaml"],
        "binary.yaml is not text (byte 1 is no UTF-8): give a run file",
    ),
    "binary-run-file-data-check": (
        ["data", "check", "@/qa.jsonl", "-c", "@/binary.yaml"],
        "binary.yaml is not text (byte 1 is no UTF-8)",
    ),
    # data_columns: a description that is no JSON was json.loads' traceback at launch; a path that is no dataset of
    # the run's, or a misspelt field, was read for no rows (the data then refused as "not a conversation")
    "data-columns-no-json": (
        [*PLAN, "--data", "@/qa.jsonl", "-o", "data_columns=@/qa.jsonl=question"],
        "qa.jsonl: 'question' is no JSON object of ftctl's field -> the data's name of it: e.g. -o 'data_columns=",
    ),
    "data-columns-no-dataset": (
        [*PLAN, "--data", "@/qa.jsonl", "-o", "data_columns=promt=question"],
        "data_columns names 'promt', which is no dataset of data_path or eval_data_path (",
    ),
    "data-columns-of-replaced-axolotl-data": (
        [*PLAN, "-c", "@/axolotl_named.yaml", "--data", "@/qa.jsonl"],
        "; where --data replaced a run file's axolotl datasets, whose entries named their fields, give the new data",
    ),
    "data-columns-misspelt-field": (
        [*PLAN, "--data", "@/qa.jsonl", "-o", 'data_columns=@/qa.jsonl={"instrction": "prompt", "output": 5}'],
        "'instrction' is no field ftctl renames. Did you mean 'instruction'?",
    ),
    # an object store with no bucket was taken (s3://: a local launch went on to write there); a home of no user
    # (~nouser/x) was pathlib's RuntimeError traceback
    "output-no-bucket": ([*PLAN, "--output", "s3://"], "output_dir='s3://' names no bucket: write s3://BUCKET/PATH."),
    "data-no-container": ([*PLAN, "--data", "az:///x.jsonl"], "data_path='az:///x.jsonl' names no container: write"),
    "output-no-such-user": (
        ["launch", "--dry-run", "--backend", "local", "--gpus", "cpu", "--output", "~nouser175/x"],
        "output_dir='~nouser175/x': there is no user 'nouser175' here, whose home ~nouser175 would be: write the path",
    ),
    # a typo'd scheme was looked for as a local directory (chat: "s4:/b/r is not a directory"; status: "No job
    # 's4://b/r' was launched from here"), a home of no user a traceback
    **{
        f"{cmd}-typod-scheme": ([cmd, "s4://b/run", *extra], f"{what} 's4://b/run': unknown storage scheme s4://; use")
        for cmd, extra, what in [
            ("status", [], "JOB"),
            ("logs", [], "JOB"),
            ("cancel", ["--now"], "JOB"),
            ("chat", ["-p", "hi"], "RUN"),
            ("eval", ["--data", "@/qa.jsonl"], "RUN"),
            ("merge", [], "RUN"),
        ]
    },
    "status-no-such-user": (["status", "~nouser175/run"], "JOB '~nouser175/run': there is no user 'nouser175' here"),
    "chat-no-such-user": (["chat", "~nouser175/run", "-p", "hi"], "RUN '~nouser175/run': there is no user 'nouser175'"),
    # FTCTL_* settings of the run's env: a misspelt name was set for nobody, a value the trainer ignores was taken
    "env-misspelt-setting": (
        [*PLAN, "-o", "env=FTCTL_STOP_REQUEST_POLL=2"],
        "env FTCTL_STOP_REQUEST_POLL: ftctl reads no such variable; did you mean FTCTL_STOP_REQUEST_POLL_S?",
    ),
    "env-threads-count": (
        [*PLAN, "-o", "env=FTCTL_CPU_THREADS=4"],
        "env FTCTL_CPU_THREADS=4: it takes auto (each process of a node a share of its cores, what launch sets); a "
        "number of threads is -o env=OMP_NUM_THREADS=N.",
    ),
    "env-poll-negative": (
        [*PLAN, "-o", "env=FTCTL_STOP_REQUEST_POLL_S=-5"],
        "env FTCTL_STOP_REQUEST_POLL_S=-5: give the seconds between asks, a number above 0 (default 10).",
    ),
    # LLaMA-Factory's dataset_info.json that is no JSON: was "Unknown key 'dataset'", as if there were no such file
    "llama-factory-info-no-json": (
        [*PLAN, "-c", "@/lf.yaml"],
        "dataset (run file): @/dataset_info.json, whose entries it names, is not valid JSON (line 1, column 2: ",
    ),
    # an empty path: eval scored nothing and exited 0; data check said "'': no rows: the data is empty"
    "eval-empty-data": (["eval", "@/", "--data", ""], "--data '' names no data: give the held-out file(s)"),
    "data-check-empty-path": (["data", "check", "", "--model", "@/"], "PATHS '' name no data: give a file"),
    # a SkyPilot cluster name SkyPilot refuses was rendered and sent
    "sky-cluster-name": (
        ["render", "--backend", "sky", "--gpus", "A100", "--model-params", "135m", "--cluster", "Bad Name!"],
        "cluster 'Bad Name!': SkyPilot names a cluster with letters, digits, '-', '_' and '.', starting with a letter",
    ),
    # '' (`-c "$RUN"` with RUN unset) was taken as not given: the defaults planned and launched instead
    "empty-run-file": (["plan", "-c", ""], "-c given as '' (an unset shell variable?): give a value, or leave it out"),
    "empty-gpus-and-output": (
        ["launch", "--dry-run", "--gpus", "", "--output", ""],
        "--gpus and --output given as '' (an unset shell variable?): give a value, or leave them out for the default.",
    ),
    # axolotl's datasets of another shape: "Unknown key 'datasets'", though the key is read
    "axolotl-datasets-no-path": (
        [*PLAN, "-c", "@/axolotl.yaml"],
        "'datasets' (run file): entry 2 of 2 has no path: each entry is [{path: FILE, type: ...}]",
    ),
}


def _invoke(tmp_path, argv, env=None):
    _files(tmp_path)
    args = [a.replace("@/", f"{tmp_path}/") for a in argv]
    return CliRunner().invoke(main, args, env=env)


def _refused(result, said):
    out = result.output
    assert result.exit_code == 2, out
    assert "Traceback" not in out and result.exception is None or isinstance(result.exception, SystemExit), out
    assert said in out, out
    assert out.startswith("error: "), out


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_message_with_its_fix(tmp_path, case):
    argv, said = CASES[case]
    _refused(_invoke(tmp_path, argv), said.replace("@/", f"{tmp_path}/"))


def test_data_columns_named_as_given_or_absolute_are_taken(tmp_path):
    """The same dataset named relative in one key and absolute in the other is one dataset."""
    _files(tmp_path)
    named = f'data_columns={tmp_path}/qa.jsonl={{"instruction": "prompt", "output": "answer"}}'
    got = CliRunner().invoke(main, [*PLAN, "--data", f"{tmp_path}/./qa.jsonl", "-o", named])
    assert got.exit_code == 0, got.output


def test_a_user_config_that_is_no_text_is_said_before_any_command(tmp_path, monkeypatch):
    """~/.config/ftctl/config.yaml is read before every command: a binary one was a traceback for all of them."""
    (tmp_path / "ftctl").mkdir()
    (tmp_path / "ftctl" / "config.yaml").write_bytes(b"\xff\xfe\x00")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    _refused(CliRunner().invoke(main, ["jobs"]), "config.yaml is not text (byte 1 is no UTF-8): give ftctl's config")


def test_chat_refuses_a_temperature_of_nan(tmp_path):
    """--temperature nan sampled from nan probabilities and exited 0 (/work/notes/task-175-extra.patch)."""
    said = "--temperature nan: give 0 (greedy) or more, a finite number."
    _refused(CliRunner().invoke(main, ["chat", str(tmp_path), "-p", "hi", "--temperature", "nan"]), said)


def test_a_docker_same_paths_setting_of_no_yes_or_no_is_said(monkeypatch):
    """FTCTL_DOCKER_SAME_PATHS=maybe was read as no, and a remote engine's launch refused for the mounts it says fix."""
    from ftctl.docker import engine
    from ftctl.errors import FtctlError

    monkeypatch.setenv(engine.SAME_PATHS_ENV, "maybe")
    with pytest.raises(FtctlError, match="FTCTL_DOCKER_SAME_PATHS=maybe: set it to 1 where the engine's machine"):
        engine.same_paths()
    monkeypatch.setenv(engine.SAME_PATHS_ENV, "0")
    assert engine.same_paths() is False


def test_every_ftctl_variable_the_code_reads_is_known_so_none_is_taken_for_a_typo():
    """envvars.KNOWN is what `-o env=FTCTL_...` is checked against: a variable read somewhere but missing there would be
    refused as a misspelling of its neighbour (FTCTL_DOCKER_SAME_PATH vs ..._PATHS). Shell-local names of the rendered
    scripts (launch.py's FTCTL_SET, FTCTL_AT) are no settings, nor are the tests' own names envvars exempts from the
    CLI's warning of unknown ones (TESTS_OWN, TESTS_PREFIX)."""
    import re
    from pathlib import Path

    from ftctl.envvars import KNOWN, TESTS_OWN, TESTS_PREFIX

    root = Path(__file__).resolve().parent.parent / "ftctl"
    named = {m for f in root.rglob("*.py") for m in re.findall(r"\bFTCTL_[A-Z0-9_]+\b", f.read_text())}
    assert "FTCTL_DOCKER_SAME_PATHS" in named and "FTCTL_STOP_REQUEST_POLL_S" in named  # the scan sees them
    assert named - KNOWN - TESTS_OWN - {TESTS_PREFIX} == {"FTCTL_SET", "FTCTL_AT"}
