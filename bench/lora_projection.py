"""A LoRA projection's forward + backward: three autograd nodes against trainer/lora_projection.py's one
(device machine only).

For each adapted projection of the 8B shape at 16,384 tokens, rank 16, dropout 0.05, bf16, with a 4-bit NF4
base (qlora) and a bf16 base (lora), both ways through torch.autograd:

    nodes  the base (bitsandbytes' Linear4bit / nn.Linear), lora_dropout's dropout + A, lora_up's sum in place:
           autograd adds the base's and the adapter's input gradients (methods._fused_forward before v15)
    one    lora_projection.apply: the adapter's input gradient added inside the dropout kernel

Each timing is CUDA events around 20 forward + backward passes after 3 warm-up ones (the GPU's time with the
host's launches in it: what a training step sees), per projection and summed over an 8B step's 32 blocks.
The output and all gradients of each are compared with torch in fp32 applying the kernels' mask (the same seed)
to the base's weight (dequantized: the same values bitsandbytes computes with).

    python3 bench/lora_projection.py --out $OUT/lora_projection.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TOKENS, RANK, DROP, SCALING, REPEAT = 16384, 16, 0.05, 2.0, 20
SHAPES = {"q,o": (4096, 4096, 2), "k,v": (4096, 1024, 2), "gate,up": (4096, 14336, 2), "down": (14336, 4096, 1)}


def base_layer(k: int, n: int, four_bit: bool):
    import bitsandbytes as bnb
    import torch

    linear = torch.nn.Linear(k, n, bias=False, device="cuda", dtype=torch.bfloat16).requires_grad_(False)
    if not four_bit:
        return linear
    q = bnb.nn.Linear4bit(k, n, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4", compress_statistics=True)
    q.weight = bnb.nn.Params4bit(
        linear.weight.data.cpu(), requires_grad=False, quant_type="nf4", compress_statistics=True
    )
    return q.cuda()


def one(k: int, n: int, four_bit: bool) -> dict:
    import torch

    from ftctl.trainer import lora_dropout, lora_projection, lora_up

    base = base_layer(k, n, four_bit)
    torch.manual_seed(0)
    x = torch.randn(TOKENS, k, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    a = (torch.randn(RANK, k, device="cuda") / k**0.5).requires_grad_(True)
    b = (torch.randn(n, RANK, device="cuda") / RANK**0.5).requires_grad_(True)
    g = torch.randn(TOKENS, n, device="cuda", dtype=torch.bfloat16)

    def nodes(seed):
        h = lora_dropout._DropoutDown.apply(x, a, DROP, seed)
        return lora_up.add_into(base(x), h, b, SCALING)

    def single(seed):
        return lora_projection._Projection.apply(x, a, b, base, DROP, SCALING, seed)

    # the reference: torch in fp32 with the kernels' mask and the base's (dequantized) weight
    x32, a32, b32 = (t.detach().float().requires_grad_(True) for t in (x, a, b))
    keep = lora_dropout.keep_mask(TOKENS, k, DROP, 1234, device="cuda")
    w32 = lora_projection._weight(base).float()
    ref = x32 @ w32.t() + SCALING * ((x32 * keep * lora_dropout.keep_scale(DROP)) @ a32.t()) @ b32.t()
    ref.backward(g.float())
    want = [ref.detach(), x32.grad, a32.grad, b32.grad]
    out = {}
    for name, fn in (("nodes", nodes), ("one", single)):
        for t in (x, a, b):
            t.grad = None
        y = fn(1234)
        y.backward(g)
        got = [y.detach().float(), x.grad.float(), a.grad.clone(), b.grad.clone()]
        out[f"{name}_rel_diff"] = {
            what: round(float((p - q).norm() / q.norm()), 5) for what, p, q in zip(("out", "dx", "da", "db"), got, want)
        }
        for _ in range(3):
            fn(7).backward(g)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for i in range(REPEAT):
            fn(i).backward(g)
        end.record()
        torch.cuda.synchronize()
        out[f"{name}_ms"] = round(start.elapsed_time(end) / REPEAT, 3)
    return out


def main() -> None:
    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    rows = {"card": torch.cuda.get_device_name(0), "tokens": TOKENS, "rank": RANK}
    for kind, four_bit in (("qlora", True), ("lora", False)):
        per_step = {"nodes_ms": 0.0, "one_ms": 0.0}
        for names, (k, n, count) in SHAPES.items():
            r = one(k, n, four_bit)
            rows[f"{kind} {names}"] = r
            for key in per_step:
                per_step[key] += r[key] * count * 32
            print(kind, names, r, flush=True)
        rows[f"{kind} per 8B step"] = {key: round(v, 1) for key, v in per_step.items()}
        print(kind, "per 8B step", rows[f"{kind} per 8B step"], flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
