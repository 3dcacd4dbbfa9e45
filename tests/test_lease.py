"""The lease on an object-store output (ftctl.lease): two jobs launched into one output without knowing of each other
(two laptops' FTCTL_HOMEs, two SkyPilot clusters) both trained into its checkpoints; nothing refused the second
(explore14/15). The store is moto; the trainer side is the tiny model on CPU."""

from __future__ import annotations

import json
import threading
import time

import pytest

from ftctl import backend, lease, storage
from ftctl.backend import JobRef
from ftctl.errors import FtctlError
from ftctl.runpaths import TRAIN_LEASE
from ftctl.sky import backend as sky_backend
from tests.test_sky_jobs import FakeSky, forget_ended
from tests.trainer_fixtures import make_run


def put(output: str, **record) -> None:
    uri = storage.join(output, TRAIN_LEASE)
    storage.filesystem(uri)[0].pipe_file(uri.removeprefix("s3://"), json.dumps(record).encode())


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
    assert said.startswith(f"{out} is being trained into by {holder} on node1 (run r1, renewed 2")
    assert "another --output" in said and f"lets go {lease.STALE_S:.0f} s after its last renewal" in said
    put(out, holder=holder, renewed_unix=time.time() - lease.STALE_S - 1)  # its trainer was killed long ago
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
