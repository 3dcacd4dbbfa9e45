"""What a run leaves to load, and loading it: the one place `merge` and `chat` find a run's weights.

A run's output directory holds its final model (fft/sft: ``config.json`` + weights) or adapter
(lora/qlora: ``adapter_config.json``) with the tokenizer and spec.json; before the run ends it holds
only ``checkpoint-<step>`` directories, of which the newest complete one (its manifest verified,
ftctl.checkpoints) that holds weights is taken, with a warning naming it. An adapter is loaded onto
the base it names (``base_model_name_or_path``; the demo model's id resolves to its local cache). A qlora
adapter's base is the one the run trained over (quantized_base): for `chat` and `eval` in 4 bits, computing as the
loss did; for `merge` those 4 bits dequantized (or, --original-base, the unquantized base).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

from ftctl.errors import FtctlError
from ftctl.runpaths import (
    ADAPTER_CONFIG,
    BASE_MERGE,
    BASE_RUN,
    MERGE_RECORD,
    METRICS_FILE,
    MODEL_CONFIG,
    OLD_RESUME_LOCK,
    PLAIN_TEXT,
    SPEC_FILE,
    RunPaths,
    as_umask,
)

log = logging.getLogger(__name__)

TOKENIZER_CONFIG = "tokenizer_config.json"
GENERATION_CONFIG = "generation_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"  # transformers 5 saves a tokenizer's chat template there

# what save_pretrained writes for a full model: one file or a sharded index
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


@dataclass(frozen=True)
class Trained:
    path: Path  # the directory loaded: the run's output dir or one of its checkpoints
    adapter: bool  # a LoRA/QLoRA adapter (else a full model)
    revision: str | None = None  # a full model that is a hub id (chat --compare's base): the commit to load of it

    @property
    def base(self) -> str:
        """The model the run started from, as it named it: an adapter's base_model_name_or_path, a full model's
        model_name_or_path in the run's spec.json."""
        if self.adapter:
            base = json.loads((self.path / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
            where = self.path / ADAPTER_CONFIG
        else:
            base, where = self.recorded("spec", "model_name_or_path"), f"{self.path} (no {SPEC_FILE} beside it)"
        if not base:
            raise FtctlError(f"{where} names no base model: cannot tell what the run started from.")
        return base

    @property
    def base_revision(self) -> str | None:
        """The commit of the base the run trained from, where launch pinned one (its spec.json's model_revision):
        merge, chat and eval load that one, not the hub's main as it is now. None for a local model, a run never
        pinned, or an adapter whose base is not the run's model as named (a merge's --base, an adapter of no run)."""
        revision = self.recorded("spec", "model_revision")
        if not isinstance(revision, str) or not revision:
            return None
        return revision if self.base == self.recorded("spec", "model_name_or_path") else None

    @property
    def precision(self) -> str | None:
        """The precision the run trained in; None: unknown."""
        return self.recorded("plan", "precision")

    @property
    def method(self) -> str | None:
        """The run's method (fft, sft, lora, qlora); None: unknown."""
        return self.recorded("plan", "method")

    @property
    def plain_text(self) -> bool:
        """Every row the run trained on was plain text, without the chat template (its metrics.jsonl's last
        "start" record says, run.record_start); False where unknown."""
        for metrics in (self.path / METRICS_FILE, self.path.parent / METRICS_FILE):
            try:
                with open(metrics, errors="replace") as lines:  # a row a step: only the start records are parsed
                    starts = [r for line in lines if START in line and (r := _record(line)).get("event") == "start"]
            except OSError:
                continue
            return bool(starts and starts[-1].get(PLAIN_TEXT))
        return False

    def recorded(self, section: str, key: str) -> str | None:
        """A value of the run's spec or plan, from its spec.json (beside the weights, or above a checkpoint)."""
        record = run_record(str(self.path))
        return (record or {}).get(section, {}).get(key)


def run_record(run: str, endpoint_url: str | None = None) -> dict | None:
    """What a run recorded of itself in its spec.json ({"spec": ..., "plan": ...}: what it was asked and ran), beside
    ``run`` (its output directory, local or in object storage) or above it (one of its checkpoints, a merge in it);
    None where neither place holds one that reads. The one place that says where a run's spec.json is for what it
    trained: chat, eval (read_as_trained: before the weights load) and merge ask here (merge through
    ``located_run_record``, which also says which place held it). A store that cannot be reached is its one-line
    StorageError."""
    found = located_run_record(run, endpoint_url)
    return found[0] if found else None


def located_run_record(run: str, endpoint_url: str | None = None) -> tuple[dict, bool] | None:
    """``run_record``'s record and whether it was above ``run`` (``run`` is one of that run's checkpoints, or a merge
    in it) rather than beside it (``run`` is the run's output directory); None where neither place holds one."""
    from ftctl import storage

    if storage.is_remote(run):
        run, parent = run.rstrip("/"), run.rstrip("/").rsplit("/", 1)[0]
        places = [storage.join(run, SPEC_FILE)] + [storage.join(parent, SPEC_FILE)] * ("://" in parent)
    else:
        places = [str(Path(run).expanduser() / SPEC_FILE), str(Path(run).expanduser().parent / SPEC_FILE)]
    for above, place in enumerate(places):
        try:
            with storage.storage_errors(place, endpoint_url):
                record = json.loads(
                    storage.read_whole(place, endpoint_url) if storage.is_remote(place) else Path(place).read_bytes()
                )
        except (OSError, ValueError):  # none there (FileNotFoundError), a directory, a file cut short
            continue
        if isinstance(record, dict) and all(isinstance(record.get(part, {}), dict) for part in ("spec", "plan")):
            return record, bool(above)
    return None


def holds_trained(path) -> bool:
    """Whether the local directory ``path`` holds what :func:`find` loads itself: a final model or adapter, or a
    complete checkpoint-* with one. A run's directory here of an output in object storage (runs/NAME: the launch's
    spec.json, script and logs) holds none: chat, eval and merge load that output instead (cli._a_place)."""
    path = Path(path).expanduser()
    return path.is_dir() and (_found(path) is not None or _newest_checkpoint(path, warn=False) is not None)


def take_endpoint(recorded: str | None, run: str) -> str | None:
    """The S3 endpoint the launch of ``run`` recorded (its spec's s3_endpoint_url: MinIO, R2), taken for this process
    where its environment names none (AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL): for the bucket of ``run``
    (storage.use_recorded_endpoint), so that every read of the store here (the run's files, its lease, a merge written
    into it) reaches the store the run wrote, and `ftctl eval A B` of runs in other stores each its own (the first
    one's, set as this process's AWS_ENDPOINT_URL, read B there too). Returns the line saying so, or, where the
    environment names another endpoint (which is used), the line saying that; None where there is nothing to say. `ftctl chat
    s3://...` of such a run said "Cannot reach AWS S3 (no endpoint set)" (explore66 #3). One holding a user and
    password (a spec.json older than the launch's refusal of it) is neither taken nor repeated."""
    from ftctl import storage
    from ftctl.secret_checks import uri_credentials

    if not recorded:
        return None
    if uri_credentials(recorded):
        return (
            f"note: {run}'s launch recorded an S3 endpoint with a user and password (not repeated here): not used; "
            "set AWS_ENDPOINT_URL=http://HOST:PORT and the keys as AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        )
    now = storage.s3_endpoint()
    if now is None:
        storage.use_recorded_endpoint(run, recorded)
        return (
            f"{run}: using the S3 endpoint {recorded}, as its launch recorded it (-o s3_endpoint_url; "
            "AWS_ENDPOINT_URL sets another)"
        )
    if now.rstrip("/") != recorded.rstrip("/"):
        var = "AWS_ENDPOINT_URL_S3" if os.environ.get("AWS_ENDPOINT_URL_S3") else "AWS_ENDPOINT_URL"
        return f"note: {run}'s launch recorded the S3 endpoint {recorded}; {var} names {now}, which is used"
    return None


START = '"start"'  # in a "start" record's line (run.record_start: json.dumps's); a logged step's has none


def _record(line: str) -> dict:
    try:
        record = json.loads(line)
    except ValueError:  # a line cut short by a stopped run
        return {}
    return record if isinstance(record, dict) else {}


def _holds_adapter(path: Path) -> bool:
    return (path / ADAPTER_CONFIG).is_file()


def _holds_model(path: Path) -> bool:
    return (path / MODEL_CONFIG).is_file() and any((path / f).is_file() for f in WEIGHT_FILES)


def find(path_or_uri: str, adapter_only: bool = False, store: str | None = None, endpoint_url=None) -> Trained:
    """The adapter or model to load from a run directory or a checkpoint directory (local). ``store``: the run in
    object storage whose top-level files (download_top's) ``path_or_uri`` holds: a newer checkpoint a relaunch left
    there past its final model (store_trained_past_final) is downloaded beside them and loaded, as a local run's is."""
    from ftctl import storage

    if storage.is_remote(path_or_uri):
        raise FtctlError(
            f"{path_or_uri} is in object storage: download its top-level files first, then pass that directory."
        )
    path = Path(path_or_uri).expanduser()
    if not path.is_dir():
        raise FtctlError(f"{path} is not a directory: pass the output directory of a run (or a checkpoint-* in it).")
    found = _found(path)
    newer = None
    if found is not None:
        newer = trained_past_final(path) if store is None else store_trained_past_final(store, path, endpoint_url)
        if newer and store is not None:  # its top-level files beside the run's, as a local run holds it
            download_top(storage.join(store.rstrip("/"), newer), str(path / newer), endpoint_url)
    if found is not None and newer and (at := _found(path / newer)) is not None:
        log.warning(
            "%s: its final %s is an earlier run's; a relaunch trained on to %s and stopped before its end: loading %s "
            "(the same `ftctl launch` finishes the run)",
            store or path,
            _what(found),
            newer,
            newer,
        )
        found = at
    if found is None:
        found = _newest_checkpoint(path)
        if found is not None:
            log.warning("%s has no final %s yet: loading its newest checkpoint %s", path, _what(found), found.path.name)
    if found is None:
        what = f"LoRA adapter ({ADAPTER_CONFIG})" if adapter_only else f"model or LoRA adapter ({ADAPTER_CONFIG})"
        raise FtctlError(
            f"No {what} in {path} nor in a complete checkpoint-* directory there: pass the output directory "
            "of a run (a run that saved no checkpoint yet has nothing to load)."
        )
    if adapter_only and not found.adapter:
        raise FtctlError(
            f"{found.path} holds a full model (method fft or sft), not a LoRA adapter: it loads with "
            "transformers as it is, there is nothing to merge."
        )
    return found


def trained_past_final(run_dir, word: str | None = None) -> str | None:
    """The newest complete checkpoint's name where the last attempt into a finished run (its final model at the top) was
    a relaunch that trained past that model and stopped or failed (its status word, ``word`` where already read):
    `-o max_steps` raised, then a SIGTERM or a crash. Its checkpoint is newer than the step the final model ends at
    (metrics.jsonl's last "end" record that no "stop" follows: a stop logs "end" too). None otherwise, or where any of
    it cannot be read. `ftctl status` said "complete" of such a run, and chat/eval/merge loaded the earlier final
    model (explore64)."""
    from ftctl.checkpoints import list_checkpoints

    paths = RunPaths(Path(run_dir).expanduser())
    try:
        word = paths.status_file.read_text().strip() if word is None else word
    except OSError:
        return None
    if word not in ("preempted", "failed"):
        return None
    try:
        end = _final_step(paths.metrics)
        done = [c for c in list_checkpoints(str(paths.root)) if c.complete]
    except (OSError, ValueError, KeyError, TypeError, FtctlError):
        return None
    return done[-1].name if end is not None and done and done[-1].step > end else None


def store_trained_past_final(run: str, top: Path, endpoint_url: str | None = None) -> str | None:
    """trained_past_final of a run in object storage (``run``), whose top-level files download_top put in ``top``
    (its metrics.jsonl is the final model's, uploaded with it): the newest complete checkpoint in the store where
    it is newer than the step that final model ends at and nothing trains there now (no live lease: while_training
    says what loads from a run that trains). A store keeps no status word: a relaunch that failed or stopped leaves
    the same. None otherwise, or where any of it cannot be read (chat of a store's run loaded the earlier final
    model: review 61 finding 10)."""
    from ftctl import storage
    from ftctl.checkpoints import list_checkpoints

    try:
        end = _final_step(Path(top) / METRICS_FILE)
        if end is None or training_now(run, endpoint_url):
            return None
        with storage.storage_errors(run, endpoint_url):
            done = [c for c in list_checkpoints(run, endpoint_url=endpoint_url) if c.complete]
    except (OSError, ValueError, KeyError, TypeError, FtctlError):
        return None
    return done[-1].name if done and done[-1].step > end else None


def _final_step(metrics: Path) -> int | None:
    """The step the run's final model ends at: its metrics.jsonl's last "end" record that no "stop" follows (a stop
    logs "end" too); None where it has none. OSError, ValueError, KeyError, TypeError where it does not read."""
    end = final_end(metrics.read_text())
    return end[0] if end else None


def final_end(metrics: str) -> tuple[int, float | None] | None:
    """(step, time) of the "end" record the run's final model ends at, in the text of its metrics.jsonl: the last
    one that no "stop" follows; None where it has none. ValueError, KeyError, TypeError where it does not read."""
    rows = [json.loads(line) for line in metrics.splitlines() if line.strip()]
    events = [(r["event"], r["step"], r.get("time")) for r in rows if isinstance(r, dict) and "event" in r]
    ends = [
        (step, when)
        for (event, step, when), after in zip(events, [*events[1:], ("", 0, None)])
        if event == "end" and after[0] != "stop"
    ]
    return ends[-1] if ends else None


def _found(path: Path) -> Trained | None:
    if _holds_adapter(path):
        return Trained(path, adapter=True)
    if _holds_model(path):
        return Trained(path, adapter=False)
    return None


def _what(found: Trained) -> str:
    return "adapter" if found.adapter else "model"


def _newest_checkpoint(run_dir: Path, warn: bool = True) -> Trained | None:
    from ftctl.checkpoints import list_checkpoints

    for ckpt in reversed(list_checkpoints(str(run_dir))):
        found = _found(run_dir / ckpt.name) if ckpt.complete else None
        if found is not None:
            return found
        if not ckpt.complete and warn:
            log.warning("skipping %s: %s", ckpt.name, "; ".join(ckpt.problems))
    return None


def newest_committed(run: str, endpoint_url: str | None = None) -> str | None:
    """The name of the newest complete checkpoint of ``run`` (a run directory or an object-store output) that holds
    weights; None where it has none. Quiet: a run that trains now has one it is writing."""
    from ftctl import storage
    from ftctl.checkpoints import list_checkpoints

    if not storage.is_remote(run):
        found = _newest_checkpoint(Path(run).expanduser(), warn=False)
        return found.path.name if found else None
    complete = [c for c in list_checkpoints(run, endpoint_url=endpoint_url) if c.complete]
    return complete[-1].name if complete else None


def uncommitted(checkpoint: str, endpoint_url: str | None = None) -> str | None:
    """Why ``checkpoint`` (a ``checkpoint-<step>`` of an ftctl run, local or in a store) is not complete
    (ftctl.checkpoints: its commit record, written or uploaded after every other file, missing, or a file not as it
    lists it): one its trainer is writing or uploading now, or whose save stopped before it was committed. None where
    it is complete, or not of an ftctl run: no spec.json beside it, no trainer there now, and (on a disk) no other
    checkpoint with a commit record: another tool's, taken as it is."""
    from ftctl import storage
    from ftctl.checkpoints import checkpoint_step, list_checkpoints, verify

    path = checkpoint.rstrip("/")
    run, _, name = path.rpartition("/")
    if checkpoint_step(name) is None:
        return None
    run = run or "."
    try:
        if storage.is_remote(path):  # one checkpoint's listing; a multi-node one is uploaded with its merged manifest
            problems, others = verify(path, deep=False, endpoint_url=endpoint_url), False
        else:  # the run's listing: a multi-node checkpoint on a shared disk is committed by its nodes' manifests
            listed = {c.name: c for c in list_checkpoints(run)}
            info = listed.get(name)
            problems = info.problems if info is not None else []
            others = any(c.manifest is not None for c in listed.values())
        if not problems:
            return None
        if not (
            others or storage.exists(storage.join(run, SPEC_FILE), endpoint_url) or training_now(run, endpoint_url)
        ):
            return None
    except (OSError, FtctlError):
        return None  # not readable here: the load says what is wrong
    return "; ".join(problems)


def training_now(run: str, endpoint_url: str | None = None) -> str | None:
    """What trains into the run ``run`` now, as "is still training (step 37/100; pid 12 on HOST since ...)" or "is
    being launched into by `ftctl train` (pid ...)": its trainer's lock (trainer.run.only_trainer) or its launcher's
    (backend.launching: a local run's, held until it ends, from before its trainer starts) held, or, for an
    object-store output, its trainer's lease live (ftctl.lease). None where nothing does, as far as can be seen here
    (a file system without locks, a store not answering)."""
    from ftctl import lease, storage

    if storage.is_remote(run):
        try:
            held, _ = lease.read_tagged(run, endpoint_url)
        except Exception:  # noqa: BLE001 - a store not answering: the download says so
            return None
        return f"is still training ({lease.describe(held)})" if lease.live(held) else None
    paths = RunPaths(Path(run).expanduser())
    if holder := held_by(paths.train_lock):
        try:
            since = paths.train_lock.stat().st_mtime  # when the trainer wrote its name into it: as it started
        except OSError:
            since = None
        return f"is still training ({_logged_step(paths.metrics, since)}; {holder})"
    if holder := held_by(paths.launch_lock):
        return f"is being launched into by {holder}"
    return None


@dataclass(frozen=True)
class Unfinished:
    """A run that trains now, as `ftctl merge RUN` refuses it and `ftctl chat RUN` and `ftctl eval RUN` say it before
    they load (unfinished)."""

    said: str  # "RUN is still training (step 37/100; pid 12 on HOST since ...): the final adapter in it is ..."
    final: bool  # its top holds a final adapter or model: an earlier run's
    newest: str | None  # the name of its newest committed checkpoint; None: none yet


def unfinished(run: str, endpoint_url: str | None = None) -> Unfinished | None:
    """What trains in ``run`` now (training_now) and what its top holds meanwhile: "RUN is still training (step 37/100;
    pid 12 on HOST since ...): the final adapter in it is an earlier run's until this run saves its own as it ends" (a
    relaunch that extends max_steps replaces it only then) or "...: it has no final adapter yet" ("model" for a
    full-model run), with its newest committed checkpoint. None where nothing trains there."""
    from ftctl import storage
    from ftctl.checkpoints.settings import final_saved

    path = run.rstrip("/") or run
    if not (doing := training_now(path, endpoint_url)):
        return None
    if final := final_saved(path, endpoint_url):
        kind = "adapter" if _exists(storage.join(path, ADAPTER_CONFIG), endpoint_url) else "model"
        held = f"the final {kind} in it is an earlier run's until this run saves its own as it ends"
    else:
        held = f"it has no final {_final_kind(path, endpoint_url)} yet"
    return Unfinished(f"{run} {doing}: {held}", final, newest_committed(path, endpoint_url))


def _exists(uri: str, endpoint_url: str | None) -> bool:
    from ftctl import storage

    try:
        return storage.exists(uri, endpoint_url)
    except (OSError, FtctlError):
        return False


def _final_kind(run: str, endpoint_url: str | None) -> str:
    """What a run saves at its end, by its spec.json's method: a full model (fft, sft), else an adapter."""
    from ftctl import storage

    try:
        method = json.loads(storage.read_text(storage.join(run, SPEC_FILE), endpoint_url))["plan"]["method"]
    except (OSError, ValueError, KeyError, TypeError, FtctlError):
        method = None
    return "model" if method in ("fft", "sft") else "adapter"


def held_by(lock: Path) -> str | None:
    """The holder of the flock ``lock`` now, as it wrote itself into it ("another process" where it could not); None
    where nobody holds it, there is none, or the file system takes no locks."""
    import fcntl

    try:
        fh = open(lock)
    except OSError:
        return None
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return fh.read().strip() or "another process"
        except OSError:  # no locks on this file system: not known
            return None
    return None


UNLOCKED_RECENT_S = 600  # a pre-lock trainer's metrics.jsonl written this recently: it may still train


@dataclass(frozen=True)
class Unlocked:
    """A trainer of an ftctl from before the run directory's lock (2026-12-02) that may still train into a run
    (unlocked_trainer), as `ftctl status` says it and a relaunch is refused."""

    age_s: float  # since it last wrote the run's metrics.jsonl
    pid: int | None  # its process, where one on this machine names the run's spec.json (an older launcher's trainer)

    @property
    def said(self) -> str:
        return (
            f"its {METRICS_FILE} was written {self.age_s:.0f} s ago and its trainer, of an ftctl from before "
            "2026-12-02, takes no lock to tell"
        )


def unlocked_trainer(paths: RunPaths, run: RunPaths | None = None) -> Unlocked | None:
    """A trainer of an ftctl from before the run directory's lock (2026-12-02) that may still train into ``paths``
    (the trainer's; ``run``: the run directory, where its launcher's status and spec.json are, the same one for a
    local output), upgraded meanwhile (explore38): status said "stopped before the end (the same `ftctl launch` ...
    resumes it)", and a relaunch trained beside it, each rotating the other's checkpoints away. Seen as: no lock file
    there (every trainer since takes one as it starts and leaves it) but the resume lock those trainers took at the
    top (OLD_RESUME_LOCK, which no trainer since reads), no status word (each trainer writes one as it ends; a launch
    clears it) and its metrics.jsonl written within UNLOCKED_RECENT_S. None otherwise."""
    run = run or paths
    if paths.train_lock.exists() or not (paths.root / OLD_RESUME_LOCK).exists():
        return None
    try:
        if run.status_file.read_text().strip():
            return None
    except OSError:
        pass
    try:
        age = time.time() - paths.metrics.stat().st_mtime
    except OSError:
        return None
    if age > UNLOCKED_RECENT_S:
        return None
    return Unlocked(max(age, 0.0), _naming(run.spec))


def _naming(spec: Path) -> int | None:
    """The process on this machine whose command line names ``spec``: an older launcher's trainer (`python -m
    ftctl.trainer --spec SPEC`, or the torchrun over its ranks, not those ranks). None where no one process does or
    this cannot be read here (no /proc; an `ftctl train`, whose command line names no spec.json)."""
    name, found = os.fsencode(str(spec)), {}
    try:
        entries = [e for e in os.listdir("/proc") if e.isdigit() and int(e) != os.getpid()]
    except OSError:
        return None
    for entry in entries:
        try:
            if name in Path("/proc", entry, "cmdline").read_bytes().split(b"\0"):
                found[int(entry)] = int(Path("/proc", entry, "stat").read_text().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):  # ended meanwhile, or not ours to read
            continue
    tops = [pid for pid, parent in found.items() if parent not in found]
    return tops[0] if len(tops) == 1 else None


def _logged_step(metrics: Path, since: float | None) -> str:
    """ "step 37/100": the last step the trainer that started at ``since`` logged (its metrics.jsonl rows after its
    "start" record, trainer.run.record_start); "no step logged yet" before its first (an earlier run's rows, a
    relaunch's before its start record, are not its steps)."""
    rows: list[str] = []  # the last two rows of the trainer's (the last may be cut short): a row a step, not parsed
    ours = False
    try:
        with open(metrics, errors="replace") as lines:
            for line in lines:
                if START not in line:
                    rows = [*rows[-1:], line] if ours and '"loss"' in line else rows
                elif (record := _record(line)).get("event") == "start":
                    when = record.get("time")
                    ours = since is None or (isinstance(when, (int, float)) and when >= since - 0.1)  # a file time
                    rows = []
    except OSError:
        pass
    found = [r for r in map(_record, reversed(rows)) if "loss" in r and isinstance(r.get("step"), int)]
    last = found[0] if found else None
    if last is None:
        return "no step logged yet"
    total = last.get("max_steps")
    return f"step {last['step']}/{total}" if isinstance(total, int) and total > 0 else f"step {last['step']}"


def load(
    trained: Trained,
    precision: str,
    device_map=None,
    as_trained: bool = False,
    base: str | None = None,
    dequantized: bool = False,
    stored: bool = False,
):
    """The model in ``precision`` (fp32/bf16/fp16): the full model, or the base with the adapter on it
    (a PeftModel; ``merge_and_unload()`` folds it in). ``as_trained``: a qlora adapter's base in 4 bits as the
    run trained over it (quantized_base), computing as the loss did (methods.training_layout: not bitsandbytes' CPU
    inference repack), not unquantized. ``dequantized``: that 4-bit base dequantized into ``precision`` (bitsandbytes'
    dequantize_4bit), a plain model the adapter merges into as the run trained over it (merge's default for qlora).
    ``stored``: the base is stored in 4 bits (a *-bnb-4bit model): loaded as it is stored. ``base``: another base than
    the adapter's (the unquantized model a pre-quantized base was made from)."""
    from transformers import AutoModelForCausalLM

    from ftctl.trainer.model import at_revision, dequantizing, stored_quantization, torch_dtype

    dtype = torch_dtype(precision)
    if not trained.adapter:
        pinned = at_revision(str(trained.path), trained.revision)
        return AutoModelForCausalLM.from_pretrained(trained.path, dtype=dtype, device_map=device_map, **pinned)
    from peft import PeftModel

    base_path = resolve_base(trained, base)
    if base is None and (again := merged_again(trained.path, base_path)):
        log.warning("%s", again)
    if base is None and (record := base_run_record(trained)):  # over another run's final model, trained on since
        if again := base_trained_on(record, base_run_model(base_path)):
            log.warning("%s", again)
    revision = None if base else trained.base_revision  # the commit the run trained over (a --base: as named)
    if dequantized or (as_trained and trained.method == "qlora"):
        model = quantized_base(trained, base_path, precision, device_map, dequantized, stored, revision)
    else:  # a base stored in MXFP4 (gpt-oss) as the run trained over it: dequantized (model.dequantizing)
        quant = dequantizing(stored_quantization(base_path, revision)) | at_revision(base_path, revision)
        model = AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype, device_map=device_map, **quant)
    return PeftModel.from_pretrained(model, str(trained.path))


def quantized_from(trained: Trained, precision: str) -> str:
    """The dtype a qlora run loaded its base's weights in, and so quantized them from (its plan's weights_dtype: bf16
    on a bf16 GPU, fp32 on CPU); ``precision`` where the run recorded none. The one place chat, eval and merge read it."""
    return trained.recorded("plan", "weights_dtype") or precision


def quantized_base(
    trained: Trained,
    base_path: str,
    precision: str,
    device_map=None,
    dequantized=False,
    stored=False,
    revision: str | None = None,
):
    """The adapter's base as the run trained over it: loaded in the dtype the run loaded it in (quantized_from),
    quantized as it quantized it (model.nf4_config: NF4, double quantization, blocks of 64), or, ``stored`` in 4 bits,
    as it is stored; its 4-bit layers computing in ``precision`` in the training layout (methods.training_layout), the
    others (embeddings, norms, head) in ``precision``. ``dequantized``: the 4-bit weights dequantized into
    ``precision`` (a plain model). ``revision``: the hub base's commit the run trained over (Trained.base_revision)."""
    from transformers import AutoModelForCausalLM

    from ftctl import quiet
    from ftctl.trainer.methods import training_layout
    from ftctl.trainer.model import at_revision, nf4_config, torch_dtype

    dtype, loaded = torch_dtype(precision), torch_dtype(quantized_from(trained, precision))
    quant = {} if stored else {"quantization_config": nf4_config(dtype)}  # a stored one loads as it is stored
    quant |= at_revision(base_path, revision)
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=loaded, device_map=device_map or {"": "cpu"}, **quant)
    if dequantized:
        said = logging.getLogger("transformers.integrations.bitsandbytes")  # "The modules are dequantized in ...": ours
        quieter = quiet.LowerToDebug(["are dequantized in"])  # merge says it, with the dtype it was quantized from
        said.addFilter(quieter)
        try:
            model = model.dequantize(dtype=dtype)
        finally:
            said.removeFilter(quieter)
        return model.to(dtype) if loaded != dtype else model  # the layers the run kept unquantized
    training_layout(model)
    if loaded != dtype:  # transformers refuses .to(dtype) on a 4-bit model: the unquantized weights one by one
        for param in model.parameters():  # (buffers, RoPE's frequencies, stay as transformers keeps them)
            if param.dtype == loaded:
                param.data = param.data.to(dtype)
    return model


def resolve_base(trained: Trained, base: str | None = None) -> str:
    """Where the adapter's base loads from: ``base`` (merge's --base), else the one its adapter_config.json names (at
    the commit the run pinned, Trained.base_revision: its snapshot in the cache where the Hub cannot be asked; else
    the id, which load asks at that commit); one that is not here (a path of the machine the run trained on) is said
    as such, with the fix."""
    from ftctl.trainer.model import resolve_model

    if base:
        return resolve_model(base, flag="--base")
    return resolve_model(trained.base, flag="the adapter's base", revision=trained.base_revision)


def keep_base_merge(adapter_dir: str, base: str) -> None:
    """Beside an adapter trained over a merged model (`--model RUN/merged`), that merge's record (BASE_MERGE): a
    later merge into the same directory is other weights, which merged_again tells apart."""
    record = Path(base).expanduser() / MERGE_RECORD
    if record.is_file():
        (Path(adapter_dir) / BASE_MERGE).write_bytes(record.read_bytes())


def recorded_adapter(record: dict, merge_dir) -> str | None:
    """The adapter a merge record (MERGE_RECORD in ``merge_dir``) names: an object-store URI as it is, a path as this
    machine finds it (merge.adapter_recorded writes it relative to the merge; records before that hold absolute
    paths)."""
    from ftctl import storage

    named = record.get("adapter")
    if not isinstance(named, str) or storage.is_remote(named) or storage.is_remote(str(merge_dir)):
        return named
    return str((Path(merge_dir).expanduser() / named).resolve())


def merged_again(adapter_dir, base: str) -> str | None:
    """The warning where the merged model an adapter trained over (keep_base_merge) was merged again since, from
    its adapter as it is now (`rm -r RUN/merged && ftctl merge RUN`, after RUN trained on): the adapter goes onto
    other weights than it trained with, and its answers and losses are not the run's. None where they are the same,
    or nothing was recorded."""
    try:
        then = json.loads((Path(adapter_dir) / BASE_MERGE).read_text())
        now = json.loads((Path(base) / MERGE_RECORD).read_text())
    except (OSError, ValueError):
        return None
    if (
        not isinstance(then, dict)
        or not isinstance(now, dict)
        or then.get("adapter_digest") == now.get("adapter_digest")
    ):
        return None
    adapter = recorded_adapter(now, base)
    return (
        f"{base} is not the model {adapter_dir} trained over: it was merged again (at {now.get('merged_at')}, from "
        f"{adapter} as it is now; the adapter trained over the merge of {then.get('merged_at')}), so the "
        f"adapter goes onto other weights. Train it again over this merge; next time merge into another --out "
        f"(ftctl merge {adapter or 'RUN'} --out DIR) to keep the base of the runs trained over the first."
    )


# a full model's weights as save_pretrained writes them sharded (model-00001-of-00004.safetensors)
WEIGHT_SHARD = re.compile(r"(model|pytorch_model)-\d+-of-\d+\.(safetensors|bin)")


def base_run_model(base) -> dict | None:
    """What tells a run's final model (fft/sft: its weights at the top of its output, ``base``, beside its spec.json)
    from the one it holds after it trained on: the step its metrics.jsonl's end record says it ends at (final_end),
    that record's time, and each weights file's size and mtime. None where ``base`` is no ftctl run's final model (a
    Hub id, a plain model directory, a merge)."""
    path = Path(base).expanduser()
    if not (path / SPEC_FILE).is_file() or not _holds_model(path):
        return None
    try:
        step, ended = final_end((path / METRICS_FILE).read_text()) or (None, None)
    except (OSError, ValueError, KeyError, TypeError):
        step, ended = None, None
    weights = {}
    for name in sorted(os.listdir(path)):
        if name in WEIGHT_FILES or WEIGHT_SHARD.fullmatch(name):
            try:
                stat = (path / name).stat()
            except OSError:
                continue
            weights[name] = [stat.st_size, round(stat.st_mtime, 3)]
    return {"run": str(base), "step": step, "ended_at": ended, "weights": weights}


def keep_base_run(output_dir, base, named: str, resumed: bool) -> str | None:
    """At the start of a run that trains over another run's final model (`--model RUN`, ``base`` where this process
    loads it, ``named`` as the user named it), that model's identity (base_run_model) at the top of the run's output
    (BASE_RUN), where its final adapter or model lands and above its checkpoints: chat, eval and merge of an adapter
    tell RUN trained on since (base_trained_on), and --compare of a full-model run (fft/sft), whose base it loads
    beside it (compared_base_trained_on). A run ``resumed`` from a checkpoint of its own keeps the record its start
    wrote (those steps trained over that model), and the line returned says where RUN was trained on since (an
    adapter's steps go on over it; a full model's from its checkpoint's own weights: the caller leaves it unsaid); a
    fresh start writes its own, and removes one an earlier run into the output left where the base is no run's."""
    record = Path(output_dir) / BASE_RUN
    now = base_run_model(base)
    if now is not None:
        now["run"] = named
    if resumed and now is not None and (said := base_trained_on(record, now, resumed=True)):
        return said
    if resumed and record.is_file():
        return None
    if now is None:
        record.unlink(missing_ok=True)
        return None
    try:
        record.write_text(json.dumps(now | {"recorded_at": round(time.time(), 3)}, indent=2) + "\n")
    except OSError as e:  # a full disk: the run's own saves next say what is wrong
        return f"cannot record which model of {named} this run trains over in {record}: {e.strerror or e}"
    return None


def base_run_record(trained: Trained) -> Path | None:
    """The BASE_RUN record of an adapter: beside it (a run's final adapter), or above it (one of its checkpoints)."""
    for place in (trained.path, trained.path.parent):
        if (place / BASE_RUN).is_file():
            return place / BASE_RUN
        if not trained.path.name.startswith("checkpoint-"):
            break
    return None


def compared_base_trained_on(trained: Trained, base_path: str) -> str | None:
    """The warning of --compare (chat, eval) of a full-model run (fft/sft) trained over another run's final model
    that trained on since: the base it loads beside the run (``base_path``) is not the model the run started from.
    None for an adapter (loading it onto its base already said it: load), or where the base is the same."""
    record = None if trained.adapter else base_run_record(trained)
    return base_trained_on(record, base_run_model(base_path), compared=True) if record else None


def base_trained_on(record: Path, now: dict | None, resumed: bool = False, compared: bool = False) -> str | None:
    """The warning where another run's final model that the adapter of a run trained over (its ``record``, BASE_RUN
    at the top of that run's output: keep_base_run) is another since: that run trained on (relaunched with more
    steps, or again) and replaced it, so the adapter goes onto other weights than it trained with (explore64).
    ``now``: that model as it is (base_run_model of the base loaded). Told apart by its end record's step and time
    (the same in a copy of both runs), else by its weights files' sizes and mtimes. ``resumed``: said by the run
    going on over it. ``compared``: said by --compare of a full-model run (its weights are its own; the base loaded
    beside it is that run's model as it is now, no longer the one the run started from). None where it is the same,
    or either is unknown."""
    try:
        then = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    if now is None or not isinstance(then, dict) or not isinstance(then.get("run"), str) or _same_model(then, now):
        return None
    base, run = then["run"], record.parent
    was, is_now = _model_said(then), _model_said(now)
    if is_now == was:
        is_now = f"another {is_now}"
    line = f"{base} was trained on after {run} trained over it: its final model was {was}, and is {is_now} now"
    if compared:
        return (
            f"{line}, so --compare's base is that model as it is now, not the one {run} started from: the difference "
            f"is not what {run} learned. To compare with the model it started from, train {base} on into another "
            f"--output next time (-o resume={base}/checkpoint-N --output NEW)."
        )
    if resumed:
        return (
            f"{line}; this run's checkpoints trained over the first, the steps it trains now over the second (to "
            f"train all of them over one, start it again into another --output; to keep {base}'s model for the runs "
            f"over it, train {base} on into another --output next time: -o resume={base}/checkpoint-N --output NEW)"
        )
    return (
        f"{line}, so the adapter goes onto other weights than it trained with, and its answers and losses are not "
        f"the run's. Train it again over {base} as it is; next time train {base} on into another --output (-o "
        f"resume={base}/checkpoint-N --output NEW) to keep the model the runs over it trained with."
    )


def _same_model(then: dict, now: dict) -> bool:
    if then.get("ended_at") is not None and now.get("ended_at") is not None:  # its trainer's word: a copy keeps it
        sizes = [{n: v[0] for n, v in (r.get("weights") or {}).items() if v} for r in (then, now)]
        return (then.get("step"), then["ended_at"]) == (now.get("step"), now["ended_at"]) and sizes[0] == sizes[1]
    return then.get("weights") == now.get("weights")


def _model_said(model: dict) -> str:
    """ "step 4's (of 2026-12-07 16:14:22 UTC)": a final model as base_run_model tells it (its end record's time, else
    its newest weights file's mtime)."""
    step, when = model.get("step"), model.get("ended_at")
    if not isinstance(when, (int, float)):
        times = [v[1] for v in (model.get("weights") or {}).values() if isinstance(v, list) and len(v) == 2]
        when = max(times) if times else None
    what = f"step {step}'s" if isinstance(step, int) else "the one"
    return f"{what} (of {time.strftime('%Y-%m-%d %H:%M:%S %Z', time.localtime(when))})" if when else what


def retrained_final(output: str, checkpoint: str, max_steps: int, endpoint_url: str | None = None) -> str | None:
    """The warning where a run resumes its own ``checkpoint`` older than the final model its ``output`` holds (the
    newer checkpoints deleted, the final model kept): the steps between are trained again and the final model is
    replaced, where the resume said only what settings changed (explore64). The final model's step is its
    metrics.jsonl's end record's (final_end). None where the checkpoint is that step's or newer, or unknown."""
    from ftctl import storage
    from ftctl.checkpoints import checkpoint_step
    from ftctl.checkpoints.settings import final_saved

    name = os.path.basename(checkpoint.rstrip("/"))
    step = checkpoint_step(name)
    if step is None or not final_saved(output, endpoint_url):
        return None
    try:
        with storage.storage_errors(output, endpoint_url):  # a store's own errors as StorageError
            end = final_end(storage.read_text(storage.join(output, METRICS_FILE), endpoint_url))
    except (OSError, ValueError, KeyError, TypeError, FtctlError):
        return None
    final = end[0] if end else None
    if not isinstance(final, int) or final <= step:
        return None
    last = min(final, max_steps) if max_steps > 0 else final
    again = f"steps {step + 1}-{last}" if last > step + 1 else f"step {last}"
    many = last > step + 1
    return (
        f"{output}'s final model is step {final}'s; {name} is the newest kept: {again} {'are' if many else 'is'} "
        f"trained again, and {'their' if many else 'its'} final model replaces step {final}'s; another --output "
        f"keeps step {final}'s"
    )


def for_other_readers(directory) -> None:
    """A model or adapter directory just saved, made readable to the tools it is handed to next (explore17, explore27):
    its files as the umask lets files be, its tokenizer's class, extra special tokens and chat template, its RoPE
    settings and its dtype as transformers 4 reads them too (vLLM or TGI on it, mlx-lm, llama.cpp's
    convert_hf_to_gguf.py); its generation config stopping where the run's chat template ends a turn
    (stop_at_end_of_turn). What transformers 5 reads is unchanged."""
    directory = Path(directory)
    as_transformers_4_reads(directory)
    stop_at_end_of_turn(directory)
    as_umask(directory)  # the files written above too


def as_transformers_4_reads(directory) -> None:
    """A saved model's, adapter's or checkpoint's tokenizer and config as transformers 4 reads them too (its tokenizer
    class, extra special tokens and chat template; its RoPE settings and dtype): what for_other_readers does to the
    final model and a merge, and each checkpoint-N gets at its save (SFTTrainer._save), so that one served as it is
    (vLLM, TGI on transformers 4) reads the positions and the template the run trained with."""
    directory = Path(directory)
    _edit_json(
        directory / TOKENIZER_CONFIG,
        lambda config: _tokenizer_class_v4(config) | _special_tokens_v4(config) | _chat_template_v4(config, directory),
    )
    _edit_json(directory / MODEL_CONFIG, lambda config: _rope_v4(config) | _dtype_v4(config))


def _edit_json(path: Path, edit) -> None:
    """``edit(dict)`` -> whether it changed it; written back as transformers writes its JSON files."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if isinstance(data, dict) and edit(data):
        path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def _tokenizer_class_v4(config: dict) -> bool:
    """transformers 5 saves a tokenizer of the generic class (PreTrainedTokenizerFast: Llama 3's, the demo's) as
    "TokenizersBackend", which transformers 4 refuses ("Tokenizer class TokenizersBackend does not exist"); the old
    name loads the same tokenizer in both."""
    if config.get("tokenizer_class") != "TokenizersBackend":
        return False
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    return True


def _special_tokens_v4(config: dict) -> bool:
    """transformers 5 saves a tokenizer's extra special tokens (Qwen's <|im_start|>, the tiny model's) as a list under
    ``extra_special_tokens``, which transformers 4 takes for a dict of named tokens and refuses ("'list' object has
    no attribute 'keys'": vLLM or TGI on 4, mlx-lm, ml-explore/mlx-lm#661); both read the list as
    ``additional_special_tokens``, the same tokens."""
    extra = config.get("extra_special_tokens")
    if not isinstance(extra, list):
        return False
    additional = config.get("additional_special_tokens") or []
    config["additional_special_tokens"] = [*additional, *(t for t in extra if t not in additional)]
    del config["extra_special_tokens"]
    return True


def _chat_template_v4(config: dict, directory: Path) -> bool:
    """transformers 5 saves the chat template (the run's: its chat_template_path, or the Vicuna one a tokenizer without
    one is given) only as chat_template.jinja; TGI, mistral.rs, transformers before 4.43 and other readers of
    tokenizer_config.json find none there, and answer in another format than the model was trained on. Written there
    too (transformers 5 reads the .jinja first: the same text)."""
    try:
        template = (directory / CHAT_TEMPLATE_FILE).read_text()
    except OSError:
        return False
    if config.get("chat_template") == template:
        return False
    config["chat_template"] = template
    return True


def eos_ids(configured, tokenizer) -> list[int]:
    """Where an answer ends: ``configured`` (a generation config's eos_token_id: one id, several, or None), the
    tokenizer's eos and the special token its chat template closes an assistant turn with (masks.end_of_turn_ids: the
    <|im_end|> of Qwen's template over a base whose eos is <|endoftext|>, Llama 3's <|eot_id|>, Gemma's
    <end_of_turn>), each once, in that order."""
    from ftctl.trainer.masks import end_of_turn_ids

    ids = [configured] if isinstance(configured, int) else list(configured or [])
    ids += [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    return list(dict.fromkeys(ids + end_of_turn_ids(tokenizer)))


def as_saved_for_others(model, tokenizer) -> None:
    """What every save of a full model being trained (each checkpoint-N, the final one) tells the tool it is loaded in
    next: its generation config stopping where the chat template ends a turn (eos_ids). An adapter's base keeps its
    own: each save of the adapter writes the edited copy beside it (adapter_stops). An adapter's base is named as the
    user named it by name_base, after each save: named so in PEFT's config before the save, PEFT asked the Hub for the
    base's config.json at every checkpoint (a node offline printed two warnings a save)."""
    if hasattr(model, "get_base_model"):
        return
    if (config := getattr(model, "generation_config", None)) is not None:
        config.eos_token_id = eos_ids(config.eos_token_id, tokenizer)


def adapter_stops(directory, model, tokenizer) -> None:
    """An adapter just saved in ``directory`` (each checkpoint-N, the final one) gets its base's generation config
    stopping where the chat template ends a turn, where that adds an id (as stop_at_end_of_turn writes it): taken from
    the base in memory, as the run loaded it, not from the base the adapter names. On a SkyPilot node the adapter
    names the laptop's path of a shipped base (the node loaded its inputs/ copy), which is not there to read: the
    adapter had no generation_config.json, and vLLM and generate() ran past the turn's end."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else None
    config = getattr(inner, "generation_config", None)
    if config is None or tokenizer is None or not Path(directory, ADAPTER_CONFIG).is_file():
        return
    configured = config.eos_token_id
    ids = eos_ids(configured, tokenizer)
    if ids == ([configured] if isinstance(configured, int) else list(configured or [])):
        return
    edited = copy.deepcopy(config)
    edited.eos_token_id = ids
    try:
        edited.save_pretrained(directory)
    except ValueError as e:  # a base's config transformers will not write back: the save goes on without it
        log.warning("%s: no %s written beside the adapter: %s", directory, GENERATION_CONFIG, e)


def name_base(directory, base: str, revision: str | None = None) -> None:
    """An adapter saved in ``directory`` names its base as the user did (base_model_name_or_path): PEFT records the
    path it loaded, the demo model's cache directory or a SkyPilot node's copy of a shipped one, which no other
    machine has; merge and PEFT elsewhere resolve the id. ``revision``, the commit launch pinned the base at, as
    PEFT's own ``revision`` key, which AutoPeftModelForCausalLM loads the base at (without it, the Hub's main of that
    day). Nothing where ``directory`` holds no adapter."""
    config = Path(directory, ADAPTER_CONFIG)
    if config.is_file():
        data = json.loads(config.read_text())
        named = {"base_model_name_or_path": base} | ({"revision": revision} if revision else {})
        if any(data.get(key) != value for key, value in named.items()):
            config.write_text(json.dumps(data | named, indent=2, sort_keys=True) + "\n")


def stop_at_end_of_turn(directory: Path) -> None:
    """The saved model's generation_config.json stopping where its chat template ends an assistant turn (eos_ids):
    transformers' generate(), pipeline("text-generation") and vLLM stop at its eos_token_id (and the tokenizer's eos),
    not at what `ftctl chat` stops at, so a run that taught a base whose eos is another token (Qwen2.5's, Llama 3's,
    Gemma's base; a chat_template_path of another model) to end its answers with the template's token never stopped
    there. An adapter's directory got its base's so edited at its save (adapter_stops: vLLM --generation-config RUN;
    transformers GenerationConfig.from_pretrained(RUN)); its base is not read again here (on a node offline, a base
    named by its Hub id was asked of the Hub, with retries, at the final save)."""
    from transformers import AutoTokenizer

    if not (directory / TOKENIZER_CONFIG).is_file() or not (directory / GENERATION_CONFIG).is_file():
        return
    said = logging.getLogger("transformers")  # the tokenizer is read again only for its template and ids
    level = said.level
    said.setLevel(logging.ERROR)
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory)
        configured = json.loads((directory / GENERATION_CONFIG).read_text()).get("eos_token_id")
    except Exception as e:  # noqa: BLE001  no tokenizer to read here: the directory as saved (a finished run)
        log.debug("generation config of %s left as saved: %s", directory, e)
        return
    finally:
        said.setLevel(level)
    ids = eos_ids(configured, tokenizer)
    if ids != ([configured] if isinstance(configured, int) else list(configured or [])):
        _edit_json(directory / GENERATION_CONFIG, lambda saved: saved.update(eos_token_id=ids) or True)


def _rope_v4(config: dict) -> bool:
    """transformers 5 writes RoPE's settings only in ``rope_parameters``; transformers 4 reads ``rope_theta`` (and
    ``rope_scaling``, ``partial_rotary_factor``) at the top and, without them, silently takes its default base (SmolLM2's
    100000 read as 10000: wrong positions). Written beside them where absent; 5 reads ``rope_parameters`` first."""
    rope = config.get("rope_parameters")
    if not isinstance(rope, dict) or not isinstance(rope.get("rope_theta"), (int, float)) or "rope_theta" in config:
        return False  # none, per layer type (nested), or said at the top already
    config["rope_theta"] = rope["rope_theta"]
    if "partial_rotary_factor" in rope and "partial_rotary_factor" not in config:
        config["partial_rotary_factor"] = rope["partial_rotary_factor"]
    scaling = {k: v for k, v in rope.items() if k not in ("rope_theta", "partial_rotary_factor")}
    if scaling.get("rope_type", "default") != "default" and not config.get("rope_scaling"):
        config["rope_scaling"] = scaling
    return True


def _dtype_v4(config: dict) -> bool:
    """transformers 5 writes the weights' dtype as ``dtype``; transformers 4 reads ``torch_dtype`` (vLLM and TGI serve
    a model in it, and take fp32 for a config without it). Written beside it, the same."""
    if not isinstance(config.get("dtype"), str) or config.get("torch_dtype") == config["dtype"]:
        return False
    config["torch_dtype"] = config["dtype"]
    return True


def tokenizer_source(trained: Trained) -> str:
    """Where the run's tokenizer is: saved beside the weights (with the chat template the run trained with),
    else the base's (at the commit the run pinned, where the cache holds it)."""
    if (trained.path / TOKENIZER_CONFIG).is_file() or not trained.adapter:
        return str(trained.path)
    base = resolve_base(trained)
    if (revision := trained.base_revision) and not Path(base).expanduser().is_dir():
        from ftctl import hub

        return hub.cached_snapshot(base, revision) or base  # the commit the run pinned, as load read its weights
    return base


