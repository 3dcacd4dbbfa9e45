"""A job's log file as `ftctl logs` prints it: what was appended since the last read, and following it while the
job writes (a Slurm job's slurm-JOB.out, a local run's train.log)."""

from __future__ import annotations

import codecs
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO


def new_decoder():
    """The incremental decoder copy_new takes: a UTF-8 character split between two reads stays whole."""
    return codecs.getincrementaldecoder("utf-8")(errors="replace")


def copy_new(path: Path, offset: int, out: IO[str], decoder) -> int:
    """Write what was appended to ``path`` since ``offset``; returns the new offset."""
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except FileNotFoundError:
        return offset
    text = decoder.decode(data)
    if text:
        out.write(text)
        out.flush()
    return offset + len(data)


def follow(path: Path, writing: Callable[[], bool], out: IO[str], poll_s: float = 0.5) -> None:
    """Print ``path`` and what is appended to it for as long as ``writing()`` says its writer goes on (asked once a
    second at most), then what it wrote last."""
    decoder, offset, asked = new_decoder(), 0, 0.0
    while True:
        offset = copy_new(path, offset, out, decoder)
        now = time.monotonic()
        if now - asked >= max(poll_s, 1.0):
            asked = now
            if not writing():
                copy_new(path, offset, out, decoder)
                return
        time.sleep(poll_s)
