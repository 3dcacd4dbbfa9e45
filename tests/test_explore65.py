"""explore65 (one workstation: a consumer GPU, an Apple-silicon Mac or no GPU): findings fixed in ftctl/gpus.py.

1. A Mac user's `--gpus mps` was "Unknown GPU type 'mps'", and `--gpus M2` said "older than every card ftctl plans for
   (Volta's V100 is the oldest)": read as a Maxwell M60. Both now say that ftctl does not train on Apple silicon's
   GPU, and what does run (--gpus cpu, or GPUs elsewhere).
2. A GeForce's number with letters after it (`--gpus 2080ti`, `2080 Ti`, `gpu:2080ti:2`) was "Cannot read --gpus"; a GeForce's number
   ftctl does not list (`--gpus 3080`, `2x4060`) was read as a count: "names no GPU type ... gpu:TYPE:3080 or
   3080xTYPE". The first is the listed card now, the second an unlisted card, as tier() says of one.
3. (plan.py) `--method fft` of a 7B on CPU was refused as "would take days a step" with no number to judge it by: the
   refusal now says the step's work (PFLOP) and its time at a sustained 1 TFLOP/s.

In ftctl/local/backend.py:
4. What nvidia-smi lists and ftctl plans as another card (an RTX 3060 as an RTX2080Ti: fp16, sdpa) or as cpu (an 8 GB
   laptop GPU, a GTX 1080 Ti) is said by the plan's notes, doctor's gpus line and a CPU refusal; it was said nowhere.
5. A local launch prints its plan's batch, checkpointing, memory and step time before it trains.

The CLI runs as users run it (a subprocess: one error line, exit 2, no traceback); the grammar is gpus.parse.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ftctl import gpus
from ftctl.errors import FtctlError
from tests.fake_gpus import fake_nvidia_smi


def plan(*args: str) -> subprocess.CompletedProcess:
    return plan_as("qlora", "Qwen/Qwen2.5-0.5B", *args)


def plan_as(method: str, model: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "ftctl", "plan", "--method", method, "--model", model, *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("name", ["mps", "MPS", "M2", "m3 max", "Apple M2 Max", "M4-Pro", "metal"])
def test_a_macs_gpu_is_said_to_be_apple_silicons_not_an_old_or_unknown_card(name):
    with pytest.raises(FtctlError) as e:
        gpus.parse(name)
    said = str(e.value)
    assert "is Apple silicon's GPU (MPS), which ftctl does not train on" in said
    assert "On a Mac: --gpus cpu" in said
    assert "older than every card" not in said and "Unknown GPU type" not in said


@pytest.mark.parametrize("name", ["M60", "tesla m4", "Tesla M40", "K80", "P100"])
def test_maxwell_and_other_old_cards_stay_older_than_listed(name):
    with pytest.raises(FtctlError, match="older than every card ftctl plans for"):
        gpus.parse(name)


def test_plan_with_gpus_mps_is_one_error_line():
    proc = plan("--gpus", "mps")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert proc.stderr.startswith("error: --gpus 'mps': GPU type 'mps' is Apple silicon's GPU (MPS)")


@pytest.mark.parametrize(
    "text, want",
    [
        ("2080ti", "1xRTX2080Ti"),
        ("2080 Ti", "1xRTX2080Ti"),
        ("2x2080Ti", "2xRTX2080Ti"),
        ("2080-ti", "1xRTX2080Ti"),
        ("gpu:2080ti:2", "2xRTX2080Ti"),
    ],
)
def test_a_geforce_number_with_its_suffix_is_the_card(text, want):
    assert str(gpus.parse(text)) == want


@pytest.mark.parametrize(  # 5060 Ti-5080 are listed since session 63: unlisted ones of those kinds
    "text, card", [("3050", "3050"), ("2x5050", "5050"), ("3050ti", "3050ti"), ("2060", "2060")]
)
def test_an_unlisted_geforce_number_is_an_unlisted_card_not_a_count(text, card):
    with pytest.raises(FtctlError) as e:
        gpus.parse(text)
    said = str(e.value)
    assert f"--gpus {text!r}: Unknown GPU type {card!r}" in said
    assert "A card not listed: name a listed one of its generation or older" in said
    assert "names no GPU type" not in said and "Cannot read" not in said


@pytest.mark.parametrize("text", ["8", "2x8", "32", "128"])
def test_counts_alone_still_ask_for_a_type(text):
    with pytest.raises(FtctlError, match="names no GPU type, and ftctl plans for one"):
        gpus.parse(text)


def test_plan_with_an_unlisted_geforce_is_one_error_line():
    proc = plan("--gpus", "3050")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: --gpus '3050': Unknown GPU type '3050'.")


def test_a_model_too_big_for_cpu_is_refused_with_the_steps_work():
    proc = plan_as("fft", "Qwen/Qwen2.5-7B", "--gpus", "cpu")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr == (
        "error: fft of a 7.62B-parameter model on CPU: ftctl runs models up to 2B on CPU, where larger ones take minutes "
        "to days a step (this one's step of 32 x 2,048 tokens: ~3 PFLOP, 50 min at a sustained 1 TFLOP/s, more than "
        "most CPUs sustain in fp32). Ask for a GPU, e.g. --gpus 1xA100 --method qlora.\n"
    )
    proc = plan_as("lora", "meta-llama/Llama-3.2-3B", "--gpus", "cpu", "-o", "global_batch_size=8")
    assert "this one's step of 8 x 2,048 tokens: ~0.21 PFLOP, 4 min at a sustained 1 TFLOP/s" in proc.stderr


# ---------------------------------------------------------------------------------------------------------------------
# local/backend.py (findings 4 and 5 above). nvidia-smi is the one stand-in
# (no GPU here), tests/fake_gpus.py's: it lists the card a user's workstation has.
FTCTL = os.path.join(os.path.dirname(sys.executable), "ftctl")


def smi(tmp_path, monkeypatch, listed: str) -> dict:
    """An environment whose nvidia-smi lists ``listed`` ('NAME, MiB'), as a workstation's does."""
    return {**fake_nvidia_smi(tmp_path, monkeypatch, listed), "OMP_NUM_THREADS": "1"}


