"""The trainer's data: check, tokenise with loss masks, and hand TRL's SFTTrainer a ready dataset.

    report = check_data("s3://b/conv.json", tokenizer, max_length=2048)   # ftctl data check
    print(report.render())
    dataset = build_dataset(path, tokenizer, max_length)                   # raises FtctlError on errors
    SFTConfig(**sft_dataset_config(packing=True, max_length=2048), ...)

The dataset has two columns, ``input_ids`` and ``labels`` (-100 everywhere except the assistant
turns' content and their end-of-turn token; plain-text rows train on every token), each row at most
``max_length`` tokens (longer rows lose their end). TRL 1.16 uses a ``labels`` column as is.
Packing is TRL's best-fit-decreasing packing in padding-free mode: samples are concatenated with
``position_ids`` restarting at 0 per sample, no attention mask, and the per-sample boundaries
``cu_seq_lens_q/k`` (int32) + ``max_length_q/k`` computed once per batch on the CPU by TRL's collator.
The varlen kernels (flash-attn, torch's varlen_attn: trainer/attention.py) take those boundaries as
model kwargs in every layer; eager/sdpa/flex get a block-diagonal causal mask that transformers'
masking_utils builds from the position ids. Either way no attention crosses a sample boundary, and
the collator sets the label of each sample's first token to -100, so no sample predicts the next
one's first token. (The boundary detection only happens when no KV cache is in use; SFTTrainer
passes ``use_cache=False``.)
"""

from __future__ import annotations

import gc
import math
import os
import posixpath
import re
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from ftctl import storage
from ftctl.errors import FtctlError
from ftctl.gpus import usable_cores
from ftctl.runpaths import as_mkdir_made
from ftctl.spec import RunSpec, split_paths
from ftctl.terminal import printable
from ftctl.trainer.formats import (
    REASONING_KEYS,
    Row,
    Rows,
    data_digest,
    file_name,
    llama_factory_notes,
    load_rows,
)
from ftctl.trainer.masks import (
    MaskError,
    assistant_spans,
    encode_texts,
    ensure_chat_template,
    labels_of,
    renames_call_ids,
    require_fast,
    turn_close_problem,
)
from ftctl.trainer.splits import KINDS, unread_files

IGNORE_INDEX = -100
_SHOWN = 50  # problems listed by render(); the FtctlError lists fewer


@dataclass
class DataStats:
    rows: int = 0  # rows that will be trained on
    tokens: int = 0  # after truncation
    trainable_tokens: int = 0  # after truncation
    truncated_rows: int = 0
    max_tokens: int = 0  # before truncation
    formats: dict[str, int] = field(default_factory=dict)
    plain: int = 0  # rows trained as plain text, without the chat template (text; prompt-completion strings)
    histogram: list[tuple[str, int]] = field(default_factory=list)  # (bucket label, rows), lengths before truncation
    datasets: list[tuple[str, int, int]] = field(default_factory=list)  # (path, rows, tokens) of each of several
    repeats: int = 0  # rows that train the same tokens and labels as an earlier row (_Repeats): trained again
    repeated: int = 0  # the distinct rows those repeat
    first_repeat: str = ""  # "a.jsonl line 9, as a.jsonl line 2": the first repeat, and the row it repeats


@dataclass
class DataReport:
    """What ``ftctl data check`` prints; ``errors`` and ``warnings`` are "FILE row N: message" lines."""

    path: str
    max_length: int
    files: int = 0
    read: list[str] = field(default_factory=list)  # the files' names, where the path is one directory or pattern
    errors: list[str] = field(default_factory=list)
    bad_rows: int = 0  # the rows the errors are about (one error line may name many)
    bad_at: set[tuple[str, str, int]] = field(default_factory=set)  # those rows' Row.at (--write-valid leaves them out)
    rows_read: int = 0  # every row read, with errors or not
    warnings: list[str] = field(default_factory=list)
    # each row's error, and warning of a truncated row, one line each (errors and warnings group them: problem_lines)
    every_row: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    stats: DataStats = field(default_factory=DataStats)
    # (where, ids, labels, tokens and trainable tokens before truncation): show_rows
    samples: list[tuple[str, list[int], list[int], int, int]] = field(default_factory=list)
    weights: list[float] | None = None  # data_weights of the datasets, where a run file mixes them
    model: str | None = None  # the model whose tokenizer read them: the `ftctl data check --model` lines name it
    repeats_fix: str = ""  # how to keep one of each repeated row, where one command does (check_data)
    kept: _Repeats | None = field(default=None, repr=False)  # each kept row's hash and where: held_out_overlap
    in_training: str = ""  # held-out data: its rows that are training rows too (check_data's ``training``)
    unread_only: bool = False  # the errors are those found as the rows were read: none tokenized (read_first)

    @property
    def ok(self) -> bool:
        return not self.errors

    def render(self, written: bool = False, every_row: bool = False) -> str:
        """The report; ``written``: the rows without errors were written to a new file (--write-valid), whose
        summary lists the errors instead; ``every_row``: each row's problem is listed, one a line, after the
        grouped ones (errors and warnings list a kind of problem once, with its count and first rows)."""
        s = self.stats
        shown = f" ({', '.join(self.read)})" if 0 < len(self.read) <= 3 else ""  # which split a directory gave
        lines = [
            f"Data {self.path}: {self.files} file(s){shown}, max length {self.max_length} tokens (rows counted from 1)"
        ]
        for title, items in (("Errors", [] if written else self.errors), ("Warnings", self.warnings)):
            if items:
                lines.append(f"{title} ({len(items)}):")
                lines += [f"  {item}" for item in items[:_SHOWN]]
                if len(items) > _SHOWN:
                    lines.append(f"  ... and {len(items) - _SHOWN} more")
        if every_row and self.every_row:
            lines.append(f"Every row's problem ({len(self.every_row):,}):")
            lines += [f"  {line}" for line in self.every_row]
        if self.notes:
            lines.append("Notes:")
            lines += [f"  {note}" for note in self.notes]
        if not s.rows and not self.ok:  # nothing read (an empty file): the errors say it all
            return "\n".join([*lines, f"FAILED: {self._failed()}."])
        share = f" ({100 * s.trainable_tokens / s.tokens:.1f}%)" if s.tokens else ""
        mean = f" (mean {s.tokens / s.rows:.1f}, longest {s.max_tokens} before truncation)" if s.rows else ""
        lines += [
            "Statistics (rows without errors):",
            f"  rows              {s.rows:,}  ({', '.join(f'{k} {v:,}' for k, v in sorted(s.formats.items())) or 'none'})",
            f"  tokens            {s.tokens:,}{mean}",
            f"  trainable tokens  {s.trainable_tokens:,}{share}",
            f"  truncated rows    {s.truncated_rows:,}",
            f"  repeated rows     {repeats_said(s, first=True) or 0}",
            *([f"    {self.repeats_fix}"] if s.repeats and self.repeats_fix else []),
            *([f"  also in training  {self.in_training}"] if self.in_training else []),
        ]
        if s.datasets:  # what data_weights would mix
            lines.append("  per dataset (data_path's order):")
            width = max(len(name) for name, _, _ in s.datasets)
            weights = self.weights or [None] * len(s.datasets)
            lines += [
                f"    {name:<{width}}  {rows:,} rows, {tokens:,} tokens"
                + ("" if w is None else f"; x{w:g}: {mixed_rows(rows, w):,} rows an epoch")
                for (name, rows, tokens), w in zip(s.datasets, weights)
            ]
            if self.weights and (
                shares := weights_as_shares([(n, r) for n, r, _ in s.datasets], list(zip(s.datasets, self.weights)))
            ):
                lines.append(f"  warning: {shares}")
        if s.histogram:
            lines.append("  length histogram (tokens before truncation):")
            width = max(len(label) for label, _ in s.histogram)
            top = max(n for _, n in s.histogram) or 1
            for label, n in s.histogram:
                lines.append(f"    {label:>{width}} | {'#' * math.ceil(40 * n / top):<40} {n:,}")
        if self.ok:
            lines.append("OK: ready to train.")
        else:
            lines.append(
                f"{self._failed()}: left out." if written else f"FAILED: {self._failed()}; {self._fix('those')}."
            )
        return "\n".join(lines)

    def _failed(self) -> str:
        """How many rows the errors are about (an error line names all the rows that share it)."""
        if not self.bad_rows:
            return f"{len(self.errors)} error(s)"
        return f"{self.bad_rows:,} of {self.bad_rows + self.stats.rows:,} rows with errors ({len(self.errors)} listed)"

    def _fix(self, which: str) -> str:
        """Fix or remove the rows; where the errors are rows' (not a file's) and others have none, the command that
        writes those others to a new file."""
        if not self.bad_at or not self.stats.rows:  # a file that cannot be read, or no row to keep
            return f"fix or remove {which} rows"
        one = self.files == 1 and not self.read and len(split_paths(self.path)) == 1
        command = write_valid_command(self.path if one else None, self.max_length, self.model)
        return f"fix or remove {which} rows ({command})"

    def error_message(self) -> str:
        """The FtctlError text build_dataset raises: the first errors and how to see them all."""
        import shlex

        shown = 20
        check = (
            f"`ftctl data check {shlex.quote(str(self.path))} {_model_flag(self.model)}{_length_flag(self.max_length)}`"
        )
        lines = [f"{self._failed()} in the data {self.path}; {self._fix('these')}:"]
        lines += [f"  {e}" for e in self.errors[:shown]]
        if len(self.errors) > shown:
            lines.append(f"  ... and {len(self.errors) - shown} more: {check} lists them all")
        if self.unread_only and self.stats.rows:  # others to tokenize, whose problems are not known yet
            lines.append(
                f"  (found as the rows were read, before tokenizing any; {check} also lists what the tokenizing finds)"
            )
        return "\n".join(lines)


def _model_flag(model: str | None) -> str:
    """--model as a pasted command takes it: the model the rows were read with, MODEL where it is not known."""
    import shlex

    return f"--model {shlex.quote(model) if model else 'MODEL'}"


def _length_flag(max_length: int | None) -> str:
    """--max-length as a pasted data check takes it: where it is not the run's default (what the rows were read with)."""
    return f" --max-length {max_length}" if max_length and max_length != RunSpec.model_max_length else ""


def _model_of(tokenizer) -> str | None:
    """The model a tokenizer was loaded from, as the user names it: the demo model's id for its directory here
    (model.ensure_demo_model's ftctl-source.json), else its name_or_path."""
    import json

    name = getattr(tokenizer, "name_or_path", None) or None
    try:
        return json.loads((Path(name) / "ftctl-source.json").read_text())["model"] if name else None
    except (OSError, ValueError, KeyError, TypeError):
        return name


def write_valid_command(file: str | None, max_length: int | None = None, model: str | None = None) -> str:
    """How to write the rows without errors of a data file (``None``: of each of several) to a new file, to launch
    with that (cli's `data check --write-valid`); ``model``: the one to read them with (None: MODEL, to fill in)."""
    import shlex

    command = (
        f"ftctl data check {shlex.quote(file) if file else 'FILE'} {_model_flag(model)}{_length_flag(max_length)} "
        "--write-valid OUT"
    )
    return f"{'each file: ' * (file is None)}`{command}` writes the others to OUT"


def _load_tokenizer(tokenizer):
    if isinstance(tokenizer, str):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(tokenizer)
    return tokenizer


def _histogram(lengths: list[int], max_length: int) -> list[tuple[str, int]]:
    """Rows per power-of-two length bucket up to max_length, then one bucket for longer rows;
    empty buckets at either end are left out."""
    edges, edge = [], 16
    while edge < max_length:
        edges.append(edge)
        edge *= 2
    edges.append(max_length)
    buckets, lo = [], 1
    for hi in edges:
        buckets.append((f"{lo}-{hi}", sum(lo <= n <= hi for n in lengths)))
        lo = hi + 1
    buckets.append((f">{max_length}", sum(n > max_length for n in lengths)))
    filled = [i for i, (_, n) in enumerate(buckets) if n]
    return buckets[filled[0] : filled[-1] + 1] if filled else []


