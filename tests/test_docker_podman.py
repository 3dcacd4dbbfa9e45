"""The docker backend where ``docker`` is podman's (podman-docker, or a link): a container gets GPUs through NVIDIA's
CDI devices (``--device nvidia.com/gpu=NAME``), not docker's ``--gpus``, which podman 4 takes and ignores (the run
starts without GPUs; podman 5 reads ``--gpus 2`` as the GPU named 2). Rendered and checked here; then against the real
podman of tests/podman_fixtures.py with a CDI spec whose GPU is /dev/null, which podman really puts in the container.
And `ftctl build`, whose ``buildx build`` is podman's own there (docker.engine).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from ftctl.cli import main
from ftctl.docker import backend, engine, render
from ftctl.errors import FtctlError
from tests.podman_fixtures import podman  # noqa: F401 (the fixture)
from tests.render_fixtures import prepared

MODEL = "meta-llama/Llama-3.2-1B"
FTCTL = str(Path(sys.executable).parent / "ftctl")
REAL_CDI_DIR = Path("/var/run/cdi")  # where podman 4 reads CDI specs (and /etc/cdi): it has no setting for others


def gpu_args(argv: list[str]) -> list[str]:
    i = argv.index("--ulimit", argv.index("--ulimit") + 1) + 2  # after --ulimit memlock=-1 --ulimit stack=...
    return argv[i : argv.index("-v")]


def test_podman_gets_the_plans_gpus_as_cdi_devices(monkeypatch):
    """2 of the host's GPUs: the first two by index, or the first two CUDA_VISIBLE_DEVICES names (an index or a
    UUID, as nvidia-ctk names a GPU both ways), one --device each (podman reads a comma as part of a path); docker's
    command is unchanged."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    prep = prepared(backend="docker", gpus="2xA100", model_name_or_path=MODEL, output_dir="/fixed/out")
    on = {e: gpu_args(render.argv(prep.spec, prep.plan, "/fixed/out", engine=e)) for e in ("docker", "podman")}
    assert on == {
        "docker": ["--gpus", "2"],
        "podman": ["--device", "nvidia.com/gpu=0", "--device", "nvidia.com/gpu=1"],
    }
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-4e2f,3,5")
    podman_args = gpu_args(render.argv(prep.spec, prep.plan, "/fixed/out", engine="podman"))
    assert podman_args == ["--device", "nvidia.com/gpu=GPU-4e2f", "--device", "nvidia.com/gpu=3"]
    cpu = prepared(backend="docker", gpus="cpu", model_name_or_path=MODEL, output_dir="/fixed/out")
    assert gpu_args(render.argv(cpu.spec, cpu.plan, "/fixed/out", engine="podman")) == []


def test_the_engine_is_what_docker_version_says(tmp_path, monkeypatch):
    for said, which in (("podman version 4.3.1", "podman"), ("Docker version 28.2.2, build e6534b4", "docker")):
        bin_dir = tmp_path / which
        bin_dir.mkdir()
        (bin_dir / "docker").write_text(f"#!/bin/sh\necho '{said}'\n")
        (bin_dir / "docker").chmod(0o755)
        monkeypatch.setenv("PATH", str(bin_dir))
        assert engine.engine() == which
    monkeypatch.setenv("PATH", str(tmp_path / "none"))
    assert engine.engine() == "docker"  # none installed: a dry run renders docker's command


def test_the_cdi_check_names_the_fix(tmp_path, monkeypatch):
    """No NVIDIA spec in podman's CDI directories: the one fix (nvidia-ctk cdi generate); a spec without a GPU the
    run names: which it has; a spec naming them (YAML or JSON, as nvidia-ctk writes either): nothing said."""
    etc, run = tmp_path / "etc", tmp_path / "run"
    etc.mkdir()
    monkeypatch.setattr(backend, "CDI_DIRS", (str(etc), str(run)))
    (etc / "other.yaml").write_text("cdiVersion: 0.5.0\nkind: vendor.com/device\ndevices:\n- name: '0'\n")
    (etc / "broken.yaml").write_text("kind: [\n")
    with pytest.raises(FtctlError) as e:
        backend._check_cdi(["0"])
    assert str(e.value) == (
        f"podman gives a container GPUs through NVIDIA's CDI spec, and this host has none (in {etc} or {run}): "
        "install the NVIDIA Container Toolkit, then `sudo nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml` "
        "(again after a driver update or a GPU change)."
    )
    spec = {"cdiVersion": "0.5.0", "kind": "nvidia.com/gpu", "devices": [{"name": n} for n in ("0", "GPU-4e2f", "all")]}
    (etc / "nvidia.json").write_text(json.dumps(spec))
    backend._check_cdi(["0", "GPU-4e2f"])
    with pytest.raises(FtctlError, match=r"^podman has no CDI device nvidia.com/gpu=1 \(the GPUs of .*nvidia.json: "):
        backend._check_cdi(["0", "1"])


