"""The SkyPilot backend: the rendered task handed to SkyPilot's Python SDK.

    launch   sky.launch (idle autostop, or --down) of cluster --cluster / the run name, reused when up (its
             setup runs again, for what this run needs; sky.exec would run none); --managed (--spot: on spot):
             sky.jobs.launch of a managed job named after the run, with job_recovery (no --cluster, --down or
             idle_minutes: SkyPilot launches and tears down its clusters)
    status / logs / cancel / down    sky.job_status / tail_logs / cancel / down, or sky.jobs.*; cancel of a training
             job first asks its trainer for a checkpoint through the run's output (runpaths.STOP_REQUEST)

The image (``image_id: docker:REF``): --container, else the user's config: ``image:``, else the newest
image ``ftctl build --push`` recorded for the run's GPUs (a local build or a .sif cannot be pulled by a
cloud VM); without one, ftctl's source is shipped and installed as before.

SkyPilot lives in its own environment (its click pin conflicts with transformers): nothing here imports
``sky``; every SkyPilot call goes through :mod:`ftctl.sky.bridge`, which runs it in this process when
SkyPilot imports here and in the launcher environment's python otherwise.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import signal
import threading
import time
import uuid
from pathlib import Path

import click

from ftctl import gpus, lease, storage, terminal
from ftctl.backend import (
    PREFLIGHT_KEYS,
    Backend,
    JobRef,
    JobState,
    JobStatus,
    Rendered,
    home_file,
    logged_step,
    recorded_jobs,
    refused_as_finished,
    run_spec,
)
from ftctl.errors import FtctlError, NotSent
from ftctl.launch import trainer_env
from ftctl.plan import dump_run
from ftctl.progress import Progress
from ftctl.runpaths import PROGRESS_LINE, START_LINE, STOP_REQUEST, STOP_REQUEST_UNTIL
from ftctl.sky import bridge, cost
from ftctl.sky import inputs as sky_inputs
from ftctl.sky import render as sky_render
from ftctl.spec import report_settings


def job_secrets(spec) -> list[str]:
    """The NAMES the job gets as SkyPilot secrets (each value read from this environment at launch, never written):
    --secret's, and the credentials of the run's object stores set here (storage.job_env: AWS_ACCESS_KEY_ID ...)
    that the task's envs do not set (-o s3_endpoint_url's AWS_ENDPOINT_URL). What names a file of this machine
    (AWS_PROFILE, GOOGLE_APPLICATION_CREDENTIALS) is no use on the nodes: a note says so. Where the run reports to
    W&B, W&B's settings set here too (wandb_settings)."""
    taken = {*spec.secrets, *trainer_env(spec)}
    store = [n for n in storage.job_env(spec.remote_uris, files=False) if n not in taken]
    files = sorted(set(storage.job_env(spec.remote_uris, files=True)) - set(store) - taken)
    if aws := [n for n in files if n != GCS_KEY_FILE]:
        click.echo(
            f"ftctl: not passed to the job, the nodes lack this machine's files: {', '.join(aws)} (export the "
            'store\'s keys instead; for a profile: eval "$(aws configure export-credentials --format env)", which '
            "expire where the profile is SSO's or assumes a role; with --infra aws the nodes' IAM role (SkyPilot's "
            "skypilot-v1) reaches S3 without keys)",
            err=True,
        )
    if GCS_KEY_FILE in files:  # AWS's words were said of it too (explore63 finding 2)
        click.echo(
            f"ftctl: {GCS_KEY_FILE} is not passed to the job (it names a file of this machine): SkyPilot uploads the "
            f"key file that {GCS_KEY_FILE} names where its API server runs (else that server's gcloud default) to "
            "each node as ~/.config/gcloud/application_default_credentials.json, where the job's GCS client finds "
            "it, unless gcp's remote_identity is NO_UPLOAD in SkyPilot's config; on --infra gcp the VMs' service "
            "account (SkyPilot's skypilot-v1) reaches GCS too",
            err=True,
        )
    return [*spec.secrets, *store, *(n for n in wandb_settings(spec) if n not in taken)]


GCS_KEY_FILE = "GOOGLE_APPLICATION_CREDENTIALS"


def wandb_settings(spec) -> list[str]:
    """The NAMES of W&B's own settings variables set here (spec.report_settings: WANDB_PROJECT ...) where the run
    reports to W&B: a SkyPilot job inherits nothing of the launching shell (a Slurm job inherits it all), so an
    `export WANDB_PROJECT=x` logged to W&B's default project unsaid (explore63 finding 3). They go by name, as the
    store's credentials do; -o env=NAME=VALUE sets one in the task instead."""
    return report_settings(spec.report_to)


# SkyPilot's words -> ftctl's states: cluster jobs (sky.JobStatus) and managed jobs (sky.jobs.ManagedJobStatus)
SKY_STATES = {
    "INIT": JobState.PENDING,
    "PENDING": JobState.PENDING,
    "SUBMITTED": JobState.PENDING,
    "STARTING": JobState.PENDING,
    "SETTING_UP": JobState.PENDING,
    "RUNNING": JobState.RUNNING,
    "WINDING_DOWN": JobState.RUNNING,
    "CANCELLING": JobState.RUNNING,
    # the managed job's node went away and SkyPilot relaunches it (it resumes): it goes on by itself, so a launch into
    # its output is refused as while it runs (PREEMPTED is a job that ended, which a relaunch resumes)
    "RECOVERING": JobState.PENDING,
    "SUCCEEDED": JobState.SUCCEEDED,
    "FAILED": JobState.FAILED,
    "FAILED_DRIVER": JobState.FAILED,
    "FAILED_SETUP": JobState.FAILED,
    "FAILED_PRECHECKS": JobState.FAILED,
    "FAILED_NO_RESOURCE": JobState.FAILED,
    "FAILED_CONTROLLER": JobState.FAILED,
    "CANCELLED": JobState.CANCELLED,
    "GONE": JobState.UNKNOWN,  # the cluster was torn down or autostopped: SkyPilot no longer knows
}
# a managed job's controller stopped it 45-65 s after sky.jobs.cancel (Slurm infra)
CANCEL_WAIT_S, CANCEL_POLL_S = 180, 3
STATE_EVERY_S = (
    15  # cancel's wait for the stop checkpoint reads the store every CANCEL_POLL_S, asks SkyPilot this often
)
# what cancel waits for a trainer to say it heard the stop request (StopRequest's seen_unix: it asks every 10 s by
# default) before asking SkyPilot's log whether the job trains at all (a job setting up is cancelled at once)
HEARD_WAIT_S = 15
SOURCE_FILES = ("pyproject.toml", "README.md")  # beside the package, when this is a source checkout


