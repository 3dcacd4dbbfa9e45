"""Where SkyPilot runs: in this process when ``sky`` imports here, else in the launcher environment.

SkyPilot pins click below what transformers needs, so it lives in its own environment (scripts/setup.sh
makes ``.venv-sky`` with ``ftctl[sky]``; a user's is any venv with ``pip install 'ftctl[sky]'``). From
the trainer environment, each operation of :mod:`ftctl.sky.sdk` runs in that environment's python as
``python -m ftctl.sky.sdk OP RESULT`` (JSON in on stdin, JSON out in RESULT; SkyPilot's output and the
job's logs stream straight through). The launcher python is ``$FTCTL_SKY_PYTHON``, else ``.venv-sky``
beside this source tree; without either, one line says how to install SkyPilot.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from ftctl.errors import FtctlError
from ftctl.sky.sdk import SAY_FD

SOURCE_ROOT = Path(__file__).resolve().parents[2]  # the directory holding the ftctl package
INSTALL_HINT = (
    "SkyPilot is not installed here: it needs its own environment (its click pin conflicts with "
    "transformers): python3 -m venv ~/.venv-sky && ~/.venv-sky/bin/pip install 'ftctl[sky]', then "
    "run ftctl from it or set FTCTL_SKY_PYTHON=~/.venv-sky/bin/python (scripts/setup.sh makes .venv-sky)."
)


STREAMING = ("launch", "logs", "down")


def here() -> bool:
    """SkyPilot imports in this process (the launcher environment)."""
    return importlib.util.find_spec("sky") is not None


def launcher_python() -> str | None:
    """The python of the launcher environment, when this one has no SkyPilot."""
    env = os.environ.get("FTCTL_SKY_PYTHON")
    if env:
        return env if Path(env).exists() else None
    known = SOURCE_ROOT / ".venv-sky" / "bin" / "python"
    return str(known) if known.exists() else None


def where() -> str | None:
    """'here', a launcher python, or None (SkyPilot nowhere to be found)."""
    return "here" if here() else launcher_python()


def call(op: str, **kwargs):
    """Run ``ftctl.sky.sdk.<op>(**kwargs)`` where SkyPilot lives; its result, or FtctlError."""
    if here():
        from ftctl.sky import sdk

        try:
            return sdk.run(op, kwargs)
        except FtctlError:
            raise
        except Exception as e:  # noqa: BLE001 — SkyPilot's own message, without its traceback
            if os.environ.get("FTCTL_DEBUG"):
                raise
            raise FtctlError(f"SkyPilot: {sdk._message(e)}") from None
    python = launcher_python()
    if python is None:
        bad = os.environ.get("FTCTL_SKY_PYTHON")
        raise FtctlError(f"FTCTL_SKY_PYTHON={bad} does not exist. {INSTALL_HINT}" if bad else INSTALL_HINT)
    with tempfile.TemporaryDirectory(prefix="ftctl-sky-") as tmp:
        result = Path(tmp) / "result.json"
        env = dict(os.environ)
        # the same ftctl source runs on both sides, whatever the launcher env has installed
        env["PYTHONPATH"] = os.pathsep.join([str(SOURCE_ROOT), *filter(None, [env.get("PYTHONPATH")])])
        # launch, logs and down stream SkyPilot's output (progress, the job's log); the quick questions
        # keep it back unless they fail without an answer (or FTCTL_DEBUG is set)
        stream = op in STREAMING or bool(os.environ.get("FTCTL_DEBUG"))
        say = None if stream else os.dup(2)  # this stderr, for the lines meant for the user (sdk.say)
        if say is not None:
            env[SAY_FD] = str(say)
        try:
            proc = subprocess.run(
                [python, "-m", "ftctl.sky.sdk", op, str(result)],
                input=json.dumps(kwargs),
                text=True,
                env=env,
                stdout=None if stream else subprocess.PIPE,
                stderr=None if stream else subprocess.STDOUT,
                pass_fds=() if say is None else (say,),
            )
        finally:
            if say is not None:
                os.close(say)
        out = json.loads(result.read_text()) if result.exists() else None
    if out is None:
        if proc.stdout:
            sys.stderr.write(proc.stdout)
        raise FtctlError(f"SkyPilot's python {python} exited {proc.returncode} without an answer ({op}).")
    if "error" in out:
        raise FtctlError(f"SkyPilot: {out['error']}")
    return out["result"]
