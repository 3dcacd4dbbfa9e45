"""Held-out evaluation: eval_data_path or eval_split, its loss every eval_steps and at the end."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest

from ftctl.errors import FtctlError
from ftctl.spec import build
from tests.trainer_fixtures import TINY_ROWS, make_run

EVAL_ROWS = 10


@pytest.fixture(scope="module")
def eval_data(tmp_path_factory):
    """The bundled demo's conversations after the tiny training file's (a few repeat one of its conversations:
    the demo asks its facts again)."""
    from ftctl.demo import demo_data_path

    rows = json.loads(demo_data_path().read_text())[TINY_ROWS : TINY_ROWS + EVAL_ROWS]
    path = tmp_path_factory.mktemp("eval-data") / "held-out.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _reference_loss(model_dir, adapter_dir, eval_path, batch: int) -> float:
    """What the Trainer's eval_loss means, computed without the trainer: the held-out rows in order, in
    batches of ``batch`` padded rows, each batch's mean over its scored tokens by transformers' own loss,
    averaged over the rows."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from ftctl.trainer.data import build_dataset
    from ftctl.trainer.heldout import pad_batch
    from ftctl.trainer.model import load_tokenizer

    tokenizer = load_tokenizer(str(model_dir))
    rows = build_dataset(str(eval_path), tokenizer, 128)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), adapter_dir).eval()
    losses, weights = [], []
    for start in range(0, len(rows), batch):
        chunk = rows[start : start + batch]
        ids, labels, mask = pad_batch(chunk, tokenizer.pad_token_id)
        with torch.no_grad():
            losses.append(model(input_ids=ids, attention_mask=mask, labels=labels).loss.item())
        weights.append(len(chunk["input_ids"]))
    return sum(loss * w for loss, w in zip(losses, weights)) / sum(weights)


def test_held_out_loss_every_eval_steps_and_at_the_end(tiny_model_dir, tiny_data, eval_data, tmp_path, one_thread):
    from ftctl.trainer.run import train

    spec, plan = make_run(
        tiny_model_dir, tiny_data, tmp_path / "out", "lora", max_steps=7, eval_data_path=str(eval_data), eval_steps=3
    )
    assert "every 3 steps and at the end, on " + str(eval_data) in plan.table()
    lines = []
    result = train(spec, plan, echo=lines.append)
    assert result.status == "complete"

    records = map(json.loads, open(f"{result.output_dir}/metrics.jsonl"))
    evals = [r for r in records if r.get("event") == "eval"]
    assert [r["step"] for r in evals] == [3, 6, 7]
    assert all(math.isfinite(r["eval_loss"]) for r in evals)
    said = [line for line in lines if line.startswith("eval at")]
    assert [line.split("  ")[0] for line in said] == ["eval at step 3", "eval at step 6", "eval at step 7"]
    for i, line in enumerate(said):  # an evaluation above an earlier one names the lowest
        lowest = min(evals[: i + 1], key=lambda r: r["eval_loss"])
        above = lowest["eval_loss"] < evals[i]["eval_loss"]
        assert line.endswith(f"(lowest {lowest['eval_loss']:.4f} at step {lowest['step']})") == above, line
    # the last evaluation ran on the final weights: the saved adapter, evaluated without the trainer
    reference = _reference_loss(tiny_model_dir, result.output_dir, eval_data, plan.per_device_train_batch_size)
    assert evals[-1]["eval_loss"] == pytest.approx(reference, rel=1e-4)
    assert evals[0]["eval_loss"] != evals[-1]["eval_loss"]  # the adapter moved between them


