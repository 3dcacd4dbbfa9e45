"""The resources a SkyPilot task asks for beyond GPUs and disk size (explore46 #1, #3, #6, #7): network_tier: best for a
multi-node GPU run where SkyPilot 0.14 sets the fast interconnect up right, disk_tier: best for a cloud node whose
checkpoints are large, one restart after a managed multi-node job's own failure, and the header's `sky launch` line
that sends the task as `ftctl launch` does. What SkyPilot makes of each is asked of the installed SkyPilot, offline, in
one subprocess of its venv (its schema, its optimizer on tests/sky/catalog, its cluster fit check, its CLI's parser).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from ftctl.errors import FtctlError
from ftctl.sky import render as sky_render
from tests.render_fixtures import REPO, prepared, sky_python, sky_reads

MODEL = "meta-llama/Llama-3.1-8B"


def sky(overrides=(), **flags):
    args = dict(backend="sky", method="lora", gpus="8xA100", model_name_or_path=MODEL, output_dir="s3://b/o")
    return prepared(list(overrides), **{**args, **flags})


def resources(prep) -> dict:
    return yaml.safe_load(prep.text)["resources"]


def tiers(prep) -> dict:
    return {k: v for k, v in resources(prep).items() if k.endswith("_tier")}


# ------------------------------------------------------------------------------------------ network_tier
@pytest.mark.parametrize(
    "flags, best",
    [
        (dict(gpus="2x8xH100", infra="aws"), True),  # EFA
        (dict(gpus="2x4xA100", infra="aws/us-east-1"), True),  # EFA where the instance has it, else nothing changes
        (dict(gpus="2x8xH100", infra="gcp"), True),  # a3-highgpu-8g's GPUDirect-TCPX
        (dict(gpus="2x8xA100", infra="gcp"), False),  # TCPX's 8-GPU a3 setup on an a2 VM: not asked for
        (dict(gpus="2x8xH200", infra="nebius"), True),  # InfiniBand
        (dict(gpus="2x4xH100", infra="nebius"), False),  # Nebius refuses best below 8 GPUs a node
        (dict(gpus="2x8xH100", infra="k8s"), False),  # refused on a cluster without a fast network: -o to ask
        (dict(gpus="2x8xH100"), True),  # no infra: every cloud with best sets it up right for H100:8
        (dict(gpus="2x8xA100"), False),  # ... but GCP's would be TCPX on an a2 VM
        (dict(gpus="8xH100", infra="aws"), False),  # one node: nothing crosses a network
        (dict(gpus="2x8xH100", infra="lambda"), False),  # no network tier there
    ],
)
def test_a_multi_node_gpu_run_asks_for_the_fast_interconnect_where_skypilot_sets_it_up(flags, best):
    """2x8xH100 on AWS rendered no network_tier, so SkyPilot attached no EFA and NCCL ran over TCP."""
    assert tiers(sky(**flags)).get("network_tier") == ("best" if best else None), flags


def test_network_tier_is_overridden_and_standard_is_left_out():
    """standard is SkyPilot's default: left out, as a task naming it does not fit a cluster launched without it.
    spec.json records what the task asks for."""
    assert sky(gpus="2x8xH100", infra="aws").spec.network_tier == "best"
    assert sky(gpus="2x8xH100", infra="k8s").spec.network_tier == "standard"
    assert (sky(method="fft").spec.disk_tier, sky().spec.disk_tier) == ("best", "default")
    assert "network_tier" not in tiers(sky(["network_tier=standard"], gpus="2x8xH100", infra="aws"))
    assert tiers(sky(["network_tier=best"], gpus="2x8xH100", infra="k8s"))["network_tier"] == "best"
    with pytest.raises(FtctlError, match=r"network_tier='fast' is no tier .* -o network_tier=standard .* or -o "):
        sky(["network_tier=fast"], gpus="2x8xH100")
    with pytest.raises(FtctlError, match=r"-o network_tier=best on lambda: SkyPilot 0.14 has no network tiers there"):
        sky(["network_tier=best"], gpus="2x8xH100", infra="lambda")


@pytest.mark.parametrize("backend", ["slurm", "local", "docker"])
def test_another_backend_refuses_the_tiers(backend):
    """network_tier and disk_tier are SkyBackend's options: another backend refuses them rather than ignore them."""
    for key in ("network_tier", "disk_tier"):
        with pytest.raises(FtctlError, match=rf"--backend {backend} does not take {key} \(sky\)"):
            prepared([f"{key}=best"], backend=backend, gpus="cpu", output_dir="/tmp/t235")


