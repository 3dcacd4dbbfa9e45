"""One interface for every backend: render what would be sent, send it, then ask about the job.

    Backend.render(spec, plan, paths) -> (text, files)     the exact bytes; --dry-run prints them
    Backend.submit(rendered) = send(write(rendered))       as torchx's schedule(submit_dryrun())
    Backend.status / logs / cancel / down (JobRef)         against the backend that launched the job
    Backend.doctor(...)                                    what would fail, before an expensive launch
    Backend.image(spec, plan)                              the image the run uses, and why

One class per backend, each in its own package (``ftctl.local``, ``ftctl.slurm``, ``ftctl.sky``,
``ftctl.docker``), loaded only when used through :data:`REGISTRY`. Each declares the run keys it
accepts beyond the common ones (``options``); a key of another backend set to anything but its
default is refused with the accepted list, never ignored (submitit's AutoExecutor). Job states of
every backend map onto :class:`JobState`.

The image: ``--container`` when given (``none``: no image), else what the user's config gives the run
(``image:`` there, else the newest fitting image ``ftctl build`` recorded; ftctl/docker/image.py), else
the backend's own way: sky ships ftctl's source and installs it, Slurm runs this environment from the
shared filesystem, docker runs ``default_image``. :func:`prepare` writes the choice into the spec's
``container``, so the renderers and spec.json see one value; launch and render say it on stderr.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import importlib
import json
import math
import os
import re
import shlex
import shutil
import socket
import time
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import ClassVar

from ftctl import gpus as gpu_table
from ftctl import lease, userconfig
from ftctl.errors import FtctlError, NotSent
from ftctl.launch import container_kind
from ftctl.plan import Plan, checkpoint_cost, dump_run, make_plan, with_lora_targets, with_save_steps
from ftctl.progress import (
    LOGGED_STEP,  # the trainer's step line in a job's log (trained_again)
    Progress,  # a step line with its fields (StatusReport)
)
from ftctl.runpaths import METRICS_FILE, OLD_RESUME_LOCK, RunPaths, owner_of, user_name
from ftctl.spec import (
    BACKENDS,
    FIELDS,
    RUNS_HERE,
    TRAINING_KEYS,
    WHERE_SET,
    RunSpec,
    as_run,
    container_as,
    given_as,
    join_paths,
    pinned,
    resume_problem,
    split_paths,
    store_uri,
)
from ftctl.storage import is_remote, local_path, place_problem, root_output, temp_beside, write_whole

# name -> "module:class", imported on first use (importing SkyPilot alone costs seconds)
REGISTRY = {
    "local": "ftctl.local.backend:LocalBackend",
    "slurm": "ftctl.slurm.backend:SlurmBackend",
    "sky": "ftctl.sky.backend:SkyBackend",
    "docker": "ftctl.docker.backend:DockerBackend",
}
assert tuple(REGISTRY) == BACKENDS  # one list of backends (spec.BACKENDS), one table of classes


class JobState(Enum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    PREEMPTED = "PREEMPTED"  # stopped by the cluster or cloud; a relaunch resumes
    UNKNOWN = "UNKNOWN"

    @property
    def finished(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)

    @property
    def exit_code(self) -> int:
        """`ftctl status`'s exit code (STATUS_EXIT_CODES): scripts poll it."""
        return STATUS_EXIT_CODES[self]


# `ftctl status JOB`'s exit code by the job's state (cli.status's --help says them; 2 is any FtctlError: no such job,
# a scheduler that cannot be asked): 0 waiting, training or complete; 1 failed (a relaunch would fail the same way);
# 3 stopped before its end (cancelled, preempted, a local run killed: the same launch resumes it); 4 not known
STATUS_EXIT_CODES = {
    JobState.PENDING: 0,
    JobState.RUNNING: 0,
    JobState.SUCCEEDED: 0,
    JobState.FAILED: 1,
    JobState.CANCELLED: 3,
    JobState.PREEMPTED: 3,
    JobState.UNKNOWN: 4,
}


@dataclass(frozen=True)
class JobStatus:
    state: JobState
    text: str  # one line for a terminal, in the backend's own words ("42 RUNNING on node[1-2]")
    note: str | None = None  # a line more for `ftctl status`: what to do about how it ended, where the backend knows
    # when its latest attempt started and (None while it runs) ended, where the backend says: `ftctl status` shows the
    # run's steps only where a trainer started training within it (progress)
    ran: tuple[float, float | None] | None = None
    # what the "start" record of the job's own trainer holds (Slurm: its job id), where the backend knows it: the steps
    # shown are those its trainer logged; a start record that names no job falls back to ``ran`` (progress)
    own_start: dict | None = None
    # the run went on in its object-store output after this machine's trainer stopped (store_state: another machine's
    # job trains it now, or finished it): `ftctl status` shows what the store holds, not this machine's stale steps
    from_store: bool = False


@dataclass(frozen=True)
class JobRef:
    """A launched job as the registry keeps it: enough for any later status/logs/cancel."""

    backend: str
    job_id: str
    run_dir: str
    name: str
    output: str
    extra: dict = field(default_factory=dict)  # backend-specific (SkyPilot: cluster, managed)

    @property
    def paths(self) -> RunPaths:
        return RunPaths(Path(self.run_dir))


@dataclass(frozen=True)
class ImageChoice:
    """The image a run uses (``ref`` None: none) and the one line that says which and why."""

    ref: str | None
    container: str | None  # what it amounts to as --container (docker:REF, apptainer:..., pyxis:...)
    source: str  # "--container", "config", "pushed", "local", "sif", "default" or "none"
    line: str  # "image: REF (pushed by ftctl build on 2026-12-01)", "no image (why): what runs instead"


@dataclass
class Rendered:
    backend: str
    spec: RunSpec
    plan: Plan
    paths: RunPaths
    text: str  # what render prints and launch sends
    files: dict[str, str]  # written into the run dir before sending
    image: ImageChoice | None = None  # None: the backend runs no image (local)
    # a refusal's way to another output, of the spec as asked (RunSpec.another_output): its output_dir is set now
    another_output: str = "another --output"

    @property
    def run_dir(self) -> Path:
        return self.paths.root


PREFLIGHT_KEYS = frozenset({"preflight_network", "preflight_min_busbw_gbps"})  # backends that run the probe


class Backend:
    name: ClassVar[str]
    options: ClassVar[frozenset[str]] = frozenset()  # run keys of this backend (beyond the common ones)
    # what this backend has instead of another backend's run key, said where that key is refused (sky: time)
    instead: ClassVar[dict[str, str]] = {}
    needs_local_paths: ClassVar[bool] = True  # False where the job runs on machines that cannot see ours
    no_image: ClassVar[str | None] = None  # what runs when there is no image; None: this backend runs none
    # its trainer runs on this machine, in the run directory (local; `ftctl train`): one of an older ftctl there,
    # which takes no lock, is seen only by its files (held_run)
    trains_here: ClassVar[bool] = False

    # ---------------------------------------------------------------------------------- image
    def image(self, spec: RunSpec, plan: Plan) -> ImageChoice | None:
        """--container, else the user's config (:func:`ftctl.docker.image.configured`), else no image."""
        if self.no_image is None:
            return None
        _, ref = container_kind(spec)
        if spec.container:
            # where it came from: a run file's (one someone else wrote) is no --container typed here
            said = container_as(spec)
            if ref is None:
                return ImageChoice(None, None, "none", f"no image ({said} none): {self.no_image}")
            return ImageChoice(ref, spec.container, "--container", f"image: {ref} ({said})")
        from ftctl.docker.image import configured

        found = configured(plan.tier, self.image_kinds(), self.host_driver_cuda() if plan.tier else None)
        if found is None:
            why = f"ftctl build recorded none for {plan.tier or 'CPU'} runs here"
            return ImageChoice(None, None, "none", f"no image ({why}): {self.no_image}")
        if found.ref is None:
            return ImageChoice(None, None, "none", f"no image ({found.why}): {self.no_image}")
        return ImageChoice(found.ref, self.as_container(found), found.source, f"image: {found.ref} ({found.why})")

    def host_driver_cuda(self) -> tuple[int, int] | None:
        """The CUDA version the NVIDIA driver of the machine that runs the image supports, where this backend
        knows it before launch (docker: this host's); None elsewhere."""
        return None

    def image_kinds(self) -> tuple[str, ...]:
        """The kinds of ``ftctl build`` record (userconfig.WHERE) this backend can run, preferred first."""
        return ("pushed",)

    def as_container(self, found) -> str:
        """The --container value that runs the configured image ``found`` here."""
        return f"docker:{found.ref}"

    # ---------------------------------------------------------------------------------- render
    def resolve(self, spec: RunSpec) -> tuple[RunSpec, Plan]:
        """The spec with what this backend fills in, and its plan (the local backend may fall back)."""
        if not spec.gpus:
            raise FtctlError(f"--gpus is required for --backend {self.name} (e.g. --gpus 8xA100, or --gpus cpu).")
        return spec, make_plan(spec)

    def render(self, spec: RunSpec, plan: Plan, paths: RunPaths, spec_json: str) -> tuple[str, dict[str, str]]:
        """(text to print, {file name: content}) — exactly what submit writes and sends."""
        raise NotImplementedError

    # ---------------------------------------------------------------------------------- send
    def check(self, rendered: Rendered) -> None:
        """Refuse what the target would accept but never run (before anything is written)."""

    def send(self, rendered: Rendered) -> JobRef | None:
        """Hand the written run dir to the backend; a JobRef to record, or None for a foreground run."""
        raise NotImplementedError

    def announce(self, rendered: Rendered, ref: JobRef) -> list[str]:
        """What `launch` prints of a sent job (its id, run dir, logs, checkpoints), once it is recorded."""
        return []

    def submit(self, rendered: Rendered) -> JobRef | None:
        import click

        self.check(rendered)
        with launching(rendered):  # until it is recorded; a local run: until it ends (send trains in the foreground)
            refuse_a_second_job(rendered)
            put_back = write_files(rendered)
            try:
                ref = self.send(rendered)
            except NotSent:  # refused where it was sent: the run dir as it was (a job there may still read its spec)
                put_back()  # anything else (no answer, a Ctrl-C during a cloud launch) may have sent it: as written
                raise
            if ref is not None:  # recorded before anything is printed: `launch ... | head -1` closing the pipe lost it
                record_job(ref)
                for line in self.announce(rendered, ref):
                    click.echo(line)
        if rendered.image:  # once sent: a refusal stays the one line that says why
            click.echo(rendered.image.line, err=True)
        return ref

    # ---------------------------------------------------------------------------------- watch
    def status(self, ref: JobRef) -> JobStatus:
        raise FtctlError(f"{self.name} runs have no job queue: ftctl launch ran job {ref.job_id} in the foreground.")

    def state_lines(self, refs: list[JobRef]) -> list[tuple[JobState, str]]:
        """Each job's state and its state line without its id, for `ftctl jobs` (UNKNOWN, "unknown: why" where the
        backend cannot say), the jobs asked at once; a backend that can ask for them all in one call does (SkyPilot)."""
        from concurrent.futures import ThreadPoolExecutor

        def one(ref: JobRef) -> tuple[JobState, str]:
            try:
                said = self.status(ref)
            except FtctlError as e:
                return JobState.UNKNOWN, f"unknown: {str(e).splitlines()[0]}"
            return said.state, said.text.removeprefix(f"{ref.job_id} ")

        with ThreadPoolExecutor(max_workers=8) as pool:
            return list(pool.map(one, refs))

    def logs(self, ref: JobRef, follow: bool, lines: int | None = None) -> None:
        """Print the job's log (its last ``lines`` lines where given: read from its end, by the backend's own tail
        where its log lives elsewhere); with ``follow``, what it writes next until the job ends."""
        self.status(ref)

    def log_tail(self, ref: JobRef) -> str:
        """The end of the job's log (its last lines), for what `ftctl status` says of a failure; "" where none."""
        return ""

    # what `ftctl cancel` takes beyond the job here (Slurm: now, wait_s); another backend's job refuses them
    cancel_options: frozenset[str] = frozenset()

    def cancel(self, ref: JobRef, **options) -> str:
        self.status(ref)
        return ""

    def trainer_paths(self, ref: JobRef) -> RunPaths | None:
        """Where the job's trainer writes (metrics.jsonl, checkpoints, its lock), as this machine names it: the run
        directory of a local output; for an object-store output the directory it stages the run in (trainer_paths_of),
        which this machine sees only where it shares that disk (a home the nodes share). None: it cannot be named."""
        if not is_remote(ref.output):
            return ref.paths
        try:
            return trainer_paths_of(run_spec(ref))
        except (OSError, FtctlError):
            return None

    def logged_progress(self, ref: JobRef, running: bool = False) -> Progress | None:
        """The job's last logged step as its log says it (logged_step), for `ftctl status` where the trainer's
        metrics.jsonl is not seen here (``running``: the job runs now, its trainer's ETA is said); None where this
        backend's log cannot be read here."""
        return None

    def stop_note(self, ref: JobRef) -> str | None:
        """For a cancelled job: whether its trainer saved a checkpoint as it stopped, and where the same launch goes
        on; None where this backend's state line says it already."""
        return None

    def down(self, ref: JobRef) -> str:
        raise FtctlError(f"`ftctl down` tears down SkyPilot clusters; job {ref.job_id} ran on {self.name}.")

    def where_to_look(self, job_id: str) -> str | None:
        """Where a job ``job_id`` that no record here names is looked up, where it has the form of this backend's ids
        (find_job says it); None: not this backend's form."""
        return None

    def doctor(self, gpus: str | None, partition: str | None) -> bool:
        raise NotImplementedError

    def detected_gpus(self) -> str | None:
        """This machine's GPUs in --gpus form where the job runs on this machine (checked before
        launch), else None."""
        return None

    def has_gpus(self, spec: RunSpec) -> bool:
        """Whether this backend can run spec's --gpus without being asked to (only local says yes)."""
        return False

    def staging_here(self, spec: RunSpec) -> str | None:
        """The directory an object-store output is staged in before its upload, where that is this machine's disk
        (preflight.check_disk checks its room); None: the nodes' own (a Slurm node's FTCTL_CACHE, a SkyPilot VM's disk,
        which the task's disk_size holds), not seen from here."""
        return None

    def estimate(self, spec: RunSpec, plan: Plan) -> str | None:
        """Where the run would go and what it would cost, for `plan` and `launch --dry-run` (None: nothing to say)."""
        return None


