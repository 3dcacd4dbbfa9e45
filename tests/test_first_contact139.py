"""First contact with SkyPilot and docker (helper 139): an image for GH200's Arm nodes, the line before SkyPilot
starts its API server, a SkyPilot dry run that checks the data, and what a SkyPilot user reads without --gpus."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ftctl import userconfig
from ftctl.docker import build as image_build
from ftctl.docker import image
from tests.test_image import _compile, _stand_in

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ ftctl build, Arm
def _build(tmp_path, *args):
    """`ftctl build ARGS` through the real command line, with a stand-in docker that records its buildx argv."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    log = tmp_path / "argv"
    _stand_in(bin_dir, "docker", f'[ "$2" = build ] && printf "%s\\n" "$@" > {log}; exit 0')
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    r = subprocess.run(
        [sys.executable, "-m", "ftctl.cli", "build", *args], env=env, capture_output=True, text=True, cwd=tmp_path
    )
    return r, log.read_text().splitlines() if log.exists() else None


def test_a_gh200_image_is_built_for_its_arm_nodes_and_named_apart(tmp_path):
    """GH200 nodes are aarch64 (Grace): the image was built --platform linux/amd64 under the H100's very name."""
    r, argv = _build(tmp_path, "--gpus", "GH200")
    assert r.returncode == 0, r.stderr
    assert argv[argv.index("--platform") + 1] == "linux/arm64"
    ref = argv[argv.index("--tag") + 1]
    assert ref == image.default_image("GH200") and ref.endswith("-sm90-arm64") and ref != image.default_image("H100")
    on_x86 = platform.machine() not in ("aarch64", "arm64")
    assert ("note: this machine is amd64, the image linux/arm64" in r.stderr) == on_x86  # QEMU: hours
    # the H100's stays x86 (the golden files have the rest of the command)
    h100 = image_build.commands("H100").docker
    assert h100[h100.index("--platform") + 1] == "linux/amd64"
    assert image_build.emulation_note("linux/arm64", "aarch64") == ""


def test_arm_and_x86_gpus_in_one_build_are_refused_in_one_line(tmp_path):
    r, argv = _build(tmp_path, "--gpus", "GH200,H100", "--dry-run")
    assert r.returncode == 2 and argv is None and r.stdout == ""
    assert r.stderr == (
        "error: --gpus GH200,H100: GH200 nodes are Arm (aarch64, NVIDIA Grace) and H100 nodes x86_64, and one "
        "image runs on one of them: build each on its own (ftctl build --gpus GH200, then ftctl build --gpus H100).\n"
    )


