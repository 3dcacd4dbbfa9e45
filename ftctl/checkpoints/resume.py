"""Which checkpoint a run resumes from: the newest complete one, local or remote, never a partial
one (broken local ones are quarantined, remote ones downloaded and verified first)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from ftctl import failures, lease, storage
from ftctl.checkpoints.manifest import (
    CHECKPOINT_PREFIX,
    DOWNLOAD_DIR,
    MANIFEST,
    QUARANTINE_DIR,
    checkpoint_step,
    is_manifest,
    nodes_committed,
    read_manifest,
    sha256_file,
    verify,
    verify_against,
    write_json_atomic,
)
from ftctl.errors import FtctlError
from ftctl.runpaths import UPLOADED_RECORD

log = logging.getLogger(__name__)

# a store's manifests read at once by list_checkpoints: one after another, 300 checkpoints took `ftctl sync ls` 9.6 s
# on a loopback S3 server (two requests each, ~30 ms; more from a laptop to a cloud's store)
MANIFEST_READS = 16


# ---------------------------------------------------------------- listing


@dataclass
class CheckpointInfo:
    """One ``checkpoint-<step>`` below a run directory or URI."""

    step: int
    complete: bool
    problems: list[str]
    uri: str
    size: int = 0
    manifest: dict | None = field(default=None, repr=False)
    by_nodes: bool = False  # ``manifest`` merged from its nodes' manifests (nodes_committed): no ftctl-manifest.json

    @property
    def name(self) -> str:
        return f"{CHECKPOINT_PREFIX}{self.step}"


def list_checkpoints(uri: str, deep: bool = False, endpoint_url: str | None = None) -> list[CheckpointInfo]:
    """Every ``checkpoint-<step>`` below a local run directory or object-store URI, oldest first.

    ``complete`` means the manifest is there and every file it lists is present with its size
    (and, with ``deep``, its sha256). One listing of the whole run plus one read per manifest (a store's: MANIFEST_READS
    at once).
    """
    per_ckpt: dict[str, dict[str, int]] = {}
    for rel, size in storage.file_sizes(uri, endpoint_url).items():
        head, _, rest = rel.partition("/")
        if rest and checkpoint_step(head) is not None:
            per_ckpt.setdefault(head, {})[rest] = size
    if not storage.is_remote(uri):
        # empty local checkpoint directories count too (a save that died at once)
        fs, root = storage.filesystem(uri, endpoint_url)
        if os.path.isdir(root):
            for name in os.listdir(root):
                if checkpoint_step(name) is not None and os.path.isdir(os.path.join(root, name)):
                    per_ckpt.setdefault(name, {})

    def info(name: str, sizes: dict[str, int]) -> CheckpointInfo:
        ckpt_uri = storage.join(uri, name)
        manifest = None
        if MANIFEST not in sizes:
            problems = [f"no {MANIFEST} (incomplete: stopped before it was committed)"]
        else:
            try:
                manifest = read_manifest(ckpt_uri, endpoint_url=endpoint_url)
                problems = verify_against(ckpt_uri, manifest, deep, endpoint_url, sizes)
            except FileNotFoundError as exc:  # gone since it was listed (set aside by another node, or retention's)
                problems = [f"gone while it was listed ({os.path.basename(str(exc.filename or MANIFEST))})"]
            except (ValueError, json.JSONDecodeError, UnicodeDecodeError) as exc:
                problems = [f"unreadable {MANIFEST}: {exc}"]
        return CheckpointInfo(
            step=checkpoint_step(name),
            complete=not problems,
            problems=problems,
            uri=ckpt_uri,
            size=sum(sizes.values()),
            manifest=manifest,
        )

    if storage.is_remote(uri) and len(per_ckpt) > 1:  # a request or two each: asked at once, not one after another
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(min(len(per_ckpt), MANIFEST_READS)) as pool:
            out = list(pool.map(info, per_ckpt, per_ckpt.values()))
    else:
        out = [info(name, sizes) for name, sizes in per_ckpt.items()]
    return sorted(out, key=lambda c: c.step)


def _list_remote_or_fail(remote_uri: str, endpoint_url=None, attempts: int = 3):
    """The store's checkpoints of a run that resumes. Where they cannot be listed, a store's failure is its one line
    (storage.store_error, as `ftctl sync ls` says it): ftctl does not start from scratch beside a store it cannot
    read."""
    for i in range(attempts):
        try:
            return list_checkpoints(remote_uri, endpoint_url=endpoint_url)
        except Exception as exc:  # noqa: BLE001 - any store error, reported below
            err = exc
            if i + 1 < attempts:
                time.sleep(2**i)
    refusal = "ftctl does not start from scratch while the run's checkpoints in the store cannot be read."
    if (down := storage.store_down(err, remote_uri, endpoint_url)) and (why := lease.resuming()):
        # a requeued attempt whose store went down after it took the lease: tried again later, as lease.Holder.take
        raise lease.LeaseLost(
            f"{down.what}, as this attempt listed the checkpoints it resumes ({why}): not training. Ended as a "
            f"preempted run (exit {lease.UNREACHED_EXIT}) for the scheduler to try again once the store answers.",
            requeue=True,
        ) from err
    if said := storage.store_error(err, remote_uri, endpoint_url):
        raise storage.StorageError(said.kind, said.what, f"{said.fix} {refusal}") from err
    raise FtctlError(
        f"Cannot list the checkpoints in {remote_uri}: {storage.redact(str(err))}. Check the "
        f"endpoint (AWS_ENDPOINT_URL) and credentials; {refusal}"
    ) from err


# ---------------------------------------------------------------- resume


def _quarantine(path: str, why: str) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    dest = os.path.join(parent, QUARANTINE_DIR, f"{os.path.basename(path)}-{int(time.time())}")
    if os.path.exists(dest):  # one of the same name set aside this second
        dest += f"-{uuid.uuid4().hex[:8]}"
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    try:
        os.replace(path, dest)
    except FileNotFoundError:
        if os.path.lexists(path):
            raise
        # another node of a shared home set it aside after this one listed it (a lock that holds on each node only)
        log.info("%s: set aside already (by another process of %s)", path, parent)
        return
    size = sum(f.stat().st_size for f in Path(dest).rglob("*") if f.is_file()) if os.path.isdir(dest) else 0
    log.warning(
        "moved %s to %s (%s; %s kept, never read again: rm -r %s where it is not wanted)",
        path, dest, why, storage.size_text(size), shlex.quote(os.path.dirname(dest)),
    )  # fmt: skip


def download_checkpoint(
    ckpt_uri: str, local_dir: str, manifest: dict | None = None, endpoint_url: str | None = None
) -> list[str]:
    """Download the files a remote checkpoint's manifest lists into ``local_dir/<name>``,
    verify their sha256 and only then move the directory into place.

    Returns the problems (``[]`` on success; the local directory is then complete). Its files come
    storage.files_at_once at a time.
    """
    name = os.path.basename(ckpt_uri.rstrip("/"))
    if manifest is None:
        try:
            manifest = read_manifest(ckpt_uri, endpoint_url=endpoint_url)
        except FileNotFoundError:
            return [f"no {MANIFEST} (incomplete: stopped before it was committed)"]
    if bad := [entry.get("path") for entry in manifest["files"] if storage.outside(entry.get("path"))]:
        return [  # before anything is written: a name with '..' wrote its file outside local_dir, checked or not
            f"its manifest names {bad[0]!r}, a file outside the checkpoint (no ftctl writes such a name): nothing "
            "downloaded; look at who else writes to this store"
        ]
    tmp = os.path.join(local_dir, DOWNLOAD_DIR, name)
    shutil.rmtree(tmp, ignore_errors=True)
    final = os.path.join(local_dir, name)
    fs, _ = storage.filesystem(ckpt_uri, endpoint_url)
    kept = set()  # files of this node's copy that are the store's (its own share of the checkpoint): not downloaded

    def fetch(entry: dict) -> None:
        parts = entry["path"].split("/")
        if _same_file(os.path.join(final, *parts), entry, os.path.join(tmp, *parts)):
            kept.add(entry["path"])
            return
        try:
            storage.get_file(storage.join(ckpt_uri, *parts), os.path.join(tmp, *parts), fs=fs, size=entry["size"])
        except FileNotFoundError as exc:  # which one, of those at once (the store's message names none)
            raise FileNotFoundError(f"{entry['path']}: {exc}") from exc

    try:  # a failure raised once no file is under way
        at_once = storage.files_at_once(ckpt_uri)
        storage.each_at_once(fetch, storage.by_size(manifest["files"], at_once), at_once)
        write_json_atomic(os.path.join(tmp, MANIFEST), manifest)
    except FileNotFoundError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        return [f"a file vanished while downloading: {exc}"]
    except OSError as exc:  # a full disk: one line, and no partial download left taking its room
        shutil.rmtree(tmp, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(tmp))
        raise_if_full(exc, local_dir, sum(entry["size"] for entry in manifest["files"]), f"download {name}")
        raise
    problems = verify_against(tmp, manifest, deep=True, check_step=False)
    if problems:
        shutil.rmtree(tmp, ignore_errors=True)
        return problems
    if os.path.exists(final):
        if _only(final, kept):  # every file of it is in the new copy: nothing of it is lost
            old = tmp + ".old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
            if kept:
                log.info("%s: completed from %s (%d file(s) of this copy kept)", final, ckpt_uri, len(kept))
        else:
            _quarantine(final, f"replaced by the complete copy from {ckpt_uri}")
    if not os.path.exists(final):
        os.replace(tmp, final)
    try:
        os.rmdir(os.path.dirname(tmp))
    except OSError:
        pass
    return []


def raise_if_full(exc: OSError, local_dir: str, need: int, what: str, clear=None) -> None:
    """Raise the one line of a download into ``local_dir`` that failed for want of room (failures.disk_full), named
    by ``local_dir``, not by the partial file its caller removed; return where ``exc`` is no full disk. ``clear``:
    failures.disk_full's (what the failed copy left, removed)."""
    said = OSError(exc.errno, exc.strerror)
    if line := failures.disk_full(said, local_dir, need, f"free some space there to {what}", clear):
        raise FtctlError(line) from exc