def get(name: str) -> Backend:
    if name not in REGISTRY:
        from ftctl.errors import did_you_mean

        raise FtctlError(f"Unknown backend {name!r}: use one of {', '.join(REGISTRY)}.{did_you_mean(name, REGISTRY)}")
    module, _, cls = REGISTRY[name].partition(":")
    return getattr(importlib.import_module(module), cls)()


def backend_options() -> dict[str, frozenset[str]]:
    """{backend: the run keys it accepts beyond the common ones}."""
    return {name: get(name).options for name in REGISTRY}


def refuse_foreign_options(spec: RunSpec, backend: Backend, why: str = "--backend") -> None:
    """A key of another backend set to anything but its default is an error, with the accepted list; ``why`` the
    backend was chosen (choose_backend): one the user did not name is said to be the default's."""
    foreign = set().union(*backend_options().values()) - backend.options
    wrong = sorted(k for k in foreign if getattr(spec, k) != _default(k))
    if wrong:
        owners = {k: [n for n, opts in backend_options().items() if k in opts] for k in wrong}
        # the flag the user typed (--time, --sbatch-arg), else the run key (-o time=..., a run file's time:)
        said = ", ".join(f"{said_as(k)} ({'/'.join(owners[k])})" for k in wrong)
        accepted = ", ".join(sorted(backend.options)) or "none beyond the common run keys"
        if why != "--backend":
            mine = sorted({o for k in wrong for o in owners[k]})
            raise FtctlError(
                f"{', '.join(map(said_as, wrong))} {'is an option' if len(wrong) == 1 else 'are options'} of --backend {' or '.join(mine)}, and "
                f"no --backend was given, so this run goes to {backend.name} ({why}): add --backend {mine[0]}, or "
                f"remove {'it' if len(wrong) == 1 else 'them'}."
            )
        instead = "".join(f" {backend.instead[k]}." for k in wrong if k in backend.instead)
        raise FtctlError(
            f"--backend {backend.name} does not take {said}: remove {'it' if len(wrong) == 1 else 'them'}, or "
            f"choose the backend {'it belongs' if len(wrong) == 1 else 'they belong'} to.{instead} "
            f"{backend.name} accepts: {accepted}."
        )


def said_as(key: str) -> str:
    """A backend's run key as the user gave it to the command running now: the flag typed (--time, --sbatch-arg: its
    click parameter is named as the key), else the key itself (given with -o, in a run file or the config; or no
    command runs: a caller of ftctl's API)."""
    import click

    ctx = click.get_current_context(silent=True)
    for p in ctx.command.params if ctx else ():
        if isinstance(p, click.Option) and p.name == key:
            return p.opts[0] if ctx.get_parameter_source(key) is click.core.ParameterSource.COMMANDLINE else key
    return key


def _default(key: str):
    f = FIELDS[key]
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


# ------------------------------------------------------------------------------------------ launch
def launch(spec: RunSpec, dry_run: bool = False) -> JobRef | None:
    """Prepare, check everything that can be checked before anything expensive (the preflight), then
    submit; with ``dry_run`` print the findings and the exact text that would be sent, and stop."""
    import click

    from ftctl import preflight

    name, why = choose_backend(spec)
    rendered = prepare(replace(spec, backend=name), why)
    b = get(name)
    on_nodes = RunSpec(**json.loads(rendered.files[rendered.paths.spec.name])["spec"])  # as the trainer reads it
    staging = b.staging_here(rendered.spec) if is_remote(rendered.spec.output) else None
    findings = preflight.preflight(
        rendered.spec,
        rendered.plan,
        name,
        b.detected_gpus(),
        on_nodes,
        dry_run=dry_run,
        staging=staging,
        another_output=rendered.another_output,
    )
    if cost := checkpoint_cost(rendered.spec, rendered.plan):  # saving would take the run's time, or outpace uploads
        findings.append(preflight.Finding(preflight.WARNING, *cost))
    if dry_run:
        click.echo(f"backend: {name} ({why})", err=True)
        if rendered.image:
            click.echo(rendered.image.line, err=True)
        # read-only: an image missing, a daemon down, a job still there, another launch into the run under way
        for check in (b.check, refuse_a_second_job, refuse_a_launch_under_way):
            try:
                check(rendered)
            except FtctlError as e:
                findings.append(preflight.Finding(preflight.ERROR, str(e)))
        click.echo(
            rendered.plan.table(rendered.spec),
            err=True,
        )  # `ftctl plan`'s, notes too
        if findings:
            click.echo(preflight.render(findings), err=True)
        click.echo(rendered.text, nl=False)
        estimate = b.estimate(rendered.spec, rendered.plan)
        if estimate:
            click.echo(estimate, err=True)
        if errors := [f for f in findings if f.level == preflight.ERROR]:  # a dry run that would fail says so
            raise FtctlError(
                f"the launch would stop at the {len(errors)} error(s) above; the text is what it sends once fixed"
            )
        return None
    preflight.raise_if_errors(findings)
    for f in findings:
        click.echo(str(f), err=True)
    return b.submit(rendered)


# ------------------------------------------------------------------------------------------ prepare
def choose_backend(spec: RunSpec) -> tuple[str, str]:
    """(backend, why) for a run without --backend: the user's config, else the one backend whose options were given
    (--infra: sky; implied_backend), else local when this machine has the GPUs asked for (or none were named), else
    SkyPilot with a cloud enabled, else a refusal."""
    if spec.backend:
        return spec.backend, "--backend"
    name, why = _choose(spec)
    if name in RUNS_HERE and (said := resume_problem(spec.resume, here=True, output=spec.output)):
        raise FtctlError(said)  # validated before a backend was chosen: as one that runs elsewhere
    return name, why


def configured_backend() -> tuple[str, str] | None:
    """(backend, where it was set) of FTCTL_BACKEND, else of the config file's backend:; None where neither names
    one."""
    if name := os.environ.get("FTCTL_BACKEND"):
        if name not in REGISTRY:
            from ftctl.errors import did_you_mean

            raise FtctlError(
                f"FTCTL_BACKEND={name} is not a backend: set it to one of {', '.join(REGISTRY)}, or unset it."
                f"{did_you_mean(name, REGISTRY)}"
            )
        return name, "FTCTL_BACKEND"
    if configured := userconfig.load().backend:
        return configured, str(userconfig.config_path())
    return None


