"""Helper task 315: `ftctl eval A B --data held.jsonl` scores several runs on the same rows, a row a run (explore64
finding 7: a researcher ran eval once a run and read two lines). Real CPU runs of the tiny model."""

from __future__ import annotations

import gc
import json
import re
import shutil
import weakref
from pathlib import Path

import pytest
from click.testing import CliRunner

from ftctl.cli import main

LINE = re.compile(
    r"loss \d+\.\d{4}  perplexity [\d,.]+  token accuracy \d\.\d{3}  \(\d+ rows?, [\d,]+ scored tokens\)$"
)


def _chat_rows(*pairs) -> str:
    return "".join(
        json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n"
        for q, a in pairs
    )


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tiny_data, tmp_path_factory) -> dict:
    """Two lora runs of the tiny model on the same data at other learning rates (a step each), a copy of the first
    that read its rows at max length 16, and held-out files."""
    import torch

    from ftctl.trainer.run import train
    from tests.trainer_fixtures import make_run

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("eval315")
    made = {}
    for name, rate in (("a", 1e-3), ("b", 5e-2)):
        spec, plan = make_run(
            tiny_model_dir, tiny_data, root / name, "lora", lora_r=4, max_steps=1, save_steps=1, learning_rate=rate
        )
        made[name] = Path(train(spec, plan, echo=lambda line: None).output_dir)
    short = shutil.copytree(made["a"], root / "short")
    recorded = json.loads((short / "spec.json").read_text())
    recorded["spec"]["model_max_length"] = 16
    (short / "spec.json").write_text(json.dumps(recorded))
    made["short"] = short
    (root / "held.jsonl").write_text(
        _chat_rows(("What is the code?", "AMBER-42."), ("hi", "Hello there, how are you doing today, my friend?"))
    )
    (root / "other.jsonl").write_text(_chat_rows(("Name a river.", "The Danube, which runs through ten countries.")))
    made["held"], made["other"] = root / "held.jsonl", root / "other.jsonl"
    return made


def _eval(*args) -> tuple[list[str], str]:
    got = CliRunner().invoke(main, ["eval", *map(str, args)])
    assert got.exit_code == 0, got.output
    return got.stdout.splitlines(), got.stderr


def _loading(stderr: str) -> list[str]:
    """ftctl's lines of what loads (transformers' progress bars aside: CliRunner does not quiet them)."""
    return [line for line in stderr.splitlines() if line.startswith("loading the ")]


