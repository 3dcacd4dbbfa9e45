"""What glibc's allocator settings do to a CPU training step: peak RSS and step time, side by side.

A CPU step of SmolLM2-135M's shape at 2,048-token rows (fp32, sdpa, PEFT LoRA r=16 on all linear layers with
dropout 0.05, or full fine-tuning; fused AdamW) kept ~4 GB more resident than its tensors need on this project's
2-core machine: glibc's malloc serves the step's many 1-30 MB activations from its heap once its mmap threshold
has grown past them (the threshold is dynamic), and freed heap memory stays resident. A fixed threshold
(MALLOC_MMAP_THRESHOLD_, or the glibc.malloc.mmap_threshold tunable) gives every larger block back at free, at the
price of page faults when the next one is mapped. This measures both sides on the device host's CPU (never in CI):

    python3 bench/cpu_allocator.py --out DIR [--threads 4] [--steps 3]

Each case is its own process pinned to the same ``--threads`` cores, one after another; step 1 is a warm-up,
the rest are timed (wall and CPU seconds, minor page faults). Results: DIR/cpu-allocator.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

CASES = {  # name -> (method, environment)
    "lora": ("lora", {}),
    "lora+mmap1M": ("lora", {"MALLOC_MMAP_THRESHOLD_": "1048576"}),
    "lora+mmap4M": ("lora", {"MALLOC_MMAP_THRESHOLD_": "4194304"}),
    "lora+mmap1M+thp": ("lora", {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=1048576:glibc.malloc.hugetlb=1"}),
    "fft": ("fft", {}),
    "fft+mmap1M": ("fft", {"MALLOC_MMAP_THRESHOLD_": "1048576"}),
}


def child(method: str, steps: int, threads: int) -> dict:
    os.sched_setaffinity(0, set(range(threads)))
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, intermediate_size=1536,
        vocab_size=49152, tie_word_embeddings=True, max_position_embeddings=2048,
    )  # fmt: skip
    config._attn_implementation = "sdpa"
    model = LlamaForCausalLM(config)
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], fused=True)
    ids = torch.randint(0, config.vocab_size, (1, 2048))
    rows = []
    for step in range(steps):
        before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        after = resource.getrusage(resource.RUSAGE_SELF)
        rows.append(
            {
                "step": step + 1,
                "wall_s": round(time.perf_counter() - start, 3),
                "user_s": round(after.ru_utime - before.ru_utime, 2),
                "sys_s": round(after.ru_stime - before.ru_stime, 2),
                "minor_faults": after.ru_minflt - before.ru_minflt,
                "peak_rss_gb": round(after.ru_maxrss / 1e6, 3),
            }
        )
    return {"method": method, "torch": torch.__version__, "steps": rows}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.steps, args.threads)))
        return
    os.makedirs(args.out, exist_ok=True)
    results = {"cpu": _cpu_name(), "threads": args.threads, "glibc": os.confstr("CS_GNU_LIBC_VERSION"), "cases": {}}
    for name in args.cases.split(","):
        method, env = CASES[name]
        cmd = [sys.executable, __file__, "--child", method, "--steps", str(args.steps), "--threads", str(args.threads)]
        run_env = {**os.environ, **env, "OMP_NUM_THREADS": str(args.threads)}
        done = subprocess.run(cmd, env=run_env, capture_output=True, text=True, timeout=900)
        if done.returncode:
            results["cases"][name] = {"env": env, "error": done.stderr[-2000:]}
        else:
            results["cases"][name] = {"env": env, **json.loads(done.stdout.strip().splitlines()[-1])}
        print(name, json.dumps(results["cases"][name].get("steps", results["cases"][name])), flush=True)
        with open(os.path.join(args.out, "cpu-allocator.json"), "w") as f:
            json.dump(results, f, indent=1)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown"


if __name__ == "__main__":
    main()
