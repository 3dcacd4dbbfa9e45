"""A checkpoint's copy of metrics.jsonl is node 0's alone: nodes staging into one directory (a home they share, as the
two-node SkyPilot launch test's nodes do) each wrote it, and one node's rename of its temp file took the other's, which
died of FileNotFoundError at its first save (the gzip copy, b35e8f8). Found by tests/test_sky_launch.py."""

from __future__ import annotations

from types import SimpleNamespace

from ftctl.runpaths import CHECKPOINT_METRICS_GZ, METRICS_FILE
from ftctl.trainer.sync_callback import CheckpointSyncCallback


def test_only_node_0_writes_the_checkpoints_metrics_copy(tmp_path, monkeypatch):
    (tmp_path / METRICS_FILE).write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n')
    state = SimpleNamespace(global_step=2, is_local_process_zero=True, is_world_process_zero=False,
                            best_model_checkpoint=None)  # fmt: skip
    written = {}
    for node in (1, 0):
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
        monkeypatch.setenv("GROUP_RANK", str(node))
        ckpt = tmp_path / f"node{node}" / "checkpoint-2"
        ckpt.mkdir(parents=True)
        (tmp_path / f"node{node}" / METRICS_FILE).write_text((tmp_path / METRICS_FILE).read_text())
        sync = CheckpointSyncCallback(None, spec_hash="h")
        assert (sync.node_rank, sync.num_nodes) == (node, 2)
        sync.attempt = "a"
        sync.on_save(SimpleNamespace(output_dir=str(tmp_path / f"node{node}"), world_size=2), state, None)
        written[node] = (ckpt / CHECKPOINT_METRICS_GZ).exists()
    assert written == {1: False, 0: True}
