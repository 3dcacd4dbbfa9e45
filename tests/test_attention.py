"""The attention choice, packed batches' per-sample boundaries, and packed loss == unpacked loss (CPU)."""

from __future__ import annotations

import math

import pytest

from ftctl.trainer import attention
from ftctl.trainer.attention import FA4_VARLEN, FLASH_ATTN, SDPA, TORCH_VARLEN, VARLEN, choose
from tests.trainer_fixtures import make_run


# ------------------------------------------------------------------------------------------ choice
@pytest.mark.parametrize(
    ("planned", "fa4", "flash", "varlen", "expected"),
    [
        (VARLEN, True, True, True, FA4_VARLEN),  # FlashAttention 4 where it imports (Hopper, Blackwell)
        (VARLEN, False, True, True, FLASH_ATTN),  # else flash-attn when it imports
        (VARLEN, False, False, True, TORCH_VARLEN),  # else torch's varlen kernels
        (VARLEN, False, False, False, SDPA),  # else sdpa
        (FLASH_ATTN, True, True, True, FLASH_ATTN),  # an explicit flash_attention_2 gets it
        (FLASH_ATTN, True, False, True, TORCH_VARLEN),  # ... or without the package, its kernels in torch
        (SDPA, True, True, True, SDPA),  # what the user asked stays
        ("eager", True, True, True, "eager"),
    ],
)
def test_attention_is_fa4_then_flash_attn_then_torch_varlen_then_sdpa(planned, fa4, flash, varlen, expected):
    assert choose(planned, flash_attn_ok=flash, torch_varlen_ok=varlen, fa4_ok=fa4) == expected


def test_a_models_attention_shape_is_read_from_its_config():
    """What the kernels are probed with: head dim, heads, soft cap, and the windows its layers pass (per layer
    type where the config has them)."""
    from transformers import Gemma2Config, LlamaConfig, MistralConfig, Qwen2Config

    llama = attention.AttentionShape.of(LlamaConfig(hidden_size=2048, num_attention_heads=32), "bfloat16")
    assert (llama.head_dim, llama.heads, llama.kv_heads, llama.softcap, llama.windows) == (64, 32, 32, None, (None,))
    gemma2 = attention.AttentionShape.of(Gemma2Config(), "bfloat16")
    assert (gemma2.head_dim, gemma2.kv_heads, gemma2.softcap, gemma2.windows) == (256, 4, 50.0, (None, 4096))
    assert attention.AttentionShape.of(MistralConfig(), "float16").windows == (4096,)  # every layer
    qwen2 = Qwen2Config(sliding_window=4096)  # use_sliding_window false: the layers run full attention
    assert attention.AttentionShape.of(qwen2, "bfloat16").windows == (None,)


def test_the_probe_runs_a_kernel_forward_and_backward_and_says_what_it_raised():
    """The probe itself, on CPU through the reference kernel (the GPU kernels: bench/attention_probe.py)."""
    import torch

    calls = []

    def reference(q, k, v, *rest):
        calls.append((q.shape, k.shape, rest[-2]))
        return attention._reference_varlen(q, k, v, *rest)

    shape = attention.AttentionShape(head_dim=16, heads=4, kv_heads=2, dtype="float32", windows=(None, 64))
    torch.manual_seed(5)
    seeded = torch.get_rng_state()
    assert attention.probe(reference, shape, "cpu") is None
    assert torch.equal(torch.get_rng_state(), seeded)  # a probe leaves the run's seeded draws as they were
    total = sum(attention.PROBE_DOCS)
    assert calls == [((total, 4, 16), (total, 2, 16), None), ((total, 4, 16), (total, 2, 16), 64)]

    def refuses(q, k, v, *rest):
        assert q.shape[-1] <= 8, f"(head_dim, head_dim_v)=({q.shape[-1]}, {v.shape[-1]}) is not supported on SM100.\n"
        return q

    assert attention.probe(refuses, shape, "cpu") == (
        "AssertionError: (head_dim, head_dim_v)=(16, 16) is not supported on SM100."
    )

    def no_backward(q, k, v, *rest):
        return q.detach()  # a forward whose output cannot be differentiated: the backward raises

    assert attention.probe(no_backward, shape, "cpu").startswith("RuntimeError: element 0 of tensors")
    assert torch.is_grad_enabled()


