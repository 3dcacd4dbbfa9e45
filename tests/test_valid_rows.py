"""`ftctl data check FILE --write-valid OUT`: a dataset's rows without errors, written to a new file as they were read
(explore16: a real ShareGPT dump's empty conversations and question-only rows refused the launch, with no way past)."""

from __future__ import annotations

import gzip
import json

import pytest
from click.testing import CliRunner

from ftctl import preflight
from ftctl.cli import main
from ftctl.errors import FtctlError
from ftctl.spec import build
from ftctl.trainer.data import build_dataset, check_data, prepare_data

TURNS = [{"from": "human", "value": "What is 2+2?"}, {"from": "gpt", "value": "4, \u00e9videmment."}]
SHAREGPT = [
    {"id": "a", "conversations": TURNS},
    {"id": "empty", "conversations": []},
    {"id": "b", "conversations": TURNS[:1] + [{"from": "gpt", "value": "four"}], "extra": {"k": [1, 2.50]}},
    {"id": "question-only", "conversations": TURNS[:1]},
    {"id": "c", "conversations": TURNS},
]
KEPT = [SHAREGPT[0], SHAREGPT[2], SHAREGPT[4]]


def check(*args):
    return CliRunner().invoke(main, ["data", "check", *map(str, args)])


def test_a_sharegpt_dumps_empty_and_question_only_rows_are_left_out_and_the_rest_launches(tmp_path, tiny_model_dir):
    data = tmp_path / "sharegpt.json"
    data.write_text(json.dumps(SHAREGPT, indent=2, ensure_ascii=False))  # pretty-printed, as FastChat's dumps are
    spec = build({"model_name_or_path": str(tiny_model_dir), "data_path": str(data), "model_max_length": 64})
    (refused,) = preflight.check_data(str(data))  # the launch's refusals name the way past
    assert refused.fix.endswith(
        f"; `ftctl data check {data} --model MODEL --write-valid OUT` writes the others to OUT."
    )
    (refused,) = preflight.check_tokenized(spec)  # a Slurm launch's, through the tokenizer (data.error_message)
    assert (
        f"`ftctl data check {data} --model {tiny_model_dir} --max-length 64 --write-valid OUT` writes the others"
        in refused.what
    )

    out = tmp_path / "clean" / "sharegpt.json"
    got = check(data, "--model", tiny_model_dir, "--max-length", 64, "--write-valid", out)
    assert got.exit_code == 0, got.output
    summary = got.output.split(
        f"Wrote 3 of 5 rows of {data} to {out}, as they were read; left out 2 rows with errors:\n"
    )
    assert summary[1].splitlines() == [
        "  sharegpt.json row 2 (id 'empty'): not a conversation: 'conversations' is empty, expected a list of turns",
        "  sharegpt.json row 4 (id 'question-only'): no assistant turn: nothing to train on; every label would be "
        "masked",
        f"Launch with it: ftctl launch --model {tiny_model_dir} -o model_max_length=64 --data {out} (and your other "
        "flags)",
    ]
    assert got.output.count("row 2 (id 'empty')") == 1 and "FAILED" not in got.output  # said once, in the summary
    assert "  rows              3  (sharegpt 3)\n" in got.output  # the check of the rows written
    assert json.loads(out.read_text()) == KEPT  # the objects read, extra fields and all, in order
    pretty = json.dumps(SHAREGPT, indent=2, ensure_ascii=False)
    assert out.read_text() == pretty.replace(_element(SHAREGPT[1]), "").replace(_element(SHAREGPT[3]), "")
    assert [p.name for p in out.parent.iterdir()] == ["sharegpt.json"]  # no temp file left
    over = build({**spec.to_dict(), "data_path": str(out)})
    assert preflight.check_data(str(out)) == [] and preflight.check_tokenized(over) == []
    assert len(build_dataset(str(out), str(tiny_model_dir), 64)) == 3

    again = check(data, "--model", tiny_model_dir, "--write-valid", out)  # OUT exists: refused, left as it was
    assert again.exit_code != 0 and "Traceback" not in again.output
    assert f"--write-valid {out}: the file exists; give a new name" in again.output
    assert json.loads(out.read_text()) == KEPT


def _element(row) -> str:
    """A row's text inside a JSON list written with indent=2, with the comma and line break before it."""
    return ",\n  " + json.dumps(row, indent=2, ensure_ascii=False).replace("\n", "\n  ")


