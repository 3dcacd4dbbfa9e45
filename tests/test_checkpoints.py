"""The checkpoint commit protocol against a real S3 server on loopback (moto_server) and file://."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import ftctl
from ftctl import checkpoints as C
from ftctl import storage
from ftctl.runpaths import MODEL_CONFIG
from tests.s3_fixtures import MotoS3, assert_logs_clean, assert_no_secrets, make_checkpoint

FAST = dict(backoff=(0.1, 0.5), poll_interval=0.1)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(params=["s3", "file"])
def remote(request, tmp_path):
    if request.param == "s3":
        return request.getfixturevalue("s3_bucket") + "/run"
    return f"file://{tmp_path}/store/run"


def committed(run: Path, step: int, **kw) -> Path:
    ckpt = make_checkpoint(run, step, **kw)
    C.write_manifest(str(ckpt), step, world_size=2, spec_hash="spec-abc")
    return ckpt


def upload_all(remote: str, *ckpts, **kw) -> C.Uploader:
    up = C.Uploader(remote, **{**FAST, **kw})
    for c in ckpts:
        up.submit(str(c))
    assert up.wait(60)
    up.close()
    return up


# ------------------------------------------------------------------ manifests


def test_manifest_lists_every_file_and_verifies(tmp_path, s3_env):
    ckpt = make_checkpoint(tmp_path, 7)
    m = C.write_manifest(str(ckpt), 7, world_size=8, spec_hash="h1")
    on_disk = json.loads((ckpt / C.MANIFEST).read_text())
    assert on_disk == m
    assert m["step"] == 7 and m["world_size"] == 8 and m["spec_hash"] == "h1"
    assert m["ftctl_version"] == ftctl.__version__
    assert sorted(f["path"] for f in m["files"]) == [
        "global_step/zero_pp_rank_0_optim_states.pt",
        "model.safetensors",
        "optimizer.pt",
        "trainer_state.json",
    ]
    assert all(len(f["sha256"]) == 64 and f["size"] > 0 for f in m["files"])
    assert C.verify(str(ckpt)) == []
    assert_no_secrets((ckpt / C.MANIFEST).read_text())

    data = bytearray((ckpt / "optimizer.pt").read_bytes())
    data[100] ^= 0xFF
    (ckpt / "optimizer.pt").write_bytes(bytes(data))
    assert C.verify(str(ckpt), deep=False) == []  # same size: only the hash can tell
    assert C.verify(str(ckpt)) == ["optimizer.pt does not match its sha256 (corrupted)"]
    (ckpt / "model.safetensors").unlink()
    assert C.verify(str(ckpt)) == ["model.safetensors is missing"]
    (ckpt / C.MANIFEST).unlink()
    assert "incomplete" in C.verify(str(ckpt))[0]


def test_uploaded_checkpoint_is_complete_remotely(remote, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    c1, c2 = committed(tmp_path / "run", 1), committed(tmp_path / "run", 2)
    upload_all(remote, c1, c2)
    found = C.list_checkpoints(remote, deep=True)
    assert [(c.step, c.complete, c.problems) for c in found] == [(1, True, []), (2, True, [])]
    assert C.read_manifest(found[1].uri) == json.loads((c2 / C.MANIFEST).read_text())
    assert_logs_clean(caplog)
    assert_no_secrets(json.dumps(found[1].manifest))
    # the staging hard links are gone once uploaded
    assert not os.listdir(tmp_path / "run" / C.STAGING_DIR)


def test_missing_manifest_is_skipped_with_a_warning(remote, tmp_path, caplog):
    c1, c2 = committed(tmp_path / "run", 10), committed(tmp_path / "run", 20)
    upload_all(remote, c1, c2)
    storage.rm(storage.join(remote, "checkpoint-20", C.MANIFEST))

    caplog.set_level(logging.WARNING)
    got = C.latest_complete(str(tmp_path / "fresh"), remote)
    assert got == str(tmp_path / "fresh" / "checkpoint-10")
    assert C.verify(got) == []
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("checkpoint-20" in w and "incomplete" in w for w in warning), warning
    assert not (tmp_path / "fresh" / "checkpoint-20").exists()


def test_corrupted_file_in_the_store_is_detected_by_checksum(remote, tmp_path, caplog):
    c1, c2 = committed(tmp_path / "run", 10), committed(tmp_path / "run", 20)
    upload_all(remote, c1, c2)
    # change bytes of one file in the store, keeping its size
    target = storage.join(remote, "checkpoint-20", "optimizer.pt")
    data = bytearray(storage.read_bytes(target))
    data[10:20] = bytes(10)
    fs, path = storage.filesystem(target)
    with fs.open(path, "wb") as f:
        f.write(bytes(data))

    assert C.list_checkpoints(remote)[1].complete  # sizes alone cannot tell
    assert C.list_checkpoints(remote, deep=True)[1].problems == ["optimizer.pt does not match its sha256 (corrupted)"]
    caplog.set_level(logging.WARNING)
    got = C.latest_complete(str(tmp_path / "fresh"), remote)
    assert got == str(tmp_path / "fresh" / "checkpoint-10")
    assert any("checkpoint-20" in r.getMessage() and "sha256" in r.getMessage() for r in caplog.records)
    assert not (tmp_path / "fresh" / "checkpoint-20").exists()
    assert os.listdir(tmp_path / "fresh") == ["checkpoint-10"]  # the bad download is gone


def test_local_newer_incomplete_is_quarantined_and_older_local_wins(tmp_path, caplog):
    run = tmp_path / "run"
    committed(run, 2)
    make_checkpoint(run, 4)  # files, no manifest: killed before the commit
    caplog.set_level(logging.WARNING)
    assert C.latest_complete(str(run)) == str(run / "checkpoint-2")
    assert any("checkpoint-4" in r.getMessage() for r in caplog.records)
    assert not (run / "checkpoint-4").exists()
    assert len(os.listdir(run / C.QUARANTINE_DIR)) == 1
    # kept, not deleted, and said with its size and how to remove it (it was never pruned, and never said)
    moved = next(r.getMessage() for r in caplog.records if "moved" in r.getMessage())
    assert " kept, never read again: rm -r " in moved and str(run / C.QUARANTINE_DIR) in moved


def test_remote_newer_than_local_is_downloaded(remote, tmp_path):
    run = tmp_path / "run"
    upload_all(remote, committed(run, 2), committed(run, 4))
    local = tmp_path / "other-machine"
    committed(local, 2)
    assert C.latest_complete(str(local), remote) == str(local / "checkpoint-4")
    assert C.verify(str(local / "checkpoint-4")) == []


def test_a_nodes_copies_of_an_output_deleted_or_replaced_in_the_store_are_not_resumed(remote, tmp_path, caplog):
    """The node stages an object-store output in its cache: after the output was deleted in the store (to start
    over) or replaced by another run's, resume=auto went on from the cache's checkpoints of the earlier run. Those the
    store committed and no longer holds are set aside, and a copy of the store's checkpoint-N with other files gives
    way to the store's; a checkpoint the store never had (its upload cut short) is still resumed."""
    run = tmp_path / "cache"
    upload_all(remote, committed(run, 2), committed(run, 4))
    assert C.uploaded(str(run)) == {"checkpoint-2", "checkpoint-4"}
    unsent = committed(run, 6)  # saved here, stopped before its upload
    assert C.latest_complete(str(run), remote) == str(unsent)  # as before: this node's newest work is kept
    storage.rm(remote, recursive=True)  # the user deletes the output to start over
    shutil.rmtree(unsent)
    caplog.set_level(logging.WARNING)
    assert C.latest_complete(str(run), remote) is None  # from scratch, not from the deleted run's checkpoint-4
    assert "checkpoint-2, checkpoint-4: uploaded to" in caplog.text and "not resumed" in caplog.text
    assert not list(run.glob("checkpoint-*")) and len(list((run / C.QUARANTINE_DIR).iterdir())) == 2  # kept aside
    assert C.uploaded(str(run)) == set()

    # replaced: another machine's run wrote checkpoint-2 with other weights; this node's old copy gives way
    upload_all(remote, committed(tmp_path / "elsewhere", 2))
    committed(run, 2)  # this node's, of the earlier run (never uploaded from here: no record)
    theirs = C.read_manifest(storage.join(remote, "checkpoint-2"))
    got = C.latest_complete(str(run), remote)
    assert got == str(run / "checkpoint-2") and C.read_manifest(got) == theirs
    assert "checkpoint-2 here is not the store's" in caplog.text


