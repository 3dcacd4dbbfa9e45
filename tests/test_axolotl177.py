"""An axolotl run file's dataset entry that axolotl itself refuses (task 177, leftovers of the sweep of task 175): a
field's name that is no text (``field_instruction: 5``) and a misspelt type (``type: alpacka``) were only noted, the
run read its rows by other names than asked. Each is one line now, saying what to write (the nearest type), exit 2, no
traceback; types axolotl knows, and dotted ones (a module of the user's own), stay notes. In-process (CliRunner)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from ftctl.cli import main

PLAN = ["plan", "--gpus", "cpu", "--model-params", "135m"]

REFUSED = {
    "field-name-number-beside-type": (
        "datasets:\n  - {path: @/qa.jsonl, type: alpaca, field_instruction: 5}\n",
        "@/qa.jsonl's field_instruction: 5 is no field's name: write the name of the rows' field as text, "
        "type: {field_instruction: prompt} ('5', quoted, for a field named so).",
    ),
    "field-name-number-in-type": (
        "datasets:\n  - path: @/qa.jsonl\n    type: {field_instruction: 5, field_output: answer}\n",
        "@/qa.jsonl's type's field_instruction: 5 is no field's name: write the name of the rows' field as text, "
        "type: {field_instruction: prompt}",
    ),
    "turns-named-by-a-list": (
        "datasets:\n  - {path: @/qa.jsonl, type: chat_template, field_messages: [a, b]}\n",
        "@/qa.jsonl's field_messages: ['a', 'b'] is no field's name: write the name of the rows' field as text, "
        "field_messages: NAME.",
    ),
    "role-named-by-a-number": (
        "datasets:\n  - {path: @/qa.jsonl, type: chat_template, message_property_mappings: {role: 1}}\n",
        "@/qa.jsonl's message_property_mappings' role: 1 is no field's name:",
    ),
    "misspelt-type": (
        "datasets:\n  - {path: @/qa.jsonl, type: alpacka}\n",
        "'datasets' (run file): @/qa.jsonl's type: 'alpacka': no type of axolotl's: write type: alpaca (the nearest; "
        "ftctl reads each row's format from its fields, axolotl refuses a type it does not know).",
    ),
    "misspelt-type-with-its-style": (
        "test_datasets:\n  - {path: @/qa.jsonl, type: 'Alpaca:chatml'}\n",
        "@/qa.jsonl's type: 'Alpaca:chatml': no type of axolotl's: write type: alpaca:chatml (the nearest;",
    ),
}


def _plan(tmp_path, run_file: str, *argv: str):
    (tmp_path / "qa.jsonl").write_text('{"prompt": "q", "answer": "a"}\n')
    (tmp_path / "run.yaml").write_text(run_file.replace("@/", f"{tmp_path}/"))
    return CliRunner().invoke(main, [*(argv or PLAN), "-c", str(tmp_path / "run.yaml")])


@pytest.mark.parametrize("case", REFUSED)
def test_an_entry_axolotl_refuses_is_one_line_with_its_fix(tmp_path, case):
    run_file, said = REFUSED[case]
    result = _plan(tmp_path, run_file)
    out = result.output
    assert result.exit_code == 2, out
    assert result.exception is None or isinstance(result.exception, SystemExit), out
    assert out.startswith("error: ") and out.count("\n") == 1 and "Traceback" not in out, out
    assert said.replace("@/", f"{tmp_path}/") in out, out


def test_data_check_refuses_a_misspelt_type_too(tmp_path):
    result = _plan(tmp_path, REFUSED["misspelt-type"][0], "data", "check")
    assert result.exit_code == 2 and result.output.startswith("error: "), result.output
    assert "write type: alpaca (the nearest;" in result.output, result.output


@pytest.mark.parametrize("kind", ["alpaca", "alpaca:chatml", "chat_template", "completion", "my_pkg.my_strategy"])
def test_types_axolotl_knows_and_modules_of_ones_own_are_read_as_before(tmp_path, kind):
    result = _plan(tmp_path, f"datasets:\n  - {{path: @/qa.jsonl, type: '{kind}'}}\n")
    assert result.exit_code == 0, result.output
    assert "each row's format is read from its fields (not from their type)" in result.output, result.output
