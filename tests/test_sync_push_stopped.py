"""`ftctl sync push` of a run that stopped before its end (cancelled, killed) sent its checkpoints only: the store held
no spec.json, so a `sync pull` of it was no run directory (`ftctl launch --output DIR` refused it as "files of no ftctl
run", `ftctl status DIR` knew no such job) and a checkpoint loaded from it named no method (a qlora one on the 16-bit
base). It sends the run's spec.json and metrics.jsonl now, never over another run's, and a pull brings them back."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from ftctl import checkpoints as C
from ftctl import storage
from ftctl.cli import main
from ftctl.errors import FtctlError
from ftctl.spec import RunSpec
from tests.s3_fixtures import make_checkpoint


def _spec_json(output: Path, **changed) -> str:
    spec = {**RunSpec(method="qlora").to_dict(), "output_dir": str(output), **changed}
    return json.dumps({"spec": spec, "plan": {"method": "qlora", "precision": "bf16"}}, indent=1, sort_keys=True)


def _stopped_run(run: Path) -> Path:
    """A run stopped at step 4: checkpoint-2 and -4 committed (each with its copy of metrics.jsonl), checkpoint-6 cut
    short (no manifest), its final adapter's weights moved up without its config (a stop mid-publish)."""
    rows = [{"event": "start", "step": 0, "time": 1000.0}]
    rows += [{"step": s, "loss": 2.0 - s / 10, "time": 1000.0 + s, "max_steps": 40} for s in (1, 2, 3, 4)]
    for step in (2, 4):
        ckpt = make_checkpoint(run, step)
        upto = "".join(json.dumps(r) + "\n" for r in rows if r["step"] <= step)
        (ckpt / "ftctl-metrics.jsonl").write_text(upto)
        C.write_manifest(str(ckpt), step, world_size=1, spec_hash="h")
    make_checkpoint(run, 6)
    (run / "adapter_model.safetensors").write_bytes(b"half a final adapter")
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "spec.json").write_text(_spec_json(run))
    return run


def test_a_stopped_runs_push_sends_its_spec_and_its_pull_is_a_run_directory_again(s3_bucket, tmp_path, monkeypatch):
    from ftctl.preflight import foreign_output
    from ftctl.trainer.trained import Trained

    monkeypatch.setenv("FTCTL_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    run, uri = _stopped_run(tmp_path / "run"), f"{s3_bucket}/run"
    pushed = CliRunner().invoke(main, ["sync", "push", str(run), uri])
    assert pushed.exit_code == 0, pushed.output
    stored = storage.file_sizes(uri)
    assert storage.read_text(f"{uri}/spec.json") == (run / "spec.json").read_text()
    assert stored["metrics.jsonl"] == (run / "metrics.jsonl").stat().st_size
    assert [c.name for c in C.list_checkpoints(uri)] == ["checkpoint-2", "checkpoint-4"]  # never the one cut short
    assert not any(rel.startswith("adapter") for rel in stored)  # nor a final adapter without its config
    assert pushed.output.splitlines()[-1] == (
        f"pushed metrics.jsonl and spec.json -> {uri}: the run has no final model; a launch of it with --output {uri} "
        "resumes it"
    )
    again = CliRunner().invoke(main, ["sync", "push", str(run), uri])
    assert again.exit_code == 0 and again.output == "", again.output  # all there: nothing sent, nothing said

    status = CliRunner().invoke(main, ["status", uri])  # from the store alone, as before
    assert status.exit_code == 0 and "step 4/40 (10%)" in status.output.splitlines()[1], status.output

    got = tmp_path / "got"
    pulled = CliRunner().invoke(main, ["sync", "pull", uri, str(got)])
    assert pulled.exit_code == 0, pulled.output
    assert pulled.output.splitlines()[-1].startswith(f"pulled metrics.jsonl and spec.json -> {got}: ")
    assert (got / "spec.json").read_text() == (run / "spec.json").read_text()
    assert foreign_output(got, str(got)) is None  # `ftctl launch --output got` resumes it, not "files of no run"
    local = CliRunner().invoke(main, ["status", str(got)])
    assert local.exit_code == 0, local.output
    assert local.output.startswith(f"{got} local run, stopped before the end ("), local.output
    assert "resumes it from checkpoint-4" in local.output.splitlines()[0], local.output
    assert Trained(got / "checkpoint-4", adapter=True).method == "qlora"  # loaded as it trained: on a 4-bit base


def test_a_stopped_runs_push_never_replaces_another_runs_records(tmp_path):
    """The store's spec.json is replaced only by the same run's: one alike in every setting that changes the weights
    (relaunched elsewhere), or one whose earlier spec.json this run directory kept (relaunched with other settings).
    A longer metrics.jsonl there, a final model's records, and a local spec.json on a pull stay as they are."""
    uri = f"file://{tmp_path}/store/run"
    run = _stopped_run(tmp_path / "run")
    storage.put_file(
        str(_write(tmp_path / "theirs.json", _spec_json(tmp_path / "x", learning_rate=0.5))), f"{uri}/spec.json"
    )
    lines = []
    C.push(str(run), uri, echo=lines.append)
    assert lines[-1].startswith(f"not pushing metrics.jsonl and spec.json: {uri} holds another run's spec.json than ")
    assert lines[-1].endswith(f"resume this run from the store: `rm {tmp_path}/store/run/spec.json`)")  # how to
    assert json.loads(storage.read_text(f"{uri}/spec.json"))["spec"]["learning_rate"] == 0.5
    assert "metrics.jsonl" not in storage.file_sizes(uri)

    (run / ".ftctl").mkdir()  # this run, relaunched with another learning rate: its earlier spec.json kept
    (run / ".ftctl" / "spec.20261206-120000.json").write_text((tmp_path / "theirs.json").read_text())
    C.push(str(run), uri, echo=lines.append)
    assert lines[-1].startswith(f"pushed metrics.jsonl and spec.json -> {uri}: ")
    assert storage.read_text(f"{uri}/spec.json") == (run / "spec.json").read_text()

    elsewhere = _write(tmp_path / "elsewhere.json", _spec_json(tmp_path / "node", run_name="on-a-node"))
    storage.put_file(str(elsewhere), f"{uri}/spec.json")  # where it ran is all that differs: the same run
    longer = _write(tmp_path / "longer.jsonl", (run / "metrics.jsonl").read_text() + '{"step": 5}\n')
    storage.put_file(str(longer), f"{uri}/metrics.jsonl")  # a later attempt's
    C.push(str(run), uri, echo=lines.append)
    assert lines[-1].startswith(f"pushed spec.json -> {uri}: ")
    assert storage.read_text(f"{uri}/metrics.jsonl") == longer.read_text()

    final = f"file://{tmp_path}/store/final"
    storage.put_file(str(elsewhere), f"{final}/spec.json")
    storage.put_file(str(elsewhere), f"{final}/adapter_config.json")  # a run that ended
    C.push(str(run), final, echo=lines.append)
    assert lines[-1].startswith(f"not pushing metrics.jsonl and spec.json: {final} holds a final model")
    assert storage.read_text(f"{final}/spec.json") == elsewhere.read_text()

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "spec.json").write_text("{}")
    with pytest.raises(FtctlError, match=f"{mine} holds another run than {uri} .*: nothing pulled"):
        C.pull(uri, str(mine), echo=lines.append)  # refused before its checkpoints come (a mixed directory)
    assert (mine / "spec.json").read_text() == "{}" and sorted(os.listdir(mine)) == ["spec.json"]


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