def test_nothing_anywhere_starts_from_scratch(remote, tmp_path):
    assert C.latest_complete(str(tmp_path / "empty"), remote) is None


def test_unreachable_store_refuses_to_start_from_scratch(s3_env, tmp_path, monkeypatch):
    from tests.s3_fixtures import free_port

    monkeypatch.setattr(time, "sleep", lambda s: None)  # the retries between listings
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ftctl.errors.FtctlError, match="does not start from scratch") as exc:
        C.latest_complete(str(tmp_path), "s3://bucket/run")
    assert_no_secrets(str(exc.value))


@pytest.mark.parametrize("store", ["closed-port", "no-bucket"])
def test_a_resume_that_cannot_list_the_store_says_its_one_line(store, s3_bucket, tmp_path, monkeypatch):
    """A store error while a resume lists the checkpoints was botocore's text ('Could not connect to the endpoint URL:
    "http://.../bucket?list-type=2&prefix=..."'): now the line `ftctl sync ls` says of that store, then why the run
    does not start."""
    from tests.s3_fixtures import free_port

    monkeypatch.setattr(time, "sleep", lambda s: None)  # the retries between listings
    uri = f"{s3_bucket}-missing/run"
    if store == "closed-port":
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
        uri = f"{s3_bucket}/run"
    with pytest.raises(storage.StorageError) as said:
        C.ls(uri, echo=lambda line: None)
    assert said.value.kind == {"closed-port": "unreachable", "no-bucket": "no-bucket"}[store]
    with pytest.raises(ftctl.errors.FtctlError) as exc:
        C.latest_complete(str(tmp_path / "node"), uri)
    assert (
        str(exc.value)
        == f"{said.value} ftctl does not start from scratch while the run's checkpoints in the store cannot be read."
    )
    assert "\n" not in str(exc.value)


# ------------------------------------------------------------------ kill -9

CHILD = textwrap.dedent("""
    import logging, sys
    logging.basicConfig(level=logging.INFO)
    logging.getLogger("ftctl").setLevel(logging.DEBUG)
    from ftctl import checkpoints as C
    from tests.s3_fixtures import make_checkpoint
    run, remote = sys.argv[1], sys.argv[2]
    up = C.Uploader(remote, backoff=(0.1, 0.5))
    for step in (1, 2):
        ckpt = make_checkpoint(run, step)
        C.write_manifest(str(ckpt), step, 1, "h")
        up.submit(str(ckpt))
        up.wait(60)
    print("unreachable: the test kills this process first", flush=True)
""")


def test_without_hard_links_a_checkpoint_uploads_in_place_and_one_gone_blocks_nothing(tmp_path, monkeypatch):
    """A file system without hard links (gcsfuse, s3fs-fuse, blobfuse): each checkpoint uploads from its own
    directory. The trainer's rotation deleted one under its upload, whose retries (FileNotFoundError, forever) held
    every later checkpoint and the final model out of the store. Rotation waits while one uploads in place, and a
    checkpoint gone from the disk is given up at once."""
    import errno

    from ftctl.checkpoints import upload

    def no_link(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    put = upload._put

    def slow_put(*args):
        time.sleep(0.2)
        put(*args)

    monkeypatch.setattr(os, "link", no_link)
    monkeypatch.setattr(upload, "_put", slow_put)
    remote, run = f"file://{tmp_path}/store/run", tmp_path / "run"
    up = C.Uploader(remote, **FAST)
    up.submit(str(committed(run, 1)))
    assert up.uploading_in_place()  # what the trainer's rotation asks before deleting old checkpoints
    shutil.rmtree(run / "checkpoint-1")  # deleted under its upload anyway
    up.submit(str(committed(run, 2)))
    assert up.wait(30), up.pending()
    assert not up.uploading_in_place()
    up.close()
    assert [c.name for c in C.list_checkpoints(remote) if c.complete] == ["checkpoint-2"]


def test_a_checkpoints_files_are_hashed_side_by_side(tmp_path, monkeypatch):
    """The manifest's sha256s are the GPU's wait at every save (9 of a 1B fft checkpoint's 20 s on an H100, v78):
    files hash in threads, each digest still its own file's, in the manifest's order."""
    import hashlib
    import threading

    from ftctl.checkpoints import manifest

    ckpt = make_checkpoint(tmp_path, 3)
    if len(os.sched_getaffinity(0)) < 2:
        pytest.fail("this test needs 2 CPUs (the suite's machines have them)")
    both = threading.Barrier(2, timeout=10)  # two files hashed at the same moment, else BrokenBarrierError
    calls = []
    real = manifest.sha256_file

    def meeting(path):
        calls.append(path)
        if len(calls) <= 2:
            both.wait()
        return real(path)

    monkeypatch.setattr(manifest, "sha256_file", meeting)
    m = C.build_manifest(str(ckpt), 3, 1, "h")
    assert [f["path"] for f in m["files"]] == [r for r in storage.local_files(str(ckpt)) if not manifest._skipped(r)]
    for f in m["files"]:
        assert f["sha256"] == hashlib.sha256((ckpt / f["path"]).read_bytes()).hexdigest(), f["path"]


@pytest.mark.parametrize("point", ["local-manifest", "remote-manifest"])
def test_kill_9_between_files_and_manifest_leaves_nothing_resumable(point, s3_bucket, tmp_path):
    """A real SIGKILL, made deterministic by FTCTL_TEST_HOLD: the child holds at ``point`` for
    checkpoint-2 (all its files written/uploaded, the manifest not yet) and is killed there."""
    remote, run, ready = s3_bucket + "/run", tmp_path / "run", tmp_path / "ready"
    env = {
        **os.environ,
        "FTCTL_TEST_HOLD": f"{point}:checkpoint-2:{ready}",
        "PYTHONPATH": f"{REPO / 'tests' / 'hold'}:{REPO}",  # the hold hook
    }
    log = tmp_path / "child.log"
    with open(log, "w") as out:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(run), remote],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.time() + 60
        while not ready.exists():
            assert child.poll() is None and time.time() < deadline, log.read_text()
            time.sleep(0.02)
    finally:
        child.kill()  # SIGKILL
        child.wait(10)
    out = log.read_text()
    assert child.returncode == -9 and "unreachable" not in out
    assert_no_secrets(out)

    remote_state = {c.step: c for c in C.list_checkpoints(remote)}
    assert remote_state[1].complete and (2 not in remote_state or not remote_state[2].complete)
    if point == "remote-manifest":  # every file is in the store, only the commit is missing
        assert storage.file_sizes(remote + "/checkpoint-2").keys() == {
            f["path"] for f in json.loads((run / "checkpoint-2" / C.MANIFEST).read_text())["files"]
        }
    # neither the killed machine's directory nor a fresh one resumes at step 2
    fresh = tmp_path / "fresh"
    assert C.latest_complete(str(fresh), remote) == str(fresh / "checkpoint-1")
    if point == "local-manifest":
        assert C.latest_complete(str(run), remote) == str(run / "checkpoint-1")
        return
    # the killed machine's copy of checkpoint-2 is complete: its relaunch resumes there and sends it again (it stayed
    # cut short in the store for good, and an attempt on another machine would have gone back to checkpoint-1)
    from types import SimpleNamespace

    from ftctl.trainer.sync_callback import CheckpointSyncCallback

    resumed = C.latest_complete(str(run), remote)
    assert resumed == str(run / "checkpoint-2")
    sync = CheckpointSyncCallback(remote, resumed=resumed, **FAST)
    sync.on_train_begin(SimpleNamespace(output_dir=str(run)), SimpleNamespace(is_world_process_zero=True), None)
    assert sync.wait_for_uploads(60)
    sync.close()
    assert [c.step for c in C.list_checkpoints(remote, deep=True) if c.complete] == [1, 2]