def test_a_kernel_that_cannot_run_the_models_attention_gives_way_to_the_next(monkeypatch, caplog):
    """FlashAttention 4 imports but refuses this head dim: the run takes the next kernel installed, saying why;
    with no shape (``ftctl doctor``) nothing is probed. The probe's verdicts stand in for a GPU here; the real
    kernels refusing and the run training on: bench/attention_probe.py."""
    shape = attention.AttentionShape(head_dim=192, heads=8, kv_heads=8, dtype="bfloat16")
    refused = {attention._fa4_varlen: "AssertionError: (head_dim, head_dim_v)=(192, 192) is not supported on SM100."}
    probed = []

    def verdict(kernel, shape, device):
        probed.append((kernel, device))
        return refused.get(kernel)

    monkeypatch.setattr(attention, "probe", verdict)
    monkeypatch.setattr(attention, "fa4_usable", lambda: True)
    monkeypatch.setattr(attention, "flash_attn_importable", lambda: False)
    monkeypatch.setattr(attention, "torch_varlen_usable", lambda: True)
    try:
        assert attention.runnable(VARLEN, on_cpu=False) == FA4_VARLEN and probed == []
        assert attention.resolve(
            VARLEN, "llama", on_cpu=False, packed=True, shape=shape, gpu=1
        ).attn_implementation == (TORCH_VARLEN)
        assert probed == [(attention._fa4_varlen, "cuda:1"), (attention._cuda_varlen, "cuda:1")]
        assert "FlashAttention 4" in caplog.text and "(192, 192) is not supported" in caplog.text
        refused[attention._cuda_varlen] = "RuntimeError: head dim 320 > 256"
        assert attention.resolve(VARLEN, "llama", on_cpu=False, packed=True, shape=shape).attn_implementation == SDPA
        assert "this model's attention" in caplog.text
    finally:
        attention.register_varlen()
        attention.register_varlen(FA4_VARLEN)


