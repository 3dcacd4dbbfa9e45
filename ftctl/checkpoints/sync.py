"""``ftctl sync ls / push / pull``: checkpoints in object storage by hand."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from ftctl import storage
from ftctl.checkpoints.manifest import CHECKPOINT_PREFIX, DOWNLOAD_DIR, MANIFEST, discard_uncommitted, verify_against
from ftctl.checkpoints.resume import download_checkpoint, list_checkpoints, raise_if_full
from ftctl.checkpoints.upload import final_files, prune, records_to_send, trains_alike, upload_checkpoint
from ftctl.errors import FtctlError
from ftctl.runpaths import FINAL_MARKS, METRICS_FILE, RUN_RECORDS, SPEC_FILE

log = logging.getLogger(__name__)

#: checkpoints a push to a store (a pull from one) sends (fetches) at once. One after another, 300 small checkpoints
#: (~6 requests each) took 76 s to push and 48 s to pull where each request waited 25 ms more than on loopback; 8 at
#: once, 14 s and 13 s. Each of their files has a connection of its own (storage.POOL_CONNECTIONS); the memory they take
#: is bounded (storage.TRANSFER_MEMORY).
AT_ONCE = storage.CHECKPOINTS_AT_ONCE

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
    here = list_checkpoints(local_run_dir)  # by their sizes: hashed below, where sent (a push hashed every one)
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
            f"delete {'them' if more else 'it'} from the store first (`ftctl sync ls {shlex.quote(uri)}` lists its checkpoints; "
            f"`{storage.delete_command(storage.join(uri, clash[0]), endpoint_url)}`{' each' if more else ''})."
        )
    keep, best = _retention(local_run_dir, here, remote, endpoint_url)
    kept = _kept_names(here, remote, keep, best)
    todo, older = [], []
    for c in here:
        if not c.complete:
            log.warning("not pushing %s: %s", c.uri, "; ".join(c.problems))
            continue
        r = remote.get(c.name)
        if r is not None and r.complete and r.manifest["files"] == c.manifest["files"]:
            continue
        if c.name not in kept:
            older.append(c.name)
            continue
        todo.append(c)

    def send(c) -> list[str]:
        return _send(c, storage.join(uri, c.name), c.name in remote, endpoint_url, sending)

    sent = []
    for c, problems in storage.at_once(send, todo, AT_ONCE if storage.is_remote(uri) else 1):
        if problems:  # a file changed since its manifest: corrupted
            log.warning("not pushing %s: %s", c.uri, "; ".join(problems))
            continue
        echo(f"pushed {c.name} -> {storage.join(uri, c.name)}")
        sent.append(storage.join(uri, c.name))
    if older:  # said once, not a line each (a run directory may hold hundreds)
        names = " and ".join(older) if len(older) < 3 else f"{', '.join(older[:2])} and {len(older) - 2} more"
        echo(f"not pushing {names}: older than the {keep} newest the run keeps (save_total_limit)")
    if not final and (said := _push_records(local_run_dir, uri, endpoint_url)):  # a run stopped before its end
        echo(said)
    if keep:  # what the run's own uploader does after each checkpoint: the store keeps the newest `keep` and the best
        for gone in prune(uri, keep, {best} - {None}, endpoint_url):
            echo(f"deleted {gone}: the run keeps its {keep} newest (save_total_limit)")
    if _push_final(local_run_dir, uri, endpoint_url):
        echo(f"pushed the final model -> {uri}")
        sent.append(uri)
    return sent


def _send(c, dest: str, there: bool, endpoint_url: str | None, sending: list) -> list[str]:
    """Push the complete local checkpoint ``c`` to ``dest``: verified by sha256 right before (a file changed since its
    manifest: its problems returned, nothing sent), the manifest of an earlier upload cut short withdrawn where the
    store held some of it (``there``: listed), its files, its manifest last (upload_checkpoint). ``sending``: the
    checkpoints under way, where the store's disk refuses one."""
    if problems := verify_against(c.uri, c.manifest, deep=True):
        return problems
    if there:
        storage.rm(storage.join(dest, MANIFEST), endpoint_url=endpoint_url)
    sending.append(dest)
    upload_checkpoint(c.uri, dest, endpoint_url=endpoint_url)
    sending.remove(dest)
    return []


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
            f"another URI, or delete it first, to resume this run from the store: "
            f"`{storage.delete_command(storage.join(uri, SPEC_FILE), endpoint_url, folder=False)}`)"
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
    """Download the run's top-level files (its final model where the store has one, else its records: _plan_top, decided
    before anything is written), then the complete checkpoints under ``uri`` (verified by sha256) that are not complete
    in ``local_dir`` yet; with ``include_incomplete``, incomplete ones too, as they are. A ``local_dir`` holding another
    run (or this run trained on here past the store's) is refused with nothing written; one holding an earlier pull of
    this run gets the store's final model and records in place of its own (_pull_top)."""
    _spelt(uri, local_dir)
    if os.path.exists(local_dir) and not os.path.isdir(local_dir):
        raise FtctlError(f"{local_dir} is a file: pull into a directory (it is created where missing).")
    with storage.storage_errors(uri, endpoint_url):
        there = list_checkpoints(uri, endpoint_url=endpoint_url)
        top = _top_files(uri, endpoint_url)
    if not there and not any(mark in top for mark in FINAL_MARKS):
        raise FtctlError(
            f"no checkpoints and no final model under {uri}: nothing to pull (`ftctl sync ls` lists what a store "
            "holds)."
        )
    with storage.storage_errors(uri, endpoint_url):
        plan = _plan_top(uri, local_dir, top, endpoint_url)
    try:
        os.makedirs(local_dir, exist_ok=True)
    except OSError as e:
        raise FtctlError(f"cannot create {local_dir}: {e.strerror or e}") from None
    with storage.storage_errors(uri, endpoint_url):
        _pull_top(uri, local_dir, plan, endpoint_url)  # first: a pull cut short later leaves a consistent run directory
        got = _pull(there, local_dir, include_incomplete, endpoint_url, echo, storage.is_remote(uri))
    if plan.line:
        echo(plan.line)
    return got


