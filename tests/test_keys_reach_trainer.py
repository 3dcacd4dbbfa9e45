"""Each run key set to something other than its default reaches what trains: the Trainer ftctl builds (run.setup on
CPU, the tiny random model) holds the value in its arguments, its optimizer and learning-rate schedule, its PEFT
adapters, its frozen parameters or its data. A key read wrong trains the default without a word, the worst kind of
fault for a user; a new training key without a case here fails test_every_training_key_is_checked."""

from __future__ import annotations

import math

import pytest

from tests.trainer_fixtures import make_run

STEPS = 40  # the schedule's length in the checks of its shape


def _built(tiny_model_dir, tiny_data, tmp_path, method, overrides):
    from ftctl.trainer.run import setup

    spec, plan = make_run(tiny_model_dir, tiny_data, tmp_path / "out", method, **overrides)
    run = setup(spec, plan, echo=lambda *_: None)
    run.preemption.uninstall()  # nothing trains: the test's own signal handlers back
    return run


def _rates(trainer, steps: int = STEPS) -> list[float]:
    """The schedule's factor of the peak rate at each step 0..steps, as the Trainer builds it for ``steps``."""
    trainer.create_optimizer_and_scheduler(num_training_steps=steps)
    return [trainer.lr_scheduler.lr_lambdas[0](i) for i in range(steps + 1)]


def _lora_layers(model) -> dict:
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


def _trainable(model) -> set[str]:
    return {name.rsplit(".", 1)[0] for name, p in model.named_parameters() if p.requires_grad}


def _close(a, b) -> bool:
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)


# -------------------------------------------------------------------------------- the checks, one a key
def check_learning_rate(run):
    run.trainer.create_optimizer_and_scheduler(num_training_steps=STEPS)
    assert run.trainer.args.learning_rate == 3e-4
    assert {g["initial_lr"] for g in run.trainer.optimizer.param_groups} == {3e-4}


def check_weight_decay(run):
    trainer = run.trainer
    trainer.create_optimizer_and_scheduler(num_training_steps=STEPS)
    decayed, plain = trainer.optimizer.param_groups
    assert trainer.args.weight_decay == 0.1 and decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    assert all("norm" in names[id(p)] for p in plain["params"]) and plain["params"]  # transformers' exclusions


def check_warmup_ratio(run):
    rates = _rates(run.trainer)
    assert rates[0] == 0 and rates[3] < 1 and rates[4] == 1  # 10% of 40 steps


def check_warmup_steps(run):
    rates = _rates(run.trainer)
    assert rates[0] == 0 and rates[2] < 1 and rates[3] == 1


