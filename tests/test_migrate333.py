"""Other tools' run files as their users wrote them (helper 333): axolotl's named chat_template and LLaMA-Factory's
template taken where the model's own template is that format; axolotl's fsdp_config / fsdp_version as strategy=fsdp;
lora_target_linear with lora_target_modules as axolotl takes them; eot_tokens where the template ends turns with
them; load_in_8bit's refusal naming qlora; LLaMA-Factory's max_samples and overwrite_output_dir: true."""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

from ftctl.cli import main
from ftctl.errors import FtctlError
from ftctl.spec import build


def _axolotl(tiny_model_dir, tmp_path, **keys) -> dict:
    """An axolotl run file's keys over the tiny ChatML model and a one-row messages file."""
    data = tmp_path / "chat.jsonl"
    turns = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    data.write_text(json.dumps({"messages": turns}) + "\n")
    return {
        "base_model": str(tiny_model_dir),
        "datasets": [{"path": str(data), "type": "chat_template"}],
        "sequence_len": 64,
        **keys,
    }


def test_a_named_chat_template_is_taken_where_the_models_own_is_that_format(tiny_model_dir, tmp_path):
    """chat_template: chatml (and LLaMA-Factory's template: qwen) was refused over a model whose own template is
    ChatML: it is what ftctl trains with, so it is taken with a note; a name of another format is refused saying
    what the model's template is and to give chat_template_path."""
    for key, name in [("chat_template", "chatml"), ("chat_template", "qwen_25"), ("template", "qwen")]:
        notes: list[str] = []
        build(_axolotl(tiny_model_dir, tmp_path, **{key: name}), notes=notes)
        assert any(n.startswith(f"{key}: {name} (run file): taken:") and "ChatML" in n for n in notes), notes
    with pytest.raises(FtctlError) as e:
        build(_axolotl(tiny_model_dir, tmp_path, chat_template="llama3"))
    said = str(e.value)
    assert "own chat template, which is ChatML" in said and "not llama3's" in said and "chat_template_path" in said
    with pytest.raises(FtctlError, match="does not know falcon_h1's format"):
        build(_axolotl(tiny_model_dir, tmp_path, chat_template="falcon_h1"))
    # chat_template_path's template is the one compared
    jinja = tmp_path / "llama3.jinja"
    jinja.write_text("{{ '<|start_header_id|>' }}")
    notes = []
    build(_axolotl(tiny_model_dir, tmp_path, chat_template="llama3", chat_template_path=str(jinja)), notes=notes)
    assert any("llama3 (run file): taken" in n for n in notes), notes


def test_axolotls_fsdp_config_is_strategy_fsdp_and_its_offload_is_refused_saying_what_to_write(
    tiny_model_dir, tmp_path
):
    """fsdp_config / fsdp_version were refused ("not set by hand here", "Unknown key"): axolotl's FSDP2 settings
    (its examples') are strategy=fsdp, those ftctl decides noted; CPU offload and SHARD_GRAD_OP refused with what to
    write; FSDP1's fsdp: [full_shard, auto_wrap] beside its fsdp_config is one strategy, not "keep one"."""
    fsdp2 = {
        "fsdp_version": 2,
        "fsdp_config": {
            "offload_params": False,
            "cpu_ram_efficient_loading": True,
            "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "transformer_layer_cls_to_wrap": "LlamaDecoderLayer",
            "state_dict_type": "FULL_STATE_DICT",
            "reshard_after_forward": True,
        },
    }
    notes: list[str] = []
    spec = build(_axolotl(tiny_model_dir, tmp_path, adapter="lora", **fsdp2), notes=notes)
    assert spec.strategy == "fsdp"
    assert any(n.startswith("fsdp_config (run file): strategy=fsdp here") and "auto_wrap_policy" in n for n in notes)
    fsdp1 = {
        "fsdp": ["full_shard", "auto_wrap"],
        "fsdp_config": {"fsdp_offload_params": False, "fsdp_sharding_strategy": "FULL_SHARD", "fsdp_version": 1},
    }
    assert build(_axolotl(tiny_model_dir, tmp_path, adapter="lora", **fsdp1)).strategy == "fsdp"
    offload = {**fsdp2, "fsdp_config": {**fsdp2["fsdp_config"], "offload_params": True}}
    with pytest.raises(FtctlError, match="offload_params: true: FSDP2's CPU offload is not offered.*zero3_offload"):
        build(_axolotl(tiny_model_dir, tmp_path, **offload))
    with pytest.raises(FtctlError, match="sharding_strategy: SHARD_GRAD_OP: .*strategy=zero2"):
        build(_axolotl(tiny_model_dir, tmp_path, fsdp_config={"sharding_strategy": "SHARD_GRAD_OP"}))
    # qlora does not train under FSDP2: left to the plan, as a DeepSpeed config's ZeRO-3 is
    notes = []
    spec = build(_axolotl(tiny_model_dir, tmp_path, adapter="qlora", **fsdp2), notes=notes)
    assert spec.strategy is None and any(n.startswith("fsdp_config (run file): left out") for n in notes), notes


