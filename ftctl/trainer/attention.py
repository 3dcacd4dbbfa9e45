"""Which attention kernel and fused layer kernels a run uses: chosen here, and only here.

The planner (no torch on the launcher) can only know whether the GPU tier runs FlashAttention
kernels; the trainer knows what is installed. Both ask this module:

    plan_attention(requested, gpu_flash, softcap)  -> "varlen" | "sdpa" | "eager" | what the user asked   (plan time)
    resolve(planned, model_type, on_cpu, shape=...)  -> Kernels(attn_implementation, attention, liger)   (run time)

``varlen`` in a plan means exact per-document attention through FlashAttention's variable-length
kernels; at run time it becomes, in this order:
  1. ``ftctl_fa4``: FlashAttention 4 (the flash-attn-4 package's CuTe DSL kernels, ``flash_attn.cute``) on
     Hopper and Blackwell GPUs when it imports: on an H200 its forward + backward over a packed 16k-token
     batch took 1.73x (8B shape) / 1.76x (1B) less time than FlashAttention 2's kernels, outputs and gradients
     as close to an fp32 reference (bench/results/2026-12-01-h200-fa4-varlen.json); its kernels compile in
     the probe below (8-18 s a shape on an H200 with its import, v34/v36 in bench/NOTES.md);
  2. ``flash_attention_2`` when the flash-attn package is installed and imports;
  3. ``ftctl_varlen``: torch's own ``torch.nn.attention.varlen.varlen_attn`` (FlashAttention 2's varlen
     kernels shipped with torch >= 2.11, native GQA);
  4. ``sdpa`` (logged): exact too for packed batches, through transformers' block-diagonal mask, but slow.
``ftctl_fa4`` and ``ftctl_varlen`` are ftctl's transformers attention functions (``varlen_attention_forward``
over one kernel or the other). A plan that names ``flash_attention_2`` gets 2, else 3, else 4.
Given the model's attention (``AttentionShape``: head dim, heads, dtype, soft cap, windows), each of 1-3 that is
installed must first run a forward and a backward of that shape on the GPU (``probe``), or the next one is taken
with a warning: a kernel that imports can still refuse a head dim (FlashAttention 4 takes up to 128 on
Blackwell, every kernel here at most 256), a soft cap with head dim 256 (FA4 on Blackwell), or fail to compile on
the node; found in the first step, that would have stopped the run. FA4 compiles its kernels in the probe, not
in the first step (each shape once per process; bench/results/2026-12-01-h200-attention-probe-v34.json).
All varlen kernels take the per-document boundaries (``cu_seq_lens_q/k`` int32, ``max_length_q/k``
int) that TRL's padding-free collator computes once per batch on the CPU; they reach every layer as
model kwargs, so no layer derives them from ``position_ids`` (a host sync per layer).

Packing is exact where every layer keeps the documents apart: attention does (above), but a model with linear
attention or state-space layers (Qwen3.5, Qwen3-Next, Granite 4 hybrid, Falcon-H1, Kimi Linear: RECURRENT_MODEL_TYPES)
carries a state along the row, reset at the boundaries only by CUDA kernels that transformers hands them to
(BOUNDARY_KERNELS: flash-linear-attention, causal-conv1d, mamba-ssm). Such a model is not packed by default
(``default_packing``), and a packed run is refused where those kernels do not run (``packing_refused``).

Liger's layer kernels (RoPE, RMSNorm, SwiGLU or GeGLU) are applied to the types of LIGER_MODEL_TYPES on CUDA
when liger-kernel is installed. The head's cross-entropy is ftctl's (lm_head.py: TRL's fused-head kernels,
the gradients taken in the forward; TRL's own head where it cannot run): the (tokens x vocab) logits never
exist in full, so Liger's own fused linear cross-entropy is not used.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import itertools
import logging
import os
from dataclasses import asdict, dataclass

from ftctl.errors import FtctlError

log = logging.getLogger(__name__)

VARLEN = "varlen"  # plan-level name: exact per-document FlashAttention varlen kernels
FLASH_ATTN = "flash_attention_2"
TORCH_VARLEN = "ftctl_varlen"  # the transformers attention name of torch's varlen_attn
FA4_VARLEN = "ftctl_fa4"  # the transformers attention name of FlashAttention 4's varlen kernels
FA4_MAJORS = (9, 10)  # compute capabilities FlashAttention 4 trains on: Hopper (sm90), Blackwell (sm100)
SDPA = "sdpa"
EAGER = "eager"
# Attentions that keep packed samples apart through cu_seq_lens (no dense mask): packing is free.
VARLEN_ATTENTION = frozenset({VARLEN, FLASH_ATTN, "flash_attention_3", TORCH_VARLEN, FA4_VARLEN})
# Attentions that keep them apart through transformers' block-diagonal mask built from the restarting
# position_ids: exact, but the (tokens x tokens) mask costs memory and time, so packing is opt-in.
MASKED_ATTENTION = frozenset({SDPA, EAGER, "flex_attention"})
# model_type values whose attention adds learned sink logits (transformers' s_aux): transformers refuses SDPA for
# them, hands the sinks only to a flash kernel that takes them (flash-attn 2 runs without them, silently) and
# ftctl's varlen function refuses them, so they run eager attention
ATTENTION_SINKS = frozenset({"gpt_oss"})
# model_type values (transformers 5.25) with layers that carry a state along the row: linear attention (Gated
# DeltaNet, KDA), state-space (Mamba) or recurrent layers, and their short causal convolutions. A packed row's
# documents stay apart in them only where each such layer's kernel is handed the batch's boundaries (cu_seqlens or
# seq_idx, from TRL's padding-free collator); transformers' torch paths take none: a packed batch stops at its first
# step where the collator passes them (ValueError: "`causal_conv1d_fn` can't keep packed sequences apart without
# `causal_conv1d`"), and the second document reads the first, silently, where none are passed (explore47:
# bench/hybrid_packing_gpu.py). Whole models' types and their text models' alike.
RECURRENT_MODEL_TYPES = frozenset(
    {"qwen3_5", "qwen3_5_text", "qwen3_5_moe", "qwen3_5_moe_text", "qwen3_next", "olmo_hybrid", "lara_mini"}
    | {"qwen4_exp", "qwen4_exp_text", "kimi_linear", "bailing_hybrid", "glm5_next", "glm5_next_text"}
    | {"granitemoehybrid", "falcon_h1", "bamba", "nemotron_h", "zamba", "zamba2", "jamba", "mamba", "mamba2"}
    | {"falcon_mamba", "lfm2", "lfm2_moe", "lfm3", "lfm3_vl", "recurrent_gemma", "zaya", "inkling_text"}
    | {"inkling_mm_model", "inkling2", "inkling2_text", "inkling2_loop", "inkling2_loop_text"}
)
# The CUDA kernels (distribution, module, function) that transformers 5.25 hands the boundaries of a packed batch, for
# the types read whose every recurrent layer gets them: Gated DeltaNet's chunk_gated_delta_rule(cu_seqlens=) and its
# convolution's causal_conv1d_fn(seq_idx=); Mamba-2's fused mamba_split_conv1d_scan_combined(seq_idx=) in training,
# mamba_chunk_scan_combined and causal_conv1d_fn in evaluation. The other recurrent types: none (Kimi Linear hands
# its KDA layers no cu_seqlens: fla's chunk_kda would read across documents) or not read.
GATED_DELTA = ("flash-linear-attention", "fla.ops.gated_delta_rule", "chunk_gated_delta_rule")
CONV1D = ("causal-conv1d", "causal_conv1d", "causal_conv1d_fn")
MAMBA2 = ("mamba-ssm", "mamba_ssm.ops.triton.ssd_combined", "mamba_split_conv1d_scan_combined")
BOUNDARY_KERNELS = {
    **dict.fromkeys(
        ("qwen3_5", "qwen3_5_text", "qwen3_5_moe", "qwen3_5_moe_text", "qwen3_next", "olmo_hybrid"),
        (GATED_DELTA, CONV1D),
    ),
    **dict.fromkeys(("granitemoehybrid", "falcon_h1"), (MAMBA2, CONV1D)),
}
# model_type values whose attention mask transformers builds without the position ids (Granite 4 hybrid): under a
# masked attention (sdpa, eager) a packed row's documents attend to each other; the varlen kernels keep them apart
MASK_WITHOUT_POSITIONS = frozenset({"granitemoehybrid"})
# model_type values whose Liger patch covers RoPE, RMSNorm and the gated MLP (SwiGLU; GeGLU for Gemma) the way
# Llama's does; Gemma's and Phi-3's measured against transformers' own layers (bench/NOTES.md v63)
LIGER_MODEL_TYPES = frozenset(
    {"llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen3_moe", "granite", "olmo2"}
    | {"gemma", "gemma2", "gemma3_text", "phi3"}
)


# ------------------------------------------------------------------------------------ plan time
def plan_attention(requested: str | None, gpu_flash: bool, softcap: bool = False, sinks: bool = False) -> str:
    """What the plan names: the user's choice, else ``varlen`` where the GPU runs FlashAttention
    kernels (Ampere and newer), else ``sdpa`` (T4/V100, CPU; also where varlen or flash_attention_2 was asked
    for there: what runs, as ``resolve`` would fall back); ``eager`` where that is sdpa and the model
    soft-caps its attention logits (Gemma 2), which sdpa cannot (as ``resolve`` does at run time); ``eager`` for
    any of them where the model's attention has sinks (ATTENTION_SINKS: gpt-oss)."""
    name = requested or (VARLEN if gpu_flash else SDPA)
    if name in (VARLEN, FLASH_ATTN) and not gpu_flash:
        name = SDPA
    if sinks and name in VARLEN_ATTENTION | {SDPA}:
        return EAGER
    return EAGER if softcap and name == SDPA else name