# ------------------------------------------------------------------ store outage


@pytest.mark.parametrize("replay", [True, False], ids=["store-keeps-data", "store-lost-data"])
def test_store_down_during_upload(replay, s3_env, tmp_path, monkeypatch, caplog):
    """moto_server is SIGKILLed while checkpoint-2 is uploading (files up, manifest not yet).

    The caller goes on (submit returns at once, nothing raises), the half-written checkpoint is
    never chosen, and after the server is back on the same port the uploads complete. Restarted
    moto is empty: ``store-keeps-data`` replays its request journal (a store that comes back
    with what it acknowledged, like S3 or MinIO); ``store-lost-data`` only re-creates the bucket,
    and the uploader must notice the lost files before it commits.
    """
    caplog.set_level(logging.INFO)
    server = MotoS3(tmp_path / "moto", record=True)
    server.start()
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", server.endpoint)
        bucket = server.make_bucket()
        remote, run, ready = f"s3://{bucket}/run", tmp_path / "run", tmp_path / "ready"
        monkeypatch.setenv("FTCTL_TEST_HOLD", f"remote-manifest:checkpoint-2:{ready}")
        up = C.Uploader(remote, backoff=(0.2, 1.0), poll_interval=0.1)
        up.submit(str(committed(run, 1)))
        t0 = time.time()
        up.submit(str(committed(run, 2)))
        assert time.time() - t0 < 1
        while not ready.exists():
            time.sleep(0.02)

        # half-written: every file of checkpoint-2 is up, the manifest is not
        assert C.latest_complete(str(tmp_path / "fresh1"), remote) == str(tmp_path / "fresh1" / "checkpoint-1")
        assert any("checkpoint-2" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)

        server.kill()
        ready.unlink()  # the uploader goes on: its manifest upload now meets a dead port
        t0 = time.time()
        up.submit(str(committed(run, 3)))  # "training goes on"
        assert time.time() - t0 < 1
        assert up.lag()[0] == 2
        assert up.wait(timeout=1.5) is False
        assert any("not uploaded: checkpoint-2, checkpoint-3" in r.getMessage() for r in caplog.records)
        deadline = time.time() + 30  # s3fs and botocore retry a little on their own first
        while not any("failed (attempt" in r.getMessage() and "checkpoint-2" in r.getMessage() for r in caplog.records):
            assert time.time() < deadline, "the failed upload was not logged"
            time.sleep(0.1)
        assert up.pending() == ["checkpoint-2", "checkpoint-3"]

        server.restart(replay=replay)
        if not replay:
            server.make_bucket(bucket)
        assert up.wait(timeout=60), up.pending()
        assert up.lag() == (0, 0.0)
        up.close()

        found = {c.step: c for c in C.list_checkpoints(remote, deep=True)}
        assert found[2].complete and found[3].complete
        assert found[1].complete if replay else 1 not in found
        fresh = tmp_path / "fresh2"
        assert C.latest_complete(str(fresh), remote) == str(fresh / "checkpoint-3")
        assert_logs_clean(caplog)
    finally:
        server.kill()


# ------------------------------------------------------------------ lag, retention, nodes


def test_wait_timeout_logs_what_is_left(s3_env, tmp_path, monkeypatch, caplog):
    from tests.s3_fixtures import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing there
    caplog.set_level(logging.INFO)
    up = C.Uploader("s3://bucket/run", **FAST)
    try:
        up.submit(str(committed(tmp_path / "run", 5)))
        time.sleep(0.3)
        n, secs = up.lag()
        assert n == 1 and secs >= 0.3
        assert up.wait(0.5) is False
        # the time it waited (0.6 s where the machine is loaded): its retries must not go on into the next test's log
        said = [r.getMessage() for r in caplog.records if "not uploaded: checkpoint-5" in r.getMessage()]
        assert len(said) == 1 and re.search(r"after 0\.[5-9] s; not uploaded: checkpoint-5$", said[0]), said
    finally:
        up.close()
    assert_logs_clean(caplog)


def test_submit_without_manifest_never_raises(tmp_path, caplog, remote):
    up = C.Uploader(remote, **FAST)
    up.submit(str(make_checkpoint(tmp_path / "run", 3)))  # no manifest written
    assert up.pending() == []
    assert any("no ftctl-manifest.json" in r.getMessage() for r in caplog.records)
    up.close()


def test_upload_survives_local_rotation(remote, tmp_path):
    """Trainer's save_total_limit deletes old checkpoint dirs; a queued upload still completes."""
    import shutil

    ckpt = committed(tmp_path / "run", 3)
    up = C.Uploader(remote, **FAST)
    up.submit(str(ckpt))
    shutil.rmtree(ckpt)
    assert up.wait(60)
    up.close()
    assert C.list_checkpoints(remote, deep=True)[0].complete


def test_retention_keeps_last_k_plus_best(remote, tmp_path):
    run = tmp_path / "run"
    up = C.Uploader(remote, keep_last=2, **FAST)
    up.protected = {"checkpoint-1"}
    for step in range(1, 6):
        up.submit(str(committed(run, step)))
    assert up.wait(60)
    up.close()
    assert [c.step for c in C.list_checkpoints(remote) if c.complete] == [1, 4, 5]
    assert [c.step for c in C.list_checkpoints(remote)] == [1, 4, 5]


