"""``python -m ftctl.trainer --spec spec.json``: what torchrun runs on every node of every backend."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from ftctl.errors import FtctlError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ftctl.trainer", description=__doc__)
    parser.add_argument("--spec", required=True, help="spec.json written by ftctl (the run and its plan)")
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING, format=f"%(asctime)s [rank {rank}] %(name)s: %(message)s"
    )
    from ftctl.plan import load_run
    from ftctl.trainer import distributed
    from ftctl.trainer.run import train, write_status

    try:
        spec, plan = load_run(args.spec)
        one_gpu_per_process(plan)
        result = train(spec, plan, echo=(lambda line: print(line, flush=True)) if rank == 0 else (lambda line: None))
        distributed.shutdown()
    except FtctlError as e:
        write_status("failed")
        if os.environ.get("FTCTL_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    if rank == 0:
        print(
            f"{result.status}: step {result.global_step}, final loss {result.final_loss}, output {spec.output}",
            flush=True,
        )
    return 0


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
