"""A finished run's staging directory given back once its object store holds the run.

A run into object storage is staged on each node's disk (trainer.run.output_dirs: FTCTL_CACHE/runs/...): its
newest checkpoints (save_total_limit of them) and its final model, each uploaded as it is written. Kept after the
run, they held ~100 GB a finished 7B fft run in a cache the user never looks at, one run after another, while nothing
reads them once the run is complete: a relaunch of a finished run is refused, chat/eval/merge of the store's URL
download what they load, and a resume with more steps downloads the store's newest checkpoint.

:func:`free` removes them, only what the store is seen to hold (never trusted from this node's records): the final
model whose every file is in the store at its size, its config there (runpaths.FINAL_MARKS); each checkpoint whose
every file this node holds is listed with the same sha256 and size in the store's committed manifest, that checkpoint
complete there (sizes). Nothing is removed unless the store holds the final model and this node's newest checkpoint.
An older checkpoint that the store does not hold at all, in a run with a save_total_limit (its spec.json here), is
one the limit dropped from the store while this node kept it where the store committed it once (this node's record
of its uploads, resume.uploaded: its retention at the run's end deleted it) or holds as many newer ones as the limit
keeps (an upload skipped as superseded): with held-out evaluation the Trainer keeps two here
(spec.RunSpec.checkpoints_kept) where the store keeps one, and the best one as it was at the last save. It is removed
too, said apart ("dropped"). Without a limit, or where its upload failed and the store holds fewer newer ones than
the limit keeps (this copy is the only one of a checkpoint the limit keeps), it is kept.
The run's records stay (spec.json, metrics.jsonl, train.log, TensorBoard/W&B files, .ftctl/): `ftctl status` and
`ftctl logs` read them here.

While the run trains, its staging holds what a local output would (preflight.disk_need): the newest
save_total_limit checkpoints (the sync callback rotates them once the next is complete) and the one being written,
at the end the final model beside them. The uploader sends each checkpoint from hard links of its files in
.ftctl-upload/, removed once that checkpoint is in the store: a checkpoint rotated away before its upload keeps its
space until then, so the disk holds more only while the uploads fall behind the saves (plan.checkpoint_cost says
where they would). STAGING_ENV names another directory for it (trainer.run.output_dirs).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass, field

from ftctl import storage
from ftctl.checkpoints.manifest import DELETING_DIR, checkpoint_step, is_manifest, read_manifest
from ftctl.checkpoints.resume import list_checkpoints, uploaded
from ftctl.checkpoints.upload import final_files
from ftctl.runpaths import FINAL_MARKS, LOCAL_LOG_FILE, METRICS_FILE, SPEC_FILE, TRACKING_DIRS

log = logging.getLogger(__name__)

RECORDS = (SPEC_FILE, METRICS_FILE, LOCAL_LOG_FILE)  # kept, with TRACKING_DIRS: read here by status and logs
STAGING_ENV = "FTCTL_LOCAL_DIR"  # where a store run is staged (default FTCTL_CACHE/runs/<slug>-<digest>)
KEEP_KEY = "keep_staging"  # the run key that keeps the staging (RunSpec.keep_staging)


@dataclass
class Freed:
    """What :func:`free` removed (names in the staging directory, and the bytes they held), and why it left the rest."""

    removed: list[str] = field(default_factory=list)
    size: int = 0
    kept: str = ""  # why nothing was removed, or what was left: "" where everything staged went
    dropped: list[str] = field(default_factory=list)  # removed too: checkpoints save_total_limit dropped from the store
    limit: int | None = None  # that save_total_limit

    def line(self, local_dir: str, remote_uri: str) -> str:
        """One line for the run's log; "" where nothing was staged."""
        if not self.removed and not self.kept:
            return ""
        if not self.removed:
            return f"kept the run's staging in {local_dir}: {self.kept}"
        what = ", ".join(self.removed)
        dropped = ""
        if self.dropped:
            them = ", ".join(self.dropped)
            dropped = f", and {them}, which save_total_limit={self.limit} had dropped from the store"
        left = f"; kept {self.kept}" if self.kept else ""
        return (
            f"freed {storage.size_text(self.size)} on this disk: {what} staged in {local_dir}, all in {remote_uri} "
            f"(-o {KEEP_KEY}=true keeps them){dropped}{left}"
        )


