"""`ftctl eval` of a run whose output is an object store reads its held-out rows as the run read them: its spec.json
is read in the store (trained.run_record), so its data_columns (a dataset's own names of its fields) are taken. A real
CPU lora run of the tiny model trained into a real S3 server on loopback (moto)."""

from __future__ import annotations

import json

from click.testing import CliRunner

from tests.trainer_fixtures import make_run

TURNS = [
    [{"role": "user", "content": "What is the code?"}, {"role": "assistant", "content": "AMBER-42."}],
    [{"role": "user", "content": "Name a river."}, {"role": "assistant", "content": "The Danube."}],
]


def test_eval_of_a_run_in_object_storage_reads_its_held_out_file_by_the_runs_data_columns(
    tiny_model_dir, s3_bucket, tmp_path, one_thread
):
    from ftctl.cli import main
    from ftctl.trainer.run import train

    # the run's data names its turns `dialog`, its held-out file too: data_columns says so for both
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"dialog": t}) + "\n" for t in TURNS * 4))
    (tmp_path / "held.jsonl").write_text(json.dumps({"dialog": TURNS[0]}) + "\n")
    (tmp_path / "same.jsonl").write_text(json.dumps({"messages": TURNS[0]}) + "\n")  # the held-out rows, ftctl's names
    columns = json.dumps({"messages": "dialog"})
    run = f"{s3_bucket}/runs/dialog"
    spec, plan = make_run(
        tiny_model_dir, tmp_path / "train.jsonl", run, "lora", max_steps=1, save_steps=1, lora_r=4,
        eval_data_path=str(tmp_path / "held.jsonl"), eval_steps=10,
        data_columns={str(tmp_path / "train.jsonl"): columns, str(tmp_path / "held.jsonl"): columns},
    )  # fmt: skip
    train(spec, plan, echo=lambda line: None)

    scores = [
        CliRunner().invoke(main, ["eval", run, "--data", str(tmp_path / n)]) for n in ("held.jsonl", "same.jsonl")
    ]
    assert [got.exit_code for got in scores] == [0, 0], scores[0].output  # was 2: "not a conversation ... dialog"
    assert scores[0].stdout == scores[1].stdout and "(1 row, " in scores[0].stdout

    # one of its checkpoints in the store reads the run's spec.json above it, as a local checkpoint does
    got = CliRunner().invoke(main, ["eval", f"{run}/checkpoint-1", "--data", str(tmp_path / "held.jsonl")])
    assert got.exit_code == 0, got.output
