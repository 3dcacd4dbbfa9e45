"""ftctl.slurm.scheduler and ftctl.slurm.doctor against a real 2-node Slurm 22.05 cluster
(tests/slurm_fixtures.py), plus what real sbatch does with hostile #SBATCH values."""

from __future__ import annotations

import io
import shlex
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from ftctl.errors import FtctlError
from ftctl.slurm import scheduler
from ftctl.slurm.doctor import doctor, gib_text, parse_gres

HOSTILE = [
    "a b",
    "it's",
    'say "hi"',
    "$(touch {pwned})",
    "`touch {pwned}`",
    "a;touch {pwned}",
    "back\\slash",
    "hash#tag",
    "tab\there",
    "$HOME",
    "-dash",
    ":colon",
]


def sbatch_quote(value: str) -> str:
    """Quote a value for Slurm's #SBATCH parser (not bash's): double quotes, with backslash and
    double quote escaped by a backslash. Newlines cannot be expressed at all."""
    if "\n" in value or "\r" in value:
        raise ValueError("an #SBATCH value cannot hold a newline")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_script(path: Path, sbatch: list[str], body: str) -> Path:
    lines = ["#!/bin/bash", *(f"#SBATCH {line}" for line in sbatch), textwrap.dedent(body)]
    path.write_text("\n".join(lines) + "\n")
    return path


def job_name(cluster, job_id: str) -> str:
    return cluster.run("squeue", "-h", "-t", "all", "-j", job_id, "-o", "%j").stdout.rstrip("\n")


# ------------------------------------------------------------------------------- submit / status
def test_two_nodes_run_srun_and_the_venv_python(slurm, tmp_path):
    script = write_script(
        tmp_path / "who.sbatch",
        ["--nodes=2", "--ntasks-per-node=1", "--output=who-%j.out"],
        """
        srun hostname
        srun python -c 'import ftctl, socket, sys; print("py", socket.gethostname(), sys.prefix)'
        """,
    )
    job = scheduler.submit(script, cwd=tmp_path)
    assert job.isdigit()
    assert slurm.wait_done(job, 60) == "COMPLETED"
    out = (tmp_path / f"who-{job}.out").read_text()
    assert sorted(line for line in out.splitlines() if line.startswith("node")) == slurm.nodes
    py = sorted(line.split()[1:] for line in out.splitlines() if line.startswith("py "))
    assert py == [[node, sys.prefix] for node in slurm.nodes]
    st = scheduler.status(job)
    assert (st.state, st.nodes, st.exit_code, st.finished) == ("COMPLETED", "node[1-2]", 0, True)
    # when it ran, in this host's clock (`ftctl status` tells the job's own trainer steps from another job's by it)
    assert st.started is not None and st.ended is not None and time.time() - 120 < st.started <= st.ended <= time.time()


def test_status_logs_and_cancel_of_a_running_job(slurm, tmp_path):
    script = write_script(
        tmp_path / "sleep.sbatch",
        ["--job-name=sleeper"],
        """
        echo "hello from $(hostname)"
        sleep 300
        """,
    )
    job = scheduler.submit(script, cwd=tmp_path)
    try:
        slurm.wait_state(job, "RUNNING", 30)
        st = scheduler.status(job)
        assert (st.state, st.finished, st.exit_code, st.restarts) == ("RUNNING", False, None, 0)
        assert st.nodes in slurm.nodes
        assert scheduler.stdout_path(job) == tmp_path / f"slurm-{job}.out"
        log = tmp_path / f"slurm-{job}.out"
        for _ in range(50):  # RUNNING comes a moment before the file and its first line
            if log.exists() and log.stat().st_size:
                break
            time.sleep(0.1)
        buf = io.StringIO()
        assert scheduler.logs(job, out=buf) == tmp_path / f"slurm-{job}.out"
        assert buf.getvalue() == f"hello from {st.nodes}\n"
        before = scheduler.cancel(job)
        assert before.state == "RUNNING"
    finally:
        slurm.run("scancel", job, check=False)
    assert slurm.wait_done(job, 30) == "CANCELLED"
    st = scheduler.status(job)
    assert st.state == "CANCELLED" and st.finished and "CANCELLED" in st.describe()
    # cancelling a finished job leaves it alone; following a finished job's log returns at once
    assert scheduler.cancel(job).state == "CANCELLED"
    buf = io.StringIO()
    start = time.monotonic()
    scheduler.logs(job, follow=True, out=buf)
    assert time.monotonic() - start < 5 and buf.getvalue().startswith("hello from")


