"""A Slurm job killed for host memory, and what ftctl tells the user (helper 278).

Measured on the test cluster with memory enforced as university clusters do (slurm_memcg_cluster: CR_Core_Memory,
TaskPlugin=task/cgroup, ConstrainRAMSpace=yes; cgroup v1): a job over its --mem is killed by its cgroup's out-of-memory
killer, and slurmstepd writes "error: Detected 1 oom-kill event(s) in StepId=J.S" into its log. Where the trainer's
rank is the one killed (step J.0, ftctl's srun step: loading weights, tokenizing with many processes) the job ends
FAILED, not OUT_OF_MEMORY (the batch script exits 1; Slurm gives OUT_OF_MEMORY only for an oom-kill in the batch step
itself: a setup line). ftctl's torchrun read nothing of that and said "often the node's out-of-memory killer; a
relaunch resumes from the last checkpoint" (a relaunch fails the same way). Now the rank's line reads its cgroup
(failures.memory_cgroup: the kill counted, the limit) and names the limit and the fix, and `ftctl status` says the
host-memory line wherever slurmstepd's oom-kill line is in the log (failures.error_line). An OUT_OF_MEMORY job's state
line said "exit 0 signal 125" (Slurm's stand-in SIG_OOM): the signal is left out (ftctl/slurm/scheduler.py).

The rank is made to exceed --mem by a sitecustomize.py on PYTHONPATH (passed to the job by sbatch's --export=ALL)
that allocates and touches 3 GiB (over the plan's --mem=2G) in the torchrun worker of local rank 0 as it starts: a
real allocation, killed by the real cgroup.
"""

from __future__ import annotations

import re
import textwrap
import time
from pathlib import Path

from ftctl import failures
from tests.slurm_e2e_fixtures import E2E, run_args

V1_NONE = str(2**63 - 4096)  # cgroup v1's "no limit", as memory.limit_in_bytes says it
GiB = 2**30


# ------------------------------------------------------------------------------------ the kernel's files, read
def _v1(root: Path, path: str, limit: str = V1_NONE, kills: int = 0) -> None:
    d = root / "memory" / path.strip("/")
    d.mkdir(parents=True, exist_ok=True)
    (d / "memory.limit_in_bytes").write_text(f"{limit}\n")
    (d / "memory.oom_control").write_text(f"oom_kill_disable 0\nunder_oom 0\noom_kill {kills}\n")


def _v2(root: Path, path: str, limit: str = "max", kills: int = 0) -> None:
    d = root / path.strip("/")
    d.mkdir(parents=True, exist_ok=True)
    (d / "memory.max").write_text(f"{limit}\n")
    (d / "memory.events").write_text(f"low 0\nhigh 0\nmax 3\noom {kills}\noom_kill {kills}\n")


def _slurm_v1(tmp_path: Path, task_kills: int) -> tuple[str, str]:
    """Slurm 22.05's task/cgroup tree of a job's step 0 (limits on job and step, the processes in task_0; the node's
    cgroup above holds other jobs' kills); (proc_cgroup, root)."""
    root = tmp_path / "cg"
    _v1(root, "/", kills=0)
    _v1(root, "/slurm_node1", kills=7)  # earlier jobs' kills: not this one's
    _v1(root, "/slurm_node1/uid_0")
    _v1(root, "/slurm_node1/uid_0/job_5", limit=str(2 * GiB))
    _v1(root, "/slurm_node1/uid_0/job_5/step_0", limit=str(2 * GiB))
    _v1(root, "/slurm_node1/uid_0/job_5/step_0/task_0", kills=task_kills)
    proc = tmp_path / "cgroup"
    proc.write_text("9:name=systemd:/\n4:memory:/slurm_node1/uid_0/job_5/step_0/task_0\n3:cpuset:/\n0::/\n")
    return str(proc), str(root)


