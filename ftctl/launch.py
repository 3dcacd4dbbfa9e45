"""The one launch line every backend runs on every node, and shell quoting.

    torchrun --nnodes N --nproc-per-node G --rdzv-backend c10d --rdzv-endpoint HEAD:PORT \\
             --rdzv-id RUN[-JOB] -m ftctl.trainer --spec SPEC

The c10d rendezvous assigns node ranks, so the line is the same on every node. Where jobs may share a node
(Slurm), the backend passes a port and a job tag of the job's own (Shell variables), so two jobs never meet in
one rendezvous; a run on one host (local, docker, a one-node SkyPilot job: ``head=None``) rendezvous on a free
port of its own (``--standalone``) unless it sets rdzv_port; elsewhere it is spec.rdzv_port and the run name.

User values are always quoted with ``shlex.quote``; intentional shell (``"$HEAD_ADDR"``) is marked
``Shell`` and passes through untouched, so no value a user typed is ever interpolated by hand.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import subprocess
from collections.abc import Mapping

from ftctl.envvars import STATUS_ENV, STOP_ENV, THREADS_ENV  # noqa: F401  (re-exported for the renderers)
from ftctl.errors import FtctlError
from ftctl.failures import ERROR_PREFIX
from ftctl.plan import Plan
from ftctl.spec import FIELDS, RunSpec


class Shell(str):
    """Text meant for the shell as written: a variable, a substitution. Never user input."""


def q(value) -> str:
    """Quote for a POSIX shell unless it is marked Shell."""
    return str(value) if isinstance(value, Shell) else shlex.quote(str(value))


def join(argv) -> str:
    return " ".join(q(a) for a in argv)


def nproc_per_node(plan: Plan) -> int:
    return plan.gpus_per_node if plan.tier else 1


# the python of a node's or an image's PATH: the torchrun's where a venv, conda env or image puts both on PATH
PATH_PYTHON = "python3"


def torchrun_argv(spec: RunSpec, plan: Plan, spec_path, head, python=None, quiet=False, port=None, job=None) -> list:
    """The launch line. ``head`` is usually a Shell variable of the backend; ``python`` (a path or a Shell word)
    runs torchrun as a module, else the ``torchrun`` on PATH runs; ``quiet``: ftctl's torchrun (ftctl.trainer.
    torchrun: a failed rank in one line, no exit-barrier race of a finished multi-node run), with ``python``;
    ``port`` (default spec.rdzv_port) and ``job`` (a tag appended to the rendezvous id) are the job's own where
    several jobs may share a node; ``head=None``: the run is this host's alone (standalone)."""
    return [
        *_torchrun(spec, plan, head, python, quiet, port, _rdzv_id(spec.name, job)),
        "-m",
        "ftctl.trainer",
        "--spec",
        spec_path,
    ]


def _torchrun(spec: RunSpec, plan: Plan, head, python, quiet: bool, port, rdzv_id) -> list:
    """torchrun and its options, up to the module it runs: the launch line's and the network preflight's."""
    assert python or not quiet, "ftctl's quiet torchrun runs as a module: name its python"
    module = "ftctl.trainer.torchrun" if quiet else "torch.distributed.run"
    torchrun = [python, "-m", module] if python else ["torchrun"]
    procs = ["--nnodes", str(plan.nodes), "--nproc-per-node", str(nproc_per_node(plan))]
    if head is None:
        assert plan.nodes == 1, "a run on this host alone has one node"
        if port is None and spec.rdzv_port == FIELDS["rdzv_port"].default:
            # a free port of its own: on one fixed port, a second run on this host joined the first's store
            # (torchrun tries it as a client when the port is taken) and failed when that run ended
            return [*torchrun, "--standalone", *procs]
        head = "127.0.0.1"
    port = spec.rdzv_port if port is None else port
    shell = isinstance(head, Shell) or isinstance(port, Shell)
    # a node's torchrun waits RDZV_READ_TIMEOUT_S for the first node's store (one node's hosts its own)
    patient = ["--rdzv-conf", f"read_timeout={RDZV_READ_TIMEOUT_S}"] if plan.nodes > 1 else []
    return [
        *torchrun,
        *procs,
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        Shell(f"{q(head)}:{q(port)}") if shell else f"{head}:{port}",
        "--rdzv-id",
        rdzv_id,
        *patient,
    ]


