"""First contact as a cloud user of SkyPilot (`ftctl launch --backend sky ... --dry-run`) and as a docker host's user
(`--backend docker`), offline: what such users get wrong, and what ftctl said back (helper 132, explore30)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ftctl.errors import FtctlError

REPO = Path(__file__).resolve().parents[1]
FTCTL = str(Path(sys.executable).parent / "ftctl")
DAEMON_DOWN = "docker is installed but its daemon does not answer (Cannot connect to the Docker daemon at "


@pytest.fixture
def docker_down(tmp_path):
    """The docker CLI whose daemon does not answer (tests/fake_docker.py: every verb fails), and a docker job
    recorded as launched from here."""
    from ftctl.backend import JobRef
    from tests.test_docker_backend import standin_env

    env = standin_env(tmp_path, FAKE_DOCKER_DAEMON_DOWN="1")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    ref = JobRef("docker", "ftctl-lora-x", str(run_dir), "ftctl-lora-x", str(run_dir))
    (tmp_path / "home").mkdir()
    line = json.dumps({**dataclasses.asdict(ref), "time": 1})
    (tmp_path / "home" / "jobs.jsonl").write_text(line + "\n")
    return env


def ftctl(env, *args):
    return subprocess.run([FTCTL, *args], env=env, capture_output=True, text=True, timeout=120)


def test_a_docker_job_whose_daemon_does_not_answer_is_not_said_removed_or_ended(docker_down):
    """`ftctl status JOB` said `JOB not found (removed from this docker host)` and `ftctl cancel JOB` `job JOB had
    already ended`, exit 0, where the docker daemon did not answer (stopped, or this shell not in the docker group):
    the container may well be running. `ftctl logs JOB` printed docker's error and exited 0."""
    for verb in ("status", "cancel", "logs"):
        proc = ftctl(docker_down, verb, "ftctl-lora-x")
        assert proc.returncode != 0, (verb, proc.stdout, proc.stderr)
        assert DAEMON_DOWN in proc.stderr and "Traceback" not in proc.stderr, (verb, proc.stderr)
        assert "removed" not in proc.stdout + proc.stderr and "ended" not in proc.stdout, (verb, proc.stdout)
    jobs = ftctl(docker_down, "jobs")
    assert f"unknown: {DAEMON_DOWN}" in jobs.stdout and "removed" not in jobs.stdout, jobs.stdout


def sky(overrides=(), **flags):
    from tests.render_fixtures import prepared

    args = dict(
        backend="sky", method="lora", gpus="8xA100", model_name_or_path="meta-llama/Llama-3.1-8B", output_dir="s3://b/o"
    )
    return prepared(list(overrides), **{**args, **flags})


@pytest.mark.parametrize(
    "infra,said",
    [
        ("us-east-1", "--infra us-east-1: 'us-east-1' is a region, not a cloud: --infra aws/us-east-1 (CLOUD/REGION)."),
        ("us-central1", "--infra gcp/us-central1"),
        ("europe-west4/europe-west4-a", "--infra gcp/europe-west4"),
        ("eastus", "--infra azure/eastus"),  # was "Did you mean 'vast'?"
        ("lamda", "SkyPilot 0.14 knows no cloud 'lamda'. Did you mean 'lambda'?"),
    ],
)
def test_a_region_given_as_the_infra_gets_its_cloud_named(infra, said):
    """`--infra us-east-1` (the cloud left out): "SkyPilot 0.14 knows no cloud 'us-east-1'" and the list of 25 clouds;
    `--infra eastus`: "Did you mean 'vast'?"."""
    with pytest.raises(FtctlError) as e:
        sky(infra=infra)
    assert said in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    "flags,overrides", [({"infra": "lambda"}, []), ({}, ["cloud=lambda"]), ({"infra": "do/nyc2"}, [])]
)
def test_spot_on_a_cloud_without_spot_instances_is_refused_with_the_fix(flags, overrides):
    """`--spot --infra lambda` rendered use_spot: true, and SkyPilot's optimizer found nothing: "Catalog does not
    contain any instances satisfying the request: 1x Lambda([Spot], {'A100': 8})" (from plan and the dry run; the
    launch too, after its checks)."""
    with pytest.raises(FtctlError) as e:
        sky(overrides, spot=True, **flags)
    assert "SkyPilot 0.14 has no spot instances there" in str(e.value) and "drop --spot" in str(e.value)
    assert "use_spot: true" in sky(["cloud=aws"], spot=True).text  # a cloud with spot instances


