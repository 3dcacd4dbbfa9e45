"""A run resumed on a machine that trained it earlier, after it went on elsewhere (explore39: m1 trains steps 1..94,
m2 95..169, m1 resumes checkpoint-169): its metrics.jsonl kept its own rows and had none of 95..169, as
callbacks.restore_metrics took the checkpoint's saved rows only where the file held no row of a step yet. `ftctl status`
and the curves missed those steps, and `ftctl sync pull` of a copy pulled while the store held them refused the run as
"steps of this run that the store lacks". Now the checkpoint's rows are the run's history up to its step wherever the
file lacks one of them; a node that kept them all is left as it is."""

from __future__ import annotations

import json
import os
import signal

from click.testing import CliRunner

from ftctl.trainer.callbacks import restore_metrics, truncate_metrics
from tests.trainer_fixtures import make_run, read_metrics


def _lines(*rows: dict) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def _start(node: str) -> dict:
    return {"step": 0, "event": "start", "node": node}


def _row(step: int, node: str) -> dict:
    return {"step": step, "loss": 6 - step / 100, "node": node}


def _resume(tmp_path, local: str, saved: str | None, step: int) -> str:
    """metrics.jsonl after MetricsCallback.on_train_begin resumed checkpoint-``step`` (its copy ``saved``)."""
    path, copy = tmp_path / "metrics.jsonl", tmp_path / "checkpoint" / "ftctl-metrics.jsonl"
    path.write_text(local)
    copy.parent.mkdir(exist_ok=True)
    copy.unlink(missing_ok=True)
    if saved is not None:
        copy.write_text(saved)
    restore_metrics(str(path), str(copy))
    truncate_metrics(str(path), step)
    return path.read_text()


# m1 trained steps 1..4 (an evaluation at 4) and was stopped; m2 resumed its checkpoint-4, trained 5..8 and saved
# checkpoint-8, whose copy holds m1's rows as m2 restored them, m2's start record and m2's rows
M1 = [_start("m1"), *(_row(s, "m1") for s in (1, 2, 3, 4)), {"step": 4, "event": "eval", "eval_loss": 5.9}]
SAVED_8 = _lines(*M1, _start("m2"), *(_row(s, "m2") for s in (5, 6, 7, 8)), {"step": 8, "event": "eval"})
NOW = _start("m1 again")  # the start record this run wrote before its first step (run.record_start)


def test_a_machine_that_trained_the_run_before_takes_the_steps_trained_elsewhere(tmp_path):
    stopped = {"step": 4, "event": "stop", "checkpoint": "checkpoint-4"}  # written after checkpoint-4's copy
    assert _resume(tmp_path, _lines(*M1, stopped, NOW), SAVED_8, 8) == SAVED_8 + _lines(NOW)
    # its own rows went another way: steps 5..6 trained past checkpoint-4 before a kill, one row cut short by it;
    # m2 trained those steps again from checkpoint-4
    own = _lines(*M1, _row(5, "m1"), _row(6, "m1")) + '{"step": 7, "lo\n' + _lines(NOW)
    assert _resume(tmp_path, own, SAVED_8, 8) == SAVED_8 + _lines(NOW)
    # a fresh node (nothing but its start record), as before; a copy cut short by a kill carries no half row
    assert _resume(tmp_path, _lines(NOW), SAVED_8 + '{"step": 9, "lo', 8) == SAVED_8 + _lines(NOW)
    # resuming an earlier checkpoint than the one it holds rows of: the rows after it are dropped, as before
    assert _resume(tmp_path, SAVED_8 + _lines(NOW), _lines(*M1), 4) == _lines(*M1, _start("m2"), NOW)


def test_a_node_that_kept_every_row_is_left_as_it_is(tmp_path):
    """The common resume, where the run was saved: the file goes on as it is, not written again."""
    path = tmp_path / "metrics.jsonl"
    kept = SAVED_8 + _lines({"step": 8, "event": "stop"}, NOW)
    _resume(tmp_path, kept, SAVED_8, 8)
    inode = path.stat().st_ino
    restore_metrics(str(path), str(tmp_path / "checkpoint" / "ftctl-metrics.jsonl"))
    assert path.read_text() == kept and path.stat().st_ino == inode  # storage.write_whole would replace the file
    # a checkpoint of an ftctl that saved no rows: the node's rows as they are, those after the checkpoint dropped
    assert _resume(tmp_path, _lines(*M1, _row(5, "m1"), NOW), None, 4) == _lines(*M1, NOW)


def test_a_run_back_on_the_node_it_left_has_every_step_in_the_store_and_pulls_again(
    tiny_model_dir, tiny_data, tmp_path, one_thread, s3_bucket, monkeypatch
):
    """Node a trains steps 1..2, node b 3..4, node a resumes b's checkpoint-4 to 6 (a SIGTERM stops a run at the
    next step): the store's metrics.jsonl has
    every step once, b's as b logged them, and a copy pulled after b's stop pulls the finished run in its place."""
    from transformers import TrainerCallback

    from ftctl import storage
    from ftctl.cli import main
    from ftctl.trainer.run import train

    class StopAt(TrainerCallback):
        def __init__(self, step: int):
            self.step = step

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == self.step:
                os.kill(os.getpid(), signal.SIGTERM)

    uri = f"{s3_bucket}/run"
    spec, plan = make_run(tiny_model_dir, tiny_data, uri, "lora", max_steps=6, save_steps=100, resume="auto", lora_r=4)
    monkeypatch.setenv("FTCTL_HOME", str(tmp_path / "home"))
    legs = [("node-a", [StopAt(1)]), ("node-b", [StopAt(3)]), ("node-a", [])]
    for n, (node, callbacks) in enumerate(legs):
        monkeypatch.setenv("FTCTL_LOCAL_DIR", str(tmp_path / node))
        done = train(spec, plan, callbacks=callbacks, echo=lambda line: None)
        assert (done.status, done.global_step) == (("preempted", 2), ("preempted", 4), ("complete", 6))[n]
        if n == 1:
            by_b = {r["step"]: r for r in read_metrics(tmp_path / "node-b") if r["step"] > 2}
            pulled = CliRunner().invoke(main, ["sync", "pull", uri, str(tmp_path / "pulled")])
            assert pulled.exit_code == 0, pulled.output

    rows = [json.loads(line) for line in storage.read_text(storage.join(uri, "metrics.jsonl")).splitlines()]
    trained = [r for r in rows if "loss" in r]
    assert [r["step"] for r in trained] == [1, 2, 3, 4, 5, 6]
    assert trained[2:4] == [by_b[3], by_b[4]]
    again = CliRunner().invoke(main, ["sync", "pull", uri, str(tmp_path / "pulled")])
    assert again.exit_code == 0 and "steps of this run that the store lacks" not in again.output, again.output
    assert [r["step"] for r in read_metrics(tmp_path / "pulled")] == [1, 2, 3, 4, 5, 6]