def test_flash_attn_4_alone_is_not_taken_for_flash_attn_2(tmp_path, monkeypatch):
    """flash-attn-4's wheel (4.0.0b36) installs flash_attn/cute/ and no flash_attn/__init__.py: ``flash_attn``
    then imports as a namespace package without FlashAttention 2's functions, which transformers'
    flash_attention_2 needs. Its layout here; a package with FA2's entry point is taken."""
    import sys

    (tmp_path / "flash_attn" / "cute").mkdir(parents=True)
    (tmp_path / "flash_attn" / "cute" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "flash_attn" not in sys.modules  # not installed here
    try:
        assert not attention.flash_attn_importable()
        (tmp_path / "flash_attn" / "__init__.py").write_text("def flash_attn_varlen_func(*a, **k): ...\n")
        del sys.modules["flash_attn"]
        assert attention.flash_attn_importable()
    finally:
        sys.modules.pop("flash_attn", None)


def test_the_planner_names_varlen_where_the_tier_runs_flash_kernels_and_packs_only_then(tmp_path):
    from ftctl.plan import make_plan
    from ftctl.spec import build

    def plan(gpus, **o):
        return make_plan(build({"method": "lora", "model_name_or_path": "meta-llama/Llama-3.1-8B", "gpus": gpus, **o}))

    h200 = plan("1xH200")
    assert (h200.attn_implementation, h200.packing) == (VARLEN, True)
    assert "varlen" in h200.table() and "+ packing" in h200.table()
    t4 = plan("1xT4", method="qlora")
    assert (t4.attn_implementation, t4.packing) == (SDPA, False)
    forced = plan("1xH100", attn_implementation="sdpa")
    assert (forced.attn_implementation, forced.packing) == (SDPA, False)  # exact, but the block mask costs: opt-in
    assert plan("1xH100", attn_implementation="sdpa", packing=True).packing
    cpu = plan("cpu", model_name_or_path="huggingfacetb/smollm2-135m-instruct")
    assert (cpu.attn_implementation, cpu.packing) == (SDPA, False)


def test_packing_is_refused_by_no_attention_that_keeps_samples_apart():
    for name in (VARLEN, FLASH_ATTN, TORCH_VARLEN, SDPA, "eager", "flex_attention"):
        assert attention.packing_supported(name)
    assert not attention.packing_supported("paged_attention")
    assert attention.default_packing(VARLEN) and not attention.default_packing(SDPA)


def test_on_cpu_the_trainer_resolves_varlen_to_sdpa_without_liger(caplog):
    kernels = attention.resolve(VARLEN, "llama", on_cpu=True)
    assert (kernels.attn_implementation, kernels.liger) == (SDPA, False)
    assert "neither flash-attn nor torch's varlen_attn" in caplog.text
    assert attention.resolve(SDPA, "llama", on_cpu=True).attn_implementation == SDPA
    assert not attention.liger_usable("gpt2", on_cpu=False)  # not a Llama-like model


def test_a_gpu_run_registers_a_mask_function_for_its_varlen_attention_only_when_unpacked(monkeypatch, tiny_model_dir):
    """resolve() as on a GPU: a packed run leaves transformers no mask function for ftctl_varlen (no flash-attn)
    or flash_attention_2 (flash-attn installed): no mask preparation, no packed-sequence check; an unpacked run
    registers FlashAttention's."""
    from types import SimpleNamespace

    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, flash_attention_mask

    from ftctl.trainer.model import model_kernels

    monkeypatch.setattr(attention, "fa4_usable", lambda: False)
    monkeypatch.setattr(attention, "flash_attn_importable", lambda: False)
    monkeypatch.setattr(attention, "torch_varlen_usable", lambda: True)
    monkeypatch.setattr(attention, "probe", lambda kernel, shape, device: None)  # no GPU here: every kernel runs
    try:
        plan = SimpleNamespace(attn_implementation=VARLEN, packing=True, precision="bf16")  # the plan's packing
        kernels = model_kernels(
            SimpleNamespace(model_name_or_path=str(tiny_model_dir), model_revision=None), plan, on_cpu=False
        )
        assert kernels.attn_implementation == TORCH_VARLEN
        assert TORCH_VARLEN not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping
        assert attention.resolve(VARLEN, "llama", on_cpu=False, packed=False).attn_implementation == TORCH_VARLEN
        assert TORCH_VARLEN in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping
        # flash-attn installed: transformers' own flash_attention_2 entry, the same way
        monkeypatch.setattr(attention, "flash_attn_importable", lambda: True)
        assert attention.resolve(VARLEN, "llama", on_cpu=False, packed=True).attn_implementation == FLASH_ATTN
        assert FLASH_ATTN not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping
        attention.resolve(VARLEN, "llama", on_cpu=False, packed=False)
        assert ALL_MASK_ATTENTION_FUNCTIONS._global_mapping[FLASH_ATTN] is flash_attention_mask
        # FlashAttention 4 importable on a Hopper/Blackwell GPU: ftctl's function over its kernel, the same way
        monkeypatch.setattr(attention, "fa4_usable", lambda: True)
        kernels = attention.resolve(VARLEN, "llama", on_cpu=False, packed=True)
        assert kernels.attn_implementation == FA4_VARLEN and "FlashAttention 4" in kernels.attention
        assert FA4_VARLEN not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping
        attention.resolve(VARLEN, "llama", on_cpu=False, packed=False)
        assert ALL_MASK_ATTENTION_FUNCTIONS._global_mapping[FA4_VARLEN] is flash_attention_mask
    finally:
        attention.register_varlen()
        attention.register_varlen(FA4_VARLEN)
        attention.mask_preparation(FLASH_ATTN, True)


def _fake_fa4(site, interface: bytes, recorded: bytes):
    """A flash-attn-4 installation in ``site`` whose RECORD holds ``recorded``'s hash for the varlen function's
    file, which holds ``interface``."""
    import base64
    import hashlib

    cute = site / "flash_attn" / "cute"
    cute.mkdir(parents=True)
    (cute / "__init__.py").write_text("")
    (cute / "interface.py").write_bytes(interface)
    info = site / "flash_attn_4-4.0.0b36.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: flash-attn-4\nVersion: 4.0.0b36\n")
    digest = base64.urlsafe_b64encode(hashlib.sha256(recorded).digest()).rstrip(b"=").decode()
    (info / "RECORD").write_text(f"flash_attn/cute/interface.py,sha256={digest},{len(recorded)}\n")


