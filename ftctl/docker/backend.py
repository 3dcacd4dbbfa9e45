"""The docker backend: one container on this docker host, detached, watched through the docker CLI.

``launch`` runs the rendered ``docker run -d --name RUN ...`` (the job id is the container's name);
``status`` reads ``docker inspect`` (and, for a failed container, the trainer's error line from the end of
``docker logs``: log_tail), ``logs`` is ``docker logs [-f]``, ``cancel`` is ``docker stop --time GRACE``: SIGTERM to
the container's torchrun, whose workers save a checkpoint at their next step boundary and stop; docker kills the
container if that has not come within GRACE (``--wait``; ``--now``: 0, killed at once, nothing saved; 0 too where
its trainer has not started training: no start record of its own in metrics.jsonl, nothing to save). How it ended
is its exit code: STOPPED_EXIT (stopped at a checkpoint) or KILLED_EXIT, without an error line of the trainer's in
its log (a rank the host killed says one), is a cancelled container; ``status`` and ``cancel`` say whether it saved
a checkpoint (stop_note). ``doctor`` checks the daemon, and for GPUs its NVIDIA container runtime.

The engine may be podman (podman itself where there is no ``docker`` or FTCTL_DOCKER says so, podman-docker's
``docker``, or a link): the same verbs, but a container gets GPUs through NVIDIA's CDI devices (docker.engine,
docker.render), so for a run on GPUs ``check`` looks for NVIDIA's CDI spec where podman reads them (CDI_DIRS) before
any container starts, and refuses Docker's CLI on podman's docker API (which drops GPU requests before podman 5.5);
``doctor`` says which engine it found. Every command and message names the engine's command (docker.engine), and a
job keeps the one it was launched with (its JobRef's extra["engine"]).

An engine on another machine (DOCKER_HOST=ssh://..., a docker context, podman's CONTAINER_HOST or connection:
docker.engine.remote) runs the container there, where a ``-v PATH:PATH`` would mount that machine's PATH: so the run is
shipped (docker.engine.ships; docker.render.shipped_commands): ``docker create`` with nothing of this machine mounted,
``docker cp`` of its spec.json and local inputs into the container, ``docker start``. ``check`` refuses, with the fix,
a local output (the checkpoints, final model and resume of a shipped run are in its object store) and local inputs
of more than SHIP_LIMIT; ``status`` reads the trainer's metrics.jsonl copied out of the container (``docker cp``:
trainer_paths), ``logs`` and ``cancel`` go through the engine as here. Where the user says that machine sees these
paths at the same place (FTCTL_DOCKER_SAME_PATHS=1: a shared filesystem), the run is mounted as here. What belongs to
that machine is not read from this one: its GPUs and driver (nvidia-smi here: detected_gpus, host_driver_cuda),
podman's CDI spec (CDI_DIRS here), docker's CDI spec directories, the staging disk (staging_here). The engine is
asked instead where it says (``docker info``: its runtimes, its discovered CDI devices); what it cannot say is said to
be unchecked, never refused on this machine's facts.

The image: --container, else ``image:`` in the user's config, else the newest image ``ftctl build``
recorded for the run's GPUs (built here or pushed), else ``default_image`` (what ``ftctl build`` names).
"""

from __future__ import annotations

import contextvars
import functools
import io
import json
import os
import re
import shutil
import signal
import subprocess
import tarfile
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

import click

from ftctl import failures
from ftctl.backend import (
    Backend,
    ImageChoice,
    JobRef,
    JobState,
    JobStatus,
    Rendered,
    local_output,
    recorded_jobs,
    resumes_from,
    run_spec,
    trainer_started,
)
from ftctl.checkpoints.staging import STAGING_ENV
from ftctl.docker import engine as docker_engine
from ftctl.docker import render as docker_render
from ftctl.docker.image import build_command, default_image, flavour_for
from ftctl.errors import FtctlError, NotSent
from ftctl.runpaths import RunPaths
from ftctl.spec import RunSpec, given_as
from ftctl.storage import is_remote, write_whole
from ftctl.torch_builds import node_driver_cuda

# docker stop's wait between SIGTERM and SIGKILL (`ftctl cancel --wait`), the container's own too (--stop-timeout)
STOP_GRACE_S = docker_render.STOP_GRACE_S
STOPPED_EXIT = 128 + signal.SIGTERM  # ftctl.trainer.torchrun's, its workers stopped at a checkpoint after a SIGTERM
KILLED_EXIT = 128 + signal.SIGKILL  # docker's SIGKILL: stop's grace ran out, or --now
LOG_TAIL_LINES = 200  # of a failed container's log, read for the trainer's error line: torchrun's report follows it
# --gpus needs the NVIDIA Container Toolkit; without it docker says: could not select device driver "" ...
GPU_RUNTIME_FIX = (
    "install the NVIDIA Container Toolkit, then `sudo nvidia-ctk runtime configure --runtime=docker && sudo "
    "systemctl restart docker`"
)
# rootless docker's daemon is the user's own (~/.config/docker/daemon.json, systemctl --user), and its containers may
# not set up cgroups for the GPUs: NVIDIA's install guide, "Rootless mode"
ROOTLESS_GPU_RUNTIME_FIX = (
    "install the NVIDIA Container Toolkit, then, for rootless docker, `nvidia-ctk runtime configure --runtime=docker "
    "--config=$HOME/.config/docker/daemon.json && systemctl --user restart docker` and `sudo nvidia-ctk config --set "
    "nvidia-container-cli.no-cgroups --in-place`"
)
# what doctor says of a rootless engine (docker.engine.Info.rootless), and of docker's daemon with SELinux labels
ROOTLESS_SAYS = (
    "the container runs as its root (--user 0:0), which is you on this host: what it writes is yours; your other "
    "groups are not in its user namespace (data you read only through one of them cannot be read there), and its "
    "memlock limit is not raised (--ulimit memlock=-1: refused rootless; RDMA needs it, a one-host run does not)"
)
PODMAN_INIT_MISSING = (
    "podman's init (catatonit) is not installed: a run's container starts with --init (torchrun then gets `docker "
    "stop`'s SIGTERM and saves), which podman refuses without it: sudo apt install catatonit (dnf: catatonit)"
)
SELINUX_SAYS = (
    "docker labels its containers: a run's container is not (--security-opt=label=disable), so it reads your files "
    "and the GPUs without relabelling them"
)
# what a launch copies into a container on another machine at most (its local data, model, chat template, checkpoint to
# resume): docker cp streams it through the engine's connection (ssh ...) with every launch
SHIP_LIMIT = 2 * 1024**3
# in a shipped run's run dir here: its trainer's metrics.jsonl as `status` last copied it out of the container
CONTAINER_COPY = ".ftctl/container"
# podman's CDI spec directories (containers.conf's cdi_spec_dirs by default; podman 4 reads only these); without
# NVIDIA's spec there, podman says: setting up CDI devices: unresolvable CDI devices nvidia.com/gpu=0
CDI_DIRS = ("/etc/cdi", "/var/run/cdi")
CDI_FIX = (
    "install the NVIDIA Container Toolkit, then `sudo nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml` "
    "(again after a driver update or a GPU change)"
)