class SkyBackend(Backend):
    name = "sky"
    cancel_options = frozenset({"now", "wait_s"})
    options = (
        frozenset(
            {
                "spot",
                "managed",
                "max_requeues",  # a managed job's restarts after its own failures (render.restarts_on_errors)
                "infra",
                "cloud",
                "region",
                "disk_size",
                "cluster",
                "down",
                "idle_minutes",
                "network_tier",  # render.network_tier: best for a multi-node GPU run where SkyPilot sets it up right
                "disk_tier",  # render.disk_tier: best for a cloud node whose checkpoints are large
                "also_gpus",  # render.also_gpus: more GPU types of the plan's architecture, with its memory or more
                "on_demand_fallback",  # render.spot_resources: --spot's any_of of spot and on-demand
                "container",
                "setup",
            }
        )
        | PREFLIGHT_KEYS
    )
    instead = {  # Slurm's time limit: SkyPilot's job has none, its cluster's life is bounded otherwise (render.py)
        "time": "SkyPilot puts no time limit on a job: --down tears its cluster down when the job ends; without it the "
        "cluster stops after -o idle_minutes=N idle (30 unless given)"
    }
    needs_local_paths = False  # the cloud's machines cannot see this one's files: local inputs ship with the task
    no_image = "installing ftctl from the shipped source"  # the workdir; see ftctl/sky/render.py

    def resolve(self, spec):
        """The plan, and the spec as SkyPilot runs it (ftctl/sky/render.py settle): one infra, the disk sized, a
        managed job's restarts on errors; what SkyPilot would ignore is refused."""
        if (
            not spec.gpus
        ):  # sky launch without --gpus starts a CPU VM: here the GPUs are named (a cloud's CPUs: refused)
            raise FtctlError(
                "--gpus is required for --backend sky: the GPUs each node gets, as sky launch --gpus names them "
                "(--gpus H100:8 or 8xH100, --gpus A100-80GB:1, --gpus L4 for one; --gpus cpu on --infra k8s or "
                "slurm/CLUSTER)."
            )
        spec, plan = super().resolve(spec)
        return sky_render.settle(spec, plan), plan

    def render(self, spec, plan, paths, spec_json):
        """The task YAML, and the spec.json the nodes read: each local input named where the task ships it
        (ftctl/sky/render.py shipped); ``spec`` keeps the paths here, for the preflight. The task and the run's
        directory on the nodes are named after the run's own key (sky_inputs.named), its spec.json after the run."""
        inputs = sky_inputs.shipped(spec)
        node = sky_inputs.on_node(spec, inputs)
        spec_json = dump_run(node, plan) if inputs else spec_json
        text = sky_render.render(sky_inputs.named(node, spec), plan, spec_json, sky_inputs.job_name(spec), inputs)
        return text, {paths.spec.name: spec_json, paths.task.name: text}

    def available(self) -> bool | str:
        """True when SkyPilot is installed (here or in the launcher env) with a cloud or infra enabled,
        else why not, in one line."""
        if bridge.where() is None:
            return "SkyPilot is not installed (pip install 'ftctl[sky]' in its own venv)"
        try:
            answer = bridge.call("available")
        except FtctlError as e:
            return str(e)
        return True if answer["ok"] else answer["why"]

    # ---------------------------------------------------------------------------------- send
    def send(self, rendered: Rendered) -> JobRef:
        spec, paths = rendered.spec, rendered.paths
        try:
            for_host_ram(spec, rendered.plan)
        except FtctlError as e:  # nothing was sent
            raise NotSent(str(e)) from None
        source = stage_source(paths.source)
        # a managed job's name is the run's (lease_holder): SkyPilot names each cluster it launches for it apart
        cluster = sky_inputs.job_name(spec) if spec.managed_job else sky_inputs.cluster_name(spec)
        inputs = sky_inputs.shipped(spec)
        how = "managed job" if spec.managed_job else f"cluster {cluster}"
        click.echo(f"launching {spec.name} through SkyPilot ({how}); task: {paths.task}", err=True)
        if not spec.managed_job and not spec.cluster and (said := former_cluster(spec, cluster)):
            click.echo(said, err=True)
        if note := sky_inputs.shipping_note(spec, rendered.plan, inputs):
            click.echo(note, err=True)
        secrets, idle = job_secrets(spec), sky_render.autostop_minutes(spec)
        beside = [f"workdir {source} (ftctl's source)"]
        wandb = wandb_settings(spec)
        if store := [n for n in secrets if n not in spec.secrets and n not in wandb]:
            beside.append(f"the object store's {', '.join(store)} as secrets, by name")
        if wandb := [n for n in secrets if n in wandb]:
            beside.append(f"W&B's {', '.join(wandb)} as secrets, by name")
        if idle and not spec.managed_job:
            beside.append(f"autostop after {idle} idle minutes (where sky.launch starts or updates the cluster)")
        click.echo(f"with the task, through SkyPilot's SDK: {'; '.join(beside)}", err=True)
        out = bridge.call(
            "launch",
            task_yaml=str(paths.task),
            workdir=str(source),
            cluster=cluster,
            managed=spec.managed_job,
            down=spec.down,
            idle_minutes=idle,
            secrets=secrets,
            named=bool(spec.cluster),
        )
        if other := out.get("misfit"):  # sdk.launch sent nothing
            raise NotSent(misfit(spec, cluster, other))
        if short := out.get("short_disk"):  # nor here
            raise NotSent(short_disk(spec, rendered.plan, cluster, short))
        if tiers := out.get("tiers_missing"):  # nor here
            raise NotSent(tiers_missing(cluster, tiers))
        if ram := out.get("short_ram"):  # nor here
            raise NotSent(short_ram(spec, rendered.plan, cluster, ram))
        managed = bool(out["managed"])
        job = f"managed/{out['job_id']}" if managed else job_id_for(cluster, out["job_id"], out.get("cluster_hash"))
        ref = JobRef(
            "sky",
            job,
            str(paths.root),
            spec.name,
            spec.output,
            # the cluster's hash tells it from a later one of its name, whose job ids count from 1 again
            extra={"cluster": out["cluster"], "sky_job_id": out["job_id"], "managed": managed}
            | ({"cluster_hash": out["cluster_hash"]} if out.get("cluster_hash") else {}),
        )
        return ref

    def announce(self, rendered: Rendered, ref: JobRef) -> list[str]:
        spec, job, managed = rendered.spec, ref.job_id, ref.extra["managed"]
        said = [f"submitted SkyPilot job {job}" + ("" if managed else f" on cluster {sky_inputs.cluster_name(spec)}")]
        said += [f"  run dir:     {rendered.paths.root}", f"  logs:        ftctl logs -f {job}"]
        said.append(f"  checkpoints: {spec.output}")
        if not managed:
            idle = sky_render.autostop_minutes(spec)
            when = (
                "torn down when the job ends"
                if spec.down
                else f"autostops after {idle} idle minutes"
                if idle
                else "stays up (this infra has no idle autostop)"
            )
            said.append(f"  cluster:     {when}; ftctl down {job}")
        return said

    # ---------------------------------------------------------------------------------- watch
    def _args(self, ref: JobRef) -> dict:
        x = ref.extra
        return {
            "cluster": x.get("cluster"),
            "job_id": int(x["sky_job_id"]),
            "managed": bool(x.get("managed")),
            "cluster_hash": x.get("cluster_hash"),
        }

    def status(self, ref: JobRef) -> JobStatus:
        """The job's state; where it runs or failed, its log's tail from the same SkyPilot python, kept for what
        asks next (`ftctl status`: its step line or error line; cancel: whether it trains): log_tail."""
        return self._state(ref, tail=True)

    def _state(self, ref: JobRef, tail: bool = False) -> JobStatus:
        out = self._answers([ref], tail)[0]
        if "error" in out:
            raise FtctlError(f"SkyPilot: {out['error']}")
        if "tail" in out:
            self.__dict__.setdefault("_tails", {})[ref.job_id] = out["tail"]
        return self._status(ref, out)

    def state_lines(self, refs: list[JobRef]) -> list[tuple[JobState, str]]:
        """One SkyPilot call for all of them (sdk.statuses), and no note (what `ftctl status` adds reads the store)."""
        lines = []
        for ref, out in zip(refs, self._answers(refs)):
            if "error" in out:
                lines.append((JobState.UNKNOWN, f"unknown: SkyPilot: {out['error']}"))
            else:
                said = self._status(ref, out, notes=False)
                lines.append((said.state, said.text.removeprefix(f"{ref.job_id} ")))
        return lines

    def _answers(self, refs: list[JobRef], tail: bool = False) -> list[dict]:
        """SkyPilot's answer for each job (sdk.statuses'), in one call (sdk.statuses) for those not known to have
        ended: a job's end is kept (ENDED_FILE) and never asked again, as it cannot change (each call is 4-10 s).
        ``tail``: with the log tail of a job that runs or failed (sdk.statuses' tails)."""
        ended = ended_answers()
        ask = [ref for ref in refs if _ended_key(ref) not in ended]
        jobs = [self._args(ref) for ref in ask]
        asked = bridge.call("statuses", jobs=jobs, **({"tails": True} if tail else {})) if ask else []
        for ref, out in zip(ask, asked):
            if out.get("status") in ENDED and _ended_key(ref):
                keep_ended(ref, {k: v for k, v in out.items() if k != "tail"})
        fresh = {id(ref): out for ref, out in zip(ask, asked)}
        return [fresh[id(ref)] if id(ref) in fresh else ended[_ended_key(ref)] for ref in refs]

    def _status(self, ref: JobRef, out: dict, notes: bool = True) -> JobStatus:
        word = out["status"]
        where = "managed job" if ref.extra.get("managed") else f"on cluster {ref.extra.get('cluster')}"
        detail = out.get("detail") or ""
        text = f"{ref.job_id} {word} ({where})" if word != "GONE" else f"{ref.job_id} UNKNOWN: {detail}"
        if out.get("recoveries"):
            text += f", recovered {out['recoveries']}x"
        if detail and word.startswith("FAILED"):  # a managed job's failure_reason
            text += f": {detail}"
        # a torn-down cluster's job: how it ended went with the cluster; where the same launch goes on did not
        note = goes_on(ref) if notes and word == "GONE" and not ref.extra.get("managed") else None
        # its trainer may have stopped at `ftctl cancel`'s request and exited before the cancel
        if notes and word == "SUCCEEDED":
            note = saved_note(ref)
        return JobStatus(SKY_STATES.get(word, JobState.UNKNOWN), text, note=note)

    def logs(self, ref: JobRef, follow: bool, lines: int | None = None) -> None:
        if lines == 0:  # SkyPilot's tail_logs reads a tail of 0 as the whole log (its managed jobs refuse it)
            raise FtctlError("SkyPilot prints the last 1 or more lines of a job's log: --tail 1, or no --tail for all.")
        bridge.call("logs", follow=follow, tail=lines, **self._args(ref))

    def logged_progress(self, ref: JobRef, running: bool = False) -> Progress | None:
        """While the job runs, the last step line of its nodes' log (sdk.log_tail: one SkyPilot call more), as the
        trainer's metrics.jsonl is staged on the nodes, dated by the time the trainer wrote on it (the log's own time
        is on the node); None once it ended (`ftctl logs JOB` has every line)."""
        return logged_step(self.log_tail(ref), running, job=ref.job_id) if running else None

    def log_tail(self, ref: JobRef) -> str:
        """The job's last log lines as its nodes wrote them (sdk.log_tail), for the ``error:`` line `ftctl status`
        adds to a failed job's (a setup line's, the trainer's); "" where SkyPilot cannot give them."""
        if (kept := self.__dict__.get("_tails", {}).pop(ref.job_id, None)) is not None:  # status asked it just now
            return kept
        try:
            return bridge.call("log_tail", **self._args(ref))["text"]
        except FtctlError:
            return ""

    def cancel(self, ref: JobRef, now: bool = False, wait_s: int | None = None) -> str:
        """Ask a running job's trainer for a checkpoint first (through the run's object store, the one place both
        sides reach: _stop_at_checkpoint), waiting up to ``wait_s`` (the run's signal_lead_s) for the store to
        commit it, then sky.cancel / sky.jobs.cancel; with ``now``, or a job not training yet, the cancel at once.
        The request goes out at once (no log tail first: ~30 s on the test's infra), as the trainer heeds one naming
        its job even where it was there before the trainer started watching.
        A managed job's controller stops it later, so this waits for that (CANCEL_WAIT_S at most); then where the
        same launch goes on (stop_note). A managed job whose trainer committed its stop's checkpoint is not waited
        for: its trainer has stopped and exits, and what its controller does then (its 15 s poll for cancels, the
        log download, the cluster's teardown, then CANCELLED: ~1 min on the test's Slurm infra) needs nobody."""
        before = self._state(ref)
        if before.state.finished:
            return f"job {ref.job_id} had already ended: {before.text}"
        if before.state is JobState.UNKNOWN:
            return f"job {ref.job_id} cannot be cancelled: {before.text}"
        ended = before
        if not now and before.state is JobState.RUNNING:
            saved = self._stop_at_checkpoint(ref, run_spec(ref).signal_lead_s if wait_s is None else wait_s)
            if saved and ref.extra.get("managed"):  # a job that ended already: SkyPilot's "No job to cancel"
                bridge.call("cancel", **self._args(ref))
                return (
                    f"stopping {ref.job_id}: SkyPilot's jobs controller ends it and tears its cluster down in the "
                    f"background (about a minute; `ftctl status {ref.job_id}` says when it has)\n{saved_note(ref, saved)}"
                )
            ended = self._state(ref)  # it may have ended at its stop (its trainer exits 0: SUCCEEDED)
        if not ended.state.finished:
            bridge.call("cancel", **self._args(ref))
            deadline = time.monotonic() + CANCEL_WAIT_S
            while not (ended := self._state(ref)).state.finished and time.monotonic() < deadline:
                time.sleep(CANCEL_POLL_S)
        if not ended.state.finished:
            return (
                f"cancelling {ref.job_id}: SkyPilot had not stopped it after {CANCEL_WAIT_S} s ({ended.text}); "
                f"`ftctl status {ref.job_id}` says when it has"
            )
        if ended.state is JobState.CANCELLED:  # a trainer killed keeps its lease on the output until it goes stale
            lease.release(ref.output, run_spec(ref).s3_endpoint_url, lease_holder(ref))
            return "\n".join(filter(None, [f"cancelled {ref.job_id}", self.stop_note(ref)]))
        if said := saved_note(ref):  # its trainer stopped at the request and exited 0 before SkyPilot's cancel came
            return (
                f"stopped {ref.job_id} ({ended.text}: its trainer exited at its stop, before SkyPilot's cancel)\n{said}"
            )
        return f"{ended.text}, before SkyPilot's cancel\n{goes_on(ref)}"

    def _training(self, ref: JobRef) -> bool:
        """Whether the job's trainer trains (its log's tail holds its start line or a progress line): one still
        setting up or loading has nothing to save since its last checkpoint. Asked only where no trainer said it
        heard the stop request within HEARD_WAIT_S (sdk.log_tail: 27-64 s on the test's infra)."""
        lines = self.log_tail(ref).splitlines()
        return any(line.startswith((START_LINE, PROGRESS_LINE)) for line in lines)

    def _stop_at_checkpoint(self, ref: JobRef, wait_s: int) -> str | None:
        """Write the stop request (runpaths.STOP_REQUEST; its reader: trainer.callbacks.StopRequest) into the run's
        output and wait up to ``wait_s`` for the checkpoint its trainer names there in answer to be committed: that
        checkpoint's name, or None (not asked, not answered or not committed in time, the job ended, or not training:
        the cancel goes on all the same). The request names the job (``task``: how its SkyPilot task id ends, which
        its trainer knows) so a trainer that starts watching after it is written heeds it, until the wait's end
        (runpaths.STOP_REQUEST_UNTIL). A trainer says it heard it (``seen_unix``); where none has within HEARD_WAIT_S,
        SkyPilot's log says whether the job trains: one that does not is not waited for. A request not answered is
        taken back, also where SIGTERM or SIGHUP (a `kill`, a closed terminal) ends this wait (_ended_by_signals), as
        on Ctrl-C: a later job of the task's name, on a cluster launched again, would heed it. One left by a cancel
        killed outright (SIGKILL, the machine gone) is stale past its STOP_REQUEST_UNTIL, which that later trainer
        ignores. An answered request stays, the record of the stop (stop_note), which a later trainer ignores."""
        endpoint = run_spec(ref).s3_endpoint_url
        uri = storage.join(ref.output, STOP_REQUEST)
        asked_unix = round(time.time(), 3)
        asked = {
            "job": ref.job_id,
            "task": lease_holder(ref),
            "id": uuid.uuid4().hex,
            "asked_unix": asked_unix,
            STOP_REQUEST_UNTIL: round(asked_unix + wait_s, 3),
        }
        name = None
        with _ended_by_signals():
            if not _put_request(ref.output, uri, endpoint, asked):
                return None
            try:
                click.echo(
                    f"asked job {ref.job_id}'s trainer for a checkpoint at its next step boundary ({uri}); waiting up "
                    f"to {wait_s} s for it to be committed, then SkyPilot's cancel (`ftctl cancel --now {ref.job_id}` "
                    "cancels at once)",
                    err=True,
                )
                name = self._answered(ref, asked["id"], wait_s)
            finally:
                if name is None:
                    _withdraw(uri, endpoint, asked["id"])
        return name

    def _answered(self, ref: JobRef, asked_id: str, wait_s: int) -> str | None:
        """_stop_at_checkpoint's wait for the answer to request ``asked_id``."""
        started = time.monotonic()
        deadline, state_at, heard = started + wait_s, started + STATE_EVERY_S, False
        while time.monotonic() < deadline:
            time.sleep(max(0.0, min(CANCEL_POLL_S, deadline - time.monotonic())))
            answer = request_answer(ref, lambda answer: answer.get("id") == asked_id)
            if name := committed_stop(ref, answer):
                return name
            heard = heard or "seen_unix" in answer
            if not heard and time.monotonic() >= started + HEARD_WAIT_S:
                heard = True  # asked once
                if not self._training(ref):
                    return None
            if time.monotonic() >= state_at:  # ended without an answer (it failed): a SkyPilot question, 4-10 s
                if self._state(ref).state.finished:
                    return None
                state_at = time.monotonic() + STATE_EVERY_S
        click.echo(
            f"no checkpoint committed within {wait_s} s (`ftctl cancel --wait SECONDS` gives it longer)", err=True
        )
        return None

    def stop_note(self, ref: JobRef) -> str | None:
        """Where the same launch goes on: from the checkpoint the trainer saved as `ftctl cancel` asked it to (the
        request names this job, and its answer was committed), else what SkyPilot's cancel left, the newest
        checkpoint committed to the output (its SIGTERM to the job goes on to a kill within seconds: on Slurm the
        job step is scancelled, on a VM the processes killed), which is read here."""
        if said := saved_note(ref):
            return said
        said = f"SkyPilot's cancel kills the job without waiting for its trainer to save a checkpoint; {goes_on(ref)}"
        if cluster := not ref.extra.get("managed") and ref.extra.get("cluster"):
            said += f"; onto cluster {cluster} while it is up, from a newer one its nodes kept, where they did"
        return said

    def down(self, ref: JobRef) -> str:
        cluster = ref.extra.get("cluster")
        if ref.extra.get("managed") or not cluster:
            raise FtctlError(
                f"{ref.job_id} is a managed job: SkyPilot tears its cluster down itself. To stop it: ftctl cancel {ref.job_id}."
            )
        out = bridge.call("down", cluster=cluster)
        if out.get("busy"):  # sdk.down tore nothing down
            raise FtctlError(_busy(ref, cluster, out))
        return f"cluster {cluster} was already gone" if out.get("gone") else f"tore down cluster {cluster}"

    def where_to_look(self, job_id: str) -> str | None:
        """Where a job ``job_id`` that no record here names is looked up, where it has the form of this backend's ids
        (managed/ID, job_id_for's CLUSTER/ID[@HASH]): SkyPilot's own queues. None for another form. It got Slurm's
        `squeue -j ID` (explore63)."""
        if re.fullmatch(r"managed/\d+", job_id):
            return "SkyPilot's managed jobs: `sky jobs queue`"
        found = re.fullmatch(r"(.+)/\d+(?:@[0-9a-f]+)?", job_id)
        if found and sky_inputs.SKY_CLUSTER_NAME.fullmatch(found[1]) and not Path(found[1]).is_dir():  # runs/3
            return f"a SkyPilot cluster's jobs: `sky queue {found[1]}` (managed jobs: `sky jobs queue`)"
        return None

    def estimate(self, spec, plan) -> str | None:
        """The cheapest cloud/region/instance, its hourly price and the run's estimated total (GPU runs)."""
        if plan.tier is None:
            return None
        return cost.describe(cheapest(spec, plan), spec, plan)

    def doctor(self, gpus, partition) -> bool:
        from ftctl.local.backend import refuse_partition

        refuse_partition(partition, self.name)
        if gpus:
            raise FtctlError(
                f"doctor --backend sky checks SkyPilot's setup, not where {gpus} is offered: `ftctl launch --backend "
                f"sky --gpus {gpus} --dry-run` asks SkyPilot's optimizer and says the price."
            )
        why = self.available()
        click.echo(f"skypilot: {'ready (' + str(bridge.where()) + ')' if why is True else why}")
        return why is True