def _same_file(path: str, entry: dict, link: str) -> bool:
    """Whether ``path`` holds the file a manifest entry lists (size, then sha256); then hard-linked (or copied) to
    ``link``."""
    try:
        if os.path.getsize(path) != entry["size"] or sha256_file(path) != entry["sha256"]:
            return False
    except OSError:
        return False
    os.makedirs(os.path.dirname(link), exist_ok=True)
    try:
        os.link(path, link)
    except OSError:
        shutil.copyfile(path, link)
    return True


def _only(ckpt_dir: str, kept: set[str]) -> bool:
    """Whether every file of ``ckpt_dir`` is one of ``kept`` or a manifest."""
    return all(rel in kept or is_manifest(rel) for rel in storage.local_files(ckpt_dir))


def _other_files(here: CheckpointInfo, there: CheckpointInfo) -> bool:
    """Whether two complete copies of one checkpoint name hold other files (sha256s): two runs' checkpoint-N."""
    if not ((here.complete or here.by_nodes) and there.complete and here.manifest and there.manifest):
        return False
    return {(f["path"], f["sha256"]) for f in here.manifest["files"]} != {
        (f["path"], f["sha256"]) for f in there.manifest["files"]
    }


def uploaded(local_dir: str) -> set[str]:
    """The checkpoints of the run staged in ``local_dir`` that its store committed (upload.remember_uploaded)."""
    try:
        names = Path(local_dir, UPLOADED_RECORD).read_text().split()
    except OSError:
        return set()
    return {name for name in names if checkpoint_step(name) is not None}  # not a line an append left cut short


