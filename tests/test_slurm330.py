"""Helper 330: a Slurm job's stop says why. The batch script's traps (slurm.render: USR2 at the time limit or a
preemption, TERM at a scancel, USR1 from `ftctl cancel`) created the trainer's stop file empty, so its stop lines read
"stopping at step N (stop file)"; they now write their reason as the file's first line (trainer.callbacks.stop_reason
reads it), and the first reason stays.

The trap lines run in a real bash; the whole rendered script on the real 2-node test cluster (tests/slurm_fixtures.py)
with a real tiny trainer, its batch shell sent USR2 as Slurm sends it."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from ftctl.progress import TRAINER_ENDED, _trainer_ended, stopped_at
from ftctl.slurm.render import STOP_REASONS
from ftctl.trainer.callbacks import STOP_FILE, stop_reason
from tests.render_fixtures import prepared
from tests.slurm_e2e_fixtures import wait_until

FLAGS = dict(backend="slurm", gpus="1xA100", model_name_or_path="meta-llama/Llama-3.2-1B", output_dir="/f/o")
USR2_SAID = "USR2 from Slurm (time limit or preemption, --signal lead 90 s)"


def _traps(stop) -> str:
    """The rendered script's lines from its stop-file function to its last trap, the stop file at ``stop``."""
    lines = prepared(["signal_lead_s=90"], time="01:00:00", **FLAGS).text.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("ask_stop()"))
    last = next(i for i, line in enumerate(lines) if line.startswith("trap on_cancel "))
    return f"FTCTL_STOP_FILE={stop}\n" + "\n".join(lines[first : last + 1])


