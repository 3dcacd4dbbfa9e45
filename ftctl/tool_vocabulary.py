"""Other tools' keys and what they mean here: FastChat's, TRL's, axolotl's and LLaMA-Factory's names of run keys
(ALIASES, NESTED), the keys ftctl decides itself and why (MEANT, DECIDED), the values of them that ask for what it does
anyway (AGREES, METHOD_AGREES), and the readers spec.build applies to a run file's keys in those tools' words (dtype
words, DeepSpeed configs, FastChat's --fsdp, TRL's eos_token, axolotl's W&B keys). What takes RunSpec's fields or
defaults stays in spec.py: other tools' defaults (VOCABULARY, TOOL_DEFAULTS), axolotl's TURNED keys."""

from __future__ import annotations

import json
import re
from pathlib import Path

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
    "adapter_name_or_path": "lora_model_dir",  # LLaMA-Factory's: the adapter a lora run trains on from
    "peft_use_dora": "use_dora",  # axolotl's
    "peft_use_rslora": "use_rslora",  # axolotl's
}
# Other tools' keys that are no run key, read beside one by spec.build: TRL's completion_only_loss (its loss switch for
# prompt-completion rows, beside assistant_only_loss, its conversations': spec._trl_loss)
READ_BESIDE = {"completion_only_loss": "assistant_only_loss"}
_TORCHRUN = "torchrun's: ftctl runs torchrun itself"
_ACCELERATE = "accelerate launch's (TRL's examples start sft.py with it): ftctl starts the processes itself"
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
    "test_datasets": "axolotl's test_datasets, [{path: ..., type: ...}] as datasets' entries, are read as "
    "eval_data_path (their paths, each row's format read from its fields); a path alone is eval_data_path: PATH.",
    "train_on_responses_only": "Unsloth's train_on_responses_only is what ftctl does by default (assistant_only_loss: "
    "true): the loss covers the assistant turns only, their end-of-turn token included; leave it out.",
    "use_gradient_checkpointing": "Unsloth's and PEFT's use_gradient_checkpointing is gradient_checkpointing here "
    "(true or false; left out, the plan turns it on where memory needs it).",
    "unfrozen_parameters": "axolotl's unfrozen_parameters (a full fine-tune of the parameters its patterns name) is not "
    "offered: --method sft trains the top trainable_layers blocks and the head, the rest frozen; --method fft every "
    "weight.",
    # LLaMA-Factory's (refused as unknown keys, or "Did you mean 'gradient_checkpointing'?" for its opposite)
    "train_on_prompt": "LLaMA-Factory's train_on_prompt is assistant_only_loss's opposite here: false (its default) is "
    "assistant_only_loss: true, ftctl's default (leave it out); true is assistant_only_loss: false (every token).",
    "mask_history": "LLaMA-Factory's mask_history (the last turn's answer alone trains) is not offered: every assistant "
    "turn of a conversation trains; to train the last one only, give each conversation's last answer as a "
    "prompt-completion row (prompt: the turns before it). Leave mask_history out (false: what ftctl does).",
    "neat_packing": "packing: true here keeps packed rows apart (their attention and positions), as LLaMA-Factory's "
    "neat_packing does: give packing: true (or leave both out: the plan packs where its attention keeps rows apart).",
    "disable_gradient_checkpointing": "LLaMA-Factory's disable_gradient_checkpointing: true is gradient_checkpointing: "
    "false here (left out, the plan turns checkpointing on where memory needs it).",
    "default_system": "Not offered: a system prompt is each row's own system turn (`ftctl data check FILE --show 1` "
    "shows a row as it trains); the chat template's default applies where a row has none.",
    "freeze_trainable_modules": "--method sft trains the top trainable_layers blocks (LLaMA-Factory's "
    "freeze_trainable_layers) and the output head, every module of them; leave freeze_trainable_modules out.",
    "additional_target": "lora and qlora train only the adapters (no modules_to_save); to train the head too use "
    "--method sft (the top trainable_layers blocks and the head) or fft.",
    # axolotl's
    "excess_length_strategy": "rows longer than model_max_length (axolotl's sequence_len) are cut to it; axolotl's "
    "default drops them (`ftctl data check FILE` counts the rows that are cut). Leave excess_length_strategy out.",
    "cosine_min_lr_ratio": "Not offered: the cosine schedule decays to 0 (lr_scheduler_type: cosine).",
    "save_safetensors": "Not a run key: checkpoints and the final model are written as safetensors; leave it out.",
    "rl": "ftctl trains supervised fine-tuning (SFT); axolotl's rl (DPO, KTO, ORPO, GRPO ...) is not offered: leave rl "
    "out to train SFT on the rows' answers.",
    "auto_find_batch_size": "The plan chooses the micro-batch that fits (ftctl plan shows it; -o "
    "per_device_train_batch_size=N forces one), and a run that runs out of memory ends naming the one that fits.",
    "rope_scaling": "Not a run key: the model trains with the RoPE its config.json sets. To extend its context, copy "
    'the model (hf download ORG/NAME --local-dir DIR), add rope_scaling to DIR/config.json ({"rope_type": '
    '"linear", "factor": 4.0} for 4x its max_position_embeddings; Qwen\'s YaRN: {"rope_type": "yarn", '
    '"factor": 4.0, "original_max_position_embeddings": 32768}) and give --model DIR -o model_max_length=N: the '
    "plan reads the context as max_position_embeddings x factor.",
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
    "master_port": _TORCHRUN
    + ", its rendezvous on the job's first node from -o rdzv_port (29500: a job's is 29501 + its number % 1000).",
    "master_addr": _TORCHRUN
    + ", its rendezvous on the job's first node from -o rdzv_port (29500: a job's is 29501 + its number % 1000).",
    # accelerate launch's, from TRL's example lines (accelerate launch --config_file multi_gpu.yaml sft.py ...)
    "num_processes": _ACCELERATE + ", one a GPU of --gpus (--gpus 8xA100: 8 a node).",
    "num_machines": _ACCELERATE + "; the nodes are --nodes N (or --gpus 2x8xH100).",
    "machine_rank": _ACCELERATE + "; each node's rank is the one Slurm or SkyPilot gives it.",
    "main_process_ip": _ACCELERATE
    + ", their rendezvous on the job's first node from -o rdzv_port (29500: a job's is 29501 + its number % 1000).",
    "main_process_port": _ACCELERATE
    + ", their rendezvous on the job's first node from -o rdzv_port (29500: a job's is 29501 + its number % 1000).",
    "config_file": _ACCELERATE + "; its config's strategy (multi_gpu, deepspeed_zero3, fsdp ...) is the plan's: -o "
    "strategy=NAME forces one (ddp, zero2, zero3, fsdp). ftctl's own run file is -c FILE.",
    "mixed_precision": _ACCELERATE + "; the precision is the plan's: -o bf16=true or -o fp16=true asks for one.",
    "multi_gpu": _ACCELERATE + "; several GPUs are --gpus (--gpus 8xA100).",
    # SkyPilot's task YAML keys (its task file given as a run file, or as -o): ftctl writes the task itself, and
    # the nearest spellings named other things (resources: resume, image_id: managed, file_mounts: idle_minutes)
    "resources": "SkyPilot's resources are flags here, and ftctl writes the task (ftctl render --backend sky prints "
    "it): accelerators --gpus A100:8, num_nodes --nodes N, use_spot --spot, infra --infra aws/us-east-1, image_id "
    "--container docker:REF, disk_size -o disk_size=GIB.",
    "accelerators": "SkyPilot's accelerators are --gpus here (--gpus A100:8, or 8xA100); more types to fail over to: "
    "-o also_gpus=A100-80GB.",
    "image_id": "SkyPilot's image_id is --container docker:REF here.",
    "instance_type": "Not offered: --gpus names the GPUs, and SkyPilot's optimizer takes the cheapest instance with "
    "them (ftctl plan --backend sky names it).",
    "file_mounts": "Local inputs ship with the task by themselves (--data, --eval-data, a --model directory, "
    "chat_template_path); an object store's are read from it (--data s3://...), and the output goes to one "
    "(--output s3://...).",
    "workdir": "ftctl ships its own source as the task's workdir; your data and model are --data and --model (local "
    "ones ship with the task).",
    "job_recovery": "--spot (or --managed) makes a managed job with SkyPilot's job_recovery; -o max_requeues=N bounds "
    "its restarts after the job's own failures.",
    "run": "ftctl runs the trainer itself, torchrun on every node (ftctl render --backend sky prints the task); what "
    "runs before it is -o setup=LINE.",
    "any_of": "With --spot, -o on_demand_fallback=true asks for spot or on-demand instances; -o also_gpus=TYPE adds "
    "GPU types.",
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
    "a run trains new adapters over --model; an adapter's weights start a run's adapters with -o lora_model_dir=RUN "
    "(axolotl's name; a fresh optimizer and schedule), or train on from its run's checkpoint (--model BASE -o "
    "resume=RUN/checkpoint-N --output NEW: its optimizer and schedule go on too); new adapters over it train on its "
    "merge (ftctl merge RUN, then --model RUN/merged)"
)
# axolotl's kernel switches (Liger's, its LoRA layers', Apple's cut cross-entropy): each computes what the trainer
# computes without it, faster; ftctl runs its own (Liger's where installed, its LM head's, its LoRA adapters')
AXOLOTL_KERNELS = (
    *("liger_rms_norm", "liger_glu_activation", "liger_layer_norm", "liger_rope", "liger_cross_entropy"),
    *("liger_fused_linear_cross_entropy", "liger_rms_norm_gated", "lora_mlp_kernel", "lora_qkv_kernel"),
    *("lora_o_kernel", "cut_cross_entropy"),
)
_KERNELS = (
    "the trainer's kernels are ftctl's (Liger's where installed, its LM head's, its LoRA adapters'), the same math as "
    "axolotl's kernel switches"
)
# axolotl's plugins that only swap kernels (the same loss, faster): a plugins list of these alone is taken
SPEED_PLUGINS = (
    "axolotl.integrations.cut_cross_entropy.CutCrossEntropyPlugin",
    "axolotl.integrations.liger.LigerPlugin",
)
DECIDED = {
    "fsdp": _STRATEGY,
    "fsdp_config": f"{_STRATEGY}; axolotl's fsdp_config (fsdp_version: 2, full sharding, no CPU offload) is read "
    "as strategy=fsdp (FSDP2)",
    "fsdp_version": f"{_STRATEGY}; axolotl's fsdp_version: 2 (with its fsdp_config) is read as strategy=fsdp (FSDP2)",
    "eot_tokens": "each turn ends as the model's chat template ends it; axolotl's eot_tokens is taken where that "
    "template writes each of them (chat_template_path for another template)",
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
    "load_in_8bit": "8-bit LoRA is not offered: --method qlora (axolotl's adapter: qlora with load_in_4bit: true) "
    "trains adapters over a 4-bit base, lora over a 16-bit one; drop load_in_8bit and give one of those",
    "use_liger_kernel": "Liger's kernels run where they are installed (ftctl doctor, and the run's log, say so)",
    # axolotl's kernel switches and plugins (its example files set them): the same math, faster; ftctl chooses its own
    **dict.fromkeys(AXOLOTL_KERNELS, _KERNELS),
    "plugins": _KERNELS
    + "; of axolotl's plugins, "
    + " and ".join(p.rsplit(".", 1)[1] for p in SPEED_PLUGINS)
    + " may stay (another changes what trains, or logs elsewhere: leave it out)",
    "push_to_hub": "ftctl merge RUN writes a plain model directory; upload it with `hf upload`",
    "use_peft": "--method lora (or qlora, over a 4-bit base) trains PEFT adapters; fft and sft train the weights",
    "torch_dtype": "the planner chooses the precision (bf16, fp16 on GPUs without it, fp32 on CPU) and the dtype the "
    "weights load in; bfloat16 or float16 here asks for one, as -o bf16=true or -o fp16=true does",
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
    "group_by_length": "batches are drawn at random, not grouped by length (packing fills them instead)",
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
    "chat_template": "ftctl trains with the model's own chat template (axolotl's tokenizer_default); a named one is "
    "taken where the model's own is that format (chatml over Qwen2.5's), else give chat_template_path: a Jinja file "
    "or a model whose template it is (Qwen/Qwen2.5-0.5B-Instruct for chatml)",
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
    "lora_bias": "lora and qlora train the adapters alone, no bias terms (FastChat's lora_bias: none)",
    "lora_weight_path": _ADAPTER_DIR,  # FastChat's train_lora.py (declared there, never read)
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
    "overwrite_output_dir": "ftctl never writes a run over an earlier one's checkpoints: a relaunch into the same "
    "--output resumes its run (resume=auto; resume=never there is refused), a new run goes to another --output",
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
    "template": "ftctl trains with the model's own chat template (FastChat's Vicuna v1.1 where it has none); "
    "LLaMA-Factory's template: NAME is taken where the model's own is that format (llama3 over Llama 3 Instruct's), "
    "else give chat_template_path: a Jinja file or a model whose template it is (meta-llama/Meta-Llama-3-8B-Instruct "
    "for llama3)",
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
    "dataset_format": "each row's format is read from its fields (messages, conversations, instruction/input/output, "
    "prompt/completion, text: `ftctl data check FILE` shows how each row reads); qlora.py's input-output rows are "
    "prompt/completion here",
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
LEFT_OUT = ("loss_watchdog_threshold", "loss_watchdog_patience", "group_by_length", "do_mmlu_eval")
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
    "group_by_length": None,  # (true: LEFT_OUT; qlora.py's default)
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
    "lora_bias": ("none",),  # FastChat's
    "lora_weight_path": (),
    "auto_resume_from_checkpoints": ("true",),  # axolotl's
    "chat_template": ("tokenizer_default",),  # axolotl's (a dataset entry's: AXOLOTL_DATASET_KEYS)
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
    "overwrite_output_dir": ("false", "true"),  # true: not done, with a note (build)
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
    "do_mmlu_eval": None,  # (true: LEFT_OUT)
    "dataset_format": None,  # qlora.py's
    "max_new_tokens": None,
    "max_memory_MB": None,
    "use_flash_attention_2": ("true",),
    "hub_model_id": (),  # axolotl pushes to it (push_to_hub is TRL's): any value refused, not dropped unsaid
    "hub_strategy": None,
    "log_level": None,
    "use_cache": None,
    "low_cpu_mem_usage": None,
    "skip_prepare_dataset": ("false",),
    "add_special_tokens": ("true",),  # TRL's default
    "append_concat_token": ("true",),  # TRL's default
    **dict.fromkeys(AXOLOTL_KERNELS),  # (any value: the same math)
    "plugins": (),  # (SPEED_PLUGINS alone: value_agrees)
}  # and any DECIDED key left empty (YAML's null, as axolotl's example files write them): it asks for nothing
# DECIDED keys whose value agrees with some methods only (TRL's QLoRA recipe: use_peft, load_in_4bit ...): accepted
# with a note where the run's method is one of them, refused as above where it is not
ADAPTER_METHODS, _WEIGHTS, _QLORA = ("lora", "qlora"), ("fft", "sft"), ("qlora",)
METHOD_AGREES = {
    "use_peft": {"true": ADAPTER_METHODS, "false": _WEIGHTS},
    "load_in_4bit": {"true": _QLORA, "false": (*_WEIGHTS, "lora")},
    "load_in_8bit": {"false": (*_WEIGHTS, *ADAPTER_METHODS)},
    "bnb_4bit_quant_type": {"nf4": _QLORA},
    "use_bnb_nested_quant": {"true": _QLORA},
    "bnb_4bit_use_double_quant": {"true": _QLORA},
    "bnb_4bit_compute_dtype": {"bf16": _QLORA, "fp16": _QLORA},  # (as dtype_precision spells them)
    "q_lora": {"true": _QLORA, "false": ("lora",)},  # FastChat's train_lora.py
    "finetuning_type": {"lora": ADAPTER_METHODS, "full": ("fft",), "freeze": ("sft",)},  # LLaMA-Factory's
    "quantization_bit": {"4": _QLORA},
    "bits": {"4": _QLORA, "16": (*_WEIGHTS, "lora")},  # qlora.py's
    "double_quant": {"true": _QLORA},
    "quant_type": {"nf4": _QLORA},
    "full_finetune": {"true": ("fft",), "false": ADAPTER_METHODS},
}
# LLaMA-Factory's LoRA defaults (its lora_alpha: twice lora_r), taken where a file with its finetuning_type leaves them
LLAMA_FACTORY_LORA = {"lora_r": 8, "lora_dropout": 0.0}
# METHOD_AGREES values that do not choose the method where none is given (they are refused, saying which to give):
# LLaMA-Factory's freeze trains the top blocks alone, sft the output head too
NOT_CHOSEN = {("finetuning_type", "freeze")}
# The dtype keys of from_pretrained (TRL's model_init_kwargs), transformers 5 and bitsandbytes' BitsAndBytesConfig, as
# notebooks and recipes write them (torch.bfloat16, "float16", bf16): a 16-bit one asks for that precision, as
# -o bf16=true / -o fp16=true do, which the plan takes where the GPUs have it and says where not (a T4 trains in fp16,
# a CPU in fp32). Any other value is DECIDED's refusal.
DTYPE_KEYS = ("torch_dtype", "dtype", "bnb_4bit_compute_dtype")
DTYPE_WORDS = {"bfloat16": "bf16", "bf16": "bf16", "float16": "fp16", "fp16": "fp16", "half": "fp16"}


