"""Review 60b: since tokens are written into the cache entry's new directory as they are tokenized (06b9df0), a
trainer SIGKILLed while tokenizing (the OOM killer, Slurm's KillWait, a node lost) left a KEY.XXXX.new of up to the
whole token size, which drop_stale_entries keeps (this start's key) until the run's end: one more each attempt. A new
entry's directory names its host and pid; the next writer on that host removes those whose process is gone."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from ftctl.trainer import data


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid  # reaped: no process has it now (short of reuse within this test)


def test_a_killed_writers_half_entry_is_removed_by_the_next_on_its_host(tmp_path):
    host = socket.gethostname().split(".")[0]
    key = "0123456789abcdef0123456789abcdef"
    entry = tmp_path / key
    dead = tmp_path / f"{key}.{host}-{_dead_pid()}.k1ll3d.new"
    dead_old = tmp_path / f"{key}.{host}-{_dead_pid()}.k1ll3d.old"
    alive = tmp_path / f"{key}.{host}-{os.getppid()}.wr1t1n.new"  # a live process of this host: being written
    elsewhere = tmp_path / f"{key}.other-node-{_dead_pid()}.wr1t1n.new"  # another host's, on a shared disk
    other_key = tmp_path / f"fedcba9876543210fedcba9876543210.{host}-{_dead_pid()}.x.new"
    for path in (dead, dead_old, alive, elsewhere, other_key):
        path.mkdir()
        (path / "tokens.arrow").write_bytes(b"\0" * 1024)
    new = data._new_entry(entry)
    assert new and os.path.basename(new).startswith(f"{key}.{host}-{os.getpid()}.") and new.endswith(".new")
    assert not dead.exists() and not dead_old.exists()
    assert alive.exists() and elsewhere.exists() and other_key.exists()
