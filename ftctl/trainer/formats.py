"""Training data files -> rows of chat messages.

Reads .json and .jsonl files (a list of rows, JSON Lines, or rows over several lines one after another, as `jq .`
writes them, under either name, gzipped too; UTF-8: a line that is not is a problem, and so is, once, a file that is
CSV), .parquet files and the
.arrow files of a `datasets` save_to_disk directory, local or on object storage (through :mod:`ftctl.storage`: s3://,
gs://, az://, file://), a directory of such files, or ``builtin:demo`` (the bundled demo dataset). Every row becomes a :class:`Row`: a list of messages ``{"role": "system"|"user"|"assistant",
"content": str}``, or plain text (trained on entirely).

Accepted row formats (detected per row):
- Vicuna/ShareGPT: ``{"conversations": [{"from": "human"|"gpt"|"system", "value": str}, ...]}``;
  the roles FastChat accepts are mapped (human/user -> user; gpt/assistant/chatgpt/bing/bard ->
  assistant). LLaMA-Factory's tool use: a ``function_call`` turn (its value the call's JSON, ``{"name": ...,
  "arguments": {...}}``, or a list of them, after the turn's text or in ``<tool_call>`` tags) is an assistant turn
  of ``tool_calls`` (and that text), an ``observation`` turn a ``tool`` turn (named after the call it answers, where
  that is one), and the row's ``tools`` (a list of schemas, or its JSON) the tools, each bare schema wrapped as
  ``{"type": "function", "function": schema}``, as LLaMA-Factory's tool formatters write them: the same
  conversation as the OpenAI-style row below. A file that LLaMA-Factory's dataset_info.json beside it names is
  read as its entry says (its columns and tags renamed to these; `ftctl data check` names the entry and the renames).
- OpenAI-style: ``{"messages": [{"role": "system"|"user"|"assistant"|"tool", "content": str}, ...]}``
  (content may also be a list of ``{"type": "text", "text": ...}`` parts, joined by line breaks). Tool use as TRL and transformers'
  chat templates take it: an assistant turn's ``tool_calls`` (its content may then be empty; ``arguments`` as
  OpenAI's JSON string or an object, given to the template as an object), ``tool`` turns
  with the results (context, never trained), and the row's ``tools`` (function schemas, a list or its JSON)
  rendered by the template. A call without an ``id`` gets one, and a result without a ``tool_call_id`` its call's,
  as Mistral's templates need them (which also refuse ids of other than 9 letters and digits: short_call_ids). An assistant turn's ``weight`` (OpenAI's fine-tuning format): 0 leaves it out of
  the loss (context, as a user turn is), 1 (or none) trains it; ``training``, ``train`` or ``loss`` (axolotl's
  message_field_training, ms-swift's) false does the same, true trains it.
- Alpaca: ``{"instruction": str, "input": str (optional), "output": str}`` -> user, assistant; LLaMA-Factory's
  ``history`` ([[question, answer], ...]) as the turns before them, trained.
- Plain text: ``{"text": str}``: no roles, the loss covers every token.
- axolotl's template-free input_output: ``{"segments": [{"label": bool, "text": str}, ...]}`` -> their text joined
  as written (no chat template, bos or eos added), the loss on the segments labelled true.
- Prompt-completion (TRL's): ``{"prompt": str, "completion": str}`` -> their text joined, bos and eos as for
  plain text, the loss on the completion and eos; or ``{"prompt": [messages], "completion": [messages]}``
  (role/content turns) -> one conversation, the loss on the completion's assistant turns only, as TRL's
  SFTTrainer does (completion_only_loss).
Another trainer's rows are refused, saying how to make SFT rows of them: preference rows (chosen/rejected), KTO's
undesirable ones (label false) and prompts without a completion: SFT would learn what they hold not to imitate.

A conversation's assistant turns before its first user turn are left out (FastChat's train script drops a
leading non-human turn the same way; the :class:`Row` counts them in ``dropped``); prompt-completion rows are
kept as given.

Problems are collected, not raised: each :class:`Row` carries its ``problems`` (messages that
name the fix); the caller reports them all with file and row number.
"""

from __future__ import annotations

import codecs
import glob
import gzip
import hashlib
import itertools
import json
import marshal
import pickle
import posixpath
import re
import string
import zlib
from array import array
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ftctl import storage
from ftctl.errors import FtctlError, did_you_mean
from ftctl.spec import near_file
from ftctl.tool_datasets import LF_INFO, TRAIN_FLAGS
from ftctl.trainer.splits import KINDS, is_data_file, split_files

# FastChat's ShareGPT role names (fastchat/train/train.py and its data cleaning scripts).
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "system": "system",
    # LLaMA-Factory's tool roles (its default function_tag and observation_tag); "tool" as its OpenAI format names
    # the result
    "function_call": "assistant",
    "observation": "tool",
    "tool": "tool",
}
# developer: OpenAI's newer name for the system role (its o-series models' chat format)
OPENAI_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}
# read in either format, not offered in an unknown role's list: Gemma's and Gemini's name for the assistant (Gemma's
# chat template writes the assistant's turns as model's)
# Gemma's answers, Llama 3.1's tool results, OpenAI's older function results (function_call's answers)
MORE_ROLES = {"model": "assistant", "ipython": "tool", "function": "tool"}
# what an OpenAI-style turn carries beside role and content, for the chat template (tool use)
TOOL_KEYS = ("tool_calls", "tool_call_id", "name")
# an assistant turn's reasoning beside its content, as chat templates read it: reasoning_content (Qwen3's, DeepSeek's,
# vLLM's and TRL's reasoning datasets), thinking (gpt-oss's), reasoning; given to the template, which writes it in
# the turn (<think>...</think>), trained with the answer (data.py refuses it where the template drops it)
REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")

FORMAT_HINT = (
    "expected 'conversations' (ShareGPT: from/value turns), 'messages' (OpenAI: role/content turns), "
    "'instruction' + 'output' (Alpaca), 'prompt' + 'completion' (TRL's prompt-completion) or 'text' (plain text)"
)


@dataclass
class Row:
    """One training example with where it came from."""

    where: str  # "data.jsonl line 7", "data.json row 3 (id 'abc')"
    format: str  # sharegpt | openai | alpaca | text | prompt-completion | unknown
    messages: list[dict] = field(default_factory=list)
    text: str | None = None  # plain text rows only
    problems: list[str] = field(default_factory=list)
    # prompt-completion rows: where the completion starts (a character of text, an index of messages); the loss
    # covers only what follows
    completion_at: int = 0
    tools: list | None = None  # the functions a tool-use conversation's template renders
    # axolotl's input_output rows: the characters of text trained (its segments labelled true), the text tokenized as
    # written, no bos or eos added
    spans: list[tuple[int, int]] | None = None
    source: int = 0  # which dataset of several (data_path's order) the row is from
    dropped: int = 0  # assistant turns before the first user turn, left out
    # (file name, "line" | "row", number) that ``where`` says; None for a whole file (one that cannot be read)
    at: tuple[str, str, int] | None = None


# rows packed into one bytes object (Rows): a few MB of conversations, so a slice of them reads few of them
PACKED_ROWS = 1024


class Rows(Sequence):
    """The rows load_rows read, in order, held packed: each :class:`Row`'s fields marshalled into bytes (its text
    once, as UTF-8), PACKED_ROWS of them compressed together (zlib's fastest level: text a third or less), a Row again
    where it is read (``rows[i]``, ``rows[lo:hi]``, iterating: fast in order, a blob uncompressed at a time). As Python
    objects the rows were ~2x the file (300k conversations, 856 MB of JSON Lines: 1.3-1.9 GB) while they were
    tokenized; a forked tokenizing process reads its share of the bytes without touching (copying) the others' pages. What the reading found of them all is kept beside them: ``problems`` (the
    rows with problems of their own), ``conversations`` (rows without problems a chat template renders) and
    ``reasoning`` (REASONING_KEYS their assistant turns give). ``amend``: a function each row read back passes through
    (data.py's refusal of reasoning the template drops: a problem added to a row, as the row is read)."""

    def __init__(self):
        self._blobs: list[bytes] = []
        self._ends: list[array] = []  # each blob's rows' end offsets in it
        self._firsts = array("q")  # each blob's first row's number
        self._pending: list[bytes] = []
        self._count = 0
        self._read: tuple[int, bytes] = (-1, b"")  # the blob last read, uncompressed
        self.problems = array("q")
        self.conversations = 0
        self.reasoning: set[str] = set()
        self.amend = None
        self._marked: tuple[int, int, set[str]] | None = None

    def append(self, row: Row) -> None:
        fields = (row.where, row.format, row.messages, row.text, row.problems, row.completion_at, row.tools)
        fields += (row.spans, row.source, row.dropped, row.at)
        try:
            packed = marshal.dumps(fields)
        except ValueError:  # a value marshal does not write (a Parquet row's timestamp in its tools): pickled
            packed = pickle.dumps(fields, protocol=pickle.HIGHEST_PROTOCOL)  # starts 0x80, which no marshal does
        if row.problems:
            self.problems.append(self._count)
        elif row.text is None:
            self.conversations += 1
            self.reasoning.update(k for m in row.messages for k in REASONING_KEYS if k in m)
        self._pending.append(packed)
        self._count += 1
        if len(self._pending) >= PACKED_ROWS:
            self._pack()

    def _pack(self) -> None:
        if not self._pending:
            return
        ends = array("q", [0])
        for packed in self._pending:
            ends.append(ends[-1] + len(packed))
        self._firsts.append(self._count - len(self._pending))
        self._blobs.append(zlib.compress(b"".join(self._pending), 1))
        self._ends.append(ends)
        self._pending = []

    def mark(self) -> int:
        """Where the next file's rows start (load_rows): truncate(mark) takes them back, and what they counted."""
        self._marked = (self._count, self.conversations, set(self.reasoning))
        return self._count

    def truncate(self, count: int) -> None:
        """Keep the first ``count`` rows (load_rows: a file that fails after some of its rows were read), and the
        conversations and reasoning keys those counted (from mark(); a failed file's conversations set a chat
        template's note and a tokenizer's template where no conversation trained: review 60)."""
        if self._marked is not None and self._marked[0] == count:
            self.conversations, self.reasoning = self._marked[1], set(self._marked[2])
        else:  # not at a mark: the conversations dropped counted off, one by one
            self.conversations -= sum(1 for row in self[count:] if not row.problems and row.text is None)
        self._pack()
        while self._firsts and self._firsts[-1] >= count:
            self._firsts.pop()
            self._blobs.pop()
            self._ends.pop()
        if self._blobs and (keep := count - self._firsts[-1]) < len(self._ends[-1]) - 1:
            self._blobs[-1] = zlib.compress(self._blob(len(self._blobs) - 1)[: self._ends[-1][keep]], 1)
            self._ends[-1] = self._ends[-1][: keep + 1]
        self._read = (-1, b"")
        self._count = min(self._count, count)
        while self.problems and self.problems[-1] >= count:
            self.problems.pop()

    def __len__(self) -> int:
        return self._count

    def _blob(self, blob: int) -> bytes:
        """A blob's rows' bytes, the last one read kept (rows are read in order, a chunk at a time)."""
        if self._read[0] != blob:
            self._read = (blob, zlib.decompress(self._blobs[blob]))
        return self._read[1]

    def _row(self, blob: int, k: int) -> Row:
        ends = self._ends[blob]
        packed = memoryview(self._blob(blob))[ends[k] : ends[k + 1]]
        row = Row(*(pickle.loads(packed) if packed[0] == 0x80 else marshal.loads(packed)))
        return self.amend(row) if self.amend else row

    def _rows(self, lo: int, hi: int) -> Iterator[Row]:
        self._pack()
        blob = max(0, bisect_right(self._firsts, lo) - 1)
        while lo < hi:
            first = self._firsts[blob]
            last = min(hi, first + len(self._ends[blob]) - 1)
            for i in range(lo, last):
                yield self._row(blob, i - first)
            lo, blob = last, blob + 1

    def __getitem__(self, at):
        if isinstance(at, slice):
            lo, hi, step = at.indices(self._count)
            if step != 1:
                return list(self)[at]
            return list(self._rows(lo, max(lo, hi)))
        if at < 0:
            at += self._count
        if not 0 <= at < self._count:
            raise IndexError("row index out of range")
        return next(self._rows(at, at + 1))

    def __iter__(self) -> Iterator[Row]:
        return self._rows(0, self._count)


