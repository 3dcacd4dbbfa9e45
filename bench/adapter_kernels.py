"""The adapter's bandwidth-bound kernels against the card's copy rate, one kernel at a time (device machine only).

The v9 profile of 8B qlora (bench/NOTES.md) put LoRA's memory-bound work at about 150 ms of a 1.07 s step:
the dropout + A kernels of trainer/lora_dropout.py (23 ms forward, 52 ms backward, about 40% of the card's
bandwidth) and the ``addmm`` that adds ``scaling * B(h)`` to the base's output (77 ms, 320 us a call where
reading and writing the output at the copy rate takes about 110 us). This script times, for each adapted
projection of the 8B shape at 16,384 tokens, rank 16, bf16 (triton.testing.do_bench: back-to-back launches,
so the GPU's time, not the host's):

    dropout-down  forward / backward: trainer/lora_dropout.py's kernels (autotuned), the same kernels with the
                  keep mask from a 32-bit integer hash of (seed, element) instead of Philox + join/reshape
    up-add        torch.addmm (out of place, as methods._fused_forward), Tensor.addmm_ (in place on the base's
                  output, which no backward keeps), a Triton tile kernel in place
    dx            the input's gradient, base plus adapter: mm then add (autograd's sum) or addmm (the sum in
                  the GEMM's epilogue)
    copy          x.clone(): the card's copy rate, the roofline for all of them

and each one's GB/s. It checks each variant against the current kernels' result (the up-add exactly; the
hash masks keep the same fraction).

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
import triton.language as tl  # noqa: E402

from ftctl.trainer import lora_dropout as ld  # noqa: E402


@triton.jit
def _hash_keep(seed, rows, cols, K, thr):
    """lowbias32 (a bijective 32-bit integer mixer) of the element's index xor a mix of the seed."""
    idx = (rows[:, None] * K + cols[None, :]).to(tl.uint32)
    s = seed.to(tl.uint32) * 0x9E3779B1
    h = idx ^ s
    h ^= h >> 16
    h *= 0x7FEB352D
    h ^= h >> 15
    h *= 0x846CA68B
    h ^= h >> 16
    return (h >> 16) >= thr


