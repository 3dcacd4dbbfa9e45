"""`ftctl status` while a run trains (task 149): the step of its total, the time a step takes, the time left and its
newest checkpoint, as a tqdm bar and squeue tell them; a stopped local run's state (its exit code 3). One tiny lora
run observed at its step 4 of 5, from inside (a callback after the trainer's own: its row written, checkpoint-3
saved); Slurm's and SkyPilot's step lines from recorded log text, no cluster."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.trainer_fixtures import make_run


@pytest.fixture(scope="module")
def mid_run(tiny_model_dir, tiny_data, tmp_path_factory):
    """(run dir, what was seen at step 4 of 5: the local backend's state, the progress line while it trained, the
    newest checkpoint line) of a tiny lora run with a checkpoint every 3 steps."""
    import torch
    from transformers import TrainerCallback

    from ftctl import progress
    from ftctl.backend import JobRef, metrics_records
    from ftctl.local.backend import LocalBackend
    from ftctl.trainer.run import train

    out = tmp_path_factory.mktemp("run") / "r"
    ref = JobRef("local", str(out), str(out), "r", str(out))
    seen = {}

    class Observe(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.global_step == 4 and "loss" in (logs or {}):
                seen["state"] = LocalBackend().status(ref)
                records = metrics_records(out / "metrics.jsonl")
                seen["line"] = progress.summary(records, lambda start: True, running=True)
                seen["saved"] = progress.newest_checkpoint(str(out), None, None)

    torch.set_num_threads(1)
    spec, plan = make_run(tiny_model_dir, tiny_data, out, "lora", lora_r=4, max_steps=5, save_steps=3, logging_steps=1)
    train(spec, plan, callbacks=[Observe()], echo=lambda line: None)
    return ref, seen


def test_status_of_a_run_mid_training_says_step_of_total_pace_time_left_and_newest_checkpoint(mid_run):
    """Before: `step 4  loss 6.1234  1,234 tok/s`: no total (the trainer recorded none), no pace, no time left, no
    checkpoint. Now every logged row carries the step the run ends at (max_steps, or the Trainer's count of its
    epochs)."""
    from ftctl.backend import JobState
    from ftctl.local.backend import LocalBackend

    ref, seen = mid_run
    assert seen["state"].state is JobState.RUNNING and "local run, training (pid " in seen["state"].text
    line = seen["line"]
    assert line.startswith("step 4/5 (80%)  loss "), line
    assert " a step, ~" in line and line.endswith(" left"), line
    assert seen["saved"].startswith("newest checkpoint: checkpoint-3, saved ") and seen["saved"].endswith(" ago")
    rows = [json.loads(x) for x in Path(ref.run_dir, "metrics.jsonl").read_text().splitlines()]
    assert [r["max_steps"] for r in rows if "loss" in r] == [5] * 5
    assert LocalBackend().status(ref).state is JobState.SUCCEEDED  # ended: exit 0


def test_a_local_run_stopped_before_its_end_is_a_stop_not_an_unknown(mid_run, tmp_path):
    """A local run stopped before its end (cancelled, killed) was JobState.UNKNOWN, which `ftctl status` now exits 4
    for ("not known"): it is a stop that the same launch resumes (exit 3), as a Slurm job's PREEMPTED."""
    import shutil

    from ftctl.backend import JobRef, JobState
    from ftctl.local.backend import LocalBackend

    ref, _ = mid_run
    run = tmp_path / "stopped"
    shutil.copytree(ref.run_dir, run, ignore=shutil.ignore_patterns(".ftctl"))
    for final in run.glob("adapter_*"):  # stopped at step 4: its final adapter and last checkpoint not saved yet
        final.unlink()
    shutil.rmtree(run / "checkpoint-5")
    said = LocalBackend().status(JobRef("local", str(run), str(run), "r", str(run)))
    assert said.state is JobState.PREEMPTED
    assert said.text.endswith(  # its .ftctl/ (the launch lock that names the command) left out: either
        "local run, stopped before the end (the same `ftctl launch` or `ftctl train` resumes it from checkpoint-3)"
    )


def _rows(times: list[float], total: int | None = 1000, first: int = 10, every: int = 10) -> list[dict]:
    rows = []
    for i, t in enumerate(times):
        row = {"step": first + i * every, "loss": 1.5, "tokens_per_s": 1234.0, "time": t}
        if total:
            row["max_steps"] = total
        rows.append(row)
    return rows


