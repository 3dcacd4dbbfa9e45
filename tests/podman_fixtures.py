"""A real container engine for the docker backend: podman (daemonless, docker's CLI), named ``docker`` on PATH.

tests/fake_docker.py stands in for docker in tests/test_docker_backend.py; tests/test_docker_real.py runs the same
backend against this engine instead: real namespaces (the trainer is PID 1 of its container, so a SIGTERM without a
handler of its own is ignored), real mounts (a path ftctl does not mount is not there), ``-e NAME`` taken from the
launching environment, exit codes, ``inspect``'s times and ``logs`` as an engine says them.

The image (``IMAGE``) is a Debian root file system without Python, that scripts/setup.sh builds with mmdebstrap into
.podman/rootfs.tar (FTCTL_SETUP_TESTS=1; ~56 MB, seconds): the trainer's Python, torch and ftctl come from this
checkout, mounted read-only at their own paths by the engine's configuration (CONTAINERS_CONF: ``volumes``, and
PATH in ``env``) as an image's /opt/venv would hold them. ftctl's own ``docker run`` is unchanged: the engine adds
those mounts to every container.

What this machine's sandbox lacks, the engine is configured around (on a normal host nothing changes):
- its processes lack CAP_SYS_RESOURCE, so no rlimit can be raised past the hard limit here (memlock 8 MiB, nofile
  20000): podman's own default (nofile 1048576) and ftctl's ``--ulimit memlock=-1`` fail in runc ("error setting
  rlimits ... operation not permitted"). The OCI runtime is runc behind ``clamp-runc``, which lowers each limit of the
  container's config.json to what this process may set, then runs runc.
- cgroup v1 with a v2 hierarchy holding a controller (hugetlb): crun refuses it ("cgroups in hybrid mode not
  supported"); runc does not.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FTCTL = str(Path(sys.executable).parent / "ftctl")
ROOTFS_TAR = REPO / ".podman" / "rootfs.tar"  # scripts/setup.sh (FTCTL_SETUP_TESTS=1)
SETUP = "FTCTL_SETUP_TESTS=1 bash scripts/setup.sh"

CLAMP_RUNC = """#!PYTHON -I
# runc, with each rlimit of the container lowered to what this process may set (no CAP_SYS_RESOURCE here)
import json, os, resource, sys
args = sys.argv[1:]
if "--bundle" in args:
    config = os.path.join(args[args.index("--bundle") + 1], "config.json")
    with open(config) as f:
        spec = json.load(f)
    for limit in spec.get("process", {}).get("rlimits", []):
        _, hard = resource.getrlimit(getattr(resource, limit["type"]))
        if hard != resource.RLIM_INFINITY:
            limit["hard"] = min(limit["hard"], hard)
            limit["soft"] = min(limit["soft"], limit["hard"])
    with open(config, "w") as f:
        json.dump(spec, f)
os.execv(RUNC, ["runc", *args])
"""


@dataclass(frozen=True)
class Podman:
    image: str  # the test image's name (localhost/...)
    env: dict[str, str]  # this environment with `docker` (podman) first on PATH and its configuration
    prefix: str  # of this session's container names: removed when it ends

    def name(self, what: str) -> str:
        return f"{self.prefix}-{what}"

    def docker(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        proc = subprocess.run(["docker", *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check:
            assert proc.returncode == 0, f"docker {' '.join(args)}: {proc.stderr}{proc.stdout}"
        return proc


def ftctl_env(podman: Podman, tmp_path: Path, **more: str) -> dict[str, str]:
    """The environment `ftctl` runs in against ``podman``: its own FTCTL_HOME and cache root under ``tmp_path``, no
    HF_HOME of the user's; ``more`` set too."""
    env = {**podman.env, "FTCTL_HOME": str(tmp_path / "home"), "XDG_CACHE_HOME": str(tmp_path / "cache"), **more}
    env.pop("HF_HOME", None)
    return env


def lora_flags(podman: Podman, model, data, output, name: str, **options) -> list[str]:
    """`ftctl launch` flags of a LoRA run of ``model`` on ``data`` into ``output`` in the test image, on CPU (one
    thread), named ``name``: batches of 2 of at most 64 tokens, and ``options`` (-o KEY=VALUE)."""
    flags = ["--backend", "docker", "--gpus", "cpu", "--method", "lora", "--model", str(model)]
    flags += ["--data", str(data), "--output", str(output), "--container", f"docker:{podman.image}"]
    for key, value in dict(global_batch_size=2, model_max_length=64, **options).items():
        flags += ["-o", f"{key}={value}"]
    return [*flags, "-o", "env=OMP_NUM_THREADS=1", "-o", f"run_name={name}"]


