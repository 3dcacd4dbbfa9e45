"""Trainer callbacks: metrics JSONL, progress lines with tokens/s and ETA, preemption.

- :class:`MetricsCallback` (rank 0) appends one JSON object per logging step to
  ``<output>/metrics.jsonl`` (step, loss, lr, grad_norm, tokens_per_s, tokens, epoch, time, and max_steps: the
  step the run ends at, as the Trainer counts it from max_steps or from epochs of the data: `ftctl status`
  shows step/total and the time left from it; tokens: the tokens trained so far without their padding, the
  log's num_input_tokens_seen, and tokens_per_s its rate; TRL's num_tokens in the same log counts a packed
  row's padding too) and
  prints a progress line: ``step 12/30  loss 1.234  lr 2.9e-04  grad 0.87  1,234 tok/s  ETA 0:00:36  14:02:05 UTC``
  (the time it was logged, UTC: `ftctl status` dates the step line of a log it reads by it);
  an evaluation is an ``"event": "eval"`` record (eval_loss, eval_mean_token_accuracy, ...) and a line
  ``eval at step 12  loss 1.301  token accuracy 0.612  0.8 s`` (several held-out datasets: ``loss 1.301 (chat
  1.254, code 1.402)``, all of them and each one).
  The file holds one row per step: a run that resumes from the checkpoint of step N first takes the rows up to N
  from it where this node's file lacks some (restore_metrics), and drops the rows after N (the steps it will replay);
  a run that starts over keeps only its own start record.
- :class:`ProgressBar` (the demo): ``[####----] step 12/30  loss 1.234  ETA 0:41`` redrawn in place.
- :class:`PreemptionCallback`: SIGUSR2 (what Slurm's ``--signal=B:USR2@lead`` sends), SIGTERM
  (spot reclaim, torchrun forwarding) or SIGHUP (a closed terminal) asks for a checkpoint at a step boundary; every rank agrees on
  it (one all-reduce per optimizer step, read a step later: distributed.StopVote, so with several
  processes the checkpoint is the step after the request's), the Trainer saves and stops. The trainer
  then waits for the checkpoint's upload and reports ``preempted``.
"""

from __future__ import annotations

import contextlib
import datetime
import gzip
import json
import logging
import math
import os
import re
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from transformers import TrainerCallback

from ftctl import storage, terminal
from ftctl.checkpoints import CHECKPOINT_PREFIX
from ftctl.checkpoints.manifest import METRICS_COPY_ERRORS, metrics_copy, open_metrics_copy
from ftctl.envvars import SKY_TASK_ENV, STOP_ENV, STOP_POLL_ENV
from ftctl.runpaths import CHECKPOINT_METRICS_GZ, PROGRESS_LINE, ROW_START, STOP_REQUEST, STOP_REQUEST_UNTIL
from ftctl.trainer import distributed

log = logging.getLogger(__name__)

PREEMPT_SIGNALS = (signal.SIGUSR2, signal.SIGTERM, signal.SIGHUP)
STOP_REQUEST_POLL_S = 10.0  # how often rank 0 asks the store for `ftctl cancel`'s stop request (one small GET),
# unless $FTCTL_STOP_REQUEST_POLL_S says otherwise (stop_request_poll_s)
# a stop request there as the trainer starts is heeded until this long past its STOP_REQUEST_UNTIL: that time is the
# clock of the machine that ran `ftctl cancel`, the node reads its own (NTP keeps two within a second; a laptop's or a
# fresh VM's not yet synced can be off by tens of seconds). A relaunch sooner than this after a cancel killed mid-wait
# still stops at its first step (with a checkpoint: the same launch resumes it)
STOP_REQUEST_SKEW_S = 60.0
STOP_REQUEST_SIGNAL = "ftctl cancel's stop request"  # the stop's name in the log and in metrics.jsonl's stop record
STAMP = "%H:%M:%S UTC"  # a progress line's last part: when it was logged (ftctl.progress.ETA reads it)
# one held-out dataset's of several (sft_trainer.evaluate); not TRL's eval_aux_loss (a mixture of experts' router)
DATASET_LOSS = re.compile(r"eval_(?!aux_loss$)(.+)_loss")


