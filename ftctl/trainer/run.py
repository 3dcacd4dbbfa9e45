"""The trainer, top to bottom: setup -> fit -> save -> cleanup.

What every backend runs (``torchrun ... -m ftctl.trainer --spec spec.json``) and what the demo
calls in-process. TRL's SFTTrainer does the training (sft_trainer.py keeps its step free of host waits);
this module only wires the plan into it:

    setup    processes, output dirs, signal handlers, resume point (a DeepSpeed checkpoint of another
             world size converted: reshard.py), tokenizer, TrainingArguments (before the model: ZeRO-3
             builds it sharded), data, model + method, callbacks
    fit      trainer.train(resume_from_checkpoint=...): checkpoints every save_steps and at the end,
             each committed with a manifest and uploaded in the background when the output is remote
    save     the final model (or adapter) + tokenizer + spec.json in the output dir (then uploaded)
    cleanup  signal handlers restored, ``$FTCTL_STATUS_FILE`` written by rank 0:
             complete | preempted | failed

Output directory layout (local, or staged locally and mirrored to the object-store URI):

    spec.json  metrics.jsonl  <final model or adapter files + tokenizer>
    runs/ (TensorBoard)  wandb/ (W&B's files, WANDB_DIR unset): one curve, one W&B run across attempts (tracking.py)
    checkpoint-<step>/ ... ftctl-manifest.json
"""

from __future__ import annotations

import fcntl
import functools
import gc
import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import socket
import sys
import time
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ftctl import checkpoints, failures, storage
from ftctl.checkpoints.settings import PHASE_KEY
from ftctl.checkpoints.staging import STAGING_ENV
from ftctl.envvars import ATTEMPT_ENV, BASE_MODEL_ENV, SKY_TASK_ENV, SLURM_RESTART_ENV, STATUS_ENV, telemetry_off
from ftctl.errors import FtctlError
from ftctl.plan import (
    DEEPSPEED_STRATEGIES,
    Plan,
    checkpoint_cost,
    dump_run,
    final_dtype,
    scaled_context,
    without_liger,
)
from ftctl.runpaths import (
    DATA_CACHE,
    FINAL_MARKS,
    FINAL_STAGING,
    MERGE_RECORD,
    MERGED_DIR,
    METRICS_FILE,
    PLAIN_TEXT,
    SPEC_FILE,
    START_LINE,
    START_SKY_TASK,
    START_SLURM_ATTEMPT,
    START_SLURM_JOB,
    START_WANDB_RUN,
    RunPaths,
    open_lock,
    user_name,
)
from ftctl.spec import RunSpec, scheduler_kwargs
from ftctl.trainer import distributed, gpu_memory, model_card, op_build, reshard, tracking
from ftctl.trainer.methods import ADAPTER_METHODS
from ftctl.trainer.trained import (
    as_saved_for_others,
    for_other_readers,
    keep_base_merge,
    keep_base_run,
    name_base,
    retrained_final,
)

if TYPE_CHECKING:  # the trainer's heavy imports happen in setup(), not at import time
    from ftctl.trainer.attention import Kernels
    from ftctl.trainer.callbacks import PreemptionCallback
    from ftctl.trainer.sft_trainer import SFTTrainer
    from ftctl.trainer.sync_callback import CheckpointSyncCallback

log = logging.getLogger(__name__)

LOCAL_DIR_ENV = STAGING_ENV  # where a remote output is staged (default: under the ftctl cache)
CUDA_ALLOC_ENV = "PYTORCH_CUDA_ALLOC_CONF"


@dataclass
class Result:
    status: str  # complete | preempted
    output_dir: str  # local directory holding the final model and checkpoints
    global_step: int
    final_loss: float | None
    log_history: list = field(default_factory=list, repr=False)


@dataclass
class Run:
    spec: RunSpec
    plan: Plan
    procs: distributed.Processes
    local_dir: str
    remote_uri: str | None
    preemption: PreemptionCallback
    sync: CheckpointSyncCallback | None = None
    trainer: SFTTrainer | None = None
    resume_from: str | None = None
    kernels: Kernels | None = None  # what this process really runs
    env_before: dict = field(default_factory=dict)  # W&B's and telemetry's variables this run set: restored at its end


# ------------------------------------------------------------------------------------------ entry
def train(spec: RunSpec, plan: Plan, callbacks=(), echo=print) -> Result:
    """Train ``spec`` as ``plan`` says, in this process (one rank of torchrun, or alone)."""
    local_dir, remote_uri = output_dirs(spec)
    with only_trainer(local_dir) as own, holding_lease(remote_uri, spec) as kept:
        return _train(spec, plan, [*callbacks, *own, *kept], echo)


@contextmanager
def holding_lease(remote_uri: str | None, spec: RunSpec):
    """Rank 0 of a run into an object store holds the lease on it while it trains (ftctl.lease: a store has no lock
    for only_trainer's): another job's live lease there waits for it to end or go stale, or stops this one. Yields the
    callbacks that stop the training where another job takes the lease over meanwhile (callbacks.LeaseKept)."""
    if remote_uri is None or int(os.environ.get("RANK", "0")) != 0:
        yield []
        return
    from ftctl.lease import Holder
    from ftctl.trainer.callbacks import LeaseKept

    # a relaunch whose node holds a checkpoint resumes: a store down as it starts is waited for, then exit 75 (lease)
    lease = Holder(remote_uri, spec.s3_endpoint_url, spec.name, holds_checkpoint=lambda: holds_checkpoint(spec))
    lease.take()
    try:
        yield [LeaseKept(lease)]
    finally:
        lease.close()


@contextmanager
def only_trainer(local_dir: str):
    """Rank 0 holds the run directory's lock while it trains: a second run into the same directory (two launches
    of one run, a job requeued while a stray attempt still runs) stops at once, naming the first, instead of both
    writing checkpoint-N and metrics.jsonl in turn. A file system without locks (some NFS mounts) is not refused.
    The lock stays when the run ends (a file removed while another process opens it would let two hold it): a lock
    another user's run left in a group's run directory (mode 644) is taken read-only, its holder's name unwritten
    (it was a PermissionError). Yields the callback that stops the training where the directory is removed or replaced
    meanwhile (callbacks.RunDirKept)."""
    if int(os.environ.get("RANK", "0")) != 0:
        yield []
        return
    path = RunPaths(Path(local_dir)).train_lock
    path.parent.mkdir(parents=True, exist_ok=True)
    with open_lock(path) as fh:
        try:
            _lock(fh)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise FtctlError(
                f"{local_dir} is being trained into by {holder}: a second run there would write the same "
                "checkpoints. Wait for it to end (or stop it), or give this run another --output."
            ) from None
        except OSError as e:  # ENOLCK: no lock daemon behind this mount
            log.warning("cannot lock %s (%s): two runs into it would not be stopped", path, e.strerror or e)
        if fh.writable():
            fh.seek(0)
            fh.truncate()
            since = time.strftime("%Y-%m-%d %H:%M:%S %z")
            fh.write(f"pid {os.getpid()} on {socket.gethostname()} by {user_name()} since {since}\n")
            fh.flush()
        from ftctl.trainer.callbacks import RunDirKept

        yield [RunDirKept(local_dir, path, fh)]


