"""Resume a checkpoint on a different number of processes than the run that wrote it.

A preempted spot job often comes back with another node count. What a checkpoint holds per rank
decides what has to happen:

    single, ddp        whole tensors (model.safetensors, optimizer.pt): load on any world size
    zero2(_offload),   DeepSpeed's per-rank shards (global_step<N>/zero_pp_rank_<R>_*): they load only on
    zero3(_offload)    the world size that wrote them. ftctl converts the checkpoint to DeepSpeed's
                       universal format (deepspeed.checkpoint.ds_to_universal: one file per parameter and
                       optimizer state, unsharded) in place, once, on rank 0 -- global_step<N>_universal/
                       and latest_universal beside the original -- and the engine loads it with
                       ``checkpoint.load_universal`` (distributed.deepspeed_config), resharding on load.
    fsdp (GPU)         saved with FULL_STATE_DICT (distributed.fsdp_settings): whole model and optimizer
                       state on rank 0, which accelerate loads on any world size, one GPU included
                       (distributed.init_group) -- bench/multi_gpu.py's resume:fsdp cases try it on GPUs.

The world size that wrote a checkpoint is the manifest's ``world_size`` (ftctl.checkpoints); without a
manifest, the count of DeepSpeed's per-rank optimizer files. One process converts each copy of the
checkpoint: global rank 0 when all nodes share the output directory, local rank 0 of each node when every
node resumed its own downloaded copy. The resumed loss continues the curve closely, not bit for bit (the
tests see 2e-4 relative on CPU). A zero2_offload/zero3_offload checkpoint of an ftctl before 2674431 (DeepSpeed
built its optimizer, one parameter group) goes the same way at any world size, into the Trainer's two groups
(config_optimizer, split_group).

DeepSpeed's universal load (ZeRO-3) restores the optimizer's ``step`` as the CPU tensor the conversion
saved, which torch's fused AdamW (the plan's optimizer on GPUs) refuses beside CUDA states: the first step
after a 2 -> 1 GPU resume on an H200 failed with "state_steps is on cpu". :func:`steps_on_device` puts them
back where the parameters are, once the checkpoint is loaded (:func:`callbacks`).
"""

from __future__ import annotations

import contextlib
import errno
import glob
import logging
import os
import re
import shutil
import subprocess
import sys

from ftctl import checkpoints, storage
from ftctl.errors import FtctlError
from ftctl.plan import DEEPSPEED_STRATEGIES
from ftctl.trainer import distributed

log = logging.getLogger(__name__)

LATEST_UNIVERSAL = "latest_universal"  # DeepSpeed's name: the engine reads the tag to load from it
UNIVERSAL_SUFFIX = "_universal"
_RANK_FILE = re.compile(r"zero_pp_rank_(\d+)_mp_rank_\d+_optim_states\.pt$")


def saved_world_size(ckpt: str) -> int | None:
    """How many processes wrote ``ckpt``: its manifest's world_size, else DeepSpeed's rank files."""
    for name in [checkpoints.MANIFEST, *sorted(os.path.basename(p) for p in glob.glob(f"{ckpt}/manifest.node-*"))]:
        try:
            return int(checkpoints.read_manifest(ckpt, name)["world_size"])
        except (FileNotFoundError, ValueError, KeyError):
            continue
    tag = deepspeed_tag(ckpt)
    ranks = {m.group(1) for f in os.listdir(os.path.join(ckpt, tag)) if (m := _RANK_FILE.search(f))} if tag else ()
    return len(ranks) or None


def deepspeed_tag(ckpt: str) -> str | None:
    """The DeepSpeed tag (global_step<N>) the checkpoint's ``latest`` file names, or None."""
    latest = os.path.join(ckpt, "latest")
    if not os.path.isfile(latest):
        return None
    tag = open(latest).read().strip()
    return tag if os.path.isdir(os.path.join(ckpt, tag)) else None


def prepare(ckpt: str | None, plan, procs: distributed.Processes, shared_filesystem: bool = True) -> bool:
    """Make ``ckpt`` loadable by this run; True when DeepSpeed must load it as a universal checkpoint.

    Call it on every rank (one per copy converts, the others wait at a barrier), before TrainingArguments."""
    if not ckpt or plan.strategy not in DEEPSPEED_STRATEGIES:
        return False
    tag = deepspeed_tag(ckpt)
    if tag is None:
        if glob.glob(os.path.join(ckpt, "global_step*")):
            raise FtctlError(f"{ckpt} has DeepSpeed shards but no readable 'latest' file: it cannot be resumed.")
        return False  # written by a non-DeepSpeed strategy: the Trainer loads its whole tensors
    saved = saved_world_size(ckpt)
    regroup = config_optimizer(ckpt, tag)
    if not regroup and (saved is None or saved == procs.world_size):
        return False
    if not regroup:
        log.warning(
            "%s was written by %d processes and this run has %d: resuming through DeepSpeed's universal checkpoint",
            ckpt,
            saved,
            procs.world_size,
        )
    if procs.is_main or (not shared_filesystem and procs.local_rank == 0):
        universal = to_universal(ckpt, tag)
        if regroup:
            split_group(universal)
            log.warning(
                "%s: its optimizer was DeepSpeed's over every parameter in one group (the offload strategies of an "
                "ftctl before 4 Dec 2026): resumed through DeepSpeed's universal checkpoint into the Trainer's two "
                "groups; from here on the norms and biases are not decayed, as under every other strategy",
                ckpt,
            )
    distributed.barrier()
    return True


