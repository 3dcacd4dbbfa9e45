"""Checkpoint cadence: the plan states each checkpoint's size, how often (steps, minutes) and what it sends to the
store an hour; where save_steps is not given a GPU plan chooses it from the step time it predicts (plan.checkpoint
_cadence), and warns with the fix where a given one would spend the run saving or outpace the upload."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from ftctl.checkpoints import write_manifest
from ftctl.checkpoints.settings import changes, settings
from ftctl.plan import (
    CHECKPOINT_MINUTES,
    MAX_SAVE_SHARE,
    UPLOAD_GBPS,
    checkpoint_cost,
    dump_run,
    load_run,
    make_plan,
)
from ftctl.preflight import SAVE_GBPS, checkpoint_gb
from ftctl.spec import SAVE_STEPS
from tests.render_fixtures import make_spec

LLAMA_8B = "meta-llama/Llama-3.1-8B"


def _plan(overrides=(), **flags):
    spec = make_spec(list(overrides), **{"model_name_or_path": LLAMA_8B, **flags})
    return spec, make_plan(spec)


def _row(spec, plan, row: str = "checkpoints") -> str:
    return next(line for line in plan.table(spec).splitlines() if line.startswith(f"{row} "))


@pytest.fixture(scope="module")
def fft_8xh100():
    """8B fft on 8 H100s: ZeRO-2, ~128 GB a checkpoint, ~0.8 s a step predicted (weights at plan.FULL_MFU)."""
    return _plan(method="fft", gpus="8xH100")


def test_a_large_checkpoint_is_written_rarely_enough_and_the_plan_says_it(fft_8xh100):
    """Every 100 steps (~80 s) of a 128 GB checkpoint written at 0.5 GB/s (~4 min) spent three quarters of the run saving:
    the saves are spaced so that writing them takes at most a tenth of the run, which here outweighs the 30 minutes."""
    spec, plan = fft_8xh100
    gb = checkpoint_gb(plan)[0]
    assert plan.strategy == "zero2" and gb == pytest.approx(128.5, abs=0.1) and plan.step_s == pytest.approx(0.8, 0.1)
    assert spec.save_steps is None and plan.save_steps > SAVE_STEPS
    train, write = plan.save_steps * plan.step_s, gb / SAVE_GBPS
    assert write / (train + write) <= MAX_SAVE_SHARE and train > CHECKPOINT_MINUTES * 60
    assert plan.step_s * (plan.save_steps - plan.save_steps // 5) < write * (
        1 / MAX_SAVE_SHARE - 1
    )  # no more than that
    row = _row(spec, plan)
    assert row.startswith(f"checkpoints    every {plan.save_steps:,} steps (~")
    assert "~128 GB each (16-bit weights twice and the fp32 optimizer states sharded over 8 ranks)" in row
    assert "~4 min to write at 0.5 GB/s" in row and "save_steps chosen: every 100 steps would spend over 10%" in row
    assert checkpoint_cost(spec, plan) is None and not any("checkpoints every" in n for n in plan.notes)


def test_a_save_steps_given_that_spends_the_run_saving_is_warned_with_the_fix(fft_8xh100):
    spec, plan = fft_8xh100
    given = replace(spec, save_steps=100, output_dir="s3://bucket/run")
    p = make_plan(given)
    assert p.save_steps == 100
    text, fix = checkpoint_cost(given, p)
    assert "checkpoints every 100 steps (~81 s of training at ~0.81 s a step est.) of ~128 GB each" in text
    assert "writing one takes ~4 min at 0.5 GB/s, 76% of the run's time" in text  # the upload keeps pace: not said
    assert fix.startswith(f"-o save_steps={plan.save_steps} (a checkpoint every ~") and "leave save_steps out" in fix
    assert any(n.startswith("checkpoints every 100 steps") and n.endswith(fix) for n in p.notes)  # `ftctl plan` says it
    fixed = replace(given, save_steps=plan.save_steps)
    assert checkpoint_cost(fixed, make_plan(fixed)) is None  # the fix it names is enough


def test_an_object_store_output_is_not_sent_checkpoints_faster_than_it_takes_them():
    spec, plan = _plan(method="fft", gpus="2x8xH100", output_dir="s3://bucket/run")
    gb = checkpoint_gb(plan)[0]
    train = plan.save_steps * plan.step_s
    assert train + gb / SAVE_GBPS >= gb / UPLOAD_GBPS  # each upload done before the next checkpoint
    row = _row(spec, plan)
    per_hour = gb * 3600 / (train + gb / SAVE_GBPS)
    assert f", ~{per_hour:,.0f} GB/h to the store;" in row and "or outpace their upload" in row


def test_slow_steps_checkpoint_within_half_an_hour_and_at_each_evaluation():
    """8B qlora on a T4: ~116 s a step (sdpa under its padding mask: every score), so 100 steps were 3.2 hours a
    preemption could lose."""
    spec, plan = _plan(method="qlora", gpus="1xT4")
    assert plan.step_s > 60 and plan.save_steps < SAVE_STEPS
    assert CHECKPOINT_MINUTES * 60 * 0.75 <= plan.save_steps * plan.step_s <= CHECKPOINT_MINUTES * 60
    assert "save_steps chosen: every 100 steps would be ~3.3 h apart, over 30 min" in _row(spec, plan)
    # eval_steps given: a divisor of it, so that each held-out loss is a checkpoint's (load_best_model_at_end)
    spec, plan = _plan(["eval_split=0.05", "eval_steps=40"], method="qlora", gpus="1xT4")
    assert plan.save_steps == 10 and "a divisor of eval_steps=40" in _row(spec, plan)
    assert not any("not a multiple of save_steps" in n for n in plan.notes)
    assert _plan(["eval_steps=40"], method="qlora", gpus="1xT4")[1].save_steps == 15  # no held-out data: unused


def test_the_default_stays_where_it_fits_and_where_no_step_time_is_predicted():
    spec, plan = _plan(method="lora", gpus="1xH100")  # ~6 s a step, an adapter of 0.5 GB: 100 steps, ~10 min
    assert plan.save_steps == SAVE_STEPS and "save_steps chosen" not in _row(spec, plan)
    spec, plan = _plan(method="lora", gpus="cpu", model_name_or_path="HuggingFaceTB/SmolLM2-135M-Instruct")
    assert plan.step_s is None and plan.save_steps == SAVE_STEPS
    assert _row(spec, plan).startswith(
        "checkpoints    every 100 steps (save_steps' default: no step time is predicted on CPU to choose one from), ~"
    )
    spec, plan = _plan(["saves_per_epoch=4"], method="lora", gpus="1xH100")
    assert plan.save_steps is None and _row(spec, plan).startswith("checkpoints    4 an epoch (saves_per_epoch), ~")
    spec, plan = _plan(["max_steps=500"], method="fft", gpus="8xH100")
    assert _row(spec, plan).endswith(
        "none before the end (max_steps=500); save_steps chosen: every 100 steps "
        "would spend over 10% of the run writing them"
    )


def test_the_chosen_save_steps_is_what_the_trainer_saves_at_and_records(fft_8xh100, tmp_path):
    spec, plan = fft_8xh100
    f = tmp_path / "spec.json"
    f.write_text(dump_run(spec, plan))
    loaded, _ = load_run(str(f))  # what the trainer reads: its TrainingArguments' save_steps is checkpoint_every
    assert loaded.checkpoint_every == plan.save_steps and settings(loaded, plan)["save_steps"] == plan.save_steps
    # a spec.json written before plans chose it: saved at the default, as then
    old = json.loads(f.read_text())
    del old["plan"]["save_steps"], old["plan"]["step_s"]
    f.write_text(json.dumps(old))
    assert load_run(str(f))[0].checkpoint_every == SAVE_STEPS
    # a checkpoint saved at the old default resumes under the chosen one: a followed setting, said once
    checkpoint = tmp_path / "checkpoint-300"
    checkpoint.mkdir()
    write_manifest(str(checkpoint), 300, 1, "abc", settings=settings(spec, plan))  # as_run: save_steps 100
    said = changes(str(checkpoint), settings(loaded, plan))
    assert said.changed == {"save_steps": (SAVE_STEPS, plan.save_steps)} and not said.applied and not said.new_data


def test_the_launcher_records_the_chosen_save_steps_and_warns_of_a_costly_one(monkeypatch, tmp_path):
    """spec.json holds the plan's save_steps (the trainer rewrites it so: a relaunch compared null with it), and a
    launch whose save_steps spends the run saving says so among the preflight's findings, not only `ftctl plan`."""
    from ftctl.backend import prepare

    monkeypatch.chdir(tmp_path)
    flags = dict(method="fft", gpus="8xH100", backend="sky", data_path="s3://b/d.json", output_dir="s3://b/run")
    spec, plan = _plan(**flags)
    r = prepare(spec)
    assert r.spec.save_steps == plan.save_steps == json.loads(r.files["spec.json"])["spec"]["save_steps"]
    given = prepare(make_spec(["save_steps=100"], model_name_or_path=LLAMA_8B, **flags))
    assert given.spec.save_steps == 100 and checkpoint_cost(given.spec, given.plan)


