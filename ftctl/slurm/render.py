"""Render the sbatch script for a plan.

The script holds no user path: sbatch runs in the run directory (``SLURM_SUBMIT_DIR``), which holds
spec.json, the script and the logs. ``#SBATCH`` values are parsed by Slurm, not by the shell, so they
are restricted to characters Slurm reads literally (names, numbers, times); everything in the script
body goes through ``shlex.quote``. One task per node runs the same torchrun line (c10d rendezvous at
the first node of the allocation).

What a job asks for works on any Slurm with GPUs: ``--gres=gpu[:TYPE]:N`` (cons_res and cons_tres both take it;
--gpus-per-node is cons_tres's only), and ``--mem`` from the plan (:func:`memory_request`: what it keeps in host
RAM, or what its processes hold as they load the model), its reason in a comment line above the #SBATCH lines,
unless the run asks for memory itself: the partition's DefMemPerCPU gave an 8B job a few GB a CPU.

Preemption and time limits: ``--signal=B:USR2@<lead>`` reaches this script; its trap creates the stop
file the trainer polls at every step boundary (all ranks agree on the step), the trainer saves a
checkpoint, writes ``preempted`` to its status file and exits; the script then requeues the job
(``scontrol requeue``) unless it finished or SLURM_RESTART_COUNT reached max_requeues. With
``--open-mode=append`` every attempt writes to the same log.

SIGTERM (a cancel, or a preemption whose site does not send the --signal one: Slurm then gives the job its
GraceTime before SIGKILL) asks for the same checkpoint, and the script waits for it: a batch shell that died at
once ended the job and its step then. It does not requeue the job: a cancel is meant, and a preemption that
requeues, ``scontrol requeue`` and a node failure are requeued by Slurm itself; the script cannot tell which, so its
log says what follows either way.

``ftctl cancel`` sends USR1 to this script alone first (``scancel --signal=USR1 --batch``: Slurm 22.05 signals the
batch shell only, not its srun nor the job's steps; ``--full`` would reach torchrun, which dies of a USR signal):
the same checkpoint through the stop file, with no KillWait running, and then the script cancels its own job instead
of requeueing it.
"""

from __future__ import annotations

import math
import os
import re
import shutil
from dataclasses import replace

from ftctl import __version__
from ftctl.checkpoints.manifest import MANIFEST, node_manifest_name
from ftctl.envvars import ATTEMPT_ENV, SLURM_RESTART_ENV, THREADS_ENV
from ftctl.errors import FtctlError
from ftctl.failures import ATTEMPT_LINE, ERROR_PREFIX
from ftctl.launch import (
    JOB_PORT,
    PATH_PYTHON,
    STATUS_ENV,
    STOP_ENV,
    Shell,
    container_kind,
    hf_caches,
    job_port_line,
    join,
    netcheck_argv,
    preflight_lines,
    q,
    setup_lines,
    torchrun_argv,
    trainer_env,
)
from ftctl.lease import UNREACHED_EXIT
from ftctl.plan import DTYPE_BYTES, PROCESS_HOST_GB, Plan
from ftctl.runpaths import SLURM_LOG_PATTERN, SLURM_STATUS_PATTERN, SLURM_STOP_PATTERN
from ftctl.spec import RunSpec, container_as, slurm_time_s
from ftctl.storage import JOB_ENV, REMOTE_SCHEMES, home_credentials, is_remote, scheme

# the per-attempt file names of ftctl.runpaths, spelled with the batch script's own variables
_PER_ATTEMPT = {"job": "$SLURM_JOB_ID", "attempt": "$ATTEMPT"}
# Slurm reads #SBATCH values up to the first whitespace; quotes are not shell quotes there.
_SBATCH_SAFE = re.compile(r"[A-Za-z0-9_.:,@%+=/\-\[\]|&*!()]+")  # | & * ! ( ): --constraint syntax


def _sbatch_value(key: str, value) -> str:
    text = str(value)
    if not _SBATCH_SAFE.fullmatch(text):
        raise FtctlError(
            f"--{key} {text!r}: Slurm reads #SBATCH values itself, without shell quoting, so they may hold only "
            f"letters, digits and _ . : , @ % + = / - [ ] | & * ! ( ). Use the name Slurm knows "
            f"(see `sinfo` / `sacctmgr`)."
        )
    return text


_ONE_TASK = "ftctl runs one task a node, whose torchrun starts that node's processes (--gpus says how many)"
_ONE_LOG = "every attempt appends to slurm-JOBID.out in the run directory, where `ftctl logs` reads it"
MAX_REQUEUES = 5  # a preempted or timed-out job's requeues where -o max_requeues is unset
# what `ftctl cancel` sends the batch shell: checkpoint, then cancel the job (USR2 is the time limit's: requeue)
CANCEL_SIGNAL = "USR1"
CANCEL_TRAP = f"trap on_cancel {CANCEL_SIGNAL}"  # a script without it (an older ftctl's) dies of the signal
# why the script's traps ask the trainer to stop, the first line of its stop file: the trainer's stop lines say it
# ("stopping at step 21 (USR2 from Slurm ...)", trainer.callbacks.stop_reason; an empty file read "stop file")
STOP_REASONS = {
    "USR2": "USR2 from Slurm (time limit or preemption, --signal lead {lead} s)",
    "TERM": "SIGTERM from Slurm (scancel, a requeue or a preemption)",
    CANCEL_SIGNAL: "ftctl cancel",  # as the local launcher's (local.backend.ask_to_stop)
}
_REQUEUE = "-o max_requeues=N says how often a preempted job is requeued (0: never)"
# what follows a TERM: the script cannot tell a cancel from Slurm's own requeue (scontrol requeue, a node failure, a
# preemption that requeues), which starts the job again by itself
_AFTER_TERM = (
    "where Slurm requeues this job (a requeue, a node failure, a preemption) it resumes by itself, else (a cancel) "
    "the same ftctl launch resumes it"
)
# Slurm's USR2 may come up to 60 s before signal_lead_s, and the batch shell starts after the job's clock does (its
# prolog): a notice later than the time limit less the lead less this, by the shell's clock, was the time limit's
TIME_LIMIT_SLACK_S = 180
# the line of ftctl's torchrun on a node whose trainer ended so (srun's own exit is another's: a node killed after it)
_UNREACHED_SAID = f"exited with {UNREACHED_EXIT};"
# the #SBATCH options ftctl writes itself, and how each is set: an --sbatch-arg naming one would override it (the
# last one wins), so it is refused
OWN_OPTIONS = {
    "job-name": "name the run with -o run_name=NAME",
    "nodes": "use --nodes (or --gpus NxGxTYPE), which torchrun's --nnodes follows",
    "ntasks": _ONE_TASK,
    "ntasks-per-node": _ONE_TASK,
    "tasks-per-node": _ONE_TASK,  # sbatch's other name for --ntasks-per-node
    "gpus": "use --gpus",
    "gpus-per-node": "use --gpus",
    "gres": "use --gpus (a GRES of another kind, --gres=nvme:1, is added to ftctl's --gres line)",
    "gpus-per-task": "use --gpus",
    "gpus-per-socket": "use --gpus",
    "cpus-per-task": "use -o cpus_per_task=N",
    "partition": "use --partition",
    "account": "use --account",
    "qos": "use --qos",
    "time": "use --time",
    "output": _ONE_LOG,
    "error": _ONE_LOG + " (the trainer's error lines too)",
    "open-mode": _ONE_LOG,
    "array": "one job trains one run: several array tasks would train into one output at once; launch a run each "
    "(a sweep: for lr in 1e-4 2e-4; do ftctl launch ... -o learning_rate=$lr --output runs/lr$lr; done)",
    "requeue": _REQUEUE,
    "no-requeue": _REQUEUE,
    "signal": "use -o signal_lead_s=N (USR2 that many seconds before the time limit)",
}
# what ftctl's script stands on without writing it: an --sbatch-arg naming one is refused too
FIXED_OPTIONS = {
    "chdir": "Slurm writes the job's log (slurm-JOBID.out, which `ftctl logs` reads) in the job's working directory, "
    "the run directory ftctl launch submits from; another one sent it elsewhere",
    # sbatch takes these from an #SBATCH line too: --wait held `ftctl launch` until the job ended, and a launch
    # stopped meanwhile left the job unrecorded; --test-only submitted nothing and was said as an sbatch not Slurm's
    "wait": "sbatch would wait for the job to end before it says its id, and ftctl launch with it; `ftctl logs -f "
    "JOB` follows the job instead",
    "test-only": "sbatch would submit nothing; `ftctl launch --dry-run` prints what would be submitted, and where the "
    "cluster's partitions and limits refuse it",
}
# sbatch's short options (man sbatch) an --sbatch-arg may be written with: said with their long names
_SHORT_OPTIONS = {
    "A": "account",
    "a": "array",
    "b": "begin",
    "C": "constraint",
    "c": "cpus-per-task",
    "D": "chdir",
    "d": "dependency",
    "e": "error",
    "G": "gpus",
    "H": "hold",
    "J": "job-name",
    "L": "licenses",
    "M": "clusters",
    "N": "nodes",
    "n": "ntasks",
    "o": "output",
    "p": "partition",
    "q": "qos",
    "S": "core-spec",
    "t": "time",
    "W": "wait",
    "w": "nodelist",
    "x": "exclude",
}


