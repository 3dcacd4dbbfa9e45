"""The plan's leftovers of the first-contact review (explore60 #4, #5, #8) and helpers 275/276 (helper 279): a learning
rate of the other kind of fine-tune noted, lora's settings in the plan, a paged optimizer shown as it runs on CPU, the
step time's attention term for sliding-window and linear-attention layers and an MoE's FLOPs at its active weights,
and a hub model sized at its model_revision.

Real parts throughout: `ftctl plan` through click, the planner on known shapes and on config.json files written by
transformers' own config classes, and a Hugging Face cache on disk (no network: HF_ENDPOINT refuses at once)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import pytest
from click.testing import CliRunner

from ftctl import hub
from ftctl.cli import main
from ftctl.plan import (
    ADAPTER_MFU,
    ATTENTION_MFU,
    attention_flops,
    flops_per_token,
    make_plan,
    micro_batch_seconds,
    model_shape,
)
from ftctl.spec import build
from ftctl.trainer.model_card import training

LLAMA_8B = "meta-llama/Llama-3.1-8B"


def _plan(*args: str) -> str:
    r = CliRunner().invoke(main, ["plan", *args])
    assert r.exit_code == 0, r.output
    return r.output


def _notes(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("note: learning_rate")]


# ------------------------------------------------------------------------------------------ 1. the rate's kind
def test_a_lora_rate_carried_over_to_full_fine_tuning_is_noted():
    out = _plan("--model", LLAMA_8B, "--method", "fft", "--gpus", "8xH100", "-o", "learning_rate=2e-4")
    assert _notes(out) == [
        "note: learning_rate=2e-4 is a LoRA rate, and fft updates every weight at it: it risks a diverged run (loss "
        "spikes, nan) or a model that forgets what it knew; full fine-tunes train at 1e-5 to 2e-5 (FastChat's and "
        "TRL's recipes; leave learning_rate unset for ftctl's 2e-5)"
    ]
    sft = _plan("--model", LLAMA_8B, "--method", "sft", "--gpus", "1xH100", "-o", "learning_rate=3e-4")
    assert "sft updates its top layers' weights at it" in _notes(sft)[0]


@pytest.mark.parametrize(
    "method, rate",
    [("fft", None), ("fft", "1e-4"), ("sft", "2e-5"), ("lora", None), ("lora", "2e-5"), ("qlora", "1e-5")],
)
def test_usual_rates_plan_without_a_note(method, rate):
    """ftctl's defaults, the full fine-tune's edge (1e-4) and FastChat's train_lora.sh's 2e-5 for adapters."""
    args = ["-o", f"learning_rate={rate}"] if rate else []
    assert _notes(_plan("--model", LLAMA_8B, "--method", method, "--gpus", "8xH100", *args)) == []


def test_a_full_fine_tunes_rate_for_adapters_far_below_lora_is_noted():
    out = _plan("--model", LLAMA_8B, "--method", "lora", "--gpus", "1xH100", "-o", "learning_rate=2e-6")
    assert _notes(out) == [
        "note: learning_rate=2e-6 is low for lora: its adapters start at zero and learn little at it (a full "
        "fine-tune's rate is 1e-5 to 2e-5); LoRA trains at 1e-4 to 2e-4 (leave learning_rate unset for ftctl's 2e-4)"
    ]


# ------------------------------------------------------------------------------------------ 2. lora's settings
def test_the_plan_of_an_adapter_names_its_rank_alpha_dropout_and_modules():
    out = _plan(
        *("--model", LLAMA_8B, "--method", "qlora", "--gpus", "1xL4"),
        *("-o", "lora_r=8", "-o", "lora_alpha=16", "-o", "lora_dropout=0.1", "-o", "lora_target_modules=q_proj,v_proj"),
        *("-o", "use_rslora=true"),
    )
    rows = out.splitlines()
    assert rows[:2] == [
        "method         qlora",
        "lora           rank 8, alpha 16, dropout 0.1; rsLoRA; adapts q_proj,v_proj",
    ]
    default = _plan("--model", LLAMA_8B, "--method", "lora", "--gpus", "1xH100").splitlines()[1]
    assert default == "lora           rank 16, alpha 32, dropout 0.05; adapts all-linear"
    peft = _plan("--model", LLAMA_8B, "--gpus", "1xH100", "-o", "lora_target_modules=peft-default")
    assert "adapts peft-default, PEFT's for the model's type (a note names them)" in peft
    assert "note: lora_target_modules q_proj,v_proj: PEFT's for Llama-shaped models" in peft
    assert "\nlora " not in _plan("--model", LLAMA_8B, "--method", "fft", "--gpus", "8xH100")


def test_the_model_cards_lora_row_says_the_same():
    spec = {"method": "lora", "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.1, "use_dora": True}
    assert "- LoRA: rank 8, alpha 16, dropout 0.1; DoRA\n" in training(spec, None, versions=False)


# ------------------------------------------------------------------------------------------ 3. paged on CPU
def test_a_paged_optimizer_on_cpu_is_shown_as_what_runs():
    out = _plan(
        *("--model", "HuggingFaceTB/SmolLM2-135M-Instruct", "--method", "qlora", "--gpus", "cpu"),
        *("-o", "optim=paged_adamw_8bit"),
    )
    optimizer = next(line for line in out.splitlines() if line.startswith("optimizer"))
    assert optimizer.startswith(
        "optimizer      adamw_8bit (optim=paged_adamw_8bit: bitsandbytes pages on GPUs only), lr 0.0002"
    )
    assert "paged optimizers fall back" not in out
    assert "note: qlora on CPU: bitsandbytes' 4-bit weights run here" in out
    spec = build({"method": "qlora", "gpus": "cpu", "model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct"})
    assert make_plan(replace(spec, optim="paged_adamw_8bit")).optim == "paged_adamw_8bit"  # TRL's optim: as asked
    gpu = _plan("--model", LLAMA_8B, "--method", "qlora", "--gpus", "1xL4", "-o", "optim=paged_adamw_8bit")
    assert "optimizer      paged_adamw_8bit, lr" in gpu


# ------------------------------------------------------------------------------------------ 4. attention's FLOPs
def _config_dir(tmp_path, kind: str, drop_layer_types: bool = False, **values):
    from transformers import CONFIG_MAPPING

    cfg = CONFIG_MAPPING[kind](**values).to_dict()
    if drop_layer_types:  # as an older Gemma 2's config.json leaves them to its config class
        cfg.pop("layer_types", None)
    d = tmp_path / kind
    d.mkdir()
    (d / "config.json").write_text(json.dumps(cfg))
    return str(d)


def _spec(model: str, method: str = "lora", seq: int = 32768, gpus: str = "1xH100", **values):
    return build({"method": method, "gpus": gpus, "model_name_or_path": model, "model_max_length": seq, **values})


def test_sliding_window_layers_attend_within_their_window():
    spec = _spec("mistralai/Mistral-7B-v0.1")
    plan = make_plan(spec)
    m = plan.model
    assert (m.window, m.window_layers, plan.attn_implementation) == (4096, 32, "varlen")
    seq, w = 32768, 4096
    assert attention_flops(plan, seq) == pytest.approx(12 * 32 * m.q_width * (w - w * w / (2 * seq)))
    full = replace(plan, model=replace(m, window=0, window_layers=0))
    assert attention_flops(full, seq) == 6 * 32 * m.q_width * seq  # what it counted before: 4.6x this
    assert attention_flops(plan, 2048) == attention_flops(full, 2048)  # rows within the window: full causal
    assert plan.step_s < make_plan(replace(spec, model_params="7.24b")).step_s
    assert (
        "attention is 16% of the FLOPs (32 of 32 layers within their 4,096-token window), counted at 32,768-token"
        in (plan.table(spec))
    )


def test_gemma2s_local_layers_from_its_config_class(tmp_path):
    """A config.json without layer_types: Gemma2Config's alternate, local first."""
    model = _config_dir(tmp_path, "gemma2", drop_layer_types=True, num_hidden_layers=26, sliding_window=4096)
    m = model_shape(model)
    assert (m.window, m.window_layers, m.linear_layers) == (4096, 13, 0)
    plan = make_plan(_spec(model, seq=8192, attn_implementation="sdpa", packing=False))
    assert attention_flops(plan, 8192) == 6 * 26 * m.q_width * 8192  # sdpa's masked window: every block, as before
    varlen = make_plan(_spec(model, seq=8192))
    assert attention_flops(varlen, 8192) == pytest.approx(12 * m.q_width * (13 * 4096 + 13 * (4096 - 4096 / 4)))