@triton.autotune(configs=ld._configs(backward=False), key=["K", "R"])
@triton.jit(do_not_specialize=["seed"])
def _forward_hash(
    X, A, H, M, K, R, seed, thr, scale, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    ranks = tl.arange(0, BLOCK_R)
    acc = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(X + rows[:, None] * K + cols[None, :], mask=(rows[:, None] < M) & (cols[None, :] < K), other=0.0)
        x = tl.where(_hash_keep(seed, rows, cols, K, thr), x, tl.zeros_like(x))
        a = tl.load(A + ranks[None, :] * K + cols[:, None], mask=(ranks[None, :] < R) & (cols[:, None] < K), other=0.0)
        acc += tl.dot(x, a)
    out = (acc * scale).to(H.dtype.element_ty)
    tl.store(H + rows[:, None] * R + ranks[None, :], out, mask=(rows[:, None] < M) & (ranks[None, :] < R))


@triton.autotune(configs=ld._configs(backward=True), key=["K", "R"], reset_to_zero=["DA"])
@triton.jit(do_not_specialize=["seed"])
def _backward_hash(
    X, A, G, DX, DA, M, K, R, seed, thr, scale,
    ROWS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr,
):  # fmt: skip
    k0 = tl.program_id(0) * BLOCK_K
    cols = k0 + tl.arange(0, BLOCK_K)
    ranks = tl.arange(0, BLOCK_R)
    a = tl.load(A + ranks[:, None] * K + cols[None, :], mask=(ranks[:, None] < R) & (cols[None, :] < K), other=0.0)
    da = tl.zeros((BLOCK_R, BLOCK_K), dtype=tl.float32)
    for m0 in range(tl.program_id(1) * ROWS, tl.program_id(1) * ROWS + ROWS, BLOCK_M):
        rows = m0 + tl.arange(0, BLOCK_M)
        inside = (rows[:, None] < M) & (cols[None, :] < K)
        g = tl.load(G + rows[:, None] * R + ranks[None, :], mask=(rows[:, None] < M) & (ranks[None, :] < R), other=0.0)
        keep = _hash_keep(seed, rows, cols, K, thr)
        dx = tl.where(keep, tl.dot(g, a) * scale, 0.0)
        tl.store(DX + rows[:, None] * K + cols[None, :], dx.to(DX.dtype.element_ty), mask=inside)
        x = tl.load(X + rows[:, None] * K + cols[None, :], mask=inside, other=0.0)
        da += tl.dot(tl.trans(g), tl.where(keep, x, tl.zeros_like(x)))
    tl.atomic_add(DA + ranks[:, None] * K + cols[None, :], da * scale, mask=(ranks[:, None] < R) & (cols[None, :] < K))


@triton.jit
def _hash_mask(OUT, M, K, seed, thr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    keep = _hash_keep(seed, rows, cols, K, thr)
    tl.store(OUT + rows[:, None] * K + cols[None, :], keep.to(tl.int8), mask=(rows[:, None] < M) & (cols[None, :] < K))


def _up_configs():
    return [
        triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
        for m in (64, 128)
        for n in (64, 128, 256)
        for w in (4, 8)
        for s in (2, 3)
    ]


@triton.autotune(configs=_up_configs(), key=["N", "R"])
@triton.jit
def _up_add(C, Hm, B, M, N, R, alpha, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr):
    """C += alpha * H @ B^T in place (C: M x N, H: M x R, B: N x R)."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    ranks = tl.arange(0, BLOCK_R)
    h = tl.load(Hm + rows[:, None] * R + ranks[None, :], mask=(rows[:, None] < M) & (ranks[None, :] < R), other=0.0)
    b = tl.load(B + cols[None, :] * R + ranks[:, None], mask=(cols[None, :] < N) & (ranks[:, None] < R), other=0.0)
    inside = (rows[:, None] < M) & (cols[None, :] < N)
    c = tl.load(C + rows[:, None] * N + cols[None, :], mask=inside, other=0.0)
    out = c.to(tl.float32) + alpha * tl.dot(h, b)
    tl.store(C + rows[:, None] * N + cols[None, :], out.to(C.dtype.element_ty), mask=inside)


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
    for tag, fwd, bwd in (("philox", ld._forward, ld._backward), ("hash", _forward_hash, _backward_hash)):
        f = lambda fwd=fwd: fwd[fgrid](x, w, h, TOKENS, k, RANK, seed, thr, scale, BLOCK_R=16)  # noqa: E731
        b = lambda bwd=bwd: bwd[bgrid](x, w, g, dx, da, TOKENS, k, RANK, seed, thr, scale, BLOCK_R=16)  # noqa: E731
        f(), b()  # autotune
        row[f"{tag}_fwd_ms"] = do_bench(f)
        row[f"{tag}_bwd_ms"] = do_bench(b)
        row[f"{tag}_fwd_gbs"] = gbs(xb, row[f"{tag}_fwd_ms"])
        row[f"{tag}_bwd_gbs"] = gbs(2 * xb, row[f"{tag}_bwd_ms"])
        row[f"{tag}_configs"] = [str(fwd.best_config), str(bwd.best_config)]
    mask = torch.empty(TOKENS, k, dtype=torch.int8, device=dev)
    _hash_mask[(triton.cdiv(TOKENS, 64), triton.cdiv(k, 128))](mask, TOKENS, k, seed, thr, BLOCK_M=64, BLOCK_K=128)
    row["hash_kept_fraction"] = float(mask.float().mean())
    row["philox_kept_fraction"] = float(ld.keep_mask(TOKENS, k, DROP, seed, device=dev).float().mean())
    # the hash kernels against torch applying the hash mask
    _forward_hash[fgrid](x, w, h, TOKENS, k, RANK, seed, thr, scale, BLOCK_R=16)
    ref = (x.float() * mask * scale) @ w.float().t()
    row["hash_fwd_rel"] = float((h.float() - ref).norm() / ref.norm())

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
    keys = ("philox_fwd", "philox_bwd", "hash_fwd", "hash_bwd", "addmm", "addmm_", "triton_up_add", "grad_b")
    for key in (*keys, "mm_then_add", "mm", "addmm_dx"):
        out[f"{key}_ms_per_8b_step"] = round(32 * sum(count[r["projections"]] * r[f"{key}_ms"] for r in rows_out), 2)
    out["rows"] = rows_out
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(json.dumps({k2: v for k2, v in out.items() if k2 != "rows"}))


if __name__ == "__main__":
    main()
