"""explore63 (a cloud user fine-tuning through SkyPilot): findings fixed under ftctl/sky/.

1. A relaunch with another --gpus (or more --nodes, another --infra or --container) goes to the run's own cluster (its
   name is the run's and its output's, not its GPUs'), up or stopped after its idle autostop. SkyPilot refuses the task
   there, "Requested resources do not match the existing cluster ... To fix: specify a new cluster name, or down the
   existing cluster first: sky down NAME", naming its own -c and a `sky` that is not on PATH where SkyPilot lives in
   .venv-sky. sdk.launch now asks SkyPilot's own fit check first and sends nothing; the backend says it in one line
   with ftctl's fixes.

The SkyPilot side runs in the SkyPilot venv, once for the module, with SkyPilot's own objects (the records built as
its API server sends them, as tests/test_sky_cluster236.py does): an up cloud cluster cannot exist offline, so
sky.status, sky.queue and sky.launch are the stand-ins. The tasks are the ones ftctl renders.
"""

from __future__ import annotations

import os
import shutil

import pytest

from ftctl.backend import JobRef, record_job
from ftctl.errors import NotSent
from ftctl.sky import backend as sky_backend
from ftctl.sky import bridge
from tests.render_fixtures import prepared, sky_reads
from tests.sky_fixtures import HERE

MODEL = "lmsys/vicuna-7b-v1.5"
# no tiers: a cluster launched without them is what each task is compared with (tiers_missing has its own test)
PLAIN = ["disk_tier=default", "network_tier=standard"]

SKY_SIDE = r"""
import json, os, sys

import sky
from sky import exceptions
from sky.backends import cloud_vm_ray_backend as vm
from sky.schemas.api import responses
from sky.server.requests.serializers import decoders, encoders
from sky.skylet.job_lib import JobStatus
from sky.utils.status_lib import ClusterStatus

from ftctl.sky import sdk

cases = json.loads(sys.stdin.read())
# finding 2: what SkyPilot uploads to each node for GCS where GOOGLE_APPLICATION_CREDENTIALS names a key file
os.environ["GOOGLE_APPLICATION_CREDENTIALS"] = cases.pop("gac")
from sky.clouds import gcp

gcs_mounts = gcp.GCP().get_credential_file_mounts()
made = sky.Task.from_yaml_str(cases.pop("made"))
(launched,) = made.resources
launched = launched.copy(infra="gcp/us-central1")  # as SkyPilot records what it launched: a cloud and a region


def record(status):
    handle = vm.CloudVmRayResourceHandle(cluster_name="dev", cluster_name_on_cloud="dev-2ea4", cluster_yaml=None,
                                         launched_nodes=made.num_nodes, launched_resources=launched)
    sent = responses.StatusResponse(
        name="dev", launched_at=0, handle=handle, status=ClusterStatus[status], autostop=30, to_down=False,
        cluster_hash="made-by-a100", cluster_ever_up=True, user_hash="u", user_name="me", workspace="default",
        is_managed=False, nodes=made.num_nodes)
    return decoders.decode_status(json.loads(json.dumps(encoders.encode_status([sent]))))


def launch(path, records):
    asked = []
    sky.status = lambda names: ("status", names)
    sky.queue = lambda cluster, **kw: asked.append("queue") or ("queue", cluster)
    sky.get = lambda request: {"status": records, "queue": []}[request[0]]
    sky.launch = lambda task, **kw: asked.append("launch") or ("launch",)
    sky.stream_and_get = lambda request: (5, None)
    sdk.say = lambda line: None
    return {"out": sdk.launch(path, None, "dev", False, False, 30, []), "asked": asked}


def skypilot_takes(path, records):
    # SkyPilot's own check, as sky.launch runs it on its API server onto an existing cluster (up or stopped)
    try:
        vm.CloudVmRayBackend().check_resources_fit_cluster(records[0].handle, sky.Task.from_yaml(path))
    except exceptions.ResourcesMismatchError as e:
        return str(e)
    return True


def down(records, queue):
    asked = []
    sky.status = lambda names: ("status", names)
    sky.queue = lambda cluster, **kw: asked.append("queue") or ("queue", cluster)
    sky.get = lambda request: {"status": records, "queue": queue}[request[0]]
    sky.down = lambda cluster: asked.append("down") or ("down",)
    sky.stream_and_get = lambda request: None
    return {"out": sdk.down("dev"), "asked": asked}


def job(job_id, status):
    return responses.ClusterJobRecord(
        job_id=job_id, job_name="ftctl-lora", username="me", user_hash="u", submitted_at=0, resources="1x",
        status=status, log_path="~/sky_logs/x")


downs = {
    "running": down(record("UP"), [job(2, JobStatus.SUCCEEDED), job(3, JobStatus.RUNNING), job(4, JobStatus.PENDING)]),
    "ended": down(record("UP"), [job(2, JobStatus.SUCCEEDED), job(3, JobStatus.CANCELLED)]),
    "stopped": down(record("STOPPED"), []),
    "gone": down([], []),
}
out = {}
for name, path in cases.items():
    for status in ("UP", "STOPPED"):
        records = record(status)
        out[f"{name} {status}"] = {**launch(path, records), "skypilot": skypilot_takes(path, records)}
print(json.dumps({"cases": out, "gcs_mounts": gcs_mounts, "downs": downs}))
"""


