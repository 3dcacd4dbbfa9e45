"""Render the ``docker run`` command for a plan on this docker host (one node).

Every host path the run reads or writes is mounted at its own path (the run dir, the data, a local output,
model, chat template, checkpoint to resume, the files of a lora_model_dir (spec.adapter_inputs), an object-store
output's staging dir where FTCTL_LOCAL_DIR puts it outside the cache root: staging_dir), so a path means the same
inside as out; what it only reads (data, model, chat template, an adapter's files) read-only. The container runs as the user who
launches it (``--user UID:GID``): the image's own user (uid 1000) could not write a run dir another uid owns,
and the checkpoints it wrote would not be that user's. That user has no home in the image, so the host's
caches come in instead (host_caches): the Hugging Face cache (HF_HOME: a model is downloaded once, not once a
run; and HF_HUB_CACHE, HF_DATASETS_CACHE, HF_XET_CACHE where this host keeps them apart), the cache root for what
compiles at run time (DeepSpeed's ops under XDG_CACHE_HOME; Triton's under HOME, ``<cache root>/ftctl/container-
home``), and USER for the libraries that ask for a user name.

The plan's GPUs (CUDA_VISIBLE_DEVICES picks them, else the host's first ones): docker's ``--gpus N`` (or
``"device=2,3"``), which needs the NVIDIA Container Toolkit's runtime or CDI spec; podman's ``--device
nvidia.com/gpu=NAME`` each, NVIDIA's CDI devices (podman 4 takes --gpus and ignores it, podman 5 reads ``--gpus 2``
as the GPU named 2, one GPU).

Secrets pass by name (``-e NAME``: docker takes the value from the launching environment, never written), the
run's own, the credentials its object stores need that are set here (storage.job_env: AWS_ACCESS_KEY_ID ...) and, for a
run that reports to W&B, W&B's settings set here (spec.report_settings: WANDB_PROJECT ...; -o env's own wins).
Where a store is reached through credential files instead, they come in read-only: the home's (~/.aws,
~/.config/gcloud) at the container's HOME, a file a variable names (GOOGLE_APPLICATION_CREDENTIALS) at its own path.

An engine on another machine (docker.engine.ships: DOCKER_HOST=ssh://gpu, podman's CONTAINER_HOST ...) mounts that
machine's paths, so there the run is shipped instead (shipped_commands): ``docker create`` the container with nothing
of this machine mounted, ``docker cp`` a tar of the run's spec.json and its local inputs (shipped_inputs: data, model,
chat template, checkpoint to resume) into it at their own paths (the paths spec.json names hold there), then ``docker
start`` it. Its output is an object store (checkpoints, the final model and a resume are there: docker.backend
refuses a local one); its HOME, cache root and staging dir are the container's own (SHIPPED_ROOT, in its writable
layer); its Hugging Face cache is the named volume HF_VOLUME, which lives on the engine's machine (a ``-v PATH:PATH``
would be that machine's path): a base model is downloaded there once, not once a run; credentials pass by name only
(``-e NAME``): no file of this machine's is copied.
"""

from __future__ import annotations

import getpass
import json
import math
import os
from dataclasses import dataclass

from ftctl.checkpoints.staging import STAGING_ENV
from ftctl.docker.engine import Info
from ftctl.docker.image import check_reference, default_image
from ftctl.errors import FtctlError
from ftctl.hub import NETWORK_ENV
from ftctl.launch import PATH_PYTHON, container_kind, hf_caches, join, torchrun_argv, trainer_env
from ftctl.plan import Plan
from ftctl.runpaths import SPEC_FILE
from ftctl.spec import RunSpec, adapter_inputs, container_as, report_settings
from ftctl.storage import PATH_ENV, home_credentials, is_remote, job_env

