"""Two GPUs of one host against one: fft of the Llama-3.2-1B shape, every strategy, through `ftctl launch`.

Run on the device machine (never in CI), in one call on the 2-GPU kind, with the wheels carried
(README.md "multi_gpu.py"). Cases, each its own `ftctl launch --backend local` (torchrun, NCCL; the line
every backend runs), ~20 steps of packed 2,048-token rows, global batch 16 rows in every case (1 GPU:
8 x 2 accumulation; 2 GPUs: 8 x 1), so the losses of the same steps are comparable:

    1 GPU single | 2 GPUs ddp, zero2, zero3, fsdp (FSDP2 through accelerate) [, zero3_offload]

and first the network probe across both GPUs (python -m ftctl.trainer.netcheck: bus bandwidth, NCCL's
transport). Writes, after every case (a run cut short still leaves its rows):

    $OUT/multi_gpu.json   {"card", "kind", "torch", "netcheck", "rows": [{card, gpus, method, strategy,
                          tokens_per_s, scaling_vs_1gpu, parity_max_rel_diff, peak_gib, plan_peak_gib, mfu,
                          losses, ...}]}
    $OUT/multi_gpu.md     the same as a table

    python3 bench/multi_gpu.py --out DIR [--steps 20] [--cases single,ddp,zero2,zero3,fsdp] [--budget-s 480]
    python3 bench/multi_gpu.py --plot DIR/multi_gpu.json   (here, with matplotlib: the parity curves as a PNG)

tokens_per_s counts steps 6.. (the first ones compile and warm the allocator); scaling_vs_1gpu divides by
the 1-GPU row; parity_max_rel_diff is the largest |loss - loss_1gpu| / loss_1gpu over the common steps;
peak_gib is rank 0's torch.cuda.max_memory_allocated; plan_peak_gib the planner's memory_gb in GiB; mfu
counts 6 x parameters x tokens against the card's dense bf16 peak (attention left out).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GLOBAL_BATCH = 16
MICRO = 8
WARM = 5
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0}
KIND = "nvidia-h200-x2"


def launch(strategy: str, gpus: int, model: Path, data: Path, out: Path, steps: int, timeout: float) -> dict:
    tier = os.environ.get("BENCH_TIER", "H200")
    cmd = [
        sys.executable,
        "-m",
        "ftctl.cli",
        "launch",
        "--backend",
        "local",
        "--gpus",
        f"{gpus}x{tier}",
        "--method",
        "fft",
        "--model",
        str(model),
        "--data",
        str(data),
        "--output",
        str(out),
    ]
    for key, value in {
        "max_steps": steps,
        "global_batch_size": GLOBAL_BATCH,
        "per_device_train_batch_size": MICRO,
        "model_max_length": 2048,
        "save_steps": 100000,
        "logging_steps": 1,
        "resume": "never",
        "seed": 7,
        "warmup_ratio": 0.0,
        "strategy": strategy,
    }.items():
        cmd += ["-o", f"{key}={value}"]
    t = time.time()
    # its own session: on a timeout the whole tree goes (torchrun's workers would keep the GPUs otherwise)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
        rc, tail = proc.returncode, (stderr or "")[-2500:] + (stdout or "")[-1000:]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        rc, tail = "timeout", f"{timeout:.0f} s: " + (stderr or "")[-2000:]
    wall = round(time.time() - t, 1)
    rows = []
    if (out / "metrics.jsonl").exists():
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    steps_ = [r for r in rows if "loss" in r]
    start = next((r for r in rows if r.get("event") == "start"), {})
    row = {"gpus": gpus, "method": "fft", "strategy": strategy, "wall_s": wall, "steps": len(steps_)}
    if rc != 0 or len(steps_) <= WARM + 1:
        return {**row, "error": f"exit {rc}: {tail}"}
    timed = steps_[WARM:]
    dt = timed[-1]["time"] - steps_[WARM - 1]["time"]
    plan = json.loads((out / "spec.json").read_text())["plan"]
    return {
        **row,
        "tokens_per_s": round((timed[-1]["tokens"] - steps_[WARM - 1]["tokens"]) / dt, 1),
        "peak_gib": max(r.get("peak_mem_gib") or 0 for r in steps_),
        "plan_peak_gib": round(plan["memory_gb"] * 1e9 / 2**30, 2),
        "plan": {
            k: plan.get(k)
            for k in (
                "strategy",
                "per_device_train_batch_size",
                "gradient_accumulation_steps",
                "gradient_checkpointing",
            )
        },
        "attention": start.get("attention"),
        "final_loss": steps_[-1]["loss"],
        "losses": [r["loss"] for r in steps_],
    }


def netcheck(out: Path) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += ["-m", "ftctl.trainer.netcheck", "--json", str(out / "netcheck.json")]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return {"error": "timeout"}
    print(proc.stdout, flush=True)
    if proc.returncode != 0:
        return {"error": proc.stderr[-2000:]}
    return json.loads((out / "netcheck.json").read_text())


def params_of(model_dir: Path) -> int:
    cfg = json.loads((model_dir / "config.json").read_text())
    h, i, n, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    kv = h * cfg["num_key_value_heads"] // cfg["num_attention_heads"]
    per_layer = h * h * 2 + 2 * h * kv + 3 * h * i + 2 * h
    return n * per_layer + v * h * (1 if cfg.get("tie_word_embeddings") else 2) + h


def finish(rows: list[dict], card: str, n_params: int) -> None:
    """scaling, parity and MFU against the 1-GPU row (in place)."""
    base = next((r for r in rows if r["gpus"] == 1 and "error" not in r), None)
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in card), None)
    for r in rows:
        r["card"] = card
        if "error" in r:
            continue
        r["mfu"] = round(6 * n_params * r["tokens_per_s"] / (r["gpus"] * peak * 1e12), 3) if peak else None
        if base is None or r is base:
            r["scaling_vs_1gpu"] = 1.0 if r is base else None
            r["parity_max_rel_diff"] = 0.0 if r is base else None
            continue
        r["scaling_vs_1gpu"] = round(r["tokens_per_s"] / base["tokens_per_s"], 3)
        common = min(len(r["losses"]), len(base["losses"]))
        r["parity_max_rel_diff"] = round(
            max(abs(a - b) / abs(b) for a, b in zip(r["losses"][:common], base["losses"][:common])), 5
        )


def write(out: Path, result: dict) -> None:
    (out / "multi_gpu.json").write_text(json.dumps(result, indent=1))
    cols = ["gpus", "strategy", "tokens_per_s", "scaling_vs_1gpu", "mfu", "parity_max_rel_diff", "peak_gib"]
    cols += ["plan_peak_gib", "final_loss", "wall_s"]
    lines = [
        f"# fft, Llama-3.2-1B shape, {result['card']} ({result['kind']}), torch {result['torch']}",
        "",
        f"netcheck: {json.dumps(result.get('netcheck'))}",
        "",
        "| " + " | ".join(cols) + " | error |",
        "|" + "---|" * (len(cols) + 1),
    ]
    for r in result["rows"]:
        lines.append("| " + " | ".join(str(r.get(c, "")) for c in cols) + f" | {r.get('error', '')[:200]!r} |")
    (out / "multi_gpu.md").write_text("\n".join(lines) + "\n")


def plot(path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    result = json.loads(path.read_text())
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for r in result["rows"]:
        if r.get("losses"):
            ax.plot(range(1, len(r["losses"]) + 1), r["losses"], label=f"{r['gpus']} GPU {r['strategy']}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(f"fft 1B shape, {result['card']}: loss parity")
    ax.legend()
    png = path.with_suffix(".png")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    return png


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--cases", default="single,ddp,zero2,zero3,fsdp")
    ap.add_argument("--budget-s", type=float, default=480, help="stop starting cases after this many seconds")
    ap.add_argument("--work", default="/tmp/ftctl-bench")
    ap.add_argument("--plot", help="a multi_gpu.json to draw (no GPU needed)")
    a = ap.parse_args()
    if a.plot:
        print(plot(Path(a.plot)))
        return
    t0 = time.time()
    import torch

    from bench.gpu_train import make_data, make_model

    out, work = Path(a.out), Path(a.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    card = torch.cuda.get_device_name(0)
    result = {"card": card, "kind": KIND, "torch": torch.__version__, "steps": a.steps, "rows": []}
    for mod in ("deepspeed", "trl", "transformers", "accelerate"):
        try:
            result[mod] = __import__(mod).__version__
        except Exception as e:  # deepspeed missing: its rows fail with the reason
            result[mod] = f"missing: {e}"
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}), flush=True)
    result["netcheck"] = netcheck(out)
    write(out, result)
    model, data = make_model("1b", work), make_data(work / "data.json")
    n_params = params_of(model)
    for case in a.cases.split(","):
        left = a.budget_s - (time.time() - t0)
        gpus = 1 if case == "single" else 2
        if left < 45:
            result["rows"].append({"gpus": gpus, "method": "fft", "strategy": case, "error": "skipped: budget"})
            continue
        print(f"--- {case} on {gpus} GPU(s), {left:.0f} s left", flush=True)
        row = launch(case, gpus, model, data, work / f"{case}-{gpus}", a.steps, timeout=min(left, 200))
        print(json.dumps({k: v for k, v in row.items() if k != "losses"})[:1500], flush=True)
        result["rows"].append(row)
        finish(result["rows"], card, n_params)
        write(out, result)
    print((out / "multi_gpu.md").read_text(), flush=True)


if __name__ == "__main__":
    main()
