"""RunSpec: the one typed description of a run.

Built from an optional YAML file (``-c run.yaml``), then command-line flags, then ``-o key=value``
overrides, later ones winning. Keys follow FastChat's train script and TRL/PEFT
(``model_name_or_path``, ``per_device_train_batch_size``, ``lora_r`` ...). Every default lives here,
in the field declarations; ``None`` means "the planner decides" (see ftctl/plan.py). Other tools' names of keys
and values are in ftctl/tool_vocabulary.py, their dataset entries in ftctl/tool_datasets.py; the credential checks of
user values in ftctl/secret_checks.py.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import math
import os
import re
import shlex
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from ftctl import envvars, storage
from ftctl.errors import FtctlError, did_you_mean, read_config_text, yaml_problem
from ftctl.secret_checks import (
    ENV_NAME_PATTERN,
    credential_in,
    holds_credential,
    is_secret_name,
    key_value_said,
    path_like,
    secret_holders,
    secret_problem,
    setup_secret_problem,
    uri_credentials,
    uri_credentials_said,
    written_credential_said,
)
from ftctl.tool_datasets import (
    AXOLOTL_DATASET_KEYS,
    LF_INFO,
    LF_NAMED,
    LF_SPLIT,
    MIX_KEYS,
    TURN_KEYS,
    axolotl_columns,
    axolotl_dataset_refuses,
    data_columns_problems,
    dataset_as_data_path,
    dataset_mixer_as_weights,
    dataset_templates,
    llama_factory_max_samples,
    llama_factory_mix,
    llama_factory_unread,
    templates_apart,
)
from ftctl.tool_vocabulary import (
    ADAPTER_METHODS,
    ALIASES,
    DECIDED,
    DTYPE_KEYS,
    LEFT_OUT,
    LLAMA_FACTORY_LORA,
    MEANT,
    METHOD_AGREES,
    NESTED_UNREAD,
    NO_TRUNCATION,
    PER_EPOCH,
    READ_BESIDE,
    STEPS_OF,
    YAML_VALUES_MAX,
    axolotl_fsdp_merged,
    canonical_key,
    config_text,
    config_word,
    deepspeed_strategy,
    dtype_precision,
    eos_token_problem,
    eot_tokens_problem,
    fsdp_config_read,
    is_fsdp_full_shard,
    linear_with_named,
    method_meant,
    named_template_problem,
    nested_kwargs_flattened,
    precision_asked,
    untemplated_types_note,
    value_agrees,
    wandb_as_report_to,
    yaml_value,
    yaml_values,
)

METHODS = ("fft", "sft", "lora", "qlora")
BACKENDS = ("local", "slurm", "sky", "docker")
RUNS_HERE = ("local", "docker")  # backends whose trainer runs on this machine: a path it reads is this machine's
STRATEGIES = ("single", "ddp", "zero2", "zero2_offload", "zero3", "zero3_offload", "fsdp")
# The strategies the trainer runs each method under, and why not the others: a forced one outside them is refused
# before anything starts (FSDP2 of a uint8 4-bit base crashes or, bypassed, trains on destroyed quantization
# states: loss 0, grad norm NaN, accelerate#3983).
METHOD_STRATEGIES = {
    "fft": (STRATEGIES, ""),
    "sft": (("single", "ddp", "zero2", "zero3"), "sft's frozen blocks and trained top run under DDP or ZeRO-2/3"),
    "lora": (("single", "ddp", "fsdp"), "LoRA runs under DDP, or FSDP2 where its frozen base must be sharded"),
    "qlora": (
        ("single", "ddp"),
        "its 4-bit base is not sharded (bitsandbytes' packed uint8 weights lose their quantization state under "
        "FSDP2 and ZeRO-3); for a model one GPU cannot hold even in 4 bits: --method lora with -o strategy=fsdp",
    ),
}
DDP_COMM_DTYPES = ("fp32", "bf16")
# SkyPilot's tiers a run may ask for (-o network_tier, -o disk_tier): standard and default leave the task's field out,
# as SkyPilot's default (a field given, even its default, no longer fits a cluster launched without it)
NETWORK_TIERS = ("standard", "best")
DISK_TIERS = ("default", "best")
ATTENTION = ("varlen", "flash_attention_2", "sdpa", "eager")  # varlen: see ftctl/trainer/attention.py
# transformers' OptimizerNames (the launcher has no transformers to ask; tests/test_spec.py compares the two)
OPTIMIZERS = (
    *("adamw_torch", "adamw_torch_fused", "adamw_torch_xla", "adamw_torch_npu_fused", "adafactor"),
    *("adamw_anyprecision", "adamw_torch_4bit", "adamw_torch_8bit", "ademamix", "sgd", "adagrad", "adamw_bnb_8bit"),
    *("adamw_8bit", "ademamix_8bit", "lion_8bit", "lion_32bit", "paged_adamw_32bit", "paged_adamw_8bit"),
    *("paged_ademamix_32bit", "paged_ademamix_8bit", "paged_lion_32bit", "paged_lion_8bit", "rmsprop"),
    *("rmsprop_bnb", "rmsprop_bnb_8bit", "rmsprop_bnb_32bit", "galore_adamw", "galore_adamw_8bit", "galore_adafactor"),
    *("galore_adamw_layerwise", "galore_adamw_8bit_layerwise", "galore_adafactor_layerwise", "lomo", "adalomo"),
    *("grokadamw", "schedule_free_radam", "schedule_free_adamw", "schedule_free_sgd", "apollo_adamw"),
    *("apollo_adamw_layerwise", "stable_adamw"),
)

DEMO_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEMO_DATA = "builtin:demo"
# the defaults of keys that another key replaces (None in RunSpec: given or not is known, and a conflict said)
GLOBAL_BATCH_SIZE = 32  # without gradient_accumulation_steps
SAVE_STEPS = 100  # without saves_per_epoch, unless a GPU plan's step time makes it wrong (plan.checkpoint_cadence)
WARMUP_RATIO = 0.03  # without warmup_steps
IMPLIED = {"global_batch_size": GLOBAL_BATCH_SIZE, "save_steps": SAVE_STEPS, "warmup_ratio": WARMUP_RATIO}


def warmup_of(warmup_steps, warmup_ratio):
    """The warm-up transformers' warmup_steps is given (RunSpec.warmup; a card reads it from spec.json's values):
    warmup_steps where set, else warmup_ratio, else WARMUP_RATIO; below 1 a fraction of the steps, else a number."""
    if warmup_steps is not None:
        return warmup_steps
    return WARMUP_RATIO if warmup_ratio is None else warmup_ratio


def as_run(key: str, value):
    """A key's value as the run takes it: an IMPLIED key not given, at its default (runs record and compare these)."""
    return IMPLIED[key] if value is None and key in IMPLIED else value


# Learning rates that work for each method (FastChat uses 2e-5 for full fine-tuning; QLoRA paper 2e-4).
METHOD_LEARNING_RATE = {"fft": 2e-5, "sft": 2e-5, "lora": 2e-4, "qlora": 2e-4}
# Secrets passed to every job by name unless a run file's secrets list, or -o secrets=none, says otherwise (gated
# models, pushes to the hub); each tracker's key only to a job that reports to it (REPORT_SECRETS): default_secrets
SECRETS = ["HF_TOKEN"]
REPORT_SECRETS = {"wandb": "WANDB_API_KEY"}
# Each tracker's own settings variables (no secrets) that a job reporting to it gets by name where they are set where it
# launches (report_settings): a SkyPilot job or a docker container inherits nothing of that shell, and an `export
# WANDB_PROJECT=x` (W&B's documented way) logged to W&B's default project unsaid. Not its paths (WANDB_DIR ...: this
# machine's), nor WANDB_NAME or WANDB_RUN_ID (one shell's would name every run alike).
REPORT_SETTINGS = {
    "wandb": (
        *("WANDB_PROJECT", "WANDB_ENTITY", "WANDB_BASE_URL", "WANDB_RUN_GROUP", "WANDB_TAGS", "WANDB_NOTES"),
        *("WANDB_MODE", "WANDB_JOB_TYPE"),
    )
}
REPORT_TO = ("none", "tensorboard", "wandb")
# report_to's names transformers takes that ftctl does not set up (MLflow's, trackio's... store, run id across
# attempts and copy with the output are not ftctl's): refused, saying what works instead (report_integrations)
OTHER_TRACKERS = (
    "azure_ml", "clearml", "codecarbon", "comet_ml", "dagshub", "dvclive", "flyte", "kubeflow", "mlflow", "neptune",
    "swanlab", "trackio",
)  # fmt: skip


LORA_KEYS = ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "use_rslora", "use_dora")
PEFT_TARGETS = "peft-default"  # lora_target_modules: PEFT's own for the model's type (plan.with_lora_targets)
LORA_LEAST_LR = 1e-4  # a rate below this (run file, -o), no method given, is full fine-tuning's: build asks which
# Other tools' defaults that change what trains, taken where a run file in that tool's vocabulary (a key only it has,
# VOCABULARY) leaves the key out, noted: its user's file trains as it did there. TRL's SFTConfig cuts at 1024 tokens
# (max_length; older TRL's max_seq_length: min(the tokenizer's, 1024)) and keeps transformers' linear schedule without
# warm-up; LoRA in TRL adapts PEFT's default modules for the model's type (its ModelConfig's lora_target_modules
# None: q_proj, v_proj in Llama, Qwen, Mistral, Gemma; c_attn in GPT-2; none for Phi-3: PEFT_TARGETS), FastChat's
# train_lora.py its own (q_proj, v_proj whatever the model, at rank 8, alpha 16).
VOCABULARY = {
    "TRL": (
        *("dataset_name", "use_peft", "dataset_text_field", "completion_only_loss", "dataset_train_split"),
        *("dataset_test_split", "dataset_config", "dataset_streaming", "eos_token", "pad_token", "padding_free"),
        *("packing_strategy", "eval_packing", "loss_type", "activation_offloading", "use_bnb_nested_quant"),
        *("model_init_kwargs", "dataset_kwargs", "dataset_mixer", "dataset_splits"),  # (the alignment handbook's: TRL)
    ),
    "FastChat": ("q_lora",),  # its train_lora.py's
    # (raw names only axolotl gives; its num_epochs, lr_scheduler, optimizer are other tools' words too)
    "axolotl": (
        *("base_model", "sequence_len", "micro_batch_size", "adapter", "val_set_size", "lora_target_linear"),
        *("sample_packing", "datasets", "test_datasets", "train_on_inputs"),
    ),
    "LLaMA-Factory": ("stage", "finetuning_type", "cutoff_len", "val_size", "lora_target", "quantization_bit"),
}
# axolotl's schema: sequence_len 512 (a longer row dropped, cut here), lora_dropout 0.0; its cosine, 1 epoch and
# warm-up are ftctl's. LLaMA-Factory's TrainingArguments are transformers' Seq2SeqTrainingArguments untouched: 3
# epochs, a linear schedule without warm-up (its cutoff_len 2048 is ftctl's); its LoRA rank 8, dropout 0, alpha twice
# the rank (LLAMA_FACTORY_LORA)
TOOL_DEFAULTS = {  # (and transformers' TrainingArguments' 3 epochs, which TRL and FastChat inherit)
    "TRL": {"model_max_length": 1024, "lr_scheduler_type": "linear", "warmup_ratio": 0.0, "num_train_epochs": 3.0},
    "FastChat": {"model_max_length": 512, "num_train_epochs": 3.0},  # its train.py's and train_lora.py's
    "axolotl": {"model_max_length": 512},
    "LLaMA-Factory": {"num_train_epochs": 3.0, "lr_scheduler_type": "linear", "warmup_ratio": 0.0},
}
TOOL_LORA_DEFAULTS = {  # (where the run trains adapters; a callable: of the values so far)
    "TRL": {"lora_target_modules": PEFT_TARGETS},
    "FastChat": {"lora_r": 8, "lora_alpha": 16, "lora_target_modules": "q_proj,v_proj"},
    "axolotl": {"lora_dropout": 0.0},
    "LLaMA-Factory": {**LLAMA_FACTORY_LORA, "lora_alpha": lambda values: 2 * values["lora_r"]},
}
# Other tools' default learning rate, said where ftctl's for the method (METHOD_LEARNING_RATE) differs: transformers'
# 5e-5 (LLaMA-Factory's examples give 1e-4 with LoRA, 1e-5 full), TRL's SFTConfig 2e-5
TOOL_LEARNING_RATE = {"TRL": 2e-5, "LLaMA-Factory": 5e-5}
# Other tools' defaults ftctl does not take (its own is a documented choice), noted where a run file in that tool's
# vocabulary leaves the key out: what ftctl's does, and how to have the tool's
TOOL_DEFAULTS_NOT_TAKEN = {
    "TRL": {
        # (where no layer gives the method: neither use_peft nor --method)
        "method": "TRL's sft trains every weight unless use_peft: true asks for adapters (the CLI docs' sft_config.yaml "
        "is a full fine-tune): --method fft (or use_peft: false) for TRL's",
        "assistant_only_loss": "ftctl trains a conversation's assistant turns only (a prompt-completion row's "
        "completion, as TRL does); TRL trains a conversation's every token (its assistant_only_loss false), as "
        "-o assistant_only_loss=false does here (a prompt-completion row's prompt then trains too)",
        # (where the run trains adapters: ftctl's fft/sft rate is TRL's 2e-5)
        "learning_rate": "TRL's SFTConfig trains at 2e-5 unless told (its LoRA examples give 2e-4, as ftctl does): "
        "-o learning_rate=2e-5 for TRL's",
        # (where no layer gives a batch key: BATCH_KEYS). ftctl's batch is the step's over all GPUs, its micro-batch
        # what fits (plan.py); TRL's grows with the GPUs, and 8 long rows a GPU may not fit
        "global_batch_size": "sequences a step over all GPUs, accumulated from micro-batches that fit; TRL's SFTConfig "
        "steps after 8 a GPU (per_device_train_batch_size 8, gradient_accumulation_steps 1): -o "
        "per_device_train_batch_size=8 -o gradient_accumulation_steps=1 for TRL's",
        # (where gradient_accumulation_steps alone is given: the planner's micro-batch, plan._micro_sizes, times it)
        "per_device_train_batch_size": "ftctl's micro-batch is the largest that fits up to its global batch of "
        "{global_batch} sequences over all GPUs (at least 1 a GPU), and a step accumulates {accum} of them (`ftctl "
        "plan` says the batch); TRL's SFTConfig takes 8 a GPU, a step of 8 x {accum} a GPU: -o "
        "per_device_train_batch_size=8 for TRL's",
    },
    "axolotl": {
        # axolotl's 1 x 1 a GPU is not taken: none of its example files leaves the batch out, a step of one sequence
        # a GPU is 32 times the steps of ftctl's, and a batch a GPU changes the run with the GPUs the plan picks
        "global_batch_size": "sequences a step over all GPUs, accumulated from micro-batches that fit; axolotl steps "
        "after 1 a GPU (micro_batch_size 1, gradient_accumulation_steps 1): -o micro_batch_size=1 -o "
        "gradient_accumulation_steps=1 for axolotl's",
        "per_device_train_batch_size": "ftctl's micro-batch is the largest that fits up to its global batch of "
        "{global_batch} sequences over all GPUs (at least 1 a GPU), and a step accumulates {accum} of them (`ftctl "
        "plan` says the batch); axolotl's micro_batch_size is 1, a step of {accum} a GPU: -o micro_batch_size=1 for "
        "axolotl's",
    },
    "LLaMA-Factory": {  # transformers' (its TrainingArguments')
        "learning_rate": "LLaMA-Factory trains at transformers' 5e-5 unless told (its examples give 1e-4 with LoRA, "
        "1e-5 full): -o learning_rate=5e-5 for LLaMA-Factory's",
        "global_batch_size": "sequences a step over all GPUs, accumulated from micro-batches that fit; LLaMA-Factory "
        "steps after transformers' 8 a GPU (per_device_train_batch_size 8, gradient_accumulation_steps 1): -o "
        "per_device_train_batch_size=8 -o gradient_accumulation_steps=1 for LLaMA-Factory's",
        "per_device_train_batch_size": "ftctl's micro-batch is the largest that fits up to its global batch of "
        "{global_batch} sequences over all GPUs (at least 1 a GPU), and a step accumulates {accum} of them (`ftctl "
        "plan` says the batch); LLaMA-Factory takes transformers' 8 a GPU, a step of 8 x {accum} a GPU: -o "
        "per_device_train_batch_size=8 for LLaMA-Factory's",
    },
}
BATCH_KEYS = ("global_batch_size", "per_device_train_batch_size", "gradient_accumulation_steps")
# fields that make a row a conversation or a prompt-completion (trainer/formats.to_row), never a plain-text one
CONVERSATION_FIELDS = ("conversations", "messages", "instruction", "output", "prompt", "completion")


LAYERS = ("run file", "flag", "-o")  # build's layers, later ones winning


def _evaluation_asked(spec, asked: dict[str, tuple[str, str]], sources: dict[str, str], notes=None) -> list[str]:
    """FastChat's evaluation_strategy (TRL's eval_strategy) against the held-out data the run has: "steps" or "epoch"
    without any asks for what the run would not do; "no" beside held-out data the same layer or a later one gives
    too (a share of the rows held out and never measured, or a file not read: which was meant is a guess). Held-out
    data a later layer gives wins, noted (FastChat's --evaluation_strategy no, then --eval-data on the command
    line)."""
    errors = []
    held_out = [k for k in ("eval_data_path", "eval_split") if getattr(spec, k)]
    for name, (word, source) in asked.items():
        if word in ("steps", "true", "epoch") and not spec.evaluates:  # do_eval's true
            errors.append(
                f"{name}: {word}, without held-out data: give it (--eval-data FILE, or -o eval_split=0.05), or leave "
                f"{name} out."
            )
        elif word in ("steps", "true", "epoch"):
            continue
        elif spec.evaluates and all(LAYERS.index(sources[k]) > LAYERS.index(source) for k in held_out):
            notes is None or notes.append(
                f"{name}: {word} ({source}) gives way to {', '.join(f'{k} ({sources[k]})' for k in held_out)}: the "
                f"held-out loss is measured {spec.eval_when} and at the end"
            )
        elif spec.evaluates:
            errors.append(
                f"{name}: {'false' if word == 'false' else 'no'}, beside held-out data (eval_data_path or eval_split), "
                f"which is evaluated {spec.eval_when}: leave {name} out to measure it, or the held-out data out "
                "(-o eval_split=0, no --eval-data) to train without."
            )
    return errors


def _templates_asked(spec, asked: list[tuple[str, str]], notes=None) -> list[str]:
    """axolotl's chat_template / LLaMA-Factory's template by name, the top-level one and axolotl's datasets entries'
    own (``asked``: each as said, and the name): one refusal where they are of different formats (templates_apart),
    else each taken where the model's own template is that format (named_template_problem), the others refused."""
    if apart := templates_apart(asked):
        return [apart]
    return [problem for each in asked if (problem := named_template_problem(spec, *each, notes))]


