"""ftctl's SFTTrainer: the logs of TRL's own, without a host wait inside the training step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.trainer_fixtures import make_run

LOGGED = ("loss", "grad_norm", "entropy", "mean_token_accuracy", "num_tokens", "num_input_tokens_seen")
SYNCS = ("item", "__bool__", "__float__", "__int__", "tolist")  # what turns a tensor into a Python value
# the trainers' own code (on CPU, torch's single-tensor Adam and SDPA's mask check also take values from
# tensors: CPU paths, on a GPU the fused AdamW and the varlen kernels do not)
TRAINER_FILES = ("trl/trainer/sft_trainer.py", "transformers/trainer.py", "ftctl/trainer/sft_trainer.py")


def _run(spec, plan, monkeypatch, trainer_cls=None):
    """Train; return (the log records, how many times a trainer took a Python value from a tensor between
    each step's begin and end)."""
    import sys

    import torch
    from transformers import TrainerCallback

    import ftctl.trainer.sft_trainer as sft_trainer
    from ftctl.trainer.run import train

    if trainer_cls is not None:
        monkeypatch.setattr(sft_trainer, "SFTTrainer", trainer_cls)
    count = {"n": 0, "on": False}
    for name in SYNCS:
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _original=original, **k):
            count["n"] += count["on"] and sys._getframe(1).f_code.co_filename.endswith(TRAINER_FILES)
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)

    class Watch(TrainerCallback):
        def __init__(self):
            self.logs: list[dict] = []
            self.per_step: list[int] = []
            self.events: list[tuple[str, int]] = []  # ("end", step) and ("log", step), in order

        def on_step_begin(self, args, state, control, **kwargs):
            count.update(n=0, on=True)

        def on_step_end(self, args, state, control, **kwargs):
            count["on"] = False
            self.per_step.append(count["n"])
            self.events.append(("end", state.global_step))

        def on_log(self, args, state, control, logs=None, **kwargs):
            if "loss" in logs:
                self.logs.append(dict(logs))
                self.events.append(("log", state.global_step))

    watch = Watch()
    result = train(spec, plan, callbacks=[watch], echo=lambda line: None)
    assert result.status == "complete"
    return watch, result


@pytest.mark.parametrize("method", ["fft", "lora"])
def test_same_logs_as_trls_trainer_and_no_host_wait_in_a_step(
    method, tiny_model_dir, tiny_data, tmp_path, one_thread, monkeypatch
):
    import torch
    from accelerate import Accelerator
    from trl import SFTTrainer as TrlSFTTrainer

    from ftctl.trainer import lm_head

    runs, head_calls, clips = {}, [], []
    for name, cls in (("ftctl", None), ("trl", TrlSFTTrainer)):
        spec, plan = make_run(
            tiny_model_dir, tiny_data, tmp_path / name, method, max_steps=4, save_steps=2, logging_steps=2,
            max_grad_norm=0.05,
        )  # fmt: skip
        apply, nonzero = lm_head._HeadLoss.apply, torch.Tensor.nonzero
        monkeypatch.setattr(
            lm_head._HeadLoss, "apply", lambda *a, _apply=apply, _n=name: head_calls.append(_n) or _apply(*a)
        )
        clip = Accelerator.clip_grad_norm_  # ftctl hands the clipping to fused AdamW instead
        monkeypatch.setattr(Accelerator, "clip_grad_norm_", lambda *a, _c=clip, _n=name: clips.append(_n) or _c(*a))
        # a nonzero of unknown size waits for the device: the collator's count of the scored labels spares it
        monkeypatch.setattr(
            torch.Tensor, "nonzero", lambda *a, _nz=nonzero, **k: head_calls.append("?") or _nz(*a, **k)
        )
        runs[name] = _run(spec, plan, monkeypatch, cls)
        monkeypatch.undo()
    (ours, our_steps), (trls, trl_steps) = ((w.logs, w.per_step) for w, _ in (runs["ftctl"], runs["trl"]))
    # the end-of-training summary: the same FLOPs (ftctl counts the parameters once, transformers every step)
    flos = [next(h for h in r.log_history if "total_flos" in h)["total_flos"] for _, r in runs.values()]
    assert flos[0] == flos[1] > 0

    assert [r["epoch"] for r in ours] == [r["epoch"] for r in trls] and len(ours) == 2
    for a, b in zip(ours, trls):
        for key in LOGGED:
            assert a[key] == pytest.approx(b[key], rel=1e-6), key
    assert ours[-1]["num_input_tokens_seen"] > ours[0]["num_input_tokens_seen"] > 0
    for step in (2, 4):  # the checkpoints record the tokens seen up to their step
        states = [json.loads(Path(tmp_path, n, f"checkpoint-{step}", "trainer_state.json").read_text()) for n in runs]
        assert states[0]["num_input_tokens_seen"] == states[1]["num_input_tokens_seen"] > 0

    # ftctl's LM head gave the same logs as TRL's, and found the scored positions without a nonzero
    assert head_calls and set(head_calls) == {"ftctl"}
    # every step clipped (norms over max_grad_norm), ftctl's inside AdamW: the later losses still equal TRL's
    assert all(r["grad_norm"] > 0.05 for r in ours) and set(clips) == {"trl"}
    assert our_steps == [0, 0, 0, 0]  # nothing in a step waits for the device
    assert all(n >= 3 for n in trl_steps)  # TRL's metrics and token counts do, every step


