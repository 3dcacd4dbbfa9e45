"""The docker backend where ``docker`` is podman's (podman-docker, or a link): a container gets GPUs through NVIDIA's
CDI devices (``--device nvidia.com/gpu=NAME``), not docker's ``--gpus``, which podman 4 takes and ignores (the run
starts without GPUs; podman 5 reads ``--gpus 2`` as the GPU named 2). Rendered and checked here; then against the real
podman of tests/podman_fixtures.py with a CDI spec whose GPU is /dev/null, which podman really puts in the container.
And `ftctl build`, whose ``buildx build`` is podman's own there (docker.engine).
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

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
