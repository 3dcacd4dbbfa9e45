"""explore61 findings 9-16 (helper 292): what ftctl says of a Slurm job's stop, queue and status, as a user reads it.

The scripts run in a real bash with recording fakes of srun/torchrun/scontrol (tests/render_fixtures.py); the status
and log lines are fed files as the trainer and Slurm write them."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

from ftctl import failures
from tests.render_fixtures import fake_bin, fake_slurm, prepared, read_log

MODEL = "meta-llama/Llama-3.2-1B"
FLAGS = dict(backend="slurm", gpus="1xA100", model_name_or_path=MODEL, output_dir="/f/o")


def _start(tmp_path, text: str, job: str, **env) -> tuple[subprocess.Popen, object]:
    """The rendered script running in bash with the fakes (their torchrun trains FAKE_SLEEP s); (process, its log)."""
    fakes, log = fake_bin(tmp_path / "bin"), tmp_path / f"log.{job}.jsonl"
    full = {
        "PATH": f"{fakes}:/usr/bin:/bin",
        "FAKE_LOG": str(log),
        "HOME": str(tmp_path),
        "FAKE_SLEEP": "2",
        "SLURM_SUBMIT_DIR": str(tmp_path),
        "SLURM_JOB_ID": job,
        "SLURM_JOB_NODELIST": "node1",
        **env,
    }
    proc = subprocess.Popen(["bash", "-c", text], cwd=tmp_path, env=full, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not [c for c in read_log(log) if c["prog"] == "torchrun"] and time.monotonic() < deadline:
        time.sleep(0.05)  # the step is training (or loading: the fake's sleep)
    return proc, log


def _term_while_loading(tmp_path, job: str, gpus: str = "1xA100") -> str:
    prep = prepared([], **{**FLAGS, "gpus": gpus})
    proc, _ = _start(tmp_path, prep.text, job, FAKE_STATUS="failed")  # no checkpoint of its own: still loading
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 143, out
    return next(line for line in out.splitlines() if "stopped by TERM" in line)


def test_a_term_before_any_checkpoint_says_the_run_starts_again_not_resumes(tmp_path):
    """Finding 13: a requeue while attempt 0 loaded the model logged "... the same ftctl launch resumes it from the
    last one" where the run had none (status said "starts again: nothing was saved"). Now the line says which."""
    said = _term_while_loading(tmp_path, "84")
    assert said == (
        "ftctl: stopped by TERM (exit 0) before a checkpoint of this attempt; where Slurm requeues this job (a requeue, "
        "a node failure, a preemption) it goes on by itself, else (a cancel) the same ftctl launch does: it starts "
        "again from step 0, as no checkpoint was saved yet"
    ), said
    # an earlier attempt's committed checkpoints (their manifest written); one being written when it stopped is not
    for name, committed in (("checkpoint-40", True), ("checkpoint-286", True), ("checkpoint-300", False)):
        (tmp_path / name).mkdir()
        if committed:
            (tmp_path / name / "ftctl-manifest.json").write_text("{}")
    said = _term_while_loading(tmp_path, "85")
    assert said.endswith("the same ftctl launch does: it resumes from checkpoint-286"), said
    # a two-node run's checkpoint is committed by every node's manifest (checkpoints.manifest.nodes_committed)
    for name, nodes in (("checkpoint-350", (0, 1)), ("checkpoint-400", (0,))):
        (tmp_path / name).mkdir()
        for k in nodes:
            (tmp_path / name / f"manifest.node-{k}.json").write_text("{}")
    said = _term_while_loading(tmp_path, "86", gpus="2x1xA100")
    assert said.endswith("the same ftctl launch does: it resumes from checkpoint-350"), said


