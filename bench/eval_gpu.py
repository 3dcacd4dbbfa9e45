"""Held-out evaluation on one GPU (run on the device machine, not in CI): ftctl's eval loss against TRL's own
loss on the same batches, its time against a training step's, and the peak memory it adds.

For each case the trainer runs through RunSpec -> make_plan(1xH100) -> trainer.run (the path of a real run) on
a random-initialised shape from bench/gpu_train.py with 10% of the data held out (eval_split), evaluating every
``--eval-steps``. Then, on the final weights, every held-out batch of the trainer's own eval dataloader goes
once through ftctl's compute_loss (its LM head, no logits kept) and once through TRL's (full logits), under the
evaluation's autocast. The progress lines come back too (tokens/s of the steps around an evaluation).

    python bench/eval_gpu.py --out DIR [--cases lora1b,fft1b,fft1b-zero3] [--steps 12] [--eval-steps 6]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.gpu_train import make_data, make_model  # noqa: E402

CASES = {
    "lora1b": ("lora", None),
    "qlora1b": ("qlora", None),
    "fft1b": ("fft", None),
    "fft1b-zero2": ("fft", "zero2"),
    "fft1b-zero3": ("fft", "zero3"),
    "fft1b-fsdp": ("fft", "fsdp"),
}


def run_case(name: str, model_dir: Path, data: Path, steps: int, eval_steps: int, work: Path) -> dict:
    import torch
    from transformers import TrainerCallback
    from trl import SFTTrainer as TrlSFTTrainer

    from ftctl.plan import make_plan
    from ftctl.spec import build
    from ftctl.trainer.run import cleanup, fit, setup

    method, strategy = CASES[name]
    overrides = [
        f"max_steps={steps}",
        "global_batch_size=16",
        "model_max_length=2048",
        "save_steps=100000",
        f"eval_steps={eval_steps}",
        "eval_split=0.1",
        "resume=never",
    ] + ([f"strategy={strategy}"] if strategy else [])
    flags = dict(method=method, model_name_or_path=str(model_dir), data_path=str(data), output_dir=str(work / name))
    spec = build(flags=dict(flags, gpus="1xH100", backend="local"), overrides=overrides)
    plan = make_plan(spec)

    class Clock(TrainerCallback):
        def __init__(self):
            self.steps, self.evals, self.peaks = [], [], []

        def on_step_end(self, args, state, control, **kw):
            torch.cuda.synchronize()
            self.steps.append(time.time())
            self.peaks.append(torch.cuda.max_memory_allocated())

        def on_evaluate(self, args, state, control, metrics=None, **kw):
            self.evals.append({"step": state.global_step, **(metrics or {})})

    clock = Clock()
    torch.cuda.reset_peak_memory_stats()
    lines = []

    def echo(line):
        lines.append(line)
        print(f"[{name}] {line}", flush=True)

    run = setup(spec, plan, callbacks=[clock], echo=echo)
    status = "failed"
    try:
        fit(run)
        status = "complete"
        trainer = run.trainer
        train_peak = max(clock.peaks[: eval_steps - 1]) / 2**30  # before the first evaluation
        run_peak = torch.cuda.max_memory_allocated() / 2**30
        model = trainer.model_wrapped
        model.eval()
        ours, trl, tokens = [], [], 0
        # FSDP2's parameters are sharded between forwards that the Trainer does not run (this loop failed in
        # aten.embedding with a DTensor): its evaluation is only the run's own
        batches = [] if strategy == "fsdp" else trainer.get_eval_dataloader()
        with torch.no_grad(), trainer.compute_loss_context_manager():  # as the evaluation runs (autocast)
            for batch in batches:
                batch = trainer._prepare_inputs(batch)
                tokens += int((batch["labels"] != -100).sum())
                ours.append(trainer.compute_loss(model, dict(batch)).float().item())
                plain = {k: v for k, v in batch.items() if k != "scored"}  # ftctl's collator's count, for its head
                trl.append(TrlSFTTrainer.compute_loss(trainer, model, plain).float().item())
        rel = max((abs(a - b) / abs(b) for a, b in zip(ours, trl)), default=None)
        step_s = [b - a for a, b in zip(clock.steps, clock.steps[1:])]
        return {
            "case": name,
            "plan": {k: getattr(plan, k) for k in ("strategy", "attn_implementation", "packing", "precision")},
            "evaluation": plan.evaluation,
            "evals": clock.evals,
            "progress": lines,
            "eval_batches": len(ours),
            "eval_tokens_scored": tokens,
            "ours_vs_trl_max_rel_diff": rel,
            "ours_mean": sum(ours) / len(ours) if ours else None,
            "trl_mean": sum(trl) / len(trl) if trl else None,
            "losses": [h["loss"] for h in trainer.state.log_history if "loss" in h],
            "median_step_s": sorted(step_s)[len(step_s) // 2],
            "train_peak_gib_before_eval": round(train_peak, 2),
            "run_peak_gib": round(run_peak, 2),
        }
    finally:
        cleanup(run, status)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--cases", default="lora1b,fft1b,fft1b-zero3")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--eval-steps", type=int, default=6)
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path("/tmp/ftctl-eval")
    work.mkdir(exist_ok=True)
    data = make_data(work / "data.json", rows=400)
    model = make_model("1b", work)
    rows = []
    for name in a.cases.split(","):
        try:
            rows.append(run_case(name, model, data, a.steps, a.eval_steps, work))
        except Exception as e:  # the next case still runs
            import traceback

            traceback.print_exc()
            rows.append({"case": name, "error": repr(e)[:500]})
        print(json.dumps(rows[-1]), flush=True)
        import gc

        import torch

        gc.collect()
        torch.cuda.empty_cache()
        (out / "eval_gpu.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
