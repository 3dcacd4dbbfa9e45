"""``ftctl merge RUN``: a LoRA/QLoRA adapter merged into its base, as a plain transformers model.

The adapter is the run directory's final adapter, or a ``checkpoint-<step>`` directory, or (when
the run has no final adapter yet) its newest complete checkpoint (ftctl.trainer.trained finds and
loads it). The base is loaded in the precision the run trained in. A QLoRA adapter goes, by default, into the base as
the run saw it: quantized to 4-bit NF4 as the run quantized it (model.nf4_config, from the dtype the run loaded its
weights in), then dequantized (bitsandbytes' dequantize_4bit, through transformers' ``model.dequantize()``); the
merged model answers as the run did (the QLoRA community's merge: ChrisHayduk's merge_qlora_with_quantized_model).
``--original-base`` merges it into the unquantized base instead (LoRA's merge; what ftctl did before). Either way the
output is an ordinary safetensors directory that ``AutoModelForCausalLM.from_pretrained`` loads with no PEFT and no
bitsandbytes, and its ``ftctl-merge.json`` says which base it went into.

Nothing is overwritten: an output that exists and is not empty is refused (saying so where it holds a merge of the
same adapter from before the run trained on: its ``ftctl-merge.json`` records the adapter's digest). A local output is written
into a hidden sibling and renamed into place whole (one a killed merge left is removed by the next); an object-store output gets its config.json last,
so a loader that finds it finds the weights.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import hashlib
import json
import logging
import os
import shlex
import shutil
import tempfile
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from ftctl import failures, quiet, storage
from ftctl.checkpoints.manifest import checkpoint_step, sha256_file
from ftctl.errors import FtctlError
from ftctl.runpaths import ADAPTER_CONFIG, MERGE_RECORD, MERGED_DIR, as_mkdir_made
from ftctl.trainer import trained as trained_mod
from ftctl.trainer.model import DTYPES

log = logging.getLogger(__name__)

STAGED_PREFIX = "ftctl-merged-"  # where a merge into an object store is written first
PARTIAL = ".partial-"  # .<out>.partial-XXXX: a merge being written beside its --out (partial_merge)

# Which base a QLoRA adapter goes into (ftctl-merge.json's "base_weights"; a record without it is of "original").
# Measured on SmolLM2-135M-Instruct after a 30-step qlora run (fp32, CPU) of 240 demo conversations, on the 60 others
# (3,479 next tokens, explore19): the dequantized merge agreed with the run as trained on 100.00% of next tokens (loss
# 3.6218 on all tokens, the run's to 4 decimals); the original-base merge on 73.50% (3.4826: another model than the one
# trained). `ftctl eval`'s loss on the answers: run 0.4551, dequantized merge 0.4554, original-base merge 0.5286
DEQUANTIZED = "dequantized"  # the 4-bit NF4 base as the run trained over it, dequantized
ORIGINAL = "original"  # the unquantized base the run quantized
ORIGINAL_NOTE = (
    "note: --original-base: the QLoRA adapter goes into the unquantized base, not the 4-bit one it trained over, so the "
    "merged model does not answer token for token as `ftctl chat RUN` does (`ftctl eval` of each on held-out data says "
    "by how much); without --original-base it goes into that 4-bit base, dequantized."
)


def default_out(run: str) -> str:
    """Where `ftctl merge RUN` writes without --out: RUN/merged; for RUN a ``checkpoint-<step>`` of a run, beside it
    in the run's directory, as merged-checkpoint-<step>. Inside the checkpoint, the run's save_total_limit rotation
    deleted it with the checkpoint once the run trained on (explore36)."""
    name = run.rstrip("/").rsplit("/", 1)[-1]
    if checkpoint_step(name) is None:
        return storage.join(run, MERGED_DIR)
    return run.rstrip("/")[: -len(name)] + f"{MERGED_DIR}-{name}"


def merge(
    run_dir_or_checkpoint: str,
    out_dir: str,
    dtype: str | None = None,
    endpoint_url: str | None = None,
    echo=None,
    base: str | None = None,
    named: str | None = None,
    dequantize: bool | None = None,
) -> Path:
    """Merge the adapter of a lora/qlora run into its base (or ``base``: the unquantized model a pre-quantized base
    was made from); write a safetensors model + tokenizer to ``out_dir`` (a local path or object-store URI).
    ``dequantize``: into the base quantized to 4-bit NF4 as the run trained over it and dequantized (None: so for a
    qlora run; False: the unquantized base, --original-base). Returns the directory written. ``echo`` is told what is
    loading, before the base's weights are read (the adapter ``named`` so, where it was downloaded from there)."""
    quiet.install()  # before transformers, peft and bitsandbytes are imported
    if dtype is not None and dtype not in DTYPES:
        raise FtctlError(f"dtype {dtype!r}: use one of {', '.join(DTYPES)}.")
    refuse_unfinished(run_dir_or_checkpoint, endpoint_url)
    storage.require_writable(out_dir, "merge output")
    _refuse_existing(out_dir, endpoint_url, run_dir_or_checkpoint, named, dequantize)
    if storage.is_remote(run_dir_or_checkpoint):
        with tempfile.TemporaryDirectory(prefix="ftctl-merge-") as tmp:
            trained_mod.download_top(run_dir_or_checkpoint, tmp, endpoint_url)
            return merge(tmp, out_dir, dtype, endpoint_url, echo, base, run_dir_or_checkpoint, dequantize)
    if storage.is_remote(out_dir):
        with tempfile.TemporaryDirectory(prefix=STAGED_PREFIX) as tmp:
            merge(run_dir_or_checkpoint, os.path.join(tmp, "merged"), dtype, None, echo, base, named, dequantize)
            _upload_config_last(os.path.join(tmp, "merged"), out_dir, endpoint_url)
        return Path(out_dir)

    from transformers import AutoTokenizer

    from ftctl.trainer import model_card
    from ftctl.trainer.masks import turn_close_problem

    adapter = trained_mod.find(run_dir_or_checkpoint, adapter_only=True)
    into = base or adapter.base
    revision = None if base else adapter.base_revision  # the commit loaded (trained.load's): its run's pin
    weights = base_weights(adapter, dequantize, named or run_dir_or_checkpoint)
    stored = _stored_quantization(into, named or run_dir_or_checkpoint, weights, adapter.method == "qlora")
    precision = dtype or adapter.precision or "fp32"
    quantized_from = trained_mod.quantized_from(adapter, precision)  # what the run quantized: plan's owner
    if echo:
        into_text = _into_text(into, weights, quantized_from, precision, stored)
        echo(f"merging the LoRA adapter {named or adapter.path} into {into_text} ...")
        if weights == ORIGINAL and adapter.method == "qlora":
            echo(ORIGINAL_NOTE)
    out = Path(out_dir).expanduser()
    with partial_merge(out) as tmp:  # made before the base loads: an --out that cannot be written is said at once
        dequantized = weights == DEQUANTIZED  # the base as the run trained over it (trained.quantized_base)
        merged = trained_mod.load(adapter, precision, base=base, dequantized=dequantized, stored=bool(stored))
        merged = merged.merge_and_unload()
        as_mkdir_made(tmp)  # mkdtemp's 0700 would stay with the renamed directory; a group's setgid kept
        with room_to_save(out, tmp, merged):
            merged.save_pretrained(tmp)
            tokenizer = AutoTokenizer.from_pretrained(trained_mod.tokenizer_source(adapter))
            tokenizer.save_pretrained(tmp)
            record = {
                "adapter": named or adapter_recorded(adapter.path, out),
                "adapter_digest": adapter_digest(adapter.path),
                "base": model_card.named(into),
                **({"base_revision": revision} if revision else {}),  # the commit merged into: its run's pin
                "base_weights": weights,
                "method": adapter.method,
            }
            text = json.dumps({**record, "merged_at": merged_now()}) + "\n"
            (tmp / MERGE_RECORD).write_text(text)
            model_card.write_merged(
                tmp,
                named or run_dir_or_checkpoint,
                into,
                adapter.method,
                _card_words(weights, precision),
                trained=adapter.path,
                revision=revision,
            )
        trained_mod.for_other_readers(tmp)
        try:
            os.replace(tmp, out)  # whole, or not at all (an empty directory there is replaced)
        except OSError as e:  # written while this one ran (another `ftctl merge` into it): said as before one starts
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                raise
            _refuse_existing(out_dir, endpoint_url, run_dir_or_checkpoint, named, dequantize)
            raise
    log.info("merged %s into %s (%s, %s base) -> %s", adapter.path, into, precision, weights, out)
    if echo and (problem := turn_close_problem(tokenizer)):  # what it ships with: its answers never end where served
        echo(f"warning: {problem}; served as it is (vLLM, generate()), the merged model runs on to max_tokens")
    return out


