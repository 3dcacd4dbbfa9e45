"""What ftctl sends to a terminal. A value's control characters are shown, not sent (``printable``). A closed terminal
(an ssh session that dropped, a closed window): its processes get SIGHUP, and from then on every write to it fails
with EIO. A print or a log line would then end what the signal asked to finish (a checkpoint, then a clean stop) with
an error; after a hang-up those writes go to /dev/null instead."""

from __future__ import annotations

import os
import re
import signal

# control characters (C0 but tab and newline, DEL, C1): a value's NUL, carriage return or escape sequence (a path
# holding ESC]0;...BEL, a row's text) would act on the terminal, not show
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """``text`` with its control characters written as Python escapes (\\x00, \\r, \\x1b)."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


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


def caught(signals) -> tuple:
    """``signals`` less SIGHUP where this process ignores it, as `nohup` (or `trap '' HUP`) leaves it: a handler
    for it would undo that. `nohup ftctl launch ... &` stopped, saving a checkpoint, once its terminal closed (the
    launcher, the trainer and torchrun each took SIGHUP over). An ignored SIGHUP stays ignored in the processes it
    starts."""
    return tuple(s for s in signals if not (s == signal.SIGHUP and signal.getsignal(s) == signal.SIG_IGN))
