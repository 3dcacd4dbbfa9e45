"""Render a SkyPilot task YAML for a plan.

The run section writes spec.json from a quoted heredoc, so what ``ftctl render --backend sky`` prints is the task
``ftctl launch`` sends; what SkyPilot takes beside a task it sends through the SDK (ftctl/sky/backend.py), and the
header's ``sky launch`` / ``sky jobs launch`` line says it as SkyPilot's CLI would (:func:`sky_command`): the workdir,
ftctl's own source copied into the run directory, which SkyPilot syncs to every node and the run section puts first on
PYTHONPATH (no released ftctl is installed from an index); each secret's value; the idle autostop or --down. The setup runs ftctl.sky.node_stack on every
node, in the ``--container`` image where there is one: it adds what the python of the node's torchrun lacks of
the trainer's stack (ftctl's ``train`` extra, as pinned by its metadata; nothing in an image ``ftctl build``
made), holding a torch the node has, else installing the torch build for the CUDA version of the node's driver.
Local inputs (each --data and --eval-data file or directory, chat_template_path, a --model directory) ship with the
task as ``file_mounts`` (:func:`shipped`): SkyPilot copies each to ``~/ftctl-run/RUN/inputs/`` on every node, and the
spec.json of the run section names them there, relative to the run's directory the trainer runs in (transformers
reads ``~/m`` as a hub id). The output stays an object store: a cloud VM's disk goes with it.
Secrets are declared by name under ``secrets:`` (SkyPilot asks for their values at launch, from the
launching environment); their values never appear here. --managed and --spot runs become managed jobs with
``job_recovery`` (on spot instances with --spot); the trainer restores from the output bucket when the job restarts
elsewhere.

:func:`settle` is what SkyPilot would otherwise find out late, or not at all (SkyBackend.resolve runs it): one
``infra`` of --infra, -o cloud and -o region; the node's disk sized for what the run stages there; a managed job's
restarts after its own failures; and every option that would be ignored refused, all at once. A multi-node GPU run
asks for ``network_tier: best`` where SkyPilot sets up the fast interconnect right (:func:`network_tier`), a cloud node
whose checkpoints are large for ``disk_tier: best`` (:func:`disk_tier`).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import math
import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import yaml

from ftctl import __version__
from ftctl.backend import run_dir_for
from ftctl.docker.image import ARM_HOSTED, check_reference
from ftctl.errors import FtctlError, did_you_mean
from ftctl.launch import (
    JOB_PORT,
    Shell,
    container_kind,
    job_port_line,
    join,
    preflight_shell,
    setup_lines,
    torchrun_argv,
    trainer_env,
)
from ftctl.lease import UNREACHED_EXIT
from ftctl.plan import Plan
from ftctl.preflight import disk_need
from ftctl.runpaths import SOURCE_DIR, TASK_FILE
from ftctl.sky.cost import memory_request
from ftctl.sky.inputs import Shipped, cluster_name, node_dir, run_key, shipping_note
from ftctl.spec import REPORT_SETTINGS, RunSpec, container_as, given_as, trackers
from ftctl.storage import FILE_ENV, JOB_ENV, REMOTE_SCHEMES, scheme

HEREDOC = "FTCTL_SPEC_EOF"
# the run's python on a node: the one of the torchrun on its PATH, where the setup put the stack (node_stack)
NODE_PYTHON_VAR = "FTCTL_PYTHON"
NODE_PYTHON = Shell(f'"${NODE_PYTHON_VAR}"')
# a number of the job's for its rendezvous port (launch.job_port_line), the same on every node: its SkyPilot job id,
# which ends its task id (sky-TIMESTAMP_CLUSTER_ID; a managed job's ..._NAME_ID-TASK), so jobs of one cluster that run
# at once get ports apart unless their ids are PORT_SPREAD apart; the task id's checksum where none reads as one. The
# checksum alone (of a task id holding the launch's timestamp) gave two jobs of a cluster one port 1 time in 1000,
# and the second joined the first's c10d store and failed when it ended.
TASK_NUMBER = (
    '$(n="${SKYPILOT_TASK_ID##*_}"; n="${n%%-*}"; [[ "$n" =~ ^[1-9][0-9]{0,8}$ ]] && echo "$n" '
    '|| printf %s "$SKYPILOT_TASK_ID" | cksum | cut -d " " -f 1)'
)
REMOTE_WORKDIR = "$HOME/sky_workdir"  # where SkyPilot syncs a task's workdir (~/sky_workdir)
WORKDIR_ON_PATH = (
    f'export PYTHONPATH="{REMOTE_WORKDIR}${{PYTHONPATH:+:$PYTHONPATH}}"  # ftctl\'s source, shipped as the workdir'
)
# Infras whose nodes can run a CPU-only job (`--gpus cpu`); clouds are asked for GPUs.
CPU_INFRAS = ("slurm", "k8s", "kubernetes", "ssh")
# Infras where SkyPilot 0.14 has no idle autostop (Slurm: only for pyxis container clusters): its cloud refuses a
# launch that asks for one (clouds/*.py, AUTOSTOP among the unsupported features; Kubernetes and SSH say so when
# asked), so none is asked for there
NO_AUTOSTOP_INFRAS = ("slurm", "k8s", "kubernetes", "ssh", "hyperbolic", "primeintellect", "verda", "yotta")
# Infras with no spot market (clouds/slurm.py, ssh.py: SPOT_INSTANCE unsupported), where --spot is --managed
NO_SPOT_INFRAS = ("slurm", "ssh")
# Clouds with no spot instances in SkyPilot 0.14.1 (SPOT_INSTANCE among each one's _CLOUD_UNSUPPORTED_FEATURES; a
# Kubernetes cluster has them where its nodes carry a spot label, which only SkyPilot can ask): use_spot there found
# no instance ("Catalog does not contain any instances satisfying the request: 1x Lambda([Spot], ...)").
# tests/test_explore30.py checks the list against the installed SkyPilot.
NO_SPOT_CLOUDS = (
    *("cudo", "do", "fluidstack", "hyperbolic", "lambda", "paperspace", "scp", "seeweb", "shadeform", "vsphere"),
    "yotta",
)
# The clouds and infras SkyPilot 0.14.1 knows, and their other names: sky.utils.registry.CLOUD_REGISTRY's (render
# imports no SkyPilot; tests/test_sky_cost.py checks both against the installed one). "*" in infra is any cloud.
SKY_CLOUDS = (
    *("aws", "azure", "cudo", "do", "fluidstack", "gcp", "hyperbolic", "ibm", "kubernetes", "lambda", "mithril"),
    *("nebius", "oci", "paperspace", "primeintellect", "runpod", "scp", "seeweb", "shadeform", "slurm", "ssh"),
    *("vast", "verda", "vsphere", "yotta"),
)
SKY_CLOUD_ALIASES = {"k8s": "kubernetes", "digitalocean": "do"}
WHOLE_REST_INFRAS = ("k8s", "kubernetes", "ssh")  # all after "k8s/" is one context name, slashes and all
# A GPU node's disk in GiB, SkyPilot's unit of disk_size (the plan's sizes are GB, 1e9 B): what the run stages
# there, at least SkyPilot's own default.
MIN_DISK_GIB = 256
DISK_STEP_GIB = 64  # the size asked for is rounded up to a multiple of this
DOWNLOAD_BYTES = 2  # a parameter of the model as the hub serves it (16-bit safetensors)
DISK_HEADROOM_GIB = 100  # the VM's OS image, a docker image, the node's Python packages, caches and logs
# A managed job's restarts after failing on a healthy cluster (max_restarts_on_errors) when -o max_requeues is not
# given: none. A lost node (a spot VM's preemption among them) is recovered whatever this says; a failure of the job
# itself (bad data, missing credentials, out of memory) recurs on a new node, and torchrun exits 1 for every one of
# them, so no exit code tells a passing fault apart (recover_on_exit_codes would restart on it without limit).
MANAGED_RESTARTS_ON_ERRORS = 0
# ... but a multi-node one's: one. A GPU's fault on a VM still up (an Xid, an uncorrectable ECC error, an NCCL
# watchdog's timeout) is the job's own failure to SkyPilot, not a lost node, and the chance of one grows with the
# GPUs; one restart on fresh nodes resumes from the last checkpoint, and a failure that recurs costs one relaunch.
MANAGED_RESTARTS_ON_ERRORS_MULTI_NODE = 1

# network_tier: best as SkyPilot 0.14.1 sets it up (sky/clouds/*.py), for the shapes (GPU, a node's count) where it
# is right; None: any shape. AWS attaches EFA where the instance type has it, and changes nothing where it has none
# (aws.py make_deploy_resources_variables). GCP's is GPUDirect-TCPX: a COS image, a TCPX container where no image is
# given, and docker options naming 8 GPUs and an a3-highgpu-8g's NICs (gcp.py, provision/gcp/constants.py): an
# H100:8's VM, broken on another. Nebius has InfiniBand for these GPUs in 8s, and refuses best for any other.
BEST_NETWORK = {
    "aws": None,
    "gcp": {("H100", 8)},
    "nebius": {("H100", 8), ("H200", 8), ("B200", 8), ("B300", 8)},
}
# With no infra named, best narrows SkyPilot's optimizer to the clouds that have it (CUSTOM_NETWORK_TIER): asked for
# where every one of them sets it up right, an H100:8 node (AWS's p5, GCP's a3-highgpu-8g, Nebius's), whose
# multi-node plan assumes the fast interconnect
BEST_NETWORK_ANYWHERE = {("H100", 8)}
# Clouds that refuse network_tier: best in SkyPilot 0.14.1 (CUSTOM_NETWORK_TIER among their unsupported features for
# any resources; Kubernetes, SSH pools and Nebius have it where SkyPilot finds the fast network).
# tests/test_sky_resources235.py checks the list against the installed SkyPilot.
NO_NETWORK_TIER_CLOUDS = (
    *("azure", "cudo", "do", "fluidstack", "hyperbolic", "lambda", "mithril", "paperspace", "primeintellect"),
    *("runpod", "scp", "seeweb", "shadeform", "vast", "verda", "vsphere", "yotta"),
)
# Infras whose nodes' disk has no tier (SkyPilot takes best there and does nothing with it: a Slurm node's, a pod's
# ephemeral storage, an SSH pool's machine)
NO_DISK_TIER_INFRAS = ("slurm", "k8s", "kubernetes", "ssh")
# disk_tier: best where a checkpoint takes longer than this to write on SkyPilot's default disk: MEDIUM, AWS's gp3 at
# 3,500 IOPS and 3500 // 16 = 218 MB/s (clouds/aws.py _get_disk_specs; GCP's pd-balanced is near), where the plan
# times a save at preflight.SAVE_GBPS. Best is ULTRA on AWS and GCP (io2, pd-extreme; 20,000 IOPS provisioned: about
# $1.8/h a node at list prices, which SkyPilot's price leaves out), worth it where the GPUs wait minutes on each save
# and not for an adapter's megabytes.
DEFAULT_DISK_GBPS = 0.218
SLOW_SAVE_S = 60


class _Block(str):
    """A multi-line string written as a YAML literal block."""


yaml.SafeDumper.add_representer(_Block, lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", str(s), style="|"))


def run_requirements(spec: RunSpec) -> list[str]:
    """What a node needs for this run, as ftctl's installed metadata pins it (pyproject.toml is the one owner): the
    ``train`` extra, and ``wandb`` for report_to=wandb, ``gcs`` / ``azure`` where a path is in that store (the
    train extra brings only s3fs)."""
    extras = {"train"}
    if "wandb" in spec.report_to:
        extras.add("wandb")
    schemes = {p.split("://", 1)[0].lower() for p in spec.remote_uris}  # the chat template and resume= too
    extras |= {"gcs" for s in schemes if s in ("gs", "gcs")} | {
        "azure" for s in schemes if s in ("az", "abfs", "abfss")
    }
    reqs = importlib.metadata.requires("ftctl") or []
    wanted = {f'extra == "{e}"' for e in extras}
    return sorted({r.split(";")[0].strip() for r in reqs if any(w in r for w in wanted)})


def settle(spec: RunSpec, plan: Plan) -> RunSpec:
    """``spec`` as SkyPilot runs it (what SkyBackend.resolve returns): cloud and region folded into infra, the
    disk sized, a managed job's restarts after its own failures, the network and disk tiers; FtctlError naming every
    option it would refuse or ignore."""
    deciders = {
        "infra": lambda: infra(spec),
        "disk_size": lambda: disk_size(spec, plan),
        "max_requeues": lambda: restarts_on_errors(spec, plan),
        # what the task asks for, said in spec.json (standard and default: SkyPilot's, left out of the task)
        "network_tier": lambda: network_tier(spec, plan) or "standard",
        "disk_tier": lambda: disk_tier(spec, plan) or "default",
        "also_gpus": lambda: ",".join(also_gpus(spec, plan)) or None,
        "on_demand_fallback": lambda: on_demand_fallback(spec, plan),
    }
    problems, values = [], {}
    for key, decide in deciders.items():
        try:
            values[key] = decide()
        except FtctlError as e:
            problems.append(str(e))
    problems += ignored_options(spec)
    if len(problems) > 1:
        raise FtctlError(
            f"{len(problems)} problems with the SkyPilot options:\n" + "\n".join(f"  - {p}" for p in problems)
        )
    if problems:
        raise FtctlError(problems[0])
    return replace(spec, cloud=None, region=None, **values)


# the shapes of the clouds' region names, for the --infra a region without its cloud is offered
_REGION_CLOUDS = (
    (re.compile(r"[a-z]{2}(-gov)?-[a-z]+-\d"), "aws"),  # us-east-1, eu-west-2, us-gov-west-1
    (re.compile(r"[a-z]+-[a-z]+\d+"), "gcp"),  # us-east1, europe-west4
    (re.compile(r"[a-z]*(east|west|central|north|south)[a-z]*\d?"), "azure"),  # eastus, westeurope, uksouth
)


def _region_cloud(region: str) -> str:
    """The cloud whose region names look like ``region`` (CLOUD where none does)."""
    return next((cloud for shape, cloud in _REGION_CLOUDS if shape.fullmatch(region.strip().lower())), "CLOUD")


def infra(spec: RunSpec) -> str | None:
    """The one ``infra`` of --infra, -o cloud and -o region (SkyPilot takes infra or cloud/region, never both):
    gcp with us-east1 is gcp/us-east1. FtctlError for a cloud SkyPilot does not know, a contradiction, or a region
    without its cloud."""
    cloud, region, zone = _split(spec.infra) if spec.infra else (spec.cloud, None, None)
    if cloud is None:
        if spec.region:
            raise FtctlError(
                f"{given_as(spec, 'region', spec.region)} needs its cloud: "
                f"{given_as(spec, 'infra', f'{_region_cloud(spec.region)}/{spec.region}', '--infra')}."
            )
        return None
    infra_said = given_as(spec, "infra", spec.infra, "--infra")
    _known_cloud(cloud, infra_said if spec.infra else given_as(spec, "cloud", spec.cloud))
    if spec.infra and spec.cloud and _cloud_name(spec.cloud) != _cloud_name(cloud):
        raise FtctlError(
            f"{infra_said} and {given_as(spec, 'cloud', spec.cloud)} name two clouds: drop {given_as(spec, 'cloud')}, or "
            f"give {given_as(spec, 'infra', spec.cloud, '--infra')} instead."
        )
    if spec.region and region and spec.region != region:
        raise FtctlError(
            f"{infra_said} and {given_as(spec, 'region', spec.region)} name two regions: give the region in "
            f"{given_as(spec, 'infra', flag='--infra')} ({cloud}/{spec.region}) and drop {given_as(spec, 'region')}."
        )
    return "/".join(filter(None, [cloud, region or spec.region, zone]))


def _split(text: str) -> tuple[str, str | None, str | None]:
    """(cloud, region, zone) of an infra string, as SkyPilot's InfraInfo.from_str splits it."""
    cloud, *rest = [p.strip() for p in text.strip().strip("/").split("/")]
    if cloud.lower() in WHOLE_REST_INFRAS:
        return cloud, "/".join(rest) or None, None
    return cloud, (rest[0] if rest else None), "/".join(rest[1:]) or None


