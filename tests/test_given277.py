"""Task 277: `ftctl eval` names held-out rows the run trained on by their content, not only by the file's name
(a copy of the training file under another name, a held-out file cut from the same rows)."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from ftctl.cli import main


@pytest.fixture
def full_run(tiny_model_dir, tiny_data, tmp_path):
    """A full-model run's output directory (the tiny model's weights and tokenizer) whose spec.json names the data
    it trained on."""
    run = tmp_path / "run"
    shutil.copytree(tiny_model_dir, run)
    (run / "spec.json").write_text(json.dumps({"spec": {"data_path": str(tiny_data), "model_max_length": 256}}))
    return run


def test_eval_says_rows_the_run_trained_on_under_another_name(full_run, tiny_data, tmp_path, one_thread):
    rows = json.loads(tiny_data.read_text())
    copy = tmp_path / "held" / "renamed.json"  # the training file, copied and renamed
    copy.parent.mkdir()
    shutil.copy(tiny_data, copy)
    new = [{"conversations": [{"from": "human", "value": "Name a river."}, {"from": "gpt", "value": "The Danube."}]}]
    some = tmp_path / "some.json"  # two training rows among a new one
    some.write_text(json.dumps(rows[:2] + new))
    fresh = tmp_path / "fresh.json"
    fresh.write_text(json.dumps(new))

    got = CliRunner().invoke(main, ["eval", str(full_run), "--data", str(copy), "--data", str(some)])
    assert got.exit_code == 0, got.output
    assert (
        f"note: {copy}: all {len(rows)} of its rows are rows the run trained on ({tiny_data}), token for token; "
        f"{some}: 2 of 3 of its rows are rows the run trained on ({tiny_data}), token for token, so this loss is "
        "lower than on rows it never saw; score held-out rows (a file it did not train on) to compare runs."
    ) in got.stderr
    assert got.stdout.startswith(f"{copy}:\n")  # the scores still follow

    got = CliRunner().invoke(main, ["eval", str(full_run), "--data", str(fresh)])
    assert got.exit_code == 0 and "note:" not in got.stderr, got.output
    # the training file under its own name is said as before, without tokenizing the training rows again
    got = CliRunner().invoke(main, ["eval", str(full_run), "--data", str(tiny_data)])
    assert f"note: {tiny_data}: the run trained on its rows, so this loss is lower" in got.stderr, got.output
