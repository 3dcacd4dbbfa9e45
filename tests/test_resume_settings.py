"""A relaunch that resumes a checkpoint under changed settings: what it cannot continue is refused, a new
learning rate or weight decay takes effect (transformers restores the saved ones), the rest is said."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from ftctl.errors import FtctlError
from tests.trainer_fixtures import make_run

SCHEDULE = {"lr_scheduler_type": "cosine", "warmup_ratio": 0.2, "save_steps": 3, "resume": "auto"}


class _Decay(TrainerCallback):
    """The optimizer's weight decay a group, as each step ran."""

    def __init__(self):
        self.seen = []

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        self.seen.append([group["weight_decay"] for group in optimizer.param_groups])


def _lrs(output_dir) -> dict[int, float]:
    rows = map(json.loads, open(f"{output_dir}/metrics.jsonl"))
    return {r["step"]: r["lr"] for r in rows if "lr" in r}


def test_a_relaunch_trains_with_its_new_learning_rate_and_weight_decay(
    tiny_model_dir, tiny_data, tmp_path, one_thread, caplog
):
    """Saved at step 3 of a run at 1e-3 without weight decay; relaunched for 6 steps at 1e-4 with 0.1: steps 4-6
    take the learning rates of a run that had the new settings from the start, and the decay group decays."""
    from ftctl.trainer.run import train

    out = tmp_path / "out"
    first = make_run(tiny_model_dir, tiny_data, out, "lora", max_steps=3, learning_rate=1e-3, **SCHEDULE)
    assert train(*first, echo=lambda *_: None).status == "complete"
    new = {"max_steps": 6, "learning_rate": 1e-4, "weight_decay": 0.1}
    decay = _Decay()
    with caplog.at_level(logging.WARNING, logger="ftctl"):
        resumed = train(*make_run(tiny_model_dir, tiny_data, out, "lora", **SCHEDULE, **new), [decay], lambda *_: None)
    assert resumed.status == "complete" and resumed.global_step == 6
    assert (
        "checkpoint-3 was saved with other settings: learning_rate 0.001 -> 0.0001, weight_decay 0 -> 0.1, max_steps "
        "3 -> 6; the run goes on from step 3 with the new ones; another --output starts a new run instead\n"
        in caplog.text
    )
    scratch = tmp_path / "scratch"
    assert train(*make_run(tiny_model_dir, tiny_data, scratch, "lora", **SCHEDULE, **new), echo=lambda *_: None)
    expected = _lrs(scratch)
    assert [_lrs(out)[s] for s in (4, 5, 6)] == pytest.approx([expected[s] for s in (4, 5, 6)], rel=1e-6)
    assert _lrs(out)[4] < 1e-4 < _lrs(out)[3]  # not the saved schedule's
    assert decay.seen == [[0.1, 0.0]] * 3  # transformers' decay group, then the one without


def test_a_relaunch_logs_and_saves_at_its_own_intervals(tiny_model_dir, tiny_data, tmp_path, one_thread, caplog):
    """transformers restores logging_steps and save_steps from the checkpoint's trainer_state.json: a relaunch
    with -o save_steps=1 to checkpoint more often went on at the old interval, and said only max_steps changed."""
    from ftctl.trainer.run import train

    out = tmp_path / "out"
    every = {"resume": "auto", "save_total_limit": 10}
    first = make_run(tiny_model_dir, tiny_data, out, "lora", max_steps=2, save_steps=2, logging_steps=2, **every)
    assert train(*first, echo=lambda *_: None).status == "complete"
    again = make_run(tiny_model_dir, tiny_data, out, "lora", max_steps=4, save_steps=1, logging_steps=1, **every)
    with caplog.at_level(logging.WARNING, logger="ftctl"):
        assert train(*again, echo=lambda *_: None).status == "complete"
    assert "save_steps 2 -> 1, logging_steps 2 -> 1" in caplog.text
    assert {p.name for p in out.glob("checkpoint-*")} == {"checkpoint-2", "checkpoint-3", "checkpoint-4"}
    assert sorted(_lrs(out)) == [2, 3, 4]  # step 1 by the first interval, then every step