# ------------------------------------------------------------------------------------------ disk_tier
def test_a_cloud_node_whose_checkpoints_are_large_asks_for_the_fastest_disk():
    """SkyPilot's default disk (AWS gp3 at 218 MB/s) took ~10 min for each 128 GB checkpoint of an 8B fft; best is
    asked for where a save would take over a minute there, not for an adapter's megabytes, nor where the nodes' disk
    has no tier."""
    assert tiers(sky(method="fft")) == {"disk_tier": "best"}
    assert tiers(sky(method="fft", infra="aws")) == {"disk_tier": "best"}
    assert tiers(sky(method="lora")) == {}
    assert tiers(sky(method="fft", infra="k8s")) == {}
    assert tiers(sky(["disk_tier=default"], method="fft")) == {}
    assert tiers(sky(["disk_tier=best"], method="lora")) == {"disk_tier": "best"}
    with pytest.raises(FtctlError, match=r"-o disk_tier=best on --infra slurm: SkyPilot has no disk tiers there"):
        sky(["disk_tier=best"], method="fft", infra="slurm/c")
    with pytest.raises(FtctlError, match=r"disk_tier='ultra' is no tier .*-o disk_tier=default"):
        sky(["disk_tier=ultra"])


# ------------------------------------------------------------------------------------------ restarts
def test_a_managed_multi_node_job_is_restarted_once_after_its_own_failure():
    """A GPU's fault on a multi-node VM still up is the job's own failure to SkyPilot: one restart by default,
    -o max_requeues still says how many; one node keeps none."""

    def restarts(*overrides, gpus):
        return resources(sky(list(overrides), gpus=gpus, spot=True))["job_recovery"]["max_restarts_on_errors"]

    assert restarts(gpus="2x8xH100") == 1
    assert restarts(gpus="8xH100") == 0
    assert restarts("max_requeues=0", gpus="2x8xH100") == 0
    assert restarts("max_requeues=3", gpus="2x8xH100") == 3


# ------------------------------------------------------------------------------------------ the header
def _sky_line(prep) -> str:
    lines = [ln for ln in prep.text.splitlines() if ln.startswith("#   sky ")]
    assert len(lines) == 1, prep.text[:800]
    return lines[0].removeprefix("#   ")


def test_the_header_says_the_sky_command_that_sends_the_task_as_ftctl_launch_does(monkeypatch):
    """The printed YAML alone lacked the workdir (`No module named ftctl`), the secrets' values and the autostop."""
    run = sky(["idle_minutes=45"], secrets=["MY_TOKEN"])
    argv = shlex.split(_sky_line(run))
    run_dir = os.path.relpath(run.paths.root)
    assert argv[:3] == ["sky", "launch", f"{run_dir}/task.yaml"]
    assert argv[argv.index("--workdir") + 1] == f"{run_dir}/src"
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--secret"] == [*run.spec.secrets]
    named = yaml.safe_load(run.text)["name"]  # the cluster a launch without --cluster makes: the task's name
    assert argv[-4:] == ["-c", named, "-i", "45"]
    assert shlex.split(_sky_line(sky(down=True, cluster="dev")))[-3:] == ["-c", "dev", "--down"]
    assert shlex.split(_sky_line(sky(infra="k8s")))[-2:] == ["-c", named]  # no -i: no autostop there
    managed = shlex.split(_sky_line(sky(spot=True)))
    assert managed[:3] == ["sky", "jobs", "launch"] and managed[-2] == "-n" and "-c" not in managed
    # a run directory outside the launch's: its absolute path, quoted
    odd = Path("/tmp/a 0'; touch PWNED/$(touch PWNED)")
    monkeypatch.setattr(sky_render, "run_dir_for", lambda spec: odd)
    argv = shlex.split(_sky_line(sky()))
    assert argv[2] == str(odd / "task.yaml") and argv[argv.index("--workdir") + 1] == str(odd / "src")


