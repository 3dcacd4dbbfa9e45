"""The one launch line every backend runs on every node, and shell quoting.

    torchrun --nnodes N --nproc-per-node G --rdzv-backend c10d --rdzv-endpoint HEAD:PORT \\
             --rdzv-id RUN -m ftctl.trainer --spec SPEC

The c10d rendezvous assigns node ranks, so the line is the same on every node.

User values are always quoted with ``shlex.quote``; intentional shell (``"$HEAD_ADDR"``) is marked
``Shell`` and passes through untouched, so no value a user typed is ever interpolated by hand.
"""

from __future__ import annotations

import shlex

from ftctl.envvars import STATUS_ENV, STOP_ENV  # noqa: F401  (re-exported for the renderers)
from ftctl.plan import Plan
from ftctl.spec import RunSpec


class Shell(str):
    """Text meant for the shell as written: a variable, a substitution. Never user input."""


def q(value) -> str:
    """Quote for a POSIX shell unless it is marked Shell."""
    return str(value) if isinstance(value, Shell) else shlex.quote(str(value))


def join(argv) -> str:
    return " ".join(q(a) for a in argv)


def nproc_per_node(plan: Plan) -> int:
    return plan.gpus_per_node if plan.tier else 1


def torchrun_argv(spec: RunSpec, plan: Plan, spec_path, head, python: str | None = None) -> list:
    """The launch line. ``head`` is usually a Shell variable of the backend."""
    torchrun = [python, "-m", "torch.distributed.run"] if python else ["torchrun"]
    return [
        *torchrun,
        "--nnodes",
        str(plan.nodes),
        "--nproc-per-node",
        str(nproc_per_node(plan)),
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        Shell(f"{q(head)}:{spec.rdzv_port}") if isinstance(head, Shell) else f"{head}:{spec.rdzv_port}",
        "--rdzv-id",
        spec.name,
        "-m",
        "ftctl.trainer",
        "--spec",
        spec_path,
    ]


def trainer_env(spec: RunSpec, plan: Plan) -> dict[str, str]:
    """Plain environment the trainer needs on every node (never secrets: those pass by name)."""
    env = {"OMP_NUM_THREADS": "1" if plan.tier else "2", "TOKENIZERS_PARALLELISM": "false"}
    if spec.socket_ifname:
        env["NCCL_SOCKET_IFNAME"] = spec.socket_ifname
        env["GLOO_SOCKET_IFNAME"] = spec.socket_ifname
    if spec.s3_endpoint_url:
        env["AWS_ENDPOINT_URL"] = spec.s3_endpoint_url
    env.update(spec.env)
    return env


def container_kind(spec: RunSpec) -> tuple[str | None, str | None]:
    """('docker'|'apptainer'|'pyxis'|None, image); ``none`` (or empty) is no container."""
    if not spec.container or spec.container.strip().lower() == "none":
        return None, None
    kind, _, image = spec.container.partition(":")
    if kind in ("docker", "apptainer", "pyxis") and image:
        return kind, image
    return "docker", spec.container
