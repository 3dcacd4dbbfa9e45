"""A docker run on an engine on another machine (DOCKER_HOST=ssh://gpu, podman's CONTAINER_HOST ...) is shipped: its
container made with nothing of this machine mounted (``docker create``), its spec.json and local inputs copied in
(``docker cp``, a tar on stdin), then started; its output is an object store; `status` reads the trainer's metrics
copied out of the container. Through tests/fake_docker.py here (fast), and against podman serving its API on TCP
(the real test, slow): a trained run's checkpoints in a loopback S3 (moto), no mount of its run dir in the container.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from ftctl.cli import main
from ftctl.docker import backend, engine
from tests.podman_fixtures import podman  # noqa: F401 (the fixture)
from tests.s3_fixtures import FAKE_KEY_ID, FAKE_SECRET, MotoS3, moto_s3  # noqa: F401 (the fixture)
from tests.test_docker_remote172 import host  # noqa: F401 (the fixture: this machine, the fake docker first on PATH)

FTCTL = str(Path(sys.executable).parent / "ftctl")


def _launch(model, data, *more, out=None):
    out = out or f"s3://{os.environ['FTCTL_TEST_BUCKET']}/runs/a"
    flags = [
        "-o",
        f"s3_endpoint_url={os.environ['FTCTL_TEST_S3']}",
        "--backend",
        "docker",
        "--gpus",
        "cpu",
        "--method",
        "lora",
        "--model",
        str(model),
        "--data",
        str(data),
    ]
    flags += ["--output", out, "--container", "docker:ghcr.io/x/img:1", "-o", "max_steps=4", "-o", "run_name=far"]
    return CliRunner().invoke(main, ["launch", *flags, *more])


@pytest.fixture
def gpu_box(host, moto_s3, tmp_path, monkeypatch):  # noqa: F811
    """The fake docker's engine on another machine (DOCKER_HOST=ssh://gpu), S3 credentials in variables here, and a
    `python3` in the container that stands in for its trainer: says whether its --spec is there, then waits for a
    SIGTERM."""
    monkeypatch.setenv("DOCKER_HOST", "ssh://gpu")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", FAKE_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET)
    monkeypatch.setenv("FTCTL_TEST_S3", moto_s3.endpoint)
    monkeypatch.setenv("FTCTL_TEST_BUCKET", moto_s3.make_bucket())
    monkeypatch.chdir(tmp_path)
    stub = host / "python3"
    stub.write_text(
        '#!/bin/sh\nfor a; do spec=$a; done\ntest -f "$spec" && echo "trainer: its spec.json is there"\n'
        'trap "exit 143" TERM\nsleep 60 & wait\n'
    )
    stub.chmod(0o755)
    return host


def test_a_run_on_another_machines_engine_is_created_copied_in_and_started(gpu_box, tiny_model_dir, tiny_data):
    """The dry run says the three commands sent: create without a -v (nothing of this machine there), the
    credentials by name only, its own caches; cp of a tar from stdin; start. The launch sends them in that order; the
    tar holds the run's spec.json, data and model at their own paths, the launching user's, and no secret."""
    dry = _launch(tiny_model_dir, tiny_data, "--dry-run")
    assert dry.exit_code == 0, dry.output
    lines = dry.stdout.splitlines()
    assert lines[0] == (
        "# docker runs containers on another machine (DOCKER_HOST=ssh://gpu): the run is copied into its container, "
        "not mounted"
    )
    create = lines[1]
    assert (
        create.startswith("docker create --name far --user ") and " -v " not in create and "--group-add" not in create
    )
    assert " -e AWS_ACCESS_KEY_ID -e AWS_SECRET_ACCESS_KEY " in create and FAKE_SECRET not in dry.output
    assert " -e HOME=/tmp/ftctl/home " in create and str(Path.home()) not in create
    run_dir = Path("runs/far").resolve()
    assert (
        lines[2]
        == f"# docker cp reads a tar ftctl makes of {json.dumps([f'{run_dir}/spec.json', str(tiny_data), str(tiny_model_dir)])}"
    )
    assert lines[3:] == ["docker cp --archive - far:/", "docker start far"]

    said = _launch(tiny_model_dir, tiny_data)
    assert said.exit_code == 0, said.output
    calls = [json.loads(c)["argv"] for c in Path(os.environ["FAKE_LOG"]).read_text().splitlines()]
    sent = [c[0] for c in calls if c[0] in ("run", "create", "cp", "start")]
    assert sent == ["create", "cp", "start"], calls
    assert next(c for c in calls if c[0] == "create") == create.split()[1:]
    state = Path(os.environ["FAKE_DOCKER_STATE"]) / "far"
    copied = json.loads((state / "copied.json").read_text())
    files = {m["name"] for m in copied if m["type"] == "0"}
    assert {str(run_dir / "spec.json")[1:], str(tiny_data)[1:]} <= files, files
    assert any(f.startswith(str(tiny_model_dir)[1:] + "/") for f in files), files
    assert {(m["uid"], m["gid"]) for m in copied} == {(os.getuid(), os.getgid())}
    for path in (state / "root").rglob("*"):
        assert not path.is_file() or FAKE_SECRET.encode() not in path.read_bytes(), path
    ref = json.loads(Path(os.environ["FTCTL_HOME"], "jobs.jsonl").read_text().splitlines()[-1])
    inside = ref["extra"]["shipped"]
    assert inside.startswith("/tmp/ftctl/home/"), inside  # where its trainer stages the run, in the container

    # status: the trainer's metrics.jsonl copied out of the container (its start record, a step), and cancel asks it
    # for a checkpoint (it started training)
    deadline = time.time() + 30
    while "trainer: " not in (state / "log").read_text():
        assert time.time() < deadline
        time.sleep(0.1)
    assert (state / "root" / str(run_dir / "spec.json")[1:]).is_file()  # the container's, copied in
    metrics = state / "root" / inside.lstrip("/") / "metrics.jsonl"
    metrics.parent.mkdir(parents=True)
    now = time.time()
    metrics.write_text(
        json.dumps({"event": "start", "time": now})
        + "\n"
        + json.dumps({"step": 2, "loss": 1.25, "max_steps": 4})
        + "\n"
    )
    status = CliRunner().invoke(main, ["status", "far"])
    assert status.stdout.splitlines()[0] == "far RUNNING (running)", status.output
    assert any(line.startswith("step 2/4") and "loss 1.25" in line for line in status.stdout.splitlines()), (
        status.output
    )
    assert (run_dir / backend.CONTAINER_COPY / "metrics.jsonl").read_text() == metrics.read_text()
    cancel = CliRunner().invoke(main, ["cancel", "--wait", "20", "far"])
    assert (
        cancel.stdout.strip()
        == "cancelled far: its trainer saved a checkpoint as it stopped: the same `ftctl launch` resumes it"
    ), cancel.output


def test_a_shipped_run_is_refused_a_local_output_and_inputs_too_large_to_copy(
    gpu_box, tiny_model_dir, tiny_data, tmp_path, monkeypatch
):
    """Its checkpoints would stay in the container on gpu: a local --output is refused with the fix (an object
    store; FTCTL_DOCKER_SAME_PATHS=1 where gpu sees this machine's paths, which mounts them as before). Inputs of
    more than SHIP_LIMIT are refused, the largest named, with where to put them. Credentials in files here (a
    profile of ~/.aws) are not copied, and that is said."""
    said = _launch(tiny_model_dir, tiny_data, out=str(tmp_path / "out"))
    assert said.exit_code == 2, said.output
    assert said.stderr == (
        f"error: --output '{tmp_path / 'out'}' is a local path, and docker runs containers on another machine "
        "(DOCKER_HOST=ssh://gpu), which cannot write here: give --output an object-store URI (s3://bucket/path, "
        "gs://...), where a run copied there keeps its checkpoints, final model and resume; or run ftctl on that "
        "machine; or, where that machine sees this one's paths at the same place (a shared filesystem), export "
        "FTCTL_DOCKER_SAME_PATHS=1.\n"
    )
    home = tmp_path / "me"  # credentials in files here: not copied (by name only), said
    (home / ".aws").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    (home / ".aws" / "credentials").write_text(f"[work]\naws_access_key_id = {FAKE_KEY_ID}\n")
    monkeypatch.setenv("AWS_PROFILE", "work")
    dry = _launch(tiny_model_dir, tiny_data, "--dry-run")
    assert dry.exit_code == 0 and "AWS_PROFILE" not in dry.stdout and ".aws" not in dry.stdout, dry.output
    assert (
        "warning: the object-store credentials in files here (AWS_PROFILE, ~/.aws) are not copied into the container "
        "on DOCKER_HOST=ssh://gpu (credentials pass by name only): it has the variables set here (AWS_ACCESS_KEY_ID, "
        "AWS_SECRET_ACCESS_KEY)"
    ) in dry.stderr.splitlines(), dry.stderr
    monkeypatch.setattr(backend, "SHIP_LIMIT", 1000)
    said = _launch(tiny_model_dir, tiny_data)
    assert said.exit_code == 2, said.output
    assert said.stderr.startswith(f"error: the run's local inputs ({tiny_model_dir}: ") and said.stderr.endswith(
        "more than the 1000 B ftctl copies into a container with each launch where docker runs containers on another "
        "machine (DOCKER_HOST=ssh://gpu): put the data in object storage (--data s3://bucket/path), name a Hub model "
        "(--model ORG/NAME), or run ftctl on that machine; or, where that machine sees this one's paths at the same "
        "place (a shared filesystem), export FTCTL_DOCKER_SAME_PATHS=1.\n"
    ), said.stderr
    assert "create" not in Path(os.environ["FAKE_LOG"]).read_text()
    monkeypatch.setenv(engine.SAME_PATHS_ENV, "1")  # mounted as on this machine
    dry = _launch(tiny_model_dir, tiny_data, "--dry-run", out=str(tmp_path / "out"))
    assert dry.exit_code == 0 and dry.stdout.startswith("docker run --detach --name far "), dry.output


def _address() -> str:
    """An address of this machine other than loopback (its default route's: a UDP connect sends nothing), at which
    an engine counts as another machine's (docker.engine.this_machine)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("8.8.8.8", 9))
            return s.getsockname()[0]
    except OSError as e:
        pytest.fail(f"no address of this machine but loopback to serve podman's API on ({e})", pytrace=False)


@pytest.mark.slow
def test_a_run_shipped_to_podmans_api_on_tcp_trains_into_s3(podman, tiny_model_dir, tiny_data, tmp_path):  # noqa: F811
    """podman serving its API on this machine's TCP address (CONTAINER_HOST=tcp://ADDR:PORT: an engine on another
    machine to ftctl) runs a shipped LoRA run of the tiny model: launched, it trains to the end; its checkpoints and
    final adapter are in the S3 store (moto on loopback, which the container reaches: --network=host on this
    machine), `status` says its last step from the metrics copied out of the container, and the container had no
    mount of the run dir or inputs (only the engine configuration's own: the venv)."""
    addr = _address()
    with socket.socket() as s:
        s.bind((addr, 0))
        port = s.getsockname()[1]
    log = open(tmp_path / "service.log", "wb")
    service = subprocess.Popen(
        ["podman", "system", "service", "--time=0", f"tcp://{addr}:{port}"],
        env=podman.env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    s3 = MotoS3(tmp_path / "moto")
    try:
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection((addr, port), timeout=0.2).close()
                break
            except OSError:
                assert time.time() < deadline and service.poll() is None, (tmp_path / "service.log").read_text()
                time.sleep(0.1)
        s3.start()
        bucket = s3.make_bucket()
        name = podman.name("shipped")
        env = {**podman.env, "CONTAINER_HOST": f"tcp://{addr}:{port}", "FTCTL_HOME": str(tmp_path / "home")}
        env.update(XDG_CACHE_HOME=str(tmp_path / "cache"), AWS_ACCESS_KEY_ID=FAKE_KEY_ID)
        env.update(AWS_SECRET_ACCESS_KEY=FAKE_SECRET)
        env.pop("HF_HOME", None)
        out = f"s3://{bucket}/run"
        flags = ["--backend", "docker", "--gpus", "cpu", "--method", "lora", "--model", str(tiny_model_dir)]
        flags += ["--data", str(tiny_data), "--output", out, "--container", f"docker:{podman.image}"]
        for key, value in dict(
            max_steps=4, save_steps=2, global_batch_size=2, model_max_length=64, s3_endpoint_url=s3.endpoint
        ).items():
            flags += ["-o", f"{key}={value}"]
        flags += ["-o", "env=OMP_NUM_THREADS=1", "-o", f"run_name={name}"]

        def ftctl(*args):
            proc = subprocess.run([FTCTL, *args], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
            assert proc.returncode == 0, proc.stderr + proc.stdout
            return proc

        started = ftctl("launch", *flags)
        assert f"started container {name}" in started.stdout, started.stdout + started.stderr
        assert "reaches that machine's: give an address it reaches" in started.stderr  # said, the loopback S3
        docker = ["docker", "--remote"]  # podman's CLI, asking the service as ftctl did
        waited = subprocess.run([*docker, "wait", name], env=env, capture_output=True, text=True, timeout=120)
        assert waited.stdout.strip() == "0", ftctl("logs", name).stdout + ftctl("logs", name).stderr
        status = ftctl("status", name).stdout.splitlines()
        assert status[0] == f"{name} SUCCEEDED exit 0" and status[1].startswith("step 4/4 "), status
        keys = [o["Key"] for o in s3.client().list_objects_v2(Bucket=bucket, Prefix="run/")["Contents"]]
        assert {"run/adapter_config.json", "run/checkpoint-2/adapter_config.json"} <= set(keys), keys
        mounts = json.loads(
            subprocess.run(
                [*docker, "inspect", "--format", "{{json .Mounts}}", name],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            ).stdout
        )
        # none of ftctl's: no run dir, data or model (podman lists a `-v`, not its configuration's mounts of the venv)
        assert mounts == [], mounts
    finally:
        s3.kill()
        os.killpg(service.pid, 15)
        service.wait(30)
