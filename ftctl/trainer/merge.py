"""``ftctl merge RUN``: a LoRA/QLoRA adapter merged into its base, as a plain transformers model.

The adapter is the run directory's final adapter, or a ``checkpoint-<step>`` directory, or (when
the run has no final adapter yet) its newest checkpoint. The base is the one the adapter names
(``base_model_name_or_path``; the demo model id resolves to its local cache), loaded unquantized
in 16 or 32 bits (a QLoRA adapter is merged into the full-precision base, not the 4-bit one), so
the output is an ordinary safetensors directory that ``AutoModelForCausalLM.from_pretrained``
loads with no PEFT and no bitsandbytes.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

from ftctl import quiet, storage
from ftctl.errors import FtctlError

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
MERGE_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def find_adapter(run_dir_or_checkpoint: str) -> Path:
    """The directory holding adapter_config.json: the path itself, else its newest checkpoint."""
    from ftctl.checkpoints import checkpoint_step

    path = Path(run_dir_or_checkpoint)
    if (path / ADAPTER_CONFIG).is_file():
        return path
    ckpts = sorted(
        (
            p
            for p in path.glob("checkpoint-*")
            if checkpoint_step(p.name) is not None and (p / ADAPTER_CONFIG).is_file()
        ),
        key=lambda p: checkpoint_step(p.name),
    )
    if ckpts:
        log.warning("%s has no final adapter: merging its newest checkpoint %s", path, ckpts[-1].name)
        return ckpts[-1]
    if (path / "config.json").is_file():
        raise FtctlError(
            f"{path} holds a full model (method fft or sft), not a LoRA adapter: it loads with "
            "transformers as it is, there is nothing to merge."
        )
    raise FtctlError(
        f"No LoRA adapter in {path} ({ADAPTER_CONFIG} not found there or in a checkpoint-* "
        "directory): pass the output directory of a lora or qlora run."
    )


def merge_dtype(adapter_dir: Path, dtype: str | None) -> str:
    """fp32/bf16/fp16: as asked, else the precision the run trained in (its spec.json), else fp32."""
    if dtype:
        if dtype not in MERGE_DTYPES:
            raise FtctlError(f"dtype {dtype!r}: use one of {', '.join(MERGE_DTYPES)}.")
        return dtype
    for spec_file in (adapter_dir / "spec.json", adapter_dir.parent / "spec.json"):
        if spec_file.is_file():
            try:
                return json.loads(spec_file.read_text())["plan"]["precision"]
            except (KeyError, ValueError):
                pass
    return "fp32"


def merge(run_dir_or_checkpoint: str, out_dir: str, dtype: str | None = None, endpoint_url: str | None = None) -> Path:
    """Merge the adapter of a lora/qlora run into its base; write a safetensors model + tokenizer to
    ``out_dir`` (a local path or object-store URI). Returns the local directory written."""
    quiet.install()  # before transformers, peft and bitsandbytes are imported
    storage.require_writable(out_dir, "merge output")
    if storage.is_remote(run_dir_or_checkpoint):
        with tempfile.TemporaryDirectory(prefix="ftctl-merge-") as tmp:
            _download_adapter(run_dir_or_checkpoint, tmp, endpoint_url)
            return merge(tmp, out_dir, dtype, endpoint_url)
    if storage.is_remote(out_dir):
        with tempfile.TemporaryDirectory(prefix="ftctl-merged-") as tmp:
            merge(run_dir_or_checkpoint, tmp, dtype)
            storage.put_dir(tmp, out_dir, endpoint_url)
        return Path(out_dir)

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ftctl.trainer.model import resolve_model

    adapter = find_adapter(run_dir_or_checkpoint)
    base_id = json.loads((adapter / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    if not base_id:
        raise FtctlError(f"{adapter / ADAPTER_CONFIG} names no base model (base_model_name_or_path).")
    precision = merge_dtype(adapter, dtype)
    base = AutoModelForCausalLM.from_pretrained(resolve_model(base_id), dtype=getattr(torch, MERGE_DTYPES[precision]))
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out)
    tokenizer_src = adapter if (adapter / "tokenizer_config.json").is_file() else resolve_model(base_id)
    AutoTokenizer.from_pretrained(tokenizer_src).save_pretrained(out)
    log.info("merged %s into %s (%s) -> %s", adapter, base_id, precision, out)
    return out


def _download_adapter(uri: str, local: str, endpoint_url: str | None) -> None:
    """The top-level files of a remote run (its final adapter), or a remote checkpoint."""
    for entry in storage.ls(uri, endpoint_url):
        if entry["type"] == "file":
            storage.get_file(
                storage.join(uri, entry["name"]), os.path.join(local, entry["name"]), endpoint_url=endpoint_url
            )
