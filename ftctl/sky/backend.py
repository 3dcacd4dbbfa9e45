"""The SkyPilot backend: a self-contained task YAML handed to SkyPilot.

SkyPilot lives in its own environment (its click pin conflicts with transformers): nothing here
imports ``sky`` at module level, and ``import sky`` (1-3 s, writes under ~/.sky) happens only in the
commands that talk to SkyPilot.
"""

from __future__ import annotations

import importlib.util

import click

from ftctl.backend import Backend, JobRef, Rendered
from ftctl.launch import join
from ftctl.sky import render as sky_render


class SkyBackend(Backend):
    name = "sky"
    options = frozenset({"spot", "cloud", "region", "disk_size", "container", "setup"})
    needs_local_paths = False  # the cloud's machines cannot see this one's files

    def render(self, spec, plan, paths, spec_json):
        text = sky_render.render(spec, plan, spec_json)
        return text, {paths.spec.name: spec_json, paths.task.name: text}

    def available(self) -> bool | str:
        """True when SkyPilot is importable here, else why not (one line)."""
        if importlib.util.find_spec("sky") is None:
            return "SkyPilot is not installed in this environment (pip install 'ftctl[sky]' in its own venv)"
        return True

    def send(self, rendered: Rendered) -> JobRef:
        task = rendered.paths.task
        spec = rendered.spec
        secrets = [a for name in spec.secrets for a in ("--secret", name)]
        cmd = (["sky", "jobs", "launch", "-n", spec.name] if spec.spot else ["sky", "launch", "-c", spec.name]) + [
            *secrets,
            str(task),
        ]
        click.echo(f"task written to {task}")
        click.echo("launch it from the environment where SkyPilot is installed:")
        click.echo("  " + join(cmd))
        return JobRef("sky", spec.name, str(rendered.paths.root), spec.name, spec.output)

    def status(self, ref: JobRef):
        from ftctl.errors import FtctlError

        raise FtctlError(
            "status/logs/cancel of SkyPilot runs: use `sky jobs queue`, `sky jobs logs NAME` and `sky jobs cancel "
            "-n NAME` (or `sky status/logs/down` for a cluster)."
        )

    def doctor(self, gpus, partition) -> bool:
        why = self.available()
        click.echo(f"skypilot: {'installed' if why is True else why}")
        return why is True