def _cloud_name(cloud: str) -> str:
    return SKY_CLOUD_ALIASES.get(cloud.lower(), cloud.lower())


def _known_cloud(cloud: str, said: str) -> None:
    if _cloud_name(cloud) not in (*SKY_CLOUDS, "*"):
        if (of := _region_cloud(cloud)) != "CLOUD":  # a region without its cloud: --infra us-east-1
            raise FtctlError(
                f"{said}: {cloud!r} is a region, not a cloud: --infra {of}/{cloud.strip()} (CLOUD/REGION)."
            )
        hint = (
            did_you_mean(cloud.lower(), [*SKY_CLOUDS, *SKY_CLOUD_ALIASES]) or f" SkyPilot's: {', '.join(SKY_CLOUDS)}."
        )
        raise FtctlError(f"{said}: SkyPilot 0.14 knows no cloud {cloud!r}.{hint}")


def disk_needed_gib(spec: RunSpec, plan: Plan) -> float:
    """GiB a node's disk holds at most (:func:`disk_parts_gib`'s sum): the one formula of a node's disk."""
    return sum(size for _, size in disk_parts_gib(spec, plan))


def disk_parts_gib(spec: RunSpec, plan: Plan) -> list[tuple[str, float]]:
    """What a node's disk holds at most, each (what, GiB): the model's download, the checkpoints staged there before
    their upload as preflight.disk_need counts them (save_total_limit's and beside them the next one, written before
    the oldest is deleted, or at the end the final model: the one count every disk check asks), and headroom for the
    image and packages."""
    need = disk_need(spec, plan)
    return [
        ("the model's download", _gib(plan.model.params_b * DOWNLOAD_BYTES)),
        (f"checkpoints of ~{_gib(need.one):.0f} each: {need.words}", _gib(need.gb)),
        ("the image and packages", DISK_HEADROOM_GIB),
    ]


