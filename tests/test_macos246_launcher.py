"""What ftctl does on a macOS laptop (explore50, task 246), shown on Linux with what macOS lacks taken away: no
os.sched_getaffinity, no /proc/meminfo, no sha256sum, an old bash (3.2, macOS's /bin/bash)."""

from __future__ import annotations

import os

from ftctl.checkpoints import build_manifest, sha256_file


def test_a_checkpoints_manifest_is_written_without_sched_getaffinity(tmp_path, monkeypatch):
    """macOS has no os.sched_getaffinity: every checkpoint save (`ftctl demo`, a local launch, `ftctl train` on a Mac)
    raised AttributeError as it hashed the checkpoint's files."""
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    for name in ("adapter_model.safetensors", "optimizer.pt", "trainer_state.json"):
        (tmp_path / name).write_bytes(name.encode() * 1000)
    manifest = build_manifest(str(tmp_path), step=4, world_size=1, spec_hash="x")
    assert {f["path"]: f["sha256"] for f in manifest["files"]} == {
        name: sha256_file(str(tmp_path / name))
        for name in ("adapter_model.safetensors", "optimizer.pt", "trainer_state.json")
    }