@pytest.mark.slow
def test_a_gpu_launch_under_podman_gets_its_cdi_device(podman, tiny_model_dir, tiny_data, tmp_path):  # noqa: F811
    """Without NVIDIA's CDI spec for its GPU, the launch stops before any container starts, saying the fix; with
    one (a fake GPU: /dev/null at /dev/ftctl-fake-gpu), the same launch starts a container that podman gave that
    device. With docker's --gpus, podman 4.3 started it without any."""
    gpu = f"GPU-ftctl-test-{uuid.uuid4()}"
    name = podman.name("gpu")
    env = {**podman.env, "FTCTL_HOME": str(tmp_path / "home"), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    smi = tmp_path / "bin" / "nvidia-smi"  # a stand-in printing what the real one does for an A100
    smi.parent.mkdir()
    smi.write_text(
        "#!/bin/sh\n"
        'case "$1" in --query-gpu*) echo "NVIDIA A100-SXM4-80GB, 81920"; exit 0;; esac\n'
        "echo '| NVIDIA-SMI 570.124.06   Driver Version: 570.124.06   CUDA Version: 12.8     |'\n"
    )
    smi.chmod(0o755)
    env.update(CUDA_VISIBLE_DEVICES=gpu, PATH=f"{smi.parent}:{env['PATH']}")
    env.pop("HF_HOME", None)
    flags = ["--backend", "docker", "--gpus", "1xA100-80GB", "--method", "lora", "--model", str(tiny_model_dir)]
    flags += ["--data", str(tiny_data), "--output", str(tmp_path / "out"), "--container", f"docker:{podman.image}"]
    flags += ["-o", f"run_name={name}"]

    def ftctl(*args):
        return subprocess.run([FTCTL, *args], env=env, capture_output=True, text=True, timeout=120)

    def launch():
        return ftctl("launch", *flags)

    has_spec = bool(backend._cdi_gpus())  # this host's NVIDIA spec, without the fake GPU
    doctor = ftctl("doctor", "--backend", "docker", "--gpus", "1xA100-80GB")
    assert doctor.returncode == (0 if has_spec else 1), doctor.stdout + doctor.stderr
    assert "\ndocker:  podman " in doctor.stdout, doctor.stdout
    assert ("gpus:    NVIDIA CDI devices: " if has_spec else "gpus:    podman gives a container GPUs") in doctor.stdout
    refused = launch()
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
    if has_spec:
        assert f"podman has no CDI device nvidia.com/gpu={gpu} (the GPUs of" in refused.stderr
    else:
        assert refused.stderr.splitlines() == [
            "error: podman gives a container GPUs through NVIDIA's CDI spec, and this host has none (in /etc/cdi or "
            "/var/run/cdi): install the NVIDIA Container Toolkit, then `sudo nvidia-ctk cdi generate "
            "--output=/etc/cdi/nvidia.yaml` (again after a driver update or a GPU change)."
        ]
    assert podman.docker("container", "exists", name, check=False).returncode == 1  # nothing started

    spec = REAL_CDI_DIR / f"ftctl-test-{gpu}.yaml"
    REAL_CDI_DIR.mkdir(parents=True, exist_ok=True)
    spec.write_text(
        "cdiVersion: 0.5.0\nkind: nvidia.com/gpu\ndevices:\n"
        f"- name: {gpu}\n  containerEdits:\n    deviceNodes:\n    - path: /dev/ftctl-fake-gpu\n      hostPath: /dev/null\n"
    )
    try:
        doctor = ftctl("doctor", "--backend", "docker", "--gpus", "1xA100-80GB")
        started = launch()
    finally:
        spec.unlink()
    assert doctor.returncode == 0 and "\ngpus:    NVIDIA CDI devices: " in doctor.stdout, doctor.stdout
    assert started.returncode == 0 and f"started container {name}" in started.stdout, started.stderr
    (run_dir,) = [line.split(":", 1)[1].strip() for line in started.stdout.splitlines() if "run dir:" in line]
    assert f" --device nvidia.com/gpu={gpu} " in (Path(run_dir) / "docker-run.sh").read_text()
    devices = podman.docker("inspect", "--format", "{{json .HostConfig.Devices}}", name).stdout
    assert json.loads(devices) == [
        {"PathOnHost": "/dev/null", "PathInContainer": "/dev/ftctl-fake-gpu", "CgroupPermissions": ""}
    ]
    podman.docker("rm", "--force", "--time", "0", name)  # its trainer, training on no GPU, is not waited for


def test_podman_builds_a_docker_format_image_then_pushes_it(monkeypatch):
    """podman's build writes the Dockerfile's SHELL (bash, pipefail) only into a docker-format image, has no --push
    (nor needs --load: its image is local) and no daemon for apptainer's docker-daemon://."""
    from ftctl.docker import build

    monkeypatch.setattr(build, "engine", lambda: "podman")
    local = build.commands("H100")
    assert local.docker[:5] == ["docker", "buildx", "build", "--format", "docker"] and len(local.steps()) == 1
    assert "--load" not in local.docker and "--push" not in local.docker
    pushed = build.commands("H100", push="ghcr.io/me")
    assert pushed.steps() == [pushed.docker, ["docker", "push", pushed.image]] and pushed.image.startswith(
        "ghcr.io/me/"
    )
    assert "--push" not in pushed.docker
    with pytest.raises(FtctlError, match=r"this docker is podman, which has none: add --push REGISTRY"):
        build.commands("H100", apptainer=True)
    monkeypatch.setattr(build, "engine", lambda: "docker")  # docker's: unchanged
    assert build.commands("H100").docker[3:5] == ["--file", str(build.source_root() / "docker" / "Dockerfile")]
    assert build.commands("H100", push="ghcr.io/me").steps()[0][-2] == "--push"


@pytest.mark.slow
def test_ftctl_build_runs_podmans_build_of_the_dockerfile(podman, tmp_path):  # noqa: F811
    """`ftctl build` under podman, its CUDA base image stood in for by the test image (no bash, no apt): podman's
    build reads ftctl's Dockerfile and command line and runs up to its first RUN, under the Dockerfile's SHELL
    (/bin/bash, which this image lacks: a docker-format build; the OCI one ran it under /bin/sh). ftctl refused to
    start it before: podman has no `buildx version`."""
    from ftctl.docker import image

    args = image.build_args("H100")
    base = f"localhost/nvidia/cuda:{args['CUDA_VERSION']}-devel-ubuntu{args['UBUNTU_VERSION']}"  # FROM nvidia/cuda:
    podman.docker("tag", podman.image, base)
    env = {**podman.env, "FTCTL_HOME": str(tmp_path / "home")}
    try:
        said = subprocess.run(
            [FTCTL, "build", "--gpus", "H100", "--tag", podman.name("build")],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        podman.docker("untag", podman.image, base)
    out = said.stdout + said.stderr
    assert said.returncode == 2 and "+ docker buildx build --format docker --file " in said.stderr, out
    assert ': SHELL ["/bin/bash", "-o", "pipefail", "-c"]' in out and "SHELL is not supported" not in out
    assert "stat /bin/bash: no such file or directory" in out, out  # its first RUN, under bash
    assert said.stderr.splitlines()[-1] == "error: `docker buildx` failed (exit 1): the lines above say why."


def _stand_in(path: Path, script: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)
    return path


def test_the_engine_is_ftctl_docker_else_docker_else_podman(tmp_path, monkeypatch):
    """A host with podman and no docker command (Fedora, RHEL) runs podman, named so in what is rendered (the
    stand-ins fail if asked anything: a podman is known by its name); FTCTL_DOCKER picks one where both are; where
    neither is, one line says what to install."""
    both, only, none = tmp_path / "both", tmp_path / "only", tmp_path / "none"
    for tool in (both / "docker", both / "podman", only / "podman"):
        _stand_in(tool, "exit 1")
    none.mkdir()
    monkeypatch.delenv(engine.ENV, raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("PATH", str(both))
    assert (engine.command(), engine.path()) == ("docker", str(both / "docker"))
    monkeypatch.setenv(engine.ENV, "podman")
    assert (engine.command(), engine.path(), engine.why()) == ("podman", str(both / "podman"), "FTCTL_DOCKER=podman")
    monkeypatch.delenv(engine.ENV)
    monkeypatch.setenv("PATH", str(only))
    assert (engine.command(), engine.kind(), engine.why()) == ("podman", "podman", "no docker command here")
    prep = prepared(backend="docker", gpus="2xA100", model_name_or_path=MODEL, output_dir="/fixed/out")
    assert prep.text.startswith("podman run --detach ") and " --device nvidia.com/gpu=1 " in prep.text
    monkeypatch.setenv("PATH", str(none))
    assert engine.command() == "docker"  # a dry run renders docker's command
    with pytest.raises(FtctlError) as e:
        engine.path()
    assert str(e.value) == (
        "neither docker nor podman is installed here: install Docker Engine or podman, or use --backend local."
    )
    monkeypatch.setenv(engine.ENV, "nerdctl")
    with pytest.raises(FtctlError, match=r"^FTCTL_DOCKER=nerdctl: no such command here: set FTCTL_DOCKER to podman, "):
        engine.path()


@pytest.mark.parametrize(
    "server, version, kind",
    [("Podman Engine", "4.3.1", "podman-api"), ("Podman Engine", "5.5.0", "podman"), ("Engine", "28.2.2", "docker")],
)
def test_dockers_cli_on_podmans_socket_is_known_by_its_server(tmp_path, monkeypatch, server, version, kind):
    """Docker's CLI whose DOCKER_HOST is podman's socket: `docker version` names its server "Podman Engine"; before
    podman 5.5 its docker API drops every GPU request (kind podman-api: refused), from 5.5 it takes CDI devices."""
    components = json.dumps([{"Name": server, "Version": version}])
    docker = _stand_in(
        tmp_path / "bin" / "docker",
        f"""case "$*" in --version) echo 'Docker version 28.2.2, build e6534b4';;
version*Components*) echo '{components}';; *) exit 1;; esac""",
    )
    monkeypatch.setenv("PATH", str(docker.parent))
    monkeypatch.delenv(engine.ENV, raising=False)
    assert engine.kind() == kind


@pytest.mark.slow
def test_a_gpu_launch_through_podmans_docker_api_is_refused(podman, tiny_model_dir, tiny_data, tmp_path, monkeypatch):  # noqa: F811
    """Docker's CLI on podman's socket (DOCKER_HOST=unix://.../podman.sock, the real podman serving it): podman
    4.3's docker API starts a container without the GPU it was asked for, through docker's --gpus or a CDI device
    (`docker run --device nvidia.com/gpu=NAME` of a CDI spec's fake GPU: no device inside, exit 0), and ftctl took it
    for docker and launched it so. Now doctor and launch say why, and how to run podman itself; nothing starts."""
    docker = shutil.which("docker")
    said = subprocess.run([docker, "--version"], capture_output=True, text=True).stdout if docker else ""
    if not said.startswith("Docker version"):
        pytest.skip(f"no Docker CLI here to talk to podman's socket ({docker}: {said.strip()})")
    bin_dir, socket = tmp_path / "bin", tmp_path / "podman.sock"
    bin_dir.mkdir()
    (bin_dir / "docker").symlink_to(docker)
    _stand_in(
        bin_dir / "nvidia-smi",
        'case "$1" in --query-gpu*) echo "NVIDIA A100-SXM4-80GB, 81920"; exit 0;; esac\n'
        "echo '| NVIDIA-SMI 570.124.06   Driver Version: 570.124.06   CUDA Version: 12.8     |'",
    )
    gpu, name = f"GPU-ftctl-test-{uuid.uuid4()}", podman.name("api")
    env = {**podman.env, "PATH": f"{bin_dir}:{Path(sys.executable).parent}:/usr/bin:/bin", "CUDA_VISIBLE_DEVICES": gpu}
    env.update(DOCKER_HOST=f"unix://{socket}", FTCTL_HOME=str(tmp_path / "home"), XDG_CACHE_HOME=str(tmp_path / "c"))
    env.pop(engine.ENV, None)
    service = subprocess.Popen(
        [shutil.which("podman"), "system", "service", "--time=0", f"unix://{socket}"],
        env=podman.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            if subprocess.run(["docker", "version"], env=env, capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        version = subprocess.run(
            ["docker", "version", "--format", "{{.Server.Version}}"], env=env, capture_output=True, text=True
        ).stdout.strip()
        if engine._version(version) >= engine.PODMAN_API_CDI:
            pytest.skip(f"podman {version}'s docker API takes CDI devices")
        flags = ["--backend", "docker", "--gpus", "1xA100-80GB", "--method", "lora", "--model", str(tiny_model_dir)]
        flags += ["--data", str(tiny_data), "--output", str(tmp_path / "out"), "--container", f"docker:{podman.image}"]
        for key, value in env.items():  # ftctl in this process: seconds less than two of its own
            monkeypatch.setenv(key, value)
        monkeypatch.delenv(engine.ENV, raising=False)
        doctor = CliRunner().invoke(main, ["doctor", "--backend", "docker", "--gpus", "1xA100-80GB"])
        launch = CliRunner().invoke(main, ["launch", *flags, "-o", f"run_name={name}"])
    finally:
        service.terminate()
        service.wait(timeout=30)
    refusal = (
        f"docker here talks to podman {version}'s docker API (DOCKER_HOST=unix://{socket}), which starts a container "
        "without its GPUs: it drops docker's --gpus and CDI device requests (podman 5.5 takes the CDI ones). Run "
        "podman itself: FTCTL_DOCKER=podman (or upgrade podman to 5.5)."
    )
    assert doctor.exit_code == 1, doctor.output
    assert (
        f"\ndocker:  podman {version}'s docker API, through {bin_dir / 'docker'}\ngpus:    {refusal}\n" in doctor.stdout
    )
    assert launch.exit_code == 2 and launch.stderr.splitlines() == [f"error: {refusal}"], launch.output
    assert podman.docker("container", "exists", name, check=False).returncode == 1  # nothing started


def test_podmans_short_name_refusal_says_to_name_the_registry(tmp_path, monkeypatch):
    """podman (no docker.io default) refuses a short image name without unqualified-search registries: its line, then
    how to name the image (measured: `--container docker:ftctl:test` under podman 4.3.1)."""
    from ftctl.errors import NotSent

    said = (
        'Error: short-name "ftctl:test" did not resolve to an alias and no unqualified-search registries are defined '
        'in "/etc/containers/registries.conf"'
    )
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(backend, "_docker", lambda ref=None: "/usr/bin/podman")
    monkeypatch.setattr(backend, "_inspect", lambda name, docker=None: None)
    monkeypatch.setattr(backend, "_run", lambda argv: subprocess.CompletedProcess(argv, 125, "", said + "\n"))
    prep = prepared(backend="docker", gpus="cpu", model_name_or_path=MODEL, output_dir=str(tmp_path / "o"))
    with pytest.raises(NotSent) as e:
        backend.DockerBackend().send(prep)
    assert str(e.value) == (
        f"podman run failed: {said}: name the image with its registry (docker.io/NAME:TAG, ghcr.io/...) in --container"
    )


def test_the_container_reaches_the_hub_as_this_host_does(monkeypatch):
    """HF_HUB_OFFLINE=1 (or a mirror's HF_ENDPOINT) set here reaches the container, as a local or Slurm run has it
    (a docker run asked the Hub from a host without network: helper 187); -o env= still wins; unset, none is sent."""
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    prep = prepared(backend="docker", gpus="cpu", model_name_or_path=MODEL, output_dir="/fixed/out")
    assert not [a for a in render.argv(prep.spec, prep.plan, "/fixed/out") if a.startswith(("HF_HUB", "HF_END"))]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", "https://hf-mirror.example")
    argv = render.argv(prep.spec, prep.plan, "/fixed/out")
    assert "HF_HUB_OFFLINE=1" in argv and "HF_ENDPOINT=https://hf-mirror.example" in argv
    prep = prepared(backend="docker", gpus="cpu", model_name_or_path=MODEL, output_dir="/fixed/out")
    prep.spec.env = {**prep.spec.env, "HF_HUB_OFFLINE": "0"}
    argv = render.argv(prep.spec, prep.plan, "/fixed/out")
    assert "HF_HUB_OFFLINE=0" in argv and "HF_HUB_OFFLINE=1" not in argv