# what a checkpoint holds for a resume only: the Trainer's optimizer, scheduler, scaler and rng states, FSDP's copy of
# the weights in its own format (Accelerate's names too); ~12 bytes a parameter of an fft run's, 96 GB for 8B, where
# its weights are 16 GB. Loading (chat, eval) and merging read none of it. DeepSpeed's global_step*/ are directories,
# which download_top leaves too.
TRAINING_STATE = re.compile(
    r"(optimizer|scheduler|scaler)(_\d+)?\.(pt|bin)|rng_state(_\d+)?\.pth|pytorch_model_fsdp.*\.bin"
)


def download_top(uri: str, local: str, endpoint_url: str | None = None) -> str:
    """The top-level files of a run in object storage (its final model or adapter, tokenizer, spec.json), or of
    one of its checkpoints but its training state (TRAINING_STATE: what only a resume reads), into ``local``;
    returns ``local``. Its checkpoints stay where they are: a run with no final model yet is pulled with
    `ftctl sync pull`."""
    from ftctl import storage

    with storage.storage_errors(uri, endpoint_url):
        entries = [e for e in storage.ls(uri, endpoint_url) if e["type"] == "file"]
        for entry in entries:
            if TRAINING_STATE.fullmatch(entry["name"]):
                continue
            storage.get_file(
                storage.join(uri, entry["name"]), str(Path(local) / entry["name"]), endpoint_url=endpoint_url
            )
    if not any(e["name"] in (ADAPTER_CONFIG, MODEL_CONFIG) for e in entries):
        raise FtctlError(
            f"{uri} holds no final model or adapter (a run still training, or not a run): `ftctl sync pull {shlex.quote(uri)} DIR` "
            "downloads its complete checkpoints; then pass DIR."
        )
    return local
