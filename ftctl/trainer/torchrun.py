"""``python3 -m ftctl.trainer.torchrun ARGS``: torchrun, with torchrun's own arguments, as the Slurm script, the
SkyPilot task and the docker container run it, without what a user takes for a crash:

- Once every worker has succeeded, torchrun's exit barrier races its own store (pytorch/pytorch#69520, open): the
  agent hosting the c10d store exits while the other nodes' agents still read it, and each of those prints "Error
  waiting on exit barrier" with a traceback, "failed to shutdown the rendezvous" and c10d's C++ stack frames at
  the end of a run that finished. Those two records are dropped, and this process's C++ warnings with them
  (TORCH_CPP_LOG_LEVEL=ERROR here only: the workers keep the caller's).
- A worker that failed has printed its own one ``error:`` line (ftctl.trainer.__main__); torchrun's ~40-line
  ChildFailedError report after it says nothing more. One line instead, naming the rank and its exit code.

FTCTL_DEBUG=1 keeps all of torchrun's output.
"""

from __future__ import annotations

import logging
import os
import socket
import sys

from ftctl.failures import killed_line

# what torchrun logs at the end of a finished multi-node run (the exit barrier race above)
EXIT_NOISE = ("Error waiting on exit barrier", "has failed to shutdown the rendezvous")
NOISY_LOGGERS = (
    "torch.distributed.elastic.agent.server.api",
    "torch.distributed.elastic.rendezvous.dynamic_rendezvous",
)


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
    try:
        run(parse_args(argv if argv is not None else sys.argv[1:]))
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        code, where = failure.exitcode, f"rank {rank} on {socket.gethostname()}"
        if code < 0:  # no line of its own: killed (SIGKILL: often the host's out-of-memory killer)
            print(killed_line(where, failure.signal_name()), file=sys.stderr, flush=True)
            return 128 - code
        say(f"{where} exited with {code}; its error is above")
        return code
    except SignalException as e:  # the job cancelled, preempted or out of time: the workers were stopped
        say(f"stopped by {e.sigval.name}")
        return 128 + int(e.sigval)
    return 0


def say(line: str) -> None:
    print(f"ftctl: torchrun: {line}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