def _lock(fh, tries: int = 20) -> None:
    """flock the run's lock, waiting up to a second: `ftctl status` takes it for an instant to ask whether a trainer
    holds it (local.backend.training_now). BlockingIOError where another trainer holds it."""
    for attempt in range(tries):
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if attempt == tries - 1:
                raise
            time.sleep(0.05)


class Finished(Exception):
    """A requeued attempt of a job whose earlier attempt finished the run (Slurm requeues a job whose node failed as
    it ended): nothing is left to train, and nothing failed. It said FAILED of a finished model."""

    def __init__(self, step: int):
        super().__init__(step)
        self.step = step


def _train(spec: RunSpec, plan: Plan, callbacks, echo) -> Result:
    try:
        with room_to_save(plan, *output_dirs(spec), final=False):  # its spec.json, records, a checkpoint downloaded
            run = setup(spec, plan, callbacks, echo)
    except Finished as done:
        distributed.shutdown()
        write_status("complete")
        echo(f"an earlier attempt of this job finished the run at step {done.step}: nothing is left to train")
        return Result("complete", output_dirs(spec)[0], done.step, None)
    except ImportError as e:  # setup imports most of the trainer's modules, some only as it needs them
        write_status("failed")
        if (e.name or "").startswith("ftctl") and (upgraded := upgraded_since_start()):
            raise FtctlError(
                f"ftctl was upgraded while this trainer started ({upgraded} is newer than this process), which then "
                f"imported modules of both versions ({type(e).__name__}: {e}); nothing was trained: the same `ftctl "
                "launch` goes on with the new version (from the run's last checkpoint, where it has one)"
            ) from e
        raise
    except BaseException:
        write_status("failed")
        raise
    status = "failed"
    try:
        fit(run)
        if stopped_early(run):
            status = "preempted"
        else:
            if run.procs.is_main and (why := held_out_stop(run)):
                echo(why)
            if run.spec.load_best_model_at_end:
                load_best(run, echo)
            save(run)
            status = "complete"  # only once the final model is written (and uploaded)
    finally:
        cleanup(run, status)
    state = run.trainer.state
    losses = [h["loss"] for h in state.log_history if "loss" in h]
    return Result(status, run.local_dir, state.global_step, losses[-1] if losses else None, state.log_history)


def upgraded_since_start(started: float | None = None) -> str | None:
    """One of ftctl's own modules written after this process (or ``started``) started: ftctl upgraded in place under
    it (pip install -U into the venv a Slurm job or a SkyPilot recovery runs, a git pull of an editable install), so
    the modules it imports from then on are of the new version beside the old ones it holds; None where none is."""
    if started is None:
        started = _process_started()
    for path in Path(__file__).resolve().parents[1].rglob("*.py"):
        try:
            stat = path.stat()  # the change time too: uv links files from its cache, keeping the cache's old mtimes
            if max(stat.st_mtime, stat.st_ctime) > started + 1:  # /proc's boot time is in whole seconds
                return str(path)
        except OSError:
            continue
    return None


_IMPORTED_AT = time.time()