def test_a_tiny_model_on_a_gpu_plan_keeps_the_default_and_every_save_it_is_given(tiny_model_dir):
    """The suite's tiny model planned for GPUs: its step predicted at ~1e-5 s was rounded to 0 and the cadence divided
    by it (ZeroDivisionError in every such plan); a checkpoint of a few MB written each step is no cost to warn of."""
    spec, plan = _plan(model_name_or_path=str(tiny_model_dir), method="fft", gpus="2xA100")
    assert plan.step_s and plan.step_s > 0 and plan.save_steps == SAVE_STEPS
    given = replace(spec, save_steps=1)
    assert checkpoint_cost(given, make_plan(given)) is None


def test_a_cpu_run_keeps_the_default_and_says_when_it_saves_none_before_its_end():
    """A CPU plan predicts no step time: save_steps stays the trainer's default, and its row says what that means for
    a short run (no checkpoint before the end), as a GPU plan's does."""
    small = {"method": "lora", "gpus": "cpu", "model_name_or_path": "HuggingFaceTB/SmolLM2-135M"}
    spec, plan = _plan(["max_steps=40"], **small)
    assert plan.step_s is None and plan.save_steps == SAVE_STEPS and checkpoint_cost(spec, plan) is None
    assert _row(spec, plan).endswith("(the adapters and their optimizer states); none before the end (max_steps=40)")
    spec, plan = _plan(["max_steps=40", "save_steps=10"], **small)
    assert _row(spec, plan).startswith("checkpoints    every 10 steps, ~") and "before the end" not in _row(spec, plan)


