"""A relaunch with a new learning rate and a longer schedule, on a GPU (run on the device machine, not in CI).

For each case (method, strategy, optimizer): a run of 3 steps at lr 2e-4 (cosine, 20% warm-up) saves checkpoint-3;
the same output relaunched for 6 steps at lr 1e-4 resumes it (checkpoints.settings: the new settings applied to the
optimizer and schedule the Trainer restored, trainer/callbacks.ApplySettings); a third run has those settings from
the start. Each is `torchrun --nproc-per-node 1 -m ftctl.trainer --spec` in a fresh process, as the backends run
it. Recorded: the learning rates of steps 4-6 of the relaunch against the third run's, the relaunch's line saying
what changed, and each run's rc and seconds. The CPU suite covers single and ZeRO-2 (tests/test_resume_settings.py);
here ZeRO-3 and FSDP2 (GPU only) restore the optimizer through their own checkpoints, and qlora's paged 8-bit AdamW.

    python bench/resume_gpu.py --out DIR [--cases fft:zero3,fft:fsdp,lora:single,qlora:single] [--nproc 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.gpu_train import make_data  # noqa: E402

SCHEDULE = ["lr_scheduler_type=cosine", "warmup_ratio=0.2", "save_steps=3", "global_batch_size=8", "resume=auto"]
FIRST, AGAIN = ["max_steps=3", "learning_rate=2e-4"], ["max_steps=6", "learning_rate=1e-4"]


def make_model(root: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.tiny_fixtures import make_tiny_tokenizer

    path = root / "llama-small-tinyvocab"
    if (path / "config.json").exists():
        return path
    tokenizer = make_tiny_tokenizer()
    cfg = LlamaConfig(
        hidden_size=1024,
        intermediate_size=2816,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=8,
        vocab_size=len(tokenizer),
        max_position_embeddings=4096,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=0,
    )
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def one_run(
    model_dir: Path, data: Path, out: Path, method: str, overrides: list[str], work: Path, nproc: int = 1
) -> dict:
    from ftctl.plan import dump_run, make_plan
    from ftctl.spec import build

    spec = build(
        flags=dict(
            method=method,
            model_name_or_path=str(model_dir),
            data_path=str(data),
            output_dir=str(out),
            gpus=f"{nproc}xH100",
        ),
        overrides=[*SCHEDULE, *overrides],
    )
    path = work / f"spec-{out.name}-{len(list(work.glob('spec-*')))}.json"
    path.write_text(dump_run(spec, make_plan(spec)))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    t = time.time()
    proc = subprocess.run([*torchrun, "-m", "ftctl.trainer", "--spec", str(path)], capture_output=True, text=True)
    said = [line for line in proc.stderr.splitlines() if "was saved with other settings" in line]
    # the data cache's lines: tokenized and kept by the first run, read back by the relaunch
    data = [line for line in (proc.stdout + proc.stderr).splitlines() if "tokeniz" in line]
    return {
        "rc": proc.returncode,
        "s": round(time.time() - t, 1),
        "said": said,
        "data": data,
        "stderr": proc.stderr[-3000:],
    }


def lrs(out: Path) -> dict[int, float]:
    rows = map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
    return {r["step"]: r["lr"] for r in rows if "lr" in r}


def run_case(case: str, model_dir: Path, data: Path, work: Path, nproc: int = 1) -> dict:
    method, strategy, *optim = case.split(":")
    extra = [f"strategy={strategy}", *(f"optim={o}" for o in optim)]
    out, scratch = work / case.replace(":", "-"), work / (case.replace(":", "-") + "-scratch")
    row = {"case": case, "gpus": nproc}
    row["first"] = one_run(model_dir, data, out, method, [*extra, *FIRST], work, nproc)
    row["relaunch"] = one_run(model_dir, data, out, method, [*extra, *AGAIN], work, nproc)
    row["scratch"] = one_run(model_dir, data, scratch, method, [*extra, *AGAIN], work, nproc)
    if all(row[k]["rc"] == 0 for k in ("first", "relaunch", "scratch")):
        got, want = lrs(out), lrs(scratch)
        row["lr_relaunch"] = [got.get(s) for s in (4, 5, 6)]
        row["lr_scratch"] = [want.get(s) for s in (4, 5, 6)]
        row["same_lr"] = all(
            a is not None and b is not None and abs(a - b) <= 1e-6 * abs(b)
            for a, b in zip(row["lr_relaunch"], row["lr_scratch"])
        )
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--cases", default="fft:zero3,fft:fsdp,lora:single,qlora:single:paged_adamw_8bit")
    ap.add_argument("--work", default="/tmp/ftctl-resume")
    ap.add_argument("--nproc", type=int, default=1, help="GPUs (processes) each run takes")
    a = ap.parse_args()
    import torch

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    model_dir = make_model(work)
    data = make_data(work / "data.json", rows=64)
    rows = []
    for case in a.cases.split(","):
        try:
            rows.append(run_case(case, model_dir, data, work, a.nproc))
        except Exception as e:  # noqa: BLE001  the other cases still run
            rows.append({"case": case, "error": f"{type(e).__name__}: {e}"})
        print(json.dumps({k: v for k, v in rows[-1].items() if k not in ("first", "relaunch", "scratch")}), flush=True)
        Path(a.out).mkdir(parents=True, exist_ok=True)  # after every case: a call cut short keeps what ran
        card = torch.cuda.get_device_name(0)
        (Path(a.out) / "resume-gpu.json").write_text(json.dumps({"card": card, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
