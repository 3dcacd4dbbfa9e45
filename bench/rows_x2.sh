#!/usr/bin/env bash
# Issue 11's five rows in one device call on nvidia-h200-x2: two compare.py instances, one a GPU, each row's
# peer and ftctl on the same GPU (8B rows on GPU 0, 1B rows on GPU 1: each instance builds its own models).
# Returns one archive, $OUT/rows.tgz (the device tool returns 8 files a call), with each row's JSON, markdown
# and log; merge them here with `python bench/compare.py --out-dir DIR --merge .../*/<date>-h200-compare.json`.
#
#   run(kind="nvidia-h200-x2", carry=[".whl-multi"], timeout_s=600, command="bash bench/rows_x2.sh")
#
# ROWS0 / ROWS1 / PHASES / LIMIT0 / LIMIT1 override the defaults, EXTRA adds compare.py arguments (e.g.
# EXTRA="--steps 30"); WHEELS=none skips the install (BENCH_CPU=1 dry runs here: the same orchestration on CPU
# with tiny shapes); FA4=1 puts FlashAttention 4 on the path (staged: bench/fa4_stage.sh).
set -u
OUT=${OUT:?the device tool sets OUT}
ROWS0=${ROWS0:-qlora8b lora8b}
ROWS1=${ROWS1:-qlora1b lora1b fft1b}
PHASES=${PHASES:-ftctl,peer}
LIMIT0=${LIMIT0:-250}  # seconds a row on GPU 0 (an 8B row: ~30 s to build the model, ~140 s ftctl + peer)
LIMIT1=${LIMIT1:-150}
WORK=${WORK:-/tmp/rows}

if [ "${WHEELS:-.whl-multi}" != none ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site "${WHEELS:-.whl-multi}"/*.whl \
    || { echo "wheel install failed" >&2; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD
elif [ -d /tmp/site ] && [ -z "${BENCH_CPU:-}" ]; then  # a later call on the same warm machine: its install stays
  export PYTHONPATH=/tmp/site:$PWD
fi
if [ "${FA4:-0}" = 1 ]; then  # FlashAttention 4 staged by bench/fa4_stage.sh: the trainer's varlen kernels
  # shellcheck source=bench/fa4_site.sh
  source bench/fa4_site.sh || exit 1
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
rm -rf "$WORK" && mkdir -p "$WORK/r" "$OUT"

instance() {  # GPU, row limit, rows...
  local gpu=$1 limit=$2 row
  shift 2
  for row in "$@"; do
    # shellcheck disable=SC2086  # EXTRA splits into arguments
    CUDA_VISIBLE_DEVICES=$gpu timeout "$limit" python3 bench/compare.py --out-dir "$WORK/r/$row" --rows "$row" \
      --phases "$PHASES" --work "$WORK/w$gpu" --models "${MODELS:-/dev/shm}/ftctl-models-$gpu" ${EXTRA:-} \
      > "$WORK/r/$row.log" 2>&1
    echo "$row (GPU $gpu): exit $?"
  done
}

# shellcheck disable=SC2086  # the row lists split on spaces
instance 0 "$LIMIT0" $ROWS0 &
# shellcheck disable=SC2086
instance 1 "$LIMIT1" $ROWS1 &
wait
tar czf "$OUT/rows.tgz" -C "$WORK" r
grep -h "^| Llama" "$WORK"/r/*.log || true