def sky(gpus: str, more=(), **flags):
    args = dict(backend="sky", method="lora", gpus=gpus, model_name_or_path=MODEL, output_dir="s3://b/o")
    return prepared([*(f for f in PLAIN), *more], **{**args, **flags})


@pytest.fixture(scope="module")
def sky_side(tmp_path_factory):
    """What sdk.launch and SkyPilot's own fit check make of each task onto a cluster an 8xA100 launch made (~6 s)."""
    tmp = tmp_path_factory.mktemp("sky-e63")
    home = tmp / "home"
    shutil.copytree(HERE / "catalog" / "v8", home / ".sky" / "catalogs" / "v8")  # offline: GCP's rows
    tasks = {
        "8xA100": sky("8xA100"),  # the same launch again: fits
        "4xA100": sky("4xA100"),  # fewer GPUs of the type: fits (SkyPilot runs it on the bigger cluster)
        "8xH100": sky("8xH100"),  # another GPU type on relaunch
        "8xA100-80GB": sky("8xA100-80GB"),
        "2x8xA100": sky("2x8xA100"),  # more nodes
        "container": sky("8xA100", container="docker:ghcr.io/x/ftctl:cu130"),  # an image the cluster was not made with
        "aws": sky("8xA100", infra="aws"),  # another cloud
    }
    key = tmp / "sa.json"
    key.write_text("{}")
    cases = {"made": tasks["8xA100"].text, "gac": str(key)}
    for name, prep in tasks.items():
        path = tmp / f"{name}.yaml"
        path.write_text(prep.text)
        cases[name] = str(path)
    out = sky_reads(SKY_SIDE, cases, home, tmp)
    return {**out.pop("cases"), **out, "gac": str(key)}


MISFITS = ("8xH100", "8xA100-80GB", "2x8xA100", "container", "aws")


@pytest.mark.parametrize("status", ["UP", "STOPPED"])
def test_a_relaunch_onto_a_cluster_with_other_gpus_sends_nothing_where_skypilot_would_refuse_it(sky_side, status):
    """explore63 finding 1: sdk.launch sends exactly what SkyPilot's own fit check takes; of the rest it says what the
    cluster has and what the task asks for."""
    for name in ("8xA100", "4xA100"):
        case = sky_side[f"{name} {status}"]
        assert case["skypilot"] is True and case["asked"] == ["launch"] and case["out"]["job_id"] == 5, name
    for name in MISFITS:
        case = sky_side[f"{name} {status}"]
        assert str(case["skypilot"]).startswith("Requested resources do not match the existing cluster"), name
        assert case["asked"] == [], name  # no sky.launch
        found = case["out"]["misfit"]
        assert found["cluster"] == "1 node of A100:8 on gcp/us-central1", name
        assert found["cluster_hash"] == "made-by-a100" and found["sky"]
    said = {name: sky_side[f"{name} {status}"]["out"]["misfit"]["task"] for name in MISFITS}
    assert said == {
        "8xH100": "1 node of H100:8",
        "8xA100-80GB": "1 node of A100-80GB:8",
        "2x8xA100": "2 nodes of A100:8",
        "container": "1 node of A100:8, image docker:ghcr.io/x/ftctl:cu130",
        "aws": "1 node of A100:8 on aws",
    }


