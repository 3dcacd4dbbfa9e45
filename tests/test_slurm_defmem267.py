"""--mem and --cpus-per-task of a CPU run against real partitions with a default memory (helper 267): the test
cluster's debug partition has DefMemPerNode=UNLIMITED, so helper 250's floor (--mem never below the partition's
DefMemPerCPU x CPUs / DefMemPerNode) had been checked against parsed text only. Here partitions with DefMemPerCPU and
DefMemPerNode are made in the running controller (SlurmCluster.new_partition: debug and gpu stay as the other tests see
them), and `ftctl launch` submits a tiny CPU run to them with real sbatch: accepted, `scontrol show job` shows the --mem
ftctl asked (MinMemoryNode), on the nodes' 2 CPUs (not CPU_CPUS_PER_TASK's 16, which sbatch takes and leaves pending
forever: Reason=PartitionConfig), and the job starts. Slurm's own behaviour the floor rests on is measured beside it:
an explicit --mem below the default gives the job less (MinMemoryNode=1G where no --mem gave DefMemPerCPU x 2), and a
job of a partition list gets the default of the partition it starts in (so of a list ftctl's floor is the most)."""

from __future__ import annotations

import re
import time

from tests.slurm_e2e_fixtures import run_args

PER_CPU, PER_NODE = "2048", "3000"  # MiB: 2 CPUs x 2048 = 4G, above the tiny run's plan (2G); 3000M too
STARTED = {"RUNNING", "COMPLETING", "COMPLETED", "FAILED"}


def _job(cluster, job: str) -> dict[str, str]:
    """`scontrol show job`'s KEY=VALUE words (the last of a key)."""
    text = cluster.run("scontrol", "show", "job", job, "--oneliner").stdout
    return dict(w.partition("=")[::2] for w in text.split() if "=" in w)


def _sbatch(cluster, *args: str) -> str:
    return cluster.run("sbatch", "--parsable", "-o", "/dev/null", *args, "--wrap", "sleep 30").stdout.strip()


def _directives(text: str) -> dict[str, str]:
    return dict(m.groups() for m in re.finditer(r"^#SBATCH --([a-z-]+)=(\S+)$", text, re.M))


def test_a_cpu_launch_onto_partitions_with_a_default_memory_is_accepted_with_its_mem(e2e, tiny_model_dir):
    cluster = e2e.cluster
    with (
        cluster.new_partition("defcpu267", DefMemPerCPU=PER_CPU) as per_cpu,
        cluster.new_partition("defnode267", DefMemPerNode=PER_NODE) as per_node,
    ):
        for partition, mem in ((per_cpu, "4G"), (per_node, "3000M")):
            out = e2e.scratch / f"defmem-{partition}"
            args = run_args(tiny_model_dir, out, nodes=1, max_steps=1)
            job = e2e.launch(*[partition if a == "debug" else a for a in args])
            asked = _directives((out / "job.sbatch").read_text())
            assert (asked["partition"], asked["cpus-per-task"], asked["mem"]) == (partition, "2", mem)
            said = _job(cluster, job)
            assert (said["Partition"], said["NumCPUs"], said["MinMemoryNode"]) == (partition, "2", mem), said
            assert cluster.wait_state(job, STARTED, timeout=30)  # not pending forever (16 CPUs: PartitionConfig)
            e2e.scancel(job)

        # Slurm's own: no --mem gets the default; a --mem below it gets less (what the floor guards against)
        bare, low = _sbatch(cluster, "-p", per_cpu, "-c", "2"), _sbatch(cluster, "-p", per_cpu, "-c", "2", "--mem=1G")
        assert _job(cluster, bare)["MinMemoryCPU"] == "2G"  # x 2 CPUs (TRES: mem=4G while pending)
        assert _job(cluster, low)["MinMemoryNode"] == "1G"
        sixteen = _sbatch(cluster, "-p", per_cpu, "-c", "16")  # accepted, never started on 2-CPU nodes
        assert cluster.wait_state(sixteen, "PENDING") and _job(cluster, sixteen)["Reason"] == "PartitionConfig"
        cluster.run("scancel", bare, low, sixteen)


