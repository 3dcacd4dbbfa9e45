"""Run by tests/test_lora_dropout.py in a subprocess with TRITON_INTERPRET=1 (Triton reads it when the
kernels are defined, at import): trainer/lora_dropout.py's and lora_up.py's kernels on CPU, in fp32 (the
interpreter's bf16 is broken in Triton 3.9; the GPU's bf16 path is checked by bench/lora_dropout.py and
bench/adapter_kernels.py). Prints JSON."""

from __future__ import annotations

import json
import sys

import torch

from ftctl.trainer import lora_dropout as ld
from ftctl.trainer import lora_projection, lora_up


def rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


def against_torch(rows: int, k: int, r: int, p: float, seed: int) -> dict:
    """The kernels against torch doing the same: the kernels' own mask applied to x, then A."""
    x = torch.randn(rows, k, requires_grad=True)
    w = torch.randn(r, k, requires_grad=True)
    h = ld._DropoutDown.apply(x.view(1, rows, k), w, p, seed)
    g = torch.randn_like(h)
    (h * g).sum().backward()
    keep = ld.keep_mask(rows, k, p, seed)
    x2, w2 = x.detach().requires_grad_(True), w.detach().requires_grad_(True)
    ref = (x2 * keep * ld.keep_scale(p)) @ w2.t()
    (ref.view_as(g) * g).sum().backward()
    return {
        "shape": list(h.shape),
        "h": rel(h.view_as(ref).detach(), ref.detach()),
        "dx": rel(x.grad, x2.grad),
        "dw": rel(w.grad, w2.grad),
        "kept": float(keep.float().mean()),
        "elements": keep.numel(),
    }


