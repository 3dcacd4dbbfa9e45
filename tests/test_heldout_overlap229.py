"""Held-out rows that are training rows too, said before a run (helper 229): a held-out file cut from the same dump as
the training file gives a held-out loss of rows the model trained on. The trainer said it as it started
(data.shared_rows); now `ftctl data check -c run.yaml` (check_data's ``training``) and the launch preflight (a dry
run, a Slurm launch) say how many and the first, by the hash data check's repeated rows use. The dry run's note also
says the rows that repeat an earlier row, where some do. (eval_split holds out no training row:
tests/test_evaluation.py::test_eval_split_never_holds_out_a_copy_of_a_training_row.)"""

from __future__ import annotations

import json

from ftctl import preflight
from ftctl.spec import build
from ftctl.trainer.data import check_data


def _conv(question: str, answer: str, **extra) -> dict:
    return {**extra, "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]}


def _write(path, rows: list[dict]):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


TRAIN = [_conv(f"What is {i} plus {i}?", f"{2 * i}.") for i in range(8)]
# held out: two of the training rows (one under another id), and two rows never trained
HELD = [_conv("Name a prime.", "Seven."), _conv("What is 3 plus 3?", "6.", id="x"), _conv("Hi", "Hello."), TRAIN[5]]


def test_data_check_says_the_held_out_rows_that_are_training_rows(tiny_tokenizer, tmp_path):
    train = check_data(str(_write(tmp_path / "train.jsonl", TRAIN)), tiny_tokenizer, 128)
    held = check_data(str(_write(tmp_path / "eval.jsonl", HELD)), tiny_tokenizer, 128, training=train, held_out=True)
    assert held.in_training.startswith(
        "2 of 4 held-out rows are training rows too, token for token (the first: eval.jsonl line 2 (id 'x'), as "
        "train.jsonl line 4): their held-out loss is not a held-out loss; "
    ), held.in_training
    assert f"  also in training  {held.in_training}\n" in held.render()
    other = check_data(str(_write(tmp_path / "other.jsonl", HELD[::2])), tiny_tokenizer, 128, training=train)
    assert other.in_training == "" and "also in training" not in other.render()
    assert "also in training" not in train.render()  # training data alone: nothing to compare with


def _spec(tiny_model_dir, tmp_path, data, **over):
    values = {"model_name_or_path": str(tiny_model_dir), "data_path": str(data), "gpus": "cpu"}
    return build({**values, "output_dir": str(tmp_path / "out"), **over})


def test_the_launch_preflight_says_them_and_the_dry_run_says_repeats(tiny_model_dir, tmp_path):
    data = _write(tmp_path / "train.jsonl", TRAIN)
    held = _write(tmp_path / "eval.jsonl", HELD)
    spec = _spec(tiny_model_dir, tmp_path, data, eval_data_path=str(held))
    note, warning = preflight.check_tokenized(spec, dry_run=True)
    assert note.level == preflight.NOTE and note.what.endswith(
        " trained); loss: the assistant turns only (assistant_only_loss)"
    )
    assert warning.level == preflight.WARNING and warning.what.startswith(
        f"eval_data_path: {held} in the run file: 2 of 4 held-out rows are training rows too, token for token (the "
        "first: "
    ), warning.what
    assert preflight.check_tokenized(spec) == [warning]  # a Slurm launch: before its queue wait
    # held-out rows none of which trains: nothing said
    spec = _spec(tiny_model_dir, tmp_path, data, eval_data_path=str(_write(tmp_path / "new.jsonl", HELD[::2])))
    assert [f.level for f in preflight.check_tokenized(spec, dry_run=True)] == [preflight.NOTE]
    # a ShareGPT dump's copies: the dry run's note says them before GPUs are paid for
    dump = _write(tmp_path / "dump.jsonl", [*TRAIN, TRAIN[1], {**TRAIN[1], "id": "c"}, TRAIN[2]])
    (note,) = preflight.check_tokenized(_spec(tiny_model_dir, tmp_path, dump), dry_run=True)
    assert note.what.endswith(
        " trained); loss: the assistant turns only (assistant_only_loss); 3 row(s) repeat an earlier row token for "
        "token (2 distinct): each trains as often as it appears"
    ), note.what


def test_data_check_of_a_run_file_says_them(tiny_model_dir, tmp_path):
    """`ftctl data check -c run.yaml` with eval_data_path: the held-out data's statistics say its training rows."""
    from click.testing import CliRunner

    from ftctl.cli import main

    data, held = _write(tmp_path / "train.jsonl", TRAIN), _write(tmp_path / "eval.jsonl", HELD)
    run = tmp_path / "run.yaml"
    run.write_text(
        json.dumps({"model_name_or_path": str(tiny_model_dir), "data_path": str(data), "eval_data_path": str(held)})
    )
    result = CliRunner().invoke(main, ["data", "check", "-c", str(run)])
    assert result.exit_code == 0, result.output
    assert (
        "\n  also in training  2 of 4 held-out rows are training rows too, token for token (the first: eval.jsonl "
        in result.output
    )
