"""--mem is never below what the partition gives a job that asks for none (helper 250, explore48 #10): a qlora job
of 8 CPUs asked --mem=12G (its load's estimate) where DefMemPerCPU=4G gave the same job 32G without --mem, and the
plan does not count the rows a large dataset holds in RAM."""

from __future__ import annotations

from tests.render_fixtures import fake_partition, prepared

FLAGS = dict(backend="slurm", method="qlora", gpus="1xA100", model_name_or_path="org/m", model_params="8b")
NODE = "|g1|idle|64|512000|1-00:00:00|up|gpu:a100:8(S:0-1)|g1|1-00:00:00\n"
SETTINGS = {  # scontrol show partition --oneliner, as Slurm 22.05 says them
    "gpu": "Default=YES DefMemPerCPU=4096 MaxMemPerNode=UNLIMITED",
    "few": "Default=NO DefMemPerCPU=1024 MaxMemPerNode=UNLIMITED",
    "all": "Default=NO DefMemPerNode=UNLIMITED MaxMemPerNode=UNLIMITED",
    "node": "Default=NO DefMemPerNode=65536 MaxMemPerNode=UNLIMITED",
}


def _mem(partition=None, more=()) -> tuple[str, list[str]]:
    r = prepared(list(more), **FLAGS, partition=partition, output_dir="/o")
    asked = [x.removeprefix("#SBATCH --mem=") for x in r.text.splitlines() if x.startswith("#SBATCH --mem")]
    return (asked or [""])[0], [n for n in r.plan.notes if n.startswith("--mem=")]


def test_mem_is_at_least_the_partitions_default_for_the_jobs_cpus(tmp_path, monkeypatch):
    where = fake_partition(tmp_path, monkeypatch, "".join(f"{p}{'*' * (p == 'gpu')}{NODE}" for p in SETTINGS))
    lines = "".join(f"PartitionName={p} {said} State=UP\n" for p, said in SETTINGS.items())
    (where / "scontrol.out").write_text(lines)
    (where / "bin" / "scontrol").write_text(
        '#!/bin/sh\ncase "$1" in ping) echo "Slurmctld(primary) at ctl is UP";; '
        f"show) cat {where / 'scontrol.out'};; esac\n"
    )
    asked, notes = _mem()  # the default partition (gpu): 4096 MiB x 8 CPUs
    assert asked == "32G" and notes[0].startswith(
        "--mem=32G a node: partition gpu's DefMemPerCPU=4096 (MiB) x 8 CPUs, what sbatch gives without --mem, above "
        "the plan's 12G: loading the model: "
    )
    assert _mem("few")[0] == "12G" and "DefMemPerCPU" not in _mem("few")[1][0]  # 8 GiB: the plan's is more
    assert _mem("all")[0] == "12G"  # all of a node's by default: not asked for
    assert _mem("node")[0] == "64G"
    assert _mem("gpu,few")[0] == "32G"  # of a list, the most: Slurm gives the default of the partition it starts in
    assert _mem(more=["cpus_per_task=2"])[0] == "12G"  # 2 CPUs: 8 GiB
    assert _mem(more=["sbatch_args=--mem=10G"])[0] == "10G"  # the run's own
