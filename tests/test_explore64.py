"""explore64: a researcher iterating on a local run (train, stop, resume with changes, train on from another run's
output, clean up, re-run into the same output dir). /work/notes/explore64-iterate.md has the walk and findings."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from tests.trainer_fixtures import make_run


def _ftctl(*args):
    from ftctl.cli import main

    return CliRunner().invoke(main, [*map(str, args)])


@pytest.fixture
def stopped_past_final(tiny_model_dir, tiny_data, tmp_path, one_thread, monkeypatch):
    """A lora run finished at step 2 (its final adapter and checkpoint-2), relaunched with max_steps raised to 50
    and stopped (the stop file a SIGTERM to `ftctl launch` makes) at step 3: checkpoint-3 past the final adapter."""
    from ftctl.envvars import STATUS_ENV, STOP_ENV
    from ftctl.trainer.run import train

    out = tmp_path / "run"
    monkeypatch.setenv(STATUS_ENV, str(out / ".ftctl" / "status"))  # as the local launcher sets them
    every = {"resume": "auto", "save_steps": 2, "save_total_limit": 5, "lora_r": 4}
    assert train(*make_run(tiny_model_dir, tiny_data, out, "lora", max_steps=2, **every), echo=lambda *_: None)
    assert (out / ".ftctl" / "status").read_text() == "complete\n"
    stop = tmp_path / "stop"
    stop.touch()
    monkeypatch.setenv(STOP_ENV, str(stop))
    longer = train(*make_run(tiny_model_dir, tiny_data, out, "lora", max_steps=50, **every), echo=lambda *_: None)
    monkeypatch.delenv(STOP_ENV)
    assert longer.status == "preempted" and longer.global_step == 3
    assert (out / ".ftctl" / "status").read_text() == "preempted\n" and (out / "checkpoint-3").is_dir()
    spec = json.loads((out / "spec.json").read_text())
    assert spec["spec"]["max_steps"] == 50
    return out


def test_status_of_a_relaunch_stopped_past_its_final_adapter_is_stopped(stopped_past_final):
    """`ftctl status` and `ftctl jobs` said "local run, complete" (exit 0) of a finished run relaunched to train
    longer and stopped with a checkpoint: the earlier run's final adapter at the top was taken for this run's end."""
    said = _ftctl("status", stopped_past_final, "--exit-code")
    assert said.exit_code == 3, said.output
    assert "local run, stopped before the end" in said.output and "complete" not in said.output, said.output
    assert "resumes it from checkpoint-3" in said.output, said.output


class _StopAt:
    """Touches the stop file (a SIGTERM to `ftctl launch` makes it) at ``step``'s end: the run stops at the next step."""

    def __new__(cls, stop, step):
        from transformers import TrainerCallback

        class StopAt(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == step:
                    stop.touch()
                return control

        return StopAt()


def test_a_stopped_run_relaunched_with_max_steps_below_its_checkpoint_is_refused(
    tiny_model_dir, tiny_data, tmp_path, one_thread, monkeypatch, caplog
):
    """Stopped at step 3 of 50, relaunched with max_steps=2: the log said "the run goes on from step 3 with the new
    ones", the Trainer trained nothing, wrote checkpoint-3's adapter as the final one of a card saying "steps: 2" and
    said complete. Now refused before a step, naming what trains on and what uses step 3's weights."""
    from ftctl.envvars import STOP_ENV
    from ftctl.errors import FtctlError
    from ftctl.trainer.run import train

    out, stop = tmp_path / "run", tmp_path / "stop"
    monkeypatch.setenv(STOP_ENV, str(stop))
    every = {"resume": "auto", "save_steps": 100, "lora_r": 4}
    first = train(*make_run(tiny_model_dir, tiny_data, out, "lora", max_steps=50, **every), [_StopAt(stop, 2)], print)
    assert first.status == "preempted" and first.global_step == 3 and (out / "checkpoint-3").is_dir()
    stop.unlink()
    with pytest.raises(FtctlError) as e:
        train(*make_run(tiny_model_dir, tiny_data, out, "lora", max_steps=2, **every), echo=lambda *_: None)
    assert str(e.value) == (
        f"{out} holds checkpoint-3, past this run's end at max_steps=2: nothing would be trained, and its final model "
        "would be step 3's. To train on, give a max_steps over 3 (-o max_steps=5 trains 2 more); to use step 3's "
        f"weights as they are: ftctl chat {out}/checkpoint-3 (or eval, merge)."
    )
    assert not (out / "adapter_model.safetensors").exists()  # no final adapter written
    # the run's own last step (stopped before its final model) still resumes to write it
    again = train(*make_run(tiny_model_dir, tiny_data, out, "lora", max_steps=3, **every), echo=lambda *_: None)
    assert again.status == "complete" and (out / "adapter_model.safetensors").exists()


def test_eval_says_the_data_of_the_checkpoint_a_run_went_on_from(tiny_model_dir, tiny_data, tmp_path, one_thread):
    """`-o resume=FIRST/checkpoint-2 --data other.json`: the new run's steps 1-2 trained on FIRST's data, yet `ftctl
    eval NEW --data FIRST's file` said nothing (its spec.json names other.json only), and the loss read as held-out."""
    from ftctl.demo import demo_data_path
    from ftctl.trainer.run import train

    other = tmp_path / "other.json"
    other.write_text(json.dumps(json.loads(demo_data_path().read_text())[200:248]))
    first, new = tmp_path / "first", tmp_path / "new"
    small = {"save_steps": 2, "lora_r": 4}
    assert train(*make_run(tiny_model_dir, tiny_data, first, "lora", max_steps=2, **small), echo=lambda *_: None)
    named = {**small, "resume": str(first / "checkpoint-2")}
    assert train(*make_run(tiny_model_dir, other, new, "lora", max_steps=3, **named), echo=lambda *_: None)
    said = _ftctl("eval", new, "--data", tiny_data)
    assert said.exit_code == 0, said.output
    assert (
        f"note: {tiny_data.name}: the run trained on its rows in the steps of the checkpoint it went on from "
        f"({first / 'checkpoint-2'}), so this loss is lower than on rows it never saw"
        in said.output.replace(str(tiny_data), tiny_data.name)
    ), said.output


def test_chat_eval_and_merge_of_a_relaunch_stopped_past_its_final_adapter_load_its_checkpoint(
    stopped_past_final, caplog
):
    """`ftctl chat/eval/merge RUN` of that run loaded the earlier run's final adapter (step 2's) with no word, where a
    stopped run without one loads its newest checkpoint and says so: now checkpoint-3, said."""
    import logging

    from ftctl.trainer.trained import find

    with caplog.at_level(logging.WARNING, logger="ftctl"):
        found = find(str(stopped_past_final))
    assert found.path == stopped_past_final / "checkpoint-3" and found.adapter
    assert (
        f"{stopped_past_final}: its final adapter is an earlier run's; a relaunch trained on to checkpoint-3 and "
        "stopped before its end: loading checkpoint-3 (the same `ftctl launch` finishes the run)" in caplog.text
    )
    assert find(str(stopped_past_final / "checkpoint-2")).path == stopped_past_final / "checkpoint-2"  # as named


def test_launch_refuses_a_max_steps_below_the_stopped_runs_checkpoint_before_the_job(
    tiny_model_dir, tiny_data, tmp_path, one_thread, monkeypatch
):
    """The trainer's refusal (run.past_end) came after the job started, and marked the stopped run failed: launch's
    preflight says it first, as it refuses a finished run."""
    from ftctl.envvars import STOP_ENV
    from ftctl.preflight import ERROR, Finding, check_resume
    from ftctl.trainer.run import train

    out, stop = tmp_path / "run", tmp_path / "stop"
    monkeypatch.setenv(STOP_ENV, str(stop))
    every = {"resume": "auto", "save_steps": 100, "lora_r": 4}
    assert train(*make_run(tiny_model_dir, tiny_data, out, "lora", max_steps=50, **every), [_StopAt(stop, 2)], print)
    assert check_resume(*make_run(tiny_model_dir, tiny_data, out, "lora", max_steps=2, **every)) == [
        Finding(
            ERROR,
            f"{out} holds checkpoint-3, past this run's end at max_steps=2: nothing would be trained, and its final "
            "model would be step 3's. To train on, give a max_steps over 3 (-o max_steps=5 trains 2 more); to use step "
            f"3's weights as they are: ftctl chat {out}/checkpoint-3 (or eval, merge).",
        )
    ]
    said = check_resume(*make_run(tiny_model_dir, tiny_data, out, "lora", max_steps=3, **every))
    assert [f.level for f in said] != [ERROR]  # its own last step: resumed to write its final adapter