def _process_started() -> float:
    """When this process started (Linux's /proc), else when this module was imported (an earlier import then went
    unseen)."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # starttime, in clock ticks after boot
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return _IMPORTED_AT


# ------------------------------------------------------------------------------------------ setup
def setup(spec: RunSpec, plan: Plan, callbacks=(), echo=print) -> Run:
    from transformers import set_seed
    from transformers.trainer_callback import EarlyStoppingCallback, PrinterCallback, ProgressCallback

    from ftctl.checkpoints import settings as checkpoint_settings
    from ftctl.checkpoints.resume import none_verified
    from ftctl.trainer.callbacks import (
        ApplySettings,
        FrozenInputsNoGradient,
        MetricsCallback,
        NewHeldOut,
        NothingToTrain,
        PreemptionCallback,
        StepsAsGiven,
        StopRequest,
    )
    from ftctl.trainer.data import DIGESTS, build_datasets, loss_on, rows_digest, shared_rows, too_few_sequences
    from ftctl.trainer.diverged import StopWhenDiverged
    from ftctl.trainer.masks import use_chat_template
    from ftctl.trainer.methods import apply_method
    from ftctl.trainer.model import load_model, load_tokenizer, model_kernels
    from ftctl.trainer.sft_trainer import SFTTrainer
    from ftctl.trainer.sync_callback import CheckpointSyncCallback

    cuda_allocator_defaults()
    procs = distributed.processes()
    distributed.check_world(plan, procs)
    local_dir, remote_uri = output_dirs(spec)
    os.makedirs(local_dir, exist_ok=True)
    # rank 0 of a run into an object store also heeds `ftctl cancel`'s stop request there (a SkyPilot job's)
    request = StopRequest(remote_uri, spec.s3_endpoint_url) if remote_uri and procs.is_main else None
    preemption = PreemptionCallback(request=request)
    preemption.install()  # from here on a signal stops the run cleanly at the first step boundary
    run = Run(spec, plan, procs, local_dir, remote_uri, preemption)
    try:
        distributed.init_group(plan, procs, distributed.collective_timeout_s(spec.upload_wait_s))
        if not procs.on_cpu and (full := gpu_memory.check_free(plan, procs.local_rank)):
            log.warning("%s", full)
        run.resume_from = resume_point(spec, local_dir, remote_uri)
        if run.resume_from is None and not int(os.environ.get(ATTEMPT_ENV) or 0):  # `ftctl train` has no preflight
            if said := checkpoint_settings.final_written_over(remote_uri or local_dir, spec.s3_endpoint_url):
                raise FtctlError(said)
        if run.resume_from is None and remote_uri and spec.resume == "auto":
            if said := none_verified(remote_uri, spec.s3_endpoint_url):
                raise FtctlError(said)
        if procs.is_main and (again := starts_again(run.resume_from, local_dir, remote_uri)):
            log.warning("%s", again)
        trained_with = checkpoint_settings.settings(spec, plan)  # recorded in each manifest; compared on resume
        # ...with the data files' content (the same files elsewhere: the same data), by the data cache's digests
        trained_with.update(checkpoint_settings.content(spec, os.path.join(local_dir, DATA_CACHE, DIGESTS)))
        changed = checkpoint_settings.changes(run.resume_from, trained_with)
        if said := other_data(run, changed):
            raise FtctlError(said)
        if run.resume_from and (done := already_trained(spec, run.resume_from, changed, local_dir, remote_uri)):
            if int(os.environ.get(ATTEMPT_ENV) or 0) > 0 or recovered(run.resume_from):  # an earlier attempt's
                raise Finished(checkpoints.checkpoint_step(run.resume_from) or 0)
            raise FtctlError(done)
        if run.resume_from and not elsewhere(run) and (past := past_end(spec, run.resume_from)):
            raise FtctlError(past)
        if changed and procs.is_main:
            log.warning("%s", changed.line(own=not elsewhere(run)))
        own = None if elsewhere(run) else run.resume_from  # a checkpoint of this run: its W&B run goes on
        if own and procs.is_main and (again := retrained_final(spec.output, own, spec.max_steps, spec.s3_endpoint_url)):
            log.warning("%s", again)  # its newer checkpoints deleted, its final model kept: replaced
        if procs.is_main:  # over another run's final model: which one, for chat and eval (--compare's base)
            base_said = keep_base_run(local_dir, spec.model_name_or_path, base_name(spec), resumed=bool(own))
            if base_said and spec.method in ADAPTER_METHODS:  # a full model goes on from its checkpoint's weights
                log.warning("%s", base_said)
        # a DeepSpeed checkpoint written by another number of processes loads as a universal one
        universal = reshard.prepare(run.resume_from, plan, procs, shared_filesystem=remote_uri is None)
        tokenizer = use_chat_template(
            load_tokenizer(spec.model_name_or_path, spec.model_revision), spec.chat_template_path
        )
        args = training_args(spec, plan, procs, local_dir, load_universal=universal, resumed=own)
        # DeepSpeed's compiled ops (CPU Adam under offload) built or loaded now, under a lock that dies with its
        # process: a build killed half way left torch's lock file, and every later run waited on it forever
        op_build.prepare(args.deepspeed)
        args.ignore_data_skip = bool(changed and changed.new_data)  # checkpoints.settings.Changes.new_data
        if procs.is_main and (over := over_context(spec)):
            log.warning("%s", over)
        trained_rows: list = []  # the training rows' DataStats
        dataset, eval_dataset = build_datasets(
            spec, tokenizer, echo if procs.is_main else None, trained_rows, os.path.join(local_dir, DATA_CACHE)
        )
        if procs.is_main and (shared := shared_rows(dataset, eval_dataset)):
            log.warning("%s", shared)
        trained_with.update(data_rows=len(dataset), data_digest=rows_digest(dataset))  # in each manifest too
        if procs.is_main and (edited := edited_data(run, trained_with, changed)):
            log.warning("%s", edited)
        set_seed(spec.seed)  # LoRA's initial weights
        run.kernels = model_kernels(spec, plan, procs.on_cpu, procs.local_rank)  # attention + Liger: what really runs
        if procs.is_main and (unplanned := without_liger(plan, spec.model_max_length, run.kernels.liger)):
            log.warning("%s", unplanned)
        model = load_model(spec, plan, procs.on_cpu, procs.local_rank, run.kernels)
        model = apply_method(model, spec, plan, run.resume_from)  # a LoRA checkpoint's adapters on its own modules
        as_saved_for_others(model, tokenizer)  # each checkpoint's generation config
        leaves = distributed.zero3_leaf_blocks(model, plan.strategy)
        if leaves and procs.is_main:
            echo(f"{plan.strategy}: parameters gathered a block at a time ({', '.join(leaves)})")
        if procs.is_main and _text_or_none(Path(local_dir, SPEC_FILE)) != (text := dump_run(spec, plan)):
            storage.write_whole(Path(local_dir, SPEC_FILE), text)  # the file a requeued job reads: never cut short
        # a local output seen by several nodes is one shared directory (every node read spec.json
        # from the run dir): node 0 commits each checkpoint's ftctl-manifest.json for all of them
        run.sync = CheckpointSyncCallback(
            remote_uri,
            spec_hash=spec.digest(),
            settings=trained_with,
            endpoint_url=spec.s3_endpoint_url,
            keep_last=spec.save_total_limit,
            rotate=spec.checkpoints_kept,
            upload_wait_s=spec.upload_wait_s,
            shared_filesystem=remote_uri is None,
            resumed=run.resume_from,
            keep_staging=spec.keep_staging,
        )
        metrics = MetricsCallback(os.path.join(local_dir, METRICS_FILE), echo=echo, resumed_from=run.resume_from)
        given = {**os.environ, **spec.env}
        # W&B's run, and no usage ping to the Hub from TRL's trainer (unless the user set HF_HUB_DISABLE_TELEMETRY)
        wanted = {**tracking.wandb_env(spec.report_to, local_dir, own, given), **telemetry_off(given)}
        if procs.is_main:  # the one process that logs to W&B: offline where its server cannot be reached
            offline, said = tracking.wandb_offline(spec.report_to, spec.output, given)
            wanted.update(offline)
            if said:
                log.warning("%s", said)
        run.env_before = tracking.set_env(wanted)
        if procs.is_main:
            plain = all(s.plain == s.rows for s in trained_rows)
            wandb_run = os.environ.get("WANDB_RUN_ID") if "wandb" in args.report_to else None
            formats = {f: sum(st.formats.get(f, 0) for st in trained_rows) for st in trained_rows for f in st.formats}
            loss = loss_on(not spec.assistant_only_loss, formats)
            phase = checkpoint_settings.phase_record(run.resume_from, trained_with, spec.s3_endpoint_url)
            record_start(os.path.join(local_dir, METRICS_FILE), run.kernels, plain, echo, wandb_run, loss, phase)
        stopping = [EarlyStoppingCallback(spec.early_stopping_patience)] if spec.early_stopping_patience else []
        held_out = changed.held_out(spec.eval_data_path) if changed and spec.evaluates else []
        run.trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=dataset,
            eval_dataset=eval_dataset,
            processing_class=tokenizer,
            callbacks=[
                *([NothingToTrain(spec.resume, spec.max_steps, spec.num_train_epochs)] if elsewhere(run) else []),
                run.sync,
                preemption,
                metrics,
                distributed.sharding_check(plan.strategy),
                *reshard.callbacks(universal),
                StepsAsGiven(
                    spec.saves_per_epoch,
                    spec.evals_per_epoch,
                    spec.eval_steps,
                    cost=functools.partial(checkpoint_cost, spec, plan),
                ),
                *([ApplySettings(changed.applied)] if changed else []),
                *stopping,
                *([NewHeldOut(held_out, *stopping)] if held_out else []),
                StopWhenDiverged(spec.model_name_or_path, spec.data_path),  # a NaN loss: stop, naming the fix
                *([FrozenInputsNoGradient()] if spec.method == "sft" else []),
                *callbacks,
            ],
        )
        run.trainer.loads_best = spec.load_best_model_at_end  # the run's end says which step the final model is
        adapter = spec.method in ADAPTER_METHODS
        run.trainer.base_name = base_name(spec)  # what each saved adapter names as its base (trained.name_base)
        run.trainer.base_revision = base_revision(spec)  # ...and the commit it names (PEFT's revision)
        run.trainer.card = functools.partial(
            model_card.write, spec=spec, base=base_name(spec), adapter=adapter, plan=plan
        )
        sequences = len(run.trainer.train_dataset)  # packed by TRL where the plan packs
        if procs.is_main and (
            few := too_few_sequences(sequences, plan.global_batch_size, plan.packing, args.max_length)
        ):
            log.warning("%s", few)
        for cb in (PrinterCallback, ProgressCallback):  # MetricsCallback prints the progress
            run.trainer.remove_callback(cb)
        if "tensorboard" in args.report_to:
            tracking.tensorboard_here(run.trainer, local_dir)
        if "wandb" in args.report_to:  # a resume before W&B's last logged step says what W&B shows of it
            tracking.wandb_retrained(run.trainer, echo)
        if {"wandb", "tensorboard"} & set(args.report_to):  # the run's spec.json beside transformers' arguments
            tracking.log_run(run.trainer, dump_run(spec, plan))
            # where they log, in metrics.jsonl for `ftctl status`: after the writer tensorboard_here makes
            tracking.record_destinations(run.trainer, os.path.join(local_dir, METRICS_FILE), local_dir, spec.output)
        if spec.ddp_comm_dtype == "bf16":
            distributed.all_reduce_in_bf16(run.trainer.accelerator)
        if plan.strategy == "fsdp":
            distributed.fsdp_outputs_as_computed(run.trainer.accelerator)
    except BaseException:
        preemption.uninstall()
        tracking.restore_env(run.env_before)
        raise
    return run


def elsewhere(run: Run) -> bool:
    """Whether the run resumes a checkpoint of another output (-o resume=PATH): not one of its own."""
    if run.resume_from is None:
        return False
    return os.path.realpath(os.path.dirname(os.path.normpath(run.resume_from))) != os.path.realpath(run.local_dir)


def other_data(run: Run, changed) -> str | None:
    """checkpoints.settings.refused_data of the checkpoint a resume=auto run resumes: one saved on other data since
    its launch checked (another launch into the output at once, whose lease this one waited on), named in the
    output as the launch names it."""
    from ftctl.checkpoints.settings import refused_data

    if run.resume_from is None or elsewhere(run):
        return None
    name = os.path.basename(os.path.normpath(run.resume_from))
    uri = storage.join(run.spec.output, name)
    return refused_data(run.spec.output, name, uri, changed, run.spec.resume, run.spec.another_output)


def edited_data(run: Run, trained_with: dict, changed) -> str | None:
    """checkpoints.settings.edited_data of the checkpoint the run resumes, named as the user gave its output."""
    from ftctl.checkpoints.settings import edited_data as said

    if run.resume_from is None:
        return None
    name = os.path.basename(os.path.normpath(run.resume_from))
    return said(run.resume_from, trained_with, changed, run.spec.data_path, storage.join(run.spec.output, name))


def _text_or_none(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None


def cuda_allocator_defaults() -> None:
    """Expandable segments for PyTorch's CUDA allocator unless the user configured it: packed batches
    change shape every step, and with fixed segments the 8B QLoRA row on an H200 reserved 138.9 GiB for a
    109 GiB peak. Read at the first CUDA allocation, so set before any."""
    os.environ.setdefault(CUDA_ALLOC_ENV, "expandable_segments:True")


def record_start(
    metrics_path: str,
    kernels,
    plain_text: bool,
    echo=print,
    wandb_run: str | None = None,
    loss: str | None = None,
    phase: dict | None = None,
) -> None:
    """Say in the run's log, and in metrics.jsonl (an ``"event": "start"`` record), which attention and
    layer kernels run: the plan can only name what the GPU tier allows; and ``loss``, which tokens the loss is on
    (data.loss_on: the next line, and the record's ``loss_on``). The record also says whether every
    training row was plain text, trained without the chat template (``plain_text``: what `ftctl chat` prompts
    the run with, trained.Trained.plain_text). In a Slurm job it names the job and its attempt: the rows after it
    are that job's (`ftctl status JOB` shows them; a job refused at another's lock wrote none). ``phase``: the data
    and learning rate it trains with, and the checkpoint it goes on from with those it was trained with
    (checkpoints.settings.phase_record): the model card lists a relaunched run's phases from them."""
    echo(f"{START_LINE}{kernels.attention}; Liger kernels: {'on' if kernels.liger else 'off'}")
    if loss:
        echo(f"loss: {loss}")
    with open(metrics_path, "a") as f:
        # step 0: kept when a resumed run drops the rows after its checkpoint (callbacks.truncate_metrics)
        record = {"step": 0, "event": "start", "time": round(time.time(), 3), **kernels.record()}
        record[PLAIN_TEXT] = plain_text
        if loss:
            record["loss_on"] = loss
        if phase:
            record[PHASE_KEY] = phase
        if wandb_run:  # the W&B run every attempt of the run logs to (tracking.wandb_env)
            record[START_WANDB_RUN] = wandb_run
        if job := os.environ.get("SLURM_JOB_ID"):
            record[START_SLURM_JOB] = job
            record[START_SLURM_ATTEMPT] = int(os.environ.get(SLURM_RESTART_ENV) or 0)
        if task := os.environ.get(SKY_TASK_ENV):
            record[START_SKY_TASK] = task
        f.write(json.dumps(record) + "\n")


