"""The local backend and the default backend, through `ftctl` as a user runs it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ftctl.errors import FtctlError

FTCTL = str(Path(sys.executable).parent / "ftctl")


def ftctl(*args, env=None, cwd=None):
    full = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([FTCTL, *args], env=full, capture_output=True, text=True, timeout=600, cwd=cwd)


def test_launch_without_backend_refuses_gpus_this_machine_lacks_before_starting_anything(tmp_path):
    start = time.time()
    proc = ftctl(
        "launch",
        "--method",
        "fft",
        "--gpus",
        "8xA100",
        "--model-params",
        "7b",
        cwd=tmp_path,
        env={"FTCTL_HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path), "HOME": str(tmp_path)},
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "this machine does not have --gpus 8xA100" in proc.stderr
    assert all(b in proc.stderr for b in ("--backend slurm", "--backend sky", "--backend docker"))
    assert not (tmp_path / "runs").exists()  # nothing written, nothing started
    assert time.time() - start < 20


def test_cpu_nodes_without_a_backend_say_what_2xcpu_means(monkeypatch, tmp_path):
    """2xcpu is two nodes of one process (nodes x GPUs, as 2x8xH100): read as "two processes here" it was answered
    "this machine does not have --gpus 2xcpu"."""
    from ftctl.backend import choose_backend
    from ftctl.spec import RunSpec

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.delenv("FTCTL_BACKEND", raising=False)
    for gpus, nodes, said in [("2xcpu", None, "--gpus 2xcpu asks"), ("cpu", 3, "--gpus cpu --nodes 3 asks for 3")]:
        with pytest.raises(FtctlError, match=f"{said}.* nodes of one CPU process each, and this machine is one: here"):
            choose_backend(RunSpec(gpus=gpus, nodes=nodes))
    with pytest.raises(FtctlError, match="--nodes 2 asks for 2 nodes, and this machine is one: --backend slurm"):
        choose_backend(RunSpec(nodes=2))  # it was "--backend local runs on this machine only", never named
    assert choose_backend(RunSpec(gpus="cpu"))[0] == "local"


def test_a_missing_checkpoint_to_resume_is_refused_when_the_backend_is_this_machine_by_default(tmp_path, monkeypatch):
    """The run description is checked before a backend is chosen, as for a cluster (a checkpoint-<step> path may be
    there only): once this machine is chosen it must be here (a dry run passed, the launch failed in the trainer)."""
    from ftctl.backend import choose_backend
    from ftctl.spec import build

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.delenv("FTCTL_BACKEND", raising=False)
    spec = build({"resume": str(tmp_path / "checkpoint-99")})
    with pytest.raises(FtctlError, match=r"checkpoint-99 is not .* \(no trainer_state.json\)"):
        choose_backend(spec)


def test_doctor_says_what_a_varlen_plan_runs_here(monkeypatch):
    """The local doctor names the attention the trainer would run (here: no GPU, sdpa), and on a Hopper GPU
    without FlashAttention 4 says how to get it (the GPU is the outermost boundary: none here)."""
    from ftctl.local import backend
    from ftctl.trainer import attention

    proc = ftctl("doctor")
    assert proc.returncode == 0, proc.stderr
    assert "attention:   sdpa (no CUDA GPU here)" in proc.stdout
    import torch
    import transformers

    assert f"transformers {transformers.__version__}\n" in proc.stdout  # versions, to compare with constraints.txt
    # what it was asked for is checked, never dropped: GPUs this machine lacks, a Slurm partition
    asked = ftctl("doctor", "--gpus", "8xA100")
    assert asked.returncode == 1 and "asked:   8xA100: not on this machine" in asked.stdout
    partition = ftctl("doctor", "--partition", "gpu")
    assert partition.returncode == 2 and "add --backend slurm" in partition.stderr
    for other in ("docker", "sky"):  # nor there: only Slurm has partitions
        refused = ftctl("doctor", "--backend", other, "--partition", "gpu")
        assert refused.returncode == 2 and f"add --backend slurm (this checks {other})" in refused.stderr
    sky = ftctl("doctor", "--backend", "sky", "--gpus", "8xA100")
    assert sky.returncode == 2 and "`ftctl launch --backend sky --gpus 8xA100 --dry-run`" in sky.stderr

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    monkeypatch.setattr(attention, "runnable", lambda planned, on_cpu: attention.TORCH_VARLEN)
    assert "pip install 'ftctl[fa4]'" in backend.varlen_here()
    monkeypatch.setattr(attention, "runnable", lambda planned, on_cpu: attention.FA4_VARLEN)
    assert backend.varlen_here() == attention.WORDS[attention.FA4_VARLEN]


def test_gpus_torch_cannot_use_are_a_problem_with_the_reason(tmp_path):
    """A GPU node whose torch is a CPU-only build (here the real one) or whose driver is too old for torch's CUDA:
    doctor and the trainer say why torch sees no GPU and how to fix it. nvidia-smi is the one stand-in (no GPU
    here): it lists an H100."""
    from types import SimpleNamespace

    import torch

    from ftctl.errors import FtctlError
    from ftctl.trainer.distributed import Processes, check_world

    smi = tmp_path / "nvidia-smi"
    smi.write_text(
        "#!/bin/sh\n"
        'case "$1" in --query-gpu*) echo "NVIDIA H100 80GB HBM3, 81559"; exit 0;; esac\n'
        "echo '| NVIDIA-SMI 535.216.01   Driver Version: 535.216.01   CUDA Version: 12.2     |'\n"
    )
    smi.chmod(0o755)
    proc = ftctl("doctor", env={"PATH": f"{tmp_path}:{os.environ['PATH']}"})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "gpus:    1xH100" in proc.stdout
    assert "driver:  CUDA 12.2 (nvidia-smi): torch's cu126 build; ftctl's image cu126 (ftctl build --cuda cu126)" in (
        proc.stdout
    )
    assert torch.version.cuda is None  # this machine's torch is the CPU wheel
    expected = f"torch {torch.__version__} is a CPU-only build: install a CUDA build (pip install torch --index-url"
    assert f"problem: nvidia-smi lists 1xH100 but torch sees no CUDA GPU: {expected}" in proc.stdout
    plan = SimpleNamespace(world_size=1, gpus="1xH100", tier="H100", nodes=1, gpus_per_node=1)
    procs = Processes(rank=0, local_rank=0, world_size=1, on_cpu=True)
    with pytest.raises(FtctlError, match=r"The plan is for 1xH100 but torch sees no CUDA GPU here: torch .* CPU-only"):
        check_world(plan, procs)


TORCH_TOO_OLD = (  # torch's own words (torch._C._cuda_init), as users of cu130 wheels on older drivers report them
    "The NVIDIA driver on your system is too old (found version 12080). Please update your GPU driver by "
    "downloading and installing a new version from the URL: http://www.nvidia.com/Download/index.aspx Alternatively, "
    "go to: https://pytorch.org to install a PyTorch version that has been compiled with your version of the CUDA "
    "driver."
)


@pytest.mark.parametrize(
    "error, said",
    [
        (
            TORCH_TOO_OLD,
            "torch 2.13.0 (CUDA 13.0) with the NVIDIA driver 570.153.02: The NVIDIA driver on your system is too old "
            "(found version 12080): install torch's cu126 build, which this driver runs (pip install torch "
            "--index-url https://download.pytorch.org/whl/cu126), or use an image with a newer driver",
        ),
        (  # driver 535 (SkyPilot's AWS image): CUDA 12.2, which torch's cu126 build runs (minor-version compatibility)
            TORCH_TOO_OLD.replace("12080", "12020"),
            "torch 2.13.0 (CUDA 13.0) with the NVIDIA driver 570.153.02: The NVIDIA driver on your system is too old "
            "(found version 12020): install torch's cu126 build, which this driver runs (pip install torch "
            "--index-url https://download.pytorch.org/whl/cu126), or use an image with a newer driver",
        ),
        (
            TORCH_TOO_OLD.replace("12080", "11080"),
            "torch 2.13.0 (CUDA 13.0) with the NVIDIA driver 570.153.02: The NVIDIA driver on your system is too old "
            "(found version 11080): the driver (CUDA 11.8) is older than torch's current builds: update it",
        ),
        (
            "Found no NVIDIA driver on your system. Please check that you have an NVIDIA GPU and installed a driver",
            "torch 2.13.0 (CUDA 13.0) with the NVIDIA driver 570.153.02: Found no NVIDIA driver on your system: a "
            "container started without its GPUs? (docker run --gpus all, or the NVIDIA container runtime)",
        ),
    ],
)
def test_a_cuda_torch_that_cannot_start_says_what_torch_said_and_the_fix(tmp_path, monkeypatch, error, said):
    """A CUDA build of torch on a driver too old for it (torch's cu130 wheels under driver 570), or in a container
    without the driver's libraries. torch's CUDA start is the stand-in here (no GPU): it raises torch's words."""
    import torch

    from ftctl.trainer import distributed

    (tmp_path / "version").write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  570.153.02  Tue May 13\n")
    monkeypatch.setattr(distributed, "NVIDIA_DRIVER_FILE", str(tmp_path / "version"))
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch, "__version__", "2.13.0")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)

    def init():
        raise RuntimeError(error)

    monkeypatch.setattr(torch.cuda, "init", init)
    assert distributed.why_no_cuda() == said
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert distributed.why_no_cuda().startswith("CUDA_VISIBLE_DEVICES='' hides every GPU")


