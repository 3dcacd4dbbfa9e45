"""Slurm jobs that run on a university cluster the first time (helper 135): the host RAM a GPU job asks for (--mem,
said where the number comes from), GPUs asked as --gres (both of Slurm's GPU selectors take it), `conda activate`
in -o setup, Slurm memory said in GiB, a run dir on this machine's /tmp said at launch, and why each requeue.

Fake Slurm commands, no cluster: what the real cluster takes of it is in tests/test_slurm_scheduler.py
(test_the_rendered_gpu_request_runs_on_the_real_cluster)."""

from __future__ import annotations

import socket

import pytest

from ftctl.backend import get, launch
from ftctl.errors import FtctlError
from ftctl.slurm import backend as slurm_backend
from ftctl.slurm import render as slurm_render
from ftctl.slurm.doctor import NodeInfo, PartitionInfo, _memory_problems
from tests.render_fixtures import fake_bin, fake_partition, make_spec, prepared, run_bash

LLAMA_8B = "meta-llama/Llama-3.1-8B"
# sinfo --Node --format '%P|%N|%t|%c|%m|%l|%a|%G|%n': the last column the node's hostname
SINFO = """\
gpu*|g1|idle|64|1024000|1-00:00:00|up|gpu:a100:8(S:0-1)|g1.cluster
gpu*|g2|idle|64|1024000|1-00:00:00|up|gpu:a100:8(S:0-1)|g2.cluster
"""


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    """Fake sinfo (SINFO) and scontrol; FTCTL_HOME in tmp_path."""
    return fake_partition(tmp_path, monkeypatch, SINFO)


def _mem(text: str) -> tuple[int | None, str]:
    """The script's --mem (GiB) and its comment line."""
    asked = [line for line in text.splitlines() if line.startswith("#SBATCH --mem=")]
    said = [line for line in text.splitlines() if line.startswith("# --mem=")]
    return (int(asked[0].removeprefix("#SBATCH --mem=").rstrip("G")) if asked else None), (said[0] if said else "")


# ------------------------------------------------------------------------------------------------ --mem
def test_a_gpu_job_asks_for_the_ram_its_processes_load_the_model_in():
    """A GPU job asked no --mem: the partition's DefMemPerCPU (often 1-4 GB a CPU) applied, and 8B fft on 8 GPUs,
    each process building the model's fp32 weights on the CPU (32 GB) before it goes to the GPU, was OOM-killed at
    load. The script asks for it with 15% headroom, and its comment says where the number comes from."""
    flags = dict(backend="slurm", method="fft", model_name_or_path=LLAMA_8B, output_dir="/fixed/o")
    zero2 = prepared(gpus="8xA100", **flags)
    assert zero2.plan.strategy == "zero2"
    need_gb = 8 * 6.0 + 8 * zero2.plan.model.params_b * 4  # processes + eight fp32 copies
    asked, said = _mem(zero2.text)
    assert asked == slurm_render.gib(need_gb * 1.15) == 327
    assert said == (
        "# --mem=327G a node: loading the model: 8 processes x 5.6 GiB, each loads the 8.0B model's fp32 weights "
        "(30 GiB) = 285 GiB, +15% (--sbatch-arg=--mem=SIZE asks for another)"
    )
    # FSDP loads it once a job (accelerate's cpu_ram_efficient_loading); qlora reads a checkpoint file at a time
    fsdp = prepared(gpus="4xA100", **flags)
    assert fsdp.plan.strategy == "fsdp" and "the job's first process loads the 8.0B model's fp32 weights" in fsdp.text
    assert _mem(fsdp.text)[0] == slurm_render.gib((4 * 6.0 + fsdp.plan.model.params_b * 4) * 1.15)
    qlora = prepared(gpus="1xA100", **{**flags, "method": "qlora"})
    assert _mem(qlora.text)[0] == slurm_render.gib((6.0 + 5.0) * 1.15)
    # the plan says it too (`ftctl plan --backend slurm`)
    assert f"--mem=327G a node: {said.split(' a node: ', 1)[1]}" in zero2.plan.notes


@pytest.mark.parametrize("own", ["--mem=200G", "--mem-per-cpu=4G", "--mem-per-gpu=40G", "--mem=0"])
def test_the_users_own_memory_option_is_the_only_one(own):
    """sbatch refuses two of --mem, --mem-per-cpu and --mem-per-gpu ("mutually exclusive"): the run's own is sent
    alone, as given (a --mem-per-gpu beside ftctl's --mem made sbatch fail)."""
    text = prepared(
        backend="slurm", method="fft", gpus="8xA100", model_name_or_path=LLAMA_8B, output_dir="/o", sbatch_args=[own]
    ).text
    assert f"#SBATCH {own}\n" in text and text.count("#SBATCH --mem") == 1 and "# --mem=" not in text


