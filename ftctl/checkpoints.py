"""Checkpoints that are either complete or ignored: the commit protocol, upload and resume.

A checkpoint is a Hugging Face Trainer ``checkpoint-<step>`` directory. It is **complete** only
when ``ftctl-manifest.json`` sits in it and every file the manifest lists is there with the
listed size and sha256. The manifest is written after all the files, locally and in object
storage, so a run killed at any moment leaves either a complete checkpoint or one that resume
skips (with a warning naming it) in favour of the previous complete one.

Layout, locally and remotely::

    <run>/checkpoint-<step>/...files...
    <run>/checkpoint-<step>/ftctl-manifest.json        # the commit record, written last
    <run>/checkpoint-<step>/manifest.node-<k>.json     # multi-node only: node k's files

Multi-node runs without a shared filesystem (DeepSpeed ZeRO-3 writes per-rank shards, and each
node holds only its own): every node uploads its files and then ``manifest.node-<k>.json``; node 0
writes ``ftctl-manifest.json`` (the merge) once every node's manifest of the same attempt is in
the store. Node 0 polls for them from its upload thread; training never waits.

Test hook (read only in :func:`_test_hold`): ``FTCTL_TEST_HOLD=<point>:<checkpoint>:<file>``
makes the process, on reaching ``point`` (``local-manifest``: all files saved, manifest not yet
written; ``remote-manifest``: all files uploaded, manifest not yet uploaded) for the checkpoint
named ``checkpoint``, create ``file`` and wait until it is deleted. Tests use it to SIGKILL a
process or stop the store at exactly that moment.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import random
import re
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field

from ftctl import storage
from ftctl.errors import FtctlError

log = logging.getLogger(__name__)

MANIFEST = "ftctl-manifest.json"
MANIFEST_FORMAT = "ftctl-checkpoint/1"
CHECKPOINT_PREFIX = "checkpoint-"
#: where a checkpoint waits for its upload (hard links, so Trainer's rotation cannot delete it)
STAGING_DIR = ".ftctl-upload"
#: where resume moves local checkpoints it found broken (kept for inspection, out of the way)
QUARANTINE_DIR = ".ftctl-quarantine"
#: where resume downloads a remote checkpoint before it is verified
DOWNLOAD_DIR = ".ftctl-download"

_STEP_RE = re.compile(r"^checkpoint-(\d+)$")
_NODE_RE = re.compile(r"^manifest\.node-(\d+)\.json$")
_CHUNK = 8 << 20


def node_manifest_name(node_rank: int) -> str:
    return f"manifest.node-{node_rank}.json"


def checkpoint_step(name: str) -> int | None:
    """The step of a ``checkpoint-<step>`` directory name, else None."""
    m = _STEP_RE.match(os.path.basename(str(name).rstrip("/")))
    return int(m.group(1)) if m else None


def _is_manifest(rel: str) -> bool:
    return rel == MANIFEST or bool(_NODE_RE.match(rel))


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _sha256_stream(f) -> str:
    h = hashlib.sha256()
    while chunk := f.read(_CHUNK):
        h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------- manifests


def build_manifest(ckpt_dir: str, step: int, world_size: int, spec_hash: str, **extra) -> dict:
    """The manifest of every file now in ``ckpt_dir`` (manifests themselves excluded)."""
    import ftctl

    files = []
    for rel in storage.local_files(ckpt_dir):
        if _is_manifest(rel) or rel.endswith(".ftctl-tmp"):
            continue
        full = os.path.join(ckpt_dir, *rel.split("/"))
        files.append({"path": rel, "size": os.path.getsize(full), "sha256": sha256_file(full)})
    return {
        "format": MANIFEST_FORMAT,
        "step": int(step),
        "world_size": int(world_size),
        "ftctl_version": ftctl.__version__,
        "spec_hash": str(spec_hash),
        "created_unix": round(time.time(), 3),
        **extra,
        "files": files,
    }


def _write_json_atomic(path: str, data: dict) -> None:
    tmp = path + ".ftctl-tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    try:
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def write_manifest(ckpt_dir: str, step: int, world_size: int, spec_hash: str, name: str = MANIFEST, **extra) -> dict:
    """Hash every file in ``ckpt_dir`` and write the manifest ``name`` into it, atomically.

    Call it only after every file of the checkpoint is written: the manifest is the commit.
    """
    _test_hold("local-manifest", os.path.basename(os.path.abspath(ckpt_dir)))
    manifest = build_manifest(ckpt_dir, step, world_size, spec_hash, **extra)
    _write_json_atomic(os.path.join(ckpt_dir, name), manifest)
    return manifest


def read_manifest(ckpt: str, name: str = MANIFEST, endpoint_url: str | None = None) -> dict:
    """The manifest of a local or remote checkpoint; FileNotFoundError when there is none,
    ValueError when it is not a manifest."""
    uri = storage.join(ckpt, name)
    fs, path = storage.filesystem(uri, endpoint_url)
    with fs.open(path, "rb") as f:
        data = json.loads(f.read().decode("utf-8"))
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT or "files" not in data:
        raise ValueError(f"{uri} is not an ftctl manifest")
    return data


def _check_files(manifest: dict, sizes: dict[str, int]) -> list[str]:
    problems = []
    for entry in manifest["files"]:
        got = sizes.get(entry["path"])
        if got is None:
            problems.append(f"{entry['path']} is missing")
        elif got != entry["size"]:
            problems.append(f"{entry['path']} has {got} bytes, the manifest says {entry['size']}")
    return problems


def verify(ckpt: str, deep: bool = True, endpoint_url: str | None = None) -> list[str]:
    """Problems of a local or remote checkpoint, ``[]`` when it is complete.

    ``deep`` compares every file's sha256 with the manifest (remote files are read through);
    otherwise only presence and sizes are checked.
    """
    try:
        manifest = read_manifest(ckpt, endpoint_url=endpoint_url)
    except FileNotFoundError:
        return [f"no {MANIFEST} (incomplete: stopped before it was committed)"]
    except (ValueError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        return [f"unreadable {MANIFEST}: {exc}"]
    return _verify_against(ckpt, manifest, deep, endpoint_url)


def _verify_against(ckpt: str, manifest: dict, deep: bool, endpoint_url=None, sizes=None, check_step=True) -> list:
    problems = []
    step = checkpoint_step(ckpt)
    if check_step and step is not None and manifest.get("step") != step:
        problems.append(f"the manifest is for step {manifest.get('step')}, not {step}")
    if sizes is None:
        sizes = storage.file_sizes(ckpt, endpoint_url)
    problems += _check_files(manifest, sizes)
    if problems or not deep:
        return problems
    fs, root = storage.filesystem(ckpt, endpoint_url)
    for entry in manifest["files"]:
        path = storage.join(root, *entry["path"].split("/"))
        if storage.is_remote(ckpt):
            with fs.open(path, "rb") as f:
                digest = _sha256_stream(f)
        else:
            digest = sha256_file(path)
        if digest != entry["sha256"]:
            problems.append(f"{entry['path']} does not match its sha256 (corrupted)")
    return problems


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

    @property
    def name(self) -> str:
        return f"{CHECKPOINT_PREFIX}{self.step}"


def list_checkpoints(uri: str, deep: bool = False, endpoint_url: str | None = None) -> list[CheckpointInfo]:
    """Every ``checkpoint-<step>`` below a local run directory or object-store URI, oldest first.

    ``complete`` means the manifest is there and every file it lists is present with its size
    (and, with ``deep``, its sha256). One listing of the whole run plus one read per manifest.
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
    out = []
    for name, sizes in per_ckpt.items():
        ckpt_uri = storage.join(uri, name)
        manifest = None
        if MANIFEST not in sizes:
            problems = [f"no {MANIFEST} (incomplete: stopped before it was committed)"]
        else:
            try:
                manifest = read_manifest(ckpt_uri, endpoint_url=endpoint_url)
                problems = _verify_against(ckpt_uri, manifest, deep, endpoint_url, sizes)
            except (ValueError, json.JSONDecodeError, UnicodeDecodeError) as exc:
                problems = [f"unreadable {MANIFEST}: {exc}"]
        out.append(
            CheckpointInfo(
                step=checkpoint_step(name),
                complete=not problems,
                problems=problems,
                uri=ckpt_uri,
                size=sum(sizes.values()),
                manifest=manifest,
            )
        )
    return sorted(out, key=lambda c: c.step)