# --------------------------------------------------------------------------------------------
# Files


def resolve_files(path: str, endpoint_url: str | None = None, quick: bool = False, held_out: bool = False) -> list[str]:
    """The data files that ``path`` names: a file, a directory (its .json/.jsonl/.parquet files,
    recursively, sorted; of one that holds several splits, one: ``splits.split_files``, ``held_out`` for held-out
    data), a glob pattern (``hf://datasets/ORG/NAME/data/train-*.parquet``: one split of a Hub
    dataset; ``hf://datasets/ORG/NAME``, the repository whole, is a directory) or ``builtin:demo``. Raises
    FtctlError when there are none, or when the store cannot be read (one line: which failure, what to set).
    ``quick``: see :func:`ftctl.storage.filesystem` (the preflight)."""
    from ftctl.demo import BUILTIN_DEMO, demo_data_path

    if path.startswith("builtin:"):
        if path != BUILTIN_DEMO:
            raise FtctlError(f"Unknown built-in dataset {path!r}: the only one is {BUILTIN_DEMO!r}.")
        return [str(demo_data_path())]

    with storage.storage_errors(path, endpoint_url):
        fs, root = storage.filesystem(path, endpoint_url, quick=quick)
        if glob.has_magic(root) and not fs.exists(root):  # a file may be called data[1].json
            return _matching(fs, path, root, endpoint_url, quick)
        try:
            is_dir = fs.isdir(root)
            exists = is_dir or fs.exists(root)
        except (PermissionError, OSError) as e:
            if storage.store_error(e, path, endpoint_url):
                raise
            raise FtctlError(f"Cannot read the data at {path}: {e}. Check the path and your credentials.") from e
        if not exists:
            if not storage.bucket_exists(path, endpoint_url, quick=quick):
                raise storage.storage_error("no-bucket", path, endpoint_url)
            if elsewhere := storage.not_on_this_node(path):  # a Slurm node: the path may be the login node's
                raise FtctlError(f"No data at {path}: {elsewhere}")
            if weighed := _weight_after(path, fs):
                raise FtctlError(weighed)
            if near := near_file(path, lambda p: p.is_dir() or is_data_file(p.name)):
                raise FtctlError(f"No data at {path}. Did you mean {near!r}?")
            raise FtctlError(
                f"No data at {path}: give a {KINDS} file, a directory of them, a pattern "
                f"(data/*.jsonl) or builtin:demo.{_hub_hint(path)}"
            )
        info = posixpath.join(root.rstrip("/"), LF_INFO) if is_dir else root
        if posixpath.basename(info) == LF_INFO and (entries := _llama_factory_entries(fs, info)):
            raise _llama_factory_directory(path if is_dir else posixpath.dirname(path) or ".", entries, held_out)
        if not is_dir:
            if root.lower().endswith((".csv", ".tsv")):
                what, sep = ("TSV", "\t") if root.lower().endswith(".tsv") else ("CSV", ",")
                how = _convert(path, sep)
                raise FtctlError(f"Cannot read {path}: ftctl reads {KINDS} files, not {what}; {how}")
            if not is_data_file(root):
                raise FtctlError(f"Cannot read {path}: data files must end in {KINDS}.")
            return [path]
        found = split_files(fs, path, root, held_out)
    if not found:
        raise FtctlError(f"The directory {path} holds no {KINDS} files.")
    # named as the user spelled the directory, so that rows are reported relative to it
    top = root.rstrip("/")
    return [storage.join(path, *posixpath.relpath(p, top).split("/")) for p in found]


def _weight_after(path: str, fs) -> str | None:
    """Where ``path`` is a dataset with a weight after it (``chats.jsonl:0.5``, ``code.jsonl*2``, other tools'
    spellings of a mix) and the dataset is there: how ftctl takes the weight."""
    found = re.fullmatch(r"(.+?)\s*[:*@#]\s*(\d+(?:\.\d*)?|\.\d+)", path)
    if not found or storage.scheme(path) not in ("", "file") or not fs.exists(storage.filesystem(found[1])[1]):
        return None
    return (
        f"No data at {path}: a dataset's weight is data_weights, one a dataset in data_path's order: --data "
        f"{found[1]} ... -o data_weights={found[2]},... (each dataset's rows that many times an epoch; in a run file "
        f"data_path: {{{found[1]}: {found[2]}, ...}})"
    )


def _matching(fs, path: str, root: str, endpoint_url: str | None, quick: bool) -> list[str]:
    """The data files a glob pattern matches, named as the user spelled the pattern's directory."""
    try:
        found = sorted(p for p in fs.glob(root) if is_data_file(p))
    except FileNotFoundError:  # the Hub's answer for a repository it does not show
        found = []
    if not found:
        if not storage.bucket_exists(path, endpoint_url, quick=quick):
            raise storage.storage_error("no-bucket", path, endpoint_url)
        raise FtctlError(f"No {KINDS} file matches {path}.")
    spelled, stored = path.split("/"), root.split("/")
    first = next(i for i, part in enumerate(spelled) if glob.has_magic(part))
    depth = len(stored) - (len(spelled) - first)  # the same directory, in the filesystem's terms
    top, base = "/".join(stored[:depth]), "/".join(spelled[:first])
    return [storage.join(base, *posixpath.relpath(p, top).split("/")) for p in found]


def _hub_hint(path: str) -> str:
    """For ``ORG/NAME`` that is no local path (nor a file name, nor in a directory here): how to name a Hub
    dataset's files."""
    if storage.scheme(path) or not re.fullmatch(r"[\w.-]+/[\w.-]+", path) or is_data_file(path):
        return ""
    if storage.looks_like_path(path):
        return ""
    return (
        f" If {path} is a dataset on the Hugging Face Hub: hf://datasets/{path} (its train split; held-out data its "
        f"test split), or its files, e.g. hf://datasets/{path}/data/train-*.parquet."
    )


def _records(file: str, name: str, endpoint_url: str | None) -> Iterator[tuple[str, int, Any]]:
    """("line" | "row", its number, record) for every record of one file; what cannot be read yields a
    ParseError for the record."""
    kind = file.lower()
    with storage.storage_errors(file, endpoint_url), storage.open_file(file, "rb", endpoint_url) as f:
        if kind.endswith((".parquet", ".arrow")):  # a batch of records at a time
            import pyarrow as pa
            import pyarrow.parquet as pq

            batches = (
                pq.ParquetFile(f).iter_batches(PACKED_ROWS) if kind.endswith(".parquet") else pa.ipc.open_stream(f)
            )
            i = 0
            for batch in batches:
                for record in batch.to_pylist():
                    i += 1
                    yield "row", i, _columnar_calls(record)
            return
        blocks = _blocks(gzip.GzipFile(fileobj=f, mode="rb") if kind.endswith(".gz") else f)
        start = _start(blocks)
        if start.removeprefix(codecs.BOM_UTF8).lstrip()[:1] == b"[":  # a JSON list: a row at a time, not the file
            if kind.endswith((".json", ".json.gz")):
                yield from _json_list(start.removeprefix(codecs.BOM_UTF8), blocks, name)
                return
            # another name's (.jsonl): where it is not one list, JSON Lines (the file read again from its start)
            for unit, number, record in _json_list(start.removeprefix(codecs.BOM_UTF8), blocks, name):
                if isinstance(record, _ParseError) and record.whole_file:
                    with storage.open_file(file, "rb", endpoint_url) as again:
                        blocks = _blocks(gzip.GzipFile(fileobj=again, mode="rb") if kind.endswith(".gz") else again)
                        head = _head(blocks).removeprefix(codecs.BOM_UTF8)
                        if not record.not_utf8 and not _is_json(_first_line(head)):
                            yield unit, number, record  # a list that does not parse
                            return
                        yield "line", 0, _AGAIN
                        lines = _stream_lines(_whole_line_ends(_chained(head, blocks)))
                        yield from _json_lines_of(lines, name, checked=True)
                    return
                yield unit, number, record
            return
        head = _head(itertools.chain([start], blocks)).removeprefix(codecs.BOM_UTF8)  # not closing blocks
        first = _first_line(head)
        if first[:1] == b"{" and not _is_json(first):  # JSON over several lines: a value at a time, not the file
            for unit, number, record in _json_list(head, blocks, name, listed=False):
                if isinstance(record, _ParseError) and record.first_value:
                    yield from _not_values((unit, number, record), _file_lines(file, kind, endpoint_url), name)
                    return
                yield unit, number, record
            return
        lines = _stream_lines(_whole_line_ends(_chained(head, blocks)))  # a block at a time, not the file
        for unit, number, record in _json_lines_of(lines, name, checked=True):
            yield unit, number, record


def _columnar_calls(record: Any) -> Any:
    """A Parquet/Arrow record whose tool calls' ``arguments`` are objects without the null arguments Arrow gave
    them: it stores every row's arguments as one struct type, each call given every argument any row's call has,
    null where its own has none, which trained (``{"city": "Paris", "query": null}``: the model taught to write other
    functions' arguments as null). JSON text arguments, and any in JSON files, are as written. The turns: messages
    (conversations), or a conversational prompt-completion row's prompt and completion."""
    keys = ("messages", "conversations", "prompt", "completion")
    lists = [record.get(k) for k in keys] if isinstance(record, dict) else []
    turns = [t for turns in lists if isinstance(turns, list) for t in turns]
    for turn in turns:
        for call in (turn.get("tool_calls") if isinstance(turn, dict) else None) or ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict) and isinstance(function.get("arguments"), dict):
                function["arguments"] = _no_nulls(function["arguments"])
    return record


# bytes a JSON Lines file is read in (_records): its lines parsed as they come, the file never held whole (856 MB of
# JSON Lines were held while all their rows were read)
READ_BLOCK = 8 * 2**20