@pytest.mark.parametrize(
    "line, version",
    [  # the device machine's H200 host (open module), and SkyPilot's AWS image (skypilot-org/skypilot#9406)
        ("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  Release Build  (nixbld@)", "580.159.04"),
        ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.216.01  Wed Oct 30 06:24:56 UTC 2024", "535.216.01"),
    ],
)
def test_the_loaded_nvidia_driver_is_read_without_nvidia_smi(tmp_path, monkeypatch, line, version):
    from ftctl.trainer import distributed

    (tmp_path / "version").write_text(line + "\nGCC version:  gcc version 12.2.0\n")
    monkeypatch.setattr(distributed, "NVIDIA_DRIVER_FILE", str(tmp_path / "version"))
    assert distributed.nvidia_driver_version() == version
    monkeypatch.setattr(distributed, "NVIDIA_DRIVER_FILE", str(tmp_path / "absent"))
    assert distributed.nvidia_driver_version() is None


def test_default_backend_from_the_environment_and_the_user_config(tmp_path):
    base = ["render", "--method", "lora", "--gpus", "1xA100", "--model-params", "7b", "--output", str(tmp_path / "o")]
    proc = ftctl(*base, env={"FTCTL_BACKEND": "slurm"})
    assert proc.returncode == 0 and proc.stdout.startswith("#!/bin/bash"), proc.stderr
    (tmp_path / "ftctl").mkdir()
    (tmp_path / "ftctl" / "config.yaml").write_text("backend: docker\n")
    proc = ftctl(*base, env={"XDG_CONFIG_HOME": str(tmp_path)})
    assert proc.returncode == 0 and proc.stdout.startswith("docker run"), proc.stderr