def _list_remote_or_fail(remote_uri: str, endpoint_url=None, attempts: int = 3):
    for i in range(attempts):
        try:
            return list_checkpoints(remote_uri, endpoint_url=endpoint_url)
        except Exception as exc:  # noqa: BLE001 - any store error, reported below
            err = exc
            if i + 1 < attempts:
                time.sleep(2**i)
    raise FtctlError(
        f"Cannot list the checkpoints in {remote_uri}: {storage.redact(str(err))}. Check the "
        "endpoint (AWS_ENDPOINT_URL) and credentials; ftctl does not start from scratch while "
        "the run's checkpoints in the store cannot be read."
    ) from err


# ---------------------------------------------------------------- resume


def _quarantine(path: str, why: str) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    dest = os.path.join(parent, QUARANTINE_DIR, f"{os.path.basename(path)}-{int(time.time())}")
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    os.replace(path, dest)
    log.warning("moved %s to %s (%s)", path, dest, why)


def download_checkpoint(
    ckpt_uri: str, local_dir: str, manifest: dict | None = None, endpoint_url: str | None = None
) -> list[str]:
    """Download the files a remote checkpoint's manifest lists into ``local_dir/<name>``,
    verify their sha256 and only then move the directory into place.

    Returns the problems (``[]`` on success; the local directory is then complete).
    """
    name = os.path.basename(ckpt_uri.rstrip("/"))
    if manifest is None:
        try:
            manifest = read_manifest(ckpt_uri, endpoint_url=endpoint_url)
        except FileNotFoundError:
            return [f"no {MANIFEST} (incomplete: stopped before it was committed)"]
    tmp = os.path.join(local_dir, DOWNLOAD_DIR, name)
    shutil.rmtree(tmp, ignore_errors=True)
    fs, _ = storage.filesystem(ckpt_uri, endpoint_url)
    try:
        for entry in manifest["files"]:
            parts = entry["path"].split("/")
            storage.get_file(storage.join(ckpt_uri, *parts), os.path.join(tmp, *parts), fs=fs)
    except FileNotFoundError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        return [f"a file vanished while downloading: {exc}"]
    _write_json_atomic(os.path.join(tmp, MANIFEST), manifest)
    problems = _verify_against(tmp, manifest, deep=True, check_step=False)
    if problems:
        shutil.rmtree(tmp, ignore_errors=True)
        return problems
    final = os.path.join(local_dir, name)
    if os.path.exists(final):
        _quarantine(final, f"replaced by the complete copy from {ckpt_uri}")
    os.replace(tmp, final)
    try:
        os.rmdir(os.path.dirname(tmp))
    except OSError:
        pass
    return []


