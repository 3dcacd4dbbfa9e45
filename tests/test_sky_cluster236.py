"""Launching onto a SkyPilot cluster that is there already (explore46 findings 2 and 5).

- A reused cluster's disk: sky.launch takes a task onto an up cluster (and starts a stopped one) with the disk it was
  made with, and its fit check (Resources.less_demanding_than) leaves disk_size out, so an fft sent with --cluster dev
  onto the 256 GiB cluster a lora made was taken and died of ENOSPC at its first save. sdk.launch compares the disk
  first and sends nothing where it is short; the backend says so in one line (NotSent: the run dir as it was).
- The default cluster is the run's own (its key, as its run directory here is named): two runs of one model into two
  outputs queued on one cluster and shared its ~/ftctl-run/NAME. A relaunch into the same output keeps its cluster.
- Where the cluster has jobs that did not end, launch says this one queues behind them (sky.queue).

The SkyPilot side runs in the SkyPilot venv, once, with SkyPilot's own objects: the records are what sky.status's
client gets, built as its API server sends them (a StatusResponse holding a real CloudVmRayResourceHandle, through
SkyPilot's encoder and decoder): a record of an up cloud cluster cannot exist offline, so that outermost boundary
(sky.status, sky.queue, sky.launch) is a stand-in. The task is the one ftctl renders.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from ftctl.backend import JobRef, record_job, run_dir_for
from ftctl.errors import NotSent
from ftctl.sky import backend as sky_backend
from ftctl.sky import bridge
from ftctl.sky import inputs as sky_inputs
from tests.render_fixtures import REPO, prepared, sky_python
from tests.sky_fixtures import HERE

MODEL = "meta-llama/Llama-3.1-8B"

SKY_SIDE = r"""
import json, re, sys
from pathlib import Path

import sky
from sky.backends import cloud_vm_ray_backend as vm
from sky.schemas.api import responses
from sky.server.requests.serializers import decoders, encoders
from sky.skylet.job_lib import JobStatus
from sky.utils import common_utils, registry
from sky.utils.status_lib import ClusterStatus

from ftctl.sky import sdk

task_yaml, names = sys.argv[1], json.loads(sys.argv[2])


task = sky.Task.from_yaml(task_yaml)
(asked,) = task.resources


def record(infra, disk=None, status="UP", like=False):
    # a cluster the task fits but for its disk (like), or one of another infra with the task's GPUs (sdk.misfit
    # refuses a cluster without them, as SkyPilot's own fit check does)
    sized = {} if disk is None else {"disk_size": disk}
    gpus = {"accelerators": asked.accelerators}
    launched = asked.copy(infra=infra, **sized) if like else sky.Resources(infra=infra, **gpus, **sized)
    handle = vm.CloudVmRayResourceHandle(
        cluster_name="dev", cluster_name_on_cloud="dev-2ea4", cluster_yaml=None, launched_nodes=1,
        launched_resources=launched,
    )
    sent = responses.StatusResponse(
        name="dev", launched_at=0, handle=handle, status=ClusterStatus[status], autostop=30, to_down=False,
        cluster_hash="made-by-lora", cluster_ever_up=True, user_hash="u", user_name="me", workspace="default",
        is_managed=False, nodes=1,
    )
    return decoders.decode_status(json.loads(json.dumps(encoders.encode_status([sent]))))


def job(job_id, status):
    return responses.ClusterJobRecord(
        job_id=job_id, job_name="ftctl-lora", username="me", user_hash="u", submitted_at=0, resources="1x",
        status=status, log_path="~/sky_logs/x",
    )


def launch(records, queue=(), named=True):
    asked, said = [], []
    answers = {"status": records, "queue": list(queue)}
    sky.status = lambda names: ("status", names)
    sky.queue = lambda cluster, **kw: asked.append("queue") or ("queue", cluster)
    sky.get = lambda request: answers[request[0]]
    sky.launch = lambda task, **kw: asked.append("launch") or ("launch",)
    sky.stream_and_get = lambda request: (5, None)
    sdk.say = said.append
    out = sdk.launch(task_yaml, None, "dev", False, False, 30, [], named=named)
    return {"out": out, "asked": asked, "said": said}


