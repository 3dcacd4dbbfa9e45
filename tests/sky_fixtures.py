"""SkyPilot's own Slurm infra on the tests' Slurm cluster: fixture ``sky_infra`` (session scope).

On top of ``slurm_cluster`` (tests/slurm_fixtures.py: the one cluster of the session), tests/sky/infra-up.sh
starts an sshd "login node" on 127.0.0.1, a SkyPilot API server of the SkyPilot venv ($FTCTL_SKY_PYTHON,
else .venv-sky) with HOME in the infra's own directory, and `sky check slurm`; SkyPilot then provisions
tasks with sbatch and runs them with srun on node1/node2, offline, exactly as on a real Slurm cluster (the
reference recipe shared/reference/sky-launch/ lists the four offline substitutes).

The nodes live in network namespaces: the S3 server the jobs write checkpoints to (``sky_s3``) listens on
the cluster bridge's host address, which both the nodes and this machine reach. The nodes' "image" is the
trainer environment (torchrun of this venv on their PATH); ftctl's source travels with each task.

Only here, the SkyPilot environment carries tests/sky/site/sitecustomize.py (PYTHONPATH): the jobs
controller's internet probe answers "reachable" (FTCTL_TEST_SKY_OFFLINE=1), and the optimizer's enabled
clouds can be set (FTCTL_TEST_SKY_CLOUDS, for prices from the catalog fixture tests/sky/catalog).

SkyPilot writes into root's passwd home whatever HOME says (~/.ssh, ~/.sky_ssh_rc, a line in ~/.bashrc);
those are saved first and put back at teardown, which always runs (also on failure or Ctrl-C), with the
/tmp leftovers SkyPilot makes removed. First use downloads SkyPilot's wheels for the nodes' Python 3.10
and uv into ~/.cache/ftctl-test (needs PyPI once, ~30 s); later sessions are offline.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.s3_fixtures import FAKE_KEY_ID, FAKE_SECRET, MotoS3, free_port
from tests.slurm_fixtures import SlurmCluster

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent / "sky"
SKY_VERSION = "0.14.1"
CACHE = Path(os.environ.get("FTCTL_TEST_CACHE", Path.home() / ".cache" / "ftctl-test"))
SLURM_CLUSTER_NAME = "ftctltest"  # tests/slurm/start-cluster.sh's CLUSTER: SkyPilot's infra slurm/<name>
ROOT_FILES = (".ssh", ".bashrc", ".sky_ssh_rc", ".sky")  # what SkyPilot may write in root's home
TMP_LEFTOVERS = ("sky-tmp", "sky_ssh_", "sky_app_", "sky_setup_", "uv_cache_")


def sky_bin() -> Path:
    py = os.environ.get("FTCTL_SKY_PYTHON") or str(REPO / ".venv-sky" / "bin" / "python")
    return Path(py).parent


def _py310() -> Path | None:
    found = sorted(Path("/root/.pyenv/versions").glob("3.10*/bin/python3.10"))
    return (
        found[-1].parent if found else (Path(shutil.which("python3.10")).parent if shutil.which("python3.10") else None)
    )


def _wheelhouse(py310: Path) -> Path:
    wh = CACHE / f"sky-wheelhouse-{SKY_VERSION}"
    if not (wh / ".done").exists():
        subprocess.run(
            [
                str(py310 / "python3.10"),
                "-m",
                "pip",
                "download",
                "-q",
                "-d",
                str(wh),
                f"skypilot[slurm,remote]=={SKY_VERSION}",
            ]
            + ["pip", "wheel", "setuptools", "setuptools<70", "click<8.3.0"],
            check=True,
            capture_output=True,
            timeout=600,
        )
        (wh / ".done").touch()
    return wh


def _uv() -> Path:
    target = CACHE / "uv-pkg"
    if not (target / "bin" / "uv").exists():
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--target", str(target), "uv"],
            check=True,
            capture_output=True,
            timeout=600,
        )
    return target / "bin" / "uv"


@dataclass
class SkyInfra:
    cluster: SlurmCluster
    base: Path
    env: dict[str, str]  # what `ftctl` runs with: the SkyPilot client's HOME, API server, FTCTL_SKY_PYTHON
    infra: str  # slurm/<name>
    host_ip: str  # this machine's address on the cluster bridge (the nodes reach it)

    def node_dir(self, node: int) -> Path:
        """A directory only node ``node`` sees at ``self.node_path`` (its node-local disk)."""
        return self.base / "nodetmp" / f"node{node}"

    @property
    def node_path(self) -> Path:
        return self.base / "rt"

    def sky(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(sky_bin() / "sky"), *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )


def _save_root_home(state: Path) -> None:
    home = Path("/root")
    state.mkdir(parents=True, exist_ok=True)
    for name in ROOT_FILES:
        src = home / name
        if src.exists() or src.is_symlink():
            dst = state / name
            if src.is_dir():
                shutil.copytree(src, dst, symlinks=True)
            else:
                shutil.copy2(src, dst)
        else:
            (state / f"{name}.absent").touch()


def _restore_root_home(state: Path) -> None:
    home = Path("/root")
    for name in ROOT_FILES:
        target = home / name
        if (state / f"{name}.absent").exists():
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target, ignore_errors=True)
            elif target.exists() or target.is_symlink():
                target.unlink()
        elif (state / name).exists():
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target, ignore_errors=True)
            elif target.exists():
                target.unlink()
            src = state / name
            shutil.copytree(src, target, symlinks=True) if src.is_dir() else shutil.copy2(src, target)


def _remove_tmp_leftovers(since: float) -> None:
    for p in Path("/tmp").iterdir():
        if p.name.startswith(TMP_LEFTOVERS) or "__skypilot" in p.name:
            try:
                if p.stat().st_mtime >= since:
                    shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
            except OSError:
                pass


@pytest.fixture(scope="session")
def sky_tools():
    """What SkyPilot runs on this machine: rsync (its file mounts) and sshd (its Slurm infra), from apt if missing."""
    if not (shutil.which("rsync") and Path("/usr/sbin/sshd").exists()):
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "openssh-server", "rsync"],
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            check=True,
            capture_output=True,
            timeout=600,
        )


@pytest.fixture(scope="session")
def sky_infra(slurm_cluster, sky_tools, tmp_path_factory):
    if not (sky_bin() / "sky").exists():
        pytest.fail(f"SkyPilot's venv {sky_bin().parent} has no `sky`: run scripts/setup.sh (or set FTCTL_SKY_PYTHON)")
    py310 = _py310()
    if py310 is None:
        pytest.fail("SkyPilot's node runtime needs a python3.10 (pyenv 3.10 or python3.10 on PATH)")
    slot = slurm_cluster.slot
    base = Path(f"/tmp/ftctl-sky-{slot}")
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    started = time.time() - 1
    state = base / "root-home"
    script_env = {
        **os.environ,
        "BASE": str(base),
        "SLURM_BASE": str(slurm_cluster.base),
        "CLUSTER": SLURM_CLUSTER_NAME,
        "NODES": str(len(slurm_cluster.nodes)),
        "SSH_PORT": str(free_port()),
        "API_PORT": str(free_port()),
        "SKY_BIN": str(sky_bin()),
        "TRAINER_BIN": str(Path(sys.executable).parent),
        "PY310": str(py310),
        "UV": str(_uv()),
        "WHEELHOUSE": str(_wheelhouse(py310)),
        "CATALOG": str(HERE / "catalog" / "v8"),
        "SITE": str(HERE / "site"),
    }
    _save_root_home(state)
    try:
        proc = subprocess.run([str(HERE / "infra-up.sh")], env=script_env, capture_output=True, text=True, timeout=300)
        (base / "infra-up.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0 or "ready" not in proc.stdout:
            pytest.fail(f"SkyPilot's Slurm infra did not start:\n{proc.stdout}\n{proc.stderr}")
        env = {
            **slurm_cluster.env,
            "HOME": str(base / "client"),
            "SKYPILOT_DISABLE_USAGE_COLLECTION": "1",
            "SKYPILOT_API_SERVER_LOCAL_PORT": script_env["API_PORT"],
            "SKYPILOT_API_SERVER_ENDPOINT": f"http://127.0.0.1:{script_env['API_PORT']}",
            "FTCTL_SKY_PYTHON": str(sky_bin() / "python"),
            "FTCTL_HOME": str(base / "ftctl-home"),
            "PYTHONPATH": str(HERE / "site"),
            "FTCTL_TEST_SKY_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
        }
        env.pop("FTCTL_DEBUG", None)
        yield SkyInfra(
            cluster=slurm_cluster,
            base=base,
            env=env,
            infra=f"slurm/{SLURM_CLUSTER_NAME}",
            host_ip=f"10.200.{slot}.1",
        )
    finally:
        down = subprocess.run(
            [str(HERE / "infra-down.sh")], env=script_env, capture_output=True, text=True, timeout=400
        )
        (base / "infra-down.log").write_text(down.stdout + down.stderr)
        _restore_root_home(state)
        _remove_tmp_leftovers(started)


@pytest.fixture(scope="session")
def sky_s3(sky_infra, tmp_path_factory):
    """An S3 server on the cluster bridge's host address: the nodes (in their namespaces) and this
    machine both reach it."""
    server = MotoS3(tmp_path_factory.mktemp("sky-moto"), host=sky_infra.host_ip)
    server.start()
    yield server
    server.kill()


def s3_env(server: MotoS3) -> dict[str, str]:
    """The AWS variables of a launch: dummy credentials (passed to the job as secrets, by name)."""
    return {
        "AWS_ACCESS_KEY_ID": FAKE_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": FAKE_SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": server.endpoint,
        "AWS_EC2_METADATA_DISABLED": "true",
    }
