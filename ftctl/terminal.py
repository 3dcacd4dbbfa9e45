"""A closed terminal (an ssh session that dropped, a closed window): its processes get SIGHUP, and from then on
every write to it fails with EIO. A print or a log line would then end what the signal asked to finish (a
checkpoint, then a clean stop) with an error; after a hang-up those writes go to /dev/null instead."""

from __future__ import annotations

import os


def ttys() -> tuple[int, ...]:
    """This process's stdout and stderr that are a terminal now. Asked before a hang-up: after one, a hung-up
    terminal no longer says it is one."""
    return tuple(fd for fd in (1, 2) if os.isatty(fd))


def hang_up(fds: tuple[int, ...]) -> None:
    """After SIGHUP: ``fds`` (from :func:`ttys`) write to /dev/null from now on."""
    if not fds:
        return
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in fds:
            os.dup2(null, fd)
    finally:
        os.close(null)