def dtype_precision(raw) -> str | None:
    """bf16 or fp16 for a 16-bit dtype as torch, transformers and bitsandbytes spell it; None for any other."""
    return DTYPE_WORDS.get(config_word(raw).removeprefix("torch."))


def precision_asked(asked: dict, values: dict, sources: dict, notes: list | None) -> list[str]:
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


def config_text(value) -> str:
    """A YAML or Python value as a shell would take it: true/false in lower case, null empty."""
    return "" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


#: values YAML text someone wrote may expand to, its aliases followed (yaml_values): a run file's are a few hundred.
#: Nine aliases nested nine times made 9**9 (387 million) out of 400 bytes, which a safe loader builds shared, and
#: `ftctl plan` then ran for minutes writing that value into an error (a 'billion laughs')
YAML_VALUES_MAX = 100_000


def yaml_values(node, memo: dict) -> int:
    """How many values the YAML ``node`` holds with its aliases expanded, each alias's node counted where it is used
    (``memo``: by the node's id; a recursive one counts once)."""
    if node is None:
        return 0
    if id(node) in memo:
        return memo[id(node)]
    memo[id(node)] = 1
    children = node.value if isinstance(node.value, list) else []
    n = 1 + sum(
        sum(yaml_values(c, memo) for c in child) if isinstance(child, tuple) else yaml_values(child, memo)
        for child in children
    )
    memo[id(node)] = n
    return n