def refuse_unfinished(run: str, endpoint_url: str | None = None) -> None:
    """A run that trains now (trained.training_now: its trainer's lock or lease, or its launcher's) is refused: the
    adapter at its top is not the one it is training (an earlier run's final adapter, which a relaunch that extends
    max_steps replaces only as it ends; or none yet, where the newest checkpoint would have been taken unsaid), and a
    merge of it into RUN/merged would stand for the run's final model. The line names its newest committed checkpoint,
    which `ftctl merge RUN/checkpoint-N` merges beside it while it trains on. A checkpoint of it not committed yet
    (being written or uploaded, or cut short) is refused whether or not it trains: half its weights."""
    path = run.rstrip("/")
    name = path.rsplit("/", 1)[-1]
    if checkpoint_step(name) is not None:
        if why := trained_mod.uncommitted(path, endpoint_url):
            parent = path[: -len(name)]
            newest = trained_mod.newest_committed(parent or ".", endpoint_url)
            instead = f": `ftctl merge {shlex.quote(parent + newest)}`, the newest" if newest else " once there is one"
            if doing := trained_mod.training_now(parent.rstrip("/") or ".", endpoint_url):
                said = f"not committed yet: its run {doing} and may be writing it now"
            else:
                said = f"not a complete checkpoint ({why})"
            raise FtctlError(f"{run} is {said}; merge a complete checkpoint{instead}.")
        return
    if not (state := trained_mod.unfinished(run, endpoint_url)):
        return
    newest = state.newest
    fix = (
        f"merge its newest committed checkpoint with `ftctl merge {shlex.quote(storage.join(path, newest))}`, or "
        f"merge {shlex.quote(run)} once the run has ended"
        if newest
        else f"it has committed no checkpoint yet: merge {shlex.quote(run)} once the run has ended (or "
        "`ftctl merge RUN/checkpoint-N` once it has saved one)"
    )
    raise FtctlError(f"{state.said}; {fix}.")


