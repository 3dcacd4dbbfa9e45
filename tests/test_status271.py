"""`ftctl status` names where a run's metrics go before its first logged step (helper 271, review 58 finding 1): a
metrics.jsonl holding only the trainer's start record and its "tracking" record (trainer.tracking.
record_destinations) gave summary_of_lines an empty step line with its tracking lines, which was falsy and was
replaced by a blank one. Here: the copy in an object store's newest checkpoint (one saved before the first logged
step). The run-directory case, with a real run's records, is in test_tracking263."""

from __future__ import annotations

import gzip
import json
from types import SimpleNamespace

from click.testing import CliRunner


def _trainers_records(metrics, stage, output) -> None:
    """The start record as the trainer writes it (record_start), and the tracking record as record_destinations writes
    it for TensorBoard's writer in the staging directory of an object-store output (its keys: runpaths; the directory
    named as in the store: in_output). record_destinations itself needs transformers (7 s to import here): the
    records of a real run are test_tracking263's."""
    from ftctl.runpaths import TENSORBOARD_LOG_DIR, TRACKING_EVENT
    from ftctl.trainer.run import record_start
    from ftctl.trainer.tracking import in_output

    kernels = SimpleNamespace(attention="sdpa", liger=False, record=lambda: {"attn_implementation": "sdpa"})
    record_start(str(metrics), kernels, False, echo=lambda line: None)
    record = {"step": 0, "event": TRACKING_EVENT, "time": 2.0}
    record[TENSORBOARD_LOG_DIR] = in_output(str(stage / "runs"), str(stage), output)
    with open(metrics, "a") as f:
        f.write(json.dumps(record) + "\n")


def test_status_of_a_store_names_tensorboard_before_the_first_logged_step(s3_bucket, tmp_path, monkeypatch):
    from ftctl.checkpoints import push, write_manifest
    from ftctl.cli import main
    from ftctl.progress import stored
    from tests.s3_fixtures import make_checkpoint

    monkeypatch.setenv("FTCTL_HOME", str(tmp_path / "home"))
    stage, output = tmp_path / "stage", f"{s3_bucket}/run"
    metrics = stage / "metrics.jsonl"
    stage.mkdir()
    _trainers_records(metrics, stage, output)
    assert [json.loads(x)["event"] for x in metrics.read_text().splitlines()] == ["start", "tracking"]
    ckpt = make_checkpoint(stage, 5)  # saved before the first logged step (save_steps < logging_steps)
    (ckpt / "ftctl-metrics.jsonl.gz").write_bytes(gzip.compress(metrics.read_bytes()))
    write_manifest(str(ckpt), 5, 1, "h")
    push(str(stage), output, echo=lambda *_: None)

    step, newest = stored(output, None)
    assert step == "" and step.tracking.fields["tensorboard_dir"] == f"{output}/runs"  # before: step None
    said = CliRunner().invoke(main, ["status", "--json", output])
    got = json.loads(said.stdout)
    assert got["tensorboard_dir"] == f"{output}/runs", said.output
    assert got["step"] is None
    assert got["lines"][-2:] == [
        newest,
        f"TensorBoard: {output}/runs (sent with each checkpoint: tensorboard --logdir on a copy of it)",
    ]
