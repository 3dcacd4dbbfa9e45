"""A docker run on an engine on another machine (DOCKER_HOST=ssh://gpu, podman's CONTAINER_HOST ...) is shipped: its
container made with nothing of this machine mounted (``docker create``), its spec.json and local inputs copied in
(``docker cp``, a tar on stdin), then started; its output is an object store; `status` reads the trainer's metrics
copied out of the container. Through tests/fake_docker.py here (fast), and against podman serving its API on TCP
(the real test, slow): a trained run's checkpoints in a loopback S3 (moto), no mount of its run dir in the container,
its Hugging Face cache in a named volume of the engine's, kept between runs.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from ftctl.cli import main
from ftctl.docker import backend, engine, render
from tests.podman_fixtures import ftctl_env, ftctl_runner, lora_flags, podman  # noqa: F401 (the fixture)
from tests.s3_fixtures import FAKE_KEY_ID, FAKE_SECRET, MotoS3, moto_s3  # noqa: F401 (the fixture)
from tests.test_docker_remote172 import host  # noqa: F401 (the fixture: this machine, the fake docker first on PATH)


def _launch(model, data, *more, out=None):
    """`ftctl launch` of a shipped LoRA run (run_name far) into ``out`` (default: the test's bucket; "": no --output)."""
    out = f"s3://{os.environ['FTCTL_TEST_BUCKET']}/runs/a" if out is None else out
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
    flags += [*(["--output", out] if out else []), "--container", "docker:ghcr.io/x/img:1"]
    flags += ["-o", "max_steps=4", "-o", "run_name=far"]
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
    """The dry run says the three commands sent, after the one that makes the Hugging Face cache's volume where the
    engine has none: create with no -v of this machine's paths (only that volume), the credentials by name only, its
    own caches; cp of a tar from stdin; start. The launch sends them in that order, and says the volume; the tar holds
    the run's spec.json, data and model at their own paths, the launching user's, and no secret."""
    dry = _launch(tiny_model_dir, tiny_data, "--dry-run")
    assert dry.exit_code == 0, dry.output
    lines = dry.stdout.splitlines()
    assert lines[:2] == [
        "# docker runs containers on another machine (DOCKER_HOST=ssh://gpu): the run is copied into its container, "
        "not mounted",
        "# its Hugging Face cache is the volume ftctl-hf-cache there, kept between runs; where there is none yet, "
        "first: docker run --rm --user 0:0 --network=none --entrypoint chmod -v ftctl-hf-cache:/ftctl-hf-cache "
        "ghcr.io/x/img:1 1777 /ftctl-hf-cache",
    ]
    create = lines[2]
    assert create.startswith("docker create --name far --user ") and "--group-add" not in create
    # of this machine's paths, none mounted: only the volume of the Hugging Face cache, the launching user's HF_HOME
    assert create.count(" -v ") == 1 and f" -v {render.HF_VOLUME}:{render.HF_VOLUME_AT} -e " in create
    assert f" -e HF_HOME={render.HF_VOLUME_AT}/{os.getuid()} " in create
    assert " -e AWS_ACCESS_KEY_ID -e AWS_SECRET_ACCESS_KEY " in create and FAKE_SECRET not in dry.output
    assert " -e HOME=/tmp/ftctl/home " in create and str(Path.home()) not in create
    run_dir = Path("runs/far").resolve()
    assert (
        lines[3]
        == f"# docker cp reads a tar ftctl makes of {json.dumps([f'{run_dir}/spec.json', str(tiny_data), str(tiny_model_dir)])}"
    )
    assert lines[4:] == ["docker cp --archive - far:/", "docker start far"]

    said = _launch(tiny_model_dir, tiny_data)
    assert said.exit_code == 0, said.output
    assert said.stdout.splitlines()[-1] == (
        "  hf cache:    the volume ftctl-hf-cache there, kept between runs (a model downloads once): `docker volume rm "
        "ftctl-hf-cache` frees it"
    )
    calls = [json.loads(c)["argv"] for c in Path(os.environ["FAKE_LOG"]).read_text().splitlines()]
    sent = [c[:2] for c in calls if c[0] in ("volume", "run", "create", "cp", "start")]
    assert sent == [["volume", "inspect"], ["run", "--rm"], ["create", "--name"], ["cp", "--archive"], ["start", "far"]]
    assert calls[[c[0] for c in calls].index("run")] == lines[1].split(": ", 1)[1].split()[1:]
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


def test_a_shipped_runs_hugging_face_cache_is_a_volume_kept_between_runs(
    gpu_box, tiny_model_dir, tiny_data, monkeypatch
):
    """Its HF_HOME is the launching user's directory in the volume ftctl-hf-cache, which lives on the engine's
    machine: made (its root writable by any user, 1777) by the first launch only, and what a run put in its cache (a
    base model it downloaded) is there for the next run. A volume that cannot be made writable fails the launch, said,
    and is removed (the next launch makes it again); no container is made."""
    (gpu_box / "python3").write_text(  # the trainer: downloads its model into HF_HOME, unless it is there
        '#!/bin/sh\nmkdir -p "$HF_HOME"\nif test -f "$HF_HOME/model"; then echo "trainer: the model is in the cache"; '
        'else echo "trainer: downloading the model"; echo weights > "$HF_HOME/model"; fi\n'
    )
    state = Path(os.environ["FAKE_DOCKER_STATE"])
    log = Path(os.environ["FAKE_LOG"])
    monkeypatch.setenv("FAKE_DOCKER_RUN_RM_FAILS", "Error: chmod: executable file not found in $PATH")
    said = _launch(tiny_model_dir, tiny_data)
    assert said.exit_code == 2 and said.stderr.splitlines()[-1] == (
        "error: docker run (making the volume ftctl-hf-cache writable) failed: Error: chmod: executable file not found "
        "in $PATH"
    ), said.output
    assert not (state / "volumes" / render.HF_VOLUME).exists() and '"create"' not in log.read_text()
    monkeypatch.delenv("FAKE_DOCKER_RUN_RM_FAILS")
    log.unlink()
    for run, trainer in (("one", "downloading the model"), ("two", "the model is in the cache")):
        said = _launch(tiny_model_dir, tiny_data, "-o", f"run_name={run}")
        assert said.exit_code == 0, said.output
        deadline, ended = time.time() + 30, state / run / "rc"  # its exit code, as the container ends
        while not ended.exists():
            assert time.time() < deadline
            time.sleep(0.1)
        assert (ended.read_text(), (state / run / "log").read_text()) == ("0", f"trainer: {trainer}\n")
    volume = state / "volumes" / render.HF_VOLUME
    assert (volume / str(os.getuid()) / "model").is_file() and stat.S_IMODE(volume.stat().st_mode) == 0o1777
    calls = [json.loads(c)["argv"] for c in log.read_text().splitlines()]
    made = [c[:2] for c in calls if c[0] in ("volume", "run")]
    assert made == [["volume", "inspect"], ["run", "--rm"], ["volume", "inspect"]], calls


def test_a_shipped_run_is_refused_a_local_output_and_inputs_too_large_to_copy(
    gpu_box, tiny_model_dir, tiny_data, tmp_path, monkeypatch
):
    """Its checkpoints would stay in the container on gpu: a local --output is refused with the fix (an object
    store; FTCTL_DOCKER_SAME_PATHS=1 where gpu sees this machine's paths, which mounts them as before), and a run
    without --output is told where it would go (that was said of --output, as given). Inputs of
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
    said = _launch(tiny_model_dir, tiny_data, out="")  # where a run without --output goes, said as such
    assert said.exit_code == 2 and said.stderr.startswith(
        f"error: without --output the run goes to '{Path('runs/far').resolve()}', and docker runs containers on "
        "another machine (DOCKER_HOST=ssh://gpu), which cannot write here: give --output an object-store URI"
    ), said.output
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
    mount of the run dir or inputs (only the engine configuration's own: the venv), only the volume of its Hugging
    Face cache, which the launch made writable by any user. A Hub model put in that cache by another container is
    what a second run trains from offline: the cache is kept between runs."""
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
        env = ftctl_env(podman, tmp_path, CONTAINER_HOST=f"tcp://{addr}:{port}", AWS_ACCESS_KEY_ID=FAKE_KEY_ID)
        env.update(AWS_SECRET_ACCESS_KEY=FAKE_SECRET)
        out = f"s3://{bucket}/run"
        options = dict(max_steps=4, save_steps=2, s3_endpoint_url=s3.endpoint)
        flags = lora_flags(podman, tiny_model_dir, tiny_data, out, name, **options)
        ftctl = ftctl_runner(env, tmp_path, timeout=120)

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
        # of ftctl's, only the Hugging Face cache's volume: no run dir, data or model (podman lists a `-v`, not its
        # configuration's mounts of the venv)
        assert [(m["Type"], m["Name"], m["Destination"]) for m in mounts] == [
            ("volume", render.HF_VOLUME, render.HF_VOLUME_AT)
        ], mounts

        # the volume, made by the launch (where the engine had none): writable by any user
        made = subprocess.run([*docker, "volume", "inspect", render.HF_VOLUME], env=env, capture_output=True, text=True)
        assert stat.S_IMODE(os.stat(json.loads(made.stdout)[0]["Mountpoint"]).st_mode) == 0o1777, made

        # what a run put in its Hugging Face cache is there for the next: a Hub model (the tiny one, as the Hub
        # keeps it) in the launching user's HF_HOME in the volume, put there by another container, is what a run
        # offline (HF_HUB_OFFLINE=1, here and so there) trains from; this machine's cache has it for the plan
        hub = tmp_path / "seed" / "hub" / "models--ftctl-test--tiny"
        shutil.copytree(tiny_model_dir, hub / "snapshots" / ("0" * 40))
        (hub / "refs").mkdir()
        (hub / "refs" / "main").write_text("0" * 40)
        shutil.copytree(hub.parent, tmp_path / "cache" / "huggingface" / "hub")
        home = f"{render.HF_VOLUME_AT}/{os.getuid()}"
        seed = [
            *docker,
            "run",
            "--rm",
            "-v",
            f"{render.HF_VOLUME}:{render.HF_VOLUME_AT}",
            "-v",
            f"{hub.parent}:/seed:ro",
        ]
        seed += [podman.image, "sh", "-c", f"mkdir -p {home}/hub && cp -r /seed/. {home}/hub/"]
        assert subprocess.run(seed, env=env, capture_output=True, text=True, timeout=60).returncode == 0
        env["HF_HUB_OFFLINE"] = "1"
        cached = podman.name("cached")
        options = dict(max_steps=1, save_steps=100, s3_endpoint_url=s3.endpoint)
        ftctl("launch", *lora_flags(podman, "ftctl-test/tiny", tiny_data, f"s3://{bucket}/run2", cached, **options))
        waited = subprocess.run([*docker, "wait", cached], env=env, capture_output=True, text=True, timeout=120)
        assert waited.stdout.strip() == "0", ftctl("logs", cached).stdout + ftctl("logs", cached).stderr
    finally:
        s3.kill()
        os.killpg(service.pid, 15)
        service.wait(30)
