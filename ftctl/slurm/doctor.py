"""`ftctl doctor --backend slurm`: is Slurm reachable, what does the cluster offer, and would a
request for a partition / nodes / GPUs / CPUs / memory / time fit it — said before an expensive submit.

The facts come from ``sinfo`` (one row per node and partition), so they are what the controller
reports now, including nodes that are down or drained.
"""

from __future__ import annotations

import math
import re
import shutil
import time as clock
from collections.abc import Mapping
from dataclasses import dataclass, field

from ftctl import gpus as gpu_table
from ftctl.errors import FtctlError, did_you_mean
from ftctl.slurm.scheduler import ANSWER_MEMO_S, DOCTOR_HINT, command_error, run_command, slurm_env
from ftctl.spec import slurm_time_s

# node states in which a node will not take a job soon
_UNUSABLE = (
    "down",
    "drain",
    "drng",
    "fail",
    "maint",
    "boot",
    "futr",
    "future",
    "inval",
    "npc",
    "unk",
    "unknown",
    "power_down",
    "powered_down",
    "powering_down",
)
# %n: the node's hostname (NodeHostname); %L: the partition's DefaultTime, the limit of a job that gives no --time
_SINFO_FORMAT = "%P|%N|%t|%c|%m|%l|%a|%G|%n|%L"


@dataclass(frozen=True)
class NodeInfo:
    name: str
    state: str  # sinfo's short state: idle, mix, alloc, down*, drain, ...
    cpus: int
    memory_mb: int
    gpus: dict[str, int]  # GPU type ('' when untyped) -> count, from the node's gres
    hostname: str = ""  # its NodeHostname ('' where sinfo did not say)

    @property
    def usable(self) -> bool:
        state = self.state.rstrip("*~#!%$@^-+").lower()
        return not self.state.endswith("*") and not any(state.startswith(u) for u in _UNUSABLE)

    @property
    def gpu_count(self) -> int:
        return sum(self.gpus.values())

    @property
    def memory_gb(self) -> float:
        return self.memory_mb * 2**20 / 1e9  # Slurm's MB are MiB

    @property
    def memory_gib(self) -> int:
        """Its RAM in whole GiB, as --mem's G counts (and as a user reads Slurm memory: doctor, the plan's notes)."""
        return self.memory_mb // 1024


