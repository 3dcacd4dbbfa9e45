"""Helper 297: what is left of explore61 on Slurm. A job its time limit stopped at a checkpoint, with no requeue
left, waits for the limit (so Slurm ends it TIMEOUT): `ftctl cancel` during that wait ended it only as the wait ran
out; status read from a job's log said time left after its trainer stopped; two multi-node jobs on one head node with
ids 1000 apart met at one rendezvous port.

The cluster test runs the unmodified rendered script on the real test cluster (tests/slurm_fixtures.py), its trainer a
stand-in put first on PATH by a setup line: it writes its start record, stops at the stop file, and says preempted."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import pytest

from ftctl.slurm.render import RDZV_LOCK
from tests.render_fixtures import fake_bin, prepared, read_log

MODEL = "meta-llama/Llama-3.2-1B"
FLAGS = dict(backend="slurm", gpus="1xA100", model_name_or_path=MODEL, output_dir="/f/o")


def _waiting(tmp_path, job: str) -> tuple[subprocess.Popen, object, list[str]]:
    """The rendered script of a run with requeues off, its time limit's USR2 sent: (process, the fakes' log, its
    lines up to the wait's)."""
    prep = prepared(["max_requeues=0", "signal_lead_s=60"], time="00:02:00", **FLAGS)
    fakes, log = (
        fake_bin(tmp_path / "bin", names=("srun", "scontrol", "torchrun", "python3", "scancel")),
        tmp_path / "l",
    )
    env = {"PATH": f"{fakes}:/usr/bin:/bin", "FAKE_LOG": str(log), "HOME": str(tmp_path), "FAKE_SLEEP": "1"}
    env |= {"SLURM_SUBMIT_DIR": str(tmp_path), "SLURM_JOB_ID": job, "SLURM_JOB_NODELIST": "node1"}
    proc = subprocess.Popen(["bash", "-c", prep.text], cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not [c for c in read_log(log) if c["prog"] == "torchrun"] and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR2)  # the time limit's notice
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("ftctl: waiting for the time limit"):
            break
    return proc, log, lines


def test_ftctl_cancel_during_the_time_limit_wait_ends_the_job_at_once(tmp_path):
    """ftctl cancel's USR1 during the wait: the script cancels its own job (CANCELLED) at once, not after the rest of
    the wait (up to signal_lead_s, here 60 s + the slack: ftctl cancel waited signal_lead_s, then scancelled). At once is
    about a second idle; 20 s leaves room for a busy CI machine (CI saw 5.0 s beside the suite) and stays far from 60."""
    proc, log, lines = _waiting(tmp_path, "97")
    start = time.monotonic()
    proc.send_signal(signal.SIGUSR1)  # scancel --signal=USR1 --batch, as ftctl cancel sends it
    rest, _ = proc.communicate(timeout=30)
    took = time.monotonic() - start
    assert proc.returncode == 143 and took < 20, (took, rest)
    assert "the trainer stopped at its checkpoint already; cancelling job 97" in rest, rest
    assert "ftctl cancel 97 ends it now" in lines[-1], lines[-1]  # the wait's line says how to end it
    assert [c["argv"] for c in read_log(log) if c["prog"] == "scancel"] == [["97"]]


def test_a_log_whose_trainer_stopped_says_no_time_left(tmp_path):
    """An object-store run's status reads its log: after the trainer's stop line it still said '~39 s left'."""
    from ftctl.backend import logged_step

    now = time.time()
    stamp = time.strftime("%H:%M:%S", time.gmtime(now - 20))
    head = [
        "ftctl: job 5 attempt 0 on node1 (head node1)",
        f"step 200/400  loss 1.2345  lr 2.00e-04  grad 0.808  380 tok/s  ETA 0:01:00  {stamp} UTC",
        "2026-12-07 11:00:00,000 +0000 [rank 0] ftctl.trainer.callbacks: stopping at step 201 (USR2): saving a "
        "checkpoint first",
    ]
    training = logged_step("\n".join(head), True, now - 10, "5")
    assert training.fields["time_left"] and "left" in training, training
    ends = {
        "2026-12-07 11:00:01,000 +0000 [rank 0] ftctl.trainer.run: stopped on USR2 after saving step 201; resume "
        "with the same output dir": "its trainer stopped at step 201 on USR2",
        "error: stopped on USR2 at step 201, but its checkpoint-201 did not reach s3://b/o (...)": "its trainer "
        "stopped at step 201 on USR2 (not committed to the store)",
        "stopped: step 201, last loss 1.2000, output s3://b/o": "its trainer stopped at step 201",
        "complete: step 400, final loss 1.1000, output s3://b/o": "its trainer finished at step 400",
        "ftctl: trainer exited with 1, status failed": "its trainer ended",
    }
    for line, said in ends.items():
        shown = logged_step("\n".join([*head, line]), True, now - 10, "5")
        assert shown == f"step 200/400 (50%)  loss 1.2345  380 tok/s; {said}", (line, shown)
        assert shown.fields.get("time_left") is None
    # an earlier attempt's stop is history: the last attempt's step line is said with its time left
    later = [*head, ends.popitem()[0], "ftctl: job 5 attempt 1 on node1 (head node1)", head[1]]
    assert "left" in logged_step("\n".join(later), True, now - 10, "5")