def test_several_held_out_datasets_are_evaluated_each_and_together(
    tiny_model_dir, tiny_data, eval_data, tmp_path, one_thread
):
    """Two held-out files: each one's loss (eval_<name>_loss, the same as evaluating that file alone) and all of
    them together (eval_loss: what the lowest checkpoint and early stopping read), one record and one line."""
    from ftctl.trainer.run import train

    rows = eval_data.read_text().splitlines(keepends=True)
    chat, facts = tmp_path / "chat.jsonl", tmp_path / "facts.v2.jsonl"
    chat.write_text("".join(rows[:4]))
    facts.write_text("".join(rows[4:]))
    spec, plan = make_run(
        tiny_model_dir, tiny_data, tmp_path / "out", "lora", max_steps=4, eval_steps=2, eval_data_path=[chat, facts]
    )
    lines = []
    result = train(spec, plan, echo=lines.append)
    assert result.status == "complete"
    evals = [r for r in map(json.loads, open(f"{result.output_dir}/metrics.jsonl")) if r.get("event") == "eval"]
    assert [r["step"] for r in evals] == [2, 4]  # one record an evaluation, not one a dataset
    last = evals[-1]
    for name, path in (("chat", chat), ("facts", facts)):  # each as if evaluated alone, on the final adapter
        reference = _reference_loss(tiny_model_dir, result.output_dir, path, plan.per_device_train_batch_size)
        assert last[f"eval_{name}_loss"] == pytest.approx(reference, rel=1e-4)
    both = sorted((last["eval_chat_loss"], last["eval_facts_loss"]))
    assert both[0] < last["eval_loss"] < both[1]
    if not plan.packing:  # each dataset weighs by its sequences: here its rows
        assert last["eval_loss"] == pytest.approx((last["eval_chat_loss"] * 4 + last["eval_facts_loss"] * 6) / 10)
    said = [line for line in lines if line.startswith("eval at step 4")]
    assert said == [
        f"eval at step 4  loss {last['eval_loss']:.4f} (chat {last['eval_chat_loss']:.4f}, facts "
        f"{last['eval_facts_loss']:.4f})  " + said[0].split(")  ", 1)[1]
    ]


def test_eval_split_of_several_datasets_holds_out_rows_of_each(tiny_model_dir, tiny_data, eval_data):
    from ftctl.trainer.data import all_held_out, build_datasets
    from ftctl.trainer.model import load_tokenizer

    spec = build({"data_path": [str(tiny_data), str(eval_data)], "eval_split": 0.5, "model_max_length": 128})
    train, held = build_datasets(spec, load_tokenizer(str(tiny_model_dir)))
    assert list(held) == ["conversations", "held-out"] and all(len(rows) for rows in held.values())
    assert train.column_names == all_held_out(held).column_names == ["input_ids", "labels"]
    assert len(train) + len(all_held_out(held)) == TINY_ROWS + EVAL_ROWS


def test_eval_split_holds_out_the_same_rows_every_time(tiny_model_dir, tiny_data):
    from ftctl.trainer.data import build_dataset, build_datasets
    from ftctl.trainer.model import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model_dir))
    spec = build({"data_path": str(tiny_data), "eval_split": 0.25, "model_max_length": 128, "seed": 7})
    train, held = build_datasets(spec, tokenizer)
    assert (len(train), len(held)) == (TINY_ROWS - 12, 12)
    rows = lambda d: sorted(map(tuple, d["input_ids"]))  # noqa: E731
    assert sorted(rows(train) + rows(held)) == rows(build_dataset(str(tiny_data), tokenizer, 128))
    assert rows(build_datasets(spec, tokenizer)[1]) == rows(held)  # every rank, every resume: the same rows
    assert rows(build_datasets(replace(spec, seed=8), tokenizer)[1]) != rows(held)

    with pytest.raises(FtctlError, match="leaves none to train on"):
        build_datasets(replace(spec, eval_split=0.999), tokenizer)


def test_eval_split_never_holds_out_a_copy_of_a_training_row(tiny_model_dir, tmp_path):
    """Rows repeated in the data (the demo's facts, asked again; a scraped set's duplicates): eval_split holds out
    each row with all its copies, so the held-out loss is never of rows the model trained on; rows all distinct
    split as datasets' train_test_split does."""
    from ftctl.trainer.data import build_datasets, shared_rows
    from ftctl.trainer.model import load_tokenizer

    def row(i):
        return {"messages": [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"a{i}"}]}

    rows = [row(i) for i in range(30)] + [row(i % 5) for i in range(30)]  # rows 0-4 seven times each
    data = tmp_path / "copies.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tokenizer = load_tokenizer(str(tiny_model_dir))
    said = []
    for seed in range(6):
        spec = build({"data_path": str(data), "eval_split": 0.2, "model_max_length": 128, "seed": seed})
        train, held = build_datasets(spec, tokenizer, said.append)
        assert (len(train), len(held)) == (48, 12) and shared_rows(train, held) is None
    assert (
        said[-1] == "eval_split: 35 of the 60 rows are copies of another; the 12 held out are none of the training rows"
    )
    # the same rows drawn plainly (what datasets' split gives) would have held out copies of training rows
    import datasets

    ids = [[i + 1, 7] for i in range(30)] + [[i % 5 + 1, 7] for i in range(30)]  # the rows' contents, as tokens
    plain = datasets.Dataset.from_dict({"input_ids": ids}).train_test_split(test_size=12, seed=0)
    assert shared_rows(plain["train"], plain["test"]) is not None