def latest_complete(local_dir: str, remote_uri: str | None = None, endpoint_url: str | None = None) -> str | None:
    """The local path of the newest complete, verified checkpoint, or None.

    Candidates are the local ``checkpoint-*`` directories of ``local_dir`` and, with
    ``remote_uri``, those in the store; for each step from the newest down, a local copy that
    verifies (sha256) wins, else the remote one is downloaded and verified. Every incomplete or
    corrupted checkpoint passed over is logged as a warning naming it; broken local ones are moved
    to ``<local_dir>/.ftctl-quarantine`` so the resumed run can save that step afresh.
    """
    os.makedirs(local_dir, exist_ok=True)
    local = {c.step: c for c in list_checkpoints(local_dir)}
    remote = {}
    if remote_uri:
        remote = {c.step: c for c in _list_remote_or_fail(remote_uri, endpoint_url)}
    for step in sorted(set(local) | set(remote), reverse=True):
        reasons = []
        if step in local:
            problems = verify(local[step].uri, deep=True)
            if not problems:
                log.info("resuming from %s (local, verified)", local[step].uri)
                return local[step].uri
            reasons.append(f"local {local[step].uri}: {'; '.join(problems)}")
        if step in remote:
            r = remote[step]
            problems = r.problems or download_checkpoint(r.uri, local_dir, r.manifest, endpoint_url)
            if not problems:
                path = os.path.join(local_dir, r.name)
                log.info("resuming from %s (downloaded from %s, verified)", path, r.uri)
                return path
            reasons.append(f"remote {r.uri}: {'; '.join(problems)}")
        log.warning("skipping %s%d: %s", CHECKPOINT_PREFIX, step, " | ".join(reasons))
        if step in local and os.path.isdir(local[step].uri):
            _quarantine(local[step].uri, "incomplete or corrupted")
    return None


# ---------------------------------------------------------------- upload


