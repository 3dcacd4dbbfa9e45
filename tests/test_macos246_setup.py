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


def test_setups_stamp_is_the_same_where_only_shasum_is(tmp_path):
    """The stamp that says whether .venv is up to date hashed with sha256sum, which macOS may lack (it has Perl's
    shasum): setup failed after installing, or installed again every time. Where only shasum is, the stamp is the
    same as sha256sum's (the session's review of bd3bc8a)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("cut", "shasum", "perl", "cat"):  # what a Mac has of them (shasum is a Perl script)
        if found := shutil.which(tool):
            (bin_dir / tool).symlink_to(found)
    script = (REPO / "scripts" / "setup.sh").read_text()
    helpers = "\n".join(line for line in script.splitlines() if line.startswith(("sha() ", "stamp() ")))

    def stamp(path: str) -> str:
        ran = subprocess.run(["/bin/bash", "-c", f"{helpers}\nstamp"], cwd=REPO, env={"PATH": path},
                             capture_output=True, text=True, timeout=30)  # fmt: skip
        assert ran.returncode == 0 and len(ran.stdout.strip()) == 16, ran.stderr
        return ran.stdout.strip()

    assert not shutil.which("sha256sum", path=str(bin_dir))
    assert stamp(str(bin_dir)) == stamp("/usr/bin:/bin")
