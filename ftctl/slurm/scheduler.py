"""Slurm through its own command-line tools: submit, status, logs and cancel.

Every call runs ``sbatch`` / ``squeue`` / ``sacct`` / ``scontrol`` / ``scancel`` with an argument
list (never a shell) in the caller's environment, so ``SLURM_CONF`` reaches them when it is set.
Slurm's refusals become :class:`~ftctl.errors.FtctlError` with Slurm's own words on one line and
a hint saying what to change.

Where a finished job's state comes from, in order: ``squeue -t all`` (jobs stay in the
controller's memory for ``MinJobAge``, 300 s by default), then ``sacct`` (needs slurmdbd), then
``sacct -c`` (the jobcomp/filetxt file, when a cluster writes one).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ftctl.errors import FtctlError, NoAnswer, NotSent
from ftctl.logfile import copy_new, new_decoder, start_of_last

COMMAND_TIMEOUT_S = 60
FINISHED_STATES = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "TIMEOUT",
        "SPECIAL_EXIT",
        "REVOKED",
    }
)
# Slurm's stand-in signal of a job whose batch step its cgroup killed for memory (SIG_OOM, 253; squeue's wait status
# keeps its low seven bits: ExitCode=0:125), no signal of the kernel's: said by the state, OUT_OF_MEMORY
SIG_OOM = (125, 253)
_JOB_ID = re.compile(r"^\d+(_\d+)?$")
# stderr lines that say nothing a user can act on
_NOISE = (
    "If munged is up, restart with --num-threads",
    "slurm_send_node_msg:",
    'Try "sbatch --help"',
    'Try "squeue --help"',
    'Try "scancel --help"',
)
# (pattern in Slurm's message, hint): first match wins
_HINTS = (
    (
        "invalid partition",
        "run `ftctl doctor --backend slurm` to list this cluster's partitions, then pass --partition NAME",
    ),
    (
        "requested node configuration is not available",
        "no node of that partition has what the job asks for (GPUs, CPUs, memory), or too few are left by an "
        "--sbatch-arg's --exclude, --nodelist or --constraint for its --nodes: `ftctl doctor --backend slurm` lists "
        "what each partition has; --gpus cpu asks for no GPU",
    ),
    (  # --sbatch-arg=--constraint=X naming a feature no node has
        "invalid feature specification",
        "--constraint names a feature no node of the cluster has: `sinfo -o '%P %N %f'` lists each partition's "
        "nodes and their features",
    ),
    (
        "gres",
        "this cluster has no such GPU request: `ftctl doctor --backend slurm` lists each "
        "partition's GPUs (gres); use --gpus cpu for a CPU-only job",
    ),
    (
        "node count specification invalid",
        "ask for at most as many nodes as the partition has (`ftctl doctor --backend slurm`)",
    ),
    (  # before "time limit": its words end "user's size and/or time limits", and the partition's limit is not it
        "accounting/qos policy",
        "the limits of your account or QOS refuse it (time, GPUs, nodes, jobs at once): `sacctmgr show assoc "
        "user=$USER format=account,qos,maxtres,maxwall,maxsubmit` and `sacctmgr show qos format=name,maxwall,maxtrespu` "
        "say them; a shorter --time, fewer GPUs or nodes, or another --qos / --account",
    ),
    ("--time", "--time takes MM, HH:MM:SS or D-HH:MM:SS"),
    ("time limit", "lower --time to the partition's limit (`ftctl doctor --backend slurm`)"),
    (
        "munge",
        "the munge daemon is not running or not reachable on this host: Slurm cannot "
        "authenticate; start munged or submit from the cluster's login node",
    ),
    ("configuration file", "point SLURM_CONF at the cluster's slurm.conf"),
    ("account", "pass --account with an account you may charge (`sacctmgr show assoc user=$USER`)"),
    ("qos", "pass a QOS you may use (`sacctmgr show assoc user=$USER format=qos`)"),
)

# Slurm's words when a command never reached a controller: no configuration found (SLURM_CONF unset, no slurm.conf,
# no DNS SRV record), or a slurmctld that does not answer. Said by run_command, for every command alike.
_NO_CONFIG = "could not establish a configuration source"
_NO_ANSWER = "unable to contact slurm controller"
_UNREACHABLE = (_NO_CONFIG, _NO_ANSWER)
DEFAULT_CONF = "/etc/slurm/slurm.conf"
PING_TIMEOUT_S = 30  # scontrol ping waits MessageTimeout (10 s by default) for a controller host that is gone
ANSWER_MEMO_S = 30  # how long a process takes the controller's last answer (or silence) as still true


@dataclass(frozen=True)
class JobStatus:
    """A Slurm job as the scheduler reports it.

    ``state`` is Slurm's word (PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, TIMEOUT, ...);
    ``nodes`` is Slurm's node list (``node[1-2]``), empty while pending; ``reason`` why it waits
    or why it ended (empty when Slurm says None); ``exit_code`` / ``signal`` of the batch script
    once finished; ``restarts`` how often it was requeued (None where the source does not say);
    ``source`` which command answered; ``started`` / ``ended`` when its latest attempt started and,
    once finished, ended (seconds since the epoch; None where Slurm does not say).
    """

    job_id: str
    state: str
    nodes: str = ""
    reason: str = ""
    exit_code: int | None = None
    signal: int | None = None
    restarts: int | None = None
    source: str = "squeue"
    started: float | None = None
    ended: float | None = None

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_STATES

    def describe(self) -> str:
        """One line for a terminal: '42 RUNNING on node[1-2] (restarts 1)'."""
        text = f"{self.job_id} {self.state}"
        if self.nodes:
            text += f" on {self.nodes}"
        if self.reason and not self.finished:  # an ended job's is the last pending one's (Resources), or its state
            text += f" ({self.reason})"
        if self.finished and self.exit_code is not None:
            text += f" exit {self.exit_code}"
            if self.signal and not (self.state == "OUT_OF_MEMORY" and self.signal in SIG_OOM):
                text += f" signal {self.signal}"
        if self.restarts:
            text += f", restarts {self.restarts}"
        return text


def slurm_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment Slurm commands run in: ``env`` (a complete environment, not additions)
    or this process's; SLURM_CONF in it says which cluster."""
    return dict(os.environ if env is None else env)