def test_logs_follow_prints_until_the_job_ends(slurm, tmp_path):
    script = write_script(
        tmp_path / "count.sbatch",
        ["--output=count.log"],
        """
        for i in 1 2 3 4 5; do echo "line $i"; sleep 0.5; done
        exit 3
        """,
    )
    job = scheduler.submit(script, cwd=tmp_path)
    buf = io.StringIO()
    path = scheduler.logs(job, follow=True, out=buf, poll_s=0.2)
    assert path == tmp_path / "count.log"
    assert buf.getvalue() == "".join(f"line {i}\n" for i in range(1, 6))
    st = scheduler.status(job)
    assert (st.state, st.exit_code, st.reason) == ("FAILED", 3, "NonZeroExitCode")
    assert "exit 3" in st.describe()


def test_logs_follow_of_a_pending_job_says_it_waits(slurm, tmp_path, capsys):
    """Following a job still in the queue printed nothing at all until it started: now one line says why it
    waits, and it ends when the job does (cancelled here before it ever starts)."""
    script = write_script(tmp_path / "later.sbatch", ["--output=later.log", "--begin=now+1hour"], "echo never\n")
    job = scheduler.submit(script, cwd=tmp_path)
    follower = threading.Thread(target=scheduler.logs, args=(job,), kwargs=dict(follow=True, poll_s=0.2))
    follower.start()
    try:
        deadline, said = time.monotonic() + 30, ""
        while "its log follows" not in said and time.monotonic() < deadline:
            time.sleep(0.2)
            said += capsys.readouterr().err
        assert f"ftctl: job {job} PENDING (BeginTime): its log follows once it starts" in said, said
    finally:
        slurm.run("scancel", job, check=False)
    follower.join(30)
    assert not follower.is_alive()
    assert f"ftctl: job {job} CANCELLED" in capsys.readouterr().err  # and it said the job ended without output


def test_status_of_unknown_and_malformed_job_ids(slurm):
    with pytest.raises(FtctlError, match="no record of job 987654"):
        scheduler.status("987654")
    with pytest.raises(FtctlError, match="not a Slurm job id"):
        scheduler.status("12; rm -rf /")
    with pytest.raises(FtctlError, match="no record"):
        scheduler.cancel("987654")


def test_a_job_slurm_forgot_is_said_from_its_scripts_status_files(slurm, tmp_path):
    """On a cluster without accounting a job is forgotten MinJobAge (300 s) after it ends: `ftctl status` then said
    "Slurm has no record of job N ... check the job id" of a job that completed, and `ftctl logs -f` printed its log
    and failed the same way. The job's script wrote how each attempt ended in the run directory."""
    import io

    from ftctl.backend import JobRef, JobState
    from ftctl.slurm.backend import SlurmBackend

    ref = JobRef(backend="slurm", job_id="987654", run_dir=str(tmp_path), name="r", output=str(tmp_path))
    with pytest.raises(FtctlError, match="no record of job 987654"):  # nothing written: a wrong id, as before
        SlurmBackend().status(ref)
    (tmp_path / "status.987654.0").write_text("preempted\n")  # requeued once, then it finished
    (tmp_path / "status.987654.1").write_text("complete\n")
    said = SlurmBackend().status(ref)
    assert said.state == JobState.SUCCEEDED and said.text.startswith("987654 complete (attempt 1, as its script")
    log = tmp_path / "slurm-987654.out"
    log.write_text("ftctl: trainer exited with 0, status complete\n")
    out = io.StringIO()
    assert scheduler.logs("987654", follow=True, path=log, out=out, poll_s=0.01) == log
    assert out.getvalue() == log.read_text()


def test_sacct_fallback_reads_the_jobcomp_file(slurm, tmp_path):
    """When squeue no longer knows a job (MinJobAge passed), status asks sacct; without slurmdbd
    plain sacct fails and `sacct -c` reads the jobcomp file. Called directly here: the test
    cluster keeps finished jobs for 600 s."""
    script = write_script(tmp_path / "ok.sbatch", ["--job-name=plainname"], "exit 0")
    job = scheduler.submit(script, cwd=tmp_path)
    slurm.wait_done(job, 30)
    plain = slurm.run("sacct", "-j", job, check=False)
    assert plain.returncode != 0 and "accounting storage is disabled" in plain.stderr
    st = scheduler._sacct_status(job, None)
    assert (st.state, st.exit_code, st.source) == ("COMPLETED", 0, "sacct -c")
    # a job cancelled before it started: the jobcomp file's NodeList is "(null)", which was said as its nodes
    later = scheduler.submit(write_script(tmp_path / "later.sbatch", ["--begin=now+1hour"], "exit 0"), cwd=tmp_path)
    slurm.run("scancel", later)
    slurm.wait_done(later, 30)
    st = scheduler._sacct_status(later, None)
    assert st.state == "CANCELLED" and " on " not in st.describe(), st.describe()