def _test_hold(point: str, name: str) -> None:
    """The one reader of FTCTL_TEST_HOLD (see the module docstring)."""
    spec = os.environ.get("FTCTL_TEST_HOLD")
    if not spec:
        return
    want_point, want_name, ready = spec.split(":", 2)
    if want_point != point or want_name != name or ready in _HELD:
        return
    _HELD.add(ready)
    with open(ready, "w") as f:
        f.write(str(os.getpid()))
    while os.path.exists(ready):
        time.sleep(0.02)


_HELD: set[str] = set()


def _put(fs, local: str, uri: str) -> None:
    storage.put_file(local, uri, fs=fs)


def upload_checkpoint(
    local_ckpt: str,
    ckpt_uri: str,
    manifest_name: str = MANIFEST,
    endpoint_url: str | None = None,
    done: set | None = None,
    fs=None,
) -> dict:
    """Upload a local checkpoint whose manifest ``manifest_name`` is written: its files, a check
    that the store holds every one with its size, then the manifest. Raises on any store error
    (the :class:`Uploader` retries). ``done`` (a set) remembers files already sent across retries.
    """
    if fs is None:
        fs, _ = storage.filesystem(ckpt_uri, endpoint_url)
    with open(os.path.join(local_ckpt, manifest_name), "rb") as f:
        manifest = json.loads(f.read())
    done = set() if done is None else done
    for entry in manifest["files"]:
        if entry["path"] in done:
            continue
        parts = entry["path"].split("/")
        _put(fs, os.path.join(local_ckpt, *parts), storage.join(ckpt_uri, *parts))
        done.add(entry["path"])
    sizes = storage.file_sizes(ckpt_uri, endpoint_url)
    lost = [e["path"] for e in manifest["files"] if sizes.get(e["path"]) != e["size"]]
    if lost:
        done.difference_update(lost)
        raise OSError(f"the store does not hold files it accepted: {', '.join(lost[:3])}")
    _test_hold("remote-manifest", os.path.basename(ckpt_uri.rstrip("/")))
    _put(fs, os.path.join(local_ckpt, manifest_name), storage.join(ckpt_uri, manifest_name))
    return manifest


def prune(remote_uri: str, keep_last: int, protect=(), endpoint_url: str | None = None) -> list[str]:
    """Delete complete checkpoints in the store beyond the newest ``keep_last``, except those
    named in ``protect`` (the best one). The manifest goes first, so a half-done delete is an
    incomplete checkpoint, never a broken complete one. Returns the URIs deleted."""
    complete = [c for c in list_checkpoints(remote_uri, endpoint_url=endpoint_url) if c.complete]
    doomed = [c for c in complete[: max(0, len(complete) - keep_last)] if c.name not in protect]
    for c in doomed:
        storage.rm(storage.join(c.uri, MANIFEST), endpoint_url=endpoint_url)
        storage.rm(c.uri, recursive=True, endpoint_url=endpoint_url)
        log.info("retention: deleted %s (keeping the last %d)", c.uri, keep_last)
    return [c.uri for c in doomed]


def final_files(local_dir: str) -> list[str]:
    """The run's top-level files: all but the checkpoints (uploaded as they are saved) and ftctl's
    hidden working dirs."""
    out = []
    for rel in storage.local_files(local_dir):
        top = rel.split("/", 1)[0]
        if top.startswith(".") or (top.startswith(CHECKPOINT_PREFIX) and "/" in rel):
            continue
        out.append(rel)
    return out


@dataclass
class _Job:
    name: str
    local: str  # the staged directory
    original: str
    submitted: float
    attempt_no: int = 0
    done: set = field(default_factory=set)
    started: bool = False
    uploaded: bool = False
    final: bool = False  # the run's top-level files (final model, spec.json, metrics), not a checkpoint