def test_a_clean_stop_at_the_time_limit_with_requeues_off_ends_as_slurms_timeout(tmp_path):
    """Finding 14: with -o max_requeues=0 a stop at the time limit said "not requeueing: max_requeues=0 reached; the
    last attempt ..." (nothing was reached: requeues are off, and there was one attempt) and the script's exit 1 made
    the job FAILED, as a crash. Now it says requeues are off, and waits for the time limit, whose TERM ends the job as
    Slurm's TIMEOUT."""
    prep = prepared(["max_requeues=0", "signal_lead_s=60"], time="00:02:00", **FLAGS)
    proc, log = _start(tmp_path, prep.text, "93")
    proc.send_signal(signal.SIGUSR2)  # the time limit's notice
    lines = []
    for line in proc.stdout:  # the script waits after its last line
        lines.append(line)
        if line.startswith("ftctl: waiting for the time limit"):
            break
    assert proc.poll() is None, "".join(lines)  # still running: Slurm ends it
    out = "".join(lines)
    assert failures.error_line(out) == (
        "not requeueing: -o max_requeues=0 turns requeues off; the job was cut by its time limit (--time 00:02:00) "
        "and stopped at the checkpoint above: raise --time, or allow requeues with -o max_requeues=N; the same ftctl "
        "launch resumes from the last checkpoint"
    ), out
    assert "where Slurm ends the job as TIMEOUT" in lines[-1], lines[-1]
    proc.send_signal(signal.SIGTERM)  # the time limit's own TERM
    rest, _ = proc.communicate(timeout=30)
    assert proc.returncode == 143 and "requeue" not in [c["argv"][0] for c in read_log(log) if c["prog"] == "scontrol"]
    # stopped without the time limit's USR2 (a TERM of a preemption, by hand): nothing to wait for
    assert "AT_LIMIT=1" in prep.text and prep.text.count("AT_LIMIT=1") == 1


def _metrics(path, *attempts) -> None:
    """A metrics.jsonl as a requeued Slurm job's trainers write it: per attempt its start record (record_start's
    keys), a row a step (MetricsCallback's), and where it stopped the stop record (say_stop's)."""
    import json

    from ftctl.runpaths import START_SLURM_ATTEMPT, START_SLURM_JOB

    rows, t = [], 1_000_000.0
    for attempt, steps, stop in attempts:
        rows.append({"step": 0, "event": "start", "time": t, START_SLURM_JOB: "2", START_SLURM_ATTEMPT: attempt})
        for step in steps:
            t += 0.05
            rows.append({"step": step, "loss": 1.5, "lr": 1e-4, "grad_norm": 1.0, "tokens": 100 * step,
                         "tokens_per_s": 2000.0, "epoch": 0.1, "time": round(t, 3), "max_steps": 400})  # fmt: skip
        if stop:
            t += 1
            rows.append({"step": steps[-1], "event": "stop", "time": t, "signal": "TERM",
                         "checkpoint": f"checkpoint-{steps[-1]}"})  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return t


def test_a_requeued_jobs_status_while_its_next_attempt_loads_says_where_the_last_one_stopped(tmp_path):
    """Finding 9: `scontrol requeue` mid-run, then `ftctl status` while attempt 1 loaded: "step 280/400 (70%) ...
    0.05 s a step, ~0 s left", attempt 0's steps said as current; during COMPLETING "~3 s left" too. Once the last
    trainer's stop (or end) record is written, its steps are not the running job's: no time left, and where it stopped;
    the next attempt's first logged step is said as its own."""
    from ftctl.backend import own_start
    from ftctl.progress import summary_of_lines

    metrics = tmp_path / "metrics.jsonl"
    ours = {"slurm_job_id": "2"}  # what slurm's status asks of a start record (its job)

    def said(now):
        with open(metrics) as lines:
            return summary_of_lines(lines, lambda start: own_start(start, None, ours), running=True, now=now)

    t = _metrics(metrics, (0, list(range(10, 290, 10)), False))  # attempt 0 training: the time left is said
    assert said(t + 1).fields["time_left"] is not None
    t = _metrics(metrics, (0, list(range(10, 290, 10)), True))  # its trainer stopped at checkpoint-280
    now = said(t + 5)
    assert now.fields["time_left"] is None and "left" not in now, now
    assert now.endswith("; its trainer stopped at checkpoint-280 on TERM") and now.startswith("step 280/400 (70%)"), now
    t = _metrics(metrics, (0, list(range(10, 290, 10)), True), (1, [290, 300, 310], False))  # attempt 1 trains
    now = said(t + 1)
    assert now.startswith("step 310/400 (77%)") and "stopped" not in now and now.fields["time_left"], now
    # an ended job: its stop is the backend's note (cancel's, status'), not repeated in the step line
    _metrics(metrics, (0, list(range(10, 290, 10)), True))
    with open(metrics) as lines:
        assert "stopped" not in summary_of_lines(lines, lambda start: True, running=False)