def test_flash_attn_2s_copy_of_flash_attn_cute_is_not_taken_for_fa4(tmp_path, monkeypatch, caplog):
    """flash-attn 2.8 ships a preview of flash_attn.cute under FA4's paths; installed after flash-attn-4 it
    overwrites FA4's files and still imports. ftctl checks the file against flash-attn-4's RECORD, does not use
    it, and says how to reinstall."""
    import sys

    import torch

    from ftctl.local.backend import varlen_here

    assert attention.fa4_files_problem() is None  # not installed here: nothing to check
    own = b"def flash_attn_varlen_func(): ...  # flash-attn-4\n"
    _fake_fa4(tmp_path / "ok", own, own)
    monkeypatch.syspath_prepend(str(tmp_path / "ok"))
    assert attention.fa4_installed() and attention.fa4_files_problem() is None

    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(tmp_path / "ok")])
    _fake_fa4(tmp_path / "over", b"def flash_attn_varlen_func(): ...  # flash-attn 2's preview\n", own)
    monkeypatch.syspath_prepend(str(tmp_path / "over"))
    problem = attention.fa4_files_problem()
    assert problem and "pip install --force-reinstall --no-deps 'flash-attn-4==4.0.0b36'" in problem
    # as on a Hopper GPU: not used, with the reason and the fix in the log and in `ftctl doctor`
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    monkeypatch.setattr(attention, "flash_attn_importable", lambda: False)
    monkeypatch.setattr(attention, "torch_varlen_usable", lambda: True)
    with caplog.at_level("WARNING", logger=attention.__name__):
        assert not attention.fa4_usable()
    assert "not using FlashAttention 4" in caplog.text and "--force-reinstall" in caplog.text
    assert "FlashAttention 4 is installed but not used" in varlen_here()