def test_a_finished_run_is_not_trained_again(tiny_model_dir, tiny_data, tmp_path, one_thread, monkeypatch):
    """The same launch again after a run finished: transformers' Trainer took one step past max_steps at the
    schedule's end and wrote the final model again; now it is refused before anything loads (by launch's preflight
    too), the final model untouched, and a higher max_steps trains on."""
    from ftctl.preflight import ERROR, check_resume
    from ftctl.trainer.run import train

    out = tmp_path / "out"
    monkeypatch.setenv("SKYPILOT_TASK_ID", "sky-2026-12-05-08-10-00-000001_ftctl-r_1")  # a SkyPilot job trained it
    assert train(*make_run(tiny_model_dir, tiny_data, out, "lora", max_steps=3, **SCHEDULE), echo=print).status == (
        "complete"
    )
    monkeypatch.setenv("SKYPILOT_TASK_ID", "sky-2026-12-05-09-00-00-000002_ftctl-r_2")  # another job
    final = (out / "adapter_model.safetensors").read_bytes()
    advice = "nothing is left to train. To train it further, raise -o max_steps; to start another run, give another --output."
    same = f"{out} holds this run trained to step 3 of 3 (checkpoint-3): {advice}"
    other = f"{out} holds a run trained to step 3 of 3 (checkpoint-3) with other settings (learning_rate 0.001 -> 0.0001): {advice}"
    for changed, said in (({}, same), ({"learning_rate": 1e-4}, other)):  # another learning rate: not "this run"
        again = make_run(tiny_model_dir, tiny_data, out, "lora", max_steps=3, **SCHEDULE, **changed)
        with pytest.raises(FtctlError) as e:
            train(*again, echo=lambda *_: None)
        assert str(e.value) == said
        assert [(f.level, f.what) for f in check_resume(*again)] == [(ERROR, said)]
    assert (out / "adapter_model.safetensors").read_bytes() == final and not (out / "checkpoint-4").exists()
    # a Slurm job requeued after its run finished (its node failed as it ended): complete, not a FAILED job
    status = tmp_path / "status"
    monkeypatch.setenv("FTCTL_ATTEMPT", "1")
    monkeypatch.setenv("FTCTL_STATUS_FILE", str(status))
    said = []
    again = make_run(tiny_model_dir, tiny_data, out, "lora", max_steps=3, **SCHEDULE)
    assert train(*again, echo=said.append).status == "complete" and status.read_text() == "complete\n"
    assert said == ["an earlier attempt of this job finished the run at step 3: nothing is left to train"]
    assert (out / "adapter_model.safetensors").read_bytes() == final
    monkeypatch.delenv("FTCTL_ATTEMPT")
    # a SkyPilot managed job recovered after its run finished (killed before it ended): its task id is the one that
    # trained it, and SkyPilot says no attempt
    monkeypatch.setenv("SKYPILOT_TASK_ID", "sky-2026-12-05-08-10-00-000001_ftctl-r_1")
    said = []
    assert train(*again, echo=said.append).status == "complete" and status.read_text() == "complete\n"
    assert said == ["an earlier attempt of this job finished the run at step 3: nothing is left to train"]
    monkeypatch.delenv("SKYPILOT_TASK_ID")
    # stopped between its last checkpoint and its final adapter: not finished, it resumes and writes the adapter,
    # checkpoint-3's, without the step past max_steps transformers took there
    (out / "adapter_config.json").unlink()
    (out / "adapter_model.safetensors").unlink()
    again = make_run(tiny_model_dir, tiny_data, out, "lora", max_steps=3, **SCHEDULE)
    resumed = train(*again, echo=lambda *_: None)
    assert resumed.status == "complete" and resumed.global_step == 3 and (out / "adapter_config.json").is_file()
    final, saved = (load_file(d / "adapter_model.safetensors") for d in (out, out / "checkpoint-3"))
    assert final.keys() == saved.keys() and all(torch.equal(final[k], saved[k]) for k in saved)
    assert max(_lrs(out)) == 3 and not (out / "checkpoint-4").exists()
    more = train(*make_run(tiny_model_dir, tiny_data, out, "lora", max_steps=6, **SCHEDULE), echo=lambda *_: None)
    assert more.status == "complete" and more.global_step == 6


