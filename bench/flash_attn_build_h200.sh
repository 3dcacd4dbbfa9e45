#!/usr/bin/env bash
# Time docker/build-flash-attn.sh on the device machine, across back-to-back device commands.
#
#   bash bench/flash_attn_build_h200.sh start .fa/flash_attn-2.8.3.post2.tar.gz   # returns at once
#   ...other commands on the same (warm) machine; the build keeps running...
#   OUT=/some/dir bash bench/flash_attn_build_h200.sh collect [WAIT_S]
#
# start: the build runs in its own session (setsid: it outlives the command while the machine is
# held), niced and on the cores of FA_CPUS (default: all) so that benchmarks beside it keep theirs;
# memory is sampled every 2 s. Its state lives in /tmp/fa-run.
# collect: waits up to WAIT_S (default 0) for the build, writes $OUT/summary.txt (wall time, Ninja's
# progress [finished/total elapsed], peak memory) with the logs; a finished wheel is installed into
# /tmp/site and checked on the GPU with bench/flash_attn_check.py ($OUT/check.json).
set -uo pipefail
state=/tmp/fa-run
mode=${1:?usage: $0 start SDIST | collect [WAIT_S]}

sample() {  # memory every 2 s while the build runs; peaks in $state/peaks
    local peak_used=0 peak_rss=0 peak_proc=0 used rss proc
    while [ ! -e "$state/rc" ]; do
        used=$(awk '/^MemTotal:/ {t=$2} /^MemAvailable:/ {a=$2} END {print int((t-a)/1024)}' /proc/meminfo)
        # resident memory of the compilers (MiB): all of them together, and the largest one
        read -r rss proc < <(ps -eo rss=,comm= | awk '$2 ~ /^(cicc|ptxas|nvcc|cudafe\+\+|cc1plus|fatbinary|nvlink)$/ {s+=$1; if ($1>m) m=$1} END {print int(s/1024), int(m/1024)}')
        [ "$used" -gt "$peak_used" ] && peak_used=$used
        [ "$rss" -gt "$peak_rss" ] && peak_rss=$rss
        [ "$proc" -gt "$peak_proc" ] && peak_proc=$proc
        echo "$(( $(date +%s) - $(cat "$state/start") )) used_mib=$used compilers_rss_mib=$rss largest_mib=$proc" >>"$state/memory.log"
        echo "machine used ${peak_used} MiB; compilers together ${peak_rss} MiB; largest one ${peak_proc} MiB" >"$state/peaks"
        sleep 2
    done
}

case $mode in
start)
    sdist=${2:?usage: $0 start SDIST}
    rm -rf "$state" /tmp/fa-wheel && mkdir -p "$state"
    export PYTHONUNBUFFERED=1 NINJA_STATUS='[%f/%t %es] '
    export FLASH_ATTN_CUDA_ARCHS=${FLASH_ATTN_CUDA_ARCHS:-90} NVCC_THREADS=${NVCC_THREADS:-1}
    cpus=${FA_CPUS:-0-$(( $(nproc) - 1 ))}
    {
        echo "date: $(date -u +%FT%TZ)"
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
        python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "cxx11abi", torch._C._GLIBCXX_USE_CXX11_ABI)'
        nvcc --version | tail -n 2 | head -n 1
        echo "ninja $(ninja --version); cores $(nproc); build on cores $cpus at nice 10; $(grep -E '^Mem(Total|Available)' /proc/meminfo | tr -s ' ' | tr '\n' ' ')"
        echo "cgroup memory.max: $(cat /sys/fs/cgroup/memory.max 2>/dev/null || echo none)"
        echo "FLASH_ATTN_CUDA_ARCHS=$FLASH_ATTN_CUDA_ARCHS NVCC_THREADS=$NVCC_THREADS MAX_JOBS=${MAX_JOBS:-auto}"
    } >"$state/summary.txt" 2>&1
    # flash-attn's setup.py imports wheel.bdist_wheel, which newer wheel releases dropped: carry 0.45
    if ! python3 -c 'from wheel.bdist_wheel import bdist_wheel' 2>/dev/null && ls .fa/wheel-*.whl >/dev/null 2>&1; then
        python3 -m pip install -q --no-deps --no-index --target /tmp/site-build .fa/wheel-*.whl
        export PYTHONPATH=/tmp/site-build${PYTHONPATH:+:$PYTHONPATH}
        echo "wheel.bdist_wheel missing: using the carried $(ls .fa/wheel-*.whl)" >>"$state/summary.txt"
    fi
    date +%s >"$state/start"
    # the sdist is copied out of the repo: the next command's copy of the working tree may replace it
    cp "$sdist" "$state/"
    setsid nice -n 10 taskset -c "$cpus" bash -c \
        "bash docker/build-flash-attn.sh '$state/$(basename "$sdist")' /tmp/fa-wheel >'$state/build.log' 2>&1; echo \$? >'$state/rc'" \
        </dev/null >/dev/null 2>&1 &
    # the script itself is copied too: the sampler must not read a file the next command replaces
    cp "$0" "$state/run.sh"
    setsid bash "$state/run.sh" sample </dev/null >/dev/null 2>&1 &
    sleep 5
    cat "$state/summary.txt"
    tail -n 3 "$state/build.log"
    ;;
sample)
    sample
    ;;
collect)
    out=${OUT:?set OUT}
    wait_s=${2:-0}
    [ -e "$state/start" ] || { echo "no build was started on this machine (it went back?)"; exit 1; }
    t0=$(date +%s)
    while [ ! -e "$state/rc" ] && [ $(( $(date +%s) - t0 )) -lt "$wait_s" ]; do sleep 5; done
    start=$(cat "$state/start")
    if [ -e "$state/rc" ]; then
        state_line="finished, exit $(cat "$state/rc"), after $(( $(stat -c %Y "$state/rc") - start )) s"
    else
        state_line="still running after $(( $(date +%s) - start )) s"
    fi
    progress=$(grep -oE '^ *\[[0-9]+/[0-9]+ [0-9.]+s\]' "$state/build.log" | tail -n 1)
    {
        echo "build: $state_line; last ninja status: ${progress:-none}"
        grep -E '^\[build-flash-attn' "$state/build.log"
        echo "peak memory: $(cat "$state/peaks" 2>/dev/null)"
        ls -l /tmp/fa-wheel 2>/dev/null
    } >>"$state/summary.txt"
    grep -oE '^ *\[[0-9]+/[0-9]+ [0-9.]+s\]' "$state/build.log" >"$state/progress.txt"
    cp "$state"/summary.txt "$state"/build.log "$state"/memory.log "$state"/progress.txt "$out/" 2>/dev/null
    if ls /tmp/fa-wheel/flash_attn-*.whl >/dev/null 2>&1; then
        python3 -m pip install -q --no-deps --no-index --target /tmp/site /tmp/fa-wheel/flash_attn-*.whl
        python3 bench/flash_attn_check.py --json "$out/check.json" >>"$out/summary.txt" 2>&1
        echo "check exit: $?" >>"$out/summary.txt"
    fi
    cat "$out/summary.txt"
    ;;
*)
    echo "usage: $0 start SDIST | collect [WAIT_S]" >&2
    exit 2
    ;;
esac