# the engine endpoint (docker.engine.endpoint_env) a job was launched on, while a call about it runs (this thread's:
# `ftctl jobs` asks of several at once); None: this environment's
_ENDPOINT: contextvars.ContextVar[dict | None] = contextvars.ContextVar("engine_endpoint", default=None)


def _engine_env() -> dict[str, str] | None:
    """The environment of an engine call: this one, with the endpoint variables of the job asked about."""
    recorded = _ENDPOINT.get()
    if recorded is None:
        return None
    env = {k: v for k, v in os.environ.items() if k not in docker_engine.ENDPOINT_ENV}
    return {**env, **{k: str(v) for k, v in recorded.items() if k in docker_engine.ENDPOINT_ENV}}


def _at_its_engine(method):
    """A method about a job (its first argument) whose engine calls reach the engine it was launched on: a job of
    DOCKER_HOST=ssh://gpu is asked there from a shell without it (a job recorded before endpoints were: here)."""

    @functools.wraps(method)
    def on_it(self, ref: JobRef, *args, **kwargs):
        recorded = ref.extra.get("endpoint")
        token = _ENDPOINT.set(recorded if isinstance(recorded, dict) else None)
        try:
            return method(self, ref, *args, **kwargs)
        finally:
            _ENDPOINT.reset(token)

    return on_it


