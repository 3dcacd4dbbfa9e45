"""ftctl's trainer against the tuned TRL peer, side by side on one GPU (device machine only, never CI).

One call runs, for each row, in its own process (so no row's memory leaks into another's peak):
  1. ftctl: RunSpec -> make_plan(1xH200) -> ftctl.trainer.run.setup/fit, nothing hand-tuned
     (the plan's attention, packing, micro-batch; global batch 8 rows of 2,048 tokens);
  2. the unpacked reference (1B rows): the same run with the same samples in each step, unpacked and
     padded with SDPA (same seed, same schedule), stopped after 20 steps: its losses must match
     ftctl's first 20 within 1% relative;
  3. the peer exactly as issue 11 describes it: TRL SFTTrainer, padded batches, group_by_length,
     use_liger_kernel, adamw_torch_fused, no gradient checkpointing, micro-batch 8 (1B) / 2 (8B lora)
     / 4 (8B qlora), pure bf16 weights, LoRA r16/alpha32/dropout .05 all-linear, QLoRA nf4 + double
     quant with bf16 compute, loss on every token, 5 warm-up then 30 timed steps.
Data: 1,200 sequences of random token ids, lengths uniform in [256, 2048] (seed 0), the same for both.
Models: random-initialised from configs on the GPU in bf16, saved once to /dev/shm (RAM; falls back
to /tmp) and loaded from there by every process: no 16 GB checkpoint on the 64 GB disk.

    python3 bench/compare.py --out-dir $OUT [--rows fft1b,lora1b,qlora1b,lora8b,qlora8b] [--steps 35]
        [--phases ftctl,peer,reference,probe,profile] [--variant NAME:KEY=VALUE,... ...]

--variant adds a timed ftctl phase with RunSpec fields or TrainingArguments attributes changed (an experiment
before it becomes the planner's choice), e.g. --variant workers:logging_steps=10,dataloader_num_workers=2.

Writes <out-dir>/<date>-h200-compare.json and .md after every row (a timeout keeps the rows done).
"""

from __future__ import annotations

import argparse
import bisect
import datetime
import gc
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
import traceback
import warnings
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.gpu_train import SHAPES  # noqa: E402  (the model shapes, one place for every bench)

ROWS = {
    "fft1b": ("fft", "1b", 8),
    "lora1b": ("lora", "1b", 8),
    "qlora1b": ("qlora", "1b", 8),
    "lora8b": ("lora", "8b", 2),
    "qlora8b": ("qlora", "8b", 4),
}  # row: (method, shape, the peer's micro-batch)
# BENCH_CPU=1: the same script on CPU with tiny shapes, to debug it before spending device time
CPU = os.environ.get("BENCH_CPU") == "1"
if CPU:
    SHAPES = {
        k: dict(
            v,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=512,
        )
        for k, v in SHAPES.items()
    }
PEAK_TFLOPS = 989.0
ROWS_NAME = {
    k: {"1b": "Llama-3.2-1B", "8b": "Llama-3.1-8B"}[v[1]] for k, v in ROWS.items()
}  # H100/H200 dense bf16, the denominator
WARM = 5
SEQS, MIN_LEN, MAX_LEN = 1200, 256, 2048


