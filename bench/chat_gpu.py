"""`ftctl chat` on a GPU (run on the device machine, not in CI): what a lora, a qlora and an fft run leave, loaded
as a user loads it, answering as the same weights loaded by hand do.

For each case: 4 training steps through RunSpec -> make_plan(1xH100) -> trainer.run.train on a random-initialised
Llama of the 1B shape's blocks with the tiny test tokenizer's vocabulary (so every generated id decodes), then
`ftctl chat OUT -p QUESTION` in a fresh process (rc, stdout, stderr, seconds), then in this process chat.load
(what it says it loaded, the device and dtype of the weights) and its greedy answer against the one of the same
weights loaded by hand (transformers + PEFT, bf16, on the GPU), `ftctl eval OUT --data DATA --compare` (the
training rows: base and tuned loss), and the CLI's answer against the by-hand one in a fresh
process (a process that trained has Liger's kernels patched into transformers' Llama: a random model's near-flat
logits then pick other tokens after a few). The lora case also runs a two-turn conversation
on stdin.

    python bench/chat_gpu.py --out DIR [--cases lora,qlora,fft]
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

from bench.gpu_train import SHAPES, make_data  # noqa: E402

QUESTION = "the model of the night river?"


def make_model(root: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.tiny_fixtures import make_tiny_tokenizer

    path = root / "llama-1b-tinyvocab"
    if (path / "config.json").exists():
        return path
    tokenizer = make_tiny_tokenizer()
    shape = {**SHAPES["1b"], "vocab_size": len(tokenizer)}
    cfg = LlamaConfig(**shape, bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def by_hand(out: Path, model_dir: Path, method: str) -> str:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ftctl.trainer.chat import Decoding, answer

    if method == "fft":
        model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16).cuda()
    else:
        base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).cuda()
        model = PeftModel.from_pretrained(base, str(out))
    model.eval()
    reply = answer(model, AutoTokenizer.from_pretrained(out), [{"role": "user", "content": QUESTION}], Decoding(16))
    del model
    torch.cuda.empty_cache()
    return reply


def run_case(method: str, model_dir: Path, data: Path, work: Path) -> dict:
    import torch

    from ftctl.plan import make_plan
    from ftctl.spec import build
    from ftctl.trainer import chat
    from ftctl.trainer.run import train

    out = work / method
    spec = build(
        flags=dict(
            method=method, model_name_or_path=str(model_dir), data_path=str(data), output_dir=str(out), gpus="1xH100"
        ),
        overrides=["max_steps=4", "global_batch_size=8", "model_max_length=2048", "save_steps=4", "resume=never"],
    )
    t = time.time()
    result = train(spec, make_plan(spec), echo=lambda line: None)
    row = {"case": method, "train_status": result.status, "train_s": round(time.time() - t, 1)}
    torch.cuda.empty_cache()
    cli = [sys.executable, "-m", "ftctl.cli", "chat", str(out), "--max-new-tokens", "16"]
    t = time.time()
    proc = subprocess.run([*cli, "-p", QUESTION], capture_output=True, text=True, timeout=300)
    row.update(cli_rc=proc.returncode, cli_stdout=proc.stdout, cli_stderr=proc.stderr[-2000:], cli_s=time.time() - t)
    if method == "lora":
        talk = subprocess.run(cli, input=f"{QUESTION}\nand then?\n", capture_output=True, text=True, timeout=300)
        row.update(stdin_rc=talk.returncode, stdin_stdout=talk.stdout, stdin_stderr=talk.stderr[-2000:])
    scored = subprocess.run(
        [sys.executable, "-m", "ftctl.cli", "eval", str(out), "--data", str(data), "--compare"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    row.update(eval_rc=scored.returncode, eval_stdout=scored.stdout, eval_stderr=scored.stderr[-2000:])
    loaded = chat.load(str(out))
    weights = next(loaded.model.parameters())
    mine = chat.answer(loaded.model, loaded.tokenizer, [{"role": "user", "content": QUESTION}], chat.Decoding(16))
    row.update(what=loaded.what, device=str(weights.device), dtype=str(weights.dtype), answer=mine)
    del loaded, weights
    torch.cuda.empty_cache()
    row["by_hand"] = by_hand(out, model_dir, method)  # this process: the trainer's kernels (Liger) patched in
    hand = [sys.executable, __file__, "--out", "/tmp", "--by-hand", str(out), str(model_dir), method]
    fresh = subprocess.run(hand, capture_output=True, text=True, timeout=300)
    row.update(
        by_hand_fresh=fresh.stdout.strip(), by_hand_fresh_rc=fresh.returncode, by_hand_fresh_err=fresh.stderr[-2000:]
    )
    row["same_in_process"] = row["by_hand"] == mine
    row["same_fresh"] = row["by_hand_fresh"] == proc.stdout.strip()
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--cases", default="lora,qlora,fft")
    ap.add_argument("--work", default="/tmp/ftctl-chat")
    ap.add_argument("--by-hand", nargs=3, metavar=("OUT", "MODEL", "METHOD"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.by_hand:  # a fresh process, as the CLI's: stock transformers kernels
        print(by_hand(Path(a.by_hand[0]), Path(a.by_hand[1]), a.by_hand[2]))
        return
    import torch

    from ftctl import quiet

    quiet.install()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    model_dir = make_model(Path("/dev/shm") if os.path.isdir("/dev/shm") else work)
    data = make_data(work / "data.json", rows=64)
    rows = []
    for method in a.cases.split(","):
        try:
            rows.append(run_case(method, model_dir, data, work))
        except Exception as e:  # noqa: BLE001  the other cases still run
            rows.append({"case": method, "error": f"{type(e).__name__}: {e}"})
        print(json.dumps(rows[-1]), flush=True)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    card = torch.cuda.get_device_name(0)
    (Path(a.out) / "chat-gpu.json").write_text(json.dumps({"card": card, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
