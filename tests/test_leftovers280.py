"""Leftovers of explore60's first contact and of helper 275's revision pinning (helper 280).

- a TRL-style flag pasted with its value (--max_steps=5) is answered with that value (-o max_steps=5), quoted;
- a relaunch refused for another method names the flag the user gives it (--method lora), not always -o;
- a typo of a known -Instruct id is told the -Instruct id (hub.nearest_id), not the base model;
- a model named as before the Hub's namespaces (gpt2) is told its ORG/NAME id (hub.namespaced);
- merge, chat and eval load an adapter's base at the commit the run pinned (spec.json's model_revision), not at main
  as it is now; and a resume onto another commit of the base is said (checkpoints.settings.BASE), not refused.

The revision tests build a real Hugging Face cache on disk (tests/hf_cache_fixtures.py, helper 275's); nothing is
mocked; the Hub is a port that refuses, or a stand-in of its API on loopback."""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from click.testing import CliRunner

from ftctl.cli import launch, main
from ftctl.spec import build, pinned
from tests.hf_cache_fixtures import ONE_LAYER, REPO, TWO_LAYERS, _clear_caches, _ref, hf_cache, two_commits  # noqa: F401


# ------------------------------------------------------------------------------------------ pasted flags
def test_a_pasted_flag_is_answered_with_the_value_it_gave():
    from ftctl.foreign_args import run_key_hint

    def hint(*argv):
        return run_key_hint(argv[1].partition("=")[0], launch, list(argv))

    assert hint("launch", "--max_steps=5") == "max_steps is a run key: -o max_steps=5 (or max_steps: 5 in a run file)."
    assert hint("launch", "--max_steps", "-1").startswith("max_steps is a run key: -o max_steps=-1 ")
    assert hint("launch", "--lr", "1e-4").startswith("learning_rate is a run key: -o learning_rate=1e-4 ")
    # a flag of its own: that, then -o; a value with a space: quoted for the shell, and in the run file as a string
    assert hint("launch", "--model_name_or_path", "my model") == (
        "model_name_or_path is a run key: --model 'my model', or -o 'model_name_or_path=my model' (or "
        'model_name_or_path: "my model" in a run file).'
    )
    # no value given (a bare flag, the next word another flag): VALUE, as before
    assert "-o max_steps=VALUE" in hint("launch", "--max_steps", "--gpus", "cpu")


# ------------------------------------------------------------------------------------------ hub ids
def test_a_typo_of_a_known_instruct_id_is_told_the_instruct_id():
    from ftctl.hub import nearest_id
    from ftctl.plan import KNOWN_MODELS

    assert nearest_id("meta-llama/Llama-3.1-8b-instrut", KNOWN_MODELS) == "meta-llama/Llama-3.1-8b-instruct"
    assert nearest_id("HuggingFaceTB/SmolLM2-135M-Instruc", KNOWN_MODELS) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert nearest_id("google/gemma-2-9b-itt", KNOWN_MODELS) == "google/gemma-2-9b-it"
    assert nearest_id("meta-llama/Llama-3-8B", KNOWN_MODELS) == "meta-llama/Llama-3.1-8B"  # a base: a base
    assert nearest_id("acme/chat-7b", KNOWN_MODELS) is None


class _Api(BaseHTTPRequestHandler):
    """The Hub's /api/models/NAME: an old id redirected to its ORG/NAME, as huggingface.co answers it."""

    def do_GET(self):
        if self.path == "/api/models/bert-base-uncased":
            self.send_response(307)
            self.send_header("Location", "/api/models/google-bert/bert-base-uncased")
            self.end_headers()
            return
        body, status = (b'{"id": "google-bert/bert-base-uncased"}', 200)
        if self.path != "/api/models/google-bert/bert-base-uncased":
            body, status = b'{"error": "Repository not found"}', 404
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_a_model_named_without_its_org_is_told_its_id(monkeypatch):
    from ftctl.hub import namespaced

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the causal LMs that moved: known here
    assert namespaced("gpt2") == "openai-community/gpt2" and namespaced("DistilGPT2") == "distilbert/distilgpt2"
    assert namespaced("bert-base-uncased") is None  # offline: not asked
    monkeypatch.delenv("HF_HUB_OFFLINE")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Api)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
        assert namespaced("bert-base-uncased") == "google-bert/bert-base-uncased"
        assert namespaced("no-such-model") is None
    finally:
        server.shutdown()
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # no Hub
    assert namespaced("bert-base-uncased") is None and namespaced("../x") is None


# ------------------------------------------------------------------------------------------ resumes
def _checkpoint(run, spec, step: int = 2):
    from ftctl.checkpoints import write_manifest
    from ftctl.checkpoints.settings import settings
    from ftctl.plan import make_plan

    ckpt = run / f"checkpoint-{step}"
    ckpt.mkdir(parents=True)
    (ckpt / "adapter_model.safetensors").write_bytes(b"weights")
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step, "max_steps": 10}))
    write_manifest(str(ckpt), step, 1, spec.digest(), settings=settings(spec, make_plan(spec)))