def test_the_refusal_is_one_line_in_ftctls_words_and_nothing_is_kept(sky_side, tmp_path, monkeypatch):
    """The backend's line: both shapes, `ftctl down JOB` of the job that made this very cluster, another --cluster,
    and where the checkpoints are; the run directory as it was (NotSent)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FTCTL_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(sky_backend, "stage_source", lambda dest: dest)
    answer = sky_side["8xH100 STOPPED"]["out"]
    monkeypatch.setattr(bridge, "call", lambda op, **kw: answer)
    rendered = sky("8xH100", cluster="dev")
    extra = {"cluster": "dev", "sky_job_id": 1, "managed": False, "cluster_hash": "made-by-a100"}
    # the 8xA100 launch that made the cluster, of another run (this run's own job would be asked whether it runs)
    record_job(JobRef("sky", "dev/1", str(tmp_path / "runs" / "a100"), "a100", "s3://b/a100", extra=extra))
    with pytest.raises(NotSent) as e:
        sky_backend.SkyBackend().submit(rendered)
    said = str(e.value)
    assert "\n" not in said
    assert said.startswith(
        "cluster dev was launched with 1 node of A100:8 on gcp/us-central1, and this run asks for 1 node of H100:8: "
        "SkyPilot takes a task only onto a cluster that has what it asks for."
    )
    assert f"Tear it down (`ftctl down dev/1` or `{answer['misfit']['sky']} down dev`)" in said
    assert "the run's checkpoints are in s3://b/o, not on the cluster), or pass another --cluster." in said
    assert not rendered.paths.root.exists() or not list(rendered.paths.root.iterdir())


def test_a_gcs_key_file_is_not_given_aws_advice(sky_side, monkeypatch, capsys):
    """explore63 finding 2: GOOGLE_APPLICATION_CREDENTIALS set for a gs:// run was said with AWS's words ("export the
    store's keys instead; for a profile: eval aws configure ...", "with --infra aws the nodes' IAM role"), where
    SkyPilot itself uploads the key file it names to each node at gcloud's default path (asked of the installed
    SkyPilot), which the job's GCS client reads. An AWS_PROFILE beside it keeps its own line."""
    from ftctl.sky.backend import job_secrets

    assert sky_side["gcs_mounts"]["~/.config/gcloud/application_default_credentials.json"] == sky_side["gac"]
    for var in [v for v in os.environ if v.startswith(("AWS_", "GOOGLE_"))]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", sky_side["gac"])
    assert job_secrets(sky("1xL4", output_dir="gs://b/o").spec) == ["HF_TOKEN"]
    err = capsys.readouterr().err
    assert "aws" not in err.lower() and "the nodes lack" not in err, err
    assert err.startswith("ftctl: GOOGLE_APPLICATION_CREDENTIALS is not passed to the job (it names a file of this ")
    assert "as ~/.config/gcloud/application_default_credentials.json, where the job's GCS client finds it" in err
    monkeypatch.setenv("AWS_PROFILE", "team")
    job_secrets(sky("1xL4", output_dir="gs://b/o", data_path="s3://b/d.jsonl").spec)
    aws, gcs = capsys.readouterr().err.splitlines()
    assert aws.startswith("ftctl: not passed to the job, the nodes lack this machine's files: AWS_PROFILE (export")
    assert gcs.startswith("ftctl: GOOGLE_APPLICATION_CREDENTIALS is not passed to the job")


def test_wandb_settings_set_where_it_launches_reach_a_job_that_reports_to_wandb(monkeypatch, tmp_path):
    """explore63 finding 3: `export WANDB_PROJECT=...` (W&B's documented way) reached no SkyPilot job, which inherits
    nothing of the launching shell (a Slurm job inherits it all): its run logged to W&B's default project, unsaid.
    They go by name now, their values only in what SkyPilot's SDK is given (never the task's files), as the store's
    credentials do; not to a job that does not report to W&B, nor where -o env sets one."""
    import sys
    import types

    from ftctl.backend import write_files
    from ftctl.sky import sdk
    from ftctl.sky.backend import job_secrets

    for var in [v for v in os.environ if v.startswith(("AWS_", "WANDB_", "GOOGLE_"))]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("WANDB_PROJECT", "my-project")
    monkeypatch.setenv("WANDB_ENTITY", "my-team")
    monkeypatch.setenv("WANDB_DIR", "/home/me/wandb")  # a path of this machine: not passed
    monkeypatch.chdir(tmp_path)
    r = sky("1xL4", ["report_to=wandb", "env=WANDB_ENTITY=from-env"])
    assert job_secrets(r.spec) == ["HF_TOKEN", "WANDB_API_KEY", "WANDB_PROJECT"]  # WANDB_ENTITY: -o env's
    assert job_secrets(sky("1xL4").spec) == ["HF_TOKEN"]  # no W&B: nothing of it
    assert "# W&B's settings set there (WANDB_PROJECT, WANDB_ENTITY ...) go the same way" in r.text
    assert "W&B's settings" not in sky("1xL4").text
    write_files(r)
    given = []

    def from_yaml_config(config, secrets_overrides=None):
        given.append((config, dict(secrets_overrides or [])))
        return types.SimpleNamespace(workdir=None)

    fake = types.SimpleNamespace(Task=types.SimpleNamespace(from_yaml_config=from_yaml_config))
    fake.launch, fake.stream_and_get = (lambda task, **kw: task), (lambda request: (7, None))
    fake.get, fake.status = (lambda request: request), (lambda names: [])
    monkeypatch.setitem(sys.modules, "sky", fake)
    sdk.launch(str(r.paths.task), None, "c", managed=False, down=False, idle_minutes=None, secrets=job_secrets(r.spec))
    ((config, secrets),) = given
    assert secrets == {"WANDB_PROJECT": "my-project"}  # HF_TOKEN, WANDB_API_KEY: not set here, left out
    assert config["envs"]["WANDB_ENTITY"] == "from-env" and "WANDB_PROJECT" not in config["envs"]
    for f in (f for f in r.paths.root.rglob("*") if f.is_file()):
        assert "my-project" not in f.read_text(errors="replace")


