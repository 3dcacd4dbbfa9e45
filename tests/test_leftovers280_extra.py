"""Helper 280's fixes of files it does not own (task-280-extra.patch): the CLI's and preflight's side of
tests/test_leftovers280.py. No network: HF_HUB_OFFLINE, or a Hub that refuses at once."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from ftctl.cli import main
from tests.hf_cache_fixtures import hf_cache, two_commits  # noqa: F401 (the fixtures)


def _said(*args, **env) -> tuple[int, str]:
    r = CliRunner().invoke(main, list(args), env={"HF_HUB_OFFLINE": "1", **env})
    assert "Traceback" not in r.output, r.output
    return r.exit_code, r.output


def test_a_pasted_flag_is_answered_with_its_value_on_the_command_line():
    code, out = _said("plan", "--gpus", "cpu", "--method", "lora", "--model-params", "1b", "--max_steps=5")
    assert code == 2 and "max_steps is a run key: -o max_steps=5 (or max_steps: 5 in a run file)." in out, out


def test_a_model_named_without_its_org_is_told_its_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out = _said("plan", "--gpus", "cpu", "--method", "lora", "--model", "gpt2")
    assert code != 0 and out.strip().splitlines()[-1] == (
        "error: --model gpt2: no such directory, and not a hub id (org/name): the Hub's id of that model is "
        "openai-community/gpt2; pass --model openai-community/gpt2."
    ), out
    from ftctl.errors import FtctlError
    from ftctl.plan import model_shape

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FtctlError, match="the Hub's id of that model is openai-community/gpt2"):
        model_shape("gpt2")  # the planner's question (its text alone): the id in it too
    # a directory of that name here is the model, as transformers reads it
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps({"hidden_size": 64, "num_hidden_layers": 2}))
    code, out = _said("plan", "--gpus", "cpu", "--method", "lora", "--model", "gpt2")
    assert "openai-community" not in out, out
    # a name the Hub never had: as before
    code, out = _said("plan", "--gpus", "cpu", "--method", "lora", "--model", "no-such-dir")
    assert code != 0 and "no-such-dir: no such directory, and not a hub id (org/name)" in out, out


def test_a_relaunch_refused_names_the_method_as_it_was_given(tmp_path):
    from ftctl.plan import make_plan
    from ftctl.preflight import check_resume
    from ftctl.spec import build
    from tests.test_leftovers280 import _checkpoint

    run = tmp_path / "run"
    values = {"gpus": "cpu", "model_params": "1b", "model_name_or_path": "org/model", "output_dir": str(run)}
    _checkpoint(run, build(values, {"method": "lora"}))
    for spec, said in (
        (build(values, overrides=["method=qlora"]), "Relaunch with -o method=lora to resume it"),
        (build(values, {"method": "qlora"}), "Relaunch with --method lora to resume it"),
    ):
        [refused] = check_resume(spec, make_plan(spec))
        assert said in refused.text, refused.text


def test_chat_compare_loads_a_full_model_runs_base_at_its_commit(two_commits, tmp_path):  # noqa: F811
    """`ftctl chat RUN --compare` of an fft run: the base it loads beside the run is the commit the run pinned."""
    from ftctl import hub
    from ftctl.plan import dump_run, make_plan
    from ftctl.spec import build, pinned
    from ftctl.trainer import chat
    from tests.hf_cache_fixtures import ONE_LAYER, REPO, TWO_LAYERS, _clear_caches, _ref, _tiny_model

    run = tmp_path / "run"
    spec, _ = pinned(build({"method": "fft", "gpus": "cpu", "model_name_or_path": REPO, "output_dir": str(run)}))
    assert spec.model_revision == ONE_LAYER
    _tiny_model(run, 3)  # the run's own weights: 3 layers, neither commit's
    (run / "spec.json").write_text(dump_run(spec, make_plan(spec)))
    _ref(two_commits, REPO, "main", TWO_LAYERS)
    _clear_caches()
    loaded = chat.load(str(run))
    assert loaded.model.config.num_hidden_layers == 3
    with loaded.base() as base:
        assert base.config.num_hidden_layers == 1, hub.cached_refs(REPO)  # main is 2 now
