"""The names ftctl gives SkyPilot for a run (helper 243): a run_name SkyPilot would refuse for a cluster or a task (one
starting with a digit, ending with '-', holding '___') passed ftctl's checks and was refused by SkyPilot in its own
words, a managed job's only on its controller, after the launch. The run's key, its managed job's name and its
cluster's are now always SkyPilot's, asked of the installed SkyPilot's own validators; a relaunch gets the same."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import yaml

from ftctl.errors import FtctlError
from ftctl.sky import backend as sky_backend
from ftctl.sky import inputs as sky_inputs
from ftctl.spec import RunSpec
from tests.render_fixtures import REPO, prepared, sky_python

MODEL = "meta-llama/Llama-3.1-8B"
REFUSED = ["1e-4", "run-", "a___b", "7"]  # each passes ftctl's run_name rule; SkyPilot 0.14 refuses each


def sky(**flags):
    args = dict(backend="sky", method="lora", gpus="8xA100", model_name_or_path=MODEL, output_dir="s3://b/o")
    return prepared(**{**args, **flags})


# In SkyPilot's venv: its cluster-name check (sky.launch's, and a managed job's cluster on the controller, named after
# the job), its task-name check, and the task id a managed job's nodes get ($SKYPILOT_TASK_ID, the lease's holder).
_SKY_NAMES = r"""
import json, sys
import sky
from sky.jobs import utils as jobs_utils
from sky.utils import common_utils

def said(check):
    try:
        check()
        return True
    except Exception as e:  # noqa: BLE001
        return str(e).splitlines()[0]

out = {}
for case in json.loads(sys.argv[1]):
    out[case["run_name"]] = {
        "cluster": said(lambda: common_utils.check_cluster_name_is_valid(case["cluster"])),
        "task": said(lambda: sky.Task(name=case["task"], run="true").validate_name()),
        "job": said(lambda: sky.Task(name=case["job"], run="true").validate_name()),
        "job cluster": said(lambda: common_utils.check_cluster_name_is_valid(
            jobs_utils.generate_managed_job_cluster_name(case["job"], 12))),
        "task id": common_utils.get_global_job_id("sky-2026-12-06", case["job"], "12", 0, is_managed_job=True),
    }
print(json.dumps(out))
"""


def _sky_says(cases: list[dict]) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SKYPILOT_", "FTCTL_"))}
    env.update(SKYPILOT_DISABLE_USAGE_COLLECTION="1", PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sky_python(), "-c", _SKY_NAMES, json.dumps(cases)], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


def test_a_run_name_skypilot_would_refuse_still_gives_it_names_it_takes(tmp_path, monkeypatch):
    """Each name as the launch sends it (the cluster, the task's name, the managed job's -n) passes SkyPilot's own
    checks; before, '1e-4' was the cluster's name and SkyPilot refused it ('Cluster name "1e-4" is invalid')."""
    monkeypatch.chdir(tmp_path)
    cases = []
    for run_name in [*REFUSED, "lr-1e-4"]:
        run, managed = sky(run_name=run_name), sky(run_name=run_name, spot=True)
        cases.append(
            {
                "run_name": run_name,
                "cluster": sky_inputs.cluster_name(run.spec),
                "task": yaml.safe_load(run.text)["name"],
                "job": sky_inputs.job_name(managed.spec),
                "header -c": [ln for ln in run.text.splitlines() if ln.startswith("#   sky ")][0].split(" -c ")[1],
                "header -n": [ln for ln in managed.text.splitlines() if ln.startswith("#   sky ")][0].split(" -n ")[1],
                "run dir": run.paths.root.name,
            }
        )
    said = _sky_says(cases)
    for case in cases:
        checks = said[case["run_name"]]
        assert {k: v for k, v in checks.items() if k != "task id"} == dict.fromkeys(
            ["cluster", "task", "job", "job cluster"], True
        ), case
        assert case["cluster"] == case["task"] == case["header -c"].split()[0], case
        assert case["header -n"] == case["job"]
        assert case["run dir"] == case["run_name"]  # the run directory here keeps the name it was given
        # the managed job's trainer holds its lease as SkyPilot's task id ends, as the backend computes it
        ref = sky_backend.JobRef(
            "sky", "managed/12", "", case["run_name"], "s3://b/o", {"managed": True, "sky_job_id": 12}
        )
        assert checks["task id"].endswith(sky_backend.lease_holder(ref)), (checks["task id"], case)
    # a name SkyPilot takes is left as it is (a relaunch of a run from before reuses its cluster); another gets the
    # prefix and a digest of the name, the same for every relaunch
    assert cases[-1]["cluster"] == cases[-1]["job"] == "lr-1e-4"
    assert cases[0]["cluster"].startswith("ftctl-1e-4-") and cases[0]["cluster"] == sky_inputs.cluster_name(
        sky(run_name="1e-4").spec
    )


def test_the_default_keys_are_left_as_they_were():
    """No run_name: ftctl-METHOD-MODEL and a digest of the output, SkyPilot's as they were (relaunches keep their
    cluster)."""
    run = sky()
    assert sky_inputs.cluster_name(run.spec) == run.paths.root.name == yaml.safe_load(run.text)["name"]
    assert sky_inputs.job_name(sky(spot=True).spec) == RunSpec(method="lora", model_name_or_path=MODEL).name


def test_a_cluster_skypilot_would_refuse_is_refused_in_one_line_before_anything_is_sent():
    with pytest.raises(
        FtctlError, match=r"^cluster '1dev': SkyPilot names a cluster with letters.*\(--cluster my-run-1\)\.$"
    ):
        sky(cluster="1dev")
