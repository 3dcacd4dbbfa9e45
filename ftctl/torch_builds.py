"""Which of torch's wheel builds a node can run: the one owner of torch's CUDA builds and their index.

torch publishes one build per CUDA version (``https://download.pytorch.org/whl/cu130`` ...); releases 2.12 to 2.14
ship cu126 (legacy, the last with Maxwell, Pascal and Volta), cu130 and cu132 (PyPI's default from 2.14); cu128
stopped at 2.11, and is the one 12.x build with Blackwell kernels (pytorch/pytorch#178665, #190355). A build runs
where the NVIDIA driver supports its CUDA version or a later one, and, by CUDA's minor-version compatibility, on
any driver of its major version: a node whose nvidia-smi says "CUDA Version: 12.2" (SkyPilot's default AWS image,
driver 535) runs cu126 but not PyPI's CUDA 13 torch, with which it sees no GPU (skypilot-org/skypilot#9406).

Standard library only (and ftctl's own): ``ftctl.sky.node_stack`` uses it before anything is installed.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass

from ftctl.envvars import TORCH_INDEX_ENV

TORCH_INDEX = "https://download.pytorch.org/whl/"
CPU_BUILD = "cpu"
SMI_CUDA = re.compile(r"CUDA Version:\s*(\d+)\.(\d+)")


@dataclass(frozen=True)
class CudaBuild:
    name: str  # the folder of torch's index
    cuda: tuple[int, int]
    min_capability: tuple[int, int]
    max_capability: tuple[int, int] | None = None
    current: bool = True  # published for torch's current releases

    def runs_under(self, driver_cuda: tuple[int, int]) -> bool:
        return runs_under(self.cuda, driver_cuda)

    def runs_on(self, capability: tuple[int, int] | None) -> bool:
        return capability is None or (
            capability >= self.min_capability and (self.max_capability is None or capability <= self.max_capability)
        )


CUDA_BUILDS = (  # newest first
    CudaBuild("cu132", (13, 2), (7, 5)),
    CudaBuild("cu130", (13, 0), (7, 5)),
    CudaBuild("cu128", (12, 8), (7, 5), current=False),  # torch <= 2.11: Blackwell on a CUDA 12.8 driver
    CudaBuild("cu126", (12, 6), (5, 0), max_capability=(9, 0)),
)


def runs_under(build_cuda: tuple[int, int], driver_cuda: tuple[int, int]) -> bool:
    """Whether a driver that supports ``driver_cuda`` runs a torch built for ``build_cuda`` (a later one, or
    the same major version: CUDA's minor-version compatibility)."""
    return build_cuda <= driver_cuda or build_cuda[0] == driver_cuda[0]


def by_name(name: str) -> CudaBuild | None:
    return next((b for b in CUDA_BUILDS if b.name == name), None)


def build_for(driver_cuda: tuple[int, int], compute_capability: tuple[int, int] | None = None) -> str | None:
    """The build of torch for a driver (the CUDA version it supports) and a GPU of this compute capability: the
    newest current build the driver runs, else an older one (cu128 for Blackwell under a 12.8 driver), else by
    minor-version compatibility the oldest of the driver's major version; None where the driver is older than
    every build's CUDA major version."""
    fits = [b for b in CUDA_BUILDS if b.runs_on(compute_capability)]
    runnable = [b for b in fits if b.cuda <= driver_cuda]
    compatible = [b for b in reversed(fits) if b.cuda[0] == driver_cuda[0]]
    for choices in (runnable, compatible):
        if choices:
            return next((b for b in choices if b.current), choices[0]).name
    return None


def index_url(build: str) -> str:
    """Torch's index for a build (``cu128``, ``cpu``), or the same folder of the mirror in $FTCTL_TORCH_INDEX."""
    return os.environ.get(TORCH_INDEX_ENV, TORCH_INDEX).rstrip("/") + "/" + build


def node_driver_cuda() -> tuple[int, int] | None:
    """The CUDA version this machine's NVIDIA driver supports, as nvidia-smi says; None without one."""
    try:
        smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return driver_cuda(smi or "")


def driver_cuda(nvidia_smi_output: str) -> tuple[int, int] | None:
    """The CUDA version the driver supports, from nvidia-smi's header ("CUDA Version: 12.2")."""
    found = SMI_CUDA.search(nvidia_smi_output)
    return (int(found.group(1)), int(found.group(2))) if found else None
