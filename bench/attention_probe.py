"""The attention probe on a GPU (device machine, not CI): for models whose attention some kernel cannot run,
the trainer's choice (``attention.resolve`` with the model's ``AttentionShape``) and what it then trains.

Each case is a random-initialised 2-layer model from a config, in its own process (FlashAttention 4's compile
cache starts empty): the probe's time, the kernel chosen and the warnings said, FA4's compiled kernels after the
probe and after the first training step (the probe should have compiled what the step needs), the first two steps'
times, and the loss of a packed batch against ftctl's reference attention (SDPA per document) on the same weights.

    python bench/attention_probe.py --out results.json [--cases hd64,hd128,gemma2,hd320] [--trainer]

``--trainer`` trains each model through ftctl's trainer instead (needs TRL & co., as bench/multi_gpu.py does).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LLAMA = dict(vocab_size=32000, num_hidden_layers=2, intermediate_size=2048, max_position_embeddings=8192)
CASES = {
    "hd64": ("llama", dict(LLAMA, hidden_size=1024, num_attention_heads=16, num_key_value_heads=4)),
    "hd128": ("llama", dict(LLAMA, hidden_size=2048, num_attention_heads=16, num_key_value_heads=8)),
    # Gemma 2's attention: head dim 256, soft-capped logits, sliding and full layers
    "gemma2": (
        "gemma2",
        dict(
            vocab_size=32000,
            num_hidden_layers=2,
            hidden_size=1024,
            intermediate_size=2048,
            num_attention_heads=8,
            num_key_value_heads=4,
            head_dim=256,
            sliding_window=1024,
        ),
    ),
    # a head dim no FlashAttention kernel takes (every one stops at 256): sdpa
    "hd320": ("llama", dict(LLAMA, hidden_size=640, num_attention_heads=2, num_key_value_heads=2)),
}
DOCS = (1500, 700, 1200, 300, 396)  # one packed batch of 4,096 tokens


def fa4_compiled() -> list | None:
    """The compile keys of FA4's forward and backward kernels compiled in this process so far."""
    try:
        from flash_attn.cute import interface
    except Exception:
        return None
    return [str(k) for f in (interface._flash_attn_fwd, interface._flash_attn_bwd) for k in f.compile_cache.cache]


def one(name: str) -> dict:
    import functools

    import torch
    from transformers import AttentionInterface, AutoConfig, AutoModelForCausalLM

    from ftctl.trainer import attention

    model_type, kw = CASES[name]
    records = []
    handler = logging.Handler()
    handler.emit = lambda r: records.append(r.getMessage())
    logging.getLogger("ftctl").addHandler(handler)
    logging.getLogger("ftctl").setLevel(logging.INFO)

    cfg = AutoConfig.for_model(model_type, **kw)
    shape = attention.AttentionShape.of(cfg, "bfloat16")
    t = time.time()
    on_cpu = not torch.cuda.is_available()  # a dry run of the script here: sdpa, no kernels probed
    dev = "cpu" if on_cpu else "cuda"
    kernels = attention.resolve(attention.VARLEN, model_type, on_cpu=on_cpu, packed=True, shape=shape)
    probe_s = time.time() - t
    compiled_after_probe = fa4_compiled()

    ref_name = "bench_reference"
    AttentionInterface.register(
        ref_name, functools.partial(attention.varlen_attention_forward, cuda_kernel=attention._reference_varlen)
    )
    attention.mask_preparation(ref_name, False)
    torch.manual_seed(0)
    with torch.device(dev):
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation=kernels.attn_implementation).bfloat16()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, cfg.vocab_size, (1, sum(DOCS)), generator=g).to(dev)
    position_ids = torch.cat([torch.arange(n) for n in DOCS]).unsqueeze(0).to(dev)
    cu = torch.tensor([0, *torch.tensor(DOCS).cumsum(0).tolist()], dtype=torch.int32, device=dev)
    batch = dict(
        input_ids=ids,
        labels=ids,
        position_ids=position_ids,
        cu_seq_lens_q=cu,
        cu_seq_lens_k=cu,
        max_length_q=max(DOCS),
        max_length_k=max(DOCS),
    )
    steps = []
    sync = torch.cuda.synchronize if not on_cpu else (lambda: None)
    for _ in range(2):
        sync()
        t = time.time()
        loss = model(**batch).loss
        loss.backward()
        sync()
        steps.append(round(time.time() - t, 3))
    compiled_after_step = fa4_compiled()
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        chosen = model(**batch).loss.item()
        model.set_attn_implementation(ref_name)
        reference = model(**batch).loss.item()
    return {
        "case": name,
        "head_dim": shape.head_dim,
        "heads": [shape.heads, shape.kv_heads],
        "softcap": shape.softcap,
        "windows": list(shape.windows),
        "chosen": kernels.attn_implementation,
        "probe_s": round(probe_s, 2),
        "said": [m for m in records if "cannot run" in m or "planned but" in m],
        "fa4_compiled_after_probe": None if compiled_after_probe is None else len(compiled_after_probe),
        "fa4_compiled_after_first_step": None if compiled_after_step is None else len(compiled_after_step),
        "fa4_compiled_in_first_step": [k for k in compiled_after_step or () if k not in compiled_after_probe],
        "step_s": steps,
        "loss": chosen,
        "reference_loss": reference,
        "rel_diff": abs(chosen - reference) / abs(reference),
    }


