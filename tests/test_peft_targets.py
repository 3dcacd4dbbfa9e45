"""A TRL run file without lora_target_modules adapts what TRL adapts: PEFT's modules for the model's type (TRL's
ModelConfig.lora_target_modules None -> LoraConfig(target_modules=None) -> PEFT's table), not q_proj,v_proj for
every model (which refused GPT-2's c_attn, Phi-3's qkv_proj...)."""

from __future__ import annotations

import json

import pytest

from ftctl.errors import FtctlError
from ftctl.plan import PlanError, dump_run, load_run, make_plan
from ftctl.spec import build

# TRL's sft.py LoRA flags, as a run file (use_peft, dataset_name: TRL's vocabulary), without lora_target_modules
TRL_LORA = {"use_peft": True, "dataset_name": "trl-lib/Capybara", "lora_r": 8, "gpus": "cpu"}


def config_dir(tmp_path, model_type: str):
    """A tiny random config.json of ``model_type`` (as tests/tiny_fixtures' Llama is sized) in its own directory."""
    from transformers import GPT2Config, LlamaConfig, Phi3Config

    sizes = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
    config = {
        "llama": lambda: LlamaConfig(**sizes, num_key_value_heads=2),
        "phi3": lambda: Phi3Config(**sizes, num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2),
        "gpt2": lambda: GPT2Config(vocab_size=512, n_embd=64, n_layer=2, n_head=4, bos_token_id=1, eos_token_id=2),
    }[model_type]()
    directory = tmp_path / model_type
    config.save_pretrained(directory)
    return directory


def trl_spec(model_dir, **more):
    return build({**TRL_LORA, "model_name_or_path": str(model_dir), **more})


def adapted(model, config) -> list[str]:
    """The modules PEFT puts adapters on, by their last name."""
    import copy

    from peft import get_peft_model

    peft_model = get_peft_model(copy.deepcopy(model), config)
    return sorted({n.rsplit(".", 1)[-1] for n, m in peft_model.named_modules() if hasattr(m, "lora_A")})


@pytest.mark.parametrize("model_type, modules", [("llama", ["q_proj", "v_proj"]), ("gpt2", ["c_attn"])])
def test_a_trl_file_adapts_the_modules_peft_picks_for_the_models_type(tmp_path, model_type, modules):
    """The plan names PEFT's modules for the model's type, noted; the trainer's LoraConfig adapts exactly the
    modules PEFT adapts given target_modules=None (what TRL hands it); a given lora_target_modules is kept."""
    from peft import LoraConfig
    from transformers import AutoConfig, AutoModelForCausalLM

    from ftctl.trainer.methods import lora_config

    directory = config_dir(tmp_path, model_type)
    spec = trl_spec(directory)
    assert (spec.method, spec.lora_target_modules) == ("lora", "peft-default")
    plan = make_plan(spec)
    assert (
        f"lora_target_modules {','.join(modules)}: PEFT's for {model_type} models (peft-default, TRL's default), as "
        "TRL adapts them"
    ) in plan.notes
    spec_json = tmp_path / "spec.json"
    spec_json.write_text(dump_run(spec, plan))  # as a launcher that could not name them writes it
    on_node, _ = load_run(str(spec_json))
    assert on_node.lora_target_modules == ",".join(modules)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(directory))
    trls = LoraConfig(r=8, target_modules=None, task_type="CAUSAL_LM")
    assert adapted(model, lora_config(on_node, model)) == adapted(model, trls) == modules

    given = trl_spec(directory, lora_target_modules="all-linear")
    assert make_plan(given) and load_run_of(tmp_path, given).lora_target_modules == "all-linear"


def load_run_of(tmp_path, spec):
    path = tmp_path / "given.json"
    path.write_text(dump_run(spec, make_plan(spec)))
    return load_run(str(path))[0]


def test_a_model_peft_has_no_modules_for_is_refused_naming_its_layers(tmp_path):
    """Phi-3 (qkv_proj): PEFT has no default for its type and refuses LoraConfig(target_modules=None) in its
    words; here the plan refuses it, naming the model's linear layers and the ways on. Named, they train."""
    directory = config_dir(tmp_path, "phi3")
    with pytest.raises(PlanError) as said:
        make_plan(trl_spec(directory))
    assert str(said.value) == (
        "lora_target_modules peft-default (TRL's default where a run file leaves it out) adapts PEFT's modules for the "
        f"model's type, and PEFT has no default for phi3 models ({directory}): name the layers to adapt, "
        "-o lora_target_modules=NAME,NAME (its linear layers: o_proj, qkv_proj, gate_up_proj, down_proj, lm_head), or "
        "give all-linear for every one but the output head."
    )
    assert load_run_of(tmp_path, trl_spec(directory, lora_target_modules="qkv_proj")).lora_target_modules == "qkv_proj"
    with pytest.raises(FtctlError, match="lora_target_modules='q_proj,peft-default': give all-linear"):
        build({"method": "lora", "lora_target_modules": "q_proj,peft-default", "gpus": "cpu"})


def test_a_run_launched_with_the_old_default_resumes_where_the_modules_are_the_same(tmp_path):
    """TRL's default was q_proj,v_proj here whatever the model; a Llama run launched so, relaunched now, names the
    same modules: its checkpoint resumes, not refused as trained with other lora_target_modules. The settings the
    launch records are the modules' names, as a run that gave them."""
    from ftctl.backend import prepare
    from ftctl.checkpoints import write_manifest
    from ftctl.checkpoints.settings import settings
    from ftctl.preflight import check_resume

    directory = config_dir(tmp_path, "llama")
    run = tmp_path / "run"
    before = trl_spec(directory, lora_target_modules="q_proj,v_proj", output_dir=str(run), backend="slurm")
    ckpt = run / "checkpoint-10"
    ckpt.mkdir(parents=True)
    (ckpt / "adapter_model.safetensors").write_bytes(b"weights")
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": 10, "max_steps": 100}))
    write_manifest(str(ckpt), 10, 1, before.digest(), settings=settings(before, make_plan(before)))

    rendered = prepare(trl_spec(directory, output_dir=str(run), backend="slurm"))
    assert rendered.spec.lora_target_modules == "q_proj,v_proj"
    assert json.loads(rendered.files["spec.json"])["spec"]["lora_target_modules"] == "q_proj,v_proj"
    assert check_resume(rendered.spec, rendered.plan) == []
    other = prepare(trl_spec(directory, output_dir=str(run), backend="slurm", lora_target_modules="all-linear"))
    assert "was trained with lora_target_modules=q_proj,v_proj" in check_resume(other.spec, other.plan)[0].text