@dataclass
class PartitionInfo:
    name: str
    default: bool
    available: bool  # sinfo's avail column says 'up'
    time_limit: str
    nodes: list[NodeInfo] = field(default_factory=list)
    default_time: str = ""  # sinfo's %L (DefaultTime): 'n/a' where unset, '' where sinfo did not say

    @property
    def job_time_limit(self) -> str | None:
        """The time limit of a job that gives no --time, as sinfo says it: the partition's DefaultTime, else its
        MaxTime (slurm.conf: "If not set then MaxTime will be used"); None where that is none (infinite) or not
        known (an older sinfo's answer without %L)."""
        if not self.default_time:
            return None
        limit = self.default_time if self.default_time.lower() not in ("n/a", "none") else self.time_limit
        try:
            return limit if slurm_time_s(limit) is not None else None
        except ValueError:
            return None

    @property
    def gpu_summary(self) -> str:
        counts: dict[str, set[int]] = {}
        for node in self.nodes:
            for gtype, count in node.gpus.items():
                counts.setdefault(gtype, set()).add(count)
        if not counts:
            return "no GPUs"
        return ", ".join(
            f"gpu:{t + ':' if t else ''}{'/'.join(map(str, sorted(c)))}" for t, c in sorted(counts.items())
        )

    @property
    def time_limit_s(self) -> int | None:
        """The partition's time limit in seconds; None when it has none (infinite) or sinfo's text is not a time."""
        try:
            return slurm_time_s(self.time_limit)
        except ValueError:
            return None

    @property
    def gpu_types(self) -> list[str]:
        """The GPU types its nodes' GRES name ('' for untyped GRES: gpu:8)."""
        return sorted({t for n in self.nodes for t in n.gpus})

    def types_of(self, gpu_type: str) -> list[str]:
        """Its GRES GPU types that could be ftctl's ``gpu_type`` (an untyped one cannot be told apart, so it could)."""
        return [t for t in self.gpu_types if _same_gpu(t, gpu_type)]

    def gres_type(self, gpu_type: str, per_node: int = 1) -> str | None:
        """The type name a request for ``gpu_type`` asks for here, where every GPU of the partition has a type name:
        the one GRES type that names it; of several (nvidia_a100-pcie-40gb and nvidia_a100-sxm4-80gb) beside GPUs of
        other models, the one with the most nodes that hold ``per_node`` of it (an untyped request could start the
        plan on the others: a bf16 A100 plan on a partition's V100s or Quadros); None where nothing is known (untyped
        GRES), none names it, or every GPU of the partition is one (an untyped request takes any of them)."""
        matching = self.types_of(gpu_type)
        if "" in self.gpu_types or not matching:
            return None
        if len(matching) == 1:
            return matching[0]
        if set(matching) == set(self.gpu_types):
            return None
        usable = [n for n in self.nodes if n.usable] or self.nodes

        def room(gtype: str) -> tuple[int, int]:
            return sum(n.gpus.get(gtype, 0) >= per_node for n in usable), sum(n.gpus.get(gtype, 0) for n in usable)

        return max(sorted(matching), key=room)

    @property
    def cpu_summary(self) -> str:
        """The nodes' CPUs, as -o cpus_per_task takes them (a task's at most)."""
        counts = sorted({n.cpus for n in self.nodes if n.cpus})
        if not counts:
            return "CPUs unknown"
        return f"{counts[0] if len(counts) == 1 else f'{counts[0]}-{counts[-1]}'} CPUs a node"

    def host_memory(self, gpu_type: str | None, per_node: int, nodes: int) -> tuple[float, str] | None:
        """The RAM (GB, as -o host_memory_gb takes it: sinfo's MiB exactly, which --mem may ask to the MiB; rounded
        down to whole GB, a 6.2 GiB node was asked --mem=5G) a run's node is planned for where the run does
        not say it, and the plan's note of where it came from: the most a node has among those that can take jobs now
        (all, where none can) with ``per_node`` of the run's GPUs (``gpu_type``; where no node has them, every node),
        for a run of several ``nodes`` the most that many have; and where that is, in GiB as Slurm's memory is said
        ('partition gpu's nodes have up to 500 GiB of RAM (sinfo)': 536 GB). None where sinfo said no node's RAM."""
        usable = [n for n in self.nodes if n.usable] or self.nodes
        matching = self.types_of(gpu_type) if gpu_type else []
        with_gpus = [n for n in usable if sum(c for t, c in n.gpus.items() if t in matching) >= per_node]
        counted = with_gpus or usable
        found = sorted((n for n in counted if n.memory_mb), key=lambda n: n.memory_mb, reverse=True)
        if not found:
            return None
        node = found[min(nodes, len(found)) - 1]
        gb = node.memory_gb
        which = f"partition {self.name}'s nodes" + (f" with {per_node} {gpu_type}" if with_gpus else "")
        ram = f"{gib_text(node.memory_mb)} GiB of RAM"
        has = f"{which} have up to {ram}" if nodes == 1 else f"{nodes} of {which} have {ram} or more"
        return gb, f"{has} (sinfo)"

    def node_cpus(self, gpu_type: str | None, per_node: int, nodes: int = 1) -> int | None:
        """The CPUs a task of ``per_node`` of the run's GPUs can have on a node of those that can take jobs now (all,
        where none can): the GPUs' share of the node's CPUs (all of them where it takes every GPU), the most any
        such node gives; where no node has the GPUs (a CPU run's: ``gpu_type`` None), the most CPUs a node has. A run
        of several ``nodes``: the most that many nodes give each. None where sinfo said none's."""
        usable = [n for n in self.nodes if n.usable] or self.nodes
        matching = self.types_of(gpu_type) if gpu_type else []
        has = {id(n): sum(c for t, c in n.gpus.items() if t in matching) for n in usable}
        shares = [max(1, n.cpus * per_node // has[id(n)]) for n in usable if n.cpus and has[id(n)] >= per_node]
        found = sorted(shares or [n.cpus for n in usable if n.cpus], reverse=True)
        return found[min(nodes, len(found)) - 1] if found else None

    @property
    def memory_summary(self) -> str:
        """The nodes' RAM in GiB, as --mem's G and Slurm's RealMemory (MiB) count it (sinfo's 512000 is 500 GiB)."""
        mbs = sorted({n.memory_mb for n in self.nodes})
        if not mbs:
            return "RAM unknown"
        return f"{gib_text(mbs[0]) if len(mbs) == 1 else f'{gib_text(mbs[0])}-{gib_text(mbs[-1])}'} GiB RAM a node"


@dataclass
class DoctorReport:
    sbatch: str | None  # path of sbatch, None when not on PATH
    reachable: bool  # the controller answered sinfo
    message: str = ""  # why it is not reachable
    partitions: list[PartitionInfo] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    # the problems with which the job never runs (launch refuses these): sbatch would accept it and leave it pending
    # forever, or refuse it in words that do not say what to change
    never_runs: list[str] = field(default_factory=list)
    gres_type: str | None = None  # the chosen partition's GRES type name for the request's GPU (where one names it)
    doubts: list[str] = field(default_factory=list)  # problems launch warns of: its GPUs may be others than planned

    @property
    def ok(self) -> bool:
        return self.reachable and not self.problems

    def partition(self, name: str) -> PartitionInfo | None:
        return next((p for p in self.partitions if p.name == name), None)

    def format(self) -> str:
        lines = [
            f"sbatch: {self.sbatch or 'not found on PATH'}",
            f"controller: {'reachable' if self.reachable else 'NOT reachable: ' + self.message}",
        ]
        for p in self.partitions:
            states = ", ".join(f"{n.name} {n.state}" for n in p.nodes)
            lines.append(
                f"partition {p.name}{' (default)' if p.default else ''}"
                f"{'' if p.available else ' [not up]'}: {len(p.nodes)} node(s) "
                f"[{states}], {p.gpu_summary}, {p.cpu_summary}, {p.memory_summary}, time limit {p.time_limit}"
            )
        lines += [f"problem: {problem}" for problem in self.problems]
        return "\n".join(lines)

    def raise_if_never_runs(self) -> None:
        """What launch checks before sbatch: requests this cluster can never start, and a partition it does not have
        (one sinfo lists only with --all is left to sbatch). Nodes that are down now may come back."""
        if self.never_runs:
            raise FtctlError(
                "Slurm cannot run this job as asked: "
                + "; ".join(self.never_runs)
                + ". `ftctl doctor --backend slurm` shows what each partition has."
            )

    def raise_for_problems(self) -> None:
        """FtctlError listing every problem (the CLI's check before submitting)."""
        if not self.reachable:
            raise FtctlError(f"Slurm is not reachable: {self.message}")
        if self.problems:
            raise FtctlError("this Slurm cluster cannot run the request: " + "; ".join(self.problems))


# sinfo's answer, per cluster (SLURM_CONF, sinfo) and process: (when, the report of it, nothing assessed)
_ASKED: dict[tuple, tuple[float, DoctorReport]] = {}


def ask(env: Mapping[str, str] | None = None, reuse: bool = False) -> DoctorReport:
    """What the cluster offers (sbatch, whether the controller answers, its partitions), nothing assessed: one sinfo.
    ``reuse``: the answer this process had within ANSWER_MEMO_S, so that one launch (its plan's node RAM, the check
    before sbatch, a dry run's note) asks sinfo once."""
    environ = slurm_env(env)
    key = (environ.get("SLURM_CONF"), environ.get("PATH"))
    when, asked = _ASKED.get(key, (0.0, None))
    if reuse and asked is not None and clock.monotonic() - when < ANSWER_MEMO_S:
        return asked
    asked = _ask(environ)
    _ASKED[key] = (clock.monotonic(), asked)
    return asked


def _ask(environ: dict[str, str]) -> DoctorReport:
    sbatch = shutil.which("sbatch", path=environ.get("PATH"))
    if sbatch is None:
        return DoctorReport(
            sbatch=None,
            reachable=False,
            message="sbatch is not on PATH: run on the cluster's login node or "
            "install the Slurm client tools (slurm-client)",
        )
    try:
        proc = run_command(["sinfo", "--noheader", "--Node", "--format", _SINFO_FORMAT], environ)
    except FtctlError as exc:
        return DoctorReport(sbatch=sbatch, reachable=False, message=str(exc).removesuffix(DOCTOR_HINT))
    if proc.returncode != 0:
        return DoctorReport(sbatch=sbatch, reachable=False, message=str(command_error("sinfo", "failed", proc)))
    return DoctorReport(sbatch=sbatch, reachable=True, partitions=_parse_sinfo(proc.stdout))


def _partitions_of(partition: str | None, reuse: bool = True) -> list[PartitionInfo] | None:
    """The partitions the job may start in, as sinfo says them: ``partition`` (of a list, each: the job may start in
    any of them), else the default one; None where the controller does not answer or one of them is not there.
    ``reuse``: as ask()."""
    asked = ask(reuse=reuse)
    if not asked.reachable:
        return None
    found = []
    for name in (partition or "").split(",") if partition else [None]:
        chosen, _ = _choose(asked.partitions, name.strip() if name else None)
        if chosen is None:
            return None
        found.append(chosen)
    return found


def host_memory(partition: str | None, gpu_type: str | None, per_node: int, nodes: int) -> tuple[float, str] | None:
    """The RAM a node of the run has (PartitionInfo.host_memory) in ``partition`` (else the default one; of a list,
    the least), and where that is; None where the controller does not answer or has no such partition. A launch's first
    question: asked afresh (the check before sbatch and a dry run's note reuse its answer)."""
    if (chosen := _partitions_of(partition, reuse=False)) is None:
        return None
    found = [p.host_memory(gpu_type, per_node, nodes) for p in chosen]
    return None if None in found else min(found, key=lambda f: f[0])


def node_cpus(partition: str | None, gpu_type: str | None, per_node: int, nodes: int = 1) -> tuple[int, str] | None:
    """The CPUs a node of the run has (PartitionInfo.node_cpus) in ``partition`` (else the default one; of a list, the
    fewest), and which partition; None where the controller does not answer or has no such partition. The answer
    host_memory() asked, reused."""
    if (chosen := _partitions_of(partition)) is None:
        return None
    found = [(p.node_cpus(gpu_type, per_node, nodes), p.name) for p in chosen]
    return None if any(cpus is None for cpus, _ in found) else min(found)


def job_limit_s(partition: str | None) -> int | None:
    """The time limit, in seconds, of a job that gives no --time in ``partition`` (else the default one; of a list,
    the shortest): PartitionInfo.job_time_limit. None where the controller does not answer, or sinfo does not say (an
    older sinfo), or there is none. The answer host_memory() asked, reused."""
    if (chosen := _partitions_of(partition)) is None:
        return None
    limits = [p.job_time_limit for p in chosen]
    return None if None in limits else min(slurm_time_s(limit) for limit in limits)


# scontrol's partition settings, per cluster (SLURM_CONF, PATH) and process: (when, {partition: {key: value}})
_SETTINGS: dict[tuple, tuple[float, dict[str, dict[str, str]]]] = {}


def _partition_settings() -> dict[str, dict[str, str]]:
    """Every partition's settings as `scontrol show partition --oneliner` says them (KEY=VALUE words: DefMemPerCPU,
    DefMemPerNode ...); {} where it does not answer. Asked once in ANSWER_MEMO_S, as ask()."""
    environ = slurm_env(None)
    key = (environ.get("SLURM_CONF"), environ.get("PATH"))
    when, said = _SETTINGS.get(key, (0.0, None))
    if said is not None and clock.monotonic() - when < ANSWER_MEMO_S:
        return said
    try:
        proc = run_command(["scontrol", "show", "partition", "--oneliner"], environ)
    except FtctlError:
        proc = None
    said = {}
    for line in proc.stdout.splitlines() if proc is not None and proc.returncode == 0 else ():
        words = dict(w.partition("=")[::2] for w in line.split() if "=" in w)
        if words.get("PartitionName"):
            said[words["PartitionName"]] = words
    _SETTINGS[key] = (clock.monotonic(), said)
    return said


def default_memory(partition: str | None, cpus: int) -> tuple[int, str] | None:
    """The RAM (MiB a node) a job of ``cpus`` CPUs a node gets where it asks for none, in ``partition`` (else the
    default one): the partition's DefMemPerCPU x ``cpus``, or its DefMemPerNode (scontrol), and that setting in words.
    None where it is all of a node's (UNLIMITED, memory not a resource Slurm counts), or the controller does not say.
    --mem below it gave a job less RAM than sbatch without --mem would have. Of a list, the most of those that set
    one: Slurm gives a job without --mem the default of the partition it starts in (measured on 22.05: -p
    defnode,defcpu started in defcpu had DefMemPerCPU=2048 x 2 CPUs, 4G, not defnode's 3000M), so one --mem is
    below none of them only at their most; the least asked 3000M of a job that would have had 4G, and a list with an
    UNLIMITED one (all of a node) asked for none."""
    if (chosen := _partitions_of(partition)) is None:
        return None
    found = []
    for p in chosen:
        said = _partition_settings().get(p.name, {})
        per_cpu, per_node = _mib(said.get("DefMemPerCPU")), _mib(said.get("DefMemPerNode"))
        if per_cpu:
            found.append((per_cpu * cpus, f"partition {p.name}'s DefMemPerCPU={per_cpu} (MiB) x {cpus} CPUs"))
        elif per_node:
            found.append((per_node, f"partition {p.name}'s DefMemPerNode={per_node} (MiB)"))
    return max(found) if found else None


def _mib(value: str | None) -> int:
    """A DefMemPer* value of scontrol's in MiB (a number); 0 where it is UNLIMITED, 0 or not said."""
    return int(value) if value and value.isdigit() else 0


def doctor(
    partition: str | None = None,
    gpus_per_node: int | None = None,
    gpu_type: str | None = None,
    nodes: int | None = None,
    env: Mapping[str, str] | None = None,
    memory_gb: float | None = None,
    cpus_per_task: int | None = None,
    time: str | None = None,
    reuse: bool = False,
    memory_arg: str | None = None,
) -> DoctorReport:
    """What the cluster offers, and the problems a request (partition, nodes, GPUs per node, GPU type, host
    memory a node, CPUs a task, time limit) would meet; ``memory_arg``: the run's own --sbatch-arg that asks
    ``memory_gb``, where it does (named in the problem). Never raises for the cluster's state; look at
    ``report.problems``. ``reuse``: sinfo's answer of this launch (ask). ``partition`` may be a list, as sbatch
    takes it (``gpu,gpu-long``: the job starts in whichever can start it first): see :func:`_any_of`."""
    environ = slurm_env(env)
    asked = ask(environ, reuse)
    if not asked.reachable:
        return asked
    request = (gpus_per_node, gpu_type, nodes, memory_gb, cpus_per_task, time, memory_arg)
    names = [name.strip() for name in (partition or "").split(",") if name.strip()]
    if len(names) > 1:
        return _any_of(asked, names, environ, request)
    return _assess(asked, partition, environ, request)


def _any_of(asked: DoctorReport, names: list[str], environ: Mapping[str, str], request: tuple) -> DoctorReport:
    """A request for a list of partitions, as sbatch takes it (the job starts in whichever can start it first): each
    must exist, the job never runs only where none of them can run it, and the GPU type is asked for by name only
    where every one that can run it names it alike (the script asks for it once, for all of them)."""
    each = {name: _assess(asked, name, environ, request) for name in names}
    report = DoctorReport(sbatch=asked.sbatch, reachable=True, partitions=asked.partitions)
    unknown = [p for r in each.values() for p in r.never_runs if p.startswith("no partition ")]  # nor sinfo --all
    can = {name: r for name, r in each.items() if not r.never_runs}
    if unknown or not can:
        report.never_runs = unknown or [
            f"none of partitions {', '.join(names)} can run it: "
            + "; ".join(p for r in each.values() for p in r.never_runs)
        ]
        report.problems = list(report.never_runs)
        return report
    report.doubts = [d for r in can.values() for d in r.doubts] if all(r.doubts for r in can.values()) else []
    report.problems = [p for r in can.values() for p in r.problems if p not in r.doubts] + report.doubts
    types = {r.gres_type for r in can.values()}
    report.gres_type = types.pop() if len(types) == 1 else None
    return report


def _assess(asked: DoctorReport, partition: str | None, environ: Mapping[str, str], request: tuple) -> DoctorReport:
    gpus_per_node, gpu_type, nodes, memory_gb, cpus_per_task, time, memory_arg = request
    report = DoctorReport(sbatch=asked.sbatch, reachable=True, partitions=asked.partitions)
    chosen, report.problems = _choose(report.partitions, partition)
    if chosen is None:
        if partition and report.partitions and not _hidden(partition, environ):
            report.never_runs = [_no_such_partition(partition, report.partitions)]
        return report
    report.never_runs = [
        *_node_problems(chosen, nodes),
        *(_gpu_problems(chosen, report.partitions, gpus_per_node, gpu_type, nodes or 1) if gpus_per_node else []),
        *(_memory_problems(chosen, memory_gb, memory_arg) if memory_gb else []),
        *(_memory_limit_problems(chosen, memory_gb, memory_arg) if memory_gb else []),
        *(_cpu_problems(chosen, cpus_per_task) if cpus_per_task else []),
        *(_time_problems(chosen, time) if time else []),
    ]
    report.doubts = _gpu_type_doubts(chosen, report.partitions, gpu_type) if gpus_per_node and gpu_type else []
    report.problems = _state_problems(chosen) + report.never_runs + report.doubts
    report.gres_type = chosen.gres_type(gpu_type, gpus_per_node) if gpus_per_node and gpu_type else None
    return report


def _choose(partitions: list[PartitionInfo], partition: str | None) -> tuple[PartitionInfo | None, list[str]]:
    """The partition a job goes to (``partition``, else the cluster's default), or None and why not."""
    names = [p.name for p in partitions]
    if not partitions:
        return None, ["the cluster reports no partitions (sinfo printed nothing)"]
    if partition is None:
        chosen = next((p for p in partitions if p.default), None)
        if chosen is None:
            return None, [f"the cluster has no default partition: pass --partition (one of {', '.join(names)})"]
        return chosen, []
    chosen = next((p for p in partitions if p.name == partition), None)
    if chosen is None:
        return None, [
            f"unknown partition {partition!r}: this cluster has {', '.join(names)}.{did_you_mean(partition, names)}"
        ]
    return chosen, []


def _hidden(partition: str, environ: Mapping[str, str]) -> bool:
    """Whether ``partition`` is one sinfo lists only with --all (Hidden=YES, or not the user's groups'): sbatch may
    still take it, so it is left to sbatch. True where sinfo cannot say (nothing refused on a guess)."""
    try:
        proc = run_command(["sinfo", "--all", "--noheader", "--format", "%R"], environ)
    except FtctlError:
        return True
    return proc.returncode != 0 or partition in proc.stdout.split()


def _no_such_partition(partition: str, partitions: list[PartitionInfo]) -> str:
    """What launch (and its dry run) says of a partition the cluster does not have: sbatch refuses it after the
    launch wrote its files, a dry run said nothing."""
    import difflib

    names = [p.name for p in partitions]
    close = difflib.get_close_matches(partition, names, n=1, cutoff=0.6)
    fix = f"pass --partition {close[0]}" if close else "pass --partition NAME"
    return f"no partition {partition!r} on this cluster (its partitions: {', '.join(names)}): {fix}"


def _state_problems(chosen: PartitionInfo) -> list[str]:
    """A partition not up or without a node that can run jobs now: said, not refused (they may come back)."""
    problems = []
    if not chosen.available:
        problems.append(f"partition {chosen.name!r} is not up (sinfo avail column)")
    if not any(n.usable for n in chosen.nodes):
        problems.append(
            f"partition {chosen.name!r} has no node that can run jobs now ("
            + ", ".join(f"{n.name} {n.state}" for n in chosen.nodes)
            + ")"
        )
    return problems


def _node_problems(chosen: PartitionInfo, nodes: int | None) -> list[str]:
    if not nodes or nodes <= len(chosen.nodes):
        return []
    return [
        f"{nodes} nodes asked for, but partition {chosen.name!r} has {len(chosen.nodes)}: Slurm would leave the job "
        f"pending forever (PartitionConfig); ask for at most {len(chosen.nodes)} (--nodes), or pass another --partition"
    ]


def _memory_problems(chosen: PartitionInfo, memory_gb: float, own: str | None = None) -> list[str]:
    """The job's --mem above every node of the partition: sbatch would refuse it ("Requested node configuration is
    not available") without saying that the plan asked for it, or what to do. ``own``: the run's own --sbatch-arg
    that asks it (render.own_memory), said with its fix."""
    if not chosen.nodes:
        return []
    most = max(n.memory_gb for n in chosen.nodes)
    if memory_gb <= most:
        return []
    asked, has = math.ceil(memory_gb * 1e9 / 2**30), max(n.memory_gib for n in chosen.nodes)
    if own:
        mem = "" if own.lstrip("-").startswith("mem=") else f" ({asked} GiB a node)"
        return [
            f"--sbatch-arg={own}{mem} is more than partition {chosen.name!r} has: at most "
            f"{gib_text(max(n.memory_mb for n in chosen.nodes))} GiB a node; ask for "
            "less, or leave it out (ftctl then asks for what the plan needs, said above the #SBATCH lines)"
        ]
    return [
        f"the plan asks for --mem={asked}G a node (the job script's comment says what for), but partition "
        f"{chosen.name!r} has at most {has} GiB a node; plan for those nodes with -o host_memory_gb={math.floor(most)} "
        "(in GB: ftctl then picks what fits, or says nothing does)"
    ]


def _memory_limit_problems(chosen: PartitionInfo, memory_gb: float, own: str | None = None) -> list[str]:
    """The job's memory a node above the partition's MaxMemPerNode, or above its MaxMemPerCPU x the CPUs its nodes
    have (scontrol; within the nodes' RAM, which _memory_problems checks). Measured on Slurm 22.05 (EnforcePartLimits=NO,
    its default): --mem=3G where MaxMemPerNode=2048 was taken by sbatch and left pending forever (MaxMemPerLimit);
    --mem=3G on 2 CPUs where MaxMemPerCPU=1024 made Slurm ask 3 CPUs a node (a CPU for each 1024 MiB) of 2-CPU nodes,
    and sbatch refused it ("CPU count per node can not be satisfied"), naming neither limit. ``own``: the run's own
    --sbatch-arg that asks it."""
    said = _partition_settings().get(chosen.name, {})
    per_node, per_cpu = _mib(said.get("MaxMemPerNode")), _mib(said.get("MaxMemPerCPU"))
    most_cpus = max((n.cpus for n in chosen.nodes), default=0)
    asked = round(memory_gb * 1e9 / 2**20)  # MiB, as render.memory_request_gb gave it
    if per_node and asked > per_node:
        limit, setting = per_node, f"MaxMemPerNode={per_node} MiB"
        then = "Slurm would leave the job pending forever (MaxMemPerLimit)"
    elif per_cpu and most_cpus and asked > per_cpu * most_cpus:
        limit, setting = per_cpu * most_cpus, f"MaxMemPerCPU={per_cpu} MiB x its nodes' {most_cpus} CPUs"
        then = (
            f"Slurm gives a job a CPU for each {per_cpu} MiB it asks, {math.ceil(asked / per_cpu)} a node, more than "
            "its nodes have (sbatch: Requested node configuration is not available)"
        )
    else:
        return []
    where = f"partition {chosen.name!r} allows ({setting}): {then}"
    if own:
        return [
            f"--sbatch-arg={own} asks more memory a node than {where}; ask for at most --mem={mem_text(limit)} a "
            "node, or pass another --partition"
        ]
    return [
        f"the plan asks for --mem={mem_text(asked)} a node (the job script's comment says what for), more than {where}; "
        f"plan within it with -o host_memory_gb={max(1, math.floor(limit * 2**20 / 1e9))} (in GB), or pass another "
        "--partition"
    ]


def mem_text(mib: int) -> str:
    """MiB as --mem writes them (render.mem_size): 2G, 3000M."""
    return f"{mib // 1024}G" if mib % 1024 == 0 else f"{mib}M"


def _cpu_problems(chosen: PartitionInfo, cpus_per_task: int) -> list[str]:
    """--cpus-per-task above every node of the partition: sbatch takes it and leaves the job pending forever
    (PartitionConfig: -c 16 on the 2-CPU nodes of the test cluster, Slurm 22.05), without saying that ftctl chose the
    number (8 a GPU unless told)."""
    most = max((n.cpus for n in chosen.nodes), default=0)
    if not most or cpus_per_task <= most:  # sinfo said no CPU count: nothing known
        return []
    return [
        f"--cpus-per-task={cpus_per_task} asked for (-o cpus_per_task, else 8 a GPU), but partition {chosen.name!r} "
        f"has at most {most} CPUs a node; use -o cpus_per_task={most}"
    ]


def _time_problems(chosen: PartitionInfo, time: str) -> list[str]:
    """--time above the partition's limit: sbatch accepts it and the job waits forever (PartitionTimeLimit)."""
    limit, asked = chosen.time_limit_s, slurm_time_s(time)
    if limit is None or (asked is not None and asked <= limit):
        return []
    return [
        f"--time {time} is longer than partition {chosen.name!r} allows ({chosen.time_limit}): Slurm would leave "
        f"the job pending forever (PartitionTimeLimit); use --time {chosen.time_limit} or less"
    ]


def time_doubt(
    report: DoctorReport, partition: str | None, time: str | None, train_s: float | None, requeues: int
) -> tuple[bool, str] | None:
    """What launch says of the job's time limit against the run's length (``train_s``: the plan's estimate, None where
    unknown), and whether it is a warning: a job without --time gets the partition's DefaultTime (sinfo's %L; often an
    hour), said always, and where the run is longer, that each attempt is cut there and queues again; a run longer than
    its 1 + ``requeues`` attempts stops unfinished. None where nothing is known or nothing is short (a list of
    partitions: the job's limit is whichever starts it)."""
    if not report.reachable or (partition and "," in partition):
        return None
    chosen, _ = _choose(report.partitions, partition)
    if chosen is None:
        return None
    given = time is not None and time.strip() != ""
    limit = time if given else chosen.job_time_limit
    try:
        limit_s = slurm_time_s(limit) if limit else None
    except ValueError:
        return None
    if limit_s is None:
        return None
    attempts = requeues + 1
    unfinished = bool(train_s and train_s > attempts * limit_s)
    est = f"the run trains for ~{_hours(train_s)} est." if train_s else ""
    stops = (
        f"after {attempts} attempt{'s' * (attempts != 1)} of {limit} (-o max_requeues={requeues}) it stops unfinished, "
        "resumed only by launching it again"
    )
    if given:
        if not unfinished:
            return None
        return True, (
            f"{est}, longer than {attempts} x --time {limit}: each attempt is cut at its time limit and requeued, "
            f"and {stops}; raise --time ({_allows(chosen)}) or -o max_requeues"
        )
    said = f"no --time: the job gets partition {chosen.name}'s default time limit, {limit} (sinfo)"
    if not train_s or train_s <= limit_s:
        return False, f"{said}; --time asks for another ({_allows(chosen)})"
    return True, (
        f"{said}, and {est}: each attempt is cut there and requeued, back in the queue"
        + (f"; {stops}" if unfinished else "")
        + f"; pass --time ({_allows(chosen)})"
    )


def _allows(chosen: PartitionInfo) -> str:
    if chosen.time_limit_s is None:
        return f"partition {chosen.name} has no time limit"
    return f"partition {chosen.name} allows up to {chosen.time_limit}"


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{max(1, round(seconds / 60))} min"


def parse_gres(gres: str) -> dict[str, int]:
    """GPU counts by type from sinfo's GRES column: 'gpu:a100:4(S:0-1),nvme:1' -> {'a100': 4}."""
    gpus: dict[str, int] = {}
    if not gres or gres == "(null)":
        return gpus
    # split at commas outside parentheses
    for item in re.split(r",(?![^(]*\))", gres):
        item = re.sub(r"\(.*?\)", "", item).strip()
        parts = item.split(":")
        if parts[0] != "gpu":
            continue
        count = re.match(r"\d+", parts[-1]) if len(parts) > 1 else None
        n = int(count.group()) if count else 1
        gtype = parts[1] if len(parts) > 2 else ""
        gpus[gtype] = gpus.get(gtype, 0) + n
    return gpus


def _parse_sinfo(text: str) -> list[PartitionInfo]:
    partitions: dict[str, PartitionInfo] = {}
    for line in text.splitlines():
        cols = line.split("|")
        if len(cols) < 8:
            continue
        raw, node, state, cpus, mem, limit, avail, gres = (c.strip() for c in cols[:8])
        host = cols[8].strip() if len(cols) > 8 else ""
        default_time = cols[9].strip() if len(cols) > 9 else ""
        name = raw.rstrip("*")
        part = partitions.setdefault(
            name,
            PartitionInfo(
                name=name,
                default=raw.endswith("*"),
                available=avail == "up",
                time_limit=limit,
                default_time=default_time,
            ),
        )
        part.nodes.append(
            NodeInfo(name=node, state=state, cpus=_int(cpus), memory_mb=_int(mem), gpus=parse_gres(gres), hostname=host)
        )
    return list(partitions.values())


def _gpu_problems(
    chosen: PartitionInfo, partitions: list[PartitionInfo], per_node: int, gpu_type: str | None, nodes: int
) -> list[str]:
    """A GPU request the partition cannot meet: sbatch would refuse it (no GPUs, too many a node) without saying
    where there are some (GPUs of another type: _gpu_type_doubts)."""
    with_gpus = [p for p in partitions if any(n.gpus for n in p.nodes)]
    elsewhere = ", ".join(f"{p.name} ({p.gpu_summary})" for p in with_gpus if p is not chosen)
    if not any(n.gpus for n in chosen.nodes):
        where = (
            f"; partitions with GPUs: {elsewhere} (--partition NAME)"
            if elsewhere
            else "; no partition of this cluster has GPUs (use --gpus cpu)"
        )
        return [f"partition {chosen.name!r} has no GPUs (no gpu gres on its nodes){where}"]
    # GPUs whose GRES type names none of the tier's names may still be those GPUs (a site's own name): counted
    matching = (chosen.types_of(gpu_type) if gpu_type else []) or chosen.gpu_types

    def count(node: NodeInfo) -> int:
        return sum(c for t, c in node.gpus.items() if t in matching)

    most = max(count(n) for n in chosen.nodes)
    if per_node > most:
        # none of its GPUs named for the plan's (8xH100 on a default partition of A100s): spreading the plan over
        # its nodes would not give it those GPUs; a partition whose nodes have them would
        split = ""
        if gpu_type and chosen.gpu_types and not chosen.types_of(gpu_type):
            there = max(
                (p for p in partitions if p is not chosen and _named(p, gpu_type)),
                key=lambda p: _named(p, gpu_type),
                default=None,
            )
            if there is not None:
                has = _named(there, gpu_type)
                if has >= per_node:
                    fix = f"pass --partition {there.name}"
                elif (nodes * per_node) % has == 0:
                    fix = f"--gpus {nodes * per_node // has}x{has}x{gpu_type} --partition {there.name} spreads them"
                    fix += " over its nodes"
                else:
                    fix = f"pass --partition {there.name} with at most {has} a node"
                split = f"; partition {there.name} has {there.gpu_summary}: {fix}"
        elif most and (nodes * per_node) % most == 0:
            split = f": --gpus {nodes * per_node // most}x{most}x{gpu_type or 'TYPE'} spreads them over nodes"
        return [
            f"{per_node} GPUs per node asked for, but partition {chosen.name!r} has at most "
            f"{most} per node ({chosen.gpu_summary}){split}"
        ]
    fitting = [n for n in chosen.nodes if count(n) >= per_node]
    if len(fitting) < nodes <= len(chosen.nodes):  # too few nodes at all: said already
        return [
            f"{nodes} nodes with {per_node} GPUs each asked for, but partition "
            f"{chosen.name!r} has {len(fitting)} such node(s)"
        ]
    return []


def _named(partition: PartitionInfo, gpu_type: str) -> int:
    """The most GPUs a node of ``partition`` has whose GRES type names ``gpu_type`` (untyped ones not counted)."""
    return max((sum(c for t, c in n.gpus.items() if t and _same_gpu(t, gpu_type)) for n in partition.nodes), default=0)


def _gpu_type_doubts(chosen: PartitionInfo, partitions: list[PartitionInfo], gpu_type: str) -> list[str]:
    """GRES type names, none of which names the GPU the plan is for: said by doctor and as launch's warning, not
    refused (sites name their GPUs as they like: 'ampere' may well be A100s)."""
    if not any(n.gpus for n in chosen.nodes) or chosen.types_of(gpu_type):
        return []
    elsewhere = ", ".join(
        f"{p.name} ({p.gpu_summary})" for p in partitions if p is not chosen and any(n.gpus for n in p.nodes)
    )
    return [
        f"partition {chosen.name!r} has no {gpu_type} GPUs; its GPU types: "
        f"{', '.join(t or '(untyped)' for t in chosen.gpu_types)}"
        + (f"; other partitions: {elsewhere}" if elsewhere else "")
        + f"; the plan is for {gpu_type}: ask for the GPU it has (--gpus), or pass another --partition"
    ]


def _same_gpu(gres_type: str, wanted: str) -> bool:
    """Could gres type ``gres_type`` be the ftctl tier ``wanted``? The same model as gpus.tier reads names ('A100'
    matches a100, A100, nvidia_a100-sxm4-80gb; 'A100-80GB' those too, but not a100-40gb: clusters rarely name the
    memory; 'a10' is no A100). An untyped gres ('gpu:8') cannot be told apart, so it is not flagged."""
    return not gres_type or gpu_table.same_model(gres_type, wanted)


def gib_text(mb: int) -> str:
    """Slurm's MiB as GiB for a user (--mem's G): '500', '6.4' under 10 (rounded down: what a node has)."""
    return f"{math.floor(mb / 102.4) / 10:.1f}" if mb < 10 * 1024 else str(mb // 1024)


def _int(raw: str) -> int:
    match = re.match(r"\d+", raw)
    return int(match.group()) if match else 0
