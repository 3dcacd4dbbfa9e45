"""What watches a run from outside, across its attempts: its W&B run and its TensorBoard event files.

A run stopped and resumed (a relaunch, a Slurm requeue, a SkyPilot recovery) goes on in the same W&B run, on the
same ``train/global_step`` axis: its id is drawn when the run starts from step 0 and written in metrics.jsonl's start
record, which every checkpoint carries a copy of (ftctl-metrics.jsonl), so the attempt that resumes a checkpoint,
on any node, reads it there; W&B is asked to resume it (WANDB_RESUME=allow). A run that starts afresh, also into an
output an earlier run used, gets a new one. The user's own WANDB_RUN_ID / WANDB_RESUME / WANDB_DIR win.

TensorBoard writes into the output's ``runs/`` (not transformers' directory per attempt: one run in TensorBoard, not
one per attempt), and an attempt that resumes from step N hides what an earlier attempt logged after N (the
writer's purge_step), so the curve has each step once.

Both directories (runpaths.TRACKING_DIRS) are in the output: an object-store output gets them with each checkpoint
(checkpoints.upload: every attempt's, also a node's that a spot recovery replaced) and with the final model.
"""

from __future__ import annotations

import json
import os
import secrets
import string
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING

from ftctl.envvars import HUB_TELEMETRY_ENV
from ftctl.runpaths import CHECKPOINT_METRICS, START_WANDB_RUN, TENSORBOARD_DIR
from ftctl.spec import report_integrations

if TYPE_CHECKING:
    from ftctl.spec import RunSpec

_ID_CHARS = string.ascii_lowercase + string.digits  # W&B's own run ids: 8 of these


def wandb_env(
    report_to: str, local_dir: str, resumed: str | None, given: Mapping[str, str] = os.environ
) -> dict[str, str]:
    """W&B's variables this attempt sets where ``given`` (the trainer's environment) has none: the run's id (the
    one recorded in ``resumed``, the run's own checkpoint this attempt resumes, else a new one), resume=allow and
    the output's wandb/ as W&B's directory (an offline run kept and uploaded with the output). Empty where the run
    does not report to W&B."""
    if "wandb" not in report_integrations(report_to):
        return {}
    wanted = {
        "WANDB_RUN_ID": recorded_wandb_run(resumed) or new_wandb_run_id(),
        "WANDB_RESUME": "allow",
        "WANDB_DIR": local_dir,  # W&B writes its wandb/ inside it
    }
    return {name: value for name, value in wanted.items() if not given.get(name)}


def run_name(spec: RunSpec, given: Mapping[str, str] = os.environ) -> str:
    """TrainingArguments.run_name, the name W&B shows: the user's WANDB_NAME (axolotl's wandb_name), which
    transformers' wandb.init(name=run_name) would override, else the run's name."""
    return {**given, **spec.env}.get("WANDB_NAME") or spec.name


def set_env(env: Mapping[str, str]) -> dict[str, str | None]:
    """``env`` set in this process; what it replaced, for restore_env (the trainer called in-process: tests, the
    demo)."""
    before = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    _hub_reads_env()
    return before


def restore_env(before: Mapping[str, str | None]) -> None:
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    _hub_reads_env()


def _hub_reads_env() -> None:
    """huggingface_hub's telemetry switch as the environment says it now (envvars.telemetry_off): the hub reads
    it once, at its import, which came before the trainer set it."""
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_DISABLE_TELEMETRY = any(
            os.environ.get(name, "").upper() in constants.ENV_VARS_TRUE_VALUES
            for name in (HUB_TELEMETRY_ENV, "DISABLE_TELEMETRY", "DO_NOT_TRACK")
        )


def new_wandb_run_id() -> str:
    return "".join(secrets.choice(_ID_CHARS) for _ in range(8))


def recorded_wandb_run(checkpoint: str | None) -> str | None:
    """The W&B run id the run of ``checkpoint`` logs to: its copy of metrics.jsonl's first start record naming one
    (None: no checkpoint, or one saved before ftctl recorded it)."""
    return next(iter(recorded_starts(checkpoint, START_WANDB_RUN)), None)


def recorded_starts(checkpoint: str | None, key: str) -> list[str]:
    """What the start records (runpaths.START_*) in ``checkpoint``'s copy of metrics.jsonl say of ``key``, in order: one
    a trainer's start that named it ([]: no checkpoint, or none did)."""
    if checkpoint is None:
        return []
    said = []
    try:
        with open(os.path.join(checkpoint, CHECKPOINT_METRICS)) as f:
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and record.get("event") == "start" and record.get(key):
                    said.append(str(record[key]))
    except OSError:
        return []
    return said


def finish_wandb(failed: bool = False) -> None:
    """This process's W&B run ended with its training (transformers leaves it open until the process exits): its
    files in the output are whole before they are uploaded with it, and a trainer called again in this process (the
    demo, tests) logs to its own run, in its own output, not to this one."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish(exit_code=1 if failed else 0)
        wandb.teardown()  # W&B reads its variables once a session: the next run's (wandb_env) are read again


def tensorboard_here(trainer, local_dir: str) -> None:
    """transformers' TensorBoard callback replaced by one writing into the output's runs/ whose writer, made at
    train begin (the resumed step known), hides what an earlier attempt logged after that step."""
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    log_dir = os.path.join(local_dir, TENSORBOARD_DIR)

    class OneCurve(TensorBoardCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero and self.tb_writer is None:
                # steps after the one resumed are trained again: an earlier attempt's values of them are hidden
                self.tb_writer = SummaryWriter(log_dir=log_dir, purge_step=state.global_step + 1)
            super().on_train_begin(args, state, control, **kwargs)

    trainer.remove_callback(TensorBoardCallback)
    trainer.add_callback(OneCurve())
