"""``ftctl data check FILE --write-valid OUT``: the rows of one data file that have no errors, written to a new file.

A row written to OUT is the row as it was read, not rendered again: a JSON Lines file keeps its lines byte for byte,
a JSON list its elements' text (and the whitespace between them), a Parquet or Arrow file its records; the order is
the file's. Rows with errors are left out (``DataReport.bad_at``); rows only warned about (truncated, or left out by
the trainer for their length) stay, so OUT checks as the rest of FILE checked. OUT is a new local file with FILE's
suffix: it is written beside itself under a temporary name, then linked into place whole, never over a file.

One file only: several files (a directory, a pattern, a comma-separated list) would need one OUT each, so they are
refused, saying to run once a file. Object storage as OUT is refused too: write here, then copy it up.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import tempfile
from pathlib import Path

from ftctl import storage
from ftctl.errors import FtctlError
from ftctl.runpaths import current_umask
from ftctl.spec import split_paths

SUFFIXES = (".jsonl.gz", ".json.gz", ".jsonl", ".json", ".parquet", ".arrow")
_SPACE = re.compile(r"[ \t\n\r]*")  # JSON's whitespace


def out_problem(path: str, out: str, endpoint_url: str | None = None) -> str | None:
    """Why the rows of ``path`` cannot be written to ``out`` (said before the tokenizer loads); None where they can."""
    from ftctl.trainer.formats import file_name, resolve_files

    if len(split_paths(path)) > 1:
        return f"--write-valid writes the rows of one data file; {path} names several: run it once a file"
    if storage.scheme(out) not in ("", "file", "local"):
        return f"--write-valid {out}: give a local path, then copy the file to the store (e.g. aws s3 cp)"
    files = resolve_files(path, endpoint_url)
    if files != [path]:
        some = f"{file_name(files[0], path)}{', ...' * (len(files) > 1)}"
        return f"--write-valid writes the rows of one data file; {path} reads {len(files)} ({some}): give one file"
    suffix = _suffix(path)
    if _suffix(out) != suffix:
        return f"--write-valid {out}: name it as {path} is, ending in {suffix}, the format its rows are written in"
    if os.path.lexists(storage.local_path(out)):
        return f"--write-valid {out}: the file exists; give a new name (ftctl writes no file over another)"
    return None


def _suffix(name: str) -> str:
    return next((s for s in SUFFIXES if name.lower().endswith(s)), os.path.splitext(name)[1] or "(none)")


def write_valid(report, path: str, out: str, endpoint_url: str | None = None) -> tuple[int, int]:
    """Write the rows of the data file ``path`` that ``report`` (its check) found no error in to the new file ``out``:
    (rows written, rows left out). FtctlError, and nothing written, where no row is left, or the file's rows cannot
    be told apart as the check read them (a file that cannot be read, one that is CSV)."""
    with storage.storage_errors(path, endpoint_url), storage.open_file(path, "rb", endpoint_url) as f:
        raw = f.read()
    bad = {number for _, _, number in report.bad_at}
    suffix = _suffix(path)
    if suffix in (".parquet", ".arrow"):
        data, kept, total = _kept_table(raw, bad, suffix)
    else:
        data, kept, total = _kept_json(gzip.decompress(raw) if suffix.endswith(".gz") else raw, bad)
        data = gzip.compress(data, mtime=0) if suffix.endswith(".gz") else data
    if total != report.rows_read or (report.errors and not report.bad_at):
        raise FtctlError(
            f"The rows of {path} cannot be read one by one (the errors above): fix the file; nothing was written."
        )
    if not kept:
        raise FtctlError(f"Every row of {path} has errors (above): nothing to write; fix them.")
    _write_new(Path(storage.local_path(out)), data)
    return kept, total - kept


def _kept_json(raw: bytes, bad: set[int]) -> tuple[bytes, int, int]:
    """(the text of the rows not in ``bad``, how many, how many rows in all), laid out as ``raw`` is and as
    formats._records reads it: a JSON list (rows numbered by element), values one after another whose first is an
    object over several lines (numbered by value: pretty-printed rows, `jq .`'s), else JSON Lines (numbered by
    line)."""
    from codecs import BOM_UTF8

    from ftctl.trainer.formats import _first_line, _is_json

    bom = BOM_UTF8 if raw.startswith(BOM_UTF8) else b""
    raw = raw[len(bom) :]
    text = raw.decode("utf-8", errors="surrogateescape")
    stripped = text.lstrip()
    if stripped[:1] == "[" and (split := _elements(text)) is not None:
        head, parts, tail = split
        kept = [part for i, part in enumerate(parts, start=1) if i not in bad]
        return bom + (head + ",".join(kept) + tail).encode("utf-8", "surrogateescape"), len(kept), len(parts)
    if stripped[:1] == "{" and not _is_json(_first_line(raw)) and (split := _values(text)) is not None:
        parts, tail = split
        kept = [part for i, part in enumerate(parts, start=1) if i not in bad]
        return bom + ("".join(kept) + tail).encode("utf-8", "surrogateescape"), len(kept), len(parts)
    lines = [(n, line) for n, line in enumerate(raw.splitlines(keepends=True), start=1) if line.strip()]
    kept = [line if line.endswith((b"\n", b"\r")) else line + b"\n" for n, line in lines if n not in bad]
    return bom + b"".join(kept), len(kept), len(lines)


def _elements(text: str) -> tuple[str, list[str], str] | None:
    """A JSON list's text as (its "[" and what precedes it, each element with the whitespace before it, the
    whitespace and "]" after the last one and what follows); None where the text is no JSON list."""
    decoder = json.JSONDecoder()
    start = text.index("[") + 1  # where the next part begins (its whitespace first)
    head, parts = text[:start], []
    at = _SPACE.match(text, start).end()
    while not text.startswith("]", at):
        try:
            _, end = decoder.raw_decode(text, at)
        except ValueError:
            return None
        parts.append(text[start:end])
        start, at = end, _SPACE.match(text, end).end()
        if text.startswith(",", at):
            start = at + 1
            at = _SPACE.match(text, start).end()
        elif not text.startswith("]", at):
            return None
    return (head, parts, text[start:]) if not text[at + 1 :].strip() else None


def _values(text: str) -> tuple[list[str], str] | None:
    """JSON values one after another as (each value with the whitespace before it, the whitespace after the last);
    None where the text is not that."""
    decoder = json.JSONDecoder()
    start, parts = 0, []
    at = _SPACE.match(text).end()
    while at < len(text):
        try:
            _, end = decoder.raw_decode(text, at)
        except (ValueError, RecursionError):
            return None
        parts.append(text[start:end])
        start, at = end, _SPACE.match(text, end).end()
    return parts, text[start:]


def _kept_table(raw: bytes, bad: set[int], suffix: str) -> tuple[bytes, int, int]:
    """The rows not in ``bad`` of a Parquet file, or of an Arrow stream (a `datasets` save's), in its format."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(pa.BufferReader(raw)) if suffix == ".parquet" else pa.ipc.open_stream(raw).read_all()
    kept = table.take([i for i in range(table.num_rows) if i + 1 not in bad])
    sink = pa.BufferOutputStream()
    if suffix == ".parquet":
        pq.write_table(kept, sink)
    else:
        with pa.ipc.new_stream(sink, kept.schema) as writer:
            writer.write_table(kept)
    return sink.getvalue().to_pybytes(), kept.num_rows, table.num_rows


def _write_new(out: Path, data: bytes) -> None:
    """``data`` into the new file ``out``, whole or not at all: written beside it under a temporary name, then
    linked to its name, which fails where a file took that name meanwhile (never written over)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.fchmod(
        fd, 0o666 & ~current_umask()
    )  # as open() makes it: mkstemp's 0600 kept the rows from the group that shares them
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.link(tmp, out)
    except FileExistsError:
        raise FtctlError(f"{out} exists (written meanwhile): give a new name; nothing was written.") from None
    finally:
        os.unlink(tmp)
