"""Helper 241's leftovers of session 55: Llama 4's long rows at plan time; the Slurm launch's run-length line; where
merge finds a run's spec.json; data check HELD --held-out -c run.yaml against the run's training rows."""

from __future__ import annotations

import json

from click.testing import CliRunner

from ftctl.cli import main
from ftctl.trainer import attention

# a tiny Llama 4 text model's config.json (transformers fills attention_chunk_size, floor_scale: 8192 each, and
# every 4th layer NoPE with attn_temperature_tuning on)
LLAMA4 = dict(
    model_type="llama4_text", hidden_size=32, intermediate_size=64, intermediate_size_mlp=64, num_hidden_layers=4,
    num_attention_heads=2, num_key_value_heads=1, head_dim=16, num_local_experts=2, num_experts_per_tok=1,
    interleave_moe_layer_step=4, vocab_size=64, max_position_embeddings=131072,
)  # fmt: skip


def _plan(tmp_path, *overrides):
    (tmp_path / "config.json").write_text(json.dumps(LLAMA4))
    args = ["plan", "--model", str(tmp_path), "--method", "lora", "--gpus", "1xH100"]
    return CliRunner().invoke(main, [*args, *(a for o in overrides for a in ("-o", o))])


def test_llama4_rows_past_its_chunk_or_floor_scale_are_settled_at_plan_time(tmp_path):
    """TRL's padding-free collator makes one row of a micro-batch's packed sequences, and Llama 4's NoPE layers scale
    queries by the row's place from token floor_scale (8192) on: the plan packed 16 x 2,048 tokens by default (the
    trainer's varlen attention then stopped at the first step, and under sdpa nothing would have). A default plan
    does not pack such rows (a note says the micro-batch that packs exactly); -o packing=true is refused; past
    attention_chunk_size the default attention is sdpa (the varlen kernels attend to whole documents), a varlen
    asked for is refused."""
    r = _plan(tmp_path)
    assert r.exit_code == 0, r.output
    assert "+ packing" not in r.output
    assert "not packed: a packed row here would hold up to 32,768 tokens (16 x 2,048)" in r.output
    assert "-o per_device_train_batch_size=3 -o packing=true" in r.output
    r = _plan(tmp_path, "per_device_train_batch_size=3", "packing=true")
    assert r.exit_code == 0 and "+ packing" in r.output, r.output
    r = _plan(tmp_path, "per_device_train_batch_size=1", "model_max_length=8192", "packing=true")
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert "NoPE layers scale their queries by a token's place in the row from its token 8,192 on" in r.output
    assert "packed row of 8,192 tokens scales its later documents wrong: -o packing=false" in r.output

    r = _plan(tmp_path, "model_max_length=16384", "per_device_train_batch_size=1")
    assert r.exit_code == 0, r.output
    assert "attention      sdpa\n" in r.output
    assert "Llama 4's chunked layers attend within 8,192-token chunks" in r.output
    r = _plan(tmp_path, "model_max_length=16384", "attn_implementation=varlen")
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert "model_max_length=16384 lets a row hold a 16,384-token document: -o model_max_length=8192" in r.output


def test_long_row_limits_read_whole_and_text_configs():
    assert attention.long_row_limits(LLAMA4) == (8192, 8192)
    whole = {"model_type": "llama4", "text_config": {"attention_chunk_size": 64, "floor_scale": 32}}
    assert attention.long_row_limits(whole) == (64, 32)
    no_nope = {**LLAMA4, "no_rope_layers": [1, 1, 1, 1]}  # every layer RoPE: no temperature tuning
    assert attention.long_row_limits(no_nope) == (8192, 0)
    assert attention.long_row_limits({"model_type": "llama", "attention_chunk_size": 8}) == (0, 0)
    assert attention.packed_row_problem(8192, 8191) is None and attention.packed_row_problem(0, 10**6) is None


