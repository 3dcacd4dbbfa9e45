"""RunSpec: the one typed description of a run.

Built from an optional YAML file (``-c run.yaml``), then command-line flags, then ``-o key=value``
overrides, later ones winning. Keys follow FastChat's train script and TRL/PEFT
(``model_name_or_path``, ``per_device_train_batch_size``, ``lora_r`` ...). Every default lives here,
in the field declarations; ``None`` means "the planner decides" (see ftctl/plan.py).
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

from ftctl import storage
from ftctl.errors import FtctlError, did_you_mean, yaml_problem

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


def as_run(key: str, value):
    """A key's value as the run takes it: an IMPLIED key not given, at its default (runs record and compare these)."""
    return IMPLIED[key] if value is None and key in IMPLIED else value


# Learning rates that work for each method (FastChat uses 2e-5 for full fine-tuning; QLoRA paper 2e-4).
METHOD_LEARNING_RATE = {"fft": 2e-5, "sft": 2e-5, "lora": 2e-4, "qlora": 2e-4}
SECRETS = ["HF_TOKEN", "WANDB_API_KEY"]
REPORT_TO = ("none", "tensorboard", "wandb")
# Names of environment variables that hold credentials (HF_TOKEN, GITHUB_TOKEN, AWS_SECRET_ACCESS_KEY, OPENAI_API_KEY,
# PGPASSWORD, GPG_PASSPHRASE, DB_PASS, MYSQL_PWD): a name that ends in TOKEN, SECRET, PASSWORD, PASSWD or PASSPHRASE,
# in _KEY or APIKEY, or in the word PASS or PWD after a '_'; not HF_TOKEN_PATH, TIKTOKEN_CACHE_DIR or PAD_TOKEN_ID
# (they end in another word), BYPASS (PASS inside a word), PWD or OLDPWD (the shell's working directories), nor a
# flag's value (0/1/true/false: is_secret_name).
CREDENTIAL_NAME = re.compile(r"(?:TOKEN|SECRET|PASSWORD|PASSWD|PASSPHRASE|_KEY|APIKEY|(?:^|_)PASS|_PWD|_PAT)$", re.I)
# A credential inside a value, whatever its name: the prefixes of Hugging Face's, GitHub's, GitLab's, OpenAI's,
# Slack's tokens and AWS's key ids, and a URL's password (https://user:PASSWORD@host; a $VARIABLE there is a reference)
CREDENTIAL_VALUE = {
    "a URL's password": re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@$]+:[^/\s@$]+@"),
    "a token": re.compile(
        r"(?<![A-Za-z0-9_-])(?:(?:hf|gh[opusr])_[A-Za-z0-9]{20,}|github_pat_\w{20,}|glpat-[\w-]{20,}"
        r"|xox[abprs]-[A-Za-z0-9-]{10,}|sk-[\w-]{20,}|AKIA[0-9A-Z]{16})"
    ),
}
# A credential itself, as against a variable's name (words: HF_TOKEN, WANDB_API_KEY): a run of 16 or more letters
# and digits with both in it: Hugging Face's hf_..., GitHub's ghp_... and github_pat_..., an AWS key id (AKIA...),
# W&B's 40 hex digits (OpenAI's sk-... is no variable name at all).
TOKEN_RUN = re.compile(r"[A-Za-z0-9]{16,}")
FLAG_VALUES = ("", "0", "1", "true", "false", "yes", "no", "on", "off")  # HF_HUB_DISABLE_IMPLICIT_TOKEN=1: no secret

# Other names users type for the same key.
ALIASES = {
    "model": "model_name_or_path",
    "data": "data_path",
    "eval_data": "eval_data_path",
    "dataset_mixer": "data_path",  # the alignment handbook's {dataset: fraction} mapping
    "output": "output_dir",
    "max_seq_length": "model_max_length",
    "max_length": "model_max_length",
    "lr": "learning_rate",
    "epochs": "num_train_epochs",
    "secret": "secrets",
    "sbatch_arg": "sbatch_args",
    "name": "run_name",
    "use_spot": "spot",
    "num_epochs": "num_train_epochs",
    "max_seq_len": "model_max_length",
    "completion_only_loss": "assistant_only_loss",  # TRL's name for prompt-completion rows
    "r": "lora_r",  # PEFT's LoraConfig
    "target_modules": "lora_target_modules",  # PEFT's LoraConfig
    "lora_rank": "lora_r",
    "micro_batch_size": "per_device_train_batch_size",  # axolotl's
    "sequence_len": "model_max_length",  # axolotl's
    "val_set_size": "eval_split",  # axolotl's
    "adapter": "method",  # axolotl's adapter: lora | qlora
    "base_model": "model_name_or_path",  # axolotl's
    "model_id": "model_name_or_path",
    "model_path": "model_name_or_path",
    "optimizer": "optim",  # axolotl's
    "sample_packing": "packing",  # axolotl's
    "lr_scheduler": "lr_scheduler_type",  # axolotl's
    "cutoff_len": "model_max_length",  # LLaMA-Factory's
    "val_size": "eval_split",  # LLaMA-Factory's
    "freeze_trainable_layers": "trainable_layers",  # LLaMA-Factory's finetuning_type: freeze
    "lora_target": "lora_target_modules",  # LLaMA-Factory's (all: every linear layer)
    "lora_modules": "lora_target_modules",  # the QLoRA paper's qlora.py (all: every linear layer)
    "eval_dataset_size": "eval_split",  # qlora.py's: a number of rows held out
    "test_size": "eval_split",  # datasets' train_test_split (a share, or a number of rows)
    "validation_file": "eval_data_path",  # transformers' run_clm.py (train_file: data_path)
    "model_name": "model_name_or_path",  # Unsloth's FastLanguageModel.from_pretrained
    "random_state": "seed",  # Unsloth's get_peft_model
}
_TORCHRUN = "torchrun's: ftctl runs torchrun itself"
# Unknown keys whose nearest spelling means something else: what they are here.
MEANT = {
    "freeze_layers": "--method sft trains the top trainable_layers blocks and the head, the rest frozen.",
    "train_on_inputs": "axolotl's train_on_inputs is read as assistant_only_loss's opposite: false (the default here) "
    "is assistant_only_loss: true; true is the loss on every token.",
    "lora_target_linear": "axolotl's lora_target_linear: true is read as lora_target_modules: all-linear (the default).",
    "dataset": "Datasets are data_path (a path, a URI or hf://datasets/ORG/NAME/FILES; several: a list); "
    "LLaMA-Factory's names entries of its dataset_info.json: give their file_name files (data_path: "
    "[data/identity.json, data/alpaca_en_demo.json]) or hf_hub_url datasets (hf://datasets/ORG/NAME).",
    "max_samples": "Not offered: every row of data_path trains; to train on fewer, cut the file "
    "(head -n 1000 data.jsonl > part.jsonl) and give that.",
    "max_eval_samples": "Not offered: every held-out row is evaluated; cut the file, or hold out fewer with "
    "eval_split: N (a number of rows).",
    "source_max_len": "qlora.py cuts the prompt and the answer apart; ftctl cuts each row at model_max_length: give "
    "model_max_length (their sum, e.g. 528 for 16 and 512) and leave both out.",
    "target_max_len": "qlora.py cuts the prompt and the answer apart; ftctl cuts each row at model_max_length: give "
    "model_max_length (their sum, e.g. 528 for 16 and 512) and leave both out.",
    "datasets": "Datasets are data_path (a path, a URI or hf://datasets/ORG/NAME/FILES; several: a list; axolotl's "
    "[{path: ..., type: ...}] is taken as it).",
    "train_file": "The training data is data_path.",
    "interleave_probs": "LLaMA-Factory's interleave_probs are shares of the mix; here a dataset's weight is how many "
    "times its rows train an epoch: data_weights, one a dataset in data_path's order (`ftctl data check -c run.yaml` "
    "counts each one's rows, and where weights read as shares, says the ones that give those shares).",
    "mix_strategy": "Datasets are mixed by data_weights (each one's rows that many times an epoch, shuffled "
    "together; without weights, concatenated: LLaMA-Factory's concat).",
    "validation_split_percentage": "The held-out share is eval_split, a fraction (eval_split: 0.05 for 5) or a "
    "number of rows (eval_split: 500).",
    "eval_ratio": "The held-out share is eval_split, a fraction (eval_split: 0.05) or a number of rows.",
    "test_datasets": "axolotl's test_datasets are eval_data_path here (their paths; several: a list), each row's "
    "format read from its fields as data_path's are.",
    "train_on_responses_only": "Unsloth's train_on_responses_only is what ftctl does by default (assistant_only_loss: "
    "true): the loss covers the assistant turns only, their end-of-turn token included; leave it out.",
    "use_gradient_checkpointing": "Unsloth's and PEFT's use_gradient_checkpointing is gradient_checkpointing here "
    "(true or false; left out, the plan turns it on where memory needs it).",
    "unfrozen_parameters": "axolotl's unfrozen_parameters (a full fine-tune of the parameters its patterns name) is not "
    "offered: --method sft trains the top trainable_layers blocks and the head, the rest frozen; --method fft every "
    "weight.",
    "rl": "ftctl trains supervised fine-tuning (SFT); axolotl's rl (DPO, KTO, ORPO, GRPO ...) is not offered: leave rl "
    "out to train SFT on the rows' answers.",
    "auto_find_batch_size": "The plan chooses the micro-batch that fits (ftctl plan shows it; -o "
    "per_device_train_batch_size=N forces one), and a run that runs out of memory ends naming the one that fits.",
    "torch_compile": "Not offered: the trainer runs PyTorch eagerly, with its own fused kernels where they apply "
    "(Liger's, its LM head's, its LoRA adapters').",
    "batch_size": "Sequences per GPU are per_device_train_batch_size; per optimizer step, global_batch_size.",
    "train_batch_size": "Sequences per GPU are per_device_train_batch_size; per optimizer step, global_batch_size.",
    "model_init_kwargs": "TRL's model_init_kwargs is read key by key, as a mapping (model_init_kwargs: {torch_dtype: "
    "bfloat16}): torch_dtype, attn_implementation, trust_remote_code, revision ...; ftctl loads the model itself.",
    "dataset_kwargs": "TRL's dataset_kwargs is read key by key, as a mapping (dataset_kwargs: {skip_prepare_dataset: "
    "false}); ftctl prepares the rows itself.",
    # torchrun's, from a FastChat train script's line: ftctl runs torchrun itself, on every node
    "nproc_per_node": _TORCHRUN + ", one process a GPU of --gpus (--gpus 8xA100: 8 a node).",
    "nnodes": _TORCHRUN + "; the nodes are --nodes N (or --gpus 2x8xH100).",
    "node_rank": _TORCHRUN + "; each node's rank is the one Slurm or SkyPilot gives it.",
    "master_port": _TORCHRUN + ", its rendezvous on the job's first node at -o rdzv_port (29500).",
    "master_addr": _TORCHRUN + ", its rendezvous on the job's first node at -o rdzv_port (29500).",
    # a credential as a run key would be written into the job's files: the job reads each from its variable
    "hub_token": "The Hub's token is HF_TOKEN, a secret passed by name: export HF_TOKEN where you launch (--secret "
    "HF_TOKEN is a default), never as a value.",
    "wandb_api_key": "W&B's key is WANDB_API_KEY, a secret passed by name: export WANDB_API_KEY where you launch "
    "(--secret WANDB_API_KEY is a default), never as a value.",
}


