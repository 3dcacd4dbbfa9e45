"""LoRA's dropout + A: PEFT's two ops against trainer/lora_dropout.py's kernels, on one GPU.

Device machine only (never CI). For the inputs of the 8B shape's adapted projections (K = 4,096 for q, k, v,
o, gate, up; 14,336 for down), 16,384 tokens in bf16, A of rank 16 in fp32 (autocast's cast to bf16), p 0.05:

    peft    linear(dropout(x), A)        autograd keeps the dropped copy of x and the mask
    fused   lora_dropout.dropout_down    the kernels: x and a seed kept, the mask made again in the backward

Reports per K: the median of 30 forward + backward passes after 5 warm-up ones (CUDA events; the first
calls also autotune the kernels), the memory each way keeps from its forward for the backward, and the
kernels' largest relative difference to torch applying the kernels' own mask in bf16 (h, dx, dA). At these
sizes a pass is a few hundred microseconds of GPU work, so the events time the host's launch path as much
as the kernels (v8 in bench/NOTES.md): compare.py's profile phase gives their GPU time inside a real step.

    python3 bench/lora_dropout.py --out $OUT/lora_dropout.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TOKENS, RANK, DROP = 16384, 16, 0.05
WIDTHS = {"q,k,v,o,gate,up": 4096, "down": 14336}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    import torch
    import torch.nn.functional as F

    from ftctl.trainer import lora_dropout as ld

    dev = "cuda"
    rows = []
    for names, k in WIDTHS.items():
        torch.manual_seed(0)
        x = torch.randn(TOKENS, k, device=dev, dtype=torch.bfloat16, requires_grad=True)
        w = (torch.randn(RANK, k, device=dev) / k**0.5).requires_grad_(True)
        g = torch.randn(TOKENS, RANK, device=dev, dtype=torch.bfloat16)

        def peft(x=x, w=w):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return F.linear(F.dropout(x, DROP, training=True), w)

        def fused(x=x, w=w):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return ld.dropout_down(x, w, DROP)

        row = {"projections": names, "k": k, "tokens": TOKENS, "rank": RANK}
        for name, fn in (("peft", peft), ("fused", fused)):
            times = []
            for i in range(35):
                x.grad = w.grad = None
                torch.cuda.synchronize()
                before = torch.cuda.memory_allocated()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                h = fn()
                kept = torch.cuda.memory_allocated() - before - h.numel() * h.element_size()
                h.backward(g)
                end.record()
                torch.cuda.synchronize()
                if i >= 5:
                    times.append(start.elapsed_time(end))
                del h
            row[f"{name}_ms"] = round(statistics.median(times), 4)
            row[f"{name}_kept_mib"] = round(kept / 2**20, 1)
        # the kernels against torch applying their mask (bf16 in, fp32 accumulation in both)
        seed = 1234
        x.grad = w.grad = None
        h = ld._DropoutDown.apply(x, w, DROP, seed)
        h.backward(g)
        keep = ld.keep_mask(TOKENS, k, DROP, seed, device=dev)
        x2, w2 = x.detach().clone().requires_grad_(True), w.detach().clone().requires_grad_(True)
        ref = (x2.float() * keep * ld.keep_scale(DROP)).to(torch.bfloat16).float() @ w2.to(torch.bfloat16).float().t()
        ref.backward(g.float())

        def rel(p, q):
            return float((p.float() - q.float()).norm() / q.float().norm())

        row |= {
            "rel_h": rel(h, ref),
            "rel_dx": rel(x.grad, x2.grad),
            "rel_dw": rel(w.grad, w2.grad),
            "kept_fraction": float(keep.float().mean()),
        }
        row["saved_ms"] = round(row["peft_ms"] - row["fused_ms"], 4)
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = {"card": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}
    import triton

    out["triton"] = triton.__version__
    # one block of the 8B shape: six projections of K 4096 and one of 14336; 32 blocks
    per_block = 6 * rows[0]["saved_ms"] + rows[1]["saved_ms"]
    out["saved_ms_per_8b_step_16k_tokens"] = round(32 * per_block, 2)
    out["kept_gib_saved_per_8b_step"] = round(
        32
        * (
            6 * (rows[0]["peft_kept_mib"] - rows[0]["fused_kept_mib"])
            + rows[1]["peft_kept_mib"]
            - rows[1]["fused_kept_mib"]
        )
        / 1024,
        2,
    )
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(json.dumps({k: v for k, v in out.items() if k != "rows"}))


if __name__ == "__main__":
    main()
