"""load_best_model_at_end under FSDP2 on a GPU (run on the device machine, not in CI).

A LoRA run of resume_gpu.py's model with its base sharded by FSDP2 (`-o strategy=fsdp`), held-out rows, a
checkpoint and an evaluation every 2 steps and `-o load_best_model_at_end=true`, run as the backends run it
(`torchrun -m ftctl.trainer --spec`). Recorded per learning rate: each evaluation's loss, the checkpoint with the
lowest one, and whether the final adapter's tensors equal that checkpoint's (and the last checkpoint's, which they
should not where the best is an earlier one). With --other-eval the held-out rows are of other words than the
training rows (--eval-data): as the model learns the training rows' words their loss turns up, so the best is an
earlier checkpoint (v84: with held-out rows like the training ones it fell through step 10 at every rate that trains).
The CPU suite runs the same on two gloo processes (tests/test_best_model.py, 588b99d).

With --cycle-eval (v89) every training answer walks the fifteen words in one fixed order (each word says the next:
a bigram a LoRA of the MLPs can learn) and the held-out answers walk them backwards: the held-out loss falls while the
model learns which words answers hold, and rises once it learns their order, which the held-out rows break.

With --method fft (v91) the whole model trains under FSDP2 (its checkpoints sharded, no adapter to compare): the row
holds `ftctl eval` of the saved final model on the held-out rows, to set against each evaluation's loss.

    python bench/best_fsdp_gpu.py --out DIR [--lrs 2e-4,3e-2] [--nproc 1] [--other-eval | --cycle-eval]
                                  [--steps 10] [--every 2] [--method lora|fft]
"""

from __future__ import annotations

import argparse
import json
import random
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


def other_rows(path: Path, rows: int = 16) -> Path:
    """Conversations of words the training rows (gpu_train.make_data) never use."""
    rng = random.Random(1)
    words = "apple violet quartz meadow lantern copper whisper harbor saddle ember".split()
    out = []
    for i in range(rows):
        q, a = (" ".join(rng.choice(words) for _ in range(n)) for n in (150, 600))
        out.append({"id": f"other-{i}", "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]})
    path.write_text(json.dumps(out))
    return path


WORDS = "the of model data train token layer batch memory value ship code answer night river".split()


def cycle_rows(path: Path, rows: int, step: int, seed: int) -> Path:
    """Conversations whose answers walk WORDS in order (step 1) or backwards (step -1) from a random word."""
    rng = random.Random(seed)
    out = []
    for i in range(rows):
        q = " ".join(rng.choice(WORDS) for _ in range(150))
        start = rng.randrange(len(WORDS))
        a = " ".join(WORDS[(start + step * k) % len(WORDS)] for k in range(600))
        out.append(
            {"id": f"cycle{step}-{i}", "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]}
        )
    path.write_text(json.dumps(out))
    return path


def run_lr(
    lr: str,
    model_dir: Path,
    data: Path,
    work: Path,
    nproc: int,
    held_out: Path | None = None,
    tag: str = "",
    method: str = "lora",
) -> dict:
    out = work / f"best-{method}-lr{lr}{tag}"
    opts = [
        "strategy=fsdp",
        "load_best_model_at_end=true",
        f"eval_data_path={held_out}" if held_out else "eval_split=16",
        f"eval_steps={EVERY}",
        f"save_steps={EVERY}",
        f"max_steps={STEPS}",
        f"save_total_limit={STEPS // EVERY}",
        f"learning_rate={lr}",
        "lr_scheduler_type=constant",
        "warmup_ratio=0",
        "resume=never",
    ]
    run = one_run(model_dir, data, out, method, opts, work, nproc)
    row = {"lr": lr, "method": method, "rc": run["rc"], "s": run["s"]}
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
    if method == "fft":  # the final model's held-out loss as `ftctl eval` scores it, against each evaluation's
        row["ftctl_eval"] = ftctl_eval(out, held_out) if held_out else None
        return row
    final = tensors(out)
    row["final_is_best"] = same(final, tensors(out / f"checkpoint-{best}"))
    row["final_is_last"] = same(final, tensors(out / f"checkpoint-{kept[-1]}"))
    state = out / f"checkpoint-{kept[-1]}" / "trainer_state.json"
    if state.exists():
        row["trainer_best"] = json.loads(state.read_text()).get("best_model_checkpoint")
    row["log_best"] = [line for line in run["stderr"].splitlines() if "best" in line.lower()][-3:]
    return row


def ftctl_eval(out: Path, held_out: Path) -> dict:
    """`ftctl eval OUT --data HELD_OUT` of the saved final model: its loss line, and the loss read from it."""
    import re
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-m", "ftctl.cli", "eval", str(out), "--data", str(held_out)], capture_output=True, text=True
    )
    found = re.search(r"loss ([0-9.]+)", proc.stdout)
    return {"rc": proc.returncode, "stdout": proc.stdout[-600:], "stderr": proc.stderr[-600:],
            "loss": float(found.group(1)) if found else None}  # fmt: skip


def main() -> None:
    global STEPS, EVERY
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--lrs", default="2e-4,3e-2")
    ap.add_argument("--work", default="/tmp/ftctl-best")
    ap.add_argument("--nproc", type=int, default=1)
    ap.add_argument("--other-eval", action="store_true", help="held-out rows of other words (--eval-data)")
    ap.add_argument("--cycle-eval", action="store_true", help="answers in one word order, held out in the reverse")
    ap.add_argument("--method", default="lora", choices=("lora", "fft"))
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--every", type=int, default=EVERY)
    a = ap.parse_args()
    STEPS, EVERY = a.steps, a.every
    import torch

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    model_dir = make_model(work)
    if a.cycle_eval:
        data, held_out, tag = (
            cycle_rows(work / "cycle.json", 80, 1, 0),
            cycle_rows(work / "back.json", 16, -1, 1),
            "-cycle",
        )
    else:
        data, tag = make_data(work / "data.json", rows=80), "-other" if a.other_eval else ""
        held_out = other_rows(work / "other.json") if a.other_eval else None
    rows = []
    for lr in a.lrs.split(","):
        try:
            rows.append(run_lr(lr, model_dir, data, work, a.nproc, held_out, tag, a.method))
        except Exception as e:  # noqa: BLE001  the other rates still run
            rows.append({"lr": lr, "error": f"{type(e).__name__}: {e}"})
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "stderr"}), flush=True)
        Path(a.out).mkdir(parents=True, exist_ok=True)
        card = torch.cuda.get_device_name(0)
        (Path(a.out) / "best-fsdp-gpu.json").write_text(json.dumps({"card": card, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
