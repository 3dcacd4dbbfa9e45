"""The checkpoint format: ``ftctl-manifest.json`` (files, sizes, sha256, step, world size, spec
hash) written after every file, and the check that a checkpoint is complete.

A checkpoint is a Hugging Face Trainer ``checkpoint-<step>`` directory. It is **complete** only
when ``ftctl-manifest.json`` sits in it and every file the manifest lists is there with the
listed size and sha256. Layout, locally and remotely::

    <run>/checkpoint-<step>/...files...
    <run>/checkpoint-<step>/ftctl-manifest.json        # the commit record, written last
    <run>/checkpoint-<step>/manifest.node-<k>.json     # multi-node only: node k's files

``HOOKS``: functions called as ``hook(point, checkpoint_name)`` at the two commit points
(``local-manifest``: all files saved, manifest not yet written; ``remote-manifest``: all files
uploaded, manifest not yet uploaded). Empty in production; the tests install one (tests/hold/) to
stop a process at exactly that moment.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import logging
import os
import re
import shutil
import time
import zlib
from collections.abc import Collection
from typing import IO

from ftctl import storage
from ftctl.gpus import usable_cores
from ftctl.runpaths import CHECKPOINT_METRICS, CHECKPOINT_METRICS_GZ

log = logging.getLogger(__name__)

HOOKS: list = []


def commit_point(point: str, name: str) -> None:
    for hook in HOOKS:
        hook(point, name)


MANIFEST = "ftctl-manifest.json"
MANIFEST_FORMAT = "ftctl-checkpoint/1"
CHECKPOINT_PREFIX = "checkpoint-"
#: where a checkpoint waits for its upload (hard links, so Trainer's rotation cannot delete it)
STAGING_DIR = ".ftctl-upload"
#: where resume moves local checkpoints it found broken (kept for inspection, out of the way)
QUARANTINE_DIR = ".ftctl-quarantine"
#: where resume downloads a remote checkpoint before it is verified
DOWNLOAD_DIR = ".ftctl-download"
#: where a checkpoint rotated away is moved before its files are deleted (a kill halfway leaves no half checkpoint)
DELETING_DIR = ".ftctl-deleting"

_STEP_RE = re.compile(r"^checkpoint-(\d+)$")
_NODE_RE = re.compile(r"^manifest\.node-(\d+)\.json$")
_CHUNK = 8 << 20
_HASH_THREADS = 8  # files hashed at once (a node's cores: the CPUs this process may use)


def node_manifest_name(node_rank: int) -> str:
    return f"manifest.node-{node_rank}.json"


def checkpoint_step(name: str) -> int | None:
    """The step of a ``checkpoint-<step>`` directory name, else None."""
    m = _STEP_RE.match(os.path.basename(str(name).rstrip("/")))
    return int(m.group(1)) if m else None


def is_manifest(rel: str) -> bool:
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


def _sha256_files(paths: list[str]) -> list[str]:
    """Each file's sha256, several files at once: hashlib lets go of the GIL while it hashes, and a checkpoint's
    time is the GPU's wait. One thread hashes ~1.7 GB/s on an H100 node, where a 1B fft checkpoint's manifest took
    9 of its save's 20 s; ZeRO and FSDP write a file per rank, which hash side by side (bench/NOTES.md v78)."""
    workers = min(len(paths), _HASH_THREADS, usable_cores())
    if workers <= 1:
        return [sha256_file(p) for p in paths]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(sha256_file, paths))


def _skipped(rel: str) -> bool:
    return is_manifest(rel) or rel.endswith(".ftctl-tmp")


# ---------------------------------------------------------------- manifests


def build_manifest(ckpt_dir: str, step: int, world_size: int, spec_hash: str, with_files: bool = True, **extra) -> dict:
    """The manifest of every file now in ``ckpt_dir`` (manifests themselves excluded); ``with_files`` False: of none
    (a node's empty share where the nodes stage into one directory and another node lists its files)."""
    import ftctl

    rels = [r for r in (storage.local_files(ckpt_dir) if with_files else ()) if not _skipped(r)]
    fulls = [os.path.join(ckpt_dir, *rel.split("/")) for rel in rels]
    digests = _sha256_files(fulls)
    files = [{"path": r, "size": os.path.getsize(f), "sha256": d} for r, f, d in zip(rels, fulls, digests)]
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


def write_json_atomic(path: str, data: dict) -> None:
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
    commit_point("local-manifest", os.path.basename(os.path.abspath(ckpt_dir)))
    manifest = build_manifest(ckpt_dir, step, world_size, spec_hash, **extra)
    write_json_atomic(os.path.join(ckpt_dir, name), manifest)
    return manifest


def discard_uncommitted(path: str, what: str | None = None) -> tuple[str, int] | None:
    """Remove ``path``, the directory of a save that failed (a checkpoint-<step>, or the final model's staging), where
    it holds no manifest (ftctl-manifest.json or a node's): never committed, so nothing resumes from it. Left, it held
    the room the failed save took, and a relaunch set it aside for good (resume's quarantine): on a full disk the
    user freed one save's room, and the half one stayed. Returns (what it was, in words; the bytes it held), None where
    there was nothing to remove, or it is committed (kept)."""
    try:
        names = os.listdir(path)
    except OSError:
        return None
    if any(is_manifest(name) for name in names):
        return None
    size = 0
    for rel in storage.local_files(path):
        with contextlib.suppress(OSError):
            size += os.path.getsize(os.path.join(path, *rel.split("/")))
    shutil.rmtree(path, ignore_errors=True)
    return f"half-written {what or os.path.basename(os.path.abspath(path))}", size


