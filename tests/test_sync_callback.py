"""A real transformers.Trainer (tiny random Llama, CPU) saving to s3:// on a loopback moto_server
through CheckpointSyncCallback, and resuming from the bucket on an empty machine."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ftctl import checkpoints as C
from tests.s3_fixtures import assert_logs_clean, assert_no_secrets, make_checkpoint

REPO = Path(__file__).resolve().parents[1]
MAX_STEPS = 6


def train_tiny(output_dir, remote_uri, stop_at=None, resume=None, max_steps=MAX_STEPS):
    """Train a random LlamaForCausalLM (hidden 64, 2 layers, vocab 256) on random tokens, saving
    every 2 steps through the callback; stop early at ``stop_at`` (a preemption). Returns
    (per-step losses, final parameters, the callback)."""
    import torch
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        set_seed,
    )

    from ftctl.trainer.sync_callback import CheckpointSyncCallback

    set_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=256,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
        )
    )
    tokens = torch.randint(0, 256, (64, 32), generator=torch.Generator().manual_seed(1))
    data = [{"input_ids": t, "labels": t} for t in tokens]

    class Preempt(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == stop_at:
                control.should_training_stop = True

    sync = CheckpointSyncCallback(remote_uri, spec_hash="spec-123", backoff=(0.1, 0.5), upload_wait_s=60)
    args = TrainingArguments(
        output_dir=str(output_dir),
        max_steps=max_steps,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        save_strategy="steps",
        save_steps=2,
        logging_steps=1,
        seed=0,
        full_determinism=True,
        use_cpu=True,
        dataloader_num_workers=0,
        report_to=[],
        disable_tqdm=True,
        save_total_limit=1,
    )
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[sync, Preempt()])
    trainer.train(resume_from_checkpoint=resume)
    losses = {h["step"]: h["loss"] for h in trainer.state.log_history if "loss" in h}
    params = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return losses, params, sync


@pytest.mark.slow
def test_resume_from_bucket_matches_uninterrupted_run(s3_bucket, tmp_path, caplog):
    import torch

    from ftctl.trainer.sync_callback import resume_checkpoint

    caplog.set_level(logging.INFO)
    remote = s3_bucket + "/run"
    full_losses, full_params, _ = train_tiny(tmp_path / "full", None)

    # first attempt, "preempted" after step 4; save_total_limit=1 rotates local dirs away
    train_tiny(tmp_path / "a", remote, stop_at=4)
    found = C.list_checkpoints(remote, deep=True)
    assert [(c.step, c.complete) for c in found] == [(2, True), (4, True)]
    m = found[-1].manifest
    names = {f["path"] for f in m["files"]}
    # the manifest was written after Trainer wrote everything, state files included
    assert {
        "trainer_state.json",
        "optimizer.pt",
        "scheduler.pt",
        "rng_state.pth",
        "model.safetensors",
        "config.json",
    } <= names
    assert m["step"] == 4 and m["world_size"] == 1 and m["spec_hash"] == "spec-123"
    assert any("checkpoint uploads to" in r.getMessage() and "done" in r.getMessage() for r in caplog.records)

    # second attempt on an empty machine: resume comes from the bucket
    fresh = tmp_path / "b"
    resume = resume_checkpoint(str(fresh), remote)
    assert resume == str(fresh / "checkpoint-4")
    losses, params, _ = train_tiny(fresh, remote, resume=resume)
    assert [losses[s] for s in (5, 6)] == [full_losses[s] for s in (5, 6)]
    assert all(torch.equal(params[k], full_params[k]) for k in full_params)
    assert [c.step for c in C.list_checkpoints(remote) if c.complete] == [2, 4, 6]

    assert_logs_clean(caplog)
    for c in C.list_checkpoints(remote):
        assert_no_secrets(json.dumps(c.manifest))


CHILD = """
import logging, sys
logging.basicConfig(level=logging.INFO)
from tests.test_sync_callback import train_tiny
train_tiny(sys.argv[1], sys.argv[2])
print("unreachable: the test kills this process first", flush=True)
"""


@pytest.mark.slow
def test_kill_9_of_the_trainer_before_the_manifest(s3_bucket, tmp_path, caplog):
    """SIGKILL the training process once Trainer has written every file of checkpoint-4 and
    before on_save writes its manifest: step 4 is resumable neither locally nor from the store."""
    from ftctl.trainer.sync_callback import resume_checkpoint

    remote, run, ready = s3_bucket + "/run", tmp_path / "run", tmp_path / "ready"
    env = {
        **os.environ,
        "PYTHONPATH": f"{REPO / 'tests' / 'hold'}:{REPO}",  # the hold hook
        "FTCTL_TEST_HOLD": f"local-manifest:checkpoint-4:{ready}",
    }
    log = tmp_path / "child.log"
    with open(log, "w") as out:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(run), remote],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    try:
        deadline = time.time() + 120
        while not ready.exists():
            assert child.poll() is None and time.time() < deadline, log.read_text()
            time.sleep(0.05)
        # the upload of checkpoint-2 goes on beside the held save; let it finish first
        while not [c for c in C.list_checkpoints(remote) if c.complete]:
            assert time.time() < deadline, log.read_text()
            time.sleep(0.1)
    finally:
        child.kill()
        child.wait(10)
    assert child.returncode == -9
    assert "unreachable" not in log.read_text()
    assert_no_secrets(log.read_text())
    assert (run / "checkpoint-4" / "trainer_state.json").exists()  # files saved, no manifest
    assert not (run / "checkpoint-4" / C.MANIFEST).exists()

    # save_total_limit=1 rotated checkpoint-2 away locally: nothing local is resumable
    caplog.set_level(logging.WARNING)
    assert resume_checkpoint(str(run)) is None
    assert any("checkpoint-4" in r.getMessage() and "incomplete" in r.getMessage() for r in caplog.records)
    assert resume_checkpoint(str(run), remote) == str(run / "checkpoint-2")
    assert resume_checkpoint(str(tmp_path / "fresh"), remote) == str(tmp_path / "fresh" / "checkpoint-2")
    assert [c.step for c in C.list_checkpoints(remote) if c.complete] == [2]


def test_rotation_keeps_checkpoints_uploading_in_place_and_rotates_the_rest(tmp_path):
    """Without hard links each checkpoint uploads from its own directory, and the one just saved always is: rotation
    that waited for no in-place upload never ran, and every checkpoint stayed on the disk. The busy ones are kept,
    the others rotate as transformers would."""
    from ftctl.trainer.sync_callback import rotate_around

    for step in (10, 20, 30, 40, 50, 60):
        (tmp_path / f"checkpoint-{step}").mkdir()
    rotate_around(str(tmp_path), 2, None, {"checkpoint-60"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-50", "checkpoint-60"]
    (tmp_path / "checkpoint-70").mkdir()
    rotate_around(str(tmp_path), 2, str(tmp_path / "checkpoint-50"), {"checkpoint-50", "checkpoint-70"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-50", "checkpoint-60", "checkpoint-70"]
    rotate_around(str(tmp_path), 1, None, {"checkpoint-60"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-60", "checkpoint-70"]


@pytest.mark.parametrize("disk", ["shared", "node-local"])
def test_one_process_per_directory_chooses_and_the_others_take_its_choice(disk, s3_bucket, tmp_path, monkeypatch):
    """Four processes on two nodes (threads here, with torchrun's store: a real TCPStore). Both nodes staged into one
    shared home and were seen racing (rank 1 set checkpoint-135 aside while rank 0 chose it): now rank 0 alone chooses
    there; on node-local disks node 1's local rank 0 gets rank 0's checkpoint for its own disk."""
    import threading
    from datetime import timedelta

    import torch.distributed as dist

    from ftctl.checkpoints import latest_complete
    from ftctl.trainer import sync_callback as S
    from tests.test_checkpoints import commit_two_nodes, two_node_save

    remote = s3_bucket + "/run"
    dirs = two_node_save(tmp_path / "home" if disk == "shared" else None, tmp_path)
    commit_two_nodes(remote, dirs)
    calls = []

    def counted(local_dir, *a, **kw):
        calls.append((local_dir, kw.get("step")))
        return latest_complete(local_dir, *a, **kw)

    monkeypatch.setattr(S.checkpoints, "latest_complete", counted)
    server = dist.TCPStore("127.0.0.1", 0, is_master=True, timeout=timedelta(seconds=30))
    got = {}

    def process(rank):
        store = dist.TCPStore("127.0.0.1", server.port, is_master=False, timeout=timedelta(seconds=30))
        peers = S.Peers(dist.PrefixStore("t", store), rank, rank % 2, 4)
        got[rank] = S.resume_checkpoint(str(dirs[rank // 2]), remote, peers=peers)

    threads = [threading.Thread(target=process, args=(r,)) for r in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert got == {r: str(dirs[r // 2] / "checkpoint-8") for r in range(4)}
    if disk == "shared":
        assert calls == [(str(dirs[0]), None)]
    else:
        assert sorted(calls, key=str) == [(str(dirs[0]), None), (str(dirs[1]), 8)]
    assert not list(dirs[0].glob(S.MARK + "*")) and not list(dirs[0].glob(".ftctl-quarantine"))


def test_a_multi_node_stop_checkpoint_the_store_did_not_commit_is_committed_by_the_resumed_run(
    s3_bucket, tmp_path, monkeypatch, caplog
):
    """Two nodes of a shared home saved their stop checkpoint-8 (each its manifest of one attempt) and the job was
    killed while uploading it: the store holds node 1's share and manifest, not the commit. The relaunch resumes from
    the shared copy (every node's manifest) and sent nothing: the store's newest stayed checkpoint-4, where a later
    attempt on fresh nodes went back to. Now each node sends its share again and node 0 commits the merge."""
    import threading
    from datetime import timedelta

    import torch.distributed as dist
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from ftctl import storage
    from ftctl.trainer import sync_callback as S
    from tests.test_checkpoints import commit_two_nodes, two_node_save

    remote, home = s3_bucket + "/run", tmp_path / "home"
    two_node_save(home, tmp_path, step=4)
    commit_two_nodes(remote, [home, home], step=4)
    two_node_save(home, tmp_path, step=8, attempt="att-2")
    ckpt = home / "checkpoint-8"
    for rel in ("rng_state_1.pth", C.node_manifest_name(1)):  # the upload cut short: node 0's share is not in
        storage.put_file(str(ckpt / rel), storage.join(remote, "checkpoint-8", rel))
    assert [(c.step, c.complete) for c in C.list_checkpoints(remote)] == [(4, True), (8, False)]

    server = dist.TCPStore("127.0.0.1", 0, is_master=True, timeout=timedelta(seconds=30))
    got = {}

    def process(rank):  # four processes on two nodes (threads, with torchrun's store)
        store = dist.TCPStore("127.0.0.1", server.port, is_master=False, timeout=timedelta(seconds=30))
        got[rank] = S.resume_checkpoint(
            str(home), remote, peers=S.Peers(dist.PrefixStore("t", store), rank, rank % 2, 4)
        )

    threads = [threading.Thread(target=process, args=(r,)) for r in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert got == {r: str(ckpt) for r in range(4)}

    caplog.set_level(logging.INFO)
    args, state, control = TrainingArguments(output_dir=str(home), report_to=[]), TrainerState(), TrainerControl()
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    syncs = []
    for node in (0, 1):  # each node's local rank 0, as torchrun numbers it
        monkeypatch.setenv("GROUP_RANK", str(node))
        syncs.append(S.CheckpointSyncCallback(remote, spec_hash="h", backoff=(0.1, 0.5), poll_interval=0.1,
                                              resumed=got[2 * node]))  # fmt: skip
    assert [(s.node_rank, s.num_nodes) for s in syncs] == [(0, 2), (1, 2)]
    for sync in syncs:
        sync.on_train_begin(args, state, control)
    assert all([sync.wait_for_uploads(30) for sync in syncs])
    for sync in syncs:
        sync.close()

    assert [(c.step, c.complete) for c in C.list_checkpoints(remote, deep=True)] == [(4, True), (8, True)]
    stored = C.read_manifest(storage.join(remote, "checkpoint-8"))
    assert (stored["attempt"], stored["num_nodes"]) == ("att-2", 2)
    assert stored["files"] == C.read_manifest(str(ckpt))["files"]
    assert {"model.safetensors", "rng_state_1.pth"} <= {f["path"] for f in stored["files"]}  # both nodes' files
    assert "checkpoint-8 is not complete in" in caplog.text and "committed" in caplog.text
    fresh = tmp_path / "fresh-node"  # a spot job that comes back elsewhere
    assert C.latest_complete(str(fresh), remote) == str(fresh / "checkpoint-8")


def test_a_stop_whose_checkpoint_did_not_reach_the_store_says_so_and_its_requeue_says_it_starts_again(
    tiny_model_dir, tiny_data, tmp_path, one_thread, s3_env, monkeypatch, caplog, capsys
):
    """F5 (explore11): the store down at a USR2, the stop's upload gave up, and the trainer said only 'stopped ...;
    resume with the same output dir'; the requeued attempt on a fresh node printed 'step 1/20' with no line saying
    why. Now the stop is one error line naming the checkpoint and the directory holding it, metrics.jsonl records
    it as not in the store, and the requeued attempt says it starts from step 0. The status word stays preempted
    (the batch script requeues on it: resumed from the kept copy where the nodes share that disk)."""
    import signal

    from transformers import TrainerCallback

    from ftctl.trainer.run import train
    from tests.s3_fixtures import MotoS3
    from tests.trainer_fixtures import make_run

    server = MotoS3(tmp_path / "moto")
    server.start()
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", server.endpoint)
        bucket = server.make_bucket()

        class StoreDownThenSignal(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == 2:
                    server.kill()
                    os.kill(os.getpid(), signal.SIGUSR2)

        uri = f"s3://{bucket}/runs/tiny"
        spec, plan = make_run(tiny_model_dir, tiny_data, uri, "lora", max_steps=4, save_steps=100, resume="auto",
                              lora_r=4, lora_alpha=8, upload_wait_s=2)  # fmt: skip
        status = tmp_path / "status"
        monkeypatch.setenv("FTCTL_STATUS_FILE", str(status))
        monkeypatch.setenv("FTCTL_LOCAL_DIR", str(tmp_path / "node-a"))
        caplog.set_level(logging.INFO)
        first = train(spec, plan, callbacks=[StoreDownThenSignal()], echo=lambda *_: None)
        assert first.status == "preempted" and status.read_text().strip() == "preempted"
        name = f"checkpoint-{first.global_step}"
        kept = tmp_path / "node-a" / name
        assert C.verify(str(kept)) == []
        (said,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
        assert f"but its {name} did not reach {uri}" in said and f"it is kept in {kept}" in said
        # why, in the same line: the store's last error as storage classifies it (task 127)
        assert f"upload_wait_s=2: the store's last error: Cannot reach the S3 endpoint {server.endpoint} for" in said
        assert "resume with the same output dir" not in caplog.text
        rows = [json.loads(line) for line in (tmp_path / "node-a" / "metrics.jsonl").read_text().splitlines()]
        assert rows[-1]["event"] == "stop" and (rows[-1]["checkpoint"], rows[-1]["in_store"]) == (name, False)

        server.restart(replay=False)  # the store back, empty; the requeued attempt on a fresh node
        server.make_bucket(bucket)
        caplog.clear()
        monkeypatch.setenv("FTCTL_ATTEMPT", "1")
        monkeypatch.setenv("FTCTL_LOCAL_DIR", str(tmp_path / "node-b"))
        second = train(spec, plan, echo=lambda *_: None)
        assert second.status == "complete"
        assert f"attempt 1 of this job starts from step 0: neither {uri} nor {tmp_path / 'node-b'} holds" in caplog.text
    finally:
        server.kill()


@pytest.mark.parametrize("disk", ["shared", "node-local"])
def test_nodes_that_stage_into_one_directory_send_each_file_once(disk, s3_bucket, tmp_path, monkeypatch):
    """F9 (explore11): on a home the nodes share, every node stages into one ~/.cache/ftctl/runs/<slug>, and each
    listed every file of the checkpoint in its manifest and uploaded it: every file once per node. Now the first node
    of a directory lists and sends its files, the others their manifest only; nodes with a disk of their own each
    send their own, as before. Either way the store's commit holds every file and a fresh node resumes it."""
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from ftctl import storage
    from ftctl.checkpoints import upload
    from ftctl.checkpoints.manifest import is_manifest, nodes_committed
    from ftctl.trainer import sync_callback as S

    remote = s3_bucket + "/run"
    dirs = [tmp_path / "home"] * 2 if disk == "shared" else [tmp_path / "node0", tmp_path / "node1"]
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    # rank 0's attempt, as the trainer broadcasts it (torch.distributed is not started in this one process)
    monkeypatch.setattr(S.CheckpointSyncCallback, "_agree_on_attempt", lambda self: "att-1")
    sent = []
    put = upload._put
    monkeypatch.setattr(upload, "_put", lambda fs, local, uri: (sent.append(uri), put(fs, local, uri)))
    syncs, state, control = [], TrainerState(global_step=8), TrainerControl()
    for node, d in enumerate(dirs):  # each node's local rank 0, as torchrun numbers it
        d.mkdir(exist_ok=True)
        monkeypatch.setenv("GROUP_RANK", str(node))
        sync = S.CheckpointSyncCallback(remote, spec_hash="h", backoff=(0.1, 0.5), poll_interval=0.1)
        sync.on_train_begin(TrainingArguments(output_dir=str(d), report_to=[]), state, control)
        syncs.append(sync)
    assert [s.lists_files for s in syncs] == [True, disk == "node-local"]
    mine = [{"model.safetensors": b"w" * 999, "rng_state_0.pth": b"r0" * 50}, {"rng_state_1.pth": b"r1" * 77}]
    for d, files in zip(dirs, mine):  # every rank's files written (the on_save barrier)
        make_checkpoint(d, 8, files={"config.json": b'{"a": 1}', **files})
    for node, (sync, d) in enumerate(zip(syncs, dirs)):
        monkeypatch.setenv("GROUP_RANK", str(node))
        sync.on_save(TrainingArguments(output_dir=str(d), report_to=[]), state, control)
    assert all([sync.wait_for_uploads(30) for sync in syncs])
    for sync in syncs:
        sync.close()

    files = sorted(uri.rsplit("/checkpoint-8/", 1)[1] for uri in sent if not is_manifest(uri.rsplit("/", 1)[1]))
    every = ["config.json", "model.safetensors", "rng_state_0.pth", "rng_state_1.pth"]
    assert files == (every if disk == "shared" else sorted([*every, "config.json"]))  # node-local: each its config
    stored = C.read_manifest(storage.join(remote, "checkpoint-8"))
    assert sorted(f["path"] for f in stored["files"]) == every
    node1 = C.read_manifest(storage.join(remote, "checkpoint-8"), C.node_manifest_name(1))
    assert [f["path"] for f in node1["files"]] == ([] if disk == "shared" else ["config.json", "rng_state_1.pth"])
    assert C.latest_complete(str(tmp_path / "fresh"), remote) == str(tmp_path / "fresh" / "checkpoint-8")
    if disk == "shared":  # the shared copy is committed by its nodes' manifests too (a stop the store did not get)
        assert nodes_committed(str(dirs[0] / "checkpoint-8"))["files"] == stored["files"]
