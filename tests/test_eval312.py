"""Helper task 312: eval's note of data a run trained on only before its own steps (review 61 finding 8), and
lora_model_dir on a relaunch that resumes the run's own checkpoints (005ec68's leftovers)."""

from __future__ import annotations

import json
from pathlib import Path

from ftctl.checkpoints import write_manifest
from ftctl.trainer.heldout import trained_on
from ftctl.trainer.trained import Trained


def _run(directory: Path, **spec) -> Trained:
    """A run's output as eval reads it: its spec.json (no weights are loaded for the note)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "spec.json").write_text(json.dumps({"spec": spec, "plan": {"method": "lora"}}))
    return Trained(directory, adapter=True)


def _checkpoint(directory: Path, data_path: str) -> Path:
    """A checkpoint whose manifest records the data its steps trained on."""
    directory.mkdir(parents=True)
    (directory / "trainer_state.json").write_text('{"global_step": 2}')
    write_manifest(str(directory), 2, 1, "h", settings={"data_path": data_path})
    return directory


def test_the_checkpoint_a_run_went_on_from_is_named_and_this_runs_eval_split_left_out(tmp_path):
    """`-o resume=FIRST/checkpoint-2 --data b.json -o eval_split=0.1`, then eval of FIRST's a.json: its rows trained
    in checkpoint-2's steps only (under FIRST's eval_split, not this run's), and the note said "the run trained on
    its rows, less the 0.1 it held out (eval_split)", as of b.json."""
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    checkpoint = _checkpoint(tmp_path / "first" / "checkpoint-2", str(a))
    new = _run(tmp_path / "new", data_path=str(b), resume=str(checkpoint), eval_split=0.1)
    said = trained_on(new, [str(a), str(b)])
    assert said.startswith(
        f"{b}: the run trained on its rows, less the 0.1 it held out (eval_split); {a}: the run trained on its rows "
        f"in the steps of the checkpoint it went on from ({checkpoint}), so this loss is lower"
    ), said


def test_the_adapter_a_run_started_from_is_named_as_what_trained_on_its_rows(tmp_path):
    """-o lora_model_dir=FIRST: FIRST's rows trained the weights the run started from, not in the run's steps."""
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    first = _run(tmp_path / "first", data_path=str(a)).path
    (first / "adapter_config.json").write_text("{}")
    new = _run(tmp_path / "new", data_path=str(b), lora_model_dir=str(first), eval_split=0.1)
    said = trained_on(new, [str(a)])
    assert said.startswith(f"{a}: the adapter the run started from ({first}) trained on its rows, so this loss"), said


def test_the_checkpoint_went_on_from_is_read_at_the_runs_own_s3_endpoint(moto_s3, s3_env, tmp_path):
    """A run that went on from a checkpoint in a MinIO/R2 bucket (-o s3_endpoint_url=..., no AWS_ENDPOINT_URL here):
    its manifest was asked of AWS's own endpoint, the error swallowed, and the note silently left out."""
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    local = _checkpoint(tmp_path / "staged" / "checkpoint-2", str(a))
    bucket, client = moto_s3.make_bucket(), moto_s3.client()
    for f in local.iterdir():
        client.upload_file(str(f), bucket, f"first/checkpoint-2/{f.name}")
    checkpoint = f"s3://{bucket}/first/checkpoint-2"
    new = _run(tmp_path / "new", data_path=str(b), resume=checkpoint, s3_endpoint_url=moto_s3.endpoint)
    said = trained_on(new, [str(a)])
    assert said and said.startswith(
        f"{a}: the run trained on its rows in the steps of the checkpoint it went on from ({checkpoint})"
    ), said


# ---- lora_model_dir (005ec68) on a relaunch or requeue that resumes the run's own checkpoints


def _adapter_config(directory: Path, base: str, r: int = 4) -> Path:
    directory.mkdir(parents=True)
    saved = {"peft_type": "LORA", "r": r, "lora_alpha": 2 * r, "target_modules": ["v_proj", "q_proj"]}
    (directory / "adapter_config.json").write_text(json.dumps(saved | {"base_model_name_or_path": base}))
    (directory / "adapter_model.safetensors").write_bytes(b"")
    return directory


