"""A CPU Adam build killed half way, then a ZeRO-Offload run on a GPU (run on the device machine, not in CI).

DeepSpeed compiles CPU Adam on a GPU node at a run's first use (its wheel carries no ops); a build killed half way
left torch's lock file and every later run waited on it until its time limit. Here: ``python -m
ftctl.trainer.op_build cpu_adam`` is started into a fresh TORCH_EXTENSIONS_DIR and SIGKILLed after --kill-after s (its
lock left); then a 3-step fft zero2_offload run (`torchrun --nproc-per-node 1 -m ftctl.trainer`, as the backends run
it) into the same directory, under a timeout. Recorded: whether the lock was there after the kill, the run's rc and
seconds, its lines about the lock and the build, and a second run's seconds (the op built: loaded, not compiled).

    python bench/op_build_gpu.py --out DIR [--kill-after 15]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.gpu_train import make_data  # noqa: E402
from bench.resume_gpu import make_model  # noqa: E402


def trainer_run(model_dir: Path, data: Path, out: Path, work: Path, env: dict, timeout_s: float) -> dict:
    from ftctl.plan import dump_run, make_plan
    from ftctl.spec import build

    spec = build(
        flags=dict(
            method="fft", model_name_or_path=str(model_dir), data_path=str(data), output_dir=str(out), gpus="1xH100"
        ),
        overrides=["strategy=zero2_offload", "max_steps=3", "save_steps=3", "global_batch_size=8", "resume=never"],
    )
    path = work / f"spec-{out.name}.json"
    path.write_text(dump_run(spec, make_plan(spec)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1"]
    t = time.time()
    try:
        proc = subprocess.run(
            [*cmd, "-m", "ftctl.trainer", "--spec", str(path)],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout_s,
        )
        rc, text = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        rc, text = "timeout", (e.stdout or b"").decode() + (e.stderr or b"").decode()
    lines = [ln for ln in text.splitlines() if "cpu_adam" in ln or "lock" in ln.lower()]
    return {"rc": rc, "s": round(time.time() - t, 1), "lines": lines[-12:], "tail": text[-2500:]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--kill-after", type=float, default=15.0)
    ap.add_argument("--work", default="/tmp/ftctl-opbuild")
    a = ap.parse_args()
    import torch

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(work / "ext")}
    row: dict = {"card": torch.cuda.get_device_name(0), "cores": os.cpu_count()}
    build = subprocess.Popen(
        [sys.executable, "-m", "ftctl.trainer.op_build", "cpu_adam"],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(a.kill_after)
    row["build_done_before_kill"] = build.poll() is not None
    os.killpg(build.pid, signal.SIGKILL)
    build.wait()
    locks = sorted(str(p.relative_to(work)) for p in (work / "ext").rglob("lock"))
    row["locks_left"] = locks
    model_dir = make_model(work)
    data = make_data(work / "data.json", rows=64)
    row["first"] = trainer_run(model_dir, data, work / "run1", work, env, 480)
    row["second"] = trainer_run(model_dir, data, work / "run2", work, env, 300)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "op-build-gpu.json").write_text(json.dumps(row, indent=1))
    print(
        json.dumps(
            {
                k: (v if k not in ("first", "second") else {x: v[x] for x in ("rc", "s", "lines")})
                for k, v in row.items()
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