def test_an_epoch_based_run_is_finished_at_the_total_it_saved():
    from ftctl.checkpoints.settings import Changes, finished
    from ftctl.spec import build

    spec = build({"method": "lora", "output_dir": "runs/r"})
    assert spec.max_steps <= 0
    done = finished(json.dumps({"global_step": 40, "max_steps": 40}), spec, None)
    assert done.startswith("runs/r holds this run trained to step 40 of 40") and "raise -o num_train_epochs" in done
    assert finished(json.dumps({"global_step": 39, "max_steps": 40}), spec, None) is None
    # the data or the epochs changed: the Trainer counts the steps an epoch has now
    assert (
        finished(json.dumps({"global_step": 40, "max_steps": 40}), spec, Changes(40, {"data_path": ("a", "b")})) is None
    )
    assert finished(json.dumps({"global_step": 40, "max_steps": 40}), spec, Changes(40, {"seed": (1, 2)})) is None
    assert finished("", spec, None) is None and finished("{}", spec, None) is None


def test_what_a_checkpoint_cannot_continue_under_is_refused(tiny_model_dir, tiny_data, tmp_path, one_thread):
    from ftctl.checkpoints.settings import changes, settings
    from ftctl.trainer.run import train

    out = tmp_path / "out"
    spec, plan = make_run(tiny_model_dir, tiny_data, out, "lora", max_steps=3, lora_r=4, **SCHEDULE)
    assert train(spec, plan, echo=lambda *_: None).status == "complete"
    checkpoint = str(out / "checkpoint-3")
    with pytest.raises(FtctlError) as e:
        train(
            *make_run(tiny_model_dir, tiny_data, out, "lora", max_steps=6, lora_r=8, **SCHEDULE), echo=lambda *_: None
        )
    assert str(e.value) == (
        f"{checkpoint} was trained with lora_r=4; this run asks for lora_r=8, which cannot continue it. Relaunch "
        "with -o lora_r=4 to resume it, or give another --output to train from the start."
    )
    fft = make_run(tiny_model_dir, tiny_data, out, "fft", **SCHEDULE)
    with pytest.raises(FtctlError, match="trained with method=lora; this run asks for method=fft"):
        changes(checkpoint, settings(*fft))
    # how a step runs is not compared: an out-of-memory relaunch with a smaller micro-batch resumes as it was
    assert changes(checkpoint, settings(replace(spec, per_device_train_batch_size=1, strategy="single"), plan)) is None
    assert changes(checkpoint, settings(spec, plan)) is None
    assert changes(None, settings(spec, plan)) is None


def test_a_checkpoint_saved_before_settings_were_recorded_resumes_as_before(tmp_path):
    from ftctl.checkpoints import write_manifest
    from ftctl.checkpoints.settings import changes

    checkpoint = tmp_path / "checkpoint-5"
    checkpoint.mkdir()
    (checkpoint / "trainer_state.json").write_text("{}")
    write_manifest(str(checkpoint), 5, 1, "abc")
    assert changes(str(checkpoint), {"method": "fft", "learning_rate": 1.0}) is None
    write_manifest(str(checkpoint), 5, 1, "abc", settings={"method": "lora", "seed": 1, "data_path": "a.jsonl"})
    said = changes(str(checkpoint), {"method": "lora", "seed": 2, "data_path": "a.jsonl", "learning_rate": 1.0})
    assert said.changed == {"seed": (1, 2)} and not said.applied
    assert said.line().endswith(
        "(the batches of the first 5 steps, of the data as it is now, are skipped as trained); another --output starts "
        "a new run instead"
    )
    # another GPU count made another global batch: the rows skipped are not the rows trained, said with the numbers
    write_manifest(str(checkpoint), 5, 1, "abc", settings={"global_batch_size": 32})
    said = changes(str(checkpoint), {"global_batch_size": 48})
    assert (
        "(the first 5 steps are skipped as trained at 48 sequences a step: 240 sequences where 160 were trained; "
        in (said.line())
        and "-o global_batch_size=32 with a GPU count that makes it" in said.line()
    )


def test_the_settings_record_the_global_batch_the_run_makes():
    """Not the one asked for: 32 asked of 3 processes at micro-batch 4 makes 36, which a resume compares."""
    from ftctl.checkpoints.settings import settings
    from ftctl.plan import make_plan
    from ftctl.spec import build

    spec = build({"gpus": "3xA100", "model_params": "1b", "per_device_train_batch_size": 4})
    plan = make_plan(spec)
    assert plan.global_batch_size == 36 and settings(spec, plan)["global_batch_size"] == 36