def submit(script_path: str | os.PathLike, cwd: str | os.PathLike, env: Mapping[str, str] | None = None) -> str:
    """``sbatch --parsable SCRIPT`` from ``cwd``; returns the job id.

    The job starts in ``cwd`` (unless the script says ``#SBATCH --chdir``) and, as Slurm does by
    default, with the environment sbatch ran in: ``env`` or this process's, less the variables of a Slurm job it
    runs inside (:func:`outside_a_job`).
    """
    script = Path(script_path)
    env = outside_a_job(slurm_env(env))
    if not script.is_file():
        raise FtctlError(
            f"batch script {str(script)!r} does not exist; render it first (`ftctl render --backend slurm ...`)"
        )
    try:
        proc = run_command(["sbatch", "--parsable", str(script.resolve())], env, cwd=cwd)
    except NoAnswer as e:
        raise FtctlError(
            f"{e}. The job may have been submitted all the same: `squeue --me` before launching again."
        ) from None
    except FtctlError as e:  # not installed, no controller to reach: never sent
        raise NotSent(str(e)) from None
    if proc.returncode != 0:
        raise NotSent(str(command_error("sbatch", f"refused {script.name}", proc)))
    out = proc.stdout.strip().splitlines()
    job_id = out[-1].split(";")[0].strip() if out else ""
    if not _JOB_ID.match(job_id):
        raise FtctlError(
            f"sbatch printed {proc.stdout.strip()!r} instead of a job id; check that `sbatch` on PATH is Slurm's"
        )
    return job_id


# Slurm's variables a user or a site sets on purpose (input variables), kept where a job is submitted from inside one
_INPUT_VARS = frozenset(
    {
        "SLURM_CONF",
        "SLURM_TIME_FORMAT",
        "SLURM_DEBUG_FLAGS",
        "SLURM_EXIT_ERROR",
        "SLURM_EXIT_IMMEDIATE",
        "SLURM_MPI_TYPE",
    }
)


