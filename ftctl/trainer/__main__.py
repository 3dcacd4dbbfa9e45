"""``python -m ftctl.trainer --spec spec.json``: what torchrun runs on every node of every backend.

One failure, one message: a rank that fails leaves a record in ``$FTCTL_FAILURE_DIR`` (ftctl.failures)
that the launcher reports once; without a failure directory (Slurm, docker, by hand) it prints one
``error: ...`` line itself. No traceback unless ``FTCTL_DEBUG=1``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time

from ftctl import failures, quiet, terminal
from ftctl.envvars import FAILURE_DIR_ENV, unknown_unsaid
from ftctl.errors import FtctlError

INTERRUPT_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def main(argv=None) -> int:
    quiet.install()  # before torch, transformers, bitsandbytes, DeepSpeed are imported
    parser = argparse.ArgumentParser(prog="python -m ftctl.trainer", description=__doc__)
    parser.add_argument("--spec", required=True, help="spec.json written by ftctl (the run and its plan)")
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    if rank == 0 and (said := unknown_unsaid(os.environ)):  # run by hand: no ftctl command said it (once a job)
        print(said, file=sys.stderr, flush=True)
    log_to_stderr(rank)
    failure = Failure(rank)
    failure.catch_signals()  # the trainer's PreemptionCallback takes SIGTERM and SIGHUP over while it trains
    plan = None
    try:
        from ftctl.trainer import distributed

        threads_line = distributed.cpu_threads()  # before torch is imported
        if threads_line and rank == 0:
            print(threads_line, flush=True)
        from ftctl.plan import load_run
        from ftctl.trainer.run import train

        spec, plan = load_run(args.spec)
        one_gpu_per_process(plan)
        result = train(spec, plan, echo=_say if rank == 0 else (lambda line: None))
        failure.ended = result.status  # a signal from here on (Ctrl-C as it exits) cuts nothing short
        distributed.shutdown()
    except FtctlError as e:
        return failure.report("config", str(e), e.exit_code, e)
    except Exception as e:
        from ftctl.trainer import gpu_memory

        if plan is not None and gpu_memory.is_out_of_memory(e):
            from ftctl.trainer.run import holds_checkpoint

            return failure.report("memory", gpu_memory.message(e, spec, plan, holds_checkpoint(spec)), 1, e)
        return failure.report("error", failures.exception_line(e), 1, e)
    if rank == 0:
        # "stopped", not the status word "preempted": a cancel sends the same signal as a preemption
        said = "stopped" if result.status == "preempted" else result.status
        _say(f"{said}: step {result.global_step}, {loss_said(result, spec)}, output {spec.output}")
        if result.status == "complete":
            _say(next_steps(spec))
    return 0


class ZonedFormatter(logging.Formatter):
    """logging's time with its zone's UTC offset: ``2026-12-05 14:02:03,123 +0530 [rank 0] ...``. The node's local
    time said alone could not be lined up with the progress line's ``14:02:05 UTC`` nor with a laptop's clock in
    another zone (progress._logged_at reads it back, and an older trainer's line without the offset as local time)."""

    def formatTime(self, record, datefmt=None):
        return f"{super().formatTime(record, datefmt)} {time.strftime('%z', self.converter(record.created))}"


def log_to_stderr(rank: int) -> None:
    """The trainer's log records, to stderr: rank 0's from INFO, the others' from WARNING (all with FTCTL_VERBOSE)."""
    handler = logging.StreamHandler()
    handler.setFormatter(ZonedFormatter(f"%(asctime)s [rank {rank}] %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO if rank == 0 or quiet.verbose() else logging.WARNING, handlers=[handler])


def _say(line: str) -> None:
    """A line to stdout in one write: under PYTHONUNBUFFERED print writes the text and its newline apart, and the
    launcher's relay of stderr (a log record) could land between them, on the same line. A closed terminal (EIO:
    torchrun's workers, in sessions of their own, get no SIGHUP to stop writing to it) does not end the run."""
    try:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except OSError:
        pass


def loss_said(result, spec) -> str:
    """The run's last logged loss; where no step logged one (fewer steps than logging_steps: a smoke run), the
    mean over the run that the trainer reports at its end (it said 'final loss none')."""
    last = "final" if result.status == "complete" else "last"
    if result.final_loss is not None:
        return f"{last} loss {result.final_loss:.4f}"
    mean = next((h["train_loss"] for h in reversed(result.log_history) if "train_loss" in h), None)
    unlogged = f"no step logged one at logging_steps={spec.logging_steps}"
    return f"{last} loss none ({unlogged})" if mean is None else f"mean loss {mean:.4f} ({unlogged})"


def next_steps(spec) -> str:
    """What a finished run's output is good for, as commands to copy."""
    import shlex

    from ftctl.runpaths import MERGED_DIR

    out = shlex.quote(spec.output)
    ftctl = "ftctl"
    endpoint = getattr(spec, "s3_endpoint_url", None)
    if endpoint and spec.output.startswith("s3://"):  # chat/eval/merge take no -o: a run into MinIO or R2 (-o
        # s3_endpoint_url) printed lines that asked AWS itself ("Cannot reach AWS S3"). Said whatever this process's
        # environment holds: the launch sets AWS_ENDPOINT_URL here from the spec (launch.py), the user's shell not
        var = "AWS_ENDPOINT_URL_S3" if os.environ.get("AWS_ENDPOINT_URL_S3") else "AWS_ENDPOINT_URL"  # (the first read)
        ftctl = f"{var}={shlex.quote(endpoint)} ftctl"
    steps = [f"{ftctl} chat {out} -p 'A question'", f"{ftctl} eval {out} --data HELD_OUT.jsonl --compare"]
    if spec.method in ("lora", "qlora"):  # over an earlier merge, which the run has trained on since: it first
        merged = os.path.join(spec.output, MERGED_DIR)
        steps.append(f"rm -r {shlex.quote(merged)} && " * os.path.isdir(merged) + f"{ftctl} merge {out}")
    return "next:\n" + "\n".join(f"  {step}" for step in steps)


class Failure:
    """This rank's one failure: recorded for the launcher, printed where nobody else reports it."""

    def __init__(self, rank: int):
        self.rank = rank
        self.recorded = False
        self.unheard = False  # its record could not be written (a full disk): the launcher will not say it
        self.ended = ""  # the run's status once train() returned: complete, or preempted with its checkpoint
        self._ttys: tuple[int, ...] = ()

    @property
    def prints(self) -> bool:
        """Only where no launcher reports the records (Slurm logs, docker logs, a run by hand)."""
        return not os.environ.get(FAILURE_DIR_ENV)

    def report(self, kind: str, message: str, exit_code: int, exc: BaseException) -> int:
        """Record, write the failed status (or the error's own: ftctl.lease.LeaseLost of a store not reached ends as
        ``preempted``, which Slurm's script requeues), print one line (the traceback with FTCTL_DEBUG=1)."""
        self.record(kind, message)
        write_failed_status(getattr(exc, "status", "failed"))
        if os.environ.get("FTCTL_DEBUG"):
            raise exc
        line = f"{failures.ERROR_PREFIX}{failures.masked(message)}"  # into the job's log: no credential
        if (self.prints or self.unheard) and failures.first_to_say(line):  # once a node, not once a rank
            print(line, file=sys.stderr, flush=True)
        return exit_code

    def record(self, kind: str, message: str) -> None:
        """The first failure of this process is its record; reporting never hides the failure itself."""
        if self.recorded:
            return
        self.recorded = True
        try:
            failures.record(kind, message)
        except OSError:  # a full disk: its line is printed instead (report), for the launcher to pass on
            self.unheard = True

    def catch_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may set handlers (the trainer called from a test's thread)
        self._ttys = terminal.ttys()
        for sig in terminal.caught(INTERRUPT_SIGNALS):  # not a SIGHUP that nohup ignores
            signal.signal(sig, self._interrupted)

    def _interrupted(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGHUP:  # its terminal closed: saying so there would fail
            terminal.hang_up(self._ttys)
        if not self.recorded and not self.ended:  # a rank stopped by torchrun after failing keeps its own record
            self.record("interrupted", f"interrupted by {name} (preempted, cancelled, or its job stopped)")
            write_failed_status()
            if (self.prints or self.unheard) and failures.first_to_say(f"interrupted by {name}"):
                print(f"interrupted by {name}", file=sys.stderr, flush=True)
        sys.exit(0 if self.ended else 128 + signum)  # after train() returned: it exits as the run ended


def write_failed_status(status: str = "failed") -> None:
    try:
        from ftctl.trainer.run import write_status
    except Exception:  # the trainer's own imports failed: the exit code still says so
        return
    write_status(status)


def one_gpu_per_process(plan) -> None:
    """A single-process GPU run on a host with several GPUs would otherwise get them all and the
    Trainer would wrap the model in nn.DataParallel (SFTTrainer refuses it): show it the first one.
    torchrun runs (WORLD_SIZE set) pick their GPU by LOCAL_RANK. Must run before CUDA starts."""
    if (
        plan.tier
        and plan.world_size == 1
        and "WORLD_SIZE" not in os.environ
        and "CUDA_VISIBLE_DEVICES" not in os.environ
    ):
        os.environ["CUDA_VISIBLE_DEVICES"] = "0"


if __name__ == "__main__":
    sys.exit(main())
