"""Processes, devices and the sharding strategy: DeepSpeed and FSDP settings generated from the plan.

torchrun sets RANK / LOCAL_RANK / WORLD_SIZE; a plain ``python -m ftctl.trainer`` is one process.
On CPU the collective backend is gloo. The plan's strategy maps to TrainingArguments:

    single, ddp         nothing extra (accelerate wraps the model in DDP when WORLD_SIZE > 1)
    zero2, zero3        ``deepspeed=<dict>`` from :func:`deepspeed_config`
    zero2_offload       ZeRO-2 with the optimizer states (and fp32 masters) offloaded to CPU RAM: ZeRO-Offload
    zero3_offload       ZeRO-3 with optimizer states and parameters offloaded to CPU RAM
    fsdp                ``fsdp`` + ``fsdp_config`` from :func:`fsdp_settings`: FSDP2 (``fully_shard`` per
                        transformer block) through accelerate's plugin. GPU only: on CPU accelerate runs
                        plain DDP instead without saying so, so ftctl refuses fsdp there (zero3 shards on
                        CPU). :func:`sharding_check` stops a run whose model did not come out sharded.

Batch size, accumulation, clipping and precision in the DeepSpeed config are "auto": the Trainer
fills them from the same TrainingArguments, so they cannot disagree.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass

from ftctl import torch_builds
from ftctl.envvars import THREADS_ENV
from ftctl.errors import FtctlError
from ftctl.gpus import usable_cores
from ftctl.plan import DEEPSPEED_STRATEGIES, OFFLOAD_STRATEGIES, ZERO3_MAX_LIVE, ZERO3_STRATEGIES


@dataclass(frozen=True)
class Processes:
    rank: int
    local_rank: int
    world_size: int
    on_cpu: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def processes() -> Processes:
    """This process's place, from torchrun's environment."""
    import torch

    return Processes(
        rank=int(os.environ.get("RANK", "0")),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        world_size=int(os.environ.get("WORLD_SIZE", "1")),
        on_cpu=not torch.cuda.is_available(),
    )


def check_world(plan, procs: Processes) -> None:
    """Refuse a launch whose process count differs from the plan's (batch sizes would be off), or a GPU plan where
    torch sees no GPU: said first (`ftctl train --gpus 8xA100` on a laptop was told to start 8 processes)."""
    if procs.on_cpu and plan.tier is not None:
        raise FtctlError(
            f"The plan is for {plan.gpus} but torch sees no CUDA GPU here: {why_no_cuda()}. Or re-plan with --gpus cpu."
        )
    if procs.world_size != plan.world_size:
        raise FtctlError(
            f"The plan is for {plan.world_size} process(es) ({plan.gpus}) but {procs.world_size} were started: "
            f"launch with torchrun --nnodes {plan.nodes} --nproc-per-node {plan.gpus_per_node}, or re-plan "
            f"with the --gpus of this machine."
        )


NVIDIA_DRIVER_FILE = "/proc/driver/nvidia/version"  # the loaded kernel module's version, without nvidia-smi


def why_no_cuda() -> str:
    """Why torch cannot use a GPU on this machine, with the fix: a CPU-only torch build, no NVIDIA driver, or a
    driver too old for the CUDA version torch was built for (SkyPilot's default AWS image, driver 535, with
    torch's cu130 wheels: skypilot-org/skypilot#9406)."""
    import torch

    driver = nvidia_driver_version()
    if torch.version.cuda is None:
        return (
            f"torch {torch.__version__} is a CPU-only build"
            + (f" (the NVIDIA driver {driver} is loaded)" if driver else "")
            + f": install a CUDA build (pip install torch --index-url {torch_builds.index_url('cu130')} where "
            f"nvidia-smi shows CUDA 13, {torch_builds.index_url('cu126')} for CUDA 12)"
        )
    if driver is None:
        return f"no NVIDIA driver is loaded ({NVIDIA_DRIVER_FILE} is absent): run on a GPU node, or install its driver"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and not any(d.strip() and not d.strip().startswith("-") for d in visible.split(",")):
        return f"CUDA_VISIBLE_DEVICES={visible!r} hides every GPU: unset it, or name the GPUs (0,1,...)"
    try:
        torch.cuda.init()
    except Exception as e:  # torch says why: a driver too old for its CUDA, a device it cannot open, ...
        said = (str(e).strip().splitlines() or [""])[0].split(". ")[0].rstrip(".")
        found = re.search(r"found version (\d+)", said)  # the CUDA version the driver supports: 12080 is 12.8
        cuda = (int(found.group(1)) // 1000, int(found.group(1)) % 1000 // 10) if found else None
        build = torch_builds.build_for(cuda) if cuda else None
        if build:
            fix = (
                f": install torch's {build} build, which this driver runs (pip install torch --index-url "
                f"{torch_builds.index_url(build)}), or use an image with a newer driver"
            )
        elif cuda:
            fix = f": the driver (CUDA {cuda[0]}.{cuda[1]}) is older than torch's current builds: update it"
        elif "no NVIDIA driver" in said:  # the kernel module is loaded, its user-space library is not here
            fix = ": a container started without its GPUs? (docker run --gpus all, or the NVIDIA container runtime)"
        else:
            fix = ""
        return f"torch {torch.__version__} (CUDA {torch.version.cuda}) with the NVIDIA driver {driver}: {said}{fix}"
    return "torch.cuda.is_available() is False"


def nvidia_driver_version() -> str | None:
    """The loaded NVIDIA kernel module's version (e.g. 535.216.01), None where no driver is loaded."""
    try:
        with open(NVIDIA_DRIVER_FILE) as f:
            match = re.search(r"Kernel Module\s+(?:for \S+\s+)?([\d.]+)", f.read())
    except OSError:
        return None
    return match.group(1) if match else "(unknown version)"


def cpu_threads() -> str | None:
    """Under ``FTCTL_CPU_THREADS=auto`` (what the launchers set unless the user chose OMP_NUM_THREADS): give
    each process of this node an equal share of the cores it may run on, through OMP_NUM_THREADS (read by
    torch and by DeepSpeed's CPU Adam as they load) and torch's own count. torchrun's default for several
    processes is one thread each: a 1B fft on two H200s with 4 accumulation steps ran each micro-batch at half
    the speed of one GPU's (bench/NOTES.md v27). Returns the line the run's log shows, or None; without
    ``auto`` (torchrun started by hand) only a hint where several processes were left one thread each. Either way,
    where this process sees no GPU and the machine is busy, its threads wait asleep (passive_threads_when_busy)."""
    cores = usable_cores()
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    threads = max(1, cores // local)
    auto = os.environ.get(THREADS_ENV) == "auto"
    if auto:
        os.environ["OMP_NUM_THREADS"] = str(threads)
        if "torch" in sys.modules:  # imported already (a test's process): its thread count is read at import
            sys.modules["torch"].set_num_threads(threads)
    busy = passive_threads_when_busy(local * omp_threads()) if no_gpu_here() else ""
    asleep = f"they wait asleep at their barriers ({busy})" if busy else ""
    if auto:
        return f"cpu threads: {threads} a process ({cores} cores / {local} on this node; OMP_NUM_THREADS overrides)" + (
            f"; {asleep}" if asleep else ""
        )
    if local > 1 and threads > 1 and os.environ.get("OMP_NUM_THREADS") == "1":
        return (
            f"note: one CPU thread a process (OMP_NUM_THREADS=1, torchrun's default for {local} processes): "
            f"FTCTL_CPU_THREADS=auto gives each its share of the {cores} cores (what ftctl launch sets)"
            + (f"; cpu threads: {asleep}" if asleep else "")
        )
    return f"cpu threads: {asleep}" if asleep else None


WAIT_POLICY_ENV = "OMP_WAIT_POLICY"  # OpenMP's: read once, when torch loads its OpenMP runtime


def passive_threads_when_busy(threads: int, env=None, load: float | None = None, cpus: int | None = None) -> str:
    """Before torch is imported, in a CPU training process (every launcher's trainer through cpu_threads, `ftctl
    train`, `ftctl demo`): on a machine already busy, torch's OpenMP threads wait for each other asleep
    (OMP_WAIT_POLICY=PASSIVE) instead of spinning. Spinning, a thread holds its core while the thread it waits
    for is off waiting for one. Busy: the 1-minute load average (the machine's, before this run computes) leaves
    fewer free cores than the ``threads`` this run's processes here use, by a core or more: load >= cpus - threads
    + 1, so load >= 1 with threads = cores (ftctl's share). On this repo's 2-core machine a LoRA step of the demo
    model (4 x 80 tokens, 2 threads) took 43 s spinning vs 13 s asleep at a load of ~10, 15 vs 3-6 s at 1-3
    (task 153), 24 vs 4 s at 2-5 (task 168). The user's own OMP_WAIT_POLICY is kept; once torch is loaded it is
    too late to set, and nothing is. Returns why, for the run's log ("" where nothing was set)."""
    env = os.environ if env is None else env
    if WAIT_POLICY_ENV in env or "torch" in sys.modules:
        return ""
    cpus = cpus or os.cpu_count() or 1  # the load average counts the whole machine's runnable threads
    try:
        load = os.getloadavg()[0] if load is None else load
    except OSError:  # no load average here
        return ""
    if load < max(1.0, cpus - threads + 1):
        return ""
    env[WAIT_POLICY_ENV] = "PASSIVE"
    return f"{WAIT_POLICY_ENV}=PASSIVE: load {load:.1f} on {cpus} cores, busy"


def omp_threads() -> int:
    """The threads one process computes with: OMP_NUM_THREADS where set, else torch's default (the cores it may
    run on)."""
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "")))
    except ValueError:
        return usable_cores()