def _model_states(ckpt: str, tag: str) -> dict | None:
    """DeepSpeed's model states of ``ckpt/<tag>`` (rank 0's), memory-mapped: its weights are not read."""
    import torch

    names = sorted(glob.glob(os.path.join(ckpt, tag, "*mp_rank_00_model_states.pt")))
    return torch.load(names[0], map_location="cpu", mmap=True, weights_only=False) if names else None


def config_optimizer(ckpt: str, tag: str) -> bool:
    """Whether DeepSpeed built ``ckpt``'s optimizer from the "optimizer" section of its config: ftctl's
    zero2_offload and zero3_offload before 2674431 (4 Dec 2026). That optimizer holds every parameter in one group
    and DeepSpeed ran the learning-rate schedule (no scheduler.pt: saved_schedule); now the Trainer builds it over
    its two groups (the norms and biases undecayed), which ZeRO's per-rank shards of one group do not load into
    (DeepSpeed: "parameter-alignment layout does not match", or "a different number of parameter groups")."""
    states = _model_states(ckpt, tag)
    return bool(states and "optimizer" in (states.get("ds_config") or {}))


def split_group(universal: str) -> None:
    """Give a universal checkpoint of one parameter group (config_optimizer) the Trainer's two: ZeRO-2 loads the
    parameters' states group by group, the run's beside the saved ones, and the second (the norms') would get
    none. Its settings are the first's without weight decay. ZeRO-3 loads every group's states whatever the saved
    groups (and gives each group the first's settings: SFTTrainer._load_optimizer_and_scheduler puts the run's
    weight decay back)."""
    import torch

    path = os.path.join(universal, "zero", "optimizer_state.pt")
    state = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    groups = state["param_groups"]
    if int(state.get("zero_stage", 0)) >= 3 or len(groups) != 1:
        return
    state["param_groups"] = [groups[0], {**groups[0], "weight_decay": 0.0}]
    try:
        torch.save(state, path + ".ftctl-tmp")
    except BaseException:  # a full disk: no half-written copy left beside it (the next attempt splits it again)
        with contextlib.suppress(OSError):
            os.unlink(path + ".ftctl-tmp")
        raise
    os.replace(path + ".ftctl-tmp", path)


def saved_schedule(ckpt: str) -> dict | None:
    """The learning-rate schedule's state that DeepSpeed saved in ``ckpt`` where it ran the schedule
    (config_optimizer's checkpoints, which hold no scheduler.pt); None where it did not."""
    tag = deepspeed_tag(ckpt)
    states = _model_states(ckpt, tag) if tag else None
    return states.get("lr_scheduler") if states else None