def test_a_multi_node_job_skips_a_rendezvous_port_taken_on_its_head_node(tmp_path):
    """Job 3777 and job 2777 (1000 apart) on one head node: both took 29501 + 777; the second's torchrun joined the
    first's c10d store. Now the script walks past ports a socket there listens on (IPv6's and IPv4's)."""
    prep = prepared([], **{**FLAGS, "gpus": "2x1xA100"})
    lines = prep.text.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("RDZV_PORT="))
    last = lines.index("export RDZV_PORT")
    code = "\n".join([*lines[first : last + 1], 'echo "$RDZV_PORT"'])
    code = code.replace(RDZV_LOCK, f"{tmp_path}/rdzv-")  # the ports' lock files (test_slurm300): not /var/tmp's
    base = 29501 + 777
    held = []
    try:
        for family, host, port in ((socket.AF_INET6, "::", base), (socket.AF_INET, "127.0.0.1", base + 1)):
            s = socket.socket(family)
            held.append(s)
            s.bind((host, port))
            s.listen()
        free = base + 2
        while True:  # the next one this machine's other processes do not hold either
            with socket.socket() as probe:
                try:
                    probe.bind(("", free))
                    break
                except OSError:
                    free += 1
        out = subprocess.run(["bash", "-c", code], env={"SLURM_JOB_ID": "3777", "PATH": "/usr/bin:/bin"},
                             capture_output=True, text=True, timeout=10)  # fmt: skip
    finally:
        for s in held:
            s.close()
    assert out.returncode == 0 and out.stdout == f"{free}\n", (out, code)


_TRAINER = """\
#!{python} -S
import json, os, sys, time
args = sys.argv[1:]
if args[:2] != ["-m", "ftctl.trainer.torchrun"]:
    os.execv({python!r}, [{python!r}, *args])
run, stop, status = os.environ["FTCTL_RUN_DIR"], os.environ["FTCTL_STOP_FILE"], os.environ["FTCTL_STATUS_FILE"]
start = {{"step": 0, "event": "start", "time": time.time(), "slurm_job_id": os.environ["SLURM_JOB_ID"],
          "slurm_restart_count": int(os.environ.get("SLURM_RESTART_COUNT", "0"))}}
with open(os.path.join(run, "metrics.jsonl"), "a") as f:
    f.write(json.dumps(start) + "\\n")
while not os.path.exists(stop):
    time.sleep(0.2)
with open(status, "w") as f:
    f.write("preempted\\n")
print("stopped: step 1, last loss 1.0000, output " + run, flush=True)
"""


@pytest.mark.slow
def test_on_the_cluster_cancel_during_the_wait_is_prompt_and_the_wait_ends_as_timeout(e2e, tiny_model_dir):
    """Two one-node jobs, --time 1 min, signal_lead_s=50, requeues off, at once: each trainer stops at its time
    limit's USR2 (it comes up to 60 s early: within 10 s). `ftctl cancel` of the first during its wait ends it
    CANCELLED within seconds; the second is ended by Slurm at its limit: TIMEOUT (squeue -t all: the test cluster has
    no accounting)."""
    fake = e2e.scratch / "fakebin"
    fake.mkdir()
    (fake / "python3").write_text(_TRAINER.format(python=sys.executable))
    (fake / "python3").chmod(0o755)
    jobs, started = {}, time.monotonic()
    for name in ("cancelled", "timeout"):
        args = ["--backend", "slurm", "--method", "lora", "--gpus", "cpu", "--nodes", "1", "--partition", "debug"]
        args += ["--model", str(tiny_model_dir), "--data", "builtin:demo", "--output", str(e2e.scratch / name)]
        args += ["--time", "00:01:00", "-o", "signal_lead_s=50", "-o", "max_requeues=0"]
        jobs[name] = e2e.launch(*args, "-o", f"setup=export PATH={fake}:$PATH")
    try:
        log = e2e.scratch / "cancelled" / f"slurm-{jobs['cancelled']}.out"
        deadline = time.monotonic() + 60
        while "ftctl: waiting for the time limit" not in (log.read_text() if log.exists() else ""):
            assert time.monotonic() < deadline, log.read_text() if log.exists() else "no log"
            time.sleep(0.5)
        asked = time.monotonic()
        proc = e2e.ftctl("cancel", jobs["cancelled"], timeout=120)
        took = time.monotonic() - asked
        cancelled = e2e.cluster.wait_done(jobs["cancelled"], 10)
        other = e2e.scratch / "timeout" / f"slurm-{jobs['timeout']}.out"
        while "ftctl: waiting for the time limit" not in (other.read_text() if other.exists() else ""):
            assert time.monotonic() < deadline, other.read_text() if other.exists() else "no log"
            time.sleep(0.5)
        waits = time.monotonic()
        timeout = e2e.cluster.wait_done(jobs["timeout"], 150)
        ended = time.monotonic()
        status = e2e.status_line(jobs["timeout"])
    finally:
        for job in jobs.values():
            e2e.scancel(job)
    said = log.read_text()
    assert cancelled == "CANCELLED" and took < 10, (took, proc.stdout, proc.stderr, said[-2000:])
    assert proc.stdout.startswith(f"cancelled {jobs['cancelled']}"), (proc.stdout, proc.stderr)
    assert "the trainer stopped at its checkpoint already; cancelling job" in said, said[-2000:]
    assert timeout == "TIMEOUT", (timeout, ended - started, other.read_text()[-2000:])
    assert status.startswith(f"{jobs['timeout']} TIMEOUT"), status
    print(f"cancel took {took:.1f} s; the timeout job waited {ended - waits:.0f} s, ended {ended - started:.0f} s "
          f"after its launch; ftctl status: {status}", file=sys.stderr)  # fmt: skip
