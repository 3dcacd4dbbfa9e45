"""One failure, one message: the records failing trainer ranks leave, and what the launcher makes of them."""

from __future__ import annotations

import json
import re
import signal
import socket

import pytest

from ftctl import failures
from tests.trainer_fixtures import make_run, run_trainer_cli, subprocess_env, write_spec

HARMLESS = ("gemm_4bit_forward", "Setting accelerator to CPU", "FutureWarning", "Loading weights", "it/s]")


def _rec(rank, kind, message="m", host="host-a"):
    return {"rank": rank, "host": host, "kind": kind, "message": message}


# ------------------------------------------------------------------------------------------ records
def test_record_writes_one_file_per_rank_atomically(tmp_path, monkeypatch):
    monkeypatch.setenv("FTCTL_FAILURE_DIR", str(tmp_path / "failures"))
    monkeypatch.setenv("RANK", "3")
    path = failures.record("config", "bad plan: use --gpus 1xA100\n")
    assert path == tmp_path / "failures" / "rank-3.json"
    assert json.loads(path.read_text()) == {
        "rank": 3,
        "host": socket.gethostname(),
        "kind": "config",
        "message": "bad plan: use --gpus 1xA100",
    }
    failures.record("error", "RuntimeError: later")  # the same rank again replaces its record
    assert [p.name for p in (tmp_path / "failures").iterdir()] == ["rank-3.json"]  # no temporary file left
    assert failures.read(tmp_path / "failures")[0]["kind"] == "error"


def test_record_without_a_directory_writes_nothing(monkeypatch):
    monkeypatch.delenv("FTCTL_FAILURE_DIR", raising=False)
    assert failures.record("error", "x") is None


def test_record_refuses_an_unknown_kind(tmp_path):
    with pytest.raises(ValueError, match="config, memory, error, interrupted"):
        failures.record("oops", "x", directory=str(tmp_path))


def test_read_sorts_by_rank_and_skips_what_is_not_a_record(tmp_path):
    for rank in (10, 2):
        (tmp_path / f"rank-{rank}.json").write_text(json.dumps(_rec(rank, "interrupted")))
    (tmp_path / "rank-5.json").write_text('{"rank": 5, "kin')  # cut short: not a record
    (tmp_path / ".rank-7.json.99.tmp").write_text(json.dumps(_rec(7, "config")))
    (tmp_path / "rank-8.json").write_text(json.dumps(_rec(8, "weird")))
    assert [r["rank"] for r in failures.read(tmp_path)] == [2, 10]
    assert failures.read(tmp_path / "missing") == []
    assert failures.read(None) == []


def test_summarize_names_the_cause_not_the_ranks_stopped_after_it():
    records = [_rec(0, "interrupted"), _rec(3, "config", "bad data: row 7", "host-b"), _rec(5, "error")]
    assert failures.summarize(records) == ("rank 3 on host-b: bad data: row 7", False)
    records = [_rec(0, "interrupted"), _rec(6, "error", "RuntimeError: CUDA error"), _rec(2, "error", "E: x")]
    assert failures.summarize(records) == ("rank 2 on host-a: E: x", False)
    # the rank out of memory, not rank 0 failing in the collective it left
    records = [_rec(0, "error", "DistBackendError: NCCL"), _rec(1, "memory", "out of memory on GPU 1", "host-b")]
    assert failures.summarize(records) == ("rank 1 on host-b: out of memory on GPU 1", False)


def test_summarize_says_a_relaunch_helps_only_after_interruptions_or_no_record():
    line, resumable = failures.summarize([_rec(1, "interrupted", "interrupted by SIGTERM"), _rec(0, "interrupted")])
    assert (line, resumable) == ("rank 0 on host-a: m", True)
    line, resumable = failures.summarize([])
    assert resumable and "killed" in line and "\n" not in line


def test_exception_line_is_type_and_message():
    try:
        {}["missing"]
    except KeyError as e:
        assert failures.exception_line(e) == "KeyError: 'missing'"


