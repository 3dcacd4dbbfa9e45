"""The docker backend with an engine on another machine (DOCKER_HOST=ssh://gpu, a docker context, podman's
CONTAINER_HOST or remote connection): a container there mounts that machine's paths and gets that machine's GPUs, so
what ftctl reads of this machine (its paths, nvidia-smi, /etc/cdi, its disk) says nothing of it. The run is shipped
there (tests/test_docker_remote193.py), a local output refused with the fix, unless the user says that machine sees the
same paths (FTCTL_DOCKER_SAME_PATHS=1: mounted as here); the engine is asked where it can say (docker info), and what
nobody here can check is said, not refused.

In this process, through tests/fake_docker.py (its ``context inspect``, ``info``) and a podman stand-in: no engine,
no container started.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from ftctl.cli import main
from ftctl.docker import backend, engine

REPO = Path(__file__).resolve().parents[1]
REMOTE_ENV = ("DOCKER_HOST", "DOCKER_CONTEXT", "CONTAINER_HOST", "CONTAINER_CONNECTION", engine.SAME_PATHS_ENV)
PODMAN_URI = "ssh://me@gpu:22/run/podman/podman.sock"


# tests/fake_docker.py with named volumes, which it does not know: each a directory of its state (volumes/NAME),
# `volume inspect` and `volume rm` of it, a `-v NAME:PATH` of run or create mounts it (made where it is not yet); `run
# --rm` (ftctl's: a container of one command, its --entrypoint, removed as it ends) runs it here at once, its volume's
# path mapped, and fails as an engine does where $FAKE_DOCKER_RUN_RM_FAILS says
VOLUMES = """#!PYTHON
import os, shutil, subprocess, sys
sys.path.insert(0, TESTS)
import fake_docker
args = sys.argv[1:]
volumes = fake_docker.STATE / "volumes"
if args[:1] == ["volume"]:
    fake_docker.log_call(args)
    if args[1] == "inspect" and not (volumes / args[-1]).is_dir():
        sys.exit(print(f"Error: no such volume: {args[-1]}", file=sys.stderr) or 1)
    if args[1] == "rm":
        shutil.rmtree(volumes / args[-1], ignore_errors=True)
    sys.exit(print(args[-1]))
# each -v NAME:PATH[:MODE]: {its index: (NAME, PATH[:MODE])}
named = {i: tuple(a.split(":", 1)) for i, a in enumerate(args) if args[i - 1] in ("-v", "--volume") and a[:1] != "/"}
if named:
    fake_docker.log_call(args)  # as sent; run below with each volume's directory
    os.environ.pop("FAKE_LOG", None)
for i, (name, at) in named.items():
    (volumes / name).mkdir(parents=True, exist_ok=True)
    args[i] = f"{volumes / name}:{at}"
if args[:2] == ["run", "--rm"]:
    fake_docker.TAKES_VALUE.add("--entrypoint")
    opts, pos = fake_docker.parse(args[2:])
    if os.environ.get("FAKE_DOCKER_RUN_RM_FAILS"):
        sys.exit(print(os.environ["FAKE_DOCKER_RUN_RM_FAILS"], file=sys.stderr) or 125)
    inside = {at.split(":")[0]: str(volumes / name) for name, at in named.values()}
    sys.exit(subprocess.call([inside.get(a, a) for a in (dict(opts)["--entrypoint"], *pos[1:])]))
