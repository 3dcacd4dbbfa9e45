"""``ftctl merge RUN``: a LoRA/QLoRA adapter merged into its base, as a plain transformers model.

The adapter is the run directory's final adapter, or a ``checkpoint-<step>`` directory, or (when
the run has no final adapter yet) its newest complete checkpoint (ftctl.trainer.trained finds and
loads it). The base is loaded unquantized in the precision the run trained in (a QLoRA adapter is
merged into the full-precision base, not the 4-bit one), so the output is an ordinary safetensors
directory that ``AutoModelForCausalLM.from_pretrained`` loads with no PEFT and no bitsandbytes.

Nothing is overwritten: an output that exists and is not empty is refused (saying so where it holds a merge of the
same adapter from before the run trained on: its ``ftctl-merge.json`` records the adapter's digest). A local output is written
into a hidden sibling and renamed into place whole (one a killed merge left is removed by the next); an object-store output gets its config.json last,
so a loader that finds it finds the weights.
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import json
import logging
import os
import shlex
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from ftctl import failures, quiet, storage
from ftctl.checkpoints.manifest import sha256_file
from ftctl.errors import FtctlError
from ftctl.runpaths import MERGE_RECORD
from ftctl.trainer import trained as trained_mod
from ftctl.trainer.model import DTYPES

log = logging.getLogger(__name__)

STAGED_PREFIX = "ftctl-merged-"  # where a merge into an object store is written first
PARTIAL = ".partial-"  # .<out>.partial-XXXX: a merge being written beside its --out (partial_merge)

# a QLoRA adapter trained over the base rounded to 4 bits; it goes into the base itself (the merge writes 16/32-bit
# weights). On the demo (SmolLM2-135M, 2 steps) the merge agreed with the run on 66% of next tokens; held-out loss
# 2.586 as trained, 2.528 merged (explore17)
QLORA_NOTE = (
    "note: a QLoRA adapter is merged into the unquantized base, not the 4-bit one it trained over, so the merged model "
    "does not answer token for token as `ftctl chat RUN` does (`ftctl eval` of each on held-out data says by how much)."
)


def merge(
    run_dir_or_checkpoint: str,
    out_dir: str,
    dtype: str | None = None,
    endpoint_url: str | None = None,
    echo=None,
    base: str | None = None,
    named: str | None = None,
) -> Path:
    """Merge the adapter of a lora/qlora run into its base (or ``base``: the unquantized model a pre-quantized base
    was made from); write a safetensors model + tokenizer to ``out_dir`` (a local path or object-store URI).
    Returns the directory written. ``echo`` is told what is loading, before the base's weights are read (the
    adapter ``named`` so, where it was downloaded from there)."""
    quiet.install()  # before transformers, peft and bitsandbytes are imported
    if dtype is not None and dtype not in DTYPES:
        raise FtctlError(f"dtype {dtype!r}: use one of {', '.join(DTYPES)}.")
    storage.require_writable(out_dir, "merge output")
    _refuse_existing(out_dir, endpoint_url, run_dir_or_checkpoint, named)
    if storage.is_remote(run_dir_or_checkpoint):
        with tempfile.TemporaryDirectory(prefix="ftctl-merge-") as tmp:
            trained_mod.download_top(run_dir_or_checkpoint, tmp, endpoint_url)
            return merge(tmp, out_dir, dtype, endpoint_url, echo, base, named=run_dir_or_checkpoint)
    if storage.is_remote(out_dir):
        with tempfile.TemporaryDirectory(prefix=STAGED_PREFIX) as tmp:
            merge(run_dir_or_checkpoint, os.path.join(tmp, "merged"), dtype, echo=echo, base=base, named=named)
            _upload_config_last(os.path.join(tmp, "merged"), out_dir, endpoint_url)
        return Path(out_dir)

    from transformers import AutoTokenizer

    adapter = trained_mod.find(run_dir_or_checkpoint, adapter_only=True)
    into = base or adapter.base
    _refuse_quantized(into, named or run_dir_or_checkpoint)
    precision = dtype or adapter.precision or "fp32"
    if echo:
        echo(f"merging the LoRA adapter {named or adapter.path} into {into} ({precision}) ...")
        if adapter.method == "qlora":
            echo(QLORA_NOTE)
    out = Path(out_dir).expanduser()
    with partial_merge(out) as tmp:  # made before the base loads: an --out that cannot be written is said at once
        merged = trained_mod.load(adapter, precision, base=base).merge_and_unload()
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp's 0700 would stay with the renamed directory
        with room_to_save(out, tmp, merged):
            merged.save_pretrained(tmp)
            AutoTokenizer.from_pretrained(trained_mod.tokenizer_source(adapter)).save_pretrained(tmp)
            record = {"adapter": named or str(adapter.path.resolve()), "adapter_digest": adapter_digest(adapter.path)}
            text = json.dumps({**record, "merged_at": time.strftime("%Y-%m-%d %H:%M")}) + "\n"
            (tmp / MERGE_RECORD).write_text(text)
        trained_mod.for_other_readers(tmp)
        os.replace(tmp, out)  # whole, or not at all (an empty directory there is replaced)
    log.info("merged %s into %s (%s) -> %s", adapter.path, adapter.base, precision, out)
    return out


@contextmanager
def partial_merge(out: Path):
    """The hidden directory beside ``out`` a merge is written in, renamed to ``out`` when whole; held (flock) while
    it is written. Those no merge holds, which a killed merge left (a model's size each, never read), are removed
    first, said."""
    prefix = f".{out.name}{PARTIAL}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=out.parent))
    except OSError as e:
        raise FtctlError(f"cannot write the merge into {out.parent}: {e.strerror or e}; choose another --out.") from e
    fd = os.open(tmp, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        for old in sorted(out.parent.glob(f"{glob.escape(prefix)}*")):
            if old != tmp:
                _remove_unheld(old)
        yield tmp
    finally:
        os.close(fd)
        shutil.rmtree(tmp, ignore_errors=True)


def _remove_unheld(old: Path) -> None:
    try:
        fd = os.open(old, os.O_RDONLY)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # a merge writes it now (or the filesystem takes no locks: left as it is)
        os.close(fd)
        return
    try:
        size = sum(f.stat().st_size for f in old.rglob("*") if f.is_file())
        shutil.rmtree(old, ignore_errors=True)
        log.warning("removed %s (%s): a merge stopped before it finished left it", old, storage.size_text(size))
    finally:
        os.close(fd)


@contextmanager
def room_to_save(out: Path, tmp: Path, model):
    """A merge that failed for want of disk space (safetensors says only "I/O error: No space left on device") as one
    line naming the disk, its free space once the partial merge is gone, and what the merged model needs
    (failures.disk_full)."""
    try:
        yield
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        need = sum(p.numel() * p.element_size() for p in model.parameters())
        staged = out.parent.name.startswith(STAGED_PREFIX)  # an object-store --out, written here first
        fix = "set TMPDIR to a directory on a larger disk" if staged else "choose --out on another disk"
        if line := failures.disk_full(exc, str(out.parent), need, f"free some space there or {fix}"):
            raise FtctlError(line.replace(str(tmp), str(out.parent))) from exc
        raise


def _refuse_existing(out_dir: str, endpoint_url: str | None, run: str, named: str | None = None) -> None:
    """An output that exists and is not empty is refused, saying where it holds a merge of this adapter from before
    the run trained on (``named``: the run's URI, whose adapter was downloaded to ``run``)."""
    if storage.is_remote(out_dir):
        taken = bool(storage.ls(out_dir, endpoint_url))
    else:
        out = Path(out_dir).expanduser()
        taken = out.exists() and (not out.is_dir() or any(out.iterdir()))
    if not taken:
        return
    record = _merge_record(out_dir, endpoint_url)
    if record and storage.is_remote(run) and record.get("adapter") == run:
        return  # a merge of this run in the store's adapter: said once the adapter is downloaded and its digest known
    remove = "delete it from the store" if storage.is_remote(out_dir) else f"remove it (rm -r {shlex.quote(out_dir)})"
    state = _merge_state(record, run, named) if record else None
    when = record.get("merged_at", "before") if record else ""
    if state == "current":
        raise FtctlError(
            f"{out_dir} holds the merge of this adapter as it is now (made {when}): nothing to merge again."
        )
    if state == "stale":
        raise FtctlError(
            f"{out_dir} holds the merge of this adapter as it was on {when}; the run has trained on since: {remove} "
            "and merge again, or choose another --out."
        )
    if not storage.is_remote(out_dir) and not out.is_dir():  # a file (the training data, say): never `rm -r` advice
        raise FtctlError(f"--out {out_dir} is a file, not a directory: choose another --out (a new directory).")
    raise FtctlError(f"{out_dir} already exists and is not empty: choose another --out, or {remove} first.")


def _merge_record(out_dir: str, endpoint_url: str | None) -> dict | None:
    """The ``ftctl-merge.json`` of a merge in ``out_dir`` (a path or URI), None where there is none."""
    try:
        text = (
            storage.read_text(storage.join(out_dir, MERGE_RECORD), endpoint_url)
            if storage.is_remote(out_dir)
            else (Path(out_dir).expanduser() / MERGE_RECORD).read_text()
        )
        record = json.loads(text)
    except (OSError, ValueError, FtctlError):
        return None
    return record if isinstance(record, dict) else None


def _refuse_quantized(base: str, run: str) -> None:
    """A base stored quantized (a Hub *-bnb-4bit model, GPTQ, AWQ): its weights cannot take the adapter and be saved
    as a plain model (transformers cannot write merged 4-bit weights back); the model it was made from can."""
    from ftctl.plan import read_config, stored_quantization
    from ftctl.trainer.model import resolve_model

    try:
        quantized = stored_quantization(read_config(Path(resolve_model(base), "config.json")))
    except (FtctlError, OSError):  # no config.json to read here: the load says what is wrong, as before
        quantized = ""
    if quantized:
        raise FtctlError(
            f"the adapter's base {base} is stored quantized ({quantized}): a merge into it cannot be saved as a plain "
            f"model. Merge into the unquantized model it was made from: ftctl merge {shlex.quote(run)} --base ORG/NAME (or its "
            "directory)."
        )


def adapter_digest(path: Path) -> str:
    """One sha256 of an adapter's files (its config and weights): what a merge was made from."""
    h = hashlib.sha256()
    for file in sorted(p for p in Path(path).glob("adapter_*") if p.is_file()):
        h.update(f"{file.name} {sha256_file(str(file))}\n".encode())
    return h.hexdigest()


def _merge_state(record: dict, run: str, named: str | None = None) -> str | None:
    """Whether the merge ``record`` is of ``run``'s adapter (``named``, where that was downloaded) as it is now
    ("current"), or as it was before the run trained on ("stale"); None where it is of another adapter."""
    try:
        adapter = trained_mod.find(run, adapter_only=True).path
    except (OSError, FtctlError):
        return None
    if record.get("adapter") != (named or str(adapter.resolve())):
        return None
    return "current" if record.get("adapter_digest") == adapter_digest(adapter) else "stale"


def _upload_config_last(local_dir: str, uri: str, endpoint_url: str | None) -> None:
    files = storage.local_files(local_dir)
    for rel in sorted(files, key=lambda rel: rel == trained_mod.MODEL_CONFIG):
        storage.put_file(os.path.join(local_dir, rel), storage.join(uri, *rel.split("/")), endpoint_url)