class DockerBackend(Backend):
    name = "docker"
    options = frozenset({"container"})
    cancel_options = frozenset({"now", "wait_s"})
    no_image = "the default image"  # never said: a docker run always has one (see image())

    def image(self, spec, plan) -> ImageChoice:
        choice = super().image(spec, plan)
        if choice.ref:
            return choice
        cuda = flavour_for(plan.tier, self.host_driver_cuda() if plan.tier else None)
        ref = default_image(plan.tier, cuda=cuda)
        build = build_command(plan.tier, cuda)
        return ImageChoice(ref, f"docker:{ref}", "default", f"image: {ref} (the default name; `{build}` builds it)")

    def host_driver_cuda(self) -> tuple[int, int] | None:
        return self._host_driver

    @functools.cached_property
    def _host_driver(self) -> tuple[int, int] | None:  # nvidia-smi once a launch (image choice, then its check)
        return None if docker_engine.remote() else node_driver_cuda()  # this machine's driver is not the engine's

    def image_kinds(self) -> tuple[str, ...]:
        return ("local", "pushed")

    def detected_gpus(self) -> str | None:
        from ftctl.local.backend import machine_gpus

        # an engine elsewhere: its GPUs, not seen here; mixed cards: each kind (preflight.check_gpus)
        return None if docker_engine.remote() else machine_gpus()

    def render(self, spec, plan, paths, spec_json):
        # the engines differ in how a container gets GPUs, and podman in its SELinux labels (a CPU run's mounts too);
        # what the engine says (rootless, SELinux, its log driver) sets the container's user, labels and log
        kind = docker_engine.kind()
        shipped = docker_engine.ships() or ""
        info = docker_engine.info()
        text = docker_render.render(spec, plan, str(paths.root), kind, docker_engine.command(), shipped, info)
        script = "#!/bin/sh\n" + (text if shipped else "exec " + text)  # shipped: what ftctl sent, its tar not here
        return text, {paths.spec.name: spec_json, paths.docker_script.name: script}

    def check(self, rendered: Rendered) -> None:
        docker = _docker()
        _daemon(docker)
        where = docker_engine.remote(docker)
        if docker_engine.ships(docker) and (said := _not_shippable(docker, where, rendered)):
            raise FtctlError(said)
        image = rendered.image.ref
        if rendered.image.source in ("default", "local"):  # a registry's image is pulled by docker run
            if _run([docker, "image", "inspect", image]).returncode != 0:
                tier = rendered.plan.tier
                build = build_command(tier, flavour_for(tier, self.host_driver_cuda() if tier else None))
                raise FtctlError(
                    f"the image {image} is not on this {_name(docker)} host: build it with `{build}` (or pull it), "
                    "or pass --container docker:IMAGE."
                )
        kind = docker_engine.kind(docker) if rendered.plan.tier else "docker"
        if kind == "podman-api":
            raise FtctlError(_podman_api(docker))
        if where:  # said, not refused on this machine's facts
            for line in _unchecked(docker, where, kind, rendered):
                click.echo(f"warning: {line}", err=True)
        elif kind == "podman":
            _check_cdi(docker_render.cdi_names(rendered.plan))
        name = rendered.spec.name
        state = _inspect(name)
        other = next(
            (ref.run_dir for ref, _ in recorded_jobs() if ref.backend == self.name and ref.job_id == name), None
        )
        if state and other and Path(other) != rendered.run_dir:  # the container (and its job record) of another run
            raise FtctlError(
                f"container {name} is the run in {other} ({state.word}), and this run would take its name: give this "
                f"one another with -o run_name=NAME."
            )
        if state and state.word == "created":  # never started: not a run to follow or stop (`ftctl cancel` cannot)
            raise FtctlError(
                f"container {name} was created and never started (a launch that could not start it, or one starting "
                f"it now): `{_name(_docker())} rm {name}` removes it, then launch again."
            )
        if state and state.word in ("running", "restarting", "paused"):
            raise FtctlError(
                f"container {name} is already {state.word}: `ftctl logs -f {name}` follows it, `ftctl cancel {name}` "
                "stops it."
            )

    def send(self, rendered: Rendered) -> JobRef:
        name = rendered.spec.name
        docker = _docker()
        if _inspect(name):  # an ended container of an earlier attempt: the run dir keeps its checkpoints
            _run([docker, "rm", name])
        # the engine it runs on: status, logs and cancel ask that one (FTCTL_DOCKER unset later, or docker installed)
        # and where it reaches it (DOCKER_HOST, a context, CONTAINER_HOST ...: docker.engine.endpoint_env)
        extra = {"engine": docker_engine.command(), "endpoint": docker_engine.endpoint_env()}
        extra["stop_grace_s"] = docker_render.stop_grace_s(rendered.spec, rendered.plan)  # its --stop-timeout
        if where := docker_engine.ships(docker):
            _ship(docker, where, rendered)
            # where its trainer writes in the container (metrics.jsonl): status copies it out (trainer_paths)
            extra["shipped"] = docker_render.staging_dir(rendered.spec, shipped_to=str(rendered.paths.root))
            return JobRef("docker", name, str(rendered.paths.root), name, rendered.spec.output, extra)
        caches = docker_render.host_caches()
        for path in [*caches.dirs(), *(inside for _, inside in docker_render.home_mounts(rendered.spec, caches))]:
            os.makedirs(path, exist_ok=True)
        if staging := docker_render.staging_dir(rendered.spec):  # mounted: docker would create it, owned by root
            try:
                os.makedirs(staging, exist_ok=True)
            except OSError as e:
                raise NotSent(
                    f"{given_as(rendered.spec, 'output_dir', rendered.spec.output, '--output')} is staged in "
                    f"{staging} before its upload, which cannot be "
                    f"made ({e.strerror}): export {STAGING_ENV}=DIR, a directory you can write (or -o env="
                    f"{STAGING_ENV}=DIR)."
                ) from None
        proc = _run(["sh", str(rendered.paths.docker_script)])
        if proc.returncode != 0:
            # docker run creates the container, then starts it: one it could not start (no GPU runtime, a CDI device,
            # a limit the engine may not raise) stays, "created", under the run's name, and took it from the
            # relaunch that follows the fix
            _remove_unstarted(docker, name)
            said = _last_line(proc)
            raise NotSent(f"{_name(docker)} run failed: {said}{_send_fix(docker, said, docker_engine.remote(docker))}")
        return JobRef("docker", name, str(rendered.paths.root), name, rendered.spec.output, extra)

    def announce(self, rendered: Rendered, ref: JobRef) -> list[str]:
        said = [
            f"started container {ref.job_id}",
            f"  run dir:     {rendered.paths.root}",
            f"  log:         ftctl logs -f {ref.job_id}",
            f"  checkpoints: {rendered.spec.output}",
        ]
        if ref.extra.get("shipped"):  # its Hugging Face cache: a volume there, which nothing here shows
            volume, engine = docker_render.HF_VOLUME, ref.extra["engine"]
            said.append(
                f"  hf cache:    the volume {volume} there, kept between runs (a model downloads once): "
                f"`{engine} volume rm {volume}` frees it"
            )
        return said

    @_at_its_engine
    def status(self, ref: JobRef) -> JobStatus:
        docker = _docker(ref)
        state = _inspect(ref.job_id, docker)
        if state is None:
            return JobStatus(JobState.UNKNOWN, f"{ref.job_id} not found (removed from this {_name(docker)} host)")
        word, code, ran = state.word, state.code, state.ran
        if word == "exited" and self._stopped(ref, code):
            how = "stopped" if code == STOPPED_EXIT else "killed"
            return JobStatus(
                JobState.CANCELLED, f"{ref.job_id} {JobState.CANCELLED.value} ({how}, exit {code})", ran=ran
            )
        if word == "exited":
            st = JobState.SUCCEEDED if code == 0 else JobState.FAILED
            return JobStatus(st, f"{ref.job_id} {st.value} exit {code}", ran=ran)
        st = {"created": JobState.PENDING, "running": JobState.RUNNING, "restarting": JobState.RUNNING}.get(
            word, JobState.UNKNOWN
        )
        return JobStatus(st, f"{ref.job_id} {st.value} ({word})", ran=ran)

    def staging_here(self, spec: RunSpec) -> str | None:
        """The container stages an object-store output on this host's disk: docker.render.staging_dir, mounted; None
        for an engine on another machine (its disk: not seen from here)."""
        return None if docker_engine.remote() else docker_render.staging_dir(spec)

    @_at_its_engine
    def trainer_paths(self, ref: JobRef) -> RunPaths | None:
        """The run dir of a local output; an object-store output's staging dir as the container names it (its HOME is
        this host's caches.home, its environment the run's: docker.render.staging_dir), a path of this host's
        (mounted there). A shipped run's (on another machine): its CONTAINER_COPY here, where its trainer's
        metrics.jsonl is copied out of the container (``docker cp``, a running or an ended one) as this is asked."""
        if inside := ref.extra.get("shipped"):
            return _copied_out(_docker(ref), ref, inside)
        if not is_remote(ref.output):
            return ref.paths
        try:
            return RunPaths(Path(docker_render.staging_dir(run_spec(ref))))
        except (OSError, FtctlError):
            return None

    @_at_its_engine
    def logs(self, ref: JobRef, follow: bool, lines: int | None = None) -> None:
        docker = _docker(ref)
        tail = ["--tail", str(lines)] if lines is not None else []  # docker's own: it reads back from the log's end
        argv = [docker, "logs", *tail, *(["--follow"] if follow else []), ref.job_id]
        if subprocess.call(argv, env=_engine_env()) == 0:
            return
        _daemon(docker)  # a daemon that does not answer says so (docker's own line is above)
        if _inspect(ref.job_id, docker) is None:
            raise FtctlError(
                f"container {ref.job_id} is not on this {_name(docker)} host (removed): its log went with it."
            )
        raise FtctlError(f"{_name(docker)} logs {ref.job_id} failed: its message is above.")

    @_at_its_engine
    def log_tail(self, ref: JobRef) -> str:
        """The container's last LOG_TAIL_LINES lines (its output, then its errors); "" once it is removed."""
        proc = _run([_docker(ref), "logs", "--tail", str(LOG_TAIL_LINES), ref.job_id])
        return proc.stdout + proc.stderr if proc.returncode == 0 else ""

    @_at_its_engine
    def cancel(self, ref: JobRef, now: bool = False, wait_s: int | None = None) -> str:
        """``docker stop``: SIGTERM, its trainer saves a checkpoint at its next step boundary and stops; docker kills
        the container after ``wait_s`` (its --stop-timeout, stop_grace_s) where that has not come, at once with ``now``. Says whether a
        checkpoint was saved, as stop_note does."""
        docker = _docker(ref)
        before = self.status(ref)
        if before.state.finished or before.state is JobState.UNKNOWN:
            return f"job {ref.job_id} had already ended: {before.text}"
        at_once = "--now" if now else self._nothing_to_ask(ref, before)
        grace = 0 if at_once else ref.extra.get("stop_grace_s", STOP_GRACE_S) if wait_s is None else wait_s
        if grace:
            click.echo(
                f"asked container {ref.job_id}'s trainer for a checkpoint at its next step boundary; waiting up to "
                f"{grace} s for it, then {_name(docker)} kills it (`ftctl cancel --now {ref.job_id}` stops it at once)",
                err=True,
            )
        # --now (or nothing to save) is `docker kill`: `docker stop --time 0` sent SIGTERM first, and a trainer that
        # could finish a small checkpoint before docker's SIGKILL saved one after all (a loaded machine, a tiny model)
        verb = ["kill"] if at_once else ["stop", "--time", str(grace)]
        proc = _run([docker, *verb, ref.job_id])
        if proc.returncode != 0:
            raise FtctlError(f"{_name(docker)} {verb[0]} {ref.job_id} failed: {_last_line(proc)}")
        if at_once:  # podman's kill returns once the signal is sent (docker's once the container is down): its end
            _run([docker, "wait", ref.job_id])
        after = self.status(ref)
        if after.state is JobState.SUCCEEDED:
            return f"job {ref.job_id} finished training before it could stop: {after.text}"
        if after.state is not JobState.CANCELLED:
            return f"job {after.text} as it stopped: `ftctl status {ref.job_id}` says why"
        killed = at_once or f"none within {grace} s: `ftctl cancel --wait SECONDS` gives its trainer longer"
        return f"cancelled {ref.job_id}: {self._saved(ref, killed)}"

    def _nothing_to_ask(self, ref: JobRef, before: JobStatus) -> str | None:
        """Why the container is stopped at once: its trainer has not started training (no start record of its own,
        written since the container started, where it writes: trainer_paths), so nothing since the last checkpoint is
        there to save, and a trainer still loading cannot save (its torchrun may not even take SIGTERM yet: docker
        would wait the whole grace). None: ask for a checkpoint."""
        paths = self.trainer_paths(ref)
        if paths is None or trainer_started(paths, before.ran, None):
            return None
        return "its trainer had not started training: nothing since the last checkpoint to save"

    @_at_its_engine
    def stop_note(self, ref: JobRef) -> str | None:
        killer = _name(_docker(ref))
        return self._saved(
            ref, f"{killer} killed it before its trainer's next step boundary, or it was not training yet"
        )

    def _saved(self, ref: JobRef, killed: str) -> str | None:
        """Whether the cancelled container's trainer saved a checkpoint as it stopped (its exit code), and where the
        same launch goes on from; ``killed``: why not, where docker killed it. None: not a cancelled container."""
        state = _inspect(ref.job_id, _docker(ref))
        if state is None or state.word != "exited" or not self._stopped(ref, state.code):
            return None
        goes_on = f": the same `ftctl launch` {resumes_from(ref)}"
        if state.code == STOPPED_EXIT and self._before_training(ref, state.ran):
            # its init gave torchrun the SIGTERM before torchrun had a handler: it ended, as a process without one
            return f"it stopped before its trainer started training, so nothing was saved{goes_on}"
        if state.code == STOPPED_EXIT:
            return f"its trainer saved a checkpoint as it stopped{goes_on}"
        return f"no checkpoint was saved as it stopped ({killed}){goes_on}"

    def _before_training(self, ref: JobRef, ran: tuple[float, float | None] | None) -> bool:
        """Whether the container (that ``ran`` then) ended before its trainer started training: no start record of
        its own where it writes (trainer_paths). False where that cannot be read (an object store's staging dir
        elsewhere)."""
        paths = self.trainer_paths(ref)
        return paths is not None and paths.metrics.parent.is_dir() and not trainer_started(paths, ran, None)

    def _stopped(self, ref: JobRef, code: int) -> bool:
        """Whether a container that exited with ``code`` was stopped from outside (docker stop or kill): STOPPED_EXIT
        or KILLED_EXIT without an error line of the trainer's (a rank the host's out-of-memory killer ended says
        one, and torchrun then exits with KILLED_EXIT too)."""
        return code in (STOPPED_EXIT, KILLED_EXIT) and failures.error_line(self.log_tail(ref)) is None

    def doctor(self, gpus, partition) -> bool:
        from ftctl.gpus import parse
        from ftctl.local.backend import gpus_here_say, local_gpus, refuse_partition

        refuse_partition(partition, self.name)
        where = docker_engine.remote()
        if gpus and where:  # nvidia-smi here says nothing of the engine's machine
            click.echo(f"asked:   {gpus}: not checked (the containers run on another machine: {where})")
        elif gpus and not gpus_here_say(gpus):
            return False
        try:
            docker = _docker()
            version = _daemon(docker)
        except FtctlError as e:
            click.echo(f"docker:  {e}")
            return False
        kind = docker_engine.kind(docker)
        why = docker_engine.why()
        if kind == "podman-api":  # Docker's CLI, podman's server: `version` says the server's
            said = f"podman {version}'s docker API, through {docker}"
        else:
            said = f"{'daemon' if kind == 'docker' else 'podman'} {version} ({docker}{f': {why}' if why else ''})"
        info = docker_engine.info(docker)
        rootless = ", rootless" if info.rootless else ""
        click.echo(f"docker:  {said}{rootless}{f' on another machine: {where}' if where else ''}")
        if info.rootless:
            click.echo(f"user:    {ROOTLESS_SAYS}")
        if info.selinux and kind == "docker":  # podman's containers are unlabelled whatever the host
            click.echo(f"selinux: {SELINUX_SAYS}")
        ok = True
        if kind == "podman" and not where and not docker_engine.podman_init_found():
            click.echo(f"init:    {PODMAN_INIT_MISSING}")
            ok = False
        if where:
            click.echo(
                f"paths:   its machine sees this one's paths ({docker_engine.SAME_PATHS_ENV}=1)"
                if docker_engine.same_paths()
                else f"paths:   {SHIPPED_SAYS}"
            )
        # a CPU run needs no GPU runtime; an engine elsewhere is asked all the same (its GPUs are not seen here), and
        # fails doctor for its GPUs only where --gpus asked for some
        wants = parse(gpus).tier if gpus else not where and local_gpus() != "cpu"
        if not (wants or where):
            return ok
        if kind == "podman-api":
            click.echo(f"gpus:    {_podman_api(docker)}")
            return ok and not wants
        if kind == "podman" and where:  # podman info does not list CDI devices (containers/podman#28712 would)
            click.echo(f"gpus:    not checked: {_PODMAN_CDI_THERE}")
            return ok
        if kind == "podman":
            specs = _cdi_gpus()
            found = [f"{path} ({', '.join(names[:6])}{' ...' if names[6:] else ''})" for path, names in specs.items()]
            click.echo(f"gpus:    {f'NVIDIA CDI devices: {found[0]}' if found else f'{_no_cdi()}: {CDI_FIX}'}")
            return bool(found)
        has, said = _gpu_runtime(docker, where)
        click.echo(f"gpus:    {said}")
        return ok and (has is not False or not wants)