def test_lora_target_linear_with_named_modules_is_every_linear_layer_as_in_axolotl(tiny_model_dir, tmp_path):
    """Both given (17 of axolotl's examples) was refused "keep one": axolotl trains every linear layer and the named
    ones with them, which all-linear is where they are linear; the head or an embedding named is refused."""
    named = ["gate_proj", "down_proj", "up_proj", "q_proj", "v_proj", "k_proj", "o_proj"]
    notes: list[str] = []
    lora = {"adapter": "lora", "lora_target_linear": True}  # (without adapter, axolotl trains every weight)
    spec = build(_axolotl(tiny_model_dir, tmp_path, **lora, lora_target_modules=named), notes=notes)
    assert spec.lora_target_modules == "all-linear" and any("all-linear, as axolotl takes" in n for n in notes)
    with pytest.raises(FtctlError, match="leaves out the output head and the embeddings: drop lora_target_linear"):
        build(_axolotl(tiny_model_dir, tmp_path, **lora, lora_target_modules=["q_proj", "lm_head"]))


def test_eot_tokens_are_taken_where_the_template_ends_turns_with_them(tiny_model_dir, tmp_path):
    """eot_tokens was an unknown key: taken where the chat template writes each token (ChatML's <|im_end|>), refused
    where it never does (Gemma's <end_of_turn> over a ChatML model)."""
    notes: list[str] = []
    build(_axolotl(tiny_model_dir, tmp_path, eot_tokens=["<|im_end|>"]), notes=notes)
    assert any(n.startswith("eot_tokens (run file): taken:") for n in notes), notes
    with pytest.raises(FtctlError, match="never writes '<end_of_turn>'.*Leave eot_tokens out"):
        build(_axolotl(tiny_model_dir, tmp_path, eot_tokens=["<end_of_turn>"]))


def test_load_in_8bit_is_refused_naming_qlora(tiny_model_dir, tmp_path):
    """load_in_8bit: true (30 of axolotl's examples) said "--method qlora trains over a 4-bit base" without saying
    that 8-bit is not offered or what to write in axolotl's words."""
    with pytest.raises(FtctlError, match="8-bit LoRA is not offered: --method qlora \\(axolotl's adapter: qlora"):
        build(_axolotl(tiny_model_dir, tmp_path, adapter="lora", load_in_8bit=True))


def test_llama_factorys_max_samples_and_overwrite_output_dir_as_its_examples_give_them(
    tiny_model_dir, tmp_path, monkeypatch
):
    """Every LLaMA-Factory example sets max_samples: 1000 and overwrite_output_dir: true, both refused: max_samples
    over datasets of fewer rows asks for nothing; over a larger one it gives that many of its rows (data_weights);
    overwrite_output_dir: true is noted (ftctl resumes, never overwrites). Through `ftctl launch --dry-run`."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    turns = [{"role": "user", "content": "u"}, {"role": "assistant", "content": "x"}]
    (tmp_path / "data" / "b.jsonl").write_text("".join(json.dumps({"messages": turns}) + "\n" for _ in range(40)))
    (tmp_path / "data" / "dataset_info.json").write_text(json.dumps({"b": {"file_name": "b.jsonl"}}))
    run = {
        "model_name_or_path": str(tiny_model_dir),
        "stage": "sft",
        "finetuning_type": "lora",
        "dataset": "b",
        "template": "qwen",
        "cutoff_len": 64,
        "max_samples": 1000,
        "overwrite_output_dir": True,
        "output_dir": str(tmp_path / "out"),
    }
    (tmp_path / "lf.yaml").write_text(yaml.safe_dump(run))
    said = CliRunner().invoke(main, ["launch", "-c", "lf.yaml", "--gpus", "cpu", "--dry-run"])
    assert said.exit_code == 0, said.output
    assert "max_samples: 1000 (run file): every dataset has that many rows or fewer" in said.output
    assert "overwrite_output_dir: true (run file): not done: ftctl never writes a run over" in said.output
    notes: list[str] = []
    spec = build({**run, "max_samples": 10}, notes=notes)
    assert spec.data_weights == "0.25", notes  # 10 of its 40 rows
    assert any(n.startswith("max_samples: 10 (run file): data/b.jsonl give 10") for n in notes), notes
    with pytest.raises(FtctlError, match="max_samples: 0 \\(run file\\) is no number of rows"):
        build({**run, "max_samples": 0})
