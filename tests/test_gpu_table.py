"""The GPU table as its readers see it: the planner's precision and attention, the cost estimate's TFLOPS,
and the local backend's reading of nvidia-smi."""

from __future__ import annotations

import subprocess

import pytest

from ftctl import gpus
from ftctl.plan import make_plan
from tests.render_fixtures import make_spec

AMPERE_AND_NEWER = sorted(n for n, t in gpus.TIERS.items() if t.compute_capability >= (8, 0))
VOLTA_AND_TURING = sorted(n for n, t in gpus.TIERS.items() if t.compute_capability < (8, 0))


@pytest.mark.parametrize("name", AMPERE_AND_NEWER)
def test_ampere_and_newer_plan_bf16_and_varlen(name):
    p = make_plan(make_spec([], method="qlora", gpus=f"1x{name}", model_params="1b"))
    assert (p.tier, p.precision, p.attn_implementation) == (name, "bf16", "varlen")
    assert p.gpu_memory_gb == round(gpus.TIERS[name].capacity_gb, 2)


@pytest.mark.parametrize("name", VOLTA_AND_TURING)
def test_volta_and_turing_plan_fp16_and_sdpa(name):
    p = make_plan(make_spec(["bf16=true"], method="lora", gpus=f"1x{name}", model_params="1b"))
    assert (p.tier, p.precision, p.attn_implementation) == (name, "fp16", "sdpa")
    assert any(f"{name} has no bf16" in n for n in p.notes)


def test_a_slurm_name_plans_as_its_tier():
    p = make_plan(make_spec([], method="lora", gpus="gpu:nvidia_a100-sxm4-80gb:2", model_params="1b"))
    assert (p.gpus, p.gpu_memory_gb, p.precision) == ("2xA100-80GB", 84.98, "bf16")


def test_a_refusal_offers_the_clouds_common_gpus_or_the_one_asked_for():
    """Nearest plans come from gpus.SUGGESTED (a 4xRTXA4000 is no answer to a cloud user) or the type asked for (an
    A40 user is told how many A40s)."""
    import re

    from ftctl.errors import FtctlError

    for asked in ("1xA40", "1xL4", "1xRTX2080Ti"):
        with pytest.raises(FtctlError) as e:
            make_plan(make_spec([], method="fft", gpus=asked, model_params="8b"))
        offered = {g.split("x")[-1] for g in re.findall(r"--gpus (\S+)", str(e.value))}
        assert offered and offered <= gpus.SUGGESTED | {asked.split("x")[-1]}, str(e.value)


# nvidia-smi --query-gpu=name,memory.total as real cards answer it (MiB)
SMI = [
    ("Tesla V100-SXM2-16GB", 16160, "V100"),
    ("Tesla V100-SXM2-32GB", 32510, "V100-32GB"),
    ("Tesla V100S-PCIE-32GB", 32510, "V100S"),
    ("Tesla T4", 15360, "T4"),
    ("NVIDIA GeForce RTX 2080 Ti", 11264, "RTX2080Ti"),
    ("NVIDIA TITAN RTX", 24576, "TITANRTX"),
    ("Quadro RTX 6000", 24576, "RTX6000"),
    ("Quadro RTX 8000", 49152, "RTX8000"),
    ("NVIDIA A30", 24576, "A30"),
    ("NVIDIA A100-SXM4-40GB", 40960, "A100"),
    ("NVIDIA A100-SXM4-80GB", 81920, "A100-80GB"),
    ("NVIDIA A100 80GB PCIe", 81920, "A100-80GB"),
    ("NVIDIA A10G", 23028, "A10G"),
    ("NVIDIA A10", 23028, "A10"),
    ("NVIDIA A40", 46068, "A40"),
    ("NVIDIA GeForce RTX 3090", 24576, "RTX3090"),
    ("NVIDIA RTX A4000", 16376, "RTXA4000"),
    ("NVIDIA RTX A5000", 24564, "RTXA5000"),
    ("NVIDIA RTX A6000", 49140, "RTXA6000"),
    ("NVIDIA L4", 23034, "L4"),
    ("NVIDIA L40S", 46068, "L40S"),
    ("NVIDIA L40", 46068, "L40"),
    ("NVIDIA GeForce RTX 4090", 24564, "RTX4090"),
    ("NVIDIA RTX 6000 Ada Generation", 49140, "RTX6000-Ada"),
    ("NVIDIA H100 80GB HBM3", 81559, "H100"),
    ("NVIDIA H200", 143771, "H200"),
    ("NVIDIA GH200 480GB", 97871, "GH200"),  # its name beside the H200's, and 45 GB less memory
    ("NVIDIA H800", 81559, "H800"),
    ("NVIDIA B200", 183359, "B200"),
]


def test_pytorchs_total_of_each_card_is_under_what_nvidia_smi_lists():
    """The plan fits within PyTorch's total of a card (gpus.GpuTier.total_gib), which the driver's reserve keeps under
    nvidia-smi's memory.total: a total above it would plan for memory no run gets."""
    for _, mib, want in SMI:
        assert gpus.TIERS[want].total_gib * 1024 <= mib, want


@pytest.mark.parametrize(
    "smi_name, mib, want",
    [
        ("NVIDIA GH200 144G HBM3e", 146831, "1xGH200"),  # the larger GH200: planned as the listed 96 GB one
        ("NVIDIA RTX PRO 4000 Blackwell", 24467, "1xRTX5080"),  # GeForce Blackwell is listed since session 63
        ("NVIDIA GeForce RTX 3050", 6144, "cpu"),  # less memory than any listed card: none planned over it
        ("Tesla P100-PCIE-16GB", 16280, "cpu"),  # older than every listed card: nothing here to train on
    ],
)
def test_an_unlisted_card_is_planned_as_a_listed_one_with_no_more_memory(smi_name, mib, want, monkeypatch):
    """A GH200 (96 GB) was planned as an H200 (141 GB: its name inside the GH200's) and ran out of memory; an RTX
    5090 as a V100S (nearest in memory: fp16, no FlashAttention). The newest listed card with no more memory, the
    largest of those."""
    from ftctl.local import backend as local

    monkeypatch.setattr(local.shutil, "which", lambda _: "/usr/bin/nvidia-smi")
    out = f"{smi_name}, {mib}\n"
    monkeypatch.setattr(local.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 0, stdout=out))
    assert local.local_gpus() == want


@pytest.mark.parametrize("smi_name, mib, want", SMI)
def test_nvidia_smi_names_read_as_their_tier(smi_name, mib, want, monkeypatch):
    from ftctl.local import backend as local

    out = f"{smi_name}, {mib}\n{smi_name}, {mib}\n"
    monkeypatch.setattr(local.shutil, "which", lambda _: "/usr/bin/nvidia-smi")
    monkeypatch.setattr(local.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 0, stdout=out))
    assert local.local_gpus() == f"2x{want}"
    assert gpus.tier(smi_name).name == want
