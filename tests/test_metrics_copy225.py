"""A checkpoint's copy of metrics.jsonl is gzip (runpaths.CHECKPOINT_METRICS_GZ, trainer.callbacks.MetricsCopy): the
plain copy was ~215 MB a checkpoint at a million rows, written, hashed and uploaded at every save, and `ftctl status
s3://...` downloaded it whole. Each save appends a gzip member of the rows since the previous one; a resume, the W&B
run's id and the store's status read this copy or an older ftctl's plain one (ftctl-metrics.jsonl)."""

from __future__ import annotations

import gzip
import json

import pytest

from ftctl.checkpoints.manifest import metrics_copy


def _rows(steps, start: bool = False) -> str:
    rows = [{"step": 0, "event": "start", "time": 1.0, "wandb_run_id": "w1"}] if start else []
    rows += [{"step": s, "loss": 2.0 - s / 100, "time": 1000.0 + s, "max_steps": 400} for s in steps]
    return "".join(json.dumps(r) + "\n" for r in rows)


def test_each_save_compresses_only_the_rows_since_the_last_one(tmp_path):
    from ftctl.storage import write_whole
    from ftctl.trainer.callbacks import MetricsCopy

    metrics, copy = tmp_path / "metrics.jsonl", MetricsCopy()
    metrics.write_text(_rows(range(1, 11), start=True) + '{"step": 11, "loss": 1.')  # a row being written
    saved = []
    for step, more in ((10, ""), (20, '9, "time": 1011.0}\n' + _rows(range(12, 21))), (30, _rows(range(21, 31)))):
        with open(metrics, "a") as f:
            f.write(more)
        ckpt = tmp_path / f"checkpoint-{step}"
        ckpt.mkdir()
        copy.save(str(metrics), str(ckpt))
        saved.append((ckpt / "ftctl-metrics.jsonl.gz").read_bytes())
        assert metrics_copy(str(ckpt)) == str(ckpt / "ftctl-metrics.jsonl.gz")
    whole = metrics.read_text()
    assert gzip.decompress(saved[0]).decode() == _rows(range(1, 11), start=True)  # the row cut short: next time
    assert gzip.decompress(saved[2]).decode() == whole
    assert saved[1].startswith(saved[0]) and saved[2].startswith(saved[1])  # a member a save, appended
    assert not list(tmp_path.glob("checkpoint-*/.*"))  # no temp file left

    write_whole(metrics, _rows(range(1, 6), start=True))  # a resume's truncate_metrics: another file, shorter
    (tmp_path / "checkpoint-5").mkdir()
    copy.save(str(metrics), str(tmp_path / "checkpoint-5"))
    assert gzip.decompress((tmp_path / "checkpoint-5" / "ftctl-metrics.jsonl.gz").read_bytes()).decode() == (
        _rows(range(1, 6), start=True)
    )
    (tmp_path / "checkpoint-5" / "ftctl-metrics.jsonl.gz").unlink()  # rotated away: the whole file again
    with open(metrics, "a") as f:
        f.write(_rows([6]))
    (tmp_path / "checkpoint-6").mkdir()
    copy.save(str(metrics), str(tmp_path / "checkpoint-6"))
    assert gzip.decompress((tmp_path / "checkpoint-6" / "ftctl-metrics.jsonl.gz").read_bytes()).decode() == (
        _rows(range(1, 7), start=True)
    )


@pytest.mark.parametrize("name", ["ftctl-metrics.jsonl.gz", "ftctl-metrics.jsonl"])
def test_a_resume_and_its_wandb_run_read_this_ftctls_copy_and_an_older_ones(tmp_path, name):
    from ftctl.trainer.callbacks import restore_metrics
    from ftctl.trainer.tracking import recorded_wandb_run

    ckpt = tmp_path / "checkpoint-20"
    ckpt.mkdir()
    text = _rows(range(1, 21), start=True)
    (ckpt / name).write_bytes(gzip.compress(text.encode()) if name.endswith(".gz") else text.encode())
    metrics = tmp_path / "metrics.jsonl"  # a node that never trained it: only this attempt's start record
    metrics.write_text(json.dumps({"step": 0, "event": "start", "time": 5.0}) + "\n")
    assert metrics_copy(str(ckpt)) == str(ckpt / name)
    restore_metrics(str(metrics), metrics_copy(str(ckpt)))
    assert metrics.read_text() == text + json.dumps({"step": 0, "event": "start", "time": 5.0}) + "\n"
    assert recorded_wandb_run(str(ckpt)) == "w1"
    assert metrics_copy(str(tmp_path)) is None and recorded_wandb_run(str(tmp_path)) is None


@pytest.mark.parametrize("name", ["ftctl-metrics.jsonl.gz", "ftctl-metrics.jsonl"])
def test_status_of_a_store_reads_its_newest_checkpoints_gzip_or_older_plain_copy(s3_bucket, tmp_path, name):
    from ftctl.checkpoints import push, write_manifest
    from ftctl.progress import stored
    from tests.s3_fixtures import make_checkpoint

    stage, output = tmp_path / "stage", f"{s3_bucket}/run"
    ckpt = make_checkpoint(stage, 30)
    text = _rows((10, 20, 30), start=True)
    (ckpt / name).write_bytes(gzip.compress(text.encode()) if name.endswith(".gz") else text.encode())
    write_manifest(str(ckpt), 30, 1, "h")
    push(str(stage), output, echo=lambda *_: None)
    step, newest = stored(output, None, now=2000.0)
    assert step.startswith("step 30/400 (7%)  loss 1.7000  1.0 s a step (from checkpoint-30"), step
    assert newest.startswith("newest checkpoint: checkpoint-30")


def test_the_rows_metrics_callback_writes_are_what_the_quick_scanners_read(tmp_path):
    """The row shape has one owner (runpaths.ROW_START, STEP_ROW, EVENT, TIMED): the writer agrees with the scanners."""
    from types import SimpleNamespace

    from ftctl.progress import summary_of_lines
    from ftctl.runpaths import EVENT, ROW_START, STEP_ROW, TIMED
    from ftctl.trainer.callbacks import MetricsCallback, _step_of

    metrics = tmp_path / "metrics.jsonl"
    callback = MetricsCallback(str(metrics), echo=lambda line: None)
    state = SimpleNamespace(global_step=0, num_input_tokens_seen=0, is_world_process_zero=True, max_steps=4)
    state.log_history = []
    callback.on_train_begin(None, state, None)
    for step in (1, 2):
        state.global_step = step
        callback.on_step_end(None, state, None)
        callback.on_log(None, state, None, logs={"loss": 1.5, "learning_rate": 1e-4, "grad_norm": 0.5, "epoch": 0.5})
    callback.on_log(None, state, None, logs={"eval_loss": 1.25})
    rows = metrics.read_text().splitlines()
    assert all(line.startswith(ROW_START) and TIMED in line for line in rows), rows
    assert [STEP_ROW in line and EVENT not in line for line in rows] == [True, True, False]
    assert [_step_of(line) for line in rows] == [1, 2, 2]
    said = summary_of_lines(rows, lambda start: True, running=False)
    assert said.startswith("step 2/4 (50%)  loss 1.5000") and said.endswith("held-out loss 1.2500 at step 2"), said