def output_dirs(spec: RunSpec, env: Mapping[str, str] | None = None) -> tuple[str, str | None]:
    """(local directory, remote URI or None). A remote output is staged in a local directory, named by this
    process's environment or ``env`` (another process's: a docker container's HOME). In an ftctl cache several users
    share (a group's FTCTL_CACHE), a staging directory another user made for the same output (a colleague's earlier
    attempt of the run) is not this user's: it gets its own beside it, as that one is not writable here (the trainer
    stopped at its first write, "PermissionError")."""
    out = spec.output
    if not storage.is_remote(out):
        return os.path.abspath(os.path.expanduser(out)), None
    from ftctl.trainer.model import cache_dir

    env = os.environ if env is None else env
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", out.split("://", 1)[1]).strip("-")[:80]
    local = env.get(LOCAL_DIR_ENV)
    if not local:
        staging = cache_dir(env) / "runs" / f"{slug}-{hashlib.sha256(out.encode()).hexdigest()[:8]}"
        try:
            if staging.stat().st_uid != os.getuid():
                staging = staging.with_name(f"{staging.name}-uid{os.getuid()}")
        except OSError:  # none yet: this user's
            pass
        local = str(staging)
    return os.path.abspath(local), out.rstrip("/")


def training_args(
    spec: RunSpec,
    plan: Plan,
    procs: distributed.Processes,
    local_dir: str,
    load_universal: bool = False,
    resumed: str | None = None,
):
    """SFTConfig from the spec and plan. TRL's defaults that hurt on CPU (bf16, gradient
    checkpointing, max_length 1024) are always set explicitly from the plan. ``resumed``: the run's own checkpoint
    this attempt resumes (its W&B run keeps its name: tracking.run_name)."""
    from ftctl.trainer.data import sft_dataset_config
    from ftctl.trainer.sft_trainer import SFTConfig

    strategy = distributed.strategy_args(plan, procs, load_universal)
    checkpointing = plan.gradient_checkpointing and "fsdp" not in strategy  # FSDP checkpoints itself
    return SFTConfig(
        output_dir=local_dir,
        run_name=tracking.run_name(spec, resumed=resumed),  # the name W&B shows (None: the one it has)
        seed=spec.seed,
        data_seed=spec.seed,
        max_steps=spec.max_steps,
        num_train_epochs=spec.num_train_epochs,
        learning_rate=plan.learning_rate,
        weight_decay=spec.weight_decay,
        warmup_steps=spec.warmup,
        lr_scheduler_type=spec.lr_scheduler_type,
        lr_scheduler_kwargs=scheduler_kwargs(spec),
        max_grad_norm=spec.max_grad_norm,
        optim=plan.optim,
        ddp_bucket_cap_mb=spec.ddp_bucket_cap_mb,
        ddp_timeout=distributed.collective_timeout_s(spec.upload_wait_s),  # the group TrainingArguments starts
        per_device_train_batch_size=plan.per_device_train_batch_size,
        gradient_accumulation_steps=plan.gradient_accumulation_steps,
        **checkpointing_args(checkpointing),
        bf16=plan.precision == "bf16" and not procs.on_cpu,
        fp16=plan.precision == "fp16" and not procs.on_cpu,
        logging_steps=spec.logging_steps,
        # a NaN loss is logged as NaN (the filter would hide it, and its check waits on the GPU every step)
        logging_nan_inf_filter=False,
        save_strategy="steps",
        save_steps=spec.checkpoint_every,
        save_total_limit=None,  # the sync callback rotates, once the new checkpoint is complete
        **evaluation_args(spec, plan),
        report_to=report_to(spec.report_to),
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",
        dataloader_pin_memory=not procs.on_cpu,
        # batches go to the GPU without the host waiting for the previous step to finish
        accelerator_config={"non_blocking": not procs.on_cpu},
        **sft_dataset_config(plan.packing, spec.model_max_length),
        **strategy,
    )