def test_mem_is_at_most_the_ram_the_nodes_have(cluster):
    """The headroom never asks for more than the nodes have (a --mem above them: sbatch refuses the job); a load
    larger than the nodes' RAM asks for all of it and says it may be OOM-killed, and how to load it once."""
    flags = dict(backend="slurm", method="fft", gpus="8xA100", model_name_or_path=LLAMA_8B, output_dir="/o")
    (cluster / "sinfo.out").write_text(SINFO.replace("1024000", "307200"))  # 300 GiB: the 285 fit, not +15%
    asked, said = _mem(prepared(**flags).text)  # all of sinfo's 307200 MiB (was 299G: rounded down to GB, then GiB)
    assert asked == 300 and said.endswith(
        "= 285 GiB; all the nodes' 300 GiB (--sbatch-arg=--mem=SIZE asks for another)"
    )
    (cluster / "sinfo.out").write_text(SINFO.replace("1024000", "204800"))  # 200 GiB
    asked, said = _mem(prepared(**flags).text)
    assert asked == 200 and ": more than the nodes' 200 GiB, so the load may be OOM-killed; -o strategy=fsdp " in said
    get("slurm").check(prepared(**flags))  # not refused: what is asked for is what they have


def test_a_mem_above_every_node_is_said_in_gib():
    """doctor said "at most 536 GB a node" of sinfo's 512000 MiB, where --mem takes G as GiB: --mem=536G is more than
    the node has."""
    part = PartitionInfo("gpu", True, True, "1:00:00", [NodeInfo("g1", "idle", 64, 512000, {"a100": 8})])
    (problem,) = _memory_problems(part, 600 * 2**30 / 1e9)
    assert "asks for --mem=600G a node" in problem and "has at most 500 GiB a node" in problem
    assert "-o host_memory_gb=536 (in GB" in problem and part.memory_summary == "500 GiB RAM a node"


# ------------------------------------------------------------------------------------------------ --gres
def test_gpus_are_asked_as_gres_which_cons_res_takes_too():
    """--gpus-per-node is select/cons_tres's only: a cons_res cluster (Slurm before 23.11) refused it. --gres takes
    the partition's type name as before; another GRES of the run's joins that line (two --gres lines: sbatch kept the
    last, and the job had no GPUs); a GPU GRES of the run's own is refused."""
    flags = dict(backend="slurm", gpus="2xA100", model_name_or_path=LLAMA_8B, output_dir="/o")
    rendered = prepared(**flags)
    assert "\n#SBATCH --gres=gpu:2\n" in rendered.text and "gpus-per-node" not in rendered.text
    typed = slurm_render.render(rendered.spec, rendered.plan, "a100")
    assert "\n#SBATCH --gres=gpu:a100:2\n" in typed
    nvme = prepared(sbatch_args=["--gres=nvme:1"], **flags).text
    assert "\n#SBATCH --gres=gpu:2,nvme:1\n" in nvme and nvme.count("--gres") == 1
    cpu = prepared(["model_params=100m"], **{**flags, "gpus": "cpu", "sbatch_args": ["--gres=nvme:1"]}).text
    assert "\n#SBATCH --gres=nvme:1\n" in cpu
    for arg in ("--gres=gpu:a100:2", "--gres=nvme:1,gpu:1", "--gre=gpu:1"):
        with pytest.raises(FtctlError, match="ftctl writes #SBATCH --gres itself.*use --gpus"):
            prepared(sbatch_args=[arg], **flags)


# ------------------------------------------------------------------------------------------------ conda
CONDA = """#!/bin/sh
# conda's CLI: `shell.bash hook` prints the shell function; `conda activate` without it fails as conda does
if [ "$1" = shell.bash ] && [ "$2" = hook ]; then
  echo 'conda() { if [ "$1" = activate ]; then CONDA_DEFAULT_ENV="$2"; export CONDA_DEFAULT_ENV; else "$CONDA_EXE" "$@"; fi; }'
  exit 0
fi
echo "CondaError: Run 'conda init' before 'conda activate'" >&2
exit 1
"""


@pytest.mark.parametrize("where", ["CONDA_EXE", "PATH"])
def test_conda_activate_in_setup_works_in_a_batch_shell(tmp_path, where):
    """`-o setup='conda activate myenv'` failed after the queue wait (CondaError: a batch shell reads no ~/.bashrc,
    where `conda init` writes conda's shell function). The script runs conda's hook first, where there is a conda:
    CONDA_EXE (sbatch passes the shell's environment) or conda on PATH; under the script's set -u."""
    conda_bin = tmp_path / "conda" / "bin"
    conda_bin.mkdir(parents=True)
    (conda_bin / "conda").write_text(CONDA)
    (conda_bin / "conda").chmod(0o755)
    spec = make_spec(
        ["setup=conda activate 'my env'"], backend="slurm", gpus="1xA100", model_name_or_path=LLAMA_8B, output_dir="/o"
    )
    setup = [*slurm_render.conda_hook(spec), *slurm_render.setup_lines(spec, log=slurm_render.JOB_LOG)]
    assert "\n".join(setup) in slurm_render.render(spec, prepared(backend="slurm", gpus="1xA100").plan)
    lines = ["set -uo pipefail", *setup]  # the script's own nounset
    script = "\n".join([*lines, 'echo "env=$CONDA_DEFAULT_ENV"'])
    env = {"CONDA_EXE": str(conda_bin / "conda")} if where == "CONDA_EXE" else {}
    path = f"{conda_bin}:/usr/bin:/bin" if where == "PATH" else "/usr/bin:/bin"
    r = run_bash(script, cwd=tmp_path, fakes=tmp_path, log=tmp_path / "l", env={**env, "PATH": path})
    assert r.returncode == 0 and r.stdout.strip() == "env=my env", (r.stdout, r.stderr)
    # no conda here: nothing is run for it, and the setup line says it failed
    r = run_bash(script, cwd=tmp_path, fakes=tmp_path, log=tmp_path / "l", env={"PATH": "/usr/bin:/bin"})
    assert r.returncode == 127 and "a setup line failed: conda activate 'my env'" in r.stdout, (r.stdout, r.stderr)


