"""A second `ftctl sync pull` of a run that went on in the store (explore39): it pulled the new checkpoints, then
refused the final model ("metrics.jsonl is another file than the store's"), exit 0, and left the directory mixed (the
final adapter of step 300, checkpoints to 400, `ftctl status` saying complete at 300). The final model and the run's
records are decided on before anything is written: an earlier pull of the same run gets the store's in their place,
whole; another run, or this run trained on here past the store's, is refused with nothing written. And `ftctl chat` of
a merge made before the run trained on says so (merge.trained_since, the detection merge's own refusal uses)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from ftctl import checkpoints as C
from ftctl import storage
from ftctl.checkpoints import sync
from ftctl.cli import main
from ftctl.errors import FtctlError
from ftctl.spec import RunSpec
from tests.s3_fixtures import make_checkpoint


def _spec(output, **changed) -> str:
    spec = {**RunSpec(method="lora").to_dict(), "output_dir": str(output), "max_steps": 300, **changed}
    return json.dumps({"spec": spec, "plan": {"method": "lora", "precision": "fp32"}}, indent=1, sort_keys=True)


def _rows(steps, t0: float = 1000.0) -> list[str]:
    return [json.dumps({"step": s, "loss": round(6 - s / 100, 4), "time": t0 + s}) for s in steps]


def _stored(store: Path, upto: int, rows: list[str], weights: bytes, **spec) -> None:
    """The store of a run trained to step ``upto``: its final adapter, records and last three checkpoints."""
    for old in store.glob("checkpoint-*"):
        for f in sorted(old.rglob("*"), reverse=True):
            f.unlink() if f.is_file() else f.rmdir()
        old.rmdir()
    for step in (upto - 20, upto - 10, upto):
        C.write_manifest(str(make_checkpoint(store, step)), step, world_size=1, spec_hash="h")
    (store / "adapter_model.safetensors").write_bytes(weights)
    (store / "tokenizer.json").write_text("{}")
    (store / "metrics.jsonl").write_text("\n".join(rows) + "\n")
    (store / "spec.json").write_text(_spec(store, max_steps=upto, **spec))
    (store / "adapter_config.json").write_text('{"base_model_name_or_path": "tiny"}')


def _run_300(tmp_path: Path) -> tuple[Path, str, list[str]]:
    store = tmp_path / "store" / "run"
    rows = ['{"step": 0, "event": "start", "time": 999.0}', *_rows(range(10, 301, 10))]
    _stored(store, 300, [*rows, '{"step": 300, "event": "final", "time": 1400.0}'], b"a" * 4096)
    return store, f"file://{store}", rows


def _pull(uri: str, into: Path):
    return CliRunner().invoke(main, ["sync", "pull", uri, str(into)])


@pytest.mark.parametrize("where", ["file", "s3"])
def test_a_second_pull_of_a_run_that_went_on_brings_its_final_model_and_records_whole(
    where, request, tmp_path, monkeypatch
):
    monkeypatch.setenv("FTCTL_HOME", str(tmp_path / "home"))
    store, uri, rows = _run_300(tmp_path)
    if where == "s3":  # the same store on a real S3 server on loopback (moto)
        uri = f"{request.getfixturevalue('s3_bucket')}/run"
        storage.put_dir(str(store), uri)
    pulled = tmp_path / "pulled"
    first = _pull(uri, pulled)
    assert first.exit_code == 0 and first.output.splitlines()[-1] == f"pulled the final model -> {pulled}"
    # a relaunch elsewhere trained it on to 400: the rows before its checkpoint carried over as they were
    went_on = [*rows, '{"step": 0, "event": "start", "time": 2000.0}', *_rows(range(310, 401, 10), 2000.0)]
    _stored(store, 400, [*went_on, '{"step": 400, "event": "final", "time": 2500.0}'], b"b" * 4096)
    if where == "s3":
        storage.rm(uri, recursive=True)
        storage.put_dir(str(store), uri)

    again = _pull(uri, pulled)
    assert again.exit_code == 0, again.output
    assert again.output.splitlines()[-1] == (
        f"pulled the final model -> {pulled}, in place of what an earlier pull of this run left there (step 300; the "
        "run has trained on to step 400)"
    )
    for name in ("adapter_model.safetensors", "metrics.jsonl", "spec.json", "adapter_config.json"):
        assert (pulled / name).read_bytes() == (store / name).read_bytes(), name
    assert {"checkpoint-380", "checkpoint-390", "checkpoint-400"} <= {p.name for p in pulled.iterdir()}
    assert not list(pulled.glob("*.ftctl-part"))
    status = CliRunner().invoke(main, ["status", str(pulled)])
    assert status.output.splitlines()[1].startswith("step 400 "), status.output  # was: step 300, "complete"
    assert _pull(uri, pulled).output.splitlines()[-1] == f"already in {pulled}: the final model"


def test_a_pull_never_replaces_work_done_here_nor_another_run_and_writes_nothing(tmp_path):
    store, uri, rows = _run_300(tmp_path)
    pulled = tmp_path / "pulled"
    assert _pull(uri, pulled).exit_code == 0
    went_on = [*rows, *_rows(range(310, 401, 10), 2000.0)]
    _stored(store, 400, went_on, b"b" * 4096)
    # trained on here from the pulled checkpoint-300 (the user's own work): its steps are none of the store's
    with (pulled / "metrics.jsonl").open("a") as f:
        f.write("\n".join(_rows(range(310, 351, 10), 3000.0)) + "\n")
    (pulled / "adapter_model.safetensors").write_bytes(b"m" * 4096)
    before = sorted(os.listdir(pulled))
    got = _pull(uri, pulled)
    assert got.exit_code != 0 and len(got.output.strip().splitlines()) == 1, got.output
    assert f"{pulled} holds steps of this run that {uri} lacks" in got.output
    assert f"nothing pulled, nothing replaced. Pull into a new directory: ftctl sync pull {uri} NEW_DIR" in got.output
    assert sorted(os.listdir(pulled)) == before and (pulled / "adapter_model.safetensors").read_bytes() == b"m" * 4096

    other = tmp_path / "other"  # another run's directory: other settings, other steps
    other.mkdir()
    (other / "spec.json").write_text(_spec(other, learning_rate=0.5))
    (other / "metrics.jsonl").write_text("\n".join(_rows(range(10, 51, 10), 5000.0)) + "\n")
    got = _pull(uri, other)
    assert got.exit_code != 0 and f"{other} holds another run than {uri}: nothing pulled" in got.output, got.output
    assert sorted(os.listdir(other)) == ["metrics.jsonl", "spec.json"]


def test_a_refresh_cut_short_leaves_no_half_replaced_final_model_and_the_next_pull_ends_it(tmp_path, monkeypatch):
    store, uri, rows = _run_300(tmp_path)
    pulled = tmp_path / "pulled"
    assert _pull(uri, pulled).exit_code == 0
    _stored(store, 400, [*rows, *_rows(range(310, 401, 10), 2000.0)], b"b" * 4096)
    real = os.replace

    def cut(src, dst):
        if str(dst).endswith("metrics.jsonl"):
            raise KeyboardInterrupt  # killed among the renames: the weights are the new ones already
        real(src, dst)

    monkeypatch.setattr(sync.os, "replace", cut)
    with pytest.raises(KeyboardInterrupt):
        sync.pull(uri, str(pulled), echo=lambda line: None)
    assert (pulled / "adapter_model.safetensors").read_bytes() == b"b" * 4096
    assert not (pulled / "adapter_config.json").exists()  # no config vouching for a half-replaced final model
    monkeypatch.setattr(sync.os, "replace", real)
    sync.pull(uri, str(pulled), echo=lambda line: None)
    for name in ("metrics.jsonl", "spec.json", "adapter_config.json"):
        assert (pulled / name).read_bytes() == (store / name).read_bytes(), name


def test_a_stopped_runs_records_pulled_again_are_the_stores_as_it_went_on(tmp_path):
    """A run stopped at step 100, pulled; resumed elsewhere and stopped at 200: its records here said 100."""
    store = tmp_path / "store" / "run"
    rows = _rows(range(10, 101, 10))
    for step in (90, 100):
        C.write_manifest(str(make_checkpoint(store, step)), step, world_size=1, spec_hash="h")
    (store / "metrics.jsonl").write_text("\n".join(rows) + "\n")
    (store / "spec.json").write_text(_spec(store))
    pulled, lines = tmp_path / "pulled", []
    sync.pull(f"file://{store}", str(pulled), echo=lines.append)
    C.write_manifest(str(make_checkpoint(store, 200)), 200, world_size=1, spec_hash="h")
    (store / "metrics.jsonl").write_text("\n".join([*rows, *_rows(range(110, 201, 10), 2000.0)]) + "\n")
    sync.pull(f"file://{store}", str(pulled), echo=lines.append)
    assert (pulled / "metrics.jsonl").read_text() == (store / "metrics.jsonl").read_text()
    assert lines[-1].startswith(
        f"pulled metrics.jsonl and spec.json -> {pulled}, in place of what an earlier pull of this run left there "
        "(step 100; the run has trained on to step 200): the run has no final model"
    )
    with pytest.raises(FtctlError, match="holds a final model and .* none"):  # a final model of no run the store has
        (pulled / "adapter_config.json").write_text("{}")
        sync.pull(f"file://{store}", str(pulled), echo=lines.append)


def test_chat_of_a_merge_the_run_trained_on_since_says_so(tmp_path, tiny_model_dir):
    import shutil

    from ftctl.runpaths import MERGE_RECORD
    from ftctl.trainer import chat
    from ftctl.trainer.merge import adapter_digest

    run = tmp_path / "run"
    run.mkdir()
    (run / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tiny_model_dir)}))
    (run / "adapter_model.safetensors").write_bytes(b"300")
    merged = run / "merged"
    shutil.copytree(tiny_model_dir, merged)
    record = {"adapter": "..", "adapter_digest": adapter_digest(run), "method": "lora", "merged_at": "2026-12-06T11:46"}
    (merged / MERGE_RECORD).write_text(json.dumps(record))
    said = []
    chat.load(str(merged), echo=said.append)
    assert not [line for line in said if line.startswith("note:")], said  # the adapter as it was merged
    (run / "adapter_model.safetensors").write_bytes(b"400")  # the run trained on
    said.clear()
    chat.load(str(merged), echo=said.append, command="eval")
    assert said[0] == (
        f"note: {merged} holds the merge of {run.resolve()} as it was on 2026-12-06T11:46; the run has trained on "
        f"since: loading that merge (`ftctl merge {run.resolve()} --out NEW_DIR` merges it as it is now)"
    ), said


def test_a_merge_in_the_store_of_an_adapter_trained_on_since_is_said(tmp_path, s3_bucket):
    """`ftctl chat s3://bucket/run/merged`: the merge downloaded, its adapter's files read from the store."""
    from ftctl import storage
    from ftctl.runpaths import MERGE_RECORD
    from ftctl.trainer.merge import adapter_digest, trained_since

    run, uri = tmp_path / "run", f"{s3_bucket}/run"
    run.mkdir()
    (run / "adapter_config.json").write_text("{}")
    (run / "adapter_model.safetensors").write_bytes(b"300")
    for f in run.iterdir():
        storage.put_file(str(f), f"{uri}/{f.name}")
    merged = tmp_path / "downloaded"  # what chat downloaded of s3://.../run/merged
    merged.mkdir()
    record = {"adapter": uri, "adapter_digest": adapter_digest(run), "merged_at": "2026-12-06T11:46:50+00:00"}
    (merged / MERGE_RECORD).write_text(json.dumps(record))
    assert trained_since(str(merged), f"{uri}/merged") is None
    storage.put_file(str(run / "adapter_config.json"), f"{uri}/adapter_model.safetensors")  # trained on
    assert trained_since(str(merged), f"{uri}/merged") == (
        f"note: {uri}/merged holds the merge of {uri} as it was on 2026-12-06T11:46:50+00:00; the run has trained on "
        f"since: loading that merge (`ftctl merge {uri} --out NEW_DIR` merges it as it is now)"
    )
