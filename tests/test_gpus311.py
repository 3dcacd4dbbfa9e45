"""Review 61 findings 4, 6 and 7 (helper 311; tests first written by helper 307 in tests/test_review307.py).

4. A GeForce's number was read unevenly: `--gpus 1080`, `2x1070`, `1080ti` said "Unknown GPU type '1080'. Did you mean
   'V100'?" (a newer card as a typo's nearest), where `--gpus GTX1080` says "older than every card"; `gpu:3090:2` and
   `3090:2` said "Cannot read", where `2x3090` and `gpu:2080ti:2` are read.
6. nvidia-smi's memory.total of "[N/A]" (a Jetson's, a DGX Spark's) and its "No devices were found" ended doctor, plan
   and launch in a ValueError traceback (local.backend.detected).
7. A Pascal Quadro (Quadro P6000: sm61, no bf16, no FlashAttention) was planned as an RTX4090, a Quadro GP100 as an
   RTX4080Super, Maxwell and Kepler Quadros alike; a Volta card ftctl does not list (Quadro GV100, TITAN V) as an Ada
   or Blackwell one (bf16 on a card without it).

nvidia-smi is the one stand-in (no GPU here): tests/fake_gpus.py's script on PATH answers what a workstation's does.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ftctl import gpus
from ftctl.errors import FtctlError
from tests.fake_gpus import fake_nvidia_smi

FTCTL = os.path.join(os.path.dirname(sys.executable), "ftctl")
OLDER = "older than every card ftctl plans for (Volta's V100 is the oldest)"


def test_finding4_geforce_numbers_read_alike():
    with pytest.raises(FtctlError) as e:
        gpus.parse("1080")  # a GTX 1080: Pascal, as --gpus GTX1080 says
    assert "older than every card" in str(e.value) and "Did you mean 'V100'" not in str(e.value), str(e.value)
    assert str(gpus.parse("gpu:3090:2")) == str(gpus.parse("2x3090")) == "2xRTX3090"  # gpu:2080ti:2 is read


@pytest.mark.parametrize(
    "asked",
    [
        "1080",
        "2x1070",
        "1080ti",
        "1080 Ti",
        "1x1080-Ti",
        "1050",
        "gpu:1080:2",
        "1080:2",
        "gpu:1060",
        "GTX1080",
        "980ti",
    ],
)
def test_finding4_a_pascal_geforce_number_is_older_than_every_card_in_every_form(asked):
    with pytest.raises(FtctlError) as e:
        gpus.parse(asked)
    said = str(e.value)
    assert said.startswith(f"--gpus {asked!r}: GPU type ") and OLDER in said, said
    assert "Did you mean" not in said and "Cannot read" not in said


@pytest.mark.parametrize(
    "asked, read",
    [
        ("gpu:3090:2", "2xRTX3090"),
        ("3090:2", "2xRTX3090"),
        ("GPU:4090:8", "8xRTX4090"),
        ("4060:1", "1xRTX4060"),
        ("gpu:4090", "1xRTX4090"),  # Slurm's one GPU of a type, as gpu:a100
        ("GPU:3080", "1xRTX3080"),
        ("2x3090", "2xRTX3090"),
        ("gpu:2080ti:2", "2xRTX2080Ti"),
    ],
)
def test_finding4_a_listed_cards_number_is_read_in_the_slurm_and_skypilot_forms(asked, read):
    assert str(gpus.parse(asked)) == read


def test_finding4_an_unlisted_geforce_number_in_the_slurm_form_is_said_as_tier_says_it():
    with pytest.raises(FtctlError) as e:
        gpus.parse("gpu:3050:2")  # an RTX 3050: Ampere, not listed (was "Cannot read")
    assert str(e.value).startswith("--gpus 'gpu:3050:2': Unknown GPU type '3050'."), str(e.value)
    with pytest.raises(FtctlError, match=r"--gpus '2x1660': Unknown GPU type '1660'\."):
        gpus.parse("2x1660")  # a GTX 1660 (Turing, unlisted) was "names no GPU type ... 2x1660xTYPE"
    with pytest.raises(FtctlError, match="GPUs per node must be 1 to 16, not 40"):
        gpus.parse("3090:40")  # the count is still checked


def test_finding6_a_gpu_whose_memory_nvidia_smi_does_not_give_is_no_traceback(tmp_path, monkeypatch):
    """A Jetson's nvidia-smi writes memory.total as [N/A]: local_gpus raised ValueError (doctor, plan, launch)."""
    from ftctl.local.backend import detected

    fake_nvidia_smi(tmp_path, monkeypatch, "Orin (nvgpu), [N/A]")
    assert detected() == (
        "cpu",
        "local: nvidia-smi lists 1x 'Orin (nvgpu)' (no memory.total: [N/A]), a card ftctl does not list and whose "
        "memory nvidia-smi does not give: planned as cpu (--gpus TYPE plans it as a listed card of its generation or "
        "older with no more memory)",
    )


