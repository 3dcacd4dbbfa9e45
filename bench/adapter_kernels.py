"""The adapter's bandwidth-bound kernels against the card's copy rate, one kernel at a time (device machine only).

The v9 profile of 8B qlora (bench/NOTES.md) put LoRA's memory-bound work at about 150 ms of a 1.07 s step:
the dropout + A kernels of trainer/lora_dropout.py (23 ms forward, 52 ms backward, about 40% of the card's
bandwidth) and the ``addmm`` that adds ``scaling * B(h)`` to the base's output (77 ms, 320 us a call where
reading and writing the output at the copy rate takes about 110 us). This script times, for each adapted
projection of the 8B shape at 16,384 tokens, rank 16, bf16 (triton.testing.do_bench: back-to-back launches,
so the GPU's time, not the host's):

    dropout-down  forward / backward: trainer/lora_dropout.py's kernels (autotuned; their keep mask is a 32-bit
                  integer hash of the element's index since v11's run of this script, which also timed the
                  Philox mask: 9 ms a step slower)
    up-add        torch.addmm (out of place, as methods._fused_forward did before v12), Tensor.addmm_ (in place on
                  the base's output, which no backward keeps), trainer/lora_up.py's Triton tile kernel in place
    dx            the input's gradient, base plus adapter: mm then add (autograd's sum) or addmm (the sum in
                  the GEMM's epilogue)
    copy          x.clone(): the card's copy rate, the roofline for all of them

and each one's GB/s, and checks the kernels against torch applying their own mask and the up-add against
addmm.

    python3 bench/adapter_kernels.py --out $OUT/adapter_kernels.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TOKENS, RANK, DROP, SCALING = 16384, 16, 0.05, 2.0
SHAPES = {"q,o": (4096, 4096), "k,v": (4096, 1024), "gate,up": (4096, 14336), "down": (14336, 4096)}

import triton  # noqa: E402

from ftctl.trainer import lora_dropout as ld  # noqa: E402
from ftctl.trainer.lora_up import _up_add  # noqa: E402


def one_shape(names: str, k: int, n: int) -> dict:
    """One projection shape: every variant's time, rate and check."""
    import torch
    from triton.testing import do_bench

    dev = "cuda"
    thr, scale, seed = ld.threshold(DROP), ld.keep_scale(DROP), 1234

    def gbs(nbytes, ms):
        return round(nbytes / (ms * 1e-3) / 1e9, 1)

    torch.manual_seed(0)
    x = torch.randn(TOKENS, k, device=dev, dtype=torch.bfloat16)
    w = (torch.randn(RANK, k, device=dev) / k**0.5).to(torch.bfloat16)
    g = torch.randn(TOKENS, RANK, device=dev, dtype=torch.bfloat16)
    h = torch.empty(TOKENS, RANK, device=dev, dtype=torch.bfloat16)
    dx = torch.empty_like(x)
    da = torch.zeros(RANK, k, device=dev, dtype=torch.float32)
    row = {"projections": names, "k": k, "n": n, "tokens": TOKENS, "rank": RANK}
    xb = x.numel() * 2
    row["copy_x_ms"] = do_bench(lambda: x.clone())
    row["copy_gbs"] = gbs(2 * xb, row["copy_x_ms"])
    fgrid = lambda meta: (triton.cdiv(TOKENS, meta["BLOCK_M"]),)  # noqa: E731
    bgrid = lambda meta: (triton.cdiv(k, meta["BLOCK_K"]), triton.cdiv(TOKENS, meta["ROWS"]))  # noqa: E731
    f = lambda: ld._forward[fgrid](x, w, h, TOKENS, k, RANK, seed, thr, scale, BLOCK_R=16)  # noqa: E731
    b = lambda: ld._backward[bgrid](x, w, g, dx, da, TOKENS, k, RANK, seed, thr, scale, ACCUMULATE=False, BLOCK_R=16)  # noqa: E731
    f(), b()  # autotune
    row["dropout_fwd_ms"] = do_bench(f)
    row["dropout_bwd_ms"] = do_bench(b)
    row["dropout_fwd_gbs"] = gbs(xb, row["dropout_fwd_ms"])
    row["dropout_bwd_gbs"] = gbs(2 * xb, row["dropout_bwd_ms"])
    row["dropout_configs"] = [str(ld._forward.best_config), str(ld._backward.best_config)]
    mask = ld.keep_mask(TOKENS, k, DROP, seed, device=dev)
    row["kept_fraction"] = float(mask.float().mean())
    f()  # the forward against torch applying the kernels' mask
    ref = (x.float() * mask * scale) @ w.float().t()
    row["dropout_fwd_rel"] = float((h.float() - ref).norm() / ref.norm())

    # up-add: out = C + s * h @ B^T
    c = torch.randn(TOKENS, n, device=dev, dtype=torch.bfloat16)
    bw = (torch.randn(n, RANK, device=dev) / 4).to(torch.bfloat16)
    hh = torch.randn(TOKENS, RANK, device=dev, dtype=torch.bfloat16)
    cb = c.numel() * 2
    row["addmm_ms"] = do_bench(lambda: torch.addmm(c, hh, bw.t(), alpha=SCALING))
    c2 = c.clone()
    row["addmm__ms"] = do_bench(lambda: c2.addmm_(hh, bw.t(), alpha=SCALING))
    ugrid = lambda meta: (triton.cdiv(TOKENS, meta["BLOCK_M"]), triton.cdiv(n, meta["BLOCK_N"]))  # noqa: E731
    c3 = c.clone()
    row["triton_up_add_ms"] = do_bench(lambda: _up_add[ugrid](c3, hh, bw, TOKENS, n, RANK, SCALING, BLOCK_R=16))
    row["triton_up_config"] = str(_up_add.best_config)
    c4 = c.clone()
    _up_add[ugrid](c4, hh, bw, TOKENS, n, RANK, SCALING, BLOCK_R=16)
    want = torch.addmm(c, hh, bw.t(), alpha=SCALING)
    row["triton_up_add_rel"] = float((c4.float() - want.float()).norm() / want.float().norm())
    row["copy_c_ms"] = do_bench(lambda: c.clone())
    for key in ("addmm", "addmm_", "triton_up_add", "copy_c"):
        row[f"{key}_gbs"] = gbs(2 * cb, row[f"{key}_ms"])
    # the B gradient g^T @ h reads the whole output gradient once more
    row["grad_b_ms"] = do_bench(lambda: torch.mm(c.t(), hh))
    # the input's gradient: the base's g @ W plus the adapter's dx, as autograd sums them (mm, then add) and
    # with the sum in the GEMM's epilogue (addmm)
    wt = torch.randn(n, k, device=dev, dtype=torch.bfloat16) / k**0.5
    row["mm_then_add_ms"] = do_bench(lambda: torch.mm(c, wt) + x)
    row["mm_ms"] = do_bench(lambda: torch.mm(c, wt))
    row["addmm_dx_ms"] = do_bench(lambda: torch.addmm(x, c, wt))
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    import torch

    rows_out = []
    for names, (k, n) in SHAPES.items():
        row = one_shape(names, k, n)
        rows_out.append({k2: round(v, 4) if isinstance(v, float) else v for k2, v in row.items()})
        print(json.dumps(rows_out[-1]), flush=True)
    out = {"card": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__}
    # per 8B step (32 blocks; q,o / k,v / gate,up count twice, down once), in ms
    count = {"q,o": 2, "k,v": 2, "gate,up": 2, "down": 1}
    keys = ("dropout_fwd", "dropout_bwd", "addmm", "addmm_", "triton_up_add", "grad_b")
    for key in (*keys, "mm_then_add", "mm", "addmm_dx"):
        out[f"{key}_ms_per_8b_step"] = round(32 * sum(count[r["projections"]] * r[f"{key}_ms"] for r in rows_out), 2)
    out["rows"] = rows_out
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(json.dumps({k2: v for k2, v in out.items() if k2 != "rows"}))


if __name__ == "__main__":
    main()
