"""GPU tiers and the ``--gpus`` grammar.

Forms accepted:

    8xA100        8 GPUs on one node
    2x8xH100      2 nodes x 8 GPUs each
    A100-80GB:8   SkyPilot's form, one node
    gpu:a100:8    Slurm's (--gres=gpu:TYPE:N), one node; gpu:a100 for one GPU
    H100          one GPU
    cpu           no GPU at all (with --nodes N for several nodes): gloo on CPU

A type is read as Slurm and nvidia-smi write it too (see :func:`tier`): ``nvidia_a100-sxm4-80gb``,
``Tesla V100-SXM2-32GB``, ``nvidia_geforce_rtx_3090``, ``quadro_rtx_8000``, in any case.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass

from ftctl.errors import FtctlError


@dataclass(frozen=True)
class GpuTier:
    name: str  # ftctl's name, also SkyPilot's accelerator name
    memory_gb: float  # the memory it is sold with and names say (80 of A100-80GB); GiB, as the makers count
    total_gib: float  # what PyTorch reports of it ("a total capacity of 79.11 GiB"): what a run can have
    compute_capability: tuple[int, int]
    peak_tflops: float  # dense bf16 (fp16 where no bf16) tensor TFLOPS, FP32 accumulate, no sparsity
    memory_tbps: float  # its memory's bandwidth, TB/s, as its data sheet says (plan.micro_batch_seconds)

    @property
    def bf16(self) -> bool:
        return self.compute_capability >= (8, 0)  # Ampere on; Volta and Turing train in fp16

    @property
    def flash_attn2(self) -> bool:
        return self.compute_capability >= (8, 0)

    @property
    def flash_attn3(self) -> bool:
        return self.compute_capability[0] == 9  # Hopper's kernels

    @property
    def capacity_gb(self) -> float:
        """Its memory in the plan's unit (1e9 bytes, plan.memory_terms): what the plan fits within."""
        return self.total_gib * 2**30 / 1e9

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


