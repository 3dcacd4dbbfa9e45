"""Review 60's findings in the streamed reader (ftctl/trainer/formats.py), each on real files:

1. _head, which finds a file's first line, joined the blocks read so far and searched them again from the start at
   every block: a one-line file (a JSON written by json.dump, 207 MB: 17-29 s in _head alone) cost the square of
   its size. Counted here as the bytes its line-end search reads, not timed;
2. a file that failed partway (load_rows keeps none of its rows) left its conversations counted: a tokenizer without
   a chat template was given Vicuna's, and noted, where no conversation trained."""

from __future__ import annotations

import gzip
import json

from ftctl.trainer import formats


def test_finding_a_first_line_reads_each_block_once(monkeypatch):
    real = formats._LINE_END

    class Counting:
        searched = 0

        def search(self, text, pos=0):
            Counting.searched += len(text) - pos
            return real.search(text, pos)

    monkeypatch.setattr(formats, "_LINE_END", Counting())
    blocks = [b"  \n\t"] + [b"x" * 1024] * 300 + [b"x\ny"]  # a blank start, then one long line
    head = formats._head(iter(blocks))
    assert head == b"".join(blocks)
    assert Counting.searched <= 2 * len(head), Counting.searched  # was ~150 times the file
    assert formats._head(iter([b"\xef\xbb\xbf", b" ", b'{"a": 1}\n', b"rest"])) == b'\xef\xbb\xbf {"a": 1}\n'


def test_a_file_that_fails_partway_takes_back_its_conversations(tmp_path, monkeypatch):
    monkeypatch.setattr(formats, "READ_BLOCK", 4096)  # several blocks of rows before the damage, as 8 MB ones are
    row = {"messages": [{"role": "user", "content": "hi " * 20}, {"role": "assistant", "content": "yo " * 20}]}
    bad = tmp_path / "a.jsonl.gz"
    bad.write_bytes(gzip.compress("".join(json.dumps(row) + "\n" for _ in range(2000)).encode()) + b"garbage!")
    text = tmp_path / "b.jsonl"
    text.write_text("".join(json.dumps({"text": f"plain {i}"}) + "\n" for i in range(3)))
    _, rows = formats.load_rows(f"{bad},{text}")
    assert len(rows) == 4 and rows[0].problems and all(r.text for r in rows[1:]), [r.where for r in rows]
    assert rows.conversations == 0 and rows.reasoning == set()
    # a file that reads whole still counts its conversations
    good = tmp_path / "c.jsonl"
    good.write_text(json.dumps(row) + "\n")
    assert formats.load_rows(f"{good},{text}")[1].conversations == 1