def no_gpu_here() -> bool:
    """Whether this process can only compute on CPU, said without torch: no NVIDIA driver loaded, or
    CUDA_VISIBLE_DEVICES hides every GPU. A GPU run's threads are left as they are."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    hidden = visible is not None and not any(d.strip() and not d.strip().startswith("-") for d in visible.split(","))
    return hidden or nvidia_driver_version() is None


#: how long torch lets a collective wait for the slowest process (its default process-group timeout)
TORCH_COLLECTIVE_TIMEOUT_S = 1800


def collective_timeout_s(upload_wait_s: float) -> int:
    """The run's process-group timeout: torch's 30 minutes plus upload_wait_s. At the end of a run every node
    first waits (up to upload_wait_s) for its checkpoint uploads, then rank 0 for the final model's while the
    others wait in a barrier: with upload_wait_s past ~25 minutes the others' barrier timed out, and torchrun
    killed rank 0 in the middle of the final model's upload."""
    return int(TORCH_COLLECTIVE_TIMEOUT_S + upload_wait_s)


def init_group(plan, procs: Processes, timeout_s: int = TORCH_COLLECTIVE_TIMEOUT_S) -> None:
    """Before TrainingArguments, what the sharding strategies need of a process group.

    DeepSpeed's group: ZeRO-3 builds the model already sharded (zero.Init), which needs the group up, and
    on CPU it must be gloo. A single process started without torchrun (the local backend on one GPU, the
    demo, a test) gets torchrun's variables for a group of one: DeepSpeed would otherwise look for MPI.
    FSDP on one GPU gets them too: accelerate applies FSDP only when it sees a distributed launch
    (LOCAL_RANK), and would otherwise train unsharded (which the sharding check then stops)."""
    if plan.strategy == "fsdp" and not procs.on_cpu:
        _group_of_one_env()
        return
    if plan.strategy not in DEEPSPEED_STRATEGIES:
        return
    _group_of_one_env()
    import deepspeed

    if procs.on_cpu:
        # DeepSpeed's CPU group compiles its shared-memory all-reduce first (g++, 25-45 s on 2 cores, once per
        # install), which only its tensor-parallel inference calls (and which falls back to gloo's without it)
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    from datetime import timedelta

    deepspeed.init_distributed(dist_backend="gloo" if procs.on_cpu else "nccl", timeout=timedelta(seconds=timeout_s))


