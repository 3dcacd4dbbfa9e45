"""The Slurm backend: the rendered sbatch script submitted from the run directory.

The image, without --container: ``image:`` in the user's config, else the newest image ``ftctl build``
recorded for the run's GPUs; ``slurm_container:`` in the config says how it runs. ``apptainer`` (the
default): a recorded .sif first (``apptainer exec --nv FILE``: it must be on the shared filesystem),
else a pushed image (``apptainer exec --nv docker://REF``). ``pyxis``: a pushed image or ``image:``
(``srun --container-image=REGISTRY#NAME:TAG``). A local-only docker build is never used here (the
nodes cannot pull it). Without one (or with ``--container none`` / ``image: none``) the job runs the
torchrun and ftctl of the submitting environment, on the shared filesystem, as before.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import click

from ftctl import gpus as gpu_table
from ftctl import lease, userconfig
from ftctl.backend import (
    PREFLIGHT_KEYS,
    Backend,
    JobRef,
    JobState,
    JobStatus,
    Rendered,
    logged_step,
    recorded_jobs,
    refused_as_finished,
    resumes_from,
    run_spec,
    trained_again,
    trainer_paths_of,
    trainer_started,
    training_now,
)
from ftctl.errors import FtctlError
from ftctl.failures import error_line, last_attempt, tail
from ftctl.launch import PATH_PYTHON, container_kind, hf_caches
from ftctl.plan import PlanError, checkpoint_row
from ftctl.preflight import SAVE_GBPS, checkpoint_gb, disk_need, signal_save_s, train_seconds
from ftctl.progress import Progress
from ftctl.runpaths import SLURM_STATUS_PATTERN, START_LINE, START_SLURM_ATTEMPT, START_SLURM_JOB
from ftctl.slurm import doctor as slurm_doctor
from ftctl.slurm import render as slurm_render
from ftctl.slurm import scheduler
from ftctl.spec import FIELDS, container_as, slurm_time_s
from ftctl.storage import is_remote, size_text, storage_errors

# Slurm's words -> ftctl's states (as torchx's SLURM_STATES -> AppState)
SLURM_STATES = {
    "PENDING": JobState.PENDING,
    "CONFIGURING": JobState.PENDING,
    "REQUEUED": JobState.PENDING,
    "REQUEUE_FED": JobState.PENDING,
    "REQUEUE_HOLD": JobState.PENDING,
    "RESV_DEL_HOLD": JobState.PENDING,
    "RUNNING": JobState.RUNNING,
    "COMPLETING": JobState.RUNNING,
    "SUSPENDED": JobState.RUNNING,
    "STAGE_OUT": JobState.RUNNING,
    "SIGNALING": JobState.RUNNING,
    "RESIZING": JobState.RUNNING,
    "STOPPED": JobState.RUNNING,
    "COMPLETED": JobState.SUCCEEDED,
    "FAILED": JobState.FAILED,
    "NODE_FAIL": JobState.FAILED,
    "OUT_OF_MEMORY": JobState.FAILED,
    "TIMEOUT": JobState.FAILED,
    "BOOT_FAIL": JobState.FAILED,
    "DEADLINE": JobState.FAILED,
    "SPECIAL_EXIT": JobState.FAILED,
    "CANCELLED": JobState.CANCELLED,
    "REVOKED": JobState.CANCELLED,
    "PREEMPTED": JobState.PREEMPTED,
}


# Slurm's end time of a job is its controller's clock, a manifest's created_unix its node's: a stop checkpoint's
# manifest written just before its job ended may read a little after it (whole seconds there, NTP skew)
STOP_CLOCK_SLACK_S = 10
CANCEL_MARGIN_S = 15  # how much longer than KillWait `ftctl cancel` waits for the job to end
# a job's states while its batch script runs (it takes a signal)
RUNNING_STATES = frozenset({"RUNNING", "COMPLETING", "SUSPENDED", "CONFIGURING", "STOPPED", "SIGNALING"})

# the job script's word for how an attempt ended (the trainer's) -> the job's state, for a job Slurm has forgotten
SCRIPT_STATES = {"complete": JobState.SUCCEEDED, "failed": JobState.FAILED, "preempted": JobState.PREEMPTED}


def said_by_script(ref: JobRef) -> JobStatus | None:
    """How the job's last attempt ended, as its script wrote it in the run directory (status.JOB.ATTEMPT), for a
    job Slurm no longer remembers: one that ended over MinJobAge ago on a cluster without accounting. None where no
    attempt wrote one."""
    found = {}
    for path in Path(ref.run_dir).glob(SLURM_STATUS_PATTERN.format(job=ref.job_id, attempt="*")):
        attempt = path.name.rsplit(".", 1)[1]
        if attempt.isdigit():
            found[int(attempt)] = path
    if not found:
        return None
    last = max(found)
    try:
        word = found[last].read_text().strip()
    except OSError:
        return None
    if word not in SCRIPT_STATES:
        return None
    return JobStatus(
        SCRIPT_STATES[word],
        f"{ref.job_id} {word} (attempt {last}, as its script wrote it: Slurm no longer remembers the job)",
        own_start={START_SLURM_JOB: ref.job_id},
    )


def refuse_jobs_there(rendered: Rendered) -> None:
    """A job Slurm holds (queued or running) that was submitted from this run dir, whoever launched it: a relaunch
    there replaced the spec.json (and job.sbatch) that job reads when it starts or is requeued, so a running job went
    on with the other launch's settings. Refused before anything is written; a controller that cannot say is left to
    sbatch, which says it."""
    if not rendered.paths.root.is_dir():
        return
    try:
        jobs = scheduler.jobs_in(rendered.paths.root)
    except FtctlError:
        return
    mine = {ref.job_id for ref, _ in recorded_jobs() if ref.backend == "slurm"}  # refuse_a_second_job names these
    jobs = [j for j in jobs if j.job_id not in mine]
    if jobs:
        said = "; ".join(j.describe().replace(f" ({j.reason})", f", {j.reason}") for j in jobs)
        first = jobs[0].job_id
        raise FtctlError(
            f"Slurm job {said} was submitted from {rendered.paths.root} and reads its spec.json when it starts or is "
            f"requeued: this launch would replace it, and that job would go on with these settings. Wait for it to "
            f"end, stop it (`ftctl cancel {first}` where it was launched, or `scancel {first}`), or choose "
            f"{rendered.another_output}."
        )


# run by python3 of the PATH: exit 1 where it lacks ftctl or torch, else prints its torch's version and whether that
# build has a GPU backend (torch/version.py's cuda, hip, xpu: read, not imported: importing torch takes seconds)
_PROBE = """
import importlib.util as u, os, re, sys
t = u.find_spec('torch')
if not (t and u.find_spec('ftctl')):
    sys.exit(1)
try:
    text = open(os.path.join(os.path.dirname(t.origin), 'version.py')).read()
except OSError:
    sys.exit(0)