# rows whose every trained token lies past max_length, left out with a warning where they are at most this share of
# the rows (a few long ones in a large corpus); more than that, they are errors: max_length is too short for the data
DROP_PAST_THE_END = 0.01


def prepare_data(
    path: str,
    tokenizer,
    max_length: int,
    endpoint_url: str | None = None,
    held_out: bool = False,
    sources: bool = False,
    show: int = 0,
    every_token: bool = False,
    num_proc: int | None = None,
    sharing: int = 1,
    text_field: str = "text",
    columns: dict[str, str] | None = None,
    read_first: bool = False,
    progress=None,
    spill: str | None = None,
    keep: bool = True,
):
    """Check and tokenise: (DataReport, datasets.Dataset of the rows without errors). ``held_out``: the data is
    for evaluation (a directory of splits gives its test split, formats.resolve_files); ``text_field``: the field
    of a plain-text row (TRL's dataset_text_field, formats.load_rows); ``columns``: the run's data_columns (a
    dataset's own names of its fields, formats.described); ``sources``: a third
    column, ``source``, says which of the datasets ``path`` names each row is from (mix); ``show``: the report
    keeps the first rows without errors as they train (show_rows); ``every_token``: the loss covers every token,
    not only the assistant turns (assistant_only_loss=false); ``num_proc``: the processes that tokenize (None: as
    many as the data pays for, of the cores ``sharing`` processes tokenize on at once: _processes; 1: this one
    alone), the result the same whichever; ``read_first``: rows with problems found as they are read (not JSON, of
    no format) are the report's errors before any row is tokenized (the trainer's: 300k rows took half an hour to
    tokenize on a core before the error about row 250,000), not with the others' problems after; ``progress``:
    called with (rows tokenized, rows read) as the tokenizing starts (0) and after each chunk; ``spill``: a directory
    the kept rows' tokens are written to as each chunk is tokenized (an arrow file there: _TokenColumns), the dataset
    memory-mapped from it (None: held in this process's memory, 8 bytes a token, until the last row is tokenized);
    ``keep``: False where only the report is wanted (check_data): no tokens kept, None in the dataset's place."""

    if not isinstance(max_length, int) or max_length < 2:
        raise FtctlError(f"max_length must be an integer of at least 2 tokens, not {max_length!r}.")
    tokenizer = _load_tokenizer(tokenizer)
    require_fast(tokenizer)
    report = DataReport(path=path, max_length=max_length, model=_model_of(tokenizer))
    files, rows = load_rows(path, endpoint_url, held_out, text_field, columns)
    report.files = len(files)
    if read_first and (unread := [(row, p) for row in map(rows.__getitem__, rows.problems) for p in row.problems]):
        report.errors = problem_lines(unread, len(rows))
        report.every_row = every_row_line(unread)
        report.bad_at = {row.at for row, _ in unread if row.at is not None}
        report.bad_rows, report.rows_read = len({id(row) for row, _ in unread if row.at is not None}), len(rows)
        report.stats.rows = len(rows) - report.bad_rows  # not tokenized: rows the errors are not about
        report.unread_only = True
        return report, None
    if len(split_paths(path)) == 1 and files != [path]:  # a directory or pattern: which files (which split)
        report.read = [file_name(f, path) for f in files]
    report.notes += llama_factory_notes(files, endpoint_url)
    named = split_paths(path)
    if twice := sorted({p for p in named if named.count(p) > 1}):
        report.warnings.append(
            f"{', '.join(twice)} given more than once: its rows train as many times an epoch; give it once (data_weights "
            "repeats a dataset on purpose: -o data_weights=...)"
        )
    if unread := unread_files(path):
        some = ", ".join(unread[:3]) + (f" and {len(unread) - 3} more" if len(unread) > 3 else "")
        report.notes.append(
            f"not read: {some}: ftctl reads {KINDS} (`ftctl data check` of a CSV file says how to convert it)"
        )

    missing_eot: list[Row] = []  # rows with an assistant turn not closed by an end-of-turn token (or eos)
    renamed: list[Row] = []  # rows whose call ids the template gets shortened (masks.renames_call_ids)
    special = _special_tokens(tokenizer)
    written_out: list[tuple[Row, str]] = []  # (row, the first special token its text writes out)
    problems: list[tuple[Row, str]] = []  # (row, what is wrong with it): report.errors, problem_lines
    masked: list[tuple[Row, str]] = []  # ... found once tokenized: said after those
    tokens = _TokenColumns(sources, spill)
    formats: Counter = Counter()
    s = report.stats
    lengths: list[int] = []  # of each kept row, before truncation
    by_source: Counter = Counter()  # (source, "rows" | "tokens"): of each dataset
    leading = 0  # rows trained without the assistant turns before their first user turn (formats: dropped)
    weight_zero = 0  # rows with assistant turns of weight 0
    joined: list[Row] = []  # prompt-completion rows whose prompt and completion meet inside one token
    past_the_end: list[tuple[Row, int]] = []  # (row, its tokens): every trained token after max_length
    truncated: list[tuple[Row, str]] = []  # (row, the warning): its tokens past max_length are dropped
    repeats = _Repeats()
    heads: list[str] | None = None  # _templated's: what a plain-text row a template rendered holds (_turn_heads)
    if rows.conversations:  # conversations: the template renders them
        if note := ensure_chat_template(tokenizer):
            report.notes.append(note)
    _refuse_dropped_reasoning(tokenizer, rows)
    work = _Work(rows, tokenizer, max_length, every_token, special)
    if progress:
        progress(0, len(rows))  # read: the tokenizing starts
    chunks = _tokenized(work, _processes(num_proc, len(rows), sharing))  # in order, on one process or several
    for lo, hi, done in chunks:  # a chunk at a time: its tokens kept as arrow arrays, not Python lists
        good: list[Row] = []
        for row, said in zip(rows[lo:hi], done.rows):  # the chunk's rows read back (rows: packed)
            if row.problems:
                light = _light(row)  # one Row for all its problems: one row (problem_lines, bad_rows)
                problems += [(light, p) for p in row.problems]
                continue
            found, problem, has_eot, renames = said
            if found:
                heads = _turn_heads(tokenizer) if heads is None else heads
                written_out.append((_light(row, heads), found))
            if problem:
                problems.append((_light(row), problem))
                continue
            if not has_eot:
                missing_eot.append(_light(row))
            if renames:
                renamed.append(_light(row))
            good.append(row)
        if every_token:
            weight_zero += sum(any(m.get("weight") == 0 for m in row.messages) for row in good)
        kept, chunk_sources = [], []
        for k, (row, (length, trainable_before, trainable, meet)) in enumerate(zip(good, done.encoded)):
            if trainable_before == 0:
                weighted = row.messages and any(m.get("weight") == 0 for m in row.messages)  # OpenAI's "not trained"
                why = (
                    "its assistant turns all have weight 0; give one weight 1"
                    if weighted
                    else "the rendered conversation has no assistant tokens"
                )
                masked.append((_light(row), f"every label is masked: {why}"))
                continue
            if trainable == 0:
                past_the_end.append((_light(row), length))
                continue
            if length > max_length:
                truncated.append(
                    (
                        _light(row),
                        f"{length} tokens, over the max length {max_length}: the last {length - max_length} "
                        f"tokens will be dropped ({trainable} of {trainable_before} trainable tokens kept)",
                    )
                )
            kept.append(k)
            chunk_sources.append(row.source)
            if len(report.samples) < show:
                report.samples.append((row.where, *done.row(k), length, trainable_before))
            repeats.add(done, k, row)
            width = min(length, max_length)
            lengths.append(length)
            s.tokens += width
            s.trainable_tokens += trainable
            by_source[row.source, "rows"] += 1
            by_source[row.source, "tokens"] += width
            formats[row.format] += 1
            s.plain += row.text is not None
            leading += row.dropped > 0
            if meet:
                joined.append(_light(row))
        if keep:
            tokens.add(done, kept, chunk_sources)
        if progress:
            progress(hi, len(rows))
    problems += masked
    report.warnings += problem_lines(truncated, len(rows))  # one line for them all, with the first rows' lengths

    if past_the_end:  # a few such rows in a large corpus are dropped (axolotl drops them); more: max_length is short
        # of the rows without other errors: the same verdict on the file --write-valid writes of these rows
        few = len(past_the_end) <= DROP_PAST_THE_END * (len(lengths) + len(past_the_end)) and lengths
        raise_it = "raise model_max_length" + (" (ftctl eval: --max-length)" if held_out else "")
        cut = [
            (
                row,
                f"every label is masked after truncation to {max_length} tokens (the row has {length}; its assistant "
                f"turns start later): {'left out, ' if few else ''}shorten it or {raise_it}",
            )
            for row, length in past_the_end
        ]
        if few:
            report.warnings += problem_lines(cut, len(rows))
            truncated += cut
        else:
            problems += cut
    if missing_eot and (problem := turn_close_problem(tokenizer)):  # the template's: every row
        report.warnings.append(f"{problem} ({len(missing_eot)} row{'s' * (len(missing_eot) != 1)})")
    elif missing_eot:  # the template closes other rows' turns: these rows' shape (Mistral's joins answers in a row)
        where = missing_eot[0].where if len(missing_eot) == 1 else _rows_named(missing_eot, len(rows))
        report.warnings.append(
            f"{where}: an assistant turn ends with no end-of-turn token, where the chat template closes other turns "
            "with one: assistant turns in a row do this where the template joins them (Mistral's); make them one turn"
        )
    if written_out and (templated := _templated(written_out, heads or [])):
        report.warnings.append(templated)
    elif written_out:
        row, token = written_out[0]
        report.warnings.append(
            f"{len(written_out)} row(s) write the tokenizer's special tokens out in their text ({token!r} in "
            f"{row.where}): the tokenizer reads them as the tokens themselves, so the model learns to write them "
            "there (an end of turn mid-answer, a turn of another role); remove them from the text unless that is meant"
        )
    if leading:
        report.notes.append(
            f"{leading} conversation(s) start with the assistant's turn: the assistant turns before the first user "
            "turn answer nothing and are left out (as FastChat's training does); the rest trains"
        )
    if every_token and weight_zero:
        report.notes.append(
            f"{weight_zero} row(s) have assistant turns of weight 0 (or training: false): the loss covers every token "
            "here (assistant_only_loss=false), theirs too"
        )
    if every_token and (prompted := formats.get("prompt-completion")):  # TRL: completion_only_loss, not this key
        report.notes.append(
            f"{prompted} prompt-completion row(s) train every token, their prompts' too (the loss on every token: "
            "assistant_only_loss=false); TRL's SFTTrainer, given assistant_only_loss=False, still trains only their "
            "completions (its completion_only_loss): to train those alone, leave assistant_only_loss out"
        )
    if joined:
        report.notes.append(
            f"{len(joined)} prompt-completion row(s) meet inside one token (the first: {joined[0].where}): the token "
            "that holds the prompt's end and the completion's start trains with the completion, as in TRL; to keep "
            "them apart, start the completion with the space a prompt ends in (' Paris', not 'is ' + 'Paris')"
        )
    if formats.get("text"):
        report.notes.append(f"{formats['text']} plain-text row(s) have no roles: the loss covers every token of them")
    if formats.get("segments"):
        report.notes.append(
            f"{formats['segments']} segments row(s) (axolotl's input_output) train as written: no chat template, bos "
            "or eos added; the loss covers the segments labelled true"
        )
    if renamed:
        report.notes.append(
            f"{len(renamed)} row(s) give tool call ids that are not 9 letters and digits (the first: {renamed[0].where}),"
            " which the chat template (Mistral's) refuses: each is its last 9 characters where they are letters and "
            "digits, as vLLM shortens them serving a Mistral model, else 9 drawn from it; the results keep answering "
            "their calls"
        )
    report.notes = list(dict.fromkeys(report.notes))
    s.rows, s.formats = len(lengths), dict(formats)
    s.truncated_rows = sum(n > max_length for n in lengths)
    s.max_tokens = max(lengths, default=0)
    s.histogram = _histogram(lengths, max_length)
    s.repeats, s.repeated, s.first_repeat = repeats.counted()
    report.kept = repeats
    if len(names := split_paths(path)) > 1:
        s.datasets = [(name, by_source[i, "rows"], by_source[i, "tokens"]) for i, name in enumerate(names)]
    report.errors = problem_lines(problems, len(rows))
    report.every_row = every_row_line(problems) + every_row_line(truncated)
    report.bad_at = {row.at for row, _ in problems if row.at is not None}  # not a file that cannot be read
    report.bad_rows, report.rows_read = len({id(row) for row, _ in problems if row.at is not None}), len(rows)
    if not lengths and not report.errors:
        report.errors.append(f"{path}: no rows: the data is empty")
    return report, tokens.dataset() if keep else None


