"""The trainer's stack on a SkyPilot node: what a task's setup runs on every node before the run.

    python3 -m ftctl.sky.node_stack [--gpu TIER] REQUIREMENT...
    python3 -m ftctl.sky.node_stack --print-python   (the run section's: the python that runs ftctl's torchrun)

The stack goes where the run will look for it: the python of the ``torchrun`` on the node's PATH (an image's,
a cluster environment's), else the python running this. (SkyPilot 0.14 runs setup and run in ~/sky-user-env
on VMs and bare Slurm nodes without conda: a venv over the python3 on the node's PATH, which sees that python's
system packages but not a venv's; what is installed into it lands in it, torchrun included.)
A node that has the stack keeps it: pip adds only what is missing or too old, with the node's torch held at its
version, so a torch whose CUDA the driver runs is never replaced by PyPI's default. Where torch is missing it
comes from torch's index for the CUDA version the node's driver supports (nvidia-smi's "CUDA Version",
ftctl.torch_builds), or its CPU index for a CPU plan (no --gpu): PyPI's own torch is a CUDA build whose CUDA
may be newer than the driver (SkyPilot's default AWS image, driver 535, sees no GPU with it). Standard library
only: nothing else is installed yet.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import sys

from ftctl import torch_builds
from ftctl.envvars import TORCH_INDEX_ENV
from ftctl.errors import FtctlError
from ftctl.gpus import TIERS

MIN_PYTHON = (3, 10)  # pyproject.toml's requires-python
LOCK_FILE = ".ftctl-node-stack.lock"  # in the environment's prefix: one setup installs there at a time
# the interpreter in pip's console-script launchers: "#!/path/python", or for a long path "'''exec' '/path/python'"
SCRIPT_PYTHON = re.compile(
    r"^(?:#!\s*(/\S*python[\d.]*)|'''exec'\s+(?:'(/[^']*python[\d.]*)'|(/\S*python[\d.]*)))", re.M
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m ftctl.sky.node_stack", description=__doc__)
    parser.add_argument("--gpu", help="the plan's GPU tier (as in --gpus); none for a CPU plan")
    parser.add_argument(
        "--print-python", action="store_true", help="print the python the stack goes to (the run's) and stop"
    )
    parser.add_argument("requirements", nargs="*", help="ftctl's train extra, as pinned by its metadata")
    args = parser.parse_args(argv)
    if args.print_python:
        print(target_python())
        return 0
    if not args.requirements:
        parser.error("name the requirements to install")
    try:
        capability = TIERS[args.gpu].compute_capability if args.gpu else None
        install(target_python(), args.requirements, capability, gpu=bool(args.gpu))
    except FtctlError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def install(python: str, requirements: list[str], compute_capability: tuple[int, int] | None, gpu: bool) -> None:
    version = _ask(python, "import sys; print('%d.%d.%d' % sys.version_info[:3])")
    if version is None or tuple(map(int, version.split("."))) < MIN_PYTHON:
        raise FtctlError(
            f"{python} is Python {version or '(it did not start)'}; ftctl's trainer needs Python "
            f"{'.'.join(map(str, MIN_PYTHON))} or newer: use an image that has it (--container docker:IMAGE)."
        )
    with _one_at_a_time(python):
        _install(python, requirements, compute_capability, gpu)


@contextlib.contextmanager
def _one_at_a_time(python: str):
    """Nodes that share the environment (SkyPilot's ~/sky-user-env in a Slurm cluster's shared $HOME) take turns:
    two pips writing one site-packages at once can leave it broken; the later one then finds the stack there."""
    prefix = _ask(python, "import sys; print(sys.prefix)")
    try:
        lock = open(os.path.join(prefix, LOCK_FILE), "a") if prefix else None
    except OSError:  # a read-only prefix: pip could not write there either, and says so
        lock = None
    try:
        if lock is not None:
            fcntl.lockf(lock, fcntl.LOCK_EX)  # POSIX locks, which NFS carries
        yield
    finally:
        if lock is not None:
            lock.close()  # releases the lock


def _install(python: str, requirements: list[str], compute_capability: tuple[int, int] | None, gpu: bool) -> None:
    torch_req = next((r for r in requirements if _name(r) == "torch"), "torch")
    others = [r for r in requirements if _name(r) != "torch"]
    if installed(python, "torch") is None:
        build = torch_build(gpu, compute_capability)
        index = ["--index-url", torch_builds.index_url(build)] if build else []
        print(f"ftctl: {python} has no torch: installing torch's {build or 'PyPI'} build", flush=True)
        pip(
            python,
            [torch_req, *index],
            fail=f"pip could not install torch from {index[-1] if index else 'PyPI'} (its message is above): "
            f"check that the node reaches it, or name a mirror of torch's index in {TORCH_INDEX_ENV}.",
        )
    torch = installed(python, "torch")
    if gpu:
        check_held_torch(python, torch)
    print(f"ftctl: {python}: torch {torch} is held; adding what the trainer needs beside it", flush=True)
    pip(
        python,
        [f"torch=={torch}", *others],
        fail=f"pip could not add the trainer's stack beside this node's torch {torch} (its message is above): where "
        "it found no version, check that the node reaches PyPI (or the mirror in PIP_INDEX_URL); where a package "
        f"needs another torch, use an image whose torch satisfies {torch_req!r}, or one without torch, which ftctl "
        "then installs.",
    )


def check_held_torch(python: str, version: str) -> None:
    """Stop the setup where the node's torch cannot use its GPUs: a CPU-only build, or one whose CUDA the driver
    does not run (an image with torch's CUDA 13 build on a VM whose driver is 535, SkyPilot's default on AWS)."""
    cuda = _ask(python, "import torch; print(torch.version.cuda or '')")
    driver = torch_builds.node_driver_cuda()
    if cuda is None or driver is None:  # torch did not import (the trainer says why), or no nvidia-smi here
        return
    built = tuple(int(x) for x in cuda.split(".")[:2]) if cuda else None
    if built is not None and torch_builds.runs_under(built, driver):
        return
    fits = torch_builds.build_for(driver)
    fixes = ["a newer NVIDIA driver"] if fits is None else []
    if fits:
        fixes.append(
            f"torch's {fits} build (pip install torch --index-url {torch_builds.index_url(fits)}; with --container "
            f"none ftctl installs it on the node; `ftctl build --cuda {fits}` makes an image with it)"
        )
    if built:
        fixes.append(f"a node image whose driver supports CUDA {cuda} (SkyPilot: image_id)")
    what = (
        f"built for CUDA {cuda}, which this node's NVIDIA driver (CUDA {driver[0]}.{driver[1]}) cannot run"
        if built
        else "a CPU-only build, on a GPU node"
    )
    raise FtctlError(f"{python} has torch {version}, {what}: use {', or '.join(fixes)}.")


def target_python() -> str:
    """The python the run's torchrun will start: the one in the launcher of a torchrun on PATH, else this one
    (a torch installed into it puts its torchrun on the same PATH)."""
    torchrun = shutil.which("torchrun")
    if torchrun:
        try:
            with open(torchrun, encoding="utf-8", errors="replace") as f:
                found = SCRIPT_PYTHON.search(f.read(1024))
        except OSError:
            found = None
        python = next((g for g in found.groups() if g), None) if found else None
        if python and os.access(python, os.X_OK):
            return python
    return sys.executable


def torch_build(gpu: bool, compute_capability: tuple[int, int] | None) -> str | None:
    """The build of torch to install here; None for PyPI's default (a GPU node whose driver nvidia-smi
    does not report)."""
    if not gpu:
        return torch_builds.CPU_BUILD
    cuda = torch_builds.node_driver_cuda()
    if cuda is None:
        print("ftctl: nvidia-smi reports no CUDA version here: PyPI's default torch build", flush=True)
        return None
    build = torch_builds.build_for(cuda, compute_capability)
    if build is None:
        oldest = min(b.cuda[0] for b in torch_builds.CUDA_BUILDS)
        raise FtctlError(
            f"this node's NVIDIA driver supports CUDA {cuda[0]}.{cuda[1]}; torch's builds need CUDA {oldest}.0 or "
            "newer: use an image with a newer driver (image_id, or --container docker:IMAGE)."
        )
    print(f"ftctl: the NVIDIA driver supports CUDA {cuda[0]}.{cuda[1]}: torch's {build} build", flush=True)
    return build


def pip(python: str, args: list[str], fail: str) -> None:
    """pip of that python, or uv's pip for it where it has none (a venv that ``uv venv`` made without --seed)."""
    uv = shutil.which("uv") or shutil.which("uv", path=os.path.expanduser("~/.local/bin"))  # SkyPilot puts uv there
    if _ask(python, "import pip") is not None:
        command = [python, "-m", "pip", "install", "-q"]
    elif uv:
        command = [uv, "pip", "install", "-q", "--python", python]
    else:
        raise FtctlError(f"{python} has no pip, and there is no uv: use an image whose python has pip.")
    if subprocess.run([*command, *args]).returncode != 0:
        raise FtctlError(fail)


def installed(python: str, dist: str) -> str | None:
    """The version of a distribution that python has, None where it has none."""
    return _ask(python, f"import importlib.metadata as m; print(m.version({dist!r}))")


def _ask(python: str, code: str) -> str | None:
    try:
        done = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[(]", requirement, maxsplit=1)[0].lower()


if __name__ == "__main__":
    sys.exit(main())
