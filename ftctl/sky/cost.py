"""What a SkyPilot run would cost: the cheapest cloud/region/instance from SkyPilot's optimizer and
catalog (through ftctl.sky.bridge, in-process, no API server), times the run's estimated hours.

Hours = tokens to train / tokens per second (preflight.train_seconds, which the expiry of short-lived
credentials is checked against too). Tokens: max_steps x global batch x sequence length when max_steps
is set, else epochs x the dataset's tokens (a local file's bytes / 4; unknown for a remote one).
Tokens per second: plan.tokens_per_second, the GPUs' dense bf16/fp16 peak over the FLOPs a token
(plan.flops_per_token: 6 x params for full updates, 4 x params for adapters, which skip the weight gradients, and a
block's forward again under gradient checkpointing; attention's from plan.attention_flops, every document as long as a
row, an upper bound), each at its own assumed share of peak (plan.weights_mfu: plan.FULL_MFU, or plan.ADAPTER_MFU by
the model's width; plan.ATTENTION_MFU). Measured on an H100 (bench/NOTES.md v110-v117). A rough figure, said so.
"""

from __future__ import annotations

import math

from ftctl.plan import Plan, attention_mfu, attention_words, tokens_per_second, weights_mfu
from ftctl.preflight import train_seconds, train_tokens
from ftctl.slurm.render import gib, node_memory_gb
from ftctl.spec import RunSpec


def memory_request(plan: Plan) -> str | None:
    """SkyPilot's ``memory:`` (GiB, as its catalogs list instances and Kubernetes pods ask) for a plan that keeps
    something in host RAM (an offload plan, a CPU plan): a node with at least what it needs, as Slurm's --mem asks
    (slurm.render.node_memory_gb, the one owner of that number)."""
    need = node_memory_gb(plan)
    return f"{gib(need)}+" if need else None


def host_memory_gb_within(gib: float) -> int:
    """The -o host_memory_gb (GB, rounded down) that plans within a node of ``gib`` GiB of RAM, as SkyPilot's catalogs
    and clusters give it."""
    return math.floor(float(gib) * 2**30 / 1e9)


def no_vm(answer: dict, spec: RunSpec, plan: Plan) -> str:
    """What to do where SkyPilot's optimizer found no instance with the GPUs and the RAM a plan asks for (``answer``:
    ftctl.sky.sdk.optimize's no_vm), in the plan's words: the cheapest instance of those GPUs, and its RAM to plan
    within."""
    need, gpus = node_memory_gb(plan), f"{plan.gpus_per_node}x{plan.tier}"
    where = f"on --infra {spec.infra}" if spec.infra else "in the catalogs of SkyPilot's enabled clouds"
    other = answer["without_memory"]
    within = host_memory_gb_within(other["memory_gib"])
    return (
        f"no VM with {gpus} and {gib(need)} GiB of RAM {where} (memory: {memory_request(plan)}): the "
        f"{plan.strategy} plan keeps ~{need:.0f} GB a node in host RAM, its optimizer offloaded. The cheapest VM "
        f"with {gpus}, {other['cloud']} {other['instance_type']}, has {other['memory_gib']:g} GiB: -o "
        f"host_memory_gb={within} plans within it (ftctl then names the nearest plans that fit)."
    )


def describe(best: dict, spec: RunSpec, plan: Plan) -> str:
    if "unavailable" in best:
        return f"{'cheapest':<14} unknown: {best['unavailable']}"
    hourly = best["hourly_per_node"] * plan.nodes
    where = f"{best['cloud']} {best['region'] or ''} {best['instance_type'] or ''}".split()
    if "options" in best:  # the GPU type it priced, among -o also_gpus's
        where.append(f"({_gpus(best)})")
    line = (
        f"{'cheapest':<14} {' '.join(where)}{' (spot)' if best['spot'] else ''}: "
        f"${best['hourly_per_node']:.2f}/h per node, ${hourly:.2f}/h for {plan.nodes} node{'s' * (plan.nodes > 1)}"
    )
    # -o also_gpus, -o on_demand_fallback: what SkyPilot fails over to where the cheapest is not to be had
    if others := [o for o in best.get("options", []) if o["hourly_per_node"] > best["hourly_per_node"]]:
        market = any(o["spot"] for o in [best, *others])
        line += (
            f"\n{'fallbacks':<14} "
            + ", ".join(
                f"{_gpus(o)}{(' (spot)' if o['spot'] else ' (on-demand)') if market else ''} ${o['hourly_per_node']:.2f}/h"
                for o in others
            )
            + " per node"
        )
    tokens, rate = train_tokens(spec, plan), tokens_per_second(plan, spec.model_max_length)
    if tokens is None or rate is None:
        why = (
            "the dataset is not local (set -o max_steps)" if tokens is None else f"no throughput figure for {plan.tier}"
        )
        return line + f"\n{'est. total':<14} unknown: {why}"
    hours = train_seconds(spec, plan) / 3600  # tokens at the plan's step time: the one estimate of the run's length
    return line + (
        f"\n{'est. total':<14} ${hours * hourly:,.2f} for {_duration(hours)} of training "
        f"({tokens:,.0f} tokens at ~{rate:,.0f} tokens/s, {weights_mfu(plan):.0%} of peak assumed ({attention_mfu(plan):.0%} for attention); "
        f"{attention_words(plan, spec.model_max_length)[0]})\n{'':<14} {not_counted(spec, plan)}"
    )


def _gpus(option: dict) -> str:
    """A100-80GB:8, as SkyPilot names an option's accelerators."""
    return ", ".join(f"{name}:{count:g}" for name, count in (option.get("accelerators") or {}).items())


def _duration(hours: float) -> str:
    """~2.50 h, or under an hour ~25 min (a short run read "$0.00 for ~0.00 h")."""
    return f"~{hours:.2f} h" if hours >= 1 else f"~{max(1, round(hours * 60))} min"


def not_counted(spec: RunSpec, plan: Plan) -> str:
    """What the estimate leaves out, which a short run's bill is mostly made of: the node's start and setup, the
    model's download, and the checkpoints written to the node's disk and uploaded to the output (sizes as the node's
    disk is sized: ftctl.preflight.checkpoint_gb)."""
    from ftctl.preflight import checkpoint_gb

    one, final = checkpoint_gb(plan)
    saves = f"each checkpoint ({_size(one)}) and the final model ({_size(final)}) written and uploaded"
    if spec.max_steps > 0 and plan.save_steps:  # the plan's: given, or chosen for it (plan.checkpoint_cadence)
        n = spec.max_steps // plan.save_steps
        each = f"{n} checkpoint{'s' * (n > 1)} of {_size(one)} and " if n else ""
        saves = f"{each}the final model ({_size(final)}) written and uploaded"
    download = plan.model.params_b * 2  # GB: 16-bit safetensors, as the hub serves them (render.DOWNLOAD_BYTES)
    return f"not counted: the node's start and setup, the model's {_size(download)} download, {saves}"


def _size(gb: float) -> str:
    return f"~{gb:,.0f} GB" if gb >= 1 else f"~{max(1, round(gb * 1000))} MB"