gcp = dict(infra="gcp", like=True)
cases = {
    "gcp 256 up": launch(record(disk=256, **gcp)),
    "gcp 256 stopped": launch(record(disk=256, status="STOPPED", **gcp)),
    "gcp 1024 up, jobs": launch(
        record(disk=1024, **gcp),
        [job(3, JobStatus.RUNNING), job(4, JobStatus.PENDING), job(2, JobStatus.SUCCEEDED)],
    ),
    "gcp 1024 up, idle": launch(record(disk=1024, **gcp), [job(2, JobStatus.FAILED)]),
    "gcp 1024 up, jobs, the run's own": launch(record(disk=1024, **gcp), [job(3, JobStatus.RUNNING)], named=False),
    "gcp 1024 stopped": launch(record(disk=1024, status="STOPPED", **gcp)),
    "none": launch([]),
    "slurm 256": launch(record("slurm", 256)),
    "lambda 256": launch(record("lambda", 256)),
    "k8s 256": launch(record("k8s", 256)),
    "k8s, no disk_size": launch(record("k8s")),
}
# SkyPilot's own fit check takes the bigger task onto the smaller cluster: the gap sdk.launch closes
fits = asked.less_demanding_than(record(disk=256, **gcp)[0].handle.launched_resources)

# the clouds whose disk_size is a disk, as the installed SkyPilot makes clusters
templates = Path(vm.__file__).parents[1] / "templates"
slurm_reads = any("disk_size" in p.read_text() for p in (Path(vm.__file__).parents[1] / "provision" / "slurm").glob("*.py"))
disk_clouds = set()
for name, cloud in registry.CLOUD_REGISTRY.items():
    text = (templates / vm._get_cluster_config_template(cloud)).read_text()
    if re.search(r"\{\{\s*disk_size\s*\}\}", text) and (name != "slurm" or slurm_reads) and name not in ("kubernetes", "ssh"):
        disk_clouds.add(name)
    if name in ("kubernetes", "ssh") and "ephemeral-storage: {{k8s_ephemeral_storage}}G" in text:
        disk_clouds.add(name)

valid = {}
for name in names:
    try:
        common_utils.check_cluster_name_is_valid(name)
        sky.Task(name=name, run="true")
        valid[name] = True
    except Exception as e:
        valid[name] = str(e)
