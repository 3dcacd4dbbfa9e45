"""SkyPilot backend loose ends (helper 319).

1. Host RAM on a reused cluster: SkyPilot's fit check (Resources.less_demanding_than) compares no memory, so an
   offload plan's task (``memory: 287+``) was taken onto a cluster whose nodes have 234 GiB (or a Kubernetes pod, a
   Slurm allocation of 64 GB) and the OOM killer ended it once the optimizer states moved to host RAM. sdk.launch
   compares the launched instance type's RAM (as its cloud tells it) with the task's memory: first and sends nothing
   where it is short; the backend says so in one line.
2. GPU names are SkyPilot's accelerator names, matched whole: an L4 task is not taken onto an L40S cluster (nor the
   other way), an A100 one not onto an A100-80GB cluster, by sdk.misfit as by SkyPilot's own check; and SkyPilot reads
   the names ftctl renders as themselves where its catalog also lists longer names holding them (L40, L40S, H100-MEGA).
3. lora_model_dir given as a relative path: the job's spec.json names it where the task mounts it (SkyPilot) or at its
   absolute path (docker), and the spec the launch checks keeps the absolute path here.
4. A multi-node job's rendezvous port on a reused cluster: rdzv_port + 1 + its SkyPilot job id % 1000 (the end of its
   task id), not a checksum of a task id holding a timestamp (two jobs at once met at one port 1 time in 1000).

The SkyPilot side runs in the SkyPilot venv, once for the module, with SkyPilot's own objects (records built as its
API server sends them, as tests/test_sky_cluster236.py and tests/test_explore63.py do): an up cluster cannot exist
offline, so sky.status, sky.queue and sky.launch are the stand-ins. The tasks are the ones ftctl renders.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess

import pytest
import yaml

from ftctl import gpus
from ftctl.backend import JobRef, record_job
from ftctl.errors import NotSent
from ftctl.sky import backend as sky_backend
from ftctl.sky import bridge
from tests.render_fixtures import prepared, sky_reads
from tests.sky_fixtures import HERE

# no tiers: the clusters below were launched without them (tiers_missing has its own tests)
PLAIN = ["disk_tier=default", "network_tier=standard"]

SKY_SIDE = r"""
import json, sys

import sky
from sky import exceptions
from sky.backends import cloud_vm_ray_backend as vm
from sky.schemas.api import responses
from sky.server.requests.serializers import decoders, encoders
from sky.utils import accelerator_registry
from sky.utils.status_lib import ClusterStatus

from ftctl.sky import sdk

cases = json.loads(sys.stdin.read())
names = cases.pop("names")


def record(made):
    launched = sky.Resources(
        infra=made["infra"], accelerators=made.get("gpus"), instance_type=made.get("instance"),
        **({"disk_size": made["disk"]} if "disk" in made else {}),
    )
    handle = vm.CloudVmRayResourceHandle(cluster_name="dev", cluster_name_on_cloud="dev-2ea4", cluster_yaml=None,
                                         launched_nodes=1, launched_resources=launched)
    sent = responses.StatusResponse(
        name="dev", launched_at=0, handle=handle, status=ClusterStatus[made.get("status", "UP")], autostop=30,
        to_down=False, cluster_hash="made-before", cluster_ever_up=True, user_hash="u", user_name="me",
        workspace="default", is_managed=False, nodes=1)
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


out = {}
for name, case in cases.items():
    records = record(case["made"])
    out[name] = {**launch(case["task"], records), "skypilot": skypilot_takes(case["task"], records)}
