"""Review 322 (session 62's commits 574293d..): findings fixed with a test that fails without the fix
(notes: /work/notes/review-62.md)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.test_staging148 import _names, _staged_run


def _limit(local: Path, limit) -> None:
    (local / "spec.json").write_text(json.dumps({"spec": {"save_total_limit": limit}}))


def test_a_checkpoint_whose_upload_failed_within_the_limit_is_kept_not_freed_as_dropped(s3_bucket, tmp_path):
    """1dd215d freed a staged checkpoint the store lacks as one save_total_limit dropped from the store, wherever the
    run had a limit. With save_total_limit=2 a checkpoint-30 whose upload failed (the run went on) is the only copy of
    one the limit keeps (the store keeps 20 and 40 instead), and the line said the limit had dropped it. One the store
    committed once (the node's record of its uploads) or holds the limit's count of newer ones beside is the limit's."""
    from ftctl import storage
    from ftctl.checkpoints import staging

    store = f"{s3_bucket}/r"
    local = _staged_run(tmp_path, store, steps=(10, 20, 30, 40))
    (local / ".ftctl").mkdir(exist_ok=True)
    (local / ".ftctl" / "uploaded").write_text("checkpoint-10\ncheckpoint-20\ncheckpoint-40\n")  # 30's never
    storage.rm(f"{store}/checkpoint-10", recursive=True)  # the store's retention: the limit's
    storage.rm(f"{store}/checkpoint-30", recursive=True)  # never reached it
    _limit(local, 2)
    freed = staging.free(str(local), store)
    assert freed.dropped == ["checkpoint-10"], freed
    assert freed.kept == "checkpoint-30 (not committed in the store)", freed
    assert "checkpoint-30" in _names(local)
    assert freed.removed == ["checkpoint-20", "checkpoint-40", "the final model"], freed


def test_an_incomplete_newer_checkpoint_in_the_store_is_not_one_the_limit_keeps(s3_bucket, tmp_path):
    """Only complete checkpoints in the store count as the newer ones its limit keeps: with checkpoint-30's upload cut
    short there (no manifest), checkpoint-20 (its upload failed) is one of the two the limit keeps, and stays."""
    from ftctl import storage
    from ftctl.checkpoints import staging

    store = f"{s3_bucket}/r"
    local = _staged_run(tmp_path, store, steps=(20, 30, 40))
    storage.rm(f"{store}/checkpoint-20", recursive=True)  # never reached it
    storage.rm(f"{store}/checkpoint-30/ftctl-manifest.json")  # cut short
    _limit(local, 2)
    freed = staging.free(str(local), store)
    assert freed.dropped == [], freed
    assert {"checkpoint-20", "checkpoint-30"} <= _names(local)