# ------------------------------------------------------------------------------------------ inputs
def model_dir(shape: str, root: Path) -> Path:
    """A bf16 checkpoint of a random-initialised Llama of this shape (built on the GPU once)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.tiny_fixtures import make_tiny_tokenizer

    path = root / f"llama-{shape}"
    if (path / "config.json").exists():
        return path
    t = time.time()
    cfg = LlamaConfig(**SHAPES[shape], bos_token_id=None, eos_token_id=0, pad_token_id=0)
    torch.manual_seed(0)
    with torch.device("cpu" if CPU else "cuda"):
        torch.set_default_dtype(torch.bfloat16)
        model = LlamaForCausalLM(cfg)
        torch.set_default_dtype(torch.float32)
    tmp = path.with_name(path.name + ".tmp")
    model.save_pretrained(tmp)
    make_tiny_tokenizer().save_pretrained(tmp)
    os.replace(tmp, path)
    del model
    torch.cuda.empty_cache()
    print(f"built {path} in {time.time() - t:.0f} s", flush=True)
    return path


def dataset():
    """1,200 sequences of random token ids, lengths uniform in [256, 2048]; loss on every token."""
    import datasets

    rng = random.Random(0)
    ids = []
    for _ in range(SEQS):
        n = rng.randint(MIN_LEN, MAX_LEN) // (8 if CPU else 1)
        ids.append([rng.randrange(1, SHAPES["1b"]["vocab_size"]) for _ in range(n)])
    if CPU:
        ids = ids[:200]
    return datasets.Dataset.from_dict({"input_ids": ids, "labels": ids})


# ------------------------------------------------------------------------------------------ timing
class BatchCounting:
    """ftctl's batches as the Trainer takes them, in the training process (a collator wrapper would count
    inside DataLoader workers, whose counts never come back). A packed batch has no attention mask: its
    real tokens are the tensor's size less its padding to data.PACK_MULTIPLE (the trailing run of position
    0), counted on the device and read after the phase (``real``), so no count waits on the GPU."""

    def __init__(self, trainer):
        self._real, self.padded = [], []
        take = trainer.get_batch_samples

        def counted(epoch_iterator, num_batches, device):
            batches, items = take(epoch_iterator, num_batches, device)
            for b in batches:
                self.padded.append(b["input_ids"].numel())
                mask = b.get("attention_mask")
                self._real.append(mask.sum() if mask is not None else real_packed(b["position_ids"][0]))
            return batches, items

        trainer.get_batch_samples = counted

    @property
    def real(self) -> list[int]:
        return [int(n) for n in self._real]


def real_packed(positions):
    """A packed row's tokens before its padding (data.packed_padding, without reading the row): the index
    after the last token whose position is not 0."""
    import torch

    index = torch.arange(1, positions.numel() + 1, device=positions.device)
    return torch.where(positions != 0, index, 0).max()


class Counting:
    """Wraps a collator: tokens of every batch, real (labels/positions) and padded (the tensor)."""

    def __init__(self, collate):
        self.collate = collate
        self.real, self.padded = [], []

    def __call__(self, rows):
        batch = self.collate(rows)
        self.padded.append(batch["input_ids"].numel())
        mask = batch.get("attention_mask")
        self.real.append(int(mask.sum()) if mask is not None else batch["input_ids"].numel())
        return batch


def clock_callback(stop_at: int | None = None):
    import torch
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def __init__(self):
            self.t = []
            self.events = []  # a CUDA event at each step's end: when the GPU got there
            self.losses = []

        def on_step_end(self, args, state, control, **kw):
            # the span's two ends wait for the GPU; the steps between do not, so that a trainer that keeps
            # the GPU's queue full across steps (no per-step sync of its own) is timed as it runs. A step's
            # host stamp is when the host finished it (the last step's then carries the host's lead); its
            # event, when the GPU finished it: timing() takes the steps' durations from the events
            if not CPU:
                self.events.append(torch.cuda.Event(enable_timing=True))
                self.events[-1].record()
            if not CPU and state.global_step in (WARM, state.max_steps, stop_at):
                torch.cuda.synchronize()
            self.t.append(time.perf_counter())
            if stop_at and state.global_step >= stop_at:
                control.should_training_stop = True

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                self.losses.append(logs["loss"])

    return Clock()


def profile_callback(first: int, last: int, into: dict):
    """torch.profiler over steps first..last (CPU and CUDA): the kernels' time per step and the top of the
    table, into ``into``. The profiler slows the steps it traces, so their wall time says nothing: the
    report divides the kernel time by the unprofiled phase's median step (summarise: ftctl_gpu_busy)."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    from transformers import TrainerCallback

    def sync():
        if not CPU:
            torch.cuda.synchronize()

    class Profile(TrainerCallback):
        prof = None

        def on_step_begin(self, args, state, control, **kw):
            if state.global_step + 1 == first:
                sync()
                # stacks and shapes name each kernel's Python caller and tensor (tables "by_stack", "by_shape")
                self.prof = profile(
                    activities=[ProfilerActivity.CPU, *([] if CPU else [ProfilerActivity.CUDA])],
                    record_shapes=True,
                    with_stack=True,
                )
                self.prof.__enter__()
                # every synchronizing CUDA call in these steps, by its caller outside torch
                self.syncs, self.shown = {}, warnings.showwarning
                warnings.simplefilter("always")
                warnings.showwarning = lambda msg, *a, **k: self.count_sync(str(msg))
                torch.cuda.set_sync_debug_mode("warn") if not CPU else None

        def count_sync(self, msg: str):
            if "synchroniz" not in msg:
                return
            frames = [
                f
                for f in traceback.extract_stack()[:-2]
                if "/torch/" not in f.filename and "warnings" not in f.filename
            ]
            site = " < ".join(
                f"{Path(f.filename).parent.name}/{Path(f.filename).name}:{f.lineno}" for f in frames[::-1][:3]
            )
            self.syncs[site] = self.syncs.get(site, 0) + 1

        def on_step_end(self, args, state, control, **kw):
            if self.prof is not None and state.global_step == last:
                sync()
                self.prof.__exit__(None, None, None)
                events = self.prof.key_averages()
                # kernels only (as the table's "Self CUDA time total"): ops' own rows repeat their kernels
                device = [e for e in events if e.device_type == DeviceType.CUDA and not e.is_user_annotation]
                into["steps"] = last - first + 1
                into["kernels_s_per_step"] = round(
                    sum(e.self_device_time_total for e in device) / 1e6 / into["steps"], 4
                )
                into["table"] = events.table(sort_by="self_device_time_total", row_limit=30, max_name_column_width=60)
                by = dict(sort_by="self_device_time_total", row_limit=40, max_name_column_width=40)
                into["by_stack"] = self.prof.key_averages(group_by_stack_n=6).table(**by, max_src_column_width=90)
                into["by_shape"] = self.prof.key_averages(group_by_input_shape=True).table(
                    **by, max_shapes_column_width=90
                )
                if not CPU:
                    trace = Path(os.environ.get("TMPDIR", "/tmp")) / f"ftctl-trace-{os.getpid()}.json"
                    self.prof.export_chrome_trace(str(trace))
                    events = json.loads(trace.read_text())
                    into["gaps"] = gap_report(events, into["steps"])
                    into["kernel_callers"] = kernel_callers(events, into["steps"])
                    trace.unlink()
                self.prof = None
                torch.cuda.set_sync_debug_mode(0) if not CPU else None
                warnings.showwarning = self.shown
                into["syncs_per_step"] = {
                    k: v / into["steps"] for k, v in sorted(self.syncs.items(), key=lambda kv: -kv[1])
                }
                control.should_training_stop = True

    return Profile()


