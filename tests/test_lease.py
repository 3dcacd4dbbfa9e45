"""The lease on an object-store output (ftctl.lease): two jobs launched into one output without knowing of each other
(two laptops' FTCTL_HOMEs, two SkyPilot clusters) both trained into its checkpoints; nothing refused the second
(explore14/15). The store is moto; the trainer side is the tiny model on CPU."""

from __future__ import annotations

import json
import threading
import time
from types import SimpleNamespace

import pytest

from ftctl import backend, lease, storage
from ftctl.backend import JobRef
from ftctl.errors import FtctlError
from ftctl.runpaths import TRAIN_LEASE
from ftctl.sky import backend as sky_backend
from tests.test_sky_jobs import FakeSky, forget_ended
from tests.test_slurm_cancel import JOB, cluster  # noqa: F401 - the fixture (fake squeue, scancel, scontrol)
from tests.trainer_fixtures import make_run


def put(output: str, **record) -> None:
    uri = storage.join(output, TRAIN_LEASE)
    storage.filesystem(uri)[0].pipe_file(uri.removeprefix("s3://"), json.dumps(record).encode())


def put_stale(output: str, monkeypatch, **record) -> None:
    """``put``, of a trainer killed long ago: the store's clock says this write is STALE_S + 1 s old (a lease's age
    is the store's, its answer's Date less the lease's LastModified, which moto cannot set back)."""
    put(output, **record)
    fs, path = storage.filesystem(storage.join(output, TRAIN_LEASE))
    written, version = fs.info(path)["ETag"], lease._version

    def older(fs, path):
        etag, age = version(fs, path)
        return etag, (age + lease.STALE_S + 1 if etag == written and age is not None else age)

    monkeypatch.setattr(lease, "_version", older)


def test_a_launch_into_an_output_whose_lease_is_live_is_refused_and_a_stale_one_is_not(s3_bucket, monkeypatch):
    from tests.render_fixtures import prepared

    monkeypatch.setenv("FTCTL_HOME", "/nonexistent/home")  # no job launched from here: only the lease can tell
    out = f"{s3_bucket}/runs/r1"
    r = prepared([], backend="sky", gpus="1xL4", output_dir=out)
    backend.refuse_a_second_job(r)  # no lease
    holder = "SkyPilot task sky-2026-12-05-04-20-00-000001_laptop-a_1"
    put(out, holder=holder, host="node1", run="r1", renewed_unix=time.time() - 20)
    with pytest.raises(FtctlError) as e:
        backend.refuse_a_second_job(r)
    said = str(e.value)
    assert said.startswith(
        f"{out} is being trained into by {holder} on node1 (run r1, renewed "
    )  # by the store's clock
    assert "another --output" in said and f"lets go {lease.STALE_S:.0f} s after its last renewal" in said
    put_stale(out, monkeypatch, holder=holder, renewed_unix=time.time() - lease.STALE_S - 1)  # killed long ago
    backend.refuse_a_second_job(r)
    monkeypatch.setattr(storage, "filesystem", lambda *a, **k: (_ for _ in ()).throw(OSError("store down")))
    assert lease.refusal(out) is None  # the store not answering is the output checks' to say