def _remove_unstarted(docker: str, name: str) -> None:
    """Removes the container ``name`` where it was created and never started (a docker run that failed to start it)."""
    try:
        state = _inspect(name, docker)
    except FtctlError:  # the daemon does not answer: nothing to remove through it
        return
    if state is not None and state.word == "created" and state.ran is None:
        _run([docker, "rm", name])


def _docker(ref: JobRef | None = None) -> str:
    """The engine's executable (docker.engine): the one ``ref`` was launched with, else this launch's."""
    return docker_engine.path((ref.extra.get("engine") if ref else None) or None)


def _name(docker: str) -> str:
    """How messages name the engine ``docker`` (an executable): docker, podman."""
    return Path(docker).name


def _daemon(docker: str) -> str:
    """The docker daemon's version (podman's); FtctlError where the CLI cannot reach it (every other docker call
    would fail for that reason, and say something else: an image `docker image inspect` cannot see is not
    missing)."""
    proc = _run([docker, "version", "--format", "{{.Server.Version}}"])
    if proc.returncode != 0 or not proc.stdout.strip():
        name = _name(docker)
        if docker_engine.kind(docker) == "podman":
            raise FtctlError(f"`{name} version` fails ({_last_line(proc)}): `{name} info` says why.")
        other = shutil.which("podman") and not docker_engine.chosen()
        raise FtctlError(
            f"{name} is installed but its daemon does not answer ({_last_line(proc)}): start it (systemctl start "
            f"docker), or give your user access to its socket (the docker group)"
            + (f", or run podman instead: {docker_engine.ENV}=podman." if other else ".")
        )
    return proc.stdout.strip()