# the names ftctl renders as SkyPilot reads them, its catalog listing longer names that hold them
out["canonical"] = {n: accelerator_registry.canonicalize_accelerator_name(n, None) for n in names}
print(json.dumps(out))
"""

# SkyPilot's common accelerator list as its catalog has these (the test catalog's, with the longer names that hold
# a shorter one: L40 and L40S hold L4, A100-80GB A100, H100-MEGA H100)
ACCELERATORS = """AcceleratorName,Clouds
A100,"['AWS', 'Azure', 'GCP']"
A100-80GB,"['AWS', 'Azure', 'GCP']"
A10G,['AWS']
A10,['Azure']
H100,"['AWS', 'Azure', 'GCP']"
H100-MEGA,['GCP']
L4,"['AWS', 'GCP']"
L40,['Lambda']
L40S,"['AWS', 'Nebius']"
T4,"['AWS', 'Azure', 'GCP']"
"""
GCP = "gcp/us-central1"
BIG_DISK = 4096  # GiB: more than any task below stages (short_disk's check passes)


def sky(method="fft", gpus="1xH100", more=(), **flags):
    args = dict(backend="sky", method=method, gpus=gpus, output_dir="s3://b/o")
    args.setdefault("model_name_or_path", "meta-llama/Llama-3.1-8B")
    return prepared([*PLAIN, *more], **{**args, **flags})


@pytest.fixture(scope="module")
def sky_side(tmp_path_factory):
    """What sdk.launch and SkyPilot's own fit check make of each task onto a cluster there already (~5 s)."""
    tmp = tmp_path_factory.mktemp("sky319")
    home = tmp / "home"
    shutil.copytree(HERE / "catalog" / "v8", home / ".sky" / "catalogs" / "v8")  # offline: GCP's a3-highgpu-1g
    (home / ".sky" / "catalogs" / "v8" / "common" / "accelerators.csv").write_text(ACCELERATORS)
    tasks = {
        "offload 8B": sky(),  # ZeRO-Offload: memory 161+ (172 GB)
        "offload 13B": sky(model_name_or_path="o/m", model_params="13b"),  # memory 287+ (308 GB)
        "lora 8B": sky(method="lora"),  # no memory asked
        "cpu lora": sky(
            method="lora", gpus="cpu", nodes=1, infra="k8s", model_name_or_path="HuggingFaceTB/SmolLM2-135M-Instruct"
        ),
        "L4": sky(method="lora", gpus="1xL4"),
        "L40S": sky(method="lora", gpus="1xL40S"),
        "8xA100": sky(method="lora", gpus="8xA100"),
    }
    a3 = {"infra": GCP, "instance": "a3-highgpu-1g", "gpus": {"H100": 1}, "disk": BIG_DISK}  # 234 GiB
    pod = {"infra": "k8s/ctx", "instance": "8CPU--64GB--H100:1", "gpus": {"H100": 1}}
    made = {
        "offload 8B onto a3": ("offload 8B", a3),
        "offload 13B onto a3": ("offload 13B", a3),
        "offload 13B onto a3, stopped": ("offload 13B", {**a3, "status": "STOPPED"}),
        "offload 8B onto a k8s pod": ("offload 8B", pod),
        "offload 8B onto a Slurm allocation": ("offload 8B", {**pod, "infra": "slurm/c"}),
        "offload 8B, RAM not told": ("offload 8B", {"infra": "lambda/us-east-1", "gpus": {"H100": 1}}),
        # a Slurm cluster that tracks no memory: SkyPilot sends no --mem (its type says 0GB), its jobs get what they get
        "offload 8B onto a Slurm allocation without --mem": (
            "offload 8B",
            {**pod, "infra": "slurm/c", "instance": "8CPU--0GB--H100:1"},
        ),
        "lora onto a k8s pod": ("lora 8B", pod),
        "cpu onto a small pod": ("cpu lora", {"infra": "k8s/ctx", "instance": "4CPU--4GB"}),
        "cpu onto a big pod": ("cpu lora", {"infra": "k8s/ctx", "instance": "4CPU--64GB"}),
        "L4 onto L4": ("L4", {"infra": "k8s/ctx", "gpus": {"L4": 1}}),
        "L4 onto L40S": ("L4", {"infra": "k8s/ctx", "gpus": {"L40S": 1}}),
        "L40S onto L4": ("L40S", {"infra": "k8s/ctx", "gpus": {"L4": 1}}),
        "A100 onto A100-80GB": ("8xA100", {"infra": "k8s/ctx", "gpus": {"A100-80GB": 8}}),
    }
    cases = {"names": ["L4", "L40S", "A100", "A100-80GB", "H100"]}
    for name, (task, cluster) in made.items():
        path = tmp / f"{task}.yaml"
        path.write_text(tasks[task].text)
        cases[name] = {"task": str(path), "made": cluster}
    out = sky_reads(SKY_SIDE, cases, home, tmp)
    out["memory"] = {name: yaml.safe_load(t.text)["resources"].get("memory") for name, t in tasks.items()}
    return out