def test_logs_written_a_step_late_are_the_logs_written_at_once(
    tiny_model_dir, tiny_data, tmp_path, one_thread, monkeypatch
):
    """SFTTrainer.defer_logs (on by default on CUDA, forced here on CPU): each step's log is written at the next
    step's end, with the values and step it would have had; a step that saves (3) or ends training (6) logs at
    once after the late one, so checkpoints and the final metrics hold every log."""
    from ftctl.trainer.sft_trainer import SFTTrainer

    runs = {}
    for late in (True, False):
        trainer = type("Late" if late else "AtOnce", (SFTTrainer,), {"defer_logs": late})
        spec, plan = make_run(
            tiny_model_dir, tiny_data, tmp_path / str(late), "lora", max_steps=6, save_steps=3, logging_steps=1
        )
        runs[late] = _run(spec, plan, monkeypatch, trainer)
        monkeypatch.undo()
    (late, late_result), (now, now_result) = runs[True], runs[False]

    assert now.events == [e for step in range(1, 7) for e in (("end", step), ("log", step))]
    assert late.events == [
        ("end", 1), ("end", 2), ("log", 1), ("end", 3), ("log", 2), ("log", 3),
        ("end", 4), ("end", 5), ("log", 4), ("end", 6), ("log", 5), ("log", 6),
    ]  # fmt: skip
    assert len(late.logs) == len(now.logs) == 6
    for a, b in zip(late.logs, now.logs):
        assert set(a) == set(b)
        for key in (*LOGGED, "learning_rate", "epoch"):
            assert a[key] == pytest.approx(b[key], rel=1e-6), key
    assert late.per_step == [0] * 6  # still nothing in a step waits for the device
    history = [
        json.loads(Path(tmp_path, str(k), "checkpoint-3", "trainer_state.json").read_text())["log_history"]
        for k in (True, False)
    ]
    assert [h["step"] for h in history[0]] == [h["step"] for h in history[1]] == [1, 2, 3]
    assert [h["loss"] for h in history[0]] == pytest.approx([h["loss"] for h in history[1]], rel=1e-6)
    ends = [next(h for h in r.log_history if "train_loss" in h) for r in (late_result, now_result)]
    assert ends[0]["train_loss"] == pytest.approx(ends[1]["train_loss"], rel=1e-6)
    assert [h["step"] for h in late_result.log_history] == [h["step"] for h in now_result.log_history]


