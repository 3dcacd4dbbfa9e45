"""explore66 (helper task 321): object-store outputs as a user walks them (notes: /work/notes/explore66-store.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_staging148 import _names, _staged_run


def _limit(local: Path, limit) -> None:
    (local / "spec.json").write_text(json.dumps({"spec": {"save_total_limit": limit}}))


def test_a_checkpoint_the_store_dropped_by_save_total_limit_is_freed_from_the_staging_too(s3_bucket, tmp_path):
    """`-o save_total_limit=1 -o eval_split=0.2 -o load_best_model_at_end=true` into s3://: the Trainer keeps two
    checkpoints on the node (spec.RunSpec.checkpoints_kept), the store one; at the end the store's retention deleted
    checkpoint-36, and the finished run's staging kept it for good, said as "kept checkpoint-36 (not committed in the
    store)" though the log had said "committed s3://.../checkpoint-36" (a 7B fft: ~100 GB left in FTCTL_CACHE). Now it
    goes with the rest, said apart; without a limit (every checkpoint kept) one the store lacks stays, as before."""
    from ftctl import storage
    from ftctl.checkpoints import staging

    store = f"{s3_bucket}/r"
    local = _staged_run(tmp_path, store, steps=(36, 40))
    storage.rm(f"{store}/checkpoint-36", recursive=True)  # the store's retention at the run's end
    _limit(local, 1)
    freed = staging.free(str(local), store)
    assert _names(local) == {"spec.json", "metrics.jsonl"}
    assert (freed.removed, freed.dropped, freed.kept) == (["checkpoint-40", "the final model"], ["checkpoint-36"], "")
    line = freed.line(str(local), store)
    assert line.endswith(
        f"all in {store} (-o keep_staging=true keeps them), and checkpoint-36, which save_total_limit=1 had dropped "
        "from the store"
    ), line
    assert "not committed" not in line

    other = _staged_run(tmp_path / "b", f"{s3_bucket}/b", steps=(36, 40))
    storage.rm(f"{s3_bucket}/b/checkpoint-36", recursive=True)
    _limit(other, None)  # every checkpoint kept: the store lacks one the run meant to keep
    freed = staging.free(str(other), f"{s3_bucket}/b")
    assert (freed.dropped, freed.kept) == ([], "checkpoint-36 (not committed in the store)")
    assert "checkpoint-36" in _names(other)


def test_a_run_started_again_below_checkpoints_its_resume_passed_over_keeps_its_own(tmp_path):
    """Every checkpoint of s3://bkt/r20 (160, 180, 197) failed its sha256 as a fresh machine resumed (`skipping
    checkpoint-197: ... does not match its sha256 (corrupted)`), so the relaunch trained from step 0, and the store's
    retention ("the last 3" by step) deleted each of its checkpoints as it landed, the stop's too ("retention: deleted
    s3://bkt/r20/checkpoint-126"): "the same `ftctl launch` resumes it" started from step 0 again, every time. Now the
    last 3 are counted among the steps up to the one just committed; the passed-over ones are left as they are."""
    from ftctl import checkpoints as C
    from tests.test_checkpoints import FAST, committed

    remote = f"file://{tmp_path}/store/run"
    up = C.Uploader(remote, keep_last=3, **FAST)
    for step in (160, 180, 197):
        up.submit(str(committed(tmp_path / "earlier", step)))
    assert up.wait(30)
    up.close()
    for step in (160, 180, 197):  # each corrupted in the store since (same size, other bytes)
        weights = tmp_path / "store" / "run" / f"checkpoint-{step}" / "model.safetensors"
        weights.write_bytes(bytes(b ^ 0xFF for b in weights.read_bytes()))
    assert C.latest_complete(str(tmp_path / "fresh"), remote) is None  # the relaunch trains from step 0

    up = C.Uploader(remote, keep_last=3, **FAST)
    for step in (20, 40, 60, 80):
        up.submit(str(committed(tmp_path / "again", step)))
        assert up.wait(30)
    up.close()
    held = [c.name for c in C.list_checkpoints(remote) if c.complete]
    assert held == [f"checkpoint-{s}" for s in (40, 60, 80, 160, 180, 197)]
    assert C.latest_complete(str(tmp_path / "fresh2"), remote).endswith("checkpoint-80")


def test_the_next_lines_of_a_run_into_another_s3_endpoint_name_it(monkeypatch):
    """`ftctl launch ... --output s3://bkt/r14 -o s3_endpoint_url=http://127.0.0.1:45066` (MinIO, R2: README's way)
    ended with `ftctl chat s3://bkt/r14 -p ...`, which asked AWS itself: "Cannot reach AWS S3 (no endpoint set) ...
    check -o s3_endpoint_url", an option chat/eval/merge do not take. Now the lines carry the endpoint."""
    from ftctl.spec import build
    from ftctl.trainer.__main__ import next_steps

    for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(var, raising=False)
    spec = build({"method": "lora", "output_dir": "s3://bkt/r14", "s3_endpoint_url": "http://127.0.0.1:45066"})
    assert next_steps(spec).splitlines()[1:] == [
        "  AWS_ENDPOINT_URL=http://127.0.0.1:45066 ftctl chat s3://bkt/r14 -p 'A question'",
        "  AWS_ENDPOINT_URL=http://127.0.0.1:45066 ftctl eval s3://bkt/r14 --data HELD_OUT.jsonl --compare",
        "  AWS_ENDPOINT_URL=http://127.0.0.1:45066 ftctl merge s3://bkt/r14",
    ]
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:45066")  # the launch sets it for the trainer
    assert next_steps(spec).splitlines()[1].startswith("  AWS_ENDPOINT_URL=http://127.0.0.1:45066 ftctl chat ")
    assert "AWS_ENDPOINT" not in next_steps(build({"method": "lora", "output_dir": "s3://bkt/r14"}))  # as before
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://other:9000")  # read first: the line sets that one
    assert next_steps(spec).splitlines()[1].startswith("  AWS_ENDPOINT_URL_S3=http://127.0.0.1:45066 ftctl chat ")