def test_a_recorded_image_serves_runs_of_its_own_cpu_only(tmp_path, monkeypatch):
    """A build for H100 serves a GH200 run by its flash-attn archs (sm90 both): it ran an x86 image on Grace."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert not image.fits("H100", "GH200") and not image.fits("GH200", "H100") and image.fits("GH200", "1xGH200")
    userconfig.record("ghcr.io/me/ftctl:h100", "pushed", "H100")
    assert image.configured("GH200", ("pushed",)) is None
    assert image.configured("H100", ("pushed",)).ref == "ghcr.io/me/ftctl:h100"


def test_the_image_names_no_cpu_but_through_the_platform():
    """What the Dockerfile pulls and installs comes for both CPUs: the multi-arch nvidia/cuda tags (13.0.1 and 12.6.3
    devel-ubuntu24.04 have arm64 images; DGX Spark's GB10 guides run 13.0.1's) and PyPI's torch (2.13.0's
    manylinux_2_28_aarch64 wheel, 427 MB, is its CUDA build); nothing there may name x86 itself."""
    text = (ROOT / "docker" / "Dockerfile").read_text()
    froms = [line for line in text.splitlines() if line.startswith("FROM ")]
    assert froms and all(f.startswith("FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu${UBUNTU_VERSION} ") for f in froms)
    code = [line for line in text.splitlines() if not line.startswith("#")]
    script = (ROOT / "docker" / "build-flash-attn.sh").read_text()
    for what in ("x86_64", "amd64", "--platform"):
        assert not any(what in line for line in code), what
        assert what not in "\n".join(line for line in script.splitlines() if not line.lstrip().startswith("#"))


@pytest.mark.skipif(not shutil.which("ninja", path=f"{Path(sys.executable).parent}:/usr/bin:/bin"), reason="no ninja")
def test_the_flash_attn_wheel_cache_keeps_each_cpus_wheel(tmp_path):
    """One BuildKit cache mount serves a builder's amd64 and arm64 builds: the arm64 build reused the x86_64 wheel
    (the same flash-attn, torch, CUDA and sm90), and pip refused it in the runtime stage."""
    cache = tmp_path / "cache"
    cache.mkdir()
    x86 = "flash_attn-2.8.3.post2+cu130.torch2.13.abi1.sm90-cp312-cp312-linux_x86_64.whl"
    (cache / x86).write_text("")
    uname = tmp_path / "arm"
    uname.mkdir()
    _stand_in(uname, "uname", "echo aarch64")
    path = f"{uname}:{Path(sys.executable).parent}:/usr/bin:/bin"
    r, env = _compile(tmp_path, FLASH_ATTN_CUDA_ARCHS="90", MAX_JOBS="2", FLASH_ATTN_WHEEL_CACHE=str(cache), PATH=path)
    assert r.returncode == 0, r.stderr
    assert "reusing" not in r.stdout and env["FLASH_ATTN_CUDA_ARCHS"] == "90"  # compiled for this CPU


# ------------------------------------------------------------------------------------------ SkyPilot's API server
SERVER_STARTS = """
import json, os, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ftctl.sky import sdk
from sky.server import common

class Health(BaseHTTPRequestHandler):  # /api/health as SkyPilot's own server answers it
    def do_GET(self):
        from sky import __commit__, __version__
        from sky.server import constants as c
        body = {"status": "healthy", "api_version": c.API_VERSION, "version": __version__, "commit": __commit__}
        self.send_response(200)
        self.send_header(c.API_VERSION_HEADER, str(c.API_VERSION))
        self.send_header(c.VERSION_HEADER, __version__)
        self.end_headers()
        self.wfile.write(json.dumps(body).encode())

    def log_message(self, *args):
        pass

print("none answers:", sdk.server_starts())
server = ThreadingHTTPServer(("127.0.0.1", int(os.environ["SKYPILOT_API_SERVER_LOCAL_PORT"])), Health)
threading.Thread(target=server.serve_forever, daemon=True).start()
common.get_api_server_status_response.cache_clear()  # SkyPilot keeps an answer 5 s
print("one answers:", sdk.server_starts())
"""


def test_skypilot_starts_its_api_server_where_none_answers_here(tmp_path):
    """sdk.server_starts against SkyPilot 0.14's own client code (.venv-sky): none on this machine's port, where
    SkyPilot's SDK starts one (~32 s), then one that answers there."""
    from tests.render_fixtures import sky_python
    from tests.s3_fixtures import free_port

    # HOME: no ~/.sky/config.yaml naming another endpoint
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "HOME": str(tmp_path),
        "SKYPILOT_API_SERVER_LOCAL_PORT": str(free_port()),
    }
    r = subprocess.run([sky_python(), "-c", SERVER_STARTS], env=env, capture_output=True, text=True, timeout=120)
    assert r.stdout.splitlines() == ["none answers: True", "one answers: False"], r.stdout + r.stderr