def _same_spec(local_dir: str, uri: str, endpoint_url: str | None) -> bool:
    """Whether the run here and the store's are one run, as far as their spec.json say (two fine-tunes of one base
    model have final models of the same sizes): False where both have one and they differ."""
    mine, theirs = os.path.join(local_dir, SPEC_FILE), storage.join(uri, SPEC_FILE)
    if not os.path.isfile(mine) or not storage.exists(theirs, endpoint_url):
        return True
    with open(mine, encoding="utf-8") as f:
        return f.read() == storage.read_text(theirs, endpoint_url)


def _pull(there: list, local_dir: str, include_incomplete: bool, endpoint_url: str | None, echo, remote: bool) -> list:
    """The checkpoints ``there`` not complete in ``local_dir`` yet, AT_ONCE at a time from a store (``remote``)."""
    local = {c.name for c in list_checkpoints(local_dir) if c.complete}
    present = [c.name for c in there if c.name in local]

    def fetch(c) -> list[str]:  # its problems: not pulled
        if c.complete:
            return download_checkpoint(c.uri, local_dir, c.manifest, endpoint_url)
        if not include_incomplete:
            return c.problems
        storage.get_dir(c.uri, os.path.join(local_dir, c.name), endpoint_url)
        return []

    got = []
    workers = AT_ONCE if remote else 1
    # download_checkpoint removes the download directory once it is empty: held while others go on into it
    hold = os.path.join(local_dir, DOWNLOAD_DIR, f".held-{os.getpid()}") if workers > 1 else None
    if hold:
        os.makedirs(hold, exist_ok=True)
    try:
        for c, problems in storage.at_once(fetch, [c for c in there if c.name not in local], workers):
            if problems:
                log.warning("not pulling %s: %s", c.uri, "; ".join(problems))
                continue
            echo(f"pulled {c.uri} -> {os.path.join(local_dir, c.name)}")
            got.append(os.path.join(local_dir, c.name))
    finally:
        if hold:
            with contextlib.suppress(OSError):
                os.rmdir(hold)
                os.rmdir(os.path.dirname(hold))
    if present:  # a second pull says why it pulled nothing
        echo(f"already in {local_dir}, complete: {', '.join(present)}")
    return got


