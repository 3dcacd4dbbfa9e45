"""The docker backend against a real container engine: podman as ``docker`` (tests/podman_fixtures.py).

tests/test_docker_backend.py drives the backend through a stand-in (tests/fake_docker.py) that runs the container's
command as a local process; here the same `ftctl launch/status/logs/cancel` run a LoRA trainer of the tiny model in a
container: its torchrun is the container's PID 1, the run dir and inputs reach it only through ftctl's mounts, and
`docker stop`'s SIGTERM reaches the trainer, which saves a checkpoint. First, the engine's behaviour the stand-in
emulates, checked against the engine itself.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.podman_fixtures import ftctl_env, ftctl_runner, lora_flags, podman, podman_only  # noqa: F401 (the fixture)

pytestmark = pytest.mark.slow


def test_the_engine_does_what_the_stand_in_emulates(podman, tmp_path, monkeypatch):  # noqa: F811
    """``-e NAME`` takes the launching environment's value (an unset one gives nothing), a path not mounted is not
    there and a :ro one cannot be written, a PID 1 without a SIGTERM handler ignores `docker stop`'s SIGTERM (killed
    after the grace: 137) and one with a handler gets it (143); and the backend reads `docker inspect`'s state and
    times (podman's are Go's time.String, with spaces: the backend read its start time as none)."""
    from ftctl.docker import backend

    shared, hidden = tmp_path / "shared", tmp_path / "hidden"
    shared.mkdir()
    hidden.mkdir()
    env = {**podman.env, "FTCTL_TEST_SECRET": "s3cret"}
    env.pop("FTCTL_TEST_UNSET", None)
    script = (
        f'echo "secret=$FTCTL_TEST_SECRET unset=${{FTCTL_TEST_UNSET-none}}"; ls {hidden} 2>/dev/null || echo hidden; '
        f"touch {shared}/f 2>/dev/null || echo read-only"
    )
    run = ["docker", "run", "--rm", "--network=host", "--ipc=host", "--ulimit", "memlock=-1"]
    run += ["-e", "FTCTL_TEST_SECRET", "-e", "FTCTL_TEST_UNSET", "-v", f"{shared}:{shared}:ro", podman.image]
    said = subprocess.run([*run, "sh", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert said.stdout.split() == ["secret=s3cret", "unset=none", "hidden", "read-only"], said.stderr

    monkeypatch.setenv("PATH", podman.env["PATH"])
    monkeypatch.setenv("CONTAINERS_CONF", podman.env["CONTAINERS_CONF"])
    for what, trap, code in (("ignores", "", 137), ("handles", 'trap "exit 143" TERM; ', 143)):
        name = podman.name(what)
        began = time.time()
        podman.docker(
            "run", "--detach", "--name", name, podman.image, "sh", "-c", f"{trap}echo up; exec sleep 60 & wait"
        )
        while "up" not in podman.docker("logs", name).stdout:
            time.sleep(0.1)
        running = backend._inspect(name)
        assert running.word == "running" and running.ran and running.ran[1] is None, running  # ran: when it started
        assert began - 1 <= running.ran[0] <= time.time(), running
        podman.docker("stop", "--time", "2", name)
        ended = backend._inspect(name)
        assert (ended.word, ended.code) == ("exited", code) and ended.ran[0] <= ended.ran[1] <= time.time(), ended
    assert backend._inspect(podman.name("none")) is None


def test_launch_status_logs_cancel_in_a_real_container(podman, tiny_model_dir, tiny_data, tmp_path):  # noqa: F811
    name = podman.name("lora")
    out = tmp_path / "out"
    env = ftctl_env(podman, tmp_path)
    flags = lora_flags(podman, tiny_model_dir, tiny_data, out, name, max_steps=100000, save_steps=100000)
    ftctl = ftctl_runner(env, tmp_path)

    dry = ftctl("launch", *flags, "--dry-run").stdout
    assert f"docker run --detach --name {name} " in dry and " --ulimit memlock=-1 " in dry
    assert podman.docker("container", "exists", name, check=False).returncode == 1  # nothing started

    assert f"started container {name}" in ftctl("launch", *flags).stdout
    deadline = time.time() + 240
    while '"event": "start"' not in _read(out / "metrics.jsonl"):  # its trainer is training
        assert time.time() < deadline, podman.docker("logs", name).stdout
        time.sleep(0.5)
    assert ftctl("status", name).stdout.startswith(f"{name} RUNNING (running)")
    logs = ftctl("logs", name)  # the trainer's log, through `docker logs` (its stderr apart, as docker keeps it)
    assert "attention: sdpa" in logs.stdout and "parameters trainable" in logs.stderr, logs
    cancel = ftctl("cancel", "--wait", "60", name)
    (saved,) = [c.name for c in out.glob("checkpoint-*")]
    goes_on = f"the same `ftctl launch` resumes it from {saved}"
    assert cancel.stdout.strip() == f"cancelled {name}: its trainer saved a checkpoint as it stopped: {goes_on}"
    assert ftctl("status", name).stdout.splitlines()[0] == f"{name} CANCELLED (stopped, exit 143)"

    # launched again, on a host with podman and no docker command (ftctl said: docker is not installed): the same
    # container, through podman itself (the ended one removed first), and cancelled while its trainer loads: killed at
    # once (its start record in metrics.jsonl is the earlier container's); it waited the whole grace where the backend
    # could not read podman's start time
    ftctl = ftctl_runner(podman_only(env, tmp_path / "podman-only"), tmp_path)
    started = ftctl("launch", *flags).stdout
    (run_dir,) = [line.split(":", 1)[1].strip() for line in started.splitlines() if "run dir:" in line]
    assert (
        f"started container {name}" in started and "exec podman run " in (Path(run_dir) / "docker-run.sh").read_text()
    )
    assert ftctl("status", name).stdout.startswith(f"{name} RUNNING (running)")
    ftctl("logs", name)  # podman logs: what the trainer has said so far
    started = time.monotonic()
    cancel = ftctl("cancel", "--wait", "30", name).stdout
    assert time.monotonic() - started < 10 and "its trainer had not started training" in cancel, cancel
    assert ftctl("status", name).stdout.splitlines()[0] == f"{name} CANCELLED (killed, exit 137)"
    assert [c.name for c in out.glob("checkpoint-*")] == [saved]
    doctor = ftctl("doctor", "--backend", "docker", "--gpus", "cpu").stdout  # which engine, and why
    assert re.search(rf"^docker:  podman \S+ \({tmp_path}/podman-only/podman: no docker command here\)$", doctor, re.M)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""