def outside_a_job(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` without the variables Slurm set for the job or step it was read in (``ftctl launch`` in an salloc,
    an ``srun --pty bash`` or a job script): sbatch passes the submitting environment to the job (--export=ALL), and
    there the outer job's SLURM_MEM_PER_CPU beside the job's own SLURM_MEM_PER_NODE (srun: "mutually exclusive"), its
    SLURM_CPU_BIND masks, SLURM_NTASKS, SLURM_GPUS... made the job's srun fail or run another shape, and its
    SLURM_RESTART_COUNT made a first attempt count as a requeued one. Outside a job, as it is."""
    environ = dict(environ)
    if not (environ.get("SLURM_JOB_ID") or environ.get("SLURM_JOBID")):
        return environ
    return {
        k: v
        for k, v in environ.items()
        if k in _INPUT_VARS or not k.startswith(("SLURM_", "SLURMD_", "SRUN_", "SBATCH_MEM_BIND"))
    }


def status(job_id: str, env: Mapping[str, str] | None = None) -> JobStatus:
    """The job's state: squeue while the controller remembers it, then sacct, then sacct -c."""
    job_id = _check_id(job_id)
    found = _squeue_status(job_id, env)
    if found is None:
        found = _sacct_status(job_id, env)
    if found is None:
        raise NoRecord(
            f"Slurm has no record of job {job_id}: it is not in squeue and this "
            "cluster keeps no accounting for it (sacct); check the job id "
            "(`squeue --me`)"
        )
    return found


# why a job is pending (squeue's reason) that does not clear while it waits, and what to change: Slurm leaves such a job
# queued without saying it never starts (a QOS's MaxWall below --time, without DenyOnLimit)
_NEVER_STARTS = (
    (
        "PartitionTimeLimit",
        "its --time is over the partition's limit: a shorter --time (`ftctl doctor --backend slurm`)",
    ),
    (
        "MaxWallDuration",
        "its --time is over what your QOS or account allows one job (`sacctmgr show qos format=name,maxwall`): a "
        "shorter --time, or a --qos that allows it",
    ),
    (
        "PerJob",
        "it asks for more GPUs, CPUs, nodes or memory than your QOS or account allows one job (`sacctmgr show assoc "
        "user=$USER format=account,qos,maxtres`): fewer (--gpus, --nodes), or another --qos / --account",
    ),
    ("PartitionNodeLimit", "its node count is outside the partition's limits: --nodes, or another --partition"),
    (
        "MaxMemPerLimit",
        "its memory a node is over the partition's MaxMemPerNode or MaxMemPerCPU (`scontrol show partition`): less "
        "(-o host_memory_gb=GB plans within it; --sbatch-arg=--mem=SIZE), or another --partition",
    ),
    (
        "PartitionConfig",
        "no node of its partition has what it asks for (`ftctl doctor --backend slurm`): --gpus, --nodes, "
        "-o cpus_per_task, or another --partition",
    ),
    ("InvalidAccount", "Slurm does not take its account: --account (`sacctmgr show assoc user=$USER format=account`)"),
    ("InvalidQOS", "Slurm does not take its QOS: --qos (`sacctmgr show assoc user=$USER format=qos`)"),
    ("BadConstraints", "no node has the features its --constraint asks for"),
    ("DependencyNeverSatisfied", "a job it waits for ended so that it never starts"),
)


def never_starts(reason: str) -> str | None:
    """What to change for a job pending for ``reason`` (squeue's), where Slurm does not start it while it waits; None
    for a reason that clears (Resources, Priority, a group limit of jobs running now: QOSMaxGRESPerUser ...)."""
    word = reason.split(",")[0].strip()
    if word.startswith(("QOSMax", "AssocMax")) and not word.endswith(("PerJob", "PerJobLimit")):
        return None  # per user or per account now: clears as other jobs end
    return next((fix for key, fix in _NEVER_STARTS if key in word), None)