def merged_now() -> str:
    """A merge record's ``merged_at``: this machine's local time in ISO 8601 with its UTC offset
    (``2026-12-06T08:31:07+05:30``), one instant read on any machine. Records before it hold ``2026-12-06 08:31``, the
    merging machine's local time without its zone; both are shown as they are written (_refuse_existing,
    trained.merged_again)."""
    return datetime.now().astimezone().isoformat(timespec="seconds")


def adapter_recorded(adapter: Path, out: Path) -> str:
    """How ftctl-merge.json names the local adapter merged into ``out``: its path from ``out`` (``..`` for the
    default RUN/merged), read back against the merge's directory (recorded_adapter). An absolute path was wrong on any
    other machine the run and its merge were copied to, and, uploaded with the merge, showed the training machine's
    directories (/home/USER/..., a node's /scratch/...). A merge staged here for an object store: stored_adapter."""
    adapter = adapter.resolve()
    if out.parent.name.startswith(STAGED_PREFIX):
        return stored_adapter(adapter)
    return os.path.relpath(adapter, out.parent.resolve() / out.name)


def stored_adapter(adapter: Path) -> str:
    """How a merge into an object store names a local adapter: by its store URI where its run's output is in a store
    (the directory is that run's staging, or a ``ftctl sync pull`` copy of it: its spec.json says; the same name a
    merge of the run from the store records), else by its run's name (``run``, ``run/checkpoint-6``: model_card's
    name for it). Its absolute path meant nothing where the store is read, and showed this machine's directories to
    whoever reads the store; a path relative to the merge has no meaning between a disk and a store. The adapter's
    digest beside it says which weights it was."""
    from ftctl.trainer.model_card import adapter_named

    found = trained_mod.located_run_record(str(adapter))  # the run's own spec.json: beside the adapter, or above it
    if found:
        record, above = found
        output = record.get("spec", {}).get("output_dir")
        if isinstance(output, str) and storage.is_remote(output):
            return storage.join(output.rstrip("/"), *((adapter.name,) if above else ()))
    return adapter_named(str(adapter))