def _podman_api(docker: str) -> str:
    """Why a GPU run is refused where Docker's CLI ``docker`` talks to podman's docker-compatible API (docker.engine)."""
    version = docker_engine.podman_server(docker) or "?"
    host = os.environ.get("DOCKER_HOST")
    return (
        f"{_name(docker)} here talks to podman {version}'s docker API ({f'DOCKER_HOST={host}' if host else 'its context'}"
        "), which starts a container without its GPUs: it drops docker's --gpus and CDI device requests (podman 5.5 "
        f"takes the CDI ones). Run podman itself: {docker_engine.ENV}=podman (or upgrade podman to 5.5)."
    )


def _no_cdi() -> str:
    return (
        f"podman gives a container GPUs through NVIDIA's CDI spec, and this host has none (in {' or '.join(CDI_DIRS)})"
    )


# (what `docker run` said, the fix): what a failed docker run says adds the fix
SEND_FIXES = (
    ("could not select device driver", GPU_RUNTIME_FIX),
    ("unresolvable CDI devices", CDI_FIX),
    # --init: podman's catatonit (a package of its own on Debian and Ubuntu), docker's docker-init (tini)
    (
        "container-init binary not found",
        "install catatonit, podman's init (`sudo apt install catatonit`, `sudo dnf install catatonit`)",
    ),
    # (Docker's packages ship docker-init; a daemon from bare binaries, some snaps and distributions have none)
    (
        '"docker-init": executable file not found',
        'install tini, docker\'s init, where the daemon finds it: as docker-init on its PATH, or named by "init-path" '
        "in its daemon.json",
    ),
    # podman resolves a short name (ftctl:test) only through registries.conf's unqualified-search-registries
    (
        "did not resolve to an alias",
        "name the image with its registry (docker.io/NAME:TAG, ghcr.io/...) in --container",
    ),
)