def test_a_checkpoint_cut_short_in_the_store_is_deleted_once_a_later_one_is_committed(remote, tmp_path, caplog):
    """checkpoint-2's upload was cut short (files, no manifest) and the run went on from checkpoint-1 with saves at
    other steps: nothing would ever replace it. It goes when a later one is committed (a retention limit or not);
    one newer than every complete checkpoint is the upload the run redoes next: left."""
    run = tmp_path / "run"
    upload_all(remote, committed(run, 1), committed(run, 2), committed(run, 4))
    for step in (2, 4):
        storage.rm(f"{remote}/checkpoint-{step}/{C.MANIFEST}")
    caplog.set_level(logging.INFO)
    upload_all(remote, committed(run, 3))
    assert [(c.step, c.complete) for c in C.list_checkpoints(remote)] == [(1, True), (3, True), (4, False)]
    assert any("checkpoint-2: no ftctl-manifest.json" in r.getMessage() for r in caplog.records)


def test_two_nodes_commit_once_both_manifests_are_up(remote, tmp_path):
    """Each node holds only its own shards; node 0 commits the merge when node 1 is done."""
    shared = {"config.json": b'{"a": 1}'}
    n0 = make_checkpoint(
        tmp_path / "node0",
        8,
        files={
            **shared,
            "trainer_state.json": b"{}",
            "global_step8/zero_pp_rank_0_optim_states.pt": b"r0" * 99,
        },
    )
    n1 = make_checkpoint(
        tmp_path / "node1",
        8,
        files={**shared, "global_step8/zero_pp_rank_1_optim_states.pt": b"r1" * 77},
    )
    for k, d in enumerate((n0, n1)):
        C.write_manifest(
            str(d),
            8,
            2,
            "h",
            name=C.node_manifest_name(k),
            node_rank=k,
            num_nodes=2,
            attempt="att-1",
        )
    # a node-1 manifest left by an earlier attempt at the same step must not count
    stale = make_checkpoint(tmp_path / "stale", 8, files={"x": b"old"})
    C.write_manifest(str(stale), 8, 2, "h", name=C.node_manifest_name(1), attempt="att-0")
    storage.put_file(
        str(stale / C.node_manifest_name(1)),
        storage.join(remote, "checkpoint-8", C.node_manifest_name(1)),
    )

    up0 = C.Uploader(remote, node_rank=0, num_nodes=2, attempt="att-1", **FAST)
    up0.submit(str(n0))
    assert up0.wait(1.0) is False  # node 1 has not uploaded: not committed
    assert not C.list_checkpoints(remote)[0].complete

    up1 = C.Uploader(remote, node_rank=1, num_nodes=2, attempt="att-1", **FAST)
    up1.submit(str(n1))
    assert up1.wait(30) and up0.wait(30)
    up0.close(), up1.close()
    (c,) = C.list_checkpoints(remote, deep=True)
    assert c.complete
    assert {f["path"] for f in c.manifest["files"]} == {
        "config.json",
        "trainer_state.json",
        "global_step8/zero_pp_rank_0_optim_states.pt",
        "global_step8/zero_pp_rank_1_optim_states.pt",
    }
    got = C.latest_complete(str(tmp_path / "resume"), remote)
    assert (Path(got) / "global_step8/zero_pp_rank_1_optim_states.pt").read_bytes() == b"r1" * 77


# ------------------------------------------------------------------ sync ls / push / pull


def test_sync_push_keeps_the_runs_retention_in_the_store(remote, tmp_path):
    """A run whose last uploads did not land (the store holds checkpoint-1..2, this node 3..4): a push left four where
    the run keeps two (save_total_limit). It sends the newest two and deletes the older, as the run's uploader would,
    keeping the best one; a store holding another run's checkpoints loses none."""
    run, other = tmp_path / "run", tmp_path / "other"
    upload_all(remote, committed(run, 1), committed(run, 2))
    shutil.rmtree(run / "checkpoint-1")
    best = json.dumps({"global_step": 4, "best_model_checkpoint": str(run / "checkpoint-1")}).encode()
    committed(run, 3), committed(run, 4, files={"trainer_state.json": best})
    (run / "spec.json").write_text(json.dumps({"spec": {"save_total_limit": 2}}))
    lines = []
    sent = C.push(str(run), remote, echo=lines.append)
    assert [s.rsplit("/", 1)[1] for s in sent] == ["checkpoint-3", "checkpoint-4"]
    assert [c.step for c in C.list_checkpoints(remote)] == [1, 3, 4]
    assert lines[-1] == f"deleted {remote}/checkpoint-2: the run keeps its 2 newest (save_total_limit)", lines
    shutil.rmtree(run / "checkpoint-4")
    committed(run, 0)  # older than the two newest: not sent to be deleted
    assert C.push(str(run), remote, echo=lines.append) == []
    assert (
        lines[-1]
        == "not pushing checkpoint-0 and checkpoint-2: older than the 2 newest the run keeps (save_total_limit)"
    )
    assert [c.step for c in C.list_checkpoints(remote)] == [1, 3, 4]

    ckpt = make_checkpoint(other, 9)  # another run's (another spec_hash): the store's are not this push's to delete
    C.write_manifest(str(ckpt), 9, world_size=1, spec_hash="another")
    (other / "spec.json").write_text(json.dumps({"spec": {"save_total_limit": 1}}))
    C.push(str(other), remote, echo=lines.append)
    assert [c.step for c in C.list_checkpoints(remote)] == [1, 3, 4, 9]


def test_sync_ls_push_pull(remote, tmp_path):
    run = tmp_path / "run"
    committed(run, 1), committed(run, 2)
    make_checkpoint(run, 3)  # incomplete: not pushed
    lines = []
    sent = C.push(str(run), remote, echo=lines.append)
    assert [s.rsplit("/", 1)[1] for s in sent] == ["checkpoint-1", "checkpoint-2"]
    assert C.push(str(run), remote, echo=lines.append) == []  # already there

    storage.put_file(
        str(run / "checkpoint-3" / "optimizer.pt"),
        storage.join(remote, "checkpoint-3", "optimizer.pt"),
    )
    out = []
    C.ls(remote, echo=out.append)
    assert [line.split()[:4] for line in out] == [
        ["checkpoint-1", "step", "1", "complete"],
        ["checkpoint-2", "step", "2", "complete"],
        ["checkpoint-3", "step", "3", "incomplete"],
    ]
    assert "KiB" in out[0]

    dest = tmp_path / "pulled"
    got = C.pull(remote, str(dest), echo=lines.append)
    assert sorted(os.listdir(dest)) == ["checkpoint-1", "checkpoint-2"]
    assert len(got) == 2 and all(C.verify(p) == [] for p in got)
    again = []
    assert C.pull(remote, str(dest), echo=again.append) == []  # nothing new: it says why
    assert again == [f"already in {dest}, complete: checkpoint-1, checkpoint-2"]
    C.pull(remote, str(dest), include_incomplete=True, echo=lines.append)
    assert (dest / "checkpoint-3" / "optimizer.pt").exists()