def _group_of_one_env() -> None:
    """torchrun's variables for a single process started without it (kept where torchrun set them)."""
    if "RANK" not in os.environ:
        os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1"})
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deepspeed_config(plan, on_cpu: bool, load_universal: bool = False) -> dict | None:
    """The DeepSpeed config dict for the DeepSpeed strategies, else None. ``load_universal``: the
    checkpoint to resume is in DeepSpeed's universal format (written on another world size: reshard.py)."""
    if plan.strategy not in DEEPSPEED_STRATEGIES:
        return None
    stage = 3 if plan.strategy in ZERO3_STRATEGIES else 2
    zero: dict = {"stage": stage, "overlap_comm": not on_cpu, "contiguous_gradients": True}
    if stage == 2:
        zero["reduce_bucket_size"] = "auto"  # hidden^2: ZeRO-2 scaled 1.90x on 2 H200s with it
    else:
        # no bucket sizes: DeepSpeed's own (reduce 5e8, prefetch 5e7, persistence 1e5 elements), which the
        # planner counts (its zero3_buffers term), not the Trainer's "auto" (hidden^2, 0.9 hidden^2, 10 hidden:
        # a prefetch of a sixteenth of one block for the 1B shape). Measured on 2 H200s, 1B fft: ZeRO-3 made
        # 1.28x one GPU's `single` with them, 1.21-1.29x with "auto"; 0.9 GiB more memory per GPU.
        # save_model() writes one ordinary safetensors model, not only per-rank shards
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    config = {
        "train_micro_batch_size_per_gpu": "auto",
        "train_batch_size": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "zero_optimization": zero,
        "steps_per_print": 10**9,  # the trainer logs; DeepSpeed's own lines only repeat it
        "wall_clock_breakdown": False,
    }
    if load_universal:
        config["checkpoint"] = {"load_universal": True}
    if plan.strategy in OFFLOAD_STRATEGIES:
        offload = {"device": "cpu", "pin_memory": not on_cpu}
        zero["offload_optimizer"] = dict(offload)
        if plan.strategy == "zero3_offload":
            zero["offload_param"] = dict(offload)
        # offloaded optimizer states need DeepSpeed's CPU Adam: the Trainer builds it over its own parameter groups
        # (SFTTrainer.get_optimizer_cls_and_kwargs). An "optimizer" section here had DeepSpeed build it over every
        # parameter in one group, and weight_decay decayed the norms and biases every other strategy exempts.
    return config


