"""A run whose loss went NaN or infinite stops there, saying how to go on (callbacks of trainer/run.py's Trainer).

Once a step's loss or gradient norm is NaN in bf16 or fp32, the optimizer writes NaN into the weights, and every
later step, checkpoint and the final model are NaN: the run trained to its end, said ``complete`` and offered
``ftctl chat``. Here it stops at the first such logged step, before that step's checkpoint (the Trainer logs a step
before it saves it), so the newest checkpoint is the last sound one, and the error names it with the lower learning
rate to relaunch with (which the relaunch takes from that checkpoint on: callbacks.ApplySettings).

Under fp16 a step with an overflow is normal: the loss scaler skips it (no update), so a non-finite gradient norm
is passed over there, and a non-finite loss stops the run only after FP16_TOLERATED logged steps in a row.
"""

from __future__ import annotations

import math
import shlex

from transformers import TrainerCallback

from ftctl.errors import FtctlError

FP16_TOLERATED = 5  # logged steps in a row with a non-finite loss that fp16's loss scaler may still recover from


def finite(value) -> bool:
    return not isinstance(value, (int, float)) or math.isfinite(value)


class StopWhenDiverged(TrainerCallback):
    """Raises FtctlError (every rank: the logged loss and gradient norm are the processes' mean) at the first logged
    step whose loss, or outside fp16 whose gradient norm, is NaN or infinite."""

    def __init__(self, model: str = "MODEL", data: str = "DATA"):
        self.model, self.data = model, data  # the run's, named in `ftctl eval` of the base
        self.last_good: tuple[int, float] | None = None  # (step, loss) of the last finite logged loss
        self.saved: int | None = None  # the newest checkpoint's step, this attempt's or the one it resumed
        self.bad_in_a_row = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.saved = state.global_step or None  # a resumed run starts from its checkpoint
        return control

    def on_save(self, args, state, control, **kwargs):
        self.saved = state.global_step
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs:  # an evaluation, or the end-of-training summary
            return control
        loss, norm = logs.get("loss"), logs.get("grad_norm")
        if finite(loss) and (args.fp16 or finite(norm)):
            self.last_good, self.bad_in_a_row = (state.global_step, loss), 0
            return control
        self.bad_in_a_row += 1
        if args.fp16 and self.bad_in_a_row < FP16_TOLERATED:
            return control
        raise FtctlError(self.message(state.global_step, loss, norm, args))

    def message(self, step: int, loss, norm, args) -> str:
        """The error line: which step, the fix (a tenth of the learning rate, clipping where it was off), and the
        checkpoint the relaunch goes on from; at step 1 (before any update) the base model or data instead."""
        what = f"loss is {loss}" if not finite(loss) else f"gradient norm is {norm} (loss {loss:.4f})"
        if step == 1:
            return (
                f"the {what} at step {step}, before any update: the base model or this data gives NaN as it is (weights saved in fp16 whose values overflow, or a damaged download): "
                f"`ftctl eval {shlex.quote(str(self.model))} --data {shlex.quote(str(self.data))}` scores the base alone; nothing was saved."
            )
        before = (
            f" (the last finite loss: {self.last_good[1]:.4f} at step {self.last_good[0]})" if self.last_good else ""
        )
        lower = f"-o learning_rate={args.learning_rate / 10:.2g} (a tenth of this run's {args.learning_rate:g})"
        clip = "" if args.max_grad_norm else " and -o max_grad_norm=1.0 (off in this run)"
        goes_on = (
            f"it resumes from checkpoint-{self.saved}, the last one saved before"
            if self.saved
            else "it starts again: no checkpoint was saved yet"
        )
        return (
            f"training diverged: the {what} at step {step}{before}. Every step from here would train NaN weights, so "
            f"the run stops without saving them. Relaunch with a lower learning rate, {lower}{clip}: {goes_on}."
        )