@pytest.mark.parametrize(
    "listed, gpus_here, said",
    [
        ("NVIDIA GeForce RTX 4090, 24564", "1xRTX4090", None),
        (  # the RTX 3060, 5090 and 8 GB Ada cards are listed since task 309: unlisted ones of those kinds
            "NVIDIA GeForce RTX 2060, 12288",
            "1xRTX2080Ti",
            "local: nvidia-smi lists 1x 'NVIDIA GeForce RTX 2060' (12.0 GiB), a card ftctl does not list: planned as an "
            "RTX2080Ti (10.73 GiB)",
        ),
        (  # GeForce Blackwell and the RTX PRO 6000 are listed since session 63
            "NVIDIA RTX PRO 4000 Blackwell, 24467",
            "1xRTX5080",
            "local: nvidia-smi lists 1x 'NVIDIA RTX PRO 4000 Blackwell' (23.9 GiB), a card ftctl does not list: planned "
            "as an RTX5080 (15.47 GiB)",
        ),
        (
            "NVIDIA GeForce RTX 3050 Laptop GPU, 4096",
            "cpu",
            "local: nvidia-smi lists 1x 'NVIDIA GeForce RTX 3050 Laptop GPU' (4.0 GiB), less memory than every card of "
            "its generation or older ftctl plans for (RTX3060-8GB's 7.76 GiB is the least): planned as cpu",
        ),
        (
            "NVIDIA GeForce GTX 1080 Ti, 11264",
            "cpu",
            "local: nvidia-smi lists 1x 'NVIDIA GeForce GTX 1080 Ti' (11.0 GiB), older than every card ftctl plans "
            "for (Volta's V100 is the oldest): planned as cpu",
        ),
    ],
)
def test_a_card_planned_as_another_or_as_cpu_is_said(tmp_path, monkeypatch, listed, gpus_here, said):
    """An RTX 3060 was planned as an RTX2080Ti (fp16 on a bf16 card) and an 8 GB laptop GPU as cpu, said nowhere."""
    from ftctl.local import backend

    smi(tmp_path, monkeypatch, listed)
    assert backend.detected() == (gpus_here, said)
    assert backend.local_gpus() == gpus_here


