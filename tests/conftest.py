"""Fixtures shared by the whole suite, registered once so that each session-scoped one (the Slurm
cluster, the S3 server, the tiny model) is started once per test run, not once per importing module."""

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