def _blocks(f) -> Iterator[bytes]:
    while block := f.read(READ_BLOCK):
        yield block


def _start(blocks: Iterator[bytes]) -> bytes:
    """The blocks from the start that hold its first byte after a BOM and blank (3 bytes at least), or all."""
    start = b""
    for block in blocks:
        start += block
        if len(start) >= 3 and start.removeprefix(codecs.BOM_UTF8).lstrip():
            break
    return start


#: characters past the point a JSON element is decided at (_json_list) that the decision may look at (a \\uXXXX escape's
#: pair, a number's digits, Infinity): where fewer are read yet, more are read first and it is decided again
JSON_LOOKAHEAD = 64
_JSON_SPACE = re.compile(r"[ \t\n\r]*")  # JSON's whitespace, as json.loads skips it


class _NotUtf8(Exception):
    pass


def _json_list(start: bytes, blocks: Iterator[bytes], name: str, listed: bool = True) -> Iterator[tuple[str, int, Any]]:
    """_records of a .json file that is one JSON list (ShareGPT's, FastChat's), an element at a time as its blocks
    are read (json.loads of the whole file held its text and every row as Python objects at once, ~3-4x the file: a
    670 MB list was 2-3 GB). The same rows as json.loads of it whole, and where that fails, the same one problem
    (whole_file: load_rows drops the rows read before it): the first byte that is not UTF-8 anywhere in the file, else
    the first JSON error (its line and column in the file), else a row nested too deep.

    ``listed`` False: a file of JSON values one after another, not in a list, whose first is an object over several
    lines: one pretty-printed row, or several (`jq . rows.jsonl`'s output, which `datasets`' json loader reads as rows
    too, where the file fits its 10 MB chunk), each a row, a value at a time (read whole, the file and its text were
    held at once: 4.7x the file; several such objects were refused a line each, as broken JSON Lines). Where its first
    value does not parse, the problem is first_value (_not_values says whether the file is JSON Lines instead)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    parse = json.JSONDecoder().raw_decode
    buf = ""  # the text from character `base` of the file on
    base, base_lines, last_nl = 0, 0, -1  # the characters dropped before buf: how many, their \n, the last one's place
    fed, fed_lines, fed_nl = 0, 0, -1  # the same of the bytes decoded
    chunks = itertools.chain([start], blocks)
    eof = False

    def more(keep: bool = True) -> None:
        nonlocal buf, fed, fed_lines, fed_nl, eof
        block = next(chunks, None)
        pending = decoder.getstate()[0]
        try:
            text = decoder.decode(block or b"", final=block is None)
        except UnicodeDecodeError as e:
            data = pending + (block or b"")
            at = fed - len(pending) + e.start
            cut = max(0, e.start - len(pending))  # the block's bytes before it (pending holds no \n)
            nl = (block or b"").rfind(b"\n", 0, cut)
            line, line_start = (
                fed_lines + (block or b"").count(b"\n", 0, cut) + 1,
                fed + nl + 1 if nl >= 0 else fed_nl + 1,
            )
            raise _NotUtf8(line, bytes([data[e.start]]), at - line_start + 1) from None
        if block is None:
            eof = True
            return
        if (nl := block.rfind(b"\n")) >= 0:
            fed_lines, fed_nl = fed_lines + block.count(b"\n"), fed + nl
        fed += len(block)
        if keep:
            buf += text

    def ahead(at: int) -> None:  # JSON_LOOKAHEAD characters read past `at`, or the whole file
        while not eof and at + JSON_LOOKAHEAD > len(buf):
            more()

    def space(at: int) -> int:  # the end of the whitespace at `at`, with JSON_LOOKAHEAD characters read past it
        while True:
            end = _JSON_SPACE.match(buf, at).end()
            if eof or end + JSON_LOOKAHEAD <= len(buf):
                return end
            more()

    def drop(at: int) -> None:  # the text before buf[at] not held any more
        nonlocal buf, base, base_lines, last_nl
        if (nl := buf.rfind("\n", 0, at)) >= 0:
            base_lines, last_nl = base_lines + buf.count("\n", 0, at), base + nl
        buf, base = buf[at:], base + at

    def failed(at: int, first: bool) -> tuple[str, int, Any]:
        """The problem of the file whose first JSON error is past buf[at] (the list's start, else the comma before
        the element that fails): json.loads's of the text from there on (as the element after a list's first)."""
        while not eof:  # a byte that is not UTF-8 after it: that problem instead, as json.loads of the whole said
            more(keep=False)
        prefix = "" if first else "[0"
        try:
            json.loads(prefix + buf[at:])
        except json.JSONDecodeError as e:
            return failed_at(at + e.pos - len(prefix), e.msg)  # in buf
        except RecursionError:
            pass
        return "line", 1, _ParseError(TOO_DEEP, whole_file=True)

    def failed_at(pos: int, why: str | None) -> tuple[str, int, Any]:
        """The problem of the file whose first JSON error is at buf[pos] (``why``: json's message; None: nested too
        deep), once the rest is read for a byte that is not UTF-8 (that problem instead, as json.loads said)."""
        while not eof:
            more(keep=False)
        nl = buf.rfind("\n", 0, pos)
        line = base_lines + buf.count("\n", 0, pos) + 1
        column = pos - nl if nl >= 0 else base + pos - last_nl
        said = TOO_DEEP if why is None else f"invalid JSON: {why} (column {column})"
        return "line", line, _ParseError(said, whole_file=True, first_value=not listed and i == 0)

    def grow(at: int) -> None:  # more read, as much again as buf holds from `at` on (a value read whole in linear time)
        target = 2 * len(buf) - at
        more()
        while not eof and len(buf) < target:
            more()

    def values() -> Iterator[tuple[str, int, Any]]:  # not listed: JSON values one after another, each a record
        nonlocal i
        ahead(0)
        p = space(0)
        while p < len(buf):
            try:
                record, end = parse(buf, p)
            except json.JSONDecodeError as e:
                if not eof and (e.msg.startswith("Unterminated string") or e.pos + JSON_LOOKAHEAD > len(buf)):
                    grow(p)  # the value is not all read yet
                    continue
                yield failed_at(e.pos, e.msg)
                return
            except RecursionError:
                yield failed_at(p, None)
                return
            if not eof and end + JSON_LOOKAHEAD > len(buf):  # a number may go on
                more()
                continue
            if _LONE_SURROGATE_TEXT.search(buf, p, end):  # JSON's \ud83c alone: the tokenizer cannot encode it
                record = _surrogate_problem(record) or record
            p = space(end)
            if p > len(buf) // 2:  # the text of the values read: not held (nor while the row is packed)
                drop(p)
                p = 0
            i += 1
            yield "row", i, record

    i = 0  # the values read
    try:
        if not listed:
            yield from values()
            return
        at, first = 0, True  # at: the list's start, then the comma before the element read
        ahead(0)
        p = space(0)
        if buf[p : p + 1] != "[":  # a form feed before it (bytes.lstrip() strips it, JSON does not)
            yield failed(at, first)
            return
        p = space(p + 1)
        if buf[p : p + 1] != "]":
            while True:
                try:
                    record, end = parse(buf, p)
                except json.JSONDecodeError as e:
                    if not eof and (e.msg.startswith("Unterminated string") or e.pos + JSON_LOOKAHEAD > len(buf)):
                        more()  # the element is not all read yet
                        continue
                    yield failed(at, first)
                    return
                except RecursionError:
                    yield failed(at, first)
                    return
                if not eof and end + JSON_LOOKAHEAD > len(buf):  # a number may go on
                    more()
                    continue
                q = space(end)
                if buf[q : q + 1] not in (",", "]"):
                    yield failed(at, first)
                    return
                if _LONE_SURROGATE_TEXT.search(buf, p, end):  # JSON's \ud83c alone: the tokenizer cannot encode it
                    record = _surrogate_problem(record) or record
                i += 1
                yield "row", i, record
                if buf[q] == "]":
                    p = q
                    break
                at, first = q, False
                if at > len(buf) // 2:  # the text read before the comma: not held
                    drop(at)
                    at = 0
                p = space(at + 1)
        if space(p + 1) < len(buf):  # not only whitespace after the list
            yield failed(at, first)
    except _NotUtf8 as e:
        line, byte, column = e.args
        problem = _ParseError(_not_utf8(byte, 0, 1 - column, name), whole_file=True, not_utf8=True)
        problem.first_value = not listed and i == 0
        yield "line", line, problem


def _not_values(problem: tuple[str, int, Any], lines: Iterator[bytes], name: str) -> Iterator[tuple[str, int, Any]]:
    """_records of a file whose first line is part of an object (JSON over several lines) that does not parse
    (``problem``: its first error, or its first byte that is not UTF-8, as _records yields it): JSON Lines whose first
    line is broken, a line each (``lines``: the file's, read again), where its next line is JSON (as the file was read
    before); else that one problem, not one a line of a pretty-printed object (``  "messages": [`` is no row)."""
    read: list[bytes] = []  # up to its second line that is not blank
    filled: list[bytes] = []
    for line in lines:
        read.append(line)
        if line.strip():
            filled.append(line)
            if len(filled) == 2:
                break
    if len(filled) == 2 and not _is_json(filled[1]):
        yield problem
        return
    yield from _json_lines_of(itertools.chain(read, lines), name, checked=True)


def _file_lines(file: str, kind: str, endpoint_url: str | None) -> Iterator[bytes]:
    """The lines of ``file`` read again from its start (its BOM left out), a block at a time."""
    with storage.open_file(file, "rb", endpoint_url) as f:
        blocks = _blocks(gzip.GzipFile(fileobj=f, mode="rb") if kind.endswith(".gz") else f)
        head = _head(blocks).removeprefix(codecs.BOM_UTF8)
        yield from _stream_lines(_whole_line_ends(_chained(head, blocks)))


def _head(blocks: Iterator[bytes]) -> bytes:
    """The blocks from the start that hold the file's first line whole (its end after the leading blank), or all.
    Each block is searched once, and joined once: a file of one long line (a 207 MB JSON written by json.dump) was
    joined and searched again from its start at every block, in time the square of its size (review 60)."""
    parts: list[bytes] = []
    past_blank = False  # the leading blank ended in a block read: any line end after it ends the first line
    for block in blocks:
        parts.append(block)
        if past_blank:
            if _LINE_END.search(block):
                break
            continue
        text = b"".join(parts).removeprefix(codecs.BOM_UTF8)  # only while all read so far is blank (or a BOM)
        end = _LEADING_SPACE.match(text).end()
        if end < len(text):
            past_blank = True
            if _LINE_END.search(text, end):
                break
    return b"".join(parts)


def _chained(head: bytes, blocks: Iterable[bytes]) -> Iterator[bytes]:
    yield head
    yield from blocks


def _whole_line_ends(blocks: Iterable[bytes]) -> Iterator[bytes]:
    """``blocks`` with a \r that ends one moved to the start of the next: a \r\n cut between two blocks is one line
    end (_stream_lines), as bytes.splitlines() reads it."""
    held = b""
    for block in blocks:
        block = held + block if held else block
        held = b""
        if block.endswith(b"\r"):
            block, held = block[:-1], b"\r"
        if block:
            yield block
    if held:
        yield held


def _stream_lines(blocks: Iterable[bytes]) -> Iterator[bytes]:
    """The lines of ``blocks`` (none ending in \r: _whole_line_ends) as ``b"".join(blocks).splitlines()`` gives them,
    a line at a time."""
    parts: list[bytes] = []  # the current line's start, in the blocks before
    for block in blocks:
        start = 0
        for end in _LINE_END.finditer(block):
            if parts:
                parts.append(block[start : end.start()])
                yield b"".join(parts)
                parts = []
            else:
                yield block[start : end.start()]
            start = end.end()
        if start < len(block):
            parts.append(block[start:])
    if parts:
        yield b"".join(parts)


# a UTF-16 surrogate escape without its other half (an emoji cut in two where the data was written): JSON parses it
# into a str no UTF-8 encoder (the tokenizer's) takes
_LONE_SURROGATE = re.compile(
    rb"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F])|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F]"
)
_LONE_SURROGATE_TEXT = re.compile(_LONE_SURROGATE.pattern.decode())  # the same in a str


def _surrogate_problem(record: Any) -> _ParseError | None:
    """The problem of a record that holds half of a UTF-16 surrogate pair (None if it holds none: _LONE_SURROGATE
    also matches an escaped backslash written before 'ud83c')."""
    if isinstance(record, _ParseError):
        return None
    try:
        json.dumps(record, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as e:
        return _ParseError(
            f"not Unicode text (\\u{ord(e.object[e.start]):04x}): half of a UTF-16 surrogate pair (a character such "
            "as an emoji cut in two where the data was written), which no tokenizer encodes; remove it from the row, "
            "or leave the row out"
        )
    return None


#: a row nested deeper than Python's JSON reader recurses (about a thousand [ or { levels; a downloaded file's row can
#: be 100,000): was a RecursionError's traceback, the whole check ended
TOO_DEEP = "nested too deep to read (about a thousand [ or { levels or more): no row of a format is; leave it out"


def _json_records(raw: bytes, kind: str, name: str) -> Iterator[tuple[str, int, Any]]:
    """_records of a JSON or JSON Lines file's bytes."""
    if raw.lstrip()[:1] == b"[":  # a JSON list of rows: a .json file's, or a .jsonl file that holds one
        records = None
        try:
            records = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            if kind.endswith((".json", ".json.gz")):
                line, start = raw.count(b"\n", 0, e.start) + 1, raw.rfind(b"\n", 0, e.start) + 1
                yield "line", line, _ParseError(_not_utf8(raw, e.start, start, name), whole_file=True)
                return
        except json.JSONDecodeError as e:
            if kind.endswith((".json", ".json.gz")) or not _is_json(_first_line(raw)):
                yield "line", e.lineno, _ParseError(f"invalid JSON: {e.msg} (column {e.colno})", whole_file=True)
                return
        except RecursionError:
            if kind.endswith((".json", ".json.gz")) or not _is_json(_first_line(raw)):
                yield "line", 1, _ParseError(TOO_DEEP, whole_file=True)
                return
        if records is not None:  # else JSON Lines whose first row is a list: each line is said
            for i, record in enumerate(records):
                yield "row", i + 1, record
            return
    if _first_line(raw)[:1] == b"{" and not _is_json(_first_line(raw)):  # one object over several lines
        try:
            record = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):  # JSON Lines with a broken first line: each
            record = None
        if isinstance(record, dict):
            yield "row", 1, record
            return
    yield from _json_lines(raw, name)