def test_a_run_stops_once_the_held_out_loss_stops_falling(tiny_model_dir, tiny_data, tmp_path, one_thread):
    """early_stopping_patience=2 at a learning rate the tiny model overshoots with: the run ends at the second
    evaluation in a row above the lowest, says so, and keeps the lowest one's checkpoint."""
    from ftctl.trainer.run import train

    spec, plan = make_run(
        tiny_model_dir,
        tiny_data,
        tmp_path / "out",
        max_steps=12,
        eval_split=0.25,
        eval_steps=1,
        save_steps=1,
        save_total_limit=2,
        learning_rate=0.05,
        early_stopping_patience=2,
    )
    assert plan.evaluation.endswith("; stops after 2 evaluations without a lower one")
    lines = []
    result = train(spec, plan, echo=lines.append)
    assert result.status == "complete" and result.global_step < 12
    records = map(json.loads, open(f"{result.output_dir}/metrics.jsonl"))
    evals = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    lowest = min(evals, key=lambda e: e[1])
    assert [step for step, _ in evals[-2:]] == [result.global_step - 1, result.global_step]
    assert all(loss >= lowest[1] for _, loss in evals[-2:]) and lowest[0] == result.global_step - 2
    assert lines[-1] == (
        f"stopped at step {result.global_step} of 12: 2 evaluations in a row found no held-out loss below "
        f"{lowest[1]:.4f} (step {lowest[0]}); checkpoint-{lowest[0]} holds it"
    )
    assert (tmp_path / "out" / f"checkpoint-{lowest[0]}").is_dir()


def test_evaluation_settings_are_checked():
    with pytest.raises(FtctlError) as e:
        build({"eval_data_path": "held.json", "eval_split": 1.5, "eval_steps": 0})
    text = str(e.value)
    assert text.startswith("3 problems")
    assert "hold out data one way" in text and "eval_split=1.5" in text and "eval_steps must be at least 1" in text
    assert build({"eval_data": "held.json"}).eval_data_path == "held.json"  # the alias
    with pytest.raises(FtctlError, match="early_stopping_patience stops on the held-out loss: give held-out data"):
        build({"early_stopping_patience": 3})
    assert build({}).evaluates is False


def test_the_evaluation_batch_is_the_trainings_unless_given():
    """FastChat's per_device_eval_batch_size was taken and ignored ("left to ftctl"): it is the evaluation's
    micro-batch now; without it, the training's, which the plan fits."""
    from ftctl.plan import make_plan
    from ftctl.trainer.run import evaluation_args

    spec = build({"eval_split": 0.1, "gpus": "1xA100", "model_params": "1b", "per_device_train_batch_size": 4})
    assert evaluation_args(spec, make_plan(spec))["per_device_eval_batch_size"] == 4
    given = build({**dict(eval_split=0.1, gpus="1xA100", model_params="1b"), "per_device_eval_batch_size": 16})
    assert evaluation_args(given, make_plan(given))["per_device_eval_batch_size"] == 16
    assert any(
        n.startswith("per_device_eval_batch_size=16 is over the training's micro-batch") for n in make_plan(given).notes
    )
    with pytest.raises(FtctlError, match="per_device_eval_batch_size must be at least 1, not 0"):
        build({"per_device_eval_batch_size": 0})