# ------------------------------------------------------------------------------------------ 1. host RAM
def test_an_offload_task_is_not_launched_onto_nodes_with_less_ram_than_it_asks_for(sky_side):
    """The task's memory: against the launched instance's RAM (GCP's a3-highgpu-1g 234 GiB from the catalog, a pod's
    or a Slurm allocation's 64 GB from its type's name): nothing sent where short, up or stopped; SkyPilot's own
    check would have taken each. Enough RAM, no memory: asked, or RAM that cannot be told: launched as before."""
    assert sky_side["memory"]["offload 8B"] == "161+" and sky_side["memory"]["offload 13B"] == "287+"
    for case, task, have, instance in (
        ("offload 13B onto a3", "offload 13B", 234, "a3-highgpu-1g"),
        ("offload 13B onto a3, stopped", "offload 13B", 234, "a3-highgpu-1g"),
        ("offload 8B onto a k8s pod", "offload 8B", 64, "8CPU--64GB--H100:1"),
        ("offload 8B onto a Slurm allocation", "offload 8B", 64, "8CPU--64GB--H100:1"),
        ("cpu onto a small pod", "cpu lora", 4, "4CPU--4GB"),
    ):
        got = sky_side[case]
        assert got["skypilot"] is True, case  # Resources.less_demanding_than leaves memory out: the gap
        assert got["asked"] == [], case  # no sky.launch (nor a queue asked)
        short = got["out"]["short_ram"]
        assert (short["cluster_gib"], short["instance"], short["cluster_hash"]) == (have, instance, "made-before")
        assert short["task_gib"] == float(sky_side["memory"][task].rstrip("+")), case
    for case in (
        "offload 8B onto a3",
        "offload 8B, RAM not told",
        "offload 8B onto a Slurm allocation without --mem",
        "lora onto a k8s pod",
        "cpu onto a big pod",
    ):
        assert sky_side[case]["out"]["job_id"] == 5 and sky_side[case]["asked"] == ["launch"], case