def base_weights(adapter: trained_mod.Trained, dequantize: bool | None, run: str) -> str:
    """Which base the adapter goes into: DEQUANTIZED (a qlora run's, unless ``dequantize`` is False) or ORIGINAL. A
    run known to be lora was never quantized: --dequantized-base of it is refused (a run whose method is not recorded
    takes it as asked: ftctl's qlora quantization)."""
    qlora = adapter.method == "qlora"
    if dequantize is None:
        return DEQUANTIZED if qlora else ORIGINAL
    if dequantize and adapter.method is not None and not qlora:
        raise FtctlError(
            f"--dequantized-base is for a qlora run: {run} is a {adapter.method} run, trained over the unquantized "
            "base; merge it without --dequantized-base."
        )
    return DEQUANTIZED if dequantize else ORIGINAL


def merged_into(out_dir: str, endpoint_url: str | None = None) -> str:
    """Which base the merge in ``out_dir`` went into, in words, where the adapter is a QLoRA one ("" otherwise)."""
    record = _merge_record(out_dir, endpoint_url) or {}
    if record.get("method") != "qlora":
        return ""
    if record.get("base_weights") == DEQUANTIZED:
        return "the adapter in its 4-bit base dequantized, as the run trained"
    return "the adapter in its original unquantized base, not the 4-bit one it trained over"


def _card_words(weights: str, precision: str) -> str:
    """Which weights of the base the adapter went into, as the merged model's card says it."""
    if weights == ORIGINAL:
        return f"its unquantized weights, in {precision}"
    return f"its weights quantized to 4-bit NF4 as the run trained over them, dequantized to {precision}"


def _into_text(into: str, weights: str, quantized_from: str, precision: str, stored: str = "") -> str:
    """The base the adapter goes into, as the merge's first line says it."""
    if weights == ORIGINAL:
        return f"{into} ({precision})"
    if stored:
        return f"{into}'s stored 4-bit weights, as the run trained over them, dequantized to {precision}"
    return (
        f"{into} as the run trained over it: 4-bit NF4 with double quantization from {quantized_from}, dequantized "
        f"to {precision}"
    )


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