# ------------------------------------------------------------------ the final model
def _final_model(run: Path, weights: bytes = b"w" * 4096) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / "model.safetensors").write_bytes(weights)
    (run / "tokenizer.json").write_text("{}")
    (run / "config.json").write_text('{"model_type": "llama"}')
    (run / "spec.json").write_text("{}")


def test_the_final_model_is_whole_in_the_store_before_its_config_says_so(remote, tmp_path, monkeypatch):
    """The config (the mark of a finished run: final_saved) went up in sorted order, before the weights: a run
    stopped during its final upload held a config without weights, and its relaunch refused as finished. An
    earlier final model's config is withdrawn first, and the config goes last."""
    from ftctl.checkpoints import upload
    from ftctl.checkpoints.settings import final_saved

    storage.put_file(__file__, storage.join(remote, "config.json"))  # an earlier final model's
    run = tmp_path / "run"
    _final_model(run)
    sent, put = [], upload._put

    def watched(fs, local, uri):
        if uri.endswith("model.safetensors"):
            assert not final_saved(remote)  # nothing vouches for the weights while they go up
        sent.append(uri.rsplit("/", 1)[1])
        put(fs, local, uri)

    monkeypatch.setattr(upload, "_put", watched)
    up = C.Uploader(remote, **FAST)
    up.submit_final(str(run))
    assert up.wait(60)
    up.close()
    assert sent[-1] == "config.json" and "model.safetensors" in sent
    assert final_saved(remote)


def test_a_final_model_moves_up_with_its_config_last(tmp_path, monkeypatch):
    """Saved aside and moved up: a run stopped while saving left a config beside half its weights."""
    from ftctl.checkpoints.settings import final_saved
    from ftctl.trainer import run as run_mod

    top, staging = tmp_path / "out", tmp_path / "out" / ".ftctl" / "final"
    _final_model(top, b"old")
    _final_model(staging, b"new" * 100)
    replace = os.replace

    def stopped(src, dst):
        if str(src).endswith("model.safetensors"):
            raise KeyboardInterrupt  # the run stopped here
        replace(src, dst)

    monkeypatch.setattr(run_mod.os, "replace", stopped)
    with pytest.raises(KeyboardInterrupt):
        run_mod.publish_final(str(staging), str(top))
    assert not final_saved(str(top))  # the earlier config went first: nothing says "finished"
    monkeypatch.setattr(run_mod.os, "replace", replace)
    run_mod.publish_final(str(staging), str(top))
    assert final_saved(str(top)) and (top / "model.safetensors").read_bytes() == b"new" * 100
    assert not staging.exists()


def test_sync_says_what_is_wrong_with_its_paths_and_writes_nothing(s3_bucket, tmp_path, monkeypatch):
    """`ftctl sync push run s3:/b/run` wrote a local directory `s3:` and said "pushed"; a push from a missing
    directory and a pull from an empty prefix said nothing and exited 0 (the pull made an empty directory); a pull
    into a file was a traceback. Each is one message now, and nothing is written."""
    from ftctl.errors import FtctlError

    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    committed(run, 1)
    misspelt = s3_bucket.replace("s3://", "s3:/") + "/run"
    for call in (lambda: C.push(str(run), misspelt), lambda: C.pull(misspelt, "got"), lambda: C.ls(misspelt)):
        with pytest.raises(FtctlError, match=f"would be a local path: did you mean {s3_bucket}/run"):
            call()
    assert not (tmp_path / "s3:").exists()
    with pytest.raises(FtctlError, match="no-such: no such directory to push from"):
        C.push(str(tmp_path / "no-such"), f"{s3_bucket}/run")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FtctlError, match="nothing to push: .*empty holds no checkpoint-N and no final model"):
        C.push(str(tmp_path / "empty"), f"{s3_bucket}/run")
    with pytest.raises(FtctlError, match=f"no checkpoints and no final model under {s3_bucket}/typo: nothing to pull"):
        C.pull(f"{s3_bucket}/typo", str(tmp_path / "got"))
    assert not (tmp_path / "got").exists()
    C.push(str(run), f"{s3_bucket}/run", echo=lambda line: None)
    (tmp_path / "a-file").write_text("mine")
    with pytest.raises(FtctlError, match="a-file is a file: pull into a directory"):
        C.pull(f"{s3_bucket}/run", str(tmp_path / "a-file"))
    assert (tmp_path / "a-file").read_text() == "mine"


def test_sync_push_finishes_a_final_upload_that_timed_out(remote, tmp_path):
    """The trainer's message after a final upload ran out of time says `ftctl sync push LOCAL URI`, which sent the
    checkpoints only: the final model stayed in a cache that goes with the node."""
    from ftctl.checkpoints.settings import final_saved

    run = tmp_path / "run"
    committed(run, 1)
    _final_model(run)
    lines = []
    sent = C.push(str(run), remote, echo=lines.append)
    assert sent == [storage.join(remote, "checkpoint-1"), remote]
    assert lines[-1] == f"pushed the final model -> {remote}" and final_saved(remote)
    assert storage.file_sizes(remote)["model.safetensors"] == 4096
    assert C.push(str(run), remote, echo=lines.append) == []  # already there


def test_sync_pull_brings_the_final_model_and_never_replaces_a_local_one(remote, tmp_path):
    """`ftctl sync pull` brought the checkpoints only: the model card's own `from_pretrained(DIR)` then failed, and
    `ftctl chat DIR` took an older checkpoint. It brings the final model too, never over another one here."""
    run = tmp_path / "run"
    committed(run, 1)
    _final_model(run)
    C.push(str(run), remote, echo=lambda line: None)
    got, lines = tmp_path / "got", []
    C.pull(remote, str(got), echo=lines.append)
    assert lines[-1] == f"pulled the final model -> {got}"
    assert (got / "model.safetensors").read_bytes() == (run / "model.safetensors").read_bytes()
    assert (got / "config.json").is_file() and not list(got.glob("*.ftctl-part"))
    C.pull(remote, str(got), echo=lines.append)
    assert lines[-1] == f"already in {got}: the final model"
    other = tmp_path / "other"
    other.mkdir()
    (other / "model.safetensors").write_bytes(b"mine")
    with pytest.raises(
        ftctl.errors.FtctlError, match=f"{other} holds another model.safetensors than {remote}: nothing pulled"
    ):
        C.pull(remote, str(other), echo=lines.append)  # refused before anything is written: no checkpoint either
    assert (other / "model.safetensors").read_bytes() == b"mine" and sorted(os.listdir(other)) == ["model.safetensors"]