def row_identity(ids) -> int:
    """Whether two rows are the same row to a held-out loss: their token ids as they train (the template's render, as
    truncated), not the loss mask over them. A held-out row that is a training row with another mask (a ShareGPT
    turn's weight 0 there, every token here) is no row the model never saw: it read every one of those tokens, and
    trained some of them. So the held-out rows that are training rows too (held_out_overlap: data check and the
    launch preflight; shared_rows: the trainer) and the copies eval_split keeps on one side (_copies) are the same
    rows. (Repeated rows, which train as often as they appear, are those that train the same: the ids and the mask,
    _Repeats.) Python's hash of the int32 ids' bytes (64-bit SipHash, 4x blake2b's speed: ~1 s of a core a million
    rows; a false match about 1 in 1e7 at a million rows): compared within one process only."""
    import numpy as np

    return hash(np.asarray(ids, dtype=np.int32).tobytes())


class _Repeats:
    """The kept rows that train exactly what an earlier row trains: the same token ids (row_identity) and labels, as
    truncated (a ShareGPT dump often holds a conversation many times; each copy trains, in TRL and axolotl alike).
    What trains, not the row's JSON: the copies of a dump differ in their 'id', and one conversation in two formats
    is the same sample; one whose turns are weighted otherwise trains other tokens and is none. 24 bytes a row (a
    hash of its ids, one of them and its labels, and a reference to where it is), not its text: a million rows 24 MB,
    and the where strings the rows had (~60 MB) while the report keeps them (held_out_overlap: by the ids alone)."""

    def __init__(self):
        self.hashes = array("q")  # row_identity: held_out_overlap's
        self.trains = array("q")  # a hash of that and the labels: a repeat's
        self.wheres: list[str] = []

    def add(self, done: _Done, k: int, row: Row) -> None:
        """Row ``k`` of ``done``'s encoded rows, which is ``row``."""
        lo, hi = int(done.ends[k]), int(done.ends[k + 1])
        self.hashes.append(same := row_identity(done.ids[lo:hi]))
        self.trains.append(hash((same, done.labels[lo:hi].tobytes())))
        self.wheres.append(row.where)

    def counted(self) -> tuple[int, int, str]:
        """(rows that repeat an earlier one, distinct rows repeated, "WHERE, as WHERE" of the first repeat)."""
        import numpy as np

        hashes = np.frombuffer(self.trains, dtype=np.int64)
        _, first, inverse, counts = np.unique(hashes, return_index=True, return_inverse=True, return_counts=True)
        repeats = len(hashes) - len(first)
        if not repeats:
            return 0, 0, ""
        at = int(np.flatnonzero(first[inverse] != np.arange(len(hashes)))[0])
        return repeats, int((counts > 1).sum()), f"{self.wheres[at]}, as {self.wheres[first[inverse[at]]]}"


def repeats_said(stats: DataStats, first: bool = False) -> str:
    """The rows that repeat an earlier row as trained (data check's statistics), '' where none; ``first``: with where
    the first repeat is."""
    if not stats.repeats:
        return ""
    where = f"; the first: {stats.first_repeat}" if first and stats.first_repeat else ""
    return (
        f"{stats.repeats:,} row(s) repeat an earlier row token for token ({stats.repeated:,} distinct{where}): each "
        "trains as often as it appears"
    )


def held_out_overlap(training: DataReport, held: DataReport) -> str:
    """The held-out rows that are training rows too (row_identity: the same token ids as trained, as shared_rows):
    how many of how many, and the first, '' where none. Their held-out loss measures memorising: a held-out file cut
    from the same dump as the training file, or the same file given twice, says nothing of rows never seen.
    (eval_split cannot do it: a row goes to one side with its copies, build_datasets' _split_copies.)"""
    import numpy as np

    if training.kept is None or held.kept is None:
        return ""
    trained = np.frombuffer(training.kept.hashes, dtype=np.int64)
    hashes = np.frombuffer(held.kept.hashes, dtype=np.int64)
    inside = np.isin(hashes, trained)
    if not (same := int(inside.sum())):
        return ""
    at = int(np.flatnonzero(inside)[0])
    was = training.kept.wheres[int(np.flatnonzero(trained == hashes[at])[0])]
    return (
        f"{same:,} of {len(hashes):,} held-out rows are training rows too, token for token (the first: "
        f"{held.kept.wheres[at]}, as {was}): their held-out loss is not a held-out loss; hold out rows the run does "
        "not train on (or no eval_data_path and -o eval_split=0.05, which keeps a row and its copies on one side)"
    )


def _repeats_fix(report: DataReport) -> str:
    """How to keep the first of each repeated row (DataStats.repeats), where one command does: awk, on one local JSON
    Lines file whose repeats are lines written alike; '' elsewhere (a JSON list, Parquet; copies that differ in a
    field that does not train, an id, or past max_length). Reads the file's lines again, 8 bytes a line."""
    import shlex

    import numpy as np

    path = report.path
    one = report.files == 1 and not report.read and len(split_paths(path)) == 1
    if not (report.stats.repeats and one and path.lower().endswith(".jsonl")):
        return ""
    if storage.scheme(path) not in ("", "file", "local"):
        return ""
    hashes = array("q")
    try:
        with open(storage.local_path(path), "rb") as f:
            hashes.extend(hash(line.rstrip(b"\n")) for line in f if line.strip())
    except OSError:
        return ""
    alike = len(hashes) - len(np.unique(np.frombuffer(hashes, dtype=np.int64)))
    if not alike:
        return ""
    repeats = report.stats.repeats
    said = (
        f"`awk '!seen[$0]++' {shlex.quote(path)} > OUT` keeps the first of each line written alike, dropping {alike:,}"
    )
    if alike == repeats:
        return f"to train each once: {said}"
    return said + "; the other repeats differ in what does not train (an id, say)" * (alike < repeats)


_REASONING_PROBE = "Zq7 reasoning probe"


def _refuse_dropped_reasoning(tokenizer, rows: Rows) -> None:
    """A problem on each row whose assistant turns give their reasoning (formats.REASONING_KEYS) in a field the
    chat template does not write: training would leave the reasoning out and teach the answers alone (a template
    that writes it, Qwen3's reasoning_content, gpt-oss's thinking, trains it with the answer). Added as each row is
    read back (Rows.amend: here and in the tokenizing processes), the rows being packed."""
    if dropped := [k for k in REASONING_KEYS if k in rows.reasoning and not _writes(tokenizer, k)]:
        rows.amend = partial(_reasoning_dropped, dropped)


def _reasoning_dropped(dropped: list[str], row: Row) -> Row:
    if not row.problems and (keys := [k for k in dropped if any(k in m for m in row.messages)]):
        row.problems.append(
            f"the chat template does not write the assistant turns' '{keys[0]}': training would leave their "
            "reasoning out and train the answers alone; train with a template that writes it (-o "
            "chat_template_path=TEMPLATE.jinja or a model whose template does, e.g. Qwen/Qwen3-8B; ftctl data "
            f"check: --chat-template-path), put it in the content as the model should write it (<think>...</think> "
            f"before the answer), or drop '{keys[0]}' from the rows"
        )
    return row


def _light(row: Row, heads: list[str] | None = None) -> Row:
    """``row`` as the report keeps it (where it is, its format and source; of a plain-text row's text only ``heads[0]``,
    where it holds that: _templated's): the rows with problems, truncated, written out ... are listed after the last
    is read, and a conversation's messages held for each (every row truncated at a short max_length) were the rows
    whole."""
    text = heads[0] if row.text is not None and heads and heads[0] in row.text else None
    return Row(where=row.where, format=row.format, text=text, source=row.source, dropped=row.dropped, at=row.at)


def _writes(tokenizer, key: str) -> bool:
    """Whether the chat template writes an assistant turn's ``key`` (its reasoning); a template that refuses the
    probe is taken as writing it (the rows' own rendering says what it refuses)."""
    turns = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A", key: _REASONING_PROBE}]
    try:
        return _REASONING_PROBE in tokenizer.apply_chat_template(turns, tokenize=False)
    except Exception:  # jinja2's errors and friends
        return True


def _templated(written_out: list[tuple[Row, str]], heads: list[str]) -> str | None:
    """The warning for plain-text rows that hold conversations the chat template rendered already (Unsloth's and
    TRL's formatting_prompts_func: {"text": apply_chat_template(messages)}): trained as plain text, the loss covers
    every token, the prompts' too, and the eos closes the template's own end of turn; None where the rows are not
    such (another special token written out). ``heads``: _turn_heads' (the rows were kept with their text where
    they hold it: _light)."""
    text = [(row, token) for row, token in written_out if row.text is not None and heads and heads[0] in row.text]
    if not text:
        return None
    row, _ = text[0]
    return (
        f"{len(text)} plain-text row(s) hold conversations a chat template rendered already ({heads[0]!r} in "
        f"{row.where}): as plain text the loss covers every token, the prompts' too (Unsloth's train_on_responses_only "
        "and TRL's assistant_only_loss train the answers only), and an eos follows the template's own end of turn; "
        "give the rows as they were before the template rendered them (formatting_prompts_func's input), 'messages' "
        "of role/content turns: ftctl renders them with the model's chat template and trains the assistant turns only"
    )


def _turn_heads(tokenizer) -> list[str]:
    """What the chat template writes on the line before a user's turn (ChatML's '<|im_start|>user', Llama 3's
    '<|start_header_id|>user<|end_header_id|>'), found by rendering one; none where it cannot."""
    try:
        one = tokenizer.apply_chat_template([{"role": "user", "content": _REASONING_PROBE}], tokenize=False)
    except Exception:  # jinja2's errors and friends
        return []
    line = one[: one.find(_REASONING_PROBE)].rstrip().rsplit("\n", 1)[-1].strip()
    return [line] if line else []


# rows tokenized at a time (prepare_data): their token ids and labels go into arrow arrays (4 bytes a token) before
# the next chunk's; held as Python lists (~70 bytes a token) a file of 300k conversations took 30 GB. A chunk's own
# Python objects (the tokenizer's ids and offsets of each row, untruncated) are ~300 bytes a token while it is
# tokenized: 8k generated conversations (14 MB) peaked at +368 MB with chunks of 4,096 rows, +196 MB with 512 (the
# same CPU time)
_CHUNK = 512
# rows a tokenizing process is worth (_processes): one process tokenizes ~350-450 conversations a second of a core,
# so 2,000 rows are ~5 s of it; fewer rows are tokenized in this process alone (the demo's 300: no pool to start)
ROWS_A_PROCESS = 2000