@pytest.mark.slow
def test_under_deepspeed_the_relaunch_takes_the_new_schedule(tiny_model_dir, tiny_data, tmp_path, one_thread):
    """ZeRO-2 on two CPU processes restores the optimizer and schedule through DeepSpeed's own checkpoint: the
    relaunch's steps still take the learning rates of a run that had the new settings from the start."""
    import tempfile
    from pathlib import Path

    from ftctl.trainer.run import train
    from tests.trainer_fixtures import run_trainer_cli, subprocess_env, write_spec

    env = subprocess_env(TORCH_EXTENSIONS_DIR=Path(tempfile.gettempdir()) / "ftctl-torch-extensions")
    out = tmp_path / "out"
    for i, new in enumerate(({"max_steps": 3, "learning_rate": 1e-3}, {"max_steps": 6, "learning_rate": 1e-4})):
        spec, plan = make_run(tiny_model_dir, tiny_data, out, "fft", gpus="2xcpu", strategy="zero2", **SCHEDULE, **new)
        done = run_trainer_cli(write_spec(spec, plan, tmp_path / f"spec-{i}.json"), nproc=2, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
    assert "checkpoint-3 was saved with other settings: learning_rate 0.001 -> 0.0001, max_steps 3 -> 6" in done.stderr
    scratch = make_run(
        tiny_model_dir, tiny_data, tmp_path / "scratch", "fft", **SCHEDULE, max_steps=6, learning_rate=1e-4
    )
    assert train(*scratch, echo=lambda *_: None).status == "complete"
    expected = _lrs(tmp_path / "scratch")
    assert [_lrs(out)[s] for s in (4, 5, 6)] == pytest.approx([expected[s] for s in (4, 5, 6)], rel=1e-6)


def test_resume_never_refuses_to_write_over_an_earlier_runs_checkpoints(
    tiny_model_dir, tiny_data, tmp_path, one_thread
):
    from ftctl.trainer.run import train

    out = tmp_path / "out"
    spec, plan = make_run(tiny_model_dir, tiny_data, out, "lora", max_steps=3, save_steps=3)
    assert train(spec, plan, echo=lambda *_: None).status == "complete"
    before = {p.name: p.read_bytes() for p in (out / "checkpoint-3").iterdir()}
    with pytest.raises(FtctlError) as e:
        train(spec, plan, echo=lambda *_: None)
    assert str(e.value) == (
        f"resume=never, but {out} holds an earlier run's checkpoints (checkpoint-3 the newest), which this run would "
        "write over: give another --output, resume=auto to continue them, or delete them first."
    )
    assert {p.name: p.read_bytes() for p in (out / "checkpoint-3").iterdir()} == before


def test_resume_never_into_a_store_output_deleted_since_starts_afresh(
    tiny_model_dir, tiny_data, tmp_path, one_thread, monkeypatch, s3_bucket
):
    """An object-store output deleted (`ftctl sync ls`: no checkpoints) and trained again with resume=never was
    refused, naming checkpoints only this machine's hidden cache of it still held. The store's are what count; the
    cache's copies are set aside (moved, not deleted)."""
    from ftctl import storage
    from ftctl.checkpoints.resume import QUARANTINE_DIR
    from ftctl.trainer.run import train

    cache, store = tmp_path / "cache", f"{s3_bucket}/never"
    monkeypatch.setenv("FTCTL_LOCAL_DIR", str(cache))
    run = make_run(tiny_model_dir, tiny_data, store, "lora", max_steps=3, save_steps=3, resume="never",
                   keep_staging=True)  # a cache that kept its copy  # fmt: skip
    assert train(*run, echo=lambda *_: None).status == "complete" and (cache / "checkpoint-3").is_dir()
    with pytest.raises(FtctlError, match=f"{store} holds an earlier run's checkpoints"):
        train(*run, echo=lambda *_: None)  # the store holds them: refused, as before
    storage.rm(store, recursive=True)
    assert train(*run, echo=lambda *_: None).status == "complete"
    assert list((cache / QUARANTINE_DIR).glob("checkpoint-3-*"))  # the earlier copy, set aside


def test_a_store_run_goes_on_on_new_data_from_its_checkpoint_as_the_refusal_says(
    tiny_model_dir, tiny_data, tmp_path, one_thread, monkeypatch, s3_bucket
):
    """Other data into an object-store output: launch's refusal offered -o resume=<the store's checkpoint URI>, which
    spec validation then refused (a remote resume), leaving no way on. A checkpoint of the run's own store output is
    a resume= that the trainer downloads; another store's is refused, saying how to pull it."""
    import shutil

    from ftctl.preflight import ERROR, check_resume
    from ftctl.trainer.run import train

    store = f"{s3_bucket}/newdata"
    monkeypatch.setenv("FTCTL_LOCAL_DIR", str(tmp_path / "cache"))
    assert train(*make_run(tiny_model_dir, tiny_data, store, "lora", max_steps=3, save_steps=3)).status == "complete"
    other = tmp_path / "other.jsonl"
    shutil.copy(tiny_data, other)
    refused = check_resume(*make_run(tiny_model_dir, other, store, "lora", max_steps=5, save_steps=5, resume="auto"))
    assert [f.level for f in refused] == [ERROR] and f"-o resume={store}/checkpoint-3." in refused[0].what
    monkeypatch.setenv("FTCTL_LOCAL_DIR", str(tmp_path / "another-node"))  # a node whose cache holds another run's
    from ftctl.checkpoints import write_manifest
    from tests.s3_fixtures import make_checkpoint

    write_manifest(str(make_checkpoint(tmp_path / "another-node", 3)), 3, 1, "an earlier run's")
    said = []
    on = make_run(tiny_model_dir, other, store, "lora", max_steps=5, save_steps=5, resume=f"{store}/checkpoint-3",
                  keep_staging=True)  # fmt: skip
    result = train(*on, echo=said.append)
    assert result.status == "complete" and result.global_step == 5
    assert (tmp_path / "another-node" / "checkpoint-3" / "adapter_model.safetensors").is_file()  # the store's
    with pytest.raises(FtctlError, match=r"resumed from the run's own output_dir \(resume=OUTPUT/checkpoint-N"):
        make_run(tiny_model_dir, other, store, "lora", resume=f"{s3_bucket}/elsewhere/checkpoint-3")


def _step_tokens(output_dir) -> dict[int, int]:
    rows = [json.loads(line) for line in open(f"{output_dir}/metrics.jsonl")]
    seen = {r["step"]: r["tokens"] for r in rows if "loss" in r}
    return {step: seen[step] - seen.get(step - 1, 0) for step in seen if step - 1 in seen or step == 1}


def test_a_relaunch_on_other_data_reads_it_from_its_start(tiny_model_dir, tiny_data, tmp_path, one_thread, caplog):
    """Continuing a run on more data: the relaunch keeps the checkpoint's weights, optimizer and schedule and takes
    the new data's first batches (the Trainer skips the checkpoint's batches only of the data it trained on)."""
    from ftctl.demo import demo_data_path
    from ftctl.trainer.run import train

    more = tmp_path / "more.json"
    more.write_text(json.dumps(json.loads(demo_data_path().read_text())[100:160]))
    out, scratch = tmp_path / "out", tmp_path / "scratch"
    assert train(*make_run(tiny_model_dir, tiny_data, out, "lora", max_steps=3, **SCHEDULE), echo=lambda *_: None)
    on = {**SCHEDULE, "resume": str(out / "checkpoint-3")}  # named: resume=auto refuses other data (helper 326)
    with caplog.at_level(logging.WARNING, logger="ftctl"):
        assert train(*make_run(tiny_model_dir, more, out, "lora", max_steps=6, **on), echo=lambda *_: None)
    said = (
        f"data_path {tiny_data} -> {more}; the run goes on from step 3 with the new ones (the new data from its "
        "start); another --output starts a new run instead"
    )
    assert caplog.text.count(said) == 1
    assert train(*make_run(tiny_model_dir, more, scratch, "lora", max_steps=3, **SCHEDULE), echo=lambda *_: None)
    resumed, first = _step_tokens(out), _step_tokens(scratch)
    assert [resumed[s] for s in (4, 5, 6)] == [first[s] for s in (1, 2, 3)]  # the new data's first three batches


def test_cosine_with_min_lr_decays_to_the_floor_its_kwargs_give(tiny_model_dir, tiny_data, tmp_path, one_thread):
    """transformers' cosine_with_min_lr needs lr_scheduler_kwargs (it raised at the first step without them): the
    run file's min_lr_rate reaches it, and the rate stops at that share of the peak."""
    from ftctl.trainer.run import train

    floor = {"lr_scheduler_type": "cosine_with_min_lr", "lr_scheduler_kwargs": {"min_lr_rate": 0.5}}
    spec, plan = make_run(tiny_model_dir, tiny_data, tmp_path / "out", "lora", max_steps=4, save_steps=4, **floor)
    assert train(spec, plan, echo=lambda *_: None).status == "complete"
    lrs = _lrs(tmp_path / "out")
    assert lrs[1] == pytest.approx(1e-3) and lrs[4] < lrs[3] < lrs[2] < lrs[1], lrs
    assert min(lrs.values()) >= 5e-4 * (1 - 1e-6), lrs


def test_a_requeued_slurm_job_under_resume_never_continues_its_own_checkpoints(
    tiny_model_dir, tiny_data, tmp_path, one_thread, monkeypatch
):
    """resume=never refuses an earlier run's checkpoints; a requeued attempt of the job (its script passes Slurm's
    SLURM_RESTART_COUNT as FTCTL_ATTEMPT) finds its own first attempt's, and goes on from them instead of failing."""
    from ftctl.trainer.run import train

    out = tmp_path / "out"
    never = {"resume": "never", "save_steps": 3}
    assert train(*make_run(tiny_model_dir, tiny_data, out, "lora", max_steps=3, **never), echo=lambda *_: None)
    with pytest.raises(FtctlError, match="resume=never, but .* holds an earlier run's checkpoints"):
        train(*make_run(tiny_model_dir, tiny_data, out, "lora", max_steps=6, **never), echo=lambda *_: None)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # Slurm's alone (a run started inside a requeued allocation)
    with pytest.raises(FtctlError, match="resume=never, but .* holds an earlier run's checkpoints"):
        train(*make_run(tiny_model_dir, tiny_data, out, "lora", max_steps=6, **never), echo=lambda *_: None)
    monkeypatch.setenv("FTCTL_ATTEMPT", "1")
    said = []
    resumed = train(*make_run(tiny_model_dir, tiny_data, out, "lora", max_steps=6, **never), echo=said.append)
    assert resumed.status == "complete" and resumed.global_step == 6
    assert sorted(_lrs(out)) == [1, 2, 3, 4, 5, 6]  # steps 4-6 after the first attempt's 1-3: not trained again


def test_a_relaunch_measuring_the_held_out_loss_otherwise_starts_its_lowest_afresh(
    tiny_model_dir, tiny_data, tmp_path, one_thread, caplog
):
    """Continued on other data with eval_split, the held-out rows are others: the checkpoint's lowest loss was
    kept as the best (and compared by early stopping) against losses of another set. It starts afresh, said once."""
    from ftctl.demo import demo_data_path
    from ftctl.trainer.run import train

    more = tmp_path / "more.json"
    more.write_text(json.dumps(json.loads(demo_data_path().read_text())[100:160]))
    out = tmp_path / "out"
    held = {"eval_split": 0.2, "early_stopping_patience": 5}
    assert train(*make_run(tiny_model_dir, tiny_data, out, "lora", max_steps=3, **held, **SCHEDULE), echo=print)
    before = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())["best_metric"]
    on = {**SCHEDULE, "resume": str(out / "checkpoint-3")}  # named: resume=auto refuses other data (helper 326)
    with caplog.at_level(logging.WARNING, logger="ftctl"):
        assert train(*make_run(tiny_model_dir, more, out, "lora", max_steps=6, **held, **on), echo=print)
    state = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    evals = {row["step"]: row["eval_loss"] for row in state["log_history"] if "eval_loss" in row}
    assert before is not None and state["best_metric"] == evals[6] != before  # the new set's, not the old one's
    assert state["best_model_checkpoint"].endswith("checkpoint-6")
    assert caplog.text.count("the held-out loss is measured otherwise now (data_path changed)") == 1