def head_width(cfg) -> int | None:
    """The widest attention head a varlen kernel takes for a text config (a transformers config or config.json's
    dict): its head_dim, but multi-head latent attention's (DeepSeek-V2/V3, Kimi K2, MiniCPM3) queries and keys are
    qk_nope_head_dim + qk_rope_head_dim wide (192) where its config's head_dim is the rotary part alone (64), and
    its values v_head_dim (128; varlen_attention_forward pads them to the queries' width). The widest of those
    (MiMo-V2-Flash: head_dim 192, values 128), else hidden / heads; None where the config says none."""

    def size(key: str) -> int:
        value = cfg.get(key) if isinstance(cfg, dict) else getattr(cfg, key, None)
        return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0

    heads = size("num_attention_heads")
    qk = size("qk_nope_head_dim") + size("qk_rope_head_dim") or size("head_dim")
    return max(qk or (size("hidden_size") // heads if heads else 0), size("v_head_dim")) or None


def keeps_scores(planned: str, gpu_flash: bool, softcap: bool, sinks: bool = False) -> bool:
    """Whether the attention that runs for a plan's writes out each head's (S x S) scores (transformers' eager
    attention): asked for, or where a soft-capped model would run sdpa, a varlen plan's too on a GPU that runs
    no FlashAttention kernel (``resolve``)."""
    return plan_attention(planned, gpu_flash, softcap, sinks) == EAGER


def default_packing(attn: str, model_type: str | None = None) -> bool:
    """Packing by default where it costs nothing and is exact: attentions that take per-sample boundaries, in a
    model without recurrent layers (RECURRENT_MODEL_TYPES: exact only with kernels a node may lack)."""
    return attn in VARLEN_ATTENTION and model_type not in RECURRENT_MODEL_TYPES


def packing_refused(
    model_type: str | None, on_cpu: bool, missing: tuple = (), attention: str | None = None
) -> str | None:
    """Why a packed run of this model would not keep its documents apart, in one line that says what to do; None
    where it would (or may: at plan time, a GPU node's kernels are not known). ``missing``: the distributions of
    BOUNDARY_KERNELS that do not import in this process (``missing_boundary_kernels``); ``attention``: the
    attention that runs, where known."""
    if model_type not in RECURRENT_MODEL_TYPES:
        return None
    kernels = BOUNDARY_KERNELS.get(model_type)
    off = "-o packing=false (its default: rows are padded, not packed)"
    if kernels is None:
        return (
            f"packing is not exact for {model_type}: its linear-attention or state-space layers carry a state along "
            "the row, and transformers hands them no document boundaries (or ftctl has not checked that it does), so "
            f"each packed document would read the ones before it: {off}"
        )
    names = " and ".join(dist for dist, _, _ in kernels)
    if on_cpu:
        return (
            f"packing is not exact for {model_type} on CPU: its linear-attention or state-space layers keep packed "
            f"documents apart only through {names} on a CUDA GPU: {off}"
        )
    if missing:
        return (
            f"packing {model_type} needs {names} on the GPU to keep its documents apart in its linear-attention or "
            f"state-space layers, and {', '.join(missing)} does not import here: pip install {' '.join(missing)} "
            f"on the node, or {off}"
        )
    if model_type in MASK_WITHOUT_POSITIONS and attention is not None and attention not in VARLEN_ATTENTION:
        return (
            f"packing {model_type} under {attention} attention would let its documents attend to each other "
            "(transformers builds its mask without the position ids that mark them); varlen attention keeps them "
            f"apart (flash-attn or torch's varlen_attn, on Ampere or newer): {off}"
        )
    return None


# model_type values of Llama 4 (whole model, text model) and Llama4TextConfig's defaults (transformers 5.25) of the
# two lengths past which ftctl's attention or packing would not compute what the model does (``long_row_limits``)
LLAMA4_TYPES = frozenset({"llama4", "llama4_text"})
LLAMA4_DEFAULTS = {"attention_chunk_size": 8192, "floor_scale": 8192, "attn_temperature_tuning": True}


def long_row_limits(cfg, model_type: str | None = None) -> tuple[int, int]:
    """(chunk, floor) of a Llama 4 config (config.json's dict or a transformers config, whole or text; ``model_type``:
    the whole model's, where ``cfg`` is its text part); (0, 0) for other models (explore47).

    chunk: attention_chunk_size. Its chunked layers attend within chunks of it; the varlen kernels attend to the whole
    document, so they run it exactly for documents of up to ``chunk`` tokens (``chunk_problem``); sdpa and eager
    build the chunked mask. floor: floor_scale, where attn_temperature_tuning is on and some layer is NoPE (no RoPE:
    no_rope_layers' zeros). Those layers scale their queries by log1p(floor((place + 1) / floor)), the place being the
    token's in the row, not its position id: a packed row's later documents are scaled as if they went on from the
    ones before them, from place floor - 1 on, under every attention (``packed_row_problem``)."""
    get = cfg.get if isinstance(cfg, dict) else lambda key, default=None: getattr(cfg, key, default)
    text = get("text_config")
    if text is not None and not isinstance(text, (str, int, float)):
        return long_row_limits(text, model_type or get("model_type"))
    if (model_type or get("model_type")) not in LLAMA4_TYPES and get("model_type") not in LLAMA4_TYPES:
        return 0, 0

    def value(key: str):
        found = get(key)
        return LLAMA4_DEFAULTS[key] if found is None else found

    nope = get("no_rope_layers")
    has_nope = not nope or not all(nope)  # left out: every no_rope_layer_interval-th layer (4) is NoPE
    floor = value("floor_scale") if value("attn_temperature_tuning") and has_nope else 0
    return int(value("attention_chunk_size") or 0), int(floor or 0)


def chunk_problem(chunk: int, attention: str | None, longest: int, where: str = "a row here holds") -> str | None:
    """Why a Llama 4 run under ``attention`` would not compute its chunked layers (``long_row_limits``) for documents
    of up to ``longest`` tokens, and what to do; None where it would."""
    if not chunk or longest <= chunk or (attention or SDPA) not in VARLEN_ATTENTION:
        return None
    return (
        f"Llama 4's chunked attention layers attend within {chunk:,}-token chunks, which the varlen kernels do not, and "
        f"{where} a {longest:,}-token document: -o model_max_length={chunk}, or -o attn_implementation=sdpa "
        "-o packing=false (exact, slower)"
    )


def packed_row_problem(floor: int, row: int, micro: int | None = None) -> str | None:
    """Why a packed row of ``row`` tokens (TRL's padding-free collator makes one row of a micro-batch's ``micro``
    packed sequences) would scale the queries of Llama 4's NoPE layers wrong (``long_row_limits``: from place floor - 1
    on), and what to do; None where it would not (``floor`` 0: no such layer)."""
    if not floor or row < floor:
        return None
    of = f" ({micro} packed sequences of a micro-batch)" if micro and micro > 1 else ""
    return (
        f"Llama 4's NoPE layers scale their queries by a token's place in the row from its token {floor:,} on "
        "(attn_temperature_tuning: floor_scale), not by its position in its document, so a packed row of "
        f"{row:,} tokens{of} scales its later documents wrong: -o packing=false, or packed rows under {floor:,} "
        "tokens (-o model_max_length times -o per_device_train_batch_size)"
    )


def missing_boundary_kernels(model_type: str | None) -> tuple:
    """The distributions of the model type's BOUNDARY_KERNELS whose function does not import here (all of them
    without a CUDA GPU, where transformers runs its torch paths instead)."""
    kernels = BOUNDARY_KERNELS.get(model_type, ())
    import torch

    if not torch.cuda.is_available():
        return tuple(dist for dist, _, _ in kernels)
    missing = []
    for dist, module, function in kernels:
        try:
            found = hasattr(importlib.import_module(module), function)
        except Exception:  # absent, or built for another torch/CUDA: transformers falls back the same way
            found = False
        if not found:
            missing.append(dist)
    return tuple(missing)


def fla_training_problem(model_type: str | None, on_cpu: bool) -> str | None:
    """Why flash-linear-attention would stop this model's training at its first backward, in one line that says
    what to do; None where it would not. fla 0.5 refuses its gated chunk kernels' backward (Gated DeltaNet's
    chunk_bwd_dqkwg) on Hopper GPUs with Triton >= 3.4.0, and 0.6 with Triton >= 3.4.0 and < 3.7.1 (wrong gradients
    there, fla issue #640), unless its TileLang backend runs that kernel: transformers takes fla wherever it imports,
    so the run would stop at its first step, after minutes of Triton autotuning (bench/NOTES.md v104-v106). The facts
    are fla's own (its flags, its backend's can_use), read only where transformers would use fla for this model."""
    if on_cpu or GATED_DELTA not in BOUNDARY_KERNELS.get(model_type, ()):
        return None
    from transformers.utils import is_flash_linear_attention_available

    if not is_flash_linear_attention_available():
        return None
    try:
        import fla
        import fla.utils
        import triton
        from packaging.version import Version

        if Version(fla.__version__).release < (0, 5):  # no such refusal before 0.5 (0.5's dev builds have it)
            return None
        refuses = fla.utils.IS_NVIDIA_HOPPER and fla.utils.TRITON_ABOVE_3_4_0
        refuses &= not getattr(fla.utils, "TRITON_ABOVE_3_7_1", False)  # 0.5 refuses every Triton from 3.4.0
    except Exception:  # an fla that does not import, or says none of this: its own checks, at its first step
        return None
    if not refuses or _fla_tilelang_usable():
        return None
    return (
        f"flash-linear-attention {fla.__version__} cannot train {model_type} on this Hopper GPU with Triton "
        f"{triton.__version__}: it refuses its gated backward kernel there (wrong gradients with Triton >= 3.4.0 and "
        "< 3.7.1, fla issue #640), at the first step, after minutes of kernel tuning. On the node: pip install "
        "tilelang (fla then runs that kernel in TileLang; it needs nvcc), or a torch whose Triton is 3.7.1 or newer "
        "with flash-linear-attention 0.6 or newer, or pip uninstall flash-linear-attention fla-core to train on "
        "transformers' torch path (exact, slower, rows not packed)"
    )


def _fla_tilelang_usable() -> bool:
    """fla's own answer to whether its TileLang backend runs the common chunk kernels here (tilelang imports, nvcc
    for its JIT, FLA_TILELANG not 0): 0.6's CommonTileLangBackend, 0.5's TileLangBackend; else whether it imports."""
    try:
        from fla.ops.common.backends import tilelang as backends

        backend = getattr(backends, "CommonTileLangBackend", None) or backends.TileLangBackend
        return bool(backend.can_use())
    except Exception:
        return importlib.util.find_spec("tilelang") is not None


def packing_supported(attn: str | None) -> bool:
    """Whether packed samples stay apart under this attention (never crossing a sample boundary)."""
    return (attn or SDPA) in VARLEN_ATTENTION | MASKED_ATTENTION


def describe(attn: str, hopper_or_newer: bool = True) -> str:
    """The plan table's words for an attention name (FlashAttention 4 only named where the GPUs run it)."""
    if attn == VARLEN:
        fa4 = "FlashAttention 4 if installed (Hopper, Blackwell), else " if hopper_or_newer else ""
        return f"varlen (exact per-document FlashAttention kernels: {fa4}flash-attn, else torch varlen_attn)"
    return attn


# ------------------------------------------------------------------------------------ run time
@dataclass(frozen=True)
class AttentionShape:
    """What a varlen kernel is compiled for: one model's attention as its layers call it."""

    head_dim: int  # the widest head the kernel takes (head_width: multi-head latent attention's q/k, not head_dim)
    heads: int
    kv_heads: int
    dtype: str  # the torch dtype the kernels take: "bfloat16" or "float16"
    softcap: float | None = None  # attn_logit_softcapping (Gemma 2)
    windows: tuple = (None,)  # the sliding windows its layers pass (None: full causal attention)
    sinks: bool = False  # adds learned sink logits (ATTENTION_SINKS: gpt-oss)

    @classmethod
    def of(cls, cfg, dtype: str) -> AttentionShape | None:
        """The shape of a transformers text config's attention (None where the config does not say it)."""
        heads, head_dim = getattr(cfg, "num_attention_heads", None), head_width(cfg)
        if not heads or not head_dim:
            return None
        window = getattr(cfg, "sliding_window", None)
        types = getattr(cfg, "layer_types", None)  # per layer, as the modeling code reads it (Qwen2, Gemma 2)
        windows = {window if t == "sliding_attention" else None for t in types} if types else {window}
        return cls(
            head_dim=head_dim,
            heads=heads,
            kv_heads=getattr(cfg, "num_key_value_heads", None) or heads,
            dtype=dtype,
            softcap=getattr(cfg, "attn_logit_softcapping", None),
            windows=tuple(sorted(windows, key=lambda w: w or 0)),
            sinks=getattr(cfg, "model_type", None) in ATTENTION_SINKS,
        )


# The probe's packed batch: two documents (the kernel's varlen path), long enough that FlashAttention 4 compiles
# what training runs (it picks other kernels where a whole document fits one tile: max_seqlen x GQA <= its tile).
PROBE_DOCS = (640, 384)


def probe(kernel, shape: AttentionShape, device) -> str | None:
    """None where ``kernel`` (a varlen kernel's adapter: ``_fa4_varlen``, ``_cuda_varlen``...) runs a forward and a
    backward of ``shape`` on ``device``; else what it raised, in one line."""
    import torch

    dtype = getattr(torch, shape.dtype)
    total, longest = sum(PROBE_DOCS), max(PROBE_DOCS)
    cu = torch.tensor([0, *itertools.accumulate(PROBE_DOCS)], dtype=torch.int32, device=device)
    gen = torch.Generator(device=device).manual_seed(0)  # the run's seeded generators stay where set_seed left them
    q, k, v = (
        torch.randn(total, heads, shape.head_dim, dtype=dtype, device=device, generator=gen, requires_grad=True)
        for heads in (shape.heads, shape.kv_heads, shape.kv_heads)
    )
    try:
        for window in shape.windows:
            out = kernel(q, k, v, cu, cu, longest, longest, shape.head_dim**-0.5, window, shape.softcap)
            out.float().sum().backward()
        if q.is_cuda:
            torch.cuda.synchronize(q.device)
    except Exception as e:  # the kernels raise what they like: assertions, ValueError, their DSL's compile errors
        first = (str(e).strip().splitlines() or [""])[0]
        return f"{type(e).__name__}: {first}"[:300]
    return None


@dataclass(frozen=True)
class Kernels:
    attn_implementation: str  # what transformers is given
    attention: str  # in words, for the run's log and metrics.jsonl
    liger: bool  # Liger's RoPE, RMSNorm and SwiGLU kernels applied

    def record(self) -> dict:
        return asdict(self)


def choose(planned: str, *, flash_attn_ok: bool, torch_varlen_ok: bool, fa4_ok: bool = False) -> str:
    """The transformers attention name for a planned one, given what this process can run."""
    if planned == VARLEN and fa4_ok:
        return FA4_VARLEN
    if planned in (VARLEN, FLASH_ATTN):
        if flash_attn_ok:
            return FLASH_ATTN
        if torch_varlen_ok:
            return TORCH_VARLEN
        return SDPA
    return planned


def flash_attn_importable() -> bool:
    """flash-attn 2 (what transformers' flash_attention_2 calls) is installed and imports. flash-attn-4 installs
    only ``flash_attn/cute``, which makes ``flash_attn`` an importable namespace without FlashAttention 2's API."""
    if importlib.util.find_spec("flash_attn") is None:
        return False
    try:
        import flash_attn
    except Exception as e:  # a build for another torch/CUDA fails at import, not at find_spec
        log.warning("flash_attn is installed but does not import (%s): not using it", e)
        return False
    if not hasattr(flash_attn, "flash_attn_varlen_func"):
        log.info(
            "flash_attn here is not FlashAttention 2 (no flash_attn_varlen_func; flash-attn-4 alone?): not using it"
        )
        return False
    return True


FA4_DIST, FA4_CHECKED_FILE = "flash-attn-4", "flash_attn/cute/interface.py"
# FlashAttention 4 keeps its compiled kernels on disk (/tmp/$USER/flash_attention_cute_dsl_cache) unless the user
# set this: a requeued or repeated run on the node loads them, and its probe took 10.4 s instead of 17.7 (8B's
# attention on an H200, eight processes at once without a lock time-out: bench/NOTES.md v36). Read at its import.
FA4_CACHE_ENV = "FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED"


def fa4_installed() -> bool:
    from importlib import metadata

    try:
        return bool(metadata.version(FA4_DIST))
    except metadata.PackageNotFoundError:
        return False


def fa4_files_problem() -> str | None:
    """What is wrong with an installed flash-attn-4's files and how to fix it; None where they are its own (or
    it is not installed). flash-attn 2 (2.8.x) ships an early preview of the same package (``flash_attn.cute``
    0.1.0, no Hopper backward) under the same paths: installed after flash-attn-4 it overwrites FA4's files
    without a word, and ``from flash_attn.cute import flash_attn_varlen_func`` still imports. The file the
    varlen function comes from is checked against the hash flash-attn-4's RECORD holds for it."""
    import base64
    import hashlib
    from importlib import metadata

    try:
        dist = metadata.distribution(FA4_DIST)
    except metadata.PackageNotFoundError:
        return None
    entry = next((f for f in dist.files or () if f.as_posix() == FA4_CHECKED_FILE), None)
    if entry is None or entry.hash is None:
        return None  # nothing recorded to check against
    path = entry.locate()
    data = path.read_bytes() if path.is_file() else b""
    digest = base64.urlsafe_b64encode(hashlib.new(entry.hash.mode, data).digest()).rstrip(b"=").decode()
    if digest == entry.hash.value:
        return None
    return (
        f"{FA4_CHECKED_FILE} is not {FA4_DIST} {dist.version}'s own (flash-attn 2, installed after it, ships an "
        f"older copy of flash_attn/cute): pip install --force-reinstall --no-deps '{FA4_DIST}=={dist.version}'"
    )


def fa4_usable() -> bool:
    """flash-attn-4 is installed with its own files (:func:`fa4_files_problem`; flash-attn 2's preview of
    ``flash_attn.cute`` is not FA4), its varlen function imports (with its CUTLASS DSL), and a Hopper or
    Blackwell GPU is visible."""
    if not fa4_installed():
        return False
    import torch

    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] not in FA4_MAJORS:
        return False
    problem = fa4_files_problem()
    if problem is not None:
        log.warning("not using FlashAttention 4: %s", problem)
        return False
    os.environ.setdefault(FA4_CACHE_ENV, "1")
    try:
        from flash_attn.cute import flash_attn_varlen_func  # noqa: F401
    except Exception as e:  # absent (flash-attn 2 alone), or its DSL not importable here
        log.info("FlashAttention 4 (flash_attn.cute) does not import (%s): not using it", e)
        return False
    return True


def torch_varlen_usable() -> bool:
    """torch ships varlen_attn and a CUDA GPU of compute capability 8.0+ is visible."""
    import torch

    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0):
        return False
    return _varlen_fn() is not None


