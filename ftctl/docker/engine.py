"""What the ``docker`` command on PATH is: Docker's, or podman's (podman-docker's ``docker``, or a link to podman).

They take the same verbs, with these differences for ftctl (podman 4.3 and 5): a container gets GPUs through NVIDIA's
CDI devices (``--device nvidia.com/gpu=0``; podman 4 takes --gpus and ignores it, podman 5 reads ``--gpus 2`` as the
GPU named 2): docker.render, docker.backend; and ``buildx build`` is podman's own build (buildah), which writes an OCI
image unless told ``--format docker`` (and ignores the Dockerfile's SHELL then), has no ``--push`` (podman push
after it), and podman has no ``buildx version`` nor ``info``'s ServerVersion: docker.build.
"""

from __future__ import annotations

import functools
import shutil
import subprocess


@functools.cache
def _engine_of(docker: str) -> str:
    """What the ``docker`` command at ``docker`` is: "podman" where ``docker --version`` says "podman version 4.3.1",
    else "docker"."""
    try:
        said = subprocess.run([docker, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "docker"
    return "podman" if said.lower().startswith("podman") else "docker"


def engine() -> str:
    """ "podman" or "docker" (also where there is none: a dry run renders docker's command)."""
    docker = shutil.which("docker")
    return _engine_of(docker) if docker else "docker"
