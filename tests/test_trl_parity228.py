"""ftctl's trainer trains what a user's own TRL SFTTrainer + PEFT script trains with the same settings.

Each test runs ftctl's trainer (``run.train``) on the tiny model and then a plain TRL 1.x script written as TRL's and
PEFT's docs write one, with the hyperparameters ftctl's spec and plan say (learning rate, schedule and warm-up, micro
batch and accumulation, max_length, packing, seed, weight decay, optimizer, LoRA's r/alpha/dropout/targets), on the
same rows: the per-step losses agree to ~1e-6 and the final weights (or adapters) to rounding. Compared this way
(helper 228, /work/notes/explore44-parity.md) and matching: lora over all-linear with dropout, fft, accumulation 2
(TRL's loss over the global batch's tokens), packing (TRL's bfd, padding-free, padded as ftctl pads: LoRA's dropout
masks are drawn over the padded shape) and unpacked, cosine and linear with
warm-up, weight decay, epochs with a short last accumulation, conversations with ftctl's assistant-only loss against
TRL's ``assistant_only_loss`` (a template whose generation block is the answer and its <|im_end|>, what ftctl
trains), text prompt-completion rows against TRL's ``completion_only_loss``, qlora over bitsandbytes' NF4.

ftctl's deliberate differences (docs): a conversation's every token is TRL's default, the assistant turns ftctl's
(docs/data.md, other-tools.md); TRL's templates and conversational completions also train the line break after
<|im_end|> (data.md); warmup_ratio rounds down here (spec.py); QLoRA's adapters stay fp32, where TRL 1.16 casts a
quantized model's to bf16 (SFTTrainer.__init__; sft_trainer.fp32_trainables): the qlora test's TRL script keeps them
fp32 as ftctl does."""

from __future__ import annotations

import json

import pytest

from ftctl.trainer.data import PACK_MULTIPLE
from tests.trainer_fixtures import make_run

# ChatML as the tiny tokenizer's, with TRL's generation block around what ftctl trains: the answer and <|im_end|>
GENERATION_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\\n' }}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
ROLES = {"system": "system", "human": "user", "gpt": "assistant"}
ROWS = 24


def _losses_callback():
    from transformers import TrainerCallback

    class Losses(TrainerCallback):
        def __init__(self):
            self.losses: dict[int, float] = {}

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.losses[state.global_step] = logs["loss"]

    return Losses()


def _rows(tiny_data, kind: str) -> list[dict]:
    rows = json.loads(tiny_data.read_text())[:ROWS]
    chats = [[{"role": ROLES[t["from"]], "content": t["value"]} for t in row["conversations"]] for row in rows]
    if kind == "messages":
        return [{"messages": chat} for chat in chats]
    return [{"prompt": chat[-2]["content"] + "\n", "completion": chat[-1]["content"]} for chat in chats]


def _ftctl(tiny_model_dir, data, out, method, **overrides):
    from ftctl.trainer.run import train

    spec, plan = make_run(tiny_model_dir, data, out, method, **overrides)
    losses = _losses_callback()
    result = train(spec, plan, callbacks=[losses], echo=lambda line: None)
    assert result.status == "complete"
    return spec, plan, losses.losses, result.output_dir