@pytest.fixture
def here(tmp_path, monkeypatch):
    """A directory of its own to launch from (the run directories are made under it), and its own jobs' record."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FTCTL_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(sky_backend, "stage_source", lambda dest: dest)
    return tmp_path


def _refusal(sky_side, case, rendered, tmp_path, monkeypatch) -> str:
    assert rendered.paths.root.is_relative_to(tmp_path)
    answer = sky_side[case]["out"]
    # optimize (for_host_ram: a VM with that RAM exists somewhere) and launch, each answered
    monkeypatch.setattr(bridge, "call", lambda op, **kw: {"cloud": "GCP"} if op == "optimize" else answer)
    extra = {"cluster": "dev", "sky_job_id": 1, "managed": False, "cluster_hash": "made-before"}
    record_job(JobRef("sky", "dev/1", str(tmp_path / "runs" / "lora"), "lora", "s3://b/lora", extra=extra))
    with pytest.raises(NotSent) as e:
        sky_backend.SkyBackend().submit(rendered)
    assert not rendered.paths.root.exists() or not list(rendered.paths.root.iterdir())  # nothing kept
    return str(e.value)


def test_the_ram_refusal_is_one_line_with_the_fixes(sky_side, here, monkeypatch):
    rendered = sky(model_name_or_path="o/m", model_params="13b", cluster="dev")
    said = _refusal(sky_side, "offload 13B onto a3", rendered, here, monkeypatch)
    sky_cli = sky_side["offload 13B onto a3"]["out"]["short_ram"]["sky"]
    assert "\n" not in said
    assert said == (
        "cluster dev has 234 GiB of RAM a node (a3-highgpu-1g), as it was launched, and the zero2_offload plan keeps "
        "~308 GB a node in host RAM (memory: 287+): SkyPilot reuses a cluster with the RAM it has, so the job would be "
        f"killed out of memory. Tear it down (`ftctl down dev/1` or `{sky_cli} down dev`) and launch again, "
        "-o host_memory_gb=251 plans within it, or pass another --cluster."
    )


def test_a_cpu_plans_ram_refusal_names_its_processes(sky_side, here, monkeypatch):
    rendered = sky(
        method="lora",
        gpus="cpu",
        nodes=1,
        infra="k8s",
        model_name_or_path="HuggingFaceTB/SmolLM2-135M-Instruct",
        cluster="dev",
    )
    said = _refusal(sky_side, "cpu onto a small pod", rendered, here, monkeypatch)
    assert said.startswith("cluster dev has 4 GiB of RAM a node (4CPU--4GB), as it was launched, and its CPU ")
    assert "host_memory_gb" not in said and said.endswith("and launch again, or pass another --cluster.")


# ------------------------------------------------------------------------------------------ 2. GPU names, whole
def test_gpu_names_are_matched_whole(sky_side):
    """L4 is no L40S (nor the other way), A100 no A100-80GB: refused by sdk.misfit as by SkyPilot's own check; the
    same name fits. SkyPilot reads each name ftctl renders as itself, longer names holding it in its catalog."""
    assert sky_side["L4 onto L4"]["out"]["job_id"] == 5 and sky_side["L4 onto L4"]["skypilot"] is True
    for case, cluster, task in (
        ("L4 onto L40S", "1 node of L40S:1 on kubernetes/ctx", "1 node of L4:1"),
        ("L40S onto L4", "1 node of L4:1 on kubernetes/ctx", "1 node of L40S:1"),
        ("A100 onto A100-80GB", "1 node of A100-80GB:8 on kubernetes/ctx", "1 node of A100:8"),
    ):
        got = sky_side[case]
        assert str(got["skypilot"]).startswith("Requested resources do not match the existing cluster"), case
        assert got["asked"] == [] and got["out"]["misfit"]["cluster"] == cluster, case
        assert got["out"]["misfit"]["task"] == task, case
    assert sky_side["canonical"] == {n: n for n in ["L4", "L40S", "A100", "A100-80GB", "H100"]}
    rendered = {g: yaml.safe_load(sky(method="lora", gpus=g).text)["resources"]["accelerators"] for g in GPUS}
    assert rendered == GPUS
    # the names as Slurm's GRES and nvidia-smi write them: a model whole, not a prefix of another's
    assert [gpus.tier(n).name for n in ("l4", "L40S", "nvidia_l40s", "a100", "A100-SXM4-80GB")] == [
        "L4",
        "L40S",
        "L40S",
        "A100",
        "A100-80GB",
    ]
    assert not gpus.same_model("NVIDIA L40S", "L4") and not gpus.same_model("a10", "A100")
    assert not gpus.named_after("NVIDIA L40S", "L4") and not gpus.named_after("NVIDIA A100-SXM4-80GB", "A10")
    assert not gpus.same_model("a100-40gb", "A100-80GB")


GPUS = {"1xL4": "L4:1", "L40S:2": "L40S:2", "8xA100": "A100:8", "A100-80GB:8": "A100-80GB:8", "H100": "H100:1"}


# ------------------------------------------------------------------------------------------ 3. lora_model_dir
def _earlier_run(root, base):
    """An earlier lora run's output: its spec.json and a checkpoint-2 adapter."""
    run = root / "first run"
    config = {"peft_type": "LORA", "base_model_name_or_path": str(base), "r": 4, "lora_alpha": 8}
    config["target_modules"] = ["q_proj", "v_proj"]
    (run / "checkpoint-2").mkdir(parents=True)
    (run / "checkpoint-2" / "adapter_config.json").write_text(json.dumps(config))
    (run / "checkpoint-2" / "adapter_model.safetensors").write_bytes(b"weights")
    (run / "spec.json").write_text(json.dumps({"spec": {"data_path": "/data/first.jsonl"}}))
    return run / "checkpoint-2"


def _node_spec(text: str) -> dict:
    run = yaml.safe_load(text)["run"]
    start = run.index("<<'") + 3
    word = run[start : run.index("'", start)]
    return json.loads(run.split(f"<<'{word}'\n", 1)[1].split(f"\n{word}\n", 1)[0])["spec"]


