"""How to add a LoRA adapter's output to its base projection: four ways, timed forward + backward on one GPU.

Device machine only (never CI). For each projection of the 1B and 8B shapes, 16,384 tokens, bf16 autocast,
a frozen bf16 base, fp32 adapters (r=16) with dropout 0.05, the same seed for every way:

    peft    base(x) + B(A(drop(x))) * s            PEFT's forward (mm, multiply, add)
    addmm   addmm(base(x), A(drop(x)), B^T, alpha=s)   ftctl's methods.fused_adapter_output today
    add_    base(x).add_(A(drop(x)) @ (s B)^T)      the scale on the small weight, an in-place add
    add     base(x) + A(drop(x)) @ (s B)^T          the same, out of place

Reports the median of 30 forward + backward passes after 5 warm-up ones (CUDA events), the difference to
`peft` per projection and summed over one block's seven projections, and each way's largest relative
difference to `peft` in the output and the gradients (B, A, x).

    python3 bench/lora_sum.py --out $OUT/lora_sum.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.gpu_train import SHAPES  # noqa: E402

TOKENS, RANK, SCALE, DROP = 16384, 16, 2.0, 0.05
WAYS = ("peft", "addmm", "add_", "add")


def projections(shape: dict) -> list[tuple[str, int, int]]:
    h, i = shape["hidden_size"], shape["intermediate_size"]
    kv = h * shape["num_key_value_heads"] // shape["num_attention_heads"]
    return [("q", h, h), ("k", h, kv), ("v", h, kv), ("o", h, h), ("gate", h, i), ("up", h, i), ("down", i, h)]


def forward(way: str, x, w, a, b, torch):
    f = torch.nn.functional
    result = f.linear(x, w)
    h = f.linear(f.dropout(x, DROP, training=True), a)
    if way == "peft":
        return result + f.linear(h, b) * SCALE
    if way == "addmm":
        return torch.addmm(result, h, b.t(), alpha=SCALE)
    delta = h @ (b * SCALE).t()
    return result.add_(delta) if way == "add_" else result + delta


def one(way: str, n_in: int, n_out: int, torch, reps: int = 30, warm: int = 5):
    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(TOKENS, n_in, device=dev, dtype=torch.bfloat16, generator=g).requires_grad_(True)
    w = (torch.randn(n_out, n_in, device=dev, generator=g) * n_in**-0.5).to(torch.bfloat16)
    a = (torch.randn(RANK, n_in, device=dev, generator=g) * n_in**-0.5).requires_grad_(True)
    b = (torch.randn(n_out, RANK, device=dev, generator=g) * 0.05).requires_grad_(True)
    grad = torch.randn(TOKENS, n_out, device=dev, dtype=torch.bfloat16, generator=g)
    times = []
    for i in range(warm + reps):
        x.grad = a.grad = b.grad = None
        torch.manual_seed(1)  # the same dropout mask for every way
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = forward(way, x, w, a, b, torch)
        y.backward(grad)
        end.record()
        torch.cuda.synchronize()
        if i >= warm:
            times.append(start.elapsed_time(end))
    return statistics.median(times), {"y": y.detach().float(), "x": x.grad.float(), "a": a.grad, "b": b.grad}


def main() -> None:
    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    result = {"card": torch.cuda.get_device_name(0), "torch": torch.__version__, "tokens": TOKENS, "shapes": {}}
    for name in ("1b", "8b"):
        rows = []
        for proj, n_in, n_out in projections(SHAPES[name]):
            ref_ms, ref = one("peft", n_in, n_out, torch)
            row = {"proj": proj, "in": n_in, "out": n_out, "peft_ms": round(ref_ms, 3)}
            for way in WAYS[1:]:
                ms, got = one(way, n_in, n_out, torch)
                row[f"{way}_ms"] = round(ms, 3)
                row[f"{way}_max_rel_diff"] = max(
                    round(((got[k] - ref[k]).abs().max() / ref[k].abs().max()).item(), 5) for k in ref
                )
            rows.append(row)
            print(name, json.dumps(row), flush=True)
        block = {way: round(sum(r[f"{way}_ms"] for r in rows), 3) for way in WAYS}
        result["shapes"][name] = {"projections": rows, "block_ms": block}
        print(name, "one block's seven projections, ms:", json.dumps(block), flush=True)
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