class Uploader:
    """Uploads finished checkpoints to ``remote_uri`` from a background thread, oldest first.

    ``submit`` returns at once (the checkpoint is hard-linked aside so Trainer's rotation may
    delete it); store errors are logged and retried with exponential backoff until ``close``;
    nothing is ever raised into the caller. ``lag()`` says how far behind it is; ``wait(limit)``
    waits for everything submitted, at most ``limit`` seconds, and logs the outcome.

    Multi-node (``num_nodes > 1``, no shared filesystem): each node's uploader sends its files
    and ``manifest.node-<k>.json``; node 0's then waits (polling, in its thread) for every
    node's manifest of the same ``attempt`` and commits the merged ``ftctl-manifest.json``.
    ``attempt`` must be the same string on every node of one run (the trainer broadcasts it).

    Retention (node 0): with ``keep_last``, after each commit only the newest ``keep_last``
    complete checkpoints stay in the store, plus those named by ``protect()``.
    """

    def __init__(
        self,
        remote_uri: str,
        *,
        endpoint_url: str | None = None,
        node_rank: int = 0,
        num_nodes: int = 1,
        attempt: str | None = None,
        keep_last: int | None = None,
        backoff: tuple[float, float] = (1.0, 60.0),
        poll_interval: float = 5.0,
    ):
        self.remote_uri = remote_uri.rstrip("/")
        self.endpoint_url = endpoint_url
        self.node_rank = node_rank
        self.num_nodes = num_nodes
        self.attempt = attempt or uuid.uuid4().hex
        self.keep_last = keep_last
        self.backoff = backoff
        self.poll_interval = poll_interval
        self.protected: set[str] = set()
        self._queue: queue.Queue[_Job] = queue.Queue()
        self._pending: list[_Job] = []
        self._cond = threading.Condition()
        self._closed = threading.Event()
        self._fs = None
        self._thread = threading.Thread(target=self._run, name="ftctl-uploader", daemon=True)
        self._thread.start()

    @property
    def manifest_name(self) -> str:
        return MANIFEST if self.num_nodes == 1 else node_manifest_name(self.node_rank)

    # -- caller side (never raises, never blocks on the store)

    def submit(self, ckpt_dir: str) -> None:
        """Queue a checkpoint directory whose manifest (``manifest_name``) is written."""
        try:
            job = self._stage(ckpt_dir)
        except Exception as exc:  # noqa: BLE001 - the training step must go on
            log.error("cannot queue %s for upload: %s", ckpt_dir, storage.redact(str(exc)))
            return
        with self._cond:
            self._pending.append(job)
        self._queue.put(job)
        n, secs = self.lag()
        log.info(
            "queued %s for upload to %s (lag: %d checkpoint(s), %.0f s)",
            job.name,
            self.remote_uri,
            n,
            secs,
        )

    def submit_final(self, local_dir: str) -> None:
        """Queue the run's top-level files (the final model or adapter, tokenizer, spec.json,
        metrics.jsonl, tensorboard runs/): everything but the checkpoints and ftctl's hidden working
        dirs, uploaded with the same retries as a checkpoint; ``wait`` then says whether it landed."""
        job = _Job(name="final model", local=os.path.abspath(local_dir), original="", submitted=time.time(), final=True)
        with self._cond:
            self._pending.append(job)
        self._queue.put(job)

    def lag(self) -> tuple[int, float]:
        """(checkpoints not yet committed, seconds since the oldest of them was submitted)."""
        with self._cond:
            if not self._pending:
                return 0, 0.0
            return len(self._pending), time.time() - self._pending[0].submitted

    def pending(self) -> list[str]:
        with self._cond:
            return [j.name for j in self._pending]

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every submitted checkpoint is committed, at most ``timeout`` seconds.
        Logs how long it waited and, if the limit passed, what was left. True when all done."""
        start = time.time()
        with self._cond:
            self._cond.wait_for(lambda: not self._pending, timeout)
            left = [j.name for j in self._pending]
        waited = time.time() - start
        if left:
            log.warning(
                "gave up waiting for checkpoint uploads to %s after %.1f s; not uploaded: %s",
                self.remote_uri,
                waited,
                ", ".join(left),
            )
            return False
        log.info("checkpoint uploads to %s done (waited %.1f s)", self.remote_uri, waited)
        return True

    def close(self, timeout: float | None = 0) -> bool:
        """Wait up to ``timeout`` for pending uploads, then stop the thread."""
        ok = self.wait(timeout) if timeout != 0 else not self.pending()
        self._closed.set()
        self._queue.put(None)
        self._thread.join(timeout=5)
        return ok

    def _stage(self, ckpt_dir: str) -> _Job:
        ckpt_dir = os.path.abspath(ckpt_dir)
        name = os.path.basename(ckpt_dir)
        if not os.path.exists(os.path.join(ckpt_dir, self.manifest_name)):
            raise FileNotFoundError(f"{ckpt_dir} has no {self.manifest_name}: write it first")
        staged = os.path.join(os.path.dirname(ckpt_dir), STAGING_DIR, f"{name}-{uuid.uuid4().hex[:8]}")
        try:
            for rel in storage.local_files(ckpt_dir):
                src = os.path.join(ckpt_dir, *rel.split("/"))
                dst = os.path.join(staged, *rel.split("/"))
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                os.link(src, dst)
        except OSError as exc:
            shutil.rmtree(staged, ignore_errors=True)
            log.warning(
                "cannot hard-link %s (%s); uploading it in place: keep save_total_limit "
                "high enough that it is not rotated away first",
                ckpt_dir,
                exc,
            )
            staged = ckpt_dir
        return _Job(name=name, local=staged, original=ckpt_dir, submitted=time.time())

    # -- worker side

    def _run(self) -> None:
        while not self._closed.is_set():
            job = self._queue.get()
            if job is None:
                break
            while not self._closed.is_set():
                try:
                    if self._attempt(job):
                        break
                    self._closed.wait(self.poll_interval)  # other nodes not there yet
                except Exception as exc:  # noqa: BLE001 - store errors of every kind
                    job.attempt_no += 1
                    base, cap = self.backoff
                    delay = min(cap, base * 2 ** (job.attempt_no - 1)) * random.uniform(0.8, 1.2)
                    log.warning(
                        "upload of %s to %s failed (attempt %d: %s: %s); retrying in %.1f s",
                        job.name,
                        self.remote_uri,
                        job.attempt_no,
                        type(exc).__name__,
                        storage.redact(str(exc))[:500],
                        delay,
                    )
                    self._closed.wait(delay)
            else:
                return
            if job.local != job.original and not job.final:
                shutil.rmtree(job.local, ignore_errors=True)
            with self._cond:
                self._pending.remove(job)
                self._cond.notify_all()

    def _attempt(self, job: _Job) -> bool:
        """One try; True when the job is finished, False to poll again later."""
        if self._fs is None:
            self._fs, _ = storage.filesystem(self.remote_uri, self.endpoint_url)
        if job.final:
            for rel in final_files(job.local):
                if rel not in job.done:
                    _put(self._fs, os.path.join(job.local, *rel.split("/")), storage.join(self.remote_uri, *rel.split("/")))
                    job.done.add(rel)
            log.info("uploaded the final model to %s", self.remote_uri)
            return True
        ckpt_uri = storage.join(self.remote_uri, job.name)
        if not job.started:
            # A manifest from an earlier attempt at this step would vouch for files we are
            # about to replace: withdraw it first.
            if self.node_rank == 0:
                storage.rm(storage.join(ckpt_uri, MANIFEST), endpoint_url=self.endpoint_url)
            if self.num_nodes > 1:
                storage.rm(storage.join(ckpt_uri, self.manifest_name), endpoint_url=self.endpoint_url)
            job.started = True
        if not job.uploaded:
            upload_checkpoint(job.local, ckpt_uri, self.manifest_name, self.endpoint_url, job.done, self._fs)
            job.uploaded = True
            job.attempt_no = 0
            if self.num_nodes == 1:
                log.info(
                    "committed %s (%.0f s after it was saved)",
                    ckpt_uri,
                    time.time() - job.submitted,
                )
        if self.num_nodes > 1:
            if self.node_rank != 0:
                return True
            if not self._commit_nodes(job, ckpt_uri):
                return False
        if self.keep_last:
            prune(self.remote_uri, self.keep_last, self.protected, self.endpoint_url)
        return True

    def _commit_nodes(self, job: _Job, ckpt_uri: str) -> bool:
        """Node 0: merge every node's manifest into ftctl-manifest.json once all are there."""
        names = {e["name"] for e in storage.ls(ckpt_uri, self.endpoint_url)}
        manifests = {}
        for k in range(self.num_nodes):
            if node_manifest_name(k) not in names:
                continue
            m = read_manifest(ckpt_uri, node_manifest_name(k), self.endpoint_url)
            if m.get("attempt") == self.attempt:
                manifests[k] = m
        missing = [k for k in range(self.num_nodes) if k not in manifests]
        if missing:
            log.info("%s: waiting for the manifests of node(s) %s", ckpt_uri, missing)
            return False
        files: dict[str, dict] = {}
        rewrite = []
        for k in sorted(manifests, reverse=True):  # node 0 last: its copy wins
            for entry in manifests[k]["files"]:
                prev = files.get(entry["path"])
                if prev is not None and prev["sha256"] != entry["sha256"] and k == 0:
                    rewrite.append(entry["path"])
                files[entry["path"]] = entry
        for rel in rewrite:  # a file two nodes wrote differently: node 0's copy, re-sent now
            parts = rel.split("/")
            _put(self._fs, os.path.join(job.local, *parts), storage.join(ckpt_uri, *parts))
        merged = dict(manifests[0])
        for key in ("node_rank",):
            merged.pop(key, None)
        merged["files"] = [files[p] for p in sorted(files)]
        problems = _check_files(merged, storage.file_sizes(ckpt_uri, self.endpoint_url))
        if problems:
            raise OSError(f"files listed by the node manifests are not in the store: {problems[:3]}")
        _write_json_atomic(os.path.join(job.local, MANIFEST), merged)
        _test_hold("remote-manifest", job.name)
        _put(self._fs, os.path.join(job.local, MANIFEST), storage.join(ckpt_uri, MANIFEST))
        log.info(
            "committed %s from %d nodes (%.0f s after it was saved)",
            ckpt_uri,
            self.num_nodes,
            time.time() - job.submitted,
        )
        return True