def test_the_clouds_without_spot_are_the_installed_skypilots(tmp_path):
    """NO_SPOT_CLOUDS is what SkyPilot's clouds say of themselves (Kubernetes decides per cluster, Slurm and SSH
    pools run --spot as a managed job without spot instances)."""
    from tests.sky_fixtures import sky_bin

    code = (
        "from sky import clouds\nfrom sky.utils import registry\n"
        "spot = clouds.CloudImplementationFeatures.SPOT_INSTANCE\n"
        "print(sorted(n for n, c in registry.CLOUD_REGISTRY.items() if spot in getattr(type(c), '_CLOUD_UNSUPPORTED_FEATURES', {})))\n"
    )
    env = {**os.environ, "HOME": str(tmp_path), "SKYPILOT_DISABLE_USAGE_COLLECTION": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([str(sky_bin() / "python"), "-c", code], capture_output=True, text=True, timeout=120, env=env)
    from ftctl.sky.render import NO_SPOT_CLOUDS

    dynamic = {"kubernetes", "slurm", "ssh"}
    assert proc.stdout.strip() == str(sorted({*NO_SPOT_CLOUDS, *dynamic})), proc.stdout + proc.stderr


def test_the_price_says_what_it_leaves_out_and_a_short_run_in_minutes():
    """`-o max_steps=100` of an 8B fft on 8xA100 read `est. total $2.95 for ~0.10 h` (a tiny dataset: `$0.00 for
    ~0.00 h`), while the node's start and setup, a 16 GB download and a checkpoint of ~128 GB each 100 steps, written
    and uploaded, are most of such a run's bill and were not said."""
    from ftctl.plan import make_plan
    from ftctl.sky.cost import describe
    from ftctl.spec import build

    best = {"cloud": "GCP", "region": "us-central1", "instance_type": "a2-highgpu-8g", "spot": False}
    values = {"method": "fft", "gpus": "8xA100", "model_name_or_path": "meta-llama/Llama-3.1-8B", "max_steps": 1000}
    spec = build(values)
    said = describe({**best, "hourly_per_node": 29.39}, spec, make_plan(spec))
    total, left_out = said.splitlines()[1:]
    # 1000 steps at the plan's step time (preflight.train_seconds, the one estimate of a run's length)
    assert total.startswith("est. total     $27.49 for ~56 min of training (65,536,000 tokens"), (
        total
    )  # v112: fft 0.53; v117: checkpointing recomputes, micro-batches pass the weights
    assert left_out == (
        "               not counted: the node's start and setup, the model's ~16 GB download, 1 checkpoint of "
        "~128 GB and the final model (~16 GB) written and uploaded"
    )  # 1,000 steps at the plan's save_steps (625: a 128 GB checkpoint every 100 steps spent the run writing)
    spec = build({**values, "max_steps": 50, "method": "lora"})
    said = describe({**best, "hourly_per_node": 29.39}, spec, make_plan(spec))
    assert "$0.70 for ~1 min of training" in said and "download, the final model (~168 MB) written" in said, said


def test_a_path_with_both_quotes_is_refused_naming_them(tmp_path):
    """`--data "my data/it's \\"q\\"/train.jsonl"` was refused as SkyPilot would not ship it intact (Python's repr
    writes it with \\'), but the reason named "a backslash, a control character, or ' with $ or `", none of which it
    holds."""
    bad = tmp_path / 'it\'s "q"'
    bad.mkdir()
    (bad / "train.jsonl").write_text("{}\n")
    with pytest.raises(FtctlError) as e:
        sky(data_path=str(bad / "train.jsonl"))
    assert "or ' together with \", $ or `: copy it to a path without them." in str(e.value), str(e.value)