def test_down_of_a_cluster_whose_jobs_did_not_end_tears_nothing_down(sky_side, monkeypatch):
    """explore63 finding 5: `ftctl down JOB` of a training job's cluster tore it down at once (SkyPilot's down kills the
    job unsaved; its own `sky down` asks first), losing what was trained since the last checkpoint, where `ftctl
    cancel` saves one first. Now a cluster with jobs that did not end is left up, said in one line with the fixes; an
    idle, stopped or gone one is torn down (or said gone) as before."""
    downs = sky_side["downs"]
    assert downs["running"]["asked"] == ["queue"]  # no sky.down
    busy = downs["running"]["out"]
    assert busy["busy"] == [[3, "RUNNING"], [4, "PENDING"]] and busy["listed"] == "job 3 (RUNNING), job 4 (PENDING)"
    assert downs["ended"] == {"out": {"gone": False}, "asked": ["queue", "down"]}
    assert downs["stopped"] == {"out": {"gone": False}, "asked": ["down"]}  # a stopped cluster runs nothing
    assert downs["gone"] == {"out": {"gone": True}, "asked": []}
    from ftctl.errors import FtctlError

    ref = JobRef("sky", "dev/3", "/r", "lora", "s3://b/o", extra={"cluster": "dev", "sky_job_id": 3, "managed": False})
    monkeypatch.setattr(bridge, "call", lambda op, **kw: busy)
    with pytest.raises(FtctlError) as e:
        sky_backend.SkyBackend().down(ref)
    said = str(e.value)
    assert "\n" not in said
    assert said.startswith(
        "cluster dev still has job 3 (RUNNING), job 4 (PENDING): tearing it down now would kill them"
    )
    # job 3 is the one named (launched from here); job 4 anybody's, which only SkyPilot cancels (review 61 #9)
    assert "`ftctl cancel dev/3` first (its trainer saves a checkpoint before it stops); job 4 was not " in said
    assert f"`{busy['sky']} cancel dev 4` cancels it unsaved; then `ftctl down dev/3` again" in said
    assert said.endswith(f"`{busy['sky']} down dev` tears it down as it is.")
    monkeypatch.setattr(bridge, "call", lambda op, **kw: downs["ended"]["out"])
    assert sky_backend.SkyBackend().down(ref) == "tore down cluster dev"


def test_skypilots_task_keys_say_what_they_are_here(tmp_path):
    """explore63 finding 4: SkyPilot's task keys, as -o or in a SkyPilot task YAML given as the run file, were
    answered with the nearest spelling of another key ("Did you mean 'resume'?" for resources, 'managed' for image_id,
    'idle_minutes' for file_mounts) or none: each says what it is here."""
    from ftctl.errors import FtctlError
    from tests.render_fixtures import make_spec

    said = {}
    for key, flag in [
        ("accelerators", "--gpus A100:8"),
        ("image_id", "--container docker:REF"),
        ("instance_type", "--gpus names the GPUs"),
        ("workdir", "--data and --model"),
        ("job_recovery", "-o max_requeues=N"),
        ("any_of", "-o on_demand_fallback=true"),
    ]:
        with pytest.raises(FtctlError) as e:
            make_spec([f"{key}=x"], backend="sky", gpus="1xA100", model_name_or_path=MODEL, output_dir="s3://b/o")
        said[key] = str(e.value)
        assert flag in said[key] and "Did you mean" not in said[key], said[key]
    task = tmp_path / "sky-task.yaml"
    task.write_text("resources:\n  accelerators: A100:8\nfile_mounts:\n  /data: s3://b/d\nrun: python train.py\n")
    with pytest.raises(FtctlError) as e:
        make_spec([], config=str(task), backend="sky", gpus="1xA100", model_name_or_path=MODEL, output_dir="s3://b/o")
    lines = str(e.value).splitlines()
    assert any("'resources'" in ln and "accelerators --gpus A100:8, num_nodes --nodes N" in ln for ln in lines)
    assert any("'file_mounts'" in ln and "Local inputs ship with the task by themselves" in ln for ln in lines)
    assert any("'run'" in ln and "ftctl runs the trainer itself" in ln for ln in lines)
    assert "Did you mean" not in str(e.value)