# why a queued job waits (squeue's reason), as its user reads it: what lets a held one start, what a wait is for
_WAITS_FOR = {
    "JobHeldUser": "held (sbatch --hold, or scontrol hold): `scontrol release {job}` lets it start",
    "JobHeldAdmin": "held by an administrator, who alone can release it",
    "BeginTime": "it starts at its --begin time (a requeued job: once Slurm's hold after a requeue is over, about 2 "
    "minutes)",
    "Dependency": "it waits for the jobs its --dependency names",
    "DependencyNeverSatisfied": "its --dependency can never be met (a job it waits for ended otherwise): `ftctl "
    "cancel {job}`, or `scontrol update JobId={job} Dependency=` to drop it",
    "Resources": "it waits for nodes with what it asks for to be free",
    "Priority": "jobs ahead of it in the queue start first",
}


def pending_why(job_id: str, reason: str) -> str | None:
    """Why a job pending for ``reason`` waits, and what lets it start (a held job: `scontrol release JOB`); where
    Slurm never starts it while it waits, what to change (never_starts); None for a reason not known here."""
    if fix := never_starts(reason):
        return f"Slurm does not start it while it waits: {fix}"
    why = _WAITS_FOR.get(reason.split(",")[0].strip())
    return why.format(job=job_id) if why else None


def jobs_in(directory: str | os.PathLike, env: Mapping[str, str] | None = None) -> list[JobStatus]:
    """Slurm's queued and running jobs (of any user it lists) that were submitted from ``directory``, their working
    directory: ftctl submits from the run dir, so these are the jobs that read its spec.json when they start or are
    requeued, whoever launched them (another FTCTL_HOME, a colleague, sbatch by hand). ``reason`` holds the user."""
    proc = run_command(
        ["squeue", "--noheader", "--all", "--Format", "JobID:|,State:|,NodeList:|,UserName:|,WorkDir:|"], env
    )
    if proc.returncode != 0:
        raise command_error("squeue", "could not list the queue", proc)
    here = os.path.realpath(directory)
    found = []
    for line in proc.stdout.splitlines():
        cols = line.split("|")
        if len(cols) >= 5 and os.path.realpath(cols[4]) == here and cols[1].strip() not in FINISHED_STATES:
            job, state, nodes, user = (c.strip() for c in cols[:4])
            found.append(JobStatus(job_id=job, state=state, nodes=nodes, reason=f"user {user}"))
    return found


class NoRecord(FtctlError):
    """Slurm knows nothing of the job: a wrong id, or one that ended before MinJobAge on a cluster without
    accounting (the job's own status files may still say how it ended)."""


def cancel(job_id: str, env: Mapping[str, str] | None = None) -> JobStatus:
    """``scancel JOB``; returns the job's status from before. A finished job is left alone."""
    before = status(job_id, env)
    if before.finished:
        return before
    proc = run_command(["scancel", before.job_id], env)
    if "already completing or completed" in proc.stderr:  # it ended meanwhile
        return before
    if proc.returncode != 0 or "error" in proc.stderr.lower():
        raise command_error("scancel", f"could not cancel job {before.job_id}", proc)
    return before


def signal_batch(job_id: str, signal: str, env: Mapping[str, str] | None = None) -> bool:
    """``scancel --signal=SIGNAL --batch JOB``: the job's batch shell alone gets it (Slurm 22.05: not its children,
    srun among them, nor the job's steps), for its trap. False where the job had ended meanwhile."""
    job_id = _check_id(job_id)
    proc = run_command(["scancel", f"--signal={signal}", "--batch", job_id], env)
    if "already completing or completed" in proc.stderr:
        return False
    if proc.returncode != 0 or "error" in proc.stderr.lower():
        raise command_error("scancel", f"could not signal job {job_id}", proc)
    return True


