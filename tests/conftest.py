"""Fixtures shared by the whole suite, registered once so that each session-scoped one (the Slurm
cluster, the S3 server, the tiny model) is started once per test run, not once per importing module."""

pytest_plugins = [
    "tests.tiny_fixtures",
    "tests.s3_fixtures",
    "tests.slurm_fixtures",
    "tests.slurm_e2e_fixtures",
    "tests.trainer_fixtures",
]