def _signalled(tmp_path, *signals: signal.Signals) -> subprocess.CompletedProcess:
    """The traps in a real bash, sent ``signals`` one after another (each handled before the next)."""
    code = _traps(tmp_path / "stop") + '\necho ready\nwhile [ ! -e "$FTCTL_RUN_DIR/done" ]; do sleep 0.05; done'
    proc = subprocess.Popen(["bash", "-c", code], env={"PATH": "/usr/bin:/bin", "FTCTL_RUN_DIR": str(tmp_path)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout.readline() == "ready\n"
    for sig in signals:
        proc.send_signal(sig)
        time.sleep(0.3)
    (tmp_path / "done").touch()
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0 and err == "", (out, err)
    return out


@pytest.mark.parametrize(
    "sig, said",
    [
        (signal.SIGUSR2, USR2_SAID),
        (signal.SIGTERM, STOP_REASONS["TERM"]),
        (signal.SIGUSR1, STOP_REASONS["USR1"]),
    ],
    ids=["USR2", "TERM", "USR1"],
)
def test_each_trap_writes_its_reason_which_the_trainer_reads(tmp_path, sig, said):
    """Each trap's stop file says why (it was created empty: the trainer's stop line said "stop file"), and the
    trainer's reader takes it as the stop's name; no .why file is left beside it."""
    _signalled(tmp_path, sig)
    assert (tmp_path / "stop").read_text() == said + "\n"
    assert stop_reason(str(tmp_path / "stop")) == said != STOP_FILE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["done", "stop"]


def test_the_first_reason_stays(tmp_path):
    """A TERM after the time limit's USR2 (Slurm's own at the limit, or a scancel meanwhile) leaves USR2's reason: the
    trainer may have read it; torchrun's "SIGTERM" (its own write at a scancel) is kept the same way."""
    _signalled(tmp_path, signal.SIGUSR2, signal.SIGTERM, signal.SIGUSR1)
    assert (tmp_path / "stop").read_text() == USR2_SAID + "\n"
    (tmp_path / "stop").write_text("SIGTERM\n")
    (tmp_path / "done").unlink()
    _signalled(tmp_path, signal.SIGTERM)
    assert (tmp_path / "stop").read_text() == "SIGTERM\n"


def test_an_unwritable_reason_still_stops_the_trainer(tmp_path):
    """Where the reason cannot be written beside the stop file (here: its .why name is a directory; a full disk
    alike), the file is still created, empty: the trainer stops the same, its stop read as "stop file"."""
    (tmp_path / "stop.why").mkdir()
    (tmp_path / "stop.why" / "x").touch()  # mv -f of nothing over it, rm -f of it: both fail
    _signalled(tmp_path, signal.SIGUSR2)
    assert (tmp_path / "stop").read_text() == "" and stop_reason(str(tmp_path / "stop")) == STOP_FILE


def test_the_reasons_words_read_as_the_trainers_stop_in_status():
    """progress.TRAINER_ENDED (`ftctl status` of a running job whose trainer stopped) reads each reason's words in
    the trainer's stop line, and in its error line where the checkpoint did not reach the store; status says them
    (it said only where the trainer stopped)."""
    for said in (USR2_SAID, STOP_REASONS["TERM"], STOP_REASONS["USR1"]):
        line = f"2026-12-07 11:00:01,000 +0000 [rank 0] ftctl.trainer.run: stopped on {said} after saving step 21; r"
        assert TRAINER_ENDED.search(line)[2] == "21", said
        assert _trainer_ended([line]) == f"its trainer stopped at step 21 on {said}"
        error = f"error: stopped on {said} at step 21, but its checkpoint-21 did not reach s3://b/o (x)"
        assert _trainer_ended([error]) == f"its trainer stopped at step 21 on {said} (not committed to the store)"
    # a running job's metrics.jsonl: its stop record's signal, the stop file's words
    stop = {"step": 21, "event": "stop", "signal": USR2_SAID, "checkpoint": "checkpoint-21"}
    assert stopped_at(stop) == f"its trainer stopped at checkpoint-21 on {USR2_SAID}"


# the job's trainer, a stand-in: each node's says it trains, then waits for the stop file as the trainer polls it at
# its step boundaries, and says its first line as the trainer's stop line does (its reader: the unit tests above)
_TRAINER = """\
#!{python} -S
import os, sys, time
args = sys.argv[1:]
if args[:2] != ["-m", "ftctl.trainer.torchrun"]:
    os.execv({python!r}, [{python!r}, *args])
node, stop = os.environ["SLURM_NODEID"], os.environ["FTCTL_STOP_FILE"]
open(os.path.join(os.environ["FTCTL_RUN_DIR"], "training." + node), "w").close()
while not os.path.exists(stop):
    time.sleep(0.1)
time.sleep(0.2)
with open(stop) as f:
    said = (f.read(200).splitlines() or [""])[0].strip() or "stop file"
print(f"[rank {{node}}] ftctl.trainer.callbacks: stopping at step 3 ({{said}}): saving a checkpoint first", flush=True)
with open(os.environ["FTCTL_STATUS_FILE"], "w") as f:
    f.write("preempted\\n")
"""


@pytest.mark.slow
def test_on_the_cluster_a_usr2_stop_says_slurms_reason(e2e, tiny_model_dir):
    """A 2-node job on the real cluster, its batch shell sent USR2 as Slurm sends it (--signal=B:USR2 at the time
    limit or a preemption; scancel --signal=USR2 --batch here), requeues off: both nodes' trainers (stand-ins) find
    the stop file saying Slurm's USR2 and the job's lead, where it said nothing ("stop file")."""
    fake = e2e.scratch / "fakebin330"
    fake.mkdir()
    (fake / "python3").write_text(_TRAINER.format(python=sys.executable))
    (fake / "python3").chmod(0o755)
    run_dir = e2e.scratch / "usr2-330"
    args = ["--backend", "slurm", "--method", "lora", "--gpus", "cpu", "--nodes", "2", "--partition", "debug"]
    args += ["--model", str(tiny_model_dir), "--data", "builtin:demo", "--output", str(run_dir)]
    args += ["-o", "max_requeues=0", "-o", "signal_lead_s=90", "-o", f"setup=export PATH={fake}:$PATH"]
    started = time.monotonic()
    job = e2e.launch(*args)
    try:
        both = (run_dir / "training.0", run_dir / "training.1")
        wait_until(lambda: all(p.exists() for p in both), 60, "both nodes' trainers")
        e2e.cluster.run("scancel", "--signal=USR2", "--batch", job)
        state = e2e.cluster.wait_done(job, 30)
        status = e2e.ftctl("status", job).stdout
    finally:
        e2e.scancel(job)
    log = (run_dir / f"slurm-{job}.out").read_text()
    assert "ftctl: USR2 (time limit or preemption): checkpointing" in log, log[-3000:]
    for rank in (0, 1):
        assert f"[rank {rank}] ftctl.trainer.callbacks: stopping at step 3 ({USR2_SAID}):" in log, log[-3000:]
    assert (run_dir / f"stop.{job}.0").read_text() == USR2_SAID + "\n"
    assert not (run_dir / f"stop.{job}.0.why").exists()
    assert "ftctl: trainer exited with 0, status preempted" in log, log[-3000:]
    # requeues off: the script ends the job (FAILED, with no --time to wait for), its error line said by status
    assert state == "FAILED" and status.startswith(f"{job} FAILED on node[1-2] exit 1\nerror: not requeueing"), status
    print(f"job {job}: {time.monotonic() - started:.0f} s from launch to its end; ftctl status:\n{status}",
          file=sys.stderr)  # fmt: skip
