"""Helper 300: a multi-node Slurm job's rendezvous port (render.head_port_lines) when jobs start at once on one head node.

The port lines of the rendered script run in a real bash with a real flock, as the batch scripts of several jobs on one
head node; their lock files in the test's directory, not the machine's /var/tmp."""

from __future__ import annotations

import os
import socket
import subprocess

from ftctl.slurm.render import RDZV_LOCK
from tests.render_fixtures import prepared

FLAGS = dict(backend="slurm", gpus="2x1xA100", model_name_or_path="meta-llama/Llama-3.2-1B", output_dir="/f/o")


def _port_lines(tmp_path, lock: str | None = None) -> str:
    """The script's lines from RDZV_PORT= to its export, their lock files under ``lock`` (tmp_path's by default)."""
    lines = prepared([], **FLAGS).text.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("RDZV_PORT="))
    code = "\n".join(lines[first : lines.index("export RDZV_PORT") + 1])
    assert RDZV_LOCK in code
    return code.replace(RDZV_LOCK, lock or f"{tmp_path}/rdzv-")


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("", port))
            return True
        except OSError:
            return False


def _next_free(port: int) -> int:
    """The first port from ``port`` that this machine's other processes do not hold."""
    while not _bindable(port):
        port += 1
    return port


def test_multi_node_jobs_starting_at_once_on_one_head_node_take_ports_apart(tmp_path):
    """Job 3777's port (29501 + 777) is taken on the head node, so it walks to 29502 + 777: job 3778's own, which
    started at once and took it too (neither's store listened yet: a job's torchrun starts seconds to minutes after
    its port is chosen), as did job 2777 (1000 apart from 3777). The second torchrun would take the first's c10d
    store for its own and fail when that job ended. Each script now holds its port's lock while it runs; a job
    started once they ended takes the port again."""
    code = _port_lines(tmp_path) + '\necho "$RDZV_PORT"\nread -r _ || :'  # the job goes on until the test ends it
    base = 29501 + 777
    taken = socket.socket()
    taken.bind(("127.0.0.1", base))
    taken.listen()
    jobs = []

    def start(job: str) -> int:
        proc = subprocess.Popen(["bash", "-c", code], env={"SLURM_JOB_ID": job, "PATH": "/usr/bin:/bin"},
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        jobs.append(proc)
        return int(proc.stdout.readline())

    try:
        first = start("3777")
        assert first == _next_free(base + 1)
        second = start("3778")  # its own port is where job 3777 walked to
        assert second == _next_free(first + 1)
        third = start("2777")
        assert third == _next_free(second + 1)
        for proc in jobs:
            proc.stdin.close()
            assert proc.wait(10) == 0 and proc.stderr.read() == ""
        jobs.clear()
        assert start("4777") == first  # the ended jobs' locks went with their processes
    finally:
        taken.close()
        for proc in jobs:
            proc.kill()
            proc.wait()


def test_without_flock_or_a_lock_file_the_port_is_chosen_as_before(tmp_path):
    """Where the head node has no flock, one without -E (util-linux before 2.25, as RHEL 7's 2.23), or its lock file
    cannot be made (a /var/tmp not writable), the script takes the job's port by the listening check alone,
    silently: it neither walks through every port (a failed flock read as a held lock) nor stops the job."""
    bare, old = tmp_path / "bin", tmp_path / "old"  # the commands the lines run, less flock; an old flock
    for directory in (bare, old):
        directory.mkdir()
        for name in ("awk", "grep"):
            os.symlink(f"/usr/bin/{name}", directory / name)
    (old / "flock").write_text("#!/bin/sh\necho \"flock: invalid option -- 'E'\" >&2\nexit 64\n")
    (old / "flock").chmod(0o755)
    port = 29501 + 555
    assert _bindable(port)
    for path, lock in ((str(bare), None), (str(old), None), ("/usr/bin:/bin", f"{tmp_path}/no/such/dir/rdzv-")):
        code = _port_lines(tmp_path, lock) + '\necho "$RDZV_PORT"'
        out = subprocess.run(["/bin/bash", "-c", code], env={"SLURM_JOB_ID": "5555", "PATH": path}, capture_output=True,
                             text=True, timeout=10)  # fmt: skip
        assert (out.returncode, out.stdout, out.stderr) == (0, f"{port}\n", ""), (path, out)