_STRATEGY = (
    "the planner chooses single, DDP, DeepSpeed ZeRO or FSDP2 and writes its config; -o strategy=NAME forces one"
)
_ATTENTION = "the plan chooses the attention (varlen FlashAttention kernels, else SDPA); -o attn_implementation=NAME"
_WANDB = (
    "W&B logging is -o report_to=wandb, its project -o env=WANDB_PROJECT=NAME (the key: --secret WANDB_API_KEY); a "
    "run file's wandb_project, wandb_entity, wandb_name ... are taken as those (WANDB_ENV)"
)
_EVALUATED = (
    "held-out data (--eval-data, or -o eval_split=0.05) is evaluated every eval_steps, or evals_per_epoch: N times an "
    "epoch (epoch's: evals_per_epoch: 1)"
)
_PAD = "padding carries no loss: batches pad with the tokenizer's pad token, else its eos, to a multiple of 16 tokens"
_PACKED_EVAL = "the held-out loss is each token's, packed or not (packed where the training packs)"
_ADAM = "AdamW runs with transformers' betas (0.9, 0.999) and epsilon 1e-8"
_WATCHDOG = "axolotl's loss watchdog is not offered: a run whose loss climbs goes on (ftctl logs -f shows the loss)"
_BEST = (
    "the best checkpoint is the lowest held-out loss's (eval_loss; of several --eval-data, all of them together), kept "
    "beside the newest through save_total_limit, locally and in the store"
)
# Keys of FastChat's train script, TRL and transformers that ftctl decides itself: why, instead of "unknown key".
_ADAPTER_DIR = (
    "a run trains new adapters over --model; an adapter trains on from its run's checkpoint, into its own output or "
    "a new one (--model BASE -o resume=RUN/checkpoint-N --output NEW: its optimizer and schedule go on too), and new "
    "adapters over it train on its merge (ftctl merge RUN, then --model RUN/merged)"
)
DECIDED = {
    "fsdp": _STRATEGY,
    "fsdp_config": _STRATEGY,
    "deepspeed": f"{_STRATEGY}; a DeepSpeed config of ZeRO stage 2 or 3 is read as strategy=zero2 or zero3 (with CPU "
    "offload: zero2_offload, zero3_offload)",
    "evaluation_strategy": _EVALUATED,
    "eval_strategy": _EVALUATED,
    "save_strategy": "a checkpoint every save_steps, or saves_per_epoch: N times an epoch (epoch is read as "
    "saves_per_epoch: 1; no is left out: a stopped or preempted run resumes from its checkpoints, save_total_limit "
    "bounds how many are kept)",
    "metric_for_best_model": _BEST,
    "greater_is_better": _BEST,
    "lazy_preprocess": "rows are checked and tokenised once, before the model loads (ftctl data check shows them)",
    "tf32": "matmuls run in the plan's precision (bf16 or fp16 on a GPU)",
    "load_in_4bit": "--method qlora loads the base in 4-bit NF4 with double quantization",
    "bnb_4bit_quant_type": "--method qlora loads the base in 4-bit NF4 with double quantization",
    "use_bnb_nested_quant": "--method qlora loads the base in 4-bit NF4 with double quantization",
    "bnb_4bit_use_double_quant": "--method qlora loads the base in 4-bit NF4 with double quantization",
    "load_in_8bit": "--method qlora trains over a 4-bit base, lora over a 16-bit one",
    "use_liger_kernel": "Liger's kernels run where they are installed (ftctl doctor, and the run's log, say so)",
    "push_to_hub": "ftctl merge RUN writes a plain model directory; upload it with `hf upload`",
    "use_peft": "--method lora (or qlora, over a 4-bit base) trains PEFT adapters; fft and sft train the weights",
    "torch_dtype": "the planner chooses the precision (bf16, fp16 on GPUs without it, fp32 on CPU) and the dtype the "
    "weights load in; bfloat16 or float16 here asks for one, as -o bf16=true or -o fp16=true does",
    "model_revision": "a hub id loads its main revision; for another, download it (hf download ORG/NAME --revision REV "
    "--local-dir DIR) and pass --model DIR",
    "trust_remote_code": "models load with transformers' own code for their architecture, never a repository's "
    "(remote code stays off): a model whose architecture your transformers lacks fails to load; use one it supports",
    "lora_modules_to_save": "lora and qlora train only the adapters (no modules_to_save); to train the head too use "
    "--method sft (the top trainable_layers blocks and the head) or fft",
    "modules_to_save": "lora and qlora train only the adapters (no modules_to_save); to train the head too use "
    "--method sft (the top trainable_layers blocks and the head) or fft",  # (PEFT's LoraConfig's name; TRL's above)
    "fsdp_transformer_layer_cls_to_wrap": "FSDP2 (strategy=fsdp) wraps each decoder layer itself",
    # axolotl's (its example files list many of them, empty)
    "strict": "ftctl checks the run description itself",
    "dataset_prepared_path": "rows are checked and tokenised once, before the model loads, and not kept",
    "pad_to_sequence_len": "packing fills each sequence (packing=true); unpacked batches pad to their longest row",
    "group_by_length": "batches are drawn at random (packing fills them)",
    "local_rank": "torchrun gives each process its rank",
    "xformers_attention": _ATTENTION,
    "flash_attention": _ATTENTION,
    "sdp_attention": _ATTENTION,
    "debug": "FTCTL_DEBUG=1 shows a failure's traceback",
    "special_tokens": "the tokenizer's own special tokens and chat template are used (chat_template_path for another; "
    "a pad_token alone may stay: padding carries no loss)",
    "wandb_project": _WANDB,
    "wandb_entity": _WANDB,
    "wandb_watch": _WANDB,
    "wandb_name": _WANDB,
    "wandb_log_model": _WANDB,
    "resume_from_checkpoint": "resume=auto continues output_dir's newest checkpoint; -o resume=PATH another",
    "auto_resume_from_checkpoints": "resume=auto continues output_dir's newest checkpoint; -o resume=never starts over",
    "chat_template": "ftctl trains with the model's own chat template (axolotl's tokenizer_default), not axolotl's "
    "named ones: leave chat_template out for the model's own, or give chat_template_path: a Jinja file or a model "
    "whose template it is (Qwen/Qwen2.5-0.5B-Instruct for chatml)",
    "lora_model_dir": _ADAPTER_DIR,
    "adapter_name_or_path": _ADAPTER_DIR,  # LLaMA-Factory's
    "model_type": "the model's architecture is read from its config.json",
    "tokenizer_type": "the tokenizer is the model's own (AutoTokenizer), with its chat template",
    "lora_fan_in_fan_out": "PEFT reads each layer's orientation from the model (fan_in_fan_out: GPT-2's Conv1D)",
    "eval_table_size": "the held-out loss and token accuracy are measured; no table of generations",
    "q_lora": "--method qlora trains adapters over a 4-bit base, lora over a 16-bit one",
    "flash_attn": _ATTENTION,
    "logging_strategy": "the loss is logged every logging_steps",
    "gradient_checkpointing_kwargs": "gradient checkpointing (-o gradient_checkpointing=true; the plan chooses it) "
    "runs non-reentrant (use_reentrant: false)",
    "lora_task_type": "lora and qlora train a causal LM's adapters (task_type CAUSAL_LM)",
    "bias": "lora and qlora train the adapters alone, no bias terms (PEFT LoraConfig's bias: none)",
    "task_type": "lora and qlora train a causal LM's adapters (task_type CAUSAL_LM)",
    "bnb_4bit_compute_dtype": "--method qlora computes in the plan's precision: bf16, fp16 on GPUs without it, fp32 on "
    "CPU; bfloat16 or float16 here asks for it (as -o bf16=true or -o fp16=true does), another value: drop the key",
    "dataset_train_split": "a Hub dataset's train split is read (its files for others: hf://datasets/ORG/NAME/FILES)",
    "save_only_model": "checkpoints keep the optimizer and scheduler, so a stopped run resumes where it was",
    "eval_on_start": "the held-out loss is measured every eval_steps and at the end",
    "logging_dir": "TensorBoard's logs go to the output's runs/ (-o report_to=tensorboard)",
    "neftune_noise_alpha": "NEFTune's noise on the embeddings is not offered",
    # TRL's and transformers' (TRL 1.x and transformers 5 spell torch_dtype dtype)
    "dtype": "the planner chooses the precision (bf16, fp16 on GPUs without it, fp32 on CPU) and the dtype the "
    "weights load in; bfloat16 or float16 here asks for one, as -o bf16=true or -o fp16=true does",
    "eos_token": "each turn ends as the model's chat template ends it, with the tokenizer's own tokens "
    "(chat_template_path for another template; `ftctl data check --show 1` shows a row as it trains); TRL's eos_token "
    "is taken where it is the tokenizer's eos, or the chat template ends assistant turns with it already",
    "padding_free": "packed batches (packing: the plan's where its attention keeps rows apart) run padding-free; "
    "unpacked ones pad to their longest row: -o packing=true or false",
    "packing_strategy": "packing places whole rows best-fit decreasing (TRL's bfd); rows longer than "
    "model_max_length are cut, not split across sequences",
    "dataloader_num_workers": "rows are tokenised once, before training; batches are drawn from memory",
    "remove_unused_columns": "the rows are tokenised by ftctl, which keeps only what trains",
    "ddp_find_unused_parameters": "every trainable parameter takes part in each step: DDP does not look for unused "
    "ones",
    "do_train": "ftctl launch trains",
    "do_eval": "held-out data (--eval-data, or -o eval_split=0.05) is evaluated every eval_steps",
    "overwrite_output_dir": "a relaunch into the same --output resumes its run (resume=auto); a new run goes to "
    "another --output (ftctl never writes a run over an earlier one's checkpoints: resume=never there is refused)",
    "dataset_test_split": "held-out data is --eval-data (a Hub dataset's test split: its files, "
    "hf://datasets/ORG/NAME/FILES) or -o eval_split=0.05",
    "dataset_config": "name the configuration's files instead (hf://datasets/ORG/NAME/CONFIG/*.parquet)",
    "dataset_streaming": "rows are read and tokenised once, before training",
    "pad_token": _PAD,
    "pad_to_multiple_of": _PAD,
    "eval_packing": _PACKED_EVAL,
    "loss_type": "the loss is the mean cross-entropy over the trained tokens (TRL's nll)",
    "activation_offloading": "activations are the plan's to fit: gradient checkpointing where they do not "
    "(-o gradient_checkpointing=true)",
    "gradient_checkpointing_use_reentrant": "gradient checkpointing (-o gradient_checkpointing=true; the plan "
    "chooses it) runs non-reentrant (use_reentrant: false)",
    "adam_beta1": _ADAM,
    "adam_beta2": _ADAM,
    "adam_epsilon": _ADAM,
    # axolotl's
    "eval_sample_packing": _PACKED_EVAL,
    "loss_watchdog_threshold": _WATCHDOG,
    "loss_watchdog_patience": _WATCHDOG,
    # LLaMA-Factory's
    "stage": "ftctl trains supervised fine-tuning (LLaMA-Factory's stage: sft); pre-training and reward or preference "
    "training (pt, rm, ppo, dpo, kto) are not offered",
    "finetuning_type": "LLaMA-Factory's finetuning_type is --method: lora (qlora with quantization_bit: 4), full is "
    "fft; freeze's nearest is sft, which trains the top trainable_layers blocks and the output head too: give "
    "method: sft for that",
    "quantization_bit": "--method qlora trains over a 4-bit base (bitsandbytes NF4), lora over a 16-bit one",
    "quantization_method": "--method qlora quantizes the base with bitsandbytes (quantization_bit: 4)",
    "template": "ftctl trains with the model's own chat template (FastChat's Vicuna v1.1 where it has none), not "
    "LLaMA-Factory's named ones: leave template out for the model's own, or give chat_template_path: a Jinja file or "
    "a model whose template it is (meta-llama/Meta-Llama-3-8B-Instruct for llama3)",
    "dataset_dir": "datasets are data_path, their files named (LLaMA-Factory's dataset names are not read)",
    "overwrite_cache": "rows are tokenised once a run, not cached",
    "preprocessing_num_workers": "rows are checked and tokenised once, before the model loads",
    "plot_loss": "the loss is in the run's metrics.jsonl (ftctl status shows the last; -o report_to=tensorboard plots "
    "it)",
    "ddp_timeout": "the processes' collectives keep torch's timeout",
    "enable_liger_kernel": "Liger's kernels run where they are installed (ftctl doctor, and the run's log, say so)",
    "use_unsloth": "Unsloth's kernels are not used; Liger's run where they are installed",
    # the QLoRA paper's qlora.py
    "bits": "--method qlora trains over a 4-bit base, lora over a 16-bit one",
    "double_quant": "--method qlora loads the base in 4-bit NF4 with double quantization",
    "quant_type": "--method qlora loads the base in 4-bit NF4 with double quantization",
    "full_finetune": "--method fft trains every weight; lora and qlora train adapters",
    "data_seed": "seed draws the data's order and held-out rows too",
    "do_mmlu_eval": "no MMLU evaluation runs; the held-out loss is measured (--eval-data, or -o eval_split=0.05)",
    "max_new_tokens": "no text is generated while training (ftctl chat RUN does afterwards)",
    "max_memory_MB": "the plan fits each GPU's memory",
    # the alignment handbook's recipes (TRL)
    "use_flash_attention_2": _ATTENTION,
    "dataset_splits": "a Hub dataset's train split is read; for another, name its files (data_path: "
    "hf://datasets/ORG/NAME/data/train_sft-*.parquet), and the held-out split's as eval_data_path",
    "hub_model_id": "ftctl pushes nothing to the Hub (axolotl pushes to its hub_model_id, TRL with push_to_hub): "
    "after the run `ftctl merge RUN` writes a plain model directory and `hf upload HUB_ID RUN/merged` uploads it; "
    "leave hub_model_id out",
    "hub_strategy": "ftctl merge RUN writes a plain model directory; upload it with `hf upload`",
    "log_level": "the trainer's log is ftctl's (ftctl logs RUN); FTCTL_DEBUG=1 shows a failure's traceback",
    # TRL's model_init_kwargs (from_pretrained's arguments) and dataset_kwargs, read key by key (NESTED)
    "use_cache": "training keeps no KV cache (it is generation's: ftctl chat RUN)",
    "low_cpu_mem_usage": "how the weights load is ftctl's (it changes nothing that trains)",
    "device_map": "the plan places the model: a copy, or a shard (strategy), on each process's GPU",
    "quantization_config": "--method qlora loads the base in 4-bit NF4 with double quantization (bitsandbytes), lora "
    "over a 16-bit one",
    "skip_prepare_dataset": "ftctl prepares every row itself (its format read from its fields, the chat template "
    "applied, tokenised, the loss masked); rows tokenised elsewhere (input_ids) are not read: give them as text, "
    "messages or prompt/completion",
    "add_special_tokens": "rows are tokenised with the special tokens their format takes (the chat template's; plain "
    "text and prompt-completion rows: bos and eos)",
    "append_concat_token": "packed rows are kept apart, each ending as its format ends it (eos)",
}
# DECIDED keys that ask for something ftctl does not offer, harmless to the weights trained: taken with a note that
# says they are left out (axolotl's example files set them)
LEFT_OUT = ("loss_watchdog_threshold", "loss_watchdog_patience")
# transformers' save_strategy and eval_strategy epoch: once an epoch, at its end (axolotl's per-epoch keys at 1);
# where the same layer gives save_steps or eval_steps too, epoch wins, as in transformers
PER_EPOCH = {
    "save_strategy": "saves_per_epoch",
    "eval_strategy": "evals_per_epoch",
    "evaluation_strategy": "evals_per_epoch",
}
STEPS_OF = {"saves_per_epoch": "save_steps", "evals_per_epoch": "eval_steps"}
# TRL's names of model_max_length, whose null is "no truncation" there (not "asks for nothing": 2048 here)
NO_TRUNCATION = ("max_length", "max_seq_length")
# TRL's mappings of another call's arguments, each of their keys read as a key here (model_init_kwargs.revision is
# model_revision): SFTConfig's model_init_kwargs (from_pretrained's) and dataset_kwargs (the dataset preparation's)
NESTED = {
    "model_init_kwargs": {
        **{k: k for k in ("torch_dtype", "dtype", "attn_implementation", "trust_remote_code", "use_cache")},
        **{k: k for k in ("low_cpu_mem_usage", "device_map", "quantization_config")},
        "revision": "model_revision",
    },
    "dataset_kwargs": {k: k for k in ("skip_prepare_dataset", "add_special_tokens", "append_concat_token")},
}
NESTED_UNREAD = {
    "model_init_kwargs": "ftctl loads the model itself, in the plan's dtype and attention; of model_init_kwargs it "
    "reads " + ", ".join(NESTED["model_init_kwargs"]),
    "dataset_kwargs": "ftctl prepares the rows itself; of dataset_kwargs it reads "
    + ", ".join(NESTED["dataset_kwargs"]),
}
# DECIDED keys set to what ftctl does anyway (a FastChat or TRL recipe copied whole): accepted with a note, any other
# value refused as above. None: any value.
AGREES = {
    "evaluation_strategy": ("no", "false", "steps"),  # as the held-out data says: build's _evaluation_asked
    "eval_strategy": ("no", "false", "steps"),
    "save_strategy": ("steps",),
    "metric_for_best_model": ("eval_loss", "loss"),
    "greater_is_better": ("false",),
    "lazy_preprocess": None,
    "tf32": None,
    "fsdp": ("", "false", "no"),
    "fsdp_transformer_layer_cls_to_wrap": None,
    "trust_remote_code": ("false", "true"),  # true: left off, with a note (build)
    "push_to_hub": ("false",),
    "deepspeed": ("false", "no"),
    "strict": None,
    "dataset_prepared_path": None,
    "pad_to_sequence_len": None,
    "group_by_length": ("false",),
    "local_rank": None,
    "xformers_attention": ("false",),
    "flash_attention": ("true",),
    "sdp_attention": ("false",),
    "debug": ("false",),
    "torch_dtype": ("auto",),  # (bfloat16, float16: DTYPE_KEYS, the precision they ask for)
    "use_liger_kernel": ("true",),
    "model_type": None,
    "tokenizer_type": None,
    "lora_fan_in_fan_out": ("false",),
    "eval_table_size": ("0",),
    "flash_attn": ("true", "auto", "fa2"),  # LLaMA-Factory's auto | fa2 | sdpa | disabled
    "logging_strategy": ("steps",),
    "gradient_checkpointing_kwargs": ("{'use_reentrant': false}",),
    "lora_task_type": ("causal_lm",),
    "task_type": ("causal_lm",),
    "bias": ("none",),
    "auto_resume_from_checkpoints": ("true",),  # axolotl's
    "chat_template": ("tokenizer_default",),  # axolotl's (a dataset entry's: _DATASET_KEYS)
    "dataset_train_split": ("train",),
    "save_only_model": ("false",),
    "eval_on_start": ("false",),
    "neftune_noise_alpha": ("0",),
    "dtype": ("auto",),
    "padding_free": ("true",),
    "packing_strategy": ("bfd",),
    "dataloader_num_workers": None,
    "remove_unused_columns": None,
    "ddp_find_unused_parameters": ("false",),
    "do_train": ("true",),
    "do_eval": ("true", "false"),  # as the held-out data says: build's _evaluation_asked
    "overwrite_output_dir": ("false",),
    "dataset_test_split": ("test",),  # TRL's default, read only where it evaluates (eval_strategy asks for data)
    "dataset_streaming": ("false",),
    "pad_token": None,
    "pad_to_multiple_of": None,
    "eval_packing": None,
    "loss_type": ("nll",),
    "activation_offloading": ("false",),
    "gradient_checkpointing_use_reentrant": ("false",),
    "adam_beta1": ("0.9",),
    "adam_beta2": ("0.999",),
    "adam_epsilon": ("1e-08", "1e-8"),
    "eval_sample_packing": None,
    "loss_watchdog_threshold": None,
    "loss_watchdog_patience": None,
    "stage": ("sft",),
    "quantization_method": ("bitsandbytes", "bnb"),  # (LLaMA-Factory's default, read where quantization_bit is)
    "dataset_dir": None,  # LLaMA-Factory's dataset names are refused, saying what to write
    "overwrite_cache": None,
    "preprocessing_num_workers": None,
    "plot_loss": None,
    "ddp_timeout": None,
    "enable_liger_kernel": ("true",),
    "use_unsloth": ("false",),
    "data_seed": None,
    "do_mmlu_eval": ("false",),
    "max_new_tokens": None,
    "max_memory_MB": None,
    "model_revision": ("main",),  # TRL's ModelConfig default (the alignment handbook's recipes write it out)
    "use_flash_attention_2": ("true",),
    "hub_model_id": (),  # axolotl pushes to it (push_to_hub is TRL's): any value refused, not dropped unsaid
    "hub_strategy": None,
    "log_level": None,
    "use_cache": None,
    "low_cpu_mem_usage": None,
    "skip_prepare_dataset": ("false",),
    "add_special_tokens": ("true",),  # TRL's default
    "append_concat_token": ("true",),  # TRL's default
}  # and any DECIDED key left empty (YAML's null, as axolotl's example files write them): it asks for nothing


