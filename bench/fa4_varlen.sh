#!/usr/bin/env bash
# The second of bench/fa4_stage.sh's two calls: join the halves, install, run bench/fa4_varlen.py into $OUT.
set -u
OUT=${OUT:?the device tool sets OUT}
[ -d .fa4a ] && [ -d .fa4b ] || { echo "missing .fa4a or .fa4b: run the first call (carry .fa4a) just before" >&2; exit 1; }
mkdir -p /tmp/fa4 && cat .fa4a/part.* .fa4b/part.* | xz -dc | tar -x -C /tmp/fa4 || exit 1
# pip --target does not run the cutlass DSL's .pth file: its packages go on the path here
export PYTHONPATH=/tmp/fa4/site:/tmp/fa4/site/nvidia_cutlass_dsl/dsl_packages:$PWD PYTHONUNBUFFERED=1
python3 bench/fa4_varlen.py --out "$OUT/fa4_varlen.json"
