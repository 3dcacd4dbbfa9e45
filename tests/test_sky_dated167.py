"""A SkyPilot job's step line in `ftctl status` is dated: the trainer's progress line ends with the time it was logged
(``14:02:05 UTC``), as SkyPilot's log tail gives no time and its log file is on the node. Before, the line said
``ETA 21:12:48 at that line of its log`` whether that line was 20 s or 3 hours old (task 167). SkyPilot's SDK a
stand-in (tests/test_sky_jobs.py); the trainer's line with its time: tests/test_trainer.py (its ETA test)."""

from __future__ import annotations

import calendar
import time

from ftctl import backend
from ftctl.progress import clock, logged_step
from ftctl.sky.backend import SkyBackend
from tests.test_sky_jobs import FakeSky, cluster_job

NOW = calendar.timegm((2026, 12, 5, 14, 2, 25, 0, 0, 0))  # 14:02:25 UTC
LINE = "step 210/400  loss 1.2345  lr 1.00e-04  grad 0.5  3,400 tok/s  ETA 0:05:02"  # 1.59 s a step, 10 a line


def _stamp(at: float) -> str:
    return time.strftime("%H:%M:%S UTC", time.gmtime(at))


def test_a_stamped_step_line_is_dated_by_its_own_time_without_the_logs():
    lines = ["step 200/400  loss 1.3  ETA 0:05:18", f"{LINE}  14:02:05 UTC", "2026-12-05 14:02:06,000 x: saving"]
    at = clock(NOW - 20, NOW)  # its time of day in this machine's zone
    # 20 s after it (a line after it does not make it older: it says its own time): ETA 302 s counted from then
    said = logged_step(lines, True, now=NOW, job="c/1")
    assert said == f"step 210/400 (52%)  loss 1.2345  3,400 tok/s  1.6 s a step, ~5 min left, logged at {at}, 20 s ago"
    # 40 min: no step since, where one came every 16 s: may be stuck, and where to look
    stuck = logged_step(lines, True, now=NOW + 40 * 60 - 20, job="c/1").splitlines()
    at = clock(NOW - 20, NOW + 40 * 60 - 20)  # dated where local midnight falls in between (UTC+9:30: Darwin)
    assert stuck[0].endswith(f"~5 min left at that step, logged at {at}, 40 min ago"), stuck
    assert stuck[1].startswith("no step logged for 40 min where one came every ~16 s: the job may be stuck"), stuck
    assert stuck[1].endswith("`ftctl logs c/1` shows what it wrote last"), stuck
    # the stamp wins over a log's last write (Slurm's mtime, a later line's)
    assert logged_step(lines, True, written=NOW - 3600, now=NOW).endswith("20 s ago")
    # ended: the step alone; an unstamped line of an unknown time: the trainer's ETA as it was
    assert logged_step(lines, False, now=NOW) == "step 210/400 (52%)  loss 1.2345  3,400 tok/s"
    assert logged_step([LINE], True, now=NOW).endswith("ETA 0:05:02 at that line of its log")


def test_a_stamp_of_before_midnight_is_yesterdays_and_a_node_clock_ahead_is_today():
    midnight = calendar.timegm((2026, 12, 6, 0, 0, 10, 0, 0, 0))
    assert logged_step([f"{LINE}  23:59:50 UTC"], True, now=midnight).endswith(", 20 s ago")
    # the node's clock 30 s ahead of this one: logged "now", not 24 h ago
    assert logged_step([f"{LINE}  14:02:55 UTC"], True, now=NOW).endswith(", 0 s ago")


def test_status_of_a_running_skypilot_job_dates_its_step_line_and_says_it_may_be_stuck(monkeypatch):
    now = time.time()
    log = "\x1b[36m(head, rank=0, pid=7)\x1b[0m {line}  {stamp}\n"
    sky = FakeSky(now="hash-1", jobs={1: "RUNNING"}, log=log.format(line=LINE, stamp=_stamp(now - 30))).install(
        monkeypatch
    )
    backend.record_job(cluster_job(1))
    lines = backend.status_lines("c/1")
    assert lines[0] == "c/1 RUNNING (on cluster c)"
    assert lines[1].startswith("step 210/400 (52%)  loss 1.2345  3,400 tok/s  1.6 s a step, ~") and " s ago" in lines[1]
    assert "logged at " in lines[1] and "at that line of its log" not in lines[1], lines
    # no step for 3 h where (its one step line: 210 steps since the start) one came every ~6 min
    sky.log = log.format(line=LINE, stamp=_stamp(now - 3 * 3600))
    lines = backend.status_lines("c/1")
    then = time.localtime(now - 3 * 3600)  # yesterday's, dated, when this runs before 03:00
    shown = time.strftime("%H:%M %Z" if then[:3] == time.localtime(now)[:3] else "%Y-%m-%d %H:%M %Z", then)
    assert lines[1].endswith(f"logged at {shown}, 3 h ago"), lines
    assert lines[2].startswith("no step logged for 3 h where one came every ~6 min: the job may be stuck"), lines
    assert "`ftctl logs c/1`" in lines[2]
    assert SkyBackend().logged_progress(cluster_job(1), running=False) is None  # ended: `ftctl logs` has every line