def liger_usable(model_type: str | None, on_cpu: bool) -> bool:
    return (
        not on_cpu
        and model_type in LIGER_MODEL_TYPES
        and importlib.util.find_spec("liger_kernel") is not None
        and importlib.util.find_spec("triton") is not None
    )


WORDS = {
    FA4_VARLEN: "FlashAttention 4 (flash-attn-4's varlen kernels, compiled before the first step, kept on disk)",
    FLASH_ATTN: "flash_attention_2 (flash-attn package, varlen kernels)",
    TORCH_VARLEN: "torch varlen_attn (FlashAttention varlen kernels in torch)",
    SDPA: "sdpa",
}


def runnable(planned: str, on_cpu: bool, shape: AttentionShape | None = None, gpu: int = 0) -> str:
    """The transformers attention name this process would run for the plan's attention (nothing registered);
    with ``shape``, each kernel is taken only where it runs that shape on GPU ``gpu`` (``probe``)."""

    def takes(name: str, usable) -> bool:
        if not usable():
            return False
        if shape is None or (name == TORCH_VARLEN and shape.softcap):  # resolve() refuses that one, saying the fix
            return True
        problem = probe(KERNELS[name], shape, f"cuda:{gpu}")
        if problem:
            log.warning("%s cannot run this model's attention here (%s): trying the next kernel", WORDS[name], problem)
        return problem is None

    varlen = not on_cpu and planned in (VARLEN, FLASH_ATTN)
    fa4_ok = varlen and planned == VARLEN and takes(FA4_VARLEN, fa4_usable)
    flash_ok = varlen and not fa4_ok and takes(FLASH_ATTN, flash_attn_importable)
    varlen_ok = varlen and not (fa4_ok or flash_ok) and takes(TORCH_VARLEN, torch_varlen_usable)
    return choose(planned, flash_attn_ok=flash_ok, torch_varlen_ok=varlen_ok, fa4_ok=fa4_ok)


