"""Quiet by default: known-harmless third-party messages are lowered to debug in ftctl's own processes.

:func:`install` runs first thing in every entry point (the CLI group, ``python -m ftctl.trainer``, the
demo, merge). It imports nothing heavy, so it runs before torch, transformers, bitsandbytes or
DeepSpeed are imported (several of them log at import time), and its environment defaults reach the
trainer processes torchrun starts.

- Log records: each entry of :data:`HARMLESS_LOGS` names the logger that emits the message and a
  pattern of it; a match below ERROR becomes a DEBUG record, shown only where debug logging is on.
  Nothing else is touched: an unknown message, and every error, still prints.
- Warnings: :data:`HARMLESS_WARNINGS`, what ftctl's use of TRL and FlashAttention 4 triggers and a user can
  do nothing about.
- Progress bars: hub downloads, weight loading, GGUF conversion, dataset maps (tqdm). ftctl prints
  its own progress line on rank 0.

``ftctl -v`` or ``FTCTL_VERBOSE=1`` shows everything: nothing is installed and the variable is passed
on to the processes ftctl starts. A variable the user set (``TQDM_DISABLE=0``) is never overridden.

Also here, verbose or not, as it must come before those imports too: ``LOCAL_KERNELS``, which keeps the optional kernels
libraries would fetch from the Hub unasked off the network (:func:`ftctl.envvars.no_unasked_kernels`).
"""

from __future__ import annotations

import logging
import os
import re
import warnings

from ftctl.envvars import VERBOSE_ENV, no_unasked_kernels

# (logger name, message pattern, why it is harmless)
HARMLESS_LOGS = (
    (
        "aiobotocore.credentials",
        r"^Found credentials in ",
        "s3fs names where it found the store's credentials, at INFO on rank 0 at each new connection (twice a run "
        "into S3); a store that refuses them is ftctl's own error line",
    ),
    (
        "bitsandbytes.backends.cpu.ops",
        r"Failed to load CPU gemm_4bit_forward",
        "an optional faster CPU kernel (the `kernels` package), which ftctl keeps off the Hub (envvars.UNASKED_KERNELS) "
        "or which is not installed; bitsandbytes uses its own",
    ),
    (
        "kernels._internals.hf_hub",
        r"^Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes' because",
        "bitsandbytes looks for that optional CPU kernel on the Hub at import (on CPUs with AVX512-BF16, every rank; "
        "transformers >= 5.25 installs `kernels`); offline it is not in the cache, and bitsandbytes uses its own",
    ),
    (
        "liger_kernel.backends.registry",
        r"Backend impl '[\w.]+' for op '\w+' could not be imported",
        "Liger's optional backends (CuTe DSL, Ascend), logged by every rank of every GPU run; its Triton kernels run",
    ),
    (
        "transformers.tokenization_utils_base",
        r"Token indices sequence length is longer than the specified maximum sequence length",
        "ftctl truncates rows itself, to model_max_length, and warns where that is over the model's context",
    ),
    (
        "datasets",
        r"^(JAX|PyTorch|TensorFlow|Polars) version \S+ available",
        "`datasets` names each framework it finds at import, at INFO, which the trainer logs on rank 0",
    ),
    (
        "liger_kernel.transformers.monkey_patch",
        r"^Applying Liger kernels to model instance",
        "the trainer's own start line says whether Liger's kernels run (attention: ...; Liger kernels: on)",
    ),
    (
        "transformers.trainer_callback",
        r"^Using EarlyStoppingCallback without load_best_model_at_end=True",
        "ftctl keeps the lowest held-out loss's checkpoint and says which when it stops (early_stopping_patience)",
    ),
    (
        "transformers.trainer_utils",
        r"^Warning: The following arguments do not match the ones in the `trainer_state.json`",
        "a relaunch with other settings: the trainer's own line says what changed and what it does with each "
        "(checkpoints.settings)",
    ),
    (
        "transformers.trainer_utils",
        r"^mtime may not be reliable on this filesystem",
        "checkpoints saved within a second of each other (short runs): they are ordered by step, as ftctl wants",
    ),
    (
        "transformers.trainer",
        r"^There were missing keys in the checkpoint model loaded: \['lm_head\.weight'\]\.$",
        "a model whose output head is its embeddings (tie_word_embeddings: SmolLM2, Llama 3.2 1B/3B, Gemma) saves "
        "them once, and the resumed model shares them again: its first loss is the one the run would have had",
    ),
    (
        "DeepSpeed",
        r"Setting accelerator to CPU",
        "printed when DeepSpeed is imported on a machine without GPUs, where ftctl plans CPU runs",
    ),
)
# (category, message pattern): warnings ftctl's own calls trigger inside libraries
HARMLESS_WARNINGS = (
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated"),  # TRL reads the old name
    # and PEFT's prepare_model_for_kbit_training (fp16 qlora) calls it, as does ftctl's own qlora (transformers < 6)
    (FutureWarning, r"`gradient_checkpointing_enable` is deprecated"),
    # qlora on CPU: the plan's note says so already (paged optimizers fall back to plain ones)
    (UserWarning, r"Paged optimizers are not supported on CPU"),
    # FlashAttention 4 (4.0.0b36) passes an argument its CuTe DSL cannot type at each kernel's compile; the
    # kernels compile and run (bench/results/2026-12-01-h200-attention-probe-v34.json)
    (UserWarning, r"Argument aux_data \(position \d+\) cannot be converted to a JitArgument"),
    # a mixture of experts' LoRA (ftctl's, methods.lora_config, or PEFT's own map of transformers 4's names): PEFT
    # applies the fused gate_up's rank and alpha (2r), then says it ignored them; another pattern is still said
    *(
        (
            RuntimeWarning,
            rf"The following {k}_pattern keys did not match any targeted module and were ignored: "
            r"\['\.\*\\\\\.(experts\\\\\.)?gate_up_proj'\]",
        )
        for k in ("rank", "alpha")
    ),
)
# environment defaults, also for the trainer processes: no third-party progress bars
QUIET_ENV = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # hub downloads, "Loading weights", "Writing model shards"
    "TQDM_DISABLE": "1",  # plain tqdm bars: GGUF conversion, dataset maps
}