def _processes(asked: int | None, rows: int, sharing: int = 1) -> int:
    """How many processes tokenize ``rows`` rows: ``asked`` (dataset_num_proc) where given, at most one a row;
    else one a ROWS_A_PROCESS rows, at most one a core this process may run on (gpus.usable_cores: a Slurm
    job's or a container's cores, not the machine's) of those ``sharing`` processes of the node tokenize on at once
    (build_dataset: every rank where none keeps the rows for the others)."""
    if asked is not None:
        return max(1, min(asked, rows))
    return max(1, min(usable_cores() // max(sharing, 1), rows // ROWS_A_PROCESS))


@dataclass
class _Work:
    """What a tokenizing process needs: the rows (a forked process has them already: only their numbers are sent)."""

    rows: Rows
    tokenizer: object
    max_length: int
    every_token: bool
    special: object  # _special_tokens' pattern, or None


@dataclass
class _Done:
    """What _tokenize_rows gives of some rows: each row's (special token its text writes out, the problem that keeps
    it out, whether its assistant turns end with an end-of-turn token, whether the template renames its call ids),
    None for a row with problems of its own; each encoded row's (length before truncation, trainable tokens before,
    trainable tokens kept, whether a prompt and its completion meet inside a token), with their token ids and labels
    end to end (int32: row k's are ``ends[k]`` to ``ends[k + 1]``)."""

    rows: list
    encoded: list[tuple[int, int, int, bool]]
    ids: object  # numpy int32
    labels: object
    ends: object  # numpy int64, one a row encoded, with a leading 0

    def row(self, k: int) -> tuple[list[int], list[int]]:
        lo, hi = int(self.ends[k]), int(self.ends[k + 1])
        return self.ids[lo:hi].tolist(), self.labels[lo:hi].tolist()


def _tokenize_rows(work: _Work, lo: int, hi: int) -> _Done:
    """Render and tokenise rows ``lo`` to ``hi`` of ``work``: what prepare_data makes of each (_Done), in
    this process or another's (_tokenized)."""
    import numpy as np

    tokenizer, special, every_token = work.tokenizer, work.special, work.every_token
    said: list = []
    texts: list[str] = []
    spans: list = []
    for row in work.rows[lo:hi]:
        if row.problems:
            said.append(None)
            continue
        texts_of = [row.text] if row.text is not None else [m["content"] for m in row.messages]
        found = next((f.group() for t in texts_of if special and (f := special.search(t))), None)
        if row.text is not None:  # plain text (from completion_at, bos and eos added), or segments as written
            said.append((found if row.spans is None else None, None, True, False))  # (segments write their own)
            texts.append(row.text)
            if row.spans is not None:
                spans.append([(0, len(row.text))] if every_token else row.spans)
            else:
                spans.append(0 if every_token else row.completion_at)
            continue
        try:
            text, row_spans, has_eot = assistant_spans(tokenizer, row.messages, row.completion_at, row.tools)
        except MaskError as e:  # our own message: the template cannot be split into turns
            said.append((found, str(e), True, False))
            continue
        except Exception as e:  # jinja2 TemplateError and friends: the template refused the conversation
            roles = ", ".join(m["role"] for m in row.messages)
            fix = ""
            if (token := re.search(r"'(bos_token|eos_token)' is undefined", str(e))) and not getattr(
                tokenizer, token[1], None
            ):  # another model's template (chat_template_path) on a tokenizer without that token
                fix = (
                    f": the tokenizer has no {token[1]}, which the template writes; train with a template made for "
                    f"this tokenizer, or give it one ({token[1]} in its tokenizer_config.json)"
                )
            problem = f"the model's chat template refused this conversation: {e}{fix} (turns: {roles})"
            said.append((found, problem, True, False))
            continue
        said.append((found, None, has_eot, renames_call_ids(tokenizer, row.messages)))
        texts.append(text)
        spans.append([(0, len(text))] if every_token else row_spans)
    encoded = encode_texts(tokenizer, texts, spans, work.max_length)
    ends = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(enc.input_ids) for enc in encoded], out=ends[1:])
    ids = np.fromiter((i for enc in encoded for i in enc.input_ids), dtype=np.int32, count=int(ends[-1]))
    labels = np.fromiter(
        (i for enc in encoded for i in labels_of(enc, IGNORE_INDEX)), dtype=np.int32, count=int(ends[-1])
    )
    kept = [(enc.length, enc.trainable_before, sum(enc.mask), enc.joined) for enc in encoded]
    return _Done(said, kept, ids, labels, ends)


_WORK: _Work | None = None  # what the forked tokenizing processes read (_tokenized): set before they start


def _tokenize_here(lo: int, hi: int) -> _Done:
    return _tokenize_rows(_WORK, lo, hi)


def _tokenized(work: _Work, processes: int):
    """(lo, hi, _Done) of the rows, a chunk at a time, in order: in this process, or in ``processes`` forked ones
    (each holds the rows and a copy of the tokenizer from the fork; smaller chunks, so each has its share). A
    process that dies (out of memory) is an FtctlError, not a wait for its rows; one that raises raises it here."""
    rows = len(work.rows)
    if processes <= 1 or "fork" not in _start_methods():
        for lo in range(0, rows, _CHUNK):
            yield lo, min(lo + _CHUNK, rows), _tokenize_rows(work, lo, min(lo + _CHUNK, rows))
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    global _WORK
    size = max(1, min(_CHUNK, math.ceil(rows / (4 * processes))))  # 4 a process: none waits long for the last
    bounds = [(lo, min(lo + size, rows)) for lo in range(0, rows, size)]
    _WORK = work
    # the tokenizer's own threads (batch encoding) are off in the forked processes: a core each, not each process
    # a thread a core (the trainer's are off already: launch's environment); this process's are as they were after
    was = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    # the rows' objects out of the garbage collector's sight: a collection in a process would touch (copy) every
    # page of them, each process a copy of all the rows, not only of its share
    gc.freeze()
    pool = ProcessPoolExecutor(
        processes, mp_context=multiprocessing.get_context("fork"), initializer=_end_with, initargs=(os.getpid(),)
    )
    try:
        try:
            done = pool.map(_tokenize_here, *zip(*bounds))  # every chunk sent: the processes have started
        finally:
            gc.unfreeze()
            if was is None:
                os.environ.pop("TOKENIZERS_PARALLELISM", None)
            else:
                os.environ["TOKENIZERS_PARALLELISM"] = was
        for (lo, hi), result in zip(bounds, done):
            yield lo, hi, result
    except BrokenProcessPool:
        raise FtctlError(
            f"a process tokenizing the data was ended (out of memory?): each of the {processes} holds a tokenizer "
            "and its share of the rows; tokenize with fewer processes: -o dataset_num_proc=1 (or 2, ...)"
        ) from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        _WORK = None


def _end_with(parent: int) -> None:
    """A tokenizing process ends with the process that started it (Linux's parent-death signal): killed (out of
    memory, torchrun stopping its workers), it leaves no process waiting for more rows for good."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: as multiprocessing leaves it
        return
    if os.getppid() != parent:  # ended before the signal was asked for
        os._exit(1)


def _start_methods() -> list[str]:
    import multiprocessing

    return multiprocessing.get_all_start_methods()


# the arrow file _TokenColumns writes the kept rows' tokens to, in prepare_data's ``spill`` directory
SPILLED = "tokens.arrow"


class _TokenColumns:
    """The kept rows' columns (input_ids, labels, and source where asked), a chunk of arrow arrays at a time: written
    to ``spill``'s SPILLED as each chunk is added, where a directory is given (the dataset then memory-mapped from it:
    300k conversations of ~200M tokens held 1.6 GB in the trainer's process until the cache entry was written, a
    chunk's here), else held in memory. A disk that refuses the file (full, read-only) has the rows held in memory,
    those written read back. The dataset's fingerprint is a digest of the values, as they are added (_fingerprint)."""

    def __init__(self, sources: bool, spill: str | None = None):
        import hashlib

        self.names = ["input_ids", "labels", *(["source"] * sources)]
        self.chunks: dict[str, list] = {name: [] for name in self.names}
        self.digests = {name: hashlib.blake2b(digest_size=8) for name in self.names}
        self.features = _token_features(self.names)
        self.file = os.path.join(spill, SPILLED) if spill else None
        self.written = 0  # rows written to self.file
        self.writer = self.sink = None
        if self.file:
            import pyarrow as pa

            try:
                self.sink = pa.OSFile(self.file, "wb")
                self.writer = pa.ipc.new_stream(self.sink, self.features.arrow_schema)
            except OSError:
                self._unspill()

    def add(self, done: _Done, kept: list[int], sources: list[int]) -> None:
        """The rows ``kept`` (their numbers among ``done``'s encoded ones), of these ``sources``."""
        import numpy as np
        import pyarrow as pa

        ends = done.ends.astype(np.int32)
        take = pa.array(kept, type=pa.int64())
        columns = {}
        for name, values in (("input_ids", done.ids), ("labels", done.labels)):
            columns[name] = pa.ListArray.from_arrays(pa.array(ends), pa.array(values, type=pa.int32())).take(take)
        if "source" in self.names:
            columns["source"] = pa.array(sources, type=pa.int32())
        for name, column in columns.items():
            _digest_column(self.digests[name], column)
        if self.writer is not None:
            try:
                self.writer.write_table(pa.table(columns, schema=self.features.arrow_schema))
                self.written += len(kept)
                return
            except OSError:
                self._unspill()
        for name, column in columns.items():
            self.chunks[name].append(column)

    def _unspill(self) -> None:
        """The disk refused the file: the rows written to it read back into memory, the file removed."""
        import pyarrow as pa

        for closing in (self.writer, self.sink):
            try:
                if closing is not None:
                    closing.close()
            except (OSError, pa.ArrowException):
                pass
        self.writer = self.sink = None
        if self.written:
            with pa.OSFile(self.file) as f:  # read into memory, not mapped: the file is removed
                reader, count = pa.ipc.open_stream(f), 0
                while count < self.written:
                    batch = reader.read_next_batch()
                    count += batch.num_rows
                    for name in self.names:
                        self.chunks[name].append(batch.column(name))
        self.written = 0
        try:
            os.unlink(self.file)
        except OSError:
            pass
        self.file = None

    def dataset(self):
        import datasets
        import pyarrow as pa

        if self.writer is not None:
            try:
                self.writer.close()
                self.sink.close()
                self.writer = self.sink = None
                table = datasets.table.MemoryMappedTable.from_file(self.file)
            except OSError:
                self._unspill()
        if self.writer is None and self.file is None:
            schema = self.features.arrow_schema
            table = datasets.table.InMemoryTable(
                pa.table(
                    {name: pa.chunked_array(self.chunks[name], type=schema.field(name).type) for name in self.names}
                )
            )
        self.chunks = {name: [] for name in self.names}  # the table holds them now
        return datasets.Dataset(
            table, info=datasets.DatasetInfo(features=self.features), fingerprint=self._fingerprint()
        )

    def _fingerprint(self) -> str:
        """datasets' fingerprint of the tokenized rows (the name its map/select cache files take): a blake2b of each
        column's values, hashed a chunk at a time as they were added. Without one, datasets.Dataset makes its own by
        pickling the whole table with dill (generate_fingerprint): each column combined into one array, then pickled
        into a buffer, ~3x the tokens' bytes on top of them at once: +490 MB of RSS over the tokenizing's peak for 40k
        conversations (140 MB of tokens), ~4 GB for 300k (the trainer's 7.85 GB peak)."""
        import hashlib

        digest = hashlib.blake2b(digest_size=8)
        for name in self.names:
            digest.update(f"\0{name}\0".encode() + self.digests[name].digest())
        return digest.hexdigest()