# ---------------------------------------------------------------------------- hostile values
def test_shlex_quote_is_not_enough_for_sbatch(slurm, tmp_path):
    """Slurm parses #SBATCH lines itself: a backslash escapes the next character even inside
    single quotes, so shlex.quote loses backslashes; a newline ends the line, leaving an
    unmatched quote that sbatch refuses (fatal) — nothing is submitted."""
    quoted = shlex.quote("back\\slash")  # 'back\slash'
    script = write_script(tmp_path / "b.sbatch", ["--hold", f"--job-name={quoted}"], "true")
    job = scheduler.submit(script, cwd=tmp_path)
    slurm.run("scancel", job)
    assert job_name(slurm, job) == "backslash"  # the backslash is gone

    pwned = tmp_path / "pwned"
    value = f"x\ntouch {pwned} #"
    script = write_script(tmp_path / "n.sbatch", ["--hold", f"--job-name={shlex.quote(value)}"], "true")
    with pytest.raises(FtctlError) as err:
        scheduler.submit(script, cwd=tmp_path)
    assert "Unmatched `'`" in str(err.value) and "\n" not in str(err.value)
    # unquoted, the newline would end the #SBATCH block and run the rest as a shell line
    script = write_script(tmp_path / "u.sbatch", [f"--job-name={value}"], "true")
    job = scheduler.submit(script, cwd=tmp_path)
    slurm.wait_done(job, 30)
    assert pwned.exists(), "a newline in an unquoted #SBATCH value injects a shell line"


def test_hostile_names_and_paths_survive_a_real_sbatch(slurm, tmp_path):
    pwned = tmp_path / "pwned"
    values = [v.format(pwned=pwned) for v in HOSTILE]
    jobs = []
    for i, value in enumerate(values):
        script = write_script(tmp_path / f"h{i}.sbatch", ["--hold", f"--job-name={sbatch_quote(value)}"], "true")
        jobs.append(scheduler.submit(script, cwd=tmp_path))
    slurm.run("scancel", *jobs)
    assert [job_name(slurm, job) for job in jobs] == values
    # one job that runs: hostile run directory (with a '%', doubled for Slurm's filename
    # patterns), output file and job name; the script reads them back
    run_dir = tmp_path / "run 'q' \"dq\" $(touch pwned); `touch pwned` #h 100%"
    run_dir.mkdir()
    name = "n 'q' \"dq\" $(touch pwned); `touch pwned` \\ #h"
    output = str(run_dir).replace("%", "%%") + "/slurm-%j.out"
    script = write_script(
        run_dir / "job.sbatch",
        [
            f"--job-name={sbatch_quote(name)}",
            f"--output={sbatch_quote(output)}",
            f"--chdir={sbatch_quote(str(run_dir))}",
        ],
        'printf "%s\\n" "$SLURM_JOB_NAME" "$PWD"',
    )
    job = scheduler.submit(script, cwd=tmp_path)
    assert slurm.wait_done(job, 30) == "COMPLETED"
    log = run_dir / f"slurm-{job}.out"
    assert log.read_text() == f"{name}\n{run_dir}\n"
    assert scheduler.stdout_path(job) == log
    assert not list(tmp_path.rglob("pwned"))


# ------------------------------------------------------------------------------------- errors
def one_line_error(script: Path, cwd: Path, env=None) -> str:
    with pytest.raises(FtctlError) as err:
        scheduler.submit(script, cwd=cwd, env=env)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_sbatch_errors_are_one_line_with_slurms_words(slurm, tmp_path):
    script = write_script(tmp_path / "p.sbatch", ["--partition=nope"], "true")
    msg = one_line_error(script, tmp_path)
    assert msg.startswith(
        "sbatch refused p.sbatch: invalid partition specified: nope; "
        "Batch job submission failed: Invalid partition name specified"
    )
    assert "ftctl doctor --backend slurm" in msg

    script = write_script(tmp_path / "g.sbatch", ["--gpus-per-node=2"], "true")  # debug: no GPUs
    msg = one_line_error(script, tmp_path)
    assert (
        msg.startswith(
            "sbatch refused g.sbatch: Batch job submission failed: Requested node configuration is not available — "
        )
        and "--gpus cpu" in msg
    )

    script = write_script(tmp_path / "b.sbatch", ["--gres=bogus:1"], "true")
    msg = one_line_error(script, tmp_path)
    assert "Invalid generic resource (gres) specification" in msg and "--gpus cpu" in msg

    script = write_script(tmp_path / "t.sbatch", ["--time=abc"], "true")
    assert "Invalid --time specification" in one_line_error(script, tmp_path)

    noshebang = tmp_path / "noshebang.sbatch"
    noshebang.write_text("echo hi\n")
    msg = one_line_error(noshebang, tmp_path)
    assert "This does not look like a batch script. The first line must start with #!" in msg

    assert "does not exist" in one_line_error(tmp_path / "missing.sbatch", tmp_path)