LORA_KEYS = ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "use_rslora", "use_dora")
PEFT_TARGETS = "peft-default"  # lora_target_modules: PEFT's own for the model's type (plan.with_lora_targets)
LORA_LEAST_LR = 1e-4  # a rate below this (run file, -o), no method given, is full fine-tuning's: build asks which
# DECIDED keys whose value agrees with some methods only (TRL's QLoRA recipe: use_peft, load_in_4bit ...): accepted
# with a note where the run's method is one of them, refused as above where it is not
_ADAPTERS, _WEIGHTS, _QLORA = ("lora", "qlora"), ("fft", "sft"), ("qlora",)
METHOD_AGREES = {
    "use_peft": {"true": _ADAPTERS, "false": _WEIGHTS},
    "load_in_4bit": {"true": _QLORA, "false": (*_WEIGHTS, "lora")},
    "load_in_8bit": {"false": (*_WEIGHTS, *_ADAPTERS)},
    "bnb_4bit_quant_type": {"nf4": _QLORA},
    "use_bnb_nested_quant": {"true": _QLORA},
    "bnb_4bit_use_double_quant": {"true": _QLORA},
    "bnb_4bit_compute_dtype": {"bf16": _QLORA, "fp16": _QLORA},  # (as _dtype_word spells them)
    "q_lora": {"true": _QLORA, "false": ("lora",)},  # FastChat's train_lora.py
    "finetuning_type": {"lora": _ADAPTERS, "full": ("fft",), "freeze": ("sft",)},  # LLaMA-Factory's
    "quantization_bit": {"4": _QLORA},
    "bits": {"4": _QLORA, "16": (*_WEIGHTS, "lora")},  # qlora.py's
    "double_quant": {"true": _QLORA},
    "quant_type": {"nf4": _QLORA},
    "full_finetune": {"true": ("fft",), "false": _ADAPTERS},
}
# LLaMA-Factory's LoRA defaults (its lora_alpha: twice lora_r), taken where a file with its finetuning_type leaves them
LLAMA_FACTORY_LORA = {"lora_r": 8, "lora_dropout": 0.0}
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
}
TOOL_DEFAULTS = {
    "TRL": {"model_max_length": 1024, "lr_scheduler_type": "linear", "warmup_ratio": 0.0},
    "FastChat": {},
}
TOOL_LORA_DEFAULTS = {  # (where the run trains adapters)
    "TRL": {"lora_target_modules": PEFT_TARGETS},
    "FastChat": {"lora_r": 8, "lora_alpha": 16, "lora_target_modules": "q_proj,v_proj"},
}
# Other tools' defaults ftctl does not take (its own is a documented choice), noted where a run file in that tool's
# vocabulary leaves the key out: what ftctl's does, and how to have the tool's
TOOL_DEFAULTS_NOT_TAKEN = {
    "TRL": {
        "assistant_only_loss": "ftctl trains a conversation's assistant turns only (a prompt-completion row's "
        "completion, as TRL does); TRL trains a conversation's every token (its assistant_only_loss false), as "
        "-o assistant_only_loss=false does here"
    },
}
# METHOD_AGREES values that do not choose the method where none is given (they are refused, saying which to give):
# LLaMA-Factory's freeze trains the top blocks alone, sft the output head too
NOT_CHOSEN = {("finetuning_type", "freeze")}
# fields that make a row a conversation or a prompt-completion (trainer/formats.to_row), never a plain-text one
CONVERSATION_FIELDS = ("conversations", "messages", "instruction", "output", "prompt", "completion")
# The dtype keys of from_pretrained (TRL's model_init_kwargs), transformers 5 and bitsandbytes' BitsAndBytesConfig, as
# notebooks and recipes write them (torch.bfloat16, "float16", bf16): a 16-bit one asks for that precision, as
# -o bf16=true / -o fp16=true do, which the plan takes where the GPUs have it and says where not (a T4 trains in fp16,
# a CPU in fp32). Any other value is DECIDED's refusal.
DTYPE_KEYS = ("torch_dtype", "dtype", "bnb_4bit_compute_dtype")
DTYPE_WORDS = {"bfloat16": "bf16", "bf16": "bf16", "float16": "fp16", "fp16": "fp16", "half": "fp16"}


def _dtype_word(raw) -> str | None:
    """bf16 or fp16 for a 16-bit dtype as torch, transformers and bitsandbytes spell it; None for any other."""
    return DTYPE_WORDS.get(_word(raw).removeprefix("torch."))


