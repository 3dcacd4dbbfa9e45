"""Several datasets mixed by weight: data_weights, or a run file's data_path: {PATH: WEIGHT} (the alignment
handbook's dataset_mixer)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from ftctl.errors import FtctlError
from ftctl.spec import build
from tests.trainer_fixtures import make_run

A_ROWS, B_ROWS = 24, 10


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory):
    """Two files of distinct rows: 24 ShareGPT conversations and 10 Alpaca rows."""
    root = tmp_path_factory.mktemp("mix")
    a = [
        {"conversations": [{"from": "human", "value": f"What is {i} plus {i}?"}, {"from": "gpt", "value": str(2 * i)}]}
        for i in range(A_ROWS)
    ]
    b = [{"instruction": f"Spell {i} backwards.", "input": "", "output": str(i)[::-1] + " ok"} for i in range(B_ROWS)]
    (root / "a.json").write_text(json.dumps(a))
    (root / "b.jsonl").write_text("".join(json.dumps(row) + "\n" for row in b))
    return str(root / "a.json"), str(root / "b.jsonl")


def _rows(dataset) -> list[tuple]:
    return [tuple(ids) for ids in dataset["input_ids"]]


def test_weights_are_read_from_a_mapping_a_list_or_a_flag():
    mixed = build({"data_path": {"a.jsonl": 1, "s3://b/c.jsonl": 0.5}})
    assert (mixed.data_path, mixed.data_weights) == ("a.jsonl,s3://b/c.jsonl", "1,0.5")
    assert mixed.data_mix == [("a.jsonl", 1.0), ("s3://b/c.jsonl", 0.5)]
    assert build({"dataset_mixer": {"a.jsonl": 1, "s3://b/c.jsonl": 0.5}}).data_mix == mixed.data_mix
    assert build({"data_path": ["a.jsonl", "s3://b/c.jsonl"], "data_weights": [1, 0.5]}).data_mix == mixed.data_mix
    flags = build(None, {"data_path": "a.jsonl,s3://b/c.jsonl"}, ["data_weights=1, 0.5"])
    assert flags.data_mix == mixed.data_mix
    assert flags.digest() != replace(flags, data_weights="1,0.25").digest()  # what the run learns from
    assert build({"data_path": {"a.jsonl": 1}}, overrides=["data_weights=none"]).data_mix is None
    assert build({"data_path": "a.jsonl"}).data_mix is None


@pytest.mark.parametrize(
    "weights, said",
    [
        ("2", "1 weight(s) for 2 dataset(s) in data_path"),
        ("1,x", "'x' is not a number"),
        ("0,1", "0 is not a finite number above 0 (to leave a dataset out, drop it from data_path)"),
        ("1,inf", "inf is not a finite number above 0"),
    ],
)
def test_weights_that_do_not_fit_the_datasets_are_refused(weights, said):
    with pytest.raises(FtctlError) as e:
        build({"data_path": "a.jsonl,b.jsonl", "data_weights": weights})
    assert said in str(e.value) and "one number above 0 per dataset, in data_path's order" in str(e.value)


def test_each_datasets_rows_are_taken_weight_times(tiny_model_dir, two_datasets):
    from ftctl.trainer.data import build_dataset, build_datasets
    from ftctl.trainer.model import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model_dir))
    a, b = (set(_rows(build_dataset(path, tokenizer, 128))) for path in two_datasets)
    assert len(a) == A_ROWS and len(b) == B_ROWS and not a & b
    spec = build({"data_path": dict(zip(two_datasets, (0.5, 2.3))), "model_max_length": 128, "seed": 3})
    said = []
    train, held = build_datasets(spec, tokenizer, said.append)
    assert held is None and train.column_names == ["input_ids", "labels"]
    counts = Counter(_rows(train))
    assert sum(counts[r] for r in a) == 12 and set(counts) - b <= a  # half of a, each once
    assert sorted(counts[r] for r in b) == [2] * 7 + [3] * 3  # every row of b twice, 3 of them (0.3) again
    assert said == [
        f"training data mixed by data_weights: {two_datasets[0]} 24 x 0.5 = 12; {two_datasets[1]} 10 x 2.3 = 23; "
        "35 rows an epoch"
    ]
    # every rank and every resume: the same rows; another seed draws others
    assert _rows(build_datasets(spec, tokenizer)[0]) == _rows(train)
    assert Counter(_rows(build_datasets(replace(spec, seed=4), tokenizer)[0])) != counts


def test_held_out_rows_are_drawn_before_the_mix(tiny_model_dir, two_datasets):
    """eval_split holds out the rows it holds out without weights, and a row the mix repeats is never one of them."""
    from ftctl.trainer.data import all_held_out, build_dataset, build_datasets
    from ftctl.trainer.model import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model_dir))
    b = set(_rows(build_dataset(two_datasets[1], tokenizer, 128)))
    plain = build({"data_path": list(two_datasets), "eval_split": 0.2, "model_max_length": 128, "seed": 5})
    train_plain, held_plain = build_datasets(plain, tokenizer)
    train, held = build_datasets(replace(plain, data_weights="1,3"), tokenizer)
    held, held_plain = all_held_out(held), all_held_out(held_plain)  # each dataset's held-out rows
    assert _rows(held) == _rows(held_plain) and held.column_names == ["input_ids", "labels"]
    assert len(held) == 7 and not set(_rows(held)) & set(_rows(train))
    assert Counter(_rows(train)) == {row: 3 if row in b else 1 for row in _rows(train_plain)}


def test_a_tiny_weight_that_takes_no_row_is_said(tiny_model_dir, two_datasets):
    from ftctl.trainer.data import build_datasets
    from ftctl.trainer.model import load_tokenizer

    spec = build({"data_path": list(two_datasets), "data_weights": "1,0.01", "model_max_length": 128})
    said = []
    train, _ = build_datasets(spec, load_tokenizer(str(tiny_model_dir)), said.append)
    assert len(train) == A_ROWS and f"{two_datasets[1]} 10 x 0.01 = 0 (none: raise its weight)" in said[0]


def test_the_plan_and_the_cost_estimate_take_the_weights(two_datasets):
    from ftctl.plan import make_plan
    from ftctl.sky.cost import train_tokens

    spec = build({"data_path": dict(zip(two_datasets, (1, 2.5))), "gpus": "cpu", "seed": 9})
    assert f"data mix       {two_datasets[0]} x1, {two_datasets[1]} x2.5 (each one's rows that many times" in (
        make_plan(spec).table()
    )
    once = train_tokens(replace(spec, data_weights=None), make_plan(spec))
    sizes = [len(open(p, "rb").read()) for p in two_datasets]
    assert train_tokens(spec, make_plan(spec)) == pytest.approx(once * (sizes[0] + 2.5 * sizes[1]) / sum(sizes))


def test_a_mixed_run_trains_and_records_its_weights(tiny_model_dir, two_datasets, tmp_path, one_thread):
    from ftctl.trainer.run import train

    spec, plan = make_run(
        tiny_model_dir, "unused", tmp_path / "out", "lora", data_path=dict(zip(two_datasets, (1, 2))), max_steps=2
    )
    lines = []
    result = train(spec, plan, echo=lines.append)
    assert result.status == "complete"
    assert f"{two_datasets[1]} 10 x 2 = 20; 44 rows an epoch" in "\n".join(lines)
    recorded = json.loads(open(f"{result.output_dir}/spec.json").read())
    assert recorded["spec"]["data_weights"] == "1,2" and recorded["plan"]["data_mix"].startswith(two_datasets[0])


def test_data_check_counts_each_dataset(tiny_model_dir, two_datasets):
    """What to weigh by: the rows and tokens of each dataset, in data_path's order."""
    from ftctl.trainer.data import check_data

    text = check_data(",".join(two_datasets), str(tiny_model_dir), 128).render()
    shown = text.split("per dataset (data_path's order):\n")[1].splitlines()[:2]
    a, b = (check_data(path, str(tiny_model_dir), 128).stats for path in two_datasets)
    assert [line.split() for line in shown] == [
        [two_datasets[0], str(A_ROWS), "rows,", f"{a.tokens:,}", "tokens"],
        [two_datasets[1], str(B_ROWS), "rows,", f"{b.tokens:,}", "tokens"],
    ]
    assert "per dataset" not in check_data(two_datasets[0], str(tiny_model_dir), 128).render()


