"""Throughput and peak memory of ftctl's trainer on one GPU (run on the device machine, not in CI).

Random-initialised models from configs (no hub): a Llama-3.1-8B shape for lora/qlora, a Llama-3.2-1B
(fft1b) or -3B (fft3b) shape for fft, a Qwen3-30B-A3B shape with 16 of its 48 layers (a mixture of experts,
10.6B parameters) for loramoe/qloramoe, Phi-3-mini's for loraphi3, Gemma-2-2B's for loragemma2 (its attention's
soft cap removed: loragemma2nocap), Gemma-2B's (loragemma) and Gemma-3-1B's (loragemma3); synthetic ShareGPT
conversations of 2,300-5,600 tokens (every row cut to the 2,048 of model_max_length); the tokenizer is the tests'
tiny byte-level BPE (token ids < 512 do not change the cost of a step). Each case goes through the
same path as a real run: RunSpec -> make_plan(1xH100) -> ftctl.trainer.run.train.

    python bench/gpu_train.py --out results.json [--cases lora8b,qlora8b,fft1b] [--steps 30]

A case may carry -o overrides after its name: ``lora8b+use_dora=true+per_device_train_batch_size=2``
(a list's commas as semicolons: ``loramoe+lora_target_modules=q_proj;v_proj``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPES = {
    "8b": dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        rope_theta=500000.0,
        max_position_embeddings=8192,
    ),
    "3b": dict(  # Llama-3.2-3B's
        hidden_size=3072,
        intermediate_size=8192,
        num_hidden_layers=28,
        num_attention_heads=24,
        num_key_value_heads=8,
        vocab_size=128256,
        rope_theta=500000.0,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
    ),
    "1b": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        rope_theta=500000.0,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
    ),
    "moe": dict(  # Qwen3-30B-A3B's, 16 of its 48 layers: a 21 GB bf16 checkpoint on the device's 64 GB disk
        model_type="qwen3_moe",
        hidden_size=2048,
        intermediate_size=6144,
        moe_intermediate_size=768,
        num_experts=128,
        num_experts_per_tok=8,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=4,
        head_dim=128,
        vocab_size=151936,
        rope_theta=1000000.0,
        max_position_embeddings=40960,
        tie_word_embeddings=False,
    ),
    "phi3": dict(  # Phi-3-mini's (3.8B): a type ftctl applies no Liger kernels to (fused qkv_proj and gate_up_proj)
        model_type="phi3",
        hidden_size=3072,
        intermediate_size=8192,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32064,
        rope_theta=10000.0,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
    ),
    "gemma2": dict(  # Gemma-2-2B's (2.6B): outside Liger, soft-capped attention logits (eager under sdpa)
        model_type="gemma2",
        hidden_size=2304,
        intermediate_size=9216,
        num_hidden_layers=26,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=256,
        vocab_size=256000,
        attn_logit_softcapping=50.0,
        final_logit_softcapping=30.0,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
    ),
}
SHAPES["gemma2nocap"] = dict(SHAPES["gemma2"], attn_logit_softcapping=None)  # torch's varlen kernels run it
SHAPES["gemma"] = dict(  # Gemma-2B's (Gemma 1)
    model_type="gemma",
    hidden_size=2048,
    intermediate_size=16384,
    num_hidden_layers=18,
    num_attention_heads=8,
    num_key_value_heads=1,
    head_dim=256,
    vocab_size=256000,
    max_position_embeddings=8192,
)
SHAPES["gemma3"] = dict(  # Gemma-3-1B's (text only): sliding windows of 512 in five layers of six
    model_type="gemma3_text",
    hidden_size=1152,
    intermediate_size=6912,
    num_hidden_layers=26,
    num_attention_heads=4,
    num_key_value_heads=1,
    head_dim=256,
    vocab_size=262144,
    sliding_window=512,
    max_position_embeddings=32768,
)
CASES = {
    "lora8b": ("lora", "8b"),
    "qlora8b": ("qlora", "8b"),
    "fft1b": ("fft", "1b"),
    "fft3b": ("fft", "3b"),
    "loramoe": ("lora", "moe"),
    "qloramoe": ("qlora", "moe"),
    "loraphi3": ("lora", "phi3"),
    "loragemma2": ("lora", "gemma2"),
    "loragemma2nocap": ("lora", "gemma2nocap"),
    "loragemma": ("lora", "gemma"),
    "loragemma3": ("lora", "gemma3"),
    "fftgemma3": ("fft", "gemma3"),
    "fftgemma2nocap": ("fft", "gemma2nocap"),
    "fftgemma": ("fft", "gemma"),
    "qloragemma2": ("qlora", "gemma2"),
    "qloragemma2nocap": ("qlora", "gemma2nocap"),
    "qloragemma3": ("qlora", "gemma3"),
}


def make_model(shape: str, root: Path, device: str = "cuda") -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from tests.tiny_fixtures import make_tiny_tokenizer

    fields = dict(SHAPES[shape])
    kind = fields.pop("model_type", "llama")
    path = root / f"{kind}-{shape}"
    if (path / "config.json").exists():
        return path
    cfg = AutoConfig.for_model(kind, **fields, bos_token_id=None, eos_token_id=0, pad_token_id=0)
    t = time.time()
    torch.manual_seed(0)  # the same weights every call (v109: unseeded, the init hung on what ran before it)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg).to(torch.bfloat16)
    model.save_pretrained(path)
    make_tiny_tokenizer().save_pretrained(path)
    del model
    torch.cuda.empty_cache()
    print(f"built {path} in {time.time() - t:.0f} s", flush=True)
    return path


def make_data(path: Path, rows: int = 400) -> Path:
    rng = random.Random(0)
    words = "the of model data train token layer batch memory value ship code answer night river".split()
    out = []
    for i in range(rows):
        n = rng.randint(600, 1400)
        q = " ".join(rng.choice(words) for _ in range(n // 4))
        a = " ".join(rng.choice(words) for _ in range(n))
        out.append({"id": str(i), "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]})
    path.write_text(json.dumps(out))
    return path


def run_case(name: str, model_dir: Path, data: Path, steps: int, work: Path, checkpoint: bool = True) -> dict:
    import torch
    from transformers import TrainerCallback

    from ftctl.plan import make_plan
    from ftctl.spec import build
    from ftctl.trainer.run import train

    base, *extra = name.split("+")  # lora8b+use_dora=true: a case with -o overrides
    extra = [e.replace(";", ",") for e in extra]  # --cases splits on commas
    method, _ = CASES[base]
    spec = build(
        flags=dict(
            method=method,
            model_name_or_path=str(model_dir),
            data_path=str(data),
            output_dir=str(work / name),
            gpus="1xH100",
            backend="local",
        ),
        overrides=[
            f"max_steps={steps}",
            "global_batch_size=8",
            "model_max_length=2048",
            "save_steps=100000",
            "logging_steps=1",
            "resume=never",
            *extra,
        ],
    )
    plan = make_plan(spec)

    class Clock(TrainerCallback):
        def __init__(self):
            self.t = []
            self.tokens = []

        def on_step_end(self, args, state, control, **kw):
            torch.cuda.synchronize()
            self.t.append(time.time())
            self.tokens.append(state.num_input_tokens_seen)

    class NoCheckpoint(TrainerCallback):  # --no-checkpoint: a 3B fft's last checkpoint is ~50 GB of a 64 GB disk
        def on_step_end(self, args, state, control, **kw):
            control.should_save = False

    clock = Clock()
    torch.cuda.reset_peak_memory_stats()
    result = train(spec, plan, callbacks=[clock] if checkpoint else [clock, NoCheckpoint()])
    warm = min(5, len(clock.t) - 1)  # the first steps include compilation and allocator warm-up (--steps 2: a peak)
    dt = clock.t[-1] - clock.t[warm - 1] if warm > 0 else float("nan")
    tok = clock.tokens[-1] - clock.tokens[warm - 1] if warm > 0 else 0
    return {
        "case": name,
        "method": method,
        "steps": result.global_step,
        "final_loss": result.final_loss,
        "plan": {
            k: getattr(plan, k)
            for k in (
                "precision",
                "attn_implementation",
                "strategy",
                "packing",
                "per_device_train_batch_size",
                "gradient_accumulation_steps",
                "gradient_checkpointing",
                "optim",
                "memory_gb",
                "memory",
                "lora_kernels",
            )
        },
        "tokens_per_s": round(tok / dt, 1),
        "timed_steps": len(clock.t) - warm,
        "peak_alloc_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2),
    }


def run_multi(name: str, gpus: int, data: Path, steps: int, work: Path) -> dict:
    """Several GPUs of this host through the real launch path: `ftctl launch --backend local`
    (torchrun, NCCL); tokens/s and peak memory from the run's metrics.jsonl (rank 0)."""
    import subprocess

    method, shape = CASES[name.split("-")[0]]
    strategy = name.split("-")[1]
    out = work / f"{name}-out"
    model_dir = make_model(shape, work)
    cmd = [
        sys.executable,
        "-m",
        "ftctl.cli",
        "launch",
        "--backend",
        "local",
        "--gpus",
        f"{gpus}xH100",
        "--method",
        method,
        "--model",
        str(model_dir),
        "--data",
        str(data),
        "--output",
        str(out),
        "-o",
        f"max_steps={steps}",
        "-o",
        f"global_batch_size={8 * gpus}",
        "-o",
        "model_max_length=2048",
        "-o",
        "save_steps=100000",
        "-o",
        "resume=never",
        "-o",
        f"strategy={strategy}",
    ]
    t = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    records = (
        [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        if (out / "metrics.jsonl").exists()
        else []
    )
    steps_ = [r for r in records if "loss" in r]
    if proc.returncode != 0 or len(steps_) < 10:
        return {"case": f"{name}-{gpus}gpu", "error": (proc.stderr or proc.stdout)[-1500:]}
    timed = steps_[5:]
    dt = timed[-1]["time"] - steps_[4]["time"]
    plan = json.loads((out / "spec.json").read_text())["plan"]
    return {
        "case": f"{name}-{gpus}gpu",
        "method": method,
        "gpus": gpus,
        "steps": len(steps_),
        "final_loss": steps_[-1]["loss"],
        "wall_s": round(time.time() - t, 1),
        "plan": {
            k: plan[k]
            for k in (
                "strategy",
                "per_device_train_batch_size",
                "gradient_accumulation_steps",
                "gradient_checkpointing",
                "memory_gb",
            )
        },
        "tokens_per_s": round((timed[-1]["tokens"] - steps_[4]["tokens"]) / dt, 1),
        "peak_alloc_gib_rank0": max(r.get("peak_mem_gib") or 0 for r in steps_),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--cases", default="lora8b,qlora8b,fft1b")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--work", default="/tmp/ftctl-bench")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--no-checkpoint", action="store_true", help="no checkpoint at the end (the final model still)")
    ap.add_argument("--gpus", type=int, default=1, help="several GPUs: cases like fft1b-ddp, fft1b-zero2")
    a = ap.parse_args()
    import torch

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    data = make_data(work / "data.json")
    results = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "cases": []}
    if a.one:  # one case in this process: GPU memory of an earlier case cannot leak into it
        try:
            model_dir = make_model(CASES[a.one.split("+")[0]][1], work)
            case = run_case(a.one, model_dir, data, a.steps, work, checkpoint=not a.no_checkpoint)
        except Exception as e:  # record it: one failing case must not lose the others
            import traceback

            traceback.print_exc()
            case = {"case": a.one, "error": f"{type(e).__name__}: {str(e)[:300]}"}
        Path(a.out).write_text(json.dumps(case, indent=2))
        return
    import subprocess

    if a.gpus > 1:
        for name in a.cases.split(","):
            results["cases"].append(run_multi(name, a.gpus, data, a.steps, work))
            Path(a.out).write_text(json.dumps(results, indent=2))
            print(json.dumps(results["cases"][-1]), flush=True)
        return
    for name in a.cases.split(","):
        one = work / f"{name}.json"
        one.unlink(missing_ok=True)
        flags = ["--one", name, "--out", str(one), "--steps", str(a.steps), "--work", str(work)]
        subprocess.run(
            [sys.executable, __file__, *flags, *(["--no-checkpoint"] if a.no_checkpoint else [])],
            env={**os.environ, "CUDA_VISIBLE_DEVICES": "0"},
        )
        shutil.rmtree(work / name, ignore_errors=True)  # a 1B fft's output is ~20 GB: the next case needs the disk
        results["cases"].append(json.loads(one.read_text()) if one.exists() else {"case": name, "error": "crashed"})
        Path(a.out).write_text(json.dumps(results, indent=2))
        print(json.dumps(results["cases"][-1]), flush=True)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # what every ftctl run has (run.cuda_allocator_defaults), set before make_model's first CUDA allocation: v70's
    # 32k-token 8B row ran out of memory with 15.5 GiB reserved but unallocated under the fixed segments
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    main()
