"""Helper 262: a resumed attempt keeps the name its W&B run has.

transformers passes TrainingArguments.run_name to wandb.init(name=...), and W&B renames a resumed run to the name
given. A run an older ftctl started (named by its run's name, before the output's last part named it) and this one
resumed was renamed in W&B mid-run; so was one the user renamed in W&B's page. An attempt that goes on in the W&B run
an earlier attempt started now passes no name (tracking.run_name: None), and W&B keeps the one it has: online W&B
resumes it with the server's name, and `wandb sync` of an offline attempt sends no empty name (wandb-core's
runupserter: displayName NilIfZero). Checked here with W&B offline, in the run records of its own .wandb files.
"""

from __future__ import annotations

import json
import os
import signal
import struct

import pytest

from tests.trainer_fixtures import make_run

pytest.importorskip("wandb")


def _run_records(path) -> list:
    """The RunRecords in a .wandb file (W&B's LevelDB-style log: a 7-byte ':W&B' header, then 32 KiB blocks of
    chunks, each a CRC, a length and a type: full, first, middle, last), as W&B's protobufs."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, part, found = path.read_bytes(), 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if (left := 32768 - pos % 32768) < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            break
        part, pos = part + data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # full, last
            record = pb.Record()
            record.ParseFromString(part)
            part = b""
            if record.WhichOneof("record_type") == "run":
                found.append(record.run)
    return found


def test_a_resumed_attempt_keeps_the_name_its_wandb_run_has(
    tiny_model_dir, tiny_data, tmp_path, one_thread, monkeypatch
):
    import wandb
    from transformers import TrainerCallback

    from ftctl.trainer.run import train

    for name in ("WANDB_RUN_ID", "WANDB_RESUME", "WANDB_DIR", "WANDB_PROJECT", "WANDB_NAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")

    class StopAt1(TrainerCallback):  # what Slurm's --signal=B:USR2@lead does
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 1:
                os.kill(os.getpid(), signal.SIGUSR2)

    out = tmp_path / "lr-1e-4"  # this ftctl names a fresh run by it
    spec, plan = make_run(
        tiny_model_dir, tiny_data, out, "fft", max_steps=3, save_steps=100, resume="auto", report_to="wandb"
    )
    # the first attempt, as an older ftctl named its W&B run: by the run's name (what WANDB_NAME makes W&B show)
    monkeypatch.setenv("WANDB_NAME", spec.name)
    try:
        assert train(spec, plan, callbacks=[StopAt1()], echo=lambda line: None).status == "preempted"
        monkeypatch.delenv("WANDB_NAME")  # the attempt this ftctl resumes
        monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
        monkeypatch.setenv("FTCTL_ATTEMPT", "1")
        assert train(spec, plan, echo=lambda line: None).status == "complete"
    finally:
        wandb.finish()  # a test that failed mid-run
    first, second = sorted((out / "wandb").glob("offline-run-*"))
    (older,) = _run_records(next(first.glob("run-*.wandb")))
    (resumed,) = _run_records(next(second.glob("run-*.wandb")))
    assert resumed.run_id == older.run_id and older.display_name == spec.name != "lr-1e-4"
    assert resumed.display_name == "", resumed.display_name  # no name: W&B keeps "ftctl-fft-..." (was "lr-1e-4")
    starts = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"start"' in line]
    assert [s["wandb_run_id"] for s in starts] == [older.run_id] * 2


def test_a_fresh_run_and_a_new_wandb_run_on_resume_are_named(tmp_path):
    """Only a W&B run that goes on keeps its name: a fresh run, and a resume the user sends to another W&B run
    (their own WANDB_RUN_ID), are named as before; the user's WANDB_NAME is passed always."""
    from ftctl.spec import build
    from ftctl.trainer.tracking import run_name

    checkpoint = tmp_path / "lr-1e-4" / "checkpoint-2"
    checkpoint.mkdir(parents=True)
    start = {"step": 0, "event": "start", "wandb_run_id": "recorded"}
    (checkpoint / "ftctl-metrics.jsonl").write_text(json.dumps(start) + "\n")
    spec = build({"model_name_or_path": "Org/M", "output_dir": str(tmp_path / "lr-1e-4"), "report_to": "wandb"})
    assert run_name(spec, {}) == "lr-1e-4"
    assert run_name(spec, {}, str(checkpoint)) is None
    assert run_name(spec, {"WANDB_RUN_ID": "recorded"}, str(checkpoint)) is None
    assert run_name(spec, {"WANDB_RUN_ID": "mine"}, str(checkpoint)) == "lr-1e-4"
    assert run_name(spec, {"WANDB_NAME": "shown"}, str(checkpoint)) == "shown"
    assert run_name(spec, {}, str(tmp_path / "lr-1e-4" / "checkpoint-9")) == "lr-1e-4"  # none recorded there