def test_sbatch_missing_or_unreachable(slurm, tmp_path):
    script = write_script(tmp_path / "ok.sbatch", [], "true")
    env = {**slurm.env, "PATH": str(tmp_path)}
    assert "`sbatch` is not on PATH" in one_line_error(script, tmp_path, env)

    env = {**slurm.env, "SLURM_CONF": str(tmp_path / "nope.conf")}
    start = time.monotonic()
    assert "SLURM_CONF=" in one_line_error(script, tmp_path, env)
    assert time.monotonic() - start < 1  # sbatch itself would retry for 60 s

    # no SLURM_CONF and no slurm.conf: sbatch finds no controller (it looks for one in DNS)
    env = {k: v for k, v in slurm.env.items() if k != "SLURM_CONF"}
    msg = one_line_error(script, tmp_path, env)
    assert msg.startswith("sbatch could not reach the Slurm controller (Could not establish a configuration source; ")
    assert "SLURM_CONF is not set): point SLURM_CONF at the cluster's slurm.conf" in msg

    # munge unreachable: the same cluster's config with the munge socket moved away
    conf = tmp_path / "slurm.conf"
    conf.write_text(
        "\n".join(
            f"AuthInfo=socket={tmp_path}/no-munge.socket" if line.startswith("AuthInfo=") else line
            for line in Path(slurm.conf).read_text().splitlines()
        )
        + "\n"
    )
    msg = one_line_error(script, tmp_path, {**slurm.env, "SLURM_CONF": str(conf)})
    assert "Munge encode failed" in msg and "Protocol authentication error" in msg
    assert "munge daemon is not running" in msg


# ------------------------------------------------------------------------------------- doctor
def test_doctor_on_the_real_cluster(slurm):
    report = doctor()
    assert report.ok and report.reachable and report.sbatch.endswith("/sbatch")
    debug, gpu = report.partition("debug"), report.partition("gpu")
    assert debug.default and [n.name for n in debug.nodes] == slurm.nodes
    assert all(n.gpus == {} and n.usable for n in debug.nodes)
    assert [n.name for n in gpu.nodes] == slurm.gpu_nodes and gpu.nodes[0].gpus == {"tiny": 2}
    text = report.format()
    assert "partition debug (default): 2 node(s) [node1 idle, node2 idle], no GPUs" in text
    assert "partition gpu: 1 node(s) [node3 idle], gpu:tiny:2" in text

    assert doctor(nodes=2).ok
    assert doctor(partition="gpu", gpus_per_node=2, gpu_type="tiny").ok
    assert doctor(partition="gpu", gpus_per_node=1, gpu_type="TINY").ok
    # the type a request names, as the partition's GRES spells it (launch asks for it: SlurmBackend.check)
    assert doctor(partition="gpu", gpus_per_node=1, gpu_type="TINY").gres_type == "tiny"
    # CPUs a task above every node's (sinfo %c); a time limit within the partition's (infinite)
    cpus = gpu.nodes[0].cpus
    assert cpus > 0 and doctor(partition="gpu", cpus_per_task=cpus, time="30-00:00:00").ok
    many = doctor(partition="gpu", cpus_per_task=cpus + 1)
    assert many.never_runs == many.problems and f"use -o cpus_per_task={cpus}" in many.problems[0]

    problems = doctor(partition="debg").problems
    assert problems == ["unknown partition 'debg': this cluster has debug, gpu. Did you mean 'debug'?"]
    (problem,) = doctor(gpus_per_node=1).problems
    assert "partition 'debug' has no GPUs" in problem and "gpu (gpu:tiny:2)" in problem
    (problem,) = doctor(partition="gpu", gpus_per_node=8).problems
    assert "8 GPUs per node asked for, but partition 'gpu' has at most 2" in problem
    assert problem.endswith(": --gpus 4x2xTYPE spreads them over nodes")  # the form that would run
    (problem,) = doctor(partition="gpu", gpus_per_node=1, gpu_type="A100").problems
    assert "has no A100 GPUs; its GPU types: tiny" in problem
    (problem,) = doctor(nodes=3).problems
    assert "3 nodes asked for, but partition 'debug' has 2" in problem
    (problem,) = doctor(partition="gpu", nodes=2, gpus_per_node=1).problems
    assert "2 nodes asked for, but partition 'gpu' has 1" in problem
    with pytest.raises(FtctlError, match="cannot run the request: 2 nodes asked for"):
        doctor(partition="gpu", nodes=2, gpus_per_node=1).raise_for_problems()

    # an offload plan's --mem (slurm/render.memory_request_gb) above every node of the partition
    node_gb = gpu.nodes[0].memory_mb * 2**20 / 1e9
    assert doctor(partition="gpu", gpus_per_node=2, memory_gb=node_gb - 0.5).ok
    big = doctor(partition="gpu", gpus_per_node=2, memory_gb=node_gb + 100)
    (problem,) = big.problems
    assert big.never_runs == [problem] and f"has at most {gpu.nodes[0].memory_mb // 1024} GiB a node" in problem
    assert f"-o host_memory_gb={int(node_gb)} (in GB" in problem
    # in GiB, as --mem's G and Slurm's RealMemory (MiB) count it; -o cpus_per_task takes the CPUs
    said = f"gpu:tiny:2, {gpu.nodes[0].cpus} CPUs a node, {gib_text(gpu.nodes[0].memory_mb)} GiB RAM a node,"
    assert said in report.format()