def _refuse_existing(
    out_dir: str, endpoint_url: str | None, run: str, named: str | None = None, dequantize: bool | None = None
) -> None:
    """An output that exists and is not empty is refused, saying where it holds a merge of this adapter from before
    the run trained on, or into the other base (``named``: the run's URI, whose adapter was downloaded to ``run``)."""
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
    remove = (
        f"{'delete' if storage.is_remote(out_dir) else 'remove'} it (`{storage.delete_command(out_dir, endpoint_url)}`)"
    )
    state = (
        _merge_state(
            {**record, "adapter": trained_mod.recorded_adapter(record, out_dir)}, run, out_dir, named, dequantize
        )
        if record
        else None
    )
    when = record.get("merged_at", "before") if record else ""
    if state in (DEQUANTIZED, ORIGINAL):
        flag = "--original-base" if state == ORIGINAL else "--dequantized-base"
        raise FtctlError(
            f"{out_dir} holds the merge of this adapter into the {_BASE_NAMES[state]} (made {when}, {flag}): choose "
            f"another --out for this one, or {remove} first."
        )
    if state == "current":
        raise FtctlError(
            f"{out_dir} holds the merge of this adapter as it is now (made {when}): nothing to merge again."
        )
    if state == "stale":
        raise FtctlError(f"{_stale_words(out_dir, when)}: {remove} and merge again, or choose another --out.")
    if not storage.is_remote(out_dir) and not out.is_dir():  # a file (the training data, say): never `rm -r` advice
        raise FtctlError(f"--out {out_dir} is a file, not a directory: choose another --out (a new directory).")
    raise FtctlError(f"{out_dir} already exists and is not empty: choose another --out, or {remove} first.")


def _stale_words(out_dir: str, when: str, adapter: str = "this adapter") -> str:
    """How a merge of an adapter the run has trained on since (_merge_state's "stale") is said: by merge's refusal to
    write over it, and by chat and eval loading it (trained_since)."""
    return f"{out_dir} holds the merge of {adapter} as it was on {when}; the run has trained on since"


def trained_since(merged: str, named: str | None = None, endpoint_url: str | None = None) -> str | None:
    """The note `ftctl chat`/`eval` of a merge say where its run has trained on since it was merged: its adapter as it
    is now is other weights than those its ftctl-merge.json records (_merge_state's "stale", what a merge into it
    again refuses with). ``merged``: the merge's local directory (one a merge in a store was downloaded to, ``named``
    its URI). None where the merge is of the adapter as it is, of no ftctl merge, or its adapter cannot be read (gone,
    a path of another machine, the store out of reach): a note never stops what loads. An adapter in a store is read
    for it (its adapter_* files only)."""
    record = _merge_record(merged, None)
    if not record:
        return None
    where = named or merged
    adapter = trained_mod.recorded_adapter(record, where)
    if not isinstance(adapter, str):
        return None
    remote = storage.is_remote(adapter)
    try:
        with tempfile.TemporaryDirectory(prefix="ftctl-adapter-") as tmp:
            if remote and not _adapter_files(adapter, tmp, endpoint_url):
                return None
            if not remote and not (Path(adapter) / ADAPTER_CONFIG).is_file():
                return None
            run = tmp if remote else adapter
            state = _merge_state({**record, "adapter": adapter}, run, where, adapter if remote else None)
    except Exception as exc:  # noqa: BLE001 - the store's errors of every kind: the merge loads all the same
        log.debug("cannot tell whether %s is of its adapter as it is now: %s", where, storage.redact(str(exc))[:300])
        return None
    if state != "stale":
        return None
    shown = adapter if remote or not adapter.startswith(os.getcwd() + os.sep) else os.path.relpath(adapter)
    when = record.get("merged_at", "before")
    again = f"`ftctl merge {shlex.quote(shown)} --out NEW_DIR` merges it as it is now"
    return f"note: {_stale_words(where, when, shown)}: loading that merge ({again})"


def _adapter_files(uri: str, into: str, endpoint_url: str | None) -> bool:
    """The adapter_* files at the top of ``uri`` (an adapter's config and weights: what adapter_digest reads) into
    ``into``; False where it holds no adapter."""
    names = [
        e["name"] for e in storage.ls(uri, endpoint_url) if e["type"] == "file" and e["name"].startswith("adapter_")
    ]
    if ADAPTER_CONFIG not in names:
        return False
    for name in names:
        storage.get_file(storage.join(uri, name), os.path.join(into, name), endpoint_url)
    return True


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


