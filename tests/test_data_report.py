"""`ftctl data check` of a large file with many bad rows says it in a screen: one line per kind of problem (a column
or turn number does not make a kind of its own), with its count and first rows; every row's line on request; and a
launch's preflight says when a file is too large for its row check (explore20, task 108)."""

from __future__ import annotations

import json
import os
import re

from ftctl import preflight
from ftctl.trainer.data import check_data

ROWS = 300


def _good(i: int, answer: str = "Hello.") -> dict:
    return {"conversations": [{"from": "human", "value": f"Hi {i}"}, {"from": "gpt", "value": answer}]}


def big_file(path) -> str:
    """300 ShareGPT rows, 10% bad (each 10th row, a third of them each kind), 38 long ones to truncate: line N is
    row N (counted from 1)."""
    lines = []
    for i in range(ROWS):
        if i % 30 == 9:  # unknown role in turn 1, 2 or 3 (row 39: in two turns)
            turns = [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}, {"from": "human", "value": "q"}]
            turns[(i // 30) % 3]["from"] = "robot"
            if i == 39:
                turns[2]["from"] = "robot"
            lines.append(json.dumps({"conversations": [*turns, {"from": "gpt", "value": "a"}]}))
        elif i % 30 == 19:  # a line cut short: invalid JSON at a column of its own
            row = _good(i, "x" * 9)
            row["conversations"][0]["value"] += " y" * i  # the answer's string starts at another column
            lines.append(json.dumps(row)[:-8])
        elif i % 30 == 29:  # the same words for each: the grouping there was
            lines.append(json.dumps({"conversations": []}))
        elif i % 8 == 0:  # 38 rows over 32 tokens
            lines.append(json.dumps(_good(i, "word " * (40 + i % 5))))
        else:
            lines.append(json.dumps(_good(i)))
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_many_bad_rows_make_a_line_per_kind_of_problem(tmp_path, tiny_tokenizer):
    report = check_data(big_file(tmp_path / "big.jsonl"), tiny_tokenizer, 32)
    assert report.bad_rows == 30 and report.stats.truncated_rows == 38, report.render()
    # the order of first appearance (line 10: robot; line 20: invalid JSON; line 30: empty), counts and first rows
    robot, cut, empty = report.errors
    assert robot.startswith(
        "big.jsonl line 10 (turn 1), line 40 (turn 2, turn 3), line 70 (turn 3) and 7 more (10 rows): "
        "unknown role 'robot' in turn N: use one of "
    ), robot
    assert cut.startswith("big.jsonl line 20 (column ") and " and 7 more (10 rows): invalid JSON: " in cut, cut
    assert "(column" not in cut.split(": ", 1)[1], cut  # the kind without the column; the rows with theirs
    assert empty.startswith("big.jsonl lines 30, 60, 90, 120, 150 and 5 more (10 rows): not a conversation: "), empty
    [truncated] = report.warnings  # not one line a truncated row
    # each of the first rows with its length and what it loses
    assert re.fullmatch(
        r"big\.jsonl line 1 \((\d+) tokens, the last (\d+) dropped, \d+ of \d+ trainable kept\), line 9 \(.*\), "
        r"line 17 \(.*\) and 35 more \(38 rows\): over the max length 32: the tokens past it will be dropped",
        truncated,
    ), truncated
    rendered = report.render()
    assert "Errors (3):" in rendered and "Warnings (1):" in rendered and len(rendered.splitlines()) < 25, rendered
    assert "FAILED: 30 of 300 rows with errors (3 listed)" in rendered
    assert len(report.error_message().splitlines()) == 4  # build_dataset's refusal: the 3 kinds
    # every row's line on request: each bad row's problem (two for row 40) and each truncated row's
    every = report.render(every_row=True)
    assert f"Every row's problem ({30 + 1 + 38}):" in every and every.startswith(rendered.split("Statistics")[0])
    assert "  big.jsonl line 40: unknown role 'robot' in turn 3: use one of" in every
    assert "  big.jsonl line 220: unknown role 'robot' in turn 2: use one of" in every
    assert len(re.findall(r"^  big\.jsonl line \d+: invalid JSON: .* \(column \d+\)$", every, re.M)) == 10
    assert len(re.findall(r"^  big\.jsonl line \d+: \d+ tokens, over the max length 32: the last ", every, re.M)) == 38


def test_one_row_of_a_kind_keeps_its_own_words(tmp_path, tiny_tokenizer):
    """A kind of problem of one row is said as the row's (its turn, its column), as before."""
    path = tmp_path / "few.jsonl"
    robot = {"conversations": [{"from": "human", "value": "q"}, {"from": "robot", "value": "a"}]}
    path.write_text("\n".join([json.dumps(_good(1)), json.dumps(robot), '{"conversations": [']) + "\n")
    report = check_data(str(path), tiny_tokenizer, 32)
    assert report.errors[0].startswith("few.jsonl line 2: unknown role 'robot' in turn 2: use one of ")
    assert report.errors[1].startswith("few.jsonl line 3: invalid JSON: ") and "(column " in report.errors[1]


def test_a_launch_says_the_data_was_too_large_to_check_its_rows(tmp_path, monkeypatch):
    """Above ROW_CHECK_BYTES the preflight reads no row: it says so, and how to check them, in one line (a launch of
    a file of 10% bad rows went out and the trainer refused it after tokenizing); below, the kinds of problems."""
    path = big_file(tmp_path / "big.jsonl")
    [finding] = preflight.check_data(path)
    assert (
        finding.level == preflight.ERROR and "invalid JSON" in finding.what and "unknown role 'robot'" in finding.what
    )
    monkeypatch.setattr(preflight, "ROW_CHECK_BYTES", 2**14)
    [finding] = preflight.check_data(path)
    assert finding.level == preflight.WARNING and "\n" not in str(finding), finding
    size = os.path.getsize(path)
    assert str(finding) == (
        f"warning: --data {path}: its rows were not checked before the launch ({size:,} bytes, over the 16,384 "
        "bytes read here): the "
        f"trainer refuses rows with errors once it has tokenized them all; `ftctl data check {path} --model MODEL` "
        "checks them first."
    )


def test_data_check_all_lists_every_row(tmp_path, tiny_model_dir):
    """`--all`: after the kinds of problem, each bad and truncated row on a line of its own; without it, none."""
    from click.testing import CliRunner

    from ftctl.cli import main

    args = ["data", "check", big_file(tmp_path / "big.jsonl"), "--model", str(tiny_model_dir), "--max-length", "32"]
    grouped, every = (CliRunner().invoke(main, args + extra) for extra in ([], ["--all"]))
    assert grouped.exit_code == every.exit_code == 1, every.output
    assert "Every row's problem" not in grouped.output
    head, listed = every.output.split("Every row's problem (", 1)[1].split("):\n", 1)
    rows = [line for line in listed.splitlines() if line.startswith("  big.jsonl line ")]
    assert int(head.replace(",", "")) == len(rows) >= 30, every.output  # a line a problem: the 30 bad rows' at least
    assert {f"  big.jsonl line {n}" for n in range(10, 301, 10)} <= {line.split(":")[0] for line in rows}
