"""Which container engine the docker backend runs, and what kind it is: the one owner of the engine's command name.

The command (command()): ``$FTCTL_DOCKER`` where set (``podman``, ``docker`` or a path: a host with both, or a docker
whose daemon this user may not reach), else ``docker`` where it is on PATH, else ``podman`` (Fedora, RHEL and many
workstations have podman and no ``docker`` command). Every command ftctl renders or runs, and every message naming
one, uses it; a launched job records it (``JobRef.extra["engine"]``), so its status, logs and cancel ask the same one.

Its kind (kind()): "podman" where it is podman (named so, or a ``docker`` whose ``--version`` says "podman version":
podman-docker's, or a link); "docker" otherwise; "podman-api" where Docker's CLI talks to podman's docker-compatible
API (DOCKER_HOST=unix:///run/podman/podman.sock: ``docker version``'s server is "Podman Engine") before podman 5.5.
They take the same verbs, with these differences for ftctl (podman 4.3 and 5): a container gets GPUs through NVIDIA's
CDI devices (``--device nvidia.com/gpu=0``; podman 4 takes --gpus and ignores it, podman 5 reads ``--gpus 2`` as the
GPU named 2): docker.render, docker.backend; podman's API drops every GPU request before 5.5 (--gpus and the CDI
device requests Docker's CLI sends for ``--device nvidia.com/gpu=0``, measured with podman 4.3.1 and Docker's CLI
28.2; 5.5 takes the CDI ones: containers/podman 18e29076f7), so a GPU run there is refused; and ``buildx build`` is
podman's own build (buildah), which writes an OCI image unless told ``--format docker`` (and ignores the Dockerfile's
SHELL then), has no ``--push`` (podman push after it), and podman has no ``buildx version`` nor ``info``'s
ServerVersion: docker.build.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
from pathlib import Path

from ftctl.errors import FtctlError

ENV = "FTCTL_DOCKER"  # the engine's command: podman, docker or a path
PODMAN_API_CDI = (5, 5)  # the first podman whose docker-compatible API gives a container CDI devices


def chosen() -> str:
    """$FTCTL_DOCKER as set ('' where it is not)."""
    return os.environ.get(ENV, "").strip()


def command() -> str:
    """The engine's command as ftctl writes it: $FTCTL_DOCKER, else docker where it is on PATH, else podman where it
    is, else "docker" (none: a dry run renders docker's command)."""
    if chosen():
        return chosen()
    if shutil.which("docker") or not shutil.which("podman"):
        return "docker"
    return "podman"


def path(cmd: str | None = None) -> str:
    """The executable of command(), or of ``cmd`` (the one a job was launched with); FtctlError saying how to get
    one."""
    cmd = cmd or command()
    found = shutil.which(cmd)
    if found:
        return found
    if cmd != "docker" or chosen():
        where = f"{ENV}={chosen()}" if chosen() else cmd
        raise FtctlError(f"{where}: no such command here: set {ENV} to podman, docker or the path of either.")
    raise FtctlError(
        "neither docker nor podman is installed here: install Docker Engine or podman, or use --backend local."
    )


def why() -> str:
    """Why the engine is command(), for `ftctl doctor`: '' for docker found on PATH."""
    if chosen():
        return f"{ENV}={chosen()}"
    return "no docker command here" if command() == "podman" else ""


def kind(exe: str | None = None) -> str:
    """ "podman", "docker" or "podman-api" (see the module's text) for the engine ``exe`` (default: command()'s);
    "docker" where none is installed (a dry run renders docker's command)."""
    found = shutil.which(exe or command())
    if not found:
        return "docker"
    return _kind_of(found, os.environ.get("DOCKER_HOST", ""), os.environ.get("DOCKER_CONTEXT", ""))


def engine() -> str:
    """kind() of the engine ftctl runs (the name docker.build and older callers ask by)."""
    return kind()


@functools.cache
def _kind_of(exe: str, _host: str, _context: str) -> str:
    if Path(exe).name.startswith("podman"):
        return "podman"
    said = _ask([exe, "--version"])
    if said is None:
        return "docker"
    if said.lower().startswith("podman"):
        return "podman"
    version = _podman_server(exe, _host, _context)
    if version is None:
        return "docker"
    return "podman" if _version(version) >= PODMAN_API_CDI else "podman-api"


def podman_server(exe: str) -> str | None:
    """The version of the podman whose docker-compatible API Docker's CLI ``exe`` talks to; None: a docker daemon's
    (or none answers)."""
    return _podman_server(exe, os.environ.get("DOCKER_HOST", ""), os.environ.get("DOCKER_CONTEXT", ""))


@functools.cache  # podman's API takes ~0.7 s to say its version
def _podman_server(exe: str, _host: str, _context: str) -> str | None:
    said = _ask([exe, "version", "--format", "{{json .Server.Components}}"])
    try:
        components = json.loads(said or "null")
    except ValueError:
        return None
    if not isinstance(components, list):
        return None
    found = [c for c in components if isinstance(c, dict) and c.get("Name") == "Podman Engine"]
    return str(found[0].get("Version") or "?") if found else None


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for part in text.split(".")[:2]:
        digits = "".join(c for c in part if c.isdigit()) if part[:1].isdigit() else ""
        parts.append(int(digits or 0))
    return tuple(parts)


def _ask(argv: list[str]) -> str | None:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None
