"""The lease (ftctl.lease) the rest of the way (task 117): a first read of the lease that fails, clocks minutes apart,
how a trainer stopped for its lease ends (a preemption's way where nobody else holds the output), and an upload in
flight as the lease is lost. The store is moto (through FlakyProxy where it must fail)."""

from __future__ import annotations

import json
import threading
import time
from types import SimpleNamespace

import pytest

from ftctl import lease, storage
from ftctl.errors import FtctlError
from ftctl.runpaths import TRAIN_LEASE
from ftctl.trainer.callbacks import LeaseKept
from tests.test_flaky_store import fewer_attempts, flaky, quick_backoff  # noqa: F401 - the fixtures
from tests.test_lease import held_by, put

SKEW_S = 600.0  # a node whose clock is ten minutes off (NTP off on it)


def skewed(monkeypatch, seconds: float) -> None:
    """ftctl.lease's clock ``seconds`` off the store's and the other nodes' (botocore's own signing clock is left)."""
    real = time.time
    monkeypatch.setattr(lease, "time", SimpleNamespace(time=lambda: real() + seconds, monotonic=time.monotonic,
                                                       sleep=time.sleep))  # fmt: skip


def test_a_trainer_that_cannot_read_the_lease_as_it_starts_does_not_train(flaky, quick_backoff, monkeypatch):  # noqa: F811
    """It wrote the lease plainly and trained: a store failing just then skipped the check for another job's live
    lease (helper 114). Now one line naming the store's error, and nothing written."""
    proxy, bucket = flaky
    out = f"{bucket}/runs/unread"
    put(out, holder="Slurm job 77", renewed_unix=time.time())  # another job's, live
    fewer_attempts(monkeypatch, "ask", 1)
    proxy.add(r"^GET .*train-lease", "503", times=None)  # (FlakyProxy's 503 to a HEAD has a body: not HEAD)
    monkeypatch.setenv("SLURM_JOB_ID", "78")
    mine = lease.Holder(out, None, "r", renew_s=0.2)
    puts = proxy.count(r"^PUT .*train-lease")
    with pytest.raises(FtctlError) as e:
        mine.take()
    said = str(e.value)
    assert said.startswith(f"cannot read the trainer's lease {lease.uri_of(out)}, so whether another job trains")
    assert "not training (" in said and "503 SlowDown" in said and "once the store answers" in said
    assert "\n" not in said and e.value.exit_code == 2
    proxy.clear()
    assert held_by(out) == "Slurm job 77" and proxy.count(r"^PUT .*train-lease") == puts  # nothing written over it


def test_a_trainer_that_cannot_write_the_lease_as_it_starts_does_not_train(flaky, quick_backoff, monkeypatch):  # noqa: F811
    """Its claim that the store did not take was said and training went on with no lease in the store: a job
    starting into the output meanwhile saw none and trained too."""
    proxy, bucket = flaky
    out = f"{bucket}/runs/unwritten"
    fewer_attempts(monkeypatch, "ask", 1)
    proxy.add(r"^PUT .*train-lease", "503", times=None)
    monkeypatch.setenv("SLURM_JOB_ID", "79")
    with pytest.raises(FtctlError) as e:
        lease.Holder(out, None, "r", renew_s=0.2).take()
    said = str(e.value)
    assert said.startswith(f"cannot write the trainer's lease {lease.uri_of(out)}, so a job starting into {out} would")
    assert "not training (" in said and "503 SlowDown" in said and "\n" not in said
    proxy.clear()
    assert lease.read(out) is None


