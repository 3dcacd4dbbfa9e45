"""trainer/lm_head.py's loss against full logits in torch. Imported by tests/test_lm_head.py (torch's tile
functions, on CPU) and run by it as a module in a subprocess with TRITON_INTERPRET=1 (Triton reads it when
the kernels are defined): then the same checks run TRL's Triton kernels, in fp32 (the interpreter's bf16 is
broken in Triton 3.9). Prints JSON."""

from __future__ import annotations

import json
import sys

import torch

from ftctl.trainer import lm_head


def rel(a, b) -> float:
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


def against_full_logits(tokens: int, hidden: int, vocab: int, chunk: int, bias: bool, trained: bool) -> dict:
    """The head's sums and gradients (the loss -3 * sum / tokens) against log_softmax over the full logits."""
    gen = torch.Generator().manual_seed(tokens * 1000 + vocab)
    h = torch.randn(tokens, hidden, generator=gen, requires_grad=True)
    w = torch.randn(vocab, hidden, generator=gen).requires_grad_(trained)
    b = torch.randn(vocab, generator=gen).requires_grad_(trained) if bias else None
    targets = torch.randint(0, vocab, (tokens,), generator=gen)
    targets[:3] = (h[:3].detach() @ w.detach().t()).argmax(-1)  # a few top-1 hits
    s, entropy, top1 = lm_head._HeadLoss.apply(h, w, b, targets, chunk)
    (-3 * s / max(1, tokens)).backward()

    h2, w2 = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_(trained)
    b2 = b.detach().clone().requires_grad_(trained) if bias else None
    logits = h2 @ w2.t() + (b2 if bias else 0)
    log_p = torch.log_softmax(logits, -1)
    s2 = log_p.gather(1, targets[:, None]).sum()
    (-3 * s2 / max(1, tokens)).backward()
    return {
        "sum": rel(s.detach(), s2.detach()),
        "entropy": rel(entropy, -(log_p.exp() * log_p).sum().detach()),
        "top1": [int(top1), int((logits.argmax(-1) == targets).sum())],
        "dh": rel(h.grad, h2.grad),
        "dw": rel(w.grad, w2.grad) if trained else w.grad is None,
        "db": (rel(b.grad, b2.grad) if trained else b.grad is None) if bias else None,
    }


def no_label_counts() -> dict:
    """No token scored (every label -100): a zero the loss can still run backward through."""
    hidden = torch.randn(2, 5, 8, requires_grad=True)
    w = torch.randn(11, 8, requires_grad=True)
    none = torch.empty(0, dtype=torch.long)
    s, entropy, top1 = lm_head._HeadLoss.apply(hidden.reshape(-1, 8)[:0], w, None, none, 4)
    (-s).backward()
    zero = bool((w.grad == 0).all() and (hidden.grad == 0).all())
    return {"values": [float(s.detach()), float(entropy), int(top1)], "grads_zero": zero}


def main() -> None:
    out = {
        # chunks of 7 tokens (the last one partial), a vocabulary not a multiple of the kernels' 1,024 block
        "trained": against_full_logits(30, 16, 300, 7, bias=True, trained=True),
        # LoRA's frozen head: only the hidden states' gradient
        "frozen": against_full_logits(37, 24, 1100, 16, bias=False, trained=False),
        "one_chunk": against_full_logits(20, 8, 50, 4096, bias=False, trained=True),
        "empty": no_label_counts(),
        "kernels": lm_head.triton is not None and lm_head.INTERPRETED,
    }
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