def test_data_check_reads_a_run_files_data_as_the_run_does(tiny_model_dir, two_datasets, tmp_path):
    """`ftctl data check -c run.yaml`: the run file's datasets, model, max length and weights (what each gives an
    epoch, as mix takes it); flags win over it."""
    import yaml
    from click.testing import CliRunner

    from ftctl.cli import main
    from ftctl.trainer.data import mixed_rows

    run = tmp_path / "run.yaml"
    run.write_text(yaml.safe_dump({"data_path": dict(zip(two_datasets, (0.5, 2.3))), "model": str(tiny_model_dir)}))
    got = CliRunner().invoke(main, ["data", "check", "-c", str(run), "--max-length", "128"])
    assert got.exit_code == 0, got.output
    lines = got.stdout.split("per dataset (data_path's order):\n")[1].splitlines()[:2]
    assert lines[0].endswith(f"; x0.5: {mixed_rows(A_ROWS, 0.5)} rows an epoch") and mixed_rows(A_ROWS, 0.5) == 12
    assert lines[1].endswith("; x2.3: 23 rows an epoch")  # as mix took them (test_each_datasets_rows_...)
    assert "max length 128 tokens" in got.stdout
    run.write_text(run.read_text() + f"eval_data_path: {two_datasets[1]}\n")
    got = CliRunner().invoke(main, ["data", "check", "-c", str(run), "--max-length", "128"])
    held = got.stdout.split("\nHeld-out data (eval_data_path):\n")[1]
    assert got.exit_code == 0 and held.startswith(f"Data {two_datasets[1]}: 1 file(s), max length 128 tokens")
    got = CliRunner().invoke(main, ["data", "check", two_datasets[0], "-c", str(run)])  # PATHS win: no weights
    assert got.exit_code == 0 and "rows an epoch" not in got.stdout and "Held-out" not in got.stdout
    got = CliRunner().invoke(main, ["data", "check"])
    assert got.exit_code != 0 and "Give the data to check (PATHS), or a run file with -c run.yaml." in got.output