@pytest.fixture
def slurm_job(tmp_path, monkeypatch):
    """A fake Slurm (squeue prints its file, as Slurm 22.05 prints it; scontrol answers ping and knows no job) and a
    run directory: ``slurm_job(ID)`` records the directory as Slurm job ID and gives (squeue's file, the directory)."""
    from ftctl.backend import JobRef, record_job

    out = tmp_path / "bin" / "squeue.out"
    scripts = {
        "squeue": f"cat {out}",
        "scontrol": 'case "$1" in ping) exit 0;; esac; echo "Invalid job id specified" >&2; exit 1',
    }
    fake_slurm(tmp_path / "bin", monkeypatch, scripts, tmp_path / "home")
    run = tmp_path / "run"
    run.mkdir()

    def recorded(job: str):
        record_job(JobRef("slurm", job, str(run), "r", str(run)))
        return out, run

    return recorded


def test_logs_of_a_queued_job_says_why_it_waits_and_is_no_error(slurm_job, monkeypatch):
    """Finding 11: `ftctl logs 6` of a held job was "error: job 6 PENDING (JobHeldUser): queued, no output until it
    starts" with exit 2, though nothing was wrong, and neither it nor `logs -f` (which waited silently for a release)
    named `scontrol release 6`. Fake squeue/scontrol, as Slurm 22.05 prints them."""
    from click.testing import CliRunner

    from ftctl.cli import main
    from ftctl.slurm import scheduler

    out, run = slurm_job("6")
    out.write_text("6|PENDING||JobHeldUser|0|0|N/A|N/A|\n")
    got = CliRunner().invoke(main, ["logs", "6"])
    assert got.exit_code == 0 and "error" not in got.output, got.output
    assert got.stderr.strip() == (
        "ftctl: job 6 PENDING (JobHeldUser): queued, no output until it starts; held (sbatch --hold, or scontrol "
        "hold): `scontrol release 6` lets it start; `ftctl logs -f 6` waits for it and follows its log"
    ), got.stderr
    # -f says it waits, and why; it ends when the job does (released, then cancelled here before it starts)
    import threading

    said = []

    class Err:
        def write(self, text):
            said.append(text)

        def flush(self):
            pass

    monkeypatch.setattr("sys.stderr", Err())
    follower = threading.Thread(target=scheduler.logs, args=("6",), kwargs=dict(follow=True, poll_s=0.1,
                                path=run / "slurm-6.out"))  # fmt: skip
    follower.start()
    deadline = time.monotonic() + 10
    while not said and time.monotonic() < deadline:
        time.sleep(0.05)
    out.write_text("6|CANCELLED||None|0|0|N/A|N/A|\n")
    follower.join(10)
    assert "".join(said).startswith(
        "ftctl: job 6 PENDING (JobHeldUser): its log follows once it starts (Ctrl-C stops following); held (sbatch "
        "--hold, or scontrol hold): `scontrol release 6` lets it start"
    ), said
    assert scheduler.pending_why("7", "PartitionTimeLimit").startswith("Slurm does not start it while it waits: its")
    assert scheduler.pending_why("7", "ReqNodeNotAvail, UnavailableNodes:node1") is None


def test_the_signal_lead_warning_does_not_send_the_user_back_to_the_time_check():
    """Finding 10: `--time 00:02:00` is refused with the default signal_lead_s=120 ("lower -o signal_lead_s"); with
    -o signal_lead_s=60 a CPU lora of a 0.05 s step and a 0.4 MB adapter was warned "the save needs ~60 s: the step
    under way ends (up to 60 s, assumed) ... give it more: -o signal_lead_s=120" (60.0008 > 60): a circle. A need
    within a second of the lead is not warned; where the plan predicts a step, the step under way is twice that; a
    lead the fix names that the --time cannot hold says so, with --time."""
    from ftctl.preflight import check_signal_lead

    cpu = prepared(["signal_lead_s=60"], backend="slurm", method="lora", gpus="cpu", time="00:02:00",
                   model_name_or_path="HuggingFaceTB/SmolLM2-135M", output_dir="/f/o")  # fmt: skip
    assert cpu.plan.step_s is None and check_signal_lead(cpu.spec, cpu.plan) == []
    fft = prepared(["signal_lead_s=120"], backend="slurm", method="fft", gpus="8xA100-80GB", time="00:03:00",
                   model_name_or_path="meta-llama/Llama-3.1-8B", output_dir="/f/o")  # fmt: skip
    (found,) = check_signal_lead(fft.spec, fft.plan)
    assert f"(up to {2 * fft.plan.step_s:g} s: twice the plan's {fft.plan.step_s:g} s step)" in found.what
    assert found.fix == (
        "give it more: -o signal_lead_s=300, with a --time longer than that lead and Slurm's 60 s early signal "
        "(--time 00:03:00 is not: the job would save before it trains)."
    ), found.fix