def test_sync_push_never_replaces_another_runs_checkpoints_or_final_model(remote, tmp_path):
    """`ftctl sync push` of one run into a URI holding another's replaced its checkpoint-N and final model, exit 0:
    the store then mixed two runs, and a resume took the other's checkpoints under this one's spec."""
    from ftctl.errors import FtctlError

    first, second = tmp_path / "first", tmp_path / "second"
    committed(first, 1), _final_model(first)
    C.push(str(first), remote, echo=lambda line: None)
    stored = {c.name: c.manifest["files"] for c in C.list_checkpoints(remote)}
    committed(second, 1), committed(second, 2)
    with pytest.raises(FtctlError, match=f"{remote} holds another checkpoint-1 than {second}: nothing pushed") as got:
        C.push(str(second), remote)
    command = f"aws s3 rm --recursive {remote}/checkpoint-1/ --endpoint-url " if remote.startswith("s3") else "rm -r "
    assert f"`{command}" in str(got.value)  # the command to run
    assert {c.name: c.manifest["files"] for c in C.list_checkpoints(remote)} == stored  # checkpoint-2 not sent either
    shutil.rmtree(second)
    _final_model(second, weights=b"v" * 5000)
    with pytest.raises(FtctlError, match=f"{remote} holds another final model than {second}: not replaced"):
        C.push(str(second), remote)
    # another fine-tune of the same base: every file of its final model the same size, its spec.json another
    _final_model(second, weights=b"v" * 4096)
    (second / "spec.json").write_text('{"spec": {"learning_rate": 0.001}}')
    with pytest.raises(FtctlError, match=f"{remote} holds another final model than {second}: not replaced"):
        C.push(str(second), remote)
    assert storage.read_bytes(storage.join(remote, "model.safetensors")) == b"w" * 4096
    with pytest.raises(ftctl.errors.FtctlError, match=f"{second} holds another run than {remote} .*: nothing pulled"):
        C.pull(remote, str(second))  # and not pulled over it either
    assert (second / "model.safetensors").read_bytes()[:1] == b"v" and not (second / "checkpoint-1").exists()


def test_a_final_model_only_on_this_node_is_not_a_finished_run(remote, tmp_path):
    """A run whose output is in the store is finished when the store holds its final model: one saved in the node's
    cache but not uploaded (stopped during the upload) resumes and uploads it."""
    from ftctl.spec import RunSpec
    from ftctl.trainer.run import already_trained

    local = tmp_path / "cache"
    _final_model(local)
    ckpt = local / "checkpoint-4"
    ckpt.mkdir()
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": 4, "max_steps": 4}))
    spec = RunSpec(max_steps=4, output_dir=remote)
    assert already_trained(spec, str(ckpt), None, str(local), remote) is None
    assert "nothing is left to train" in already_trained(spec, str(ckpt), None, str(local), None)  # a local output


def test_a_requeue_of_a_run_that_went_back_goes_on_from_its_own_checkpoints(tmp_path):
    """resume=PATH was read again by every requeued (Slurm) or recovered (SkyPilot) attempt: each went back to
    PATH, losing what the job had trained since (and transformers' rotation had often deleted PATH by then)."""
    from ftctl.spec import RunSpec
    from ftctl.trainer.run import resume_point

    out = tmp_path / "out"
    back = committed(out, 100)
    spec = RunSpec(resume=str(back), output_dir=str(out))
    assert resume_point(spec, str(out), None) == str(back)  # the first attempt
    committed(out, 150)  # the job saved once, then was preempted
    assert resume_point(spec, str(out), None) == str(out / "checkpoint-150")
    # an object-store output: only its own checkpoints count, not what this node's cache holds of an older run
    cache, store = tmp_path / "cache", f"file://{tmp_path}/store/run"
    committed(cache, 900)
    spec = RunSpec(resume=str(back), output_dir=store)
    assert resume_point(spec, str(cache), store) == str(back)


# ------------------------------------------------------------------ multi-node copies (explore6 B2, B5)


def two_node_save(shared: Path | None, tmp_path: Path, step: int = 8, attempt: str = "att-1") -> list[Path]:
    """Node 0 and node 1 save checkpoint-<step> as on_save does: each its files, then its manifest.node-<k>.json;
    into one directory (``shared``: a shared home) or each into its own (node-local disks). Returns the dirs."""
    dirs = [shared or tmp_path / "node0", shared or tmp_path / "node1"]
    mine = [{"trainer_state.json": b"{}", "model.safetensors": b"w" * 999}, {"rng_state_1.pth": b"r1" * 77}]
    for d, files in zip(dirs, mine):
        make_checkpoint(d, step, files={"config.json": b'{"a": 1}', **files})
    for k, d in enumerate(dirs):
        C.write_manifest(
            str(d / f"checkpoint-{step}"), step, 2, "h", name=C.node_manifest_name(k), node_rank=k, num_nodes=2,
            attempt=attempt,
        )  # fmt: skip
    return dirs


def commit_two_nodes(remote: str, dirs: list[Path], step: int = 8, attempt: str = "att-1") -> None:
    ups = [C.Uploader(remote, node_rank=k, num_nodes=2, attempt=attempt, **FAST) for k in (0, 1)]
    for up, d in zip(ups, dirs):
        up.submit(str(d / f"checkpoint-{step}"))
    assert all(up.wait(30) for up in ups)
    for up in ups:
        up.close()


def _committed_at(remote: str, step: int = 8, limit: float = 30) -> float:
    """time.monotonic() once checkpoint-<step> is committed in the store (its ftctl-manifest.json is there)."""
    deadline = time.monotonic() + limit
    while not storage.exists(storage.join(remote, f"checkpoint-{step}", C.MANIFEST)):
        assert time.monotonic() < deadline, "never committed"
        time.sleep(0.02)
    return time.monotonic()


def test_a_stop_commits_as_soon_as_the_last_share_is_in(remote, tmp_path):
    """F3 (explore11): node 0 looked for node 1's share every poll_interval (5 s), so each 2-node checkpoint committed
    ~5 s after it was saved; at a TERM (KillWait 5 s) every share was in the store and the commit never came. Now node
    0 looks at intervals doubling from FIRST_POLL_S, and every HURRY_POLL_S while a stop waits for its uploads."""
    import threading

    dirs = two_node_save(None, tmp_path, step=8)
    two_node_save(None, tmp_path, step=12)
    ups = [C.Uploader(remote, node_rank=k, num_nodes=2, attempt="att-1", backoff=(0.1, 0.5)) for k in (0, 1)]
    assert ups[0].poll_interval == 5.0  # the default, as the trainer runs it
    try:
        # no waiter (a save during training): node 1's share lands ~1 s after node 0's
        start = time.monotonic()
        ups[0].submit(str(dirs[0] / "checkpoint-8"))
        time.sleep(1.0)
        ups[1].submit(str(dirs[1] / "checkpoint-8"))
        assert _committed_at(remote, 8) - start < 4.0  # node 0's next look was 5 s after its first
        assert ups[0].wait(30) and ups[1].wait(30)

        # a stop: node 0 waits for its uploads (wait_for_uploads); node 1's share lands ~3.5 s after node 0's, when
        # node 0's doubling intervals are at 3.2 s
        ups[0].submit(str(dirs[0] / "checkpoint-12"))
        landed = {}

        def node1():
            time.sleep(3.2)
            ups[1].submit(str(dirs[1] / "checkpoint-12"))
            assert ups[1].wait(30)
            landed["at"] = time.monotonic()

        t = threading.Thread(target=node1)
        t.start()
        assert ups[0].wait(30)
        done = time.monotonic()
        t.join(30)
        assert done - landed["at"] < 1.0
    finally:
        for up in ups:
            up.close()
    assert [(c.step, c.complete) for c in C.list_checkpoints(remote)] == [(8, True), (12, True)]


