"""Is packed training exact for hybrid models (layers that are not all attention)? explore47, helper 240.

For each model type, a tiny random model (float32 on CPU; --dtype on a GPU) is given two documents A and B:
  alone   B in a row of its own (position ids 0..n-1, nothing else);
  packed  A then B in one row, as TRL 1.16's padding-free collator hands a batch to the model (what ftctl's trainer
          passes on as it is): position_ids restarting at 0, cu_seq_lens_q/k (int32), max_length_q/k and seq_idx;
  posonly the same row with position_ids alone (no boundary kwargs: what a layer sees that reads none of them).
packed_train the packed row with the model in training mode (no dropout in these configs; Granite 4 hybrid and
          Falcon-H1 run their fused Mamba-2 kernel there, their unfused one in evaluation).
Measured, in B's logits: `vs_alone` the largest difference packed vs alone; `leak` the largest difference between
packed (A, B) and packed (A', B), A' another document of A's length (0 where nothing of A reaches B, kernel noise
aside: the chunking is the same). An error (transformers refusing boundaries it cannot keep) is reported as such.
Each under sdpa (the mask transformers builds from the restarting position ids) and ftctl's varlen attention
(ftctl_varlen: cu_seq_lens; on CPU ftctl's per-document reference, on a CUDA GPU torch's varlen_attn).

    python3 bench/hybrid_packing_gpu.py --out DIR [--device cpu|cuda] [--dtype float32|bfloat16] [--types a,b]
        [--emulate fla,causal_conv1d,mamba_ssm|all] [--one-config]

On the device machine (no fla, causal-conv1d, mamba-ssm): transformers' torch paths, as on CPU. With
flash-linear-attention / causal-conv1d / mamba-ssm installed (wheels carried along), transformers takes their kernels
on CUDA; the "kernels" field of the output says which imported. With fla on a CUDA GPU, its kernels are also checked
alone (fla_direct). --emulate puts torch stand-ins in place of those packages (CPU, or the ones a GPU lacks): each runs
transformers' own reference per document that the boundaries it is handed name, and "handed" records which
boundaries (cu_seqlens, seq_idx) transformers handed each kernel: the plumbing, read without the kernels.
--one-config: every Triton autotuner runs the first config it would try, benchmarking none: fla 0.6 autotunes
hundreds of configs on a fresh machine (v105: 292 configs in 25 autotunings, 222 s, and a tiny Qwen3.5's first
forwards still tuning at 240 s). Which config runs a kernel changes its tiling, not what it computes.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SMALL = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=16)
LINEAR = dict(linear_conv_kernel_dim=4, linear_key_head_dim=16, linear_value_head_dim=16)
LINEAR |= dict(linear_num_key_heads=2, linear_num_value_heads=4)
MOE = dict(moe_intermediate_size=32, shared_expert_intermediate_size=32, num_experts=4, num_experts_per_tok=2)
MAMBA = dict(mamba_n_heads=8, mamba_d_head=16, mamba_d_state=16, mamba_d_conv=4, mamba_chunk_size=8)
HYBRID2 = ["linear_attention", "full_attention"]
TYPES = {
    # model_type: config fields (tiny); every hybrid has a recurrent layer before an attention one
    "qwen3_5_text": SMALL | LINEAR | dict(num_hidden_layers=2, layer_types=HYBRID2),
    "qwen3_5_moe_text": SMALL | LINEAR | MOE | dict(num_hidden_layers=2, layer_types=HYBRID2),
    "qwen3_next": SMALL | LINEAR | MOE | dict(num_hidden_layers=2, layer_types=HYBRID2),
    "granitemoehybrid": SMALL
    | MAMBA
    | dict(num_hidden_layers=2, layer_types=["mamba", "attention"], num_local_experts=4, num_experts_per_tok=2)
    | dict(shared_intermediate_size=64, mamba_expand=2),
    "falcon_h1": SMALL | MAMBA | dict(num_hidden_layers=2, mamba_d_ssm=128, mamba_expand=2),
    "kimi_linear": dict(hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=2)
    | dict(num_attention_heads=4, num_key_value_heads=4, num_experts=4, num_experts_per_token=2, first_k_dense_replace=1)
    | dict(kv_lora_rank=16, q_lora_rank=None, qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=16, head_dim=8)
    | dict(linear_head_dim=16, linear_num_heads=4, linear_conv_kernel_dim=4)
    | dict(linear_attn_config={"kda_layers": [1], "full_attn_layers": [2], "head_dim": 16, "num_heads": 4}),
    "olmo_hybrid": SMALL
    | dict(num_hidden_layers=2, layer_types=HYBRID2, linear_num_key_heads=4, linear_num_value_heads=4)
    | dict(linear_key_head_dim=16, linear_value_head_dim=16, linear_conv_kernel_dim=4, num_key_value_heads=4),
    # attention-only, with per-layer kinds of attention: sliding windows, chunked attention, NoPE layers
    "gemma4_text": SMALL
    | dict(num_hidden_layers=2, sliding_window=8, layer_types=["sliding_attention", "full_attention"])
    | dict(hidden_size_per_layer_input=16, global_head_dim=16),
    "llama4_text": SMALL
    | dict(num_hidden_layers=4, intermediate_size_mlp=128, num_local_experts=2, num_experts_per_tok=1)
    | dict(attention_chunk_size=8, no_rope_layer_interval=4, interleave_moe_layer_step=2),
    "llama4_text:chunk64": SMALL
    | dict(num_hidden_layers=4, intermediate_size_mlp=128, num_local_experts=2, num_experts_per_tok=1)
    | dict(attention_chunk_size=64, no_rope_layer_interval=4, interleave_moe_layer_step=2),
    # controls: attention-only, exact when packed
    "qwen3": SMALL | dict(num_hidden_layers=2),
    "gemma3_text": SMALL | dict(num_hidden_layers=2, sliding_window=8, layer_types=["sliding_attention", "full_attention"]),
}  # fmt: skip
VOCAB = 256
DOCS = (21, 13)  # A, B: longer than the windows, chunks and conv windows, boundaries inside chunks


def kernels_here() -> dict:
    """Which of the linear layers' kernel packages import (what transformers' fallback decorator takes on CUDA)."""
    out = {}
    for name, module in (
        ("fla", "fla.ops.gated_delta_rule"),
        ("causal_conv1d", "causal_conv1d"),
        ("mamba_ssm", "mamba_ssm.ops.triton.ssd_combined"),
    ):
        try:
            __import__(module)
            out[name] = True
        except Exception as e:  # absent, or built for another torch/CUDA
            out[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
    return out


EMULATED = ("fla", "causal_conv1d", "mamba_ssm")
SEEN: dict = {}  # --emulate: kernel name -> the boundary arguments it was handed, per call


def emulate_kernels(packages: set) -> None:
    """Stand-ins for flash-linear-attention, causal-conv1d and mamba-ssm (``packages``: of fla, causal_conv1d,
    mamba_ssm) on CPU or beside the real others on a GPU, to read transformers' plumbing
    without a GPU: each takes the real kernel's parameters (transformers hands a kernel only those), runs
    transformers' own torch reference on each document its boundaries (cu_seqlens or seq_idx) name, and records
    which boundaries it was handed (SEEN). Installed before any model's module is imported."""
    import itertools
    import types

    import torch
    import torch.nn.functional as F
    from transformers.integrations import hub_kernels

    for package in packages:
        hub_kernels._PACKAGE_SUPPORTED_DEVICES[package] = ("cuda", "cpu")

    def spans(n, cu_seqlens=None, seq_idx=None):
        if cu_seqlens is not None:
            bounds = cu_seqlens.tolist()
        elif seq_idx is not None:
            bounds = [0, *itertools.accumulate(torch.bincount(seq_idx[0].long()).tolist())]
        else:
            bounds = [0, n]
        return list(zip(bounds[:-1], bounds[1:]))

    # transformers' torch references, taken from modules of the same code imported before the stand-ins exist (so
    # they run their torch path): the models checked import theirs after, and get the stand-ins
    import importlib

    def models(module):
        return importlib.import_module(f"transformers.models.{module}.modeling_{module}")

    references = {
        "gated_delta": models("lara_mini").torch_chunk_gated_delta_rule,  # Qwen3-Next's, copied
        "kda": models("bailing_hybrid").chunk_kimi_delta_attention,  # Kimi Linear's, copied
        "mamba2": models("bamba").mamba2_chunk_scan,  # Granite 4 hybrid's, copied
    }

    def seen(name, **bounds):
        SEEN.setdefault(name, []).append(sorted(k for k, v in bounds.items() if v is not None) or ["none"])

    def per_document(fn, seq_args, cu_seqlens=None, seq_idx=None, **kw):
        outs = [
            fn(*(t[:, lo:hi] for t in seq_args), **kw) for lo, hi in spans(seq_args[0].shape[1], cu_seqlens, seq_idx)
        ]
        first = outs[0]
        if isinstance(first, tuple):
            return torch.cat([o[0] for o in outs], 1), None
        return torch.cat(outs, 1)

    def chunk_gated_delta_rule(q, k, v, g=None, beta=None, scale=None, initial_state=None, output_final_state=False,
                               use_qk_l2norm_in_kernel=False, cu_seqlens=None):  # fmt: skip
        seen("chunk_gated_delta_rule", cu_seqlens=cu_seqlens)
        fn = references["gated_delta"]
        return per_document(fn, (q, k, v, g, beta), cu_seqlens, use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel)

    def chunk_kda(q, k, v, g=None, beta=None, scale=None, initial_state=None, output_final_state=False,
                  use_qk_l2norm_in_kernel=False, cu_seqlens=None):  # fmt: skip
        seen("chunk_kda", cu_seqlens=cu_seqlens)
        fn = references["kda"]
        return per_document(fn, (q, k, v, g, beta), cu_seqlens, use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel)

    def causal_conv1d_fn(x, weight, bias=None, seq_idx=None, initial_states=None, return_final_states=False,
                         final_states_out=None, activation=None):  # fmt: skip
        seen("causal_conv1d_fn", seq_idx=seq_idx)
        outs = []
        for lo, hi in spans(x.shape[-1], seq_idx=seq_idx):
            part = x[..., lo:hi].to(weight.dtype)
            out = F.conv1d(part, weight.unsqueeze(1), bias, padding=weight.shape[-1] - 1, groups=x.shape[1])
            outs.append(out[..., : hi - lo])
        out = torch.cat(outs, -1)
        return (F.silu(out) if activation in ("silu", "swish") else out).to(x.dtype)

    def mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, initial_states=None,
                                  seq_idx=None, cu_seqlens=None, dt_softplus=False, dt_limit=(0.0, float("inf")),
                                  return_final_states=False):  # fmt: skip
        seen("mamba_chunk_scan_combined", seq_idx=seq_idx, cu_seqlens=cu_seqlens)
        fn = references["mamba2"]
        kw = dict(chunk_size=chunk_size, D=D, dt_bias=dt_bias, dt_softplus=dt_softplus, dt_limit=dt_limit)
        scan = lambda x_, dt_, B_, C_, **k: fn(x_, dt_, A, B_, C_, **k)  # noqa: E731
        return per_document(scan, (x, dt, B, C), cu_seqlens, seq_idx, **kw)

    def mamba_split_conv1d_scan_combined(zxbcdt, conv1d_weight, conv1d_bias, dt_bias, A, D, chunk_size,
                                         initial_states=None, seq_idx=None, dt_limit=(0.0, float("inf")),
                                         return_final_states=False, activation="silu", rmsnorm_weight=None,
                                         rmsnorm_eps=1e-6, outproj_weight=None, outproj_bias=None, headdim=None,
                                         ngroups=1, norm_before_gate=True):  # fmt: skip
        seen("mamba_split_conv1d_scan_combined", seq_idx=seq_idx)
        return None  # the model then takes its unfused path: the conv and the scan above

    def unused(*args, **kwargs):
        raise NotImplementedError("decoding step: not emulated")

    tree = {
        "fla": {}, "fla.ops": {},
        "fla.ops.gated_delta_rule": dict(chunk_gated_delta_rule=chunk_gated_delta_rule,
                                         fused_recurrent_gated_delta_rule=unused),
        "fla.ops.kda": dict(chunk_kda=chunk_kda, fused_recurrent_kda=unused),
        "causal_conv1d": dict(causal_conv1d_fn=causal_conv1d_fn, causal_conv1d_update=unused),
        "mamba_ssm": {}, "mamba_ssm.ops": {}, "mamba_ssm.ops.triton": {},
        "mamba_ssm.ops.triton.ssd_combined": dict(mamba_chunk_scan_combined=mamba_chunk_scan_combined,
                                                  mamba_split_conv1d_scan_combined=mamba_split_conv1d_scan_combined),
        "mamba_ssm.ops.triton.selective_state_update": dict(selective_state_update=unused),
    }  # fmt: skip
    for name, functions in tree.items():
        if name.split(".")[0] not in packages:
            continue
        module = types.ModuleType(name)
        module.__dict__.update(functions)
        sys.modules[name] = module
        if "." in name:
            parent, leaf = name.rsplit(".", 1)
            setattr(sys.modules[parent], leaf, module)