def _choose(spec: RunSpec) -> tuple[str, str]:
    if configured := configured_backend():
        return configured
    if implied := implied_backend(spec):
        return implied
    req = gpu_table.parse(spec.gpus or "cpu", spec.nodes)
    if req.nodes == 1 and (not spec.gpus or get("local").has_gpus(spec)):
        return "local", "this machine has the GPUs asked for" if spec.gpus else "no --gpus: this machine"
    sky_why = get("sky").available()
    if sky_why is True:
        return "sky", "this machine lacks those GPUs and SkyPilot has a cloud enabled"
    if not spec.gpus:  # --nodes 2 alone: the local backend said it runs on one machine, a backend never named
        raise FtctlError(
            f"{given_as(spec, 'nodes', req.nodes, '--nodes')} asks for {req.nodes} nodes, and this machine is one: "
            "--backend slurm, or sky (a "
            f"cloud: {sky_why}), with --gpus for each node (cpu, 8xA100 ...)."
        )
    if req.is_cpu:  # 2xcpu: nodes of one process each, as 2x8xH100 is nodes x GPUs
        said = [given_as(spec, "gpus", spec.gpus, "--gpus")] + [given_as(spec, "nodes", spec.nodes, "--nodes")] * bool(
            spec.nodes
        )
        typed = all(spec.given_in(k) in (None, "flag") for k in ("gpus", "nodes"))  # as a command line: no "and"
        raise FtctlError(
            f"{(' ' if typed else ' and ').join(said)} asks for {req.nodes} nodes of one CPU "
            f"process each, and this machine is one: here, --gpus cpu (one process); across nodes, --backend slurm or "
            f"sky (a cloud: {sky_why})."
        )
    raise FtctlError(
        f"No backend given, and this machine does not have {given_as(spec, 'gpus', spec.gpus, '--gpus')}. Choose "
        "one: --backend slurm "
        f"(a cluster), --backend sky (a cloud: {sky_why}), --backend docker, or --backend local with the GPUs "
        f"this machine has; or set backend: in {userconfig.config_path()} (or FTCTL_BACKEND)."
    )


def implied_backend(spec: RunSpec) -> tuple[str, str] | None:
    """(backend, why) where the backend options given (set to other than their defaults) are one backend's alone:
    `--infra aws` names SkyPilot as plainly as --backend sky, `--partition gpu` Slurm (such a run went to this machine
    and was refused: "add --backend sky"). None where none is given, or they fit several (--container)."""
    options = backend_options()
    given = sorted(k for k in set().union(*options.values()) if getattr(spec, k) != _default(k))
    owners = [name for name, opts in options.items() if given and set(given) <= opts]
    if len(owners) != 1:
        return None
    return owners[0], f"{', '.join(given)}: {'an option' if len(given) == 1 else 'options'} of {owners[0]} alone"


def prepare(spec: RunSpec, why: str | None = None) -> Rendered:
    """Resolve, plan and render ``spec`` for its backend: what ``render`` prints and ``launch`` sends; ``why``: how
    launch chose the backend it names (choose_backend)."""
    another = spec.another_output  # before absolute_paths sets output_dir
    name, chosen = choose_backend(spec)
    why = why or chosen
    spec = replace(spec, backend=name)
    backend = get(name)
    refuse_foreign_options(spec, backend, why)
    if said := root_output(spec.output, spec.run_name or spec.name):
        raise FtctlError(said)
    if not backend.needs_local_paths:  # before the plan, which would first ask a --model URI's size
        refuse_local_paths(spec, name)
    sized, pin = sized_at_pin(spec)  # the plan sizes the model at the commit the launch pins, where it is cached
    spec, plan = backend.resolve(sized)
    spec = with_lora_targets(spec, plan.model)[0]  # as the plan has them: spec.json's, the checkpoints' settings
    spec = with_save_steps(spec, plan)  # the save_steps the plan chose, where the run gives none: recorded the same
    image = backend.image(spec, plan)
    if image and image.container and not spec.container:
        spec = replace(spec, container=image.container)
    spec = absolute_paths(spec)  # the paths here: what the preflight reads, and what a backend ships
    paths = RunPaths(run_dir_for(spec))
    spec = pin_model(spec, pin, paths)  # the commit every node and every attempt loads: spec.json's
    spec_json = dump_run(spec, plan)
    text, files = backend.render(spec, plan, paths, spec_json)
    return Rendered(name, spec, plan, paths, text, files, image, another)


@dataclass(frozen=True)
class Pin:
    """spec.pinned's answer for a spec before its plan (sized_at_pin): the commit its hub model is pinned to and the
    line saying which, or the refusal, raised after the plan (a plan refused says only that); ``run_dir``: the run
    directory whose spec.json (a relaunch's commit) it read."""

    run_dir: Path
    answer: tuple[RunSpec, str | None] | None = None
    refused: FtctlError | None = None

    def on(self, spec: RunSpec, paths: RunPaths) -> tuple[RunSpec, str | None]:
        """``spec`` (resolved and planned) pinned as spec.pinned pins it in ``paths``, and the line: asked again
        where the run directory is another than the one asked of (a fallback to another method named it)."""
        if paths.root != self.run_dir:
            return pinned(spec, earlier_spec(paths))
        if self.refused is not None:
            raise self.refused
        return replace(spec, model_revision=self.answer[0].model_revision), self.answer[1]


def sized_at_pin(spec: RunSpec) -> tuple[RunSpec, Pin]:
    """(the spec whose model the plan sizes, its Pin). A hub model is sized at the commit the launch pins where this
    machine's Hugging Face cache holds that commit's config (the Hub's main newer than the cache's refs/main,
    ORG/NAME@v2 of a tag the cache does not name, a relaunch's commit): the plan sized the cache's main; otherwise as
    given (its main in the cache, or the Hub's config of it), as before."""
    from ftctl import hub

    paths = RunPaths(run_dir_for(spec))
    try:
        pin = Pin(paths.root, answer=pinned(spec, earlier_spec(paths)))
    except FtctlError as e:
        return spec, Pin(paths.root, refused=e)
    commit = pin.answer[0].model_revision
    if commit and commit != spec.model_revision and hub.cached_config(spec.model_name_or_path, commit):
        return replace(spec, model_revision=commit), pin
    return spec, pin


def pin_model(spec: RunSpec, pin: Pin, paths: RunPaths) -> RunSpec:
    """``spec`` with its hub model's revision resolved to the commit it is (``pin``: sized_at_pin's, for ``paths``,
    its run directory, whose spec.json's commit a relaunch keeps), the line saying which on stderr: what `plan` shows
    and launch records. A model left unpinned (no cache of it, no Hub: its nodes load main, as before) is said by
    nothing here: a line on every launch and render on a machine without the Hub, before any error, said nothing to
    act on."""
    import click

    spec, said = pin.on(spec, paths)
    if said and spec.model_revision:
        click.echo(f"note: {said}.", err=True)
    return spec


