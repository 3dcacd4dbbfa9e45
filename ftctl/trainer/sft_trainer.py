"""TRL's SFTTrainer with the host's waits on the GPU taken out of the training step.

Every ``.item()`` (or Python truth value) of a CUDA tensor makes the host wait until the GPU has run
all the work queued so far; what the host does next (fetch the next batch, launch the next forward's
first small ops) is then time the GPU sits idle. TRL 1.16's ``compute_loss`` has four such waits in
every micro-step (its entropy and token-accuracy metrics and its token count) and transformers'
Trainer one more (the tokens seen). Here the same numbers are summed on the GPU and become Python
numbers only when they are logged or a checkpoint is saved: the logs carry the same values.

Only TRL's plain path is taken over (the fused head's negative log-likelihood, no custom loss, label
smoothing, DFT, MoE auxiliary loss or sequence parallelism); anything else runs TRL's own code.

Under DDP the gradients are views into the reducer's buckets (``gradient_as_bucket_view``, which the
Trainer has no argument for): without it every gradient is a tensor of its own beside its bucket, copied
into the bucket and back each step. The buckets themselves stay (plan.py's ``ddp_buckets``); on two H200s
neither the 1B fft peak nor its speed moved measurably (bench/NOTES.md, v6). ``ddp_comm_dtype="bf16"``
all-reduces each bucket in bf16 (accelerate's comm hook: half the bytes; the sum is rounded to bf16).
"""

from __future__ import annotations

import torch
from accelerate.utils import DDPCommunicationHookType, DistributedDataParallelKwargs
from trl import SFTTrainer as TrlSFTTrainer


class SFTTrainer(TrlSFTTrainer):
    def __init__(self, *args, ddp_comm_dtype: str | None = None, **kwargs):
        self._ddp_comm_dtype = ddp_comm_dtype  # read by _build_accelerator_args, inside super().__init__
        super().__init__(*args, **kwargs)
        self._pending: dict[str, torch.Tensor] = {}  # counts summed on the device since the last flush

    def _build_accelerator_args(self, **kwargs) -> dict:
        args = super()._build_accelerator_args(**kwargs)
        for handler in args.get("kwargs_handlers", ()):
            if isinstance(handler, DistributedDataParallelKwargs):
                handler.gradient_as_bucket_view = True
                if self._ddp_comm_dtype == "bf16":
                    handler.comm_hook = DDPCommunicationHookType.BF16
        return args

    # ---------------------------------------------------------------------------------- the step
    def _plain_loss(self) -> bool:
        sp = getattr(self.accelerator, "parallelism_config", None)
        return (
            self.compute_loss_func is None
            and self.label_smoother is None
            and self.args.loss_type == "nll"
            and not self.aux_loss_enabled
            and not (sp is not None and getattr(sp, "sp_enabled", False))
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if return_outputs or not self._plain_loss():
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        # TRL's plain path, line for line, without its .item() calls
        inputs["use_cache"] = False
        outputs = model(**inputs, fused_lm_head=True)
        num_tokens = outputs.label_mask.sum() if num_items_in_batch is None else num_items_in_batch
        loss = -outputs.log_probs.sum() / torch.as_tensor(num_tokens).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())

        mode = "train" if self.model.training else "eval"
        gather = self.accelerator.gather_for_metrics
        valid = gather(outputs.label_mask.sum()).sum().clamp(min=1)  # TRL: 0.0 when no token counts
        self._metrics[mode]["entropy"].append(gather(outputs.entropy.detach().sum()).sum() / valid)
        self._metrics[mode]["mean_token_accuracy"].append(gather(outputs.is_top1.sum()).sum() / valid)
        if mode == "train":
            if "attention_mask" in inputs:
                local = inputs["attention_mask"].sum()
            elif "position_ids" in inputs:
                local = _count(inputs["position_ids"].size(1), inputs["position_ids"].device)
            else:
                raise ValueError("Expected 'attention_mask' or 'position_ids' in inputs.")
            self._add("trl_tokens", gather(local).sum())
        return loss

    def _track_num_input_tokens(self, inputs):
        """transformers' count of the tokens seen, kept on the device until the next flush."""
        name = getattr(self.model, "main_input_name", "input_ids")
        if self.args.include_num_input_tokens_seen == "no" or name not in inputs:
            return super()._track_num_input_tokens(inputs)
        ids, pad = inputs[name], getattr(self.processing_class, "pad_token_id", None)
        non_padding = self.args.include_num_input_tokens_seen == "non_padding"
        if non_padding and "attention_mask" in inputs:
            tokens = inputs["attention_mask"].sum()
        elif non_padding and pad is not None:
            tokens = (ids != pad).sum()
        else:
            tokens = _count(ids.numel(), ids.device)
        self._add("tokens_seen", self.accelerator.gather(tokens.to(torch.int64)).sum())

    # ---------------------------------------------------------------------------------- to floats
    def _add(self, name: str, value: torch.Tensor) -> None:
        self._pending[name] = value if name not in self._pending else self._pending[name] + value

    def _flush(self) -> None:
        """Fold the device sums into the Trainer's and TRL's Python counters (one wait for all)."""
        pending, self._pending = self._pending, {}
        if "tokens_seen" in pending:
            self.state.num_input_tokens_seen += int(pending["tokens_seen"].item())
        if "trl_tokens" in pending:
            self._total_train_tokens += int(pending["trl_tokens"].item()) // self._tp_size
            self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
        for values in self._metrics.values():
            for key, items in values.items():
                if any(isinstance(v, torch.Tensor) for v in items):
                    values[key] = [v.item() if isinstance(v, torch.Tensor) else v for v in items]

    def log(self, logs, start_time=None):
        self._flush()
        super().log(logs, start_time)

    def _save_checkpoint(self, model, trial):
        self._flush()  # trainer_state.json records the tokens seen
        super()._save_checkpoint(model, trial)


def _count(n: int, device) -> torch.Tensor:
    """A count as a tensor on ``device`` without a host-to-device copy (a copy from pageable memory waits)."""
    return torch.full((), n, dtype=torch.int64, device=device)
