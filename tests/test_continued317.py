"""explore64 findings 10, 6 and 11 (helper 317): what a run continued from a checkpoint, or stopped through its stop
file, says of it. /work/notes/explore64-iterate.md has the walk.

10: the model card of a run that went on from another run's checkpoint (`-o resume=RUN/checkpoint-N --output NEW
--data OTHER`) said only the last launch's data and learning rate; 6: a SIGTERM to `ftctl launch` (or `ftctl
cancel`) read "stopping at step N (stop file)" in the trainer's log; 11: an epoch-based run relaunched with max_steps
said "max_steps -1 -> 15"."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys

import pytest

from tests.trainer_fixtures import make_run


def _quiet(*_):
    pass


@pytest.fixture
def other_data(tmp_path):
    """Other rows of the demo's conversations than tiny_data's."""
    from ftctl.demo import demo_data_path

    other = tmp_path / "other.json"
    other.write_text(json.dumps(json.loads(demo_data_path().read_text())[200:248]))
    return other


def test_the_card_of_a_run_that_went_on_from_another_runs_checkpoint_says_its_steps(
    tiny_model_dir, tiny_data, other_data, tmp_path, one_thread
):
    """r3 went on from r1's checkpoint-2 (trained on tiny_data at 1e-3) on other data at 5e-4: its card said `data:
    other.json` and the learning rate of the last launch, nothing of steps 1-2. Now a row says them, in the run's
    card, its checkpoints' and a merge's (the Training section is theirs too)."""
    from ftctl.trainer.model_card import training
    from ftctl.trainer.run import train

    first, new = tmp_path / "r1", tmp_path / "r3"
    small = {"save_steps": 2, "lora_r": 4}
    assert train(*make_run(tiny_model_dir, tiny_data, first, "lora", max_steps=2, **small), echo=_quiet)
    named = {**small, "resume": str(first / "checkpoint-2"), "learning_rate": 5e-4}
    assert train(*make_run(tiny_model_dir, other_data, new, "lora", max_steps=3, **named), echo=_quiet)
    row = f"- went on from: `r1/checkpoint-2` (steps 1-2: `{tiny_data.name}`, learning rate 0.001)\n"
    card = (new / "README.md").read_text()
    assert "- data: `other.json`\n" + row + "- learning rate: 0.0005\n" in card, card
    assert row in (new / "checkpoint-3" / "README.md").read_text()
    assert "went on from" not in (first / "README.md").read_text()  # resume=auto (or never): none
    record = json.loads((new / "spec.json").read_text())
    assert row in training(record["spec"], record["plan"], new)  # `ftctl merge`'s card's section
    # the checkpoint gone since (save_total_limit, rm): the start record of r3 that went on from it says its settings
    (first / "checkpoint-2" / "ftctl-manifest.json").unlink()
    assert row in training(record["spec"], record["plan"], new)
    (new / "metrics.jsonl").unlink()  # neither: the row still names it and its steps
    assert "- went on from: `r1/checkpoint-2` (steps 1-2)\n" in training(record["spec"], record["plan"], new)


def test_the_card_of_a_run_from_an_adapter_says_it_once(tiny_model_dir, tiny_data, other_data, tmp_path, one_thread):
    """A run started from an adapter's weights (lora_model_dir) says so in its card's first paragraph, with the data
    that adapter trained on; it went on from no checkpoint, and no row says it did."""
    from ftctl.trainer.run import train

    first, new = tmp_path / "r1", tmp_path / "r4"
    small = {"save_steps": 10, "lora_r": 4}
    assert train(*make_run(tiny_model_dir, tiny_data, first, "lora", max_steps=1, **small), echo=_quiet)
    started = {**small, "lora_model_dir": str(first)}
    assert train(*make_run(tiny_model_dir, other_data, new, "lora", max_steps=1, **started), echo=_quiet)
    card = (new / "README.md").read_text()
    assert f"Its adapters started from the weights of the adapter `r1` (trained on `{tiny_data.name}`)" in card, card
    assert "went on from" not in card and card.count(tiny_data.name) == 1, card


def _stopper(stop_file, step, write):
    """A callback that asks the run to stop at ``step``'s end through ``stop_file`` as ``write`` writes it."""
    from transformers import TrainerCallback

    class StopAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == step:
                write(stop_file)
            return control

    return StopAt()


def _signalled(stop_file):
    """The stop file as a SIGTERM to `ftctl launch` writes it: the launcher's own handler (local.backend), a real
    signal to this process, its child a stand-in for the trainer."""
    from ftctl.local.backend import _forwarding_signals

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with _forwarding_signals(child, stop_file) as got:
            os.kill(os.getpid(), signal.SIGTERM)
        assert got == [signal.SIGTERM] and child.poll() is None  # asked through the file, not signalled
    finally:
        child.kill()
        child.wait()


def _cancelled(stop_file):
    """The stop file as `ftctl cancel RUN` writes it: the trainer in this process holds the run's lock, and names
    itself as the one that watches the stop file (as `ftctl train` does: local.backend.train_here)."""
    from ftctl.backend import JobRef
    from ftctl.local.backend import LocalBackend
    from ftctl.runpaths import RunPaths

    paths = RunPaths(stop_file.parents[1])
    paths.stop_heard.write_text(f"{os.getpid()}\n")
    root = str(paths.root)
    said = LocalBackend().cancel(JobRef("local", root, root, "r", root))
    assert said.startswith(f"asked {root} (pid {os.getpid()} on "), said
    assert stop_file == paths.stop_file


@pytest.mark.parametrize(
    "write, why",
    [(_signalled, "SIGTERM to ftctl launch"), (_cancelled, "ftctl cancel"), (lambda p: p.touch(), "stop file")],
    ids=["sigterm", "cancel", "touched"],
)
def test_the_trainers_stop_lines_say_why_its_stop_file_was_written(
    tiny_model_dir, tiny_data, tmp_path, one_thread, monkeypatch, caplog, write, why
):
    """`kill -TERM` of `ftctl launch`: the trainer said "stopping at step 3 (stop file)" and "stopped on stop file",
    the launcher SIGTERM. The launcher (and `ftctl cancel`) now write why into the stop file and the trainer's lines
    say it; a stop file that says nothing (a Slurm job's trap, a user's `touch`) reads as before."""
    from ftctl.envvars import STOP_ENV
    from ftctl.trainer.run import train

    out = tmp_path / "run"
    stop = out / ".ftctl" / "stop"
    monkeypatch.setenv(STOP_ENV, str(stop))
    every = {"save_steps": 100, "lora_r": 4}
    with caplog.at_level(logging.WARNING, logger="ftctl"):
        ran = train(
            *make_run(tiny_model_dir, tiny_data, out, "lora", max_steps=50, **every), [_stopper(stop, 2, write)]
        )
    assert ran.status == "preempted" and ran.global_step == 3
    assert f"stopping at step 3 ({why}): saving a checkpoint first" in caplog.text, caplog.text
    assert f"stopped on {why} after saving step 3;" in caplog.text
    stopped = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"stop"' in line]
    assert stopped[-1]["signal"] == why and stopped[-1]["checkpoint"] == "checkpoint-3"


def test_a_stop_files_reason_is_its_first_printable_line(tmp_path):
    """What the trainer takes from a stop file: its first line, stripped; the old words where it says nothing readable."""
    from ftctl.trainer.callbacks import STOP_FILE, stop_reason

    stop = tmp_path / "stop"
    for content, said in [
        ("SIGHUP to ftctl launch\n", "SIGHUP to ftctl launch"),
        ("  ftctl cancel \nmore\n", "ftctl cancel"),
        ("", STOP_FILE),
        ("\n\n", STOP_FILE),
        ("\x1b[31mred\n", STOP_FILE),
        ("x" * 500, "x" * 200),
    ]:
        stop.write_text(content)
        assert stop_reason(str(stop)) == said
    stop.write_bytes(b"\xff\xfe binary")
    assert stop_reason(str(stop)) == "\ufffd\ufffd binary"
    assert stop_reason(str(tmp_path / "gone")) == STOP_FILE


def test_an_epoch_runs_unset_max_steps_reads_as_its_epochs_in_the_change_line(
    tiny_model_dir, tiny_data, tmp_path, one_thread
):
    """An epoch-based run (max_steps unset: -1) relaunched with max_steps=15 said "max_steps -1 -> 15"; now the
    epochs and the steps they made: "max_steps none (1 epoch, 12 steps) -> 15". And back: "15 -> none (2 epochs)"."""
    from ftctl.checkpoints.settings import changes, compare, settings
    from ftctl.trainer.run import train

    out = tmp_path / "run"
    every = {"save_steps": 100, "lora_r": 4, "max_steps": -1, "num_train_epochs": 1, "resume": "auto"}
    ran = train(*make_run(tiny_model_dir, tiny_data, out, "lora", **every), echo=_quiet)
    steps = ran.global_step
    checkpoint = str(out / f"checkpoint-{steps}")
    longer = make_run(tiny_model_dir, tiny_data, out, "lora", **{**every, "max_steps": steps + 3})
    line = changes(checkpoint, settings(*longer)).line()
    assert line.startswith(
        f"checkpoint-{steps} was saved with other settings: max_steps none (1 epoch, {steps} steps) -> {steps + 3}; "
    ), line
    # and back: a checkpoint of max_steps=20 relaunched on epochs
    back = {**settings(*longer), "max_steps": 20}
    epochs = make_run(tiny_model_dir, tiny_data, out, "lora", **{**every, "num_train_epochs": 2})
    line = compare(checkpoint, back, settings(*epochs)).line()
    assert "max_steps 20 -> none (2 epochs), num_train_epochs 1 -> 2;" in line, line
