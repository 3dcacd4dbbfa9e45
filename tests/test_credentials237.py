"""Helper 237 (explore46's findings 4 and 9, every backend).

#4: temporary AWS credentials (AWS_SESSION_TOKEN, as `aws configure export-credentials --format env` exports an SSO or
assume-role profile's, with AWS_CREDENTIAL_EXPIRATION) went with an S3 output's job as if they lasted: a multi-day run
lost its store hours in, and a SkyPilot recovery or a Slurm requeue started with the same expired ones. The launch now
refuses ones already expired, warns where they expire before the run's estimated training ends (when, how long the run
is, the fixes), and notes a token whose expiry is unknown, or a relaunched job's (managed, Slurm) that outlasts it.

#9: WANDB_API_KEY was a default secret of every job, report_to=none too: it went to SkyPilot's secrets, docker's -e and
the Slurm script's list of secrets. spec.default_secrets is the one owner of the default set; a job gets W&B's key
where the run reports to wandb, or where --secret WANDB_API_KEY asks for it. (The #9 tests need
/work/notes/task-237-extra.patch, spec.py's part.)"""

from __future__ import annotations

import datetime

import pytest
import yaml

from ftctl import preflight
from ftctl.preflight import ERROR, NOTE, WARNING, check_session_credentials, train_seconds
from ftctl.spec import build
from tests.render_fixtures import prepared

NOW = datetime.datetime(2026, 12, 6, 20, 0, tzinfo=datetime.timezone.utc)
KEYS = {"AWS_ACCESS_KEY_ID": "ASIAEXAMPLEEXAMPLE12", "AWS_SECRET_ACCESS_KEY": "s" * 40, "AWS_SESSION_TOKEN": "t" * 60}
MODEL = "meta-llama/Llama-3.1-8B"


def _run(backend="slurm", output="s3://b/runs/long", max_steps=20000, **flags):
    """A lora run of Llama-3.1-8B on 8xA100: 20,000 steps at the plan's ~1.7 s are ~9.6 h of training."""
    flags = {"model_name_or_path": MODEL, "method": "lora", "gpus": "8xA100", **flags}
    prep = prepared(backend=backend, output_dir=output, max_steps=max_steps, **flags)
    return prep.spec, prep.plan


def _expires_in(hours: float) -> dict:
    when = NOW + datetime.timedelta(hours=hours)
    return {**KEYS, "AWS_CREDENTIAL_EXPIRATION": when.isoformat()}  # as botocore's datetime.isoformat() writes it


def _check(spec, plan, backend, environ):
    return check_session_credentials(spec, plan, backend, environ=environ, now=NOW)


def test_the_estimate_is_the_plans_steps_at_its_step_time():
    spec, plan = _run()
    assert train_seconds(spec, plan) == pytest.approx(20000 * plan.step_s)
    assert 8 * 3600 < train_seconds(spec, plan) < 12 * 3600


@pytest.mark.parametrize("backend", ["local", "docker", "slurm", "sky"])
def test_credentials_expiring_before_the_run_ends_are_a_warning_with_when_how_long_and_the_fixes(backend):
    spec, plan = _run(backend)
    [found] = _check(spec, plan, backend, _expires_in(5))
    assert found.level == WARNING, found
    text = found.text
    assert "expire at 2026-12-07 01:00 UTC, in ~5.0 h" in text and "the run trains for ~9.6 h est." in text, text
    assert "loses s3://b/runs/long" in text and "long-lived keys" in text, text
    assert 'eval "$(aws configure export-credentials --format env)"' in text and "resumes" in text, text
    assert ("--infra aws" in text) == (backend == "sky"), text  # the nodes' IAM role: SkyPilot's skypilot-v1
    assert ("requeued attempt starts with the same ones" in text) == (backend == "slurm"), text
    assert "t" * 60 not in text and "s" * 40 not in text


def test_a_managed_jobs_recoveries_are_said_to_start_with_the_same_credentials():
    spec, plan = _run("sky", spot=True)
    [found] = _check(spec, plan, "sky", _expires_in(5))
    assert found.level == WARNING and "a recovery (SkyPilot's" in found.text, found
    # lasting the run's training, they still end a recovery that comes after them: a note
    [later] = _check(spec, plan, "sky", _expires_in(30))
    assert later.level == NOTE and "after the run's ~9.6 h of training est." in later.text, later
    assert "for recoveries that keep reaching it, pass long-lived keys" in later.text, later


def test_credentials_lasting_the_run_say_nothing_where_no_relaunch_reuses_them():
    for backend in ("local", "docker", "sky"):
        spec, plan = _run(backend)
        assert _check(spec, plan, backend, _expires_in(30)) == [], backend


def test_expired_credentials_stop_the_launch():
    spec, plan = _run("docker")
    [found] = _check(spec, plan, "docker", _expires_in(-1))
    assert found.level == ERROR and "expired at 2026-12-06 19:00 UTC" in found.text, found
    assert "aws sso login" in found.text, found