# sbatch's input environment variables for what the script sets (man sbatch, INPUT ENVIRONMENT VARIABLES). sbatch
# takes them over the script's #SBATCH lines: a profile's SBATCH_TIMELIMIT replaced --time, SBATCH_GRES=nvme:1 the
# GPUs, SBATCH_NO_REQUEUE the requeue, SBATCH_ACCOUNT the --account given. The script's line holds: launch sends
# sbatch none of them (env_overrides); partition, account, QOS and time a run leaves out come from them (env_defaults)
ENV_OPTIONS = {
    "SBATCH_JOB_NAME": "job-name",
    "SBATCH_PARTITION": "partition",
    "SBATCH_ACCOUNT": "account",
    "SBATCH_QOS": "qos",
    "SBATCH_TIMELIMIT": "time",
    "SBATCH_GRES": "gres",
    "SBATCH_GPUS": "gres",
    "SBATCH_GPUS_PER_NODE": "gres",
    "SBATCH_GPUS_PER_TASK": "gres",
    "SBATCH_MEM_PER_NODE": "mem",
    "SBATCH_MEM_PER_CPU": "mem",
    "SBATCH_MEM_PER_GPU": "mem",
    "SBATCH_OUTPUT": "output",
    "SBATCH_ERROR": "error",
    "SBATCH_OPEN_MODE": "open-mode",
    "SBATCH_REQUEUE": "requeue",
    "SBATCH_NO_REQUEUE": "requeue",
    "SBATCH_SIGNAL": "signal",
    "SBATCH_ARRAY_INX": "array",
}
_LEFT_OUT = ("error", "array")  # what the script leaves out on purpose: one log, one job
_SAME_OPTION = {"mem-per-cpu": "mem", "mem-per-gpu": "mem", "gpus": "gres", "gpus-per-node": "gres"}
ENV_DEFAULTS = {
    "partition": "SBATCH_PARTITION",
    "account": "SBATCH_ACCOUNT",
    "qos": "SBATCH_QOS",
    "time": "SBATCH_TIMELIMIT",
}


def env_overrides(text: str, environ) -> dict[str, str]:
    """The variables of ``environ`` that sbatch would take over a line of the script ``text`` (each one's option):
    what launch leaves out of sbatch's environment."""
    written = {
        _SAME_OPTION.get(key, key)
        for line in text.splitlines()
        if line.startswith("#SBATCH --") and (key := line[len("#SBATCH --") :].split("=")[0])
    }
    return {
        var: option
        for var, option in ENV_OPTIONS.items()
        if environ.get(var) is not None and (option in written or option in _LEFT_OUT)
    }


def env_defaults(spec: RunSpec, environ) -> tuple[RunSpec, list[str]]:
    """``spec`` with the partition, account, QOS and time limit it leaves out taken from sbatch's variables in
    ``environ`` (SBATCH_PARTITION ...), as sbatch would take them, so that the plan, the checks against the partition
    and the script say what the job gets; and a note each. A time Slurm cannot read is refused naming its variable."""
    taken, notes = {}, []
    for key, var in ENV_DEFAULTS.items():
        value = (environ.get(var) or "").strip()
        if getattr(spec, key) or not value:
            continue
        if key == "time":
            try:
                limit = slurm_time_s(value)
            except ValueError:
                raise FtctlError(
                    f"{var}={value} (this shell): Slurm reads minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS "
                    "(12 hours: 12:00:00); correct or unset it, or pass --time."
                ) from None
            if limit is not None and limit <= spec.signal_lead_s:
                raise FtctlError(
                    f"{var}={value} (this shell) is not longer than signal_lead_s={spec.signal_lead_s}: the job would be "
                    "told to checkpoint and requeue before it trains; pass a longer --time, or unset it."
                )
        taken[key] = value
        notes.append(f"--{key} {value}: from {var} in this shell, as sbatch takes it where the run gives no --{key}")
    return (replace(spec, **taken) if taken else spec), notes


def env_taken(spec: RunSpec, environ) -> str | None:
    """Which of the run's partition, account, QOS and time are this shell's SBATCH_* (env_defaults took them)."""
    taken = [
        f"--{key} {getattr(spec, key)} is {var}'s in this shell"
        for key, var in ENV_DEFAULTS.items()
        if getattr(spec, key) and (environ.get(var) or "").strip() == getattr(spec, key)
    ]
    return "; ".join(taken) or None


def env_override_note(var: str, value: str, text: str) -> str | None:
    """What launch says of an overriding variable it leaves out (None where the script's line says the same)."""
    option = ENV_OPTIONS[var]
    lines = [line[len("#SBATCH ") :] for line in text.splitlines() if line.startswith("#SBATCH --")]
    line = next((a for a in lines if _SAME_OPTION.get(k := a[2:].split("=")[0], k) == option), None)
    if line is not None and line.partition("=")[2] == value.strip():
        return None
    if line is None:  # --error, --array: left out on purpose
        return f"{var}={value} (this shell) is not passed to sbatch: {OWN_OPTIONS[option]}."
    mem = {"SBATCH_MEM_PER_NODE": "mem"}.get(var, var[len("SBATCH_") :].lower().replace("_", "-"))
    how = OWN_OPTIONS.get(option) or f"--sbatch-arg=--{mem}={value} asks for it"
    return (
        f"{var}={value} (this shell) is not passed to sbatch, which would take it over the script's #SBATCH {line}: "
        f"that line holds; {how}."
    )


def _extra_arg(arg: str) -> str:
    short = arg.strip()[1:2] if arg.strip()[:1] == "-" and arg.strip()[1:2] != "-" else ""
    if short in _SHORT_OPTIONS:  # -A lab, -t30: sbatch's short form, refused as its long one is
        long, value = _SHORT_OPTIONS[short], arg.strip()[2:].strip().lstrip("=")
        given = f"--{long}" + (f"={value}" if value else "")
        try:
            _refuse_own_option(given, long, value)
        except FtctlError as e:
            said = str(e).removeprefix(f"--sbatch-arg={given}").removeprefix(f" (--{long})")
            raise FtctlError(f"--sbatch-arg {arg!r} (sbatch's --{long}){said}") from None
        raise FtctlError(
            f"--sbatch-arg {arg!r}: -{short} is sbatch's --{long}; pass it long, as one flag: "
            f"--sbatch-arg={given if value else given + '=VALUE'} (Slurm does not shell-parse #SBATCH lines)."
        )
    if not arg.startswith("--") or "\n" in arg or " " in arg.strip():
        raise FtctlError(
            f"--sbatch-arg {arg!r}: pass one long option per flag, like --sbatch-arg=--mem=64G "
            f"(no spaces or newlines: Slurm does not shell-parse #SBATCH lines)."
        )
    key, _, val = arg[2:].partition("=")
    _refuse_own_option(arg, key, val)
    return f"--{_sbatch_value('sbatch-arg', key)}" + (f"={_sbatch_value(key, val)}" if val else "")


def export_refused(value: str, given: str) -> str | None:
    """Why a job may not be submitted with sbatch's --export ``value`` (``given``: where it was set), None where it
    keeps the submitting shell's environment (ALL, or ALL,VAR=VALUE ...)."""
    if value.strip().upper().split(",")[0] == "ALL":
        return None
    return (
        f"{given}: the job would start without this shell's environment, and it runs in it (python3 of its PATH, "
        "HF_TOKEN and the other secrets it names, CUDA and module settings); add variables with "
        "--sbatch-arg=--export=ALL,NAME=VALUE, or set them with -o setup=..."
    )