def kill_wait_s(env: Mapping[str, str] | None = None) -> int:
    """Slurm's KillWait (`scontrol show config`): how long after a cancel's SIGTERM a job is killed; Slurm's default
    (30 s) where the controller does not say."""
    try:
        proc = run_command(["scontrol", "show", "config"], env)
    except FtctlError:
        return 30
    found = re.search(r"^KillWait\s*=\s*(\d+)", proc.stdout, re.MULTILINE)
    return int(found.group(1)) if found else 30


def stdout_path(job_id: str, env: Mapping[str, str] | None = None) -> Path | None:
    """Where the batch script's output goes (``scontrol show job``'s StdOut), or None when the
    controller no longer knows the job."""
    job_id = _check_id(job_id)
    proc = run_command(["scontrol", "show", "job", job_id], env)
    if proc.returncode != 0:
        if "invalid job id" in proc.stderr.lower():
            return None
        raise command_error("scontrol", f"could not look up job {job_id}", proc)
    for line in proc.stdout.splitlines():
        line = line.strip()
        if line.startswith("StdOut="):
            # scontrol expands %j, %x, %u, %N, %A, %a but prints %% as it is; slurmstepd writes '%'
            return Path(line[len("StdOut=") :].replace("%%", "%"))
    return None


def logs(
    job_id: str,
    follow: bool = False,
    env: Mapping[str, str] | None = None,
    path: str | os.PathLike | None = None,
    out: IO[str] | None = None,
    poll_s: float = 0.5,
    lines: int | None = None,
) -> Path:
    """Print the job's output file to ``out`` (stdout), its last ``lines`` lines where given (read back from its
    end); with ``follow``, keep printing what is appended until the job has finished. Returns the file's path.

    ``path`` is where the output goes when the caller knows it (the run directory); otherwise
    ``scontrol show job`` says.
    """
    job_id = _check_id(job_id)
    out = sys.stdout if out is None else out
    log = Path(path) if path is not None else stdout_path(job_id, env)
    if log is None:
        raise FtctlError(
            f"Slurm no longer knows where job {job_id} wrote its output; look for "
            f"slurm-{job_id}.out in the job's run directory"
        )
    decoder = new_decoder()
    offset = start_of_last(log, lines)  # 0 while there is none: all a pending job's log will hold is new
    last_check = 0.0
    waiting = None  # the wait last said (a pending job's follow printed nothing until it started)
    while True:
        offset = copy_new(log, offset, out, decoder)
        if not follow:
            if offset == 0 and not log.exists():
                try:
                    now = status(job_id, env)
                except FtctlError:
                    now = None
                if now is not None and now.finished:
                    raise FtctlError(f"job {now.describe()}: it ended before it wrote any output ({log})")
                if now is not None and now.state == "PENDING":  # queued: nothing is wrong (was an error, exit 2)
                    why = pending_why(job_id, now.reason)
                    print(
                        f"ftctl: job {now.describe()}: queued, no output until it starts"
                        + (f"; {why}" if why else "")
                        + f"; `ftctl logs -f {job_id}` waits for it and follows its log",
                        file=sys.stderr,
                    )
                    return log
                raise FtctlError(
                    f"job {job_id}'s output file {str(log)!r} does not exist (yet): "
                    "the job may still be pending; try `ftctl logs -f`"
                )
            return log
        now = time.monotonic()
        if now - last_check >= max(poll_s, 1.0) or last_check == 0.0:
            last_check = now
            try:
                state = status(job_id, env)
            except NoRecord:  # the log is there: a job that ended and was forgotten (no accounting), not running
                if not log.exists():
                    raise
                copy_new(log, offset, out, decoder)
                return log
            if state.finished:
                if not copy_new(log, offset, out, decoder) and not log.exists():
                    print(f"ftctl: job {state.describe()}: it ended before it wrote any output", file=sys.stderr)
                return log
            if offset == 0 and not log.exists() and state.describe() != waiting:
                waiting = state.describe()
                why = pending_why(job_id, state.reason) if state.state == "PENDING" else None
                print(
                    f"ftctl: job {waiting}: its log follows once it starts (Ctrl-C stops following)"
                    + (f"; {why}" if why else ""),
                    file=sys.stderr,
                )
        time.sleep(poll_s)


