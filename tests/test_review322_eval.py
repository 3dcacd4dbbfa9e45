"""Review 322 #2 (notes: /work/notes/review-62.md): `ftctl eval runs/a runs/a/` scored one run twice, two rows."""

from __future__ import annotations

import json

from click.testing import CliRunner

from ftctl.cli import main


def test_one_run_named_twice_is_scored_once(tiny_model_dir, tmp_path):
    held = tmp_path / "held.jsonl"
    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello there friend"}]}
    held.write_text(json.dumps(row) + "\n")
    result = CliRunner().invoke(main, ["eval", str(tiny_model_dir), f"{tiny_model_dir}/", "--data", str(held)])
    assert result.exit_code == 0, result.output
    scored = [line for line in result.output.splitlines() if "perplexity" in line]
    assert len(scored) == 1, result.output
    assert result.output.count("loading the model") == 1, result.output


def test_a_missing_run_named_twice_is_said_once(tmp_path):
    held = tmp_path / "held.jsonl"
    empty = tmp_path / "empty"
    empty.mkdir()
    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    held.write_text(json.dumps(row) + "\n")
    result = CliRunner().invoke(main, ["eval", str(empty), f"{empty}/", "--data", str(held)])
    assert result.exit_code != 0
    assert "problems" not in result.output and result.output.count("No model") == 1, result.output
