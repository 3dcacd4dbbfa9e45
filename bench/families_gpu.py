"""explore43's model-family fixes on a GPU (device machine, not CI).

1. Multi-head latent attention (DeepSeek-V3's shape of head: queries and keys 192 wide, values 128) through ftctl's
   varlen attention over torch's CUDA varlen kernel, against eager attention, in bf16: two rows unpadded, and the same
   two documents packed into one row (cu_seq_lens, as TRL's padding-free collator hands them); the largest logit
   difference, next-token agreement, and a backward's gradients finite.
2. `ftctl launch --backend local` lora runs of a random-initialised tiny DeepSeek-V3 (the plan's varlen) and gpt-oss
   (the plan's eager, for its sink logits): rc, the attention the trainer says, the losses logged.
3. --hybrid (explore47): a tiny random Qwen3.5 (Gated DeltaNet + attention layers) launched as the plan says (not
   packed) and with -o packing=true (refused where flash-linear-attention and causal-conv1d do not both import): rc,
   the packing the start record says, the losses, the refusal's line.

    python3 bench/families_gpu.py --out DIR [--steps 6] [--floor | --hybrid]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.gpu_train import make_data  # noqa: E402
from bench.merge_gpu import ftctl  # noqa: E402

DEEPSEEK = dict(
    model_type="deepseek_v3", hidden_size=1024, intermediate_size=2048, moe_intermediate_size=512,
    num_hidden_layers=3, first_k_dense_replace=1, num_attention_heads=8, num_key_value_heads=8,
    n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2, n_group=1, topk_group=1, q_lora_rank=384,
    kv_lora_rank=256, qk_rope_head_dim=64, qk_nope_head_dim=128, v_head_dim=128, max_position_embeddings=4096,
)  # fmt: skip
GPT_OSS = dict(
    model_type="gpt_oss", hidden_size=512, intermediate_size=512, num_hidden_layers=2, num_attention_heads=8,
    num_key_value_heads=2, head_dim=64, num_local_experts=4, num_experts_per_tok=2, sliding_window=128,
    layer_types=["sliding_attention", "full_attention"], max_position_embeddings=4096,
)  # fmt: skip


def build(fields: dict, root: Path) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from tests.tiny_fixtures import make_tiny_tokenizer

    fields = dict(fields)
    path = root / fields["model_type"]
    tokenizer = make_tiny_tokenizer()
    cfg = AutoConfig.for_model(
        fields.pop("model_type"), **fields, vocab_size=len(tokenizer), bos_token_id=None, eos_token_id=0, pad_token_id=0
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).to(torch.bfloat16)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def floor(model_dir: Path) -> dict:
    """The bf16 noise floor beside mla(): the same rows through SDPA and through eager in float32, against eager in
    bf16 (a random MoE's routing flips on bf16 noise alone, so the floor, not zero, is what varlen must match)."""
    import torch
    from transformers import AutoModelForCausalLM

    from ftctl.trainer.attention import TORCH_VARLEN, register_varlen

    register_varlen(TORCH_VARLEN)
    torch.manual_seed(1)
    out: dict = {}
    with torch.no_grad():
        ref_model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")
        ref_model = ref_model.cuda()
        ids = torch.randint(1, ref_model.config.vocab_size, (2, 212), device="cuda")
        ref = ref_model(ids).logits.float()
        del ref_model
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, attn_implementation="eager")
        model = model.cuda()
        for impl in ("eager", "sdpa", TORCH_VARLEN):
            model.set_attn_implementation(impl)
            got = model(ids).logits.float()
            out[f"{impl}_bf16_vs_eager_fp32"] = {
                "max_abs_logit_diff": float((got - ref).abs().max()),
                "mean_abs_logit_diff": float((got - ref).abs().mean()),
                "logit_scale": float(ref.abs().max()),
                "next_token_agreement": float((got.argmax(-1) == ref.argmax(-1)).float().mean()),
            }
    return out


