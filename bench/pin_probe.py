"""Host memory a page-locked (pinned) tensor costs: the 1B shape's fp32 and bf16 flat buffers, made as
DeepSpeed's ZeRO-Offload makes them (`.pin_memory()` of a pageable tensor) and directly pinned.

    python3 bench/pin_probe.py            # prints one JSON object
    PYTORCH_CUDA_ALLOC_CONF=pinned_max_round_threshold_mb:64 python3 bench/pin_probe.py

torch's caching host allocator rounds each pinned block up to a power of two unless it is above
pinned_max_round_threshold_mb (bench/NOTES.md v30). GPU machine only; never run in CI.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.fallback_8b import host_used_gb  # noqa: E402

N = 1_235_814_400  # the 1B shape's parameters


def main() -> None:
    torch.cuda.init()
    out = {"torch": torch.__version__}
    makers = {
        "fp32_pin_memory": lambda: torch.zeros(N).pin_memory(),
        "bf16_pin_memory": lambda: torch.zeros(N, dtype=torch.bfloat16).pin_memory(),
        "fp32_empty_pinned": lambda: torch.empty(N, pin_memory=True),
    }
    for name, make in makers.items():
        before = host_used_gb()
        t = make()
        t.fill_(1)
        time.sleep(0.5)
        delta = host_used_gb() - before
        out[name] = {"tensor_gb": round(t.numel() * t.element_size() / 1e9, 2), "host_delta_gb": round(delta, 2)}
        del t
        getattr(torch._C, "_host_emptyCache", lambda: None)()  # give the cached pinned block back
        time.sleep(0.5)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