def _trl(tiny_model_dir, rows, spec, plan, out, **config):
    """The user's script: SFTTrainer with a PEFT LoraConfig (or none), its SFTConfig from ftctl's spec and plan."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, set_seed
    from trl import SFTConfig, SFTTrainer

    set_seed(spec.seed)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    if config.get("assistant_only_loss"):
        tokenizer.chat_template = GENERATION_TEMPLATE
    quantized = {}
    if spec.method == "qlora":
        nf4 = dict(bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.float32)
        quantized = dict(quantization_config=BitsAndBytesConfig(load_in_4bit=True, **nf4), device_map={"": "cpu"})
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, **quantized)
    kept = []
    if spec.method != "fft":
        lora = LoraConfig(
            r=spec.lora_r,
            lora_alpha=spec.lora_alpha,
            lora_dropout=spec.lora_dropout,
            target_modules=spec.lora_target_modules,
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
        kept = [(p, p.data) for p in model.parameters() if p.requires_grad]  # fp32, as ftctl keeps them
    args = SFTConfig(
        output_dir=str(out),
        seed=spec.seed,
        max_steps=spec.max_steps,
        learning_rate=plan.learning_rate,
        weight_decay=spec.weight_decay,
        warmup_steps=spec.warmup,
        lr_scheduler_type=spec.lr_scheduler_type,
        max_grad_norm=spec.max_grad_norm,
        optim=plan.optim,
        per_device_train_batch_size=plan.per_device_train_batch_size,
        gradient_accumulation_steps=plan.gradient_accumulation_steps,
        max_length=spec.model_max_length,
        packing=plan.packing,
        bf16=False,  # TRL's default needs a GPU
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        **config,
    )
    losses = _losses_callback()
    set_seed(spec.seed)
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer, callbacks=[losses]
    )
    for param, data in kept:  # TRL 1.16 casts a quantized model's adapters to bf16: ftctl keeps them fp32
        param.data = data
    trainer.train()
    return trainer.model, losses.losses


def _trained(model, output_dir) -> tuple[dict, dict]:
    from pathlib import Path

    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    adapter = Path(output_dir, "adapter_model.safetensors")
    if adapter.exists():
        return load_file(str(adapter)), get_peft_model_state_dict(model)
    return load_file(str(Path(output_dir, "model.safetensors"))), model.state_dict()


def _rows_file(tmp_path, rows) -> str:
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


CASES = {
    # method, rows, ftctl's overrides, TRL's SFTConfig beside the spec's
    # packed rows padded to ftctl's multiple, so that LoRA's dropout draws its masks over the same shapes
    "lora-packed-assistant-cosine-warmup": (
        "lora",
        "messages",
        dict(max_steps=4, packing=True, lr_scheduler_type="cosine", warmup_steps=1, warmup_ratio=None),
        dict(assistant_only_loss=True, pad_to_multiple_of=PACK_MULTIPLE),
    ),
    "fft-every-token-linear": (
        "fft",
        "messages",
        dict(max_steps=3, packing=False, assistant_only_loss=False, lr_scheduler_type="linear", weight_decay=0.1),
        dict(),
    ),
    "lora-completion-only": ("lora", "prompt-completion", dict(max_steps=3, packing=False), dict()),
    "qlora-assistant": ("qlora", "messages", dict(max_steps=3, packing=False), dict(assistant_only_loss=True)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_ftctl_trains_what_the_same_trl_script_trains(case, tiny_model_dir, tiny_data, tmp_path, one_thread):
    import torch

    method, kind, overrides, config = CASES[case]
    rows = _rows(tiny_data, kind)
    spec, plan, mine, output_dir = _ftctl(
        tiny_model_dir, _rows_file(tmp_path, rows), tmp_path / "ftctl", method, **overrides
    )
    # global batch 4 as 2 a micro-batch x 2 accumulated, lora over every linear projection with dropout
    assert (plan.per_device_train_batch_size, plan.gradient_accumulation_steps) == (2, 2)
    assert method == "fft" or (spec.lora_target_modules, spec.lora_dropout) == ("all-linear", 0.05)
    model, theirs = _trl(tiny_model_dir, rows, spec, plan, tmp_path / "trl", **config)

    assert sorted(mine) == sorted(theirs) == list(range(1, spec.max_steps + 1))
    for step in mine:
        assert mine[step] == pytest.approx(theirs[step], abs=1e-5), (step, mine, theirs)
    saved, trained = _trained(model, output_dir)
    assert set(saved) == set(trained)
    for name, weight in saved.items():
        assert weight.dtype == torch.float32, name  # qlora's adapters too (TRL 1.16 would make them bf16)
        torch.testing.assert_close(weight, trained[name].float(), rtol=0, atol=1e-4, msg=name)


def test_a_trl_run_file_that_leaves_the_learning_rate_out_is_told_ftctls_lora_rate():
    """TRL's SFTConfig trains at 2e-5 unless told; a TRL file with use_peft and no learning_rate trained LoRA at
    ftctl's 2e-4 without a word, where other-tools.md says a TRL file takes TRL's defaults where it leaves them out.
    ftctl's rate stays (TRL's LoRA examples give 2e-4); a note says how to have TRL's. fft's rate is TRL's: no note."""
    from ftctl.spec import build

    def said(values, overrides=()):
        notes: list[str] = []
        spec = build({"dataset_name": "trl-lib/Capybara", **values}, None, list(overrides), notes=notes)
        return spec, [n for n in notes if n.startswith("learning_rate")]

    spec, notes = said({"use_peft": True})
    assert spec.lr == 2e-4 and notes == [
        "learning_rate 0.0002, ftctl's default, in a run file in TRL's vocabulary (dataset_name, use_peft): TRL's "
        "SFTConfig trains at 2e-5 unless told (its LoRA examples give 2e-4, as ftctl does): -o learning_rate=2e-5 for "
        "TRL's"
    ]
    assert said({"use_peft": True, "load_in_4bit": True})[1]  # qlora
    assert said({"use_peft": True, "learning_rate": 1e-4})[1] == []
    assert said({"use_peft": True}, ["learning_rate=2e-5"])[1] == []
    assert said({"use_peft": False})[1] == []  # fft: 2e-5 both


