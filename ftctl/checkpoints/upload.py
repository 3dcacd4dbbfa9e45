"""The background uploader: each committed checkpoint (then the final model) sent to object storage
with retries and backoff, never stopping training; multi-node commits merged by node 0; retention.

Multi-node runs without a shared filesystem (DeepSpeed ZeRO-3 writes per-rank shards, and each
node holds only its own): every node uploads its files and then ``manifest.node-<k>.json``; node 0
writes ``ftctl-manifest.json`` (the merge) once every node's manifest of the same attempt is in
the store. Node 0 looks for them from its upload thread, right after its own share is in, then at intervals that double
from ``FIRST_POLL_S`` to ``poll_interval``, and every ``HURRY_POLL_S`` while someone waits for the uploads (a stop: the
commit must come as soon as the last share lands, within Slurm's KillWait); training never waits. A node whose share
does not come within ``peer_wait_s`` of node 0's own (it died, or holds none to send again) leaves that checkpoint uncommitted,
said with the node's number, and node 0's uploads go on with the next: they waited behind it for good, the final
model too.

Uploads that fall behind the saves (fast steps, frequent saves, a slow link) skip what retention would delete at once:
a queued checkpoint not yet started with ``keep_last`` (save_total_limit) newer ones queued behind it, unless it is
the best one (``protected``), is never sent. The newest is always sent, and a stop's checkpoint no longer waits behind
checkpoints the store would drop as soon as the next ones land.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import random
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from ftctl import lease, storage
from ftctl.checkpoints.manifest import (
    CHECKPOINT_PREFIX,
    MANIFEST,
    STAGING_DIR,
    check_files,
    checkpoint_step,
    commit_point,
    merge_nodes,
    metrics_copy,
    node_manifest_name,
    open_metrics_copy,
    read_manifest,
    write_json_atomic,
)
from ftctl.checkpoints.resume import list_checkpoints
from ftctl.runpaths import (
    FINAL_MARKS,
    METRICS_FILE,
    RUN_RECORDS,
    SPEC_FILE,
    TRACKING_DIRS,
    UPLOADED_RECORD,
    RunPaths,
)

log = logging.getLogger(__name__)

FIRST_POLL_S = 0.2  # node 0's first interval between looks for the other nodes' shares; doubled up to poll_interval
HURRY_POLL_S = 0.2  # node 0's interval between those looks while someone waits for the uploads (a stop)
LAST_LOOK_S = 5.0  # what a wait that ran out still gives node 0 for one more look at them (and the commit)


# ---------------------------------------------------------------- upload


@contextlib.contextmanager
def _plain(copy: str | None):
    """A checkpoint's copy of metrics.jsonl (``copy``) as a plain file: gunzipped into a temp file, removed after;
    an older ftctl's plain copy is itself (None)."""
    if not copy or not copy.endswith(".gz"):
        yield None
        return
    fd, path = tempfile.mkstemp(prefix="ftctl-metrics-", suffix=".jsonl")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out, open_metrics_copy(copy) as f:
            shutil.copyfileobj(f, out, 8 << 20)
        yield path
    finally:
        os.unlink(path)


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
    """Upload a local checkpoint whose manifest ``manifest_name`` is written: its files (storage.files_at_once at a
    time), a check that the store holds every one with its size, then the manifest. Raises on any store error, the
    first failed file's alone once the files under way have finished (the :class:`Uploader` retries). ``done`` (a set) remembers files already sent across retries.
    """
    if fs is None:
        fs, _ = storage.filesystem(ckpt_uri, endpoint_url)
    with open(os.path.join(local_ckpt, manifest_name), "rb") as f:
        manifest = json.loads(f.read())
    done = set() if done is None else done

    def send(rel: str) -> None:
        parts = rel.split("/")
        _put(fs, os.path.join(local_ckpt, *parts), storage.join(ckpt_uri, *parts))
        done.add(rel)

    at_once = storage.files_at_once(ckpt_uri)
    todo = storage.by_size([e for e in manifest["files"] if e["path"] not in done], at_once)
    storage.each_at_once(send, [e["path"] for e in todo], at_once)
    sizes = storage.file_sizes(ckpt_uri, endpoint_url)
    lost = [e["path"] for e in manifest["files"] if sizes.get(e["path"]) != e["size"]]
    if lost:
        done.difference_update(lost)
        raise OSError(f"the store does not hold files it accepted: {', '.join(lost[:3])}")
    lease.check(ckpt_uri, ask=True)  # an upload in flight as the lease was lost commits nothing into another's output
    commit_point("remote-manifest", os.path.basename(ckpt_uri.rstrip("/")))
    _put(fs, os.path.join(local_ckpt, manifest_name), storage.join(ckpt_uri, manifest_name))
    return manifest


