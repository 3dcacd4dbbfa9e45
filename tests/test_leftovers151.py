"""Leftovers (helper 151): `ftctl merge s3://.../checkpoint-N` downloads what merging reads, not the checkpoint's
optimizer, scheduler and rng states (trained.download_top, chat's too); GB200 is a tier (186 GB, Blackwell's sm100,
an Arm host) that plans, renders for SkyPilot and builds its image for linux/arm64."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ftctl import gpus
from ftctl.docker import build as image_build
from ftctl.docker import image
from ftctl.errors import FtctlError
from ftctl.plan import make_plan
from tests.render_fixtures import make_spec, prepared
from tests.s3_fixtures import make_checkpoint

# what a lora checkpoint holds for loading and merging, and what only a resume reads (an FSDP run's and a
# multi-GPU run's names too)
LOADED = {
    "adapter_config.json": json.dumps({"base_model_name_or_path": "org/base", "peft_type": "LORA"}).encode(),
    "adapter_model.safetensors": b"a" * 64,
    "tokenizer_config.json": b"{}",
    "trainer_state.json": b'{"global_step": 3}',
}
RESUME_ONLY = (
    "optimizer.pt",
    "scheduler.pt",
    "scaler.pt",
    "rng_state.pth",
    "rng_state_1.pth",
    "pytorch_model_fsdp.bin",
)


def test_a_merge_of_a_store_checkpoint_downloads_no_training_state(s3_bucket, tmp_path, monkeypatch):
    """`ftctl merge s3://.../checkpoint-N` downloaded its optimizer.pt, scheduler.pt and rng states (~12 bytes a
    parameter of an fft run's) beside the adapter: what it merges from now holds the adapter, its config and the
    tokenizer, as chat's and eval's download (one filter: trained.TRAINING_STATE)."""
    from ftctl import storage
    from ftctl.trainer import merge as merge_mod

    local = make_checkpoint(tmp_path / "run", 3, {**LOADED, **{n: b"s" * 32 for n in RESUME_ONLY}})
    uri = f"{s3_bucket}/runs/r/checkpoint-3"
    for path in local.iterdir():
        storage.put_file(str(path), f"{uri}/{path.name}")
    merged_from = {}
    real = merge_mod.merge

    def merge_downloaded(run_dir_or_checkpoint, out_dir, *args):  # the local merge of what was downloaded
        merged_from["files"] = sorted(p.name for p in Path(run_dir_or_checkpoint).iterdir())
        merged_from["named"] = args[4]
        return out_dir

    monkeypatch.setattr(merge_mod, "merge", merge_downloaded)
    real(uri, str(tmp_path / "out"))
    assert merged_from == {"files": sorted(LOADED), "named": uri}


def test_the_training_state_is_what_only_a_resume_reads():
    from ftctl.trainer import chat, trained

    assert all(trained.TRAINING_STATE.fullmatch(n) for n in RESUME_ONLY + ("optimizer_0.bin", "scheduler_2.bin"))
    kept = (*LOADED, "model.safetensors", "model-00001-of-00002.safetensors", "pytorch_model.bin", "spec.json")
    assert not any(trained.TRAINING_STATE.fullmatch(n) for n in kept)
    assert not hasattr(chat, "TRAINING_STATE")  # one filter, in trained.py, for chat, eval and merge


# ------------------------------------------------------------------------------------------ GB200
def test_gb200_is_a_tier_of_its_own():
    """`--gpus GB200` was "Unknown GPU type": 186 GB HBM3e a GPU (PyTorch's total 184.31 GiB), sm100 as the B200's,
    2.5 dense bf16 PFLOPS (NVIDIA's GB200 NVL72 sheet: 5 with sparsity)."""
    t = gpus.parse("4xGB200").tier
    assert (t.name, t.memory_gb, t.total_gib, t.compute_capability, t.peak_tflops) == (
        "GB200",
        186,
        184.31,
        (10, 0),
        2500,
    )
    assert gpus.tier("NVIDIA GB200") is t and gpus.tier("nvidia_gb200") is t and gpus.tier("gb200") is t
    assert gpus.tier("NVIDIA B200").name == "B200"  # its name inside the GB200's
    assert t.a_card == "a GB200" and t.sky_name == "GB200"


@pytest.mark.parametrize("count", [1, 4])
def test_gb200_plans_within_its_memory_on_blackwells_attention(count):
    spec = dict(method="lora", model_params="8b")
    p = make_plan(make_spec([], gpus=f"{count}xGB200", **spec))
    b200 = make_plan(make_spec([], gpus=f"{count}xB200", **spec))
    assert (p.tier, p.gpus, p.gpu_memory_gb) == ("GB200", f"{count}xGB200", round(184.31 * 2**30 / 1e9, 2))
    assert (p.precision, p.attn_implementation, p.strategy) == (b200.precision, b200.attn_implementation, b200.strategy)
    assert p.gpu_memory_gb > b200.gpu_memory_gb


def test_gb200_renders_for_skypilot_as_its_accelerator_name():
    """SkyPilot 0.14's canonical name is GB200 (sky.utils.gpu_names; its Kubernetes NCCL profile matches 'GB200')."""
    prep = prepared(
        ["model_params=1b"],
        backend="sky",
        method="lora",
        gpus="4xGB200",
        model_name_or_path="meta-llama/Llama-3.2-1B",
        data_path="s3://b/d.json",
        output_dir="s3://b/o",
    )
    assert yaml.safe_load(prep.text)["resources"]["accelerators"] == "GB200:4"


def test_a_gb200_image_is_built_for_its_arm_hosts():
    argv = image_build.commands("GB200").docker
    assert argv[argv.index("--platform") + 1] == "linux/arm64"
    assert image.default_image("GB200").endswith("-sm100-arm64") and image.fits("GB200", "4xGB200")
    assert not image.fits("B200", "GB200") and not image.fits("GB200", "B200")  # sm100 both; x86 and Arm
    with pytest.raises(FtctlError, match="GB200 nodes are Arm .* and B200 nodes x86_64"):
        image.platform("GB200,B200")
    assert image.platform("GB200,GH200") == "linux/arm64"
