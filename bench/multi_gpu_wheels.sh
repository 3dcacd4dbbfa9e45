#!/usr/bin/env bash
# The wheels bench/multi_gpu.py needs on the GPU machine, in .whl-multi (git-ignored), under the 64 MiB
# a device call may carry: ../shared/gpu-wheels.sh's set with bitsandbytes cut to one CUDA build, plus
# DeepSpeed (built here as a pure-Python wheel; its CUDA ops compile there at first use) and what
# DeepSpeed imports that the device image lacks (pydantic, msgpack, einops).
#   usage (from the project's root): bash bench/multi_gpu_wheels.sh
set -euo pipefail
dir=.whl-multi
# gpu-wheels.sh builds DeepSpeed with "python3 -m pip wheel", which needs torch: the project's venv has it
PATH="$PWD/.venv/bin:$PATH" WITH_DEEPSPEED=1 bash /work/shared/gpu-wheels.sh .whl
mkdir -p "$dir"
grep -qxF "/$dir/" .git/info/exclude 2>/dev/null || echo "/$dir/" >> .git/info/exclude
cp .whl/*.whl "$dir"/
# bitsandbytes (the qlora cases) without its libraries for other CUDA/ROCm builds: 42 MB -> ~4 MB, only
# the one torch cu130 loads (BNB_CUDA, default 130) and the CPU one; its RECORD lists what is left
bnb=$(ls "$dir"/bitsandbytes-*.whl)
python3 - "$bnb" "${BNB_CUDA:-130}" <<'PY'
import os, sys, zipfile
src, cuda = sys.argv[1], sys.argv[2]
keep = lambda n: not (n.startswith("bitsandbytes/libbitsandbytes_") and n.split("_", 1)[1] not in (f"cuda{cuda}.so", "cpu.so"))
with zipfile.ZipFile(src) as z, zipfile.ZipFile(src + ".tmp", "w", zipfile.ZIP_DEFLATED) as out:
    for i in z.infolist():
        if not keep(i.filename):
            continue
        data = z.read(i)
        if i.filename.endswith(".dist-info/RECORD"):
            data = b"\n".join(l for l in data.split(b"\n") if keep(l.split(b",")[0].decode()))
        out.writestr(i, data)
os.replace(src + ".tmp", src)
PY
plat=()
for p in manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do plat+=(--platform "$p"); done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${plat[@]}" -d "$dir" \
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
  msgpack==1.2.4 einops==0.8.2 hjson==3.1.0 py-cpuinfo==9.0.0
du -sh "$dir"; ls "$dir"
