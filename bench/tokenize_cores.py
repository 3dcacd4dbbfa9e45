"""Tokenizing a large ShareGPT file on one process and on every core of the machine (device machine's CPUs; not CI).

prepare_data (ftctl.trainer.data) with num_proc=1 and with num_proc=None (the trainer's default: one process a
2,000 rows, at most one a core), on the same generated conversations and tokenizer, in one call: wall seconds,
rows/s and whether the token ids and labels are the same.

    python3 bench/tokenize_cores.py --out DIR --tokenizer DIR [--rows 40000]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_rows(path: Path, rows: int) -> Path:
    rng = random.Random(0)
    words = "the of model data train token layer batch memory value ship code answer night river why how".split()
    out = []
    for i in range(rows):
        turns = []
        for _ in range(rng.randint(1, 3)):
            turns.append({"from": "human", "value": " ".join(rng.choices(words, k=rng.randint(10, 60)))})
            turns.append({"from": "gpt", "value": " ".join(rng.choices(words, k=rng.randint(40, 300)))})
        out.append({"id": str(i), "conversations": turns})
    path.write_text(json.dumps(out))
    return path


def digest(dataset) -> str:
    h = hashlib.blake2b(digest_size=16)
    for col in ("input_ids", "labels"):
        for row in dataset[col]:
            h.update(json.dumps(row).encode())
    return h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--rows", type=int, default=40_000)
    a = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # as launch sets it for the trainer
    from transformers import AutoTokenizer

    from ftctl.trainer import data

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    path = make_rows(Path("/tmp/tokenize-cores.json"), a.rows)
    tok = AutoTokenizer.from_pretrained(a.tokenizer)
    result = {"rows": a.rows, "bytes": path.stat().st_size, "cores": len(os.sched_getaffinity(0))}
    for name, num_proc in (("one", 1), ("all", None)):
        t = time.monotonic()
        report, dataset = data.prepare_data(str(path), tok, 2048, num_proc=num_proc)
        s = time.monotonic() - t
        result[name] = {
            "s": round(s, 1),
            "rows_per_s": round(len(dataset) / s),
            "rows": len(dataset),
            "digest": digest(dataset),
            "errors": len(report.errors),
        }
        print(name, result[name], flush=True)
    result["speedup"] = round(result["one"]["s"] / result["all"]["s"], 2)
    result["same"] = result["one"]["digest"] == result["all"]["digest"]
    print(json.dumps(result), flush=True)
    (out / "tokenize_cores.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