def test_the_slurm_launchs_time_line_is_the_one_run_length_estimate(tmp_path, monkeypatch):
    """slurm.backend.plan_lines said max_steps x step_s itself, and nothing for a run of epochs: it asks
    preflight.train_seconds, the estimate the price and the credentials' expiry ask (baf501c)."""
    from ftctl import preflight
    from ftctl.slurm import backend as slurm_backend
    from tests.render_fixtures import prepared

    flags = dict(backend="slurm", method="qlora", gpus="2xA100", model_name_or_path="org/m", model_params="1b")
    data = tmp_path / "data.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n' * 99)
    epochs = "est. for 2 epochs of the data, every sequence full"
    for overrides, words in ((["max_steps=400"], "est. for max_steps=400"), (["num_train_epochs=2"], epochs)):
        rendered = prepared(overrides, **flags, output_dir="/o", data_path=str(data))
        seconds = preflight.train_seconds(rendered.spec, rendered.plan)
        said = [line for line in slurm_backend.plan_lines(rendered) if line.startswith("time: ")]
        assert seconds and len(said) == 1 and said[0].startswith(f"time:        ~{slurm_backend._duration(seconds)} ")
        assert words in said[0], said
        monkeypatch.setattr(slurm_backend, "train_seconds", lambda spec, plan: 7 * 3600.0)
        said = [line for line in slurm_backend.plan_lines(rendered) if line.startswith("time: ")]
        assert said[0].startswith("time:        ~7.0 h est. for "), said
        monkeypatch.undo()


def test_merge_asks_trained_where_a_runs_spec_json_is(tmp_path, monkeypatch):
    """merge.stored_adapter read spec.json beside the adapter or above it itself, where trained.run_record is the one
    place that says where it is (c3214fd): it asks trained.located_run_record, which also says which place held it."""
    from ftctl.trainer import merge, trained

    run = tmp_path / "run"
    (run / "checkpoint-6").mkdir(parents=True)
    (run / "spec.json").write_text(json.dumps({"spec": {"output_dir": "s3://b/run"}, "plan": {}}))
    assert trained.located_run_record(str(run)) == ({"spec": {"output_dir": "s3://b/run"}, "plan": {}}, False)
    assert trained.located_run_record(str(run / "checkpoint-6"))[1] is True
    assert trained.located_run_record(str(tmp_path)) is None
    assert merge.stored_adapter(run) == "s3://b/run"
    assert merge.stored_adapter(run / "checkpoint-6") == "s3://b/run/checkpoint-6"

    asked = []

    def located(where, endpoint_url=None):
        asked.append(where)
        return {"spec": {"output_dir": "gs://c/other"}, "plan": {}}, True

    monkeypatch.setattr(trained, "located_run_record", located)
    assert merge.stored_adapter(run / "checkpoint-6") == "gs://c/other/checkpoint-6"
    assert asked == [str(run / "checkpoint-6")]


def _conv(question: str, answer: str) -> dict:
    return {"conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]}


def test_data_check_held_out_with_a_run_file_says_its_rows_that_the_run_trains(tiny_model_dir, tmp_path):
    """`ftctl data check HELD --held-out -c run.yaml` checked HELD alone: its rows that are the run file's training
    rows too were said only by `-c run.yaml` with eval_data_path, or PATHS --eval-data HELD (a93a978)."""
    train = [_conv(f"What is {i} plus {i}?", f"{2 * i}.") for i in range(4)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    held = tmp_path / "held.jsonl"
    held.write_text("".join(json.dumps(r) + "\n" for r in (_conv("Name a prime.", "Seven."), train[2])))
    run = tmp_path / "run.yaml"
    run.write_text(f"model_name_or_path: {tiny_model_dir}\ndata_path: {tmp_path / 'train.jsonl'}\n")
    got = CliRunner().invoke(main, ["data", "check", str(held), "--held-out", "-c", str(run)])
    assert got.exit_code == 0, got.output
    assert (
        "also in training  1 of 2 held-out rows are training rows too, token for token (the first: held.jsonl line 2, "
        "as train.jsonl line 3)" in got.output
    ), got.output
    alone = CliRunner().invoke(main, ["data", "check", str(held), "--held-out", "--model", str(tiny_model_dir)])
    assert alone.exit_code == 0 and "also in training" not in alone.output, alone.output
