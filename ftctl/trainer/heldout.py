"""``ftctl eval RUN --data PATH``: how well what a run trained predicts a dataset, and (``--compare``) how well
its base did: the loss and token accuracy on the tokens training would score (the assistant turns and their
end-of-turn token, trainer/masks.py), read as the run reads data (formats, chat template, max length).

Several datasets are scored each on its own, then together. The loss is the mean over every scored token of a
set (each row weighs by its scored tokens), so one row's equals transformers' own
``model(input_ids, labels=labels).loss``; the trainer's logged eval_loss is TRL's (each batch's token mean,
weighted by rows) and can differ a little. Rows go in batches of ``batch_size``, padded on the right; the logits
of one batch are held at once.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ftctl.errors import FtctlError


@dataclass(frozen=True)
class Score:
    loss: float
    token_accuracy: float
    rows: int
    tokens: int  # scored tokens

    @property
    def perplexity(self) -> float:
        return math.exp(min(self.loss, 700.0))

    def line(self) -> str:
        return (
            f"loss {self.loss:.4f}  perplexity {self.perplexity:,.3f}  token accuracy {self.token_accuracy:.3f}  "
            f"({self.rows:,} row{'s' if self.rows != 1 else ''}, {self.tokens:,} scored tokens)"
        )


def trained_on(found, names: list[str], sets=None, tokenizer=None, max_length: int = 0) -> str | None:
    """The note for ``ftctl eval RUN --data`` of data the run trained on (its spec.json's data_path; ``found``: the
    trained.Trained loaded, None for a plain model), else None: those rows are no held-out measure (the loss is lower
    than on rows the run never saw), which nothing said before. A name of the training data (paths compare resolved,
    URIs as written) is said as it is; another, whose rows are ``sets`` (build_dataset's, one a name), by how many of
    its rows are training rows too, token for token (data.row_identity, as data check and the launch's preflight
    compare a run's eval_data_path): a copy of the training file under another name, or a held-out file cut from the
    same dump. That needs the training rows tokenized here (``tokenizer``, ``max_length``): where they are local
    files of TRAINING_BYTES at most; elsewhere, or where they no longer read, names alone are compared."""
    from ftctl.spec import split_paths

    if found is None:
        return None
    trained = found.recorded("spec", "data_path")
    if not isinstance(trained, str):
        return None
    earlier = _went_on_from(found, trained)  # -o resume=OTHER/checkpoint-N on other data: its steps' rows too
    adapter = _started_from(found, trained)  # -o lora_model_dir=OTHER: the rows its weights trained on too
    paths = [*split_paths(trained), *split_paths(earlier), *split_paths(adapter)]

    seen = {_resolved(p) for p in paths}
    both = [name for name in names if _resolved(name) in seen]
    others = [(name, rows) for name, rows in zip(names, sets or ()) if _resolved(name) not in seen]
    shared = _shared_rows(found, paths, others, tokenizer, max_length) if others and tokenizer else []
    if not both and not shared:
        return None
    held = found.recorded("spec", "eval_split")
    split = f", less the {held:g} it held out (eval_split)" if isinstance(held, (int, float)) and held > 0 else ""
    before = f"; {earlier} in the steps of the checkpoint it went on from" if earlier else ""
    before += f"; {adapter} in the adapter it started from" if adapter else ""
    # each name by where its rows trained: the run's own steps (less its eval_split), else only the steps of the
    # checkpoint it went on from (under that run's settings, not these), else only the adapter it started from
    own = {_resolved(p) for p in split_paths(trained)}
    went = {_resolved(p) for p in split_paths(earlier)}
    groups: dict[str, list[str]] = {"own": [], "went": [], "adapter": []}
    for name in both:
        groups["own" if _resolved(name) in own else "went" if _resolved(name) in went else "adapter"].append(name)
    said = []
    for group, these in groups.items():
        if not these:
            continue
        which = "these rows" if len(these) > 1 else "its rows"
        words = {
            "own": f"the run trained on {which}{split}",
            "went": f"the run trained on {which} in the steps of the checkpoint it went on from "
            f"({found.recorded('spec', 'resume')})",
            "adapter": f"the adapter the run started from ({found.recorded('spec', 'lora_model_dir')}) trained on {which}",
        }[group]
        said.append(f"{', '.join(these)}: {words}")
    said += [
        f"{name}: {f'all {same:,}' if same == rows else f'{same:,} of {rows:,}'} of its rows are rows the run trained "
        f"on ({trained}{split}{before}), token for token"
        for name, same, rows in shared
    ]
    return (
        f"{'; '.join(said)}, so this loss is lower than on rows it never saw; score held-out rows (a file it did not "
        "train on) to compare runs."
    )


TRAINING_BYTES = 64 * 2**20  # the training data eval tokenizes to compare rows (~1 min of a core at most)


def _went_on_from(found, trained: str) -> str | None:
    """The data the checkpoint a run went on from trained on (``-o resume=PATH``: its manifest's data_path) where it
    is other data than the run's own (``trained``): `-o resume=OTHER/checkpoint-8 --data b.json` trained checkpoint-8's
    8 steps on a.json, and eval of a.json said only the rows of it that b.json shares (explore64). None where the
    run named no checkpoint, or it is no longer there to read."""
    from ftctl.checkpoints.settings import went_on_from
    from ftctl.spec import split_paths

    # the run's store: MinIO's, R2's; the model card's "went on from" row reads the same settings
    recorded = went_on_from(found.recorded("spec", "resume"), found.recorded("spec", "s3_endpoint_url"))
    earlier = (recorded or {}).get("data_path")
    if not isinstance(earlier, str) or {_resolved(p) for p in split_paths(earlier)} <= {
        _resolved(p) for p in split_paths(trained)
    }:
        return None
    return earlier


def _started_from(found, trained: str, depth: int = 0) -> str | None:
    """The data the adapter a run started from trained on (``-o lora_model_dir=DIR``: its run's spec.json's data_path,
    and the data of what that one started from or went on from in turn), where it is other data than the run's own
    (``trained``), comma-separated; None where the run started from no adapter, or its record is gone."""
    from ftctl.spec import join_paths, split_paths
    from ftctl.trainer.trained import Trained

    adapter = found.recorded("spec", "lora_model_dir")
    if not isinstance(adapter, str) or not adapter or depth > 8:  # (a loop of records: none trains so)
        return None
    origin = Trained(Path(adapter), adapter=True)
    data = origin.recorded("spec", "data_path")
    if not isinstance(data, str):
        return None
    paths = [
        *split_paths(data),
        *split_paths(_went_on_from(origin, data)),
        *split_paths(_started_from(origin, data, depth + 1)),
    ]
    ours = {_resolved(p) for p in split_paths(trained)}
    other = [p for p in dict.fromkeys(paths) if _resolved(p) not in ours]
    try:
        return join_paths(other) or None
    except ValueError:  # a path holding a comma among several: its rows are compared by name no more
        return None


def _shared_rows(found, paths: list[str], others: list, tokenizer, max_length: int) -> list[tuple[str, int, int]]:
    """(name, its rows that are training rows too, its rows) of each of ``others`` ((name, dataset)) with any; []
    where the run's training data (``paths``) is not local files of TRAINING_BYTES at most, or does not read as
    the run read it (removed, edited since into rows with errors: advisory, the scores stand either way)."""
    import os

    from ftctl import storage
    from ftctl.trainer.data import _row_digests, build_dataset
    from ftctl.trainer.formats import resolve_files

    if any(storage.is_remote(p) for p in paths):
        return []
    reads = read_as_trained(str(found.path), paths)  # as the run read them: its text field, its data_columns
    every = found.recorded("spec", "assistant_only_loss") is False
    held = {name: _row_digests(dataset) for name, dataset in others}
    lengths = {n for rows in held.values() for n, _ in rows}  # only training rows of these lengths are hashed
    digests = set()
    try:
        files = [f for p in paths for f in resolve_files(p)]
        if sum(os.path.getsize(storage.local_path(f)) for f in files) > TRAINING_BYTES:
            return []
        for path in paths:
            digests.update(
                _row_digests(build_dataset(path, tokenizer, max_length, every_token=every, **reads), lengths)
            )
    except Exception:  # noqa: BLE001 — advisory: data the run read then and this machine cannot read now
        return []
    counted = [(name, sum(row in digests for row in rows), len(rows)) for name, rows in held.items()]
    return [(name, same, rows) for name, same, rows in counted if same]


def read_as_trained(run: str, names: list[str]) -> dict:
    """How ``run`` (a run's output directory, local or in object storage, or one of its checkpoints) read its rows,
    as build_dataset's and preflight.check_data's options for ``names`` (``ftctl eval``'s --data): its
    dataset_text_field (``text_field``: a plain-text row's field) and, for a dataset of ``names`` it named with
    data_columns (an axolotl run's field_messages, message_property_mappings, roles, system_prompt; -o
    data_columns=), those names (``columns``), matched by the resolved path. Without them its own held-out file was
    refused as no conversation, or read with other roles or without its system prompt. ``text`` and no columns where
    the run has no spec.json (trained.run_record: a plain model)."""
    from ftctl.trainer.trained import run_record

    spec = (run_record(run) or {}).get("spec", {})
    field = spec.get("dataset_text_field")
    reads: dict = {"text_field": field if isinstance(field, str) and field else "text"}
    described = spec.get("data_columns")
    if isinstance(described, dict) and described:
        by_path = {_resolved(path): d for path, d in described.items()}
        if columns := {name: by_path[_resolved(name)] for name in names if _resolved(name) in by_path}:
            reads["columns"] = columns
    return reads


def _resolved(path: str) -> str:
    """A dataset path as two names of it compare: resolved, a URI as written (less a trailing /)."""
    import os

    from ftctl.storage import is_remote

    return path.rstrip("/") if is_remote(path) else os.path.realpath(os.path.expanduser(path))


def combined(scores: list[Score]) -> Score:
    """Several datasets' scores as one: each weighs by its scored tokens, as the rows of one dataset do."""
    tokens = sum(s.tokens for s in scores)
    loss = sum(s.loss * s.tokens for s in scores) / tokens
    accuracy = sum(s.token_accuracy * s.tokens for s in scores) / tokens
    return Score(loss, accuracy, sum(s.rows for s in scores), tokens)


def table(names: list[str], rows: list[tuple[str, list[Score]]]) -> list[str]:
    """``ftctl eval``'s lines: each dataset's scores, a row for each of ``rows`` ((label, a Score a dataset): the
    base's above the run's, or several runs'), then, for several datasets, all of them together. An empty label: the
    numbers alone (one run, no --compare)."""
    if len(names) > 1:
        names = [*names, "all"]
        rows = [(label, [*scores, combined(scores)]) for label, scores in rows]
    width = max(len(label) for label, _ in rows) + 1  # the label and its colon
    lines = []
    for i, name in enumerate(names):
        indent = ""
        if len(names) > 1:
            lines.append(f"{name}:")
            indent = "  "
        for label, scores in rows:
            lines.append(
                f"{indent}{f'{label}:':<{width}} {scores[i].line()}" if label else f"{indent}{scores[i].line()}"
            )
    return lines


@dataclass(frozen=True)
class _Scored:
    """One run of ``ftctl eval A B``: its scores, and what they were scored on (to compare with the others')."""

    run: str
    scores: list[Score]
    rows: tuple[str, ...]  # data.rows_digest of each dataset as this run read it: the tokens it scored
    length: int  # the max length it read them at
    every: bool  # every token scored (a run that trained with assistant_only_loss=false)
    tokenizer: str  # a digest of its tokenizer's vocabulary and chat template
    reads: dict  # read_as_trained's: its text field, its data columns
    base: tuple | None = None  # what its base scores as (--compare): runs with the same one share a base row
    note: str | None = None  # trained_on's: rows of the data it trained on (said once for the runs it is of)


def evaluate(
    runs: list[str], names: list[str], max_length: int | None, batch_size: int, compare: bool, echo
) -> list[str]:
    """``ftctl eval RUN... --data NAME...``: the lines of each run's held-out scores on the same rows, a row a run
    (one run's lines as ever: ``table``), its base's above (``compare``: once for each distinct base, over the runs it
    is the base of). Everything that can be refused is, before any model loads (a 7B model on CPU takes minutes):
    each run's reading of the data (preflight.check_data), then every RUN found (chat.locate). The runs load one at
    a time, each freed before the next. ``echo``: what loads, and the notes (stderr): the rows a run trained on, and
    a run that read the rows into other tokens than the first (another tokenizer, chat template or max length), whose
    numbers then average over other tokens."""
    from ftctl import preflight
    from ftctl.trainer import chat

    runs = [run.rstrip("/") or run for run in runs]  # runs/a and runs/a/: one run
    for run, times in Counter(runs).items():  # `ftctl eval A A`: its row once, said
        if times > 1:
            echo(f"note: {run} is given {'twice' if times == 2 else f'{times} times'}: scored once")
    runs = list(dict.fromkeys(runs))
    several = len(runs) > 1
    # a typo, or rows that are no conversation: as each run reads rows (its text field, its datasets' own field names)
    reads = {run: read_as_trained(run, names) for run in runs}
    findings, checked = [], []
    for how in reads.values():
        if how not in checked:
            checked.append(how)
            findings += [f for name in names for f in preflight.check_data(name, flag="--data", held_out=True, **how)]
    preflight.raise_if_errors(list(dict.fromkeys(findings)))
    located, problems = {}, []
    for run in runs:
        try:
            located[run] = chat.locate(run, echo, command="eval")
        except FtctlError as e:
            problems.append(str(e))
    if len(problems) == 1:
        raise FtctlError(problems[0])
    if problems:
        raise FtctlError(f"{len(problems)} problems to fix first:\n" + "\n".join(f"  - {p}" for p in problems))
    if compare and (plain := [run for run in runs if located[run].plain]):
        said = f" ({', '.join(plain)})" if several else ""
        raise FtctlError(f"--compare needs a run (its output directory or a checkpoint), not a plain model{said}.")
    scored: list[_Scored] = []
    bases: dict[tuple, list[Score]] = {}
    for run in runs:
        loaded = chat.load(located[run], echo=echo, command="eval")
        try:
            one = _evaluate_one(loaded, run, several, names, reads[run], max_length, batch_size, compare, bases)
            scored.append(one)
        finally:
            _free(loaded)
    # rows a run trained on: each note once, naming every run it is of (runs over the same data say the same)
    notes: dict[str, list[str]] = {}
    for one in scored:
        if one.note:
            notes.setdefault(one.note, []).append(one.run)
    for note, these in notes.items():
        echo(f"note: {', '.join(these)}: {note}" if several else f"note: {note}")
    if several and (note := _other_tokens(scored)):
        echo(f"note: {note}")
    if not several:
        label = ("tuned" if compare else "", scored[0].scores)
        return table(names, [("base", bases[scored[0].base]), label] if compare else [label])
    groups: dict = {}  # the runs of each base, in the order given
    for one in scored:
        groups.setdefault(one.base, []).append(one)
    rows = []
    for base, members in groups.items():
        if compare:
            rows.append(("base" if len(groups) == 1 else f"base of {', '.join(m.run for m in members)}", bases[base]))
        rows += [(m.run, m.scores) for m in members]
    return table(names, rows)


def _evaluate_one(loaded, run, several, names, reads, max_length, batch_size, compare, bases) -> _Scored:
    """One run's scores, and its trained-on note (trained_on's, for evaluate to say); with
    ``compare``, its base's scores into ``bases`` where no run before it had the same base on the same tokens."""
    import hashlib
    import json

    from ftctl.spec import RunSpec
    from ftctl.trainer.data import build_dataset, rows_digest

    found = loaded.found
    recorded = found.recorded("spec", "model_max_length") if found else None
    every = found.recorded("spec", "assistant_only_loss") is False if found else False  # as it trained
    length = max_length or recorded or RunSpec.model_max_length
    sets = [build_dataset(name, loaded.tokenizer, length, held_out=True, every_token=every, **reads) for name in names]
    # rows the run trained on (its data under this name, or rows of it under another): not held out, said (by
    # evaluate, once for the runs it is of) before the numbers that look it
    note = trained_on(found, names, sets, loaded.tokenizer, length)
    tuned = [score(loaded.model, loaded.tokenizer, dataset, batch_size) for dataset in sets]
    rows = tuple(rows_digest(dataset) for dataset in sets)
    tokenizer = ""  # what tells another tokenizer (its vocabulary, its chat template) from this one: for several runs
    if several:
        vocabulary = [sorted(loaded.tokenizer.get_vocab().items()), loaded.tokenizer.chat_template]
        tokenizer = hashlib.sha256(json.dumps(vocabulary, default=str).encode()).hexdigest()
    base = None
    if compare:  # the same weights, at the same precision (a qlora adapter's base in 4 bits), on the same tokens
        base = (found.base, found.base_revision, found.adapter and found.method == "qlora", loaded.precision, rows)
        if base not in bases:
            bases[base] = _base_scores(loaded, sets, batch_size)
    return _Scored(run, tuned, rows, length, every, tokenizer, reads, base, note)


def _base_scores(loaded, sets, batch_size: int) -> list[Score]:
    """The base's scores of ``loaded`` (chat.Loaded.base: the adapter switched off, or a full run's base loaded beside
    it, freed on return)."""
    with loaded.base() as model:
        return [score(model, loaded.tokenizer, dataset, batch_size) for dataset in sets]


def _free(loaded) -> None:
    """Let go of a run's weights (and its download) before the next run loads: one model in memory at a time."""
    import gc

    import torch

    loaded.model = None
    if loaded.download is not None:
        loaded.download.cleanup()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _other_tokens(scored: list[_Scored]) -> str | None:
    """The note of runs that read the rows into other tokens than the first run (their losses then average over
    other tokens), saying what differs; None where every run scored the same tokens."""
    first, said = scored[0], []
    for one in scored[1:]:
        if one.rows == first.rows:
            continue
        why = []
        if one.tokenizer != first.tokenizer:
            why.append("another tokenizer or chat template")
        if one.length != first.length:
            why.append(f"max length {one.length:,}, {first.run}'s {first.length:,}")
        if one.every != first.every:
            why.append("every token scored, as it trained" if one.every else "only the assistant turns scored")
        if one.reads != first.reads:
            why.append("its own text field or data columns")
        said.append(f"{one.run} ({'; '.join(why) or 'read otherwise'})")
    if not said:
        return None
    lengths = any(one.length != first.length for one in scored)
    return (
        f"{', '.join(said)} read{'s' if len(said) == 1 else ''} these rows into other tokens than {first.run}, so the "
        "losses average over other tokens and compare only roughly"
        + (" (--max-length N reads them all at one length)." if lengths else ".")
    )


def score(model, tokenizer, dataset, batch_size: int = 4) -> Score:
    """The token-weighted loss and accuracy of ``model`` on ``dataset`` (data.build_dataset's rows)."""
    import torch

    from ftctl.trainer.data import IGNORE_INDEX

    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    total = correct = count = 0.0
    with torch.no_grad():
        for lo in range(0, len(dataset), batch_size):
            ids, labels, mask = (t.to(device) for t in pad_batch(dataset[lo : lo + batch_size], pad))
            try:
                logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
                target = labels[:, 1:]
                scored = target != IGNORE_INDEX
                losses = torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]),
                    target.reshape(-1),
                    ignore_index=IGNORE_INDEX,
                    reduction="none",
                )
            except torch.OutOfMemoryError:
                fix = f"--batch-size {batch_size // 2}" if batch_size > 1 else "a shorter --max-length"
                raise FtctlError(
                    f"Out of GPU memory scoring {ids.shape[0]} row(s) of up to {ids.shape[1]} tokens at a time (their "
                    f"logits over a {model.config.vocab_size:,}-token vocabulary): use {fix}."
                ) from None
            total += float(losses.sum())
            correct += float(((logits.argmax(-1) == target) & scored).sum())
            count += float(scored.sum())
    if not count:
        raise FtctlError(
            "The dataset has no scored tokens (no assistant turns survive truncation): nothing to evaluate."
        )
    return Score(total / count, correct / count, len(dataset), int(count))


def pad_batch(rows: dict, pad_id: int):
    """(input_ids, labels, attention_mask) tensors of a slice of data.build_dataset's rows, padded on the right
    (labels with IGNORE_INDEX)."""
    import torch

    from ftctl.trainer.data import IGNORE_INDEX

    width = max(len(ids) for ids in rows["input_ids"])
    ids = torch.full((len(rows["input_ids"]), width), pad_id, dtype=torch.long)
    labels = torch.full_like(ids, IGNORE_INDEX)
    mask = torch.zeros_like(ids)
    for i, (row_ids, row_labels) in enumerate(zip(rows["input_ids"], rows["labels"])):
        ids[i, : len(row_ids)] = torch.tensor(row_ids)
        labels[i, : len(row_labels)] = torch.tensor(row_labels)
        mask[i, : len(row_ids)] = 1
    return ids, labels, mask
