"""Which of torch's wheel builds a node can run: the one owner of torch's CUDA builds and their index.

torch publishes one build per CUDA version (``https://download.pytorch.org/whl/cu128`` ...); PyPI's
default torch is the newest CUDA's. A build runs where the NVIDIA driver supports its CUDA major version
(CUDA's minor-version compatibility: a 12.x build runs on any 12.x driver), so a node whose driver says
"CUDA Version: 12.2" in nvidia-smi (SkyPilot's default AWS image, driver 535) cannot run PyPI's cu130
torch, and sees no GPU (skypilot-org/skypilot#9406). Volta (V100, compute capability 7.0) has kernels
only in the cu126 build: CUDA 13 dropped it and torch's cu128 builds left it out.

Standard library only (and ftctl's own): ``ftctl.sky.node_stack`` uses it before anything is installed.
"""

from __future__ import annotations

import os
import re

from ftctl.envvars import TORCH_INDEX_ENV

TORCH_INDEX = "https://download.pytorch.org/whl/"
CPU_BUILD = "cpu"
# torch's CUDA builds, newest first: (CUDA major, minor, the folder of torch's index)
CUDA_BUILDS = ((13, 0, "cu130"), (12, 8, "cu128"), (12, 6, "cu126"))
VOLTA_BUILD = "cu126"  # the newest build with kernels for compute capability 7.0
SMI_CUDA = re.compile(r"CUDA Version:\s*(\d+)\.(\d+)")


def build_for(driver_cuda: tuple[int, int], compute_capability: tuple[int, int] | None = None) -> str | None:
    """The newest CUDA build a driver runs (given the CUDA version it supports), for a GPU of this compute
    capability; None where the driver is older than every build's CUDA major version."""
    if driver_cuda[0] < CUDA_BUILDS[-1][0]:
        return None
    if compute_capability is not None and compute_capability < (7, 5):
        return VOLTA_BUILD
    for major, minor, build in CUDA_BUILDS:
        if (major, minor) <= driver_cuda:
            return build
    return [b for b in CUDA_BUILDS if b[0] == driver_cuda[0]][-1][2]  # 12.0-12.5: minor-version compatibility


def index_url(build: str) -> str:
    """Torch's index for a build (``cu128``, ``cpu``), or the same folder of the mirror in $FTCTL_TORCH_INDEX."""
    return os.environ.get(TORCH_INDEX_ENV, TORCH_INDEX).rstrip("/") + "/" + build


def driver_cuda(nvidia_smi_output: str) -> tuple[int, int] | None:
    """The CUDA version the driver supports, from nvidia-smi's header ("CUDA Version: 12.2")."""
    found = SMI_CUDA.search(nvidia_smi_output)
    return (int(found.group(1)), int(found.group(2))) if found else None