def test_fallback_on_one_h200_host_says_what_offload_would_need():
    """The device machine's case (bench/NOTES.md v29): 8B fft on one H200 with 135 GB of host RAM. Neither the
    GPU nor ZeRO-Offload's host memory fits, and the fallback's note says both before qlora runs."""
    from ftctl.local.backend import fallback_plan
    from ftctl.spec import build

    flags = dict(method="fft", model_name_or_path="x", gpus="1xH200", model_params="8b", host_memory_gb=135.1)
    spec, plan = fallback_plan(build(flags))
    assert spec.method == plan.method == "qlora" and plan.asked_method == "fft"
    note = plan.notes[0]
    assert "fft does not fit this machine" in note and "qlora runs instead" in note
    assert plan.table().splitlines()[0].endswith("qlora  (not fft: it does not fit here, see the note)")  # not last
    assert (
        "an H200 has 150.1 GB (139.8 GiB as PyTorch reports it)" in note
        and "~172 GB of host RAM per node, which has 135.1 GB" in note
    )


def test_fallback_is_for_a_plan_that_does_not_fit_not_for_a_setting_in_error(tiny_model_dir):
    """A setting's own error (a strategy lora never runs with, trainable_layers past the model's blocks) was taken for
    "does not fit here" and the run went on as qlora, with a note."""
    from ftctl.local.backend import fallback_plan
    from ftctl.spec import build

    base = dict(model_name_or_path=str(tiny_model_dir), gpus="1xH200", host_memory_gb=100.0)
    with pytest.raises(FtctlError, match="strategy=zero3 is not one ftctl runs lora with"):
        fallback_plan(build({**base, "method": "lora", "strategy": "zero3"}))
    with pytest.raises(FtctlError, match="trainable_layers=5 but the model has 2 blocks: use at most 2"):
        fallback_plan(build({**base, "method": "sft", "trainable_layers": 5}))
    assert fallback_plan(build({**base, "method": "sft", "trainable_layers": 2}))[1].method == "sft"


@pytest.mark.slow
def test_local_fallback_runs_qlora_and_says_so_everywhere(tmp_path, tiny_model_dir, tiny_data):
    """The local backend falls back to qlora when the method asked for does not fit this machine:
    forced here with a host-memory override between what qlora and fft need. The tiny model is too small
    for 4-bit weights to save anything, so the plan is made for a 0.1B model (--model-params): the fallback's
    wiring is under test here, not the memory model (tests/test_plan.py)."""
    size = {"model_params": "0.1b"}
    from ftctl.plan import PlanError, make_plan
    from ftctl.spec import build

    def need(method):  # the least host memory (GB) the planner lets this method run in, by bisection
        lo, hi = 0.0, 64.0
        for _ in range(50):
            mid = (lo + hi) / 2
            values = {
                "method": method,
                "model_name_or_path": str(tiny_model_dir),
                "gpus": "cpu",
                "global_batch_size": 2,
                "model_max_length": 64,
                "host_memory_gb": mid,
                **size,
            }
            try:
                make_plan(build(values))
                hi = mid
            except PlanError:
                lo = mid
        return hi

    assert need("qlora") < need("fft")
    memory = (need("qlora") + need("fft")) / 2
    out = tmp_path / "run"
    proc = ftctl(
        "launch",
        "--backend",
        "local",
        "--method",
        "fft",
        "--model",
        str(tiny_model_dir),
        "--data",
        str(tiny_data),
        "--output",
        str(out),
        "-o",
        f"host_memory_gb={memory}",
        "--model-params",
        "0.1b",
        "-o",
        "max_steps=2",
        "-o",
        "global_batch_size=2",
        "-o",
        "model_max_length=64",
        env={"OMP_NUM_THREADS": ""},  # unset: the trainer takes the cores (distributed.cpu_threads)
    )
    assert proc.returncode == 0, proc.stderr
    cores = len(os.sched_getaffinity(0))
    assert f"cpu threads: {cores} a process ({cores} cores / 1 on this node" in proc.stdout
    assert "fft does not fit this machine" in proc.stderr and "qlora runs instead" in proc.stderr
    assert "running qlora on cpu" in proc.stderr and "running fft" not in proc.stderr
    run = json.loads((out / "spec.json").read_text())
    assert run["spec"]["method"] == "qlora" and run["plan"]["method"] == "qlora"
    assert run["plan"]["asked_method"] == "fft" and run["plan"]["learning_rate"] == 2e-4  # qlora's default
    assert (out / "adapter_config.json").is_file()  # an adapter was trained, not a full model


def test_a_failing_rank_is_reported_once_without_a_resume_hint(tmp_path, tiny_model_dir):
    """A problem only the trainer finds (the tokenizer's: the answer lies past model_max_length; the launch's
    preflight reads the rows' own problems), said once."""
    bad = tmp_path / "bad.json"
    long_question = " ".join(["why"] * 200)
    bad.write_text(
        json.dumps([{"conversations": [{"from": "human", "value": long_question}, {"from": "gpt", "value": "robot"}]}])
    )
    proc = ftctl(
        "launch",
        "--backend",
        "local",
        "--gpus",
        "cpu",
        "--model",
        str(tiny_model_dir),
        "--data",
        str(bad),
        "--output",
        str(tmp_path / "o"),
        "-o",
        "max_steps=2",
        "-o",
        "model_max_length=32",
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "every label is masked after truncation" in line]
    assert len(errors) == 1, proc.stderr
    assert "resume" not in proc.stderr