def _gpu_runtime_fix(docker: str) -> str:
    """How to give docker's containers GPUs: the NVIDIA runtime set up for the daemon ``docker`` talks to, the user's
    own where it is rootless."""
    return ROOTLESS_GPU_RUNTIME_FIX if docker_engine.rootless(docker) else GPU_RUNTIME_FIX


def _send_fix(docker: str, said: str, where: str | None) -> str:
    """': FIX' for what a failed docker run (create, cp, start) ``said`` (SEND_FIXES), '' where none is known; the
    GPU runtime's for a rootless daemon where it is one; said to be done on the machine that runs the containers
    (``where``) for an engine on another machine."""
    fix = next((fix for why, fix in SEND_FIXES if why in said), "")
    if fix == GPU_RUNTIME_FIX:
        fix = _gpu_runtime_fix(docker)
    if where and fix in (GPU_RUNTIME_FIX, ROOTLESS_GPU_RUNTIME_FIX, CDI_FIX):
        fix += f", on the machine that runs the containers ({where})"
    return f": {fix}" if fix else ""


def _cdi_gpus() -> dict[str, list[str]]:
    """NVIDIA's CDI specs (kind nvidia.com/gpu) in podman's CDI_DIRS: {file: its devices' names}."""
    import yaml

    found: dict[str, list[str]] = {}
    for path in sorted(p for d in CDI_DIRS for p in Path(d).glob("*") if p.suffix in (".yaml", ".yml", ".json")):
        try:
            text = path.read_text()
            spec = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (OSError, ValueError, yaml.YAMLError):
            continue  # podman skips a spec it cannot read too
        if isinstance(spec, dict) and spec.get("kind") == docker_render.CDI_KIND:
            devices = spec.get("devices") or []
            found[str(path)] = [str(d["name"]) for d in devices if isinstance(d, dict) and d.get("name")]
    return found


def _check_cdi(names: list[str]) -> None:
    """FtctlError where podman could not give a container the CDI devices ``names`` (of NVIDIA's kind): no spec
    names them (docker run would fail: unresolvable CDI devices)."""
    specs = _cdi_gpus()
    if not specs:
        raise FtctlError(f"{_no_cdi()}: {CDI_FIX}.")
    have = [n for ns in specs.values() for n in ns]
    missing = [n for n in names if n not in have]
    if missing:
        listed = ", ".join(have[:8]) + (" ..." if have[8:] else "")
        raise FtctlError(
            f"podman has no CDI device {', '.join(f'{docker_render.CDI_KIND}={n}' for n in missing)} (the GPUs of "
            f"{', '.join(specs)}: {listed or 'none'}): set CUDA_VISIBLE_DEVICES to GPUs it names, or {CDI_FIX}."
        )


def _gpu_runtime(docker: str, where: str | None = None) -> tuple[bool | None, str]:
    """How the daemon gives a container GPUs (--gpus), as it says (``docker info``): (True, its NVIDIA runtime or
    NVIDIA's CDI devices), (False, why not and the fix: the NVIDIA Container Toolkit is not set up), or (None, why
    not known): a daemon on another machine (``where``) whose CDI spec directories are that machine's, and which
    does not list its CDI devices (DiscoveredDevices, newer dockers)."""
    try:
        info = json.loads(_run([docker, "info", "--format", "{{json .}}"]).stdout or "{}")
    except ValueError:
        info = {}
    info = info if isinstance(info, dict) else {}
    if "nvidia" in (info.get("Runtimes") or {}):
        return True, "the NVIDIA container runtime (nvidia)"
    found = [d.get("ID") for d in info.get("DiscoveredDevices") or [] if isinstance(d, dict)]
    devices = [str(d) for d in found if str(d).startswith(f"{docker_render.CDI_KIND}=")]
    if devices:
        return True, f"NVIDIA's CDI devices ({', '.join(devices[:6])}{' ...' if devices[6:] else ''})"
    dirs = [str(d) for d in info.get("CDISpecDirs") or []]
    if dirs and "DiscoveredDevices" not in info:  # an older docker: its CDI directories, read where they are
        if where:
            return None, (
                f"not checked: docker there has no NVIDIA runtime, and reads CDI specs from {', '.join(dirs)} on "
                "that machine, which this docker cannot list (a newer one does): `nvidia-ctk cdi list` there lists them"
            )
        specs = [p for d in dirs for p in sorted(Path(d).glob("nvidia*"))]
        if specs:
            return True, f"NVIDIA's CDI devices ({specs[0]})"
    there = " there" if where else ""
    return False, f"docker{there} has no NVIDIA container runtime, so --gpus fails: {_gpu_runtime_fix(docker)}"