def test_the_kills_and_limit_of_a_jobs_memory_cgroup_are_read_up_to_the_cgroup_that_sets_the_limit(tmp_path):
    proc, root = _slurm_v1(tmp_path, task_kills=1)
    assert failures.memory_cgroup(proc, root) == (1, 2 * GiB)  # v1 counts the kill in the task's own cgroup
    proc, root = _slurm_v1(tmp_path / "none", task_kills=0)
    assert failures.memory_cgroup(proc, root) == (0, 2 * GiB)  # not the node cgroup's 7 of other jobs
    # a slurmd that sees a cgroup of its own mounted there (the test cluster's MEMCG=1): found by its last parts
    Path(proc).write_text("4:memory:/ftctl-slrm3n/slurm_node1/uid_0/job_5/step_0/task_0\n")
    assert failures.memory_cgroup(proc, root) == (0, 2 * GiB)
    # cgroup v2: the step's memory.max, its memory.events counting the kills below it
    v2, proc2 = tmp_path / "v2", tmp_path / "cgroup2"
    v2.mkdir()
    (v2 / "cgroup.controllers").write_text("cpu memory pids\n")
    _v2(v2, "/system.slice/slurmstepd.scope", kills=4)
    _v2(v2, "/system.slice/slurmstepd.scope/job_5", limit=str(GiB // 2), kills=1)
    _v2(v2, "/system.slice/slurmstepd.scope/job_5/step_0/user/task_0", kills=1)
    proc2.write_text("0::/system.slice/slurmstepd.scope/job_5/step_0/user/task_0\n")
    assert failures.memory_cgroup(str(proc2), str(v2)) == (1, GiB // 2)  # step_0, user: no files (not enabled)
    # no limit up to the root (a login shell, a local run): no job's limit, whatever was killed
    _v2(v2, "/user.slice/session-1.scope", kills=2)
    proc2.write_text("0::/user.slice/session-1.scope\n")
    assert failures.memory_cgroup(str(proc2), str(v2)) is None
    assert failures.memory_cgroup(str(tmp_path / "no-such"), root) is None


def test_a_rank_killed_by_its_jobs_memory_limit_is_said_to_be_out_of_host_memory_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "5")
    monkeypatch.setenv("SLURM_MEM_PER_NODE", "2048")
    proc, root = _slurm_v1(tmp_path, task_kills=1)
    line = failures.killed_line("rank 0 on node1", "SIGKILL", proc, root)
    assert line.startswith("error: rank 0 on node1 was killed by SIGKILL: out of host memory, over its limit of 2 GiB")
    assert "(the Slurm job's --mem=2048M); a relaunch fails the same way" in line
    assert "--sbatch-arg=--mem=SIZE" in line and "-o dataset_num_proc=1" in line
    assert "a relaunch resumes" not in line
    # no kill counted (a kill -9, scancel's after KillWait): the old line, a relaunch resumes
    proc, root = _slurm_v1(tmp_path / "kill9", task_kills=0)
    assert failures.killed_line("rank 0 on node1", "SIGKILL", proc, root).endswith(
        "(often the node's out-of-memory killer); a relaunch resumes from the last checkpoint"
    )
    # outside Slurm (a container's limit): its own words
    monkeypatch.delenv("SLURM_JOB_ID")
    proc, root = _slurm_v1(tmp_path / "docker", task_kills=1)
    line = failures.killed_line("rank 1 on host", "SIGKILL", proc, root)
    assert "over its limit of 2 GiB (its cgroup's)" in line and "give its container or job more memory" in line


# slurmstepd's own lines, as Slurm 22.05 wrote them in this test cluster's logs (and older / v2 forms)
STEPD = "slurmstepd-node1: error: Detected 1 oom-kill event(s) in StepId={step}. Some of your processes may have been"
STEPD += " killed by the cgroup out-of-memory handler."


def test_status_says_out_of_host_memory_where_slurmstepd_logged_an_oom_kill():
    attempt = failures.ATTEMPT_LINE.format(job=2, attempt=0) + " on node1 (head node1)"
    old_rank = (
        "error: rank 0 on node1 was killed by SIGKILL (often the node's out-of-memory killer); a relaunch resumes"
    )
    srun = "srun: error: node1: task 0: Out Of Memory"
    log = f"{attempt}\n{old_rank} from the last checkpoint\n{STEPD.format(step='2.0')}\n{srun}\n"
    said = failures.error_line(log)  # an older ftctl's rank line (or a rank killed under another launcher)
    assert said.startswith(
        "step 2.0 ran out of host memory: Slurm's cgroup killed a process of it over the job's --mem"
    )
    assert "a relaunch fails the same way: ask for more with --sbatch-arg=--mem=SIZE" in said
    # a rank's line that read its cgroup says more (the limit): kept
    new_rank = "error: rank 0 on node1 was killed by SIGKILL: out of host memory, over its limit of 2 GiB (...)"
    assert failures.error_line(log.replace(f"{old_rank} from the last checkpoint", new_rank)) == new_rank[7:]
    # the batch step's (a setup line): the script's own lines to change; Slurm 20.11's and cgroup v2's words
    setup = "error: a setup line failed: python3 hog.py (exit 137): not training; fix -o setup=...\n"
    for stepd in (
        STEPD.format(step="3.batch"),
        "slurmstepd: error: Detected 2 oom-kill event(s) in step 3.batch cgroup. Some of your processes may have",
        "slurmstepd-n1: error: Detected 1 oom_kill event in StepId=3.batch. Some of the step tasks have been OOM",
    ):
        said = failures.error_line(f"{attempt}\n{setup}{stepd}\n")
        assert said.startswith("step 3.batch ran out of host memory") and said.endswith("own lines (-o setup)"), said
    assert failures.error_line(f"{STEPD.format(step='3.batch')}\n").startswith("step 3.batch ran out")  # no error line
    # an earlier attempt's kill is history
    again = failures.ATTEMPT_LINE.format(job=2, attempt=1) + " on node1 (head node1)\nerror: No data at /x.json\n"
    assert failures.error_line(log + again) == "No data at /x.json"


def test_an_out_of_memory_jobs_state_line_leaves_out_slurms_stand_in_signal():
    """Slurm ends a job whose batch step was oom-killed OUT_OF_MEMORY with ExitCode=0:125 (its SIG_OOM, 253, in a
    wait status' seven bits): no signal of the kernel's, "signal 125" said nothing (task-278-extra.patch)."""
    from ftctl.slurm.scheduler import JobStatus

    assert (
        JobStatus("3", "OUT_OF_MEMORY", "node1", exit_code=0, signal=125).describe()
        == "3 OUT_OF_MEMORY on node1 exit 0"
    )
    assert JobStatus("4", "FAILED", "node1", exit_code=0, signal=9).describe() == "4 FAILED on node1 exit 0 signal 9"


# ------------------------------------------------------------------------------------ the real cluster
HOG_MIB = 3072  # over the plan's --mem (2G) of the tiny run
HOG = """\
import os
if os.environ.get("LOCAL_RANK") == "0" and os.environ.get("FTCTL_TEST_HOG_MIB"):  # torchrun's worker, local rank 0
    _hog = bytearray(int(os.environ["FTCTL_TEST_HOG_MIB"]) << 20)
    _hog[::4096] = bytes(len(_hog[::4096]))  # touched: each page is the job's
"""


def _mem_mib(sbatch: Path) -> int:
    size, unit = re.search(r"^#SBATCH --mem=(\d+)([GM])$", sbatch.read_text(), re.M).groups()
    return int(size) * (1024 if unit == "G" else 1)


def test_jobs_over_their_mem_are_killed_by_slurm_and_status_says_out_of_host_memory(
    slurm_memcg_cluster, tiny_model_dir, tmp_path_factory
):
    cluster = slurm_memcg_cluster
    scratch = cluster.scratch / f"oom278-{time.time_ns()}"
    site = scratch / "site"
    site.mkdir(parents=True)
    (site / "sitecustomize.py").write_text(textwrap.dedent(HOG))
    home = tmp_path_factory.mktemp("ftctl-home")
    env = {**cluster.env, "FTCTL_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    env.pop("FTCTL_DEBUG", None)
    e2e = E2E(cluster=cluster, env=env, scratch=scratch)

    # 1. the trainer's rank over --mem: step J.0 killed, the job FAILED
    ranks = scratch / "rank"
    args = run_args(tiny_model_dir, ranks, nodes=1, max_steps=2)
    hog_env = {**env, "PYTHONPATH": str(site), "FTCTL_TEST_HOG_MIB": str(HOG_MIB)}
    rank_job = e2e.ftctl("launch", *args, env=hog_env).stdout.split("submitted Slurm job ")[1].split()[0]
    # 2. a setup line over --mem: the batch step killed, the job OUT_OF_MEMORY
    setup = scratch / "setup"
    hog = f"python3 -c 'b = bytearray({HOG_MIB} << 20); b[::4096] = bytes(len(b[::4096]))'"
    setup_job = e2e.launch(*run_args(tiny_model_dir, setup, nodes=1, max_steps=2), "--setup", hog)
    mem = _mem_mib(ranks / "job.sbatch")  # the plan's --mem (2G: training the tiny model on CPU)
    assert _mem_mib(setup / "job.sbatch") == mem and mem + 512 <= HOG_MIB

    assert cluster.wait_done(rank_job, timeout=90) == "FAILED"
    assert cluster.wait_done(setup_job, timeout=90) == "OUT_OF_MEMORY"
    log = (ranks / f"slurm-{rank_job}.out").read_text()
    assert f"Detected 1 oom-kill event(s) in StepId={rank_job}.0" in log, log  # Slurm's own, in the job's log
    status = e2e.ftctl("status", rank_job).stdout.splitlines()
    assert re.fullmatch(rf"{rank_job} FAILED on (node\d) exit 1", status[0]), status
    node = status[0].split()[3]
    size = f"{mem // 1024} GiB" if mem % 1024 == 0 else f"{mem / 1024:.1f} GiB"
    assert status[1] == (
        f"error: rank 0 on {node} was killed by SIGKILL: out of host memory, over its "
        f"limit of {size} (the Slurm job's --mem={mem}M); a relaunch fails the same way: ask for more with "
        "--sbatch-arg=--mem=SIZE (up to a node's RAM: `ftctl doctor --backend slurm`), or hold less in RAM: fewer "
        "processes tokenizing the data (-o dataset_num_proc=1)"
    ), status

    log = (setup / f"slurm-{setup_job}.out").read_text()
    assert f"StepId={setup_job}.batch" in log, log
    status = e2e.ftctl("status", setup_job).stdout.splitlines()
    assert re.fullmatch(rf"{setup_job} OUT_OF_MEMORY on node\d exit 0", status[0]), status  # not Slurm's "signal 125"
    assert status[1] == (
        f"error: step {setup_job}.batch ran out of host memory: Slurm's cgroup killed a process of it over the job's "
        "--mem; a relaunch fails the same way: ask for more with --sbatch-arg=--mem=SIZE (up to a node's RAM: `ftctl "
        "doctor --backend slurm`), or hold less in the job script's own lines (-o setup)"
    ), status


def test_slurm_itself_kills_a_job_over_its_mem_on_the_memcg_cluster(slurm_memcg_cluster):
    """Slurm's own behaviour the above rests on, without ftctl: a plain batch job over --mem ends OUT_OF_MEMORY, its
    log holds slurmstepd's oom-kill line, and the job's memory cgroup had --mem as its limit."""
    cluster = slurm_memcg_cluster
    out = cluster.scratch / f"plain-{time.time_ns()}.out"
    script = "grep memory /proc/self/cgroup; python3 -c 'b = bytearray(1 << 30); b[::4096] = bytes(len(b[::4096]))'"
    job = cluster.run("sbatch", "--parsable", "--mem=200M", "-o", str(out), "--wrap", script).stdout.strip()
    assert cluster.wait_done(job, timeout=30) == "OUT_OF_MEMORY"
    text = out.read_text()
    assert f"/job_{job}/step_batch/" in text and f"Detected 1 oom-kill event(s) in StepId={job}.batch" in text, text
    slurmd = (cluster.base / "log" / "slurmd-node1.log").read_text() + (
        cluster.base / "log" / "slurmd-node2.log"
    ).read_text()
    assert f"[{job}.batch] task/cgroup: _memcg_initialize: job: alloc=200MB mem.limit=200MB" in slurmd