def up_add_against_torch(rows: int, n: int, k: int, r: int) -> dict:
    """The in-place sum against torch's addmm: the output, and the gradients of the base's input (through the
    base's output), of h and of B."""
    x, w = torch.randn(rows, k, requires_grad=True), torch.randn(n, k)
    h, b = torch.randn(rows, r, requires_grad=True), torch.randn(n, r, requires_grad=True)
    result = x @ w.t()
    assert lora_up.usable(result, h, b)
    out = lora_up.add_into(result, h, b, 2.0)
    in_place = out.data_ptr() == result.data_ptr()
    g = torch.randn_like(out)
    (out * g).sum().backward()
    x2, h2, b2 = (t.detach().requires_grad_(True) for t in (x, h, b))
    ref = torch.addmm(x2 @ w.t(), h2, b2.t(), alpha=2.0)
    (ref * g).sum().backward()
    return {
        "out": rel(out.detach(), ref.detach()),
        "dx": rel(x.grad, x2.grad),
        "dh": rel(h.grad, h2.grad),
        "db": rel(b.grad, b2.grad),
        "in_place": in_place,
        # a view of another tensor is not the base's own output: addmm's path
        "view_usable": lora_up.usable(result.detach()[:, : n // 2], h, b[: n // 2]),
    }


def projection_against_torch(rows: int, n: int, k: int, r: int, p: float, four_bit: bool, x_grad=True) -> dict:
    """lora_projection's one node against torch doing the same with the kernels' mask: the base (a frozen
    Linear with a bias, or a 4-bit one and its dequantized weight) plus scaling * B(A(x * keep / (1 - p)));
    the output and the gradients of x, A and B (x without a gradient: A's and B's only)."""
    import bitsandbytes as bnb

    linear = torch.nn.Linear(k, n, bias=not four_bit).requires_grad_(False)
    base, weight = linear, linear.weight
    if four_bit:
        base = bnb.nn.Linear4bit(k, n, bias=False, compute_dtype=torch.float32, quant_type="nf4")
        base.weight = bnb.nn.Params4bit(linear.weight.clone(), requires_grad=False, quant_type="nf4")
        base = base.to("cpu")
        weight = bnb.functional.dequantize_4bit(base.weight.data, base.weight.quant_state)
    x = torch.randn(2, rows // 2, k, requires_grad=x_grad)
    a, b = torch.randn(r, k, requires_grad=True), torch.randn(n, r, requires_grad=True)
    assert lora_projection.usable(base, x, a, b, p)
    torch.manual_seed(11)
    out = lora_projection.apply(base, x, a, b, p, 2.0)
    torch.manual_seed(11)
    seed = int(torch.randint(0, 2**31 - 1, (1,)))  # the seed apply drew
    g = torch.randn_like(out)
    (out * g).sum().backward()
    keep = ld.keep_mask(rows, k, p, seed).view_as(x)
    x2, a2, b2 = (t.detach().requires_grad_(True) for t in (x, a, b))
    ref = torch.nn.functional.linear(x2, weight, linear.bias if not four_bit else None)
    ref = ref + 2.0 * ((x2 * keep * ld.keep_scale(p)) @ a2.t()) @ b2.t()
    (ref * g).sum().backward()
    return {
        "out": rel(out.detach(), ref.detach()),
        "dx": rel(x.grad, x2.grad) if x_grad else (x.grad is None),
        "da": rel(a.grad, a2.grad),
        "db": rel(b.grad, b2.grad),
        # not taken: a base that trains, a weight in another dtype than x
        "trained_base": lora_projection.usable(linear.requires_grad_(True), x, a, b, p),
        "other_dtype": lora_projection.usable(torch.nn.Linear(k, n).double().requires_grad_(False), x, a, b, p),
    }


def in_the_model(model_dir: str, method: str = "lora") -> dict:
    """A tiny LoRA (QLoRA: 4-bit bases) model's adapters through the kernels: how many calls a forward makes
    in training and in eval, and whether activation checkpointing's recompute draws the same masks (the same
    gradients)."""
    from ftctl.trainer.methods import apply_method, fused_adapter_output
    from ftctl.trainer.model import load_model
    from tests.trainer_fixtures import make_run

    spec, plan = make_run(model_dir, "unused.jsonl", "unused", method, lora_r=4, lora_alpha=8, lora_dropout=0.1)
    model = apply_method(load_model(spec, plan, on_cpu=True), spec, plan)
    assert not plan.lora_kernels  # a CPU plan; here the kernels run in the interpreter all the same
    fused_adapter_output(model, kernels=True)
    for n, p in model.named_parameters():
        if "lora_B" in n:  # B non-zero so that the adapters matter
            torch.nn.init.normal_(p, std=0.05)
    calls, sums = [], []
    node, up = lora_projection._Projection.apply, lora_up._UpAdd.apply
    lora_projection._Projection.apply = lambda *a: calls.append(1) or node(*a)
    lora_up._UpAdd.apply = lambda *a: sums.append(1) or up(*a)
    ids = torch.randint(0, 100, (2, 16))

    def grads(checkpointing: bool) -> dict:
        if checkpointing:
            model.activation_checkpointing_enable({"use_reentrant": False})
            model.enable_input_require_grads()
        model.zero_grad()
        torch.manual_seed(3)
        model(input_ids=ids, labels=ids).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    model.train()
    plain = grads(False)
    train_calls, train_sums = len(calls), len(sums)
    recomputed = grads(True)
    checkpointed_calls = len(calls) - train_calls
    calls.clear()
    sums.clear()
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)
    lora_projection._Projection.apply, lora_up._UpAdd.apply = node, up
    return {
        "train_calls": train_calls,
        "eval_calls": len(calls),
        "train_sums": train_sums,
        "eval_sums": len(sums),
        "checkpointed_calls": checkpointed_calls,  # the forward's and the recompute's
        "adapter_grads": len(plain),
        "checkpointed_max_rel": max(rel(recomputed[n], plain[n]) for n in plain),
        "grads_nonzero": all(bool(g.abs().sum() > 0) for g in plain.values()),
    }


def hash_reference(rows: int, k: int, p: float, seed: int) -> torch.Tensor:
    """The keep mask's definition in Python integers, independent of the kernels: for the column pair (2c, 2c + 1)
    of a row, lowbias32 of (row * K + 2c) xor (seed * 0x9E3779B1); its top 16 bits against the threshold for
    column 2c, its low 16 bits for column 2c + 1."""
    m = 0xFFFFFFFF
    out = torch.empty(rows, k, dtype=torch.bool)
    for row in range(rows):
        for col in range(k):
            h = ((row * k + col - col % 2) ^ (seed * 0x9E3779B1)) & m
            h ^= h >> 16
            h = (h * 0x7FEB352D) & m
            h ^= h >> 15
            h = (h * 0x846CA68B) & m
            h ^= h >> 16
            out[row, col] = (h >> 16 if col % 2 == 0 else h & 0xFFFF) >= ld.threshold(p)
    return out


def tiled_mask(block_m: int, block_k: int) -> torch.Tensor:
    rows, k, p = 100, 264, 0.3
    out = torch.empty(rows, k, dtype=torch.int8)
    grid = (-(-rows // block_m), -(-k // block_k))
    ld._mask[grid](out, rows, k, 11, ld.threshold(p), BLOCK_M=block_m, BLOCK_K=block_k)
    return out.bool()


def main() -> None:
    torch.manual_seed(0)
    out = {
        "model": in_the_model(sys.argv[1]),
        "model_4bit": in_the_model(sys.argv[1], "qlora"),
        # rows not a multiple of the row block, K not a multiple of the column block, r below the 16 of a tile
        "odd": against_torch(100, 264, 8, 0.3, 1234),
        "lora16": against_torch(130, 128, 16, 0.05, 7),
        # partial tiles in rows and columns, r below a tile's 16; LoRA's usual r 16
        "up_odd": up_add_against_torch(100, 200, 40, 8),
        "up16": up_add_against_torch(64, 128, 32, 16),
        # partial tiles everywhere, r 8; LoRA's r 16 over a 4-bit base (its blocks of 64: K a multiple)
        "projection": projection_against_torch(100, 200, 264, 8, 0.3, four_bit=False),
        "projection_4bit": projection_against_torch(64, 96, 128, 16, 0.1, four_bit=True),
        "projection_no_dx": projection_against_torch(64, 96, 128, 16, 0.1, four_bit=True, x_grad=False),
        "p_effective": 1 - ld.threshold(0.3) / 2**ld.RAND_BITS,
        # offsets past int32 would wrap in the kernels' index arithmetic: PEFT's path takes those inputs
        "usable_at_int32_limit": [
            ld.usable(torch.empty(rows, 4096, device="meta"), torch.empty(16, 4096), 0.1)
            for rows in (2**31 // 4096 - 1, 2**31 // 4096)
        ],
        "mask_is_the_hash": all(  # an odd width too: a row's last column pairs with none
            torch.equal(ld.keep_mask(20, k, 0.3, 12345), hash_reference(20, k, 0.3, 12345)) for k in (72, 73)
        ),
        "same_seed_same_mask": bool(torch.equal(ld.keep_mask(64, 256, 0.5, 5), ld.keep_mask(64, 256, 0.5, 5))),
        # the autotuner picks the forward's and the backward's tiles apart: the mask must not depend on them
        "mask_independent_of_tiles": bool(torch.equal(tiled_mask(64, 128), tiled_mask(32, 64))),
        "other_seed_other_mask": float((ld.keep_mask(64, 256, 0.5, 5) != ld.keep_mask(64, 256, 0.5, 6)).float().mean()),
        # neighbouring rows and columns are not copies of each other (consecutive indices into the hash)
        "row_pairs_equal": float((lambda m: (m[1:] == m[:-1]).float().mean())(ld.keep_mask(64, 256, 0.5, 9))),
        "col_pairs_equal": float((lambda m: (m[:, 1:] == m[:, :-1]).float().mean())(ld.keep_mask(64, 256, 0.5, 9))),
    }
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
