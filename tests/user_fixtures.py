"""Another user of this machine, for tests of what several users share (a group's run directory or FTCTL_CACHE on a
login node): a forked child as nobody where the tests run as root (root's permission checks pass everything), else
as this user with the other user's files made read-only to it."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import traceback
from pathlib import Path

from ftctl.errors import FtctlError

ROOT = os.geteuid() == 0
NOBODY = 65534  # the other user where the tests run as root (root's own permission checks pass everything)


def shared_dir():
    """(for a fixture) A directory every user of the machine reaches (tmp_path is root's own, mode 700, under tests run as root)."""
    d = Path(tempfile.mkdtemp(prefix="ftctl-shared-"))
    d.chmod(0o755)
    yield d
    for p in [d, *d.rglob("*")]:
        if p.is_dir() and not p.is_symlink():
            p.chmod(0o755)
    shutil.rmtree(d, ignore_errors=True)


def theirs(path: Path, mode: int) -> None:
    """``path`` as another user's file or directory of ``mode`` looks to the user as_another_user runs as: as root,
    the mode itself (nobody gets its other bits); else this user's own bits made its other bits."""
    path.chmod(mode if ROOT else (mode & 0o077) | ((mode & 0o007) << 6))


def as_another_user(fn, env: dict[str, str], meanwhile=None) -> tuple[int, str]:
    """``fn()`` in a forked child as another user (nobody as root, else this one: see theirs), with ``env`` set:
    (0, what it returned), (1, "error: ...") for an FtctlError, (2, the traceback) for anything else. ``meanwhile``
    runs here while the child runs."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        code, out = 0, ""
        try:
            os.close(r)
            os.environ.update(env)
            if ROOT:
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
            out = str(fn())
        except FtctlError as e:
            code, out = 1, f"error: {e}"
        except BaseException:
            code, out = 2, traceback.format_exc()
        os.write(w, out.encode())
        os._exit(code)
    os.close(w)
    try:
        if meanwhile:
            meanwhile()
    except BaseException:
        os.kill(pid, signal.SIGKILL)  # it may wait for what meanwhile did not do
        raise
    finally:
        with os.fdopen(r) as f:
            out = f.read()
        _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out
