"""A stand-in nvidia-smi for the tests of what ftctl reads of this machine's GPUs (ftctl.local.backend.local_cards):
there is no GPU here, and a workstation's cards are what nvidia-smi answers of them. One script on PATH, set by
pytest's monkeypatch (undone after the test), so that ftctl in this process and in subprocesses started with the
returned environment reads the same cards."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest


def fake_nvidia_smi(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *rows: str, code: int = 0, header: str = ""
) -> dict[str, str]:
    """Put first on PATH an nvidia-smi whose ``--query-gpu`` prints ``rows`` (each 'NAME, MiB', one a GPU in its
    numbering, as ``--query-gpu=name,memory.total --format=csv,noheader,nounits`` writes them; or the one line of its
    failure, "No devices were found") and exits ``code``; called otherwise it prints ``header`` (its table's top, which
    says the driver's CUDA version), nothing where none is given. Returns the environment for a subprocess of ftctl:
    this one's (PATH with the stand-in) with HF_HUB_OFFLINE=1 (models sized without the Hub)."""
    where = tmp_path / "fake-nvidia-smi"
    where.mkdir(exist_ok=True)
    (where / "rows").write_text("".join(f"{row}\n" for row in rows))
    (where / "header").write_text(f"{header}\n" if header else "")
    script = where / "nvidia-smi"
    script.write_text(
        "#!/bin/sh\n"
        f'case "$1" in --query-gpu*) cat {shlex.quote(str(where / "rows"))};; '
        f"*) cat {shlex.quote(str(where / 'header'))};; esac\n"
        f"exit {int(code)}\n"
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{where}{os.pathsep}{os.environ['PATH']}")
    return {**os.environ, "HF_HUB_OFFLINE": "1"}