def test_several_runs_a_row_each_scored_on_the_same_rows(runs, one_thread):
    """A row a run, labelled by RUN and aligned, each the numbers `ftctl eval RUN` alone prints (unchanged: the
    numbers alone, one line)."""
    a, b = runs["a"], runs["b"]
    (alone_a,), said = _eval(a, "--data", runs["held"])
    (alone_b,), _ = _eval(b, "--data", runs["held"])
    assert LINE.fullmatch(alone_a) and alone_a != alone_b, (alone_a, alone_b)
    base = json.loads((a / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert _loading(said) == [f"loading the LoRA adapter {a} on {base}, fp32 on CPU ..."]
    lines, said = _eval(a, b, "--data", runs["held"])
    width = max(len(str(a)), len(str(b))) + 1
    assert lines == [f"{f'{a}:':<{width}} {alone_a}", f"{f'{b}:':<{width}} {alone_b}"]
    assert _loading(said) == [f"loading the LoRA adapter {r} on {base}, fp32 on CPU ..." for r in (a, b)]


def test_compare_scores_a_shared_base_once_above_the_runs(runs, monkeypatch, one_thread):
    """--compare with two runs of one base: one base row (the same numbers as `eval A --compare`'s), scored once,
    then the runs; a run that read the rows into other tokens (max length 16) gets a base row of its own, said in a
    note."""
    from ftctl.trainer import heldout

    a, b, short = runs["a"], runs["b"], runs["short"]
    (base, tuned), _ = _eval(a, "--compare", "--data", runs["held"])
    assert base.startswith("base:  loss ") and tuned.startswith("tuned: loss ")  # one run's lines as ever
    real, calls = heldout._base_scores, []
    monkeypatch.setattr(heldout, "_base_scores", lambda *args: calls.append(args) or real(*args))
    lines, said = _eval(a, b, "--compare", "--data", runs["held"])
    assert len(calls) == 1
    assert [line.split(":")[0] for line in lines] == ["base", str(a), str(b)]
    assert lines[0].split(":", 1)[1].strip() == base.split(":", 1)[1].strip()
    assert lines[1].split(":", 1)[1].strip() == tuned.split(":", 1)[1].strip()
    assert "note:" not in said  # the same tokenizer, length and rows: nothing to say

    lines, said = _eval(a, short, b, "--compare", "--data", runs["held"])
    assert [line.split(":")[0] for line in lines] == [
        f"base of {a}, {b}",
        str(a),
        str(b),
        f"base of {short}",
        str(short),
    ]
    assert lines[0].split(":", 1)[1].strip() == base.split(":", 1)[1].strip()
    assert lines[0].split("(")[1] != lines[3].split("(")[1]  # fewer scored tokens at max length 16
    assert (
        f"note: {short} (max length 16, {a}'s 128) reads these rows into other tokens than {a}, so the losses "
        "average over other tokens and compare only roughly (--max-length N reads them all at one length)."
    ) in said.splitlines(), said


def test_several_runs_on_several_datasets_each_then_all(runs, one_thread):
    """Each dataset's header, a row a run under it, then all of them together, as one run's lines are laid out."""
    a, b = runs["a"], runs["b"]
    alone, _ = _eval(b, "--data", runs["held"], "--data", runs["other"])
    lines, _ = _eval(a, b, "--data", runs["held"], "--data", runs["other"])
    assert [line for line in lines if not line.startswith("  ")] == [f"{runs['held']}:", f"{runs['other']}:", "all:"]
    assert [line.split(":")[0].strip() for line in lines if line.startswith("  ")] == [str(a), str(b)] * 3
    assert [line.split(":", 1)[1].strip() for line in lines[2::3]] == [line.strip() for line in alone[1::2]]


def test_a_run_that_is_not_there_among_several_is_refused_before_any_model_loads(runs, tmp_path):
    """The typo in the last RUN was said once the first had loaded and been scored (minutes for a 7B on CPU)."""
    missing = tmp_path / "nope"
    got = CliRunner().invoke(main, ["eval", str(runs["a"]), str(missing), "--data", str(runs["held"])])
    assert got.exit_code == 2 and "Traceback" not in got.output, got.output
    assert (
        got.stderr
        == f"error: {missing} is not a directory: pass the output directory of a run (or a checkpoint-* in it).\n"
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    got = CliRunner().invoke(main, ["eval", str(missing), str(runs["a"]), str(empty), "--data", str(runs["held"])])
    assert got.exit_code == 2 and not _loading(got.stderr), got.output
    lines = got.stderr.splitlines()
    assert lines[0] == "error: 2 problems to fix first:" and lines[1].startswith(f"  - {missing} is not a directory")
    assert lines[2].startswith(f"  - No model or LoRA adapter (adapter_config.json) in {empty} nor"), lines


def test_a_run_in_object_storage_with_nothing_there_is_refused_first(runs, s3_bucket):
    got = CliRunner().invoke(main, ["eval", str(runs["a"]), f"{s3_bucket}/runs/none", "--data", str(runs["held"])])
    assert got.exit_code == 2 and not _loading(got.stderr), got.output
    assert got.stderr.startswith(f"error: Nothing is at {s3_bucket}/runs/none: give a run's output"), got.stderr


def test_runs_load_one_at_a_time(runs, monkeypatch, one_thread):
    """Each run's weights are let go before the next loads: two 7B runs compared on one card held both."""
    from ftctl.trainer import trained

    real, alive = trained.load, []

    def load(*args, **kwargs):
        gc.collect()
        held = [ref() for ref in alive if ref() is not None]
        assert not held, "a run's model was still held while the next one loaded"
        model = real(*args, **kwargs)
        alive.append(weakref.ref(model))
        return model

    monkeypatch.setattr(trained, "load", load)
    lines, _ = _eval(runs["a"], runs["b"], "--data", runs["held"])
    assert len(lines) == 2 and len(alive) == 2


def test_each_runs_note_of_rows_it_trained_on_names_the_run(runs, tiny_data, one_thread):
    lines, said = _eval(runs["a"], runs["b"], "--data", tiny_data)
    notes = [line for line in said.splitlines() if line.startswith("note: ")]
    assert [n.split(": ")[1] for n in notes] == [f"{runs['a']}, {runs['b']}"], said  # the same note: once (324)
    assert all(f"{tiny_data}: the run trained on its rows, so this loss is lower" in n for n in notes), notes
    assert len(lines) == 2