def test_what_doctor_accepts_runs_and_what_it_flags_fails(slurm, tmp_path):
    """The stand-in GPUs are real gres to Slurm: a job asking for them gets CUDA_VISIBLE_DEVICES;
    the same request on the CPU partition is refused by sbatch, as doctor says."""
    report = doctor(partition="gpu", gpus_per_node=2, gpu_type="tiny")
    assert report.ok and report.gres_type == "tiny"
    script = write_script(  # the typed request launch renders where the GRES names the type
        tmp_path / "gpu.sbatch",
        ["--partition=gpu", f"--gres=gpu:{report.gres_type}:2", "--output=gpu.out"],
        'echo "cvd=$CUDA_VISIBLE_DEVICES host=$(hostname)"',
    )
    job = scheduler.submit(script, cwd=tmp_path)
    assert slurm.wait_done(job, 30) == "COMPLETED"
    assert (tmp_path / "gpu.out").read_text() == "cvd=0,1 host=node3\n"
    assert doctor(partition="debug", gpus_per_node=2).problems
    script = write_script(tmp_path / "cpu.sbatch", ["--partition=debug", "--gres=gpu:2"], "true")
    assert "Requested node configuration is not available" in one_line_error(script, tmp_path)
    mem_gb = doctor(partition="gpu").partition("gpu").nodes[0].memory_mb * 2**20 / 1e9 + 100
    assert doctor(partition="gpu", memory_gb=mem_gb).never_runs  # what launch refuses before sbatch
    script = write_script(tmp_path / "mem.sbatch", ["--partition=gpu", f"--mem={int(mem_gb)}G"], "true")
    assert "Requested node configuration is not available" in one_line_error(script, tmp_path)


def test_the_rendered_gpu_request_runs_on_the_real_cluster(slurm, tmp_path):
    """What launch renders for a GPU plan (--gres=gpu:TYPE:N, the --mem comment line before the #SBATCH lines, --mem
    within the node) is taken by a real Slurm 22.05 (select/cons_tres), and the job's srun step gets its GPUs."""
    from ftctl.slurm import render as slurm_render
    from tests.render_fixtures import prepared

    flags = dict(backend="slurm", method="qlora", gpus="2xA100", model_name_or_path="org/m", output_dir="/o")
    rendered = prepared(["host_memory_gb=5", "model_params=8b"], **flags)  # the node's ~6 GiB: 5 GB, to the MiB
    text = slurm_render.render(rendered.spec, rendered.plan, "tiny")  # the type as launch asks sinfo for it
    # its CPUs left out: 8 a GPU, and the cluster's nodes have this machine's few
    header = [line for line in text.splitlines() if line.startswith("#") and "--cpus-per-task" not in line]
    assert [line for line in header if line.startswith("# --mem=")][0].startswith("# --mem=4768M a node: ")
    assert "#SBATCH --gres=gpu:tiny:2" in header
    script = tmp_path / "job.sbatch"
    body = "srun --ntasks-per-node=1 bash -c 'echo \"cvd=$CUDA_VISIBLE_DEVICES mem=$SLURM_MEM_PER_NODE\"'"
    script.write_text("\n".join([*header, "#SBATCH --partition=gpu", body, ""]))
    job = scheduler.submit(script, cwd=tmp_path)
    assert slurm.wait_done(job, 30) == "COMPLETED"
    assert (tmp_path / f"slurm-{job}.out").read_text() == "cvd=0,1 mem=4768\n"