def _stopped_at(out, step: int) -> None:
    """The run as if preempted after saving checkpoint-<step>: its later checkpoints and final adapter gone."""
    for ckpt in out.glob("checkpoint-*"):
        if int(ckpt.name.split("-")[1]) > step:
            shutil.rmtree(ckpt)
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        (out / name).unlink()


def test_a_constant_rate_saved_without_its_warm_up_goes_on_at_the_full_rate(
    tiny_model_dir, tiny_data, tmp_path, one_thread, caplog
):
    """lr_scheduler_type=constant with a warm-up warms up since abece96; an ftctl before it trained the full rate
    from step 1 (transformers' constant). Its checkpoint saved within what is now the warm-up resumed warming up
    again: 1e-3 for 5 steps, then 8.3e-4 at step 6 (an older commit's checkpoint-4 resumed by hand). It goes on at
    the full rate, as the run trained; this ftctl's own checkpoint within the warm-up goes on warming up."""
    from ftctl.trainer.run import train
    from tests.trainer_fixtures import losses_by_step

    quiet = {"echo": lambda *_: None}
    each = {"lr_scheduler_type": "constant", "max_steps": 8, "save_steps": 2, "save_total_limit": 10, "resume": "auto"}
    old = tmp_path / "old"  # what the older ftctl trained: the full rate from step 1
    assert train(*make_run(tiny_model_dir, tiny_data, old, "lora", warmup_ratio=0.0, **each), **quiet)
    full, losses = _lrs(old), losses_by_step(old)
    assert set(full.values()) == {1e-3}
    _stopped_at(old, 4)
    manifest = old / "checkpoint-4" / "ftctl-manifest.json"
    record = json.loads(manifest.read_text())
    record["settings"]["warmup_ratio"] = 0.75  # it recorded the run's warm-up, which it did not train
    manifest.write_text(json.dumps(record))
    with caplog.at_level(logging.WARNING, logger="ftctl"):
        assert train(*make_run(tiny_model_dir, tiny_data, old, "lora", warmup_ratio=0.75, **each), **quiet)
    assert (
        "checkpoint-4 trained its 4 steps at the full learning rate (lr_scheduler_type=constant without the warm-up, "
        "as an ftctl before 4 Dec 2026 ran it): the run goes on at the full rate, not warming up again" in caplog.text
    )
    assert "other settings" not in caplog.text
    assert _lrs(old) == full
    assert [losses_by_step(old)[s] for s in range(5, 9)] == pytest.approx([losses[s] for s in range(5, 9)], rel=1e-5)

    new = tmp_path / "new"
    assert train(*make_run(tiny_model_dir, tiny_data, new, "lora", warmup_ratio=0.75, **each), **quiet)
    warming = _lrs(new)
    assert warming[4] < warming[6] < warming[7] == 1e-3
    _stopped_at(new, 4)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ftctl"):
        assert train(*make_run(tiny_model_dir, tiny_data, new, "lora", warmup_ratio=0.75, **each), **quiet)
    assert "full learning rate" not in caplog.text and _lrs(new) == pytest.approx(warming, rel=1e-9)


