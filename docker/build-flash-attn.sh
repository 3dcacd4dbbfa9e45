#!/usr/bin/env bash
# Build the flash-attn wheel from its source distribution with Ninja, for the named GPU
# architectures only, against the torch (version, CUDA, C++ ABI) of the python that runs it.
#
#   build-flash-attn.sh SDIST_OR_VERSION OUT_DIR
#
# SDIST_OR_VERSION: a flash_attn-*.tar.gz, or a version that pip downloads from the index.
# Environment (all optional):
#   FLASH_ATTN_CUDA_ARCHS   flash-attn's own list, e.g. "90" or "80;90"      (default 80;90)
#   TORCH_CUDA_ARCH_LIST    torch's list for the same GPUs, e.g. "9.0"       (default from the above)
#   MAX_JOBS                parallel compile jobs (default: cores, and memory / FLASH_ATTN_GB_PER_JOB)
#   NVCC_THREADS            nvcc threads per job, one per architecture helps  (default 2)
#   FLASH_ATTN_GB_PER_JOB   memory one nvcc thread may take                    (default 5: on the H200
#                           16 jobs peaked at 65.7 GiB, single compilers at 6.7 GiB)
#   FLASH_ATTN_WHEEL_CACHE  a folder kept between builds (a BuildKit cache mount): a wheel for the
#                           same flash-attn, torch, CUDA, ABI, architectures and CPU (uname -m) is reused from it
#   PYTHON                  the python whose torch the wheel is built for    (default python3)
# A wheel built against another torch, CUDA or C++ ABI fails at import with an undefined symbol,
# so the wheel's local version names all of them: flash_attn-2.8.3.post2+cu130.torch2.13.abi1.sm90.
set -euo pipefail