def test_a_trainer_waits_for_a_lease_let_go_takes_a_stale_or_its_own_and_refuses_a_live_one(s3_bucket, monkeypatch):
    out = f"{s3_bucket}/runs/r2"
    monkeypatch.setenv("SKYPILOT_TASK_ID", "sky-managed-2026_r2_7-0")
    mine = lease.Holder(out, None, "r2", renew_s=0.2)
    put(out, holder="SkyPilot task sky-managed-2026_r2_7-0", renewed_unix=time.time())  # its own earlier attempt
    mine.take()  # a recovery takes it over at once
    assert json.loads(storage.read_text(storage.join(out, TRAIN_LEASE)))["holder"] == mine.id
    first = json.loads(storage.read_text(storage.join(out, TRAIN_LEASE)))["renewed_unix"]
    time.sleep(0.5)
    assert json.loads(storage.read_text(storage.join(out, TRAIN_LEASE)))["renewed_unix"] > first  # renewed
    mine.close()
    assert not storage.exists(storage.join(out, TRAIN_LEASE))  # let go as it ends

    monkeypatch.setenv("SKYPILOT_TASK_ID", "sky-2026_other_1")
    other = lease.Holder(out, None, "r2", renew_s=0.2)
    put(out, holder="Slurm job 41", renewed_unix=time.time())  # not renewed again: killed
    t0 = time.monotonic()
    other.take(stale_s=0.8)  # waits for it to go stale, then holds it
    assert 0.6 < time.monotonic() - t0 < 5
    other.close()

    put(out, holder="Slurm job 42", renewed_unix=time.time())
    renews = threading.Timer(0.3, lambda: put(out, holder="Slurm job 42", renewed_unix=time.time()))
    renews.start()  # a live trainer renews it
    with pytest.raises(FtctlError, match=r"being trained into by Slurm job 42 .*: not training"):
        lease.Holder(out, None, "r2", renew_s=0.2).take(stale_s=30)
    assert json.loads(storage.read_text(storage.join(out, TRAIN_LEASE)))["holder"] == "Slurm job 42"  # left as it was


