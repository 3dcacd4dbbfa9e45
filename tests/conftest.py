"""Fixtures shared by the whole suite, registered once so that each session-scoped one (the Slurm
cluster, the S3 server, the tiny model) is started once per test run, not once per importing module."""

import pytest

pytest_plugins = [
    "tests.tiny_fixtures",
    "tests.s3_fixtures",
    "tests.slurm_fixtures",
    "tests.slurm_e2e_fixtures",
    "tests.trainer_fixtures",
    "tests.sky_fixtures",
    "tests.disk_fixtures",
]


def pytest_configure(config):
    """The FTCTL_TEST_HOLD hook (tests/hold_hook.py), for tests that hold in-process."""
    from tests.hold_hook import install

    install()


@pytest.fixture(autouse=True)
def _user_config_home(tmp_path_factory, monkeypatch):
    """Every test reads and writes an empty user config of its own, never ~/.config/ftctl/config.yaml:
    an `image:` or a `built:` record there would change what renders, and `ftctl build` records in it; and a jobs
    record of its own (every launch records its job, a local run too)."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("xdg-config")))
    monkeypatch.setenv("FTCTL_HOME", str(tmp_path_factory.mktemp("ftctl-home")))  # the jobs record: not ~/.ftctl's


@pytest.fixture(autouse=True)
def _activated_environment(monkeypatch):
    """Every test runs as from the README's activated venv (`source .venv/bin/activate`): this interpreter's bin
    directory first on PATH, where a Slurm job without a container finds its python3 (slurm/backend.py refuses a
    PATH whose python3 lacks ftctl). Tests of another PATH set their own."""
    from tests.slurm_fixtures import _venv_path

    monkeypatch.setenv("PATH", _venv_path())