_installed = False


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def install(verbose_flag: bool = False) -> None:
    """Lower the known-harmless messages to debug in this process (idempotent). ``verbose_flag`` (or
    ``$FTCTL_VERBOSE``) shows everything instead, here and in the processes started from here."""
    global _installed
    if verbose_flag:
        os.environ[VERBOSE_ENV] = "1"
    for key, value in no_unasked_kernels().items():  # no message: with -v too
        os.environ.setdefault(key, value)
    if verbose() or _installed:
        return
    _installed = True
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    patterns: dict[str, list[str]] = {}
    for name, pattern, _why in HARMLESS_LOGS:
        if name == "DeepSpeed" and _has_nvidia_gpu():
            continue  # on a GPU machine "Setting accelerator to CPU" means CUDA is broken: keep it
        patterns.setdefault(name, []).append(pattern)
    for name, pats in patterns.items():
        logging.getLogger(name).addFilter(LowerToDebug(pats))
    for category, pattern in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern, category=category)


class LowerToDebug(logging.Filter):
    """Records matching one of ``patterns`` below ERROR become DEBUG records; the logger shows them only
    when it is enabled for DEBUG. Attached to the logger that emits them (filters do not see records
    propagated from child loggers)."""

    def __init__(self, patterns):
        super().__init__()
        self.pattern = re.compile("|".join(f"(?:{p})" for p in patterns))

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR or not self.pattern.search(record.getMessage()):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def _has_nvidia_gpu() -> bool:
    return os.path.exists("/proc/driver/nvidia/gpus") or os.path.exists("/dev/nvidia0")
