#!/usr/bin/env bash
# Time docker/build-flash-attn.sh on the device machine, inside one command's limit.
#
#   OUT=/some/dir DEADLINE=300 bash bench/flash_attn_build_h200.sh .fa/flash_attn-2.8.3.post2.tar.gz
#
# The build runs in its own session (setsid) with its log in $OUT; memory is sampled every 2 s.
# At DEADLINE seconds an unfinished build is stopped and its progress (objects compiled out of the
# total, from Ninja's [finished/total elapsed] status) is written to $OUT/summary.txt; a finished
# wheel is installed into /tmp/site and checked with bench/flash_attn_check.py.
set -uo pipefail
sdist=$1
out=${OUT:?set OUT}
deadline=${DEADLINE:-300}
export PYTHONUNBUFFERED=1 NINJA_STATUS='[%f/%t %es] '
export FLASH_ATTN_CUDA_ARCHS=${FLASH_ATTN_CUDA_ARCHS:-90} NVCC_THREADS=${NVCC_THREADS:-1}
summary=$out/summary.txt
{
    echo "date: $(date -u +%FT%TZ)"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "cxx11abi", torch._C._GLIBCXX_USE_CXX11_ABI)'
    nvcc --version | tail -n 2 | head -n 1
    echo "ninja $(ninja --version); cores $(nproc); $(grep -E '^Mem(Total|Available)' /proc/meminfo | tr -s ' ' | tr '\n' ' ')"
    echo "cgroup memory.max: $(cat /sys/fs/cgroup/memory.max 2>/dev/null || echo none)"
    echo "FLASH_ATTN_CUDA_ARCHS=$FLASH_ATTN_CUDA_ARCHS NVCC_THREADS=$NVCC_THREADS MAX_JOBS=${MAX_JOBS:-auto}"
} >"$summary" 2>&1

# flash-attn's setup.py imports wheel.bdist_wheel, which newer wheel releases dropped: carry 0.45
if ! python3 -c 'from wheel.bdist_wheel import bdist_wheel' 2>/dev/null && ls .fa/wheel-*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-deps --no-index --target /tmp/site-build .fa/wheel-*.whl
    export PYTHONPATH=/tmp/site-build${PYTHONPATH:+:$PYTHONPATH}
    echo "wheel.bdist_wheel missing: using the carried $(ls .fa/wheel-*.whl)" >>"$summary"
fi

start=$(date +%s)
setsid bash docker/build-flash-attn.sh "$sdist" /tmp/fa-wheel >"$out/build.log" 2>&1 &
pid=$!
peak_used=0 peak_rss=0 peak_proc=0
while kill -0 "$pid" 2>/dev/null && [ $(( $(date +%s) - start )) -lt "$deadline" ]; do
    used=$(awk '/^MemTotal:/ {t=$2} /^MemAvailable:/ {a=$2} END {print int((t-a)/1024)}' /proc/meminfo)
    # resident memory of the compilers (MiB): all of them together, and the largest one
    read -r rss proc < <(ps -eo rss=,comm= | awk '$2 ~ /^(cicc|ptxas|nvcc|cudafe\+\+|cc1plus|fatbinary|nvlink)$/ {s+=$1; if ($1>m) m=$1} END {print int(s/1024), int(m/1024)}')
    [ "$used" -gt "$peak_used" ] && peak_used=$used
    [ "$rss" -gt "$peak_rss" ] && peak_rss=$rss
    [ "$proc" -gt "$peak_proc" ] && peak_proc=$proc
    echo "$(( $(date +%s) - start )) used_mib=$used compilers_rss_mib=$rss largest_mib=$proc" >>"$out/memory.log"
    sleep 2
done
elapsed=$(( $(date +%s) - start ))
if kill -0 "$pid" 2>/dev/null; then
    state="stopped at the deadline"
    kill -- -"$pid" 2>/dev/null
    sleep 1
else
    wait "$pid"
    rc=$?
    state="finished, exit $rc"
fi
progress=$(grep -oE '^ *\[[0-9]+/[0-9]+ [0-9.]+s\]' "$out/build.log" | tail -n 1)
{
    echo "build: $state after ${elapsed} s; last ninja status: ${progress:-none}"
    grep -E '^\[build-flash-attn' "$out/build.log"
    echo "peak memory: machine used ${peak_used} MiB; compilers together ${peak_rss} MiB; largest one ${peak_proc} MiB"
    ls -l /tmp/fa-wheel 2>/dev/null
} >>"$summary"
grep -oE '^ *\[[0-9]+/[0-9]+ [0-9.]+s\]' "$out/build.log" >"$out/progress.txt"

if ls /tmp/fa-wheel/flash_attn-*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-deps --no-index --target /tmp/site /tmp/fa-wheel/flash_attn-*.whl
    PYTHONPATH=/tmp/site python3 bench/flash_attn_check.py --json "$out/check.json" >>"$summary" 2>&1
    echo "check exit: $?" >>"$summary"
fi
cat "$summary"
