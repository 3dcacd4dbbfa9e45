"""Review 331 #4: a run resumed from its store's checkpoint (resume=s3://B/r/checkpoint-8) records the local copy it
went on from (named_checkpoint's download); once save_total_limit deleted that checkpoint in the store, the card's
'went on from' row lost its data and learning rate: the start record was looked up by the s3:// URI only."""

from __future__ import annotations

from ftctl.checkpoints.settings import PHASE_KEY, phase_record, went_on_from


def test_the_start_record_of_a_downloaded_checkpoint_is_found_by_the_uri_it_came_from(tmp_path):
    local = tmp_path / "cache" / "r" / "checkpoint-8"
    record = phase_record(str(local), {"data_path": "b.json", "learning_rate": 1e-4})
    record["resumed"]["settings"] = {"data_path": "a.json", "learning_rate": 2e-4}  # what checkpoint-8 trained with
    starts = [{PHASE_KEY: record}]
    gone = f"file://{tmp_path}/store/r/checkpoint-8"  # deleted in the store since: its manifest says nothing now
    assert went_on_from(gone, starts=starts) == {"data_path": "a.json", "learning_rate": 2e-4}
    assert went_on_from(str(local), starts=starts) == {"data_path": "a.json", "learning_rate": 2e-4}
    assert went_on_from(f"file://{tmp_path}/store/r/checkpoint-9", starts=starts) == {}
