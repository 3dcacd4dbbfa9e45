"""--managed: a SkyPilot managed job (sky.jobs.launch, recovered by its job_recovery) on on-demand instances, for
Kubernetes without spot labels, clouds without spot (Lambda) and whoever wants no spot; --spot stays managed + spot."""

from __future__ import annotations

import pytest
import yaml
from click.testing import CliRunner

from ftctl.cli import main
from ftctl.errors import FtctlError
from ftctl.sky import backend as sky_backend
from ftctl.sky import bridge
from tests.render_fixtures import prepared, sky_validate

OUT = "s3://bucket/runs/m"
WHERE = {"k8s": dict(infra="k8s", gpus="1xL4"), "lambda": dict(infra="lambda", gpus="1xH100")}


def _managed(where: str, overrides=(), **flags):
    return prepared(overrides, backend="sky", method="lora", output_dir=OUT, **WHERE[where], **flags)


def _resources(text: str) -> dict:
    return yaml.safe_load(text)["resources"]


def test_managed_renders_an_on_demand_managed_job_that_skypilot_accepts(tmp_path):
    files = []
    for where in WHERE:
        r = _managed(where, managed=True)
        res = _resources(r.text)
        assert res["use_spot"] is False and res["job_recovery"]["strategy"] == "EAGER_NEXT_REGION", where
        files.append(tmp_path / f"{where}.yaml")
        files[-1].write_text(r.text)
    for file, rec in sky_validate(files).items():
        assert rec["ok"], (file, rec)
        assert rec["summary"]["use_spot"] == [False] and rec["summary"]["job_recovery"], (file, rec["summary"])


def test_spot_and_managed_is_spot_and_launch_sends_a_managed_job(monkeypatch, tmp_path):
    spot = _resources(prepared(backend="sky", method="lora", output_dir=OUT, gpus="1xL4", infra="aws", spot=True).text)
    both = prepared(backend="sky", method="lora", output_dir=OUT, gpus="1xL4", infra="aws", spot=True, managed=True)
    assert spot["use_spot"] is True and _resources(both.text) == spot
    sent = {}

    def call(op, **kw):  # SkyPilot's answer to a launch (ftctl/sky/sdk.py)
        sent.update(kw, op=op)
        return {"managed": kw["managed"], "job_id": 7, "cluster": kw["cluster"]}

    monkeypatch.setattr(sky_backend, "stage_source", lambda dest: dest)
    monkeypatch.setattr(bridge, "call", call)
    ref = sky_backend.SkyBackend().send(_managed("k8s", managed=True))
    assert sent["op"] == "launch" and sent["managed"] is True and ref.job_id == "managed/7"


@pytest.mark.parametrize(
    "flags, overrides, said",
    [
        (dict(cluster="mine"), [], "--cluster mine: --managed runs a managed job"),
        (dict(down=True), [], "--down: --managed runs a managed job"),
        ({}, ["idle_minutes=5"], "-o idle_minutes=5: --managed runs a managed job"),
        ({}, ["resume=never"], "-o resume=never with --managed"),
    ],
)
def test_managed_refuses_what_a_managed_job_would_ignore(flags, overrides, said):
    with pytest.raises(FtctlError, match=said):
        _managed("k8s", overrides, managed=True, **flags)


def test_managed_takes_max_requeues_as_its_restarts_after_its_own_failures():
    res = _resources(_managed("lambda", ["max_requeues=2"], managed=True).text)
    assert res["job_recovery"]["max_restarts_on_errors"] == 2 and res["use_spot"] is False


@pytest.mark.parametrize("backend", ["slurm", "docker", "local"])
def test_another_backend_refuses_managed(backend):
    with pytest.raises(FtctlError, match=r"does not take managed \(sky\)"):
        prepared(backend=backend, method="lora", gpus="cpu", output_dir="/tmp/m188", managed=True)


def test_the_managed_flag_reaches_the_render():
    argv = ["render", "--backend", "sky", "--gpus", "1xL4", "--infra", "k8s", "--managed", "--output", OUT]
    out = CliRunner().invoke(main, [*argv, "--model", "meta-llama/Llama-3.1-8B", "--data", "builtin:demo"])
    assert out.exit_code == 0, out.output
    assert "use_spot: false" in out.output and "job_recovery:" in out.output
