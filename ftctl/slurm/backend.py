"""The Slurm backend: the rendered sbatch script submitted from the run directory."""

from __future__ import annotations

import shutil

import click

from ftctl.backend import Backend, JobRef, JobState, JobStatus, Rendered
from ftctl.slurm import doctor as slurm_doctor
from ftctl.slurm import render as slurm_render
from ftctl.slurm import scheduler

# Slurm's words -> ftctl's states (as torchx's SLURM_STATES -> AppState)
SLURM_STATES = {
    "PENDING": JobState.PENDING,
    "CONFIGURING": JobState.PENDING,
    "REQUEUED": JobState.PENDING,
    "REQUEUE_FED": JobState.PENDING,
    "REQUEUE_HOLD": JobState.PENDING,
    "RESV_DEL_HOLD": JobState.PENDING,
    "RUNNING": JobState.RUNNING,
    "COMPLETING": JobState.RUNNING,
    "SUSPENDED": JobState.RUNNING,
    "STAGE_OUT": JobState.RUNNING,
    "SIGNALING": JobState.RUNNING,
    "RESIZING": JobState.RUNNING,
    "STOPPED": JobState.RUNNING,
    "COMPLETED": JobState.SUCCEEDED,
    "FAILED": JobState.FAILED,
    "NODE_FAIL": JobState.FAILED,
    "OUT_OF_MEMORY": JobState.FAILED,
    "TIMEOUT": JobState.FAILED,
    "BOOT_FAIL": JobState.FAILED,
    "DEADLINE": JobState.FAILED,
    "SPECIAL_EXIT": JobState.FAILED,
    "CANCELLED": JobState.CANCELLED,
    "REVOKED": JobState.CANCELLED,
    "PREEMPTED": JobState.PREEMPTED,
}


class SlurmBackend(Backend):
    name = "slurm"
    options = frozenset(
        {
            "partition",
            "account",
            "qos",
            "time",
            "cpus_per_task",
            "sbatch_args",
            "signal_lead_s",
            "max_requeues",
            "container",
            "setup",
            "preflight_network",
            "preflight_min_busbw_gbps",
        }
    )

    def render(self, spec, plan, paths, spec_json):
        text = slurm_render.render(spec, plan)
        return text, {paths.spec.name: spec_json, paths.sbatch.name: text}

    def check(self, rendered: Rendered) -> None:
        """Refuse only what sbatch would accept but never start (more nodes than the partition has);
        everything else is left to sbatch, in Slurm's own words (a node down now may come back)."""
        if shutil.which("sinfo"):
            plan = rendered.plan
            slurm_doctor.doctor(
                partition=rendered.spec.partition,
                nodes=plan.nodes,
                gpus_per_node=plan.gpus_per_node if plan.tier else None,
                gpu_type=plan.tier,
            ).raise_if_never_runs()

    def send(self, rendered: Rendered) -> JobRef:
        paths = rendered.paths
        job = scheduler.submit(paths.sbatch, cwd=paths.root)
        click.echo(f"submitted Slurm job {job}")
        click.echo(f"  run dir:     {paths.root}")
        click.echo(f"  log:         {paths.slurm_log(job)}   (ftctl logs -f {job})")
        click.echo(f"  checkpoints: {rendered.spec.output}")
        return JobRef("slurm", job, str(paths.root), rendered.spec.name, rendered.spec.output)

    def status(self, ref: JobRef) -> JobStatus:
        s = scheduler.status(ref.job_id)
        return JobStatus(SLURM_STATES.get(s.state, JobState.UNKNOWN), s.describe())

    def logs(self, ref: JobRef, follow: bool) -> None:
        # the script writes slurm-JOB.out in the run dir; else (--sbatch-arg=--output=...) ask Slurm
        # (scontrol cannot print a path holding a newline, and forgets a job after MinJobAge)
        path = ref.paths.slurm_log(ref.job_id)
        if not path.exists():
            path = scheduler.stdout_path(ref.job_id) or path
        scheduler.logs(ref.job_id, follow=follow, path=path)

    def cancel(self, ref: JobRef) -> str:
        before = scheduler.cancel(ref.job_id)
        if before.finished:
            return f"job {ref.job_id} had already ended: {before.describe()}"
        return f"cancelled {ref.job_id}"

    def doctor(self, gpus, partition) -> bool:
        from ftctl import gpus as gpu_table

        req = gpu_table.parse(gpus) if gpus else None
        report = slurm_doctor.doctor(
            partition=partition,
            gpus_per_node=req.per_node if req and req.tier else None,
            gpu_type=req.tier.name if req and req.tier else None,
        )
        click.echo(report.format())
        return report.ok
