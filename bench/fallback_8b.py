"""The local backend's fallback on a real GPU (issue "First contact"): `ftctl launch --backend local
--method fft` of a Llama-3.1-8B shape on one GPU whose host memory is declared too small for fft's CPU
offload, which must run qlora instead, say so, and train a few steps.

    python3 bench/fallback_8b.py OUT_DIR

Builds a random-initialised Llama-3.1-8B-shaped model on the GPU (bf16, no hub), saves it once
(16 GB), then runs ftctl exactly as a user would and records what it printed and what ran.
GPU machine only; never run in CI.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def build_model(path: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.tiny_fixtures import make_tiny_tokenizer

    tok = make_tiny_tokenizer()
    from bench.gpu_train import SHAPES

    cfg = LlamaConfig(
        **SHAPES["8b"],
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    del model
    torch.cuda.empty_cache()


def main(out: str) -> None:
    out_dir = Path(out)
    model = Path("/tmp/llama8b-shape")
    t0 = time.time()
    if not (model / "config.json").exists():
        build_model(model)
    built = time.time() - t0
    cmd = [
        sys.executable,
        "-m",
        "ftctl.cli",
        "launch",
        "--backend",
        "local",
        "--method",
        "fft",
        "--model",
        str(model),
        "--data",
        "builtin:demo",
        "--output",
        "/tmp/fallback-run",
        "-o",
        "host_memory_gb=100",
        "-o",
        "max_steps=4",
        "-o",
        "save_steps=1000",
        "-o",
        "model_max_length=1024",
        "-o",
        "global_batch_size=4",
    ]
    t1 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    ran = time.time() - t1
    run = (
        json.loads(Path("/tmp/fallback-run/spec.json").read_text())
        if Path("/tmp/fallback-run/spec.json").exists()
        else {}
    )
    metrics = (
        [json.loads(x) for x in Path("/tmp/fallback-run/metrics.jsonl").read_text().splitlines()]
        if Path("/tmp/fallback-run/metrics.jsonl").exists()
        else []
    )
    result = {
        "command": " ".join(cmd[2:]),
        "exit_code": proc.returncode,
        "stderr": proc.stderr[-4000:],
        "stdout_tail": proc.stdout[-2000:],
        "spec_method": run.get("spec", {}).get("method"),
        "plan_method": run.get("plan", {}).get("method"),
        "asked_method": run.get("plan", {}).get("asked_method"),
        "plan_memory_gb": run.get("plan", {}).get("memory_gb"),
        "losses": [m.get("loss") for m in metrics if "loss" in m],
        "peak_gib": max((m.get("peak_mem_gib") or 0 for m in metrics), default=None),
        "build_model_s": round(built, 1),
        "launch_s": round(ran, 1),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "fallback-8b.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k not in ("stderr", "stdout_tail")}, indent=1))
    print(proc.stderr[-3000:])


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bench-out")
