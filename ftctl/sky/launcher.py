"""Hand a rendered task to SkyPilot.

ftctl writes the task YAML and spec into the run directory and prints the SkyPilot command that
launches it; launching through SkyPilot's SDK from ftctl itself (and status/logs/cancel through it)
is the "SkyPilot launch" issue's work. SkyPilot lives in its own environment (its click pin
conflicts with transformers), so the command runs there.
"""

from __future__ import annotations

import click

from ftctl.backends import Prepared
from ftctl.errors import FtctlError
from ftctl.launch import join


def launch(prep: Prepared) -> str:
    task = prep.run_dir / "task.yaml"
    secrets = [a for name in prep.spec.secrets for a in ("--secret", name)]
    cmd = (
        ["sky", "jobs", "launch", "-n", prep.spec.name] if prep.spec.spot else ["sky", "launch", "-c", prep.spec.name]
    ) + [*secrets, str(task)]
    click.echo(f"task written to {task}")
    click.echo("launch it from the environment where SkyPilot is installed:")
    click.echo("  " + join(cmd))
    return prep.spec.name


def _unsupported(*_a, **_k):
    raise FtctlError(
        "status/logs/cancel of SkyPilot runs: use `sky jobs queue`, `sky jobs logs NAME` and "
        "`sky jobs cancel -n NAME` (or `sky status/logs/down` for a cluster) until ftctl drives SkyPilot."
    )


status = logs = cancel = _unsupported
