"""One failure, one message: each failing trainer rank leaves a record; the launcher reports one.

The launcher sets ``$FTCTL_FAILURE_DIR`` for the trainer; a rank that fails calls :func:`record`, which
writes ``<dir>/rank-<RANK>.json`` = ``{"rank", "host", "kind", "message"}`` (atomically: a temporary
file renamed into place). After the job, :func:`read` collects them and :func:`summarize` gives the one
line to print and whether running the same command again would help.

Kinds:
    config       an FtctlError (bad plan, bad data, missing credentials): a rerun reproduces it
    memory       out of GPU memory: the message names the overrides of a plan that fits (trainer/gpu_memory.py)
    error        any other exception; the message is its last line, ``Type: message``
    interrupted  SIGTERM / SIGINT (preemption, a cancelled job, torchrun stopping the survivors)

A relaunch helps only after interruptions, or when no rank left a record at all (kill -9, the node
lost): the run resumes from its newest complete checkpoint.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import json
import os
import re
import shutil
import socket
import time
from pathlib import Path

from ftctl.envvars import ELASTIC_ERROR_ENV, FAILURE_DIR_ENV

KINDS = ("config", "memory", "error", "interrupted")
# which record speaks for the job: a configuration error, the rank out of memory (the others fail in its
# collectives), a crash, the ranks stopped after it
_PRIORITY = {kind: i for i, kind in enumerate(KINDS)}
NO_RECORD = "the trainer stopped without reporting an error (killed, out of memory, or its node was lost)"


def record(kind: str, message: str, directory: str | None = None) -> Path | None:
    """Write this rank's record into ``directory`` (default ``$FTCTL_FAILURE_DIR``); None when unset. A cause (not an
    interruption: the ranks torchrun stops after it) is left for torchrun too (tell_torchrun). Each credential in
    ``message`` is masked first (secret_checks.redacted: the value of a credential variable of this process, a URI's
    password, a signed URL's signature), as the launcher prints the record and `ftctl status` reads it."""
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r}: one of {', '.join(KINDS)}")
    message = masked(message)  # a library's error may name a credential (a URL's token): the record keeps none
    if kind != "interrupted":
        tell_torchrun(message)
    directory = directory or os.environ.get(FAILURE_DIR_ENV)
    if not directory:
        return None
    rank = int(os.environ.get("RANK", "0"))
    data = {"rank": rank, "host": socket.gethostname(), "kind": kind, "message": str(message).strip()}
    path = Path(directory, f"rank-{rank}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(data) + "\n")
    except OSError:  # a full disk (what the run may have failed of): no empty record left behind
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    return path


def masked(message) -> str:
    """``message`` as text with its credentials masked (secret_checks.redacted, imported here: the Slurm renderer and
    ftctl's torchrun import this module for its words alone): what a record keeps, and the trainer's ``error:`` line
    where no launcher reports the records (a Slurm job's log, a container's)."""
    from ftctl.secret_checks import redacted

    return redacted(str(message))


def tell_torchrun(message: str) -> None:
    """Leave this rank's error where torchrun's agent reads it: its $TORCHELASTIC_ERROR_FILE, in the form torch's own
    ErrorHandler.record_exception writes. torchrun run by hand (`torchrun ... -m ftctl.trainer`) ends its report of a
    failed worker with the root cause's "traceback": this message, where it said "To enable traceback see: https://
    pytorch.org/docs/stable/elastic/errors.html" (that report itself is torchrun's process's, which never imports
    ftctl: ftctl's own torchrun, ftctl.trainer.torchrun, says one line instead); a scheduler above torchrun that sets
    the agent's own file gets the message. The first rank of the node to fail with it leaves it whole, the others
    (every rank checks the data) its first line: a bad dataset's rows are not repeated a rank, and whichever rank
    torchrun takes for the root cause says what failed. Nothing where torchrun did not start this process; a file that
    cannot be written is passed over (the ``error:`` line says it)."""
    said = masked(message).strip()
    path = os.environ.get(ELASTIC_ERROR_ENV)
    if not path:
        return
    if not first_to_say(f"torchrun: {said}"):
        said = said.splitlines()[0] if said else said
    # a second early: torch takes the failure of the earliest whole second for the root cause (ties: the lowest rank),
    # and stamps a rank it stopped after this one (no file: SIGTERM) with its own clock's, often this second; that rank
    # was taken for the cause (ftctl's torchrun then said it was killed, and that a relaunch would resume)
    stamp = str(int(time.time()) - 1)
    data = {"message": {"message": said, "extraInfo": {"py_callstack": said, "timestamp": stamp}}}
    try:
        Path(path).write_text(json.dumps(data))
    except OSError:
        pass


SAID_MARK = "ftctl-said-"  # first_to_say's files in torchrun's attempt directory


def first_to_say(line: str) -> bool:
    """Whether this rank is the first of its node's torchrun to print ``line`` (its ``error: ...``, where no launcher
    reports the records: Slurm, docker, torchrun by hand). Every rank checks the data, so a bad dataset said the same
    error once a rank in one log (2 ranks: twice; 8: eight times); and a rank that lost its peer (PEER_LOST) said so
    after the peer had said why it stopped (a full disk). A rank whose line differs (its own full disk) still says it,
    and a lost peer is said where no rank of this node said anything (the peer on another node, or killed without a
    word). The marks are files in torchrun's directory of this attempt on this node, which all its local ranks share
    ($TORCHELASTIC_ERROR_FILE's grandparent, one a torchrun and a restart); a process not started by torchrun, or a
    mark that cannot be written, says it."""
    error_file = os.environ.get(ELASTIC_ERROR_ENV)
    if not error_file:
        return True
    attempt = Path(error_file).parent.parent
    if PEER_LOST.search(line):
        try:
            return not any(name.startswith(SAID_MARK) for name in os.listdir(attempt))
        except OSError:
            return True
    digest = hashlib.sha256(line.encode()).hexdigest()[:16]
    try:
        os.close(os.open(attempt / f"{SAID_MARK}{digest}", os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        return False
    except OSError:  # no such directory (another launcher's variable): better twice than never
        return True
    return True


def read(directory) -> list[dict]:
    """Every rank's record in ``directory``, by rank; [] when there is none (or no directory)."""
    records = []
    for path in Path(directory).glob("rank-*.json") if directory else ():
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("kind") in KINDS:
            records.append(data)
    return sorted(records, key=lambda r: int(r.get("rank", 0)))


def summarize(records: list[dict]) -> tuple[str, bool]:
    """(one line naming the rank that speaks for the failure and its message, whether a relaunch helps).

    The record of the most telling kind (config, memory, error, then interrupted) and the lowest rank
    wins: the survivors torchrun stops after one rank fails are not the cause."""
    if not records:
        return NO_RECORD, True
    first = min(records, key=lambda r: (_PRIORITY[r["kind"]], int(r.get("rank", 0))))
    where = f"rank {first.get('rank', '?')} on {first.get('host') or 'unknown host'}"
    return f"{where}: {first['message']}", first["kind"] == "interrupted"


FULL = (errno.ENOSPC, errno.EDQUOT)
RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")  # std::io::Error's Display, as safetensors raises it
ZIP_WRITER = "inline_container.cc"  # torch.save's writer: a write that failed is "unexpected pos N vs M" there


def disk_full(
    exc: BaseException, directory: str, need_bytes: float, fix: str, clear=None, doing: str = "saving", needs="one save"
) -> str | None:
    """The one line for a save into ``directory`` that failed for want of room, or None: an OSError ENOSPC (or EDQUOT)
    in ``exc``'s chain, or torch.save's failed write where the disk holds less than one save (``need_bytes``). It
    names the directory, its free space, what one save needs and ``fix``. ``clear``: called once the failure is known
    to be a full disk (it removes what the failed save wrote: checkpoints.discard_uncommitted), returning (what it
    removed, in words; its bytes, counted as free) or None. ``doing`` and ``needs`` name another write than a save
    (reshard.to_universal's conversion)."""
    full, seen = None, exc
    while seen is not None and full is None:
        if (isinstance(seen, OSError) and seen.errno in FULL) or _rust_errno(seen) in FULL:
            full = seen
        seen = seen.__cause__ or seen.__context__
    written = getattr(full, "filename2", None) or getattr(full, "filename", None)  # a copy's: its destination
    if written:
        directory = os.path.dirname(os.path.abspath(str(written)))
    base = os.path.abspath(directory)
    while not os.path.isdir(base) and os.path.dirname(base) != base:
        base = os.path.dirname(base)
    try:
        free = shutil.disk_usage(base).free
    except OSError:
        return None
    if full is None and not (isinstance(exc, RuntimeError) and ZIP_WRITER in str(exc) and free < need_bytes):
        return None
    from ftctl.storage import size_text

    removed = clear() if clear is not None else None
    if removed:  # its room is free once this process lets go of the files (the failed writer holds one open)
        free += removed[1]
        while not os.path.isdir(directory) and os.path.dirname(directory) != directory:
            directory = os.path.dirname(directory)  # the file's, named by the error, removed with them: its parent
    return (
        f"no space left on the disk of {directory}: {doing} failed with {size_text(free)} free"
        f"{f' once its {removed[0]} ({size_text(removed[1])}) was removed' if removed else ''}, and {needs} needs "
        f"~{size_text(need_bytes)}; {fix}"
    )


def _rust_errno(exc: BaseException) -> int | None:
    """The errno a Rust library's error names in its words: safetensors' write onto a full disk raises
    SafetensorError "... I/O error: No space left on device (os error 28)", no OSError."""
    m = RUST_OS_ERROR.search(str(exc))
    return int(m.group(1)) if m else None


def exception_line(exc: BaseException) -> str:
    """``Type: message``, the last line of the exception's traceback."""
    import traceback

    return traceback.format_exception_only(type(exc), exc)[-1].strip()


ERROR_PREFIX = "error: "  # the trainer's one line where no launcher reports its records (trainer/__main__.py)
# the quiet torchrun's line for a rank that died without a word (trainer/torchrun.py): the cause, where the other
# ranks' errors (a peer's connection reset) are its effects
KILLED = "was killed by"
SHOWN_LINES = 8  # of a multi-line error (a data file's rows): the rest is in the log
# what a rank says of another rank's end (its collective lost that peer: gloo's, NCCL's words): an effect, passed over
# where a rank said its own cause (a full disk on rank 1 came before rank 0's "Connection closed by peer" in the log)
PEER_LOST = re.compile(r"Connection (closed|reset) by peer|remote process exited or there was a network error")
# the Slurm script's first line of each attempt (slurm/render.py; its log is appended to across requeues)
ATTEMPT_LINE = "ftctl: job {job} attempt {attempt}"
SIGKILL_EXIT = "(exit 137)"  # a setup line's failed line (launch.setup_lines) where SIGKILL ended it: 128 + 9


def killed_line(
    where: str,
    signal_name: str,
    proc_cgroup: str = "/proc/self/cgroup",
    cgroup_root: str = "/sys/fs/cgroup",
    *,
    kills_before: int | None = None,
) -> str:
    """The quiet torchrun's line for a rank that died of a signal without a word of its own. A SIGKILL where this
    process's memory cgroup counted an out-of-memory kill (memory_cgroup: a Slurm job's --mem under task/cgroup, a
    container's memory limit) was that limit: the line says so, its size, and that a relaunch fails the same way (a
    relaunch resumes after other kills: a lost node, a kill -9). ``kills_before``: the count as the launcher started
    (oom_kills, read then): only a kill counted since is this run's; a count a long-lived cgroup (a dev pod, a user
    slice with MemoryMax) kept from an earlier process is not. None where it was not read: any count is."""
    memory = memory_cgroup(proc_cgroup, cgroup_root) if signal_name == "SIGKILL" else None
    if memory and memory[0] > (kills_before or 0):
        return f"{ERROR_PREFIX}{where} {KILLED} {signal_name}: {host_memory_words(memory[1])}"
    why = " (often the node's out-of-memory killer)" if signal_name == "SIGKILL" else ""
    return f"{ERROR_PREFIX}{where} {KILLED} {signal_name}{why}; a relaunch resumes from the last checkpoint"


OUT_OF_HOST_MEMORY = "out of host memory"  # in each line that says a job's memory limit killed it
# slurmstepd's line in a job's log where its cgroup's out-of-memory killer ended a process of one of its steps
# (task/cgroup, ConstrainRAMSpace=yes), in the step's output: 22.05's "slurmstepd-node1: error: Detected 1 oom-kill
# event(s) in StepId=12.batch. Some of your processes may have been killed by the cgroup out-of-memory handler.",
# 20.11's "... in step 12.batch cgroup. ...", cgroup v2's "Detected 1 oom_kill event in StepId=12.0"
OOM_EVENT = re.compile(
    r"^slurmstepd(?:-[^:\s]+)?: error: Detected (\d+) oom[-_]kill event(?:\(s\)|s)? "
    r"in (?:StepId=|step )(\S+?)\.?(?:\s|$)"
)


def host_memory_words(limit: int | None = None, step: str | None = None) -> str:
    """What a job killed at its memory limit is told: out of host memory, the limit (bytes, where known: the cgroup's)
    and what set it (a Slurm job's --mem as the job's variables say it, where this runs in one), that a relaunch
    fails the same way, and what to change: more memory (Slurm: --sbatch-arg=--mem=SIZE, which ftctl takes over the
    plan's --mem), or less held in RAM (fewer processes tokenizing: each holds a tokenizer and its share of the
    rows; a batch step's: the job script's setup lines, the trainer runs in a step of its own). ``step``: the Slurm
    step slurmstepd named (its log's line, read where the job ran)."""
    slurm = step is not None or bool(os.environ.get("SLURM_JOB_ID"))
    if step:  # read from the job's log: slurmstepd names the step, not the limit
        said = f"step {step} ran {OUT_OF_HOST_MEMORY}: Slurm's cgroup killed a process of it over the job's --mem"
    elif limit:  # in the job: its own variables name the option that set it
        asked = next((f"--{o}={os.environ[v]}M" for v, o in _SLURM_MEM_VARS if os.environ.get(v, "").isdigit()), None)
        whose = f"the Slurm job's {asked}" if slurm and asked else "the Slurm job's --mem" if slurm else "its cgroup's"
        said = f"{OUT_OF_HOST_MEMORY}, over its limit of {_bytes_text(limit)} ({whose})"
    else:
        said = f"{OUT_OF_HOST_MEMORY}, over its memory limit"
    if slurm:
        more = "ask for more with --sbatch-arg=--mem=SIZE (up to a node's RAM: `ftctl doctor --backend slurm`)"
    else:
        more = "give its container or job more memory"
    if step and step.endswith(".batch"):  # the script's own lines: ftctl's runs the trainer in a step of its own
        less = "less in the job script's own lines (-o setup)"
    else:
        less = "less in RAM: fewer processes tokenizing the data (-o dataset_num_proc=1)"
    return f"{said}; a relaunch fails the same way: {more}, or hold {less}"


_SLURM_MEM_VARS = (
    ("SLURM_MEM_PER_NODE", "mem"),
    ("SLURM_MEM_PER_CPU", "mem-per-cpu"),
    ("SLURM_MEM_PER_GPU", "mem-per-gpu"),
)
_V1_FILES = ("memory.limit_in_bytes", "memory.oom_control")  # (its limit, the file with its oom_kill count)
_V2_FILES = ("memory.max", "memory.events")
V2_LOCAL_EVENTS = "memory.events.local"  # v2 (Linux 5.2+): the kills of this cgroup's own processes, not its subtree's
V1_UNLIMITED = 2**62  # cgroup v1's "no limit" is its page counter's most, 9223372036854771712 bytes: anything above


def _bytes_text(n: int) -> str:
    """A memory limit in Slurm's units: '2 GiB', '1.5 GiB', '200 MiB'."""
    if n >= 2**30:
        return f"{n / 2**30:.1f}".removesuffix(".0") + " GiB"
    return f"{n / 2**20:.0f} MiB"


def memory_cgroup(
    proc_cgroup: str = "/proc/self/cgroup", cgroup_root: str = "/sys/fs/cgroup"
) -> tuple[int, int] | None:
    """(out-of-memory kills, limit in bytes) of this process's memory cgroup, from the kernel's files: of the cgroups
    from its own up to the nearest that has a limit (Slurm's task/cgroup: the step's, its job's --mem; a container's
    --memory), the most kills any counted (cgroup v1 counts a kill in the killed process's own cgroup only, v2 in its
    ancestors too) and that limit. On v2, where the nearest with memory files has memory.events.local, its count
    instead: its own processes' kills, not a sibling's (a pod's other container) that its ancestors count too. Only
    up to that one: the cgroups above it hold other jobs' kills. None where none
    up to the root has a limit (a kill by the machine's own out-of-memory killer is not a job's limit) or the files
    cannot be read. A path in ``proc_cgroup`` not found under the mount (a container's, or a slurmd's own cgroup
    mounted there) is looked for by its last parts."""
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return None
    root = Path(cgroup_root)
    entries = [ln.split(":", 2) for ln in lines if ln.count(":") >= 2]  # hierarchy:controllers:path
    v1 = next((path for _, ctrls, path in entries if "memory" in ctrls.split(",")), None)
    v2 = next((path for hier, ctrls, path in entries if hier == "0" and not ctrls), None)
    if v1 is not None and (root / "memory").is_dir():
        base, path, files, unlimited = root / "memory", v1, _V1_FILES, V1_UNLIMITED
    elif v2 is not None and (root / "cgroup.controllers").is_file():
        base, path, files, unlimited = root, v2, _V2_FILES, None
    else:
        return None
    parts = [p for p in path.split("/") if p]
    here = next(base.joinpath(*parts[i:]) for i in range(len(parts) + 1) if base.joinpath(*parts[i:]).is_dir())
    kills, own = 0, None
    while True:
        try:  # a cgroup without the memory controller's files (v2: not enabled there) has neither
            if own is None and unlimited is None and (here / V2_LOCAL_EVENTS).is_file():
                own = _oom_kills(here / V2_LOCAL_EVENTS)
            kills = max(kills, _oom_kills(here / files[1]))
            limit = (here / files[0]).read_text().strip()
        except (OSError, ValueError):
            limit = ""
        if limit.isdigit() and (unlimited is None or int(limit) < unlimited):
            return (kills if own is None else own), int(limit)
        if here == base:
            return None
        here = here.parent


def _oom_kills(events: Path) -> int:
    """The oom_kill count of a cgroup's events file (v1's memory.oom_control, v2's memory.events[.local])."""
    said = dict(ln.split(None, 1) for ln in events.read_text().splitlines() if " " in ln)
    return int(said.get("oom_kill", "0"))


def oom_kills(proc_cgroup: str = "/proc/self/cgroup", cgroup_root: str = "/sys/fs/cgroup") -> int | None:
    """memory_cgroup's count of out-of-memory kills now (None without a limit): read as a launcher starts, for
    killed_line's ``kills_before``."""
    memory = memory_cgroup(proc_cgroup, cgroup_root)
    return memory[0] if memory else None


def tail(path, size: int = 64 * 1024) -> str:
    """The last ``size`` bytes of a log file as text; "" where it cannot be read."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - size))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


_ATTEMPT = re.compile(re.escape(ATTEMPT_LINE).replace(r"\{job\}", r"\S+").replace(r"\{attempt\}", r"(\d+)"))


def attempt_started(line: str) -> int | None:
    """The attempt a Slurm job's log line starts (its ATTEMPT_LINE); None for any other line."""
    return int(m.group(1)) if (m := _ATTEMPT.match(line)) else None


def last_attempt(log_tail: str) -> tuple[int | None, list[str]]:
    """The last attempt's lines of a Slurm job's log (which every attempt appends to), from its ATTEMPT_LINE, and that
    attempt's number; (None, every line) where the tail holds no attempt line (a docker job's log, an attempt longer
    than the tail)."""
    lines = log_tail.splitlines()
    starts = [(i, attempt) for i, line in enumerate(lines) if (attempt := attempt_started(line)) is not None]
    if not starts:
        return None, lines
    first, attempt = starts[-1]
    return attempt, lines[first:]


def error_line(log_tail: str) -> str | None:
    """The last ``error: ...`` of a job's log (its end), without the prefix, with the indented lines that go on
    with it (a data file's rows: at most SHOWN_LINES); a rank killed without a word first, being the cause the
    other ranks' errors follow from, and a rank's own error before another's word of a lost peer (PEER_LOST). Where
    slurmstepd said its cgroup killed a process for memory (OOM_EVENT) and no line says it was out of host memory
    (a rank's killed_line that read its cgroup), that (host_memory_words) in place of a line that is the kill's effect
    (a rank killed, a peer lost, a setup line's exit 137), and after any other error (a missing tokenizer, bad data:
    the kill may be a setup line's that was retried, and the error is the user's to fix). None without either. What ``ftctl status`` says of a failed Slurm or docker job
    instead of the exit code alone (torchrun's traceback that follows it in the log repeats it)."""
    lines = last_attempt(log_tail)[1]  # the last attempt's: an earlier one's error is history
    oom = next((m for line in reversed(lines) if (m := OOM_EVENT.match(line))), None)
    oom_line = host_memory_words(step=oom.group(2)) if oom else None
    said = [i for i, line in enumerate(lines) if line.startswith(ERROR_PREFIX)]
    if not said:
        return oom_line
    causes = [i for i in said if not PEER_LOST.search(lines[i])]
    first = ([i for i in said if KILLED in lines[i]] or causes or said)[-1]
    more = list(itertools.takewhile(lambda line: line[:1].isspace() and line.strip(), lines[first + 1 :]))
    shown = more[:SHOWN_LINES] + [f"  ... {len(more) - SHOWN_LINES} more in the job's log"] * (len(more) > SHOWN_LINES)
    error = [lines[first][len(ERROR_PREFIX) :].strip(), *shown]
    if not oom_line or OUT_OF_HOST_MEMORY in lines[first]:  # a rank's killed_line that read its cgroup says more
        return "\n".join(error)
    if KILLED in lines[first] or PEER_LOST.search(lines[first]) or SIGKILL_EXIT in lines[first]:
        return oom_line  # Slurm's cgroup killed it: the line is its effect
    return "\n".join([*error, f"  and slurmstepd logged: {oom_line}"])  # an error of its own: kept, the kill beside