def _json_lines(raw: bytes, name: str) -> Iterator[tuple[str, int, Any]]:
    """JSON Lines (also accepted under a .json name, as `datasets` does); a file that is CSV by its first line is
    one problem, not one a line."""
    return _json_lines_of(_lines(raw), name)


def _json_lines_of(lines: Iterable[bytes], name: str, checked: bool = False) -> Iterator[tuple[str, int, Any]]:
    """_json_lines of a file's lines; ``checked``: a line that may hold half of a UTF-16 surrogate pair
    (_LONE_SURROGATE) has its record checked (_surrogate_problem), as _records checks a whole file's."""
    first, hinted = True, False
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode("utf-8"))
            if checked and _LONE_SURROGATE.search(line):
                record = _surrogate_problem(record) or record
            yield "line", lineno, record
        except UnicodeDecodeError as e:
            yield "line", lineno, _ParseError(_not_utf8(line, e.start, 0, None if hinted else name))
            hinted = True
        except json.JSONDecodeError as e:
            if first and (sep := _csv_separator(line.decode("utf-8"))):
                yield "line", lineno, _ParseError(_looks_like_csv(line.decode("utf-8").strip(), name, sep))
                return
            yield "line", lineno, _ParseError(f"invalid JSON: {e.msg} (column {e.colno})")
        except RecursionError:
            yield "line", lineno, _ParseError(TOO_DEEP)
        first = False


_LEADING_SPACE = re.compile(rb"[ \t\n\r\x0b\x0c]*")  # what bytes.lstrip() strips
_LINE_END = re.compile(rb"\r\n|\r|\n")  # where bytes.splitlines() splits


def _first_line(raw: bytes) -> bytes:
    """``raw.lstrip().splitlines()[0]`` (b"" where raw is blank), without copying the file: splitlines() made a bytes
    object of every line (856 MB of JSON Lines: 856 MB more, to read one line)."""
    start = _LEADING_SPACE.match(raw).end()
    end = _LINE_END.search(raw, start)
    return raw[start : end.start() if end else len(raw)]


def _lines(raw: bytes) -> Iterator[bytes]:
    """``raw.splitlines()``, a line at a time: the list of them all was a second copy of the file held while its rows
    were read (300k conversations: 856 MB on top of the file and its rows)."""
    start = 0
    for end in _LINE_END.finditer(raw):
        yield raw[start : end.start()]
        start = end.end()
    if start < len(raw):
        yield raw[start:]


def _is_json(line: bytes) -> bool:
    try:
        json.loads(line)
    except (ValueError, RecursionError):
        return False
    return True


def _not_utf8(raw: bytes, at: int, line_start: int, name: str | None) -> str:
    """The problem of a line that is not UTF-8 at byte ``at`` of ``raw``; with ``name``, how to convert the file."""
    problem = f"not UTF-8 text (byte 0x{raw[at]:02x} at column {at - line_start + 1})"
    if name is None:
        return problem
    encoding = "utf-16" if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) else "latin1"
    base = posixpath.basename(name)
    stem, ext = posixpath.splitext(base)
    return f"{problem}: convert the file to UTF-8, e.g. iconv -f {encoding} -t utf-8 {base} > {stem}.utf8{ext}"


def _looks_like_csv(header: str, name: str, sep: str) -> str:
    what = "CSV" if sep == "," else "TSV"
    return (
        f"this file looks like {what}, not JSON (its first line is {header[:60]!r}): ftctl reads JSON Lines (.jsonl, "
        f"one object a line), JSON (.json, a list of objects) and Parquet; {_convert(name, sep)}"
    )


def _csv_separator(line: str) -> str | None:
    """The separator of what looks like a CSV or TSV header line (names between commas or tabs, no JSON)."""
    if any(c in line for c in "{}[]"):
        return None
    return "\t" if "\t" in line else "," if "," in line else None


def _convert(name: str, sep: str = ",") -> str:
    """How to turn a CSV/TSV file into JSON Lines ftctl reads (its columns named as a format's fields)."""
    here = name if "://" not in name else posixpath.basename(name)  # a store's file: converted into this directory
    out = posixpath.splitext(here)[0] + ".jsonl"
    out = out if out != here else out.replace(".jsonl", ".converted.jsonl")
    option = ", sep='\\t'" if sep == "\t" else ""
    return (
        f"convert it to JSON Lines with columns a format names (instruction/output, prompt/completion, text), e.g. "
        f"python -c \"import pandas as pd; pd.read_csv('{name}'{option}).to_json('{out}', orient='records', "
        f'lines=True, force_ascii=False)"'
    )


@dataclass
class _ParseError:
    message: str
    whole_file: bool = False  # a JSON list that does not parse: none of its rows is read
    not_utf8: bool = False  # a JSON list's problem: a byte that is not UTF-8
    first_value: bool = False  # JSON values over several lines whose first does not parse (_not_values)


# what _records yields where the records it yielded before are not the file's (a .jsonl file read as a JSON list
# until it is not one: then as JSON Lines)
_AGAIN = object()


def load_rows(
    path: str,
    endpoint_url: str | None = None,
    held_out: bool = False,
    text_field: str = "text",
    columns: dict[str, str] | None = None,
) -> tuple[list[str], Rows]:
    """(the files read, every row of them as a :class:`Row` with its problems, if any, held packed: :class:`Rows`; a
    JSON Lines file, a .json file's list of rows, rows over several lines or a Parquet file read as it streams, a
    block, a row or a batch of rows at a time), of each dataset ``path`` names (several: comma-separated,
    :func:`ftctl.spec.split_paths`) in turn.
    ``endpoint_url``: the S3 endpoint (see :func:`ftctl.storage.s3_endpoint`); ``held_out``: see resolve_files;
    ``text_field``: the field of a plain-text row (TRL's dataset_text_field); ``columns``: the run's data_columns,
    a dataset's own names of its fields (described)."""
    from ftctl.spec import split_paths

    files, rows, seen = [], Rows(), {}
    for source, one in enumerate(split_paths(path)):
        found = resolve_files(one, endpoint_url, held_out=held_out)
        files += found
        named = described((columns or {}).get(one))
        for file in found:
            name = file_name(file, one)
            mapped, problem, _ = _llama_factory_mapping(file, endpoint_url, seen)
            if problem:
                rows.append(Row(where=name, format="unknown", problems=[problem], source=source))
                continue
            before = rows.mark()
            try:
                for unit, number, record in _records(file, name, endpoint_url):
                    if record is _AGAIN or isinstance(record, _ParseError) and record.whole_file:
                        rows.truncate(before)  # a JSON list read as it streams failed after some of its rows: none
                        if record is _AGAIN:
                            continue
                    record = mapped(record) if mapped else record
                    record = _text_field(named(record) if named else record, text_field)
                    row = to_row(f"{name} {unit} {number}", record)
                    whole = isinstance(record, _ParseError) and record.whole_file  # no row of it was read
                    row.source, row.at = source, None if whole else (name, unit, number)
                    rows.append(row)
            except (OSError, ValueError) as e:  # unreadable file, bad parquet, not UTF-8
                rows.truncate(before)  # the rows read before the failure (a file is read as it streams): none of it
                rows.append(Row(where=name, format="unknown", problems=[f"cannot read the file: {e}"], source=source))
    rows._pack()
    return files, rows


