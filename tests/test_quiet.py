"""Quiet by default: known-harmless third-party messages lowered to debug; -v / FTCTL_VERBOSE shows them."""

from __future__ import annotations

import subprocess
import sys

from tests.trainer_fixtures import REPO, subprocess_env

EMIT = """
import logging, sys, warnings
from ftctl import quiet
quiet.install()
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stdout)
bnb = logging.getLogger("bitsandbytes.backends.cpu.ops")
bnb.warning("Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'")
bnb.warning("another bitsandbytes warning")
bnb.error("Failed to load CPU gemm_4bit_forward: and this time it is an error")
logging.getLogger("kernels._internals.hf_hub").warning("Skipping publisher trust check for "
    "'kernels-community/quantization-bitsandbytes' because Hugging Face Hub is in offline mode.")
logging.getLogger("kernels._internals.hf_hub").warning("Skipping publisher trust check for 'someone/else' because "
    "Hugging Face Hub is in offline mode.")
liger = logging.getLogger("liger_kernel.backends.registry")
liger.warning("Backend impl '%s' for op '%s' could not be imported: %s: %s", "liger_kernel.ops.backends._cutedsl.rope",
              "rope", "ImportError", "cutedsl backend requires the NVIDIA CUTLASS Python DSL (CuTe DSL).")
liger.warning("Liger's registry says something else")
logging.getLogger("datasets").info("JAX version 0.11.2 available.")
logging.getLogger("datasets").info("datasets says something else")
logging.getLogger("liger_kernel.transformers.monkey_patch").info(
    "Applying Liger kernels to model instance with model type: llama with kwargs: {'rope': True}")
logging.getLogger("transformers.trainer_callback").warning("Using EarlyStoppingCallback without "
    "load_best_model_at_end=True. Once training is finished, the best model will not be loaded automatically.")
utils = logging.getLogger("transformers.trainer_utils")
utils.warning("Warning: The following arguments do not match the ones in the `trainer_state.json` within the "
    "checkpoint directory: \\n\\tlearning_rate: 0.0001 (from args) != 0.0002 (from trainer_state.json)")
utils.warning("mtime may not be reliable on this filesystem, falling back to numerical ordering")
trainer = logging.getLogger("transformers.trainer")
trainer.warning("There were missing keys in the checkpoint model loaded: ['lm_head.weight'].")
trainer.warning("There were missing keys in the checkpoint model loaded: ['model.norm.weight'].")
warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning)
warnings.warn("some other deprecation", FutureWarning)
warnings.warn("Argument aux_data (position 21) cannot be converted to a JitArgument for function 'cutlass___call___"
              "flash_attncuteflash_bwd_sm90FlashAttentionBackwardSm90'. Its type is not supported.", UserWarning)
for key in (".*\\\\.experts\\\\.gate_up_proj", ".*\\\\.gate_up_proj", "q_proj_pattern_typo"):  # as PEFT says them
    warnings.warn(f"The following rank_pattern keys did not match any targeted module and were ignored: {[key]}.",
                  RuntimeWarning)
import os
print("TQDM_DISABLE=" + os.environ.get("TQDM_DISABLE", "unset"))
"""


