"""A disk that fills up (explore24): what a failed save wrote is not left holding its room, and no half row is left.

The full disk is injected (an OSError ENOSPC) where that reaches the same code; the half-row test needs a real one
(tests/disk_fixtures.small_disk: a tmpfs, root only, skipped otherwise).
"""

from __future__ import annotations

import errno
import json

import pytest


def test_a_metrics_row_the_disk_refused_leaves_no_half_row(small_disk):
    """A row appended to metrics.jsonl on a full disk was written up to the end of the file's last block: half a row,
    which the next attempt's start record was appended onto (one line that is neither, dropped by a resume with that
    attempt's record). The file is left as it was."""
    from ftctl.trainer.callbacks import MetricsCallback
    from tests.disk_fixtures import fill

    path = small_disk / "metrics.jsonl"
    rows = json.dumps({"step": 1, "loss": 2.0, "pad": "x" * 3000}) + "\n"
    path.write_text(rows)  # most of a block: the next row fits in part
    fill(small_disk)
    with pytest.raises(OSError) as got:
        MetricsCallback(str(path))._write({"step": 2, "loss": 1.5, "pad": "y" * 2000})
    assert got.value.errno == errno.ENOSPC
    assert path.read_text() == rows
