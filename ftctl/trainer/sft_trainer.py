"""TRL's SFTTrainer with the host's waits on the GPU taken out of the training step.

Every ``.item()`` (or Python truth value) of a CUDA tensor makes the host wait until the GPU has run
all the work queued so far; what the host does next (fetch the next batch, launch the next forward's
first small ops) is then time the GPU sits idle. TRL 1.16's ``compute_loss`` has four such waits in
every micro-step (its entropy and token-accuracy metrics and its token count) and transformers'
Trainer one more (the tokens seen). Here the same numbers are summed on the GPU and become Python
numbers only when they are logged or a checkpoint is saved: the logs carry the same values. The tokens
seen are counted on the host instead, by the collator before the batch goes to the device (counting_tokens):
in one process state.num_input_tokens_seen holds every token of the steps done at each step's end.

Only TRL's plain path is taken over (the fused head's negative log-likelihood, no custom loss, label
smoothing, DFT, MoE auxiliary loss or sequence parallelism); anything else runs TRL's own code. On that
path the LM head's loss is lm_head.py's where it can run (its gradients taken in the forward: one pass
over the logits), TRL's fused head elsewhere; the loss and the logged metrics are the same.

On a GPU a step's log is also read a step late (``defer_logs``): at the step's end its loss, gradient norm,
metrics and token counts start on their way to the host (``distributed.to_host_later``) and the log is
written at the next step's end, when they have long arrived. Reading them at once (transformers' and TRL's
``.item()`` calls) drains the GPU at every logged step, and the host's work between two steps (callbacks,
the next batch) then runs with nothing queued: 42 ms of idle a step of 8B qlora on an H200 (bench/NOTES.md,
v9). A step that saves, evaluates or ends training logs at once, after the late one, so checkpoints and the
final metrics hold every log; the values and their steps are the same either way.

Under DDP the gradients are views into the reducer's buckets (``gradient_as_bucket_view``, which the
Trainer has no argument for): without it every gradient is a tensor of its own beside its bucket, copied
into the bucket and back each step. The buckets themselves stay (plan.py's ``ddp_buckets``); on two H200s
neither the 1B fft peak nor its speed moved measurably (bench/NOTES.md, v6).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate.utils import DistributedDataParallelKwargs, DistributedType, is_peft_model
from transformers import Trainer
from transformers.trainer import SCHEDULER_NAME
from transformers.trainer_pt_utils import nested_gather
from transformers.trainer_utils import SchedulerType
from trl import SFTConfig as TrlSFTConfig
from trl import SFTTrainer as TrlSFTTrainer

from ftctl.runpaths import MODEL_CONFIG, as_umask
from ftctl.trainer import lm_head, reshard
from ftctl.trainer.distributed import adapter_state_dict, local, offloads_optimizer, to_host_later
from ftctl.trainer.trained import adapter_stops, as_transformers_4_reads, name_base

log = logging.getLogger(__name__)


class _Dropped(logging.Filter):
    """transformers' warning that a resumed state's best checkpoint "does not exist anymore", held back:
    SFTTrainer._init_training_state finds it again where the store holds it, else says so itself."""

    message: str | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if "recorded in the resumed state does not exist anymore" in record.getMessage():
            self.message = record.getMessage()
            return False
        return True


@dataclass
class _LateLog:
    """One step's log on its way to the host (SFTTrainer.defer_logs)."""

    step: int
    epoch: float | None
    steps: int  # optimizer steps the loss sums over
    learning_rate: float
    start_time: float | None
    names: list  # what each value of read() is
    read: object  # to_host_later's reader
    plain: dict  # values that were Python numbers already
    tokens: int = 0  # state.num_input_tokens_seen at its step (less the count on its way, under several processes)


class SFTConfig(TrlSFTConfig):
    def __post_init__(self):
        """lr_scheduler_type=constant with a warm-up trains transformers' constant_with_warmup: its own constant
        schedule ignores warmup_steps without a word, so qlora.py's run file (constant, warmup_ratio 0.03) trained
        its first steps at the full rate while the file said they warm up. Here warm-up is a key of its own, the
        schedule's shape what comes after it (SFTTrainer.create_scheduler says so in the log); warmup_ratio 0 gives
        transformers' constant, what qlora.py itself ran."""
        super().__post_init__()
        self.warmed_constant = self.lr_scheduler_type == SchedulerType.CONSTANT and self.warmup_steps > 0
        if self.warmed_constant:
            self.lr_scheduler_type = SchedulerType.CONSTANT_WITH_WARMUP

    def get_warmup_steps(self, num_training_steps: int) -> int:
        """warmup_ratio's steps rounded down, not up as transformers does: its linear warm-up gives the first step a
        learning rate of 0, so under 34 steps warmup_ratio=0.03 wasted one (a 1-step run on a small file trained
        nothing). The Trainer's scheduler asks it (ftctl's DeepSpeed configs leave the schedule to the Trainer)."""
        if self.warmup_steps >= 1:
            return int(self.warmup_steps)
        return math.floor(num_training_steps * self.warmup_steps + 1e-9)  # 0.29 x 100 is 28.999...


