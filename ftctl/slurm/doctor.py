"""`ftctl doctor --backend slurm`: is Slurm reachable, what does the cluster offer, and would a
request for a partition / nodes / GPUs fit it — said before an expensive submit.

The facts come from ``sinfo`` (one row per node and partition), so they are what the controller
reports now, including nodes that are down or drained.
"""

from __future__ import annotations

import math
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field

from ftctl.errors import FtctlError, did_you_mean
from ftctl.slurm.scheduler import command_error, run_command, slurm_env

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
_SINFO_FORMAT = "%P|%N|%t|%c|%m|%l|%a|%G"


@dataclass(frozen=True)
class NodeInfo:
    name: str
    state: str  # sinfo's short state: idle, mix, alloc, down*, drain, ...
    cpus: int
    memory_mb: int
    gpus: dict[str, int]  # GPU type ('' when untyped) -> count, from the node's gres

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


@dataclass
class PartitionInfo:
    name: str
    default: bool
    available: bool  # sinfo's avail column says 'up'
    time_limit: str
    nodes: list[NodeInfo] = field(default_factory=list)

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
    def memory_summary(self) -> str:
        """The nodes' RAM, as -o host_memory_gb takes it (GB, rounded down)."""
        gbs = sorted({math.floor(n.memory_gb) for n in self.nodes})
        if not gbs:
            return "RAM unknown"
        return f"{gbs[0] if len(gbs) == 1 else f'{gbs[0]}-{gbs[-1]}'} GB RAM a node"


@dataclass
class DoctorReport:
    sbatch: str | None  # path of sbatch, None when not on PATH
    reachable: bool  # the controller answered sinfo
    message: str = ""  # why it is not reachable
    partitions: list[PartitionInfo] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    # the problems sbatch would accept and then leave pending forever (launch refuses these)
    never_runs: list[str] = field(default_factory=list)

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
                f"[{states}], {p.gpu_summary}, {p.memory_summary}, time limit {p.time_limit}"
            )
        lines += [f"problem: {problem}" for problem in self.problems]
        return "\n".join(lines)

    def raise_if_never_runs(self) -> None:
        """What launch checks before sbatch: requests Slurm accepts but can never start. Other
        problems (an unknown partition, a bad gres) are left to sbatch, whose own words are clearer,
        and nodes that are down now may come back."""
        if self.never_runs:
            raise FtctlError(
                "Slurm would accept this job and leave it pending forever: "
                + "; ".join(self.never_runs)
                + ". Ask for less, or check `ftctl doctor --backend slurm`."
            )

    def raise_for_problems(self) -> None:
        """FtctlError listing every problem (the CLI's check before submitting)."""
        if not self.reachable:
            raise FtctlError(f"Slurm is not reachable: {self.message}")
        if self.problems:
            raise FtctlError("this Slurm cluster cannot run the request: " + "; ".join(self.problems))


def doctor(
    partition: str | None = None,
    gpus_per_node: int | None = None,
    gpu_type: str | None = None,
    nodes: int | None = None,
    env: Mapping[str, str] | None = None,
    memory_gb: float | None = None,
) -> DoctorReport:
    """What the cluster offers, and the problems a request (partition, nodes, GPUs per node,
    GPU type, host memory a node) would meet. Never raises for the cluster's state; look at
    ``report.problems``."""
    environ = slurm_env(env)
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
        return DoctorReport(sbatch=sbatch, reachable=False, message=str(exc))
    if proc.returncode != 0:
        return DoctorReport(sbatch=sbatch, reachable=False, message=str(command_error("sinfo", "failed", proc)))
    report = DoctorReport(sbatch=sbatch, reachable=True, partitions=_parse_sinfo(proc.stdout))
    report.problems = _problems(report.partitions, partition, gpus_per_node, gpu_type, nodes, report.never_runs)
    if memory_gb:
        report.problems += _memory_problems(report.partitions, partition, memory_gb, report.never_runs)
    return report


def _memory_problems(
    partitions: list[PartitionInfo], partition: str | None, memory_gb: float, never_runs: list[str]
) -> list[str]:
    """An offload plan's --mem above every node of the partition: sbatch would refuse it ("Requested node
    configuration is not available") without saying that the plan asked for it, or what to do."""
    chosen = next((p for p in partitions if (p.name == partition if partition else p.default)), None)
    if chosen is None or not chosen.nodes:  # said already
        return []
    most = max(n.memory_gb for n in chosen.nodes)
    if memory_gb <= most:
        return []
    never_runs.append(
        f"the plan offloads the optimizer to CPU RAM and needs ~{memory_gb:.0f} GB of it a node (--mem), but "
        f"partition {chosen.name!r} has at most {most:.0f} GB a node; plan for those nodes with "
        f"-o host_memory_gb={math.floor(most)} (ftctl then picks what fits, or says nothing does)"
    )
    return never_runs[-1:]


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
        name = raw.rstrip("*")
        part = partitions.setdefault(
            name, PartitionInfo(name=name, default=raw.endswith("*"), available=avail == "up", time_limit=limit)
        )
        part.nodes.append(NodeInfo(name=node, state=state, cpus=_int(cpus), memory_mb=_int(mem), gpus=parse_gres(gres)))
    return list(partitions.values())