# ---------------------------------------------------------------- sync ls / push / pull


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def ls(uri: str, deep: bool = False, endpoint_url: str | None = None, echo=print) -> list:
    """Print each checkpoint under ``uri``: step, complete/incomplete, size, and problems."""
    with storage.storage_errors(uri, endpoint_url):
        found = list_checkpoints(uri, deep=deep, endpoint_url=endpoint_url)
    if not found:
        echo(f"no checkpoints under {uri}")
    for c in found:
        state = "complete" if c.complete else "incomplete"
        line = f"{c.name:<24} step {c.step:<8} {state:<10} {_human(c.size):>10}"
        if c.problems:
            line += "  " + "; ".join(c.problems[:2])
        echo(line)
    return found


def push(local_run_dir: str, uri: str, endpoint_url: str | None = None, echo=print) -> list:
    """Upload every complete local checkpoint not already complete in the store (files first,
    manifest last). Incomplete local ones are skipped with a warning. Returns what was sent."""
    with storage.storage_errors(uri, endpoint_url):
        return _push(local_run_dir, uri, endpoint_url, echo)


def _push(local_run_dir: str, uri: str, endpoint_url: str | None, echo) -> list:
    remote = {c.name: c for c in list_checkpoints(uri, endpoint_url=endpoint_url)}
    sent = []
    for c in list_checkpoints(local_run_dir, deep=True):
        if not c.complete:
            log.warning("not pushing %s: %s", c.uri, "; ".join(c.problems))
            continue
        r = remote.get(c.name)
        if r is not None and r.complete and r.manifest["files"] == c.manifest["files"]:
            continue
        dest = storage.join(uri, c.name)
        storage.rm(storage.join(dest, MANIFEST), endpoint_url=endpoint_url)
        upload_checkpoint(c.uri, dest, endpoint_url=endpoint_url)
        echo(f"pushed {c.name} -> {dest}")
        sent.append(dest)
    return sent