def _record(rel: str) -> bool:
    return rel in RECORDS or rel.split("/", 1)[0] in TRACKING_DIRS


def _size(path: str) -> int:
    total = 0
    for top, _, names in os.walk(path):
        for name in names:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(top, name)).st_size
    return total


def _local_entries(ckpt: str) -> dict[str, dict] | None:
    """{path: manifest entry} of this node's manifests of checkpoint directory ``ckpt`` (ftctl-manifest.json, or a
    node's manifest.node-K.json); None where it holds none that reads (never committed here)."""
    entries: dict[str, dict] = {}
    found = False
    for name in os.listdir(ckpt):
        if is_manifest(name):
            try:
                manifest = read_manifest(ckpt, name)
            except (OSError, ValueError, UnicodeDecodeError):
                return None
            found = True
            for entry in manifest["files"]:
                entries[entry["path"]] = entry
    return entries if found else None


NOT_IN_STORE = "not committed in the store"


def _limit(local_dir: str) -> int | None:
    """The run's save_total_limit as the spec.json staged in ``local_dir`` says; None where it keeps every checkpoint
    or that cannot be read."""
    try:
        with open(os.path.join(local_dir, SPEC_FILE)) as f:
            limit = json.load(f)["spec"].get("save_total_limit")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return limit if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0 else None


def _in_store(ckpt: str, stored) -> str | None:
    """Why checkpoint directory ``ckpt`` is not the store's ``stored`` (a CheckpointInfo or None); None where every
    file of it is in the store's committed manifest with this node's manifest's sha256 and its size here."""
    if stored is None or stored.manifest is None:
        return NOT_IN_STORE
    if not stored.complete:
        return f"not whole in the store: {stored.problems[0]}"
    mine = _local_entries(ckpt)
    if mine is None:
        return "not committed on this disk"
    theirs = {entry["path"]: entry for entry in stored.manifest["files"]}
    for rel in storage.local_files(ckpt):
        if is_manifest(rel):
            continue
        here, there = mine.get(rel), theirs.get(rel)
        if here is None:
            return f"its {rel} is in no manifest here"
        size = os.path.getsize(os.path.join(ckpt, *rel.split("/")))
        if there is None or there["sha256"] != here["sha256"] or there["size"] != size:
            return f"its {rel} is not the store's"
    return None


def free(local_dir: str, remote_uri: str, endpoint_url: str | None = None) -> Freed:
    """Remove the checkpoints and the final model staged in ``local_dir`` that ``remote_uri`` holds (the module's
    docstring says how that is checked): call it on each node, once per directory, after the run's final model is
    committed. The store's errors are raised (the caller keeps everything and says so)."""
    stored_files = storage.file_sizes(remote_uri, endpoint_url)
    stored = {info.name: info for info in list_checkpoints(remote_uri, endpoint_url=endpoint_url)}
    here = sorted(
        (name for name in os.listdir(local_dir) if checkpoint_step(name) is not None),
        key=checkpoint_step,
    )
    here = [name for name in here if os.path.isdir(os.path.join(local_dir, name))]
    final = [rel for rel in final_files(local_dir) if not _record(rel)]
    if final:  # rank 0's directory (other nodes hold no final model): the store's must be whole
        if not any(mark in stored_files for mark in FINAL_MARKS):
            return Freed(kept=f"{remote_uri} holds no final model")
        for rel in final:
            size = os.path.getsize(os.path.join(local_dir, *rel.split("/")))
            if stored_files.get(rel) != size:
                return Freed(kept=f"{remote_uri} does not hold the final model's {rel} whole")
    why = {name: _in_store(os.path.join(local_dir, name), stored.get(name)) for name in here}
    if here and why[here[-1]]:
        return Freed(kept=f"its newest checkpoint, {here[-1]}, is {why[here[-1]]}")
    freed = Freed(limit=_limit(local_dir))
    committed = uploaded(local_dir) if freed.limit else set()  # the store held them once: gone since, its limit's
    for name in here:
        # older than here[-1], which is in the store; one whose upload failed, within the limit, is the only copy
        newer = sum(
            1 for s, info in stored.items() if info.complete and (checkpoint_step(s) or 0) > checkpoint_step(name)
        )
        if (
            why[name] == NOT_IN_STORE
            and name not in stored
            and freed.limit
            and (name in committed or newer >= freed.limit)
        ):
            path = os.path.join(local_dir, name)
            freed.size += _size(path)
            remove_checkpoint(path)
            freed.dropped.append(name)
            continue
        if why[name]:
            freed.kept = ", ".join(filter(None, [freed.kept, f"{name} ({why[name]})"]))
            continue
        path = os.path.join(local_dir, name)
        size = _size(path)
        remove_checkpoint(path)
        freed.removed.append(name)
        freed.size += size
    if final:
        # its config first: a removal cut short leaves no config beside part of the weights (a "final model")
        for rel in sorted(final, key=lambda rel: rel not in FINAL_MARKS):
            path = os.path.join(local_dir, *rel.split("/"))
            with contextlib.suppress(OSError):
                freed.size += os.path.getsize(path)
                os.unlink(path)
        for top in {rel.split("/", 1)[0] for rel in final if "/" in rel}:
            with contextlib.suppress(OSError):
                shutil.rmtree(os.path.join(local_dir, top))
        freed.removed.append("the final model")
    return freed