def offloads_optimizer(deepspeed: dict | str | None) -> bool:
    """Whether TrainingArguments' ``deepspeed`` (deepspeed_config's dict) keeps the optimizer states in CPU RAM."""
    zero = deepspeed.get("zero_optimization", {}) if isinstance(deepspeed, dict) else {}
    return zero.get("offload_optimizer", {}).get("device") == "cpu"


def zero3_leaf_blocks(model, strategy: str) -> list[str]:
    """Under ZeRO-3, make each transformer block (the model's ``_no_split_modules``, FSDP2's wrapping unit
    too) one of DeepSpeed's leaf modules: its parameters are gathered at once when the block starts and
    released when it ends, with hooks on the block only, not on each projection and norm inside it. Without
    it DeepSpeed's Python hooks on every submodule left the GPU idle: 1B fft with zero3 on one H200 ran at
    0.77x the unsharded step, its kernels equal (bench/NOTES.md, v25). Blocks larger than DeepSpeed's
    live-parameter limit (plan.ZERO3_MAX_LIVE, which the planner's zero3_buffers counts) stay as they were.
    Returns the block classes made leaves ([] where nothing changed)."""
    if strategy not in ZERO3_STRATEGIES:
        return []
    from deepspeed.utils import set_z3_leaf_modules

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(base, "_no_split_modules", None) or ())
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    size = max((sum(getattr(p, "ds_numel", p.numel()) for p in m.parameters()) for m in blocks), default=0)
    if not blocks or size > ZERO3_MAX_LIVE:
        return []
    classes = sorted({type(m) for m in blocks}, key=lambda c: c.__name__)
    set_z3_leaf_modules(model, classes)
    return [c.__name__ for c in classes]


def fsdp_settings(plan, on_cpu: bool) -> dict:
    """TrainingArguments keywords for the fsdp strategy ({} otherwise).

    FSDP2 full sharding wrapped per transformer block (the model's ``_no_split_modules``);
    activation checkpointing goes through FSDP instead of the Trainer flag."""
    if plan.strategy != "fsdp":
        return {}
    if on_cpu:
        raise FtctlError(
            "strategy fsdp does not run on CPU: accelerate's FSDP2 would silently train unsharded (plain DDP). "
            "Use -o strategy=zero3 for sharded training on CPU (DeepSpeed ZeRO-3 over gloo)."
        )
    return {
        "fsdp": "full_shard auto_wrap",
        "fsdp_config": {
            "version": 2,
            "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "reshard_after_forward": True,
            "state_dict_type": "FULL_STATE_DICT",
            "cpu_ram_efficient_loading": True,
            "activation_checkpointing": plan.gradient_checkpointing,
        },
    }