# The one table of GPU facts: name, the GB it is sold with, the GiB PyTorch reports of it, compute capability, peak
# TFLOPS, memory bandwidth (TB/s, the same sheets and pages: the SXM figure where a card comes as SXM and PCIe).
# PyTorch's total (its out-of-memory message's "total capacity", what torch.cuda.mem_get_info says) is what a
# run can have: the sold 80 "GB" are GiB, 85.9e9 bytes, of which the driver keeps some (an H100 reports 79.1 GiB,
# 84.9e9 bytes). The totals are from PyTorch's messages in issue threads that name the card, the lowest where driver
# generations differ (a T4: 14.75 GiB on older drivers, 14.56 on 535 and newer), the 48 GB Ada and Ampere cards' with
# ECC on; the H200's measured (bench/NOTES.md); TITAN RTX, Quadro RTX 6000, RTX A5000, A10 and A40 are estimated
# from their siblings' (no thread names them). bf16 and FlashAttention 2 from sm80 (Ampere) on; Volta and Turing train in fp16 on SDPA. Pascal (P100, sm60) is left
# out: the trainer's Triton kernels (LoRA, the LM head, Liger) need sm70. TFLOPS from NVIDIA's data sheets
# (dense, the sparse figure halved) or, for GeForce and Quadro cards, its architecture whitepapers (Turing,
# Ampere GA102, Ada: "FP16 Tensor TFLOPS with FP32 Accumulate", which GeForce cards run at half rate). (b): a GeForce
# card no whitepaper lists: its SMs x its boost clock (NVIDIA's product page) x 512 dense FP16/BF16 FLOPs with FP32
# accumulate a clock an SM, the rate the whitepapers' RTX 3090 (82 x 1,695 MHz: 71) and RTX 4090 (128 x 2,520 MHz:
# 165.2) figures give; training accumulates in fp32, so not the doubled FP16-accumulate figure. Consumer totals from
# PyTorch's messages in threads naming the card (RTX 3060 11.75, 3070 7.76, 3080 9.78, 4070 Ti 11.73, 4060 Laptop
# 7.75, 4060 Ti 16 GB 15.55, 5090 31.36 GiB, Linux; Windows says 12.00 of a 3060); the others as a sibling's with as
# much memory. GeForce names do not say the memory (an RTX 4060 Ti has 8 or 16 GB, an RTX 3080 10 or 12):
# local_tier reads nvidia-smi's memory too.
# The order is the order lists of cards name them in (Known types:, the cards a plan that does not fit offers). No
# name is matched by substring: tier(), local_tier and the local backend read a name's model (_model: a10g is no a10,
# l40s no l40) or a variant of it (named_after: a 3090 Ti's RTX3090), and an unlisted card is planned as the listed
# one of the most generation, memory and TFLOPS within it (local.backend._listed_like), the first listed of a tie.
TIERS: dict[str, GpuTier] = {
    t.name: t
    for t in [
        # Pascal and older: not planned (above)
        # Volta, sm70
        GpuTier("V100", 16, 15.75, (7, 0), 125, 0.9),  # V100 SXM2 sheet
        GpuTier("V100S", 32, 31.74, (7, 0), 130, 1.134),  # V100S PCIe sheet
        GpuTier("V100-32GB", 32, 31.74, (7, 0), 125, 0.9),  # V100 SXM2 sheet
        # TITAN V (a workstation's Volta, 12 GB HBM2): fp16 on SDPA as the V100 (it was planned as cpu: no listed Volta
        # card within 12 GB); total as the 12 GB cards' (RTX3060's)
        GpuTier("TITANV", 12, 11.75, (7, 0), 110, 0.653),  # TITAN V page: 110 deep-learning TFLOPS
        # Turing, sm75
        GpuTier("T4", 16, 14.56, (7, 5), 65, 0.32),  # T4 sheet
        GpuTier("RTX2080Ti", 11, 10.73, (7, 5), 53.8, 0.616),  # whitepaper, ref. clock
        GpuTier("TITANRTX", 24, 23.6, (7, 5), 130, 0.672),  # TITAN RTX page
        GpuTier("RTX6000", 24, 23.6, (7, 5), 130.5, 0.672),  # Quadro RTX 6000 sheet
        GpuTier("RTX8000", 48, 47.46, (7, 5), 130.5, 0.672),  # Quadro RTX 8000 sheet
        # Ampere, sm80 and sm86
        GpuTier("A30", 24, 23.53, (8, 0), 165, 0.933),  # A30 sheet
        GpuTier("A100", 40, 39.38, (8, 0), 312, 1.555),  # A100 sheet
        GpuTier("A100-80GB", 80, 79.14, (8, 0), 312, 2.039),  # A100 sheet
        # A800: the A100's die with a slower NVLink (China's export variant); 40 and 80 GB as the A100
        GpuTier("A800", 40, 39.38, (8, 0), 312, 1.555),  # A800 sheet
        GpuTier("A800-80GB", 80, 79.14, (8, 0), 312, 2.039),  # A800 sheet
        GpuTier("A10G", 24, 21.98, (8, 6), 70, 0.6),  # AWS's figure; NVIDIA has none
        GpuTier("A10", 24, 21.98, (8, 6), 125, 0.6),  # A10 sheet
        GpuTier("A40", 48, 44.34, (8, 6), 149.7, 0.696),  # A40 sheet
        GpuTier("RTX3060", 12, 11.75, (8, 6), 25.5, 0.36),  # 28 SMs x 1,777 MHz (b)
        GpuTier("RTX3060-8GB", 8, 7.76, (8, 6), 25.5, 0.24),  # as RTX3060 on a 128-bit bus; total as RTX3070's
        GpuTier("RTX3070", 8, 7.76, (8, 6), 40.6, 0.448),  # GA102 whitepaper (its GA104 column)
        GpuTier("RTX3080", 10, 9.78, (8, 6), 59.5, 0.76),  # GA102 whitepaper
        GpuTier("RTX3080-12GB", 12, 11.75, (8, 6), 61.3, 0.912),  # 70 SMs x 1,710 MHz (b); total as RTX3060's
        GpuTier("RTX3080Ti", 12, 11.75, (8, 6), 68.2, 0.912),  # 80 SMs x 1,665 MHz (b); total as RTX3060's
        GpuTier("RTX3090", 24, 23.68, (8, 6), 71, 0.936),  # GA102 whitepaper
        GpuTier("RTXA4000", 16, 15.61, (8, 6), 76.7, 0.448),  # RTX A4000 sheet
        GpuTier("RTXA5000", 24, 23.6, (8, 6), 111.1, 0.768),  # RTX A5000 sheet
        GpuTier("RTXA6000", 48, 47.4, (8, 6), 154.8, 0.768),  # RTX A6000 sheet
        # Ada, sm89
        GpuTier("L4", 24, 22.03, (8, 9), 121, 0.3),  # L4 sheet
        GpuTier("L40S", 48, 44.39, (8, 9), 362, 0.864),  # L40S sheet
        GpuTier("L40", 48, 44.39, (8, 9), 181, 0.864),  # L40 sheet
        GpuTier("L20", 48, 44.39, (8, 9), 119.5, 0.864),  # L20 sheet; total as L40's
        GpuTier("RTX4060", 8, 7.75, (8, 9), 30.2, 0.272),  # 24 SMs x 2,460 MHz (b); total: a 4060 Laptop GPU's
        GpuTier("RTX4060Ti", 8, 7.75, (8, 9), 44.1, 0.288),  # 34 SMs x 2,535 MHz (b); total as RTX4060's
        GpuTier("RTX4060Ti-16GB", 16, 15.55, (8, 9), 44.1, 0.288),  # as RTX4060Ti
        GpuTier("RTX4070", 12, 11.72, (8, 9), 58.3, 0.504),  # 46 SMs x 2,475 MHz (b); total under RTX4070Ti's
        GpuTier("RTX4070Super", 12, 11.72, (8, 9), 71.0, 0.504),  # 56 SMs x 2,475 MHz (b); total as RTX4070's
        GpuTier("RTX4070Ti", 12, 11.73, (8, 9), 80.2, 0.504),  # 60 SMs x 2,610 MHz (b)
        GpuTier("RTX4070TiSuper", 16, 15.55, (8, 9), 88.2, 0.672),  # 66 SMs x 2,610 MHz (b); total as RTX4060Ti-16GB's
        GpuTier("RTX4080", 16, 15.55, (8, 9), 97.5, 0.717),  # Ada whitepaper (76 SMs x 2,505 MHz); total as above
        GpuTier("RTX4080Super", 16, 15.55, (8, 9), 104.4, 0.736),  # 80 SMs x 2,550 MHz (b); total as above
        GpuTier("RTX4090", 24, 23.64, (8, 9), 165, 1.008),  # Ada whitepaper
        GpuTier("RTX6000-Ada", 48, 44.43, (8, 9), 364.2, 0.96),  # Ada whitepaper
        # Hopper, sm90; Blackwell, sm100
        GpuTier("H100", 80, 79.1, (9, 0), 989, 3.35),  # H100 SXM sheet
        GpuTier("H200", 141, 139.8, (9, 0), 989, 4.8),  # H200 sheet
        # the PCIe and NVL cards of the same dies, slower (clocks, power) and, the PCIe one, on HBM2e: named by their
        # form (_FORMS), which the other cards' names leave out (an A100's PCIe card is its SXM one's speed)
        GpuTier("H100-PCIe", 80, 79.1, (9, 0), 756, 2.0),  # H100 PCIe sheet
        GpuTier("H100-NVL", 94, 93.0, (9, 0), 835, 3.9),  # H100 NVL sheet; nvidia-smi 95,830 MiB
        GpuTier("H200-NVL", 141, 139.8, (9, 0), 835, 4.8),  # H200 NVL sheet
        GpuTier("H800", 80, 79.1, (9, 0), 989, 3.35),  # H100's die
        # H20: a Hopper die cut to 148 TFLOPS with 96 GB HBM3 (China's export variant): a GH200's memory, a seventh of
        # its compute
        GpuTier("H20", 96, 94.5, (9, 0), 148, 4.0),  # H20 sheet; total as GH200's
        # Grace Hopper: the 96 GB HBM3 module (the 144 GB HBM3e one plans within it)
        GpuTier("GH200", 96, 94.5, (9, 0), 989, 4),  # GH200 sheet
        GpuTier("B200", 180, 178.35, (10, 0), 2250, 8),  # HGX B200 sheet, per GPU
        # Grace Blackwell (GB200 NVL72/NVL4): a B200 die at 1,200 W with 186 GB HBM3e; nvidia-smi 189471 MiB,
        # PyTorch's total 184.31 GiB (OOM messages on GB200 nodes); Arm hosts (docker.image.ARM_HOSTED)
        GpuTier("GB200", 186, 184.31, (10, 0), 2500, 8),  # GB200 NVL72 sheet, per GPU (5 PFLOPS sparse)
        # GeForce Blackwell, sm120 (not sm100's kernels: no FlashAttention 4)
        GpuTier("RTX5060Ti", 8, 7.5, (12, 0), 47.4, 0.448),  # 36 SMs x 2,572 MHz (b); totals: 0.985 of nvidia-smi's,
        GpuTier("RTX5060Ti-16GB", 16, 15.47, (12, 0), 47.4, 0.448),  # as RTX5090's (31.36 of 32,607 MiB), rounded down
        GpuTier("RTX5070", 12, 11.5, (12, 0), 61.7, 0.672),  # 48 SMs x 2,512 MHz (b)
        GpuTier("RTX5070Ti", 16, 15.47, (12, 0), 87.9, 0.896),  # 70 SMs x 2,452 MHz (b)
        GpuTier("RTX5080", 16, 15.47, (12, 0), 112.6, 0.96),  # 84 SMs x 2,617 MHz (b)
        GpuTier("RTX5090", 32, 31.36, (12, 0), 209.5, 1.792),  # 170 SMs x 2,407 MHz (b): 838 sparse FP16-accumulate / 4
        # the workstation Blackwell (sm120, as GeForce's): full-rate FP32 accumulate, as the RTX 6000 Ada's 1,024 FLOPs a
        # clock an SM (188 SMs x 2,617 MHz); nvidia-smi 97,887 MiB
        GpuTier("RTXPRO6000", 96, 94.0, (12, 0), 503.8, 1.792),  # RTX PRO 6000 Blackwell sheet (1,007.6 sparse)
    ]
}

