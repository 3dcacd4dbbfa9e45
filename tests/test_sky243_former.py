"""A run launched before ftctl named a run's cluster after the run's own key (session 55: the cluster was the run's
name then, shared by every run of the model) relaunches onto its own cluster; the one it ran on is not reused by
itself (helper 243: it may hold another run's job). The launch says so in one line, with how to reuse or stop it."""

from __future__ import annotations

from ftctl.backend import JobRef, record_job
from ftctl.sky import backend as sky_backend
from ftctl.sky import bridge
from ftctl.sky import inputs as sky_inputs
from tests.render_fixtures import prepared

MODEL = "meta-llama/Llama-3.1-8B"


def sky(**flags):
    args = dict(backend="sky", method="lora", gpus="8xA100", model_name_or_path=MODEL, output_dir="s3://b/o")
    return prepared(**{**args, **flags})


def _ran_on(cluster: str, output: str = "s3://b/o") -> None:
    record_job(JobRef("sky", f"{cluster}/3", "/x/runs/old", "n", output, {"cluster": cluster, "sky_job_id": 3}))


def test_a_relaunch_says_where_its_job_ran_before_and_how_to_reuse_or_stop_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FTCTL_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(sky_backend, "stage_source", lambda dest: dest)
    sent = []
    monkeypatch.setattr(bridge, "call", lambda op, **kw: sent.append(kw) or {"managed": False, "job_id": 4, **kw})
    run = sky()
    old, own = run.spec.name, sky_inputs.cluster_name(run.spec)
    assert old == "ftctl-lora-llama-3-1-8b" and own.startswith(old + "-")
    _ran_on(old)
    sky_backend.SkyBackend().send(run)
    said = [ln for ln in capsys.readouterr().err.splitlines() if "ran on cluster" in ln]
    assert said == [
        f"ftctl: this run's job {old}/3 ran on cluster {old}, named as ftctl named a run's cluster before (shared by "
        f"every run of the model); this launch goes to cluster {own}, the run's own. Where {old} is still up, it stops "
        f"after its idle autostop (`ftctl down {old}/3` now); --cluster {old} runs this launch there instead."
    ]
    assert sent[-1]["cluster"] == own  # not reused by itself


def test_no_line_where_the_run_used_its_own_or_a_named_cluster(tmp_path, monkeypatch):
    monkeypatch.setenv("FTCTL_HOME", str(tmp_path / "home"))
    run = sky()
    own = sky_inputs.cluster_name(run.spec)
    assert sky_backend.former_cluster(run.spec, own) is None  # no job recorded
    _ran_on("dev")  # --cluster dev before: its own choice, not the old default
    assert sky_backend.former_cluster(run.spec, own) is None
    _ran_on(run.spec.name, output="s3://b/another")  # another run's
    assert sky_backend.former_cluster(run.spec, own) is None
    _ran_on(own)  # its newest job ran on its own cluster
    _ran_on(run.spec.name)
    assert sky_backend.former_cluster(run.spec, own).startswith(f"ftctl: this run's job {run.spec.name}/3 ran on")
