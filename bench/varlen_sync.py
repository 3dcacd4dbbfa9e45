"""Where torch's varlen attention makes the host wait (device machine only).

The v11 profile of 8B qlora (bench/NOTES.md) found a ``cudaStreamSynchronize`` inside every layer's
``torch.nn.attention.varlen.varlen_attn`` forward and backward: the host can then never run more than one
layer ahead of the GPU. This script runs the 8B shape's attention (15,500 packed tokens, 32 query and 8
key/value heads of 128, documents of 256-2,048 tokens) forward and backward under torch.profiler, as ftctl
calls it and through aten's ``_flash_attention_forward`` directly, and lists the host's CUDA calls that
synchronise, with the ops around them.

    python3 bench/varlen_sync.py --out $OUT/varlen_sync.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SYNCS = ("Synchronize", "cudaMemcpy ", "cudaMemcpy\x00", "cudaStreamWaitEvent", "cudaHostAlloc", "cudaFree")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile

    from ftctl.trainer.attention import _cuda_varlen

    torch.manual_seed(0)
    lengths = []
    while sum(lengths) < 15500:
        lengths.append(int(torch.randint(256, 2049, ()).item()))
    lengths[-1] -= sum(lengths) - 15500
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
    total, max_len = 15500, max(lengths)
    q = torch.randn(total, 32, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(total, 8, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(total, 8, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)

    def ftctl_path():
        out = _cuda_varlen(q, k, v, cu, cu, max_len, max_len, 128**-0.5, None)
        out.sum().backward()

    def aten_forward_only():
        with torch.no_grad():
            torch.ops.aten._flash_attention_forward(q, k, v, cu, cu, max_len, max_len, 0.0, True, False)

    report = {"card": torch.cuda.get_device_name(), "torch": torch.__version__, "lengths": lengths}
    for name, fn in (("ftctl_path", ftctl_path), ("aten_forward_only", aten_forward_only)):
        fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                fn()
            torch.cuda.synchronize()
        trace = Path("/tmp") / f"varlen-{name}.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
        ops = sorted((e for e in events if e.get("cat") == "cpu_op" and "dur" in e), key=lambda e: e["ts"])
        calls = {}
        for e in events:
            if e.get("cat") not in ("cuda_runtime", "cuda_driver") or not any(s in e["name"] for s in SYNCS):
                continue
            around = [o["name"] for o in ops if o["tid"] == e["tid"] and o["ts"] <= e["ts"] <= o["ts"] + o["dur"]]
            key = f"{e['name']} | {' > '.join(around[-4:])}"
            c = calls.setdefault(key, {"count": 0, "us": 0.0})
            c["count"] += 1
            c["us"] += e.get("dur", 0)
        report[name] = {
            k2: {"per_call": c["count"] / 3, "us_per_call": round(c["us"] / 3, 1)} for k2, c in calls.items()
        }
        print(name, json.dumps(report[name], indent=1), flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
