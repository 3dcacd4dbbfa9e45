#!/usr/bin/env bash
# The second of bench/fa4_stage.sh's two calls: FlashAttention 4's site (bench/fa4_site.sh), then
# bench/fa4_varlen.py into $OUT.
set -u
OUT=${OUT:?the device tool sets OUT}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
# shellcheck source=bench/fa4_site.sh
source bench/fa4_site.sh || exit 1
python3 bench/fa4_varlen.py --out "$OUT/fa4_varlen.json"
