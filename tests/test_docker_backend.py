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
from tests.render_fixtures import prepared
from tests.s3_fixtures import FAKE_KEY_ID, FAKE_SECRET, free_port

REPO = Path(__file__).resolve().parents[1]
FTCTL = str(Path(sys.executable).parent / "ftctl")
pytestmark = pytest.mark.slow


def standin_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """This environment with the stand-in ``docker`` first on PATH, its state in ``tmp_path``, and ``extra``."""
    fakes = tmp_path / "bin"
    fakes.mkdir()
    (fakes / "docker").write_text(f'#!/bin/sh\nexec {sys.executable} {REPO}/tests/fake_docker.py "$@"\n')
    (fakes / "docker").chmod(0o755)
    return {
        **os.environ,
        "PATH": f"{fakes}:{Path(sys.executable).parent}:{os.environ['PATH']}",
        "FAKE_DOCKER_STATE": str(tmp_path / "docker-state"),
        "FTCTL_HOME": str(tmp_path / "home"),
        **extra,
    }


@pytest.fixture
def docker_env(tmp_path):
    env = {
        **standin_env(tmp_path),
        "FAKE_LOG": str(tmp_path / "docker.log"),
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
    # the container has only what the run passes (as from a docker engine): one thread, as this test's processes
    o = {
        "max_steps": 4,
        "save_steps": 2,
        "global_batch_size": 2,
        "model_max_length": 64,
        "env": "OMP_NUM_THREADS=1",
        **o,
    }
    for k, v in o.items():
        flags += ["-o", f"{k}={v}"]
    return flags


def docker_calls(env) -> list[list[str]]:
    return [json.loads(line)["argv"] for line in Path(env["FAKE_LOG"]).read_text().splitlines()]


def test_a_launch_whose_output_pipe_closes_is_still_recorded(docker_env, tiny_model_dir, tiny_data, tmp_path):
    """`ftctl launch ... | head -0`: the job was sent, then printing it failed on the closed pipe before it was
    recorded; `status` of its run dir then called it a local run and `cancel` left it running."""
    out = tmp_path / "out"
    flags = run_flags(tiny_model_dir, tiny_data, out, max_steps=100000, save_steps=100000)
    launch = subprocess.Popen(
        [FTCTL, "launch", *flags], env=docker_env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    launch.stdout.close()  # the reader is gone before ftctl prints anything
    launch.wait(timeout=300)
    jobs = ftctl(docker_env, "jobs").stdout
    assert str(out) in jobs, jobs
    # --now: its torchrun has no SIGTERM handler yet, and a container's PID 1 ignores the signal then
    assert ftctl(docker_env, "cancel", "--now", str(out)).stdout.startswith("cancelled")
    # another run of the same name (the same model, another --output) took the container's name: the first run's
    # ended container was removed and its job record lost. Refused, with the flag that names this one apart.
    other = ftctl(docker_env, "launch", *run_flags(tiny_model_dir, tiny_data, tmp_path / "other"), check=False)
    assert other.returncode == 2 and f"is the run in {out} (" in other.stderr, other.stderr
    assert "-o run_name=NAME" in other.stderr and str(out) in ftctl(docker_env, "jobs").stdout


def test_launch_status_logs_through_the_docker_cli(docker_env, tiny_model_dir, tiny_data, tmp_path):
    hostile = tmp_path / 'it\'s a "data" dir $(touch PWNED)'
    hostile.mkdir()
    shutil.copy(tiny_data, hostile / "conv.json")
    out = tmp_path / "out"
    launched = ftctl(docker_env, "launch", *run_flags(tiny_model_dir, hostile / "conv.json", out), cwd=tmp_path)
    job = launched.stdout.split("started container ", 1)[1].split()[0]
    assert launched.stderr.splitlines()[-1] == "image: ftctl:test (--container)"
    assert wait_state(docker_env, job, ["SUCCEEDED", "FAILED"]).startswith(f"{job} SUCCEEDED")
    assert (
        ftctl(docker_env, "status", job).stdout.splitlines()[1].startswith("step 4/")
    )  # metrics.jsonl's (of its total)
    assert "complete" in ftctl(docker_env, "logs", job).stdout
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
    assert not (tmp_path / "PWNED").exists()
    calls = [json.loads(line)["argv"] for line in Path(docker_env["FAKE_LOG"]).read_text().splitlines()]
    run = next(c for c in calls if c[0] == "run")
    assert run[run.index("--name") + 1] == job and "ftctl:test" in run and "--detach" in run
    assert f"{hostile}/conv.json:{hostile}/conv.json:ro" in run  # the data, at its own path, read-only
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
    training(out, 1)  # docker stop's SIGTERM reaches torchrun's handler (a container's PID 1 ignores it before)
    cancel = ftctl(docker_env, "cancel", "--wait", "60", job)
    (saved,) = [c.name for c in out.glob("checkpoint-*")]
    goes_on = f"the same `ftctl launch` resumes it from {saved}"
    assert cancel.stdout.strip() == f"cancelled {job}: its trainer saved a checkpoint as it stopped: {goes_on}"
    assert ["stop", "--time", "60", job] in docker_calls(docker_env) and "waiting up to 60 s" in cancel.stderr
    status = ftctl(docker_env, "status", job).stdout.splitlines()
    assert status[:2] == [
        f"{job} CANCELLED (stopped, exit 143)",
        f"its trainer saved a checkpoint as it stopped: {goes_on}",
    ]
    listed = ftctl(docker_env, "jobs").stdout.splitlines()
    assert listed[1].split()[:3] == [job, "docker", str(out)] and "RUNNING" not in listed[1], listed
    # --now: docker kills it at once, nothing saved, none of its processes left to save one later
    ftctl(docker_env, "launch", *flags, cwd=tmp_path)
    training(out, 2)
    now = ftctl(docker_env, "cancel", "--now", job)
    assert now.stdout.strip() == f"cancelled {job}: no checkpoint was saved as it stopped (--now): {goes_on}"
    assert ["kill", job] in docker_calls(docker_env) and not now.stderr  # no SIGTERM first: nothing saved
    assert ftctl(docker_env, "status", job).stdout.startswith(f"{job} CANCELLED (killed, exit 137)\nno checkpoint")
    assert not [p for p in Path("/proc").glob("[0-9]*/cmdline") if str(out).encode() in _read(p)]
    assert [c.name for c in out.glob("checkpoint-*")] == [saved]


def test_cancel_gives_the_trainer_its_grace_then_docker_kills_it(docker_env, tmp_path, monkeypatch):
    """docker stop's grace: the one its launch recorded (its container's --stop-timeout) unless --wait says; a trainer that stops within it (torchrun's
    exit after its workers' checkpoint) saved one, one that does not is killed and saved none. A trainer that has not
    started training (no start record of its own in metrics.jsonl: one still loading cannot save) is stopped at once:
    it waited the whole grace (120 s), a container's torchrun ignoring SIGTERM until it takes it. Containers of a
    stand-in trainer, which stops on SIGTERM or does not, and writes its start record or not."""
    from ftctl.backend import JobRef, record_job

    monkeypatch.setenv("FTCTL_HOME", docker_env["FTCTL_HOME"])
    fake = [sys.executable, str(REPO / "tests" / "fake_docker.py")]
    earlier = json.dumps({"step": 0, "event": "start", "time": time.time() - 3600})  # an earlier container's trainer
    for name, on_term, starts in (("stops", "sys.exit(143)", True), ("stays", "None", True), ("loads", "None", False)):
        run_dir = tmp_path / name
        run_dir.mkdir()
        (run_dir / "metrics.jsonl").write_text(earlier + "\n")
        script = tmp_path / f"{name}.py"
        script.write_text(
            "import json, signal, sys, time\n"
            f"signal.signal(signal.SIGTERM, lambda *a: {on_term})\n"
            f"if {starts}:\n"
            f"    with open({str(run_dir / 'metrics.jsonl')!r}, 'a') as f:\n"
            "        f.write(json.dumps({'step': 0, 'event': 'start', 'time': time.time()}) + '\\n')\n"
            "print('training', flush=True)\n"
            "time.sleep(600)\n"
        )
        run = ["run", "--detach", "--name", name, "--user", f"{os.getuid()}:{os.getgid()}", "ftctl:test"]
        subprocess.run([*fake, *run, sys.executable, str(script)], env=docker_env, check=True)
        # the grace its launch recorded, its container's --stop-timeout (render.stop_grace_s: a large checkpoint's)
        grace = {"stop_grace_s": 360} if name == "stops" else {}
        record_job(JobRef("docker", name, str(run_dir), name, str(run_dir), grace))
        while "training" not in (Path(docker_env["FAKE_DOCKER_STATE"]) / name / "log").read_text():
            time.sleep(0.1)
    stops = ftctl(docker_env, "cancel", "stops")
    assert "waiting up to 360 s for it, then docker kills it" in stops.stderr and [
        "stop",
        "--time",
        "360",
        "stops",
    ] in [c[-4:] for c in docker_calls(docker_env)]
    assert stops.stdout.startswith("cancelled stops: its trainer saved a checkpoint as it stopped: the same")
    stays = ftctl(docker_env, "cancel", "--wait", "1", "stays")
    said = "no checkpoint was saved as it stopped (none within 1 s: `ftctl cancel --wait SECONDS` gives its trainer"
    assert stays.stdout.startswith(f"cancelled stays: {said}")
    assert ftctl(docker_env, "status", "stays").stdout.startswith("stays CANCELLED (killed, exit 137)")
    started = time.monotonic()
    loads = ftctl(docker_env, "cancel", "loads")
    assert time.monotonic() - started < 10 and ["kill", "loads"] in docker_calls(docker_env)
    assert loads.stdout.strip() == (
        "cancelled loads: no checkpoint was saved as it stopped (its trainer had not started training: nothing since "
        "the last checkpoint to save): the same `ftctl launch` resumes it"  # (no spec.json: what from, not known)
    )
    assert not loads.stderr


def training(out: Path, trainers: int, timeout: float = 240) -> None:
    """Until the run's ``trainers``-th trainer has started training (its start record in metrics.jsonl)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        metrics = out / "metrics.jsonl"
        if metrics.exists() and metrics.read_text().count('"event": "start"') >= trainers:
            return
        time.sleep(0.5)
    raise AssertionError(f"no trainer {trainers} started in {out}")


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def test_missing_docker_is_one_line(tmp_path, tiny_model_dir, tiny_data):
    """Neither docker nor podman (which runs where there is no docker: docker.engine) on PATH: one line."""
    env = {**os.environ, "PATH": str(Path(sys.executable).parent), "FTCTL_HOME": str(tmp_path)}
    env.pop("FTCTL_DOCKER", None)
    proc = ftctl(env, "launch", *run_flags(tiny_model_dir, tiny_data, tmp_path / "o"), check=False, cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (
        "error: neither docker nor podman is installed here: install Docker Engine or podman, or use --backend local."
    )


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
    data = tmp_path / "chats.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}\n')
    flags += ["--data", str(data), "--output", str(tmp_path / "o")]
    proc = ftctl({**docker_env, "HF_TOKEN": "x"}, "launch", *flags, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    build = "ftctl build --gpus H100" + (" --cuda cu126" if flavour == "cu126" else "")
    assert proc.stderr.strip() == (
        f"error: the image {image.default_image('H100', cuda=flavour)} is not on this docker host: build it with "
        f"`{build}` (or pull it), or pass --container docker:IMAGE."
    )


def test_an_object_store_output_gets_the_launchs_credentials_by_name(
    docker_env, s3_bucket, moto_s3, tiny_model_dir, tiny_data, tmp_path
):
    """--output s3://...: the container gets the store's variables set where ftctl launches (AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY, the region and endpoint) by name, and writes its checkpoints there. A docker engine
    gives a container nothing else (the fake neither): without them it failed "Unable to locate credentials"."""
    env = {k: v for k, v in docker_env.items() if not k.startswith("AWS_")}
    env.update({k: v for k, v in os.environ.items() if k.startswith("AWS_")})  # s3_bucket's, set after docker_env
    flags = run_flags(
        tiny_model_dir, tiny_data, f"{s3_bucket}/run", max_steps=2, run_name="s3-run", rdzv_port=free_port()
    )
    job = ftctl(env, "launch", *flags, cwd=tmp_path).stdout.split("started container ", 1)[1].split()[0]
    line = wait_state(env, job, ["SUCCEEDED", "FAILED"])
    assert line.startswith(f"{job} SUCCEEDED"), ftctl(env, "logs", job).stdout
    bucket = s3_bucket.split("://", 1)[1]
    keys = [o["Key"] for o in moto_s3.client().list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert "run/adapter_config.json" in keys, keys
    # its steps, from where the container's trainer staged the run (under its HOME: this host's cache)
    assert ftctl(env, "status", job).stdout.splitlines()[1].startswith("step 2/")
    run = next(c for c in docker_calls(env) if c[0] == "run")
    passed = [run[i + 1] for i, a in enumerate(run) if a == "-e"]
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL"):
        assert name in passed  # by name: docker takes the value from the launching environment
    # never a value, in the docker command or any file of the run
    written = [(tmp_path / "runs" / "s3-run" / n).read_text() for n in ("docker-run.sh", "spec.json")]
    for text in (*written, json.dumps(run)):
        assert FAKE_SECRET not in text and FAKE_KEY_ID not in text


def test_credential_files_are_mounted_read_only(monkeypatch, tmp_path):
    """Where a store is reached through files, not variables: ~/.aws at the container's HOME (a profile names one
    of its sections, so AWS_PROFILE goes along), a file GOOGLE_APPLICATION_CREDENTIALS names at its own path."""
    home = tmp_path / "home"
    (home / ".aws").mkdir(parents=True)
    key = tmp_path / "sa.json"
    key.write_text("{}")
    for var in [v for v in os.environ if v.startswith(("AWS_", "GOOGLE_"))]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("AWS_PROFILE", "team")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key))
    args = dict(backend="docker", gpus="cpu", model_name_or_path="ftctl-test/tiny", model_params="70k")
    r = prepared(data_path="gs://b/data.jsonl", output_dir="s3://b/run", **args)
    container_home = tmp_path / "cache" / "ftctl" / "container-home"
    assert f" -v {home}/.aws:{container_home}/.aws:ro " in r.text
    assert f" -v {key}:{key}:ro " in r.text and f" -e GOOGLE_APPLICATION_CREDENTIALS={key} " in r.text
    assert " -e AWS_PROFILE " in r.text
    local = prepared(data_path=str(tmp_path), output_dir=str(tmp_path / "o"), **args).text  # no store: nothing
    assert ".aws" not in local and "AWS_PROFILE" not in local and "GOOGLE" not in local


def test_status_of_a_failed_container_says_the_trainers_error(docker_env, tmp_path, monkeypatch):
    """`ftctl status` of a failed container: the trainer's error line, not only the exit code, although
    torchrun's ChildFailedError report follows it at the end of the log."""
    from ftctl.backend import JobRef, record_job

    report = "\n".join(
        ["E0101 torch/distributed/elastic/multiprocessing/api.py:882] failed (exitcode: 1) local_rank: 0"]
        + ["Traceback (most recent call last):"]
        + [f'  File "/opt/venv/lib/python3.12/site-packages/torch/x{i}.py", line {i}, in f' for i in range(30)]
        + ["torch.distributed.elastic.multiprocessing.errors.ChildFailedError: ", "=" * 40]
    )
    script = tmp_path / "fail.py"  # what the trainer and torchrun print when a rank fails on its data
    script.write_text(
        f"import sys\nprint('training')\nprint('error: No rows in /data/x.jsonl', file=sys.stderr)\n"
        f"print({report!r}, file=sys.stderr)\nsys.exit(1)\n"
    )
    name = "failing-run"
    run = ["run", "--detach", "--name", name, "--user", f"{os.getuid()}:{os.getgid()}", "ftctl:test"]
    fake = [sys.executable, str(REPO / "tests" / "fake_docker.py")]
    subprocess.run([*fake, *run, sys.executable, str(script)], env=docker_env, check=True)
    monkeypatch.setenv("FTCTL_HOME", docker_env["FTCTL_HOME"])
    record_job(JobRef("docker", name, str(tmp_path), name, str(tmp_path)))
    lines = wait_state(docker_env, name, ["SUCCEEDED", "FAILED"]).splitlines()
    assert lines[:2] == [f"{name} FAILED exit 1", "error: No rows in /data/x.jsonl"]


def test_doctor_checks_the_nvidia_runtime_for_gpus(docker_env):
    """--gpus fails without the NVIDIA Container Toolkit (could not select device driver ""): doctor says so
    where the run would use GPUs (those of this host, without --gpus), and not for a CPU run. nvidia-smi is a
    stand-in for a host with an H100."""
    smi = Path(docker_env["PATH"].split(":")[0]) / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'NVIDIA H100 80GB HBM3, 81559'\n")
    smi.chmod(0o755)
    without = ftctl(docker_env, "doctor", "--backend", "docker", check=False)
    said = "gpus:    docker has no NVIDIA container runtime, so --gpus fails: install the NVIDIA Container Toolkit"
    assert without.returncode != 0 and said in without.stdout, without.stdout + without.stderr
    with_it = ftctl({**docker_env, "FAKE_DOCKER_RUNTIMES": "nvidia"}, "doctor", "--backend", "docker")
    assert "gpus:    the NVIDIA container runtime (nvidia)" in with_it.stdout
    assert ["info", "--format", "{{json .}}"] in docker_calls(docker_env)
    assert "gpus:" not in ftctl(docker_env, "doctor", "--backend", "docker", "--gpus", "cpu").stdout