def test_a_resume_on_a_data_file_edited_since_says_so(tiny_model_dir, tiny_data, tmp_path, one_thread, caplog):
    """A run stopped, its data file edited (rows dropped, then a row's text changed), relaunched: the Trainer skips
    the checkpoint's batches of the rows as they are now; each relaunch says the data changed since its checkpoint,
    once, and a relaunch on the data as it was says nothing."""
    from ftctl.trainer.run import train

    data, out = tmp_path / "data.json", tmp_path / "out"
    rows = json.loads(tiny_data.read_text())
    data.write_text(json.dumps(rows))
    assert train(*make_run(tiny_model_dir, data, out, "lora", max_steps=3, **SCHEDULE), echo=lambda *_: None)
    resumed = f"-o resume={out}/checkpoint-3; for a new run: another --output."

    def relaunch(max_steps):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="ftctl"):
            run = make_run(tiny_model_dir, data, out, "lora", max_steps=max_steps, **SCHEDULE)
            assert train(*run, echo=lambda *_: None).status == "complete"
        return caplog.text

    data.write_text(json.dumps(rows[:40]))
    said = relaunch(4)
    assert said.count(f"{data} has changed since checkpoint-3 was saved ({len(rows)} training rows -> 40)") == 1
    assert said.count(resumed) == 1
    rows[0]["conversations"][1]["value"] = "An edited answer."
    data.write_text(json.dumps(rows[:40]))
    said = relaunch(5)
    assert f"{data} has changed since checkpoint-4 was saved (its 40 training rows hold other tokens)" in said
    assert "has changed since" not in relaunch(6)