def test_of_a_partition_list_the_floor_is_the_default_of_any_it_may_start_in(e2e, tiny_model_dir):
    cluster = e2e.cluster
    with (
        cluster.new_partition("defcpu267", DefMemPerCPU=PER_CPU) as per_cpu,
        cluster.new_partition("defnode267", DefMemPerNode=PER_NODE) as per_node,
    ):
        # Slurm gives a job the default of the partition it starts in: defnode267 down, it starts in defcpu267
        cluster.run("scontrol", "update", f"PartitionName={per_node}", "State=DOWN")
        job = _sbatch(cluster, "-p", f"{per_node},{per_cpu}", "-c", "2")
        cluster.wait_state(job, STARTED, timeout=30)
        said = _job(cluster, job)
        assert (said["Partition"], said["MinMemoryCPU"]) == (per_cpu, "2G"), said  # 4G, not 3000M
        cluster.run("scancel", job)

        # 4G, the most of the defaults (not 3000M); debug's UNLIMITED sets none
        for partitions in (f"{per_node},{per_cpu}", f"debug,{per_cpu}"):
            out = e2e.scratch / f"defmem-list-{partitions.replace(',', '-')}"
            args = run_args(tiny_model_dir, out, nodes=1, max_steps=1)
            proc = e2e.ftctl("launch", "--dry-run", *[partitions if a == "debug" else a for a in args])
            asked = _directives(proc.stdout)
            assert (asked["partition"], asked["mem"]) == (partitions, "4G"), proc.stdout
            assert f"partition {per_cpu}'s DefMemPerCPU={PER_CPU} (MiB) x 2 CPUs" in proc.stderr


def test_mem_above_the_partitions_max_is_refused_before_sbatch(e2e, slurm, tiny_model_dir):
    """MaxMemPerNode / MaxMemPerCPU below the plan's --mem (2G): sbatch took --mem=2G of a MaxMemPerNode=1024 partition
    and left it pending forever (MaxMemPerLimit, which status now explains), and refused it of a MaxMemPerCPU=768 one
    (a CPU each 768 MiB: 3 of 2-CPU nodes) saying neither; launch now refuses both, naming the limit."""
    from ftctl.slurm import scheduler

    with (
        slurm.new_partition("maxnode267", MaxMemPerNode="1024") as per_node,
        slurm.new_partition("maxcpu267", MaxMemPerCPU="768") as per_cpu,
    ):
        job = _sbatch(slurm, "-p", per_node, "-c", "2", "--mem=2G")
        deadline = time.monotonic() + 15
        while (reason := scheduler.status(job).reason) != "MaxMemPerLimit" and time.monotonic() < deadline:
            time.sleep(0.3)
        assert reason == "MaxMemPerLimit" and "MaxMemPerNode" in scheduler.never_starts(reason)
        slurm.run("scancel", job)
        refused = slurm.run("sbatch", "-p", per_cpu, "-c", "2", "--mem=2G", "--wrap", "true", check=False)
        assert refused.returncode == 1 and "CPU count per node can not be satisfied" in refused.stderr

        for partition, limit in (
            (per_node, "(MaxMemPerNode=1024 MiB)"),
            (per_cpu, "(MaxMemPerCPU=768 MiB x its nodes' 2 CPUs)"),
        ):
            args = run_args(tiny_model_dir, e2e.scratch / f"defmem-{partition}", nodes=1, max_steps=1)
            proc = e2e.ftctl("launch", *[partition if a == "debug" else a for a in args], check=False)
            errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
            assert proc.returncode != 0 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
            assert "the plan asks for --mem=2G a node" in errors[0] and limit in errors[0], errors[0]
            assert not slurm.run("squeue", "-h", "-p", partition).stdout  # nothing submitted
