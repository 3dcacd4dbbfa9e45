"""The lowest held-out loss's checkpoint across a stop and a resume on a fresh node: the store keeps it, the resumed
run's trainer_state names it, and the run's end says which step the final model is and which checkpoint holds the
lowest."""

from __future__ import annotations

import json
import logging
import shutil

from tests.test_evaluation import eval_data  # noqa: F401 (a fixture, taken by name below)
from tests.trainer_fixtures import make_run


def test_a_resume_on_a_fresh_node_keeps_the_lowest_checkpoint_in_the_store(
    tiny_model_dir,
    tiny_data,
    request,
    tmp_path,
    one_thread,
    s3_bucket,
    monkeypatch,
    caplog,
):
    """save_total_limit=1, stopped after step 4 (the lowest at step 3), resumed to step 5 on a node whose staging
    is empty and elsewhere: only checkpoint-4 is downloaded, and transformers dropped the best checkpoint's name
    (a path of the first node), so the store deleted checkpoint-3 at the next checkpoint while the log went on
    saying "lowest ... at step 3"."""
    from ftctl.checkpoints import list_checkpoints
    from ftctl.trainer.run import train

    uri = f"{s3_bucket}/runs/best"
    held_out = request.getfixturevalue("eval_data")
    first, second = tmp_path / "node-a", tmp_path / "node-b"
    values = dict(save_steps=1, save_total_limit=1, eval_data_path=str(held_out), learning_rate=0.2, resume="auto")
    monkeypatch.setenv("FTCTL_LOCAL_DIR", str(first))  # where an object-store output is staged
    assert train(*make_run(tiny_model_dir, tiny_data, uri, "lora", max_steps=4, **values)).status == "complete"
    evals = {r["step"]: r["eval_loss"] for r in map(json.loads, open(first / "metrics.jsonl")) if "eval_loss" in r}
    lowest = min(evals, key=evals.get)
    assert lowest < 4, evals  # the case this is about: the lowest is not the newest
    shutil.rmtree(first)  # the first node is gone
    monkeypatch.setenv("FTCTL_LOCAL_DIR", str(second))
    caplog.set_level(logging.INFO, logger="ftctl.trainer.sft_trainer")
    assert train(*make_run(tiny_model_dir, tiny_data, uri, "lora", max_steps=5, **values)).status == "complete"
    evals = {r["step"]: r["eval_loss"] for r in map(json.loads, open(second / "metrics.jsonl")) if "eval_loss" in r}
    assert min(evals, key=evals.get) == lowest, evals  # no lower one after the resume
    assert [c.step for c in list_checkpoints(uri) if c.complete] == [lowest, 5]
    state = json.loads((second / "checkpoint-5" / "trainer_state.json").read_text())
    assert state["best_model_checkpoint"] == str(second / f"checkpoint-{lowest}")
    assert "does not exist anymore" not in caplog.text
    assert (
        f"the final model is step 5's; the lowest held-out loss, {evals[lowest]:.4f}, was step {lowest}'s: "
        f"{uri}/checkpoint-{lowest} holds it"
    ) in caplog.text


