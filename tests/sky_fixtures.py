"""SkyPilot's own Slurm infra on the tests' Slurm cluster: fixture ``sky_infra`` (session scope).

On top of ``slurm_cluster`` (tests/slurm_fixtures.py: the one cluster of the session), tests/sky/infra-up.sh
starts an sshd "login node" on 127.0.0.1, a SkyPilot API server of the SkyPilot venv ($FTCTL_SKY_PYTHON,
else .venv-sky) with HOME in the infra's own directory, and `sky check slurm`; SkyPilot then provisions
tasks with sbatch and runs them with srun on node1/node2, offline, exactly as on a real Slurm cluster (the
reference recipe shared/reference/sky-launch/ lists the four offline substitutes).

The API port is one whose derived ports (``sky_server_ports``) are free as well; the fixture holds them all
from outgoing connections while infra-up.sh runs, and a start that still meets a port in use is undone and
retried on fresh ports (``start_with_fresh_ports``).

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
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.s3_fixtures import FAKE_KEY_ID, FAKE_SECRET, MotoS3
from tests.slurm_fixtures import SlurmCluster

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent / "sky"
SKY_VERSION = "0.14.1"
CACHE = Path(os.environ.get("FTCTL_TEST_CACHE", Path.home() / ".cache" / "ftctl-test"))
SLURM_CLUSTER_NAME = "ftctltest"  # tests/slurm/start-cluster.sh's CLUSTER: SkyPilot's infra slurm/<name>
ROOT_FILES = (".ssh", ".bashrc", ".sky_ssh_rc", ".sky")  # what SkyPilot may write in root's home
TMP_LEFTOVERS = ("sky-tmp", "sky_ssh_", "sky_app_", "sky_setup_", "uv_cache_")


# The ports SkyPilot 0.14's local API server binds for SKYPILOT_API_SERVER_LOCAL_PORT=P (sky/server/server.py,
# sky/server/requests/queues/mp_queue.py get_queue_manager_port): P itself (uvicorn, 127.0.0.1) and its request
# queue's manager on localhost:Q, Q = 50011 if P == 46580 else 50000 + (50011 - 50000 + P - 46580) % 10000.
# Q is always in 50000-59999, inside Linux's ephemeral range (32768-60999), so an outgoing connection of any
# test may hold it ("port Q is already in use by another process", CI once). Both binds set SO_REUSEADDR; the
# metrics port (9090) is bound only with metrics on, which the tests never turn on.
# tests/test_sky_ports.py checks this rule against SkyPilot's own function.
SKY_DEFAULT_API_PORT, SKY_DEFAULT_QUEUE_PORT = 46580, 50011
PORT_IN_USE = re.compile(r"already in use|Port \d+ is not available")  # SkyPilot's, uvicorn's and sshd's words
START_ATTEMPTS = 3


def sky_server_ports(api_port: int) -> tuple[int, int]:
    """(API port, request-queue port): every port SkyPilot's API server binds for ``api_port``."""
    offset = api_port - SKY_DEFAULT_API_PORT
    if offset == 0:
        return api_port, SKY_DEFAULT_QUEUE_PORT
    return api_port, 50000 + (SKY_DEFAULT_QUEUE_PORT - 50000 + offset) % 10000


@dataclass(frozen=True)
class InfraPorts:
    api: int  # SKYPILOT_API_SERVER_LOCAL_PORT (infra-up.sh's API_PORT)
    ssh: int  # the login node's sshd (SSH_PORT)


def _hold(port: int) -> socket.socket:
    """A bound, non-listening SO_REUSEADDR socket on 127.0.0.1:port (0: the kernel's pick). While it lives the
    kernel gives the port to no outgoing connection, yet a server that sets SO_REUSEADDR (SkyPilot's, sshd)
    still binds and listens on it. Binding fails (OSError) where a connection or a listener has the port."""
    s = socket.socket()
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
    except OSError:
        s.close()
        raise
    return s


