"""Review 59's findings on model_revision pinning (helper 284), each on a real Hugging Face cache on disk
(tests/hf_cache_fixtures.py: a tiny Llama at two commits, main at ONE_LAYER's) and, for the Hub answering, a loopback
stand-in of its model_info endpoint that the real huggingface_hub client asks (hub_api; nothing is mocked):

1. the pin asks the Hub first: a machine whose cache holds an old main pins the Hub's main, not its refs/main, which
   is read only where the Hub cannot be asked, and the note says so;
2. a pinned commit missing from an offline node's cache is one line naming the commit, what the cache has and the fix;
3. offline, `ftctl plan --model ORG/NAME@dev` (a revision the cache lacks) says the revision is missing, not the model;
7. `ftctl plan` of a relaunch shows the commit the launch keeps (its run's spec.json's), not main's now."""

from __future__ import annotations

import hashlib
import json

import pytest
from click.testing import CliRunner

from ftctl.cli import main
from ftctl.errors import FtctlError
from ftctl.spec import build, pinned
from tests.hf_cache_fixtures import (  # noqa: F401 (the fixtures)
    ONE_LAYER,
    REPO,
    TWO_LAYERS,
    _clear_caches,
    _ref,
    hf_cache,
    hub_api,
    two_commits,
)

ELSEWHERE = hashlib.sha1(b"a commit no cache here holds").hexdigest()


def _spec(**values):
    return build({"method": "lora", "gpus": "cpu", "model_name_or_path": REPO, **values})


def _said(result) -> list[str]:
    return [line for line in result.output.splitlines() if line.strip()]


# ------------------------------------------------------------------------------------------ 1. the Hub first
def test_the_hub_s_main_is_pinned_over_an_old_download_s_refs_main(two_commits, hub_api):  # noqa: F811
    """The cache's refs/main is ONE_LAYER's (downloaded long ago); the Hub's main is TWO_LAYERS' now: that is pinned."""
    spec, said = pinned(_spec())
    assert spec.model_revision == TWO_LAYERS
    assert said == f"{REPO}: model_revision main is commit {TWO_LAYERS} (the Hub's main now): every node and every " + (
        "resumed attempt loads it"
    )
    assert f"/api/models/{REPO}/revision/main" in hub_api.asked
    # a tag too: the Hub's v2 is ONE_LAYER's, the cache's refs/v1.0 is not asked of it
    assert pinned(_spec(model_revision="v2"))[0].model_revision == ONE_LAYER
    # a commit given whole that the cache holds is itself, unasked
    hub_api.asked.clear()
    assert pinned(_spec(model_revision=TWO_LAYERS))[0].model_revision == TWO_LAYERS and not hub_api.asked


def test_the_cache_s_ref_is_read_where_the_hub_refuses_saying_so(two_commits, hub_api):  # noqa: F811
    """A revision the Hub has no more (a tag removed) that the cache knows: its cached commit, as every launch of it
    from this cache did before, the note saying the Hub's answer; one neither knows is refused as before."""
    spec, said = pinned(_spec(model_revision="v1.0"))
    assert spec.model_revision == ONE_LAYER
    assert said == (
        f"{REPO}: model_revision v1.0 is commit {ONE_LAYER} (the Hugging Face cache's refs/v1.0: the Hub's {REPO} has "
        "no 'v1.0' (no such branch, tag or commit)): every node and every resumed attempt loads it"
    )
    with pytest.raises(FtctlError, match=r"the Hub's org-275/tiny has no 'v9'"):
        pinned(_spec(model_revision="v9"))