def fla_direct(device, dtype) -> dict:
    """flash-linear-attention's own kernels (a CUDA GPU with the wheel installed): two documents in one row with
    cu_seqlens against each alone, for chunk_gated_delta_rule (Qwen3.5/Qwen3-Next/OLMo hybrid) and chunk_kda (Kimi
    Linear, which transformers calls without cu_seqlens): the largest output difference, and without cu_seqlens."""
    import torch

    out = {}
    gen = torch.Generator(device=device).manual_seed(0)
    lengths, heads, dim = (300, 200), 4, 64
    total = sum(lengths)
    cu = torch.tensor([0, lengths[0], total], dtype=torch.int32, device=device)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, device=device) * scale).to(dtype)

    for name, module, gate in (
        ("chunk_gated_delta_rule", "fla.ops.gated_delta_rule", (1, total, heads)),
        ("chunk_kda", "fla.ops.kda", (1, total, heads, dim)),
    ):
        try:
            import importlib

            fn = getattr(importlib.import_module(module), name)
            q, k, v = (rand(1, total, heads, dim) for _ in range(3))
            g = -torch.rand(*gate, generator=gen, device=device).to(dtype) * 0.5  # log decay <= 0
            beta = torch.rand(1, total, heads, generator=gen, device=device).to(dtype)
            kw = dict(use_qk_l2norm_in_kernel=True)
            packed = fn(q, k, v, g=g, beta=beta, cu_seqlens=cu.long(), **kw)[0]
            plain = fn(q, k, v, g=g, beta=beta, **kw)[0]
            lo = lengths[0]
            alone = fn(q[:, lo:], k[:, lo:], v[:, lo:], g=g[:, lo:], beta=beta[:, lo:], **kw)[0]
            out[name] = {
                "cu_seqlens_vs_alone": float((packed[:, lo:] - alone).abs().max()),
                "no_cu_seqlens_vs_alone": float((plain[:, lo:] - alone).abs().max()),
            }
        except Exception as e:  # absent, or refusing this shape or dtype
            out[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    return out


def one_config() -> None:
    """Triton's autotuners keep the first of their (pruned) configs: nothing is benchmarked (see --one-config)."""
    from triton.runtime import autotuner

    prune = autotuner.Autotuner.prune_configs
    autotuner.Autotuner.prune_configs = lambda self, kwargs: prune(self, kwargs)[:1]


def build(model_type: str, attn: str, dtype, device):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = TYPES[model_type]  # a name's ":variant" tail is the variant's config
    cfg = AutoConfig.for_model(model_type.split(":")[0], **fields, vocab_size=VOCAB, pad_token_id=0, eos_token_id=1)
    cfg._attn_implementation = attn
    if hasattr(cfg, "vocab_size_per_layer_input"):
        cfg.vocab_size_per_layer_input = VOCAB
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation=attn, dtype=dtype)
    return model.to(device).eval()