def gap_report(trace: dict, steps: int, top: int = 15) -> dict:
    """Where the GPU waits: the idle time between kernels (chrome trace of the profiled steps), per step,
    by what the host's main thread was running meanwhile (the innermost op or annotation covering the
    gap's middle, under its outermost annotation), and by the op whose launch ended the gap."""
    ev = trace["traceEvents"] if isinstance(trace, dict) else trace
    kernels = sorted(
        (e["ts"], e["ts"] + e.get("dur", 0), e.get("name", "?"))
        for e in ev
        if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")
    )
    host = [e for e in ev if e.get("cat") in ("cpu_op", "user_annotation", "cuda_runtime") and "dur" in e]
    main_tid = (
        max({e["tid"] for e in host}, key=lambda t: sum(e["dur"] for e in host if e["tid"] == t)) if host else None
    )
    host = sorted((e for e in host if e["tid"] == main_tid), key=lambda e: e["ts"])
    notes = [e for e in host if e["cat"] == "user_annotation"]
    ops = [e for e in host if e["cat"] == "cpu_op"]
    op_ts = [e["ts"] for e in ops]
    launches = [e["ts"] for e in host if e["cat"] == "cuda_runtime"]
    # with_stack's Python frames (the profiler's Python tracer): what the host ran where no op covers a gap
    frames = sorted((e for e in ev if e.get("cat") == "python_function" and "dur" in e), key=lambda e: e["ts"])
    frame_ts = [e["ts"] for e in frames]

    def python_at(t):
        return "(python) " + (frames_at(frames, frame_ts, t) or "no op")

    def innermost(t):  # the shortest op running at time t (nested ops start later: look back a while)
        i = bisect.bisect_right(op_ts, t)
        cover = [e for e in ops[max(0, i - 3000) : i] if e["ts"] + e["dur"] >= t]
        return min(cover, key=lambda e: e["dur"])["name"] if cover else None

    gaps, end, last = [], None, None
    for a, b, name in kernels:
        if end is not None and a - end > 20:  # µs
            gaps.append((end, a, last))
        if end is None or b >= end:
            end, last = b, name
    by_host, by_next, by_before, largest, total = {}, {}, {}, [], 0.0
    for a, b, before in gaps:
        mid = (a + b) / 2
        outer = next((e["name"] for e in notes if e["ts"] <= mid <= e["ts"] + e["dur"]), "")
        inner = innermost(mid) or python_at(mid)
        label = f"{outer[:50]} > {inner[:150]}" if outer else inner[:160]
        i = bisect.bisect_right(launches, b)
        nxt = (innermost(launches[i - 1]) if i else None) or "?"
        by_host[label] = by_host.get(label, 0.0) + (b - a)
        by_next[nxt[:60]] = by_next.get(nxt[:60], 0.0) + (b - a)
        by_before[before[:60]] = by_before.get(before[:60], 0.0) + (b - a)
        largest.append((round((b - a) / 1e3, 2), before[:60], nxt[:60], label))
        total += b - a
    span = (kernels[-1][1] - kernels[0][0]) if kernels else 0

    def ms(d):
        return {k: round(v / 1e3 / steps, 2) for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:top]}

    # where the host waited on the GPU: CUDA calls of 200 us or more, by name and the Python frames around them
    waits, tid_frames = {}, {}
    ops_by_tid = {}
    for e in sorted((e for e in ev if e.get("cat") == "cpu_op" and "dur" in e), key=lambda e: e["ts"]):
        ops_by_tid.setdefault(e["tid"], []).append(e)
    op_starts = {tid: [o["ts"] for o in v] for tid, v in ops_by_tid.items()}
    for f in frames:
        tid_frames.setdefault(f["tid"], []).append(f)
    for e in ev:
        if e.get("cat") in ("cuda_runtime", "cuda_driver") and e.get("dur", 0) >= 200:
            where = frames_at(tid_frames.get(e["tid"], []), None, e["ts"], depth=4) or "?"
            tid_ops = ops_by_tid.get(e["tid"], [])
            i = bisect.bisect_right(op_starts[e["tid"]], e["ts"]) if tid_ops else 0
            around = sorted(
                (o for o in tid_ops[max(0, i - 500) : i] if o["ts"] + o["dur"] >= e["ts"]), key=lambda o: o["dur"]
            )
            where = f"{' < '.join(o['name'][:40] for o in around[:3])} | {where}"
            label = f"{e['name'][:30]} | {where}"
            waits[label] = waits.get(label, 0.0) + e["dur"]
    return {
        "host_waits": ms(waits),
        "idle_ms_per_step": round(total / 1e3 / steps, 2),
        "span_ms_per_step": round(span / 1e3 / steps, 2),
        "gaps_per_step": round(len(gaps) / steps, 1),
        "by_host_activity": ms(by_host),
        "by_op_that_ended_it": ms(by_next),
        "by_kernel_before_it": ms(by_before),  # the GPU's last work before the gap (the optimizer's? a sync's?)
        # the longest gaps of all the profiled steps: ms, the kernel before, the op after, the host meanwhile
        "largest": sorted(largest, reverse=True)[:top],
    }


def frames_at(frames: list, starts: list, t: float, depth: int = 4) -> str:
    """The Python frames (with_stack's tracer events of one thread, sorted by start) running at time t,
    innermost first: the innermost one, then one frame per file further out, ``depth`` in all."""
    starts = [e["ts"] for e in frames] if starts is None else starts
    i = bisect.bisect_right(starts, t)
    cover = sorted((e for e in frames[max(0, i - 5000) : i] if e["ts"] + e["dur"] >= t), key=lambda e: e["dur"])
    names, files = [], []
    for e in cover:
        file = e["name"].split("(")[0]
        if names and file in files:
            continue
        names.append(e["name"].split("/")[-1][:50])
        files.append(file)
        if len(names) == depth:
            break
    return " < ".join(names)