def _precision_asked(asked: dict, values: dict, sources: dict, notes: list | None) -> list[str]:
    """The precision flag (bf16 / fp16) DTYPE_KEYS asked for, set where no layer gave one: the plan then says where
    the GPUs cannot (T4: fp16; CPU: fp32). Errors where they ask for two, or against the flag given."""
    if len(asked) > 1:
        return [f"{' and '.join(names[0] for names in asked.values())} ask for other precisions: keep one."]
    if not asked:
        return []
    ((flag, names),) = asked.items()
    other = "fp16" if flag == "bf16" else "bf16"
    if values.get(other):
        return [f"{names[0]} asks for {flag}, and {other}=true ({sources[other]}) for {other}: keep one."]
    if values.get(flag) is None:
        values[flag], sources[flag] = True, "run file" if names[0].endswith("(run file)") else "-o"
        notes is None or notes.append(
            f"{', '.join(names)}: {flag}=true here, the precision the plan trains in where the GPUs have {flag}"
        )
    return []


def _text(value) -> str:
    """A YAML or Python value as a shell would take it: true/false in lower case, null empty."""
    return "" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def _agrees(key: str, raw) -> bool:
    accepted = AGREES.get(key, ())
    if key == "special_tokens" and isinstance(raw, dict) and set(raw) <= {"pad_token"}:
        return True  # axolotl's pad_token alone (its Llama 3 examples): padding carries no loss
    return raw is None or raw == "" or accepted is None or _word(raw) in accepted


def _method_meant(given: dict[str, tuple[str, str]]) -> str | None:
    """The method METHOD_AGREES keys as given ask for together (use_peft: true and load_in_4bit: true: qlora; TRL
    without use_peft: fft), None where they ask for none or none was given."""
    allowed = None
    for key, word in given.values():
        if (key, word) in NOT_CHOSEN:
            continue
        methods = METHOD_AGREES[key][word]
        allowed = [m for m in (methods if allowed is None else allowed) if m in methods]
    return allowed[0] if allowed else None