def earlier_spec(paths: RunPaths) -> dict | None:
    """The spec of the spec.json in ``paths`` (a relaunch's run directory), None where there is none to read."""
    try:
        old = json.loads(paths.spec.read_text())["spec"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return old if isinstance(old, dict) else None


def absolute_paths(spec: RunSpec) -> RunSpec:
    """Local paths made absolute, so the trainer finds them from any working directory."""

    def fix(p):
        if p is None or is_remote(p) or p.startswith("builtin:"):
            return p
        return str(Path(p).expanduser().resolve()) if (Path(p).exists() or p == spec.output) else p

    return replace(
        spec,
        data_path=join_paths(fix(p) for p in split_paths(spec.data_path)),
        eval_data_path=join_paths(fix(p) for p in split_paths(spec.eval_data_path)) or None,
        data_columns={fix(p): named for p, named in spec.data_columns.items()},  # by its dataset's path
        output_dir=fix(spec.output),
        model_name_or_path=fix(spec.model_name_or_path),
        chat_template_path=fix(spec.chat_template_path),
        # a checkpoint to resume (-o resume=runs/a/checkpoint-5): the trainer read it from the job's working
        # directory (the run dir), and a container is bound only the absolute one (slurm.render.resumed_elsewhere)
        resume=spec.resume if spec.resume in ("auto", "never") else fix(spec.resume),
    )


def refuse_local_paths(spec: RunSpec, backend: str) -> None:
    """For a backend whose machines cannot see this one's files (it ships the local inputs with the task): the output
    must be an object store, a dataset named here a file or directory to ship, and a model a directory or a Hub id."""
    from ftctl.storage import scheme

    output = spec.output
    if not is_remote(output):
        said = local_output(output, bool(spec.output_dir))
        raise FtctlError(
            f"{said}: on --backend {backend} the checkpoints would stay on the machines it starts, and go with them: "
            "give --output an object-store URI (s3://bucket/path, gs://...)."
        )
    model = spec.model_name_or_path
    if scheme(model):
        raise FtctlError(
            f"--model {model!r}: models load from a directory or a Hub id, not a URI. --backend {backend} ships a "
            "local model directory with the task: download it here and pass --model DIR; or push it to a private Hub "
            "repo and pass --model ORG/NAME --secret HF_TOKEN."
        )
    for what, p in spec.data_sources:
        if not is_remote(p) and not p.startswith("builtin:") and not Path(p).expanduser().exists():
            raise FtctlError(
                f"{what} {p!r} is a local path that is no file or directory here, and --backend {backend} ships only "
                "those with the task (for a pattern, pass its directory): check it, or use an object-store URI "
                "(s3://bucket/path, gs://...)."
            )


def local_output(output: str, given: bool) -> str:
    """How a refusal names a run's local ``output``: as --output gave it (``given``, of the spec as asked: prepare's
    has output_dir set, see Rendered.another_output), or where a run without one goes."""
    return f"--output {output!r} is a local path" if given else f"without --output the run goes to {output!r}"


def run_dir_for(spec: RunSpec) -> Path:
    """Where launch writes spec.json, the script and logs: the output dir when local, else runs/<run_name>, or
    without one runs/<name>-<digest of the output> (runs into other outputs, a sweep's, each their own: one
    directory was every such run's, and the second was refused or taken for a relaunch of the first)."""
    out = spec.output
    if not is_remote(out):
        return Path(out).expanduser().resolve()
    return (Path("runs") / (spec.run_name or f"{spec.name}-{hashlib.sha256(out.encode()).hexdigest()[:8]}")).resolve()


def write_files(rendered: Rendered):
    """Each file written whole: every one into its temp file first, then all renamed into place, so a full disk or an
    unwritable directory is one line saying so, and the run dir is left as it was (no file half-written, no spec.json
    moved aside without its successor). Over a run dir whose spec.json has other training settings:
    where it holds checkpoints of another kind of run (checkpoints.settings.KIND), or of a run on other data that
    resume=auto would silently continue (checkpoints.settings.NEW_DATA), it is refused; otherwise the
    relaunch goes ahead, says what changed and keeps the earlier spec.json in .ftctl/ (the trainer resumes the
    newest checkpoint under the new settings, or refuses one it cannot continue: checkpoints.settings).
    Returns what puts the run dir back as it was, for a launch that is then not sent (sbatch refusing it)."""
    import click

    from ftctl.checkpoints import list_checkpoints
    from ftctl.checkpoints.settings import DATA_CONTENT, KIND, NEW_DATA, content, other_data
    from ftctl.preflight import foreign_output

    paths = rendered.paths
    if said := foreign_output(paths.root, paths.root):  # `ftctl train` has no preflight: said here too
        raise FtctlError(said)
    if said := held_run(rendered.spec):  # `ftctl train` has no backend check: its spec.json replaced a training run's
        raise FtctlError(said)
    if is_remote(rendered.spec.output) and (said := inside_a_run(rendered.spec.output, rendered.spec.s3_endpoint_url)):
        click.echo(said, err=True)
    created = next((d for d in [*reversed(paths.root.parents), paths.root] if not d.exists()), None)  # the top one
    before = {name: _text_or_none(paths.name(name)) for name in rendered.files}
    keep, said, old = None, "", None
    if paths.spec.exists():
        try:
            old = json.loads(paths.spec.read_text())["spec"]
        except (ValueError, KeyError, TypeError):  # cut short by a kill or a full disk, or not ftctl's
            old = None
        if not isinstance(old, dict):
            old, keep = None, paths.earlier_spec(time.strftime("%Y%m%d-%H%M%S"))
            said = (
                f"relaunching {paths.root}, whose spec.json could not be read (cut short?; kept as {keep}): the "
                "trainer compares the settings its checkpoints were saved with"
            )
    if old is not None:
        new = json.loads(rendered.files[paths.spec.name])["spec"]
        default = RunSpec().to_dict()  # a key newer than the old spec.json: it ran with the default
        keys = [*TRAINING_KEYS, *WHERE_SET]  # (WHERE_SET's: in spec.json only where set)
        was = {k: as_run(k, old.get(k, default.get(k))) for k in keys}
        changed = sorted(k for k in keys if was[k] != as_run(k, new.get(k)))  # where it runs may change
        other = [k for k in changed if k in KIND]
        if other and list_checkpoints(str(paths.root)):
            raise FtctlError(
                f"{paths.root} holds checkpoints of a run with {', '.join(f'{k}={was[k]}' for k in other)}, which this "
                f"one cannot continue: choose {rendered.another_output}, or delete that directory first if its run is "
                "not needed."
            )
        data = [k for k in changed if k in NEW_DATA]
        held = [c for c in list_checkpoints(str(paths.root)) if c.complete] if data else []
        recorded = ((held[-1].manifest or {}).get("settings") or {}) if held else {}
        if held and data == ["data_path"] and recorded.get(DATA_CONTENT) == content(rendered.spec).get(DATA_CONTENT, 0):
            held = []  # the same files at another path (moved, another checkout): the same data (settings.compare)
        if held and rendered.spec.resume == "auto":  # a new experiment would silently continue the last one
            was_data = {k: was[k] for k in data}
            raise FtctlError(other_data(paths.root, held[-1].name, held[-1].uri, was_data, rendered.another_output))
        if changed:
            keep = paths.earlier_spec(time.strftime("%Y%m%d-%H%M%S"))
            said = f"relaunching {paths.root} with other {', '.join(changed)} (its earlier spec.json: {keep})"
    differ = {name: text for name, text in rendered.files.items() if before[name] != text}  # the same ones stay
    staged = _stage(paths, differ, keep, created)
    if keep is not None:
        os.replace(paths.spec, keep)
        click.echo(said, err=True)
    for path, tmp in staged.items():
        os.replace(tmp, path)

    def put_back() -> None:
        for name, text in before.items():
            if keep is not None and paths.name(name) == paths.spec:
                os.replace(keep, paths.spec)  # the earlier spec.json, byte for byte (one cut short too)
            elif text is None:
                paths.name(name).unlink(missing_ok=True)
            elif name in differ:
                write_whole(paths.name(name), text)
        if created:
            shutil.rmtree(created, ignore_errors=True)  # it held only what this launch wrote
        elif keep is not None:
            click.echo(f"{paths.root}: its spec.json put back (the launch was not sent)", err=True)

    return put_back


def _stage(paths: RunPaths, files: dict[str, str], keep: Path | None, created: Path | None) -> dict[Path, Path]:
    """Every file of the run written into its temp file beside it ({path: temp}), and the directory of ``keep``
    made; on a full disk (or any write refused) nothing is left of them, ``created`` removed, and one line says
    why."""
    staged: dict[Path, Path] = {}
    try:
        paths.root.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            path = paths.name(name)
            staged[path] = temp_beside(path)
            staged[path].write_text(text)
        if keep is not None:
            keep.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        for tmp in staged.values():
            tmp.unlink(missing_ok=True)
        if created:
            shutil.rmtree(created, ignore_errors=True)  # it held only what this launch wrote
        raise FtctlError(_unwritable(paths.root, e)) from e
    return staged


def _unwritable(root: Path, e: OSError) -> str:
    """The line for a run dir whose files cannot be written: a full disk with its free space, else the system's
    words."""
    from ftctl.failures import FULL
    from ftctl.storage import size_text

    if e.errno in FULL:
        try:
            free = f" ({size_text(shutil.disk_usage(_existing(root)).free)} free)"
        except OSError:
            free = ""
        return (
            f"no space left on the disk of {root}{free} to write the run's files (spec.json, the job's script): "
            "free some space there and launch again; nothing in the run dir was changed."
        )
    return f"cannot write the run's files in {root}: {e.strerror or e}" + (f" ({e.filename})" if e.filename else "")


def _existing(path: Path) -> Path:
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def _text_or_none(path: Path) -> str | None:
    try:
        return path.read_text()
    except (FileNotFoundError, UnicodeDecodeError):  # none, or not text (a spec.json cut mid-character)
        return None


def refuse_a_second_job(rendered: Rendered) -> None:
    """Refuse a launch into the run directory (or object-store output) of a job launched from here that is still
    queued or running: both would write the same checkpoints and metrics, and the new spec.json would replace the
    one the first job reads when it is requeued. Only those jobs are asked for their state. An object-store output
    whose trainer holds its lease now (ftctl.lease) is refused too, whoever launched its job (another laptop)."""
    same = [
        ref
        for ref, _ in recorded_jobs()
        if Path(ref.run_dir) == rendered.run_dir or (is_remote(ref.output) and ref.output == rendered.spec.output)
    ]
    theirs = run_dir_job(
        rendered.run_dir
    )  # a colleague's job in a lab's shared run directory, queued: not recorded here
    if theirs and not any((r.backend, r.job_id) == (theirs.backend, theirs.job_id) for r in same):
        same.append(theirs)
    for ref in same:
        if ref.backend == rendered.spec.backend == "local":  # its own check asked the run directory's lock
            continue
        try:
            state = get(ref.backend).status(ref)
        except FtctlError:  # its backend cannot say now (a cluster down): not known to be running
            continue
        if state.state in (JobState.PENDING, JobState.RUNNING):
            doing = "is queued to train" if state.state is JobState.PENDING else "is still training"
            owner = owner_of(ref.paths.slurm_log(ref.job_id)) if ref is theirs else None
            # a colleague's job is not in this user's record, and Slurm cancels only its owner's jobs
            stop = (
                f"ask {owner or 'whoever launched it'} (`ftctl status {shlex.quote(str(rendered.run_dir))}` shows it)"
                if ref is theirs
                else f"`ftctl cancel {ref.job_id}`"
            )
            raise FtctlError(
                f"job {ref.job_id}{f' of {owner}' if owner else ''} ({ref.backend}: "
                f"{state.text.removeprefix(f'{ref.job_id} ')}) {doing} into {ref.output}; a second job there would "
                f"write the same checkpoints. Wait for it, {stop}, or choose {rendered.another_output}."
            )
    if rendered.spec.backend != "local":  # the local backend's own check asked it
        refuse_a_held_run_dir(rendered)
    # a job launched from elsewhere
    if said := lease.refusal(rendered.spec.output, rendered.spec.s3_endpoint_url, rendered.another_output):
        raise FtctlError(said)


def refuse_a_held_run_dir(rendered: Rendered) -> None:
    """A run directory whose trainer holds its lock now (trainer.run.only_trainer: a flock on the shared disk, which
    the kernel lets go when the trainer's process ends, however it ends), whoever launched it (another FTCTL_HOME or
    machine, a colleague, sbatch by hand): refused before the launch writes anything there. The second job was
    refused by that lock only once it ran, after its launch had replaced the spec.json the first job resumes from
    when requeued. A lock left by a job that ended is not held: the relaunch goes ahead."""
    if holder := training_now(trainer_paths_of(rendered.spec)):
        raise FtctlError(
            f"{rendered.spec.output} is being trained into by {holder} (a job launched from elsewhere, or by hand): "
            "launching into it now would replace the spec.json that job resumes from when it is requeued. Wait for it "
            "to end, stop it (`ftctl cancel JOB` where it was launched, or `scancel JOB` on Slurm), or give this run "
            f"{rendered.another_output}."
        )


def inside_a_run(output: str, endpoint_url: str | None = None) -> str | None:
    """Where the object-store ``output`` lies inside another run's output (a prefix above it holds that run's
    spec.json or checkpoint-N): refused (FtctlError) where it is one of that run's own names (checkpoint-N, a hidden
    one), which that run's retention and relaunches delete; otherwise the warning line to say (that run's `ftctl sync
    pull` downloads this run as its own files, and a delete of its prefix takes this run along). None where no prefix
    above is a run's, or the store cannot be asked now (its other checks say so). One listing per prefix level."""
    import posixpath
    import re

    from ftctl import storage
    from ftctl.checkpoints.manifest import CHECKPOINT_PREFIX
    from ftctl.runpaths import SPEC_FILE

    top, _, rest = output.partition("://")
    parts = rest.strip("/").split("/")
    for depth in range(2, len(parts)):  # s3://bkt/a/b: s3://bkt/a
        outer = f"{top}://{'/'.join(parts[:depth])}"
        try:
            fs, path = storage.filesystem(outer, endpoint_url, quick=True)
            names = {posixpath.basename(n.rstrip("/")) for n in fs.ls(path, detail=False)}
        except Exception:  # noqa: BLE001 — no store answer: nothing known here (preflight says why)
            return None
        steps = sorted(n for n in names if re.fullmatch(re.escape(CHECKPOINT_PREFIX) + r"\d+", n))
        if SPEC_FILE not in names and not steps:
            continue
        held = f"its {SPEC_FILE}" if SPEC_FILE in names else steps[-1]
        beside = shlex.quote(f"{top}://{'/'.join(parts[: depth - 1] + ['-'.join(parts[depth - 1 :])])}")
        inner = parts[depth]
        if inner.startswith(".") or re.fullmatch(re.escape(CHECKPOINT_PREFIX) + r"\d+", inner):
            what = (
                "its hidden files (lease, records)"
                if inner.startswith(".")
                else f"a {CHECKPOINT_PREFIX}N that has no manifest"
            )
            raise FtctlError(
                f"--output {output} is inside the output of another run, {outer} ({held} is there), as its {inner}: "
                f"that run's retention, leases and relaunches write and delete {what} there, this run's files with "
                f"them. Give a prefix beside it: --output {beside}"
            )
        return (
            f"warning: --output {output} is inside the output of another run, {outer} ({held} is there): `ftctl sync "
            f"pull {shlex.quote(outer)}` downloads this run with that one's files, and deleting that run's prefix "
            f"deletes this one; a prefix beside it keeps them apart (--output {beside})."
        )
    return None


def held_run(spec: RunSpec) -> str | None:
    """The refusal of a run whose trainer holds its lock now (trainer.run.only_trainer), whoever started it, or, for
    a run trained on this machine (Backend.trains_here: a local launch, `ftctl train`), whose trainer of an ftctl
    from before that lock may still train (trainer.trained.unlocked_trainer, what `ftctl status` says of it): both
    trainers then rotated each other's checkpoints away. None where none does."""
    from ftctl.trainer.trained import UNLOCKED_RECENT_S, unlocked_trainer

    paths = trainer_paths_of(spec)
    if holder := training_now(paths):
        return (
            f"{spec.output} is being trained into by {holder}: a second run there would write the same checkpoints. "
            f"Wait for it to end, stop it (`ftctl cancel {shlex.quote(spec.output)}` saves a checkpoint first), or give this run "
            "another --output."
        )
    if (
        (old := unlocked_trainer(paths, RunPaths(run_dir_for(spec))))
        and spec.backend in REGISTRY
        and get(spec.backend).trains_here
    ):
        stop = f"`kill -TERM {old.pid}`" if old.pid else "find its process (`ps -ef | grep ftctl`) and `kill -TERM` it"
        return (
            f"{spec.output} may still be training ({old.said}): a second trainer there would rotate its checkpoints "
            f"away. Wait for it to end or stop it ({stop}: it saves a checkpoint at its next step), then relaunch; "
            f"if it has ended, relaunch once {METRICS_FILE} is {UNLOCKED_RECENT_S // 60} min old, or now after "
            f"`rm {shlex.quote(str(paths.root / OLD_RESUME_LOCK))}` (that ftctl's lock file: no ftctl since reads it)."
        )
    return None


# where a launch into an object-store output holds it (its run directories are each working directory's own)
LAUNCHING_DIR = "launching"


@contextlib.contextmanager
def launching(rendered: Rendered, command: str = "ftctl launch"):
    """Held by one `ftctl launch` (or `ftctl train`) of a run from its checks until its job is recorded, and by a
    local run's until it ends: a second launch into the same run directory or object-store output, from another
    terminal, the same sweep script, another ftctl home or another user of this machine (or of a cluster's shared
    disk), is refused at once. Its trainer's lock (training_now) refused it only once that trainer had started: until
    then both launches passed their checks, the second replaced the spec.json the first's trainer then read (it
    trained with the other's settings) and left its own refusal in the first's records. The run directory's lock is
    in the run directory (RunPaths.launch_lock), which every launch into it shares; an object-store output's is in
    ftctl's home (home_file), as is a run directory's on a file system without locks."""
    output = rendered.spec.output
    with contextlib.ExitStack() as held:
        if not held.enter_context(_run_dir_launch_lock(rendered, command)):
            if lock := _launch_lock(_launch_lock_path(str(rendered.run_dir)), output, command, rendered.another_output):
                held.enter_context(lock)
        if is_remote(output) and (
            lock := _launch_lock(_launch_lock_path(output), output, command, rendered.another_output)
        ):
            held.enter_context(lock)
        yield


@contextlib.contextmanager
def _run_dir_launch_lock(rendered: Rendered, command: str):
    """The run directory's launch lock, held: True; False where it cannot be (a file system without locks, a run
    directory this user cannot write: write_files says so). The directories it makes for it are removed again where
    the launch fails with nothing else written in them: a refused launch leaves no run directory behind."""
    from ftctl.preflight import foreign_output

    paths = rendered.paths
    if said := foreign_output(paths.root, paths.root):  # before .ftctl/ makes it look like a run's
        raise FtctlError(said)
    path = paths.launch_lock
    made = [d for d in (path.parent, *path.parent.parents) if not d.exists()]  # the deepest first
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        made = []
    fh = _launch_lock(path, rendered.spec.output, command, rendered.another_output)
    if fh is None:
        _remove_empty(made)
        yield False
        return
    try:
        yield True
    except BaseException:  # refused or not sent (or a run that ended: sys.exit, where its files stay)
        if made and os.listdir(path.parent) == [path.name]:  # it made them and wrote nothing else: removed, while held
            path.unlink()
            _remove_empty(made)
        raise
    finally:
        fh.close()


def _remove_empty(dirs: list[Path]) -> None:
    for d in dirs:
        try:
            d.rmdir()
        except OSError:  # something else was written there since: kept
            return


def _launch_lock(path: Path, output: str, command: str, another: str = "another --output", tries: int = 5):
    """The open file of the launch lock ``path``, held (flock) and naming this process; None where locks cannot be
    taken (an unwritable directory: write_files or the jobs record says so; a file system without locks): the
    trainer's lock still refuses a second run. FtctlError naming the holder where another launch holds it (a dry
    run's look, an instant long, is waited for: up to a quarter of a second); ``another``: its way to another output
    (Rendered.another_output)."""
    from ftctl.runpaths import open_lock, still_locked

    for attempt in range(tries):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fh = open_lock(path)  # another user's in a shared run directory: read-only, a lock all the same
        except FileNotFoundError:  # its directory removed meanwhile by a failed launch into a new run directory
            continue
        except OSError:
            return None
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = fh.read().strip()
            fh.close()
            if attempt == tries - 1:
                raise FtctlError(_launched_into(output, holder, another)) from None
            time.sleep(0.05)
            continue
        except OSError:
            fh.close()
            return None
        if not still_locked(fh, path):  # removed by the failed launch that held it: a new one is the lock
            fh.close()
            continue
        if fh.writable():
            fh.seek(0)
            fh.truncate()
            fh.write(
                f"`{command}` (pid {os.getpid()} on {socket.gethostname()} by {user_name()} since "
                f"{time.strftime('%Y-%m-%d %H:%M:%S %z')})\n"
            )
            fh.flush()
        return fh
    return None


def _launch_lock_path(key: str) -> Path:
    return home_file(LAUNCHING_DIR) / f"{hashlib.sha256(key.encode()).hexdigest()[:20]}.lock"


LAUNCHED_BY = re.compile(r"`(ftctl (?:launch|train))` \(pid ")  # the holder's line _launch_lock writes


def launched_by(run_dir: str | Path) -> str | None:
    """The command that last launched a run into ``run_dir`` here, `ftctl launch` or `ftctl train`, as its launch lock
    names it (_launch_lock: the run directory's, else the one in ftctl's home; kept after the run); None where neither
    did: a trainer run by hand (`python -m ftctl.trainer`, torchrun), a run of an older ftctl."""
    for path in (RunPaths(Path(run_dir)).launch_lock, _launch_lock_path(str(run_dir))):
        try:
            with open(path) as fh:
                line = fh.readline()
        except OSError:
            continue
        if m := LAUNCHED_BY.match(line):
            return m[1]
    return None


def same_command(run_dir: str | Path) -> str:
    """'the same `ftctl train`': what resumes a local run in ``run_dir``, named as it was started (launched_by); both
    where that is not recorded."""
    by = launched_by(run_dir)
    return f"the same `{by}`" if by else "the same `ftctl launch` or `ftctl train`"


def _launched_into(output: str, holder: str, another: str) -> str:
    return (
        f"{output} is being launched into by {holder or 'another ftctl'}: a second run there would write the same "
        f"checkpoints and replace the spec.json that run trains with. Wait for it to end (or stop it), or give this run "
        f"{another}."
    )


def refuse_a_launch_under_way(rendered: Rendered) -> None:
    """What launching would refuse, asked without taking it (`launch --dry-run`)."""
    output = rendered.spec.output
    looks = [rendered.paths.launch_lock, _launch_lock_path(str(rendered.run_dir))]
    for path in looks + ([_launch_lock_path(output)] if is_remote(output) else []):
        try:
            fh = open(path)
        except OSError:  # none: no launch ever held it
            continue
        with fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                raise FtctlError(_launched_into(output, fh.read().strip(), rendered.another_output)) from None
            except OSError:  # no locks on this file system: not known
                continue


# ------------------------------------------------------------------------------------------ jobs
def home_file(name: str) -> Path:
    """A file of ftctl's own home ($FTCTL_HOME, else ~/.ftctl): the jobs launched from here, what a backend keeps."""
    return Path(os.environ.get("FTCTL_HOME", Path.home() / ".ftctl")) / name


def _jobs_file() -> Path:
    return home_file("jobs.jsonl")


def record_job(ref: JobRef) -> None:
    """One line for ``ref`` at the end of the jobs record, on a line of its own: after a line a crash or a full disk
    cut short (no newline), this one was joined to it and lost with it (`ftctl status JOB`: no such job). Under a lock,
    so that launches at once (a sweep) neither tear nor lose each other's lines. Where the record cannot be written
    (a home that is not writable or not there, as some clusters' service accounts and containers have; a FTCTL_HOME
    a lab shares, made by a colleague under umask 022) one line says so and the launch goes on: it was a traceback
    after sbatch had queued the job (then unrecorded, and the launch said it failed), and before a local run trained."""
    f = _jobs_file()
    line = json.dumps({**dataclasses.asdict(ref), "time": time.time()}).encode() + b"\n"
    try:
        f.parent.mkdir(parents=True, exist_ok=True)
        _append_job(f, line)
    except OSError as e:
        import click

        by_dir = " (a local run is found by its run directory still)" if ref.backend == "local" else ""
        click.echo(
            f"warning: job {ref.job_id} is not recorded in {f} ({e.strerror or e}): `ftctl jobs`, `status`, `logs` "
            f"and `cancel` here will not know it{by_dir}. Set FTCTL_HOME to a directory you can write.",
            err=True,
        )


def _append_job(f: Path, line: bytes) -> None:
    with f.open("a+b") as fh:  # appends at the end whatever the position read from
        with contextlib.suppress(OSError):  # no locks on this file system: one write() each, as before
            fcntl.flock(fh, fcntl.LOCK_EX)
        end = fh.seek(0, os.SEEK_END)
        if end:
            fh.seek(end - 1)
            if fh.read(1) != b"\n":
                line = b"\n" + line
        fh.write(line)


def _job_of(line: str | bytes) -> tuple[JobRef, float] | None:
    """The job a line of the jobs record holds, with its launch time; None for a line cut short by a crash mid-write."""
    try:
        rec = json.loads(line)
        job = str(rec.get("job_id", rec.get("job")))
        ref = JobRef(rec["backend"], job, rec["run_dir"], rec["name"], rec["output"], rec.get("extra") or {})
        return ref, float(rec.get("time") or 0)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def recorded_jobs() -> list[tuple[JobRef, float]]:
    """Every job launched from here, each once (its newest record), newest first, with its launch time. Read as bytes:
    a line that is not UTF-8 (a damaged record) is passed over as a line cut short is (`ftctl status` without JOB, and
    `ftctl jobs`, were a UnicodeDecodeError's traceback)."""
    f = _jobs_file()
    seen, out = set(), []
    for line in reversed(f.read_bytes().splitlines() if f.exists() else []):
        if (job := _job_of(line)) and (key := (job[0].backend, job[0].job_id)) not in seen:
            seen.add(key)
            out.append(job)
    return out


def _gone(ref: JobRef) -> bool:
    """Whether a job's run directory and its output are both gone from this machine (deleted or moved): never one whose
    output is in object storage, nor one recorded with a relative path (what it names depends on where ftctl runs)."""
    places = [ref.run_dir] + ([] if is_remote(ref.output) else [local_path(ref.output)])
    return len(places) == 2 and all(os.path.isabs(p) and not os.path.exists(p) for p in places)


def prune_jobs() -> str:
    """`ftctl jobs --prune`: the jobs record kept to what is read: the newest record of each job whose run directory or
    output is still here; dropped, and said: the records of jobs whose run directory and output are both gone (_gone),
    a job's older records (a local run launched again), lines cut short. Rewritten in place under the lock launches
    append under (record_job): a launch at the same time waits, and is kept."""
    f = _jobs_file()
    if not f.exists():
        return f"No jobs launched from here yet ({f}): nothing to prune."
    with f.open("r+b") as fh:
        with contextlib.suppress(OSError):  # no locks on this file system
            fcntl.flock(fh, fcntl.LOCK_EX)
        lines = fh.read().splitlines()
        seen, keep, gone, older, cut = set(), [], [], 0, 0
        for line in reversed(lines):
            if (job := _job_of(line)) is None:
                cut += bool(line.strip())
            elif (key := (job[0].backend, job[0].job_id)) in seen:
                older += 1
            elif _gone(job[0]):
                seen.add(key)
                gone.append(job[0].job_id)
            else:
                seen.add(key)
                keep.append(line)
        if not (gone or older or cut):
            return f"Nothing to prune in {f}: {len(keep)} jobs, each with its run directory or output here."
        fh.seek(0)  # written over from its start, then cut: stopped halfway, it holds every kept line still
        fh.write(b"".join(line + b"\n" for line in reversed(keep)))
        fh.truncate()
    said = []
    if gone:
        names = ", ".join(gone[:3]) + (f" and {len(gone) - 3} more" if len(gone) > 3 else "")
        said.append(f"{len(gone)} for jobs whose run directory and output are gone ({names})")
    if older:
        said.append(f"{older} superseded by a later record of the same job")
    if cut:
        said.append(f"{cut} cut short")
    return f"Dropped {len(gone) + older + cut} records from {f}: {'; '.join(said)}. Kept {len(keep)} jobs."


def find_job(job_id: str) -> tuple[Backend, JobRef]:
    """The job of that id launched from here (a local run's id is its run directory); or, for a run directory here,
    the newest job launched into it, else the local run in it (one an older ftctl trained, which recorded none)."""
    jobs = recorded_jobs()
    for ref, _ in jobs:
        if ref.job_id == str(job_id):
            return get(ref.backend), ref
    if is_remote(str(job_id)):  # an object-store output: the newest job into it, else a local run's directory here
        for ref, _ in jobs:
            if ref.output == store_uri(str(job_id)):  # its spelling as a run's output (S3://b//run/: s3://b/run)
                return get(ref.backend), ref
        for spec_file in sorted(Path("runs").glob("*/spec.json"), key=lambda f: f.stat().st_mtime, reverse=True):
            try:
                output = json.loads(spec_file.read_text())["spec"]["output_dir"]
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if output and store_uri(output) == store_uri(str(job_id)):
                return find_job(str(spec_file.parent))
    if said := place_problem(str(job_id), "JOB"):  # no job of that id, nor a place to look for its run
        raise FtctlError(f"{said} `ftctl jobs` lists the jobs launched from here.")
    given = Path(local_path(str(job_id))).expanduser()  # file:///a/b: the run directory /a/b
    for ref, _ in jobs:  # newest first
        if Path(ref.run_dir) == given.resolve():
            return get(ref.backend), ref
    if given.is_dir():  # named otherwise: on a Mac's disk (APFS, case-insensitive) runs/Lora is runs/lora
        for ref, _ in jobs:
            with contextlib.suppress(OSError):
                if os.path.samefile(ref.run_dir, given):
                    return get(ref.backend), ref
    if theirs := run_dir_job(given):  # a Slurm run another user (or FTCTL_HOME) launched: by its newest job
        return get(theirs.backend), theirs
    if RunPaths(given).spec.is_file():
        return get("local"), JobRef("local", str(job_id), str(given), given.name, str(given))
    if not given.is_absolute() and (alike := _launched_elsewhere(str(job_id), jobs)):
        raise FtctlError(
            f"No run directory {job_id} in {Path.cwd()}, and no job of that id. A run directory of that name was "
            f"launched from another directory: {alike}; give its whole path (`ftctl jobs` lists them)."
        )
    # where it runs, by the form of its id: a backend's own (SkyPilot's managed/12: `sky jobs queue`), else Slurm's
    where = next(filter(None, (get(name).where_to_look(str(job_id)) for name in REGISTRY)), "on Slurm: `squeue -j ID`")
    raise FtctlError(
        f"No job {job_id!r} was launched from here (looked in {_jobs_file()}). `ftctl jobs` lists them; "
        "`ftctl launch` prints job ids; a local run's directory is taken too. A job another user (or another "
        f"FTCTL_HOME) launched is in that record, not this one: ask them, or look it up where it runs ({where})."
    )


def run_dir_job(run_dir: str | Path) -> JobRef | None:
    """The newest Slurm job launched into ``run_dir`` (its spec.json's backend is slurm), by its log there
    (RunPaths.slurm_jobs), whoever launched it: in a lab's shared directory a colleague's run, which no record of this
    user's names. `ftctl status /scratch/lab/run` of it said "local run, stopped before the end" while the job was
    queued, and a launch into it went ahead, replacing the spec.json that job would train with. None for any other
    directory."""
    paths = RunPaths(Path(run_dir))
    try:
        spec = json.loads(paths.spec.read_text())["spec"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(spec, dict) or spec.get("backend") != "slurm" or not (jobs := paths.slurm_jobs()):
        return None
    root = str(paths.root.resolve())
    return JobRef(
        "slurm", jobs[-1], root, str(spec.get("name") or paths.root.name), str(spec.get("output_dir") or root)
    )


def _launched_elsewhere(given: str, jobs: list[tuple[JobRef, float]]) -> str | None:
    """The recorded run directories that end as ``given`` (a relative path or a run's name, typed in another directory
    than the one it was launched from, where `runs/NAME` is another directory), newest first, three at most."""
    tail = Path(given).parts
    found = [ref.run_dir for ref, _ in jobs if tail and Path(ref.run_dir).parts[-len(tail) :] == tail]
    found = list(dict.fromkeys(found))
    return ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "") if found else None


@dataclass
class JobRecord:
    """A job launched from here and the state its backend reports now: a row of `ftctl jobs`, an object of its --json
    (to_dict: the keys cli.jobs's --help lists)."""

    ref: JobRef
    launched: float | None  # when it was launched (POSIX time); None: an older record says not
    state: JobState
    state_line: str  # the backend's words without the job id ("unknown: why" where it cannot say)

    def to_dict(self) -> dict:
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.launched)) if self.launched else None
        return {
            "job": self.ref.job_id,
            "backend": self.ref.backend,
            "name": self.ref.name,
            "output": self.ref.output,
            "run_dir": self.ref.run_dir,
            "launched": at,
            "state": self.state.value,
            "state_line": self.state_line,
        }


