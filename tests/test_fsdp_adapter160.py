"""A lora run under FSDP2 saves its trainable weights alone: the adapter file's state dict (distributed.adapter_state_dict)
and FSDP's resume copy in each checkpoint (sft_trainer.SFTTrainer._save_optimizer_and_scheduler), for a model whose
LM head is tied to its input embedding (the Llama-3.2-1B shape). On CPU: FSDP2 over a gloo group of one process."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")


@pytest.fixture
def group():
    """A gloo process group of one, in this process, destroyed after the test."""
    import torch.distributed as dist

    from ftctl.trainer.distributed import free_port

    if dist.is_initialized():
        pytest.skip("a process group is up already")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _sharded_lora(seed: int):
    """A tiny tied Llama with LoRA on every linear layer, its lora weights random (B too), each block wrapped for
    activation checkpointing and sharded as accelerate's FSDP2 does: returns (model, its trainable weights by
    state-dict name, before sharding)."""
    from peft import LoraConfig, get_peft_model
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
    from torch.distributed.fsdp import fully_shard
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=256,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    model = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=4, target_modules="all-linear"))
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.normal_()
    trained = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    layers = model.base_model.model.model.layers
    for i, layer in enumerate(layers):
        layers[i] = checkpoint_wrapper(layer, preserve_rng_state=False)
        fully_shard(layers[i])
    fully_shard(model)
    return model, trained


def test_the_adapter_of_a_tied_model_is_its_trainable_weights_alone(group):
    """Regression (bench/NOTES.md v82, an H100): torch's get_model_state_dict(ignore_frozen_params=True) kept the frozen
    tied LM head (named_parameters lists it once, under the embedding's name), gathered on every rank at each save. Here
    exactly the lora weights, whole, plain tensors on the CPU, under torch's state-dict names (no checkpoint wrapper)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from ftctl.trainer.distributed import adapter_state_dict

    model, trained = _sharded_lora(0)
    adapter = adapter_state_dict(model)
    assert adapter.keys() == trained.keys() and len(adapter) == 2 * 7 * 2  # A and B of 7 projections in 2 blocks
    assert all("lora_" in k and "_checkpoint_wrapped_module" not in k for k in adapter)
    assert all(
        type(v) is torch.Tensor and v.device.type == "cpu" and torch.equal(v, trained[k]) for k, v in adapter.items()
    )
    frozen = StateDictOptions(full_state_dict=True, ignore_frozen_params=True)
    torchs = get_model_state_dict(model, options=frozen)  # the names set_model_state_dict loads by
    assert set(torchs) - set(adapter) == {"base_model.model.lm_head.weight"}


def test_fsdps_resume_copy_holds_the_adapter_alone_and_loads_back(group, tmp_path, monkeypatch):
    """transformers' _save_optimizer_and_scheduler under FSDP (each checkpoint-N): pytorch_model_fsdp.bin holds the lora
    weights alone, no LM head nor embedding (its 525 MB of a 706 MB Llama-3.2-1B checkpoint), and accelerate's
    load_fsdp_model(adapter_only=True), what a resume runs, loads them into a fresh sharded model: the same lora
    weights, its frozen base as it was. The optimizer and schedule are saved beside it as transformers saves them."""
    import logging

    from accelerate.utils import fsdp_utils, load_fsdp_model
    from torch.distributed.fsdp import FullStateDictConfig, StateDictType

    from ftctl.trainer.distributed import adapter_state_dict
    from ftctl.trainer.sft_trainer import SFTTrainer

    monkeypatch.setattr(fsdp_utils, "logger", logging.getLogger(__name__))  # accelerate's asks for its state
    model, trained = _sharded_lora(0)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.0)
    plugin = SimpleNamespace(
        fsdp_version=2,
        state_dict_type=StateDictType.FULL_STATE_DICT,
        state_dict_config=FullStateDictConfig(),
        optim_state_dict_config=None,
        sync_module_states=True,
    )
    accelerator = SimpleNamespace(
        state=SimpleNamespace(fsdp_plugin=plugin),
        unwrap_model=lambda m, **kwargs: m,
        process_index=0,
        num_processes=1,
        is_main_process=True,
        is_fsdp2=True,
        wait_for_everyone=lambda: None,
    )
    trainer = object.__new__(SFTTrainer)  # what transformers' method reads, no training set up
    trainer.is_fsdp_enabled, trainer.is_deepspeed_enabled = True, False
    trainer.model, trainer.accelerator, trainer.optimizer = model, accelerator, optimizer
    trainer.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    trainer.args = SimpleNamespace(should_save=True)
    checkpoint = tmp_path / "checkpoint-1"
    SFTTrainer._save_optimizer_and_scheduler(trainer, str(checkpoint))

    assert {"pytorch_model_fsdp.bin", "optimizer.bin", "scheduler.pt"} <= set(os.listdir(checkpoint))
    copy = torch.load(checkpoint / "pytorch_model_fsdp.bin", weights_only=True)
    assert copy.keys() == trained.keys()
    fresh, _ = _sharded_lora(1)
    base = {k: v.full_tensor().clone() for k, v in fresh.state_dict().items() if "lora_" not in k}
    load_fsdp_model(plugin, accelerator, fresh, str(checkpoint), adapter_only=True)
    loaded = adapter_state_dict(fresh)
    assert loaded.keys() == trained.keys() and all(torch.equal(loaded[k], trained[k]) for k in trained)
    assert all(torch.equal(v.full_tensor(), base[k]) for k, v in fresh.state_dict().items() if "lora_" not in k)
