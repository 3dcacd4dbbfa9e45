"""The trainer's stack on a SkyPilot node (ftctl.sky.node_stack) and the torch build a driver runs.

The installs are real: pip in a fresh virtual environment. What cannot be reached from here stands in at its
outermost boundary: torch's index and PyPI are local folders of small wheels (pip reads a folder as an index),
and nvidia-smi is a script that prints a real header with the CUDA version of the driver being played.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from ftctl import torch_builds
from ftctl.envvars import TORCH_INDEX_ENV
from ftctl.errors import FtctlError
from ftctl.sky import node_stack
from ftctl.sky.node_stack import torch_build

REPO = Path(__file__).resolve().parents[1]

# nvidia-smi's header on the device machine's H200 host, and on SkyPilot's AWS image (skypilot-org/skypilot#9406)
SMI_H200 = (
    "+-----------------------------------------------------------------------------------------+\n"
    "| NVIDIA-SMI 580.159.04             Driver Version: 580.159.04     CUDA Version: 13.0     |\n"
    "+-----------------------------------------+------------------------+----------------------+\n"
)
SMI_535 = "| NVIDIA-SMI 535.216.01             Driver Version: 535.216.01   CUDA Version: 12.2     |\n"


@pytest.mark.parametrize(
    "cuda, capability, build",
    [
        ((13, 0), (9, 0), "cu130"),
        ((13, 1), (9, 0), "cu130"),
        ((13, 2), (10, 0), "cu132"),
        ((14, 1), (9, 0), "cu132"),  # a driver newer than every build runs the newest
        ((13, 0), None, "cu130"),
        ((12, 9), (9, 0), "cu126"),  # cu128 is not built for torch's current releases: cu126 runs here
        ((12, 8), (10, 0), "cu128"),  # ... but has no Blackwell kernels: torch <= 2.11's cu128
        ((12, 2), (9, 0), "cu126"),  # driver 535: CUDA's minor-version compatibility within 12.x
        ((12, 0), None, "cu126"),
        ((13, 0), (7, 0), "cu126"),  # V100: only the cu126 build has Volta's kernels
        ((12, 2), (7, 5), "cu126"),
        ((13, 0), (7, 5), "cu130"),  # T4
        ((11, 8), (8, 0), None),
    ],
)
def test_the_build_a_driver_runs(cuda, capability, build):
    assert torch_builds.build_for(cuda, capability) == build


def test_the_driver_cuda_version_from_nvidia_smi():
    assert torch_builds.driver_cuda(SMI_H200) == (13, 0)
    assert torch_builds.driver_cuda(SMI_535) == (12, 2)
    assert torch_builds.driver_cuda("NVIDIA-SMI has failed because it couldn't communicate with the driver") is None


def test_a_mirror_of_torchs_index(monkeypatch):
    assert torch_builds.index_url("cu128") == "https://download.pytorch.org/whl/cu128"
    monkeypatch.setenv(TORCH_INDEX_ENV, "https://mirror.lab/torch/")
    assert torch_builds.index_url("cpu") == "https://mirror.lab/torch/cpu"


def test_a_cpu_plan_takes_the_cpu_build_and_a_driver_too_old_is_refused(tmp_path, monkeypatch):
    assert torch_build(False, None) == "cpu"
    _smi(tmp_path, "| NVIDIA-SMI 520.61.05    Driver Version: 520.61.05    CUDA Version: 11.8     |")
    monkeypatch.setenv("PATH", str(tmp_path))  # the stand-in only (a GPU machine's own nvidia-smi stays out)
    with pytest.raises(FtctlError, match=r"supports CUDA 11\.8; torch's builds need CUDA 12\.0 or newer: use an image"):
        torch_build(True, (8, 0))
    (tmp_path / "nvidia-smi").unlink()
    assert torch_build(True, (8, 0)) is None  # no nvidia-smi: PyPI's default build, said in the setup's log


# ------------------------------------------------------------------------------------ real pip, local indexes


def _smi(folder: Path, header: str) -> None:
    smi = folder / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\nprintf '%s\\n' '{header.rstrip()}'\n")  # a shell builtin: PATH may hold only this
    smi.chmod(0o755)


TORCH_CUDA = {"cu126": "12.6", "cu128": "12.8", "cu130": "13.0", "cu132": "13.2", "cpu": None}


def _wheel(index: Path, name: str, version: str, requires: tuple[str, ...] = (), init: str = "") -> None:
    """A small real wheel, in the layout pip reads as an index (<index>/<name>/index.html, as a web server's)."""
    folder = index / name
    folder.mkdir(parents=True, exist_ok=True)
    dist = f"{name}-{version}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires
    )
    files = {
        f"{name}/__init__.py": f"__version__ = {version!r}\n{init}",
        f"{dist}/METADATA": metadata,
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: ftctl-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as whl:
        for path, text in files.items():
            whl.writestr(path, text)
        whl.writestr(f"{dist}/RECORD", "".join(f"{p},,\n" for p in [*files, f"{dist}/RECORD"]))
    links = "".join(f'<a href="{w.name}">{w.name}</a>\n' for w in sorted(folder.glob("*.whl")))
    (folder / "index.html").write_text(f"<!DOCTYPE html><html><body>\n{links}</body></html>\n")


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    """A bare node: a fresh venv (no torch) as the setup's python3, torch's index and PyPI as local folders,
    nvidia-smi of driver 535, and no torchrun on PATH."""
    base = tmp_path_factory.mktemp("node")
    subprocess.run([sys.executable, "-m", "venv", str(base / "venv")], check=True)
    for build, cuda in TORCH_CUDA.items():  # torch.version.cuda as torch's builds say it
        _wheel(base / "torch-index" / build, "torch", f"2.99.0+{build}", init=f"class version:\n    cuda = {cuda!r}\n")
    pypi = base / "pypi"
    _wheel(pypi, "torch", "2.99.0", init="class version:\n    cuda = '13.0'\n")  # PyPI's default: CUDA 13
    _wheel(pypi, "trl", "1.5.0", requires=("torch>=2.4",))
    _wheel(pypi, "peft", "0.99.0", requires=("torch>=2.4",))
    _wheel(pypi, "needsnewtorch", "1.0.0", requires=("torch>=3.0",))
    (base / "bin").mkdir()
    _smi(base / "bin", SMI_535)
    env = {  # pip's settings of this machine (a folder of local wheels, a config file) are not the node's
        **{k: v for k, v in os.environ.items() if not k.startswith("PIP_")},
        "PIP_CONFIG_FILE": os.devnull,
        "PATH": f"{base / 'bin'}:/usr/bin:/bin",
        "PYTHONPATH": str(REPO),
        TORCH_INDEX_ENV: (base / "torch-index").as_uri(),
        "PIP_INDEX_URL": pypi.as_uri(),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_NO_CACHE_DIR": "1",
    }
    return base, env


def _stack(node, *args):
    base, env = node
    return subprocess.run(
        [str(base / "venv" / "bin" / "python"), "-m", "ftctl.sky.node_stack", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _version(python: Path, dist: str) -> str | None:
    return node_stack.installed(str(python), dist)


def test_a_bare_node_gets_the_torch_its_driver_runs_and_keeps_it(node):
    """Driver 535 (CUDA 12.2): torch's cu126 build, not PyPI's; then the rest of the stack beside it. A second
    setup (a node whose nvidia-smi now says 13.0, as after a driver update) leaves the installed torch alone."""
    python = node[0] / "venv" / "bin" / "python"
    done = _stack(node, "--gpu", "H100", "torch>=2.4", "trl>=1.0,<2")
    assert done.returncode == 0, done.stderr
    assert f"ftctl: {python} has no torch" in done.stdout
    assert "the NVIDIA driver supports CUDA 12.2: torch's cu126 build" in done.stdout
    assert _version(python, "torch") == "2.99.0+cu126" and _version(python, "trl") == "1.5.0"

    _smi(node[0] / "bin", SMI_H200)
    again = _stack(node, "--gpu", "H100", "torch>=2.4", "trl>=1.0,<2")
    assert again.returncode == 0, again.stderr
    assert "has no torch" not in again.stdout and f"{python}: torch 2.99.0+cu126 is held" in again.stdout
    assert _version(python, "torch") == "2.99.0+cu126"


def test_a_package_that_wants_another_torch_stops_the_setup_instead_of_replacing_it(node):
    python = node[0] / "venv" / "bin" / "python"
    done = _stack(node, "--gpu", "H100", "torch>=2.4", "needsnewtorch")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "error: pip could not add the trainer's stack beside this node's torch 2.99.0+cu126" in done.stderr
    assert _version(python, "torch") == "2.99.0+cu126" and _version(python, "needsnewtorch") is None


def _environment_with_torch(node, tmp_path, build: str) -> tuple[Path, dict]:
    """A venv holding torch's ``build`` whose torchrun is on PATH (an image's, a cluster's environment)."""
    base, env = node
    venv = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    index = (base / "torch-index" / build).as_uri()
    subprocess.run([str(python), "-m", "pip", "install", "-q", "torch", "--index-url", index], env=env, check=True)
    (tmp_path / "bin").mkdir()
    torchrun = tmp_path / "bin" / "torchrun"  # pip's launcher, as a torch install writes it
    torchrun.write_text(f"#!{python}\nimport sys\nfrom torch.distributed.run import main\n")
    torchrun.chmod(0o755)
    return python, {**env, "PATH": f"{tmp_path / 'bin'}:{env['PATH']}"}


@pytest.mark.parametrize(
    "build, said",
    [
        (
            "cu130",
            "built for CUDA 13.0, which this node's NVIDIA driver (CUDA 12.2) cannot run: use torch's cu126 build (pip "
            "install torch --index-url {index}/cu126; with --container none ftctl installs it on the node; `ftctl "
            "build --cuda cu126` makes an image with it), or a node image whose driver supports CUDA 13.0 (SkyPilot: "
            "image_id).",
        ),
        (
            "cpu",
            "a CPU-only build, on a GPU node: use torch's cu126 build (pip install torch --index-url {index}/cu126",
        ),
    ],
)
def test_a_held_torch_the_nodes_driver_cannot_run_stops_the_setup(node, tmp_path, build, said):
    """An image with torch's CUDA 13 build on a VM whose driver is 535 (SkyPilot's default on AWS), or a CPU
    build on a GPU node: the setup stops with why and what to use, instead of the run finding no GPU."""
    base, env = node
    _smi(base / "bin", SMI_535)
    python, env = _environment_with_torch(node, tmp_path, build)
    done = _stack((base, env), "--gpu", "H100", "torch>=2.4", "trl")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    expected = f"error: {python} has torch 2.99.0+{build}, " + said.format(index=env[TORCH_INDEX_ENV])
    assert done.stderr.strip().splitlines()[-1].startswith(expected), done.stderr
    assert _version(python, "trl") is None  # nothing was added beside it


def test_the_stack_goes_to_the_python_of_the_torchrun_on_path(node, tmp_path):
    """A cluster's environment (a venv with torch, its torchrun on PATH) seen from SkyPilot's ~/sky-user-env,
    which does not see a venv's packages: what is missing goes beside the torch the run's torchrun starts."""
    base, _ = node
    cluster_python, env = _environment_with_torch(node, tmp_path, "cu128")
    done = _stack((base, env), "--gpu", "H100", "torch>=2.4", "peft")
    assert done.returncode == 0, done.stderr
    assert f"ftctl: {cluster_python}: torch 2.99.0+cu128 is held" in done.stdout
    assert _version(cluster_python, "peft") == "0.99.0" and _version(cluster_python, "torch") == "2.99.0+cu128"
    assert _version(base / "venv" / "bin" / "python", "peft") is None  # the setup's own python is left alone
    # the run section asks the same question: ftctl's torchrun starts in that python
    assert _stack((base, env), "--print-python").stdout.strip() == str(cluster_python)
    assert _stack(node, "--print-python").stdout.strip() == str(base / "venv" / "bin" / "python")  # no torchrun


def test_two_nodes_sharing_one_environment_take_turns(node, tmp_path):
    """Two nodes' setups at once into one environment (SkyPilot's ~/sky-user-env in a Slurm cluster's shared
    $HOME): one installs torch; the other waits for it, then finds torch there and holds it."""
    base, env = node
    _smi(base / "bin", SMI_H200)
    shared = tmp_path / "sky-user-env"
    subprocess.run([sys.executable, "-m", "venv", str(shared)], check=True)
    args = [str(shared / "bin" / "python"), "-m", "ftctl.sky.node_stack", "--gpu", "H100", "torch>=2.4", "trl"]
    nodes = [subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in "ab"]
    outs = [p.communicate(timeout=300) for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], outs
    said = "".join(out for out, _ in outs)
    assert said.count("has no torch") == 1 and said.count("torch 2.99.0+cu130 is held") == 2, said
    assert _version(shared / "bin" / "python", "trl") == "1.5.0"


def test_a_python_too_old_for_the_trainer_is_said(tmp_path):
    old = tmp_path / "python3.8"  # a stand-in that answers as Python 3.8 does
    old.write_text("#!/bin/sh\necho 3.8.10\n")
    old.chmod(0o755)
    with pytest.raises(FtctlError, match=rf"{old} is Python 3\.8\.10; ftctl's trainer needs Python 3\.10 or newer"):
        node_stack.install(str(old), ["torch>=2.4"], None, gpu=False)
