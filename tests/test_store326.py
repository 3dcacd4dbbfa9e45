"""helper task 326: object-store outputs relaunched (notes: /work/notes/explore66-store.md, findings 4, 5 and 8)."""

from __future__ import annotations

import json
import logging
from dataclasses import replace

import pytest

from tests.trainer_fixtures import make_run


def _settings_of(spec, content: bool = True) -> dict:
    """A checkpoint's recorded settings as the trainer records them (its data's content too, unless ``content``
    is off: a checkpoint saved before it was recorded)."""
    from ftctl.checkpoints.settings import content as data_content
    from ftctl.checkpoints.settings import settings
    from ftctl.plan import make_plan

    return {**settings(spec, make_plan(spec)), **(data_content(spec) if content else {})}


def _stored(tmp_path, store: str, step: int, recorded: dict, local=None) -> None:
    """checkpoint-<step> committed with ``recorded`` settings, pushed to ``store`` (or left in ``local``)."""
    from ftctl.checkpoints import push, write_manifest
    from tests.s3_fixtures import make_checkpoint

    where = local or tmp_path / f"ckpt-{step}"
    ckpt = make_checkpoint(where, step, {"adapter_model.safetensors": b"w" * 64, "trainer_state.json": b"{}"})
    write_manifest(str(ckpt), step, 1, "h", settings=recorded)
    if local is None:
        push(str(where), store, echo=lambda *_: None)


def test_the_same_data_file_at_another_path_is_the_same_data_to_the_launch(s3_bucket, tmp_path, tiny_data):
    """A fresh machine with the run's data file at another path (m2/a.json; the run trained on m1/a.json): its
    relaunch into the same s3:// output was refused as "this launch names other data", the checkpoints' recorded
    data_path compared alone. Now the files' content recorded beside it decides; other bytes are still refused, and
    a checkpoint saved before the content was recorded compares the path, as before."""
    from ftctl.plan import make_plan
    from ftctl.preflight import check_resume
    from ftctl.spec import build

    m1, m2 = tmp_path / "m1", tmp_path / "m2"
    for d in (m1, m2):
        d.mkdir()
        (d / "a.json").write_bytes(tiny_data.read_bytes())
    other = m2 / "b.json"
    other.write_text(json.dumps(json.loads(tiny_data.read_text())[::-1]))
    store = f"{s3_bucket}/r1"
    values = {"method": "lora", "gpus": "cpu", "model_params": "1b", "output_dir": store, "resume": "auto"}
    first = build({**values, "data_path": str(m1 / "a.json")})
    _stored(tmp_path, store, 40, _settings_of(first))

    def check(data, **more):
        spec = build({**values, "data_path": str(data), **more})
        return [(f.level, f.what) for f in check_resume(spec, make_plan(spec))]

    assert check(m2 / "a.json") == []  # refused before: "holds checkpoint-40 of a run trained on data_path=..."
    refused = (
        f"{store} holds checkpoint-40 of a run trained on data_path={m1 / 'a.json'}; this launch names other data. "
        f"To go on training that run on it: -o resume={store}/checkpoint-40. For a new run: another --output."
    )
    assert check(other) == [("error", refused)]
    # named (-o resume=), the same files elsewhere change nothing; other ones are said, as before
    assert check(m2 / "a.json", resume=f"{store}/checkpoint-40") == []
    (said,) = check(other, resume=f"{store}/checkpoint-40")
    assert said[0] == "warning" and f"data_path {m1 / 'a.json'} -> {other}" in said[1]

    old = f"{s3_bucket}/r0"  # saved before the content was recorded: its path alone says
    _stored(tmp_path / "old", old, 40, _settings_of(first, content=False))
    spec = build({**values, "output_dir": old, "data_path": str(m2 / "a.json")})
    (said,) = check_resume(spec, make_plan(spec))
    assert said.what.startswith(f"{old} holds checkpoint-40 of a run trained on data_path={m1 / 'a.json'}; ")


