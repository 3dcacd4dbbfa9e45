"""load_best_model_at_end under FSDP2 on a GPU (run on the device machine, not in CI).

A LoRA run of resume_gpu.py's model with its base sharded by FSDP2 (`-o strategy=fsdp`), held-out rows, a
checkpoint and an evaluation every 2 steps and `-o load_best_model_at_end=true`, run as the backends run it
(`torchrun -m ftctl.trainer --spec`). Recorded per learning rate: each evaluation's loss, the checkpoint with the
lowest one, and whether the final adapter's tensors equal that checkpoint's (and the last checkpoint's, which they
should not where the best is an earlier one). A high rate makes the held-out loss turn up, so the best is not the
last. The CPU suite runs the same on two gloo processes (tests/test_best_model.py, 588b99d).

    python bench/best_fsdp_gpu.py --out DIR [--lrs 2e-4,3e-2] [--nproc 1]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.gpu_train import make_data  # noqa: E402
from bench.resume_gpu import make_model, one_run  # noqa: E402

STEPS, EVERY = 10, 2


def tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))


def same(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def run_lr(lr: str, model_dir: Path, data: Path, work: Path, nproc: int) -> dict:
    out = work / f"best-lr{lr}"
    opts = [
        "strategy=fsdp",
        "load_best_model_at_end=true",
        "eval_split=16",
        f"eval_steps={EVERY}",
        f"save_steps={EVERY}",
        f"max_steps={STEPS}",
        f"learning_rate={lr}",
        "lr_scheduler_type=constant",
        "warmup_ratio=0",
        "resume=never",
    ]
    run = one_run(model_dir, data, out, "lora", opts, work, nproc)
    row = {"lr": lr, "rc": run["rc"], "s": run["s"]}
    if run["rc"]:
        row["stderr"] = run["stderr"]
        return row
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals: dict[int, float] = {}
    for r in records:  # the first evaluation of a step: an end-of-run one of the loaded best model comes after
        if "eval_loss" in r:
            evals.setdefault(r["step"], r["eval_loss"])
    row["eval_loss"] = evals
    best = min((loss, step) for step, loss in evals.items() if (out / f"checkpoint-{step}").is_dir())[1]
    kept = sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
    row.update(best_step=best, checkpoints=kept)
    final = tensors(out)
    row["final_is_best"] = same(final, tensors(out / f"checkpoint-{best}"))
    row["final_is_last"] = same(final, tensors(out / f"checkpoint-{kept[-1]}"))
    state = out / f"checkpoint-{kept[-1]}" / "trainer_state.json"
    if state.exists():
        row["trainer_best"] = json.loads(state.read_text()).get("best_model_checkpoint")
    row["log_best"] = [line for line in run["stderr"].splitlines() if "best" in line.lower()][-3:]
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--lrs", default="2e-4,3e-2")
    ap.add_argument("--work", default="/tmp/ftctl-best")
    ap.add_argument("--nproc", type=int, default=1)
    a = ap.parse_args()
    import torch

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    model_dir, data = make_model(work), make_data(work / "data.json", rows=80)
    rows = []
    for lr in a.lrs.split(","):
        try:
            rows.append(run_lr(lr, model_dir, data, work, a.nproc))
        except Exception as e:  # noqa: BLE001  the other rates still run
            rows.append({"lr": lr, "error": f"{type(e).__name__}: {e}"})
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "stderr"}), flush=True)
        Path(a.out).mkdir(parents=True, exist_ok=True)
        card = torch.cuda.get_device_name(0)
        (Path(a.out) / "best-fsdp-gpu.json").write_text(json.dumps({"card": card, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