def _gib(gb: float) -> float:
    return gb * 1e9 / 2**30


def disk_size(spec: RunSpec, plan: Plan) -> int:
    """disk_size (GiB) of a GPU node: -o disk_size where given, refused below what the run stages there (a full disk
    is found out hours in, when a checkpoint cannot be written); else that, rounded up, at least MIN_DISK_GIB."""
    if plan.tier is None:  # a CPU job asks for no disk (on k8s it would be an ephemeral-storage request)
        return spec.disk_size
    need = disk_needed_gib(spec, plan)
    enough = max(MIN_DISK_GIB, math.ceil(need / DISK_STEP_GIB) * DISK_STEP_GIB)
    if not spec.gave("disk_size"):
        return enough
    if spec.disk_size < need:
        parts = ", ".join(f"~{size:.0f} for {what}" for what, size in disk_parts_gib(spec, plan))
        raise FtctlError(
            f"{given_as(spec, 'disk_size', spec.disk_size)} (GiB, SkyPilot's unit) is too small for {plan.method} "
            f"of {plan.model.params_b:g}B parameters: a node stages ~{need:.0f} GiB ({parts}): "
            f"{given_as(spec, 'disk_size', enough)}, or lower -o save_total_limit, or leave disk_size out to have it "
            "sized."
        )
    return spec.disk_size


