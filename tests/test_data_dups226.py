"""`ftctl data check` of repeated rows and of what --show prints (helper 226, explore41's open C and D): a ShareGPT dump
that holds a conversation many times trains each copy, now counted in the statistics, with the awk line that keeps
one of each where its lines are written alike; --show marks where max_length cut a row, and prints a row's control
characters (NUL, carriage return, escape) as escapes, not raw to the terminal."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from click.testing import CliRunner

from ftctl.cli import main
from ftctl.trainer.data import build_dataset, check_data


def _conv(question: str, answer: str, **extra) -> dict:
    return {**extra, "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]}


def _write(path, rows: list[dict]):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_rows_that_train_an_earlier_rows_tokens_are_counted_where_they_are(tiny_tokenizer, tmp_path):
    """What trains decides, not the row's JSON: a dump's copies that differ in their 'id' repeat, and so does the
    same conversation as OpenAI messages; the same words with a turn of weight 0 (other labels) do not."""
    sky, prime = _conv("Which colour is the sky?", "Blue.", id="a"), _conv("Name a prime.", "Seven.")
    as_messages = {
        "messages": [{"role": "user", "content": "Name a prime."}, {"role": "assistant", "content": "Seven."}]
    }
    two_turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}] * 2
    weighted = [*two_turns[:1], {**two_turns[1], "weight": 0}, *two_turns[2:]]
    rows = [sky, prime, {**sky, "id": "b"}, prime, as_messages, {"messages": two_turns}, {"messages": weighted}]
    report = check_data(str(_write(tmp_path / "d.jsonl", rows)), tiny_tokenizer, 128)
    s = report.stats
    assert (s.rows, s.repeats, s.repeated) == (7, 3, 2)
    assert s.first_repeat == "d.jsonl line 3 (id 'b'), as d.jsonl line 1 (id 'a')"
    said = report.render()
    assert (
        "  repeated rows     3 row(s) repeat an earlier row token for token (2 distinct; the first: d.jsonl line 3 "
        "(id 'b'), as d.jsonl line 1 (id 'a')): each trains as often as it appears" in said
    )
    # one of the three is a line written alike (line 4 = line 2): awk drops that one, not the others
    assert (
        f"`awk '!seen[$0]++' {tmp_path}/d.jsonl > OUT` keeps the first of each line written alike, dropping 1; the "
        in said
    )
    assert "the other repeats differ in what does not train (an id, say)" in said
    assert len(build_dataset(str(tmp_path / "d.jsonl"), tiny_tokenizer, 128)) == 7  # they still train: not dropped


def test_no_repeats_say_none_and_no_command(tiny_tokenizer, tmp_path):
    rows = [_conv("Which colour is the sky?", "Blue."), _conv("Name a prime.", "Seven.")]
    report = check_data(str(_write(tmp_path / "d.jsonl", rows)), tiny_tokenizer, 128)
    assert (report.stats.repeats, report.stats.repeated, report.repeats_fix) == (0, 0, "")
    assert "  repeated rows     0\n" in report.render()


@pytest.mark.skipif(not shutil.which("awk"), reason="no awk here")
def test_the_awk_line_keeps_one_of_each_where_the_repeats_are_lines_written_alike(tiny_tokenizer, tmp_path):
    """The command the report gives, run as given (OUT named), leaves a file with no repeats and every distinct row."""
    rows = [_conv(f"Question {n % 3}?", f"Answer {n % 3}.") for n in range(9)]
    data = _write(tmp_path / "d.jsonl", rows)
    report = check_data(str(data), tiny_tokenizer, 128)
    assert (report.stats.repeats, report.stats.repeated) == (6, 3)
    said = report.render().splitlines()
    fix = said[said.index(next(line for line in said if line.startswith("  repeated rows"))) + 1]
    assert (
        fix
        == f"    to train each once: `awk '!seen[$0]++' {data} > OUT` keeps the first of each line written alike, dropping 6"
    )
    command = fix.split("`")[1].replace("OUT", str(tmp_path / "out.jsonl"))
    subprocess.run(command, shell=True, check=True)
    again = check_data(str(tmp_path / "out.jsonl"), tiny_tokenizer, 128)
    assert (again.stats.rows, again.stats.repeats, again.render().count("seen[$0]")) == (3, 0, 0)


def test_show_marks_where_max_length_cut_a_row(tiny_model_dir, tiny_tokenizer, tmp_path):
    """A cut row's answer just stopped; now a line says where and what went, as the truncated rows' warning does."""
    rows = [_conv("Hi", "word " * 60), _conv("Name a prime.", "Seven.")]
    data = _write(tmp_path / "d.jsonl", rows)
    got = CliRunner().invoke(
        main, ["data", "check", str(data), "--model", str(tiny_model_dir), "--max-length", "40", "--show", "2"]
    )
    assert got.exit_code == 0, got.output
    head = got.stdout.partition("\n\nData ")[0].splitlines()
    dataset = build_dataset(str(data), tiny_tokenizer, 40)
    ids, labels = dataset[0]["input_ids"], dataset[0]["labels"]
    full = check_data(str(data), tiny_tokenizer, 40).stats.max_tokens  # row 1's length before the cut
    start = head.index(f"d.jsonl line 1: 40 tokens, {sum(label != -100 for label in labels)} trained")
    whole = tiny_tokenizer.decode(ids)
    text = "\n".join(head[start + 1 : start + 2 + whole.count("\n")])
    assert text.replace("[[", "").replace("]]", "") == whole and not whole.endswith("\n")  # cut mid-answer
    trained = sum(label != -100 for label in labels)
    assert head[start + 2 + whole.count("\n")] == (
        f"[... cut at max_length 40: the last {full - 40} tokens dropped ({trained} of {trained + full - 41} trainable "
        "tokens kept)]"  # of the tokens cut, all but the template's last newline train
    )
    assert got.stdout.count("[... cut at") == 1  # the row that fits is not marked


def test_show_escapes_control_characters_and_training_keeps_them(tiny_model_dir, tiny_tokenizer, tmp_path):
    """A NUL, a carriage return and an escape sequence in a row were printed raw (the terminal acted on them); --show
    now writes them as escapes. The trained tokens are the row's own."""
    answer = "Here\x00 it is\r over \x1b[31mred\x7f\x85."
    data = _write(tmp_path / "d.jsonl", [_conv("Tab\tand newline\nstay", answer)])
    got = CliRunner().invoke(main, ["data", "check", str(data), "--model", str(tiny_model_dir), "--show", "1"])
    assert got.exit_code == 0, got.output
    assert "[[Here\\x00 it is\\r over \\x1b[31mred\\x7f\\x85.<|im_end|>]]" in got.stdout
    assert "Tab\tand newline\nstay" in got.stdout  # tab and newline print as they are
    assert not any(c in got.stdout for c in "\x00\r\x1b\x7f\x85")
    assert answer in tiny_tokenizer.decode(build_dataset(str(data), tiny_tokenizer, 128)[0]["input_ids"])
