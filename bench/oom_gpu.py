"""Out of GPU memory on a real card (run on the device machine, not in CI): what `ftctl launch` says, and whether
the plan it offers runs.

1. PyTorch's own out-of-memory text (an allocation larger than the card), read by ftctl.trainer.gpu_memory.card.
2. Another process holds HOG GB of the GPU (a shared card); `ftctl launch --backend local` of a 1B-shape run (fft,
   lora or qlora) whose plan needs more than is left: its rc, stdout, stderr (the warning before the model loads, the one error line).
3. The same command again with the `-o` overrides the error named, the other process still there: rc, steps, peak.

    python bench/oom_gpu.py --out DIR [--hog-gb 100] [--method fft|lora|qlora]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.gpu_train import make_data, make_model  # noqa: E402

HOG = """
import sys, time, torch
x = torch.empty(int(float(sys.argv[1]) * 1e9), dtype=torch.uint8, device="cuda")
print("held", flush=True)
time.sleep(900)
"""


def pytorch_text() -> dict:
    import torch

    from ftctl.trainer import gpu_memory

    try:
        torch.empty(int(400e9), dtype=torch.uint8, device="cuda")
    except torch.OutOfMemoryError as e:
        text = str(e)
    torch.cuda.empty_cache()
    c = gpu_memory.card(text)
    return {"text": text, "card": c and {**c.__dict__, "others": c.others}}


def launch(model: Path, data: Path, out: Path, flags: list[str], method: str) -> dict:
    cmd = [sys.executable, "-m", "ftctl.cli", "launch", "--backend", "local", "--gpus", "1xH200", "--method", method]
    cmd += ["--model", str(model), "--data", str(data), "--output", str(out)]
    for o in ["max_steps=6", "global_batch_size=16", "model_max_length=2048", "save_steps=100000", "resume=never"]:
        cmd += ["-o", o]
    cmd += flags
    t = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    metrics = out / "metrics.jsonl"
    rows = [json.loads(x) for x in metrics.read_text().splitlines()] if metrics.exists() else []
    steps = [r for r in rows if "loss" in r]
    plan = json.loads((out / "spec.json").read_text())["plan"] if (out / "spec.json").exists() else {}
    return {
        "flags": flags,
        "rc": proc.returncode,
        "wall_s": round(time.time() - t, 1),
        "stdout_tail": proc.stdout[-3000:],
        "stderr": proc.stderr[-4000:],
        "steps": len(steps),
        "final_loss": steps[-1]["loss"] if steps else None,
        "peak_mem_gib": max((r.get("peak_mem_gib") or 0 for r in steps), default=None),
        "plan": {k: plan.get(k) for k in ("strategy", "per_device_train_batch_size", "gradient_checkpointing")}
        | {"memory_gb": plan.get("memory_gb")},
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--hog-gb", type=float, default=100.0)
    ap.add_argument("--method", default="fft", help="fft, lora or qlora (the 1B shape)")
    ap.add_argument("--work", default="/tmp/ftctl-oom")
    a = ap.parse_args()
    import torch

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    result = {"card": torch.cuda.get_device_name(0), "method": a.method, "hog_gb": a.hog_gb, "pytorch": pytorch_text()}
    model, data = make_model("1b", work), make_data(work / "data.json", rows=200)
    torch.cuda.empty_cache()
    hog = subprocess.Popen([sys.executable, "-c", HOG, str(a.hog_gb)], stdout=subprocess.PIPE, text=True)
    try:
        assert hog.stdout.readline().strip() == "held"
        free, total = torch.cuda.mem_get_info(0)
        result["free_gb_before"], result["total_gb"] = round(free / 1e9, 2), round(total / 1e9, 2)
        first = launch(model, data, work / "out-default", [], a.method)
        result["default"] = first
        said = [line for line in (first["stderr"] + first["stdout_tail"]).splitlines() if "Relaunch with" in line]
        offered = re.findall(r"-o (\w+=\S+)", said[-1].split("Relaunch with", 1)[1].split(":")[0]) if said else []
        result["offered"] = offered
        if offered:
            flags = [x for o in offered for x in ("-o", o)]
            # into the same output, as a user reruns the command with the -o it names (v47: before, the run dir's
            # guard refused it, "already holds a run with different settings")
            result["relaunched"] = launch(model, data, work / "out-default", flags, a.method)
    finally:
        hog.kill()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"oom-{a.method}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1)[-6000:])


if __name__ == "__main__":
    main()