def remember_uploaded(local_dir: str, name: str) -> None:
    """Note that the store holds checkpoint ``name`` of the run staged in ``local_dir`` (resume.uploaded)."""
    path = os.path.join(local_dir, UPLOADED_RECORD)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "a") as f:
            f.write(f"{name}\n")
    except OSError as e:  # a note for a later resume: never a reason to stop uploading
        log.warning("cannot note the upload of %s in %s: %s", name, path, e)


def prune(
    remote_uri: str, keep_last: int | None, protect=(), endpoint_url: str | None = None, upto: int | None = None
) -> list[str]:
    """Delete complete checkpoints in the store beyond the newest ``keep_last`` (None: none), except those named in
    ``protect`` (the best one), and every checkpoint older than the newest complete one whose upload (or deletion)
    was cut short: no manifest, so nothing resumes from it, and no later upload of its step comes to replace it.
    The manifest goes first, so a half-done delete is an incomplete checkpoint, never a broken complete one.
    ``upto``: the step of the checkpoint the run committed last; the newest ``keep_last`` are counted among those of
    no later step. A later one is none of this run's steps: one its resume passed over (a file not matching its
    sha256), left as it is. Counted with them, each checkpoint of a run that started again from step 0 below them was
    deleted as it landed, the stop's too, and every relaunch started from step 0 again (explore66). Returns the URIs
    deleted."""
    found = list_checkpoints(remote_uri, endpoint_url=endpoint_url)
    complete = [c for c in found if c.complete]
    ranked = [c for c in complete if upto is None or c.step <= upto]
    beyond = ranked[: max(0, len(ranked) - keep_last)] if keep_last else []
    doomed = [c for c in beyond if c.name not in protect]
    for c in doomed:
        storage.rm(storage.join(c.uri, MANIFEST), endpoint_url=endpoint_url)
        storage.rm(c.uri, recursive=True, endpoint_url=endpoint_url)
        log.info("retention: deleted %s (keeping the last %d)", c.uri, keep_last)
    newest = complete[-1] if complete else None
    cut_short = [c for c in found if newest and c.step < newest.step and c.manifest is None]
    for c in cut_short:
        storage.rm(c.uri, recursive=True, endpoint_url=endpoint_url)
        log.info("deleted %s: %s, and %s is complete", c.uri, c.problems[0], newest.name)
    return [c.uri for c in doomed + cut_short]


def records_to_send(
    local: dict[str, str], uri: str, run_dir: str, endpoint_url: str | None = None, continues: bool = False
) -> tuple[list[str], str]:
    """Which of a run's RUN_RECORDS go into its store ``uri`` beside its checkpoints before its final model does (a
    run training, or one stopped before its end: `ftctl sync push`). ``local``: each record's file here (one absent is
    not sent; without a spec.json, none is). The records that differ from the store's: spec.json where the store's is
    another text, metrics.jsonl where the store's is shorter (a longer one is of a later attempt). They go where the
    store holds no spec.json or this run's (this_runs, ``run_dir`` the run's directory; ``continues``: the run goes on
    from a checkpoint of that store, whose run it is then), and no final model (the records there are that model's).
    Returns (those that differ, in RUN_RECORDS' order: spec.json last; why they stay: "" where they may go, "final" or
    "another" (another run's spec.json)); ([], "") where nothing differs, or only metrics.jsonl beside a final model
    of this spec.json."""
    if SPEC_FILE not in local:  # no run's description to send its records with
        return [], ""
    mine = Path(local[SPEC_FILE]).read_text(encoding="utf-8")
    there = {e["name"]: e["size"] for e in storage.ls(uri, endpoint_url) if e["type"] == "file"}  # its top level
    theirs = storage.read_text(storage.join(uri, SPEC_FILE), endpoint_url) if SPEC_FILE in there else None
    differ = [
        rel
        for rel in RUN_RECORDS
        if rel in local and (theirs != mine if rel == SPEC_FILE else there.get(rel, -1) < os.path.getsize(local[rel]))
    ]
    if not differ:
        return [], ""
    if any(there.get(mark) for mark in FINAL_MARKS):  # a run that ended: the records there are its final model's
        return (differ, "final") if theirs != mine else ([], "")
    if theirs is not None and not (continues or this_runs(run_dir, mine, theirs)):
        return differ, "another"
    return differ, ""


