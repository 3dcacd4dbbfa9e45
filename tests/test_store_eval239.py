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


def _conv(*turns, weight_first: int | None = None) -> dict:
    """A ShareGPT row of (question, answer) pairs; ``weight_first``: the first answer's weight (0: not trained)."""
    said = []
    for i, (question, answer) in enumerate(turns):
        said += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
        if i == 0 and weight_first is not None:
            said[-1]["weight"] = weight_first
    return {"conversations": said}


def _write(path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_a_held_out_row_is_a_training_row_by_its_tokens_in_data_check_as_in_the_trainer(tiny_tokenizer, tmp_path):
    """One conversation with its first answer weighted 0 in the training file and trained whole in the held-out file:
    the same tokens, other loss masks. The trainer (shared_rows: by the ids) said the held-out row is a training row;
    data check and the launch preflight (held_out_overlap: by the ids and labels, as repeats) said nothing. Now both
    say it (data.row_identity): the model read every one of those tokens. Repeated rows stay those that train the same
    (tests/test_data_dups226.py): the two in one file are no repeat, each trains its own tokens."""
    from ftctl.trainer.data import build_dataset, check_data, shared_rows

    pairs = [("What is the code?", "AMBER-42."), ("And backwards?", "24-REBMA.")]
    other = _conv(("Name a river.", "The Danube."))
    train = _write(tmp_path / "train.jsonl", [_conv(*pairs, weight_first=0), other])
    held = _write(tmp_path / "held.jsonl", [_conv(*pairs)])

    trained = check_data(train, tiny_tokenizer, 128)
    checked = check_data(held, tiny_tokenizer, 128, training=trained, held_out=True)
    assert checked.in_training.startswith("1 of 1 held-out rows are training rows too, token for token (the first: "), (
        checked.in_training
    )
    built = build_dataset(train, tiny_tokenizer, 128), build_dataset(held, tiny_tokenizer, 128, held_out=True)
    assert built[0]["labels"][0] != built[1]["labels"][0]  # the masks differ: the first answer trains in one only
    assert shared_rows(*built).startswith("1 of the 1 held-out rows are training rows too")

    both = _write(tmp_path / "both.jsonl", [_conv(*pairs, weight_first=0), _conv(*pairs), _conv(*pairs)])
    assert check_data(both, tiny_tokenizer, 128).stats.repeats == 1  # the third repeats the second, not the first