# ------------------------------------------------------------------------------------------ SkyPilot's reading
# In SkyPilot's venv: each task as SkyPilot reads it (tests/sky_validate.py, then its Resources' tiers), the optimizer
# on the fixture catalog with GCP enabled pricing it as ftctl's estimate asks (render.optimizer_resources), the fit
# check of a reused cluster, and the header's line through SkyPilot's own CLI parser.
_SKY_READS = r"""
import json, os, shlex, sys
from tests.sky_validate import _import_sky, validate_task_yaml
sky = _import_sky()
from sky import clouds
from sky.utils import registry
from sky.client.cli import command
from ftctl.sky import sdk
cases = json.load(sys.stdin)
out = {"tasks": [], "optimized": [], "cli": []}
for text in cases["tasks"]:
    validate_task_yaml(text)
    task = sky.Task.from_yaml_str(text)
    (res,) = task.resources
    out["tasks"].append({"disk_tier": res.disk_tier and res.disk_tier.value,
                         "network_tier": res.network_tier and res.network_tier.value,
                         "features": sorted(f.value for f in res.get_required_cloud_features())})
for asked, nodes in cases["optimize"]:
    out["optimized"].append(sdk._cheapest(sky, asked, nodes))
def on(**kw):
    return sky.Resources(cloud=clouds.GCP(), instance_type="a2-highgpu-8g", accelerators="A100:8", **kw)
out["fit"] = {
    "best task, cluster without": on(network_tier="best").less_demanding_than(on()),
    "standard task, cluster without": on(network_tier="standard").less_demanding_than(on()),
    "no tier task, best cluster": on().less_demanding_than(on(network_tier="best", disk_tier="best")),
    "best disk task, cluster without": on(disk_tier="best").less_demanding_than(on()),
}
F, h100s = clouds.CloudImplementationFeatures.CUSTOM_NETWORK_TIER, sky.Resources(accelerators="H100:8")
out["no_network_tier"] = sorted(  # Kubernetes and SSH pools ask their clusters: where SkyPilot finds a fast network
    n for n, c in registry.CLOUD_REGISTRY.items()
    if n not in ("kubernetes", "ssh") and F in type(c)._unsupported_features_for_resources(h100s))
for line in cases["cli"]:
    argv = shlex.split(line)
    cmd, args = (command.jobs_launch, argv[3:]) if argv[1] == "jobs" else (command.launch, argv[2:])
    params = cmd.make_context(argv[0], args).params
    out["cli"].append({k: v for k, v in params.items() if k in ("entrypoint", "workdir", "secret", "cluster",
                                                              "idle_minutes_to_autostop", "down", "name")})
print(json.dumps(out, default=list))
"""


def test_skypilot_reads_the_tiers_prices_them_and_parses_the_header(tmp_path, monkeypatch):
    home = tmp_path / "home"
    shutil.copytree(REPO / "tests" / "sky" / "catalog" / "v8", home / ".sky" / "catalogs" / "v8")
    monkeypatch.chdir(tmp_path)  # the header's paths are the run directory's from here
    best_net = sky(gpus="2x8xA100", infra="gcp", method="fft", overrides=["network_tier=best"])
    plain = sky(gpus="2x8xA100", infra="gcp", method="fft", overrides=["network_tier=standard", "disk_tier=default"])
    managed = sky(gpus="2x8xH100", method="fft", spot=True, secrets=["MY_TOKEN"], output_dir="s3://b/managed")
    for prep in (best_net, managed):
        (prep.paths.root / "src").mkdir(parents=True, exist_ok=True)  # what `ftctl launch` stages
    cases = {
        "tasks": [best_net.text, plain.text, managed.text],
        "optimize": [
            [sky_render.optimizer_resources(best_net.spec, best_net.plan), 2],
            [sky_render.optimizer_resources(plain.spec, plain.plan), 2],
        ],
        "cli": [_sky_line(best_net), _sky_line(managed)],
    }
    out = sky_reads(_SKY_READS, cases, home, tmp_path, HF_TOKEN="x", WANDB_API_KEY="x", MY_TOKEN="x")
    net, bare, spot = out["tasks"]
    assert net == {"disk_tier": "best", "network_tier": "best", "features": ["custom_network_tier"]}
    assert bare == {"disk_tier": None, "network_tier": None, "features": []}  # standard/default: left out
    assert spot["network_tier"] == "best" and spot["disk_tier"] == "best"
    # best narrows to clouds with network tiers (GCP has them) and prices as the instance: the same VM, the same $/h
    with_best, without = out["optimized"]
    assert with_best["instance_type"] == without["instance_type"] == "a2-highgpu-8g"
    assert with_best["hourly_per_node"] == without["hourly_per_node"]
    # a cluster launched without a tier refuses a task that names one, even standard (hence left out); a task naming
    # none fits a cluster launched with best (docs/skypilot.md: a reused --cluster)
    assert out["fit"] == {
        "best task, cluster without": False,
        "standard task, cluster without": False,
        "no tier task, best cluster": True,
        "best disk task, cluster without": False,
    }
    assert sorted(sky_render.NO_NETWORK_TIER_CLOUDS) == out["no_network_tier"]  # Nebius has it for H100:8
    cluster, jobs = out["cli"]
    assert cluster["entrypoint"] == [str(best_net.paths.root.relative_to(tmp_path) / "task.yaml")]
    assert cluster["workdir"] == str(best_net.paths.root.relative_to(tmp_path) / "src")
    assert cluster["cluster"] == yaml.safe_load(best_net.text)["name"] and cluster["idle_minutes_to_autostop"] == 30
    assert [s[0] for s in cluster["secret"]] == ["HF_TOKEN"]  # W&B's key only where the run reports to W&B
    assert jobs["name"] == managed.spec.name and [s[0] for s in jobs["secret"]][-1] == "MY_TOKEN"