def _word(raw) -> str:
    """A value as AGREES lists it: YAML's unquoted no is False, "false" here."""
    return str(raw).lower() if isinstance(raw, bool) else str(raw).strip().lower()


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
        if values.get("method", FIELDS["method"].default) in _ADAPTERS:
            defaults.update(TOOL_LORA_DEFAULTS[tool])
        taken = {k: v for k, v in defaults.items() if k not in values}
        if "warmup_steps" in values:  # it replaces warmup_ratio
            taken.pop("warmup_ratio", None)
        values.update(taken)
        if taken and notes is not None:
            said = ", ".join(f"{k} {_number(v)}" for k, v in taken.items())
            ours = " ".join(f"-o {k}={_number(as_run(k, FIELDS[k].default))}" for k in taken)
            notes.append(
                f"{said}: {tool}'s defaults, which a run file in its vocabulary ({', '.join(keys)}) trains with where it "
                f"leaves them out; ftctl's own: {ours}"
            )
        for key, why in TOOL_DEFAULTS_NOT_TAKEN.get(tool, {}).items():
            if key not in values and notes is not None:
                ours = _text(as_run(key, FIELDS[key].default))
                notes.append(
                    f"{key} {ours}, ftctl's default, in a run file in {tool}'s vocabulary ({', '.join(keys)}): {why}"
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


# FastChat's DeepSpeed configs (playground/, which its README's commands pass), by name: their names say the stage
# only (s2, s3), their zero_optimization offloads to CPU (s2 the optimizer, s3 the weights too; the lora_ ones of
# its earlier versions the same)
FASTCHAT_DEEPSPEED = {
    "deepspeed_config_s2.json": "zero2_offload",
    "deepspeed_config_s3.json": "zero3_offload",
    "deepspeed_config_lora_s2.json": "zero2_offload",
    "deepspeed_config_lora_s3.json": "zero3_offload",
}


def _deepspeed_strategy(raw) -> tuple[str, str] | None:
    """The strategy a DeepSpeed config is (axolotl's deepspeed_configs/zero3_bf16.json, LLaMA-Factory's
    examples/deepspeed/ds_z3_config.json), and where that was read: its zero_optimization where the file is here,
    else its name (zero3, z3, offload; FastChat's as FASTCHAT_DEEPSPEED says). None where no ZeRO stage 2 or 3 is
    seen (refused as DECIDED says)."""
    if not isinstance(raw, str) or not raw.strip():
        return None
    path = Path(raw.strip()).expanduser()
    if path.is_file():
        try:
            zero = json.loads(path.read_text())["zero_optimization"]
            stage, how = zero["stage"], f"its zero_optimization (stage {zero['stage']})"
            offload = any(
                (zero.get(k) or {}).get("device") in ("cpu", "nvme") for k in ("offload_optimizer", "offload_param")
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
    elif zero := FASTCHAT_DEEPSPEED.get(path.name.lower()):
        return zero, "its name (FastChat's playground file, CPU offload)"
    elif m := re.search(r"(?:^|[^a-z])(?:zero|z)_?([0-3])(?!\d)", path.name.lower()):
        stage, offload, how = int(m.group(1)), "offload" in path.name.lower(), "its name"
    else:
        return None
    return (f"zero{stage}{'_offload' if offload else ''}", how) if stage in (2, 3) else None


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


def _eos_token_problem(spec, name: str, token: str, notes=None) -> str | None:
    """TRL's eos_token (its sft.py example's '<|im_end|>' for Qwen2's ChatML template) where ftctl ends each turn as the
    chat template ends it: taken, noted, where it is the tokenizer's eos or the template writes it (it ends turns with
    it already, so a conversation trains as in TRL); else why not (None where taken). Read from the tokenizer's files
    (tokenizer_config.json, chat_template.jinja) without transformers: a model directory, the Hugging Face cache, or
    chat_template_path's Jinja file."""
    model, named = spec.model_name_or_path, spec.chat_template_path
    files = _tokenizer_files(model)  # (its template, its eos); None: not readable here
    if files and files[1] == token:
        notes is None or notes.append(f"{name}: {token!r} taken: it is {model}'s eos already")
        return None
    read = _tokenizer_files(named) if named else files
    whose = f"chat_template_path {named}'s" if named else f"{model}'s"
    if read and read[0] and token in read[0]:
        eos = f" ({files[1]!r})" if files and files[1] else ""
        notes is None or notes.append(
            f"{name}: {token!r} taken: {whose} chat template ends turns with it already, so a conversation trains as in "
            f"TRL; plain-text and prompt-completion rows end with the tokenizer's eos{eos}, not with it"
        )
        return None
    if read:
        writes = "never writes it" if read[0] else "is none (FastChat's Vicuna one ends turns with the eos)"
        return (
            f"{name}: {token!r}: {whose} chat template {writes}, so no assistant turn would end with it: ftctl ends "
            "each turn as the template does. Leave eos_token out, or give chat_template_path: a template whose turns "
            "end with it."
        )
    unread = named or model
    return (
        f"{name}: {token!r} is taken only where the chat template ends assistant turns with it, and {unread}'s is not "
        "on this machine to read (no model directory or Jinja file, not in the Hugging Face cache): download its "
        f"tokenizer (hf download {unread} --include 'tokenizer*' --include 'chat_template*') and run this again, or "
        "leave eos_token out (each turn ends as the template ends it)."
    )


def _tokenizer_files(source: str) -> tuple[str | None, str | None] | None:
    """The chat template and eos token of a tokenizer as its files on this machine give them: a Jinja file's text
    (chat_template_path's; no eos), a model directory's or a hub id's in the Hugging Face cache (tokenizer_config.json,
    chat_template.jinja); None where they cannot be read here (a template by name: all of them, one text)."""
    from ftctl.hub import HUB_ID

    path = Path(source).expanduser()
    if path.is_file():
        return path.read_text(errors="replace"), None

    def read(name: str) -> str | None:
        if path.is_dir():
            return (path / name).read_text(errors="replace") if (path / name).is_file() else None
        if not HUB_ID.match(source):
            return None
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(source, name)
        return Path(cached).read_text(errors="replace") if isinstance(cached, str) else None

    try:
        config = json.loads(read("tokenizer_config.json") or "null")
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    template = config.get("chat_template") or read("chat_template.jinja")
    if isinstance(template, list):  # several by name
        template = "\n".join(str(t.get("template", "")) for t in template if isinstance(t, dict))
    eos = config.get("eos_token")
    eos = eos.get("content") if isinstance(eos, dict) else eos
    return (template if isinstance(template, str) else None), (eos if isinstance(eos, str) else None)


def _fsdp_strategy(raw) -> bool:
    """FastChat's --fsdp "full_shard auto_wrap": the FSDP full sharding ftctl runs as strategy=fsdp (FSDP2's
    fully_shard). Its other modes (offload, shard_grad_op, hybrid) are refused as DECIDED says."""
    words = " ".join(map(str, raw) if isinstance(raw, list) else [str(raw)]).lower().split()  # axolotl's: a list
    return "full_shard" in words and set(words) <= {"full_shard", "auto_wrap"}


@dataclass
class RunSpec:
    # --- what to train -----------------------------------------------------------------------
    method: str = "lora"  # fft | sft | lora | qlora
    model_name_or_path: str = DEMO_MODEL  # a hub id (org/name) or a local model directory
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
    ddp_bucket_cap_mb: int | None = None  # DDP's gradient buckets (MB); default: torch's 25
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
    secrets: list[str] = field(default_factory=lambda: list(SECRETS))  # env var NAMES, never values
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
    cpus_per_task: int | None = None  # Slurm's; default: 8 a GPU (at most 96), 2 on CPU
    sbatch_args: list[str] = field(default_factory=list)  # passed through: "--mem=64G"
    signal_lead_s: int = 120  # USR2 this many seconds before the time limit
    # Slurm: requeues after preemption or the time limit (unset: 5); SkyPilot --spot: restarts after the job's own
    # failure, max_restarts_on_errors (unset: 0; preemptions are recovered whatever it says)
    max_requeues: int | None = None
    socket_ifname: str | None = None  # NCCL_SOCKET_IFNAME / GLOO_SOCKET_IFNAME
    # sky
    spot: bool = False  # a managed job (sky.jobs.launch) whose job_recovery restarts it after preemption
    infra: str | None = None  # SkyPilot's infra string, passed through: aws, gcp/us-central1, k8s, slurm/NAME
    cloud: str | None = None  # a cloud SkyPilot has enabled (aws, gcp, azure ...); or infra
    region: str | None = None  # that cloud's region
    disk_size: int | None = None  # GiB of each node's disk (SkyPilot's unit); unset: what the run stages, at least 256
    cluster: str | None = None  # SkyPilot cluster to launch or reuse (sky.launch either way); default run name
    down: bool = False  # tear the cluster down when the job ends
    idle_minutes: int = 30  # idle autostop of a launched cluster (ignored with down)

    # -------------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        if self.run_name:
            return self.run_name
        short = re.sub(r"[^a-z0-9]+", "-", self.model_name_or_path.rstrip("/").split("/")[-1].lower()).strip("-")
        return f"ftctl-{self.method}-{short}"[:60].rstrip("-")

    @property
    def output(self) -> str:
        """Where the run writes: output_dir, else runs/<name>. A store's URI without a trailing slash: s3://b/x/ is
        s3://b/x (its cache directory, its one-trainer lock and its jobs were another run's, and two trainers
        pruned each other's checkpoints). A file:// URI is the local path it names (launch, status and the docker
        volume read it as one)."""
        out = self.output_dir or str(Path("runs") / self.name)
        return out.rstrip("/") if storage.is_remote(out) else storage.local_path(out)

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
        if self.warmup_steps is not None:
            return self.warmup_steps
        return WARMUP_RATIO if self.warmup_ratio is None else self.warmup_ratio

    @property
    def eval_when(self) -> str:
        """When the held-out loss is measured, in words (besides at the end)."""
        if self.evals_per_epoch:
            return f"{self.evals_per_epoch} times an epoch"
        if self.eval_steps or not self.saves_per_epoch:
            return f"every {self.eval_every} steps"
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

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        """A short hash of what changes the trained weights (not where it runs)."""
        keep = {k: v for k, v in self.to_dict().items() if k in TRAINING_KEYS}
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


def is_demo_model(name_or_path: str) -> bool:
    """The demo model's id (any case): built locally from its PyPI wheel (ftctl.trainer.model), never fetched."""
    return str(name_or_path).strip().rstrip("/").lower() == DEMO_MODEL.lower()


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
    return bool(path) and not storage.scheme(path) and Path(path).expanduser().exists()


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


FIELDS = {f.name: f for f in dataclasses.fields(RunSpec)}
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
    "infra",
    "cloud",
    "region",
    "disk_size",
    "cluster",
    "down",
    "idle_minutes",
}
TRAINING_KEYS = [n for n in FIELDS if n not in _PLACEMENT_KEYS]


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
        raise ValueError(f"expects a list: {key}: [A, B] in a run file")
    if origin is dict:
        if _clears(value):
            return {}  # a later layer's `-o KEY=none` clears what an earlier one set
        if isinstance(value, dict):  # a run file's are its text as written (load_yaml); a dict given in Python:
            return {str(k): _text(v) for k, v in value.items()}
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


def _clears(value) -> bool:
    """`-o KEY=none` of a list or mapping key: empties it, instead of adding an item named none."""
    if isinstance(value, (list, tuple)) and len(value) == 1:  # a flag given once: --secret none
        value = value[0]
    return isinstance(value, str) and value.strip().lower() in ("none", "null", "[]", "{}")


def canonical_key(key: str) -> str:
    """The run key a name means: model -> model_name_or_path, --max-seq-length -> model_max_length,
    model_init_kwargs.revision -> model_revision (NESTED; one it does not read stays as it is)."""
    k = key.strip().replace("-", "_")
    outer, dot, inner = k.partition(".")
    if dot and outer in NESTED:
        return NESTED[outer].get(inner, k)
    return ALIASES.get(k, k)


def _nested(items):
    """TRL's model_init_kwargs and dataset_kwargs (a mapping, or its JSON/YAML text from -o) as one key each:
    model_init_kwargs.torch_dtype ... Left empty they ask for nothing; another value is left to be refused."""
    import yaml

    for key, value in items:
        if canonical_key(key) not in NESTED:
            yield key, value
            continue
        if isinstance(value, str) and value.strip().startswith("{"):
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError:
                pass
        if isinstance(value, dict):
            yield from ((f"{canonical_key(key)}.{k}", v) for k, v in value.items())
        elif value not in (None, ""):
            yield key, value


def parse_overrides(pairs) -> list[tuple[str, str]]:
    out, errors = [], []
    for p in pairs or ():
        if "=" not in p:
            errors.append(f"-o {p!r}: expected key=value, e.g. -o learning_rate=3e-4")
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
    given = Path(path).expanduser()
    if not given.parent.is_dir():
        return given.name if given.name and Path(given.name).exists() else ""
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
        return f"line {context.line + 1}, {said!r}: {missing}; write KEY: VALUE"
    if getattr(e, "context", None) == "while scanning a quoted scalar" and context is not None:
        return f"line {context.line + 1}, column {context.column + 1}: a quote opened here is never closed"
    if problem is not None and problem.line < len(lines) and lines[problem.line].strip():
        return f"{yaml_problem(e)}; line {problem.line + 1} reads {lines[problem.line].rstrip()!r}"
    return yaml_problem(e)


def load_yaml(path: str) -> dict:
    import yaml

    p = Path(path)
    if not p.is_file():
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
    text = p.read_text()
    try:
        data = yaml.load(text, Loader=Loader) or {}  # a SafeLoader
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        raise FtctlError(f"{path} is not valid YAML: {_yaml_where(e, text)}.") from None
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
    values, errors, sources = {}, [], {}
    zero_asked = None  # the last DeepSpeed config read as a ZeRO strategy: its layer, its key, (strategy, how), note
    eos_asked = None  # TRL's eos_token as the last layer gave it: the key and layer, the token
    evaluation: dict[str, tuple[str, str]] = {}  # evaluation_strategy as given, and where: checked against the
    # held-out data below
    from_epoch: dict[str, str] = {}  # saves_per_epoch / evals_per_epoch an earlier layer's strategy: epoch set
    by_method: dict[str, tuple[str, str]] = {}  # METHOD_AGREES keys as given: checked against the method below
    precision: dict[str, list[str]] = {}  # DTYPE_KEYS given a 16-bit dtype: bf16 or fp16 -> who asked
    for source, items in layers:
        named: dict[str, str] = {}  # key -> the name this layer gave it first
        agreed: list[str] = []  # DECIDED keys given as ftctl does them anyway
        left_out: list[str] = []  # and LEFT_OUT ones
        epochly: dict[str, str] = {}  # saves_per_epoch / evals_per_epoch this layer's save_strategy: epoch set
        layer = _axolotl_columns(_llama_factory_names(items, source, notes), source, notes)
        for raw_key, raw in _mixes(list(_nested(_wandb(layer, source, notes)))):
            key = canonical_key(raw_key)
            if raw is None and key in TURNED and key != "datasets":  # left empty: it asks for nothing
                continue
            given = raw
            try:
                key, raw = _axolotl(key, raw)
            except ValueError as e:
                errors.append(f"{raw_key!r} ({source}): {e}.")
                continue
            if raw_key.strip() == "dataset_name" and raw and notes is not None:
                notes.append(f"dataset_name ({source}): data_path {raw}")
            if raw_key.strip() == "datasets" and key == "data_path" and notes is not None:
                unread = dataset_keys_unread(given)
                notes.append(
                    f"datasets ({source}): their paths are data_path; each row's format is read from its fields"
                    + (f" (not from their {', '.join(unread)})" if unread else "")
                )
            if raw_key.strip() == "adapter" and raw in (None, ""):  # axolotl's full fine-tune leaves it empty
                raw = "fft"
            if raw_key.strip() in NO_TRUNCATION and (raw is None or _word(raw) in ("none", "null")):
                errors.append(
                    f"{raw_key!r} ({source}): null is TRL's 'no truncation'; ftctl cuts each row at model_max_length "
                    "(and packs rows up to it), so it takes a number: give the model's context (its config's "
                    "max_position_embeddings) or your longest row's tokens (ftctl data check shows them)."
                )
                continue
            if raw is None and key in FIELDS and not _base_type(_HINTS[key])[1]:
                continue  # left empty (axolotl's example files list keys so): it asks for nothing
            if key == "save_strategy" and _word(raw) in ("no", "false"):
                notes is None or notes.append(
                    f"{raw_key!r} ({source}): no is left out: checkpoints are written all the same, every save_steps "
                    "(or saves_per_epoch), as a stopped or preempted run resumes from them; save_total_limit bounds "
                    "how many are kept"
                )
                continue
            if key in PER_EPOCH and _word(raw) == "epoch":
                if key != "save_strategy":
                    evaluation[raw_key] = ("epoch", source)
                key, raw = PER_EPOCH[key], 1
                epochly[key] = raw_key
                notes is None or notes.append(f"{raw_key!r} ({source}): epoch is {key}=1 here (at each epoch's end)")
            if key == "fsdp" and _fsdp_strategy(raw):
                key, raw = "strategy", "fsdp"
                said = f"{raw_key!r} ({source}): FSDP's full sharding is strategy=fsdp here (FSDP2, each layer sharded)"
                notes is None or notes.append(said)
            elif key == "deepspeed" and (zero := _deepspeed_strategy(raw)):
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
                errors.append(
                    f"{named[key]!r} and {raw_key!r} ({source}) are both {key} here"
                    f"{' (TRL names it completion_only_loss for prompt-completion rows)' * (key == 'assistant_only_loss')}"
                    ": keep one."
                )
                continue
            if key == "eos_token" and raw not in (None, ""):  # checked against the chat template below
                eos_asked = (f"{raw_key!r} ({source})", str(raw))
                continue
            if key in DTYPE_KEYS and (flag := _dtype_word(raw)):
                agreed.append(raw_key)
                precision.setdefault(flag, []).append(f"{raw_key}={raw} ({source})")
                if flag in METHOD_AGREES.get(key, {}):
                    by_method[f"{raw_key!r} ({source})"] = (key, flag)
                continue
            if key in DECIDED:
                if key == "trust_remote_code" and _word(raw) == "true":  # every LLaMA-Factory example says it
                    notes is None or notes.append(
                        f"{raw_key}: true ({source}), as LLaMA-Factory's examples give it for models that need no "
                        f"remote code, is left off: {DECIDED[key]}"
                    )
                elif _agrees(key, raw) or _word(raw) in METHOD_AGREES.get(key, {}):
                    (left_out if key in LEFT_OUT and raw is not None else agreed).append(raw_key)
                    if key in ("evaluation_strategy", "eval_strategy", "do_eval") and raw not in (None, ""):
                        evaluation[raw_key] = (_word(raw), source)
                    if _word(raw) in METHOD_AGREES.get(key, {}):  # (left empty, it asks for nothing)
                        by_method[f"{raw_key!r} ({source})"] = (key, _word(raw))
                else:
                    errors.append(f"{raw_key!r} ({source}) is not set by hand here: {DECIDED[key]}.")
                continue
            if (outer := key.partition("."))[1] and outer[0] in NESTED_UNREAD:  # a model_init_kwargs key not read
                errors.append(f"{raw_key!r} ({source}) is not offered: {NESTED_UNREAD[outer[0]]}.")
                continue
            if key not in FIELDS:
                hint = f" {MEANT[key]}" if key in MEANT else _suggest_key(key) or " `ftctl keys` lists them."
                errors.append(f"Unknown key {raw_key!r} ({source}).{hint}")
                continue
            try:
                val = _coerce(key, raw)
            except ValueError as e:  # secrets and env may hold a credential: their values are never repeated
                hidden = key in ("secrets", "env") or _holds_credential(str(raw))
                said = key if hidden else f"{key}={raw!r}"
                errors.append(f"{said} ({source}): {e}.")
                continue
            typ, _ = _base_type(_HINTS[key])
            if typing.get_origin(typ) is list and source != "run file" and not _clears(raw):
                base = values.get(key, FIELDS[key].default_factory())
                val = base + [v for v in val if v not in base]  # flags/-o add to the list
            elif typing.get_origin(typ) is dict and key in values and val:
                val = {**values[key], **val}
            values[key] = val
            sources[key] = source
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
        if left_out and notes is not None:
            notes.append(f"{', '.join(left_out)} ({source}): left out, {DECIDED[canonical_key(left_out[0])]}")
    if "method" not in values:  # TRL's use_peft/load_in_4bit and FastChat's q_lora say which method
        if meant := _method_meant(by_method):
            values["method"] = meant
            notes is None or notes.append(
                f"method {meant}: what {', '.join(by_method)} {'asks' if len(by_method) == 1 else 'ask'} for"
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
    if any(k == "finetuning_type" for k, _ in by_method.values()) and values.get("method", "lora") in _ADAPTERS:
        taken = {k: v for k, v in LLAMA_FACTORY_LORA.items() if k not in values}
        if "lora_alpha" not in values:
            taken["lora_alpha"] = 2 * values.get("lora_r", LLAMA_FACTORY_LORA["lora_r"])
        values.update(taken)
        if taken and notes is not None:
            notes.append(
                f"{', '.join(f'{k} {v:g}' for k, v in taken.items())}: LLaMA-Factory's defaults, which a run file with "
                "its finetuning_type trains with where it leaves them out"
            )
    _tool_defaults(values, _vocabularies(layers), notes)
    errors += _precision_asked(precision, values, sources, notes)
    if errors:
        raise FtctlError(_join(errors))
    spec = RunSpec(**values)
    if said := written_secret_problems(spec):  # before any line that repeats a value
        raise FtctlError(_join(said))
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
    said = (
        ([problem] if eos_asked and (problem := _eos_token_problem(spec, *eos_asked, notes)) else [])
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

    near = [a for a in ALIASES if difflib.SequenceMatcher(None, word, a).ratio() >= 0.85]
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
        return TURNED["dataset_name"][0], _dataset_at(str(raw)) if isinstance(raw, str) else raw
    if key == "datasets" and isinstance(raw, list) and raw and all(isinstance(d, dict) and d.get("path") for d in raw):
        refused = [
            f"{d['path']}'s {k}: {v!r}: {why}" for d in raw for k, v in d.items() if (why := _dataset_refuses(k, v))
        ]
        if "data_columns" in FIELDS:  # their own names of the fields: data_columns (_axolotl_columns)
            refused += [f"{d['path']}'s {why}" for d in raw if (why := axolotl_columns(d)[1])]
        else:
            refused += [why for d in raw if (why := _turn_keys_refused(d))]
        if refused:
            raise ValueError("; ".join(refused))

        return TURNED["datasets"][0], [_dataset_at(str(d["path"])) for d in raw]
    return key, raw


def _dataset_at(path: str) -> str:
    """axolotl's dataset path, TRL's dataset_name, as data_path: a file, a URI or a path as it is, ORG/NAME that is
    none of them a Hub dataset (hf://datasets/ORG/NAME)."""
    from ftctl.hub import HUB_ID

    file = Path(path).suffix.lower() in (".json", ".jsonl", ".parquet", ".csv", ".tsv", ".txt", ".arrow")
    here = "://" in path or file or Path(path).expanduser().exists() or storage.looks_like_path(path)
    return path if here or not HUB_ID.match(path) else f"hf://datasets/{path}"


# the fields a data row's turn says whether it trains in, true or false, beside OpenAI's weight (0 or 1), which the
# data reader (trainer.formats) honours: axolotl's message_field_training default, its other usual name, ms-swift's
TRAIN_FLAGS = ("training", "train", "loss")

# the keys of an axolotl dataset entry that choose which rows, or which of their tokens, are trained, with the
# values that ask for what ftctl does (an empty tuple: none does) and how to ask for what they want here
_DATASET_KEYS = {
    "split": (
        ("train",),
        "a Hub dataset's train split is read; for another, name its files (hf://datasets/ORG/NAME/FILES)",
    ),
    "name": ((), "name the configuration's files instead (hf://datasets/ORG/NAME/CONFIG/*.parquet)"),
    "data_files": ((), "name the files in path (hf://datasets/ORG/NAME/FILES, or a local path)"),
    "field": ((), "give a file whose rows are the records themselves (JSON lines, or a JSON list)"),
    "revision": ((), "name it in the path: hf://datasets/ORG/NAME@REVISION/FILES"),
    "roles_to_train": (
        (("assistant",), ("gpt",)),
        "the assistant's turns are trained (train_on_inputs: true trains every token)",
    ),
    "train_on_eos": (("turn",), "each assistant turn is trained with the token that ends it, as axolotl's turn"),
    "message_field_training": (
        TRAIN_FLAGS,
        f"a turn says whether it trains in a field named {', '.join(TRAIN_FLAGS)} (true or false) or OpenAI's "
        "weight (0 or 1): rename the field in the data",
    ),
    "chat_template": (
        ("tokenizer_default",),
        "give the template as a file or a model: -o chat_template_path=FILE.jinja (or a model directory or id)",
    ),
}


def _dataset_refuses(key: str, value) -> str | None:
    """Why an axolotl dataset entry's ``key: value`` asks for other rows or tokens than ftctl trains, None where it
    does not (or is one ftctl does not read: the note says which)."""
    if key not in _DATASET_KEYS:
        return None
    agrees, how = _DATASET_KEYS[key]
    word = tuple(_word(v) for v in value) if isinstance(value, list) else _word(value)
    return None if value is None or word in agrees else how


# the keys of an axolotl dataset entry that name its rows' turns and their keys (field_messages: chat, and
# message_property_mappings: {role: speaker, content: text}, or the older message_field_role/_content)
TURN_KEYS = ("field_messages", "message_property_mappings", "message_field_role", "message_field_content")
# the turns' names ftctl reads (trainer.formats): a row's list of turns, and each turn's role and content keys
TURNS_READ, TURN_KEYS_READ = ("messages", "conversations"), (("role", "content"), ("from", "value"))


def _turn_keys_refused(entry: dict) -> str | None:
    """Why an axolotl dataset entry's turns, named as its TURN_KEYS say, are not rows ftctl reads (it reads a row's
    turns by their names, not by a mapping in the run file): what to rename in the data. None where they are."""
    mapped = entry.get("message_property_mappings")
    mapped = mapped if isinstance(mapped, dict) else {}
    turns = str(entry.get("field_messages") or "messages")
    role = str(mapped.get("role") or entry.get("message_field_role") or "role")
    content = str(mapped.get("content") or entry.get("message_field_content") or "content")
    if turns in TURNS_READ and (role, content) in TURN_KEYS_READ:
        return None
    given = ", ".join(f"{k}: {entry[k]!r}" for k in TURN_KEYS if entry.get(k) is not None)
    renames = [(turns, "messages")] * (turns not in TURNS_READ)  # from/value turns read as they are
    renames += [(role, "role"), (content, "content")] * ((role, content) not in TURN_KEYS_READ)
    renames = [f"{a!r} to {b!r}" for a, b in renames if a != b]
    keys = [k for k in TURN_KEYS if k in entry]
    return (
        f"{entry['path']}'s {given}: ftctl reads a row's turns under 'messages' with role and content keys (or "
        f"ShareGPT's conversations, from and value), not by a dataset entry's mapping: rename {', '.join(renames)} "
        f"in the data and drop {', '.join(keys)} from the entry"
    )


def dataset_keys_unread(raw) -> list[str]:
    """The keys of axolotl's dataset entries that ftctl does not read (type, ds_type ...): each row's format is read
    from its fields (turn keys it reads already, TURN_KEYS, and where data_columns takes them, roles and a type's
    field names, are not listed)."""
    read = {"path", *_DATASET_KEYS, *TURN_KEYS} | ({"roles"} if "data_columns" in FIELDS else set())
    return sorted(
        {k for d in raw if isinstance(d, dict) for k in d if not (k == "type" and isinstance(d[k], dict))} - read
    )


# the roles a chat template takes (trainer.formats' OPENAI_ROLES): what axolotl's roles map the data's roles to
TEMPLATE_ROLES = ("system", "user", "assistant", "tool")
# axolotl's roles where an entry gives none (its chat_template strategy's): the template's role -> the data's
AXOLOTL_ROLES = {"user": ["human", "user"], "assistant": ["gpt", "assistant"], "system": ["system"], "tool": ["tool"]}
# a custom type's (axolotl's user-defined Alpaca-like prompt) field_* keys: the Alpaca field each names
AXOLOTL_TYPE_FIELDS = {
    "field_instruction": "instruction",
    "field_input": "input",
    "field_output": "output",
    "field_system": "system",
}
# and its prompt strings, which ftctl's chat template writes instead: the values that ask for no more than it does
AXOLOTL_TYPE_FORMATS = {
    "format": ("{instruction}",),
    "no_input_format": ("{instruction}",),
    "system_format": ("{system}",),
}


def axolotl_columns(entry: dict) -> tuple[dict, str | None]:
    """(ftctl's own description of the fields an axolotl dataset entry names otherwise, as data_columns holds it: the
    field -> the data's name of it (messages, role, content; instruction, input, output, system), ``roles`` the data's
    role -> the template's, ``system_prompt`` a system prompt for rows without one; {} where there are none; why not,
    the rest of a sentence after the entry's path, where the entry asks what ftctl cannot do). From field_messages,
    message_property_mappings (role, content; or message_field_role/_content, axolotl's older keys), roles (replacing
    axolotl's defaults, as axolotl does) and a custom type's field_* and system_prompt."""
    described: dict = {}
    kind = entry.get("type")
    if isinstance(kind, dict):
        unknown = sorted(set(kind) - {*AXOLOTL_TYPE_FIELDS, *AXOLOTL_TYPE_FORMATS, "system_prompt", "field"})
        asked = [f"{k}: {kind[k]!r}" for k, ok in AXOLOTL_TYPE_FORMATS.items() if kind.get(k) not in (None, "", *ok)]
        if unknown:
            return (
                {},
                f"type: {', '.join(unknown)} are no keys of axolotl's custom type ftctl reads (field_*, system_prompt)",
            )
        if asked:
            return {}, (
                f"type's {', '.join(asked)}: ftctl writes each prompt with the model's chat template (the one a chat "
                "or a server of the model writes too; chat_template_path names another), not a format string: drop "
                f"{', '.join(k for k in AXOLOTL_TYPE_FORMATS if k in kind)} from the type"
            )
        if kind.get("field"):
            return {}, f"type's field: {kind['field']!r}: {_DATASET_KEYS['field'][1]}"
        described |= {ours: str(kind[k]) for k, ours in AXOLOTL_TYPE_FIELDS.items() if kind.get(k) and kind[k] != ours}
        if kind.get("system_prompt"):
            described["system_prompt"] = str(kind["system_prompt"])
    mapped = entry.get("message_property_mappings") or {}
    if not isinstance(mapped, dict):
        return {}, f"message_property_mappings: {mapped!r} is no mapping: give {{role: KEY, content: KEY}}"
    if other := sorted(k for k, v in mapped.items() if k not in ("role", "content") and v != k):
        return {}, (
            f"message_property_mappings' {', '.join(other)}: ftctl renames a turn's role and content only: rename "
            f"{', '.join(f'{mapped[k]!r} to {k!r}' for k in other)} in the data"
        )
    turns = entry.get("field_messages")
    role = mapped.get("role") or entry.get("message_field_role")
    content = mapped.get("content") or entry.get("message_field_content")
    roles = entry.get("roles")
    if roles is not None:
        if not isinstance(roles, dict) or not all(isinstance(v, (list, str)) for v in roles.values()):
            return {}, f"roles: {roles!r}: give the template's roles' names in the data, roles: {{user: [human]}}"
        if wrong := sorted(set(roles) - set(TEMPLATE_ROLES)):
            return {}, f"roles: {', '.join(wrong)}: a chat template's roles are {', '.join(TEMPLATE_ROLES)}"
    native = (
        str(turns or "messages") in TURNS_READ and (str(role or "role"), str(content or "content")) in TURN_KEYS_READ
    )
    if not native or roles is not None:  # a conversation named its own way: messages, the template's roles
        described |= {"messages": str(turns or "messages"), "role": str(role or "role")}
        described["content"] = str(content or "content")
        given = {r: [v] if isinstance(v, str) else v for r, v in (roles or AXOLOTL_ROLES).items()}
        described["roles"] = {str(name): r for r, names in given.items() for name in names if str(name) != r}
    return described, None


def _axolotl_columns(items, source: str, notes=None) -> list:
    """A layer's axolotl ``datasets`` entries that name their fields otherwise (axolotl_columns) as data_columns: each
    dataset's path -> its description (JSON text), which trainer.formats reads its rows by; noted."""
    items = list(items)
    entries = [
        d
        for k, raw in items
        if k.strip() == "datasets" and isinstance(raw, list)
        for d in raw
        if isinstance(d, dict) and d.get("path")
    ]
    described = {_dataset_at(str(d["path"])): axolotl_columns(d)[0] for d in entries}
    described = {path: d for path, d in described.items() if d}
    if not described or "data_columns" not in FIELDS:
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


# axolotl's W&B keys, given a value: what they ask for is report_to=wandb with W&B's own variables set
WANDB_ENV = {
    **{"wandb_project": "WANDB_PROJECT", "wandb_entity": "WANDB_ENTITY", "wandb_name": "WANDB_NAME"},
    **{"wandb_run_id": "WANDB_RUN_ID", "wandb_watch": "WANDB_WATCH", "wandb_log_model": "WANDB_LOG_MODEL"},
}


def _wandb(items, source: str, notes=None) -> list:
    """A layer's axolotl W&B keys with values as report_to: wandb (where the layer names no report_to) and env (their
    variables), noted; empty ones stay (they ask for nothing)."""
    given = [(k, v) for k, v in items if k.strip() in WANDB_ENV and v not in (None, "")]
    if not given:
        return list(items)
    env = {WANDB_ENV[k.strip()]: _text(v) for k, v in given}
    turned = [("env", env)] + [("report_to", "wandb")] * all(canonical_key(k) != "report_to" for k, _ in items)
    notes is None or notes.append(
        f"{', '.join(k for k, _ in given)} ({source}): report_to=wandb, and "
        f"{' '.join(f'{n}={v}' for n, v in env.items())} in the job's environment (W&B's key: export WANDB_API_KEY; "
        "ftctl passes it by name)"
    )
    return [(k, v) for k, v in items if (k, v) not in given] + turned


LF_INFO = "dataset_info.json"  # LLaMA-Factory's: its datasets by name (trainer.formats reads an entry's columns)
LF_NAMED = {"dataset": "data_path", "eval_dataset": "eval_data_path"}  # its keys naming entries of it
# the split of a Hub dataset ftctl reads, by the key naming its entry (trainer.splits: train; held-out data test)
LF_SPLIT = {"dataset": "train", "eval_dataset": "test"}
# LLaMA-Factory's mix_strategy values: how interleave_datasets stops (first_exhausted, all_exhausted), or concat
LF_MIXES = {"concat": None, "interleave_under": min, "interleave_over": max}


def _llama_factory_names(items, source: str, notes=None) -> list:
    """LLaMA-Factory's ``dataset: a,b`` (and eval_dataset), names of the entries of dataset_info.json in dataset_dir
    (its default: data), as data_path (eval_data_path): each entry's file_name there (hf_hub_url: a Hub dataset, its
    folder and revision in the path), whose rows trainer.formats reads as that entry says; its mix_strategy and
    interleave_probs as data_weights (_llama_factory_mix). As they are where there is no such file here (the key is
    then refused, saying what to write); FtctlError for a name it lacks or an entry ftctl cannot read."""
    items = list(items)
    given = {k.strip(): v for k, v in items}
    if not any(given.get(k) for k in LF_NAMED):
        return items
    directory = str(given.get("dataset_dir") or "data")
    info = Path(directory).expanduser() / LF_INFO
    try:
        entries = json.loads(info.read_text())
    except (OSError, ValueError):
        return items
    if not isinstance(entries, dict):
        return items
    out, errors, named = [], [], {}
    for key, value in items:
        if key.strip() not in LF_NAMED or not value:
            out.append((key, value))
            continue
        names = [
            str(n).strip() for n in (value if isinstance(value, list) else str(value).split(",")) if str(n).strip()
        ]
        paths = []
        for name in names:
            entry = entries.get(name)
            if not isinstance(entry, dict):
                known = ", ".join(list(entries)[:8]) + (f" and {len(entries) - 8} more" if len(entries) > 8 else "")
                errors.append(f"{key.strip()} ({source}): {name!r} is not an entry of {info} (it names {known})")
            elif problem := _llama_factory_unread(entry, LF_SPLIT[key.strip()]):
                errors.append(f"{key.strip()} ({source}): {info}'s entry {name!r} {problem}")
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
            elif isinstance(entry.get("hf_hub_url"), str):
                revision = f"@{entry['revision']}" if entry.get("revision") else ""
                folder = f"/{str(entry['folder']).strip('/')}" if entry.get("folder") else ""
                paths.append(f"hf://datasets/{entry['hf_hub_url']}{revision}{folder}")
            else:
                errors.append(
                    f"{key.strip()} ({source}): {info}'s entry {name!r} has no file_name or hf_hub_url, which ftctl "
                    "reads: give its data's files as data_path"
                )
        named[key.strip()] = paths
        out.append((LF_NAMED[key.strip()], paths))
        if notes is not None and paths:
            notes.append(
                f"{key.strip()}: {', '.join(names)} ({source}) are {LF_NAMED[key.strip()]} {', '.join(paths)} "
                f"({info}'s entries; each file read as its entry says)"
            )
    if errors:
        raise FtctlError(_join(errors))
    return _llama_factory_mix(out, named.get("dataset", []), source, notes)


def _llama_factory_unread(entry: dict, split: str) -> str | None:
    """What of a dataset_info.json entry ftctl would not read as LLaMA-Factory does (the rest of the sentence that
    names it), None where it reads it all: a Hub dataset's subset (a configuration, not files) or a split other than
    the one ftctl reads (train; test for held-out data) given; LLaMA-Factory reads a file's rows as its train split
    only."""
    asked = str(entry.get("split") or "train")
    if isinstance(entry.get("file_name"), str):
        if asked == "train":
            return None
        return (
            f"asks file {entry['file_name']}'s split {asked!r}, which LLaMA-Factory does not have either (a file's "
            "rows are its train split): drop split from the entry"
        )
    if not isinstance(hub := entry.get("hf_hub_url"), str):
        return None
    subset, folder = entry.get("subset"), entry.get("folder")
    at = f"hf://datasets/{hub}/{str(folder).strip('/') + '/' if folder else ''}"
    if subset:
        return (
            f"names subset {subset!r} of {hub}, a configuration of the Hub dataset, which ftctl does not read by name "
            f"(nothing is downloaded to learn its files): give its files as data_path, {at}{subset}/ where the "
            "dataset keeps each subset in a folder of its name (the dataset's Files tab shows which), and drop the "
            "dataset key"
        )
    if entry.get("split") and asked != split:  # none given: the split ftctl reads for the role
        return (
            f"asks {hub}'s split {asked!r}, and ftctl reads a Hub dataset's {split} split "
            f"({'held-out data' if split != 'train' else 'training data'}; by its files' names): give the {asked} "
            f"split's files as data_path ({at}FILES, e.g. {at}data/{asked}-*.parquet), and drop the dataset key"
        )
    return None


def _records_in(path: str) -> int | None:
    """How many records a local .json or .jsonl file (gzipped too) holds, as LLaMA-Factory's JSON loader counts
    them: a JSON list's items, else its non-blank lines; None for any other (a directory, Parquet, a URI)."""
    name = path.lower().removesuffix(".gz")
    if storage.scheme(path) or not name.endswith((".json", ".jsonl")) or not Path(path).is_file():
        return None
    import gzip

    try:
        raw = (gzip.open if path.lower().endswith(".gz") else open)(path, "rb").read()
        try:
            whole = json.loads(raw)
        except ValueError:
            whole = None
        return len(whole) if isinstance(whole, list) else sum(1 for line in raw.splitlines() if line.strip())
    except (OSError, ValueError):
        return None


def _llama_factory_mix(items: list, paths: list[str], source: str, notes=None) -> list:
    """A layer's LLaMA-Factory mix_strategy and interleave_probs (with its ``dataset`` names, read as ``paths``) as
    data_weights: interleave_datasets draws each dataset's share of the rows until the first dataset is used up
    (interleave_under) or the last one is (interleave_over), so dataset i of n_i rows and share p_i gives p_i * T
    rows, T = min (max) of n_j / p_j: its weight here, each one's rows that many times an epoch, is p_i * T / n_i.
    Without probs, equal shares (interleave_datasets' round robin); concat (LLaMA-Factory's default) is ftctl's
    without data_weights. FtctlError for a mix ftctl cannot count here."""
    given = {k.strip(): v for k, v in items}
    if "mix_strategy" not in given and "interleave_probs" not in given:
        return items
    keep = [(k, v) for k, v in items if k.strip() not in ("mix_strategy", "interleave_probs")]
    strategy, probs = str(given.get("mix_strategy") or "concat").strip(), given.get("interleave_probs")
    said = f"mix_strategy: {strategy}" + (f", interleave_probs: {_text(probs)}" if probs is not None else "")
    if strategy not in LF_MIXES:
        raise FtctlError(f"mix_strategy: {strategy} ({source}) is none of LLaMA-Factory's: {', '.join(LF_MIXES)}.")
    if LF_MIXES[strategy] is None:
        if probs is not None:
            raise FtctlError(
                f"interleave_probs ({source}) mixes by shares with mix_strategy interleave_under or interleave_over, "
                f"not {strategy} (LLaMA-Factory refuses it so too): add mix_strategy: interleave_under, or drop "
                "interleave_probs to read each dataset once."
            )
        notes is None or notes.append(
            f"mix_strategy: concat ({source}): each dataset's rows once, as ftctl reads datasets without data_weights"
        )
        return keep
    if len(paths) < 2:
        notes is None or notes.append(f"{said} ({source}): one dataset, nothing to mix")
        return keep
    if any(canonical_key(k) == "data_weights" for k, _ in items):
        raise FtctlError(f"{said} ({source}) and data_weights both mix the datasets: keep one.")
    try:
        shares = (
            [1 / len(paths)] * len(paths)
            if probs is None
            else [float(p) for p in (probs if isinstance(probs, list) else str(probs).split(","))]
        )
    except (TypeError, ValueError):
        raise FtctlError(f"interleave_probs: {_text(probs)} ({source}): give one number a dataset, 0.7,0.3") from None
    if len(shares) != len(paths) or abs(sum(shares) - 1) > 1e-6 or min(shares) <= 0:
        raise FtctlError(
            f"interleave_probs: {_text(probs)} ({source}) are no shares of the {len(paths)} datasets of dataset: give "
            "one above 0 each, in its order, summing to 1 (a dataset of none: drop it from dataset)."
        )
    rows = [_records_in(p) for p in paths]
    if uncounted := [p for p, n in zip(paths, rows) if not n]:
        raise FtctlError(
            f"{said} ({source}) mixes by the datasets' sizes, and {', '.join(uncounted)} is no local JSON file whose "
            "rows ftctl counts here: give data_weights instead, each dataset's rows that many times an epoch "
            "(shares p over n rows: p * T / n, T the smallest n / p for interleave_under, the largest for "
            "interleave_over; `ftctl data check -c run.yaml` counts the rows)."
        )
    total = LF_MIXES[strategy](n / p for n, p in zip(rows, shares))
    weights = [p * total / n for n, p in zip(rows, shares)]
    under = strategy.endswith("under")
    mixed = ", ".join(f"{path} {n:,} rows x {w:.4g}" for path, n, w in zip(paths, rows, weights))
    notes is None or notes.append(
        f"{said} ({source}) are data_weights {','.join(f'{w:.6g}' for w in weights)} here: {mixed} "
        f"(LLaMA-Factory's interleaving {'stops at the first dataset used up' if under else 'goes on until the last is'})"
    )
    return keep + [("data_weights", ",".join(f"{w:.6g}" for w in weights))]


def _mixes(items):
    """A run file's ``data_path: {PATH: WEIGHT, ...}`` (the alignment handbook's dataset_mixer) as data_path and
    data_weights."""
    weighted = [k for k, v in items if canonical_key(k) == "data_path" and isinstance(v, dict)]
    if weighted and (named := [k for k, _ in items if canonical_key(k) == "data_weights"]):
        raise FtctlError(
            f"{weighted[0]!r} is a mapping of datasets to weights, and {named[0]!r} gives weights too: keep one."
        )
    for key, value in items:
        if canonical_key(key) == "data_path" and isinstance(value, dict):
            yield key, list(value)
            yield "data_weights", list(value.values())
        else:
            yield key, value


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


PATH_KEYS = ("model_name_or_path", "chat_template_path", "data_path", "eval_data_path", "output_dir", "resume")
URI_KEYS = (*PATH_KEYS, "s3_endpoint_url")  # a URI's user and password there: the store's variables instead
VARIABLE = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)")


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


def best_model_problems(spec: RunSpec, strategy: str | None = None) -> list[str]:
    """load_best_model_at_end: true needs held-out data and a checkpoint at every evaluation, so that the lowest
    held-out loss is always a checkpoint's (transformers asks the opposite, save_steps a multiple of eval_steps: a
    lowest loss found between checkpoints is then kept by none, and it loads an older checkpoint). Said here, before
    the launch, in ftctl's words. ``strategy``: the plan's, where the planner chose it (the trainer asks again)."""
    if not spec.load_best_model_at_end:
        return []
    strategy = strategy or spec.strategy
    key = "load_best_model_at_end: true"
    if not spec.evaluates:
        return [
            f"{key} loads the checkpoint with the lowest held-out loss at the end: give held-out data (--eval-data "
            "FILE, or -o eval_split=0.05), or leave it out (the final model is then the last step's)."
        ]
    if strategy == "fsdp":
        return [
            f"{key} with strategy=fsdp: loading a checkpoint's weights back at the end is not checked under FSDP "
            "here; -o strategy=zero3 (DeepSpeed ZeRO-3 loads it), or leave it out and take RUN/checkpoint-N."
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
        if not _ENV_NAME.fullmatch(k):
            errors.append(f"env {k!r} is not a valid environment variable name.")
        elif is_secret_name(k, spec.secrets, spec.env[k]):
            errors.append(
                f"env {k} is a secret, and env values are written into the rendered job files and spec.json: "
                f"export {k} where you launch and pass --secret {k} instead (secrets pass by name only)."
            )
        elif what := credential_in(spec.env[k]):
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
    if spec.run_name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", spec.run_name):
        errors.append(
            f"run_name {spec.run_name!r}: use letters, digits, '.', '_' and '-' (at most 63), "
            "starting with a letter or digit; it names jobs, clusters and buckets."
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
    for key in ("data_path", "eval_data_path", "output_dir"):
        for v in split_paths(getattr(spec, key)) if key in PATH_LISTS else [getattr(spec, key)]:
            if v and "://" in v and not (v.startswith("file://") or storage.is_remote(v)):
                schemes = ", ".join(sorted(f"{s}://" for s in storage.REMOTE_SCHEMES))
                errors.append(f"{key}={v!r}: unknown storage scheme; use a local path, file:// or one of {schemes}.")
            elif v and (meant := storage.misspelt_uri(v)):
                errors.append(f"{key}={v!r} would be a local path: did you mean {meant}?")
    try:
        storage.require_writable(spec.output, "output_dir")
    except FtctlError as e:
        errors.append(str(e))
    if said := resume_problem(spec.resume, here=spec.backend in RUNS_HERE, output=spec.output):
        errors.append(said)
    if spec.time:
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


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


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


def secret_problem(name: str, environ: typing.Mapping[str, str] | None = None) -> str | None:
    """What is wrong with ``--secret NAME`` (None: nothing), said without repeating it: it may be the credential
    itself (``--secret $HF_TOKEN``), which would be written into the job's files and spec.json. Refused: what is no
    variable name; the value of a variable set in ``environ`` (one not itself set there); the shape of a token
    (looks_like_token)."""
    environ = os.environ if environ is None else environ
    fix = "pass the variable's name, e.g. --secret HF_TOKEN (its value is taken from where you launch, never written)."
    if not _ENV_NAME.fullmatch(name):
        var, eq, _ = name.partition("=")  # NAME=VALUE: the value is never repeated
        if eq and _ENV_NAME.fullmatch(var.strip()):
            return (
                f"secret {var.strip()}=...: pass the name alone (--secret {var.strip()}) and export its value where "
                "you launch; a secret's value is never written into the job's files."
            )
        return f"a secret is not an environment variable NAME (it is not repeated here, in case it is a value): {fix}"
    holders = sorted(k for k, v in environ.items() if v == name) if name not in environ else []
    if holders:
        return f"a secret is the value of {', '.join(holders)} (set here), not a variable's name: {fix}"
    if looks_like_token(name):
        return f"a secret looks like a token (16 or more letters and digits in a run), not a variable's name: {fix}"
    return None


# the variable a tool's login reads its credential from, named in the fix for a credential written in a setup line
_TOOL_SECRETS = {"wandb": "WANDB_API_KEY", "huggingface-cli": "HF_TOKEN", "hf": "HF_TOKEN"}
_CREDENTIAL_OPTION = re.compile(r"--?(?:token|api[-_]?key|password|passwd)", re.I)


def setup_secret_problem(line: str, secrets=()) -> str | None:
    """What writes a credential into the job's files in a setup line (None: nothing): ``export HF_TOKEN=hf_...``,
    ``huggingface-cli login --token hf_...``, ``wandb login KEY``. Setup lines are written into the rendered script,
    spec.json and, where one fails, the job's log; the value is not repeated here. A ``$VARIABLE`` is a reference,
    not a value."""
    written = "a value (not repeated here), which would be written into the job's files"
    by_name = "(secrets pass by name, never written)"
    try:
        words = shlex.split(line, comments=True)
    except ValueError:  # unbalanced quotes: refused as a shell line elsewhere (launch.setup_lines)
        words = []
    for i, word in enumerate(words):
        name, eq, value = word.partition("=")
        literal = bool(value) and "$" not in value and not value.startswith(("/", "~", "./"))  # a path: a key's file
        if eq and _ENV_NAME.fullmatch(name) and literal and is_secret_name(name, secrets, value):
            return f"setup line sets {name} to {written}: export {name} where you launch and pass --secret {name} {by_name}."
        after = value if eq else (words[i + 1] if i + 1 < len(words) else "")
        option = name if eq else word
        token = looks_like_token(after) and "." not in after  # not a registry's host name
        credential = _CREDENTIAL_OPTION.fullmatch(option) or (option == "login" and token)
        if credential and after and "$" not in after and not after.startswith("-"):
            var = next((v for tool, v in _TOOL_SECRETS.items() if tool in words), "TOKEN")
            return (
                f'setup line gives {option} {written}: write a variable there ("${var}"), export it where you '
                f"launch and pass --secret {var} {by_name}."
            )
    pieces = [line, *words, *(word.partition("=")[2] for word in words)]  # a word, or what a NAME= of it sets
    if holders := sorted({h for piece in pieces for h in secret_holders(piece, secrets)}):  # -o setup="... $HF_TOKEN"
        return (
            f"setup line holds the value of {', '.join(holders)} (set here; not repeated), which would be written into "
            f"the job's files: quote the line in single quotes where you launch, so that the job's shell expands the "
            f"variable (-o setup='export NAME=\"${holders[0]}\"'), and pass --secret {holders[0]} {by_name}."
        )
    if what := credential_in(line):
        fix = "https://USER:$GIT_TOKEN@HOST/..." if what == "a URL's password" else '"$TOKEN"'
        return (
            f"setup line holds {what} (not repeated here), which would be written into the job's files: write a "
            f"variable there ({fix}), export it where you launch and pass --secret with its name {by_name}."
        )
    return None


# user values checked apart from written_secret_problems: secrets are names (secret_problem), env and setup lines
# have their own lines (validate, setup_secret_problem)
_CHECKED_APART = ("secrets", "env", "setup")
# a URI's user, and its password where it has one (scheme://USER:PASSWORD@HOST/...; a :PORT/ is no password)
URI_USERINFO = re.compile(r"(?<![A-Za-z0-9+.-])([A-Za-z][A-Za-z0-9+.-]*://)([^/\s@:]*)(?::([^\s@]*))?@")
# an object store's own credential variables, which a job reaching it gets by name (storage.job_env)
_STORE_KEYS = {
    "s3": "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
    "gcs": "GOOGLE_APPLICATION_CREDENTIALS (its key file)",
    "abfs": "AZURE_STORAGE_ACCOUNT_NAME and AZURE_STORAGE_ACCOUNT_KEY",
    "hf": "HF_TOKEN",
}


def written_secret_problems(spec: RunSpec) -> list[str]:
    """A line for each user value that would write a credential into the job's files: every string a backend
    writes into its rendered script or task (job.sbatch, task.yaml, the docker run line), spec.json and the
    checkpoints' manifests (sbatch args, Slurm's and SkyPilot's options, the container, the model, data and output
    paths, report_to, scheduler arguments ...) holding the value of a secret set here (secret_holders), a token's
    shape (credential_in) or a URI's user and password; the value is never repeated. A key at its default holds
    nobody's secret (the trainer builds its spec.json again where the secrets are set)."""
    said = []
    for key, value in written_values(spec):
        where = f"and {key} is written into the rendered job files and spec.json"
        if uri_credentials(value):
            said.append(_uri_credentials_said(key, value))
        elif holders := secret_holders(value, spec.secrets):
            name = holders[0]
            said.append(
                f"{key} holds the value of {', '.join(holders)} (set here; not repeated), {where}: pass it by name, "
                f"--secret {name} (the job reads {name}), and leave it out of {key} (secrets pass by name only)."
            )
        elif key not in URI_KEYS and (what := credential_in(value)):  # a path's name may look like a token
            said.append(
                f"{key} holds {what} (not repeated here), {where}: leave it out; a credential the job needs is "
                "exported where you launch and passed by its name, --secret NAME (secrets pass by name only)."
            )
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


def uri_credentials(value: str) -> bool:
    """Whether ``value`` holds a URI with a user and password (s3://KEY:SECRET@bucket/x, https://user:pass@host), or a
    user that is a token (https://hf_...@host)."""
    for m in URI_USERINFO.finditer(value):
        user, password = m.group(2), m.group(3)
        if password is not None and not re.fullmatch(r"\d+(?:/.*)?", password):  # host:PORT/path@...: no password
            return True
        if password is None and (looks_like_token(user) or credential_in(user)):
            return True
    return False


def _uri_credentials_said(key: str, value: str) -> str:
    """uri_credentials' line: without them, and the store's own variables instead (the value is not repeated)."""
    if key == "s3_endpoint_url":
        return (
            "s3_endpoint_url holds a user and password (not repeated here): give the endpoint alone (http://HOST:PORT) "
            "and the keys as AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY where you launch."
        )
    bare = URI_USERINFO.sub(lambda m: m.group(1), value)
    shown = f" ({bare})" if not (_holds_credential(bare) or uri_credentials(bare)) else ""
    found = {
        storage.REMOTE_SCHEMES[s][0]
        for m in URI_USERINFO.finditer(value)
        if (s := m.group(1)[:-3].lower()) in storage.REMOTE_SCHEMES
    }
    keys = "; ".join(_STORE_KEYS[p] for p in sorted(found) if p in _STORE_KEYS) or "; ".join(
        f"{p}: {v}" for p, v in _STORE_KEYS.items()
    )
    return (
        f"{key} holds a URI with a user and password (not repeated here), and {key} is written into the rendered job "
        f"files and spec.json: give it without them{shown} and the store's keys in its own variables where you "
        f"launch ({keys}); the job gets those by name."
    )


def _holds_credential(text: str) -> bool:
    """Whether ``text`` holds a secret's value set here, a token's shape or a URI's password: never repeated."""
    return bool(secret_holders(text) or credential_in(text) or uri_credentials(text))


def credential_in(text: str) -> str | None:
    """What credential ``text`` holds by its shape (CREDENTIAL_VALUE), in words; None: none seen."""
    return next((what for what, shape in CREDENTIAL_VALUE.items() if shape.search(text)), None)


def looks_like_token(text: str) -> bool:
    """Whether ``text`` has the shape of a credential rather than a variable's name (TOKEN_RUN)."""
    return any(re.search(r"\d", run) and re.search(r"[A-Za-z]", run) for run in TOKEN_RUN.findall(text))


def secret_holders(value: str, secrets=(), environ: typing.Mapping[str, str] | None = None) -> list[str]:
    """The variables set in ``environ`` that hold a credential (is_secret_name: the run's ``secrets``, a store's, a
    name like one) whose value ``value`` is, or holds (one of a token's length, 16 characters or more):
    ``-o env=X=$WANDB_API_KEY``, the shell's expansion, would write it into the job's files. A flag's value (0,
    true, ...), a path (a key's file) or one of under 4 characters is nobody's secret."""
    environ = os.environ if environ is None else environ
    return sorted(
        name
        for name, secret in environ.items()
        if len(secret) >= 4
        and secret.strip().lower() not in FLAG_VALUES
        and not secret.startswith(("/", "~", "./"))
        and (secret == value or (len(secret) >= 16 and secret in value))
        and is_secret_name(name, secrets, secret)
    )


def is_secret_name(name: str, secrets=(), value: str | None = None) -> bool:
    """Whether environment variable ``name`` holds a credential: one of the run's ``secrets``, a store's
    (storage.SECRET_ENV), or a name like one (CREDENTIAL_NAME) whose ``value`` is not a flag's."""
    if name in secrets or name.upper() in storage.SECRET_ENV:
        return True
    return bool(CREDENTIAL_NAME.search(name)) and (value is None or value.strip().lower() not in FLAG_VALUES)


def report_integrations(value: str) -> list[str]:
    """report_to's integrations, none left out; FtctlError for a name ftctl does not know. The one check: spec
    validation says it before a job is paid for, the trainer asks here too (then that each one's package is
    installed)."""
    names = [v.strip() for v in value.split(",") if v.strip()]
    for name in names:
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
        if storage.is_remote(output) and re.fullmatch(re.escape(output.rstrip("/")) + r"/checkpoint-\d+/?", value):
            return None
        return (
            f"resume={value}: a checkpoint in object storage is resumed from the run's own output_dir "
            "(resume=OUTPUT/checkpoint-N, or resume=auto for its newest); another run's: `ftctl sync pull` it, "
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
        f"resume={value} is not auto, never or a checkpoint directory ({why}): pass a checkpoint-<step> directory, "
        "or resume=auto."
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

    also = {}
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


def not_a_key(word: str) -> str | None:
    """What `ftctl keys WORD` says of a FastChat, TRL or PEFT key that is not one here (DECIDED, MEANT); None else."""
    key = word.strip().replace("-", "_")
    if key in MEANT:
        return f"{key} is not a run key here. {MEANT[key]}"
    if key not in DECIDED:
        return None
    accepted = AGREES.get(key, ())
    if key == "fsdp":
        return (
            f"fsdp is not a run key: {DECIDED[key]}; FastChat's fsdp: 'full_shard auto_wrap' is read as strategy=fsdp."
        )
    taken = (
        " (a run file's may stay: any value is what ftctl does anyway)"
        if accepted is None
        else f" (a run file's {key}: {' or '.join(repr(v) for v in accepted)} may stay: ftctl does that anyway)"
        if accepted
        else ""
    )
    return f"{key} is not a run key: ftctl decides it; {DECIDED[key]}{taken}."


def _default_text(f: dataclasses.Field) -> str:
    value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    value = IMPLIED.get(f.name, value)
    return "(unset)" if value is None else json.dumps(value) if isinstance(value, (list, dict, bool)) else str(value)