def _token_features(names: list[str]):
    import datasets

    features = {
        "input_ids": datasets.Sequence(datasets.Value("int32")),
        "labels": datasets.Sequence(datasets.Value("int32")),
        "source": datasets.Value("int32"),
    }
    return datasets.Features({name: features[name] for name in names})


def _digest_column(digest, chunk) -> None:
    """Add a chunk of a column's values to its digest (_TokenColumns._fingerprint): a list column's lengths, then its
    values, the arrow buffers themselves (no copy)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_list(chunk.type):  # input_ids, labels
        digest.update(pc.list_value_length(chunk).to_numpy(zero_copy_only=False))
        chunk = pc.list_flatten(chunk)
    digest.update(chunk.to_numpy(zero_copy_only=False))


def _special_tokens(tokenizer):
    """A pattern of the tokenizer's special tokens (eos, the chat template's <|im_start|>, <|eot_id|> ...), the
    longest first; None where it has none."""
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    tokens = {*tokenizer.all_special_tokens, *(t.content for t in added.values() if getattr(t, "special", False))}
    tokens = sorted((t for t in tokens if t and t.strip()), key=len, reverse=True)
    return re.compile("|".join(map(re.escape, tokens))) if tokens else None


# the parts of a problem's text that differ from row to row of one kind of problem (formats.py's and this module's
# wording): (pattern, what the kind's text says instead, the row's detail). Rows whose problem reads the same once
# these are taken out share one line (problem_lines), the details beside their locations
_DETAILS = [
    (re.compile(r" \(column (\d+)\)"), "", r"column \1"),  # invalid JSON: Expecting value (column 10)
    (re.compile(r" \(byte (0x[0-9a-f]+) at column (\d+)\)"), "", r"byte \1 at column \2"),  # not UTF-8 text
    (re.compile(r"^not Unicode text \((\\u[0-9a-f]{4})\)"), "not Unicode text", r"\1"),  # a lone surrogate
    (re.compile(r"\bturn (\d+)\b"), "turn N", r"turn \1"),  # unknown role 'robot' in turn 3
    (re.compile(r" \(turns: ([^)]*)\)$"), "", r"turns: \1"),  # the chat template refused this conversation
    (re.compile(r" \(the row has (\d+); "), " (", r"\1 tokens"),  # every label is masked after truncation
    (  # a truncated row (prepare_data's warning)
        re.compile(
            r"^(\d+) tokens, (over the max length \d+): the last (\d+) tokens will be dropped "
            r"\((\d+) of (\d+) trainable tokens kept\)$"
        ),
        r"\2: the tokens past it will be dropped",
        r"\1 tokens, the last \3 dropped, \4 of \5 trainable kept",
    ),
]


def _kind(problem: str) -> tuple[str, str]:
    """(the kind of ``problem``: its text without what differs from row to row, that detail or '')."""
    details = []
    for pattern, instead, detail in _DETAILS:
        found = list(pattern.finditer(problem))
        details += [m.expand(detail) for m in found]
        problem = pattern.sub(instead, problem)
    return problem, ", ".join(details)


def problem_lines(problems: list[tuple[Row, str]], rows: int) -> list[str]:
    """report.errors: "WHERE: problem" for a problem of one row; a kind of problem several rows share (the same
    words once what differs from row to row, a column or turn number, is taken out: _kind) is one line where its
    first row's would be, naming its rows (_rows_named; with each one's detail, "line 7 (turn 3)", where they
    differ), not one line a row: 30k bad rows of a few kinds make a few lines. every_row_line lists them all."""
    by_kind: dict[str, list[tuple[Row, str, str]]] = {}
    for row, problem in problems:
        kind, detail = _kind(problem)
        same = by_kind.setdefault(kind, [])
        if same and same[-1][0] is row:  # a row with the same kind of problem twice is one row
            if detail and detail not in same[-1][2]:
                same[-1] = (row, same[-1][1], f"{same[-1][2]}, {detail}" if same[-1][2] else detail)
            continue
        same.append((row, problem, detail))
    lines = []
    for kind, same in by_kind.items():
        if len(same) == 1 or any(row.at is None for row, _, _ in same):
            lines += [f"{row.where}: {problem}" for row, problem, _ in same]
        elif len({problem for _, problem, _ in same}) == 1:  # the same words: the rows as runs of numbers
            lines.append(f"{_rows_named([row for row, _, _ in same], rows)}: {same[0][1]}")
        else:
            lines.append(f"{_rows_detailed([(row, detail) for row, _, detail in same], rows)}: {kind}")
    return lines


def every_row_line(problems: list[tuple[Row, str]]) -> list[str]:
    """Each row's problems, one "WHERE: problem" line each, as read (what problem_lines groups)."""
    return [f"{row.where}: {problem}" for row, problem in problems]


def _rows_detailed(rows: list[tuple[Row, str]], total: int, shown: int = 3) -> str:
    """Where several rows are, by file, the first ``shown`` with their details:
    "big.jsonl line 4 (turn 2), line 9 (turn 3), line 12 (turn 1) and 2,997 more (3,000 rows)"."""
    parts: dict[str, list[str]] = {}
    for row, detail in rows[:shown]:
        name, unit, n = row.at
        parts.setdefault(name, []).append(f"{unit} {n}" + (f" ({detail})" if detail else ""))
    said = ", ".join(f"{name} {', '.join(at)}" for name, at in parts.items())
    more = f" and {len(rows) - shown:,} more" if len(rows) > shown else ""
    count = f"all {len(rows):,} rows" if len(rows) == total else f"{len(rows):,} rows"
    return f"{said}{more} ({count})"


def _rows_named(rows: list[Row], total: int, shown: int = 5) -> str:
    """Where several rows are, by file, their numbers as runs, the first ``shown`` runs of them:
    "qa.jsonl lines 1-1000 (all 1,000 rows)", "a.jsonl lines 2, 7-9 and 3 more (7 rows)"."""
    numbers: dict[tuple[str, str], list[int]] = {}
    for row in rows:
        name, unit, n = row.at
        numbers.setdefault((name, unit), []).append(n)
    parts, hidden = [], 0
    for (name, unit), found in numbers.items():
        runs: list[list[int]] = []
        for n in sorted(set(found)):
            if runs and n == runs[-1][1] + 1:
                runs[-1][1] = n
            else:
                runs.append([n, n])
        said = [f"{lo}-{hi}" if hi > lo else f"{lo}" for lo, hi in runs[:shown]]
        hidden += sum(hi - lo + 1 for lo, hi in runs[shown:])
        shown -= len(said)
        if said:
            parts.append(f"{name} {unit}s {', '.join(said)}")
    more = f" and {hidden:,} more" if hidden else ""
    count = f"all {len(rows):,} rows" if len(rows) == total else f"{len(rows):,} rows"
    return f"{', '.join(parts)}{more} ({count})"


# which tokens of a row carry the loss, by its format (formats.Row.format; others are conversations), in TRL's
# names (loss_on): (what trains, its name, the rows)
_LOSS_ON = {
    "conversation": ("the assistant turns only", "assistant_only_loss", "conversations"),
    "prompt-completion": ("the completion only", "completion_only_loss", "prompt-completion rows"),
    "text": ("every token", "", "plain-text rows"),
    "segments": ("the segments labelled true", "axolotl's input_output", "segments rows"),
}


def loss_on(every_token: bool, formats: dict[str, int] | None = None, trl_completion_only: bool = True) -> str:
    """Which tokens carry the loss, in one line and TRL's names (`ftctl plan`'s loss row, launch --dry-run's data note,
    the trainer's start): ``every_token``: assistant_only_loss false; ``formats``: the rows of each format
    (DataStats.formats), None where the data is not read (what the setting decides for each kind of row);
    ``trl_completion_only``: False where the run gave TRL's completion_only_loss false (TRL then trains a
    prompt-completion row's every token too: no difference to say)."""
    kinds: dict[str, int] = {}
    for fmt, n in (formats or {}).items():
        kind = fmt if fmt in _LOSS_ON else "conversation"
        kinds[kind] = kinds.get(kind, 0) + n
    if every_token and kinds and set(kinds) <= {"text"}:
        return "every token (plain text)"
    if every_token:  # TRL's completion_only_loss (None) trains a prompt-completion row's completion whatever this says
        trl = trl_completion_only and (not kinds or "prompt-completion" in kinds)
        return "every token, the prompts' too (assistant_only_loss: false)" + (
            "; TRL trains a prompt-completion row's completion only (its completion_only_loss)" * trl
        )
    if not kinds:  # the data not read
        return (
            "a conversation's assistant turns only (assistant_only_loss), a prompt-completion row's completion only "
            "(completion_only_loss), plain text's every token"
        )
    said = [(*_LOSS_ON[kind], n) for kind in _LOSS_ON if (n := kinds.get(kind))]
    if len(said) == 1:
        what, name, _, _ = said[0]
        return f"{what} ({name or 'plain text'})"
    return "; ".join(
        f"{what}{f' ({name})' * bool(name)} of {n:,} {rows if n != 1 else rows[:-1]}" for what, name, rows, n in said
    )


def check_data(
    path: str,
    tokenizer,
    max_length: int,
    endpoint_url: str | None = None,
    training: DataReport | None = None,
    **options,
) -> DataReport:
    """Every problem of the data at ``path`` with file and row number, then token statistics.

    ``tokenizer``: a transformers fast tokenizer, or a model id/path to load one from; ``training``: the report of
    the run's training data, where ``path`` is its held-out data (its rows that are training rows too are said:
    held_out_overlap); ``options``: prepare_data's (held_out, show, every_token)."""
    report = prepare_data(path, tokenizer, max_length, endpoint_url, keep=False, **options)[0]  # tokens not held
    report.repeats_fix = _repeats_fix(report)
    if training is not None:
        report.in_training = held_out_overlap(training, report)
    return report


def show_rows(report: DataReport, tokenizer, mark) -> str:
    """The report's sample rows as the model sees them (the chat template's text, truncated as training
    truncates), each run of trained tokens passed through ``mark`` (``ftctl data check --show``): where the loss
    falls, before paying for a run that learns from the wrong tokens."""
    out = []
    for where, ids, labels, length, trainable_before in report.samples:
        trained = [label != IGNORE_INDEX for label in labels]
        out.append(f"{where}: {len(ids):,} tokens, {sum(trained):,} trained")
        text, start = [], 0
        for i in range(1, len(ids) + 1):
            if i == len(ids) or trained[i] != trained[start]:
                piece = printable(tokenizer.decode(ids[start:i]))  # what --show prints
                text.append(mark(piece) if trained[start] else piece)
                start = i
        shown = "".join(text)
        if length > len(ids):  # truncated: where, and what of it went (as the truncated rows' warning says)
            shown += "\n" * (not shown.endswith("\n")) + (
                f"[... cut at max_length {report.max_length}: the last {length - len(ids):,} tokens dropped "
                f"({sum(trained):,} of {trainable_before:,} trainable tokens kept)]"
            )
        out.append(shown)
    return "\n".join(out)