# how long a node's torchrun waits for the first node's rendezvous store (torch's c10d backend: read_timeout, 60 s
# unless set). Every node's task starts at once (srun, SkyPilot's run), but one may get there minutes before the first
# node's does (a container imported on one node and cached on another, torch imported from a cold shared filesystem),
# and it failed "The client socket has timed out after 60s while trying to connect" (RendezvousConnectionError,
# pytorch/pytorch#107021). torch's join_timeout, the whole rendezvous's wait, is as long. Measured with torch 2.13, two
# torchruns, the store's 240 s late: the default exits 1, read_timeout=600 runs both (tests/test_slurm_rdzv242.py).
RDZV_READ_TIMEOUT_S = 600


#: the port a job's rendezvous listens on, set by job_port_line
JOB_PORT = Shell('"$RDZV_PORT"')
PORT_SPREAD = 1000  # RDZV_PORT = rdzv_port + 1 + (a number of the job's) % PORT_SPREAD


def job_port_line(spec: RunSpec, number: str, who: str) -> str:
    """The shell line that sets RDZV_PORT for a multi-node job on a shared cluster: rdzv_port + 1 plus ``number``
    (shell arithmetic on the scheduler's job id) mod PORT_SPREAD, so jobs sharing a head node listen apart (on one
    port, the second joined the first's store and failed when it ended), and none on rdzv_port itself: 29500 is
    torchrun's, accelerate's and DeepSpeed's default, where a hand-started run on the node listens (from rdzv_port,
    each job numbered ...000 failed "address already in use"). ``who``: the job, for the message."""
    if spec.rdzv_port + PORT_SPREAD > 65535:
        raise FtctlError(
            f"rdzv_port={spec.rdzv_port}: {who} listens on rdzv_port + 1 + (job id % {PORT_SPREAD}), past the "
            f"last port (65535); use -o rdzv_port={65535 - PORT_SPREAD} or less."
        )
    return f"RDZV_PORT=$(({spec.rdzv_port + 1} + {number} % {PORT_SPREAD}))"


def _rdzv_id(name: str, job):
    """The rendezvous id: ``name``, with the job's tag where one is given (Shell: ``NAME-"$SLURM_JOB_ID"``)."""
    return name if job is None else Shell(f"{q(name)}-{q(job)}")


def setup_lines(spec: RunSpec, log: str | None = None) -> list[str]:
    """The user's setup lines (module load, activating a venv), each ending the job when it fails: a missing
    activate script was skipped and the job trained with another python. A line runs in the script's own shell (an
    activation stays), closed on a line of its own (a comment at its end closes nothing). The Slurm script's, and
    SkyPilot's setup and run sections' (each a script of its own), so a line must be safe to run again (a requeue
    runs it again too). They run without nounset, whatever the script's (an activate script, or export
    LD_LIBRARY_PATH=/x:$LD_LIBRARY_PATH, reads unset variables: under set -u bash ended the script unsaid), and the
    script's own errexit and nounset come back after them (a `set -e` line made the Slurm script exit at the wait
    that its time-limit signal interrupts: no checkpoint, no requeue). A line bash cannot parse is refused here,
    not after the queue wait. A failed line's error says why where it can, indented under it (`ftctl status` shows
    those lines with it: failures.error_line): exit 127's missing command (a batch shell reads no ~/.bashrc), and
    with ``log`` (a shell word: the file the script's output goes to, the Slurm job's log) the line's own last
    output lines: the status said only "(exit 127)"."""
    if not spec.setup:
        return []
    lines = [
        "# setup (-o setup=...): the job ends at the first line that fails",
        'FTCTL_SET="$-"; set +u',
    ]
    for line in spec.setup:
        if not line.strip() or line.lstrip().startswith("#"):
            lines.append(line)  # nothing to run: as it is (a brace would close nothing after a comment)
            continue
        if line.rstrip().endswith("\\"):
            raise FtctlError(f"setup line {line!r} continues on the next: give each command whole, one line each.")
        said = q(f"{ERROR_PREFIX}a setup line failed: {line}")  # `ftctl status` says it (failures.error_line)
        failed = [
            # a line killed by the job's TERM (the Slurm script's trap sets TERMINATED) is no broken line
            'RC=$?; [ -z "${TERMINATED:-}" ] || { echo "ftctl: stopped by TERM during the setup lines"; exit 143; };',
            *(
                [
                    f"OUT=$(tail -c +$((FTCTL_AT + 1)) {log} 2>/dev/null | tail -n {SETUP_OUTPUT_LINES} | sed 's/^/  | /');"
                ]
                if log
                else []
            ),
            f'echo {said} "(exit $RC): not training; fix -o setup=...";',
            f'[ "$RC" != 127 ] || echo {q(NOT_FOUND)};',
            *(['[ -z "$OUT" ] || printf \'%s\\n\' "  its last output:" "$OUT";'] if log else []),
            f'[ -z "${{{STATUS_ENV}:-}}" ] || echo failed > "${STATUS_ENV}"; exit "$RC";',
        ]
        block = [
            *(
                [f"FTCTL_AT=$(stat -c %s {log} 2>/dev/null || echo 0)  # where this line's output starts"]
                if log
                else []
            ),
            f"{{ {line}",
            f"}} || {{ {' '.join(failed)} }}",
        ]
        _parses(line, "\n".join(block))
        lines += block
    return [*lines, 'case "$FTCTL_SET" in *e*) set -e ;; *) set +e ;; esac; case "$FTCTL_SET" in *u*) set -u ;; esac']


