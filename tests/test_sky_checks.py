"""What SkyPilot would refuse late, or ignore, is settled before a task is rendered (ftctl/sky/render.py settle):
one infra, the node's disk sized for the run, a managed job's restarts after its own failures, and every option
a managed job would ignore refused. Unit-level: specs prepared in-process, no SkyPilot (test_sky_yaml.py has the
real SkyPilot read the rendered tasks)."""

from __future__ import annotations

import re

import pytest
import yaml
from click.testing import CliRunner

from ftctl.cli import main
from ftctl.errors import FtctlError
from ftctl.preflight import checkpoint_gb
from ftctl.sky import render as sky_render
from tests.render_fixtures import prepared

MODEL = "meta-llama/Llama-3.1-8B"


def sky(overrides=(), **flags):
    args = dict(backend="sky", method="lora", gpus="8xA100", model_name_or_path=MODEL, output_dir="s3://b/o")
    return prepared(list(overrides), **{**args, **flags})


def resources(prep) -> dict:
    return yaml.safe_load(prep.text.split("\n", 1)[1])["resources"]


# ------------------------------------------------------------------------------------------ job_recovery
def test_a_managed_job_is_not_restarted_after_its_own_failure_unless_asked():
    """Preemptions are recovered by SkyPilot whatever max_restarts_on_errors says; a failure of the job itself
    (bad data, missing credentials, out of memory) would recur, so none is retried by default."""
    assert resources(sky(spot=True))["job_recovery"] == {"strategy": "EAGER_NEXT_REGION", "max_restarts_on_errors": 0}
    for n in (0, 3):
        prep = sky([f"max_requeues={n}"], spot=True)  # `-o max_requeues=0 --spot` was refused as a Slurm key
        assert resources(prep)["job_recovery"]["max_restarts_on_errors"] == n
        assert prep.spec.max_requeues == n  # spec.json says what the task does
    with pytest.raises(FtctlError, match="max_requeues=-1: give 0 or more"):
        sky(["max_requeues=-1"], spot=True)


def test_max_requeues_on_a_cluster_job_is_refused_not_ignored():
    with pytest.raises(FtctlError, match=r"max_requeues=2 bounds a managed job's restarts.*add --spot"):
        sky(["max_requeues=2"])


# ------------------------------------------------------------------------------------------ disk
def test_the_disk_holds_the_model_the_staged_checkpoints_and_the_final_model():
    """8B fft on 8xA100 stages save_total_limit + 1 checkpoints of ~96 GB (the next is written before the oldest is
    deleted), the final model and the download: more than SkyPilot's 256 GB default."""
    prep = sky(method="fft")
    one, final = checkpoint_gb(prep.plan)
    assert one > 90
    need = sky_render.disk_needed_gb(prep.spec, prep.plan)
    assert need * 2**30 / 1e9 > 4 * one + final + 16  # GiB, SkyPilot's unit
    size = resources(prep)["disk_size"]
    assert size == prep.spec.disk_size and size >= need and size % 64 == 0 and size < need + 64
    # a held-out set keeps the best checkpoint too; fewer kept, a smaller disk; never below 256
    assert resources(sky(["eval_split=0.05", "save_total_limit=1"], method="fft"))["disk_size"] < size
    assert resources(sky())["disk_size"] == 256


def test_a_disk_too_small_for_the_run_is_refused_with_the_size_it_needs():
    with pytest.raises(FtctlError, match=r"disk_size=300 GB is too small for fft .* -o disk_size=512, or lower"):
        sky(["disk_size=300"], method="fft")
    assert resources(sky(["disk_size=1024"], method="fft"))["disk_size"] == 1024


# ------------------------------------------------------------------------------------------ infra
@pytest.mark.parametrize(
    "flags,overrides,infra",
    [
        ({"infra": "gcp"}, ["region=us-east1"], "gcp/us-east1"),
        ({}, ["cloud=gcp", "region=us-east1"], "gcp/us-east1"),
        ({}, ["cloud=aws"], "aws"),
        ({"infra": "aws/us-east-1"}, ["cloud=AWS", "region=us-east-1"], "aws/us-east-1"),
        ({"infra": "aws/us-east-1/us-east-1a"}, ["region=us-east-1"], "aws/us-east-1/us-east-1a"),
        ({"infra": "k8s/my/context"}, ["cloud=kubernetes", "region=my/context"], "k8s/my/context"),
        ({"infra": "slurm/cluster1"}, [], "slurm/cluster1"),
    ],
)
def test_cloud_and_region_are_folded_into_one_infra(flags, overrides, infra):
    """SkyPilot 0.14 refuses a task with both infra and cloud/region ("Cannot specify both infra and cloud")."""
    prep = sky(overrides, **flags)
    res = resources(prep)
    assert res["infra"] == infra and "cloud" not in res and "region" not in res
    assert (prep.spec.infra, prep.spec.cloud, prep.spec.region) == (infra, None, None)


