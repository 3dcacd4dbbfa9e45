"""What the container runs with, by engine (explore49): a rootless engine's user and limits, podman's SELinux label,
the container's own stop timeout, and a container that `docker run` created but could not start.

Measured by hand with podman 4.3.1 rootless (runc) on this machine, as a user with subordinate ids: ``--user
UID:GID`` could not write its own bind-mounted directory ("Permission denied"), ``--ulimit memlock=-1`` never started
("error setting rlimit type 8: operation not permitted"), ``--user 0:0`` wrote it, the file the user's on the host.
Rootful podman here left a container it could not start "created" under its name (``podman run`` again: "the
container name ... is already in use"); ``podman rm NAME`` removed it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftctl.docker import backend, engine, render
from ftctl.errors import FtctlError, NotSent
from tests.render_fixtures import prepared

MODEL = "meta-llama/Llama-3.2-1B"

# a docker CLI that answers what a launch asks: --version, version, info (SecurityOptions from $FAKE_SECURITY),
# image inspect; `run` creates the container and fails to start it, as docker does without the NVIDIA runtime
FAKE = r"""#!/bin/sh
state="$FAKE_STATE"
echo "$*" >> "$state.calls"
case "$1" in
  --version) echo "Docker version 28.2.2, build e6534b4" ;;
  version) echo "28.2.2" ;;
  info) printf '{"SecurityOptions": %s}\n' "${FAKE_SECURITY:-[]}" ;;
  image) exit 0 ;;
  context) exit 1 ;;
  inspect)
    name=$(eval echo \${$#})
    [ -f "$state.$name" ] || { echo "Error: No such object: $name" >&2; exit 1; }
    echo "created|0|0001-01-01T00:00:00Z|0001-01-01T00:00:00Z" ;;
  rm) rm -f "$state.$2" ;;
  run)
    while [ "$1" != "--name" ]; do shift; done
    touch "$state.$2"
    echo 'docker: Error response from daemon: could not select device driver "" with capabilities: [[gpu]].' >&2
    exit 125 ;;
  *) exit 0 ;;
esac
"""


@pytest.fixture
def fake_docker(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "docker"
    exe.write_text(FAKE)
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setenv("FAKE_STATE", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("FTCTL_HOME", str(tmp_path / "home"))
    for var in (engine.ENV, *engine.ENDPOINT_ENV, "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "state"


def _argv(text: str) -> list[str]:
    import shlex

    return shlex.split(text)


def test_a_rootless_engine_runs_the_container_as_its_root_without_raising_memlock(fake_docker, monkeypatch, tmp_path):
    """Rootless docker (``docker info``: name=rootless): the container's root is the launching user on the host, its
    UID:GID a subordinate uid that cannot write the run dir; memlock cannot be raised past the user's hard limit."""
    monkeypatch.setattr(render, "host_user", lambda: (1000, 1000, "user", (27,)))
    out = str(tmp_path / "o")
    rootful = _argv(prepared(backend="docker", gpus="1xA100", model_name_or_path=MODEL, output_dir=out).text)
    assert rootful[rootful.index("--user") + 1] == "1000:1000" and "--group-add" in rootful
    assert "memlock=-1" in rootful and "stack=67108864" in rootful

    monkeypatch.setenv("FAKE_SECURITY", json.dumps(["name=seccomp,profile=builtin", "name=rootless", "name=cgroupns"]))
    engine._info.cache_clear()
    rootless = _argv(prepared(backend="docker", gpus="1xA100", model_name_or_path=MODEL, output_dir=out).text)
    assert rootless[rootless.index("--user") + 1] == "0:0"
    assert "--group-add" not in rootless and "memlock=-1" not in rootless and "stack=67108864" in rootless
    assert "--gpus" in rootless  # the rest as before


def test_podman_says_whether_it_is_rootless(tmp_path, monkeypatch):
    exe = tmp_path / "podman"
    exe.write_text(
        '#!/bin/sh\n[ "$1 $3" = "info json" ] && echo "{\\"host\\": {\\"security\\": {\\"rootless\\": $ROOTLESS}}}"\n'
    )
    exe.chmod(0o755)
    monkeypatch.setenv("ROOTLESS", "true")
    assert engine.rootless(str(exe)) is True
    engine._info.cache_clear()
    monkeypatch.setenv("ROOTLESS", "false")
    assert engine.rootless(str(exe)) is False
    assert engine.rootless(str(tmp_path / "none")) is False  # none installed: a dry run renders rootful