def fp32_trainables(model) -> list[tuple[torch.nn.Parameter, torch.Tensor]]:
    """Each trainable fp32 parameter of a 4-bit or 8-bit model with its data, for SFTTrainer to put back once TRL's
    __init__ has cast them to bf16 (TRL 1.16 does so to every trainable parameter of a quantized model but DoRA's
    magnitude, after the QLoRA paper, whoever made the adapters). ftctl's QLoRA adapters stay fp32, as its LoRA's do
    and as plan.py counts and final_dtype saves them: in bf16 an AdamW step at QLoRA's 2e-4 is under half the spacing
    of a weight from 1/16 up, and rounds away (the tiny test model's qlora at 2e-4: 47% of its lora_A weights never
    moved in 8 steps, none in fp32). Old checkpoints' bf16 adapters and moments load into the fp32 ones. Empty for any
    other model (tests/test_trl_parity228.py)."""
    if model is None or isinstance(model, str):
        return []
    if not (getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)):
        return []
    return [(p, p.data) for p in model.parameters() if p.requires_grad and p.dtype == torch.float32]


def untied_copy_dropped(model, state_dict: dict) -> dict:
    """``state_dict`` without the LM head's weight where the model ties it to its input embedding and the two
    are equal (the tie's second copy); unchanged otherwise."""
    config = getattr(model, "config", None)
    base = model.get_base_model() if is_peft_model(model) else model
    if not getattr(config, "tie_word_embeddings", False) or not hasattr(base, "get_output_embeddings"):
        return state_dict
    head, embedding = base.get_output_embeddings(), base.get_input_embeddings()
    names = {id(m): name for name, m in base.named_modules()}
    if head is None or embedding is None or id(head) not in names or id(embedding) not in names:
        return state_dict
    head_key, embedding_key = f"{names[id(head)]}.weight", f"{names[id(embedding)]}.weight"
    head_w, embedding_w = state_dict.get(head_key), state_dict.get(embedding_key)
    if (
        head_w is None
        or embedding_w is None
        or head_w.shape != embedding_w.shape
        or not torch.equal(head_w, embedding_w)
    ):
        return state_dict
    return {k: v for k, v in state_dict.items() if k != head_key}


def cast_for_saving(state_dict: dict, dtype: torch.dtype) -> dict:
    """``state_dict`` (changed in place, and returned) with its floating-point tensors in ``dtype`` on the CPU, cast
    one tensor at a time: on a GPU each one is cast there on its way to the host (one tensor's 16-bit copy at a
    time, never a second model), and each replaced tensor is let go at once (a gathered fp32 state dict in host RAM
    shrinks as it goes: its caller holds the same dict). Tensors that shared their memory (a tied LM head) share it
    again."""
    done: dict[tuple, torch.Tensor] = {}
    for key in list(state_dict):
        value = state_dict[key]
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            continue
        same = (value.device, value.data_ptr(), value.dtype, tuple(value.shape), value.stride())
        if same not in done:
            done[same] = value.to(device="cpu", dtype=dtype)
        state_dict[key] = done[same]
    return state_dict


def label_dtype(model_dir: str, dtype: torch.dtype) -> None:
    """config.json's dtype set to what the weights beside it hold (save_pretrained writes the model's parameters'
    dtype: the fp32 masters'); trained.for_other_readers then writes it where transformers 4 reads it too."""
    path = os.path.join(model_dir, MODEL_CONFIG)
    config = json.loads(Path(path).read_text())
    config["dtype"] = str(dtype).removeprefix("torch.")
    Path(path).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def saving_final(trainer, dtype: torch.dtype | None):
    """``trainer.save_model`` inside saves the final model with its floating-point weights in ``dtype`` (None: as
    they are): the checkpoints, saved by the same _save, keep the fp32 masters a resume needs. A trainer other than
    ftctl's (TRL's own, which a test runs beside it) saves as it does."""
    trainer.final_dtype = dtype
    try:
        yield
    finally:
        trainer.final_dtype = None


def trains_embeddings(model) -> bool:
    """Whether the adapter of ``model`` (a PeftModel) trains the input embedding or the LM head (lora_target_modules
    naming embed_tokens or lm_head): then its saves hold them, as PEFT's save_embedding_layers="auto" decides. ftctl
    never resizes the vocabulary (no token is added: a tokenizer without a pad token pads with its eos), the other
    case where "auto" saves them."""
    from peft.utils.save_and_load import has_valid_embedding_base_layer

    base = model.get_base_model()
    layers = (base.get_input_embeddings(), getattr(base, "get_output_embeddings", lambda: None)())
    return any(layer is not None and has_valid_embedding_base_layer(layer) for layer in layers)


@contextlib.contextmanager
def embeddings_as_trained(model):
    """Saves of ``model`` (a PeftModel; anything else as it is) inside say PEFT's save_embedding_layers
    (trains_embeddings) instead of leaving it "auto", which, to tell whether the vocabulary was resized, asks the
    Hub for the base's config.json wherever the adapter's config names an id (the base loaded by its id): at every
    checkpoint, and on a node offline without HF_HUB_OFFLINE two warnings a save (transformers' Trainer.save_model
    has no argument for it)."""
    if not is_peft_model(model):
        yield
        return
    model.save_pretrained = functools.partial(
        type(model).save_pretrained, model, save_embedding_layers=trains_embeddings(model)
    )
    try:
        yield
    finally:
        del model.save_pretrained