def test_a_run_into_s3_holds_the_lease_while_it_trains_and_lets_go_as_it_ends(
    tiny_model_dir, tiny_data, tmp_path, one_thread, s3_bucket, monkeypatch
):
    from transformers import TrainerCallback

    from ftctl.trainer.run import train

    uri = f"{s3_bucket}/runs/tiny"
    seen = []

    class Look(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                seen.append(lease.read(uri))

    spec, plan = make_run(tiny_model_dir, tiny_data, uri, "lora", max_steps=3, save_steps=100, lora_r=4, lora_alpha=8)
    monkeypatch.setenv("FTCTL_LOCAL_DIR", str(tmp_path / "node"))
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    assert train(spec, plan, callbacks=[Look()], echo=lambda line: None).status == "complete"
    assert seen[0]["holder"] == "Slurm job 77" and lease.live(seen[0])
    assert lease.read(uri) is None


def test_cancel_of_a_killed_sky_job_lets_go_of_its_lease_and_not_of_another_jobs(monkeypatch, s3_bucket):
    """SkyPilot's cancel kills the trainer (`--now`, or a stop not answered in time): its lease stayed, and the same
    launch right after was refused for STALE_S. The cancel removes it where the job's own trainer holds it."""
    from ftctl.sky.backend import SkyBackend

    out = f"{s3_bucket}/run"
    sky = FakeSky(now="h", jobs={2: "RUNNING"}, managed={5: "RUNNING"}).install(monkeypatch)
    monkeypatch.setattr(sky_backend, "CANCEL_POLL_S", 0)
    ref = JobRef("sky", "c/2", "/nonexistent/run", "run", out, {"cluster": "c", "sky_job_id": 2, "cluster_hash": "h"})
    put(out, holder="SkyPilot task sky-2026-12-05_c_3", renewed_unix=time.time())  # job 3's, queued behind 2
    SkyBackend().cancel(ref, now=True)
    assert sky.cancelled == [2] and lease.read(out)["holder"].endswith("_c_3")
    put(out, holder="SkyPilot task sky-2026-12-05_c_2", renewed_unix=time.time())
    forget_ended()
    sky.jobs[2] = "RUNNING"
    SkyBackend().cancel(ref, now=True)
    assert lease.read(out) is None
    managed = JobRef("sky", "managed/5", "/nonexistent/run", "run", out, {"sky_job_id": 5, "managed": True})
    put(out, holder="SkyPilot task sky-managed-2026-12-05_run_5-0", renewed_unix=time.time())
    SkyBackend().cancel(managed, now=True)
    assert lease.read(out) is None


def racers(out: str, monkeypatch, jobs=(501, 502)) -> list[lease.Holder]:
    """A trainer of each Slurm job into ``out``, renewing every 0.2 s."""
    monkeypatch.delenv("SKYPILOT_TASK_ID", raising=False)
    holders = []
    for job in jobs:
        monkeypatch.setenv("SLURM_JOB_ID", str(job))
        holders.append(lease.Holder(out, None, "r", renew_s=0.2))
    return holders


def race(holders: list[lease.Holder], monkeypatch) -> dict[str, str]:
    """Every holder's take() in a thread of its own, all released at once by a barrier, each reading the lease before
    any writes it (two trainers starting in the same second): per holder, "holds" or what take() raised."""
    read = lease.read_tagged
    read_by_all = threading.Barrier(len(holders))
    first_read = set()

    def read_then_wait(*args, **kwargs):
        got = read(*args, **kwargs)
        me = threading.current_thread()
        if me.name.startswith("racer") and me not in first_read:
            first_read.add(me)
            read_by_all.wait(timeout=20)
        return got

    monkeypatch.setattr(lease, "read_tagged", read_then_wait)
    start, outcome = threading.Barrier(len(holders)), {}

    def take(holder):
        start.wait(timeout=20)
        try:
            holder.take(stale_s=60)
            outcome[holder.id] = "holds"
        except FtctlError as e:
            outcome[holder.id] = str(e)

    threads = [threading.Thread(target=take, args=(h,), name=f"racer-{h.id}", daemon=True) for h in holders]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return outcome


def held_by(out: str) -> str:
    return json.loads(storage.read_text(storage.join(out, TRAIN_LEASE)))["holder"]


@pytest.mark.parametrize("before", ["none", "stale"])
def test_two_trainers_taking_one_output_in_the_same_instant_one_holds_and_the_other_refuses(
    s3_bucket, monkeypatch, caplog, before
):
    """Both read the lease (none, or a killed trainer's stale one) before either wrote theirs: both took it and trained
    into one output. The write is conditional (If-None-Match *, or If-Match the ETag read): one write wins, the other
    reads the lease again, finds the winner's and refuses when it is renewed."""
    out = f"{s3_bucket}/runs/race-{before}"
    if before == "stale":
        put_stale(out, monkeypatch, holder="Slurm job 41", renewed_unix=time.time() - lease.STALE_S - 100)
    holders = racers(out, monkeypatch)
    try:
        outcome = race(holders, monkeypatch)
        assert sorted(outcome) == sorted(h.id for h in holders)
        winners = [who for who, said in outcome.items() if said == "holds"]
        assert len(winners) == 1, outcome
        (loser,) = set(outcome) - set(winners)
        assert outcome[loser].startswith(f"{out} is being trained into by {winners[0]} on ")
        assert ": not training (two trainers would write the same checkpoints)" in outcome[loser]
        assert held_by(out) == winners[0]
    finally:
        for h in holders:
            h.close()
    assert lease.read(out) is None  # the winner let go; the loser removed nothing of another's
    assert "written without a condition" not in caplog.text  # moto keeps conditions, as S3 does: no open race said


@pytest.fixture
def store_conditions(s3_bucket):
    """The S3 client the lease is written through (this thread's, the "ask" limits) made to answer as a store that
    ``refuses`` conditional writes (501 NotImplemented, S3's own answer before 2024) or ``ignores`` them (the headers
    never reach the store, as with an s3fs or botocore too old to send them, or a store that drops them)."""
    fs = storage.filesystem(f"{s3_bucket}/x", quick=True)[0]
    fs.connect()
    events = fs.s3.meta.events

    def install(how: str) -> None:
        def put_object(params, **kwargs):
            conditions = [h for h in params["headers"] if h.lower() in ("if-none-match", "if-match")]
            if conditions and how == "refuses":
                error = {"Code": "NotImplemented", "Message": "A header you provided implies functionality that is not"}
                return SimpleNamespace(status_code=501), {"Error": error, "ResponseMetadata": {"HTTPStatusCode": 501}}
            for h in conditions:
                del params["headers"][h]
            return None

        events.register("before-call.s3.PutObject", put_object, unique_id="test-lease-conditions")

    yield install
    events.unregister("before-call.s3.PutObject", unique_id="test-lease-conditions")


@pytest.mark.parametrize("how", ["refuses", "ignores"])
def test_a_store_without_conditional_writes_gets_the_lease_read_then_written_and_the_open_race_said_once(
    s3_bucket, store_conditions, monkeypatch, caplog, how
):
    store_conditions(how)
    monkeypatch.setattr(lease, "_RACE_SAID", set())
    monkeypatch.delenv("SKYPILOT_TASK_ID", raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "61")
    caplog.set_level("WARNING", logger="ftctl")
    out = f"{s3_bucket}/runs/plain"
    for before in (None, "stale"):  # created, then a killed trainer's replaced
        if before:
            put_stale(out, monkeypatch, holder="Slurm job 41", renewed_unix=time.time() - lease.STALE_S - 1)
        holder = lease.Holder(out, None, "r", renew_s=0.2)
        holder.take()
        assert held_by(out) == "Slurm job 61"
        holder.close()
    said = [r.getMessage() for r in caplog.records if "written without a condition" in r.getMessage()]
    assert len(said) == 1, said
    assert said[0].startswith(f"{s3_bucket}: the trainer's lease on {out} is written without a condition (")
    assert ("store refused the condition: [Errno" if how == "refuses" else "it ignores If-None-Match") in said[0]
    assert "two trainers starting into one output within the same second could both take it" in said[0]
    assert said[0].endswith(
        f"did not reach the store for {lease.STALE_S:.0f} s would renew over the lease of a job that took the output over"
    )


def test_cancel_of_a_slurm_job_lets_go_of_its_trainers_lease_and_not_of_another_jobs(cluster, s3_bucket):  # noqa: F811
    """Slurm kills the trainer KillWait after scancel's SIGTERM, before it lets go of its lease: the same launch right
    after was refused for STALE_S. The cancel removes the lease once the job ended, where its own trainer holds it."""
    from ftctl.backend import record_job
    from ftctl.slurm.backend import SlurmBackend

    ref, _ = cluster
    out = f"{s3_bucket}/r1"
    ref = JobRef("slurm", JOB, ref.run_dir, "r", out)
    record_job(ref)
    state = ref.paths.root.parent / "bin" / "state"
    put(out, holder=f"Slurm job 1{JOB}", renewed_unix=time.time())  # another job's (it waits behind this one)
    assert SlurmBackend().cancel(ref, now=True).startswith(f"cancelled {JOB}")
    assert held_by(out) == f"Slurm job 1{JOB}"
    put(out, holder=f"Slurm job {JOB}", host="node1", renewed_unix=time.time())  # its own, left by a killed trainer
    state.write_text("RUNNING")
    assert SlurmBackend().cancel(ref, now=True).startswith(f"cancelled {JOB}")
    assert lease.read(out) is None


def test_a_holder_whose_lease_another_job_took_over_stops_renewing_at_its_next_renewal(s3_bucket, monkeypatch, caplog):
    """A trainer whose store went silent past STALE_S was taken over by another job; its next renewal, a plain PUT,
    wrote over the new holder's lease and both trained. The renewal replaces only its own last write (If-Match)."""
    caplog.set_level("ERROR", logger="ftctl")
    out = f"{s3_bucket}/runs/taken"
    (mine,) = racers(out, monkeypatch, jobs=(601,))
    mine.take()
    put(out, holder="Slurm job 602", host="node9", run="r", renewed_unix=time.time())  # took it over, stale
    try:
        assert mine.lost.wait(5), "the renewal did not find the lease taken over"
        time.sleep(0.5)  # two more turns of the renewal thread, had it gone on
        assert held_by(out) == "Slurm job 602"
        assert not mine._thread.is_alive()  # it renews no more
        assert mine.lost_why.startswith(f"{lease.uri_of(out)} is held by Slurm job 602 on node9 (run r, renewed ")
        assert "not by this trainer (Slurm job 601)" in mine.lost_why and "another --output" in mine.lost_why
        assert mine.lost_why in caplog.text
    finally:
        mine.close()
    assert held_by(out) == "Slurm job 602"  # its release left the new holder's lease


def replaced_after_read(out: str, monkeypatch, by: str) -> None:
    """Another job's lease written right after the lease is next read (between a release's read and its delete)."""
    for name in ("read", "read_tagged"):
        real = getattr(lease, name)

        def then_replaced(*args, _real=real, **kwargs):
            got = _real(*args, **kwargs)
            put(out, holder=by, renewed_unix=time.time())
            return got

        monkeypatch.setattr(lease, name, then_replaced)


def test_a_release_leaves_a_lease_another_job_wrote_since_it_was_read_or_written(s3_bucket, monkeypatch):
    """release() read the lease, compared its holder, then deleted unconditionally: a lease written between the two
    (another job taking the output over) was deleted. Its delete is made only where the lease is still the holder's
    own last write (Holder.close), or the version read (a cancel's release): If-Match on DELETE."""
    out = f"{s3_bucket}/runs/released"
    (mine,) = racers(out, monkeypatch, jobs=(701,))
    mine.renew_s = 60  # no renewal in this test: close() is what is tried
    mine.take()
    # taken over before this holder's next renewal by another attempt of its own job (requeued while it still ran):
    # the holder's name is the same, the lease is not this trainer's write
    put(out, holder="Slurm job 701", run="attempt 2", renewed_unix=time.time())
    mine.close()
    assert lease.read(out)["run"] == "attempt 2"

    reads = lease.read, lease.read_tagged
    replaced_after_read(out, monkeypatch, "Slurm job 702")
    put(out, holder="Slurm job 701", renewed_unix=time.time())  # a killed trainer's, its job cancelled
    assert lease.release(out, None, "Slurm job 701") is False  # replaced between the cancel's read and its delete
    assert held_by(out) == "Slurm job 702"
    lease.read, lease.read_tagged = reads
    put(out, holder="Slurm job 701", renewed_unix=time.time())
    assert lease.release(out, None, "Slurm job 701") is True and lease.read(out) is None


def test_a_run_whose_lease_another_job_took_over_stops_without_saving_over_its_checkpoints(
    tiny_model_dir, tiny_data, tmp_path, one_thread, s3_bucket, monkeypatch
):
    from transformers import TrainerCallback

    from ftctl.trainer.run import train

    uri = f"{s3_bucket}/runs/tiny-taken"

    class TakenOver(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 1:  # another job takes the output over; this trainer's next renewal finds it
                put(uri, holder="SkyPilot task sky-2026_other_3", renewed_unix=time.time())
                time.sleep(0.6)

    spec, plan = make_run(tiny_model_dir, tiny_data, uri, "lora", max_steps=3, save_steps=1, lora_r=4, lora_alpha=8)
    monkeypatch.setattr(lease, "RENEW_S", 0.2)
    monkeypatch.setenv("FTCTL_LOCAL_DIR", str(tmp_path / "node"))
    monkeypatch.setenv("SLURM_JOB_ID", "78")
    with pytest.raises(FtctlError, match=r"is held by SkyPilot task sky-2026_other_3 .*not by this trainer"):
        train(spec, plan, callbacks=[TakenOver()], echo=lambda line: None)
    assert held_by(uri) == "SkyPilot task sky-2026_other_3"  # neither renewed over nor removed
    saved = storage.file_sizes(uri)
    assert not [name for name in saved if name.startswith("checkpoint-")], sorted(saved)  # not step 1's, not after


def test_a_renewal_the_store_did_not_take_is_tried_again_and_one_after_a_takeover_writes_nothing(
    s3_bucket, monkeypatch, caplog
):
    out = f"{s3_bucket}/runs/silent"
    (mine,) = racers(out, monkeypatch, jobs=(801,))
    mine.renew_s = 60  # renewed by hand here
    mine.take()
    put_if = storage.put_if
    monkeypatch.setattr(storage, "put_if", lambda *a, **k: (_ for _ in ()).throw(OSError("store silent")))
    assert mine.renew() and not mine.lost.is_set()  # a silent store: said, tried again at the next turn
    assert "cannot write" in caplog.text and "store silent" in caplog.text
    monkeypatch.setattr(storage, "put_if", put_if)
    assert mine.renew() and held_by(out) == "Slurm job 801"  # back: its own write, still as written
    put(out, holder="Slurm job 802", renewed_unix=time.time())  # the store was silent for STALE_S: taken over
    assert mine.renew() is False and mine.lost.is_set() and held_by(out) == "Slurm job 802"
    mine.close()
    assert held_by(out) == "Slurm job 802"