def _problems(
    partitions: list[PartitionInfo],
    partition: str | None,
    gpus_per_node: int | None,
    gpu_type: str | None,
    nodes: int | None,
    never_runs: list[str],
) -> list[str]:
    names = [p.name for p in partitions]
    if not partitions:
        return ["the cluster reports no partitions (sinfo printed nothing)"]
    if partition is None:
        chosen = next((p for p in partitions if p.default), None)
        if chosen is None:
            return [f"the cluster has no default partition: pass --partition (one of {', '.join(names)})"]
    else:
        chosen = next((p for p in partitions if p.name == partition), None)
        if chosen is None:
            return [
                f"unknown partition {partition!r}{did_you_mean(partition, names)} This cluster has: {', '.join(names)}"
            ]
    problems: list[str] = []
    if not chosen.available:
        problems.append(f"partition {chosen.name!r} is not up (sinfo avail column)")
    usable = [n for n in chosen.nodes if n.usable]
    if not usable:
        problems.append(
            f"partition {chosen.name!r} has no node that can run jobs now ("
            + ", ".join(f"{n.name} {n.state}" for n in chosen.nodes)
            + ")"
        )
    if nodes and nodes > len(chosen.nodes):
        problems.append(
            f"{nodes} nodes asked for, but partition {chosen.name!r} has "
            f"{len(chosen.nodes)}; Slurm would leave the job pending forever "
            "(PartitionConfig)"
        )
        never_runs.append(problems[-1])
    if gpus_per_node:
        problems += _gpu_problems(chosen, partitions, gpus_per_node, gpu_type, nodes or 1)
    return problems


def _gpu_problems(
    chosen: PartitionInfo, partitions: list[PartitionInfo], per_node: int, gpu_type: str | None, nodes: int
) -> list[str]:
    with_gpus = [p for p in partitions if any(n.gpus for n in p.nodes)]
    elsewhere = ", ".join(f"{p.name} ({p.gpu_summary})" for p in with_gpus if p is not chosen)
    if not any(n.gpus for n in chosen.nodes):
        where = (
            f"; partitions with GPUs: {elsewhere}"
            if elsewhere
            else "; no partition of this cluster has GPUs (use --gpus cpu)"
        )
        return [f"partition {chosen.name!r} has no GPUs (no gpu gres on its nodes){where}"]
    if gpu_type:
        types = sorted({t for n in chosen.nodes for t in n.gpus})
        matching = [t for t in types if _same_gpu(t, gpu_type)]
        if not matching:
            return [
                f"partition {chosen.name!r} has no {gpu_type} GPUs; its GPU types: "
                f"{', '.join(t or '(untyped)' for t in types)}"
                + (f"; other partitions: {elsewhere}" if elsewhere else "")
            ]

        def count(node: NodeInfo) -> int:
            return sum(c for t, c in node.gpus.items() if t in matching)
    else:

        def count(node: NodeInfo) -> int:
            return node.gpu_count

    most = max(count(n) for n in chosen.nodes)
    if per_node > most:
        return [
            f"{per_node} GPUs per node asked for, but partition {chosen.name!r} has at most "
            f"{most} per node ({chosen.gpu_summary})"
        ]
    fitting = [n for n in chosen.nodes if count(n) >= per_node]
    if len(fitting) < nodes <= len(chosen.nodes):  # too few nodes at all: said already
        return [
            f"{nodes} nodes with {per_node} GPUs each asked for, but partition "
            f"{chosen.name!r} has {len(fitting)} such node(s)"
        ]
    return []


def _same_gpu(gres_type: str, wanted: str) -> bool:
    """Could gres type ``gres_type`` be the ftctl tier ``wanted``? 'A100' matches a100, A100,
    nvidia_a100-sxm4-80gb; 'A100-80GB' matches those too (clusters rarely name the memory). An
    untyped gres ('gpu:8') cannot be told apart, so it is not flagged."""

    def norm(s: str) -> str:
        return re.sub(r"[^a-z0-9]", "", s.lower())

    if not gres_type:
        return True
    base = re.sub(r"[-_]?\d+gb$", "", wanted.lower())
    return norm(wanted) in norm(gres_type) or norm(base) in norm(gres_type)


def _int(raw: str) -> int:
    match = re.match(r"\d+", raw)
    return int(match.group()) if match else 0