def restarts_on_errors(spec: RunSpec, plan: Plan) -> int:
    """max_requeues as SkyPilot reads it: a managed job's max_restarts_on_errors, unless given
    MANAGED_RESTARTS_ON_ERRORS (MANAGED_RESTARTS_ON_ERRORS_MULTI_NODE for several nodes). A cluster job keeps the
    spec's (ignored_options refuses one given there)."""
    if spec.managed_job and not spec.gave("max_requeues"):
        return MANAGED_RESTARTS_ON_ERRORS_MULTI_NODE if plan.nodes > 1 else MANAGED_RESTARTS_ON_ERRORS
    return spec.max_requeues


def network_tier(spec: RunSpec, plan: Plan) -> str | None:
    """The task's network_tier: -o network_tier's (standard is SkyPilot's default, left out: a task that names it does
    not fit a cluster launched without it); unset, best for a multi-node GPU run where SkyPilot sets it up right
    (BEST_NETWORK, BEST_NETWORK_ANYWHERE), else none."""
    if spec.network_tier is not None:
        return "best" if spec.network_tier == "best" else None
    if plan.nodes < 2 or plan.tier is None:
        return None
    shape = (plan.tier, plan.gpus_per_node)
    kind = infra_kind(spec)
    if kind in (None, "*"):
        return "best" if shape in BEST_NETWORK_ANYWHERE else None
    kind = _cloud_name(kind)
    if kind not in BEST_NETWORK:
        return None
    shapes = BEST_NETWORK[kind]
    return "best" if shapes is None or shape in shapes else None