def test_a_failed_jobs_status_says_the_trainers_error_not_only_its_exit_code(tmp_path, monkeypatch):
    """`ftctl status` of a failed Slurm or docker job: the trainer's own line from the log's end (the last one; the
    traceback torchrun prints after it is not the cause), only for a failed job."""
    from ftctl.backend import JobRef, JobState, JobStatus, record_job, status_lines
    from ftctl.docker.backend import DockerBackend

    log = "step 1\nerror: No data at /mnt/x.json\nerror: rank 1: Cannot read /mnt/x.json\nTraceback (most recent...\n"
    assert failures.error_line(log) == "rank 1: Cannot read /mnt/x.json"
    assert failures.error_line("Traceback\n  error: indented is not the trainer's\n") is None
    # a rank killed without a word is the cause; its peer's connection error, logged after it, an effect
    killed = failures.killed_line("rank 1 on node2", "SIGKILL")
    assert "out-of-memory" in killed and "out-of-memory" not in failures.killed_line("rank 0 on n1", "SIGSEGV")
    two_nodes = f"step 3\n{killed}\nerror: RuntimeError: [gloo] Read error: Connection reset by peer\n"
    assert failures.error_line(two_nodes) == killed.removeprefix("error: ")
    # only the last attempt's (a requeued job's log is appended to): the first attempt's kill is history
    attempt = failures.ATTEMPT_LINE.format(job=7, attempt=1)
    requeued = f"{two_nodes}{attempt} on node[1-2] (head node1)\nerror: No data at /x.json\n"
    assert failures.error_line(requeued) == "No data at /x.json"
    # a multi-line error (a data file's rows) keeps its indented lines, up to SHOWN_LINES
    rows = "".join(f"  - long.jsonl line {i}: longer than model_max_length\n" for i in range(1, 12))
    said = failures.error_line(f"error: 11 problem(s) in the training data: fix or remove these rows:\n{rows}done\n")
    assert said.splitlines()[1] == "  - long.jsonl line 1: longer than model_max_length"
    assert len(said.splitlines()) == 1 + failures.SHOWN_LINES + 1 and said.endswith("... 3 more in the job's log")
    monkeypatch.setenv("FTCTL_HOME", str(tmp_path))
    record_job(JobRef("docker", "c1", str(tmp_path / "run"), "n", str(tmp_path / "run")))
    state = JobStatus(JobState.FAILED, "c1 FAILED exit 1")
    monkeypatch.setattr(DockerBackend, "status", lambda self, ref: state)
    monkeypatch.setattr(DockerBackend, "log_tail", lambda self, ref: log)
    assert status_lines("c1") == ["c1 FAILED exit 1", "error: rank 1: Cannot read /mnt/x.json"]
    state = JobStatus(JobState.SUCCEEDED, "c1 SUCCEEDED exit 0")
    assert status_lines("c1") == ["c1 SUCCEEDED exit 0"]


def test_a_slurm_jobs_log_tail_is_the_end_of_its_log_in_the_run_dir(tmp_path):
    from ftctl.backend import JobRef
    from ftctl.slurm.backend import SlurmBackend

    (tmp_path / "slurm-42.out").write_text("x" * 100_000 + "\nerror: Cannot read /mnt/x.json\nftctl: torchrun: ...\n")
    said = SlurmBackend().log_tail(JobRef("slurm", "42", str(tmp_path), "n", str(tmp_path)))
    assert len(said) == 64 * 1024 and failures.error_line(said) == "Cannot read /mnt/x.json"


# ------------------------------------------------------------------------------------------ the trainer's side
def test_trainer_records_a_config_error_and_leaves_the_message_to_the_launcher(tmp_path):
    bad = tmp_path / "spec.json"
    bad.write_text("{}")
    proc = run_trainer_cli(bad, env=subprocess_env(FTCTL_FAILURE_DIR=tmp_path / "f"))
    assert proc.returncode == 2
    assert proc.stderr.count("error: ") == 0 and "Traceback" not in proc.stderr, proc.stderr  # the launcher says it
    [record] = failures.read(tmp_path / "f")
    assert (
        record["kind"] == "config" and record["rank"] == 0 and "not a spec file written by ftctl" in record["message"]
    )
    assert failures.summarize([record])[1] is False


