"""Rendered scripts are valid shell, and user values reach the programs intact without executing.

The hostile tests render with paths, model ids, images and env values that break naive quoting, then
run the rendered text in a real bash (or sh) with recording fakes of srun / scontrol / apptainer /
docker / torchrun first on PATH (tests/render_fixtures.py), and compare what the fakes received with
what was asked for.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import shlex
import subprocess
import sys

import pytest
import yaml

from ftctl import failures, hub, userconfig
from ftctl.backend import write_files
from ftctl.docker import engine as docker_engine
from ftctl.docker import render as docker_render
from ftctl.errors import FtctlError
from ftctl.launch import HF_CACHE_VARS
from tests.render_fixtures import (
    GOLDEN,
    HOSTILE,
    check_golden,
    fake_bin,
    make_spec,
    prepared,
    read_log,
    run_bash,
    write_model_config,
)

MODEL = "meta-llama/Llama-3.2-1B"
CONTAINERS = {
    "none": None,
    "apptainer": "apptainer:docker://ghcr.io/x/ftctl:cu124",
    "pyxis": "pyxis:nvcr.io#nvidia/pytorch:24.07-py3",
}


def _bash_n(path) -> None:
    r = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, f"{path}: {r.stderr}\n{path.read_text()}"


# ------------------------------------------------------------------------------------------ bash -n
SLURM_GPUS = [("1xA100", None), ("8xA100", None), ("2x8xH100", None), ("A100-80GB:8", 2), ("cpu", 2), ("cpu", None)]


@pytest.mark.parametrize("method", ["fft", "sft", "lora", "qlora"])
def test_every_sbatch_passes_bash_n(method, tmp_path):
    n = 0
    for (gpus, nodes), (cname, container), extras in itertools.product(SLURM_GPUS, CONTAINERS.items(), [False, True]):
        flags = dict(
            backend="slurm",
            method=method,
            gpus=gpus,
            nodes=nodes,
            container=container,
            model_name_or_path=MODEL,
            data_path="/data/conv.json",
            output_dir=str(tmp_path / "out"),
        )
        if extras:
            flags.update(
                partition="gpu",
                account="lab",
                qos="high",
                time="12:00:00",
                sbatch_args=["--mem=64G", "--exclusive", "--constraint=a100|h100"],
                setup=["module load cuda/12.4", 'source "/opt/my env/bin/activate"'],
            )
        more = ["env=WANDB_PROJECT=it's mine", "socket_ifname=ib0"] + ["host_memory_gb=64"] * (gpus == "cpu")
        prep = prepared(more if extras else [], **flags)  # a CPU plan within --mem (memory_request_gb)
        f = tmp_path / f"{n}.sbatch"
        f.write_text(prep.text)
        _bash_n(f)
        assert f"#SBATCH --nodes={prep.plan.nodes}" in prep.text
        assert ("#SBATCH --gres=gpu:" in prep.text) == (gpus != "cpu")
        assert ("--nv" in prep.text) == (cname == "apptainer" and gpus != "cpu")
        if extras:
            assert "#SBATCH --partition=gpu\n" in prep.text and "#SBATCH --mem=64G\n" in prep.text
            assert "\n{ module load cuda/12.4\n} || " in prep.text
        n += 1
    assert n == len(SLURM_GPUS) * len(CONTAINERS) * 2


def test_docker_and_local_commands_pass_bash_n(tmp_path):
    for i, (backend, gpus) in enumerate(
        [("docker", "1xL4"), ("docker", "8xA100"), ("local", "cpu"), ("local", "4xA100")]
    ):
        prep = prepared(
            backend=backend, gpus=gpus, method="qlora", model_name_or_path=MODEL, output_dir=str(tmp_path / f"out{i}")
        )
        for name, text in [("text", prep.text), *prep.files.items()]:
            if name.endswith(".json"):
                continue
            f = tmp_path / f"{i}-{name}"
            f.write_text(text)
            _bash_n(f)


# ------------------------------------------------------------------------------------------ slurm
@pytest.fixture
def hostile_paths(tmp_path, request):
    """A model directory, a data file and an output directory whose names hold the hostile value."""
    h = request.param
    model = write_model_config(tmp_path / f"model{h}")
    data_dir = tmp_path / f"data{h}"
    data_dir.mkdir()
    data = data_dir / f"conv{h}.json"
    data.write_text("[]")
    return h, model, data, tmp_path / f"out{h}"


def _no_injection(tmp_path, result) -> None:
    assert not list(tmp_path.rglob("PWNED")), "a hostile value was executed"
    assert "foo" not in result.stdout.splitlines(), "a hostile value was executed"


@pytest.mark.parametrize("container", list(CONTAINERS))
@pytest.mark.parametrize("hostile_paths", HOSTILE, indirect=True, ids=range(len(HOSTILE)))
def test_slurm_hostile_values_arrive_intact(hostile_paths, container, tmp_path, monkeypatch):
    h, model, data, out = hostile_paths
    hf_home = tmp_path / "hf"  # outside the home: bound into either container, and made before the step
    monkeypatch.setenv("HF_HOME", str(hf_home))
    image = None
    if container != "none":
        image = f"docker://ghcr.io/x/img{h}"
    prep = prepared(
        [f"env=HOSTILE_ENV={h}"],
        backend="slurm",
        method="lora",
        gpus="2x4xA100",
        model_name_or_path=str(model),
        data_path=str(data),
        output_dir=str(out),
        container=f"{container}:{image}" if image else None,
    )
    write_files(prep)
    run_dir = prep.run_dir
    assert run_dir == out
    fakes, log = fake_bin(tmp_path / "bin"), tmp_path / "calls.jsonl"
    r = run_bash(
        None,
        file=run_dir / "job.sbatch",
        cwd=run_dir,
        fakes=fakes,
        log=log,
        env={"SLURM_SUBMIT_DIR": str(run_dir), "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "node[1-2]"},
    )
    assert r.returncode == 0, r.stderr + r.stdout
    assert "status complete" in r.stdout
    _no_injection(tmp_path, r)

    calls = {c["prog"]: c for c in read_log(log)}
    assert calls["scontrol"]["argv"] == ["show", "hostnames", "node[1-2]"]
    tr = calls["torchrun"]
    # this test's parametrized cases run at once on CI's workers, each a job 4242: one may hold 29743's lock (the
    # script keeps it to its end, /var/tmp/ftctl-rdzv-PORT.lock) while another probes it, and take the next port
    endpoint = tr["argv"][7]
    assert endpoint.startswith("node1:") and 29743 <= int(endpoint.split(":")[1]) < 29743 + 16, endpoint
    assert tr["argv"] == [
        "--nnodes",
        "2",
        "--nproc-per-node",
        "4",
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        endpoint,  # rdzv_port + 1 + SLURM_JOB_ID % 1000, or the next free one above it
        "--rdzv-id",
        f"{prep.spec.name}-4242",
        "--rdzv-conf",
        "read_timeout=600",  # a node waits for the first one's store (explore48)
        "-m",
        "ftctl.trainer",
        "--spec",
        f"{run_dir}/spec.json",
    ]
    assert tr["env"]["HOSTILE_ENV"] == h
    assert tr["env"]["FTCTL_RUN_DIR"] == str(run_dir)
    assert tr["env"]["FTCTL_STATUS_FILE"] == f"{run_dir}/status.4242.0"
    shipped = json.loads((run_dir / "spec.json").read_text())["spec"]
    assert (shipped["model_name_or_path"], shipped["data_path"], shipped["output_dir"]) == (
        str(model),
        str(data),
        str(out),
    )

    binds = sorted({str(model), str(data.parent), str(out)} | ({str(hf_home)} if container != "none" else set()))
    assert hf_home.is_dir() == (container != "none")
    srun = calls["srun"]["argv"]
    if container == "apptainer":
        ap = calls["apptainer"]["argv"]
        assert ap[:2] == ["exec", "--nv"]
        assert ap[ap.index("bash") - 1] == image
        got = [ap[i + 1] for i, a in enumerate(ap[: ap.index("bash")]) if a == "--bind"]
        assert got == [str(run_dir), *binds]
    elif container == "pyxis":
        assert f"--container-image={image.replace('ghcr.io/', 'ghcr.io#', 1)}" in srun  # enroot's registry form
        mounts = ",".join(f"{p}:{p}" for p in [str(run_dir), *binds])
        assert f"--container-mounts={mounts}" in srun
    else:
        assert "apptainer" not in calls
        assert not any(a.startswith("--container") for a in srun)


def test_two_slurm_jobs_on_one_node_have_a_rendezvous_each(tmp_path):
    """Two 1-GPU jobs on one 8-GPU node: each torchrun (and its network preflight) is standalone, on a free port of
    its own (ids 1000 apart shared 29501 + id % 1000, and the second joined the first's TCPStore and failed when it
    ended: explore61 finding 15, test_slurm292); a multi-node job listens on a port and joins a rendezvous id of its
    own job, the preflight's id apart from the training's, at the same port."""
    fakes = fake_bin(tmp_path / "bin")

    def seen(prep, job):
        log = tmp_path / f"calls{job}.{prep.plan.nodes}.jsonl"
        env = {"SLURM_SUBMIT_DIR": str(tmp_path), "SLURM_JOB_ID": job, "SLURM_JOB_NODELIST": "node1"}
        r = run_bash(prep.text, cwd=tmp_path, fakes=fakes, log=log, env=env)
        assert r.returncode == 0, r.stderr
        probe, train = [c["argv"] for c in read_log(log) if c["prog"] == "torchrun"]
        assert probe[probe.index("-m") + 1] == "ftctl.trainer.netcheck"
        return [a[: a.index("-m")] for a in (probe, train)]

    flags = dict(backend="slurm", model_name_or_path=MODEL, output_dir="/fixed/o")
    one = prepared(["preflight_network=true"], gpus="1xA100", **flags)
    for job in ("4242", "5242"):
        assert seen(one, job) == [["--standalone", "--nnodes", "1", "--nproc-per-node", "1"]] * 2
    two = prepared(["preflight_network=true"], gpus="2x1xA100", **flags)
    name = two.spec.name
    for job, port in (("4242", 29743), ("5243", 29744)):
        rdzv = [(a[a.index("--rdzv-endpoint") + 1], a[a.index("--rdzv-id") + 1]) for a in seen(two, job)]
        assert rdzv == [(f"node1:{port}", f"{name}-netcheck-{job}"), (f"node1:{port}", f"{name}-{job}")]
    with pytest.raises(FtctlError, match=r"rdzv_port=65000: .* use -o rdzv_port=64535 or less"):
        prepared(["rdzv_port=65000"], backend="slurm", gpus="2x1xA100", model_name_or_path=MODEL, output_dir="/f/o")


def test_a_failing_setup_line_stops_the_slurm_job_before_training(tmp_path):
    """A missing activate script (or a failed `module load`) was skipped and the job trained on with another
    python; now the job ends there, says so, and leaves its status word; setup that succeeds runs on as before."""
    fakes = fake_bin(tmp_path / "bin")
    env = {"SLURM_SUBMIT_DIR": str(tmp_path), "SLURM_JOB_ID": "77", "SLURM_JOB_NODELIST": "node1"}
    flags = dict(backend="slurm", gpus="1xA100", model_name_or_path=MODEL, output_dir="/fixed/o")
    bad = prepared(["setup=echo first", "setup=source /no/such/venv/bin/activate", "setup=echo never"], **flags)
    r = run_bash(bad.text, cwd=tmp_path, fakes=fakes, log=tmp_path / "bad.jsonl", env=env)
    assert r.returncode != 0 and "first" in r.stdout and "never" not in r.stdout, (r.stdout, r.stderr)
    said = failures.error_line(r.stdout + r.stderr)  # what `ftctl status` says of the failed job
    assert said == "a setup line failed: source /no/such/venv/bin/activate (exit 1): not training; fix -o setup=..."
    assert not [c for c in read_log(tmp_path / "bad.jsonl") if c["prog"] == "torchrun"]
    assert (tmp_path / "status.77.0").read_text().strip() == "failed"
    with pytest.raises(FtctlError, match=r"setup line 'module load \\\\' continues on the next"):
        prepared(["setup=module load \\"], **flags)
    good = prepared(["setup=echo first", "setup=# a comment", "setup=", "setup=true"], **flags)
    r = run_bash(good.text, cwd=tmp_path, fakes=fakes, log=tmp_path / "good.jsonl", env=env)
    assert r.returncode == 0 and [c for c in read_log(tmp_path / "good.jsonl") if c["prog"] == "torchrun"], r.stderr


def test_usr2_during_the_setup_lines_is_a_checkpoint_request_not_the_jobs_end(tmp_path):
    """Slurm's USR2 (a time limit's or a preemption's notice) while a setup line ran ended the batch shell, by bash's
    default action: no checkpoint, no requeue, an empty log. The trap is set before them now."""
    import signal
    import time

    fakes = fake_bin(tmp_path / "bin")
    env = {"SLURM_SUBMIT_DIR": str(tmp_path), "SLURM_JOB_ID": "81", "SLURM_JOB_NODELIST": "node1"}
    setup = ["setup=touch started; sleep 2"]
    prep = prepared(setup, backend="slurm", gpus="1xA100", model_name_or_path=MODEL, output_dir="/f/o")
    full = {"PATH": f"{fakes}:/usr/bin:/bin", "FAKE_LOG": str(tmp_path / "log.jsonl"), "HOME": str(tmp_path), **env}
    proc = subprocess.Popen(["bash", "-c", prep.text], cwd=tmp_path, env=full, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not (tmp_path / "started").exists() and time.monotonic() < deadline:  # the setup line is running
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR2)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "USR2 (time limit or preemption): checkpointing" in out, out
    assert (tmp_path / "stop.81.0").exists()  # what the trainer reads at its first step: save, stop, requeue
    assert [c for c in read_log(tmp_path / "log.jsonl") if c["prog"] == "torchrun"]


def _signalled_while_training(tmp_path, prep, env: dict, sig, then=None) -> tuple[int, str, list]:
    """Run a rendered Slurm script with the fakes (their torchrun trains FAKE_SLEEP seconds), send ``sig`` to the
    batch shell once the step is training, and ``then`` once it waits for its time limit; (exit code, stdout, the
    fakes' records)."""
    import time

    fakes, log = fake_bin(tmp_path / "bin"), tmp_path / f"log.{env['SLURM_JOB_ID']}.jsonl"
    full = {"PATH": f"{fakes}:/usr/bin:/bin", "FAKE_LOG": str(log), "HOME": str(tmp_path), "FAKE_SLEEP": "2", **env}
    proc = subprocess.Popen(["bash", "-c", prep.text], cwd=tmp_path, env=full, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not [c for c in read_log(log) if c["prog"] == "torchrun"] and time.monotonic() < deadline:
        time.sleep(0.05)  # the step is training
    proc.send_signal(sig)
    said = []
    for line in proc.stdout if then is not None else ():
        said.append(line)
        if line.startswith("ftctl: waiting for the time limit"):
            proc.send_signal(then)
            break
    out, _ = proc.communicate(timeout=30)
    return proc.returncode, "".join(said) + out, read_log(log)


def test_a_set_e_setup_line_does_not_end_the_job_at_its_time_limit_signal(tmp_path):
    """`-o setup='set -e'` (a habit of scripts) stayed on for the rest of the Slurm script: the USR2 that interrupts
    its wait for the step (wait returns 140) ended the batch shell there, the trainer killed mid-checkpoint and the
    job never requeued. The script's own errexit comes back after the setup lines."""
    import signal

    env = {"SLURM_SUBMIT_DIR": str(tmp_path), "SLURM_JOB_ID": "82", "SLURM_JOB_NODELIST": "node1"}
    prep = prepared(["setup=set -e"], backend="slurm", gpus="1xA100", model_name_or_path=MODEL, output_dir="/f/o")
    rc, out, records = _signalled_while_training(tmp_path, prep, env, signal.SIGUSR2)
    assert rc == 0 and "ftctl: requeueing job 82" in out, out
    assert [c["argv"] for c in records if c["prog"] == "scontrol"][-1] == ["requeue", "82"]


def test_sigterm_to_the_batch_script_checkpoints_and_does_not_requeue(tmp_path):
    """A cancel, or a preemption at a site that sends SIGTERM and not the --signal one, reached the batch shell,
    which died at once: the job ended, its step killed mid-step with no checkpoint, its GraceTime unused. The
    script asks the trainer for its checkpoint, waits for it, and leaves requeueing to Slurm (a cancel is meant)."""
    import signal

    env = {"SLURM_SUBMIT_DIR": str(tmp_path), "SLURM_JOB_ID": "83", "SLURM_JOB_NODELIST": "node1"}
    prep = prepared([], backend="slurm", gpus="1xA100", model_name_or_path=MODEL, output_dir="/f/o")
    rc, out, records = _signalled_while_training(tmp_path, prep, env, signal.SIGTERM)
    assert rc == 143 and "ftctl: TERM (a cancel, a requeue or a preemption): checkpointing" in out, out
    assert "not requeueing" not in out  # Slurm's own requeue (scontrol requeue, a node failure) follows a TERM too
    assert "ftctl: trainer exited with 0, status preempted" in out  # it waited for the step's checkpoint
    # the line says what happens next either way: Slurm's requeue resumes by itself, a cancel by the same launch
    assert (
        "ftctl: stopped by TERM at the checkpoint above; where Slurm requeues this job (a requeue, a node failure, a "
        "preemption) it resumes by itself, else (a cancel) the same ftctl launch resumes it"
    ) in out, out
    assert (tmp_path / "stop.83.0").exists() and not [c for c in records if c["argv"][:1] == ["requeue"]]
    # before the trainer's first step (loading the model): stopped, not a step that "failed before the trainer said"
    env |= {"SLURM_JOB_ID": "84", "FAKE_STATUS": "failed"}
    rc, out, _ = _signalled_while_training(tmp_path, prep, env, signal.SIGTERM)
    assert rc == 143 and "ftctl: stopped by TERM (exit 0) before a checkpoint of this attempt" in out, out
    assert "error:" not in out


def test_a_term_during_a_setup_line_is_a_stop_not_a_broken_line(tmp_path):
    """A cancel or preemption while a setup line ran (a long pip install) killed it, and the script said "a setup
    line failed ... fix -o setup=" and wrote the status failed: `ftctl status` blamed the user's line."""
    import signal
    import time

    fakes = fake_bin(tmp_path / "bin")
    env = {"SLURM_SUBMIT_DIR": str(tmp_path), "SLURM_JOB_ID": "85", "SLURM_JOB_NODELIST": "node1"}
    prep = prepared(["setup=touch started; sleep 20"], backend="slurm", gpus="1xA100", model_name_or_path=MODEL)
    full = {"PATH": f"{fakes}:/usr/bin:/bin", "FAKE_LOG": str(tmp_path / "log.jsonl"), "HOME": str(tmp_path), **env}
    proc = subprocess.Popen(
        ["bash", "-c", prep.text], cwd=tmp_path, env=full, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    deadline = time.monotonic() + 30
    while not (tmp_path / "started").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)  # as Slurm signals every process of the job
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 143 and "ftctl: stopped by TERM during the setup lines" in out, out
    assert "error:" not in out and not (tmp_path / "status.85.0").exists()


def test_a_setup_line_bash_cannot_parse_is_refused_before_the_queue_wait():
    """`-o setup='echo a &&'` rendered, was submitted, and failed on the node after the queue wait with no error line
    for `ftctl status`. Refused at render, with bash's words for the line."""
    flags = dict(backend="slurm", gpus="1xA100", model_name_or_path=MODEL, output_dir="/f/o")
    for line, said in [("echo a &&", "unexpected end of file"), ('echo "x', "looking for matching")]:
        with pytest.raises(FtctlError, match=f"setup line {re.escape(repr(line))} is not a whole shell command") as e:
            prepared([f"setup={line}"], **flags)
        assert said in str(e.value) and "\n" not in str(e.value)
    assert "echo a && echo b" in prepared(["setup=echo a && echo b"], **flags).text


def test_a_slurm_job_that_ends_without_the_trainers_error_says_why(tmp_path):
    """srun or the container failing before the trainer started (an image that cannot be pulled) left the job's
    status at "exit 3": the script says what failed, in the line `ftctl status` reads; so do a requeue Slurm refuses
    and the last requeue allowed."""
    fakes = fake_bin(tmp_path / "bin")
    env = {"SLURM_SUBMIT_DIR": str(tmp_path), "SLURM_JOB_ID": "78", "SLURM_JOB_NODELIST": "node1"}
    prep = prepared(["container=apptainer:/img/ftctl.sif"], backend="slurm", gpus="1xA100", model_name_or_path=MODEL)
    r = run_bash(
        prep.text, cwd=tmp_path, fakes=fakes, log=tmp_path / "log.jsonl", env={**env, "FAKE_FAIL": "apptainer"}
    )
    assert r.returncode == 3 and "apptainer: failed" in r.stderr, (r.stdout, r.stderr)
    assert failures.error_line(r.stdout + r.stderr).startswith("the job step exited with 3 before the trainer said how")
    r = run_bash(prep.text, cwd=tmp_path, fakes=fakes, log=tmp_path / "ok.jsonl", env=env)  # the trainer said it
    assert r.returncode == 0 and failures.error_line(r.stdout + r.stderr) is None, (r.stdout, r.stderr)
    # preempted: a requeue Slurm refuses is said as such, not as the requeue limit
    stopped = {**env, "FAKE_STATUS": "preempted", "SLURM_JOB_ID": "79"}
    r = run_bash(
        prep.text, cwd=tmp_path, fakes=fakes, log=tmp_path / "rq.jsonl", env={**stopped, "FAKE_FAIL": "scontrol"}
    )
    assert r.returncode == 1 and failures.error_line(r.stdout).startswith("scontrol requeue failed (exit 3;"), r.stdout
    last = {**stopped, "SLURM_JOB_ID": "80", "SLURM_RESTART_COUNT": "5"}
    r = run_bash(prep.text, cwd=tmp_path, fakes=fakes, log=tmp_path / "last.jsonl", env=last)
    assert r.returncode == 1 and failures.error_line(r.stdout).startswith("not requeueing: max_requeues=5 reached"), (
        r.stdout
    )
    # stopped at a checkpoint with no USR2 (nor the store's exit): the time limit is not blamed (test_render's
    # test_the_last_requeue_names_what_ended_the_attempt has the others)
    assert failures.error_line(r.stdout).endswith(
        "stopped at a checkpoint (exit 0) without Slurm's time-limit notice (USR2), so its time limit did not end it: "
        "allow more requeues with -o max_requeues=N; the same ftctl launch resumes from the last checkpoint"
    ), r.stdout


def test_the_last_requeue_names_what_ended_the_attempt(tmp_path):
    """max_requeues reached: the line blamed the time limit (raise --time) however the attempts ended. A store down at
    each requeued start ends the trainer as a preempted run with exit 75 (ftctl.lease): said as the store, from srun's
    exit or, where srun says another node's (137), from ftctl's torchrun line in this attempt's log; a USR2 long
    before --time's notice is a preemption; a USR2 at it, the time limit."""
    import signal

    env = {"SLURM_SUBMIT_DIR": str(tmp_path), "SLURM_JOB_NODELIST": "node1", "SLURM_RESTART_COUNT": "1"}
    flags = dict(backend="slurm", gpus="1xA100", model_name_or_path=MODEL, output_dir="/f/o")
    hour = prepared(["max_requeues=1", "signal_lead_s=60"], time="01:00:00", **flags)
    store = "the last attempt ended because the object store did not answer (exit 75: the trainer's error above"
    fakes = fake_bin(tmp_path / "down")
    (fakes / "python3").write_text(  # the trainer that waited for the store, then ended as a preempted run
        '#!/bin/sh\necho preempted > "$FTCTL_STATUS_FILE"\n'
        'echo "ftctl: torchrun: rank 0 on node1 exited with 75; its error is above" >&2\nexit "$FAKE_RC"\n'
    )
    for job, rc in (("90", "75"), ("91", "137")):
        log = tmp_path / f"slurm-{job}.out"  # where Slurm appends the attempt's output
        with log.open("a") as out:
            r = subprocess.run(
                ["bash", "-c", hour.text],
                cwd=tmp_path,
                env={
                    **env,
                    "SLURM_JOB_ID": job,
                    "FAKE_RC": rc,
                    "FAKE_LOG": str(tmp_path / "f.jsonl"),
                    "PATH": f"{fakes}:/usr/bin:/bin",
                },  # fmt: skip
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=60,
            )
        said = failures.error_line(log.read_text())
        assert r.returncode == 1 and store in said and "--time" in said and "raise --time" not in said, said
    # USR2 one second into a one-hour --time: a preemption
    rc, out, _ = _signalled_while_training(tmp_path, hour, {**env, "SLURM_JOB_ID": "92"}, signal.SIGUSR2)
    assert rc == 1 and failures.error_line(out) == (
        "not requeueing: max_requeues=1 reached; the last attempt was stopped by Slurm's USR2 1 s after it started, "
        "long before its time limit (--time 01:00:00, whose notice comes 60 s before it): a preemption (or a USR2 "
        "sent by hand), so a longer --time would not help: allow more requeues with -o max_requeues=N; the same "
        "ftctl launch resumes from the last checkpoint"
    ).replace(" 1 s after", f" {_usr2_at(out)} s after"), out
    # USR2 at a two-minute --time's notice: the time limit, which a longer --time lengthens
    # (the script then waits for the time limit's TERM, which ends the job as TIMEOUT: test_slurm292)
    short = prepared(["max_requeues=1", "signal_lead_s=60"], time="00:02:00", **flags)
    rc, out, _ = _signalled_while_training(
        tmp_path, short, {**env, "SLURM_JOB_ID": "93"}, signal.SIGUSR2, then=signal.SIGTERM
    )
    assert rc == 143 and failures.error_line(out) == (
        "not requeueing: max_requeues=1 reached; the last attempt was cut by its time limit (--time 00:02:00) and "
        "stopped at the checkpoint above: raise --time, or allow more requeues with -o max_requeues=N; the same ftctl "
        "launch resumes from the last checkpoint"
    ), out


def _usr2_at(out: str) -> str:
    return re.search(r"USR2 (\d+) s after", out).group(1)


def test_a_slurm_job_whose_trainer_said_why_it_stopped_is_not_guessed_out_of_memory(tmp_path):
    """A trainer on a full disk prints its own disk line but cannot write its status word; the script added its
    guess (out of memory?) as the attempt's last error line, the one `ftctl status` shows. Now a step that said why
    in an error line of this attempt is pointed at; an attempt that said nothing still gets the guess (an earlier
    attempt's line in the appended log does not count)."""
    fakes = fake_bin(tmp_path / "bin")
    (fakes / "python3").write_text('#!/bin/sh\n[ -z "$FAKE_SAID" ] || echo "$FAKE_SAID" >&2\nexit 1\n')
    prep = prepared([], backend="slurm", gpus="1xA100", model_name_or_path=MODEL)
    log = tmp_path / "slurm-90.out"  # where Slurm appends every attempt's output (--open-mode=append)
    disk = "error: no space left on the disk of /runs/r1: saving failed with 0 B free, and one save needs ~3 GB; ..."
    for attempt, said in enumerate([disk, "", disk]):
        env = {"SLURM_SUBMIT_DIR": str(tmp_path), "SLURM_JOB_ID": "90", "SLURM_JOB_NODELIST": "node1"}
        env.update(SLURM_RESTART_COUNT=str(attempt), FAKE_SAID=said, FAKE_LOG=str(tmp_path / "fakes.jsonl"))
        with log.open("a") as out:
            r = subprocess.run(
                ["bash", "-c", prep.text],
                cwd=tmp_path,
                env={**env, "PATH": f"{fakes}:/usr/bin:/bin"},
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=60,
            )
        text = log.read_text()
        assert r.returncode == 1, text
        if said:
            assert failures.error_line(text) == disk[len("error: ") :], text
            assert text.endswith(
                "exited with 1; the error above says why\nftctl: trainer exited with 1, status failed\n"
            )
        else:
            assert failures.error_line(text).startswith("the job step exited with 1 before the trainer said how it"), (
                text
            )


@pytest.mark.parametrize("container", ["apptainer", "pyxis"])
@pytest.mark.parametrize("sep", [",", ":"])
def test_container_bind_paths_with_separators_are_refused(container, sep, tmp_path):
    out = tmp_path / f"out{sep}x"
    with pytest.raises(FtctlError, match="separators"):
        prepared(
            backend="slurm", gpus="1xA100", model_name_or_path=MODEL, output_dir=str(out), container=f"{container}:img"
        )
    # without a container the path is only ever a quoted shell word
    prepared(backend="slurm", gpus="1xA100", model_name_or_path=MODEL, output_dir=str(out))


@pytest.mark.parametrize("key", ["partition", "account", "qos", "time"])
@pytest.mark.parametrize("value", ["gpu a", "gpu;touch PWNED", "$(touch PWNED)", "a\nb", "'gpu'", 'g"pu', "`x`"])
def test_values_slurm_parses_itself_are_refused(key, value):
    # a time limit is read first as one (spec.slurm_time_s): none of these is
    said = "Slurm reads minutes, MM:SS" if key == "time" else "Slurm reads #SBATCH values itself"
    with pytest.raises(FtctlError, match=said) as e:
        prepared(backend="slurm", gpus="1xA100", model_name_or_path=MODEL, output_dir="/fixed/out", **{key: value})
    assert (f"time={value!r}" if key == "time" else f"--{key}") in str(e.value)


@pytest.mark.parametrize(
    "arg", ["--mem=64G --exclusive", "mem=64G", "--comment=$(touch PWNED)", "--x\n--y", "--comment=a b"]
)
def test_sbatch_args_that_slurm_would_misread_are_refused(arg):
    with pytest.raises(FtctlError, match="sbatch-arg|Slurm reads"):
        prepared(backend="slurm", gpus="1xA100", model_name_or_path=MODEL, output_dir="/fixed/out", sbatch_args=[arg])


@pytest.mark.parametrize(
    ("arg", "own", "said"),
    [
        ("--nodes=3", "nodes", "use --nodes (or --gpus NxGxTYPE), which torchrun's --nnodes follows"),
        ("--node=3", "nodes", "use --nodes"),  # sbatch takes an unambiguous abbreviation too
        ("--no-requeue", "no-requeue", "-o max_requeues=N says how often a preempted job is requeued (0: never)"),
        ("--requeue", "requeue", "-o max_requeues=N"),
        ("--signal=B:USR1@60", "signal", "use -o signal_lead_s=N"),
        ("--time=1:00:00", "time", "use --time"),
        ("--gpus=2", "gpus", "use --gpus"),
        ("--gpus-per-node=a100:2", "gpus-per-node", "use --gpus"),
        ("--gpus-per-task=1", "gpus-per-task", "use --gpus"),
        ("--gres=gpu:a100:2", "gres", "use --gpus"),
        ("--gres=nvme:1,gpu:2", "gres", "use --gpus"),
        ("--ntasks-per-node=8", "ntasks-per-node", "ftctl runs one task a node"),
        ("--ntasks=8", "ntasks", "ftctl runs one task a node"),
        ("--tasks-per-node=2", "tasks-per-node", "ftctl runs one task a node"),
        ("--error=err-%j.txt", "error", "every attempt appends to slurm-JOBID.out"),
        ("--array=0-3", "array", "one job trains one run: several array tasks"),
        (
            "--output=/tmp/x.out",
            "output",
            "every attempt appends to slurm-JOBID.out in the run directory, where `ftctl logs` reads it",
        ),
        ("--open-mode=truncate", "open-mode", "every attempt appends to slurm-JOBID.out"),
        ("--job-name=x", "job-name", "name the run with -o run_name=NAME"),
        ("--partition=gpu", "partition", "use --partition"),
        ("--account=lab", "account", "use --account"),
        ("--qos=high", "qos", "use --qos"),
        ("--cpus-per-task=4", "cpus-per-task", "use -o cpus_per_task=N"),
    ],
)
def test_sbatch_args_that_override_ftctls_own_directives_are_refused(arg, own, said):
    """Slurm takes the last of two values: --sbatch-arg=--nodes=3 would start 3 nodes for a torchrun of --nnodes 1,
    --no-requeue would end preemption's requeue. Each is refused with the flag or key that sets it."""
    with pytest.raises(FtctlError) as e:
        prepared(backend="slurm", gpus="1xA100", model_name_or_path=MODEL, output_dir="/fixed/out", sbatch_args=[arg])
    writes = "leaves #SBATCH --{} out on purpose" if own in ("error", "array") else "writes #SBATCH --{} itself, and "
    assert str(e.value).startswith(f"--sbatch-arg={arg}: ftctl {writes.format(own)}")
    assert f"; {said}" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("arg", ["--export=NONE", "--export=HF_HOME,PATH", "--export=nil"])
def test_an_export_that_drops_the_shells_environment_is_refused(arg, monkeypatch):
    """--export=NONE started the job without the PATH whose python3 runs the trainer, or the secrets it names
    (HF_TOKEN): it failed on the node, minutes later, with "ftctl: not found" or a 401. SBATCH_EXPORT=NONE in the
    launching shell (some clusters' profiles set it) did the same from outside the script."""
    from ftctl.backend import get

    with pytest.raises(FtctlError) as e:
        prepared(backend="slurm", gpus="1xA100", model_name_or_path=MODEL, output_dir="/fixed/out", sbatch_args=[arg])
    assert str(e.value).startswith(f"--sbatch-arg={arg}: the job would start without this shell's environment")
    assert "--sbatch-arg=--export=ALL,NAME=VALUE" in str(e.value)
    prep = prepared(backend="slurm", gpus="1xA100", model_name_or_path=MODEL, output_dir="/fixed/out")
    monkeypatch.setenv("SBATCH_EXPORT", "NONE")
    with pytest.raises(FtctlError, match=r"^SBATCH_EXPORT=NONE: the job would start .*; or `unset SBATCH_EXPORT`"):
        get("slurm").check(prep)


def test_sbatch_args_ftctl_does_not_write_pass_through():
    args = ["--mem=64G", "--exclusive", "--constraint=a100|h100", "--gres=nvme:1", "--nodelist=n1", "--time-min=60"]
    args += ["--export=ALL,NCCL_DEBUG=INFO"]
    text = prepared(
        backend="slurm", gpus="1xA100", model_name_or_path=MODEL, output_dir="/fixed/out", sbatch_args=args
    ).text
    assert all(f"\n#SBATCH {a}\n" in text for a in args if not a.startswith("--gres"))
    # a GRES of another kind joins ftctl's GPU line: of two --gres lines sbatch keeps the last (the GPUs dropped)
    assert "\n#SBATCH --gres=gpu:1,nvme:1\n" in text and text.count("--gres") == 1


@pytest.mark.parametrize("name", ["my run", "a;b", "$(touch PWNED)", "-lead", "x" * 64, "a\nb"])
def test_hostile_job_names_are_refused(name):
    with pytest.raises(FtctlError, match="run_name"):
        make_spec(backend="slurm", gpus="1xA100", run_name=name)


def test_slurm_hostile_model_ids_arrive_intact(tmp_path):
    fakes = fake_bin(tmp_path / "bin")
    for i, h in enumerate(HOSTILE):
        prep = prepared(
            ["model_params=1b"],
            backend="slurm",
            gpus="1xA100",
            model_name_or_path=f"org/m{h}",
            output_dir=str(tmp_path / f"out{i}"),
        )
        write_files(prep)
        assert prep.text.count("\n#SBATCH --job-name=") == 1
        log = tmp_path / f"calls{i}.jsonl"
        r = run_bash(
            None,
            file=prep.run_dir / "job.sbatch",
            cwd=prep.run_dir,
            fakes=fakes,
            log=log,
            env={"SLURM_SUBMIT_DIR": str(prep.run_dir), "SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "n1"},
        )
        assert r.returncode == 0, r.stderr
        _no_injection(tmp_path, r)
        assert [c["prog"] for c in read_log(log)] == ["scontrol", "srun", "torchrun"]
        shipped = json.loads((prep.run_dir / "spec.json").read_text())["spec"]
        assert shipped["model_name_or_path"] == f"org/m{h}"


def test_derived_job_name_from_a_hostile_model_is_safe():
    prep = prepared(
        ["model_params=1b"],
        backend="slurm",
        gpus="1xA100",
        model_name_or_path="org/M$(touch PWNED)`x`;\n 'q'",
        output_dir="/fixed/out",
    )
    assert "#SBATCH --job-name=ftctl-lora-m-touch-pwned-x-q\n" in prep.text


def test_container_none_means_no_container():
    args = dict(backend="slurm", gpus="1xA100", model_name_or_path=MODEL, output_dir="/fixed/out")
    assert prepared(container="none", **args).text == prepared(**args).text


@pytest.mark.parametrize("backend", ["slurm", "sky", "docker"])
def test_cpu_threads_are_the_trainers_unless_the_user_chose_omp_num_threads(backend):
    """torchrun gives each of several processes one thread unless OMP_NUM_THREADS is set: the scripts ask the
    trainer to share the node's cores instead (distributed.cpu_threads), or pass the user's own value."""
    args = dict(backend=backend, gpus="8xA100", model_name_or_path=MODEL, output_dir="s3://b/out")
    auto, own = prepared(**args).text, prepared(["env=OMP_NUM_THREADS=6"], **args).text
    # Slurm: torchrun's own 1 where unset, set before it runs (its banner unsaid); the trainer's share replaces it
    torchruns = 'export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"'
    assert "FTCTL_CPU_THREADS" in auto and "OMP_NUM_THREADS" not in auto.replace(torchruns, "")
    assert "FTCTL_CPU_THREADS" not in own and "OMP_NUM_THREADS" in own and "6" in own


@pytest.mark.parametrize("backend", ["slurm", "sky"])
def test_offload_plans_ask_for_the_host_memory_they_need(backend):
    """ZeRO-Offload keeps ~20 B/param in host RAM (plan.offload_host_gb): the job asks for it (a Slurm job's
    memory, a cloud instance's RAM) instead of dying in the OOM killer (bench/NOTES.md v29); a user's own
    --mem wins; a plan without offload asks for nothing."""
    args = dict(backend=backend, method="fft", gpus="1xA100-80GB", model_name_or_path="lmsys/vicuna-7b-v1.5")
    args["output_dir"] = "s3://b/o"
    r = prepared(**args)
    assert r.plan.strategy == "zero2_offload"
    gib = math.ceil(r.plan.host_memory_gb * 1e9 / 2**30)  # Slurm's G and SkyPilot's memory: are GiB
    assert (f"#SBATCH --mem={gib}G" if backend == "slurm" else f"memory: {gib}+") in r.text
    plain = prepared(**{**args, "model_name_or_path": MODEL})
    assert plain.plan.host_memory_gb is None and "memory:" not in plain.text
    # a Slurm job asks for what its processes hold as they load the model (tests/test_slurm_batch135.py)
    assert ("# --mem=" in plain.text and "loading the model" in plain.text) == (backend == "slurm")
    if backend == "slurm":
        own = prepared(sbatch_args=["--mem-per-cpu=30G"], **args).text  # 8 CPUs a GPU: 240 GiB
        assert "#SBATCH --mem-per-cpu=30G" in own and "--mem=" not in own
        assert "#SBATCH --mem=0\n" in prepared(sbatch_args=["--mem=0"], **args).text  # all of the node's
        # one below what the offload keeps in host RAM was written as given: the job died in the OOM killer
        for low in ("--mem=64G", "--mem=65536", "--mem-per-cpu=4G"):
            with pytest.raises(FtctlError, match=f"--sbatch-arg={low}: the zero2_offload plan keeps ~.* --mem={gib}G"):
                prepared(sbatch_args=[low], **args)


def test_a_cpu_job_asks_slurm_for_the_memory_its_plan_needs():
    """A CPU job asked for no memory: a partition's DefMemPerCPU gave it a few GB and the OOM killer stopped it.
    SkyPilot's CPU task asks the same (tests/test_sky_yaml.py)."""
    args = dict(backend="slurm", method="lora", gpus="cpu", nodes=2, output_dir="/fixed/out")
    r = prepared(**args)
    gib = math.ceil(r.plan.memory_gb * 1e9 / 2**30)  # one process a node
    assert r.plan.tier is None and f"#SBATCH --mem={gib}G\n" in r.text
    with pytest.raises(
        FtctlError, match=r"--mem=8G: the ddp plan keeps ~.* \(training on CPU\).* -o host_memory_gb=8\."
    ):
        prepared(sbatch_args=["--mem=8G"], **args)
    within = prepared(["host_memory_gb=8"], sbatch_args=["--mem=8G"], **args)
    assert within.plan.memory_gb <= 8 and "#SBATCH --mem=8G\n" in within.text


def test_singularity_and_enroot_prefixes_are_apptainer_and_pyxis():
    """--container singularity:/x.sif was read as a docker image and answered "say how to run it:
    apptainer:singularity:/x.sif"; enroot: likewise."""
    sif = prepared(backend="slurm", gpus="1xA100", output_dir="/fixed/out", container="singularity:docker://x/y:1")
    assert " apptainer exec --nv " in sif.text and " docker://x/y:1 bash -c " in sif.text
    sqsh = prepared(backend="slurm", gpus="1xA100", output_dir="/fixed/out", container="enroot:/images/x.sqsh")
    assert "--container-image=/images/x.sqsh" in sqsh.text


def test_docker_container_mode_is_refused_on_slurm():
    with pytest.raises(FtctlError, match="apptainer:img.*pyxis:img"):
        prepared(
            backend="slurm", gpus="1xA100", model_name_or_path=MODEL, output_dir="/fixed/out", container="docker:img"
        )


# ------------------------------------------------------------------------------------------ docker
@pytest.mark.parametrize("hostile_paths", HOSTILE, indirect=True, ids=range(len(HOSTILE)))
def test_docker_hostile_values_arrive_intact(hostile_paths, tmp_path):
    h, model, data, out = hostile_paths
    prep = prepared(
        [f"env=HOSTILE_ENV={h}"],
        backend="docker",
        method="qlora",
        gpus="1xA100",
        model_name_or_path=str(model),
        data_path=str(data),
        output_dir=str(out),
        container="docker:ghcr.io/x/img:1",  # an image is a docker reference, or refused (tests/test_shell_values.py)
    )
    write_files(prep)
    expected = docker_render.argv(prep.spec, prep.plan, str(prep.run_dir))
    assert expected[0] == "docker"
    fakes = fake_bin(tmp_path / "bin")
    # what launch runs (sh docker-run.sh) and what render prints, run by bash
    for shell, file, script in [("sh", prep.run_dir / "docker-run.sh", None), ("bash", None, prep.text)]:
        log = tmp_path / f"docker-{shell}.jsonl"
        r = run_bash(script, file=file, cwd=tmp_path, fakes=fakes, log=log, env={}, shell=shell)
        assert r.returncode == 0, r.stderr
        _no_injection(tmp_path, r)
        (call,) = read_log(log)
        assert call["argv"] == expected[1:]
    argv = expected
    assert f"{model}:{model}:ro" in argv and f"{data}:{data}:ro" in argv and f"{out}:{out}" in argv
    assert f"HOSTILE_ENV={h}" in argv
    assert "ghcr.io/x/img:1" in argv
    assert argv[argv.index("--gpus") + 1] == "1"
    # secrets by name: docker copies the value from its own environment
    assert argv[argv.index("HF_TOKEN") - 1] == "-e"


def test_docker_keeps_the_users_groups_and_mounts_a_checkpoint_to_resume(monkeypatch, tmp_path):
    """--user drops a user's other groups (data a project group reads): --group-add each; resume=PATH of another
    run's checkpoint is a path the trainer reads, mounted as the others."""
    checkpoint = tmp_path / "old" / "checkpoint-5"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text("{}")
    monkeypatch.setattr(docker_render, "host_user", lambda: (1000, 1000, "user", (27, 1001)))
    prep = prepared(
        backend="docker",
        gpus="1xA100",
        model_name_or_path=MODEL,
        output_dir=str(tmp_path / "o"),
        resume=str(checkpoint),
    )
    argv = docker_render.argv(prep.spec, prep.plan, str(tmp_path / "o"))
    assert argv[argv.index("--user") : argv.index("--user") + 6] == [
        "--user", "1000:1000", "--group-add", "27", "--group-add", "1001"
    ]  # fmt: skip
    assert f"{checkpoint}:{checkpoint}" in argv


def test_docker_mounts_the_hub_cache_this_host_keeps_apart(monkeypatch, tmp_path):
    """HF_HUB_CACHE (or HF_DATASETS_CACHE ...) set here, outside HF_HOME: the container got HF_HOME only, so a
    model cached there was downloaded again into HF_HOME/hub."""
    for var in HF_CACHE_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "big" / "hub"))
    prep = prepared(backend="docker", gpus="1xA100", model_name_or_path=MODEL, output_dir=str(tmp_path / "o"))
    argv = docker_render.argv(prep.spec, prep.plan, str(tmp_path / "o"))
    hub = tmp_path / "big" / "hub"
    assert f"{hub}:{hub}" in argv and f"HF_HUB_CACHE={hub}" in argv
    assert str(hub) in docker_render.host_caches().dirs()  # created before docker runs (else root's)
    assert not any("HF_DATASETS_CACHE" in a for a in argv)  # only what is set here


@pytest.mark.parametrize("kind", ["apptainer", "pyxis"])
def test_slurm_containers_get_the_hub_caches_and_pyxis_the_homes_store_credentials(kind, monkeypatch, tmp_path):
    """pyxis binds no home: every run, and every requeue, downloaded the model again into the container, and a run
    into s3:// found no ~/.aws. apptainer binds the home only: an HF_HUB_CACHE under /scratch was not there."""
    home = tmp_path / "home"
    (home / ".aws").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    for var in ("XDG_CACHE_HOME", "HF_HOME", *HF_CACHE_VARS):
        monkeypatch.delenv(var, raising=False)
    hub = tmp_path / "scratch" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    prep = prepared(
        backend="slurm", gpus="1xA100", model_name_or_path=MODEL, output_dir="s3://b/r1", container=f"{kind}:img.sif"
    )
    line = next(ln for ln in prep.text.splitlines() if ln.startswith("srun"))
    hf_home = home / ".cache" / "huggingface"
    if kind == "pyxis":
        assert f",{hf_home}:{hf_home}," in line and f",{hub}:{hub}" in line and f",{home}/.aws:{home}/.aws:ro" in line
        assert f"\nmkdir -p {hf_home} {hub}  # the Hugging Face caches" in prep.text
    else:
        assert f" --bind {hub} " in line and str(hf_home) not in line and ".aws" not in line  # its home is bound
        assert f"\nmkdir -p {hub}  # the Hugging Face caches" in prep.text


def test_docker_takes_the_plans_gpus_not_the_hosts(monkeypatch):
    """2 of an 8-GPU host: `--gpus 2`, or the first two CUDA_VISIBLE_DEVICES names (never `all`)."""

    def gpus(n):
        args = dict(backend="docker", gpus=f"{n}xA100", model_name_or_path=MODEL, output_dir="/fixed/out")
        prep = prepared(**args)
        argv = docker_render.argv(prep.spec, prep.plan, "/fixed/out")
        return argv[argv.index("--gpus") + 1]

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert (gpus(1), gpus(2), gpus(8)) == ("1", "2", "8")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3,5")
    assert gpus(2) == '"device=2,3"'
    for fewer in ("2,3,5", "-1"):  # fewer than torchrun starts processes: refused, not a rank without its GPU
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", fewer)
        with pytest.raises(FtctlError, match=f"CUDA_VISIBLE_DEVICES={fewer} leaves fewer than the 4 GPUs"):
            gpus(4)


# ------------------------------------------------------------------------------------------ sky
@pytest.mark.parametrize("h", HOSTILE, ids=range(len(HOSTILE)))
def test_sky_run_section_hostile_values_arrive_intact(h, tmp_path):
    prep = prepared(
        ["model_params=1b", f"env=HOSTILE_ENV={h}"],
        backend="sky",
        method="lora",
        gpus="2x8xH100",
        model_name_or_path=f"org/m{h}",
        data_path=f"s3://b/d{h}.json",
        output_dir=f"s3://b/o{h}",
    )
    task = yaml.safe_load(prep.text)
    assert task["envs"]["HOSTILE_ENV"] == h
    home = tmp_path / "home"
    home.mkdir()
    fakes, log = fake_bin(tmp_path / "bin"), tmp_path / "calls.jsonl"
    r = run_bash(
        task["run"],
        cwd=home,
        fakes=fakes,
        log=log,
        env={
            "SKYPILOT_NODE_IPS": "10.0.0.7\n10.0.0.8",
            "SKYPILOT_NODE_RANK": "1",
            "SKYPILOT_NUM_NODES": "2",
            "SKYPILOT_NUM_GPUS_PER_NODE": "8",
            "SKYPILOT_TASK_ID": "sky-2026-12-03-10-00-00-123456_c_3",
        },
    )
    assert r.returncode == 0, r.stderr
    _no_injection(tmp_path, r)
    assert "node 1 of 2, 8 GPUs, head 10.0.0.7" in r.stdout
    (call,) = read_log(log)
    # one per run (named after its run directory here: run_name, else name and the output's digest): runs share a
    # cluster's home
    key = prep.paths.root.name
    spec_path = home / "ftctl-run" / key / "spec.json"
    assert call["argv"] == [
        "--nnodes",
        "2",
        "--nproc-per-node",
        "8",
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        "10.0.0.7:29504",  # rdzv_port + 1 + its SkyPilot job id (3: its task id's end) % 1000
        "--rdzv-id",
        f"{key}-sky-2026-12-03-10-00-00-123456_c_3",
        "--rdzv-conf",
        "read_timeout=600",  # a node waits for the first one's store (explore48)
        "-m",
        "ftctl.trainer",
        "--spec",
        str(spec_path),
    ]
    shipped = json.loads(spec_path.read_text())
    assert shipped == json.loads(prep.files["spec.json"])
    assert (shipped["spec"]["model_name_or_path"], shipped["spec"]["data_path"], shipped["spec"]["output_dir"]) == (
        f"org/m{h}",
        f"s3://b/d{h}.json",
        f"s3://b/o{h}",
    )


def test_sky_refuses_local_paths_and_cpu(tmp_path):
    with pytest.raises(FtctlError, match="local path"):
        prepared(backend="sky", gpus="1xL4", model_name_or_path=MODEL, output_dir=str(tmp_path))
    with pytest.raises(FtctlError, match="local path"):
        prepared(backend="sky", gpus="1xL4", model_name_or_path=MODEL, data_path="conv.json", output_dir="s3://b/o")
    with pytest.raises(FtctlError, match="--gpus cpu"):
        prepared(backend="sky", gpus="cpu", model_name_or_path=MODEL, output_dir="s3://b/o")
    with pytest.raises(FtctlError, match="docker"):
        prepared(backend="sky", gpus="1xL4", model_name_or_path=MODEL, output_dir="s3://b/o", container="apptainer:img")


def test_secret_values_never_reach_any_rendered_file(tmp_path, monkeypatch):
    value = "hf_this-is-the-secret-value"
    monkeypatch.setenv("HF_TOKEN", value)
    monkeypatch.setenv("WANDB_API_KEY", value)
    monkeypatch.setenv("MY_KEY", value)
    for backend, gpus, out in [
        ("slurm", "8xA100", str(tmp_path / "s")),
        ("sky", "8xA100", "s3://b/o"),
        ("docker", "1xA100", str(tmp_path / "d")),
        ("local", "cpu", str(tmp_path / "l")),
    ]:
        prep = prepared(backend=backend, gpus=gpus, model_name_or_path=MODEL, output_dir=out, secrets=["MY_KEY"])
        for text in [prep.text, *prep.files.values()]:
            assert value not in text
        assert "MY_KEY" in prep.spec.secrets
        if backend != "local":
            assert "MY_KEY" in prep.text


def test_paths_docker_or_containers_cannot_mount_are_refused(tmp_path):
    with pytest.raises(FtctlError, match="docker reads ':'"):
        prepared(backend="docker", gpus="1xA100", model_name_or_path=MODEL, output_dir=str(tmp_path / "a:b"))


def test_held_out_data_is_bound_into_containers_as_the_training_data_is(tmp_path):
    train, held = tmp_path / "train" / "conv.json", tmp_path / "held out" / "eval.jsonl"
    for path in (train, held):
        path.parent.mkdir()
        path.write_text("[]")
    common = dict(gpus="1xA100", model_name_or_path=MODEL, data_path=str(train), eval_data_path=str(held))
    slurm = prepared(backend="slurm", container="apptainer:docker://x/y", **common, output_dir=str(tmp_path / "a"))
    assert f"--bind {shlex.quote(str(held.parent))}" in slurm.text
    assert f"--bind {shlex.quote(str(train.parent))}" in slurm.text
    docker = prepared(backend="docker", **common, output_dir=str(tmp_path / "b"))
    assert shlex.quote(f"{held}:{held}:ro") in docker.text
    sky = prepared(backend="sky", **dict(common, data_path="s3://b/conv.json"), output_dir="s3://b/r")
    assert str(held.resolve()) in yaml.safe_load(sky.text)["file_mounts"].values()  # shipped with the task


def test_docker_mounts_the_output_before_it_exists(tmp_path):
    out = tmp_path / "not yet"
    prep = prepared(backend="docker", gpus="1xA100", model_name_or_path=MODEL, output_dir=str(out))
    assert not out.exists()
    assert shlex.quote(f"{out}:{out}") in prep.text


def test_docker_mounts_the_runs_inputs_read_only(tmp_path):
    """The data, a local model and a chat template are the user's: mounted read-only (they were writable to
    anything in the container); what the run writes (output, run dir, a checkpoint to resume) stays writable, and an
    input inside the output is reached through the output's mount."""
    model = write_model_config(tmp_path / "model")
    (model / "tokenizer.json").write_text("{}")
    data = tmp_path / "data" / "conv.jsonl"
    data.parent.mkdir()
    data.write_text("")
    template = tmp_path / "output" / "template.jinja"
    template.parent.mkdir()
    template.write_text("{{ messages }}")
    over = [f"chat_template_path={template}"]
    prep = prepared(
        over, backend="docker", gpus="1xA100", model_name_or_path=str(model), data_path=str(data),
        output_dir=str(tmp_path / "output"),
    )  # fmt: skip
    argv = shlex.split(prep.text)
    volumes = [a for before, a in zip(argv, argv[1:]) if before == "-v"]
    assert f"{model}:{model}:ro" in volumes and f"{data}:{data}:ro" in volumes
    assert f"{tmp_path / 'output'}:{tmp_path / 'output'}" in volumes
    assert not [v for v in volumes if v.startswith(str(template))]


# ------------------------------------------------------------------------------------------ golden
# Snapshot of what each backend renders for a matrix of (method, gpus, nodes, backend, spot). Paths are
# fixed (s3:// or /fixed/...) so the files do not depend on the machine. On a mismatch the test prints
# a unified diff; after reviewing it, `UPDATE_GOLDEN=1 pytest tests/test_render.py` rewrites them.
S3 = "s3://bucket"
GOLDEN_CASES = {
    "slurm-fft-8xA100.sbatch": dict(
        backend="slurm",
        method="fft",
        gpus="8xA100",
        partition="gpu",
        account="lab",
        time="12:00:00",
        data_path=f"{S3}/data/conv.json",
        output_dir=f"{S3}/runs/a",
    ),
    "slurm-qlora-1xA100-apptainer.sbatch": dict(
        backend="slurm",
        method="qlora",
        gpus="1xA100",
        container="apptainer:docker://ghcr.io/x/ftctl:cu124",
        partition="gpu",
        account="lab",
        time="12:00:00",
        output_dir="/fixed/runs/b",
    ),
    "slurm-lora-2x8xH100-pyxis.sbatch": dict(
        backend="slurm",
        method="lora",
        gpus="2x8xH100",
        container="pyxis:nvcr.io#nvidia/pytorch:24.07-py3",
        data_path="/fixed/data/conv.json",
        output_dir="/fixed/runs/c",
        sbatch_args=["--mem=0", "--exclusive"],
        setup=["module load cuda/12.4"],
    ),
    "slurm-sft-A100-80GB-8-nodes2.sbatch": dict(
        backend="slurm", method="sft", gpus="A100-80GB:8", nodes=2, qos="high", output_dir=f"{S3}/runs/d"
    ),
    "slurm-lora-cpu-nodes2.sbatch": dict(
        backend="slurm",
        method="lora",
        gpus="cpu",
        nodes=2,
        model_name_or_path="HuggingFaceTB/SmolLM2-135M-Instruct",
        output_dir="/fixed/runs/e",
    ),
    "sky-fft-2x8xH100-spot.yaml": dict(
        backend="sky",
        method="fft",
        gpus="2x8xH100",
        spot=True,
        data_path=f"{S3}/data/conv.json",
        output_dir=f"{S3}/runs/f",
    ),
    "sky-qlora-1xL4.yaml": dict(backend="sky", method="qlora", gpus="1xL4", output_dir=f"{S3}/runs/g"),
    "sky-lora-cpu-k8s-nodes2.yaml": dict(
        backend="sky",
        method="lora",
        gpus="cpu",
        nodes=2,
        infra="k8s",
        model_name_or_path="HuggingFaceTB/SmolLM2-135M-Instruct",
        output_dir=f"{S3}/runs/q",
    ),
    "sky-lora-8xA100-docker.yaml": dict(
        backend="sky",
        method="lora",
        gpus="8xA100",
        container="docker:nvcr.io/nvidia/pytorch:24.07-py3",
        output_dir=f"{S3}/runs/h",
        secrets=["MY_TOKEN"],
    ),
    "sky-sft-A100-80GB-8-nodes2-spot.yaml": dict(
        backend="sky", method="sft", gpus="A100-80GB:8", nodes=2, spot=True, output_dir=f"{S3}/runs/i"
    ),
    "docker-qlora-1xL4.sh": dict(backend="docker", method="qlora", gpus="1xL4", output_dir="/fixed/runs/j"),
    "docker-fft-8xA100.sh": dict(
        backend="docker", method="fft", gpus="8xA100", data_path=f"{S3}/data/conv.json", output_dir="/fixed/runs/k"
    ),
    "local-lora-cpu.txt": dict(
        backend="local",
        method="lora",
        gpus="cpu",
        model_name_or_path="HuggingFaceTB/SmolLM2-135M-Instruct",
        output_dir="/fixed/runs/l",
    ),
    "local-fft-4xA100-80GB.txt": dict(backend="local", method="fft", gpus="4xA100-80GB", output_dir="/fixed/runs/m"),
    # without --container, the image `ftctl build` recorded (GOLDEN_CONFIG)
    "sky-lora-8xA100-built.yaml": dict(backend="sky", method="lora", gpus="8xA100", output_dir=f"{S3}/runs/n"),
    "slurm-lora-8xH100-built-apptainer.sbatch": dict(
        backend="slurm", method="lora", gpus="8xH100", output_dir="/fixed/runs/o"
    ),
    "slurm-lora-2x8xA100-built-pyxis.sbatch": dict(
        backend="slurm", method="lora", gpus="2x8xA100", output_dir="/fixed/runs/p"
    ),
}
# the user config of a case: its hand-written text, then what `ftctl build` records (image, where, gpus)
BUILT = [
    ("ghcr.io/my-org/ftctl:test-sm80_90", "pushed", "A100,H100"),
    ("/fixed/images/ftctl-test-sm90.sif", "sif", "H100"),
    ("ghcr.io/ftctl/ftctl:test-sm80", "local", "A100"),  # never used by sky or slurm: no node can pull it
]
GOLDEN_CONFIG = {
    "sky-lora-8xA100-built.yaml": ("", BUILT),
    "slurm-lora-8xH100-built-apptainer.sbatch": ("", BUILT),
    "slurm-lora-2x8xA100-built-pyxis.sbatch": ("slurm_container: pyxis\n", BUILT),
}


@pytest.mark.parametrize("name", sorted(GOLDEN_CASES))
def test_rendered_text_matches_golden(name, monkeypatch):
    # docker's user and caches are the launching host's, its engine's kind and facts (rootless, SELinux, log driver)
    # the engine's here: name them independently of the machine
    monkeypatch.setattr(docker_render, "host_user", lambda: (1000, 1000, "user", ()))
    monkeypatch.setattr(docker_engine, "kind", lambda exe=None: "docker")
    monkeypatch.setattr(docker_engine, "info", lambda exe=None: docker_engine.Info())
    monkeypatch.setenv("HOME", "/fixed/home")
    for var in ("XDG_CACHE_HOME", "HF_HOME", "CUDA_VISIBLE_DEVICES", *HF_CACHE_VARS, *hub.NETWORK_ENV):
        monkeypatch.delenv(var, raising=False)
    if name in GOLDEN_CONFIG:
        text, built = GOLDEN_CONFIG[name]
        userconfig.config_path().parent.mkdir(parents=True)
        userconfig.config_path().write_text(text)
        for args in built:
            userconfig.record(*args)
    flags = {"model_name_or_path": "meta-llama/Llama-3.1-8B", **GOLDEN_CASES[name]}
    prep = prepared(**flags)
    # the local command starts this interpreter: name it independently of the machine
    check_golden(name, prep.text.replace(shlex.quote(sys.executable), "PYTHON"))


def test_no_stale_golden_files():
    stale = sorted(p.name for p in GOLDEN.iterdir() if p.is_file() and p.name not in GOLDEN_CASES)
    if stale and os.environ.get("UPDATE_GOLDEN") == "1":
        for name in stale:
            (GOLDEN / name).unlink()
        return
    assert not stale, f"golden files no case renders (UPDATE_GOLDEN=1 removes them): {stale}"


def test_golden_mismatch_shows_a_unified_diff(monkeypatch):
    monkeypatch.delenv("UPDATE_GOLDEN", raising=False)
    name = "slurm-fft-8xA100.sbatch"
    text = (GOLDEN / name).read_text().replace("--nodes=1", "--nodes=7")
    with pytest.raises(pytest.fail.Exception) as e:
        check_golden(name, text)
    msg = str(e.value)
    assert f"--- tests/golden/{name}" in msg and "+++ rendered now" in msg
    assert "\n-#SBATCH --nodes=1\n" in msg and "\n+#SBATCH --nodes=7\n" in msg
    assert "UPDATE_GOLDEN=1" in msg


def test_the_slurm_script_names_the_object_stores_credentials_by_name_only(monkeypatch):
    """With --output s3://... the script's comment named HF_TOKEN and WANDB_API_KEY only, though the job needs the
    AWS keys from the submitting environment too (it gets them through --export=ALL): each store's names are listed,
    never a value, whatever is set where it is rendered."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "sekrit-value-1234")
    flags = dict(backend="slurm", gpus="1xA100", model_name_or_path=MODEL)
    text = prepared([], **flags, data_path="gs://b/conv.json", output_dir="s3://b/o").text
    assert "sekrit-value-1234" not in text
    s3 = next(line for line in text.splitlines() if line.startswith("# so do s3's"))
    assert s3.startswith(
        "# so do s3's credentials, endpoint and region, where set there: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
        "AWS_SESSION_TOKEN, "
    )
    assert "# so do gcs's credentials, endpoint and region, where set there: GOOGLE_APPLICATION_CREDENTIALS" in text
    assert "# so do" not in prepared([], **flags, output_dir="/f/o").text
