"""`ftctl launch --backend sky` for real: SkyPilot 0.14's own Slurm infra provisions the tasks on the
tests' 2-node Slurm cluster (tests/sky_fixtures.py), offline. Every call is `ftctl ...` in a subprocess,
as a user runs it, from the trainer environment: ftctl runs SkyPilot in the launcher environment
(.venv-sky, $FTCTL_SKY_PYTHON) through ftctl.sky.bridge.

Nothing is mocked but what cannot exist here: the jobs controller's internet probe (sitecustomize, only
in the test's SkyPilot environment; see tests/sky/site/sitecustomize.py).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ftctl.checkpoints import MANIFEST
from ftctl.envvars import STOP_POLL_ENV
from ftctl.runpaths import STOP_REQUEST
from tests.s3_fixtures import FAKE_SECRET
from tests.sky_fixtures import s3_env

pytestmark = pytest.mark.slow

FTCTL = str(Path(sys.executable).parent / "ftctl")
HOSTILE = 'a 0/a"=0"/a\'; echo foo $(id)'  # the data path's key: spaces, quotes, shell
TRAIN = {"max_steps": 4, "save_steps": 2, "global_batch_size": 4, "model_max_length": 128, "logging_steps": 1}
CLUSTER = "ftsky"
REVISION = "0123456789abcdef0123456789abcdef01234567"


class Sky:
    def __init__(self, infra, s3, cwd: Path):
        self.infra, self.s3, self.cwd = infra, s3, cwd
        self.env = {**infra.env, **s3_env(s3)}

    def ftctl(self, *args, check=True, timeout=300) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [FTCTL, *args], env=self.env, cwd=self.cwd, capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"ftctl {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def run_args(self, model, data, output, nodes=2, **overrides) -> list[str]:
        args = ["--backend", "sky", "--infra", self.infra.infra, "--gpus", "cpu", "--nodes", str(nodes)]
        args += ["--method", "lora", "--model", str(model), "--model-params", "70k", "--data", data, "--output", output]
        # no --secret AWS_...: the bucket's credentials set here go to the job by themselves (sky.backend.job_secrets)
        args += ["-o", f"s3_endpoint_url={self.s3.endpoint}", "-o", "env=AWS_DEFAULT_REGION=us-east-1", *self.hf_env]
        # the trainer asks for `ftctl cancel`'s stop request every second (10 s by default: each cancel waited ~5 s)
        args += ["-o", f"env={STOP_POLL_ENV}=1"]
        for k, v in {**TRAIN, **overrides}.items():
            args += ["-o", f"{k}={v}"]
        return args

    def launch(self, *args) -> str:
        out = self.ftctl("launch", *args, timeout=600).stdout
        found = re.search(r"^submitted SkyPilot job (\S+)", out, re.M)
        assert found, out
        return found.group(1)

    def wait(self, job: str, words, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        line = ""
        while time.monotonic() < deadline:
            line = self.ftctl("status", job).stdout.strip()
            if any(f" {w}" in line for w in words):
                return line
            if " FAILED" in line:  # it will not become what is wanted: say why now
                break
            time.sleep(2)
        raise AssertionError(f"{job}: {line!r} after {timeout} s at most, wanted {words}\n{self.why(job)}")

    def why(self, job: str) -> str:
        """What SkyPilot logged of a job that went wrong: a managed job's controller log, else the job's."""
        if job.startswith("managed/"):
            args = ["jobs", "logs", "--controller", "--no-follow", job.split("/")[1]]
        else:
            args = ["logs", "--no-follow", *job.split("/")]
        try:
            proc = self.infra.sky(*args, timeout=60)
        except subprocess.TimeoutExpired:
            return f"sky {' '.join(args)} did not answer in 60 s"
        return f"sky {' '.join(args)}:\n{(proc.stdout + proc.stderr)[-6000:]}"


@pytest.fixture(scope="module")
def sky(sky_infra, sky_s3, tiny_model_dir, tmp_path_factory, request):
    s = Sky(sky_infra, sky_s3, tmp_path_factory.mktemp("sky-launch"))
    # the model is a hub id the nodes find in their Hugging Face cache, offline (as a cluster's shared
    # HF_HOME); the client has no copy and never downloads it
    snapshot = sky_infra.base / "hf" / "hub" / "models--ftctl-test--tiny" / "snapshots" / REVISION
    shutil.copytree(tiny_model_dir, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text(REVISION)
    s.model = "ftctl-test/tiny"
    s.hf_env = ["-o", f"env=HF_HOME={sky_infra.base / 'hf'}", "-o", "env=HF_HUB_OFFLINE=1"]
    s.bucket = sky_s3.make_bucket()
    from ftctl.demo import demo_data_path

    s.data = f"s3://{s.bucket}/data/{HOSTILE}.json"
    sky_s3.client().put_object(Bucket=s.bucket, Key=f"data/{HOSTILE}.json", Body=demo_data_path().read_bytes())
    # the first launch's inputs are this machine's files: they travel with the task (file_mounts), names and all
    s.local_model = s.cwd / "my model"
    shutil.copytree(tiny_model_dir, s.local_model)
    s.local_data = s.cwd / "in put" / 'a"=0" $(touch PWNED);x.json'
    s.local_data.parent.mkdir()
    s.local_data.write_bytes(demo_data_path().read_bytes())
    yield s
    # whatever a failed test left must not hold the Slurm nodes the later test modules need (the tests that
    # passed took down what they launched: two SkyPilot calls, ~30 s, spared)
    if request.session.testsfailed or sky_infra.cluster.run("squeue", "-h", "-o", "%i %j").stdout.strip():
        sky_infra.sky("jobs", "cancel", "-a", "-y")
        sky_infra.sky("down", "-a", "-y", timeout=300)


def test_launch_two_nodes_status_logs_cancel_down(sky, sky_infra, sky_s3):
    t0 = time.monotonic()
    out = f"s3://{sky.bucket}/runs/lora"
    args = sky.run_args(sky.local_model, str(sky.local_data), out, run_name="sky-lora")
    job = sky.launch(*args, "--cluster", CLUSTER, "--preflight")
    assert job.startswith(f"{CLUSTER}/"), job
    # a second, long run on the same cluster, reused (sky.launch), sent while the first runs; cancelled below
    long_job = sky.launch(
        *sky.run_args(
            sky.model,
            sky.data,
            f"s3://{sky.bucket}/runs/long",
            run_name="sky-long",
            max_steps=100000,
            save_steps=100000,
        ),
        "--cluster",
        CLUSTER,
    )
    assert long_job.startswith(f"{CLUSTER}/") and long_job != job
    line = sky.wait(job, ("SUCCEEDED", "FAILED", "CANCELLED", "UNKNOWN"), timeout=300)
    print(f"[t] launch..SUCCEEDED {time.monotonic() - t0:.0f}s", file=sys.stderr)
    logs = sky.ftctl("logs", "-f", job).stdout  # follows to the end of a finished job
    assert " SUCCEEDED" in line, f"{line}\n{logs}"
    assert "node 0 of 2" in logs and "node 1 of 2" in logs, logs
    # ftctl's torchrun ran (the node's run python): no exit-barrier race of torchrun's at the end (pytorch#69520)
    assert "exit barrier" not in logs and "failed to shutdown the rendezvous" not in logs, logs
    # each node's setup found the stack where the run's torchrun is (the nodes' "image": this venv's torchrun on
    # PATH, not SkyPilot's ~/sky-user-env) and held its torch: nothing was installed (the nodes have no network)
    import torch

    held = rf"ftctl: {re.escape(str(Path(sys.executable).parent))}/python[\d.]*: torch {re.escape(torch.__version__)} is held"
    assert len(re.findall(held, logs)) == 2 and "has no torch" not in logs, logs
    # --preflight: the all-reduce probe ran first across both nodes' processes (gloo on CPU)
    assert "netcheck: 2 processes on 2 node(s) (gloo)" in logs, logs
    # both nodes trained: the rendezvous reached world size 2; checkpoints are complete in the bucket
    keys = [
        o["Key"] for o in sky_s3.client().list_objects_v2(Bucket=sky.bucket, Prefix="runs/lora/").get("Contents", [])
    ]
    assert any(k.endswith("manifest.json") for k in keys), keys
    # the credentials went as SkyPilot secrets (no --secret named them), by name: no value in anything written here
    run_dir = sky.cwd / "runs" / "sky-lora"
    for f in (f for f in run_dir.rglob("*") if f.is_file()):  # .ftctl/ too (its launch lock, the launch records)
        assert FAKE_SECRET not in f.read_text(errors="replace"), f
    # the local model directory and data file reached the nodes as file_mounts, where the nodes' spec.json names them
    shipped = list(sky_infra.base.glob("home/.sky_clusters/*/ftctl-run/sky-lora/spec.json"))
    node = json.loads(shipped[0].read_text())["spec"]
    assert node["data_path"].startswith("./inputs/") and node["model_name_or_path"].startswith("./inputs/"), node
    assert (shipped[0].parent / node["data_path"]).read_bytes() == sky.local_data.read_bytes()
    assert (shipped[0].parent / node["model_name_or_path"] / "config.json").is_file()
    assert not list(sky.cwd.rglob("PWNED"))

    # the second run, cancelled while it trains
    # training: the step line `ftctl status` shows from its log (most often in the RUNNING line's answer already)
    deadline = time.monotonic() + 180
    while not re.search(r"step \d+/100000", sky.wait(long_job, ("RUNNING",), timeout=180)):
        assert time.monotonic() < deadline, sky.ftctl("logs", long_job).stdout
        time.sleep(2)
    print(f"[t] second run training {time.monotonic() - t0:.0f}s", file=sys.stderr)
    cancel = sky.ftctl("cancel", long_job)
    said = cancel.stdout.strip().splitlines()
    print(f"[t] cancel said {cancel.stderr.strip()!r} {said}", file=sys.stderr)
    # SkyPilot's cancel kills the job unsaved (explore14 N3): the trainer is asked first, through the store, and the
    # cancel comes once its checkpoint is committed there; said, with where the run goes on
    assert "asked job" in cancel.stderr and "trainer for a checkpoint" in cancel.stderr, cancel.stderr
    # (its trainer exits 0 once the checkpoint is in: SkyPilot may say SUCCEEDED before its cancel came; seen both)
    assert said[0] == f"cancelled {long_job}" or said[0].startswith(f"stopped {long_job} ({long_job} SUCCEEDED"), said
    saved = re.match(
        r"its trainer saved (checkpoint-\d+) as it stopped; the same `ftctl launch` resumes it from \1", said[1]
    )
    assert saved, said
    request = sky_s3.client().get_object(Bucket=sky.bucket, Key=f"runs/long/{STOP_REQUEST}")["Body"].read()
    assert json.loads(request)["checkpoint"] == saved.group(1), request
    assert said[1] in sky.ftctl("status", long_job).stdout  # cancel returned once it ended; status says the same
    print(f"[t] second run stopped {time.monotonic() - t0:.0f}s", file=sys.stderr)
    assert "had already ended" in sky.ftctl("cancel", job).stdout

    assert sky.ftctl("down", job, timeout=300).stdout.strip() == f"tore down cluster {CLUSTER}"
    # how it ended is kept once seen (sky.backend.ENDED_FILE): the torn-down cluster took SkyPilot's record with it
    assert sky.ftctl("status", job).stdout.startswith(f"{job} SUCCEEDED")
    print(f"[t] whole {time.monotonic() - t0:.0f}s", file=sys.stderr)


def _slurm_jobs_of(sky_infra, name: str) -> list[str]:
    out = sky_infra.cluster.run("squeue", "-h", "-o", "%i %j", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if name in line]


SAVE = 5  # the managed job's save_steps: ~2.5 s a step on the loaded test nodes, 10 cost ~40 s more (task 152)


def test_managed_job_recovers_from_a_lost_node_resumes_and_is_cancelled(sky, sky_infra, sky_s3):
    """--managed: a managed job (sky.jobs.launch) on on-demand nodes. On this Slurm infra --spot sends the same task
    (no spot market there: test_sky_checks.py::test_spot_and_managed_send_one_task_to_a_slurm_cluster), so this
    launch stands for both; --spot's spot instances on a cloud are checked offline. Its Slurm allocation is cancelled
    mid-run (the node is lost): the jobs controller relaunches it and the trainer resumes from its last checkpoint
    and saves later ones. Then `ftctl cancel` ends the managed job, and `ftctl down` says a managed job has no
    cluster to down. Every answer calls it a managed job, none "spot". (One managed job for all: each SkyPilot
    provision here costs about a minute of the suite.)"""
    t0 = time.monotonic()
    args = sky.run_args(sky.model, sky.data, f"s3://{sky.bucket}/runs/managed", nodes=1, run_name="sky-managed")
    job = sky.launch(*args, "--managed", "-o", "max_steps=100000", "-o", f"save_steps={SAVE}")
    assert job.startswith("managed/"), job
    s3 = sky_s3.client()

    def complete_steps() -> list[int]:
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=sky.bucket, Prefix="runs/managed/").get("Contents", [])]
        return sorted(
            {int(m.group(1)) for k in keys if (m := re.search(rf"checkpoint-(\d+)/{re.escape(MANIFEST)}$", k))}
        )

    def wait_for_step(step: int, timeout: float) -> list[int]:
        deadline = time.monotonic() + timeout
        while not (steps := complete_steps()) or steps[-1] < step:
            assert time.monotonic() < deadline, f"no checkpoint {step} in {timeout} s: {steps}\n{sky.why(job)}"
            time.sleep(2)
        return steps

    before = wait_for_step(1, timeout=300)
    allocations = _slurm_jobs_of(sky_infra, "sky-managed")
    assert allocations, sky_infra.cluster.run("squeue", "-h", "-o", "%i %j %T").stdout
    sky_infra.cluster.run("scancel", *allocations)  # the node is gone, as a preempted VM
    print(f"[t] managed: node lost at step {before[-1]} after {time.monotonic() - t0:.0f}s", file=sys.stderr)
    # SkyPilot's relaunch: an allocation of the job's that is not the lost one. Until then the lost node's trainer may
    # still save (its steps are fast here: it went from step 5 to 31 after the scancel, and a wait for
    # before + 2 * SAVE was met by it alone, before any relaunch). SkyPilot's teardown empties the cluster's home,
    # which the relaunch uses again: that trainer stops there (callbacks.RunDirKept; it saved into the emptied
    # directory and rotated away the checkpoint the relaunched trainer had chosen, which failed, 2 runs of 5)
    deadline = time.monotonic() + 420
    while not set(_slurm_jobs_of(sky_infra, "sky-managed")) - set(allocations):
        assert time.monotonic() < deadline, f"no relaunch in 420 s\n{sky.why(job)}"
        time.sleep(2)
    # the relaunched trainer resumed and saved two checkpoints later than any the lost node had saved by then
    wait_for_step(complete_steps()[-1] + 2 * SAVE, timeout=420)
    line = sky.ftctl("status", job).stdout.strip()
    logs = sky.ftctl("logs", job).stdout
    assert " RUNNING (managed job), recovered" in line and "spot" not in line.lower(), f"{line}\n{logs}"
    assert "resuming from" in logs, logs
    print(f"[t] managed: recovered and resumed {time.monotonic() - t0:.0f}s", file=sys.stderr)
    # the uploader skips queued checkpoints retention would delete once newer ones land (fast saves here: it fell
    # 122-131 checkpoints behind before it did, and a cancel's stop checkpoint waited 48-81 s behind them): measured
    skips = [line for line in logs.splitlines() if "upload: skipped " in line]
    skipped = sum(
        int(m[1])
        if (m := re.search(r"\((\d+) checkpoints\)", line))
        else line.split("superseded")[0].count("checkpoint-")
        for line in skips
    )
    lags = [int(n) for n in re.findall(r"\(lag: (\d+) checkpoint\(s\)", logs)]
    print(
        f"[t] managed: before the cancel the uploader skipped {skipped} checkpoints ({len(skips)} times); queue lag "
        f"at most {max(lags, default=0)}",
        file=sys.stderr,
    )

    t_cancel = time.monotonic()
    cancel = sky.ftctl("cancel", job)
    said = cancel.stdout.strip().splitlines()
    print(
        f"[t] managed: cancel returned in {time.monotonic() - t_cancel:.0f}s at {time.strftime('%X')} UTC",
        file=sys.stderr,
    )
    assert "spot" not in (cancel.stdout + cancel.stderr).lower(), cancel
    # the trainer stops at the cancel's request and its checkpoint is committed: cancel sends SkyPilot's cancel and
    # returns; the jobs controller ends the job and tears its cluster down after (~1 min here), which status then says.
    # The trainer exits 0 at its stop: the controller may record SUCCEEDED before the cancel reaches it (seen both)
    assert said[0] == (
        f"stopping {job}: SkyPilot's jobs controller ends it and tears its cluster down in the background (about a "
        f"minute; `ftctl status {job}` says when it has)"
    ), said
    assert re.match(r"its trainer saved checkpoint-\d+ as it stopped; the same `ftctl launch` resumes it", said[1]), (
        said
    )
    line = sky.wait(job, ("CANCELLED", "SUCCEEDED"), timeout=240)
    assert said[1] in sky.ftctl("status", job).stdout, line
    print(
        f"[t] managed: {line.splitlines()[0]} {time.monotonic() - t_cancel:.0f}s after the cancel began",
        file=sys.stderr,
    )
    # its end is kept (sky.backend.ENDED_FILE): `ftctl jobs` lists it without asking SkyPilot again
    listed = [row for row in sky.ftctl("jobs").stdout.splitlines() if row.startswith(f"{job} ")]
    assert (
        len(listed) == 1
        and re.search(r" (CANCELLED|SUCCEEDED) \(managed job\), recovered", listed[0])
        and "spot" not in listed[0].lower()
    ), listed
    assert "managed job" in sky.ftctl("down", job, check=False).stderr
    print(f"[t] managed cancelled {time.monotonic() - t0:.0f}s", file=sys.stderr)


# ------------------------------------------------------------------------------------------ without a launch
def test_the_object_stores_credentials_go_as_secrets_by_name(monkeypatch, tmp_path, capsys):
    """The secrets SkyBackend.send names, through sdk.launch with SkyPilot a stand-in that records the task it is
    given: the AWS variables set here reach the job as secrets, by value only there (never the YAML); the endpoint
    -o s3_endpoint_url already sets is not one; AWS_PROFILE (a section of ~/.aws, which the nodes lack) is left
    out, and said."""
    import types

    from ftctl.backend import write_files
    from ftctl.sky import sdk
    from ftctl.sky.backend import job_secrets
    from tests.render_fixtures import prepared
    from tests.s3_fixtures import FAKE_KEY_ID

    for var in [v for v in os.environ if v.startswith("AWS_")]:
        monkeypatch.delenv(var)
    env = {"AWS_ACCESS_KEY_ID": FAKE_KEY_ID, "AWS_SECRET_ACCESS_KEY": FAKE_SECRET, "AWS_REGION": "eu-west-1"}
    env.update(AWS_ENDPOINT_URL="http://elsewhere:9000", AWS_PROFILE="team")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.chdir(tmp_path)
    r = prepared(["s3_endpoint_url=http://minio:9000"], backend="sky", gpus="1xL4", output_dir="s3://b/run")
    write_files(r)
    given = []

    def from_yaml_config(config, secrets_overrides=None):
        given.append((config, dict(secrets_overrides or [])))
        return types.SimpleNamespace(workdir=None)

    fake = types.SimpleNamespace(Task=types.SimpleNamespace(from_yaml_config=from_yaml_config))
    fake.launch, fake.stream_and_get = (lambda task, **kw: task), (lambda request: (7, None))
    fake.get, fake.status = (lambda request: request), (lambda names: [{"cluster_hash": "h"}])
    monkeypatch.setitem(sys.modules, "sky", fake)
    out = sdk.launch(
        str(r.paths.task), None, "c", managed=False, down=False, idle_minutes=None, secrets=job_secrets(r.spec)
    )
    assert out["job_id"] == 7 and out["cluster_hash"] == "h"
    ((config, secrets),) = given
    assert secrets == {k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_REGION", "AWS_SECRET_ACCESS_KEY")}
    assert config["envs"]["AWS_ENDPOINT_URL"] == "http://minio:9000"  # the run's own, not this shell's
    assert "not passed to the job, the nodes lack this machine's files: AWS_PROFILE" in capsys.readouterr().err
    for f in (f for f in r.paths.root.rglob("*") if f.is_file()):
        assert FAKE_SECRET not in f.read_text(errors="replace") and FAKE_KEY_ID not in f.read_text(errors="replace")


@pytest.mark.skipif(importlib.util.find_spec("sky") is not None, reason="SkyPilot is installed in this python")
def test_a_python_without_skypilot_is_named_with_the_fix(monkeypatch):
    """FTCTL_SKY_PYTHON=/usr/bin/python3 (any python without SkyPilot) said only "No module named 'sky'"."""
    from ftctl.errors import FtctlError
    from ftctl.sky import bridge

    monkeypatch.setenv("FTCTL_SKY_PYTHON", sys.executable)  # the trainer's python: no SkyPilot there
    with pytest.raises(FtctlError) as e:
        bridge.call("available")
    assert str(e.value) == (
        f"SkyPilot: FTCTL_SKY_PYTHON={sys.executable} has no SkyPilot (no module named 'sky'): install it there "
        f"({sys.executable} -m pip install 'ftctl[sky]'), point FTCTL_SKY_PYTHON at the python of a venv with "
        "ftctl[sky], or unset it to use .venv-sky (scripts/setup.sh makes it)."
    )