def test_a_wait_that_runs_out_still_commits_a_checkpoint_whose_shares_are_all_in(remote, tmp_path, monkeypatch):
    """At a stop node 0 must not exit before committing a checkpoint whose every share is in the store: its wait
    ending between node 1's share and node 0's next look left it uncommitted. The wait looks once more after its
    limit."""
    from ftctl.checkpoints import upload

    monkeypatch.setattr(upload, "FIRST_POLL_S", 60.0)  # node 0 looks once, then not for a minute
    dirs = two_node_save(None, tmp_path, step=8)
    up0 = C.Uploader(remote, node_rank=0, num_nodes=2, attempt="att-1", backoff=(0.1, 0.5), poll_interval=60)
    up1 = C.Uploader(remote, node_rank=1, num_nodes=2, attempt="att-1", backoff=(0.1, 0.5))
    try:
        up0.submit(str(dirs[0] / "checkpoint-8"))
        deadline = time.monotonic() + 30
        while not storage.exists(storage.join(remote, "checkpoint-8", C.node_manifest_name(0))):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.3)  # node 0 looked, and pauses
        up1.submit(str(dirs[1] / "checkpoint-8"))
        assert up1.wait(30)
        assert up0.wait(0)  # a limit already over
    finally:
        up0.close(), up1.close()
    assert C.list_checkpoints(remote)[0].complete


def test_a_committed_multi_node_copy_on_a_shared_disk_resumes_here(remote, tmp_path, caplog):
    """Both nodes staged into one shared home: the copy holds every node's files and manifest but not the merged
    ftctl-manifest.json, which only the store got. Every resume set it aside (one checkpoint's size each time) and
    downloaded it again."""
    run = tmp_path / "home-cache"
    two_node_save(run, tmp_path)
    commit_two_nodes(remote, [run, run])
    assert not (run / "checkpoint-8" / C.MANIFEST).exists()
    caplog.set_level(logging.INFO)
    assert C.latest_complete(str(run), remote) == str(run / "checkpoint-8")
    assert "local, verified: committed by its 2 nodes' manifests" in caplog.text
    assert "downloaded" not in caplog.text and not (run / C.QUARANTINE_DIR).exists()
    store = C.read_manifest(storage.join(remote, "checkpoint-8"))
    assert C.read_manifest(str(run / "checkpoint-8"))["files"] == store["files"]  # this copy's commit too now
    assert C.latest_complete(str(run), remote) == str(run / "checkpoint-8") and not (run / C.QUARANTINE_DIR).exists()


def test_a_stop_checkpoint_the_store_did_not_commit_resumes_from_the_shared_disk(remote, tmp_path, caplog):
    """B5: the job was killed while node 0 waited for node 1's upload; the shared copy holds every node's files and
    manifest of one attempt: resumed, not set aside for the older committed one. One node's manifest of another
    attempt, or a file that does not match, is a real partial: passed over and set aside."""
    run = tmp_path / "home-cache"
    two_node_save(run, tmp_path, step=4)
    commit_two_nodes(remote, [run, run], step=4)
    two_node_save(run, tmp_path, step=6)  # saved; the job killed before any upload
    assert C.latest_complete(str(run), remote) == str(run / "checkpoint-6")
    assert C.verify(str(run / "checkpoint-6")) == []

    two_node_save(run, tmp_path, step=8)
    C.write_manifest(str(run / "checkpoint-8"), 8, 2, "h", name=C.node_manifest_name(1), node_rank=1, num_nodes=2,
                     attempt="att-0")  # fmt: skip
    two_node_save(run, tmp_path, step=10)
    (run / "checkpoint-10" / "rng_state_1.pth").write_bytes(b"xx" * 77)  # same size, other bytes
    caplog.set_level(logging.WARNING)
    assert C.latest_complete(str(run), remote) == str(run / "checkpoint-6")
    assert "checkpoint-10: local" in caplog.text and "sha256" in caplog.text
    assert "checkpoint-8: local" in caplog.text and "no ftctl-manifest.json" in caplog.text
    assert len(list((run / C.QUARANTINE_DIR).iterdir())) == 2


