"""Render the ``docker run`` command for a plan on this docker host (one node)."""

from __future__ import annotations

import os

from ftctl.docker.image import default_image
from ftctl.errors import FtctlError
from ftctl.launch import container_kind, join, torchrun_argv, trainer_env
from ftctl.plan import Plan
from ftctl.spec import RunSpec
from ftctl.storage import is_remote

CONTAINER_RUN_DIR = "/ftctl/run"


def argv(spec: RunSpec, plan: Plan, run_dir: str) -> list[str]:
    if plan.nodes > 1:
        raise FtctlError("The docker backend runs on one host: use --backend slurm or sky for several nodes.")
    kind, image = container_kind(spec)
    if kind not in (None, "docker"):
        raise FtctlError(f"--container {spec.container!r}: the docker backend runs docker images (docker:IMAGE).")
    image = image or default_image(plan.tier)
    run_dir = os.path.abspath(run_dir)
    cmd = [
        "docker",
        "run",
        "--detach",
        "--name",
        spec.name,
        "--ipc=host",
        "--network=host",
        "--ulimit",
        "memlock=-1",
        "--ulimit",
        "stack=67108864",
    ]
    if plan.tier:
        cmd += ["--gpus", "all" if plan.gpus_per_node > 1 else "1"]
    cmd += ["-v", f"{_bindable(run_dir)}:{CONTAINER_RUN_DIR}"]
    # the output directory is mounted even before it exists (launch creates it): checkpoints written
    # inside the container must land on the host
    for path in (*spec.data_paths, spec.output, spec.model_name_or_path, spec.chat_template_path or ""):
        if not is_remote(path) and (os.path.exists(path) or path == spec.output):
            p = _bindable(os.path.abspath(path))
            cmd += ["-v", f"{p}:{p}"]
    for k, v in sorted(trainer_env(spec).items()):
        cmd += ["-e", f"{k}={v}"]
    for name in spec.secrets:
        cmd += ["-e", name]  # value passed from this environment by docker, never written
    cmd += ["-w", CONTAINER_RUN_DIR, image]
    cmd += torchrun_argv(spec, plan, f"{CONTAINER_RUN_DIR}/spec.json", head="127.0.0.1")
    return cmd


def _bindable(path: str) -> str:
    if ":" in path:
        raise FtctlError(
            f"{path!r}: docker reads ':' in a volume as a separator, so this path cannot be mounted. "
            f"Rename it, or move it under a path without ':'."
        )
    return path


def render(spec: RunSpec, plan: Plan, run_dir: str) -> str:
    return join(argv(spec, plan, run_dir)) + "\n"
