"""What watches a run from outside, across its attempts: its W&B run and its TensorBoard event files.

A run stopped and resumed (a relaunch, a Slurm requeue, a SkyPilot recovery) goes on in the same W&B run, on the
same ``train/global_step`` axis: its id is drawn when the run starts from step 0 and written in metrics.jsonl's start
record, which every checkpoint carries a copy of (ftctl-metrics.jsonl), so the attempt that resumes a checkpoint,
on any node, reads it there; W&B is asked to resume it (WANDB_RESUME=allow). A run that starts afresh, also into an
output an earlier run used, gets a new one. The user's own WANDB_RUN_ID / WANDB_RESUME / WANDB_DIR win.

An attempt that resumes checkpoint-N after W&B logged up to step M > N (the run was stopped between checkpoints)
trains steps N+1..M again and logs them again: transformers' W&B callback logs without W&B's ``step`` (W&B's own
_step goes on from where the earlier attempt's ended, which online W&B hands back on resume; train/global_step is the
charts' x-axis), so nothing
is dropped, and W&B keeps the earlier attempt's values of those steps too: its charts show steps N+1..M twice
(wandb_retrained says so as the attempt starts). W&B's rewind (wandb.init(resume_from="ID?_step=K")), which would
cut them, is not asked for: it is a preview W&B enables per account on request (not on self-managed servers), nothing
to ask of every run, and its K is W&B's _step, not the trainer's step (each checkpoint would have to record W&B's
_step at its save).

TensorBoard writes into the output's ``runs/`` (not transformers' directory per attempt: one run in TensorBoard, not
one per attempt), and an attempt that resumes from step N hides what an earlier attempt logged after N (the
writer's purge_step), so the curve has each step once.

Both directories (runpaths.TRACKING_DIRS) are in the output: an object-store output gets them with each checkpoint
(checkpoints.upload: every attempt's, also a node's that a spot recovery replaced) and with the final model.

A node that cannot reach W&B's server (a university cluster's compute nodes, often) logs offline, into the output's
wandb/, where the user set no WANDB_MODE: online, wandb.init retries for its init_timeout (90 s) and the job fails
after the model loaded (wandb_offline). Both W&B and TensorBoard get the run's own settings, spec.json's (log_run).
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import ssl
import string
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import TYPE_CHECKING

from ftctl import storage
from ftctl.checkpoints.manifest import METRICS_COPY_ERRORS, metrics_copy, open_metrics_copy
from ftctl.envvars import HUB_TELEMETRY_ENV
from ftctl.runpaths import (
    START_WANDB_RUN,
    TENSORBOARD_DIR,
    TENSORBOARD_LOG_DIR,
    TRACKING_EVENT,
    WANDB_RUN_DIR,
    WANDB_URL,
)
from ftctl.spec import report_integrations

if TYPE_CHECKING:
    from ftctl.spec import RunSpec

_ID_CHARS = string.ascii_lowercase + string.digits  # W&B's own run ids: 8 of these
WANDB_CLOUD = "https://api.wandb.ai"  # W&B's server where WANDB_BASE_URL names none
REACH_TIMEOUT_S = 5.0  # how long the trainer waits for W&B's server to answer before it logs offline


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


def wandb_offline(
    report_to: str, output: str, given: Mapping[str, str] = os.environ, timeout_s: float = REACH_TIMEOUT_S
) -> tuple[dict[str, str], str | None]:
    """WANDB_MODE=offline, and the line that says so, where the run reports to W&B, the user set no WANDB_MODE and
    W&B's server (WANDB_BASE_URL) does not answer within ``timeout_s`` (a compute node without internet): the run
    logs into ``output``/wandb/, for `wandb sync` later, instead of failing once wandb.init gives up. ({}, None):
    nothing to change. A WANDB_MODE the user set, online too, is left to W&B."""
    if "wandb" not in report_integrations(report_to) or given.get("WANDB_MODE"):
        return {}, None
    url = wandb_server(given)
    proxy = given.get("WANDB_HTTPS_PROXY") if url.startswith("https:") else given.get("WANDB_HTTP_PROXY")
    if (why := unreachable(url, timeout_s, proxy)) is None:
        return {}, None
    mine = given.get("WANDB_DIR")  # the user's: W&B writes there, not in the output
    kept = f"{(mine or output).rstrip('/')}/wandb"
    remote = storage.is_remote(output) and not mine
    files = "wandb/offline-run-* of a copy of it" if remote else f"{kept}/offline-run-*"
    return {"WANDB_MODE": "offline"}, (
        f"W&B: {url} cannot be reached from this node ({why}): this run logs to W&B offline, into {kept}/; "
        f"upload it where W&B can be reached: wandb sync {files} (-o env=WANDB_MODE=offline says so from the "
        "start; WANDB_MODE=online fails instead)"
    )


def wandb_server(given: Mapping[str, str] = os.environ) -> str:
    """The W&B server the run logs to, as W&B's client finds it: WANDB_BASE_URL, else the base_url `wandb login
    --host` saved in its settings file (WANDB_CONFIG_DIR's, else ~/.config/wandb/settings), else W&B's cloud."""
    if url := given.get("WANDB_BASE_URL"):
        return url
    import configparser

    folder = given.get("WANDB_CONFIG_DIR") or os.path.join(
        given.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config"), "wandb"
    )
    settings = configparser.ConfigParser()
    try:
        settings.read(os.path.join(folder, "settings"))
        return settings.get("default", "base_url", fallback="") or WANDB_CLOUD
    except configparser.Error:
        return WANDB_CLOUD


def unreachable(url: str, timeout_s: float, proxy: str | None = None) -> str | None:
    """Why ``url`` gives no answer within ``timeout_s``, its name's lookup included (None: it answered, anything, or
    its TLS certificate was refused here, which W&B's own client may accept). Through ``proxy`` (W&B's own
    WANDB_HTTPS_PROXY) where given, else the proxy the environment names, as W&B's client."""
    said: list[str | None] = []
    asking = threading.Thread(target=lambda: said.append(_ask(url, timeout_s, proxy)), daemon=True)
    asking.start()
    asking.join(timeout_s)  # urlopen's timeout is each socket's: a name lookup (DNS) can take longer
    return said[0] if said else f"no answer in {timeout_s:g} s"


def _ask(url: str, timeout_s: float, proxy: str | None = None) -> str | None:
    handlers = [urllib.request.ProxyHandler({"http": proxy, "https": proxy})] if proxy else []
    try:
        urllib.request.build_opener(*handlers).open(
            urllib.request.Request(url, method="HEAD"), timeout=timeout_s
        ).close()
    except (urllib.error.HTTPError, http.client.HTTPException):
        return None  # an answer (not HTTP's, or not W&B's: the client says what it makes of it)
    except urllib.error.URLError as e:
        if isinstance(e.reason, ssl.SSLError):
            return None
        return str(e.reason)
    except (OSError, ValueError) as e:  # a timeout reading the answer; a URL urllib cannot read
        return str(e) or type(e).__name__
    return None


def run_name(spec: RunSpec, given: Mapping[str, str] = os.environ, resumed: str | None = None) -> str | None:
    """TrainingArguments.run_name, the name W&B shows: the user's WANDB_NAME (axolotl's wandb_name), which
    transformers' wandb.init(name=run_name) would override, else the run's name; where no run_name was given but an
    output_dir was, the output's last part (its runs/NAME otherwise): runs into s3://b/lr-1e-4 and s3://b/lr-3e-4
    were both ftctl-lora-MODEL in W&B's list. None (no name passed: W&B keeps the one it has) where the attempt goes
    on in a W&B run an earlier attempt started (wandb_run_goes_on): a name given again renamed it, where an older
    ftctl named it otherwise (its run's name, not the output's) or the user renamed it in W&B."""
    if wanted := {**given, **spec.env}.get("WANDB_NAME"):
        return wanted
    if wandb_run_goes_on(resumed, {**given, **spec.env}):
        return None
    if spec.output_dir and not spec.run_name:
        return spec.output.rstrip("/").rsplit("/", 1)[-1] or spec.name
    return spec.name


def wandb_run_goes_on(resumed: str | None, given: Mapping[str, str] = os.environ) -> bool:
    """Whether this attempt logs to a W&B run that an earlier attempt started: ``resumed``, the run's own checkpoint
    it resumes, records the W&B run (recorded_wandb_run), and the user's WANDB_RUN_ID, where set, names that one
    (wandb_env)."""
    recorded = recorded_wandb_run(resumed)
    return recorded is not None and (given.get("WANDB_RUN_ID") or recorded) == recorded


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
    if checkpoint is None or (copy := metrics_copy(checkpoint)) is None:
        return []
    said = []
    try:
        with open_metrics_copy(copy) as f:
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and record.get("event") == "start" and record.get(key):
                    said.append(str(record[key]))
    except METRICS_COPY_ERRORS:
        return []
    return said


PREEMPTED_EXIT = 143  # W&B's exit code of an attempt stopped before its end: 128 + SIGTERM, W&B's convention


def finish_wandb(failed: bool = False, preempted: bool = False) -> None:
    """This process's W&B run ended with its training (transformers leaves it open until the process exits): its
    files in the output are whole before they are uploaded with it, and a trainer called again in this process (the
    demo, tests) logs to its own run, in its own output, not to this one. An attempt stopped before its end
    (``preempted``: a requeue, a recovery or a relaunch goes on with it) is marked preempting and ends non-zero, as
    W&B asks of one: W&B showed it "finished", at the step it stopped."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        if preempted:
            wandb.run.mark_preempting()
        wandb.finish(exit_code=1 if failed else PREEMPTED_EXIT if preempted else 0)
        wandb.teardown()  # W&B reads its variables once a session: the next run's (wandb_env) are read again


def retrained_line(step: int) -> str | None:
    """What this process's W&B run (resumed from checkpoint-``step``) gets, where W&B logged steps after ``step``:
    the last step it logged is its summary's train/global_step, which online W&B hands back on resume (none offline:
    None, as for a run that is not resumed or logs to no W&B run)."""
    wandb = sys.modules.get("wandb")
    run = getattr(wandb, "run", None)
    if run is None or step <= 0:
        return None
    logged = run.summary.get("train/global_step")
    if not isinstance(logged, (int, float)) or logged <= step:
        return None
    logged = int(logged)
    again = f"step {logged}" if logged == step + 1 else f"steps {step + 1}-{logged}"
    return (
        f"W&B: run {run.id} logged up to step {logged}; {again}, trained again from checkpoint-{step}, are logged "
        "to it again, and W&B keeps their earlier values too: its charts show them twice (metrics.jsonl and "
        "TensorBoard's runs/ hold the new ones only)"
    )


def wandb_retrained(trainer, echo) -> None:
    """Says retrained_line on rank 0 as the resumed attempt starts training (after transformers' W&B callback has
    resumed the run: it comes first among the Trainer's callbacks)."""
    from transformers import TrainerCallback

    class Retrained(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero and (line := retrained_line(state.global_step)):
                echo(line)

    trainer.add_callback(Retrained())


def log_run(trainer, text: str) -> None:
    """The run's spec.json ``text`` (its spec and plan: data, method, GPUs, the output as given) in W&B's config, key
    ``ftctl``, and as TensorBoard's text ``ftctl/spec.json``: transformers logs its TrainingArguments only, whose
    output_dir is the node's staging directory for an object-store output. Rank 0, as training begins, after
    transformers' callbacks opened the W&B run and the writer; a resume that changed a setting changes it there."""
    from transformers import TrainerCallback
    from transformers.integrations import TensorBoardCallback

    record = json.loads(text)

    class RunConfig(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            if not state.is_world_process_zero:
                return
            wandb = sys.modules.get("wandb")
            if wandb is not None and wandb.run is not None:
                wandb.run.config.update({"ftctl": record}, allow_val_change=True)
            for callback in trainer.callback_handler.callbacks:
                if isinstance(callback, TensorBoardCallback) and callback.tb_writer is not None:
                    code = "".join(f"    {line}\n" for line in text.splitlines())  # Markdown's code block
                    callback.tb_writer.add_text("ftctl/spec.json", code, global_step=state.global_step)

    trainer.add_callback(RunConfig())


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


def record_destinations(trainer, metrics_path: str, local_dir: str, output: str) -> None:
    """Where this attempt's metrics go, as W&B and TensorBoard were opened: metrics.jsonl's "tracking" record (rank
    0, as training begins: after transformers' W&B callback started its run and tensorboard_here's writer was made),
    read by `ftctl status`. W&B's run id, its page where it logs online, and W&B's own directory of the attempt (the
    one `wandb sync` uploads where it logs offline; where W&B made it: WANDB_DIR, the user's too); TensorBoard's
    writer's directory. A directory in the staging directory of an object-store ``output`` is named as it is in the
    store (sent there with each checkpoint)."""
    from transformers import TrainerCallback
    from transformers.integrations import TensorBoardCallback

    from ftctl.trainer.callbacks import append_line

    class Destinations(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            if not state.is_world_process_zero:
                return
            record = {}
            run = getattr(sys.modules.get("wandb"), "run", None)
            if run is not None and not getattr(run, "disabled", False):
                record[START_WANDB_RUN] = run.id
                record[WANDB_URL] = None if run.offline else run.url
                record[WANDB_RUN_DIR] = in_output(os.path.dirname(run.dir), local_dir, output)  # run.dir: its files/
            for callback in trainer.callback_handler.callbacks:
                if isinstance(callback, TensorBoardCallback) and callback.tb_writer is not None:
                    record[TENSORBOARD_LOG_DIR] = in_output(callback.tb_writer.log_dir, local_dir, output)
            if record:
                head = {"step": state.global_step, "event": TRACKING_EVENT, "time": round(time.time(), 3)}
                append_line(metrics_path, json.dumps({**head, **record}))

    trainer.add_callback(Destinations())


def in_output(path: str, local_dir: str, output: str) -> str:
    """``path`` as the user finds it: in an object-store ``output`` where it is in its staging directory
    ``local_dir`` (sent there with each checkpoint), else as it is (a local output's, a directory of the user's)."""
    path, local_dir = os.path.abspath(path), os.path.abspath(local_dir)
    if not storage.is_remote(output) or os.path.commonpath([path, local_dir]) != local_dir:
        return path
    return storage.join(output.rstrip("/"), os.path.relpath(path, local_dir))
