"""Local GPU detection (helper 318): mixed cards, the TITAN V, and what a plan that does not fit offers on this machine.

1. A machine of mixed cards (an RTX 4090 beside an 8 GB RTX 3060) was planned as 2x its first row's card: the 3060 as
   a 24 GB RTX4090. Now one kind of card a run, the kind that trains fastest together, pinned with
   CUDA_VISIBLE_DEVICES (nvidia-smi's numbers: CUDA_DEVICE_ORDER=PCI_BUS_ID); the user's CUDA_VISIBLE_DEVICES
   (numbers) plans for the cards it names.
2. A TITAN V (Volta, 12 GB) was planned as cpu (no listed Volta card within 12 GB): it is listed now, fp16 on SDPA.
3. A local plan that does not fit (an 8 GB card) offered cloud cards (--gpus 1xA10G) and more of the card than the
   machine has (--gpus 8xRTX4060): now this machine's plans only (another method, shorter rows, qlora of shorter rows,
   more of its GPUs up to its count), or says nothing fits it.

nvidia-smi is the one stand-in (no GPU here): tests/fake_gpus.py's.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from ftctl import gpus
from ftctl.launch import trainer_env
from ftctl.local.backend import LocalBackend, detected, local_cards
from ftctl.plan import PlanError, make_plan
from tests.fake_gpus import fake_nvidia_smi
from tests.render_fixtures import make_spec

RTX4090, RTX3060_8GB, RTX3060 = (
    "NVIDIA GeForce RTX 4090, 24564",
    "NVIDIA GeForce RTX 3060, 8192",
    ("NVIDIA GeForce RTX 3060, 12288"),
)
RTX4060 = "NVIDIA GeForce RTX 4060, 8188"
PCI = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}


@pytest.fixture(autouse=True)
def _no_visible_devices(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)


# ---------------------------------------------------------------------------------------------------------- 1. mixed
@pytest.mark.parametrize(
    "rows, planned, pinned",
    [
        ((RTX4090, RTX3060_8GB), "1xRTX4090", "0"),  # was 2xRTX4090: the 8 GB card planned as 24 GB
        ((RTX3060_8GB, RTX4090), "1xRTX4090", "1"),  # was 2xRTX3070: the 4090 left at 8 GB
        ((RTX3060, RTX4090, RTX3060), "1xRTX4090", "1"),  # 165 TFLOPS alone over 2 x 25.5 in step
        (("NVIDIA GeForce GTX 1080, 8192", RTX3060, RTX3060), "2xRTX3060", "1,2"),  # a Pascal card is no plan's
        (("NVIDIA H100 80GB HBM3, 81559", "NVIDIA A100-SXM4-80GB, 81920") * 2, "2xH100", "0,2"),
    ],
)
def test_mixed_cards_plan_one_kind_pinned_with_cuda_visible_devices(tmp_path, monkeypatch, rows, planned, pinned):
    fake_nvidia_smi(tmp_path, monkeypatch, *rows)
    gpus_here, note, env = local_cards()
    assert (gpus_here, env) == (planned, {**PCI, "CUDA_VISIBLE_DEVICES": pinned}), note
    assert f"(CUDA_VISIBLE_DEVICES={pinned})" in note and "one kind of card a run" in note, note
    assert detected() == (gpus_here, note)


def test_cards_planned_as_one_tier_run_together_unpinned(tmp_path, monkeypatch):
    """An RTX 3090 and a 3090 Ti are both planned as an RTX3090: one run on both, nothing pinned."""
    fake_nvidia_smi(tmp_path, monkeypatch, "NVIDIA GeForce RTX 3090, 24576", "NVIDIA GeForce RTX 3090 Ti, 24564")
    gpus_here, note, env = local_cards()
    assert (gpus_here, env) == ("2xRTX3090", {})
    assert note.startswith("local: nvidia-smi lists 1x 'NVIDIA GeForce RTX 3090' (24.0 GiB) and 1x"), note


@pytest.mark.parametrize(
    "visible, planned, env",
    [
        ("1", "1xRTX3060", PCI),  # the user's number, nvidia-smi's: the run numbers cards so too
        ("1,0", "1xRTX4090", {**PCI, "CUDA_VISIBLE_DEVICES": "0"}),
        ("", "cpu", {}),  # torch sees no GPU: was planned on the GPUs all the same
        ("GPU-8f3a", "1xRTX3060", {}),  # a UUID, not read here: the least card, the user's choice kept
    ],
)
def test_the_users_cuda_visible_devices_names_the_cards_planned(tmp_path, monkeypatch, visible, planned, env):
    fake_nvidia_smi(tmp_path, monkeypatch, RTX4090, RTX3060)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert local_cards()[::2] == (planned, env)


def test_identical_cards_some_of_them_visible(tmp_path, monkeypatch):
    fake_nvidia_smi(tmp_path, monkeypatch, *["NVIDIA H100 80GB HBM3, 81559"] * 8)
    assert local_cards({"CUDA_VISIBLE_DEVICES": "0,1"}) == ("2xH100", None, {})  # torchrun of 8 saw 2 GPUs
    assert local_cards({"CUDA_VISIBLE_DEVICES": "-1"})[0] == "cpu"
    assert local_cards({"CUDA_VISIBLE_DEVICES": "GPU-8f3a,GPU-77c1"}) == ("2xH100", None, {})  # was 8xH100
    assert local_cards({}) == ("8xH100", None, {})


def test_a_local_run_on_mixed_cards_gets_the_cards_planned(tmp_path, monkeypatch):
    """The local backend's spec (what the trainer's environment is made of: launch.trainer_env) pins the cards; the
    run's own -o env=CUDA_VISIBLE_DEVICES=N is read as the user's."""
    fake_nvidia_smi(tmp_path, monkeypatch, RTX3060_8GB, RTX4090)
    spec, plan = LocalBackend().resolve(make_spec([], method="lora", model_name_or_path="meta-llama/Llama-3.2-1B"))
    assert plan.gpus == "1xRTX4090" and plan.notes[0].startswith("local: nvidia-smi lists 1x 'NVIDIA GeForce RTX 3060'")
    assert trainer_env(spec)["CUDA_VISIBLE_DEVICES"] == "1" and trainer_env(spec)["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    spec = make_spec(["env=CUDA_VISIBLE_DEVICES=0"], method="qlora", model_name_or_path="meta-llama/Llama-3.2-1B")
    spec, plan = LocalBackend().resolve(spec)
    assert plan.gpus == "1xRTX3060-8GB" and spec.env == {"CUDA_VISIBLE_DEVICES": "0", **PCI}  # the 8 GB 3060's plan


def test_ftctl_plan_on_mixed_cards_says_which_it_runs_on(tmp_path, monkeypatch):
    env = fake_nvidia_smi(tmp_path, monkeypatch, RTX4090, RTX3060_8GB)
    ftctl = os.path.join(os.path.dirname(sys.executable), "ftctl")
    cmd = [ftctl, "plan", "--backend", "local", "--method", "lora", "--model", "meta-llama/Llama-3.1-8B"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^gpus +1xRTX4090 ", proc.stdout, re.M), proc.stdout
    assert "planned on its GPU 0, 1xRTX4090 (CUDA_VISIBLE_DEVICES=0)" in proc.stdout + proc.stderr


# ------------------------------------------------------------------------------------------------------- 2. TITAN V
@pytest.mark.parametrize("listed", ["NVIDIA TITAN V, 12066", "TITAN V, 12288"])
def test_a_titan_v_is_planned_in_fp16_on_sdpa(tmp_path, monkeypatch, listed):
    fake_nvidia_smi(tmp_path, monkeypatch, listed)
    assert detected() == ("1xTITANV", None)  # was cpu
    titan = gpus.tier("TITAN V")
    assert titan.compute_capability == (7, 0) and not titan.bf16 and not titan.flash_attn2 and not titan.flash_attn3
    assert titan.total_gib * 1024 <= 12066  # within what nvidia-smi lists of it
    spec, plan = LocalBackend().resolve(make_spec([], method="lora", model_name_or_path="meta-llama/Llama-3.2-1B"))
    assert (plan.gpus, plan.precision, plan.attn_implementation) == ("1xTITANV", "fp16", "sdpa")
    assert "bf16" not in plan.table(spec) and "FlashAttention" not in plan.table(spec)


# --------------------------------------------------------------------------------------------- 3. nearest, locally
def _refused(spec, **kw) -> str:
    with pytest.raises(PlanError) as e:
        LocalBackend().resolve(spec) if not kw else make_plan(spec, **kw)
    return str(e.value)


def test_an_8gb_card_is_offered_its_own_plans_not_a_clouds(tmp_path, monkeypatch):
    fake_nvidia_smi(tmp_path, monkeypatch, RTX4060)
    spec = make_spec(["model_max_length=32768"], method="lora", model_name_or_path="meta-llama/Llama-3.2-3B")
    said = _refused(spec)  # lora and qlora at 32,768 do not fit 8 GB
    assert said.endswith(
        "Nearest plans that fit: --method qlora -o model_max_length=8192 on these 1xRTX4060 (~7 GB/GPU)."
    )
    assert "--gpus" not in said  # was: --gpus 1xA10G --method lora; or --gpus 1xA10G --method qlora
    said = _refused(make_spec([], method="lora", model_name_or_path="meta-llama/Llama-3.1-8B"))
    assert "A10G" not in said and "8xRTX4060" not in said, said  # were offered
    assert said.endswith(
        "Nothing fits this machine's 1xRTX4060, even qlora of 512-token rows: a smaller model, or larger GPUs elsewhere "
        "(--backend slurm or sky with --gpus TYPE)."
    )


def test_more_of_this_machines_gpus_up_to_its_count():
    spec = make_spec([], method="fft", gpus="1xRTX4060", model_name_or_path="meta-llama/Llama-3.2-1B")
    anywhere = _refused(spec, machine=None)
    assert "--gpus 8xRTX4060 --method fft" in anywhere  # without a machine: any card, any count (unchanged)
    two = _refused(spec, machine=gpus.parse("2xRTX4060"))
    assert "--method lora on these 1xRTX4060" in two and "--gpus" not in two, two
    eight = _refused(spec, machine=gpus.parse("8xRTX4060"))
    offered = re.findall(r"--gpus (\d+)x(\S+)", eight)
    assert offered and all(int(n) <= 8 and card == "RTX4060" for n, card in offered), eight


def test_a_named_local_request_is_offered_this_machines_gpus(tmp_path, monkeypatch):
    """--backend local --gpus 1xRTX4060 on a machine of one: no 8xRTX4060, no cloud card."""
    fake_nvidia_smi(tmp_path, monkeypatch, RTX4060)
    said = _refused(make_spec([], method="lora", gpus="1xRTX4060", model_name_or_path="meta-llama/Llama-3.1-8B"))
    assert "8xRTX4060" not in said and "A10G" not in said and "Nothing fits this machine's 1xRTX4060" in said, said


def test_a_docker_run_on_mixed_cards_gets_the_cards_planned(tmp_path, monkeypatch):
    """`docker run --gpus N` takes the host's first N: the 8 GB 3060 at index 0 for a run planned on the 4090
    (helper 318's patch to docker.render.picked_gpus); the user's CUDA_VISIBLE_DEVICES still decides where set."""
    from ftctl.docker.render import picked_gpus

    fake_nvidia_smi(tmp_path, monkeypatch, RTX3060_8GB, RTX4090)
    monkeypatch.setenv("DOCKER_HOST", "")  # this machine's engine, if any: not a remote one's cards
    plan = make_plan(make_spec([], method="lora", model_name_or_path="meta-llama/Llama-3.2-1B", gpus="1xRTX4090"))
    assert picked_gpus(plan) == ["1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert picked_gpus(plan) == ["0"]
