"""Environment variables that connect the backends' scripts with the trainer (one place for each)."""

# The trainer's rank 0 writes one word here at exit: complete | preempted | failed.
STATUS_ENV = "FTCTL_STATUS_FILE"
# Its existence asks the trainer to checkpoint and stop at the next step boundary (Slurm's batch
# shell gets the time-limit signal; signalling torchrun itself would kill it).
STOP_ENV = "FTCTL_STOP_FILE"
# Seconds between rank 0's asks for `ftctl cancel`'s stop request in an object-store output (trainer.callbacks.
# StopRequest; default 10: one small GET each, against a store that may bill it). Shorter stops a cancelled SkyPilot
# job sooner (`-o env=FTCTL_STOP_REQUEST_POLL_S=2`; the tests' cluster runs); a value that is no number above 0: 10.
STOP_POLL_ENV = "FTCTL_STOP_REQUEST_POLL_S"
# A directory where each failing rank leaves one record (ftctl.failures); the launcher reports it once.
FAILURE_DIR_ENV = "FTCTL_FAILURE_DIR"
# torchrun's file for one worker's error, which its agent sets for each (ftctl.failures.tell_torchrun): its report of
# a failed worker says what the file holds; its directory's parent is the node's attempt's (failures.first_to_say)
ELASTIC_ERROR_ENV = "TORCHELASTIC_ERROR_FILE"
# 1: show every third-party message ftctl.quiet lowers to debug (also `ftctl -v`); inherited by the trainer.
VERBOSE_ENV = "FTCTL_VERBOSE"
# "auto": the trainer sets OMP_NUM_THREADS to the cores it may use divided by the processes of its node
# (distributed.cpu_threads). The launchers set it unless the user chose OMP_NUM_THREADS: torchrun's own default
# for several processes is one thread each, which halved 2-GPU steps with gradient accumulation (bench/NOTES.md v27).
THREADS_ENV = "FTCTL_CPU_THREADS"
# A mirror of torch's wheel index (the folder holding its cu126/, cu128/, cpu/ ...), where a SkyPilot node's setup
# installs torch from (ftctl.torch_builds, ftctl.sky.node_stack); set with -o env=FTCTL_TORCH_INDEX=URL.
TORCH_INDEX_ENV = "FTCTL_TORCH_INDEX"
# The base model as the user named it where the job loads a copy from elsewhere (a SkyPilot task's shipped
# --model directory): what the final adapter records as its base, so chat/eval/merge find it where it was launched.
BASE_MODEL_ENV = "FTCTL_BASE_MODEL"
# Slurm's count of a job's requeues (0 or unset: its first attempt)...
SLURM_RESTART_ENV = "SLURM_RESTART_COUNT"
# ...as ftctl's Slurm script passes it to the trainer (not inherited by another run started inside an allocation):
# a requeued attempt continues the checkpoints its job saved, also under resume=never.
ATTEMPT_ENV = "FTCTL_ATTEMPT"
# SkyPilot's id of a task's job, kept by a managed job's recoveries (ending in _CLUSTER_JOBID): who holds a lease
# (ftctl.lease), which job's attempts trained a run (trainer.run.recovered)
SKY_TASK_ENV = "SKYPILOT_TASK_ID"
# huggingface_hub's switch for its usage pings, which TRL's trainer sends from rank 0 at each start (its version,
# trainer, model type, GPU, world size; a thread of its own, to huggingface.co): the trainer sets it to 1 where the user
# set it to nothing (tracking.set_env), as a node often reaches no Internet and nobody asked for it. TRL reads no switch
# of its own (it skips the ping where CI is set).
HUB_TELEMETRY_ENV = "HF_HUB_DISABLE_TELEMETRY"


def telemetry_off(given) -> dict[str, str]:
    """The variable the trainer sets to send no usage ping: {} where ``given`` (its environment, with the run's
    -o env=...) names HUB_TELEMETRY_ENV, whatever its value (the user's choice)."""
    return {} if HUB_TELEMETRY_ENV in given else {HUB_TELEMETRY_ENV: "1"}


