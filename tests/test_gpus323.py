"""Local GPUs on a machine of mixed cards (helper 323, after helper 318's one kind a run):

1. The fastest kind is not always the roomiest: two RTX 3090s hold (FSDP, ZeRO) what one RTX 4090 does not, and a run
   that fits only the pair was planned on the 4090, then refused or fell back to qlora. Now the first kind in speed
   order it fits, one that keeps the optimizer on the GPUs before one that offloads it; the plan says which and why.
2. --gpus naming one kind of a mixed machine set no CUDA_VISIBLE_DEVICES (CUDA's default order may run it on the other
   card), and the preflight compared it with the fastest kind only ("this machine has 1xRTX4090").
3. A local refusal for want of host RAM said "with --backend sky, SkyPilot picks a VM".

nvidia-smi is the one stand-in (no GPU here): tests/fake_gpus.py's.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from ftctl import gpus
from ftctl.launch import trainer_env
from ftctl.local.backend import LocalBackend, has_gpus, local_cards, local_kinds, machine_gpus
from ftctl.plan import PlanError, make_plan
from ftctl.preflight import ERROR, WARNING, check_gpus
from tests.fake_gpus import fake_nvidia_smi
from tests.render_fixtures import make_spec

RTX4090, RTX3090, RTX3060 = (
    "NVIDIA GeForce RTX 4090, 24564",
    "NVIDIA GeForce RTX 3090, 24576",
    "NVIDIA GeForce RTX 3060, 12288",
)
PCI = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
LLAMA_8B, LLAMA_1B = "meta-llama/Llama-3.1-8B", "meta-llama/Llama-3.2-1B"


@pytest.fixture(autouse=True)
def _no_visible_devices(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)


def _resolve(*o, **flags):
    return LocalBackend().resolve(make_spec(["host_memory_gb=64", *o], **flags))


# ----------------------------------------------------------------------------------- 1. the fastest kind it fits
def test_the_kinds_of_a_mixed_machine_fastest_together_first(tmp_path, monkeypatch):
    fake_nvidia_smi(tmp_path, monkeypatch, RTX4090, RTX3090, RTX3090)
    kinds = local_kinds()
    assert [(g, env) for g, _, env in kinds] == [
        ("1xRTX4090", {**PCI, "CUDA_VISIBLE_DEVICES": "0"}),  # 165 TFLOPS over 2 x 71
        ("2xRTX3090", {**PCI, "CUDA_VISIBLE_DEVICES": "1,2"}),
    ]
    assert kinds[0] == local_cards()  # helper 318's choice, unchanged
    assert "the fastest together that it fits" in kinds[1][1] and "that it fits" not in kinds[0][1]
    assert machine_gpus() == "1xRTX4090+2xRTX3090"


def test_a_run_that_fits_only_the_pair_runs_on_the_pair(tmp_path, monkeypatch):
    """lora of an 8B at 16,384 tokens: ~25 GB on one 4090 (single), ~19 GB a GPU on two 3090s (FSDP shards the base).
    It was planned on the 4090 and fell back to qlora there."""
    fake_nvidia_smi(tmp_path, monkeypatch, RTX4090, RTX3090, RTX3090)
    spec, plan = _resolve("model_max_length=16384", method="lora", model_name_or_path=LLAMA_8B)
    assert (plan.gpus, plan.method, plan.strategy) == ("2xRTX3090", "lora", "fsdp"), plan.notes
    assert trainer_env(spec)["CUDA_VISIBLE_DEVICES"] == "1,2" and trainer_env(spec)["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    which, why = plan.notes[:2]
    assert (
        "planned on its GPUs 1,2, 2xRTX3090 (CUDA_VISIBLE_DEVICES=1,2): one kind of card a run, the fastest "
        "together that it fits" in which
    ), which
    assert why.startswith("local: lora does not fit its 1xRTX4090 (the leanest plan (single, micro-batch 1, "), why
    assert why.endswith(
        "per GPU; an RTX4090 has 25.4 GB (23.64 GiB as PyTorch reports it) and ftctl plans within "
        "92% of it (23.4 GB)): it runs on its 2xRTX3090"
    ), why
    assert "qlora" not in " ".join(plan.notes)
    # what fits the fastest stays there (helper 318's choice)
    spec, plan = _resolve(method="lora", model_name_or_path=LLAMA_8B)
    assert (
        plan.gpus == "1xRTX4090"
        and spec.env["CUDA_VISIBLE_DEVICES"] == "0"
        and "does not fit" not in " ".join(plan.notes)
    )


def test_a_pair_that_keeps_the_optimizer_on_the_gpus_before_a_card_that_offloads_it(tmp_path, monkeypatch):
    """fft of a 1B fits one 4090 only with ZeRO-Offload (each step waits on the CPU's optimizer); two 3090s hold it
    with ZeRO-2."""
    fake_nvidia_smi(tmp_path, monkeypatch, RTX3090, RTX4090, RTX3090)
    spec, plan = _resolve(method="fft", model_name_or_path=LLAMA_1B)
    assert (plan.gpus, plan.strategy, spec.env.get("CUDA_VISIBLE_DEVICES")) == ("2xRTX3090", "zero2", "0,2")
    assert plan.notes[1] == (
        "local: fft offloads the optimizer to CPU RAM on its 1xRTX4090 (zero2_offload): it runs on its 2xRTX3090"
    )
    # one kind only offloads: it is planned so, as before
    fake_nvidia_smi(tmp_path, monkeypatch, RTX4090)
    assert _resolve(method="fft", model_name_or_path=LLAMA_1B)[1].strategy == "zero2_offload"


def test_a_run_that_fits_no_kind_falls_back_to_qlora_as_before(tmp_path, monkeypatch):
    fake_nvidia_smi(tmp_path, monkeypatch, RTX4090, RTX3060, RTX3060)
    spec, plan = _resolve("model_max_length=16384", method="lora", model_name_or_path=LLAMA_8B)
    assert (spec.method, plan.gpus, spec.env["CUDA_VISIBLE_DEVICES"]) == ("qlora", "1xRTX4090", "0"), plan.notes
    assert plan.notes[1].startswith("local: lora does not fit this machine (the leanest plan"), plan.notes
    assert plan.notes[2] == "local: lora fits none of its kinds of card (1xRTX4090, 2xRTX3060)"
    with pytest.raises(PlanError) as e:  # nothing fits: the fastest kind's refusal, the others named
        _resolve(method="fft", model_name_or_path="meta-llama/Llama-3.1-70B")
    assert "Nothing fits this machine's 1xRTX4090" in str(e.value)
    assert str(e.value).endswith("CUDA_VISIBLE_DEVICES=N,... picks others; nor does it fit its 2xRTX3060)"), e.value


# --------------------------------------------------------------------------------------- 2. a kind named
@pytest.mark.parametrize("named, pinned", [("1xRTX3060", "1"), ("1xRTX4090", "0")])
def test_a_named_kind_on_a_mixed_machine_runs_on_its_cards(tmp_path, monkeypatch, named, pinned):
    fake_nvidia_smi(tmp_path, monkeypatch, RTX4090, RTX3060)
    spec, plan = _resolve(method="qlora", gpus=named, model_name_or_path=LLAMA_1B)
    assert plan.gpus == named and trainer_env(spec)["CUDA_VISIBLE_DEVICES"] == pinned  # was unset: CUDA's order
    assert trainer_env(spec)["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert plan.notes[0].startswith(f"local: --gpus {named} runs on its GPU {pinned} (CUDA_VISIBLE_DEVICES={pinned}, ")
    assert has_gpus(named)  # the 3060 was "not here": the fastest kind only


def test_a_named_kind_pins_as_many_of_its_cards_as_asked(tmp_path, monkeypatch):
    fake_nvidia_smi(tmp_path, monkeypatch, RTX3090, RTX4090, RTX3090, RTX3090)
    spec, plan = _resolve(method="qlora", gpus="2xRTX3090", model_name_or_path=LLAMA_1B)
    assert spec.env == {**PCI, "CUDA_VISIBLE_DEVICES": "0,2"}
    # one kind here: nothing pinned, as before
    fake_nvidia_smi(tmp_path, monkeypatch, RTX3090, RTX3090)
    spec, plan = _resolve(method="qlora", gpus="1xRTX3090", model_name_or_path=LLAMA_1B)
    assert "CUDA_VISIBLE_DEVICES" not in spec.env and not any(n.startswith("local: --gpus") for n in plan.notes)


def test_the_preflight_compares_a_plan_with_every_kind_here(tmp_path, monkeypatch):
    fake_nvidia_smi(tmp_path, monkeypatch, RTX4090, RTX3060)
    here = LocalBackend().detected_gpus()
    assert here == "1xRTX4090+1xRTX3060"
    spec, plan = _resolve(method="qlora", gpus="1xRTX3060", model_name_or_path=LLAMA_1B)
    assert check_gpus(plan, "local", here) == []  # was: "plans for RTX3060; this machine has 1xRTX4090"
    spec, plan = _resolve(method="qlora", gpus="2xRTX3060", model_name_or_path=LLAMA_1B)
    [found] = check_gpus(plan, "local", here)
    assert (found.level, found.what) == (
        ERROR,
        "--gpus 2xRTX3060 asks for 2 GPUs; this machine has 1xRTX4090 and 1xRTX3060",
    )
    assert found.fix.startswith("use --gpus 1xRTX3060 ")
    # a kind not here: compared with the least of them (an unpinned run may land on it), each kind offered
    [found] = check_gpus(
        make_plan(make_spec([], method="qlora", gpus="1xRTX3090", model_name_or_path=LLAMA_1B)), "local", here
    )
    assert (found.level, found.what) == (
        ERROR,
        "--gpus 1xRTX3090 plans for 24 GB a GPU; this machine has 1xRTX4090 and 1xRTX3060, RTX3060 12 GB",
    )
    assert found.fix.startswith("use --gpus 1xRTX4090 or --gpus 1xRTX3060 so that memory")
    [found] = check_gpus(
        make_plan(make_spec([], method="qlora", gpus="1xRTX3060", model_name_or_path=LLAMA_1B)),
        "local",
        "1xRTX4090+1xRTX3090",
    )
    assert found.level == WARNING and found.what.endswith("this machine has 1xRTX4090 and 1xRTX3090")


# ------------------------------------------------------------------------------ 3. a local refusal for host RAM
def test_a_local_refusal_for_host_ram_names_no_skypilot_vm(tmp_path, monkeypatch):
    """fft of a 3B on one RTX 4090 with 64 GB of RAM: ZeRO-Offload needs ~81 GB of it. The local backend (picked
    implicitly: no --backend) fell back to qlora saying "with --backend sky, SkyPilot picks a VM with that much"."""
    fake_nvidia_smi(tmp_path, monkeypatch, RTX4090)
    local = "(-o host_memory_gb=82 if it has that much; else a machine with that much: --backend slurm or sky)"
    spec = make_spec(["host_memory_gb=64"], method="fft", model_name_or_path="meta-llama/Llama-3.2-3B")
    assert spec.backend is None
    qlora, plan = LocalBackend().resolve(spec)
    assert qlora.method == "qlora" and local in plan.notes[0] and "SkyPilot" not in plan.notes[0], plan.notes
    with pytest.raises(PlanError) as e:  # nothing fits: the refusal itself
        LocalBackend().resolve(replace(spec, model_name_or_path="meta-llama/Llama-3.1-70B"))
    assert "if it has that much; else a machine with that much: --backend slurm or sky)" in str(e.value), e.value
    assert "SkyPilot" not in str(e.value)
    # no machine (ftctl plan --gpus without a backend): SkyPilot's VM, as before; a machine given: this one's words
    on_4090 = replace(spec, gpus="1xRTX4090")
    with pytest.raises(PlanError) as e:
        make_plan(on_4090)
    assert "(-o host_memory_gb=82 if it has that much; with --backend sky, SkyPilot picks a VM with that much)" in str(
        e.value
    )
    with pytest.raises(PlanError) as e:
        make_plan(on_4090, machine=gpus.parse("1xRTX4090"))
    assert local in str(e.value)


def test_a_docker_run_of_a_named_kind_gets_that_kinds_cards(tmp_path, monkeypatch):
    """docker run --gpus takes the host's first N where nothing names the cards: --gpus 1xRTX3060 beside an RTX 4090
    (index 0) ran on the 4090; the preflight compared it with the 4090 alone (task-323-extra.patch)."""
    from ftctl.docker.backend import DockerBackend
    from ftctl.docker.render import picked_gpus

    fake_nvidia_smi(tmp_path, monkeypatch, RTX4090, RTX3060, RTX3060)
    monkeypatch.setenv("DOCKER_HOST", "")  # this machine's engine, if any: not a remote one's cards
    plan = make_plan(make_spec([], method="qlora", gpus="1xRTX3060", model_name_or_path=LLAMA_1B))
    assert picked_gpus(plan) == ["1"]  # was []: the host's first, the 4090
    assert picked_gpus(make_plan(make_spec([], method="qlora", gpus="2xRTX3060", model_name_or_path=LLAMA_1B))) == [
        "1",
        "2",
    ]
    assert picked_gpus(make_plan(make_spec([], method="qlora", gpus="1xRTX4090", model_name_or_path=LLAMA_1B))) == ["0"]
    assert DockerBackend().detected_gpus() == "1xRTX4090+2xRTX3060"
    assert check_gpus(plan, "docker", DockerBackend().detected_gpus()) == []
