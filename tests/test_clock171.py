"""`ftctl status` reads the same whatever the time of day, the date or this machine's time zone (task 171): a CI that
ran at 00:2x UTC failed where a test expected a line of 3 h ago to be today's. Each case here has a fixed clock and
zone (CI runs in UTC, users elsewhere): a step line's age comes from its UTC stamp whatever the zone, its time of day
is shown in this machine's local time, with the date where that is another local day."""

from __future__ import annotations

import calendar
import time

import pytest

from ftctl.progress import clock, logged_step

LINE = "step 210/400  loss 1.2345  lr 1.00e-04  grad 0.5  3,400 tok/s  ETA 0:05:02"
ZONES = ("UTC", "Asia/Kolkata", "America/Los_Angeles", "Pacific/Kiritimati", "Australia/Darwin")


@pytest.fixture
def zone(monkeypatch):
    """Set this process's time zone (TZ, then tzset), put back after the test."""

    def set_zone(name: str) -> None:
        monkeypatch.setenv("TZ", name)
        time.tzset()

    yield set_zone
    monkeypatch.undo()
    time.tzset()


def _utc(*fields: int) -> float:
    return float(calendar.timegm((*fields, 0, 0, 0)))


@pytest.mark.parametrize(
    "name, shown",
    [
        ("UTC", "2026-12-05 21:20 UTC"),  # 3 h before 00:20 UTC: yesterday's
        ("Asia/Kolkata", "02:50 IST"),  # 05:50 there: today's
        ("America/Los_Angeles", "13:20 PST"),  # 16:20 on the 5th there: today's
        ("Pacific/Kiritimati", "11:20 +14"),  # UTC+14
        ("Australia/Darwin", "06:50 ACST"),  # UTC+9:30
    ],
)
def test_a_step_line_of_3_h_ago_at_00_20_utc_reads_in_the_local_day(zone, name, shown):
    zone(name)
    said = logged_step([f"{LINE}  21:20:00 UTC"], True, now=_utc(2026, 12, 6, 0, 20, 0), job="c/1").splitlines()
    assert said[0].endswith(f"~5 min left at that step, logged at {shown}, 3 h ago"), said
    assert said[1].startswith("no step logged for 3 h where one came every ~6 min"), (
        said
    )  # one line: 210 steps since the start


@pytest.mark.parametrize("name", ZONES)
def test_a_stamp_seconds_before_utc_midnight_is_seconds_old_in_every_zone(zone, name):
    zone(name)
    midnight = _utc(2026, 12, 6, 0, 0, 10)
    assert (
        logged_step([f"{LINE}  23:59:50 UTC"], True, now=midnight)
        .splitlines()[0]
        .endswith(
            f"logged at {'2026-12-05 ' if name == 'UTC' else ''}{time.strftime('%H:%M %Z', time.localtime(midnight - 20))}, 20 s ago"
        )
    )
    new_year = _utc(2027, 1, 1, 0, 10, 0)  # the first of a month and of a year
    assert logged_step([f"{LINE}  23:50:00 UTC"], True, now=new_year).splitlines()[0].endswith(", 20 min ago")


def test_local_midnight_between_a_line_and_now_dates_the_line(zone):
    zone("America/Los_Angeles")  # 08:00:10 UTC is 00:00:10 there
    now = _utc(2026, 12, 6, 8, 0, 10)
    assert logged_step([f"{LINE}  07:59:50 UTC"], True, now=now).endswith("logged at 2026-12-05 23:59 PST, 20 s ago")
    zone("UTC")
    assert logged_step([f"{LINE}  07:59:50 UTC"], True, now=now).endswith("logged at 07:59 UTC, 20 s ago")
    # a daylight-saving change between them (2 a.m. PST -> 3 a.m. PDT, 2027-03-14): the same day, one hour apart
    zone("America/Los_Angeles")
    assert clock(_utc(2027, 3, 14, 9, 59, 0), _utc(2027, 3, 14, 10, 1, 0)) == "01:59 PST"
    assert clock(_utc(2027, 3, 14, 10, 1, 0), _utc(2027, 3, 14, 10, 2, 0)) == "03:01 PDT"


@pytest.mark.parametrize("name", ["UTC", "Pacific/Kiritimati", "America/Los_Angeles"])
def test_a_leases_age_by_the_stores_clock_spans_utc_midnight_in_every_zone(zone, name):
    """A lease's age is the store's answer's Date less its write's time (ftctl.lease._version), both UTC: 15 s across
    UTC midnight and a new year, whatever this machine's zone (libfaketime could not drive the lease tests' threads:
    task-171-clock.md)."""
    import datetime
    import json
    from types import SimpleNamespace

    from ftctl import lease

    zone(name)
    written = datetime.datetime(2026, 12, 31, 23, 59, 50, tzinfo=datetime.timezone.utc)
    date = "Fri, 01 Jan 2027 00:00:05 GMT"
    s3 = SimpleNamespace(
        protocol=("s3",),
        call_s3=lambda *a, **k: {
            "ETag": '"e"',
            "LastModified": written,
            "ResponseMetadata": {"HTTPHeaders": {"date": date}},
        },
    )
    assert lease._version(s3, "b/runs/r/.ftctl/train-lease") == ('"e"', 14.0)  # less a second: whole seconds
    meta = json.dumps({"generation": "7", "updated": "2026-12-31T23:59:50.000Z"})
    gcs = SimpleNamespace(protocol=("gcs", "gs"), call=lambda *a: ({"Date": date}, meta))
    assert lease._version(gcs, "b/runs/r/.ftctl/train-lease") == ("7", 14.0)