def test_fa4_keeps_its_compiled_kernels_on_disk_unless_the_user_said_otherwise(tmp_path, monkeypatch):
    """FlashAttention 4 reads FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED at its import: ftctl sets it first (a
    requeued run's probe then loads the kernels: bench/NOTES.md v36), a user's own value stays."""
    import sys

    import torch

    seen = "import os\nCACHE = os.environ.get('FLASH_ATTENTION_CUTE_DSL_CACHE_ENABLED')\n"
    own = b"def flash_attn_varlen_func(): ...\n"
    _fake_fa4(tmp_path, own, own)
    (tmp_path / "flash_attn" / "cute" / "__init__.py").write_text(seen + "from .interface import *\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    for user, expected in ((None, "1"), ("0", "0")):
        for name in [m for m in sys.modules if m.startswith("flash_attn")]:
            monkeypatch.delitem(sys.modules, name)
        if user is None:
            monkeypatch.delenv(attention.FA4_CACHE_ENV, raising=False)
        else:
            monkeypatch.setenv(attention.FA4_CACHE_ENV, user)
        assert attention.fa4_usable()
        assert sys.modules["flash_attn.cute"].CACHE == expected


# ------------------------------------------------------------------------------------------ kernel
def _per_document(q, k, v, bounds, scale):
    import torch

    groups = q.shape[1] // k.shape[1]
    out = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        qd, kd, vd = (t[lo:hi].transpose(0, 1) for t in (q, k, v))
        kd, vd = kd.repeat_interleave(groups, 0), vd.repeat_interleave(groups, 0)
        out.append(torch.nn.functional.scaled_dot_product_attention(qd, kd, vd, is_causal=True, scale=scale))
    return torch.cat([o.transpose(0, 1) for o in out])


def test_varlen_attention_never_crosses_a_document_boundary():
    import torch

    torch.manual_seed(0)
    bounds = [0, 5, 6, 17, 24]
    t, hq, hkv, d = bounds[-1], 4, 2, 8
    q, k, v = torch.randn(1, hq, t, d), torch.randn(1, hkv, t, d), torch.randn(1, hkv, t, d)
    cu = torch.tensor(bounds, dtype=torch.int32)
    out, _ = attention.varlen_attention_forward(
        None, q, k, v, None, scaling=d**-0.5, cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=11, max_length_k=11
    )
    ref = _per_document(q[0].transpose(0, 1), k[0].transpose(0, 1), v[0].transpose(0, 1), bounds, d**-0.5)
    assert out.shape == (1, t, hq, d)
    assert torch.allclose(out[0], ref, atol=1e-6)
    # a change in one document moves only that document's outputs
    v2 = v.clone()
    v2[0, :, 7] += 1.0
    out2, _ = attention.varlen_attention_forward(
        None, q, k, v2, None, scaling=d**-0.5, cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=11, max_length_k=11
    )
    changed = (out2 - out).abs().sum(dim=(0, 2, 3)) > 0
    assert changed[7:17].all() and not changed[:6].any() and not changed[17:].any()


def test_varlen_attention_leaves_padding_out_of_a_padded_batch():
    import torch

    torch.manual_seed(1)
    lengths, s, hq, hkv, d = [6, 3], 6, 4, 2, 8
    q, k, v = torch.randn(2, hq, s, d), torch.randn(2, hkv, s, d), torch.randn(2, hkv, s, d)
    mask = torch.tensor([[1] * n + [0] * (s - n) for n in lengths])
    out, _ = attention.varlen_attention_forward(None, q, k, v, mask, scaling=d**-0.5)
    for row, n in enumerate(lengths):
        ref = _per_document(*(t[row, :, :n].transpose(0, 1) for t in (q, k, v)), [0, n], d**-0.5)
        assert torch.allclose(out[row, :n], ref, atol=1e-6)
        assert (out[row, n:] == 0).all()


# ------------------------------------------------------------------------------------------ model
_TINY = dict(
    vocab_size=97,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    use_cache=False,
)


def _tiny(config_cls, model_cls, attn: str, **extra):
    import torch

    attention.register_varlen()
    attention.register_varlen(FA4_VARLEN)  # on CPU both run the reference kernel: transformers' wiring
    torch.manual_seed(0)
    return model_cls(config_cls(**_TINY, attn_implementation=attn, **extra)).eval()


def _tiny_llama(attn: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    return _tiny(LlamaConfig, LlamaForCausalLM, attn)


def _documents():
    import torch

    g = torch.Generator().manual_seed(3)
    return [torch.randint(1, 97, (n,), generator=g) for n in (9, 1, 23, 14)]


def _packed(docs):
    """What TRL's padding-free collator makes of these documents (the collator the trainer uses)."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from ftctl.trainer.data import sft_dataset_config

    multiple = sft_dataset_config(packing=True, max_length=64)["pad_to_multiple_of"]
    collate = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True, pad_to_multiple_of=multiple)
    return collate([{"input_ids": d.tolist(), "labels": d.tolist()} for d in docs])


def test_the_collator_hands_the_model_each_samples_boundaries():
    from ftctl.trainer.data import PACK_MULTIPLE, packed_padding

    docs = _documents()
    batch = _packed(docs)
    lengths = [len(d) for d in docs]
    width = -(-sum(lengths) // PACK_MULTIPLE) * PACK_MULTIPLE
    assert sum(lengths) % PACK_MULTIPLE and packed_padding(batch) == width - sum(lengths)  # padded here
    assert batch["input_ids"].shape == (1, width) and "attention_mask" not in batch
    # the samples' boundaries, then each padding token as a one-token sample
    bounds = [0, *[sum(lengths[: i + 1]) for i in range(len(lengths))]]
    assert batch["cu_seq_lens_q"].tolist() == bounds + list(range(sum(lengths) + 1, width + 1))
    assert batch["cu_seq_lens_q"].dtype.is_floating_point is False and batch["max_length_q"] == max(lengths)
    starts = batch["cu_seq_lens_q"][:-1].tolist()
    assert batch["position_ids"][0, starts].tolist() == [0] * len(starts)  # positions restart per sample
    assert (batch["labels"][0, starts] == -100).all()  # no sample predicts the next one's first token
    assert (batch["labels"][0, sum(lengths) :] == -100).all()  # the padding trains nothing


@pytest.mark.parametrize("attn", [SDPA, TORCH_VARLEN, FA4_VARLEN])
def test_packed_loss_equals_the_unpacked_loss(attn):
    import torch

    from ftctl.trainer.data import unpack_batch

    docs = _documents()
    packed = _packed(docs)
    model = _tiny_llama(attn)
    with torch.no_grad():
        loss_packed = model(**packed).loss
        unpacked = unpack_batch(packed, pad_token_id=0)
        loss_unpacked = _tiny_llama(SDPA)(**unpacked).loss
        # token-weighted per-document losses, each document alone
        nll = [model(input_ids=d[None], labels=d[None]).loss * (len(d) - 1) for d in docs if len(d) > 1]
    per_doc = sum(nll) / sum(len(d) - 1 for d in docs)
    assert loss_packed.item() == pytest.approx(loss_unpacked.item(), rel=1e-5)
    assert loss_packed.item() == pytest.approx(per_doc.item(), rel=1e-5)
    # naive packing (one causal sequence) differs: the check would catch attention across samples
    naive = model(input_ids=packed["input_ids"], labels=packed["labels"]).loss
    assert not math.isclose(naive.item(), loss_packed.item(), rel_tol=1e-4)


def _tiny_gemma2(attn: str, softcap: float | None = 0.02):
    from transformers import Gemma2Config, Gemma2ForCausalLM

    # a cap of 0.02 bends this random model's attention scores; the first layer's window is shorter than two of
    # the documents
    extra = dict(head_dim=16, query_pre_attn_scalar=16, sliding_window=8, attn_logit_softcapping=softcap)
    return _tiny(Gemma2Config, Gemma2ForCausalLM, attn, **extra)


def test_a_soft_capped_model_keeps_its_cap_and_windows_in_the_varlen_attention():
    """Gemma 2 soft-caps its attention logits (transformers hands the attention function ``softcap``): the
    packed varlen path equals transformers' eager attention on each document alone, and differs from it
    without the cap (the check would catch a dropped cap)."""
    import torch

    from ftctl.trainer.data import unpack_batch

    docs = _documents()
    packed = _packed(docs)
    unpacked = unpack_batch(packed, pad_token_id=0)
    real = unpacked["attention_mask"].bool()
    with torch.no_grad():
        out = _tiny_gemma2(TORCH_VARLEN)(**packed)
        eager = _tiny_gemma2("eager")(**unpacked)
        uncapped = _tiny_gemma2("eager", softcap=None)(**unpacked).logits[real]
    logits = out.logits[0, : sum(len(d) for d in docs)]
    assert torch.allclose(logits, eager.logits[real], rtol=1e-4, atol=1e-5)
    assert out.loss.item() == pytest.approx(eager.loss.item(), rel=1e-5)
    assert (uncapped - eager.logits[real]).abs().max() > 1e-2


def test_a_soft_capped_model_never_runs_a_kernel_without_the_cap(monkeypatch):
    """torch's varlen kernels and sdpa have no soft cap: a GPU with only torch's kernels refuses with how to
    fix it; on CPU the run takes transformers' eager attention (exact, with the cap)."""
    from ftctl.errors import FtctlError

    capped = attention.AttentionShape(head_dim=256, heads=8, kv_heads=4, dtype="bfloat16", softcap=50.0)
    monkeypatch.setattr(attention, "runnable", lambda planned, on_cpu, shape=None, gpu=0: TORCH_VARLEN)
    with pytest.raises(FtctlError, match="attn_logit_softcapping.*pip install 'ftctl\\[fa4\\]'"):
        attention.resolve(VARLEN, "gemma2", on_cpu=False, packed=True, shape=capped)
    assert attention.resolve(VARLEN, "llama", on_cpu=False, packed=True).attn_implementation == TORCH_VARLEN
    monkeypatch.setattr(attention, "runnable", lambda planned, on_cpu, shape=None, gpu=0: FA4_VARLEN)  # takes the cap
    assert attention.resolve(VARLEN, "gemma2", on_cpu=False, packed=True, shape=capped).attn_implementation == (
        FA4_VARLEN
    )
    monkeypatch.undo()
    assert attention.resolve(VARLEN, "gemma2", on_cpu=True, shape=capped).attn_implementation == "eager"
    attention.register_varlen()
    attention.register_varlen(FA4_VARLEN)


def test_attention_sinks_are_refused_and_attention_dropout_is_said_once(caplog):
    """What the varlen kernels cannot do is never dropped silently: gpt-oss's sink logits stop the run with how to
    fix it; attention dropout in training is logged once (the kernels run without it)."""
    import torch

    from ftctl.errors import FtctlError

    q, kv = torch.randn(1, 4, 6, 8), torch.randn(1, 2, 6, 8)
    with pytest.raises(FtctlError, match="attn_implementation=eager"):
        attention.varlen_attention_forward(None, q, kv, kv, None, s_aux=torch.zeros(4))
    module = torch.nn.Module().train()
    for _ in range(2):
        attention.varlen_attention_forward(module, q, kv, kv, None, dropout=0.1)
    assert caplog.text.count("attention dropout (0.1) is not applied") == 1
    attention.varlen_attention_forward(module.eval(), q, kv, kv, None, dropout=0.1)  # evaluation: nothing to say
    assert caplog.text.count("attention dropout") == 1


def test_the_varlen_path_reads_the_collators_boundaries_in_every_layer(monkeypatch):
    import torch
    from transformers import AttentionInterface

    seen = []

    def spy(module, q, k, v, mask, **kw):
        seen.append(kw.get("cu_seq_lens_q"))
        return attention.varlen_attention_forward(module, q, k, v, mask, **kw)

    model = _tiny_llama(TORCH_VARLEN)
    AttentionInterface.register(TORCH_VARLEN, spy)
    try:
        packed = _packed(_documents())
        with torch.no_grad():
            model(**packed)
    finally:
        attention.register_varlen()
    assert len(seen) == 2 and all(cu is packed["cu_seq_lens_q"] for cu in seen)


def test_a_packed_run_registers_no_mask_function_so_transformers_never_reads_the_positions(monkeypatch):
    """register_varlen(masks=False), as a packed run does: transformers skips its mask preparation and
    with it find_packed_sequence_indices (a GPU read at every forward); the packed forward is the same."""
    import torch
    from transformers import masking_utils

    calls = []
    real = masking_utils.find_packed_sequence_indices
    monkeypatch.setattr(masking_utils, "find_packed_sequence_indices", lambda p: calls.append(1) or real(p))
    model = _tiny_llama(TORCH_VARLEN)  # a mask function registered
    packed = _packed(_documents())
    try:
        with torch.no_grad():
            with_masks = model(**packed).logits
        attention.register_varlen(masks=False)
        with torch.no_grad():
            without = model(**packed).logits
    finally:
        attention.register_varlen()
    assert calls == [1]  # only the forward with a mask function looked at the positions
    assert torch.equal(with_masks, without)


# ------------------------------------------------------------------------------------------ trainer
def test_packed_training_matches_unpacked_training_step_by_step(tiny_model_dir, tiny_data, tmp_path, one_thread):
    """The trainer's packed path against the same samples, same steps, run unpacked with padding."""
    from ftctl.trainer.data import unpack_batch
    from ftctl.trainer.run import fit, setup

    def losses(out, unpack):
        spec, plan = make_run(
            tiny_model_dir, tiny_data, out, "fft", packing=True, max_steps=4, save_steps=100, learning_rate=3e-3
        )
        assert plan.packing
        run = setup(spec, plan, echo=lambda line: None)
        if unpack:
            collate = run.trainer.data_collator
            pad = run.trainer.processing_class.pad_token_id
            run.trainer.data_collator = lambda rows: unpack_batch(collate(rows), pad)
        else:
            batch = run.trainer.data_collator([run.trainer.train_dataset[i] for i in range(2)])
            assert {"cu_seq_lens_q", "max_length_q", "position_ids"} <= set(batch)
        fit(run)
        run.preemption.uninstall()
        assert run.kernels.attn_implementation == SDPA
        return [h["loss"] for h in run.trainer.state.log_history if "loss" in h]

    packed, reference = losses(tmp_path / "packed", False), losses(tmp_path / "unpacked", True)
    assert len(packed) == 4
    assert packed == pytest.approx(reference, rel=1e-4)
    start = (tmp_path / "packed" / "metrics.jsonl").read_text().splitlines()[0]
    assert '"event": "start"' in start and '"attn_implementation": "sdpa"' in start