print(json.dumps({
    "cases": cases, "task_gib": asked.disk_size, "fits": fits, "disk_clouds": sorted(disk_clouds),
    "listed": sorted(sdk.DISK_SIZE_CLOUDS), "valid": valid,
}))
"""


def sky(**flags):
    args = dict(backend="sky", method="lora", gpus="8xA100", model_name_or_path=MODEL, output_dir="s3://b/o")
    return prepared(**{**args, **flags})


@pytest.fixture(scope="module")
def sky_side(tmp_path_factory):
    """What the SkyPilot side did with an 8B fft task for each cluster record, once for the module (~5 s)."""
    tmp = tmp_path_factory.mktemp("sky236")
    home = tmp / "home"
    (home / ".sky" / "catalogs").mkdir(parents=True)
    import shutil

    shutil.copytree(HERE / "catalog" / "v8", home / ".sky" / "catalogs" / "v8")  # offline: GCP's A100 rows
    # no disk tier: the clusters of other infras below were launched without one, which SkyPilot (and sdk.launch,
    # tiers_missing) would refuse a task naming disk_tier: best on, whatever its disk (tests/test_sky_resources235.py)
    fft = sky(method="fft", disk_tier="default")
    task = tmp / "task.yaml"
    task.write_text(fft.text)
    longest = sky(model_name_or_path="o/" + "m" * 80, model_params="8b", output_dir="s3://b/" + "x" * 200)
    names = [sky_inputs.cluster_name(fft.spec), sky_inputs.cluster_name(longest.spec)]
    env = {
        "HOME": str(home),
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(REPO),
        "SKYPILOT_DISABLE_USAGE_COLLECTION": "1",
    }
    proc = subprocess.run(
        [sky_python(), "-c", SKY_SIDE, str(task), json.dumps(names)],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        cwd=tmp,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.splitlines()[-1])
    out["disk_size"] = yaml.safe_load(fft.text.split("\n", 1)[1])["resources"]["disk_size"]
    return out


def test_a_cluster_with_a_smaller_disk_is_not_launched_onto(sky_side):
    """An 8B fft stages ~600 GiB: onto a cloud cluster made with 256 GiB (up, or stopped: started again with its
    disk) nothing is sent; SkyPilot's own fit check would have taken it."""
    assert sky_side["disk_size"] == sky_side["task_gib"] > 256
    assert sky_side["fits"] is True  # Resources.less_demanding_than leaves disk_size out
    cases = sky_side["cases"]
    for case in ("gcp 256 up", "gcp 256 stopped"):
        assert cases[case]["asked"] == [], case  # no sky.launch (nor a queue asked)
        short = cases[case]["out"]["short_disk"]
        assert short["cluster_gib"] == 256 and short["task_gib"] == sky_side["disk_size"] and not short["pods"]
        assert short["cluster_hash"] == "made-by-lora" and short["sky"]
    # Kubernetes (and SSH node pools): disk_size is the pods' ephemeral-storage request, where one was made
    assert cases["k8s 256"]["out"]["short_disk"]["pods"] is True and cases["k8s 256"]["asked"] == []
    # enough disk, no cluster yet, or disk_size no disk there (Slurm's nodes, Lambda's fixed disks, a pod without a
    # request): launched as before
    for case in ("gcp 1024 up, idle", "gcp 1024 stopped", "none", "slurm 256", "lambda 256", "k8s, no disk_size"):
        assert cases[case]["out"]["job_id"] == 5 and "launch" in cases[case]["asked"], case
    assert sky_side["listed"] == sky_side["disk_clouds"]  # sdk.DISK_SIZE_CLOUDS, as the installed SkyPilot has it


def test_a_job_that_queues_behind_others_says_so_before_it_is_sent(sky_side):
    cases = sky_side["cases"]
    up = cases["gcp 1024 up, jobs"]
    assert up["asked"] == ["queue", "launch"] and up["out"]["job_id"] == 5
    (line,) = up["said"]
    assert line.startswith("ftctl: cluster dev has job 3 (RUNNING), job 4 (PENDING) in its queue: this job queues ")
    assert "behind them until the GPUs it asks for are free" in line and "queue dev` lists them" in line
    assert cases["gcp 1024 up, idle"]["said"] == []  # only ended jobs
    # a run's own cluster (no --cluster): not asked (sky.queue asks its head: 8 s on the test infra)
    assert cases["gcp 1024 up, jobs, the run's own"]["asked"] == ["launch"]
    assert "queue" not in cases["gcp 1024 stopped"]["asked"]  # a stopped cluster runs no job: not asked


