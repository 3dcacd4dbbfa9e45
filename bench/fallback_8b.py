"""`ftctl launch --backend local --method fft` of a Llama-3.1-8B shape on one GPU, as a user runs it.

With the host memory declared too small for fft's CPU offload (the default, 100 GB: issue "First contact"),
it must run qlora instead, say so, and train a few steps. With `--host-memory-gb machine` the plan sees this
machine's RAM (v29: an H200 host with 128 GiB, which the planner's 16 B/param of then sent to ZeRO-Offload and
the OOM killer stopped; the planner now counts ~21 B/param, plan.offload_host_gb, and refuses), and the run says
whether the plan fits the host it was made for; the host's used memory is sampled every 0.5 s. `--shape 1b
--strategy zero2_offload` measures the same at 1B (v30).

    python3 bench/fallback_8b.py OUT_DIR [--host-memory-gb 100|machine] [--steps 4] [--seq 1024] [--global-batch 4]
        [--shape 8b|1b] [--strategy zero2_offload]

Builds a random-initialised Llama-3.1-8B-shaped model on the GPU (bf16, no hub), saves it once
(16 GB), then runs ftctl exactly as a user would and records what it printed and what ran.
GPU machine only; never run in CI.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def build_model(path: Path, shape: str) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.tiny_fixtures import make_tiny_tokenizer

    tok = make_tiny_tokenizer()
    from bench.gpu_train import SHAPES

    cfg = LlamaConfig(
        **{"tie_word_embeddings": False, **SHAPES[shape]},
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
    )
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    del model
    torch.cuda.empty_cache()


def as_launch_would(model: Path, data: str, output: str, opts: list[str]) -> tuple[list[str], dict]:
    """The trainer on the spec `ftctl launch --backend local` writes, with its environment, without launch's
    disk preflight: an 8B fft checkpoint (~128 GB with its optimizer state) exceeds the device machine's 64 GB
    disk, and launch rightly refuses; this run saves no checkpoint (save_steps past max_steps), only the
    final 16 GB model."""
    import os

    from ftctl.launch import trainer_env
    from ftctl.plan import dump_run, make_plan
    from ftctl.preflight import host_memory_gb
    from ftctl.spec import build

    spec = build(
        flags=dict(
            method="fft",
            model_name_or_path=str(model),
            data_path=data,
            output_dir=output,
            gpus="1xH200",
            backend="local",
        ),
        overrides=[*opts, f"host_memory_gb={host_memory_gb():.1f}"],
    )
    Path(output).mkdir(parents=True, exist_ok=True)
    path = Path("/tmp/offload-run.spec.json")
    path.write_text(dump_run(spec, make_plan(spec)))
    env = {**os.environ, **trainer_env(spec, inherited=os.environ)}
    return [sys.executable, "-m", "ftctl.trainer", "--spec", str(path)], env


def host_used_gb() -> float:
    info = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, value = line.split(":", 1)
            info[key] = int(value.split()[0]) * 1024
    return (info["MemTotal"] - info["MemAvailable"]) / 1e9


def sample_host(into: dict, stop: threading.Event) -> None:
    """The largest host memory in use (MemTotal - MemAvailable) while the run lasts, when it was seen, and a
    trace every 5 s."""
    t0 = time.time()
    trace = into.setdefault("host_used_trace", [])  # (seconds, GB) every 5 s
    while not stop.wait(0.5):
        used = host_used_gb()
        if not trace or time.time() - t0 >= trace[-1][0] + 5:
            trace.append((round(time.time() - t0), round(used, 1)))
        if used > into.get("peak_host_used_gb", 0):
            into.update(peak_host_used_gb=round(used, 1), peak_host_at_s=round(time.time() - t0, 1))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--host-memory-gb", default="100", help="a number, or 'machine': the plan reads this host")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--global-batch", type=int, default=4)
    parser.add_argument("--shape", default="8b", help="bench.gpu_train.SHAPES: 8b, 1b")
    parser.add_argument("--strategy", help="-o strategy= (e.g. zero2_offload for the 1b shape); default: the plan's")
    args = parser.parse_args()
    out_dir = Path(args.out)
    model = Path(f"/tmp/llama{args.shape}-shape")
    t0 = time.time()
    if not (model / "config.json").exists():
        build_model(model, args.shape)
    built = time.time() - t0
    cmd = [sys.executable, "-m", "ftctl.cli", "launch", "--backend", "local", "--method", "fft"]
    data = "builtin:demo"
    if args.seq * args.global_batch * args.steps > 16_000:  # the demo's ~16k tokens: one epoch of bench data
        from bench.gpu_train import make_data

        data = str(make_data(Path("/tmp") / "offload-data.json", args.global_batch * args.steps * 3 // 2))
    output = "/tmp/fallback-run"
    cmd += ["--model", str(model), "--data", data, "--output", output]
    opts = [f"max_steps={args.steps}", "save_steps=1000", f"model_max_length={args.seq}", "logging_steps=1"]
    opts += [f"global_batch_size={args.global_batch}"]
    if args.strategy:
        opts.append(f"strategy={args.strategy}")
    if args.host_memory_gb != "machine":
        opts.append(f"host_memory_gb={args.host_memory_gb}")
    for o in opts:
        cmd += ["-o", o]
    env = None
    if args.host_memory_gb == "machine":
        cmd, env = as_launch_would(model, data, output, opts)
    host: dict = {"host_used_before_gb": round(host_used_gb(), 1)}
    stop = threading.Event()
    sampler = threading.Thread(target=sample_host, args=(host, stop), daemon=True)
    sampler.start()
    t1 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    ran = time.time() - t1
    stop.set()
    sampler.join()
    run_dir = Path("/tmp/fallback-run")
    spec_file = next((p for p in (run_dir / "spec.json", Path("/tmp/offload-run.spec.json")) if p.exists()), None)
    run = json.loads(spec_file.read_text()) if spec_file else {}
    metrics_file = run_dir / "metrics.jsonl"
    metrics = [json.loads(x) for x in metrics_file.read_text().splitlines()] if metrics_file.exists() else []
    plan = run.get("plan", {})
    result = {
        "command": " ".join(cmd[2:]),
        "exit_code": proc.returncode,
        "stderr": proc.stderr[-4000:],
        "stdout_tail": proc.stdout[-2000:],
        "spec_method": run.get("spec", {}).get("method"),
        "plan_method": plan.get("method"),
        "asked_method": plan.get("asked_method"),
        "plan_strategy": plan.get("strategy"),
        "plan_batch": [plan.get("per_device_train_batch_size"), plan.get("gradient_accumulation_steps")],
        "plan_memory_gb": plan.get("memory_gb"),
        "plan_host_memory_gb": plan.get("host_memory_gb"),
        "losses": [m.get("loss") for m in metrics if "loss" in m],
        "times": [m.get("time") for m in metrics if "loss" in m],
        "tokens_per_s": [m.get("tokens_per_s") for m in metrics if "loss" in m],
        "peak_gib": max((m.get("peak_mem_gib") or 0 for m in metrics), default=None),
        **host,
        "host_total_gb": round(int(open("/proc/meminfo").readline().split()[1]) * 1024 / 1e9, 1),
        "build_model_s": round(built, 1),
        "launch_s": round(ran, 1),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    name = f"fallback-{args.shape}.json" if args.host_memory_gb != "machine" else f"offload-{args.shape}.json"
    (out_dir / name).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k not in ("stderr", "stdout_tail")}, indent=1))
    print(proc.stdout[-3000:])
    print(proc.stderr[-3000:])


if __name__ == "__main__":
    main()
