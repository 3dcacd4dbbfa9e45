"""A run into object storage sent its spec.json and metrics.jsonl only with its final model: one stopped, preempted or
killed before its end left a store of checkpoints only, so `ftctl chat`/`eval`/`merge` of it loaded a checkpoint
without its method (a qlora one on the 16-bit base) and a `sync pull` of it was no run directory. The uploader sends
them after the first committed checkpoint now (spec.json once, metrics.jsonl as it grows), never over another run's."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

from ftctl import checkpoints as C
from ftctl import storage
from ftctl.checkpoints import upload
from ftctl.spec import RunSpec
from tests.s3_fixtures import make_checkpoint
from tests.trainer_fixtures import make_run

FAST = dict(backoff=(0.1, 0.5), poll_interval=0.1)


def test_a_run_stopped_after_its_first_checkpoint_leaves_a_store_that_loads_as_it_trained(
    tiny_model_dir,
    tiny_data,
    tmp_path,
    one_thread,
    monkeypatch,
    s3_bucket,
):
    from transformers import TrainerCallback

    from ftctl.trainer import chat, trained
    from ftctl.trainer.run import LOCAL_DIR_ENV, train

    stop = tmp_path / "stop"

    class StopAfterTheFirstSave(TrainerCallback):  # what `ftctl cancel` and a preemption do: a checkpoint, then a stop
        def on_save(self, args, state, control, **kwargs):
            stop.touch()

    monkeypatch.setenv("FTCTL_STOP_FILE", str(stop))
    monkeypatch.setenv("FTCTL_STATUS_FILE", str(tmp_path / "status"))
    monkeypatch.setenv(LOCAL_DIR_ENV, str(tmp_path / "staging"))
    uri = f"{s3_bucket}/run"
    spec, plan = make_run(tiny_model_dir, tiny_data, uri, "lora", max_steps=8, save_steps=2)
    result = train(spec, plan, callbacks=[StopAfterTheFirstSave()], echo=lambda line: None)
    assert result.status == "preempted" and result.global_step < 8
    stored = {e["name"] for e in storage.ls(uri)}
    assert "adapter_config.json" not in stored  # no final adapter: the records came with the checkpoints
    assert storage.read_text(f"{uri}/spec.json") == (tmp_path / "staging" / "spec.json").read_text()
    newest = C.list_checkpoints(uri)[-1]
    copy = gzip.decompress(storage.read_bytes(storage.join(newest.uri, "ftctl-metrics.jsonl.gz"))).decode()
    assert storage.read_text(f"{uri}/metrics.jsonl") == copy  # as of the newest checkpoint: whole lines

    loaded, local = chat._download(uri, str(tmp_path / "got"))  # what `ftctl chat/eval/merge s3://.../run` load
    assert loaded == newest.uri
    assert trained.find(local).method == "lora"  # from the store's spec.json: a qlora one loads on its 4-bit base


def _spec_json(**changed) -> str:
    spec = {**RunSpec(method="qlora").to_dict(), **changed}
    return json.dumps({"spec": spec, "plan": {"method": "qlora"}}, indent=1, sort_keys=True)


def _commit(run: Path, step: int, rows: int) -> Path:
    ckpt = make_checkpoint(run, step)
    (ckpt / "ftctl-metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(rows)))
    C.write_manifest(str(ckpt), step, world_size=1, spec_hash="h")
    return ckpt


def _upload(remote: str, run: Path, steps, **kw) -> None:
    up = C.Uploader(remote, **FAST, **kw)
    for step in steps:
        up.submit(str(_commit(run, step, rows=step)))
        assert up.wait(30)
    up.close()


def test_spec_goes_once_metrics_as_they_grow_and_another_runs_spec_stays(tmp_path, monkeypatch, caplog):
    sent = []
    put = upload._put
    monkeypatch.setattr(
        upload, "_put", lambda fs, local, uri: (sent.append(uri.rsplit("/", 1)[1]), put(fs, local, uri))
    )
    run, remote = tmp_path / "run", f"file://{tmp_path}/store/run"
    (run).mkdir()
    (run / "spec.json").write_text(_spec_json())
    _upload(remote, run, (2, 4))
    store = tmp_path / "store" / "run"
    assert (store / "spec.json").read_text() == _spec_json()
    assert (store / "metrics.jsonl").read_text() == (run / "checkpoint-4" / "ftctl-metrics.jsonl").read_text()
    assert sent.count("spec.json") == 1 and sent.count("metrics.jsonl") == 2  # spec.json unchanged: sent once
    assert sent.index("metrics.jsonl") < sent.index("spec.json")  # spec.json last: it says the records are whole

    theirs = _spec_json(learning_rate=0.5)  # another run's, into the same output
    (store / "spec.json").write_text(theirs)
    sent.clear()
    caplog.set_level(logging.INFO, logger="ftctl.checkpoints.upload")
    _upload(remote, run, (6, 8))
    assert (store / "spec.json").read_text() == theirs
    assert "spec.json" not in sent and "metrics.jsonl" not in sent
    said = [r.getMessage() for r in caplog.records if "another run's" in r.getMessage()]
    assert said == [
        f"not sending metrics.jsonl and spec.json to {remote}: it holds another run's spec.json (other training "
        "settings), kept; this run's go with its final model"
    ]

    _upload(remote, run, (10,), continues=True)  # resumed from the store's checkpoint: the run it is now
    assert (store / "spec.json").read_text() == _spec_json()