def yaml_value(text: str):
    """A value written as YAML (or JSON) text by someone else (a dict's in a -o, a run file's or another tool's
    config's string, a dataset card's header), read as spec.load_yaml reads a run file: ValueError where its aliases
    expand past YAML_VALUES_MAX or it nests too deep to read; yaml.YAMLError where it is no YAML."""
    import yaml

    try:
        if (values := yaml_values(yaml.compose(text, Loader=yaml.SafeLoader), {})) > YAML_VALUES_MAX:
            raise ValueError(f"its aliases (*NAME) expand to {values:,} values, over {YAML_VALUES_MAX:,}: write it out")
        return yaml.safe_load(text)
    except RecursionError:
        raise ValueError("it nests too deep for YAML to read (thousands of [ or { levels)") from None


def value_agrees(key: str, raw) -> bool:
    accepted = AGREES.get(key, ())
    if key == "special_tokens" and isinstance(raw, dict) and set(raw) <= {"pad_token"}:
        return True  # axolotl's pad_token alone (its Llama 3 examples): padding carries no loss
    if key == "plugins" and isinstance(raw, list) and raw:
        return all(str(p).strip() in SPEED_PLUGINS for p in raw)  # axolotl's kernel plugins alone: the same math
    if isinstance(raw, str) and raw.strip().startswith("{"):  # a mapping as HF's argparse takes it: JSON text
        import yaml

        try:
            raw = yaml_value(raw)
        except (ValueError, yaml.YAMLError):  # (aliases past YAML_VALUES_MAX: the text, which agrees with nothing)
            pass
    return raw is None or raw == "" or accepted is None or config_word(raw) in accepted