@pytest.mark.parametrize(
    "flags,overrides,said",
    [
        ({"infra": "aws"}, ["cloud=gcp"], "--infra aws and -o cloud=gcp name two clouds: drop -o cloud"),
        ({"infra": "gcp/us-central1"}, ["region=us-east1"], "name two regions: give the region in --infra"),
        ({"infra": "awss"}, [], "--infra awss: SkyPilot 0.14 knows no cloud 'awss'. Did you mean 'aws'?"),
        ({}, ["cloud=gcpp"], "-o cloud=gcpp: SkyPilot 0.14 knows no cloud 'gcpp'. Did you mean 'gcp'?"),
        ({}, ["cloud=zzz"], "SkyPilot's: aws, azure,"),
        ({}, ["region=us-east1"], "-o region=us-east1 needs its cloud: --infra CLOUD/us-east1"),
    ],
)
def test_contradicting_or_unknown_clouds_are_refused_in_one_line(flags, overrides, said):
    with pytest.raises(FtctlError) as e:
        sky(overrides, **flags)
    assert said in str(e.value) and "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------ ignored options
def test_what_a_managed_job_would_ignore_is_refused_all_at_once():
    with pytest.raises(FtctlError) as e:
        sky(["idle_minutes=10"], spot=True, cluster="dev", down=True)
    said = str(e.value)
    assert said.startswith("3 problems with the SkyPilot options:")
    assert "--cluster dev: --spot runs a managed job" in said and "-o run_name=NAME names the job" in said
    assert "--down: --spot" in said and "-o idle_minutes=10: --spot" in said


def test_an_idle_autostop_that_would_never_happen_is_refused():
    with pytest.raises(FtctlError, match="idle_minutes=10 with --down"):
        sky(["idle_minutes=10"], down=True)
    with pytest.raises(FtctlError, match="no idle autostop on --infra slurm/c"):
        sky(["idle_minutes=10"], infra="slurm/c", gpus="cpu", model_name_or_path="HuggingFaceTB/SmolLM2-135M")
    assert sky(["idle_minutes=10"]).spec.idle_minutes == 10


# ------------------------------------------------------------------------------------------ container
def test_a_container_skypilot_cannot_run_points_at_its_docker_form_or_says_there_is_none():
    with pytest.raises(FtctlError) as e:
        sky(container="apptainer:x.sif")
    assert "docker:x.sif" not in str(e.value) and "ftctl build --push" in str(e.value)
    with pytest.raises(FtctlError, match="pass --container docker:ghcr.io/a/b:1"):
        sky(container="apptainer:docker://ghcr.io/a/b:1")
    with pytest.raises(FtctlError, match="pass --container docker:nvcr.io/nvidia/pytorch:24.07-py3"):
        sky(container="pyxis:nvcr.io#nvidia/pytorch:24.07-py3")


# ------------------------------------------------------------------------------------------ beside ftctl/sky
@pytest.mark.xfail(strict=True, reason="RunSpec's max_requeues / disk_size defaults are values, not None (spec.py)")
def test_a_value_given_equal_to_the_old_default_is_taken_as_given():
    assert resources(sky(["max_requeues=5"], spot=True))["job_recovery"]["max_restarts_on_errors"] == 5
    with pytest.raises(FtctlError, match="disk_size=256 GB is too small"):
        sky(["disk_size=256"], method="fft")


def test_keys_sky_lists_every_sky_key():
    out = CliRunner().invoke(main, ["keys", "sky"]).output
    assert all(f"  {k} = " in out for k in ("region", "disk_size", "down", "idle_minutes"))


def test_the_nearest_plans_do_not_carry_the_host_memory_to_other_machines():
    """-o host_memory_gb is the RAM of the machines asked for: a plan on other GPUs assumes theirs."""

    def nearest_fft(*overrides) -> str:
        with pytest.raises(FtctlError) as e:
            sky(overrides, method="fft", model_name_or_path="meta-llama/Llama-3.1-70B")
        return re.search(r"--gpus \S+ --method fft", str(e.value)).group(0)

    assert nearest_fft("host_memory_gb=1800") == nearest_fft()
