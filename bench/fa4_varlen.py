"""torch's varlen attention (FlashAttention 2's kernels, what ftctl runs on an H200 today) against FlashAttention 4
(flash-attn-4's CuTe DSL kernels, sm90) on a packed batch (device machine only; bench/fa4_stage.sh stages FA4).

For the 1B shape (32 query / 8 key-value heads of 64) and the 8B shape (32 / 8 of 128): 16,384 packed tokens,
documents of 256-2,048 tokens, causal per document, bf16. Each kernel's output and q/k/v gradients against an
fp32 reference (SDPA per document, attention.py's CPU path), then CUDA-event times of the forward and of forward +
backward (5 warm-ups, 20 timed), and FA4's first call apart (it compiles its kernels then). A layer's attention
in the training step is one forward + backward; bench/NOTES.md has the per-step totals it compares with.

    python3 bench/fa4_varlen.py --out $OUT/fa4_varlen.json      (bash bench/fa4_varlen.sh on the device)
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHAPES = {"1B": (32, 8, 64), "8B": (32, 8, 128)}  # query heads, key/value heads, head dim
TOKENS, WARM, TIMED = 16384, 5, 20


def packed(tokens: int, seed: int = 0):
    import torch

    gen = torch.Generator().manual_seed(seed)
    lengths = []
    while sum(lengths) < tokens:
        lengths.append(int(torch.randint(256, 2049, (), generator=gen)))
    lengths[-1] -= sum(lengths) - tokens
    lengths = [n for n in lengths if n > 0]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
    return cu, max(lengths)


def kernels():
    from ftctl.trainer.attention import _cuda_varlen

    out = {"torch_varlen": lambda q, k, v, cu, m, s: _cuda_varlen(q, k, v, cu, cu, m, m, s, None)}
    try:
        from flash_attn.cute import flash_attn_varlen_func
    except ImportError as e:
        print(f"flash-attn-4 not importable ({e}): torch's kernels only", flush=True)
        return out, str(e)

    def fa4(q, k, v, cu, m, s):
        r = flash_attn_varlen_func(
            q, k, v, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=m, max_seqlen_k=m, softmax_scale=s, causal=True
        )
        return r[0] if isinstance(r, tuple) else r  # (out, lse) in 4.0.0b36

    out["fa4"] = fa4
    return out, None


def timed(fn, backward: bool, grad) -> float:
    import torch

    def once():
        o = fn()
        if backward:
            o.backward(grad)

    for _ in range(WARM):
        once()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(TIMED):
        once()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / TIMED


def one_shape(name: str, fns: dict) -> dict:
    import torch

    from ftctl.trainer.attention import _reference_varlen

    hq, hkv, d = SHAPES[name]
    cu, max_len = packed(TOKENS)
    gen = torch.Generator(device="cuda").manual_seed(1)
    q, k, v = (torch.randn(TOKENS, h, d, device="cuda", generator=gen) for h in (hq, hkv, hkv))
    grad = torch.randn(TOKENS, hq, d, device="cuda", generator=gen)
    scale = d**-0.5

    ref = [t.clone().requires_grad_() for t in (q, k, v)]
    ref_out = _reference_varlen(*ref, cu, cu, max_len, max_len, scale, None)
    ref_out.backward(grad)
    expected = [ref_out.detach(), *(t.grad for t in ref)]

    result = {"shape": name, "heads": [hq, hkv], "head_dim": d, "tokens": TOKENS, "documents": len(cu) - 1}
    for kname, fn in fns.items():
        row = {}
        ins = [t.to(torch.bfloat16).requires_grad_() for t in (q, k, v)]
        g16 = grad.to(torch.bfloat16)
        try:
            torch.cuda.synchronize()
            t0 = time.time()
            out = fn(*ins, cu, max_len, scale)
            out.backward(g16)
            torch.cuda.synchronize()
            row["first_call_s"] = round(time.time() - t0, 2)
            got = [out.detach(), *(t.grad for t in ins)]
            row["rel_err_vs_fp32"] = {
                w: round(float((g.float() - e).norm() / e.norm()), 5)
                for w, g, e in zip(("out", "dq", "dk", "dv"), got, expected)
            }
            call = functools.partial(fn, *ins, cu, max_len, scale)
            row["forward_ms"] = round(timed(call, False, g16), 3)
            row["forward_backward_ms"] = round(timed(call, True, g16), 3)
        except Exception as e:  # one failing kernel must not lose the other's numbers
            row["error"] = f"{type(e).__name__}: {str(e)[:500]}"
        result[kname] = row
        print(name, kname, json.dumps(row), flush=True)
    if "fa4" in result and "forward_backward_ms" in result["fa4"] and "forward_backward_ms" in result["torch_varlen"]:
        result["fa4_speedup_fwd_bwd"] = round(
            result["torch_varlen"]["forward_backward_ms"] / result["fa4"]["forward_backward_ms"], 3
        )
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--shapes", default="1B,8B")
    a = ap.parse_args()

    import torch

    fns, missing = kernels()
    report = {
        "card": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "fa4_missing": missing,
        "rows": [one_shape(s, fns) for s in a.shapes.split(",")],
    }
    Path(a.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