def test_an_offload_plan_is_planned_for_the_nodes_ram_and_one_beyond_it_refused(slurm):
    """7B fft on one A100-80GB needs ZeRO-Offload with ~160 GB of host RAM a node: the cluster's GPU partition has
    nodes of a few GB (RealMemory, sinfo), so the plan for them is refused, saying whose RAM that is; given a larger
    -o host_memory_gb it plans, and launch stops before sbatch and says how to plan for the nodes. On CPU the nodes'
    RAM bounds the plan, and the plan says where it came from."""
    from ftctl.backend import get
    from tests.render_fixtures import prepared

    node = doctor().partition("gpu").nodes[0]
    node_gb = f"{round(node.memory_gb, 1):g}"  # sinfo's MiB exactly, as the plan is for them
    flags = dict(
        backend="slurm", method="fft", gpus="1xA100-80GB", model_name_or_path="lmsys/vicuna-7b-v1.5", partition="gpu"
    )
    with pytest.raises(FtctlError) as e:
        prepared(**flags)
    assert f"which has {node_gb} GB (-o host_memory_gb=" in str(e.value)
    ram = f"{gib_text(node.memory_mb)} GiB of RAM (sinfo)"  # the planner's -o host_memory_gb is GB: said in GiB
    assert str(e.value).endswith(f" Host memory: partition gpu's nodes have up to {ram}.")
    rendered = prepared(["host_memory_gb=200"], **flags)
    assert rendered.plan.strategy == "zero2_offload" and "#SBATCH --mem=" in rendered.text
    with pytest.raises(
        FtctlError, match=r"asks for --mem=\d+G a node \(the job script's comment says what for\), but partition 'gpu' "
    ):
        get("slurm").check(rendered)

    cpu = dict(backend="slurm", method="fft", gpus="cpu", model_name_or_path="org/m")
    plan = prepared(model_params="10m", **cpu).plan
    said = f"host memory: partition debug's nodes have up to {ram}: planned for that"
    assert [n for n in plan.notes if n.startswith(said)]
    with pytest.raises(FtctlError, match=f"does not fit host_memory_gb={node_gb} on CPU"):
        prepared(model_params="1.7b", **cpu)


def test_a_cpu_run_asks_the_cpus_the_clusters_nodes_have(slurm):
    """A CPU run asks CPU_CPUS_PER_TASK (16) CPUs a node where its nodes have as many, else what sinfo says they have:
    this cluster's nodes have this machine's few, so its e2e jobs ask those and start as before (the default was 2)."""
    from ftctl.slurm.render import CPU_CPUS_PER_TASK
    from tests.render_fixtures import prepared

    cpus = min(n.cpus for n in doctor().partition("debug").nodes)
    flags = dict(backend="slurm", method="lora", gpus="cpu", nodes=2, model_name_or_path="org/m", model_params="10m")
    rendered = prepared(**flags, partition="debug", output_dir="/o")
    assert f"#SBATCH --cpus-per-task={min(cpus, CPU_CPUS_PER_TASK)}\n" in rendered.text
    assert f"--cpus-per-task={min(cpus, CPU_CPUS_PER_TASK)} bash -c " in rendered.text  # the srun step's too


def test_the_partitions_default_memory_as_scontrol_says_it(slurm):
    """slurm_doctor.default_memory reads Slurm 22.05's `scontrol show partition --oneliner`: this cluster sets no
    DefMemPerCPU (DefMemPerNode=UNLIMITED: all of a node's), so no floor is put under --mem."""
    from ftctl.slurm import doctor as slurm_doctor

    said = slurm_doctor._partition_settings()
    assert {"debug", "gpu"} <= set(said) and said["debug"]["DefMemPerNode"] == "UNLIMITED"
    assert slurm_doctor.default_memory("debug", 2) is None


def test_doctor_without_slurm(tmp_path):
    report = doctor(env={"PATH": str(tmp_path)})
    assert not report.ok and report.sbatch is None and "not on PATH" in report.message
    with pytest.raises(FtctlError, match="Slurm is not reachable: sbatch is not on PATH"):
        report.raise_for_problems()


def test_parse_gres_forms():
    assert parse_gres("(null)") == {}
    assert parse_gres("gpu:8") == {"": 8}
    assert parse_gres("gpu:a100:4(S:0-1),nvme:1") == {"a100": 4}
    assert parse_gres("gpu:a100:2(S:0),gpu:v100:2(S:1)") == {"a100": 2, "v100": 2}