def kernel_callers(trace: dict, steps: int, top: int = 45) -> dict:
    """The GPU's time by kernel and the host code that launched it (ms a step): each kernel's launch (its
    correlation id), the innermost and outermost op around the launch on the launching thread (the
    autograd engine's node in the backward) and the Python frames there."""
    ev = trace["traceEvents"] if isinstance(trace, dict) else trace
    launches = {
        e["args"]["correlation"]: e
        for e in ev
        if e.get("cat") in ("cuda_runtime", "cuda_driver") and "correlation" in e.get("args", {})
    }
    ops, frames = {}, {}
    for e in ev:
        if "dur" in e and e.get("cat") in ("cpu_op", "python_function"):
            (ops if e["cat"] == "cpu_op" else frames).setdefault(e["tid"], []).append(e)
    for table in (ops, frames):
        for tid in table:
            table[tid].sort(key=lambda e: e["ts"])
    starts = {tid: [e["ts"] for e in v] for tid, v in ops.items()}
    frame_starts = {tid: [e["ts"] for e in v] for tid, v in frames.items()}
    out = {}
    for k in ev:
        if k.get("cat") not in ("kernel", "gpu_memcpy", "gpu_memset"):
            continue
        launch = launches.get(k.get("args", {}).get("correlation"))
        name = k["name"].split("(")[0].split("<")[0][:40]
        where = "?"
        if launch is not None:
            tid, t = launch["tid"], launch["ts"]
            i = bisect.bisect_right(starts.get(tid, []), t)
            cover = sorted(
                (e for e in ops.get(tid, [])[max(0, i - 500) : i] if e["ts"] + e["dur"] >= t), key=lambda e: e["dur"]
            )
            names = [cover[0]["name"][:45], cover[-1]["name"][:70]] if cover else ["(no op)"]
            where = " < ".join(dict.fromkeys(names))
            python = frames_at(frames.get(tid, []), frame_starts.get(tid, []), t, depth=3)
            where += f" | {python}" if python else ""
        label = f"{name} <- {where}"
        out[label] = out.get(label, 0.0) + k.get("dur", 0)
    return {k: round(v / 1e3 / steps, 2) for k, v in sorted(out.items(), key=lambda kv: -kv[1])[:top]}


def timing(clock, counter, accum: int) -> dict:
    """tokens/s over the steps after the warm-up (batches of those steps), step-time spread."""
    steps = len(clock.t)
    dts = [b - a for a, b in zip(clock.t[WARM - 1 : -1], clock.t[WARM:])]
    span = clock.t[-1] - clock.t[WARM - 1]
    host_dts = dts
    if clock.events:  # each step's GPU time (the span's ends are synchronised: the same total)
        dts = [a.elapsed_time(b) / 1e3 for a, b in zip(clock.events[WARM - 1 : -1], clock.events[WARM:])]
    counts = counter.real
    real = sum(counts[WARM * accum : steps * accum])
    padded = sum(counter.padded[WARM * accum : steps * accum])
    step_real = [sum(counts[k * accum : (k + 1) * accum]) for k in range(WARM, steps)]
    # one-off slow steps (v4: the peer's 1B fft had two 2 s steps among 0.3 s ones) weigh heavily in 30
    # steps and would amortise in a long run: the same rate without the steps over 3x the median
    slow = [k for k, d in enumerate(dts) if d > 3 * statistics.median(dts)]
    kept = [k for k in range(len(dts)) if k not in slow]
    return {
        "timed_steps": steps - WARM,
        "tokens_per_s": round(real / span, 1),
        "tokens_per_s_without_slow_steps": round(sum(step_real[k] for k in kept) / sum(dts[k] for k in kept), 1),
        "slow_steps": slow,
        "step_tokens": step_real,
        "padded_tokens_per_s": round(padded / span, 1),
        "tokens_per_step": round(real / max(steps - WARM, 1)),
        "step_s_median": round(statistics.median(dts), 4),
        "step_s_min": round(min(dts), 4),
        "step_s_max": round(max(dts), 4),
        "step_s": [round(d, 4) for d in dts],  # each timed step: which one is slow (v3: one 0.77 s step)
        "host_step_s": [round(d, 4) for d in host_dts],  # when the host finished each (before v13: step_s)
    }


def memory(torch) -> dict:
    if CPU:
        return {"peak_gib": 1.0, "peak_reserved_gib": 1.0}
    return {
        "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2),
    }


ALLOC_COUNTS = ("num_alloc_retries", "num_device_alloc", "num_device_free", "num_sync_all_streams")


def allocator_counts(torch) -> dict:
    """The caching allocator's event counters and the card's free memory now (a phase's start)."""
    if CPU:
        return {}
    stats = torch.cuda.memory_stats()
    return {**{k: stats.get(k, 0) for k in ALLOC_COUNTS}, "free_gib": torch.cuda.mem_get_info()[0] / 2**30}


def allocator_since(torch, before: dict) -> dict:
    """What the allocator did during a phase: retries (an allocation failed, the cache was released and the
    allocation tried again: with expandable segments each release waits on the GPU, cudaStreamSynchronize),
    segments mapped and unmapped; and the card's free memory when the phase began (an earlier phase of the
    same process that kept its memory shows here)."""
    if CPU:
        return {}
    now = allocator_counts(torch)
    return {**{k: now[k] - before[k] for k in ALLOC_COUNTS}, "free_gib_at_start": round(before["free_gib"], 1)}


def free(torch):
    gc.collect()
    if not CPU:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


