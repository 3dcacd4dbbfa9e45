"""The docker backend end to end, through `ftctl` as a user runs it.

No docker engine runs on this machine, so a stand-in ``docker`` (tests/fake_docker.py) is first on
PATH: it records its argv and runs the container's command as a local process with the volumes mapped
back to host paths. Everything else is real: the rendered docker-run.sh, torchrun, the trainer on the
tiny model, status/logs/cancel through the docker CLI's verbs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ftctl.docker import image

REPO = Path(__file__).resolve().parents[1]
FTCTL = str(Path(sys.executable).parent / "ftctl")
pytestmark = pytest.mark.slow


@pytest.fixture
def docker_env(tmp_path):
    fakes = tmp_path / "bin"
    fakes.mkdir()
    (fakes / "docker").write_text(f'#!/bin/sh\nexec {sys.executable} {REPO}/tests/fake_docker.py "$@"\n')
    (fakes / "docker").chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{fakes}:{Path(sys.executable).parent}:{os.environ['PATH']}",
        "FAKE_DOCKER_STATE": str(tmp_path / "docker-state"),
        "FAKE_LOG": str(tmp_path / "docker.log"),
        "FTCTL_HOME": str(tmp_path / "home"),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "OMP_NUM_THREADS": "1",
        # a container without --user runs as the image's USER (the fake switches to it when run as root)
        "FAKE_IMAGE_USER": re.search(r"^USER (\S+)", (REPO / "docker" / "Dockerfile").read_text(), re.M)[1],
    }
    env.pop("HF_HOME", None)
    return env


def ftctl(env, *args, check=True, cwd=None):
    proc = subprocess.run([FTCTL, *args], env=env, capture_output=True, text=True, timeout=300, cwd=cwd)
    if check:
        assert proc.returncode == 0, proc.stderr + proc.stdout
    return proc


def wait_state(env, job, states, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = ftctl(env, "status", job).stdout.strip()
        if any(s in line for s in states):
            return line
        time.sleep(1)
    raise AssertionError(f"{job} never reached {states}: {line}")


def run_flags(model, data, out, **o):
    flags = ["--backend", "docker", "--gpus", "cpu", "--method", "lora", "--model", str(model), "--data", str(data)]
    flags += ["--output", str(out), "--container", "docker:ftctl:test"]
    for k, v in {"max_steps": 4, "save_steps": 2, "global_batch_size": 2, "model_max_length": 64, **o}.items():
        flags += ["-o", f"{k}={v}"]
    return flags


def test_launch_status_logs_through_the_docker_cli(docker_env, tiny_model_dir, tiny_data, tmp_path):
    hostile = tmp_path / 'it\'s a "data" dir $(touch PWNED)'
    hostile.mkdir()
    shutil.copy(tiny_data, hostile / "conv.json")
    out = tmp_path / "out"
    launched = ftctl(docker_env, "launch", *run_flags(tiny_model_dir, hostile / "conv.json", out), cwd=tmp_path)
    job = launched.stdout.split("started container ", 1)[1].split()[0]
    assert launched.stderr.splitlines()[-1] == "image: ftctl:test (--container)"
    assert wait_state(docker_env, job, ["SUCCEEDED", "FAILED"]).startswith(f"{job} SUCCEEDED")
    assert ftctl(docker_env, "status", job).stdout.splitlines()[1].startswith("step 4  loss ")  # metrics.jsonl's
    assert "complete" in ftctl(docker_env, "logs", job).stdout
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
    assert not (tmp_path / "PWNED").exists()
    calls = [json.loads(line)["argv"] for line in Path(docker_env["FAKE_LOG"]).read_text().splitlines()]
    run = next(c for c in calls if c[0] == "run")
    assert run[run.index("--name") + 1] == job and "ftctl:test" in run and "--detach" in run
    assert f"{hostile}/conv.json:{hostile}/conv.json" in run  # the data, mounted at its own path
    mounts = [run[i + 1] for i, a in enumerate(run) if a == "-v"]
    assert [m for m in mounts if str(out) in m] == [f"{out}:{out}"]  # the run dir is the output: mounted once
    # as the launching user (the image's uid 1000 could not write a root-owned output), with the host's caches
    assert run[run.index("--user") + 1] == f"{os.getuid()}:{os.getgid()}"
    cache = tmp_path / "cache"
    assert f"{cache}:{cache}" in mounts and f"HF_HOME={cache}/huggingface" in run
    assert (cache / "huggingface").is_dir() and (cache / "ftctl" / "container-home").is_dir()
    assert "HF_TOKEN" in run and not any(a.startswith("HF_TOKEN=") for a in run)  # secrets by name
    # the same launch again: the run is finished, nothing is left to train (refused before a container starts)
    same = ftctl(
        docker_env, "launch", *run_flags(tiny_model_dir, hostile / "conv.json", out), cwd=tmp_path, check=False
    )
    assert same.returncode == 2 and "nothing is left to train. To train it further, raise -o max_steps" in same.stderr
    # more steps: the ended container is removed and the run goes on from its checkpoint
    more = ftctl(
        docker_env, "launch", *run_flags(tiny_model_dir, hostile / "conv.json", out, max_steps=6), cwd=tmp_path
    )
    assert "started container" in more.stdout


def test_cancel_stops_a_running_container(docker_env, tiny_model_dir, tiny_data, tmp_path):
    out = tmp_path / "long"
    flags = run_flags(tiny_model_dir, tiny_data, out, max_steps=100000, save_steps=100000, run_name="long-run")
    job = ftctl(docker_env, "launch", *flags, cwd=tmp_path).stdout.split("started container ", 1)[1].split()[0]
    wait_state(docker_env, job, ["RUNNING"])
    refused = ftctl(docker_env, "launch", *flags, cwd=tmp_path, check=False)
    assert refused.returncode != 0 and "already running" in refused.stderr and "Traceback" not in refused.stderr
    assert ftctl(docker_env, "cancel", job).stdout.strip() == f"cancelled {job}"
    assert "RUNNING" not in ftctl(docker_env, "status", job).stdout
    listed = ftctl(docker_env, "jobs").stdout.splitlines()
    assert listed[1].split()[:3] == [job, "docker", "long-run"] and "RUNNING" not in listed[1], listed


def test_missing_docker_is_one_line(tmp_path, tiny_model_dir, tiny_data):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "FTCTL_HOME": str(tmp_path)}
    if shutil.which("docker", path=env["PATH"]):
        pytest.skip("a real docker is installed here")
    proc = ftctl(env, "launch", *run_flags(tiny_model_dir, tiny_data, tmp_path / "o"), check=False, cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == "error: docker is not installed here: install Docker Engine, or use --backend local."


def test_a_daemon_that_does_not_answer_is_said_by_doctor_dry_run_and_launch(
    docker_env, tiny_model_dir, tiny_data, tmp_path
):
    """The docker CLI without its daemon: every docker call fails, so `image inspect` cannot tell a missing image
    from an unreachable daemon; the daemon is asked first, and --dry-run asks it too."""
    down = {**docker_env, "FAKE_DOCKER_DAEMON_DOWN": "1"}
    flags = run_flags(tiny_model_dir, tiny_data, tmp_path / "o")
    flags[flags.index("--container") + 1] = "docker:ghcr.io/x/img:1"  # would be pulled: only the daemon refuses
    said = "docker is installed but its daemon does not answer (Cannot connect to the Docker daemon at "
    for args in (["launch", *flags], ["launch", *flags, "--dry-run"]):
        proc = ftctl(down, *args, check=False, cwd=tmp_path)
        assert proc.returncode == 2 and said in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    doctor = ftctl(down, "doctor", "--backend", "docker", check=False)
    assert doctor.returncode != 0 and said in doctor.stdout
    assert ftctl(docker_env, "doctor", "--backend", "docker", check=False).stdout.startswith("docker:  daemon 27.3.1")


@pytest.mark.parametrize("cuda, flavour", [("12.2", "cu126"), ("13.0", "cu130")])
def test_the_hosts_driver_picks_the_images_cuda(docker_env, tmp_path, cuda, flavour):
    """A host with an H100 under driver 535 (CUDA 12.2) cannot run the CUDA 13 image: the docker backend names
    the cu126 one, and says how to build it when the host lacks it; under a driver for CUDA 13, the default.
    nvidia-smi is a stand-in printing what the real one does (the header as on the H200 host)."""
    smi = Path(docker_env["PATH"].split(":")[0]) / "nvidia-smi"
    smi.write_text(
        "#!/bin/sh\n"
        'case "$1" in --query-gpu*) echo "NVIDIA H100 80GB HBM3, 81559"; exit 0;; esac\n'
        f"echo '| NVIDIA-SMI 535.216.01   Driver Version: 535.216.01   CUDA Version: {cuda}     |'\n"
    )
    smi.chmod(0o755)
    flags = ["--backend", "docker", "--gpus", "1xH100", "--method", "lora", "--model", "meta-llama/Llama-3.2-1B"]
    proc = ftctl({**docker_env, "HF_TOKEN": "x"}, "launch", *flags, "--output", str(tmp_path / "o"), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    build = "ftctl build --gpus H100" + (" --cuda cu126" if flavour == "cu126" else "")
    assert proc.stderr.strip() == (
        f"error: the image {image.default_image('H100', cuda=flavour)} is not on this docker host: build it with "
        f"`{build}` (or pull it), or pass --container docker:IMAGE."
    )
