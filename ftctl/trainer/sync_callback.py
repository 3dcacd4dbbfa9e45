"""The Trainer side of the checkpoint commit protocol (see ftctl/checkpoints.py).

``transformers.Trainer._save_checkpoint`` (5.x) writes, in this order: the model (and adapter /
tokenizer) files, optimizer + scheduler, scaler, the per-rank ``rng_state*.pth``, then
``trainer_state.json`` (main process), then rotates old checkpoints (``save_total_limit``: ftctl gives it
None and rotates here, after the manifest), and only then calls ``on_save`` on every rank. Rank 0 does not
wait for the other ranks' rng files, so ``on_save`` first holds a barrier; after it, every file of the
checkpoint is on disk and the manifest is written (by the main process of each node), then handed to the
:class:`Uploader`, and older checkpoints beyond ``rotate`` are deleted.

Usage in the trainer::

    resume = resume_checkpoint(local_output_dir, remote_uri)      # before Trainer.train
    cb = CheckpointSyncCallback(remote_uri, spec_hash=spec.hash())
    trainer = Trainer(..., callbacks=[cb])
    trainer.train(resume_from_checkpoint=resume)
    # on a preemption signal, after the final save: cb.wait_for_uploads(limit_s)
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_utils import sort_checkpoints

from ftctl import checkpoints, failures, lease, storage
from ftctl.checkpoints import staging
from ftctl.checkpoints.staging import remove_checkpoint
from ftctl.errors import FtctlError
from ftctl.runpaths import METRICS_FILE, RESUME_LOCK, open_lock
from ftctl.spec import RunSpec
from ftctl.trainer.callbacks import MetricsCopy

log = logging.getLogger(__name__)

#: seconds the end of a run waits for the last checkpoint's upload before giving up (logged)
UPLOAD_WAIT_S = RunSpec.upload_wait_s  # the one default lives in the spec
NODE_MARK = ".ftctl-node-"  # + attempt + "-" + node rank: a node stages into this directory (lists_files)


def node_topology(shared_filesystem: bool = False) -> tuple[int, int]:
    """(node rank, number of nodes) from torchrun's environment; (0, 1) when not distributed or
    when all nodes share one filesystem (then node 0 sees and uploads every file)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    if shared_filesystem or world <= local_world:
        return 0, 1
    num_nodes = world // local_world
    rank = os.environ.get("GROUP_RANK") or os.environ.get("NODE_RANK")
    node = int(rank) if rank is not None else int(os.environ.get("RANK", "0")) // local_world
    return node, num_nodes


def rotate_around(output_dir: str, limit: int | None, best: str | None, busy: set[str]) -> None:
    """transformers' rotate_checkpoints (the newest ``limit`` kept, and ``best``), leaving ``busy`` ones alone."""
    if not limit:
        return
    found = sorted(
        (p for p in os.listdir(output_dir) if checkpoints.checkpoint_step(p) is not None),
        key=lambda p: checkpoints.checkpoint_step(p),
    )
    keep = {*found[-limit:], *busy, os.path.basename(best) if best else ""}
    for name in found:
        if name not in keep:
            remove_checkpoint(os.path.join(output_dir, name))


def rotate(output_dir: str, limit: int | None, best: str | None) -> None:
    """transformers' rotate_checkpoints (the newest ``limit`` by mtime kept, the newest and ``best`` always), each
    removed whole (remove_checkpoint)."""
    if not limit or limit <= 0:
        return
    # its glob is checkpoint-*: a user's checkpoint-12.bak or checkpoint-good beside them went too (explore36)
    found = [p for p in sort_checkpoints(output_dir, use_mtime=True) if checkpoints.checkpoint_step(p) is not None]
    protected = {found[-1], str(Path(best))} if best and found else set(found[-1:])
    left = len(found)
    for path in found:
        if left <= max(limit, len(protected)):
            break
        if path not in protected:
            remove_checkpoint(path)
            left -= 1


