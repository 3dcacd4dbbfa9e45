"""Consumer cards in the GPU table (task 309, explore65 finding 5): RTX 3060/3070/3080/3080 Ti, RTX 4060/4060 Ti/4070/
4070 SUPER/4070 Ti/4070 Ti SUPER/4080/4080 SUPER and RTX 5090 are named by --gpus, read from nvidia-smi (with its memory,
which a GeForce name does not say: a 4060 Ti has 8 or 16 GB) and planned as themselves: a 12 GB Ampere card was
planned as an RTX2080Ti (fp16, no FlashAttention), an 8 GB one as cpu. nvidia-smi is the one stand-in (no GPU here),
as in tests/test_local_backend.py and tests/test_explore65.py."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ftctl import gpus
from ftctl.errors import FtctlError
from ftctl.plan import DoesNotFit, make_plan
from tests.fake_gpus import fake_nvidia_smi
from tests.render_fixtures import make_spec

# name: (GB sold, compute capability, SMs, boost MHz) from NVIDIA's product pages; the TFLOPS the table holds are
# SMs x boost x 512 dense FP16/BF16 FLOPs with FP32 accumulate a clock an SM (GA10x and AD10x GeForce), or for the 5090
# the same rate of GB202's (838 sparse FP16-accumulate TFLOPS / 4)
CONSUMER = {
    "RTX3060": (12, (8, 6), 28, 1777),
    "RTX3070": (8, (8, 6), 46, 1725),
    "RTX3080": (10, (8, 6), 68, 1710),
    "RTX3080-12GB": (12, (8, 6), 70, 1710),
    "RTX3080Ti": (12, (8, 6), 80, 1665),
    "RTX4060": (8, (8, 9), 24, 2460),
    "RTX4060Ti": (8, (8, 9), 34, 2535),
    "RTX4060Ti-16GB": (16, (8, 9), 34, 2535),
    "RTX4070": (12, (8, 9), 46, 2475),
    "RTX4070Super": (12, (8, 9), 56, 2475),
    "RTX4070Ti": (12, (8, 9), 60, 2610),
    "RTX4070TiSuper": (16, (8, 9), 66, 2610),
    "RTX4080": (16, (8, 9), 76, 2505),
    "RTX4080Super": (16, (8, 9), 80, 2550),
    "RTX5090": (32, (12, 0), 170, 2407),
}


@pytest.mark.parametrize("name", sorted(CONSUMER))
def test_each_consumer_card_has_its_facts(name):
    memory_gb, capability, sms, mhz = CONSUMER[name]
    t = gpus.TIERS[name]
    assert (t.memory_gb, t.compute_capability, t.bf16, t.flash_attn2, t.flash_attn3) == (
        memory_gb,
        capability,
        True,
        True,
        False,
    )
    assert t.peak_tflops == pytest.approx(sms * mhz * 1e6 * 512 / 1e12, abs=0.05)
    # PyTorch's total, under what the card is sold with (nvidia-smi lists 8188, 12288, 16380, 32607 MiB)
    assert memory_gb * 0.95 < t.total_gib < memory_gb
    assert name not in gpus.SUGGESTED  # a cloud user's refusal offers the clouds' cards, not these


@pytest.mark.parametrize(
    "text, want",
    [
        ("RTX3060", "1xRTX3060"),
        ("rtx 3060", "1xRTX3060"),
        ("2x4060ti", "2xRTX4060Ti"),
        ("RTX4060Ti-16GB", "1xRTX4060Ti-16GB"),
        ("rtx4060ti-16gb:2", "2xRTX4060Ti-16GB"),
        ("gpu:nvidia_geforce_rtx_3080_ti:2", "2xRTX3080Ti"),
        ("RTX 4070 Ti SUPER", "1xRTX4070TiSuper"),
        ("4080super", "1xRTX4080Super"),
        ("1x5090", "1xRTX5090"),
        ("RTX3080-12GB", "1xRTX3080-12GB"),
        ("3080", None),
    ],
)
def test_the_names_parse(text, want):
    if want is None:  # a card's number alone reads as a count; the card is named in the answer
        with pytest.raises(FtctlError, match=r"reads as a count of GPUs of no type: for the card, --gpus 1xRTX3080\."):
            gpus.parse(text)
    else:
        assert str(gpus.parse(text)) == want


def test_a_12gb_rtx3060_plans_bf16_and_lora_and_qlora_that_fit():
    capacity = gpus.TIERS["RTX3060"].capacity_gb
    qlora = make_plan(make_spec([], method="qlora", gpus="1xRTX3060", model_name_or_path="meta-llama/Llama-3.1-8B"))
    assert (qlora.tier, qlora.precision, qlora.attn_implementation) == ("RTX3060", "bf16", "varlen")
    assert qlora.memory_gb <= 0.92 * capacity and qlora.gradient_checkpointing
    lora = make_plan(make_spec([], method="lora", gpus="1xRTX3060", model_name_or_path="meta-llama/Llama-3.2-3B"))
    assert (lora.precision, lora.attn_implementation) == ("bf16", "varlen")
    assert lora.memory_gb <= 0.92 * capacity
    with pytest.raises(DoesNotFit) as e:  # a bf16 LoRA of 8B needs ~19 GB: QLoRA on the card is the nearest
        make_plan(make_spec([], method="lora", gpus="1xRTX3060", model_params="8b"))
    assert "Nearest plans that fit: --method qlora on these 1xRTX3060" in str(e.value)


def test_an_8gb_card_plans_qlora_of_a_3b():
    p = make_plan(make_spec([], method="qlora", gpus="1xRTX4060", model_name_or_path="meta-llama/Llama-3.2-3B"))
    assert p.precision == "bf16" and p.memory_gb <= 0.92 * gpus.TIERS["RTX4060"].capacity_gb


@pytest.mark.parametrize(
    "listed, want, note",
    [
        ("NVIDIA GeForce RTX 3060, 12288", "1xRTX3060", None),
        ("NVIDIA GeForce RTX 3070, 8192", "1xRTX3070", None),
        ("NVIDIA GeForce RTX 3080, 10240", "1xRTX3080", None),
        ("NVIDIA GeForce RTX 3080, 12288", "1xRTX3080-12GB", None),  # one name, two cards: the memory tells
        ("NVIDIA GeForce RTX 4060 Ti, 8188", "1xRTX4060Ti", None),
        ("NVIDIA GeForce RTX 4060 Ti, 16380", "1xRTX4060Ti-16GB", None),
        ("NVIDIA GeForce RTX 4070 Ti SUPER, 16376", "1xRTX4070TiSuper", None),
        ("NVIDIA GeForce RTX 4080 SUPER, 16376", "1xRTX4080Super", None),
        ("NVIDIA GeForce RTX 5090, 32607", "1xRTX5090", None),
        # unlisted: a laptop 4060 as the desktop one, a 3090 Ti as the 3090 (a variant of a listed card)
        ("NVIDIA GeForce RTX 4060 Laptop GPU, 8188", "1xRTX4060", "planned as an RTX4060 (7.75 GiB)"),
        ("NVIDIA GeForce RTX 3090 Ti, 24564", "1xRTX3090", "planned as an RTX3090 (23.68 GiB)"),
        # a Turing card is planned as no Ampere/Ada card of its memory (bf16, which it has not): cpu, said why
        (
            "NVIDIA GeForce RTX 2070, 8192",
            "cpu",
            "less memory than every card of its generation or older ftctl plans for (RTX2080Ti's 10.73 GiB is the "
            "least): planned as cpu",
        ),
        ("Quadro RTX 5000, 16384", "1xT4", "planned as a T4 (14.56 GiB)"),
    ],
)
def test_local_detection_names_the_card(tmp_path, monkeypatch, listed, want, note):
    from ftctl.local import backend

    fake_nvidia_smi(tmp_path, monkeypatch, listed)
    gpus_here, said = backend.detected()
    assert gpus_here == want
    assert (said is None) if note is None else note in said


def test_ftctl_plan_on_a_workstation_with_an_rtx3060_plans_it_in_bf16(tmp_path, monkeypatch):
    env = fake_nvidia_smi(tmp_path, monkeypatch, "NVIDIA GeForce RTX 3060, 12288")
    ftctl = os.path.join(os.path.dirname(sys.executable), "ftctl")
    cmd = [ftctl, "plan", "--backend", "local", "--method", "qlora", "--model", "meta-llama/Llama-3.1-8B"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = dict(line.split(None, 1) for line in proc.stdout.splitlines() if line and not line.startswith(" "))
    assert rows["gpus"].startswith("1xRTX3060") and rows["precision"].startswith("bf16"), proc.stdout
    assert "does not list" not in proc.stdout + proc.stderr


def test_sky_asks_for_a_consumer_card_by_its_name():
    """SkyPilot offers GeForce cards where an enabled cloud has them (RunPod, Vast.ai) under these names; the task asks
    for RTX3060:1 as for any card (no cloud that has none: SkyPilot's optimizer says its catalog has none)."""
    from ftctl.sky.render import accelerators

    spec = make_spec([], method="qlora", gpus="1xRTX3060", model_params="8b", backend="sky")
    assert accelerators(spec, make_plan(spec)) == "RTX3060:1"
