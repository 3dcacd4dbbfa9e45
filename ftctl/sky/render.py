"""Render a SkyPilot task YAML for a plan.

The YAML is self-contained: the run section writes spec.json from a quoted heredoc, so what
``ftctl render --backend sky`` prints is exactly what ``sky launch`` / ``sky jobs launch`` receives.
Secrets are declared by name under ``secrets:`` (SkyPilot asks for their values at launch, from the
launching environment); their values never appear here. Spot runs become managed jobs with
``job_recovery``; the trainer restores from the output bucket when the job restarts elsewhere.
"""

from __future__ import annotations

import json

import yaml

from ftctl import __version__
from ftctl.errors import FtctlError
from ftctl.launch import Shell, container_kind, join, torchrun_argv, trainer_env
from ftctl.plan import Plan
from ftctl.spec import RunSpec

SPEC_PATH = "~/ftctl-run/spec.json"
HEREDOC = "FTCTL_SPEC_EOF"
# What a VM without our image installs: the trainer's stack, pinned by ftctl's own extras.
PIP_SETUP = f"pip install 'ftctl[train]=={__version__}'"


class _Block(str):
    """A multi-line string written as a YAML literal block."""


yaml.SafeDumper.add_representer(_Block, lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", str(s), style="|"))


def render(spec: RunSpec, plan: Plan, spec_json: str) -> str:
    if plan.tier is None:
        raise FtctlError("--gpus cpu is for Slurm and local runs; on a cloud ask for GPUs, e.g. --gpus 1xL4.")
    kind, image = container_kind(spec)
    if kind not in (None, "docker"):
        raise FtctlError(f"--container {spec.container!r}: SkyPilot runs docker images: use docker:{image}.")
    resources: dict = {
        "accelerators": f"{plan.tier}:{plan.gpus_per_node}",
        "disk_size": spec.disk_size,
    }
    if spec.spot:
        resources["use_spot"] = True
        resources["job_recovery"] = {"strategy": "EAGER_NEXT_REGION", "max_restarts_on_errors": spec.max_requeues}
    if spec.cloud:
        resources["cloud"] = spec.cloud
    if spec.region:
        resources["region"] = spec.region
    if image:
        resources["image_id"] = f"docker:{image}"

    payload = json.dumps(json.loads(spec_json), sort_keys=True, separators=(",", ":"))
    run_lines = [
        "set -euo pipefail",
        "mkdir -p ~/ftctl-run",
        f"cat > {SPEC_PATH} <<'{HEREDOC}'",
        payload,
        HEREDOC,
        'HEAD_ADDR=$(echo "$SKYPILOT_NODE_IPS" | head -n 1)',
        'echo "ftctl: node $SKYPILOT_NODE_RANK of $SKYPILOT_NUM_NODES, $SKYPILOT_NUM_GPUS_PER_NODE GPUs, head $HEAD_ADDR"',
        join(torchrun_argv(spec, plan, Shell(SPEC_PATH), head=Shell('"$HEAD_ADDR"'))),
    ]
    task: dict = {
        "name": spec.name,
        "resources": resources,
        "num_nodes": plan.nodes,
        "envs": {k: str(v) for k, v in sorted(trainer_env(spec, plan).items())},
    }
    if spec.secrets:
        task["secrets"] = {name: None for name in spec.secrets}
    task["setup"] = (
        _Block("\n".join([*([] if image else [PIP_SETUP]), *spec.setup]) + "\n") if (not image or spec.setup) else None
    )
    if task["setup"] is None:
        del task["setup"]
    task["run"] = _Block("\n".join(run_lines) + "\n")
    header = f"# Rendered by ftctl {__version__}: {plan.method} on {plan.gpus}. Launch: ftctl launch --backend sky\n"
    return header + yaml.safe_dump(task, sort_keys=False, width=10**6)