FAKE_SKY = {  # SkyPilot as far as sdk.statuses and sdk.server_starts ask it; its server "up" where FAKE_SKY_UP is set
    "sky/__init__.py": "from sky import exceptions\ndef status(names):\n    return []\ndef get(x):\n    return x\n",
    "sky/exceptions.py": "class ClusterNotUpError(Exception):\n    pass\n",
    "sky/server/__init__.py": "",
    "sky/server/common.py": (
        "import os\nfrom types import SimpleNamespace\n"
        "class ApiServerStatus:\n    HEALTHY, UNHEALTHY = 'healthy', 'unhealthy'\n"
        "def get_server_url(host=None):\n    return 'http://127.0.0.1:46580'\n"
        "def is_api_server_local(endpoint=None):\n    return True\n"
        "def get_api_server_status(endpoint=None):\n"
        "    return SimpleNamespace(status='healthy' if os.environ.get('FAKE_SKY_UP') else 'unhealthy')\n"
    ),
}


@pytest.mark.parametrize("up", [False, True], ids=["starts", "up"])
def test_a_quick_question_says_skypilot_is_starting_its_api_server(tmp_path, monkeypatch, capfd, up):
    """`ftctl status` of a SkyPilot job where no API server ran: 32 s without a word (the bridge keeps SkyPilot's output
    back from its quick questions). The line goes to this process's stderr, and only where a server is started."""
    from ftctl.sky import bridge, sdk

    for rel, text in FAKE_SKY.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    monkeypatch.setattr(bridge, "here", lambda: False)  # SkyPilot in another python, as from the trainer's venv
    monkeypatch.setenv("FTCTL_SKY_PYTHON", sys.executable)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    if up:
        monkeypatch.setenv("FAKE_SKY_UP", "1")
    job = {"cluster": "c1", "job_id": 1, "managed": False, "cluster_hash": None}
    assert bridge.call("statuses", jobs=[job])[0]["status"] == "GONE"
    err = capfd.readouterr().err
    assert err == ("" if up else sdk.SERVER_STARTS + "\n")


# ------------------------------------------------------------------------------------------ a SkyPilot user's words
def test_a_skypilot_launch_without_gpus_names_sky_launchs_forms(tmp_path):
    """`sky launch` without --gpus starts a CPU VM; ftctl asks for the GPUs, in the form SkyPilot users write, and
    offers --gpus cpu only where a cloud is not asked (it refuses CPUs on a cloud)."""
    from click.testing import CliRunner

    from ftctl.cli import main

    args = ["launch", "--backend", "sky", "--infra", "aws", "--method", "lora", "--data", "builtin:demo"]
    r = CliRunner().invoke(main, [*args, "--output", "s3://b/runs/x", "--dry-run"])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert r.output == (
        "error: --gpus is required for --backend sky: the GPUs each node gets, as sky launch --gpus names them "
        "(--gpus H100:8 or 8xH100, --gpus A100-80GB:1, --gpus L4 for one; --gpus cpu on --infra k8s or "
        "slurm/CLUSTER).\n"
    )


def test_no_cloud_enabled_names_the_sky_that_enables_one(monkeypatch):
    """The price line said SkyPilot's "Cloud access is not set up. Run: sky check", and that sky is not on PATH where
    SkyPilot has a venv of its own (.venv-sky)."""
    import types

    from ftctl.sky import sdk

    class NoCloudAccessError(Exception):
        pass

    class Dag:
        def __enter__(self):
            raise NoCloudAccessError("Cloud access is not set up. Run: sky check")

        def __exit__(self, *exc):
            return False

    fake = types.ModuleType("sky")
    fake.Dag, fake.optimizer = Dag, types.ModuleType("sky.optimizer")
    fake.exceptions = types.SimpleNamespace(NoCloudAccessError=NoCloudAccessError, ResourcesUnavailableError=OSError)
    monkeypatch.setitem(sys.modules, "sky", fake)
    monkeypatch.setattr(sdk, "sky_cli", lambda: "/opt/venv-sky/bin/sky")
    said = sdk.optimize({"accelerators": "H100:1"}, 1)
    assert said == {"unavailable": "no cloud is enabled in SkyPilot here (run: /opt/venv-sky/bin/sky check)"}