def test_a_partitions_ram_is_said_in_gib_as_mem_takes_it():
    from ftctl.slurm.doctor import NodeInfo, PartitionInfo

    def node(mb):
        return NodeInfo(name="n", state="idle", cpus=8, memory_mb=mb, gpus={})

    assert PartitionInfo("p", True, True, "1:00:00", [node(512000), node(512000)]).memory_summary == (
        "500 GiB RAM a node"  # sinfo's 512000 MB are MiB; it said "536 GB", and --mem=536G is more than it has
    )
    assert PartitionInfo("p", True, True, "1:00:00", [node(6553), node(2048000)]).memory_summary == (
        "6.3-2000 GiB RAM a node"
    )
    assert PartitionInfo("p", True, True, "1:00:00").memory_summary == "RAM unknown"
    assert PartitionInfo("p", True, True, "1:00:00", [node(1000), node(1000)]).cpu_summary == "8 CPUs a node"


# ------------------------------------------------------------------------------------ requeue
REQUEUE_BODY = """
    trap on_usr2 USR2   # first: a USR2 before the trap is set kills the script (job FAILED)
    on_usr2() {{
      echo "USR2 restart=${{SLURM_RESTART_COUNT:-0}}"
      # srun forwards USR2 to every process of the step; one that arrives while srun is still
      # launching the step is lost, so send again until the step has exited
      while kill -0 "$STEP" 2>/dev/null; do kill -USR2 "$STEP"; sleep 1; done
      wait "$STEP"
      if [ "${{SLURM_RESTART_COUNT:-0}}" -lt {max_requeue} ]; then scontrol requeue "$SLURM_JOB_ID"; fi
      exit 0
    }}
    echo "start restart=${{SLURM_RESTART_COUNT:-0}} on $(hostname)"
    if [ "${{SLURM_RESTART_COUNT:-0}}" -ge 1 ]; then echo resumed; exit 0; fi
    # the step says it is ready once its own trap is set: a USR2 forwarded before that would kill it
    srun bash -c 'trap "echo step saved; exit 0" USR2; echo ready; while :; do sleep 0.1; done' &
    STEP=$!
    while :; do wait "$STEP"; [ $? -lt 128 ] && break; done
    """


def _requeue_roundtrip(slurm, tmp_path, sbatch: list[str], send_signal: bool) -> tuple[str, float]:
    script = write_script(
        tmp_path / "rq.sbatch",
        ["--requeue", "--open-mode=append", "--output=rq.out", *sbatch],
        REQUEUE_BODY.format(max_requeue=1),
    )
    start = time.monotonic()
    job = scheduler.submit(script, cwd=tmp_path)
    log = tmp_path / "rq.out"
    try:
        if send_signal:  # what a preemption or the time limit does, now
            deadline = time.monotonic() + 30
            while "ready" not in (log.read_text() if log.exists() else ""):
                assert time.monotonic() < deadline, "the job never got ready"
                time.sleep(0.1)
            slurm.run("scancel", "--batch", "--signal=USR2", job)
        # a requeued job waits for its old credential to expire before it starts again
        # (cred_expire: 120 s by default, 5 s on the test cluster; see start-cluster.sh)
        seen = []
        deadline = time.monotonic() + 90
        while not seen or not seen[-1].finished:
            assert time.monotonic() < deadline, (seen[-3:], log.read_text())
            seen.append(scheduler.status(job))
            time.sleep(0.2)
        assert any(st.restarts == 1 for st in seen), seen  # requeued (its PENDING may pass between two polls)
    finally:
        slurm.run("scancel", job, check=False)
    elapsed = time.monotonic() - start
    st = scheduler.status(job)
    assert (st.state, st.exit_code, st.restarts) == ("COMPLETED", 0, 1), log.read_text()
    return log.read_text(), elapsed


def test_usr2_to_the_batch_script_requeues_and_the_rerun_sees_restart_count(slurm, tmp_path):
    text, _ = _requeue_roundtrip(slurm, tmp_path, [], send_signal=True)
    # not compared: bash in the step reporting its `sleep` killed by the signal ("User defined
    # signal 2") and slurmstepd's "*** JOB 12 ON node1 CANCELLED AT ... DUE TO JOB REQUEUE ***"
    # when the requeue kills the batch script before it has exited
    lines = [
        line for line in text.splitlines() if line != "User defined signal 2" and not line.startswith("slurmstepd")
    ]
    assert lines == [
        "start restart=0 on node1",
        "ready",
        "USR2 restart=0",
        "step saved",
        "start restart=1 on node1",
        "resumed",
    ], text


