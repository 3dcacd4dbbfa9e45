"""The planner: method x model size x GPU tier -> precision, attention, strategy, batch, memory, and the checkpoints'
cadence (steps between them, where save_steps is not given: checkpoint_cadence).

Memory model (per GPU, decimal GB), terms named as in the code below:

    weights      bytes of the model's weights held on each GPU, in the dtype weights_dtype() names:
                   fft/sft: 4 B/param (fp32 masters, 16-bit autocast) outside DeepSpeed, 2 B/param under
                   DeepSpeed (which keeps its fp32 masters in the optimizer); qlora: 0.56 B/param (NF4
                   with double quantisation, 4.5 bits, embeddings and head kept in 16 bits); lora: 2 B/param
    grads        per trainable param: 4 B (fp32 masters) or 2 B (DeepSpeed, lora/qlora)
    optimizer    per trainable param: optimizer_state_bytes (AdamW's two moments, fp32 (8 B) or 8-bit (2 B:
                 bitsandbytes' paged 8-bit AdamW, which qlora falls back to when fused AdamW's do not fit); Lion's
                 one, SGD's none), plus 4 B for an fp32 copy the weights term does not hold (DeepSpeed's masters,
                 LoRA's fp32 adapters)
    sharding     ddp/single: all of it on every GPU; zero2: grads + optimizer / world;
                 zero3 and fsdp: weights + grads + optimizer / world; zero2_offload (ZeRO-Offload): weights +
                 grads / world, the optimizer in CPU RAM; zero3_offload: optimizer and weights live in CPU
                 RAM, ~2 layers of weights on the GPU. Both offloads need host memory: offload_host_gb();
                 zero2_offload moves the gradients and weights across PCIe once a step, zero3_offload the
                 weights again in every micro-batch's forward and backward, so it comes last
    activations  per micro-batch sequence of S tokens, hidden H, MLP width I, L layers: A bytes per token
                 and layer counted tensor by tensor in activation_bytes() (varlen attention, Liger kernels,
                 a 16-bit residual stream unless under fp16, LoRA's dropout outputs); A*S*(L+1) without
                 gradient checkpointing (+1: gradients in flight). With it: each layer's saved input (2H a token),
                 less the gradients made by the time it is read (one GPU and FSDP2, whose gradients are freed
                 after each step; under DeepSpeed and DDP's buckets they stay allocated), + ONE recomputed layer's
                 A (or the LM head's chunk, the larger) + the head's gradient of the hidden states (6H a token). On
                 an H200 (bench/NOTES.md from v50; tests/test_plan.py holds each run): 4% under to 8% over what they
                 measured (1B fft's peak is the optimizer step: weights + gradients + Adam; ZeRO-3's step on a
                 partition over DeepSpeed's 1e9-parameter sub-group, 3B, is as large as its buffers: -1%)
                 Outside Liger (a model type it does not patch, on a GPU), transformers' own layers keep more, A +
                 unfused_layer_bytes(): LlamaRMSNorm's fp32 copy of its input (4H where Liger keeps the 16-bit
                 input), and with its weight trained (fft/sft) its normalised output, and the SwiGLU's silu(gate)
                 beside gate, up and their product (+2I). Counted 4H + 2I for lora/qlora, 8H + 2I for fft: v60 on an
                 H200, Llama shapes with and without Liger in one call, measured +43.6 kB a token and layer for 8B
                 lora (counted 45.1) and +43.1 for 1B fft, which the plan takes (13H + 2I; the count is 1.3x short
                 there, unexplained). Not on CPU (fp32: no upcast copies; not measured). K/V wider than a
                 quarter of the heads (multi-head models) adds kv_width_bytes(). sft without checkpointing: A*S
                 for each trained block, + FROZEN_BLOCK_SHARE of it for each frozen block the backward runs through
                 (all, where the head is tied or the config unread), + 1 (v115, H100: tied 1B 1.02x of its peak,
                 untied 1.16x: a frozen block's own weight copies are not counted apart)
    logits       the LM head's loss (fused_head_bytes): chunks of tokens, not the (tokens x vocab) logits
    attention_scores
                 where transformers' eager attention runs (asked for, or a model that soft-caps its attention
                 logits, Gemma 2, where sdpa would: attention.keeps_scores), each head's (S x S) scores are written
                 out: a layer keeps softmax's fp32 output, its 16-bit copy (matmul's input) and the soft cap's tanh
                 output (attention_scores_gb), in every layer without checkpointing, in the one recomputed with
                 it; + the layer's gradients in the backward and the additive (S x S) mask. A packed row (-o
                 packing=true) is one row of micro x S tokens (TRL's padding-free collator): its (row x row) scores,
                 not micro rows' (S x S)
    sdpa_mask    sdpa on a GPU under a mask (attention_mask: an unpacked micro-batch of several rows, whose padding
                 transformers hands it as a (rows, 1, S, S) bool mask; a packed row's (1, 1, row, row) block-diagonal
                 one; one unpadded row gets none, is_causal): torch's memory-efficient kernel takes it, and each
                 layer keeps a 16-bit copy of it for the backward, 2 B a score (rows x row x row a layer); and
                 transformers repeats K/V to every query head (repeat_kv: torch's sdpa takes GQA only without a mask),
                 whose copies the kernel keeps, 2 x 2 x q_width bytes a token and layer where activation_bytes counts
                 K/V at their own width. sdpa_mask_gb. Fitted (bench/NOTES.md v112, 1B lora on an H100, six masked
                 rows against the same tokens unmasked): 2.01 B a score and layer + 6,022 B a token and layer (the
                 count: 2 and 6,144), each row within 0.05 GiB of its peak's rise over the unmasked (+0.6 to +5.5
                 GiB). Under gradient checkpointing one recomputed layer's, + the bool mask (1 B a score) the
                 checkpoints hold: counted, not measured. Not on CPU (its activations' factor is fitted on sdpa runs)
    expert_copies
                 where LoRA adapts a mixture of experts' fused expert weights (all-linear: adapts_experts), PEFT's
                 ParamWrapper folds the adapter into a copy of each layer's expert stack every forward and the
                 backward keeps them all: the experts' weights once more in 16 bits (bench/NOTES.md v57: 19.3 GB
                 of a 10.6B Qwen3-MoE on an H200; with it the plan is within -1%/+3% of the peak). Under gradient
                 checkpointing one layer's, as its forward runs again in the backward (v58: within 1%)
    expert_activations
                 a mixture of experts whose experts run transformers' own forward (grouped_mm: a model type Liger
                 does not patch, or on CPU) rather than Liger's fused experts: each routed copy of a token keeps its
                 gathered input and its experts' output (2H + 2H) and gate_up's output and the gated product
                 (4I' + 2I', I' one expert's width), top-k copies a token, in every MoE layer; one layer's under
                 gradient checkpointing. Liger's experts keep none of it beyond what the activations term counts
                 (v57: within 1%). v59, Qwen3-MoE's shape without Liger on an H200: 93.35 GB against 94.72 planned
                 (27.3 GB more than Liger's peak; with the norms' term above), checkpointed 32.39 against 31.99
    accumulated_grads
                 with gradient accumulation only (accumulation_steps() > 1): the gradients of the micro-
                 batches so far stay alive through the next one's activations, so the grads term counts
                 again (sharded as grads is). Without accumulation they appear as the backward frees the
                 activations, a peak the terms above are calibrated to (1B fft on an H200: 8 x 1 within 2%
                 of them; 8 x 2 peaked 4.6 GiB higher, the size of the model's fp32 gradients; with
                 checkpointing 4.3 GB higher, v51). Not under zero3 (its gradient partitions are one buffer
                 allocated at the start, in the peak either way) nor the offloads (gradients in CPU RAM).
                 fsdp on one GPU neither (FSDP2 at 8 x 2 peaked 37.2 GiB, 7.6 under a plan that counted them:
                 its gradients accumulate in the one set it keeps); on several, what it keeps between the
                 micro-batches of a step (no reduce-scatter until the last) is the unsharded gradients in the
                 compute dtype, 2 B/param under bf16 (1B fft on two H200s, 8 x 4 per GPU: 30.56 GiB against
                 28.26 at 8 x 1, +2.30 = 2 x 1.24e9 B)
    ddp_buckets  DDP on several processes only: its reducer's flat buckets, a copy of every gradient for
                 the all-reduce that lives from the wrap to the end (1B fft on two H200s at 8 x 1: 40.5 GiB per
                 GPU against 35.9 on one GPU). The gradients themselves are views into them (sft_trainer.py),
                 which saves the copies each step but not this term: the peak comes before the backward has
                 made any gradient, while the activations are all alive
    zero3_buffers
                 zero3 / zero3_offload: DeepSpeed's own buffers at its default sizes (distributed.py keeps
                 them): the reduce bucket, twice with overlap_comm, the prefetch bucket and the gathered
                 parameters alive at once, 16-bit (1B fft on H200s, 8 x 2,048 per GPU: ZeRO-3 on one GPU
                 peaked 39.9 GiB against 39.7 planned, on two 32.6 against 30.5, with offload 23.4 against
                 21.9)
    fsdp_gathered
                 fsdp: the blocks FSDP2 has all-gathered at once, the one computing and the next one
                 prefetched, in 16 bits (what lets a model whose weights fit no single GPU train sharded)
    dora         use_dora (PEFT's DoRA layers, their own forward): each adapted projection keeps its base output and
                 its adapters' output for the backward, 2 x 2 x (q H + k, v H/4 + o H + gate, up I + down H) = 14H
                 + 8I bytes a token and layer beyond LoRA's. Under qlora more still, fitted to what was measured
                 (where it goes not read): 2.9 B/param without checkpointing (dora_qlora; v48, 2 x 2,048), 120H a
                 token with it (in activations; v52, 4 and 8 x 2,048). 8B on an H200: without checkpointing lora
                 peaked at 68.6 GB against 69.4 so counted, qlora at 81.6 against 82.2; with it (v52) lora 4%
                 under at 8 x 2,048 and 2% under at 4, qlora within 1%
    deepspeed_step
                 zero2: DeepSpeed's optimizer step makes fp32 gradients of the 16-bit partition, 5 B/param of it
                 (4 + ~1 measured), while no activation is alive: counted where it is more than the activations'
                 terms (1B fft under ZeRO-2 on one H200, 8 x 2,048 with checkpointing: 27.3 GB, v52). ZeRO-3 does
                 the same a sub-group (1e9 parameters) at a time: not measured, not counted
    overhead     1.5 GB: CUDA context, allocator fragmentation, NCCL buffers
    on CPU       (fp32, no Liger, torch's CPU kernels) the activations and logits as counted for a GPU in 32 bits,
                 times CPU_ACTIVATION_FACTOR: measured on this project's 2-core machine, the process's peak RSS for
                 one step of SmolLM2-135M's shape at 2,048-token rows (torch 2.13, sdpa) was 1.2-1.8x the plan at
                 micro-batch 1 and 1.75-2.2x at 2 (fft 7.2 and 14.2 GB, lora 10.1 and 20.0 GB); lora at 4, planned
                 at 15.3 GB, was killed at the machine's 24 GB. Not understood term by term (a bare forward and
                 backward of the same shape keeps 2-3 GB a sequence less than the trainer): fitted on those four
                 runs, each planned 0-33% over its peak (tests/test_plan.py holds them). A sequence's activations
                 are GBs there (10 a 2,048-token row of that 135M lora) and a larger micro-batch buys no speed: 4
                 layers of its shape, fft, one thread, CPU time a token: 2 x 2,048 and 1 x 2,048 within 1%; 8 x 256
                 9% faster than 1 x 256. A CPU plan takes the leanest micro-batch of at least CPU_MICRO_TOKENS tokens
                 (a smaller one where that does not fit), which is also what a Slurm or SkyPilot CPU node is asked for
                 (--mem, memory:) where host_memory_gb does not bound it: the largest, 4, asked 93 GB for 1B lora

A plan fits when the total is at most 92% of the card's memory. The numbers are estimates: issue
"GPU performance" holds them against measured peaks (bench/).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ftctl import gpus as gpu_table
from ftctl import storage
from ftctl.errors import FtctlError
from ftctl.spec import (
    FIELDS,
    LORA_KEYS,
    LORA_LEAST_LR,
    METHOD_LEARNING_RATE,
    METHOD_STRATEGIES,
    PEFT_TARGETS,
    SAVE_STEPS,
    RunSpec,
    lora_target_names,
    parse_size,
    trl_completion_only,
)
from ftctl.trainer.attention import (
    ATTENTION_SINKS,
    EAGER,
    FA4_MAJORS,
    LIGER_MODEL_TYPES,
    RECURRENT_MODEL_TYPES,
    SDPA,
    chunk_problem,
    default_packing,
    describe,
    head_width,
    keeps_scores,
    long_row_limits,
    packed_row_problem,
    packing_refused,
    plan_attention,
)

OFFLOADED_OPTIMIZER = "DeepSpeed's CPU AdamW, fp32"  # what runs under an offload strategy (trainer.distributed)
UNFUSED_ADAPTERS_H = 4  # activations outside Liger, a token and layer: lora/qlora's norms (module docstring)
UNFUSED_WEIGHTS_H = 13  # fft/sft's (the norms' weights train), fitted: the count says 8
HEADROOM = 0.92
SDPA_MASK_BYTES = 2  # sdpa under a mask: each layer's 16-bit copy of it, a score (module docstring: sdpa_mask)
SDPA_ONE_ROW_TOKENS = 8192  # unpacked sdpa at rows this long: one row a micro-batch first (_micro_choices)
# DeepSpeed's defaults for ZeRO-3 (elements), which ftctl's config leaves as they are (distributed.py)
ZERO3_REDUCE_BUCKET, ZERO3_PREFETCH_BUCKET, ZERO3_MAX_LIVE = 5e8, 5e7, 1e9
OVERHEAD_GB = 1.5
CPU_ACTIVATION_FACTOR = 2.7  # the module docstring: on CPU
# model types whose activations overflow fp16, trained in bf16 (Gemma 2 and 3; Unsloth's report of infinities on
# T4, V100 and RTX 20xx cards): a plan in fp16 says so
FP16_OVERFLOWS = ("gemma2", "gemma3", "gemma3_text")
CPU_MAX_PARAMS_B = 2.0  # larger models are refused on CPU: days a step
CPU_MICRO_TOKENS = 2048  # a CPU plan's micro-batch: the leanest of at least this many tokens (_cpu_micro_batch)


@dataclass(frozen=True)
class ModelShape:
    params_b: float  # billions
    hidden: int
    layers: int
    vocab: int
    source: str  # where the numbers came from
    intermediate: int = 0  # MLP width a token passes through (an MoE's: its active experts'); 0: 4 * hidden
    kv_dim: int = 0  # the k and v projections' width (key-value heads x head dim); 0: hidden (no GQA)
    context: int = 0  # max_position_embeddings of its config; 0: not read
    experts: int = 0  # an MoE's routed experts, of all its layers together; 0: dense (see _shape_from_config)
    expert_mlp: int = 0  # one routed expert's MLP width
    top_k: int = 0  # experts a token is routed to in an MoE layer
    moe_layers: int = 0  # layers with routed experts
    model_type: str = ""  # its config's (a multimodal model's own, not its text model's): which kernels run on it
    heads: int = 0  # attention (query) heads; 0: not read, hidden / 128 (Llama's head width)
    attn_softcap: bool = False  # soft-caps its attention logits (attn_logit_softcapping: Gemma 2)
    attn_sinks: bool = False  # adds learned sink logits to its attention (attention.ATTENTION_SINKS: gpt-oss)
    quantized: str = ""  # how its weights are stored, where quantized (stored_quantization): "bitsandbytes 4-bit"
    q_dim: int = 0  # the q projection's width, o_proj's input (heads x head width: Gemma 3 4B 2048 of 2560); 0: hidden
    attn_chunk: int = 0  # the longest document varlen attention runs exactly (Llama 4: attention.long_row_limits)
    row_floor: int = 0  # a packed row is exact under this many tokens (Llama 4's NoPE floor_scale; 0: any)
    window: int = 0  # the tokens a sliding-window layer attends to (sliding_window: Mistral, Gemma 2/3); 0: none
    window_layers: int = 0  # layers that attend within that window (attention_layers)
    linear_layers: int = 0  # linear-attention or state-space layers (Qwen3-Next's Gated DeltaNet): no (S x S) scores
    tied: bool | None = (
        None  # its head is its input embedding (tie_word_embeddings), where its config was read; None: not
    )

    @property
    def mlp(self) -> int:
        return self.intermediate or 4 * self.hidden

    @property
    def q_width(self) -> int:
        return self.q_dim or self.hidden

    @property
    def attention_heads(self) -> int:
        return self.heads or max(1, self.hidden // 128)

    @property
    def expert_params_b(self) -> float:
        """The routed experts' weights (gate, up and down of each), billions."""
        return 3 * self.experts * self.hidden * self.expert_mlp / 1e9

    @property
    def active_params_b(self) -> float:
        """The weights a token passes through, billions: an MoE's top_k routed experts a layer, not all of them (the
        FLOPs' count; its memory holds every expert). params_b for a dense model."""
        return (
            self.params_b
            - self.expert_params_b
            + 3 * self.moe_layers * self.top_k * self.hidden * self.expert_mlp / 1e9
        )

    def projections(self) -> dict[str, tuple[int, int]]:
        """(in, out) of a decoder layer's linear projections, by their usual (Llama's) names. q and o are heads x head
        width (q_dim), which is not hidden in Gemma 2/3 and Qwen3 (Qwen3-4B: 32 x 128 = 4096 of 2560); multi-head
        latent attention's o_proj takes v_head_dim a head, narrower than its queries' (counted at their width)."""
        h, i, q, kv = self.hidden, self.mlp, self.q_width, self.kv_dim or self.hidden
        return {
            "q_proj": (h, q),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (q, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }


# Shapes of common models, for ids whose config.json is not on this machine (kv_dim: GQA's k/v width; none: MHA).
_GEMMA2 = dict(model_type="gemma2", attn_softcap=True, window=4096)  # every other layer within 4,096 tokens
_QWEN3 = dict(model_type="qwen3", tied=True)  # 0.6B-4B tie their head to the embedding
KNOWN_MODELS = {
    "huggingfacetb/smollm2-135m-instruct": ModelShape(
        0.135, 576, 30, 49152, "known id", 1536, 192, context=8192, heads=9
    ),
    "huggingfacetb/smollm2-1.7b-instruct": ModelShape(1.71, 2048, 24, 49152, "known id", 8192, context=8192, heads=32),
    "lmsys/vicuna-7b-v1.5": ModelShape(6.74, 4096, 32, 32000, "known id", 11008, 4096, context=4096),
    "lmsys/vicuna-13b-v1.5": ModelShape(13.0, 5120, 40, 32000, "known id", 13824, 5120, context=4096),
    "meta-llama/llama-2-7b-hf": ModelShape(6.74, 4096, 32, 32000, "known id", 11008, 4096, context=4096),
    "meta-llama/llama-2-13b-hf": ModelShape(13.0, 5120, 40, 32000, "known id", 13824, 5120, context=4096),
    "meta-llama/llama-2-70b-hf": ModelShape(69.0, 8192, 80, 32000, "known id", 28672, 1024, context=4096),
    "meta-llama/llama-3.2-1b": ModelShape(1.24, 2048, 16, 128256, "known id", 8192, 512, context=131072, heads=32),
    "meta-llama/llama-3.2-3b": ModelShape(3.21, 3072, 28, 128256, "known id", 8192, 1024, context=131072),
    "meta-llama/llama-3.1-8b": ModelShape(8.03, 4096, 32, 128256, "known id", 14336, 1024, context=131072),
    "meta-llama/llama-3.1-70b": ModelShape(70.6, 8192, 80, 128256, "known id", 28672, 1024, context=131072),
    "meta-llama/llama-3.3-70b-instruct": ModelShape(70.6, 8192, 80, 128256, "known id", 28672, 1024, context=131072),
    "mistralai/mistral-7b-v0.3": ModelShape(
        7.25, 4096, 32, 32768, "known id", 14336, 1024, 32768, model_type="mistral", tied=False
    ),
    "mistralai/mistral-7b-v0.1": ModelShape(
        7.24, 4096, 32, 32000, "known id", 14336, 1024, context=32768, window=4096, window_layers=32
    ),
    "qwen/qwen2.5-0.5b": ModelShape(0.49, 896, 24, 151936, "known id", 4864, 128, context=32768, heads=14),
    "qwen/qwen2.5-7b": ModelShape(7.62, 3584, 28, 152064, "known id", 18944, 512, context=32768),
    "qwen/qwen2.5-72b": ModelShape(72.7, 8192, 80, 152064, "known id", 29568, 1024, context=32768),
    # Qwen3 (head width 128 at every size: q_dim is not hidden below 14B), as their config.json files read
    "qwen/qwen3-0.6b": ModelShape(
        0.596, 1024, 28, 151936, "known id", 3072, 1024, 40960, **_QWEN3, heads=16, q_dim=2048
    ),
    "qwen/qwen3-1.7b": ModelShape(
        1.72, 2048, 28, 151936, "known id", 6144, 1024, 40960, **_QWEN3, heads=16, q_dim=2048
    ),
    "qwen/qwen3-4b": ModelShape(4.02, 2560, 36, 151936, "known id", 9728, 1024, 40960, **_QWEN3, heads=32, q_dim=4096),
    "qwen/qwen3-8b": ModelShape(8.19, 4096, 36, 151936, "known id", 12288, 1024, 40960, model_type="qwen3", tied=False),
    "qwen/qwen3-14b": ModelShape(
        14.77, 5120, 40, 151936, "known id", 17408, 1024, 40960, model_type="qwen3", tied=False
    ),
    "qwen/qwen3-32b": ModelShape(
        32.76, 5120, 64, 151936, "known id", 25600, 1024, 40960, model_type="qwen3", heads=64, q_dim=8192, tied=False
    ),
    "qwen/qwen3-30b-a3b": ModelShape(  # 128 experts of 768 a layer, 8 a token: 3.35B active
        30.53, 2048, 48, 151936, "known id", 6144, 512, 40960, 6144, 768, 8, 48, "qwen3_moe", 32, q_dim=4096, tied=False
    ),
    "google/gemma-2-2b": ModelShape(
        2.61, 2304, 26, 256000, "known id", 9216, 1024, 8192, **_GEMMA2, heads=8, q_dim=2048, window_layers=13
    ),
    "google/gemma-2-9b": ModelShape(
        9.24, 3584, 42, 256000, "known id", 14336, 2048, 8192, **_GEMMA2, heads=16, q_dim=4096, window_layers=21
    ),
    "google/gemma-2-27b": ModelShape(
        27.2, 4608, 46, 256000, "known id", 36864, 2048, 8192, **_GEMMA2, heads=32, q_dim=4096, window_layers=23
    ),
}
# Mistral names its tuned models with the suffix inside (Mistral-7B-Instruct-v0.3): the same shapes
KNOWN_MODELS |= {
    f"mistralai/mistral-7b-instruct-{v}": KNOWN_MODELS[f"mistralai/mistral-7b-{v}"] for v in ("v0.1", "v0.3")
}


def _loss(spec: RunSpec) -> str:
    """The plan's loss row (the data unread: what the setting does to each kind of row), without a TRL difference
    where completion_only_loss: false was given (spec.trl_completion_only)."""
    from ftctl.trainer.data import loss_on

    return loss_on(not spec.assistant_only_loss, trl_completion_only=trl_completion_only(spec))


def _schedule(spec: RunSpec) -> str:
    """'cosine after 3% warmup', 'linear after 100 warmup steps', 'constant, no warmup': the rate's schedule."""
    w = spec.warmup
    warmup = "no warmup" if not w else f"{w:.0%} warmup" if w < 1 else f"{int(w)} warmup step{'s' * (int(w) != 1)}"
    return f"{spec.lr_scheduler_type}, {warmup}" if not w else f"{spec.lr_scheduler_type} after {warmup}"


def _count(billions: float) -> str:
    """A parameter count as people say it, to three figures: 8.03B, 46.7B (not 46.7025B), 1B (0.9998B), 41.9M."""
    for scale, unit in ((1, "B"), (1e-3, "M"), (1e-6, "K")):
        if float(f"{billions / scale:.3g}") >= 1:
            return f"{float(f'{billions / scale:.3g}'):g}{unit}"
    return f"{billions * 1e9:.0f}"


def _base_id(model: str) -> str:
    """A hub id without the suffixes of its variants (hub.VARIANT_SUFFIXES), which keep the base's shape
    (Llama-3.1-8B-Instruct, Llama-2-7b-chat-hf, gemma-2-9b-it, Qwen3-8B-Base), lower-cased: the key of the known
    shapes."""
    from ftctl.hub import VARIANT_SUFFIXES

    ends = "|".join(re.escape(s) for s in VARIANT_SUFFIXES)
    return re.sub(f"({ends})+$", "", model.lower().rstrip("/"))


_KNOWN = {_base_id(k): v for k, v in KNOWN_MODELS.items()}


@dataclass
class Plan:
    method: str
    gpus: str  # normalised --gpus
    tier: str | None  # None on CPU
    gpu_memory_gb: float | None  # what a GPU holds as PyTorch reports it (gpus.GpuTier.capacity_gb); None on CPU
    nodes: int
    gpus_per_node: int
    world_size: int
    model: ModelShape
    precision: str  # bf16 | fp16 | fp32
    attn_implementation: str
    strategy: str
    per_device_train_batch_size: int
    gradient_accumulation_steps: int
    global_batch_size: int
    gradient_checkpointing: bool
    packing: bool
    optim: str
    learning_rate: float
    trainable_params_b: float
    memory_gb: float  # estimated peak per GPU (or per process on CPU)
    memory: dict = field(default_factory=dict)  # the terms
    weights_dtype: str = "fp32"  # what the trainer loads the weights in (see weights_dtype())
    lora_kernels: bool = False  # see lora_kernels()
    asked_method: str | None = None  # the method asked for, where the local backend fell back to qlora
    host_memory_gb: float | None = None  # CPU RAM per node the plan needs (offload)
    evaluation: str | None = None  # the held-out loss: on what, how often; None: not evaluated
    data_mix: str | None = None  # several datasets mixed by data_weights; None: each read once
    step_s: float | None = None  # seconds an optimizer step takes, predicted (step_seconds); None: not (CPU)
    save_steps: int | None = None  # steps between checkpoints (checkpoint_cadence); None: saves_per_epoch's
    notes: list[str] = field(default_factory=list)

    @property
    def final_bytes_per_param(self) -> int:
        """Bytes a parameter of the final model takes (final_dtype's), for the disk it needs."""
        return DTYPE_BYTES[final_dtype(self.method, self.precision)]

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def optimizer_run(self) -> str:
        """The optimizer as it runs: DeepSpeed's CPU Adam where offloaded; on CPU a paged one (bitsandbytes') unpaged,
        which bitsandbytes does there ("Paged optimizers are not supported on CPU. Falling back to non-paged")."""
        if self.strategy in OFFLOAD_STRATEGIES:
            return OFFLOADED_OPTIMIZER
        if self.tier is None and self.optim.startswith("paged_"):
            return f"{self.optim.removeprefix('paged_')} (optim={self.optim}: bitsandbytes pages on GPUs only)"
        return self.optim

    def table(self, spec: RunSpec | None = None) -> str:
        """The plan as rows for a terminal; with the run's ``spec``, its model named in its row, its model_max_length in
        the batch row, its schedule in the optimizer row, the tokens its loss is on, and the lora kernels as its
        lora_dropout runs them."""
        model, max_length = (spec.model_name_or_path, spec.model_max_length) if spec else (None, None)
        if spec and spec.model_revision:  # the commit launch records (spec.pinned), or the revision asked for
            model = f"{model}@{spec.model_revision}"
        source = self.model.source  # its config.json: said once where the model's path is named already
        if model and source == str(Path(model, "config.json")):
            source = "its config.json"
        hopper = self.tier is not None and gpu_table.TIERS[self.tier].compute_capability[0] in FA4_MAJORS
        rows = [
            (
                "method",
                self.method
                + (f"  (not {self.asked_method}: it does not fit here, see the note)" if self.asked_method else ""),
            ),
            *([("lora", lora_row(spec))] if spec and self.method in ("lora", "qlora") else []),
            ("gpus", f"{self.gpus}  ({self.world_size} process{'es' if self.world_size > 1 else ''})"),
            (
                "model",
                (f"{model}: " if model else "")
                + f"{_count(self.model.params_b)} params ({source}), {_count(self.trainable_params_b)} trainable",
            ),
            ("precision", self.precision),
            ("attention", describe(self.attn_implementation, hopper) + (" + packing" if self.packing else "")),
            ("strategy", self.strategy),
            (
                "batch",
                f"{self.per_device_train_batch_size} per device x {self.gradient_accumulation_steps} "
                f"accumulation x {self.world_size} = {self.global_batch_size} sequence{'s' * (self.global_batch_size != 1)}"
                + (f" of {'' if self.packing else 'up to '}{max_length:,} tokens" if max_length else ""),
            ),
            ("gradient ckpt", "on" if self.gradient_checkpointing else "off"),
            (
                "optimizer",
                f"{self.optimizer_run}, lr {self.learning_rate:g}" + (f", {_schedule(spec)}" if spec else ""),
            ),
            *([("loss", _loss(spec))] if spec else []),  # the data unread: the setting's
            *([("data mix", self.data_mix)] if self.data_mix else []),
            *([("evaluation", self.evaluation)] if self.evaluation else []),
            (
                "memory/device",
                f"{self.memory_gb:.1f} GB est."
                + (f" of {self.gpu_memory_gb:.1f} GB" if self.gpu_memory_gb else "")
                + "  ("
                + ", ".join(f"{k} {v:.1f}" for k, v in self.memory.items())
                + ")",
            ),
        ]
        if self.host_memory_gb:
            rows.append(("host memory", f"{self.host_memory_gb:.0f} GB per node for offload"))
        if spec and (self.save_steps or spec.saves_per_epoch):
            rows.append(("checkpoints", checkpoint_row(spec, self)))
        if self.lora_kernels:
            rows.insert(
                -1,
                (
                    "lora kernels",
                    "B's sum in place (lora_dropout 0: no dropout to fuse)"
                    if spec and spec.lora_dropout == 0
                    else "dropout + A in one kernel pair (no dropped copy kept), B's sum in place, one autograd node a "
                    "projection",
                ),
            )
        if spec and self.step_s:  # before the checkpoints row, which counts in steps of it
            at = next((n for n, (k, _) in enumerate(rows) if k == "checkpoints"), len(rows))
            rows.insert(at, ("step time", step_row(spec, self)))
        if spec and (disk := disk_row(spec, self)):
            rows.append(("disk", disk))
        out = "\n".join(f"{k:<14} {v}" for k, v in rows)
        if self.notes:
            out += "\n" + "\n".join(f"note: {n}" for n in self.notes)
        return out


def lora_row(spec: RunSpec) -> str:
    """The plan's lora row: rank, alpha, dropout (the model card's LoRA row) and the modules adapted."""
    from ftctl.trainer.model_card import lora_settings

    targets = spec.lora_target_modules
    adapts = f"{PEFT_TARGETS}, PEFT's for the model's type (a note names them)" if targets == PEFT_TARGETS else targets
    return f"{lora_settings({k: getattr(spec, k) for k in LORA_KEYS})}; adapts {adapts}"


class PlanError(FtctlError):
    pass


class DoesNotFit(PlanError):
    """No plan of the method fits the GPUs (a local run falls back to qlora); other PlanErrors are the settings'."""


# ------------------------------------------------------------------------------------------ shape
def model_shape(model: str, model_params: str | None = None, revision: str | None = None) -> ModelShape:
    """Model size from --model-params, its config.json (a local directory), a known id (or a tuned variant of
    one), else its config.json on the Hub (ftctl.hub) at ``revision`` (model_revision; None: main)."""
    if model_params:
        n = parse_size(model_params)
        # Llama-like aspect (hidden = 128 * layers): params ~ 12 * L * H^2
        hidden = int(round((n * 1e9 * 128 / 12) ** (1 / 3) / 64) * 64) or 64
        layers = max(1, round(hidden / 128))
        return ModelShape(n, hidden, layers, 32000, "--model-params")
    cfg_path = Path(model) / "config.json"
    if cfg_path.is_file():
        return _shape_from_config(read_config(cfg_path), f"{cfg_path}")
    if known := _KNOWN.get(_base_id(model)):
        return known
    from ftctl import hub, storage

    if not hub.HUB_ID.match(model) or Path(model).exists() or storage.looks_like_path(model):
        from ftctl.preflight import ERROR, check_model

        for problem in (f for f in check_model(model) if f.level == ERROR):  # what is wrong with it, in its words
            raise FtctlError(problem.text)
        raise FtctlError(
            f"Cannot tell the size of model {model!r}: it is not a model directory with a config.json, nor a hub "
            f"id (org/name). Pass a model directory, or its size, e.g. --model-params 7b."
        )
    try:
        return _shape_from_config(hub.model_config(model, revision or hub.MAIN), f"{model} on the Hub")
    except hub.HubError as e:
        if e.kind == "unreachable" and revision not in (None, hub.MAIN):  # the revision is what this cache lacks (its
            # text says what it has), which the launch's pin refuses too: a size would not do, unless a whole commit
            import shlex

            size = ", or pass its size, e.g. --model-params 7b" if hub.COMMIT.match(revision) else ""
            raise FtctlError(
                f"Cannot tell the size of model {model!r} at {revision!r}: {e}: download it where the Hub answers (hf "
                f"download {shlex.quote(model)} --revision {shlex.quote(revision)}), or give a revision the cache has"
                f"{size}."
            ) from None
        # a known id mistyped? (offline too: the known ids are here), its -Instruct kept (hub.nearest_id)
        near = hub.nearest_id(model, KNOWN_MODELS) if e.kind in ("missing", "unreachable") else None
        meant = f" Did you mean {near!r}?" if near else ""
        known = ""
        if e.kind == "unreachable":  # offline (a login node, an air-gapped cluster): what plans without the Hub
            known = f" The ids sized without it (and their -Instruct, -chat, -it variants): {', '.join(sorted(KNOWN_MODELS))}."
        # a cache this user cannot read: its size would not load the model either (hub.unreadable_cache says the fix)
        size = "" if e.kind == "cache" else " Or pass its size, e.g. --model-params 7b."
        raise FtctlError(f"Cannot tell the size of model {model!r}: {e}.{meant}{size}{known}") from None


def read_config(path: Path) -> dict:
    """A model's config.json, or one line saying what is wrong with it (an interrupted download, a hand edit)."""
    fix = "re-download the model or fix the file, or pass its size, e.g. --model-params 7b."
    try:
        cfg = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FtctlError(f"{path} is not valid JSON ({e}): {fix}") from None
    if not isinstance(cfg, dict):
        raise FtctlError(f"{path} holds a JSON {type(cfg).__name__}, not a model's config (an object): {fix}")
    return cfg


def stored_quantization(cfg: dict) -> str:
    """How a config.json says its weights are stored, where quantized (a Hub *-bnb-4bit, GPTQ or AWQ model):
    "bitsandbytes 4-bit", "gptq" ...; "" for 16/32-bit weights."""
    q = cfg.get("quantization_config")
    if not isinstance(q, dict):
        return ""
    bits = " 4-bit" if q.get("load_in_4bit") else " 8-bit" if q.get("load_in_8bit") else ""
    return f"{q.get('quant_method') or 'quantized'}{bits}"


# stored quantizations the trainer loads dequantized to 16 bits (trainer.model.quantization_config): gpt-oss's MXFP4
# experts, whose kernels run no backward (transformers' quantizer says is_trainable False) and which OpenAI's
# fine-tuning cookbook loads with Mxfp4Config(dequantize=True). Planned and trained as the 16-bit model they become.
DEQUANTIZED_ON_LOAD = frozenset({"mxfp4"})


def qlora_refused(model: str, quantized: str) -> str:
    """Why qlora of a checkpoint stored in ``quantized`` (DEQUANTIZED_ON_LOAD) does not run, and what to run: ""
    where it does. transformers loads one quantization a checkpoint: its own, or dequantized, never bitsandbytes'."""
    if quantized not in DEQUANTIZED_ON_LOAD:
        return ""
    return (
        f"qlora of {model} does not run: it is stored in {quantized.upper()}, which transformers loads as stored or "
        "dequantized to bf16, never as bitsandbytes 4-bit. Use --method lora (ftctl loads it dequantized to bf16), "
        "or qlora of a bf16 copy of it."
    )


def _size(cfg: dict, source: str, *keys: str, default: int = 0) -> int:
    """The first of ``keys`` that ``cfg`` sets (null is unset, as transformers reads it), a positive whole number."""
    for key in keys:
        value = cfg.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise FtctlError(
                f"{source}: {key} is {value!r}, not a positive whole number: fix it, or pass the model's size, "
                f"e.g. --model-params 7b."
            )
        return value
    return default


def _shape_from_config(cfg: dict, source: str) -> ModelShape:
    """A model's shape from its config.json. Counted: attention (GQA, or DeepSeek's multi-head latent attention:
    kv_lora_rank, q_lora_rank), a gated MLP per layer, embeddings (twice untied); norms and biases left out.

    Mixture-of-experts models (Mixtral, Qwen2/3-MoE, DeepSeek-V2/V3): an MoE layer holds the routed experts
    (num_local_experts, num_experts or n_routed_experts) of width moe_intermediate_size (else intermediate_size),
    their router, and shared experts (shared_expert_intermediate_size, or n_shared_experts x the expert width); the
    other layers are dense at intermediate_size (DeepSeek's first first_k_dense_replace layers, Qwen's
    mlp_only_layers and those off its decoder_sparse_step). Within 0.1% of the weights transformers 5.24 builds
    for Qwen3-30B-A3B (30.5B), DeepSeek-V2-Lite (15.7B), Mixtral-8x7B (46.7B) and Qwen1.5-MoE-A2.7B (14.3B).
    A token passes through num_experts_per_tok experts and the shared ones: that width is ``intermediate``, what
    the activations are counted for. In transformers 5 the experts are fused 3D parameters, not nn.Linear:
    bitsandbytes leaves them 16-bit under qlora (memory_terms), and all-linear adapts them as gate_up at rank 2r
    and down at r beside the attention's projections, r x (3H + 5I) an expert (_trainable_b; methods.expert_weights;
    Qwen2-MoE's shared expert, counted here, PEFT leaves out: 3% over)."""
    kind = cfg.get("model_type") or ""  # a multimodal model's own (Liger's patch is chosen by it: liger_layers)
    quantized = stored_quantization(cfg)
    cfg = _filled(cfg)
    cfg = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else cfg
    h = _size(cfg, source, "hidden_size", "n_embd", "d_model")
    layers = _size(cfg, source, "num_hidden_layers", "n_layer", "num_layers")
    vocab = _size(cfg, source, "vocab_size", default=32000)
    if not h or not layers:
        raise FtctlError(f"{source} has no hidden_size/num_hidden_layers: pass --model-params 7b.")
    heads = _size(cfg, source, "num_attention_heads", default=max(1, h // 64))
    kv = _size(cfg, source, "num_key_value_heads", default=heads)  # null in Phi-2's: multi-head
    head_dim = _size(cfg, source, "head_dim", default=h // heads)
    inter = _size(cfg, source, "intermediate_size", default=4 * h)
    attn = h * head_dim * heads * 2 + h * head_dim * kv * 2
    if rank := cfg.get("kv_lora_rank"):  # DeepSeek's latent attention
        nope, rope, v = cfg.get("qk_nope_head_dim", 0), cfg.get("qk_rope_head_dim", 0), cfg.get("v_head_dim", 0)
        q_rank = cfg.get("q_lora_rank")
        q = h * q_rank + q_rank * heads * (nope + rope) if q_rank else h * heads * (nope + rope)
        attn = q + h * (rank + rope) + rank * heads * (nope + v) + heads * v * h
    experts = cfg.get("num_local_experts") or cfg.get("num_experts") or cfg.get("n_routed_experts") or 0
    expert_mlp = cfg.get("moe_intermediate_size") or inter
    shared = cfg.get("shared_expert_intermediate_size") or (cfg.get("n_shared_experts") or 0) * expert_mlp
    step, dense = cfg.get("decoder_sparse_step") or 1, set(cfg.get("mlp_only_layers") or ())
    first = cfg.get("first_k_dense_replace") or 0
    moe = sum(experts > 1 and i >= first and i not in dense and (i + 1) % step == 0 for i in range(layers))
    mlp = 3 * h * inter * (layers - moe) + moe * h * (3 * (experts * expert_mlp + shared) + experts)
    embed = vocab * h * (1 if cfg.get("tie_word_embeddings", False) else 2)
    params = (layers * attn + mlp + embed) / 1e9
    context = scaled_context(cfg, kind) if _size(cfg, source, "max_position_embeddings") else 0
    width = head_width(cfg) or head_dim  # multi-head latent attention's widest head: the kernel's, not head_dim
    chunk, floor = long_row_limits(cfg, kind)
    window, windowed, linear = attention_layers(cfg, layers)
    shape = ModelShape(
        round(params, 4),
        h,
        layers,
        vocab,
        source,
        inter,
        kv * width,
        context,
        model_type=kind,
        heads=heads,
        attn_softcap=bool(cfg.get("attn_logit_softcapping")),
        attn_sinks=kind in ATTENTION_SINKS,
        quantized=quantized,
        q_dim=heads * width,
        attn_chunk=chunk,
        row_floor=floor,
        window=window,
        window_layers=windowed,
        linear_layers=linear,
        tied=bool(cfg.get("tie_word_embeddings", False)),  # as embed counts it above
    )
    if not moe:
        return shape
    top_k = cfg.get("num_experts_per_tok") or 1
    active = top_k * expert_mlp + shared
    return replace(
        shape, intermediate=active, experts=experts * moe, expert_mlp=expert_mlp, top_k=top_k, moe_layers=moe
    )


def attention_layers(cfg: dict, layers: int) -> tuple[int, int, int]:
    """(sliding window, layers attending within it, linear-attention layers) of a (text) config, as transformers runs
    its layers: by its layer_types ("sliding_attention"; "linear_attention", "mamba", "conv": no (S x S) scores), which
    the config classes of Gemma 2/3, Qwen2/3, gpt-oss and Qwen3-Next fill in where a config.json leaves them out (an
    older Gemma 2's); without them, every layer within sliding_window where it is set (Mistral 7B v0.1, as
    attention.AttentionShape reads it). (0, 0, 0): every layer full causal attention."""
    window = cfg.get("sliding_window")
    types = cfg.get("layer_types")
    if not isinstance(types, list) and (kind := cfg.get("model_type")) and (window or kind in RECURRENT_MODEL_TYPES):
        try:
            from transformers import CONFIG_MAPPING

            given = {k: v for k, v in cfg.items() if k not in ("model_type", "transformers_version", "auto_map")}
            types = CONFIG_MAPPING[kind](**given).to_dict().get("layer_types")
        except Exception:  # noqa: BLE001  a type this transformers does not know, or values its class refuses
            types = None
    window = window if isinstance(window, int) and not isinstance(window, bool) and window > 0 else 0
    if not isinstance(types, list) or len(types) != layers:
        return window, layers if window and cfg.get("use_sliding_window") is not False else 0, 0
    linear = sum(not str(t).endswith("attention") or str(t).startswith("linear") for t in types)
    return (window, sum(t == "sliding_attention" for t in types), linear) if window else (0, 0, linear)


# RoPE scalings that stretch the positions a model was trained on by their factor (transformers' rope_type names)
CONTEXT_SCALINGS = ("linear", "dynamic", "yarn")
# model types whose max_position_embeddings already counts their RoPE scaling's factor (Gemma 3: 131,072, linear x8
# on its global layers)
SCALED_IN_CONTEXT = ("gemma3", "gemma3_text")


def scaled_context(cfg: dict, kind: str = "") -> int:
    """The tokens a model's positions reach: its config's max_position_embeddings, stretched by a RoPE scaling of
    CONTEXT_SCALINGS to factor x original_max_position_embeddings (else x max_position_embeddings). A config given
    such a scaling is how a context is extended (lmsys/vicuna-7b-v1.5-16k: 4,096 x linear 4; Qwen2.5's YaRN: 32,768 x
    4); its runs past max_position_embeddings were told to cut their rows to it. Llama 3.1's llama3 scaling and
    Phi-3's longrope already count theirs in max_position_embeddings. ``cfg``: a config.json (rope_scaling) or
    transformers 5's config.to_dict() (rope_parameters); 0 where it has no max_position_embeddings."""
    base = cfg.get("max_position_embeddings") or 0
    scaling = cfg.get("rope_scaling") or cfg.get("rope_parameters")
    if not base or not isinstance(scaling, dict) or kind in SCALED_IN_CONTEXT:
        return base
    factor = scaling.get("factor")
    if (scaling.get("rope_type") or scaling.get("type")) not in CONTEXT_SCALINGS or isinstance(factor, bool):
        return base
    if not isinstance(factor, (int, float)) or factor <= 1:
        return base
    original = scaling.get("original_max_position_embeddings")
    return max(base, int(factor * (original if isinstance(original, int) and original > 0 else base)))


# the keys of a config.json the shape is read from that many leave to their config class's defaults
SHAPE_KEYS = (
    "vocab_size", "num_attention_heads", "num_key_value_heads", "head_dim", "intermediate_size",
    "tie_word_embeddings", "max_position_embeddings",
)  # fmt: skip


def _filled(cfg: dict) -> dict:
    """config.json with the keys it leaves out as transformers fills them: its model type's config class's defaults
    (Gemma 3's checkpoints name five keys of their text model: its 262,208-token vocabulary, tied embeddings and
    8 heads come from Gemma3TextConfig; read with Llama's defaults, 32,000, untied and 40, a 27B plan was 2.4 GB
    under what the run needs). As it is where nothing is missing, or transformers does not know the type."""
    text = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else cfg
    if not (kind := cfg.get("model_type")) or all(k in text for k in SHAPE_KEYS):
        return cfg
    try:
        from transformers import CONFIG_MAPPING

        given = {k: v for k, v in cfg.items() if k not in ("model_type", "transformers_version", "auto_map")}
        full = CONFIG_MAPPING[kind](**given).to_dict()
    except Exception:  # noqa: BLE001  a type this transformers does not know, or values its class refuses
        return cfg
    filled = {**full, **cfg}
    if text is not cfg and isinstance(full.get("text_config"), dict):
        filled["text_config"] = {**full["text_config"], **text}
    return filled


# ------------------------------------------------------------------------------------------ memory
def experts_stay_16bit(method: str, shape: ModelShape) -> str:
    """Why qlora of a mixture of experts weighs so much more than its 4 bits a parameter ("" where it does not)."""
    if method != "qlora" or not shape.experts:
        return ""
    return (
        f"the experts stay 16-bit under qlora ({shape.expert_params_b:.1f}B of the {shape.params_b:.1f}B parameters, "
        f"{2 * shape.expert_params_b:.0f} GB): transformers 5 fuses them into 3D parameters, which bitsandbytes does "
        "not quantize; the attention and dense layers are 4-bit"
    )


def adapts_experts(method: str, shape: ModelShape, spec: RunSpec) -> bool:
    """Whether LoRA adapts a mixture of experts' fused expert weights: all-linear on a shape with experts."""
    return method in ("lora", "qlora") and bool(shape.experts) and spec.lora_target_modules.strip() == "all-linear"


def _trainable_b(method: str, shape: ModelShape, spec: RunSpec) -> float:
    if method == "fft":
        return shape.params_b
    if method == "sft":
        per_layer = (shape.params_b - shape.vocab * shape.hidden / 1e9) / shape.layers
        return min(shape.params_b, spec.trainable_layers * per_layer + shape.vocab * shape.hidden / 1e9)
    # LoRA: r * (in + out) for each targeted projection of every layer (all-linear: all seven, or an MoE's attention
    # and its experts, _shape_from_config; a name that is not one of Llama's: 2H, an attention projection's)
    sizes = shape.projections()
    names = spec.lora_target_modules.strip()
    every = names == "all-linear"
    # PEFT_TARGETS not named here (with_lora_targets: no PEFT, or no model type): q_proj, v_proj, PEFT's for most
    targets = list(sizes) if every else ["q_proj", "v_proj"] if names == PEFT_TARGETS else lora_target_names(names)
    if every and shape.experts:
        targets = ["q_proj", "k_proj", "v_proj", "o_proj"]
    per_layer = sum(sum(sizes.get(t, (shape.hidden, shape.hidden))) for t in targets)
    experts = shape.experts * (3 * shape.hidden + 5 * shape.expert_mlp) if every else 0
    return spec.lora_r * (shape.layers * per_layer + experts) / 1e9


DEEPSPEED_STRATEGIES = ("zero2", "zero2_offload", "zero3", "zero3_offload")
ZERO3_STRATEGIES = ("zero3", "zero3_offload")  # DeepSpeed stage 3: parameters sharded (the others are stage 2)


def optimizer_state_bytes(optim: str) -> float:
    """Bytes of optimizer state a trainable parameter holds on the GPU, by transformers' optim name: AdamW's two
    fp32 moments (8), 8-bit ones (2: adamw_8bit, paged_adamw_8bit); Lion's one moment (4; 8-bit: 1); Adafactor's
    factored second moment and SGD without momentum (about none). fft planned 8 B for adamw_8bit, and so offloaded
    a 1B model's optimizer to CPU RAM on a 24 GB card where the 8-bit states fit."""
    name = optim.lower()
    if "sgd" in name or "adafactor" in name:
        return 0.0
    if "lion" in name:
        return 1.0 if "8bit" in name else 4.0
    return 2.0 if "8bit" in name else 8.0


OFFLOAD_STRATEGIES = ("zero2_offload", "zero3_offload")  # optimizer states in CPU RAM (offload_host_gb)
HOST_RAM_PER_GPU_MEMORY = 2  # a node's RAM where host_memory_gb is not given: 2x its GPUs' memory (cloud GPU VMs)
# backends whose node is picked by the RAM its plan asks for, so no assumption bounds an offload plan there: SkyPilot
# takes a VM with the task's memory: (sky.cost.memory_request), or says none has it (SkyBackend.estimate and check)
NODE_PICKED_BY_RAM = ("sky",)
PROCESS_HOST_GB = 6.0  # a trainer process's own host memory before DeepSpeed's buffers (5-6.5 GB, v30)
# where the trainer runs its own LoRA forward (methods.fused_adapter_output; sharded parameters are
# gathered by module hooks that it would bypass)
FUSED_ADAPTER_STRATEGIES = ("single", "ddp")
# DoRA (use_dora): what PEFT's DoRA forward keeps beyond LoRA's, measured on an H200 (bench/NOTES.md v48)
DORA_ACTIVATION_H, DORA_ACTIVATION_I = 14, 8  # bytes a token and layer, x hidden and x MLP width
DORA_QLORA_BYTES_PER_PARAM = 2.9  # qlora, beyond lora's DoRA terms: fitted on v48's row, without checkpointing
DORA_QLORA_CHECKPOINTED_H = 120  # the same with checkpointing, bytes a token x hidden: fitted on v52's two rows
HEAD_HIDDEN_GRAD_H = 6  # the LM head's fp32 gradient of the hidden states and 16-bit copy (fused_head_bytes)
DEEPSPEED_STEP_BYTES_PER_PARAM = 5  # ZeRO-2's step: its gradient partition in fp32 (4 B) + ~1 measured (v52)
LORA_KERNELS_MIN_B = 3.0  # see lora_kernels()
LORA_KERNEL_MAX_RANK = 64


def weights_dtype(method: str, strategy: str, precision: str) -> str:
    """The dtype the trainer loads the model's weights in: the one owner of this fact (the trainer and
    the memory model both ask here).

    fft/sft train fp32 master weights with 16-bit autocast: training the 16-bit weights themselves loses
    updates below their resolution (seen on 2 H100s: 30 steps of a 1B model at lr 2e-5 ended at loss
    2.26 in pure bf16 against 1.15 with fp32 masters). DeepSpeed casts the loaded fp32 weights to 16 bit
    and keeps its own fp32 masters in the optimizer. The frozen base of lora/qlora stays 16-bit (PEFT
    keeps the adapters in fp32); on CPU everything is fp32."""
    if precision == "fp32" or method in ("fft", "sft"):
        return "fp32"
    return precision


DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


def final_dtype(method: str, precision: str) -> str:
    """The dtype a run's final weights are saved in: the one owner of this fact (the trainer's final save,
    sft_trainer.cast_for_saving, and preflight's size of the final output ask here).

    A full model (fft/sft) in the run's precision, whatever the strategy: the fp32 masters (weights_dtype) are for
    training, and a bf16 run hands vLLM/TGI a bf16 model, as FastChat, TRL and axolotl do (it was fp32 under single,
    ddp and fsdp, 16-bit under ZeRO: bench/NOTES.md v68). Its checkpoints keep the fp32 masters a resume needs. An
    adapter (lora/qlora) is saved as PEFT keeps it, fp32: it is small, and `ftctl merge` folds it into its base in
    the run's precision."""
    return precision if method in ("fft", "sft") else "fp32"


def memory_terms(
    method: str,
    strategy: str,
    shape: ModelShape,
    world: int,
    micro: int,
    seq: int,
    ckpt: bool,
    trainable_b: float,
    fp32: bool = False,
    precision: str = "bf16",
    accum: int = 1,
    optim: str = "adamw_torch_fused",
    lora_dropout: float = RunSpec.lora_dropout,
    lora_r: int = RunSpec.lora_r,
    dora: bool = False,
    expert_adapters: bool = False,
    scores: bool = False,
    mask: tuple[int, int] | None = None,
) -> dict:
    """The module docstring's terms, GB a GPU. ``scores``: eager attention's scores are kept; ``mask``: the (rows,
    tokens a row) whose every score sdpa or eager computes under a mask (attention_mask), None where none."""
    n = shape.params_b  # billions -> GB per byte/param
    wb = 4 if fp32 else 2  # bytes of a weight / activation element (fp32 on CPU)
    # qlora: 4-bit but for the embeddings and head, and an MoE's fused experts, which bitsandbytes leaves 16-bit
    weights = {"qlora": 0.56 * n + wb * shape.vocab * shape.hidden / 1e9 + (wb - 0.56) * shape.expert_params_b}.get(
        method, wb * n
    )
    grads = wb * trainable_b
    states = optimizer_state_bytes(optim)
    optimizer = (states + (0 if fp32 else 4)) * trainable_b
    if not fp32 and method in ("fft", "sft") and strategy not in DEEPSPEED_STRATEGIES:
        # fft/sft outside DeepSpeed: the trainer loads fp32 masters (see weights_dtype), so weights and
        # grads take 4 B/param and the optimizer adds only its states (AdamW's two fp32 moments: 8 B)
        weights, grads, optimizer = 4 * n, 4 * trainable_b, states * trainable_b
    if strategy == "zero2":
        grads, optimizer = grads / world, optimizer / world
    elif strategy == "zero2_offload":
        # the 16-bit weights and the gradient partition on the GPU; optimizer states and fp32 masters in CPU RAM
        grads, optimizer = grads / world, 0.0
    elif strategy in ("zero3", "fsdp"):
        weights, grads, optimizer = weights / world, grads / world, optimizer / world
    elif strategy == "zero3_offload":
        # two layers' weights in flight on the GPU; gradients and optimizer states go to CPU RAM
        weights, grads, optimizer = 2 * 2 * n / shape.layers, 2 * 2 * n / shape.layers, 0.0
    h, i = shape.hidden, shape.mlp
    # an fp32 residual stream: qlora under fp16 (PEFT's fp32 upcast of every non-4-bit weight); fft/sft
    # under fp16 over fp32 masters (the trainer turns the stream to 16 bits under bf16 only)
    fp32_residual = precision == "fp16" and (
        method == "qlora" or (method in ("fft", "sft") and strategy in ("single", "ddp"))
    )
    adapters = method in ("lora", "qlora")
    kernel = lora_kernels(method, strategy, shape, precision, fp32, lora_r, dora)
    per_token_layer = activation_bytes(h, i, fp32_residual, adapters, adapters and lora_dropout > 0 and not kernel)
    per_token_layer += kv_width_bytes(shape)
    liger = liger_layers(shape, fp32)
    if not liger and not fp32:  # the module docstring: activations outside Liger (on CPU: not measured)
        per_token_layer += unfused_layer_bytes(shape, adapters)
    if adapters and dora:  # the module docstring: dora
        per_token_layer += DORA_ACTIVATION_H * h + DORA_ACTIVATION_I * i
    gb = micro * seq * wb / 2 / 1e9  # bytes a token -> GB for a micro-batch
    logits = fused_head_bytes(micro * seq, h, shape.vocab) * wb / 2 / 1e9
    accumulating = accum > 1 and strategy not in (*OFFLOAD_STRATEGIES, "zero3", "fsdp")
    if ckpt:  # the module docstring: activations under checkpointing
        reached = shape.layers
        if method == "sft" and shape.tied is False:  # the blocks below its trained ones keep no input (backward_reach)
            # rounded first: trained_blocks of _trainable_b's own count is 1.0000000000000002 blocks (a float)
            reached = math.ceil(round(trained_blocks(shape, trainable_b), 6))
        saved = (4 if fp32_residual else 2) * h * reached * gb  # each checkpointed layer's input
        # FSDP2's sharded gradients: set to None too. Not sft's: most of its gradient is the head's, made first
        replaced = grads if strategy in ("single", "fsdp") and method != "sft" else 0.0
        hidden_grad = HEAD_HIDDEN_GRAD_H * h * gb  # the head's gradient of the hidden states, alive to the end
        one_layer = max(per_token_layer * gb, logits - hidden_grad)  # or the head's chunk, the larger
        activations, logits = max(0.0, saved - replaced) + one_layer + hidden_grad, 0.0
        if method == "qlora" and dora:  # the module docstring: dora
            activations += DORA_QLORA_CHECKPOINTED_H * h * gb
    elif method == "sft":  # the module docstring: activations of sft
        trained = trained_blocks(shape, trainable_b)
        frozen = (shape.layers - trained) * (FROZEN_BLOCK_SHARE if shape.tied is not False else 0.0)
        activations = per_token_layer * (trained + frozen + 1) * gb
    else:  # every layer's, + one layer's worth of gradients in flight during the backward
        activations = per_token_layer * (shape.layers + 1) * gb
    terms = {"weights": weights, "grads": grads, "optimizer": optimizer, "activations": activations}
    if fp32:  # the module docstring: on CPU
        activations, logits = CPU_ACTIVATION_FACTOR * activations, CPU_ACTIVATION_FACTOR * logits
        terms["activations"] = activations
    if logits:
        terms["logits"] = logits
    if scores:  # module docstring: attention_scores
        terms["attention_scores"] = attention_scores_gb(shape, *(mask or (micro, seq)), wb, ckpt)
    elif mask and not fp32:  # module docstring: sdpa_mask
        terms["sdpa_mask"] = sdpa_mask_gb(shape, *mask, micro * seq, ckpt)
    terms["overhead"] = OVERHEAD_GB
    if expert_adapters:  # module docstring: expert_copies
        terms["expert_copies"] = wb * shape.expert_params_b / (shape.layers if ckpt else 1)
    if shape.experts and not liger:  # module docstring: expert_activations
        terms["expert_activations"] = expert_activations_gb(shape, micro * seq, wb, ckpt)
    if accumulating:  # module docstring: accumulated_grads
        terms["accumulated_grads"] = grads
    if accum > 1 and strategy == "fsdp" and world > 1:  # the same: FSDP2's unsharded 16-bit gradients
        terms["accumulated_grads"] = wb * trainable_b
    if strategy == "ddp" and world > 1:  # the module docstring: ddp_buckets
        terms["ddp_buckets"] = grads
    if strategy == "fsdp":  # the module docstring: fsdp_gathered
        terms["fsdp_gathered"] = 2 * 2 * n / shape.layers
    if method == "qlora" and dora and not ckpt:  # the module docstring: dora
        terms["dora_qlora"] = DORA_QLORA_BYTES_PER_PARAM * n
    if strategy == "zero2":  # the module docstring: deepspeed_step
        step = DEEPSPEED_STEP_BYTES_PER_PARAM * trainable_b / world - activations - logits
        if step > 0:
            terms["deepspeed_step"] = step
    if strategy in ZERO3_STRATEGIES:  # the module docstring: zero3_buffers
        terms["zero3_buffers"] = (
            wb * (2 * ZERO3_REDUCE_BUCKET + ZERO3_PREFETCH_BUCKET + min(ZERO3_MAX_LIVE, n * 1e9)) / 1e9
        )
    return terms


def attention_scores_gb(shape: ModelShape, micro: int, seq: int, wb: int, ckpt: bool) -> float:
    """The module docstring's attention_scores: eager attention's (S x S) scores of ``micro`` rows of ``seq`` tokens
    (a packed micro-batch: one row of its micro x S, attention_mask), ``wb`` bytes an element of the compute dtype (on
    fp32 softmax's output is the matmul's input: one copy)."""
    saved = 4 + (wb if wb < 4 else 0) + (wb if shape.attn_softcap else 0)  # a score, a head and layer
    in_flight = 2 * 4 + wb  # the backward's gradients of one layer's scores: softmax's in fp32, probs' in 16 bits
    elements = micro * seq * seq
    layers = 1 if ckpt else shape.layers
    return elements * (shape.attention_heads * (saved * layers + in_flight) + wb) / 1e9


def sdpa_mask_gb(shape: ModelShape, rows: int, row: int, tokens: int, ckpt: bool) -> float:
    """The module docstring's sdpa_mask: ``rows`` rows of ``row`` tokens under sdpa's mask, ``tokens`` the
    micro-batch's (rows x row, or the packed row's). Each attending layer's 16-bit mask (SDPA_MASK_BYTES a score) and
    K/V repeated to the query heads (4 x q_width a token where activation_bytes and kv_width_bytes count max(H, 4 x
    kv_dim)); under checkpointing the recomputed layer's, + the bool mask the checkpoints hold (1 B a score)."""
    scores = rows * row * row
    repeated = max(0, 4 * shape.q_width - max(shape.hidden, 4 * (shape.kv_dim or shape.hidden)))
    layers = 1 if ckpt else shape.layers - shape.linear_layers
    held = scores if ckpt else 0
    return (layers * (SDPA_MASK_BYTES * scores + repeated * tokens) + held) / 1e9


def kv_width_bytes(shape: ModelShape) -> int:
    """activation_bytes() counts attention's k and v at a quarter of the heads (Llama-3's GQA); a model with wider
    K/V (multi-head: Llama-2-7B, Vicuna, Phi-3) keeps 2 x 2kv a token and layer where 2 x 2H/4 is counted. v61,
    Phi-3-mini's shape (32 KV heads) on an H200: 6H a token and layer over the plan before this term. Narrower K/V
    is left at the quarter (not measured); a shape without its K/V width (--model-params) too."""
    return max(0, 4 * shape.kv_dim - shape.hidden)


def liger_layers(shape: ModelShape, on_cpu: bool) -> bool:
    """Whether the plan counts Liger's layer kernels for this model: on a GPU, for the types Liger patches
    (attention.LIGER_MODEL_TYPES; a shape read without a type, a known id or --model-params, is taken as
    Llama's, as the known ids are)."""
    return not on_cpu and (not shape.model_type or shape.model_type in LIGER_MODEL_TYPES)


def unfused_layer_bytes(shape: ModelShape, adapters: bool) -> int:
    """The module docstring's activations outside Liger: what transformers' own layers keep beyond Liger's, a
    token and layer in 16 bits (an MoE's experts are expert_activations')."""
    return (UNFUSED_ADAPTERS_H if adapters else UNFUSED_WEIGHTS_H) * shape.hidden + (
        0 if shape.experts else 2 * shape.mlp
    )


def expert_activations_gb(shape: ModelShape, tokens: int, wb: int, ckpt: bool) -> float:
    """The module docstring's expert_activations for a micro-batch of ``tokens`` (``wb``: bytes an element)."""
    per_token = shape.top_k * (4 * shape.hidden + 6 * shape.expert_mlp) * wb // 2
    return per_token * tokens * (1 if ckpt else shape.moe_layers) / 1e9


def without_liger(plan: Plan, seq: int, liger: bool) -> str | None:
    """What the trainer says where the plan counted Liger's kernels (a GPU plan for a type Liger patches) and
    Liger does not run (liger-kernel not installed beside the trainer): transformers' own layers keep more."""
    shape = plan.model
    if liger or plan.tier is None or not liger_layers(shape, on_cpu=False):
        return None
    tokens, adapters = plan.per_device_train_batch_size * seq, plan.method in ("lora", "qlora")

    def more(ckpt: bool) -> float:
        layers = unfused_layer_bytes(shape, adapters) * tokens * (1 if ckpt else shape.layers + 1) / 1e9
        return layers + (expert_activations_gb(shape, tokens, 2, ckpt) if shape.experts else 0.0)

    fix = "pip install liger-kernel beside the trainer"
    if not plan.gradient_checkpointing:
        fix += f", or -o gradient_checkpointing=true ({more(True):.1f} GB then)"
    return (
        f"Liger's kernels are off here (liger-kernel not installed?): transformers' own layers keep "
        f"~{more(plan.gradient_checkpointing):.1f} GB a GPU more than the plan's {plan.memory_gb:.1f}, which counted "
        f"Liger's. If the step runs out of memory: {fix}."
    )


def lora_kernels(
    method: str, strategy: str, shape: ModelShape, precision: str, on_cpu: bool, lora_r: int, dora: bool = False
) -> bool:
    """Whether the trainer runs LoRA's adapters through its Triton kernels: dropout + A as one kernel pair
    (trainer/lora_dropout.py), which keeps no dropped copy of each projection's input, and B's output added
    into the base's in place (trainer/lora_up.py). On GPUs, unsharded (methods.fused_adapter_output), inputs
    in autocast's 16 bits (not qlora's fp32 residual under fp16), ranks up to LORA_KERNEL_MAX_RANK (one
    tile), and for models of LORA_KERNELS_MIN_B parameters or more. Measured on an H200 (bench/NOTES.md, v8,
    v9, v11): the 8B lora/qlora steps lose 32% of their peak memory to the dropout kernels at the same rate,
    and the in-place sum takes about 35 ms off an 8B step (cuBLAS's 16-wide addmm copies the base's output
    first and then moves it at 40% of the copy rate); the 1B steps, which wait on the host, lost 11-23% of
    their rate to the kernels' launches. In training with a dropout each projection is one autograd node whose
    backward adds the adapter's input gradient into the base's (trainer/lora_projection.py; v15: the 8B qlora
    median step 1.059 -> 1.043 s, 8B lora 1.041 -> 1.030 s). Without dropout only the sum runs (the dropout
    kernels need 0 < p). DoRA's layers run PEFT's own forward (methods._fused_forward), so none of this."""
    return (
        method in ("lora", "qlora")
        and not dora
        and not on_cpu
        and strategy in FUSED_ADAPTER_STRATEGIES
        and not (precision == "fp16" and method == "qlora")
        and lora_r <= LORA_KERNEL_MAX_RANK
        and shape.params_b >= LORA_KERNELS_MIN_B
    )


def accumulation_steps(spec: RunSpec, micro: int, world: int) -> int:
    """Gradient accumulation steps for a micro-batch: as asked, else enough to reach the global batch."""
    return spec.gradient_accumulation_steps or max(1, math.ceil(spec.global_batch / (micro * world)))


def activation_bytes(h: int, i: int, fp32_residual: bool, adapters: bool, dropout_copies: bool = True) -> int:
    """Bytes a decoder layer keeps for the backward, per token: Llama-like layer (gated MLP, GQA with
    a quarter of the heads for K/V), exact varlen attention (no S^2 term), Liger's RMSNorm/SwiGLU
    kernels. Counted per saved tensor, then held to the peaks measured on an H200 (bench/NOTES.md):

        norms         their inputs: 2 x 2H
        projections   inputs of q,k,v and of gate,up in 16 bits: 2H + 2H
        attention     q, k, v, output: 2H + 2 x 2H/4 + 2H = 5H
        MLP           gate, up and their SwiGLU product (down's input): 3 x 2I
        LoRA          each adapted projection's dropout output, 2 x (6H + I) counted; 1.5 x (6H + I) measured;
                      none where the trainer's dropout + A kernel runs (dropout_copies False)
        fp32 residual norms' inputs in fp32 and one 16-bit copy of the input per projection: + 10H counted

    Counted: 13H + 6I. Measured with a 16-bit residual stream, fft of the 1B shape peaks as 8H + 6I would
    (66 kB a token and layer: sixteen peaks of 1B fft on H200s, micro-batches 8 and 16, one and two GPUs, every
    strategy, within 6%, bench/NOTES.md v31; 5H + 6I, fitted at 8 x 1 alone, was 6-10% under at micro-batch
    16, where 8 more sequences added 72 kB a token and layer), LoRA/QLoRA of the 1B and 8B shapes as
    13H + 6I + 1.5 x (6H + I) (within 7%); with the dropout kernels (8B) as 13H + 6I (within 6%).
    q and the output stay at 2H where heads x head width is not hidden (ModelShape.q_dim): these plans are -1.4% to
    +5.2% of the six peaks measured on Qwen3-30B-A3B's shape (q 4096, hidden 2048; bench/NOTES.md v57, v59), and
    4 x (4096 - 2048) more put them at -0.8% to +6.8%. An fp32 residual stream (fft/sft under fp16 autocast over fp32
    masters; qlora under fp16: PEFT's upcast) adds 8H to fft (1B fft measured, before its stream went bf16)
    and 10H to the adapters' count."""
    if adapters:
        return 13 * h + 6 * i + (3 * (6 * h + i) // 2 if dropout_copies else 0) + (10 * h if fp32_residual else 0)
    return 8 * h + 6 * i + (8 * h if fp32_residual else 0)


def head_chunk_tokens(vocab: int) -> int:
    """Tokens the LM head (trainer/lm_head.py) projects onto the whole vocabulary at once: at most 4,096, and
    at most 2**29 logits (1 GiB in 16 bits; 4,096 tokens of a 131,072-entry vocabulary)."""
    return max(1, min(4096, 2**29 // max(1, vocab)))


def fused_head_bytes(tokens: int, h: int, vocab: int) -> int:
    """The LM head's loss (trainer/lm_head.py): one chunk's 16-bit logits over the whole vocabulary (the
    (tokens x vocab) logits never exist at once), the fp32 gradient of the hidden states and the 16-bit copy
    of the scored positions. (A trained head's fp32 weight gradient is the grads term's.) Where TRL's own head
    runs instead (ZeRO-3, scaled logits) its 4,096 x 32,768 tiles are smaller: this over-counts by <= 1 GB."""
    return 2 * min(tokens, head_chunk_tokens(vocab)) * vocab + HEAD_HIDDEN_GRAD_H * tokens * h


def _strategies(method: str, world: int, nodes: int, forced: str | None) -> list[str]:
    if forced:
        return [forced]
    if world == 1:
        return ["single", "zero2_offload", "zero3_offload"] if method == "fft" else ["single"]
    # cheapest first. FSDP2 before ZeRO-3 where both fit: on two H200s (1B fft) FSDP2 made 2.05x one GPU,
    # ZeRO-3 1.21-1.29x (bench/results/2026-11-30-h200x2-multi-gpu-v2.md, -v3.md)
    if method == "qlora":
        return ["ddp"]  # sharding a 4-bit base needs another quant storage dtype: not supported
    if method == "lora":
        return ["ddp", "fsdp"]  # adapters are small: shard the frozen base only when it does not fit
    if method == "sft":
        return ["ddp", "zero2", "zero3"]
    return ["ddp", "zero2", "fsdp", "zero3", "zero2_offload", "zero3_offload"]


# ------------------------------------------------------------------------------------------ plan


def unused_settings(spec: RunSpec, method: str) -> list[str]:
    """Notes for settings the run gives that do nothing here (a lora run file relaunched with --method fft)."""

    def given(keys):
        said = {k: getattr(spec, k) for k in keys if getattr(spec, k) != FIELDS[k].default}
        return [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in said.items()]

    notes = []
    if method not in ("lora", "qlora") and (lora := given(LORA_KEYS)):
        notes.append(f"{', '.join(lora)}: LoRA settings, unused by {method} (it trains no adapters)")
    if method != "sft" and (layers := given(("trainable_layers",))):
        notes.append(f"{layers[0]}: sft's, unused by {method}")
    if not spec.eval_data_path and not spec.eval_split and (steps := given(("eval_steps", "evals_per_epoch"))):
        notes.append(f"{steps[0]}: no held-out data to evaluate (--eval-data FILE, or -o eval_split=0.05)")
    return notes


def _evaluated_between_checkpoints(spec: RunSpec, saves: int | None) -> list[str]:
    """The note where eval_steps is not a multiple of the plan's save_steps (``saves``)."""
    every = spec.eval_steps
    if not every or spec.evals_per_epoch or not saves or not spec.evaluates or every % saves == 0:
        return []
    return [
        f"eval_steps={every} is not a multiple of save_steps={saves}: a lowest held-out loss found between "
        f"checkpoints is kept by none; -o eval_steps={-(-every // saves) * saves} measures it at checkpoints"
    ]


def make_plan(spec: RunSpec, gpus: str | None = None, *, machine: gpu_table.GpuRequest | None = None) -> Plan:
    """The plan for spec on its --gpus (or ``gpus``); raises PlanError naming the nearest fit: within ``machine``
    where given (the local backend's: this machine's GPUs, all a run there may have), else on any card."""
    req = gpu_table.parse(gpus or spec.gpus or "cpu", spec.nodes)
    if req.is_cpu and spec.ddp_comm_dtype == "bf16":
        raise PlanError(
            "ddp_comm_dtype=bf16 needs GPUs (torch's bf16 all-reduce hook runs on NCCL only); on CPU leave "
            "ddp_comm_dtype unset."
        )
    allowed, why = METHOD_STRATEGIES[spec.method]
    if spec.strategy and spec.strategy not in allowed:
        raise PlanError(
            f"strategy={spec.strategy} is not one ftctl runs {spec.method} with ({', '.join(allowed)}): {why}. With "
            f"{spec.method}, leave strategy unset: the plan chooses."
        )
    if spec.strategy == "single" and req.world_size > 1:  # transformers wraps several processes in DDP all the same
        raise PlanError(
            f"strategy=single runs one process, and --gpus {req} starts {req.world_size}, which train as DDP (each a "
            "replica, its buckets counted): -o strategy=ddp, or leave strategy unset."
        )
    one_replica = spec.strategy == "ddp" and req.world_size == 1
    if one_replica:  # one process is no replica of others: planned as what runs (no DDP buckets counted)
        spec = replace(spec, strategy="single")
    if req.is_cpu and spec.strategy == "fsdp":  # the trainer's refusal (distributed.fsdp_settings), before the job
        sharded = " or -o strategy=zero3 to shard (DeepSpeed ZeRO-3 over gloo)" if "zero3" in allowed else ""
        raise PlanError(
            "strategy=fsdp does not run on CPU (accelerate's FSDP2 would train unsharded): leave strategy "
            f"unset{sharded}."
        )
    shape = model_shape(spec.model_name_or_path, spec.model_params, spec.model_revision)
    if spec.method == "qlora" and (refused := qlora_refused(spec.model_name_or_path, shape.quantized)):
        raise PlanError(refused)
    if spec.method in ("fft", "sft") and shape.quantized and shape.quantized not in DEQUANTIZED_ON_LOAD:  # as the
        # trainer finds it after the model's load, before the job
        raise PlanError(
            f"{spec.model_name_or_path} is stored quantized ({shape.quantized}): {spec.method} trains its weights, "
            "which needs them in 16 bits. Use --method qlora or lora (adapters over the quantized weights), or the "
            "unquantized model it was made from."
        )
    if spec.method == "sft" and shape.source != "--model-params" and spec.trainable_layers > shape.layers:
        raise PlanError(  # the trainer's words (methods.py), before the job instead of on its node
            f"trainable_layers={spec.trainable_layers} but the model has {shape.layers} blocks: use at most "
            f"{shape.layers} (or method fft to train everything)."
        )
    spec, targets_note = with_lora_targets(spec, shape)
    plan = _fit(spec, req, shape, spec.method)
    if plan is not None:
        _checkpoints(spec, plan)
        if said := rate_note(plan.method, plan.learning_rate):
            plan.notes.append(said)
        if targets_note:
            plan.notes.append(targets_note)
        if shape.quantized in DEQUANTIZED_ON_LOAD:
            plan.notes.append(
                f"stored in {shape.quantized.upper()}: loaded dequantized to {plan.weights_dtype} (transformers' "
                f"Mxfp4Config(dequantize=True); its {shape.quantized.upper()} kernels do not train), the weights "
                f"counted so ({plan.memory['weights']:.1f} GB)"
            )
        if one_replica:
            plan.notes.append(f"strategy=ddp on {req}: one process, which trains as single (DDP needs two or more)")
        if said := _kept_on_gpu(spec, req, shape, plan):
            plan.notes.append(said)
        read = Path(spec.model_name_or_path, "config.json")
        if spec.model_params and read.is_file():  # the size given wins; say so where the model's own is readable
            try:
                real = _shape_from_config(read_config(read), str(read)).params_b
            except (FtctlError, ValueError, OSError):  # unreadable: what --model-params is for, nothing to say
                real = None
            if real:
                plan.notes.append(f"--model-params {spec.model_params} planned instead of {read}'s {real:g}B")
        elif spec.model_params and (known := _KNOWN.get(_base_id(spec.model_name_or_path))):
            plan.notes.append(
                f"--model-params {spec.model_params} planned instead of {spec.model_name_or_path}'s known shape "
                f"({known.params_b:g}B, its {known.vocab:,}-token vocabulary): leave it out to plan that"
            )
        return plan
    raise DoesNotFit(_refusal(spec, req, shape, machine))


ADAPTER_LEAST_LR = 1e-5  # a lora/qlora rate below this is noted: a tenth of LoRA's usual (rate_note)


def rate_note(method: str, rate: float) -> str | None:
    """The note where ``method`` trains at a rate of the other kind's: a full or partial fine-tune past LORA_LEAST_LR
    (a LoRA rate carried over: -o learning_rate=2e-4 with --method fft), or adapters under ADAPTER_LEAST_LR. FastChat's
    and TRL's full fine-tunes train at 1e-5 to 2e-5, their LoRA recipes at 1e-4 to 2e-4 (FastChat's train_lora.sh at
    2e-5, over the line); the defaults are spec.METHOD_LEARNING_RATE's. None where the rate is usual."""
    default = METHOD_LEARNING_RATE[method]
    if method in ("fft", "sft") and rate > LORA_LEAST_LR:
        what = "every weight" if method == "fft" else "its top layers' weights"
        return (
            f"learning_rate={_rate(rate)} is a LoRA rate, and {method} updates {what} at it: it risks a diverged run (loss "
            f"spikes, nan) or a model that forgets what it knew; full fine-tunes train at 1e-5 to 2e-5 (FastChat's and "
            f"TRL's recipes; leave learning_rate unset for ftctl's {_rate(default)})"
        )
    if method in ("lora", "qlora") and rate < ADAPTER_LEAST_LR:
        return (
            f"learning_rate={_rate(rate)} is low for {method}: its adapters start at zero and learn little at it (a full "
            f"fine-tune's rate is 1e-5 to 2e-5); LoRA trains at 1e-4 to 2e-4 (leave learning_rate unset for ftctl's "
            f"{_rate(default)})"
        )
    return None


def _rate(rate: float) -> str:
    """A learning rate as recipes write it: 2e-4, 1.5e-5."""
    mantissa, exponent = f"{rate:.2e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"


def _checkpoints(spec: RunSpec, plan: Plan) -> None:
    """The plan's step time and save_steps, and the notes on them."""
    from ftctl.preflight import checkpoint_gb

    step_s = step_seconds(plan, spec.model_max_length)
    plan.step_s = round(max(step_s, MIN_STEP_S), 3) if step_s else None
    plan.save_steps = checkpoint_cadence(spec, plan, checkpoint_gb(plan)[0])
    plan.notes += _evaluated_between_checkpoints(spec, plan.save_steps)
    if cost := checkpoint_cost(spec, plan):
        plan.notes.append(f"{cost[0]}: {cost[1]}")


def with_lora_targets(spec: RunSpec, shape: ModelShape) -> tuple[RunSpec, str]:
    """(``spec`` with lora_target_modules PEFT_TARGETS named: PEFT's modules for the model's type, what TRL adapts
    where its lora_target_modules is left out; the note that says which). As it is where PEFT is not installed here
    or the model's type is not known (the trainer names them, or PEFT picks them itself). PlanError where PEFT has
    none for the model's type, as PEFT refuses it. A checkpoint's settings record the names, as those of a run that
    gave them (TRL's default was q_proj,v_proj here whatever the model)."""
    from ftctl import peft_targets

    if spec.method not in ("lora", "qlora") or spec.lora_target_modules.strip() != PEFT_TARGETS:
        return spec, ""
    kind = _model_type(spec, shape)
    if not kind or not peft_targets.installed():
        why = "PEFT is not installed here" if kind else "the model's type is not known here"
        return spec, (
            f"lora_target_modules {PEFT_TARGETS} (TRL's default): PEFT's modules for the model's type, named by the "
            f"trainer ({why}); planned as q_proj,v_proj"
        )
    names = peft_targets.default_targets(kind)
    if not isinstance(names, list):
        layers = _linear_layers(spec, shape)
        which = f" (its linear layers: {', '.join(layers)})" if layers else ""
        pattern = (
            f"'s default for {kind} models is a pattern, {names!r}" if names else f" has no default for {kind} models"
        )
        raise PlanError(
            f"lora_target_modules {PEFT_TARGETS} (TRL's default where a run file leaves it out) adapts PEFT's modules "
            f"for the model's type, and PEFT{pattern} ({spec.model_name_or_path}): name the layers to adapt, "
            f"-o lora_target_modules=NAME,NAME{which}, or give all-linear for every one but the output head."
        )
    named, said = ",".join(names), kind if shape.model_type else "Llama-shaped"  # a known id's, read as llama's
    return replace(spec, lora_target_modules=named), (
        f"lora_target_modules {named}: PEFT's for {said} models ({PEFT_TARGETS}, TRL's default), as TRL adapts them"
    )


def _model_type(spec: RunSpec, shape: ModelShape) -> str:
    """The model's type as PEFT reads it (its config's model_type); a known id's where the table leaves it out,
    llama's (Llama, SmolLM2, Vicuna); where the shape was given (--model-params), its config's where it can be read."""
    if shape.model_type or shape.source == "known id":
        return shape.model_type or "llama"
    if shape.source != "--model-params":
        return ""
    try:
        return model_shape(spec.model_name_or_path, revision=spec.model_revision).model_type
    except (FtctlError, OSError, ValueError):
        return ""


def _linear_layers(spec: RunSpec, shape: ModelShape) -> list[str]:
    from ftctl.preflight import linear_layers  # (a meta-device model of its config: transformers, where it is here)

    return linear_layers(spec.model_name_or_path, shape)


def _kept_on_gpu(spec: RunSpec, req, shape: ModelShape, plan: Plan) -> str | None:
    """Where the planner offloads the optimizer only because of its own choices, what keeps it on the GPU: a global
    batch with no accumulation (whose fp32 gradient buffer is what did not fit: a 4B fft on one 80 GB card), or 8-bit
    AdamW states. None where the plan is on the GPU, or the run asked for its strategy."""
    if plan.strategy not in OFFLOAD_STRATEGIES or spec.strategy:
        return None
    on_gpu = [s for s in _strategies(spec.method, req.world_size, req.nodes, None) if s not in OFFLOAD_STRATEGIES]

    def first(**changes) -> Plan | None:
        return next(
            (p for s in on_gpu if (p := _fit(replace(spec, strategy=s, **changes), req, shape, spec.method))), None
        )

    offers = []
    if not spec.global_batch_size and not spec.gradient_accumulation_steps:  # the default batch, not the run's
        smaller = [b for b in (16, 8, 4, 2, 1) if req.world_size <= b < plan.global_batch_size]
        if fits := next((p for b in smaller if (p := first(global_batch_size=b))), None):
            offers.append(
                f"-o global_batch_size={fits.global_batch_size} (~{fits.memory_gb:.0f} GB/GPU, {fits.strategy})"
            )
    if not spec.optim and (fits := first(optim="adamw_8bit")):
        offers.append(
            f"-o optim=adamw_8bit (bitsandbytes' 8-bit AdamW states; ~{fits.memory_gb:.0f} GB/GPU, {fits.strategy})"
        )
    if not offers:
        return None
    return (
        f"the optimizer is offloaded ({plan.strategy}) only because it does not fit beside the rest: "
        f"{' or '.join(offers)} keeps everything on the GPU, without the wait on the CPU each step"
    )


def _attention(spec: RunSpec, req, shape: ModelShape) -> tuple[str, bool, str | None]:
    """The plan's attention, whether what runs for it keeps each head's (S x S) scores (eager attention), and a note
    where it is not the GPU's default: sdpa for Llama 4 past its attention_chunk_size, whose chunked layers the
    varlen kernels would run over whole documents (asked for by name, refused as the trainer would at the first
    such document)."""
    flash = not req.is_cpu and req.tier.flash_attn2
    attn = plan_attention(spec.attn_implementation, flash, shape.attn_softcap, shape.attn_sinks)
    note = None
    seq = spec.model_max_length
    if why := chunk_problem(shape.attn_chunk, attn, seq, f"model_max_length={seq} lets a row hold"):
        if spec.attn_implementation:
            raise FtctlError(why)
        attn = SDPA
        note = (
            f"sdpa attention: Llama 4's chunked layers attend within {shape.attn_chunk:,}-token chunks, "
            f"which the varlen kernels do not, and a document may have {seq:,} tokens (sdpa builds the chunked "
            f"mask: exact, slower; -o model_max_length={shape.attn_chunk} for varlen)"
        )
    return attn, keeps_scores(attn, flash, shape.attn_softcap, shape.attn_sinks), note


def gpu_precision(spec: RunSpec, tier: gpu_table.GpuTier) -> str:
    """The 16-bit dtype a GPU plan trains in: bf16 where the card has it and the run does not say fp16 (or bf16:
    false), else fp16. The one owner: _fit plans in it and _refusal sizes the leanest plan in it (it sized a V100's
    in bf16, without qlora's fp32 residual stream under fp16, and said 8B qlora at 32,768 tokens needed 21.5 GB of
    the 31.4 it was refused)."""
    return "bf16" if tier.bf16 and not spec.fp16 and spec.bf16 is not False else "fp16"


def _fit(spec: RunSpec, req, shape: ModelShape, method: str, capacity_gb: float | None = None) -> Plan | None:
    """The fastest plan that fits the card (or ``capacity_gb`` a GPU, when given); None when none does (or when
    qlora_refused: no refusal offers qlora of an MXFP4 checkpoint)."""
    if method == "qlora" and shape.quantized in DEQUANTIZED_ON_LOAD:
        return None
    seq = spec.model_max_length
    world = req.world_size
    notes: list[str] = []
    attn, scores, attn_note = _attention(spec, req, shape)
    if attn_note:
        notes.append(attn_note)
    if said := experts_stay_16bit(method, shape):
        notes.append(said)
    asked = spec.attn_implementation
    if scores and shape.attn_sinks and asked != EAGER:
        notes.append(
            "this model's attention adds learned sink logits, which SDPA and flash-attn 2 do not (flash-attn 2 would "
            "leave them out unsaid): eager attention, its (S x S) scores counted"
        )
    elif scores and shape.attn_softcap and asked in ("varlen", "flash_attention_2"):
        notes.append(
            f"{req.tier.name if req.tier else 'CPU'} runs no FlashAttention kernel and this model soft-caps its "
            f"attention logits, which SDPA cannot: eager attention, its (S x S) scores counted"
        )
    elif scores and shape.attn_softcap and spec.attn_implementation != EAGER:
        notes.append(
            "this model soft-caps its attention logits, which SDPA cannot: eager attention, its (S x S) scores counted"
        )
    if req.is_cpu:
        precision = "fp32"
        if shape.params_b > CPU_MAX_PARAMS_B:
            return None
        if method == "qlora":
            notes.append("qlora on CPU: bitsandbytes' 4-bit weights run here")
        if spec.bf16 or spec.fp16:
            notes.append(f"CPU trains in fp32: {'bf16' if spec.bf16 else 'fp16'}=true is not used here")
        capacity = spec.host_memory_gb * HEADROOM if spec.host_memory_gb else None  # RAM is the device memory
    else:
        t = req.tier
        precision = gpu_precision(spec, t)
        if spec.bf16 and not t.bf16:
            notes.append(f"{t.name} has no bf16: using fp16")
        if spec.bf16 is False and not spec.fp16 and t.bf16:  # transformers would train in fp32 here
            notes.append(
                "bf16=false: training in fp16 (ftctl trains on GPUs in 16 bits, not fp32; fp16 is less stable than "
                "bf16): leave bf16 out for bf16, or -o fp16=true to say fp16"
            )
        if precision == "fp16" and shape.model_type in FP16_OVERFLOWS:
            notes.append(
                f"{t.name} has no bf16, and Gemma 2 and 3's activations overflow fp16 (infinities on T4, V100 and RTX "
                "20xx cards, as Unsloth reported): the losses may turn to nan; a card with bf16 (Ampere or newer: "
                "A10G, L4, A100, H100) trains it as it was trained"
            )
        if asked in ("varlen", "flash_attention_2") and not t.flash_attn2 and not scores:
            notes.append(f"{t.name} runs no FlashAttention kernel (Ampere and newer do): {asked} gives way to SDPA")
        capacity = capacity_gb if capacity_gb is not None else t.capacity_gb * HEADROOM
    trainable = _trainable_b(method, shape, spec)
    want_global = spec.global_batch
    packing_asked = asked_packing(spec, attn, shape)
    one_row = one_row_first(spec, req, attn, packing_asked)
    micro_choices = _micro_choices(spec, req, want_global, one_row)
    ckpt_choices = [spec.gradient_checkpointing] if spec.gradient_checkpointing is not None else [False, True]
    host_gb = spec.host_memory_gb or assumed_host_gb(spec, req)
    # torch's fused AdamW (on CPU as well: SmolLM2-135M fft 1.95 -> 1.79 s a step on 2 cores, the same
    # losses). qlora on GPUs is planned with bitsandbytes' paged 8-bit AdamW, the leanest, and then takes
    # fused AdamW where its fp32 states fit at the same micro-batch: on an H200 the paged optimizer's
    # per-tensor launches left the GPU idle 45 ms of each 1.17 s step of 8B qlora (bench/NOTES.md, v6)
    optim = spec.optim or ("paged_adamw_8bit" if method == "qlora" and not req.is_cpu else "adamw_torch_fused")
    best = None
    strategies = _strategies(method, world, req.nodes, spec.strategy)
    if req.is_cpu:
        strategies = _on_cpu(strategies)

    def terms_at(strategy: str, ckpt: bool, micro: int, optim: str = optim) -> tuple[dict, str | None]:
        # a packed row that packed_row_problem refuses is planned unpacked (below), unless packing was asked
        packed = packing_asked and (bool(spec.packing) or not packed_row_problem(shape.row_floor, micro * seq, micro))
        mask = attention_mask(attn, packed, micro, seq)
        terms = memory_terms(
            method,
            strategy,
            shape,
            world,
            micro,
            seq,
            ckpt,
            trainable,
            req.is_cpu,
            precision=precision,
            accum=accumulation_steps(spec, micro, world),
            optim=optim,
            lora_dropout=spec.lora_dropout,
            lora_r=spec.lora_r,
            dora=spec.use_dora,
            expert_adapters=adapts_experts(method, shape, spec),
            scores=scores,
            mask=mask,
        )
        return terms, mask

    for strategy in strategies:
        for ckpt in ckpt_choices:
            for micro in micro_choices:
                terms, mask = terms_at(strategy, ckpt, micro)
                total = sum(terms.values())
                host_need = (
                    offload_host_gb(shape.params_b, world, req.per_node) if strategy in OFFLOAD_STRATEGIES else None
                )
                if capacity is not None and total > capacity:
                    continue
                if host_need and host_gb and host_need > host_gb:
                    continue
                best = (strategy, ckpt, micro, terms, total, host_need, mask)
                break
            if best:
                break
        if best:
            break
    if best is None:
        return None
    strategy, ckpt, micro, terms, total, host_need, mask = best
    accum = accumulation_steps(spec, micro, world)
    if optim == "paged_adamw_8bit" and not spec.optim:
        fused = terms_at(strategy, ckpt, micro, "adamw_torch_fused")[0]
        if _fits(fused, capacity):
            optim, terms, total = "adamw_torch_fused", fused, sum(fused.values())
    real_global = micro * accum * world
    if req.is_cpu and not spec.per_device_train_batch_size and micro < max(_micro_sizes(req, want_global)):
        notes.append(
            f"micro-batch {micro} x {accum} accumulation: on CPU a larger one trains no faster at {seq:,}-token rows, "
            "and each sequence more takes GBs of RAM"
        )
    if real_global != want_global and not spec.gradient_accumulation_steps:
        notes.append(f"global batch {want_global} rounded to {real_global} ({micro} x {accum} x {world})")
    elif spec.global_batch_size not in (None, real_global):  # both given: accumulation's
        notes.append(
            f"global_batch_size={spec.global_batch_size} unused: gradient_accumulation_steps={accum} makes the batch "
            f"{real_global} ({micro} x {accum} x {world}); leave one of them out"
        )
    if (
        spec.per_device_train_batch_size
        and not (spec.gradient_accumulation_steps or spec.global_batch_size)
        and accum > 1
    ):
        notes.append(  # a FastChat or TRL run file's batch: there it is the step's, at accumulation 1
            f"per_device_train_batch_size={micro} without gradient_accumulation_steps: ftctl accumulates {accum} of "
            f"them to its global batch of {real_global} (transformers and TRL step after each: -o "
            "gradient_accumulation_steps=1 for that)"
        )
    if (spec.per_device_eval_batch_size or 0) > micro and spec.evaluates:
        notes.append(
            f"per_device_eval_batch_size={spec.per_device_eval_batch_size} is over the training's micro-batch of "
            f"{micro}, which the memory estimate is for: an evaluation may run out of memory"
        )
    notes += unused_settings(spec, method)
    if shape.context and spec.model_max_length > shape.context:  # the trainer says it too, after the queue wait
        notes.append(
            f"model_max_length {spec.model_max_length} is over the model's context of {shape.context} tokens: "
            f"-o model_max_length={shape.context} unless you are extending its context"
        )
    if strategy in OFFLOAD_STRATEGIES and spec.optim and spec.optim not in ("adamw_torch", "adamw_torch_fused"):
        notes.append(f"optim={spec.optim} is not what runs: an offloaded optimizer is {OFFLOADED_OPTIMIZER}")
    if strategy == "zero2_offload":
        notes.append("optimizer offloaded to CPU RAM (DeepSpeed's CPU Adam): each step waits for it")
    if strategy == "zero3_offload":
        notes.append("optimizer and weights offloaded to CPU RAM: expect slow steps")
    if host_need and not spec.host_memory_gb:
        notes.append(_host_note(spec, host_gb, host_need))
    # said only where two rows would have fitted too: where memory alone leaves one row (qlora 7B at 8k on a T4), the
    # mask is not why (review 60b)
    if one_row and micro == 1 and 2 in micro_choices and _fits(terms_at(strategy, ckpt, 2)[0], capacity):
        saved = sdpa_mask_gb(shape, 2, seq, 2 * seq, ckpt)
        notes.append(
            f"one {seq:,}-token row a micro-batch (x {accum} accumulation): under sdpa a micro-batch of several rows "
            "of different lengths gets transformers' padding mask, and sdpa then computes every score (not the causal "
            f"half) at its memory-efficient kernel's speed and keeps a 16-bit copy of the mask in every layer "
            f"(+{saved:.1f} GB at 2 rows); one row gets none (-o per_device_train_batch_size to choose)"
        )
    packing = packing_asked
    if packing and (why := packing_refused(shape.model_type, req.is_cpu, attention=attn)):  # kernels: trainer
        raise FtctlError(why)
    # TRL's padding-free collator makes one row of a micro-batch's packed sequences
    if packing and (why := packed_row_problem(shape.row_floor, micro * seq, micro)):
        if spec.packing:
            raise FtctlError(why)
        packing = False
        notes.append(
            f"not packed: a packed row here would hold up to {micro * seq:,} tokens ({micro} x {seq:,}), and Llama "
            f"4's NoPE layers scale queries by the row's place, not the document's, from its token "
            f"{shape.row_floor:,} on (floor_scale); packed rows under {shape.row_floor:,} tokens are exact"
            + (
                f": -o per_device_train_batch_size={fits} -o packing=true"
                if (fits := (shape.row_floor - 1) // seq)
                else ""
            )
        )
    if packing and spec.packing is None and (spec.per_device_train_batch_size or spec.gradient_accumulation_steps):
        notes.append(  # the batch of another tool's run file, which counted conversations
            f"packing: each of the {real_global} sequences a step is a {spec.model_max_length:,}-token row of several "
            "conversations, so an epoch takes fewer steps than one conversation a sequence (FastChat's, TRL's, "
            "axolotl's and LLaMA-Factory's default: -o packing=false for that)"
        )
    return Plan(
        method=method,
        gpus=str(req),
        tier=req.tier.name if req.tier else None,
        gpu_memory_gb=round(req.tier.capacity_gb, 2) if req.tier else None,
        nodes=req.nodes,
        gpus_per_node=req.per_node,
        world_size=world,
        model=shape,
        precision=precision,
        weights_dtype=weights_dtype(method, strategy, precision),
        lora_kernels=lora_kernels(method, strategy, shape, precision, req.is_cpu, spec.lora_r, spec.use_dora),
        attn_implementation=attn,
        strategy=strategy,
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=accum,
        global_batch_size=real_global,
        gradient_checkpointing=ckpt,
        packing=packing,
        optim=optim,
        learning_rate=spec.learning_rate or replace(spec, method=method).lr,
        trainable_params_b=trainable,
        memory_gb=round(total, 2),
        memory={k: round(v, 2) for k, v in terms.items()},
        host_memory_gb=round(host_need, 1) if host_need else None,
        evaluation=evaluation(spec),
        data_mix=data_mix(spec),
        notes=notes,
    )


def _on_cpu(strategies: list[str]) -> list[str]:
    """Those of ``strategies`` a CPU run takes, where any: offloading to CPU RAM from the CPU gains nothing, FSDP2
    needs GPUs (distributed.py)."""
    return [s for s in strategies if s not in (*OFFLOAD_STRATEGIES, "fsdp")] or strategies


def _micro_sizes(req, want_global: int) -> list[int]:
    """The micro-batches the planner tries, largest first: those whose processes together make at most the global
    batch."""
    sizes = (4, 2, 1) if req.is_cpu else (16, 8, 4, 2, 1)
    return [m for m in sizes if m * req.world_size <= max(want_global, req.world_size)] or [1]


def _micro_choices(spec: RunSpec, req, want_global: int, one_row: bool = False) -> list[int]:
    """The micro-batches _fit tries in turn, the first that fits taken: the run's own, else the largest first (a GPU
    runs a larger one faster), but 1 first where ``one_row`` (one_row_first). On CPU none larger than _cpu_micro_batch:
    a larger one trains no faster and adds its sequences' activations to the RAM a node needs (module docstring: on
    CPU)."""
    if spec.per_device_train_batch_size:
        return [spec.per_device_train_batch_size]
    sizes = _micro_sizes(req, want_global)
    if one_row:
        return [1, *(m for m in sizes if m != 1)]
    return [m for m in sizes if m <= _cpu_micro_batch(spec, sizes)] if req.is_cpu else sizes


def _fits(terms: dict, capacity: float | None) -> bool:
    return capacity is None or sum(terms.values()) <= capacity


def asked_packing(spec: RunSpec, attn: str, shape: ModelShape) -> bool:
    """Whether the run packs before _fit's checks (packing_refused, packed_row_problem): as asked, else
    default_packing's."""
    return spec.packing if spec.packing is not None else default_packing(attn, shape.model_type)


def one_row_first(spec: RunSpec, req, attn: str, packing: bool) -> bool:
    """Whether _fit tries one row a micro-batch first: unpacked sdpa on a GPU at rows of SDPA_ONE_ROW_TOKENS or more,
    the micro-batch not asked for. Several rows of different lengths get transformers' padding mask (attention_mask),
    under which sdpa computes every score at MASKED_ATTENTION_MFU and keeps the mask a layer (sdpa_mask); one unpadded
    row gets none (is_causal). v112 on an H100, 1B lora: 2 x 8,192 rows took 2.49 s a step with the mask, 1.23 s with
    rows of one length, and peaked 5.5 GiB higher; 2 x 16,384 ran out of memory. A row that long fills the GPU's
    matmuls alone (one row a micro-batch: not measured)."""
    return (
        not req.is_cpu
        and attn == SDPA
        and not packing
        and not spec.per_device_train_batch_size
        and spec.model_max_length >= SDPA_ONE_ROW_TOKENS
    )


def _cpu_micro_batch(spec: RunSpec, sizes: list[int]) -> int:
    """The largest micro-batch a CPU plan takes: the leanest of ``sizes`` with at least CPU_MICRO_TOKENS tokens (rows
    enough for the matrix multiplies to keep the cores busy), the largest where none has that many."""
    return next((m for m in reversed(sizes) if m * spec.model_max_length >= CPU_MICRO_TOKENS), sizes[0])


# what the planner chooses to fit a card, and so what it may change when a run did not fit (the optimizer only
# where the user left it to the planner)
FIT_KNOBS = ("strategy", "gradient_checkpointing", "per_device_train_batch_size", "optim")


def within(spec: RunSpec, plan: Plan, capacity_gb: float, keep_optim: bool = False) -> Plan | None:
    """The fastest plan of this run estimated to need at most ``capacity_gb`` a GPU, the planner choosing the
    batch, checkpointing and strategy again even where the user forced them; None when none fits. With
    ``keep_optim`` the plan's optimizer stays (a checkpoint's optimizer states continue under no other)."""
    free = replace(spec, strategy=None, gradient_checkpointing=None, per_device_train_batch_size=None)
    if keep_optim:
        free = replace(free, optim=plan.optim)
    return _fit(free, gpu_table.parse(plan.gpus), plan.model, plan.method, capacity_gb=capacity_gb)


def overrides(spec: RunSpec, old: Plan, new: Plan) -> dict[str, object]:
    """The ``-o KEY=VALUE`` that make the planner choose plan ``new`` for ``spec`` where it chose ``old``: the
    knobs that differ, or all of them where with those alone it would choose otherwise on the whole card."""
    diff = {k: getattr(new, k) for k in FIT_KNOBS if getattr(new, k) != getattr(old, k)}
    again = _fit(replace(spec, **diff), gpu_table.parse(old.gpus), old.model, old.method)
    if again is None or any(getattr(again, k) != getattr(new, k) for k in FIT_KNOBS):
        return {k: getattr(new, k) for k in FIT_KNOBS}
    return diff


def evaluation(spec: RunSpec) -> str | None:
    """The plan's evaluation row (trainer/run.py's evaluation_args runs it)."""
    if not spec.evaluates:
        return None
    share = (
        f"{100 * spec.eval_split:.3g}% of the training rows"
        if spec.eval_split < 1
        else f"{spec.eval_split:.0f} training rows"
    )
    held = spec.eval_data_path or f"{share}, held out (seed {spec.seed})"
    stop = (
        f"; stops after {spec.early_stopping_patience} evaluations without a lower one"
        if spec.early_stopping_patience
        else ""
    )
    best = (
        "; the final model: the lowest one's checkpoint (load_best_model_at_end)" if spec.load_best_model_at_end else ""
    )
    return f"loss {spec.eval_when} and at the end, on {held}{stop}{best}"


def data_mix(spec: RunSpec) -> str | None:
    """The plan's data mix row (trainer/data.py's mix does it)."""
    if not spec.data_mix:
        return None
    each = ", ".join(f"{path} x{weight:g}" for path, weight in spec.data_mix)
    return f"{each} (each one's rows that many times an epoch, drawn with seed {spec.seed})"


# ------------------------------------------------------------------------------------------ checkpoints
# What a checkpoint costs, the assumptions in one place (checkpoint_cadence). The write speed is preflight's
# SAVE_GBPS (0.5 GB/s, measured: bench/NOTES.md v77-v80), which the save at Slurm's USR2 is timed with too.
UPLOAD_GBPS = 0.5  # what one node uploads a checkpoint to an object store at, in the background while training goes on
# The step time's speed assumptions (checkpoint cadence, the run's length and ftctl.sky.cost's price follow from them):
# the share of its GPUs' dense 16-bit peak an adapter run's (lora, qlora) weights' matmuls run at, by the model's hidden
# width: v117, H100, lora of the 1B, 3B and 8B shapes at 2k tokens, fitted with attention at ATTENTION_MFU: 0.349,
# 0.445, 0.544 (8B at 8k tokens: 0.544 again; v110's 1B: 0.358). The GEMMs grow as H x H a token and layer, the
# adapters' own unfused passes as H: a wider model runs nearer fft's speed. Between two widths interpolated, outside
# them the nearest measured (a wider model's step is then planned long, not short). qlora ran at lora's step (1B: the
# same to 0.3%; 8B: 1.03x, its NF4 dequantizing), so it is planned as lora.
ADAPTER_MFU = ((2048, 0.35), (3072, 0.445), (4096, 0.54))
ATTENTION_MFU = 0.26  # ...and attention's own (v110, H100, torch varlen_attn = FlashAttention-2's kernels: 0.257,
# fitted over 2k/16k/32k-token documents; one speed at 0.35 for both predicted 32k steps 1.20x short)
FULL_MFU = 0.53  # the weights' speed where every weight trains (fft): v112, H100, 1B fft took lora's step time
# (1.02 / 1.35 / 1.72 s at 2k / 8k / 16k against lora's 1.01 / - / 1.72): its 6 x params at 0.533 of peak, fitted with
# attention at ATTENTION_MFU; at 0.35 the plan was 1.48x / 1.34x / 1.29x long (adapters' own passes, unfused, cost
# lora about what the weight gradients' matmuls cost fft)
# Each micro-batch also passes every trained weight through memory beyond what its matmuls read: the fp32 master
# cast to 16-bit for the forward, each gradient added into the fp32 accumulated one (~16 B a parameter moved, by
# small elementwise kernels). v117, H100, fft of the 3B shape at micro-batch 2 (16 micro-batches a step): 3.10 s a
# step, 2.68 by its FLOPs alone; the 1B's at 2 micro-batches (v112/v113: 1.02-1.08 s, 1.03 by its FLOPs) hardly
# shows it. 30 B a trained parameter at the card's data-sheet bandwidth fits both (3B: 1.01x; 1B: 1.05 s planned):
# fitted on these rows, one of them with many micro-batches. Adapters train too few weights for it to show.
MICRO_BATCH_BYTES = 30
# what a frozen block keeps for the backward of sft, a share of a trained block's activations, where the backward
# runs through it (a tied head: the embedding trains): v115, H100, 1B: 1,606 of 2,371 MiB saved (no weight gradient's
# inputs; the elementwise backward's stay) and its 16-bit weight copy; below the trained blocks of an untied model 0
FROZEN_BLOCK_SHARE = 0.78  # 0.76 fits the peak; a 2% margin, as the other terms are fitted over, not under
MASKED_ATTENTION_MFU = 0.14  # sdpa under a mask (torch's memory-efficient kernel), every score of the row counted:
# v112, H100, lora 1B, padded micro-batches of 2 x 8k and 16 x 2k: 0.135-0.14 (unmasked, is_causal: 0.38)
CHECKPOINT_MINUTES = 30  # chosen cadence: at most this much training between checkpoints (what a preemption loses)
MAX_SAVE_SHARE = 0.1  # chosen cadence: writing checkpoints takes at most this share of the run's time
MIN_STEP_S = 0.01  # no step is predicted faster (a tiny model's prediction rounded to 0 s: a division by zero)
NEGLIGIBLE_WRITE_S = 10.0  # a checkpoint written faster (adapters, small models) costs nothing worth a saving rule


def attention_flops(plan: Plan, seq: int) -> float:
    """FLOPs of attention's own matmuls (the scores Q K^T, and the scores times V) a token, forward and backward, at
    rows of ``seq`` tokens: PaLM's 12 x layers x heads x head width x attended length (Chowdhery et al. 2022, appendix
    B, the model FLOPs MFU is counted in: two matmuls of 2 FLOPs a multiply-add, the backward twice the forward; the
    Megatron-LM paper's 72 B s l h^2 x s/6h is the same 12 s l h a token) halved for the causal mask (a token attends
    to those before it, half a document on average): 6 x layers x q_width x attended. No weights take part, so adapters
    save none of it. A token attends within its own document (varlen kernels, and unpacked rows, one document each);
    the plan reads no data (its documents' lengths are unknown until the trainer tokenizes it), so a document is
    counted as long as a row, ``seq`` (model_max_length): an upper bound, which short packed documents stay far below.
    A packed row under a dense block-diagonal mask (sdpa, eager: transformers builds it from the restarting
    position_ids) has every score of the row computed, masked or not: not halved, exact; and that row is the whole
    micro-batch (TRL's padding-free collator: micro x seq tokens, v112). An unpacked sdpa micro-batch of several rows
    gets their padding mask, so every score too (rows all of one length get none: an upper bound then)."""
    m = plan.model
    full = m.layers - m.linear_layers  # linear attention: no scores, linear in the row's length (its weights' FLOPs)
    if full_square(plan):
        return 12 * full * m.q_width * scored_row(plan, seq)
    windowed = m.window_layers if m.window and plan.attn_implementation not in (SDPA, EAGER) else 0
    w = min(m.window, seq)  # a token attends to the last w: w on average, less the row's first w tokens' half
    return 12 * m.q_width * ((full - windowed) * seq / 2 + windowed * (w - w * w / (2 * seq)))


def attention_mask(attn: str, packing: bool, micro: int, seq: int) -> tuple[int, int] | None:
    """(rows, tokens a row) whose every (row x row) score the attention computes under transformers' mask, None where
    it gets none: sdpa's and eager's kernels skip no masked block (flex_attention's block mask and the varlen kernels
    do). The mask: a packed row's block-diagonal one (TRL's padding-free collator concatenates the micro-batch's
    sequences into one row of micro x seq tokens, v112); under sdpa, an unpacked micro-batch's padding too (several
    rows: they differ in length, so transformers hands sdpa a (rows, 1, S, S) mask, not is_causal; v112 recorded both).
    One unpadded row has no padding to mask (transformers' _ignore_causal_mask_sdpa: is_causal). S is counted at
    ``seq`` (model_max_length): an upper bound, as the rows' lengths are the data's."""
    if attn not in (SDPA, EAGER):
        return None
    if packing:
        return 1, micro * seq
    return (micro, seq) if attn == SDPA and micro > 1 else None


def full_square(plan: Plan) -> bool:
    """A row's attention computes all (row x row) scores: attention_mask."""
    return attention_mask(plan.attn_implementation, plan.packing, plan.per_device_train_batch_size, 1) is not None


def scored_row(plan: Plan, seq: int) -> int:
    """The tokens of a row whose every score full_square counts (attention_mask's row: a packed micro-batch's micro x
    seq), else ``seq``."""
    mask = attention_mask(plan.attn_implementation, plan.packing, plan.per_device_train_batch_size, seq)
    return mask[1] if mask else seq


def weights_mfu(plan: Plan) -> float:
    """The speed the plan's weights' FLOPs run at, a share of peak: FULL_MFU where no adapter runs (fft, and sft: v115,
    H100, its top 2 of 16 blocks trained ran at 0.59 of peak counting weight_flops_per_token's work), else
    adapter_mfu of the model's width."""
    return FULL_MFU if plan.method in ("fft", "sft") else adapter_mfu(plan.model.hidden)


def adapter_mfu(hidden: int) -> float:
    """An adapter run's weights' speed at a model ``hidden`` wide (ADAPTER_MFU): interpolated between the widths
    measured, the nearest one's outside them."""
    (low, slow), *_, (_, fast) = ADAPTER_MFU
    if hidden <= low:
        return slow
    for (w0, m0), (w1, m1) in zip(ADAPTER_MFU, ADAPTER_MFU[1:]):
        if hidden <= w1:
            return m0 + (m1 - m0) * (hidden - w0) / (w1 - w0)
    return fast


def attention_mfu(plan: Plan) -> float:
    """Attention's speed, a share of peak: MASKED_ATTENTION_MFU for sdpa under a mask, else ATTENTION_MFU (eager's
    own is unmeasured)."""
    return MASKED_ATTENTION_MFU if plan.attn_implementation == SDPA and full_square(plan) else ATTENTION_MFU


def weight_flops_per_token(method: str, shape: ModelShape, trainable_b: float | None = None) -> float:
    """The weights' FLOPs a token trains with: the forward's 2 x params, the backward's 2 x params for the gradient
    of each layer's input and 2 x params for the trained weights' own: 6 x params for full updates, 4 x params for
    adapters (which skip the weight gradients). sft (``trainable_b``: its trained billions, the top blocks and the head)
    computes its trained weights' gradients only, and its inputs' through every block where the head is the input
    embedding (tied: the embedding trains, so the backward reaches it) or the config is unread, else through the
    blocks it trains only (callbacks.FrozenInputsNoGradient under checkpointing). v115, H100, the 1B shape, top 2 of 16
    blocks: tied 0.88 s a step against fft's 1.08, untied 0.56 (0.77 and 0.54 of fft's work)."""
    n = shape.active_params_b
    if method != "sft" or trainable_b is None:
        return (6 if method in ("fft", "sft") else 4) * n * 1e9
    reached = trainable_b if shape.tied is False else n
    return 2 * (n + reached + trainable_b) * 1e9


def trained_blocks(shape: ModelShape, trainable_b: float) -> float:
    """The blocks sft trains, from its trained billions (the inverse of _trainable_b's count: the top blocks and the
    head)."""
    embedding = shape.vocab * shape.hidden / 1e9
    per_layer = (shape.params_b - embedding) / shape.layers
    return min(float(shape.layers), max(0.0, (trainable_b - embedding) / per_layer))


def backward_reach(plan: Plan) -> float:
    """The share of the layers the backward runs through: 1, but for sft of an untied model (weight_flops_per_token):
    its trained blocks'."""
    m = plan.model
    if plan.method != "sft" or m.tied is not False:
        return 1.0
    return trained_blocks(m, plan.trainable_params_b) / m.layers


def flops_per_token(plan: Plan, seq: int) -> tuple[float, float]:
    """(weights', attention's) FLOPs a token trains with at rows of ``seq`` tokens: weight_flops_per_token and
    attention_flops, whose backward (two thirds of it) runs in the layers the backward reaches (backward_reach).
    Under gradient checkpointing each decoder block the backward reaches runs its forward again: its weights' 2 x
    params and attention's forward third once more (v117, H100, 1B sft, tied: 1.08 s a step against 0.885 without;
    the plan said 0.82 before it counted this)."""
    reach = backward_reach(plan)
    weights = weight_flops_per_token(plan.method, plan.model, plan.trainable_params_b)
    attention = attention_flops(plan, seq) * (1 + 2 * reach) / 3
    if plan.gradient_checkpointing:
        weights += 2 * block_params_b(plan.model) * reach * 1e9
        attention += attention_flops(plan, seq) * reach / 3
    return weights, attention


def block_params_b(shape: ModelShape) -> float:
    """The decoder blocks' weights a token passes through, billions: the active ones less the input embedding and an
    untied head (a config unread: tied, the larger count)."""
    embedding = shape.vocab * shape.hidden / 1e9
    return max(0.0, shape.active_params_b - embedding * (2 if shape.tied is False else 1))


def tokens_per_second(plan: Plan, seq: int) -> float | None:
    """Tokens the plan's GPUs train a second at rows of ``seq`` tokens, roughly: their dense bf16/fp16 peak over a
    token's flops_per_token, the weights' at weights_mfu and attention's at attention_mfu, and each micro-batch's
    micro_batch_seconds shared by its tokens; None on CPU."""
    if not plan.tier:
        return None
    weights, attention = flops_per_token(plan, seq)
    rate = weights / weights_mfu(plan) + attention / attention_mfu(plan)
    per_token = rate / (gpu_table.TIERS[plan.tier].peak_tflops * 1e12)
    per_token += micro_batch_seconds(plan) / (plan.per_device_train_batch_size * seq)
    return plan.world_size / per_token


def micro_batch_seconds(plan: Plan) -> float:
    """Seconds a GPU spends on each micro-batch beyond its FLOPs: MICRO_BATCH_BYTES of each trained parameter it holds
    (a shard of them where ZeRO or FSDP shards them) at its memory's bandwidth. 0 on CPU."""
    if not plan.tier:
        return 0.0
    # FSDP2 under accumulation keeps each rank's gradients unsharded until the last micro-batch (accelerate's no_sync:
    # set_requires_gradient_sync(False); module docstring: accumulated_grads), so its ranks add whole ones
    unsharded = plan.strategy == "fsdp" and plan.gradient_accumulation_steps > 1
    shards = plan.world_size if plan.strategy in (*DEEPSPEED_STRATEGIES, "fsdp") and not unsharded else 1
    bandwidth = gpu_table.TIERS[plan.tier].memory_tbps * 1e12
    return plan.trainable_params_b * 1e9 / shards * MICRO_BATCH_BYTES / bandwidth


def step_seconds(plan: Plan, seq: int) -> float | None:
    """Seconds an optimizer step takes, predicted (every sequence ``seq`` tokens long, each one document: an upper
    bound without packing, and for attention with it); None where no throughput is predicted (CPU)."""
    rate = tokens_per_second(plan, seq)
    return plan.global_batch_size * seq / rate if rate else None


def attention_words(plan: Plan, seq: int) -> tuple[str, str]:
    """(what the step time counts attention at, why), for the plan's step time row and the price estimate: ("attention
    is 76% of the FLOPs, counted at 131,072-token documents", "model_max_length, an upper bound: ...")."""
    weights, attention = flops_per_token(plan, seq)
    share = f"attention is {attention / (weights + attention):.0%} of the FLOPs"
    m, layers = plan.model, []
    if m.window_layers and m.window < seq and not full_square(plan) and plan.attn_implementation not in (SDPA, EAGER):
        layers.append(f"{m.window_layers} of {m.layers} layers within their {m.window:,}-token window")
    if m.linear_layers:
        layers.append(
            f"{m.layers - m.linear_layers} of {m.layers} layers attend, {m.linear_layers} are linear attention"
        )
    share += f" ({', '.join(layers)})" if layers else ""
    if full_square(plan) and plan.packing:
        row = scored_row(plan, seq)
        return f"{share}, counted over whole {row:,}-token rows", (
            f"{plan.attn_implementation} computes every score of a packed row, a micro-batch's "
            f"{plan.per_device_train_batch_size} x {seq:,} tokens, masked or not"
        )
    if full_square(plan):
        return f"{share}, counted over whole {seq:,}-token rows", (
            f"{plan.attn_implementation} computes every score under a micro-batch's padding mask; "
            "rows all of one length get none, and take less"
        )
    if plan.packing:
        return f"{share}, counted at {seq:,}-token documents", (
            "model_max_length, an upper bound: shorter packed documents take less"
        )
    return f"{share}, counted at {seq:,}-token rows", "model_max_length, an upper bound: shorter rows take less"


def step_row(spec: RunSpec, plan: Plan) -> str:
    """The plan's step time row: the predicted seconds an optimizer step, at what speed, and its attention's share."""
    what, why = attention_words(plan, spec.model_max_length)
    speed = f"{weights_mfu(plan):.0%} of the GPUs' 16-bit peak ({attention_mfu(plan):.0%} for attention)"
    passes, n = micro_batch_seconds(plan), plan.gradient_accumulation_steps
    if plan.step_s and n * passes >= 0.05 * plan.step_s:  # worth a larger micro-batch
        speed += (
            f", and {n} micro-batches x {passes * 1e3:.0f} ms passing the trained weights through memory (fewer, "
            "larger micro-batches take less)"
        )
    return f"{_step_time(plan.step_s)} est. at {speed}; {what} ({why})"


def _step_time(seconds: float) -> str:
    """~1.1 s, ~40 s, ~390 s, ~27 min: a step's predicted time."""
    return f"~{seconds:.2g} s" if seconds < 10 else f"~{seconds:.0f} s" if seconds < 600 else _minutes(seconds)


def _write_s(gb: float) -> float:
    from ftctl.preflight import SAVE_GBPS

    return gb / SAVE_GBPS


def _nice(n: float, up: bool) -> int:
    """``n`` steps rounded (up or down) to a number people set: 1-9, then multiples of 5 below 100, and of a quarter
    of its power of ten above (15, 375, 1,250)."""
    if n < 10:
        return max(1, math.ceil(n) if up else math.floor(n))
    unit = 5 if n < 100 else 10 ** math.floor(math.log10(n)) // 4
    return int((math.ceil(n / unit) if up else math.floor(n / unit)) * unit)


def _gb(gb: float) -> str:
    """~128 GB, ~1.6 GB, ~59 MB."""
    return f"~{gb:,.0f} GB" if gb >= 10 else f"~{gb:.1f} GB" if gb >= 1 else f"~{max(1, round(gb * 1000))} MB"


def _cost_floor_steps(gb: float, step_s: float, remote: bool) -> int:
    """The fewest steps between checkpoints at which writing one takes at most MAX_SAVE_SHARE of the time and, for an
    object-store output, its upload keeps pace (done before the next is written)."""
    write = _write_s(gb)
    if write < NEGLIGIBLE_WRITE_S:
        return 1
    train_s = max(write * (1 / MAX_SAVE_SHARE - 1), (gb / UPLOAD_GBPS - write) if remote else 0.0)
    return math.ceil(train_s / step_s) if train_s > 0 else 1


def checkpoint_cadence(spec: RunSpec, plan: Plan, gb: float) -> int | None:
    """Steps between checkpoints: save_steps where given, None where saves_per_epoch is (the trainer counts them), else
    _chosen's."""
    if spec.save_steps or spec.saves_per_epoch:
        return spec.save_steps
    return _chosen(spec, plan, gb)[0]


def _chosen(spec: RunSpec, plan: Plan, gb: float) -> tuple[int, str]:
    """(steps between checkpoints, why not SAVE_STEPS; "" where they are) of a run that gives neither save_steps nor
    saves_per_epoch, for a checkpoint of ``gb``. SAVE_STEPS, unless the plan predicts a step time (GPU plans) that
    makes it wrong: fewer steps where SAVE_STEPS take longer than CHECKPOINT_MINUTES (a preemption loses less), more
    where writing a checkpoint that often would take over MAX_SAVE_SHARE of the run or its upload could not keep pace
    (that wins: a run that spends its time saving gains nothing). With eval_steps given, a divisor of it: each
    evaluation at a checkpoint, which keeps the lowest held-out loss's weights."""
    step_s = plan.step_s
    if step_s is None:
        return SAVE_STEPS, ""
    remote = storage.is_remote(spec.output)
    floor = _nice(_cost_floor_steps(gb, step_s, remote), up=True)
    ceiling = _nice(CHECKPOINT_MINUTES * 60 / step_s, up=False)
    steps, every = max(floor, min(SAVE_STEPS, ceiling)), f"every {SAVE_STEPS} steps"
    if steps > SAVE_STEPS:
        why = f"{every} would spend over {MAX_SAVE_SHARE:.0%} of the run writing them" + (
            " or outpace their upload" if remote else ""
        )
    elif steps < SAVE_STEPS:
        why = f"{every} would be {_minutes(SAVE_STEPS * step_s)} apart, over {CHECKPOINT_MINUTES} min"
    else:
        why = ""
    if spec.eval_steps and spec.evaluates and not spec.evals_per_epoch and spec.eval_steps % steps:
        steps = max(d for d in range(1, min(steps, spec.eval_steps) + 1) if spec.eval_steps % d == 0)
        why = (
            why + "; " if why else ""
        ) + f"a divisor of eval_steps={spec.eval_steps}, a checkpoint at each evaluation"
    return steps, why


def with_save_steps(spec: RunSpec, plan: Plan) -> RunSpec:
    """``spec`` with the plan's save_steps where it gave neither save_steps nor saves_per_epoch: what spec.json and the
    checkpoints' settings record, and what the trainer saves at."""
    if spec.save_steps or spec.saves_per_epoch or not plan.save_steps:
        return spec
    return replace(spec, save_steps=plan.save_steps)


def _minutes(seconds: float) -> str:
    """~40 s, ~14 min, ~2.5 h."""
    if seconds < 90:
        return f"~{seconds:.0f} s"
    return f"~{seconds / 60:.0f} min" if seconds < 5400 else f"~{seconds / 3600:.1f} h"


def _holds_what(plan: Plan) -> str:
    """What a checkpoint of the plan holds (preflight.checkpoint_gb sizes it)."""
    if plan.method not in ("fft", "sft"):
        return "the adapters and their optimizer states"
    if plan.strategy in ZERO3_STRATEGIES:
        return f"16-bit weights and the fp32 optimizer states (masters, moments) sharded over {plan.world_size} ranks"
    if plan.strategy.startswith("zero2"):
        return f"16-bit weights twice and the fp32 optimizer states sharded over {plan.world_size} ranks"
    if plan.strategy == "fsdp":
        return "fp32 weights twice, FSDP's copy too, and the optimizer states"
    return "fp32 weights and the optimizer states"


def checkpoint_row(spec: RunSpec, plan: Plan) -> str:
    """The plan's checkpoints row: how often (steps, and minutes where a step time is predicted), how large, what
    writing it takes, and what it sends to the store an hour. On CPU no step time is predicted: save_steps' default
    stays (a CPU run is the small-model and test path; -o save_steps sets another), and the row says so."""
    from ftctl.preflight import SAVE_GBPS, checkpoint_gb

    gb = checkpoint_gb(plan)[0]
    size = f"{_gb(gb)} each ({_holds_what(plan)})"
    write = f"{_minutes(_write_s(gb))} to write at {SAVE_GBPS:g} GB/s"
    if plan.save_steps is None:
        return f"{spec.saves_per_epoch} an epoch (saves_per_epoch), {size}" + (f", {write}" if plan.step_s else "")
    steps = f"every {plan.save_steps:,} steps"
    end = f"; none before the end (max_steps={spec.max_steps})" if 0 < spec.max_steps <= plan.save_steps else ""
    if plan.step_s is None:
        why = "" if spec.save_steps else " (save_steps' default: no step time is predicted on CPU to choose one from)"
        return f"{steps}{why}, {size}{end}"
    train = plan.save_steps * plan.step_s
    row = f"{steps} ({_minutes(train)} at {_step_time(plan.step_s)} a step est.), {size}, {write}"
    if storage.is_remote(spec.output):
        row += f", {_gb(gb * 3600 / (train + _write_s(gb)))}/h to the store"
    row += end
    if not spec.save_steps and (why := _chosen(spec, plan, gb)[1]):
        row += f"; save_steps chosen: {why}"
    return row


def disk_row(spec: RunSpec, plan: Plan) -> str:
    """The plan's disk row: what the run's checkpoints hold at most on the disk they are written to
    (preflight.disk_need), and which disk: a local output's, or where an object-store output is staged before its
    upload (checkpoints.staging; preflight checks that disk where it is this machine's); "" for other outputs."""
    from ftctl.checkpoints.staging import STAGING_ENV
    from ftctl.preflight import disk_need

    need = disk_need(spec, plan)
    at_most = f"{_gb(need.gb)} at most: {need.words}"
    if not storage.is_remote(spec.output):
        return f"{at_most}, in {spec.output}" if storage.scheme(spec.output) in ("", "file") else ""
    behind = ""
    if plan.step_s and plan.save_steps:
        train, write = plan.save_steps * plan.step_s, _write_s(need.one)
        if write >= NEGLIGIBLE_WRITE_S and need.one / UPLOAD_GBPS > train + write:
            behind = "; more while their uploads fall behind (the note)"
    return (
        f"{at_most}, on each node's disk where the run is staged before its upload ({STAGING_ENV}, else "
        f"FTCTL_CACHE/runs/){behind}"
    )


def checkpoint_cost(spec: RunSpec, plan: Plan, epoch_steps: int | None = None) -> tuple[str, str] | None:
    """(what is wrong, the fix) where checkpoints at the plan's save_steps would take over MAX_SAVE_SHARE of the run's
    time to write, or come faster than their upload to the store; None where they do not, or no step time is
    predicted. The chosen cadence does only where a given eval_steps holds it lower (_chosen). saves_per_epoch's
    steps depend on the data: with ``epoch_steps`` (an epoch's optimizer steps, where known) they are checked as
    save_steps; else the note says below how many steps an epoch they would (_cost_floor_steps, the one threshold)."""
    from ftctl.preflight import SAVE_GBPS, checkpoint_gb

    if plan.step_s is None:
        return None
    saves = plan.save_steps
    if spec.saves_per_epoch and not spec.save_steps:
        if not epoch_steps:
            return _per_epoch_cost(spec, plan)
        saves = max(1, epoch_steps // spec.saves_per_epoch)  # as the trainer counts them (callbacks.StepsAsGiven)
    if not saves:
        return None
    gb = checkpoint_gb(plan)[0]
    remote = storage.is_remote(spec.output)
    train, write = saves * plan.step_s, _write_s(gb)
    if write < NEGLIGIBLE_WRITE_S:
        return None
    upload = gb / UPLOAD_GBPS if remote else 0.0
    share = write / (train + write)
    problems = []
    if share > MAX_SAVE_SHARE:
        problems.append(f"writing one takes {_minutes(write)} at {SAVE_GBPS:g} GB/s, {share:.0%} of the run's time")
    if upload > train + write:
        problems.append(
            f"uploading one takes {_minutes(upload)} at {UPLOAD_GBPS:g} GB/s, longer than the steps between them (the "
            "uploads fall behind, the checkpoints waiting for theirs kept on the node's disk)"
        )
    if not problems:
        return None
    steps = _nice(_cost_floor_steps(gb, plan.step_s, remote), up=True)
    evals = f" -o eval_steps={steps}" if spec.eval_steps and not spec.evals_per_epoch else ""
    per_epoch = saves != plan.save_steps  # saves_per_epoch's, counted from epoch_steps
    given = f"saves_per_epoch={spec.saves_per_epoch} ({epoch_steps:,} steps an epoch): " if per_epoch else ""
    return (
        f"{given}checkpoints every {saves:,} steps ({_minutes(train)} of training at {_step_time(plan.step_s)} a "
        f"step est.) of {_gb(gb)} each ({plan.method}, {plan.strategy}): {'; '.join(problems)}",
        f"-o save_steps={steps}{evals}"
        + (" in place of saves_per_epoch" if per_epoch else "")
        + f" (a checkpoint every {_minutes(steps * plan.step_s)})"
        + (", or leave both out to have it chosen" if per_epoch else "")
        + (", or leave save_steps out to have it chosen" if spec.save_steps else ""),
    )


def _per_epoch_cost(spec: RunSpec, plan: Plan) -> tuple[str, str] | None:
    """checkpoint_cost of saves_per_epoch where an epoch's steps are not known (the plan reads no data): the steps
    an epoch below which its checkpoints would take over MAX_SAVE_SHARE of the run's time to write, or outpace their
    upload (_cost_floor_steps a checkpoint, saves_per_epoch of them); None where a checkpoint writes in moments."""
    from ftctl.preflight import SAVE_GBPS, checkpoint_gb

    gb = checkpoint_gb(plan)[0]
    write = _write_s(gb)
    if write < NEGLIGIBLE_WRITE_S:
        return None
    remote = storage.is_remote(spec.output)
    floor = _cost_floor_steps(gb, plan.step_s, remote)
    epoch = spec.saves_per_epoch * floor
    steps = _nice(floor, up=True)
    evals = f" -o eval_steps={steps}" if spec.eval_steps and not spec.evals_per_epoch else ""
    return (
        f"saves_per_epoch={spec.saves_per_epoch}: checkpoints of {_gb(gb)} each ({plan.method}, {plan.strategy}), "
        f"{_minutes(write)} to write at {SAVE_GBPS:g} GB/s; an epoch of fewer than {epoch:,} steps ("
        f"{epoch * plan.global_batch_size:,} sequences at {plan.global_batch_size} a step, {_minutes(epoch * plan.step_s)} "
        f"at {_step_time(plan.step_s)} a step est.) would spend over {MAX_SAVE_SHARE:.0%} of the run writing them"
        + (" or outpace their upload" if remote else ""),
        f"-o save_steps={steps}{evals} in place of saves_per_epoch (a checkpoint every {_minutes(steps * plan.step_s)})"
        ", or leave both out to have it chosen",
    )


def pinned_bytes(n: float) -> float:
    """Host memory a page-locked buffer of ``n`` bytes takes: torch's caching host allocator rounds each block
    up to a power of two (on the device machine's torch 2.11 a 4.94 GB fp32 buffer took 8.96 GB)."""
    return 2.0 ** math.ceil(math.log2(n)) if n > 1 else n


def assumed_host_gb(spec: RunSpec, req: gpu_table.GpuRequest) -> float | None:
    """A node's RAM where the run does not say it (host_memory_gb): HOST_RAM_PER_GPU_MEMORY x its GPUs' memory; None
    (no bound) where the backend picks the node by the RAM the plan asks for (NODE_PICKED_BY_RAM), or on CPU."""
    if spec.backend in NODE_PICKED_BY_RAM or not req.tier:
        return None
    return HOST_RAM_PER_GPU_MEMORY * req.per_node * req.tier.memory_gb


def _host_note(spec: RunSpec, host_gb: float | None, need: float) -> str:
    """What an offload plan whose node's RAM the run does not give takes it to be: picked for the plan, or assumed."""
    if host_gb is None:
        return (
            f"host memory: the offload needs {need:.0f} GB of RAM a node: SkyPilot picks a VM with that much (memory:)"
        )
    return (
        f"host memory: each node is assumed to have {host_gb:g} GB of RAM ({HOST_RAM_PER_GPU_MEMORY}x its GPUs' "
        f"memory) for the offload's {need:.0f}: -o host_memory_gb=N if it has less"
    )


def offload_host_gb(params_b: float, world: int, per_node: int) -> float:
    """Host RAM per node that DeepSpeed's offload needs. Each rank's partition of params/world holds pinned
    fp32 masters (4 B/param), a pinned 16-bit buffer the updated weights go back to the GPU through (2 B) and
    pinned fp32 gradients (4 B), each one pinned block rounded up to a power of two, and Adam's two fp32
    moments (8 B, pageable); beside them each process's own memory, and the 16-bit weights gathered for the
    final save (2 B/param). Measured (bench/NOTES.md v29, v30, one H200): 1.24B under zero2_offload peaked at
    39.1 GB of host memory (this gives 39.8); 8.03B was killed by the OOM killer on a 135 GB host (this gives
    172; the 16 B/param counted before gave 128). zero3_offload's buffers come in sub-groups that round less:
    for it this is an upper bound."""
    part = params_b * 1e9 / world
    rank = (2 * pinned_bytes(4 * part) + pinned_bytes(2 * part) + 8 * part) / 1e9 + PROCESS_HOST_GB
    return per_node * rank + 2 * params_b


_FORCED_FIT = ("strategy", "per_device_train_batch_size", "gradient_checkpointing")  # what a user may force
# the methods that take less memory than each (qlora's 4-bit base the least): those a refusal on CPU may offer
LIGHTER_METHODS = {"fft": ("lora", "qlora"), "sft": ("lora", "qlora"), "lora": ("qlora",), "qlora": ()}


def _forced(spec: RunSpec) -> dict:
    """The settings of _FORCED_FIT the run gives, which the planner does not choose then."""
    return {k: getattr(spec, k) for k in _FORCED_FIT if getattr(spec, k) is not None}


def _settings(said: dict) -> str:
    """'per_device_train_batch_size=4, gradient_checkpointing=false', as -o takes them."""
    return ", ".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in said.items())


_LEANEST = {"per_device_train_batch_size": 1, "gradient_checkpointing": True}  # the leanest plan's, as refusals say


def _leanest(strategy: str, forced: dict) -> str:
    """'(zero3, micro-batch 1, gradient checkpointing; leaner than the per_device_train_batch_size=4 asked)': the
    leanest plan a refusal names, and those of the run's forced settings it differs from."""
    heavier = {k: v for k, v in forced.items() if v != {**_LEANEST, "strategy": strategy}[k]}
    asked = f"; leaner than the {_settings(heavier)} asked" if heavier else ""
    return f"({strategy}, micro-batch 1, gradient checkpointing{asked})"


def _accumulation_cost(spec: RunSpec, req, shape: ModelShape) -> str:
    """Where FSDP2 across GPUs accumulates gradients (the accumulated_grads term), what that costs, in words: the
    reason a smaller micro-batch with more accumulation may not fit where a larger one without it does."""
    micro = spec.per_device_train_batch_size or 1
    if spec.strategy != "fsdp" or req.world_size < 2 or accumulation_steps(spec, micro, req.world_size) < 2:
        return ""
    gb = 2 * _trainable_b(spec.method, shape, spec)
    return (
        f": accumulating gradients, FSDP2 keeps each GPU's whole 16-bit gradients between micro-batches (~{gb:.1f} GB "
        "here); fewer accumulation steps at a larger micro-batch, or -o strategy=zero3, keep them sharded"
    )


def _holds(t: gpu_table.GpuTier) -> str:
    """'an H100 has 84.9 GB (79.1 GiB as PyTorch reports it)': a refusal's card, in the plan's unit and PyTorch's."""
    return f"{t.a_card} has {t.capacity_gb:.1f} GB ({t.total_gib:g} GiB as PyTorch reports it)"


def _a_model(shape: ModelShape) -> str:
    """'an 8.03B-parameter model', 'a 70.6B-parameter model' (eight, eleven and eighteen start with a vowel)."""
    size = _count(shape.params_b)
    article = "an" if re.match(r"8|1[18](\D|$)", size) else "a"
    return f"{article} {size}-parameter model"


def _refusal(spec: RunSpec, req, shape: ModelShape, machine=None) -> str:
    method = spec.method
    if req.is_cpu and shape.params_b > CPU_MAX_PARAMS_B:
        # "would take days a step" alone gave no number to judge it by
        seconds = weight_flops_per_token(method, shape) * spec.global_batch * spec.model_max_length / 1e12
        took = (
            f"{seconds / 3600:.1f} h"
            if seconds >= 3600
            else f"{seconds / 60:.0f} min"
            if seconds >= 60
            else f"{seconds:.0f} s"
        )
        pflop = f"{seconds / 1e3:,.0f}" if seconds >= 1e4 else f"{seconds / 1e3:.2g}"
        return (
            f"{method} of {_a_model(shape)} on CPU: ftctl runs models up to {CPU_MAX_PARAMS_B:g}B on CPU, where larger "
            f"ones take minutes to days a step (this one's step of {spec.global_batch} x {spec.model_max_length:,} "
            f"tokens: ~{pflop} PFLOP, {took} at a sustained 1 TFLOP/s, more than most CPUs sustain in "
            "fp32). Ask for a GPU, e.g. --gpus 1xA100 --method qlora."
        )
    if req.is_cpu:  # small enough, but not in the RAM the spec says this machine has
        return _cpu_refusal(spec, req, shape)
    forced = _forced(spec)
    relaxed = replace(spec, **dict.fromkeys(forced))
    kept = bool(spec.per_device_train_batch_size and spec.gradient_accumulation_steps)  # the user's global batch
    if kept:
        batch = spec.per_device_train_batch_size * spec.gradient_accumulation_steps * req.world_size
        relaxed = replace(relaxed, gradient_accumulation_steps=None, global_batch_size=batch)
    fits = _fit(relaxed, req, shape, method) if forced and req.tier else None
    if fits is not None:  # the user's batch, checkpointing or strategy is what does not fit
        asked = _settings(forced)
        without = " and ".join(forced) + (
            " and gradient_accumulation_steps, with -o global_batch_size=" if kept else ""
        )
        return (
            f"{method} of {_a_model(shape)} with {asked} does not fit {req} "
            f"({_holds(req.tier)}; ftctl plans within {HEADROOM:.0%} of it)"
            f"{_accumulation_cost(spec, req, shape)}. Without {'it' if len(forced) == 1 else 'them'} it does: "
            f"{fits.strategy}, micro-batch {fits.per_device_train_batch_size}"
            + (
                f" x {fits.gradient_accumulation_steps} accumulation (the same {fits.global_batch_size} sequences a step)"
                if kept
                else ""
            )
            + f", gradient checkpointing {'on' if fits.gradient_checkpointing else 'off'}, ~{fits.memory_gb:.0f} GB/GPU "
            f"(`ftctl plan` without {without}{fits.global_batch_size if kept else ''} shows it)."
        )
    spec = replace(spec, **dict.fromkeys(_FORCED_FIT[1:]))  # the plans offered below choose their own batch
    # the leanest way this method could run on this request, to say how far off it is
    strategies = _strategies(method, req.world_size, req.nodes, spec.strategy)
    on_gpu = [s for s in strategies if s not in OFFLOAD_STRATEGIES] or strategies
    attn, scores, _ = _attention(spec, req, shape)
    packing = asked_packing(spec, attn, shape)
    need, strategy = min(
        (
            sum(
                memory_terms(
                    method,
                    s,
                    shape,
                    req.world_size,
                    1,
                    spec.model_max_length,
                    True,
                    _trainable_b(method, shape, spec),
                    precision=gpu_precision(spec, req.tier),
                    accum=accumulation_steps(spec, 1, req.world_size),
                    optim="paged_adamw_8bit" if method == "qlora" else "adamw_torch_fused",
                    lora_dropout=spec.lora_dropout,
                    lora_r=spec.lora_r,
                    dora=spec.use_dora,
                    expert_adapters=adapts_experts(method, shape, spec),
                    scores=scores,
                    mask=attention_mask(attn, packing, 1, spec.model_max_length),
                ).values()
            ),
            s,
        )
        for s in on_gpu
    )
    msg = (
        f"{method} of {_a_model(shape)} does not fit {req}: the leanest plan {_leanest(strategy, forced)} needs "
        f"about {need:.1f} GB per GPU; "
        f"{_holds(req.tier)} and ftctl plans within {HEADROOM:.0%} of it ({HEADROOM * req.tier.capacity_gb:.1f} GB)."
    )
    if said := experts_stay_16bit(method, shape):
        msg += f" {said[0].upper()}{said[1:]}."
    if method == "qlora" and req.world_size > 1:  # the GPUs asked for do not add up for it: say why
        msg += f" Each GPU holds all of qlora's base: {METHOD_STRATEGIES['qlora'][1]}."
    if any(s in OFFLOAD_STRATEGIES for s in strategies):  # the planner's last resort, or the one forced
        msg += _offload_refused(spec, req, shape, [s for s in strategies if s in OFFLOAD_STRATEGIES], machine)
    hints = []
    # nearest first: another method on the GPUs asked for (lora's base shards, qlora's does not), then this method
    # on other GPUs, then qlora on other GPUs
    here = None
    for other in [m for m in ("lora", "qlora") if m != method]:
        here = _fit(replace(spec, method=other, strategy=None), req, shape, other)
        if here is not None:
            hints.append(f"--method {other} on these {req} ({here.strategy}, ~{here.memory_gb:.0f} GB/GPU)")
            break
    length = spec.model_max_length // 2
    while length >= MIN_HINTED_LENGTH:  # the activations are what does not fit: shorter rows on these GPUs
        if shorter := _fit(replace(spec, model_max_length=length), req, shape, method):
            hints.append(
                f"-o model_max_length={length} on these {req} ({shorter.strategy}, {_sizes(shorter)}; "
                "longer rows are cut to it)"
            )
            break
        length //= 2
    if machine is not None and method != "qlora" and not hints:  # this machine's lightest: qlora of shorter rows
        length = spec.model_max_length // 2
        while length >= MIN_HINTED_LENGTH:
            if q := _fit(replace(spec, method="qlora", strategy=None, model_max_length=length), req, shape, "qlora"):
                hints.append(f"--method qlora -o model_max_length={length} on these {req} (~{q.memory_gb:.0f} GB/GPU)")
                break
            length //= 2
    same = _nearest(spec, shape, method, req, machine)
    if same:
        hints.append(f"--gpus {same.gpus} --method {method} ({same.strategy}, {_sizes(same)})")
    if method != "qlora" and (here is None or here.method != "qlora"):
        q = _nearest(spec, shape, "qlora", req, machine)
        if q and q.gpus != str(req):
            hints.append(f"--gpus {q.gpus} --method qlora (~{q.memory_gb:.0f} GB/GPU)")
    if shape.context and spec.model_max_length > shape.context:  # as a fitted plan's note says it
        msg += (
            f" model_max_length {spec.model_max_length} is over the model's context of {shape.context} tokens: "
            f"-o model_max_length={shape.context} unless you are extending its context."
        )
    if hints:
        msg += " Nearest plans that fit: " + "; or ".join(hints) + "."
    elif machine is not None:  # a cloud's card is no plan for this machine (an 8 GB card was offered an A10G)
        msg += (
            f" Nothing fits this machine's {machine}, even qlora of {MIN_HINTED_LENGTH}-token rows: a smaller model, "
            "or larger GPUs elsewhere (--backend slurm or sky with --gpus TYPE)."
        )
    else:
        msg += " Nothing up to 4 nodes of 8 GPUs fits: use a smaller model or shorter rows (-o model_max_length)."
    return msg


def _cpu_refusal(spec: RunSpec, req, shape: ModelShape) -> str:
    """Why nothing fits the RAM the run gives this machine (host_memory_gb) on CPU: the run's own micro-batch or
    checkpointing where the planner's choice fits, else what the leanest plan needs, and the lighter methods that
    fit."""
    method, model = spec.method, _a_model(shape)
    ram = f"host_memory_gb={round(spec.host_memory_gb, 1):g} on CPU"
    forced = _forced(spec)
    free = replace(spec, **dict.fromkeys(_FORCED_FIT))
    if forced and (fits := _fit(free, req, shape, method)):
        return (
            f"{method} of {model} with {_settings(forced)} does not fit {ram}. Without "
            f"{'it' if len(forced) == 1 else 'them'} it does: {fits.strategy}, micro-batch "
            f"{fits.per_device_train_batch_size}, gradient checkpointing {'on' if fits.gradient_checkpointing else 'off'}"
            f", ~{fits.memory_gb:.1f} GB (`ftctl plan` without {' and '.join(forced)} shows it)."
        )
    leanest = replace(free, per_device_train_batch_size=1, gradient_checkpointing=True, host_memory_gb=None)
    runnable = _on_cpu(_strategies(method, req.world_size, req.nodes, None))
    need, strategy = min((_fit(replace(leanest, strategy=s), req, shape, method).memory_gb, s) for s in runnable)
    enough = math.ceil((need + 0.005) / HEADROOM)  # need is rounded to 0.01 GB: the RAM named must fit it unrounded
    lighter = [
        f"--method {other} (~{p.memory_gb:.1f} GB)"
        for other in LIGHTER_METHODS[method]
        if (p := _fit(replace(free, method=other), req, shape, other))
    ]
    return (
        f"{method} of {model} does not fit {ram}: the leanest plan {_leanest(strategy, forced)} needs about "
        f"{need:.1f} GB, and ftctl plans within {HEADROOM:.0%} of the RAM. "
        f"Use -o host_memory_gb={enough} if the machine has that much"
        + (f", {' or '.join(lighter)}" if lighter else "")
        + ", or a smaller model."
    )


def _sizes(p: Plan) -> str:
    """'~71 GB/GPU' of a plan a refusal offers; an offload plan's host RAM too ('~14 GB/GPU, ~2086 GB of RAM a node'):
    where no RAM bounds it (NODE_PICKED_BY_RAM), it may be more than any machine has."""
    host = f", ~{p.host_memory_gb:.0f} GB of RAM a node" if p.host_memory_gb else ""
    return f"~{p.memory_gb:.0f} GB/GPU{host}"


def _offload_refused(spec: RunSpec, req, shape: ModelShape, offloads: list[str], machine=None) -> str:
    """Why offloading to CPU RAM (``offloads``, the strategies tried) did not make a refused plan fit: the node's RAM,
    given or assumed; or, where the backend picks the node by its RAM (no bound), the GPUs all the same. With
    ``machine`` (the local backend's), this machine's RAM, and a machine elsewhere, not SkyPilot's VM alone."""
    host_need = offload_host_gb(shape.params_b, req.nodes * req.per_node, req.per_node)
    assumed = assumed_host_gb(spec, req)
    ram = spec.host_memory_gb or assumed
    if ram is None or ram >= host_need:
        # no RAM bounds it, or the node has what it needs: the GPUs are what it does not fit (7B fft of 131,072-token
        # rows on 8xA100 was told to give -o host_memory_gb=211 where 640 GB was assumed: the rows' activations)
        return f" Offloading to CPU RAM ({', '.join(offloads)}) does not make it fit the GPUs either."
    if spec.host_memory_gb:
        host = f"{round(spec.host_memory_gb, 1):g} GB"
    else:
        host = f"{assumed:g} GB assumed, {HOST_RAM_PER_GPU_MEMORY}x its GPUs' memory"
    picked = "" if spec.backend else "; with --backend sky, SkyPilot picks a VM with that much"
    if machine is not None:  # this machine's RAM (host_memory_gb read here): a larger one is elsewhere
        picked = "; else a machine with that much: --backend slurm or sky"
    return (
        f" Offloading the optimizer to CPU RAM would need ~{host_need:.0f} GB of host RAM per node, which has "
        f"{host} (-o host_memory_gb={math.ceil(host_need)} if it has that much{picked})."
    )


MIN_HINTED_LENGTH = 512  # the shortest model_max_length a plan that does not fit suggests


def _nearest(spec: RunSpec, shape: ModelShape, method: str, req, machine=None) -> Plan | None:
    """The first fit in gpus.offered_instead's order: the requested tier (fewest GPUs, then nodes), then a bigger card
    (the least GPU memory in all first: one H200 before one B200 before two H200s), another card last; one that keeps
    the optimizer on the GPUs where any does (an 8B fft asked of one H100 was offered 4xA10G with ZeRO-3 offload, each
    step waiting on the CPU, before 2xH100). Qwen3-30B-A3B lora asked of one H100 was offered 4xV100-32GB (fp16, no
    FlashAttention: the least memory) before 2xH100. For another method, the request as asked comes first (qlora on
    the same GPUs is nearer than qlora on a T4). Within ``machine`` where given: more of its GPUs, up to its count."""
    if method != spec.method:
        p = _fit(replace(spec, method=method, strategy=None), req, shape, method)
        if p is not None:
            return p
    candidates = [
        (place, t.memory_gb * per * nodes, t.memory_gb, nodes, t.name, per)
        for place, t in gpu_table.offered_instead(req.tier)
        for nodes in (1, 2, 4)
        for per in (1, 2, 4, 8)
        if nodes == 1 or per == 8
    ]
    if machine is not None:  # this machine's GPUs only, as many as it has
        most = machine.per_node if machine.tier else 0
        candidates = [(0, per, 0, 1, machine.tier.name, per) for per in range(1, most + 1)]
    offloaded = None  # the first fit that offloads: offered where nothing fits on the GPUs alone
    for *_, nodes, name, per in sorted(candidates):
        if (name, per, nodes) == (req.tier.name, req.per_node, req.nodes) and method == spec.method:
            continue
        r = gpu_table.GpuRequest(gpu_table.TIERS[name], per, nodes)
        # other GPUs are other machines: their host memory is theirs, not the -o host_memory_gb of the one asked for
        p = _fit(replace(spec, method=method, strategy=None, host_memory_gb=None), r, shape, method)
        if p is not None and p.strategy not in OFFLOAD_STRATEGIES:
            return p
        offloaded = offloaded or p
    return offloaded


# ------------------------------------------------------------------------------------------ run file
def dump_run(spec: RunSpec, plan: Plan) -> str:
    """The spec.json every backend ships beside its script: the run description and its plan."""
    return json.dumps({"spec": spec.to_dict(), "plan": plan.to_dict()}, indent=1, sort_keys=True) + "\n"


def load_run(path: str) -> tuple[RunSpec, Plan]:
    """Read a spec.json written by dump_run (what ``python -m ftctl.trainer --spec`` reads)."""
    from ftctl.spec import build

    try:
        data = json.loads(Path(path).read_text())
        spec = build(data["spec"])
        p = dict(data["plan"])
        p["model"] = ModelShape(**p["model"])
        plan = Plan(**p)
        # where the launcher could not name them; the save_steps the plan chose where the launcher did not record it
        return with_save_steps(with_lora_targets(spec, plan.model)[0], plan), plan
    except FileNotFoundError:
        raise FtctlError(f"Spec file {path} does not exist.") from None
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise FtctlError(
            f"{path} is not a spec file written by ftctl ({e}). Render it again with this version of ftctl."
        ) from None