def test_the_conda_hook_only_where_setup_activates_conda_without_its_own():
    def hook(*setup):
        spec = make_spec([f"setup={s}" for s in setup], backend="slurm", gpus="1xA100", output_dir="/o")
        return bool(slurm_render.conda_hook(spec))

    assert hook("module load cuda", "conda activate x") and hook("source ~/.x && conda activate y")
    assert not hook("module load cuda") and not hook("echo conda activate-me")
    assert not hook("source ~/miniconda3/etc/profile.d/conda.sh", "conda activate x")  # the user's own hook
    assert not hook('eval "$(conda shell.bash hook)"', "conda activate x")


# ------------------------------------------------------------------------------------------------ /tmp
def test_a_run_dir_on_this_machines_tmp_is_said_at_launch(cluster, capsys, monkeypatch):
    """A run dir in the login node's /tmp is not the nodes': the job failed to start (JobLaunchFailure) after the
    queue wait, and only its status said why. Launch says it (one line) where the nodes are other machines."""
    run = cluster / "run"  # pytest's tmp_path: under /tmp
    spec = make_spec(backend="slurm", gpus="2xA100", model_name_or_path=LLAMA_8B, output_dir=str(run))
    launch(spec, dry_run=True)
    (line,) = [w for w in capsys.readouterr().err.splitlines() if "the job's nodes do not see it" in w]
    assert line.startswith(f"warning: {run} (the run directory: its spec.json, job script and log) is on this ")
    assert "Slurm cannot start the job (JobLaunchFailure, after the queue wait)" in line and line.endswith(
        "(home, project or scratch space): --output DIR (or -o output=DIR)."
    )  # the data's own line: tests/test_explore34.py
    # a one-machine Slurm (its nodes are this host): its /tmp is theirs
    here = socket.gethostname().split(".")[0]
    (cluster / "sinfo.out").write_text(SINFO.replace("g1.cluster", here).replace("g2.cluster", f"{here}.local"))
    launch(spec, dry_run=True)
    assert "do not see it" not in capsys.readouterr().err


def test_what_is_node_local(monkeypatch):
    assert slurm_backend.node_local("/tmp/x/run").startswith("this machine's /tmp")
    assert slurm_backend.node_local("/dev/shm/run").startswith("this machine's /dev/shm")
    monkeypatch.setattr(slurm_backend, "_mount_of", lambda path: ("/tmp", "nfs4"))  # a /tmp the nodes share
    assert slurm_backend.node_local("/tmp/x/run") is None
    monkeypatch.setattr(slurm_backend, "_mount_of", lambda path: ("/scratch", "tmpfs"))
    assert slurm_backend.node_local("/scratch/run") == "this machine's memory (tmpfs at /scratch)"
    monkeypatch.setattr(slurm_backend, "_mount_of", lambda path: ("/", "ext4"))
    assert slurm_backend.node_local("/home/u/run") is None  # a home on a local disk may be exported: not said


# ------------------------------------------------------------------------------------------------ requeue
@pytest.mark.parametrize(
    ("rc", "said"),
    [
        ("0", "this attempt stopped at a checkpoint (exit 0) without Slurm's time-limit notice (USR2), so its time "),
        ("75", "this attempt ended because the object store did not answer (exit 75: the trainer's error above "),
    ],
)
def test_each_requeue_says_why(tmp_path, rc, said):
    """Requeue lines below max_requeues said only "requeueing job N": the cause (the store's exit 75, no USR2, an
    early USR2, the time limit) was said at the limit only."""
    fakes = fake_bin(tmp_path / "bin")
    (fakes / "python3").write_text(f'#!/bin/sh\necho preempted > "$FTCTL_STATUS_FILE"\nexit {rc}\n')
    prep = prepared(backend="slurm", gpus="1xA100", model_name_or_path=LLAMA_8B, output_dir="/f/o")
    env = {"SLURM_SUBMIT_DIR": str(tmp_path), "SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "node1"}
    r = run_bash(
        prep.text, cwd=tmp_path, fakes=fakes, log=tmp_path / "log.jsonl", env={**env, "SLURM_RESTART_COUNT": "2"}
    )
    assert r.returncode == 0 and f"ftctl: requeueing job 7 (requeue 3 of at most 5): {said}" in r.stdout, r.stdout