# docker stop's shortest wait between SIGTERM and SIGKILL: the time for the step under way and one checkpoint, which
# Slurm's time limit gives a run too (signal_lead_s, a Slurm key: its default); a run whose checkpoint takes longer gets
# more (stop_grace_s), the container's own (--stop-timeout) and `ftctl cancel`'s (docker.backend: --wait)
STOP_GRACE_S = RunSpec.signal_lead_s
# a docker container's log at most (log_args): LOG_MAX_FILES files of LOG_MAX_SIZE, the oldest dropped; a trainer
# logs a line every logging_steps (no progress bars), so only a run that prints far more than that loses its start
LOG_MAX_SIZE = "100m"
LOG_MAX_FILES = 5
CDI_KIND = "nvidia.com/gpu"  # the kind of NVIDIA's CDI devices (nvidia-ctk cdi generate): --device nvidia.com/gpu=0
# a shipped container's caches, HOME and staging dir: under /tmp, which any user may write in an image (1777), as
# --user UID:GID has no home there
SHIPPED_ROOT = "/tmp/ftctl"
# a shipped container's Hugging Face cache: this named volume of the engine's (kept between runs; `docker volume rm`
# frees it), mounted at HF_VOLUME_AT, outside SHIPPED_ROOT (the engine makes a mount point's missing parents root's:
# the container's user could not write its HOME there). Its root is made writable by any user (1777) where the
# volume is new (volume_command, run by docker.backend: a new volume is root's under docker, the first user's under
# podman); each launching uid has its own HF_HOME in it, so users of one engine never write each other's files
HF_VOLUME = "ftctl-hf-cache"
HF_VOLUME_AT = "/ftctl-hf-cache"


@dataclass(frozen=True)
class HostCaches:
    root: str  # XDG_CACHE_HOME, else ~/.cache
    hf_home: str  # HF_HOME, else <root>/huggingface (huggingface_hub's own resolution)
    home: str  # the container's HOME: <root>/ftctl/container-home
    hf_apart: tuple[tuple[str, str], ...] = ()  # (variable, path) of the HF_CACHE_VARS set here

    def env(self) -> dict[str, str]:
        return {"HOME": self.home, "XDG_CACHE_HOME": self.root, "HF_HOME": self.hf_home, **dict(self.hf_apart)}

    def dirs(self) -> tuple[str, ...]:
        """What the launch creates before docker runs (docker would create a missing one, owned by root)."""
        return (self.root, self.hf_home, self.home, *(path for _, path in self.hf_apart))