def test_podman_disables_selinux_labels_and_every_container_keeps_the_checkpoint_grace():
    """podman on Fedora/RHEL (SELinux enforcing) denies a container the user's files and the GPU device nodes unless
    its label is disabled (NVIDIA's CDI docs: podman run --device nvidia.com/gpu=all --security-opt=label=disable);
    `docker stop NAME` by hand or a daemon restart waits the container's --stop-timeout, docker's default 10 s."""
    prep = prepared(backend="docker", gpus="2xA100", model_name_or_path=MODEL, output_dir="/fixed/out")
    docker = render.argv(prep.spec, prep.plan, "/fixed/out", engine="docker")
    podman = render.argv(prep.spec, prep.plan, "/fixed/out", engine="podman", command="podman")
    assert "--security-opt=label=disable" in podman and "--security-opt=label=disable" not in docker
    for argv in (docker, podman):
        assert f"--stop-timeout={backend.STOP_GRACE_S}" in argv
    assert backend.STOP_GRACE_S == render.STOP_GRACE_S == 120
    # a CPU run's mounts are labelled too, and through Docker's CLI to podman's server (the review of 70a59a1)
    cpu = prepared(backend="docker", gpus="cpu", output_dir="/fixed/out")
    for kind in ("podman", "podman-api"):
        assert "--security-opt=label=disable" in render.argv(cpu.spec, cpu.plan, "/fixed/out", engine=kind)


def test_a_run_whose_checkpoint_takes_longer_gets_longer_to_save_it(fake_docker):
    """An 8B fft's checkpoint takes ~262 s to write after the step under way (preflight.signal_save_s): docker stop,
    by hand or `ftctl cancel`, killed it at 120 s, mid-save. Its container's --stop-timeout and cancel's wait are what
    the save needs, in whole minutes (the review of 70a59a1)."""
    fft = prepared(backend="docker", method="fft", gpus="8xA100-80GB", model_name_or_path="meta-llama/Llama-3.1-8B",
                   output_dir="/fixed/out")  # fmt: skip
    assert render.stop_grace_s(fft.spec, fft.plan) == 300
    assert "--stop-timeout=300" in render.argv(fft.spec, fft.plan, "/fixed/out", engine="docker")


def test_a_container_docker_could_not_start_does_not_take_the_relaunchs_name(fake_docker, tmp_path):
    """docker run creates the container, then starts it: without the NVIDIA runtime it stays "created" under the
    run's name, and the launch after the fix was refused ("already created") with a `ftctl cancel` that could not
    stop it. The failed launch removes it; one left by an older ftctl is refused with `docker rm NAME`."""
    prep = prepared(backend="docker", gpus="1xA100", model_name_or_path=MODEL, output_dir=str(tmp_path / "o"))
    from ftctl.backend import write_files

    write_files(prep)
    name = prep.spec.name
    with pytest.raises(NotSent, match="could not select device driver"):
        backend.DockerBackend().send(prep)
    calls = Path(f"{fake_docker}.calls").read_text().splitlines()
    assert f"rm {name}" in calls and not Path(f"{fake_docker}.{name}").exists()
    backend.DockerBackend().check(prep)  # the relaunch: its name is free

    Path(f"{fake_docker}.{name}").touch()  # left by an older ftctl
    with pytest.raises(FtctlError, match=rf"created and never started .*`docker rm {name}` removes it"):
        backend.DockerBackend().check(prep)


def test_rootless_dockers_missing_gpu_runtime_is_set_up_for_the_users_own_daemon(fake_docker, monkeypatch, tmp_path):
    """`sudo nvidia-ctk runtime configure && sudo systemctl restart docker` sets up root's daemon, not the rootless
    one the user runs (NVIDIA's install guide, "Rootless mode": its own daemon.json, systemctl --user, no-cgroups)."""
    from ftctl.backend import write_files

    monkeypatch.setenv("FAKE_SECURITY", json.dumps(["name=rootless"]))
    engine._info.cache_clear()
    prep = prepared(backend="docker", gpus="1xA100", model_name_or_path=MODEL, output_dir=str(tmp_path / "o"))
    write_files(prep)
    with pytest.raises(NotSent) as e:
        backend.DockerBackend().send(prep)
    assert str(e.value).endswith(f": {backend.ROOTLESS_GPU_RUNTIME_FIX}")
    assert "--config=$HOME/.config/docker/daemon.json && systemctl --user restart docker" in str(e.value)