def method_meant(given: dict[str, tuple[str, str]]) -> str | None:
    """The method METHOD_AGREES keys as given ask for together (use_peft: true and load_in_4bit: true: qlora; TRL
    without use_peft: fft), None where they ask for none or none was given."""
    allowed = None
    for key, word in given.values():
        if (key, word) in NOT_CHOSEN:
            continue
        methods = METHOD_AGREES[key][word]
        allowed = [m for m in (methods if allowed is None else allowed) if m in methods]
    return allowed[0] if allowed else None


def config_word(raw) -> str:
    """A value as AGREES lists it: YAML's unquoted no is False, "false" here."""
    return str(raw).lower() if isinstance(raw, bool) else str(raw).strip().lower()


# FastChat's DeepSpeed configs (playground/, which its README's commands pass), by name: their names say the stage
# only (s2, s3), their zero_optimization offloads to CPU (s2 the optimizer, s3 the weights too; the lora_ ones of
# its earlier versions the same)
FASTCHAT_DEEPSPEED = {
    "deepspeed_config_s2.json": "zero2_offload",
    "deepspeed_config_s3.json": "zero3_offload",
    "deepspeed_config_lora_s2.json": "zero2_offload",
    "deepspeed_config_lora_s3.json": "zero3_offload",
}


def deepspeed_strategy(raw) -> tuple[str, str] | None:
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