def strategy_args(plan, procs: Processes, load_universal: bool = False) -> dict:
    """TrainingArguments keywords for the plan's strategy on this machine."""
    # every trainable parameter takes part in each step (lora's frozen base is no DDP parameter): no extra autograd
    # walk for unused ones, also where torchrun starts one process (transformers wraps it in DDP too)
    args: dict = {"use_cpu": procs.on_cpu, "ddp_find_unused_parameters": False}
    if procs.world_size > 1:
        args["ddp_backend"] = "gloo" if procs.on_cpu else "nccl"
    ds = deepspeed_config(plan, procs.on_cpu, load_universal)
    if ds is not None:
        args["deepspeed"] = ds
    args.update(fsdp_settings(plan, procs.on_cpu))
    return args


def check_sharded(model, strategy: str) -> None:
    """Refuse to train unsharded under a sharding strategy: accelerate falls back to plain DDP without a
    word where FSDP cannot run (on CPU ``fsdp_version: 2`` does), and the run would need the memory the
    plan did not count. FSDP2 turns parameters into DTensors; ZeRO-3 gives them DeepSpeed's ``ds_id``."""
    if strategy == "fsdp":
        from torch.distributed.tensor import DTensor

        sharded = any(isinstance(p, DTensor) for p in model.parameters())
    elif strategy in ZERO3_STRATEGIES:
        sharded = any(hasattr(p, "ds_id") for p in model.parameters())
    else:
        return
    if not sharded:
        raise FtctlError(
            f"strategy {strategy}: the model is not sharded (the Trainer wrapped it without {strategy}), so each "
            f"process would hold all of it. Check that torch, accelerate and DeepSpeed are the versions ftctl "
            f"pins, or use -o strategy=zero3."
        )