def resolve(
    planned: str,
    model_type: str | None,
    on_cpu: bool,
    packed: bool = False,
    shape: AttentionShape | None = None,
    gpu: int = 0,
) -> Kernels:
    """What this process really runs for the plan's attention, registered with transformers (``packed``: every
    batch comes from TRL's padding-free collator, see ``register_varlen``; ``shape``: the model's attention, which
    each kernel must run (``runnable``) and whose soft cap (Gemma 2) torch's varlen kernels and SDPA cannot).
    A packed run of a model with recurrent layers is refused, before the model loads, where they would not keep its
    documents apart (``packing_refused``); a run that flash-linear-attention would stop at its first backward, too
    (``fla_training_problem``)."""
    if packed and model_type in RECURRENT_MODEL_TYPES:
        missing = () if on_cpu else missing_boundary_kernels(model_type)
        if why := packing_refused(model_type, on_cpu, missing):
            raise FtctlError(why)
    if why := fla_training_problem(model_type, on_cpu):
        raise FtctlError(why)
    softcap = shape is not None and bool(shape.softcap)
    name = runnable(planned, on_cpu, shape, gpu)
    if packed and model_type in RECURRENT_MODEL_TYPES:
        if why := packing_refused(model_type, on_cpu, attention=name):
            raise FtctlError(why)
        log.info("packing %s: its recurrent layers take the documents' boundaries (cu_seqlens, seq_idx)", model_type)
    if softcap and name == TORCH_VARLEN:
        raise FtctlError(
            "this model soft-caps its attention logits (attn_logit_softcapping, Gemma 2), which torch's varlen "
            "kernels cannot, and neither FlashAttention 4 nor flash-attn runs it here (where one is installed, a "
            "warning above says why). Install flash-attn (or flash-attn-4 on Hopper/Blackwell: "
            "pip install 'ftctl[fa4]'), or run exact but slower attention with -o attn_implementation=eager "
            "-o packing=false."
        )
    if softcap and name == SDPA:
        log.info("the model soft-caps its attention logits, which sdpa cannot: eager attention")
        name = EAGER
    if shape is not None and shape.sinks and name in VARLEN_ATTENTION | {SDPA}:
        log.info("the model's attention adds sink logits, which %s does not: eager attention", name)
        name = EAGER
    if name in (TORCH_VARLEN, FA4_VARLEN):
        register_varlen(name, masks=not packed)
    elif name == FLASH_ATTN:
        mask_preparation(FLASH_ATTN, not packed)
    words = WORDS.get(name, name)
    if planned in (VARLEN, FLASH_ATTN) and name in (SDPA, EAGER):
        log.warning(
            "attention %s was planned but neither flash-attn nor torch's varlen_attn runs here "
            "(CPU, a GPU older than Ampere, torch < 2.11, or this model's attention: see above): using %s, "
            "exact but slower for packed batches",
            planned,
            name,
        )
    return Kernels(name, words, liger_usable(model_type, on_cpu))


