"""``python3 -m ftctl.trainer.torchrun ARGS``: torchrun, with torchrun's own arguments, as the Slurm script, the
SkyPilot task and the docker container run it, without what a user takes for a crash:

- Once every worker has succeeded, torchrun's exit barrier races its own store (pytorch/pytorch#69520, open): the
  agent hosting the c10d store exits while the other nodes' agents still read it, and each of those prints "Error
  waiting on exit barrier" with a traceback, "failed to shutdown the rendezvous" and c10d's C++ stack frames at
  the end of a run that finished. Those two records are dropped, and this process's C++ warnings with them
  (TORCH_CPP_LOG_LEVEL=ERROR here only: the workers keep the caller's).
- A worker that failed has printed its own one ``error:`` line (ftctl.trainer.__main__); torchrun's ~40-line
  ChildFailedError report after it says nothing more. One line instead, naming the rank and its exit code.

- SIGTERM or SIGHUP to torchrun (`docker stop`, a cancelled or preempted Slurm job, `timeout`, a closed terminal):
  torchrun sends its workers the signal and kills them 30 s later, often in the middle of the checkpoint they
  started. Here the first such signal asks the workers to stop through their stop file ($FTCTL_STOP_FILE, one of
  this process's own where the job set none): each saves at its next step boundary and exits, for as long as that
  takes. A second signal stops them at once, as torchrun does.

FTCTL_DEBUG=1 keeps all of torchrun's output.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path

from ftctl import terminal
from ftctl.envvars import STOP_ENV
from ftctl.failures import killed_line, oom_kills

# what torchrun logs at the end of a finished multi-node run (the exit barrier race above)
EXIT_NOISE = ("Error waiting on exit barrier", "has failed to shutdown the rendezvous")
NOISY_LOGGERS = (
    "torch.distributed.elastic.agent.server.api",
    "torch.distributed.elastic.rendezvous.dynamic_rendezvous",
)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class DropExitNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(noise in record.getMessage() for noise in EXIT_NOISE)


def drop_exit_noise() -> None:
    for name in NOISY_LOGGERS:
        logging.getLogger(name).addFilter(DropExitNoise())


def main(argv: list[str] | None = None) -> int:
    if os.environ.get("FTCTL_DEBUG"):
        from torch.distributed.run import main as torchrun

        torchrun(argv)
        return 0
    caller = os.environ.get("TORCH_CPP_LOG_LEVEL")
    os.environ["TORCH_CPP_LOG_LEVEL"] = "ERROR"  # read once, when torch loads
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    if caller is None:  # the workers torchrun starts inherit os.environ as it is now
        del os.environ["TORCH_CPP_LOG_LEVEL"]
    else:
        os.environ["TORCH_CPP_LOG_LEVEL"] = caller
    drop_exit_noise()
    kills_before = oom_kills()  # the memory cgroup's count before the workers: a kill counted since is theirs
    stopped = stop_through_file(SignalException)
    try:
        run(parse_args(argv if argv is not None else sys.argv[1:]))
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        code, where = failure.exitcode, f"rank {rank} on {socket.gethostname()}"
        if code < 0:  # no line of its own: killed (SIGKILL: often the host's out-of-memory killer)
            print(killed_line(where, failure.signal_name(), kills_before=kills_before), file=sys.stderr, flush=True)
            return 128 - code
        say(f"{where} exited with {code}; its error is above")
        return code
    except SignalException as e:  # the job cancelled, preempted or out of time: the workers were stopped
        say(f"stopped by {e.sigval.name}")
        return 128 + int(e.sigval)
    if stopped:  # the workers stopped as asked, with a checkpoint: still not a finished run
        say(f"stopped by {stopped[0].name}: the workers saved a checkpoint first")
        return 128 + int(stopped[0])
    return 0


def stop_through_file(signal_exception) -> list[signal.Signals]:
    """STOP_SIGNALS: the first touches the workers' stop file (set here where the job set none: the workers inherit
    it), a second raises torch's ``signal_exception`` as torchrun's own handler does (its agent stops the workers).
    torchrun installs its handler when it starts the workers, by name from its module, for every torch version:
    that name is this handler for STOP_SIGNALS, torchrun's own for the others (SIGINT, SIGQUIT). Returns the
    signals received, as they arrive."""
    from torch.distributed.elastic.multiprocessing import api as elastic

    path = os.environ.get(STOP_ENV)
    if not path:
        own = tempfile.mkdtemp(prefix="ftctl-torchrun-")
        atexit.register(shutil.rmtree, own, ignore_errors=True)
        path = os.environ[STOP_ENV] = os.path.join(own, "stop")
    ttys = terminal.ttys()
    got: list[signal.Signals] = []

    def on_signal(signum, frame):
        got.append(signal.Signals(signum))
        if signum == signal.SIGHUP:  # its terminal closed: what it says goes nowhere
            terminal.hang_up(ttys)
        if len(got) > 1:
            raise signal_exception(f"Process {os.getpid()} got signal: {signum}", sigval=got[-1])
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        if not Path(path).exists():  # the workers' stop lines name the signal (callbacks.stop_reason), not "stop file"
            Path(path).write_text(f"{got[0].name}\n")
        say(f"{got[0].name}: the workers save a checkpoint at their next step, then stop (again: stop them now)")

    torchs = elastic._terminate_process_handler
    caught = terminal.caught(STOP_SIGNALS)  # not nohup's SIGHUP: neither before the workers start nor after
    ignored = set(STOP_SIGNALS) - set(caught)  # ...when torchrun's own handler takes every signal over

    def dispatch(signum, frame):
        if signum in ignored:
            return
        (on_signal if signum in STOP_SIGNALS else torchs)(signum, frame)

    elastic._terminate_process_handler = dispatch
    for sig in caught:
        signal.signal(sig, on_signal)
    return got


def say(line: str) -> None:
    print(f"ftctl: torchrun: {line}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