# SkyPilot's words for a job that ended (what SKY_STATES maps to a finished state): its answer is kept in ENDED_FILE
ENDED = frozenset(word for word, state in SKY_STATES.items() if state.finished)
ENDED_FILE = "sky-ended.jsonl"  # in ftctl's home (backend.home_file), beside the jobs launched from here


def _ended_key(ref: JobRef) -> str | None:
    """What tells the job apart for SkyPilot: a managed job's id, a cluster job's cluster, launch (its hash) and id;
    None for a cluster job recorded without the hash (it cannot be told from a later cluster's job of its id)."""
    x = ref.extra
    if x.get("managed"):
        return f"managed/{x['sky_job_id']}"
    return f"{x.get('cluster')}@{x['cluster_hash']}/{x['sky_job_id']}" if x.get("cluster_hash") else None


def ended_answers() -> dict[str, dict]:
    found = {}
    try:
        lines = home_file(ENDED_FILE).read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        try:
            rec = json.loads(line)
            found[rec["key"]] = rec["answer"]
        except (ValueError, KeyError, TypeError):  # a line cut short
            continue
    return found


def keep_ended(ref: JobRef, answer: dict) -> None:
    try:
        f = home_file(ENDED_FILE)
        f.parent.mkdir(parents=True, exist_ok=True)
        with f.open("a") as fh:
            fh.write(json.dumps({"key": _ended_key(ref), "answer": answer}) + "\n")
    except OSError:  # asked again next time
        pass


