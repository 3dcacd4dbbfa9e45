"""A LoRA projection in training as one autograd node: the frozen base, LoRA's dropout + A, and B's sum.

``base(x) + scaling * B(A(dropout(x)))`` through methods._fused_forward's separate pieces is three autograd
nodes (the base's linear, or bitsandbytes' 4-bit matmul; lora_dropout's dropout + A; lora_up's sum), and each
of the two that take x gives it a gradient: autograd then adds the base's and the adapter's with one more pass
over that gradient (the 8B qlora step's ``aten::add`` after the base's backward, 17.6 ms, and its ``add_``s,
16 ms: bench/NOTES.md, v14). Here the backward computes the base's dx (``g @ W``, the 4-bit weight
dequantized again as bitsandbytes does) and the dropout kernel adds the adapter's into it where it lies, and
the host runs one node a projection instead of three, past bitsandbytes' Python wrappers.

- forward: ``out = x @ W^T (+ bias)``; ``h = (x * keep) @ A^T / (1 - p)``; ``out += scaling * h @ B^T`` in place;
- backward: ``dh = scaling * g @ B``, ``dB = scaling * g^T @ h``, ``dx = g @ W + ((dh @ A) * keep) / (1 - p)``,
  ``dA = dh^T @ (x * keep) / (1 - p)``.

It keeps x and h for the backward, as the three nodes did (bitsandbytes keeps no input: its weight has no
gradient). The base must be frozen (LoRA's and QLoRA's are): its weight and bias get no gradient here. The
plan turns it on with the other LoRA kernels (``plan.lora_kernels``); ``usable`` checks each call, and every
other case takes methods._fused_forward's pieces.
"""

from __future__ import annotations

import torch

from ftctl.trainer import lora_dropout, lora_up


def usable(base, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, p: float) -> bool:
    """The kernels take x and the adapter (lora_dropout.usable: a real dropout; lora_up's rank bound), and the
    base is a frozen 16-bit ``nn.Linear`` or a 4-bit bitsandbytes one computing in x's dtype."""
    weight = getattr(base, "weight", None)
    if weight is None or weight.requires_grad or (base.bias is not None and base.bias.requires_grad):
        return False
    if not lora_dropout.usable(x, a, p) or b.shape[1] != a.shape[0] or x.shape[-1] != a.shape[1]:
        return False
    if type(base) is torch.nn.Linear:
        dtype = weight.dtype
    elif _is_4bit(base):
        dtype = base.weight.quant_state.dtype if base.compute_dtype is None else base.compute_dtype
    else:
        return False
    rows = x.numel() // x.shape[-1]
    return dtype == x.dtype and rows * b.shape[0] < 2**31


def apply(base, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, p: float, scaling: float) -> torch.Tensor:
    """``base(x) + scaling * dropout(x, p) @ a^T @ b^T``, differentiable in x, a and b (LoRA's A and B)."""
    seed = int(torch.randint(0, 2**31 - 1, (1,)))  # the CPU generator: checkpointing's recompute draws it again
    return _Projection.apply(x, a, b, base, p, scaling, seed)


class _Projection(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, a, b, base, p, scaling, seed):
        x2, a16 = lora_dropout.operands(x, a)
        bias = None if base.bias is None else base.bias.to(x.dtype)
        out = torch.nn.functional.linear(x2, _weight(base), bias)
        h = lora_dropout.down(x2, a16, p, seed)
        lora_up.add(out, h, b.to(x.dtype).contiguous(), scaling)
        ctx.save_for_backward(x, a, b, h)
        ctx.base, ctx.p, ctx.scaling, ctx.seed = base, p, scaling, seed
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad):
        x, a, b, h = ctx.saved_tensors
        x2, a16 = lora_dropout.operands(x, a)
        g = grad.reshape(-1, grad.shape[-1]).to(x.dtype)
        dh = torch.mm(g, b.to(x.dtype)).mul_(ctx.scaling)
        db = torch.mm(g.t(), h).mul_(ctx.scaling)
        # the first block's input needs no gradient (a frozen embedding): no base product, the kernel's dx unused
        needs_dx = ctx.needs_input_grad[0]
        dx = torch.mm(g, _weight(ctx.base)) if needs_dx else torch.empty_like(x2)
        da = lora_dropout.down_backward(x2, a16, dh, dx, ctx.p, ctx.seed, accumulate=needs_dx)
        return dx.view(x.shape) if needs_dx else None, da.to(a.dtype), db.to(b.dtype), None, None, None, None


def _is_4bit(base) -> bool:
    try:
        import bitsandbytes as bnb
    except ImportError:
        return False
    return isinstance(base, bnb.nn.Linear4bit)


def _weight(base) -> torch.Tensor:
    """The base's 16-bit weight (N x K): its own, or the 4-bit one dequantized (a temporary, as in
    bitsandbytes' own forward and backward)."""
    if not _is_4bit(base):
        return base.weight
    import bitsandbytes as bnb
    from bitsandbytes.nn.modules import fix_4bit_weight_quant_state_from_module

    fix_4bit_weight_quant_state_from_module(base)  # as Linear4bit.forward: a state lost to a wrapper, restored
    w = bnb.functional.dequantize_4bit(base.weight.data, base.weight.quant_state)
    return w if base.compute_dtype is None else w.to(base.compute_dtype)
