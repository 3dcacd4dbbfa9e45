"""FlashAttention 4's persistent kernel cache (device machine, not CI): what the attention probe costs a process
with FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED=1, cold and warm, alone and with 8 processes at once (a node's ranks
compiling together: the cache's file locks time out after 15 s), against the probe without the cache.

    source bench/fa4_site.sh && python bench/fa4_cache.py --out results.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPE = dict(head_dim=128, heads=32, kv_heads=8, dtype="bfloat16")  # Llama-3.1-8B's attention


def one() -> dict:
    t0 = time.time()
    import torch

    from ftctl.trainer import attention

    torch.zeros(1, device="cuda")  # the CUDA context, not counted
    imported = time.time() - t0
    t = time.time()
    problem = attention.probe(attention._fa4_varlen, attention.AttentionShape(**SHAPE), "cuda:0")
    return {"probe_s": round(time.time() - t, 2), "import_s": round(imported, 2), "problem": problem}


def batch(n: int, cache_dir: str | None) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASH_ATTENTION_CUTE_DSL_CACHE")}
    if cache_dir:
        env.update(FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED="1", FLASH_ATTENTION_CUTE_DSL_CACHE_DIR=cache_dir)
    procs = [
        subprocess.Popen([sys.executable, __file__, "--one"], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(n)
    ]
    rows = []
    for p in procs:
        out, _ = p.communicate()
        last = out.strip().splitlines()[-1] if out.strip() else ""
        rows.append(json.loads(last) if last.startswith("{") else {"error": f"exit {p.returncode}", "out": out[-300:]})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one()), flush=True)
        return
    import torch

    result = {"card": torch.cuda.get_device_name(0), "shape": SHAPE, "rows": []}
    cases = [("no cache", 1, None)]
    for n in (1, 8):
        cache = tempfile.mkdtemp(prefix=f"fa4-cache-{n}-")
        cases += [(f"cache cold x{n}", n, cache), (f"cache warm x{n}", n, cache)]
    for name, n, cache in cases:
        t = time.time()
        rows = batch(n, cache)
        entries = sorted(p.name for p in Path(cache).rglob("*.o")) if cache else []
        result["rows"].append(
            {
                "case": name,
                "processes": n,
                "wall_s": round(time.time() - t, 1),
                "cached_kernels": len(entries),
                "each": rows,
            }
        )
        print(json.dumps(result["rows"][-1]), flush=True)
        Path(a.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