def test_relaunch_after_the_adapter_was_deleted_resumes_its_own_checkpoint(tiny_model_dir, tiny_data, tmp_path):
    """A run started with -o lora_model_dir=FIRST, stopped at checkpoint-2; FIRST deleted since. The relaunch (and a
    Slurm requeue: resume=never on attempt 1) resumes checkpoint-2, which needs nothing of FIRST, yet build refused it
    as 'not a LoRA adapter (no such directory here)'. It is taken, r and alpha the checkpoint's (none given), and the
    note says that the adapter is not read, not that 'the adapters start from its weights'."""
    import pytest

    from ftctl.errors import FtctlError
    from ftctl.spec import build

    out, gone = tmp_path / "new", tmp_path / "first"
    _adapter_config(out / "checkpoint-2", str(tiny_model_dir))
    values = {"method": "lora", "model_name_or_path": str(tiny_model_dir), "data_path": str(tiny_data)}
    values |= {"output_dir": str(out), "lora_model_dir": str(gone), "gpus": "cpu"}
    notes: list[str] = []
    spec = build(values | {"resume": "auto"}, notes=notes)
    assert (spec.lora_r, spec.lora_alpha, spec.lora_model_dir) == (4, 8, str(gone.resolve()))
    (said,) = [n for n in notes if n.startswith("lora_model_dir")]
    assert said == (
        f"lora_model_dir {gone}: not read: the run resumes its own checkpoint-2 in {out} (its adapters' weights, "
        "optimizer and schedule); r 4, lora_alpha 8 and the target modules are its own"
    ), said
    with pytest.MonkeyPatch.context() as env:
        env.setenv("FTCTL_ATTEMPT", "1")  # a requeued Slurm attempt: the trainer resumes the job's own checkpoints
        assert build(values | {"resume": "never"}).lora_r == 4
    # where the run would load the adapter, it is refused as before: a first attempt, or no checkpoint of its own
    with pytest.raises(FtctlError, match="is not a LoRA adapter"):
        build(values | {"resume": "never"})
    with pytest.raises(FtctlError, match="is not a LoRA adapter"):
        build(values | {"resume": "auto", "output_dir": str(tmp_path / "fresh")})


def test_the_trainer_goes_on_from_its_own_checkpoint_after_the_adapter_was_deleted(
    tiny_model_dir, tiny_data, tmp_path, one_thread
):
    """End to end: NEW (r 4), started from adapter FIRST, saved checkpoint-2 at its end; relaunched with max_steps 3
    and -o lora_model_dir=FIRST, an adapter deleted since, it goes on from checkpoint-2 to step 3 (the trainer loads
    no adapter where it resumes one), where build refused it for the missing adapter. (NEW started from FIRST: a
    relaunch naming an adapter its checkpoints did not start from is refused, tests/test_adapter320.py.)"""
    import shutil

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from ftctl.trainer.run import train
    from tests.trainer_fixtures import make_run

    new, gone = tmp_path / "new", tmp_path / "first"
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), lora).save_pretrained(gone)
    small = {"lora_r": 4, "lora_alpha": 8, "lora_target_modules": "q_proj,v_proj", "save_steps": 2, "resume": "auto"}
    first = make_run(tiny_model_dir, tiny_data, new, "lora", max_steps=2, lora_model_dir=str(gone), **small)
    assert train(*first, echo=lambda *_: None)
    shutil.rmtree(gone)
    again = {"save_steps": 2, "resume": "auto", "lora_model_dir": str(gone)}
    spec, plan = make_run(tiny_model_dir, tiny_data, new, "lora", max_steps=3, **again)
    assert spec.lora_r == 4 and train(spec, plan, echo=lambda *_: None).status == "complete"
    steps = [json.loads(line).get("step") for line in (new / "metrics.jsonl").read_text().splitlines()]
    assert max(s for s in steps if s is not None) == 3


