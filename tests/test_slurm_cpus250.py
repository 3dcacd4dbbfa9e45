"""A CPU run's --cpus-per-task (helper 250, explore48 #6): it asked 2, so its one process a node trained on 2 threads
of a 64-core node (FTCTL_CPU_THREADS=auto takes the cores the job is given). Now CPU_CPUS_PER_TASK, and fewer where
the partition's nodes have fewer (as many nodes as the run's: a 2-node run on one 64-CPU and one 8-CPU node asks 8)."""

from __future__ import annotations

from ftctl.slurm import render as slurm_render
from tests.render_fixtures import fake_partition, prepared

CPU = dict(backend="slurm", method="lora", gpus="cpu", model_name_or_path="HuggingFaceTB/SmolLM2-135M-Instruct")


def _sinfo(*cpus: int) -> str:
    """sinfo's line for each node of partition cpu (the default), with that many CPUs."""
    return "".join(f"cpu*|c{i}|idle|{n}|256000|1-00:00:00|up|(null)|c{i}|1:00:00\n" for i, n in enumerate(cpus))


def _cpus(nodes: int) -> tuple[str, list[str]]:
    r = prepared(**CPU, nodes=nodes, output_dir="/o")
    line = next(x for x in r.text.splitlines() if x.startswith("#SBATCH --cpus-per-task="))
    return line.split("=")[1], [n for n in r.plan.notes if n.startswith("--cpus-per-task=")]


def test_a_cpu_run_asks_for_cores_to_train_on_bounded_by_the_partitions_nodes(tmp_path, monkeypatch):
    assert slurm_render.CPU_CPUS_PER_TASK == 16
    fake_partition(tmp_path, monkeypatch, _sinfo(64, 64))
    assert _cpus(2) == ("16", [])  # nodes with more: 16, not the whole node
    (tmp_path / "sinfo.out").write_text(_sinfo(64, 8))
    assert _cpus(1) == ("16", [])
    cpus, notes = _cpus(2)  # the second node has 8
    assert cpus == "8" and notes == [
        "--cpus-per-task=8: the CPUs of partition cpu's nodes (16 where a node has that many; -o cpus_per_task=N "
        "asks for another)"
    ]
    (tmp_path / "sinfo.out").write_text(_sinfo(2, 2))  # the e2e cluster's nodes
    assert _cpus(2)[0] == "2"
    r = prepared(["cpus_per_task=32"], **CPU, nodes=1, output_dir="/o")
    assert "#SBATCH --cpus-per-task=32\n" in r.text  # the run's own