SETUP_OUTPUT_LINES = 5  # of a failed setup line's output, said under its error (the rest is above it in the log)
NOT_FOUND = (
    "  exit 127: a command of it is not found in the batch shell, which reads no ~/.bashrc or /etc/profile: source "
    "what defines it on a setup line before it (module: /etc/profile.d/lmod.sh or modules.sh; conda: "
    "CONDA_DIR/etc/profile.d/conda.sh), or give the full path of the command"
)


def _parses(line: str, block: str) -> None:
    """Refuse a setup line that bash cannot parse (`echo a &&`, `if true; then`), with bash's words for the line.
    Not where this machine's bash is older than the nodes' can be (a Mac's /bin/bash is 3.2): it refuses bash 4's
    `cmd |& tee log` and `cmd &>> log`, which the nodes run; there the nodes' bash judges the line."""
    for text in (line, block):
        checked = subprocess.run(["bash", "-n"], input=text, capture_output=True, text=True)
        if checked.returncode != 0 and not _old_bash():
            said = re.sub(r"^bash: (line \d+: )?", "", (checked.stderr.strip().splitlines() or [""])[0])
            raise FtctlError(
                f"setup line {line!r} is not a whole shell command (bash: {said}): give each command whole, one line "
                "each."
            )


@functools.cache
def _old_bash() -> bool:
    """Whether the bash here is older than 4 (macOS ships 3.2, under GPLv2), which parses less than the nodes'."""
    said = subprocess.run(["bash", "-c", 'echo "${BASH_VERSINFO[0]}"'], capture_output=True, text=True).stdout.strip()
    return said.isdigit() and int(said) < 4


NETCHECK_MODULE = "ftctl.trainer.netcheck"
# the preflight's floor when preflight_min_busbw_gbps is not set: a GPU job on a network slower than this
# (a 1 GbE management interface picked by mistake gives ~0.1) would crawl; a CPU run (gloo) only checks
# that every process reaches the others
GPU_MIN_BUSBW_GBPS = 1.0


def preflight_threshold(spec: RunSpec, plan: Plan) -> float:
    if spec.preflight_min_busbw_gbps is not None:
        return spec.preflight_min_busbw_gbps
    return GPU_MIN_BUSBW_GBPS if plan.tier else 0.0


def netcheck_argv(spec: RunSpec, plan: Plan, head, python=None, quiet=False, port=None, job=None) -> list:
    """The network preflight: the launch line's torchrun shape (same nodes, processes, rendezvous endpoint; an id
    of its own) running the all-reduce probe instead of the trainer, stopping below ``preflight_min_busbw_gbps``."""
    return [
        *_torchrun(spec, plan, head, python, quiet, port, _rdzv_id(f"{spec.name}-netcheck", job)),
        "-m",
        NETCHECK_MODULE,
        "--min-busbw-gbps",
        f"{preflight_threshold(spec, plan):g}",
    ]