class MetricsCallback(TrainerCallback):
    """Metrics JSONL in the output dir and one progress line per logging step (main process only)."""

    def __init__(self, path: str, echo=print, resumed_from: str | None = None):
        self.path = path
        self.echo = echo
        self.resumed_from = resumed_from  # the checkpoint the run resumes: its rows, where this node's file lacks some
        self._t0 = None
        self._step0 = 0
        self._tokens_last = 0
        # tokens/s is timed by the steps' ends, not by when their logs are written: on a GPU a step's log is
        # written a step late, but a step that saves, evaluates or ends logs at once, right after the late one
        self._marks: _Marks | None = None  # at the start of training, when the model is on its device
        self._ends: dict[int, object] = {}  # step -> its end, a _Marks point
        self._start = None  # where the time of the next logged step starts
        self._paused = 0.0  # step time since the last log that came before an evaluation or a save
        self._eta_from = None  # (end, step) of the first logged step: the ETA is timed from there (eta_seconds)

    def on_train_begin(self, args, state, control, **kwargs):
        self._t0 = time.time()
        self._eta_from = None
        self._marks = _Marks()
        self._start = self._marks.now()
        self._step0 = state.global_step  # > 0 when resumed
        self._tokens_last = state.num_input_tokens_seen
        if state.is_world_process_zero:
            if self.resumed_from and state.global_step > 0 and (saved := metrics_copy(self.resumed_from)):
                restore_metrics(self.path, saved)
            truncate_metrics(self.path, state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self._ends[state.global_step] = self._marks.now()

    def on_evaluate(self, args, state, control, **kwargs):
        self._pause(state)

    def on_save(self, args, state, control, **kwargs):
        self._pause(state)

    def _pause(self, state) -> None:
        """An evaluation or a save is not training time: the next rate starts after it."""
        if state.is_world_process_zero and self._start is not None:
            end = self._ends.pop(state.global_step, None)  # not logged yet (logging_steps > 1)
            self._paused += self._marks.seconds(self._start, end) if end is not None else 0.0
            self._start = self._marks.now()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or self._marks is None:
            return
        now = time.time()
        if "loss" not in logs:  # an evaluation, or the end-of-training summary
            event = "eval" if "eval_loss" in logs else "end"
            numbers = {k: v for k, v in logs.items() if isinstance(v, (int, float))}
            self._write({"step": state.global_step, "event": event, "time": round(now, 3), **numbers})
            if event == "eval":
                self.echo(self._eval_line(logs, state))
            return
        tokens = state.num_input_tokens_seen
        end = self._ends.pop(state.global_step, None)
        end = self._marks.now() if end is None else end
        dt = max(self._paused + (self._marks.seconds(self._start, end) if self._start is not None else 0.0), 1e-9)
        self._ends = {step: t for step, t in self._ends.items() if step > state.global_step}
        record = {
            "step": state.global_step,
            "loss": logs.get("loss"),
            "lr": logs.get("learning_rate"),
            "grad_norm": logs.get("grad_norm"),
            "tokens": tokens,
            "tokens_per_s": round((tokens - self._tokens_last) / dt, 1) if tokens else None,
            "epoch": logs.get("epoch"),
            "time": round(now, 3),
            "max_steps": state.max_steps,  # the run's last step (of max_steps, or of its epochs): `ftctl status`
        }
        peak = peak_gpu_memory_gib()
        if peak is not None:
            record["peak_mem_gib"] = peak
        self._start, self._tokens_last, self._paused = end, tokens, 0.0
        self._write(record)
        if self._eta_from is None or state.global_step <= self._eta_from[1]:
            self._eta_from = (end, state.global_step)
            eta = eta_seconds(now - self._t0, state.global_step - self._step0, state.max_steps - state.global_step)
        else:
            since, step = self._eta_from
            eta = eta_seconds(
                self._marks.seconds(since, end), state.global_step - step, state.max_steps - state.global_step
            )
        self.echo(self._progress(record, state, eta))

    def _write(self, record: dict) -> None:
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        append_line(self.path, json.dumps(record))

    @staticmethod
    def _eval_line(logs: dict, state) -> str:
        parts = [f"eval at step {state.global_step}", f"loss {logs['eval_loss']:.4f}"]
        if each := [f"{key[5:-5]} {value:.4f}" for key, value in logs.items() if DATASET_LOSS.fullmatch(key)]:
            parts[-1] += f" ({', '.join(each)})"  # several held-out datasets: each one's (sft_trainer.evaluate)
        if "eval_mean_token_accuracy" in logs:
            parts.append(f"token accuracy {logs['eval_mean_token_accuracy']:.3f}")
        if "eval_runtime" in logs:
            parts.append(f"{logs['eval_runtime']:.1f} s")
        # above an earlier evaluation's (a resumed run's too: the history comes back with its checkpoint): the run
        # may be overfitting, and that step's checkpoint (kept: run.evaluation_args) is what chat, eval and merge take
        this = (logs["eval_loss"], state.global_step)
        loss, step = min([this] + [(h["eval_loss"], h["step"]) for h in state.log_history if "eval_loss" in h])
        if loss < logs["eval_loss"]:
            parts.append(f"(lowest {loss:.4f} at step {step})")
        return "  ".join(parts)

    @staticmethod
    def _progress(r: dict, state, eta: int | None) -> str:
        parts = [f"{PROGRESS_LINE}{state.global_step}/{state.max_steps}", f"loss {r['loss']:.4f}"]
        if r["lr"] is not None:
            parts.append(f"lr {r['lr']:.2e}")
        if r["grad_norm"] is not None:
            parts.append(f"grad {r['grad_norm']:.3g}")
        if r["tokens_per_s"] is not None:
            parts.append(f"{r['tokens_per_s']:,.0f} tok/s")
        parts.append(f"ETA {datetime.timedelta(seconds=eta) if eta is not None else '?'}")
        if isinstance(r.get("time"), (int, float)):  # when it was logged: `ftctl status` dates a log's line by it
            parts.append(time.strftime(STAMP, time.gmtime(r["time"])))
        return "  ".join(parts)


class ProgressBar(TrainerCallback):
    """``[########------------] step 12/30  loss 1.234  ETA 0:41``: redrawn in place on a terminal;
    otherwise one line every ``every`` steps and at the last one (a log file stays short too)."""

    WIDTH = 20

    def __init__(self, echo=print, inplace: bool = False, every: int = 10):
        self.echo, self.inplace, self.every = echo, inplace, every
        self.loss = None
        self._t0 = self._step0 = None
        self._first = None  # (time, step) of the first logged step: the ETA is timed from there (eta_seconds)
        self._drawn = False

    def on_train_begin(self, args, state, control, **kwargs):
        self._t0, self._step0, self._first = time.time(), state.global_step, None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.loss = logs["loss"]
            if self._first is None:
                self._first = (time.time(), state.global_step)
            self._draw(state)  # on_log comes after on_step_end: the loss of the step just done

    def _draw(self, state) -> None:
        step, total = state.global_step, max(state.max_steps, 1)
        if not state.is_world_process_zero or not (self.inplace or step % self.every == 0 or step == total):
            return
        filled = round(self.WIDTH * step / total)
        since, first = self._first if self._first and step > self._first[1] else (self._t0, self._step0)
        eta = eta_seconds(time.time() - since, step - first, total - step)
        line = f"  [{'#' * filled}{'-' * (self.WIDTH - filled)}] step {step}/{total}"
        if self.loss is not None:
            line += f"  loss {self.loss:.3f}"
        line += f"  ETA {eta // 60}:{eta % 60:02d}" if eta is not None else ""
        if self.inplace:
            sys.stdout.write("\r" + line.ljust(60))
            sys.stdout.flush()
            self._drawn = True
        else:
            self.echo(line)

    def close(self) -> None:
        if self._drawn:
            sys.stdout.write("\n")
            sys.stdout.flush()
            self._drawn = False


def append_line(path: str, line: str) -> None:
    """``line`` and a newline at the end of ``path`` whole, or not at all: a write the disk refused partway is cut off
    again (the file as it was) before its error is raised. Appended as it came, a full disk left half a row, and the
    next attempt's start record went onto the end of it: one line that was neither, which a resume drops
    (truncate_metrics), and that attempt's record (its Slurm attempt, its W&B run) with it."""
    data = (line + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        size = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
            raise
    finally:
        os.close(fd)


def restore_metrics(path: str, saved: str) -> None:
    """The run's rows up to the checkpoint it resumes from are the ones that checkpoint saved (``saved``, its copy of
    metrics.jsonl): where ``path`` lacks one of them, they take the place of its rows, before the step-0 rows at its
    end that this run wrote before its first step (run.record_start). The run resumes on a node without its earlier
    rows (a recovered spot VM, a fresh cache), or on one that trained it before it went on elsewhere: its own rows
    stop where it left (or are of steps past its last checkpoint, trained again elsewhere), and the steps trained
    elsewhere were missing from `ftctl status`, the curves and the store's metrics.jsonl (`ftctl sync pull` of an
    earlier copy then refused it). A node that kept every saved row (a resume where the run was saved) is left as it
    is; a checkpoint of an ftctl that saved no rows changes nothing. Written whole (storage.write_whole)."""
    try:
        with open_metrics_copy(saved) as f:
            rows = [line.rstrip("\n") for line in f if math.isfinite(_step_of(line))]  # not a line cut short
    except METRICS_COPY_ERRORS:
        return
    lines = []
    if os.path.exists(path):
        with open(path) as f:
            lines = [line.rstrip("\n") for line in f]
    if set(rows) <= set(lines):
        return  # this node kept them
    first = len(lines)
    while first > 0 and _step_of(lines[first - 1]) == 0:
        first -= 1
    storage.write_whole(path, "".join(f"{line}\n" for line in [*rows, *lines[first:]]))
    log.debug("metrics: %d row(s) restored from %s", len(rows), saved)


def truncate_metrics(path: str, step: int) -> None:
    """Keep the rows of steps up to ``step``, the checkpoint a run resumes from: the steps after it are
    replayed and logged again. ``step`` 0 (starting over): only the step-0 rows at the end of the file
    stay, the ones this run wrote before its first step (run.record_start). Written whole (storage.write_whole)."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = f.readlines()
    if step > 0:
        kept = [line for line in lines if _step_of(line) <= step]
    else:
        first = len(lines)
        while first > 0 and _step_of(lines[first - 1]) == 0:
            first -= 1
        kept = lines[first:]
    if len(kept) == len(lines):
        return
    storage.write_whole(path, "".join(line if line.endswith("\n") else line + "\n" for line in kept))
    log.debug("metrics: dropped %d row(s) after step %d of %s", len(lines) - len(kept), step, path)


@dataclass(frozen=True)
class _Copied:
    """What MetricsCopy saved last: metrics.jsonl's file (st_dev, st_ino), the bytes of it that copy holds and the
    last of them, the copy's path and size."""

    file: tuple[int, int]
    offset: int
    tail: bytes
    copy: str
    size: int

    def goes_on(self, src, stat: os.stat_result) -> bool:
        """Whether ``src`` (open, its ``stat``) is the file this copy was made of, grown since."""
        if self.file != (stat.st_dev, stat.st_ino) or stat.st_size < self.offset:
            return False
        src.seek(self.offset - len(self.tail))
        return src.read(len(self.tail)) == self.tail


class MetricsCopy:
    """Rank 0's copy of metrics.jsonl in each checkpoint it saves (runpaths.CHECKPOINT_METRICS_GZ), gzip-compressed and
    written whole (a temp file renamed into place). A plain copy of the whole file was ~215 MB a checkpoint at a
    million rows (logging_steps=1), written, hashed and uploaded at every save; compressed ~4x. metrics.jsonl only
    grows between two saves of one trainer (rows appended; restore_metrics and truncate_metrics rewrite it, a new file,
    before the first step), so a save copies the previous checkpoint's gzip and appends a gzip member of the rows
    since (a file of several members is one gzip to every reader: zcat, Python's gzip): each row is compressed once,
    not at every save. The first save of a trainer, or one whose file or previous copy is not as it was left,
    compresses the whole file."""

    LEVEL = 6  # the rows since the previous save (few): gzip's default level
    WHOLE_LEVEL = 1  # the whole file: 1.2x larger than level 6, ~5x faster (a million rows: 1.3 s, not 6.6 s)

    def __init__(self):
        self._last: _Copied | None = None

    def save(self, metrics: str, checkpoint: str) -> None:
        """``metrics``' whole rows into ``checkpoint``'s copy."""
        target = os.path.join(checkpoint, CHECKPOINT_METRICS_GZ)
        tmp = storage.temp_beside(Path(target))
        with open(metrics, "rb") as src:
            stat, start = os.fstat(src.fileno()), 0
            try:
                last = self._last
                if last is not None and last.goes_on(src, stat) and os.path.getsize(last.copy) == last.size:
                    shutil.copyfile(last.copy, tmp)  # the kernel's copy (sendfile): 57 MB at a million rows
                    start = last.offset
            except OSError:  # rotated away, say: the whole file
                start = 0
            try:
                with open(tmp, "ab" if start else "wb") as out:
                    level = self.LEVEL if start else self.WHOLE_LEVEL
                    end = start + _whole_rows(src, start, stat.st_size - start, out, level)
                src.seek(max(0, end - 256))
                tail = src.read(end - max(0, end - 256))
            except OSError:
                tmp.unlink(missing_ok=True)
                raise
        os.replace(tmp, target)
        self._last = _Copied((stat.st_dev, stat.st_ino), end, tail, target, os.path.getsize(target))


def _whole_rows(src, start: int, size: int, out, level: int) -> int:
    """The whole lines of ``src``'s ``size`` bytes from ``start`` as one gzip member onto ``out`` (none where there are
    none), read a piece at a time; the bytes they take. A row cut short at the end (a kill mid-write) is left out."""
    end, window = start + size, 1 << 16
    while end > start:  # after the last newline
        at = max(start, end - window)
        src.seek(at)
        piece = src.read(end - at)
        if (newline := piece.rfind(b"\n")) >= 0:
            end = at + newline + 1
            break
        end = at
    if end == start:
        return 0
    src.seek(start)
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=level, mtime=0) as member:
        left = end - start
        while left and (piece := src.read(min(left, 8 << 20))):
            member.write(piece)
            left -= len(piece)
    return end - start


def _step_of(line: str) -> float:
    """A row's step; a line that is not a row (cut short by a kill) counts as after every step. A flat record whole
    (one "{", its end a "}": a line cut short ends elsewhere) is read without json, which took a resume 4-5 s a pass
    over a million rows (logging_steps=1 on a long run; a pass to restore, one to truncate)."""
    if line.startswith(ROW_START) and line.rstrip("\n").endswith("}") and line.count("{") == 1:
        with contextlib.suppress(ValueError):
            return int(line[len(ROW_START) : line.index(",")])
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return float("inf")


def eta_seconds(seconds: float, steps: int, left: int) -> int | None:
    """The time ``left`` steps take at the rate of ``steps`` that took ``seconds``. The progress lines time it from
    the first logged step's end, once there is a later one: the first step pays for what runs once (CUDA's start,
    Triton compiling and autotuning kernels: 3.5 minutes of a 12-step MoE LoRA on a fresh H200, v58), and timed
    from the start the ETA said 17 minutes after step 2 of 12, and the 10 steps left took 7 seconds."""
    return round(seconds / steps * max(left, 0)) if steps > 0 else None


class _Marks:
    """Points in this process's work. On a GPU they are CUDA events on its stream: when the GPU got there, not when
    the host queued the work (the host runs ahead of the GPU, and after an evaluation or a save, which drain it,
    by less: timed on the host, the step after one read 2.4x its rate on an H200). Reading one waits for nothing
    in the metrics' use: a step's log is written after its values came back, so after its end. Elsewhere: host time."""

    def __init__(self):
        import torch

        self.cuda = torch.cuda.is_available() and torch.cuda.is_initialized()

    def now(self):
        if not self.cuda:
            return time.time()
        import torch

        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    @staticmethod
    def seconds(a, b) -> float:
        if isinstance(a, float):
            return b - a
        b.synchronize()
        return a.elapsed_time(b) / 1000


def peak_gpu_memory_gib() -> float | None:
    """Peak memory allocated on this process's GPU so far (what the planner's estimate is held to)."""
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None


def stop_request_poll_s(environ=os.environ) -> float:
    """Seconds between asks for the stop request: envvars.STOP_POLL_ENV's where it is a number above 0 (a warning
    naming the variable where it is something else), else STOP_REQUEST_POLL_S."""
    given = environ.get(STOP_POLL_ENV, "").strip()
    if not given:
        return STOP_REQUEST_POLL_S
    try:
        seconds = float(given)
    except ValueError:
        seconds = math.nan
    if math.isfinite(seconds) and seconds > 0:
        return seconds
    log.warning("%s=%s is not a number of seconds above 0: asking for `ftctl cancel`'s stop request every %g s "
                "(set it to e.g. 2, or unset it)", STOP_POLL_ENV, given, STOP_REQUEST_POLL_S)  # fmt: skip
    return STOP_REQUEST_POLL_S


class StopRequest:
    """`ftctl cancel`'s request for a checkpoint and a stop, an object in the run's object-store output
    (runpaths.STOP_REQUEST): a SkyPilot job's nodes are out of ftctl's reach, the store is not. Rank 0 asks the
    store for it every ``poll_s`` (stop_request_poll_s: 10 s unless $FTCTL_STOP_REQUEST_POLL_S) in a thread of its
    own, with storage's "ask" limits (a silent store delays nothing but the stop), and ``seen`` is set once it is
    there. The request names the job it stops by how its SkyPilot task id ends (``task``: sky.backend.lease_holder;
    this job's is ``task`` here, $SKYPILOT_TASK_ID, kept by a managed job's recoveries). One already there as the
    trainer starts is a stop where it names this job, is not answered yet and its cancel still waits (written just
    before this trainer watched, or heard by an earlier attempt of the job): until its runpaths.STOP_REQUEST_UNTIL,
    STOP_REQUEST_SKEW_S on for the two machines' clocks. Past that it is stale (its cancel was killed before it could
    take it back, and a later job of the same task name, on a cluster launched again, would stop at its first step):
    said in the log, and the trainer trains on. A request without the field (an ftctl's from before 2026-12-06) is
    heeded as then, however old. Any other one there is an earlier job's (its cancel cut short, or its stop done) and
    only a text other than that one counts, so a relaunch trains on; a text that appears or changes while the trainer
    watches is a stop whatever it says. A stop is acknowledged at once (``seen_unix`` added: `ftctl cancel` then
    knows a trainer heard it); once the trainer stops for it, the thread writes the stop's checkpoint into it
    (:meth:`stopping_at`), which `ftctl cancel` waits to see committed before SkyPilot's cancel kills the job."""

    def __init__(
        self, output_uri: str, endpoint_url: str | None = None, poll_s: float | None = None, task: str | None = None
    ):
        self.uri = storage.join(output_uri, STOP_REQUEST)
        self.endpoint_url = endpoint_url
        self.poll_s = stop_request_poll_s() if poll_s is None else poll_s
        self.task = os.environ.get(SKY_TASK_ENV, "") if task is None else task
        self.seen = threading.Event()
        self._closed = threading.Event()
        self._checkpoint: str | None = None
        self._request: dict = {}
        self._warned = False
        self._thread = threading.Thread(target=self._watch, name="ftctl-stop-request", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._closed.set()

    def stopping_at(self, checkpoint: str) -> None:
        """The trainer stops for the request at ``checkpoint``: said in the request, by the thread."""
        self._checkpoint = checkpoint

    def _read(self) -> str | None:
        """The request's text, None where there is none; raises where the store does not answer."""
        fs, path = storage.filesystem(self.uri, self.endpoint_url, quick=True)
        try:
            return fs.cat_file(path).decode("utf-8", "replace")
        except FileNotFoundError:
            return None

    def _ask(self) -> tuple[bool, str | None]:
        """(whether the store answered, the request's text)."""
        try:
            return True, self._read()
        except Exception as exc:  # noqa: BLE001 - any store error: asked again at the next poll
            if not self._warned:
                self._warned = True
                log.warning("cannot read %s (asked again every %g s): %s", self.uri, self.poll_s,
                            storage.redact(str(exc)) or type(exc).__name__)  # fmt: skip
            return False, None

    def _watch(self) -> None:
        if not self._new_request():
            return
        self.seen.set()
        self._write({"seen_unix": round(time.time(), 3)})  # heard: `ftctl cancel` waits for the checkpoint
        while self._checkpoint is None and not self._closed.wait(0.2):  # the step boundary the trainer stops at
            pass
        if self._checkpoint is not None:
            self._write({"checkpoint": self._checkpoint})

    def _new_request(self) -> bool:
        """Ask every ``poll_s`` until a request for this job is there (True; kept in ``_request``), or the run ends
        (False): the one there as the watch began where it names this job unanswered (_for_this_job) and still asks
        (_stale_s), else one other than that."""
        answered, earlier = self._ask()
        while not answered and not self._closed.wait(self.poll_s):
            answered, earlier = self._ask()
        if earlier is not None:
            if not self._for_this_job(request := _request_of(earlier)):
                log.info("%s is there as this run starts (an earlier job's): not a stop", self.uri)
            elif (stale_s := _stale_s(request, time.time())) is not None:
                log.info("%s asked this job (%s) to stop only until %.0f s ago (its `ftctl cancel` ended without "
                         "taking it back): stale, ignored; training on", self.uri, request["task"], stale_s)  # fmt: skip
            else:
                log.info("%s asks this job (%s) to stop: written before this trainer watched for it", self.uri,
                         request["task"])  # fmt: skip
                self._request = request
                return True
        while not self._closed.wait(self.poll_s):
            _, text = self._ask()
            if text is not None and text != earlier:
                self._request = _request_of(text)  # not ftctl's JSON ({}): a stop all the same
                return True
        return False

    def _for_this_job(self, request: dict) -> bool:
        """Whether ``request`` (there as the watch began) stops this job: it names this job's SkyPilot task (its id
        ends with the request's ``task``, which starts with '_': "_sky-managed_3-0" is not job 13's) and no
        checkpoint answers it yet (an answered one's stop is done: a later attempt of the job trains on)."""
        task = request.get("task")
        return (
            bool(self.task)
            and isinstance(task, str)
            and task.startswith("_")
            and self.task.endswith(task)
            and "checkpoint" not in request
        )

    def _write(self, said: dict) -> None:
        """The request with ``said`` added (an acknowledgement, then the stop's checkpoint), over it in the store."""
        self._request = {**self._request, **said}
        try:
            fs, path = storage.filesystem(self.uri, self.endpoint_url, quick=True)
            fs.pipe_file(path, json.dumps(self._request).encode())
        except Exception as exc:  # noqa: BLE001 - ftctl cancel then waits for its time and cancels all the same
            log.warning("cannot answer %s: %s", self.uri, storage.redact(str(exc)) or type(exc).__name__)


def _stale_s(request: dict, now: float) -> float | None:
    """How many seconds ago ``request`` stopped asking (its STOP_REQUEST_UNTIL, the cancel's clock) where that is more
    than STOP_REQUEST_SKEW_S ago by ``now`` (this node's clock); None while it asks, or where it does not say until
    when (an older ftctl's request, or no number there)."""
    until = request.get(STOP_REQUEST_UNTIL)
    if isinstance(until, bool) or not isinstance(until, (int, float)):
        return None
    return now - until if now - until > STOP_REQUEST_SKEW_S else None


def _request_of(text: str) -> dict:
    """A stop request's JSON object; {} where it is not ftctl's JSON."""
    try:
        request = json.loads(text)
    except ValueError:
        return {}
    return request if isinstance(request, dict) else {}


STOP_FILE = "stop file"  # the stop's name for a stop file that says no reason (a Slurm job's trap, a `touch`)
STOP_REASON_CHARS = 200  # the most of a stop file's first line taken as its reason


def stop_reason(path: str) -> str:
    """Why the stop file ``path`` asks the run to stop, as its writer said it in its first line (the local launcher:
    "SIGTERM to ftctl launch", `ftctl cancel`: "ftctl cancel"), the stop's name in the log and in metrics.jsonl's
    stop record; STOP_FILE where it says none (empty: touched, or not written yet) or not in words."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read(STOP_REASON_CHARS).splitlines()
    except OSError:  # removed between the check and the read
        return STOP_FILE
    said = lines[0].strip() if lines else ""
    return said if said and said.isprintable() else STOP_FILE


class PreemptionCallback(TrainerCallback):
    """SIGUSR2 / SIGTERM / SIGHUP -> save a checkpoint at the next step boundary and stop cleanly; a second
    signal stops the run at once, through the handler that was there before (torch's and Slurm's convention).

    :meth:`install` the handlers before loading the model (a signal during loading counts too),
    :meth:`uninstall` at the end. ``preempted`` says whether the run stopped for a signal."""

    def __init__(self, signals=PREEMPT_SIGNALS, request: StopRequest | None = None):
        self.signals = signals
        self.request = request  # rank 0 of a run into an object store: `ftctl cancel`'s request there
        self.received: str | None = None
        self.preempted = False
        self._previous: dict = {}
        self._ttys: tuple[int, ...] = ()
        self._vote = distributed.StopVote()  # every rank stops at the same step (a step after the request)
        self._signalled = False  # a signal came (the stop file is not one): the next one stops the run at once

    def install(self) -> None:
        self._ttys = terminal.ttys()
        for sig in terminal.caught(self.signals):  # not a SIGHUP that nohup ignores
            self._previous[sig] = signal.signal(sig, self._handle)
        if self.request is not None:
            self.request.start()

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        if self.request is not None:
            self.request.close()

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGHUP:  # its terminal closed: the checkpoint must not fail on a log line
            terminal.hang_up(self._ttys)
        if self._signalled:  # a second signal (torchrun's shutdown, `kill` again): stop now, as before training
            previous = self._previous.get(signum)
            if callable(previous):  # the trainer's own: it records how the run ended, then exits
                previous(signum, frame)
            sys.exit(128 + signum)
        self._signalled = True
        if self.received is None:  # not after the stop file: the first signal still waits for that checkpoint
            self.received = signal.Signals(signum).name
            log.warning("%s received: saving a checkpoint at the next step, then stopping", self.received)

    def stop_requested(self) -> bool:
        """A signal to this process, or the stop file a batch script creates ($FTCTL_STOP_FILE):
        Slurm's --signal=B: reaches only the batch shell, which must not signal torchrun (it dies of
        USR2), so it touches the file instead."""
        stop_file = os.environ.get(STOP_ENV)
        if self.received is None and stop_file and os.path.exists(stop_file):
            self.received = stop_reason(stop_file)
            log.warning("%s exists: saving a checkpoint at the next step, then stopping", stop_file)
        if self.received is None and self.request is not None and self.request.seen.is_set():
            self.received = STOP_REQUEST_SIGNAL
            log.warning("%s is there: saving a checkpoint at the next step, then stopping", self.request.uri)
        return self.received is not None

    def on_step_end(self, args, state, control, **kwargs):
        if self._vote(self.stop_requested()):
            if not self.preempted:
                # the signal's name, not "preempted": a cancel (scancel, docker stop) sends the same SIGTERM
                why = self.received or "another rank was asked to stop"
                log.warning("stopping at step %d (%s): saving a checkpoint first", state.global_step, why)
                if self.request is not None and self.received == STOP_REQUEST_SIGNAL:
                    self.request.stopping_at(f"{CHECKPOINT_PREFIX}{state.global_step}")
            self.preempted = True
            control.should_save = True
            control.should_training_stop = True
            control.should_evaluate = False  # the checkpoint first: the notice is short, an evaluation may not be
        return control


class StepsAsGiven(TrainerCallback):
    """The run's own logging, evaluation and checkpoint intervals on a resume: transformers restores them from the
    checkpoint's trainer_state.json (its warning goes to its own logger), so a relaunch with -o save_steps=2 to
    checkpoint more often went on saving at the old interval. ``saves_per_epoch``/``evals_per_epoch`` (axolotl's):
    the intervals from the optimizer steps of an epoch, as the Trainer counts them (evaluations follow the
    checkpoints unless ``eval_steps`` is given). ``cost``: what saves_per_epoch's checkpoints cost for an epoch of so
    many steps ((what is wrong, the fix) or None: plan.checkpoint_cost's epoch_steps), warned once they are counted."""

    def __init__(
        self, saves_per_epoch: int | None = None, evals_per_epoch: int | None = None, eval_steps=None, cost=None
    ):
        self.saves, self.evals, self.eval_steps, self.cost = saves_per_epoch, evals_per_epoch, eval_steps, cost

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        state.compute_steps(args, state.max_steps)
        if not (self.saves or self.evals):
            return control
        try:
            batches = len(train_dataloader)
        except TypeError:  # no length: the Trainer's own count of an epoch
            batches = state.max_steps * args.gradient_accumulation_steps / max(1, state.num_train_epochs)
        per_epoch = max(1, math.ceil(batches / args.gradient_accumulation_steps))
        if self.saves:
            state.save_steps = max(1, per_epoch // self.saves)
        if self.evals:
            state.eval_steps = max(1, per_epoch // self.evals)
        elif not self.eval_steps:
            state.eval_steps = state.save_steps  # at each checkpoint, as without saves_per_epoch
        if self.saves and self.cost and state.is_world_process_zero and (said := self.cost(per_epoch)):
            log.warning("%s: %s", *said)
        if state.is_world_process_zero:
            log.info(
                "%d optimizer steps an epoch: %s",
                per_epoch,
                ", ".join(
                    [f"a checkpoint every {state.save_steps} steps"] * bool(self.saves)
                    + [f"held-out loss every {state.eval_steps} steps"] * bool(self.evals)
                ),
            )
        return control


class NewHeldOut(TrainerCallback):
    """A resumed run whose held-out loss is measured otherwise (checkpoints.settings.Changes.held_out: other rows,
    or the same scored otherwise) starts its lowest one afresh. The checkpoint's was measured on the other: the best
    checkpoint kept, the "lowest" the log shows and early stopping compared the losses of two measures. ``stopping``:
    the run's EarlyStoppingCallback, whose count of evaluations without a new lowest starts again too."""

    def __init__(self, changed: list[str], stopping=None):
        self.changed, self.stopping = changed, stopping

    def on_train_begin(self, args, state, control, **kwargs):
        if state.best_metric is not None and state.is_world_process_zero:
            log.warning(
                "the held-out loss is measured otherwise now (%s changed): the lowest before, %.4f (%s), is not "
                "compared with the new ones; the lowest starts afresh",
                ", ".join(self.changed),
                state.best_metric,
                os.path.basename(state.best_model_checkpoint or "")
                or f"step {getattr(state, 'best_global_step', '?')}",
            )
        state.best_metric = state.best_model_checkpoint = None
        if hasattr(state, "best_global_step"):
            state.best_global_step = None
        if self.stopping is not None:
            self.stopping.early_stopping_patience_counter = 0
        return control


class ApplySettings(TrainerCallback):
    """Puts a resumed run's new settings (checkpoints.settings: what changed since the checkpoint was saved) into
    the optimizer and learning-rate schedule the Trainer restored from the checkpoint (after building its own from
    the new settings, before on_train_begin): a new learning_rate scales the schedule's peak, a new weight_decay goes to the decay parameters' group (transformers' first),
    and the learning rate of the next step is the new schedule's at the checkpoint's step (restored, it is the
    saved schedule's: a relaunch for more steps would take the first of them at the old schedule's end)."""

    def __init__(self, applied: dict):
        self.applied = applied

    def on_train_begin(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
        groups = optimizer.param_groups
        if "learning_rate" in self.applied:
            old, new = self.applied["learning_rate"]
            for group in groups:
                if "initial_lr" in group:
                    group["initial_lr"] *= new / old
            lr_scheduler.base_lrs = [lr * new / old for lr in lr_scheduler.base_lrs]
        if "weight_decay" in self.applied:
            groups[0]["weight_decay"] = self.applied["weight_decay"][1]
        lambdas = getattr(lr_scheduler, "lr_lambdas", None)  # transformers' schedules are LambdaLR
        if lambdas is not None:
            now = [base * f(lr_scheduler.last_epoch) for base, f in zip(lr_scheduler.base_lrs, lambdas)]
            for group, lr in zip(groups, now):
                group["lr"] = lr
            lr_scheduler._last_lr = now
        return control


class FrozenInputsNoGradient(TrainerCallback):
    """sft on a model whose input embedding is frozen (its head untied: Llama-3-8B, Qwen2.5-7B, Mistral): the
    backward stops at the lowest trainable block. transformers' activation checkpointing set-up (as train() begins,
    before on_train_begin) makes the embedding's output require a gradient for every model fed input_ids, which
    reentrant checkpointing needs and the non-reentrant kind ftctl asks for does not; with it each frozen block below
    the trainable ones recomputed its forward and ran its backward for a gradient nothing reads. A tied head trains
    the embedding, so there the backward reaches it anyway and nothing changes."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not model.get_input_embeddings().weight.requires_grad:
            model.disable_input_require_grads()
        return control


class NothingToTrain(TrainerCallback):
    """Refuses, before its first step, a run that resumes another run's checkpoint (-o resume=PATH outside its
    output) at or past its own end: the checkpoint's step counts from that run's start, so max_steps=10 over
    checkpoint-24 (or one epoch of data that makes 24 steps) trained nothing, and the Trainer wrote the checkpoint's
    weights as this run's final model and said it complete. A run's own checkpoint of its last step is not refused:
    a run stopped before its final model resumes to write it."""

    def __init__(self, resume: str, max_steps: int, epochs: float):
        self.resume, self.max_steps, self.epochs = resume, max_steps, epochs

    def on_train_begin(self, args, state, control, **kwargs):
        from ftctl.errors import FtctlError

        step, end = state.global_step, state.max_steps
        if step < end:
            return control
        if self.max_steps > 0:
            ends, more = f"max_steps={self.max_steps}", self.max_steps
        else:  # the Trainer's count: num_train_epochs of this run's data
            ends, more = f"num_train_epochs={self.epochs:g} of this data, {end} steps", end
        raise FtctlError(
            f"resume={self.resume} goes on from step {step} of the run that saved it, and this run ends at step {end} "
            f"({ends}): nothing would be trained. Its steps count from that run's start: -o max_steps={step + more} "
            f"trains {more} more."
        )


class LeaseKept(TrainerCallback):
    """Rank 0 of a run into an object store stops at the first step boundary after its lease was lost
    (ftctl.lease.Holder.lost: another job took the output over while this trainer's renewals did not reach the store,
    or they have not reached it for so long that the lease goes stale): ftctl.lease.LeaseLost saying which, before this
    step's checkpoint (or, at the end, the final model) is saved into the output. Its ``status`` and ``exit_code`` are
    how the run ends: as a preemption where the store was not reached (requeued, recovered), a failure where another
    job holds the output. ``holder`` is the run's ftctl.lease.Holder."""

    def __init__(self, holder):
        self.holder = holder

    def _check(self) -> None:
        if (stop := self.holder.stopped()) is not None:
            raise stop

    def on_step_end(self, args, state, control, **kwargs):  # before the Trainer saves this step's checkpoint
        self._check()
        return control

    def on_train_end(self, args, state, control, **kwargs):  # before the final model is saved
        self._check()
        return control


class RunDirKept(TrainerCallback):
    """Rank 0 stops at the first step boundary after the run directory's lock (trainer.run.only_trainer's flock) is no
    longer the file it holds: the directory was deleted or replaced under this trainer, and another attempt may train
    there now, its lock a new file that this trainer's flock does not hold. SkyPilot's teardown of a lost node's Slurm
    cluster empties the cluster's home, which the node relaunched under the same name uses again, while the lost node's
    trainer ran on: it saved a checkpoint into the emptied directory and rotated away the one the new attempt had just
    chosen to resume, which then failed. Raised before this step's checkpoint is saved (or, at the end, the final
    model): nothing more is written there. ``lock``: the lock file's path, ``held``: the file open on it."""

    def __init__(self, run_dir: str, lock: Path, held):
        self.run_dir, self.lock = run_dir, lock
        st = os.fstat(held.fileno())
        self.held = (st.st_dev, st.st_ino)

    def _check(self, state) -> None:
        try:
            st = os.stat(self.lock)
            now = "another file" if (st.st_dev, st.st_ino) != self.held else None
        except FileNotFoundError:
            now = "gone"
        if now:
            from ftctl.envvars import FAILURE_DIR_ENV, STATUS_ENV
            from ftctl.errors import FtctlError

            for name in (STATUS_ENV, FAILURE_DIR_ENV):  # the run's status word and failure record: its directory's
                os.environ.pop(name, None)  # (a launcher that finds no status word takes the attempt as failed)
            raise FtctlError(
                f"{self.run_dir} was removed or replaced while this trainer ran (its lock {self.lock} is {now}): "
                f"another attempt may train there now, so this one stops at step {state.global_step} without "
                "writing anything more into it"
            )

    def on_step_end(self, args, state, control, **kwargs):  # before the Trainer saves this step's checkpoint
        self._check(state)
        return control

    def on_train_end(self, args, state, control, **kwargs):  # before the final model is saved
        self._check(state)
        return control