def _positive(raw) -> bool:
    """Whether a number key's value as a layer gave it (text from -o, a number from a file) is above 0."""
    try:
        return float(raw) > 0
    except (TypeError, ValueError):
        return False


def _vocabularies(layers) -> dict[str, list[str]]:
    """The tools (VOCABULARY) whose own keys the run file has, and those keys: TRL's dataset_name or use_peft,
    FastChat's q_lora."""
    given = [  # (left empty, a key asks for nothing)
        str(k).strip().replace("-", "_")
        for source, items in layers
        if source == "run file"
        for k, v in items
        if v not in (None, "", {}, [])
    ]
    found = {tool: [k for k in given if k in keys] for tool, keys in VOCABULARY.items()}
    return {tool: keys for tool, keys in found.items() if keys}


def _tool_defaults(values: dict, tools: dict[str, list[str]], notes=None) -> None:
    """Each of ``tools``' defaults (TOOL_DEFAULTS; TOOL_LORA_DEFAULTS where the run trains adapters) that no layer
    gave, into ``values``, noted with ftctl's own and how to keep it; those ftctl does not take
    (TOOL_DEFAULTS_NOT_TAKEN) noted with the tool's and how to have it. ``tools``: the tool, and its keys the run file
    has."""
    for tool, keys in tools.items():
        defaults = dict(TOOL_DEFAULTS[tool])
        if values.get("method", FIELDS["method"].default) in ADAPTER_METHODS:
            defaults.update(TOOL_LORA_DEFAULTS[tool])
        if "warmup_steps" in values:  # it replaces warmup_ratio
            defaults.pop("warmup_ratio", None)
        if _positive(values.get("max_steps")):  # it decides the run's length
            defaults.pop("num_train_epochs", None)
        taken = {}
        for k, v in defaults.items():
            if k not in values:
                taken[k] = values[k] = v(values) if callable(v) else v
        # said where they differ from ftctl's own (LLaMA-Factory's alpha, twice a rank of 16, is ftctl's 32)
        taken = {k: v for k, v in taken.items() if as_run(k, FIELDS[k].default) != v}
        if taken and notes is not None:
            said = ", ".join(f"{k} {_number(v)}" for k, v in taken.items())
            ours = " ".join(f"-o {k}={_number(as_run(k, FIELDS[k].default))}" for k in taken)
            notes.append(
                f"{said}: {tool}'s defaults, which a run file in its vocabulary ({', '.join(keys)}) trains with where it "
                f"leaves them out; ftctl's own: {ours}"
            )
        method = values.get("method", FIELDS["method"].default)
        for key, why in TOOL_DEFAULTS_NOT_TAKEN.get(tool, {}).items():
            if key == "learning_rate" and TOOL_LEARNING_RATE[tool] == METHOD_LEARNING_RATE[method]:
                continue
            if key == "per_device_train_batch_size":  # gradient_accumulation_steps alone: of ftctl's micro-batches
                alone = "gradient_accumulation_steps" in values and not {key, "global_batch_size"} & values.keys()
                if alone and notes is not None:
                    accum = values["gradient_accumulation_steps"]
                    notes.append(
                        f"gradient_accumulation_steps {accum} without {key}, in a run file in {tool}'s vocabulary "
                        f"({', '.join(keys)}): " + why.format(accum=accum, global_batch=GLOBAL_BATCH_SIZE)
                    )
                continue
            if key in BATCH_KEYS and any(k in values for k in BATCH_KEYS):  # per_device alone: plan.py's note
                continue
            if key not in values and notes is not None:
                default = METHOD_LEARNING_RATE[method] if key == "learning_rate" else FIELDS[key].default
                ours = config_text(as_run(key, default))
                notes.append(
                    f"{key} {ours}, ftctl's default, in a run file in {tool}'s vocabulary ({', '.join(keys)}): {why}"
                )


TRL_COMPLETION_SAID = "completion_only_loss: TRL's, for prompt-completion rows"  # how `ftctl keys` names it


def _trl_loss(completion, values: dict, sources: dict, trl_file: bool, notes=None, order=()) -> None:
    """TRL's two loss switches onto ftctl's one. TRL's completion_only_loss trains a prompt-completion row's completion
    only (its default, None, does for such rows), its assistant_only_loss a conversation's assistant turns only
    (default false: every token); either leaves the other kind of row alone. ftctl's assistant_only_loss is both (a
    conversation's assistant turns, a prompt-completion row's completion; false: every token of every row). Where
    assistant_only_loss is given it decides, and a completion_only_loss that differs is said: prompt-completion rows
    train otherwise than TRL's. Alone, completion_only_loss false is assistant_only_loss false (every token, as TRL
    trains both kinds then); true asks for what ftctl's default does to prompt-completion rows, and conversations
    keep ftctl's assistant turns only, said where the TRL run file's note (TOOL_DEFAULTS_NOT_TAKEN) is not. Given by a
    later layer than assistant_only_loss (-o completion_only_loss=false over a run file's assistant_only_loss: true),
    completion_only_loss wins, as any later layer's key does, and what that does to conversations is said.
    ``completion``: (value, how it was given, its layer), None where no layer gave it; ``trl_file``: the run file is
    in TRL's vocabulary; ``order``: the layers' names, first to last."""
    if completion is None:
        return
    value, said, source = completion
    if "assistant_only_loss" not in values:
        if not value:
            values["assistant_only_loss"], sources["assistant_only_loss"] = False, source
        elif not trl_file and notes is not None:
            notes.append(
                f"{said}: a prompt-completion row trains its completion only, as in TRL; a conversation its assistant "
                "turns only, ftctl's default, where TRL trains its every token (its assistant_only_loss false): "
                "-o assistant_only_loss=false for that (a prompt-completion row's prompt then trains too)"
            )
        return
    rank = {layer: i for i, layer in enumerate(order)}
    if values["assistant_only_loss"] != value and rank.get(source, -1) > rank.get(sources["assistant_only_loss"], -1):
        before = f"assistant_only_loss: {config_text(values['assistant_only_loss'])} ({sources['assistant_only_loss']})"
        values["assistant_only_loss"], sources["assistant_only_loss"] = value, source
        notes is None or notes.append(
            f"{said}, the later layer, wins over {before}; ftctl has one switch for both: "
            + (
                "assistant_only_loss: true here, a conversation trains its assistant turns only too (TRL's "
                "assistant_only_loss: false trains its every token)"
                if value
                else "assistant_only_loss: false here, every token of every row trains, a conversation's too (TRL's "
                "assistant_only_loss: true trains its assistant turns only)"
            )
        )
        return
    if values["assistant_only_loss"] != value and notes is not None:
        a = config_text(values["assistant_only_loss"])
        notes.append(
            f"{said} and assistant_only_loss: {a} ({sources['assistant_only_loss']}): ftctl has one switch for both, "
            + (
                "assistant_only_loss: false here: every token of every row trains, a prompt-completion row's prompt "
                "too, where TRL trains its completion only; for that, leave assistant_only_loss out (a conversation "
                "then trains its assistant turns only)"
                if value
                else "assistant_only_loss: true here: a prompt-completion row trains its completion only, where TRL "
                "trains it whole; for that, assistant_only_loss: false (a conversation then trains its every token)"
            )
        )