def saved_note(ref: JobRef, saved: str | None = None) -> str | None:
    """'its trainer saved checkpoint-N as it stopped; the same `ftctl launch` resumes it ...' where the job's trainer
    stopped at `ftctl cancel`'s request (the request names the job and the checkpoint of its answer is committed;
    ``saved``: that checkpoint, as _stop_at_checkpoint just saw it committed)."""
    if saved := saved or stopped_at(ref, lambda answer: answer.get("job") == ref.job_id):
        return f"its trainer saved {saved} as it stopped; {goes_on(ref)}"
    return None


def stopped_at(ref: JobRef, ours) -> str | None:
    """The checkpoint the trainer named in its answer to the stop request in the run's output (runpaths.STOP_REQUEST)
    where ``ours(answer)`` and the store committed it; None otherwise (no answer, the store not reachable now)."""
    return committed_stop(ref, request_answer(ref, ours))


def request_answer(ref: JobRef, ours) -> dict:
    """The stop request in the run's output as its trainer left it where ``ours(request)``; {} where there is none,
    it is another's, or the store does not answer now."""
    endpoint = run_spec(ref).s3_endpoint_url
    try:
        with storage.storage_errors(ref.output, endpoint):
            answer = json.loads(storage.read_text(storage.join(ref.output, STOP_REQUEST), endpoint))
    except (OSError, ValueError, FtctlError):  # none, or the store not now
        return {}
    return answer if isinstance(answer, dict) and ours(answer) else {}


