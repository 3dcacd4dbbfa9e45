"""LoRA's up-projection added into the base projection's output in place: ``result += scaling * h @ B^T``.

methods._fused_forward computes ``addmm(base(x), h, B^T, alpha=scaling)``. With B's 16 columns the GEMM
has nothing to compute and only moves the output, which cuBLAS does at about 40% of an H200's copy rate
(bench/NOTES.md, v11: 573 us for the 8B shape's gate/up output, 15.5k tokens). This Triton kernel reads each
tile of the base's output, adds ``scaling * h @ B^T`` (one 16-wide dot) and writes it back where it was:
one read and one write of the output, and no second output tensor. The base's output is its own new
tensor, which nothing keeps for the backward (``mark_dirty`` makes autograd check that); its gradient is
the output's, B's is ``scaling * g^T @ h`` and h's ``scaling * g @ B``, the products addmm's backward takes.

The plan turns it on with LoRA's dropout kernels (``plan.lora_kernels``); ``usable`` checks each call.
"""

from __future__ import annotations

import torch

from ftctl.plan import LORA_KERNEL_MAX_RANK
from ftctl.trainer.lora_dropout import INTERPRETED, runs_on, triton

if triton is not None:
    import triton.language as tl


def usable(result: torch.Tensor, h: torch.Tensor, weight: torch.Tensor) -> bool:
    """Where the kernels run (``lora_dropout.runs_on``), a base output of its own, contiguous, and the rank
    within one tile."""
    return (
        runs_on(result)
        and not result._is_view()
        and result.is_contiguous()
        and h.shape[:-1] == result.shape[:-1]
        and weight.shape[1] == h.shape[-1] <= LORA_KERNEL_MAX_RANK
        and result.numel() < 2**31
    )


def add_into(result: torch.Tensor, h: torch.Tensor, weight: torch.Tensor, scaling: float) -> torch.Tensor:
    """``result + scaling * h @ weight^T`` written into ``result`` (weight: LoRA's B, N x r); differentiable in
    all three."""
    return _UpAdd.apply(result, h, weight, scaling)


class _UpAdd(torch.autograd.Function):
    @staticmethod
    def forward(ctx, result, h, weight, scaling):
        h2 = h.reshape(-1, h.shape[-1]).to(result.dtype).contiguous()
        add(result.view(-1, result.shape[-1]), h2, weight.to(result.dtype).contiguous(), scaling)
        ctx.mark_dirty(result)
        ctx.save_for_backward(h2, weight)
        ctx.scaling, ctx.h_shape, ctx.h_dtype = scaling, h.shape, h.dtype
        return result

    @staticmethod
    def backward(ctx, grad):
        h2, weight = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1])
        dh = torch.mm(g, weight.to(g.dtype)).mul_(ctx.scaling)
        db = torch.mm(g.t(), h2.to(g.dtype)).mul_(ctx.scaling)
        return grad, dh.view(ctx.h_shape).to(ctx.h_dtype), db.to(weight.dtype), None


def add(out: torch.Tensor, h2: torch.Tensor, b: torch.Tensor, scaling: float) -> None:
    """The kernel: ``out += scaling * h2 @ b^T`` in place (out: rows x N, h2: rows x r, b: N x r; contiguous,
    one dtype)."""
    (rows, n), r = out.shape, h2.shape[1]
    grid = lambda meta: (triton.cdiv(rows, meta["BLOCK_M"]), triton.cdiv(n, meta["BLOCK_N"]))  # noqa: E731
    _up_add[grid](out, h2, b, rows, n, r, scaling, BLOCK_R=max(16, triton.next_power_of_2(r)))


def _configs() -> list:
    """Tile sizes Triton's autotuner times on the first call for each (N, r); one under the interpreter."""
    if INTERPRETED:
        return [triton.Config({"BLOCK_M": 64, "BLOCK_N": 64})]
    return [
        triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w)
        for m in (64, 128)
        for n in (64, 128, 256)
        for w in (4, 8)
    ]


if triton is not None:

    @triton.autotune(configs=_configs(), key=["N", "R"])
    @triton.jit(do_not_specialize=["M"])  # the token count changes every step (lora_dropout.py)
    def _up_add(C, H, B, M, N, R, alpha, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        ranks = tl.arange(0, BLOCK_R)
        h = tl.load(H + rows[:, None] * R + ranks[None, :], mask=(rows[:, None] < M) & (ranks[None, :] < R), other=0.0)
        b = tl.load(B + cols[None, :] * R + ranks[:, None], mask=(cols[None, :] < N) & (ranks[:, None] < R), other=0.0)
        inside = (rows[:, None] < M) & (cols[None, :] < N)
        c = tl.load(C + rows[:, None] * N + cols[None, :], mask=inside, other=0.0)
        out = c.to(tl.float32) + alpha * tl.dot(h, b)
        tl.store(C + rows[:, None] * N + cols[None, :], out.to(C.dtype.element_ty), mask=inside)