def read_manifest(ckpt: str, name: str = MANIFEST, endpoint_url: str | None = None) -> dict:
    """The manifest of a local or remote checkpoint; FileNotFoundError when there is none,
    ValueError when it is not a manifest."""
    uri = storage.join(ckpt, name)
    data = json.loads(storage.read_whole(uri, endpoint_url).decode("utf-8"))  # an answer cut off mid-body: asked again
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT or "files" not in data:
        raise ValueError(f"{uri} is not an ftctl manifest")
    return data


def merge_nodes(manifests: dict[int, dict]) -> tuple[dict, list[str]]:
    """The ``ftctl-manifest.json`` of a multi-node checkpoint from its nodes' manifests of one attempt (node k ->
    ``manifest.node-<k>.json``): every node's files, node 0's entry where two nodes wrote a path differently. Returns
    it and those paths (the uploader sends node 0's copy of them again)."""
    files: dict[str, dict] = {}
    rewrite = []
    for k in sorted(manifests, reverse=True):  # node 0 last: its copy wins
        for entry in manifests[k]["files"]:
            prev = files.get(entry["path"])
            if prev is not None and prev["sha256"] != entry["sha256"] and k == 0:
                rewrite.append(entry["path"])
            files[entry["path"]] = entry
    merged = dict(manifests[0])
    merged.pop("node_rank", None)
    merged["files"] = [files[p] for p in sorted(files)]
    return merged, rewrite


def nodes_committed(ckpt_dir: str) -> dict | None:
    """The merged manifest of a local multi-node checkpoint that holds the manifest of every node of one attempt, else
    None. Each node writes its own after every file of the checkpoint is on disk (the on_save barrier) and lists its
    files with sizes and sha256: on a disk the nodes share, all of them together are the commit node 0 uploads."""
    try:
        names = os.listdir(ckpt_dir)
    except OSError:
        return None
    found = {}
    for name in names:
        if m := _NODE_RE.match(name):
            try:
                found[int(m.group(1))] = read_manifest(ckpt_dir, name)
            except (OSError, ValueError, UnicodeDecodeError):
                return None
    first = found.get(0)
    if first is None or not isinstance(first.get("num_nodes"), int) or first["num_nodes"] < 2:
        return None
    nodes = range(first["num_nodes"])
    keys = ("attempt", "num_nodes", "step")
    if not first.get("attempt") or any(k not in found or any(found[k].get(x) != first[x] for x in keys) for k in nodes):
        return None  # a node's manifest missing, or one of another attempt at this step
    return merge_nodes({k: found[k] for k in nodes})[0]


def check_files(manifest: dict, sizes: dict[str, int]) -> list[str]:
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
    return verify_against(ckpt, manifest, deep, endpoint_url)


def verify_against(ckpt: str, manifest: dict, deep: bool, endpoint_url=None, sizes=None, check_step=True) -> list:
    problems = []
    step = checkpoint_step(ckpt)
    if check_step and step is not None and manifest.get("step") != step:
        problems.append(f"the manifest is for step {manifest.get('step')}, not {step}")
    if sizes is None:
        sizes = storage.file_sizes(ckpt, endpoint_url)
    problems += check_files(manifest, sizes)
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


# what reading a checkpoint's copy of metrics.jsonl may raise: the file's (OSError, gzip's BadGzipFile), a gzip cut
# short (EOFError) or damaged (zlib.error)
METRICS_COPY_ERRORS = (OSError, EOFError, zlib.error)


def metrics_copy(checkpoint: str, listed: Collection[str] | None = None) -> str | None:
    """The path (or URI) of ``checkpoint``'s copy of metrics.jsonl: this ftctl's gzip (runpaths.CHECKPOINT_METRICS_GZ),
    else an older ftctl's plain copy; None where it holds neither. ``listed``: the checkpoint's files (its manifest's
    paths, needed for one in an object store); without it, a local directory's are looked at."""
    for name in (CHECKPOINT_METRICS_GZ, CHECKPOINT_METRICS):
        if name in listed if listed is not None else os.path.isfile(os.path.join(checkpoint, name)):
            return storage.join(checkpoint, name)
    return None


def open_metrics_copy(path: str, endpoint_url: str | None = None) -> IO[str]:
    """A checkpoint's copy of metrics.jsonl (``path``: metrics_copy's) open for its lines, gunzipped where it is the
    gzip. A local file is read as it is needed; one in an object store is downloaded whole (compressed: 50-57 MB at a
    million rows) and gunzipped as it is read. Reading raises METRICS_COPY_ERRORS."""
    gzipped = path.endswith(".gz")
    if storage.is_remote(path):
        raw = io.BytesIO(storage.read_whole(path, endpoint_url, quick=False))
        return io.TextIOWrapper(gzip.GzipFile(fileobj=raw) if gzipped else raw, encoding="utf-8")
    return gzip.open(path, "rt", encoding="utf-8") if gzipped else open(path, encoding="utf-8")
