"""A QLoRA run trained on a GPU, merged as `ftctl merge` does, against the run as trained (device machine, not CI).

`ftctl merge` quantizes the base to NF4 on the CPU (trained.quantized_base, device_map cpu) and dequantizes it; the
run quantized it on the GPU. The merged model answers as the run did only if both quantize alike. Measured:
1. bitsandbytes' NF4 quantization (double quantization, blocks of 64) of the model's first layers' linear weights
   on CUDA and on the CPU: the share of packed bytes that differ, the largest difference of the dequantized weights.
2. A qlora run of a random-initialised 1B Llama (`ftctl launch --backend local`, 1 GPU), merged twice on this machine
   (`ftctl merge RUN`, the dequantized base; `--original-base`). On held-out rows, on the GPU: each merged model's
   next tokens against the run as trained (its base quantized on the GPU, the adapter on it: trained.load
   as_trained), the largest logit difference and each one's loss.

    python3 bench/merge_gpu.py --out DIR [--steps 30] [--layers 4] [--in-process]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
REPO = Path(__file__).resolve().parents[1]


def quantize_both(model_dir: Path, layers: int) -> dict:
    """NF4 of the first ``layers`` layers' linear weights on CUDA and on the CPU, compared."""
    import torch
    from bitsandbytes import functional as F
    from safetensors import safe_open

    differ = total = 0
    worst = 0.0
    absmax_differ = 0
    files = sorted(model_dir.glob("*.safetensors"))
    for file in files:
        with safe_open(str(file), "pt") as f:
            for name in f.keys():
                if not name.endswith("proj.weight") or int(name.split(".")[2]) >= layers:
                    continue
                w = f.get_tensor(name).to(torch.bfloat16)
                out = {}
                for device in ("cuda", "cpu"):
                    packed, state = F.quantize_4bit(
                        w.to(device), blocksize=64, compress_statistics=True, quant_type="nf4"
                    )
                    deq = F.dequantize_4bit(packed, state, quant_type="nf4").float().cpu()
                    out[device] = (packed.cpu(), F.dequantize_blockwise(state.absmax, state.state2).cpu(), deq)
                differ += int((out["cuda"][0] != out["cpu"][0]).sum())
                total += out["cuda"][0].numel()
                absmax_differ += int((out["cuda"][1] != out["cpu"][1]).sum())
                worst = max(worst, float((out["cuda"][2] - out["cpu"][2]).abs().max()))
    return {
        "packed_bytes": total,
        "packed_bytes_differing": differ,
        "absmax_differing": absmax_differ,
        "max_abs_dequantized_diff": worst,
    }


def ftctl(*args: str, log: Path) -> float:
    t = time.time()
    with log.open("w") as f:
        rc = subprocess.run([sys.executable, "-m", "ftctl.cli", *args], stdout=f, stderr=subprocess.STDOUT, cwd=REPO)
    if rc.returncode:
        raise SystemExit(f"ftctl {' '.join(args)}: exit {rc.returncode}; see {log}:\n{log.read_text()[-3000:]}")
    return time.time() - t


def held_out(model_dir: Path, data: Path, rows: int, length: int):
    import torch
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    convs = json.loads(data.read_text())[-rows:]  # the last rows: a 30-step run of global batch 8 saw the first 240
    ids = [tok(c["conversations"][1]["value"])["input_ids"][:length] for c in convs]
    n = min(len(i) for i in ids)
    return torch.tensor([i[:n] for i in ids], device="cuda")


def logits_of(model, ids):
    import torch

    with torch.no_grad():
        return torch.cat([model(input_ids=ids[i : i + 4]).logits.float() for i in range(0, len(ids), 4)])


def compare(logits, ref, ids) -> dict:
    import torch

    agree = (logits[:, :-1].argmax(-1) == ref[:, :-1].argmax(-1)).float().mean()
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    return {
        "next_token_agreement": float(agree),
        "max_abs_logit_diff": float((logits - ref).abs().max()),
        "loss": float(loss),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--work", default="/tmp/ftctl-merge")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--in-process", action="store_true", help="also the base dequantized on CUDA and on the CPU here")
    a = ap.parse_args()
    import torch
    from transformers import AutoModelForCausalLM

    from bench.gpu_train import make_data, make_model
    from ftctl.trainer import trained as trained_mod

    out, work = Path(a.out), Path(a.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    card = torch.cuda.get_device_name(0)
    tier = "H200" if "H200" in card else "H100"
    result: dict = {"card": card, "torch": torch.__version__, "steps": a.steps}
    model, data = make_model("1b", work), make_data(work / "data.json", 300)
    t = time.time()
    result["quantization"] = quantize_both(model, a.layers)
    result["quantization"]["seconds"] = round(time.time() - t, 1)
    print(json.dumps(result["quantization"]), flush=True)

    run = work / "run"
    opts = [f"max_steps={a.steps}", "learning_rate=2e-4", "global_batch_size=8", f"save_steps={a.steps}"]
    result["train_s"] = ftctl(
        "launch",
        "--backend",
        "local",
        "--gpus",
        f"1x{tier}",
        "--method",
        "qlora",
        "--model",
        str(model),
        "--data",
        str(data),
        "--output",
        str(run),
        *sum((["-o", o] for o in opts), []),
        log=out / "train.log",
    )
    result["merge_s"] = ftctl("merge", str(run), log=out / "merge.log")
    result["merge_original_s"] = ftctl(
        "merge", str(run), "--original-base", "--out", str(work / "merged-original"), log=out / "merge-original.log"
    )
    ids = held_out(model, data, 16, 1024)
    found = trained_mod.find(str(run))
    as_trained = trained_mod.load(found, "bf16", device_map={"": "cuda"}, as_trained=True).eval()
    ref = logits_of(as_trained, ids)
    result["as_trained"] = compare(ref, ref, ids)
    del as_trained
    for name, path in (("dequantized_merge", run / "merged"), ("original_merge", work / "merged-original")):
        m = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, device_map={"": "cuda"}).eval()
        result[name] = compare(logits_of(m, ids), ref, ids)
        del m
        torch.cuda.empty_cache()
    if a.in_process:  # where the merge's difference comes from: the base's quantization (CPU or CUDA), or the merge
        from peft import PeftModel

        base_path = trained_mod.resolve_base(found)
        for device in ("cuda", "cpu"):
            base = trained_mod.quantized_base(found, base_path, "bf16", {"": device}, dequantized=True).to("cuda")
            m = PeftModel.from_pretrained(base, str(found.path)).eval()
            result[f"{device}_dequantized_unmerged"] = compare(logits_of(m, ids), ref, ids)
            m = m.merge_and_unload()
            result[f"{device}_dequantized_merge"] = compare(logits_of(m, ids), ref, ids)
            del m, base
            torch.cuda.empty_cache()
    print(json.dumps(result, indent=1), flush=True)
    (out / "merge_gpu.json").write_text(json.dumps(result, indent=1))
    os.sync()


if __name__ == "__main__":
    main()
