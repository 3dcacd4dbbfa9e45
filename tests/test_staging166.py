"""One count of a run's disk (preflight.disk_need) sizes a SkyPilot node's disk too; a docker run into object storage
is staged on this host's disk (the mounted cache root, or FTCTL_LOCAL_DIR mounted at its own path), which the launch
checks as a local run's."""

from __future__ import annotations

import shlex

import pytest

from ftctl.errors import FtctlError
from tests.render_fixtures import make_spec, prepared

MODEL = "meta-llama/Llama-3.1-8B"
SMALL = "HuggingFaceTB/SmolLM2-135M"


def test_a_sky_node_disk_holds_what_disk_need_counts():
    """The node's disk counted its own way (save_total_limit + 1 checkpoints, and the final model beside them all):
    8B sft with 6 kept asked 448 GiB. preflight.disk_need's count (the kept ones and the next, or at the end the
    final model) is the one asked: 384 GiB."""
    from ftctl.preflight import disk_need
    from ftctl.sky import render as sky_render

    flags = dict(backend="sky", method="sft", gpus="8xA100-80GB", model_name_or_path=MODEL, output_dir="s3://b/o")
    prep = prepared(["save_total_limit=6"], **flags)
    need = disk_need(prep.spec, prep.plan)
    parts = dict(sky_render.disk_parts_gib(prep.spec, prep.plan))
    assert parts[f"checkpoints of ~{sky_render._gib(need.one):.0f} each: {need.words}"] == sky_render._gib(need.gb)
    assert prep.spec.disk_size == 384 and "disk_size: 384" in prep.text


@pytest.fixture
def host(tmp_path, monkeypatch):
    """This host's caches under tmp_path; FTCTL_CACHE set here (the container is not given it)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("FTCTL_CACHE", str(tmp_path / "host-ftctl-cache"))
    monkeypatch.delenv("FTCTL_LOCAL_DIR", raising=False)
    monkeypatch.delenv("HF_HOME", raising=False)
    return tmp_path


def docker_spec(*over: str):
    return make_spec(
        list(over), backend="docker", method="lora", gpus="cpu", model_name_or_path=SMALL, output_dir="s3://b/run"
    )


def mounts(text: str) -> list[str]:
    argv = shlex.split(text)
    return [argv[i + 1] for i, a in enumerate(argv) if a == "-v"]


def test_a_docker_run_is_staged_in_the_mounted_cache_root_and_status_looks_there(host):
    from ftctl.backend import JobRef
    from ftctl.docker.backend import DockerBackend

    spec = docker_spec()
    staging = DockerBackend().staging_here(spec)
    # the container's HOME is <cache root>/ftctl/container-home; this host's FTCTL_CACHE is not the container's
    assert staging.startswith(str(host / "cache" / "ftctl" / "container-home" / ".cache" / "ftctl" / "runs") + "/")
    prep = prepared(backend="docker", method="lora", gpus="cpu", model_name_or_path=SMALL, output_dir="s3://b/run")
    assert not [m for m in mounts(prep.text) if "ftctl/runs" in m]  # inside the cache root's mount
    assert "FTCTL_LOCAL_DIR" not in prep.text
    prep.paths.spec.parent.mkdir(parents=True, exist_ok=True)
    prep.paths.spec.write_text(prep.files[prep.paths.spec.name])
    ref = JobRef("docker", prep.spec.name, str(prep.paths.root), prep.spec.name, prep.spec.output)
    assert str(DockerBackend().trainer_paths(ref).root) == staging


def test_ftctl_local_dir_stages_a_docker_run_on_the_disk_it_names(host, monkeypatch):
    """Exported here (relative: this directory's) or given with -o env, it reaches the container as an absolute
    path, mounted at that path: the fix preflight names for a full staging disk holds for docker."""
    from ftctl.docker.backend import DockerBackend

    monkeypatch.setenv("FTCTL_LOCAL_DIR", "big")
    flags = dict(backend="docker", method="lora", gpus="cpu", model_name_or_path=SMALL, output_dir="s3://b/run")
    prep = prepared(**flags)
    big = str(host / "big")
    assert DockerBackend().staging_here(prep.spec) == big
    assert f"{big}:{big}" in mounts(prep.text)
    assert f"FTCTL_LOCAL_DIR={big}" in shlex.split(prep.text)
    other = str(host / "other disk")
    prep = prepared([f"env=FTCTL_LOCAL_DIR={other}"], **flags)
    assert DockerBackend().staging_here(prep.spec) == other
    assert f"{other}:{other}" in mounts(prep.text) and f"{big}:{big}" not in mounts(prep.text)
    # a local output is not staged: nothing passed, nothing more mounted
    local = prepared(**{**flags, "output_dir": str(host / "out")})
    assert "FTCTL_LOCAL_DIR" not in local.text and DockerBackend().staging_here(local.spec) is None


def test_a_docker_launch_refuses_a_staging_disk_without_room(host, monkeypatch):
    from ftctl import backend, preflight

    monkeypatch.setenv("FTCTL_LOCAL_DIR", str(host / "big"))
    spec = docker_spec()
    asked = {}

    def stop(*args, **kwargs):
        asked.update(kwargs)
        raise FtctlError("stopped here")

    with monkeypatch.context() as m:
        m.setattr(preflight, "preflight", stop)
        with pytest.raises(FtctlError, match="stopped here"):
            backend.launch(spec, dry_run=True)
    assert asked["staging"] == str(host / "big")
    prep = prepared(backend="docker", method="fft", gpus="cpu", model_name_or_path=SMALL, output_dir="s3://b/run")
    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda p: type("U", (), {"free": 10**6})())
    (finding,) = preflight.check_disk(prep.spec, prep.plan, str(host / "big"))
    assert finding.level == preflight.ERROR and f"staged in {host / 'big'} before its upload" in finding.what
    assert "export FTCTL_LOCAL_DIR=DIR" in finding.fix


def test_a_staging_dir_that_cannot_be_made_is_refused_before_docker_runs(host, monkeypatch):
    """docker would make a missing mount point as root (the run could not write it): the launch makes it first."""
    from ftctl.docker import backend as docker_backend
    from ftctl.errors import NotSent

    (host / "a-file").write_text("")
    monkeypatch.setenv("FTCTL_LOCAL_DIR", str(host / "a-file" / "big"))
    ran = []
    monkeypatch.setattr(docker_backend, "_docker", lambda ref=None: "docker")
    monkeypatch.setattr(docker_backend, "_inspect", lambda name, docker=None: None)
    monkeypatch.setattr(docker_backend, "_run", lambda cmd: ran.append(cmd))
    prep = prepared(backend="docker", method="lora", gpus="cpu", model_name_or_path=SMALL, output_dir="s3://b/run")
    with pytest.raises(NotSent, match=r"a-file/big before its upload, which cannot be made \(Not a directory\)"):
        docker_backend.DockerBackend().send(prep)
    assert not ran