def evaluation_args(spec: RunSpec, plan: Plan) -> dict:
    """The held-out loss every eval_steps (default: at each checkpoint) and at the end, in micro-batches of
    per_device_eval_batch_size (default the training's: no gradients, less memory), packed as training is; the
    lowest one's checkpoint kept.
    Without metric functions TRL's evaluation computes only the loss, through compute_loss: sft_trainer's LM
    head, no logits kept."""
    if not spec.evaluates:
        return {"eval_strategy": "no"}
    return {
        "eval_strategy": "steps",
        "eval_steps": spec.eval_every,
        "per_device_eval_batch_size": spec.per_device_eval_batch_size or plan.per_device_train_batch_size,
        # the lowest held-out loss's checkpoint is kept beside the newest ones (transformers' rotation here,
        # sync_callback's protection in the store): what chat, eval and merge can take
        "metric_for_best_model": "eval_loss",
        "greater_is_better": False,
    }


def checkpointing_args(on: bool) -> dict:
    """transformers 5.24 calls it activation_checkpointing; earlier 5.x gradient_checkpointing."""
    import dataclasses

    from trl import SFTConfig

    name = (
        "activation_checkpointing"
        if any(f.name == "activation_checkpointing" for f in dataclasses.fields(SFTConfig))
        else "gradient_checkpointing"
    )
    return {name: on, f"{name}_kwargs": {"use_reentrant": False} if on else None}


def report_to(value: str) -> list[str]:
    import importlib.util

    from ftctl.spec import report_integrations

    wanted = report_integrations(value)  # spec validation's check: a name ftctl does not know
    for name in wanted:
        module = name  # each integration's package has its name
        if importlib.util.find_spec(module) is None:
            raise FtctlError(
                f"report_to={name} needs the {module} package: pip install {module} "
                f"(wandb without network: WANDB_MODE=offline)."
            )
    return wanted or ["none"]


def resume_point(spec: RunSpec, local_dir: str, remote_uri: str | None) -> str | None:
    """The checkpoint to resume from: newest complete one (resume=auto), none (never), or a path."""
    from ftctl.trainer.sync_callback import named_checkpoint, resume_checkpoint

    if spec.resume == "never" and int(os.environ.get(ATTEMPT_ENV) or 0) > 0:
        # a requeued Slurm job: its first attempt refused any earlier run's checkpoints; these are the job's own
        return resume_checkpoint(local_dir, remote_uri, spec.s3_endpoint_url)
    if spec.resume == "never":
        refuse_earlier_checkpoints(spec, local_dir, remote_uri)
        return None
    if spec.resume == "auto":
        return resume_checkpoint(local_dir, remote_uri, spec.s3_endpoint_url)  # says which, and from where
    from ftctl.spec import resume_problem

    if said := resume_problem(spec.resume, here=True, output=spec.output):
        raise FtctlError(said)
    # a requeued or recovered attempt goes on from the job's own checkpoints past the one named, not back to it
    # (launch refuses an output holding later ones before the first: preflight.check_resume_path). The output's
    # only: a node's cache of an object-store output may hold an older run's
    named = checkpoints.checkpoint_step(spec.resume) or 0
    with storage.storage_errors(remote_uri or local_dir, spec.s3_endpoint_url):  # one line naming what to set
        listed = checkpoints.list_checkpoints(remote_uri or local_dir, endpoint_url=spec.s3_endpoint_url)
    past = [c.step for c in listed if c.complete and c.step > named]
    if past and (own := resume_checkpoint(local_dir, remote_uri, spec.s3_endpoint_url)):
        if checkpoints.checkpoint_step(own) == max(past):
            log.info("resume=%s: this run went on past it, to %s: resuming there", spec.resume, os.path.basename(own))
            return own
    if storage.is_remote(spec.resume):  # one of the output's own in the store (resume_problem): downloaded here
        return named_checkpoint(local_dir, spec.resume, listed, spec.s3_endpoint_url)
    return spec.resume


def recovered(checkpoint: str) -> bool:
    """Whether an earlier attempt of this SkyPilot job trained ``checkpoint``: a managed job's recovery keeps its task
    id (a kill after the final model was saved and before the job ended made a recovery fail as 'already trained')."""
    from ftctl.trainer.tracking import recorded_starts

    task = os.environ.get(SKY_TASK_ENV)
    return bool(task) and task in recorded_starts(checkpoint, START_SKY_TASK)


def already_trained(spec: RunSpec, checkpoint: str, changed, local_dir: str, remote_uri: str | None) -> str | None:
    """checkpoints.settings.finished of the local checkpoint the run would resume, where its final model is saved."""
    from ftctl.checkpoints.settings import TRAINER_STATE, final_saved, finished

    if not final_saved(remote_uri or local_dir, spec.s3_endpoint_url):  # where the run's output is: its store
        return None  # stopped before its final model was written (or uploaded): it resumes and writes it
    try:
        return finished(Path(checkpoint, TRAINER_STATE).read_text(), spec, changed)
    except OSError:
        return None


def past_end(spec: RunSpec, checkpoint: str) -> str | None:
    """checkpoints.settings.past_end of the run's own local checkpoint it would resume."""
    from ftctl.checkpoints.settings import TRAINER_STATE
    from ftctl.checkpoints.settings import past_end as said

    try:
        state = Path(checkpoint, TRAINER_STATE).read_text()
    except OSError:
        state = ""
    return said(state, spec, os.path.join(spec.output, os.path.basename(os.path.normpath(checkpoint))))


def holds_checkpoint(spec: RunSpec) -> bool:
    """Whether the run's local directory holds a complete checkpoint, which a relaunch resumes (the trainer
    saves there first, and downloads the one it resumes there)."""
    try:
        return any(info.complete for info in checkpoints.list_checkpoints(output_dirs(spec)[0]))
    except OSError:
        return False


