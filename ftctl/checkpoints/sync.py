"""``ftctl sync ls / push / pull``: checkpoints in object storage by hand."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from ftctl import storage
from ftctl.checkpoints.manifest import CHECKPOINT_PREFIX, MANIFEST, discard_uncommitted
from ftctl.checkpoints.resume import download_checkpoint, list_checkpoints, raise_if_full
from ftctl.checkpoints.upload import final_files, prune, records_to_send, upload_checkpoint
from ftctl.errors import FtctlError
from ftctl.runpaths import FINAL_MARKS, RUN_RECORDS, SPEC_FILE

log = logging.getLogger(__name__)

# A run without a final model (stopped before its end) sends its RUN_RECORDS beside its checkpoints, and a pull brings
# them back: a pulled copy is then a run directory `ftctl launch --output DIR` resumes and `ftctl status DIR` reads;
# `ftctl chat`/`eval` of the store's checkpoint load it as the run trained it (its method).

# ---------------------------------------------------------------- sync ls / push / pull


def human_size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _spelt(*where: str) -> None:
    """``s3:/bucket/run`` is a local directory named ``s3:``: a push there wrote here and said "pushed"."""
    for path in where:
        if meant := storage.misspelt_uri(path):
            raise FtctlError(f"{path!r} would be a local path: did you mean {meant}?")


def _no_directory(uri: str) -> None:
    """A local ``uri`` that is no directory (a typo) is said; an empty one lists no checkpoints (a missing bucket is
    the store's one line: storage.file_sizes)."""
    if storage.is_remote(uri) or os.path.isdir(root := storage.filesystem(uri)[1]):
        return
    kind = "is a file, not" if os.path.exists(root) else "does not exist: give"
    raise FtctlError(f"{uri} {kind} a run's output directory (or an s3:// gs:// az:// URI).")


def ls(uri: str, deep: bool = False, endpoint_url: str | None = None, echo=print) -> list:
    """Print each checkpoint under ``uri``: step, complete/incomplete, size, and problems."""
    _spelt(uri)
    with storage.storage_errors(uri, endpoint_url):
        found = list_checkpoints(uri, deep=deep, endpoint_url=endpoint_url)  # a missing bucket: its one line
    if not found:
        _no_directory(uri)
        if output := _remote_output(uri):  # a run dir whose checkpoints go to a store (`ftctl jobs` names it)
            echo(f"{uri} is the run directory of a run into {output}: its checkpoints there")
            return ls(output, deep, endpoint_url, echo)
        echo(f"no checkpoints under {uri}")
    for c in found:
        state = "complete" if c.complete else "incomplete"
        line = f"{c.name:<24} step {c.step:<8} {state:<10} {human_size(c.size):>10}"
        if c.problems:
            line += "  " + "; ".join(c.problems[:2])
        echo(line)
    return found


def _remote_output(run_dir: str) -> str | None:
    """The object-store output of the run whose local run directory ``run_dir`` is (its spec.json's), else None."""
    if storage.is_remote(run_dir):
        return None
    try:
        output = json.loads(Path(storage.local_path(run_dir), SPEC_FILE).read_text())["spec"]["output_dir"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return output if isinstance(output, str) and storage.is_remote(output) else None


def push(local_run_dir: str, uri: str, endpoint_url: str | None = None, echo=print) -> list:
    """Upload every complete local checkpoint not already complete in the store (files first,
    manifest last), then the run's final model where it has one and the store lacks it (its config last); a run without
    one (stopped before its end), its records instead (_push_records). Incomplete local ones are skipped with a
    warning. Returns what was sent: the checkpoints, and ``uri`` for a final model."""
    _spelt(local_run_dir, uri)
    if not os.path.isdir(local_run_dir):
        raise FtctlError(f"{local_run_dir}: no such directory to push from (a run's output directory).")
    storage.require_writable(uri, "ftctl sync push to")
    sending: list[str] = []  # the checkpoint being sent, where the store's disk refuses it
    with storage.storage_errors(uri, endpoint_url):
        try:
            return _push(local_run_dir, uri, endpoint_url, echo, sending)
        except OSError as exc:  # a file:// store on a full disk: what it got is uncommitted (no manifest), removed
            if not storage.is_remote(uri):
                sizes = [c.size for c in list_checkpoints(local_run_dir) if c.complete]
                half = [storage.local_path(dest) for dest in sending]
                clear = (lambda: discard_uncommitted(half[0])) if half else None
                raise_if_full(exc, storage.local_path(uri), max(sizes, default=0), "push the run", clear)
            raise


def _push(local_run_dir: str, uri: str, endpoint_url: str | None, echo, sending: list) -> list:
    here = list_checkpoints(local_run_dir, deep=True)
    final = any(rel in FINAL_MARKS for rel in final_files(local_run_dir))
    if not here and not final:
        raise FtctlError(f"nothing to push: {local_run_dir} holds no checkpoint-N and no final model.")
    remote = {c.name: c for c in list_checkpoints(uri, endpoint_url=endpoint_url)}
    clash = [
        c.name
        for c in here
        if c.complete
        and (r := remote.get(c.name)) is not None
        and r.complete
        and r.manifest["files"] != c.manifest["files"]
    ]
    if clash:  # another run's (or this one's trained again): replacing it would lose it, and mix two runs
        more = f" and {len(clash) - 1} more" if len(clash) > 1 else ""
        raise FtctlError(
            f"{uri} holds another {clash[0]}{more} than {local_run_dir}: nothing pushed. Push into another URI, or "
            f"delete {'them' if more else 'it'} from the store first (`ftctl sync ls {uri}` lists its checkpoints)."
        )
    keep, best = _retention(local_run_dir, here, remote, endpoint_url)
    kept = _kept_names(here, remote, keep, best)
    sent = []
    for c in here:
        if not c.complete:
            log.warning("not pushing %s: %s", c.uri, "; ".join(c.problems))
            continue
        r = remote.get(c.name)
        if r is not None and r.complete and r.manifest["files"] == c.manifest["files"]:
            continue
        if c.name not in kept:
            echo(f"not pushing {c.name}: older than the {keep} newest the run keeps (save_total_limit)")
            continue
        dest = storage.join(uri, c.name)
        storage.rm(storage.join(dest, MANIFEST), endpoint_url=endpoint_url)
        sending[:] = [dest]
        upload_checkpoint(c.uri, dest, endpoint_url=endpoint_url)
        sending.clear()
        echo(f"pushed {c.name} -> {dest}")
        sent.append(dest)
    if not final and (said := _push_records(local_run_dir, uri, endpoint_url)):  # a run stopped before its end
        echo(said)
    if keep:  # what the run's own uploader does after each checkpoint: the store keeps the newest `keep` and the best
        for gone in prune(uri, keep, {best} - {None}, endpoint_url):
            echo(f"deleted {gone}: the run keeps its {keep} newest (save_total_limit)")
    if _push_final(local_run_dir, uri, endpoint_url):
        echo(f"pushed the final model -> {uri}")
        sent.append(uri)
    return sent


def _push_records(local_run_dir: str, uri: str, endpoint_url: str | None) -> str:
    """A run without a final model here (stopped before its end): its RUN_RECORDS that the store may take
    (upload.records_to_send, the rule its trainer's uploader follows after each checkpoint), spec.json last. Returns
    the line to say ('' where there is nothing to send or say)."""
    local = {rel: os.path.join(local_run_dir, rel) for rel in RUN_RECORDS}
    local = {rel: path for rel, path in local.items() if os.path.isfile(path)}
    send, kept = records_to_send(local, uri, local_run_dir, endpoint_url)
    if not send:
        return ""
    names = " and ".join(send)
    if kept == "final":
        return f"not pushing {names}: {uri} holds a final model (a run that ended), whose run's they would be taken for"
    if kept:
        return (
            f"not pushing {names}: {uri} holds another run's {SPEC_FILE} than {local_run_dir}, kept (push into "
            f"another URI, or delete {storage.join(uri, SPEC_FILE)} first, to resume this run from the store)"
        )
    for rel in send:  # RUN_RECORDS' order: spec.json last
        storage.put_file(local[rel], storage.join(uri, rel), endpoint_url)
    return f"pushed {names} -> {uri}: the run has no final model; a launch of it with --output {uri} resumes it"


def _retention(local_run_dir: str, here: list, remote: dict, endpoint_url: str | None) -> tuple[int | None, str | None]:
    """(save_total_limit of the run in ``local_run_dir``, its best checkpoint's name) where the store holds only that
    run's checkpoints (every manifest of its spec_hash); (None, None) where it holds another's, or the run keeps all."""
    from ftctl.checkpoints.settings import TRAINER_STATE

    done = [c for c in here if c.complete] + [r for r in remote.values() if r.complete]
    try:
        keep = json.loads(Path(local_run_dir, SPEC_FILE).read_text())["spec"]["save_total_limit"]
    except (OSError, ValueError, KeyError, TypeError):
        return None, None
    if not keep or not done or len({c.manifest.get("spec_hash") for c in done}) != 1:
        return None, None
    newest = max(done, key=lambda c: c.step)  # its trainer_state.json names the lowest held-out loss's checkpoint
    try:
        best = json.loads(storage.read_text(storage.join(newest.uri, TRAINER_STATE), endpoint_url))
        best = best.get("best_model_checkpoint")
    except (OSError, ValueError, AttributeError, FtctlError):
        best = None
    return int(keep), os.path.basename(best) if best else None


def _kept_names(here: list, remote: dict, keep: int | None, best: str | None) -> set[str]:
    """The checkpoints the store keeps after a push: the newest ``keep`` complete ones here or there, and the best."""
    names = {c.name: c.step for c in here if c.complete} | {n: r.step for n, r in remote.items() if r.complete}
    if not keep:
        return set(names)
    return {*sorted(names, key=names.get)[-keep:], best} - {None}


def _push_final(local_run_dir: str, uri: str, endpoint_url: str | None) -> bool:
    """The run's top-level files (final model, tokenizer, spec.json, metrics), as the trainer uploads them: what
    vouches for an earlier final model withdrawn first, its config last. False where there is no final model
    here, or the store holds these files already."""
    files = final_files(local_run_dir)
    if not any(rel in FINAL_MARKS for rel in files):
        return False
    there = storage.file_sizes(uri, endpoint_url)
    local = {rel: os.path.getsize(os.path.join(local_run_dir, *rel.split("/"))) for rel in files}
    if all(there.get(rel) == size for rel, size in local.items()):
        return False
    model = [rel for rel in local if rel in FINAL_MARKS or rel.endswith((".safetensors", ".bin"))]
    other = any(there.get(rel, local[rel]) != local[rel] for rel in model) or not _same_spec(
        local_run_dir, uri, endpoint_url
    )
    if any(there.get(m) for m in FINAL_MARKS) and other:
        raise FtctlError(
            f"{uri} holds another final model than {local_run_dir}: not replaced. Push into another URI, or delete "
            "its final model from the store first."
        )
    for mark in FINAL_MARKS:
        storage.rm(storage.join(uri, mark), endpoint_url=endpoint_url)
    for rel in files:
        storage.put_file(os.path.join(local_run_dir, *rel.split("/")), storage.join(uri, *rel.split("/")), endpoint_url)
    return True


def pull(
    uri: str,
    local_dir: str,
    include_incomplete: bool = False,
    endpoint_url: str | None = None,
    echo=print,
) -> list:
    """Download the complete checkpoints under ``uri`` (verified by sha256) that are not complete
    in ``local_dir`` yet; with ``include_incomplete``, incomplete ones too, as they are; then the run's final model
    where the store has one (_pull_final), else the run's records (_pull_records)."""
    _spelt(uri, local_dir)
    if os.path.exists(local_dir) and not os.path.isdir(local_dir):
        raise FtctlError(f"{local_dir} is a file: pull into a directory (it is created where missing).")
    with storage.storage_errors(uri, endpoint_url):
        there = list_checkpoints(uri, endpoint_url=endpoint_url)
        final = any(storage.exists(storage.join(uri, mark), endpoint_url) for mark in FINAL_MARKS)
    if not there and not final:
        raise FtctlError(
            f"no checkpoints and no final model under {uri}: nothing to pull (`ftctl sync ls` lists what a store "
            "holds)."
        )
    try:
        os.makedirs(local_dir, exist_ok=True)
    except OSError as e:
        raise FtctlError(f"cannot create {local_dir}: {e.strerror or e}") from None
    with storage.storage_errors(uri, endpoint_url):
        got = _pull(there, local_dir, include_incomplete, endpoint_url, echo)
        said = _pull_final(uri, local_dir, endpoint_url) if final else _pull_records(uri, local_dir, endpoint_url)
    if said:
        echo(said)
    return got


def _same_spec(local_dir: str, uri: str, endpoint_url: str | None) -> bool:
    """Whether the run here and the store's are one run, as far as their spec.json say (two fine-tunes of one base
    model have final models of the same sizes): False where both have one and they differ."""
    mine, theirs = os.path.join(local_dir, SPEC_FILE), storage.join(uri, SPEC_FILE)
    if not os.path.isfile(mine) or not storage.exists(theirs, endpoint_url):
        return True
    with open(mine, encoding="utf-8") as f:
        return f.read() == storage.read_text(theirs, endpoint_url)


def _pull(there: list, local_dir: str, include_incomplete: bool, endpoint_url: str | None, echo) -> list:
    local = {c.name for c in list_checkpoints(local_dir) if c.complete}
    got, present = [], []
    for c in there:
        if c.name in local:
            present.append(c.name)
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
    if present:  # a second pull says why it pulled nothing
        echo(f"already in {local_dir}, complete: {', '.join(present)}")
    return got


def _pull_records(uri: str, local_dir: str, endpoint_url: str | None) -> str:
    """A run without a final model in the store (stopped before its end): its RUN_RECORDS there, into a ``local_dir``
    that holds no spec.json (another run's, or this run's own, is never replaced), each the directory lacks, under a
    temporary name first, spec.json last. Returns the line to say ('' where nothing was pulled)."""
    there = storage.file_sizes(uri, endpoint_url)
    if SPEC_FILE not in there or os.path.exists(os.path.join(local_dir, SPEC_FILE)):
        return ""
    missing = [rel for rel in RUN_RECORDS if rel in there and not os.path.exists(os.path.join(local_dir, rel))]
    for rel in missing:
        path = os.path.join(local_dir, rel)
        part = path + ".ftctl-part"
        try:
            storage.get_file(storage.join(uri, rel), part, endpoint_url)
        except OSError as exc:  # a full disk: one line, and no partial file left taking its room
            Path(part).unlink(missing_ok=True)
            raise_if_full(exc, local_dir, sum(there[rel] for rel in missing), "pull the run's records")
            raise
        os.replace(part, path)
    resumes = f"a launch of it with --output {local_dir} resumes it"
    return f"pulled {' and '.join(missing)} -> {local_dir}: the run has no final model; {resumes}"


def _pull_final(uri: str, local_dir: str, endpoint_url: str | None) -> str:
    """The run's final model and its other top-level files (what _push_final sends), where the store holds a whole
    one (its config, uploaded last: FINAL_MARKS) and ``local_dir`` lacks them: each lands under a temporary name
    first, the config last. A file ``local_dir`` holds with other contents is never replaced: then nothing is
    pulled, and the line says which. Returns the line to say ('' where the store has no final model)."""
    there = {
        rel: size
        for rel, size in storage.file_sizes(uri, endpoint_url).items()
        if not rel.startswith(".") and not (rel.startswith(CHECKPOINT_PREFIX) and "/" in rel)
    }
    if not any(rel in FINAL_MARKS for rel in there):
        return ""
    here = {rel: os.path.join(local_dir, *rel.split("/")) for rel in there}
    differ = [rel for rel, path in here.items() if os.path.exists(path) and os.path.getsize(path) != there[rel]]
    if not differ and not _same_spec(local_dir, uri, endpoint_url):
        differ = [SPEC_FILE]
    if differ:
        return f"not pulling the final model: {here[differ[0]]} is another file than the store's; pull into a new directory"
    missing = sorted(
        (rel for rel, path in here.items() if not os.path.exists(path)), key=lambda rel: rel in FINAL_MARKS
    )
    if not missing:
        return f"already in {local_dir}: the final model"
    for rel in missing:
        part = here[rel] + ".ftctl-part"
        try:
            storage.get_file(storage.join(uri, *rel.split("/")), part, endpoint_url)
        except OSError as exc:  # a full disk: one line, and no partial file left taking its room
            Path(part).unlink(missing_ok=True)
            raise_if_full(exc, local_dir, sum(there[rel] for rel in missing), "pull the final model")
            raise
        os.replace(part, here[rel])
    return f"pulled the final model -> {local_dir}"