def test_a_relative_lora_model_dir_is_named_where_the_job_reads_it(tiny_model_dir, tiny_data, tmp_path, monkeypatch):
    """Given relative to where ftctl runs: SkyPilot's nodes read it where file_mounts puts it (the run's directory on
    the node, where the trainer runs, joined with the spec.json's path), the spec the launch checks names it
    absolute here; docker's container reads it at its own absolute path, mounted read-only there."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    adapter = _earlier_run(tmp_path / "in", tiny_model_dir)
    given = "in/first run/checkpoint-2"
    flags = dict(method="lora", model_name_or_path=str(tiny_model_dir), data_path=str(tiny_data))
    prep = prepared([f"lora_model_dir={given}"], backend="sky", gpus="1xL4", output_dir="s3://b/runs/2", **flags)
    assert prep.spec.lora_model_dir == str(adapter)
    task = yaml.safe_load(prep.text)
    node = _node_spec(prep.text)["lora_model_dir"]
    cd = next(line for line in task["run"].splitlines() if line.startswith("cd "))
    node_dir = shlex.split(cd.split("#")[0])[1]
    on_node = f"{node_dir}/{node.removeprefix('./')}"
    assert task["file_mounts"][f"{on_node}/adapter_config.json"] == str(adapter / "adapter_config.json")
    assert task["file_mounts"][f"{on_node}/adapter_model.safetensors"] == str(adapter / "adapter_model.safetensors")

    docker = prepared(
        [f"lora_model_dir={given}"],
        backend="docker",
        gpus="cpu",
        container="docker:ghcr.io/x/img:1",
        output_dir=str(tmp_path / "second"),
        **flags,
    )
    assert json.loads(docker.files["spec.json"])["spec"]["lora_model_dir"] == str(adapter)
    words = shlex.split(docker.text)
    mounts = [words[i + 1] for i, w in enumerate(words) if w == "-v"]
    assert f"{adapter / 'adapter_config.json'}:{adapter / 'adapter_config.json'}:ro" in mounts, mounts


# ------------------------------------------------------------------------------------------ 4. rendezvous port
def _ports(task_ids: list[str]) -> list[int]:
    """RDZV_PORT of a 2-node task for each SkyPilot task id, as its run section's lines set it on a node."""
    run = yaml.safe_load(sky(method="lora", gpus="2x8xH100").text)["run"].splitlines()
    at = next(i for i, x in enumerate(run) if x.startswith("HEAD_ADDR="))
    lines = run[at : at + 3]
    assert lines[-1] == "export RDZV_PORT"
    script = "set -euo pipefail\n" + "\n".join(lines) + '\necho "$RDZV_PORT"'
    out = []
    for task_id in task_ids:
        env = {"PATH": "/usr/bin:/bin", "SKYPILOT_NODE_IPS": "10.0.0.7\n10.0.0.8", "SKYPILOT_TASK_ID": task_id}
        done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30, env=env)
        assert done.returncode == 0, done.stderr
        out.append(int(done.stdout))
    return out


def test_jobs_of_one_cluster_listen_on_ports_of_their_job_ids():
    """SkyPilot numbers a cluster's jobs 1, 2, 3 ...: jobs that run at once on a reused cluster listen apart unless
    their ids are 1000 apart (the checksum of a task id with its launch's timestamp in it gave two of them one port
    1 time in 1000); a managed job's id ends its task id before -TASK; an id that is no number: the checksum."""
    stamp = "sky-2026-12-07-16-00-00-123456"
    ids = [f"{stamp}_my_cluster-1_{n}" for n in (1, 2, 3, 999, 1000, 1003)]
    ports = _ports([*ids, f"sky-managed-{stamp}_ftctl-lora_17-0", f"{stamp}_c_x7", f"{stamp}_c_007"])
    assert ports[:6] == [29502, 29503, 29504, 30500, 29501, 29504]
    assert ports[6] == 29518
    assert all(29501 <= p <= 30500 for p in ports[7:])
    # every node of a job computes its port alone: the same task id, the same port
    assert _ports([f"{stamp}_c_41", f"{stamp}_c_41"]) == [29542, 29542]