BNB_4BIT = "bitsandbytes 4-bit"  # plan.stored_quantization's words for a *-bnb-4bit model


def _stored_quantization(base: str, run: str, weights: str, qlora: bool) -> str:
    """How the base is stored, where quantized ("" where not). A *-bnb-4bit base's own 4-bit weights are what the run
    trained over: the dequantized merge dequantizes them. Any other (GPTQ, AWQ; or a bnb one under --original-base)
    is refused: its weights cannot take the adapter and be saved as a plain model (transformers cannot write merged
    quantized weights back); the model it was made from can (or, for a qlora run's adapter merged with --original-base,
    the dequantized 4-bit weights)."""
    from ftctl.plan import DEQUANTIZED_ON_LOAD, read_config, stored_quantization
    from ftctl.trainer.model import resolve_model

    try:
        quantized = stored_quantization(read_config(Path(resolve_model(base), "config.json")))
    except (FtctlError, OSError):  # no config.json to read here: the load says what is wrong, as before
        quantized = ""
    if quantized in DEQUANTIZED_ON_LOAD:  # gpt-oss's MXFP4: the run trained over it dequantized, as it loads to merge
        return ""
    if quantized and not (quantized == BNB_4BIT and weights == DEQUANTIZED):
        dequantizable = quantized == BNB_4BIT and qlora
        instead = "; or, without --original-base, into its 4-bit weights dequantized" if dequantizable else ""
        raise FtctlError(
            f"the adapter's base {base} is stored quantized ({quantized}): a merge into it cannot be saved as a plain "
            f"model. Merge into the unquantized model it was made from: ftctl merge {shlex.quote(run)} --base ORG/NAME (or its "
            f"directory){instead}."
        )
    return quantized


def adapter_digest(path: Path) -> str:
    """One sha256 of an adapter's files (its config and weights): what a merge was made from."""
    h = hashlib.sha256()
    for file in sorted(p for p in Path(path).glob("adapter_*") if p.is_file()):
        h.update(f"{file.name} {sha256_file(str(file))}\n".encode())
    return h.hexdigest()


_BASE_NAMES = {DEQUANTIZED: "dequantized 4-bit base", ORIGINAL: "original unquantized base"}


def _merge_state(
    record: dict, run: str, out_dir: str, named: str | None = None, dequantize: bool | None = None
) -> str | None:
    """Whether the merge ``record`` (in ``out_dir``) is of ``run``'s adapter (``named``, where that was downloaded),
    named as a merge into ``out_dir`` names it (stored_adapter in a store), as it is now
    ("current"), or as it was before the run trained on ("stale"), or as it is now into the other base than this
    merge's (DEQUANTIZED or ORIGINAL: the record's); None where it is of another adapter."""
    try:
        found = trained_mod.find(run, adapter_only=True)
        weights = base_weights(found, dequantize, named or run)
    except (OSError, FtctlError):
        return None
    adapter = found.path
    here = stored_adapter(adapter.resolve()) if storage.is_remote(out_dir) else str(adapter.resolve())
    if record.get("adapter") != (named or here):
        return None
    if record.get("adapter_digest") != adapter_digest(adapter):
        return "stale"
    merged_into = record.get("base_weights", ORIGINAL)  # before explore19 every merge went into the original base
    return "current" if merged_into == weights else merged_into


def _upload_config_last(local_dir: str, uri: str, endpoint_url: str | None) -> None:
    files = storage.local_files(local_dir)
    for rel in sorted(files, key=lambda rel: rel == trained_mod.MODEL_CONFIG):
        storage.put_file(os.path.join(local_dir, rel), storage.join(uri, *rel.split("/")), endpoint_url)