CRASH = """
import ftctl.trainer.run as run
def train(*args, **kwargs):
    raise RuntimeError("boom in the trainer")
run.train = train
"""
SIGTERM_WHILE_TRAINING = """
import os, signal, time
import ftctl.trainer.run as run
def train(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)
run.train = train
"""


OUT_OF_MEMORY = """
import torch
import ftctl.trainer.run as run
from tests.test_gpu_memory import oom
def train(*args, **kwargs):
    raise oom(39.39, 0.21, 38.9)
run.train = train
"""


def _trainer_main(prelude: str, spec_path, env):
    """``python -m ftctl.trainer --spec`` with ``prelude`` run first (it may replace the trainer's parts)."""
    import subprocess
    import sys

    from tests.trainer_fixtures import REPO

    code = prelude + "\nimport sys\nfrom ftctl.trainer.__main__ import main\nsys.exit(main(sys.argv[1:]))\n"
    cmd = [sys.executable, "-c", code, "--spec", str(spec_path)]
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.fixture
def tiny_spec(tiny_model_dir, tiny_data, tmp_path):
    spec, plan = make_run(tiny_model_dir, tiny_data, tmp_path / "out")
    return write_spec(spec, plan, tmp_path / "spec.json")


def test_trainer_records_a_crash_as_its_last_line_without_traceback(tiny_spec, tmp_path):
    proc = _trainer_main(CRASH, tiny_spec, subprocess_env(FTCTL_FAILURE_DIR=tmp_path / "f"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "error" not in proc.stderr, proc.stderr
    alone = _trainer_main(CRASH, tiny_spec, subprocess_env())  # no launcher to report it: the rank says it
    assert alone.stderr.strip().splitlines()[-1] == "error: RuntimeError: boom in the trainer"
    assert alone.stderr.count("error: ") == 1 and "Traceback" not in alone.stderr
    [record] = failures.read(tmp_path / "f")
    assert (record["rank"], record["kind"], record["message"]) == (0, "error", "RuntimeError: boom in the trainer")


def test_trainer_records_running_out_of_gpu_memory_with_the_plan_that_fits(tiny_model_dir, tiny_data, tmp_path):
    spec, plan = make_run(tiny_model_dir, tiny_data, tmp_path / "out", "lora", gpus="1xA100", model_params="1b")
    path = write_spec(spec, plan, tmp_path / "spec.json")
    proc = _trainer_main(OUT_OF_MEMORY, path, subprocess_env(FTCTL_FAILURE_DIR=tmp_path / "f"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    [record] = failures.read(tmp_path / "f")
    assert record["kind"] == "memory", record
    assert record["message"].startswith("out of memory on GPU 0 (42.3 GB): this process held 41.8 GB"), record
    assert re.search(r"Relaunch with (-o \w+=\S+ )+\(", record["message"]), record
    assert "PYTORCH_CUDA_ALLOC_CONF" not in record["message"]  # PyTorch's advice, not what to change


def test_other_ranks_leave_the_message_to_the_launcher(tiny_spec, tmp_path):
    proc = _trainer_main(CRASH, tiny_spec, subprocess_env(FTCTL_FAILURE_DIR=tmp_path / "f", RANK=4))
    assert proc.returncode == 1 and "error" not in proc.stderr.lower(), proc.stderr
    assert [(r["rank"], r["kind"]) for r in failures.read(tmp_path / "f")] == [(4, "error")]
    # without a failure dir nobody else reports it: the rank prints its own line
    proc = _trainer_main(CRASH, tiny_spec, subprocess_env(RANK=4))
    assert proc.stderr.strip().splitlines()[-1] == "error: RuntimeError: boom in the trainer"


def test_trainer_shows_the_traceback_with_ftctl_debug(tiny_spec, tmp_path):
    proc = _trainer_main(CRASH, tiny_spec, subprocess_env(FTCTL_FAILURE_DIR=tmp_path / "f", FTCTL_DEBUG=1))
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "RuntimeError: boom in the trainer" in proc.stderr
    assert failures.read(tmp_path / "f")[0]["kind"] == "error"


def test_trainer_records_an_interruption_as_resumable(tiny_spec, tmp_path):
    proc = _trainer_main(SIGTERM_WHILE_TRAINING, tiny_spec, subprocess_env(FTCTL_FAILURE_DIR=tmp_path / "f"))
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in proc.stderr, proc.stderr
    [record] = failures.read(tmp_path / "f")
    assert record["kind"] == "interrupted" and "SIGTERM" in record["message"]
    assert failures.summarize([record])[1] is True


@pytest.mark.slow
def test_two_ranks_with_bad_data_leave_one_record_each_and_one_message(tiny_model_dir, tmp_path):
    """torchrun, 2 CPU processes, a dataset with an unknown role: both ranks fail in setup."""
    data = tmp_path / "bad.json"
    data.write_text(json.dumps([{"id": "x", "conversations": [{"from": "alien", "value": "hi"}]}]))
    spec, plan = make_run(tiny_model_dir, data, tmp_path / "out", "lora", gpus="2xcpu")
    env = subprocess_env(FTCTL_FAILURE_DIR=tmp_path / "failures")
    proc = run_trainer_cli(write_spec(spec, plan, tmp_path / "spec.json"), nproc=2, env=env)
    assert proc.returncode != 0
    records = failures.read(tmp_path / "failures")
    assert [r["rank"] for r in records] == [0, 1], records
    # a rank may be stopped by torchrun (interrupted) before it reaches the data; one of them found it
    assert any(r["kind"] == "config" and "unknown role 'alien'" in r["message"] for r in records), records
    line, resumable = failures.summarize(records)
    assert resumable is False
    assert re.match(r"rank [01] on \S+: 1 of \d+ rows with errors \(1 listed\) in the data .*bad\.json", line), line
    assert "unknown role 'alien'" in line
    # the ranks themselves: at most rank 0's one line, no trainer traceback, none of the harmless chatter; torchrun's
    # own report of the failed workers (this is torchrun by hand: ftctl's says one line) comes after theirs, its root
    # cause the rank's error from its error file (failures.tell_torchrun), not a link to torch's docs
    ours = proc.stdout + proc.stderr
    ranks, _, report = ours.partition("ChildFailedError")
    assert ranks.count("rows with errors (1 listed) in the data") <= 1, ours
    cause = report.partition("Root Cause")[2]
    assert "rows with errors (1 listed) in the data" in cause and "To enable traceback" not in cause, ours
    assert "ftctl/trainer" not in ours, ours
    for noise in HARMLESS:
        assert noise not in ours, (noise, ours)


def test_the_trainers_lines_are_one_write_each(monkeypatch):
    """The launcher relays the trainer's stderr a line at a time beside its stdout: a line written in two parts (print
    under PYTHONUNBUFFERED) had a log record land between its text and its newline."""
    import io

    from ftctl.trainer import __main__ as trainer_main

    writes = []

    class Out(io.StringIO):
        def write(self, s):
            writes.append(s)
            return len(s)

    monkeypatch.setattr("sys.stdout", Out())
    trainer_main._say("attention: sdpa; Liger kernels: off")
    assert writes == ["attention: sdpa; Liger kernels: off\n"]


def test_torchrun_says_a_failed_rank_in_one_line_and_drops_the_exit_barrier_race(tmp_path, caplog):
    """The launch line's torchrun (ftctl.trainer.torchrun): a rank that failed has said why; torchrun's ~40-line
    ChildFailedError report after it becomes one line; a finished multi-node run's exit barrier race
    (pytorch#69520: 'Error waiting on exit barrier' and its traceback on every node but the store's) is dropped."""
    import logging
    import subprocess
    import sys

    from ftctl.trainer.torchrun import NOISY_LOGGERS, drop_exit_noise

    script = tmp_path / "fails.py"
    script.write_text("import sys\nprint('error: No data at /mnt/x.json', file=sys.stderr)\nsys.exit(3)\n")
    argv = [sys.executable, "-m", "ftctl.trainer.torchrun", "--standalone", "--nproc-per-node", "1", str(script)]
    proc = subprocess.run(argv, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    assert "Traceback" not in proc.stderr and "ChildFailedError" not in proc.stderr, proc.stderr
    assert proc.stderr.count("error: No data at /mnt/x.json") == 1
    assert f"ftctl: torchrun: rank 0 on {socket.gethostname()} exited with 3; its error is above" in proc.stderr

    drop_exit_noise()
    api, rendezvous = (logging.getLogger(name) for name in NOISY_LOGGERS)
    with caplog.at_level(logging.INFO):
        api.error("Error waiting on exit barrier. Elapsed: %s seconds", 0.02)
        rendezvous.warning(
            "The node 'node2_5350_0' has failed to shutdown the rendezvous 'r' due to an error of type X."
        )
        api.error("[default] Worker group FAILED. 3/3 attempts left")  # anything else passes
    assert [r.getMessage() for r in caplog.records] == ["[default] Worker group FAILED. 3/3 attempts left"]


def test_a_save_onto_a_full_disk_says_so_in_one_line(small_disk, monkeypatch):
    """explore6 B3: torch.save onto a full disk said only "[enforce fail at inline_container.cc:672] . unexpected pos
    64 vs 0". The line names the directory, its free space, what one checkpoint needs and the fix."""
    import torch

    import ftctl.preflight
    from ftctl.errors import FtctlError
    from ftctl.trainer.run import room_to_save

    monkeypatch.setattr(ftctl.preflight, "checkpoint_gb", lambda plan: (0.002, 0.001))  # the plan's estimate: 2 MB
    run = [None, str(small_disk), None]  # plan, local_dir, remote_uri
    ckpt = small_disk / "checkpoint-5"
    ckpt.mkdir()
    with pytest.raises(FtctlError) as got, room_to_save(*run, final=False):
        torch.save(torch.zeros(100_000), ckpt / "optimizer.pt")  # 400 KB
    line = str(got.value)
    assert "inline_container" in str(got.value.__cause__)  # what torch says of it
    assert line.startswith(f"no space left on the disk of {small_disk}: saving failed with ")
    assert "one save needs ~2.0 MB; free some space or choose --output on a larger disk" in line
    assert "\n" not in line

    (ckpt / "optimizer.pt").unlink()
    run[2] = "s3://bucket/run"  # staged in the node's cache: the fix is a larger disk for the staging
    with pytest.raises(FtctlError, match=r"small: .*set FTCTL_LOCAL_DIR to a directory on a larger disk"):
        with room_to_save(*run, final=True):
            (ckpt / "model.safetensors").write_bytes(b"w" * 200_000)  # OSError ENOSPC

    from safetensors.torch import save_file

    with pytest.raises(FtctlError, match=rf"^no space left on the disk of {small_disk}: saving failed with "):
        with room_to_save(*run, final=True):  # safetensors raises its own error, "... (os error 28)", no OSError
            save_file({"w": torch.zeros(100_000)}, str(ckpt / "model.safetensors"))

    import shutil

    source = small_disk.parent / "big.bin"  # a copy's error names its source first: the disk is its destination's
    source.write_bytes(b"w" * 200_000)
    with pytest.raises(FtctlError, match=rf"^no space left on the disk of {ckpt}: saving failed with "):
        with room_to_save(*run, final=True):
            shutil.copyfile(source, ckpt / "copied.bin")

    with pytest.raises(RuntimeError, match="not about disks"), room_to_save(*run, final=False):
        raise RuntimeError("not about disks")


def test_a_trainer_whose_disk_fills_up_says_so_in_one_line_to_its_launcher(tiny_model_dir, tiny_data, small_disk):
    """The run dir's disk full at the first checkpoint, where the launcher's failure records and status file are too:
    the status write raised (a traceback, the error never said; the Slurm script then blamed srun or the OOM
    killer), the record's empty temp file stayed, and the record lost, the launcher said only 'exited with code 2'.
    Now the trainer's one line is printed for the launcher to pass on, and nothing half-written is left."""
    spec, plan = make_run(tiny_model_dir, tiny_data, small_disk / "run", max_steps=3)
    spec_path = write_spec(spec, plan, small_disk.parent / "spec.json")
    records, status = small_disk / ".ftctl" / "failures", small_disk / ".ftctl" / "status"
    env = subprocess_env(FTCTL_FAILURE_DIR=records, FTCTL_STATUS_FILE=status)
    proc = _trainer_main(FILL_BEFORE_SAVING.format(disk=str(small_disk)), spec_path, env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    [line] = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    head = f"error: no space left on the disk of {small_disk / 'run'}: saving failed with "
    assert re.match(rf"{re.escape(head)}\d+ (bytes|KB) free", line), line  # was "0.0 MB free"
    assert not list(small_disk.rglob("*.tmp")) and not list(records.glob("*")) and not status.exists()


def test_a_trainer_starting_on_a_full_disk_leaves_the_runs_spec_json_whole(tiny_model_dir, tiny_data, small_disk):
    """The trainer rewrote the run dir's spec.json in place (truncated, then written): on a full disk, or killed
    then, the file a requeued job reads was left cut short. It is written whole or not at all."""
    import os

    from tests.disk_fixtures import fill

    run = small_disk / "run"
    run.mkdir()
    earlier = write_spec(*make_run(tiny_model_dir, tiny_data, run, learning_rate=5e-4), run / "spec.json").read_text()
    setup = ["true " + "x" * 2000]  # this attempt's spec is a page longer than the earlier one
    spec, plan = make_run(tiny_model_dir, tiny_data, run, max_steps=3, setup=setup)  # written elsewhere
    spec_path = write_spec(spec, plan, small_disk.parent / "spec.json")
    assert len(earlier) < 4096 < spec_path.stat().st_size
    os.truncate(filler := fill(small_disk), filler.stat().st_size - 4096)  # a page left: the trainer's lock file
    proc = run_trainer_cli(spec_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.splitlines()[-1].startswith(f"error: no space left on the disk of {run}: saving failed with ")
    assert (run / "spec.json").read_text() == earlier and not list(run.glob(".*.tmp"))


FILL_BEFORE_SAVING = """
from pathlib import Path
from transformers import TrainerCallback
import ftctl.trainer.run as run
from tests.disk_fixtures import fill

class Fill(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if control.should_save:
            fill(Path({disk!r}))

_train = run.train
run.train = lambda spec, plan, callbacks=(), echo=print: _train(spec, plan, [*callbacks, Fill()], echo)
"""


def test_a_signal_after_the_run_ended_records_no_interruption(tmp_path, monkeypatch):
    """Ctrl-C as a finished trainer exits (its distributed shutdown, a big model freed): it recorded 'interrupted
    by SIGINT', wrote the status failed over complete and exited 130, and the launcher said the steps since the last
    checkpoint were lost. Once train() returned, a signal ends the process as the run ended."""
    from ftctl.trainer.__main__ import Failure

    monkeypatch.setenv("FTCTL_FAILURE_DIR", str(tmp_path / "failures"))
    status = tmp_path / "status"
    monkeypatch.setenv("FTCTL_STATUS_FILE", str(status))
    status.write_text("complete\n")
    ended = Failure(0)
    ended.ended = "complete"
    with pytest.raises(SystemExit) as e:
        ended._interrupted(signal.SIGINT, None)
    assert e.value.code == 0 and status.read_text() == "complete\n" and not failures.read(tmp_path / "failures")
    with pytest.raises(SystemExit) as e:  # while it trains: interrupted, as before
        Failure(0)._interrupted(signal.SIGINT, None)
    assert e.value.code == 130 and status.read_text() == "failed\n"
    assert [r["kind"] for r in failures.read(tmp_path / "failures")] == ["interrupted"]