def disk_tier(spec: RunSpec, plan: Plan) -> str | None:
    """The task's disk_tier: -o disk_tier's (default, SkyPilot's, left out); unset, best for a GPU node of a cloud
    whose checkpoint would take over SLOW_SAVE_S to write on SkyPilot's default disk, else none. Best narrows no
    cloud: each takes it as its own best tier."""
    if spec.disk_tier is not None:
        return "best" if spec.disk_tier == "best" else None
    if plan.tier is None or infra_kind(spec) in NO_DISK_TIER_INFRAS:
        return None
    return "best" if disk_need(spec, plan).one / DEFAULT_DISK_GBPS > SLOW_SAVE_S else None


def also_gpus(spec: RunSpec, plan: Plan) -> list[str]:
    """The GPU types -o also_gpus offers SkyPilot beside the plan's (ftctl's names, SkyPilot's too), each checked to
    run the plan as it is: the plan's architecture (its compute capability: the same kernels, bf16 and FlashAttention,
    and the torch build node_stack chooses), at least its memory (the plan fits the smaller card, so the bigger takes
    it), and the same host CPUs (an Arm host's image is another). The trainer runs the plan made for --gpus on
    whichever SkyPilot launches: its batch and memory plan, which fit the bigger card. FtctlError for any other."""
    from ftctl import gpus

    names = [n.strip() for n in (spec.also_gpus or "").split(",") if n.strip()]
    if not names:
        return []
    if plan.tier is None:
        raise FtctlError(
            f"{given_as(spec, 'also_gpus', spec.also_gpus)} with --gpus cpu: a CPU job asks for no GPUs: drop it."
        )
    asked, out, problems = gpus.TIERS[getattr(plan.tier, "name", plan.tier)], [], []
    for name in names:
        try:
            other = gpus.tier(name)
        except FtctlError as e:
            problems.append(str(e))
            continue
        why = (
            f"{other.name} is another architecture (sm{other.cuda_arch.replace('.', '')}) than {asked.name}'s "
            f"(sm{asked.cuda_arch.replace('.', '')})"
            if other.compute_capability != asked.compute_capability
            else f"{other.name} has {other.memory_gb:g} GB, less than the {asked.memory_gb:g} GB the plan fits within"
            if other.memory_gb < asked.memory_gb
            else f"{other.name} sits on another kind of host CPU than {asked.name}"
            if (other.name in ARM_HOSTED) != (asked.name in ARM_HOSTED)
            else None
        )
        if why:
            problems.append(why)
        elif other.name != asked.name and other.name not in out:
            out.append(other.name)
    if problems:
        fits = [
            t.name
            for t in gpus.TIERS.values()
            if t.compute_capability == asked.compute_capability
            and t.memory_gb >= asked.memory_gb
            and t is not asked
            and (t.name in ARM_HOSTED) == (asked.name in ARM_HOSTED)
        ]
        offer = f"here: {', '.join(fits)}" if fits else f"here none but {asked.name}"
        raise FtctlError(
            f"{given_as(spec, 'also_gpus', spec.also_gpus)}: {'; '.join(problems)}. SkyPilot may launch any type "
            "offered, and the plan "
            f"made for --gpus {plan.gpus} runs as it is only on its architecture with at least its memory ({offer}); "
            "to train on another card, plan for it with --gpus."
        )
    return out


def accelerators(spec: RunSpec, plan: Plan) -> str | dict[str, int]:
    """The task's accelerators: the plan's GPUs (A100:8), or with -o also_gpus SkyPilot's set of them ({A100: 8,
    A100-80GB: 8}), of which its optimizer launches the cheapest it finds, failing over to the others."""
    alternatives = also_gpus(spec, plan)
    if not alternatives:
        return f"{plan.tier}:{plan.gpus_per_node}"
    return {name: plan.gpus_per_node for name in [str(plan.tier), *alternatives]}