def job_records(last: int) -> tuple[list[JobRecord], int]:
    """The newest ``last`` jobs with the state each backend reports now (the backends asked at once), and how many
    are recorded in all."""
    from concurrent.futures import ThreadPoolExecutor

    every = recorded_jobs()
    jobs = every[:last]
    by_backend: dict[str, list[int]] = {}
    for i, (ref, _) in enumerate(jobs):
        by_backend.setdefault(ref.backend, []).append(i)

    def lines_of(name: str) -> list[tuple[JobState, str]]:
        refs = [jobs[i][0] for i in by_backend[name]]
        try:
            return get(name).state_lines(refs)
        except FtctlError as e:
            return [(JobState.UNKNOWN, f"unknown: {str(e).splitlines()[0]}")] * len(refs)

    states: list[tuple[JobState, str]] = [(JobState.UNKNOWN, "")] * len(jobs)
    if by_backend:
        with ThreadPoolExecutor(max_workers=len(by_backend)) as pool:  # the backends at once
            for name, lines in zip(by_backend, pool.map(lines_of, by_backend)):
                for i, line in zip(by_backend[name], lines):
                    states[i] = line
    return [JobRecord(ref, launched or None, *said) for (ref, launched), said in zip(jobs, states)], len(every)


def jobs_table(last: int) -> str:
    """The newest ``last`` jobs, a line each with the state its backend reports now (job_records)."""
    records, every = job_records(last)
    if not records and (damaged := _damaged_lines()):
        return (
            f"No job record readable in {_jobs_file()}: {damaged} damaged line{'s' * (damaged != 1)} (not ftctl's "
            "records, or not UTF-8). `ftctl jobs --prune` drops them."
        )
    if not records:
        return (
            f"No jobs launched from here yet ({_jobs_file()}): `ftctl launch` records each job it submits to Slurm, "
            "SkyPilot or docker, and each run it trains here."
        )
    states, notes = _said_once([r.state_line for r in records])
    rows = [("JOB", "BACKEND", "OUTPUT", "LAUNCHED", "STATE")]  # the output tells runs apart, not their name
    for r, text in zip(records, states):
        when = time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(r.launched)) if r.launched else "?"
        # a local run's output is its directory, the job's id: not written out twice (one word, for awk)
        output = "=JOB" if r.ref.output == r.ref.job_id else r.ref.output
        rows.append((r.ref.job_id, r.ref.backend, output, when, text))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    table = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[4] for row in rows]
    table += [f"({i}) {note}" for i, note in enumerate(notes, 1)]
    if every > len(records):  # the older ones were left out without a word
        table.append(f"(the newest {len(records)} of {every} jobs: `ftctl jobs -n {every}` lists them all)")
    return "\n".join(table)