# what plan's refusals offer as GPUs that would fit: the clouds' common cards (the others only where asked for)
SUGGESTED = frozenset({"T4", "V100", "V100-32GB", "A10G", "L4", "L40S", "RTX3090", "RTX4090", "A100", "A100-80GB"})
SUGGESTED |= {"H100", "H200", "B200"}

# desktop and workstation cards (GeForce, TITAN, Quadro, RTX A and Ada): a workstation's or a Slurm node's; of the
# clouds SkyPilot reaches, RunPod and Vast.ai rent some of them, the large ones none
DESKTOP = frozenset(n for n in TIERS if n.startswith(("RTX", "TITAN")))


def offered_instead(asked: GpuTier) -> list[tuple[int, GpuTier]]:
    """The cards a plan that does not fit ``asked`` offers, each with its place: 0 the card asked for, 1 a bigger one
    (more memory, or as much on a newer card, of no older generation: bf16 and FlashAttention stay where asked had
    them; an H100's H200 and B200), 2 the others (older or smaller: an H100's A100-80GB, V100-32GB). Those who ask
    for H100s want more H100s, then a bigger card, an older one last; the plan orders GPU counts within a place."""

    def place(t: GpuTier) -> int:
        if t is asked:
            return 0
        newer = t.compute_capability[0] >= asked.compute_capability[0]
        bigger = t.memory_gb > asked.memory_gb or (
            t.memory_gb == asked.memory_gb and t.compute_capability > asked.compute_capability
        )
        return 1 if newer and bigger else 2

    return [(place(t), t) for t in TIERS.values() if t.name in SUGGESTED or t is asked]