sys.exit(fake_docker.main(args))
"""


def _tool(path: Path, script: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)
    return path


@pytest.fixture
def host(tmp_path, monkeypatch):
    """This machine: the fake docker first on PATH, an nvidia-smi that finds no GPU (a laptop), podman's CDI
    directories empty, no engine variables of the user's."""
    bin_dir = tmp_path / "bin"
    _tool(bin_dir / "nvidia-smi", "exit 0")  # no GPU here
    (bin_dir / "docker").write_text(VOLUMES.replace("PYTHON", sys.executable).replace("TESTS", repr(f"{REPO}/tests")))
    (bin_dir / "docker").chmod(0o755)
    # a podman stand-in: a server 5.2 (its CLI takes CDI devices), no container; connections from $FAKE_CONNECTIONS
    _tool(
        bin_dir / "podman",
        """case "$*" in
--version) echo 'podman version 5.2.0';;
"version --format {{.Server.Version}}") echo 5.2.0;;
"system connection list --format json") echo "${FAKE_CONNECTIONS:-[]}";;
"info --format {{.Host.ServiceIsRemote}}") echo "${FAKE_REMOTE_MODE:-false}";;
"image inspect"*) exit 0;;
*) echo "Error: no such container" >&2; exit 125;;
esac""",
    )
    monkeypatch.setenv("PATH", f"{bin_dir}:{Path(sys.executable).parent}:/usr/bin:/bin")
    monkeypatch.setenv("FAKE_DOCKER_STATE", str(tmp_path / "state"))
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "docker.log"))
    monkeypatch.setenv("FTCTL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for name in (*REMOTE_ENV, engine.ENV, "CUDA_VISIBLE_DEVICES", "FAKE_DOCKER_CDI", "FAKE_DOCKER_RUNTIMES"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(backend, "CDI_DIRS", (str(tmp_path / "etc-cdi"), str(tmp_path / "run-cdi")))
    return bin_dir


def test_where_the_engine_runs_is_asked_of_its_cli(host, monkeypatch):
    """Docker's CLI: DOCKER_HOST, else its context's endpoint (`docker context inspect`); podman: CONTAINER_HOST,
    CONTAINER_CONNECTION, else its default connection where it is in remote mode. A unix socket, a loopback address
    and a podman machine (a VM here, which mounts this home) are this machine."""
    cases = [
        ({}, None),
        ({"DOCKER_HOST": "ssh://gpu"}, "DOCKER_HOST=ssh://gpu"),
        ({"DOCKER_HOST": "tcp://10.0.0.5:2376"}, "DOCKER_HOST=tcp://10.0.0.5:2376"),
        ({"DOCKER_HOST": "unix:///run/user/1000/docker.sock"}, None),  # rootless docker
        ({"DOCKER_HOST": "tcp://127.0.0.1:2375"}, None),
        ({"DOCKER_CONTEXT": "gpu"}, "docker context gpu (ssh://me@gpu)"),
    ]
    monkeypatch.setenv("FAKE_DOCKER_CONTEXTS", json.dumps({"gpu": "ssh://me@gpu"}))
    for env, where in cases:
        for name in REMOTE_ENV:
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        assert engine.remote() == where, env
    monkeypatch.setenv(engine.ENV, "podman")
    monkeypatch.delenv("DOCKER_CONTEXT")
    assert engine.remote() is None
    monkeypatch.setenv("CONTAINER_HOST", PODMAN_URI)
    assert engine.remote() == f"CONTAINER_HOST={PODMAN_URI}"
    monkeypatch.delenv("CONTAINER_HOST")
    gpu = {"Name": "gpu", "URI": PODMAN_URI, "Default": True, "IsMachine": False}
    vm = {"Name": "podman-machine-default", "URI": "ssh://core@127.0.0.1:50123/run/podman.sock", "IsMachine": True}
    monkeypatch.setenv("FAKE_CONNECTIONS", json.dumps([gpu, vm]))
    assert engine.remote() is None  # a default connection, unused: podman runs containers itself
    monkeypatch.setenv("FAKE_REMOTE_MODE", "true")
    engine._remote.cache_clear()  # asked once a process: the user's connections do not change under a launch
    assert engine.remote() == f"podman connection gpu ({PODMAN_URI})"
    monkeypatch.setenv("CONTAINER_CONNECTION", "podman-machine-default")
    assert engine.remote() is None


def _launch(tiny_model_dir, tiny_data, out, gpus="cpu", *more):
    flags = ["--backend", "docker", "--gpus", gpus, "--method", "lora", "--model", str(tiny_model_dir)]
    flags += ["--data", str(tiny_data), "--output", str(out), "--container", "docker:ghcr.io/x/img:1"]
    return CliRunner().invoke(main, ["launch", *flags, "-o", "max_steps=2", *more])


def test_a_launch_on_another_machines_engine_is_refused_with_the_fix(
    host, tiny_model_dir, tiny_data, tmp_path, monkeypatch
):
    """A run on DOCKER_HOST=ssh://gpu is copied into its container there, nothing of this machine mounted: a local
    --output (its checkpoints would stay in that container) is one line with the fix, nothing started;
    FTCTL_DOCKER_SAME_PATHS=1 (a shared filesystem) mounts it as here."""
    monkeypatch.setenv("DOCKER_HOST", "ssh://gpu")
    said = _launch(tiny_model_dir, tiny_data, tmp_path / "out")
    assert said.exit_code == 2, said.output
    lines = said.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"error: --output '{tmp_path / 'out'}' is a local path, and docker runs containers on another machine "
        "(DOCKER_HOST=ssh://gpu), which cannot write here: give --output an object-store URI "
    ), said.stderr
    assert lines[0].endswith(
        "where that machine sees this one's paths at the same place (a shared filesystem), export "
        "FTCTL_DOCKER_SAME_PATHS=1."
    )
    assert "run" not in [json.loads(c)["argv"][0] for c in Path(os.environ["FAKE_LOG"]).read_text().splitlines()]
    monkeypatch.setenv(engine.SAME_PATHS_ENV, "1")
    endpoint = "http://127.0.0.1:9000"  # a MinIO here: --network=host there is gpu's loopback
    dry = _launch(tiny_model_dir, tiny_data, tmp_path / "out", "cpu", "--dry-run", "-o", f"s3_endpoint_url={endpoint}")
    assert dry.exit_code == 0 and "error" not in dry.stderr, dry.output
    assert dry.stdout.startswith("docker run --detach ")
    assert (
        f"warning: the S3 endpoint {endpoint} is this machine's loopback, and the container on DOCKER_HOST=ssh://gpu "
        "reaches that machine's: give an address it reaches (-o s3_endpoint_url=http://HOST:PORT)"
    ) in dry.stderr.splitlines()


