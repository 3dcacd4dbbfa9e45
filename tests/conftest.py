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
]


def pytest_configure(config):
    """The FTCTL_TEST_HOLD hook (tests/hold_hook.py), for tests that hold in-process."""
    from tests.hold_hook import install

    install()


@pytest.fixture(autouse=True)
def _user_config_home(tmp_path_factory, monkeypatch):
    """Every test reads and writes an empty user config of its own, never ~/.config/ftctl/config.yaml:
    an `image:` or a `built:` record there would change what renders, and `ftctl build` records in it."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("xdg-config")))


@pytest.fixture(autouse=True)
def _activated_environment(monkeypatch):
    """Every test runs as from the README's activated venv (`source .venv/bin/activate`): this interpreter's bin
    directory first on PATH, where a Slurm job without a container finds its python3 (slurm/backend.py refuses a
    PATH whose python3 lacks ftctl). Tests of another PATH set their own."""
    from tests.slurm_fixtures import _venv_path

    monkeypatch.setenv("PATH", _venv_path())


CLUSTER_FIXTURE = "slurm_cluster"  # tests/slurm_fixtures.py: under it the Slurm tests and SkyPilot's (sky_infra)
# the modules of every test on the Slurm cluster (checked at collection): under pytest-xdist one worker runs them
CLUSTER_MODULES = ("test_sky_launch", "test_slurm_e2e", "test_slurm_scheduler")


def pytest_collection_modifyitems(config, items):
    """The Slurm cluster's tests first: under pytest-xdist (scripts/test.sh) one worker starts on them while the
    other trains (they mostly wait on jobs). A test on the cluster outside CLUSTER_MODULES would start a second
    cluster in the other worker: refused here."""
    on_cluster = [item for item in items if CLUSTER_FIXTURE in getattr(item, "fixturenames", ())]
    strays = sorted({item.module.__name__ for item in on_cluster} - {f"tests.{m}" for m in CLUSTER_MODULES})
    if strays:
        raise pytest.UsageError(f"{', '.join(strays)}: tests on the Slurm cluster; add to CLUSTER_MODULES (conftest)")
    items[:] = on_cluster + [item for item in items if item not in on_cluster]


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """Whole modules to a worker (their module fixtures are built once), the cluster's modules as one unit,
    in collection order (the cluster's first). pytest-xdist's own loadgroup cannot: it renames the tests'
    node ids, which pytest 9 no longer reads back."""
    from xdist.scheduler import LoadScopeScheduling

    class ByModule(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return "slurm-cluster" if module.removesuffix(".py").split("/")[-1] in CLUSTER_MODULES else module

    config.option.loadscopereorder = False
    return ByModule(config, log)