def ftctl_runner(env: dict[str, str], cwd: Path, timeout: float = 300):
    """``ftctl(*args)``: the ftctl command in ``env`` and ``cwd``, which must succeed (what it said otherwise)."""

    def ftctl(*args: str) -> subprocess.CompletedProcess:
        proc = subprocess.run([FTCTL, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)
        assert proc.returncode == 0, proc.stderr + proc.stdout
        return proc

    return ftctl


def podman_only(env: dict[str, str], bin_dir: Path) -> dict[str, str]:
    """``env`` (the fixture's) as on a host with podman and no ``docker`` command (Fedora, RHEL): a PATH of ``bin_dir``,
    holding podman and sh, then this interpreter's bin directory (ftctl, python)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for tool in ("podman", "sh"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    return {**env, "PATH": f"{bin_dir}:{Path(sys.executable).parent}"}


def _cannot(why: str) -> None:
    pytest.fail(f"no container engine for the docker backend's real tests: {why}", pytrace=False)


def _outermost(paths: list[str]) -> list[str]:
    kept: list[str] = []
    for path in sorted(set(paths), key=len):
        if not any(path == k or path.startswith(k.rstrip("/") + "/") for k in kept):
            kept.append(path)
    return kept


@pytest.fixture(scope="session")
def podman(tmp_path_factory) -> Podman:
    """podman as ``docker``, its test image imported (once a machine: its name says the rootfs it was made from)."""
    missing = [tool for tool in ("podman", "runc") if not shutil.which(tool)]
    if missing:
        _cannot(f"{' and '.join(missing)} not installed: run `{SETUP}` (installs them from apt, as root)")
    if os.geteuid() != 0:
        _cannot("these tests run podman as root (rootful: ftctl's --user UID:GID is the host's), and this is not root")
    if not ROOTFS_TAR.is_file():
        _cannot(f"no test image ({ROOTFS_TAR.relative_to(REPO)}): run `{SETUP}` (builds it with mmdebstrap)")
    here = tmp_path_factory.mktemp("podman")
    clamp = here / "clamp-runc"
    clamp.write_text(CLAMP_RUNC.replace("PYTHON", sys.executable).replace("RUNC", repr(shutil.which("runc"))))
    clamp.chmod(0o755)
    # the trainer's python, its venv and ftctl (installed editable: this checkout), read-only at their own paths
    mounts = _outermost([str(REPO), sys.prefix, sys.base_prefix])
    inside_path = f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin"
    conf = here / "containers.conf"
    conf.write_text(  # TOML: its arrays of strings written as JSON's
        "[containers]\n"
        f"volumes = {json.dumps([f'{m}:{m}:ro' for m in mounts])}\n"
        f"env = {json.dumps([f'PATH={inside_path}'])}\n"
        "[engine]\n"
        'runtime = "runc"\n'
        'cgroup_manager = "cgroupfs"\n'
        'events_logger = "file"\n'
        "[engine.runtimes]\n"
        f"runc = {json.dumps([str(clamp)])}\n"
    )
    bin_dir = here / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(f'#!/bin/sh\nexec {shutil.which("podman")} "$@"\n')
    (bin_dir / "docker").chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}",
        "CONTAINERS_CONF": str(conf),
    }
    stat = ROOTFS_TAR.stat()
    engine = Podman(
        f"localhost/ftctl-real-test:{stat.st_size}-{int(stat.st_mtime)}", env, f"real-{uuid.uuid4().hex[:8]}"
    )
    if engine.docker("image", "exists", engine.image, check=False).returncode != 0:
        imported = engine.docker("import", "--quiet", str(ROOTFS_TAR), engine.image, check=False)
        if imported.returncode != 0:
            _cannot(f"podman import {ROOTFS_TAR} failed: {(imported.stderr or imported.stdout).strip()}")
    ran = engine.docker("run", "--rm", engine.image, "python3", "-c", "import ftctl", check=False)
    if ran.returncode != 0:
        _cannot(f"podman run failed: {(ran.stderr or ran.stdout).strip().splitlines()[-1:]}")
    yield engine
    names = engine.docker("ps", "--all", "--format", "{{.Names}}", check=False).stdout.split()
    mine = [n for n in names if n.startswith(engine.prefix)]
    if mine:
        engine.docker("rm", "--force", *mine, check=False)