def forget_uploaded(local_dir: str, names: set[str]) -> None:
    path = Path(local_dir, UPLOADED_RECORD)
    kept = sorted(uploaded(local_dir) - names, key=checkpoint_step)
    try:
        path.write_text("".join(f"{name}\n" for name in kept))
    except OSError as e:  # the checkpoints are set aside already: the note only spares a later resume the question
        log.warning("cannot rewrite %s: %s", path, e)


def set_aside(paths: list[str], why: str, local_dir: str) -> None:
    """Move ``local_dir``'s checkpoint copies ``paths`` to its quarantine (nothing is deleted): an earlier run's that
    its store no longer holds; no longer counted as uploaded."""
    for path in paths:
        _quarantine(path, why)
    if paths and (sent := {os.path.basename(p) for p in paths} & uploaded(local_dir)):
        forget_uploaded(local_dir, sent)


def latest_complete(
    local_dir: str, remote_uri: str | None = None, endpoint_url: str | None = None, step: int | None = None
) -> str | None:
    """The local path of the newest complete, verified checkpoint, or None.

    Candidates are the local ``checkpoint-*`` directories of ``local_dir`` and, with
    ``remote_uri``, those in the store; for each step from the newest down, a local copy that
    verifies (sha256) wins, else the remote one is downloaded and verified. A local copy of a multi-node checkpoint
    without ftctl-manifest.json counts where it holds every node's manifest of one attempt and their files
    (nodes_committed: a disk the nodes share); it then gets the merged manifest. Every incomplete or
    corrupted checkpoint passed over is logged as a warning naming it; broken local ones are moved
    to ``<local_dir>/.ftctl-quarantine`` so the resumed run can save that step afresh. Where the store's output was
    deleted or replaced since (a local copy newer than the store's newest that its store once committed, or a
    local copy of the store's checkpoint-N with other files), the local copies are an earlier run's: not taken.

    ``step``: only checkpoint-<step>, which another process chose (a node of its own disk follows rank 0); local
    copies of later steps are passed over as above, and FtctlError says why where it cannot be had here.
    """
    os.makedirs(local_dir, exist_ok=True)
    local = {c.step: c for c in list_checkpoints(local_dir)}
    for c in local.values():
        if c.manifest is None and (merged := nodes_committed(c.uri)):
            c.manifest, c.by_nodes = merged, True
    remote = {}
    if remote_uri:
        remote = {c.step: c for c in _list_remote_or_fail(remote_uri, endpoint_url)}
        # the output in the store deleted or replaced since: the node's copies are an earlier run's, never this one's
        newest, sent = max(remote, default=-1), uploaded(local_dir)
        if gone := [local.pop(s).uri for s in sorted(local) if s > newest and local[s].name in sent]:
            log.warning(
                "%s: uploaded to %s before, and the store no longer holds them (its output deleted or replaced "
                "since): an earlier run's, not resumed",
                ", ".join(os.path.basename(g) for g in gone),
                remote_uri,
            )
            set_aside(gone, f"gone from {remote_uri}", local_dir)
        for s in [s for s in local if s in remote and _other_files(local[s], remote[s])]:
            log.warning("%s here is not the store's (another run's since): the store's is taken", local[s].name)
            del local[s]  # the store's is downloaded and replaces it (download_checkpoint quarantines this one)
    reasons = []
    for s in sorted(set(local) | set(remote), reverse=True):
        if step is not None and s < step:
            break
        if step is not None and s > step:  # this node's share of a checkpoint the run did not commit
            if s in local and os.path.isdir(local[s].uri):
                log.warning(
                    "skipping %s: newer than %s%d, which the run resumes", local[s].uri, CHECKPOINT_PREFIX, step
                )
                _quarantine(local[s].uri, "incomplete")
            continue
        reasons = []
        if s in local:
            c = local[s]
            problems = verify_against(c.uri, c.manifest, deep=True) if c.by_nodes else verify(c.uri, deep=True)
            if not problems:
                if c.by_nodes:  # the commit the store got, on this copy too
                    write_json_atomic(os.path.join(c.uri, MANIFEST), c.manifest)
                    log.info(
                        "resuming from %s (local, verified: committed by its %d nodes' manifests)",
                        c.uri,
                        c.manifest["num_nodes"],
                    )
                else:
                    log.info("resuming from %s (local, verified)", c.uri)
                return c.uri
            reasons.append(f"local {c.uri}: {'; '.join(problems)}")
        if s in remote:
            r = remote[s]
            problems = r.problems or download_checkpoint(r.uri, local_dir, r.manifest, endpoint_url)
            if not problems:
                path = os.path.join(local_dir, r.name)
                log.info("resuming from %s (downloaded from %s, verified)", path, r.uri)
                return path
            reasons.append(f"remote {r.uri}: {'; '.join(problems)}")
        log.warning("skipping %s%d: %s", CHECKPOINT_PREFIX, s, " | ".join(reasons))
        if s in local and os.path.isdir(local[s].uri):
            _quarantine(local[s].uri, "incomplete or corrupted")
    if step is not None:
        raise FtctlError(
            f"rank 0 resumes from {CHECKPOINT_PREFIX}{step}, and {local_dir} has no verified copy of it"
            + (f" nor can it be downloaded ({' | '.join(reasons)})" if reasons else f" and {remote_uri} none")
            + ": give every node the run's output directory or an object-store --output."
        )
    return None


def none_verified(remote_uri: str, endpoint_url: str | None = None) -> str | None:
    """Why a run whose resume took no checkpoint (latest_complete: None) must not start from step 0: ``remote_uri``
    lists committed checkpoints (their manifests, every file at its size), each passed over as it was downloaded (a
    file not matching its sha256, or one the store would not give). Training from step 0 beside them threw the run's
    steps away with no more than a "skipping" line each, and before upload.prune's ``upto`` its retention deleted each
    new checkpoint as it landed: every relaunch started from step 0 again (explore66). None where it lists none, or
    cannot be listed now."""
    try:
        held = [c.name for c in list_checkpoints(remote_uri, endpoint_url=endpoint_url) if c.complete]
    except Exception:  # noqa: BLE001 - the store's errors are the resume's to say; this only refuses what it saw
        return None
    if not held:
        return None
    names = ", ".join(held) if len(held) <= 3 else f"{held[0]} ... {held[-1]} ({len(held)})"
    return (
        f"{remote_uri} holds {names}, committed, and none of them could be resumed (the lines above say why): not "
        f"training from step 0 beside them. `ftctl sync ls {shlex.quote(remote_uri)}` lists them; move them out of it "
        "(or delete them) to start over, or give another --output."
    )
