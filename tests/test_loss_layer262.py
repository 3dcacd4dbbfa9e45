"""Helper 262: a later layer's TRL completion_only_loss wins over an earlier layer's assistant_only_loss.

ftctl's assistant_only_loss is TRL's two loss switches in one (spec._trl_loss). `-o completion_only_loss=false` over a
run file's `assistant_only_loss: true` was noted and dropped: the run file's switch, the earlier layer, decided. As
with any key, the command line's -o is the later layer and wins for the switch it names; what that does to the other
kind of row (conversations) is said. In one layer, assistant_only_loss still decides (test_trl_keys260).
"""

from __future__ import annotations

import json

from ftctl.plan import dump_run, load_run, make_plan
from ftctl.spec import build

FILE = {"model_name_or_path": "Qwen/Qwen2-0.5B", "data_path": "a.jsonl"}


def _loss(given: dict, overrides=()):
    notes: list[str] = []
    spec = build({**FILE, **given}, None, list(overrides), notes=notes)
    return spec, [n for n in notes if n.startswith(("completion_only_loss", "assistant_only_loss"))]


def test_o_completion_only_loss_false_wins_over_the_run_files_assistant_only_loss():
    spec, notes = _loss({"assistant_only_loss": True}, ["completion_only_loss=false"])
    assert spec.assistant_only_loss is False and spec.gave("assistant_only_loss")
    assert notes == [
        "completion_only_loss: false (-o), the later layer, wins over assistant_only_loss: true (run file); ftctl "
        "has one switch for both: assistant_only_loss: false here, every token of every row trains, a "
        "conversation's too (TRL's assistant_only_loss: true trains its assistant turns only)"
    ]
    spec, notes = _loss({"assistant_only_loss": False}, ["completion_only_loss=true"])
    assert spec.assistant_only_loss is True and len(notes) == 1
    assert notes[0].startswith("completion_only_loss: true (-o), the later layer, wins over assistant_only_loss: false")
    # agreeing, nothing to say; in one layer, or assistant_only_loss the later one, assistant_only_loss decides
    assert _loss({"assistant_only_loss": False}, ["completion_only_loss=false"])[0].assistant_only_loss is False
    assert _loss({"assistant_only_loss": False}, ["completion_only_loss=false"])[1] == []
    assert _loss({"assistant_only_loss": True, "completion_only_loss": False})[0].assistant_only_loss is True
    assert _loss({"completion_only_loss": False}, ["assistant_only_loss=true"])[0].assistant_only_loss is True
    o = ["assistant_only_loss=true", "completion_only_loss=false"]
    assert _loss({}, o)[0].assistant_only_loss is True


def test_the_spec_json_of_such_a_run_reads_back_as_it_trains(tmp_path):
    """spec.json (plan.dump_run) holds ftctl's one switch, never completion_only_loss: plan.load_run reads back what
    -o decided, and an old spec.json (either value) as it was written."""
    f = tmp_path / "spec.json"
    spec = build(
        {**FILE, "model_name_or_path": "lmsys/vicuna-7b-v1.5", "assistant_only_loss": True, "gpus": "1xA100-80GB"},
        None,
        ["completion_only_loss=false"],
    )
    plan = make_plan(spec)
    f.write_text(dump_run(spec, plan))
    assert "completion_only_loss" not in f.read_text() and load_run(str(f))[0].assistant_only_loss is False
    for old in (True, False):
        data = json.loads(f.read_text())
        data["spec"]["assistant_only_loss"] = old
        f.write_text(json.dumps(data))
        assert load_run(str(f))[0].assistant_only_loss is old
