"""Helper 320: a multi-node Slurm job's rendezvous port lock (render.head_port_lines). Each port's lock file was left in
/var/tmp for good (one a port ever taken), and the lock was held on fd 9 of the script, which a setup line's or a
prolog's own fd 9 closed or took over (the lock let go while the job ran).

The port lines run in a real bash with a real flock (their lock files in the test's directory), and the whole
rendered script on the real 2-node test cluster (tests/slurm_fixtures.py), its trainer a stand-in."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ftctl.slurm.render import RDZV_LOCK
from tests.render_fixtures import prepared

FLAGS = dict(backend="slurm", gpus="2x1xA100", model_name_or_path="meta-llama/Llama-3.2-1B", output_dir="/f/o")


def _port_lines(lock: str) -> str:
    """The script's lines from RDZV_PORT= to its port lock's EXIT trap, their lock files named ``lock``PORT.lock."""
    lines = prepared([], **FLAGS).text.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("RDZV_PORT="))
    last = next(i for i, line in enumerate(lines) if line.startswith("trap ") and "$RDZV_LOCK" in line)
    return "\n".join(lines[first : last + 1]).replace(RDZV_LOCK, lock)


def _held(path) -> bool:
    """Whether another process holds ``path`` locked (flock), as another job's script would find it."""
    return subprocess.run(["flock", "-n", "-E", "200", str(path), "true"]).returncode == 200


def test_the_lock_outlives_a_setup_lines_fd_9_and_its_file_goes_with_the_job(tmp_path):
    """A setup line that uses fd 9 (flock's own manual's idiom) let the port's lock go while the job ran, and the
    lock file stayed in /var/tmp after it: now the lock is on a descriptor of bash's choosing (10 or above), and the
    script removes its file as it ends."""
    code = _port_lines(f"{tmp_path}/rdzv-")
    code += '\nexec 9>"$PWD/mine"; exec 9>&-\necho "$RDZV_PORT $RDZV_LOCK_FD"\nread -r _ || :'
    job = subprocess.Popen(["bash", "-c", code], cwd=tmp_path, env={"SLURM_JOB_ID": "4320", "PATH": "/usr/bin:/bin"},
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        port, fd = map(int, job.stdout.readline().split())
        lock = tmp_path / f"rdzv-{port}.lock"
        assert _held(lock) and fd >= 10, (fd, os.listdir(tmp_path))
    finally:
        job.stdin.close()
        assert job.wait(10) == 0 and job.stderr.read() == ""
    assert sorted(os.listdir(tmp_path)) == ["mine"]  # the lock file went with the job


def test_a_lock_file_removed_between_open_and_flock_is_not_taken(tmp_path):
    """A job that lets its port go removes the file as it ends: another job that opened that file just before and
    locks it once it is gone would hold a lock on no file at that path, and a third job would make a new one and take
    the same port. A flock that removes the file first (as that ending job would) shows the script tries again and
    holds the file at the path."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "flock").write_text(  # the first flock finds the file it was given removed (its path from /proc)
        '#!/bin/bash\nfd="${@: -1}"; if [ ! -e "$FAKE_ONCE" ]; then : >"$FAKE_ONCE"; '
        'rm -f "$(readlink "/proc/$PPID/fd/$fd")"; fi\nexec /usr/bin/flock "$@"\n'
    )
    (fake / "flock").chmod(0o755)
    locks = tmp_path / "locks"
    locks.mkdir()
    code = _port_lines(f"{locks}/rdzv-") + '\necho "$RDZV_PORT"\nread -r _ || :'
    env = {"SLURM_JOB_ID": "4321", "PATH": f"{fake}:/usr/bin:/bin", "FAKE_ONCE": str(tmp_path / "once")}
    job = subprocess.Popen(["bash", "-c", code], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        port = int(job.stdout.readline())
        assert (tmp_path / "once").exists()  # the fake removed the file once
        assert port == 29501 + 321 and _held(locks / f"rdzv-{port}.lock"), (port, os.listdir(locks))
    finally:
        job.stdin.close()
        assert job.wait(10) == 0 and job.stderr.read() == ""
    assert os.listdir(locks) == []


_TRAINER = """\
#!{python} -S
import os, subprocess, sys
args = sys.argv[1:]
if args[:2] != ["-m", "ftctl.trainer.torchrun"]:
    os.execv({python!r}, [{python!r}, *args])
lock = "{lock}" + os.environ["RDZV_PORT"] + ".lock"
held = subprocess.run(["flock", "-n", "-E", "200", lock, "true"]).returncode
with open(os.path.join(os.environ["FTCTL_RUN_DIR"], "held." + os.environ["SLURM_NODEID"]), "w") as f:
    f.write(f"{{held}} {{lock}}\\n")
with open(os.environ["FTCTL_STATUS_FILE"], "w") as f:
    f.write("complete\\n")
"""


@pytest.mark.slow
def test_on_the_cluster_the_port_stays_locked_past_a_setup_fd_9_and_its_file_goes(e2e, tiny_model_dir):
    """A 2-node job on the real cluster whose setup line closes fd 9: each node's trainer (a stand-in) finds the
    port's lock held by the job's script, and the lock file is gone once the job has ended."""
    fake = e2e.scratch / "fakebin320"
    fake.mkdir()
    (fake / "python3").write_text(_TRAINER.format(python=sys.executable, lock=RDZV_LOCK))
    (fake / "python3").chmod(0o755)
    out = e2e.scratch / "lock320"
    args = ["--backend", "slurm", "--method", "lora", "--gpus", "cpu", "--nodes", "2", "--partition", "debug"]
    args += ["--model", str(tiny_model_dir), "--data", "builtin:demo", "--output", str(out), "-o", "max_requeues=0"]
    job = e2e.launch(*args, "-o", f"setup=exec 9>/dev/null; exec 9>&-; export PATH={fake}:$PATH")
    try:
        state = e2e.cluster.wait_done(job, 60)
    finally:
        e2e.scancel(job)
    log = (out / f"slurm-{job}.out").read_text()
    held = [(out / f"held.{node}").read_text().split() for node in (0, 1)]
    assert state == "COMPLETED" and "trainer exited with 0, status complete" in log, (state, log[-2000:])
    assert [rc for rc, _ in held] == ["200", "200"], (held, log[-2000:])
    assert not os.path.exists(held[0][1]), held  # the job removed its port's lock file as it ended