@pytest.mark.parametrize("value", [None, "tomorrow"])
def test_a_session_token_whose_expiry_is_not_known_is_one_note(value):
    spec, plan = _run("sky")
    environ = {**KEYS, **({"AWS_CREDENTIAL_EXPIRATION": value} if value else {})}
    [found] = _check(spec, plan, "sky", environ)
    assert found.level == NOTE and "expire at a time not known here" in found.text, found
    assert ("is unset" if value is None else "is no ISO 8601 time") in found.text, found


def test_an_estimate_not_known_is_said_so():
    spec, plan = _run("slurm", max_steps=-1, data_path="s3://b/data/conv.json")  # no local data, no max_steps
    [found] = _check(spec, plan, "slurm", _expires_in(5))
    assert found.level == NOTE and "how long the run trains is not estimated" in found.text, found


@pytest.mark.parametrize("zone", ["Z", "+00:00", "+02:00", ""])
def test_the_expiry_reads_as_the_aws_tools_write_it(zone):
    when = preflight.expiry(f"2026-12-07T03:00:00{zone}")
    hours = 1 if zone == "+02:00" else 3
    assert when == datetime.datetime(2026, 12, 7, hours, tzinfo=datetime.timezone.utc)


def test_no_finding_without_a_session_token_or_for_an_output_not_in_s3():
    spec, plan = _run("local")
    long_lived = {k: v for k, v in _expires_in(1).items() if k != "AWS_SESSION_TOKEN"}
    assert _check(spec, plan, "local", long_lived) == []
    spec, plan = _run("local", output="/tmp/ftctl-237-out")
    assert _check(spec, plan, "local", _expires_in(-1)) == []


def test_the_launchs_preflight_asks_it(monkeypatch):
    spec, plan = _run("sky")
    for check in ("check_model", "check_chat_template", "check_data", "check_output", "check_disk"):
        monkeypatch.setattr(preflight, check, lambda *a, **k: [])
    monkeypatch.setattr(preflight, "check_resume", lambda *a, **k: [])
    monkeypatch.setattr(preflight, "check_lora_targets", lambda *a, **k: [])
    for name, value in _expires_in(-1).items():
        monkeypatch.setenv(name, value)
    said = preflight.preflight(spec, plan, "sky")
    assert any(f.level == ERROR and "AWS_SESSION_TOKEN) expired" in f.text for f in said), said


# ------------------------------------------------------------------------------------------ #9: W&B's key
def test_wandbs_key_is_a_default_secret_only_where_the_run_reports_to_wandb():
    assert build().secrets == ["HF_TOKEN"]
    assert build(None, {"report_to": "wandb"}).secrets == ["HF_TOKEN", "WANDB_API_KEY"]
    assert build(None, None, ["report_to=tensorboard,wandb"]).secrets == ["HF_TOKEN", "WANDB_API_KEY"]
    # report_to from a later layer than --secret: the default set still has it, first
    both = build({"report_to": "none"}, {"secrets": ["MY_TOKEN"]}, ["report_to=wandb"])
    assert both.secrets == ["HF_TOKEN", "WANDB_API_KEY", "MY_TOKEN"]
    assert build(None, {"secrets": ["WANDB_API_KEY"]}).secrets == ["HF_TOKEN", "WANDB_API_KEY"]  # asked: passed
    assert build({"secrets": ["MY_TOKEN"], "report_to": "wandb"}).secrets == ["MY_TOKEN"]  # a run file's own list
    assert build(None, {"report_to": "wandb"}, ["secrets=none"]).secrets == []


def test_no_backend_passes_wandbs_key_to_a_run_that_does_not_log_to_wandb(monkeypatch):
    from ftctl.sky.backend import job_secrets

    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    for report_to, passed in (("none", False), ("wandb", True)):
        sky = prepared(
            backend="sky", model_name_or_path=MODEL, gpus="8xA100", output_dir="s3://b/r", report_to=report_to
        )
        assert ("WANDB_API_KEY" in yaml.safe_load(sky.text)["secrets"]) == passed
        assert ("WANDB_API_KEY" in job_secrets(sky.spec)) == passed
        docker = prepared(backend="docker", gpus="cpu", output_dir="/tmp/ftctl-237-d", report_to=report_to)
        assert ("-e WANDB_API_KEY " in docker.text) == passed, docker.text
        slurm = prepared(backend="slurm", gpus="cpu", output_dir="/tmp/ftctl-237-s", report_to=report_to)
        line = next(x for x in slurm.text.splitlines() if x.startswith("# secrets come from"))
        assert ("WANDB_API_KEY" in line) == passed, line
        assert "k" * 40 not in sky.text + docker.text + slurm.text


def test_an_unset_wandb_key_is_warned_of_only_where_wandb_needs_it(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    asked = build(None, {"secrets": ["WANDB_API_KEY"]})  # report_to=none: W&B never reads it
    assert preflight.check_secrets(asked) == []
    [found] = preflight.check_secrets(build(None, {"report_to": "wandb"}))
    assert "WANDB_API_KEY is not set here" in found.text
