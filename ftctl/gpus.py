"""GPU tiers and the ``--gpus`` grammar.

Forms accepted (case-insensitive type names):

    8xA100        8 GPUs on one node
    2x8xH100      2 nodes x 8 GPUs each
    A100-80GB:8   SkyPilot's form, one node
    H100          one GPU
    cpu           no GPU at all (with --nodes N for several nodes): gloo on CPU
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ftctl.errors import FtctlError, did_you_mean


@dataclass(frozen=True)
class GpuTier:
    name: str  # ftctl's name, also SkyPilot's accelerator name
    memory_gb: float  # usable device memory
    compute_capability: tuple[int, int]
    bf16: bool
    flash_attn2: bool
    flash_attn3: bool = False

    # docker build: TORCH_CUDA_ARCH_LIST for this tier
    @property
    def cuda_arch(self) -> str:
        major, minor = self.compute_capability
        return f"{major}.{minor}"

    @property
    def sky_name(self) -> str:
        return self.name

    @property
    def a_card(self) -> str:
        """'an A100', 'a T4': the name as a sentence says it (the letter's sound)."""
        return f"{'an' if self.name[0] in 'AEFHILMNORSX' else 'a'} {self.name}"


# The one table of GPU facts. Memory is what the card reports (80 GB cards show ~79.6 GiB).
TIERS: dict[str, GpuTier] = {
    t.name: t
    for t in [
        GpuTier("T4", 16, (7, 5), bf16=False, flash_attn2=False),
        GpuTier("V100", 16, (7, 0), bf16=False, flash_attn2=False),
        GpuTier("V100-32GB", 32, (7, 0), bf16=False, flash_attn2=False),
        GpuTier("A10G", 24, (8, 6), bf16=True, flash_attn2=True),
        GpuTier("L4", 24, (8, 9), bf16=True, flash_attn2=True),
        GpuTier("L40S", 48, (8, 9), bf16=True, flash_attn2=True),
        GpuTier("RTX3090", 24, (8, 6), bf16=True, flash_attn2=True),
        GpuTier("RTX4090", 24, (8, 9), bf16=True, flash_attn2=True),
        GpuTier("A100", 40, (8, 0), bf16=True, flash_attn2=True),
        GpuTier("A100-80GB", 80, (8, 0), bf16=True, flash_attn2=True),
        GpuTier("H100", 80, (9, 0), bf16=True, flash_attn2=True, flash_attn3=True),
        GpuTier("H200", 141, (9, 0), bf16=True, flash_attn2=True, flash_attn3=True),
        GpuTier("B200", 180, (10, 0), bf16=True, flash_attn2=True),
    ]
}

_ALIASES = {
    "A100-40GB": "A100",
    "A100_80GB": "A100-80GB",
    "A10080GB": "A100-80GB",
    "RTX-3090": "RTX3090",
    "RTX-4090": "RTX4090",
    "H100-80GB": "H100",
    "V100-16GB": "V100",
}

FORMS = "8xA100, 2x8xH100 (nodes x gpus x type), A100-80GB:8, H100, or cpu"


@dataclass(frozen=True)
class GpuRequest:
    tier: GpuTier | None  # None: CPU only
    per_node: int  # GPUs per node (1 process per node on CPU)
    nodes: int

    @property
    def world_size(self) -> int:
        return self.per_node * self.nodes

    @property
    def is_cpu(self) -> bool:
        return self.tier is None

    def __str__(self) -> str:
        if self.tier is None:
            return "cpu" if self.nodes == 1 else f"{self.nodes}xcpu"
        head = f"{self.nodes}x" if self.nodes > 1 else ""
        return f"{head}{self.per_node}x{self.tier.name}"


def tier(name: str) -> GpuTier:
    key = name.strip().upper()
    key = _ALIASES.get(key, key)
    for t in TIERS.values():
        if t.name.upper() == key:
            return t
    raise FtctlError(f"Unknown GPU type {name!r}.{did_you_mean(name.upper(), TIERS)} Known types: {', '.join(TIERS)}.")


_NXT = re.compile(r"^(?:(\d+)[xX])?(?:(\d+)[xX])?([A-Za-z][\w\-]*)$")
_SKY = re.compile(r"^([A-Za-z][\w\-]*):(\d+)$")


def parse(spec: str, nodes: int | None = None) -> GpuRequest:
    """Parse a ``--gpus`` value; ``nodes`` is ``--nodes`` when given."""
    text = str(spec).strip()
    bad = FtctlError(f"Cannot read --gpus {spec!r}. Accepted forms: {FORMS}. Known types: {', '.join(TIERS)}.")
    if nodes is not None and nodes < 1:
        raise FtctlError(f"--nodes must be at least 1, not {nodes}.")
    m_cpu = re.fullmatch(r"(?:(\d+)x)?cpu", text, re.IGNORECASE)
    if m_cpu:
        n = int(m_cpu.group(1)) if m_cpu.group(1) else None
        return GpuRequest(None, 1, _merge_nodes(n, nodes, spec))
    m = _SKY.match(text)
    if m:
        count, form_nodes, name = int(m.group(2)), None, m.group(1)
    else:
        m = _NXT.match(text)
        if not m:
            raise bad
        a, b, name = m.group(1), m.group(2), m.group(3)
        if a and b:
            form_nodes, count = int(a), int(b)
        else:
            form_nodes, count = None, int(a) if a else 1
    if count < 1 or count > 16:
        raise FtctlError(f"--gpus {spec!r}: GPUs per node must be 1 to 16, not {count}. Accepted forms: {FORMS}.")
    try:
        gpu = tier(name)
    except FtctlError as e:
        raise FtctlError(f"--gpus {spec!r}: {e} Accepted forms: {FORMS}.") from None
    return GpuRequest(gpu, count, _merge_nodes(form_nodes, nodes, spec))


def _merge_nodes(from_form: int | None, flag: int | None, spec: str) -> int:
    if from_form is not None and flag is not None and from_form != flag:
        raise FtctlError(f"--gpus {spec!r} says {from_form} nodes but --nodes says {flag}: drop one of them.")
    n = from_form if from_form is not None else flag if flag is not None else 1
    if n < 1:
        raise FtctlError(f"--gpus {spec!r}: the node count must be at least 1.")
    return n
