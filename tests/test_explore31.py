"""A university-cluster user's first contact with the Slurm backend (explore31), against fake Slurm commands (no
cluster): a partition of several GPU models, a plan for GPUs only another partition has, `ftctl launch` from inside
an salloc / `srun --pty bash`, a job Slurm leaves pending forever, an account or QOS limit at sbatch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ftctl.backend import JobRef, get, record_job, status_lines
from ftctl.slurm import scheduler
from ftctl.slurm.doctor import NodeInfo, PartitionInfo, doctor
from tests.render_fixtures import fake_slurm, prepared

VENV_BIN = Path(sys.executable).parent
MODEL = "meta-llama/Llama-3.2-1B"
# a university cluster's sinfo --Node --format '%P|%N|%t|%c|%m|%l|%a|%G': one "gpu" partition of four GPU models (the
# A100s under two names, as their nvidia-smi names them), H100s in a partition of their own
SINFO = """\
gpu*|g01|idle|64|512000|2-00:00:00|up|gpu:nvidia_a100-sxm4-80gb:4(S:0-1)
gpu*|g02|idle|64|512000|2-00:00:00|up|gpu:nvidia_a100-pcie-40gb:4(S:0-1)
gpu*|g03|idle|64|512000|2-00:00:00|up|gpu:nvidia_a100-pcie-40gb:4(S:0-1)
gpu*|g04|idle|40|384000|2-00:00:00|up|gpu:tesla_v100-sxm2-32gb:4(S:0-1)
gpu*|g05|idle|48|256000|2-00:00:00|up|gpu:quadro_rtx_8000:8(S:0-1)
h100|h01|idle|96|1024000|1-00:00:00|up|gpu:h100:8(S:0-1)
h100|h02|idle|96|1024000|1-00:00:00|up|gpu:h100:8(S:0-1)
a100|a01|idle|64|512000|2-00:00:00|up|gpu:a100:4(S:0-1)
"""


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    (tmp_path / "sinfo.out").write_text(SINFO)
    scripts = {
        "sinfo": f"cat {tmp_path / 'sinfo.out'}",
        "scontrol": 'case "$1" in ping) echo "Slurmctld(primary) at ctl is UP";; esac',
        "squeue": "true",
        # what the job would start with: sbatch passes its environment to the job (--export=ALL)
        "sbatch": f"env > {tmp_path / 'sbatch.env'}; echo 4242",
    }
    fake_slurm(bin_dir, monkeypatch, scripts, tmp_path / "home")
    monkeypatch.setenv("PATH", f"{bin_dir}:{VENV_BIN}:/usr/bin:/bin")  # the venv activated, as the README has it
    return tmp_path


def _checked(**flags):
    rendered = prepared(backend="slurm", model_name_or_path=MODEL, output_dir="/fixed/out", **flags)
    get("slurm").check(rendered)
    return rendered


@pytest.mark.parametrize(
    ("gpus", "asked"),
    [
        ("4xA100", "nvidia_a100-pcie-40gb:4"),  # of its two A100 names, the one more nodes have
        ("4xA100-80GB", "nvidia_a100-sxm4-80gb:4"),
        ("2xV100", "tesla_v100-sxm2-32gb:2"),
    ],
)
def test_a_partition_of_several_gpu_models_is_asked_for_the_plans_by_name(cluster, gpus, asked):
    """`--gpus 4xA100` on a partition of A100s (two names), V100s and Quadro RTX 8000s asked `--gpus-per-node=4`:
    Slurm could start the bf16 FlashAttention plan on the V100s or Quadros (no bf16), where it fails after the queue
    wait. Now it asks for one of the A100 names."""
    rendered = _checked(gpus=gpus, partition="gpu")
    assert f"#SBATCH --gres=gpu:{asked}\n" in rendered.text


def test_where_every_gpu_of_a_partition_is_the_plans_the_request_stays_untyped():
    def partition(*gres):
        return PartitionInfo(
            "p", True, True, "infinite", [NodeInfo(f"n{i}", "idle", 8, 1000, g) for i, g in enumerate(gres)]
        )

    both = ({"nvidia_a100-pcie-40gb": 4}, {"nvidia_a100-sxm4-80gb": 4})
    assert partition(*both).gres_type("A100") is None  # either will do: the widest pool
    assert partition(*both, {"tesla_v100-sxm2-32gb": 4}).gres_type("A100") in (
        "nvidia_a100-pcie-40gb",
        "nvidia_a100-sxm4-80gb",
    )
    # the name whose nodes hold as many a node as the plan asks for
    mixed = partition({"a100": 2}, {"nvidia_a100-sxm4-80gb": 8}, {"a100": 2}, {"v100": 8})
    assert mixed.gres_type("A100", 8) == "nvidia_a100-sxm4-80gb"
    assert mixed.gres_type("A100", 2) == "a100"


def test_gpus_only_another_partition_has_are_sent_there_not_spread_over_this_ones(cluster):
    """`--gpus 8xH100` on a cluster whose default partition holds A100s said `--gpus 2x4xH100 spreads them over
    nodes`: a plan for H100s on A100 nodes. The partition with H100s is named."""
    (problem, *_) = doctor(partition="a100", gpus_per_node=8, gpu_type="H100").never_runs
    assert problem.endswith("(gpu:a100:4); partition h100 has gpu:h100:8: pass --partition h100")
    (problem, *_) = doctor(partition="a100", gpus_per_node=16, gpu_type="H100").never_runs
    assert problem.endswith(
        "partition h100 has gpu:h100:8: --gpus 2x8xH100 --partition h100 spreads them over its nodes"
    )
    # GPUs of the plan's name: spread as before
    (problem, *_) = doctor(partition="a100", gpus_per_node=8, gpu_type="A100").never_runs
    assert problem.endswith(": --gpus 2x4xA100 spreads them over nodes")


def test_a_launch_from_inside_a_slurm_job_leaves_that_jobs_variables_out(cluster, monkeypatch, tmp_path):
    """`ftctl launch` in an salloc or `srun --pty bash` passed that job's SLURM_* variables to the new job
    (--export=ALL): its srun read the outer SLURM_MEM_PER_CPU beside the job's own SLURM_MEM_PER_NODE ("srun: fatal:
    ... mutually exclusive"), the outer CPU masks (SLURM_CPU_BIND) and task count, and a first attempt counted as a
    requeued one (SLURM_RESTART_COUNT). What the user sets on purpose stays."""
    outer = {
        "SLURM_JOB_ID": "77",
        "SLURM_MEM_PER_CPU": "4000",
        "SLURM_CPU_BIND": "quiet,mask_cpu:0x3",
        "SLURM_NTASKS": "4",
        "SLURM_STEP_ID": "0",
        "SLURM_RESTART_COUNT": "2",
        "SLURMD_NODENAME": "g01",
        "SRUN_CPUS_PER_TASK": "2",
    }
    mine = {"SLURM_TIME_FORMAT": "relative", "SBATCH_ACCOUNT": "lab", "HF_TOKEN": "hf_x", "SLURM_CONF": ""}
    script = tmp_path / "job.sbatch"
    script.write_text("#!/bin/bash\n")
    for name, value in {**outer, **mine}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("SLURM_CONF")
    assert scheduler.submit(script, cwd=tmp_path) == "4242"
    env = dict(line.split("=", 1) for line in (tmp_path / "sbatch.env").read_text().splitlines() if "=" in line)
    assert not set(outer) & set(env)
    assert {k: env[k] for k in ("SLURM_TIME_FORMAT", "SBATCH_ACCOUNT", "HF_TOKEN")} == {
        "SLURM_TIME_FORMAT": "relative",
        "SBATCH_ACCOUNT": "lab",
        "HF_TOKEN": "hf_x",
    }
    # on a login node (no job around it) the environment goes as it is: a site's SLURM_CPU_BIND=none stays
    monkeypatch.delenv("SLURM_JOB_ID")
    scheduler.submit(script, cwd=tmp_path)
    env = (tmp_path / "sbatch.env").read_text()
    assert "SLURM_CPU_BIND=quiet,mask_cpu:0x3\n" in env


def test_leaked_memory_variables_are_what_stops_the_jobs_srun(tmp_path):
    """Why the previous test matters, in bash as the job's script runs srun: a stand-in srun refusing, as Slurm's
    does, two of SLURM_MEM_PER_CPU / SLURM_MEM_PER_NODE at once."""
    srun = tmp_path / "srun"
    srun.write_text(
        '#!/bin/bash\n[ -n "${SLURM_MEM_PER_CPU:-}" ] && [ -n "${SLURM_MEM_PER_NODE:-}" ] && '
        '{ echo "srun: fatal: SLURM_MEM_PER_CPU, SLURM_MEM_PER_GPU, and SLURM_MEM_PER_NODE are mutually exclusive." >&2;'
        " exit 1; }; exit 0\n"
    )
    srun.chmod(0o755)
    submitted = {"PATH": f"{tmp_path}:/usr/bin:/bin", "SLURM_JOB_ID": "77", "SLURM_MEM_PER_CPU": "4000"}

    def job_step(env):  # the new job: its own SLURM_MEM_PER_NODE (--mem) over what it was submitted with
        return subprocess.run(
            ["bash", "-c", "srun true"], env={**env, "SLURM_MEM_PER_NODE": "11264"}, capture_output=True
        )

    assert job_step(submitted).returncode == 1
    assert job_step(scheduler.outside_a_job(submitted)).returncode == 0


@pytest.mark.parametrize(
    ("reason", "said"),
    [
        ("QOSMaxWallDurationPerJobLimit", "its --time is over what your QOS or account allows one job"),
        ("PartitionTimeLimit", "its --time is over the partition's limit"),
        ("QOSMaxGRESPerJob", "more GPUs, CPUs, nodes or memory than your QOS or account allows one job"),
        ("InvalidAccount", "Slurm does not take its account: --account"),
        ("Resources", None),
        ("QOSMaxGRESPerUser", None),  # the user's other jobs hold the GPUs now: it starts once they end
    ],
)
def test_status_of_a_job_slurm_never_starts_says_what_to_change(cluster, reason, said):
    """A QOS whose MaxWall is below --time (without DenyOnLimit) takes the job and leaves it pending forever; status
    said `4242 PENDING (QOSMaxWallDurationPerJobLimit)` and nothing else."""
    run = cluster / "run"
    run.mkdir()
    record_job(JobRef("slurm", "4242", str(run), "r", str(run)))
    (cluster / "squeue.out").write_text(f"4242|PENDING||{reason}|0|0|N/A|N/A|\n")
    (cluster / "bin" / "squeue").write_text(f"#!/bin/sh\ncat {cluster / 'squeue.out'}\n")
    lines = status_lines("4242")
    assert lines[0] == f"4242 PENDING ({reason})"
    if said is None:
        assert lines == [lines[0]]
    else:
        assert lines[1].startswith(f"Slurm does not start a job pending for {reason} while it waits: ")
        assert said in lines[1] and lines[1].endswith("`ftctl cancel 4242`, then launch it again with that changed")


def test_an_account_or_qos_limit_at_sbatch_is_not_blamed_on_the_partition(cluster, tmp_path):
    script = tmp_path / "job.sbatch"
    script.write_text("#!/bin/bash\n")
    refusal = (
        "sbatch: error: QOSMaxWallDurationPerJobLimit\nsbatch: error: Batch job submission failed: Job violates "
        "accounting/QOS policy (job submit limit, user's size and/or time limits)"
    )
    (cluster / "bin" / "sbatch").write_text(f"#!/bin/sh\ncat >&2 <<'EOF'\n{refusal}\nEOF\nexit 1\n")
    with pytest.raises(scheduler.FtctlError) as e:
        scheduler.submit(script, cwd=tmp_path)
    assert "partition" not in str(e.value)
    assert "the limits of your account or QOS refuse it" in str(e.value) and "sacctmgr show qos" in str(e.value)


def test_a_list_of_partitions_is_taken_as_sbatch_takes_it(cluster):
    """`--partition a100,h100` (sbatch starts the job in whichever can start it first) was refused: "no partition
    'a100,h100' on this cluster ... pass --partition h100", and --sbatch-arg=--partition is refused as ftctl's own."""
    rendered = _checked(gpus="8xH100", partition="a100,h100")  # only h100's nodes have 8: asked for by its name
    assert "#SBATCH --partition=a100,h100\n" in rendered.text and "#SBATCH --gres=gpu:h100:8\n" in rendered.text
    rendered = _checked(gpus="4xA100", partition="a100,h100")  # either: no one name for both
    assert "#SBATCH --gres=gpu:4\n" in rendered.text
    report = doctor(partition="a100,gpus", gpus_per_node=4, gpu_type="A100")
    assert report.never_runs == [
        "no partition 'gpus' on this cluster (its partitions: gpu, h100, a100): pass --partition gpu"
    ]
    (never,) = doctor(partition="a100,h100", gpus_per_node=16, gpu_type="H100").never_runs
    assert never.startswith(
        "none of partitions a100, h100 can run it: 16 GPUs per node asked for, but partition 'a100'"
    )
    assert "partition 'h100' has at most 8 per node" in never


