"""A trainer killed on this machine (OOM, kill -9) left its lease in the store: the relaunch said the output "is being
trained into by process N on HOST, a job launched elsewhere" for up to STALE_S (explore66 #6). It now says that
process runs here no more and when the lease lapses; it still never takes the lease over early (a container on the
host's network has the host's name and its own pids)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

from ftctl import lease, storage


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _write(out: str, holder: str) -> None:
    record = {"holder": holder, "host": socket.gethostname(), "renewed_unix": time.time()}
    storage.filesystem(out)[0].pipe_file(lease.uri_of(out)[5:], json.dumps(record).encode())  # s3:// left out


def test_a_lease_of_a_process_gone_from_this_machine_says_so(s3_bucket):
    out = f"{s3_bucket}/runs/r3"
    _write(out, f"process {_dead_pid()} on {socket.gethostname()}")
    said = lease.refusal(out)
    assert said and "runs on this machine no more (killed, or it runs in a container" in said, said
    assert "if not renewed, lapses 1" in said and "the same launch goes ahead then" in said
    assert "launched elsewhere" not in said


def test_a_live_process_here_and_another_hosts_keep_the_elsewhere_line(s3_bucket):
    out = f"{s3_bucket}/runs/r4"
    for holder in (f"process {os.getpid()} on {socket.gethostname()}", "process 1 on another-host"):
        _write(out, holder)
        said = lease.refusal(out)
        assert said and said.startswith(f"{out} is being trained into by {holder}"), said