def host_caches() -> HostCaches:
    root = os.path.abspath(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"))
    hf_home, apart = hf_caches(os.environ)
    return HostCaches(root, hf_home, os.path.join(root, "ftctl", "container-home"), apart)


def shipped_caches() -> HostCaches:
    """A shipped container's caches (nothing of this host's mounted): its own under SHIPPED_ROOT, made as it writes;
    HF_HOME the launching user's directory in the volume HF_VOLUME (kept between runs)."""
    return HostCaches(f"{SHIPPED_ROOT}/cache", f"{HF_VOLUME_AT}/{os.getuid()}", f"{SHIPPED_ROOT}/home")


def volume_command(image: str, command: str = "docker") -> list[str]:
    """What makes HF_VOLUME where the engine has none yet: a container of the run's image, as root, that mounts it
    (the engine creates it) and makes its root writable by any user (1777): the engine makes a new volume root's
    (docker) or its first user's (podman), and a run's container runs as its launching user."""
    chmod = ["--entrypoint", "chmod", "-v", f"{HF_VOLUME}:{HF_VOLUME_AT}", image, "1777", HF_VOLUME_AT]
    return [command, "run", "--rm", "--user", "0:0", "--network=none", *chmod]


def host_user() -> tuple[int, int, str, tuple[int, ...]]:
    """The launching user: uid, gid, name and other groups (the container runs as them: data a project group may
    read stays readable)."""
    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        name = str(os.getuid())
    return os.getuid(), os.getgid(), name, tuple(sorted(set(os.getgroups()) - {os.getgid()}))


def argv(
    spec: RunSpec,
    plan: Plan,
    run_dir: str,
    engine: str = "docker",
    command: str = "docker",
    shipped: bool = False,
    info: Info = Info(),
) -> list[str]:
    """``docker run`` of the run; ``command``: the engine's command (docker.engine: docker, podman or a path);
    ``engine``: its kind, "docker" or "podman" (podman itself, or podman-docker's ``docker``), which differ in how a
    container gets GPUs: docker's --gpus, podman's CDI devices; ``shipped``: ``docker create`` of a container on
    another machine, nothing of this one mounted (shipped_commands); ``info``: what the engine says of how it runs
    containers (docker.engine.info): rootless (see user_args), SELinux labels, its log driver (log_args)."""
    if plan.nodes > 1:
        raise FtctlError("The docker backend runs on one host: use --backend slurm or sky for several nodes.")
    image = run_image(spec, plan)
    run_dir = os.path.abspath(run_dir)
    caches = shipped_caches() if shipped else host_caches()
    user = host_user()[2]
    cmd = [
        command,
        *(["create"] if shipped else ["run", "--detach"]),
        "--name",
        spec.name,
        *user_args(shipped, info.rootless),
        # SELinux (Fedora, RHEL: where podman is the engine, and docker's daemon where it runs --selinux-enabled) denies
        # a container its bind mounts of the user's files and the GPUs' device nodes otherwise (NVIDIA's CDI docs run
        # podman so), a CPU run's mounts too, and through Docker's CLI as well (podman-api). Not the mounts' :z, which
        # relabels the host's files (the user's data and HF cache, file by file, at every launch) for containers only
        *(["--security-opt=label=disable"] if engine in ("podman", "podman-api") or info.selinux else []),
        # an init as the container's PID 1 (docker's tini, podman's catatonit), torchrun its child: `docker stop`'s
        # SIGTERM reaches torchrun (to it alone: it asks its workers for a checkpoint) even before it has a handler
        # (a PID 1 ignores a signal it has none for: the container waited out --stop-timeout, then was killed), and
        # the processes a killed worker leaves (data loader, compile workers) are reaped, not left as zombies
        "--init",
        *log_args(engine, info.log_driver),
        "--ipc=host",
        "--network=host",
        # what `docker stop NAME` by hand, a daemon's restart (`systemctl restart docker`) and a host's shutdown give
        # the trainer for its checkpoint before SIGKILL, as `ftctl cancel` does (docker's own default: 10 s)
        f"--stop-timeout={stop_grace_s(spec, plan)}",
        # no limit can be raised past the user's hard one where the engine is rootless (EPERM: the container never
        # starts); memlock matters for RDMA, which one host's run does not use
        *([] if info.rootless else ["--ulimit", "memlock=-1"]),
        "--ulimit",
        "stack=67108864",
    ]
    if plan.tier:  # the GPUs the plan runs on, not every one of the host's: CUDA_VISIBLE_DEVICES picks them
        if engine == "podman":  # CDI devices, one --device each (podman 4 ignores --gpus, podman 5 reads N as GPU N)
            cmd += [a for name in cdi_names(plan) for a in ("--device", f"{CDI_KIND}={name}")]
        else:
            picked = picked_gpus(plan)
            cmd += ["--gpus", f'"device={",".join(picked)}"' if picked else str(plan.gpus_per_node)]
    # the output directory is mounted even before it exists (launch creates it): checkpoints written
    # inside the container must land on the host
    # a checkpoint of another run's to resume is written too (reshard.to_universal converts it in place)
    resume = spec.resume if spec.resume not in ("auto", "never") else ""
    env = container_env(spec, caches, user, shipped_to=run_dir if shipped else None)
    files, names = store_credentials(spec, {*env, *spec.secrets}, files=not shipped)
    if not shipped:
        # an object-store output's staging dir: under the cache root unless FTCTL_LOCAL_DIR (or -o env=FTCTL_CACHE)
        # names another, mounted at its own path too, or the run would be staged in the container's own layer
        staged = [staging] if (staging := staging_dir(spec, env)) else []
        written = [run_dir, *caches.dirs(), *_here(spec.output, resume, output=spec.output), *staged]
        read = _here(*spec.data_paths, spec.model_name_or_path, spec.chat_template_path or "", *adapter_inputs(spec))
        for path, mode in _mounts(written, read):
            cmd += ["-v", f"{_bindable(path)}:{path}{mode}"]
        for host, inside in [*home_mounts(spec, caches), *((f, f) for f in files.values() if os.path.isfile(f))]:
            cmd += ["-v", f"{_bindable(host)}:{_bindable(inside)}:ro"]
    else:
        cmd += ["-v", f"{HF_VOLUME}:{HF_VOLUME_AT}"]  # on the engine's machine, kept between runs
    for k, v in sorted({**env, **files}.items()):
        cmd += ["-e", f"{k}={v}"]
    # W&B's settings set here (WANDB_PROJECT ...) where it reports to W&B: a container inherits nothing of this shell
    settings = [n for n in report_settings(spec.report_to) if n not in {*env, *spec.secrets}]
    for name in [*spec.secrets, *names, *settings]:
        cmd += ["-e", name]  # value passed from this environment by docker, never written
    cmd += ["-w", run_dir, image]
    cmd += torchrun_argv(spec, plan, os.path.join(run_dir, "spec.json"), head=None, python=PATH_PYTHON, quiet=True)
    return cmd


def user_args(shipped: bool = False, rootless: bool = False) -> list[str]:
    """Who the container runs as: the launching user (``--user UID:GID``, with their other groups where this host's
    data is mounted), so what it writes in the run dir is theirs. Where the engine is rootless (docker.engine.rootless)
    the container's root (``--user 0:0``) is that user on the host, and every other uid of it a subordinate one: its
    own UID:GID there could not write the run dir the user owns, and the files it did write would not be theirs; the
    host's other groups are not mapped into its user namespace."""
    if rootless:
        return ["--user", "0:0"]
    uid, gid, _, groups = host_user()
    groups = () if shipped else groups  # this host's groups: for data it mounts, which a shipped run is not
    return ["--user", f"{uid}:{gid}", *(a for g in groups for a in ("--group-add", str(g)))]


def log_args(engine: str, driver: str) -> list[str]:
    """The container's log kept to LOG_MAX_FILES files of LOG_MAX_SIZE where its engine is docker and its log driver
    json-file (docker's default), which otherwise keeps every line of a container's output, for days of a run, on the
    daemon's disk (``docker logs`` reads the rotated files too). Docker's ``local`` driver rotates its own (5 files of
    20 MB), journald its journal, and docker refuses these options for a driver that does not take them (journald).
    Not podman's: its k8s-file driver does not rotate at max-size but truncates the whole log (measured, podman 4.3.1:
    200 lines to 1, and the trainer's error line written after them lost, which `ftctl status` and `logs` read)."""
    if engine != "docker" or driver != "json-file":
        return []
    return [f"--log-opt=max-size={LOG_MAX_SIZE}", f"--log-opt=max-file={LOG_MAX_FILES}"]


def run_image(spec: RunSpec, plan: Plan) -> str:
    """The image the run's container runs: --container's (docker:IMAGE), else the default for the plan's GPUs."""
    kind, image = container_kind(spec)
    if kind not in (None, "docker"):
        raise FtctlError(
            f"{container_as(spec, spec.container)}: the docker backend runs docker images: give "
            f"{container_as(spec, 'docker:IMAGE')}."
        )
    # the argument docker run reads as the image: one starting with '-' was read as an option of docker run's, and
    # the trainer's python3 as the image
    return check_reference(image, container_as(spec)) if image else default_image(plan.tier)


def container_env(
    spec: RunSpec, caches: HostCaches | None = None, user: str | None = None, shipped_to: str | None = None
) -> dict[str, str]:
    """The plain environment the container runs in: the host's caches (HOME among them), USER, how this host reaches
    the Hub (hub.NETWORK_ENV where set here: HF_HUB_OFFLINE, a mirror's HF_ENDPOINT), the trainer's
    (launch.trainer_env: -o env among it) and, for an object-store output, STAGING_ENV where -o env sets it or this
    host exports it, as an absolute path (this host's working directory's, as a local run reads it): the same
    ``export FTCTL_LOCAL_DIR=DIR`` stages a docker run where it stages a local one. A run shipped to another machine
    (``shipped_to``: its run dir there) has the container's own caches (shipped_caches), and STAGING_ENV only where -o
    env sets it (this host's export names this host's disk), a relative one under its run dir."""
    caches = caches or (shipped_caches() if shipped_to else host_caches())
    network = {k: os.environ[k] for k in NETWORK_ENV if os.environ.get(k)}  # HF_HUB_OFFLINE=1 here: offline there
    env = {**caches.env(), "USER": user or host_user()[2], **network, **trainer_env(spec)}
    if shipped_to and is_remote(spec.output) and (local := env.get(STAGING_ENV)):
        env[STAGING_ENV] = os.path.normpath(os.path.join(shipped_to, local))
    elif is_remote(spec.output) and (local := env.get(STAGING_ENV) or os.environ.get(STAGING_ENV)):
        env[STAGING_ENV] = os.path.abspath(os.path.expanduser(local))
    return env


def staging_dir(spec: RunSpec, env: dict[str, str] | None = None, shipped_to: str | None = None) -> str | None:
    """The directory of this host an object-store output is staged in before its upload (None: a local output): the
    one the trainer in the container picks from its environment (``env``: :func:`container_env`'s; trainer.run.
    output_dirs), mounted at its own path, so what preflight checks the room of and what status reads is what the
    container writes. Without STAGING_ENV it is under the container's HOME, in the mounted cache root. For a run
    shipped to another machine (``shipped_to``: its run dir there), the container's own directory."""
    if not is_remote(spec.output):
        return None
    from ftctl.trainer.run import output_dirs

    return output_dirs(spec, container_env(spec, shipped_to=shipped_to) if env is None else env)[0]


def picked_gpus(plan: Plan) -> list[str]:
    """The first gpus_per_node GPUs CUDA_VISIBLE_DEVICES names (indices or UUIDs); where it is unset, on a host of
    mixed cards (local.backend.pinned_for) those of the kind planned, whichever kind that is (--gpus 1xRTX3060 beside
    an RTX 4090 ran on the host's first card); [] otherwise: the host's first ones. FtctlError where it names fewer
    than the plan runs on."""
    visible = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if "CUDA_VISIBLE_DEVICES" not in os.environ and plan.tier:  # mixed cards here: those of the kind planned
        from ftctl.docker import engine
        from ftctl.local.backend import local_kinds, pinned_for

        env = {} if engine.remote() else pinned_for(plan.gpus, local_kinds())[0]
        if env.get("CUDA_VISIBLE_DEVICES"):
            visible = env["CUDA_VISIBLE_DEVICES"].split(",")
    if visible and (len(visible) < plan.gpus_per_node or "-1" in visible):
        raise FtctlError(
            f"CUDA_VISIBLE_DEVICES={','.join(visible)} leaves fewer than the {plan.gpus_per_node} GPUs the plan "
            "runs on: unset it, or name that many."
        )
    return visible[: plan.gpus_per_node]


def cdi_names(plan: Plan) -> list[str]:
    """The CDI device names (of CDI_KIND) of the plan's GPUs under podman: those CUDA_VISIBLE_DEVICES picks, else
    the first gpus_per_node by index (``nvidia-ctk cdi generate`` names each GPU by its index by default; by
    UUID with --device-name-strategy=uuid: CUDA_VISIBLE_DEVICES=GPU-... names those)."""
    return picked_gpus(plan) or [str(i) for i in range(plan.gpus_per_node)]


def store_credentials(spec: RunSpec, passed, files: bool = True) -> tuple[dict[str, str], list[str]]:
    """The credential variables of the run's object stores set here (storage.job_env) that are not ``passed``
    already: those naming a file (storage.PATH_ENV) with its absolute path (the file is mounted there), and the
    others' names; without ``files`` (a shipped run: no file of this host's there) none that names a file."""
    names = [n for n in job_env(spec.remote_uris, files=files) if n not in passed]
    files = {n: os.path.abspath(os.path.expanduser(os.environ[n])) for n in names if n in PATH_ENV}
    return files, [n for n in names if n not in files]


def home_mounts(spec: RunSpec, caches: HostCaches) -> list[tuple[str, str]]:
    """(host, container) directories of this home's store credentials (~/.aws ...) that the run's object stores may
    be reached with, mounted read-only at the container's HOME (launch creates the mount points: HostCaches)."""
    home = os.path.expanduser("~")
    return [(os.path.join(home, rel), os.path.join(caches.home, rel)) for rel in home_credentials(spec.remote_uris)]


def _here(*paths: str, output: str = "") -> list[str]:
    """The local paths among ``paths`` that exist (the output even before it does: launch creates it), absolute."""
    return [os.path.abspath(p) for p in paths if not is_remote(p) and (os.path.exists(p) or (p and p == output))]


def _mounts(written: list[str], read: list[str]) -> list[tuple[str, str]]:
    """(path, mode) of each mount: what the run writes read-write, its inputs (data, model, chat template)
    read-only, so nothing in the container can change them; an input inside a written path is reached there."""
    rw = _outermost(written)
    ro = [p for p in _outermost(read) if not any(_inside(p, k) for k in rw)]
    return [(p, "") for p in rw] + [(p, ":ro") for p in ro]


def _inside(path: str, other: str) -> bool:
    return path == other or path.startswith(other.rstrip("/") + "/")


def _outermost(paths: list[str]) -> list[str]:
    """Each path once, none inside another that is mounted (the output is often the run dir)."""
    kept: list[str] = []
    for path in paths:
        if not any(_inside(path, k) for k in kept):
            kept = [k for k in kept if not _inside(k, path)] + [path]
    return kept


def _bindable(path: str) -> str:
    if ":" in path:
        raise FtctlError(
            f"{path!r}: docker reads ':' in a volume as a separator, so this path cannot be mounted. "
            f"Rename it, or move it under a path without ':'."
        )
    return path


def shipped_inputs(spec: RunSpec) -> list[str]:
    """The local paths a run shipped to another machine reads, absolute, each once (none inside another): its data,
    model, chat template, checkpoint to resume and the files of the adapter it starts from (spec.adapter_inputs: not
    the rest of that run's output); copied into its container at their own paths."""
    resume = spec.resume if spec.resume not in ("auto", "never") else ""
    read = _here(
        *spec.data_paths, spec.model_name_or_path, spec.chat_template_path or "", resume, *adapter_inputs(spec)
    )
    return _outermost(read)


def shipped_commands(
    spec: RunSpec, plan: Plan, run_dir: str, engine: str = "docker", command: str = "docker", info: Info = Info()
) -> list[list[str]]:
    """A run shipped to an engine on another machine: ``docker create`` (argv, shipped), ``docker cp`` of a tar of its
    spec.json and shipped_inputs from stdin into the container's root (``--archive``: as the tar's owner, the
    launching user, who the container runs as; podman's takes the container's user), ``docker start``."""
    name = spec.name
    return [
        argv(spec, plan, run_dir, engine, command, shipped=True, info=info),
        [command, "cp", "--archive", "-", f"{name}:/"],
        [command, "start", name],
    ]


def stop_grace_s(spec: RunSpec, plan: Plan) -> int:
    """What docker stop waits for the run's trainer between SIGTERM and SIGKILL: the save its checkpoint takes after
    the step under way (preflight.signal_save_s, as Slurm's USR2 lead counts it), in whole minutes, at least
    STOP_GRACE_S. An 8B fft's ~317 s save was killed at 120 s."""
    from ftctl.preflight import signal_save_s

    return max(STOP_GRACE_S, math.ceil(signal_save_s(spec, plan) / 60) * 60)


def render(
    spec: RunSpec,
    plan: Plan,
    run_dir: str,
    engine: str = "docker",
    command: str = "docker",
    shipped: str = "",
    info: Info = Info(),
) -> str:
    """The ``docker run`` line; ``shipped`` (where the engine runs, docker.engine.ships): shipped_commands, the tar
    ``docker cp`` reads said in a comment."""
    if not shipped:
        return join(argv(spec, plan, run_dir, engine, command, info=info)) + "\n"
    create, cp, start = shipped_commands(spec, plan, run_dir, engine, command, info)
    sent = json.dumps([os.path.join(os.path.abspath(run_dir), SPEC_FILE), *shipped_inputs(spec)])  # one line
    name = os.path.basename(command)
    made = join(volume_command(run_image(spec, plan), command))
    return (
        f"# {name} runs containers on another machine ({shipped}): the run is copied into its container, not "
        f"mounted\n# its Hugging Face cache is the volume {HF_VOLUME} there, kept between runs; where there is none "
        f"yet, first: {made}\n{join(create)}\n# {name} cp reads a tar ftctl makes of {sent}\n{join(cp)}\n"
        f"{join(start)}\n"
    )