def _refuse_own_option(arg: str, key: str, val: str) -> None:
    """An --sbatch-arg naming an option ftctl writes (sbatch also takes an unambiguous abbreviation of it), or a
    GPU gres, is refused with the flag or key that sets it; so is an --export that drops the environment."""
    if len(key) > 2 and "export".startswith(key) and (why := export_refused(val, f"--sbatch-arg={arg}")):
        raise FtctlError(why)
    # any abbreviation: sbatch takes --ou for --output (two letters were let through, and the log went elsewhere)
    options = (*OWN_OPTIONS, *FIXED_OPTIONS)
    own = key if key in options else next((o for o in options if key and o.startswith(key)), None)
    if own == "gres" and not _gpu_gres(val):  # nvme:1: added to ftctl's own line (sbatch_directives)
        own = None
    if own in FIXED_OPTIONS:
        raise FtctlError(f"--sbatch-arg={arg} (--{own}): {FIXED_OPTIONS[own]}; leave it out.")
    if own in _LEFT_OUT:  # never written: one log, one run a job
        raise FtctlError(f"--sbatch-arg={arg}: ftctl leaves #SBATCH --{own} out on purpose; {OWN_OPTIONS[own]}.")
    if own is not None:
        raise FtctlError(
            f"--sbatch-arg={arg}: ftctl writes #SBATCH --{own} itself, and this would override it; {OWN_OPTIONS[own]}."
        )


# A CPU run's --cpus-per-task where the partition's nodes do not say fewer (SlurmBackend._fit_cpus): its one process
# a node trains on the cores it is given (FTCTL_CPU_THREADS=auto), and 2, the old default, left a 64-core node's job
# on 2 threads; 16 fits the nodes of nearly every cluster and is a small share of a shared node's.
CPU_CPUS_PER_TASK = 16


def cpus_per_task(spec: RunSpec, plan: Plan) -> int:
    """The job's --cpus-per-task: -o cpus_per_task, else 8 a GPU (at most 96), CPU_CPUS_PER_TASK on CPU."""
    return spec.cpus_per_task or default_cpus_per_task(plan.gpus_per_node if plan.tier else None)


def default_cpus_per_task(gpus_per_node: int | None) -> int:
    return min(8 * gpus_per_node, 96) if gpus_per_node else CPU_CPUS_PER_TASK


def _gpu_gres(value: str) -> bool:
    """Whether a --gres value asks for GPUs (gpu, gpu:a100:2, gpu:2)."""
    return any(g.strip().split(":")[0] == "gpu" for g in value.split(","))


def _is_gres(arg: str) -> bool:
    """Whether an --sbatch-arg is sbatch's --gres (or an abbreviation of it it takes: --gre)."""
    key = arg[2:].partition("=")[0]
    return len(key) >= 3 and "gres".startswith(key)


def _user_gres(spec: RunSpec) -> list[str]:
    """The --gres values of the run's --sbatch-arg (GPUs are refused there): a GRES of another kind (nvme:1)."""
    return [value for a in spec.sbatch_args if _is_gres(a) and (value := a.partition("=")[2])]


def gpu_request(plan: Plan, gres_type: str | None, others: list[str] = ()) -> str:
    """The job's GPUs: ``--gres=gpu[:TYPE]:N``, N a node, which both of Slurm's GPU-aware selectors take
    (select/cons_res and cons_tres; --gpus-per-node is cons_tres's only, and Slurm before 23.11 may run cons_res).
    A job step (the script's srun) gets every GRES of the job. ``others``: the run's own GRES of other kinds
    (--sbatch-arg=--gres=nvme:1), on the same line: of two --gres lines sbatch keeps the last, and the GPUs were
    dropped."""
    typed = f"{_sbatch_value('gres', gres_type)}:" if gres_type else ""
    return ",".join([f"--gres=gpu:{typed}{plan.gpus_per_node}", *others])


def sbatch_directives(
    spec: RunSpec, plan: Plan, gres_type: str | None = None, mem_floor: tuple[int, str] | None = None
) -> list[str]:
    """The #SBATCH options; ``gres_type``: the partition's name for the plan's GPU, where the cluster said it
    (launch asks sinfo: SlurmBackend.check), else the request names no type; ``mem_floor``: memory_request's floor."""
    d = [
        f"--job-name={_sbatch_value('run-name', spec.name)}",
        f"--nodes={plan.nodes}",
        "--ntasks-per-node=1",
    ]
    merged = _user_gres(spec) if plan.tier else []
    if plan.tier:
        d.append(gpu_request(plan, gres_type, [_sbatch_value("gres", g) for g in merged]))
    d.append(f"--cpus-per-task={cpus_per_task(spec, plan)}")
    for key in ("partition", "account", "qos", "time"):
        value = getattr(spec, key)
        if value:
            d.append(f"--{key}={_sbatch_value(key, value)}")
    d += [
        f"--output={SLURM_LOG_PATTERN}",
        "--open-mode=append",
        "--requeue",
        f"--signal=B:USR2@{spec.signal_lead_s}",
    ]
    if asked := memory_request(spec, plan, mem_floor):
        d.append(f"--mem={mem_size(asked[0])}")
    extra = [_extra_arg(a) for a in spec.sbatch_args]  # each checked, then those of ftctl's --gres line left out
    d += [e for e, a in zip(extra, spec.sbatch_args) if not (merged and _is_gres(a))]
    return d


def node_memory_gb(plan: Plan) -> float | None:
    """The host RAM (GB, 1e9 B) a node of ``plan`` needs, None where it keeps nothing there: an offload plan's
    (plan.offload_host_gb), a CPU plan's processes' memory. The one owner of that number: Slurm's --mem and
    SkyPilot's memory: ask for it (sky.cost.memory_request), where a partition's DefMemPerCPU or a small Kubernetes
    pod would give a CPU job a few GB and the OOM killer stop it."""
    return plan.host_memory_gb or (plan.memory_gb * plan.world_size / plan.nodes if plan.tier is None else None)


def gib(gb: float) -> int:
    """``gb`` (1e9 B) in whole GiB, rounded up: the unit of Slurm's G and of SkyPilot's memory:."""
    return math.ceil(gb * 1e9 / 2**30)


def gib_of(gb: float) -> str:
    """``gb`` (1e9 B) as a user reads Slurm memory, in GiB (--mem's G), rounded up: '284 GiB', '5.6 GiB' under 10."""
    x = gb * 1e9 / 2**30
    return f"{x:.1f} GiB" if x < 10 else f"{math.ceil(x)} GiB"


MEM_HEADROOM = 1.15  # --mem over the load's estimate (load_memory_gb): rough, and a cgroup counts page cache too
CHECKPOINT_SHARD_GB = 5.0  # a Hugging Face checkpoint's largest file (save_pretrained's max_shard_size)
_OWN_MEM = ("mem", "mem-per-cpu", "mem-per-gpu")  # sbatch's memory options, of which a job takes one


def load_memory_gb(plan: Plan) -> tuple[float, str] | None:
    """The host RAM (GB) a GPU node's trainer processes hold as they load the model, and what it is made of; None on
    CPU (the plan's own memory is the processes' there). Each process's own (PROCESS_HOST_GB: CUDA, torch, the
    tokenised rows), and the weights as transformers builds them on the CPU before they go to the GPU
    (plan.weights_dtype, fp32 for fft/sft): every process a whole copy, except FSDP (the job's rank 0 alone:
    accelerate's cpu_ram_efficient_loading), and qlora (placed on its GPU as loaded) and ZeRO-3 (built sharded), whose
    processes each read the checkpoint a file at a time. Slurm's own default is the partition's DefMemPerCPU x the
    job's CPUs, often 1-4 GB a CPU: 8B fft on 4 GPUs (4 fp32 copies, 128 GB) is OOM-killed at load on 32 CPUs'
    64 GB. SkyPilot's VMs come with RAM by their GPUs (2x their memory), so only Slurm asks for this."""
    if plan.tier is None:
        return None
    n, p = plan.gpus_per_node, plan.model.params_b
    weights = f"the {_b(p)} model's {plan.weights_dtype} weights"
    if plan.strategy == "fsdp" and plan.method != "qlora":
        copies, each = 1, p * DTYPE_BYTES[plan.weights_dtype]
        how = f"the job's first process loads {weights} ({gib_of(each)})"
    elif plan.strategy.startswith("zero3") or plan.method == "qlora":
        copies, each = n, min(2 * p, CHECKPOINT_SHARD_GB)
        how = f"each reads the checkpoint a file at a time (~{gib_of(each)})"
    else:
        copies, each = n, p * DTYPE_BYTES[plan.weights_dtype]
        how = f"each loads {weights} ({gib_of(each)})"
    procs = f"{n} process{'es' if n > 1 else ''} x {gib_of(PROCESS_HOST_GB)}"
    return n * PROCESS_HOST_GB + copies * each, procs + (f", {how}" if how else "")