def _damaged_lines() -> int:
    """How many non-blank lines of the jobs record hold no job (_job_of): cut short, not UTF-8, not JSON."""
    try:
        return sum(bool(line.strip()) and _job_of(line) is None for line in _jobs_file().read_bytes().splitlines())
    except OSError:
        return 0


def _said_once(states: list[str]) -> tuple[list[str], list[str]]:
    """The jobs' state lines with what several of them say alike said once, below the table: the reason their state is
    unknown (the cluster unreachable), and what relaunches a stopped run (its last parenthesis, 'the same `ftctl
    launch` starts it again: nothing was saved': same_command's words). Returns (the lines, the notes numbered in
    them as "(N below)")."""

    def split(text: str) -> tuple[str, str]:
        if text.startswith("unknown: "):
            return "unknown", text.removeprefix("unknown: ")
        head, paren, hint = text.rpartition(" (")
        return (head, hint[:-1]) if paren and hint.startswith("the same `") and hint.endswith(")") else (text, "")

    parts = [split(text) for text in states]
    said = [note for _, note in parts]
    notes = [note for note in dict.fromkeys(said) if note and said.count(note) > 1]
    lines = [
        f"{head} ({notes.index(note) + 1} below)" if note in notes else text
        for (head, note), text in zip(parts, states)
    ]
    return lines, notes


