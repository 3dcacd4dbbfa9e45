"""Send a prepared run to its backend, and ask the backend about it later (status, logs, cancel)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import click

from ftctl.backends import Prepared, find_job, record_job, write_files
from ftctl.errors import FtctlError


def submit(prep: Prepared) -> str:
    if prep.backend == "slurm" and shutil.which("sinfo"):
        from ftctl.slurm import doctor

        doctor.doctor(
            partition=prep.spec.partition,
            nodes=prep.plan.nodes,
            gpus_per_node=prep.plan.gpus_per_node if prep.plan.tier else None,
            gpu_type=prep.plan.tier,
        ).raise_if_never_runs()
    write_files(prep)
    if prep.backend == "slurm":
        from ftctl.slurm import render, scheduler

        job = scheduler.submit(prep.run_dir / render.SCRIPT_NAME, cwd=prep.run_dir)
        record_job(job, prep)
        click.echo(f"submitted Slurm job {job}")
        click.echo(f"  run dir:     {prep.run_dir}")
        click.echo(f"  log:         {prep.run_dir}/slurm-{job}.out   (ftctl logs -f {job})")
        click.echo(f"  checkpoints: {prep.spec.output}")
        return job
    if prep.backend == "sky":
        from ftctl.sky import launcher

        return launcher.launch(prep)
    argv = ["sh", str(prep.run_dir / "docker-run.sh")] if prep.backend == "docker" else None
    if argv and not shutil.which("docker"):
        raise FtctlError("docker is not installed here: install Docker Engine, or use --backend local.")
    from ftctl.backends import local_argv

    argv = argv or local_argv(prep.spec, prep.plan, prep.run_dir / "spec.json")
    for note in prep.plan.notes:
        click.echo(f"note: {note}", err=True)
    click.echo(f"running {prep.spec.method} on {prep.plan.gpus}; checkpoints in {prep.spec.output}", err=True)
    rc = subprocess.call(argv, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if rc != 0:
        raise FtctlError(
            f"training exited with code {rc}; its output is above. Run `ftctl launch` again to resume "
            f"from the last checkpoint."
        )
    return "local"


def _job(job: str) -> dict:
    rec = find_job(job)
    if rec["backend"] != "slurm" and rec["backend"] != "sky":
        raise FtctlError(f"job {job} ran on backend {rec['backend']}, which has no job queue.")
    return rec


def status(job: str) -> str:
    rec = _job(job)
    if rec["backend"] == "slurm":
        from ftctl.slurm import scheduler

        return scheduler.status(job).describe()
    from ftctl.sky import launcher

    return launcher.status(job)


def logs(job: str, follow: bool) -> None:
    rec = _job(job)
    if rec["backend"] == "slurm":
        from ftctl.slurm import scheduler

        # the script writes slurm-JOB.out in the run dir; else (--sbatch-arg=--output=...) ask Slurm
        # (scontrol cannot print a path holding a newline, and forgets a job after MinJobAge)
        path = Path(rec["run_dir"]) / f"slurm-{job}.out"
        if not path.exists():
            path = scheduler.stdout_path(job) or path
        scheduler.logs(job, follow=follow, path=path)
        return
    from ftctl.sky import launcher

    launcher.logs(job, follow)


def cancel(job: str) -> None:
    rec = _job(job)
    if rec["backend"] == "slurm":
        from ftctl.slurm import scheduler

        before = scheduler.cancel(job)
        if before.finished:
            click.echo(f"job {job} had already ended: {before.describe()}")
            return
    else:
        from ftctl.sky import launcher

        launcher.cancel(job)
    click.echo(f"cancelled {job}")


def doctor(backend: str, partition: str | None, gpus: str | None) -> bool:
    if backend == "slurm":
        from ftctl import gpus as gpu_table
        from ftctl.slurm import doctor as slurm_doctor

        req = gpu_table.parse(gpus) if gpus else None
        report = slurm_doctor.doctor(
            partition=partition,
            gpus_per_node=req.per_node if req and req.tier else None,
            gpu_type=req.tier.name if req and req.tier else None,
        )
        click.echo(report.format())
        return report.ok
    from ftctl.backends import local_gpus

    click.echo(f"python:  {sys.version.split()[0]} ({sys.executable})")
    click.echo(f"gpus:    {local_gpus()}")
    ok = True
    for mod in ("torch", "transformers", "trl", "peft", "bitsandbytes", "deepspeed", "flash_attn"):
        from importlib.util import find_spec

        found = find_spec(mod) is not None
        click.echo(f"{mod:<13}{'ok' if found else 'missing'}")
        ok = ok and (found or mod in ("deepspeed", "flash_attn", "bitsandbytes"))
    if backend == "docker":
        found = shutil.which("docker") is not None
        click.echo(f"docker:  {'found' if found else 'not installed'}")
        ok = ok and found
    return ok