def apply_liger(model) -> None:
    """Liger's RoPE, RMSNorm and SwiGLU kernels on this model instance (before PEFT wraps it). The
    cross-entropy stays the trainer's fused LM head (lm_head.py)."""
    from liger_kernel.transformers import _apply_liger_kernel_to_instance

    _apply_liger_kernel_to_instance(
        model=model, rope=True, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=False
    )


# ------------------------------------------------------------------------------------ torch varlen
def _varlen_fn():
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


def register_varlen(name: str = TORCH_VARLEN, masks: bool = True) -> None:
    """Make ``attn_implementation=name`` (``ftctl_varlen`` or ``ftctl_fa4``) mean :func:`varlen_attention_forward`
    over that name's kernel on CUDA, with transformers' mask preparation (``masks``) or without it (a packed
    run): see ``mask_preparation``."""
    from transformers import AttentionInterface

    AttentionInterface.register(name, functools.partial(varlen_attention_forward, cuda_kernel=KERNELS[name]))
    mask_preparation(name, masks)


def mask_preparation(name: str, on: bool) -> None:
    """Whether transformers prepares attention masks for the varlen attention ``name``: on, its mask function
    is FlashAttention's (None for packed or unpadded batches, the 2D mask otherwise).

    Off (a packed run: TRL's padding-free collator gives every batch its ``cu_seq_lens``, never a 2D mask) no
    mask function is registered for it, so transformers' ``create_causal_mask`` returns None at once, which is
    what FlashAttention's mask function returns for packed batches, and skips the check of the position ids
    for packed sequences (``find_packed_sequence_indices``) that reads a GPU value at every forward: with torch's
    varlen kernels on an H200 the host waited there 22 ms an 8B qlora step for the GPU to drain, and without the
    check the median step fell 1.043 -> 1.010 s (bench/NOTES.md, v15/v16); flash-attn's path (transformers'
    flash_attention_2, which takes the cu_seq_lens as well) runs the same preparation. A batch with padding
    would then reach the attention without its mask: only packed runs turn it off. Registration is process-wide
    (transformers' own table; it has no unregister), so each run sets it."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, flash_attention_mask

    if on:
        ALL_MASK_ATTENTION_FUNCTIONS.register(name, flash_attention_mask)
    else:
        ALL_MASK_ATTENTION_FUNCTIONS._global_mapping.pop(name, None)


def varlen_attention_forward(
    module,
    query,
    key,
    value,
    attention_mask,
    scaling=None,
    dropout=0.0,
    sliding_window=None,
    softcap=None,
    cuda_kernel=None,
    **kwargs,
):
    """transformers attention function over a varlen kernel (``cuda_kernel``, default torch's); causal, per
    document; ``softcap`` (Gemma 2's attn_logit_softcapping): scores become softcap * tanh(scores / softcap).

    query (B, Hq, S, D), key/value (B, Hkv, S, D) -> (B, S, Hq, D). Document boundaries come from
    ``cu_seq_lens_q/k`` + ``max_length_q/k`` (packed batch, B == 1); without them every row is one
    document, its padding (a 2D ``attention_mask``) left out."""
    import torch

    if kwargs.get("s_aux") is not None:
        raise FtctlError(
            "this model's attention adds sink logits (s_aux, as gpt-oss does), which ftctl's varlen attention does "
            "not take: run it with -o attn_implementation=eager -o packing=false."
        )
    if dropout and module is not None and module.training:
        _warn_once(f"attention dropout ({dropout:g}) is not applied by the varlen kernels: training runs without it")
    b, hq, s, d = query.shape
    dv = value.shape[-1]
    if dv < d:  # multi-head latent attention (DeepSeek-V2/V3): v's heads narrower than q/k's, one width a kernel
        value = torch.nn.functional.pad(value, (0, d - dv))  # zero columns in, zero columns out: sliced off below
    cu_q, cu_k = kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k")
    keep = None
    if cu_q is not None:
        max_q, max_k = int(kwargs["max_length_q"]), int(kwargs["max_length_k"])
        cu_k = cu_q if cu_k is None else cu_k
    elif attention_mask is not None and attention_mask.dim() == 2 and not bool(attention_mask.all()):
        lengths = attention_mask.sum(-1, dtype=torch.int32)  # right or left padding: keep the real tokens
        keep = attention_mask.reshape(-1).nonzero().squeeze(-1)
        cu_q = cu_k = torch.nn.functional.pad(lengths.cumsum(0, dtype=torch.int32), (1, 0))
        max_q = max_k = int(lengths.max())
    else:
        cu_q = cu_k = torch.arange(0, (b + 1) * s, s, dtype=torch.int32, device=query.device)
        max_q = max_k = s
    if (why := _llama4_problem(module, s, max_k, packed=kwargs.get("cu_seq_lens_q") is not None)) is not None:
        raise FtctlError(why)
    q, k, v = (t.transpose(1, 2).reshape(b * s, t.shape[1], d) for t in (query, key, value))
    if keep is not None:
        q, k, v = q[keep], k[keep], v[keep]
    # fft trains fp32 weights under autocast: RoPE can hand back fp32 q/k beside bf16 v
    dtype = v.dtype if v.dtype in (torch.float16, torch.bfloat16) else torch.get_autocast_dtype(query.device.type)
    if query.device.type == "cuda":
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
        kernel = cuda_kernel or _cuda_varlen
    else:
        kernel = _reference_varlen
    out = kernel(q, k, v, cu_q.to(q.device), cu_k.to(q.device), max_q, max_k, scaling, sliding_window, softcap)
    if keep is not None:
        full = out.new_zeros(b * s, hq, d)
        full[keep] = out
        out = full
    return out.reshape(b, s, hq, d)[..., :dv], None


def _llama4_problem(module, row: int, longest: int, packed: bool) -> str | None:
    """Where this attention layer of Llama 4 would not compute what the model does, and what to do (None elsewhere):
    a chunked layer given a document longer than attention_chunk_size (``chunk_problem``; transformers refuses
    flash_attention_2 there), a NoPE layer given a packed row of floor_scale tokens or more (``packed_row_problem``).
    Both only past 8192 tokens (explore47); the plan refuses both before the run (plan.py asks the same two)."""
    cfg = getattr(module, "config", None)
    if cfg is None or getattr(cfg, "model_type", None) not in LLAMA4_TYPES:
        return None
    chunk, _ = long_row_limits(cfg)
    types = getattr(cfg, "layer_types", None) or ()
    index = getattr(module, "layer_idx", None)
    if index is not None and index < len(types) and types[index] == "chunked_attention":
        if why := chunk_problem(chunk, VARLEN, longest):
            return why
    floor = getattr(module, "floor_scale", None)
    if packed and getattr(module, "attn_temperature_tuning", False) and not module.use_rope:
        return packed_row_problem(floor or 0, row)
    return None


@functools.cache
def _warn_once(message: str) -> None:
    log.warning(message)


def _cuda_varlen(q, k, v, cu_q, cu_k, max_q, max_k, scale, sliding_window, softcap=None):
    if softcap:  # resolve() never registers this kernel for such a model
        raise FtctlError("torch's varlen kernels cannot soft-cap attention logits (attn_logit_softcapping)")
    fn = _varlen_fn()
    params = _parameters(fn)
    window = (sliding_window - 1, 0) if sliding_window else (-1, 0)  # (-1, 0): causal
    kw = {"scale": scale, "window_size": window}
    if "enable_gqa" in params and q.shape[1] != k.shape[1]:
        kw["enable_gqa"] = True  # torch 2.13; torch 2.11 takes the KV heads as they are
    return fn(q, k, v, cu_q, cu_k, max_q, max_k, **kw)


def _fa4_varlen(q, k, v, cu_q, cu_k, max_q, max_k, scale, sliding_window, softcap=None):
    """FlashAttention 4's varlen function: (total, heads, dim) bf16/fp16, native GQA, int32 boundaries."""
    from flash_attn.cute import flash_attn_varlen_func

    out = flash_attn_varlen_func(
        q,
        k,
        v,
        cu_seqlens_q=cu_q,
        cu_seqlens_k=cu_k,
        max_seqlen_q=max_q,
        max_seqlen_k=max_k,
        softmax_scale=scale,
        causal=True,
        window_size=(sliding_window - 1, 0) if sliding_window else (None, None),
        softcap=softcap or 0.0,
    )
    return out[0] if isinstance(out, tuple) else out  # 4.0.0b36 returns (out, lse)


def _flash_attn_varlen(q, k, v, cu_q, cu_k, max_q, max_k, scale, sliding_window, softcap=None):
    """flash-attn 2's varlen function as transformers' flash_attention_2 calls it for a packed batch (the run
    goes through transformers; ftctl calls it only to probe it)."""
    from flash_attn import flash_attn_varlen_func

    window = (sliding_window - 1, 0) if sliding_window else (-1, -1)
    return flash_attn_varlen_func(
        q, k, v, cu_q, cu_k, max_q, max_k, softmax_scale=scale, causal=True, window_size=window, softcap=softcap or 0.0
    )


@functools.cache
def _parameters(fn) -> frozenset:
    """A function's parameter names, read once (inspect.signature at every layer's call was 1-2 ms of the
    host's time a step of the 8B shape: bench/NOTES.md, v11)."""
    return frozenset(inspect.signature(fn).parameters)


def _reference_varlen(q, k, v, cu_q, cu_k, max_q, max_k, scale, sliding_window, softcap=None):
    """The same function without the kernel (CPU, tests): SDPA per document, causal (soft-capped scores: the
    softmax written out, as transformers' eager attention does)."""
    import torch

    groups = q.shape[1] // k.shape[1]
    outs = []
    bounds = cu_q.tolist()
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        qd, kd, vd = (t[lo:hi].transpose(0, 1) for t in (q, k, v))  # (H, n, D)
        if groups > 1:
            kd, vd = kd.repeat_interleave(groups, 0), vd.repeat_interleave(groups, 0)
        n = hi - lo
        mask = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
        if sliding_window:
            mask &= ~torch.ones(n, n, dtype=torch.bool, device=q.device).tril(-sliding_window)
        if softcap:
            scores = qd @ kd.transpose(-1, -2) * (scale if scale is not None else qd.shape[-1] ** -0.5)
            scores = torch.tanh(scores / softcap) * softcap
            probs = scores.masked_fill(~mask, float("-inf")).softmax(-1, dtype=torch.float32).to(qd.dtype)
            od = probs @ vd
        else:
            od = torch.nn.functional.scaled_dot_product_attention(qd, kd, vd, attn_mask=mask, scale=scale)
        outs.append(od.transpose(0, 1))
    return torch.cat(outs) if outs else q.new_zeros(q.shape)


KERNELS = {FA4_VARLEN: _fa4_varlen, FLASH_ATTN: _flash_attn_varlen, TORCH_VARLEN: _cuda_varlen}  # their adapters