def test_plan_for_cpu_checks_this_machines_ram(monkeypatch):
    """`ftctl plan --gpus cpu` plans for this machine's RAM, as `launch --gpus cpu` checks it (it had planned 90 GB
    on a 24 GB machine and exited 0, where the launch refused)."""
    from click.testing import CliRunner

    from ftctl.cli import main
    from ftctl.local import backend as local_backend

    monkeypatch.setattr(local_backend, "host_memory_gb", lambda: 2.0)
    args = ["plan", "--gpus", "cpu", "--method", "fft", "--model", "HuggingFaceTB/SmolLM2-1.7B-Instruct"]
    refused = CliRunner().invoke(main, args)
    assert refused.exit_code == 2 and "does not fit host_memory_gb=2 on CPU" in refused.output, refused.output
    monkeypatch.setattr(local_backend, "host_memory_gb", lambda: 500.0)
    assert CliRunner().invoke(main, args).exit_code == 0


def test_doctor_compares_the_gpus_asked_for_with_this_machines(tmp_path, monkeypatch, capsys):
    """On a GPU host (faked here: none on this machine; nvidia-smi's answer, every kind of card read) doctor --gpus and
    doctor --network answer, never a traceback."""
    import ftctl.local.backend as local
    from ftctl.errors import FtctlError
    from tests.fake_gpus import fake_nvidia_smi

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    fake_nvidia_smi(tmp_path, monkeypatch, *["NVIDIA H100 80GB HBM3, 81559"] * 8)
    assert local.gpus_here_say("1xH100") and capsys.readouterr().out == "asked:   1xH100: here\n"
    assert not local.gpus_here_say("2xA100") and not local.gpus_here_say("2x8xH100")
    for asked in ("2xA100", "16xH100"):
        with pytest.raises(FtctlError, match=f"--gpus {asked}: this machine has 8xH100, and doctor --network"):
            local.network_check(asked, None)


def test_an_interrupted_run_says_whether_a_relaunch_resumes_or_starts_again(tmp_path):
    """Ctrl-C while the model loaded said "resume from the last checkpoint" where none was saved yet."""
    from ftctl import failures
    from ftctl.checkpoints import write_manifest
    from ftctl.local.backend import failure_message
    from ftctl.runpaths import RunPaths
    from ftctl.spec import RunSpec
    from tests.s3_fixtures import make_checkpoint

    paths = RunPaths(tmp_path / "run")
    failures.record(
        "interrupted", "interrupted by SIGINT (preempted, cancelled, or its job stopped)", str(paths.failures)
    )
    spec = RunSpec(output_dir=str(paths.root))
    said = failure_message(paths, 130, spec)
    assert said.endswith("Run the same `ftctl launch` again to start it again (no checkpoint was saved yet).")
    write_manifest(str(make_checkpoint(paths.root, 2)), 2, 1, "h")
    assert failure_message(paths, 130, spec).endswith("again to resume from the last checkpoint.")


def test_a_trainer_killed_unasked_names_the_out_of_memory_killer(tmp_path):
    """A CPU run the kernel's OOM killer stopped said only "training exited with code -9 (signal 9)"."""
    from ftctl.local.backend import failure_message
    from ftctl.runpaths import RunPaths
    from ftctl.spec import RunSpec

    paths = RunPaths(tmp_path / "run")
    said = failure_message(paths, -9, RunSpec(output_dir=str(paths.root)))
    assert said.startswith("training exited with code -9 (signal 9): killed, most often by the kernel's out-of-memory")
    assert "-o per_device_train_batch_size" in said and "out-of-memory" not in failure_message(paths, -15, RunSpec())


WORKER = """
import sys, time
import torch.distributed as dist

dist.init_process_group("gloo")
for _ in range(int(sys.argv[1])):
    time.sleep(0.5)
    dist.barrier()
dist.destroy_process_group()
"""