def to_universal(ckpt: str, tag: str) -> str:
    """Convert ``ckpt/<tag>`` to ``ckpt/<tag>_universal`` (kept once done: a later resume reuses it). A conversion the
    disk refused is one line (conversion_refused); what it wrote is gone, and the next attempt converts anew."""
    out = os.path.join(ckpt, tag + UNIVERSAL_SUFFIX)
    latest = os.path.join(ckpt, LATEST_UNIVERSAL)
    if os.path.isdir(out) and os.path.isfile(latest):
        return out
    # one without its latest_universal (cut off before that file was written): not loaded, and its room is this one's
    shutil.rmtree(out, ignore_errors=True)
    tmp = out + ".ftctl-tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    room, free = CONVERSION_ROOM * sum(size for _, size in _files(os.path.join(ckpt, tag))), _free(ckpt)
    if free is not None and free < room:  # it may still fit (measured 1.6-2x): said before the minutes it takes
        log.warning(
            "converting %s takes up to ~%s beside it while it converts, and its disk has %s free",
            ckpt,
            storage.size_text(room),
            storage.size_text(free),
        )
    cmd = [
        sys.executable,
        "-m",
        "deepspeed.checkpoint.ds_to_universal",
        "--input_folder",
        os.path.join(ckpt, tag),
        "--output_folder",
        tmp,
        "--num_extract_workers",
        "1",
        "--num_merge_workers",
        "1",
        "--inject_missing_state",  # transformers models do not record DeepSpeed's universal-checkpoint info
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        said = (proc.stderr or proc.stdout).strip()
        if line := conversion_refused(said, ckpt, tag):
            raise FtctlError(line)
        tail = said.splitlines()[-1:] or ["no output"]
        raise FtctlError(
            f"could not convert {ckpt} to DeepSpeed's universal checkpoint for a different number of processes "
            f"({tail[0]}); resume on the number of processes that wrote it ({' '.join(cmd[1:4])} failed)."
        )
    # the converter writes latest_universal next to its output, naming the temporary folder: rename, rewrite
    os.replace(tmp, out)
    try:
        _write_text(latest, os.path.basename(out))
    except OSError as exc:
        if line := conversion_refused(exc, ckpt, tag):
            raise FtctlError(line) from exc
        raise
    log.warning("converted %s to %s", os.path.join(ckpt, tag), out)
    return out


# What the converter prints of a write the disk refused: torch.save's zip writer ("unexpected pos N vs M" in
# inline_container.cc, or "basic_ios::clear: iostream error") names no errno; Python's and Rust's I/O errors do.
_REFUSED_WRITE = re.compile(r"inline_container\.cc|basic_ios::clear|No space left on device|Disk quota exceeded")
# The converter's room at its peak beside the checkpoint, in sizes of the DeepSpeed shards it reads (ckpt/<tag>): a
# slice of every parameter's states, then the merged ones. Measured on the tiny model's ZeRO-2 checkpoint of 2 processes
# (2.26 MB): failed with 3.7 MB free, done with 4.7 MB (and 2.5 MB kept).
CONVERSION_ROOM = 2.0


def conversion_refused(failure: str | OSError, ckpt: str, tag: str) -> str | None:
    """The one line for a universal conversion of ``ckpt/<tag>`` (to_universal) that ran out of disk space (the
    converter's output, or an OSError here), or None where it failed otherwise: it said only "could not convert
    ... (RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos 768 vs 662); resume on the number
    of processes that wrote it", the fix for another failure."""
    from ftctl import failures

    if isinstance(failure, OSError):
        exc: BaseException = failure
    elif not (m := _REFUSED_WRITE.search(failure)):
        return None
    elif m.group(0) in ("No space left on device", "Disk quota exceeded"):
        exc = OSError(errno.ENOSPC, m.group(0))
    else:
        exc = RuntimeError(f"{failures.ZIP_WRITER}: {failure.splitlines()[-1]}")  # failures.disk_full: free < need?
    shards = sum(size for _, size in _files(os.path.join(ckpt, tag)))
    fix = (
        f"free some space there (the conversion is kept in {os.path.basename(ckpt)} for later resumes), or resume on "
        f"the {saved_world_size(ckpt) or 'same number of'} processes that wrote it (no conversion)"
    )
    doing = "converting it to DeepSpeed's universal checkpoint"
    return failures.disk_full(exc, ckpt, CONVERSION_ROOM * shards, fix, doing=doing, needs="the conversion")


def _free(path: str) -> int | None:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def _files(top: str):
    for where, _, names in os.walk(top):
        for name in names:
            try:
                yield name, os.lstat(os.path.join(where, name)).st_size
            except OSError:
                continue


def _write_text(path: str, text: str) -> None:
    """``text`` into ``path`` whole or not at all (its temporary file gone where the disk refused it)."""
    tmp = path + ".ftctl-tmp"
    try:
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def steps_on_device(optimizer) -> int:
    """Move every optimizer ``step`` tensor to the device of its parameter, through the wrappers (accelerate's
    AcceleratedOptimizer, DeepSpeed's ZeRO optimizer: each holds the next as ``.optimizer``). Returns how
    many moved."""
    import torch

    moved, seen = 0, set()
    while optimizer is not None and id(optimizer) not in seen:
        seen.add(id(optimizer))
        state = getattr(optimizer, "state", None)
        if isinstance(state, dict):
            for param, entry in state.items():
                step = entry.get("step") if isinstance(entry, dict) else None
                if isinstance(param, torch.Tensor) and isinstance(step, torch.Tensor) and step.device != param.device:
                    entry["step"] = step.to(param.device)
                    moved += 1
        optimizer = getattr(optimizer, "optimizer", None)
    return moved


def callbacks(universal: bool) -> list:
    """Trainer callbacks a resume needs: after a universal load, the optimizer steps back on the GPU
    (the Trainer loads the checkpoint before on_train_begin)."""
    if not universal:
        return []
    from transformers import TrainerCallback

    class StepsOnDevice(TrainerCallback):
        def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
            moved = steps_on_device(optimizer)
            if moved:
                log.info("moved %d optimizer step counters to the parameters' device", moved)

    return [StepsOnDevice()]
