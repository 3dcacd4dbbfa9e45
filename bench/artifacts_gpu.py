"""What a bf16 GPU run leaves, loaded as its model card says (device machine, not CI).

explore40 checked every output in the field's tools on the CPU (fp32); two things needed a GPU: a qlora card's
snippet (the 4-bit NF4 base computing in the run's precision) against the model the run trained, and the dtype
labels of a bf16 run's files. For each method (qlora, lora, fft) one `ftctl launch --backend local` run of a
random-initialised Llama of the 1B shape with the tiny test tokenizer's vocabulary (8 steps, checkpoint-4), then for
the final directory and checkpoint-4:
- the card's Python block run as written, DIR replaced by the directory (a fresh `python -c`, nothing of ftctl
  imported), its model's device and dtypes, and its logits on held-out rows against trained.load(as_trained) in this
  process (next-token agreement, largest logit difference, loss): the model the user loads is the one trained;
- config.json's dtype and torch_dtype against the dtypes the safetensors files hold (every tensor), and the adapter's.

    python3 bench/artifacts_gpu.py --out DIR [--steps 8]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.chat_gpu import make_model  # noqa: E402
from bench.gpu_train import make_data  # noqa: E402
from bench.merge_gpu import compare, ftctl, held_out, logits_of  # noqa: E402

SNIPPET_RUNNER = """
import json, sys, torch
ids = torch.load(sys.argv[2])
ns = {}
exec(open(sys.argv[1]).read(), ns)
model = ns["model"] if "model" in ns else ns["generator"].model
said = {"device": str(next(model.parameters()).device), "dtypes": sorted({str(p.dtype) for p in model.parameters()})}
if said["device"] == "cpu":
    model = model.to("cuda")
model.eval()
with torch.no_grad():
    logits = torch.cat([model(input_ids=ids[i : i + 4].cuda()).logits.float().cpu() for i in range(0, len(ids), 4)])
torch.save(logits, sys.argv[3])
print(json.dumps(said))
"""


def card_snippet(directory: Path) -> str:
    """The card's Python block, loading ``directory`` where it says DIR."""
    blocks = re.findall(r"```python\n(.*?)```", (directory / "README.md").read_text(), re.S)
    return blocks[0].replace('"DIR"', repr(str(directory)))


def stored_dtypes(directory: Path) -> dict:
    """config.json's dtype labels and what its safetensors files hold, tensor by tensor."""
    from safetensors import safe_open

    held: dict[str, int] = {}
    for file in sorted(directory.glob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            for name in f.keys():
                dtype = str(f.get_slice(name).get_dtype())
                held[dtype] = held.get(dtype, 0) + 1
    config = json.loads((directory / "config.json").read_text()) if (directory / "config.json").exists() else {}
    return {"config_dtype": config.get("dtype"), "config_torch_dtype": config.get("torch_dtype"), "tensors": held}


def check(directory: Path, ids, work: Path) -> dict:
    import torch

    from ftctl.trainer import trained as trained_mod

    result: dict = {"files": stored_dtypes(directory)}
    snippet = work / f"snippet-{directory.parent.name}-{directory.name}.py"
    snippet.write_text(card_snippet(directory))
    result["snippet"] = snippet.read_text()
    torch.save(ids.cpu(), work / "ids.pt")
    t = time.time()
    proc = subprocess.run(
        [sys.executable, "-c", SNIPPET_RUNNER, str(snippet), str(work / "ids.pt"), str(work / "logits.pt")],
        capture_output=True,
        text=True,
        cwd=work,
    )
    result["snippet_s"] = round(time.time() - t, 1)
    if proc.returncode:
        result["snippet_error"] = proc.stderr[-3000:]
        return result
    result["snippet_loaded"] = json.loads(proc.stdout.strip().splitlines()[-1])
    found = trained_mod.find(str(directory))
    ref_model = trained_mod.load(found, "bf16", device_map={"": "cuda"}, as_trained=True).eval()
    ref = logits_of(ref_model, ids)
    del ref_model
    torch.cuda.empty_cache()
    result["snippet_vs_as_trained"] = compare(torch.load(work / "logits.pt").cuda(), ref, ids)
    result["as_trained_loss"] = compare(ref, ref, ids)["loss"]
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--work", default="/tmp/ftctl-artifacts")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--methods", default="qlora,lora,fft")
    a = ap.parse_args()
    import torch
    import transformers

    out, work = Path(a.out), Path(a.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    card = torch.cuda.get_device_name(0)
    tier = "H200" if "H200" in card else "H100"
    result: dict = {"card": card, "torch": torch.__version__, "transformers": transformers.__version__}
    model, data = make_model(work), make_data(work / "data.json", 200)
    ids = held_out(model, data, 8, 512)
    half = a.steps // 2
    for method in a.methods.split(","):
        run = work / method
        lr = "1e-5" if method == "fft" else "2e-4"
        opts = [f"max_steps={a.steps}", f"learning_rate={lr}", "global_batch_size=8", f"save_steps={half}"]
        case: dict = {}
        try:
            case["train_s"] = ftctl(
                "launch", "--backend", "local", "--gpus", f"1x{tier}", "--method", method, "--model", str(model),
                "--data", str(data), "--output", str(run), *sum((["-o", o] for o in opts), []),
                log=out / f"train-{method}.log",
            )  # fmt: skip
            case["plan"] = json.loads((run / "spec.json").read_text()).get("plan", {}).get("precision")
            for directory in (run, run / f"checkpoint-{half}"):
                case[directory.name] = check(directory, ids, work)
        except SystemExit as exc:
            case["error"] = str(exc)[-3000:]
        result[method] = case
        print(json.dumps({method: case}, indent=1), flush=True)
    (out / "artifacts_gpu.json").write_text(json.dumps(result, indent=1))
    os.sync()


if __name__ == "__main__":
    main()
