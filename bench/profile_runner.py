"""ftctl's trainer on a spec with bench/compare.py's profiler over steps 6-8 (PROFILE_FIRST=N: N to N+2);
rank 0 writes the report.

What multi_gpu.py runs for a ``<case>@profile`` (one process, or under torchrun on every rank: each rank
profiles its own steps, and training stops after the last profiled one):

    python bench/profile_runner.py SPEC.json REPORT.json
    python -m torch.distributed.run --standalone --nproc-per-node 2 bench/profile_runner.py SPEC.json REPORT.json
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.compare import WARM, profile_callback  # noqa: E402
from ftctl.trainer import run  # noqa: E402


def main(argv: list[str]) -> int:
    spec_path, report = argv[0], Path(argv[1])
    into: dict = {}
    first = int(os.environ.get("PROFILE_FIRST", WARM + 1))
    callback = profile_callback(first, first + 2, into)
    train = run.train
    run.train = lambda spec, plan, callbacks=(), echo=print: train(spec, plan, [*callbacks, callback], echo)
    from ftctl.trainer.__main__ import main as trainer_main

    code = trainer_main(["--spec", spec_path])
    if os.environ.get("RANK", "0") == "0":
        report.write_text(json.dumps(into))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