def test_a_relaunch_whose_store_checkpoints_all_fail_their_sha256_is_refused(
    tiny_model_dir, tiny_data, s3_bucket, tmp_path, monkeypatch
):
    """A fresh machine's relaunch into s3://bkt/r20, whose checkpoints each failed their sha256 (`skipping
    checkpoint-197: ... (corrupted)`), trained from step 0 beside them with no more than those lines. Now it is
    refused, naming them."""
    import torch

    from ftctl import storage
    from ftctl.errors import FtctlError
    from ftctl.runpaths import ADAPTER_CONFIG
    from ftctl.trainer.run import train
    from tests.trainer_fixtures import make_run

    torch.set_num_threads(1)
    remote = f"{s3_bucket}/run"
    monkeypatch.setenv("FTCTL_LOCAL_DIR", str(tmp_path / "stage"))
    spec, plan = make_run(tiny_model_dir, tiny_data, remote, "lora", lora_r=4, max_steps=2, save_steps=1)
    assert train(spec, plan, echo=lambda line: None).status == "complete"
    storage.rm(f"{remote}/{ADAPTER_CONFIG}")  # no final model (a stopped run's store)
    for step in (1, 2):  # each corrupted in the store (same size, other bytes)
        weights = f"{remote}/checkpoint-{step}/adapter_model.safetensors"
        flipped = tmp_path / f"flipped-{step}"
        flipped.write_bytes(bytes(b ^ 0xFF for b in storage.read_bytes(weights)))
        storage.put_file(str(flipped), weights)
    monkeypatch.setenv("FTCTL_LOCAL_DIR", str(tmp_path / "fresh"))
    spec, plan = make_run(tiny_model_dir, tiny_data, remote, "lora", lora_r=4, max_steps=4, save_steps=1, resume="auto")
    with pytest.raises(FtctlError) as refused:
        train(spec, plan, echo=lambda line: None)
    assert str(refused.value).startswith(
        f"{remote} holds checkpoint-1, checkpoint-2, committed, and none of them could be resumed"
    )
