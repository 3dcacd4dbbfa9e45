"""The LM head's loss with its gradients taken in the forward: the logits are projected once, not twice.

TRL's fused LM head (SFTTrainer adds it) never holds the (tokens x vocab) logits: it projects tiles of
4,096 tokens x 32,768 vocabulary entries and folds each into online log-sum-exp statistics; its backward
projects every tile again to turn it into the logits' gradient. For SFT's loss, a sum of log-probabilities
divided by a count, the gradient with respect to the logits is known as soon as a token's log-sum-exp is.
Here a chunk of tokens is projected onto the whole vocabulary at once, TRL's own kernels fold it into the
statistics and then overwrite it, in place, with the gradient of the summed log-probabilities, and the
gradients of the hidden states and of the head's weight are taken from it right away. The backward only
scales them by the loss's gradient, a scalar. Per step this saves one of the head's four GEMMs over the
whole vocabulary and the weight's fp32 -> 16-bit casts per tile (it is cast once): on the 1B shape,
~10 ms of a ~250 ms fft step on an H200 (bench/NOTES.md, v17b's profile).

What it costs: a chunk's logits over the whole vocabulary (4,096 tokens x 128,256 in 16 bits, 1 GiB, against TRL's
4,096 x 32,768 tile; plan.head_chunk_tokens), and the head's gradients exist from the end of the forward instead of
from the start of the backward, the same moment of the step (plan.py's ``fused_head_bytes``).

Used by ftctl's SFTTrainer for TRL's plain loss only (``usable``): a causal LM whose logits are neither
scaled nor soft-capped, whose head no DeepSpeed ZeRO-3 partitions. Anything else keeps TRL's head.
"""

from __future__ import annotations

import functools
import types
from dataclasses import dataclass

import torch
from transformers.utils import ModelOutput

from ftctl.plan import head_chunk_tokens
from ftctl.trainer.lora_dropout import INTERPRETED, triton

try:  # TRL's kernels for its own fused head (TRL >= 1.16): the same statistics, read over the whole vocabulary
    from trl.kernels import chunked_logprob as _trl
except ImportError:  # older TRL: its SFTTrainer's head stays
    _trl = None

# config attributes that scale or cap the logits (TRL's add_fused_lm_head reads the same ones)
_SCALED_LOGITS = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling")
_KERNEL_ARGS = {"logit_scale": 1.0, "softcap": 1.0, "inv_t": 1.0, "HAS_SOFTCAP": False}


def usable(model) -> bool:
    """Whether ``model`` (the base model, under PEFT and before any wrapper) can take this head."""
    config = model.config
    head = model.get_output_embeddings()
    return (
        _trl is not None
        and config.get_text_config() is config
        and head is not None
        and all(getattr(config, name, None) is None for name in _SCALED_LOGITS)
        and not hasattr(head.weight, "ds_id")  # ZeRO-3 gathers it per use: TRL's head does
    )


@dataclass
class HeadOutput(ModelOutput):
    """What ``model(..., labels=labels, ftctl_head=True)`` returns; every sum runs over the tokens whose
    next-token label is not -100."""

    sum_log_probs: torch.Tensor | None = None  # differentiable; the loss is -sum_log_probs / tokens
    tokens: torch.Tensor | None = None  # how many labels count
    sum_entropy: torch.Tensor | None = None
    top1: torch.Tensor | None = None  # how many labels are the most likely next token


