"""Review 61 findings 3 and 9 (helper 310), both on a SkyPilot cluster that a relaunch or `ftctl down` meets.

3. The misfit line ("cluster C was launched with X, and this run asks for Y") could say the same words for X and Y:
   SkyPilot's fit check also refuses another zone, instance type, spot or local disk, which shape() left out.
9. `ftctl down`'s refusal of a cluster with jobs that did not end said "`ftctl cancel` each first", where sky.queue
   (all users) lists any job on it: another user's, or one run by hand with `sky exec`, which ftctl cannot cancel.

The SkyPilot side runs in the SkyPilot venv with SkyPilot's own objects (offline: the catalog fixture's GCP rows), its
API server's answers (sky.status, sky.queue) built as it sends them, as tests/test_explore63.py does.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ftctl.backend import JobRef, record_job
from ftctl.errors import FtctlError
from ftctl.sky import backend as sky_backend
from ftctl.sky import bridge
from tests.render_fixtures import sky_reads
from tests.sky_fixtures import HERE

REPO = Path(__file__).resolve().parent.parent

MISFIT_ZONE = """
import sky, json
from types import SimpleNamespace
from ftctl.sky import sdk

def misfit(launched, asked):
    task = sky.Task(run="true")
    task.set_resources(asked)
    return sdk.misfit({"handle": SimpleNamespace(launched_resources=launched, launched_nodes=1)}, task)

launched = sky.Resources(infra="gcp/us-central1/us-central1-a", accelerators={"A100": 8})
found = misfit(launched, sky.Resources(infra="gcp/us-central1/us-central1-b", accelerators={"A100": 8}))
print(found["cluster"] != found["task"], found)
spot = misfit(launched, sky.Resources(infra="gcp/us-central1/us-central1-a", accelerators={"A100": 8}, use_spot=True))
print(json.dumps({"zone": found, "spot": spot}))
"""


def test_finding3_a_misfit_in_another_zone_says_two_shapes_that_differ(tmp_path):
    py = os.environ.get("FTCTL_SKY_PYTHON") or str(REPO / ".venv-sky" / "bin" / "python")
    if not Path(py).exists():
        pytest.skip("no SkyPilot venv")
    home = tmp_path / "home"
    shutil.copytree(REPO / "tests" / "sky" / "catalog" / "v8", home / ".sky" / "catalogs" / "v8")  # offline
    env = {**os.environ, "HOME": str(home), "PYTHONPATH": str(REPO)}
    out = subprocess.run([py, "-c", MISFIT_ZONE], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("True"), out.stdout  # was: both '1 node of A100:8 on gcp/us-central1'
    said = json.loads(out.stdout.splitlines()[-1])
    assert said["zone"]["cluster"] == "1 node of A100:8 on gcp/us-central1/us-central1-a"
    assert said["zone"]["task"] == "1 node of A100:8 on gcp/us-central1/us-central1-b"
    # spot on a relaunch onto an on-demand cluster: the same shape in ftctl's words, so SkyPilot's own are added
    assert said["spot"]["cluster"] != said["spot"]["task"], said["spot"]
    assert said["spot"]["task"].endswith("(SkyPilot: GCP([Spot], {'A100': 8}))"), said["spot"]


DOWN = r"""
import json, sys

import sky
from sky.backends import cloud_vm_ray_backend as vm
from sky.schemas.api import responses
from sky.server.requests.serializers import decoders, encoders
from sky.skylet.job_lib import JobStatus
from sky.utils.status_lib import ClusterStatus

from ftctl.sky import sdk

launched = sky.Resources(infra="gcp/us-central1", accelerators={"A100": 8})
handle = vm.CloudVmRayResourceHandle(cluster_name="dev", cluster_name_on_cloud="dev-2ea4", cluster_yaml=None,
                                     launched_nodes=1, launched_resources=launched)
sent = responses.StatusResponse(
    name="dev", launched_at=0, handle=handle, status=ClusterStatus.UP, autostop=30, to_down=False,
    cluster_hash="now-up", cluster_ever_up=True, user_hash="u", user_name="me", workspace="default",
    is_managed=False, nodes=1)
