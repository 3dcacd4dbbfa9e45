"""Backends: one function each to render, and the run directory ``launch`` writes.

``launch = submit(prepare(...))``: ``prepare`` returns the exact bytes that are written and sent, so
``--dry-run`` prints what ``launch`` would submit. Backend modules are imported only when used.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path

from ftctl.errors import FtctlError
from ftctl.plan import Plan, dump_run, make_plan
from ftctl.spec import TRAINING_KEYS, RunSpec
from ftctl.storage_uri import is_remote


@dataclass
class Prepared:
    backend: str
    spec: RunSpec
    plan: Plan
    run_dir: Path
    text: str  # what render prints and launch sends
    files: dict[str, str]  # written into run_dir before submitting


def local_gpus() -> str:
    """What this machine has, in --gpus form, from nvidia-smi (no torch import); 'cpu' without GPUs."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return "cpu"
    try:
        out = subprocess.run(
            [smi, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "cpu"
    rows = [r for r in out.strip().splitlines() if r.strip()]
    if not rows:
        return "cpu"
    from ftctl import gpus as gpu_table

    name, mem = rows[0].rsplit(",", 1)
    mem_gb = float(mem) / 1024
    known = sorted(gpu_table.TIERS.values(), key=lambda t: abs(t.memory_gb - mem_gb))
    for t in known:
        if t.name.split("-")[0].replace("RTX", "") in name.upper().replace(" ", ""):
            return f"{len(rows)}x{t.name}"
    return f"{len(rows)}x{known[0].name}"


def resolve(spec: RunSpec) -> tuple[RunSpec, Plan]:
    """Fill in the GPUs a backend gets by default and plan; the local backend falls back to what fits."""
    if spec.backend == "local":
        if spec.gpus:  # named GPUs are planned as asked; only detected ones fall back to what fits
            spec, plan = spec, make_plan(spec)
        else:
            spec = replace(spec, gpus=local_gpus())
            plan = _local_fallback(spec)
        if plan.nodes > 1:
            raise FtctlError("--backend local runs on this machine only: for several nodes use --backend slurm or sky.")
        return spec, plan
    if not spec.gpus:
        raise FtctlError(f"--gpus is required for --backend {spec.backend} (e.g. --gpus 8xA100, or cpu on Slurm).")
    return spec, make_plan(spec)


def _local_fallback(spec: RunSpec) -> Plan:
    """On one local GPU, QLoRA when the requested method does not fit; say what changed and why."""
    from ftctl.plan import PlanError

    try:
        return make_plan(spec)
    except PlanError as first:
        if spec.method == "qlora" or spec.gpus == "cpu":
            raise
        try:
            plan = make_plan(replace(spec, method="qlora"))
        except PlanError:
            raise first from None
        plan.notes.insert(0, f"local: {spec.method} does not fit {spec.gpus}; using qlora instead ({first})")
        return plan


def absolute_paths(spec: RunSpec) -> RunSpec:
    """Local paths made absolute, so the trainer finds them from any working directory."""

    def fix(p):
        if p is None or is_remote(p) or p.startswith("builtin:"):
            return p
        return str(Path(p).expanduser().resolve()) if (Path(p).exists() or p == spec.output) else p

    return replace(
        spec,
        data_path=fix(spec.data_path),
        output_dir=fix(spec.output),
        model_name_or_path=fix(spec.model_name_or_path),
    )


def run_dir_for(spec: RunSpec) -> Path:
    """Where launch writes spec.json, the script and logs: the output dir when local, else runs/<name>."""
    out = spec.output
    return Path(out if not is_remote(out) else Path("runs") / spec.name).expanduser().resolve()


def prepare(spec: RunSpec) -> Prepared:
    spec, plan = resolve(spec)
    if spec.backend == "sky":
        for what, p in (
            ("--data", spec.data_path),
            ("--output", spec.output),
            ("--model", spec.model_name_or_path if Path(spec.model_name_or_path).exists() else ""),
        ):
            if p and not is_remote(p) and not p.startswith("builtin:"):
                raise FtctlError(
                    f"{what} {p!r} is a local path, which a cloud VM cannot see: use an object-store "
                    f"URI (s3://bucket/path, gs://...)."
                )
    else:
        spec = absolute_paths(spec)
    run_dir = run_dir_for(spec)
    spec_json = dump_run(spec, plan)
    if spec.backend == "slurm":
        from ftctl.slurm.render import SCRIPT_NAME, SPEC_NAME, render

        text = render(spec, plan)
        files = {SPEC_NAME: spec_json, SCRIPT_NAME: text}
    elif spec.backend == "sky":
        from ftctl.sky.render import render

        text = render(spec, plan, spec_json)
        files = {"spec.json": spec_json, "task.yaml": text}
    elif spec.backend == "docker":
        from ftctl.docker.render import render

        text = render(spec, plan, str(run_dir))
        files = {"spec.json": spec_json, "docker-run.sh": "#!/bin/sh\nexec " + text}
    else:
        from ftctl.launch import join

        text = join(local_argv(spec, plan, run_dir / "spec.json")) + "\n"
        files = {"spec.json": spec_json}
    return Prepared(spec.backend, spec, plan, run_dir, text, files)


def local_argv(spec: RunSpec, plan: Plan, spec_path) -> list[str]:
    import sys

    from ftctl.launch import torchrun_argv

    if plan.world_size == 1:
        return [sys.executable, "-m", "ftctl.trainer", "--spec", str(spec_path)]
    return torchrun_argv(spec, plan, str(spec_path), head="127.0.0.1", python=sys.executable)


def write_files(prep: Prepared) -> None:
    """Each file written whole (temp file + rename); an existing different spec is never overwritten."""
    prep.run_dir.mkdir(parents=True, exist_ok=True)
    old_spec = prep.run_dir / "spec.json"
    if old_spec.exists():
        old = json.loads(old_spec.read_text())["spec"]
        new = json.loads(prep.files["spec.json"])["spec"]
        changed = sorted(k for k in TRAINING_KEYS if old.get(k) != new.get(k))  # where it runs may change
        if changed:
            raise FtctlError(
                f"{prep.run_dir} already holds a run with different settings ({', '.join(changed)}). "
                f"Choose another --output or -o run_name=..., or remove that directory."
            )
    for name, text in prep.files.items():
        tmp = prep.run_dir / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, prep.run_dir / name)


# ------------------------------------------------------------------------------------------ jobs
def _jobs_file() -> Path:
    return Path(os.environ.get("FTCTL_HOME", Path.home() / ".ftctl")) / "jobs.jsonl"


def record_job(job_id: str, prep: Prepared) -> None:
    f = _jobs_file()
    f.parent.mkdir(parents=True, exist_ok=True)
    with f.open("a") as fh:
        fh.write(
            json.dumps(
                {
                    "job": job_id,
                    "backend": prep.backend,
                    "run_dir": str(prep.run_dir),
                    "name": prep.spec.name,
                    "output": prep.spec.output,
                    "time": time.time(),
                }
            )
            + "\n"
        )


def find_job(job_id: str) -> dict:
    f = _jobs_file()
    if f.exists():
        for line in reversed(f.read_text().splitlines()):
            rec = json.loads(line)
            if rec["job"] == str(job_id):
                return rec
    raise FtctlError(f"No job {job_id!r} was launched from here (looked in {f}). `ftctl launch` prints job ids.")