def test_pace_is_the_own_trainers_after_its_first_step_and_a_stale_step_is_said():
    from ftctl.progress import duration, summary

    assert [duration(s) for s in (0.4, 45, 720, 3600, 7500, 3 * 86400)] == [
        "0 s", "45 s", "12 min", "1 h", "2 h 5 min", "3 days"
    ]  # fmt: skip

    start = {"step": 0, "event": "start", "time": 0.0}
    # the first logged step paid 60 s for compiling: the pace is from the second on, 8 s for 10 steps
    rows = _rows([60.0, 68.0, 76.0, 84.0])
    now = 86.0
    assert summary([start, *rows], lambda s: True, True, now) == (
        "step 40/1000 (4%)  loss 1.5000  1,234 tok/s  0.80 s a step, ~13 min left"
    )
    assert (
        summary([start, *rows], lambda s: True, False, now)
        == "step 40/1000 (4%)  loss 1.5000  1,234 tok/s  0.80 s a step"
    )
    # nothing logged for 20 min: the time left as of that step, and how long ago it was
    assert summary([start, *rows], lambda s: True, True, 84.0 + 1200).endswith(
        "0.80 s a step, ~13 min left at its last step, logged 20 min ago"
    )
    # a resumed trainer: its own rows only (the rows before its start record are the earlier trainer's, its pace too)
    resumed = {"step": 0, "event": "start", "time": 1000.0}
    again = _rows([1100.0, 1102.0], first=50)
    said = summary([start, *rows, resumed, *again], lambda s: True, True, 1102.0)
    assert said.startswith("step 60/1000 (6%)") and "0.20 s a step, ~3 min left" in said
    # one logged step: no pace yet; an older trainer's rows, no total: as before
    assert summary([resumed, *again[:1]], lambda s: True, True, 1100.0) == "step 50/1000 (5%)  loss 1.5000  1,234 tok/s"
    assert summary([{"step": 3, "loss": 2.5}], lambda s: True, True) == "step 3  loss 2.5000"


# a Slurm job's log as its script and trainer write it (trainer.callbacks.MetricsCallback._progress), two attempts
SLURM_LOG = """ftctl: job 7 attempt 0 on node[1-2] (head node1)
attention: sdpa; Liger kernels: off
step 10/400  loss 2.1000  lr 2.00e-04  grad 0.808  3,380 tok/s  ETA 0:10:11
ftctl: job 7 attempt 1 on node3 (head node3)
attention: sdpa; Liger kernels: off
step 210/400  loss 1.2345  lr 1.00e-04  grad 0.5  3,400 tok/s  ETA 0:05:02
eval at step 210  loss 1.3010  token accuracy 0.612  0.8 s
"""


def test_the_step_line_of_a_slurm_or_skypilot_log_says_its_total_and_the_trainers_eta():
    """Where the trainer's metrics.jsonl is on the nodes' disks, the log's last step line is what is seen here: its
    total was dropped (`step 210  loss 1.2345`); its ETA is the trainer's at that line (the log has no times)."""
    from ftctl.failures import last_attempt
    from ftctl.progress import logged_step

    lines = last_attempt(SLURM_LOG)[1]
    assert logged_step(lines, running=True) == (
        "step 210/400 (52%)  loss 1.2345  3,400 tok/s  ETA 0:05:02 at that line of its log"
    )
    assert logged_step(lines, running=False) == "step 210/400 (52%)  loss 1.2345  3,400 tok/s"
    # SkyPilot's tail, its "(head, rank=0, pid=N) " prefix left out by sdk.log_tail; a day-long ETA; none yet
    sky = "step 5/90000  loss 7.0000  lr 1.00e-05  ETA 1 day, 2:03:04\n"
    assert (
        logged_step(sky.splitlines(), True)
        == "step 5/90000 (0%)  loss 7.0000  ETA 1 day, 2:03:04 at that line of its log"
    )
    assert logged_step(["loading the model"], True) is None


def test_newest_checkpoint_of_a_store_run_from_its_staging_record_without_asking_the_store(tmp_path):
    """An object-store output staged on this disk: the newest checkpoint the store committed is read from the staging
    directory's record of what it sent (no request), a newer one saved here and not committed yet is said; where
    nothing is staged here, the store is asked, and one that cannot be is said so."""
    from ftctl.checkpoints.manifest import write_manifest
    from ftctl.progress import newest_checkpoint
    from ftctl.runpaths import UPLOADED_RECORD
    from tests.s3_fixtures import make_checkpoint

    staged = tmp_path / "stage"
    for step in (3, 6):
        write_manifest(str(make_checkpoint(staged, step)), step, 1, "h")
    (staged / UPLOADED_RECORD).parent.mkdir(parents=True, exist_ok=True)
    (staged / UPLOADED_RECORD).write_text("checkpoint-3\n")
    said = newest_checkpoint("s3://b/r", "http://127.0.0.1:9", staged, now=time.time() + 180)
    assert said == (
        "newest checkpoint: checkpoint-3, saved 3 min ago, in s3://b/r (checkpoint-6, saved 3 min ago on this disk, "
        "not in s3://b/r yet)"
    )
    unreachable = newest_checkpoint("s3://b/r", "http://127.0.0.1:9", tmp_path / "not-here")
    assert unreachable.startswith("newest checkpoint: s3://b/r cannot be listed now ("), unreachable
