"""A managed job's name has one owner (helper 253): sky_inputs.job_name. The launch names the job with it, the task's
header says it (its `sky jobs launch -n` line: the task's spec is named after the run's directory, and the header
recovered the run's name from the spec.json it ships) and the lease holder ends with it (of the name the job
recorded at launch)."""

from __future__ import annotations

import pytest

from ftctl.backend import JobRef
from ftctl.sky import backend as sky_backend
from ftctl.sky import inputs as sky_inputs
from tests.render_fixtures import prepared, write_model_config


@pytest.mark.parametrize("run_name", [None, "1e-4", "lr-1e-4"])
def test_the_header_the_launch_and_the_lease_holder_name_a_managed_job_alike(tmp_path, monkeypatch, run_name):
    """A model directory here is shipped (the nodes' spec names it where it lands); no run_name: the name is the
    model's, which the task's own name (the run's directory) is not; '1e-4': a name SkyPilot refuses, made one."""
    monkeypatch.chdir(tmp_path)
    model = write_model_config(tmp_path / "my model")
    named = {"run_name": run_name} if run_name else {}
    flags = dict(backend="sky", method="lora", gpus="1xA100", spot=True, model_name_or_path=str(model), **named)
    prep = prepared(output_dir="s3://b/o", **flags)
    job = sky_inputs.job_name(prep.spec)
    assert job == sky_inputs.sky_name(run_name or "ftctl-lora-my-model")
    assert (job != sky_inputs.run_key(prep.spec)) is (run_name is None)  # the task's name: the output's digest added
    [line] = [ln for ln in prep.text.splitlines() if ln.startswith("#   sky jobs launch ")]
    assert line.endswith(f" -n {job}")
    ref = JobRef("sky", "managed/12", str(prep.paths.root), prep.spec.name, prep.spec.output)  # as send records it
    ref.extra.update(managed=True, sky_job_id=12)
    assert sky_backend.lease_holder(ref) == f"_{job}_12-0"
