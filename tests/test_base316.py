"""explore64 findings 4 and 5: a run trained over another run's final model (`--model runs/f1`) went onto other
weights without a word once runs/f1 trained on; a finished run whose newer checkpoints were deleted retrained from an
older one and replaced its final model, said only as a settings change. /work/notes/explore64-iterate.md."""

from __future__ import annotations

import json
import logging
import time

from tests.trainer_fixtures import make_run


def _quiet(*_):
    pass


def _said(caplog) -> str:
    return " ".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


def test_an_adapter_over_a_run_that_trained_on_since_is_said(tiny_model_dir, tiny_data, tmp_path, one_thread, caplog):
    """`--model runs/f1 --method lora --output runs/f1l`, then runs/f1 relaunched with more steps (its final model
    replaced): chat, eval and merge of runs/f1l loaded its adapter onto step 3's model with no word, where it trained
    over step 2's. The run records runs/f1's final model as it starts over it; a load onto another one says so, and
    runs/f1l going on from its checkpoint over the new one says that too."""
    from ftctl.runpaths import BASE_RUN
    from ftctl.trainer import trained as trained_mod
    from ftctl.trainer.run import train

    f1, f1l = tmp_path / "f1", tmp_path / "f1l"
    first = {"save_steps": 2, "resume": "auto"}
    assert train(*make_run(tiny_model_dir, tiny_data, f1, "fft", max_steps=2, **first), echo=_quiet)
    over = {"save_steps": 2, "resume": "auto", "lora_r": 4}
    assert train(*make_run(f1, tiny_data, f1l, "lora", max_steps=2, **over), echo=_quiet)
    record = json.loads((f1l / BASE_RUN).read_text())
    assert record["run"] == str(f1) and record["step"] == 2 and "model.safetensors" in record["weights"]
    with caplog.at_level(logging.WARNING, logger="ftctl"):
        trained_mod.load(trained_mod.find(str(f1l)), "fp32")
    assert "was trained on after" not in caplog.text
    when = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(record["ended_at"]))

    assert train(*make_run(tiny_model_dir, tiny_data, f1, "fft", max_steps=3, **first), echo=_quiet)  # trains on
    ended = json.loads([r for r in (f1 / "metrics.jsonl").read_text().splitlines() if '"end"' in r][-1])["time"]
    later = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(ended))
    line = (
        f"{f1} was trained on after {f1l} trained over it: its final model was step 2's (of {when}), and is step 3's "
        f"(of {later}) now"
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ftctl"):
        trained_mod.load(trained_mod.find(str(f1l)), "fp32")  # chat, eval and merge load it so
    assert (
        f"{line}, so the adapter goes onto other weights than it trained with, and its answers and losses are not the "
        f"run's. Train it again over {f1} as it is; next time train {f1} on into another --output (-o "
        f"resume={f1}/checkpoint-N --output NEW) to keep the model the runs over it trained with."
    ) in _said(caplog)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ftctl"):  # one of its checkpoints: the record above it
        trained_mod.load(trained_mod.find(str(f1l / "checkpoint-2")), "fp32")
    assert line in _said(caplog)

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ftctl"):  # f1l goes on over the new model: said, record kept
        assert train(*make_run(f1, tiny_data, f1l, "lora", max_steps=3, **over), echo=_quiet)
    assert f"{line}; this run's checkpoints trained over the first, the steps it trains now over the second" in (
        _said(caplog)
    )
    assert json.loads((f1l / BASE_RUN).read_text()) == record


def test_a_fresh_run_over_no_run_keeps_no_record_of_an_earlier_one(tiny_model_dir, tiny_data, tmp_path, one_thread):
    """A run started afresh into an output whose earlier run trained over another run's model, now over a plain
    model: that record is not this run's."""
    from ftctl.runpaths import BASE_RUN
    from ftctl.trainer.run import train

    out = tmp_path / "out"
    out.mkdir()
    (out / BASE_RUN).write_text(json.dumps({"run": "elsewhere", "step": 1, "ended_at": 1.0, "weights": {}}))
    (out / "spec.json").write_text("{}")  # an earlier run's output
    assert train(*make_run(tiny_model_dir, tiny_data, out, "lora", max_steps=1, lora_r=4), echo=_quiet)
    assert not (out / BASE_RUN).exists()


def test_a_finished_run_relaunched_from_an_older_kept_checkpoint_says_its_final_model_is_replaced(
    tiny_model_dir, tiny_data, tmp_path, one_thread, caplog
):
    """A run finished at step 4 (checkpoint-2, checkpoint-4, its final adapter); checkpoint-4 deleted to save room;
    the same launch resumed checkpoint-2, trained steps 3-4 again and replaced the final adapter, saying nothing of
    it. Launch's preflight and the trainer say it."""
    import shutil

    from ftctl.preflight import WARNING, check_resume
    from ftctl.trainer.run import train

    out = tmp_path / "e1"
    every = {"save_steps": 2, "resume": "auto", "lora_r": 4, "save_total_limit": 5}
    assert train(*make_run(tiny_model_dir, tiny_data, out, "lora", max_steps=4, **every), echo=_quiet)
    said = check_resume(*make_run(tiny_model_dir, tiny_data, out, "lora", max_steps=8, **every))  # goes on
    assert not [f for f in said if "final model is" in f.what], said
    shutil.rmtree(out / "checkpoint-4")
    line = (
        f"{out}'s final model is step 4's; checkpoint-2 is the newest kept: steps 3-4 are trained again, and their "
        "final model replaces step 4's; another --output keeps step 4's"
    )
    said = check_resume(*make_run(tiny_model_dir, tiny_data, out, "lora", max_steps=4, **every))
    assert [(f.level, f.what) for f in said] == [(WARNING, line)]
    with caplog.at_level(logging.WARNING, logger="ftctl"):
        assert train(*make_run(tiny_model_dir, tiny_data, out, "lora", max_steps=4, **every), echo=_quiet)
    assert line in _said(caplog)
    caplog.clear()  # that relaunch wrote the final model again: nothing past its checkpoint-4 now
    said = check_resume(*make_run(tiny_model_dir, tiny_data, out, "lora", max_steps=6, **every))
    assert not [f for f in said if "final model is" in f.what], said