def check_linear(run):
    rates = _rates(run.trainer)
    assert _close(rates[STEPS // 2], 0.5) and rates[STEPS] == 0


def check_constant_warms_up(run):
    """qlora.py's constant + warmup_ratio: the warm-up it names, then the peak rate (transformers' constant would
    ignore the warm-up)."""
    rates = _rates(run.trainer)
    assert rates[0] == 0 and rates[2] < 1 and rates[4:] == [1.0] * (STEPS - 3)


def check_constant(run):
    assert _rates(run.trainer) == [1.0] * (STEPS + 1)


def check_min_lr_rate(run):
    rates = _rates(run.trainer)
    assert _close(rates[STEPS], 0.1) and min(rates) >= 0.1 - 1e-9


def check_num_cycles(run):
    rates = _rates(run.trainer)  # a whole wave: down to 0 halfway, back up to the peak
    assert _close(rates[STEPS // 2], 0) and _close(rates[STEPS], 1)


def check_max_grad_norm(run):
    assert run.trainer.args.max_grad_norm == 0.3


def check_seed(run):
    assert run.trainer.args.seed == 11 and run.trainer.args.data_seed == 11


def check_epochs(run):
    args = run.trainer.args
    assert args.num_train_epochs == 2.0 and args.max_steps == -1


def check_max_steps(run):
    assert run.trainer.args.max_steps == 9


def check_logging_steps(run):
    assert run.trainer.args.logging_steps == 3


def check_save_steps(run):
    assert run.trainer.args.save_steps == 4


def check_save_total_limit(run):
    assert run.sync.keep_last == 2 and run.sync.rotate == 2  # the sync callback rotates, not the Trainer
    assert run.trainer.args.save_total_limit is None


def check_eval_steps(run):
    args = run.trainer.args
    assert args.eval_strategy == "steps" and args.eval_steps == 2 and len(run.trainer.eval_dataset) == 8


def check_per_device_eval_batch_size(run):
    assert run.trainer.args.per_device_eval_batch_size == 3
    assert run.trainer.get_eval_dataloader().total_batch_size == 3


def check_early_stopping(run):
    from transformers import EarlyStoppingCallback

    stopping = [c for c in run.trainer.callback_handler.callbacks if isinstance(c, EarlyStoppingCallback)]
    assert [c.early_stopping_patience for c in stopping] == [2]
    assert run.trainer.args.metric_for_best_model == "eval_loss" and run.trainer.args.greater_is_better is False


def check_per_epoch(run):
    from ftctl.trainer.callbacks import StepsAsGiven

    (given,) = [c for c in run.trainer.callback_handler.callbacks if isinstance(c, StepsAsGiven)]
    assert (given.saves, given.evals) == (2, 3)


def check_gradient_checkpointing(run):
    args = run.trainer.args
    assert args.activation_checkpointing is True and args.activation_checkpointing_kwargs == {"use_reentrant": False}


def check_model_max_length(run):
    assert run.trainer.args.max_length == 40
    lengths = [len(ids) for ids in run.trainer.train_dataset["input_ids"]]
    assert max(lengths) == 40  # the demo rows are longer: cut there


def check_packing(run):
    trainer = run.trainer
    assert trainer.args.packing is True and trainer.args.padding_free is True
    lengths = [len(ids) for ids in trainer.train_dataset["input_ids"]]
    assert len(lengths) < 48 and max(lengths) <= 64  # rows packed together, up to model_max_length


def check_assistant_only_loss_off(run):
    labels = run.trainer.train_dataset["labels"]
    assert all(-100 not in row for row in labels)


def check_assistant_only_loss_on(run):
    labels = run.trainer.train_dataset["labels"]
    assert all(-100 in row for row in labels) and all(any(t != -100 for t in row) for row in labels)


def check_trainable_layers(run):
    assert _trainable(run.trainer.model) == {
        "lm_head",
        "model.norm",
        *(
            f"model.layers.1.{m}"
            for m in (
                "input_layernorm",
                "post_attention_layernorm",
                "self_attn.q_proj",
                "self_attn.k_proj",
                "self_attn.v_proj",
                "self_attn.o_proj",
                "mlp.gate_proj",
                "mlp.up_proj",
                "mlp.down_proj",
            )
        ),
    }


def check_fft_trains_everything(run):
    assert all(p.requires_grad for p in run.trainer.model.parameters())


def check_report_to(run):
    from transformers.integrations import TensorBoardCallback

    assert run.trainer.args.report_to == ["tensorboard"]
    assert any(isinstance(c, TensorBoardCallback) for c in run.trainer.callback_handler.callbacks)


def check_lora(run):
    import torch

    config = run.trainer.model.peft_config["default"]
    assert (config.r, config.lora_alpha, config.lora_dropout) == (4, 8, 0.1)
    assert set(config.target_modules) == {"q_proj", "v_proj"} and not config.use_rslora and not config.use_dora
    layers = _lora_layers(run.trainer.model)
    assert sorted({name.rsplit(".", 1)[-1] for name in layers}) == ["q_proj", "v_proj"] and len(layers) == 4
    for layer in layers.values():
        assert layer.r["default"] == 4 and layer.scaling["default"] == 2.0  # alpha / r
        assert isinstance(layer.lora_dropout["default"], torch.nn.Dropout) and layer.lora_dropout["default"].p == 0.1
        assert layer.lora_A["default"].weight.shape[0] == 4
    assert all(".lora_" in name for name in _trainable(run.trainer.model))


def check_all_linear(run):
    names = {name.rsplit(".", 1)[-1] for name in _lora_layers(run.trainer.model)}
    assert names == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def check_rslora(run):
    assert run.trainer.model.peft_config["default"].use_rslora
    for layer in _lora_layers(run.trainer.model).values():
        assert _close(layer.scaling["default"], 32 / math.sqrt(4))  # alpha / sqrt(r)


def check_dora(run):
    assert run.trainer.model.peft_config["default"].use_dora
    assert any("lora_magnitude_vector" in name for name in _trainable(run.trainer.model))


def check_optim_adamw_torch(run):
    import torch

    run.trainer.create_optimizer_and_scheduler(num_training_steps=STEPS)
    assert type(run.trainer.optimizer) is torch.optim.AdamW and not run.trainer.optimizer.defaults.get("fused")


def check_optim_sgd(run):
    import torch

    run.trainer.create_optimizer_and_scheduler(num_training_steps=STEPS)
    assert type(run.trainer.optimizer) is torch.optim.SGD


def check_batch(run):
    args = run.trainer.args
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (1, 4)


def check_global_batch_size(run):
    args = run.trainer.args
    assert args.per_device_train_batch_size * args.gradient_accumulation_steps == 8


def check_ddp_bucket_cap_mb(run):
    assert run.trainer.accelerator.ddp_handler.bucket_cap_mb == 50


def check_attn_implementation(run):
    assert run.trainer.model.config._attn_implementation == "eager"


def check_qlora(run):
    base = run.trainer.model.get_base_model()
    quant = base.hf_quantizer.quantization_config
    assert quant.load_in_4bit and quant.bnb_4bit_quant_type == "nf4" and quant.bnb_4bit_use_double_quant
    layer = next(iter(_lora_layers(run.trainer.model).values()))
    assert type(layer.base_layer).__name__ == "Linear4bit" and layer.r["default"] == 8


CASES = {  # id: (method, the run keys set, the check of the built trainer)
    "learning_rate": ("lora", {"learning_rate": 3e-4}, check_learning_rate),
    "weight_decay": ("fft", {"weight_decay": 0.1}, check_weight_decay),
    "warmup_ratio": ("lora", {"warmup_ratio": 0.1}, check_warmup_ratio),
    "warmup_steps": ("lora", {"warmup_steps": 3}, check_warmup_steps),
    "lr_scheduler_type=linear": ("lora", {"lr_scheduler_type": "linear"}, check_linear),
    "lr_scheduler_type=constant+warmup": (
        "qlora",
        {"lr_scheduler_type": "constant", "warmup_ratio": 0.1},
        check_constant_warms_up,
    ),
    "lr_scheduler_type=constant": ("lora", {"lr_scheduler_type": "constant"}, check_constant),
    "lr_scheduler_kwargs=min_lr_rate": (
        "lora",
        {"lr_scheduler_type": "cosine_with_min_lr", "lr_scheduler_kwargs": {"min_lr_rate": "0.1"}},
        check_min_lr_rate,
    ),
    "lr_scheduler_kwargs=num_cycles": ("lora", {"lr_scheduler_kwargs": {"num_cycles": "1"}}, check_num_cycles),
    "max_grad_norm": ("lora", {"max_grad_norm": 0.3}, check_max_grad_norm),
    "seed": ("lora", {"seed": 11}, check_seed),
    "num_train_epochs": ("lora", {"num_train_epochs": 2.0, "max_steps": -1}, check_epochs),
    "max_steps": ("lora", {"max_steps": 9}, check_max_steps),
    "logging_steps": ("lora", {"logging_steps": 3}, check_logging_steps),
    "save_steps": ("lora", {"save_steps": 4}, check_save_steps),
    "save_total_limit": ("lora", {"save_total_limit": 2}, check_save_total_limit),
    "eval_steps": ("lora", {"eval_split": 8, "eval_steps": 2}, check_eval_steps),
    "per_device_eval_batch_size": (
        "lora",
        {"eval_split": 8, "per_device_eval_batch_size": 3},
        check_per_device_eval_batch_size,
    ),
    "early_stopping_patience": ("lora", {"eval_split": 8, "early_stopping_patience": 2}, check_early_stopping),
    "saves_per_epoch+evals_per_epoch": (
        "lora",
        {"eval_split": 8, "saves_per_epoch": 2, "evals_per_epoch": 3, "save_steps": None},
        check_per_epoch,
    ),
    "gradient_checkpointing": ("lora", {"gradient_checkpointing": True}, check_gradient_checkpointing),
    "model_max_length": ("lora", {"model_max_length": 40}, check_model_max_length),
    "packing": ("lora", {"packing": True, "model_max_length": 64}, check_packing),
    "assistant_only_loss=false": ("lora", {"assistant_only_loss": False}, check_assistant_only_loss_off),
    "assistant_only_loss=true": ("lora", {}, check_assistant_only_loss_on),
    "trainable_layers": ("sft", {"trainable_layers": 1}, check_trainable_layers),
    "method=fft": ("fft", {}, check_fft_trains_everything),
    "report_to": ("lora", {"report_to": "tensorboard"}, check_report_to),
    "lora_r+alpha+dropout+target_modules": (
        "lora",
        {"lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.1, "lora_target_modules": "q_proj,v_proj"},
        check_lora,
    ),
    "lora_target_modules=all": ("lora", {"lora_target_modules": "all"}, check_all_linear),
    "use_rslora": ("lora", {"use_rslora": True, "lora_r": 4}, check_rslora),
    "use_dora": ("lora", {"use_dora": True, "lora_r": 4}, check_dora),
    "optim=adamw_torch": ("lora", {"optim": "adamw_torch"}, check_optim_adamw_torch),
    "optim=sgd": ("fft", {"optim": "sgd"}, check_optim_sgd),
    "per_device_train_batch_size+gradient_accumulation_steps": (
        "lora",
        {"per_device_train_batch_size": 1, "gradient_accumulation_steps": 4, "global_batch_size": None},
        check_batch,
    ),
    "global_batch_size": ("lora", {"global_batch_size": 8}, check_global_batch_size),
    "ddp_bucket_cap_mb": ("lora", {"ddp_bucket_cap_mb": 50}, check_ddp_bucket_cap_mb),
    "attn_implementation": ("lora", {"attn_implementation": "eager"}, check_attn_implementation),
    "method=qlora": ("qlora", {"lora_r": 8}, check_qlora),
}

# training keys whose value this CPU check cannot hold up, and where it is checked instead
ELSEWHERE = {
    "model_name_or_path": "the fixture's tiny model is the run's model in every case",
    "model_params": "the planner's size of a model whose config cannot be read (test_plan)",
    "data_path": "every case trains the fixture's data (test_data)",
    "data_weights": "data.build_datasets' mix (test_data_mix)",
    "data_columns": "a dataset's own field names renamed and trained (test_foreign159_patched)",
    "dataset_text_field": "data.build_datasets' plain-text rows read from it (test_explore29)",
    "eval_split": "held out in the eval cases here; its rows: test_evaluation",
    "bf16": "CPU trains in fp32 (the plan says so); GPU precision: test_plan, bench",
    "fp16": "CPU trains in fp32 (the plan says so); GPU precision: test_plan, bench",
    "strategy": "DeepSpeed and FSDP settings: test_trainer's deepspeed tests, test_distributed",
    "ddp_comm_dtype": "NCCL only (plan refuses bf16 all-reduce on CPU)",
    "lora_model_dir": "the built trainer's adapters at step 0 equal the adapter's (test_init_adapter308)",
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_key_set_reaches_the_built_trainer(case, tiny_model_dir, tiny_data, tmp_path, one_thread):
    method, overrides, check = CASES[case]
    check(_built(tiny_model_dir, tiny_data, tmp_path, method, overrides))


def test_a_chat_template_path_is_what_the_trainer_tokenizes_with(tiny_model_dir, tiny_data, tmp_path, one_thread):
    from tests.tiny_fixtures import CHATML_TEMPLATE

    template = tmp_path / "template.jinja"
    template.write_text(CHATML_TEMPLATE + "{# the run's own #}")
    run = _built(tiny_model_dir, tiny_data, tmp_path, "lora", {"chat_template_path": str(template)})
    assert run.trainer.processing_class.chat_template == template.read_text()


def test_every_training_key_is_checked():
    """A key that changes the trained weights (spec.TRAINING_KEYS) has a case above, or says where it is checked."""
    from ftctl.spec import TRAINING_KEYS

    covered = {key for _, overrides, _ in CASES.values() for key in overrides} | {"method", "chat_template_path"}
    assert sorted(set(TRAINING_KEYS) - covered - set(ELSEWHERE)) == []