def named_checkpoint(
    local_dir: str, uri: str, listed: list, endpoint_url: str | None = None, peers: Peers | None = None
) -> str:
    """The local path of checkpoint ``uri`` of the run's store (resume=OUTPUT/checkpoint-N), downloaded and verified
    where this node lacks a verified copy; ``listed``: the store's checkpoints. FtctlError where the store holds no
    complete one of that name. Call it from every process: one per directory does it (one_per_directory)."""
    name = uri.rstrip("/").rsplit("/", 1)[1]
    found = next((c for c in listed if c.name == name), None)
    if found is None or not found.complete:
        why = "; ".join(found.problems) if found else "not there"
        raise FtctlError(f"resume={uri}: not a complete checkpoint of the store ({why}): `ftctl sync ls` lists them.")

    def fetch(_chosen=None) -> str:
        path = os.path.join(local_dir, name)
        try:
            here = checkpoints.read_manifest(path)
        except (OSError, ValueError):  # none here, or not a manifest
            here = None
        # this node's copy where it is the store's (an earlier run's of that name is replaced: download_checkpoint)
        if here and here["files"] == found.manifest["files"] and not checkpoints.verify(path, deep=True):
            return path
        problems = checkpoints.download_checkpoint(found.uri, local_dir, found.manifest, endpoint_url)
        if problems:
            raise FtctlError(f"resume={uri}: its download did not verify ({'; '.join(problems)}).")
        log.info("resuming from %s (downloaded from %s, verified)", path, found.uri)
        return path

    return one_per_directory(local_dir, fetch, fetch, peers)


def resume_checkpoint(
    local_dir: str, remote_uri: str | None = None, endpoint_url: str | None = None, peers: Peers | None = None
) -> str | None:
    """The local path of the checkpoint to pass to ``Trainer.train(resume_from_checkpoint=)``.

    The newest complete, sha256-verified checkpoint of ``local_dir`` or ``remote_uri``
    (downloaded when only the store has it); None to start from scratch. Call it from every process: one per
    directory chooses, the others wait and take its choice (one_per_directory). Leftovers of a killed run's upload
    staging are removed. Raises FtctlError when the store cannot be listed.
    """

    def clear() -> None:
        for leftover in (checkpoints.STAGING_DIR, checkpoints.DOWNLOAD_DIR, checkpoints.DELETING_DIR):
            shutil.rmtree(os.path.join(local_dir, leftover), ignore_errors=True)

    def choose() -> str | None:
        clear()
        return checkpoints.latest_complete(local_dir, remote_uri, endpoint_url)

    def follow(name: str | None) -> str | None:  # rank 0's choice, on a disk of this node's own
        clear()
        if name is None:
            return None
        return checkpoints.latest_complete(local_dir, remote_uri, endpoint_url, step=checkpoints.checkpoint_step(name))

    return one_per_directory(local_dir, choose, follow, peers)


@dataclass
class Peers:
    """This process among the processes of a multi-node run, and the store they share (torchrun's)."""

    store: object
    rank: int
    local_rank: int
    world_size: int
    calls: itertools.count = field(default_factory=itertools.count)

    @classmethod
    def of_torchrun(cls) -> Peers | None:
        """From torchrun's environment, where the processes are on several nodes; else None."""
        global _PEERS
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= int(os.environ.get("LOCAL_WORLD_SIZE", str(world))):
            return None
        if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":  # not torchrun's: its store is not up yet
            log.warning("no torchrun store: each node's processes choose their checkpoint themselves")
            return None
        if _PEERS is None:
            import torch.distributed as dist

            store = dist.TCPStore(
                os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False, timeout=PEER_WAIT
            )
            restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
            _PEERS = cls(dist.PrefixStore(f"ftctl-resume/{restart}", store), int(os.environ["RANK"]),
                         int(os.environ["LOCAL_RANK"]), world)  # fmt: skip
        return _PEERS


