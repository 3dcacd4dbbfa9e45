"""Check a built flash-attn wheel on the GPU: flash_attn_varlen_func against torch SDPA.

Packed documents, per-document causal attention, GQA (16 query heads, 4 key/value heads), bf16:
forward output and the gradients of q, k and v are compared with a float32 SDPA reference run one
document at a time. flash-attn passes when its error is at most twice that of bf16 SDPA against
the same reference, plus 1e-3 (the criterion of flash-attn's own tests).

    python3 bench/flash_attn_check.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F


def reference(q, k, v, cu, dtype):
    """Per-document causal SDPA in ``dtype``; GQA by repeating key/value heads."""
    rep = q.shape[1] // k.shape[1]
    outs = []
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
        qd, kd, vd = (t[a:b].transpose(0, 1).to(dtype) for t in (q, k, v))  # (heads, len, dim)
        kd, vd = kd.repeat_interleave(rep, 0), vd.repeat_interleave(rep, 0)
        outs.append(F.scaled_dot_product_attention(qd, kd, vd, is_causal=True).transpose(0, 1))
    return torch.cat(outs)


def run(seed: int = 0, dev: str = "cuda", max_len: int = 2048, reps: int = 10) -> dict:
    from flash_attn import __version__ as fa_version
    from flash_attn import flash_attn_varlen_func

    torch.manual_seed(seed)
    lengths = torch.randint(max_len // 32, max_len, (12,)).tolist() + [1, 7]  # odd and tiny documents too
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=dev)
    total, hq, hkv, d = int(cu[-1]), 16, 4, 128
    q, k, v = (torch.randn(total, h, d, device=dev, dtype=torch.bfloat16) for h in (hq, hkv, hkv))
    grad = torch.randn(total, hq, d, device=dev, dtype=torch.bfloat16)

    def fwd_bwd(fn, dtype):
        leaves = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
        out = fn(*leaves)
        out.backward(grad.to(dtype))
        return [out.detach().float()] + [t.grad.float() for t in leaves]

    maxlen = max(lengths)
    fa = fwd_bwd(lambda a, b, c: flash_attn_varlen_func(a, b, c, cu, cu, maxlen, maxlen, causal=True), torch.bfloat16)
    ref32 = fwd_bwd(lambda a, b, c: reference(a, b, c, cu, torch.float32), torch.float32)
    ref16 = fwd_bwd(lambda a, b, c: reference(a, b, c, cu, torch.bfloat16), torch.bfloat16)
    names = ["out", "dq", "dk", "dv"]
    gpu = torch.cuda.get_device_name() if dev == "cuda" else dev
    result: dict = {"flash_attn": fa_version, "torch": torch.__version__, "gpu": gpu}
    result["shape"] = {"tokens": total, "documents": len(lengths), "q_heads": hq, "kv_heads": hkv, "head_dim": d}
    ok = True
    for name, a, r32, r16 in zip(names, fa, ref32, ref16):
        fa_err = (a - r32).abs().max().item()
        sdpa_err = (r16 - r32).abs().max().item()
        passed = fa_err <= 2 * sdpa_err + 1e-3
        ok &= passed
        result[name] = {"flash_max_err": fa_err, "sdpa_bf16_max_err": sdpa_err, "pass": passed}

    # rough speed of the same call, forward + backward (not a benchmark: one shape, few repeats)
    def timed(fn, dtype):
        sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
        fwd_bwd(fn, dtype)
        sync()
        t = time.perf_counter()
        for _ in range(reps):
            fwd_bwd(fn, dtype)
        sync()
        return (time.perf_counter() - t) / reps * 1e3

    fa_fn = lambda a, b, c: flash_attn_varlen_func(a, b, c, cu, cu, maxlen, maxlen, causal=True)  # noqa: E731
    result["ms_fwd_bwd"] = {
        "flash_attn_varlen": timed(fa_fn, torch.bfloat16),
        "sdpa_per_document_loop": timed(lambda a, b, c: reference(a, b, c, cu, torch.bfloat16), torch.bfloat16),
    }
    result["pass"] = ok
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="Also write the result here.")
    ap.add_argument("--device", default="cuda", help="cuda; cpu only checks this script with a stand-in flash_attn.")
    ap.add_argument("--max-len", type=int, default=2048, help="Longest document (tokens).")
    ap.add_argument("--reps", type=int, default=10, help="Timed repeats.")
    args = ap.parse_args()
    res = run(dev=args.device, max_len=args.max_len, reps=args.reps)
    text = json.dumps(res, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    return 0 if res["pass"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