@pytest.mark.slow
def test_lora_on_two_processes_trains_what_one_process_trains(tiny_model_dir, tiny_data, tmp_path, one_thread):
    """DDP over gloo (2 processes x 2 sequences) against one process accumulating 2 x 2: the same global batch, each
    rank's assistant-only token count differing (the loss is over the global batch's tokens, as TRL's
    average_tokens_across_devices), the frozen base beside the adapters in DDP's buckets, the adapter gathered on rank 0.
    Dropout 0: each rank would draw its own masks. Measured: the same losses, adapters 7e-9 apart (~24 s: torchrun)."""
    import torch
    from safetensors.torch import load_file

    from ftctl.trainer.run import train
    from tests.trainer_fixtures import losses_by_step, run_trainer_cli, write_spec

    common = dict(max_steps=4, save_steps=100, lora_dropout=0.0)
    spec, plan = make_run(tiny_model_dir, tiny_data, tmp_path / "one", "lora", **common)
    assert (plan.world_size, plan.per_device_train_batch_size, plan.gradient_accumulation_steps) == (1, 2, 2)
    assert train(spec, plan, echo=lambda line: None).status == "complete"
    spec, plan = make_run(tiny_model_dir, tiny_data, tmp_path / "two", "lora", gpus="2xcpu", **common)
    assert (plan.world_size, plan.per_device_train_batch_size, plan.gradient_accumulation_steps, plan.strategy) == (
        2, 2, 1, "ddp"
    )  # fmt: skip
    proc = run_trainer_cli(write_spec(spec, plan, tmp_path / "spec.json"), nproc=2)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    one, two = losses_by_step(tmp_path / "one"), losses_by_step(tmp_path / "two")
    assert list(one) == list(two) == [1, 2, 3, 4]
    for step in one:
        assert two[step] == pytest.approx(one[step], abs=1e-5), (one, two)
    mine, theirs = (load_file(str(tmp_path / d / "adapter_model.safetensors")) for d in ("one", "two"))
    assert set(mine) == set(theirs) and mine
    for name, weight in mine.items():
        torch.testing.assert_close(theirs[name], weight, rtol=0, atol=1e-6, msg=name)
