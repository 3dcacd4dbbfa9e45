"""scripts/setup.sh (the README's first command, through scripts/demo.sh) on a Mac whose python3 is macOS's own
(/usr/bin/python3, Xcode's: Python 3.9): explore50, task 246."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_setup_refuses_a_python_older_than_ftctls_before_installing(tmp_path):
    """With macOS's python3 (3.9) setup made .venv and failed in pip on torch's pin ("No matching distribution found
    for torch==2.13.0": PyPI has none for 3.9), which did not say that the Python was the problem. It says so first."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    for name in ("scripts/setup.sh", "pyproject.toml", "constraints.txt"):
        shutil.copy(REPO / name, repo / name)
    old = tmp_path / "python3"
    old.write_text(  # answers as Python 3.9.6 does the two questions setup asks; makes a venv without pip
        "#!/bin/sh\n"
        'case "$*" in *version_info*) exit 1;; *python_version*) echo 3.9.6; exit 0;; esac\n'
        'if [ "$1" = -m ] && [ "$2" = venv ]; then mkdir -p "$3/bin" && ln -sf /bin/true "$3/bin/python"; fi\n'
    )
    old.chmod(0o755)
    ran = subprocess.run(
        ["bash", str(repo / "scripts" / "setup.sh")],
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHON": str(old)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 1, ran.stderr
    assert f"setup: {old} ({old}) is Python 3.9.6; ftctl needs 3.10 or newer: run it again with PYTHON=" in ran.stderr
    assert not (repo / ".venv" / "bin").exists()
