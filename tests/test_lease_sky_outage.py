"""A SkyPilot managed job (`--spot`) whose attempt starts while the object store is down, against a moto server of its
own that is stopped (killed: its port refuses connections). SkyPilot tells a recovery onto a fresh node from a first
attempt to no task, and recovers an exit 75 (recover_on_exit_codes) without counting it: such an attempt failed at once
with exit 2 (a recovery during an outage ended the run for good), and one whose node held a checkpoint ended with exit
75, recovered again and again, each time on a new cluster waiting 5 minutes. Now every attempt of a managed job waits
for the store (lease.START_WAIT_S, short here; one that comes back within it is taken, as tests/test_store_outage.py
shows for a requeue), else fails with exit 2 naming the store: a failure SkyPilot restarts only up to -o max_requeues
times. Outside a managed job (Slurm's requeues count exit 75) nothing changed: tests/test_store_outage.py."""

from __future__ import annotations

import time

import pytest

from ftctl import lease
from ftctl.envvars import ATTEMPT_ENV
from tests.s3_fixtures import MotoS3, fake_aws


def test_a_managed_jobs_attempt_meeting_a_down_store_waits_for_it_then_fails_counted_naming_the_store(
    tmp_path, monkeypatch, caplog
):
    server = MotoS3(tmp_path / "moto")
    server.start()
    try:
        fake_aws(monkeypatch, tmp_path, server.endpoint)
        monkeypatch.setattr(lease, "START_WAIT_S", 0.6)
        monkeypatch.setattr(lease, "START_PAUSE_S", 0.1)
        for var in (ATTEMPT_ENV, "SLURM_JOB_ID"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv(lease.SKY_MANAGED_JOB_ENV, "17")
        monkeypatch.setenv("SKYPILOT_TASK_ID", "sky-managed-2026-12-05-21-00-00-000000_ftctl-r_17-0")
        out = f"s3://{server.make_bucket('ftctl-sky-outage')}/runs/r"

        server.kill()
        for holds in (None, lambda: True):  # a fresh node (a recovery or the first attempt); a node with a checkpoint
            start = time.monotonic()
            with pytest.raises(lease.LeaseLost) as e:
                lease.Holder(out, None, "r", holds_checkpoint=holds).take()
            waited, said = time.monotonic() - start, str(e.value)
            assert waited > 0.45, waited  # it waited for the store (a fresh node's failed at once)
            assert e.value.exit_code == 2 and e.value.status == "failed"  # counted by SkyPilot; 75 is not
            assert said.startswith(f"Cannot reach the S3 endpoint {server.endpoint} for {out}, for the "), said
            assert "managed job 17's exit 75 without limit" in said and "up to -o max_requeues times" in said
            assert "\n" not in said
        waits = [r.getMessage() for r in caplog.records if "waiting up to 1 s for the store" in r.getMessage()]
        assert waits and "then it fails (exit 2), which SkyPilot restarts up to -o max_requeues times" in waits[0]

    finally:
        server.kill()