def on_demand_fallback(spec: RunSpec, plan: Plan) -> bool:
    """-o on_demand_fallback: a --spot job may run on on-demand instances where no spot ones are to be had (spot_any_of);
    FtctlError where there is no spot to fall back from."""
    if spec.on_demand_fallback and not (spec.spot and use_spot(spec, plan)):
        raise FtctlError(
            "-o on_demand_fallback=true falls back from spot instances, and this run asks for none (it needs --spot, "
            "on a GPU plan and an infra with a spot market): drop it; --managed runs on on-demand instances."
        )
    return spec.on_demand_fallback


def spot_resources(spec: RunSpec, plan: Plan) -> dict:
    """A managed job's market: use_spot, or with -o on_demand_fallback SkyPilot's any_of of spot and on-demand. Its
    optimizer launches the cheapest it finds, spot, failing over to on-demand where no region has spot capacity; the
    recovery after a preemption (EAGER_NEXT_REGION) asks again across both, so a job on on-demand instances stays there
    until it ends or its node is lost, and one on spot is relaunched on spot where there is some."""
    if on_demand_fallback(spec, plan):
        return {"any_of": [{"use_spot": True}, {"use_spot": False}]}
    return {"use_spot": use_spot(spec, plan)}


def ignored_options(spec: RunSpec) -> list[str]:
    """What SkyPilot would ignore of what the run sets, each with its fix (docs/backends.md's promise: refused, never
    ignored)."""
    out = []
    if spec.network_tier == "best" and (cloud := _cloud_name(infra_kind(spec) or "")) in NO_NETWORK_TIER_CLOUDS:
        out.append(
            f"-o network_tier=best on {cloud}: SkyPilot 0.14 has no network tiers there, so it would find no instance "
            "to launch: drop it (its nodes talk over their standard network), or choose a cloud with a fast "
            "interconnect (--infra aws, gcp, nebius)."
        )
    if spec.disk_tier == "best" and (kind := infra_kind(spec)) in NO_DISK_TIER_INFRAS:
        out.append(
            f"-o disk_tier=best on --infra {kind}: SkyPilot has no disk tiers there (the nodes' own disks): drop it."
        )
    if spec.spot and (cloud := _cloud_name(infra_kind(spec) or "")) in NO_SPOT_CLOUDS:
        out.append(
            f"--spot on {cloud}: SkyPilot 0.14 has no spot instances there, so it would find none to launch: drop "
            "--spot (its on-demand instances are not preempted; --managed for a managed job on them, recovered after "
            "a lost node), or choose a cloud with spot instances (--infra aws, gcp or azure)."
        )
    if spec.managed_job:
        flag = "--spot" if spec.spot else "--managed"
        why = f"{flag} runs a managed job on clusters SkyPilot launches for it and tears down when it ends"
        if spec.cluster:
            out.append(
                f"{given_as(spec, 'cluster', spec.cluster, '--cluster')}: {why}, never on a named cluster: drop "
                f"{given_as(spec, 'cluster', flag='--cluster')} (-o run_name=NAME names the job), or drop "
                f"{given_as(spec, 'spot' if spec.spot else 'managed', flag=flag)} to run on that cluster."
            )
        if spec.down:
            out.append(f"--down: {why}: drop --down.")
        if spec.gave("idle_minutes"):
            out.append(f"{given_as(spec, 'idle_minutes', spec.idle_minutes)}: {why}: drop it.")
        if spec.resume == "never":
            out.append(
                f"-o resume=never with {flag}: a recovered job runs the same task again, whose resume=never would "
                "refuse the checkpoints the job saved before and fail: use resume=auto, with an --output no other run "
                "wrote to."
            )
        return out
    if spec.gave("max_requeues"):
        out.append(
            f"{given_as(spec, 'max_requeues', spec.max_requeues)} bounds a managed job's restarts after its own "
            "failures: add --spot "
            "or --managed, or drop it (a job on a cluster is not restarted)."
        )
    if spec.gave("idle_minutes") and spec.down:
        out.append(
            f"{given_as(spec, 'idle_minutes', spec.idle_minutes)} with --down: the cluster is torn down when the job "
            "ends: choose one."
        )
    elif spec.gave("idle_minutes") and infra_kind(spec) in NO_AUTOSTOP_INFRAS:
        out.append(
            f"{given_as(spec, 'idle_minutes', spec.idle_minutes)}: SkyPilot 0.14 has no idle autostop on "
            f"{given_as(spec, 'infra', spec.infra, '--infra')}: drop "
            "it, and tear the cluster down with --down or `ftctl down JOB`."
        )
    return out


def autostop_minutes(spec: RunSpec) -> int | None:
    """The idle autostop a launched cluster gets: none with --down, nor where the infra has none."""
    return None if spec.down or infra_kind(spec) in NO_AUTOSTOP_INFRAS else spec.idle_minutes


def use_spot(spec: RunSpec, plan: Plan) -> bool:
    """Whether the task asks for spot instances: --spot's, where there is a market. SkyPilot refuses use_spot on a
    Slurm cluster or an SSH pool and for a CPU job (there --spot is the managed job of --managed); on Kubernetes only
    nodes with a spot label have them, which only SkyPilot can ask."""
    return spec.spot and plan.tier is not None and infra_kind(spec) not in NO_SPOT_INFRAS