@contextmanager
def reserved_ports(candidates: Iterable[int] = (), tries: int = 100) -> Iterator[InfraPorts]:
    """Ports for infra-up.sh, held (``_hold``) until the block ends. The API port is the first of
    ``candidates`` (then the kernel's picks) whose derived ports (``sky_server_ports``) are free as well."""
    picks = iter(candidates)
    held: list[socket.socket] = []
    try:
        for _ in range(tries):
            try:
                held.append(_hold(next(picks, 0)))
                api = held[0].getsockname()[1]
                held += [_hold(port) for port in sky_server_ports(api)[1:]]
                break
            except OSError:
                for s in held:
                    s.close()
                held.clear()
        else:
            raise RuntimeError(f"no API port whose derived ports were free in {tries} tries")
        held.append(_hold(0))
        yield InfraPorts(api=api, ssh=held[-1].getsockname()[1])
    finally:
        for s in held:
            s.close()


def start_with_fresh_ports(
    up: Callable[[InfraPorts], tuple[bool, str]], down: Callable[[], None], attempts: int = START_ATTEMPTS
) -> tuple[InfraPorts, str]:
    """Run ``up`` (True and its log when the infra started) on reserved ports; where it failed with a port in
    use, ``down`` undoes it and ``up`` runs again on fresh ports, ``attempts`` times in all. Returns the ports
    and a line per failed attempt; any other failure fails the test with the log's tail."""
    attempt, notes = 1, ""
    while True:
        with reserved_ports() as ports:
            ok, log = up(ports)
        if ok:
            return ports, notes
        tail = "\n".join(log.splitlines()[-60:])
        if attempt == attempts or not PORT_IN_USE.search(log):
            pytest.fail(f"SkyPilot's Slurm infra did not start (attempt {attempt} of {attempts}):\n{notes}{tail}")
        in_use = "; ".join(sorted({line.strip() for line in log.splitlines() if PORT_IN_USE.search(line)}))
        notes += f"attempt {attempt} ({ports}): a port in use, retried on fresh ports: {in_use}\n"
        down()
        attempt += 1


def _log_tails(base: Path, lines: int = 40) -> str:
    """The last lines of the API server's and sshd's logs of the infra at ``base``."""
    out = ""
    for name, path in (
        ("API server", base / "client" / ".sky" / "api_server" / "server.log"),
        ("sshd", base / "sshd" / "sshd.log"),
    ):
        if path.exists():
            text = "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
            out += f"--- {name} log ({path}), last {lines} lines ---\n{text}\n"
    return out


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


def _infra_down(script_env: dict[str, str], base: Path) -> None:
    down = subprocess.run([str(HERE / "infra-down.sh")], env=script_env, capture_output=True, text=True, timeout=400)
    (base / "infra-down.log").write_text(down.stdout + down.stderr)


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
        "SKY_BIN": str(sky_bin()),
        "TRAINER_BIN": str(Path(sys.executable).parent),
        "PY310": str(py310),
        "UV": str(_uv()),
        "WHEELHOUSE": str(_wheelhouse(py310)),
        "CATALOG": str(HERE / "catalog" / "v8"),
        "SITE": str(HERE / "site"),
    }

    def up(ports: InfraPorts) -> tuple[bool, str]:
        script_env.update(SSH_PORT=str(ports.ssh), API_PORT=str(ports.api))
        proc = subprocess.run([str(HERE / "infra-up.sh")], env=script_env, capture_output=True, text=True, timeout=300)
        (base / "infra-up.log").write_text(proc.stdout + proc.stderr)
        return proc.returncode == 0 and "ready" in proc.stdout, proc.stdout + proc.stderr + _log_tails(base)

    def down() -> None:  # undo a failed start; the next one begins from an empty base, as the first did
        _infra_down(script_env, base)
        _restore_root_home(state)
        shutil.rmtree(base, ignore_errors=True)
        base.mkdir(parents=True)
        _save_root_home(state)

    _save_root_home(state)
    try:
        _, notes = start_with_fresh_ports(up, down)
        if notes:
            (base / "infra-up.log").write_text(notes + (base / "infra-up.log").read_text())
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
        _infra_down(script_env, base)
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