def _number(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _evaluated_every_logging(spec, given: dict, asked: dict[str, tuple[str, str]], sources: dict[str, str]) -> str:
    """transformers' eval_strategy: steps without eval_steps evaluates every logging_steps (TrainingArguments'
    __post_init__): where a layer gives logging_steps, ``spec``'s eval_steps is it; where none does, what is said is
    when the held-out loss is measured here instead (transformers' logging_steps being its own). ``given``: the keys
    the layers gave. Returns the note ('' where there is none)."""
    named = next((f"{name} ({source})" for name, (word, source) in asked.items() if word == "steps"), None)
    if not named or not spec.evaluates or "eval_steps" in given or "evals_per_epoch" in given:
        return ""
    if "logging_steps" not in given:
        return (
            f"{named} without eval_steps: the held-out loss is measured {spec.eval_when} here; transformers measures "
            "it every logging_steps (its default 500, TRL's 10): -o eval_steps=N for another"
        )
    spec.eval_steps = spec.logging_steps
    return (
        f"eval_steps {spec.eval_steps}: {named} without eval_steps evaluates every logging_steps "
        f"({sources['logging_steps']}), as in transformers; -o eval_steps=N for another"
    )


def _zero_not_for_method(values: dict, sources: dict, asked: tuple[str, tuple[str, str], str], notes=None) -> None:
    """A DeepSpeed config's ZeRO strategy where the method does not train under it (METHOD_STRATEGIES: FastChat's
    train_lora.py, which its README runs with playground/deepspeed_config_s2.json or s3): the strategy is left to the
    plan, noted, in place of the config's. ``asked``: the key and layer, (strategy, how it was read), and
    the note that took it; ``sources``: each key's layer, as build keeps them."""
    method, (zero, how) = values.get("method", FIELDS["method"].default), asked[1]
    if zero in METHOD_STRATEGIES[method][0]:
        return
    name, said = asked[0], asked[2]
    del values["strategy"], sources["strategy"]
    if notes is not None:
        notes.remove(said)
        notes.append(
            f"{name}: left out: {how} says {zero}, which {method} does not train under here "
            f"({METHOD_STRATEGIES[method][1]}): the plan chooses the strategy (-o strategy=NAME forces one)"
        )


@dataclass
class RunSpec:
    # --- what to train -----------------------------------------------------------------------
    method: str = "lora"  # fft | sft | lora | qlora
    model_name_or_path: str = DEMO_MODEL  # a hub id (org/name) or a local model directory
    # a hub id's revision: a branch, tag or commit (TRL's model_revision; ORG/NAME@REV in model_name_or_path says it
    # too); default main. Launch records the commit it is (the Hub's, else the Hugging Face cache's), which every node
    # and every resumed attempt loads
    model_revision: str | None = None
    model_params: str | None = None  # "7b", "135m": when the model's config cannot be read
    # TRL's: a Jinja file, or a tokenizer (model directory or hub id) whose chat template to train with;
    # default: the model's own, else FastChat's Vicuna v1.1 template
    chat_template_path: str | None = None
    data_path: str = DEMO_DATA  # several: comma-separated (a YAML list, --data repeated), read as one dataset
    # several datasets mixed: how many times each one's rows are trained on an epoch, in data_path's order
    # (1 all of them, 0.5 half drawn with seed, 2 each twice); a YAML mapping data_path: {PATH: WEIGHT} sets both
    data_weights: str | None = None
    # TRL's: the field of a plain-text row (one with it and no conversation trains as its text, every token)
    dataset_text_field: str = "text"
    # a dataset's own names of its fields, by its path in data_path (or eval_data_path): JSON of ftctl's field -> the
    # data's (messages, role, content, instruction, input, output, system; roles: the data's role -> the template's;
    # system_prompt), as axolotl's dataset entries give them (field_messages, message_property_mappings, roles, type)
    data_columns: dict[str, str] = field(default_factory=dict)
    eval_data_path: str | None = None  # held-out data in the same formats (FastChat's --eval_data_path)
    eval_split: float = 0.0  # or this share of data_path's rows held out (below 1; 1 or more: that many rows), chosen with seed; 0: none
    eval_steps: int | None = None  # with held-out data: evaluate every N steps and at the end; default save_steps
    evals_per_epoch: int | None = None  # or N times an epoch, at even steps through it (axolotl's; eval_steps counted)
    # sequences per GPU in an evaluation's micro-batch; default: the training's, which the plan fits (no gradients)
    per_device_eval_batch_size: int | None = None
    # with held-out data: stop once N evaluations in a row found no lower held-out loss (transformers' early stopping);
    # the checkpoint of the lowest held-out loss is kept (the stop line names it)
    early_stopping_patience: int | None = None
    # with held-out data: the final model (here and in the store) holds the weights of the checkpoint with the lowest
    # held-out loss, not the last step's (transformers'); each evaluation at a checkpoint (eval_steps a multiple of
    # save_steps); the run's end, metrics.jsonl and the model card name its step
    load_best_model_at_end: bool = False
    output_dir: str | None = None  # local path or s3:// gs:// az:// URI; default runs/<run_name>
    run_name: str | None = None  # default: ftctl-<method>-<model>
    # --- hyperparameters (FastChat / TRL / PEFT names) ---------------------------------------
    num_train_epochs: float = 1.0
    max_steps: int = -1  # above 0: train this many steps, whatever num_train_epochs says
    learning_rate: float | None = None  # default per method: 2e-5 fft/sft, 2e-4 lora/qlora
    weight_decay: float = 0.0
    warmup_ratio: float | None = None  # of the steps, rounded down (transformers rounds up): none under 34 steps
    warmup_steps: int | None = None  # instead of warmup_ratio: this many steps (transformers' name)
    # the rate after the warm-up; constant too (transformers' constant skips warmup_ratio: constant_with_warmup
    # here, -o warmup_ratio=0 for none, as qlora.py trained)
    lr_scheduler_type: str = "cosine"
    # transformers' lr_scheduler_kwargs: cosine_with_min_lr's floor (min_lr_rate, of the peak rate, or min_lr),
    # num_cycles of cosine and cosine_with_min_lr (-o lr_scheduler_kwargs=min_lr_rate=0.1)
    lr_scheduler_kwargs: dict[str, str] = field(default_factory=dict)
    max_grad_norm: float = 1.0
    # tokens a row is cut at (and packed up to); a run file in TRL's vocabulary that leaves it out: TRL's, noted
    model_max_length: int = 2048
    # the loss on assistant turns only (prompt-completion rows: the completion), FastChat's and TRL's for
    # prompt-completion rows (completion_only_loss); false: on every token, TRL's default for conversations
    # (assistant_only_loss=False)
    assistant_only_loss: bool = True
    global_batch_size: int | None = None  # sequences per optimizer step, over all GPUs
    per_device_train_batch_size: int | None = None  # planner
    gradient_accumulation_steps: int | None = None  # planner: reaches global_batch_size
    gradient_checkpointing: bool | None = None  # planner
    bf16: bool | None = None  # planner (tier)
    fp16: bool | None = None  # planner (tier)
    attn_implementation: str | None = None  # planner: varlen / flash_attention_2 / sdpa / eager
    packing: bool | None = None  # planner: on where attention honours sample boundaries
    # default: the planner's, the cheapest that fits: single, ddp, zero2, fsdp, zero3, zero2_offload, zero3_offload
    strategy: str | None = None
    ddp_bucket_cap_mb: int | None = None  # DDP's gradient buckets in MiB (torch's bucket_cap_mb); default: torch's 25
    # processes that tokenize the data (TRL's name); default: one a 2,000 rows, at most a core each (1: one alone)
    dataset_num_proc: int | None = None
    ddp_comm_dtype: str | None = None  # DDP's gradient all-reduce: fp32 (default) or bf16 (accelerate's comm hook)
    optim: str | None = None  # planner: adamw_torch_fused; paged_adamw_8bit for qlora on a tight GPU
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    # or projections' names, comma-separated (q_proj,v_proj; a YAML list); all (LLaMA-Factory's) is all-linear;
    # peft-default: PEFT's modules for the model's type, as TRL adapts where its lora_target_modules is left out
    lora_target_modules: str = "all-linear"
    use_rslora: bool = False  # PEFT's: the adapters scaled by lora_alpha / sqrt(lora_r), not / lora_r
    use_dora: bool = False  # PEFT's DoRA: a magnitude vector per projection beside the adapters (PEFT's forward runs)
    # lora/qlora: an adapter (a lora/qlora run's output, one of its checkpoints, PEFT's save_pretrained) whose weights
    # the run's adapters start from, at step 0 with a fresh optimizer and schedule (axolotl's; PEFT's from_pretrained
    # with is_trainable=True); its r, alpha, target modules, rslora and DoRA are the adapter's
    lora_model_dir: str | None = None
    # sft: top K transformer blocks trainable, and the output head (in a model that ties it to the input embedding,
    # as SmolLM2 does, that embedding is the head and trains too)
    trainable_layers: int = 2
    seed: int = 42
    logging_steps: int = 1
    save_steps: int | None = None  # a checkpoint every N steps; unset: the plan's (plan.checkpoint_cadence)
    saves_per_epoch: int | None = None  # or N checkpoints an epoch, at even steps through it (axolotl's)
    save_total_limit: int = 3  # local and remote checkpoints kept (plus the final one)
    report_to: str = "none"  # none | tensorboard | wandb (comma-separated, or a YAML list)
    resume: str = "auto"  # auto | never | PATH of a checkpoint-<step> directory where the job runs
    # --- hardware ----------------------------------------------------------------------------
    gpus: str | None = None  # 8xA100, 2x8xH100 (nodes x GPUs x type), A100-80GB:8, H100, cpu; default: this machine's
    nodes: int | None = None  # nodes of the run (or NxGxTYPE in gpus); on CPU one process each
    host_memory_gb: float | None = None  # CPU RAM per node, for offload plans; default 2x GPU memory
    # --- backend options -----------------------------------------------------------------------
    # local | slurm | sky | docker; default: FTCTL_BACKEND or the config file's, else local where this machine has
    # the GPUs asked for, else sky with a cloud enabled
    backend: str | None = None
    container: str | None = None  # docker:IMAGE | apptainer:IMAGE | pyxis:IMAGE (bare IMAGE = docker)
    # env var NAMES, never values; unset: default_secrets (HF_TOKEN, and WANDB_API_KEY where report_to has wandb)
    secrets: list[str] = field(default_factory=lambda: list(SECRETS))
    env: dict[str, str] = field(default_factory=dict)  # plain (non-secret) environment
    setup: list[str] = field(default_factory=list)  # shell lines before training ("module load cuda/12.4")
    s3_endpoint_url: str | None = None  # MinIO, R2, other S3-compatible stores
    rdzv_port: int = 29500
    upload_wait_s: int = 600  # how long the end of a run waits for the last checkpoint's upload
    # an object-store output's checkpoints and final model kept on the node's disk once the store holds them
    # (checkpoints.staging: removed by default as the run ends complete)
    keep_staging: bool = False
    preflight_network: bool = False  # the job first all-reduces across its processes (ftctl.trainer.netcheck)
    # and stops below this bus bandwidth (GB/s); default: 1 on GPUs (a 1 GbE interface picked by mistake gives
    # ~0.1), 0 on CPU (the processes only have to meet)
    preflight_min_busbw_gbps: float | None = None
    # slurm
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str | None = None  # Slurm time limit, e.g. 12:00:00
    cpus_per_task: int | None = None  # Slurm's; default: slurm.render.cpus_per_task's
    sbatch_args: list[str] = field(default_factory=list)  # passed through: "--mem=64G"
    signal_lead_s: int = 120  # USR2 this many seconds before the time limit
    # Slurm: requeues after preemption or the time limit (unset: 5); a SkyPilot managed job: restarts after its own
    # failure, max_restarts_on_errors (unset: 0; preemptions are recovered whatever it says)
    max_requeues: int | None = None
    socket_ifname: str | None = None  # NCCL_SOCKET_IFNAME / GLOO_SOCKET_IFNAME
    # sky
    spot: bool = False  # a managed job (sky.jobs.launch) on spot instances, recovered after preemption
    managed: bool = False  # a managed job on on-demand instances, recovered after a lost node (spot implies it)
    infra: str | None = None  # SkyPilot's infra string, passed through: aws, gcp/us-central1, k8s, slurm/NAME
    cloud: str | None = None  # a cloud SkyPilot has enabled (aws, gcp, azure ...); or infra
    region: str | None = None  # that cloud's region
    disk_size: int | None = None  # GiB of each node's disk (SkyPilot's unit); unset: what the run stages, at least 256
    cluster: str | None = None  # SkyPilot cluster to launch or reuse (sky.launch either way); default run name
    down: bool = False  # tear the cluster down when the job ends
    idle_minutes: int = 30  # idle autostop of a launched cluster (ignored with down)
    # SkyPilot's network_tier: standard or best (EFA, GPUDirect, InfiniBand); unset: best for a multi-node GPU run
    # where SkyPilot sets it up right (ftctl/sky/render.py network_tier)
    network_tier: str | None = None
    # SkyPilot's disk_tier: default (SkyPilot's, MEDIUM on most clouds) or best; unset: best on a cloud GPU node whose
    # checkpoints are large (ftctl/sky/render.py disk_tier)
    disk_tier: str | None = None
    # SkyPilot: more GPU types the run may land on, comma-separated (A100-80GB for --gpus 8xA100): each of the plan's
    # architecture with at least its memory; SkyPilot launches the cheapest it finds (ftctl/sky/render.py also_gpus)
    also_gpus: str | None = None
    # SkyPilot, with --spot: on-demand instances where no spot ones are to be had (ftctl/sky/render.py spot_resources)
    on_demand_fallback: bool = False
    # not a run key: the keys the run gave (a run file, a flag, -o; build records them) and the layer (LAYERS) that
    # gave each, so that one given at its default (-o signal_lead_s=120) is told from one left out (gave), and what
    # says where a value came from can (render's image line: a run file's container is no --container); spec.json
    # holds what the run resolved to
    _given_in: tuple[tuple[str, str], ...] = field(default=(), compare=False, repr=False)
    # not a run key: beside _given_in, each given key's name and value as its layer wrote them (a run file's data:
    # rows.json, a flag's value before absolute_paths, -o's text), which given_as repeats: the spec's own value may be
    # another (an alias's, a path made absolute, an axolotl datasets list read as data_path)
    _written: tuple[tuple[str, str, typing.Any], ...] = field(default=(), compare=False, repr=False)
    # not a run key: the run file build read, as it was named (None: none, or a dict), so that what says a value came
    # from it can name it (given_as: "container: docker:X in gist.yaml")
    _run_file: str | None = field(default=None, compare=False, repr=False)

    # -------------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        if self.run_name:
            return self.run_name
        short = re.sub(r"[^a-z0-9]+", "-", self.model_name_or_path.rstrip("/").split("/")[-1].lower()).strip("-")
        return f"ftctl-{self.method}-{short}"[:60].rstrip("-")

    @property
    def output(self) -> str:
        """Where the run writes: output_dir, else runs/<name>. A store's URI in one spelling (store_uri): s3://b/x/ is
        s3://b/x (its cache directory, its one-trainer lock and its jobs were another run's, and two trainers
        pruned each other's checkpoints). A file:// URI is the local path it names (launch, status and the docker
        volume read it as one)."""
        out = self.output_dir or str(Path("runs") / self.name)
        return store_uri(out) if storage.is_remote(out) else storage.local_path(out)

    @property
    def another_output(self) -> str:
        """How a launch refused for its output gives itself another (a refusal's 'For a new run: ...'): another
        run_name moves only the output the name gives (runs/<name>, no output_dir asked for), --output any. True of
        the spec as asked: launch's resolved one has output_dir set (backend.absolute_paths), so its Rendered keeps
        this line; "another --output" where only that one is at hand."""
        return "another --output" if self.output_dir else "another -o run_name=... (or --output DIR)"

    @property
    def managed_job(self) -> bool:
        """A SkyPilot managed job (sky.jobs.launch, relaunched by its job_recovery): --managed, or --spot's."""
        return self.managed or self.spot

    @property
    def lr(self) -> float:
        return self.learning_rate if self.learning_rate is not None else METHOD_LEARNING_RATE[self.method]

    @property
    def data_sources(self) -> list[tuple[str, str]]:
        """(flag, path) of every dataset the trainer reads: the training data's, then the held-out data's."""
        return [("--data", p) for p in split_paths(self.data_path)] + [
            ("--eval-data", p) for p in split_paths(self.eval_data_path)
        ]

    @property
    def data_paths(self) -> list[str]:
        return [p for _, p in self.data_sources]

    @property
    def remote_uris(self) -> list[str]:
        """Every object-store URI the job reads or writes: its data, held-out data, chat template, output and
        checkpoint to resume."""
        paths = [*self.data_paths, self.chat_template_path, self.output, self.resume]
        return [p for p in paths if p and storage.is_remote(p)]

    @property
    def data_mix(self) -> list[tuple[str, float]] | None:
        """(dataset, weight) of each data_path dataset where data_weights mixes them; None: each once."""
        if self.data_weights is None:
            return None
        return list(zip(split_paths(self.data_path), parse_weights(self.data_weights)))

    @property
    def evaluates(self) -> bool:
        return bool(self.eval_data_path or self.eval_split)

    @property
    def eval_every(self) -> int:
        """Steps between evaluations: eval_steps, else at each checkpoint (the trainer counts the per-epoch ones from
        the epoch's steps: callbacks.StepsAsGiven)."""
        return self.eval_steps or self.checkpoint_every

    @property
    def global_batch(self) -> int:
        """Sequences per optimizer step wanted (gradient_accumulation_steps, where given, decides it: plan.py)."""
        return self.global_batch_size or GLOBAL_BATCH_SIZE

    @property
    def checkpoint_every(self) -> int:
        """Steps between checkpoints (saves_per_epoch's are counted by the trainer: callbacks.StepsAsGiven). Where
        save_steps is not given the launcher records the plan's (plan.with_save_steps), chosen from its predicted step
        time; SAVE_STEPS where nothing chose one."""
        return self.save_steps or SAVE_STEPS

    @property
    def warmup(self) -> float:
        """transformers' warmup_steps: below 1 a fraction of the steps (warmup_ratio), else a number of them."""
        return warmup_of(self.warmup_steps, self.warmup_ratio)

    @property
    def eval_when(self) -> str:
        """When the held-out loss is measured, in words (besides at the end)."""
        if self.evals_per_epoch:
            return "once an epoch" if self.evals_per_epoch == 1 else f"{self.evals_per_epoch} times an epoch"
        if self.eval_steps or not self.saves_per_epoch:
            return "every step" if self.eval_every == 1 else f"every {self.eval_every} steps"
        return f"at each checkpoint ({self.saves_per_epoch} an epoch)"

    @property
    def checkpoints_kept(self) -> int | None:
        """The Trainer's save_total_limit (None: every checkpoint). With held-out data the lowest held-out loss's
        checkpoint is kept beside the newest, so at least 2: transformers keeps both either way, but at the end of
        training with a limit of 1 it deletes every checkpoint but the best, a preempted run's newest too, which
        the relaunch resumes from."""
        if self.save_total_limit and self.evaluates:
            return max(2, self.save_total_limit)
        return self.save_total_limit

    def gave(self, key: str) -> bool:
        """Whether the run gives ``key``: build saw it (even at its default), or it is not at its default."""
        return key in dict(self._given_in) or getattr(self, key) != FIELDS[key].default

    def given_in(self, key: str) -> str | None:
        """The layer that gave ``key`` ("run file", "flag", "-o"); None where no layer did (a spec made in code)."""
        return dict(self._given_in).get(key)

    def written(self, key: str) -> tuple[str, typing.Any] | None:
        """``key``'s name and value as the layer that gave it (given_in) wrote them: ("data", "rows.json") for a run
        file's data: rows.json, ("data_path", "rows.json") for --data rows.json; None where no layer did, or where
        a flag or -o added to an earlier layer's list (the value is then both's)."""
        return next(((name, raw) for k, name, raw in self._written if k == key), None)

    @property
    def run_file(self) -> str | None:
        """The run file build read, as named (-c FILE, RUN_FILE); None where none was, or it was a dict."""
        return self._run_file

    def to_dict(self) -> dict:
        """The run's keys and values (spec.json's), WHERE_SET's only where set."""
        return {
            k: v for k, v in dataclasses.asdict(self).items() if k in FIELDS and (k not in WHERE_SET or v is not None)
        }

    def digest(self) -> str:
        """A short hash of what changes the trained weights (not where it runs)."""
        keep = {k: v for k, v in self.to_dict().items() if k in TRAINING_KEYS or k in WHERE_SET}
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


def hub_model(name_or_path: str) -> bool:
    """Whether the model is a Hub id loaded from the Hub (or its cache): not a local directory, not the demo model
    (built here from its PyPI wheel)."""
    from ftctl.hub import HUB_ID

    return (
        bool(HUB_ID.match(name_or_path))
        and "--" not in name_or_path  # (the Hub's ids have none: preflight refuses them as no hub id)
        and ".." not in name_or_path
        and not is_demo_model(name_or_path)
        and not storage.looks_like_path(name_or_path)
        and not Path(name_or_path).expanduser().exists()
    )


# ORG/NAME@REV: a hub id at a revision (hf://'s way of saying it), read as model_revision
_AT_REVISION = re.compile(r"^(?P<model>[^@\s]+)@(?P<revision>[^@\s]+)$")


def _model_revision(spec: RunSpec, sources: dict, notes: list | None) -> RunSpec:
    """``spec`` with model_revision as it reads: ORG/NAME@REV split into the id and its revision; TRL's main (its
    ModelConfig default, which the alignment handbook's recipes write out) left out, noted, for a local model, and
    any other revision of one refused (a directory has none); a name no branch, tag or commit has refused."""
    import shlex

    from ftctl.hub import MAIN, REVISION

    model, revision = spec.model_name_or_path, spec.model_revision
    source = sources.get("model_revision", "-o")
    if (at := _AT_REVISION.match(model)) and hub_model(at["model"]) and not Path(model).expanduser().exists():
        if revision is not None and revision != at["revision"]:
            raise FtctlError(
                f"{model!r} names revision {at['revision']!r} and model_revision={revision!r} ({source}) another: "
                "keep one."
            )
        model, revision, source = at["model"], at["revision"], sources.get("model_name_or_path", "--model")
    if revision is None:
        return spec
    revision = revision.strip()
    if not hub_model(model):
        what = "the demo model, built here from its PyPI wheel," if is_demo_model(model) else "a local model"
        if revision == MAIN:
            notes is None or notes.append(
                f"model_revision main ({source}): left out, {model} is {what.rstrip(',')}, which has no revisions"
            )
            return dataclasses.replace(spec, model_revision=None)
        rev = shlex.quote(revision)
        raise FtctlError(
            f"model_revision={revision!r} ({source}): --model {model} is {what} which has no revisions: give the hub "
            f"id (--model ORG/NAME -o model_revision={rev}), or download that revision (hf download ORG/NAME "
            f"--revision {rev} --local-dir DIR) and pass --model DIR without model_revision."
        )
    if not REVISION.match(revision):
        raise FtctlError(
            f"model_revision={revision!r} ({source}): not a branch, tag or commit name (letters, digits, . _ - /): "
            "give one the Hub shows on the model's Files and versions page, or a commit's 40 hex digits."
        )
    return dataclasses.replace(spec, model_name_or_path=model, model_revision=revision)


# an adapter's adapter_config.json keys (PEFT's) that decide what its weights are, and the run keys they settle
ADAPTER_KEYS = {"r": "lora_r", "lora_alpha": "lora_alpha", "target_modules": "lora_target_modules"}
ADAPTER_KEYS |= {"use_rslora": "use_rslora", "use_dora": "use_dora"}


def from_adapter(spec: RunSpec, sources: dict, notes: list | None = None) -> RunSpec:
    """``spec`` as lora_model_dir settles it: the adapter's r, alpha, target modules, rslora and DoRA (its weights
    mean something only with them; PEFT's from_pretrained takes its own config too), its path absolute, its base's
    commit where the run names none. One that cannot start this run is refused: not an adapter here (the launch
    reads it; the job reads the same path), over another base, a run key given otherwise (``sources``), another
    method, beside a resume=PATH, or inside the run's own output."""
    value = spec.lora_model_dir
    if not value:
        return spec
    said = key_value_said("lora_model_dir", value)
    if spec.method not in ADAPTER_METHODS:
        raise FtctlError(
            f"{said}: an adapter's weights start a lora or qlora run's adapters, not --method {spec.method}'s: give "
            f"--method lora (or qlora); to train {spec.method} over it, ftctl merge {shlex.quote(value)}, then --model "
            "DIR/merged."
        )
    if storage.is_remote(value):
        raise FtctlError(
            f"{said}: an adapter is read from a directory here: `ftctl sync pull` it, then lora_model_dir=DIR."
        )
    if spec.resume not in ("auto", "never"):
        raise FtctlError(
            f"{said} and resume={spec.resume}: both say where the adapters start; resume goes on with that "
            "checkpoint's optimizer and schedule, lora_model_dir starts them afresh at step 0: keep one."
        )
    path = Path(value).expanduser()
    output = Path(spec.output).expanduser().resolve()
    if not storage.is_remote(spec.output) and (path.resolve() == output or output in path.resolve().parents):
        raise FtctlError(
            f"{said} is in this run's own --output, which it would write over: to train that run on with its "
            "optimizer and schedule, relaunch it with a larger -o max_steps (it resumes its checkpoints); to start a "
            f"fresh schedule from its weights, give {spec.another_output}."
        )
    if own := _own_checkpoint(spec):  # the run resumes it: the adapter is not read (it may be gone since)
        return _resuming_own(spec, value, own, sources, notes)
    config = path / "adapter_config.json"
    if not config.is_file():
        steps = sorted(int(c.name[11:]) for c in path.glob("checkpoint-*") if c.name[11:].isdigit()) * path.is_dir()
        newest = shlex.quote(str(path / f"checkpoint-{steps[-1]}")) if steps else ""
        why = (
            f"it holds no final adapter: name one of its checkpoints, lora_model_dir={newest}"
            if steps
            else "a full model (fft, sft): give it as --model, and new adapters train over it"
            if (path / "config.json").is_file()
            else "no adapter_config.json there"
            if path.is_dir()
            else "no such directory here (the launch reads it, and the job the same path)"
        )
        raise FtctlError(f"{said} is not a LoRA adapter ({why}).")
    try:
        saved = json.loads(config.read_text())
        if not isinstance(saved, dict) or saved.get("peft_type", "LORA") != "LORA":
            raise ValueError(f"a {saved.get('peft_type') if isinstance(saved, dict) else 'non-PEFT'} adapter")
    except (OSError, ValueError) as e:
        raise FtctlError(f"{said}: its adapter_config.json does not read as a LoRA adapter's ({e}).") from None
    if not any((path / f).is_file() for f in ("adapter_model.safetensors", "adapter_model.bin")):
        raise FtctlError(f"{said}: its adapter weights (adapter_model.safetensors) are not there.")
    base = saved.get("base_model_name_or_path")
    if isinstance(base, str) and base and not _same_model(base, spec.model_name_or_path):
        raise FtctlError(
            f"{said}: its adapter trained over {base}, and this run's --model is {spec.model_name_or_path}: an "
            f"adapter's weights mean something over their own base only: give --model {shlex.quote(base)}."
        )
    settled, conflicts = {}, []
    for name, key in ADAPTER_KEYS.items():
        theirs = saved.get(name)
        if isinstance(theirs, (list, tuple, set)):  # PEFT saves all-linear as every module's full name: their ends
            theirs = ",".join(sorted({str(t).rsplit(".", 1)[-1] for t in theirs}))
        elif name == "target_modules" and not (isinstance(theirs, str) and re.fullmatch(r"[\w.-]+", theirs)):
            continue  # a regular expression or target_parameters: the trainer takes the adapter's own
        try:
            theirs = _coerce(key, FIELDS[key].default if theirs is None else theirs)
        except ValueError:
            continue
        ours = getattr(spec, key)
        same = (
            set(lora_target_names(ours)) == set(theirs.split(",")) if key == "lora_target_modules" else ours == theirs
        )
        if key in sources and not same and (key != "lora_target_modules" or ours not in ("all-linear", PEFT_TARGETS)):
            conflicts.append(f"{key}={ours} ({sources[key]}), where the adapter's is {theirs}")
        settled[key] = theirs
    if conflicts:
        raise FtctlError(
            f"{said}: {'; '.join(conflicts)}: its weights train on with its own r, alpha and target modules: leave "
            f"{', '.join(c.split('=')[0] for c in conflicts)} out (or give the adapter's), or train new adapters "
            "without lora_model_dir."
        )
    revision = saved.get("revision")
    if spec.model_revision is None and isinstance(revision, str) and revision and hub_model(spec.model_name_or_path):
        settled["model_revision"] = revision
    spec = dataclasses.replace(spec, lora_model_dir=str(path.resolve()), **settled)
    if notes is not None:
        notes.append(
            f"lora_model_dir {value}: the adapters start from its weights, at step 0 with a fresh optimizer and "
            f"schedule; r {spec.lora_r}, lora_alpha {spec.lora_alpha} and its target modules are the adapter's"
        )
    return spec


ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")  # what a job reads of one


def adapter_inputs(spec: RunSpec) -> list[str]:
    """The files of ``spec``'s lora_model_dir its job reads, absolute, those that are here: its adapter_config.json
    and weights (methods.start_from_adapter) and the spec.json of the run that saved it (the model card's 'trained
    on': a checkpoint-N's is its run's, above it). What sky and docker ship of it (the rest of a run's output, its
    checkpoints and optimizer states, stays). [] without one, or for an object store's."""
    value = spec.lora_model_dir
    if not value or storage.is_remote(value):
        return []
    adapter = Path(value).expanduser().resolve()
    manifest = (adapter.parent if adapter.name.startswith("checkpoint-") else adapter) / "spec.json"
    return [str(f) for f in [*(adapter / name for name in ADAPTER_FILES), manifest] if f.is_file()]


def _own_checkpoint(spec: RunSpec) -> Path | None:
    """The newest checkpoint-N of the run's own (local) output that holds an adapter, where the run resumes its own
    checkpoints (resume=auto; resume=never on a requeued Slurm attempt, trainer.run.resume_point): it starts there
    and never loads its lora_model_dir, so a relaunch or requeue after that adapter was deleted needs none of it.
    None otherwise, and for an object-store output (its checkpoints are not listed here)."""
    attempt = os.environ.get(envvars.ATTEMPT_ENV, "")
    if not (spec.resume == "auto" or (spec.resume == "never" and attempt.isdigit() and int(attempt) > 0)):
        return None
    if storage.is_remote(spec.output):
        return None
    output = Path(spec.output).expanduser()
    try:
        named = [c for c in output.iterdir() if c.name.startswith("checkpoint-") and c.name[11:].isdigit()]
    except OSError:
        return None
    held = [c for c in named if (c / "adapter_config.json").is_file()]
    return max(held, key=lambda c: int(c.name[11:]), default=None)


def _resuming_own(spec: RunSpec, value: str, own: Path, sources: dict, notes: list | None) -> RunSpec:
    """``spec`` of a run that goes on from its own checkpoint ``own`` (_own_checkpoint) rather than from its
    lora_model_dir: r, alpha, target modules, rslora and DoRA not given are that checkpoint's (its adapters were the
    lora_model_dir's shape at the run's start); ones given otherwise are left to the resume's check of its recorded
    settings, which names the checkpoint. The path is made absolute as a fresh start's is."""
    settled = {}
    try:
        saved = json.loads((own / "adapter_config.json").read_text())
    except (OSError, ValueError):
        saved = None
    for name, key in ADAPTER_KEYS.items() if isinstance(saved, dict) else ():
        theirs = saved.get(name)
        if key in sources:
            continue
        if isinstance(theirs, (list, tuple, set)):
            theirs = ",".join(sorted({str(t).rsplit(".", 1)[-1] for t in theirs}))
        elif name == "target_modules" and not (isinstance(theirs, str) and re.fullmatch(r"[\w.-]+", theirs)):
            continue
        try:
            settled[key] = _coerce(key, FIELDS[key].default if theirs is None else theirs)
        except ValueError:
            continue
    spec = dataclasses.replace(spec, lora_model_dir=str(Path(value).expanduser().resolve()), **settled)
    if notes is not None:
        shape = f"; r {spec.lora_r}, lora_alpha {spec.lora_alpha} and the target modules are its own" * bool(settled)
        notes.append(
            f"lora_model_dir {value}: not read: the run resumes its own {own.name} in {spec.output} (its adapters' "
            f"weights, optimizer and schedule){shape}"
        )
    return spec


def _same_model(a: str, b: str) -> bool:
    """Whether two names of a model are one model: local directories the same one, else the same Hub id."""
    here = [Path(m).expanduser() for m in (a, b)]
    if any(p.exists() for p in here):
        return all(p.exists() for p in here) and os.path.samefile(*here)
    return a.strip().rstrip("/").casefold() == b.strip().rstrip("/").casefold()


def pinned(spec: RunSpec, earlier: dict | None = None) -> tuple[RunSpec, str | None]:
    """``spec`` with its hub model's revision resolved to the commit it is now (ftctl.hub.pin: the Hub's, else
    the Hugging Face cache's: offline, or no answer), which spec.json records for every node and every resumed attempt to load, and the line
    saying so; as it is for a local model. Where it cannot be told, main stays unpinned (the line says why); another
    revision is refused, saying how to fix it. ``earlier``: the spec.json's spec of the run a launch goes on (its run
    directory's), whose commit of the same model a relaunch that names no revision keeps: it resumes checkpoints
    trained on that commit, whatever main has become since."""
    if not hub_model(spec.model_name_or_path):
        return spec, None
    import shlex

    from ftctl import hub

    model = spec.model_name_or_path
    kept = (earlier or {}).get("model_revision")
    if (
        spec.model_revision is None
        and (earlier or {}).get("model_name_or_path") == model
        and isinstance(kept, str)
        and hub.COMMIT.match(kept)
    ):
        return dataclasses.replace(spec, model_revision=kept), (
            f"{model}: commit {kept}, its run's (its spec.json's), which every node and every resumed attempt loads; "
            "-o model_revision=main for its main now"
        )
    try:
        commit, said = hub.pin(model, spec.model_revision)
    except hub.HubError as e:
        fix = (
            f"download it where the Hub answers (hf download {shlex.quote(model)} --revision "
            f"{shlex.quote(spec.model_revision or 'main')}), unset "
            "HF_HUB_OFFLINE, or give a revision the cache has"
            if e.kind == "unreachable"
            else "give a branch, tag or commit the model's Files and versions page shows"
        )
        raise FtctlError(f"model_revision={spec.model_revision!r} of {model}: {e}: {fix}.") from None
    return (dataclasses.replace(spec, model_revision=commit) if commit else spec), said


def is_demo_model(name_or_path: str) -> bool:
    """The demo model's id (any case): built locally from its PyPI wheel (ftctl.trainer.model), never fetched."""
    return str(name_or_path).strip().rstrip("/").lower() == DEMO_MODEL.lower()


def cache_dir(env: typing.Mapping[str, str] | None = None) -> Path:
    """ftctl's cache: ``$FTCTL_CACHE`` or ``~/.cache/ftctl``, in this process's environment or ``env``."""
    env = os.environ if env is None else env
    home = Path(env["HOME"]) if env.get("HOME") else Path.home()
    return Path(env.get("FTCTL_CACHE") or home / ".cache" / "ftctl").expanduser()


def demo_model_dir() -> Path:
    """Where the demo model is built (ftctl.trainer.model.ensure_demo_model) and read: renamed into place whole."""
    return cache_dir() / "models" / DEMO_MODEL.replace("/", "--")


# what an int key given as transformers' share of the training's steps (save_steps: 0.1) is written as here
SHARE_OF_STEPS = {
    "save_steps": "give a number of steps, or saves_per_epoch: N (N checkpoints an epoch)",
    "eval_steps": "give a number of steps, or evals_per_epoch: N (N evaluations an epoch)",
    "logging_steps": "give a number of steps",
    "warmup_steps": "give warmup_ratio: the share instead",
}
PATH_LISTS = ("data_path", "eval_data_path")  # several datasets: comma-separated, a YAML list, a repeated flag
COMMA_LISTS = ("lora_target_modules", "report_to", "data_weights")  # comma-separated values; a YAML list is joined


def split_paths(value: str | None) -> list[str]:
    """The datasets a data_path names: ``a.jsonl,s3://b/c.jsonl`` is two, read one after the other as one
    dataset. A path holding a comma is one where it is a file or directory here, alone or beside others: the whole
    value, else from each comma-separated part that is none here, the longest run of parts that, joined again, is one
    (``d/a,b.jsonl,c.jsonl`` is two where ``d/a,b.jsonl`` exists and ``d/a`` does not). Everything else is split at
    each comma: an object key holding one is written with ? there (a pattern matching it)."""
    if not value:
        return []
    if "," not in value or _is_here(value):
        return [value]
    parts, paths, i = value.split(","), [], 0
    while i < len(parts):
        runs = () if _is_here(parts[i].strip()) else range(len(parts), i + 1, -1)
        j = next((j for j in runs if _is_here(",".join(parts[i:j]).strip())), i + 1)
        paths.append(",".join(parts[i:j]).strip())
        i = j
    return [p for p in paths if p]


def _is_here(path: str) -> bool:
    """Whether ``path`` (a plain path or file://) is a file or directory of this machine."""
    path = path[len("file://") :] if path.startswith("file://") else path
    try:
        return bool(path) and not storage.scheme(path) and Path(path).expanduser().exists()
    except (OSError, RuntimeError):  # a name too long (ENAMETOOLONG), ~nouser/x: refused as such (unusable_paths)
        return False


def parse_weights(value: str) -> list[float]:
    """data_weights' numbers; ValueError naming the one that is not a number above 0."""
    weights = []
    for part in value.split(","):
        try:
            weight = float(part)
        except ValueError:
            raise ValueError(f"{part.strip()!r} is not a number") from None
        if not (0 < weight < math.inf):
            raise ValueError(
                f"{part.strip()} is not a finite number above 0 (to leave a dataset out, drop it from data_path)"
            )
        weights.append(weight)
    return weights


def join_paths(paths) -> str:
    """The data_path that names ``paths`` (split_paths' inverse). One is as it is (``a,b`` given once is split_paths'
    to read); of several, one holding a comma must read back as itself, as a file or directory here does; ValueError
    saying how to give it otherwise."""
    paths = [str(p).strip() for p in paths if str(p).strip()]
    joined = ",".join(paths)
    if len(paths) < 2 or split_paths(joined) == paths:
        return joined
    comma = next((p for p in paths if "," in p and split_paths(p) != [p]), None)
    if comma is None:  # each is one alone, not together: d/a,b.json beside c.json where d/a exists too
        raise ValueError(
            f"{joined!r} would read as {split_paths(joined)!r}: a path holding a comma is one dataset beside others "
            "where it is a file or directory here and what comes before its comma is none; rename it"
        )
    if storage.is_remote(comma):
        raise ValueError(
            f"a path holding a comma cannot be one of several: {comma!r} would read as "
            f"{' and '.join(map(repr, split_paths(comma)))}; for one object whose key holds a comma, write ? in the "
            f"comma's place ({comma.replace(',', '?')!r}, a pattern that matches it)"
        )
    raise ValueError(
        f"a path holding a comma cannot be one of several unless it is a file or directory here, and {comma!r} is "
        "none: check the path, or give each dataset its own --data (YAML: its own list item)"
    )


FIELDS = {f.name: f for f in dataclasses.fields(RunSpec) if not f.name.startswith("_")}
_HINTS = typing.get_type_hints(RunSpec)
# Keys that say where and how a run is executed, not what it learns: left out of RunSpec.digest().
_PLACEMENT_KEYS = {
    "output_dir",
    "run_name",
    "resume",
    "report_to",
    "logging_steps",
    "save_steps",
    "saves_per_epoch",
    "eval_data_path",
    "eval_steps",
    "evals_per_epoch",
    "per_device_eval_batch_size",
    "load_best_model_at_end",  # which checkpoint the final model is: the checkpoints train alike
    "save_total_limit",
    "gpus",
    "nodes",
    "host_memory_gb",
    "backend",
    "container",
    "secrets",
    "env",
    "setup",
    "s3_endpoint_url",
    "rdzv_port",
    "upload_wait_s",
    "keep_staging",
    "dataset_num_proc",  # the processes that tokenize: the same rows whichever
    "preflight_network",
    "preflight_min_busbw_gbps",
    "partition",
    "account",
    "qos",
    "time",
    "cpus_per_task",
    "sbatch_args",
    "signal_lead_s",
    "max_requeues",
    "socket_ifname",
    "spot",
    "managed",
    "infra",
    "cloud",
    "region",
    "disk_size",
    "cluster",
    "down",
    "idle_minutes",
    "network_tier",
    "disk_tier",
    "also_gpus",
    "on_demand_fallback",
}
# Keys spec.json holds only where set (RunSpec.to_dict): one without it ran at the default, as every run did before the
# key was (model_revision: main, or a local model, which has none). They change the weights trained all the same
# (RunSpec.digest), but are compared only where read with .get
WHERE_SET = ("model_revision",)
TRAINING_KEYS = [n for n in FIELDS if n not in _PLACEMENT_KEYS and n not in WHERE_SET]


def _base_type(hint):
    """(type, optional) for 'int | None' style hints."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0], True
    return hint, False


def _coerce(key: str, value):
    """Turn a YAML/flag/-o value into the field's type; raises ValueError with a readable reason."""
    typ, optional = _base_type(_HINTS[key])
    if value is None:
        if optional:
            return None
        raise ValueError("may not be empty")
    if isinstance(value, str) and optional and value.strip().lower() in ("none", "null", "auto") and typ is not str:
        return None
    origin = typing.get_origin(typ)
    if origin is list:
        if _clears(value):
            return []  # a later layer's `-o KEY=none` clears what an earlier one set (or the default secrets)
        if isinstance(value, str):  # secrets=A,B is a list of names; other lists take one item per flag
            parts = value.split(",") if key == "secrets" else [value]
            return [v for v in (s.strip() for s in parts) if v]
        if isinstance(value, (list, tuple)):
            return [str(v) for v in value]
        if key == "secrets" and isinstance(value, dict):  # SkyPilot's form: {HF_TOKEN: null}, each value from the shell
            return secret_names(value)
        raise ValueError(f"expects a list: {key}: [A, B] in a run file")
    if origin is dict:
        if _clears(value):
            return {}  # a later layer's `-o KEY=none` clears what an earlier one set
        if isinstance(value, dict):  # a run file's are its text as written (load_yaml); a dict given in Python:
            return {str(k): config_text(v) for k, v in value.items()}
        if isinstance(value, str) and value.strip().startswith("{"):  # HF's argparse takes a dict as JSON text
            import yaml

            try:
                mapping = yaml_value(value)
            except yaml.YAMLError:
                mapping = None
            if isinstance(mapping, dict):
                return {str(k): config_text(v) for k, v in mapping.items()}
        if isinstance(value, str) and "=" in value:
            k, v = value.split("=", 1)
            # -o env=A=1,B=2 set A to "1,B=2": one pair a -o (a value may hold commas: CUDA_VISIBLE_DEVICES=0,1, and
            # PYTORCH_CUDA_ALLOC_CONF's lower-case options)
            if re.search(r",\s*[A-Z_][A-Z0-9_]*=" if key == "env" else r",\s*[A-Za-z_]\w*=", v):
                raise ValueError(f"one NAME=VALUE a -o, a comma is part of the value: -o {key}=A=1 -o {key}=B=2")
            return {k: v}
        raise ValueError(f"expects NAME=VALUE pairs: {key}: {{NAME: VALUE}} in a run file, -o {key}=NAME=VALUE")
    if typ is bool:
        return _as_bool(value)
    if typ is int:
        if isinstance(value, bool):
            raise ValueError("expects a whole number")
        if isinstance(value, float) and value.is_integer():
            return int(value)
        try:
            return int(str(value).strip())
        except ValueError:
            pass
        try:  # "16.0" from -o, and YAML's 1e3 (a string in YAML 1.1)
            number = float(str(value).strip())
        except ValueError:
            raise ValueError("expects a whole number") from None
        if number.is_integer():
            return int(number)
        if key in SHARE_OF_STEPS and 0 < number < 1:
            raise ValueError(
                f"expects a number of steps; transformers' share of the training's steps (below 1) is not read here: "
                f"{SHARE_OF_STEPS[key]}"
            )
        raise ValueError("expects a whole number")
    if typ is float:
        if isinstance(value, bool):
            raise ValueError("expects a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            pass
        if share := re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*%\s*", str(value)):  # eval_split=5% (a share: 0.05)
            number = f"{float(share[1]) / 100:.6g}"
            raise ValueError(
                f"expects a number, and {value.strip()} is {number}: -o {key}={number} ({key}: {number} in a run file)"
            )
        raise ValueError("expects a number")
    if key in PATH_LISTS and isinstance(value, (str, list, tuple)):  # each --data as given (or a list's item)
        items = [value] if isinstance(value, str) else value
        if said := next(filter(None, (_object_key_comma(key, str(v)) for v in items)), None):
            raise ValueError(said)
        if isinstance(value, (list, tuple)):
            return join_paths(value)
    if key in COMMA_LISTS and isinstance(value, str) and re.fullmatch(r"\s*\[.*\]\s*", value):  # -o KEY=[a, b]
        value = [v.strip().strip("'\"") for v in value.strip()[1:-1].split(",") if v.strip()]
    if key == "lora_target_modules" and not all(
        isinstance(v, str) for v in (value if isinstance(value, (list, tuple)) else [value])
    ):
        raise ValueError("expects layer names: all-linear, q_proj,v_proj, or a YAML list of names")
    if key in COMMA_LISTS and isinstance(value, (list, tuple)):
        if any(isinstance(v, (dict, list, tuple)) for v in value):
            raise ValueError(f"expects a list of single values, e.g. {key}: [a, b] or {key}: a,b")
        value = ",".join(str(v).strip() for v in value)
    if key == "lora_target_modules" and str(value).strip().lower() == "all":
        value = "all-linear"  # LLaMA-Factory's lora_target: all, qlora.py's --lora_modules all
    if key == "data_weights":  # none/empty: each dataset once
        text = str(value)
        return None if text.strip().lower() in ("", "none", "null") else text.replace(" ", "")
    if typ is str:
        if isinstance(value, list):
            raise ValueError(f"expects a single value, not a list: write {key}: VALUE (-o {key}=VALUE)")
        if isinstance(value, dict):
            raise ValueError("expects a single value")
        return str(value)
    raise ValueError(f"unsupported type {typ}")  # pragma: no cover


def store_uri(uri: str) -> str:
    """An object-store URI in one spelling: its scheme in lower case, no slash doubled or at its end. S3://b/run,
    s3://b//run and s3://b/run/ are s3://b/run, as the run's output: its run directory here and its SkyPilot cluster
    are named after it (backend.run_dir_for), and a relaunch spelt otherwise went to a fresh cluster, not the one its
    first launch made; its trainer wrote s3://b//run's under the key /run (s3fs's reading), another place."""
    head, _, rest = str(uri).partition("://")
    return f"{head.lower()}://{re.sub(r'/{2,}', '/', rest).rstrip('/')}"


def secret_names(mapping: dict) -> list[str]:
    """A run file's secrets as SkyPilot's task file writes them, ``{HF_TOKEN: null}``: the names, each with no value
    (the job gets it from where it launches). One given a value is refused, the value never repeated (nor a name
    that holds a credential): it would be written into the job's files."""
    if valued := [str(k) for k, v in mapping.items() if v is not None]:
        shown = [n for n in valued if not holds_credential(n)]
        named = ", ".join(shown) if shown else "one"
        raise ValueError(
            f"names only, {named} is given a value here (not repeated): export it where you launch and name it, "
            f"secrets: [{shown[0] if shown else 'NAME'}] (or SkyPilot's {{{shown[0] if shown else 'NAME'}: null}}); "
            "secrets pass by name only"
        )
    return [str(k) for k in mapping]


def _clears(value) -> bool:
    """`-o KEY=none` of a list or mapping key: empties it, instead of adding an item named none."""
    if isinstance(value, (list, tuple)) and len(value) == 1:  # a flag given once: --secret none
        value = value[0]
    return isinstance(value, str) and value.strip().lower() in ("none", "null", "[]", "{}")


def parse_overrides(pairs) -> list[tuple[str, str]]:
    out, errors = [], []
    for p in pairs or ():
        if "=" not in p:
            said = "-o (not repeated here: it holds a credential)" if holds_credential(p) else f"-o {p!r}"
            errors.append(f"{said}: expected key=value, e.g. -o learning_rate=3e-4")
            continue
        k, v = p.split("=", 1)
        out.append((k, v))
    if errors:
        raise FtctlError("\n".join(errors))
    return out


def near_file(path: str, wanted=None) -> str:
    """For a local path that is not there, the one meant, spelled as the user spelled its directory: the closest
    name beside it (trl.jsonl for trl.json, conv.yaml for conv.yml; ``wanted(Path)`` filters them), or, where its
    directory is not there either, the same name in the current directory (train.jsonl for data/train.jsonl); ''
    where nothing is close."""
    import difflib

    if not path or storage.scheme(path) or glob.has_magic(path):
        return ""
    try:
        given = Path(path).expanduser()
        if not given.parent.is_dir():
            return given.name if given.name and Path(given.name).exists() else ""
    except (RuntimeError, OSError):  # ~nouser/x (pathlib's RuntimeError), a name too long: nothing near
        return ""
    try:
        names = [n for n in os.listdir(given.parent) if n[:1] != "." and (wanted is None or wanted(given.parent / n))]
    except OSError:
        return ""

    def likeness(name: str) -> tuple[float, float]:  # the names' stems first: every .jsonl is alike in its suffix
        stems = difflib.SequenceMatcher(None, given.name.split(".")[0], name.split(".")[0]).ratio()
        return stems, difflib.SequenceMatcher(None, given.name, name).ratio()

    close = max(sorted(names), key=likeness, default=None)
    if close is None or likeness(close)[0] < 0.75:
        return ""
    return os.path.join(os.path.dirname(path), close)


def _yaml_where(e, text: str) -> str:
    """PyYAML's error with the line it is about, as written: a key without its colon (`learning_rate 2e-5`) is said
    on its own line (PyYAML's mark is the line after it, where it gave up looking for the colon)."""
    lines = text.splitlines()
    context, problem = getattr(e, "context_mark", None), getattr(e, "problem_mark", None)
    if (
        getattr(e, "context", None) == "while scanning a simple key"
        and context is not None
        and context.line < len(lines)
    ):
        said = lines[context.line].strip()
        missing = "no space after its ':'" if re.search(r":\S", said) and ": " not in said else "no ':' after the key"
        shown = " (it holds a credential; not repeated here)" if holds_credential(said) else f", {said!r}"
        return f"line {context.line + 1}{shown}: {missing}; write KEY: VALUE"
    if getattr(e, "context", None) == "while scanning a quoted scalar" and context is not None:
        return f"line {context.line + 1}, column {context.column + 1}: a quote opened here is never closed"
    if problem is not None and problem.line < len(lines) and lines[problem.line].strip():
        line = lines[problem.line].rstrip()
        if holds_credential(line):  # a secret pasted into a run file: said without it
            return f"{yaml_problem(e)}; line {problem.line + 1} holds a credential (not repeated here)"
        return f"{yaml_problem(e)}; line {problem.line + 1} reads {line!r}"
    return yaml_problem(e)


def load_yaml(path: str) -> dict:
    import yaml

    p = Path(path)
    if not p.is_file():
        if holds_credential(path):  # a token pasted where the run file goes: never repeated
            raise FtctlError(
                "Run file: the name given holds a credential (not repeated here) and is no file: pass a run "
                "description YAML (or -c FILE); a secret passes by its variable's name, --secret NAME."
            )
        near = near_file(path, lambda n: n.suffix.lower() in (".yaml", ".yml"))
        how = f"Did you mean {near!r}?" if near else "Pass an existing YAML file with -c."
        if not near and not p.suffix and "/" not in path:  # `-c dev`: SkyPilot's `sky launch -c CLUSTER`
            how += f" (SkyPilot's -c CLUSTER is --cluster {path} here.)"
        raise FtctlError(f"Run file {path!r} does not exist. {how}")
    if p.suffix.lower() in (".jsonl", ".parquet", ".csv", ".tsv", ".arrow") or (
        p.suffix.lower() == ".json" and p.read_text(errors="replace").lstrip().startswith("[")
    ):  # `data check` takes its data so: an easy mix-up
        raise FtctlError(
            f"{path} looks like data, not a run file (YAML of run keys: what -c, or a file given without a flag, "
            f"takes): give the data with --data {path}."
        )

    class Loader(yaml.SafeLoader):  # a key written twice is said, not the last one taken silently
        pass

    def mapping(loader, node):
        seen = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *common`: keys written after it override, as YAML says
                continue
            key = loader.construct_object(key_node)
            if key in seen:
                raise FtctlError(
                    f"{path} line {key_node.start_mark.line + 1}: {key!r} is set twice (first on line {seen[key]}): "
                    "keep one."
                )
            seen[key] = key_node.start_mark.line + 1
        return loader.construct_mapping(node)

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    text = read_config_text(p, "a run file: YAML of run keys")
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        if (values := yaml_values(root, {})) > YAML_VALUES_MAX:
            raise FtctlError(
                f"{path}: its aliases (*NAME) expand to {values:,} values, over {YAML_VALUES_MAX:,}: no run file is "
                "that large (a YAML 'billion laughs'?). Write the values out, or use fewer aliases."
            )
        data = yaml.load(text, Loader=Loader) or {}  # a SafeLoader
    except yaml.YAMLError as e:
        raise FtctlError(f"{path} is not valid YAML: {_yaml_where(e, text)}.") from None
    except RecursionError:  # PyYAML composes nested values by recursion: [[[[... a few thousand deep
        raise FtctlError(f"{path}: its values nest too deep for YAML to read (thousands of [ or {{ levels).") from None
    if isinstance(data, str) and re.fullmatch(r"[\w.-]+:\S.*", data.strip()):  # `method:lora`: one plain string
        raise FtctlError(f"{path}: {data.strip()!r} is one string to YAML: write a space after the ':' (KEY: VALUE).")
    if not isinstance(data, dict):
        raise FtctlError(f"{path} must hold a mapping of key: value (like 'method: lora'), not {type(data).__name__}.")
    top = root.value if isinstance(root, yaml.MappingNode) else []  # an empty file: none
    for key_node, value_node in top:  # NAME: VALUE pairs (env) as written: true, 010 and 1e3 stay so
        key = key_node.value
        if _is_pairs(key) and isinstance(value_node, yaml.MappingNode) and key in data:
            pairs = value_node.value  # (a `<<: *common` merge in it: left as the loader built it)
            if all(isinstance(v, yaml.ScalarNode) and k.tag != "tag:yaml.org,2002:merge" for k, v in pairs):
                data[key] = {k.value: v.value for k, v in pairs}
    return data


def _is_pairs(key) -> bool:
    """A key whose value is NAME=VALUE pairs of text (env, lr_scheduler_kwargs)."""
    field = canonical_key(str(key))
    return field in FIELDS and typing.get_origin(_base_type(_HINTS[field])[0]) is dict


def build(config: str | dict | None = None, flags: dict | None = None, overrides=None, notes=None) -> RunSpec:
    """YAML (path or dict) < flags < -o overrides. All errors are reported together; ``notes`` (a list) gets a line
    for each key taken as it reads here (AGREES, FastChat's fsdp)."""
    layers = []
    if config is not None:
        layers.append(("run file", list((load_yaml(config) if isinstance(config, str) else config).items())))
    if flags:
        layers.append(("flag", [(k, v) for k, v in flags.items() if v is not None and v != () and v != []]))
    if overrides:
        layers.append(("-o", parse_overrides(overrides)))
    layers = _llama_factory_layers(layers, notes)  # across layers: -o mix_strategy=... with a run file's dataset
    values, errors, sources = {}, [], {}
    written: dict[str, tuple[str, typing.Any] | None] = {}  # key -> its name and value as its layer wrote them
    own_secrets = False  # a run file's secrets list, or -o secrets=none, in place of default_secrets
    zero_asked = None  # the last DeepSpeed config read as a ZeRO strategy: its layer, its key, (strategy, how), note
    eos_asked = None  # TRL's eos_token as the last layer gave it: the key and layer, the token
    template_asked = None  # axolotl's chat_template / LLaMA-Factory's template by name: as said, the name
    entry_templates: list[tuple[str, str]] = []  # axolotl's datasets entries' own chat_template by name: the same
    eot_asked = None  # axolotl's eot_tokens: as said, the tokens
    evaluation: dict[str, tuple[str, str]] = {}  # evaluation_strategy as given, and where: checked against the
    # held-out data below
    from_epoch: dict[str, str] = {}  # saves_per_epoch / evals_per_epoch an earlier layer's strategy: epoch set
    by_method: dict[str, tuple[str, str]] = {}  # METHOD_AGREES keys as given: checked against the method below
    completion = None  # TRL's completion_only_loss as the last layer gave it: (value, how it was said, layer)
    precision: dict[str, list[str]] = {}  # DTYPE_KEYS given a 16-bit dtype: bf16 or fp16 -> who asked
    typed: dict[str, str] = {}  # axolotl's datasets entries' types: path -> type (untemplated_types_note)
    for source, items in layers:
        named: dict[str, str] = {}  # key -> the name this layer gave it first
        agreed: list[str] = []  # DECIDED keys given as ftctl does them anyway
        left_out: list[str] = []  # and LEFT_OUT ones
        epochly: dict[str, str] = {}  # saves_per_epoch / evals_per_epoch this layer's save_strategy: epoch set
        layer = linear_with_named(axolotl_fsdp_merged(_axolotl_columns(items, source, notes)), source, notes)
        layer, named_in_entries = dataset_templates(layer, source)
        entry_templates += named_in_entries
        for raw_key, raw in dataset_mixer_as_weights(
            list(nested_kwargs_flattened(wandb_as_report_to(layer, source, notes)))
        ):
            key = canonical_key(raw_key)
            if raw is None and key in TURNED and key != "datasets":  # left empty: it asks for nothing
                continue
            given = raw
            if key in READ_BESIDE:  # TRL's completion_only_loss, its switch for prompt-completion rows: _trl_loss
                try:  # (left empty: TRL's default, by the rows' kind, which is ftctl's)
                    said = f"completion_only_loss: {config_text(raw)} ({source})"
                    completion = completion if raw is None else (_as_bool(raw), said, source)
                except ValueError as e:
                    errors.append(f"{raw_key!r} ({source}): {e}.")
                continue
            try:
                key, raw = _axolotl(key, raw)
            except ValueError as e:
                errors.append(f"{raw_key!r} ({source}): {e}.")
                continue
            if raw_key.strip() == "dataset_name" and raw and notes is not None:
                notes.append(f"dataset_name ({source}): data_path {raw}")
            if raw_key.strip() in ("datasets", "test_datasets") and key in FIELDS:
                typed.update({str(d["path"]): d["type"] for d in given if isinstance(d.get("type"), str)})
            if raw_key.strip() in ("datasets", "test_datasets") and key in FIELDS and notes is not None:
                unread = dataset_keys_unread(given)
                notes.append(
                    f"{raw_key.strip()} ({source}): their paths are {key}; each row's format is read from its fields"
                    + (f" (not from their {', '.join(unread)})" if unread else "")
                )
            if raw_key.strip() == "adapter" and raw in (None, ""):  # axolotl's full fine-tune leaves it empty
                raw = "fft"
            if raw_key.strip() in NO_TRUNCATION and (raw is None or config_word(raw) in ("none", "null")):
                errors.append(
                    f"{raw_key!r} ({source}): null is TRL's 'no truncation'; ftctl cuts each row at model_max_length "
                    "(and packs rows up to it), so it takes a number: give the model's context (its config's "
                    "max_position_embeddings) or your longest row's tokens (ftctl data check shows them)."
                )
                continue
            if raw is None and key in FIELDS and not _base_type(_HINTS[key])[1]:
                continue  # left empty (axolotl's example files list keys so): it asks for nothing
            if key == "save_strategy" and config_word(raw) in ("no", "false"):
                notes is None or notes.append(
                    f"{raw_key!r} ({source}): no is left out: checkpoints are written all the same, every save_steps "
                    "(or saves_per_epoch), as a stopped or preempted run resumes from them; save_total_limit bounds "
                    "how many are kept"
                )
                continue
            if key in PER_EPOCH and config_word(raw) == "epoch":
                if key != "save_strategy":
                    evaluation[raw_key] = ("epoch", source)
                key, raw = PER_EPOCH[key], 1
                epochly[key] = raw_key
                notes is None or notes.append(f"{raw_key!r} ({source}): epoch is {key}=1 here (at each epoch's end)")
            if key in ("chat_template", "template") and isinstance(raw, str):  # by name: named_template_problem
                template_asked = (
                    None if value_agrees(key, raw) else (f"{raw_key}: {raw.strip()} ({source})", raw.strip())
                )
                if template_asked:
                    continue
            if key == "eot_tokens" and raw not in (None, "", []):  # checked against the chat template below
                tokens = raw if isinstance(raw, list) else [raw]
                eot_asked = (f"eot_tokens ({source})", [str(t) for t in tokens])
                continue
            if key == "fsdp_config" and isinstance(raw, dict):  # axolotl's FSDP settings (axolotl_fsdp_merged)
                try:
                    decided = fsdp_config_read(raw)
                except ValueError as e:
                    errors.append(f"{raw_key!r} ({source}): {e}.")
                    continue
                key, raw = "strategy", "fsdp"
                said = (
                    f"fsdp_config ({source}): strategy=fsdp here (FSDP2, each decoder layer sharded, resharded after forward)"
                    + (
                        f"; its {', '.join(decided)} {'are' if len(decided) > 1 else 'is'} ftctl's to decide (it wraps each decoder layer, loads and saves "
                        "the weights itself; gradient checkpointing is the plan's, -o gradient_checkpointing=true forces it)"
                        if decided
                        else ""
                    )
                )
                notes is None or notes.append(said)
                zero_asked = (source, f"fsdp_config ({source})", ("fsdp", "its fsdp_config"), said)
            elif key == "fsdp" and is_fsdp_full_shard(raw):
                key, raw = "strategy", "fsdp"
                said = f"{raw_key!r} ({source}): FSDP's full sharding is strategy=fsdp here (FSDP2, each layer sharded)"
                notes is None or notes.append(said)
            elif key == "deepspeed" and (zero := deepspeed_strategy(raw)):
                key, raw = "strategy", zero[0]
                said = (
                    f"{raw_key!r} ({source}): strategy={zero[0]} here, as {zero[1]} says; ftctl writes its own DeepSpeed "
                    "config, the file's other settings are the run's keys"
                )
                notes is None or notes.append(said)
                zero_asked = (source, f"{raw_key!r} ({source})", zero, said)
            adds = (
                source != "run file" and key in FIELDS and typing.get_origin(_base_type(_HINTS[key])[0]) in (list, dict)
            )
            spelt = raw_key.strip().replace("-", "_")
            if named.setdefault(key, spelt) != spelt and not adds:  # two names of one key: which one wins is a guess
                errors.append(f"{named[key]!r} and {raw_key!r} ({source}) are both {key} here: keep one.")
                continue
            if key == "eos_token" and raw not in (None, ""):  # checked against the chat template below
                eos_asked = (f"{raw_key!r} ({source})", str(raw))
                continue
            if key in DTYPE_KEYS and (flag := dtype_precision(raw)):
                agreed.append(raw_key)
                precision.setdefault(flag, []).append(f"{raw_key}={raw} ({source})")
                if flag in METHOD_AGREES.get(key, {}):
                    by_method[f"{raw_key!r} ({source})"] = (key, flag)
                continue
            if key in DECIDED:
                if key == "overwrite_output_dir" and config_word(raw) == "true":  # every LLaMA-Factory example
                    notes is None or notes.append(f"{raw_key}: true ({source}): not done: {DECIDED[key]}")
                elif key == "trust_remote_code" and config_word(raw) == "true":  # every LLaMA-Factory example says it
                    notes is None or notes.append(
                        f"{raw_key}: true ({source}), as LLaMA-Factory's examples give it for models that need no "
                        f"remote code, is left off: {DECIDED[key]}"
                    )
                elif value_agrees(key, raw) or config_word(raw) in METHOD_AGREES.get(key, {}):
                    (left_out if key in LEFT_OUT and raw is not None else agreed).append(raw_key)
                    if key in ("evaluation_strategy", "eval_strategy", "do_eval") and raw not in (None, ""):
                        evaluation[raw_key] = (config_word(raw), source)
                    if config_word(raw) in METHOD_AGREES.get(key, {}):  # (left empty, it asks for nothing)
                        by_method[f"{raw_key!r} ({source})"] = (key, config_word(raw))
                else:
                    errors.append(f"{raw_key!r} ({source}) is not set by hand here: {DECIDED[key]}.")
                continue
            if (outer := key.partition("."))[1] and outer[0] in NESTED_UNREAD:  # a model_init_kwargs key not read
                errors.append(f"{raw_key!r} ({source}) is not offered: {NESTED_UNREAD[outer[0]]}.")
                continue
            if key not in FIELDS:
                hint = f" {MEANT[key]}" if key in MEANT else _suggest_key(key) or " `ftctl keys` lists them."
                if holds_credential(str(raw_key)):  # -o hf_...=1, a token pasted where a key goes: never repeated
                    errors.append(
                        f"Unknown key ({source}; not repeated here: it holds a credential). `ftctl keys` lists them."
                    )
                else:
                    errors.append(f"Unknown key {raw_key!r} ({source}).{hint}")
                continue
            try:
                val = _coerce(key, raw)
            except ValueError as e:  # secrets and env may hold a credential: their values are never repeated
                hidden = key in ("secrets", "env") or holds_credential(str(raw))
                said = key if hidden else f"{key}={raw!r}"
                errors.append(f"{said} ({source}): {e}.")
                continue
            typ, _ = _base_type(_HINTS[key])
            own_secrets = own_secrets or (key == "secrets" and (source == "run file" or _clears(raw)))
            merged = False  # added to an earlier layer's: written is neither's alone
            if typing.get_origin(typ) is list and source != "run file" and not _clears(raw):
                base = values.get(key, FIELDS[key].default_factory())
                val = base + [v for v in val if v not in base]  # flags/-o add to the list
                merged = key in values
            elif typing.get_origin(typ) is dict and key in values and val:
                val = {**values[key], **val}
                merged = True
            values[key] = val
            sources[key] = source
            written[key] = (raw_key.strip(), given) if not merged else None
        for per_epoch, steps in STEPS_OF.items():  # the later layer's wins; in one layer epoch, as in transformers
            if per_epoch in epochly and steps in values:
                said = f"{steps}={values.pop(steps)} unused: {epochly[per_epoch]}: epoch ({source}) wins"
                notes is None or notes.append(said + (", as in transformers" if sources[steps] == source else ""))
            elif steps in named and sources.get(per_epoch) != source and per_epoch in from_epoch:
                values.pop(per_epoch)
                notes is None or notes.append(f"{from_epoch.pop(per_epoch)} unused: {steps} ({source}) wins")
        from_epoch.update({k: f"{raw_key}: epoch ({source})" for k, raw_key in epochly.items()})
        if agreed and notes is not None:
            notes.append(f"{', '.join(agreed)} ({source}): left to ftctl, which does what the values given ask")
        for why in dict.fromkeys(DECIDED[canonical_key(k)] for k in left_out) if notes is not None else ():
            keys = ", ".join(k for k in left_out if DECIDED[canonical_key(k)] == why)  # each its own reason
            notes.append(f"{keys} ({source}): left out, {why}")
    if "method" not in values:  # TRL's use_peft/load_in_4bit and FastChat's q_lora say which method
        if meant := method_meant(by_method):
            values["method"] = meant
            notes is None or notes.append(
                f"method {meant}: what {', '.join(by_method)} {'asks' if len(by_method) == 1 else 'ask'} for"
            )
        elif axolotl := [k for k in _vocabularies(layers).get("axolotl", []) if k != "lora_target_linear"]:
            # (its adapter key, given, is the method; lora_target_linear alone asks for LoRA, ftctl's default)
            values["method"] = "fft"
            if lora := [k for k in LORA_KEYS if values.get(k) not in (None, False)]:  # (none of axolotl's examples)
                said = ", ".join(f"{(written.get(k) or (k,))[0]} ({sources[k]})" for k in lora)
                errors.append(
                    f"{said} {'sets' if len(lora) == 1 else 'set'} LoRA's adapters, and with adapter left out axolotl "
                    "trains every weight, without them: give adapter: lora (or --method lora) to train LoRA, or "
                    f"leave {'it' if len(lora) == 1 else 'them'} out (or give --method fft) for a full fine-tune."
                )
            notes is None or notes.append(
                f"method fft: axolotl trains every weight where adapter is left out, as this run file in its "
                f"vocabulary ({', '.join(axolotl)}) does: --method fft; give adapter: lora (or --method lora) for LoRA"
            )
        elif (
            "learning_rate" in sources  # a run file's, or -o's (typed by hand, or a pasted line's --learning_rate)
            and (values["learning_rate"] or 1) < LORA_LEAST_LR
            and not any(k in values for k in LORA_KEYS)  # FastChat's train_lora.sh trains LoRA at 2e-5: it says lora_r
        ):
            errors.append(
                f"learning_rate={values['learning_rate']:g} ({sources['learning_rate']}) with no method given: lora, "
                "the default, trains adapters at 1e-4 to 2e-4, and this rate is full fine-tuning's (FastChat's train "
                "script, TRL without use_peft), at which adapters learn little: give --method fft to train every "
                "weight, a LoRA rate (-o learning_rate=2e-4), or --method lora to train adapters at this rate."
            )
    if zero_asked and sources.get("strategy") == zero_asked[0]:  # (no later layer gave the strategy)
        _zero_not_for_method(values, sources, zero_asked[1:], notes)
    _trl_loss(completion, values, sources, "TRL" in _vocabularies(layers), notes, [source for source, _ in layers])
    if completion and not completion[0] and values["assistant_only_loss"] is False:
        if sources["assistant_only_loss"] == completion[2]:  # TRL's every token too (plan's loss row: RunSpec.written)
            written["assistant_only_loss"] = ("completion_only_loss", False)
    _tool_defaults(values, _vocabularies(layers), notes)
    errors += precision_asked(precision, values, sources, notes)
    if errors:
        raise FtctlError(_join(errors))
    if not own_secrets:  # the default set, which report_to settles whichever layer gave it, and what flags added
        default = default_secrets(values.get("report_to", FIELDS["report_to"].default))
        values["secrets"] = [*default, *(s for s in values.get("secrets", []) if s not in default)]
    given = sorted((k, source) for k, source in sources.items() if values.get(k) is not None)  # null: unset
    as_written = tuple((k, *written[k]) for k, _ in given if written.get(k))
    spec = RunSpec(
        **values, _given_in=tuple(given), _written=as_written, _run_file=config if isinstance(config, str) else None
    )
    if said := written_secret_problems(spec):  # before any line that repeats a value
        raise FtctlError(_join(said))
    if said := nul_problems(spec) or unusable_paths(spec):  # before anything asks whether a path exists (a traceback)
        raise FtctlError(_join(said))
    spec = _model_revision(spec, sources, notes)
    spec = from_adapter(spec, sources, notes)
    if (said := _evaluated_every_logging(spec, values, evaluation, sources)) and notes is not None:
        notes.append(said)
    if notes is not None and spec.warmup_steps is not None and spec.warmup_ratio is not None:
        notes.append(
            f"warmup_ratio={spec.warmup_ratio:g} unused: warmup_steps={spec.warmup_steps} wins (as in transformers)"
        )
    if notes is not None and spec.time and re.fullmatch(r"\d{1,2}:\d{2}", spec.time.strip()):
        minutes, seconds = spec.time.strip().split(":")
        notes.append(
            f"time={spec.time}: Slurm reads MM:SS, {int(minutes)} minutes {int(seconds)} seconds; "
            f"{int(minutes)} hours is --time {int(minutes)}:00:00"
        )
    if notes is not None and (said := _signal_too_close(spec)):
        notes.append(said)
    if notes is not None and (said := untemplated_types_note(spec, typed)):
        notes.append(said)
    said = (
        ([problem] if eos_asked and (problem := eos_token_problem(spec, *eos_asked, notes)) else [])
        + _templates_asked(spec, ([template_asked] if template_asked else []) + entry_templates, notes)
        + ([problem] if eot_asked and (problem := eot_tokens_problem(spec, *eot_asked, notes)) else [])
        + _evaluation_asked(spec, evaluation, sources, notes)
        + _unexpanded_variables(spec, [k for k in PATH_KEYS if sources.get(k) == "run file"])
        + [
            f"{name}: {word} asks for --method {' or '.join(METHOD_AGREES[key][word])}, not {spec.method}: {DECIDED[key]}."
            for name, (key, word) in by_method.items()
            if spec.method not in METHOD_AGREES[key][word]
        ]
    )
    if said:
        raise FtctlError(_join(said))
    validate(spec)
    return spec


# transformers' schedulers ftctl offers, and the lr_scheduler_kwargs each takes
SCHEDULER_KWARGS = {
    "linear": (),
    "cosine": ("num_cycles",),
    "constant": (),
    "constant_with_warmup": (),
    "cosine_with_min_lr": ("min_lr_rate", "min_lr", "num_cycles"),
}


# transformers' schedulers not offered, and what to take instead (their nearest spelling is another schedule)
SCHEDULERS_NOT_OFFERED = {
    "cosine_with_restarts": "restarts are not offered; cosine decays once (-o lr_scheduler_kwargs=num_cycles=N: N "
    "whole waves, up again each time), cosine_with_min_lr to a floor",
    "polynomial": "not offered; linear is its power 1, cosine_with_min_lr decays to a floor",
    "inverse_sqrt": "not offered; take cosine, or constant_with_warmup",
    "reduce_lr_on_plateau": "not offered (it needs an evaluation every step); take cosine",
    "warmup_stable_decay": "not offered; take constant_with_warmup or cosine_with_min_lr",
}


def scheduler_kwargs(spec: RunSpec) -> dict[str, float]:
    """lr_scheduler_kwargs as transformers takes them (numbers)."""
    return {k: float(v) for k, v in spec.lr_scheduler_kwargs.items()}


def _scheduler_kwargs_problems(spec: RunSpec) -> list[str]:
    takes = SCHEDULER_KWARGS.get(spec.lr_scheduler_type)
    if takes is None:  # an unknown scheduler: said by its own check
        return []
    problems = []
    for name, value in spec.lr_scheduler_kwargs.items():
        if name not in takes:
            offered = f"it takes {', '.join(takes)}" if takes else "it takes none"
            problems.append(
                f"lr_scheduler_kwargs {name} is no argument of {spec.lr_scheduler_type}: {offered} "
                "(-o lr_scheduler_kwargs=none clears a run file's)."
            )
            continue
        try:
            number = float(value)
        except ValueError:
            problems.append(f"lr_scheduler_kwargs {name}={value!r}: give a number.")
            continue
        if not math.isfinite(number) or number < 0:
            problems.append(f"lr_scheduler_kwargs {name}={value}: give a finite number of at least 0.")
    if spec.lr_scheduler_type == "cosine_with_min_lr":
        floors = [k for k in ("min_lr_rate", "min_lr") if k in spec.lr_scheduler_kwargs]
        if len(floors) != 1:
            problems.append(
                "lr_scheduler_type=cosine_with_min_lr decays to a floor: give it once, as a share of the peak rate "
                "(-o lr_scheduler_kwargs=min_lr_rate=0.1) or a rate (-o lr_scheduler_kwargs=min_lr=1e-6); "
                "-o lr_scheduler_kwargs=none first clears a run file's."
            )
    return problems


def _suggest_key(word: str) -> str:
    """' Did you mean ...?' for an unknown key: the closest key, or an alias where ``word`` is a near-typo of the
    alias itself (an alias stands for another key: use_peft is no misspelling of use_spot)."""
    import difflib

    near = [a for a in (*ALIASES, *READ_BESIDE) if difflib.SequenceMatcher(None, word, a).ratio() >= 0.85]
    return did_you_mean(word, [*FIELDS, *near])


def _as_bool(value) -> bool:
    if isinstance(value, bool):
        return value
    s = str(value).strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off"):
        return False
    raise ValueError("expects true or false")


# axolotl's keys that are another key here with their values turned (_axolotl): the key, and how `ftctl keys` names them
TURNED = {
    "train_on_inputs": ("assistant_only_loss", "train_on_inputs: its opposite"),
    "lora_target_linear": ("lora_target_modules", "lora_target_linear: true is all-linear"),
    "datasets": ("data_path", "datasets: [{path, type}], axolotl's"),
    "test_datasets": ("eval_data_path", "test_datasets: [{path, type}], axolotl's"),
    "dataset_name": ("data_path", "dataset_name: ORG/NAME, TRL's Hub dataset"),
    "train_on_source": ("assistant_only_loss", "train_on_source: its opposite, qlora.py's"),
}


def _axolotl(key: str, raw):
    """axolotl's (and TRL's, qlora.py's) keys that are another key here, their values turned: train_on_inputs and
    train_on_source (assistant_only_loss's opposite), lora_target_linear (all-linear), datasets ([{path, type}]: each
    row's format is read from its fields; a path that is no file here is a Hub dataset, hf://datasets/ORG/NAME), TRL's
    dataset_name (the same). Others as they are."""
    if key == "train_on_inputs":
        return TURNED["train_on_inputs"][0], not _as_bool(raw)
    if key == "lora_target_linear":
        if not _as_bool(raw):
            raise ValueError("false: name the modules instead, lora_target_modules: [q_proj, v_proj]")
        return TURNED["lora_target_linear"][0], "all-linear"
    if key == "train_on_source":
        return TURNED["train_on_source"][0], not _as_bool(raw)
    if key == "dataset_name":
        return TURNED["dataset_name"][0], dataset_as_data_path(str(raw)) if isinstance(raw, str) else raw
    if (
        key in ("datasets", "test_datasets")
        and isinstance(raw, list)
        and raw
        and all(isinstance(d, dict) and d.get("path") for d in raw)
    ):  # test_datasets: the same entries, held-out data (eval_data_path)
        held_out = key == "test_datasets"
        refused = [
            f"{d['path']}'s {k}: {v!r}: {why}"
            for d in raw
            for k, v in d.items()
            if (why := axolotl_dataset_refuses(k, v, str(d["path"]) if held_out else ""))
        ]
        # their own names of the fields: data_columns (_axolotl_columns)
        refused += [f"{d['path']}'s {why}" for d in raw if (why := axolotl_columns(d)[1])]
        if refused:
            raise ValueError("; ".join(refused))

        return TURNED[key][0], [dataset_as_data_path(str(d["path"])) for d in raw]
    if key in ("datasets", "test_datasets") and raw is not None:  # of no shape read: which part (was "Unknown key")
        entry = "[{path: FILE, type: ...}] (a Hub dataset: path: ORG/NAME)"
        if isinstance(raw, str):
            raise ValueError(
                f"{raw!r} is a path alone, and axolotl's {key} is a list of entries: {key}: {entry}, or "
                f"{TURNED[key][0]}: {raw}"
            )
        if not isinstance(raw, list) or not raw:
            raise ValueError(f"{raw!r} names no dataset: give a list of entries, {key}: {entry}")
        bad = [str(i) for i, d in enumerate(raw, 1) if not (isinstance(d, dict) and d.get("path"))]
        raise ValueError(f"entry {', '.join(bad)} of {len(raw)} has no path: each entry is {entry}")
    return key, raw


def dataset_keys_unread(raw) -> list[str]:
    """The keys of axolotl's dataset entries that ftctl does not read (type, ds_type ...): each row's format is read
    from its fields (turn keys it reads already, TURN_KEYS, and where data_columns takes them, roles and a type's
    field names, are not listed)."""
    read = {"path", "roles", *AXOLOTL_DATASET_KEYS, *TURN_KEYS}
    return sorted(
        {k for d in raw if isinstance(d, dict) for k in d if not (k == "type" and isinstance(d[k], dict))} - read
    )


def _axolotl_columns(items, source: str, notes=None) -> list:
    """A layer's axolotl ``datasets`` entries that name their fields otherwise (axolotl_columns) as data_columns: each
    dataset's path -> its description (JSON text), which trainer.formats reads its rows by; noted."""
    items = list(items)
    entries = [
        d
        for k, raw in items
        if k.strip() in ("datasets", "test_datasets") and isinstance(raw, list)
        for d in raw
        if isinstance(d, dict) and d.get("path")
    ]
    described = {dataset_as_data_path(str(d["path"])): axolotl_columns(d)[0] for d in entries}
    described = {path: d for path, d in described.items() if d}
    if not described:
        return items
    for path, d in described.items():
        notes is None or notes.append(
            f"datasets ({source}): {path}'s rows read by its entry's names: "
            + ", ".join(
                f"{k} {v}" if k != "roles" else "roles " + ", ".join(f"{a} -> {b}" for a, b in v.items())
                for k, v in d.items()
            )
        )
    return items + [("data_columns", {p: json.dumps(d, sort_keys=True) for p, d in described.items()})]


def _llama_factory_layers(layers, notes=None) -> list:
    """The layers' LLaMA-Factory keys read together: each layer's dataset and eval_dataset names as data_path and
    eval_data_path (_llama_factory_names; dataset_dir the last layer's that gives it), and mix_strategy,
    interleave_probs and the entries' num_samples, whichever layers give them (a run file's dataset with -o
    mix_strategy=... reads as the same keys in one file), as data_weights (llama_factory_mix) in the last layer that
    gives one of them. Mix keys stay where no layer's dataset names are read here (the key loop refuses them)."""
    directory = None
    for _, items in layers:
        directory = next((str(v) for k, v in items if k.strip() == "dataset_dir" and v), directory)
    out, dataset, dataset_at, held_out = [], None, None, None
    for i, (source, items) in enumerate(layers):
        items, named = _llama_factory_names(items, source, notes, directory)
        if "dataset" in named:
            dataset, dataset_at = named["dataset"], i
        held_out = named.get("eval_dataset", (held_out,))[0]
        out.append((source, items))
    if dataset is None:
        return out
    paths, samples = dataset
    capped = [(i, v) for i, (_, items) in enumerate(out) for k, v in items if k.strip() == "max_samples"]
    if capped:  # (the last layer's wins)
        out = [(s, [(k, v) for k, v in items if k.strip() != "max_samples"]) for s, items in out]
        samples = llama_factory_max_samples(capped[-1][1], paths, samples, out[capped[-1][0]][0], notes)
        if held_out:  # LLaMA-Factory cuts eval_dataset's datasets too
            llama_factory_max_samples(
                capped[-1][1], held_out, [None] * len(held_out), out[capped[-1][0]][0], notes, True
            )
        dataset_at = max(dataset_at, capped[-1][0])
    mixing = [i for i, (_, items) in enumerate(out) if any(k.strip() in MIX_KEYS for k, _ in items)]
    sampled = any(n is not None for n in samples)
    if not mixing and not sampled:
        return out
    at = max(mixing + [dataset_at] * sampled)
    given = [(k, v) for i in mixing for k, v in out[i][1] if k.strip() in MIX_KEYS]  # later layers' win
    source = ", ".join(dict.fromkeys(out[i][0] for i in sorted({*mixing, at, *[dataset_at] * sampled})))
    out = [(s, [(k, v) for k, v in items if k.strip() not in MIX_KEYS]) for s, items in out]
    out[at] = (out[at][0], llama_factory_mix(out[at][1] + given, paths, source, notes, samples))
    return out


def _llama_factory_names(items, source: str, notes=None, directory=None) -> tuple[list, dict]:
    """LLaMA-Factory's ``dataset: a,b`` (and eval_dataset), names of the entries of dataset_info.json in dataset_dir
    (its default: data; ``directory`` where another layer names it), as data_path (eval_data_path): each entry's
    file_name there (hf_hub_url: a Hub dataset, its folder and revision in the path), whose rows trainer.formats reads
    as that entry says. (The layer's items so, {dataset / eval_dataset: (paths, num_samples of each entry)}); as
    they are where there is no such file here (the key is then refused, saying what to write); FtctlError for a name
    it lacks or an entry ftctl cannot read."""
    items = list(items)
    given = {k.strip(): v for k, v in items}
    if not any(given.get(k) for k in LF_NAMED):
        return items, {}
    directory = str(given.get("dataset_dir") or directory or "data")
    info = Path(directory).expanduser() / LF_INFO
    naming = next(k for k in LF_NAMED if given.get(k))  # dataset, or eval_dataset
    try:
        entries = json.loads(info.read_text())
    except OSError:
        return items, {}
    except ValueError as e:  # was "Unknown key 'dataset'", as if there were no such file
        where = f" (line {e.lineno}, column {e.colno}: {e.msg})" if isinstance(e, json.JSONDecodeError) else ""
        raise FtctlError(
            f"{naming} ({source}): {info}, whose entries it names, is not valid JSON{where}: fix it, or give the "
            "data's files as data_path."
        ) from None
    if not isinstance(entries, dict):
        raise FtctlError(
            f"{naming} ({source}): {info} holds {type(entries).__name__}, not LLaMA-Factory's mapping of dataset "
            'names to their entries ({"my_data": {"file_name": "my_data.json"}}): fix it, or give the data\'s '
            "files as data_path."
        )
    out, errors, named = [], [], {}
    for key, value in items:
        if key.strip() not in LF_NAMED or not value:
            out.append((key, value))
            continue
        names = [
            str(n).strip() for n in (value if isinstance(value, list) else str(value).split(",")) if str(n).strip()
        ]
        paths, samples = [], []
        for name in names:
            entry = entries.get(name)
            if not isinstance(entry, dict):
                known = ", ".join(list(entries)[:8]) + (f" and {len(entries) - 8} more" if len(entries) > 8 else "")
                errors.append(f"{key.strip()} ({source}): {name!r} is not an entry of {info} (it names {known})")
            elif problem := llama_factory_unread(entry, LF_SPLIT[key.strip()]):
                errors.append(f"{key.strip()} ({source}): {info}'s entry {name!r} {problem}")
            elif key.strip() != "dataset" and entry.get("num_samples") is not None:
                errors.append(
                    f"{key.strip()} ({source}): {info}'s entry {name!r} gives num_samples, and ftctl evaluates every "
                    "held-out row: drop num_samples from the entry (or give a file of that many rows)"
                )
            elif (renamed := entry.get("columns") or entry.get("tags")) and not (
                isinstance(file := entry.get("file_name"), str) and "/" not in os.path.normpath(file)
            ):  # trainer.formats applies an entry to a file beside its dataset_info.json
                errors.append(
                    f"{key.strip()} ({source}): {info}'s entry {name!r} renames {', '.join(renamed)}, which ftctl "
                    f"applies to a file beside {LF_INFO} only: put its rows there (file_name: FILE), or rename them in "
                    "the data and give it as data_path"
                )
            elif isinstance(entry.get("file_name"), str):
                paths.append(storage.join(directory, entry["file_name"]))
                samples.append(entry.get("num_samples"))
            elif isinstance(entry.get("hf_hub_url"), str):
                revision = f"@{entry['revision']}" if entry.get("revision") else ""
                folder = f"/{str(entry['folder']).strip('/')}" if entry.get("folder") else ""
                paths.append(f"hf://datasets/{entry['hf_hub_url']}{revision}{folder}")
                samples.append(entry.get("num_samples"))
            else:
                errors.append(
                    f"{key.strip()} ({source}): {info}'s entry {name!r} has no file_name or hf_hub_url, which ftctl "
                    "reads: give its data's files as data_path"
                )
        named[key.strip()] = (paths, samples)
        out.append((LF_NAMED[key.strip()], paths))
        if notes is not None and paths:
            notes.append(
                f"{key.strip()}: {', '.join(names)} ({source}) are {LF_NAMED[key.strip()]} {', '.join(paths)} "
                f"({info}'s entries; each file read as its entry says)"
            )
    if errors:
        raise FtctlError(_join(errors))
    return out, named


def lora_target_names(value: str) -> str | list[str]:
    """lora_target_modules as PEFT takes it: "all-linear", or the list of names (once each; apart by commas, or by
    spaces as TRL's `--lora_target_modules q_proj v_proj` gives them: no module's name holds one); PEFT_TARGETS as
    it is (named for the model by plan.with_lora_targets); FtctlError for none, or all-linear or PEFT_TARGETS beside
    names."""
    value = value.strip()
    if value in ("all-linear", PEFT_TARGETS):
        return value
    names = list(dict.fromkeys(t for t in re.split(r"[,\s]+", value) if t))
    if not names or "all-linear" in names or PEFT_TARGETS in names:
        raise FtctlError(
            f"lora_target_modules={value!r}: give all-linear (alone: every linear layer but the output head) or the "
            "names of the layers to adapt, comma-separated, e.g. -o lora_target_modules=q_proj,v_proj."
        )
    return names


PATH_KEYS = (
    *("model_name_or_path", "chat_template_path", "data_path", "eval_data_path", "output_dir", "resume"),
    "lora_model_dir",
)
URI_KEYS = (*PATH_KEYS, "s3_endpoint_url")  # a URI's user and password there: the store's variables instead
VARIABLE = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)")


def nul_problems(spec: RunSpec) -> list[str]:
    """A line for each key whose value holds a NUL character (a run file's "\\0"), which no argument, environment
    variable, file name or script line carries (a path's: pathlib's ValueError, a traceback; an env value's: cut
    short where the job starts)."""
    said = []
    for name in FIELDS:
        value = getattr(spec, name)
        items = [*value, *value.values()] if isinstance(value, dict) else value if isinstance(value, list) else [value]
        if any("\0" in str(item) for item in items):
            said.append(
                f"{name} holds a NUL character (\\0), which no program's argument, environment or file name can "
                "carry: remove it."
            )
    return said


def unusable_paths(spec: RunSpec) -> list[str]:
    """A line for each local path of the run (PATH_KEYS, an apptainer image's file) that names no place: in the home
    of a user there is none of here (~nouser/x: pathlib's RuntimeError), or one no file system takes, a name over
    NAME_MAX bytes or a path over PATH_MAX (asking whether it exists raised ENAMETOOLONG: both were tracebacks). A
    URI's key is the store's to judge."""
    image = spec.container or ""
    image = image.partition(":")[2] if image.startswith(("apptainer:", "singularity:")) else ""
    values = [(k, getattr(spec, k)) for k in PATH_KEYS] + [("container", image)]
    said = []
    for key, value in values:
        if not value or value in ("auto", "never") or value.startswith("builtin:") or storage.is_remote(value):
            continue
        for v in split_paths(value) if key in PATH_LISTS else [value]:
            if v.startswith("~") and os.path.expanduser(v).startswith("~"):  # ~nouser/x: Path's RuntimeError
                user = v[1:].split("/")[0]
                said.append(
                    f"{key}={v!r}: there is no user {user!r} here, whose home ~{user} would be: write the path in "
                    "full (~/ is your own home)."
                )
        # split_paths' commas too: its names shorter, never longer (it asks whether each part exists)
        said += filter(None, [storage.long_name_problem(value, key, commas=key in PATH_LISTS)])
    return said


def _http_url(value: str) -> bool:
    """Whether ``value`` is an http:// or https:// URL with a host (an endpoint botocore takes)."""
    import urllib.parse

    try:
        parts = urllib.parse.urlsplit(value.strip())
        return parts.scheme.lower() in ("http", "https") and bool(parts.hostname)
    except ValueError:  # a bad port, an unbalanced [
        return False


def _unexpanded_variables(spec: RunSpec, keys) -> list[str]:
    """A run file's path (``keys``) naming a shell variable ($SCRATCH/runs/r1): ftctl expands none, so it would have
    made a directory named $SCRATCH (and a Slurm job's variables are not this shell's). On the command line the shell
    has expanded them: a $ left there was quoted on purpose."""
    errors = []
    for key in keys:
        for v in split_paths(getattr(spec, key)) if key in PATH_LISTS else [getattr(spec, key)]:
            if v and (found := VARIABLE.search(v)) and not Path(v).exists():
                errors.append(
                    f"{key}={v!r} names ${found.group(1)}, and ftctl expands no variables: write the path itself, "
                    f'or give it on the command line, where your shell expands it (-o {key}="{v}").'
                )
    return errors


def best_model_problems(spec: RunSpec) -> list[str]:
    """load_best_model_at_end: true needs held-out data and a checkpoint at every evaluation, so that the lowest
    held-out loss is always a checkpoint's (transformers asks the opposite, save_steps a multiple of eval_steps: a
    lowest loss found between checkpoints is then kept by none, and it loads an older checkpoint). Said here, before
    the launch, in ftctl's words. Every strategy loads it (FSDP2 as a resume does: run.load_best)."""
    if not spec.load_best_model_at_end:
        return []
    key = "load_best_model_at_end: true"
    if not spec.evaluates:
        return [
            f"{key} loads the checkpoint with the lowest held-out loss at the end: give held-out data (--eval-data "
            "FILE, or -o eval_split=0.05), or leave it out (the final model is then the last step's)."
        ]
    if spec.evals_per_epoch or spec.saves_per_epoch:
        if spec.evals_per_epoch in (None, spec.saves_per_epoch) and not spec.eval_steps:
            return []  # evaluated at each checkpoint
        saves = (
            f"saves_per_epoch={spec.saves_per_epoch}" if spec.saves_per_epoch else f"save_steps={spec.checkpoint_every}"
        )
        evals = f"evals_per_epoch={spec.evals_per_epoch}" if spec.evals_per_epoch else f"eval_steps={spec.eval_steps}"
        return [
            f"{key} needs a checkpoint at every evaluation (the lowest held-out loss's weights are a checkpoint's), "
            f"and {evals} beside {saves} may fall between checkpoints: give both per epoch alike (-o "
            f"evals_per_epoch=N -o saves_per_epoch=N), or leave {evals.split('=')[0]} out to measure at each checkpoint."
        ]
    every, saves = spec.eval_every, spec.checkpoint_every
    if every % saves == 0:
        return []
    return [
        f"{key} needs a checkpoint at every evaluation (the lowest held-out loss's weights are a checkpoint's): "
        f"eval_steps={every} is not a multiple of save_steps={saves}; -o save_steps={every} (a checkpoint at each "
        f"evaluation) or -o eval_steps={math.ceil(every / saves) * saves}."
    ]


def validate(spec: RunSpec) -> None:
    errors = []

    def choice(key, allowed):
        v = getattr(spec, key)
        if v is not None and v not in allowed:
            hint = did_you_mean(str(v).lower(), allowed) or did_you_mean(str(v), allowed)  # LoRA: lora
            errors.append(f"{key}={v!r} is not one of {', '.join(allowed)}.{hint}")

    if not spec.dataset_text_field.strip() or spec.dataset_text_field in CONVERSATION_FIELDS:
        errors.append(
            f"dataset_text_field={spec.dataset_text_field!r}: give the field that holds each row's plain text (TRL's "
            "key; default text); conversations are read from their own fields"
        )
    choice("method", METHODS)
    choice("backend", BACKENDS)
    choice("strategy", STRATEGIES)
    choice("ddp_comm_dtype", DDP_COMM_DTYPES)
    for key, tiers, said in (
        ("network_tier", NETWORK_TIERS, "the fast interconnect between nodes: EFA, GPUDirect, InfiniBand"),
        ("disk_tier", DISK_TIERS, "the cloud's fastest disk, for large checkpoints"),
    ):
        if (v := getattr(spec, key)) is not None and v not in tiers:
            hint = did_you_mean(str(v).lower(), tiers)
            errors.append(
                f"{key}={v!r} is no tier ftctl asks SkyPilot for: -o {key}={tiers[0]} (SkyPilot's default) or "
                f"-o {key}=best ({said}); unset, ftctl chooses (docs/skypilot.md).{hint}"
            )
    choice("attn_implementation", ATTENTION)
    if spec.optim is not None and spec.optim not in OPTIMIZERS:
        hint = did_you_mean(spec.optim.lower(), OPTIMIZERS)
        errors.append(
            f"optim={spec.optim!r} is no optimizer transformers knows.{hint} Among its names (OptimizerNames): "
            "adamw_torch_fused, adamw_torch, paged_adamw_8bit, adamw_8bit, adafactor, sgd; unset, the planner takes "
            "adamw_torch_fused (qlora: paged_adamw_8bit)."
        )
    if spec.lr_scheduler_type in SCHEDULERS_NOT_OFFERED:  # the nearest spelling would be another schedule
        errors.append(
            f"lr_scheduler_type={spec.lr_scheduler_type!r}: {SCHEDULERS_NOT_OFFERED[spec.lr_scheduler_type]}."
        )
    else:
        choice("lr_scheduler_type", tuple(SCHEDULER_KWARGS))
    errors += _scheduler_kwargs_problems(spec)
    if spec.method in ("lora", "qlora"):  # their form; the names the model has are checked by the trainer
        try:
            lora_target_names(spec.lora_target_modules)
        except FtctlError as e:
            errors.append(str(e))
    for key in (
        "model_max_length",
        "lora_r",
        "lora_alpha",
        "trainable_layers",
        "logging_steps",
        "save_total_limit",
        "rdzv_port",
        "idle_minutes",
    ):
        if getattr(spec, key) < 1:
            errors.append(f"{key} must be at least 1, not {getattr(spec, key)}.")
    for key in (
        "global_batch_size",
        "save_steps",
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "nodes",
        "cpus_per_task",
        "disk_size",
        "ddp_bucket_cap_mb",
        "dataset_num_proc",
        "eval_steps",
        "evals_per_epoch",
        "saves_per_epoch",
        "per_device_eval_batch_size",
        "early_stopping_patience",
    ):
        v = getattr(spec, key)
        if v is not None and v < 1:
            errors.append(f"{key} must be at least 1, not {v}.")
    for per_epoch, steps, what in (
        ("saves_per_epoch", "save_steps", "a checkpoint"),
        ("evals_per_epoch", "eval_steps", "a held-out loss"),
    ):
        if getattr(spec, per_epoch) is not None and getattr(spec, steps) is not None:
            errors.append(f"{steps} and {per_epoch} both given: keep one ({what} every N steps, or N an epoch).")
    if spec.learning_rate is not None and not (0 < spec.learning_rate < 1):
        errors.append(f"learning_rate={spec.learning_rate} is outside (0, 1); typical: 2e-5 (fft) to 2e-4 (lora).")
    if not 0 <= spec.lora_dropout < 1:
        errors.append(f"lora_dropout must be in [0, 1), not {spec.lora_dropout}.")
    if spec.signal_lead_s < 0:
        errors.append(f"signal_lead_s must be 0 or more seconds before the time limit, not {spec.signal_lead_s}.")
    if spec.max_requeues is not None and spec.max_requeues < 0:
        errors.append(f"max_requeues must be 0 (never requeue) or more, not {spec.max_requeues}.")
    if spec.preflight_min_busbw_gbps is not None and spec.preflight_min_busbw_gbps < 0:
        errors.append(f"preflight_min_busbw_gbps must be 0 or more GB/s, not {spec.preflight_min_busbw_gbps}.")
    if spec.warmup_steps is not None and spec.warmup_steps < 0:
        errors.append(f"warmup_steps must be 0 or more, not {spec.warmup_steps}.")
    if spec.warmup_ratio is not None and not 0 <= spec.warmup_ratio < 1:
        errors.append(f"warmup_ratio must be in [0, 1), not {spec.warmup_ratio}.")
    if spec.max_steps == 0 or spec.max_steps < -1:
        errors.append("max_steps must be a positive number of steps, or -1 to train num_train_epochs.")
    if not 0 < spec.num_train_epochs < math.inf:  # nan too
        errors.append(
            f"num_train_epochs must be positive and finite, not {spec.num_train_epochs} (to train a number of steps: "
            "-o max_steps=N)."
        )
    if not 0 <= spec.max_grad_norm < math.inf:
        errors.append(
            f"max_grad_norm must be 0 (no clipping) or a finite number above, not {spec.max_grad_norm}; typical: 1.0."
        )
    if not 0 <= spec.weight_decay < math.inf:
        errors.append(
            f"weight_decay must be 0 (none) or a finite number above, not {spec.weight_decay}; typical: 0 to 0.1."
        )
    if spec.host_memory_gb is not None and not 0 < spec.host_memory_gb < math.inf:
        errors.append(
            f"host_memory_gb must be the GB of CPU RAM a node has, above 0, not {spec.host_memory_gb} (leave it out "
            "to assume twice its GPUs' memory)."
        )
    if spec.bf16 and spec.fp16:
        errors.append("bf16 and fp16 are both on: choose one (or neither and let the planner choose).")
    errors += filter(None, (secret_problem(s) for s in spec.secrets))
    for k in spec.env:
        if holds_credential(k):  # -o env=hf_...=1: a token where the name goes, written as the name
            errors.append(
                "env: a variable's name holds a credential (not repeated here): -o env=NAME=VALUE takes the name "
                "first; a secret is exported where you launch and passed by name, --secret NAME."
            )
        elif not ENV_NAME_PATTERN.fullmatch(k):
            errors.append(f"env {k!r} is not a valid environment variable name.")
        elif said := envvars.setting_problem(k, str(spec.env[k])):
            errors.append(said)
        elif is_secret_name(k, spec.secrets, spec.env[k]):
            errors.append(
                f"env {k} is a secret, and env values are written into the rendered job files and spec.json: "
                f"export {k} where you launch and pass --secret {k} instead (secrets pass by name only)."
            )
        elif what := credential_in(spec.env[k], path=path_like(spec.env[k])):  # HF_HOME=/scratch/hf_cache: no token
            errors.append(
                f"env {k} holds {what} (not repeated here), and env values are written into the rendered job files "
                f"and spec.json: export {k} where you launch and pass --secret {k} instead (secrets pass by name only)."
            )
        elif holders := secret_holders(spec.env[k], spec.secrets):  # -o env=X=$WANDB_API_KEY, the shell's expansion
            name = holders[0]  # k is none of them: that is a secret's name, said above
            errors.append(
                f"env {k} holds the value of {', '.join(holders)} (set here; not repeated), and env values are written "
                f"into the rendered job files and spec.json: pass it by name, --secret {name} (the job reads {name}), "
                f'or, for the job to read it as {k}, export {k}="${name}" where you launch and pass --secret {k} '
                "(secrets pass by name only)."
            )
    errors += filter(None, (setup_secret_problem(line, spec.secrets) for line in spec.setup))
    if spec.model_params:
        try:
            parse_size(spec.model_params)
        except FtctlError as e:
            errors.append(str(e))
    try:
        report_integrations(spec.report_to)
    except FtctlError as e:
        errors.append(str(e))
    if spec.s3_endpoint_url and not _http_url(spec.s3_endpoint_url):  # botocore's "Invalid endpoint", on the nodes
        errors.append(
            f"s3_endpoint_url {spec.s3_endpoint_url!r} is no http(s)://HOST URL: give the S3-compatible store's "
            "endpoint, http(s)://HOST[:PORT] (MinIO: -o s3_endpoint_url=http://minio.example.com:9000)."
        )
    if spec.run_name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", spec.run_name):
        errors.append(
            f"run_name {spec.run_name!r}: use letters, digits, '.', '_' and '-' (at most 63), "
            "starting with a letter or digit; it names jobs, clusters and buckets."
        )
    for key, flag in (("infra", "--infra"), ("cloud", "-o cloud"), ("region", "-o region")):  # aws\nsetup: x
        if (value := getattr(spec, key)) is not None and not value.strip().isprintable():  # ends: _split strips
            errors.append(
                f"{key_value_said(flag, value)} holds a newline or another control character: give SkyPilot's "
                "CLOUD[/REGION[/ZONE]] on one line (--infra gcp/us-central1)."
            )
    # SkyPilot's own rule (sky.skylet.constants.CLUSTER_NAME_VALID_REGEX): a name it refuses was sent to it first
    if spec.cluster is not None and not re.fullmatch(r"[a-zA-Z]([-_.a-zA-Z0-9]*[a-zA-Z0-9])?", spec.cluster):
        errors.append(
            f"cluster{'' if holds_credential(spec.cluster) else f' {spec.cluster!r}'}: SkyPilot names a cluster with letters, digits, '-', '_' and '.', starting "
            "with a letter and ending with a letter or digit (--cluster my-run-1)."
        )
    if (
        spec.container
        and spec.container.split(":", 1)[0] in ("apptainer", "pyxis", "docker", "singularity", "enroot")
        and not spec.container.split(":", 1)[1].strip()
    ):
        errors.append(f"container {spec.container!r} names no image after the prefix.")
    if not split_paths(spec.data_path):  # --data "$DATA" with DATA unset: found here, not after the queue's wait
        errors.append(
            f"data_path {spec.data_path!r} names no data: give a file, a directory, a pattern, a URI or builtin:demo."
        )
    if spec.eval_data_path and spec.eval_split:
        errors.append("eval_data_path and eval_split both set: hold out data one way, a file or a share of data_path.")
    if spec.early_stopping_patience and not spec.evaluates:
        errors.append(
            "early_stopping_patience stops on the held-out loss: give held-out data, --eval-data PATH or -o eval_split=0.05."
        )
    errors += best_model_problems(spec)
    if spec.eval_split < 0 or (spec.eval_split >= 1 and spec.eval_split != int(spec.eval_split)):
        errors.append(
            f"eval_split={spec.eval_split:g}: give the share of data_path's rows to hold out (below 1, e.g. 0.05) or "
            "their number (a whole number, e.g. 100)."
        )
    if spec.data_weights is not None:
        try:
            weights = parse_weights(spec.data_weights)
            paths = split_paths(spec.data_path)
            if len(weights) != len(paths):
                raise ValueError(f"{len(weights)} weight(s) for {len(paths)} dataset(s) in data_path")
        except ValueError as e:
            errors.append(
                f"data_weights={spec.data_weights}: {e}; give one number above 0 per dataset, in data_path's order "
                "(-o data_weights=1,0.5), or none to read each once."
            )
    errors += data_columns_problems(
        spec.data_columns, [*split_paths(spec.data_path), *split_paths(spec.eval_data_path)]
    )
    for key in ("data_path", "eval_data_path", "output_dir"):
        for v in split_paths(getattr(spec, key)) if key in PATH_LISTS else [getattr(spec, key)]:
            if v and "://" in v and not (v.startswith("file://") or storage.is_remote(v)):
                schemes = ", ".join(sorted(f"{s}://" for s in storage.REMOTE_SCHEMES))
                errors.append(f"{key}={v!r}: unknown storage scheme; use a local path, file:// or one of {schemes}.")
            elif v and (meant := storage.misspelt_uri(v)):
                errors.append(f"{key}={v!r} would be a local path: did you mean {meant}?")
            elif v and storage.is_remote(v) and not v.partition("://")[2].split("/")[0]:  # s3://, gs:///key
                what = "container" if storage.REMOTE_SCHEMES[storage.scheme(v)][0] == "abfs" else "bucket"
                form = f"{storage.scheme(v)}://{what.upper()}/PATH"
                what, form = ("dataset", "hf://datasets/ORG/NAME") if storage.scheme(v) == "hf" else (what, form)
                errors.append(f"{key}={v!r} names no {what}: write {form}.")
    try:
        storage.require_writable(spec.output, "output_dir")
    except FtctlError as e:
        errors.append(str(e))
    if said := resume_problem(spec.resume, here=spec.backend in RUNS_HERE, output=spec.output):
        errors.append(said)
    if spec.time and spec.backend in (None, "slurm"):  # another backend refuses it (backend.refuse_foreign_options)
        try:
            limit = slurm_time_s(spec.time)
        except ValueError:
            errors.append(
                f"time={spec.time!r}: Slurm reads minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS (12 hours: "
                "12:00:00), or UNLIMITED."
            )
        else:
            if limit is not None and limit <= spec.signal_lead_s:
                errors.append(
                    f"time={spec.time} ({limit:g} s, as Slurm reads it) is not longer than signal_lead_s="
                    f"{spec.signal_lead_s}: the job would be told to checkpoint and requeue before it trains; raise "
                    "--time (12 hours: 12:00:00), or lower -o signal_lead_s."
                )
    if errors:
        raise FtctlError(_join(errors))


def _object_key_comma(key: str, value: str) -> str | None:
    """An object key holding a comma (``--data s3://b/a,b.jsonl``) is split there, and what follows it is a relative
    path that is nothing here: said once as that, with how to give the key, not as a missing ``b.jsonl``."""
    paths = split_paths(value)
    for before, part in zip(paths, paths[1:]):
        if (
            storage.is_remote(before)
            and not storage.scheme(part)
            and not part.startswith(("builtin:", "/", "~"))
            and not glob.has_magic(part)
            and not _is_here(part)
        ):
            flag = "--eval-data" if key == "eval_data_path" else "--data"
            return (
                f"a comma separates datasets, and {part!r} after {before!r} is no file or directory here: for one "
                f"object whose key holds a comma, write ? in the comma's place ({flag} {before + '?' + part!r}, a "
                "pattern that matches it); for a local file, check its path"
            )
    return None


SIGNAL_EARLY_S = 60  # man sbatch --signal: "the signal may be sent up to 60 seconds earlier than specified"


def _signal_too_close(spec) -> str | None:
    """A --time within a minute of signal_lead_s, as said in a note: Slurm's USR2 may then come as the job starts
    (--time 00:01:00 -o signal_lead_s=30 had it 10 s in, before the first step), and each attempt saves at its first
    step and requeues, until max_requeues is spent with nothing trained. One not longer than the lead is an error."""
    if not spec.time or spec.backend not in (None, "slurm"):
        return None
    try:
        limit = slurm_time_s(spec.time)
    except ValueError:
        return None
    if limit is None or not spec.signal_lead_s < limit < spec.signal_lead_s + SIGNAL_EARLY_S:
        return None
    return (
        f"time={spec.time} is {limit - spec.signal_lead_s:g} s longer than signal_lead_s={spec.signal_lead_s}, and "
        f"Slurm may send its USR2 up to {SIGNAL_EARLY_S} s earlier than asked (man sbatch, --signal): it can come as "
        "the job starts, and each attempt stops at its first step; raise --time past signal_lead_s + "
        f"{SIGNAL_EARLY_S} s"
    )


def slurm_time_s(text: str) -> int | None:
    """Seconds of a Slurm time limit (sbatch --time's forms), None for none (UNLIMITED, INFINITE, 0); ValueError
    otherwise."""
    text = text.strip()
    if text.upper() in ("UNLIMITED", "INFINITE") or re.fullmatch(r"0+", text):  # sbatch reads 0 as no limit
        return None
    days, dash, rest = text.rpartition("-") if "-" in text else ("", "", text)
    if not re.fullmatch(r"\d+(:\d+){0,2}", rest) or (dash and not days.isdigit()):
        raise ValueError(text)
    parts = [int(p) for p in rest.split(":")]
    if dash:  # D-HH, D-HH:MM, D-HH:MM:SS
        h, m, sec = (parts + [0, 0])[:3]
        return ((int(days) * 24 + h) * 60 + m) * 60 + sec
    if len(parts) == 3:  # HH:MM:SS
        return (parts[0] * 60 + parts[1]) * 60 + parts[2]
    return parts[0] * 60 + (parts[1] if len(parts) == 2 else 0)  # minutes, MM:SS


# user values checked apart from written_secret_problems: secrets are names (secret_problem), env and setup lines
# have their own lines (validate, setup_secret_problem)
_CHECKED_APART = ("secrets", "env", "setup")


def written_secret_problems(spec: RunSpec) -> list[str]:
    """A line for each user value that would write a credential into the job's files: every string a backend
    writes into its rendered script or task (job.sbatch, task.yaml, the docker run line), spec.json and the
    checkpoints' manifests (sbatch args, Slurm's and SkyPilot's options, the container, the model, data and output
    paths, report_to, scheduler arguments ...) holding the value of a secret set here (secret_holders), a token's
    shape (credential_in: in a path's names only a token as issued, so a directory hf_cache is no token) or a URI's
    user and password, in the same line on every backend; the value is never repeated. A key at its default holds
    nobody's secret (the trainer builds its spec.json again where the secrets are set)."""
    said = []
    for key, value in written_values(spec):
        where = f"and {key} is written into the rendered job files and spec.json"
        if uri_credentials(value):
            said.append(uri_credentials_said(key, value))
        elif holders := secret_holders(value, spec.secrets):
            name = holders[0]
            said.append(
                f"{key} holds the value of {', '.join(holders)} (set here; not repeated), {where}: pass it by name, "
                f"--secret {name} (the job reads {name}), and leave it out of {key} (secrets pass by name only)."
            )
        elif what := credential_in(value, path=key in (*PATH_KEYS, "data_columns")):  # a path's name: hf_cache
            said.append(written_credential_said(key, value, what))
    return list(dict.fromkeys(said))


def written_values(spec: RunSpec) -> list[tuple[str, str]]:
    """(key, value) of each user string a backend writes into the job's files: each string key's, each item of a
    list, each KEY=VALUE of a mapping; not those at their defaults, nor _CHECKED_APART's."""
    out = []
    for name, f in FIELDS.items():
        value = getattr(spec, name)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if name in _CHECKED_APART or value == default:
            continue
        if isinstance(value, str):
            out.append((name, value))
        elif isinstance(value, list):
            out += [(name, v) for v in value if isinstance(v, str)]
        elif isinstance(value, dict):
            out += [(name, f"{k}={v}") for k, v in value.items()]
    return out


def default_secrets(report_to: str) -> list[str]:
    """The secrets a run passes by name unasked, the one owner of that set (spec.build settles spec.secrets with it; the
    backends pass spec.secrets): SECRETS, and the key of each tracker report_to names (REPORT_SECRETS). W&B's key
    reaches no job that does not log to W&B; --secret WANDB_API_KEY passes it all the same."""
    return [*SECRETS, *(key for tracker, key in REPORT_SECRETS.items() if tracker in trackers(report_to))]


def trackers(report_to: str) -> set[str]:
    """The names report_to gives (comma-separated): ``"wandb" in trackers(spec.report_to)``."""
    return {name.strip() for name in str(report_to).split(",")}


def report_settings(report_to: str, environ=None) -> list[str]:
    """The NAMES (never values) of the settings variables of the trackers report_to names (REPORT_SETTINGS:
    WANDB_PROJECT ...) that are set here (``environ``, default os.environ): what a backend whose job inherits nothing
    of the launching shell passes by name (SkyPilot's secrets, docker's ``-e NAME``), as it does the store's
    credentials; one that -o env sets is the task's own, which the backend leaves out."""
    environ = os.environ if environ is None else environ
    named = trackers(report_to)
    return [n for tracker, names in REPORT_SETTINGS.items() if tracker in named for n in names if environ.get(n)]


def report_integrations(value: str) -> list[str]:
    """report_to's integrations, none left out; FtctlError for a name ftctl does not know. The one check: spec
    validation says it before a job is paid for, the trainer asks here too (then that each one's package is
    installed)."""
    names = [v.strip() for v in value.split(",") if v.strip()]
    for name in names:
        if name in OTHER_TRACKERS:
            raise FtctlError(
                f"report_to={name!r}: ftctl does not report to {name}; it reports to tensorboard or wandb "
                "(comma-separated; W&B without a server: -o env=WANDB_MODE=offline), or none. Every logged step is in "
                "the output's metrics.jsonl either way (a JSON row a step: step, loss, lr, grad_norm; an evaluation's: "
                f"eval_loss), to log to {name} after the run."
            )
        if name not in REPORT_TO:
            raise FtctlError(
                f"report_to={name!r}: use none, tensorboard or wandb (comma-separated).{did_you_mean(name, REPORT_TO)}"
            )
    return [n for n in names if n != "none"]


def resume_problem(value: str, here: bool, output: str = "") -> str | None:
    """What is wrong with ``resume=VALUE`` (None: nothing): auto, never, a checkpoint of the run's own object-store
    ``output`` (output/checkpoint-N: the trainer downloads it), or a checkpoint directory on the machine that
    trains. ``here``: that machine is this one, so the directory must hold transformers' trainer_state.json (the
    trainer asks with here=True); elsewhere (a cluster's own filesystem) only its form is checked: a directory
    named checkpoint-<step>, or one that is a checkpoint here. The one check of the trainer and spec validation."""
    if value in ("auto", "never"):
        return None
    if not value.strip():
        return "resume must be auto, never or the path of a checkpoint."
    if storage.is_remote(value):
        if storage.is_remote(output) and re.fullmatch(
            re.escape(store_uri(output)) + r"/checkpoint-\d+", store_uri(value)
        ):
            return None
        return (
            f"{key_value_said('resume', value)}: a checkpoint in object storage is resumed from the run's own "
            "output_dir (resume=OUTPUT/checkpoint-N, or resume=auto for its newest); another run's: `ftctl sync pull` it, "
            "then resume=DIR/checkpoint-N."
        )
    if Path(value, "trainer_state.json").expanduser().is_file():
        return None
    if here:
        why = "no trainer_state.json"
    elif re.fullmatch(r"checkpoint-\d+", Path(value).name):
        return None  # it may be there only on the cluster
    else:
        why = "not named checkpoint-<step>"
    return (
        f"{key_value_said('resume', value)} is not auto, never or a checkpoint directory ({why}): pass a "
        "checkpoint-<step> directory, or resume=auto."
    )


def _join(errors: list[str]) -> str:
    if len(errors) == 1:
        return errors[0]
    return f"{len(errors)} problems in the run description:\n" + "\n".join(f"  - {e}" for e in errors)


def parse_size(text: str) -> float:
    """'7b' -> 7.0, '135m' -> 0.135, '1.5B' -> 1.5 (billions of parameters)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([bmBMkK]?)\s*", str(text))
    if not m:
        raise FtctlError(f"--model-params {text!r}: write it like 7b, 1.5b or 135m.")
    n, unit = float(m.group(1)), m.group(2).lower()
    if n <= 0:
        raise FtctlError(
            f"--model-params {text!r}: a model has more than 0 parameters; write its size like 7b or 135m."
        )
    return n * {"b": 1.0, "m": 1e-3, "k": 1e-6, "": 1e-9 if n > 1e5 else 1.0}[unit]


def described_keys() -> list[tuple[str, str, str, str]]:
    """(section, key, default, what it does) of every run key, read from RunSpec's own lines and comments (one
    owner: what `ftctl keys` prints is what the code says); what it does starts with the key's other names
    (ALIASES), ``(also: max_seq_length, max_length)``, so that `ftctl keys WORD` finds a key by them too."""
    import inspect

    also = {"assistant_only_loss": [TRL_COMPLETION_SAID]}  # (read beside it: _trl_loss)
    for alias, key in ALIASES.items():
        also.setdefault(key, []).append(alias)
    for key, said in TURNED.values():
        also.setdefault(key, []).append(said)
    out, section, said = [], "", []
    for line in inspect.getsource(RunSpec).splitlines()[1:]:
        text = line.strip()
        if text.startswith("# ---") or re.fullmatch(r"# \w+", text):  # a section, or a backend's keys
            section, said = text.strip("# -"), []
        elif text.startswith("#"):
            said.append(text.lstrip("# "))
        elif (m := re.match(r"(\w+): [^=]+= (.+?)(?:\s+#\s*(.*))?$", text)) and m.group(1) in FIELDS:
            default = _default_text(FIELDS[m.group(1)])
            names = f"(also: {', '.join(also[m.group(1)])})" if m.group(1) in also else ""
            out.append((section, m.group(1), default, " ".join(filter(None, [names, *said, m.group(3)])).strip()))
            said = []
        elif text.startswith(("@", "def ")):
            break
    return out


def _default_text(f: dataclasses.Field) -> str:
    value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    value = IMPLIED.get(f.name, value)
    return "(unset)" if value is None else json.dumps(value) if isinstance(value, (list, dict, bool)) else str(value)


def trl_completion_only(spec: RunSpec) -> bool:
    """Whether TRL, given this run's keys, trains a prompt-completion row's completion only: its completion_only_loss
    default; False where the run gave it false (the key that set assistant_only_loss, RunSpec.written): data.loss_on's
    TRL difference is then none."""
    written = spec.written("assistant_only_loss")
    return not written or written[0] != "completion_only_loss"


def given_as(spec: RunSpec, key: str, value=None, flag: str | None = None) -> str:
    """Run key ``key`` as the user gave it (RunSpec.given_in), for a message about it: with ``value`` None the way
    alone ("--container", "-o container", "the run file's container"); else with ``value``, which is how a fault
    repeats what was given and how its fix says what to give instead, in the same place: "--container docker:REF",
    "-o container=docker:REF", "container: docker:REF in gist.yaml" (the run file as named; a run file's value was
    said as if typed as --container, which the user never wrote). ``value`` the spec's own (what was given, maybe
    resolved since: a path made absolute) is said as it was written (RunSpec.written): "data: rows.json in
    run.yaml", "--data rows.json", "-o data=rows.json"; another value (a fix) under the name the user gave the key
    where that name is the key's own or an alias of it (data: DIR; not datasets:, whose value is a list of entries).
    ``flag``: the key's flag, also where no layer gave it (a spec made in code, an image ftctl chose); None: -o is
    its way."""
    how = spec.given_in(key)
    name, raw = spec.written(key) or (key, None)
    repeated = value is not None and how is not None and spec.written(key) is not None and _is_given(spec, key, value)
    if not repeated and ALIASES.get(name.replace("-", "_"), name.replace("-", "_")) != key:
        name = key  # datasets:, dataset_name:, a nested key: their values are not the key's
    if value is None:
        return {"run file": f"the run file's {name}", "-o": f"-o {name}"}.get(how, flag or f"-o {key}")
    if how == "run file":
        text = _written_text(raw) if repeated else str(value)
        plain = re.fullmatch(r"[\w@%+=:,./~#-]+", text) and not text.startswith(("-", "~", "#", "%", "@"))
        flow = repeated and isinstance(raw, (list, dict))  # YAML's own text of it
        where = shlex.quote(spec.run_file) if spec.run_file else "the run file"
        return f"{name}: {text if plain or flow else json.dumps(text)} in {where}"  # (JSON's string: YAML's too)
    if repeated and how == "flag" and flag and isinstance(raw, (list, tuple)) and raw:  # --data a --data b
        return " ".join(f"{flag} {shlex.quote(_written_text(v))}" for v in raw)
    text = _written_text(raw) if repeated and not isinstance(raw, (list, tuple, dict)) else str(value)
    if how == "-o" or flag is None:
        return f"-o {shlex.quote(f'{name}={text}')}"
    return f"{flag} {shlex.quote(text)}"


def _is_given(spec: RunSpec, key: str, value) -> bool:
    """Whether ``value`` is ``spec``'s own of ``key`` (what its layer gave, maybe resolved since), not another."""
    return str(value) in (str(getattr(spec, key)), *([spec.output] if key == "output_dir" else []))


def _written_text(raw) -> str:
    """A value as its layer wrote it: a scalar as a shell takes it (true, not True), a list or mapping in YAML's flow
    style ([a.json, b.json]; axolotl's datasets entries by their paths where all of them run long)."""
    if not isinstance(raw, (list, tuple, dict)):
        return config_text(raw)
    import yaml

    text = yaml.safe_dump(
        list(raw) if isinstance(raw, tuple) else raw, default_flow_style=True, sort_keys=False, width=1 << 30
    )
    if len(text) > 120 and isinstance(raw, list) and all(isinstance(d, dict) and "path" in d for d in raw):
        text = yaml.safe_dump(
            [{"path": d["path"]} for d in raw], default_flow_style=True, sort_keys=False, width=1 << 30
        )
        text = text.replace("}", ", ...}")
    return text.strip()


def container_as(spec: RunSpec, value=None) -> str:
    """given_as of the container: "--container VALUE", "-o container=VALUE" or "container: VALUE in the run file"."""
    return given_as(spec, "container", value, "--container")