def test_a_node_whose_clock_is_minutes_ahead_neither_takes_a_live_lease_nor_lets_a_launch_through(
    s3_bucket, monkeypatch
):
    """Staleness by the store's clock (its Date less the lease's LastModified): a reader ten minutes ahead took a
    live lease as 150 s stale, and a launch from a laptop ahead went through."""
    out = f"{s3_bucket}/runs/ahead"
    put(out, holder="Slurm job 42", host="n1", renewed_unix=time.time())  # a live trainer's, by its (right) clock
    skewed(monkeypatch, SKEW_S)
    refused = lease.refusal(out)
    assert refused is not None and refused.startswith(f"{out} is being trained into by Slurm job 42 on n1 (renewed ")
    renews = threading.Timer(0.5, lambda: put(out, holder="Slurm job 42", renewed_unix=time.time()))
    renews.start()  # the live trainer renews it
    monkeypatch.setenv("SLURM_JOB_ID", "43")
    with pytest.raises(FtctlError, match=r"being trained into by Slurm job 42 .*: not training"):
        lease.Holder(out, None, "r", renew_s=0.3).take()
    renews.join()
    assert held_by(out) == "Slurm job 42"


def test_a_node_whose_clock_is_minutes_behind_takes_a_dead_lease_once_it_is_stale_by_the_store(s3_bucket, monkeypatch):
    """A dead lease written by a clock ten minutes ahead (or read by one behind) read as renewed 0 s ago for ten
    minutes plus STALE_S: the next trainer waited all that time."""
    out = f"{s3_bucket}/runs/behind"
    put(out, holder="Slurm job 51", renewed_unix=time.time() + SKEW_S)  # its trainer (clock ahead) was killed
    skewed(monkeypatch, 0.0)
    monkeypatch.setenv("SLURM_JOB_ID", "52")
    mine = lease.Holder(out, None, "r", renew_s=0.3)
    taker = threading.Thread(target=mine.take, kwargs={"stale_s": 1.5}, daemon=True)
    t0 = time.monotonic()
    taker.start()
    taker.join(6)
    assert not taker.is_alive() and held_by(out) == "Slurm job 52", "still waiting on a dead lease"
    assert 1.0 < time.monotonic() - t0 < 6
    mine.close()


def test_a_trainer_stopped_for_renewals_that_did_not_reach_the_store_ends_as_preempted_a_taken_over_one_failed(
    s3_bucket, monkeypatch
):
    """Renewals that did not reach the store for the lease's life: nobody else holds the output, so the run ends as
    a preemption does (status preempted: Slurm's script requeues; exit 75: a SkyPilot managed job recovers), not as
    a failure the user must relaunch. Another job's takeover stays a failure (exit 2)."""
    out = f"{s3_bucket}/runs/ends"
    monkeypatch.setenv("SLURM_JOB_ID", "61")
    unreached = lease.Holder(out, None, "r", renew_s=0.3, stale_s=2.0)
    unreached._reached -= 2.0  # its renewals have not reached the store for the lease's life
    unreached._unreached(OSError("store down"))
    with pytest.raises(lease.LeaseLost) as e:
        LeaseKept(unreached).on_step_end(None, None, None)
    assert (e.value.status, e.value.exit_code, e.value.requeue) == ("preempted", lease.UNREACHED_EXIT, True)
    assert "as a preemption stops: a requeued (Slurm) or recovered (SkyPilot) attempt" in str(e.value)

    taken = lease.Holder(out, None, "r", renew_s=60)
    taken.take()
    put(out, holder="Slurm job 62", renewed_unix=time.time())
    assert taken.renew() is False
    with pytest.raises(lease.LeaseLost) as e:
        LeaseKept(taken).on_train_end(None, None, None)
    assert (e.value.status, e.value.exit_code, e.value.requeue) == ("failed", 2, False)
    assert "is held by Slurm job 62" in str(e.value)
    taken.close()


