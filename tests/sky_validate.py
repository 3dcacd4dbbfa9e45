"""Validate rendered SkyPilot task YAMLs offline with the real SkyPilot library.

    python -m tests.sky_validate [--json] FILE...

prints ``OK FILE: ...`` or ``FAIL FILE: reason`` per file (one JSON object a line with ``--json``)
and exits 1 when any file fails. One process validates many files: ``import sky`` alone takes ~2 s.
It runs where SkyPilot is installed (``.venv-sky``: SkyPilot pins click<8.2, so it cannot share the
trainer's environment); nothing else of ftctl is imported but ``ftctl.gpus``.

No cloud credentials, no network, no API server. The checks:

- ``sky.Task.from_yaml_str``: SkyPilot's JSON schema and the Task/Resources/Storage constructors;
- ``Task.validate_name`` and the job_recovery strategy against SkyPilot's registry (two checks
  ``from_yaml_str`` does not run itself);
- ftctl's own promises about what it renders: one resource whose accelerator is a GPU type of
  ftctl's table (SkyPilot accepts any name offline, ``8xA100`` included); secrets declared by name
  with no value (SkyPilot turns each into a reference it resolves at launch); the torchrun line's
  ``--nnodes`` and ``--nproc-per-node`` equal to ``num_nodes`` and the accelerator count; the
  spec.json shipped in the run section agreeing with both.

``import sky`` writes under ``~/.sky`` and may send usage telemetry: HOME is pointed at a temporary
directory (``FTCTL_SKY_ISOLATE_HOME=0`` keeps the real one) and telemetry is turned off before
SkyPilot is imported.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys

from ftctl.errors import FtctlError

_sky = None


class TaskInvalid(FtctlError):
    """A rendered task YAML that SkyPilot (or ftctl's own check) refuses."""


def _import_sky():
    """SkyPilot, imported once with HOME isolated and telemetry off."""
    global _sky
    if _sky is None:
        import atexit
        import shutil
        import tempfile

        os.environ.setdefault("SKYPILOT_DISABLE_USAGE_COLLECTION", "1")
        if os.environ.get("FTCTL_SKY_ISOLATE_HOME", "1") == "1":
            home = tempfile.mkdtemp(prefix="ftctl-skyhome-")
            os.environ["HOME"] = home
            atexit.register(shutil.rmtree, home, True)
        import sky

        _sky = sky
    return _sky


def validate_task_yaml(text: str) -> dict:
    """Check one task YAML; returns a summary (name, num_nodes, accelerators, use_spot, job_recovery,
    secrets, envs) or raises TaskInvalid with SkyPilot's (or ftctl's) reason."""
    sky = _import_sky()
    from sky import exceptions as sky_exceptions
    from sky.utils import registry

    try:
        task = sky.Task.from_yaml_str(text)
        task.validate_name()  # not run by from_yaml_str()
        for res in task.resources:
            strategy = (res.job_recovery or {}).get("strategy")
            if strategy is not None:  # the client side accepts any string
                registry.JOBS_RECOVERY_STRATEGY_REGISTRY.from_str(strategy)
    except (ValueError, sky_exceptions.InvalidSkyPilotConfigError) as e:
        raise TaskInvalid(str(e)) from e
    summary = _summary(task)
    _check_ftctl(task, summary, text)
    return summary


def _summary(task) -> dict:
    res = list(task.resources)
    return {
        "name": task.name,
        "num_nodes": task.num_nodes,
        "accelerators": [dict(r.accelerators or {}) for r in res],
        "use_spot": [bool(r.use_spot) for r in res],
        "job_recovery": [r.job_recovery for r in res],
        "disk_size": [r.disk_size for r in res],
        "memory": [r.memory for r in res],
        "image_id": [r.image_id for r in res],
        # null-valued secrets become references resolved at launch; inline ones carry a value
        "secrets": [ref.name for ref in getattr(task, "_managed_secret_refs", None) or []],
        "inline_secrets": sorted(task.secrets),
        "envs": dict(task.envs),
        "file_mounts": {k: str(v.source) for k, v in (task.storage_mounts or {}).items()},
    }


def _check_ftctl(task, summary: dict, text: str) -> None:
    from ftctl.gpus import TIERS

    errors = []
    if len(summary["accelerators"]) != 1 or len(summary["accelerators"][0]) != 1:
        raise TaskInvalid(f"expected one resource with one accelerator type, got {summary['accelerators']}")
    ((acc, count),) = summary["accelerators"][0].items()
    known = {t.sky_name for t in TIERS.values()}
    if acc not in known:
        errors.append(f"accelerator {acc!r} is not a GPU type ftctl knows ({', '.join(sorted(known))})")
    if summary["inline_secrets"]:
        errors.append(
            f"secrets {summary['inline_secrets']} carry a value in the YAML: declare them by name only (NAME: null)"
        )
    import yaml

    declared = (yaml.safe_load(text) or {}).get("secrets") or {}
    if sorted(summary["secrets"]) != sorted(declared):
        errors.append(f"declared secrets {sorted(declared)} came through as {sorted(summary['secrets'])}")

    run = task.run if isinstance(task.run, str) else ""
    lines = [  # torchrun on PATH, or ftctl's (python -m ftctl.trainer.torchrun), with torchrun's arguments
        ln for ln in run.splitlines() if ln.strip().startswith("torchrun ") or " -m ftctl.trainer.torchrun " in ln
    ]
    training = [ln for ln in lines if " -m ftctl.trainer --spec " in ln]
    if len(training) != 1:
        errors.append(f"the run section should hold one torchrun line of the trainer, found {len(training)}")
    for line in lines:  # the trainer's, and the network preflight's in the same shape
        argv = shlex.split(line)
        opts = {argv[i]: argv[i + 1] for i in range(len(argv) - 1) if argv[i].startswith("--")}
        if opts.get("--nnodes") != str(task.num_nodes):
            errors.append(f"torchrun --nnodes {opts.get('--nnodes')} but num_nodes is {task.num_nodes}")
        if opts.get("--nproc-per-node") != str(count):
            errors.append(
                f"torchrun --nproc-per-node {opts.get('--nproc-per-node')} but accelerators ask for {acc}:{count}"
            )
    m = re.search(r"<<'(\w+)'\n(.*?)\n\1\n", run, re.S)
    if not m:
        errors.append("the run section does not ship spec.json in a quoted heredoc")
    else:
        try:
            plan = json.loads(m.group(2))["plan"]
        except (ValueError, KeyError) as e:
            errors.append(f"the spec.json in the run section does not parse: {e}")
        else:
            got = (plan.get("nodes"), plan.get("gpus_per_node"), plan.get("tier"))
            if got != (task.num_nodes, count, acc):
                errors.append(
                    f"spec.json plans nodes/gpus/tier {got} but the task asks for {(task.num_nodes, count, acc)}"
                )
    if errors:
        raise TaskInvalid("; ".join(errors))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.sky_validate", description=__doc__.split("\n")[0])
    ap.add_argument("files", nargs="+", metavar="FILE")
    ap.add_argument("--json", action="store_true", help="one JSON object a line: file, ok, error or summary")
    args = ap.parse_args(argv)
    failed = 0
    for path in args.files:
        try:
            with open(path) as fh:
                summary, error = validate_task_yaml(fh.read()), None
        except Exception as e:  # noqa: BLE001  (any refusal is a failed file, reported with its type)
            summary, error = None, (str(e) if isinstance(e, FtctlError) else f"{type(e).__name__}: {e}")
            failed += 1
        if args.json:
            print(json.dumps({"file": path, "ok": error is None, "error": error, "summary": summary}, default=str))
        elif error is None:
            acc = summary["accelerators"][0]
            print(
                f"OK {path}: name={summary['name']} nodes={summary['num_nodes']} accelerators={acc} "
                f"spot={summary['use_spot'][0]} secrets={summary['secrets']}"
            )
        else:
            print(f"FAIL {path}: {error}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
