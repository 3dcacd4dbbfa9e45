"""``ftctl build``: the ``docker buildx build`` (and ``apptainer build``) commands for the image.

``commands(...)`` composes them; ``--dry-run`` prints them and ``build(...)`` runs exactly those.
The build context is the source tree's root when ftctl runs from one; installed from a wheel, the
package's own copy of docker/ and its source are staged into a context folder of the same layout.

Every command is the engine's (docker.engine's command(): docker, or podman where there is no docker). Where that is
podman (itself, or podman-docker's ``docker``), its ``buildx build`` is podman's own (buildah): it takes
ftctl's Dockerfile as it is (RUN --mount=type=cache and bind mounts from a stage, COPY --chmod, the
Dockerfile.dockerignore beside it), but writes the Dockerfile's SHELL (bash, pipefail) only into a docker-format
image (``--format docker``; the OCI default ignores it and runs each RUN under /bin/sh), has no ``--push``
(``podman push`` after the build) and reads no ``docker-daemon://`` for apptainer.

A build that succeeds is recorded in the user's config (ftctl/userconfig.py), so later runs use it
without --container: a pushed image for sky, slurm and docker; a local one (not pushed) for docker
only, since no cloud VM or cluster node can pull it; the .sif of --apptainer for Slurm. --dry-run
records nothing.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path

import click

from ftctl import __version__, userconfig
from ftctl.docker import image
from ftctl.docker.engine import command, engine
from ftctl.errors import FtctlError
from ftctl.launch import join
from ftctl.secret_checks import holds_credential, looks_like_token


@dataclass(frozen=True)
class BuildPlan:
    image: str
    context: Path
    docker: list[str]
    apptainer: list[str] | None = None
    push: list[str] | None = None  # podman's: it pushes after the build (docker's buildx build --push)
    sif: Path | None = None
    gpus: str = ""  # the tiers built for, as recorded: A100,H100
    pushed: bool = False
    cuda: str = ""  # the flavour, as recorded: torch's build (cu130)
    note: str = ""  # said before the build starts (and by --dry-run): an Arm image on an x86 machine

    def steps(self) -> list[list[str]]:
        """The commands build() runs, in order: the image, then its .sif built beside it and moved into place once
        whole (a failed build leaves the tag's earlier .sif as it was)."""
        built = [self.docker, *([self.push] if self.push else [])]
        if not self.apptainer:
            return built
        return [*built, self.apptainer, ["mv", "-f", str(partial(self.sif)), str(self.sif)]]

    def text(self) -> str:
        return "".join(join(argv) + "\n" for argv in self.steps())


def source_root() -> Path | None:
    """The source tree ftctl runs from (a checkout or an editable install), or None."""
    root = Path(image.__file__).resolve().parents[2]
    pyproject = root / "pyproject.toml"
    if (root / "docker" / "Dockerfile").is_file() and pyproject.is_file() and 'name = "ftctl"' in pyproject.read_text():
        return root
    return None


def staged_context() -> Path:
    """An installed ftctl's files laid out as the source tree the Dockerfile expects."""
    files = image.files_dir()
    if not (files / "Dockerfile").is_file():
        raise FtctlError(f"{files} holds no Dockerfile: this ftctl install is incomplete; reinstall it.")
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    ctx = base / "ftctl" / "image-context" / __version__
    shutil.rmtree(ctx, ignore_errors=True)
    (ctx / "docker").mkdir(parents=True)
    for name in ("Dockerfile", "Dockerfile.dockerignore", "build-flash-attn.sh"):
        shutil.copy2(files / name, ctx / "docker" / name)
    for name in ("constraints.txt", "pyproject.toml", "README.md"):
        shutil.copy2(files / name, ctx / name)
    pkg = Path(image.__file__).resolve().parents[1]
    shutil.copytree(pkg, ctx / "ftctl", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return ctx


# a registry given with a user (and password) before its host, a scheme or none: user:PASS@ghcr.io/org, me@ghcr.io/org
# a user and password before the host: up to the last '@' (a password may hold '@' and '/'), not a digest's
_REGISTRY_USERINFO = re.compile(r"(?:[A-Za-z][A-Za-z0-9+.-]*://)?(?P<user>.*)@(?!sha256:)(?P<host>[^/@]*)")


def push_credentials(push: str) -> str | None:
    """The one line that refuses ``--push`` holding a user before the registry's host: with a password
    (``user:PASS@ghcr.io/org``, with or without https://) or a token as the user, without repeating them; a user
    alone (``me@ghcr.io/org``) is no credential, and is said as what it is: an image reference takes no user (docker
    and podman refuse ``me@ghcr.io/org/ftctl:TAG``, "invalid reference format": '@' starts a digest there), the user
    goes to ``docker login -u``. None where it holds none. A registry takes its credential from `docker login`,
    which keeps it in the engine's credential store, never from the image's path: check_registry's refusal repeated
    the value, password and all."""
    m = _REGISTRY_USERINFO.match(push.strip())
    if not m:
        return None
    # a token as the user, with no scheme (dckr_pat_...@docker.io/me, a registry's 32 hex digits or robot token):
    # holds_credential sees a user alone as a token only after a scheme (https://TOKEN@host)
    user = m["user"]
    credential = holds_credential(push.strip()) or looks_like_token(user)
    if ":" not in user and not credential and "/" in user:  # no user: check_registry says what the value is not
        return None
    host = m["host"] if re.fullmatch(r"[A-Za-z0-9.-]+(?::[0-9]+)?", m["host"]) else "HOST"
    bare = m["host"] + push.strip()[m.end() :]
    try:  # the registry without them, where it is one (and holds no other credential)
        bare = image.check_registry(bare) if not holds_credential(bare) else f"{host}/NAMESPACE"
    except FtctlError:
        bare = f"{host}/NAMESPACE"
    if ":" not in user and not credential:  # a registry user, no password: nothing secret in it
        who = shlex.quote(user)
        return (
            f"--push {push.strip()!r}: an image's path takes no user (docker and podman refuse USER@HOST/... as an "
            f"invalid reference format: '@' starts a digest there). Log in once as that user with `docker login -u "
            f"{who} {host}` (podman: `podman login -u {who} {host}`), which keeps the login in the engine's "
            f"credential store, then give --push {bare}."
        )
    what = "a user and password" if ":" in user else "a token as its user"
    return (
        f"--push holds {what} before the registry's host (not repeated here): a registry path takes no "
        f"credential. Log in once with `docker login {host}` (podman: `podman login {host}`), which keeps it in the "
        f"engine's credential store, then give --push {bare}."
    )


def commands(
    gpus: str,
    tag: str | None = None,
    push: str | None = None,
    apptainer: bool = False,
    max_jobs: int | None = None,
    context: Path | None = None,
    cuda: str | None = None,
) -> BuildPlan:
    if not image.named_tiers(gpus):  # cpu, '' or ',': nothing to compile flash-attn for
        raise FtctlError(
            f"--gpus {gpus!r}: ftctl build compiles flash-attn for GPU tiers: name them (--gpus H100, or A100,H100); "
            "a CPU run needs no build (flash-attn is for GPUs)."
        )
    cuda = image.pins(cuda=cuda).cuda_short if cuda else image.flavour_for(gpus)
    args = image.build_args(gpus, max_jobs=max_jobs, cuda=cuda)
    tag = image.check_tag(tag) if tag else image.image_tag(gpus, cuda=cuda)
    if push and (said := push_credentials(push)):
        raise FtctlError(said)
    registry = image.check_registry(push, "--push") if push else image.DEFAULT_REGISTRY
    ref = f"{registry}/{image.REPOSITORY}:{tag}"
    ctx = context or source_root() or staged_context()
    podman = engine() == "podman"
    cmd = command()
    argv = [cmd, "buildx", "build", *(["--format", "docker"] if podman else [])]
    argv += ["--file", str(ctx / "docker" / "Dockerfile"), "--target", "runtime"]
    target = image.platform(gpus)  # GH200's nodes are aarch64
    argv += ["--platform", target]
    for k, v in args.items():
        argv += ["--build-arg", f"{k}={v}"]
    argv += ["--tag", ref, *([] if podman else ["--push" if push else "--load"]), str(ctx)]
    # the tiers named (a V100 too, which runs the image without flash-attn) and those flash-attn is built for
    served = {t.name: t for t in (*image.named_tiers(gpus), *image.tiers_of(gpus))}.values()
    tiers = ",".join(t.name for t in sorted(served, key=image.tier_order))
    plan = BuildPlan(image=ref, context=ctx, docker=argv, gpus=tiers, pushed=bool(push), cuda=cuda)
    if podman and push:
        plan = replace(plan, push=[cmd, "push", ref])
    plan = replace(plan, note=emulation_note(target))
    if apptainer and podman and not push:
        raise FtctlError(
            f"--apptainer reads the image from docker's daemon (docker-daemon://), and this {cmd} is podman, which "
            "has none: add --push REGISTRY (apptainer pulls it from there)."
        )
    if apptainer:
        sif = Path(f"{image.REPOSITORY}-{tag}.sif").resolve()
        # a pushed image is pulled from its registry; a loaded one is read from the local engine
        source = f"docker://{ref}" if push else f"docker-daemon://{ref}"
        plan = replace(plan, apptainer=["apptainer", "build", "--force", str(partial(sif)), source], sif=sif)
    return plan


def emulation_note(target: str, machine: str | None = None) -> str:
    """The line an image for another CPU than this machine's (``machine``: platform.machine()) needs: buildx runs
    its steps under QEMU, where flash-attn's nvcc compile takes many hours (or, without QEMU's binfmt handlers, the
    first step stops at "exec format error"); '' where they match."""
    import platform as host

    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(
        (machine or host.machine()).lower(), (machine or host.machine()).lower()
    )
    if target == f"linux/{arch}":
        return ""
    return (
        f"note: this machine is {arch}, the image {target}: docker buildx runs its steps under QEMU emulation, where "
        "flash-attn's compile takes many hours (and needs QEMU's handlers: docker run --privileged --rm "
        "tonistiigi/binfmt --install all). Faster: run this on an Arm machine (a GH200 or GB200 node "
        "itself), or through a builder there (docker buildx create --use --name arm ssh://USER@ARMHOST)."
        if target == "linux/arm64"
        else f"note: this machine is {arch}, the image {target}: docker buildx runs its steps under QEMU emulation, "
        "where flash-attn's compile takes many hours: build on an x86_64 machine, or through a builder there "
        "(docker buildx create --use --name x86 ssh://USER@X86HOST)."
    )


def partial(sif: Path) -> Path:
    """Where apptainer builds ``sif`` before build() moves it into place."""
    return sif.with_name(sif.name + ".part")


def check_tools(plan: BuildPlan) -> None:
    """One line naming what is missing and how to get it, before anything starts."""
    cmd = plan.docker[0]
    if not shutil.which(cmd):
        raise FtctlError(
            f"{cmd} is not installed or not on PATH: install Docker Engine with its buildx plugin "
            "(https://docs.docker.com/engine/install/), or podman, or print the command with `ftctl build --dry-run`."
        )
    if engine() == "podman":  # its build is its own: no buildx plugin, and no daemon (`info` has no ServerVersion)
        if _quiet([cmd, "info"]) != 0:
            raise FtctlError(f"`{cmd} info` (podman) fails: run it to see why, then `ftctl build` again.")
    elif _quiet([cmd, "buildx", "version"]) != 0:
        raise FtctlError(
            "docker buildx is missing: install the docker-buildx-plugin package (or Docker Desktop), "
            "then check with `docker buildx version`."
        )
    elif _quiet([cmd, "info", "--format", "{{.ServerVersion}}"]) != 0:
        raise FtctlError(
            "The docker engine does not answer: start it (sudo systemctl start docker) and make sure "
            "this user may use it (`docker info` must work)."
        )
    if plan.apptainer and not shutil.which("apptainer"):
        raise FtctlError(
            "--apptainer needs apptainer on PATH (https://apptainer.org/docs/admin/main/installation.html)."
        )


def _quiet(argv: list[str]) -> int:
    try:
        return subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60).returncode
    except (OSError, subprocess.TimeoutExpired):
        return 1


def build(plan: BuildPlan) -> None:
    check_tools(plan)
    if plan.note:
        click.echo(plan.note, err=True)
    for argv in plan.steps():
        click.echo(f"+ {join(argv)}", err=True)
        rc = subprocess.run(argv).returncode
        if rc != 0:
            if plan.sif:
                partial(plan.sif).unlink(missing_ok=True)
            raise FtctlError(f"`{join(argv[:2])}` failed (exit {rc}): the lines above say why.")
    where = "pushed" if plan.pushed else f"loaded into the local {Path(plan.docker[0]).name} engine"
    click.echo(f"{plan.image} ({where})")
    path = userconfig.record(plan.image, "pushed" if plan.pushed else "local", plan.gpus, plan.cuda)
    users = "sky, slurm and docker" if plan.pushed else "docker"
    if plan.sif:
        click.echo(str(plan.sif))
        userconfig.record(str(plan.sif), "sif", plan.gpus, plan.cuda)
        users += " (its .sif: slurm)"
    click.echo(f"recorded in {path}: {users} runs on {plan.gpus} use it without --container", err=True)