def committed_stop(ref: JobRef, answer: dict) -> str | None:
    """The checkpoint ``answer`` names where the run's output holds it committed, else None."""
    from ftctl.checkpoints import list_checkpoints

    endpoint = run_spec(ref).s3_endpoint_url
    if not (name := answer.get("checkpoint")):
        return None
    try:
        with storage.storage_errors(ref.output, endpoint):
            if any(c.name == name and c.complete for c in list_checkpoints(ref.output, endpoint_url=endpoint)):
                return name
    except (OSError, FtctlError):  # the store not now
        pass
    return None


def _put_request(output: str, uri: str, endpoint: str | None, asked: dict) -> bool:
    """Write the stop request ``asked`` at ``uri`` in the run's ``output``; False (said) where the store does not
    take it."""
    try:
        with storage.storage_errors(output, endpoint):
            fs, path = storage.filesystem(uri, endpoint, quick=True)
            fs.pipe_file(path, json.dumps(asked).encode())
    except (OSError, FtctlError) as e:
        click.echo(f"cannot ask its trainer for a checkpoint in {uri} ({_first_line(e)}): cancelling", err=True)
        return False
    return True


# what ends `ftctl cancel`'s wait for its stop checkpoint by default, without the finally that takes its request back
ENDING_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def _ended_by_signals():
    """Inside the block, ENDING_SIGNALS (a `kill`, `timeout`, a closed terminal) raise SystemExit(128 + the signal),
    as Ctrl-C raises KeyboardInterrupt, so the caller's finally runs (its stop request taken back) and ftctl exits
    as the signal would have ended it, saying nothing more (after a hang-up its terminal is gone: ftctl.terminal).
    The handlers before are back as the block ends. Only the main thread may set handlers: elsewhere (a test's
    thread) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    ttys = terminal.ttys()

    def end(signum, frame):
        for sig, handler in before.items():  # a second signal: as the one before would take it (the default: a kill)
            signal.signal(sig, handler)
        if signum == signal.SIGHUP:
            terminal.hang_up(ttys)
        raise SystemExit(128 + signum)

    before = {sig: signal.signal(sig, end) for sig in ENDING_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def _withdraw(uri: str, endpoint: str | None, asked_id: str) -> None:
    """Remove the stop request ``asked_id`` where no checkpoint answers it: a later job whose task id ends as this one's
    (a cluster launched again numbers its jobs from 1) would stop at it. Best effort: the cancel that follows ends the
    job anyway, and a trainer that answers after writes the request again, answered."""
    try:
        with storage.storage_errors(uri, endpoint):
            fs, path = storage.filesystem(uri, endpoint, quick=True)
            request = json.loads(fs.cat_file(path))
            if request.get("id") == asked_id and "checkpoint" not in request:
                fs.rm_file(path)
    except (OSError, ValueError, AttributeError, FtctlError):
        pass


def lease_holder(ref: JobRef) -> str:
    """How the job's SkyPilot task id ends, which its trainer knows ($SKYPILOT_TASK_ID): the holder of the lease
    (ftctl.lease.holder_id) it keeps on its output, and the job a stop request names (trainer.callbacks.StopRequest).
    It is ..._CLUSTER_JOBID for a cluster's job and ..._NAME_JOBID-0 for a managed job's (sky_inputs.job_name, of
    the run's name the job recorded at launch)."""
    x = ref.extra
    if x.get("managed"):
        return f"_{sky_inputs.job_name(ref)}_{x['sky_job_id']}-0"
    return f"_{x.get('cluster')}_{x['sky_job_id']}"


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def former_cluster(spec, cluster: str) -> str | None:
    """One line where this run's newest job launched from here ran on the cluster ftctl named a run's before
    2026-12-06 (the run's name, every run of one model's: explore46 #5), not on ``cluster``, the run's own now. That
    one is not reused by itself: it was shared, so it may run another run's job (which this one would queue behind) or
    be made for another; asking SkyPilot its jobs and its fit costs a request to its head each launch, where leaving
    it costs its idle autostop's minutes once. The line says how to reuse it or stop it now."""
    ours = [
        ref
        for ref, _ in recorded_jobs()
        if ref.backend == "sky" and not ref.extra.get("managed") and ref.output == spec.output
    ]
    if not ours or (former := ours[0].extra.get("cluster")) in (None, cluster) or former != spec.name:
        return None
    return (
        f"ftctl: this run's job {ours[0].job_id} ran on cluster {former}, named as ftctl named a run's cluster before "
        f"(shared by every run of the model); this launch goes to cluster {cluster}, the run's own. Where {former} is "
        f"still up, it stops after its idle autostop (`ftctl down {ours[0].job_id}` now); --cluster {former} runs "
        "this launch there instead."
    )


def job_id_for(cluster: str, sky_job_id: int, cluster_hash: str | None) -> str:
    """CLUSTER/ID, SkyPilot's own name of the job; CLUSTER/ID@HASH where a job launched from here had that name on an
    earlier cluster of the name (torn down since: the new one counts its jobs from 1 again), which would otherwise hide
    that job from `ftctl jobs` and `ftctl status`."""
    job = f"{cluster}/{sky_job_id}"
    taken = {ref.job_id for ref, _ in recorded_jobs() if ref.backend == "sky"}
    return f"{job}@{cluster_hash[:8]}" if job in taken and cluster_hash else job


def goes_on(ref: JobRef) -> str:
    """'the same `ftctl launch` resumes it from checkpoint-N in OUTPUT': the newest checkpoint committed to the run's
    object-store output, all a fresh node has (a reused cluster's may hold a newer one of its own, and resume that)."""
    from ftctl.checkpoints import list_checkpoints

    spec = run_spec(ref)
    try:
        with storage.storage_errors(ref.output, spec.s3_endpoint_url):
            done = [c for c in list_checkpoints(ref.output, endpoint_url=spec.s3_endpoint_url) if c.complete]
    except (OSError, FtctlError) as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        return f"the same `ftctl launch` resumes it from the newest checkpoint committed to {ref.output} ({why})"
    if not done:
        return f"the same `ftctl launch` starts it again: {ref.output} holds no committed checkpoint"
    if said := refused_as_finished(spec, done[-1].uri):
        return f"the same `ftctl launch` {said}"
    return f"the same `ftctl launch` resumes it from {done[-1].name} in {ref.output}"


def _busy(ref: JobRef, cluster: str, out: dict) -> str:
    """Why `ftctl down` of ``ref`` left ``cluster`` up (``out``: sdk.down's "busy" answer): its jobs that did not end,
    and how to end each first. `ftctl cancel JOB` (its trainer saves a checkpoint) only for the jobs launched from here
    onto this very cluster (recorded with its cluster hash, where both are known); the rest are anybody's (sky.queue of
    all users: another user's, a `sky exec` by hand, or an id a job launched from here had on an earlier cluster of the
    name), which only SkyPilot's `sky cancel CLUSTER ID` ends (review 61 #9: it said `ftctl cancel` for all)."""
    sky, now = out["sky"], out.get("cluster_hash")
    ours: dict[int, str] = {}
    for job, _ in [(ref, 0.0), *recorded_jobs()]:  # ref first: the job named (find_job's, recorded or not)
        x = job.extra
        if job.backend != "sky" or x.get("managed") or x.get("cluster") != cluster or x.get("sky_job_id") is None:
            continue
        if None in (now, x.get("cluster_hash")) or x["cluster_hash"] == now:  # not a job of an earlier cluster
            ours.setdefault(int(x["sky_job_id"]), job.job_id)
    mine = [ours[job_id] for job_id, _ in out["busy"] if job_id in ours]
    others = [str(job_id) for job_id, _ in out["busy"] if job_id not in ours]
    first = []
    if mine:
        whose = "its" if len(mine) == 1 else "each one's"
        first.append(f"`ftctl cancel {' '.join(mine)}` first ({whose} trainer saves a checkpoint before it stops)")
    if others:
        one = len(others) == 1
        named = f"job {others[0]}" if one else f"jobs {', '.join(others[:-1])} and {others[-1]}"
        first.append(
            f"{named} {'was' if one else 'were'} not launched from here (`{sky} queue {cluster}` says whose): "
            f"`{sky} cancel {cluster} {' '.join(others)}` cancels {'it' if one else 'them'} unsaved"
        )
    return (
        f"cluster {cluster} still has {out['listed']}: tearing it down now would kill "
        f"{'it' if len(out['busy']) == 1 else 'them'} unsaved. {'; '.join(first)}; then `ftctl down {ref.job_id}` "
        f"again; `{sky} down {cluster}` tears it down as it is."
    )


def _down_words(cluster: str, found: dict) -> str:
    """How to tear down ``cluster`` (``found``: sdk.launch's answer, its "cluster_hash" and "sky"): `ftctl down JOB` of
    the recorded job that made this very cluster, where there is one, and SkyPilot's own command."""
    jobs = [ref for ref, _ in recorded_jobs() if ref.backend == "sky" and ref.extra.get("cluster") == cluster]
    made = [ref.job_id for ref in jobs if ref.extra.get("cluster_hash") == found.get("cluster_hash")]
    down = f"`{found['sky']} down {cluster}`"
    return f"`ftctl down {made[0]}` or {down}" if made else down


def misfit(spec, cluster: str, found: dict) -> str:
    """Why a launch onto ``cluster`` was not sent: it was launched with other GPUs, fewer nodes, another infra or image
    than this run asks for (``found``: sdk.launch's "misfit"), which SkyPilot refuses ("Requested resources do not
    match the existing cluster") in words naming its own -c and `sky down`: a relaunch with another --gpus goes to the
    run's own cluster, up or stopped (explore63 finding 1)."""
    down = _down_words(cluster, found)
    return (
        f"cluster {cluster} was launched with {found['cluster']}, and this run asks for {found['task']}: SkyPilot "
        f"takes a task only onto a cluster that has what it asks for. Tear it down ({down}) and launch again (the "
        f"run's checkpoints are in {spec.output}, not on the cluster), or pass another --cluster."
    )


def short_disk(spec, plan, cluster: str, found: dict) -> str:
    """Why a launch onto ``cluster`` was not sent: the disk its nodes were made with (``found``: sdk.launch's
    "short_disk") is smaller than the task's disk_size, what the run stages there (render.disk_size). sky.launch would
    have taken it as it is (its fit check leaves disk_size out), and a checkpoint's save filled the disk hours in."""
    down = _down_words(cluster, found)
    disk = "of ephemeral-storage request on its pods" if found.get("pods") else "of disk on its nodes"
    return (
        f"cluster {cluster} has {found['cluster_gib']} GiB {disk}, as it was launched, and this run stages up to "
        f"~{sky_render.disk_needed_gib(spec, plan):.0f} GiB on a node (its disk_size: {found['task_gib']} GiB): "
        f"SkyPilot reuses a cluster with the disk it has, so a checkpoint would not fit. Tear it down ({down}) and "
        "launch again, or pass another --cluster."
    )


def short_ram(spec, plan, cluster: str, found: dict) -> str:
    """Why a launch onto ``cluster`` was not sent: its nodes have less RAM (``found``: sdk.launch's "short_ram", of the
    instance type it was launched with) than the task's memory:, the host RAM its plan keeps there (an offload plan's
    optimizer states, a CPU plan's processes: slurm.render.node_memory_gb). sky.launch would have taken it as it is
    (its fit check leaves memory out), and the OOM killer would end the job once the offload fills the RAM."""
    from ftctl.slurm.render import node_memory_gb

    down = _down_words(cluster, found)
    instance = f" ({found['instance']})" if found.get("instance") else ""
    have = f"{found['cluster_gib']:g}"
    need = node_memory_gb(plan)
    what = (
        f"the {plan.strategy} plan keeps ~{need:.0f} GB a node in host RAM"
        if plan.tier is not None
        else f"its CPU processes take ~{need:.0f} GB a node"
    )
    within = cost.host_memory_gb_within(found["cluster_gib"])
    plans = f", -o host_memory_gb={within} plans within it" if plan.tier is not None else ""
    return (
        f"cluster {cluster} has {have} GiB of RAM a node{instance}, as it was launched, and {what} (memory: "
        f"{found['task_gib']:g}+): SkyPilot reuses a cluster with the RAM it has, so the job would be killed out of "
        f"memory. Tear it down ({down}) and launch again{plans}, or pass another --cluster."
    )


def tiers_missing(cluster: str, found: dict) -> str:
    """Why a launch onto ``cluster`` was not sent: it was launched without a tier the task names (``found``: sdk.launch's
    "tiers_missing"), which SkyPilot refuses in words that name none of ftctl's options (render.network_tier,
    render.disk_tier say when ftctl asks for one)."""
    down = _down_words(cluster, found)
    tiers = found["tiers"]
    asked = " and ".join(f"{key}: {tier}" for key, tier in sorted(tiers.items()))
    plain = {"network_tier": "standard", "disk_tier": "default"}
    keep = " ".join(f"-o {key}={plain[key]}" for key in sorted(tiers))
    return (
        f"cluster {cluster} was launched without the {asked} this run asks for, and SkyPilot takes no task onto a "
        f"cluster launched without a tier the task names: pass {keep} to run on it as it is, or tear it down ({down}) "
        "and launch again, or pass another --cluster."
    )


def cheapest(spec, plan) -> dict:
    """SkyPilot's optimizer's cheapest instance for a GPU plan (ftctl.sky.sdk.optimize); FtctlError where no VM with
    its GPUs has the host RAM it asks for (memory:, an offload plan's), saying what to do; where no enabled cloud has a
    desktop card (gpus.DESKTOP: an RTX 3060), which clouds rent one and which backends train on one, before SkyPilot's
    words (they said only "Catalog does not contain any instances ...")."""
    try:
        best = bridge.call("optimize", resources=sky_render.optimizer_resources(spec, plan), num_nodes=plan.nodes)
    except FtctlError as e:
        if plan.tier not in gpus.DESKTOP or "Catalog does not contain" not in str(e):
            raise
        raise FtctlError(
            f"--gpus {plan.gpus}: no cloud enabled here offers the {plan.tier}, a desktop card (GeForce or RTX "
            "workstation): RunPod and Vast.ai rent some (`sky check runpod vast` enables them); a machine or Slurm "
            f"cluster that has one trains on it with --backend local or --backend slurm. {e}"
        ) from None
    if "no_vm" in best:
        raise FtctlError(cost.no_vm(best, spec, plan))
    return best


def for_host_ram(spec, plan) -> None:
    """Before a launch: FtctlError where no VM with the plan's GPUs has the host RAM it asks for (an offload plan;
    sky.launch would say it in SkyPilot's words, without the plan's). Nothing asked for, nothing checked."""
    if plan.tier is not None and cost.memory_request(plan):
        cheapest(spec, plan)


def stage_source(dest: Path) -> Path:
    """ftctl's own source (the package, plus pyproject.toml and README.md in a checkout) copied to
    ``dest``: the task's workdir, synced by SkyPilot to every node (no unpublished release is installed)."""
    pkg = Path(__file__).resolve().parents[1]
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(pkg, dest / "ftctl", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in SOURCE_FILES:
        if (pkg.parent / name).is_file():
            shutil.copy2(pkg.parent / name, dest / name)
    # empty: SkyPilot reads it instead of the git rules of a repository the run dir is in (a .gitignore's
    # checkpoints/ left ftctl/checkpoints out of what a managed job shipped)
    (dest / sky_inputs.SKYIGNORE).write_text("")
    return dest