class SFTTrainer(TrlSFTTrainer):
    defer_logs: bool | None = None  # a step's log written at the next step's end; None: on CUDA
    final_dtype: torch.dtype | None = None  # set while the final model is saved (saving_final); None: as trained
    card = None  # writes the run's README.md into a directory (model_card.write); None: TRL's card
    loads_best = False  # load_best_model_at_end: the run's end loads the lowest held-out loss's checkpoint (run.py)
    final_weights: dict | None = None  # what run.load_best loaded: weights_step, eval_loss, checkpoint, last_step
    _checkpoint_step: int | None = None  # while a checkpoint is saved: its step

    def create_model_card(self, model_name=None, dataset_name=None, tags=None):
        """ftctl's card (trainer/model_card.py) where the run gave one: TRL's names a local base "None". With
        load_best_model_at_end it says which step's weights the final model holds."""
        if self.card is None:
            return super().create_model_card(model_name, dataset_name, tags)
        if self.is_world_process_zero():
            self.card(self.args.output_dir)
            if self.final_weights:
                from ftctl.trainer.model_card import README

                with open(os.path.join(self.args.output_dir, README), "a") as f:
                    f.write(weights_said(self.final_weights))

    def __init__(self, *args, **kwargs):
        model = kwargs.get("model", args[0] if args else None)
        kept = fp32_trainables(model)
        super().__init__(*args, **kwargs)
        for param, data in kept:  # TRL's bf16 cast of a quantized model's adapters undone (fp32_trainables)
            param.data = data
        self._pending: dict[str, torch.Tensor] = {}  # counts summed on the device since the last flush
        self._late: _LateLog | None = None
        self._flop_params: int | None = None  # floating_point_ops' parameter count, taken once
        self._modules: list | None = None  # training_step's list of the model's modules, taken once
        self._base = self.model.get_base_model() if is_peft_model(self.model) else self.model  # as TRL patches
        self._own_head: bool | None = None  # lm_head's loss, known at the first step (the model wrapped by then)
        lm_head.add_head(self._base)
        self.data_collator = counting_tokens(
            lm_head.counting_scored(self.data_collator), getattr(self.processing_class, "pad_token_id", None)
        )
        if self.defer_logs is None:
            self.defer_logs = self.args.device.type == "cuda"

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        made = self.lr_scheduler is None
        scheduler = super().create_scheduler(num_training_steps, optimizer)
        warmup = self.args.get_warmup_steps(num_training_steps)
        if made and getattr(self.args, "warmed_constant", False) and warmup and self.is_world_process_zero():
            log.info(
                "lr_scheduler_type=constant: the learning rate warms up over %d of the %d steps, then stays constant "
                "(transformers' constant_with_warmup; its constant, which qlora.py ran, skips the warm-up: "
                "-o warmup_ratio=0 for that)",
                warmup,
                num_training_steps,
            )
        return scheduler

    @staticmethod
    def get_optimizer_cls_and_kwargs(args, model=None):
        """The offload strategies' optimizer: torch's AdamW over the Trainer's parameter groups, which accelerate
        turns into DeepSpeed's CPU AdamW (fp32 states in CPU RAM) with those groups (accelerate.utils.deepspeed.
        map_pytorch_optim_to_deepspeed), so that weight_decay leaves the norms and biases alone as under every
        other strategy (from the DeepSpeed config's optimizer section it decayed them: one group of every
        parameter). AdamW itself, whatever ``optim`` says: accelerate maps any other optimizer (DeepSpeed's CPU
        Adam given directly, an 8-bit AdamW) to CPU Adam with its weight decay added to the gradients (Adam's L2,
        not AdamW's): a 1B fft at weight_decay 0.1 then barely trained (bench/NOTES.md v71)."""
        if not offloads_optimizer(args.deepspeed):
            return Trainer.get_optimizer_cls_and_kwargs(args, model)
        betas = (args.adam_beta1, args.adam_beta2)
        return torch.optim.AdamW, {"lr": args.learning_rate, "betas": betas, "eps": args.adam_epsilon}

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        self._decays = [group["weight_decay"] for group in optimizer.param_groups]  # kept across a resume
        return optimizer

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        """The checkpoint's schedule (and, without DeepSpeed, its optimizer), then each group's weight decay as this
        run built it: DeepSpeed's universal load under ZeRO-3 gives every group the first's, and the norms were
        decayed again. A DeepSpeed checkpoint without scheduler.pt (an old offload run's, reshard.config_optimizer)
        has the schedule in DeepSpeed's state: taken from there, for each of the run's groups."""
        if checkpoint is None:
            return
        kept = None
        if self.is_deepspeed_enabled and not os.path.isfile(os.path.join(checkpoint, SCHEDULER_NAME)):
            kept = reshard.saved_schedule(checkpoint)
        if kept is None:
            super()._load_optimizer_and_scheduler(checkpoint)
        else:
            self.lr_scheduler.load_state_dict(each_group(kept, len(self.optimizer.param_groups)))
        for group, decay in zip(self.optimizer.param_groups, getattr(self, "_decays", ())):
            group["weight_decay"] = decay
        self._keep_full_rate(checkpoint)

    def _keep_full_rate(self, checkpoint: str) -> None:
        """lr_scheduler_type=constant warms up (SFTConfig.warmed_constant); an ftctl before 4 Dec 2026 (abece96)
        trained it at the full rate from the first step. Its checkpoint saved within the warm-up (the rate full
        where this schedule's is not) goes on at the full rate: warming up again from there, its resumed steps
        dropped below the rate its earlier ones had."""
        scheduler = self.lr_scheduler
        lambdas = getattr(scheduler, "lr_lambdas", None)
        if not (getattr(self.args, "warmed_constant", False) and lambdas and scheduler.last_epoch > 0):
            return
        full = all(math.isclose(lr, base) for lr, base in zip(scheduler.get_last_lr(), scheduler.base_lrs))
        if not full or lambdas[0](scheduler.last_epoch) >= 1:
            return
        scheduler.lr_lambdas = [_full_rate] * len(lambdas)
        if self.is_world_process_zero():
            log.warning(
                "%s trained its %d steps at the full learning rate (lr_scheduler_type=constant without the warm-up, "
                "as an ftctl before 4 Dec 2026 ran it): the run goes on at the full rate, not warming up again",
                os.path.basename(checkpoint.rstrip("/")),
                scheduler.last_epoch,
            )

    def _build_accelerator_args(self, **kwargs) -> dict:
        args = super()._build_accelerator_args(**kwargs)
        for handler in args.get("kwargs_handlers", ()):
            if isinstance(handler, DistributedDataParallelKwargs):
                handler.gradient_as_bucket_view = True
        return args

    # ---------------------------------------------------------------------------------- the step
    def training_step(self, model, inputs, num_items_in_batch=None):
        """transformers' step, which starts with ``model.train()``: a recursive walk that sets every module's
        flag through ``nn.Module.__setattr__``, at every micro-step (the 8B shape with LoRA adapters has
        thousands of modules: the v10 profile found the walk between two steps while the GPU waited,
        bench/NOTES.md). Here a module list taken once is checked, any module found in eval mode is switched
        back as ``train()`` would, and the step's own call returns at once."""
        if self._modules is None or self._modules[0] is not model:
            self._modules = list(model.modules())  # the model first
        for module in self._modules:
            if not module.training:
                module.train()
        model.train = lambda mode=True: model if mode else type(model).train(model, mode)
        try:
            return super().training_step(model, inputs, num_items_in_batch)
        finally:
            del model.train

    def _clip_grad_norm(self, model):
        """transformers' clipping multiplies every gradient by max_norm / norm where the norm is larger: a pass
        that reads and writes them all (1B fft on an H200: 2.7 ms of a 250 ms step). Torch's fused AdamW divides
        the gradients by its ``grad_scale`` as it reads them (GradScaler's hook), so here the norm is taken and
        the scale handed to it instead: the same update, the gradients themselves left unclipped. Only where
        nothing else sets that scale or clips differently: fused Adam/AdamW, no fp16 loss scaler, one process or
        DDP (DeepSpeed, FSDP and mixed meshes clip their own way)."""
        inner = getattr(self.optimizer, "optimizer", self.optimizer)
        if not (
            isinstance(inner, torch.optim.Adam | torch.optim.AdamW)
            and inner.defaults.get("fused")
            and self.accelerator.scaler is None
            and self.accelerator.distributed_type in (DistributedType.NO, DistributedType.MULTI_GPU)
            and not self._has_mixed_mesh_grads(model)
        ):
            return super()._clip_grad_norm(model)
        norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
        inner.grad_scale = ((norm.float() + 1e-6) / self.args.max_grad_norm).clamp(min=1.0)  # 1 / clip_coef
        return norm

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
        scored = inputs.pop("scored", None)  # lm_head.counting_scored's: only lm_head's loss takes it
        inputs.pop(TOKENS, None)  # counting_tokens': the model takes no such argument
        if return_outputs or not self._plain_loss():
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        # TRL's plain path without its .item() calls, its LM head's gradients taken in the forward (lm_head.py)
        inputs["use_cache"] = False
        if self._own_head is None:
            self._own_head = lm_head.usable(self._base)
        if self._own_head:
            outputs = model(**inputs, ftctl_head=True, scored=scored)
            label_count, sum_log_probs = outputs.tokens, outputs.sum_log_probs
            sum_entropy, top1 = outputs.sum_entropy, outputs.top1
        else:
            outputs = model(**inputs, fused_lm_head=True)
            label_count, sum_log_probs = outputs.label_mask.sum(), outputs.log_probs.sum()
            sum_entropy, top1 = outputs.entropy.detach().sum(), outputs.is_top1.sum()
        num_tokens = label_count if num_items_in_batch is None else num_items_in_batch
        loss = -sum_log_probs / torch.as_tensor(num_tokens).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())

        mode = "train" if self.model.training else "eval"
        gather = self.accelerator.gather  # sums, one a process: gather_for_metrics would cut ranks off at an end
        valid = gather(label_count).sum().clamp(min=1)  # TRL: 0.0 when no token counts
        self._metrics[mode]["entropy"].append(gather(sum_entropy).sum() / valid)
        self._metrics[mode]["mean_token_accuracy"].append(gather(top1).sum() / valid)
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
        """transformers' count of the tokens seen (include_num_input_tokens_seen="non_padding": the batch's tokens
        that are no padding, a packed row's trailing padding left out too), without a wait on the device. In one process it is the
        count taken on the host (counting_tokens; "all": the batch's shape), added at once, so the state holds every
        token of the steps done at each step's end, where callbacks read it. Summed on the device and added only when
        a log or a checkpoint read it (_flush), at step N's end it held steps 1..N-1's, and on a GPU, where a step's
        log comes a step late, 1..N-2's: bench/NOTES.md v110 took 0.8x a step's tokens from its differences over
        steps 2-6 on an H100 (one of them 0); the logs held the right count. Several processes: each one's count is
        gathered on the device and added at the next log or checkpoint (their sum reaches a host only through the
        device), so there it still lags at a step's end."""
        name = getattr(self.model, "main_input_name", "input_ids")
        if self.args.include_num_input_tokens_seen == "no" or name not in inputs:
            return super()._track_num_input_tokens(inputs)
        ids, pad = inputs[name], getattr(self.processing_class, "pad_token_id", None)
        counted = inputs.get(TOKENS) if self.args.include_num_input_tokens_seen == "non_padding" else ids.numel()
        if counted is not None and self.accelerator.num_processes == 1:
            self.state.num_input_tokens_seen += int(counted)
            return
        tokens = None if counted is None else _count(counted, ids.device)
        if tokens is None and self.args.include_num_input_tokens_seen == "non_padding":
            tokens = non_padding_tokens(inputs, ids, pad)
        if tokens is None:
            tokens = _count(ids.numel(), ids.device)
        self._add("tokens_seen", self.accelerator.gather(tokens.to(torch.int64)).sum())

    def floating_point_ops(self, inputs) -> int:
        """transformers' estimate, 6 x tokens x parameters without the embeddings, with the parameter count
        taken once, at the first step (after the model is wrapped): counting walks every module and parameter,
        4.5 ms a micro-step for the 8B shape with LoRA adapters on this repo's 2-core CI machine."""
        name = getattr(self.model, "main_input_name", "input_ids")
        if name not in inputs or not hasattr(self.model, "num_parameters"):
            return super().floating_point_ops(inputs)
        if self._flop_params is None:
            self._flop_params = self.model.num_parameters(exclude_embeddings=True)
        return 6 * inputs[name].numel() * self._flop_params

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
        self._write_late_log()
        self._flush()
        super().log(logs, start_time)

    def _save_checkpoint(self, model, trial):
        self._write_late_log()
        self._flush()  # trainer_state.json records the tokens seen
        self._checkpoint_step = self.state.global_step  # _save writes checkpoint-<step>
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._checkpoint_step = None

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """A lora run under FSDP saves its adapter gathered alone (distributed.adapter_state_dict), each checkpoint-N's
        and the final one: transformers' save gathered the whole model, the frozen base too, into rank 0's RAM first
        (its "FULL_STATE_DICT" branch, distributed.fsdp_settings), to write the adapter's part of it. Every rank takes
        part; rank 0 writes the same whole adapter_model.safetensors."""
        if self._fsdp_adapter():
            self._save(output_dir, state_dict=adapter_state_dict(self.model))
            return
        super().save_model(output_dir, _internal_call)

    def _fsdp_adapter(self) -> bool:
        """Whether this is a lora/qlora run under FSDP (its saves gather the adapter alone)."""
        return bool(self.is_fsdp_enabled) and is_peft_model(self.accelerator.unwrap_model(self.model))

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        """transformers' save of the optimizer and schedule, where a lora run under FSDP writes FSDP's resume copy
        of the model (pytorch_model_fsdp.bin, which the resume loads with strict=False: accelerate's
        load_fsdp_model(adapter_only=True)) with its trainable weights alone (save_fsdp_resume_copy): accelerate's
        save_fsdp_model gathered a tied LM head with them on every rank and wrote it, 525 MB of a 706 MB
        Llama-3.2-1B lora checkpoint (bench/NOTES.md v82). transformers' own code does the rest."""
        if not self._fsdp_adapter():
            return super()._save_optimizer_and_scheduler(output_dir)
        from unittest import mock

        import transformers.trainer

        with mock.patch.object(transformers.trainer, "save_fsdp_model", save_fsdp_resume_copy):
            return super()._save_optimizer_and_scheduler(output_dir)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """transformers' save, without a second copy of a tied LM head: under DeepSpeed ZeRO-2 and FSDP2 the state
        dict the Trainer gathers holds the head and the embedding as two tensors, and model.safetensors held the
        embedding twice (+1.05 GB in a 1B model's fp32 checkpoint on an H200, bench/NOTES.md v66); from_pretrained
        ties the head to the embedding again, as for a model saved without them. An adapter is saved without a question
        to the Hub (embeddings_as_trained), and each checkpoint-N and the final one are then what another machine
        loads: the adapter's generation config (trained.adapter_stops), its base named as the user named it
        (trained.name_base), its tokenizer and config as transformers 4 reads them too (trained.as_transformers_4_reads:
        a checkpoint-N's had no rope_theta, which transformers 4 then took as 10000), and a checkpoint's card ftctl's
        (model_card), all before its manifest is written."""
        model = self.accelerator.unwrap_model(self.model)
        cast = self.final_dtype is not None and self.args.should_save
        if cast:  # the final model in the plan's final dtype (saving_final), cast on its way to the file
            state_dict = cast_for_saving(model.state_dict() if state_dict is None else state_dict, self.final_dtype)
        if state_dict is not None:
            state_dict = untied_copy_dropped(model, state_dict)
        with embeddings_as_trained(model):
            super()._save(output_dir, state_dict)
        where = output_dir or self.args.output_dir
        if self.args.should_save:
            adapter_stops(where, model, self.processing_class)  # from the base in memory: no path to resolve
            if base := getattr(self, "base_name", None):
                name_base(where, base, getattr(self, "base_revision", None))  # a checkpoint-N's adapter too
            if self.card is not None and self._checkpoint_step is not None:  # PEFT's placeholder card replaced
                self.card(where, step=self._checkpoint_step)
        if cast:
            label_dtype(where, self.final_dtype)
        if self.args.should_save:
            as_transformers_4_reads(where)  # its dtype as labelled: a checkpoint-N served as it is (vLLM, TGI)
            as_umask(where)  # a checkpoint-N's weights too: safetensors wrote them 0600

    # ---------------------------------------------------------------------------------- the best checkpoint
    def _init_training_state(self, *args, **kwargs):
        """A resumed run's lowest held-out loss's checkpoint, as its trainer_state named it: transformers drops
        the name where that path is not a directory here, and a run resumed on a fresh node (its staging emptied,
        or at another path) had only the newest checkpoint downloaded. Then the store's retention no longer kept
        the lowest one: with save_total_limit=1 the store deleted it at the next checkpoint, while the log still
        said "lowest 6.0351 at step 3". Named again (in this output) wherever this output or its store holds it."""
        dropped = _Dropped()
        logging.getLogger("transformers.trainer").addFilter(dropped)
        try:
            result = super()._init_training_state(*args, **kwargs)
        finally:
            logging.getLogger("transformers.trainer").removeFilter(dropped)
        state, step = self.state, getattr(self.state, "best_global_step", None)
        if state.best_model_checkpoint is None and step and state.best_metric is not None:
            name = f"checkpoint-{step}"
            path = os.path.join(self.args.output_dir, name)
            if os.path.isdir(path) or self._stored(name):
                state.best_model_checkpoint = path
            elif dropped.message and self.is_world_process_zero():
                log.warning(
                    "%s, the lowest held-out loss's (%.4f), is no longer in %s%s: no checkpoint holds it; later "
                    "held-out losses are still compared with it",
                    name,
                    state.best_metric,
                    self.args.output_dir,
                    " nor in its store" if self._store() else "",
                )
        self._count_patience_on()
        return result

    def _count_patience_on(self) -> None:
        """Early stopping's count of evaluations in a row without a lower held-out loss, as the checkpoint saved
        it: transformers restores callbacks' states only with restore_callback_states_from_checkpoint, which would
        also bring back the checkpoint's patience over a relaunch's new one, so every resume counted from 0 and a
        run preempted more often than patience x eval_steps never stopped early. (Where the held-out loss is
        measured otherwise now, callbacks.NewHeldOut starts the count again after this.)"""
        from transformers import EarlyStoppingCallback

        from ftctl.trainer.callbacks import NewHeldOut

        if any(isinstance(c, NewHeldOut) for c in self.callback_handler.callbacks):
            return  # measured otherwise now: counted afresh, and said so
        saved = (self.state.stateful_callbacks or {}).get(EarlyStoppingCallback.__name__)
        saved = saved[0] if isinstance(saved, list) and saved else saved
        count = ((saved or {}).get("attributes") or {}).get("early_stopping_patience_counter") if saved else None
        stopping = [c for c in self.callback_handler.callbacks if isinstance(c, EarlyStoppingCallback)]
        if not count or not stopping or self.state.best_metric is None:
            return
        for callback in stopping:
            callback.early_stopping_patience_counter = int(count)
        if self.is_world_process_zero():
            log.info(
                "early stopping counts on from step %d: %d evaluation%s in a row found no held-out loss below %.4f; "
                "it stops at %d",
                self.state.global_step,
                count,
                "s" * (count != 1),
                self.state.best_metric,
                stopping[0].early_stopping_patience,
            )

    def _said_unkept(self) -> None:
        """Held-out evaluations at steps with no checkpoint (eval_steps not a multiple of save_steps, or
        evals_per_epoch's steps not of saves_per_epoch's): the lowest loss found there is kept by no checkpoint.
        Said once the step counts are known (callbacks.StepsAsGiven counts the per-epoch ones)."""
        every, saves = self.state.eval_steps, self.state.save_steps
        if self.args.eval_strategy == "no" or not every or not saves or not self.is_world_process_zero():
            return
        if every % saves == 0 or (self.state.max_steps and every >= self.state.max_steps):
            return
        fix = math.ceil(every / saves) * saves
        log.warning(
            "the held-out loss is measured every %s and a checkpoint saved every %d steps: a lowest loss found between "
            "checkpoints is kept by none (the log still names its step); -o eval_steps=%d measures it at checkpoints",
            "step" if every == 1 else f"{every} steps",
            saves,
            fix,
        )

    def _store(self) -> tuple[str, str | None] | None:
        """(URI, endpoint) of the store the run's checkpoints go to (sync_callback's), or None."""
        for callback in self.callback_handler.callbacks:
            if getattr(callback, "remote_uri", None):
                return callback.remote_uri, getattr(callback, "endpoint_url", None)
        return None

    def _stored(self, name: str) -> bool:
        """Whether the run's store holds ``name`` committed (its manifest, or a node's)."""
        from ftctl import storage
        from ftctl.checkpoints.manifest import is_manifest
        from ftctl.errors import FtctlError

        store = self._store()
        if store is None:
            return False
        try:
            return any(map(is_manifest, storage.file_sizes(storage.join(store[0], name), store[1])))
        except (OSError, FtctlError) as e:  # unreadable now: its retention keeps what it keeps
            log.debug("cannot list %s in %s: %s", name, store[0], e)
            return False

    def _said_final(self) -> None:
        """Where the run trained all its steps and its lowest held-out loss was at another step: which checkpoint
        holds that one, since the final model is the last step's (early stopping says so in its own line)."""
        state = self.state
        step = getattr(state, "best_global_step", None)
        if self.loads_best or not (self.is_world_process_zero() and step and state.best_metric is not None):
            return  # load_best_model_at_end: run.load_best says which step the final model is
        if state.max_steps <= 0 or state.global_step < state.max_steps or step == state.global_step:
            return
        from ftctl import storage

        name = f"checkpoint-{step}"
        held = state.best_model_checkpoint and os.path.basename(state.best_model_checkpoint) == name
        store = self._store()
        log.info(
            "the final model is step %d's; the lowest held-out loss, %.4f, was step %d's: %s",
            state.global_step,
            state.best_metric,
            step,
            f"{storage.join(store[0], name) if store else os.path.join(self.args.output_dir, name)} holds it"
            if held
            else "no checkpoint holds it (evaluated between checkpoints: an eval_steps that is a multiple of "
            "save_steps keeps it)",
        )

    # ---------------------------------------------------------------------------------- logs a step late
    def train(self, *args, **kwargs):
        try:
            result = super().train(*args, **kwargs)
            self._said_final()
            return result
        finally:  # a run that fails still writes the log of its last logged step
            if self._late is not None:
                with contextlib.suppress(Exception):  # the GPU may be what failed
                    self._write_late_log()

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
        """Several held-out datasets (a dict, data.build_datasets) as ONE evaluation: each one's loss
        (``eval_<name>_loss``) and all of them together (``eval_loss``: each weighs by its sequences, as one
        evaluation of all the rows would), logged once and handed to the callbacks once (transformers' own loop
        logs each dataset apart and has no eval_loss, which the best checkpoint and early stopping read)."""
        sets = self.eval_dataset if eval_dataset is None else eval_dataset
        if not isinstance(sets, dict):
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        start, metrics, sequences = time.time(), {}, {}
        for name, data in sets.items():
            prefix = f"{metric_key_prefix}_{name}"
            output = self.evaluation_loop(
                self.get_eval_dataloader(name if eval_dataset is None else data),
                description="Evaluation",
                prediction_loss_only=True,
                ignore_keys=ignore_keys,
                metric_key_prefix=prefix,
            )
            metrics[f"{prefix}_loss"] = output.metrics[f"{prefix}_loss"]
            sequences[name] = output.num_samples
        total = sum(sequences.values())
        metrics[f"{metric_key_prefix}_loss"] = (
            sum(metrics[f"{metric_key_prefix}_{name}_loss"] * n for name, n in sequences.items()) / total
        )
        metrics[f"{metric_key_prefix}_runtime"] = round(time.time() - start, 4)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def _run_epoch(self, *args, **kwargs):
        if not getattr(self, "_said_steps", False):  # the first epoch: the callbacks have set the step counts
            self._said_steps = True
            self._said_unkept()
        # A resumed checkpoint of the run's last step (stopped before its final model was saved): transformers
        # checks max_steps only after a step, so it would take one more at the schedule's end ("step 6/5").
        if self.state.max_steps > 0 and self.state.global_step >= self.state.max_steps:
            self.control.should_training_stop = True
            return None
        return super()._run_epoch(*args, **kwargs)

    def _maybe_log_save_evaluate(
        self, tr_loss, grad_norm, model, trial, epoch, ignore_keys_for_eval, start_time, learning_rate=None
    ):
        c = self.control
        log_now = c.should_log and self.state.global_step > self._globalstep_last_logged
        if self.defer_logs and log_now and not (c.should_evaluate or c.should_save or c.should_training_stop):
            self._write_late_log()
            self._late = self._start_late_log(tr_loss, grad_norm, learning_rate, start_time)
            return
        self._write_late_log()
        super()._maybe_log_save_evaluate(
            tr_loss, grad_norm, model, trial, epoch, ignore_keys_for_eval, start_time, learning_rate
        )

    def _start_late_log(self, tr_loss, grad_norm, learning_rate, start_time) -> _LateLog:
        """What transformers' and TRL's logging read at this step, summed on the device and sent to the host;
        the Trainer's counters move on as if it had logged (the loss sum restarts, the step counts as logged)."""
        loss = nested_gather(tr_loss, self.args.parallel_mode).mean()  # a new tensor: the reset leaves it
        tr_loss -= tr_loss
        steps = self.state.global_step - self._globalstep_last_logged
        self._globalstep_last_logged = self.state.global_step
        pending, self._pending = self._pending, {}
        metrics, self._metrics["train"] = self._metrics["train"], defaultdict(list)
        names, values, plain = ["loss"], [loss], {}
        if isinstance(grad_norm, torch.Tensor):
            names.append("grad_norm")
            values.append(local(grad_norm))  # under FSDP2 a DTensor, which the stack below cannot take
        elif grad_norm is not None:
            plain["grad_norm"] = grad_norm
        for key, items in pending.items():
            names.append(("count", key))
            values.append(items)
        for key, items in metrics.items():
            if items and all(isinstance(v, torch.Tensor) for v in items):
                names.append(("metric", key))
                values.append(torch.stack([v.detach().double() for v in items]).mean())
            elif items:
                plain[("metric", key)] = sum(float(v) for v in items) / len(items)
        device = loss.device
        stacked = torch.stack([v.detach().to(device=device, dtype=torch.float64).reshape(()) for v in values])
        return _LateLog(
            step=self.state.global_step,
            epoch=self.state.epoch,
            steps=steps,
            learning_rate=learning_rate if learning_rate is not None else self._get_learning_rate(),
            start_time=start_time,
            names=names,
            read=to_host_later(stacked),
            plain=plain,
            tokens=self.state.num_input_tokens_seen,
        )

    def _write_late_log(self) -> None:
        late, self._late = self._late, None
        if late is None:
            return
        values = dict(zip(late.names, late.read().tolist()))
        values.update(late.plain)
        self._total_loss_scalar += values["loss"]
        logs = {"loss": values["loss"] / late.steps}
        if "grad_norm" in values:
            logs["grad_norm"] = values["grad_norm"]
        logs["learning_rate"] = late.learning_rate
        counted = int(values.get(("count", "tokens_seen"), 0))  # several processes: their tokens of its steps
        self.state.num_input_tokens_seen += counted
        logs.update({name[1]: v for name, v in values.items() if isinstance(name, tuple) and name[0] == "metric"})
        if ("count", "trl_tokens") in values:  # as _flush: TRL's num_tokens from the device's count
            self._total_train_tokens += int(values[("count", "trl_tokens")]) // self._tp_size
            logs["num_tokens"] = float(self._total_train_tokens)
        step, epoch, should_log = self.state.global_step, self.state.epoch, self.control.should_log
        tokens = self.state.num_input_tokens_seen  # one process: the next step's are in it already
        self.state.global_step, self.state.epoch = late.step, late.epoch
        self.state.num_input_tokens_seen = late.tokens + counted
        try:
            Trainer.log(self, logs, late.start_time)  # TRL's log would average the next step's metrics in
        finally:  # as it was for this step (on_log clears should_log)
            self.state.global_step, self.state.epoch = step, epoch
            self.state.num_input_tokens_seen = tokens
            self.control.should_log = should_log


