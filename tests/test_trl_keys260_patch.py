"""Helper 260's patch to foreign_args.py: a pasted TRL line's --completion_only_loss is said as -o, read beside
assistant_only_loss (spec._trl_loss), as it was before completion_only_loss stopped being assistant_only_loss's other
name; without the patch the flag and its value stayed in the suggested line as they were (click refused them next)."""

from __future__ import annotations

import shlex

from click.testing import CliRunner

from ftctl.cli import main
from ftctl.spec import build

TRL = "--model_name_or_path Qwen/Qwen2-0.5B --dataset_name trl-lib/Capybara --use_peft"


def test_a_pasted_trl_lines_completion_only_loss_is_said_as_o_and_read_as_trl_reads_it():
    r = CliRunner().invoke(main, ["launch", "--gpus", "1xA100", *TRL.split(), "--completion_only_loss", "true"])
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    line = r.output.strip().splitlines()[-1]
    assert "-o completion_only_loss=true" in line and "--completion_only_loss" not in line
    pairs = [w for f, w in zip(shlex.split(line), shlex.split(line)[1:]) if f == "-o"]
    notes: list[str] = []
    assert build(overrides=[*pairs, "assistant_only_loss=false"], notes=notes).assistant_only_loss is False
    assert any(n.startswith("completion_only_loss: true (-o) and assistant_only_loss: false (-o)") for n in notes)