FORMS = "8xA100, 2x8xH100 (nodes x gpus x type), A100-80GB:8, gpu:a100:8 (Slurm's), H100, or cpu"


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


# words of a GPU's name that do not tell its model: vendor, brand, form factor, memory kind
_NOISE = re.compile(
    r"nvidia|tesla|geforce|quadro|sxm\d?|pcie|nvl|fhhl|hbm\d?e?|generation|blackwell|workstation|server|edition"
)
_MEMORY = re.compile(r"(\d+)g(?:i?b)?")  # 80gb, and as people write it: 80g, 80gib
_MIG = re.compile(r"\d+g\.\d+gb")  # a MIG slice: nvidia_a100_3g.20gb


def _model(name: str) -> tuple[str, int | None]:
    """A GPU's model and the memory its name says (None where it says none): its words without the
    vendor, brand and form-factor ones, joined, and a leading 'rtx' dropped. 'nvidia_a100-sxm4-80gb' and
    'A100-80GB' -> ('a100', 80); 'NVIDIA RTX 6000 Ada Generation' and 'RTX6000-Ada' -> ('6000ada', None)."""
    words = [w for w in re.split(r"[\s_\-]+", name.strip().lower()) if w and not _NOISE.fullmatch(w)]
    memory = next((int(m.group(1)) for w in words if (m := _MEMORY.fullmatch(w))), None)
    model = "".join(w for w in words if not _MEMORY.fullmatch(w)).removeprefix("rtx")
    return model, memory


