"""Launch pins a hub model to its commit (helper 275, task-275-extra.patch): backend.prepare writes the commit its
revision is into spec.json, which every node and every requeued or recovered attempt reads, and says it; `ftctl plan`
shows it in the model row. The Hugging Face cache is a real one on disk (test_revision275's fixtures); no network."""

from __future__ import annotations

import json

from click.testing import CliRunner

from ftctl.backend import prepare, write_files
from ftctl.cli import main
from ftctl.spec import build
from tests import test_revision275 as cached
from tests.test_revision275 import ONE_LAYER, REPO, TWO_LAYERS, _ref

hf_cache, two_commits = cached.hf_cache, cached.two_commits  # (its fixtures: a Hugging Face cache on disk)


def _launch_spec(tmp_path, **values) -> dict:
    return json.loads(_prepared(tmp_path, **values).files["spec.json"])["spec"]


def _prepared(tmp_path, **values):
    return prepare(
        build(
            {
                "method": "lora",
                "gpus": "cpu",
                "backend": "slurm",
                "model_name_or_path": REPO,
                "output_dir": str(tmp_path / "run"),
                **values,
            }
        )
    )


def test_launch_records_the_commit_and_says_it(two_commits, tmp_path, capsys):
    assert _launch_spec(tmp_path)["model_revision"] == ONE_LAYER
    assert f"note: {REPO}: model_revision main is commit {ONE_LAYER}" in capsys.readouterr().err
    _ref(two_commits, REPO, "main", TWO_LAYERS)  # the repository updated: a new launch pins the new main
    assert _launch_spec(tmp_path)["model_revision"] == TWO_LAYERS
    assert _launch_spec(tmp_path, model_revision="v1.0")["model_revision"] == ONE_LAYER


def test_plan_shows_the_commit(two_commits):
    result = CliRunner().invoke(main, ["plan", "--gpus", "cpu", "--model", REPO, "-o", "model_revision=v1.0"])
    assert result.exit_code == 0, result.output
    assert f"{REPO}@{ONE_LAYER}: " in result.output
    assert "model_revision v1.0 is commit" not in result.output  # the model row says it; the note is launch's


def test_a_launch_the_commit_of_which_cannot_be_told_goes_on_unpinned(hf_cache, tmp_path, capsys):
    """Not in the cache, and no Hub: launched as before (a known id, sized without the Hub), and as quietly: a line on
    every launch and render of a machine without the Hub, before any error, said nothing to act on."""
    assert "model_revision" not in _launch_spec(tmp_path, model_name_or_path="Qwen/Qwen2.5-0.5B")
    assert capsys.readouterr().err == ""


def test_a_relaunch_goes_on_with_its_runs_commit(two_commits, tmp_path, capsys):
    """A run relaunched into its output (resumed a week later) after the repository was updated: it resumes with the
    commit its checkpoints trained on, unless it asks for another."""
    write_files(_prepared(tmp_path))
    _ref(two_commits, REPO, "main", TWO_LAYERS)
    capsys.readouterr()
    assert _launch_spec(tmp_path)["model_revision"] == ONE_LAYER
    assert capsys.readouterr().err == (
        f"note: {REPO}: commit {ONE_LAYER}, its run's (its spec.json's), which every node and every resumed attempt "
        "loads; -o model_revision=main for its main now.\n"
    )
    write_files(_prepared(tmp_path, model_revision="main"))
    assert "with other model_revision (its earlier spec.json: " in capsys.readouterr().err
    assert json.loads((tmp_path / "run" / "spec.json").read_text())["spec"]["model_revision"] == TWO_LAYERS