def trained(name: str, work: Path) -> dict:
    """The same model through the trainer (``ftctl.trainer.run.train``, 1B-style fft plan for one H200, 4 steps of
    the bundled demo conversations, packed): what metrics.jsonl says ran, what was said, the losses."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from ftctl.demo import demo_data_path
    from ftctl.plan import make_plan
    from ftctl.spec import build
    from ftctl.trainer.run import train
    from tests.tiny_fixtures import make_tiny_tokenizer

    model_type, kw = CASES[name]
    model_dir = work / f"model-{name}"
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **kw)).save_pretrained(model_dir)
    make_tiny_tokenizer().save_pretrained(model_dir)
    records = []
    handler = logging.Handler()
    handler.emit = lambda r: records.append(r.getMessage())
    logging.getLogger("ftctl").addHandler(handler)
    logging.getLogger("ftctl").setLevel(logging.INFO)
    spec = build(
        flags=dict(
            method="fft",
            model_name_or_path=str(model_dir),
            data_path=str(demo_data_path()),
            output_dir=str(work / f"run-{name}"),
            gpus="1xH200" if torch.cuda.is_available() else "cpu",  # cpu: a dry run of the script
            backend="local",
        ),
        overrides=["max_steps=4", "global_batch_size=8", "save_steps=100000", "logging_steps=1", "resume=never"],
    )
    plan = make_plan(spec)
    t = time.time()
    result = train(spec, plan)
    rows = [json.loads(line) for line in (work / f"run-{name}" / "metrics.jsonl").read_text().splitlines()]
    start = next(r for r in rows if r.get("event") == "start")
    return {
        "case": name,
        "trainer": True,
        "plan_attention": plan.attn_implementation,
        "packing": plan.packing,
        "ran": start.get("attn_implementation"),
        "said": [m for m in records if "cannot run" in m or "planned but" in m],
        "losses": [r["loss"] for r in rows if "loss" in r],
        "status": result.status,
        "wall_s": round(time.time() - t, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--trainer", action="store_true", help="train each case through ftctl's trainer instead")
    ap.add_argument("--work", default="/tmp/ftctl-attention-probe")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        try:
            row = trained(a.one.removesuffix("+trainer"), Path(a.work)) if a.one.endswith("+trainer") else one(a.one)
        except Exception as e:  # recorded: one case failing must not lose the others
            import traceback

            traceback.print_exc()
            row = {"case": a.one, "error": f"{type(e).__name__}: {str(e)[:400]}"}
        Path(a.out).write_text(json.dumps(row))
        return
    import torch

    rows = []
    names = a.cases.split(",")
    for name in [f"{n}+trainer" for n in names] if a.trainer else names:
        part = Path(f"{a.out}.{name}")
        subprocess.run([sys.executable, __file__, "--one", name, "--out", str(part), "--work", a.work], env=os.environ)
        rows.append(json.loads(part.read_text()) if part.exists() else {"case": name, "error": "crashed"})
        part.unlink(missing_ok=True)
        print(json.dumps(rows[-1]), flush=True)
    card = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    result = {"card": card, "torch": torch.__version__, "rows": rows}
    Path(a.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