def preflight_lines(command: str, spec: RunSpec, plan: Plan) -> list[str]:
    """Shell lines that run the rendered preflight ``command`` and end the script, with a message that
    says what to do, when it fails: the Slurm script's and SkyPilot's run section's."""
    threshold = f"{preflight_threshold(spec, plan):g}"
    return [
        "# network preflight (preflight_network): an all-reduce across every process of the job, first",
        "PREFLIGHT_RC=0",
        f"{command} || PREFLIGHT_RC=$?",  # also under set -e (SkyPilot's run section)
        'if [ "$PREFLIGHT_RC" -ne 0 ]; then',
        f'  echo "{ERROR_PREFIX}network preflight failed (exit $PREFLIGHT_RC): not training. Either the bus bandwidth is '
        f"below preflight_min_busbw_gbps={threshold} GB/s or the processes could not reach each other: see the "
        f'netcheck lines above (-o socket_ifname=IFACE picks the interface; -o preflight_min_busbw_gbps=N)."',
        f'  [ -z "${{{STATUS_ENV}:-}}" ] || echo failed > "${STATUS_ENV}"',
        '  exit "$PREFLIGHT_RC"',
        "fi",
    ]


def preflight_shell(spec: RunSpec, plan: Plan, head, python=None, quiet=False, port=None, job=None) -> list[str]:
    """The preflight's shell lines for a script that runs the launch line directly on every node (SkyPilot's
    run section: ``head`` is its Shell variable; ``python``, ``quiet``, ``port`` and ``job`` as the launch
    line's); [] unless preflight_network is set."""
    if not spec.preflight_network:
        return []
    return preflight_lines(join(netcheck_argv(spec, plan, head, python, quiet, port, job)), spec, plan)


def trainer_env(spec: RunSpec, inherited: Mapping[str, str] | None = None) -> dict[str, str]:
    """Plain environment the trainer needs on every node (never secrets: those pass by name). ``inherited``:
    the environment the trainer starts in where the launcher knows it (local), whose OMP_NUM_THREADS is the
    user's choice as the spec's is; without one the trainer shares the cores (envvars.THREADS_ENV)."""
    env = {"TOKENIZERS_PARALLELISM": "false"}
    if not {**(inherited or {}), **spec.env}.get("OMP_NUM_THREADS"):
        env[THREADS_ENV] = "auto"
    if spec.socket_ifname:
        env["NCCL_SOCKET_IFNAME"] = spec.socket_ifname
        env["GLOO_SOCKET_IFNAME"] = spec.socket_ifname
    if spec.s3_endpoint_url:
        env["AWS_ENDPOINT_URL"] = spec.s3_endpoint_url
    env.update(spec.env)
    return env


# Hugging Face caches a host may keep apart from HF_HOME (the hub's models, datasets, xet chunks): where one is
# set, a container gets it at its own path, or it would download again into HF_HOME
HF_CACHE_VARS = ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_DATASETS_CACHE", "HF_XET_CACHE")


def hf_caches(env: Mapping[str, str]) -> tuple[str, tuple[tuple[str, str], ...]]:
    """HF_HOME as huggingface_hub resolves it from ``env`` (else XDG_CACHE_HOME's, else ~/.cache's huggingface/),
    and the HF_CACHE_VARS ``env`` sets apart from it: (variable, path)."""
    root = env.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    hf_home = os.path.abspath(os.path.expanduser(env.get("HF_HOME") or os.path.join(root, "huggingface")))
    return hf_home, tuple((v, os.path.abspath(os.path.expanduser(env[v]))) for v in HF_CACHE_VARS if env.get(v))


CONTAINER_ALIASES = {"singularity": "apptainer", "enroot": "pyxis"}  # the older name, the runtime beneath


def container_kind(spec: RunSpec) -> tuple[str | None, str | None]:
    """('docker'|'apptainer'|'pyxis'|None, image); ``none`` (or empty) is no container; singularity: is apptainer:,
    enroot: pyxis:."""
    if not spec.container or spec.container.strip().lower() == "none":
        return None, None
    kind, _, image = spec.container.partition(":")
    kind = CONTAINER_ALIASES.get(kind, kind)
    if kind in ("docker", "apptainer", "pyxis") and image:
        return kind, image
    return "docker", spec.container
