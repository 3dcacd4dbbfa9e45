"""LoRA's dropout and down-projection in one Triton kernel: ``A(dropout(x))`` without the dropped copy of x.

PEFT computes ``lora_A(lora_dropout(x))``: the dropout writes a copy of x and a mask, and autograd keeps
both until the backward (the copy for A's weight gradient, the mask for the dropout's own backward): 1.5
times the 16-bit size of every adapted projection's input, 30% of a LoRA/QLoRA layer's activations
(plan.py, ``activation_bytes``), and five passes over that input a step. Here the mask is a function of a
seed and each element's index, made again in the backward: the kernel keeps only x, which the base
projection saves anyway, and the seed.

- forward: ``h = (x * keep) @ A^T / (1 - p)``, one read of x;
- backward: ``dx = ((g @ A) * keep) / (1 - p)`` and ``dA = g^T @ (x * keep) / (1 - p)`` in one pass
  that reads x and g once and writes dx once (dA summed in fp32 over row blocks).

The keep mask draws 16 bits per element from a 32-bit integer hash of the element's index and the seed
(lowbias32: a few multiplies and shifts, computed in the register layout of the tile it masks), one hash for two
neighbouring columns (its high and low halves): the hash's integer arithmetic, not the bytes, bound the kernels
(bench/NOTES.md, v22-v24). p is rounded to a multiple of 1/65,536 and the scale is that rounded p's, so the
expectation is exact.
Philox (torch's own dropout RNG; four 32-bit words a call, split and rearranged into the tile) made the
kernels 9 ms an 8B step slower (bench/adapter_kernels.py, v11 in bench/NOTES.md). The seed comes from
torch's CPU generator at each call (no wait on the GPU), so ``torch.manual_seed`` fixes the masks and activation
checkpointing, which restores the CPU generator before it recomputes a layer, recomputes the same masks.
The kernels do not specialise on the row count (``do_not_specialize``): a packed batch's token count changes
every step, and Triton compiles another variant of a kernel the first time an integer argument it
specialises on turns up with another divisibility by 16.

The plan turns them on (``plan.lora_kernels``: GPUs, unsharded, models from 3B parameters; measured in
bench/NOTES.md, v8/v9: 29-32% less peak memory on 8B lora/qlora at the same rate, while the 1B steps, which
wait on the host, lost 11-23% to the launches) and ``usable`` checks each input. On CPU the kernels run in
Triton's interpreter (``TRITON_INTERPRET=1``), which is how the tests check them against the same mask
applied by torch.
"""

from __future__ import annotations

import os

import torch