# ------------------------------------------------------------------------------------------ ftctl
def ftctl_spec(method: str, path: Path, work: Path, steps: int, tag: str, extra: tuple[str, ...] = ()):
    from ftctl.spec import build

    return build(
        flags=dict(
            method=method,
            model_name_or_path=str(path),
            data_path=str(work / "unused.json"),
            output_dir=str(work / tag),
            gpus="cpu" if CPU else "1xH200",
            backend="local",
        ),
        overrides=[
            f"max_steps={steps}",
            "global_batch_size=8",
            "model_max_length=2048",
            "save_steps=100000",
            "logging_steps=1",
            "resume=never",
            *(["packing=true"] if CPU else []),  # the CPU plan's sdpa does not pack by default
            *extra,
        ],
    )


def run_ftctl(
    method: str,
    path: Path,
    work: Path,
    steps: int,
    data,
    reference: bool = False,
    micro: int | None = None,
    profile: bool = False,
    variant: dict | None = None,
) -> dict:
    """ftctl's trainer as its plan says; ``reference``: same samples per step, unpacked, SDPA;
    ``micro``: a probe of another micro-batch (no checkpointing) for the largest that fits;
    ``profile``: torch.profiler over three steps after the warm-up (a phase of its own: never timed);
    ``variant``: an experiment (--variant): RunSpec overrides (KEY=VALUE of spec fields) and, for the
    other keys, TrainingArguments settings added to what the trainer builds. Timed like the ftctl phase."""
    import torch

    import ftctl.trainer.data as data_mod
    import ftctl.trainer.run as run_mod
    from ftctl.plan import make_plan
    from ftctl.spec import FIELDS
    from ftctl.trainer.attention import FLASH_ATTN, TORCH_VARLEN, mask_preparation
    from ftctl.trainer.run import CUDA_ALLOC_ENV, fit, setup

    variant = variant or {}
    spec_keys = tuple(f"{k}={v}" for k, v in variant.items() if k in FIELDS)
    args_extra = {k: json.loads(v) for k, v in variant.items() if k not in FIELDS}
    built = run_mod.training_args
    if args_extra:  # restored below: later phases of this process run the trainer as it is

        def with_extra(*a, **k):
            args = built(*a, **k)
            for key, value in args_extra.items():
                setattr(args, key, value)
            return args

        run_mod.training_args = with_extra
    tag = "ref" if reference else f"ftctl{micro or ''}{'-variant' if variant else ''}"
    spec = ftctl_spec(method, path, work, steps, tag, spec_keys)
    plan = make_plan(spec)
    if reference:
        plan = replace(plan, attn_implementation="sdpa")  # packing stays on: same samples in each step
    if micro:
        plan = replace(
            plan,
            per_device_train_batch_size=micro,
            gradient_accumulation_steps=8 // micro,
            gradient_checkpointing=False,
        )
    data_mod.build_dataset = lambda *a, **k: data  # the random-id dataset instead of a chat file
    clock = clock_callback(stop_at=20 if reference else None)
    profiled: dict = {}
    callbacks = [clock, *([profile_callback(WARM + 1, WARM + 3, profiled)] if profile else [])]
    free(torch)
    before = allocator_counts(torch)
    run = setup(spec, plan, callbacks=callbacks, echo=lambda line: print(line, flush=True))
    # setup() sets the allocator's settings for a fresh process (the trainer's real start); this row's
    # process may already hold CUDA (the model was built here), so apply them now, as a fresh one would
    allocator_settings(torch, os.environ.get(CUDA_ALLOC_ENV, ""))
    if reference:
        if run.kernels.attn_implementation in (TORCH_VARLEN, FLASH_ATTN):
            mask_preparation(run.kernels.attn_implementation, True)  # padded batches: masks (a packed run has none)
        pad = run.trainer.processing_class.pad_token_id
        collate = run.trainer.data_collator
        run.trainer.data_collator = lambda rows, c=collate: data_mod.unpack_batch(c(rows), pad)
    counter = BatchCounting(run.trainer)
    try:
        fit(run)
    finally:
        run_mod.training_args = built
    run.preemption.uninstall()
    out = {
        "plan": {
            k: getattr(plan, k)
            for k in (
                "attn_implementation",
                "packing",
                "per_device_train_batch_size",
                "gradient_accumulation_steps",
                "gradient_checkpointing",
                "optim",
                "weights_dtype",
                "memory_gb",
                "memory",
            )
        },
        "kernels": run.kernels.record(),
        "losses": clock.losses[:20],
        "params_b": plan.model.params_b,
        **memory(torch),
        "allocator": allocator_since(torch, before),
    }
    if profile:
        out = {"kernels": out["kernels"], "allocator": out["allocator"], **profiled}
    elif not reference:
        out.update(timing(clock, counter, plan.gradient_accumulation_steps))
    run.trainer = counter = None
    del run
    free(torch)
    os.environ.pop(CUDA_ALLOC_ENV, None)  # the peer's phase runs with PyTorch's defaults
    allocator_settings(torch, "expandable_segments:False")
    return out


def allocator_settings(torch, value: str) -> None:
    if CPU or not value:
        return
    setter = getattr(torch._C, "_accelerator_setAllocatorSettings", None) or torch.cuda.memory._set_allocator_settings
    setter(value)