said = dict(re.findall(r"^(__version__|cuda|hip|xpu)\\b[^=\\n]*=\\s*(.+)$", text, re.M))
gpu = any(said.get(k, 'None').strip() != 'None' for k in ('cuda', 'hip', 'xpu'))
print(said.get('__version__', '?').strip().strip("'\\""), 'gpu' if gpu else 'cpu')
"""


def _probe_path_python() -> tuple[str | None, str | None]:
    """``python3`` of this shell's PATH and its torch's '2.13.0+cpu cpu' / '2.6.0+cu126 gpu' (_PROBE); None for the
    second where it lacks ftctl or torch, '' where its build cannot be read."""
    found = shutil.which(PATH_PYTHON)
    try:  # from / : `python3 -c` puts the working directory on sys.path, where a checkout's ftctl/ would answer
        probe = (
            subprocess.run([found, "-c", _PROBE], capture_output=True, text=True, timeout=60, cwd="/")
            if found
            else None
        )
    except (OSError, subprocess.TimeoutExpired):
        probe = None
    return found, (probe.stdout.strip() if probe is not None and probe.returncode == 0 else None)


def path_python_lacks_ftctl(probed: tuple[str | None, str | None] | None = None) -> str | None:
    """Without a container the job runs ``python3`` of the PATH sbatch exports (this shell's): where that one has
    no ftctl or torch (`.venv/bin/ftctl launch` without activating the venv), the job would fail on its node after
    the queue wait. None where it has both."""
    found, torch = probed or _probe_path_python()
    if torch is not None:
        return None
    here = Path(sys.executable).parent
    return (
        f"the job runs {PATH_PYTHON} of this shell's PATH ({found or 'none'}), which lacks ftctl or torch: activate "
        f"this environment first (source {here / 'activate'}), or add -o setup='source {here / 'activate'}' (or "
        "your cluster's module load), or pass --container."
    )


def path_python_cpu_only(probed: tuple[str | None, str | None]) -> str | None:
    """Where a GPU plan's job runs ``python3`` of this shell's PATH whose torch is a CPU-only build: it stopped on the
    GPU node after the queue wait ("torch sees no CUDA GPU here"). A warning, not a refusal: the login node's
    python may be one the nodes' setup differs from only here."""
    found, torch = probed
    version, _, build = (torch or "").partition(" ")
    if build != "cpu":
        return None
    return (
        f"the job runs {PATH_PYTHON} of this shell's PATH ({found}), whose torch {version} is a CPU-only build: on "
        "the GPU nodes it sees no GPU and stops after the queue wait. Install a CUDA build of torch there, or add "
        "-o setup lines that activate an environment with one (module load, source .../activate), or pass "
        "--container; --gpus cpu plans for CPU."
    )


# filesystems of a cluster's shared storage: a path on one is seen by the nodes
SHARED_FS = (
    "nfs",
    "nfs4",
    "lustre",
    "gpfs",
    "beegfs",
    "fhgfs",
    "ceph",
    "cephfs",
    "fuse.ceph",
    "wekafs",
    "panfs",
    "cifs",
    "smb3",
    "glusterfs",
    "fuse.glusterfs",
    "orangefs",
    "pvfs2",
    "fuse.sshfs",
    "fuse.juicefs",
    "virtiofs",
    "9p",
)
LOCAL_FS = ("tmpfs", "ramfs")  # this machine's memory: never another's
NODE_LOCAL_DIRS = ("/tmp", "/var/tmp", "/dev/shm")  # a machine's own scratch, by convention, unless mounted shared


def _mount_of(path: str) -> tuple[str, str]:
    """The mount point and filesystem type holding ``path`` (/proc/self/mountinfo's longest prefix); ('', '') where
    it cannot be read."""
    best = ("", "")
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                sep = fields.index("-")
                point = fields[4].encode().decode("unicode_escape")  # \040 for a space
                if (path + "/").startswith(point.rstrip("/") + "/") and len(point) >= len(best[0]):
                    best = (point, fields[sep + 1])
    except (OSError, ValueError, IndexError):
        return ("", "")
    return best


def node_local(path: str) -> str | None:
    """Where ``path`` is on this machine's own storage, which another machine does not see: 'this machine's /tmp',
    'this machine's memory (tmpfs)'; None where it is on a shared filesystem (NFS, Lustre, GPFS ...) or cannot be
    told (a home on a local disk may be exported: not said)."""
    real = os.path.realpath(os.path.expanduser(path))
    point, fstype = _mount_of(real)
    if fstype in SHARED_FS or fstype.startswith("fuse"):  # a FUSE mount: a network one, mostly; not said
        return None
    top = next((d for d in NODE_LOCAL_DIRS if (real + "/").startswith(d + "/")), None)
    if fstype in LOCAL_FS:
        return f"this machine's memory ({fstype} at {point})" if top is None else f"this machine's {top} ({fstype})"
    return f"this machine's {top}" if top else None


def unseen_by_nodes(rendered: Rendered, report: slurm_doctor.DoctorReport) -> str | None:
    """The run's local paths (its run directory, output, data, model) that only this machine sees (node_local),
    where the job may run on other machines: the job's partition has a node that is not this host (sinfo's names and
    hostnames). Said at launch and in its dry run, with what the job does then and the flag that moves each (_UNSEEN):
    the run directory there, and Slurm cannot write the job's log (JobLaunchFailure, after the queue wait); the data
    there, and the trainer cannot read it (it said JobLaunchFailure and --output for data alone)."""
    spec = rendered.spec
    paths = {str(rendered.paths.root): "run"}
    if not is_remote(spec.output):
        paths.setdefault(os.path.abspath(os.path.expanduser(spec.output)), "output")
    for p in spec.data_paths:
        if p and not is_remote(p) and os.path.exists(os.path.expanduser(p)):
            paths.setdefault(os.path.abspath(os.path.expanduser(p)), "data")
    if os.path.isdir(os.path.expanduser(spec.model_name_or_path)):
        paths.setdefault(os.path.abspath(os.path.expanduser(spec.model_name_or_path)), "model")
    found = [(p, what, where) for p, what in paths.items() if (where := node_local(p))]
    if not found or _nodes_are_here(rendered.spec.partition, report):
        return None
    kinds = {what for _, what, _ in found}
    said = "; ".join(f"{p} ({_UNSEEN[what][0]}) is on {where}" for p, what, where in found)
    then = [why for what, (_, why, _) in _UNSEEN.items() if what in kinds]
    fix = [how for what, (_, _, how) in _UNSEEN.items() if what in kinds and how]
    it = "it" if len(found) == 1 else "them"
    return (
        f"{said}: the job's nodes do not see {it} where they are other machines, and {' and '.join(then)}. Put {it} on "
        f"a filesystem the nodes share (home, project or scratch space): {', '.join(dict.fromkeys(fix))}."
    )


# what a home directory on a cluster often may hold: NERSC's $HOME quota is 40 GB ("Large I/O operations should always
# be directed to scratch filesystems"), Compute Canada's 50 GB, TACC's 10 GB. A quota is the user's, not the
# filesystem's: the free space the output's check sees here (statfs) is the whole filesystem's, and the job's first
# save (or its model's download) stopped on "Disk quota exceeded" after the queue wait
HOME_QUOTA_GB = 40.0


def home_quota_doubt(spec, plan, home: str | None = None) -> str | None:
    """What the job writes into the launching user's home beyond HOME_QUOTA_GB: its checkpoints (a local --output
    there: preflight.disk_need, as the output's own check counts them) and its model's download (a hub id not in the
    cache yet, into a Hugging Face cache there: ~2 bytes a parameter). None where nothing that large goes there."""
    home = os.path.realpath(home or os.path.expanduser("~")).rstrip("/") + "/"
    if home == "/":  # no home of its own (HOME=/): nothing is said
        return None

    def in_home(path: str) -> bool:
        return (os.path.realpath(os.path.expanduser(path)) + "/").startswith(home)

    found = []
    if not is_remote(spec.output) and in_home(spec.output):
        need = disk_need(spec, plan)
        if need.gb > HOME_QUOTA_GB:
            found.append(f"{need.words} need ~{size_text(need.gb * 1e9)} in --output {spec.output}")
    model = spec.model_name_or_path
    if (
        not os.path.isdir(os.path.expanduser(model))
        and not is_remote(model)
        and 2 * plan.model.params_b > HOME_QUOTA_GB
    ):
        hf_home, apart = hf_caches({**os.environ, **spec.env})
        hub = dict(apart).get("HF_HUB_CACHE") or dict(apart).get("HUGGINGFACE_HUB_CACHE") or f"{hf_home}/hub"
        if in_home(hub):
            from ftctl.hub import cached_snapshot

            if cached_snapshot(model) is None:
                found.append(
                    f"its model downloads (~{size_text(2 * plan.model.params_b * 1e9)}) into the Hugging Face cache "
                    f"{hub}"
                )
    if not found:
        return None
    moves = (["--output DIR on project or scratch space"] if "--output" in found[0] else []) + (
        ["export HF_HOME=DIR there"] if "Hugging Face" in found[-1] else []
    )
    return (
        f"{'; '.join(found)}: that is your home ({home.rstrip('/')}), whose quota on a cluster is often 10-50 GB, "
        "which the free space seen here does not show (yours: `quota -s`, `lfs quota -u $USER ~` or the site's "
        f"`myquota`); over it, the job stops on 'Disk quota exceeded' after the queue wait: {' and '.join(moves)}."
    )


def pinned_not_cached(spec, nodes_here: bool = False) -> str | None:
    """Why the job would stop at loading its model after the queue wait: its environment is offline (HF_HUB_OFFLINE,
    this shell's, which the job runs in, or the run's own -e), and the Hugging Face cache it reads, seen here at the
    same path (a filesystem the nodes share; a node-local one such as /tmp only where every node is this machine:
    ``nodes_here``), has no whole snapshot of the commit the launch pinned (spec.model_revision). None where it has,
    the job may download it, the model is not pinned to a commit, or that cache is not seen from here (the nodes'
    own, which only they can tell: trainer.model.not_cached says it there)."""
    import shlex

    from ftctl import hub

    env = {**os.environ, **spec.env}
    model, commit = spec.model_name_or_path, spec.model_revision
    if not (commit and hub.COMMIT.match(commit) and hub.HUB_ID.match(model) and hub.offline(env)):
        return None
    if os.path.exists(os.path.expanduser(model)):
        return None
    hf_home, apart = hf_caches(env)
    var, cache = next(
        ((v, path) for v, path in apart if v in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE")),
        ("HF_HOME", os.path.join(hf_home, "hub")),
    )
    if not os.path.isdir(cache) or not os.access(cache, os.R_OK | os.X_OK) or (node_local(cache) and not nodes_here):
        return None
    if hub.cached_snapshot(model, commit, cache_dir=cache):
        return None
    snapshots = Path(cache, f"models--{model.replace('/', '--')}", "snapshots")
    others = sorted(
        p.name
        for p in (snapshots.iterdir() if snapshots.is_dir() else ())
        if p.name != commit and hub.COMMIT.match(p.name) and hub.cached_snapshot(model, p.name, cache_dir=cache)
    )
    where = f"{var}={shlex.quote(env[var])} " if env.get(var) else ""
    online = "HF_HUB_OFFLINE=0 " if hub.offline() else ""  # this shell's would keep `hf download` offline too
    other = f", or launch with -o model_revision={others[0]} (a commit that cache has)" if others else ""
    return (
        f"{model} at commit {commit}, the run's pinned model_revision, is not in the Hugging Face cache the job "
        f"reads ({cache}), and HF_HUB_OFFLINE is set for the job: it would stop at loading the model after its queue "
        f"wait. Download it there first: {online}{where}hf download {shlex.quote(model)} --revision {commit}{other}."
    )


def registry_image_note(spec) -> str | None:
    """What an ``apptainer:docker://REF`` container (ftctl's default for a pushed image where apptainer runs them) does
    on the nodes: apptainer asks the registry for the image's digest on every node of every attempt, even where its
    cache holds the image (apptainer/singularity#3741), and converts it to a SIF where the cache lacks it, before the
    trainer starts: on nodes without internet the job fails there, after the queue wait; and each node's conversion
    takes minutes for a CUDA image. A SIF pulled once on the login node does neither."""
    kind, ref = container_kind(spec)
    if kind != "apptainer" or not ref.startswith(("docker://", "oras://")):
        return None
    cache = os.environ.get("APPTAINER_CACHEDIR") or "~/.apptainer/cache"
    return (
        f"{container_as(spec, spec.container)}: apptainer asks the registry for it on every node of every attempt "
        f"(nodes without internet fail there, after the queue wait) and converts it to a SIF in {cache} where that "
        "lacks it, minutes a node for a CUDA image; pull it once on this machine (`apptainer pull ftctl.sif "
        f"{ref}`) and give {container_as(spec, 'apptainer:PATH/ftctl.sif')} (a filesystem the nodes share), or "
        "`ftctl build --apptainer`"
    )


# what each kind of path is (unseen_by_nodes), what the job does where the nodes do not see it, and the flag to move it
_UNSEEN = {
    "run": (
        "the run directory: its spec.json, job script and log",
        "Slurm cannot start the job (JobLaunchFailure, after the queue wait)",
        "--output DIR (or -o output=DIR)",
    ),
    "output": ("the output", "the trainer cannot write its checkpoints", "--output DIR (or -o output=DIR)"),
    "data": ("the data", "the trainer cannot read the data", "--data PATH"),
    "model": ("the model", "the trainer cannot load the model", "--model DIR"),
}


def _nodes_are_here(partition: str | None, report: slurm_doctor.DoctorReport) -> bool:
    """Whether every node the job may run on is this machine (a one-machine Slurm): its /tmp is theirs."""
    import socket

    here = {socket.gethostname().split(".")[0], "localhost"}
    names = [n.strip() for n in (partition or "").split(",") if n.strip()]
    parts = [p for p in report.partitions if p.name in names] if names else [p for p in report.partitions if p.default]
    nodes = [n for p in parts for n in p.nodes]
    return bool(nodes) and all((n.hostname or n.name).split(".")[0] in here for n in nodes)


def not_started(s: scheduler.JobStatus) -> str:
    """A job cancelled while it waited: queued, or requeued (an attempt of it ran, and may have saved a checkpoint)
    and not started again."""
    if not s.restarts:
        return f"{s.state}: it had not started"
    return f"{s.state} after {s.restarts} requeue{'s' if s.restarts > 1 else ''}: its next attempt had not started"


def in_store(ref: JobRef) -> list:
    """The checkpoints of a run's object-store output, complete or not, oldest first (checkpoints.list_checkpoints);
    a store that does not answer is one FtctlError line."""
    from ftctl.checkpoints import list_checkpoints

    endpoint = run_spec(ref).s3_endpoint_url
    with storage_errors(ref.output, endpoint):  # the store's own errors (botocore's ...) as one line
        return list_checkpoints(ref.output, endpoint_url=endpoint)


def kept_on_disk(ref: JobRef, listed: list) -> Path | None:
    """A checkpoint of the run newer than the store's newest committed one (of ``listed``) in the directory its trainer
    stages the run in, where this machine sees that directory (backend.trainer_paths_of: a home the nodes share): whole
    there (its manifest, or every node's: checkpoints.manifest.nodes_committed), so a relaunch on those nodes resumes
    it and sends it to the store (checkpoints.resume.latest_complete). One its node sent to the store before (resume.
    uploaded), newer than any the store holds now, is an earlier run's, never resumed (the output replaced since).
    None: no such copy seen here."""
    from ftctl.checkpoints import MANIFEST, checkpoint_step, uploaded
    from ftctl.checkpoints.manifest import nodes_committed

    try:
        root = trainer_paths_of(run_spec(ref)).root
        names = os.listdir(root)
    except (OSError, FtctlError):
        return None
    done = max((c.step for c in listed if c.complete), default=-1)
    there, sent = max((c.step for c in listed), default=-1), uploaded(str(root))
    later = [
        (step, n)
        for n in names
        if (step := checkpoint_step(n)) is not None and step > done and not (step > there and n in sent)
    ]
    for _, name in sorted(later, reverse=True):
        if (root / name / MANIFEST).is_file() or nodes_committed(str(root / name)):
            return root / name
    return None


def resumes_from_store(ref: JobRef, done: list, kept: Path | None) -> str:
    """What the same launch does with a run into object storage: resumes the store's newest committed checkpoint
    (``done``), all a fresh node has; on nodes whose disk kept a newer one (``kept``: kept_on_disk), that one."""
    if done and kept is None and (said := refused_as_finished(run_spec(ref), done[-1].uri)):
        return said
    if done:
        in_store = f"resumes it from {done[-1].name} in {ref.output}"
    else:
        in_store = f"starts it again: {ref.output} holds no committed checkpoint"
    if kept is None:
        return in_store
    return (
        f"resumes it from {kept} on nodes that share this disk (not in {ref.output} yet: it sends it there); "
        f"elsewhere {in_store}"
    )


def _unreachable(e: Exception) -> str:
    return str(e).splitlines()[0].rstrip(".") if str(e) else type(e).__name__


def goes_on(ref: JobRef) -> str:
    """': the same `ftctl launch` resumes it ...' (backend.resumes_from), for an object-store output from what the
    store holds (a fresh node has no copy of its own)."""
    if not is_remote(ref.output):
        does = resumes_from(ref)
    else:
        try:
            listed = in_store(ref)
            does = resumes_from_store(ref, [c for c in listed if c.complete], kept_on_disk(ref, listed))
        except (OSError, FtctlError) as e:
            does = f"resumes it from the newest checkpoint committed to {ref.output} ({_unreachable(e)})"
    return f": the same `ftctl launch` {does}"


def let_go(ref: JobRef) -> None:
    """Remove the lease on the ended job's object-store output where its trainer holds it (ftctl.lease.release): Slurm
    kills a trainer KillWait after the cancel's SIGTERM, before it lets go, and the same launch right after was refused
    until the lease went stale (lease.STALE_S). Another job's lease is left."""
    if is_remote(ref.output):
        lease.release(ref.output, run_spec(ref).s3_endpoint_url, lease.holder_id({"SLURM_JOB_ID": ref.job_id}))


def stop_in_store(ref: JobRef) -> str:
    """What `cancel` and `status` say of a job into an object-store output whose trainer stopped at a checkpoint
    (its status file says preempted): that checkpoint counts once the store committed it, as a relaunch on a fresh
    node resumes only what the store holds. The trainer writes preempted whether or not its upload finished (the store
    down for upload_wait_s, or Slurm's SIGKILL at KillWait after a TERM): a committed checkpoint there is the stop's
    where its manifest was written while the job's last attempt ran."""
    try:
        listed = in_store(ref)
    except (OSError, FtctlError) as e:
        return (
            f"its trainer saved a checkpoint as it stopped; whether {ref.output} holds it cannot be said now "
            f"({_unreachable(e)}): the same `ftctl launch` resumes the newest checkpoint committed there"
        )
    try:
        s = scheduler.status(ref.job_id)
        ran = (s.started, s.ended)
    except FtctlError:  # forgotten (no accounting, over MinJobAge): when its attempt ran is not known
        ran = (None, None)

    def of_the_stop(c) -> bool:  # its manifest written while the job's last attempt ran (a later job's are not)
        when = (c.manifest or {}).get("created_unix")
        if ran[0] is None:
            return True
        return isinstance(when, (int, float)) and ran[0] <= when <= (ran[1] or math.inf) + STOP_CLOCK_SLACK_S

    done = [c for c in listed if c.complete]
    kept = kept_on_disk(ref, listed)
    does = resumes_from_store(ref, done, kept)
    if any(of_the_stop(c) for c in done):
        return f"its trainer saved a checkpoint as it stopped: the same `ftctl launch` {does}"
    if kept is None:  # the nodes' disk not seen here: a relaunch resumes that copy only where that disk is
        does = f"resumes it only on nodes whose disk still holds that copy, elsewhere {does}"
    return (
        f"its trainer saved a checkpoint as it stopped, but its upload to {ref.output} did not finish (`ftctl logs "
        f"{ref.job_id}` says why): the same `ftctl launch` {does}"
    )


# the #SBATCH options a real launch says it asks for (plan_lines): what the job gets, in sbatch's own words
_ASKED = ("nodes", "gres", "cpus-per-task", "mem", "mem-per-cpu", "mem-per-gpu", "time", "partition", "account", "qos")


def plan_lines(rendered: Rendered) -> list[str]:
    """What a real launch says of its plan before sbatch, as its dry run does in full (plan.table): the method,
    GPUs and strategy, what the script asks Slurm for (its #SBATCH lines, as sent), the checkpoints' cadence with the
    predicted step time, and the plan's notes (where --mem's number comes from, the nodes' RAM it was planned for).
    A launch said only the job's id: what it had chosen was in job.sbatch alone."""
    spec, plan = rendered.spec, rendered.plan
    procs = f"{plan.world_size} process{'es' if plan.world_size > 1 else ''}"
    lines = [
        f"plan:        {plan.method} of {spec.model_name_or_path} on {plan.gpus} ({procs}): {plan.strategy}, "
        f"{plan.precision}, {plan.per_device_train_batch_size} per device x {plan.gradient_accumulation_steps} "
        f"accumulation x {plan.world_size} = {plan.global_batch_size} sequences a step"
    ]
    asked = [
        line.removeprefix("#SBATCH ")
        for line in rendered.text.splitlines()
        if line.startswith("#SBATCH --") and line[10:].partition("=")[0] in _ASKED
    ]
    lines.append(f"sbatch:      {' '.join(asked)}")
    if plan.save_steps or spec.saves_per_epoch:
        lines.append(f"saving:      {checkpoint_row(spec, plan)}")
    if seconds := train_seconds(spec, plan):  # the one estimate of a run's length (the price's, the credentials')
        epochs = f"{spec.num_train_epochs:g} epoch{'s' * (spec.num_train_epochs != 1)}"
        span = f"max_steps={spec.max_steps}" if spec.max_steps > 0 else f"{epochs} of the data, every sequence full"
        lines.append(f"time:        ~{_duration(seconds)} est. for {span}")
    return lines + [f"note: {n}" for n in plan.notes]


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{max(1, round(seconds / 60))} min"


def _memory_floor(spec, plan) -> tuple[int, str] | None:
    """The RAM the job's partition gives a job of its CPUs that asks for none (slurm_doctor.default_memory: the
    controller's answer, asked once a launch), below which its --mem is not asked; None without Slurm here."""
    if not shutil.which("sinfo"):
        return None
    return slurm_doctor.default_memory(spec.partition, slurm_render.cpus_per_task(spec, plan))


class SlurmBackend(Backend):
    name = "slurm"
    options = (
        frozenset(
            {
                "partition",
                "account",
                "qos",
                "time",
                "cpus_per_task",
                "sbatch_args",
                "signal_lead_s",
                "max_requeues",
                "container",
                "setup",
            }
        )
        | PREFLIGHT_KEYS
    )
    no_image = "the nodes run this environment's torchrun and ftctl (shared filesystem)"
    cancel_options = frozenset({"now", "wait_s"})

    def image_kinds(self) -> tuple[str, ...]:
        return ("sif", "pushed") if userconfig.load().slurm_container == "apptainer" else ("pushed",)

    def as_container(self, found) -> str:
        if found.source == "sif":
            return f"apptainer:{found.ref}"
        if userconfig.load().slurm_container == "pyxis":
            return f"pyxis:{slurm_render.pyxis_image(found.ref)}"
        return f"apptainer:docker://{found.ref}"

    def resolve(self, spec):
        """The plan for the RAM the partition's nodes have (slurm_doctor.host_memory: sinfo, the answer check() and
        estimate() then reuse) where the run does not give it (-o host_memory_gb); where the controller does not
        answer, the planner's assumption (plan.assumed_host_gb), as before. Its notes say what --mem asks for, and
        why (slurm_render.memory_request, as the script's comment says it). The partition, account, QOS and time
        a run leaves out are SBATCH_PARTITION's ... of this shell, where set, as sbatch would take them."""
        spec, taken = slurm_render.env_defaults(spec, os.environ)
        spec, plan = self._resolve(spec)
        plan.notes += taken
        spec, fitted = self._fit_cpus(spec, plan)
        plan.notes += fitted
        spec, led = self._fit_signal_lead(spec, plan)
        plan.notes += led
        if asked := slurm_render.memory_request(spec, plan, _memory_floor(spec, plan)):
            plan.notes.append(f"--mem={slurm_render.mem_size(asked[0])} a node: {asked[1]}")
        return spec, plan

    @staticmethod
    def _fit_cpus(spec, plan) -> tuple:
        """Where the run does not give -o cpus_per_task and the partition's nodes with its GPUs have fewer CPUs for
        them than the default (8 a GPU: 8 GPUs on 48-CPU nodes were refused, 'use -o cpus_per_task=48'), their share
        of a node's CPUs, and a note saying so; a CPU run's nodes (slurm_render.CPU_CPUS_PER_TASK), the CPUs as many
        nodes as the run's have; else ``spec`` as it is."""
        if spec.cpus_per_task or not shutil.which("sinfo"):
            return spec, []
        gpus = plan.gpus_per_node if plan.tier else None
        default = slurm_render.default_cpus_per_task(gpus)
        found = slurm_doctor.node_cpus(spec.partition, plan.tier, gpus or 1, plan.nodes)
        if found is None or found[0] >= default:
            return spec, []
        cpus, partition = found
        whose = f"{plan.gpus_per_node}x{plan.tier}'s share of the CPUs" if gpus else "the CPUs"
        return replace(spec, cpus_per_task=cpus), [
            f"--cpus-per-task={cpus}: {whose} of partition {partition}'s nodes ({'8 a GPU' if gpus else default} "
            "where a node has that many; -o cpus_per_task=N asks for another)"
        ]

    @staticmethod
    def _fit_signal_lead(spec, plan) -> tuple:
        """Where the run leaves signal_lead_s at its default (120 s) and its save at Slurm's USR2 takes longer (as
        preflight.check_signal_lead counts it: the step under way, then the checkpoint written, and uploaded for a
        store output, at SAVE_GBPS), the lead that save needs in whole minutes, at most half the time limit (the job
        trains between its notices: --time, else the partition's limit for a job without one), and a note; else
        ``spec`` as it is, also where that limit is not known (a lead past it would send USR2 as the job starts, and
        every attempt would save and requeue without a step; preflight's warning names the lead). An 8B fft's USR2
        came 120 s before its limit with ~317 s to save: each time-limited attempt was killed mid-save and lost the
        steps since the last checkpoint, said only in a warning."""
        default = FIELDS["signal_lead_s"].default
        if spec.gave("signal_lead_s"):  # -o signal_lead_s=120 too: the run's own lead is kept
            return spec, []
        one, _ = checkpoint_gb(plan)
        need = signal_save_s(spec, plan)
        lead = math.ceil(need / 60) * 60
        limit = slurm_time_s(spec.time) if spec.time else slurm_doctor.job_limit_s(spec.partition)
        if not limit:
            return spec, []
        lead = min(lead, limit // 2)
        if lead <= default:
            return spec, []
        return replace(spec, signal_lead_s=lead), [
            f"signal_lead_s={lead}: Slurm's USR2 comes {lead} s before the time limit, for a save of ~{need:.0f} s (a "
            f"checkpoint of ~{size_text(one * 1e9)} at {SAVE_GBPS:g} GB/s after the step under way; the default is "
            f"{default} s; -o signal_lead_s=N asks for another)"
        ]

    def _resolve(self, spec):
        if spec.host_memory_gb is not None or not spec.gpus or not shutil.which("sinfo"):
            return super().resolve(spec)
        req = gpu_table.parse(spec.gpus, spec.nodes)
        found = slurm_doctor.host_memory(spec.partition, req.tier.name if req.tier else None, req.per_node, req.nodes)
        if found is None:
            return super().resolve(spec)
        gb, where = found
        try:
            spec, plan = super().resolve(replace(spec, host_memory_gb=gb))
        except PlanError as e:  # said as if the run gave host_memory_gb: where that number came from
            raise (type(e)(f"{e} Host memory: {where}.") if "host_memory_gb" in str(e) else e) from None
        if plan.host_memory_gb or plan.tier is None:  # the RAM bounds it: an offloaded optimizer, or the CPU's
            plan.notes.append(f"host memory: {where}: planned for that (-o host_memory_gb=N plans for less)")
        return spec, plan

    def render(self, spec, plan, paths, spec_json, gres_type: str | None = None):
        text = slurm_render.render(spec, plan, gres_type, _memory_floor(spec, plan))
        return text, {paths.spec.name: spec_json, paths.sbatch.name: text}

    def check(self, rendered: Rendered) -> None:
        """Refuse what sbatch would accept but never start (more nodes, CPUs or a longer time than the partition
        has), or refuse in words that do not say what to change (no such GPUs, too few CPUs or too little RAM on
        every node); other problems are left to sbatch, in Slurm's own words (a node down now may come back).
        Where the partition names the plan's GPU type in its GRES, the script asks for that type (a100:8): only
        here, where sinfo said it, so ``ftctl render`` shows the request without it."""
        if "SBATCH_EXPORT" in os.environ and (
            why := slurm_render.export_refused(
                os.environ["SBATCH_EXPORT"], f"SBATCH_EXPORT={os.environ['SBATCH_EXPORT']}"
            )
        ):
            raise FtctlError(f"{why}; or `unset SBATCH_EXPORT` (here it overrides the script's own lines).")
        image = rendered.image
        if image and image.source == "sif" and not Path(image.ref).is_file():
            raise FtctlError(
                f"{image.ref}, the .sif `ftctl build --apptainer` recorded, is gone: build it again, or pass "
                f"--container none (or another --container)."
            )
        kind, ref = container_kind(rendered.spec)
        if kind == "apptainer" and "://" not in ref and not Path(ref).expanduser().is_file():
            raise FtctlError(
                f"{container_as(rendered.spec, rendered.spec.container)}: no such file here; the nodes run it from a "
                "filesystem they share with "
                "this machine: give its path there (or a registry's image, apptainer:docker://REF; `ftctl build "
                "--apptainer` writes a .sif)."
            )
        if not shutil.which("sinfo"):  # no Slurm here: sbatch says so (and a dry run, that nothing was checked)
            return
        refuse_jobs_there(rendered)
        in_container = kind is not None
        probed = _probe_path_python() if not in_container and not rendered.spec.setup else None
        if probed and (said := path_python_lacks_ftctl(probed)):
            raise FtctlError(said)
        spec, plan = rendered.spec, rendered.plan
        memory_gb, memory_arg = slurm_render.memory_request_gb(spec, plan) or (None, None)
        report = slurm_doctor.doctor(
            partition=spec.partition,
            nodes=plan.nodes,
            gpus_per_node=plan.gpus_per_node if plan.tier else None,
            gpu_type=plan.tier,
            memory_gb=memory_gb,
            memory_arg=memory_arg,
            cpus_per_task=slurm_render.cpus_per_task(spec, plan),
            time=spec.time,
            reuse=True,  # the answer resolve() planned the node RAM with
        )
        try:
            report.raise_if_never_runs()
        except FtctlError as e:  # a partition or time the shell's SBATCH_* gave: said, as the run did not
            taken = slurm_render.env_taken(spec, os.environ)
            raise FtctlError(f"{e} ({taken})" if taken else str(e)) from None
        if said := pinned_not_cached(spec, _nodes_are_here(spec.partition, report)):
            raise FtctlError(said)
        cpu_only = path_python_cpu_only(probed) if probed and plan.tier else None
        for doubt in [*report.doubts, *slurm_render.setup_doubts(spec), *([cpu_only] if cpu_only else [])]:
            click.echo(f"warning: {doubt}", err=True)
        requeues = slurm_render.requeue_limit(spec)
        if timed := slurm_doctor.time_doubt(report, spec.partition, spec.time, train_seconds(spec, plan), requeues):
            click.echo(f"{'warning' if timed[0] else 'note'}: {timed[1]}", err=True)
        if said := unseen_by_nodes(rendered, report):
            click.echo(f"warning: {said}", err=True)
        if said := home_quota_doubt(spec, plan):
            click.echo(f"warning: {said}", err=True)
        if said := registry_image_note(spec):
            click.echo(f"note: {said}", err=True)
        if report.gres_type:
            spec_json = rendered.files[rendered.paths.spec.name]
            rendered.text, rendered.files = self.render(spec, plan, rendered.paths, spec_json, report.gres_type)
        for var in slurm_render.env_overrides(rendered.text, os.environ):
            if said := slurm_render.env_override_note(var, os.environ[var], rendered.text):
                click.echo(f"note: {said}", err=True)

    def estimate(self, spec, plan) -> str | None:
        """A plan or dry run where the cluster cannot be asked: what could not be checked here, and why (no Slurm on
        this machine, a laptop; or a controller that does not answer: resolve()'s and check()'s sinfo, asked once)."""
        partition = f"partition {spec.partition}" if spec.partition else "the partition"
        unchecked = f"{partition}'s nodes, GPUs, CPUs, memory and time limit"
        if not shutil.which("sinfo"):
            return (
                f"note: no Slurm on this machine (sinfo is not on PATH): {unchecked} are checked where `ftctl launch` "
                "submits the job, on the cluster's login node"
            )
        report = slurm_doctor.ask(reuse=True)
        if report.reachable:
            return None
        return f"note: {unchecked} were not checked: {report.message}"

    def send(self, rendered: Rendered) -> JobRef:
        paths = rendered.paths
        # sbatch's variables of this shell that would override the script's lines (check() said them) stay out
        left_out = slurm_render.env_overrides(rendered.text, os.environ)
        env = {k: v for k, v in os.environ.items() if k not in left_out}
        job = scheduler.submit(paths.sbatch, cwd=paths.root, env=env)
        # what was submitted, once sbatch took it (a refusal stays one line), on stderr: stdout's first line is the id
        for line in plan_lines(rendered):
            click.echo(line, err=True)
        return JobRef("slurm", job, str(paths.root), rendered.spec.name, rendered.spec.output)

    def announce(self, rendered: Rendered, ref: JobRef) -> list[str]:
        return [
            f"submitted Slurm job {ref.job_id}",
            f"  run dir:     {rendered.paths.root}",
            f"  log:         {rendered.paths.slurm_log(ref.job_id)}   (ftctl logs -f {ref.job_id})",
            f"  checkpoints: {rendered.spec.output}",
        ]

    def status(self, ref: JobRef) -> JobStatus:
        try:
            s = scheduler.status(ref.job_id)
        except scheduler.NoRecord:
            said = said_by_script(ref)
            if said is None:
                raise
            return said
        note = None
        if s.reason == "JobLaunchFailure" and (where := node_local(ref.run_dir)):
            note = (
                f"Slurm could not start the job on {s.nodes or 'its node'} (JobLaunchFailure): its run dir "
                f"({ref.run_dir}, where {ref.paths.slurm_log(ref.job_id).name} is written) is on {where}, which the "
                "nodes do not see; launch it again with --output on a filesystem the nodes share (home, project or "
                "scratch space)"
            )
        elif s.reason == "JobLaunchFailure":  # its describe() leaves an ended job's reason out
            note = (
                f"Slurm could not start the job on {s.nodes or 'its node'} (JobLaunchFailure): often the run dir "
                f"({ref.run_dir}, where {ref.paths.slurm_log(ref.job_id).name} is written) is not writable there or "
                "not on a filesystem the nodes see; that node's slurmd log says why"
            )
        elif s.state == "PENDING" and (fix := scheduler.never_starts(s.reason)):
            note = (
                f"Slurm does not start a job pending for {s.reason} while it waits: {fix}. `ftctl cancel {ref.job_id}`, "
                "then launch it again with that changed"
            )
        elif s.state == "PENDING" and s.reason.startswith("JobHeld"):  # what releases it (explore61 finding 11)
            note = (
                f"{scheduler.pending_why(ref.job_id, s.reason)}; `ftctl logs -f {ref.job_id}` follows it once it starts"
            )
        elif s.state == "PENDING" and s.restarts and (why := error_line(self.log_tail(ref))):
            # requeued, its next attempt not started: its log ends with the last attempt's lines (a stop checkpoint
            # that did not reach the store, and where a copy is kept: trainer.run.say_stop)
            note = f"its attempt {s.restarts - 1} ended: {why}"
        elif s.restarts and (again := trained_again(self._log(ref))):  # a stop checkpoint that did not reach the store
            note = again
        elif s.state == "RUNNING" and s.restarts and not self._attempt_trains(ref, s):
            # a requeued attempt loading: the steps status shows are an earlier attempt's (ftctl.progress says where
            # its trainer stopped, and no time left), not this one's (explore61 finding 9)
            then = resumes_from(ref).replace("resumes it", "resumes").replace("starts it again", "starts again")
            then = f"resumes from the newest checkpoint in {ref.output}" if is_remote(ref.output) else then
            note = (
                f"attempt {s.restarts} starting: its trainer loads, then {then}; the step shown is an earlier attempt's"
            )
        elif s.state == "PENDING" and s.restarts and s.reason == "BeginTime":  # `PENDING (BeginTime)`, said no more
            then = resumes_from(ref).replace("resumes it", "its trainer resumes").replace("starts it", "it starts")
            then = f"its trainer resumes from the newest checkpoint in {ref.output}" if is_remote(ref.output) else then
            note = (
                f"requeued: Slurm starts it again by itself once a requeued job's hold is over (BeginTime: about 2 "
                f"minutes on most clusters); {then}. Nothing to do"
            )
        ran = (s.started, s.ended) if s.started is not None else None
        own = {START_SLURM_JOB: ref.job_id}  # what its trainer's start record says (a trainer of this ftctl's)
        return JobStatus(SLURM_STATES.get(s.state, JobState.UNKNOWN), s.describe(), note, ran, own)

    def _attempt_trains(self, ref: JobRef, s: scheduler.JobStatus) -> bool:
        """Whether the running attempt's own trainer started training (its start record, with its attempt); True where
        that cannot be seen here (its metrics not on this machine's disk)."""
        paths = self.trainer_paths(ref)
        if paths is None or not paths.metrics.exists():
            return True
        own = {START_SLURM_JOB: ref.job_id, START_SLURM_ATTEMPT: s.restarts}
        return trainer_started(paths, (s.started, None) if s.started else None, own)

    def logged_progress(self, ref: JobRef, running: bool = False) -> Progress | None:
        """The log's last step line, dated by the log's last write (the log is on a disk this machine shares)."""
        log = self._log(ref)
        try:
            written = log.stat().st_mtime
        except OSError:
            written = None
        return logged_step(tail(log), running, written, ref.job_id)

    def logs(self, ref: JobRef, follow: bool, lines: int | None = None) -> None:
        scheduler.logs(ref.job_id, follow=follow, path=self._log(ref), lines=lines)

    def log_tail(self, ref: JobRef) -> str:
        return tail(self._log(ref))

    def _log(self, ref: JobRef) -> Path:
        # the script writes slurm-JOB.out in the run dir; else (an --sbatch-arg=--chdir, a job of an older ftctl
        # that took --output) ask Slurm (scontrol cannot print a path holding a newline, and forgets a job after
        # MinJobAge)
        path = ref.paths.slurm_log(ref.job_id)
        return path if path.exists() else scheduler.stdout_path(ref.job_id) or path

    def cancel(self, ref: JobRef, now: bool = False, wait_s: int | None = None) -> str:
        """Ask the job's trainer for a checkpoint first, then end the job without a requeue: USR1 to its batch shell
        alone, whose trap touches the trainer's stop file (it saves at its next step boundary) and, once the trainer
        stopped at that checkpoint, cancels its own job. Waits up to ``wait_s`` (the run's signal_lead_s, the time it
        gives a checkpoint before its time limit) for the job to end; then, or with ``now``, or where there is no
        progress to keep (its trainer has not started training in this attempt), a plain scancel: Slurm kills the
        trainer KillWait after its SIGTERM, so it saves only at a step boundary that comes sooner."""
        before = scheduler.status(ref.job_id)
        if before.finished:
            return f"job {ref.job_id} had already ended: {before.describe()}"
        if before.state != "RUNNING":  # queued, or its batch script not (or no longer) running: nothing to ask
            return self._cancel_now(ref)
        why_not = "--now" if now else self._nothing_to_ask(ref, before)
        if why_not is not None:
            return self._cancel_now(ref, why_not)
        wait_s = self._checkpoint_wait_s(ref) if wait_s is None else wait_s
        try:
            if not scheduler.signal_batch(ref.job_id, slurm_render.CANCEL_SIGNAL):
                return self._ended(ref, scheduler.status(ref.job_id))
        except FtctlError as e:  # Slurm refused the signal (its batch step not up yet ...): the cancel all the same
            return self._cancel_now(ref, f"its script could not be asked for a checkpoint: {e}")
        click.echo(
            f"asked job {ref.job_id}'s trainer for a checkpoint at its next step boundary; waiting up to {wait_s} s "
            f"for it, then the job ends, not requeued (`ftctl cancel --now {ref.job_id}` cancels it at once)",
            err=True,
        )
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            s = scheduler.status(ref.job_id)
            if s.finished:
                return self._ended(ref, s)
            if s.state not in RUNNING_STATES:  # requeued meanwhile (its time limit's USR2 came first): not again
                return self._cancel_now(ref, "it was requeued meanwhile")
            time.sleep(1)
        return self._cancel_now(
            ref, f"no checkpoint within {wait_s} s (`ftctl cancel --wait SECONDS` gives its trainer longer)"
        )

    def _ended(self, ref: JobRef, s: scheduler.JobStatus) -> str:
        """What `cancel` says of a job that ended after its trainer was asked for a checkpoint."""
        if s.state == "CANCELLED":
            let_go(ref)
            return f"cancelled {ref.job_id}: {self.stop_note(ref)}"
        if s.state == "COMPLETED":
            return f"job {ref.job_id} finished training before it could stop: {s.describe()}"
        return f"job {s.describe()} as it stopped: `ftctl status {ref.job_id}` says why{self._goes_on(ref)}"

    def _nothing_to_ask(self, ref: JobRef, running: scheduler.JobStatus) -> str | None:
        """Why the job is cancelled at once rather than asked for a checkpoint first: its script has no trap for the
        request (an older ftctl rendered it: the signal would end it unsaved), or its trainer has not started training
        in this attempt (still loading: nothing since the last checkpoint to save). That is known from the directory
        the trainer writes in: a local output's run dir holds no start record of this attempt's; an object-store
        output's staging dir, where this machine shares it (a home), is held by a trainer (its lock) that wrote none;
        a staging dir not seen here (the nodes' own disks): this attempt's lines in the job's log hold no start line
        (runpaths.START_LINE, which the trainer writes with its start record). None: ask."""
        try:
            script = ref.paths.sbatch.read_text()
        except OSError:
            script = ""
        if slurm_render.CANCEL_TRAP not in script:
            return f"its script ({ref.paths.sbatch.name}, an older ftctl's) cannot ask its trainer for a checkpoint"
        own = {START_SLURM_JOB: ref.job_id, START_SLURM_ATTEMPT: running.restarts or 0}
        paths = self.trainer_paths(ref)
        if paths is None or trainer_started(paths, (running.started, None) if running.started else None, own):
            return None
        if is_remote(ref.output) and not training_now(paths) and not self._loading_by_its_log(ref, own):
            return None
        return "its trainer had not started training: nothing since the last checkpoint to save"

    def _loading_by_its_log(self, ref: JobRef, own: dict) -> bool:
        """Whether the job's log shows this attempt's lines (from its first: a longer attempt's are past the tail read)
        without its trainer's start line."""
        attempt, lines = last_attempt(self.log_tail(ref))
        return attempt == own[START_SLURM_ATTEMPT] and not any(line.startswith(START_LINE) for line in lines)

    @staticmethod
    def _checkpoint_wait_s(ref: JobRef) -> int:
        return run_spec(ref).signal_lead_s

    def _cancel_now(self, ref: JobRef, why: str | None = None) -> str:
        """scancel, then wait (bounded: Slurm's KillWait and a margin) for the job to end, to say whether its trainer
        saved a checkpoint as it stopped: it saves at its next step boundary, and Slurm kills it KillWait (30 s by
        default) after the cancel, so a step longer than that saves nothing."""
        said = f" ({why})" if why else ""
        before = scheduler.cancel(ref.job_id)
        if before.finished:
            return f"job {ref.job_id} had already ended: {before.describe()}"
        if before.state not in RUNNING_STATES:
            return f"cancelled {ref.job_id} ({not_started(before)}){self._goes_on(ref)}"
        kill_wait = scheduler.kill_wait_s()
        click.echo(
            f"cancelled job {ref.job_id} at once{said}; waiting for it to stop: its trainer saves a checkpoint at its "
            f"next step boundary, if that comes within Slurm's KillWait ({kill_wait} s)",
            err=True,
        )
        deadline = time.monotonic() + kill_wait + CANCEL_MARGIN_S
        while time.monotonic() < deadline:
            try:
                if scheduler.status(ref.job_id).finished:
                    let_go(ref)
                    return f"cancelled {ref.job_id}: {self.stop_note(ref)}"
            except FtctlError:
                break
            time.sleep(1)
        return (
            f"cancelled {ref.job_id}; it is still stopping: `ftctl status {ref.job_id}` says once it ended whether it "
            "saved a checkpoint"
        )

    def stop_note(self, ref: JobRef) -> str | None:
        """Whether the cancelled job's trainer saved a checkpoint as it stopped (its last attempt's status file says
        preempted), and where the same launch goes on from."""
        if not ref.paths.slurm_log(ref.job_id).exists():
            return f"it never started{self._goes_on(ref)}"
        attempts = sorted(
            (int(p.name.rsplit(".", 1)[1]), p)
            for p in ref.paths.root.glob(SLURM_STATUS_PATTERN.format(job=ref.job_id, attempt="*"))
            if p.name.rsplit(".", 1)[1].isdigit()
        )
        try:
            word = attempts[-1][1].read_text().strip() if attempts else ""
        except OSError:
            word = ""
        if word == "complete":
            return None
        if word == "preempted":
            if is_remote(ref.output):
                return stop_in_store(ref)
            return f"its trainer saved a checkpoint as it stopped{self._goes_on(ref)}"
        if is_remote(ref.output):  # it may have saved one on its nodes' disk, and been killed as it uploaded it
            return (
                f"no checkpoint of its stop reached {ref.output} (its trainer saves at a step boundary, then uploads, "
                f"and Slurm killed it at KillWait first, or it was not training yet){self._goes_on(ref)}"
            )
        return (
            "no checkpoint was saved as it stopped (its trainer saves at a step boundary, and Slurm killed it at "
            f"KillWait first, or it was not training yet){self._goes_on(ref)}"
        )

    @staticmethod
    def _goes_on(ref: JobRef) -> str:
        return goes_on(ref)

    def doctor(self, gpus, partition) -> bool:
        from ftctl import gpus as gpu_table

        req = gpu_table.parse(gpus) if gpus else None
        per_node = req.per_node if req and req.tier else None
        from_env = None if partition else (os.environ.get("SBATCH_PARTITION") or "").strip() or None
        partition = partition or from_env
        report = slurm_doctor.doctor(
            partition=partition,
            nodes=req.nodes if req else None,  # 2x8xH100: two nodes of eight
            gpus_per_node=per_node,
            gpu_type=req.tier.name if req and req.tier else None,
        )  # no CPU count checked: launch asks for the GPUs' share of a node's CPUs where 8 a GPU is more
        click.echo(report.format())
        if from_env:  # as a launch without --partition takes it (slurm_render.env_defaults)
            click.echo(
                f"note: partition {from_env} checked: SBATCH_PARTITION={from_env} in this shell, as a launch takes it"
            )
        return report.ok
