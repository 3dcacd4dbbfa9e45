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

Where it runs its containers (remote()): this machine, or another one its CLI reaches (Docker's DOCKER_HOST or
context, podman's CONTAINER_HOST, CONTAINER_CONNECTION or default connection in remote mode: ssh://, tcp://). There a
container's ``-v PATH:PATH`` mounts that machine's PATH, and its GPUs, driver and CDI spec are that machine's: what
docker.backend checks of this one does not hold. A unix socket, a loopback address and a podman machine's VM (it
mounts this home) count as this machine. A run on another machine is shipped (ships()): copied into its container
(``docker cp``), nothing of this machine mounted, unless the user says that machine sees this one's paths at the same
place (FTCTL_DOCKER_SAME_PATHS=1: a shared filesystem), where it is mounted as here.
"""

from __future__ import annotations

import functools
import glob
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
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
    said = _podman_cli(exe)
    if said is None:
        return "docker"
    if said:
        return "podman"
    version = _podman_server(exe, _host, _context)
    if version is None:
        return "docker"
    return "podman" if _version(version) >= PODMAN_API_CDI else "podman-api"


@functools.cache
def _podman_cli(exe: str) -> bool | None:
    """Whether ``exe`` is podman's CLI (named so, or a ``docker`` whose --version says "podman version"); None: it
    does not answer --version."""
    if Path(exe).name.startswith("podman"):
        return True
    said = _ask([exe, "--version"])
    return None if said is None else said.lower().startswith("podman")


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


@dataclass(frozen=True)
class Info:
    """What the engine says of how it runs containers, which the run's ``docker run`` follows (docker.render):
    ``docker info``'s SecurityOptions (names "rootless", "selinux") and LoggingDriver, ``podman info``'s
    Host.Security (Rootless, SELinuxEnabled) and Host.LogDriver. The default is docker's own (rootful, no SELinux
    labels, the json-file log driver): a dry run without an engine renders its command."""

    # containers in the launching user's user namespace (docker's rootless mode, podman run by a user other than
    # root): their uid 0 is that user and their other uids its subordinate ones, which cannot write what the user
    # owns (a container of ``--user UID:GID`` was refused its own run dir: Permission denied), and no limit can be
    # raised past the user's hard one (``--ulimit memlock=-1``: "error setting rlimit type 8: operation not
    # permitted")
    rootless: bool = False
    # the engine labels its containers for SELinux (docker's daemon with --selinux-enabled: Fedora's, RHEL's;
    # podman on an SELinux host), so their processes may not read the user's files of another label
    selinux: bool = False
    log_driver: str = "json-file"  # where the container's output goes: json-file, local, journald, k8s-file ...


def info(exe: str | None = None) -> Info:
    """What the engine ``exe`` (default: command()'s) says (Info); Info() where none answers."""
    found = shutil.which(exe or command())
    if not found:
        return Info()
    return _info(found, tuple(os.environ.get(v, "") for v in ENDPOINT_ENV))


@functools.cache  # asked once a launch (render, and a shipped run's commands), and by doctor
def _info(exe: str, _env: tuple[str, ...]) -> Info:
    try:
        said = json.loads(_ask([exe, "info", "--format", "json" if _podman_cli(exe) else "{{json .}}"]) or "{}")
    except ValueError:
        return Info()
    said = said if isinstance(said, dict) else {}
    if _podman_cli(exe):  # podman's own keys
        host = said.get("host") if isinstance(said.get("host"), dict) else {}
        security = host.get("security") if isinstance(host.get("security"), dict) else {}
        driver = str(host.get("logDriver") or "")
        return Info(security.get("rootless") is True, security.get("selinuxEnabled") is True, driver)
    options = said.get("SecurityOptions")
    names = {o.split(",")[0] for o in options if isinstance(o, str)} if isinstance(options, list) else set()
    return Info("name=rootless" in names, "name=selinux" in names, str(said.get("LoggingDriver") or "json-file"))


# where podman finds the init its --init runs (catatonit): containers.conf's helper_binaries_dir, its default; an
# init_path set in a containers.conf names another
PODMAN_HELPER_DIRS = ("/usr/local/libexec/podman", "/usr/local/lib/podman", "/usr/libexec/podman", "/usr/lib/podman")
CONTAINERS_CONFS = ("/etc/containers/containers.conf", "/usr/share/containers/containers.conf")


def podman_init_found() -> bool:
    """Whether podman, running containers on this machine, has the init a run's ``--init`` asks for (catatonit, a
    package of its own on Debian and Ubuntu, only recommended by podman's: without it `podman run --init` fails,
    "container-init binary not found"). True where a containers.conf (its drop-ins, $CONTAINERS_CONF) names one
    (init_path) or catatonit is on PATH."""
    if any(os.path.isfile(os.path.join(d, "catatonit")) for d in PODMAN_HELPER_DIRS) or shutil.which("catatonit"):
        return True
    user_conf = os.path.join(os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config"), "containers")
    confs = [*CONTAINERS_CONFS, os.path.join(user_conf, "containers.conf"), os.environ.get("CONTAINERS_CONF", "")]
    for folder in (*(f"{c}.d" for c in CONTAINERS_CONFS), os.path.join(user_conf, "containers.conf.d")):
        confs += sorted(glob.glob(os.path.join(folder, "*.conf")))  # drop-ins
    for conf in filter(None, confs):
        try:
            with open(conf) as f:
                if any(line.strip().startswith("init_path") for line in f):
                    return True
        except OSError:
            continue
    return False


def rootless(exe: str | None = None) -> bool:
    """Whether the engine ``exe`` (default: command()'s) runs its containers rootless (Info.rootless); False where
    none answers (a dry run without an engine renders a rootful one's command)."""
    return info(exe).rootless


SAME_PATHS_ENV = "FTCTL_DOCKER_SAME_PATHS"  # 1: a remote engine's machine sees this one's paths at the same place
ENDPOINT_ENV = ("DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_CONFIG", "CONTAINER_HOST", "CONTAINER_CONNECTION")
LOOPBACK = ("localhost", "127.0.0.1", "::1")


def same_paths() -> bool:
    """$FTCTL_DOCKER_SAME_PATHS=1: the user says the remote engine's machine sees this machine's paths at the same
    place (a shared filesystem), so the run's mounts hold there."""
    value = os.environ.get(SAME_PATHS_ENV, "").strip().lower()
    if value not in ("", "0", "false", "no", "1", "true", "yes"):  # `maybe` read as no, and the launch refused
        raise FtctlError(
            f"{SAME_PATHS_ENV}={os.environ[SAME_PATHS_ENV]}: set it to 1 where the engine's machine sees this one's "
            "paths at the same place (a shared filesystem), 0 or unset where it does not."
        )
    return value in ("1", "true", "yes")


def ships(exe: str | None = None) -> str | None:
    """Where the engine ``exe`` (default: command()'s) runs its containers where a run is shipped there, not mounted
    (remote(), without same_paths()); None: its containers mount this machine's paths."""
    where = remote(exe)
    return where if where and not same_paths() else None


def endpoint_env() -> dict[str, str]:
    """The variables of ENDPOINT_ENV set here: which engine a launch's CLI reaches, recorded with its job so that its
    status, logs and cancel reach the same one from a shell without them (or with others)."""
    return {v: os.environ[v] for v in ENDPOINT_ENV if os.environ.get(v)}


def remote(exe: str | None = None) -> str | None:
    """Where the engine ``exe`` (default: command()'s) runs its containers where that is another machine, as the
    user set it: "DOCKER_HOST=ssh://gpu", "docker context gpu (tcp://10.0.0.5:2376)", "CONTAINER_HOST=ssh://...",
    "podman connection gpu (ssh://...)"; None: this machine (see the module's text), or the CLI does not say (none
    installed: a dry run)."""
    found = shutil.which(exe or command())
    if not found:
        return None
    return _remote(found, tuple(os.environ.get(v, "") for v in ENDPOINT_ENV))


@functools.cache  # asked by the launch's image choice, preflight and check: once (a CLI call of ~50 ms)
def _remote(exe: str, _env: tuple[str, ...]) -> str | None:
    where, uri = _podman_endpoint(exe) if _podman_cli(exe) else _docker_endpoint(exe)
    if not uri or this_machine(uri):
        return None
    return where if where.endswith(uri) else f"{where} ({uri})"


def this_machine(uri: str) -> bool:
    """Whether the engine at ``uri`` runs on this machine: a unix socket (or a Windows pipe), a loopback address."""
    from urllib.parse import urlsplit

    scheme, sep, _ = uri.partition("://")
    if not sep or scheme in ("unix", "npipe", "fd"):
        return True
    try:
        return urlsplit(uri).hostname in LOOPBACK
    except ValueError:
        return False


def _docker_endpoint(exe: str) -> tuple[str, str]:
    """(how it is set, the URI) of the engine Docker's CLI ``exe`` talks to: DOCKER_HOST, else its context's."""
    host = os.environ.get("DOCKER_HOST", "").strip()
    try:
        context = json.loads(_ask([exe, "context", "inspect", "--format", "{{json .}}"]) or "null")
        name, uri = context["Name"], context["Endpoints"]["docker"]["Host"]
    except (ValueError, TypeError, KeyError):  # no contexts (an old CLI, podman-docker's): DOCKER_HOST alone
        return f"DOCKER_HOST={host}", host
    return (f"DOCKER_HOST={host}", host) if host else (f"docker context {name}", str(uri or ""))


def _podman_endpoint(exe: str) -> tuple[str, str]:
    """(how it is set, the URI) of the service podman's CLI ``exe`` talks to in remote mode; ('', '') where it runs
    containers itself (or on a podman machine: a VM of this machine, which mounts its home)."""
    if host := os.environ.get("CONTAINER_HOST", "").strip():
        return f"CONTAINER_HOST={host}", host
    try:
        listed = json.loads(_ask([exe, "system", "connection", "list", "--format", "json"]) or "[]")
    except ValueError:
        listed = []
    connections = [c for c in listed if isinstance(c, dict)] if isinstance(listed, list) else []
    if name := os.environ.get("CONTAINER_CONNECTION", "").strip():
        found = next((c for c in connections if c.get("Name") == name), {})
        return ("", "") if found.get("IsMachine") else (f"CONTAINER_CONNECTION={name}", str(found.get("URI") or ""))
    default = next((c for c in connections if c.get("Default") and not c.get("IsMachine")), None)
    # a default connection is used only in remote mode (podman-remote, containers.conf's remote = true): it says
    if default and _ask([exe, "info", "--format", "{{.Host.ServiceIsRemote}}"]) == "true":
        return f"podman connection {default.get('Name')}", str(default.get("URI") or "")
    return "", ""