# ------------------------------------------------------------------------------------------ peer
def run_peer(method: str, path: Path, micro: int, steps: int, data) -> dict:
    """Issue 11's tuned TRL recipe, unchanged."""
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    kwargs = {"dtype": torch.float32 if CPU else torch.bfloat16, "device_map": {"": "cpu" if CPU else 0}}
    if method == "qlora":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float32 if CPU else torch.bfloat16,
        )
    free(torch)
    before = allocator_counts(torch)
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    peft = (
        LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
        if method != "fft"
        else None
    )
    args = SFTConfig(
        output_dir="/tmp/peer",
        max_steps=steps,
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=1,
        max_length=2048,
        train_sampling_strategy="group_by_length",
        gradient_checkpointing=False,
        use_liger_kernel=not CPU,
        optim="adamw_torch" if CPU else "adamw_torch_fused",
        bf16=not CPU,
        use_cpu=CPU,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        packing=False,
        padding_free=False,
        include_num_input_tokens_seen="non_padding",
    )
    tokenizer = AutoTokenizer.from_pretrained(path)
    clock = clock_callback()
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=data, processing_class=tokenizer, peft_config=peft, callbacks=[clock]
    )
    counter = trainer.data_collator = Counting(trainer.data_collator)
    trainer.train()
    out = {"micro_batch": micro, "losses": clock.losses[:20], **timing(clock, counter, 1), **memory(torch)}
    out["allocator"] = allocator_since(torch, before)
    trainer = model = counter = None
    free(torch)
    return out


# ------------------------------------------------------------------------------------------ one row
def one_row(row: str, a) -> dict:
    import torch

    method, shape, peer_micro = ROWS[row]
    work = Path(a.work)
    path = model_dir(shape, Path(a.models))
    data = dataset()
    result = {"row": row, "method": method, "shape": shape}
    phases = a.phases.split(",")
    for phase, fn in (
        ("ftctl", lambda: run_ftctl(method, path, work, a.steps, data)),
        ("peer", lambda: run_peer(method, path, peer_micro, a.peer_steps, data)),
        ("reference", lambda: run_ftctl(method, path, work, a.steps, data, reference=True)),
        ("probe", lambda: run_ftctl(method, path, work, WARM + 2, data, micro=a.probe_micro)),
        ("profile", lambda: run_ftctl(method, path, work, WARM + 3, data, profile=True)),
        *(
            (f"variant:{name}", lambda v=v: run_ftctl(method, path, work, a.steps, data, variant=v))
            for name, v in variants(a.variant)
        ),
    ):
        if (phase not in phases and not phase.startswith("variant:")) or (
            (phase == "reference" and shape not in a.check_shapes.split(","))
            or (phase == "probe" and shape not in a.probe_shapes.split(","))
        ):
            continue
        t = time.time()
        try:
            result[phase] = fn()
        except Exception as e:  # one failing phase must not lose the others
            import traceback

            traceback.print_exc()
            result[phase] = {"error": f"{type(e).__name__}: {str(e)[:400]}"}
            free(torch)
        result[phase]["wall_s"] = round(time.time() - t, 1)
        if phase == "probe":
            result[phase]["micro"] = a.probe_micro
        shown = {k: v for k, v in result[phase].items() if k not in ("losses", "plan", "table")}
        if "table" in result[phase]:
            print(result[phase]["table"], flush=True)
        print(f"{row} {phase}: {json.dumps(shown)}", flush=True)
    return result


def variants(specs: list[str] | None) -> list[tuple[str, dict]]:
    """--variant NAME:KEY=VALUE,KEY=VALUE -> [(NAME, {KEY: VALUE})]: extra ftctl phases (run_ftctl)."""
    out = []
    for text in specs or []:
        name, _, body = text.partition(":")
        out.append((name, dict(kv.split("=", 1) for kv in body.split(",") if kv)))
    return out


# ------------------------------------------------------------------------------------------ report
def plan_now(method: str, shape: str, ran: dict) -> float:
    """The current planner's estimate (GiB) for the row as it ran (same micro-batch and checkpointing)."""
    import tempfile

    from ftctl.plan import ModelShape, _shape_from_config, _trainable_b, memory_terms
    from ftctl.spec import build

    cfg = dict(SHAPES[shape], model_type="llama")
    with tempfile.TemporaryDirectory() as d:
        Path(d, "config.json").write_text(json.dumps(cfg))
        spec = build(dict(method=method, model_name_or_path=d, gpus="1xH200", global_batch_size=8))
        model: ModelShape = _shape_from_config(cfg, d)
        terms = memory_terms(
            method,
            "single",
            model,
            1,
            ran["per_device_train_batch_size"],
            2048,
            ran["gradient_checkpointing"],
            _trainable_b(method, model, spec),
            optim=ran.get("optim", "adamw_torch_fused"),
        )
    return round(sum(terms.values()) * 1e9 / 2**30, 2)