def test_linear_attention_layers_have_no_attention_term_and_an_moe_counts_its_active_weights(tmp_path):
    model = _config_dir(tmp_path, "qwen3_next")  # Qwen3-Next-80B-A3B's shape: 3 Gated DeltaNet layers to 1 attention
    spec = _spec(model, seq=8192, gpus="8xH100")
    plan = make_plan(spec)
    m = plan.model
    assert (m.layers, m.linear_layers, m.window_layers) == (48, 36, 0)
    assert attention_flops(plan, 8192) == 6 * 12 * m.q_width * 8192  # 12 of 48 layers: a quarter of before
    assert "of the FLOPs (12 of 48 layers attend, 36 are linear attention), counted at 8,192-token rows" in plan.table(
        spec
    )
    assert m.params_b == pytest.approx(79.0, abs=0.1)  # memory: every expert
    assert m.active_params_b == pytest.approx(3.24, abs=0.01)  # FLOPs: 10 of 512 experts and the shared one
    weights, attention = flops_per_token(plan, 8192)
    recomputed = 2 * (m.active_params_b - 2 * m.vocab * m.hidden / 1e9) if plan.gradient_checkpointing else 0.0
    assert weights == pytest.approx((4 * m.active_params_b + recomputed) * 1e9)  # blocks' forward again under it
    from ftctl import gpus

    # the weights' FLOPs at the adapters' speed for its width (hidden 2,048: the narrowest measured), attention's at
    # its own (measured lower: bench/NOTES.md v110); each micro-batch's passes of the trained weights beside
    speed = dict(ADAPTER_MFU)[2048]
    rate = 8 * gpus.TIERS[plan.tier].peak_tflops * 1e12 / (weights / speed + attention / ATTENTION_MFU)
    passes = plan.gradient_accumulation_steps * micro_batch_seconds(plan)
    assert plan.step_s == pytest.approx(plan.global_batch_size * 8192 / rate + passes, rel=1e-3)


