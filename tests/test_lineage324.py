"""What a run says of where it came from (helper 324): a full-model run over another run's final model (`--model
runs/f1`) kept no record of it, and --compare scored that run's model as it is now as the base; a run relaunched into
its output with another learning rate or data had a card of its last phase only; `ftctl eval A A` scored A once
without a word, and runs over the same data repeated one trained-on note each."""

from __future__ import annotations

import json
import logging

import pytest
from click.testing import CliRunner

from ftctl.cli import main
from tests.trainer_fixtures import make_run


def _quiet(*_):
    pass


def _said(caplog) -> str:
    return " ".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


@pytest.fixture
def other_data(tmp_path):
    """Other rows of the demo's conversations than tiny_data's."""
    from ftctl.demo import demo_data_path

    other = tmp_path / "other.json"
    other.write_text(json.dumps(json.loads(demo_data_path().read_text())[200:248]))
    return other


def test_a_full_model_run_over_a_run_records_it_and_compare_says_it_trained_on(
    tiny_model_dir, tiny_data, tmp_path, one_thread, caplog
):
    """f2 (fft) trained over f1's final model; f1 then trained on: `ftctl chat/eval --compare f2` loaded f1's new
    model as f2's base, its answers and losses another model's, unsaid. f2 records f1's model as it starts, and
    --compare's base says it changed; f2 alone (no --compare) loads its own weights: nothing said."""
    from ftctl.runpaths import BASE_RUN
    from ftctl.trainer import chat
    from ftctl.trainer.run import train

    f1, f2 = tmp_path / "f1", tmp_path / "f2"
    first = {"save_steps": 2, "resume": "auto"}
    assert train(*make_run(tiny_model_dir, tiny_data, f1, "fft", max_steps=2, **first), echo=_quiet)
    assert train(*make_run(f1, tiny_data, f2, "sft", max_steps=1, trainable_layers=1), echo=_quiet)
    record = json.loads((f2 / BASE_RUN).read_text())
    assert record["run"] == str(f1) and record["step"] == 2, record
    loaded = chat.load(str(f2), echo=_quiet)
    with caplog.at_level(logging.WARNING, logger="ftctl"), loaded.base():
        pass
    assert "was trained on after" not in caplog.text

    assert train(*make_run(tiny_model_dir, tiny_data, f1, "fft", max_steps=3, **first), echo=_quiet)  # trains on
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ftctl"):
        loaded = chat.load(str(f2), echo=_quiet)
    assert "was trained on after" not in caplog.text  # its own weights: no base under them
    with caplog.at_level(logging.WARNING, logger="ftctl"), loaded.base():  # chat --compare, eval --compare
        pass
    said = _said(caplog)
    assert f"{f1} was trained on after {f2} trained over it: its final model was step 2's" in said, said
    assert f"so --compare's base is that model as it is now, not the one {f2} started from" in said, said


def test_a_relaunched_runs_card_lists_its_phases(tiny_model_dir, tiny_data, other_data, tmp_path, one_thread):
    """r1 trained steps 1-2 at 1e-3, was relaunched (resume=auto) to step 4 at 5e-4, then from its own checkpoint-4
    on other data to step 6: its card said the last phase's data and learning rate only. Its start records keep the
    checkpoint each went on from and that checkpoint's settings; the card lists the phases."""
    from ftctl.trainer.run import train

    out = tmp_path / "r1"
    small = {"save_steps": 2, "lora_r": 4, "resume": "auto", "save_total_limit": 1}
    assert train(*make_run(tiny_model_dir, tiny_data, out, "lora", max_steps=2, **small), echo=_quiet)
    assert "- phases:" not in (out / "README.md").read_text()  # one phase
    slower = {**small, "learning_rate": 5e-4}
    assert train(*make_run(tiny_model_dir, tiny_data, out, "lora", max_steps=4, **slower), echo=_quiet)
    a = f"`{tiny_data.name}`"
    two = f"- phases: steps 1-2: {a}, learning rate 0.001; steps 3-4: {a}, learning rate 0.0005\n"
    card = (out / "README.md").read_text()
    assert two in card and "- learning rate: 0.0005\n" in card, card
    assert not (out / "checkpoint-2").exists()  # its settings are in the start record, not in a checkpoint kept
    assert two in (out / "checkpoint-4" / "README.md").read_text()

    on = {**slower, "resume": str(out / "checkpoint-4")}
    assert train(*make_run(tiny_model_dir, other_data, out, "lora", max_steps=6, **on), echo=_quiet)
    three = two.rstrip("\n") + "; steps 5-6: `other.json`, learning rate 0.0005\n"
    card = (out / "README.md").read_text()
    assert three in card, card
    # checkpoint-4 deleted since (save_total_limit): the start record that went on from it says its settings
    assert not (out / "checkpoint-4").exists()
    assert f"- went on from: `r1/checkpoint-4` (steps 1-4: {a}, learning rate 0.0005)\n" in card, card


def test_phases_of_start_records():
    """A fresh start begins them again; a relaunch from an older checkpoint ends those past it there; a requeue
    with the same settings is no new phase; records before phases were recorded are passed over."""
    from ftctl.checkpoints.settings import phases

    def start(settings, step=None, before=None):
        phase = {"settings": settings}
        if step is not None:
            phase["resumed"] = {"checkpoint": f"out/checkpoint-{step}", "step": step, "settings": before or {}}
        return {"event": "start", "phase": phase}

    a, b, c = {"learning_rate": 1.0}, {"learning_rate": 2.0}, {"learning_rate": 3.0}
    assert phases([{"event": "start"}, start(a), start(a, 4, a), start(b, 8, a), start(c, 10, b)]) == [
        (1, a),
        (9, b),
        (11, c),
    ]
    assert phases([start(a), start(b, 4, a), start(c, 2, a)]) == [(1, a), (3, c)]  # steps 3-4 again
    assert phases([start(a), start(b, 2, a), start(c)]) == [(1, c)]
    assert phases([{"event": "start"}, start(b, 3, a)]) == [(1, a), (4, b)]  # its first steps: the checkpoint's
    assert phases([{"event": "start"}]) == []


def _eval(*args) -> str:
    got = CliRunner().invoke(main, ["eval", *map(str, args)])
    assert got.exit_code == 0, got.output
    return got.stderr


def test_eval_of_a_run_given_twice_says_it_and_a_shared_note_is_said_once(
    tiny_model_dir, tiny_data, tmp_path, one_thread
):
    """`ftctl eval A A --data x` scored A once, unsaid; `ftctl eval A B --data TRAINED` said the same trained-on note
    once a run. Now: 'A is given twice: scored once', and one note naming both runs."""
    from ftctl.trainer.run import train

    made = []
    for name in ("a", "b"):
        spec, plan = make_run(tiny_model_dir, tiny_data, tmp_path / name, "lora", lora_r=4, max_steps=1, save_steps=1)
        made.append(train(spec, plan, echo=_quiet).output_dir)
    a, b = made
    said = _eval(a, a, b, "--data", tiny_data)
    assert f"note: {a} is given twice: scored once" in said, said
    notes = [line for line in said.splitlines() if "the run trained on its rows" in line]
    assert len(notes) == 1 and notes[0].startswith(f"note: {a}, {b}: {tiny_data}: "), said