def _b(params_b: float) -> str:
    """A model's size as the --mem comment says it: 8.0B, 135M, 100K (a test's tiny model was "the 0M model")."""
    if params_b >= 0.95:
        return f"{params_b:.1f}B"
    scale, unit = next(((s, u) for s, u in ((1e-3, "M"), (1e-6, "K")) if round(params_b / s) >= 1), (1e-9, ""))
    return f"{round(params_b / scale)}{unit}"


def memory_need(plan: Plan) -> tuple[float, str] | None:
    """The host RAM (GB) a node of ``plan`` needs at its peak, and what that is (said beside --mem in the script and
    the plan): the more of what it keeps there (node_memory_gb: an offloaded optimizer, a CPU plan's processes) and
    what its processes hold as they load the model (load_memory_gb)."""
    kept, load = node_memory_gb(plan), load_memory_gb(plan)
    if kept and (not load or kept >= load[0]):
        why = "training on CPU" if plan.tier is None else "the offloaded optimizer's states and buffers"
        return kept, f"{why}: {gib_of(kept)}"
    if load:
        return load[0], f"loading the model: {load[1]} = {gib_of(load[0])}"
    return None


def memory_request(spec: RunSpec, plan: Plan, floor: tuple[int, str] | None = None) -> tuple[int, str] | None:
    """planned_memory, or ``floor`` (MiB, and what it is: the RAM the partition gives a job that asks for none,
    slurm_doctor.default_memory) where that is more, at most the nodes' RAM: a qlora job on 8 CPUs asked --mem=12G
    where DefMemPerCPU=4G gave 32G to the same job without --mem (the plan does not count the rows held in RAM)."""
    asked = planned_memory(spec, plan)
    if asked is None or floor is None:
        return asked
    cap = node_mib(spec.host_memory_gb) if spec.host_memory_gb else None  # 0: all of it
    mib = min(floor[0], cap) if cap else floor[0]
    if mib <= asked[0]:
        return asked
    return mib, f"{floor[1]}, what sbatch gives without --mem, above the plan's {mem_size(asked[0])}: {asked[1]}"


def planned_memory(spec: RunSpec, plan: Plan) -> tuple[int, str] | None:
    """``--mem`` in MiB (Slurm's M; mem_size writes it), and where the number comes from (memory_need). What the plan
    keeps in RAM as the planner gave it, in whole GiB rounded up (SkyPilot's memory: asks the same:
    sky.cost.memory_request); the load's estimate with MEM_HEADROOM, at most the RAM the plan is for (-o
    host_memory_gb, or sinfo's nodes: SlurmBackend.resolve), to the MiB (node_mib): a node of 6400 MiB (6.2 GiB) was
    asked 5G, its RAM rounded down twice (to GB, then to GiB). None where the run asks for memory itself
    (--sbatch-arg=--mem, --mem-per-cpu or --mem-per-gpu: sbatch refuses two of them), which is refused below what the
    plan keeps in RAM."""
    need = memory_need(plan)
    if need is None or _own_memory(spec, plan):
        return None
    kept, ask = node_memory_gb(plan) or 0, "--sbatch-arg=--mem=SIZE asks for another"
    if kept >= need[0]:
        return gib(kept) * 1024, f"{need[1]} ({ask})"
    want = gib(need[0] * MEM_HEADROOM) * 1024
    cap = node_mib(spec.host_memory_gb) if spec.host_memory_gb else None  # 0: all of it
    if cap is None or want <= cap:
        return want, f"{need[1]}, +{round((MEM_HEADROOM - 1) * 100)}% ({ask})"
    has = f"the nodes' {mib_text(cap)} GiB"
    if need[0] <= spec.host_memory_gb:
        return max(cap, gib(kept) * 1024), f"{need[1]}; all {has} ({ask})"
    # the load alone is more than the nodes have (what they keep, the planner fitted): it swaps or is OOM-killed
    fix = "; -o strategy=fsdp loads the model once a job" if plan.strategy != "fsdp" else ""
    return max(cap, gib(kept) * 1024), f"{need[1]}: more than {has}, so the load may be OOM-killed{fix} ({ask})"


def node_mib(gb: float) -> int:
    """A node's RAM given in GB (-o host_memory_gb, or sinfo's RealMemory as doctor.host_memory gives it) in whole MiB,
    rounded down (at least 1): as much as --mem may ask of it. sinfo's 6400 is 6400 again (the float's last digit
    is not a MiB less)."""
    return max(1, math.floor(round(gb * 1e9 / 2**20, 3)))


def mem_size(mib: int) -> str:
    """--mem's value for ``mib``: whole GiB in Slurm's G (327G), else in its M (6400M, where 6G left 256 MiB of a
    6.2 GiB node unasked and 7G is more than it has)."""
    return f"{mib // 1024}G" if mib % 1024 == 0 else f"{mib}M"