# podman's CDI spec on a remote engine's machine: podman info does not list CDI devices (nor its docker API)
_PODMAN_CDI_THERE = (
    "podman there gives a container GPUs through NVIDIA's CDI spec on that machine, which ftctl cannot read from "
    "here: `nvidia-ctk cdi list` there lists its GPUs (a missing spec fails the launch with its fix)"
)


def _gib(n: int) -> str:
    from ftctl.checkpoints.sync import human_size

    return human_size(n)


# what doctor says of an engine on another machine that does not see this one's paths
SHIPPED_SAYS = (
    f"a run is copied into its container there (docker cp: its spec.json and local inputs, up to {_gib(SHIP_LIMIT)}), "
    f"nothing of this machine mounted; its --output is an object store (s3://bucket/path, gs://...)"
)


def _not_shippable(docker: str, where: str, rendered: Rendered) -> str | None:
    """Why a run cannot be shipped to the engine on another machine (``where``), with the fix: a local output (its
    checkpoints would stay in the container there), or local inputs of more than SHIP_LIMIT; None: it can."""
    spec = rendered.spec
    elsewhere = f"{_name(docker)} runs containers on another machine ({where})"
    same = (
        f"where that machine sees this one's paths at the same place (a shared filesystem), export "
        f"{docker_engine.SAME_PATHS_ENV}=1"
    )
    if not is_remote(spec.output):
        # as asked: the rendered spec has output_dir set (backend.absolute_paths), the Rendered the another_output of
        # the spec as asked (RunSpec.another_output), which is the rendered spec's only where --output was given
        said = local_output(spec.output, rendered.another_output == spec.another_output)
        return (
            f"{said}, and {elsewhere}, which cannot write here: give --output an object-store URI (s3://bucket/path, "
            f"gs://...), where a run copied there keeps its checkpoints, final model and resume; or run ftctl on that "
            f"machine; or, {same}."
        )
    sizes = sorted(((_bytes(p), p) for p in docker_render.shipped_inputs(spec)), reverse=True)
    total = sum(n for n, _ in sizes)
    if total <= SHIP_LIMIT:
        return None
    shown = ", ".join(f"{p}: {_gib(n)}" for n, p in sizes[:3]) + (f" and {len(sizes) - 3} more" if sizes[3:] else "")
    return (
        f"the run's local inputs ({shown}) are {_gib(total)}, more than the {_gib(SHIP_LIMIT)} ftctl copies into a "
        f"container with each launch where {elsewhere}: put the data in object storage (--data s3://bucket/path), "
        f"name a Hub model (--model ORG/NAME), or run ftctl on that machine; or, {same}."
    )


def _bytes(path: str) -> int:
    """What copying ``path`` (a file, or a directory with what it holds, links followed) sends."""
    if not os.path.isdir(path):
        return os.path.getsize(path)
    total = 0
    for top, _, names in os.walk(path, followlinks=True):
        for name in names:
            try:
                total += os.path.getsize(os.path.join(top, name))
            except OSError:
                pass
    return total


def _ship(docker: str, where: str, rendered: Rendered) -> None:
    """The run on the engine on another machine (docker.render.shipped_commands): the volume of its Hugging Face
    cache made where the engine has none (docker.render.volume_command), its container created, its spec.json and
    local inputs copied in (a tar, streamed to ``docker cp``), started; NotSent, the container (or a volume just made)
    removed, where one of them fails."""
    kind = docker_engine.kind(docker)
    create, cp, start = docker_render.shipped_commands(
        rendered.spec,
        rendered.plan,
        str(rendered.paths.root),
        kind,
        docker_engine.command(),
        docker_engine.info(docker),
    )
    name = rendered.spec.name
    steps = [(create, "create"), (cp, "cp"), (start, "start")]
    volume, made = docker_render.HF_VOLUME, None  # the run's Hugging Face cache there: made where there is none yet
    if _run([docker, "volume", "inspect", volume]).returncode != 0:
        made = docker_render.volume_command(docker_render.run_image(rendered.spec, rendered.plan), create[0])
        steps.insert(0, (made, f"run (making the volume {volume} writable)"))
    for argv, verb in steps:
        proc = _copy_in(cp, rendered) if argv is cp else _run(argv)
        if proc.returncode == 0:
            continue
        if argv is made:  # a volume made but not writable: removed, so that the next launch makes it again
            _run([docker, "volume", "rm", volume])  # no --force: podman would remove a container using it
        elif argv is not create:
            _run([docker, "rm", "--force", name])
        said = _last_line(proc)
        raise NotSent(f"{_name(docker)} {verb} failed: {said}{_send_fix(docker, said, where)}")