def save_fsdp_resume_copy(fsdp_plugin, accelerator, model, output_dir, model_index=0, adapter_only=False, **kwargs):
    """accelerate's save_fsdp_model for a PEFT model's adapter (``adapter_only``) in a FULL_STATE_DICT checkpoint
    (what distributed.fsdp_settings sets): the same file, written by rank 0, of the trainable weights alone
    (distributed.adapter_state_dict, under the names its load_fsdp_model loads). Anything else: accelerate's."""
    from accelerate.utils import save_fsdp_model
    from accelerate.utils.constants import FSDP_MODEL_NAME
    from torch.distributed.fsdp import StateDictType

    if not (adapter_only and is_peft_model(model) and fsdp_plugin.state_dict_type == StateDictType.FULL_STATE_DICT):
        return save_fsdp_model(fsdp_plugin, accelerator, model, output_dir, model_index, adapter_only, **kwargs)
    state_dict = adapter_state_dict(model)
    if accelerator.process_index == 0:
        os.makedirs(output_dir, exist_ok=True)
        name = FSDP_MODEL_NAME if model_index == 0 else f"{FSDP_MODEL_NAME}_{model_index}"
        torch.save(state_dict, os.path.join(output_dir, f"{name}.bin"))


def weights_said(held: dict) -> str:
    """The model card's words for the final model's weights under load_best_model_at_end (run.load_best's record)."""
    step, last = held["weights_step"], held["last_step"]
    which = "the last step's" if step == last else f"not the last step's ({last}): from its `{held['checkpoint']}`"
    return (
        f"\n## Weights\n\nThe final model holds step {step}'s weights, {which}: the lowest held-out loss, "
        f"{held['weights_eval_loss']:.4f} (`load_best_model_at_end: true`).\n"
    )


