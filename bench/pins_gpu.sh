#!/usr/bin/env bash
# Two library sets on one GPU, same call (bench/NOTES.md v86-v87): .whl-old and .whl-new (transformers/accelerate
# wheels, git-ignored) each over .whl-multi (bench/multi_gpu_wheels.sh), `multi_gpu.py` cases with each; writes
# $OUT/summary.json (per set and case: versions, rc, tokens/s, peak, losses).  usage: bash bench/pins_gpu.sh CASES
# WORK=/tmp/b: both sets train the one random model the first set builds there (each set builds its own otherwise)
set -x
cases=${1:-lora:1,qlora:1,fsdp:1}
I="python3 -m pip install -q --no-index --no-deps --no-compile --upgrade"
$I --target /tmp/site .whl-multi/*.whl && $I --target /tmp/old .whl-old/*.whl && $I --target /tmp/new .whl-new/*.whl || exit 1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/card.txt"
case "$(nvidia-smi --query-gpu=name --format=csv,noheader)" in *H100*) export BENCH_TIER=H100 ;; esac
unset HF_HUB_OFFLINE
for v in old new; do
  PYTHONPATH=/tmp/$v:/tmp/site:$PWD timeout 280 python3 bench/multi_gpu.py --out "/tmp/res-$v" --steps 12 --no-netcheck \
    --cases "$cases" --work "${WORK:-/tmp/b-$v}" --budget-s 600 > "$OUT/$v.log" 2>&1
  echo "$v rc $?"
done
python3 - "$OUT/summary.json" <<'PY'
import json, sys
out = {}
for v in ("old", "new"):
    try:
        d = json.load(open(f"/tmp/res-{v}/multi_gpu.json"))
    except OSError as e:
        out[v] = {"error": str(e)}
        continue
    keep = ("case", "tokens_per_s", "peak_gib", "plan_peak_gib", "losses", "final_loss", "wall_s", "error", "attention")
    out[v] = {k: d.get(k) for k in ("card", "torch", "transformers", "accelerate", "trl", "bitsandbytes")}
    out[v]["rows"] = [{k: r.get(k) for k in keep} for r in d["rows"]]
json.dump(out, open(sys.argv[1], "w"), indent=1)
for v in out:
    for r in out[v].get("rows", []):
        print(v, r["case"], r["tokens_per_s"], r["peak_gib"], (r["error"] or "")[-200:])
PY