def _emit(**env):
    # a user's environment: not what quiet.install() set in this pytest process (the CLI tests run it)
    base = {k: v for k, v in subprocess_env().items() if k not in ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS")}
    env = {**base, **{k: str(v) for k, v in env.items()}}
    env.pop("PYTHONWARNINGS", None)
    return subprocess.run([sys.executable, "-c", EMIT], env=env, cwd=REPO, capture_output=True, text=True)


def test_known_messages_are_lowered_and_the_rest_still_prints(monkeypatch):
    monkeypatch.delenv("FTCTL_VERBOSE", raising=False)
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    proc = _emit()
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "No module named 'kernels'" not in out  # the harmless warning
    assert "another bitsandbytes warning" in out  # an unknown message from the same logger
    assert "could not be imported" not in out and "Liger's registry says something else" in out
    assert "ERROR bitsandbytes.backends.cpu.ops: Failed to load CPU gemm_4bit_forward: and this time" in out
    # bitsandbytes' own kernel, offline (transformers >= 5.25 installs `kernels`); another repository is still said
    assert "'kernels-community/quantization-bitsandbytes'" not in out and "'someone/else'" in out
    assert "is_gradient_checkpointing" not in out and "some other deprecation" in out
    assert "JitArgument" not in out  # FlashAttention 4's compile
    assert "JAX version" not in out and "datasets says something else" in out
    assert "Applying Liger kernels" not in out  # what one H200 run printed (bench/NOTES.md v44)
    assert "(from trainer_state.json)" not in out and "mtime may not be reliable" not in out
    assert "EarlyStoppingCallback" not in out  # ftctl says which checkpoint holds the lowest held-out loss
    # a resumed full fine-tune of a model that ties its head to its embeddings (the demo's): saved once, tied again;
    # any other key missing is said
    assert "['lm_head.weight']" not in out and "['model.norm.weight']" in out
    assert "gate_up_proj" not in out and "q_proj_pattern_typo" in out  # MoE LoRA: applied, though PEFT says not
    assert "TQDM_DISABLE=1" in out


def test_verbose_shows_everything_and_user_settings_win():
    proc = _emit(FTCTL_VERBOSE=1)
    out = proc.stdout + proc.stderr
    assert "No module named 'kernels'" in out and "is_gradient_checkpointing" in out and "JitArgument" in out
    assert "'kernels-community/quantization-bitsandbytes'" in out
    assert "TQDM_DISABLE=unset" in out
    assert "TQDM_DISABLE=0" in _emit(TQDM_DISABLE=0).stdout


def test_debug_logging_still_shows_the_lowered_message():
    code = EMIT.replace("level=logging.INFO", "level=logging.DEBUG")
    proc = subprocess.run([sys.executable, "-c", code], env=subprocess_env(), cwd=REPO, capture_output=True, text=True)
    assert "DEBUG bitsandbytes.backends.cpu.ops: Failed to load CPU gemm_4bit_forward from kernels" in proc.stdout


def test_cli_verbose_flag_is_passed_to_the_processes_it_starts(monkeypatch):
    monkeypatch.delenv("FTCTL_VERBOSE", raising=False)
    code = (
        "import os\nfrom ftctl.cli import main\n"
        "main(['-v', 'doctor', '--help'], standalone_mode=False)\n"
        "print('FTCTL_VERBOSE=' + os.environ.get('FTCTL_VERBOSE', 'unset'))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=subprocess_env(), cwd=REPO, capture_output=True, text=True)
    assert "FTCTL_VERBOSE=1" in proc.stdout, proc.stdout + proc.stderr


def test_quiet_imports_nothing_heavy():
    code = "import sys\nimport ftctl.quiet, ftctl.failures\nprint(sorted(m for m in ('torch', 'transformers', 'click') if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], env=subprocess_env(), cwd=REPO, capture_output=True, text=True)
    assert proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def test_real_libraries_are_quiet_in_the_trainer_process():
    """bitsandbytes (and DeepSpeed on a machine without GPUs) log at import time: quiet.install first."""
    code = (
        "from ftctl import quiet\nquiet.install()\nimport logging\nlogging.basicConfig(level=logging.INFO)\n"
        "import bitsandbytes, deepspeed\nprint('imported')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=subprocess_env(), cwd=REPO, capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    assert "imported" in proc.stdout, out
    assert "gemm_4bit_forward" not in out and "Setting accelerator to CPU" not in out, out


def test_qlora_on_cpu_prints_no_library_warning_the_run_need_not_act_on(tiny_model_dir):
    """explore16: a CPU qlora run with gradient checkpointing printed transformers' FutureWarning on
    gradient_checkpointing_enable (its own call, and PEFT's) and bitsandbytes' paged-optimizer warning, which the
    plan's note had said already. The real calls, in a process that installed quiet as the trainer does."""
    code = f"""
from ftctl import quiet
quiet.install()
import torch, bitsandbytes, transformers
model = transformers.AutoModelForCausalLM.from_pretrained({str(tiny_model_dir)!r})
model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={{"use_reentrant": False}})
weight = torch.nn.Parameter(torch.ones(4096))
optimizer = bitsandbytes.optim.PagedAdamW8bit([weight])
weight.sum().backward()
optimizer.step()
print("stepped")
"""
    proc = subprocess.run([sys.executable, "-c", code], env=subprocess_env(), cwd=REPO, capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    assert "stepped" in proc.stdout, out
    assert "gradient_checkpointing_enable" not in out and "Paged optimizers" not in out, out


def test_the_tokenizers_length_warning_is_lowered_and_the_trainer_says_it_better(tiny_model_dir):
    """transformers warns of "indexing errors" for any row longer than the tokenizer's model_max_length; ftctl
    truncates rows itself, so the trainer says instead where model_max_length is over the model's context."""
    from ftctl.spec import build
    from ftctl.trainer.run import over_context

    code = (
        "from ftctl import quiet; quiet.install()\n"
        "from transformers import AutoTokenizer\n"
        f"t = AutoTokenizer.from_pretrained({str(tiny_model_dir)!r})\n"
        "t('word ' * 2000)\nprint('tokenized')\n"
    )
    env = {k: v for k, v in subprocess_env().items() if k != "FTCTL_VERBOSE"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True)
    assert proc.stdout.strip() == "tokenized" and "Token indices sequence length" not in proc.stderr, proc.stderr
    spec = {"model_name_or_path": str(tiny_model_dir), "gpus": "cpu"}
    assert over_context(build({**spec, "model_max_length": 512})) is None  # the tiny model's context
    said = over_context(build({**spec, "model_max_length": 1024}))
    assert (
        said.startswith("model_max_length 1024 is over the model's context of 512 tokens")
        and "-o model_max_length=512" in said
    )