def test_the_plan_and_doctor_say_what_the_card_is_planned_as(tmp_path, monkeypatch):
    env = smi(tmp_path, monkeypatch, "NVIDIA GeForce RTX 2060, 12288")
    cmd = [FTCTL, "plan", "--backend", "local", "--method", "qlora", "--model", "meta-llama/Llama-3.1-8B"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "gpus           1xRTX2080Ti" in proc.stdout
    assert "note: local: nvidia-smi lists 1x 'NVIDIA GeForce RTX 2060' (12.0 GiB), a card ftctl does not list" in (
        proc.stdout + proc.stderr
    )
    proc = subprocess.run([FTCTL, "doctor"], env=env, capture_output=True, text=True, timeout=120)
    assert "gpus:    1xRTX2080Ti (nvidia-smi lists 1x 'NVIDIA GeForce RTX 2060' (12.0 GiB)" in proc.stdout


def test_a_refusal_on_cpu_says_the_gpu_here_was_too_small(tmp_path, monkeypatch):
    """`ftctl launch --method fft` of an 8B on an 8 GB laptop GPU said "on CPU would take days a step", the GPU unsaid."""
    data = tmp_path / "chats.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n')
    env = smi(tmp_path, monkeypatch, "NVIDIA GeForce RTX 3050 Laptop GPU, 4096")
    cmd = [FTCTL, "launch", "--method", "fft", "--model", "meta-llama/Llama-3.1-8B", "--data", str(data), "--dry-run"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: fft of an 8.03B-parameter model on CPU: ftctl runs models up to 2B on CPU")
    assert line.endswith(
        "(nvidia-smi lists 1x 'NVIDIA GeForce RTX 3050 Laptop GPU' (4.0 GiB), less memory than every card of its "
        "generation or older ftctl plans for (RTX3060-8GB's 7.76 GiB is the least): planned as cpu)"
    )


def test_a_local_launch_says_its_batch_and_memory_before_it_trains(tmp_path, tiny_model_dir, tiny_data, capsys):
    """A local launch said "running lora on cpu; checkpoints in ..." alone: the micro-batch, checkpointing and memory
    it chose were in spec.json only (Slurm's launch says them: slurm.backend.plan_lines). The launch's own foreground
    run of a real prepared run; a python that exits at once stands in for the trainer (a real one: tests/
    test_local_backend.py)."""
    from ftctl.backend import write_files
    from ftctl.local.backend import run_foreground
    from tests.render_fixtures import prepared

    rendered = prepared(
        ["max_steps=1", "global_batch_size=2", "model_max_length=64"],
        backend="local",
        gpus="cpu",
        method="lora",
        model_name_or_path=str(tiny_model_dir),
        data_path=str(tiny_data),
        output_dir=str(tmp_path / "run"),
        model_params="0.1b",
    )
    write_files(rendered)
    run_foreground(rendered, [sys.executable, "-c", "pass"])
    plan = rendered.plan
    want = (
        f"plan:    fp32, {plan.per_device_train_batch_size} per device x {plan.gradient_accumulation_steps} "
        "accumulation x 1 = 2 sequences of up to 64 tokens a step, gradient checkpointing "
        f"{'on' if plan.gradient_checkpointing else 'off'}; ~{plan.memory_gb:.1f} GB est. of RAM a process "
        "(`ftctl plan` with the same flags: every row)"
    )
    said = capsys.readouterr().err
    assert want in said.splitlines()
    assert said.index("running lora on cpu") < said.index(want)


def test_the_plan_line_on_a_gpu_names_its_memory_and_step():
    from ftctl.local.backend import plan_line
    from ftctl.plan import make_plan
    from ftctl.spec import build

    spec = build(flags={"method": "qlora", "gpus": "1xRTX4090", "model_name_or_path": "meta-llama/Llama-3.1-8B"})
    said = plan_line(spec, make_plan(spec))
    assert said.startswith("plan:    bf16, 1 per device x 32 accumulation x 1 = 32 sequences of up to 2,048 tokens")
    assert "GB est. of 25.4 GB a GPU; ~26 s a step est." in said


# ---------------------------------------------------------------------------------------------------------------------
# nohup: an ignored SIGHUP stays ignored (terminal.caught, in the launcher, the trainer and torchrun)
def test_caught_leaves_an_ignored_sighup_out():
    import signal

    from ftctl import terminal

    wanted = (signal.SIGTERM, signal.SIGHUP)
    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        assert terminal.caught(wanted) == (signal.SIGTERM,)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        assert terminal.caught(wanted) == wanted
    finally:
        signal.signal(signal.SIGHUP, before)


def test_a_nohup_launch_trains_on_when_its_terminal_closes(tmp_path, tiny_model_dir, tiny_data):
    """`nohup ftctl launch ... &`, then the terminal closed (SIGHUP to the launch's process group): the launcher and
    the trainer each took SIGHUP over, so the run stopped at its next step ("stopped on SIGHUP after saving step N").
    Under nohup it trains to its end now; without nohup a SIGHUP still stops it with a checkpoint
    (tests/test_local_backend.py)."""
    import signal
    import time

    out, log = tmp_path / "run", tmp_path / "launch.log"
    cmd = ["nohup", FTCTL, "launch", "--gpus", "cpu", "--method", "lora", "--model", str(tiny_model_dir), "--data"]
    cmd += [str(tiny_data), "--output", str(out), "--model-params", "0.1b", "-o", "max_steps=30"]
    cmd += ["-o", "global_batch_size=2", "-o", "model_max_length=64", "-o", "save_steps=100"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 120
        while "step 2/30" not in log.read_text() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None, log.read_text()
        os.killpg(proc.pid, signal.SIGHUP)  # what a closed terminal's shell sends its jobs
        assert proc.wait(timeout=120) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    said = log.read_text()
    assert "complete: step 30" in said and "SIGHUP" not in said


def test_a_nohup_two_process_run_trains_on_when_its_terminal_closes(tmp_path, tiny_model_dir, tiny_data):
    """The same through ftctl's torchrun (two processes, as on two GPUs): torchrun's own handler took SIGHUP over."""
    import signal
    import time

    from tests.trainer_fixtures import make_run, write_spec

    out, log = tmp_path / "run", tmp_path / "torchrun.log"
    spec, plan = make_run(tiny_model_dir, tiny_data, out, "lora", gpus="2xcpu", max_steps=30, save_steps=1000)
    path = write_spec(spec, plan, tmp_path / "spec.json")
    cmd = ["nohup", sys.executable, "-m", "ftctl.trainer.torchrun", "--standalone", "--nproc-per-node", "2"]
    cmd += ["-m", "ftctl.trainer", "--spec", str(path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    metrics = out / "metrics.jsonl"
    try:
        deadline = time.time() + 180
        while not (metrics.exists() and metrics.read_text().count("\n") >= 2) and time.time() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGHUP)
        assert proc.wait(timeout=180) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert "SIGHUP" not in log.read_text() and (out / "adapter_model.safetensors").is_file()