def eos_token_problem(spec, name: str, token: str, notes=None) -> str | None:
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


# axolotl's dataset types that write no prompt of their own: the chat template's (chat_template, chat_template.*),
# plain text (completion, pretrain) and template-free segments (input_output)
_PROMPTLESS_TYPES = ("chat_template", "completion", "pretrain", "input_output")


def untemplated_types_note(spec, typed: dict[str, str]) -> str | None:
    """axolotl's dataset types that write their own prompt (alpaca's ### Instruction: ... ### Response:), ``typed``
    (each dataset's path -> its type), over a model whose tokenizer files here have no chat template and no
    chat_template_path: its rows train in FastChat's Vicuna v1.1 format (the trainer's, trainer/masks.py), which only
    `ftctl data check` showed; the launch says it. None where the template is given or read, or not readable here."""
    typed = {p: t for p, t in typed.items() if t.partition(".")[0] not in _PROMPTLESS_TYPES}
    if not typed or spec.chat_template_path:
        return None
    files = _tokenizer_files(spec.model_name_or_path)
    if not files or files[0]:
        return None
    types = ", ".join(f"{p}'s type: {t}" for p, t in typed.items())
    alpaca = " (alpaca's ### Instruction: ... ### Response:)" * any(t.startswith("alpaca") for t in typed.values())
    return (
        f"datasets: {types}: {spec.model_name_or_path} has no chat template, so these rows train in FastChat's Vicuna "
        f"v1.1 format (USER: ... ASSISTANT: ...), not in the prompt axolotl writes for the type{alpaca}; to train in "
        "that, give chat_template_path: a Jinja file that writes it (`ftctl data check -c FILE --show 1` shows a row "
        "as it trains)"
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


def is_fsdp_full_shard(raw) -> bool:
    """FastChat's --fsdp "full_shard auto_wrap": the FSDP full sharding ftctl runs as strategy=fsdp (FSDP2's
    fully_shard). Its other modes (offload, shard_grad_op, hybrid) are refused as DECIDED says."""
    words = " ".join(map(str, raw) if isinstance(raw, list) else [str(raw)]).lower().split()  # axolotl's: a list
    return "full_shard" in words and set(words) <= {"full_shard", "auto_wrap"}


def canonical_key(key: str) -> str:
    """The run key a name means: model -> model_name_or_path, --max-seq-length -> model_max_length,
    model_init_kwargs.revision -> model_revision (NESTED; one it does not read stays as it is)."""
    k = key.strip().replace("-", "_")
    outer, dot, inner = k.partition(".")
    if dot and outer in NESTED:
        return NESTED[outer].get(inner, k)
    return ALIASES.get(k, k)


def nested_kwargs_flattened(items):
    """TRL's model_init_kwargs and dataset_kwargs (a mapping, or its JSON/YAML text from -o) as one key each:
    model_init_kwargs.torch_dtype ... Left empty they ask for nothing; another value is left to be refused."""
    import yaml

    for key, value in items:
        if canonical_key(key) not in NESTED:
            yield key, value
            continue
        if isinstance(value, str) and value.strip().startswith("{"):
            try:
                value = yaml_value(value)
            except (ValueError, yaml.YAMLError):  # (aliases past YAML_VALUES_MAX: the text, read as no mapping)
                pass
        if isinstance(value, dict):
            yield from ((f"{canonical_key(key)}.{k}", v) for k, v in value.items())
        elif value not in (None, ""):
            yield key, value


# axolotl's W&B keys, given a value: what they ask for is report_to=wandb with W&B's own variables set
WANDB_ENV = {
    **{"wandb_project": "WANDB_PROJECT", "wandb_entity": "WANDB_ENTITY", "wandb_name": "WANDB_NAME"},
    **{"wandb_run_id": "WANDB_RUN_ID", "wandb_watch": "WANDB_WATCH", "wandb_log_model": "WANDB_LOG_MODEL"},
}


def wandb_as_report_to(items, source: str, notes=None) -> list:
    """A layer's axolotl W&B keys with values as report_to: wandb (where the layer names no report_to) and env (their
    variables), noted; empty ones stay (they ask for nothing)."""
    given = [(k, v) for k, v in items if k.strip() in WANDB_ENV and v not in (None, "")]
    if not given:
        return list(items)
    env = {WANDB_ENV[k.strip()]: config_text(v) for k, v in given}
    turned = [("env", env)] + [("report_to", "wandb")] * all(canonical_key(k) != "report_to" for k, _ in items)
    notes is None or notes.append(
        f"{', '.join(k for k, _ in given)} ({source}): report_to=wandb, and "
        f"{' '.join(f'{n}={v}' for n, v in env.items())} in the job's environment (W&B's key: export WANDB_API_KEY; "
        "ftctl passes it by name)"
    )
    return [(k, v) for k, v in items if (k, v) not in given] + turned


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


# Named chat templates (axolotl's chat_template, LLaMA-Factory's template) and the text only their format writes: a
# name is taken where the model's own template (or chat_template_path's) writes it, as that is the template ftctl
# trains with. Not a library of templates: their text is the model's. (A mark of several strings: each of them.)
CHAT_FORMATS = {
    "ChatML (<|im_start|>role ... <|im_end|>)": (
        "<|im_start|>",
        ("chatml", "qwen", "qwen_25", "qwen2", "qwen3", "qwen3_nothink", "qwen3_5"),
    ),
    "Llama 3's (<|start_header_id|>role<|end_header_id|> ... <|eot_id|>)": ("<|start_header_id|>", ("llama3",)),
    "Llama 4's (<|header_start|>role<|header_end|> ... <|eot|>)": ("<|header_start|>", ("llama4",)),
    "Gemma's (<start_of_turn>role ... <end_of_turn>)": ("<start_of_turn>", ("gemma", "gemma2", "gemma3", "gemma3n")),
    "Mistral's and Llama 2's ([INST] ... [/INST])": (
        "[INST]",
        ("llama2", "mistral", "mistral_v1", "mistral_v2v3", "mistral_v3_tekken", "mistral_v7_tekken"),
    ),
    "Phi-3's (<|user|> ... <|end|>)": (("<|user|>", "<|end|>"), ("phi_3", "phi_35")),  # (gpt-oss's ends with <|end|>)
    "Cohere's (<|START_OF_TURN_TOKEN|>)": ("<|START_OF_TURN_TOKEN|>", ("cohere",)),
}


def named_format(word: str) -> str | None:
    """The format (CHAT_FORMATS' key) of a template named by axolotl's or LLaMA-Factory's name, None for one not
    known here."""
    return next((format_ for format_, (_, words) in CHAT_FORMATS.items() if word.strip().lower() in words), None)


def _writes(text: str | None, mark: str | tuple[str, ...]) -> bool:
    """Whether a chat template's text writes CHAT_FORMATS' mark (each of its strings)."""
    return bool(text) and all(m in text for m in ((mark,) if isinstance(mark, str) else mark))


def _template_format(text: str | None) -> str:
    """What a chat template's text is, by CHAT_FORMATS' marks: 'ChatML (...)', or what is known of it."""
    if not text:
        return "none (ftctl then trains in FastChat's Vicuna v1.1 format, USER: ... ASSISTANT: ...)"
    for format_, (mark, _) in CHAT_FORMATS.items():
        if _writes(text, mark):
            return format_
    return "of a format ftctl does not name"


def named_template_problem(spec, name: str, word: str, notes=None) -> str | None:
    """axolotl's chat_template: NAME or LLaMA-Factory's template: NAME (``name``: the key, its value and layer as
    said; ``word``: the name) where ftctl trains with the model's own chat template (or chat_template_path's): taken,
    noted, where that template is the named one's format (it writes CHAT_FORMATS' mark); else why not (None where
    taken). Read as eos_token_problem reads them: the tokenizer's files on this machine."""
    model, named = spec.model_name_or_path, spec.chat_template_path
    whose = f"chat_template_path {named}'s" if named else f"{model}'s"
    read = _tokenizer_files(named or model)
    mark = next((m for m, words in CHAT_FORMATS.values() if word.lower() in words), None)
    instead = (
        f"leave it out to train with {whose} own template, or give chat_template_path: a Jinja file of the "
        f"{word} template (or a model directory or hub id whose template it is)"
    )
    if read is None:
        return (
            f"{name}: ftctl trains with the model's own chat template, and {model}'s is not on this machine to compare "
            f"with {word}'s (no model directory, not in the Hugging Face cache): download its tokenizer (hf download "
            f"{model} --include 'tokenizer*' --include 'chat_template*') and run this again, or {instead}."
        )
    if mark and _writes(read[0], mark):
        notes is None or notes.append(
            f"{name}: taken: {whose} own chat template, which ftctl trains with, is {word}'s format "
            f"({_template_format(read[0])}); `ftctl data check -c FILE --show 1` shows a row as it trains"
        )
        return None
    known = "" if mark else f" (ftctl does not know {word}'s format to compare it with)"
    return (
        f"{name}: ftctl trains with {whose} own chat template, which is {_template_format(read[0])}, not {word}'s"
        f"{known}: {instead}."
    )


def eot_tokens_problem(spec, name: str, tokens: list[str], notes=None) -> str | None:
    """axolotl's eot_tokens (the tokens that end a turn, whose assistant ones it trains: train_on_eot's default) where
    ftctl ends each turn as the chat template does and trains an assistant turn's end with it: taken, noted, where
    the template (chat_template_path's, else the model's) writes each of them; else why not (None where taken)."""
    model, named = spec.model_name_or_path, spec.chat_template_path
    whose = f"chat_template_path {named}'s" if named else f"{model}'s"
    read = _tokenizer_files(named or model)
    listed = ", ".join(repr(t) for t in tokens)
    if read is None:
        return (
            f"{name}: {listed} is taken only where the chat template ends turns with it, and {model}'s is not on this "
            f"machine to read: download its tokenizer (hf download {model} --include 'tokenizer*' --include "
            "'chat_template*') and run this again, or leave eot_tokens out (each turn ends as the template ends it)."
        )
    if read[0] and all(t in read[0] for t in tokens):
        notes is None or notes.append(
            f"{name}: taken: {whose} chat template ends turns with {listed} already, and each assistant turn trains "
            "with its end (axolotl's train_on_eot: turn)"
        )
        return None
    missing = ", ".join(repr(t) for t in tokens if not read[0] or t not in read[0])
    return (
        f"{name}: {whose} chat template, {_template_format(read[0])}, never writes {missing}, so no turn would end "
        "with it: ftctl ends each turn as the template does. Leave eot_tokens out, or give chat_template_path: a "
        "template whose turns end with it."
    )


# axolotl's fsdp_config settings (FSDP1's fsdp_ names too) that ask for what ftctl's FSDP2 (strategy=fsdp) does anyway,
# by value (None: any value; how it decides them is the note's)
FSDP_AGREES = {
    "version": ("1", "2"),  # (1: FSDP1, whose full sharding FSDP2 does)
    "sharding_strategy": ("full_shard", "1"),
    "reshard_after_forward": ("true",),
    "offload_params": ("false",),
    "cpu_offload_pin_memory": None,
    "auto_wrap_policy": None,
    "transformer_layer_cls_to_wrap": None,
    "state_dict_type": None,
    "cpu_ram_efficient_loading": None,
    "sync_module_states": None,
    "use_orig_params": None,
    "limit_all_gathers": None,
    "backward_prefetch": None,
    "forward_prefetch": None,
    "activation_checkpointing": None,
    "final_state_dict_type": None,
}
_FSDP_INSTEAD = {
    "sharding_strategy": "ftctl's FSDP2 shards weights, gradients and optimizer state over every GPU "
    "(FULL_SHARD); SHARD_GRAD_OP is -o strategy=zero2 (gradients and optimizer state only), NO_SHARD is -o "
    "strategy=ddp, HYBRID_SHARD is not offered: drop fsdp_config and give one of those",
    "reshard_after_forward": "ftctl's FSDP2 reshards after each forward (full sharding); weights kept whole until the "
    "backward is ZeRO-2's sharding: drop fsdp_config and give -o strategy=zero2, or set it true",
    "offload_params": "FSDP2's CPU offload is not offered; DeepSpeed's is: drop fsdp_config and give -o "
    "strategy=zero3_offload (weights and optimizer state on the CPU), or set offload_params: false",
    "version": "ftctl runs FSDP2 (fsdp_version: 2); give 2, or drop it",
    "fsdp": "ftctl's FSDP2 is full_shard (with auto_wrap); offload is -o strategy=zero3_offload, shard_grad_op "
    "-o strategy=zero2: drop fsdp and fsdp_config and give one of those",
}


def axolotl_fsdp_merged(items) -> list:
    """A layer's axolotl FSDP keys (fsdp_config, fsdp_version, and fsdp's list beside them) as one item,
    fsdp_config: {setting: value}, its FSDP1 names without their fsdp_ (read by fsdp_config_read); as they are where
    neither fsdp_config nor fsdp_version is given."""
    items = list(items)
    if not any(k.strip() in ("fsdp_config", "fsdp_version") and v not in (None, "", {}) for k, v in items):
        return items
    merged: dict = {}
    for key, value in items:
        if key.strip() == "fsdp_config" and isinstance(value, dict):
            merged.update({str(k).removeprefix("fsdp_"): v for k, v in value.items()})
        elif key.strip() == "fsdp_config" and value not in (None, ""):
            merged["fsdp_config"] = value  # no mapping: refused by fsdp_config_read
        elif key.strip() == "fsdp_version" and value is not None:
            merged["version"] = value
        elif key.strip() == "fsdp" and value not in (None, ""):
            merged["fsdp"] = value
    return [(k, v) for k, v in items if k.strip() not in ("fsdp", "fsdp_config", "fsdp_version")] + [
        ("fsdp_config", merged)
    ]


def fsdp_config_read(config: dict) -> list[str]:
    """axolotl's FSDP settings (axolotl_fsdp_merged's) as strategy=fsdp: the settings ftctl decides itself, to note;
    ValueError saying what to write for one that asks for what it does not do."""
    refused, decided = [], []
    for key, value in config.items():
        word = config_word(value)
        if key == "fsdp":
            if not is_fsdp_full_shard(value):
                refused.append(f"fsdp: {config_text(value)}: {_FSDP_INSTEAD['fsdp']}")
        elif key not in FSDP_AGREES:
            refused.append(
                f"{key}: {config_text(value)} is no FSDP setting ftctl reads (it runs FSDP2 with each decoder layer "
                f"sharded; it reads {', '.join(FSDP_AGREES)}): drop it"
            )
        elif FSDP_AGREES[key] is not None and value is not None and word not in FSDP_AGREES[key]:
            refused.append(f"{key}: {config_text(value)}: {_FSDP_INSTEAD[key]}")
        elif FSDP_AGREES[key] is None and value is not None:
            decided.append(key)
    if refused:
        raise ValueError("; ".join(refused))
    return decided


# module names that are no layer PEFT's all-linear trains: the output head (left out by it) and the embeddings
_NOT_LINEAR = ("lm_head", "embed_tokens", "wte", "wpe", "tok_embeddings", "word_embeddings", "embed_in", "embed_out")


def linear_with_named(items, source: str, notes=None) -> list:
    """A layer's axolotl lora_target_linear: true beside lora_target_modules as axolotl takes them: every linear layer
    and the named ones with them, which is all-linear where each named one is a linear layer (q_proj ...): the named
    list is dropped, noted. FtctlError where one is the head or an embedding, which all-linear leaves out."""
    from ftctl.errors import FtctlError

    items = list(items)
    linear = [v for k, v in items if k.strip() == "lora_target_linear"]
    named = [
        (k, v) for k, v in items if k.strip() != "lora_target_linear" and canonical_key(k) == "lora_target_modules"
    ]
    if not linear or not named or config_word(linear[-1]) not in ("true", "1", "yes"):
        return items
    key, value = named[-1]
    names = [str(n).strip() for n in (value if isinstance(value, list) else str(value).split(",")) if str(n).strip()]
    if outside := [n for n in names if n.rsplit(".", 1)[-1] in _NOT_LINEAR]:
        raise FtctlError(
            f"lora_target_linear: true and {key}: {', '.join(outside)} ({source}): axolotl adds those to every linear "
            "layer, and ftctl's all-linear (PEFT's) leaves out the output head and the embeddings: drop "
            f"lora_target_linear and name every module in {key} ([q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, "
            f"down_proj, {', '.join(outside)}]), or drop {', '.join(outside)}."
        )
    notes is None or notes.append(
        f"lora_target_linear: true and {key}: {', '.join(names) or 'none'} ({source}): all-linear, as axolotl takes "
        "them together (every linear layer, which the named ones are among)"
    )
    return [(k, v) for k, v in items if (k, v) not in named]
