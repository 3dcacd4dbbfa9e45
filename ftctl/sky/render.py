"""Render a SkyPilot task YAML for a plan.

The YAML is self-contained: the run section writes spec.json from a quoted heredoc, so what
``ftctl render --backend sky`` prints is exactly what ``sky launch`` / ``sky jobs launch`` receives;
``ftctl launch`` adds one thing, the workdir: ftctl's own source, copied into the run directory
(ftctl/sky/backend.py), which SkyPilot syncs to every node and the run section puts first on
PYTHONPATH (no released ftctl is installed from an index). The setup runs ftctl.sky.node_stack on every
node, in the ``--container`` image where there is one: it adds what the python of the node's torchrun lacks of
the trainer's stack (ftctl's ``train`` extra, as pinned by its metadata; nothing in an image ``ftctl build``
made), holding a torch the node has, else installing the torch build for the CUDA version of the node's driver.
Secrets are declared by name under ``secrets:`` (SkyPilot asks for their values at launch, from the
launching environment); their values never appear here. Spot runs become managed jobs with
``job_recovery``; the trainer restores from the output bucket when the job restarts elsewhere.
"""

from __future__ import annotations

import importlib.metadata
import json

import yaml

from ftctl import __version__
from ftctl.errors import FtctlError
from ftctl.launch import Shell, container_kind, join, preflight_shell, torchrun_argv, trainer_env
from ftctl.plan import Plan
from ftctl.sky.cost import memory_request
from ftctl.spec import RunSpec

RUN_DIR = "~/ftctl-run"  # on the nodes: one directory per run name, for its spec.json
HEREDOC = "FTCTL_SPEC_EOF"
REMOTE_WORKDIR = "$HOME/sky_workdir"  # where SkyPilot syncs a task's workdir (~/sky_workdir)
WORKDIR_ON_PATH = (
    f'export PYTHONPATH="{REMOTE_WORKDIR}${{PYTHONPATH:+:$PYTHONPATH}}"  # ftctl\'s source, shipped as the workdir'
)
# Infras whose nodes can run a CPU-only job (`--gpus cpu`); clouds are asked for GPUs.
CPU_INFRAS = ("slurm", "k8s", "kubernetes", "ssh")
# Infras where SkyPilot 0.14 has no idle autostop (Slurm: only for pyxis container clusters).
NO_AUTOSTOP_INFRAS = ("slurm",)


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
    schemes = {p.split("://", 1)[0].lower() for p in (*spec.data_paths, spec.output) if "://" in p}
    extras |= {"gcs" for s in schemes if s in ("gs", "gcs")} | {
        "azure" for s in schemes if s in ("az", "abfs", "abfss")
    }
    reqs = importlib.metadata.requires("ftctl") or []
    wanted = {f'extra == "{e}"' for e in extras}
    return sorted({r.split(";")[0].strip() for r in reqs if any(w in r for w in wanted)})


def autostop_minutes(spec: RunSpec) -> int | None:
    """The idle autostop a launched cluster gets: none with --down, nor where the infra has none."""
    return None if spec.down or infra_kind(spec) in NO_AUTOSTOP_INFRAS else spec.idle_minutes


def infra_kind(spec: RunSpec) -> str | None:
    where = spec.infra or spec.cloud
    return where.split("/")[0].strip().lower() if where else None


def render(spec: RunSpec, plan: Plan, spec_json: str) -> str:
    if plan.tier is None and infra_kind(spec) not in CPU_INFRAS:
        raise FtctlError(
            "--gpus cpu on SkyPilot needs an infra whose nodes take CPU jobs: --infra slurm/CLUSTER or --infra "
            "k8s; on a cloud ask for GPUs, e.g. --gpus 1xL4."
        )
    kind, image = container_kind(spec)
    if kind not in (None, "docker"):
        raise FtctlError(f"--container {spec.container!r}: SkyPilot runs docker images: use docker:{image}.")
    resources: dict = {}
    if spec.infra:
        resources["infra"] = spec.infra
    if plan.tier is None:
        resources["cpus"] = "1+"
    else:
        resources["accelerators"] = f"{plan.tier}:{plan.gpus_per_node}"
        resources["disk_size"] = spec.disk_size
        if memory_request(plan):  # an offload plan (plan.offload_host_gb)
            resources["memory"] = memory_request(plan)
    if spec.spot:
        resources["use_spot"] = plan.tier is not None  # a Slurm/k8s CPU job has no spot market
        resources["job_recovery"] = {"strategy": "EAGER_NEXT_REGION", "max_restarts_on_errors": spec.max_requeues}
    if spec.cloud:
        resources["cloud"] = spec.cloud
    if spec.region:
        resources["region"] = spec.region
    if image:
        resources["image_id"] = f"docker:{image}"
    spec_path = f"{RUN_DIR}/{spec.name}/spec.json"

    gpu_arg = ["--gpu", plan.tier] if plan.tier else []
    payload = json.dumps(json.loads(spec_json), sort_keys=True, separators=(",", ":"))
    run_lines = [
        "set -euo pipefail",
        WORKDIR_ON_PATH,
        f"mkdir -p {RUN_DIR}/{spec.name}",
        f"cat > {spec_path} <<'{HEREDOC}'",
        payload,
        HEREDOC,
        'HEAD_ADDR=$(echo "$SKYPILOT_NODE_IPS" | head -n 1)',
        'echo "ftctl: node $SKYPILOT_NODE_RANK of $SKYPILOT_NUM_NODES, $SKYPILOT_NUM_GPUS_PER_NODE GPUs, head $HEAD_ADDR"',
        *preflight_shell(spec, plan, Shell('"$HEAD_ADDR"')),
        join(torchrun_argv(spec, plan, Shell(spec_path), head=Shell('"$HEAD_ADDR"'))),
    ]
    task: dict = {
        "name": spec.name,
        "resources": resources,
        "num_nodes": plan.nodes,
        "envs": {k: str(v) for k, v in sorted(trainer_env(spec).items())},
    }
    if spec.secrets:
        task["secrets"] = {name: None for name in spec.secrets}
    install = [WORKDIR_ON_PATH, join(["python3", "-m", "ftctl.sky.node_stack", *gpu_arg, *run_requirements(spec)])]
    task["setup"] = _Block("\n".join([*spec.setup, *install]) + "\n")
    task["run"] = _Block("\n".join(run_lines) + "\n")
    header = f"# Rendered by ftctl {__version__}: {plan.method} on {plan.gpus}. Launch: ftctl launch --backend sky\n"
    return header + yaml.safe_dump(task, sort_keys=False, width=10**6)
