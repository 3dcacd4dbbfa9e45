"""Leftovers of model_revision pinning (helper 288), on a real Hugging Face cache on disk (tests/hf_cache_fixtures.py:
a tiny Llama at two commits, 1 and 2 layers, the cache's refs/main at ONE_LAYER's) and, for the Hub answering, the
loopback stand-in of its model_info endpoint that the real huggingface_hub client asks (hub_api; nothing is mocked):

1. the plan sizes the model at the commit the launch pins where the cache holds it (the Hub's main newer than the
   cache's, a tag the cache does not name), not at the cache's main;
2. the model card of a pinned run names its base model's commit;
3. a Slurm job whose environment is offline is refused before sbatch where its HF cache, seen from here, lacks the
   pinned commit."""

from __future__ import annotations

import hashlib
import json

import pytest

from ftctl.errors import FtctlError
from ftctl.spec import build
from tests.hf_cache_fixtures import (  # noqa: F401 (the fixtures)
    ONE_LAYER,
    REPO,
    TWO_LAYERS,
    _clear_caches,
    hf_cache,
    hub_api,
    two_commits,
)

ELSEWHERE = hashlib.sha1(b"a commit no cache here holds").hexdigest()


def _spec(tmp_path, **values):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"text": "hi hi hi"}) + "\n" for _ in range(4)))
    return build(
        {
            "method": "lora",
            "gpus": "cpu",
            "model_name_or_path": REPO,
            "data_path": str(rows),
            "output_dir": str(tmp_path / "out"),
            **values,
        }
    )


# ------------------------------------------------------------------------------------------ 1. sized at the pin
def test_the_plan_sizes_the_commit_the_launch_pins(two_commits, hub_api, tmp_path, monkeypatch):  # noqa: F811
    """The cache's refs/main is ONE_LAYER's (an old download); the Hub's main is TWO_LAYERS' now, which the cache
    holds too: `plan` and the launch's plan size the 2-layer model they pin, not the 1-layer one of the cache's main."""
    from ftctl.backend import plan_for, prepare

    monkeypatch.chdir(tmp_path)
    spec, plan = plan_for(_spec(tmp_path))
    assert (spec.model_revision, plan.model.layers) == (TWO_LAYERS, 2)
    rendered = prepare(_spec(tmp_path))
    assert (rendered.spec.model_revision, rendered.plan.model.layers) == (TWO_LAYERS, 2)
    assert json.loads(rendered.files["spec.json"])["spec"]["model_revision"] == TWO_LAYERS
    # ORG/NAME@v3: a tag the cache does not name (no refs/v3), the Hub's v3 a commit the cache holds
    hub_api.commits["main"], hub_api.commits["v3"] = ONE_LAYER, TWO_LAYERS
    spec, plan = plan_for(_spec(tmp_path, model_name_or_path=f"{REPO}@v3"))
    assert (spec.model_revision, plan.model.layers) == (TWO_LAYERS, 2)


def test_a_pin_the_cache_lacks_is_sized_as_before(two_commits, hub_api, tmp_path, monkeypatch):  # noqa: F811
    """The Hub's main a commit this cache does not hold: the plan sizes the cache's main, as before pinning, and says
    nothing new; the pin is still the Hub's."""
    from ftctl.backend import plan_for

    monkeypatch.chdir(tmp_path)
    hub_api.commits["main"] = ELSEWHERE
    spec, plan = plan_for(_spec(tmp_path))
    assert (spec.model_revision, plan.model.layers) == (ELSEWHERE, 1)
    assert not [n for n in plan.notes if ELSEWHERE in n]


def test_a_plan_that_names_another_run_directory_is_pinned_in_that_one(two_commits, tmp_path, monkeypatch):  # noqa: F811
    """The pin is asked before the plan, in the run directory the spec names then; where the plan names another (a
    local fallback to qlora moves runs/ftctl-lora-x to runs/ftctl-qlora-x), the pin is that directory's: its spec.json's
    commit, which a relaunch keeps."""
    from pathlib import Path

    from ftctl.backend import Pin, sized_at_pin
    from ftctl.runpaths import RunPaths

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = _spec(tmp_path)
    sized, pin = sized_at_pin(spec)
    assert sized.model_revision == ONE_LAYER
    assert pin.on(spec, RunPaths(pin.run_dir))[0].model_revision == ONE_LAYER  # the cache's refs/main, offline
    other = tmp_path / "other"
    other.mkdir()
    (other / "spec.json").write_text(json.dumps({"spec": {"model_name_or_path": REPO, "model_revision": TWO_LAYERS}}))
    assert pin.on(spec, RunPaths(other))[0].model_revision == TWO_LAYERS
    refused = Pin(Path(tmp_path / "elsewhere"), refused=FtctlError("not asked"))
    assert refused.on(spec, RunPaths(other))[0].model_revision == TWO_LAYERS