from ftctl.plan import LORA_KERNEL_MAX_RANK

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs (torch's CUDA wheels bring Triton)
    triton = None

RAND_BITS = 16
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def usable(x: torch.Tensor, weight: torch.Tensor, p: float) -> bool:
    """Whether the fused path runs for this input: Triton on a CUDA tensor (or its interpreter), a real
    dropout, the rank within one tile and every element's offset within the kernels' 32-bit signed index
    arithmetic."""
    if not runs_on(x):
        return False
    rows, k = x.numel() // max(1, x.shape[-1]), x.shape[-1]
    return 0 < p < 1 and weight.shape[0] <= LORA_KERNEL_MAX_RANK and rows * k < 2**31


def runs_on(t: torch.Tensor) -> bool:
    """Whether LoRA's kernels (this module's and lora_up.py's) take this tensor: Triton on a CUDA tensor in 16
    bits (fp32 would run on TF32 tensor cores), or any tensor in Triton's interpreter."""
    if triton is None or not (t.is_cuda or INTERPRETED):
        return False
    return not t.is_cuda or t.dtype in (torch.bfloat16, torch.float16)


def threshold(p: float) -> int:
    """The 16-bit threshold below which an element is dropped."""
    return min(2**RAND_BITS - 1, max(1, round(p * 2**RAND_BITS)))


def keep_scale(p: float) -> float:
    return 1.0 / (1.0 - threshold(p) / 2**RAND_BITS)


def dropout_down(x: torch.Tensor, weight: torch.Tensor, p: float) -> torch.Tensor:
    """``dropout(x, p) @ weight.T`` (weight: LoRA's A, r x K) in x's dtype, differentiable in x and weight."""
    seed = int(torch.randint(0, 2**31 - 1, (1,)))
    return _DropoutDown.apply(x, weight, p, seed)


class _DropoutDown(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, p, seed):
        x2, a = operands(x, weight)
        h = down(x2, a, p, seed)
        ctx.save_for_backward(x, weight)
        ctx.p, ctx.seed = p, seed
        return h.view(*x.shape[:-1], a.shape[0])

    @staticmethod
    def backward(ctx, grad_h):
        x, weight = ctx.saved_tensors
        x2, a = operands(x, weight)
        dx = torch.empty_like(x2)
        da = down_backward(x2, a, grad_h.reshape(-1, a.shape[0]).to(x.dtype).contiguous(), dx, ctx.p, ctx.seed)
        return dx.view(x.shape), da.to(weight.dtype), None, None


def down(x2: torch.Tensor, a: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    """The forward kernel: ``(x2 * keep) @ a^T / (1 - p)``, (rows, r) in x2's dtype (x2 and a from ``operands``)."""
    (rows, k), r = x2.shape, a.shape[0]
    h = torch.empty(rows, r, device=x2.device, dtype=x2.dtype)
    grid = lambda meta: (triton.cdiv(rows, meta["BLOCK_M"]),)  # noqa: E731
    _forward[grid](x2, a, h, rows, k, r, seed, threshold(p), keep_scale(p), BLOCK_R=_block_r(r))
    return h


def down_backward(
    x2: torch.Tensor, a: torch.Tensor, g: torch.Tensor, dx: torch.Tensor, p: float, seed: int, accumulate=False
) -> torch.Tensor:
    """The backward kernel for h's gradient ``g`` (rows, r; contiguous, x2's dtype): x2's gradient
    ``((g @ a) * keep) / (1 - p)`` written into ``dx`` (added to what it holds with ``accumulate``), and A's
    gradient returned in fp32."""
    (rows, k), r = x2.shape, a.shape[0]
    da = torch.zeros(r, k, device=x2.device, dtype=torch.float32)
    grid = lambda meta: (triton.cdiv(k, meta["BLOCK_K"]), triton.cdiv(rows, meta["ROWS"]))  # noqa: E731
    _backward[grid](
        x2, a, g, dx, da, rows, k, r, seed, threshold(p), keep_scale(p), ACCUMULATE=accumulate, BLOCK_R=_block_r(r)
    )
    return da


def operands(x: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x as contiguous rows (a view where it can be) and A in x's dtype: the kernels' two inputs."""
    x2 = x.reshape(-1, x.shape[-1])
    if x2.stride(-1) != 1 or x2.stride(0) != x2.shape[1]:
        x2 = x2.contiguous()
    return x2, weight.to(x.dtype).contiguous()


def keep_mask(rows: int, k: int, p: float, seed: int, device="cpu") -> torch.Tensor:
    """The kernels' keep mask as a bool tensor (for the tests: the same mask applied by torch)."""
    out = torch.empty(rows, k, dtype=torch.int8, device=device)
    _mask[(triton.cdiv(rows, 64), triton.cdiv(k, 128))](out, rows, k, seed, threshold(p), BLOCK_M=64, BLOCK_K=128)
    return out.bool()


def _block_r(r: int) -> int:
    return max(16, triton.next_power_of_2(r))  # tl.dot's smallest tile side


def _configs(backward: bool) -> list:
    """Tile sizes Triton's autotuner times on the first call for each (K, r); one under the interpreter."""
    if INTERPRETED:
        return [triton.Config({"BLOCK_M": 64, "BLOCK_K": 128} | ({"ROWS": 1024} if backward else {}))]
    if backward:
        return [
            triton.Config({"BLOCK_M": m, "BLOCK_K": k, "ROWS": rows}, num_warps=w)
            for m in (32, 64)
            for k in (64, 128)
            for rows in (512, 2048)
            for w in (4, 8)
        ]
    return [
        triton.Config({"BLOCK_M": m, "BLOCK_K": k}, num_warps=w)
        for m in (32, 64, 128)
        for k in (64, 128)
        for w in (4, 8)
    ]


if triton is not None:

    @triton.jit
    def _keep(seed, rows, k0, K, thr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
        """[BLOCK_M, BLOCK_K] bool: element (row, k0 + j) kept (k0 even). One lowbias32 (a bijective 32-bit
        integer mixer) for each pair of columns (2c, 2c + 1) of a row, of the pair's first element's index xor the
        seed's golden-ratio multiple: its top 16 bits draw column 2c, its low 16 bits column 2c + 1."""
        firsts = k0 + 2 * tl.arange(0, BLOCK_K // 2)
        h = (rows[:, None] * K + firsts[None, :]).to(tl.uint32) ^ (seed.to(tl.uint32) * 0x9E3779B1)
        h ^= h >> 16
        h *= 0x7FEB352D
        h ^= h >> 15
        h *= 0x846CA68B
        h ^= h >> 16
        return tl.reshape(tl.join(h >> 16, h & 0xFFFF), (BLOCK_M, BLOCK_K)) >= thr

    @triton.autotune(configs=_configs(backward=False), key=["K", "R"])
    @triton.jit(do_not_specialize=["M", "seed"])
    def _forward(
        X, A, H, M, K, R, seed, thr, scale, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr
    ):
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        ranks = tl.arange(0, BLOCK_R)
        acc = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            cols = k0 + tl.arange(0, BLOCK_K)
            x = tl.load(
                X + rows[:, None] * K + cols[None, :], mask=(rows[:, None] < M) & (cols[None, :] < K), other=0.0
            )
            x = tl.where(_keep(seed, rows, k0, K, thr, BLOCK_M, BLOCK_K), x, tl.zeros_like(x))
            a = tl.load(
                A + ranks[None, :] * K + cols[:, None], mask=(ranks[None, :] < R) & (cols[:, None] < K), other=0.0
            )
            acc += tl.dot(x, a)
        out = (acc * scale).to(H.dtype.element_ty)
        tl.store(H + rows[:, None] * R + ranks[None, :], out, mask=(rows[:, None] < M) & (ranks[None, :] < R))

    # the autotuner runs each candidate on the real arguments: DA is summed into and DX may be (ACCUMULATE)
    @triton.autotune(configs=_configs(backward=True), key=["K", "R"], reset_to_zero=["DA"], restore_value=["DX"])
    @triton.jit(do_not_specialize=["M", "seed"])
    def _backward(
        X, A, G, DX, DA, M, K, R, seed, thr, scale,
        ACCUMULATE: tl.constexpr, ROWS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
        BLOCK_R: tl.constexpr,
    ):  # fmt: skip
        k0 = tl.program_id(0) * BLOCK_K
        cols = k0 + tl.arange(0, BLOCK_K)
        ranks = tl.arange(0, BLOCK_R)
        a = tl.load(A + ranks[:, None] * K + cols[None, :], mask=(ranks[:, None] < R) & (cols[None, :] < K), other=0.0)
        da = tl.zeros((BLOCK_R, BLOCK_K), dtype=tl.float32)
        for m0 in range(tl.program_id(1) * ROWS, tl.program_id(1) * ROWS + ROWS, BLOCK_M):
            rows = m0 + tl.arange(0, BLOCK_M)
            inside = (rows[:, None] < M) & (cols[None, :] < K)
            g = tl.load(
                G + rows[:, None] * R + ranks[None, :], mask=(rows[:, None] < M) & (ranks[None, :] < R), other=0.0
            )
            keep = _keep(seed, rows, k0, K, thr, BLOCK_M, BLOCK_K)
            dx = tl.where(keep, tl.dot(g, a) * scale, 0.0)
            if ACCUMULATE:
                dx += tl.load(DX + rows[:, None] * K + cols[None, :], mask=inside, other=0.0).to(tl.float32)
            tl.store(DX + rows[:, None] * K + cols[None, :], dx.to(DX.dtype.element_ty), mask=inside)
            x = tl.load(X + rows[:, None] * K + cols[None, :], mask=inside, other=0.0)
            da += tl.dot(tl.trans(g), tl.where(keep, x, tl.zeros_like(x)))
        tl.atomic_add(
            DA + ranks[:, None] * K + cols[None, :], da * scale, mask=(ranks[:, None] < R) & (cols[None, :] < K)
        )

    @triton.jit(do_not_specialize=["seed"])
    def _mask(OUT, M, K, seed, thr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        k0 = tl.program_id(1) * BLOCK_K
        cols = k0 + tl.arange(0, BLOCK_K)
        keep = _keep(seed, rows, k0, K, thr, BLOCK_M, BLOCK_K)
        tl.store(
            OUT + rows[:, None] * K + cols[None, :], keep.to(tl.int8), mask=(rows[:, None] < M) & (cols[None, :] < K)
        )
