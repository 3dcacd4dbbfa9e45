"""Each time ftctl writes into a job's log or a record says its zone (task 177): a node in UTC and a laptop in Kolkata
wrote the same instant as 03:02 and 08:32 in one log, with nothing saying which zone either was. The rule: a time
written for a person is the writer's local time with its UTC offset (``2026-12-06 08:32:04,123 +0530``), the progress
line's stamp stays UTC and says so, a record for programs (a merge's merged_at) is ISO 8601 with its offset; what
older versions wrote without a zone is still read, as the writer's local time. Each case under two zones or more."""

from __future__ import annotations

import calendar
import json
import logging
import os
import re
import subprocess
import sys
from datetime import datetime

import pytest

from ftctl.progress import clock, logged_step
from tests.test_clock171 import zone  # noqa: F401 - the fixture: TZ and tzset, put back after

NOW = float(calendar.timegm((2026, 12, 6, 0, 50, 0, 0, 0, 0)))  # 00:50 UTC: 06:20 in Kolkata, 16:50 before in LA
STEP = "step 210/400  loss 1.2345  lr 1.00e-04  grad 0.5  3,400 tok/s  ETA 0:05:02"  # an older trainer's: no stamp


@pytest.mark.parametrize(
    "name, shown",
    [
        ("UTC", "2026-12-06 00:20:00,250 +0000"),
        ("Asia/Kolkata", "2026-12-06 05:50:00,250 +0530"),
        ("America/Los_Angeles", "2026-12-05 16:20:00,250 -0800"),
    ],
)
def test_the_trainers_log_line_says_its_zones_offset(zone, name, shown):  # noqa: F811
    from ftctl.trainer.__main__ import ZonedFormatter

    zone(name)
    record = logging.LogRecord("ftctl.trainer", logging.INFO, __file__, 1, "saving checkpoint-210", None, None)
    record.created, record.msecs = NOW - 1800 + 0.25, 250.0
    line = ZonedFormatter("%(asctime)s [rank 0] %(name)s: %(message)s").format(record)
    assert line == f"{shown} [rank 0] ftctl.trainer: saving checkpoint-210"


def test_the_trainer_logs_with_its_zone_in_a_process_of_its_own():
    """log_to_stderr as the trainer's main() calls it, in a process whose zone is set as a node's would be."""
    code = "import logging; from ftctl.trainer.__main__ import log_to_stderr; log_to_stderr(0); logging.getLogger('ftctl.x').info('hi')"
    for name, offset in (("UTC", "+0000"), ("Asia/Kolkata", "+0530")):
        env = {**os.environ, "TZ": name}
        said = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stderr
        assert re.fullmatch(rf"\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d,\d{{3}} \{offset} \[rank 0\] ftctl.x: hi\n", said), said


@pytest.mark.parametrize("here", ["UTC", "America/Los_Angeles", "Asia/Kolkata"])
@pytest.mark.parametrize(
    "written", ["2026-12-06 00:20:00,123 +0000", "2026-12-06 05:50:00,123 +0530", "2026-12-05 16:20:00,123 -0800"]
)
def test_status_dates_a_step_line_by_a_log_line_from_another_zone(zone, here, written):  # noqa: F811
    """An older trainer's unstamped step line, then a line logging dated 30 min ago in the node's zone: status here
    says the step line is over 30 min old, whatever this machine's zone (it read the node's 05:50 as 05:50 here)."""
    zone(here)
    lines = [STEP, f"{written} [rank 0] ftctl.trainer: saving checkpoint-210"]
    said = logged_step(lines, True, written=NOW - 60, now=NOW, job="7").splitlines()
    assert said[0].endswith(f"logged before {clock(NOW - 1800, NOW)}, over 30 min ago"), said


@pytest.mark.parametrize("here", ["UTC", "Asia/Kolkata"])
def test_an_older_trainers_log_line_without_a_zone_is_read_as_local_time(zone, here):  # noqa: F811
    zone(here)
    dated = datetime.fromtimestamp(NOW - 1800).strftime("%Y-%m-%d %H:%M:%S")  # this zone's 30 min ago
    lines = [STEP, f"{dated},123 [rank 0] ftctl.trainer: saving checkpoint-210"]
    said = logged_step(lines, True, written=NOW - 60, now=NOW, job="7").splitlines()
    assert said[0].endswith(f"logged before {clock(NOW - 1800, NOW)}, over 30 min ago"), said


@pytest.mark.parametrize(
    "name, recorded", [("UTC", "2026-12-06T00:50:00+00:00"), ("Asia/Kolkata", "2026-12-06T06:20:00+05:30")]
)
def test_a_merge_records_its_time_with_its_offset(zone, monkeypatch, name, recorded):  # noqa: F811
    from ftctl.trainer import merge

    class Fixed(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime.fromtimestamp(NOW, tz)

    zone(name)
    monkeypatch.setattr(merge, "datetime", Fixed)
    assert merge.merged_now() == recorded
    assert datetime.fromisoformat(recorded).timestamp() == NOW  # one instant, read in any zone


def test_a_merge_record_of_an_older_ftctl_is_still_read(tmp_path):
    """merged_again's warning where the adapter trained over an older ftctl's merge ("YYYY-MM-DD HH:MM", no zone)
    and the merge was made again since by this one: both times said as they are recorded."""
    from ftctl.runpaths import BASE_MERGE, MERGE_RECORD
    from ftctl.trainer.trained import merged_again

    base, run = tmp_path / "merged", tmp_path / "over"
    base.mkdir()
    run.mkdir()
    (run / BASE_MERGE).write_text(json.dumps({"adapter": "..", "adapter_digest": "a", "merged_at": "2026-12-05 14:02"}))
    now = {"adapter": "..", "adapter_digest": "b", "merged_at": "2026-12-06T06:20:00+05:30"}
    (base / MERGE_RECORD).write_text(json.dumps(now))
    said = merged_again(run, str(base))
    assert "it was merged again (at 2026-12-06T06:20:00+05:30, from " in said, said
    assert "the adapter trained over the merge of 2026-12-05 14:02), so the adapter goes onto other weights" in said


@pytest.mark.parametrize("name, offset", [("UTC", "+0000"), ("Asia/Kolkata", "+0530")])
def test_locks_and_a_local_runs_log_say_their_zone(zone, monkeypatch, tmp_path, name, offset):  # noqa: F811
    """What a lock's holder says (`ftctl status`'s "training (pid 7 on node1 since ...)", a second launch's refusal)
    and the line a local run's log starts each launch with: the writer's local time with its offset, as the
    trainer's log lines (a Slurm node in UTC, status read on a laptop in Kolkata)."""
    from ftctl.backend import _launch_lock
    from ftctl.local.backend import _Tee
    from ftctl.runpaths import RunPaths
    from ftctl.trainer.run import only_trainer

    zone(name)
    monkeypatch.delenv("RANK", raising=False)
    when = rf"\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d \{offset}"
    with only_trainer(str(tmp_path / "run")):
        held = RunPaths(tmp_path / "run").train_lock.read_text()
    assert re.fullmatch(rf"pid \d+ on \S+ by .+ since {when}\n", held), held
    fh = _launch_lock(tmp_path / "launch.lock", "runs/r", "ftctl launch")
    fh.close()
    assert re.search(rf" since {when}\)\n$", (tmp_path / "launch.lock").read_text())
    with _Tee(tmp_path / "train.log"):
        pass
    assert re.fullmatch(rf"ftctl: launched {when}\n", (tmp_path / "train.log").read_text())