@pytest.mark.slow
def test_signal_before_the_time_limit_requeues(slurm, tmp_path):
    """--signal=B:USR2@55 with --time=1: the signal is due 5 s after the start, but slurmctld
    checks time limits only every 30 s, so it comes at the first check after that: 5-35 s after
    the start (measured: ~10 s inside the suite, ~37 s right after a cluster start)."""
    text, elapsed = _requeue_roundtrip(slurm, tmp_path, ["--time=1", "--signal=B:USR2@55"], send_signal=False)
    assert "USR2 restart=0" in text and "step saved" in text and text.endswith("resumed\n")
    assert elapsed < 60


# --------------------------------------------------------------------- signal through torchrun
WORKER = """
import os, signal, socket, sys, time
got = []
signal.signal(signal.SIGUSR2, lambda s, f: got.append(s))
print(f"worker {os.environ['RANK']} up on {socket.gethostname()}", flush=True)
for _ in range(600):
    if got:
        time.sleep(1)  # saving a checkpoint
        print(f"worker {os.environ['RANK']} saved", flush=True)
        sys.exit(0)
    time.sleep(0.1)
"""


@pytest.mark.parametrize("ignore_in_torchrun", [True, False], ids=["trap-ignored", "plain"])
def test_usr2_through_srun_reaches_torchrun_workers(slurm, tmp_path, ignore_in_torchrun):
    """srun forwards USR2 to every process of the step (torchrun and its workers alike).
    torchrun has no USR2 handler, so it dies of it unless it starts with USR2 ignored
    (`trap '' USR2` before exec; the trainer's own handler overrides the inherited SIG_IGN)."""
    (tmp_path / "worker.py").write_text(WORKER)
    launch = 'bash -c \'trap "" USR2; exec "$@"\' torchrun torchrun' if ignore_in_torchrun else "torchrun"
    script = write_script(
        tmp_path / "tr.sbatch",
        ["--nodes=2", "--ntasks-per-node=1", "--output=tr.out"],
        f"""
        trap 'kill -USR2 $STEP; wait $STEP; echo "srun exit $?"; exit 0' USR2
        HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)
        export OMP_NUM_THREADS=1
        srun {launch} --nnodes=2 --nproc-per-node=1 --rdzv-id=$SLURM_JOB_ID --rdzv-backend=c10d \\
            --rdzv-endpoint=$HEAD:29500 worker.py &
        STEP=$!
        while :; do wait $STEP; [ $? -lt 128 ] && break; done
        """,
    )
    job = scheduler.submit(script, cwd=tmp_path)
    log = tmp_path / "tr.out"
    try:
        deadline = time.monotonic() + 60
        while (log.read_text() if log.exists() else "").count(" up on ") < 2:
            assert time.monotonic() < deadline, log.read_text() if log.exists() else "no output"
            time.sleep(0.2)
        slurm.run("scancel", "--batch", "--signal=USR2", job)
        slurm.wait_done(job, 60)
    finally:
        slurm.run("scancel", job, check=False)
    text = log.read_text()
    assert text.count(" saved") == 2, text  # both workers got the signal and finished
    if ignore_in_torchrun:
        assert "srun exit 0" in text, text
    else:
        assert "User defined signal 2" in text and "srun exit 140" in text, text  # 128 + 12


def test_doctor_matches_gpu_types_as_clusters_name_them():
    from ftctl.slurm.doctor import _same_gpu

    assert _same_gpu("a100", "A100-80GB")  # clusters rarely put the memory in the gres type
    assert _same_gpu("nvidia_a100-sxm4-80gb", "A100")
    assert _same_gpu("", "H100")  # untyped gres (gpu:8) cannot be told apart: not flagged
    assert not _same_gpu("tiny", "A100")
    assert not _same_gpu("h100", "A100")
    assert not _same_gpu("a100", "A10") and not _same_gpu("l40s", "L40") and not _same_gpu("v100s", "V100")
    assert _same_gpu("a6000", "RTXA6000") and _same_gpu("tesla_v100-sxm2-32gb", "V100")
    # a name that says less memory than the plan's card is not it: the 80 GB plan ran out of memory on 40 GB cards
    assert not _same_gpu("nvidia_a100-sxm4-40gb", "A100-80GB") and not _same_gpu("v100-16gb", "V100-32GB")
    assert _same_gpu("a100-80gb", "A100-80GB") and _same_gpu("nvidia_h100_80gb_hbm3", "H100")