_MODELS = {name: _model(name) for name in TIERS}
# a tier named by its form factor, which _model leaves out (the same die's SXM card is the tier named without it)
_FORMS = {"H100-PCIe": "pcie", "H100-NVL": "nvl", "H200-NVL": "nvl"}


def _of_its_form(tiers: list[GpuTier], name: str) -> list[GpuTier]:
    """Of one model's ``tiers``, those of the form factor ``name`` says (pcie, nvl; none: SXM's), where the model has
    tiers by form (an H100: its PCIe card runs at 0.76 of the SXM one's TFLOPS); ``tiers`` otherwise."""
    if not any(t.name in _FORMS for t in tiers):
        return tiers
    words = set(re.split(r"[\s_\-]+", name.strip().lower()))
    form = next((f for f in ("pcie", "nvl") if f in words), None)
    return [t for t in tiers if _FORMS.get(t.name) == form] or tiers


def same_model(gpu_name: str, tier_name: str) -> bool:
    """Whether a GPU's name as Slurm's GRES or nvidia-smi writes it could be ftctl's tier: the same model ('a10' is
    no A100, 'l40s' no L40), with at least the tier's memory where the name says its memory (a cluster's 'a100'
    GRES may hold its 80 GB cards; 'a100-40gb' is no A100-80GB: a plan for 80 GB runs out of memory there)."""
    model, memory = _model(gpu_name)
    return model == _model(tier_name)[0] and (memory is None or memory >= TIERS[tier_name].memory_gb)


def named_after(gpu_name: str, tier_name: str) -> bool:
    """Whether a GPU's name is the tier's model with more after it: an 'RTX 3090 Ti' of the RTX3090, an 'RTX 4060 Laptop
    GPU' of the RTX4060 (an unlisted card planned as the one it is a variant of, where its memory fits)."""
    model, tier_model = _model(gpu_name)[0], _model(tier_name)[0]
    return model != tier_model and model.startswith(tier_model) and not model[len(tier_model)].isdigit()


_NOT_CUDA = re.compile(
    r"(amd[-_ ]?)?(instinct[-_ ]?)?mi\d{2,3}|(intel[-_ ]?)?(gaudi|max\d)|tpu|trainium|inferentia|radeon"
)