# Optional kernels that libraries fetch from the Hub through the `kernels` package (which transformers >= 5.25
# installs) without anyone asking, each with its own code to fall back on: bitsandbytes' CPU 4-bit kernel at its import
# on CPUs with AVX512-BF16 (every process that imports PEFT), its Apple GPU kernel at its first 4-bit op, and
# transformers' FlashAttention stand-ins where flash-attn is not installed (FLASH_ATTN_KERNEL_FALLBACK, probed at the
# import of GPT-Neo's and Bark's modelling code; ftctl asks for flash_attention_2 only where flash-attn imports).
# huggingface_hub asks the Hub of them with no timeout: on a network that drops packets every process hung. kernels
# looks each kernel up in LOCAL_KERNELS (repo=path:repo=path) before the Hub, at each get_kernel; a path that holds no
# build fails that kernel at once (FileNotFoundError, which those libraries catch). quiet.install sets it first thing in
# every ftctl process; a LOCAL_KERNELS of the user's own is kept (a kernel it does not name comes from the Hub).
LOCAL_KERNELS_ENV = "LOCAL_KERNELS"
UNASKED_KERNELS = (
    "kernels-community/quantization-bitsandbytes",
    "kernels-community/bitsandbytes-mps",
    "kernels-community/flash-attn2",
    "kernels-community/vllm-flash-attn3",
    "kernels-community/flash-attn4",
    "kernels-community/aiter-flash-attn",
)
# transformers >= 5.25 also swaps layers of every model it loads (from_pretrained's use_kernels, None -> True where
# `kernels` is installed) for Hub kernels on a GPU: Llama's rotary embedding for kernels-community/rotary ... On a node
# that reaches no Hub that failed every GPU run at its first step ("could not verify publisher trust status", v86); where
# it does, it would run code ftctl did not choose beside Liger's kernels, which ftctl plans and measured. Off by
# default (transformers' own switch); USE_HUB_KERNELS=1 of the user's own turns them on.
HUB_KERNELS_ENV = "USE_HUB_KERNELS"


def no_unasked_kernels() -> dict[str, str]:
    """The environment defaults that keep Hub kernels nobody asked for out of ftctl's processes:
    :data:`UNASKED_KERNELS` pointed at os.devnull, transformers' layer swaps (HUB_KERNELS_ENV) off."""
    import os

    return {LOCAL_KERNELS_ENV: ":".join(f"{repo}={os.devnull}" for repo in UNASKED_KERNELS), HUB_KERNELS_ENV: "0"}


# 1: an ftctl command checked this environment's FTCTL_* variables and said those it reads none of (cli.main); set for
# the processes it starts, so the trainer it starts (`ftctl train`'s, in its own process; launch's torchrun; a Slurm
# job, which inherits the launching shell's environment) does not say them again. A trainer that no ftctl command
# started (`python -m ftctl.trainer`, torchrun by hand, sbatch of a rendered script) says them itself (unknown_unsaid).
CHECKED_ENV = "FTCTL_ENV_CHECKED"
# Every FTCTL_* variable ftctl or its scripts read: a run's env (-o env=NAME=VALUE) naming none of them sets a variable
# nobody reads (a typo of the nearest, where one is close), and is refused (setting_problem)
KNOWN = frozenset(
    {STATUS_ENV, STOP_ENV, STOP_POLL_ENV, FAILURE_DIR_ENV, VERBOSE_ENV, THREADS_ENV, TORCH_INDEX_ENV, BASE_MODEL_ENV}
    | {ATTEMPT_ENV, "FTCTL_DEBUG", "FTCTL_BACKEND", "FTCTL_CACHE", "FTCTL_LOCAL_DIR", "FTCTL_HOME", "FTCTL_DOCKER"}
    | {
        "FTCTL_DOCKER_SAME_PATHS",
        "FTCTL_SKY_PYTHON",
        "FTCTL_PYTHON",
        "FTCTL_RUN_DIR",
        "FTCTL_SPEC_EOF",
        "FTCTL_VERSION",
    }
    | {"FTCTL_SKY_SAY_FD", CHECKED_ENV}
)
# The ones a user sets, where ftctl runs (or in a run's -o env=); the others are set by ftctl for its trainer and scripts
SETTINGS = (
    "FTCTL_BACKEND",
    "FTCTL_HOME",
    "FTCTL_CACHE",
    "FTCTL_LOCAL_DIR",
    "FTCTL_DEBUG",
    VERBOSE_ENV,
    THREADS_ENV,
    STOP_POLL_ENV,
    "FTCTL_DOCKER",
    "FTCTL_DOCKER_SAME_PATHS",
    "FTCTL_SKY_PYTHON",
    TORCH_INDEX_ENV,
)
# This repository's own switches for its tests and its setup script (tests/, scripts/), which no ftctl command reads:
# set where the tests run ftctl, they are nobody's typo (unknown_set)
TESTS_PREFIX = "FTCTL_TEST_"
TESTS_OWN = frozenset({"FTCTL_SETUP_TESTS", "FTCTL_SKY_ISOLATE_HOME"})


