"""What ftctl does on a macOS laptop (explore50, task 246), shown on Linux with what macOS lacks taken away: no
os.sched_getaffinity, no /proc/meminfo, no sha256sum, an old bash (3.2, macOS's /bin/bash)."""

from __future__ import annotations

import os

import pytest

from ftctl.checkpoints import build_manifest, sha256_file


def test_a_checkpoints_manifest_is_written_without_sched_getaffinity(tmp_path, monkeypatch):
    """macOS has no os.sched_getaffinity: every checkpoint save (`ftctl demo`, a local launch, `ftctl train` on a Mac)
    raised AttributeError as it hashed the checkpoint's files."""
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    for name in ("adapter_model.safetensors", "optimizer.pt", "trainer_state.json"):
        (tmp_path / name).write_bytes(name.encode() * 1000)
    manifest = build_manifest(str(tmp_path), step=4, world_size=1, spec_hash="x")
    assert {f["path"]: f["sha256"] for f in manifest["files"]} == {
        name: sha256_file(str(tmp_path / name))
        for name in ("adapter_model.safetensors", "optimizer.pt", "trainer_state.json")
    }


def test_the_train_extra_installs_on_macos():
    """`pip install 'ftctl[train]'` (scripts/setup.sh, the README's demo) on a Mac: liger-kernel requires triton, which
    has no macOS wheel nor sdist ("No matching distribution found for triton"), so the install failed there. The
    trainer runs without it (attention.liger_usable: GPU only, where it imports)."""
    from pathlib import Path

    import tomllib
    from packaging.requirements import Requirement

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    train = [Requirement(r) for r in project["optional-dependencies"]["train"]]
    mac = {"sys_platform": "darwin", "platform_system": "Darwin", "extra": "train"}
    linux = {"sys_platform": "linux", "platform_system": "Linux", "extra": "train"}
    on_mac = {r.name for r in train if r.marker is None or r.marker.evaluate(mac)}
    on_linux = {r.name for r in train if r.marker is None or r.marker.evaluate(linux)}
    assert "liger-kernel" not in on_mac and "triton" not in on_mac
    assert on_linux == {r.name for r in train}  # the nodes' and the image's install is as it was


def test_host_memory_is_known_without_proc_meminfo(monkeypatch):
    """macOS has no /proc/meminfo: host_memory_gb was None there, so a local launch or `ftctl plan --backend local` on
    a Mac planned its CPU run with no RAM to fit in (an fft of a 1.7B model on a 16 GB laptop, then swap) and `ftctl
    doctor` said "memory: unknown". The page count sysconf gives (SC_PHYS_PAGES, which macOS has) counts it there."""
    import builtins

    from ftctl import preflight

    linux = preflight.host_memory_gb()

    def no_proc(path, *args, **kwargs):
        if str(path).startswith("/proc/"):
            raise FileNotFoundError(2, "No such file or directory", str(path))
        return builtins.open(path, *args, **kwargs)

    monkeypatch.setattr(preflight, "open", no_proc, raising=False)
    assert linux and preflight.host_memory_gb() == pytest.approx(linux, rel=0.01)
    monkeypatch.delattr(os, "sysconf")  # neither: unknown, as before
    assert preflight.host_memory_gb() is None


def fake_bash_32(bin_dir):
    """A `bash` first on PATH that parses as macOS's /bin/bash 3.2 does the lines below: bash 4's `|&` and `&>>` are
    syntax errors there (its words for them); anything else goes to this machine's bash."""
    import shutil

    real = shutil.which("bash")
    bin_dir.mkdir()
    script = bin_dir / "bash"
    script.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = -c ] && [ "$2" = \'echo "${BASH_VERSINFO[0]}"\' ]; then echo 3; exit 0; fi\n'
        'if [ "$1" = -n ]; then text=$(cat); case "$text" in *"|&"*|*"&>>"*)\n'
        '  echo "bash: line 1: syntax error near unexpected token \\`&\'" >&2; exit 2;; esac\n'
        f'  printf "%s" "$text" | exec {real} -n; fi\n'
        f'exec {real} "$@"\n'
    )
    script.chmod(0o755)


def test_a_bash_4_setup_line_launches_from_a_mac(tmp_path, monkeypatch):
    """`-o setup='pip install x |& tee setup.log'` was refused at render on a Mac ("not a whole shell command"): the
    check ran this machine's bash, 3.2 there, which does not parse `|&` (bash 4.0); the nodes' bash runs it."""
    from ftctl import launch
    from tests.render_fixtures import prepared

    fake_bash_32(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    forget = getattr(launch, "_old_bash", None)
    forget = forget.cache_clear if forget else lambda: None
    forget()  # asked again with this bash, and again after the test
    try:
        for line in ("pip install -q x |& tee setup.log", "pip install -q x &>> setup.log"):
            rendered = prepared(
                [f"setup={line}"], backend="slurm", gpus="1xA100", model_name_or_path="meta-llama/Llama-3.2-1B"
            )
            assert line in rendered.text
    finally:
        forget()


def test_a_local_plan_on_a_mac_says_its_gpu_is_not_used(monkeypatch):
    """`ftctl plan/launch --backend local` on a Mac trains on its CPU (the trainer's use_cpu; torch's MPS is never
    asked), which it said only as "gpus cpu": the plan says that the Mac's GPU is not used, and where GPUs are."""
    import sys

    from click.testing import CliRunner

    from ftctl.cli import main

    argv = ["plan", "--backend", "local", "--model", "HuggingFaceTB/SmolLM2-135M-Instruct", "--method", "lora"]
    linux = CliRunner().invoke(main, argv)
    monkeypatch.setattr(sys, "platform", "darwin")
    mac = CliRunner().invoke(main, argv)
    assert linux.exit_code == mac.exit_code == 0, mac.output
    assert "MPS" not in linux.output
    assert "this Mac's GPU (MPS) is not used" in mac.output and "--backend sky or slurm" in mac.output


def test_a_run_directory_named_in_another_case_finds_its_job_on_a_mac(tmp_path, monkeypatch):
    """A Mac's disk (APFS) ignores case: `ftctl status runs/Lora` of a SkyPilot job launched into runs/lora found no
    recorded job of that name, found runs/Lora/spec.json (the same file) and answered as for a local run: "stopped
    before the end", and `ftctl cancel` said "not training now: nothing to cancel" of a job training on a cloud.
    Shown with os.stat answering as APFS does under tmp_path."""
    from ftctl.backend import JobRef, find_job, record_job

    real_stat, root = os.stat, str(tmp_path)

    def apfs_stat(path, *args, **kwargs):
        if isinstance(path, (str, os.PathLike)) and (full := os.path.abspath(path)).startswith(root):
            path = root + full[len(root) :].lower()
        return real_stat(path, *args, **kwargs)

    run = tmp_path / "runs" / "lora"
    run.mkdir(parents=True)
    (run / "spec.json").write_text("{}")
    record_job(JobRef("sky", "managed/7", str(run), "lora", "s3://b/lora", {"sky_job_id": 7, "managed": True}))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(os, "stat", apfs_stat)
    backend, ref = find_job(str(tmp_path / "runs" / "Lora"))
    assert (backend.name, ref.job_id) == ("sky", "managed/7")
    backend, ref = find_job("runs/LORA")
    assert (backend.name, ref.job_id) == ("sky", "managed/7")