def older_than_listed(name: str) -> bool:
    """Whether a GPU's name is a card older than every listed one (Pascal and older: P100, GTX 1080, K80)."""
    return bool(_OLDER.fullmatch(_model(name)[0]))


def tier(name: str) -> GpuTier:
    """The tier a GPU type names: ftctl's name, or Slurm's and nvidia-smi's for the same card, in any case.
    Vendor, brand and form-factor words (nvidia, tesla, geforce, quadro, sxm4, pcie...) are left out and a
    leading RTX is optional; a memory word (80gb) picks the model's largest tier with no more memory than that,
    none picks the tier named without one (A100 is the 40 GB card)."""
    if _MIG.search(name.lower()):
        raise FtctlError(f"GPU type {name!r} is a MIG slice of a GPU: ftctl plans whole GPUs (gpu:a100:1).")
    model, memory = _model(name)
    same = _of_its_form([TIERS[n] for n, (m, _) in _MODELS.items() if m == model], name)
    if memory is None:
        found = next((t for t in same if _MODELS[t.name][1] is None), None)
    else:
        found = max((t for t in same if t.memory_gb <= memory), key=lambda t: t.memory_gb, default=None)
    if found:
        return found
    if same:
        sizes = ", ".join(f"{t.name} {t.memory_gb:g} GB" for t in same)
        raise FtctlError(f"GPU type {name!r} says {memory} GB, less than ftctl's {sizes}: name a smaller card.")
    keys = {}  # (a model's first tier: H100, not H100-NVL, for a typo of h100)
    for n, (m, gb) in _MODELS.items():
        keys.setdefault(m + (f"{gb}gb" if gb else ""), n)
    if _NOT_CUDA.match(name.strip().lower()):  # MI300X was "Unknown GPU type ... name a listed one"
        raise FtctlError(
            f"GPU type {name!r} is no NVIDIA card: ftctl trains with CUDA (NVIDIA GPUs) or on cpu; AMD's, Intel's "
            "and TPUs are not planned."
        )
    if apple_gpu(name):  # M2 was "older than every card" (read as Maxwell's M60), mps "Unknown GPU type"
        raise FtctlError(
            f"GPU type {name!r} is Apple silicon's GPU (MPS), which ftctl does not train on: it trains on NVIDIA GPUs "
            "(CUDA) or the CPU. On a Mac: --gpus cpu (its CPU, models up to 2B); --backend sky or slurm runs on GPUs "
            "elsewhere."
        )
    if older_than_listed(name):  # P100 was "did you mean V100?": a newer card
        raise FtctlError(
            f"GPU type {name!r} is older than every card ftctl plans for (Volta's V100 is the oldest): train on a "
            "listed card, or on cpu."
        )
    if (reversed_form := _REVERSED.fullmatch(name.strip())) and reversed_form.group(1).lower() in {
        n.lower() for n in TIERS
    }:
        count, card = reversed_form.group(2), tier(reversed_form.group(1)).name
        raise FtctlError(f"GPU type {name!r}: the count comes first, --gpus {count}x{card} ({card}:{count} too).")
    # a typo, not another card: MI300X is not an RTX3090 (the 0.6 of errors.did_you_mean would say it is)
    close = difflib.get_close_matches(model + (f"{memory}gb" if memory else ""), keys, n=1, cutoff=0.7)
    if close and _renumbered(close[0], model + (f"{memory}gb" if memory else "")):
        close = []  # another number is another card (H800 is no H200, which has more memory), not a typo
    raise FtctlError(
        f"Unknown GPU type {name!r}.{f' Did you mean {keys[close[0]]!r}?' if close else ''} Known types: "
        f"{', '.join(TIERS)} (or their names as Slurm and nvidia-smi write them: nvidia_a100-sxm4-80gb). A card "
        "not listed: name a listed one of its generation or older with no more memory, and ftctl plans for that."
    )


def _renumbered(a: str, b: str) -> bool:
    """Whether two names hold other numbers of one length (800 and 200: two cards), not a digit more or less (A1000
    for A100: a typo)."""
    return any(x != y and len(x) == len(y) for x, y in zip(re.findall(r"\d+", a), re.findall(r"\d+", b)))