def _unread(name: str) -> bool:
    """An FTCTL_* name ftctl reads nowhere, nor the tests' own switches (TESTS_OWN, TESTS_PREFIX)."""
    return (
        name.startswith("FTCTL_") and name not in KNOWN and name not in TESTS_OWN and not name.startswith(TESTS_PREFIX)
    )


def _the_ones_read() -> str:
    """The sentence that names the settings, in unknown_set's warning and setting_problem's refusal."""
    return f"The ones it reads: {', '.join(SETTINGS)} (docs/configuration.md)."


def unknown_set(environ) -> str | None:
    """'warning: ...' naming each FTCTL_* variable set in ``environ`` that ftctl reads none of (a typo, an older or
    newer ftctl's name: it changes nothing), the nearest setting where one is close, and the settings there are; None
    where every one is known. A warning, not a refusal: nothing is wrong with the command itself. Said by the CLI once a
    command (cli.main), and by a trainer no command started (unknown_unsaid)."""
    import difflib

    names = sorted(filter(_unread, environ))
    if not names:
        return None
    said = []
    for name in names:
        close = difflib.get_close_matches(name, SETTINGS, n=1, cutoff=0.8)
        said.append(f"{name} (did you mean {close[0]}?)" if close else name)
    one = len(names) == 1
    return (
        f"warning: {', '.join(said)} {'is' if one else 'are'} set in this environment, but ftctl reads no such "
        f"variable{'' if one else 's'}: {'it changes' if one else 'they change'} nothing. " + _the_ones_read()
    )


def unknown_unsaid(environ) -> str | None:
    """unknown_set's warning for a trainer that no ftctl command started (CHECKED_ENV unset: run by hand, by torchrun,
    by an sbatch of a rendered script); None where the command that started it said it already."""
    return None if environ.get(CHECKED_ENV) else unknown_set(environ)


def setting_problem(name: str, value: str) -> str | None:
    """Why a run's env ``name=value`` sets nothing the user meant, as a sentence with the fix; None where it may: an
    FTCTL_* name ftctl reads none of (the nearest is said where one is close, else the settings; the tests' own
    switches pass), FTCTL_CPU_THREADS other than auto (a count of threads is OMP_NUM_THREADS),
    FTCTL_STOP_REQUEST_POLL_S that is no number of seconds above 0 (the trainer would warn in the
    job's log and ask every 10 s)."""
    import difflib
    import math

    if _unread(name):
        if close := difflib.get_close_matches(name, sorted(KNOWN), n=1, cutoff=0.85):
            return f"env {name}: ftctl reads no such variable; did you mean {close[0]}?"
        return (
            f"env {name}: ftctl reads no such variable, so it would change nothing. {_the_ones_read()} A variable of "
            "your own: name it without FTCTL_."
        )
    if name == THREADS_ENV and value.strip() not in ("auto", ""):
        return (
            f"{_said(name, value)}: it takes auto (each process of a node a share of its cores, what launch "
            "sets); a number of threads is -o env=OMP_NUM_THREADS=N."
        )
    if name == STOP_POLL_ENV:
        try:
            seconds = float(value)
        except ValueError:
            seconds = math.nan
        if not 0 < seconds < math.inf:
            return f"{_said(name, value)}: give the seconds between asks, a number above 0 (default 10)."
    return None


def _said(name: str, value: str) -> str:
    """How setting_problem names ``name``'s value: env NAME=VALUE where VALUE reads as a number (what is mistaken
    there: 8, 0, -1, inf), else without it: a secret pasted into the wrong variable is never repeated (this check
    runs before spec's credential checks, and this module is below them)."""
    import re

    shown = re.fullmatch(r"[+-]?(?:[0-9][0-9_.]*(?:e[+-]?[0-9]+)?|\.[0-9]+|inf|nan)", value.strip(), re.I)
    return (
        f"env {name}={value.strip()}"
        if shown and len(value.strip()) <= 24
        else f"env {name} (its value is not repeated here)"
    )