def data_digest(path: str, endpoint_url: str | None = None, held_out: bool = False, known: str | None = None) -> str:
    """A digest of the data ``path`` names as load_rows reads it: each dataset's files in order, a local file by its
    content (about 1 s a GB), an object by its store's checksum (an ETag: no download), and the LLaMA-Factory
    dataset_info.json beside them that renames their fields. The same digest: the same rows (data.build_dataset's
    cache of tokenized rows is found by it). ``known``: a file of local files' digests by their stat (_Known), read
    instead of the file where it is unchanged since (the trainer's, in its data cache: a resume of a run on 856 MB of
    JSON Lines hashed it again, 14 s at each start)."""
    from ftctl.spec import split_paths

    memo = _Known(known)
    digest = hashlib.blake2b(digest_size=16)
    for one in split_paths(path):
        digest.update(b"\0dataset")
        files = resolve_files(one, endpoint_url, held_out=held_out)
        infos = {storage.join(d, LF_INFO) if (d := posixpath.dirname(f)) else LF_INFO for f in files}
        for file in [*files, *sorted(infos)]:
            digest.update(f"\0{file_name(file, one)}\0".encode())
            with storage.storage_errors(file, endpoint_url):
                fs, root = storage.filesystem(file, endpoint_url)
                if not fs.exists(root):  # no dataset_info.json: nothing renamed
                    digest.update(b"none")
                elif storage.is_remote(file) or file.startswith("hf://"):
                    digest.update(f"{fs.size(root)}:{fs.checksum(root)}".encode())
                else:
                    digest.update(memo.digest(fs, root, storage.scheme(file) in ("", "file", "local")).encode())
    memo.save()
    return digest.hexdigest()


def _content_digest(fs, root: str) -> str:
    one = hashlib.blake2b(digest_size=16)
    with fs.open(root, "rb") as f:
        while block := f.read(8 * 2**20):
            one.update(block)
    return one.hexdigest()


class _Known:
    """Local data files' content digests, kept in a JSON file by each file's (device, inode, size, mtime_ns,
    ctime_ns), as git's index trusts a file's stat: a digest is read there, not taken again, where the file's stat is
    that. Any write to the file moves its ctime, which no process can set back (touch -r, cp -p and an editor's
    rewrite set the mtime, not the ctime; a new file in its place has another ctime and mostly another inode).
    Kept only for files of KNOWN_BYTES or more (smaller ones are hashed in a moment), whose stat is the same before
    and after they were hashed, and whose mtime and ctime are KNOWN_AFTER_S old or more as they are hashed: a
    filesystem's coarse timestamps (FAT's 2 s) would give a write just after the hashing the same stat."""

    def __init__(self, path: str | None):
        self.path, self.files, self.changed = path, {}, False
        if path:
            try:
                with open(path) as f:
                    said = json.load(f)
                if said.get("version") == 1 and isinstance(said.get("files"), dict):
                    self.files = said["files"]
            except (OSError, ValueError, AttributeError):  # none yet, or damaged: taken again
                pass

    def digest(self, fs, root: str, local: bool) -> str:
        """The digest of the file ``root`` of ``fs`` (``local``: a file of this machine's, whose stat is known)."""
        import time

        stat = _stat_of(root) if self.path and local else None
        if stat is None or stat[2] < KNOWN_BYTES:
            return _content_digest(fs, root)
        said = self.files.get(root)
        if isinstance(said, list) and len(said) == 6 and said[:5] == stat and isinstance(said[5], str):
            return said[5]
        started = time.time_ns()
        content = _content_digest(fs, root)
        if _stat_of(root) == stat and started - max(stat[3], stat[4]) >= KNOWN_AFTER_S * 1e9 and stat[1]:
            self.files[root] = [*stat, content]
            self.changed = True
        elif self.files.pop(root, None) is not None:
            self.changed = True
        return content

    def save(self) -> None:
        """Written whole (a new file renamed over the old), where a digest was taken anew; a disk that refuses it
        costs a hashing at the next start, nothing else."""
        import os
        import tempfile

        from ftctl.runpaths import current_umask

        if not (self.path and self.changed):
            return
        try:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            fd, new = tempfile.mkstemp(dir=os.path.dirname(self.path) or ".", prefix=".digests.", suffix=".new")
            try:
                os.fchmod(fd, 0o666 & ~current_umask())  # as open() makes it: a colleague resuming the run reads it
                with os.fdopen(fd, "w") as f:
                    json.dump({"version": 1, "files": self.files}, f)
                os.replace(new, self.path)
            finally:
                if os.path.exists(new):
                    os.unlink(new)
        except OSError:
            pass


# _Known keeps the digests of local files this large or larger, whose mtime and ctime are this old
KNOWN_BYTES = 16 * 2**20
KNOWN_AFTER_S = 3.0


def _stat_of(root: str) -> list[int] | None:
    """[device, inode, size, mtime_ns, ctime_ns] of a local file, None where it has none."""
    import os

    try:
        st = os.stat(root)
    except OSError:
        return None
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def file_name(file: str, path: str) -> str:
    """A data file named as the user knows it: relative to the directory ``path`` given, else its base name."""
    top = path.rstrip("/") + "/"
    return file[len(top) :] if file.startswith(top) else posixpath.basename(file)


# LLaMA-Factory's dataset_info.json: its datasets by name, each a file (file_name) or elsewhere, with how to read its
# rows: formatting, columns (a field -> the record's column) and tags (a turn's keys and roles -> the data's)
LF_SOURCES = {"file_name", "hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name"}
# its columns and tags where an entry gives none (its parser's DatasetAttr)
LF_DEFAULTS = {
    "prompt": "instruction",
    "query": "input",
    "response": "output",
    "messages": "conversations",
    "role_tag": "from",
    "content_tag": "value",
    "user_tag": "human",
    "assistant_tag": "gpt",
    "observation_tag": "observation",
    "function_tag": "function_call",
    "system_tag": "system",
}
# the fields of each formatting as ftctl's rows name them (the formats above)
_SHAREGPT_TAGS = {k: v for k, v in LF_DEFAULTS.items() if k.endswith("_tag")}
LF_NAMES = {
    "alpaca": {
        "prompt": "instruction",
        "query": "input",
        "response": "output",
        "history": "history",
        "system": "system",
        "tools": "tools",
    },
    "sharegpt": {"messages": "conversations", "system": "system", "tools": "tools", **_SHAREGPT_TAGS},
    "openai": {
        "messages": "messages",
        "system": "system",
        "tools": "tools",
        **_SHAREGPT_TAGS,
        "role_tag": "role",
        "content_tag": "content",
        "user_tag": "user",
        "assistant_tag": "assistant",
        "observation_tag": "tool",
    },
}
# what an entry reads that ftctl does not train on: (its keys or columns, why)
LF_NOT_SFT = (
    (
        ("ranking", "chosen", "rejected", "kto_tag"),
        "preference data (DPO or KTO), and ftctl trains supervised fine-tuning: make SFT rows of it (each row's chosen "
        "answer as its last assistant turn) in a file of their own",
    ),
    (("images", "videos", "audios"), "images, video or audio, and ftctl trains language models on text"),
)


def _llama_factory_entries(fs, info: str) -> dict | None:
    """The datasets LLaMA-Factory's dataset_info.json at ``info`` (a path on ``fs``) names, where it is one (a
    `datasets` save_to_disk directory's is not); None where there is none."""
    try:
        entries = json.loads(fs.cat_file(info)) if fs.isfile(info) else None
    except (OSError, ValueError):
        return None
    if not (isinstance(entries, dict) and entries):
        return None
    return entries if all(isinstance(e, dict) and LF_SOURCES & set(e) for e in entries.values()) else None


def _llama_factory_directory(directory: str, entries: dict, held_out: bool) -> FtctlError:
    """The refusal of LLaMA-Factory's data directory (or its dataset_info.json) as data: its datasets are chosen by
    name, and ftctl reads files."""
    files = [(name, e["file_name"]) for name, e in entries.items() if isinstance(e.get("file_name"), str)]
    some = ", ".join(f"{name} ({file})" for name, file in files[:3]) + (
        f" and {len(entries) - 3} more" if len(entries) > 3 else ""
    )
    example = storage.join(directory, files[0][1] if files else "FILE.json")
    return FtctlError(
        f"{directory} is LLaMA-Factory's data directory: its {LF_INFO} names {len(entries)} datasets ({some}), which "
        f"ftctl does not read by name. Give the files of those to train on, e.g. "
        f"{'--eval-data' if held_out else '--data'} {example} (several: comma-separated); each is read as its entry "
        f"in {LF_INFO} says (formatting, columns, tags)."
    )


def llama_factory_notes(files: list[str], endpoint_url: str | None = None) -> list[str]:
    """One line for each of ``files`` that an entry of LLaMA-Factory's dataset_info.json beside it is read by
    (load_rows): which entry, its formatting and what it renames (``ftctl data check`` says it)."""
    seen: dict = {}
    return [note for file in files if (note := _llama_factory_mapping(file, endpoint_url, seen)[2])]


def _llama_factory_mapping(file: str, endpoint_url: str | None, seen: dict) -> tuple[Any, str | None, str | None]:
    """(a function that gives a record of ``file`` in ftctl's names, None where they are its own already; the
    problem; the note that says which entry was applied and how) from the entry of LLaMA-Factory's dataset_info.json
    beside ``file`` that names it (file_name): its columns and its turns' keys and roles renamed, as LLaMA-Factory
    reads them (a ``dialog`` column of ``speaker``/``text`` turns by ``USER``/``BOT``: ``conversations`` of
    ``from``/``value`` turns by human/gpt). ``seen``: the entries already read, by directory."""
    directory = posixpath.dirname(file)
    if directory not in seen:
        try:
            fs, root = storage.filesystem(storage.join(directory, LF_INFO) if directory else LF_INFO, endpoint_url)
            seen[directory] = _llama_factory_entries(fs, root) or {}
        except (OSError, ValueError, FtctlError):  # no such file to read: the rows are read as they are
            seen[directory] = {}
    base = posixpath.basename(file)
    named = [(n, e) for n, e in seen[directory].items() if posixpath.normpath(str(e.get("file_name", ""))) == base]
    if not named:
        return None, None, None
    name, entry = named[0]
    formatting = entry.get("formatting", "alpaca")
    said = f"{LF_INFO}'s entry {name!r} reads {base}"
    if formatting not in LF_NAMES:
        return None, f"{said} as {formatting!r}: ftctl reads {', '.join(LF_NAMES)} (LLaMA-Factory's formattings)", None
    given = {**(entry.get("columns") or {}), **(entry.get("tags") or {})}
    asked = {k for k, v in {**entry, **given}.items() if v}
    for keys, why in LF_NOT_SFT:
        if found := [k for k in keys if k in asked]:
            return None, f"{said} with {', '.join(found)}: {why}", None
    ours = LF_NAMES[formatting]
    theirs = {k: v for k, v in {**LF_DEFAULTS, **given}.items() if k in ours and isinstance(v, str)}
    renamed = {k: (theirs[k], ours[k]) for k in theirs if theirs[k] != ours[k]}  # field: (their name, ours)
    columns = dict(v for k, v in renamed.items() if not k.endswith("_tag"))
    keys = dict(v for k, v in renamed.items() if k in ("role_tag", "content_tag"))
    roles = dict(v for k, v in renamed.items() if k.endswith("_tag") and k not in ("role_tag", "content_tag"))
    renames = [
        f"{what} " + ", ".join(f"{a} -> {b}" for a, b in names.items())
        for what, names in (("columns", columns), ("turn keys", keys), ("roles", roles))
        if names
    ]
    note = f"{LF_INFO}'s entry {name!r} applied to {base}: formatting {formatting}; " + (
        f"renames {'; '.join(renames)}" if renames else "its names are ftctl's own: nothing to rename"
    )
    if not renamed:
        return None, None, note
    return lambda record: _renamed(record, columns, ours.get("messages"), keys, roles), None, note