# ---------------------------------------------------------------------------- internals
def _check_id(job_id: str) -> str:
    job_id = str(job_id).strip()
    if not _JOB_ID.match(job_id):
        raise FtctlError(f"{job_id!r} is not a Slurm job id (a number such as 1234, as `ftctl launch` printed it)")
    return job_id


def run_command(
    argv: list[str],
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike | None = None,
    timeout: float = COMMAND_TIMEOUT_S,
) -> subprocess.CompletedProcess:
    """Run a Slurm command (argument list, no shell) in ``env`` or this process's environment;
    FtctlError when it is not installed, SLURM_CONF points nowhere, or it does not answer."""
    environ = slurm_env(env)
    exe = shutil.which(argv[0], path=environ.get("PATH"))
    if exe is None:
        raise FtctlError(
            f"`{argv[0]}` is not on PATH: run ftctl on a host where the Slurm client "
            "tools are installed (the cluster's login node), or install slurm-client"
        )
    conf = environ.get("SLURM_CONF")
    if conf and not Path(conf).is_file():
        # Slurm would retry reading it for 60 s before failing
        raise FtctlError(f"SLURM_CONF={conf} does not exist; point it at the cluster's slurm.conf or unset it")
    key = (conf, shutil.which("scontrol", path=environ.get("PATH")))
    _first_contact(key, environ)
    try:
        proc = subprocess.run([exe, *argv[1:]], env=environ, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        error = NoAnswer(
            f"`{' '.join(argv[:2])}` did not answer within {timeout:.0f} s: "
            "slurmctld is slow or unreachable; check `scontrol ping`"
        )
        _remember(key, error)
        raise error from None
    if proc.returncode != 0:
        _raise_if_unreachable(argv[0], proc, conf, key)
    return proc


# The controller's answer, per cluster (SLURM_CONF, scontrol) and process: (when, None | the error that says it does
# not answer). A controller that does not answer costs each command ~9 s (squeue --jobs: 18 s), so after one such
# answer the next commands say it at once: `ftctl jobs` asked once for each job it lists and took 54 s.
_ANSWERS: dict[tuple, tuple[float, FtctlError | None]] = {}
_CONTACT = threading.Lock()


def _first_contact(key: tuple, environ: Mapping[str, str]) -> None:
    """Before a process's first command to a cluster (and again once its last answer is ANSWER_MEMO_S old): `scontrol
    ping`, which says at once (a refused connection) that no controller answers; then FtctlError without waiting for
    the command. Concurrent callers (`ftctl jobs` asks for its jobs at once) wait for that one ping."""
    with _CONTACT:
        when, error = _ANSWERS.get(key, (0.0, None))
        if time.monotonic() - when < ANSWER_MEMO_S:
            if error is not None:
                raise type(error)(str(error))
            return
        error = _ping(environ, key[0])
        _ANSWERS[key] = (time.monotonic(), error)
    if error is not None:
        raise error


def _remember(key: tuple, error: FtctlError) -> None:
    with _CONTACT:
        _ANSWERS[key] = (time.monotonic(), error)


def _ping(environ: Mapping[str, str], conf: str | None) -> FtctlError | None:
    """The error to say where `scontrol ping` reports every controller DOWN; None where one is UP, or where ping says
    nothing clear (no scontrol, no configuration: the command itself then says why)."""
    exe = shutil.which("scontrol", path=environ.get("PATH"))
    if exe is None:
        return None
    try:
        proc = subprocess.run([exe, "ping"], env=dict(environ), capture_output=True, text=True, timeout=PING_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return not_answering(f"`scontrol ping` did not answer within {PING_TIMEOUT_S} s", conf)
    except OSError:
        return None
    states = re.findall(r"Slurmctld\((\w+)\) at (\S+) is (UP|DOWN)", proc.stdout)
    if not states or any(state == "UP" for _, _, state in states):
        return None
    if any(
        word in proc.stderr.lower() for word in ("munge", "auth", "credential")
    ):  # DOWN to a ping it could not sign:
        return None  # the command says what is wrong (munge not running), not ping's DOWN
    said = ", ".join(f"{role} {host} DOWN" for role, host, _ in states)
    return not_answering(f"`scontrol ping`: {said}", conf)


def controller_address(conf: str | None) -> str | None:
    """The controllers slurm.conf names, 'HOST:PORT' (its address in brackets where it gives one), read from the file
    (SLURM_CONF, else Slurm's default path); None where there is none to read (a configless client)."""
    try:
        text = Path(conf or DEFAULT_CONF).read_text()
    except (OSError, UnicodeDecodeError):
        return None
    hosts, port = [], "6817"  # Slurm's default SlurmctldPort
    for line in text.splitlines():
        key, sep, value = line.split("#", 1)[0].partition("=")
        key, value = key.strip().lower(), value.strip()
        if not sep or not value:
            continue
        if key in ("slurmctldhost", "controlmachine"):
            hosts.append(value)
        elif key == "slurmctldport":
            port = value
    if not hosts:
        return None
    named = [re.match(r"([^(\s]+)\s*(?:\(([^)]*)\))?", h) for h in hosts]
    return ", ".join(f"{m[1]}:{port}" + (f" ({m[2]})" if m[2] else "") for m in named if m)


def not_answering(said: str, conf: str | None) -> FtctlError:
    """A controller that does not answer (down, restarting, or out of this host's reach): said with where it is,
    and no command or job id, so a list of jobs can say it once."""
    where = controller_address(conf)
    at = f" at {where}" if where else ""
    return FtctlError(
        f"the Slurm controller{at} does not answer ({said}; {f'SLURM_CONF={conf}' if conf else 'SLURM_CONF is not set'}"
        "): slurmctld is down or restarting, or this host cannot reach it (or SLURM_CONF names another cluster's); "
        "try again in a while (`scontrol ping` says when it answers), or ask the cluster's admins"
    )


def _raise_if_unreachable(command: str, proc: subprocess.CompletedProcess, conf: str | None, key=None) -> None:
    """A command that never reached a controller: said as that, with what to do, whichever command it was (and
    with no job id, so a list of jobs can say it once). One that does not answer is remembered (_first_contact)."""
    said = next(
        (part for part in _one_line(proc.stderr).split("; ") if any(u in part.lower() for u in _UNREACHABLE)), ""
    )
    if not said:
        return
    if _NO_ANSWER in said.lower():
        error = not_answering(said, conf)
        if key is not None:
            _remember(key, error)
        raise error
    where = f"SLURM_CONF={conf}" if conf else "SLURM_CONF is not set"
    raise FtctlError(
        f"{command} could not reach the Slurm controller ({said}; {where}): point SLURM_CONF at the cluster's "
        f"slurm.conf or run ftctl on the cluster's login node{DOCTOR_HINT}"
    )


DOCTOR_HINT = "; `ftctl doctor --backend slurm` checks the connection"  # left out where doctor says it


def _one_line(stderr: str) -> str:
    """Slurm's message on one line: 'sbatch: error: ' prefixes and noise removed; a sentence
    that sbatch wrapped over several lines joined again, separate messages joined with '; '."""
    parts: list[str] = []
    for line in stderr.splitlines():
        line = line.strip()
        for prefix in ("sbatch:", "squeue:", "scancel:", "scontrol:", "sacct:", "sinfo:", "error:", "fatal:"):
            if line.startswith(prefix):
                line = line[len(prefix) :].strip()
        if not line or any(n in line for n in _NOISE) or line in parts:
            continue
        if parts and line[:1].islower():
            parts[-1] += " " + line
        else:
            parts.append(line)
    return re.sub(r"\s+", " ", "; ".join(parts))


def command_error(command: str, what: str, proc: subprocess.CompletedProcess) -> FtctlError:
    message = _one_line(proc.stderr) or proc.stdout.strip() or f"exit status {proc.returncode}"
    low = message.lower()
    hint = next((h for key, h in _HINTS if key in low), "")
    text = f"{command} {what}: {message}"
    return FtctlError(f"{text} — {hint}" if hint else text)


def _squeue_status(job_id: str, env) -> JobStatus | None:
    fields = "JobID:|,State:|,NodeList:|,Reason:|,RestartCnt:|,exit_code:|,StartTime:|,EndTime:|"
    proc = run_command(["squeue", "--noheader", "--states=all", "--jobs", job_id, "--Format", fields], env)
    if proc.returncode != 0:
        if "invalid job id" in proc.stderr.lower():
            return None
        raise command_error("squeue", f"could not look up job {job_id}", proc)
    for line in proc.stdout.splitlines():
        cols = line.split("|")
        if len(cols) >= 6 and cols[0].strip() == job_id:
            state = cols[1].strip()
            reason = cols[3].strip()
            finished = state in FINISHED_STATES
            code, sig = _wait_status(cols[5].strip()) if finished else (None, None)
            return JobStatus(
                job_id=job_id,
                state=state,
                nodes=cols[2].strip(),
                reason="" if reason == "None" else reason,
                exit_code=code,
                signal=sig,
                restarts=_int(cols[4]),
                source="squeue",
                started=_when(cols[6]) if len(cols) > 6 else None,
                ended=_when(cols[7]) if finished and len(cols) > 7 else None,  # a running job's: its time limit
            )
    return None


def _sacct_status(job_id: str, env) -> JobStatus | None:
    fields = "JobIDRaw,State,NodeList,ExitCode,Reason,Start,End"
    for argv, source in (
        (["sacct", "--noheader", "--parsable2", "--allocations", "--jobs", job_id, "--format", fields], "sacct"),
        (
            ["sacct", "-c", "--noheader", "--parsable2", "--jobs", job_id, "--format", "JobID,State,NodeList,ExitCode"],
            "sacct -c",
        ),
    ):
        proc = run_command(argv, env)
        if proc.returncode != 0:
            continue  # accounting disabled, or no jobcomp file: try the next source
        rows = [line.split("|") for line in proc.stdout.splitlines() if line.strip()]
        rows = [r for r in rows if r and r[0].strip() == job_id]
        if not rows:
            continue
        row = rows[-1]  # the last record: after requeues, the attempt that counts
        state = (row[1].split() or ["UNKNOWN"])[0] if len(row) > 1 else "UNKNOWN"
        code, sig = _exit_pair(row[3]) if len(row) > 3 else (None, None)
        reason = row[4].strip() if len(row) > 4 and row[4].strip() != "None" else ""
        finished = state in FINISHED_STATES
        return JobStatus(
            job_id=job_id,
            state=state,
            nodes=row[2].strip() if len(row) > 2 and row[2].strip() not in ("(null)", "None assigned") else "",
            reason=reason,
            exit_code=code,
            signal=sig,
            restarts=None,
            source=source,
            started=_when(row[5]) if len(row) > 5 else None,
            ended=_when(row[6]) if finished and len(row) > 6 else None,
        )
    return None


def _when(raw: str) -> float | None:
    """A time as squeue and sacct print it (2026-01-15T10:11:12, this host's local time); None for N/A, Unknown."""
    try:
        return time.mktime(time.strptime(raw.strip(), "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None


def _wait_status(raw: str) -> tuple[int | None, int | None]:
    """squeue's exit_code is a wait(2) status: exit code in the high byte, signal in the low seven bits; read as
    scontrol and sacct read it (WIFSIGNALED: the signal, exit 0). A JobLaunchFailure's 4021 was "exit 15 signal 53"
    beside scontrol's ExitCode=0:53."""
    value = _int(raw)
    if value is None:
        return None, None
    if value & 0x7F not in (0, 0x7F):  # killed by a signal: the high byte is no exit code
        return 0, value & 0x7F
    return (value >> 8) & 0xFF, 0


def _exit_pair(raw: str) -> tuple[int | None, int | None]:
    """sacct's ExitCode 'CODE:SIGNAL'."""
    code, _, sig = raw.strip().partition(":")
    return _int(code), _int(sig)


def _int(raw: str) -> int | None:
    try:
        return int(raw.strip())
    except (ValueError, AttributeError):
        return None
