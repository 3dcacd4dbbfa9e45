"""The trainer's data step's memory on CPU (task 289; explore56 items 2 and 15): the peak RSS of reading a data file's
rows (formats.load_rows) and of the whole prepare_data (read, check, tokenize; the forked tokenizing processes'
largest RSS beside it), each in a fresh process, with the tests' tiny tokenizer.

    .venv/bin/python bench/data_memory289.py --rows 100000 read              # generated ShareGPT JSON Lines in /tmp
    .venv/bin/python bench/data_memory289.py --data /tmp/e56/big.jsonl read  # explore56's 300k rows, 856 MB
    .venv/bin/python bench/data_memory289.py --rows 30000 prepare --num-proc 2
    .venv/bin/python bench/data_memory289.py --rows 100000 --json read       # the same rows as one JSON list (task 294)
    .venv/bin/python bench/data_memory289.py --rows 50000 build              # build_dataset with a cache (task 295)

Prints one JSON line: the file's size, the peak RSS of the step over the process's RSS before it (VmHWM, reset
before the step), the RSS still held after it (the rows held), the seconds it took, and for prepare the tokenizing
processes' largest RSS (getrusage's children), and for build (build_dataset with a cache directory in /tmp, as the trainer's: read,
tokenize, write the cache entry, read it back memory-mapped) the tokens kept. Generated rows: explore56's shape (ShareGPT, 1-5 exchanges, a
Pareto-tailed answer length, a fifth with a top-level system), seeded.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = "the of and to in is that for it as was with be by on not he this are or his from at which but have".split()


def generate(path: str, rows: int, seed: int = 289, as_list: bool = False) -> None:
    """JSON Lines, or with ``as_list`` the same rows as one JSON list (ShareGPT's, FastChat's .json: one line)."""
    rng = random.Random(seed)
    with open(path + ".new", "w") as f:
        f.write("[" if as_list else "")
        for i in range(rows):
            turns = []
            for _ in range(rng.randint(1, 5)):
                question = " ".join(rng.choices(WORDS, k=rng.randint(5, 40)))
                answer = " ".join(rng.choices(WORDS, k=min(3000, int(40 * rng.paretovariate(1.5)))))
                turns += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
            row = {"id": f"r{i}", "conversations": turns}
            if rng.random() < 0.2:
                row["system"] = "You are a helpful assistant."
            f.write((", " if i else "") + json.dumps(row) if as_list else json.dumps(row) + "\n")
        f.write("]" if as_list else "")
    os.replace(path + ".new", path)


_STEP = r"""
import json, os, resource, sys, time
sys.path.insert(0, os.path.join(sys.argv[1], "tests"))
def rss():
    status = open("/proc/self/status").read()
    return [int(status.split(k + ":")[1].split()[0]) * 1024 for k in ("VmRSS", "VmHWM")]
step, path, num_proc, max_length = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
from ftctl.trainer import data, formats  # noqa: F401 (imported before: not the step's memory)
import datasets, pyarrow  # noqa: F401
tokenizer = None
if step in ("prepare", "build"):
    from tiny_fixtures import make_tiny_tokenizer
    tokenizer = make_tiny_tokenizer()
before, _ = rss()
open("/proc/self/clear_refs", "w").write("5")
started = time.monotonic()
if step == "read":
    files, rows = formats.load_rows(path)
    count = len(rows)
elif step == "build":
    import tempfile
    stats = []
    dataset = data.build_dataset(path, tokenizer, max_length, num_proc=num_proc, stats=stats,
                                 cache_dir=tempfile.mkdtemp(prefix="data_memory295-"))
    count, rows = stats[0].rows, dataset
    tokens = stats[0].tokens
else:
    report, dataset = data.prepare_data(path, tokenizer, max_length, num_proc=num_proc, read_first=True)
    count = report.rows_read
    rows = (report, dataset)
took = time.monotonic() - started
tokens = locals().get("tokens", 0)
now, peak = rss()
children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
print(json.dumps({"step": step, "rows": count, "file_mb": os.path.getsize(path) >> 20, "peak_mb": (peak - before) >> 20,
                  "held_mb": (now - before) >> 20, "seconds": round(took, 1), "children_peak_mb": children >> 20,
                  **({"tokens": tokens} if tokens else {})}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=("read", "prepare", "build"))
    parser.add_argument("--data", help="a data file (default: generated, --rows of them)")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--json", action="store_true", help="generated rows as one JSON list (.json), not JSON Lines")
    parser.add_argument("--num-proc", type=int, default=1)
    parser.add_argument("--max-length", type=int, default=512)
    args = parser.parse_args()
    path = args.data or f"/tmp/data_memory289-{args.rows}.json{'' if args.json else 'l'}"
    if not args.data and not os.path.exists(path):
        generate(path, args.rows, as_list=args.json)
    done = subprocess.run(
        [sys.executable, "-c", _STEP, REPO, args.step, path, str(args.num_proc), str(args.max_length)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    sys.stderr.write(done.stderr[-3000:])
    print(done.stdout.strip())
    sys.exit(done.returncode)


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    main()
