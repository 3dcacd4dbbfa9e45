"""A secret pasted into the wrong place is never echoed (explore37's leftovers), and --infra is refused in one line.

- click's own "Invalid value for '--method': 'hf_...' is not one of ..." (any Choice or number option), an extra
  argument, an unknown option or command repeated the value: cli._unrepeated says the option and its choices instead.
- ``-o resume=hf_...`` and a run file named by a token repeated it in their refusals (secret_checks.key_value_said).
- ``--infra $'aws\\nsetup: x'`` was refused in two lines (the value printed raw), and a newline after the region
  was written into task.yaml: refused at validation, in one line.
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from ftctl import spec as spec_mod
from ftctl.cli import main
from ftctl.errors import FtctlError

TOKEN = "hf_" + "aB3" * 10  # a Hugging Face token's shape
HEX = "0123456789abcdef" * 2 + "01234567"  # W&B's 40 hex digits: only a token's shape (looks_like_token)


def _said(argv: list[str]) -> str:
    r = CliRunner().invoke(main, argv, prog_name="ftctl")
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    return r.output


@pytest.mark.parametrize(
    "argv, says",
    [
        (
            ["launch", "--method", TOKEN],
            "'--method': the value looks like a secret and is not repeated here: choose one of fft, sft, lora, qlora.",
        ),
        (
            ["render", "--backend", HEX],
            "'--backend': the value looks like a secret and is not repeated here: "
            "choose one of local, slurm, sky, docker.",
        ),
        (
            ["launch", "--nodes", TOKEN],
            "'--nodes': the value looks like a secret and is not repeated here: "
            "`ftctl launch --help` says what it takes.",
        ),
        (["jobs", "-n", HEX], "'--last': the value looks like a secret"),
        (
            ["launch", "x.yaml", TOKEN],
            "an argument looks like a secret and is not repeated here: `ftctl launch --help`",
        ),
        (["launch", f"--{TOKEN}"], "an argument looks like a secret"),
        ([TOKEN], "an argument looks like a secret and is not repeated here: `ftctl --help`"),
    ],
)
def test_click_refuses_a_secret_without_repeating_it(argv, says):
    said = _said(argv)
    assert says in said and TOKEN not in said and HEX not in said, said


def test_click_still_names_a_value_of_no_secret():
    assert "'lorra' is not one of 'fft', 'sft', 'lora', 'qlora'" in _said(["launch", "--method", "lorra"])


@pytest.mark.parametrize("resume", [TOKEN, f"s3://b/{TOKEN}/checkpoint-1", f"/ckpt/{TOKEN}"])
def test_resume_refused_without_repeating_a_credential(resume):
    with pytest.raises(FtctlError) as e:
        spec_mod.build(None, {"backend": "local", "gpus": "cpu", "data_path": "builtin:demo"}, [f"resume={resume}"])
    said = str(e.value)
    assert "resume holds a token (not repeated here)" in said and "--secret HF_TOKEN" in said, said  # task 211
    assert TOKEN not in said, said
    assert spec_mod.resume_problem("/nowhere/maybe", here=True).startswith("resume=/nowhere/maybe is not auto")
    near = "/ckpt/hf_" + "ab" * 12  # a name only begun as a token is (secret_checks.TOKEN_IN_PATH): still not repeated
    said = spec_mod.resume_problem(near, here=True)
    assert said.startswith("resume (its value holds a credential; not repeated here)") and near not in said, said


def test_a_run_file_named_by_a_token_is_not_repeated():
    said = _said(["launch", "--dry-run", TOKEN])
    assert "Run file: the name given holds a credential (not repeated here)" in said and TOKEN not in said, said


@pytest.mark.parametrize(
    "flags, overrides, says",
    [
        ({"infra": "aws\nsetup: x"}, [], "--infra='aws\\nsetup: x' holds a newline"),
        ({"infra": "aws/us-east-1\nsetup: x"}, [], "--infra='aws/us-east-1\\nsetup: x' holds a newline"),
        ({}, ["region=us-east-1\tx"], "-o region='us-east-1\\tx' holds a newline or another control character"),
    ],
)
def test_infra_with_a_newline_is_refused_in_one_line(flags, overrides, says):
    with pytest.raises(FtctlError) as e:
        spec_mod.build(None, {"backend": "sky", "gpus": "1xH100", "data_path": "builtin:demo", **flags}, overrides)
    said = str(e.value)
    assert "\n" not in said and says in said, said


def test_infra_with_a_trailing_newline_is_taken():
    spec = spec_mod.build(None, {"backend": "sky", "gpus": "1xH100", "data_path": "builtin:demo", "infra": "aws\n"}, [])
    assert spec.infra == "aws\n"  # sky.render.infra strips it, as before