def remove_checkpoint(path: str) -> None:
    """Delete a checkpoint directory so that a kill at any moment leaves it whole or gone: moved out of the run's
    checkpoints first (into DELETING_DIR, which the next resume clears), then deleted. Deleted in place (transformers'
    rotation), a kill halfway left checkpoint-N with part of its files, and its manifest or not: the resume took a
    newer one, and nothing ever removed it (`ftctl sync ls` listed it incomplete for good)."""
    aside = os.path.join(os.path.dirname(path), DELETING_DIR)
    trash = os.path.join(aside, f"{os.path.basename(path)}-{uuid.uuid4().hex[:8]}")
    try:
        os.makedirs(aside, exist_ok=True)
        os.replace(path, trash)
    except FileNotFoundError:  # gone already
        trash = None
    except OSError as e:  # cannot be moved (a file system without rename of directories): deleted where it is
        log.debug("cannot move %s aside (%s): deleted in place", path, e)
        trash = path
    if trash:
        shutil.rmtree(trash, ignore_errors=True)
    with contextlib.suppress(OSError):  # where nothing else is being deleted: no empty directory left in the run
        os.rmdir(aside)


def clean(runs_dir, echo=print) -> int:
    """`ftctl sync clean`: :func:`free` on each of this user's staging directories under ``runs_dir`` (FTCTL_CACHE/runs:
    runs finished before their trainer freed its own, or with -o keep_staging=true), one line each where it freed
    or kept something; a run training there now (its trainer's lock held) is left alone. Returns the bytes freed."""
    import fcntl
    import json
    from pathlib import Path

    from ftctl.runpaths import RunPaths, open_lock

    total = 0
    try:
        dirs = sorted(p for p in Path(runs_dir).iterdir() if p.is_dir() and p.stat().st_uid == os.getuid())
    except OSError:  # no runs staged here yet
        dirs = []
    for root in dirs:
        try:
            spec = json.loads((root / SPEC_FILE).read_text())["spec"]
            output, endpoint = spec["output_dir"].rstrip("/"), spec.get("s3_endpoint_url")
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue  # not a run's staging
        if not storage.is_remote(output):
            continue
        try:
            lock = open_lock(RunPaths(root).train_lock)
        except OSError:  # no .ftctl/: no trainer ever held it
            lock = None
        try:
            if lock is not None:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    echo(f"left {root}: a run is training into {output} from it now")
                    continue
            try:
                freed = free(str(root), output, endpoint)
            except Exception as exc:  # noqa: BLE001 - the store's own errors: nothing removed, said
                echo(f"kept {root}: cannot check what {output} holds ({storage.redact(str(exc))[:300]})")
                continue
        finally:
            if lock is not None:
                lock.close()
        if line := freed.line(str(root), output):
            echo(line.replace(f" (-o {KEEP_KEY}=true keeps them)", ""))
        total += freed.size
    echo(f"freed {storage.size_text(total)} in {runs_dir}" if total else f"nothing to free in {runs_dir}")
    return total