def test_data_check_of_a_run_file_says_what_its_split_and_weights_leave(tiny_model_dir, two_datasets, tmp_path):
    """`ftctl data check -c` said OK to an eval_split that leaves no training row and to a weight that gives its
    dataset none an epoch; the trainer stopped on the one, and left the other dataset out."""
    import yaml
    from click.testing import CliRunner

    from ftctl.cli import main

    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps(json.loads(Path(two_datasets[0]).read_text())[0]) + "\n")  # its first row alone
    run = tmp_path / "run.yaml"
    run.write_text(yaml.safe_dump({"data_path": str(one), "eval_split": 0.05, "model": str(tiny_model_dir)}))
    got = CliRunner().invoke(main, ["data", "check", "-c", str(run), "--max-length", "128"])
    assert got.exit_code == 1, got.stdout
    assert f"eval_split=0.05 of {one}'s 1 row leaves none to train on" in got.stdout
    tiny = 0.5 / B_ROWS  # rounds to no row of the second dataset
    run.write_text(yaml.safe_dump({"data_path": dict(zip(two_datasets, (1, tiny))), "model": str(tiny_model_dir)}))
    got = CliRunner().invoke(main, ["data", "check", "-c", str(run), "--max-length", "128"])
    assert got.exit_code == 1 and f"data_weights: {two_datasets[1]}'s {B_ROWS} rows x {tiny:g} give none" in got.stdout


def test_a_dataset_given_twice_is_said(two_datasets, tiny_model_dir):
    """`--data a --data a` trained a's rows twice an epoch without a word."""
    from ftctl.trainer.data import check_data

    report = check_data(f"{two_datasets[0]},{two_datasets[0]}", str(tiny_model_dir), 128)
    assert report.ok and report.warnings == [
        f"{two_datasets[0]} given more than once: its rows train as many times an epoch; give it once (data_weights "
        "repeats a dataset on purpose: -o data_weights=...)"
    ]
    assert check_data(",".join(two_datasets), str(tiny_model_dir), 128).warnings == []