def _renamed(record: Any, columns: dict, turns: str | None, keys: dict, roles: dict) -> Any:
    """``record`` with its ``columns`` renamed, and where it has ``turns`` their ``keys`` and role names
    (``roles``)."""
    if not isinstance(record, dict):
        return record
    record = {columns.get(k, k): v for k, v in record.items()}
    if turns and isinstance(record.get(turns), list) and (keys or roles):
        record[turns] = [_renamed_turn(t, keys, roles) for t in record[turns]]
    return record


def _renamed_turn(turn: Any, keys: dict, roles: dict) -> Any:
    if not isinstance(turn, dict):
        return turn
    turn = {keys.get(k, k): v for k, v in turn.items()}
    for key in ("from", "role"):
        if isinstance(turn.get(key), str):
            turn[key] = roles.get(turn[key], turn[key])
    return turn


def described(description: str | dict | None):
    """A function that gives a record of a dataset in ftctl's names, from the run's description of its own
    (data_columns: JSON text of ftctl's field -> the data's, as tool_datasets.axolotl_columns reads it from axolotl's
    dataset entries): its fields renamed (messages, instruction, input, output, system), its turns' role and content
    keys and role names (``roles``: the data's -> the template's), ``system_prompt`` the system of a row without one.
    None where there is nothing to rename."""
    if not description:
        return None
    names = json.loads(description) if isinstance(description, str) else dict(description)
    system = names.pop("system_prompt", None)
    roles = names.pop("roles", None) or {}
    keys = {names.pop(k): k for k in ("role", "content") if k in names and names[k] != k}
    columns = {theirs: ours for ours, theirs in names.items() if theirs != ours}

    def rename(record: Any) -> Any:
        record = _renamed(record, columns, "messages", keys, roles)
        if system and isinstance(record, dict) and not record.get("system"):
            turns = record.get("messages")
            if not (isinstance(turns, list) and any(isinstance(t, dict) and t.get("role") == "system" for t in turns)):
                record = {**record, "system": system}
        return record

    return rename


# --------------------------------------------------------------------------------------------
# Rows


def _text_field(record: Any, field: str) -> Any:
    """A record whose plain text is in ``field`` (TRL's dataset_text_field) as to_row reads one: its ``text`` (a
    ``text`` field beside it is not what trains, as in TRL)."""
    if field == "text" or not isinstance(record, dict) or field not in record:
        return record
    return {**{k: v for k, v in record.items() if k != field}, "text": record[field]}


def to_row(where: str, record: Any) -> Row:
    """Normalise one record to chat messages, collecting what is wrong with it."""
    if isinstance(record, _ParseError):
        return Row(where=where, format="unknown", problems=[record.message])
    if not isinstance(record, dict):
        turns = next(filter(None, (_as_turns(record, key) for key in TURN_KEYS)), None)
        said = turns or f"{_kind(record)}, {FORMAT_HINT}"
        return Row(where=where, format="unknown", problems=[f"not a conversation: {said}"])
    if isinstance(record.get("id"), (str, int)):
        where = f"{where} (id {record['id']!r})"
    if "conversations" in record:
        row = _turns(where, "sharegpt", _listed(record["conversations"]), "from", "value", SHAREGPT_ROLES)
        return _with_tools(_with_system(row, record), record, wrap=True)
    if "messages" in record:
        row = _turns(where, "openai", _listed(record["messages"]), "role", "content", OPENAI_ROLES)
        return _with_tools(_with_system(row, record), record)
    if "instruction" in record and "output" in record:
        return _alpaca(where, record)
    if "segments" in record:
        return _segments(where, record["segments"])
    if problem := _not_sft(record):
        return Row(where=where, format="unknown", problems=[problem])
    if "prompt" in record and "completion" in record:
        return _prompt_completion(where, record)
    if "text" in record:
        text = record["text"]
        if not isinstance(text, str):
            return Row(
                where=where,
                format="text",
                problems=[f"not a conversation: 'text' is {_kind(text)}, not a string"],
            )
        if not text.strip():
            return Row(where=where, format="text", problems=["empty turn: 'text' is empty"])
        return Row(where=where, format="text", text=text)
    if renames := _renames(record) or next(filter(None, (_as_turns(record, key) for key in TURN_KEYS)), None):
        return Row(where=where, format="unknown", problems=[f"not a conversation: keys {_keys(record)}; {renames}"])
    texts = [k for k, v in record.items() if isinstance(v, str) and k != "id"]
    plain = (  # TRL's dataset_text_field: a plain-text column of another name
        f"; plain text in {texts[0]!r}: -o dataset_text_field={texts[0]} (TRL's key) reads it"
        if len(texts) == 1
        else ""
    )
    return Row(
        where=where, format="unknown", problems=[f"not a conversation: keys {_keys(record)}; {FORMAT_HINT}{plain}"]
    )


SEGMENT = "{'label': true (trained) or false (context), 'text': ...}"


def _segments(where: str, segments: Any) -> Row:
    """axolotl's template-free rows (type: input_output): ``segments`` of text, each trained (label true) or context
    (false), tokenized as written: no chat template, bos or eos added (the text writes its own special tokens)."""
    row = Row(where=where, format="segments")
    if not isinstance(segments, list) or not segments:
        row.problems.append(f"not a conversation: 'segments' must be a list of {SEGMENT} (axolotl's input_output)")
        return row
    text, spans = "", []
    for n, segment in enumerate(segments, start=1):
        if not (isinstance(segment, dict) and isinstance(segment.get("text"), str)):
            row.problems.append(f"segment {n} must be {SEGMENT}")
            return row
        if not isinstance(segment.get("label"), bool):
            row.problems.append(f"segment {n} has no 'label' true or false: say whether its text is trained")
            return row
        if segment["label"] and segment["text"]:
            spans.append((len(text), len(text) + len(segment["text"])))
        text += segment["text"]
    if not text.strip():
        row.problems.append("empty turn: the segments hold no text")
    row.text, row.spans = text, spans
    return row


def _listed(turns: Any) -> Any:
    """A row's turns, where they are stored as JSON text (a Parquet column of json.dumps(messages), kept so because
    Arrow gives every turn every key of the others): the list it holds; anything else as it is."""
    if isinstance(turns, str) and turns.lstrip().startswith("["):
        try:
            listed = json.loads(turns)
        except ValueError:
            return turns
        return listed if isinstance(listed, list) else turns
    return turns


def _not_sft(record: dict) -> str | None:
    """Why a row of another trainer's data (TRL's preference, KTO or prompt-only rows) is none to imitate: SFT would
    learn every completion it holds, the rejected and undesirable ones too."""
    if {"chosen", "rejected"} & set(record):
        return (
            "preference data (DPO: 'chosen' and 'rejected'): ftctl trains supervised fine-tuning, on answers to "
            "imitate; give each row's chosen conversation as its 'messages' (or 'prompt' + its chosen 'completion')"
        )
    if "prompt" in record and "completion" in record and record.get("label") is False:
        return (
            "'label' is false: a KTO row marking its completion undesirable, which supervised fine-tuning would "
            "learn; leave such rows out (a row with label true trains)"
        )
    if "prompt" in record and not {"completion", "text"} & set(record):
        if renames := _question_answer(record):  # {"prompt": ..., "response": ...}: SFT rows, the answer renamed
            return f"not a conversation: keys {_keys(record)}; {renames}"
        return "a 'prompt' without a 'completion' (RL data): nothing to train on; add the answer as 'completion'"
    return None


# the fields other datasets hold a question and its answer in (Dolly's instruction/context/response, GSM8K's
# question/answer, Magpie's instruction/response ...), and the Alpaca field each is (the chat template renders
# Alpaca rows, the loss on the output)
QUESTION_FIELDS = {"instruction": "instruction", "question": "instruction", "query": "instruction"}
QUESTION_FIELDS |= {"prompt": "instruction", "input": "instruction", "context": "input"}
ANSWER_FIELDS = {"response": "output", "answer": "output", "output": "output", "target": "output"}
ANSWER_FIELDS |= {"reply": "output", "completion": "output"}
# a list of turns under another name (axolotl's field_messages): each turn's keys, as a format names them
TURN_KEYS = (("role", "content", "messages"), ("from", "value", "conversations"))


def _as_turns(value: Any, keys: tuple[str, str, str]) -> str | None:
    """How to make a row of turns given bare (a JSON Lines line that is a list of turns, or one turn a row); None where
    ``value`` is not turns with these (role, text, name) keys."""
    role, text, name = keys
    turns = value if isinstance(value, list) else [value]
    if not turns or not all(isinstance(t, dict) and role in t and text in t for t in turns):
        return None
    if isinstance(value, list):
        return f'a list of {role}/{text} turns: a row is an object that names them, {{"{name}": [...turns]}}'
    return f'one {role}/{text} turn: a row holds a whole conversation, {{"{name}": [...turns]}}'


def _renames(record: dict) -> str | None:
    """How to name a row's fields so that a format reads it, where they are turns under another name or a question
    and its answer (_question_answer); None where they are neither."""
    for key, value in record.items():
        if isinstance(value, list) and value and all(isinstance(t, dict) for t in value):
            for role, text, name in TURN_KEYS:
                if all(role in t and (text in t or "tool_calls" in t) for t in value):
                    return (
                        f"'{key}' holds {role}/{text} turns: rename it '{name}' (ftctl reads turns by that name, not "
                        "by axolotl's field_messages)"
                    )
    if len(record) == 1 and isinstance(rows := next(iter(record.values())), list) and rows:
        if isinstance(rows[0], dict) and to_row("", rows[0]).format != "unknown":  # {"data": [rows]}
            return (
                f"'{next(iter(record))}' holds the rows: give them as the file's top level, a JSON list of rows or "
                "JSON Lines, one row a line (as datasets' field= reads them)"
            )
    return _question_answer(record)


def _question_answer(record: dict) -> str | None:
    """How to name a row's fields as Alpaca's, where they are a question and its answer under other names
    (QUESTION_FIELDS, ANSWER_FIELDS); None where they are not."""
    texts = {k for k, v in record.items() if isinstance(v, str)}
    answer = next((k for k in ANSWER_FIELDS if k in texts), None)
    asked = [k for k in QUESTION_FIELDS if k in texts and k != answer]
    if not (answer and asked):
        return None
    first, *more = asked
    names = {first: "instruction", **({"context": "input"} if "context" in more else {}), answer: "output"}
    renamed = {k: v for k, v in names.items() if k != v}
    said = ", ".join(f"'{k}' -> '{v}'" for k, v in renamed.items())
    raw = ""
    if first == "input" and answer == "output" and not more:  # qlora.py's input-output rows: no template there
        raw = ", or 'input' -> 'prompt', 'output' -> 'completion' (qlora.py's input-output: the text as written, no "
        raw += "chat template, the loss on the output)"
    return (
        f"a question and its answer: rename {said} (Alpaca: the chat template renders it, the loss on the output){raw}"
    )