def test_a_new_run_from_another_runs_checkpoint_past_its_end_is_refused(
    tiny_model_dir, tiny_data, tmp_path, one_thread, caplog
):
    """-o resume=OTHER/checkpoint-3 into a new output with max_steps=2 (meant as 2 more): the Trainer took no
    step, wrote checkpoint-3's adapter as the new run's final one and said complete at step 3; now it is refused
    before a step, naming the max_steps that trains that many more, which trains them."""
    from ftctl.trainer.run import train

    first, new = tmp_path / "first", tmp_path / "new"
    assert train(*make_run(tiny_model_dir, tiny_data, first, "lora", max_steps=3, **SCHEDULE), echo=lambda *_: None)
    named = {**SCHEDULE, "resume": str(first / "checkpoint-3")}
    with pytest.raises(FtctlError) as e:
        train(*make_run(tiny_model_dir, tiny_data, new, "lora", max_steps=2, **named), echo=lambda *_: None)
    assert str(e.value) == (
        f"resume={first}/checkpoint-3 goes on from step 3 of the run that saved it, and this run ends at step 2 "
        "(max_steps=2): nothing would be trained. Its steps count from that run's start: -o max_steps=5 trains 2 more."
    )
    assert not (new / "adapter_model.safetensors").exists() and not list(new.glob("checkpoint-*"))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ftctl"):
        more = train(*make_run(tiny_model_dir, tiny_data, new, "lora", max_steps=5, **named), echo=lambda *_: None)
    # the line says how its settings differ, not to give another --output: it is one
    assert "max_steps 3 -> 5; the run goes on from step 3 with the new ones\n" in caplog.text
    assert more.status == "complete" and more.global_step == 5 and (new / "checkpoint-5").is_dir()