def add_head(model) -> None:
    """Let ``model(..., labels=..., ftctl_head=True)`` return a ``HeadOutput``; without ``ftctl_head`` the
    forward is the one it had (TRL's, with its own ``fused_lm_head``). Patch the base model before PEFT
    and the Trainer wrap it (TRL patches the same one). ``scored`` (``counting_scored``'s count) lets the
    scored positions be found without the host waiting for the device."""
    previous = model.forward
    head_runs = [0]  # forwards of the head module itself (neither fused head calls it)
    model.get_output_embeddings().register_forward_hook(lambda *_: head_runs.__setitem__(0, head_runs[0] + 1))

    @functools.wraps(type(model).forward)
    def forward(self, *args, **kwargs):
        before = head_runs[0]
        output = either_head(self, *args, **kwargs)
        if head_runs[0] == before and not torch.is_grad_enabled():  # a training step's backward ends it (torch < 2.13)
            head_ran(self.get_output_embeddings())
        return output

    def either_head(self, *args, ftctl_head=False, labels=None, scored=None, **kwargs):
        if not ftctl_head:
            if labels is not None:
                kwargs["labels"] = labels
            return previous(*args, **kwargs)
        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state[:, :-1]
        head = self.get_output_embeddings()
        labels = labels[:, 1:].to(head.weight.device)
        mask = labels.reshape(-1) != -100
        # the scored positions; a boolean index (TRL's) waits for the device in the forward and in the backward
        at = mask.nonzero() if scored is None else torch.nonzero_static(mask, size=scored)
        at = at.squeeze(1)
        weight, bias = head.weight, head.bias
        if hasattr(weight, "full_tensor"):  # FSDP2's sharded parameters are DTensors; the hidden states are not
            weight = weight.full_tensor()
            bias = bias.full_tensor() if bias is not None else None
        hidden = hidden.to(weight.device).reshape(-1, hidden.shape[-1]).index_select(0, at)
        if not torch.is_grad_enabled():  # evaluation: the forward takes gradients only for inputs that need them
            weight, bias = weight.detach(), bias.detach() if bias is not None else None
        sum_log_probs, sum_entropy, top1 = _HeadLoss.apply(
            hidden, weight, bias, labels.reshape(-1).index_select(0, at), head_chunk_tokens(weight.shape[0])
        )
        return HeadOutput(sum_log_probs=sum_log_probs, tokens=mask.sum(), sum_entropy=sum_entropy, top1=top1)

    model.forward = types.MethodType(forward, model)


def head_ran(head) -> None:
    """Under FSDP2, call ``head`` on no tokens after a forward without gradients (an evaluation's) that did not call
    it: its FSDP group's forward ends.

    accelerate shards the final norm and the LM head as one group ([norm, lm_head], fsdp2_prepare_model's "tail",
    not resharded after its forward). FSDP2 starts a group's forward at its first module's and ends it at its last
    module's; both fused heads read the head's weight without calling it, so the group's forward never ended.
    torch before 2.13 then skips the group's next pre-forward (the gather of its parameters) until a backward clears
    it: after an evaluation, which no backward follows, the next training step read the group's parameters where they
    were, and where the checkpoint saved right after had put them back on their shards (its state dict does), they
    were freed. A full fine-tune under FSDP2 that evaluated and saved at one step died at the next step's forward, in
    the final norm's kernel: "an illegal memory access" (bench/NOTES.md v91-v97, one H100, torch 2.11; an untied head, as
    Llama-3-8B's: v99's tied 1B shape, whose group starts at the embedding, trained without this). torch's own
    warning says as much once per run: "1 of the 2 modules passed to fully_shard did not run forward before
    backward". A training step's forward is left as it was: its backward ends the group's forward (torch's warning is
    that), and calling the head there too, at every forward, cost 0.5% of an FSDP2 step on one H100 (v96). A 0-token
    input costs no GEMM; its output takes no part in any loss."""
    from torch.distributed.fsdp import FSDPModule

    if isinstance(head, FSDPModule):
        weight = head.weight
        head(torch.empty((0, weight.shape[-1]), device=weight.device, dtype=weight.dtype))


def counting_scored(collate):
    """``collate`` whose batches also carry ``scored``: how many labels count (not -100 after the shift), a
    Python int computed on the host from the labels the collator made, so the head knows its shapes without
    asking the device."""

    def collate_and_count(examples):
        batch = collate(examples)
        labels = batch.get("labels") if isinstance(batch, dict) else None
        if isinstance(labels, torch.Tensor) and labels.dim() == 2:
            batch["scored"] = int((labels[:, 1:] != -100).sum())
        return batch

    return collate_and_count


