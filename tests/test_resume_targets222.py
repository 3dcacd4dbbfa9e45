"""A LoRA run resumed by an ftctl (or PEFT) that resolves lora_target_modules otherwise than the one that saved the
checkpoint (585ecd6: all-linear of a mixture of experts) trains the checkpoint's adapters, not new ones."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from ftctl.errors import FtctlError
from ftctl.trainer import methods
from tests.trainer_fixtures import make_run


class _Start(TrainerCallback):
    """The model's adapted modules and LoRA weights as training begins (after the checkpoint's are loaded)."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.targets = sorted(model.peft_config["default"].target_modules)
        self.weights = {k: v.detach().clone() for k, v in model.state_dict().items() if "lora_" in k}


def test_a_resume_adapts_the_checkpoints_modules(tiny_model_dir, tiny_data, tmp_path, one_thread, monkeypatch, caplog):
    """Saved at step 2 by an ftctl whose all-linear was q_proj,v_proj; resumed to step 4 by this one, whose all-linear
    is every projection: the checkpoint's two are adapted, with its weights, and the difference said. Before, the
    run built every projection's adapters and stopped at loading the checkpoint's optimizer state."""
    from ftctl.trainer.run import train

    out = tmp_path / "out"
    run = {"resume": "auto", "save_steps": 2, "logging_steps": 2}
    with monkeypatch.context() as older:
        older.setattr(methods, "lora_targets", lambda spec, model=None: ["q_proj", "v_proj"])
        assert train(*make_run(tiny_model_dir, tiny_data, out, "lora", max_steps=2, **run), echo=print).global_step == 2
    checkpoint = out / "checkpoint-2"
    assert sorted(json.loads((checkpoint / "adapter_config.json").read_text())["target_modules"]) == [
        "q_proj",
        "v_proj",
    ]
    saved = load_file(checkpoint / "adapter_model.safetensors")
    start = _Start()
    with caplog.at_level(logging.WARNING, logger="ftctl"):
        resumed = train(*make_run(tiny_model_dir, tiny_data, out, "lora", max_steps=4, **run), [start], print)
    assert resumed.global_step == 4
    assert start.targets == ["q_proj", "v_proj"]
    assert len(start.weights) == len(saved) > 0
    for key, value in saved.items():  # base_model.model....q_proj.lora_A.weight -> ...lora_A.default.weight
        assert torch.equal(start.weights[key.replace(".weight", ".default.weight")], value), key
    assert (
        "resuming with checkpoint-2's adapters on q_proj, v_proj (4): a new run would adapt down_proj, gate_proj, k_proj, "
        "o_proj, q_proj, up_proj, v_proj (14)" in caplog.text
    )


def test_a_checkpoint_without_readable_targets_is_refused(tiny_model_dir, tmp_path, caplog):
    """The same modules: nothing said. An unreadable adapter_config.json, or adapters on modules the model lacks:
    one line before training."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    spec, _ = make_run(tiny_model_dir, "data.jsonl", tmp_path / "out", "lora")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    checkpoint = tmp_path / "checkpoint-1"
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), methods.lora_config(spec)).save_pretrained(
        checkpoint
    )
    with caplog.at_level(logging.WARNING, logger="ftctl"):
        same = methods.checkpoint_targets(methods.lora_config(spec, model), str(checkpoint), model)
    assert len(same.target_modules) == 14 and "resuming with" not in caplog.text  # all-linear as PEFT saved it
    for name in checkpoint.iterdir():
        name.unlink()
    with pytest.raises(FtctlError, match="its adapter_config.json, which says .*cannot be read .*No such file"):
        methods.checkpoint_targets(methods.lora_config(spec, model), str(checkpoint), model)
    (checkpoint / "adapter_config.json").write_text("{")
    with pytest.raises(FtctlError, match="its adapter_config.json, which says .*cannot be read"):
        methods.checkpoint_targets(methods.lora_config(spec, model), str(checkpoint), model)
    (checkpoint / "adapter_config.json").write_text(json.dumps({"target_modules": ["q_proj", "qkv_proj"]}))
    with pytest.raises(FtctlError, match="its LoRA adapters are on qkv_proj, which .* has no module named"):
        methods.checkpoint_targets(methods.lora_config(spec, model), str(checkpoint), model)