def build_dataset(
    path: str,
    tokenizer,
    max_length: int,
    endpoint_url: str | None = None,
    stats=None,
    cache_dir: str | None = None,
    echo=None,
    num_proc: int | None = None,
    used: list[str] | None = None,
    **options,
):
    """The training dataset (columns ``input_ids``, ``labels``), or a held-out one; FtctlError listing the
    problems if any. ``options``: prepare_data's (held_out, sources, every_token, text_field); ``stats``: a list its
    DataStats is appended to; ``cache_dir``: where the tokenized rows are kept (cache_key names them), read there
    instead of tokenizing the data again where they are, else tokenized and written by one process a node (its
    LOCAL_RANK 0; without LOCAL_RANK, RANK 0 writes and every process tokenizes) while the node's others wait for
    them (_wait_for_entry), on all of its cores; ``echo`` takes the line that says which; ``num_proc``: prepare_data's
    (not in cache_key: the rows are the same whichever); ``used``: a list the entry's name is appended to
    (build_datasets removes the others: drop_stale_entries)."""
    entry = None
    if cache_dir:  # the data files' digests kept beside the entries: a resume on the same files does not hash them
        entry = Path(
            cache_dir, cache_key(path, tokenizer, max_length, endpoint_url, str(Path(cache_dir, DIGESTS)), **options)
        )
    if entry is not None and used is not None:
        used.append(entry.name)
    local = os.environ.get("LOCAL_RANK")
    local = int(local) if local else None
    writes = entry is not None and _writes_entries()
    found = _read_cached(entry) if entry else None
    if found is None and entry and local:  # the node's first process tokenizes them: waited for, in silence
        found = _wait_for_entry(entry)
        echo = None
    if found:
        dataset, row_stats = found
        if echo:
            echo(f"{path}: {len(dataset):,} rows tokenized at an earlier start, read from {entry}")
    else:
        if entry and echo:  # silent for minutes otherwise (300k conversations: half an hour on a core)
            echo(f"{path}: tokenizing the rows ...")
        tells = writes and local is not None  # this node's other processes wait for what it writes
        if tells:
            _not_kept_mark(entry).unlink(missing_ok=True)  # an earlier launch's, on a pid used again
        started = time.monotonic()
        said = [started, started]  # when the tokenizing began (the rows read), when a line last said how far

        def progress(done: int, rows: int) -> None:  # silent otherwise for the half hour of 300k rows on a core
            now = time.monotonic()
            if not done:
                said[:] = [now, now]
            elif echo and done < rows and now - said[1] >= PROGRESS_EVERY_S:
                from ftctl.progress import duration

                said[1] = now
                left = (now - said[0]) * (rows - done) / done
                echo(f"{path}: {done:,} of {rows:,} rows tokenized ({100 * done / rows:.0f}%), ~{duration(left)} left")

        # the tokens written into the entry's new directory as they are tokenized, not held in memory until the
        # last row is (300k conversations: 1.6 GB); a process that keeps no entry writes them to one of its own
        # (_scratch); None where the disk refuses it (held, and not kept either)
        spill = _new_entry(entry) if writes else _scratch()
        try:
            sharing = 1 if tells else int(os.environ.get("LOCAL_WORLD_SIZE") or 1)  # every rank tokenizes: a share
            report, dataset = prepare_data(
                path,
                tokenizer,
                max_length,
                endpoint_url,
                num_proc=num_proc,
                sharing=sharing,
                read_first=True,
                progress=progress,
                spill=spill,
                **options,
            )
            if report.errors:
                raise FtctlError(report.error_message())
            for line in report.warnings if echo else ():  # what `ftctl data check` warns of, said by the run too: a
                echo(f"warning: {path}: {line}")  # template whose turns end in no special token never stops (explore69)
        except BaseException:
            if spill:
                import shutil

                shutil.rmtree(spill, ignore_errors=True)
            if tells:  # the others then tokenize on their own, and fail alike (torchrun would end them anyway)
                _say_not_kept(entry, path, "")
            raise
        row_stats = report.stats
        if writes:
            dataset, kept = _write_cached(entry, dataset, row_stats, spill)
            if kept is not True and tells:
                kept = _say_not_kept(entry, path, kept)
            if echo:
                took = f"{len(dataset):,} rows tokenized in {time.monotonic() - started:.0f} s"
                echo(f"{path}: {took}, kept in {entry} for a resume" if kept is True else f"{path}: {took}; {kept}")
    if stats is not None:
        stats.append(row_stats)
    return dataset


# how often a process waits for its node's first process to have written the tokenized rows (_wait_for_entry)
WAIT_POLL_S = 0.5
# how often the tokenizing of a large dataset says how far it is (build_dataset)
PROGRESS_EVERY_S = 60.0


def drop_stale_entries(cache_dir: str, used: list[str]) -> None:
    """Remove what ``cache_dir`` holds besides the entries ``used`` (this start's: their names are cache_keys) and
    their half-written copies: earlier starts' tokenized rows of data since edited, another max length, tokenizer or
    template, which no start reads again (a GB or more each), and what a process killed while writing one left
    (``KEY.XXXX.new``, ``.old``). By the processes that write entries (one a node, build_dataset), once this start's
    are read or written; every process of a run makes the same keys, so none removes what another writes or reads."""
    import shutil

    keep = set(used)
    try:
        names = os.listdir(cache_dir)
    except OSError:  # none kept (a disk that refused them, or nothing written yet)
        return
    for name in names:
        if name.split(".")[0] in keep:
            continue
        path = os.path.join(cache_dir, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)


def _writes_entries() -> bool:
    """Whether this process writes the node's tokenized rows (build_dataset): its LOCAL_RANK 0, else RANK 0."""
    local = os.environ.get("LOCAL_RANK")
    return int(local) == 0 if local else int(os.environ.get("RANK") or 0) == 0


def _wait_for_entry(entry: Path):
    """(dataset, DataStats) of ``entry`` once the node's first process (LOCAL_RANK 0) has written it there, read
    from the disk (memory-mapped: not a copy a process); None where that process said it will not
    (_not_kept_mark): this one then tokenizes them on its own. Waits as long as the tokenizing takes (300k
    conversations: minutes), looking at the disk every WAIT_POLL_S: no collective, whose timeout (NCCL's 30 min)
    would end the run. Where that process dies instead, torchrun stops this one with the others."""
    mark = _not_kept_mark(entry)
    while True:
        if found := _read_cached(entry):
            return found
        if mark.exists():
            return _read_cached(entry)  # written by another node on a shared disk meanwhile, or None
        time.sleep(WAIT_POLL_S)


def _not_kept_mark(entry: Path) -> Path:
    """The file by which a node's first process tells that node's others not to wait for ``entry``: it was not
    written (the disk refused it, or the tokenizing failed). In the node's temporary directory, not beside the
    entry (on the disk that refused it), and this launch's own: named by the entry, the processes' parent
    (torchrun's agent on this node) and torchrun's restart count."""
    import hashlib
    import tempfile

    launch = f"{entry.absolute()}\0{os.getppid()}\0{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    name = hashlib.blake2b(launch.encode(), digest_size=8).hexdigest()
    return Path(tempfile.gettempdir(), f"ftctl-data-cache-{name}.not-kept")


def _say_not_kept(entry: Path, path: str, why: str) -> str:
    """Tell this node's other processes that ``entry`` will not be written (_not_kept_mark); ``why``: the line
    _write_cached gave, returned with what the others do. FtctlError where the mark cannot be written either:
    they would wait for the entry until the first collective's timeout ended the run."""
    mark = _not_kept_mark(entry)
    try:
        mark.touch()  # empty: a disk without room still takes it, once the entry's half-written copy is gone
    except OSError as e:
        if not why:  # failing already: that error is the one to see
            return why
        raise FtctlError(
            f"{path}: the tokenized rows were {why}; and this node's other processes, which wait for them, could "
            f"not be told to tokenize on their own ({e}): free some space on the run directory's disk and in {mark.parent}"
        ) from e
    return f"{why}; this node's other processes tokenize them too" if why else why


_CACHED_STATS = "ftctl-data-stats.json"
# in the cache beside its entries: the local data files' digests by their stat (formats._Known), so that a start on
# data unchanged since reads the data's digest there, not by hashing every byte of it again
DIGESTS = "ftctl-data-digests.json"
# the code that turns rows into tokens, by its path in the ftctl package: another version of it (an upgrade of ftctl) is
# another cache_key. tool_datasets.py: its TRAIN_FLAGS (the fields that say whether a turn trains) and LF_INFO are
# formats.py's, imported from there
_TOKENIZING_CODE = (
    "trainer/data.py",
    "trainer/formats.py",
    "trainer/masks.py",
    "trainer/splits.py",
    "tool_datasets.py",
)


def _code_digest() -> bytes:
    """A digest of _TOKENIZING_CODE's files as this process runs them: read as this module is imported (the others
    just imported at its top, tool_datasets.py by formats.py), not when cache_key is called. Read then, an ftctl
    upgraded in place while a trainer started (pip install -U into the venv a Slurm job runs, its trainer minutes into
    loading its model) named the rows its old code tokenized by the new code's key, and the next start, of the new
    code, read them as its own (helper 296)."""
    import hashlib

    digest = hashlib.blake2b(digest_size=16)
    here = Path(__file__).parent.parent  # the ftctl package
    for name in _TOKENIZING_CODE:
        digest.update((here / name).read_bytes())
    return digest.digest()


_RUNNING_CODE = _code_digest()