def refuse_earlier_checkpoints(spec: RunSpec, local_dir: str, remote_uri: str | None) -> None:
    """resume=never where output_dir holds an earlier run's checkpoints (checkpoints.settings.written_over)."""
    from ftctl.checkpoints.resume import set_aside
    from ftctl.checkpoints.settings import written_over
    from ftctl.trainer.sync_callback import resume_lock

    where = remote_uri or local_dir  # an object-store output's checkpoints are the store's
    with storage.storage_errors(where, spec.s3_endpoint_url):  # an unreachable store: one line naming what to set
        found = [info.name for info in checkpoints.list_checkpoints(where, endpoint_url=spec.s3_endpoint_url)]
    if said := written_over(spec.output, found):
        raise FtctlError(said)
    if remote_uri and int(os.environ.get("LOCAL_RANK", "0")) == 0:
        # this node's copies of checkpoints the store no longer holds (its output deleted): set aside once a node
        with resume_lock(local_dir):
            cached = [c.uri for c in checkpoints.list_checkpoints(local_dir)]
            set_aside(cached, f"not in {remote_uri}, and resume=never", local_dir)


# ------------------------------------------------------------------------------------------ fit
def fit(run: Run) -> None:
    # Everything built so far (imported modules, the model's Python objects: ~1M) lives for the whole
    # run: frozen out of the collector, a full collection no longer walks them mid-step. (It did not
    # remove the one slow step of the 1B rows on an H200: that one has another cause, bench/NOTES.md v3.)
    gc.collect()
    gc.freeze()
    try:
        with room_to_save(run.plan, run.local_dir, run.remote_uri, final=False, clear=lambda: half_checkpoint(run)):
            run.trainer.train(resume_from_checkpoint=run.resume_from)
    except BaseException:
        tracking.finish_wandb(failed=True)
        raise
    finally:
        gc.unfreeze()  # a process that trains again (the demo, tests) can collect this run's cycles
    tracking.finish_wandb(preempted=stopped_early(run))


# how long a rank that removed the checkpoint its write could not finish watches for the other ranks' last writes
HALF_CHECKPOINT_SETTLE_S = 2.0


def half_checkpoint(run: Run) -> tuple[str, int] | None:
    """Remove the checkpoint a save that found the disk full left half-written: what it was and its bytes, for the
    line; None where there is none (checkpoints.discard_uncommitted: a committed one is kept). The process whose own
    write the disk refused removes it, whichever rank it is: every rank writes its rng_state_<R>.pth, under DeepSpeed
    its optimizer shard too, and where only rank 1's was refused (local rank 0 done with its own, waiting for the
    others until torchrun stopped it), the half checkpoint stayed, set aside in .ftctl-quarantine for good. The other
    ranks write on into it until they wait at the save's end (DeepSpeed's rank 0 made its directories again and wrote
    its recovery script and `latest` there), which this process's exit ends: what they add meanwhile is removed too."""
    path = os.path.join(run.local_dir, f"{checkpoints.CHECKPOINT_PREFIX}{run.trainer.state.global_step}")
    removed = checkpoints.discard_uncommitted(path)
    deadline = time.monotonic() + HALF_CHECKPOINT_SETTLE_S
    while removed and run.procs.world_size > 1 and time.monotonic() < deadline:
        time.sleep(0.2)
        if again := checkpoints.discard_uncommitted(path):
            removed = (removed[0], removed[1] + again[1])
    return removed


def over_context(spec) -> str | None:
    """A warning where model_max_length is over the model's context (its config's max_position_embeddings, stretched
    by a RoPE scaling it sets: plan.scaled_context, as the plan's note reads it): rows are truncated to
    model_max_length, so longer ones train at positions the model never saw."""
    from ftctl.trainer.model import text_config

    config = text_config(spec.model_name_or_path, spec.model_revision)
    context = scaled_context(config.to_dict(), config.model_type or "") if config is not None else 0
    if not context or spec.model_max_length <= context:
        return None
    scaled = " x its RoPE scaling's factor" if context != config.max_position_embeddings else ""
    return (
        f"model_max_length {spec.model_max_length} is over the model's context of {context} tokens "
        f"(max_position_embeddings{scaled}): rows longer than {context} train at positions it never saw; "
        f"-o model_max_length={context} unless you are extending its context"
    )


def stopped_early(run: Run) -> bool:
    state = run.trainer.state
    return run.preemption.preempted and state.global_step < state.max_steps


def held_out_stop(run: Run) -> str | None:
    """Why a run with early_stopping_patience ended before its last step, or None."""
    state = run.trainer.state
    if not run.spec.early_stopping_patience or state.global_step >= state.max_steps or state.best_metric is None:
        return None
    # transformers keeps pointing at the last checkpoint that was lowest where a lower loss came between checkpoints
    held = (
        state.best_model_checkpoint and Path(state.best_model_checkpoint).name == f"checkpoint-{state.best_global_step}"
    )
    kept = f"; {Path(state.best_model_checkpoint).name} holds it" if held else "; no checkpoint holds it"
    return (
        f"stopped at step {state.global_step} of {state.max_steps}: {run.spec.early_stopping_patience} evaluations in "
        f"a row found no held-out loss below {state.best_metric:.4f} (step {state.best_global_step}){kept}"
    )


# ------------------------------------------------------------------------------------------ the best checkpoint
def load_best(run: Run, echo=print) -> None:
    """load_best_model_at_end: the weights of the checkpoint with the lowest held-out loss into the model that save()
    writes (here, then to the store), on every process: downloaded from the store where this node lacks it (a resume
    on a fresh node), loaded as transformers loads the best model (PEFT's adapter, the model's state dict, DeepSpeed's
    checkpoint). Said in the run's end line, in metrics.jsonl (a "final" record) and in the model card. Where no
    checkpoint holds it (none here nor in the store) the final model is the last step's, said as a warning."""
    state = run.trainer.state
    best, last = getattr(state, "best_global_step", None), state.global_step
    if not best or state.best_metric is None:
        if run.procs.is_main:
            log.warning("load_best_model_at_end: no held-out loss was measured: the final model is step %d's", last)
        return
    name = f"{checkpoints.CHECKPOINT_PREFIX}{best}"
    path = best_checkpoint_here(run, name) if best != last else None
    if best != last and (unloadable := not_loadable(run, path, best)):
        if run.procs.is_main:
            log.warning(
                "load_best_model_at_end: step %d's weights, the lowest held-out loss (%.4f), %s; the final model is "
                "step %d's",
                best,
                state.best_metric,
                unloadable,
                last,
            )
        return
    if path is not None:
        state.best_model_checkpoint = path
        if run.plan.strategy == "fsdp":  # accelerate's load_fsdp_model (a resume's load) sets each rank's shards
            distributed.reshard(run.trainer.model)
        run.trainer._load_best_model()  # transformers' own (load_best_model_at_end=True calls it after train)
        distributed.barrier()
    held = {"weights_step": best, "weights_eval_loss": state.best_metric, "checkpoint": name}  # no eval_loss: no eval
    run.trainer.final_weights = {**held, "last_step": last}
    if not run.procs.is_main:
        return
    evals = [h["eval_loss"] for h in state.log_history if "eval_loss" in h and h.get("step") == last]
    if best == last:
        line = (
            f"the final model holds step {best}'s weights, the last step's, whose held-out loss {state.best_metric:.4f} "
            "is the lowest"
        )
    else:
        last_loss = f", step {last}'s {evals[-1]:.4f}" if evals else ""
        line = (
            f"the final model holds step {best}'s weights (loaded from {name}): the lowest held-out loss, "
            f"{state.best_metric:.4f}{last_loss} (load_best_model_at_end)"
        )
    record = {"step": last, "event": "final", "time": round(time.time(), 3), **held}
    try:
        with open(os.path.join(run.local_dir, METRICS_FILE), "a") as f:
            f.write(json.dumps(record) + "\n")
    except OSError as e:  # a full disk: the line below still says it (and the save next says what is wrong)
        log.warning("cannot record the final model's step in %s: %s", METRICS_FILE, e.strerror or e)
    echo(line)


