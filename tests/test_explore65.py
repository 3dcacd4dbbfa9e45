"""explore65 (one workstation: a consumer GPU, an Apple-silicon Mac or no GPU): findings fixed in ftctl/gpus.py.

1. A Mac user's `--gpus mps` was "Unknown GPU type 'mps'", and `--gpus M2` said "older than every card ftctl plans for
   (Volta's V100 is the oldest)": read as a Maxwell M60. Both now say that ftctl does not train on Apple silicon's
   GPU, and what does run (--gpus cpu, or GPUs elsewhere).
2. A GeForce's number with letters after it (`--gpus 2080ti`, `2080 Ti`, `gpu:2080ti:2`) was "Cannot read --gpus"; a GeForce's number
   ftctl does not list (`--gpus 3080`, `2x4060`) was read as a count: "names no GPU type ... gpu:TYPE:3080 or
   3080xTYPE". The first is the listed card now, the second an unlisted card, as tier() says of one.
3. (plan.py) `--method fft` of a 7B on CPU was refused as "would take days a step" with no number to judge it by: the
   refusal now says the step's work (PFLOP) and its time at a sustained 1 TFLOP/s.

The CLI runs as users run it (a subprocess: one error line, exit 2, no traceback); the grammar is gpus.parse.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ftctl import gpus
from ftctl.errors import FtctlError


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


@pytest.mark.parametrize("text, card", [("3080", "3080"), ("2x4060", "4060"), ("4060ti", "4060ti"), ("5090", "5090")])
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
    proc = plan("--gpus", "3080")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: --gpus '3080': Unknown GPU type '3080'.")


def test_a_model_too_big_for_cpu_is_refused_with_the_steps_work():
    proc = plan_as("fft", "Qwen/Qwen2.5-7B", "--gpus", "cpu")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr == (
        "error: fft of a 7.62B-parameter model on CPU: ftctl runs models up to 2B on CPU, where larger ones take hours "
        "to days a step (this one's step of 32 x 2,048 tokens: ~3 PFLOP, 50 min at a sustained 1 TFLOP/s, more than "
        "most CPUs sustain in fp32). Ask for a GPU, e.g. --gpus 1xA100 --method qlora.\n"
    )
    proc = plan_as("lora", "meta-llama/Llama-3.2-3B", "--gpus", "cpu", "-o", "global_batch_size=8")
    assert "this one's step of 8 x 2,048 tokens: ~0.21 PFLOP, 4 min at a sustained 1 TFLOP/s" in proc.stderr
