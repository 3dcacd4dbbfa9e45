"""Several users and ftctl homes on one machine (a university login node; explore28's open questions): relaunches in
one second keep every earlier spec.json, launches from other homes or users into one run meet one lock in the run
directory, lock files another user created still lock."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from ftctl.backend import launching, prepare, write_files
from ftctl.errors import FtctlError
from ftctl.spec import build
from tests.user_fixtures import as_another_user, shared_dir, theirs


@pytest.fixture
def shared():
    yield from shared_dir()


def _prep(out: Path, **flags):
    values = dict(
        method="lora",
        gpus="1xA100",
        backend="slurm",
        output_dir=str(out),
        model_name_or_path="lmsys/vicuna-7b-v1.5",
        data_path="s3://b/conv.json",
    )
    return prepare(build({**values, **flags}))


def test_relaunches_in_one_second_keep_every_earlier_spec(tmp_path, monkeypatch, capsys):
    """The earlier spec.json a relaunch with other settings keeps was named by the second: the third launch in one
    second replaced the second's kept spec (a sweep script relaunching one run, nothing said)."""
    monkeypatch.setattr(time, "strftime", lambda fmt, *t: "20261205-120000")
    out = tmp_path / "run"
    specs = []
    for lr in (1e-4, 2e-4, 3e-4, 4e-4):
        write_files(_prep(out, learning_rate=lr))
        specs.append((out / "spec.json").read_text())
    names = ["spec.20261205-120000.json", "spec.20261205-120000-2.json", "spec.20261205-120000-3.json"]
    assert sorted(k.name for k in (out / ".ftctl").glob("spec.*.json")) == sorted(names)
    assert [(out / ".ftctl" / name).read_text() for name in names] == specs[:3]
    kept = out / ".ftctl" / names[-1]
    assert f"(its earlier spec.json: {kept})" in capsys.readouterr().err


def test_a_launch_from_another_home_or_user_into_a_run_being_launched_is_refused(shared, monkeypatch):
    """Two ftctl homes (two users on a login node, or FTCTL_HOME set per project) launching into one run directory
    of a shared project directory within the second before a trainer holds the run: each launch's lock was in its
    own home, so both went ahead and one trainer trained with the other's settings. The lock is the run
    directory's: the second is refused (its dry run says so too), whoever it is; a refused launch into a new run
    directory leaves none behind."""
    from ftctl.backend import refuse_a_launch_under_way

    project = shared / "project"
    project.mkdir()
    theirs(project, 0o777)  # the group's
    other_home = shared / "home-b"
    other_home.mkdir()
    theirs(other_home, 0o777)
    out = project / "run"
    rendered = _prep(out)

    def launch():
        with launching(rendered):
            return "launched"

    with launching(rendered):
        for look in (launch, lambda: refuse_a_launch_under_way(rendered)):
            code, said = as_another_user(look, {"FTCTL_HOME": str(other_home)})
            assert code == 1, said
            assert said.startswith(f"error: {out} is being launched into by `ftctl launch` (pid {os.getpid()} on ")
    assert as_another_user(launch, {"FTCTL_HOME": str(other_home)}) == (0, "launched")  # once it is done

    new = project / "new" / "run"
    with pytest.raises(FtctlError, match="refused"):
        with launching(_prep(new)):
            raise FtctlError("refused")  # a check after the lock (a second job, checkpoints of another kind)
    assert not (project / "new").exists()
    with pytest.raises(SystemExit):  # `ftctl train` into a new run directory, its run ended: the run's lock stays
        with launching(_prep(new)):
            (new / "spec.json").write_text("{}")
            (new / ".ftctl" / "status").write_text("complete")
            raise SystemExit(0)
    assert (new / ".ftctl" / "launch.lock").is_file()
