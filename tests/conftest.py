"""Fixtures shared by the whole suite, registered once so that each session-scoped one (the Slurm
cluster, the S3 server, the tiny model) is started once per test run, not once per importing module."""

import functools
import os
from pathlib import Path

import pytest

# The two xdist workers share this repo's 2 cores: torch's OpenMP threads that spin at their barriers hold a core the
# thread they wait for needs (a LoRA step of the demo model: 43 s spinning, 13 s asleep, on 2 threads at a load of ~10;
# task-153). Set before any fixture module imports torch; a test's subprocesses inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

pytest_plugins = [
    "tests.tiny_fixtures",
    "tests.s3_fixtures",
    "tests.gcs_fixtures",
    "tests.azure_fixtures",
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
    monkeypatch.delenv("FTCTL_DOCKER", raising=False)  # the user's container engine (docker.engine): tests pick theirs
    monkeypatch.delenv("FTCTL_LOCAL_DIR", raising=False)  # a user's staging dir (checkpoints.staging)


# What exists once per machine: the Slurm test cluster (and SkyPilot's infra on it, which also writes root's ~/.ssh,
# ~/.bashrc and ~/.sky), and the docker stand-in's containers (processes of this machine). Under pytest-xdist
# (scripts/test.sh: -n 2 --dist loadgroup) the tests of these files run on one worker, one after another (in
# collection order), so one cluster is started per run and no two tests drive it from two processes; the other worker takes
# every other test. By file, not by an xdist_group mark: xdist 3.8 names a marked test by its group through
# `item._nodeid`, which pytest 9 no longer reads (the marked tests were spread over both workers, two clusters up).
ONE_WORKER = "machine"
ONE_WORKER_FILES = (
    "test_docker_backend.py",  # tests/fake_docker.py's containers
    "test_sky_launch.py",
    "test_sky_yaml.py",
    "test_slurm_e2e.py",
    "test_slurm_relaunch.py",
    "test_slurm_scheduler.py",
    "test_slurm297.py",  # its cancel-during-the-wait test uses slurm_cluster
    "test_slurm_defmem267.py",
    "test_slurm291.py",
    "test_slurm320.py",  # its rendezvous-lock test runs a 2-node job on slurm_cluster
    "test_slurm330.py",  # its USR2 test runs a 2-node job on slurm_cluster
)
ONE_WORKER_FIXTURES = frozenset({"slurm_cluster", "slurm", "e2e", "sky_infra", "sky_s3", "sky_tools"})


@pytest.hookimpl(tryfirst=True)  # before its fixtures start anything
def pytest_runtest_setup(item):
    """A test of another file that uses the cluster fails at once, saying so (in a run of one process too): on a second
    worker it would start a second cluster, and SkyPilot's infra a second one in root's home."""
    uses = sorted(ONE_WORKER_FIXTURES.intersection(item.fixturenames))
    if uses and item.path.name not in ONE_WORKER_FILES:
        pytest.fail(
            f"{item.path.name} uses {', '.join(uses)}: add it to ONE_WORKER_FILES in tests/conftest.py (those files' "
            "tests run on one pytest-xdist worker)",
            pytrace=False,
        )


# The order the xdist workers take the tests in (scripts/test.sh: -n 2 --dist loadgroup; a run in one process keeps
# pytest's). One worker takes ONE_WORKER_FILES' tests (15 of the suite's 22 minutes, helper 244) while the other works
# through the rest, which they then share: the long tests first (the demo, ~200 s, then every file with a slow-marked
# test or a module-scoped fixture), so that the two end together on short tests, not one of them on a long one while
# the other has nothing left. The demo goes before the DeepSpeed files: their offload tests wait for the CPU Adam that
# scripts/test.sh builds meanwhile (~95 s of g++).
FIRST_FILES = ("test_demo_model.py",)


@functools.cache
def _has_module_fixture(path: Path) -> bool:
    """A test file with a module-scoped fixture of its own (often a training run its tests read, seconds to half a
    minute): its tests are one unit of work, so that the two workers do not each build it (tests/test_lora_dropout.py's
    checks, ~20 s, were built twice)."""
    return path.name not in ONE_WORKER_FILES and 'scope="module"' in path.read_text()


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist, the order above; each file's tests stay together, in their order."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    long = {item.path for item in items if item.get_closest_marker("slow") or _has_module_fixture(item.path)}

    def rank(item) -> int:
        name = item.path.name
        return 0 if name in ONE_WORKER_FILES else 1 if name in FIRST_FILES else 2 if item.path in long else 3

    items.sort(key=rank)  # stable: within a rank, pytest's order


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """--dist loadgroup: ONE_WORKER_FILES' tests as one unit of work, handed out first; a file with a module-scoped
    fixture as one unit; every other test its own unit, handed to whichever worker is free (as --dist load). The units
    in the workers' collection order (pytest_collection_modifyitems), not xdist's largest first."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    config.option.loadscopereorder = False
    root = config.rootpath

    class OneWorkerForTheMachine(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            file = nodeid.split("::", 1)[0]
            if file.rsplit("/", 1)[-1] in ONE_WORKER_FILES:
                return ONE_WORKER
            return file if _has_module_fixture(root / file) else nodeid

    return OneWorkerForTheMachine(config, log)
