"""``ftctl launch --backend slurm`` end to end on the real 2-node Slurm cluster (tests/slurm_fixtures.py).

Everything goes through the command line and the unmodified rendered sbatch script; the only
switch is ``--gpus cpu`` (no GPUs requested, gloo). Each 2-node job takes both CPU nodes, so the
jobs of this module run one after the other:

    reference run   2 nodes, 16 steps, uninterrupted: completes on both nodes; status / logs -f
    preempted run   the same run, USR2 to the batch shell after its first checkpoint: it checkpoints,
                    is requeued, resumes and ends with the reference run's losses
    cancel          a running 2-node job is cancelled and its processes are gone
    hostile paths   model, data and output paths with quotes, $(...), ; and a newline; beside it, on the
                    same node at the same time, a second job with a rendezvous of its own
    errors          Slurm's refusals and ftctl's own: one line, non-zero exit, no traceback
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from ftctl.demo import demo_data_path
from ftctl.slurm.doctor import gib_text
from tests.slurm_e2e_fixtures import TRAIN_OVERRIDES, metrics, processes_mentioning, run_args, wait_until

STEPS = TRAIN_OVERRIDES["max_steps"]


@dataclass
class Finished:
    job: str
    run_dir: Path
    running_status: str  # `ftctl status` while it ran
    followed: str  # what `ftctl logs -f` printed
    follow_s: float  # how long `ftctl logs -f` ran
    final_status: str  # `ftctl status` after it ended


@pytest.fixture(scope="module")
def reference(e2e, tiny_model_dir):
    """The uninterrupted 2-node run, watched through `ftctl status` and `ftctl logs -f`."""
    run_dir = e2e.scratch / "reference"
    job = e2e.launch(*run_args(tiny_model_dir, run_dir, run_name="reference"))
    try:
        running = e2e.wait_status(job, "RUNNING", 60)
        start = time.monotonic()
        followed = e2e.ftctl("logs", "-f", job, timeout=240).stdout
        follow_s = time.monotonic() - start
        final = e2e.status_line(job)
    finally:
        e2e.scancel(job)
    return Finished(job, run_dir, running, followed, follow_s, final)


# ------------------------------------------------------------------------------ 1. a 2-node run
@pytest.mark.slow
def test_two_node_cpu_lora_run_completes_on_both_nodes(e2e, reference):
    job, run_dir = reference.job, reference.run_dir
    assert reference.final_status == f"{job} COMPLETED on node[1-2] exit 0"
    progress = e2e.ftctl("status", job).stdout.splitlines()[1]  # from the run's metrics.jsonl on the shared disk
    assert progress.startswith(f"step {STEPS}/{STEPS} (100%)  loss ") and "tok/s" in progress
    assert (run_dir / f"status.{job}.0").read_text() == "complete\n"
    log = (run_dir / f"slurm-{job}.out").read_text()
    assert f"ftctl: job {job} attempt 0 on node[1-2] (head node1)\n" in log
    assert f"complete: step {STEPS}, final loss " in log and "next:\n  ftctl chat " in log
    assert "ftctl: trainer exited with 0, status complete" in log
    # both nodes ran a task of the step (each slurmd says so in its own log) ...
    hosts = e2e.cluster.run("scontrol", "show", "hostnames", "node[1-2]").stdout.split()
    assert hosts == e2e.cluster.nodes == ["node1", "node2"]
    for node in hosts:
        slurmd_log = (e2e.cluster.base / "log" / f"slurmd-{node}.log").read_text()
        assert f"launch task StepId={job}.0 " in slurmd_log, node
    # ... and the trainer was one world of 2 ranks: 2 per rank x 2 ranks = 4 samples per step
    # (with 1 rank the epoch would be half; the trainer refuses a world size the plan does not have)
    plan = json.loads((run_dir / "spec.json").read_text())["plan"]
    assert (plan["world_size"], plan["per_device_train_batch_size"], plan["gradient_accumulation_steps"]) == (2, 2, 1)
    rows = metrics(run_dir)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    n_samples = len(json.loads(demo_data_path().read_text()))
    assert rows[-1]["epoch"] == pytest.approx(STEPS * 4 / n_samples)
    # the final adapter and the periodic checkpoints, each committed with its manifest
    assert (run_dir / "adapter_model.safetensors").stat().st_size > 0
    assert json.loads((run_dir / "adapter_config.json").read_text())["peft_type"] == "LORA"
    for step in (8, 12, 16):  # save_total_limit keeps the newest
        assert (run_dir / f"checkpoint-{step}" / "ftctl-manifest.json").is_file()


# ------------------------------------------------------------------------ 2. status, logs, cancel
@pytest.mark.slow
def test_status_and_logs_of_running_and_finished_jobs(e2e, reference):
    job, log = reference.job, reference.run_dir / f"slurm-{reference.job}.out"
    assert reference.running_status == f"{job} RUNNING on node[1-2]"
    # logs -f started while the job ran, printed the whole log and returned when the job ended
    assert reference.followed == log.read_text()
    assert reference.followed.startswith(f"ftctl: job {job} attempt 0 on node[1-2]")
    assert reference.followed.rstrip().endswith("status complete")
    # a finished job: status, logs, and cancel leaves it alone
    assert e2e.status_line(job) == f"{job} COMPLETED on node[1-2] exit 0"
    assert e2e.ftctl("logs", job).stdout == log.read_text()
    start = time.monotonic()
    assert e2e.ftctl("logs", "-f", job).stdout == log.read_text()
    assert time.monotonic() - start < 10
    out = e2e.ftctl("cancel", job).stdout
    assert out == f"job {job} had already ended: {job} COMPLETED on node[1-2] exit 0\n"
    # a job this FTCTL_HOME never launched
    proc = e2e.ftctl("status", "987654", check=False)
    assert proc.returncode != 0 and proc.stderr.startswith("error: No job '987654' was launched from here")


@pytest.mark.slow
def test_cancel_now_stops_a_running_two_node_job(e2e, tiny_model_dir):
    run_dir = e2e.scratch / "cancelled"
    job = e2e.launch(*run_args(tiny_model_dir, run_dir, run_name="cancelled", max_steps=5000))
    try:
        assert e2e.wait_status(job, "RUNNING", 60) == f"{job} RUNNING on node[1-2]"
        # torchrun and its worker on each node (their command lines name the run dir's spec.json)
        spec = str(run_dir / "spec.json")
        wait_until(lambda: len(processes_mentioning(spec)) >= 4, 60, "torchrun + trainer on 2 nodes")
        out = e2e.ftctl("cancel", "--now", job).stdout  # it waits for the job to end, then says what a relaunch does
        assert out.startswith(f"cancelled {job}: no checkpoint was saved as it stopped") and out.endswith(
            "the same `ftctl launch` starts it again: nothing was saved\n"
        )
        assert e2e.wait_finished(job, 30).startswith(f"{job} CANCELLED on node[1-2]")
        wait_until(lambda: not processes_mentioning(spec), 30, "every process of the job gone")
    finally:
        e2e.scancel(job)
    assert not list(run_dir.glob("checkpoint-*"))
    assert e2e.ftctl("cancel", job).stdout.startswith(f"job {job} had already ended: {job} CANCELLED")


@pytest.mark.slow
def test_cancel_saves_a_checkpoint_first_and_the_job_is_not_requeued(e2e, tiny_model_dir):
    """`ftctl cancel` of a training job: USR1 to its batch shell alone asks the trainer (both ranks) for a checkpoint
    at its next step, with no KillWait running (a plain scancel saved nothing where a step outlasted it: B4); the
    script then cancels its own job instead of requeueing it. The trainer's start record names the job, so `ftctl
    status` shows the job's own steps (P7)."""
    run_dir = e2e.scratch / "cancel-saves"
    job = e2e.launch(*run_args(tiny_model_dir, run_dir, run_name="cancel-saves", max_steps=5000, save_steps=1000))
    try:
        trained = run_dir / "metrics.jsonl"
        wait_until(lambda: trained.exists() and len(metrics(run_dir)) >= 3, 120, "three steps trained")
        proc = e2e.ftctl("cancel", job, timeout=180)
        final = e2e.wait_finished(job, 30)
        time.sleep(10)  # a requeued job starts again ~7 s after its requeue here (tests/slurm_fixtures.py)
        state = e2e.cluster.state(job)
    finally:
        e2e.scancel(job)
    log = (run_dir / f"slurm-{job}.out").read_text()
    stopped = int(log.split("stopping at step ", 1)[1].split(" ", 1)[0])
    assert proc.stdout == (
        f"cancelled {job}: its trainer saved a checkpoint as it stopped: the same `ftctl launch` resumes it from "
        f"checkpoint-{stopped}\n"
    ), (proc.stderr, log[-3000:])
    assert proc.stderr.startswith(f"asked job {job}'s trainer for a checkpoint at its next step boundary; waiting up")
    # a committed checkpoint at the step it reached, the only one (save_steps=1000)
    assert [p.name for p in run_dir.glob("checkpoint-*")] == [f"checkpoint-{stopped}"]
    assert (run_dir / f"checkpoint-{stopped}" / "ftctl-manifest.json").is_file()
    assert metrics(run_dir)[-1]["step"] == stopped
    assert (run_dir / f"status.{job}.0").read_text() == "preempted\n"
    # the batch shell alone got the request (torchrun and srun would have died of USR1); both ranks stopped together
    assert "ftctl: cancel asked (ftctl cancel): checkpointing, then the job ends, not requeued" in log
    for rank in (0, 1):
        assert f"[rank {rank}] ftctl.trainer.callbacks: stopping at step {stopped} (" in log
    assert "ftctl: trainer exited with 0, status preempted" in log
    assert f"cancelling job {job}, not requeueing it" in log and "requeueing job" not in log
    # the job is gone, not requeued
    assert final.startswith(f"{job} CANCELLED on node[1-2]") and "restarts" not in final, final
    assert state == "CANCELLED" and not (run_dir / f"status.{job}.1").exists()
    assert not processes_mentioning(str(run_dir / "spec.json"))
    # its trainer's start record names the job and its attempt; status shows its steps
    starts = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"start"' in line]
    assert [(r["slurm_job_id"], r["slurm_restart_count"]) for r in starts] == [(job, 0)]
    assert e2e.ftctl("status", job).stdout.splitlines()[1:] == [
        f"its trainer saved a checkpoint as it stopped: the same `ftctl launch` resumes it from checkpoint-{stopped}",
        f"step {stopped}/" + e2e.ftctl("status", job).stdout.split(f"step {stopped}/", 1)[1].strip(),
    ]


# ------------------------------------------------------------------------------- 3. preemption
@pytest.mark.slow
def test_usr2_checkpoints_requeues_resumes_and_ends_with_the_reference_loss(e2e, tiny_model_dir, reference):
    run_dir = e2e.scratch / "preempted"
    job = e2e.launch(*run_args(tiny_model_dir, run_dir, run_name="preempted"))
    seen: list[str] = []
    try:
        # once the first checkpoint is committed, the signal Slurm sends before a time limit or a
        # preemption (--signal=B:USR2@lead), sent now, to the batch shell only
        wait_until(lambda: (run_dir / "checkpoint-4" / "ftctl-manifest.json").is_file(), 120, "the first checkpoint")
        e2e.cluster.run("scancel", "--signal=USR2", "--batch", job)
        final = e2e.wait_finished(job, 180, seen)
    finally:
        e2e.scancel(job)
    log = (run_dir / f"slurm-{job}.out").read_text()
    assert final == f"{job} COMPLETED on node[1-2] exit 0, restarts 1", log
    assert any(line.startswith(f"{job} PENDING") and line.endswith("restarts 1") for line in seen), seen

    # the first attempt: the trap asked for a checkpoint, both ranks stopped at the same step
    stopped = int(log.split("stopped: step ", 1)[1].split(",")[0])
    assert 4 < stopped < STEPS
    first, second = log.split(f"ftctl: job {job} attempt 1 on node[1-2]", 1)  # --open-mode=append
    assert first.startswith(f"ftctl: job {job} attempt 0 on node[1-2]")
    assert "ftctl: USR2 (time limit or preemption): checkpointing" in first
    for rank in (0, 1):
        assert f"[rank {rank}] ftctl.trainer.callbacks: stopping at step {stopped} (" in first
    assert "ftctl: trainer exited with 0, status preempted" in first
    assert f"ftctl: requeueing job {job}" in first
    assert (run_dir / f"status.{job}.0").read_text() == "preempted\n"
    # the second attempt (SLURM_RESTART_COUNT=1) resumed from that checkpoint and finished
    assert f"resuming from {run_dir}/checkpoint-{stopped}" in second
    assert f"complete: step {STEPS}," in second and "status complete" in second
    assert f"step 1/{STEPS} " not in second
    assert (run_dir / f"status.{job}.1").read_text() == "complete\n"
    assert (run_dir / "adapter_model.safetensors").is_file()

    # every step trained once, and each loss is the uninterrupted run's (same seed, same path)
    rows, ref = metrics(run_dir), metrics(reference.run_dir)
    assert [r["step"] for r in rows] == [r["step"] for r in ref] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in ref], rel=1e-5)
    assert [r["lr"] for r in rows] == pytest.approx([r["lr"] for r in ref], rel=1e-6)


# ------------------------------------------------------------------------------ 4. hostile values
HOSTILE_DIR = "h 'q' \"dq\" $(touch PWNED) `touch PWNED`; touch PWNED & #x\nnewline"


@pytest.mark.slow
def test_hostile_paths_survive_a_real_sbatch_beside_another_job_on_its_node(e2e, tiny_model_dir):
    """A 1-node run with hostile paths, and at the same time on the same node a second run: each job's torchrun
    has a rendezvous port and id of its own (at one port, the second would join the first's TCPStore)."""
    base = e2e.scratch / HOSTILE_DIR
    base.mkdir()
    model = base / "model $(touch PWNED)"
    shutil.copytree(tiny_model_dir, model)
    data = base / "data;touch PWNED 'x'.json"
    shutil.copy(demo_data_path(), data)
    out = base / 'out "o" $(touch PWNED)'
    one_node = dict(nodes=1, max_steps=2, save_steps=2, cpus_per_task=1)
    job = e2e.launch(*run_args(model, out, data=data, **one_node), "--sbatch-arg=--nodelist=node1", cwd=base)
    beside = e2e.scratch / "beside"
    other = e2e.launch(
        *run_args(tiny_model_dir, beside, run_name="beside", **one_node), "--sbatch-arg=--nodelist=node1"
    )
    try:
        final = e2e.wait_finished(job, 120)
        other_final = e2e.wait_finished(other, 120)
    finally:
        e2e.scancel(job)
        e2e.scancel(other)
    log = e2e.ftctl("logs", job).stdout
    assert final == f"{job} COMPLETED on node1 exit 0", log
    assert (out / f"slurm-{job}.out").read_text() == log
    assert "complete: step 2, final loss" in log
    assert (out / f"status.{job}.0").read_text() == "complete\n"
    assert (out / "adapter_model.safetensors").is_file()
    spec = json.loads((out / "spec.json").read_text())["spec"]
    assert (spec["model_name_or_path"], spec["data_path"], spec["output_dir"]) == (str(model), str(data), str(out))
    assert not list(e2e.scratch.rglob("PWNED")) and not Path("PWNED").exists()
    # the second job ran on node1 while the first did (where the node has a CPU for each), and completed too
    assert other_final == f"{other} COMPLETED on node1 exit 0", (beside / f"slurm-{other}.out").read_text()
    if len(os.sched_getaffinity(0)) >= 2:  # the test cluster's nodes have this machine's CPUs
        (start, end), (other_start, other_end) = (
            e2e.cluster.run("squeue", "-h", "-t", "all", "-j", j, "-o", "%S|%e").stdout.strip().split("|")
            for j in (job, other)
        )
        assert other_start < end and start < other_end  # ISO times: they overlapped


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    """The refusal: non-zero exit, one line on stderr (beside the preflight's warnings: these runs train the demo's
    data), no traceback."""
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = [line for line in proc.stderr.splitlines() if not line.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


# ------------------------------------------------------------------------------- 5. errors
@pytest.mark.slow
def test_slurm_preflight_runs_across_both_nodes_and_stops_a_slow_network(e2e, tiny_model_dir):
    """``ftctl launch --preflight`` on the real 2-node cluster: the probe runs as a step of the job across
    both nodes, then training; with a floor no network reaches, the job stops before training."""
    job = e2e.launch(
        *run_args(tiny_model_dir, e2e.scratch / "preflight", run_name="preflight", max_steps=2), "--preflight"
    )
    try:
        assert " COMPLETED" in e2e.wait_finished(job, 180)
    finally:
        e2e.scancel(job)
    log = e2e.ftctl("logs", job).stdout
    assert "netcheck: 2 processes on 2 node(s) (gloo)" in log, log[-3000:]
    assert log.index("netcheck: 2 processes") < log.index("step 1/2")

    args = run_args(tiny_model_dir, e2e.scratch / "slow", run_name="slow", max_steps=2)
    job = e2e.launch(*args, "--preflight", "-o", "preflight_min_busbw_gbps=100000")
    try:
        assert " FAILED" in e2e.wait_finished(job, 180)
    finally:
        e2e.scancel(job)
    log = e2e.ftctl("logs", job).stdout
    assert "netcheck: FAILED: bus bandwidth" in log and "error: network preflight failed" in log, log[-3000:]
    assert "step 1/2" not in log


def test_refusals_are_one_line_with_slurms_words(e2e, tiny_model_dir):
    before = e2e.cluster.run("squeue", "-h", "-t", "all", "-o", "%i").stdout.split()

    def launch(*args, env=None, **overrides):
        output = e2e.scratch / f"refused-{len(seen)}"
        seen.append(output)
        return one_line_error(
            e2e.ftctl("launch", *run_args(tiny_model_dir, output, **overrides), *args, check=False, env=env)
        )

    seen: list[Path] = []
    # a value Slurm would parse itself: refused by ftctl before sbatch
    msg = launch("--partition", "de bug")
    assert msg.startswith("error: --partition 'de bug': Slurm reads #SBATCH values itself")
    # Slurm's own refusals, in its words, with what to do
    msg = launch("--partition", "nope")  # one the cluster lacks: refused before sbatch, as the dry run says it
    assert msg.startswith(
        "error: Slurm cannot run this job as asked: no partition 'nope' on this cluster (its partitions: debug, gpu): "
        "pass --partition NAME"
    )
    assert "ftctl doctor --backend slurm" in msg
    # accepted by sbatch but never started: refused by ftctl, which asks the cluster first
    msg = launch(nodes=3)
    assert msg.startswith(
        "error: Slurm cannot run this job as asked: 3 nodes asked for, but partition 'debug' has 2: "
        "Slurm would leave the job pending forever (PartitionConfig); ask for at most 2 (--nodes)"
    )
    msg = launch("--sbatch-arg=--gres=bogus:1")
    assert "sbatch refused job.sbatch: Invalid generic resource (gres) specification — " in msg
    msg = launch("--time", "abc")  # a form sbatch refuses ("Invalid --time specification"): said before it
    assert msg.startswith("error: time='abc': Slurm reads minutes, MM:SS, HH:MM:SS")
    msg = launch(env={**e2e.env, "PATH": str(e2e.scratch)})
    assert msg.startswith("error: `sbatch` is not on PATH")
    msg = launch(run_name="a b")
    assert msg.startswith("error: ") and "run_name 'a b'" in msg
    # no job was submitted (ended jobs may leave squeue meanwhile: Slurm forgets them after MinJobAge)
    assert set(e2e.cluster.run("squeue", "-h", "-t", "all", "-o", "%i").stdout.split()) <= set(before)


def test_doctor_through_the_cli(e2e):
    proc = e2e.ftctl("doctor", "--backend", "slurm", "--partition", "debug")
    lines = [re.sub(r"node(\d) \w+", r"node\1 STATE", line) for line in proc.stdout.splitlines()]
    # every node's RealMemory is the same share of this machine's (tests/slurm/start-cluster.sh), in MiB
    real_mb = re.search(r"RealMemory=(\d+)", e2e.cluster.run("scontrol", "show", "node", "node1").stdout)
    node_gib = gib_text(int(real_mb.group(1)))  # said in GiB, as --mem's G counts
    cpus = re.search(r"CPUTot=(\d+)", e2e.cluster.run("scontrol", "show", "node", "node1").stdout).group(1)
    assert lines == [
        f"sbatch: {shutil.which('sbatch', path=e2e.env['PATH'])}",
        "controller: reachable",
        f"partition debug (default): 2 node(s) [node1 STATE, node2 STATE], no GPUs, {cpus} CPUs a node, {node_gib} GiB "
        "RAM a node, time limit infinite",
        f"partition gpu: 1 node(s) [node3 STATE], gpu:tiny:2, {cpus} CPUs a node, {node_gib} GiB RAM a node, time limit "
        "infinite",
    ]
    proc = e2e.ftctl("doctor", "--backend", "slurm", "--partition", "debg", check=False)
    assert proc.returncode == 1
    assert "problem: unknown partition 'debg': this cluster has debug" in proc.stdout
    assert ". Did you mean 'debug'?" in proc.stdout
    proc = e2e.ftctl("doctor", "--backend", "slurm", "--partition", "gpu", "--gpus", "2xA100", check=False)
    assert proc.returncode == 1 and "has no A100 GPUs; its GPU types: tiny" in proc.stdout
    proc = e2e.ftctl("doctor", "--backend", "slurm", env={**e2e.env, "PATH": str(e2e.scratch)}, check=False)
    assert proc.returncode == 1 and "sbatch: not found on PATH" in proc.stdout