records = decoders.decode_status(json.loads(json.dumps(encoders.encode_status([sent]))))


def job(job_id, status, user):
    return responses.ClusterJobRecord(
        job_id=job_id, job_name="x", username=user, user_hash=user, submitted_at=0, resources="1x",
        status=status, log_path="~/sky_logs/x")


def down(queue):
    sky.status = lambda names: ("status", names)
    sky.queue = lambda cluster, **kw: ("queue", cluster)
    sky.get = lambda request: {"status": records, "queue": queue}[request[0]]
    sky.down = lambda cluster: ("down",)
    sky.stream_and_get = lambda request: None
    return sdk.down("dev")


print(json.dumps({
    # 3: launched from here onto this cluster; 4: another user's; 5: run by hand, its id a job of this machine had
    # on an earlier cluster of the name (torn down since)
    "mixed": down([job(2, JobStatus.SUCCEEDED, "u"), job(3, JobStatus.RUNNING, "u"), job(4, JobStatus.PENDING, "v"),
                   job(5, JobStatus.RUNNING, "u")]),
    "others": down([job(2, JobStatus.SUCCEEDED, "u"), job(4, JobStatus.RUNNING, "v")]),
}))
"""


def test_finding9_down_says_ftctl_cancel_only_for_the_jobs_launched_from_here(tmp_path, monkeypatch):
    """`ftctl down dev/3` of a cluster running job 3 (launched from here), job 4 (another user's) and job 5 (`sky
    exec` by hand, its id one that a job of an earlier cluster of the name had): `ftctl cancel dev/3`, and SkyPilot's
    `sky cancel dev 4 5` for the others; `ftctl down dev/2` (ended) where only another user's job runs: no ftctl
    cancel at all. Was "`ftctl cancel` each first" for all of them."""
    home = tmp_path / "home"
    shutil.copytree(HERE / "catalog" / "v8", home / ".sky" / "catalogs" / "v8")  # offline: GCP's rows
    answers = sky_reads(DOWN, {}, home, tmp_path)
    monkeypatch.setenv("FTCTL_HOME", str(tmp_path / "ftctl"))

    def ref(job_id, sky_job_id, cluster_hash):
        extra = {"cluster": "dev", "sky_job_id": sky_job_id, "managed": False, "cluster_hash": cluster_hash}
        return JobRef("sky", job_id, str(tmp_path / "runs" / job_id), "lora", "s3://b/o", extra=extra)

    record_job(ref("dev/5", 5, "torn-down"))  # a job of the earlier cluster named dev
    record_job(ref("dev/2", 2, "now-up"))
    record_job(ref("dev/3", 3, "now-up"))
    sky = answers["mixed"]["sky"]
    said = {}
    for name, job in [("mixed", ref("dev/3", 3, "now-up")), ("others", ref("dev/2", 2, "now-up"))]:
        monkeypatch.setattr(bridge, "call", lambda op, _name=name, **kw: answers[_name])
        with pytest.raises(FtctlError) as e:
            sky_backend.SkyBackend().down(job)
        said[name] = str(e.value)
        assert "\n" not in said[name] and "`ftctl cancel` each" not in said[name], said[name]
    assert said["mixed"].startswith(
        "cluster dev still has job 3 (RUNNING), job 4 (PENDING), job 5 (RUNNING): tearing it down now would kill them "
        "unsaved. `ftctl cancel dev/3` first (its trainer saves a checkpoint before it stops); jobs 4 and 5 were not "
        f"launched from here (`{sky} queue dev` says whose): `{sky} cancel dev 4 5` cancels them unsaved; "
    ), said["mixed"]
    assert said["mixed"].endswith(f"then `ftctl down dev/3` again; `{sky} down dev` tears it down as it is.")
    assert "ftctl cancel" not in said["others"], said["others"]
    assert (
        f"job 4 was not launched from here (`{sky} queue dev` says whose): `{sky} cancel dev 4` cancels it "
        in (said["others"])
    )