def test_the_demo_a_run_names_itself_is_not_said_as_a_default_left_in():
    """Finding 12: `--data builtin:demo` given was warned "... trains on the demo's bundled conversations (builtin:demo,
    the default without --data)", and `--model` of the demo's given, "(what trains without --model)". Said only where
    it was left out."""
    from ftctl.preflight import check_demo_defaults
    from ftctl.spec import build

    demo = build({}).model_name_or_path
    named = build(None, flags={"model_name_or_path": demo, "data_path": "builtin:demo"})
    assert check_demo_defaults(named, "slurm") == []
    assert check_demo_defaults(build(None, flags={"model_name_or_path": "org/m", "data_path": "builtin:demo"}),
                               "slurm") == []  # fmt: skip
    (left,) = check_demo_defaults(build(None, flags={"model_name_or_path": demo}), "slurm")  # --data left out
    assert "the default without --data" in left.text and "without --model" not in left.text
    (left,) = check_demo_defaults(build(None, flags={"data_path": "builtin:demo"}), "sky")  # --model left out
    assert left.text.startswith(f"the model is the demo's {demo} (what trains without --model)")


def test_a_one_node_slurm_job_takes_a_free_rendezvous_port_and_render_says_what_it_does_not_check():
    """Finding 15: RDZV_PORT = 29501 + job id % 1000: two 1-node jobs ids 1000 apart on one node got one port, and the
    second joined the first's c10d store and failed when it ended. A one-node job's torchrun is standalone (a free
    port), as local, docker and one-node SkyPilot jobs are; a multi-node job keeps its head's port of its own.
    Finding 16: `ftctl render --partition short --time 5:00:00` printed a script that pends forever when sbatched by
    hand, silently; the script says that launch (and its --dry-run) check the partition's limits, render not."""
    one = prepared([], **FLAGS)
    assert "torchrun --standalone --nnodes 1" in one.text and "RDZV_PORT" not in one.text
    two = prepared([], **{**FLAGS, "gpus": "2x8xH100"})
    assert "RDZV_PORT=$((29501 + SLURM_JOB_ID % 1000))" in two.text and '"$HEAD_ADDR":"$RDZV_PORT"' in two.text
    assert one.text.splitlines()[2:4] == [
        "# Submit from the run directory (it holds spec.json): ftctl launch --backend slurm does that, once the job",
        "# is checked against the cluster's partitions and limits (launch --dry-run checks it; ftctl render does not).",
    ]


def test_status_of_a_requeued_attempt_loading_and_of_a_held_job(slurm_job):
    """Findings 9 and 11 in `ftctl status` (ftctl/slurm/backend.py): a requeued job's attempt 1, loading, was shown
    with attempt 0's steps as its own; a JobHeldUser job did not say `scontrol release`. Fake squeue, a real
    committed checkpoint and metrics.jsonl as the trainers write them."""
    import json

    from ftctl.backend import status_lines
    from ftctl.checkpoints.manifest import write_manifest

    out, run = slurm_job("2")
    (run / "spec.json").write_text(json.dumps({"spec": {"output_dir": str(run)}}))
    ckpt = run / "checkpoint-280"
    ckpt.mkdir()
    (ckpt / "adapter_model.safetensors").write_bytes(b"x" * 64)
    write_manifest(str(ckpt), 280, 1, "h")
    _metrics(run / "metrics.jsonl", (0, list(range(10, 290, 10)), True))
    out.write_text(f"2|RUNNING|node1|None|1|0|{time.strftime('%Y-%m-%dT%H:%M:%S')}|N/A|\n")
    said = "\n".join(status_lines("2"))
    assert (
        "attempt 1 starting: its trainer loads, then resumes from checkpoint-280; the step shown is an earlier "
        "attempt's"
    ) in said, said
    assert "its trainer stopped at checkpoint-280 on TERM" in said and " left" not in said, said
    out.write_text("2|PENDING||JobHeldUser|0|0|N/A|N/A|\n")
    said = "\n".join(status_lines("2"))
    assert "`scontrol release 2` lets it start; `ftctl logs -f 2` follows it once it starts" in said, said
