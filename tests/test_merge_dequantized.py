"""`ftctl merge` of a qlora run: into the base as the run trained over it (quantized to 4-bit NF4, dequantized) by
default, into the original unquantized base with --original-base; a real CPU qlora run of the tiny model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from ftctl.errors import FtctlError
from tests.trainer_fixtures import make_run


@pytest.fixture(scope="module")
def qlora_run(tiny_model_dir, tiny_data, tmp_path_factory):
    """(spec, plan, output dir) of a finished 6-step qlora run of the tiny model (fp32 on CPU)."""
    import torch

    from ftctl.trainer.run import train

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        spec, plan = make_run(
            tiny_model_dir, tiny_data, tmp_path_factory.mktemp("qlora") / "run", "qlora", lora_r=4, lora_alpha=8
        )
        return spec, plan, Path(train(spec, plan, echo=lambda line: None).output_dir)
    finally:
        torch.set_num_threads(before)


def _logits(model, ids):
    import torch

    with torch.no_grad():
        return model.eval()(ids).logits


def _ids():
    import torch

    return torch.randint(0, 512, (2, 24), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def as_trained(qlora_run):
    """The run's logits for _ids() as it trained: its 4-bit base in the training layout (the 4-bit matmul the loss
    saw, not bitsandbytes' CPU inference repack) with the adapter."""
    from peft import PeftModel

    from ftctl.trainer.methods import training_layout
    from ftctl.trainer.model import load_model

    spec, plan, run = qlora_run
    trained = PeftModel.from_pretrained(load_model(spec, plan, on_cpu=True), str(run))
    training_layout(trained)
    return _logits(trained, _ids())


def test_a_qlora_merge_answers_as_the_run_did(qlora_run, as_trained, tmp_path, one_thread):
    """The adapter learned against the 4-bit NF4 base; merged into that base dequantized, the model's logits are the
    run's (its 4-bit base in the training layout, as the loss saw it) up to fp32 rounding: measured 2.7e-7 at most on
    logits of up to 0.6, the sum (W + BA)x taken in another order than Wx + B(Ax). The bound, 1e-5, is 40 times that
    and 8,000 times below what the original-base merge is off by (0.08: NF4's rounding of every projection, about
    what the adapter changed, 0.09), which the second assertion holds at over 1e-2."""
    import torch
    from transformers import AutoModelForCausalLM

    from ftctl.trainer.merge import merge

    _spec, _plan, run = qlora_run
    ids = _ids()
    dequantized = merge(str(run), str(tmp_path / "dequantized"))
    original = merge(str(run), str(tmp_path / "original"), dequantize=False)

    a = _logits(AutoModelForCausalLM.from_pretrained(dequantized), ids)
    b = _logits(AutoModelForCausalLM.from_pretrained(original), ids)
    assert torch.allclose(a, as_trained, rtol=0, atol=1e-5), (a - as_trained).abs().max()
    assert (b - as_trained).abs().max() > 1e-2  # the unquantized base is another model than the run trained over
    assert (a.argmax(-1) == as_trained.argmax(-1)).all()
    config = json.loads((dequantized / "config.json").read_text())
    assert "quantization_config" not in config and config["torch_dtype"] == "float32"  # a plain model, no bitsandbytes
    records = {p.name: json.loads((p / "ftctl-merge.json").read_text()) for p in (dequantized, original)}
    assert records["dequantized"]["base_weights"] == "dequantized" and records["original"]["base_weights"] == "original"


def test_the_merge_says_which_base_it_went_into(qlora_run, tmp_path, one_thread):
    from ftctl.cli import main

    _spec, _plan, run = qlora_run
    said = CliRunner().invoke(main, ["merge", str(run), "--out", str(tmp_path / "d")])
    assert said.exit_code == 0, said.output
    assert (
        "as the run trained over it: 4-bit NF4 with double quantization from fp32, dequantized to fp32" in said.stderr
    )
    assert "--original-base" not in said.stderr  # no note: this is the model the run was
    assert "the adapter in its 4-bit base dequantized, as the run trained" in said.stdout  # the last line says it too

    said = CliRunner().invoke(main, ["merge", str(run), "--out", str(tmp_path / "o"), "--original-base"])
    assert said.exit_code == 0, said.output
    assert "note: --original-base: the QLoRA adapter goes into the unquantized base" in said.stderr
    assert "the adapter in its original unquantized base, not the 4-bit one it trained over" in said.stdout

    # the other base's merge is not "this merge as it is now": said, with the flag it was made with
    said = CliRunner().invoke(main, ["merge", str(run), "--out", str(tmp_path / "o")])
    assert said.exit_code == 2 and "Traceback" not in said.output
    assert "holds the merge of this adapter into the original unquantized base" in said.output
    assert "--original-base): choose another --out for this one" in said.output
    said = CliRunner().invoke(main, ["merge", str(run), "--out", str(tmp_path / "d"), "--original-base"])
    assert "holds the merge of this adapter into the dequantized 4-bit base" in said.output
    said = CliRunner().invoke(main, ["merge", str(run), "--out", str(tmp_path / "d"), "--dequantized-base"])
    assert "holds the merge of this adapter as it is now" in said.output


