"""Checkpoints that are either complete or ignored: the commit protocol, upload and resume.

    manifest   the format, and whether a checkpoint is complete (files, sizes, sha256)
    resume     the newest complete checkpoint, local or remote
    upload     the background uploader (retries, multi-node merge, retention, the final model)
    sync       ftctl sync ls / push / pull

A run killed at any moment leaves either a complete checkpoint or one that resume skips (with a
warning naming it) in favour of the previous complete one.
"""

from ftctl.checkpoints.manifest import (
    CHECKPOINT_PREFIX,
    DELETING_DIR,
    DOWNLOAD_DIR,
    HOOKS,
    MANIFEST,
    MANIFEST_FORMAT,
    QUARANTINE_DIR,
    STAGING_DIR,
    build_manifest,
    checkpoint_step,
    commit_point,
    discard_uncommitted,
    node_manifest_name,
    read_manifest,
    sha256_file,
    verify,
    write_manifest,
)
from ftctl.checkpoints.resume import (
    CheckpointInfo,
    download_checkpoint,
    latest_complete,
    list_checkpoints,
    uploaded,
)
from ftctl.checkpoints.sync import ls, pull, push
from ftctl.checkpoints.upload import Uploader, final_files, prune, upload_checkpoint

__all__ = [
    "CHECKPOINT_PREFIX",
    "CheckpointInfo",
    "DELETING_DIR",
    "DOWNLOAD_DIR",
    "HOOKS",
    "MANIFEST",
    "MANIFEST_FORMAT",
    "QUARANTINE_DIR",
    "STAGING_DIR",
    "Uploader",
    "build_manifest",
    "checkpoint_step",
    "commit_point",
    "discard_uncommitted",
    "download_checkpoint",
    "final_files",
    "latest_complete",
    "uploaded",
    "list_checkpoints",
    "ls",
    "node_manifest_name",
    "prune",
    "pull",
    "push",
    "read_manifest",
    "sha256_file",
    "upload_checkpoint",
    "verify",
    "write_manifest",
]
