"""Where a full fine-tune under FSDP2 on one GPU hits an illegal memory access (v91: CUBLAS_STATUS_EXECUTION_FAILED
right after a checkpoint's optimizer state was saved, with evaluations every 4 steps). Each variant is its own
`torchrun -m ftctl.trainer` run of best_fsdp_gpu's model and rows, 8 steps, CUDA_LAUNCH_BLOCKING=1; its whole stderr is
kept in --out (run on the device machine, not in CI).

    python bench/fsdp_eval_probe.py --out DIR [--variants save+eval,eval,save,save+eval@single] [--nproc N] [--method fft|sft|lora]

A variant's +trlhead takes ftctl's LM head off (TRL's fused head), +unfixed takes lm_head.head_ran's call off (v95).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.best_fsdp_gpu import cycle_rows  # noqa: E402
from bench.resume_gpu import make_model  # noqa: E402

PATCHES = {  # +NAME: a line run in each trainer process
    "trlhead": "h.usable = lambda model: False",  # ftctl's LM head off: TRL's fused head
    "unfixed": "h.head_ran = lambda head: None",  # the head's FSDP2 group left mid-forward (before v95's fix)
}
GROUP_WARNING = "did not run forward before backward"  # torch's, where a group's forward did not end
VARIANTS = {  # name: overrides (strategy fsdp unless @single)
    "save+eval": ["save_steps=4", "eval_steps=4"],
    "eval": ["save_steps=1000", "eval_steps=4"],
    "save": ["save_steps=4"],  # no held-out rows: no evaluation
    "save+eval+best": ["save_steps=4", "eval_steps=4", "load_best_model_at_end=true"],
}


def run(name: str, model: Path, data: Path, held: Path, work: Path, out: Path, nproc: int, method: str) -> dict:
    from ftctl.plan import dump_run, make_plan
    from ftctl.spec import build

    base, _, strategy = name.partition("@")
    patches = [p for p in PATCHES if base.endswith(f"+{p}")]  # each via a sitecustomize in the trainer's processes
    for p in patches:
        base = base.removesuffix(f"+{p}")
    target = work / f"{method}-{name.replace('+', '-').replace('@', '-')}"
    print(target.name, patches, flush=True)
    overrides = [
        f"strategy={strategy or 'fsdp'}",
        *([f"eval_data_path={held}"] if "eval" in base else []),
        "max_steps=8",
        "global_batch_size=8",
        "learning_rate=3e-4",
        "lr_scheduler_type=constant",
        "warmup_ratio=0",
        "resume=never",
        *VARIANTS[base],
    ]
    spec = build(
        flags=dict(
            method=method,
            model_name_or_path=str(model),
            data_path=str(data),
            output_dir=str(target),
            gpus=f"{nproc}xH100",
        ),
        overrides=overrides,
    )
    path = work / f"spec-{target.name}.json"
    path.write_text(dump_run(spec, make_plan(spec)))
    env = {**os.environ, "CUDA_LAUNCH_BLOCKING": "1"}
    if patches:
        patch = work / "-".join(patches)
        patch.mkdir(exist_ok=True)
        lines = "".join(f"    {PATCHES[p]}\n" for p in patches)
        (patch / "sitecustomize.py").write_text(
            f"import os\nif os.environ.get('LOCAL_RANK') is not None:\n    import ftctl.trainer.lm_head as h\n{lines}"
        )
        env["PYTHONPATH"] = os.pathsep.join([str(patch), env.get("PYTHONPATH", "")])
    t = time.time()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    proc = subprocess.run([*cmd, "-m", "ftctl.trainer", "--spec", str(path)], capture_output=True, text=True, env=env)
    (out / f"{target.name}.err").write_text(proc.stderr)
    steps = [json.loads(x) for x in (target / "metrics.jsonl").read_text().splitlines()] if proc.returncode == 0 else []
    return {"variant": name, "method": method, "rc": proc.returncode, "s": round(time.time() - t, 1), "overrides": overrides,
            "evals": {r["step"]: r["eval_loss"] for r in steps if "eval_loss" in r},
            "torch_warned_group": GROUP_WARNING in proc.stderr}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--variants", default="save+eval,eval,save,save+eval@single")
    ap.add_argument("--work", default="/tmp/ftctl-probe")
    ap.add_argument("--nproc", type=int, default=1)
    ap.add_argument("--method", default="fft", choices=("fft", "sft", "lora"))
    a = ap.parse_args()
    work, out = Path(a.work), Path(a.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    model = make_model(work)
    data, held = cycle_rows(work / "cycle.json", 80, 1, 0), cycle_rows(work / "back.json", 16, -1, 1)
    rows = []
    for name in a.variants.split(","):
        rows.append(run(name, model, data, held, work, out, a.nproc, a.method))
        print(json.dumps(rows[-1]), flush=True)
        (out / "probe.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