_PEERS: Peers | None = None
PEER_WAIT = timedelta(hours=24)  # what the other processes wait for rank 0's choice (a download of 128 GB...)
SEEN_WAIT_S = 600  # what rank 0 waits for every process to look for its mark before removing it
MARK = ".ftctl-resume-"  # + a token: rank 0's mark in the directory it chose in


def one_per_directory(local_dir: str, choose, follow, peers: Peers | None = None):
    """The checkpoint the run resumes from, chosen, downloaded or set aside by one process per directory.

    Rank 0 runs ``choose()`` (the checkpoint's local path, or None) and leaves a mark in ``local_dir``. Every other
    process that sees the mark shares rank 0's directory (a shared home): it takes rank 0's result. On a node that
    does not see it (a disk of its own: node-local /tmp), the node's local rank 0 runs ``follow(name)`` for rank 0's
    checkpoint name and the node's other processes take its result. An error of the process that chooses is raised
    in those that wait for it. One process (no torchrun store): ``choose()``, one process of the node at a time."""
    peers = peers or Peers.of_torchrun()
    if peers is None:
        with resume_lock(local_dir):
            return choose()
    key = f"{next(peers.calls)}/"
    if peers.rank == 0:
        token = uuid.uuid4().hex
        mark = os.path.join(local_dir, MARK + token)
        try:
            with resume_lock(local_dir):
                path = choose()
                Path(mark).touch()
        except BaseException as exc:
            peers.store.set(key + "chosen", json.dumps({"error": failure_line(exc)}))
            raise
        peers.store.set(key + "chosen", json.dumps({"name": path and os.path.basename(path), "token": token}))
        deadline = time.monotonic() + SEEN_WAIT_S
        while peers.store.add(key + "seen", 0) < peers.world_size - 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        Path(mark).unlink(missing_ok=True)
        return path
    chosen = json.loads(peers.store.get(key + "chosen"))
    shared = "error" not in chosen and os.path.exists(os.path.join(local_dir, MARK + chosen["token"]))
    peers.store.add(key + "seen", 1)
    if "error" in chosen:
        raise FtctlError(f"rank 0: {chosen['error']}")
    if shared:
        return os.path.join(local_dir, chosen["name"]) if chosen["name"] else None
    node = f"{key}node-{peers.rank - peers.local_rank}"  # torchrun numbers a node's processes together
    if peers.local_rank == 0:
        try:
            with resume_lock(local_dir):
                path = follow(chosen["name"])
        except BaseException as exc:
            peers.store.set(node, json.dumps({"error": failure_line(exc)}))
            raise
        peers.store.set(node, json.dumps({"path": path}))
        return path
    said = json.loads(peers.store.get(node))
    if "error" in said:
        raise FtctlError(f"local rank 0 of this node: {said['error']}")
    return said["path"]


def failure_line(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, FtctlError) else failures.exception_line(exc)