def test_a_share_that_never_comes_leaves_its_checkpoint_uncommitted_and_the_uploads_go_on(remote, tmp_path, caplog):
    """A resumed run sends again its stop checkpoint-8 the store did not commit, node 0 its share (of the attempt that
    saved it); node 1 sends none (it holds none, or died). Node 0 waited for node 1's manifest for as long as it ran,
    and every upload queued behind it with it: checkpoint-12, then the final model, whose upload the run then failed
    for. Now, peer_wait_s after its own share is in, checkpoint-8 stays uncommitted (never a half checkpoint marked
    complete), a warning names node 1, and the uploads after it go on."""
    dirs = two_node_save(None, tmp_path, step=8, attempt="att-0")
    two_node_save(None, tmp_path, step=12)
    (dirs[0] / MODEL_CONFIG).write_text('{"final": true}')
    up0 = C.Uploader(remote, node_rank=0, num_nodes=2, attempt="att-1", peer_wait_s=1.0, **FAST)
    up1 = C.Uploader(remote, node_rank=1, num_nodes=2, attempt="att-1", **FAST)
    caplog.set_level(logging.INFO)
    up0.submit(str(dirs[0] / "checkpoint-8"), attempt="att-0")
    for up, d in zip((up0, up1), dirs):
        up.submit(str(d / "checkpoint-12"))
    up0.submit_final(str(dirs[0]))
    start = time.monotonic()
    assert up1.wait(30) and up0.wait(30)
    assert time.monotonic() - start < 15
    up0.close(), up1.close()
    # checkpoint-8 was never committed: the retention after checkpoint-12 deleted it as a cut-short upload
    assert [(c.step, c.complete) for c in C.list_checkpoints(remote, deep=True)] == [(12, True)]
    assert "checkpoint-8: no ftctl-manifest.json (incomplete" in caplog.text
    assert json.loads(storage.read_text(storage.join(remote, MODEL_CONFIG))) == {"final": True}
    (said,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "checkpoint-8: node(s) 1 sent no share of it within" in said and "left uncommitted" in said
    assert C.latest_complete(str(tmp_path / "fresh"), remote) == str(tmp_path / "fresh" / "checkpoint-12")


def test_a_nodes_own_share_of_a_committed_checkpoint_is_completed_not_set_aside(remote, tmp_path, caplog):
    """Node-local disks: each node's copy holds its own files only. Resuming downloads the others' files and keeps
    its own (hard links, no second copy), and nothing is set aside: its files are the store's."""
    dirs = two_node_save(None, tmp_path)
    commit_two_nodes(remote, dirs)
    own = (dirs[1] / "checkpoint-8" / "rng_state_1.pth").stat().st_ino
    caplog.set_level(logging.INFO)
    for d in dirs:
        assert C.latest_complete(str(d), remote) == str(d / "checkpoint-8")
        assert C.verify(str(d / "checkpoint-8")) == [] and not (d / C.QUARANTINE_DIR).exists()
    assert (dirs[1] / "checkpoint-8" / "rng_state_1.pth").stat().st_ino == own
    assert "(2 file(s) of this copy kept)" in caplog.text  # node 1: config, its rng state; node 0: config, model, state
    assert "(3 file(s) of this copy kept)" in caplog.text
    # a share whose file differs from the store's is a real mismatch: set aside, never overwritten
    (dirs[1] / "checkpoint-8" / C.MANIFEST).unlink()
    (dirs[1] / "checkpoint-8" / "rng_state_1.pth").write_bytes(b"zz")
    assert C.latest_complete(str(dirs[1]), remote) == str(dirs[1] / "checkpoint-8")
    (aside,) = (dirs[1] / C.QUARANTINE_DIR).iterdir()
    assert (aside / "rng_state_1.pth").read_bytes() == b"zz"


def test_two_nodes_setting_aside_one_shared_homes_copies_both_go_on(tmp_path, caplog):
    """resume=never into a store output deleted since: each node's local rank 0 sets its cache's copies aside under
    the resume lock, and two nodes of a shared home do it in one directory. Where that lock holds on each node only
    (a client-local flock: BeeGFS by default, Lustre's localflock) both list the copies, and the second node's move
    of one the first had moved raised FileNotFoundError: that node's trainer failed at its start. A copy gone while
    it is listed is likewise no error."""
    from ftctl.checkpoints.resume import set_aside, uploaded
    from ftctl.checkpoints.upload import remember_uploaded

    home = tmp_path / "home-cache"
    for step in (4, 8):
        committed(home, step)
        remember_uploaded(str(home), f"checkpoint-{step}")
    seen = [[c.uri for c in C.list_checkpoints(str(home))] for _node in (0, 1)]  # both list before either moves
    caplog.set_level(logging.INFO)
    for cached in seen:
        set_aside(cached, "not in s3://b/run, and resume=never", str(home))
    assert sorted(p.name.rsplit("-", 1)[0] for p in (home / C.QUARANTINE_DIR).iterdir()) == [
        "checkpoint-4",
        "checkpoint-8",
    ]
    assert C.list_checkpoints(str(home)) == [] and uploaded(str(home)) == set()
    assert "set aside already (by another process of" in caplog.text

    vanished = make_checkpoint(home, 12)  # its manifest removed between the listing and its read
    os.symlink(home / "moved-away", vanished / C.MANIFEST)
    (c,) = C.list_checkpoints(str(home))
    assert not c.complete and c.problems == [f"gone while it was listed ({C.MANIFEST})"]


def test_a_pull_onto_a_full_disk_says_so_and_leaves_no_partial_download(tmp_path, small_disk):
    """`ftctl sync pull` (and a resume downloading its checkpoint) onto a full disk was a traceback naming the source
    file, and left the partial download taking the disk's room in .ftctl-download/."""
    store = tmp_path / "store"
    ckpt = make_checkpoint(store, 4, {"model.safetensors": os.urandom(100_000)})  # more than the 64 KB disk
    C.write_manifest(str(ckpt), 4, 1, "h")
    with pytest.raises(ftctl.errors.FtctlError) as got:
        C.pull(f"file://{store}", str(small_disk / "run"), echo=lambda line: None)
    assert str(got.value) == (
        f"no space left on the disk of {small_disk / 'run'}: saving failed with 0.1 MB free, and one save needs "
        "~0.1 MB; free some space there to download checkpoint-4"
    )
    assert [p.name for p in small_disk.rglob("*")] == ["run"]
    C.write_manifest(str(make_checkpoint(store, 4, {"model.safetensors": b"w" * 65536})), 4, 1, "h")  # the disk's size
    with pytest.raises(ftctl.errors.FtctlError, match="free some space there to download checkpoint-4$"):
        C.pull(f"file://{store}", str(small_disk / "run"), echo=lambda line: None)  # the files fit, its manifest not
    assert [p.name for p in small_disk.rglob("*")] == ["run"]
    shutil.rmtree(ckpt)  # the store's final model alone, larger than the disk too
    (store / "model.safetensors").write_bytes(os.urandom(100_000))
    (store / MODEL_CONFIG).write_text("{}")
    with pytest.raises(ftctl.errors.FtctlError, match="; free some space there to pull the final model$"):
        C.pull(f"file://{store}", str(small_disk / "run"), echo=lambda line: None)
    assert [p.name for p in small_disk.rglob("*")] == ["run"]  # no part of the weights, nor a config saying done


def test_a_push_to_a_file_store_on_a_full_disk_says_so_and_commits_nothing(tmp_path, small_disk):
    """`ftctl sync push` into a file:// store on a full disk was a traceback; what it sent is no checkpoint."""
    ckpt = make_checkpoint(tmp_path / "run", 4, {"model.safetensors": os.urandom(100_000)})
    C.write_manifest(str(ckpt), 4, 1, "h")
    with pytest.raises(ftctl.errors.FtctlError) as got:
        C.push(str(tmp_path / "run"), f"file://{small_disk}/store", echo=lambda line: None)
    assert str(got.value).startswith(f"no space left on the disk of {small_disk}/store: saving failed with ")
    assert str(got.value).endswith("one save needs ~0.1 MB; free some space there to push the run")
    assert C.list_checkpoints(f"file://{small_disk}/store") == []  # its half-written checkpoint-4 removed


def test_push_hashes_only_the_checkpoints_it_sends(tmp_path, monkeypatch):
    """`ftctl sync push` hashed every local checkpoint's every file (deep listing), those the store held already and
    those retention does not send: a run of ten 16 GB checkpoints read 160 GB at each push. It hashes the ones it
    sends, and refuses one whose file changed since its manifest; the old ones it does not send are named once."""
    from ftctl.checkpoints import manifest

    run, remote = tmp_path / "run", str(tmp_path / "store")
    for step in range(1, 7):
        committed(run, step)
    (run / "spec.json").write_text(json.dumps({"spec": {"save_total_limit": 2}}))
    lines = []
    assert len(C.push(str(run), remote, echo=lines.append)) == 2
    older = (
        "not pushing checkpoint-1, checkpoint-2 and 2 more: older than the 2 newest the run keeps (save_total_limit)"
    )
    assert lines[2] == older, lines  # after the two it pushed, once
    hashed = []
    sha256 = manifest.sha256_file
    monkeypatch.setattr(manifest, "sha256_file", lambda path: hashed.append(path) or sha256(path))
    assert C.push(str(run), remote, echo=lines.append) == [] and hashed == []  # the store holds them: none hashed
    committed(run, 7)
    assert [s.rsplit("/", 1)[1] for s in C.push(str(run), remote, echo=lines.append)] == ["checkpoint-7"]
    assert hashed and all("checkpoint-7" in path for path in hashed)
    committed(run, 8)
    victim = next(p for p in (run / "checkpoint-8").iterdir() if p.name != C.MANIFEST and p.is_file())
    victim.write_bytes(b"x" * victim.stat().st_size)  # the same size, other bytes
    assert C.push(str(run), remote, echo=lines.append) == []
