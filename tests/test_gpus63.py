"""The cards a 2026 machine has that ftctl planned as others: GeForce Blackwell (RTX 5060 Ti-5080) as Ada cards at up
to 4x their TFLOPS (an RTX 5060 Ti as an RTX4080Super), the RTX PRO 6000 Blackwell as a GH200 (Hopper: its
FlashAttention 3 kernels do not run on sm120), an A800 as an H100 (Hopper again, on an Ampere card), an H20 as a GH200
at 6.7x its compute, an L20 as an L40S at 3x, an 8 GB RTX 3060 as an RTX3070. nvidia-smi is the stand-in
(tests/fake_gpus.py; no GPU here); the names are nvidia-smi's own."""

from __future__ import annotations

import pytest

from ftctl import gpus
from ftctl.local.backend import detected
from ftctl.plan import make_plan
from tests.fake_gpus import fake_nvidia_smi
from tests.render_fixtures import make_spec


@pytest.fixture(autouse=True)
def _no_visible_devices(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


@pytest.mark.parametrize(
    "row, planned, capability, tflops",
    [
        ("NVIDIA GeForce RTX 5080, 16303", "1xRTX5080", (12, 0), 112.6),  # was RTX4080Super (8, 9)
        ("NVIDIA GeForce RTX 5070 Ti, 16303", "1xRTX5070Ti", (12, 0), 87.9),
        ("NVIDIA GeForce RTX 5070, 12227", "1xRTX5070", (12, 0), 61.7),  # was RTX4070Ti
        ("NVIDIA GeForce RTX 5060 Ti, 16311", "1xRTX5060Ti-16GB", (12, 0), 47.4),  # was RTX4080Super, 104.4
        ("NVIDIA GeForce RTX 5060 Ti, 8151", "1xRTX5060Ti", (12, 0), 47.4),
        ("NVIDIA RTX PRO 6000 Blackwell Workstation Edition, 97887", "1xRTXPRO6000", (12, 0), 503.8),  # was GH200
        ("NVIDIA RTX PRO 6000 Blackwell Server Edition, 97887", "1xRTXPRO6000", (12, 0), 503.8),
        ("NVIDIA A800-SXM4-80GB, 81920", "1xA800-80GB", (8, 0), 312),  # was H100
        ("NVIDIA A800 40GB PCIe, 40960", "1xA800", (8, 0), 312),
        ("NVIDIA H20, 97871", "1xH20", (9, 0), 148),  # was GH200, 989
        ("NVIDIA L20, 46068", "1xL20", (8, 9), 119.5),  # was L40S, 362
        ("NVIDIA GeForce RTX 3060, 8192", "1xRTX3060-8GB", (8, 6), 25.5),  # was RTX3070, 40.6
    ],
)
def test_each_card_is_planned_as_itself(tmp_path, monkeypatch, row, planned, capability, tflops):
    fake_nvidia_smi(tmp_path, monkeypatch, row)
    assert detected() == (planned, None)  # no "a card ftctl does not list" note
    tier = gpus.TIERS[planned.split("x", 1)[1]]
    assert (tier.compute_capability, tier.peak_tflops) == (capability, tflops)
    assert tier.total_gib <= int(row.rsplit(", ", 1)[1]) / 1024  # within what nvidia-smi says it has


def test_an_unlisted_rtx_pro_blackwell_is_planned_as_a_blackwell_card_not_a_hopper_one(tmp_path, monkeypatch):
    """An RTX PRO 4000 Blackwell (24 GB, not listed): its name now tells sm120, so it is planned as a listed card of its
    generation or older (it was planned as an L4: a name that tells no generation is planned as a datacenter card)."""
    fake_nvidia_smi(tmp_path, monkeypatch, "NVIDIA RTX PRO 4000 Blackwell, 24467")
    planned, note = detected()
    tier = gpus.TIERS[planned.split("x", 1)[1]]
    assert tier.compute_capability == (12, 0) and not tier.flash_attn3, planned
    assert "a card ftctl does not list" in note


def test_the_rtx_pro_6000_plans_without_hoppers_kernels():
    spec = make_spec([], method="lora", gpus="1xRTXPRO6000", model_name_or_path="meta-llama/Llama-3.1-8B")
    text = make_plan(spec).table(spec)
    assert "FlashAttention 3" not in text and "FlashAttention 4" not in text
    assert gpus.tier("rtx_pro_6000_blackwell").name == "RTXPRO6000"  # Slurm's GRES spelling
    assert gpus.tier("a800-sxm4-80gb").name == "A800-80GB" and gpus.tier("H20").name == "H20"


@pytest.mark.parametrize(
    "name, planned",
    [
        ("H100", "H100"),  # the SXM card, as clouds rent it
        ("nvidia_h100_80gb_hbm3", "H100"),  # nvidia-smi's SXM name, as Slurm's GRES writes it
        ("NVIDIA H100 PCIe", "H100-PCIe"),  # was H100: 989 TFLOPS and 3.35 TB/s for a card of 756 and 2.0
        ("gpu:h100_pcie:4", "H100-PCIe"),
        ("NVIDIA H100 NVL", "H100-NVL"),
        ("NVIDIA H200 NVL", "H200-NVL"),
        ("nvidia_h200", "H200"),
        ("nvidia_a100-pcie-40gb", "A100"),  # an A100's PCIe card runs at its SXM one's TFLOPS: no tier of its own
    ],
)
def test_a_university_clusters_pcie_and_nvl_cards_are_planned_at_their_speed(name, planned):
    assert gpus.parse(name).tier.name == planned


def test_nvidia_smis_pcie_card_is_planned_as_itself(tmp_path, monkeypatch):
    fake_nvidia_smi(tmp_path, monkeypatch, "NVIDIA H100 PCIe, 81559", "NVIDIA H100 PCIe, 81559")
    assert detected() == ("2xH100-PCIe", None)
    pcie, sxm = (
        make_plan(make_spec([], method="lora", gpus=f"1x{card}", model_name_or_path="meta-llama/Llama-3.1-8B"))
        for card in ("H100-PCIe", "H100")
    )
    assert pcie.step_s / sxm.step_s == pytest.approx(989 / 756, rel=0.02)  # its TFLOPS, not the SXM card's