@pytest.mark.parametrize("name", ["d.jsonl", "d.jsonl.gz", "d.parquet", "d.arrow"])
def test_json_lines_keep_their_lines_byte_for_byte_and_other_formats_their_records(tmp_path, tiny_tokenizer, name):
    from ftctl.trainer.valid_rows import write_valid

    lines = [json.dumps(r, separators=(",", ":")) if i % 2 else json.dumps(r) for i, r in enumerate(SHAREGPT)]
    text = "\n".join(lines[:3]) + "\n\n" + "\n".join(lines[3:]) + "\n"  # a blank line: line numbers count it
    data = tmp_path / name
    if name.endswith((".parquet", ".arrow")):  # a datasets save_to_disk's .arrow file is an Arrow stream
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist([{"conversations": r["conversations"], "id": r["id"]} for r in SHAREGPT])
        if name.endswith(".parquet"):
            pq.write_table(table, data)
        else:
            with pa.ipc.new_stream(str(data), table.schema) as writer:
                writer.write_table(table)
    else:
        data.write_bytes(gzip.compress(text.encode()) if name.endswith(".gz") else text.encode())
    report = check_data(str(data), tiny_tokenizer, 64)
    assert report.bad_rows == 2
    out = tmp_path / f"out-{name}"
    assert write_valid(report, str(data), str(out)) == (3, 2)
    if name.endswith((".parquet", ".arrow")):
        got = pq.read_table(out) if name.endswith(".parquet") else pa.ipc.open_stream(out.read_bytes()).read_all()
        assert got.to_pylist() == table.take([0, 2, 4]).to_pylist()
    else:
        raw = gzip.decompress(out.read_bytes()) if name.endswith(".gz") else out.read_bytes()
        assert raw.decode() == "".join(lines[i] + "\n" for i in (0, 2, 4))
    assert check_data(str(out), tiny_tokenizer, 64).ok


def test_what_write_valid_cannot_take_is_refused_before_anything_is_written(tmp_path, tiny_model_dir):
    from ftctl.trainer.valid_rows import write_valid

    data = tmp_path / "d.json"
    data.write_text(json.dumps(SHAREGPT))
    (tmp_path / "e.json").write_text(json.dumps(KEPT))
    for args, said in [
        ([f"{data},{tmp_path / 'e.json'}"], "--write-valid writes the rows of one data file;"),
        ([tmp_path], f"{tmp_path} reads 2 (d.json, ...): give one file"),
        ([data, "--write-valid", "s3://bucket/out.json"], "give a local path, then copy the file"),
        ([data, "--write-valid", tmp_path / "out.jsonl"], "name it as"),
    ]:
        args = [*args, "--model", tiny_model_dir] + (["--write-valid", tmp_path / "o.json"] if len(args) == 1 else [])
        got = check(*args)
        assert got.exit_code != 0 and said in got.output and "Traceback" not in got.output, got.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.json", "e.json"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([SHAREGPT[1], SHAREGPT[3]]))
    got = check(bad, "--model", tiny_model_dir, "--write-valid", tmp_path / "none.json")  # the check, then why not
    assert got.exit_code != 0 and "Errors (2):" in got.output and "Traceback" not in got.output
    assert got.output.endswith(f"error: Every row of {bad} has errors (above): nothing to write; fix them.\n")
    with pytest.raises(FtctlError, match="Every row of .* has errors"):
        write_valid(check_data(str(bad), str(tiny_model_dir), 64), str(bad), str(tmp_path / "none.json"))
    csv = tmp_path / "qa.jsonl"  # read as one problem, not row by row: no line of it is written as a row
    csv.write_text("question,answer\nq,a\n")
    with pytest.raises(FtctlError, match="cannot be read one by one"):
        write_valid(check_data(str(csv), str(tiny_model_dir), 64), str(csv), str(tmp_path / "none.jsonl"))
    assert not (tmp_path / "none.json").exists() and not (tmp_path / "none.jsonl").exists()


def test_a_long_row_left_out_with_a_warning_stays_left_out_in_the_written_file(tmp_path, tiny_tokenizer):
    """A row whose answer lies past max_length is left out with a warning where such rows are at most 1% of the
    rows: 1% of those without other errors, so that the file --write-valid writes of them checks the same."""
    from ftctl.trainer.valid_rows import write_valid

    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    long = {"messages": [{"role": "user", "content": "word " * 60}, {"role": "assistant", "content": "ok"}]}
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in [good] * 98 + [long] + [{"messages": []}] * 10))
    report, _ = prepare_data(str(data), tiny_tokenizer, 32)
    assert write_valid(report, str(data), str(tmp_path / "out.jsonl"))[1] == len(report.bad_at)
    assert check_data(str(tmp_path / "out.jsonl"), tiny_tokenizer, 32).ok