def test_saves_per_epoch_that_would_spend_the_run_saving_is_warned_with_the_fix(fft_8xh100):
    """saves_per_epoch's steps depend on the data, which the plan does not read: it says below how many steps an
    epoch the saves asked for cost over a tenth of the run (the threshold save_steps is chosen and checked with), and
    checks them as save_steps where an epoch's steps are known."""
    spec, plan = fft_8xh100
    per_epoch = replace(spec, saves_per_epoch=4)
    p = make_plan(per_epoch)
    gb = checkpoint_gb(p)[0]
    write = gb / SAVE_GBPS
    text, fix = checkpoint_cost(per_epoch, p)
    floor = 4 * -(-write * (1 / MAX_SAVE_SHARE - 1) // p.step_s)  # 4 checkpoints an epoch, each of that many steps
    assert f"an epoch of fewer than {floor:,.0f} steps (" in text and "would spend over 10% of the run" in text
    assert text.startswith("saves_per_epoch=4: checkpoints of ~128 GB each (fft, zero2), ~4 min to write at 0.5 GB/s")
    assert (
        fix == f"-o save_steps={plan.save_steps} in place of saves_per_epoch (a checkpoint every ~41 min), or "
        "leave both out to have it chosen"
    )
    assert any(n.startswith("saves_per_epoch=4: ") for n in p.notes)  # `ftctl plan` says it, the launch warns
    assert _row(per_epoch, p).endswith(", ~4 min to write at 0.5 GB/s")
    # an epoch's steps known (the trainer's count): checked as the save_steps they make
    text, fix = checkpoint_cost(per_epoch, p, epoch_steps=2_000)
    assert text.startswith("saves_per_epoch=4 (2,000 steps an epoch): checkpoints every 500 steps (~7 min")
    assert "in place of saves_per_epoch" in fix
    assert checkpoint_cost(per_epoch, p, epoch_steps=100_000) is None
    lora = replace(spec, method="lora", saves_per_epoch=4)  # an adapter writes in moments
    assert checkpoint_cost(lora, make_plan(lora)) is None


def test_the_disk_row_counts_the_checkpoints_held_at_once_where_they_are(fft_8xh100, monkeypatch):
    spec, plan = fft_8xh100
    gb = checkpoint_gb(plan)[0]
    assert _row(spec, plan, "disk") == (
        f"disk           ~{4 * gb:,.0f} GB at most: 3 checkpoints and the next one (written before the oldest is "
        f"deleted), in {spec.output}"
    )
    store = replace(spec, output_dir="s3://bucket/run", save_total_limit=1)
    row = _row(store, make_plan(store), "disk")
    assert row.startswith(f"disk           ~{2 * gb:,.0f} GB at most: 1 checkpoint and the next one")
    assert "where the run is staged before its upload (FTCTL_LOCAL_DIR, else FTCTL_CACHE/runs/)" in row
    # uploads slower than the writes (at 0.5 GB/s each, a write holds the steps up as long as an upload takes)
    monkeypatch.setattr("ftctl.plan.UPLOAD_GBPS", SAVE_GBPS / 2)
    behind = replace(store, save_steps=20)  # ~23 s of steps, ~4 min to write, ~9 min to upload: they fall behind
    assert _row(behind, make_plan(behind), "disk").endswith("; more while their uploads fall behind (the note)")