def test_an_upload_in_flight_as_the_lease_is_lost_commits_nothing_into_the_output(s3_bucket, monkeypatch):
    """The uploader asks lease.check before it writes and, reading the store, before a commit: a takeover the
    renewals have not seen yet stops the commit (and the run); a lease lost stops every write of the uploader."""
    out = f"{s3_bucket}/runs/inflight"
    monkeypatch.setenv("SLURM_JOB_ID", "71")
    mine = lease.Holder(out, None, "r", renew_s=60)  # renewed by hand: the takeover is not seen by a renewal
    lease.check(f"{out}/checkpoint-2", ask=True)  # holds none yet: nothing asked
    mine.take()
    lease.check(f"{out}/checkpoint-2/adapter_model.safetensors")
    lease.check(f"{out}/checkpoint-2", ask=True)  # its own: commits
    put(out, holder="SkyPilot task sky-2026_other_9", renewed_unix=time.time())  # taken over
    lease.check(f"{out}/checkpoint-2/adapter_model.safetensors")  # not asked of the store: not known yet
    lease.check(f"{s3_bucket}/runs/inflight2/checkpoint-2", ask=True)  # another output: not this holder's
    with pytest.raises(lease.LeaseLost, match=r"is held by SkyPilot task sky-2026_other_9 .*not by this trainer"):
        lease.check(f"{out}/checkpoint-2", ask=True)
    assert mine.lost.is_set()
    with pytest.raises(lease.LeaseLost):  # every write after it, without asking
        lease.check(f"{out}/checkpoint-4/adapter_model.safetensors")
    mine.close()
    lease.check(f"{out}/checkpoint-4/adapter_model.safetensors")  # let go: holds none
    assert json.loads(storage.read_text(storage.join(out, TRAIN_LEASE)))["holder"] == "SkyPilot task sky-2026_other_9"


def test_an_uploader_commits_no_checkpoint_into_an_output_another_job_took_over(s3_bucket, tmp_path, monkeypatch):
    """A checkpoint uploading as another job took the output over (before this trainer's next renewal saw it): its
    manifest went in, over that job's checkpoint of the same step. The uploader asks the store's lease first."""
    from ftctl import checkpoints as C
    from tests.s3_fixtures import make_checkpoint

    out = f"{s3_bucket}/runs/upload"
    monkeypatch.setenv("SLURM_JOB_ID", "91")
    mine = lease.Holder(out, None, "r", renew_s=60)  # renewed by hand: the takeover is not seen by a renewal
    mine.take()
    up = C.Uploader(out, backoff=(0.05, 0.1))
    for step in (2, 4):
        if step == 4:
            put(out, holder="SkyPilot task sky-2026_other_9", renewed_unix=time.time())  # taken over
        ckpt = make_checkpoint(tmp_path, step)
        C.write_manifest(str(ckpt), step, 1, "h")
        up.submit(str(ckpt))
        assert up.wait(1.5) is (step == 2)  # its own lease: committed; then never
    up.close(0)
    mine.close()
    stored = storage.file_sizes(out)
    assert f"checkpoint-2/{C.MANIFEST}" in stored and f"checkpoint-4/{C.MANIFEST}" not in stored, sorted(stored)
    assert mine.lost.is_set() and held_by(out) == "SkyPilot task sky-2026_other_9"


def test_a_trainer_stopped_for_a_store_not_reached_writes_preempted_for_slurms_script(tmp_path, monkeypatch, capsys):
    """The status word Slurm's script requeues on: the trainer's report wrote "failed" for every error."""
    from ftctl.envvars import STATUS_ENV
    from ftctl.trainer.__main__ import Failure

    monkeypatch.setenv(STATUS_ENV, str(tmp_path / "status"))
    monkeypatch.delenv("FTCTL_FAILURE_DIR", raising=False)
    monkeypatch.setenv("RANK", "0")
    for requeue, word, code in ((True, "preempted", lease.UNREACHED_EXIT), (False, "failed", 2)):
        stop = lease.LeaseLost("the lease ... has not been renewed", requeue)
        assert Failure(0).report("config", str(stop), stop.exit_code, stop) == code
        assert (tmp_path / "status").read_text() == word + "\n"
    assert capsys.readouterr().err.count("error: the lease ... has not been renewed") == 2