def not_loadable(run: Run, path: str | None, step: int) -> str | None:
    """Why the best checkpoint (``path``, None where no copy was found) cannot be loaded into this run, or None."""
    if path is None:
        name = f"{checkpoints.CHECKPOINT_PREFIX}{step}"
        if run.remote_uri:
            return f"are in no checkpoint: neither {run.local_dir} nor {run.remote_uri} holds a complete {name}"
        return f"are in no checkpoint: {run.local_dir} holds no complete {name}"
    wrote = reshard.saved_world_size(path)
    if run.plan.strategy in DEEPSPEED_STRATEGIES and wrote and wrote != run.procs.world_size:
        return (
            f"are in {path}, whose DeepSpeed shards {wrote} processes wrote and {run.procs.world_size} cannot load "
            f"(it was trained before a resume on another number of processes): {os.path.basename(path)} holds them"
        )
    return None


def best_checkpoint_here(run: Run, name: str) -> str | None:
    """The local path of the run's checkpoint ``name`` on every process: this output's complete copy, else the run's
    store's downloaded (one process a directory, sync_callback.one_per_directory) where this node lacks it; None on
    every process where neither holds it complete."""
    from ftctl.trainer.sync_callback import one_per_directory

    path = os.path.join(run.local_dir, name)
    if _everywhere(os.path.isdir(path) and not checkpoints.verify(path, deep=False)):  # written or fetched here
        return path
    listed = []
    if run.remote_uri:
        with storage.storage_errors(run.remote_uri, run.spec.s3_endpoint_url):
            listed = checkpoints.list_checkpoints(run.remote_uri, endpoint_url=run.spec.s3_endpoint_url)
    found = next((c for c in listed if c.name == name and c.complete), None)
    if found is None:
        return None

    def fetch(_chosen=None) -> str:
        if os.path.isdir(path) and not checkpoints.verify(path, deep=False):  # another process of this node's
            return path
        if problems := checkpoints.download_checkpoint(found.uri, run.local_dir, found.manifest, endpoint):
            raise FtctlError(
                f"load_best_model_at_end: {found.uri} did not download whole ({'; '.join(problems)}): the final model "
                f"was not saved; the same launch again loads it (the run's training is done)."
            )
        log.info("%s downloaded from %s (verified) to load its weights", path, found.uri)
        return path

    endpoint = run.spec.s3_endpoint_url
    return one_per_directory(run.local_dir, fetch, fetch)