@contextlib.contextmanager
def resume_lock(local_dir: str):
    """Held while a node's processes choose, download or set aside checkpoints in ``local_dir``: one at a time."""
    path = Path(local_dir) / RESUME_LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    with open_lock(path) as lock:  # another user's, in a group's run directory: read-only, as flock takes it
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class CheckpointSyncCallback(TrainerCallback):
    """Writes each checkpoint's manifest after its files and uploads it in the background.

    ``remote_uri`` None keeps checkpoints local (manifests are still written, so local resume
    never takes a partial checkpoint). ``keep_last`` prunes the store to the newest K complete
    checkpoints plus the best one. ``shared_filesystem`` says that all nodes see one output
    directory (then node 0 alone uploads). ``rotate``: the Trainer's save_total_limit, applied to the
    local directory here, once the new checkpoint's manifest is written (the Trainer deletes older
    checkpoints before on_save: with a limit of 1, a run stopped while the manifest's hashes were taken
    had no complete checkpoint left, and its relaunch started from step 0). ``upload_wait_s``: what the end of a run
    waits for its uploads, and node 0 for another node's share of a checkpoint once its own is in (then it leaves
    that checkpoint uncommitted and goes on with the next). ``keep_staging``: the end of the run keeps what the
    store holds on this node's disk (free_staging).
    """

    def __init__(
        self,
        remote_uri: str | None = None,
        *,
        spec_hash: str = "",
        settings: dict | None = None,
        endpoint_url: str | None = None,
        keep_last: int | None = None,
        rotate: int | None = None,
        upload_wait_s: float = UPLOAD_WAIT_S,
        shared_filesystem: bool = False,
        backoff: tuple[float, float] = (1.0, 60.0),
        poll_interval: float = 5.0,
        resumed: str | None = None,
        keep_staging: bool = False,
    ):
        self.remote_uri = remote_uri
        self.keep_staging = keep_staging  # the staged checkpoints and final model kept once the store holds them
        self.resumed = resumed  # the checkpoint the run resumes from (resume_point)
        self.spec_hash = spec_hash
        self.settings = settings  # what the run trains with (checkpoints.settings), in each manifest
        self.endpoint_url = endpoint_url
        self.keep_last = keep_last
        self.rotate = rotate
        self.upload_wait_s = upload_wait_s
        self.node_rank, self.num_nodes = node_topology(shared_filesystem)
        self.backoff = backoff
        self.poll_interval = poll_interval
        self.uploader: checkpoints.Uploader | None = None
        self.attempt: str | None = None
        self.lists_files = True  # this node's manifest lists (and it uploads) the checkpoint's files: lists_files
        self.follower: lease.Follower | None = None  # another node's: rank 0's lease, asked before each share
        self.metrics_copy = MetricsCopy()  # metrics.jsonl into each checkpoint (gzip, a member a save)

    # -- helpers

    def _writes(self, state) -> bool:
        """Whether this process writes manifests and uploads: one process per node."""
        return state.is_world_process_zero if self.num_nodes == 1 else state.is_local_process_zero

    def _agree_on_attempt(self) -> str:
        return self._from_rank0(uuid.uuid4().hex)

    @staticmethod
    def _from_rank0(value):
        """Rank 0's ``value`` on every process (broadcast where a process group is up)."""
        try:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                box = [value]
                dist.broadcast_object_list(box, src=0)
                value = box[0]
        except (ImportError, RuntimeError) as exc:
            log.debug("not broadcast: %s", exc)
        return value

    @staticmethod
    def _barrier() -> None:
        try:
            import torch.distributed as dist
        except ImportError:
            return
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.barrier()

    # -- Trainer events

    def lists_files_of(self, output_dir: str, writes: bool) -> bool:
        """Whether this node's manifests list the checkpoints' files (and it uploads them): where nodes stage into
        one directory (a home they share, ~/.cache/ftctl/runs/...), only the first of them; the others' manifests list
        none (merge_nodes: the first's files). Each uploaded every file of the directory, once per node, and its
        manifest listed them all. Every node where each has a disk of its own. ``writes``: this process writes
        this node's manifests; every process takes part (a barrier)."""
        mark = f"{NODE_MARK}{self.attempt}-"
        if writes:
            with contextlib.suppress(OSError):
                for name in os.listdir(output_dir):  # an earlier attempt's, on this disk
                    if name.startswith(NODE_MARK) and not name.startswith(mark):
                        with contextlib.suppress(OSError):
                            os.unlink(os.path.join(output_dir, name))
            Path(output_dir, f"{mark}{self.node_rank}").touch()
        self._barrier()  # every node's mark is written
        return not any(Path(output_dir, f"{mark}{k}").exists() for k in range(self.node_rank))

    def on_train_begin(self, args, state, control, **kwargs):
        self.attempt = self._agree_on_attempt()
        record = self._from_rank0(lease.record_of(self.remote_uri))  # the lease rank 0 holds on the store, or None
        if self.num_nodes > 1:
            self.lists_files = self.lists_files_of(args.output_dir, self._writes(state))
            if self._writes(state) and not self.lists_files:
                log.info("node %d stages into the directory of a node before it: that node sends the checkpoints' "
                         "files, this one its manifest only", self.node_rank)  # fmt: skip
        if self.remote_uri and self._writes(state) and self.uploader is None:
            if record is not None and self.node_rank != 0 and self.follower is None:
                # another node writes its shares only while the store's lease is rank 0's (lease.follow)
                self.follower = lease.follow(self.remote_uri, self.endpoint_url, record)
            self.uploader = checkpoints.Uploader(
                self.remote_uri,
                endpoint_url=self.endpoint_url,
                node_rank=self.node_rank,
                num_nodes=self.num_nodes,
                attempt=self.attempt,
                keep_last=self.keep_last,
                backoff=self.backoff,
                poll_interval=self.poll_interval,
                peer_wait_s=self.upload_wait_s,  # a node's share not in by then will not come: the queue goes on
                continues=self._resumes_own(args.output_dir),  # the store's spec.json is this run's to replace
            )
            self._send_resumed(args.output_dir)

    def _resumes_own(self, output_dir: str) -> bool:
        """Whether the run resumes from a checkpoint of its own output (for an object-store output, the store's: the run
        goes on with that store's checkpoints, settings changed or not), not from resume=PATH elsewhere."""
        return bool(self.resumed) and os.path.dirname(os.path.abspath(self.resumed)) == os.path.abspath(output_dir)

    def _send_resumed(self, output_dir: str) -> None:
        """Upload the run's own checkpoint it resumes from where the store lacks a complete copy: a run killed while
        uploading it resumes from its verified local copy, and the store's would stay cut short for good (a later
        attempt on another node would go back to an older one). On several nodes each node sends its own share
        again, with its manifest of the attempt that saved it, and node 0 commits the merge once every node's is in
        (as at a save): a stop checkpoint of a shared home whose upload was cut short (latest_complete took it by its
        nodes' manifests)."""
        if not self._resumes_own(output_dir):  # none, or resume=PATH elsewhere: not this run's to send
            return
        path = os.path.abspath(self.resumed)
        name = os.path.basename(path)
        try:
            problems = checkpoints.verify(
                storage.join(self.remote_uri, name), deep=False, endpoint_url=self.endpoint_url
            )
        except Exception as exc:  # noqa: BLE001 - the store's own errors: the next save's upload retries and says
            if self.num_nodes == 1:
                log.warning("cannot check %s in %s: %s", name, self.remote_uri, storage.redact(str(exc)))
                return
            # node 0 may be sending its share and waiting for this node's: sent again (the same files), never left out
            problems = [f"cannot check it: {storage.redact(str(exc))}"]
        if not problems:
            return
        attempt = None
        if self.num_nodes > 1:
            try:
                attempt = checkpoints.read_manifest(path, checkpoints.node_manifest_name(self.node_rank))["attempt"]
            except (OSError, ValueError, KeyError) as exc:  # a copy downloaded from the store holds no node manifest
                log.warning("%s is not complete in %s (%s), and node %d holds no share of it to send (%s)",
                            name, self.remote_uri, problems[0], self.node_rank, exc)  # fmt: skip
                return
        log.warning("%s is not complete in %s (%s): uploading it again", name, self.remote_uri, problems[0])
        self.uploader.submit(path, attempt=attempt)

    def on_save(self, args, state, control, **kwargs):
        self._barrier()  # every rank's files (rng_state_<rank>.pth, shards) are written
        if self._writes(state):
            ckpt = os.path.join(args.output_dir, f"{checkpoints.CHECKPOINT_PREFIX}{state.global_step}")
            if not os.path.isdir(ckpt):
                log.warning("on_save: %s does not exist; nothing to commit", ckpt)
            else:
                metrics = os.path.join(args.output_dir, METRICS_FILE)  # rank 0's, written in this thread
                # node 0's alone: nodes staging into one directory (a home they share) would each write the copy,
                # and one's rename of its temp file took the other's (the two-node SkyPilot launch, gzip copy)
                if self.node_rank == 0 and os.path.isfile(metrics):
                    self.metrics_copy.save(metrics, ckpt)
                extra = {"settings": self.settings} if self.settings else {}
                name = checkpoints.MANIFEST
                if self.num_nodes > 1:
                    name = checkpoints.node_manifest_name(self.node_rank)
                    extra |= {
                        "node_rank": self.node_rank,
                        "num_nodes": self.num_nodes,
                        "attempt": self.attempt,
                        "with_files": self.lists_files,
                    }
                checkpoints.write_manifest(ckpt, state.global_step, args.world_size, self.spec_hash, name=name, **extra)
                if self.uploader is not None:
                    if state.best_model_checkpoint:
                        self.uploader.protected = {os.path.basename(state.best_model_checkpoint)}
                    self.uploader.submit(ckpt)
                # as the Trainer would have, now that the new one is complete (each node its own directory)
                busy = self.uploader.uploading_in_place() if self.uploader is not None else set()
                if busy:  # uploaded from their own directories (no hard links here): kept until they are in
                    rotate_around(args.output_dir, self.rotate, state.best_model_checkpoint, busy)
                else:
                    rotate(args.output_dir, self.rotate, state.best_model_checkpoint)
        return control

    def on_train_end(self, args, state, control, **kwargs):
        self.wait_for_uploads(self.upload_wait_s)
        return control

    def upload_final(self, local_dir: str) -> bool:
        """Upload the run's top-level files (the final model) with the checkpoints' retries; True
        once they are in the store (or there is no store), False when upload_wait_s ran out."""
        if self.uploader is None:
            return True
        self.uploader.submit_final(local_dir)
        if not self.uploader.wait(self.upload_wait_s):
            return False
        self.free_staging(local_dir)
        return True

    def free_staging(self, local_dir: str) -> None:
        """The checkpoints and final model staged in ``local_dir`` removed where the store holds them
        (checkpoints.staging.free checks the store), said in one line; rank 0 calls it once its final model is in,
        another node's local rank 0 after it (the trainer's save). Where the nodes stage into one directory only the
        first of them does. Kept with keep_staging, or where the store's answer is an error (said)."""
        if self.remote_uri is None or self.keep_staging or not self.lists_files:
            return
        try:
            freed = staging.free(local_dir, self.remote_uri, self.endpoint_url)
        except Exception as exc:  # noqa: BLE001 - the store's own errors: the run's model is in, nothing is removed
            log.warning("kept the run's staging in %s: cannot check what %s holds (%s)", local_dir, self.remote_uri,
                        storage.redact(str(exc))[:300])  # fmt: skip
            return
        if line := freed.line(local_dir, self.remote_uri):  # all of it kept: something is not in the store
            log.log(logging.INFO if freed.removed else logging.WARNING, "%s", line)

    def unsent(self) -> list[str]:
        """The checkpoints queued for upload that the store has not committed (none without a store); ask before
        ``close``."""
        return self.uploader.pending() if self.uploader is not None else []

    def why_unsent(self) -> str:
        """Why what ``unsent`` lists is not in the store, in one line without a credential (Uploader.why_unsent: the
        store's last error, say unreachable, credentials refused or full, with what to do): the lines saying that a
        checkpoint or the final model was not uploaded within upload_wait_s named no cause. Ask before ``close``."""
        return self.uploader.why_unsent() if self.uploader is not None else "no store to upload to"

    def close(self) -> None:
        if self.uploader is not None:
            self.uploader.close(0)
            self.uploader = None
        if self.follower is not None:
            self.follower.close()
            self.follower = None

    def wait_for_uploads(self, timeout: float | None = None) -> bool:
        """Wait (at most ``timeout`` s, logged) for every queued checkpoint to be committed in
        the store. The trainer calls this at the end and after its save on a preemption signal."""
        if self.uploader is None:
            return True
        return self.uploader.wait(self.upload_wait_s if timeout is None else timeout)
