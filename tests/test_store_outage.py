"""A store that is down, full or cuts answers short, the rest of the way (task 122): a requeued or recovered attempt
that starts during an outage, another node's uploader and the lease, a small answer cut off mid-body, a full store.
The store is moto, through FlakyProxy where it must fail."""

from __future__ import annotations

import time

import pytest

from ftctl import lease, storage
from ftctl.envvars import ATTEMPT_ENV
from ftctl.errors import FtctlError
from tests.test_flaky_store import fewer_attempts, flaky, quick_backoff  # noqa: F401 - the fixtures
from tests.test_lease import held_by


@pytest.fixture
def short_wait(monkeypatch):
    """A resuming attempt's wait for a down store at its start: 0.8 s, asked every 0.1 s."""
    monkeypatch.setattr(lease, "START_WAIT_S", 0.8)
    monkeypatch.setattr(lease, "START_PAUSE_S", 0.1)


def test_a_requeued_attempt_meeting_a_down_store_waits_then_ends_preempted_a_first_one_fails_at_once(
    flaky,  # noqa: F811
    quick_backoff,  # noqa: F811
    short_wait,
    monkeypatch,
    caplog,
):
    """A Slurm requeue (or a relaunch whose node holds a checkpoint) that starts while the store answers 503: it ended
    the run for good with exit 2. Now it waits (one line saying so) and ends as preempted, exit 75, which Slurm's
    script requeues; a store back within the wait is taken; a first attempt, or a bucket that is not there, fails at
    once with exit 2 (a setting, not an outage)."""
    proxy, bucket = flaky
    out = f"{bucket}/runs/outage"
    fewer_attempts(monkeypatch, "ask", 1)
    monkeypatch.setenv("SLURM_JOB_ID", "81")
    monkeypatch.delenv(ATTEMPT_ENV, raising=False)
    proxy.add(r"train-lease", "503", times=None)
    storage.exists(out)  # the client made (its first request takes a second)
    start = time.monotonic()
    with pytest.raises(FtctlError) as first:
        lease.Holder(out, None, "r").take()
    assert first.value.exit_code == 2 and "not training (" in str(first.value)
    assert time.monotonic() - start < 0.5  # no wait
    with pytest.raises(FtctlError) as held:  # a relaunch whose node holds a checkpoint: waits too
        lease.Holder(out, None, "r", holds_checkpoint=lambda: True).take()
    assert held.value.exit_code == lease.UNREACHED_EXIT
    monkeypatch.setenv(ATTEMPT_ENV, "2")
    start, caplog.records[:] = time.monotonic(), []
    with pytest.raises(lease.LeaseLost) as e:
        lease.Holder(out, None, "r").take()
    waited = time.monotonic() - start
    said = str(e.value)
    assert 0.6 < waited < 3 and e.value.exit_code == lease.UNREACHED_EXIT and e.value.status == "preempted"
    assert said.startswith(f"the S3 endpoint {proxy.endpoint} kept refusing requests for {out} as too many (503")
    assert "(attempt 2 of Slurm job 81, requeued)" in said and "exit 75" in said and "\n" not in said
    waits = [r.getMessage() for r in caplog.records if "waiting up to 1 s for the store" in r.getMessage()]
    assert len(waits) == 1 and "this attempt resumes the run (attempt 2 of Slurm job 81, requeued)" in waits[0]
    proxy.clear()
    proxy.add(r"train-lease", "500", times=3)  # back within the wait: taken, trained
    mine = lease.Holder(out, None, "r", renew_s=60)
    mine.take()
    assert held_by(out) == "Slurm job 81"
    mine.close()
    proxy.clear()
    with pytest.raises(FtctlError) as nobucket:  # a setting: at once, whatever the attempt
        lease.Holder("s3://no-such-bucket-122/run", None, "r").take()
    assert nobucket.value.exit_code == 2 and "No bucket 'no-such-bucket-122'" in str(nobucket.value)


