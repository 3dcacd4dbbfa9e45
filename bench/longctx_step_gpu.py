"""Does the plan's step time hold for ftctl's whole trainer at long context? (run on the device machine, not in CI)

The plan predicts an optimizer step (plan.step_seconds: global batch x model_max_length tokens at plan.weights_mfu of the
GPUs' dense bf16 peak, each token's FLOPs 4 x params for lora plus attention's 6 x layers x q_width x
model_max_length, docs/plan.md "Step time"). One Llama-3-8B layer measured alone ran 1.4x slower than that at 32k
tokens and 1.7x at 128k (/work/notes/task-276-layer-h100.txt). This runs the whole trainer: for each length L, lora
on the Llama-3.2-1B shape (gpu_train's "1b" with Llama-3.2-1B's 131,072-token context, so no row is past its
positions), data of single conversations each just under L tokens with the bench's tiny tokenizer (one document a
row, packed or not), -o model_max_length=L and a global batch of TOKENS_PER_STEP / L rows (65,536 tokens a step:
32 rows at 2k, 4 at 16k, 2 at 32k), --steps optimizer steps (the first one a warm-up, not timed).

Each length runs in its own process (gpu_train.run_case, the same path as a real run: RunSpec -> make_plan(1xH100)
-> ftctl.trainer.run.train), so one length's GPU memory cannot count in another's peak. A row records:

    step_s          measured seconds an optimizer step (mean of steps 2..; step_s_each: every one, torch.cuda
                    synchronised at each step's end)
    plan_step_s     the plan's prediction for the same spec on 1x$BENCH_TIER (make_plan: plan.step_s)
    ratio           step_s / plan_step_s (> 1: the plan is optimistic)
    attn_share      attention's share of the plan's FLOPs at L (plan.flops_per_token)
    tflops, mfu     the plan's FLOPs (weights' and attention's) a measured second, and over the card's peak
    peak_alloc_gib  torch.cuda.max_memory_allocated; plan_peak_gib the plan's memory_gb in GiB
    attention       what the trainer ran (metrics.jsonl's start record), beside plan.attn_implementation
    tokens_per_step transformers' state.num_input_tokens_seen a step (its tokens without padding). Before 33e54e0
                    ftctl added it only at a log or a checkpoint, and a GPU's log is a step late: read at step N's
                    end it held steps 1..N-2's, so v110's mean over steps 2-6 had one 0 in 5 (0.8x the rows' tokens
                    at every length; ftctl's own log counted them all). Since then, in one process, rows_a_step x
                    the documents' doc_tokens_max, what a step trains

and, over all lengths, a least-squares fit step_s = tokens x (weights' FLOPs / W + attention's FLOPs / A): W and
A, the speeds (TFLOPS) weights' and attention's FLOPs ran at, against plan.weights_mfu and ATTENTION_MFU x peak (one fit a variant).

Variants (v112, helper 286): --cases VARIANT:L,... runs other methods and attentions than lora's varlen, each row
named by its variant, the same data and plan comparison:

    lora            lora, the plan's attention (varlen on an H100): v110's rows (--lengths L,... runs these)
    fft             full fine-tuning (the plan counts 6 x params a token for the weights, lora 4 x)
    lora_sdpa       lora, -o attn_implementation=sdpa: not packed (sdpa's default), rows padded to the micro-batch's
                    longest; every document L - 8 tokens, so no padding: transformers drops the mask (is_causal)
    lora_sdpa_pad   the same with documents of L - 8 - [0, JITTER) tokens: a micro-batch's rows differ, so padding,
                    and transformers hands sdpa a (row x row) mask
    lora_sdpa_pack  lora, sdpa, -o packing=true: TRL's padding-free rows (a micro-batch's documents in one row) under
                    transformers' block-diagonal mask

sft (v115, helper 304): the top trainable_layers blocks, the final norm and the head train, the rest is frozen
(ftctl/trainer/methods.py freeze_below_top_blocks). Llama-3.2-1B ties its head to the embeddings, so its embedding
matrix trains too: its gradient needs the backward through every block, frozen or not (input gradients only).

    sft             sft, trainable_layers 2 (the default), the tied 1b128k shape
    sft8            the same with -o trainable_layers=8
    sft_untied      sft, trainable_layers 2, on 1b128k with its own (untied) embedding matrix: 1.50B parameters, the
                    backward can stop at the lowest trainable block

qlora (v117): the plan counts qlora's step as lora's (4 x params a token at the adapters' speed) though bitsandbytes dequantizes
every 4-bit weight in the forward and again in the backward; never measured against the plan in the trainer.

    qlora           qlora on the 1b128k shape (bitsandbytes NF4, the plan's micro-batch)
    qlora8b, lora8b qlora and lora on gpu_train's 8b shape (Llama-3-8B's; 8,192 positions: lengths up to 8k)
    lora3b, fft3b   lora and fft on gpu_train's 3b shape (Llama-3.2-3B's): the weights' speed between 1B and 8B

Every row also says what the blocks did in the first micro-batch's forward (a hook on each decoder block, installed
after the method is applied): blocks_trainable, blocks_input_grad (whose input needs a gradient: the backward runs
through them), embedding_trains, and the bytes autograd saved a block for the backward (saved_mib_trainable_block,
saved_mib_frozen_block; a frozen block's bf16 weight copies apart, weight_copies_mib_frozen_block). The saved bytes
are not read under gradient checkpointing (the hook would take checkpoint's place).

    python3 bench/longctx_step_gpu.py --out DIR [--lengths 2048,16384,32768] [--steps 6]
    python3 bench/longctx_step_gpu.py --out DIR --cases lora:2048,fft:2048,lora_sdpa:16384 [--steps 6]
    python3 bench/longctx_step_gpu.py --out DIR --cases fft:2048,sft:2048,sft:16384,sft_untied:2048 [--steps 6]
    BENCH_CPU=1 python bench/longctx_step_gpu.py --out DIR   (here: the tests' tiny model at 64-256 tokens, on CPU,
                    with the shape's 16 blocks and tied or untied embeddings;
                    the prediction is still the H100 plan's, so the ratio means nothing: it checks the script)

Writes DIR/longctx_step.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import gpu_train  # noqa: E402

CPU = os.environ.get("BENCH_CPU") == "1"
TIER = os.environ.get("BENCH_TIER", "H100")
TOKENS_PER_STEP = 1024 if CPU else 65536
LENGTHS = (64, 128, 256) if CPU else (2048, 16384, 32768)
MARGIN = 8  # a document is this many tokens under L: nothing cut, one document a row
CASE = "lora1b"
JITTER = 64  # lora_sdpa_pad: documents this many tokens shorter at most, so a micro-batch's rows differ
# variant -> (gpu_train case, overrides, jitter)
VARIANTS = {
    "lora": (CASE, [], 0),
    "fft": ("fft1b128k", [], 0),
    "lora_sdpa": (CASE, ["attn_implementation=sdpa"], 0),
    "lora_sdpa_pad": (CASE, ["attn_implementation=sdpa"], JITTER),
    "lora_sdpa_pack": (CASE, ["attn_implementation=sdpa", "packing=true"], 0),
    "sft": ("sft1b128k", [], 0),
    "sft8": ("sft1b128k", ["trainable_layers=8"], 0),
    "sft_untied": ("sft1b128kuntied", [], 0),
    "qlora": ("qlora1b128k", [], 0),
    "qlora8b": ("qlora8b", [], 0),
    "lora8b": ("lora8b", [], 0),
    "lora3b": ("lora3b", [], 0),
    "fft3b": ("fft3b", [], 0),
}
# Llama-3.2-1B's own context (131,072 with its llama3 RoPE scaling): 32k rows are inside it, as in a real run
gpu_train.SHAPES["1b128k"] = dict(gpu_train.SHAPES["1b"], max_position_embeddings=131072)
gpu_train.CASES[CASE] = ("lora", "1b128k")
gpu_train.CASES["fft1b128k"] = ("fft", "1b128k")
gpu_train.SHAPES["1b128kuntied"] = dict(gpu_train.SHAPES["1b128k"], tie_word_embeddings=False)
gpu_train.CASES["sft1b128k"] = ("sft", "1b128k")
gpu_train.CASES["sft1b128kuntied"] = ("sft", "1b128kuntied")
gpu_train.CASES["qlora1b128k"] = ("qlora", "1b128k")
gpu_train.CASES["lora3b"] = ("lora", "3b")
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0}


# ------------------------------------------------------------------------------------------ data
def make_docs(path: Path, tokenizer, length: int, rows: int, jitter: int = 0) -> dict:
    """``rows`` ShareGPT conversations of length - MARGIN tokens each (chat template included; ``jitter``: each a
    random 0 to jitter - 1 tokens shorter), words of gpu_train.make_data's vocabulary. Byte-level BPE splits at
    words, so a conversation's tokens are the template's plus each word's own: sized exactly, then checked."""
    words = "the of model data train token layer batch memory value ship code answer night river".split()
    cost = {w: len(tokenizer(" " + w, add_special_tokens=False)["input_ids"]) for w in words}

    def count(q: str, a: str) -> int:
        msgs = [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        ids = tokenizer.apply_chat_template(msgs, tokenize=True, return_dict=True)["input_ids"]
        return len(ids)

    rng = random.Random(length)
    out, sizes = [], []
    for i in range(rows):
        target = length - MARGIN - (rng.randrange(jitter) if jitter else 0)
        q = f"question {i}: " + " ".join(rng.choice(words) for _ in range(8))
        first = rng.choice(words)
        base = count(q, first)
        a, n = [first], base
        while n < target:
            w = rng.choice([w for w in words if n + cost[w] <= target] or [None])
            if w is None:
                break
            a.append(w)
            n += cost[w]
        text = " ".join(a)
        sizes.append(count(q, text))
        conv = [{"from": "human", "value": q}, {"from": "gpt", "value": text}]
        out.append({"id": f"{length}-{i}", "conversations": conv})
    path.write_text(json.dumps(out))
    return {"doc_tokens_min": min(sizes), "doc_tokens_max": max(sizes)}


# ------------------------------------------------------------------------------------------ one length
def one(variant: str, length: int, steps: int, work: Path, out: Path, more: list[str] = ()) -> None:
    """One length in this process: gpu_train.run_case with a clock at every step's end, the plan's prediction."""
    import torch
    from transformers import AutoTokenizer, TrainerCallback

    import ftctl.spec
    import ftctl.trainer.methods
    import ftctl.trainer.run
    from ftctl.plan import flops_per_token, make_plan, step_seconds, weights_mfu

    if CPU:  # run_case's clock and peaks are CUDA's; its spec is 1xH100's: here the same run on CPU
        torch.cuda.synchronize = lambda *a, **k: None
        torch.cuda.reset_peak_memory_stats = lambda *a, **k: None
        torch.cuda.max_memory_allocated = torch.cuda.max_memory_reserved = lambda *a, **k: 0
    case, extra, jitter = VARIANTS[variant]
    extra = [*extra, *more]
    rows = TOKENS_PER_STEP // length
    model_dir = model_path(work, gpu_train.CASES[case][1])
    data = work / f"docs-{length}-{jitter}.json"
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    docs = make_docs(data, tokenizer, length, rows * (steps + 1), jitter)  # a step to spare: no short step at an end

    real_build, seen = ftctl.spec.build, {}

    def build(flags, overrides, **kw):  # run_case's spec; on CPU run it on CPU
        seen["flags"], seen["overrides"] = dict(flags), list(overrides)
        return real_build(flags={**flags, "gpus": "cpu"} if CPU else flags, overrides=overrides, **kw)

    class Clock(TrainerCallback):
        t: list[float] = []
        tokens: list[int] = []

        def on_step_end(self, args, state, control, **kw):
            torch.cuda.synchronize()
            self.t.append(time.time())
            self.tokens.append(state.num_input_tokens_seen)

    real_train, clock = ftctl.trainer.run.train, Clock()

    def train(spec, plan, callbacks=(), echo=print):
        seen["plan"] = plan
        return real_train(spec, plan, callbacks=[*callbacks, clock], echo=echo)

    ftctl.spec.build, ftctl.trainer.run.train = build, train
    real_apply, blocks = ftctl.trainer.methods.apply_method, {}

    def apply_method(model, spec, plan, *a, **kw):  # the trained model's blocks, probed in their first forward
        model = real_apply(model, spec, plan, *a, **kw)
        probe_blocks(model, blocks, saved=not plan.gradient_checkpointing)
        return model

    ftctl.trainer.methods.apply_method = apply_method  # run.train imports it when it runs
    sdpa_calls: dict[str, int] = {}  # what transformers hands torch's sdpa: a mask (its shape) or is_causal
    real_sdpa = torch.nn.functional.scaled_dot_product_attention

    def sdpa(q, k, v, attn_mask=None, *args, **kw):
        what = f"mask {tuple(attn_mask.shape)} {attn_mask.dtype}" if attn_mask is not None else "no mask"
        key = f"q {tuple(q.shape)}, {what}, is_causal={kw.get('is_causal', False)}"
        sdpa_calls[key] = sdpa_calls.get(key, 0) + 1
        return real_sdpa(q, k, v, attn_mask, *args, **kw)

    torch.nn.functional.scaled_dot_product_attention = sdpa
    overrides = [f"model_max_length={length}", f"global_batch_size={rows}", "seed=7", "warmup_ratio=0.0", *extra]
    name = "+".join([case, *overrides])
    t0 = time.time()
    row: dict = {
        "variant": "+".join([variant, *more]),
        "method": gpu_train.CASES[case][0],
        "L": length,
        "rows_a_step": rows,
        **docs,
    }
    try:
        runs = work / "+".join([variant, *more])  # lora_sdpa and lora_sdpa_pad: the same overrides, not one folder
        case = gpu_train.run_case(name, model_dir, data, steps, runs, checkpoint=False)
    except Exception as e:  # the row says why; the other lengths still run
        import traceback

        traceback.print_exc()
        out.write_text(json.dumps({**row, "error": f"{type(e).__name__}: {str(e)[:500]}"}))
        return
    ftctl.spec.build, ftctl.trainer.run.train = real_build, real_train
    ftctl.trainer.methods.apply_method = real_apply
    # the prediction: the same spec on 1x<tier> (on a GPU the trainer's own plan; on CPU it has none)
    spec = real_build(flags={**seen["flags"], "gpus": f"1x{TIER}"}, overrides=seen["overrides"])
    plan = make_plan(spec)
    weights, attention = flops_per_token(plan, length)
    predicted = step_seconds(plan, length)  # plan.step_s unrounded (it keeps 3 decimals)
    each = [round(b - a, 4) for a, b in zip(clock.t, clock.t[1:])]  # steps 2.. (step 1: the warm-up)
    step_tokens = [b - a for a, b in zip(clock.tokens, clock.tokens[1:])]
    step_s = sum(each) / len(each) if each else None
    tokens = sum(step_tokens) / len(step_tokens) if step_tokens else rows * length
    start = {}
    metrics = runs / name / "metrics.jsonl"
    if metrics.exists():
        recs = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
        start = next((r for r in recs if r.get("event") == "start"), {})
    card = "cpu" if CPU else torch.cuda.get_device_name(0)
    peak = next((v for k, v in PEAK_TFLOPS.items() if k in card), None)
    ran = seen["plan"]
    flops = rows * length * (weights + attention)  # the plan's FLOPs a step (every document L long)
    row |= {
        "card": card,
        "steps": case["steps"],
        "step_s": round(step_s, 4) if step_s else None,
        "step_s_each": each,
        "step_s_median": sorted(each)[len(each) // 2] if each else None,
        "plan_step_s": float(f"{predicted:.4g}") if predicted else None,
        "ratio": round(step_s / predicted, 3) if step_s and predicted else None,
        "attn_share": round(attention / (weights + attention), 3),
        "weights_flops_a_token": weights,
        "attention_flops_a_token": attention,
        "tokens_per_step": tokens,
        "tflops": round(flops / step_s / 1e12, 1) if step_s else None,
        "mfu": round(flops / step_s / (peak * 1e12), 3) if step_s and peak else None,
        "plan_mfu": weights_mfu(plan),
        "peak_alloc_gib": case["peak_alloc_gib"],
        "peak_reserved_gib": case["peak_reserved_gib"],
        "plan_peak_gib": round(plan.memory_gb * 1e9 / 2**30, 2),
        "plan_attn": plan.attn_implementation,
        "trainer_attn_plan": ran.attn_implementation,
        "attention": start.get("attention", start) if start else None,
        "packing": plan.packing,
        "micro_batch": plan.per_device_train_batch_size,
        "accumulation": plan.gradient_accumulation_steps,
        "gradient_checkpointing": plan.gradient_checkpointing,
        "final_loss": case["final_loss"],
        "sdpa_calls": dict(sorted(sdpa_calls.items(), key=lambda kv: -kv[1])[:6]),
        **blocks,
        "wall_s": round(time.time() - t0, 1),
    }
    out.write_text(json.dumps(row, indent=1))


def model_path(work: Path, shape: str) -> Path:
    if CPU:  # the tests' tiny model (its 512 positions hold the CPU lengths) with the shape's 16 blocks and tying
        return tiny_model(work, gpu_train.SHAPES[shape])
    return gpu_train.make_model(shape, work)


def tiny_model(work: Path, fields: dict) -> Path:
    """The tests' tiny Llama (tests/tiny_fixtures.py) with ``fields``' number of blocks and tie_word_embeddings."""
    from transformers import LlamaForCausalLM

    from tests.tiny_fixtures import make_tiny_model, make_tiny_tokenizer

    layers, tied = fields["num_hidden_layers"], fields.get("tie_word_embeddings", False)
    path = work / f"llama-tiny-{layers}-{'tied' if tied else 'untied'}"
    if (path / "config.json").exists():
        return path
    tokenizer = make_tiny_tokenizer()
    config = make_tiny_model(tokenizer).config
    config.num_hidden_layers, config.tie_word_embeddings = layers, tied
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def probe_blocks(model, out: dict, saved: bool = True) -> None:
    """Hooks on each decoder block of ``model`` (after the method's freezing) that fill ``out`` in the first forward
    in training with gradients on: how many blocks train, how many get an input that needs a gradient (the backward
    runs through those, whether their weights train or not), whether the embedding matrix trains (tied to the head:
    then every block's input needs one), and with ``saved`` the MiB autograd saved for the backward a block (a
    parameter's own storage not counted; a frozen block's bf16 weight copies apart)."""
    import torch

    from ftctl.trainer.methods import transformer_blocks

    _, layers = transformer_blocks(model)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: list[dict] = []
    state = {"on": True, "ctx": None}

    def pre(block, args, kwargs):
        if not (state["on"] and block.training and torch.is_grad_enabled()):
            return
        hidden = args[0] if args else kwargs.get("hidden_states")
        trains = any(p.requires_grad for p in block.parameters())
        shapes = {tuple(p.shape) for p in block.parameters()} | {tuple(p.shape)[::-1] for p in block.parameters()}
        rec = {"trains": trains, "input_grad": bool(getattr(hidden, "requires_grad", False)), "act": {}, "w": {}}
        seen.append(rec)
        if saved:

            def pack(t):
                try:
                    key = t.untyped_storage().data_ptr()
                    if key not in params:
                        kind = "w" if t.dim() == 2 and tuple(t.shape) in shapes else "act"
                        rec[kind][key] = t.untyped_storage().nbytes()
                except Exception as e:  # a tensor without a storage: counted nowhere, the run goes on
                    out["probe_error"] = f"{type(e).__name__}: {e}"[:200]
                return t

            state["ctx"] = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
            state["ctx"].__enter__()

    def post(block, args, kwargs, output):
        if state["ctx"] is not None:
            state["ctx"].__exit__(None, None, None)
            state["ctx"] = None
        if len(seen) == len(layers) and state["on"]:
            state["on"] = False
            summarise()

    def mib(recs, kind):
        return round(sum(sum(r[kind].values()) for r in recs) / len(recs) / 2**20, 2) if recs else None

    def summarise():
        trainable = [r for r in seen if r["trains"]]
        frozen = [r for r in seen if not r["trains"]]
        out["blocks"] = len(seen)
        out["blocks_trainable"] = len(trainable)
        out["blocks_input_grad"] = sum(r["input_grad"] for r in seen)
        out["embedding_trains"] = model.get_input_embeddings().weight.requires_grad
        if saved:
            out["saved_mib_trainable_block"] = mib(trainable, "act")
            out["saved_mib_frozen_block"] = mib(frozen, "act")
            out["weight_copies_mib_trainable_block"] = mib(trainable, "w")
            out["weight_copies_mib_frozen_block"] = mib(frozen, "w")

    for block in layers:
        block.register_forward_pre_hook(pre, with_kwargs=True)
        block.register_forward_hook(post, with_kwargs=True)


# ------------------------------------------------------------------------------------------ all lengths
def fit(rows: list[dict]) -> dict | None:
    """step_s = tokens x (w / W + a / A) by least squares over the lengths: W and A (TFLOPS), the speeds weights'
    and attention's FLOPs (the plan's count) ran at, each over the card's peak (the plan's MFU, ATTENTION_MFU)."""
    ok = [r for r in rows if r.get("step_s")]
    if len({r["L"] for r in ok}) < 2:
        return None
    if len(ok) < 2:
        return None
    # x1 = tokens x w, x2 = tokens x a; step_s = x1 u + x2 v, u = 1/W, v = 1/A
    s11 = s12 = s22 = b1 = b2 = 0.0
    for r in ok:
        n = r["rows_a_step"] * r["L"]
        x1, x2, y = n * r["weights_flops_a_token"], n * r["attention_flops_a_token"], r["step_s"]
        s11, s12, s22, b1, b2 = s11 + x1 * x1, s12 + x1 * x2, s22 + x2 * x2, b1 + x1 * y, b2 + x2 * y
    det = s11 * s22 - s12 * s12
    if not det:
        return None
    u, v = (b1 * s22 - b2 * s12) / det, (s11 * b2 - s12 * b1) / det
    peak = next((p for k, p in PEAK_TFLOPS.items() if k in ok[0]["card"]), None)
    res = {"weights_tflops": round(1 / u / 1e12, 1) if u > 0 else None}
    res["attention_tflops"] = round(1 / v / 1e12, 1) if v > 0 else None
    if peak:
        res["weights_mfu"] = round(1 / u / 1e12 / peak, 3) if u > 0 else None
        res["attention_mfu"] = round(1 / v / 1e12 / peak, 3) if v > 0 else None
    return res


COLUMNS = ["variant", "L", "rows_a_step", "step_s", "plan_step_s", "ratio", "attn_share", "tflops", "mfu"]
COLUMNS += ["peak_alloc_gib", "plan_peak_gib", "plan_attn", "packing", "micro_batch", "accumulation"]
COLUMNS += ["gradient_checkpointing", "doc_tokens_min", "doc_tokens_max"]
COLUMNS += ["blocks_trainable", "blocks_input_grad", "saved_mib_trainable_block", "saved_mib_frozen_block"]


def table(result: dict) -> str:
    lines = [f"# 1b128k shape, {result['card']}, torch {result['torch']}, {TOKENS_PER_STEP:,} tokens a step", ""]
    lines += ["| " + " | ".join(COLUMNS) + " | attention | error |", "|" + "---|" * (len(COLUMNS) + 2)]
    for r in result["rows"]:
        attn = json.dumps(r.get("attention"))[:80].replace("|", "/")
        err = r.get("error", "")[-160:].replace("\n", " ").replace("|", "/")
        lines.append("| " + " | ".join(str(r.get(c, "")) for c in COLUMNS) + f" | {attn} | {err} |")
    lines += ["", f"fit (a variant's lengths): {json.dumps(result.get('fit'))}"]
    return "\n".join(lines)


def parse_cases(text: str) -> list[tuple[str, int, list[str]]]:
    """ "lora:2048,fft:16384+per_device_train_batch_size=2" -> [("lora", 2048, []), ("fft", 16384,
    ["per_device_train_batch_size=2"])] (-o overrides after +); ValueError naming what is wrong."""
    cases = []
    for item in filter(None, (x.strip() for x in text.split(","))):
        head, *more = item.split("+")
        if any("=" not in m for m in more):
            raise ValueError(f"--cases: {item!r}: what follows + is an override, KEY=VALUE")
        variant, _, length = head.partition(":")
        if variant not in VARIANTS:
            raise ValueError(f"--cases: unknown variant {variant!r} in {item!r}: one of {', '.join(VARIANTS)}")
        if not length.isdigit() or int(length) <= MARGIN + JITTER:
            raise ValueError(
                f"--cases: {item!r} needs a length over {MARGIN + JITTER} tokens: VARIANT:L, e.g. fft:2048"
            )
        cases.append((variant, int(length), more))
    if not cases:
        raise ValueError("--cases: no case given: VARIANT:L,..., e.g. lora:2048,fft:2048")
    return cases


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--lengths", default=",".join(map(str, LENGTHS)), help="lora (varlen) rows at these lengths")
    ap.add_argument("--cases", help="VARIANT:L,... (variants: " + ", ".join(VARIANTS) + "); replaces --lengths")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--work", default="/tmp/ftctl-longctx-cpu" if CPU else "/tmp/ftctl-longctx")
    ap.add_argument("--case-timeout-s", type=float, default=60 if CPU else 150)
    ap.add_argument("--budget-s", type=float, default=400, help="no length runs past this many seconds in all")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--variant", default="lora", help=argparse.SUPPRESS)
    ap.add_argument("--more", action="append", default=[], help=argparse.SUPPRESS)
    ap.add_argument("--one-out", help=argparse.SUPPRESS)
    a = ap.parse_args()
    try:
        cases = parse_cases(a.cases) if a.cases else [("lora", int(x), []) for x in a.lengths.split(",")]
    except ValueError as e:
        ap.error(str(e))
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    if a.one:
        return one(a.variant, a.one, a.steps, work, Path(a.one_out), a.more)
    import torch

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"card": "cpu (BENCH_CPU=1 dry run)" if CPU else torch.cuda.get_device_name(0), "tier": TIER}
    result |= {"torch": torch.__version__, "steps": a.steps, "tokens_per_step": TOKENS_PER_STEP, "rows": []}
    for mod in ("transformers", "trl", "peft", "accelerate", "kernels", "flash_attn"):
        try:
            result[mod] = __import__(mod).__version__
        except Exception as e:
            result[mod] = f"missing: {type(e).__name__}"
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}), flush=True)
    t0 = t = time.time()
    for shape in dict.fromkeys(gpu_train.CASES[VARIANTS[v][0]][1] for v, _, _ in cases):
        model_path(work, shape)  # each case's shape built once, before the cases' clocks
    result["model_build_s"] = round(time.time() - t, 1)
    logs = out / "logs.txt"  # every case's log's end in one file (a device call brings back 8 files at most)
    logs.write_text("")
    for variant, length, more in cases:
        name = "+".join([variant, *more])
        one_out = work / f"row-{name}-{length}.json"
        one_out.unlink(missing_ok=True)
        cmd = [sys.executable, __file__, "--out", a.out, "--one", str(length), "--one-out", str(one_out)]
        cmd += ["--variant", variant, "--steps", str(a.steps), "--work", str(work)]
        cmd += [f"--more={m}" for m in more]
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
        env.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")  # what every ftctl run has
        print(f"--- {name} L={length}", flush=True)
        log = work / f"{name}-L{length}.log"
        try:
            with log.open("w") as f:
                left = min(a.case_timeout_s, a.budget_s - (time.time() - t0))
                rc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=max(1.0, left))
            rc = rc.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
        text = log.read_text(errors="replace")
        with logs.open("a") as f:
            f.write(f"=== {name} L={length} rc={rc}\n{text[-6000:]}\n")
        if one_out.exists():
            row = json.loads(one_out.read_text())
        else:
            row = {"variant": name, "L": length, "error": f"exit {rc}: {text[-1500:]}"}
        result["rows"].append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "attention"}), flush=True)
        fits = {
            v: fit([r for r in result["rows"] if r.get("variant") == v]) for v in {r["variant"] for r in result["rows"]}
        }
        result["fit"] = {v: f for v, f in fits.items() if f}
        (out / "longctx_step.json").write_text(json.dumps(result, indent=1))
    print(table(result), flush=True)


if __name__ == "__main__":
    main()