def _copy_in(cp: list[str], rendered: Rendered) -> subprocess.CompletedProcess:
    """``docker cp - NAME:/`` of a tar of the run's spec.json (its run dir made, the launching user's) and its local
    inputs (docker.render.shipped_inputs, links followed), each at its own path, owned by the launching user (the
    container runs as them)."""
    uid, gid = os.getuid(), os.getgid()

    def own(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid, info.gid, info.uname, info.gname = uid, gid, "", ""
        return info

    proc = subprocess.Popen(
        cp, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_engine_env()
    )
    try:
        with tarfile.open(fileobj=proc.stdin, mode="w|", dereference=True) as tar:
            paths = rendered.paths
            run_dir = own(tarfile.TarInfo(str(paths.root).lstrip("/")))
            run_dir.type, run_dir.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(run_dir)
            data = rendered.files[paths.spec.name].encode()
            spec = own(tarfile.TarInfo(str(paths.spec).lstrip("/")))
            spec.size, spec.mode = len(data), 0o644
            tar.addfile(spec, io.BytesIO(data))
            for path in docker_render.shipped_inputs(rendered.spec):
                tar.add(path, arcname=path.lstrip("/"), filter=own)
    except BrokenPipeError:  # cp stopped reading: what it said is below
        pass
    except OSError as e:  # a file here that cannot be read: no container with part of the run
        proc.kill()
        proc.wait()
        return subprocess.CompletedProcess(cp, 1, "", f"{e.filename or 'an input'} cannot be read: {e.strerror or e}")
    out, err = proc.communicate()  # stdin closed: the end of the tar
    return subprocess.CompletedProcess(cp, proc.wait(), out.decode(errors="replace"), err.decode(errors="replace"))


def _copied_out(docker: str, ref: JobRef, inside: str) -> RunPaths:
    """A shipped run's CONTAINER_COPY in its run dir here, its metrics.jsonl copied out of the container where its
    trainer writes it (``inside``; ``docker cp NAME:PATH -``: a tar); the last copy where it cannot be (none yet, the
    container removed)."""
    here = RunPaths(ref.paths.root / CONTAINER_COPY)
    metrics = RunPaths(Path(inside)).metrics
    proc = subprocess.run([docker, "cp", f"{ref.job_id}:{metrics}", "-"], capture_output=True, env=_engine_env())
    if proc.returncode != 0:
        return here
    try:
        with tarfile.open(fileobj=io.BytesIO(proc.stdout)) as tar:
            member = next((m for m in tar if m.isfile()), None)
            data = tar.extractfile(member).read() if member else None
        if data is not None:
            here.root.mkdir(parents=True, exist_ok=True)
            write_whole(here.metrics, data.decode(errors="replace"))
    except (tarfile.TarError, OSError):
        pass
    return here


def _unchecked(docker: str, where: str, kind: str, rendered: Rendered) -> list[str]:
    """What a launch on an engine on another machine (``where``) cannot check from here, said instead."""
    from urllib.parse import urlsplit

    from ftctl.storage import home_credentials, job_env, s3_endpoint

    said = []
    if rendered.plan.tier:
        image = rendered.image
        picked = image is not None and image.source != "--container"  # ftctl's flavour, for the driver it can see
        said.append(
            f"{_name(docker)} runs containers on another machine ({where}): its GPUs and NVIDIA driver are not "
            "checked from here (nvidia-smi there shows them)"
            + (
                ", so the image's CUDA is not matched to that driver (--container docker:IMAGE for another)"
                if picked
                else ""
            )
            + (f"; {_PODMAN_CDI_THERE}" if kind == "podman" else "")
        )
    spec = rendered.spec
    if docker_engine.ships(docker):  # no file of this machine's is copied: credentials pass by name only
        passed = job_env(spec.remote_uris, files=False)
        files = sorted(set(job_env(spec.remote_uris, files=True)) - set(passed))
        files += [f"~/{rel}" for rel in home_credentials(spec.remote_uris)]
        if files:
            has = (
                f"the variables set here ({', '.join(passed)})"
                if passed
                else "only that machine's own (an instance role): export the store's credential variables here "
                "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY ...), which pass by name"
            )
            said.append(
                f"the object-store credentials in files here ({', '.join(files)}) are not copied into the container on "
                f"{where} (credentials pass by name only): it has {has}"
            )
    endpoint = s3_endpoint(spec.s3_endpoint_url)
    if endpoint and urlsplit(endpoint).hostname in docker_engine.LOOPBACK:
        said.append(
            f"the S3 endpoint {endpoint} is this machine's loopback, and the container on {where} reaches that "
            "machine's: give an address it reaches (-o s3_endpoint_url=http://HOST:PORT)"
        )
    return said


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, env=_engine_env())


def _last_line(proc: subprocess.CompletedProcess) -> str:
    lines = (proc.stderr or proc.stdout or "").strip().splitlines()
    return lines[-1] if lines else f"exit {proc.returncode}"


class Inspected(NamedTuple):
    word: str  # docker's status: created, running, exited ...
    code: int  # its exit code (0 until it exits)
    ran: tuple[float, float | None] | None  # when it started and (None while it runs) ended; None: not started


# '|' apart: podman prints a time as Go's time.String (2026-12-05 19:23:51.847906534 +0000 UTC), spaces in it
INSPECT_FORMAT = "{{.State.Status}}|{{.State.ExitCode}}|{{.State.StartedAt}}|{{.State.FinishedAt}}"


def _inspect(name: str, docker: str | None = None) -> Inspected | None:
    """The state of the container ``name`` (in the engine ``docker``, else this launch's), or None when there is
    none; FtctlError where the daemon does not answer (docker inspect fails then too: the container, maybe running,
    was said to be removed, and `cancel` said it had ended)."""
    docker = docker or _docker()
    proc = _run([docker, "inspect", "--format", INSPECT_FORMAT, name])
    if proc.returncode != 0:
        _daemon(docker)
        return None
    word, code, started, ended = ([f.strip() for f in proc.stdout.split("|")] + ["", "", "", ""])[:4]
    began = _unix(started)
    word = "exited" if word == "stopped" else word  # podman's word for an exited container it has not cleaned up yet
    return Inspected(word, int(code or 0), (began, _unix(ended)) if began is not None else None)


def _unix(when: str) -> float | None:
    """docker's RFC 3339 time (2026-12-04T10:11:12.123456789Z) or podman's (Go's time.String: 2026-12-04 10:11:12.123456789
    +0000 UTC) as a Unix time; None for their zero time (never)."""
    found = re.fullmatch(r"(\d{4}-\d\d-\d\d)[T ](\d\d:\d\d:\d\d)(\.\d+)?(?:Z| ?([+-]\d\d):?(\d\d))(?: \S+)?", when)
    if not found or found[1].startswith("0001-"):
        return None
    zone = f"{found[4]}:{found[5]}" if found[4] else "+00:00"
    return datetime.fromisoformat(f"{found[1]}T{found[2]}{(found[3] or '')[:7]}{zone}").timestamp()