def test_two_runs_on_one_host_each_meet_on_a_port_of_their_own(tmp_path):
    """A run on one host (local on GPUs, docker, a one-node SkyPilot job) took port 29500 for its rendezvous: a
    second one there joined the first's c10d store (torchrun takes a taken port for its own run's) and failed when
    the first ended. Each takes a free port of its own (torchrun --standalone) unless the run sets rdzv_port."""
    from ftctl.docker.render import argv as docker_argv
    from ftctl.local.backend import argv as local_argv
    from tests.render_fixtures import prepared

    r = prepared(backend="local", gpus="2xA100", output_dir=str(tmp_path / "o"))
    line = local_argv(r.spec, r.plan, "spec.json")
    assert "--standalone" in line and "--rdzv-endpoint" not in line
    r = prepared(["rdzv_port=29611"], backend="local", gpus="2xA100", output_dir=str(tmp_path / "o"))
    assert "127.0.0.1:29611" in local_argv(r.spec, r.plan, "spec.json")

    # a one-node SkyPilot job too (two jobs may share a reused cluster's node); several nodes meet at the head's
    assert "--standalone" in prepared(backend="sky", gpus="1xL4", output_dir="s3://b/o").text
    two = prepared(backend="sky", gpus="8xA100", nodes=2, output_dir="s3://b/o").text
    assert "--standalone" not in two and '--rdzv-endpoint "$HEAD_ADDR":"$RDZV_PORT"' in two  # the job's own

    r = prepared(backend="docker", gpus="cpu", output_dir=str(tmp_path / "o"))
    line = docker_argv(r.spec, r.plan, str(tmp_path / "run"))
    torchrun = line[line.index("ftctl.trainer.torchrun") - 2 : line.index("ftctl.trainer", line.index("--nnodes")) - 1]
    assert "--standalone" in torchrun
    (tmp_path / "w.py").write_text(WORKER)
    cmd = [sys.executable, *torchrun[1:], str(tmp_path / "w.py")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([*cmd, "2"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(1)  # the first has its store by now
    second = subprocess.run([*cmd, "12"], env=env, capture_output=True, text=True, timeout=120)
    assert first.wait(timeout=60) == 0, first.stdout.read()
    assert second.returncode == 0, second.stderr  # it went on after the first run ended


def test_stopping_the_launcher_stops_the_trainer_with_a_checkpoint(tmp_path, tiny_model_dir, tiny_data):
    """`kill PID` of `ftctl launch` (or `timeout 600 ftctl launch ...`) left the trainer training alone, its output
    into a closed pipe; a second launch into the run then cleared the running one's records (and replaced its
    spec.json) before the trainer's lock refused it. The launcher passes SIGTERM on: the trainer saves at its step
    boundary and the launcher says so; a second launch is refused while a trainer holds the run, nothing touched."""
    out = tmp_path / "run"
    args = ["launch", "--backend", "local", "--gpus", "cpu", "--model", str(tiny_model_dir), "--data", str(tiny_data)]
    args += ["--output", str(out), "-o", "max_steps=400", "-o", "save_steps=1000", "-o", "model_max_length=64"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = subprocess.Popen([FTCTL, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        assert launcher.poll() is None and time.monotonic() < deadline, launcher.communicate()
        time.sleep(0.5)
    (out / ".ftctl" / "failures" / "mark").write_text("the running run's")
    spec_before = (out / "spec.json").read_text()
    second = ftctl(*args, "-o", "learning_rate=0.00001", "--method", "lora")  # (no method: asks which)
    assert second.returncode != 0 and "is being trained into by pid" in second.stderr, second.stderr
    assert (out / ".ftctl" / "failures" / "mark").exists()  # its records were left alone, and its spec.json
    assert (out / "spec.json").read_text() == spec_before and not list((out / ".ftctl").glob("spec.*.json"))
    launcher.terminate()  # SIGTERM to the launcher alone, as `kill PID` sends it
    _, stderr = launcher.communicate(timeout=120)
    assert "Traceback" not in stderr, stderr
    assert launcher.returncode == 143 and "\nstopped (SIGTERM to ftctl launch): the trainer saved" in stderr, stderr
    # through the trainer's stop file, as a Slurm job's: torchrun, signalled, kills its workers mid-save after 30 s
    assert f"{out / '.ftctl' / 'stop'} exists: saving a checkpoint at the next step" in stderr
    saved = [p.name for p in out.glob("checkpoint-*") if (p / "ftctl-manifest.json").is_file()]
    assert saved and int(saved[0].split("-")[1]) < 400  # stopped early, with a checkpoint to resume
    alive = subprocess.run(["pgrep", "-f", str(out / "spec.json")], capture_output=True, text=True).stdout
    assert not alive.strip(), alive  # no trainer left behind


def test_ftctl_cancel_of_a_local_run_stops_it_with_a_checkpoint_and_status_names_it(
    tmp_path, tiny_model_dir, tiny_data
):
    """A local run training in another terminal (tmux, nohup): `ftctl cancel RUN_DIR` said to press Ctrl-C there, the
    way that loses the checkpoint being written. It asks the trainer to stop at its step boundary (its stop file, as
    `kill` of the launcher does); the launcher says so and exits as a stopped run; status names the checkpoint a
    relaunch resumes from (the step it shows can be past it)."""
    out = tmp_path / "run"
    args = ["launch", "--backend", "local", "--gpus", "cpu", "--model", str(tiny_model_dir), "--data", str(tiny_data)]
    args += ["--output", str(out), "-o", "max_steps=400", "-o", "save_steps=1000", "-o", "model_max_length=64"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = subprocess.Popen([FTCTL, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics, deadline = out / "metrics.jsonl", time.monotonic() + 300
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        assert launcher.poll() is None and time.monotonic() < deadline, launcher.communicate()
        time.sleep(0.5)
    # from another terminal: `ftctl jobs` lists the run (it recorded none), `ftctl logs -f` follows what it prints
    follower = subprocess.Popen(
        [FTCTL, "logs", "-f", str(out)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    jobs = ftctl("jobs").stdout
    assert f"\n{out}  local    =JOB  " in jobs and "  local run, training (pid " in jobs, jobs
    cancel = ftctl("cancel", str(out))
    assert cancel.returncode == 0 and "to stop: it saves a checkpoint at its next step and exits" in cancel.stdout
    stdout, stderr = launcher.communicate(timeout=120)
    assert launcher.returncode == 143 and "\nstopped (ftctl cancel): the trainer saved a checkpoint" in stderr
    assert "error:" not in stderr  # stopped as asked: no error, though not finished (the exit code)
    followed, said = follower.communicate(timeout=60)  # it ends with the run
    assert followed.startswith("ftctl: launched ") and "stopped: step " in followed, followed
    assert stdout.strip().splitlines()[-1] in followed  # the trainer's stdout and stderr, both kept
    assert "local run, stopped before the end" in said
    assert ftctl("logs", str(out)).stdout == followed  # without -f: what it printed
    saved = sorted(int(p.parent.name.split("-")[1]) for p in out.glob("checkpoint-*/ftctl-manifest.json"))
    status = ftctl("status", str(out)).stdout
    assert (
        saved and f"stopped before the end (the same `ftctl launch` resumes it from checkpoint-{saved[-1]})" in status
    )
    again = ftctl("cancel", str(out))
    assert again.returncode == 2 and "is a local run that is not training now: nothing to cancel" in again.stderr


def test_a_second_signal_to_the_launcher_stops_the_run_at_once(tmp_path, tiny_model_dir, tiny_data):
    """`kill PID` twice (a user who will not wait for the checkpoint; a supervisor's second request): the first asks
    for the checkpoint at the step boundary, the second stops the trainer where it is, as Ctrl-C does; here in the
    middle of writing that checkpoint (held there: its files written, its manifest not), which stays incomplete.
    Before, the second changed nothing: the trainer went on writing the checkpoint, however long that took."""
    out, ready = tmp_path / "run", tmp_path / "saving"
    args = ["launch", "--backend", "local", "--gpus", "cpu", "--model", str(tiny_model_dir), "--data", str(tiny_data)]
    args += ["--output", str(out), "-o", "max_steps=400", "-o", "save_steps=1000", "-o", "model_max_length=64"]
    repo = Path(__file__).resolve().parents[1]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "FTCTL_TEST_HOLD": f"local-manifest:*:{ready}",
        "PYTHONPATH": f"{repo / 'tests' / 'hold'}:{repo}",  # the hold hook, in the trainer
    }
    launcher = subprocess.Popen([FTCTL, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics, deadline = out / "metrics.jsonl", time.monotonic() + 300
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        assert launcher.poll() is None and time.monotonic() < deadline, launcher.communicate()
        time.sleep(0.5)
    launcher.terminate()  # the first: a checkpoint at the step boundary
    while not ready.exists():  # the trainer is writing it, held before its manifest
        assert launcher.poll() is None and time.monotonic() < deadline, launcher.communicate()
        time.sleep(0.05)
    launcher.terminate()  # the second: now
    _, stderr = launcher.communicate(timeout=60)
    assert "Traceback" not in stderr, stderr
    assert launcher.returncode == 143, stderr
    assert "\nstopped at once (SIGTERM again to ftctl launch), its checkpoint unfinished; nothing was saved yet" in (
        stderr
    )  # the last complete checkpoint the same launch resumes from is named where there is one
    assert (
        (out / "train.log")
        .read_text()
        .endswith(
            "ftctl: stopped at once (SIGTERM again to ftctl launch), its "
            "checkpoint unfinished; nothing was saved yet: the same "
            "`ftctl launch` starts it again.\n"
        )
    )  # `ftctl logs` says why
    assert ready.exists()  # nobody let it go on: it was stopped in the hold
    assert list(out.glob("checkpoint-*")) and not list(out.glob("checkpoint-*/ftctl-manifest.json"))
    alive = subprocess.run(["pgrep", "-f", str(out / "spec.json")], capture_output=True, text=True).stdout
    assert not alive.strip(), alive


@pytest.mark.parametrize("to", ["group", "launcher"])
def test_ctrl_c_stops_the_run_at_once_and_says_what_a_relaunch_resumes(to, tmp_path, tiny_model_dir, tiny_data):
    """Ctrl-C (SIGINT to the shell's job: the launcher and the trainer) printed "interrupted" alone; SIGINT to the
    launcher alone (`kill -INT PID`) ended it with a KeyboardInterrupt and left the trainer training unseen. Now
    either stops the trainer where it is, and the launcher says which checkpoint the same launch resumes from."""
    import signal

    out = tmp_path / "run"
    args = ["launch", "--backend", "local", "--gpus", "cpu", "--model", str(tiny_model_dir), "--data", str(tiny_data)]
    args += ["--output", str(out), "-o", "max_steps=400", "-o", "save_steps=2", "-o", "model_max_length=64"]
    launcher = subprocess.Popen(
        [FTCTL, *args],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a process group of its own, as a shell's job
    )
    deadline = time.monotonic() + 300
    while not list(out.glob("checkpoint-*/ftctl-manifest.json")):
        assert launcher.poll() is None and time.monotonic() < deadline, launcher.communicate()
        time.sleep(0.2)
    if to == "group":
        os.killpg(launcher.pid, signal.SIGINT)
    else:
        launcher.send_signal(signal.SIGINT)
    _, stderr = launcher.communicate(timeout=120)
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert launcher.returncode == 130, stderr
    said = re.search(r"\nstopped at once \(Ctrl-C\); the steps since (checkpoint-\d+) are lost: the same", stderr)
    assert said and (out / said.group(1) / "ftctl-manifest.json").is_file(), stderr
    assert f"`ftctl cancel {out}`" in stderr
    last = max(int(p.parent.name.split("-")[1]) for p in out.glob("checkpoint-*/ftctl-manifest.json"))
    assert said.group(1) == f"checkpoint-{last}" and last < 400
    alive = subprocess.run(["pgrep", "-f", str(out / "spec.json")], capture_output=True, text=True).stdout
    assert not alive.strip(), alive


@pytest.mark.parametrize("sent", ["SIGINT", "SIGTERM"])
def test_a_stopped_ftctl_train_says_what_the_same_command_resumes(sent, tmp_path, tiny_model_dir, tiny_data):
    """`ftctl train` (the trainer in this process) said "interrupted by SIGINT" alone: now, as launch does, which
    checkpoint the same `ftctl train` resumes from and how to stop with a checkpoint instead. Stopped with one
    (SIGTERM) it exited 0, as a finished run: now 143, as launch, and its status says preempted."""
    import signal

    from ftctl.runpaths import RunPaths

    out = tmp_path / "run"
    args = ["train", "--gpus", "cpu", "--model", str(tiny_model_dir), "--data", str(tiny_data), "--output", str(out)]
    args += ["-o", "max_steps=400", "-o", "save_steps=2", "-o", "model_max_length=64"]
    trainer = subprocess.Popen(
        [FTCTL, *args],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a process group of its own, as a shell's job
    )
    deadline = time.monotonic() + 300
    while not list(out.glob("checkpoint-*/ftctl-manifest.json")):
        assert trainer.poll() is None and time.monotonic() < deadline, trainer.communicate()
        time.sleep(0.2)
    if sent == "SIGTERM":  # `kill PID`
        trainer.send_signal(signal.SIGTERM)
        stdout, stderr = trainer.communicate(timeout=120)
        assert trainer.returncode == 143 and "\nstopped: step " in stdout, stderr
        assert RunPaths(out).status_file.read_text() == "preempted\n"
        return
    os.killpg(trainer.pid, signal.SIGINT)
    _, stderr = trainer.communicate(timeout=120)
    assert "Traceback" not in stderr and trainer.returncode == 130, stderr
    assert RunPaths(out).status_file.read_text() == "failed\n"
    said = re.search(
        r"\nstopped at once \(Ctrl-C\); the steps since (checkpoint-\d+) are lost: the same `ftctl train`", stderr
    )
    assert said and (out / said.group(1) / "ftctl-manifest.json").is_file(), stderr
    assert stderr.endswith("To stop with a checkpoint of the step it is on, send SIGTERM instead (`kill PID`).\n")


FINISHED_TRAINER = """
import os, pathlib, signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)  # it has exited by the time the Ctrl-C comes
pathlib.Path(os.environ["FTCTL_STATUS_FILE"]).write_text("complete\\n")
print("complete: step 6", flush=True)
ready = pathlib.Path(sys.argv[1])
ready.touch()
while ready.exists():
    time.sleep(0.02)
"""
LAUNCH_FOREGROUND = """
import sys
from ftctl.errors import FtctlError
from ftctl.local.backend import run_foreground
from tests.render_fixtures import prepared
rendered = prepared(backend="local", gpus="cpu", output_dir=sys.argv[1])
try:
    run_foreground(rendered, [sys.executable, "-c", sys.argv[2], sys.argv[3]])
except FtctlError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(e.exit_code)
"""


def test_ctrl_c_after_the_run_finished_is_not_said_to_have_lost_steps(tmp_path):
    """Ctrl-C as the trainer exits (its status complete, its final model saved; a large model takes seconds to
    free): launch said "stopped at once (Ctrl-C); the steps since checkpoint-N are lost" and exited 130. Now the run
    is complete, as it is for a SIGTERM then."""
    import signal

    ready = tmp_path / "ready"
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCH_FOREGROUND, str(tmp_path / "run"), FINISHED_TRAINER, str(ready)],
        cwd=Path(__file__).resolve().parent.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a process group of its own, as a shell's job
    )
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert launcher.poll() is None and time.monotonic() < deadline, launcher.communicate()
        time.sleep(0.05)
    os.killpg(launcher.pid, signal.SIGINT)
    time.sleep(0.5)  # the launcher's handler has run
    ready.unlink()
    out, err = launcher.communicate(timeout=60)
    assert launcher.returncode == 0 and "stopped at once" not in err and "complete: step 6" in out, err


def test_a_closed_terminal_stops_the_run_with_a_checkpoint(tmp_path, tiny_model_dir, tiny_data):
    """An ssh session that dropped: its shell sends SIGHUP to the job's process group, the launcher and the trainer
    both, and every write to the terminal fails from then on (EIO). The trainer died at once, every step since its
    last checkpoint lost. Now it saves at its next step boundary and stops; what either would say goes nowhere, and
    the run's own records say how it ended."""
    import signal

    from ftctl.runpaths import RunPaths

    out = tmp_path / "run"
    args = ["launch", "--backend", "local", "--gpus", "cpu", "--model", str(tiny_model_dir), "--data", str(tiny_data)]
    args += ["--output", str(out), "-o", "max_steps=400", "-o", "save_steps=1000", "-o", "model_max_length=64"]
    master, terminal = os.openpty()
    os.set_blocking(master, False)
    launcher = subprocess.Popen(
        [FTCTL, *args],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        start_new_session=True,  # a process group of its own, as a shell's job
    )
    os.close(terminal)
    seen, metrics, deadline = b"", out / "metrics.jsonl", time.monotonic() + 300
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        assert launcher.poll() is None and time.monotonic() < deadline, seen.decode(errors="replace")
        try:
            seen += os.read(master, 65536)  # the terminal's reader: a full one would block the writers
        except BlockingIOError:
            time.sleep(0.5)
    os.close(master)  # the terminal is gone: writes to it fail (EIO)
    os.killpg(launcher.pid, signal.SIGHUP)  # what the shell does to its job as its terminal closes
    assert launcher.wait(timeout=120) == 128 + signal.SIGHUP
    saved = [p.name for p in out.glob("checkpoint-*") if (p / "ftctl-manifest.json").is_file()]
    assert saved and int(saved[0].split("-")[1]) < 400, sorted(p.name for p in out.iterdir())
    assert RunPaths(out).status_file.read_text().strip() == "preempted"  # stopped with a checkpoint, not failed
    alive = subprocess.run(["pgrep", "-f", str(out / "spec.json")], capture_output=True, text=True).stdout
    assert not alive.strip(), alive


RELAY = """
import os, sys
from pathlib import Path
from ftctl.local.backend import run_filtered
sys.exit(run_filtered(sys.argv[3:], dict(os.environ), Path(sys.argv[1]), stop_file=Path(sys.argv[2])))
"""


def test_a_closed_terminal_stops_a_two_process_run_with_a_checkpoint(tmp_path, tiny_model_dir, tiny_data):
    """A local run of several GPUs, as on a workstation: torchrun, signalled with the launcher by the closed
    terminal's SIGHUP, killed its workers 30 s later, often mid-checkpoint, and the launcher said "training exited with
    code 1". The launcher runs ftctl's torchrun: the workers stop at their next step with a checkpoint, their writes
    to the dead terminal ignored (in sessions of their own, they get no SIGHUP), and the run is said stopped."""
    import signal

    from ftctl.local.backend import argv
    from ftctl.runpaths import RunPaths
    from tests.render_fixtures import prepared
    from tests.trainer_fixtures import make_run, write_spec

    gpus = prepared(backend="local", gpus="2xA100", output_dir=str(tmp_path / "o"))
    assert "ftctl.trainer.torchrun" in argv(gpus.spec, gpus.plan, "spec.json")  # ftctl's, as the other backends'
    out = tmp_path / "run"
    spec, plan = make_run(tiny_model_dir, tiny_data, out, "lora", gpus="2xcpu", max_steps=400, save_steps=1000)
    path = write_spec(spec, plan, tmp_path / "spec.json")  # 2xcpu: two processes, here on one host as on GPUs
    cmd = [sys.executable, "-m", "ftctl.trainer.torchrun", "--standalone", "--nproc-per-node", "2"]
    cmd += ["-m", "ftctl.trainer", "--spec", str(path)]
    (tmp_path / "relay.py").write_text(RELAY)
    stop = tmp_path / "stop"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "FTCTL_STOP_FILE": str(stop),
        "FTCTL_STATUS_FILE": str(tmp_path / "st"),
    }
    master, terminal = os.openpty()
    os.set_blocking(master, False)
    launcher = subprocess.Popen(
        [sys.executable, str(tmp_path / "relay.py"), str(tmp_path / "held.log"), str(stop), *cmd],
        env=env,
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        start_new_session=True,
    )
    os.close(terminal)
    seen, metrics, deadline = b"", out / "metrics.jsonl", time.monotonic() + 300
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        assert launcher.poll() is None and time.monotonic() < deadline, seen.decode(errors="replace")
        try:
            seen += os.read(master, 65536)
        except BlockingIOError:
            time.sleep(0.5)
    os.close(master)
    os.killpg(launcher.pid, signal.SIGHUP)  # the launcher and torchrun: the shell's job
    assert launcher.wait(timeout=120) == 128 + signal.SIGHUP
    saved = [p.name for p in out.glob("checkpoint-*") if (p / "ftctl-manifest.json").is_file()]
    assert saved and int(saved[0].split("-")[1]) < 400, sorted(p.name for p in out.iterdir())
    assert (tmp_path / "st").read_text().strip() == "preempted"
    assert RunPaths(out).metrics.is_file()


def test_torchruns_report_that_cannot_be_kept_is_a_warning_not_a_traceback(tmp_path, capsys):
    """A disk that filled during a checkpoint: keeping torchrun's held-back report raised OSError out of the
    launcher, a traceback in place of the trainer's own error line."""
    from ftctl.local.backend import run_filtered

    report = "Traceback (most recent call last):\n  torch.distributed.elastic ... ChildFailedError\n"
    cmd = [sys.executable, "-c", f"import sys; sys.stderr.write({report!r}); sys.exit(3)"]
    unwritable = tmp_path / "no-such-dir" / "launcher.log"
    assert run_filtered(cmd, dict(os.environ), unwritable) == 3
    err = capsys.readouterr().err
    assert f"warning: cannot keep torchrun's report in {unwritable}: No such file or directory" in err
    assert "ChildFailedError" not in err  # held back, as before


def test_a_log_being_written_is_followed_from_before_the_trainer_holds_its_run(tmp_path):
    """`ftctl logs -f RUN_DIR` right after the launch (the model still loading, no trainer holding the run yet)
    printed the first lines and stopped: the launcher holds its log while it writes it, and that is followed."""
    import io
    import threading

    from ftctl.logfile import follow, held, hold

    log = tmp_path / "train.log"
    log.write_text("ftctl: launched\n")
    assert not held(log)
    with open(log, "a", buffering=1) as fh:
        hold(fh)
        assert held(log)
        out = io.StringIO()
        follower = threading.Thread(target=follow, args=(log, lambda: held(log), out, 0.05))
        follower.start()
        time.sleep(1.5)  # past follow's first ask of whether the log is written
        fh.write("step 1/2  loss 1.0\n")
    follower.join(timeout=10)
    assert not follower.is_alive() and out.getvalue() == "ftctl: launched\nstep 1/2  loss 1.0\n"
    assert not held(log)