def _top_files(uri: str, endpoint_url: str | None) -> dict[str, int]:
    """{relative path: size} of the run's top-level files in the store (what _push_final and the trainer's uploader
    send): all but its checkpoints and hidden files."""
    return {
        rel: size
        for rel, size in storage.file_sizes(uri, endpoint_url).items()
        if not rel.startswith(".") and not (rel.startswith(CHECKPOINT_PREFIX) and "/" in rel)
    }


@dataclass
class _TopPlan:
    """What a pull does with the run's top-level files, decided before anything is written (_plan_top)."""

    files: dict[str, int] = field(default_factory=dict)  # to download: their sizes, in the order they go into place
    replace: bool = False  # in place of an earlier pull's (its final model's config withdrawn first)
    line: str = ""  # what to say at the end


def _plan_top(uri: str, local_dir: str, top: dict[str, int], endpoint_url: str | None) -> _TopPlan:
    """Which of the store's top-level files (``top``) a pull into ``local_dir`` brings: its final model with its
    records, or, a run without one (stopped before its end), its RUN_RECORDS. All of them into a directory holding
    none of a run's; those it lacks into one holding the same (a pull cut short); all of them, in place of the
    directory's, where it holds an earlier pull of the same run that the store's went on from (_went_on). Raises
    FtctlError, before anything is written, where it holds another run (or this run trained on here, past the store's),
    or a final model the store does not hold: never replaced, nor mixed with the store's checkpoints."""
    final = any(mark in top for mark in FINAL_MARKS)
    theirs = top if final else {rel: top[rel] for rel in RUN_RECORDS if rel in top and SPEC_FILE in top}
    here = {rel: os.path.join(local_dir, *rel.split("/")) for rel in {*theirs, *RUN_RECORDS, *FINAL_MARKS}}
    mine_final = [mark for mark in FINAL_MARKS if os.path.isfile(here[mark])]
    if mine_final and not final and theirs:
        raise FtctlError(
            f"{local_dir} holds a final model and {uri} none (its run has not ended): nothing pulled, so that model "
            f"is not mixed with another state of the run. Pull into a new directory: ftctl sync pull {uri} NEW_DIR"
        )
    present = [rel for rel in theirs if os.path.exists(here[rel])]
    missing = _in_order(theirs, (rel for rel in theirs if rel not in present))
    if not present and not mine_final and not os.path.exists(here[SPEC_FILE]):  # a first pull
        return _TopPlan(missing, line=_pulled_line(missing, local_dir, final) if missing else "")
    mine = {rel: _read_local(here[rel]) for rel in RUN_RECORDS}
    stored = {
        rel: storage.read_text(storage.join(uri, rel), endpoint_url) if rel in theirs else None for rel in RUN_RECORDS
    }
    differ = [
        rel
        for rel in present
        if (mine[rel] != stored[rel] if rel in RUN_RECORDS else os.path.getsize(here[rel]) != theirs[rel])
    ] + [mark for mark in mine_final if mark not in theirs]  # another kind of model (a full one, an adapter)
    if not differ:  # the same, or a pull of it cut short
        if missing:
            return _TopPlan(missing, line=_pulled_line(missing, local_dir, final))
        return _TopPlan(line=f"already in {local_dir}: the final model" if final else "")
    if why := _went_on(uri, mine, stored, bool(mine_final), differ[0]):
        raise FtctlError(
            f"{local_dir} holds {why}: nothing pulled, nothing replaced. Pull into a new directory: "
            f"ftctl sync pull {uri} NEW_DIR"
        )
    was, now = _last_step(mine[METRICS_FILE]), _last_step(stored[METRICS_FILE])
    steps = f" (step {was}; the run has trained on to step {now})" if was is not None and now and now > was else ""
    head, colon, rest = _pulled_line(theirs, local_dir, final).partition(":")
    line = f"{head}, in place of what an earlier pull of this run left there{steps}{colon}{rest}"
    return _TopPlan(_in_order(theirs, theirs), replace=True, line=line)