def test_held_out_rows_that_are_training_rows_are_said(tiny_model_dir, tiny_data, eval_data):
    """The same file twice: every held-out row is a training row. Rows compared by their tokens, through the index
    mapping eval_split's train_test_split leaves, a length at a time."""
    import datasets

    from ftctl.trainer.data import build_datasets, shared_rows
    from ftctl.trainer.model import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model_dir))
    spec, _ = make_run(tiny_model_dir, tiny_data, "/unused", "lora", eval_data_path=str(tiny_data))
    train, held = build_datasets(spec, tokenizer)
    assert shared_rows(train, held).startswith(f"{len(held)} of the {len(held)} held-out rows are training rows too")
    # the demo's conversations repeat some (its facts, asked again): the held-out rows that are training rows too
    trained = {json.dumps(r["conversations"]) for r in json.loads(tiny_data.read_text())}
    repeated = sum(json.dumps(json.loads(line)["conversations"]) in trained for line in eval_data.open())
    assert 0 < repeated < EVAL_ROWS
    spec, _ = make_run(tiny_model_dir, tiny_data, "/unused", "lora", eval_data_path=str(eval_data))
    assert shared_rows(*build_datasets(spec, tokenizer)).startswith(f"{repeated} of the {EVAL_ROWS} held-out rows")
    rows = datasets.Dataset.from_dict({"input_ids": [[1, 2, 3], [4, 5], [1, 2, 3], [6, 7, 8], [4, 5, 6]]})
    split = rows.train_test_split(test_size=2, seed=0)
    expected = sum(row in split["train"]["input_ids"] for row in split["test"]["input_ids"])
    said = shared_rows(split["train"], split["test"])
    assert (said is None) if expected == 0 else said.startswith(f"{expected} of the 2 held-out rows")
    assert shared_rows(rows.select([0, 1]), rows.select([2, 4])).startswith("1 of the 2 held-out rows")


@pytest.mark.parametrize("store", [False, True], ids=["local", "s3"])
def test_the_lowest_held_out_losss_checkpoint_is_kept_beside_the_newest(
    tiny_model_dir, tiny_data, eval_data, tmp_path, one_thread, store, request, monkeypatch
):
    """save_total_limit=1 with held-out data: the newest checkpoint (what a relaunch resumes from) and the lowest
    held-out loss's (what chat, eval and merge can take) are both there at the end, locally and in the store. A
    high learning rate makes the loss rise after its lowest."""
    from ftctl.checkpoints import list_checkpoints
    from ftctl.trainer.run import train

    out = tmp_path / "out"
    uri = f"{request.getfixturevalue('s3_bucket')}/runs/best" if store else str(out)
    monkeypatch.setenv("FTCTL_LOCAL_DIR", str(out))  # where an object-store output is staged
    spec, plan = make_run(
        tiny_model_dir,
        tiny_data,
        uri,
        "lora",
        max_steps=4,
        save_steps=1,
        save_total_limit=1,
        eval_data_path=str(eval_data),
        learning_rate=0.2,
        keep_staging=True,  # the staging's checkpoints as the run ends (freed by default once the store holds them)
    )
    lines = []
    assert train(spec, plan, echo=lines.append).status == "complete"
    evals = [r for r in map(json.loads, open(out / "metrics.jsonl")) if r.get("event") == "eval"]
    best = min(evals, key=lambda r: r["eval_loss"])
    lowest = best["step"]
    assert lowest < 4, evals  # the case this is about: the lowest is not the newest
    assert sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*")) == [lowest, 4]
    if store:
        assert [c.step for c in list_checkpoints(uri) if c.complete] == [lowest, 4]
    assert any(line.endswith(f"(lowest {best['eval_loss']:.4f} at step {lowest})") for line in lines), lines


def test_the_eval_line_names_datasets_not_trls_aux_loss():
    from types import SimpleNamespace

    from ftctl.trainer.callbacks import MetricsCallback

    state = SimpleNamespace(global_step=4, log_history=[])
    logs = {"eval_loss": 2.0, "eval_chat_loss": 1.5, "eval_code_loss": 2.5, "eval_aux_loss": 0.01}
    assert MetricsCallback._eval_line(logs, state) == "eval at step 4  loss 2.0000 (chat 1.5000, code 2.5000)"