def test_a_run_that_fails_still_writes_its_late_log(tiny_model_dir, tiny_data, tmp_path, one_thread, monkeypatch):
    from transformers import TrainerCallback

    from ftctl.trainer.run import train
    from ftctl.trainer.sft_trainer import SFTTrainer
    from tests.trainer_fixtures import losses_by_step

    class Fail(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise RuntimeError("step 3 failed")

    monkeypatch.setattr(SFTTrainer, "defer_logs", True)
    spec, plan = make_run(tiny_model_dir, tiny_data, tmp_path, "lora", max_steps=6, save_steps=100, logging_steps=1)
    with pytest.raises(RuntimeError, match="step 3 failed"):
        train(spec, plan, callbacks=[Fail()], echo=lambda line: None)
    assert list(losses_by_step(tmp_path)) == [1, 2]  # step 2's log, still on its way when step 3 failed


def test_a_step_keeps_every_module_training_without_walking_the_model(
    tiny_model_dir, tiny_data, tmp_path, one_thread, monkeypatch
):
    """transformers' step calls model.train() (a walk over every module) at every step; ftctl's checks a list
    taken once and switches back only the modules found in eval mode: the loaded model at the first step,
    then one a callback put there before the second."""
    import torch
    from transformers import TrainerCallback

    from ftctl.trainer.run import train

    calls, seen = [], []
    original = torch.nn.Module.train

    def counted(self, mode=True):
        calls.append((type(self).__name__, mode))
        return original(self, mode)

    monkeypatch.setattr(torch.nn.Module, "train", counted)

    class EvalOne(TrainerCallback):
        def on_step_begin(self, args, state, control, model=None, **kwargs):
            calls.clear()
            self.module = next(m for m in model.modules() if isinstance(m, torch.nn.Dropout))
            if state.global_step == 1:  # the second step begins with one module in eval mode
                self.module.eval()
                calls.clear()
            self.hook = self.module.register_forward_pre_hook(lambda m, args: seen.append(m.training))

        def on_step_end(self, args, state, control, model=None, **kwargs):
            self.hook.remove()
            assert all(m.training for m in model.modules())
            assert "train" not in vars(model)  # the step's no-op train() is gone
            if state.global_step > 1:  # the first step switches the loaded model (from_pretrained's eval mode)
                assert calls == ([("Dropout", True)] if state.global_step == 2 else []), calls

    spec, plan = make_run(tiny_model_dir, tiny_data, tmp_path, "lora", max_steps=3, save_steps=100, logging_steps=1)
    result = train(spec, plan, callbacks=[EvalOne()], echo=lambda line: None)
    assert result.status == "complete"
    assert seen and all(seen)  # the module ran in training mode in every forward, the second step's too


def test_a_tied_heads_second_copy_is_left_out_of_a_gathered_state_dict():
    """Under ZeRO-2 and FSDP2 the Trainer's gathered state dict holds a tied LM head and its embedding as two
    tensors, and model.safetensors held the embedding twice (bench/NOTES.md v66)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from ftctl.trainer.sft_trainer import untied_copy_dropped

    def model(tied: bool):
        config = LlamaConfig(
            vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            num_key_value_heads=1, tie_word_embeddings=tied,
        )  # fmt: skip
        return LlamaForCausalLM(config)

    tied = model(True)
    gathered = {k: v.clone() for k, v in tied.state_dict().items()}  # two tensors, as a gather makes them
    assert "lm_head.weight" in gathered and "lm_head.weight" not in untied_copy_dropped(tied, gathered)
    assert set(untied_copy_dropped(tied, gathered)) == set(gathered) - {"lm_head.weight"}
    gathered["lm_head.weight"] = gathered["lm_head.weight"] + 1  # not a copy: kept
    assert untied_copy_dropped(tied, gathered) is gathered
    untied = model(False)
    own = {k: v.clone() for k, v in untied.state_dict().items()}
    own["lm_head.weight"] = own["model.embed_tokens.weight"].clone()  # equal by chance, but its own weight
    assert untied_copy_dropped(untied, own) is own
    assert untied_copy_dropped(tied, {}) == {}  # a rank's empty share (ZeRO-3's non-writers): nothing to drop


def test_a_packed_rows_tokens_seen_count_its_end_of_turn_tokens():
    """Padding-free packed batches have no attention mask: the tokens were counted as those that are not the pad
    token, and SmolLM's pad is its <|im_end|>, which closes every turn: 104 tokens counted of 114 trained."""
    import torch

    from ftctl.trainer.sft_trainer import non_padding_tokens

    eot = 2  # pad and end of turn alike
    ids = torch.tensor([[5, 6, eot, 7, 8, 9, eot, eot, eot]])
    positions = torch.tensor([[0, 1, 2, 0, 1, 2, 3, 0, 0]])  # two samples, then two padding tokens (position 0)
    assert non_padding_tokens({"input_ids": ids, "position_ids": positions}, ids, eot).item() == 7
    masked = {"input_ids": ids, "attention_mask": torch.tensor([[1] * 7 + [0, 0]])}
    assert non_padding_tokens(masked, ids, eot).item() == 7
    assert non_padding_tokens({"input_ids": ids}, ids, 9).item() == 8 and non_padding_tokens({}, ids, None) is None


def test_the_final_cast_goes_tensor_by_tensor_to_the_cpu_keeping_a_tied_heads_one_copy():
    """cast_for_saving: each floating-point tensor replaced in the caller's dict by its cast on the CPU (a gathered
    fp32 state dict lets each tensor go as it is cast), a tied head and its embedding still one tensor (which
    untied_copy_dropped then leaves out), integer tensors as they were."""
    import torch

    from ftctl.trainer.sft_trainer import cast_for_saving

    embedding = torch.randn(8, 4)
    state = {"embed.weight": embedding, "head.weight": embedding, "norm.weight": torch.ones(4), "ids": torch.arange(3)}
    ids = state["ids"]
    assert cast_for_saving(state, torch.bfloat16) is state
    assert {k: v.dtype for k, v in state.items()} == {
        "embed.weight": torch.bfloat16,
        "head.weight": torch.bfloat16,
        "norm.weight": torch.bfloat16,
        "ids": torch.int64,
    }
    assert state["head.weight"] is state["embed.weight"] and state["ids"] is ids
    assert torch.equal(state["embed.weight"], embedding.to(torch.bfloat16))