def test_launch_says_what_a_named_checkpoint_was_saved_with(tiny_model_dir, tiny_data, tmp_path, one_thread, caplog):
    """-o resume=RUN/checkpoint-N: launch's preflight reads the settings its manifest records, as it does the
    newest checkpoint's for resume=auto, and says what changed (the trainer's own line) or refuses what cannot
    continue it before the job; it said nothing, and on Slurm the trainer told it after the queue wait."""
    from ftctl.preflight import ERROR, WARNING, Finding, check_resume
    from ftctl.trainer.run import train

    first, new = tmp_path / "first", tmp_path / "new"
    assert train(*make_run(tiny_model_dir, tiny_data, first, "lora", max_steps=3, lora_r=4, **SCHEDULE), echo=print)
    checkpoint = str(first / "checkpoint-3")
    named = {**SCHEDULE, "lora_r": 4, "resume": checkpoint}
    run = make_run(tiny_model_dir, tiny_data, new, "lora", max_steps=6, learning_rate=1e-4, **named)
    line = (
        "checkpoint-3 was saved with other settings: learning_rate 0.001 -> 0.0001, max_steps 3 -> 6; the run goes "
        "on from step 3 with the new ones"
    )
    assert check_resume(*run) == [Finding(WARNING, line)]  # another run's: no other --output to suggest
    with caplog.at_level(logging.WARNING, logger="ftctl"):
        assert train(*run, echo=lambda *_: None).global_step == 6
    assert f"{line}\n" in caplog.text  # the same words as the trainer's, said before the job
    refused = check_resume(*make_run(tiny_model_dir, tiny_data, tmp_path / "r8", "lora", **{**named, "lora_r": 8}))
    assert refused == [
        Finding(
            ERROR,
            f"{checkpoint} was trained with lora_r=4; this run asks for lora_r=8, which cannot continue it. Relaunch "
            "with lora_r: 4 in the run file to resume it, or give another --output to train from the start.",  # (its
            # spec built from a dict: a run file's, said as given since helper 280)
        )
    ]
    # one of the output's own, named: another --output is the way to a new run; at the finished run's end, refused
    own = make_run(tiny_model_dir, tiny_data, first, "lora", max_steps=6, learning_rate=1e-4, **named)
    assert check_resume(*own) == [Finding(WARNING, f"{line}; another --output starts a new run instead")]
    done = check_resume(*make_run(tiny_model_dir, tiny_data, first, "lora", max_steps=3, **named))
    assert [(f.level, f.what) for f in done] == [(ERROR, f"{first} holds this run trained to step 3 of 3 "
        "(checkpoint-3): nothing is left to train. To train it further, raise -o max_steps; to start another run, "
        "give another --output.")]  # fmt: skip
    # a directory only the cluster's nodes see: nothing new is said (the trainer checks it there)
    elsewhere = {**named, "lora_r": 8, "resume": str(tmp_path / "on-the-nodes" / "checkpoint-3")}
    assert check_resume(*make_run(tiny_model_dir, tiny_data, tmp_path / "r9", "lora", **elsewhere)) == []
