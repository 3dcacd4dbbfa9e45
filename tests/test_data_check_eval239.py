"""`ftctl data check PATHS --eval-data HELD`: the held-out data checked beside the training data, as a launch with
--data PATHS --eval-data HELD reads them, and its rows that are training rows too said ("also in training"). Before,
only `ftctl data check -c run.yaml` compared them (its data_path and eval_data_path); PATHS could not be."""

from __future__ import annotations

import json

from click.testing import CliRunner

from ftctl.cli import main


def _conv(question: str, answer: str) -> dict:
    return {"conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]}


def _write(path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


TRAIN = [_conv(f"What is {i} plus {i}?", f"{2 * i}.") for i in range(4)]


def test_data_check_of_paths_with_eval_data_says_the_held_out_rows_that_are_training_rows(tiny_model_dir, tmp_path):
    train = _write(tmp_path / "train.jsonl", TRAIN)
    held = _write(tmp_path / "held.jsonl", [_conv("Name a prime.", "Seven."), TRAIN[2]])
    got = CliRunner().invoke(main, ["data", "check", train, "--eval-data", held, "--model", str(tiny_model_dir)])
    assert got.exit_code == 0, got.output
    assert "\nHeld-out data (--eval-data):\n" in got.output
    assert (
        "\n  also in training  1 of 2 held-out rows are training rows too, token for token (the first: held.jsonl "
        "line 2, as train.jsonl line 3)" in got.output
    ), got.output
    # held-out rows that none trains: checked, nothing said of training
    new = _write(tmp_path / "new.jsonl", [_conv("Name a prime.", "Seven.")])
    got = CliRunner().invoke(main, ["data", "check", train, "--eval-data", new, "--model", str(tiny_model_dir)])
    assert got.exit_code == 0 and "Held-out data (--eval-data)" in got.output and "also in training" not in got.output


def test_eval_data_beside_held_out_or_a_missing_one_is_one_line(tiny_model_dir, tmp_path):
    train = _write(tmp_path / "train.jsonl", TRAIN)
    model = ["--model", str(tiny_model_dir)]
    got = CliRunner().invoke(main, ["data", "check", train, "--held-out", "--eval-data", train, *model])
    assert got.exit_code == 2 and got.output.startswith("error: --held-out reads PATHS as held-out data; --eval-data")
    got = CliRunner().invoke(main, ["data", "check", train, "--eval-data", str(tmp_path / "nope.jsonl"), *model])
    assert got.exit_code == 2 and "--eval-data" in got.output and "nope.jsonl" in got.output, got.output
    assert "Traceback" not in got.output
