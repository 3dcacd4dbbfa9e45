"""Task 287: a message that repeats a run key quotes what the user wrote (review 59 finding 6): the run file's own key
and value (`data: rows.json in run.yaml`, not the data_path made absolute that no line of the file says), a flag as
it was typed (--data rows.json), an -o as typed (-o data=rows.json)."""

from __future__ import annotations

import shutil

import pytest
from click.testing import CliRunner

from ftctl import preflight
from ftctl.cli import main
from ftctl.plan import make_plan
from ftctl.spec import build, given_as


def _dry_run(tmp_path, monkeypatch, tiny_model_dir, tiny_data, file_text: str, *args: str) -> str:
    """`ftctl launch [run.yaml] ARGS --dry-run` in ``tmp_path`` (rows.json there, the model beside it): its output."""
    monkeypatch.chdir(tmp_path)
    shutil.copy(tiny_data, tmp_path / "rows.json")
    shutil.copytree(tiny_model_dir, tmp_path / "model")
    run = ["run.yaml"] if file_text else []
    if file_text:
        (tmp_path / "run.yaml").write_text(file_text)
    got = CliRunner().invoke(main, ["launch", *run, "--backend", "local", "--gpus", "cpu", *args, "--dry-run"])
    assert "Traceback" not in got.output, got.output
    return got.output


@pytest.mark.parametrize(
    "file_text, args, said",
    [
        ("model: model\ndata: rows.json\n", [], "note: data: rows.json in run.yaml: 48 rows tokenized here"),
        ("", ["--model", "model", "--data", "rows.json"], "note: --data rows.json: 48 rows tokenized here"),
        ("", ["--model", "model", "-o", "data=rows.json"], "note: -o data=rows.json: 48 rows tokenized here"),
    ],
    ids=["run file", "flag", "-o"],
)
def test_a_dry_runs_data_note_quotes_the_data_as_written(
    tmp_path, monkeypatch, tiny_model_dir, tiny_data, file_text, args, said
):
    """`data: rows.json` in run.yaml was said "data_path: /tmp/.../rows.json in run.yaml": neither that key nor that
    value is in the file (the alias and absolute_paths rewrote both); --data and -o the same, made absolute."""
    out = _dry_run(tmp_path, monkeypatch, tiny_model_dir, tiny_data, file_text, *args)
    assert said in out, out
    assert str(tmp_path / "rows.json") + ":" not in out, out


def test_an_axolotl_datasets_list_is_quoted_as_its_entries(tmp_path, monkeypatch, tiny_model_dir, tiny_data):
    """axolotl's datasets: [{path, type}] is data_path here: the note quotes the file's list, not the path made of it."""
    file_text = "base_model: model\ndatasets:\n  - path: rows.json\n    type: chat_template\n"
    out = _dry_run(tmp_path, monkeypatch, tiny_model_dir, tiny_data, file_text)
    said = "note: datasets: [{path: rows.json, type: chat_template}] in run.yaml: 48 rows tokenized here"
    assert said in out, out


def test_a_fix_is_said_under_the_users_key_and_a_repeat_in_their_words(tmp_path, monkeypatch):
    """A fix's value (another than the one given) goes under the key's name the user wrote where it is an alias
    (output: DIR), and a key ftctl resolved (output_dir as spec.output) repeats the file's text."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run.yaml").write_text("model: m\noutput: out/\nlr: 2e-4\n")
    spec = build("run.yaml")
    assert given_as(spec, "output_dir", spec.output, "--output") == "output: out/ in run.yaml"
    assert given_as(spec, "output_dir", "/big/disk", "--output") == "output: /big/disk in run.yaml"
    assert given_as(spec, "output_dir") == "the run file's output"
    assert given_as(spec, "learning_rate", spec.learning_rate) == "lr: 2e-4 in run.yaml"
    spec = build(None, overrides=["lr=2e-4", "output=out/"])
    assert given_as(spec, "learning_rate", spec.learning_rate) == "-o lr=2e-4"
    assert given_as(spec, "output_dir", spec.output, "--output") == "-o output=out/"
    assert given_as(spec, "learning_rate", 1e-4) == "-o lr=0.0001"
    assert given_as(spec, "output_dir") == "-o output"


def test_a_full_disk_names_the_output_as_the_run_file_wrote_it(tmp_path, monkeypatch):
    """check_disk named a run file's `output: out` as "output_dir: /abs/out in run.yaml"."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run.yaml").write_text("model: meta-llama/Llama-3.1-8B\nmethod: fft\ngpus: 8xH100\noutput: out\n")
    spec = build("run.yaml")
    from ftctl.backend import absolute_paths

    spec = absolute_paths(spec)
    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**12, 10**12, 10**6))
    (finding,) = preflight.check_disk(spec, make_plan(spec))
    assert finding.what.startswith("output: out in run.yaml: "), finding.what
