"""Out of GPU memory: what the card had, what the run asked for, and the plan that would have fit.

The plan estimates a run's peak per GPU (plan.memory_gb, within 6% of what sixteen H200 runs measured) and
keeps it under 92% of the card; a card that other processes already hold, or a model or batch the estimate
misses, still ends in torch.OutOfMemoryError. PyTorch's message then says how much the card has and holds
(``GPU 0 has a total capacity of 139.80 GiB of which 1.19 GiB is free. Including non-PyTorch memory, this
process has 25.41 GiB memory in use.``) and suggests allocator settings; what a user needs is what to change.
:func:`message` turns it into one line: the card, what this process held and asked for, what other processes
held, and the ``-o`` overrides of the fastest plan estimated to fit what the card really had for this run
(the estimate scaled by how far it missed). :func:`check_free` says before the model loads that a card is
already too full.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ftctl.plan import HEADROOM, LIGHTER_METHODS, Plan, overrides, within
from ftctl.spec import RunSpec

GB = 1e9  # the plan's unit
_UNITS = {"bytes": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}
_SIZE = r"([\d.]+) (bytes|KiB|MiB|GiB|TiB)"


@dataclass(frozen=True)
class Card:
    """A GPU's memory when an allocation failed, in GB, as PyTorch's message gives it."""

    gpu: str  # "GPU 0"
    total: float
    free: float
    this_process: float  # including non-PyTorch memory (the CUDA context, NCCL's buffers)
    asked: float  # the allocation that failed

    @property
    def others(self) -> float:
        """What other processes held (0 within rounding)."""
        return max(0.0, self.total - self.free - self.this_process)


def is_out_of_memory(exc: BaseException) -> bool:
    """torch.OutOfMemoryError, or a library's error that is one underneath (DeepSpeed, bitsandbytes)."""
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()


def _size(match) -> float:
    return float(match.group(1)) * _UNITS[match.group(2)] / GB


def card(text: str) -> Card | None:
    """The numbers in PyTorch's out-of-memory message; None when it does not have them."""
    asked = re.search(rf"Tried to allocate {_SIZE}", text)
    total = re.search(rf"(GPU \d+) has a total capacity of {_SIZE} of which {_SIZE} is free", text)
    this = re.search(rf"this process has {_SIZE} memory in use", text)
    if not (asked and total and this):
        return None
    free = float(total.group(4)) * _UNITS[total.group(5)] / GB
    return Card(total.group(1), float(total.group(2)) * _UNITS[total.group(3)] / GB, free, _size(this), _size(asked))


def message(exc: BaseException, spec: RunSpec, plan: Plan, checkpointed: bool = False) -> str:
    """The one line a run that ran out of GPU memory ends with. ``checkpointed``: the run's output holds a
    checkpoint, which the relaunch resumes, so the offered plan keeps the optimizer (checkpoints.settings)."""
    c = card(str(exc))
    est = plan.memory_gb
    others = c.others if c and c.others >= 1 else 0.0
    if c:
        miss = (c.this_process + c.asked) / est
        said = (
            f"out of memory on {c.gpu} ({c.total:.1f} GB): this process held {c.this_process:.1f} GB and asked for "
            f"{c.asked:.2f} GB more"
            + (f", other processes held {others:.1f} GB" if others else "")
            + (
                f"; {miss:.1f}x the plan's estimate of {est:.1f} GB."
                if miss > 1.05
                else f"; the plan estimated {est:.1f} GB."
            )
        )
        # what this run really had of the card, less how far the estimate missed (a run stopped before its
        # peak says nothing of the estimate)
        capacity = min(HEADROOM * (c.total - others) / max(miss, 1.0), 0.95 * est)
    else:
        said = f"out of GPU memory ({str(exc).strip().splitlines()[0][:200]}); the plan estimated {est:.1f} GB."
        capacity = 0.8 * est
    fit = within(spec, plan, capacity, keep_optim=checkpointed)
    if fit is None:
        return (
            f"{said} No plan of {plan.method} on {plan.gpus} is estimated to fit in {capacity:.1f} GB: "
            + ("free the card, or " if others else "")
            + "use more GPUs (--gpus), "
            + "".join(f"--method {m}, " for m in LIGHTER_METHODS[plan.method][:1])
            + "or a shorter -o model_max_length."
        )
    flags = " ".join(
        f"-o {k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in overrides(spec, plan, fit).items()
    )
    batch = (
        f" (global batch {fit.global_batch_size})"
        if fit.global_batch_size != plan.global_batch_size
        else f" (the global batch stays {plan.global_batch_size})"
    )
    return f"{said} Relaunch with {flags}{batch}: estimated {fit.memory_gb:.1f} GB; `ftctl plan` with them shows it."


def check_free(plan: Plan, device: int) -> str | None:
    """A warning when other processes already hold so much of this GPU that the plan's estimate does not fit
    in what is free (before the model loads: ``nvidia-smi`` names them); None otherwise."""
    import torch

    free, total = (x / GB for x in torch.cuda.mem_get_info(device))
    if free >= plan.memory_gb:
        return None
    return (
        f"GPU {device} has {free:.1f} of its {total:.1f} GB free (other processes hold the rest: nvidia-smi lists "
        f"them); this run's plan needs about {plan.memory_gb:.1f} GB and will likely run out of memory."
    )