if [ $# -ne 2 ]; then
    echo "usage: $0 SDIST_OR_VERSION OUT_DIR" >&2
    exit 2
fi
src=$1
out=$2
python=${PYTHON:-python3}
archs=${FLASH_ATTN_CUDA_ARCHS:-80;90}
nvcc_threads=${NVCC_THREADS:-2}
gb_per_job=${FLASH_ATTN_GB_PER_JOB:-5}
log() { echo "[build-flash-attn $(date -u +%H:%M:%S) UTC] $*"; }

command -v ninja >/dev/null || { echo "error: ninja is not on PATH: pip install ninja (a build without it takes hours)" >&2; exit 1; }
nvcc=${CUDA_HOME:-/usr/local/cuda}/bin/nvcc
[ -x "$nvcc" ] || nvcc=$(command -v nvcc) || { echo "error: nvcc not found: use a CUDA devel image or set CUDA_HOME" >&2; exit 1; }

# What the wheel must match: read from the torch that will import it.
read -r torch_version torch_cuda abi < <("$python" -c '
import torch
print(torch.__version__.split("+")[0], torch.version.cuda, torch._C._GLIBCXX_USE_CXX11_ABI)')
nvcc_cuda=$("$nvcc" --version | sed -n 's/.*release \([0-9]*\.[0-9]*\).*/\1/p')
if [ "${torch_cuda%%.*}" != "${nvcc_cuda%%.*}" ]; then
    echo "error: torch $torch_version is built for CUDA $torch_cuda but nvcc is CUDA $nvcc_cuda: use a devel image of CUDA ${torch_cuda%%.*}.x" >&2
    exit 1
fi
torch_mm=$(echo "$torch_version" | cut -d. -f1,2)
abi01=$([ "$abi" = True ] && echo 1 || echo 0)
# PEP 440 lower-cases a local version and reads '-' and '_' as '.': write it that way already
tag="cu$(echo "$torch_cuda" | tr -d .).torch${torch_mm}.abi${abi01}.$(echo "$archs" | tr ';' '\n' | sed 's/^/sm/' | tr -d '\n')"
export FLASH_ATTN_CUDA_ARCHS=$archs
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
    TORCH_CUDA_ARCH_LIST=$(echo "$archs" | sed 's/\([0-9]*\)\([0-9]\)/\1.\2/g')
fi
export TORCH_CUDA_ARCH_LIST

# One job's nvcc compiles the architectures NVCC_THREADS at a time, each about FLASH_ATTN_GB_PER_JOB.
n_archs=$(echo "$archs" | tr ';' '\n' | grep -c .)
per_job=$(( nvcc_threads < n_archs ? nvcc_threads : n_archs ))
if [ -z "${MAX_JOBS:-}" ]; then
    mem_kb=$(awk '/^MemAvailable:/ {print $2}' /proc/meminfo)
    limit=$(cat /sys/fs/cgroup/memory.max 2>/dev/null || echo max)
    if [ "$limit" != max ] && [ $(( limit / 1024 )) -lt "$mem_kb" ]; then mem_kb=$(( limit / 1024 )); fi
    by_mem=$(( mem_kb / 1024 / 1024 / (gb_per_job * per_job) ))
    by_cpu=$(( $(nproc) / per_job ))
    MAX_JOBS=$(( by_mem < by_cpu ? by_mem : by_cpu ))
    [ "$MAX_JOBS" -ge 1 ] || MAX_JOBS=1
    log "MAX_JOBS=$MAX_JOBS (memory: $(( mem_kb / 1024 / 1024 )) GiB / ($gb_per_job GiB x $per_job), cores: $(nproc) / $per_job)"
fi
export MAX_JOBS NVCC_THREADS=$nvcc_threads
log "flash-attn from $src for torch $torch_version, CUDA $torch_cuda (nvcc $nvcc_cuda), cxx11abi=$abi;" \
    "FLASH_ATTN_CUDA_ARCHS=$archs TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS NVCC_THREADS=$nvcc_threads"

mkdir -p "$out"
cache=${FLASH_ATTN_WHEEL_CACHE:-}
if [ -n "$cache" ]; then
    mkdir -p "$cache"
    case "$src" in *.tar.gz) want=$(basename "$src" .tar.gz | sed 's/^flash_attn-//') ;; *) want=$src ;; esac
    # this CPU's wheel only: one cache mount serves the linux/amd64 and linux/arm64 builds of a builder alike
    hit=$(find "$cache" -maxdepth 1 -name "flash_attn-${want}+${tag}-*-linux_$(uname -m).whl" | sort | tail -n 1)
    if [ -n "$hit" ]; then
        log "reusing $hit from the wheel cache"
        cp "$hit" "$out/"
        exit 0
    fi
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ ! -f "$src" ]; then
    # --no-build-isolation: reading the sdist's metadata imports torch, the one installed here
    FLASH_ATTENTION_SKIP_CUDA_BUILD=TRUE "$python" -m pip download --no-deps --no-binary :all: \
        --no-build-isolation -d "$work" "flash-attn==$src"
    src=$(ls "$work"/flash_attn-*.tar.gz)
fi
tar -xzf "$src" -C "$work"
tree=$(find "$work" -mindepth 1 -maxdepth 1 -type d -name 'flash_attn-*')
# flash-attn 2.8's sdist carries an early preview of FlashAttention 4 (flash_attn/cute, 0.1.0) that its
# wheel would install under the very paths flash-attn-4 owns: either one would overwrite the other's files
if [ -d "$tree/flash_attn/cute" ]; then
    rm -rf "$tree/flash_attn/cute"
    log "left out flash_attn/cute (FlashAttention 4's preview: pip install 'ftctl[fa4]' installs FA4 itself)"
fi

start=$(date +%s)
# FORCE_BUILD: never fetch a prebuilt wheel (it would be built for another torch); the local
# version makes the wheel's name say what it was built against.
(cd "$tree" && FLASH_ATTENTION_FORCE_BUILD=TRUE FLASH_ATTN_LOCAL_VERSION=$tag \
    "$python" -m pip wheel --no-deps --no-build-isolation -v -w "$out" .)
log "built in $(( $(date +%s) - start )) s with MAX_JOBS=$MAX_JOBS: $(ls "$out"/flash_attn-*.whl)"
if [ -n "$cache" ]; then
    cp "$out"/flash_attn-*+"$tag"-*.whl "$cache/"
fi
