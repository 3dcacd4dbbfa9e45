"""A job's log file as `ftctl logs` prints it: its last N lines (read back from its end), what was appended since the
last read, and following it while the job writes (a Slurm job's slurm-JOB.out, a local run's train.log)."""

from __future__ import annotations

import codecs
import contextlib
import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO


def new_decoder():
    """The incremental decoder copy_new takes: a UTF-8 character split between two reads stays whole."""
    return codecs.getincrementaldecoder("utf-8")(errors="replace")


COPY_CHUNK = 1 << 20  # bytes read at a time: a long run's log (100 MB at a million steps) was read whole, 3x in memory


def copy_new(path: Path, offset: int, out: IO[str], decoder) -> int:
    """Write what was appended to ``path`` since ``offset``; returns the new offset."""
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        return offset
    with fh:
        fh.seek(offset)
        while data := fh.read(COPY_CHUNK):
            if text := decoder.decode(data):
                out.write(text)
            offset += len(data)
    out.flush()
    return offset


TAIL_BLOCK = 64 * 1024  # bytes read at a time back from a log's end for its last lines (`ftctl logs --tail N`)


def start_of_last(path: Path, lines: int | None) -> int:
    """The offset where ``path``'s last ``lines`` lines begin (a last line still without its newline counts as one),
    found reading back from its end a block at a time: a long run's log is not read to print its end. 0 where
    ``lines`` is None (all of it) or there is no file yet (all it will hold is new)."""
    if lines is None:
        return 0
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        return 0
    with fh:
        end = pos = fh.seek(0, os.SEEK_END)
        if lines <= 0:
            return end
        found = 0
        while pos > 0:
            size = min(TAIL_BLOCK, pos)
            pos -= size
            fh.seek(pos)
            block = fh.read(size)
            # the file's own last newline ends its last line; each one before it starts a line
            i = len(block) - 1 if pos + size == end and block.endswith(b"\n") else len(block)
            while (i := block.rfind(b"\n", 0, i)) >= 0:
                found += 1
                if found == lines:
                    return pos + i + 1
        return 0


def hold(fh) -> None:
    """Mark an open log as being written (an exclusive flock its writer keeps until it closes it): see ``held``."""
    with contextlib.suppress(OSError):  # no locks on this file system: followers go by the trainer's own lock
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)


def held(path: Path) -> bool:
    """Whether a writer holds ``path`` (``hold``): a run's launcher, from before its model loads to its last line."""
    try:
        with open(path, "rb") as fh:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False


def follow(
    path: Path, writing: Callable[[], bool], out: IO[str], poll_s: float = 0.5, lines: int | None = None
) -> None:
    """Print ``path`` (its last ``lines`` lines where given) and what is appended to it for as long as ``writing()``
    says its writer goes on (asked once a second at most), then what it wrote last."""
    decoder, offset, asked = new_decoder(), start_of_last(path, lines), 0.0
    while True:
        offset = copy_new(path, offset, out, decoder)
        now = time.monotonic()
        if now - asked >= max(poll_s, 1.0):
            asked = now
            if not writing():
                copy_new(path, offset, out, decoder)
                return
        time.sleep(poll_s)
