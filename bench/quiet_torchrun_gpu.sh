#!/usr/bin/env bash
# The launch line Slurm and docker jobs run (python3 -m ftctl.trainer.torchrun, torchrun's own arguments) on a GPU
# machine's torch: a tiny LoRA run that finishes, and one whose data is missing, each beside plain torchrun's
# output of the same failure. Not a benchmark: what the log says. Writes $OUT/{ok,fail,fail-plain}.log.
#   usage on the device: bash bench/quiet_torchrun_gpu.sh   (PYTHONPATH with trl, datasets... as gpu-wheels.sh says)
set -uo pipefail
OUT=${OUT:-/tmp/quiet-torchrun}
mkdir -p "$OUT"
python3 - "$OUT" <<'PY'
import sys
from pathlib import Path

from ftctl.plan import dump_run, make_plan
from ftctl.spec import build
from tests.tiny_fixtures import make_tiny_model_dir

out = Path(sys.argv[1])
model = make_tiny_model_dir(out / "tiny")
for name, data in (("ok", "builtin:demo"), ("fail", str(out / "missing.json"))):
    spec = build({"method": "lora", "gpus": "1xH200", "model_name_or_path": str(model), "data_path": data,
                  "output_dir": str(out / name / "run"), "max_steps": 5, "save_steps": 5, "model_max_length": 256,
                  "global_batch_size": 4, "resume": "never"})
    (out / name).mkdir(exist_ok=True)
    (out / name / "spec.json").write_text(dump_run(spec, make_plan(spec)))
PY
line=(--nnodes 1 --nproc-per-node 1 --rdzv-backend c10d --rdzv-endpoint 127.0.0.1:29611 --rdzv-id smoke -m ftctl.trainer)
python3 -m ftctl.trainer.torchrun "${line[@]}" --spec "$OUT/ok/spec.json" >"$OUT/ok.log" 2>&1
echo "ok: exit $?"
python3 -m ftctl.trainer.torchrun "${line[@]}" --spec "$OUT/fail/spec.json" >"$OUT/fail.log" 2>&1
echo "fail: exit $?"
python3 -m torch.distributed.run "${line[@]}" --spec "$OUT/fail/spec.json" >"$OUT/fail-plain.log" 2>&1
echo "fail-plain: exit $?"
wc -l "$OUT"/*.log
