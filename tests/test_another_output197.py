"""A launch refused for its output says how to give it another (explore36 item 5): "another --output (or -o
run_name=...)" was said where --output was given, and -o run_name=x then changed nothing (the same refusal). Another
run_name is offered only where the output is the one the name gives (runs/<name>)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ftctl.backend import launching, prepare, refuse_a_launch_under_way
from ftctl.errors import FtctlError
from ftctl.spec import build

GIVEN, NAMED = "another --output", "another -o run_name=... (or --output DIR)"


def _prep(**values):
    run = dict(method="lora", gpus="1xA100", backend="slurm", model_name_or_path="lmsys/vicuna-7b-v1.5")
    return prepare(build({**run, "data_path": "s3://b/conv.json", **values}))


def test_the_spec_says_another_run_name_only_where_the_name_gives_the_output(tmp_path):
    assert build({"run_name": "r"}).another_output == NAMED
    assert build({"output_dir": str(tmp_path / "a")}).another_output == GIVEN
    assert build(flags={"output_dir": "s3://b/a"}, overrides=["run_name=r"]).another_output == GIVEN  # --output
    assert build(overrides=["output_dir=runs/a"]).another_output == GIVEN  # -o output_dir=


@pytest.mark.parametrize("given", [True, False], ids=["--output", "runs/<run_name>"])
def test_a_launch_into_a_run_being_launched_names_a_way_out_that_moves_it(tmp_path, monkeypatch, given):
    """`launch --dry-run` into a run another launch holds: the refusal's way to another output moves it (the
    resolved spec has output_dir set either way: the hint is of the spec as asked)."""
    monkeypatch.chdir(tmp_path)
    out = {"output_dir": str(tmp_path / "a")} if given else {}
    rendered = _prep(run_name="a", **out)
    assert rendered.run_dir == Path(tmp_path / ("a" if given else "runs/a")) and rendered.spec.output_dir
    with launching(rendered):
        with pytest.raises(FtctlError) as e:
            refuse_a_launch_under_way(rendered)
    assert str(e.value).endswith(f"or give this run {GIVEN if given else NAMED}."), e.value
    moved = _prep(run_name="b", **out).run_dir  # what the hint's run_name=... does
    assert (moved == rendered.run_dir) is given


@pytest.mark.parametrize("given", [True, False], ids=["--output", "runs/<run_name>"])
def test_a_relaunch_on_other_data_names_a_way_out_that_moves_it(tmp_path, monkeypatch, given):
    """The other-data refusal, by the launch's preflight and by write_files (settings.other_data)."""
    from ftctl.backend import write_files
    from ftctl.checkpoints import write_manifest
    from ftctl.checkpoints.settings import settings
    from ftctl.preflight import ERROR, check_resume
    from tests.s3_fixtures import make_checkpoint

    monkeypatch.chdir(tmp_path)
    out = {"output_dir": str(tmp_path / "a")} if given else {}
    first = _prep(run_name="a", **out)
    write_files(first)
    run = tmp_path / ("a" if given else "runs/a")
    make_checkpoint(run, 5)
    write_manifest(str(run / "checkpoint-5"), 5, 1, "h", settings=settings(first.spec, first.plan))
    rendered = _prep(run_name="a", data_path="s3://b/other.json", **out)
    said = f"For a new run: {GIVEN if given else NAMED}."
    found = check_resume(rendered.spec, rendered.plan, rendered.another_output)
    assert [f.level for f in found] == [ERROR] and found[0].what.endswith(said), found
    with pytest.raises(FtctlError) as e:
        write_files(rendered)
    assert str(e.value).endswith(said), e.value
