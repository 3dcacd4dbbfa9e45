"""A hub model pinned to a commit (helper 275): TRL's model_revision (model_init_kwargs.revision, ORG/NAME@REV) is a
branch, tag or commit, resolved to the commit it is from huggingface_hub's cache (refs/<revision>, snapshots/<sha>/),
else the Hub's API; spec.json records that commit and the trainer loads it, even after refs/main moves.

Every test builds a real Hugging Face cache on disk (HF_HOME / HF_HUB_CACHE in tmp_path: blobs, snapshots linking
them, refs), two snapshots of a tiny random Llama whose configs differ (1 layer, 2 layers). No network: HF_ENDPOINT
points at a port nobody listens on (the Hub does not answer, at once), or, for the online path, at a stand-in of the
Hub's model_info endpoint on loopback (the real huggingface_hub client asks it; nothing is mocked)."""

from __future__ import annotations

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
    _tiny_model,
    hf_cache,
    hub_api,
    two_commits,
)


def _spec(**values):
    return build({"method": "lora", "gpus": "cpu", "model_name_or_path": REPO, **values})


def _spec_json(spec) -> dict:
    """What launch writes as spec.json for ``spec`` (backend.prepare: pinned, planned, dumped)."""
    from ftctl.plan import dump_run, make_plan

    spec, _ = pinned(spec)
    return json.loads(dump_run(spec, make_plan(spec)))["spec"]


# ------------------------------------------------------------------------------------------ the commit recorded
@pytest.mark.parametrize("offline", [True, False], ids=["HF_HUB_OFFLINE", "Hub-unreachable"])
def test_a_revision_is_recorded_as_its_commit_from_the_cache(two_commits, monkeypatch, offline):  # noqa: F811
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec, said = pinned(_spec())  # main
    assert spec.model_revision == ONE_LAYER
    why = "HF_HUB_OFFLINE is set" if offline else "the Hub (http://127.0.0.1:9) did not answer (ConnectError)"
    assert said == (
        f"{REPO}: model_revision main is commit {ONE_LAYER} (the Hugging Face cache's refs/main: {why}): every node "
        "and every resumed attempt loads it"
    )
    assert _spec_json(_spec(model_revision="refs/pr/1"))["model_revision"] == TWO_LAYERS
    assert _spec_json(_spec(model_revision=TWO_LAYERS))["model_revision"] == TWO_LAYERS  # a commit: itself
    # TRL's names of it: model_init_kwargs.revision (SFTConfig), and ORG/NAME@REV
    assert _spec_json(_spec(model_init_kwargs={"revision": "refs/pr/1"}))["model_revision"] == TWO_LAYERS
    assert _spec_json(build({"method": "lora", "gpus": "cpu", "model": f"{REPO}@v1.0"})) == _spec_json(
        _spec(model_revision="v1.0")
    )


def test_a_spec_json_of_a_local_model_has_no_model_revision(tmp_path):
    """Runs of a local model (or the demo's) write spec.json as before: model_revision only where a commit is."""
    local = _tiny_model(tmp_path / "local", 1)
    assert "model_revision" not in _spec_json(_spec(model_name_or_path=str(local)))


def test_the_trainer_loads_the_pinned_commit_after_main_moves(two_commits, monkeypatch):  # noqa: F811
    """A run pinned while main was ONE_LAYER's: the repository is updated (refs/main moves to TWO_LAYERS', as `hf
    download` writes it), and a node of the job, or its resumed attempt, still loads ONE_LAYER's model."""
    from ftctl.plan import make_plan
    from ftctl.trainer.model import load_model, load_tokenizer, text_config

    spec, _ = pinned(_spec())
    plan = make_plan(spec)
    _ref(two_commits, REPO, "main", TWO_LAYERS)
    _clear_caches()
    assert text_config(REPO).num_hidden_layers == 2  # main moved
    assert text_config(REPO, spec.model_revision).num_hidden_layers == 1
    assert load_model(spec, plan, on_cpu=True).config.num_hidden_layers == 1
    assert (
        load_tokenizer(REPO).eos_token == "<eos2>" and load_tokenizer(REPO, spec.model_revision).eos_token == "<eos1>"
    )
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a node told the cache only
    _clear_caches()
    assert load_model(spec, plan, on_cpu=True).config.num_hidden_layers == 1
    assert load_tokenizer(REPO, spec.model_revision).eos_token == "<eos1>"


