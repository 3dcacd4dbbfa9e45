"""How often the trainer's rank 0 asks its object-store output for `ftctl cancel`'s stop request: every 10 s (one small
GET against a store that may bill it) unless $FTCTL_STOP_REQUEST_POLL_S says otherwise, which a SkyPilot job gets
with `-o env=...` (the tests' cluster runs: a cancel there waited 5 s on average for the 10 s poll)."""

from __future__ import annotations

import logging
import threading

import pytest

from ftctl import storage
from ftctl.envvars import STOP_POLL_ENV
from ftctl.runpaths import STOP_REQUEST
from ftctl.trainer import callbacks


def test_the_trainer_asks_for_a_stop_as_often_as_its_environment_says(s3_bucket, monkeypatch):
    """A watcher made as the trainer makes it (no poll_s given) sees a request within the variable's seconds."""
    uri = f"{s3_bucket}/run"
    request = storage.join(uri, STOP_REQUEST)
    monkeypatch.setenv(STOP_POLL_ENV, "0.05")
    watcher = callbacks.StopRequest(uri)
    asked = threading.Event()
    ask = watcher._ask

    def first_ask_noted():
        try:
            return ask()
        finally:
            asked.set()

    monkeypatch.setattr(watcher, "_ask", first_ask_noted)
    watcher.start()
    try:
        assert asked.wait(5)  # it read what was there as it started (nothing)
        storage.filesystem(request)[0].pipe_file(request.removeprefix("s3://"), b'{"job": "c/2"}')
        assert watcher.seen.wait(3), f"not seen in 3 s: asked every {watcher.poll_s} s"
    finally:
        watcher.close()


@pytest.mark.parametrize(("given", "seconds"), [(None, 10.0), ("", 10.0), ("2", 2.0), (" 0.5 ", 0.5)])
def test_the_poll_is_10_s_unless_the_variable_gives_seconds(given, seconds, caplog):
    environ = {} if given is None else {STOP_POLL_ENV: given}
    assert callbacks.stop_request_poll_s(environ) == seconds
    assert not caplog.records


@pytest.mark.parametrize("given", ["fast", "0", "-1", "nan", "inf"])
def test_a_poll_that_is_no_number_of_seconds_above_0_is_10_s_and_said(given, caplog):
    """Never a stop for a setting of this (a training run goes on); never a loop of GETs without a pause."""
    caplog.set_level(logging.WARNING, logger="ftctl")
    assert callbacks.stop_request_poll_s({STOP_POLL_ENV: given}) == 10.0
    assert [r.getMessage() for r in caplog.records] == [
        f"{STOP_POLL_ENV}={given} is not a number of seconds above 0: asking for `ftctl cancel`'s stop request every "
        "10 s (set it to e.g. 2, or unset it)"
    ]