def mla(model_dir: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from ftctl.trainer.attention import TORCH_VARLEN, register_varlen

    register_varlen(TORCH_VARLEN)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, attn_implementation="eager").cuda()
    vocab = model.config.vocab_size
    torch.manual_seed(1)
    a, b = torch.randint(1, vocab, (1, 300), device="cuda"), torch.randint(1, vocab, (1, 212), device="cuda")
    both = torch.cat([a[:, :212], b], 0)
    out: dict = {}
    with torch.no_grad():
        eager_rows = model(both).logits.float()
        eager_a, eager_b = model(a).logits.float(), model(b).logits.float()
        model.set_attn_implementation(TORCH_VARLEN)
        rows = model(both).logits.float()
        packed_ids = torch.cat([a, b], 1)
        pos = torch.cat([torch.arange(300), torch.arange(212)]).unsqueeze(0).cuda()
        cu = torch.tensor([0, 300, 512], dtype=torch.int32, device="cuda")
        packed = model(
            packed_ids, position_ids=pos, cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=300, max_length_k=300
        ).logits.float()
    eager_packed = torch.cat([eager_a, eager_b], 1)
    for name, got, ref in (("rows", rows, eager_rows), ("packed", packed, eager_packed)):
        out[name] = {
            "max_abs_logit_diff": float((got - ref).abs().max()),
            "logit_scale": float(ref.abs().max()),
            "next_token_agreement": float((got.argmax(-1) == ref.argmax(-1)).float().mean()),
        }
    model.train()
    loss = model(packed_ids, labels=packed_ids, position_ids=pos, cu_seq_lens_q=cu, cu_seq_lens_k=cu,
                 max_length_q=300, max_length_k=300).loss  # fmt: skip
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    out["backward"] = {"loss": float(loss), "grads": len(grads), "finite": all(bool(g.isfinite().all()) for g in grads)}
    return out


def launch(model_dir: Path, data: Path, out: Path, work: Path, steps: int, tier: str, *more: str) -> dict:
    name = model_dir.name + "".join(f"-{o.split('=')[0]}" for o in more)
    run = work / f"run-{name}"
    opts = [f"max_steps={steps}", "learning_rate=2e-4", "global_batch_size=8", "save_steps=1000", *more]
    case: dict = {}
    try:
        case["train_s"] = round(
            ftctl(
                "launch", "--backend", "local", "--gpus", f"1x{tier}", "--method", "lora", "--model", str(model_dir),
                "--data", str(data), "--output", str(run), *sum((["-o", o] for o in opts), []),
                log=out / f"train-{name}.log",
            ), 1,
        )  # fmt: skip
    except SystemExit as exc:
        case["error"] = str(exc)[-2500:]
        return case
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    case["losses"] = [r["loss"] for r in rows if "loss" in r and r.get("event") is None]
    case["start"] = next((r for r in rows if r.get("event") == "start"), {}).get("attention")
    case["plan_packing"] = json.loads((run / "spec.json").read_text())["plan"].get("packing")
    said = (out / f"train-{name}.log").read_text().splitlines()
    case["attention_line"] = [line for line in said if "attention" in line][:3]
    return case


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--work", default="/tmp/ftctl-families")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--floor", action="store_true", help="only the bf16 noise floor, MoE and dense DeepSeek-V3")
    ap.add_argument("--hybrid", action="store_true", help="only a tiny Qwen3.5 launched unpacked and packed")
    a = ap.parse_args()
    import torch
    import transformers

    out, work = Path(a.out), Path(a.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    card = torch.cuda.get_device_name(0)
    tier = "H200" if "H200" in card else "H100"
    result: dict = {"card": card, "torch": torch.__version__, "transformers": transformers.__version__}
    if a.floor:
        dense = build({**DEEPSEEK, "first_k_dense_replace": DEEPSEEK["num_hidden_layers"]}, work / "dense")
        for name, path in (("moe", build(DEEPSEEK, work)), ("dense", dense)):
            result[f"floor_{name}"] = floor(path)
            result[f"mla_{name}"] = mla(path)
        print(json.dumps(result, indent=1), flush=True)
        (out / "families_floor.json").write_text(json.dumps(result, indent=1))
        return
    if a.hybrid:
        from bench.hybrid_packing_gpu import TYPES, kernels_here

        result["kernels"] = kernels_here()
        qwen = build({"model_type": "qwen3_5_text", **TYPES["qwen3_5_text"], "max_position_embeddings": 4096}, work)
        data = make_data(work / "data.json", 120)
        for more in ((), ("packing=true",)):
            case = launch(qwen, data, out, work, a.steps, tier, *more)
            result["qwen3_5_text" + "".join(f" {o}" for o in more)] = case
            print(json.dumps(case, indent=1), flush=True)
        (out / "families_hybrid.json").write_text(json.dumps(result, indent=1))
        return
    deepseek, gpt_oss = build(DEEPSEEK, work), build(GPT_OSS, work)
    t = time.time()
    try:
        result["mla"] = mla(deepseek)
    except Exception as exc:  # noqa: BLE001 (a bench: the failure is the result)
        result["mla"] = {"error": repr(exc)[-2000:]}
    result["mla_s"] = round(time.time() - t, 1)
    print(json.dumps(result, indent=1), flush=True)
    torch.cuda.empty_cache()
    data = make_data(work / "data.json", 120)
    for model_dir in (deepseek, gpt_oss):
        result[model_dir.name] = launch(model_dir, data, out, work, a.steps, tier)
        print(json.dumps({model_dir.name: result[model_dir.name]}, indent=1), flush=True)
    (out / "families_gpu.json").write_text(json.dumps(result, indent=1))
    os.sync()


if __name__ == "__main__":
    main()