def mib_text(mib: int) -> str:
    """MiB as a user reads Slurm memory, in GiB rounded down: '299', '6.2' under 10 (as doctor.gib_text)."""
    return f"{math.floor(mib / 102.4) / 10:.1f}" if mib < 10 * 1024 else str(mib // 1024)


def memory_request_gb(spec: RunSpec, plan: Plan) -> tuple[float, str | None] | None:
    """What the job asks for a node, in GB (1e9 B, as the doctor compares it with the nodes' RAM), and the run's own
    --sbatch-arg that asks it (None where ftctl's --mem does); None where nothing is asked (or --mem=0, all of it).
    A --sbatch-arg=--mem=64G above every node was sbatch's "Requested node configuration is not available", with
    nothing naming the option."""
    if own := own_memory(spec, plan):
        return own if own[0] > 0 else None
    asked = memory_request(spec, plan)
    return (asked[0] * 2**20 / 1e9, None) if asked else None


def _own_memory(spec: RunSpec, plan: Plan) -> bool:
    """Whether the run asks for memory in an --sbatch-arg (own_memory)."""
    return own_memory(spec, plan) is not None


def own_memory(spec: RunSpec, plan: Plan) -> tuple[float, str] | None:
    """The host RAM (GB a node; 0: all of it, --mem=0) the run asks for in an --sbatch-arg (--mem, --mem-per-cpu x
    its CPUs, --mem-per-gpu x its GPUs a node), and that argument; None where it asks none. Refused below what the
    plan keeps in RAM (node_memory_gb)."""
    need = node_memory_gb(plan)
    for arg in spec.sbatch_args:
        key, _, value = arg.lstrip("-").partition("=")
        if key not in _OWN_MEM:
            continue
        per = {"mem-per-cpu": cpus_per_task(spec, plan), "mem-per-gpu": plan.gpus_per_node if plan.tier else 1}
        asked = _slurm_mb(value) * per.get(key, 1) / 1e3 * 2**20 / 1e6  # Slurm's M is MiB
        if need and 0 < asked < need:  # --mem=0: all of the node's
            why = "training on CPU" if plan.tier is None else "the optimizer offloaded"
            raise FtctlError(
                f"--sbatch-arg={arg}: the {plan.strategy} plan keeps ~{gib_of(need)} a node in host RAM ({why}), "
                f"more than that asks for: give at least --mem={gib(need)}G, or leave --mem "
                "out (ftctl asks for it)"
                + (f", or plan within it: -o host_memory_gb={math.floor(asked)}." if plan.tier is None else ".")
            )
        return asked, arg
    return None


def _slurm_mb(value: str) -> float:
    """A Slurm memory size in its MiB (no unit: MiB; K, M, G, T); 0 where it is not one."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]?)B?", value.strip().upper())
    if not m:
        return 0
    return float(m.group(1)) * {"K": 2**-10, "": 1, "M": 1, "G": 2**10, "T": 2**20}[m.group(2)]


# the job's log, as the script's own shell names it (--output=SLURM_LOG_PATTERN, from the run dir it is submitted in)
JOB_LOG = f'"$FTCTL_RUN_DIR/{SLURM_LOG_PATTERN.replace("%j", "$SLURM_JOB_ID")}"'


def torchrun_threads(spec: RunSpec, plan: Plan) -> list[str]:
    """The OMP_NUM_THREADS torchrun gives the workers of 2+ processes a node where none is set (1), set before it
    runs: torchrun said so in a 5-line banner of asterisks at the top of every such job's log (4 `W...` lines a node),
    and each process takes its share of the node's cores all the same (THREADS_ENV=auto: trainer.distributed.
    cpu_threads), so the workers start as before. Nothing where the run sets OMP_NUM_THREADS (its own choice: no
    auto) or runs one process a node (torchrun sets none)."""
    if trainer_env(spec).get(THREADS_ENV) != "auto" or plan.world_size <= plan.nodes:
        return []
    return [
        'export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"  # torchrun\'s own default for 2+ processes a node, unsaid; '
        f"each process then takes its share of the cores ({THREADS_ENV}=auto)"
    ]


# the rendezvous of the job's own (launch.torchrun_argv): jobs that share a node never meet at one port or id
_HEAD, _PORT, _JOB = Shell('"$HEAD_ADDR"'), JOB_PORT, Shell('"$SLURM_JOB_ID"')


def rendezvous(plan: Plan) -> dict:
    """torchrun_argv's and netcheck_argv's rendezvous keywords: a one-node job's torchrun is standalone (launch.
    _torchrun: a free port of its own, as local, docker and a one-node SkyPilot job take; an -o rdzv_port the run
    sets is kept), since two one-node jobs sharing a node with job ids PORT_SPREAD apart got one port (29501 + id %
    1000): the second joined the first's c10d store (torchrun takes a taken port as its own run's) and failed when
    the first ended, rendezvous ids apart or not; a multi-node job meets at its head node's port of its own
    (head_port_lines, said in its RDZV_PORT lines)."""
    if plan.nodes == 1:
        return {"head": None}
    return {"head": _HEAD, "port": _PORT, "job": _JOB}


# the TCP ports a socket listens on in this shell's network namespace, as /proc/net/tcp{,6} write them (hex, 4 digits)
_LISTENING = 'awk \'$4 == "0A" {sub(/.*:/, "", $2); print $2}\' /proc/net/tcp /proc/net/tcp6 2>/dev/null'
# a port's lock file on the head node, PORT appended: in /var/tmp, which every job on the node shares (a node's /tmp
# and /dev/shm may be each job's own: Slurm's job_container/tmpfs)
RDZV_LOCK = "/var/tmp/ftctl-rdzv-"


def head_port_lines(spec: RunSpec) -> list[str]:
    """The lines that set a multi-node job's rendezvous port (RDZV_PORT, which every node's torchrun reads through
    srun's environment): job_port_line's (rdzv_port + 1 + job id % PORT_SPREAD), then the next port free on the head
    node, where this script runs (the batch script runs on the allocation's first node, its HEAD_ADDR): one that no
    socket there listens on, and whose lock file (RDZV_LOCK) no other job's script holds locked (flock). Two jobs
    sharing a head node whose ids were PORT_SPREAD apart got one port: the second's torchrun took the first's c10d
    store for its own and failed when the first ended (explore61 finding 15); two starting at once took one port
    still, as a job's store listens only once its torchrun starts (a container's start, the setup lines, torch's
    import: seconds to minutes), as did a job whose own port was taken (it walked to the next job's).

    The lock is held on a descriptor bash allocates (``exec {RDZV_LOCK_FD}<``: 10 or above, in RDZV_LOCK_FD), so a
    setup line or a prolog's own fd 9 neither lets it go nor locks in its place (it was fd 9); srun inherits it, so it
    is held while the job runs and let go when its processes end, a requeue's included. The script removes its lock
    file as it exits (an EXIT trap), while it still holds it, where the descriptor is still that file's: one was left
    in /var/tmp for every port ever taken. A job takes a lock only where the file it locked is still the one at its
    path (``-ef``): a lock on a file that a job removed as it let go (between this job's open and its flock) is on no
    file at that path, and a third job would make a new one and take the same port, so it tries again. A job killed
    before its EXIT trap (SIGKILL) leaves its file, which the next job to take that port reuses and removes: the files
    left are within the ports jobs take (about PORT_SPREAD from rdzv_port + 1), another user's left as the sticky
    /var/tmp lets none but its owner remove it. Where flock or the lock file cannot be had (no flock, a /var/tmp not
    writable, a flock older than util-linux 2.25's -E, a file system without locks), the listening check alone: a
    failure read as a lock held walked every job to port 65535."""
    return [
        "# a rendezvous port of this job's own: two jobs on one node would otherwise share one; one that a process on",
        "# the head node (this one: the batch script runs on the allocation's first node) listens on is skipped, and",
        "# one whose lock another job's script there holds (its store listens only once its torchrun has started); the",
        "# lock is on a descriptor of bash's choosing (10 or above), its file removed as this script ends",
        job_port_line(spec, "SLURM_JOB_ID", "a Slurm job"),
        f"LISTENING=$({_LISTENING})",
        'RDZV_LOCK=""; RDZV_LOCK_FD=""',
        "rdzv_port_free() { "
        'printf \'%s\\n\' "$LISTENING" | grep -qx "$(printf %04X "$1")" && return 1; '
        "command -v flock >/dev/null || return 0; "
        f'local lock="{RDZV_LOCK}$1.lock" try; '
        "for try in 1 2 3; do "
        '[ -z "$RDZV_LOCK_FD" ] || exec {RDZV_LOCK_FD}<&-; RDZV_LOCK_FD=""; '
        '[ -e "$lock" ] || (umask 022; : >>"$lock") 2>/dev/null; '
        '{ exec {RDZV_LOCK_FD}<"$lock"; } 2>/dev/null || return 0; '
        'flock -n -E 200 "$RDZV_LOCK_FD" 2>/dev/null; '
        "case $? in 0) ;; 200) return 1 ;; *) return 0 ;; esac; "  # 200: another holds it; another failure: no flock
        # still the file at its path, not one a job removed as it let go (or no /dev/fd to tell): this job's lock
        'if [ "$lock" -ef "/dev/fd/$RDZV_LOCK_FD" ] || [ ! -e "/dev/fd/$RDZV_LOCK_FD" ]; then '
        'RDZV_LOCK="$lock"; return 0; fi; '
        "done; return 1; }",
        'while [ "$RDZV_PORT" -lt 65535 ] && ! rdzv_port_free "$RDZV_PORT"; do RDZV_PORT=$((RDZV_PORT + 1)); done',
        "export RDZV_PORT",
        # removed only while this script's descriptor is still that file's, so still locked by this job alone
        'trap \'[ -n "$RDZV_LOCK" ] && [ "$RDZV_LOCK" -ef "/dev/fd/$RDZV_LOCK_FD" ] && rm -f "$RDZV_LOCK"\' EXIT'
        "  # its port's lock file, while still held",
    ]


def container_homes(spec: RunSpec, kind: str | None) -> tuple[list[str], list[str]]:
    """What of the launching user's home an apptainer or pyxis container gets bound at its own path: the Hugging
    Face caches the job's environment names (a model is downloaded once, not once a run: pyxis binds no home, and
    apptainer binds the home only, not an HF_HOME under /scratch), and for pyxis the home's credentials of the run's
    object stores (~/.aws ...). The job runs in the launching shell's environment (--export=ALL), so the paths
    resolved here are the job's."""
    if kind not in ("apptainer", "pyxis"):
        return [], []
    hf_home, apart = hf_caches({**os.environ, **spec.env})
    caches = sorted({hf_home, *(path for _, path in apart)})
    home = os.path.expanduser("~")
    if kind == "apptainer":  # its home is bound already
        return [p for p in caches if not (p + "/").startswith(home.rstrip("/") + "/")], []
    return caches, [os.path.join(home, rel) for rel in home_credentials(spec.remote_uris)]


def resumed_elsewhere(spec: RunSpec) -> str | None:
    """The checkpoint directory ``-o resume=PATH`` names where it is outside the run's output (another run's), as
    the job reads it; None for auto, never, a store's URI, a path that is not absolute (the job reads it from its own
    working directory) or one inside the output, which is bound already."""
    path = spec.resume.rstrip("/")
    if spec.resume in ("auto", "never") or is_remote(spec.resume) or not os.path.isabs(path):
        return None
    output = spec.output.rstrip("/") if not is_remote(spec.output) else None
    return None if output and (path + "/").startswith(output + "/") else path


def store_access(spec: RunSpec) -> list[str]:
    """A comment line for each object store of the run's URIs: the variables of its credential chain, endpoint and
    region (storage.JOB_ENV), by name only, that the job reads from the submitting environment (--export=ALL) where
    they are set there, as it reads the secrets. Written whatever is set here (a dry run is read elsewhere)."""
    lines = []
    for protocol in sorted({REMOTE_SCHEMES[scheme(u)][0] for u in spec.remote_uris}):
        names = [n for n in JOB_ENV.get(protocol, ()) if n not in spec.secrets]
        if names:
            lines.append(f"# so do {protocol}'s credentials, endpoint and region, where set there: {', '.join(names)}")
    return lines


def requeue_cause(requeues: int, cut_by: str, limit: int | None, lead_s: int) -> list[str]:
    """The script's lines, for an attempt that stopped at a checkpoint (status preempted), that set WHY (what ended
    it: this attempt $WHY, said on its requeue line), LAST (the error line where it is the last that max_requeues
    allows; with max_requeues=0 said as requeues turned off) and AT_LIMIT where its time limit cut it
    (wait_for_time_limit). Its error line blamed the time limit whatever did: a store down at each requeued start (the trainer
    waits for it, then ends as a preempted run, exit UNREACHED_EXIT: ftctl.lease) or a preemption, where a longer
    --time does nothing; a requeue below the limit said nothing of why. With --time known (``limit``), a USR2 well
    before the time limit's notice was a preemption's."""
    # -o max_requeues=0 turns requeues off: nothing was "reached", and its one attempt is no "last" of several
    head = (
        f"{ERROR_PREFIX}not requeueing: max_requeues={requeues} reached"
        if requeues
        else f"{ERROR_PREFIX}not requeueing: -o max_requeues=0 turns requeues off"
    )
    last = "the last attempt" if requeues else "the job"
    more, resumes = (
        "allow more requeues with -o max_requeues=N" if requeues else "allow requeues with -o max_requeues=N",
        "the same ftctl launch resumes from the last checkpoint",
    )
    early = None if limit is None else limit - lead_s - TIME_LIMIT_SLACK_S
    store = (
        f"ended because the object store did not answer (exit {UNREACHED_EXIT}: the trainer's error above names the "
        "store and its error), not by its time limit"
    )
    no_usr2 = (
        "stopped at a checkpoint (exit $RC) without Slurm's time-limit notice (USR2), so its time limit did not end it"
    )
    lines = [
        f'  if [ "$RC" -eq {UNREACHED_EXIT} ] || tail -c +$((LOG_AT + 1)) "$LOG" 2>/dev/null | '
        f'grep -qF "{_UNREACHED_SAID}"; then',
        f'    WHY="{store}"',
        f'    LAST="{head}; {last} $WHY, so a longer --time would not help: once the store answers, {resumes} '
        f'({more} to wait through a longer outage)"',
        '  elif [ -z "$USR2_AT" ]; then',
        f'    WHY="{no_usr2}"',
        f'    LAST="{head}; {last} $WHY: {more}; {resumes}"',
    ]
    if early is not None and early > 0:
        lines += [
            f'  elif [ "$USR2_AT" -lt {early} ]; then',
            f"    WHY=\"was stopped by Slurm's USR2 ${{USR2_AT}} s after it started, long before its time limit "
            f'({cut_by}, whose notice comes {lead_s} s before it): a preemption (or a USR2 sent by hand)"',
            f'    LAST="{head}; {last} $WHY, so a longer --time would not help: {more}; {resumes}"',
        ]
    if limit is not None:
        cut = [
            f'    WHY="was cut by its time limit ({cut_by})"',
            f'    LAST="{head}; {last} $WHY and stopped at the checkpoint above: raise --time, or {more}; {resumes}"',
            "    AT_LIMIT=1  # Slurm ends it at its time limit: TIMEOUT, its word for that (not FAILED)",
        ]
    else:
        cut = [
            f"    WHY=\"was stopped by Slurm's USR2 ${{USR2_AT}} s after it started: its time limit ({cut_by}) or a "
            'preemption"',
            f'    LAST="{head}; where each attempt is cut by the time limit ({cut_by}), raise --time, or {more}; '
            f'{resumes}"',
        ]
    return [*lines, "  else", *cut, "  fi"]


def saved_before(spec: RunSpec, plan: Plan) -> list[str]:
    """The lines that set FROM, what an attempt stopped by TERM before its own checkpoint goes on from: the run's
    newest committed checkpoint in a local output (its manifest written; a multi-node one's, every node's), or step 0
    where it holds none. Said "from the last one" whether or not there was one (a TERM while the first attempt loaded
    the model). An object store's output is not listed here: said as the newest checkpoint committed there, if any."""
    if is_remote(spec.output):
        return [
            f'  FROM="it resumes from the newest checkpoint committed to {spec.output}, or starts again where none is"'
        ]
    nodes = " && ".join(f'[ -f "$FTCTL_RUN_DIR/$C/{node_manifest_name(k)}" ]' for k in range(plan.nodes))
    committed = f'[ -f "$FTCTL_RUN_DIR/$C/{MANIFEST}" ]' + (f" || {{ {nodes}; }}" if plan.nodes > 1 else "")
    return [
        '  SAVED=""',
        '  for C in $(cd "$FTCTL_RUN_DIR" && ls -d checkpoint-*/ 2>/dev/null | tr -d / | sort -t- -k2 -n -r); do',
        f'    if {committed}; then SAVED="$C"; break; fi',
        "  done",
        '  if [ -n "$SAVED" ]; then FROM="it resumes from $SAVED"; '
        'else FROM="it starts again from step 0, as no checkpoint was saved yet"; fi',
    ]


def wait_for_time_limit(limit: int | None) -> list[str]:
    """The lines that keep an attempt its time limit stopped at a checkpoint, with no requeue left (AT_LIMIT), until
    Slurm ends it: its state is then TIMEOUT, Slurm's word for a job its time limit ended, as `sacct` and an
    afternotok dependency read it; its own exit ended it FAILED, as a crash. The wait is the rest of the notice
    (signal_lead_s, less the save), bounded by --time and Slurm's early-signal slack; nothing where --time is unknown
    (a USR2 then may have been a preemption's or one sent by hand: no wait of unknown length). `ftctl cancel` during
    the wait (its USR1) ends the job at once, CANCELLED: it ended only as the wait ran out (ftctl cancel waits
    signal_lead_s for the job to end, then scancels it), the trainer having nothing left to save."""
    if limit is None:
        return []
    end = limit + TIME_LIMIT_SLACK_S
    return [
        '  if [ -n "$AT_LIMIT" ]; then',
        "    trap 'exit 143' TERM  # the time limit's own TERM",
        "    trap 'echo \"ftctl: cancel asked (ftctl cancel): the trainer stopped at its checkpoint already; cancelling "
        "job $SLURM_JOB_ID\"; CANCELLING=1' " + CANCEL_SIGNAL,
        f'    echo "ftctl: waiting for the time limit (~$(( {limit} - SECONDS )) s), where Slurm ends the job as TIMEOUT, '
        f"its state for a job its time limit ended (not FAILED: nothing failed); ftctl cancel $SLURM_JOB_ID ends "
        'it now"',
        f'    while [ "$SECONDS" -lt {end} ] && [ -z "$CANCELLING" ]; do sleep 5 & WAIT_PID=$!; wait "$WAIT_PID"; done',
        '    if [ -n "$CANCELLING" ]; then',
        '      kill "${WAIT_PID:-}" 2>/dev/null  # its sleep, which held the log open',
        "      trap '' TERM  # the cancel's own TERM: nothing is left to save",
        '      scancel "$SLURM_JOB_ID"',
        "      exit 143",
        "    fi",
        "  fi",
    ]


def pyxis_image(ref: str) -> str:
    """A docker reference as enroot reads it: ``ghcr.io/org/ftctl:T`` -> ``ghcr.io#org/ftctl:T`` (without
    the ``#``, enroot takes the first part for a Docker Hub name); enroot's ``docker://`` URI form the same way."""
    if ref.startswith(("/", ".", "~")):  # a squashfs file, not a registry's image
        return ref
    scheme, found, path = ref.partition("://")
    if found:
        return f"{scheme}://{pyxis_image(path)}"
    head, sep, rest = ref.partition("/")
    if "#" in ref or not sep or not ("." in head or ":" in head or head == "localhost"):
        return ref
    return f"{head}#{rest}"


_CONDA_ACTIVATE = re.compile(r"(^|[;&|({\s])conda\s+activate($|[\s;&|)}])")
_CONDA_SHELL = re.compile(r"conda\.sh\b|shell\.bash\s+hook|shell\s+hook")  # the user's own hook line


def conda_hook(spec: RunSpec) -> list[str]:
    """Where a setup line runs `conda activate ENV` before any line of the run sets up conda's shell function: the
    lines that define it (conda's own hook: a batch shell reads no ~/.bashrc, where `conda init` writes it, and
    `conda activate` fails with CondaError after the queue wait). From CONDA_EXE (conda's hook exports it; sbatch
    passes the submitting shell's environment), else a conda on PATH; nothing where there is none (the setup
    line then fails, saying so)."""
    for line in spec.setup:
        if _CONDA_SHELL.search(line):
            return []
        if _CONDA_ACTIVATE.search(line):
            break
    else:
        return []
    return [
        "# -o setup activates a conda environment: conda's shell function first (a batch shell reads no ~/.bashrc)",
        'CONDA_CMD="${CONDA_EXE:-$(command -v conda || true)}"',
        'if [ -n "$CONDA_CMD" ]; then FTCTL_SET="$-"; set +u; eval "$("$CONDA_CMD" shell.bash hook)"; '
        'case "$FTCTL_SET" in *u*) set -u ;; esac; fi',
    ]


_MODULE = re.compile(r"^\s*(module|ml)(\s|$)")
_SOURCE = re.compile(r"^\s*(source|\.)\s+(\S+)")
# what a shell that has environment modules holds: Lmod's and Environment Modules' variables, bash's exported function
_MODULE_ENV = ("LMOD_CMD", "MODULESHOME", "BASH_FUNC_module%%", "BASH_FUNC_module()")


def setup_doubts(spec: RunSpec, env: dict[str, str] | None = None) -> list[str]:
    """Setup lines that will fail in the batch job, as far as the launching shell tells (the job runs in its
    environment, and its batch shell reads no ~/.bashrc or /etc/profile): `module load` where this shell has no
    environment modules, `conda activate` with no conda here (conda_hook finds none either), `source FILE` of no such
    file. Each failed with exit 127 (or 1) after the queue wait; said at launch, not refused (a node may differ)."""
    env = os.environ if env is None else env
    doubts, sourced = [], False
    for line in spec.setup:
        if _MODULE.search(line) and not sourced and not any(k in env for k in _MODULE_ENV):
            doubts.append(
                f"setup line {line!r}: this shell has no `module` command (no LMOD_CMD or MODULESHOME, no exported "
                "module function), and the job's batch shell, started from it, has none either: the line fails "
                "(exit 127, `module: command not found`) after the queue wait. Launch from a login shell where "
                "`module` works, or give its init first: --setup 'source /etc/profile.d/lmod.sh' (or modules.sh)"
            )
        if (
            _CONDA_ACTIVATE.search(line)
            and not sourced
            and not env.get("CONDA_EXE")
            and not shutil.which("conda", path=env.get("PATH"))
        ):
            doubts.append(
                f"setup line {line!r}: no conda here (CONDA_EXE unset, no conda on PATH), so the job has none to "
                "activate with: the line fails (exit 127, `conda: command not found`) after the queue wait. Give "
                "conda's own script first: --setup 'source ~/miniconda3/etc/profile.d/conda.sh' (where conda is "
                "installed), or `conda init` and launch from a new shell"
            )
        if found := _SOURCE.search(line):
            sourced = True  # it may define module or conda: later lines are the user's to know
            path = os.path.expanduser(found.group(2))
            if "$" not in path and os.path.isabs(path) and not os.path.exists(path):
                doubts.append(
                    f"setup line {line!r}: {path} is no file here: the line fails (exit 1) after the queue wait, "
                    "unless the nodes have it"
                )
    return doubts


def stop_file_lines() -> list[str]:
    """The script's ``ask_stop WHY``: the trainer's stop file, created with WHY as its first line. The first reason
    stays (a TERM after the time limit's USR2, or torchrun's own "SIGTERM" at a scancel, does not replace it: the
    trainer may have read it). Written beside it and renamed, so that the trainer never reads it empty; where that
    write fails (a full disk) the file is touched, empty, which stops the trainer the same ("stop file")."""
    stop = f'"${STOP_ENV}"'
    why = f'"${STOP_ENV}.why"'
    return [
        "# the trainer's stop file, saying why in its first line (its stop lines say it); the first reason stays",
        f"ask_stop() {{ [ -s {stop} ] && return 0; {{ printf '%s\\n' \"$1\" > {why} && mv -f {why} {stop}; }} "
        f"2>/dev/null || {{ rm -f {why} 2>/dev/null; touch {stop}; }}; }}",
    ]


def requeue_limit(spec: RunSpec) -> int:
    """How often the job is requeued: -o max_requeues, else MAX_REQUEUES."""
    return MAX_REQUEUES if spec.max_requeues is None else spec.max_requeues


def render(spec: RunSpec, plan: Plan, gres_type: str | None = None, mem_floor: tuple[int, str] | None = None) -> str:
    requeues = requeue_limit(spec)
    # a USR2 at every attempt: mostly its time limit (a too-short --time), which more requeues do not lengthen
    cut_by = f"--time {_sbatch_value('time', spec.time)}" if spec.time else "the partition's default: --time"
    limit = slurm_time_s(spec.time) if spec.time else None
    kind, image = container_kind(spec)
    if kind == "docker":
        raise FtctlError(
            f"{container_as(spec, spec.container)}: on Slurm say how to run it: "
            f"{container_as(spec, f'apptainer:{image}')} (apptainer exec) or "
            f"{container_as(spec, f'pyxis:{image}')} (srun --container-image)."
        )
    if kind == "apptainer" and image.startswith("-"):  # apptainer exec would read it as an option of its own
        raise FtctlError(
            f"{container_as(spec, spec.container)}: apptainer would read an image starting "
            f"with '-' as an option: give a path to it ({container_as(spec, f'apptainer:./{image}')}) "
            f"or its URI ({container_as(spec, 'apptainer:docker://REF')})."
        )
    spec_path = Shell('"$FTCTL_RUN_DIR"/spec.json')
    inner = join(torchrun_argv(spec, plan, spec_path, python=PATH_PYTHON, quiet=True, **rendezvous(plan)))
    # the job's CPUs for the step's task: from Slurm 22.05 to 23.02 srun does not take them from sbatch's, and the
    # step (torchrun, every rank, their data loaders) ran on one core
    step = ["srun", "--kill-on-bad-exit=1", "--ntasks-per-node=1", f"--cpus-per-task={cpus_per_task(spec, plan)}"]
    # local data, output and model directories are bound into the container at the same paths
    read = (*spec.data_paths, spec.chat_template_path or "")  # a hub id or URI is no absolute path: dropped below
    extra = {os.path.dirname(p) if os.path.isfile(p) else p for p in read} | {spec.output}
    if os.path.isdir(spec.model_name_or_path):
        extra.add(spec.model_name_or_path)
    # another run's checkpoint to resume from (-o resume=DIR): bound read-write, as docker mounts it, since a DeepSpeed
    # checkpoint resumed on another world size is converted beside itself (trainer.reshard.to_universal)
    if resume := resumed_elsewhere(spec):
        extra.add(resume)
    extra = sorted(p for p in extra - {""} if os.path.isabs(p) and not is_remote(p))
    caches, credentials = container_homes(spec, kind)
    for p in [*extra, *caches, *credentials] if kind in ("apptainer", "pyxis") else ():
        if "," in p or ":" in p:
            raise FtctlError(
                f"{p!r}: {kind} reads ',' and ':' in a bind path as separators, so this path cannot "
                f"be bound into the container. Rename it, or move it under a path without them."
            )
    extra = sorted({*extra, *caches})
    if kind == "pyxis":
        # unnamed: each step imports the image (twice an attempt with preflight_network), and pyxis removes it as the
        # step ends. --container-name would import it once a job only under container_scope=job; under pyxis' default
        # (global) the container outlives the job, and a later job naming it runs in it, whatever its image
        mounts = ",".join([*(f"{p}:{p}" for p in extra), *(f"{p}:{p}:ro" for p in credentials)])
        step += [
            f"--container-image={pyxis_image(image)}",  # a registry's image as enroot reads it, never Docker Hub's
            Shell('--container-mounts="$FTCTL_RUN_DIR":"$FTCTL_RUN_DIR"' + (f",{q(mounts)}" if mounts else "")),
            "--no-container-mount-home",
        ]
    if kind == "apptainer":
        binds = [a for p in extra for a in ("--bind", p)]
        step += [
            "apptainer",
            "exec",
            *(["--nv"] if plan.tier else []),
            "--bind",
            Shell('"$FTCTL_RUN_DIR"'),
            *binds,
            image,
        ]
    preflight = []
    if spec.preflight_network:  # the same srun step shape, the probe in place of the trainer
        probe = join(netcheck_argv(spec, plan, python=PATH_PYTHON, quiet=True, **rendezvous(plan)))
        preflight = preflight_lines(join([*step, "bash", "-c", probe]), spec, plan)
    step += ["bash", "-c", inner]

    env_lines = [f"export {k}={q(v)}" for k, v in sorted(trainer_env(spec).items())]
    setup = [
        *conda_hook(spec),
        *setup_lines(spec, log=JOB_LOG),  # a failed line says its last output lines: status shows them
        *([f"mkdir -p {join(caches)}  # the Hugging Face caches, bound into the container"] if caches else []),
    ]
    setup += [""] * bool(setup)
    secrets = ", ".join(spec.secrets) or "none"
    lines = [
        "#!/bin/bash",
        f"# Rendered by ftctl {__version__}: {plan.method} of {spec.model_name_or_path!r} on {plan.gpus}".replace(
            "\n", " "
        ),
        "# Submit from the run directory (it holds spec.json): ftctl launch --backend slurm does that, once the job",
        # render asks nothing of the cluster: a --time over the partition's MaxTime, rendered and sbatched by hand,
        # pended forever (PartitionTimeLimit), where launch and its --dry-run refuse it (explore61 finding 16)
        "# is checked against the cluster's partitions and limits (launch --dry-run checks it; ftctl render does not).",
        *(
            [f"# --mem={mem_size(asked[0])} a node: {asked[1]}"]
            if (asked := memory_request(spec, plan, mem_floor))
            else []
        ),
        *[f"#SBATCH {d}" for d in sbatch_directives(spec, plan, gres_type, mem_floor)],
        "set -uo pipefail",
        "",
        'FTCTL_RUN_DIR="$SLURM_SUBMIT_DIR"',
        f"ATTEMPT=${{{SLURM_RESTART_ENV}:-0}}",
        f'export {ATTEMPT_ENV}="$ATTEMPT"',
        f'export {STATUS_ENV}="$FTCTL_RUN_DIR/{SLURM_STATUS_PATTERN.format(**_PER_ATTEMPT)}"',
        f'export {STOP_ENV}="$FTCTL_RUN_DIR/{SLURM_STOP_PATTERN.format(**_PER_ATTEMPT)}"',
        "export FTCTL_RUN_DIR",
        *env_lines,
        f"# secrets come from the submitting environment, by name only: {secrets}",
        *store_access(spec),
        *stop_file_lines(),
        "USR2_AT=\"\"  # when Slurm's USR2 came, by this shell's clock: the time limit's, or a preemption before it",
        'on_signal() { echo "ftctl: USR2 (time limit or preemption): checkpointing"; USR2_AT=${USR2_AT:-$SECONDS}; '
        f"ask_stop {q(STOP_REASONS['USR2'].format(lead=spec.signal_lead_s))}; }}",
        "trap on_signal USR2  # before the setup lines: a signal during them would end the job unsaved",
        'TERMINATED=""',
        'on_term() { echo "ftctl: TERM (a cancel, a requeue or a preemption): checkpointing"; '
        f"TERMINATED=1; ask_stop {q(STOP_REASONS['TERM'])}; }}",
        "trap on_term TERM",
        'CANCELLING=""',
        'on_cancel() { echo "ftctl: cancel asked (ftctl cancel): checkpointing, then the job ends, not requeued"; '
        f"CANCELLING=1; ask_stop {q(STOP_REASONS[CANCEL_SIGNAL])}; }}",
        CANCEL_TRAP,
        "",
        # the attempt's first line before its setup lines: a setup line's error is said within its attempt
        'HEAD_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        "export HEAD_ADDR",
        *(
            head_port_lines(spec)
            if plan.nodes > 1
            else []  # a one-node job's torchrun takes a free port itself (rendezvous)
        ),
        *torchrun_threads(spec, plan),
        f"LOG={JOB_LOG}",
        'LOG_AT=$({ wc -c < "$LOG"; } 2>/dev/null || echo 0)  # where this attempt\'s lines start in its log',
        f'echo "{ATTEMPT_LINE.format(job="$SLURM_JOB_ID", attempt="$ATTEMPT")} on $SLURM_JOB_NODELIST (head $HEAD_ADDR)"',
        "",
        *setup,
        *preflight,
        join(step) + " &",
        "STEP_PID=$!",
        "# wait returns early when a signal arrives; wait again until the step really ends",
        'while true; do wait "$STEP_PID"; RC=$?; kill -0 "$STEP_PID" 2>/dev/null || break; done',
        "",
        f'if [ -n "$TERMINATED" ] && ! grep -qxE "complete|preempted" "${STATUS_ENV}" 2>/dev/null; then',
        *saved_before(spec, plan),
        '  echo "ftctl: stopped by TERM (exit $RC) before a checkpoint of this attempt; where Slurm requeues this job '
        "(a requeue, a node failure, a preemption) it goes on by itself, else (a cancel) the same ftctl launch does: "
        '$FROM"',
        "  exit 143",
        "fi",
        f'if [ "$RC" -ne 0 ] && [ ! -s "${STATUS_ENV}" ]; then',
        "  # no status word (a full disk, a killed rank): an error line of the step's own says why, or this one guesses",
        f'  if tail -c +$((LOG_AT + 1)) "$LOG" 2>/dev/null | grep "^{ERROR_PREFIX}" >/dev/null; then',
        '    echo "ftctl: the job step exited with $RC; the error above says why"',
        "  else",
        f'    echo "{ERROR_PREFIX}the job step exited with $RC before the trainer said how it ended (srun or the '
        "container failed, or the trainer was killed: out of memory?); the log has the details (ftctl logs "
        '$SLURM_JOB_ID); the same ftctl launch resumes from the last checkpoint"',
        "  fi",
        "fi",
        f'STATUS=$(cat "${STATUS_ENV}" 2>/dev/null || echo failed)',
        'echo "ftctl: trainer exited with $RC, status $STATUS"',
        'if [ "$STATUS" = preempted ] && [ -n "$TERMINATED" ]; then',
        f'  echo "ftctl: stopped by TERM at the checkpoint above; {_AFTER_TERM}"',
        "  exit 143",
        "fi",
        'if [ "$STATUS" = preempted ] && [ -n "$CANCELLING" ]; then',
        '  echo "ftctl: stopped at the checkpoint above, as ftctl cancel asked: cancelling job $SLURM_JOB_ID, not '
        'requeueing it; the same ftctl launch resumes it"',
        "  trap '' TERM  # the cancel's own TERM: nothing is left to save",
        '  scancel "$SLURM_JOB_ID"',
        "  exit 143",
        "fi",
        'if [ "$STATUS" = preempted ]; then',
        '  AT_LIMIT=""',
        *requeue_cause(requeues, cut_by, limit, spec.signal_lead_s),
        f'  if [ "$ATTEMPT" -lt {requeues} ]; then',
        f'    echo "ftctl: requeueing job $SLURM_JOB_ID (requeue $((ATTEMPT + 1)) of at most {requeues}): this attempt '
        '$WHY"',
        '    scontrol requeue "$SLURM_JOB_ID" && exit 0',
        f'    echo "{ERROR_PREFIX}scontrol requeue failed (exit $?; its words above): the job stopped at its checkpoint; '
        'the same ftctl launch resumes it"',
        "    exit 1",
        "  fi",
        '  echo "$LAST"',
        *wait_for_time_limit(limit),
        "  exit 1",
        "fi",
        'exit "$RC"',
        "",
    ]
    return "\n".join(lines)