def summarise(r: dict, card: str) -> dict:
    f, p, ref = r.get("ftctl", {}), r.get("peer", {}), r.get("reference", {})
    flops = 6 if r["method"] == "fft" else 4
    out = {
        "card": card,
        "shape": {"1b": "Llama-3.2-1B", "8b": "Llama-3.1-8B"}[r["shape"]],
        "method": r["method"],
        "peer_tokens_per_s": p.get("tokens_per_s"),
        "ftctl_tokens_per_s": f.get("tokens_per_s"),
        "ratio": round(f["tokens_per_s"] / p["tokens_per_s"], 2)
        if f.get("tokens_per_s") and p.get("tokens_per_s")
        else None,
        "ftctl_peak_gib": f.get("peak_gib"),
        "plan_peak_gib": plan_now(r["method"], r["shape"], f["plan"]) if "plan" in f else None,
        "plan_peak_gib_at_run": round(f["plan"]["memory_gb"] * 1e9 / 2**30, 2) if "plan" in f else None,
        "mfu": round(flops * f["params_b"] * 1e9 * f["tokens_per_s"] / (PEAK_TFLOPS * 1e12), 4)
        if f.get("tokens_per_s")
        else None,
        "peer_mfu": round(flops * f["params_b"] * 1e9 * p["tokens_per_s"] / (PEAK_TFLOPS * 1e12), 4)
        if p.get("tokens_per_s") and "params_b" in f
        else None,
    }
    if f.get("step_s") and p.get("step_s"):
        out["ratio_without_slow_steps"] = round(steady_rate(f) / steady_rate(p), 2)
    for phase, v in r.items():
        if phase.startswith("variant:") and v.get("tokens_per_s") and p.get("tokens_per_s"):
            out.setdefault("variants", {})[phase.split(":", 1)[1]] = {
                "tokens_per_s": v["tokens_per_s"],
                "ratio": round(v["tokens_per_s"] / p["tokens_per_s"], 2),
                "ratio_without_slow_steps": round(steady_rate(v) / steady_rate(p), 2),
                "step_s_median": v.get("step_s_median"),
            }
    busy = r.get("profile", {}).get("kernels_s_per_step")
    if busy and f.get("step_s_median"):  # the GPU's share of a step: the rest waits on the CPU (or syncs)
        out["ftctl_gpu_busy"] = round(busy / f["step_s_median"], 3)
    if out["ftctl_peak_gib"] and out["plan_peak_gib"]:
        out["plan_error"] = round(out["plan_peak_gib"] / out["ftctl_peak_gib"] - 1, 3)
    if f.get("losses") and ref.get("losses"):
        n = min(len(f["losses"]), len(ref["losses"]), 20)
        worst = max(abs(a - b) / abs(b) for a, b in zip(f["losses"][:n], ref["losses"][:n]))
        out["loss_check"] = {"steps": n, "max_rel_diff": round(worst, 5), "ok": n == 20 and worst <= 0.01}
    out["detail"] = r
    return out


def steady_rate(phase: dict) -> float:
    """tokens/s without the steps over 3x the median step (timing()); for JSONs written before the
    per-step token counts, estimated with the mean tokens per step."""
    if "tokens_per_s_without_slow_steps" in phase:
        return phase["tokens_per_s_without_slow_steps"]
    dts = phase["step_s"]
    kept = [d for d in dts if d <= 3 * statistics.median(dts)]
    return phase["tokens_per_step"] * len(kept) / sum(kept)