def test_a_relaunch_with_another_method_names_the_flag(tmp_path):
    from ftctl.checkpoints.settings import compare, saved, settings
    from ftctl.errors import FtctlError
    from ftctl.plan import make_plan
    from ftctl.preflight import check_resume

    run = tmp_path / "run"
    values = {"gpus": "cpu", "model_params": "1b", "model_name_or_path": "org/model", "output_dir": str(run)}
    _checkpoint(run, build(values, {"method": "lora"}))
    spec = build(values, {"method": "qlora"})
    [refused] = check_resume(spec, make_plan(spec))
    assert "this run asks for method=qlora, which cannot continue it. Relaunch with --method lora to resume" in (
        refused.text
    )
    # as the user gave it, where the spec is at hand: -o, or the run file's line
    recorded = saved(str(run / "checkpoint-2"))
    for spec, said in (
        (build(values, overrides=["method=qlora"]), "Relaunch with -o method=lora to"),
        (build({**values, "method": "qlora"}), "Relaunch with method: lora in the run file to"),
        (build(values, {"method": "qlora"}), "Relaunch with --method lora to"),
    ):
        with pytest.raises(FtctlError, match=said):
            compare("checkpoint-2", recorded, settings(spec, make_plan(spec)), spec)


def test_a_resume_onto_another_commit_of_the_base_is_said(two_commits, tmp_path):  # noqa: F811
    from ftctl.checkpoints.settings import settings
    from ftctl.plan import make_plan
    from ftctl.preflight import WARNING, check_resume

    run = tmp_path / "run"
    spec, _ = pinned(build({"method": "lora", "gpus": "cpu", "model_name_or_path": REPO, "output_dir": str(run)}))
    assert spec.model_revision == ONE_LAYER and settings(spec, make_plan(spec))["model_revision"] == ONE_LAYER
    _checkpoint(run, spec)
    assert check_resume(spec, make_plan(spec)) == []
    other = replace(spec, model_revision=TWO_LAYERS)
    [said] = check_resume(other, make_plan(other))
    assert said.level == WARNING and said.text.startswith(
        f"checkpoint-2 was saved with other settings: model_revision {ONE_LAYER} -> {TWO_LAYERS}; the run goes on "
        "from step 2 with the new ones"
    )
    local = build({"method": "lora", "gpus": "cpu", "model_params": "1b", "model_name_or_path": str(tmp_path)})
    assert "model_revision" not in settings(local, make_plan(local))  # none to record


# ------------------------------------------------------------------------------------------ merge, chat, eval
@pytest.fixture
def pinned_run(two_commits, tmp_path):  # noqa: F811
    """A lora run of REPO pinned at ONE_LAYER's commit (its adapter, tokenizer and spec.json as launch and the
    trainer leave them); then REPO's main moves to TWO_LAYERS' (an update of the model on the Hub)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ftctl import hub
    from ftctl.plan import dump_run, make_plan
    from ftctl.trainer.trained import name_base

    run = tmp_path / "run"
    spec, _ = pinned(build({"method": "lora", "gpus": "cpu", "model_name_or_path": REPO, "output_dir": str(run)}))
    snapshot = hub.cached_snapshot(REPO, ONE_LAYER)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(snapshot), LoraConfig(r=2, target_modules=["q_proj"]))
    model.save_pretrained(run)
    AutoTokenizer.from_pretrained(snapshot).save_pretrained(run)
    name_base(run, REPO)
    (run / "spec.json").write_text(dump_run(spec, make_plan(spec)))
    _ref(two_commits, REPO, "main", TWO_LAYERS)
    _clear_caches()
    return run


@pytest.mark.parametrize("offline", [False, True], ids=["Hub-unreachable", "HF_HUB_OFFLINE"])
def test_chat_and_eval_load_the_base_at_the_runs_commit(pinned_run, monkeypatch, offline):
    from ftctl.trainer import trained

    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    found = trained.find(str(pinned_run))
    assert found.base == REPO and found.base_revision == ONE_LAYER
    model = trained.load(found, "fp32", as_trained=True)  # chat's and eval's load (trainer/chat.py)
    assert model.get_base_model().config.num_hidden_layers == 1  # main is 2 now
    if not offline:  # (huggingface_hub reads HF_HUB_OFFLINE at its import: set here, it would ask the Hub of main)
        base = trained.load(found, "fp32", base=REPO).get_base_model()
        assert base.config.num_hidden_layers == 2  # merge's --base: as named


def test_merge_writes_the_adapter_into_the_runs_commit(pinned_run, tmp_path):
    out = tmp_path / "merged"
    r = CliRunner().invoke(main, ["merge", str(pinned_run), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 1