@dataclass
class StatusReport:
    """What `ftctl status JOB` says of a job: its lines for a terminal (lines) and, for --json, the same as fields
    (to_dict: the keys cli.status's --help lists). One record: the text and the JSON are both made from it."""

    job: str  # the job's id (an object-store output where no job into it was launched from here)
    backend: str | None  # None: no job into it was launched from here
    output: str
    state: JobState
    state_line: str  # the backend's line ("42 RUNNING on node[1-2]")
    error: str | None = None  # a failed job's error as its trainer said it (its log's ``error:`` line)
    notes: list[str] = field(default_factory=list)  # what to do about how it ended; the later job it went on in
    # its step line and the fields it says (ftctl.progress.Progress), or what its store says
    progress: Progress = field(default_factory=Progress)
    checkpoint: str | None = None  # while it trains: its newest checkpoint (what a relaunch resumes from)

    @property
    def exit_code(self) -> int:
        return self.state.exit_code

    @property
    def lines(self) -> list[str]:
        from ftctl import failures

        error = [f"{failures.ERROR_PREFIX}{self.error}"] if self.error else []
        return [
            self.state_line,
            *error,
            *self.notes,
            *self.progress.splitlines(),
            *filter(None, [self.checkpoint]),
            *self.progress.tracking.splitlines(),  # where its metrics go: W&B, TensorBoard
        ]

    def to_dict(self) -> dict:
        return {
            "job": self.job,
            "backend": self.backend,
            "output": self.output,
            "state": self.state.value,
            "exit_code": self.exit_code,
            "state_line": self.state_line,
            "error": self.error,
            "notes": self.notes,
            **self.progress.fields,
            "checkpoint": self.checkpoint,
            **self.progress.tracking.fields,
            "lines": self.lines,
        }


def status_lines(job: str) -> list[str]:
    """What `ftctl status JOB` prints (status_record)."""
    return status_record(job).lines


def status_report(job: str) -> tuple[list[str], int]:
    """What `ftctl status JOB` prints, and its exit code (status_record)."""
    said = status_record(job)
    return said.lines, said.exit_code


def status_record(job: str) -> StatusReport:
    """What `ftctl status JOB` says, and its exit code (JobState.exit_code): the backend's state line; a failed
    job's error as the trainer said it (its log's ``error:`` line, not only an exit code); the last logged step of
    its total, the time a step takes and, while it runs, the time left and its newest checkpoint (ftctl.progress),
    from its metrics.jsonl where this machine sees it, else from its log."""
    from ftctl import failures

    try:
        b, ref = find_job(job)
    except FtctlError as e:
        if not is_remote(job):
            raise
        return _stored_report(job.rstrip("/"), e)
    try:
        state = b.status(ref)
    except FtctlError as e:  # no such job (Slurm forgot it), its backend not reachable (not here): what its store holds
        if is_remote(ref.output) and (said := _stored_progress(ref.output, _endpoint(ref), step_only=False)):
            e.args = (f"{e}\nits output, {ref.output}, says: {said}",)
        raise
    report = StatusReport(ref.job_id, ref.backend, ref.output, state.state, state.text)
    if state.state is JobState.FAILED:
        report.error = failures.error_line(b.log_tail(ref)) or None
    if state.note:
        report.notes.append(state.note)
    if state.state is JobState.CANCELLED and (note := b.stop_note(ref)):
        report.notes.append(note)
    later = next((r for r, _ in recorded_jobs() if r.output == ref.output and r.run_dir == ref.run_dir), ref)
    if later.job_id != ref.job_id:  # the run goes on in the later job (and a run dir's metrics.jsonl with its steps)
        report.notes.append(f"(job {later.job_id} was launched into {ref.output} since: ftctl status {later.job_id})")
        return report
    if state.from_store:
        report.progress = _stored_progress(ref.output, _endpoint(ref))
        return report
    paths = b.trainer_paths(ref)
    metrics = paths.metrics if paths else None
    running = state.state is JobState.RUNNING
    shown = progress(ref, state.ran, state.own_start, metrics, running)
    if shown is None and is_remote(ref.output) and not (metrics and metrics.exists()):  # staged on the nodes' disks
        shown = b.logged_progress(ref, running)
    if shown is None and is_remote(ref.output) and state.state is not JobState.PENDING:
        # neither its metrics nor its log seen here (its node gone, the log not kept): what its store holds, if said
        report.progress = _stored_progress(ref.output, _endpoint(ref))
        return report
    report.progress = shown if shown is not None else Progress()  # no step logged yet: where its metrics go
    if running and shown:  # training (a step logged, not only where it logs): what a relaunch would resume from now
        from ftctl.progress import newest_checkpoint

        try:
            report.checkpoint = newest_checkpoint(
                ref.output, run_spec(ref).s3_endpoint_url, paths.root if paths else None
            )
        except (OSError, FtctlError) as e:
            report.checkpoint = f"newest checkpoint: cannot be listed now ({str(e).splitlines()[0] if str(e) else e!r})"
    return report


def _endpoint(ref: JobRef) -> str | None:
    """The run's S3 endpoint (its spec.json's), None where its run directory is not here to say."""
    try:
        return run_spec(ref).s3_endpoint_url
    except (OSError, FtctlError):
        return None


def _stored_progress(output: str, endpoint_url: str | None, step_only: bool = True) -> Progress:
    """What an object-store output's newest complete checkpoint says of the run (ftctl.progress.stored): its step line
    (``step_only``: nothing where it holds no copy of the metrics: the state's note names the checkpoint), else the
    checkpoint's; nothing ("") where the store holds none or cannot be read now (the state line is what status says
    then)."""
    from ftctl.progress import stored

    try:
        said = stored(output, endpoint_url)
    except (OSError, FtctlError):
        return Progress()
    if said is None or (step_only and said[0] is None):
        return Progress()
    return said[0] if step_only else _step_or_checkpoint(said)


def _step_or_checkpoint(said: tuple[Progress | None, str]) -> Progress:
    """ftctl.progress.stored's step line, else its checkpoint line, with where the run's metrics go where its copy
    of metrics.jsonl says it and no step was logged before the checkpoint."""
    step, checkpoint = said
    if step:
        return step
    return Progress(checkpoint, tracking=step.tracking if step is not None else None)


def _stored_report(output: str, no_job: FtctlError) -> StatusReport:
    """`ftctl status s3://.../run` where no job into it was launched from here (another machine's, a jobs record
    lost): its state is not known here (exit code 4), what its store's newest complete checkpoint says is. A store that
    holds none, or cannot be read: the error that no such job was launched from here, and why the store says nothing."""
    from ftctl.progress import stored

    try:
        said = stored(output, None)
    except (OSError, FtctlError) as e:
        why = str(e).splitlines()[0].rstrip(".") if str(e) else type(e).__name__
        raise FtctlError(f"{no_job} Nor can {output} be read now: {why}.") from None
    if said is None:
        raise FtctlError(f"{no_job} Nor does {output} hold a complete checkpoint.")
    if known := store_state(output, None):
        state, text = known
        head = f"{output} {state.value}, {text}; what its newest complete checkpoint says:"
        return StatusReport(output, None, output, state, head, progress=_step_or_checkpoint(said))
    head = (
        f"{output} UNKNOWN: no job into it was launched from here (`ftctl status JOB` where it was launched says its "
        "state); what its newest complete checkpoint says:"
    )
    # the step line names the checkpoint too
    return StatusReport(output, None, output, JobState.UNKNOWN, head, progress=_step_or_checkpoint(said))


def store_state(output: str, endpoint_url: str | None, max_steps: int = 0) -> tuple[JobState, str] | None:
    """What an object-store output itself says of its run's state, wherever its job was launched: RUNNING while a
    trainer holds its lease (ftctl.lease: a job of another machine or FTCTL_HOME), SUCCEEDED where its final model is
    saved and its newest complete checkpoint trained every step (its trainer_state's max_steps, and ``max_steps``, a
    relaunch's that extends it); each with the words that say so. None where it says neither, or cannot be read now.
    Before, a run stopped on one machine and continued or finished on another was "stopped before the end" where it
    had stopped, and "UNKNOWN" on a machine that launched no job into it."""
    from ftctl.checkpoints import list_checkpoints
    from ftctl.checkpoints.settings import TRAINER_STATE, final_saved
    from ftctl.storage import join, read_text, storage_errors

    try:
        held, _ = lease.read_tagged(output, endpoint_url)  # its age by the store's clock
    except Exception:  # noqa: BLE001 - a store not answering now: what can be read is said (lease.refusal's rule)
        held = None
    if lease.live(held):
        return JobState.RUNNING, (
            f"training: {output} is being trained into by {lease.describe(held)}, a job launched from "
            "another machine or FTCTL_HOME (`ftctl status JOB` there says more)"
        )
    try:
        with storage_errors(output, endpoint_url):
            done = [c for c in list_checkpoints(output, endpoint_url=endpoint_url) if c.complete]
            if not done or not final_saved(output, endpoint_url):
                return None
            state = json.loads(read_text(join(done[-1].uri, TRAINER_STATE), endpoint_url))
        step, total = int(state.get("global_step") or 0), int(state.get("max_steps") or 0)
    except (OSError, FtctlError, ValueError, TypeError, AttributeError):
        return None
    if total and step >= max(total, max_steps):
        return JobState.SUCCEEDED, f"complete: {output} holds its final model, trained to step {step} of {total}"
    return None