def write_report(rows: list[dict], meta: dict, out_dir: Path, stem: str) -> None:
    (out_dir / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))

    def n(v, fmt="{:,.0f}"):
        return "—" if v is None else fmt.format(v)

    lines = [
        f"# ftctl vs the tuned TRL peer — {meta['card']}, {meta['date']}",
        "",
        f"Versions: {', '.join(f'{k} {v}' for k, v in meta['versions'].items())}.",
        *(
            [f"Host: {h['cpu']}, {h['cores']} cores, a fixed Python loop {h['python_loop_ms']} ms (lower: quicker)."]
            if (h := meta.get("host"))
            else []
        ),
        "Peer and ftctl of a row ran one after the other in one process of one device call, unless the notes say",
        "otherwise. Real (non-pad) tokens/s over the steps after 5 warm-up steps.",
        "",
        "| shape / method | peer tok/s (padded) | ftctl tok/s | ratio | ratio w/o slow steps | MFU ftctl (peer) "
        "| ftctl plan | attention | peak GiB ftctl (reserved) | plan GiB | plan err | ftctl step s med [min-max] "
        "| loss check |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in rows:
        f, p = s["detail"].get("ftctl", {}), s["detail"].get("peer", {})
        plan = f.get("plan", {})
        lc = s.get("loss_check")
        lines.append(
            f"| {s['shape']} {s['method']} | {n(s['peer_tokens_per_s'])} ({n(p.get('padded_tokens_per_s'))}) "
            f"| {n(s['ftctl_tokens_per_s'])} | {n(s['ratio'], '{:.2f}x')} "
            f"| {n(s.get('ratio_without_slow_steps'), '{:.2f}x')} "
            f"| {n(s['mfu'], '{:.1%}')} ({n(s['peer_mfu'], '{:.1%}')}) "
            f"| {plan.get('per_device_train_batch_size', '?')}x2048 x {plan.get('gradient_accumulation_steps', '?')} "
            f"| {f.get('kernels', {}).get('attn_implementation', f.get('error', '?'))}"
            f"{' + liger' if f.get('kernels', {}).get('liger') else ''} "
            f"| {n(s['ftctl_peak_gib'], '{:.1f}')} ({n(f.get('peak_reserved_gib'), '{:.1f}')}) "
            f"| {n(s['plan_peak_gib'], '{:.1f}')} | {n(s.get('plan_error'), '{:+.1%}')} "
            f"| {n(f.get('step_s_median'), '{:.3f}')} [{n(f.get('step_s_min'), '{:.3f}')}-"
            f"{n(f.get('step_s_max'), '{:.3f}')}] "
            f"| {('ok' if lc['ok'] else 'FAIL') + ' ' + format(lc['max_rel_diff'], '.2%') if lc else '—'} |"
        )
    probes = [
        f"- {s['shape']} {s['method']}: micro-batch {s['detail']['probe'].get('micro', '?')}"
        f" x 2048 without checkpointing: "
        + (
            f"peak {s['detail']['probe']['peak_gib']} GiB, {n(s['detail']['probe'].get('tokens_per_s'))} tok/s"
            if "peak_gib" in s["detail"]["probe"]
            else s["detail"]["probe"].get("error", "?")
        )
        for s in rows
        if "probe" in s["detail"]
    ]
    if probes:
        lines += ["", "Largest micro-batch probes (what else would fit):", *probes]
    tried = [
        f"- {s['shape']} {s['method']} {name}: {n(v['tokens_per_s'])} tok/s, {v['ratio']:.2f}x the peer "
        f"({v['ratio_without_slow_steps']:.2f}x without slow steps), median step {v['step_s_median']} s"
        for s in rows
        for name, v in s.get("variants", {}).items()
    ]
    if tried:
        lines += ["", "Variants (--variant: the row's trainer with settings changed, same process):", *tried]
    errors = [
        f"- {s['shape']} {s['method']} {k}: {s['detail'][k]['error']}"
        for s in rows
        for k in ("ftctl", "reference", "peer")
        if "error" in s["detail"].get(k, {})
    ]
    if errors:
        lines += ["", "Errors:", *errors]
    if meta.get("notes"):
        lines += ["", "Notes:", *[f"- {note}" for note in meta["notes"]]]
    (out_dir / f"{stem}.md").write_text("\n".join(lines) + "\n")


def merge(paths: list[str], out_dir: Path) -> None:
    """One report from several calls' JSONs (a later call's phases of a row replace the same phases of an
    earlier one; a row's other phases stay: a profile-only call adds its profile to a timed row), every
    row's plan estimate recomputed with the planner as it is now (``plan_peak_gib``; the estimate the run
    was planned with stays in ``plan_peak_gib_at_run``)."""
    details, cards, meta = {}, {}, None
    for path in paths:
        data = json.loads(Path(path).read_text())
        meta = meta or data["meta"]
        for r in data["rows"]:
            key = (r["shape"], r["method"])
            details[key] = {**details.get(key, {}), **r["detail"]}
            cards[key] = r["card"]
    order = [(s, m) for s, m in ((ROWS_NAME[k], ROWS[k][0]) for k in ROWS) if (s, m) in details]
    write_report([summarise(details[k], cards[k]) for k in order], meta, out_dir, Path(paths[0]).stem)


def host() -> dict:
    """The host's CPU and a fixed pure-Python loop's time (best of 3): the peer's short steps are host-bound, and
    its rate moved 15-35% between calls on the same card (v17 against v18) with this host speed unrecorded."""
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        "unknown",
    )
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        sum(i * i for i in range(2_000_000))
        best = min(best, time.perf_counter() - t)
    return {"cpu": model, "cores": os.cpu_count(), "python_loop_ms": round(best * 1e3, 1)}


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in (
        "torch",
        "transformers",
        "trl",
        "peft",
        "bitsandbytes",
        "liger-kernel",
        "flash-attn",
        "flash-attn-4",
        "nvidia-cutlass-dsl",
    ):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--rows", default="fft1b,lora8b,qlora8b,lora1b,qlora1b")
    ap.add_argument("--steps", type=int, default=35, help="ftctl steps: 5 warm-up + 30 timed (>= 20: loss check)")
    ap.add_argument("--peer-steps", type=int, default=35, help="peer steps: 5 warm-up + 30 timed")
    ap.add_argument("--phases", default="ftctl,peer,reference,probe", help="and profile (torch.profiler, 3 steps)")
    ap.add_argument("--check-shapes", default="1b", help="shapes whose losses are checked / micro-batch probed")
    ap.add_argument("--probe-micro", type=int, default=8, help="phase probe: this micro-batch, no checkpointing")
    ap.add_argument("--probe-shapes", default="8b", help="shapes whose phase probe runs")
    ap.add_argument("--work", default="/tmp/ftctl-compare")
    ap.add_argument("--models", default="")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--merge", nargs="+", help="result JSONs of earlier calls: later rows replace earlier ones")
    ap.add_argument(
        "--variant",
        action="append",
        help="an extra timed ftctl phase, NAME:KEY=VALUE,... (RunSpec fields, else TrainingArguments attributes "
        "as JSON), e.g. log10:logging_steps=10 or workers:logging_steps=10,dataloader_num_workers=2",
    )
    a = ap.parse_args()
    if a.merge:
        return merge(a.merge, Path(a.out_dir))
    if not a.models:
        shm = Path("/dev/shm")
        a.models = str(
            shm / "ftctl-models" if shm.is_dir() and shutil.disk_usage(shm).free > 20e9 else "/tmp/ftctl-models"
        )
    Path(a.work).mkdir(parents=True, exist_ok=True)
    Path(a.models).mkdir(parents=True, exist_ok=True)
    out_dir = Path(a.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if a.one:
        result = one_row(a.one, a)
        (Path(a.work) / f"{a.one}.json").write_text(json.dumps(result))
        return
    import torch

    card = "cpu (BENCH_CPU=1 dry run)" if CPU else torch.cuda.get_device_name(0)
    date = datetime.date.today().isoformat()
    stem = f"{date}-{'cpu-dryrun' if CPU else 'h200'}-compare"
    # the GPU the rows run on: on a 2-GPU machine two instances take one GPU each (rows of one shape
    # per instance: each builds its own model), every row's peer and ftctl on the same GPU
    gpu = os.environ.get("CUDA_VISIBLE_DEVICES", "0")
    meta = {"card": card, "date": date, "versions": versions(), "host": host(), "models_in": a.models, "gpu": gpu}
    rows = []
    for row in a.rows.split(","):
        one = Path(a.work) / f"{row}.json"
        one.unlink(missing_ok=True)
        argv = [sys.executable, __file__, "--one", row, *sys.argv[1:]]
        subprocess.run(argv, env={**os.environ, "CUDA_VISIBLE_DEVICES": gpu, "PYTHONUNBUFFERED": "1"})
        r = (
            json.loads(one.read_text())
            if one.exists()
            else {
                "row": row,
                "method": ROWS[row][0],
                "shape": ROWS[row][1],
                "ftctl": {"error": "the row's process crashed"},
            }
        )
        rows.append(summarise(r, card))
        write_report(rows, meta, out_dir, stem)
    print((out_dir / f"{stem}.md").read_text(), flush=True)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