def _keys(record: dict) -> str:
    return ", ".join(map(repr, record)) or "none"


# OpenAI's text content parts: its Chat Completions' (text) and Responses' (input_text, output_text)
TEXT_PARTS = ("text", "input_text", "output_text")


def _content(value: Any) -> str | None:
    """A turn's text: a string, or OpenAI content parts of text joined by line breaks (as vLLM joins them serving
    a text model); None if neither."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(_is_text_part(p) for p in value):
        return "\n".join(p["text"] for p in value)
    return None


def _is_text_part(part: Any) -> bool:
    return isinstance(part, dict) and part.get("type") in TEXT_PARTS and isinstance(part.get("text"), str)


def _not_text(value: Any) -> str:
    """What a turn's content that is not text holds, for its problem line."""
    if isinstance(value, list):
        other = next((p for p in value if not _is_text_part(p)), None)
        if isinstance(other, dict) and isinstance(other.get("type"), str):
            return (
                f"holds a part of type {other['type']!r}: ftctl trains language models on text, and reads only text parts "
                f"(type {', '.join(TEXT_PARTS)}); leave the row out, or the part"
            )
    return f"is {_kind(value)}, not text"


def _turns(where: str, fmt: str, turns: Any, role_key: str, text_key: str, roles: dict) -> Row:
    row = Row(where=where, format=fmt)
    container = "conversations" if fmt == "sharegpt" else "messages"
    if not isinstance(turns, list) or not turns:
        what = "empty" if isinstance(turns, list) else _kind(turns)
        row.problems.append(f"not a conversation: '{container}' is {what}, expected a list of turns")
        return row
    for n, turn in enumerate(turns, start=1):
        if isinstance(turn, dict) and role_key not in turn and "role" in turn:  # tolerate role/content in ShareGPT
            role_key, text_key = "role", "content"
        if isinstance(turn, dict) and role_key not in turn and "from" in turn and "value" in turn:  # and from/value
            role_key, text_key, roles = "from", "value", SHAREGPT_ROLES  # in 'messages' (human, gpt)
        if (
            not isinstance(turn, dict)
            or role_key not in turn
            or not ({text_key, "tool_calls", "function_call"} & turn.keys())
        ):
            other = {"value": "content", "content": "value"}[text_key]  # one format's roles, the other's text
            rename = f" (it has '{other}': rename it '{text_key}')" if isinstance(turn, dict) and other in turn else ""
            row.problems.append(
                f"not a conversation: turn {n} must be an object with '{role_key}' and '{text_key}'{rename}"
            )
            continue
        role = turn[role_key]
        mapped = roles.get(role.lower(), MORE_ROLES.get(role.lower())) if isinstance(role, str) else None
        if mapped is None:
            hint = did_you_mean(str(role), roles).strip()  # the problems of a row are joined with "; "
            row.problems.append(
                f"unknown role {role!r} in turn {n}: use one of {', '.join(sorted(roles))}"
                + (f" ({hint[0].lower()}{hint[1:]})" if hint else "")
            )
            continue
        if fmt == "sharegpt" and role.lower() == "function_call":
            said, calls, problem = _function_call(turn.get(text_key))
            if problem:
                row.problems.append(f"turn {n} ({role}) {problem}")
                continue
            turn = {**turn, "tool_calls": calls, text_key: said}
        if mapped == "assistant" and turn.get("function_call") is not None and not turn.get("tool_calls"):
            # OpenAI's older form of a call (its functions API): the call, not left out as the text alone trained
            turn = {**turn, "tool_calls": [{"type": "function", "function": turn["function_call"]}]}
        calls = turn.get("tool_calls") if mapped == "assistant" else None
        if calls is not None and not (isinstance(calls, list) and all(_is_call(c) for c in calls)):
            row.problems.append(
                f"turn {n} 'tool_calls' must be a list of {{'type': 'function', 'function': {{'name': ..., "
                f"'arguments': ...}}}} objects"
            )
            continue
        if calls:
            try:
                turn = {**turn, "tool_calls": [_call(c) for c in calls]}
            except ValueError:
                row.problems.append(f"turn {n}: a tool call's 'arguments' is a string but not JSON")
                continue
        if calls and turn.get(text_key) is None:  # a turn that only calls tools
            turn = {**turn, text_key: ""}
        content = _content(turn.get(text_key))
        if content is None:
            said = _not_text(turn.get(text_key))
            if mapped == "tool" and isinstance(turn.get(text_key), (dict, list)) and said.endswith("not text"):
                said += " (a tool's result is given to the chat template as text: write it as its JSON text)"
            row.problems.append(f"not a conversation: turn {n} '{text_key}' {said}")
            continue
        if not content.strip() and not calls:
            row.problems.append(f"empty turn: turn {n} ({role}) has no text; remove it or fill it in")
            continue
        tooled = fmt != "sharegpt" or mapped == "tool" or calls  # a ShareGPT turn's "name" may be a speaker's
        extra = {k: turn[k] for k in TOOL_KEYS if tooled and turn.get(k) is not None}
        if fmt == "sharegpt" and mapped == "tool" and "name" not in extra and (name := _answered(row.messages)):
            extra["name"] = name  # as transformers' tool-use examples name a result, for templates that write it
        if mapped == "assistant":  # its reasoning, for the template to write (data.py: where it does not, refused)
            extra.update({k: turn[k] for k in REASONING_KEYS if isinstance(turn.get(k), str) and turn[k].strip()})
        weight, problem = _turn_weight(turn, mapped, fmt)
        if problem:
            row.problems.append(f"turn {n} ({role}) {problem}")
            continue
        if weight == 0:
            extra["weight"] = 0  # masks.assistant_spans leaves it out of the loss
        row.messages.append({"role": mapped, "content": content, **extra})
    if row.problems:
        return row
    _with_call_ids(row.messages)
    if not any(m["role"] == "assistant" for m in row.messages):
        row.problems.append("no assistant turn: nothing to train on; every label would be masked")
    elif fmt != "prompt-completion":  # its prompt is as TRL's user gave it
        _drop_leading_answers(row)
    return row


def _turn_weight(turn: dict, role: str, fmt: str) -> tuple[int | None, str | None]:
    """(0 where ``turn`` says it is not trained, else None; the problem with what it says). An assistant turn's
    weight is 0 or 1, its TRAIN_FLAGS true or false; a user's or system's turn trains never, and may say so."""
    said = {}
    weight = turn.get("weight")
    if weight is not None and not (fmt == "sharegpt" and role != "assistant"):  # SlimOrca's human turns say 0.0
        if weight not in (0, 1) or isinstance(weight, bool):
            return (
                None,
                f"'weight' is {weight!r}: an assistant turn's weight is 0 (not trained) or 1, as OpenAI's fine-tuning format gives it",
            )
        said["weight"] = int(weight)
    for flag in TRAIN_FLAGS:
        value = turn.get(flag)
        if value is None:
            continue
        if not isinstance(value, bool):
            return None, f"'{flag}' is {value!r}: give true (trained) or false (context, not trained)"
        said[flag] = int(value)
    if role != "assistant":
        trains = [k for k, v in said.items() if v]
        if trains:
            return None, (
                f"says '{trains[0]}': {said[trains[0]]}, and only assistant turns are trained (a {role} turn is "
                "context; train_on_inputs: true trains every token)"
            )
        return None, None
    if len(set(said.values())) > 1:
        return None, "says " + " and ".join(
            f"'{k}': {json.dumps(bool(v) if k != 'weight' else v)}" for k, v in said.items()
        ) + ": keep one"
    return (0 if said and not next(iter(said.values())) else None), None


def _drop_leading_answers(row: Row) -> None:
    """Leave out the assistant turns before the first user turn (a system turn stays), as FastChat's train script
    drops a conversation's leading non-human turn: they answer nothing. Without a user turn a system turn may prompt
    them (kept), and nothing may (a problem)."""
    roles = [m["role"] for m in row.messages]
    if "user" not in roles:
        if roles[0] == "assistant":
            row.problems.append(
                "no user turn: the conversation starts with the assistant's, with nothing to answer; add the user's "
                "turn before it, or give the row as plain text ({'text': ...})"
            )
        return
    first_user = roles.index("user")
    kept = [m for i, m in enumerate(row.messages) if i > first_user or m["role"] != "assistant"]
    row.dropped = len(row.messages) - len(kept)
    row.messages = kept
    if "assistant" not in roles[first_user:]:
        row.problems.append(
            "no assistant turn after a user turn: nothing to train on (assistant turns before the first user turn "
            "answer nothing and are left out); add the assistant's answer, or remove the row"
        )


def _is_call(call: Any) -> bool:
    function = call.get("function") if isinstance(call, dict) else None
    return isinstance(function, dict) and isinstance(function.get("name"), str)


def _call(call: dict) -> dict:
    """A tool call with its ``arguments`` an object: OpenAI's API gives them as a JSON string, which transformers'
    chat templates (Llama 3.1's ``| tojson``) would render as one string, quoted and escaped, for the model to
    learn; ValueError where that string is not JSON."""
    function = call["function"]
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        return {**call, "function": {**function, "arguments": json.loads(arguments) if arguments.strip() else {}}}
    return call


def _function_call(value: Any) -> tuple[str, list[dict], str | None]:
    """(the turn's text, its tool calls, the problem) of a LLaMA-Factory ``function_call`` turn: its value the JSON of
    a call, ``{"name": ..., "arguments": {...}}``, or of a list of them (parallel calls), as LLaMA-Factory's
    FunctionFormatter reads it; as OpenAI's ``tool_calls``. Text before the JSON (reasoning; LLaMA-Factory's
    thought_words, a ``<think>`` block) or around ``<tool_call>`` blocks of it (its tool_call_words) is the turn's
    text, which LLaMA-Factory writes before the calls and the chat template writes as the turn's content."""
    said, calls = _split_call(value) if isinstance(value, str) else ("", value)
    calls = [calls] if isinstance(calls, dict) else calls
    if not (
        isinstance(calls, list) and calls and all(isinstance(c, dict) and isinstance(c.get("name"), str) for c in calls)
    ):
        return (
            "",
            [],
            (
                'must hold the call as JSON, {"name": ..., "arguments": {...}} (or a list of such calls), after the turn\'s '
                f"text or in <tool_call> tags, as LLaMA-Factory reads it, not {value!r:.60}"
            ),
        )
    return (
        said,
        [{"type": "function", "function": {"name": c["name"], "arguments": c.get("arguments", {})}} for c in calls],
        None,
    )


# LLaMA-Factory's tool_call_words (its templates' default): a function_call turn's call between them, its text around
TOOL_CALL_BLOCK = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)