class _HeadLoss(torch.autograd.Function):
    """sum over tokens of log softmax(hidden @ weight.T + bias)[target], with the sums of the entropy and of
    the top-1 hits; the gradients of hidden, weight and bias are computed in the forward, in fp32."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk):
        n_tokens, vocab = hidden.shape[0], weight.shape[0]
        device = hidden.device
        dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else hidden.dtype
        want_h, want_w, want_b = ctx.needs_input_grad[:3]
        with torch.autocast(device.type, enabled=False):
            w = weight.to(dtype)  # once, not per tile
            b = bias.to(dtype) if bias is not None else None
            new = functools.partial(torch.full, (n_tokens,), device=device, dtype=torch.float32)
            running_max, max_before_target = new(float("-inf")), new(float("-inf"))
            sum_exp, x_sum_exp, target_logit, unused = new(0.0), new(0.0), new(0.0), new(0.0)
            ones = new(1.0)  # d(sum of log-probs) / d(each token's log-prob)
            grad_h = torch.empty(hidden.shape, device=device, dtype=torch.float32) if want_h else None
            alloc = torch.empty if n_tokens else torch.zeros  # the first chunk's product writes over it
            grad_w = alloc(weight.shape, device=device, dtype=torch.float32) if want_w else None
            grad_b = torch.zeros(vocab, device=device, dtype=torch.float32) if want_b and b is not None else None
            logits = torch.empty((min(n_tokens, chunk), vocab), device=device, dtype=dtype)
            kernels = triton is not None and (hidden.is_cuda or INTERPRETED)
            for start in range(0, n_tokens, chunk):
                end = min(start + chunk, n_tokens)
                rows, h, tile = slice(start, end), hidden[start:end].to(dtype), logits[: end - start]
                torch.mm(h, w.t(), out=tile)
                if b is not None:
                    tile.add_(b)
                stats = (running_max[rows], sum_exp[rows], x_sum_exp[rows], unused[rows], unused[rows])
                fold = _trl._forward_kernel[(end - start,)] if kernels else _trl._forward_tile
                fold(
                    tile, tile.stride(0), targets[rows], *stats, max_before_target[rows], target_logit[rows],
                    0, vocab, HAS_ENTROPY=True, HAS_LOG_SUM_SQ_PROBS=False, HAS_MEAN_LOGITS=False,
                    HAS_IS_TOP1=True, BLOCK_SIZE=_trl._BLOCK_SIZE, **_KERNEL_ARGS,
                )  # fmt: skip
                log_z = running_max[rows] + torch.log(sum_exp[rows])
                grid = (end - start, triton.cdiv(vocab, _trl._BLOCK_SIZE)) if kernels else None
                fold = _trl._backward_kernel[grid] if kernels else _trl._backward_tile
                fold(
                    tile, tile.stride(0), targets[rows], log_z, log_z, ones[rows], log_z, 0, vocab,
                    HAS_LOGPROB_GRAD=True, HAS_ENTROPY_GRAD=False, BLOCK_SIZE=_trl._BLOCK_SIZE, **_KERNEL_ARGS,
                )  # fmt: skip
                # the tile now holds d(sum of log-probs) / d(logits)
                if grad_h is not None:
                    _mm_fp32(grad_h[rows], tile, w, accumulate=False)
                if grad_w is not None:
                    _mm_fp32(grad_w, tile.t(), h, accumulate=start > 0)
                if grad_b is not None:
                    grad_b += tile.sum(dim=0, dtype=torch.float32)
            log_z = running_max + torch.log(sum_exp)
            log_probs = target_logit - log_z
            entropy = log_z - x_sum_exp / sum_exp
            top1 = (target_logit >= running_max) & (target_logit > max_before_target)
        ctx.grads = [grad_h, grad_w, grad_b]
        ctx.dtypes = [hidden.dtype, weight.dtype, bias.dtype if bias is not None else None]
        sum_entropy, hits = entropy.sum(), top1.sum()
        ctx.mark_non_differentiable(sum_entropy, hits)
        return log_probs.sum(), sum_entropy, hits

    @staticmethod
    def backward(ctx, grad_sum, *_):
        if ctx.grads is None:
            raise RuntimeError("the LM head's gradients were taken in its forward and can be used once")
        grads, ctx.grads = ctx.grads, None
        scaled = [g.mul_(grad_sum).to(dtype) if g is not None else None for g, dtype in zip(grads, ctx.dtypes)]
        return *scaled, None, None


def _mm_fp32(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, accumulate: bool) -> None:
    """``out (+)= a @ b`` into an fp32 ``out`` without rounding ``a @ b`` to the inputs' 16 bits first."""
    if out.is_cuda and a.dtype != out.dtype:
        if accumulate:
            torch.addmm(out, a, b, out_dtype=out.dtype, out=out)
        else:
            torch.mm(a, b, out_dtype=out.dtype, out=out)
    elif accumulate:
        out.addmm_(a.to(out.dtype), b.to(out.dtype))
    else:
        torch.mm(a.to(out.dtype), b.to(out.dtype), out=out)
