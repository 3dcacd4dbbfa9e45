"""Trainer callbacks: metrics JSONL, progress lines with tokens/s and ETA, preemption.

- :class:`MetricsCallback` (rank 0) appends one JSON object per logging step to
  ``<output>/metrics.jsonl`` (step, loss, lr, grad_norm, tokens_per_s, tokens, epoch, time) and
  prints a progress line: ``step 12/30  loss 1.234  lr 2.9e-04  grad 0.87  1,234 tok/s  ETA 0:00:36``.
  A resumed run appends to the same file.
- :class:`PreemptionCallback`: SIGUSR2 (what Slurm's ``--signal=B:USR2@lead`` sends) or SIGTERM
  (spot reclaim, torchrun forwarding) asks for a checkpoint at the next step boundary; every rank
  agrees on it (one all-reduce per optimizer step), the Trainer saves and stops. The trainer
  then waits for the checkpoint's upload and reports ``preempted``.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import signal
import time

from transformers import TrainerCallback

from ftctl.envvars import STOP_ENV
from ftctl.trainer import distributed

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
PREEMPT_SIGNALS = (signal.SIGUSR2, signal.SIGTERM)


class MetricsCallback(TrainerCallback):
    """Metrics JSONL in the output dir and one progress line per logging step (main process only)."""

    def __init__(self, path: str, echo=print):
        self.path = path
        self.echo = echo
        self._t0 = self._t_last = None
        self._step0 = 0
        self._tokens_last = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self._t0 = self._t_last = time.time()
        self._step0 = state.global_step  # > 0 when resumed
        self._tokens_last = state.num_input_tokens_seen

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        now = time.time()
        if "loss" not in logs:  # the end-of-training summary
            record = {
                "step": state.global_step,
                "event": "end",
                "time": round(now, 3),
                **{k: v for k, v in logs.items() if isinstance(v, (int, float))},
            }
            self._write(record)
            return
        tokens = state.num_input_tokens_seen
        dt = max(now - (self._t_last or now), 1e-9)
        record = {
            "step": state.global_step,
            "loss": logs.get("loss"),
            "lr": logs.get("learning_rate"),
            "grad_norm": logs.get("grad_norm"),
            "tokens": tokens,
            "tokens_per_s": round((tokens - self._tokens_last) / dt, 1) if tokens else None,
            "epoch": logs.get("epoch"),
            "time": round(now, 3),
        }
        peak = peak_gpu_memory_gib()
        if peak is not None:
            record["peak_mem_gib"] = peak
        self._t_last, self._tokens_last = now, tokens
        self._write(record)
        self.echo(self._progress(record, state, now))

    def _write(self, record: dict) -> None:
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def _progress(self, r: dict, state, now: float) -> str:
        done = state.global_step - self._step0
        left = max(state.max_steps - state.global_step, 0)
        eta = datetime.timedelta(seconds=round((now - self._t0) / done * left)) if done > 0 else "?"
        parts = [f"step {state.global_step}/{state.max_steps}", f"loss {r['loss']:.4f}"]
        if r["lr"] is not None:
            parts.append(f"lr {r['lr']:.2e}")
        if r["grad_norm"] is not None:
            parts.append(f"grad {r['grad_norm']:.3g}")
        if r["tokens_per_s"] is not None:
            parts.append(f"{r['tokens_per_s']:,.0f} tok/s")
        parts.append(f"ETA {eta}")
        return "  ".join(parts)


def peak_gpu_memory_gib() -> float | None:
    """Peak memory allocated on this process's GPU so far (what the planner's estimate is held to)."""
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None


class PreemptionCallback(TrainerCallback):
    """SIGUSR2 / SIGTERM -> save a checkpoint at the next step boundary and stop cleanly.

    :meth:`install` the handlers before loading the model (a signal during loading counts too),
    :meth:`uninstall` at the end. ``preempted`` says whether the run stopped for a signal."""

    def __init__(self, signals=PREEMPT_SIGNALS):
        self.signals = signals
        self.received: str | None = None
        self.preempted = False
        self._previous: dict = {}

    def install(self) -> None:
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if self.received is None:
            self.received = signal.Signals(signum).name
            log.warning("%s received: saving a checkpoint at the next step, then stopping", self.received)

    def stop_requested(self) -> bool:
        """A signal to this process, or the stop file a batch script creates ($FTCTL_STOP_FILE):
        Slurm's --signal=B: reaches only the batch shell, which must not signal torchrun (it dies of
        USR2), so it touches the file instead."""
        stop_file = os.environ.get(STOP_ENV)
        if self.received is None and stop_file and os.path.exists(stop_file):
            self.received = "stop file"
            log.warning("%s exists: saving a checkpoint at the next step, then stopping", stop_file)
        return self.received is not None

    def on_step_end(self, args, state, control, **kwargs):
        if distributed.any_rank(self.stop_requested()):
            if not self.preempted:
                log.warning("preempted at step %d: saving a checkpoint and stopping", state.global_step)
            self.preempted = True
            control.should_save = True
            control.should_training_stop = True
        return control