def sharding_check(strategy: str):
    """A TrainerCallback running :func:`check_sharded` once the Trainer has wrapped the model."""
    from transformers import TrainerCallback

    class ShardingCheck(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            check_sharded(model, strategy)

    return ShardingCheck()


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def all_reduce_in_bf16(accelerator) -> None:
    """DDP all-reduces each gradient bucket in bf16 (accelerate's comm hook, torch's bf16_compress_hook:
    half the bytes, the sum rounded to bf16); registered when the Trainer wraps the model. NCCL only
    (plan.py refuses it on CPU). On two NVLink H200s no faster (bench/NOTES.md, v8)."""
    from accelerate.utils import DDPCommunicationHookType, DistributedDataParallelKwargs

    accelerator.ddp_handler = accelerator.ddp_handler or DistributedDataParallelKwargs()
    accelerator.ddp_handler.comm_hook = DDPCommunicationHookType.BF16


def adapter_state_dict(model) -> dict:
    """An FSDP-sharded PEFT model's trainable weights (its adapter, and what it trains whole: modules_to_save, a
    trained head) gathered whole, on the CPU of rank 0 (the other ranks get {}); every rank takes part. What a lora run
    under FSDP saves as its adapter, in each checkpoint-N and at the end (sft_trainer.save_model), and as FSDP's resume
    copy of the model in each checkpoint (sft_trainer.SFTTrainer._save_optimizer_and_scheduler): transformers' save
    of an FSDP model gathers the whole model (accelerator.get_state_dict: the frozen base too) into rank 0's RAM at each
    save, of which PEFT then writes the adapter's part, a few MB: for a 70B base, 140 GB in one host's memory and
    over the network at every checkpoint. The file is the same adapter_model.safetensors, whole and loadable.

    Each trainable parameter is gathered by itself (``DTensor.full_tensor`` on every rank, in named_parameters'
    order), not through torch's get_model_state_dict(ignore_frozen_params=True), which drops the frozen parameters
    that named_parameters lists, and named_parameters lists a tied weight once, under the embedding's name: a tied
    LM head stayed, frozen, gathered on every rank at each save (the Llama-3.2-1B shape's: 525 MB of a 706 MB
    checkpoint where the same run without FSDP wrote 135 MB, bench/NOTES.md v82), and so would any entry that is no
    parameter (buffers; bitsandbytes' 4-bit quantization states in a QLoRA model's state dict). Names are torch's state-dict names (activation checkpointing's
    wrapper left out), which accelerate's load_fsdp_model loads by."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import _get_fqns  # the names set_model_state_dict loads by
    from torch.distributed.tensor import DTensor

    main = not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
    gathered = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        whole = param.full_tensor() if isinstance(param, DTensor) else param  # a collective: every rank, same order
        if main:
            (key,) = _get_fqns(model, name)
            gathered[key] = whole.detach().to("cpu", copy=True)
        del whole
    return gathered


def reshard(model) -> None:
    """FSDP2: every ``fully_shard``-ed module of ``model`` back on its shards (DTensors), the whole copies a forward
    gathered freed. FSDP2's root module does not reshard after its forward (a backward would gather its parameters
    again at once), so after an evaluation, which no backward follows, its own parameters (those outside the blocks:
    the embedding, the final norm) stay whole. load_best_model_at_end's load of a lora run's adapter then failed, on 2
    processes: "got mixed torch.Tensor and DTensor" (torch's set_model_state_dict met the whole frozen norm beside the
    DTensors it loads into). What run.load_best does before transformers loads the best checkpoint."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def fsdp_outputs_as_computed(accelerator) -> None:
    """FSDP2 without casting the model's outputs: accelerate's bf16 policy sets ``output_dtype=bf16`` (up to 1.15;
    1.16 leaves it unset, and this does nothing), and the root module's outputs are ftctl's loss sums (lm_head.py:
    fp32 sums of log-probabilities over every token of a micro-batch, ~65,000 for 16k tokens): in bf16 the loss was
    off by up to 0.4% (logged 12.3125, 4.1875: steps of 1/64 on an H200), and its gradient's scale with it. The
    parameters still compute in bf16 and the gradients are still reduced in bf16 (accelerate's default, what the
    two-GPU rows measured). Read when the Trainer wraps the model, so set before train()."""
    import dataclasses

    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    policy = getattr(plugin, "mixed_precision_policy", None)
    if policy is not None and getattr(policy, "output_dtype", None) is not None:
        plugin.mixed_precision_policy = dataclasses.replace(policy, output_dtype=None)


def local(tensor):
    """``tensor`` as a plain tensor: FSDP2's values are DTensors (its gradient norm is a replicated one), and a
    DTensor mixed with plain tensors (a stack, a copy into pinned memory) fails or stays distributed."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def to_host_later(tensor):
    """Start copying ``tensor`` to the host without waiting; returns a function that gives the host copy,
    waiting only for that copy (a CUDA tensor comes back through pinned memory behind an event: ``.item()``
    would wait for all the work queued so far). A CPU tensor: a copy of it, at once. A DTensor: its full
    value (``local``)."""
    import torch

    tensor = local(tensor)
    if not tensor.is_cuda:
        host = tensor.detach().clone()
        return lambda: host
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    host.copy_(tensor.detach(), non_blocking=True)
    event = torch.cuda.Event()
    event.record()

    def read():
        event.synchronize()
        return host

    return read


class StopVote:
    """Whether any rank was asked to stop, agreed on by every rank without the host waiting on the GPU.

    Call it once a step on every rank with this rank's flag. Each call adds the flag to an all-reduce (max)
    and returns the result of the previous call's, so every rank decides on the same step, one step after
    the request. Under NCCL the vote travels on the GPU and comes back through pinned memory behind an
    event that the next step finds complete (the host runs at most a step ahead): reading the vote at once
    would wait for the whole step's queued work, every step (seen on two H200s: two waits a step that one
    GPU does not have). One process: the flag itself, at once."""

    def __init__(self) -> None:
        self._pending = None  # to_host_later's reader of the vote in flight

    def __call__(self, flag: bool) -> bool:
        import torch
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return flag
        decided = bool(self._pending().item()) if self._pending is not None else False
        device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        vote = torch.full((1,), int(flag), dtype=torch.int32, device=device)
        dist.all_reduce(vote, op=dist.ReduceOp.MAX)
        self._pending = to_host_later(vote)
        return decided


def shutdown() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