def test_dequantized_base_of_a_lora_run_is_refused(qlora_run, tmp_path):
    """A lora run's base was never quantized: --dequantized-base is refused in one line, not ignored."""
    from ftctl.cli import main
    from ftctl.trainer.merge import merge

    _spec, _plan, run = qlora_run
    lora = tmp_path / "lora-run"
    lora.mkdir()
    for file in run.glob("adapter_*"):
        shutil.copy(file, lora / file.name)
    spec = json.loads((run / "spec.json").read_text())
    spec["plan"]["method"] = "lora"
    (lora / "spec.json").write_text(json.dumps(spec))
    with pytest.raises(FtctlError, match="^--dequantized-base is for a qlora run: .* is a lora run"):
        merge(str(lora), str(tmp_path / "out"), dequantize=True)
    said = CliRunner().invoke(main, ["merge", str(lora), "--out", str(tmp_path / "out"), "--dequantized-base"])
    assert said.exit_code == 2 and "Traceback" not in said.output and len(said.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_a_run_over_a_pre_quantized_base_merges_into_its_stored_4_bit_weights(
    qlora_run, as_trained, tiny_model_dir, tmp_path, one_thread
):
    """A run over a *-bnb-4bit model trained over its stored 4-bit weights: the merge dequantizes those (no --base
    needed, the model they were made from may not be public); --original-base still asks for that model."""
    import torch
    from transformers import AutoModelForCausalLM

    from ftctl.cli import main
    from ftctl.trainer.merge import merge
    from ftctl.trainer.model import nf4_config

    _spec, _plan, run = qlora_run
    quantized = tmp_path / "tiny-bnb-4bit"  # as the Hub's are made: loaded in 4 bits, saved
    model = AutoModelForCausalLM.from_pretrained(
        tiny_model_dir, dtype=torch.float32, quantization_config=nf4_config(torch.float32), device_map={"": "cpu"}
    )
    model.save_pretrained(quantized)
    for file in tiny_model_dir.glob("tokenizer*"):
        shutil.copy(file, quantized / file.name)
    over = shutil.copytree(run, tmp_path / "run over 4-bit", ignore=shutil.ignore_patterns("checkpoint-*"))
    adapter_config = json.loads((over / "adapter_config.json").read_text())
    (over / "adapter_config.json").write_text(json.dumps({**adapter_config, "base_model_name_or_path": str(quantized)}))

    said = CliRunner().invoke(main, ["merge", str(over), "--out", str(tmp_path / "o"), "--original-base"])
    assert said.exit_code == 2 and "stored quantized (bitsandbytes 4-bit)" in said.output, said.output
    assert "--base ORG/NAME (or its directory); or, without --original-base, into its 4-bit weights" in said.output
    lines = []
    merged = merge(str(over), str(tmp_path / "m"), echo=lines.append)
    assert "tiny-bnb-4bit's stored 4-bit weights, as the run trained over them, dequantized to fp32 ..." in lines[0]
    a = _logits(AutoModelForCausalLM.from_pretrained(merged), _ids())
    assert torch.allclose(a, as_trained, rtol=0, atol=1e-5), (a - as_trained).abs().max()


def test_chat_and_eval_compute_a_qlora_run_as_it_trained(qlora_run, as_trained, one_thread):
    """`ftctl chat`/`ftctl eval` load a qlora run's 4-bit base in the training layout: their logits are the run's own
    forward as the loss saw it. Measured: equal bit for bit (the same NF4 codes, the same dequantize and matmul); the
    bound, 1e-6, is fp32 rounding of logits up to 0.6 and 3,000 times below what bitsandbytes' CPU inference repack
    (at an eval-mode forward, on a CPU with AVX512-BF16) was off by: 3e-3."""
    import torch

    from ftctl.trainer import chat

    _spec, _plan, run = qlora_run
    loaded = chat.load(str(run))
    a = _logits(loaded.model, _ids())
    assert torch.allclose(a, as_trained, rtol=0, atol=1e-6), (a - as_trained).abs().max()
    assert not any(getattr(m, "support_avx512bf16_for_cpu", False) for m in loaded.model.modules())


def test_a_bf16_runs_base_is_quantized_from_bf16_for_chat(qlora_run, tmp_path, one_thread):
    """A bf16 GPU run quantized its base from bf16 weights (its plan's weights_dtype): chat and eval on CPU (fp32)
    quantize from bf16 too (the same NF4 codes and scales as the run's, which fp32 weights can round otherwise), the
    layers it kept unquantized upcast to fp32, as the merge does."""
    import torch
    from transformers import AutoModelForCausalLM

    from ftctl.trainer import trained as trained_mod
    from ftctl.trainer.model import nf4_config

    _spec, _plan, run = qlora_run
    bf16 = shutil.copytree(run, tmp_path / "bf16 run", ignore=shutil.ignore_patterns("checkpoint-*"))
    spec = json.loads((bf16 / "spec.json").read_text())
    spec["plan"]["weights_dtype"] = "bf16"
    (bf16 / "spec.json").write_text(json.dumps(spec))
    found = trained_mod.find(str(bf16))
    model = trained_mod.load(found, "fp32", as_trained=True)
    gpu_run = AutoModelForCausalLM.from_pretrained(
        trained_mod.resolve_base(found),
        dtype=torch.bfloat16,
        quantization_config=nf4_config(torch.bfloat16),
        device_map={"": "cpu"},
    )
    ours = {n.removeprefix("base_model.model."): p for n, p in model.named_parameters()}
    quantized = 0  # the 4-bit layers first: from fp32 weights 0.9% of the tiny model's codes and 415 scales differ
    for name, param in sorted(gpu_run.named_parameters(), key=lambda named: named[1].dtype != torch.uint8):
        mine = ours[name.replace(".weight", ".base_layer.weight")] if name not in ours else ours[name]
        if param.dtype == torch.uint8:  # the 4-bit codes, and the (double-quantized) scales
            quantized += 1
            assert torch.equal(mine.data, param.data), name
            assert torch.equal(mine.quant_state.absmax, param.quant_state.absmax), name
        else:
            assert mine.dtype == torch.float32 and torch.equal(mine.data, param.data.float()), name
    assert quantized