# ------------------------------------------------------------------------------------------ a reused cluster
# In SkyPilot's venv, as tests/test_sky_cluster236.py does: sky.status's record of an up cluster, built as SkyPilot's
# API server sends it (a real handle through its encoder and decoder); sky.status, sky.launch the stand-ins.
_SKY_REUSE = r"""
import json, sys
import sky
from sky.backends import cloud_vm_ray_backend as vm
from sky.schemas.api import responses
from sky.server.requests.serializers import decoders, encoders
from sky.utils.status_lib import ClusterStatus
from ftctl.sky import sdk

task_yaml = sys.argv[1]
(asked,) = sky.Task.from_yaml(task_yaml).resources


def record(**tiers):
    launched = asked.copy(**tiers)
    handle = vm.CloudVmRayResourceHandle(cluster_name="dev", cluster_name_on_cloud="dev-2ea4", cluster_yaml=None,
                                         launched_nodes=2, launched_resources=launched)
    sent = responses.StatusResponse(
        name="dev", launched_at=0, handle=handle, status=ClusterStatus.UP, autostop=30, to_down=False,
        cluster_hash="made-before", cluster_ever_up=True, user_hash="u", user_name="me", workspace="default",
        is_managed=False, nodes=2)
    return decoders.decode_status(json.loads(json.dumps(encoders.encode_status([sent]))))


def launch(records):
    sent = []
    sky.status = lambda names: ("status", names)
    sky.queue = lambda cluster, **kw: ("queue", cluster)
    sky.get = lambda request: {"status": records, "queue": []}[request[0]]
    sky.launch = lambda task, **kw: sent.append("launch") or ("launch",)
    sky.stream_and_get = lambda request: (5, None)
    out = sdk.launch(task_yaml, None, "dev", False, False, 30, [])
    return {"out": out, "sent": sent}


without, with_best = record(disk_tier=None, network_tier=None), record()
print(json.dumps({
    "without": launch(without), "with best": launch(with_best),
    "skypilot takes": [asked.less_demanding_than(r[0].handle.launched_resources) for r in (without, with_best)],
}))
"""


def test_a_reused_cluster_launched_without_a_tier_the_task_names_is_refused_in_ftctls_words(tmp_path):
    """SkyPilot refuses a task naming network_tier or disk_tier on a cluster launched without it ("Requested resources
    do not match the existing cluster"): nothing is sent, and the line names the -o that runs on it as it is."""
    from ftctl.sky import backend as sky_backend

    prep = sky(gpus="2x8xH100", infra="gcp", method="fft")
    assert tiers(prep) == {"disk_tier": "best", "network_tier": "best"}
    task = tmp_path / "task.yaml"
    task.write_text(prep.text)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SKYPILOT_", "FTCTL_"))}
    env.update(HOME=str(tmp_path), SKYPILOT_DISABLE_USAGE_COLLECTION="1", PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sky_python(), "-c", _SKY_REUSE, str(task)], capture_output=True, text=True, cwd=REPO, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["skypilot takes"] == [False, True]
    assert out["without"]["sent"] == [] and out["with best"]["sent"] == ["launch"]
    found = out["without"]["out"]["tiers_missing"]
    assert found["tiers"] == {"disk_tier": "best", "network_tier": "best"} and found["cluster_hash"] == "made-before"
    said = sky_backend.tiers_missing("dev", found)
    assert said.startswith("cluster dev was launched without the disk_tier: best and network_tier: best this run asks")
    assert "pass -o disk_tier=default -o network_tier=standard to run on it as it is" in said
    assert "down dev`) and launch again, or pass another --cluster." in said