def metrics_records(metrics: Path) -> list[dict] | None:
    """The records of a run's metrics.jsonl, in order: a logged step's, an eval's, a trainer's "start" (trainer.run.
    record_start: one a trainer that started training there, in a Slurm job with its job id and attempt). The line the
    trainer is writing is left out; None where there is no file to read."""
    from ftctl.progress import records

    try:
        return records(metrics.read_text())
    except OSError:
        return None


def starts_in(metrics: Path) -> list[dict]:
    """The "start" records of a run's metrics.jsonl; [] where there is none to read. Only their lines are parsed: a
    long run's file has a row a logged step, millions of them."""
    from ftctl.progress import records

    try:
        with open(metrics, errors="replace") as lines:
            text = "".join(line for line in lines if '"start"' in line)
    except OSError:
        return []
    return [r for r in records(text) if r.get("event") == "start"]


def own_start(start: dict, ran: tuple[float, float | None] | None, own: dict | None) -> bool:
    """Whether a "start" record is a trainer of the job's: ``own`` is what such a record holds (Slurm: its job id and
    attempt); one without those keys (an older ftctl's, or a backend that names none: docker) where it was written
    within ``ran`` (when the job's latest attempt started and ended), or where neither is known."""
    if own and all(key in start for key in own):
        return all(start[key] == value for key, value in own.items())
    when = start.get("time")
    return ran is None or (isinstance(when, (int, float)) and ran[0] <= when <= (ran[1] or math.inf))


def trainer_started(paths: RunPaths, ran: tuple[float, float | None] | None, own: dict | None) -> bool:
    """Whether the job's trainer in ``paths`` (its run or staging directory, as this machine sees it) started training:
    a start record of its own there (own_start). `cancel` stops one that has not at once: a trainer still loading
    cannot save, and waiting for a checkpoint would wait the whole grace."""
    return any(own_start(start, ran, own) for start in starts_in(paths.metrics))


def progress(
    ref: JobRef,
    ran: tuple[float, float | None] | None = None,
    own: dict | None = None,
    metrics: Path | None = None,
    running: bool = False,
) -> Progress | None:
    """The run's last logged step of its total, the time a step takes and (``running``) the time left, and its last
    held-out loss, from the trainer's metrics.jsonl (``metrics``, else the run directory's) where this machine sees it
    (a local or shared output; an object-store output's staging dir where this machine shares its disk:
    Backend.trainer_paths). None: nothing yet (ftctl.progress.summary).

    Only the rows of the job's own trainers count (own_start): each "start" record begins a trainer's rows (one trains
    there at a time: the run directory's lock). None where no trainer of the job trained: the steps are another job's
    (one that held the run directory's lock, which refused this one). A metrics.jsonl without start records (an older
    ftctl's) is shown as it is."""
    from ftctl.progress import summary_of_lines

    try:
        with open(metrics or ref.paths.metrics, errors="replace") as lines:  # one at a time: a long run has millions
            return summary_of_lines(lines, lambda start: own_start(start, ran, own), running)
    except OSError:
        return None


# what a requeued attempt's trainer logs where it trains again what an earlier attempt trained: no checkpoint to resume
# (trainer.run.starts_again), a newer one passed over as incomplete or corrupted (checkpoints.resume.latest_complete)
STARTS_OVER = re.compile(r"attempt (\d+) of this job starts from step 0: ")
SKIPPED = re.compile(r"skipping (checkpoint-\d+): ")  # resume's "skipping %s%d: " of CHECKPOINT_PREFIX and the step


def trained_again(log: Path) -> str | None:
    """What `ftctl status` says of a job of which a requeued attempt trained again steps an earlier attempt had
    logged: it started from step 0, or passed over a newer checkpoint (a stop checkpoint that did not reach the store,
    kept on another node's disk). None where none did. The whole log is read (every attempt appends to it): those
    lines are at an attempt's start, which a long attempt's steps push out of its tail."""
    from ftctl.failures import attempt_started

    attempt, trained, said = 0, 0, {}
    try:
        with open(log, "rb") as f:
            for raw in f:
                line = raw.decode(errors="replace")
                if (started := attempt_started(line)) is not None:
                    attempt = started
                elif m := LOGGED_STEP.match(line):
                    trained = max(trained, int(m[1]))
                elif attempt and trained and (what := _starts_over(line, skipped=attempt in said)):
                    said[attempt] = (
                        f"attempt {attempt} {what}, after the attempts before it had trained to step {trained}"
                    )
    except OSError:
        return None
    return f"its {'; '.join(said.values())}: steps they trained were trained again" if said else None


def _starts_over(line: str, skipped: bool) -> str | None:
    """What an attempt's line says it trains again (from step 0; or after a checkpoint it passed over, where it has
    said none yet); None for any other line."""
    if STARTS_OVER.search(line):
        return "started from step 0 (no complete checkpoint to resume)"
    if not skipped and (m := SKIPPED.search(line)):
        return f"passed over {m[1]} (incomplete or corrupted)"
    return None


def logged_step(
    log_tail: str, running: bool = False, written: float | None = None, job: str | None = None
) -> Progress | None:
    """The last step line of a job's last attempt in its log, as progress says a step (ftctl.progress.logged_step:
    ``written``, the log's last write, dates it; ``job`` is named where it may be stuck); None: none there."""
    from ftctl.failures import last_attempt
    from ftctl.progress import logged_step as said

    return said(last_attempt(log_tail)[1], running, written, job=job)


def plan_for(spec: RunSpec) -> tuple[RunSpec, Plan]:
    """What `ftctl plan` shows: the backend's plan when one is named (the local backend plans for this
    machine), this machine's when no GPUs are named or --gpus cpu (its RAM, as launch checks it), else the plan
    for the GPUs asked for."""
    asked = gpu_table.parse(spec.gpus, spec.nodes) if spec.gpus else None
    sized, pin = sized_at_pin(spec)  # the model sized at the commit the launch pins, where the cache holds it
    if spec.backend or asked is None or (asked.is_cpu and asked.nodes == 1):
        spec, plan = get(spec.backend or "local").resolve(sized)
    else:
        plan = make_plan(sized)
    # a pin refused after the plan (a plan refused says only that); its model row shows the commit the launch
    # records: a relaunch's its run's (prepare's earlier_spec)
    return pin.on(spec, RunPaths(run_dir_for(spec)))[0], plan


# ------------------------------------------------------------------------------------------ a run's trainer
def trainer_paths_of(spec: RunSpec, env: dict[str, str] | None = None) -> RunPaths:
    """Where the trainer of a run writes and holds its lock: the run directory, or for an object-store output the
    directory it stages the run in (trainer.run.output_dirs). ``env``: what the trainer's environment sets that this
    one may not (docker: the container's HOME), which names that directory."""
    from ftctl.trainer.run import output_dirs

    return RunPaths(Path(output_dirs(spec, {**os.environ, **env} if env else None)[0]))


def run_spec(ref: JobRef) -> RunSpec:
    """The job's spec as its run dir's spec.json holds it; where that cannot be read, one of its output alone."""
    try:
        return RunSpec(**json.loads(ref.paths.spec.read_text())["spec"])
    except (OSError, ValueError, KeyError, TypeError, FtctlError):
        return RunSpec(output_dir=ref.output)


def resumes_from(ref: JobRef) -> str:
    """What the same launch does: 'resumes it from checkpoint-N', the newest complete checkpoint of a local output
    (one being saved when the run stopped is set aside by the relaunch), 'starts it again' where there is none;
    'resumes it' where that cannot be told here (the output is in object storage)."""
    from ftctl.checkpoints.resume import list_checkpoints

    try:
        spec = RunSpec(**json.loads(ref.paths.spec.read_text())["spec"])
        if is_remote(spec.output):
            return "resumes it"
        done = [c for c in list_checkpoints(str(ref.run_dir)) if c.complete]
    except (OSError, ValueError, KeyError, TypeError, FtctlError):
        return "resumes it"
    if not done:
        return "starts it again: nothing was saved"
    if said := refused_as_finished(spec, done[-1].uri):
        return said
    return f"resumes it from {done[-1].name}" + (f" {room}" if (room := no_room(ref.run_dir, done[-1].size)) else "")


def refused_as_finished(spec: RunSpec, newest: str) -> str | None:
    """'is refused: OUTPUT holds this run trained to step N of N ...' where the run's newest complete checkpoint
    (``newest``, local or in the store) trained every step of ``spec`` and its final model is saved: the same launch is
    refused so (preflight; checkpoints.settings.finished owns the line), a later job having finished the run since.
    None where steps are left, or where that cannot be read."""
    from ftctl import storage
    from ftctl.checkpoints.settings import TRAINER_STATE, final_saved, finished

    try:
        with storage.storage_errors(newest, spec.s3_endpoint_url):  # the store's own errors (botocore's ...) too
            state = storage.read_text(storage.join(newest, TRAINER_STATE), spec.s3_endpoint_url)
    except (OSError, FtctlError):
        return None
    if (done := finished(state, spec, None)) and final_saved(spec.output, spec.s3_endpoint_url):
        return f"is refused: {done}"
    return None


def no_room(run_dir: Path, checkpoint_bytes: int) -> str | None:
    """'once its disk has room ...' where the disk of a local run dir holds less than one more checkpoint of
    ``checkpoint_bytes`` (the run most likely stopped of it, and a relaunch would, at its next save), else None."""
    import shlex

    from ftctl.checkpoints.manifest import QUARANTINE_DIR
    from ftctl.storage import size_text

    try:
        free = shutil.disk_usage(run_dir).free
    except OSError:
        return None
    if free >= checkpoint_bytes:
        return None
    said = (
        f"once its disk has room for another checkpoint: {size_text(free)} free of the {size_text(checkpoint_bytes)} "
    )
    said += "one takes"
    quarantine = Path(run_dir, QUARANTINE_DIR)  # resume sets the saves that failed aside there, never deletes them
    if set_aside := sum(f.stat().st_size for f in quarantine.rglob("*") if f.is_file()):
        said += f"; rm -r {shlex.quote(str(quarantine))} frees {size_text(set_aside)} (the partial ones set aside)"
    return said


def training_now(paths: RunPaths) -> str | None:
    """Who trains into the run directory now (the lock's holder: "pid N on HOST since ..."), or None."""
    from ftctl.trainer.trained import held_by  # the one reader of a run's locks (`ftctl merge` asks it too)

    return held_by(paths.train_lock)
