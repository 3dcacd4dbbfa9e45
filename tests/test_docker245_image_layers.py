"""The runtime stage installs ftctl's dependencies before it copies ftctl's source (explore49).

One RUN installed the flash-attn wheel, ftctl[train] and FA4 right after ``COPY ftctl``: every edit of ftctl's source
missed the cache there, downloaded and installed all of it again (PIP_NO_CACHE_DIR) and made a new layer of
~1.5 GB (transformers, DeepSpeed, bitsandbytes, pyarrow, the wheel, FA4) to push. Now pyproject.toml alone comes
first and its dependencies are installed from it; ftctl itself is installed with --no-deps after its COPY.
No docker engine builds here: the order is read from the Dockerfile, and the RUN's own python line is run on this
checkout's pyproject.toml (the list it writes is what pip installs there).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import tomllib

from tests.test_image import instructions

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "docker" / "Dockerfile"


def runtime_steps() -> list[str]:
    """The runtime stage's instructions, continuation lines joined, comments left out (test_image.instructions)."""
    steps = instructions(DOCKERFILE)
    return steps[next(i for i, s in enumerate(steps) if s.startswith("FROM ") and s.endswith(" AS runtime")) + 1 :]


def test_the_dependencies_layer_comes_before_ftctls_source():
    steps = runtime_steps()
    deps = next(i for i, s in enumerate(steps) if s.startswith("RUN ") and "-r /tmp/ftctl-requirements.txt" in s)
    source = steps.index("COPY ftctl /tmp/ftctl-src/ftctl")
    assert deps < source
    assert "/tmp/wheels/flash_attn-*.whl" in steps[deps] and "${FA4_REQUIREMENT}" in steps[deps]
    # before the dependencies: nothing of ftctl's but pyproject.toml
    copies = [s for s in steps[:deps] if s.startswith("COPY ")]
    assert copies == ["COPY constraints.txt /tmp/constraints.txt", "COPY pyproject.toml /tmp/ftctl-src/"]
    (install,) = [s for s in steps[source:] if s.startswith("RUN ") and "pip install" in s]
    assert "pip install --no-deps /tmp/ftctl-src " in install and "fa4_files_problem" in install


def test_the_requirements_the_image_installs_are_ftctl_trains(tmp_path):
    """The RUN's python line, run on this checkout's pyproject.toml: ftctl's dependencies and its train extra's."""
    (step,) = [s for s in runtime_steps() if "-r /tmp/ftctl-requirements.txt" in s]
    code = re.search(r'python -c "(.*?)" > /tmp/ftctl-requirements.txt', step)[1]
    (tmp_path / "pyproject.toml").write_bytes((ROOT / "pyproject.toml").read_bytes())
    code = code.replace("/tmp/ftctl-src/pyproject.toml", str(tmp_path / "pyproject.toml"))
    listed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert listed == project["dependencies"] + project["optional-dependencies"]["train"]
    assert any(r.startswith("transformers") for r in listed) and any(r.startswith("deepspeed") for r in listed)