# ------------------------------------------------------------------------------------------ 2. the card's commit
def test_cards_name_the_base_s_pinned_commit(two_commits, tmp_path, monkeypatch):  # noqa: F811
    """A lora run pinned to TWO_LAYERS (the cache's main is ONE_LAYER's): its card and the card of its merge (a real
    `ftctl merge`, offline, of a PEFT adapter over that commit) name the base with its commit; the card's base_model
    stays ORG/NAME, as the Hub takes it; vLLM is told the commit. A run never pinned says no commit."""
    from huggingface_hub import ModelCard
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from ftctl import hub
    from ftctl.trainer import model_card
    from ftctl.trainer.merge import merge

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run = tmp_path / "run"
    spec = _spec(tmp_path, model_revision=TWO_LAYERS, output_dir=str(run))
    card = model_card.text(spec, REPO, adapter=True, local_dir=str(tmp_path))
    assert f"A LoRA adapter of [{REPO}](https://huggingface.co/{REPO}) at commit {TWO_LAYERS} with ftctl" in card
    assert f"vllm serve {REPO} --revision {TWO_LAYERS} --enable-lora" in card
    assert ModelCard(card).data.base_model == REPO
    unpinned = model_card.text(_spec(tmp_path), REPO, adapter=True, local_dir=str(tmp_path))
    assert "at commit" not in unpinned and "--revision" not in unpinned

    base = AutoModelForCausalLM.from_pretrained(hub.cached_snapshot(REPO, TWO_LAYERS))
    adapter = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"]))
    adapter.peft_config["default"].base_model_name_or_path = REPO
    adapter.save_pretrained(run)
    (run / "spec.json").write_text(json.dumps({"spec": spec.to_dict()}))
    merged = merge(str(run), str(tmp_path / "merged"))
    card = (merged / "README.md").read_text()
    assert f"merged into [{REPO}](https://huggingface.co/{REPO}) at commit {TWO_LAYERS} (" in card, card
    assert ModelCard(card).data.base_model == REPO
    assert json.loads((merged / "ftctl-merge.json").read_text())["base_revision"] == TWO_LAYERS
    assert AutoModelForCausalLM.from_pretrained(merged).config.num_hidden_layers == 2


# ------------------------------------------------------------------------------------------ 3. Slurm, offline
@pytest.fixture
def slurm_here(tmp_path, monkeypatch):
    """Fake sinfo and sbatch first on PATH (no cluster; tests/test_slurm_checks.py's way): one partition, default,
    whose node is this machine (a one-machine Slurm, as the test cluster: its /tmp is the nodes'); ``nodes`` names
    another node instead."""
    import socket
    import sys
    from pathlib import Path

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()

    def nodes(name: str) -> None:
        (bin_dir / "sinfo.out").write_text(f"gpu*|{name}|idle|64|512000|1-00:00:00|up|gpu:a100:8(S:0-1)\n")

    nodes(socket.gethostname().split(".")[0])
    for name, body in (("sinfo", f"cat {bin_dir / 'sinfo.out'}"), ("sbatch", "echo 'sbatch: not here' >&2; exit 1")):
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{Path(sys.executable).parent}:/usr/bin:/bin")
    monkeypatch.delenv("SLURM_CONF", raising=False)
    monkeypatch.chdir(tmp_path)
    return nodes


def _checked(tmp_path, **flags):
    from ftctl.backend import get, prepare

    rendered = prepare(_spec(tmp_path, backend="slurm", gpus="1xA100", output_dir=str(tmp_path / "out"), **flags))
    get("slurm").check(rendered)
    return rendered


def test_an_offline_job_whose_cache_lacks_the_pinned_commit_is_refused_before_sbatch(
    two_commits,  # noqa: F811
    hub_api,  # noqa: F811
    slurm_here,
    tmp_path,
    monkeypatch,
):
    """The Hub's main is a commit this cache (the job's: the same HF_HOME, seen here) lacks, and the run sets
    HF_HUB_OFFLINE for its job: one line naming the commit and the download, before sbatch (not after the queue
    wait, at loading)."""
    hub_api.commits["main"] = ELSEWHERE
    offline = {"HF_HUB_OFFLINE": "1"}
    with pytest.raises(FtctlError) as e:
        _checked(tmp_path, env=offline)
    assert str(e.value) == (
        f"{REPO} at commit {ELSEWHERE}, the run's pinned model_revision, is not in the Hugging Face cache the job "
        f"reads ({two_commits}), and HF_HUB_OFFLINE is set for the job: it would stop at loading the model after its "
        f"queue wait. Download it there first: HF_HUB_CACHE={two_commits} hf download {REPO} --revision {ELSEWHERE}, "
        f"or launch with -o model_revision={ONE_LAYER} (a commit that cache has)."
    )
    # the cache has the commit pinned: no word
    hub_api.commits["main"] = TWO_LAYERS
    assert _checked(tmp_path, env=offline).spec.model_revision == TWO_LAYERS
    # the job reaches the Hub: it downloads the commit itself
    hub_api.commits["main"] = ELSEWHERE
    assert _checked(tmp_path).spec.model_revision == ELSEWHERE
    # the cache in this machine's /tmp and the nodes other machines: theirs is not this one, nothing to tell here
    slurm_here("g1")
    assert _checked(tmp_path, env=offline).spec.model_revision == ELSEWHERE