def _split_call(value: str) -> tuple[str, Any]:
    """(the text, the JSON value of the calls; None where there is none) of a function_call turn's value: its
    ``<tool_call>`` blocks' JSON, else the JSON that ends it (from the first ``{`` or ``[`` that starts it)."""
    if blocks := TOOL_CALL_BLOCK.findall(value):
        try:
            found = [json.loads(block) for block in blocks]
        except ValueError:
            return value, None
        return TOOL_CALL_BLOCK.sub("", value).strip(), [c for f in found for c in (f if isinstance(f, list) else [f])]
    for at, char in enumerate(value):
        if char in "{[":
            try:
                return value[:at].strip(), json.loads(value[at:])
            except ValueError:
                continue
    return value, None


CALL_ID_CHARS = string.ascii_letters + string.digits
CALL_ID_LENGTH = 9  # Mistral's templates refuse a call id, or a result's tool_call_id, of another length


def _with_call_ids(messages: list[dict]) -> None:
    """Give every tool call an ``id`` and every tool result the ``tool_call_id`` of the call it answers, where the
    data gives none (LLaMA-Factory's rows never do): Mistral's templates refuse a call without an id of 9 letters and
    digits and a result without its call's; others ignore them, or name a result's function by them (Gemma 4's). An
    id is drawn from the call's place in the row, name and arguments, so that a row renders alike in every run; the
    results after an assistant turn answer its calls in order."""
    answered: list[str] = []  # the ids of the calls the last assistant turn made that no result has answered yet
    n = 0
    for m in messages:
        if m["role"] == "assistant":
            calls = m.get("tool_calls") or []
            for k, call in enumerate(calls):
                if not call.get("id"):
                    calls[k] = {**call, "id": _call_id(n + k, call)}
            n += len(calls)
            answered = [call["id"] for call in calls]
        elif m["role"] == "tool":
            if m.get("tool_call_id") is None and answered:
                m["tool_call_id"] = answered[0]
            if m.get("tool_call_id") in answered:
                answered.remove(m["tool_call_id"])


def _call_id(n: int, call: dict) -> str:
    """A tool call's id of CALL_ID_LENGTH letters and digits, from its place ``n`` among the row's calls and what it
    calls."""
    function = call["function"]
    return _drawn_id(json.dumps([n, function["name"], function.get("arguments")], sort_keys=True, default=str))


def _drawn_id(said: str) -> str:
    """CALL_ID_LENGTH letters and digits drawn from ``said``: the same for the same text in every run."""
    digest = hashlib.sha256(said.encode()).digest()
    return "".join(CALL_ID_CHARS[b % len(CALL_ID_CHARS)] for b in digest[:CALL_ID_LENGTH])


def is_short_call_id(value) -> bool:
    """Whether a call id is CALL_ID_LENGTH letters and digits, as Mistral's format has them."""
    return isinstance(value, str) and len(value) == CALL_ID_LENGTH and all(c in CALL_ID_CHARS for c in value)


def short_call_ids(messages: list[dict]) -> list[dict]:
    """``messages`` with every tool call id, and every result's tool_call_id, that is not CALL_ID_LENGTH letters
    and digits (OpenAI's ``call_`` and 24 more, an index) replaced by one that is, for a chat template that refuses
    others (Mistral's). As vLLM serving a Mistral model shortens such ids (truncate_tool_call_ids), an id's last 9
    characters, where they are letters and digits; else (or where the row has them already) 9 drawn from it. The
    same id gets the same one, so a result keeps answering its call and a row renders alike in every run; no two
    ids of the row get the same one. Ids that are already short are kept."""
    found = [i for m in messages for i in _call_ids_of(m)]
    taken = {i for i in found if is_short_call_id(i)}
    new: dict[str, str] = {}  # an id as JSON text (an id may be a number) -> its replacement
    for value in found:
        said = json.dumps(value, default=str)
        if is_short_call_id(value) or said in new:
            continue
        tail, salt = str(value)[-CALL_ID_LENGTH:], 0
        drawn = tail if is_short_call_id(tail) else _drawn_id(said)
        while drawn in taken:  # the tail of another id, or (62^9 ids) a draw the row holds
            salt += 1
            drawn = _drawn_id(f"{said}#{salt}")
        new[said] = drawn
        taken.add(drawn)

    def renamed(value):
        return new.get(json.dumps(value, default=str), value)

    out = []
    for m in messages:
        if m.get("tool_calls"):
            m = {**m, "tool_calls": [{**c, "id": renamed(c.get("id"))} for c in m["tool_calls"]]}
        if m["role"] == "tool" and m.get("tool_call_id") is not None:
            m = {**m, "tool_call_id": renamed(m["tool_call_id"])}
        out.append(m)
    return out if new else messages


def _call_ids_of(message: dict) -> list:
    """The call ids a turn names: its calls', or the one a result answers."""
    if message["role"] == "tool":
        return [] if message.get("tool_call_id") is None else [message["tool_call_id"]]
    return [c.get("id") for c in message.get("tool_calls") or ()]


def _answered(messages: list[dict]) -> str | None:
    """The function a tool result answers: the one the assistant turn before it called, where it called one."""
    calls = messages[-1].get("tool_calls") if messages and messages[-1]["role"] == "assistant" else None
    return calls[0]["function"]["name"] if calls and len(calls) == 1 else None


def _system_key(record: dict) -> str:
    """The record's field of its system prompt: ``system`` (SlimOrca's, OpenHermes'), else OpenOrca's
    ``system_prompt`` (it was left out silently, the template's default system prompt trained in its place)."""
    return "system" if record.get("system") is not None or "system_prompt" not in record else "system_prompt"


def _with_system(row: Row, record: dict) -> Row:
    """``row`` with the record's top-level ``system`` prompt as its first turn, as SlimOrca's and OpenHermes'
    ShareGPT rows give it (the template's default system prompt was trained in its place); a conversational
    prompt-completion row's too, its completion a turn later."""
    key = _system_key(record)
    system = record.get(key)
    if system is None or row.problems or (isinstance(system, str) and not system.strip()):
        return row
    if not isinstance(system, str):
        row.problems.append(f"{key!r} is {_kind(system)}, not a string")
    elif any(m["role"] == "system" for m in row.messages):
        row.problems.append(f"a {key!r} field and a system turn both: keep one")
    else:
        row.messages.insert(0, {"role": "system", "content": system})
        row.completion_at += 1 if row.completion_at else 0
    return row


def _with_tools(row: Row, record: dict, wrap: bool = False) -> Row:
    """``row`` with the record's ``tools``: a list of function schemas, or its JSON (as TRL reads it; an empty
    string, LLaMA-Factory's "no tools", is none). ``wrap``: a bare schema (``{"name": ..., "parameters": ...}``,
    as LLaMA-Factory's rows give them) becomes ``{"type": "function", "function": schema}``, as LLaMA-Factory's tool
    formatters write it and chat templates expect it; an OpenAI-style row's are given to the template as they are,
    as TRL gives them."""
    tools = record.get("tools")
    if isinstance(tools, str):
        try:
            tools = json.loads(tools) if tools.strip() else None
        except ValueError:
            tools = "unreadable JSON"
    if tools is not None and not (isinstance(tools, list) and all(isinstance(t, dict) for t in tools)):
        row.problems.append(f"'tools' must be a list of function schemas (or its JSON), not {tools!r:.60}")
    elif tools:
        tools = [_no_nulls(t) for t in tools]
        row.tools = [
            t if not wrap or t.get("type") == "function" else {"type": "function", "function": t} for t in tools
        ]
    return row


def _no_nulls(value: Any) -> Any:
    """A tool's schema without its null fields: Arrow (a `datasets` Dataset, Parquet) stores the rows' tools as one
    struct type, every tool given every field and property any row's tool has, null where its own has none, which
    the chat template wrote into each schema (``"properties": {"city": {...}, "query": null, ...}``) for the model to
    learn; no JSON schema field is null but a default's or a const's, which a tool's parameters rarely hold."""
    if isinstance(value, dict):
        return {k: _no_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_no_nulls(v) for v in value]
    return value


def _prompt_completion(where: str, record: dict) -> Row:
    prompt, completion = record["prompt"], record["completion"]
    if isinstance(prompt, str) and isinstance(completion, str):
        if not completion.strip():
            return Row(where=where, format="prompt-completion", problems=["empty turn: 'completion' is empty"])
        if isinstance(system := record.get(key := _system_key(record)), str) and system.strip():
            return Row(  # left out silently: text has no turns to put it in
                where=where,
                format="prompt-completion",
                problems=[
                    f"a {key!r} field beside a text prompt and completion, which no chat template renders: write it "
                    f"into the 'prompt' text, or give 'prompt' and 'completion' as lists of turns (its system turn)"
                ],
            )
        return Row(where=where, format="prompt-completion", text=prompt + completion, completion_at=len(prompt))
    if isinstance(prompt, list) and isinstance(completion, list):
        row = _turns(where, "prompt-completion", prompt + completion, "role", "content", OPENAI_ROLES)
        row.completion_at = len(prompt)
        row = _with_tools(_with_system(row, record), record)
        if not row.problems and not any(m["role"] == "assistant" for m in row.messages[len(prompt) :]):
            row.problems.append("no assistant turn in 'completion': nothing to train on")
        return row
    kinds = f"'prompt' is {_kind(prompt)}, 'completion' {_kind(completion)}"
    return Row(
        where=where,
        format="prompt-completion",
        problems=[f"not a conversation: {kinds}; both must be text, or both lists of role/content turns"],
    )


def _alpaca(where: str, record: dict) -> Row:
    row = Row(where=where, format="alpaca")
    parts = {k: record.get(k) if record.get(k) is not None else "" for k in ("instruction", "input", "output")}
    for k, v in parts.items():
        if not isinstance(v, str):
            row.problems.append(f"not a conversation: '{k}' is {_kind(v)}, not a string")
    if row.problems:
        return row
    for k in ("instruction", "output"):
        if not parts[k].strip():
            row.problems.append(f"empty turn: '{k}' is empty")
    if row.problems:
        return row
    user = parts["instruction"] + ("\n\n" + parts["input"] if parts["input"].strip() else "")
    system = record.get(_system_key(record))
    if isinstance(system, str) and system.strip():
        row.messages.append({"role": "system", "content": system})
    history = record.get("history") or []  # LLaMA-Factory's earlier turns: [[query, response], ...], trained
    if not (isinstance(history, list) and all(_is_exchange(h) for h in history)):
        row.problems.append(
            "'history' must be a list of [question, answer] pairs of strings (the earlier turns, as LLaMA-Factory's "
            "Alpaca format gives them)"
        )
        return row
    for question, answer in history:
        row.messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    row.messages += [{"role": "user", "content": user}, {"role": "assistant", "content": parts["output"]}]
    return row


def _is_exchange(pair: Any) -> bool:
    return isinstance(pair, list) and len(pair) == 2 and all(isinstance(t, str) and t.strip() for t in pair)


def _kind(value) -> str:
    """What a JSON value is, in JSON's words: "a number", "a string", "an object"..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    kinds = {int: "a number", float: "a number", str: "a string", list: "a list", dict: "an object"}
    return kinds.get(type(value), f"a {type(value).__name__}")