def test_the_refusal_is_one_line_and_leaves_the_run_dir_as_it_was(sky_side, tmp_path, monkeypatch, s3_bucket):
    """The SkyPilot side's answer, as the backend words it: the cluster's GiB, what this run stages, the fixes (the
    job of this very cluster that `ftctl down` takes), and nothing of the launch kept (NotSent)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FTCTL_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(sky_backend, "stage_source", lambda dest: dest)
    answer = sky_side["cases"]["gcp 256 up"]["out"]
    asked = []
    monkeypatch.setattr(bridge, "call", lambda op, **kw: asked.append(kw) or answer)
    for hash_, job in (("older", "dev/1"), ("made-by-lora", "dev/2")):
        extra = {"cluster": "dev", "sky_job_id": int(job[-1]), "managed": False, "cluster_hash": hash_}
        record_job(JobRef("sky", job, str(tmp_path / "runs" / "lora"), "lora", f"{s3_bucket}/lora", extra=extra))
    rendered = sky(method="fft", cluster="dev", output_dir=f"{s3_bucket}/fft")
    with pytest.raises(NotSent) as e:
        sky_backend.SkyBackend().submit(rendered)
    assert asked[-1]["cluster"] == "dev" and asked[-1]["named"] is True  # --cluster's: its queue is asked
    said = str(e.value)
    assert "\n" not in said and said.startswith("cluster dev has 256 GiB of disk on its nodes, as it was launched")
    assert f"(its disk_size: {sky_side['disk_size']} GiB)" in said and "stages up to ~" in said
    assert f"`ftctl down dev/2` or `{answer['short_disk']['sky']} down dev`" in said and "another --cluster" in said
    assert not rendered.paths.root.exists() or not list(rendered.paths.root.iterdir())  # put back: nothing written


def test_each_run_has_a_cluster_and_a_node_directory_of_its_own(tmp_path, monkeypatch):
    """A sweep of one model into two outputs: two clusters, two directories on the nodes; a relaunch into the same
    output: the same. The key is the one the run directory here has (one owner: backend.run_dir_for)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FTCTL_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(sky_backend, "stage_source", lambda dest: dest)
    (tmp_path / "chats.jsonl").write_text("{}\n")  # shipped: its file_mounts land in the run's node directory
    sent = []
    monkeypatch.setattr(bridge, "call", lambda op, **kw: sent.append(kw) or {"managed": False, "job_id": 1, **kw})
    runs = [sky(output_dir=f"s3://b/{o}", data_path=str(tmp_path / "chats.jsonl")) for o in ("r1", "r2", "r1")]
    for r in runs:
        sky_backend.SkyBackend().send(r)
    clusters = [kw["cluster"] for kw in sent]
    assert not any(kw["named"] for kw in sent)  # the run's own: its queue not asked (sdk.launch)
    assert clusters[0] != clusters[1] and clusters[0] == clusters[2]
    assert clusters == [run_dir_for(r.spec).name for r in runs] == [r.paths.root.name for r in runs]
    assert clusters[0].startswith(runs[0].spec.name + "-")
    for r, cluster in zip(runs, clusters):
        task = yaml.safe_load(r.text.split("\n", 1)[1])
        home = f"~/ftctl-run/{cluster}"
        assert f"\ncd {home}  #" in task["run"] and f"--spec {home}/spec.json" in task["run"]
        assert all(mount.startswith(f"{home}/inputs/") for mount in task["file_mounts"])
        assert task["name"] == cluster
        # the trainer's name is the run's, as before (W&B, the lease's holder, the model card)
        assert json.loads(r.files["spec.json"])["spec"]["run_name"] == r.spec.name != cluster
    announced = sky_backend.SkyBackend().announce(runs[1], JobRef("sky", "x/1", "", "", "", extra={"managed": False}))
    assert announced[0].endswith(f"on cluster {clusters[1]}")
    # a run_name names both; --cluster names the cluster, the node directory stays the run's
    named = sky(output_dir="s3://b/r3", run_name="lr-1e-4")
    assert sky_inputs.cluster_name(named.spec) == "lr-1e-4" == Path(named.paths.root).name
    assert sky_inputs.cluster_name(sky(cluster="dev").spec) == "dev"
    assert "~/ftctl-run/lr-1e-4/spec.json" in named.text


def test_the_run_keys_are_skypilot_cluster_and_task_names(sky_side):
    """The longest default (a 60-letter name and the digest) included: SkyPilot shortens it for the cloud itself."""
    assert all(ok is True for ok in sky_side["valid"].values()), sky_side["valid"]
    assert max(len(name) for name in sky_side["valid"]) == 69