def _everywhere(flag: bool) -> bool:
    """Whether ``flag`` holds on every process of the run (a collective: call it from all of them)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    flags = [None] * dist.get_world_size()
    dist.all_gather_object(flags, bool(flag))
    return all(flags)


# ------------------------------------------------------------------------------------------ save
def warn_stale_merge(run: Run) -> None:
    """`ftctl merge RUN` of the adapter before it trained on left RUN/merged (here, or in the run's store), which
    chat and eval would take for what it learned."""
    where = storage.join(run.remote_uri or run.local_dir, MERGED_DIR)
    try:
        there = storage.exists(storage.join(where, MERGE_RECORD), run.spec.s3_endpoint_url)
    except (OSError, FtctlError):  # the store's own errors: the final model's upload next says what is wrong
        return
    if there:
        log.warning(
            "%s holds a merge of this run's adapter as it was before it trained on: remove it (`%s`), then "
            "`ftctl merge %s` again",
            where,
            storage.delete_command(where, run.spec.s3_endpoint_url),
            shlex.quote(run.remote_uri or run.local_dir),
        )


def save(run: Run) -> None:
    """The final model (fft/sft) or adapter (lora/qlora) with its tokenizer at the top of the output
    dir; all ranks take part (ZeRO-3 gathers the shards), rank 0 writes; each node's uploader sends it
    with the checkpoints' retries. Raises when it is not in the store within upload_wait_s.

    It is saved aside and moved up with its config last (publish_final): a run stopped while saving left a config
    beside half its weights, which said the run had finished."""
    staging = os.path.join(run.local_dir, FINAL_STAGING)
    if run.procs.is_main:
        shutil.rmtree(staging, ignore_errors=True)
    distributed.barrier()  # gone before any rank writes there (a DeepSpeed save writes every rank's shards)
    if run.spec.method not in ADAPTER_METHODS:  # trained without a KV cache (model.load_model): served with one
        run.trainer.accelerator.unwrap_model(run.trainer.model).config.use_cache = True
    from ftctl.trainer.sft_trainer import saving_final

    def clear() -> tuple[str, int] | None:  # what a save that found the disk full left half-written
        return checkpoints.discard_uncommitted(staging, "final model") if run.procs.is_main else None

    with room_to_save(run.plan, run.local_dir, run.remote_uri, final=True, clear=clear):
        with saving_final(run.trainer, saved_dtype(run)):
            run.trainer.save_model(staging)
        if run.procs.is_main:
            name_base(staging, base_name(run.spec), base_revision(run.spec))
            if run.spec.method in ADAPTER_METHODS:  # over a merged model: that merge's record, to tell a later one
                keep_base_merge(staging, run.spec.model_name_or_path)
            publish_final(staging, run.local_dir)
    if run.procs.is_main:
        shutil.rmtree(os.path.join(run.local_dir, DATA_CACHE), ignore_errors=True)  # for a resume: none is left
        warn_stale_merge(run)
        run.trainer.create_model_card()  # after PEFT's, which rewrote the card's metadata with its local base path
        if not run.sync.upload_final(run.local_dir):
            raise FtctlError(
                f"the final model was saved in {run.local_dir} but not uploaded to {run.remote_uri} within "
                f"upload_wait_s={run.spec.upload_wait_s} ({run.sync.why_unsent()}); once the store takes it, "
                f"`ftctl sync push {shlex.quote(run.local_dir)} {shlex.quote(run.remote_uri)}`."
            )
    distributed.barrier()
    if run.procs.local_rank == 0 and not run.procs.is_main:  # another node's own copy (data.build_dataset: one a node)
        shutil.rmtree(os.path.join(run.local_dir, DATA_CACHE), ignore_errors=True)
        run.sync.free_staging(run.local_dir)  # its staged share, where the store holds it (rank 0: upload_final)


def saved_dtype(run: Run):
    """The torch dtype the final model's weights are cast to (ftctl.plan.final_dtype says which); None for an adapter,
    saved as PEFT keeps it (fp32, which final_dtype says too)."""
    from ftctl.trainer.model import torch_dtype

    if run.spec.method in ADAPTER_METHODS:
        return None
    return torch_dtype(final_dtype(run.plan.method, run.plan.precision))


@contextmanager
def room_to_save(plan: Plan, local_dir: str, remote_uri: str | None, final: bool, clear=None):
    """A save that failed for want of disk space (torch.save says only "unexpected pos N vs M") as one line naming the
    directory, its free space, the size of one checkpoint (or the final model) and the fix (failures.disk_full);
    ``clear`` removes what the failed save wrote (its half-written checkpoint), said in the line with its room."""
    try:
        yield
    except FtctlError:  # said already (a download's own disk-full line among them)
        raise
    except Exception as exc:
        from ftctl.preflight import checkpoint_gb

        need = checkpoint_gb(plan)[1 if final else 0] * 1e9
        fix = (
            f"free some space there, or set {LOCAL_DIR_ENV} to a directory on a larger disk (the run is staged there "
            "before its upload)"
            if remote_uri
            else "free some space or choose --output on a larger disk (or an object store); the run resumes from its "
            "last complete checkpoint"
        )
        if line := failures.disk_full(exc, local_dir, need, fix + _cache_held(local_dir), clear):
            raise FtctlError(line) from exc
        raise


def _cache_held(local_dir: str) -> str:
    """What the run's tokenized rows (runpaths.DATA_CACHE, kept for a resume) take on the disk that has no room left,
    as the words room_to_save adds to its fix: space this run used and can give back, not what a save needs."""
    cache = Path(local_dir, DATA_CACHE)
    held = 0
    for top, _, files in os.walk(cache):
        for name in files:
            try:
                held += os.lstat(os.path.join(top, name)).st_size
            except OSError:
                pass
    if not held:
        return ""
    return (
        f"; the tokenized rows kept there for a resume take {storage.size_text(held)} ({cache}): removing them frees "
        "that, and a resume tokenizes the data again"
    )


def publish_final(staging: str, top: str) -> None:
    """Move the final model saved in ``staging`` to the top of the output, its config (the mark of a final model:
    checkpoints.settings.final_saved) last, after an earlier one's config is gone."""
    for_other_readers(staging)  # weights not 0600; tokenizer class and RoPE as transformers 4 reads them too
    for mark in FINAL_MARKS:
        Path(top, mark).unlink(missing_ok=True)
    for name in sorted(os.listdir(staging), key=lambda name: name in FINAL_MARKS):
        target = os.path.join(top, name)
        if os.path.isdir(target) and not os.path.islink(target):
            shutil.rmtree(target)
        os.replace(os.path.join(staging, name), target)
    os.rmdir(staging)


def base_name(spec: RunSpec) -> str:
    """The base model as the user named it (a SkyPilot node loads a shipped one from its inputs/ copy)."""
    return os.environ.get(BASE_MODEL_ENV) or spec.model_name_or_path


def base_revision(spec: RunSpec) -> str | None:
    """The commit of base_name the run trains from: the model_revision launch pinned, where the base is its model."""
    return spec.model_revision if base_name(spec) == spec.model_name_or_path else None


# ------------------------------------------------------------------------------------------ cleanup
def cleanup(run: Run, status: str) -> None:
    run.preemption.uninstall()
    tracking.restore_env(run.env_before)
    if status == "preempted" and run.procs.is_main:
        say_stop(run)  # before the uploader closes: it knows what the store committed
    if run.sync is not None:
        run.sync.close()
    write_status(status)


def say_stop(run: Run) -> None:
    """Rank 0 at a stop: where its checkpoint is, in the log and in metrics.jsonl (a "stop" record: its checkpoint,
    and for an object-store output whether the store committed it). The status word stays ``preempted`` either way
    and the job is requeued: on a disk the nodes share (a home) the requeued attempt resumes the kept copy and sends
    it; elsewhere it starts from the store's newest committed checkpoint, which it says (starts_again), and a job
    not requeued would have to start there too. A stop checkpoint the store did not commit is one error line."""
    step = run.trainer.state.global_step
    name = f"{checkpoints.CHECKPOINT_PREFIX}{step}"
    unsent = run.remote_uri is not None and name in run.sync.unsent()
    record = {"step": step, "event": "stop", "time": round(time.time(), 3), "signal": run.preemption.received}
    record |= {"checkpoint": name} | ({"in_store": not unsent} if run.remote_uri else {})
    try:
        with open(os.path.join(run.local_dir, METRICS_FILE), "a") as f:
            f.write(json.dumps(record) + "\n")
    except OSError as e:  # a full disk: the log below still says it
        log.warning("cannot record the stop in %s: %s", METRICS_FILE, e.strerror or e)
    if not unsent:
        log.warning(
            "stopped on %s after saving step %d; resume with the same output dir", run.preemption.received, step
        )
        return
    # an error line (failures.error_line): `ftctl status` of the job waiting for its requeued attempt shows it
    said = (
        f"stopped on {run.preemption.received} at step {step}, but its {name} did not reach {run.remote_uri} (not "
        f"committed within upload_wait_s={run.spec.upload_wait_s}: {run.sync.why_unsent()}); it is "
        f"kept in {os.path.join(run.local_dir, name)}: a requeue or the same `ftctl launch` resumes it where that "
        f"directory is seen (nodes sharing this disk) and sends it, elsewhere starts from the newest checkpoint "
        f"committed in {run.remote_uri} (step 0 if none) and trains those steps again"
    )
    print(f"{failures.ERROR_PREFIX}{said}", file=sys.stderr, flush=True)


def starts_again(resume_from: str | None, local_dir: str, remote_uri: str | None) -> str | None:
    """What a requeued or recovered attempt (ATTEMPT_ENV > 0) that finds no checkpoint to resume says: an earlier
    attempt trained, and its steps are trained again (its stop checkpoint may be on another node's disk, its upload
    cut short: say_stop said so in its log)."""
    attempt = int(os.environ.get(ATTEMPT_ENV) or 0)
    if resume_from is not None or attempt == 0:
        return None
    none = (
        f"neither {remote_uri} nor {local_dir} holds a complete checkpoint"
        if remote_uri
        else f"{local_dir} holds no complete checkpoint"
    )
    return (
        f"attempt {attempt} of this job starts from step 0: {none}, so what the earlier attempt trained is trained "
        "again (where its stop checkpoint's upload did not finish, its log says so)"
    )


def write_status(status: str) -> None:
    """One word in ``$FTCTL_STATUS_FILE`` (rank 0): the Slurm script requeues on ``preempted``."""
    path = os.environ.get(STATUS_ENV)
    if not path or int(os.environ.get("RANK", "0")) != 0:
        return
    try:  # whole or not at all: an empty status file read as no word (and its OSError hid the run's own error)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        storage.write_whole(path, status + "\n")
    except OSError as e:  # a full disk: the run's error is said by its caller, the status is not needed for that
        if (status, path) not in _UNWRITTEN:  # the failed run's cleanup and its report both write "failed"
            _UNWRITTEN.add((status, path))
            log.warning("cannot write the run's status %r to %s: %s", status, path, e.strerror or e)


_UNWRITTEN: set[tuple[str, str]] = set()