def test_a_dense_model_keeps_its_count():
    m = model_shape(LLAMA_8B)
    assert (m.active_params_b, m.window_layers, m.linear_layers) == (m.params_b, 0, 0)


# ------------------------------------------------------------------------------------------ 5. model_revision
ONE = hashlib.sha1(b"279 one layer").hexdigest()
TWO = hashlib.sha1(b"279 two layers").hexdigest()
REPO = "org-279/tiny"


@pytest.fixture
def two_commits(tmp_path, monkeypatch):
    """REPO in a Hugging Face cache of this test's own at two commits, main at the 2-layer one; no Hub."""
    from huggingface_hub import constants
    from transformers import LlamaConfig

    cache = tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    root = cache / f"models--{REPO.replace('/', '--')}"
    for sha, layers in ((ONE, 1), (TWO, 2)):
        cfg = LlamaConfig(
            vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=layers, num_attention_heads=2
        ).to_dict()
        data = json.dumps(cfg).encode()
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = root / "snapshots" / sha / "config.json"
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(f"../../blobs/{blob.name}")
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(TWO)
    hub.model_config.cache_clear()
    yield
    hub.model_config.cache_clear()


def test_a_hub_model_is_sized_at_its_model_revision(two_commits):
    spec = build({"method": "lora", "gpus": "cpu", "model_name_or_path": REPO})
    assert make_plan(spec).model.layers == 2  # main
    assert make_plan(replace(spec, model_revision=ONE)).model.layers == 1
