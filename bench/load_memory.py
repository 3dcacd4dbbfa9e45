"""A trainer process's host memory at its peak on a GPU node, per method and strategy (run on the device machine).

Slurm's `--mem` for GPU jobs (slurm.render.load_memory_gb, helper 135) counts PROCESS_HOST_GB (6 GB) a process plus
the weights as transformers builds them on the CPU (fp32 for fft/sft, a whole copy a process for single/DDP/ZeRO-2,
a checkpoint file at a time for qlora and ZeRO-3), unmeasured. Here each case of bench/multi_gpu.py (1B shape, one
GPU) runs under a fresh parent that prints its descendants' largest resident set (RUSAGE_CHILDREN's ru_maxrss: the
torchrun worker's, the largest process there; the model is built before, in this process).

    python bench/load_memory.py --out DIR [--cases single,lora:1,qlora:1,zero3:1] [--steps 8]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PARENT = (
    "import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
    "print('MAXRSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, 'RC', rc, flush=True)"
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--work", default="/tmp/load_memory")
    ap.add_argument("--cases", default="single,lora:1,qlora:1,zero3:1")
    ap.add_argument("--steps", type=int, default=8)
    a = ap.parse_args()
    out, work = Path(a.out), Path(a.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    from bench.gpu_train import make_model

    make_model("1b", work)  # here, not in a measured process
    rows = []
    for case in a.cases.split(","):
        cmd = [
            sys.executable,
            "-c",
            PARENT,
            sys.executable,
            "bench/multi_gpu.py",
            "--out",
            str(out / case.replace(":", "_")),
        ]
        cmd += ["--work", str(work), "--cases", case, "--steps", str(a.steps), "--budget-s", "200", "--no-netcheck"]
        t = time.time()
        p = subprocess.run(cmd, capture_output=True, text=True)
        line = next((x for x in p.stdout.splitlines() if x.startswith("MAXRSS_KB")), "")
        parts = line.split()
        row = {"case": case, "wall_s": round(time.time() - t, 1)}
        if parts:
            row |= {"maxrss_gb": round(int(parts[1]) * 1024 / 1e9, 2), "rc": int(parts[3])}
        else:
            row["error"] = (p.stdout + p.stderr)[-2000:]
        rows.append(row)
        print(json.dumps(row), flush=True)
        (out / "load_memory.json").write_text(json.dumps({"rows": rows}, indent=1))


if __name__ == "__main__":
    main()