def local_tier(name: str, mem_gib: float) -> GpuTier:
    """The tier of a GPU as nvidia-smi lists it, its name and memory.total (GiB): :func:`tier` of the name, or where the
    name says no memory and its model has tiers of more than one (a GeForce RTX 4060 Ti of 8 or 16 GB, an RTX 3080 of 10
    or 12), the largest of them within ``mem_gib`` (PyTorch's total of it, under nvidia-smi's). FtctlError as tier's."""
    found = tier(name)
    model, memory = _model(name)
    if memory is not None or not mem_gib:
        return found
    same = _of_its_form([TIERS[n] for n, (m, _) in _MODELS.items() if m == model], name)
    same = [t for t in same if t.total_gib <= mem_gib]
    if not same:  # an 8 GB RTX 3060: not the 12 GB card its name is
        raise FtctlError(f"{name.strip()}: less memory than the {found.name}'s {found.total_gib:g} GiB")
    return max(same, key=lambda t: t.memory_gb)


# the compute capability an unlisted card's name tells (its model, as _model reads it): Quadro GV100 and TITAN V are
# Volta; GeForce RTX 2060-2080, GTX 16xx, TITAN RTX and Quadro RTX 4000-8000 Turing; RTX 3050-3090 and RTX A2000-A6000
# Ampere; RTX 4050-4090 and the RTX "Ada Generation" cards Ada; RTX 5050-5090 and the RTX PRO cards Blackwell (sm120)
_CAPABILITIES = (
    (re.compile(r"gv100|titanv.*"), (7, 0)),
    (re.compile(r"20[6-8]0.*|gtx16\d0.*|titanrtx|[4-8]000|t\d{3,4}.*"), (7, 5)),
    (re.compile(r"30[5-9]0.*|a\d{4}.*"), (8, 6)),
    (re.compile(r"40[5-9]0.*|\d{4}ada.*"), (8, 9)),
    (re.compile(r"50[5-9]0.*|pro\d{4}.*"), (12, 0)),
)


def capability_of(name: str) -> tuple[int, int] | None:
    """The compute capability a GPU's name tells (an unlisted 'NVIDIA GeForce RTX 2070': (7, 5)), None where it tells
    none: an unlisted Turing card planned as a listed Ada one of its memory would be planned bf16 and FlashAttention,
    which it has not."""
    model = _model(name)[0]
    return next((cap for pattern, cap in _CAPABILITIES if pattern.fullmatch(model)), None)


# Apple silicon's GPU as a Mac user names it: mps (torch's device), M1-M5 (Pro, Max, Ultra), Apple M2 Max; not a Tesla M4
_APPLE = re.compile(r"mps|metal|apple.*|m[1-5](pro|max|ultra)?")


def apple_gpu(name: str) -> bool:
    """Whether a GPU's name is a Mac's own GPU (Apple silicon, torch's MPS), which ftctl does not train on."""
    return bool(_APPLE.fullmatch(_model(name)[0])) and "tesla" not in name.lower()


# cards before Volta (Pascal, Maxwell, Kepler: P100, M60, K80, Quadro P6000, M6000, K6000 and GP100, GeForce GTX
# 6xx-10xx and their numbers alone, as --gpus 1080 and 980ti give them, TITAN X): a typo's nearest listed card is newer
# (GTX 16xx is Turing, as the listed T4). Quadro is a brand word (_NOISE): a Quadro P6000's model is p6000, a Tesla P40's
# p40
_OLDER = re.compile(r"[pkm]\d{1,4}(\D.*)?|gp100|gtx[6-9]\d\d.*|(gtx)?([6-9][5-8]0|10[3-8]0).*|titanx.*")
_REVERSED = re.compile(r"([A-Za-z][\w.\-]*?)[xX](\d+)")  # a100x8: the count after the type

# a GeForce's number (3080, 1660, 1080, 980): a card, not a count of GPUs (1 to 16)
_GEFORCE = r"[1-5]0[5-9]0|16[56]0|1030|[6-9][5-8]0"

