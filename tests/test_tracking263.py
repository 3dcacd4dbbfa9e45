"""`ftctl status` names where a run's metrics go (helper 263): its W&B run (the page online; offline, W&B's folder and
the `wandb sync` line that uploads it) and TensorBoard's folder, from metrics.jsonl's "tracking" record, which the
trainer writes as W&B and TensorBoard open (ftctl.trainer.tracking.record_destinations). A real tiny run, W&B offline."""

from __future__ import annotations

import json
import subprocess

import pytest
from click.testing import CliRunner

from tests.trainer_fixtures import make_run

pytest.importorskip("wandb")


def test_status_names_the_offline_wandb_run_its_sync_line_and_tensorboards_folder(
    tiny_model_dir, tiny_data, tmp_path, one_thread, offline_wandb, monkeypatch
):
    """Before: `ftctl status` said the step and the checkpoint, and nothing of where W&B and TensorBoard logged."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from ftctl.backend import JobRef, record_job
    from ftctl.cli import main
    from ftctl.trainer.run import train

    monkeypatch.setenv("FTCTL_HOME", str(tmp_path / "home"))
    out = tmp_path / "my out"  # a space: the sync line is quoted for a shell
    spec, plan = make_run(tiny_model_dir, tiny_data, out, "lora", lora_r=4, max_steps=2, report_to="wandb,tensorboard")
    assert train(spec, plan, echo=lambda line: None).status == "complete"
    record_job(JobRef("local", str(out), str(out), "r", str(out)))

    said = CliRunner().invoke(main, ["status", "--json", str(out)])
    assert said.exit_code == 0, said.output
    got = json.loads(said.stdout)
    (folder,) = (out / "wandb").glob("offline-run-*")  # W&B's own folder of the run
    run = folder.name.rsplit("-", 1)[1]
    assert (got["wandb_run_id"], got["wandb_url"], got["wandb_dir"]) == (run, None, str(folder))
    assert got["wandb_sync"] == f"wandb sync '{out}/wandb'/offline-run-*-{run}"
    assert got["tensorboard_dir"] == str(out / "runs")
    assert got["lines"][-2:] == [
        f"W&B run {run}, logged offline into {folder}: upload it with {got['wandb_sync']}",
        f"TensorBoard: tensorboard --logdir '{out}/runs'",
    ]
    assert CliRunner().invoke(main, ["status", str(out)]).stdout.splitlines() == got["lines"]
    # the line names the folder W&B wrote (every attempt's, through the glob), as a shell expands it
    listed = subprocess.run(["bash", "-c", got["wandb_sync"].replace("wandb sync", "ls -d")], capture_output=True)
    assert listed.stdout.decode().splitlines() == [str(folder)]
    curves = EventAccumulator(got["tensorboard_dir"])
    curves.Reload()
    assert [e.step for e in curves.Scalars("train/loss")] == [1, 2]  # the folder TensorBoard's writer wrote

    record = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"tracking"' in x]
    assert len(record) == 1 and record[0]["step"] == 0  # the one record: written at train begin, by rank 0

    # before the first logged step (many minutes on a large model with logging_steps > 1): metrics.jsonl holds the
    # trainer's start and tracking records only. Before (helper 271), status named neither W&B nor TensorBoard then.
    lines = (out / "metrics.jsonl").read_text().splitlines()
    begun = [x for x in lines if json.loads(x).get("event") in ("start", "tracking")]
    assert [json.loads(x)["event"] for x in begun] == ["start", "tracking"]
    (out / "metrics.jsonl").write_text("\n".join(begun) + "\n")
    early = CliRunner().invoke(main, ["status", "--json", str(out)])
    assert early.exit_code == 0, early.output
    said = json.loads(early.stdout)
    assert said["step"] is None
    assert {k: said[k] for k in ("wandb_run_id", "wandb_dir", "wandb_sync", "tensorboard_dir")} == {
        k: got[k] for k in ("wandb_run_id", "wandb_dir", "wandb_sync", "tensorboard_dir")
    }
    assert said["lines"][-2:] == got["lines"][-2:]


def test_where_metrics_go_online_and_in_an_object_store():
    """An online run's line is its page; a folder in an object-store output (sent there with each checkpoint) is
    uploaded from a copy, and has no sync line this machine could run."""
    from ftctl.progress import tracking_said
    from ftctl.trainer.tracking import in_output

    online = tracking_said(
        {"wandb_run_id": "ab12cd34", "wandb_url": "https://wandb.ai/lab/p/runs/ab12cd34", "wandb_dir": "/o/wandb/x"}
    )
    assert online == "W&B run ab12cd34: https://wandb.ai/lab/p/runs/ab12cd34" and online.fields["wandb_sync"] is None
    staged = "/cache/runs/b-r-1234"
    assert in_output(f"{staged}/runs", staged, "s3://b/r/") == "s3://b/r/runs"
    assert in_output("/home/me/wandb-dir/wandb/run-1-x", staged, "s3://b/r") == "/home/me/wandb-dir/wandb/run-1-x"
    stored = tracking_said(
        {
            "wandb_run_id": "x",
            "wandb_url": None,
            "wandb_dir": "s3://b/r/wandb/offline-run-1-x",
            "tensorboard_dir": "s3://b/r/runs",
        }
    )
    assert stored.splitlines() == [
        "W&B run x, logged offline into s3://b/r/wandb/offline-run-1-x (sent with each checkpoint): upload it from a "
        "copy of s3://b/r/wandb/ with wandb sync offline-run-*-x",
        "TensorBoard: s3://b/r/runs (sent with each checkpoint: tensorboard --logdir on a copy of it)",
    ]
    assert stored.fields["wandb_sync"] is None and stored.fields["tensorboard_dir"] == "s3://b/r/runs"