def test_a_run_that_goes_on_keeps_its_commit(two_commits):  # noqa: F811
    """The spec.json of the run a relaunch goes on names its commit: kept where no revision is asked for, after main
    moved too; a revision asked for, or another model, is resolved afresh."""
    _ref(two_commits, REPO, "main", TWO_LAYERS)
    earlier = {"model_name_or_path": REPO, "model_revision": ONE_LAYER}
    spec, said = pinned(_spec(), earlier)
    assert spec.model_revision == ONE_LAYER and said == (
        f"{REPO}: commit {ONE_LAYER}, its run's (its spec.json's), which every node and every resumed attempt loads; "
        "-o model_revision=main for its main now"
    )
    assert pinned(_spec(model_revision="main"), earlier)[0].model_revision == TWO_LAYERS
    assert pinned(_spec(), {**earlier, "model_name_or_path": "org-275/other"})[0].model_revision == TWO_LAYERS
    assert pinned(_spec(), {"model_name_or_path": REPO})[0].model_revision == TWO_LAYERS  # (one never pinned)


# ------------------------------------------------------------------------------------------ refusals
def test_a_revision_of_a_local_model_is_refused_in_one_line(tmp_path):
    local = tmp_path / "model"
    local.mkdir()
    (local / "config.json").write_text("{}")
    with pytest.raises(FtctlError) as e:
        _spec(model_name_or_path=str(local), model_revision="v1.0")
    assert str(e.value) == (
        f"model_revision='v1.0' (run file): --model {local} is a local model which has no revisions: give the hub id "
        "(--model ORG/NAME -o model_revision=v1.0), or download that revision (hf download ORG/NAME --revision v1.0 "
        "--local-dir DIR) and pass --model DIR without model_revision."
    )
    with pytest.raises(FtctlError, match="the demo model, built here from its PyPI wheel, which has no revisions"):
        build(None, None, ["model_revision=v2"])
    # TRL's default, which the alignment handbook's recipes write out, is taken: a directory is what it is
    notes: list[str] = []
    assert build({"model_name_or_path": str(local), "model_revision": "main"}, notes=notes).model_revision is None
    assert notes == [f"model_revision main (run file): left out, {local} is a local model, which has no revisions"]
    result = CliRunner().invoke(
        main,
        ["plan", "--gpus", "cpu", "--model", str(local), "-o", "model_revision=v1.0"],
    )
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert [line for line in result.output.splitlines() if line.strip()] == [
        f"error: model_revision='v1.0' (-o): --model {local} is a local model which has no revisions: give the hub "
        "id (--model ORG/NAME -o model_revision=v1.0), or download that revision (hf download ORG/NAME --revision "
        "v1.0 --local-dir DIR) and pass --model DIR without model_revision."
    ]


def test_an_unknown_revision_is_refused_offline_saying_what_the_cache_has(two_commits, monkeypatch):  # noqa: F811
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FtctlError) as e:
        pinned(_spec(model_revision="v9"))
    assert str(e.value) == (
        f"model_revision='v9' of {REPO}: this machine's Hugging Face cache has no 'v9' of it (it has main, "
        "refs/pr/1, v1.0, 2 commits), and HF_HUB_OFFLINE is set: download it where the Hub answers (hf download "
        f"{REPO} --revision v9), unset HF_HUB_OFFLINE, or give a revision the cache has."
    )
    monkeypatch.delenv("HF_HUB_OFFLINE")  # the Hub does not answer either
    with pytest.raises(FtctlError, match=r"has no 'v9' of it .*, and the Hub \(http://127.0.0.1:9\) did not answer"):
        pinned(_spec(model_revision="v9"))
    with pytest.raises(FtctlError, match=r"model_revision='a b' \(run file\): not a branch, tag or commit name"):
        _spec(model_revision="a b")


def test_what_cannot_be_told_offline_launches_as_before(hf_cache, monkeypatch):  # noqa: F811
    """Not in the cache and no Hub: main stays unpinned, said (every launch of it worked before); a commit given whole
    is recorded as given."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec, said = pinned(_spec())
    assert spec.model_revision is None
    assert said == (
        f"{REPO} not pinned to a commit (it is not in this machine's Hugging Face cache, and HF_HUB_OFFLINE is set): "
        "each node loads its main as it is when the job starts; -o model_revision=COMMIT pins one"
    )
    spec, said = pinned(_spec(model_revision=TWO_LAYERS))
    assert spec.model_revision == TWO_LAYERS and "as given (not checked here" in said


# ------------------------------------------------------------------------------------------ online
def test_a_revision_not_in_the_cache_is_asked_of_the_hub(hub_api):  # noqa: F811
    spec, said = pinned(_spec(model_revision="v2"))
    assert spec.model_revision == ONE_LAYER
    assert said == f"{REPO}: model_revision v2 is commit {ONE_LAYER} (the Hub's v2 now): every node and every " + (
        "resumed attempt loads it"
    )
    assert pinned(_spec())[0].model_revision == TWO_LAYERS
    with pytest.raises(FtctlError) as e:
        pinned(_spec(model_revision="v9"))
    assert str(e.value) == (
        f"model_revision='v9' of {REPO}: the Hub's {REPO} has no 'v9' (no such branch, tag or commit): give a "
        "branch, tag or commit the model's Files and versions page shows."
    )