def test_a_resume_on_the_same_data_elsewhere_goes_on_and_the_trainer_refuses_other_data(
    tiny_model_dir, tiny_data, s3_bucket, tmp_path, monkeypatch, one_thread, caplog
):
    """The trainer records the data's content in each checkpoint: a fresh machine's relaunch on the same file at
    another path resumes with no change said. Two launches into one output seconds apart both passed the launch's
    check before the first saved anything; the second, waiting on the first's lease, then resumed the first's
    checkpoint on its own data with a warning only. Now the trainer refuses that as the launch does, in its words."""
    from ftctl import storage
    from ftctl.checkpoints.settings import PHASE_KEY
    from ftctl.errors import FtctlError
    from ftctl.preflight import check_resume
    from ftctl.runpaths import ADAPTER_CONFIG
    from ftctl.trainer.run import train

    m1, m2 = tmp_path / "m1", tmp_path / "m2"
    for d in (m1, m2):
        d.mkdir()
        (d / "a.json").write_bytes(tiny_data.read_bytes())
    other = m2 / "b.json"
    other.write_text(json.dumps(json.loads(tiny_data.read_text())[::-1]))
    store, run = f"{s3_bucket}/r1", {"lora_r": 4, "max_steps": 2, "save_steps": 1, "resume": "auto"}
    monkeypatch.setenv("FTCTL_LOCAL_DIR", str(m1 / "stage"))
    assert train(*make_run(tiny_model_dir, m1 / "a.json", store, "lora", **run), echo=lambda *_: None)
    for gone in (ADAPTER_CONFIG, "checkpoint-2"):  # a run stopped after its checkpoint-1
        storage.rm(f"{store}/{gone}", recursive=True)

    monkeypatch.setenv("FTCTL_LOCAL_DIR", str(m2 / "stage"))  # a fresh machine
    again = make_run(tiny_model_dir, m2 / "a.json", store, "lora", **run)
    with caplog.at_level(logging.WARNING, logger="ftctl"):
        resumed = train(*again, echo=lambda *_: None)
    assert resumed.status == "complete" and resumed.global_step == 2
    assert "saved with other settings" not in caplog.text and "has changed since" not in caplog.text
    records = [json.loads(line) for line in (m2 / "stage" / "metrics.jsonl").read_text().splitlines()]
    phase = [row[PHASE_KEY] for row in records if PHASE_KEY in row][-1]  # this start's (the store's before it)
    assert phase["settings"]["data_path"] == str(m2 / "a.json")
    assert phase["resumed"]["step"] == 1  # went on from checkpoint-1

    spec, plan = make_run(tiny_model_dir, other, store, "lora", **run)
    (launch,) = check_resume(spec, plan)  # what the launch says; a launch that checked before the save: the trainer
    spec = replace(spec, max_steps=4)
    with pytest.raises(FtctlError) as refused:
        train(spec, plan, echo=lambda *_: None)
    assert str(refused.value) == launch.what
    assert launch.what.startswith(f"{store} holds checkpoint-2 of a run trained on data_path={m2 / 'a.json'}; ")


def test_the_launch_names_the_newer_checkpoint_staged_here_that_the_trainer_resumes(s3_bucket, tmp_path, monkeypatch):
    """A trainer killed while its checkpoints queued for upload: the store holds checkpoint-300 complete, this
    machine's staging checkpoint-320. The relaunch's warning said "checkpoint-300 was saved with other settings ...
    goes on from step 300", and the trainer then resumed checkpoint-320 (local, verified): read as 20 steps lost.
    Now the launch compares and names the one the trainer resumes here, and the store's beside it."""
    from ftctl.local.backend import LocalBackend
    from ftctl.plan import make_plan
    from ftctl.preflight import check_resume
    from ftctl.spec import build

    store = f"{s3_bucket}/r2"
    monkeypatch.setenv("FTCTL_LOCAL_DIR", str(tmp_path / "stage"))
    values = {"method": "lora", "gpus": "cpu", "model_params": "1b", "output_dir": store, "resume": "auto"}
    spec = build(values)
    staging = LocalBackend().staging_here(spec)
    assert staging == str(tmp_path / "stage")
    _stored(tmp_path, store, 300, _settings_of(spec))
    _stored(tmp_path, store, 320, _settings_of(spec), local=staging)  # not uploaded (the trainer was killed)
    spec = replace(spec, learning_rate=1e-5)
    (said,) = check_resume(spec, make_plan(spec), staging=staging)
    assert said.level == "warning"
    assert said.what.startswith("checkpoint-320 was saved with other settings: learning_rate 0.0002 -> 1e-05; the run ")
    assert said.what.endswith(
        f"(checkpoint-320 is staged on this machine ({staging}), newer than checkpoint-300 in {store}: the run resumes "
        "it here)"
    )
    (said,) = check_resume(spec, make_plan(spec))  # a trainer elsewhere (a cluster's node): the store's
    assert said.what.startswith("checkpoint-300 was saved with other settings") and "staged" not in said.what


def test_a_local_run_relaunched_on_its_data_file_moved_is_not_other_data(tmp_path, tiny_data):
    """A local output's relaunch compared its spec.json's data_path alone (backend.write_files): the run's data file
    moved (another checkout) was refused as other data, though its checkpoint records the same files' content."""
    from ftctl.backend import prepare, write_files
    from ftctl.errors import FtctlError
    from ftctl.spec import build

    old, new = tmp_path / "a" / "data.json", tmp_path / "b" / "data.json"
    for path in (old, new):
        path.parent.mkdir()
        path.write_bytes(tiny_data.read_bytes())
    other = tmp_path / "b" / "other.json"
    other.write_text(json.dumps(json.loads(tiny_data.read_text())[::-1]))
    values = {"method": "lora", "gpus": "1xA100", "backend": "slurm", "output_dir": str(tmp_path / "run")}
    values.update(model_name_or_path="lmsys/vicuna-7b-v1.5", resume="auto")
    write_files(prepare(build({**values, "data_path": str(old)})))
    _stored(tmp_path, "", 5, _settings_of(build({**values, "data_path": str(old)})), local=tmp_path / "run")
    write_files(prepare(build({**values, "data_path": str(new)})))  # refused before: "this launch names other data"
    with pytest.raises(FtctlError, match="holds checkpoint-5 of a run trained on data_path=.*; this launch names"):
        write_files(prepare(build({**values, "data_path": str(other)})))