# a type begins with a letter, or with a card's number and a letter after it (2080ti, 4060-Ti: an RTX's)
_TYPE = r"[A-Za-z][\w.\-]*|\d{3,4}[\-.]?[A-Za-z][\w.\-]*"
_NXT = re.compile(rf"^(?:(\d+)[xX])?(?:(\d+)[xX])?({_TYPE})$")
_SKY = re.compile(rf"^({_TYPE}):(\d+)$")


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
    slurm = re.fullmatch(r"gpu:(\d+)", text, re.IGNORECASE)  # gpu:4090: Slurm's one GPU of a type, as gpu:a100
    text = re.sub(r"^gpu:", "", text, flags=re.IGNORECASE)  # Slurm's gres: gpu:a100:8
    text = re.sub(r"^(\d+)\s*[xX]\s*(?:(\d+)\s*[xX]\s*)?", lambda m: "x".join(filter(None, m.groups())) + "x", text)
    text = re.sub(r"\s+", "-", text)  # "8 x A100", "RTX 4090": as 8xA100, RTX-4090
    if slurm and (card := _numbered(text)):
        text = card
    if text.isdigit() and (card := _numbered(text)):
        raise FtctlError(f"--gpus {spec!r} reads as a count of GPUs of no type: for the card, --gpus 1x{card}.")
    if (counted := re.fullmatch(r"((?:\d+x){1,2})(\d+)", text, re.IGNORECASE)) and (card := _numbered(counted[2])):
        text = counted.group(1) + card  # 2x4090: the card's number after a count is the card (RTX4090)
    if (sky := re.fullmatch(r"(\d+):(\d+)", text)) and (card := _numbered(sky[1])):
        text = f"{card}:{sky[2]}"  # 4090:2, gpu:4090:2 (SkyPilot's and Slurm's forms): the card's number before a count
    if card := re.fullmatch(rf"(?:\d+x){{0,2}}({_GEFORCE})(?::\d+)?", text, re.IGNORECASE):  # 3080, 2x4060, 1080:2:
        try:  # a GeForce's number, not a count (1 to 16) of GPUs of no type: "3080 GPUs" said gpu:TYPE:3080
            tier(card.group(1))
        except FtctlError as e:
            raise FtctlError(f"--gpus {spec!r}: {e} Accepted forms: {FORMS}.") from None
    if re.fullmatch(r"(?:\d+x){0,2}\d+", text, re.IGNORECASE):  # 8, 2x8: counts alone
        raise FtctlError(
            f"--gpus {spec!r} names no GPU type, and ftctl plans for one: "
            f"{f'gpu:TYPE:{text} or ' if text.isdigit() else ''}{text}xTYPE "
            f"(`sinfo -o %G` lists the cluster's). Known types: {', '.join(TIERS)}."
        )
    m = _SKY.match(text)
    if m and m.group(1).lower() == "cpu":
        raise FtctlError(
            f"--gpus {spec!r}: a CPU run is --gpus cpu (its processes take the node's cores) or Nxcpu for N nodes, "
            f"e.g. --gpus {m.group(2)}xcpu."
        )
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


def _numbered(number: str) -> str | None:
    """The listed card a number alone names (4090: RTX4090, as --gpus 2x4090 and gpu:4090:2 give it), else None."""
    return next((n for n, (model, _) in _MODELS.items() if model == number), None)


def _merge_nodes(from_form: int | None, flag: int | None, spec: str) -> int:
    if from_form is not None and flag is not None and from_form != flag:
        raise FtctlError(f"--gpus {spec!r} says {from_form} nodes but --nodes says {flag}: drop one of them.")
    n = from_form if from_form is not None else flag if flag is not None else 1
    if n < 1:
        raise FtctlError(f"--gpus {spec!r}: the node count must be at least 1.")
    return n


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (a Slurm step's or a container's cpuset, not the machine's
    cores), else the machine's where there is none to ask (macOS has no os.sched_getaffinity)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