def _went_on(uri: str, mine: dict, stored: dict, mine_final: bool, differs: str) -> str:
    """Why the directory's run records (``mine``: RUN_RECORDS' texts, None where absent) are not of an earlier state of
    the store's run in ``uri`` (``stored``), as "DIR holds WHY" says it; "" where they are: both spec.json ask for the same
    training (upload.trains_alike, the rule the store's own records follow) or the store's run is a continuation of
    it (a relaunch that trained on, with other settings: max_steps 300 -> 400), and every training step its
    metrics.jsonl logged is one the store's logged too, the same row (the store's went on from it: nothing here that
    the store lacks, so what is replaced is an earlier copy of the store's). A final model here with no step logged
    beside it cannot be told apart from the user's own: kept. ``differs``: a file here unlike the store's."""
    if mine[SPEC_FILE] is None or stored[SPEC_FILE] is None:  # no run's description to tell them by
        return f"another {differs} than {uri}"
    rows, theirs = _trained_steps(mine[METRICS_FILE]), _trained_steps(stored[METRICS_FILE])
    if rows - theirs:
        return (
            f"another run than {uri}"
            if not (rows & theirs or trains_alike(mine[SPEC_FILE], stored[SPEC_FILE]))
            else f"steps of this run that {uri} lacks (trained on here since it was pulled, or the store's went back "
            "to an earlier checkpoint)"
        )
    if not rows and not trains_alike(mine[SPEC_FILE], stored[SPEC_FILE]):
        return f"another run than {uri} (other training settings)"
    if not rows and mine_final:
        return f"a final model with no training step logged beside it (metrics.jsonl): it may not be {uri}'s"
    return ""


def _trained_steps(metrics: str | None) -> set[str]:
    """The training steps a metrics.jsonl logged, each row as a canonical JSON text (its step, loss, time...): a resumed
    run carries the rows before its checkpoint over as they were (callbacks.restore_metrics, truncate_metrics)."""
    rows = set()
    for line in (metrics or "").splitlines():
        try:
            row = json.loads(line)
        except ValueError:  # a line cut short by a stopped run
            continue
        if isinstance(row, dict) and "loss" in row and "event" not in row:
            rows.add(json.dumps(row, sort_keys=True))
    return rows


def _last_step(metrics: str | None) -> int | None:
    steps = [json.loads(row).get("step") for row in _trained_steps(metrics)]
    steps = [step for step in steps if isinstance(step, int)]
    return max(steps) if steps else None


def _read_local(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return None


def _in_order(sizes: dict[str, int], rels) -> dict[str, int]:
    """``rels`` with their ``sizes``, in the order the run's top-level files go into place: its records after the rest
    (spec.json last of them), the final model's config (FINAL_MARKS: what says it is whole) last of all."""
    order = sorted(rels, key=lambda rel: (rel in FINAL_MARKS, rel == SPEC_FILE, rel == METRICS_FILE, rel))
    return {rel: sizes[rel] for rel in order}


def _pulled_line(files, local_dir: str, final: bool) -> str:
    if final:
        return f"pulled the final model -> {local_dir}"
    names = " and ".join(rel for rel in RUN_RECORDS if rel in files)
    return f"pulled {names} -> {local_dir}: the run has no final model; a launch of it with --output {local_dir} resumes it"


def _pull_top(uri: str, local_dir: str, plan: _TopPlan, endpoint_url: str | None) -> None:
    """The files of ``plan``, each downloaded under a temporary name first (a download cut short leaves the directory's
    own whole), then moved into place in _in_order's order; replacing an earlier pull's, its final model's config is
    withdrawn first: cut short among the renames, the directory holds no final model (no config), never a half-replaced
    one, and the next pull finishes it."""
    parts = {rel: os.path.join(local_dir, *rel.split("/")) for rel in plan.files}
    for rel, path in parts.items():
        part = path + ".ftctl-part"
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            storage.get_file(storage.join(uri, *rel.split("/")), part, endpoint_url, size=plan.files[rel])
        except OSError as exc:  # a full disk: one line, and no partial file left taking its room
            Path(part).unlink(missing_ok=True)
            need = sum(plan.files.values())
            what = "the final model" if any(r in FINAL_MARKS for r in plan.files) else "the run's records"
            raise_if_full(exc, local_dir, need, f"pull {what}")
            raise
    if plan.replace:
        for mark in FINAL_MARKS:
            Path(local_dir, mark).unlink(missing_ok=True)
    for path in parts.values():
        os.replace(path + ".ftctl-part", path)