# ------------------------------------------------------------------------------------------ 2. the node's cache
@pytest.mark.parametrize("offline", [True, False], ids=["HF_HUB_OFFLINE", "Hub-unreachable"])
def test_a_pinned_commit_the_node_s_cache_lacks_is_named(two_commits, monkeypatch, offline):  # noqa: F811
    """A node without the Hub whose cache holds main (ONE_LAYER) and TWO_LAYERS, not the commit the launch pinned: one
    line naming the commit, what the cache has and the fix, before any tokenizer or model is loaded."""
    from ftctl.trainer.model import load_tokenizer

    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    why = "HF_HUB_OFFLINE is set" if offline else "the Hub (http://127.0.0.1:9) did not answer (ConnectError)"
    with pytest.raises(FtctlError) as e:
        load_tokenizer(REPO, ELSEWHERE)
    assert str(e.value) == (
        f"Cannot load {REPO} at {ELSEWHERE}, its run's pinned model_revision: this machine's Hugging Face cache has no "
        f"'{ELSEWHERE}' of it (it has main, refs/pr/1, v1.0, 2 commits), and {why}. Download it into the Hugging Face "
        f"cache this machine reads (HF_HOME, HF_HUB_CACHE) where the Hub answers: hf download {REPO} --revision "
        f"{ELSEWHERE}, or relaunch with -o model_revision={ONE_LAYER} (a commit this cache has)."
    )
    assert load_tokenizer(REPO, TWO_LAYERS).eos_token == "<eos2>"  # one it has loads as before


def test_the_trainer_says_it_in_one_line(two_commits, tmp_path, monkeypatch):  # noqa: F811
    """`python -m ftctl.trainer --spec spec.json` of a run pinned to a commit this offline node's cache lacks."""
    import os
    import subprocess
    import sys

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"text": "hi hi hi"}) + "\n" for _ in range(4)))
    spec = _spec(model_revision=ONE_LAYER, data_path=str(rows), output_dir=str(tmp_path / "out"))
    from dataclasses import replace

    from ftctl.plan import dump_run, make_plan

    # launched from a machine whose cache (or Hub) had ELSEWHERE: planned there, recorded
    (tmp_path / "spec.json").write_text(dump_run(replace(spec, model_revision=ELSEWHERE), make_plan(spec)))
    proc = subprocess.run(
        [sys.executable, "-m", "ftctl.trainer", "--spec", str(tmp_path / "spec.json")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
        timeout=120,
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors and errors[0].startswith(f"error: Cannot load {REPO} at {ELSEWHERE}, its run's pinned"), proc.stderr


# ------------------------------------------------------------------------------------------ 3. plan offline
@pytest.mark.parametrize("offline", [True, False], ids=["HF_HUB_OFFLINE", "Hub-unreachable"])
def test_plan_of_a_revision_the_cache_lacks_says_the_revision(two_commits, monkeypatch, offline):  # noqa: F811
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = CliRunner().invoke(main, ["plan", "--gpus", "cpu", "--model", f"{REPO}@dev"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    why = "HF_HUB_OFFLINE is set" if offline else "the Hub (http://127.0.0.1:9) did not answer (ConnectError)"
    assert _said(result) == [
        f"error: Cannot tell the size of model '{REPO}' at 'dev': this machine's Hugging Face cache has no 'dev' of it "
        f"(it has main, refs/pr/1, v1.0, 2 commits), and {why}: download it where the Hub answers (hf download {REPO} "
        "--revision dev), or give a revision the cache has."
    ]


# ------------------------------------------------------------------------------------------ 7. plan of a relaunch
def test_plan_of_a_relaunch_shows_its_run_s_commit(two_commits, tmp_path, monkeypatch):  # noqa: F811
    """A run launched while main was ONE_LAYER's; main moved to TWO_LAYERS' since: `ftctl plan --output` of it shows
    the commit its relaunch keeps (prepare's earlier_spec), and a new output main's now."""
    from ftctl.backend import plan_for, prepare
    from ftctl.plan import dump_run

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"text": "hi hi hi"}) + "\n" for _ in range(4)))
    out = tmp_path / "out"
    out.mkdir()
    spec = _spec(data_path=str(rows), output_dir=str(out))
    first = prepare(spec)
    assert first.spec.model_revision == ONE_LAYER
    (out / "spec.json").write_text(dump_run(first.spec, first.plan))  # as launch writes it
    _ref(two_commits, REPO, "main", TWO_LAYERS)
    _clear_caches()
    assert prepare(spec).spec.model_revision == ONE_LAYER  # the launch keeps its run's
    assert plan_for(spec)[0].model_revision == ONE_LAYER
    assert plan_for(_spec(data_path=str(rows), output_dir=str(tmp_path / "new")))[0].model_revision == TWO_LAYERS
    result = CliRunner().invoke(main, ["plan", "--gpus", "cpu", "--model", REPO, "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert f"{REPO}@{ONE_LAYER}" in result.output and TWO_LAYERS not in result.output