def pull(
    uri: str,
    local_dir: str,
    include_incomplete: bool = False,
    endpoint_url: str | None = None,
    echo=print,
) -> list:
    """Download the complete checkpoints under ``uri`` (verified by sha256) that are not complete
    in ``local_dir`` yet; with ``include_incomplete``, incomplete ones too, as they are."""
    with storage.storage_errors(uri, endpoint_url):
        return _pull(uri, local_dir, include_incomplete, endpoint_url, echo)


def _pull(uri: str, local_dir: str, include_incomplete: bool, endpoint_url: str | None, echo) -> list:
    os.makedirs(local_dir, exist_ok=True)
    local = {c.name for c in list_checkpoints(local_dir) if c.complete}
    got = []
    for c in list_checkpoints(uri, endpoint_url=endpoint_url):
        if c.name in local:
            continue
        if c.complete:
            problems = download_checkpoint(c.uri, local_dir, c.manifest, endpoint_url)
            if problems:
                log.warning("not pulling %s: %s", c.uri, "; ".join(problems))
                continue
        elif include_incomplete:
            storage.get_dir(c.uri, os.path.join(local_dir, c.name), endpoint_url)
        else:
            log.warning("not pulling %s: %s", c.uri, "; ".join(c.problems))
            continue
        echo(f"pulled {c.uri} -> {os.path.join(local_dir, c.name)}")
        got.append(os.path.join(local_dir, c.name))
    return got