def test_a_down_store_is_told_from_a_setting(monkeypatch):
    """storage.store_down: 503, 500, a refused connection and a timeout are an outage; a host name that does not
    resolve, missing credentials or bucket are settings."""
    import socket

    from botocore.exceptions import (
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        ReadTimeoutError,
    )

    def client(code: str, status: int) -> ClientError:
        return ClientError(
            {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
            "GetObject",
        )

    def caused(exc: BaseException, cause: BaseException) -> BaseException:
        exc.__cause__ = cause
        return exc

    refused = caused(
        EndpointConnectionError(endpoint_url="http://h:9"),
        ConnectionRefusedError(111, "refused"),
    )
    unnamed = caused(
        EndpointConnectionError(endpoint_url="http://nohost:9"),
        socket.gaierror(-2, "Name not known"),
    )
    down = [
        client("SlowDown", 503),
        client("InternalError", 500),
        refused,
        ReadTimeoutError(endpoint_url="u"),
    ]
    for exc in down:
        assert storage.store_down(exc, "s3://b/r") is not None, exc
    for exc in (
        unnamed,
        NoCredentialsError(),
        client("NoSuchBucket", 404),
        client("AccessDenied", 403),
    ):
        assert storage.store_down(exc, "s3://b/r") is None, exc


def test_another_nodes_uploader_writes_no_share_into_an_output_another_job_took_over(s3_bucket, tmp_path, monkeypatch):
    """Node 1 of a two-node run uploads its own shard files and node manifest into OUT/checkpoint-N; it held no lease
    and asked none, so a share in flight as another job took the output over went over that job's checkpoint of the
    same step (its files replaced under its committed manifest). Node 1 now follows rank 0's lease record."""
    from ftctl import checkpoints as C
    from tests.s3_fixtures import make_checkpoint
    from tests.test_lease import put

    out = f"{s3_bucket}/runs/nodes"
    monkeypatch.setenv("SLURM_JOB_ID", "61")
    rank0 = lease.Holder(out, None, "r", renew_s=60)
    rank0.take()
    record = lease.record_of(out)
    rank0.close()  # rank 0 is on another node: this process holds nothing of its own
    put(out, **record, renewed_unix=time.time())
    assert lease.record_of(out) is None
    follower = lease.follow(out, None, record)
    up = C.Uploader(out, node_rank=1, num_nodes=2, attempt="a1", backoff=(0.05, 0.1))
    theirs = b"the other job's shard"
    try:
        for step in (2, 4):
            if step == 4:  # taken over, and that job committed its checkpoint-4
                put(
                    out,
                    holder="Slurm job 62",
                    run="r",
                    started_unix=1.0,
                    renewed_unix=time.time(),
                )
                storage.filesystem(out)[0].pipe_file(f"{out[5:]}/checkpoint-4/rng_state_1.pth", theirs)
            ckpt = make_checkpoint(tmp_path / "n1", step, {"rng_state_1.pth": b"node 1's shard %d" % step})
            C.write_manifest(str(ckpt), step, 2, "h", name=C.node_manifest_name(1), node_rank=1, num_nodes=2,
                             attempt="a1", with_files=True)  # fmt: skip
            up.submit(str(ckpt))
            assert up.wait(1.5) is (step == 2)  # rank 0's lease: sent; then never
    finally:
        up.close(0)
        follower.close()
    stored = storage.file_sizes(out)
    assert f"checkpoint-2/{C.node_manifest_name(1)}" in stored
    assert f"checkpoint-4/{C.node_manifest_name(1)}" not in stored, sorted(stored)
    assert storage.read_bytes(f"{out}/checkpoint-4/rng_state_1.pth") == theirs
    assert out not in lease._HELD


def test_a_small_answer_cut_off_mid_body_is_asked_again(flaky, quick_backoff, monkeypatch):  # noqa: F811
    """A manifest, trainer_state.json or the lease (an "ask": one try of s3fs's) whose answer was cut off mid-body:
    `ftctl sync ls`, `status` and a renewal failed with "its answers were cut off mid-way". Listings were already
    asked again by botocore."""
    import types

    monkeypatch.setattr(storage, "random", types.SimpleNamespace(random=lambda: 0.0))  # no pause between the asks
    proxy, bucket = flaky
    body = b'{"holder": "Slurm job 5", "renewed_unix": 1.0, "pad": "%s"}' % (b"x" * 400)
    fs = storage.filesystem(f"{bucket}/run")[0]
    fs.pipe_file(f"{bucket[5:]}/run/ckpt/m.json", body)
    fs.pipe_file(f"{bucket[5:]}/run/{lease.TRAIN_LEASE}", body)
    cut = [
        proxy.add(r"^GET .*/m\.json", "truncate", times=2),
        proxy.add(r"^GET .*train-lease", "truncate", times=2),
    ]
    assert storage.read_text(f"{bucket}/run/ckpt/m.json") == body.decode()
    assert lease.read(f"{bucket}/run")["holder"] == "Slurm job 5"
    assert [r.hits for r in cut] == [2, 2]
    with pytest.raises(FtctlError, match="does not exist"):
        storage.read_text(f"{bucket}/run/none.json")


def test_a_full_store_is_said_once_the_checkpoint_stays_local_and_goes_up_once_space_is_freed(
    flaky,  # noqa: F811
    tmp_path,
    caplog,
):
    """A store refusing writes for its space or quota (MinIO 507 XMinioStorageFull, Ceph's 403 QuotaExceeded): each
    retry of the uploader logged the store's XML error, Ceph's read as "Access denied" (credentials). Now one line,
    nothing committed meanwhile, and the checkpoint goes up once the store takes it again."""
    from botocore.exceptions import ClientError

    from ftctl import checkpoints as C
    from tests.s3_fixtures import make_checkpoint

    proxy, bucket = flaky
    out = f"{bucket}/runs/full"
    quota = ClientError(
        {
            "Error": {"Code": "QuotaExceeded"},
            "ResponseMetadata": {"HTTPStatusCode": 403},
        },
        "PutObject",
    )
    said = (
        storage.store_error(PermissionError(13, "denied"), out).kind,
        storage.store_error(quota, out),
    )
    assert said[0] == "denied" and said[1].kind == "full" and "(403 QuotaExceeded)" in str(said[1])
    proxy.add(r"^PUT ", "507", times=None)
    up = C.Uploader(out, backoff=(0.05, 0.1))
    ckpt = make_checkpoint(tmp_path, 2)
    C.write_manifest(str(ckpt), 2, 1, "h")
    try:
        up.submit(str(ckpt))
        deadline = time.monotonic() + 10
        while proxy.count(r"^PUT ", "507") < 3 and time.monotonic() < deadline:  # retried, said once
            time.sleep(0.05)
        assert up.wait(0.1) is False
        lines = [r.getMessage() for r in caplog.records if r.name.startswith("ftctl") and r.levelname != "INFO"]
        assert lines == [
            f"the S3 endpoint {proxy.endpoint} is full for {out} (507 XMinioStorageFull): it refuses new objects for "
            f"lack of space or the bucket's quota: free space in bucket '{bucket[5:]}' (`ftctl sync ls` lists a "
            "run's checkpoints; older runs) or raise its quota; a trainer keeps its checkpoints on its node meanwhile "
            "and uploads them once the store takes them. (checkpoint-2 not uploaded yet; trying again every 0 s at "
            "most)",
            "gave up waiting for checkpoint uploads to " + out + " after 0.1 s; not uploaded: checkpoint-2",
        ], lines
        assert not storage.file_sizes(out)  # nothing half-committed
        proxy.clear()  # space freed
        assert up.wait(5) is True
    finally:
        up.close(0)
    assert C.verify(f"{out}/checkpoint-2") == []


def test_another_node_follows_the_lease_record_rank_0_sends_and_lets_go_at_the_end(s3_bucket, tmp_path, monkeypatch):
    """CheckpointSyncCallback on node 1 of two: rank 0's lease record (broadcast: here handed over as a broadcast
    would) makes its uploader follow that lease (a run on two gloo processes costs ~45 s on 2 cores: transformers'
    import); rank 0's own callback follows nothing (it holds the lease)."""
    from types import SimpleNamespace

    from ftctl.trainer import sync_callback as S

    out = f"{s3_bucket}/runs/followed"
    monkeypatch.setenv("SLURM_JOB_ID", "64")
    rank0 = lease.Holder(out, None, "r", renew_s=60)
    rank0.take()
    record = lease.record_of(out)
    zero = S.CheckpointSyncCallback(out, spec_hash="h")
    zero.on_train_begin(SimpleNamespace(output_dir=str(tmp_path / "n0")), SimpleNamespace(is_world_process_zero=True),
                        None)  # fmt: skip
    assert zero.follower is None and lease._HELD[out] is rank0
    zero.close()
    rank0.close()  # this process is node 1 from here on: rank 0 holds the lease on another node
    assert out not in lease._HELD
    monkeypatch.setattr(S, "node_topology", lambda shared=False: (1, 2))
    monkeypatch.setattr(
        S.CheckpointSyncCallback,
        "_from_rank0",
        staticmethod(lambda value: value or record),
    )
    monkeypatch.setattr(
        S.CheckpointSyncCallback,
        "lists_files_of",
        lambda self, output_dir, writes: True,
    )
    one = S.CheckpointSyncCallback(out, spec_hash="h")
    one.on_train_begin(SimpleNamespace(output_dir=str(tmp_path / "n1")), SimpleNamespace(is_local_process_zero=True),
                       None)  # fmt: skip
    assert isinstance(lease._HELD[out], lease.Follower) and lease._HELD[out].record == record
    one.close()
    assert out not in lease._HELD


def test_a_manifest_cut_off_is_asked_again_and_a_requeued_attempts_listing_of_a_down_store_ends_preempted(
    flaky,  # noqa: F811
    quick_backoff,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    """(task-122-extra.patch) A manifest read cut off mid-body is asked again (`ftctl sync ls`, a resume's listing);
    a requeued attempt whose store goes down between taking the lease and listing its checkpoints ends as preempted
    (exit 75), a first attempt with its one line (exit 2)."""
    from ftctl import checkpoints as C
    from ftctl.checkpoints import resume
    from tests.s3_fixtures import make_checkpoint

    proxy, bucket = flaky
    out = f"{bucket}/runs/listed"
    ckpt = make_checkpoint(tmp_path, 2)
    C.write_manifest(str(ckpt), 2, 1, "h")
    storage.put_dir(str(ckpt), f"{out}/checkpoint-2")
    cut = proxy.add(r"^GET .*ftctl-manifest", "truncate", times=2)
    assert C.read_manifest(f"{out}/checkpoint-2")["step"] == 2 and cut.hits == 2
    fewer_attempts(monkeypatch, "ask", 1)
    proxy.add(r"list-type", "503", times=None)
    monkeypatch.setenv("SLURM_JOB_ID", "90")
    monkeypatch.setenv(ATTEMPT_ENV, "1")
    with pytest.raises(lease.LeaseLost) as e:
        resume._list_remote_or_fail(out, attempts=1)
    assert e.value.exit_code == lease.UNREACHED_EXIT and "(attempt 1 of Slurm job 90, requeued)" in str(e.value)
    monkeypatch.delenv(ATTEMPT_ENV)
    with pytest.raises(storage.StorageError) as first:
        resume._list_remote_or_fail(out, attempts=1)
    assert first.value.exit_code == 2
