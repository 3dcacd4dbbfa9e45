"""A disk that fills up (explore24): what a failed save wrote is not left holding its room, and no half row is left.

The full disk is injected (an OSError ENOSPC) where that reaches the same code; the half-row test needs a real one
(tests/disk_fixtures.small_disk: a tmpfs, root only, skipped otherwise).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sys

import pytest

from ftctl import failures
from ftctl.checkpoints import MANIFEST, discard_uncommitted, node_manifest_name

FIX = "free some space"


def enospc(path) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def test_a_save_the_disk_refused_leaves_no_half_checkpoint_holding_its_room(tmp_path, monkeypatch):
    """explore24: a checkpoint save that ran out of room left its half-written checkpoint-N (1.0 MB of a 1.7 MB
    tiny fft checkpoint; of an 8B run's 96 GB, tens of GB), and the relaunch set it aside in .ftctl-quarantine for
    good: the line said 0.0 MB free, the user freed one save's room, and the half one stayed. The failed save's
    directory is removed, its room counted as free in the line, and a committed checkpoint is never touched."""
    run = tmp_path / "run"
    half = run / "checkpoint-6"
    half.mkdir(parents=True)
    (half / "model.safetensors").write_bytes(b"w" * 300_000)
    (half / "optimizer.pt").write_bytes(b"o" * 200_000)
    done = run / "checkpoint-3"
    done.mkdir()
    (done / "model.safetensors").write_bytes(b"w" * 1000)
    (done / MANIFEST).write_text("{}")
    by_nodes = run / "checkpoint-9"  # a multi-node checkpoint committed by its nodes' manifests
    by_nodes.mkdir()
    (by_nodes / node_manifest_name(0)).write_text("{}")

    disk = shutil.disk_usage(run)
    monkeypatch.setattr(failures.shutil, "disk_usage", lambda path: disk._replace(free=100_000))
    line = failures.disk_full(enospc(half / "optimizer.pt"), str(run), 1.7e6, FIX, lambda: discard_uncommitted(half))
    assert line == (
        f"no space left on the disk of {run}: saving failed with 0.6 MB free once its half-written checkpoint-6 "
        f"(0.5 MB) was removed, and one save needs ~1.7 MB; {FIX}"
    )  # the disk named by its run directory, not by the directory removed
    assert not half.exists()
    assert discard_uncommitted(str(done)) is None and (done / "model.safetensors").exists()
    assert discard_uncommitted(str(by_nodes)) is None and by_nodes.is_dir()
    assert discard_uncommitted(str(run / "checkpoint-12")) is None  # none there

    staging = run / ".ftctl" / "final"
    staging.mkdir(parents=True)
    (staging / "config.json").write_text("{}")
    said = failures.disk_full(enospc(staging / "model.safetensors"), str(run), 5e5, FIX,
                              lambda: discard_uncommitted(staging, "final model"))  # fmt: skip
    assert "free once its half-written final model (2 bytes) was removed" in said and not staging.exists()

    cleared = []
    assert failures.disk_full(RuntimeError("not about disks"), str(run), 1e6, FIX, lambda: cleared.append(1)) is None
    assert not cleared  # removed only for a full disk: another failure's files are left to look at


def test_a_metrics_row_the_disk_refused_leaves_no_half_row(small_disk):
    """A row appended to metrics.jsonl on a full disk was written up to the end of the file's last block: half a row,
    which the next attempt's start record was appended onto (one line that is neither, dropped by a resume with that
    attempt's record). The file is left as it was."""
    from ftctl.trainer.callbacks import MetricsCallback
    from tests.disk_fixtures import fill

    path = small_disk / "metrics.jsonl"
    rows = json.dumps({"step": 1, "loss": 2.0, "pad": "x" * 3000}) + "\n"
    path.write_text(rows)  # most of a block: the next row fits in part
    fill(small_disk)
    with pytest.raises(OSError) as got:
        MetricsCallback(str(path))._write({"step": 2, "loss": 1.5, "pad": "y" * 2000})
    assert got.value.errno == errno.ENOSPC
    assert path.read_text() == rows


def test_a_push_the_stores_disk_refused_leaves_no_half_checkpoint_there(tmp_path, monkeypatch):
    """`ftctl sync push RUN file:///store` onto a full disk left the checkpoint it was sending half there (uncommitted:
    never resumed, never removed but by a later push of it); it is removed, and the line counts its room free."""
    from pathlib import Path

    from ftctl import storage
    from ftctl.checkpoints import list_checkpoints, sync, upload, write_manifest
    from ftctl.errors import FtctlError

    run, store = tmp_path / "run", tmp_path / "store"
    for step in (3, 6):
        ckpt = run / f"checkpoint-{step}"
        ckpt.mkdir(parents=True)
        (ckpt / "model.safetensors").write_bytes(b"w" * 200_000)
        (ckpt / "optimizer.pt").write_bytes(b"o" * 400_000)
        write_manifest(str(ckpt), step, 1, "run")
    real_put = upload._put

    def put(fs, local, uri):
        if uri.endswith("checkpoint-6/optimizer.pt"):
            Path(storage.local_path(uri)).write_bytes(b"o" * 100_000)  # what fit
            raise enospc(storage.local_path(uri))
        real_put(fs, local, uri)

    monkeypatch.setattr(upload, "_put", put)
    with pytest.raises(FtctlError) as got:
        sync.push(str(run), f"file://{store}", echo=lambda line: None)
    assert f"no space left on the disk of {store}: saving failed with " in str(got.value)
    assert "free once its half-written checkpoint-6 (0.3 MB) was removed" in str(got.value)  # its model and part
    assert [(c.name, c.complete) for c in list_checkpoints(str(store))] == [("checkpoint-3", True)]


def test_a_run_whose_checkpoint_finds_the_disk_full_resumes_as_if_never_stopped(
    tiny_model_dir, tiny_data, tmp_path, monkeypatch, one_thread
):
    """explore24 end to end: checkpoint-6's optimizer.pt refused partway (ENOSPC). The run says so in one line,
    checkpoint-3 is whole and checkpoint-6 gone (its half was left, and the relaunch set it aside in .ftctl-quarantine
    for good); the relaunch resumes from checkpoint-3 and ends with the weights of a run never stopped."""
    from pathlib import Path

    import torch
    from safetensors.torch import load_file

    from ftctl.checkpoints import verify
    from ftctl.errors import FtctlError
    from ftctl.trainer.run import train
    from tests.trainer_fixtures import make_run

    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if str(f).endswith(os.path.join("checkpoint-6", "optimizer.pt")):
            Path(f).write_bytes(b"half an optimizer")
            raise enospc(f)
        return real_save(obj, f, *args, **kwargs)

    spec, plan = make_run(tiny_model_dir, tiny_data, tmp_path / "run", resume="auto")
    run = Path(spec.output)
    with monkeypatch.context() as m, pytest.raises(FtctlError) as got:
        m.setattr(torch, "save", save)
        train(spec, plan, echo=lambda line: None)
    assert f"no space left on the disk of {run}: saving failed with " in str(got.value)
    assert "free once its half-written checkpoint-6 (0.6 MB) was removed" in str(got.value)  # its model's 0.56 MB
    assert not (run / "checkpoint-6").exists() and verify(str(run / "checkpoint-3")) == []

    assert train(spec, plan, echo=lambda line: None).status == "complete"
    assert not (run / ".ftctl-quarantine").exists()
    spec, plan = make_run(tiny_model_dir, tiny_data, tmp_path / "never-stopped")
    train(spec, plan, echo=lambda line: None)
    resumed, straight = load_file(run / "model.safetensors"), load_file(Path(spec.output) / "model.safetensors")
    assert resumed.keys() == straight.keys() and all(torch.equal(resumed[k], straight[k]) for k in straight)


def test_a_universal_conversion_the_disk_refused_says_so_and_leaves_no_half_of_it(tmp_path, monkeypatch, caplog):
    """A ZeRO checkpoint resumed on another number of processes is converted to DeepSpeed's universal one beside it
    (reshard.to_universal), which takes about twice its shards' room while it converts. On a full disk (2 processes'
    ZeRO-2 checkpoint-3 resumed on 1, real tmpfs: 3.7 MB free for 2.3 MB of shards) it said "could not convert ...
    (RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos 768 vs 662); resume on the number of
    processes that wrote it": no word of the disk, and only once it failed (minutes for a large model). Now a warning
    where the disk has less than its room, and the disk-full line; the half conversion is gone (as before),
    an earlier one cut off before its latest_universal is removed before converting again (it held its room), and a
    latest_universal the disk refused leaves no temporary file."""
    import subprocess

    from ftctl.errors import FtctlError
    from ftctl.trainer import reshard
    from ftctl.trainer.distributed import Processes

    ckpt = tmp_path / "checkpoint-3"
    tag = ckpt / "global_step3"
    tag.mkdir(parents=True)
    (ckpt / "latest").write_text("global_step3")
    for rank in (0, 1):
        (tag / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").write_bytes(b"o" * 500_000)
    stale = ckpt / "global_step3_universal"  # an earlier attempt's, cut off before its latest_universal
    (stale / "zero").mkdir(parents=True)
    (stale / "zero" / "optimizer_state.pt").write_bytes(b"s" * 300_000)
    seen = []

    def converter(cmd, **kwargs):  # what ds_to_universal prints where torch.save's write found the disk full
        seen.append(stale.exists())
        out = cmd[cmd.index("--output_folder") + 1]
        os.makedirs(os.path.join(out, "zero"))
        open(os.path.join(out, "zero", "half.pt"), "wb").write(b"h" * 1000)
        err = "Traceback ...\nRuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos 768 vs 662\n"
        return subprocess.CompletedProcess(cmd, 1, "", err)

    class Plan:
        strategy = "zero2"

    disk = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(failures.shutil, "disk_usage", lambda path: disk._replace(free=1_200_000))
    monkeypatch.setattr(reshard.subprocess, "run", converter)
    with pytest.raises(FtctlError) as got:
        reshard.prepare(str(ckpt), Plan, Processes(0, 0, 1, on_cpu=True))
    assert str(got.value) == (
        f"no space left on the disk of {ckpt}: converting it to DeepSpeed's universal checkpoint failed with 1.2 MB "
        "free, and the conversion needs ~2.0 MB; free some space there (the conversion is kept in checkpoint-3 for "
        "later resumes), or resume on the 2 processes that wrote it (no conversion)"
    )
    assert "takes up to ~2.0 MB beside it while it converts, and its disk has 1.2 MB free" in caplog.text
    assert seen == [False]  # the stale one was gone before converting
    assert sorted(p.name for p in ckpt.iterdir()) == ["global_step3", "latest"]  # nothing half left

    monkeypatch.setattr(failures.shutil, "disk_usage", lambda path: disk._replace(free=10_000_000))
    with pytest.raises(FtctlError, match="could not convert .* resume on the number of processes"):
        reshard.prepare(str(ckpt), Plan, Processes(0, 0, 1, on_cpu=True))  # room enough: not the disk

    def converted(cmd, **kwargs):
        os.makedirs(os.path.join(cmd[cmd.index("--output_folder") + 1], "zero"))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    def refusing_open(path, *args, **kwargs):  # latest_universal's temporary file: created, then the disk is full
        fh = open(path, *args, **kwargs)
        fh.write = lambda text: (_ for _ in ()).throw(enospc(path))
        return fh

    monkeypatch.setattr(reshard.subprocess, "run", converted)
    monkeypatch.setattr(reshard, "open", refusing_open, raising=False)
    with pytest.raises(FtctlError, match="converting it to DeepSpeed's universal checkpoint failed with 10.0 MB"):
        reshard.prepare(str(ckpt), Plan, Processes(0, 0, 1, on_cpu=True))
    assert sorted(p.name for p in ckpt.iterdir()) == ["global_step3", "global_step3_universal", "latest"]
    monkeypatch.undo()
    monkeypatch.setattr(reshard.subprocess, "run", converted)
    assert reshard.prepare(str(ckpt), Plan, Processes(0, 0, 1, on_cpu=True)) is True  # the next attempt converts
    assert (ckpt / "latest_universal").read_text() == "global_step3_universal"


def test_a_slurm_or_docker_jobs_status_names_the_full_disk_not_the_peer_that_lost_it():
    """Without the launcher's records (Slurm, docker, a run by hand) each rank prints its own line, and `ftctl status`
    reads the last of them from the job's log. ZeRO-3 on 2 gloo processes, checkpoint-6 refused by a full tmpfs: rank 0
    said the disk line, then rank 1 that its peer was gone, and status said "RuntimeError: [...pair.cc:553] Connection
    closed by peer ..." (the effect). A rank's own error now goes before another's word of a lost peer."""
    disk = (
        "error: no space left on the disk of /out/run: saving failed with 1.5 MB free once its half-written "
        "checkpoint-6 (1.5 MB) was removed, and one save needs ~1.6 MB; free some space or choose --output on a "
        "larger disk (or an object store); the run resumes from its last complete checkpoint"
    )
    peer = (
        "error: RuntimeError: [/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection "
        "closed by peer [127.0.0.1]:65257. This is typically caused by a remote worker crashing. Check the logs of the "
        "remote worker before reporting an error."
    )
    log = f"{{'loss': 6.1, 'step': 5}}\n{disk}\n{peer}\nW1205 torch.distributed.elastic ... SIGTERM\n"
    assert failures.error_line(log) == disk.removeprefix("error: ")
    assert failures.error_line(f"step 5\n{peer}\n") == peer.removeprefix("error: ")  # all there is: said
    nccl = "error: DistBackendError: NCCL error: remote process exited or there was a network error"
    assert failures.error_line(f"{disk}\n{nccl}\n") == disk.removeprefix("error: ")


REFUSING_RUNNER = """
import errno, os, sys, time
from pathlib import Path
import torch
real_save = torch.save
def save(obj, f, *args, **kwargs):  # DeepSpeed writes every rank's shard with torch.save: rank 1's finds no room
    if str(f).endswith(os.path.join("checkpoint-3", "global_step3", "zero_pp_rank_1_mp_rank_00_optim_states.pt")):
        while not Path(f).parents[1].joinpath("latest").exists():  # rank 0 done with its files, at the barrier
            time.sleep(0.05)
        Path(f).write_bytes(b"half a shard")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))
    return real_save(obj, f, *args, **kwargs)
torch.save = save
from ftctl.trainer.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_zero2_shard_the_disk_refused_on_rank_1_leaves_no_half_checkpoint(tiny_model_dir, tiny_data, tmp_path):
    """ZeRO-2 on 2 processes (gloo): every rank writes its optimizer shard, and the disk refused rank 1's at the first
    checkpoint while rank 0 had written its own (model, shard 0) and waited. Only local rank 0 removed a half
    checkpoint, and torchrun stopped it (gloo: connection closed): checkpoint-3 stayed, 2.0 MB of its 2.9 MB, and the
    relaunch set it aside in .ftctl-quarantine for good. The rank whose write was refused removes it; its line speaks
    for the job; the relaunch trains from the start with nothing set aside."""
    import subprocess

    from ftctl.envvars import FAILURE_DIR_ENV
    from tests.trainer_fixtures import losses_by_step, make_run, run_trainer_cli, subprocess_env, write_spec

    spec, plan = make_run(tiny_model_dir, tiny_data, tmp_path / "run", gpus="2xcpu", strategy="zero2",
                          max_steps=3, save_steps=3, resume="auto")  # fmt: skip
    run, path = spec.output, write_spec(spec, plan, tmp_path / "spec.json")
    runner = tmp_path / "refusing.py"
    runner.write_text(REFUSING_RUNNER)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    env = subprocess_env(**{FAILURE_DIR_ENV: tmp_path / "failures"})
    proc = subprocess.run([*torchrun, str(runner), "--spec", str(path)], env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode != 0
    line, relaunch_helps = failures.summarize(failures.read(tmp_path / "failures"))
    assert line.startswith("rank 1 on ") and not relaunch_helps, line  # free the space first
    assert f"no space left on the disk of {run}: saving failed with " in line
    assert "free once its half-written checkpoint-3 (" in line
    assert not os.path.exists(os.path.join(run, "checkpoint-3"))

    assert run_trainer_cli(path, nproc=2).returncode == 0
    assert not os.path.exists(os.path.join(run, ".ftctl-quarantine"))
    assert list(losses_by_step(run)) == [1, 2, 3] and os.path.isfile(os.path.join(run, "model.safetensors"))


def test_a_half_checkpoint_the_other_ranks_write_on_into_is_removed_too(tmp_path, monkeypatch):
    """A rank whose shard the disk refused removed checkpoint-3 while rank 0 was still saving: DeepSpeed's rank 0 made
    its directories again and wrote its recovery script and `latest` there (seen with 2 gloo processes), a half
    checkpoint the relaunch set aside. The rank that removed it watches a moment for the others' last writes."""
    import threading
    import time
    from types import SimpleNamespace

    from ftctl.trainer import run as trainer_run

    ckpt = tmp_path / "checkpoint-3"
    (ckpt / "global_step3").mkdir(parents=True)
    (ckpt / "global_step3" / "zero_pp_rank_1_mp_rank_00_optim_states.pt").write_bytes(b"h" * 100_000)
    monkeypatch.setattr(trainer_run, "HALF_CHECKPOINT_SETTLE_S", 0.5)

    def rank_0_writes_on():
        until = time.monotonic() + 5
        while ckpt.exists() and time.monotonic() < until:
            time.sleep(0.01)
        ahead = tmp_path / "rank-0"  # made whole, then put in place: the bytes counted are these
        (ahead / "global_step3").mkdir(parents=True)
        (ahead / "zero_to_fp32.py").write_bytes(b"s" * 38_580)
        (ahead / "latest").write_text("global_step3")
        os.rename(ahead, ckpt)

    rank_0 = threading.Thread(target=rank_0_writes_on)
    rank_0.start()
    at = SimpleNamespace(local_dir=str(tmp_path), trainer=SimpleNamespace(state=SimpleNamespace(global_step=3)))
    rank_1 = SimpleNamespace(**vars(at), procs=SimpleNamespace(rank=1, local_rank=1, world_size=2))
    removed = trainer_run.half_checkpoint(rank_1)
    rank_0.join()
    assert removed == ("half-written checkpoint-3", 100_000 + 38_580 + 12) and not ckpt.exists()