@pytest.mark.parametrize("tool", ["docker", "podman"])
def test_a_gpu_launch_on_another_machine_is_not_judged_by_this_ones(
    host, tool, tiny_model_dir, tiny_data, tmp_path, monkeypatch
):
    """A laptop without GPUs sending a GPU run to the GPU box's engine (its paths shared): this laptop's nvidia-smi
    (no GPU) refused it, and under podman its /etc/cdi (no NVIDIA spec); neither is the engine's machine. Now the run
    goes, with a warning of what was not checked (a missing CDI spec there still fails `docker run` with its fix)."""
    monkeypatch.setenv(engine.SAME_PATHS_ENV, "1")
    if tool == "podman":
        monkeypatch.setenv(engine.ENV, "podman")
        monkeypatch.setenv("CONTAINER_HOST", PODMAN_URI)
        where = f"CONTAINER_HOST={PODMAN_URI}"
    else:
        monkeypatch.setenv("DOCKER_HOST", "ssh://gpu")
        where = "DOCKER_HOST=ssh://gpu"
    dry = _launch(tiny_model_dir, tiny_data, tmp_path / "out", "1xH100", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "error" not in dry.stderr and "this machine has no GPU" not in dry.stderr, dry.stderr
    warning = (
        f"warning: {tool} runs containers on another machine ({where}): its GPUs and NVIDIA driver are not checked "
        "from here (nvidia-smi there shows them)"
    )
    assert any(line.startswith(warning) for line in dry.stderr.splitlines()), dry.stderr
    if tool == "podman":
        assert (
            " --device nvidia.com/gpu=0 " in dry.stdout and "podman there gives a container GPUs through" in dry.stderr
        )


def _doctor(*args):
    return CliRunner().invoke(main, ["doctor", "--backend", "docker", *args])


def test_doctor_asks_the_engine_on_another_machine(host, monkeypatch):
    """doctor with DOCKER_HOST=ssh://gpu: where the containers run, the paths (a run is copied there, or mounted
    with FTCTL_DOCKER_SAME_PATHS=1), the --gpus asked not judged by this machine's nvidia-smi, and the GPU runtime as the
    engine says it: its discovered CDI devices (docker info's DiscoveredDevices), or, from an older daemon whose CDI
    directories are that machine's, not checked (not "has no runtime")."""
    monkeypatch.setenv("DOCKER_HOST", "ssh://gpu")
    said = _doctor("--gpus", "1xH100")
    assert said.exit_code == 1, said.output
    lines = said.stdout.splitlines()
    assert lines[0] == "asked:   1xH100: not checked (the containers run on another machine: DOCKER_HOST=ssh://gpu)"
    assert lines[1].startswith("docker:  daemon 27.3.1 (") and lines[1].endswith(
        " on another machine: DOCKER_HOST=ssh://gpu"
    )
    assert lines[2] == (
        "paths:   a run is copied into its container there (docker cp: its spec.json and local inputs, up to 2.0 GiB), "
        "nothing of this machine mounted; its --output is an object store (s3://bucket/path, gs://...)"
    )
    monkeypatch.setenv(engine.SAME_PATHS_ENV, "1")
    monkeypatch.setenv("FAKE_DOCKER_CDI", "nvidia.com/gpu=0,nvidia.com/gpu=all")
    said = _doctor("--gpus", "1xH100")
    assert said.exit_code == 0, said.output
    assert said.stdout.splitlines()[2:] == [
        "paths:   its machine sees this one's paths (FTCTL_DOCKER_SAME_PATHS=1)",
        "gpus:    NVIDIA's CDI devices (nvidia.com/gpu=0, nvidia.com/gpu=all)",
    ]
    monkeypatch.setenv("FAKE_DOCKER_CDI_LISTED", "0")  # an older daemon: its CDI spec dirs, no devices listed
    said = _doctor("--gpus", "1xH100")
    assert said.exit_code == 0 and said.stdout.splitlines()[-1] == (
        "gpus:    not checked: docker there has no NVIDIA runtime, and reads CDI specs from /etc/cdi, /var/run/cdi on "
        "that machine, which this docker cannot list (a newer one does): `nvidia-ctk cdi list` there lists them"
    ), said.output
    monkeypatch.delenv("FAKE_DOCKER_CDI")  # CDI off, no runtime: its --gpus fails, as on this machine
    said = _doctor("--gpus", "1xH100")
    assert said.exit_code == 1 and said.stdout.splitlines()[-1].startswith(
        "gpus:    docker there has no NVIDIA container runtime, so --gpus fails: install the NVIDIA Container Toolkit"
    ), said.output
    monkeypatch.setenv(engine.ENV, "podman")
    monkeypatch.setenv("CONTAINER_HOST", PODMAN_URI)
    said = _doctor("--gpus", "1xH100")
    assert said.exit_code == 0 and said.stdout.splitlines()[-1].startswith(
        "gpus:    not checked: podman there gives a container GPUs through NVIDIA's CDI spec on that machine"
    ), said.output


def test_a_jobs_status_and_cancel_ask_the_engine_it_was_launched_on(host, tmp_path, monkeypatch):
    """A job launched with DOCKER_HOST=ssh://gpu, asked about from a shell without it (or with another): its
    container was looked for on this machine's daemon ("not found (removed ...)", cancel: "had already ended").
    The launch records the endpoint with the job (endpoint_env); every call about it is pointed there, and a job
    launched here stays here."""
    from ftctl.backend import JobRef

    def calls():
        log = Path(os.environ["FAKE_LOG"])
        said = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        log.write_text("")
        return {(c["argv"][0], json.dumps(c.get("at"))) for c in said}

    monkeypatch.setenv("DOCKER_HOST", "ssh://gpu")
    monkeypatch.setenv("DOCKER_CONTEXT", "")
    assert engine.endpoint_env() == {"DOCKER_HOST": "ssh://gpu"}  # what the launch records
    there = JobRef("docker", "on-gpu", str(tmp_path), "on-gpu", str(tmp_path), {"endpoint": engine.endpoint_env()})
    here = JobRef("docker", "on-here", str(tmp_path), "on-here", str(tmp_path), {"endpoint": {}})
    monkeypatch.delenv("DOCKER_HOST")
    calls()
    assert backend.DockerBackend().status(there).text == "on-gpu not found (removed from this docker host)"
    gpu = json.dumps({"DOCKER_HOST": "ssh://gpu"})
    assert calls() == {("inspect", gpu), ("version", gpu)}
    monkeypatch.setenv("DOCKER_HOST", "ssh://other")
    assert backend.DockerBackend().cancel(here).startswith("job on-here had already ended")
    assert calls() == {("inspect", "null"), ("version", "null")}


def test_a_gpu_runs_failure_on_another_machine_says_where_to_fix_it(host, tmp_path, monkeypatch):
    """podman there without NVIDIA's CDI spec (not checked from here) fails `podman create` (the run is shipped):
    its line, the fix, and that the fix is made on the engine's machine, not this one."""
    import subprocess

    from ftctl.errors import NotSent
    from tests.render_fixtures import prepared

    said = "Error: setting up CDI devices: unresolvable CDI devices nvidia.com/gpu=0"
    monkeypatch.setenv(engine.ENV, "podman")
    monkeypatch.setenv("CONTAINER_HOST", PODMAN_URI)
    monkeypatch.setattr(backend, "_inspect", lambda name, docker=None: None)
    failed = subprocess.CompletedProcess([], 125, "", said + "\n")  # the Hugging Face cache's volume is there
    monkeypatch.setattr(backend, "_run", lambda argv: failed if argv[1] != "volume" else failed.__class__(argv, 0))
    model = "meta-llama/Llama-3.2-1B"
    prep = prepared(backend="docker", gpus="1xH100", model_name_or_path=model, output_dir="s3://b/o")
    with pytest.raises(NotSent) as e:
        backend.DockerBackend().send(prep)
    assert str(e.value) == (
        f"podman create failed: {said}: {backend.CDI_FIX}, on the machine that runs the containers (CONTAINER_HOST="
        f"{PODMAN_URI})"
    )