def test_doctor_checks_the_nodes_of_a_gpus_spec(cluster, capsys):
    """`ftctl doctor --backend slurm --gpus 2x4xA100 --partition a100` (one node) said nothing wrong: the nodes of
    the spec were not passed on, so the check was for one node."""
    assert get("slurm").doctor("2x4xA100", "a100") is False
    assert "problem: 2 nodes asked for, but partition 'a100' has 1" in capsys.readouterr().out
    assert get("slurm").doctor("2x8xH100", "h100") is True


def test_an_offline_cluster_job_whose_model_is_not_cached_is_warned_of(monkeypatch):
    """HF_HUB_OFFLINE=1 exported on the login node (its cluster's nodes have no internet) and a hub id not in the
    Hugging Face cache: the dry run said nothing, and the job stopped at loading the model after its queue wait."""
    from ftctl.preflight import WARNING, check_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (finding,) = check_model("Qwen/Qwen2.5-7B-Instruct", job_env=True)
    assert finding.level == WARNING and "HF_HUB_OFFLINE is set, which the job gets too" in finding.what
    assert "hf download Qwen/Qwen2.5-7B-Instruct" in finding.fix
    assert check_model("Qwen/Qwen2.5-7B-Instruct") == []  # a SkyPilot node gets no HF_HUB_OFFLINE of this shell's


def test_a_job_made_offline_by_its_own_env_whose_model_is_not_cached_is_warned_of(monkeypatch):
    """The same, with HF_HUB_OFFLINE=1 given to the job alone (`-e HF_HUB_OFFLINE=1`), this shell not offline and
    the Hub unanswered from here: the job gets it over this shell's, and stops at loading the model as well."""
    from ftctl.preflight import WARNING, check_model

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing answers: the Hub unreachable from here
    (finding,) = check_model("Qwen/Qwen2.5-7B-Instruct", job_env=True, job_vars={"HF_HUB_OFFLINE": "1"})
    assert finding.level == WARNING and "HF_HUB_OFFLINE is set, which the job gets too" in finding.what
