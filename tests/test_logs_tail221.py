"""`ftctl logs --tail N` (-n N): a job's last N lines, read back from the end of its log (a long run's train.log is
~100 MB at a million steps; `ftctl logs -f` printed all of it before following), then with -f what it writes next;
where the log lives elsewhere (docker, SkyPilot) that tool's own tail option."""

from __future__ import annotations

import io
import json
import threading
import time

import pytest
from click.testing import CliRunner

from ftctl import logfile
from ftctl.backend import JobRef
from ftctl.cli import main


def _lines(n: int, start: int = 1) -> str:
    return "".join(f"step {s}/9000  loss 1.2345  ünïcode\n" for s in range(start, start + n))


def test_start_of_last_counts_lines_from_the_end(tmp_path):
    log = tmp_path / "train.log"
    assert logfile.start_of_last(log, 3) == 0  # no file yet: all it will hold is new
    log.write_bytes(b"a\nbb\nccc\n")
    assert [logfile.start_of_last(log, n) for n in (None, 0, 1, 2, 3, 4, 99)] == [0, 9, 5, 2, 0, 0, 0]
    log.write_bytes(b"a\nbb\ncc")  # a last line still being written counts as one
    assert [logfile.start_of_last(log, n) for n in (1, 2, 3)] == [5, 2, 0]
    log.write_bytes(b"")
    assert logfile.start_of_last(log, 2) == 0


def test_the_tail_of_a_large_log_reads_its_end_only(tmp_path, monkeypatch):
    """50 MB (sparse) of log before its last 100 lines: `ftctl logs --tail 3 RUN` prints the last 3, reading a block
    or two from the end (before: no --tail; `ftctl logs` read all 50 MB)."""
    from ftctl.cli import main

    monkeypatch.setenv("FTCTL_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    (run / "spec.json").write_text("{}")
    (run / "metrics.jsonl").write_text(json.dumps({"step": 3, "loss": 2.5}) + "\n")
    log = run / "train.log"
    with open(log, "wb") as fh:
        fh.truncate(50 << 20)
        fh.seek(0, 2)
        fh.write(_lines(100).encode())
    read = []
    real_open = open

    class Counted(io.BufferedReader):
        def read(self, size=-1):
            data = super().read(size)
            read.append(len(data))
            return data

    def counting_open(path, mode="r", *args, **kwargs):
        if "b" in mode and "r" in mode:
            return Counted(io.FileIO(path, "r"))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(logfile, "open", counting_open, raising=False)
    out = CliRunner().invoke(main, ["logs", "--tail", "3", "runs/r1"])
    assert out.exit_code == 0, out.output
    assert out.stdout == _lines(3, start=98)
    assert 0 < sum(read) <= 2 * logfile.TAIL_BLOCK + 4096, sum(read)  # not 50 MB
    read.clear()
    followed = CliRunner().invoke(main, ["logs", "-n", "2", "-f", "runs/r1"])  # nothing writes it: prints and returns
    assert followed.exit_code == 0 and followed.stdout == _lines(2, start=99), followed.output
    assert sum(read) <= 2 * logfile.TAIL_BLOCK + 4096, sum(read)


def test_tail_and_follow_prints_the_last_lines_then_what_is_appended(tmp_path):
    log = tmp_path / "train.log"
    log.write_text(_lines(50))
    out = io.StringIO()
    done = threading.Event()

    def writer():
        deadline = time.monotonic() + 5
        while _lines(1, start=50) not in out.getvalue() and time.monotonic() < deadline:
            time.sleep(0.01)  # the follower has printed the tail: what comes now is new
        with open(log, "a") as fh:
            for s in range(51, 54):
                fh.write(_lines(1, start=s))
                fh.flush()
                time.sleep(0.05)
        done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    logfile.follow(log, lambda: not done.is_set(), out, poll_s=0.02, lines=4)
    thread.join()
    assert out.getvalue() == _lines(4, start=47) + _lines(3, start=51)


def test_docker_and_skypilot_use_their_own_tail(monkeypatch):
    """docker logs --tail N [--follow]; SkyPilot's tail_logs(tail=N) through the bridge (its 0 would mean all)."""
    import subprocess

    from ftctl.docker import backend as docker_backend
    from ftctl.errors import FtctlError
    from ftctl.sky import backend as sky_backend

    calls = []
    monkeypatch.setattr(docker_backend, "_docker", lambda ref=None: "/usr/bin/docker")
    monkeypatch.setattr(subprocess, "call", lambda argv, **kw: calls.append(argv) or 0)
    ref = JobRef("docker", "ftctl-r1-abc", "/runs/r1", "r1", "/runs/r1")
    docker_backend.DockerBackend().logs(ref, True, 20)
    docker_backend.DockerBackend().logs(ref, False)
    assert calls == [
        ["/usr/bin/docker", "logs", "--tail", "20", "--follow", "ftctl-r1-abc"],
        ["/usr/bin/docker", "logs", "ftctl-r1-abc"],
    ]
    asked = []
    monkeypatch.setattr(sky_backend.bridge, "call", lambda op, **kw: asked.append((op, kw)))
    sky = JobRef("skypilot", "c1/3", "/runs/r1", "r1", "s3://b/r1", {"cluster": "c1", "sky_job_id": 3})
    sky_backend.SkyBackend().logs(sky, True, 20)
    assert asked == [
        ("logs", {"follow": True, "tail": 20, "cluster": "c1", "job_id": 3, "managed": False, "cluster_hash": None})
    ]
    with pytest.raises(FtctlError, match="--tail 1, or no --tail for all"):
        sky_backend.SkyBackend().logs(sky, False, 0)


@pytest.mark.parametrize("bad", ["-3", "x"])
def test_a_bad_tail_is_refused_by_click(bad):
    out = CliRunner().invoke(main, ["logs", "--tail", bad, "job"])
    assert out.exit_code == 2 and "Invalid value for '-n' / '--tail'" in out.output and "Traceback" not in out.output


def test_a_slurm_jobs_tail_is_read_from_its_output_file(tmp_path):
    """A Slurm job's log is its slurm-JOB.out on the shared disk: read back from its end as a local run's is."""
    from ftctl.slurm import scheduler

    log = tmp_path / "slurm-17.out"
    log.write_text(_lines(30))
    out = io.StringIO()
    assert scheduler.logs("17", path=log, out=out, lines=2) == log
    assert out.getvalue() == _lines(2, start=29)
