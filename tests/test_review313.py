"""Review 61b (helper 313) of 7d4d8f9..b9adf58: local detection and the plan of the cards c58c96f added.

1. An unlisted card whose name tells no generation (an H20, a B300, an A800, an L20, an RTX PRO 6000) is planned as the
   listed card of the highest compute capability that fits: since c58c96f that is the RTX5090 (sm120 > sm100 > sm90),
   32 GB, for a 96 to 288 GB card (at 7d4d8f9: a GH200, a GB200).
2. An RTX 3060 of 8 GB (NVIDIA's 2022 one, named as the 12 GB card) is planned as the 12 GB RTX3060, no note.
3. A Turing T1000 8GB (sm75: no bf16, no FlashAttention) is planned as an RTX4060Ti (Ada); it was cpu before c58c96f.
4. The plan of an RTX5090 (sm120) offers FlashAttention 4, which trains on sm90/sm100 only (attention.FA4_MAJORS).

nvidia-smi is the one stand-in (no GPU here): tests/fake_gpus.py's.
"""

from __future__ import annotations

import pytest

from ftctl import gpus
from tests.fake_gpus import fake_nvidia_smi
from tests.render_fixtures import make_spec


@pytest.mark.parametrize(
    "listed",
    [
        "NVIDIA H20, 97871",
        "NVIDIA B300 SXM6 AC, 275040",
        "NVIDIA A800 80GB PCIe, 81920",
        "NVIDIA RTX PRO 6000 Blackwell Server Edition, 97887",
    ],
)
def test_1_a_large_unlisted_card_is_not_planned_as_a_32_gb_geforce(tmp_path, monkeypatch, listed):
    from ftctl.local.backend import detected

    fake_nvidia_smi(tmp_path, monkeypatch, listed)
    planned, note = detected()
    tier = gpus.TIERS[planned.split("x", 1)[1]]
    assert tier.total_gib >= 79, note  # an H100's 80 GB at least: each of these has 80 GB or more


def test_2_an_8_gb_rtx_3060_is_not_planned_as_the_12_gb_one(tmp_path, monkeypatch):
    from ftctl.local.backend import detected

    fake_nvidia_smi(tmp_path, monkeypatch, "NVIDIA GeForce RTX 3060, 8192")
    planned, note = detected()
    assert planned == "1xRTX3060-8GB", (planned, note)  # its own tier since session 63 (was: an RTX3070, noted)


def test_3_a_turing_t1000_is_not_planned_as_an_ada_card(tmp_path, monkeypatch):
    from ftctl.local.backend import detected

    fake_nvidia_smi(tmp_path, monkeypatch, "NVIDIA T1000 8GB, 8192")
    planned, note = detected()
    assert planned == "cpu" or not gpus.TIERS[planned.split("x", 1)[1]].bf16, (planned, note)


def test_4_the_plan_of_an_rtx5090_offers_no_flashattention_4():
    from ftctl.plan import make_plan

    spec = make_spec([], method="lora", gpus="1xRTX5090", model_name_or_path="meta-llama/Llama-3.2-1B")
    assert "FlashAttention 4" not in make_plan(spec).table(spec)


def test_6_a_run_directory_path_is_no_skypilot_cluster(tmp_path, monkeypatch):
    """`ftctl status runs/3` where runs/ is a directory here (its run 3 gone): not SkyPilot's `sky queue runs`."""
    from ftctl.sky.backend import SkyBackend

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    assert SkyBackend().where_to_look("runs/3") is None
    assert SkyBackend().where_to_look("dev/3") is not None