def packed_batch(docs, device) -> dict:
    """One row of ``docs`` as TRL 1.16's DataCollatorForLanguageModeling(padding_free=True) returns it."""
    import torch

    lengths = [len(d) for d in docs]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    return {
        "input_ids": torch.cat(docs)[None].to(device),
        "position_ids": torch.cat([torch.arange(n) for n in lengths])[None].to(device),
        "cu_seq_lens_q": cu.to(device),
        "cu_seq_lens_k": cu.to(device),
        "max_length_q": max(lengths),
        "max_length_k": max(lengths),
        "seq_idx": torch.repeat_interleave(torch.arange(len(docs), dtype=torch.int32), torch.tensor(lengths))[None].to(
            device
        ),
    }


def logits(model, batch: dict):
    import torch

    with torch.no_grad():
        return model(**batch, use_cache=False).logits.float()


def check(model_type: str, attn: str, dtype, device) -> dict:
    import torch

    gen = torch.Generator().manual_seed(1)
    a, a2, b = (torch.randint(2, VOCAB, (n,), generator=gen) for n in (DOCS[0], DOCS[0], DOCS[1]))
    try:
        model = build(model_type, attn, dtype, device)
    except Exception as e:
        return {"build": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
    try:
        alone, a_alone = (
            logits(model, {"input_ids": x[None].to(device), "position_ids": torch.arange(len(x))[None].to(device)})[0]
            for x in (b, a)
        )
    except Exception as e:  # ftctl's varlen attention refusing Llama 4's chunked layers past their chunk
        return {"alone": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
    out = {"scale": round(float(alone.abs().max()), 4)}
    for mode in ("packed", "posonly", "packed_train"):
        model.train(mode == "packed_train")  # Mamba-2 mixers take their fused kernel in training only
        try:
            one, two = (packed_batch([x, b], device) for x in (a, a2))
            if mode == "posonly":
                one, two = ({k: t[k] for k in ("input_ids", "position_ids")} for t in (one, two))
            first, second = logits(model, one)[0], logits(model, two)[0]
        except Exception as e:
            out[mode] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
            continue
        out[mode] = {
            "vs_alone": float((first[len(a) :] - alone).abs().max()),
            "leak": float((first[len(a) :] - second[len(a) :]).abs().max()),
            "a_vs_alone": float((first[: len(a)] - a_alone).abs().max()),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda where there is one)")
    parser.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (CUDA default)")
    parser.add_argument("--types", default=",".join(TYPES), help="comma-separated model types")
    parser.add_argument("--attn", default="sdpa,ftctl_varlen", help="attentions to try")
    parser.add_argument(
        "--emulate", default="", help="stand-ins for these of fla,causal_conv1d,mamba_ssm (or all): torch per document"
    )
    parser.add_argument("--one-config", action="store_true", help="Triton autotuners take their first config")
    args = parser.parse_args()
    if args.one_config:
        one_config()
    emulated = set(EMULATED if args.emulate == "all" else filter(None, args.emulate.split(",")))
    if emulated - set(EMULATED):
        parser.error(f"--emulate takes {','.join(EMULATED)} or all")
    if emulated:
        emulate_kernels(emulated)

    import torch
    import transformers

    from ftctl.trainer.attention import TORCH_VARLEN, register_varlen

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype or ("bfloat16" if device == "cuda" else "float32"))
    register_varlen(TORCH_VARLEN, masks=False)  # as a packed run registers it
    result = {
        "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "dtype": str(dtype),
        "docs": DOCS,
        "kernels": kernels_here(),
        "emulated": sorted(emulated),
        "one_config": args.one_config,
        "types": {},
    }
    if device == "cuda" and "fla" not in emulated and result["kernels"]["fla"] is True:
        result["fla_direct"] = fla_direct(device, dtype)
        print("fla_direct", json.dumps(result["fla_direct"]), flush=True)
    for model_type in args.types.split(","):
        for attn in args.attn.split(","):
            t0 = time.time()
            SEEN.clear()
            row = check(model_type, attn, dtype, device)
            if SEEN:  # per stand-in kernel: the boundary arguments of its calls, as transformers handed them
                row["handed"] = {name: sorted({"+".join(b) for b in calls}) for name, calls in SEEN.items()}
            row["s"] = round(time.time() - t0, 2)
            result["types"][f"{model_type}/{attn}"] = row
            print(model_type, attn, json.dumps(row), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "hybrid_packing.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