def optimizer_resources(spec: RunSpec, plan: Plan) -> dict:
    """The resources section SkyPilot's optimizer prices, as the task asks for them (:func:`render`), of a spec
    SkyBackend.resolve settled (cloud and region folded into infra); a GPU plan's."""
    res: dict = {"accelerators": accelerators(spec, plan), **spot_resources(spec, plan)}
    if memory_request(plan):
        res["memory"] = memory_request(plan)
    res |= tiers(spec, plan)  # network_tier: best narrows the clouds priced
    if spec.infra:
        res["infra"] = spec.infra
    return res


def tiers(spec: RunSpec, plan: Plan) -> dict:
    """The task's disk_tier and network_tier, where it names them."""
    named = {"disk_tier": disk_tier(spec, plan), "network_tier": network_tier(spec, plan)}
    return {key: tier for key, tier in named.items() if tier}


def infra_kind(spec: RunSpec) -> str | None:
    where = spec.infra or spec.cloud
    return where.split("/")[0].strip().lower() if where else None


def docker_image(spec: RunSpec) -> str | None:
    """The docker image --container names (SkyPilot's image_id: docker:IMAGE), None for none; FtctlError for an
    apptainer or pyxis one, pointing at its docker form where it has one (a .sif or squashfs file has none)."""
    kind, image = container_kind(spec)
    if kind in (None, "docker"):
        # SkyPilot writes it into shell lines on the node unquoted (docker pull IMAGE, docker run ... IMAGE)
        return image and check_reference(image, container_as(spec))
    if kind == "apptainer" and image.startswith("docker://"):
        ref = image.removeprefix("docker://")
    elif kind == "pyxis" and not image.startswith(("/", ".")):
        ref = image.replace("#", "/", 1)  # enroot's REGISTRY#IMAGE
    else:
        raise FtctlError(
            f"{container_as(spec, spec.container)}: SkyPilot runs docker images (image_id: docker:REF), and {image} "
            f"is a file a cloud node cannot run: push an image to a registry (ftctl build --push) and give "
            f"{container_as(spec, 'docker:REF')}, or {container_as(spec, 'none')} to install the trainer's stack on "
            "the node."
        )
    raise FtctlError(
        f"{container_as(spec, spec.container)}: SkyPilot runs docker images: give {container_as(spec, f'docker:{ref}')}."
    )


def store_credential(spec: RunSpec) -> str:
    """ "s3's AWS_ACCESS_KEY_ID": the first credential variable a job of the run's output's store gets by name
    (storage.JOB_ENV, less what names a file of this machine: FILE_ENV), for the task header's example; a gs://
    output's said s3's AWS keys (explore63)."""
    kind = scheme(spec.output)
    names = [n for n in JOB_ENV.get(REMOTE_SCHEMES[kind][0], ()) if n not in FILE_ENV] if kind in REMOTE_SCHEMES else []
    return f"{kind}'s {names[0]}" if names else "s3's AWS_ACCESS_KEY_ID"


def sky_command(spec: RunSpec, run_dir: Path, job_name: str) -> str:
    """The SkyPilot CLI line that sends the task as ``ftctl launch`` does through the SDK (SkyBackend.send): the task
    file and ftctl's source as its workdir, both in ``run_dir`` (from the launch's directory where it is under it);
    each --secret by name (its value read from the environment, never written); an idle autostop (-i), or --down, on
    cluster -c, or a managed job named -n ``job_name``; every value quoted for the shell."""
    where = run_dir.resolve()
    with contextlib.suppress(ValueError):  # a run directory outside the launch's: its absolute path
        where = where.relative_to(Path.cwd().resolve())
    argv = ["sky", "jobs", "launch"] if spec.managed_job else ["sky", "launch"]
    argv += [str(where / TASK_FILE), "--workdir", str(where / SOURCE_DIR)]
    for name in spec.secrets:
        argv += ["--secret", name]
    if spec.managed_job:
        argv += ["-n", job_name]
    else:
        argv += ["-c", cluster_name(spec)]
        idle = autostop_minutes(spec)
        argv += ["--down"] if spec.down else ["-i", str(idle)] if idle else []
    return join(argv)