def test_early_stopping_counts_on_across_a_resume(tiny_model_dir, tiny_data, request, tmp_path, one_thread, caplog):
    """patience 3, stopped at step 4 after two evaluations above the lowest (step 2): the resumed run stops at the
    next one above it, step 5. transformers restores no callback's state by default, so the count started again
    from 0 and this run went on to step 11. Evaluated every step, a checkpoint every 2: said at the start."""
    from ftctl.trainer.run import train

    out = tmp_path / "out"
    values = dict(
        eval_steps=1,
        save_steps=2,
        save_total_limit=1,
        eval_data_path=str(request.getfixturevalue("eval_data")),
        learning_rate=0.05,
        lr_scheduler_type="constant",
        early_stopping_patience=3,
        resume="auto",
    )
    caplog.set_level(logging.INFO, logger="ftctl.trainer.sft_trainer")
    assert train(*make_run(tiny_model_dir, tiny_data, out, max_steps=4, **values)).global_step == 4
    evals = {r["step"]: r["eval_loss"] for r in map(json.loads, open(out / "metrics.jsonl")) if "eval_loss" in r}
    assert min(evals, key=evals.get) == 2 and evals[4] > evals[3] > evals[2], evals  # two above the lowest
    lines = []
    result = train(*make_run(tiny_model_dir, tiny_data, out, max_steps=12, **values), echo=lines.append)
    evals = {r["step"]: r["eval_loss"] for r in map(json.loads, open(out / "metrics.jsonl")) if "eval_loss" in r}
    assert result.global_step == 5 and evals[5] > evals[2], evals
    assert lines[-1] == (
        f"stopped at step 5 of 12: 3 evaluations in a row found no held-out loss below {evals[2]:.4f} (step 2); "
        "checkpoint-2 holds it"
    )
    assert (
        f"early stopping counts on from step 4: 2 evaluations in a row found no held-out loss below {evals[2]:.4f}; "
        "it stops at 3"
    ) in caplog.text
    assert (
        "the held-out loss is measured every step and a checkpoint saved every 2 steps: a lowest loss found between "
        "checkpoints is kept by none (the log still names its step); -o eval_steps=2 measures it at checkpoints"
    ) in caplog.text


def test_transformers_best_model_keys_say_what_ftctl_does():
    """load_best_model_at_end, metric_for_best_model and greater_is_better were 'Unknown key' (a TRL recipe's
    lines): what ftctl does agrees, anything else is refused saying which checkpoint is the best and where it is;
    evaluations between checkpoints are said by the plan."""
    import pytest

    from ftctl.errors import FtctlError
    from ftctl.plan import make_plan
    from ftctl.spec import build

    held = {"eval_split": 0.1, "gpus": "1xA100", "model_params": "1b"}
    agreed = {"load_best_model_at_end": False, "metric_for_best_model": "eval_loss", "greater_is_better": False}
    assert build({**held, **agreed}).evaluates
    with pytest.raises(FtctlError) as e:
        build({**held, "load_best_model_at_end": True, "metric_for_best_model": "accuracy"})
    assert "'load_best_model_at_end' (run file) is not set by hand here: the final model is the last step's" in str(
        e.value
    )
    assert (
        "'metric_for_best_model' (run file) is not set by hand here: the best checkpoint is the lowest held-out"
        in str(e.value)
    )
    assert (
        "eval_steps=50 is not a multiple of save_steps=500: a lowest held-out loss found between checkpoints is "
        "kept by none; -o eval_steps=500 measures it at checkpoints"
        in make_plan(build({**held, "eval_steps": 50, "save_steps": 500})).notes
    )
    assert not any("multiple" in n for n in make_plan(build({**held, "eval_steps": 1000, "save_steps": 500})).notes)


def test_early_stopping_says_when_no_checkpoint_holds_the_lowest(
    tiny_model_dir, tiny_data, request, tmp_path, one_thread
):
    """Evaluated every step, a checkpoint every 3: the lowest (step 2) is between checkpoints. The stop line said
    nothing of where it is (and named transformers' stale pointer, an earlier checkpoint, where there was one)."""
    from ftctl.trainer.run import train

    out = tmp_path / "out"
    values = dict(eval_steps=1, save_steps=3, eval_data_path=str(request.getfixturevalue("eval_data")))
    lines = []
    spec, plan = make_run(
        tiny_model_dir, tiny_data, out, max_steps=12, learning_rate=0.05, early_stopping_patience=2, **values
    )
    result = train(spec, plan, echo=lines.append)
    evals = {r["step"]: r["eval_loss"] for r in map(json.loads, open(out / "metrics.jsonl")) if "eval_loss" in r}
    lowest = min(evals, key=evals.get)
    assert lowest % 3 and result.global_step < 12, evals
    assert lines[-1].endswith(f"below {evals[lowest]:.4f} (step {lowest}); no checkpoint holds it")