# ---- chat/eval of a run in object storage that a relaunch trained past its final model (review 61 finding 10)


def _upload(client, bucket: str, local: Path, prefix: str) -> None:
    for f in sorted(p for p in local.rglob("*") if p.is_file()):
        client.upload_file(str(f), bucket, f"{prefix}/{f.relative_to(local)}")


def test_a_store_run_trained_past_its_final_adapter_loads_that_checkpoint(moto_s3, s3_env, tmp_path, monkeypatch):
    """s3://B/run holds the final adapter of a run that ended at step 2 (its metrics.jsonl, uploaded with it, says
    so) and a relaunch's complete checkpoint-3, which stopped before its end. chat/eval download the run's top-level
    files, where no status or checkpoint is: they loaded the step-2 adapter without a word. Given the store it came
    from, find loads checkpoint-3 (downloaded beside it), said; a run with nothing past its final loads the final."""
    import logging

    from ftctl.trainer.trained import download_top, find

    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_s3.endpoint)
    bucket, client = moto_s3.make_bucket(), moto_s3.client()
    staged = _adapter_config(tmp_path / "staged", "org/base")
    events = [{"event": "start", "step": 0}, {"step": 2, "loss": 1.0}, {"event": "end", "step": 2}]
    (staged / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    (staged / "spec.json").write_text(json.dumps({"spec": {"data_path": "a.json"}, "plan": {"method": "lora"}}))
    for step in (2, 3):
        checkpoint = _adapter_config(staged / f"checkpoint-{step}", "org/base", r=step)
        (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        write_manifest(str(checkpoint), step, 1, "h")
    _upload(client, bucket, staged, "run")
    run = f"s3://{bucket}/run"
    logs: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: logs.append(record.getMessage())
    logging.getLogger("ftctl.trainer.trained").addHandler(handler)
    try:
        found = find(download_top(run, str(tmp_path / "top")), store=run)
        assert found.path == tmp_path / "top" / "checkpoint-3" and found.adapter, found
        assert json.loads((found.path / "adapter_config.json").read_text())["r"] == 3
        assert any(
            line.startswith(
                f"{run}: its final adapter is an earlier run's; a relaunch trained on to "
                "checkpoint-3 and stopped before its end: loading checkpoint-3"
            )
            for line in logs
        ), logs
        client.delete_object(Bucket=bucket, Key="run/checkpoint-3/ftctl-manifest.json")  # not complete: the final
        assert find(download_top(run, str(tmp_path / "again")), store=run).path == tmp_path / "again"
    finally:
        logging.getLogger("ftctl.trainer.trained").removeHandler(handler)


def test_launch_refuses_a_deleted_adapter_where_no_checkpoint_of_its_own_is_complete(
    tiny_model_dir, tiny_data, tmp_path
):
    """Its only checkpoint's save stopped before its commit: the trainer starts afresh, from the adapter's weights,
    which are gone; said before the job (it stopped at its start, naming the adapter_config.json it could not read)."""
    from ftctl.plan import make_plan
    from ftctl.preflight import check_resume
    from ftctl.spec import build

    out, gone = tmp_path / "new", tmp_path / "first"
    _adapter_config(out / "checkpoint-2", str(tiny_model_dir))  # no ftctl-manifest.json: not committed
    values = {"method": "lora", "model_name_or_path": str(tiny_model_dir), "data_path": str(tiny_data)}
    spec = build(values | {"output_dir": str(out), "lora_model_dir": str(gone), "gpus": "cpu", "resume": "auto"})
    (said,) = check_resume(spec, make_plan(spec))
    assert said.level == "error" and said.what.startswith(
        f"lora_model_dir={gone.resolve()} is not there any more, and {out} holds no complete checkpoint to go on from "
        "(checkpoint-2: no ftctl-manifest.json (incomplete: stopped before it was committed)): the run would start "
        "from that adapter's weights."
    ), said