def render(spec: RunSpec, plan: Plan, spec_json: str, job_name: str, inputs: Sequence[Shipped] = ()) -> str:
    """The task YAML of ``spec`` as the nodes read it (:func:`on_node`), shipping ``inputs``; its header says the
    SkyPilot CLI line that sends it as ``ftctl launch`` does (:func:`sky_command`), a managed job named ``job_name``
    (sky_inputs.job_name of the run's spec: ``spec`` here is named after the run's directory, sky_inputs.named)."""
    if plan.tier is None and infra_kind(spec) not in CPU_INFRAS:
        raise FtctlError(
            "--gpus cpu on SkyPilot needs an infra whose nodes take CPU jobs: --infra slurm/CLUSTER or --infra "
            "k8s; on a cloud ask for GPUs, e.g. --gpus 1xL4."
        )
    image = docker_image(spec)
    resources: dict = {}
    if spec.infra:
        resources["infra"] = spec.infra
    if plan.tier is None:
        resources["cpus"] = "1+"
    else:
        resources["accelerators"] = accelerators(spec, plan)
        resources["disk_size"] = spec.disk_size
    resources |= tiers(spec, plan)
    if memory_request(plan):  # an offload plan's host RAM, a CPU plan's processes' memory
        resources["memory"] = memory_request(plan)
    if spec.managed_job:
        # a managed job for its recovery; with --spot, spot instances where there is a market
        resources |= spot_resources(spec, plan)
        # a trainer stopped because its lease's renewals did not reach the store (UNREACHED_EXIT) is recovered as a
        # preemption is: nobody else holds its output, and the recovery resumes (ftctl.lease.LeaseLost)
        resources["job_recovery"] = {
            "strategy": "EAGER_NEXT_REGION",
            "max_restarts_on_errors": spec.max_requeues,
            "recover_on_exit_codes": [UNREACHED_EXIT],
        }
    if image:
        resources["image_id"] = f"docker:{image}"
    spec_path = f"{node_dir(spec)}/spec.json"

    gpu_arg = ["--gpu", plan.tier] if plan.tier else []
    # one node: a rendezvous of the job's own on a free port (launch: two jobs sharing a reused cluster's node met
    # at one port, and the second failed when the first ended); several: the head node's, on a port of the job's own
    # (its SkyPilot job id spread as Slurm's: jobs of a reused cluster may run at once; TASK_NUMBER)
    head = Shell('"$HEAD_ADDR"') if plan.nodes > 1 else None
    port, job = (JOB_PORT, Shell('"$SKYPILOT_TASK_ID"')) if head else (None, None)
    port_lines = [job_port_line(spec, TASK_NUMBER, "a SkyPilot job"), "export RDZV_PORT"] if head else []
    payload = json.dumps(json.loads(spec_json), sort_keys=True, separators=(",", ":"))
    run_lines = [
        "set -euo pipefail",
        WORKDIR_ON_PATH,
        # the setup lines again: SkyPilot runs its setup section as a script of its own, so what they load or
        # activate (module load, a venv) was gone here
        *setup_lines(spec),
        f"mkdir -p {node_dir(spec)}",
        f"cd {node_dir(spec)}  # the trainer's working directory: spec.json names the shipped inputs from here",
        f"cat > {spec_path} <<'{HEREDOC}'",
        payload,
        HEREDOC,
        # the first line, without a pipe: under pipefail `echo | head -n 1` died of SIGPIPE (141) where head had
        # exited before bash's line-buffered echo wrote the second line (seen once in CI, on a loaded machine)
        "HEAD_ADDR=${SKYPILOT_NODE_IPS%%$'\\n'*}",
        *port_lines,
        'echo "ftctl: node $SKYPILOT_NODE_RANK of $SKYPILOT_NUM_NODES, $SKYPILOT_NUM_GPUS_PER_NODE GPUs, head $HEAD_ADDR"',
        f"{NODE_PYTHON_VAR}=$(python3 -m ftctl.sky.node_stack --print-python)  # the python the setup stocked",
        *preflight_shell(spec, plan, head, python=NODE_PYTHON, quiet=True, port=port, job=job),
        join(
            torchrun_argv(spec, plan, Shell(spec_path), head=head, python=NODE_PYTHON, quiet=True, port=port, job=job)
        ),
    ]
    task: dict = {
        "name": run_key(spec),
        "resources": resources,
        "num_nodes": plan.nodes,
        "envs": {k: str(v) for k, v in sorted(trainer_env(spec).items())},
    }
    if spec.secrets:
        task["secrets"] = {name: None for name in spec.secrets}
    if inputs:
        task["file_mounts"] = {s.mount: s.local for s in inputs}
    install = [WORKDIR_ON_PATH, join(["python3", "-m", "ftctl.sky.node_stack", *gpu_arg, *run_requirements(spec)])]
    task["setup"] = _Block("\n".join([*setup_lines(spec), *install]) + "\n")
    task["run"] = _Block("\n".join(run_lines) + "\n")
    header = f"# Rendered by ftctl {__version__}: {plan.method} on {plan.gpus}. Launch: ftctl launch --backend sky\n"
    if note := shipping_note(spec, plan, inputs):
        header += f"# {note}\n"
    header += (
        "# ftctl launch writes this file and ftctl's source (the workdir) to the run directory and sends them through "
        "SkyPilot's SDK, as this line would from the directory ftctl ran in:\n"
        f"#   {sky_command(spec, run_dir_for(spec), job_name)}\n"
        f"# with a --secret NAME more for each object-store credential set there ({store_credential(spec)} ...); a secret "
        "not set there is left out (drop its --secret: sky refuses it).\n"
    )
    if "wandb" in trackers(spec.report_to):
        header += (
            f"# W&B's settings set there ({', '.join(REPORT_SETTINGS['wandb'][:2])} ...) go the same way, a --secret "
            "NAME each: the job inherits nothing of that shell.\n"
        )
    return header + yaml.safe_dump(task, sort_keys=False, width=10**6)
