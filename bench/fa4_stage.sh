#!/usr/bin/env bash
# FlashAttention 4 (flash-attn-4, CuTe DSL: pure Python, its kernels compiled at first use) for the device
# machine, staged for bench/fa4_varlen.py and the trainer's rows. Its CUTLASS DSL libraries compress to
# ~64.5 MiB, over one call's carry (64 MiB with the working tree), so the staged site is cut into two halves,
# .fa4a and .fa4b (git-ignored), for two calls back to back: the first carries .fa4a and copies it out of the
# working tree (a path carried by one call and not by the next is removed there; /tmp stays while the machine
# is warm), the second carries .fa4b and joins them (bench/fa4_site.sh).
#   usage (from the project's root, ~3 minutes here, mostly xz): bash bench/fa4_stage.sh
#   then: run(carry=[".fa4a"], command="mkdir -p /tmp/fa4p && cp .fa4a/part.00 /tmp/fa4p/")
#   and at once: run(carry=[".fa4b"], command="bash bench/fa4_varlen.sh")
#   (or carry=[".fa4b", ".whl-rows"], command="FA4=1 WHEELS=.whl-rows ... bash bench/rows_x2.sh")
# Versions as read from the wheels on 2026-12-01: flash-attn-4 4.0.0b36 needs nvidia-cutlass-dsl >= 4.6.2,
# quack-kernels, apache-tvm-ffi < 0.2 and torch-c-dlpack-ext; one CUDA flavour of cutlass (cu13 for torch cu130).
set -euo pipefail
# the version the trainer's `fa4` extra pins (pyproject.toml owns it)
fa4=$(grep -o 'flash-attn-4\[cu13\]==[^"]*' pyproject.toml | cut -d= -f3)
[ -n "$fa4" ] || { echo "no flash-attn-4 pin in pyproject.toml's fa4 extra" >&2; exit 1; }
wheels=.fa4-wheels stage=$(mktemp -d)
for d in "$wheels" .fa4a .fa4b; do grep -qxF "/$d/" .git/info/exclude 2>/dev/null || echo "/$d/" >> .git/info/exclude; done
mkdir -p "$wheels"
python3 -m pip download -q --no-deps --pre --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 -d "$wheels" \
  "flash-attn-4==$fa4" nvidia-cutlass-dsl==4.8.1 nvidia-cutlass-dsl-libs-base==4.8.1 \
  nvidia-cutlass-dsl-libs-core==4.8.1 nvidia-cutlass-dsl-libs-cu13==4.8.1 quack-kernels==0.6.5 \
  apache-tvm-ffi==0.1.15.post2 torch-c-dlpack-ext==0.1.5
python3 -m pip install -q --no-deps --no-compile --target "$stage/site" --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 "$wheels"/*.whl
# what a run never loads: the DSL's other backend, link-time stubs, static libraries and headers
rm -rf "$stage"/site/nvidia_cutlass_dsl/dsl_packages/iket
find "$stage/site" \( -path '*/lib/stubs' -o -name include -type d \) -prune -exec rm -rf {} +
find "$stage/site" -name '*.a' -delete
tar -C "$stage" -cf - site | xz -9e -T2 > "$stage/site.tar.xz"
rm -rf .fa4a .fa4b && mkdir .fa4a .fa4b
half=$(( ($(stat -c %s "$stage/site.tar.xz") + 1) / 2 ))
split -b "$half" -d "$stage/site.tar.xz" "$stage/part."
mv "$stage/part.00" .fa4a/ && mv "$stage/part.01" .fa4b/
rm -rf "$stage"
du -sh .fa4a .fa4b