@pytest.mark.parametrize(
    "listed, planned, said",
    [
        ("NVIDIA A100-SXM4-80GB, [N/A]", "1xA100-80GB", None),  # its name tells all
        ("NVIDIA GeForce RTX 4060 Ti, [N/A]", "1xRTX4060Ti", None),  # the 8 GB card: the memory unknown, the least
        ("NVIDIA GeForce GTX 1080, [N/A]", "cpu", f"(no memory.total: [N/A]), {OLDER}: planned as cpu"),
    ],
)
def test_finding6_a_named_card_without_its_memory_is_planned_by_its_name(tmp_path, monkeypatch, listed, planned, said):
    from ftctl.local.backend import detected

    fake_nvidia_smi(tmp_path, monkeypatch, listed)
    gpus_here, note = detected()
    assert gpus_here == planned
    assert note == said if said is None else note.endswith(said), note


def test_finding6_nvidia_smi_without_a_gpu_is_said_not_a_traceback(tmp_path, monkeypatch):
    """nvidia-smi installed but no GPU (or no driver) prints one line, no comma, and exits non-zero."""
    from ftctl.local.backend import detected

    fake_nvidia_smi(tmp_path, monkeypatch, "No devices were found", code=6)
    assert detected() == ("cpu", "local: nvidia-smi found no GPU ('No devices were found'): planned as cpu")


@pytest.mark.parametrize("command", ["plan", "doctor"])
def test_finding6_plan_and_doctor_on_a_jetson_are_no_traceback(tmp_path, monkeypatch, command):
    env = fake_nvidia_smi(tmp_path, monkeypatch, "Orin (nvgpu), [N/A]")
    args = ["--backend", "local", "--method", "lora", "--model", "Qwen/Qwen2.5-0.5B"] if command == "plan" else []
    proc = subprocess.run([FTCTL, command, *args], env=env, capture_output=True, text=True, timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "nvidia-smi lists 1x 'Orin (nvgpu)' (no memory.total: [N/A])" in proc.stdout + proc.stderr
    if command == "plan":
        assert proc.returncode == 0, proc.stderr
        assert "gpus           cpu" in proc.stdout, proc.stdout


def test_finding7_a_pascal_quadro_is_not_planned_as_an_rtx4090(tmp_path, monkeypatch):
    """Quadro P6000 (Pascal, sm_61, 24 GB) was planned as an RTX4090: bf16 and FlashAttention on a card with neither.
    Tesla P40 and TITAN Xp are said older than every listed card; the Quadro's P was not read."""
    from ftctl.local.backend import detected

    fake_nvidia_smi(tmp_path, monkeypatch, "Quadro P6000, 24576")
    gpus_here, said = detected()
    assert gpus_here == "cpu" and "older than every card" in said, (gpus_here, said)


@pytest.mark.parametrize(
    "listed",
    [
        "Quadro P6000, 24576",
        "Quadro GP100, 16384",
        "Quadro P4000 with Max-Q Design, 8192",
        "Quadro M6000 24GB, 24576",
        "Quadro K6000, 12288",
        "NVIDIA Quadro P5000, 16384",
    ],
)
def test_finding7_pascal_maxwell_and_kepler_quadros_are_older_than_every_card(tmp_path, monkeypatch, listed):
    from ftctl.local.backend import detected

    fake_nvidia_smi(tmp_path, monkeypatch, listed)
    gpus_here, said = detected()
    assert gpus_here == "cpu" and said.endswith(f"{OLDER}: planned as cpu"), (gpus_here, said)
    with pytest.raises(FtctlError, match="older than every card ftctl plans for"):
        gpus.parse(listed.split(",")[0])  # --gpus 'Quadro P6000' says it too
    with pytest.raises(FtctlError, match="older than every card ftctl plans for"):
        gpus.parse("gpu:" + listed.split(",")[0].lower().replace(" ", "_") + ":1")  # Slurm's GRES spelling


@pytest.mark.parametrize(
    "listed, planned",
    [("Quadro GV100, 32768", "1xV100S"), ("TITAN V, 12288", "1xTITANV"), ("NVIDIA TITAN V, 12066", "1xTITANV")],
)
def test_finding7_an_unlisted_volta_card_is_planned_as_no_newer_card(tmp_path, monkeypatch, listed, planned):
    """Quadro GV100 (Volta, 32 GB) was planned as an RTX5090 and TITAN V (12 GB) as an RTX4070Ti: bf16 on Volta. The
    TITAN V is listed since task 318 (it was planned as cpu then: no listed Volta card had 12 GB or less)."""
    from ftctl.local.backend import detected

    fake_nvidia_smi(tmp_path, monkeypatch, listed)
    gpus_here, said = detected()
    assert gpus_here == planned, said
    if planned != "cpu":
        assert not gpus.parse(planned).tier.bf16
    else:
        assert "less memory than every card of its generation or older" in said, said