def this_runs(run_dir: str, mine: str, theirs: str) -> bool:
    """Whether the store's spec.json (``theirs``) is of the run whose spec.json is ``mine``: alike in every key that
    changes the trained weights (spec.TRAINING_KEYS: a relaunch elsewhere), or one its run directory ``run_dir`` kept
    as it was relaunched with other settings (RunPaths.earlier_spec)."""
    if trains_alike(mine, theirs):
        return True
    kept = RunPaths(Path(run_dir)).earlier_spec("*")  # its pattern: spec.STAMP.json, spec.STAMP-N.json
    for path in kept.parent.glob(kept.name):
        try:
            if path.read_text(encoding="utf-8") == theirs:
                return True
        except (OSError, UnicodeDecodeError):
            continue
    return False


def trains_alike(mine: str, theirs: str) -> bool:
    """Whether two spec.json texts ask for the same training: alike in every key that changes the trained weights
    (spec.TRAINING_KEYS), whatever their placement (output, GPUs, backend, save_steps)."""
    from ftctl.spec import TRAINING_KEYS

    try:
        now, was = json.loads(mine)["spec"], json.loads(theirs)["spec"]
        return all(now.get(key) == was.get(key) for key in TRAINING_KEYS)
    except (ValueError, KeyError, TypeError, AttributeError):
        return False


def final_files(local_dir: str) -> list[str]:
    """The run's top-level files: all but the checkpoints (uploaded as they are saved) and ftctl's
    hidden working dirs; the final model's config last (FINAL_MARKS: in the store, it says the model is whole)."""
    out = []
    for rel in storage.local_files(local_dir):
        top = rel.split("/", 1)[0]
        if top.startswith(".") or (top.startswith(CHECKPOINT_PREFIX) and "/" in rel):
            continue
        out.append(rel)
    return sorted(out, key=lambda rel: rel in FINAL_MARKS)


def tracking_files(local_dir: str) -> list[str]:
    """The run's TensorBoard and W&B files (runpaths.TRACKING_DIRS), of every attempt on this node."""
    return [f"{top}/{rel}" for top in TRACKING_DIRS for rel in storage.local_files(os.path.join(local_dir, top))]


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
    attempt: str | None = None  # the attempt of its node manifests (a resumed run's checkpoint); None: the uploader's
    shared_at: float | None = None  # when this node's own share was in the store (node 0 waits for the others' then)
    polls: int = 0  # node 0's looks for the other nodes' shares so far
    looked: float = -1.0  # time.monotonic() at the start of node 0's last finished look for them
    skipped: bool = False  # superseded before its upload started (Uploader._skip_superseded): never sent