def _full_rate(step: int) -> float:
    return 1.0


def each_group(state: dict, groups: int) -> dict:
    """A LambdaLR state saved for one parameter group (reshard.saved_schedule), for ``groups`` of them: its
    base rate and last rate each group's (loaded as it is, the groups after the first kept their rate)."""
    if len(state["base_lrs"]) != 1 or groups == 1:
        return state
    return {
        **state,
        **{key: list(state[key]) * groups for key in ("base_lrs", "_last_lr", "lr_lambdas") if key in state},
    }


TOKENS = "ftctl_tokens"  # a batch's tokens that are no padding, counted on the host (counting_tokens)


def counting_tokens(collate, pad: int | None):
    """``collate`` whose batches also carry ``TOKENS``: how many of their tokens are no padding (non_padding_tokens),
    a Python int counted on the host from the tensors the collator made, before they go to the device, so that the
    tokens seen are known at each step's end without asking the device (SFTTrainer._track_num_input_tokens)."""

    def collate_and_count(examples):
        batch = collate(examples)
        ids = batch.get("input_ids") if isinstance(batch, dict) else None
        if isinstance(ids, torch.Tensor) and ids.device.type == "cpu":
            counted = non_padding_tokens(batch, ids, pad)
            if counted is not None:
                batch[TOKENS] = int(counted)
        return batch

    return collate_and_count


def non_padding_tokens(inputs: dict, ids: torch.Tensor, pad: int | None) -> torch.Tensor | None:
    """The tokens of a batch that are no padding, counted on its device: its attention mask's; a padding-free packed
    row's up to its last sample's last token (the padding after it has position 0: data.packed_padding), since
    the pad token is often the model's eos or end of turn (SmolLM's <|im_end|>), which every sample holds; else
    those that are not the pad token. None where none of these tells."""
    if "attention_mask" in inputs:
        return inputs["attention_mask"].sum()
    positions = inputs.get("position_ids")
    if positions is not None and positions.shape[0] == 1:
        at = torch.arange(1, positions.shape[1] + 1, device=positions.device)
        return (at * (positions[0] != 0)).max()
    return (ids != pad).sum() if pad is not None else None


def _count(n: int, device) -> torch.Tensor:
    """A count as a tensor on ``device`` without a host-to-device copy (a copy from pageable memory waits)."""
    return torch.full((), n, dtype=torch.int64, device=device)
