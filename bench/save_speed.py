"""Where a full fine-tuning checkpoint's seconds go on a GPU node (run on the device machine, not in CI).

v77 read 0.42-0.61 GB/s for a full-state checkpoint out of v66-v68's step times (a 1B fft checkpoint of 14.8 GB
held the GPU ~32 s). Here, on one card, the parts, each timed alone in this process:
- disk: 8 GB written in 64 MB chunks (into the page cache), then its fsync;
- sha256 (what ftctl's manifest computes of every file before the checkpoint counts as complete): one thread on a
  1 GiB buffer, and 4 threads at once (hashlib releases the GIL on large updates);
- the 1B shape's fp32 model and AdamW states on the GPU, saved as the Trainer saves them: save_pretrained
  (safetensors) and torch.save of the optimizer's state dict, then os.sync; then ftctl's build_manifest of that dir;
- the real path: bench/multi_gpu.py `--cases single --steps 12 --save-at 10` (the save's seconds derived as v77 does).

    python bench/save_speed.py --out DIR [--work /tmp/save_speed]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CHUNK = 64 << 20


def disk(work: Path, gb: int = 8) -> dict:
    buf = os.urandom(CHUNK)
    path = work / "disk.bin"
    t0 = time.perf_counter()
    with open(path, "wb") as f:
        for _ in range(gb * (1 << 30) // CHUNK):
            f.write(buf)
        t1 = time.perf_counter()
        f.flush()
        os.fsync(f.fileno())
    t2 = time.perf_counter()
    path.unlink()
    n = gb * (1 << 30) / 1e9
    return {
        "gb": round(n, 2),
        "write_s": round(t1 - t0, 2),
        "fsync_s": round(t2 - t1, 2),
        "gb_per_s": round(n / (t2 - t0), 2),
    }


def hashing() -> dict:
    import hashlib

    buf = os.urandom(1 << 30)

    def one():
        h = hashlib.sha256()
        for i in range(0, len(buf), 1 << 20):
            h.update(buf[i : i + (1 << 20)])

    t = time.perf_counter()
    one()
    single = time.perf_counter() - t
    threads = [threading.Thread(target=one) for _ in range(4)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    four = time.perf_counter() - t
    gib = (1 << 30) / 1e9
    return {"sha256_gb_per_s_1thread": round(gib / single, 2), "sha256_gb_per_s_4threads": round(4 * gib / four, 2)}


def parts(work: Path) -> dict:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from bench.gpu_train import SHAPES
    from ftctl.checkpoints.manifest import build_manifest

    fields = dict(SHAPES["1b"])
    kind = fields.pop("model_type", "llama")
    cfg = AutoConfig.for_model(kind, **fields, bos_token_id=None, eos_token_id=0, pad_token_id=0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(cfg)  # fp32 masters, as a single-GPU fft run holds them
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    torch.cuda.synchronize()
    d = work / "checkpoint-parts"
    d.mkdir(parents=True, exist_ok=True)
    row = {}
    t = time.perf_counter()
    model.save_pretrained(d, safe_serialization=True)
    row["save_pretrained_s"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    torch.save(opt.state_dict(), d / "optimizer.pt")
    row["torch_save_optimizer_s"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    os.sync()
    row["sync_s"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    manifest = build_manifest(str(d), 0, 1, "x")
    row["manifest_s"] = round(time.perf_counter() - t, 2)
    row["files"] = {f["path"]: f["size"] for f in manifest["files"]}
    from ftctl.checkpoints import manifest as m

    threads = m._HASH_THREADS
    for label, n in (("one_thread", 1), ("threaded", threads)) * 2:  # the same files, alternated (v80)
        m._HASH_THREADS = n
        t = time.perf_counter()
        build_manifest(str(d), 0, 1, "x")
        row.setdefault(f"manifest_{label}_s", []).append(round(time.perf_counter() - t, 2))
    m._HASH_THREADS = threads
    row["bytes"] = sum(row["files"].values())
    shutil.rmtree(d)
    return row


def real(out: Path, work: Path) -> dict:
    res = out / "multi_gpu"
    cmd = [sys.executable, "bench/multi_gpu.py", "--out", str(res), "--work", str(work / "mg")]
    cmd += ["--cases", "single", "--steps", "12", "--save-at", "10", "--budget-s", "240", "--no-netcheck"]
    p = subprocess.run(cmd, capture_output=True, text=True)
    (out / "multi_gpu.stdout").write_text(p.stdout[-20000:] + p.stderr[-20000:])
    rows = json.loads((res / "multi_gpu.json").read_text())["rows"] if (res / "multi_gpu.json").exists() else []
    row = next((r for r in rows if r.get("case") == "single"), {})
    t = row.get("times") or []
    if len(t) < 12 or "ckpt_bytes" not in row:
        return {"error": row.get("error", f"rc {p.returncode}")}
    dts = [b - a for a, b in zip(t, t[1:])]
    normal = sorted(dts[5:8])[1]
    save = dts[9] - 2 * normal
    return {"ckpt_bytes": row["ckpt_bytes"], "save_s": round(save, 2), "step_s": round(normal, 3)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--work", default="/tmp/save_speed")
    a = ap.parse_args()
    out, work = Path(a.out), Path(a.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    import torch

    result = {"card": torch.cuda.get_device_name(0), "torch": torch.__version__, "cpus": os.cpu_count()}
    for name, fn in (("disk", lambda: disk(work)), ("hash", hashing), ("parts", lambda: parts(work))):
        t = time.perf_counter()
        try:
            result[name] = fn()
        except Exception as e:  # noqa: BLE001 - a bench records what failed and goes on
            result[name] = {"error": repr(e)}
        print(name, round(time.perf_counter() - t, 1), "s:", json.dumps(result[name])[:400], flush=True)
        (out / "save_speed.json").write_text(json.dumps(result, indent=1))
    result["real"] = real(out, work)
    print("real:", json.dumps(result["real"]), flush=True)
    (out / "save_speed.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