class Uploader:
    """Uploads finished checkpoints to ``remote_uri`` from a background thread, oldest first.

    ``submit`` returns at once (the checkpoint is hard-linked aside so Trainer's rotation may
    delete it); store errors are logged and retried with exponential backoff until ``close``;
    nothing is ever raised into the caller. ``lag()`` says how far behind it is; ``wait(limit)``
    waits for everything submitted, at most ``limit`` seconds, and logs the outcome.

    Multi-node (``num_nodes > 1``, no shared filesystem): each node's uploader sends its files
    and ``manifest.node-<k>.json``; node 0's then waits (polling, in its thread) for every
    node's manifest of the same ``attempt`` and commits the merged ``ftctl-manifest.json``.
    ``attempt`` must be the same string on every node of one run (the trainer broadcasts it). A node's manifest not
    in ``peer_wait_s`` after node 0's own share (None: as long as the uploader runs) leaves the checkpoint
    uncommitted, with a warning naming the node, and the queue goes on.

    The run's records (node 0): after each commit, its spec.json (from the directory the checkpoints are saved in) and
    its metrics.jsonl as of that checkpoint go beside them where they changed and records_to_send lets them
    (_send_records; ``continues``: the run goes on from a checkpoint of this store), so a run that never saves its final
    model still leaves a store that loads as it trained.

    Retention (node 0): with ``keep_last``, after each commit only the newest ``keep_last``
    complete checkpoints stay in the store, plus those named by ``protected`` (the best one). On one node, a queued
    checkpoint that retention would delete once the ``keep_last`` newer ones queued behind it land is skipped before
    its upload starts (_skip_superseded), said in one line per batch.
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
        peer_wait_s: float | None = None,
        continues: bool = False,
    ):
        self.remote_uri = remote_uri.rstrip("/")
        self.endpoint_url = endpoint_url
        self.node_rank = node_rank
        self.num_nodes = num_nodes
        self.attempt = attempt or uuid.uuid4().hex
        self.keep_last = keep_last
        self.backoff = backoff
        self.poll_interval = poll_interval
        self.peer_wait_s = peer_wait_s
        self.protected: set[str] = set()
        self.continues = continues
        self._records_sent: dict[str, int] = {}  # the run's records (_send_records) -> their sizes when last sent
        self._records_kept = False  # the store's are another run's, or a final model's: said once, none sent
        self._queue: queue.Queue[_Job] = queue.Queue()
        self._pending: list[_Job] = []
        self._cond = threading.Condition()
        self._closed = threading.Event()
        self._waiting = 0  # callers in wait(): node 0 looks for the other nodes' shares every HURRY_POLL_S meanwhile
        self._fs = None
        self._tracking_sent: dict[str, int] = {}  # tracking file -> its size when sent
        self._full_said = False  # the store's "full" line said, and no upload taken since (_full)
        self._last_error: str | None = None  # the store's last error since it last took an upload (last_error)
        self._committed: int | None = None  # the step of the checkpoint committed last (prune's upto)
        self._thread = threading.Thread(target=self._run, name="ftctl-uploader", daemon=True)
        self._thread.start()

    @property
    def manifest_name(self) -> str:
        return MANIFEST if self.num_nodes == 1 else node_manifest_name(self.node_rank)

    # -- caller side (never raises, never blocks on the store)

    def submit(self, ckpt_dir: str, attempt: str | None = None) -> None:
        """Queue a checkpoint directory whose manifest (``manifest_name``) is written. ``attempt``: the attempt its
        node manifests are of where it is not this uploader's (a checkpoint of an earlier attempt, sent again by
        the run resumed from it): node 0 commits it once every node's manifest of that attempt is in."""
        try:
            job = self._stage(ckpt_dir)
            job.attempt = attempt
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

    def uploading_in_place(self) -> set[str]:
        """The checkpoints that could not be hard-linked and are still being uploaded from their own directories:
        the trainer's rotation must not delete them under the upload."""
        with self._cond:
            return {j.name for j in self._pending if not j.final and j.local == j.original}

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until every submitted checkpoint is committed, at most ``timeout`` seconds.
        Logs how long it waited and, if the limit passed, what was left. True when all done.

        Node 0 looks for the other nodes' shares every HURRY_POLL_S meanwhile, and once more after the limit (at
        most LAST_LOOK_S): a checkpoint whose shares are all in by then is committed before the caller goes on (and
        its process exits, at a stop)."""
        start = time.monotonic()
        with self._cond:
            self._waiting += 1
            self._cond.notify_all()  # a worker pausing between its looks looks again now
            try:
                self._cond.wait_for(lambda: not self._pending, timeout)
                if timeout is not None and self._pending and self._awaits_peers(self._pending[0]):
                    deadline = start + timeout
                    self._cond.wait_for(lambda: not self._pending or self._pending[0].looked >= deadline, LAST_LOOK_S)
            finally:
                self._waiting -= 1
            left = [j.name for j in self._pending]
        waited = time.monotonic() - start
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

    def last_error(self) -> str | None:
        """The store's last error since it last took an upload, in one line without a credential: storage's
        classification where it knows the error (unreachable, credentials, denied, full, busy...: what to do), else
        its type and words; None where none failed since."""
        with self._cond:
            return self._last_error

    def why_unsent(self) -> str:
        """Why what is still pending is not in the store, for the line that says it was not uploaded in time: the
        store's last error, node 0 waiting for the other nodes' shares, or an upload under way without an error."""
        if said := self.last_error():
            return f"the store's last error: {said.rstrip('.')}"  # said inside the caller's sentence
        with self._cond:
            peers = bool(self._pending) and self._awaits_peers(self._pending[0])
        if peers:
            return "node 0's share is in the store; another node's share of it was not"
        return (
            "the store reported no error: the upload was still under way (a slow link or a large model: raise "
            "-o upload_wait_s)"
        )

    def _failed(self, exc: BaseException) -> None:
        """Keep ``exc`` as the store's last error (last_error)."""
        said = storage.store_error(exc, self.remote_uri, self.endpoint_url)
        line = str(said) if said is not None else f"{type(exc).__name__}: {storage.redact(str(exc))}"
        line = " ".join(line.split())  # one line
        with self._cond:
            self._last_error = line if len(line) <= 400 else line[:399] + "…"

    def close(self, timeout: float | None = 0) -> bool:
        """Wait up to ``timeout`` for pending uploads, then stop the thread."""
        ok = self.wait(timeout) if timeout != 0 else not self.pending()
        self._closed.set()
        with self._cond:
            self._cond.notify_all()  # a worker pausing between its looks
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
            # what this node sends, and no other file: nodes that stage into one directory write their manifests
            # there at once (another's .ftctl-tmp is gone by the time it would be linked)
            with open(os.path.join(ckpt_dir, self.manifest_name), "rb") as f:
                listed = [e["path"] for e in json.loads(f.read())["files"]]
            for rel in [*listed, self.manifest_name]:
                src = os.path.join(ckpt_dir, *rel.split("/"))
                dst = os.path.join(staged, *rel.split("/"))
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                os.link(src, dst)
        except OSError as exc:
            shutil.rmtree(staged, ignore_errors=True)
            log.warning(
                "cannot hard-link %s (%s); uploading it in place (older checkpoints are rotated away only once "
                "it is uploaded)",
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
            self._skip_superseded()
            if job.skipped:
                continue
            while not self._closed.is_set():
                try:
                    if self._attempt(job):
                        break
                    self._pause(job)  # other nodes' shares not there yet
                except Exception as exc:  # noqa: BLE001 - store errors of every kind
                    if isinstance(exc, FileNotFoundError) and not os.path.isdir(job.local):
                        # gone from this disk (deleted by hand): no retry brings it back, and every checkpoint
                        # after it waited behind it, the final model too
                        log.error("%s is gone before its upload to %s: not uploaded", job.local, self.remote_uri)
                        break
                    self._failed(exc)
                    job.attempt_no += 1
                    base, cap = self.backoff
                    delay = min(cap, base * 2 ** (job.attempt_no - 1)) * random.uniform(0.8, 1.2)
                    if self._full(exc, job):
                        self._closed.wait(delay)
                        continue
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
            self._full_said = False  # taken: a store full again is said again
            with self._cond:
                self._last_error = None
                self._pending.remove(job)
                self._cond.notify_all()

    def _skip_superseded(self) -> None:
        """Take out of the queue every checkpoint that retention (prune) would delete as soon as the store holds the
        ones queued behind it: not started, ``keep_last`` newer checkpoints queued, and not ``protected`` (the best,
        which load_best_model_at_end loads). The newest is never one of them. Their hard links are removed (a checkpoint
        uploading in place is the trainer's rotation's again) and one line says which. Uploads that fell behind the
        saves sent each in turn, the store deleting it right after, and a stop's checkpoint waited behind them for
        minutes. One node only: on several, node 0 commits a checkpoint once every node's share is in, and a node that
        skipped its share alone (the queues of two nodes differ) would hold node 0 waiting for it."""
        if not self.keep_last or self.num_nodes > 1:
            return
        with self._cond:
            steps = sorted({checkpoint_step(j.name) for j in self._pending if not j.final} - {None})
            if len(steps) <= self.keep_last:
                return
            kept_from = steps[-self.keep_last]  # the oldest step that retention keeps once the queue is in
            skipped = [
                j
                for j in self._pending
                if not (j.final or j.started or j.name in self.protected)
                and (step := checkpoint_step(j.name)) is not None
                and step < kept_from
            ]
            for j in skipped:
                j.skipped = True
                self._pending.remove(j)
            if skipped:
                self._cond.notify_all()
        if not skipped:
            return
        for j in skipped:
            if j.local != j.original:
                shutil.rmtree(j.local, ignore_errors=True)
        names = [j.name for j in sorted(skipped, key=lambda j: checkpoint_step(j.name))]
        what = ", ".join(names) if len(names) <= 3 else f"{names[0]}, ..., {names[-1]} ({len(names)} checkpoints)"
        n, secs = self.lag()
        log.info(
            "upload: skipped %s, superseded before their upload (save_total_limit %d: %d newer queued; retention "
            "would delete them once those land); lag now: %d checkpoint(s), %.0f s",
            what,
            self.keep_last,
            len([s for s in steps if s > checkpoint_step(names[-1])]),
            n,
            secs,
        )

    def _full(self, exc: BaseException, job: _Job) -> bool:
        """Whether ``exc`` is the store refusing a write for lack of space or quota (storage's "full"): said once in
        one line (what to free; the checkpoints stay on this node, nothing half-committed: a manifest goes in after
        its files), then tried again at the capped backoff, unsaid, until the store takes one again. Each attempt's
        warning repeated the store's XML error for as long as the store stayed full."""
        said = storage.store_error(exc, self.remote_uri, self.endpoint_url)
        if said is None or said.kind != "full":
            self._full_said = False
            return False
        if not self._full_said:
            self._full_said = True
            log.error("%s (%s not uploaded yet; trying again every %.0f s at most)", said, job.name, self.backoff[1])
        return True

    def _awaits_peers(self, job: _Job) -> bool:
        """Node 0 has its own share of ``job`` in the store and waits for the other nodes'."""
        return self.num_nodes > 1 and self.node_rank == 0 and not job.final and job.uploaded

    def _pause(self, job: _Job) -> None:
        """Between node 0's looks for the other nodes' shares: FIRST_POLL_S doubled at each look up to
        poll_interval, and HURRY_POLL_S at most while someone waits (wait: a stop, the end of the run)."""
        seconds = min(self.poll_interval, FIRST_POLL_S * 2**job.polls)
        job.polls += 1
        start = time.monotonic()
        with self._cond:
            self._cond.notify_all()  # a wait past its limit sees this look
            while not self._closed.is_set():
                limit = min(seconds, HURRY_POLL_S) if self._waiting else seconds
                elapsed = time.monotonic() - start
                if elapsed >= limit:
                    return
                self._cond.wait(limit - elapsed)

    def _attempt(self, job: _Job) -> bool:
        """One try; True when the job is finished, False to poll again later. Nothing is written into an output whose
        lease this process held (or, on another node, follows: lease.follow) and lost (ftctl.lease.check: another job
        may write it now); a checkpoint or final model starts only where the store's lease is still this run's."""
        # asked of the store before a job's first write (a checkpoint's old manifest withdrawn, another node's share):
        # an output another job took over before this trainer's renewal (or this node) saw it gets nothing written
        lease.check(self.remote_uri, ask=not job.started)
        if self._fs is None:
            self._fs, _ = storage.filesystem(self.remote_uri, self.endpoint_url)
        if job.final:
            if not job.started:  # an earlier final model's config would vouch for the files about to be replaced
                for mark in FINAL_MARKS:
                    storage.rm(storage.join(self.remote_uri, mark), endpoint_url=self.endpoint_url)
                job.started = True

            def send(rel: str) -> None:
                _put(self._fs, os.path.join(job.local, *rel.split("/")), storage.join(self.remote_uri, *rel.split("/")))
                job.done.add(rel)

            todo = [rel for rel in final_files(job.local) if rel not in job.done]
            storage.each_at_once(
                send, [rel for rel in todo if rel not in FINAL_MARKS], storage.files_at_once(self.remote_uri)
            )
            storage.each_at_once(send, [rel for rel in todo if rel in FINAL_MARKS], 1)  # its config once the rest is in
            log.info("uploaded the final model to %s", self.remote_uri)
            if self.node_rank == 0:
                self._prune_at_end()
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
            job.shared_at = time.time()
            job.attempt_no = 0
            remember_uploaded(os.path.dirname(job.original), job.name)
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
        self._committed = checkpoint_step(job.name)
        prune(self.remote_uri, self.keep_last, self.protected, self.endpoint_url, self._committed)
        if self.node_rank == 0:  # rank 0's node: where its spec.json is, and where TensorBoard and W&B write
            self._send_records(job)
            self._send_tracking(os.path.dirname(job.original))
        return True

    def _send_records(self, job: _Job) -> None:
        """The run's spec.json and its metrics.jsonl as of ``job`` (the checkpoint's copy, metrics_copy: whole
        lines, none past its step) into the store beside the checkpoint just committed, where records_to_send lets
        them go: a run stopped, preempted or killed before its final model left a store of checkpoints only, which
        `ftctl chat`/`eval`/`merge` loaded without its method (a qlora checkpoint on the 16-bit base) and whose
        `ftctl sync pull` was no run directory. spec.json goes once (again only where it changed), metrics.jsonl where
        it grew, spec.json last; where the store holds another run's spec.json or a final model, nothing, said once.
        The store's errors raise: the job is tried again (its checkpoint committed), so a stop's wait covers them."""
        if self._records_kept:
            return
        run_dir = os.path.dirname(job.original)
        local = {SPEC_FILE: os.path.join(run_dir, SPEC_FILE), METRICS_FILE: metrics_copy(job.local) or ""}
        local = {rel: path for rel, path in local.items() if os.path.isfile(path)}
        sizes = {rel: os.path.getsize(path) for rel, path in local.items()}
        if sizes == self._records_sent:  # as sent with the last checkpoint: nothing asked of the store
            return
        with _plain(local.get(METRICS_FILE)) as plain:  # the copy is gzip: the store's metrics.jsonl is not
            if plain:
                local[METRICS_FILE] = plain
            self._send_these(local, sizes, run_dir, job)

    def _send_these(self, local: dict[str, str], sizes: dict[str, int], run_dir: str, job: _Job) -> None:
        """_send_records' sending of the records ``local`` (plain files), ``sizes`` as they are in the checkpoint."""
        send, kept = records_to_send(local, self.remote_uri, run_dir, self.endpoint_url, self.continues)
        names = " and ".join(send)
        if kept == "final":
            self._records_kept = True
            log.info("not sending %s to %s: it holds a final model, whose records they are until this run's final "
                     "model replaces them", names, self.remote_uri)  # fmt: skip
            return
        if kept:
            self._records_kept = True
            log.warning("not sending %s to %s: it holds another run's %s (other training settings), kept; this run's "
                        "go with its final model", names, self.remote_uri, SPEC_FILE)  # fmt: skip
            return
        for rel in send:  # RUN_RECORDS' order: spec.json last
            _put(self._fs, local[rel], storage.join(self.remote_uri, rel))
        self._records_sent = sizes
        if send:  # metrics.jsonl alone, as it grows: no line each checkpoint
            log.log(logging.INFO if SPEC_FILE in send else logging.DEBUG, "sent %s to %s with %s", names,
                    self.remote_uri, job.name)  # fmt: skip

    def _prune_at_end(self) -> None:
        """Retention once more, after the final model: a deletion cut short by a kill (a checkpoint's manifest gone,
        its files not) is otherwise cleared by the next commit's retention, and a run resumed from its last step
        commits none. A store error is a warning: the run's model is in."""
        try:
            prune(self.remote_uri, self.keep_last, self.protected, self.endpoint_url, self._committed)
        except Exception as exc:  # noqa: BLE001 - store errors of every kind
            log.warning("cannot apply retention in %s at the end: %s", self.remote_uri, storage.redact(str(exc))[:300])

    def _send_tracking(self, local_dir: str) -> None:
        """The run's TensorBoard and W&B files that changed since they were last sent: the store has them while the
        run trains (`tensorboard --logdir OUTPUT/runs`), and an attempt's on a node a recovery replaced. Small; a
        failure is a warning, and they go with the next checkpoint."""
        for rel in tracking_files(local_dir):
            path = os.path.join(local_dir, *rel.split("/"))
            try:
                size = os.path.getsize(path)
                if self._tracking_sent.get(rel) != size:
                    _put(self._fs, path, storage.join(self.remote_uri, *rel.split("/")))
                    self._tracking_sent[rel] = size
            except Exception as exc:  # noqa: BLE001 - store errors of every kind; the checkpoint is committed
                log.warning("cannot upload %s to %s: %s", rel, self.remote_uri, storage.redact(str(exc))[:300])
                return

    def _commit_nodes(self, job: _Job, ckpt_uri: str) -> bool:
        """Node 0: merge every node's manifest into ftctl-manifest.json once all are there. True: done (committed, or
        given up: a node's manifest not in within peer_wait_s of node 0's share); False: poll again."""
        attempt = job.attempt or self.attempt
        looking = time.monotonic()
        names = {e["name"] for e in storage.ls(ckpt_uri, self.endpoint_url)}
        manifests = {}
        for k in range(self.num_nodes):
            if node_manifest_name(k) not in names:
                continue
            m = read_manifest(ckpt_uri, node_manifest_name(k), self.endpoint_url)
            if m.get("attempt") == attempt:
                manifests[k] = m
        missing = [k for k in range(self.num_nodes) if k not in manifests]
        job.looked = looking
        if missing:
            waited = time.time() - job.shared_at
            if self.peer_wait_s is None or waited < self.peer_wait_s:
                if not job.polls:  # said once: node 0 looks again every HURRY_POLL_S at a stop
                    log.info("%s: waiting for the manifests of node(s) %s", ckpt_uri, missing)
                return False
            log.warning(
                "%s: node(s) %s sent no share of it within %.0f s of node 0's (the node died, or holds none to send): "
                "left uncommitted (no %s), so nothing resumes from it; uploading the checkpoints after it",
                ckpt_uri,
                ", ".join(map(str, missing)),
                waited,
                MANIFEST,
            )
            return True
        merged, rewrite = merge_nodes(manifests)
        for rel in rewrite:  # a file two nodes wrote differently: node 0's copy, re-sent now
            parts = rel.split("/")
            _put(self._fs, os.path.join(job.local, *parts), storage.join(ckpt_uri, *parts))
        problems = check_files(merged, storage.file_sizes(ckpt_uri, self.endpoint_url))
        if problems:
            raise OSError(f"files listed by the node manifests are not in the store: {problems[:3]}")
        write_json_atomic(os.path.join(job.local, MANIFEST), merged)
        lease.check(ckpt_uri, ask=True)
        commit_point("remote-manifest", job.name)
        _put(self._fs, os.path.join(job.local, MANIFEST), storage.join(ckpt_uri, MANIFEST))
        log.info(
            "committed %s from %d nodes (%.0f s after it was saved)",
            ckpt_uri,
            self.num_nodes,
            time.time() - job.submitted,
        )
        return True