def cache_key(
    path: str, tokenizer, max_length: int, endpoint_url: str | None = None, known: str | None = None, **options
) -> str:
    """A digest of all that decides the tokenized rows of build_dataset: the data's digest (formats.data_digest: its
    files' contents), the tokenizer (vocabulary, special tokens, chat template), max_length, prepare_data's options
    (held_out, sources, every_token), the code that tokenizes and the transformers and tokenizers that run it.
    ``known``: data_digest's file of the data files' digests (build_dataset's: DIGESTS in the cache)."""
    import hashlib
    import json

    import tokenizers
    import transformers

    tokenizer = _load_tokenizer(tokenizer)
    digest = hashlib.blake2b(digest_size=16)
    digest.update(_RUNNING_CODE)  # the code as imported: what tokenizes the rows, whatever its files hold now
    backend = tokenizer.backend_tokenizer.to_str() if getattr(tokenizer, "is_fast", False) else ""
    said = {
        "data": data_digest(path, endpoint_url, bool(options.get("held_out")), known),
        "tokenizer": [type(tokenizer).__name__, backend, tokenizer.chat_template, tokenizer.special_tokens_map],
        "adds": [getattr(tokenizer, k, None) for k in ("add_bos_token", "add_eos_token", "eos_token_id")],
        "max_length": max_length,
        "options": sorted(options.items()),
        "versions": [transformers.__version__, tokenizers.__version__],
    }
    digest.update(json.dumps(said, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _read_cached(entry: Path):
    """(dataset, DataStats) that _write_cached kept in ``entry``; None where there are none (or they cannot be
    read: tokenized again)."""
    import json

    if not (entry / _CACHED_STATS).is_file():
        return None
    try:
        import datasets

        said = json.loads((entry / _CACHED_STATS).read_text())
        row_stats = DataStats(**said)
        row_stats.histogram = [tuple(h) for h in row_stats.histogram]
        row_stats.datasets = [tuple(d) for d in row_stats.datasets]
        return datasets.load_from_disk(str(entry)), row_stats
    except Exception:  # noqa: BLE001 — a damaged entry is tokenized again, as if it were not there
        return None


def _new_entry(entry: Path) -> str | None:
    """A new directory beside ``entry`` to write it in (_write_cached renames it into place), None where the disk
    refuses one. Named by this host and process (KEY.HOST-PID.XXXX.new): one that a process of this host killed
    while it wrote (SIGKILL: the OOM killer, Slurm's KillWait, a node lost) is removed here, where it was kept to the
    run's end, a GB or more each attempt (drop_stale_entries keeps this key's); another host's, on a disk nodes
    share, may be being written, and is left."""
    import tempfile

    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        _drop_dead_writers(entry)
        new = Path(tempfile.mkdtemp(prefix=f"{entry.name}.{_writer()}.", suffix=".new", dir=entry.parent))
        as_mkdir_made(new)  # the umask's mode and the group's setgid: a colleague resuming a shared run removes it
    except OSError:
        return None
    return str(new)


def _scratch() -> str | None:
    """A directory for the tokens of a process that keeps no entry, removed as it ends (the dataset is memory-mapped
    from it till then): a run without a cache (``ftctl eval``'s held-out rows) or a process that does not write the
    node's entry (RANK without LOCAL_RANK: every process tokenizes) held them in memory, 8 bytes a token. In the
    temporary directory (ftctl-tokens.HOST-PID.XXXX.new; TMPDIR picks it), private, never in the cache: that is the
    writing process's alone (a shared file system's, on several nodes). One left by a process killed is removed by
    the next that makes one on this host (_drop_dead_writers). None where the disk refuses one."""
    import atexit
    import shutil
    import tempfile

    base = Path(tempfile.gettempdir(), "ftctl-tokens")
    try:
        _drop_dead_writers(base)
        new = tempfile.mkdtemp(prefix=f"{base.name}.{_writer()}.", suffix=".new", dir=base.parent)
    except OSError:
        return None
    _SCRATCH.add(os.path.basename(new))
    atexit.register(shutil.rmtree, new, True)
    return new


# the directories _scratch made in this process, in use till it ends: not an earlier process's of its pid
_SCRATCH: set[str] = set()


def _writer() -> str:
    """This process, as a new entry's name says it: HOST-PID (the host's name without its domain's dots)."""
    import socket

    return f"{socket.gethostname().split('.')[0]}-{os.getpid()}"


def _drop_dead_writers(entry: Path) -> None:
    """Remove the half-written copies of ``entry`` (KEY.HOST-PID.XXXX.new, .old) whose writer ran on this host and
    is gone: its pid no longer runs, or is this process's own (a new attempt in a container given the old one's
    pid; not one of _scratch's that this process uses)."""
    import re
    import shutil

    host = _writer().rsplit("-", 1)[0]
    ours = re.compile(rf"{re.escape(entry.name)}\.{re.escape(host)}-(\d+)\.[^.]+\.(new|old)")
    for path in entry.parent.iterdir():
        if not (found := ours.fullmatch(path.name)) or path.name in _SCRATCH:
            continue
        pid = int(found.group(1))
        if pid != os.getpid():
            try:
                os.kill(pid, 0)
                continue  # alive: being written
            except ProcessLookupError:
                pass
            except OSError:  # another user's live process
                continue
        shutil.rmtree(path, ignore_errors=True)


def _spilled_in(dataset, spill: str | None) -> str | None:
    """The arrow file in ``spill`` that ``dataset`` is memory-mapped from (prepare_data's), None where it is not."""
    if not spill:
        return None
    files = [f["filename"] for f in dataset.cache_files]
    return files[0] if files == [os.path.join(spill, SPILLED)] else None


def _in_memory(dataset):
    """``dataset`` (memory-mapped from a file about to be removed) copied into memory."""
    import datasets
    import pyarrow as pa

    table = dataset.data.table
    copied = pa.table({name: pa.concat_arrays(table.column(name).chunks) for name in table.column_names})
    return datasets.Dataset(datasets.table.InMemoryTable(copied), info=dataset.info, fingerprint=dataset._fingerprint)


def _write_cached(entry: Path, dataset, row_stats: DataStats, spill: str | None = None):
    """(the dataset as read back from ``entry``, True), once written there whole: into a new directory beside it,
    renamed into place (another process's entry, whole too, is kept; a damaged one replaced); (the dataset, why not)
    where the disk refused. ``spill``: that new directory (_new_entry), where prepare_data wrote the tokens as it made
    them (the dataset is memory-mapped from its SPILLED): the file becomes the entry's, not a copy written of it."""
    import dataclasses
    import json
    import shutil

    import datasets

    quiet = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()  # "Saving the dataset": not the trainer's log's business
    spilled = _spilled_in(dataset, spill)
    new = Path(spill) if spill else None
    try:
        if new is None:
            entry.parent.mkdir(parents=True, exist_ok=True)
            if (made := _new_entry(entry)) is None:
                raise OSError(f"cannot make a directory in {entry.parent}")
            new = Path(made)
        try:
            if spilled and len(dataset):  # its first row saved as datasets saves one, then its file the rows' own
                table = datasets.table.InMemoryTable(dataset.data.table.slice(0, 1))
                first = datasets.Dataset(table, info=dataset.info, fingerprint=dataset._fingerprint)
                first.save_to_disk(str(new))
                (name,) = [f["filename"] for f in json.loads((new / "state.json").read_text())["_data_files"]]
                os.replace(spilled, new / name)
            else:
                dataset.save_to_disk(str(new))
            (new / _CACHED_STATS).write_text(json.dumps(dataclasses.asdict(row_stats)))
            try:
                os.rename(new, entry)
            except OSError:  # there already: another process's, whole, or one _read_cached could not read
                if _read_cached(entry) is None:
                    old = new.with_suffix(".old")
                    os.rename(entry, old)
                    os.rename(new, entry)
                    shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(new, ignore_errors=True)
        return datasets.load_from_disk(str(entry)), True
    except OSError as e:
        if spilled:  # its file removed with the new directory
            dataset = _in_memory(dataset)
            shutil.rmtree(spill, ignore_errors=True)
        return dataset, f"not kept for a resume (a resume tokenizes them again): {e}"
    finally:
        if not quiet:
            datasets.enable_progress_bars()


def held_out_rows(eval_split: float, rows: int) -> int:
    """The rows eval_split holds out of ``rows``, as datasets' test_size takes it: a share (below 1), rounded up, or
    a count of rows (1 or more: axolotl's val_set_size: 100)."""
    return int(eval_split) if eval_split >= 1 else math.ceil(eval_split * rows)


def eval_split_leaves_none(eval_split: float, rows: int, data_path: str) -> str | None:
    """Why holding ``eval_split`` of ``rows`` training rows out leaves none to train on; None where some are
    left."""
    if not eval_split or held_out_rows(eval_split, rows) < rows:
        return None
    below = f"{rows} rows" if eval_split >= 1 else f"{1 - 1 / rows:.2g}"
    lower = f"lower it below {below}, " if rows > 1 else ""  # one row: any share of it is the row
    return (
        f"eval_split={eval_split} of {data_path}'s {rows} row{'s' * (rows != 1)} leaves none to train on: {lower}give "
        "held-out data with --eval-data FILE, or train without evaluation: -o eval_split=0"
    )


def build_datasets(spec, tokenizer, echo=None, stats=None, cache_dir: str | None = None):
    """(training dataset, held-out data or None) for a RunSpec: the held-out rows come from ``eval_data_path``,
    or are ``eval_split`` of the training rows, the same ones on every rank and at every resume (drawn with the
    run's seed); then ``data_weights`` mixes the training rows (mix; ``echo`` takes the line that says how).
    Held-out rows of several datasets (several eval_data_path, or eval_split of several data_path) are a dict
    of them by held_out_names: the trainer evaluates each (eval_<name>_loss) and all of them (eval_loss).
    ``stats``: a list the training rows' DataStats is appended to; ``cache_dir``: where the tokenized rows are kept
    for the next start (build_dataset; the trainer's: runpaths.DATA_CACHE in the run's local directory)."""
    mixing, every = spec.data_mix is not None, not spec.assistant_only_loss
    # the datasets' own names of their fields (data_columns: axolotl's entries'), where any: in cache_key's options
    named = {"columns": columns} if (columns := getattr(spec, "data_columns", None)) else {}
    procs = getattr(spec, "dataset_num_proc", None)  # TRL's name: the processes that tokenize (1: one alone)
    paths = split_paths(spec.data_path)
    by_source = mixing or (spec.eval_split > 0 and len(paths) > 1)
    used: list[str] = []  # the cache's entries this start reads or writes: the others are removed after
    dataset = build_dataset(
        spec.data_path,
        tokenizer,
        spec.model_max_length,
        spec.s3_endpoint_url,
        stats=stats,
        cache_dir=cache_dir,
        echo=echo,
        num_proc=procs,
        used=used,
        sources=by_source,
        every_token=every,
        text_field=spec.dataset_text_field,
        **named,
    )
    held_out = None
    if spec.eval_data_path:
        eval_paths = split_paths(spec.eval_data_path)
        sets = [
            build_dataset(
                path,
                tokenizer,
                spec.model_max_length,
                spec.s3_endpoint_url,
                cache_dir=cache_dir,
                echo=echo,
                num_proc=procs,
                used=used,
                held_out=True,
                every_token=every,
                text_field=spec.dataset_text_field,
                **named,
            )
            for path in eval_paths
        ]
        held_out = dict(zip(held_out_names(eval_paths), sets)) if len(sets) > 1 else sets[0]
    elif spec.eval_split:
        held = held_out_rows(spec.eval_split, len(dataset))
        if problem := eval_split_leaves_none(spec.eval_split, len(dataset), spec.data_path):
            raise FtctlError(problem + ".")
        copies = _copies(dataset)
        if copies is None:  # every row its own: datasets' own split
            split = dataset.train_test_split(test_size=held, seed=spec.seed)
            dataset, held_out = split["train"], split["test"]
        else:  # a held-out row that is a training row too measures memorising: copies go to one side together
            train_rows, held_rows = _split_copies(copies, held, spec.seed)
            if not held_rows:
                raise FtctlError(_nothing_held_out(spec, copies, held))
            dataset, held_out = dataset.select(train_rows), dataset.select(held_rows)
            if echo:
                copied = sum(len(rows) for rows in copies if len(rows) > 1)
                echo(
                    f"eval_split: {copied:,} of the {len(train_rows) + len(held_rows):,} rows are copies of another; "
                    f"the {len(held_rows):,} held out are none of the training rows"
                )
        if len(paths) > 1:
            held_out = _by_source(held_out, held_out_names(paths))
        elif by_source:
            held_out = held_out.remove_columns(["source"])
    if cache_dir and _writes_entries():
        drop_stale_entries(cache_dir, used)
    if mixing:
        dataset, said = mix(dataset, spec.data_mix, spec.seed)
        if echo:
            echo(said)
    elif by_source:
        dataset = dataset.remove_columns(["source"])
    return dataset, held_out


def held_out_names(paths: list[str]) -> list[str]:
    """Short, distinct names of datasets, for metric keys (eval_<name>_loss): a file's name without its extension,
    a Hub dataset's or a directory's last part."""
    names: list[str] = []
    for i, path in enumerate(paths):
        last = posixpath.basename(path.rstrip("/")).split(".")[0]
        base = re.sub(r"[^A-Za-z0-9_-]+", "_", last).strip("_") or f"data{i + 1}"
        name, n = base, 2
        while name in names:
            name, n = f"{base}_{n}", n + 1
        names.append(name)
    return names


def _by_source(held_out, names: list[str]):
    """eval_split's held-out rows of several datasets, by dataset (those it holds rows of); one: as it is."""
    sources = held_out["source"]
    held_out = held_out.remove_columns(["source"])
    sets = {name: [r for r, s in enumerate(sources) if s == i] for i, name in enumerate(names)}
    sets = {name: held_out.select(rows) for name, rows in sets.items() if rows}
    return sets if len(sets) > 1 else held_out


def all_held_out(held_out):
    """The held-out rows as one dataset (build_datasets may give a dict of several), or None."""
    if isinstance(held_out, dict):
        import datasets

        return datasets.concatenate_datasets(list(held_out.values()))
    return held_out


def mix(dataset, weights: list[tuple[str, float]], seed: int):
    """(the rows of each dataset ``weight`` times, the line that says so). The ``source`` column says which
    dataset a row is from (prepare_data); 2.5 takes every row twice, then half of them drawn with ``seed``, the
    same on every rank and after a resume. Held-out rows were split off before (build_datasets), so a row
    repeated here is never a held-out one."""
    import numpy as np

    rng = np.random.default_rng(seed)
    sources = np.fromiter(dataset["source"], dtype=np.int64, count=len(dataset))
    picked, parts = [], []
    for i, (path, weight) in enumerate(weights):
        rows = np.flatnonzero(sources == i)
        drawn = np.sort(rng.choice(rows, mixed_rows(len(rows), weight % 1), replace=False))
        picked += [rows] * int(weight) + [drawn]
        taken = mixed_rows(len(rows), weight)
        parts.append(f"{path} {len(rows):,} x {weight:g} = {taken:,}" + ("" if taken else " (none: raise its weight)"))
    order = np.concatenate(picked) if picked else np.array([], dtype=int)
    said = f"training data mixed by data_weights: {'; '.join(parts)}; {len(order):,} rows an epoch"
    counts = [(path, int(np.count_nonzero(sources == i))) for i, (path, _) in enumerate(weights)]
    if shares := weights_as_shares(counts, weights):
        said += f"\nwarning: {shares}"
    return dataset.select(order).remove_columns(["source"]), said


def weights_leave_out(datasets: list[tuple[str, int]], weights: list[tuple[str, float]]) -> list[str]:
    """The datasets (path, rows) whose data_weights give them no row an epoch (a weight of 0 is refused as such:
    leave the dataset out instead)."""
    return [
        f"data_weights: {path}'s {rows:,} row{'s' * (rows != 1)} x {weight:g} give none an epoch: raise its weight "
        f"above {0.5 / rows:.2g}, or leave it out of data_path"
        for (path, rows), (_, weight) in zip(datasets, weights)
        if rows and not mixed_rows(rows, weight)
    ]


def weights_as_shares(datasets: list[tuple[str, int]], weights: list[tuple[str, float]]) -> str | None:
    """Where data_weights read as shares of the mix (0.7,0.3: several, each under 1, summing to 1, as
    interleave_datasets' probabilities and LLaMA-Factory's interleave_probs are) and the datasets' sizes make the mix
    other shares: what the mix is, and the weights that give those shares without repeating a row. None otherwise."""
    given = [w for _, w in weights]
    rows = [n for _, n in datasets]
    if len(given) < 2 or max(given) >= 1 or abs(sum(given) - 1) > 1e-6 or not all(rows):
        return None
    taken = [mixed_rows(n, w) for n, w in zip(rows, given)]
    total = sum(taken) or 1
    if all(abs(t / total - w) < 0.02 for t, w in zip(taken, given)):
        return None  # datasets of one size: the shares they read as
    scale = max(w / n for w, n in zip(given, rows))
    meant = [w / n / scale for w, n in zip(given, rows)]
    mix = ", ".join(
        f"{path} {t:,} row{'s' * (t != 1)} ({100 * t / total:.0f}%)" for (path, _), t in zip(datasets, taken)
    )
    return (
        f"data_weights {','.join(f'{w:g}' for w in given)} sum to 1, but they are no shares of the mix: each is how "
        f"many times its dataset's rows train an epoch, so the mix is {mix}; for those shares, "
        f"-o data_weights={','.join(f'{w:.3g}' for w in meant)} (no row repeated)"
    )


def mixed_rows(rows: int, weight: float) -> int:
    """How many rows a dataset of ``rows`` gives an epoch at ``weight`` (mix): every row int(weight) times, then
    the fraction's share of them."""
    return int(weight) * rows + round(weight % 1 * rows)


def shared_rows(train, held_out) -> str | None:
    """A warning where held-out rows are training rows too (row_identity: the same file given twice, a
    directory without split names; eval_split never holds out a copy, _split_copies): their loss measures
    memorising, not how the model does on rows it never saw. Only the training rows of a held-out row's length
    are hashed."""
    held_out = all_held_out(held_out)
    if held_out is None or not len(held_out):
        return None
    held = _row_digests(held_out)
    seen = {digest for _, digest in _row_digests(train, {n for n, _ in held})}
    same = sum(digest in seen for _, digest in held)
    if not same:
        return None
    return (
        f"{same} of the {len(held_out)} held-out rows are training rows too (the same tokens): their loss measures "
        "memorising, not rows the model never saw; hold out other rows (a directory's test split, other files, or "
        "-o eval_split=, which keeps a row and its copies on one side)"
    )


def _copies(dataset) -> list[list[int]] | None:
    """The rows grouped by row_identity (a group holds a row and its copies), in order of first appearance; None
    where no row has a copy."""
    groups: dict[int, list[int]] = {}
    for i, (_, digest) in enumerate(_row_digests(dataset)):
        groups.setdefault(digest, []).append(i)
    return list(groups.values()) if len(groups) < len(dataset) else None


def _split_copies(copies: list[list[int]], held: int, seed: int) -> tuple[list[int], list[int]]:
    """(training rows, held-out rows): groups of copies drawn with ``seed`` into the held-out side while they fit
    in ``held`` rows, each group whole; the rest train."""
    import numpy as np

    order = np.random.default_rng(seed).permutation(len(copies))
    taken, count = [], 0
    for g in order:
        if count + len(copies[g]) <= held:
            taken.append(int(g))
            count += len(copies[g])
            if count == held:
                break
    out = set(taken)
    held_rows = sorted(i for g in taken for i in copies[g])
    train_rows = sorted(i for g, rows in enumerate(copies) if g not in out for i in rows)
    return train_rows, held_rows


def _nothing_held_out(spec, copies: list[list[int]], held: int) -> str:
    """Why eval_split held out no row (_split_copies: every row has more copies than it holds), and the fix: the
    eval_split that holds the fewest copies out (where some remain to train on), held-out data of its own, or none.
    Said before training, not as the Trainer's missing eval_loss at the first evaluation."""
    rows, fewest = sum(map(len, copies)), min(map(len, copies))
    why = (
        f"eval_split={spec.eval_split} holds out {held} of the {rows} rows of {spec.data_path}, but every row there "
        f"has copies (each is one of {fewest} or more alike) and a row goes to one side with its copies, so that no "
        "held-out row is a training row: none is held out to evaluate on"
    )
    other = "held-out data with --eval-data FILE, or train without evaluation: -o eval_split=0."
    larger = math.ceil(100 * fewest / rows) / 100  # holds out `fewest` rows
    if len(copies) > 1 and math.ceil(larger * rows) < rows:
        return f"{why}. Raise it to -o eval_split={larger:g}, give {other}"
    return f"{why}. Give {other}"


def _row_digests(dataset, lengths: set[int] | None = None) -> list[tuple[int, int]]:
    """(length, row_identity) of each row, or of the rows of these lengths, a batch at a time."""
    import numpy as np
    import pyarrow.compute as pc

    out = []
    for batch in dataset.with_format("arrow").iter(batch_size=4096):
        column = batch["input_ids"]
        counts = pc.list_value_length(column).to_numpy(zero_copy_only=False)
        rows = range(len(counts)) if lengths is None else np.flatnonzero(np.isin(counts, list(lengths)))
        for i in rows:
            ids = column[int(i)].values.to_numpy(zero_copy_only=False)
            out.append((int(counts[i]), row_identity(ids)))
    return out


def rows_digest(dataset) -> str:
    """A digest of the training rows as they train (each row's token ids and labels, in order): a checkpoint
    records it, so a resume on a file edited since is said (checkpoints.settings.edited_data). Hashes the arrow
    buffers a batch at a time: 20M tokens in 0.4 s on one core (tokenising them took minutes). The values are
    hashed as int32 whatever type the columns are kept in (a large_list's int64 lengths, other integer ids): a
    checkpoint's digest is the rows', so another ftctl keeping them otherwise does not say a resume's data was
    edited since (helper 296)."""
    import hashlib

    import numpy as np
    import pyarrow.compute as pc

    digest = hashlib.blake2b(digest_size=16)
    for batch in dataset.with_format("arrow").iter(batch_size=8192):
        for name in ("input_ids", "labels"):
            column = batch[name]
            for values in (pc.list_value_length(column), pc.list_flatten(column)):
                digest.update(np.asarray(values.to_numpy(zero_copy_only=False), dtype="<i4").tobytes())
    return digest.hexdigest()


def packing_supported(attn_implementation: str | None) -> bool:
    """Whether packed samples stay apart under this attention implementation (trainer/attention.py)."""
    from ftctl.trainer.attention import packing_supported as supported

    return supported(attn_implementation)


# A packed batch's length is padded to a multiple of this. Triton (Liger's kernels, TRL's LM head, ftctl's
# LoRA kernels) compiles a kernel again for an integer argument that is a multiple of 16 where the earlier
# calls' were not: a packed batch's token count varies, so the first batch whose count happened to be one
# paid every kernel's compilation in the middle of training (on an H200: a 0.1-0.3 s step, always at step
# 25 of bench/compare.py's rows, the first such batch of its data). Padded, every batch takes the same
# kernels from the first step on, for at most 15 padding tokens (of ~16k on a GPU).
PACK_MULTIPLE = 16


def too_few_sequences(sequences: int, global_batch: int, packed: bool, max_length: int) -> str | None:
    """A warning where the training data makes fewer sequences than one optimizer step's global batch: every step
    then trains on all of them, a smaller batch than asked (the Trainer steps at the end of each epoch)."""
    if sequences >= global_batch:
        return None
    what = f"packs into {sequences:,} sequences of up to {max_length:,} tokens" if packed else f"has {sequences:,} rows"
    return (
        f"the training data {what}, fewer than one step's global batch of {global_batch}: every step trains on all "
        "of them, a smaller batch than asked; lower -o global_batch_size, or give more data"
    )


def sft_dataset_config(packing: bool, max_length: int) -> dict:
    """SFTConfig keyword arguments that make SFTTrainer train on build_dataset's output as it is.

    Unpacked: dataset preparation is skipped, the collator pads and uses our labels. Packed: TRL only
    packs (best-fit decreasing, whole samples; ours are already truncated) and runs padding-free, so
    position ids restart per sample and attention stays within each sample; the flat row is padded to
    PACK_MULTIPLE tokens (TRL's padding: position 0 and label -100 each, so a padding token is a
    one-token sample that nothing attends to and that adds nothing to the loss)."""
    common = {"max_length": max_length, "assistant_only_loss": False, "completion_only_loss": None}
    if packing:
        return {
            **common,
            "packing": True,
            "packing_strategy": "bfd",
            "padding_free": True,
            "pad_to_multiple_of": PACK_MULTIPLE,
            "dataset_kwargs": {},
        }
    return {**common, "packing": False, "padding_free": False, "dataset_kwargs": {"skip_prepare_dataset": True}}


def packed_padding(batch: dict) -> int:
    """The padding tokens at the end of a padding-free packed batch (sft_dataset_config's PACK_MULTIPLE):
    the trailing run of position 0. A sample's last token has a later position, unless the sample is one
    token long: such a sample has no trainable token (its only label is -100) and counts as padding."""
    positions = batch["position_ids"][0].tolist()
    n = 0
    while n < len(positions) and positions[-1 - n] == 0:
        n += 1
    return n


def unpack_batch(batch: dict, pad_token_id: int) -> dict:
    """A padding-free packed batch (one row, ``cu_seq_lens_q`` boundaries) as the same samples in a
    padded batch of one row each, with an attention mask: the unpacked reference that packed
    training must match (tests, bench/compare.py). The packed batch's padding is left out."""
    import torch

    cu = batch["cu_seq_lens_q"].tolist()
    end = cu[-1] - packed_padding(batch)
    spans = [(lo, hi) for lo, hi in zip(cu[:-1], cu[1:]) if hi > lo and hi <= end]
    width = max(hi - lo for lo, hi in spans)
    ids = batch["input_ids"][0]
    out = {
        "input_ids": torch.full((len(spans), width), pad_token_id, dtype=ids.dtype),
        "labels": torch.full((len(spans), width), IGNORE_INDEX, dtype=batch["labels"].dtype),
        "attention_mask": torch.zeros((len(spans), width), dtype=torch.long),
    }
    for row, (lo, hi) in enumerate(spans):
        out["input_ids"][row, : hi - lo] = ids[lo:hi]
        out["labels"][row, : hi - lo] = batch["labels"][0, lo:hi]
        out["attention_mask"][row, : hi - lo] = 1
    return out
