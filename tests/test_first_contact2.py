"""First contact, what explore29 found and left: a local dry run that tokenizes, a typo'd LoRA module refused by
`ftctl plan`, a checkpoint that records its dataset_text_field."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from ftctl import preflight
from ftctl.plan import make_plan
from ftctl.preflight import ERROR
from ftctl.spec import build


def test_a_local_dry_run_tokenizes_the_rows_a_local_launch_leaves_to_its_trainer(tiny_model_dir, tmp_path):
    """explore29: a row the chat template cannot render was found 8 s into a local launch (its trainer), never by
    `launch --dry-run`: only a Slurm launch tokenized before the job. A local or docker dry run now does too (the
    same check_tokenized); a local launch still leaves it to its trainer, which does it seconds in."""
    long = tmp_path / "long.jsonl"  # nothing left to train after model_max_length: what the tokenizer finds
    row = {"messages": [{"role": "user", "content": "word " * 400}, {"role": "assistant", "content": "ok"}]}
    long.write_text((json.dumps(row) + "\n") * 3)
    over = {"model_name_or_path": str(tiny_model_dir), "data_path": str(long), "model_max_length": 64}
    spec = build({**over, "gpus": "cpu", "output_dir": str(tmp_path / "out")})
    plan = make_plan(spec)
    for backend in ("local", "docker", "sky"):  # sky: helper 139's (tests/test_first_contact139_dry.py)
        said = [f for f in preflight.preflight(spec, plan, backend, dry_run=True) if f.level == ERROR]
        assert any("every label is masked after truncation to 64 tokens" in f.what for f in said), (backend, said)
        assert any(f"ftctl data check {long} --model {tiny_model_dir} --max-length 64" in f.fix for f in said)
    assert not any("masked after truncation" in f.what for f in preflight.preflight(spec, plan, "local"))


@pytest.mark.parametrize("targets", ["q_proj,vproj", "q_proj, v_proj"])
def test_plan_refuses_a_lora_module_the_model_does_not_have_as_launch_does(tiny_model_dir, targets):
    """explore29: `ftctl plan -o lora_target_modules=q_proj,vproj` counted the typo's adapters in its trainable
    parameters; only launch said no module is named so. The plan says it in launch's words (check_lora_targets)."""
    from click.testing import CliRunner

    from ftctl.cli import main

    said = CliRunner().invoke(
        main, ["plan", "--model", str(tiny_model_dir), "--gpus", "1xH100", "-o", f"lora_target_modules={targets}"]
    )
    if targets == "q_proj,vproj":
        assert said.exit_code == 2 and "Traceback" not in said.output, said.output
        assert said.output.startswith("error: lora_target_modules: no module of ")
        assert "is named 'vproj'. Did you mean 'v_proj'?" in said.output
    else:
        assert said.exit_code == 0, said.output


def test_a_checkpoint_records_its_dataset_text_field_where_not_the_default(tmp_path):
    """explore29: a resume reading another field's text ({"content": ...}) trained other rows without the "other
    data" refusal or the settings line: the text field was not recorded. Recorded where it is not "text" (the
    checkpoints saved before it was, all trained on "text", do not all look changed)."""
    from ftctl.checkpoints import write_manifest
    from ftctl.checkpoints.settings import changes, settings

    spec = build({"gpus": "1xA100", "model_params": "1b"})
    plan = make_plan(spec)
    assert "dataset_text_field" not in settings(spec, plan)
    content = replace(spec, dataset_text_field="content")  # (a run file's TRL key also makes TRL's defaults)
    assert settings(content, plan)["dataset_text_field"] == "content"
    checkpoint = tmp_path / "checkpoint-5"
    checkpoint.mkdir()
    (checkpoint / "trainer_state.json").write_text("{}")
    write_manifest(str(checkpoint), 5, 1, "abc", settings=settings(spec, plan))  # as older checkpoints: none
    assert changes(str(checkpoint), settings(spec, plan)) is None
    said = changes(str(checkpoint), settings(content, plan))
    assert said.changed == {"dataset_text_field": ("text", "content")} and said.new_data
    assert "dataset_text_field text -> content; the run goes on from step 5 with the new ones (the new data" in (
        said.line()
    )
    write_manifest(str(checkpoint), 5, 1, "abc", settings=settings(content, plan))
    assert changes(str(checkpoint), settings(spec, plan)).changed == {"dataset_text_field": ("content", "text")}
    # resume=auto over it: refused as other data, before the launch (preflight), naming the field it trained on
    run = build({"gpus": "cpu", "model_params": "1b", "output_dir": str(tmp_path)})
    (refused,) = preflight.check_resume(run, make_plan(run))
    assert refused.level == ERROR and "a run trained on dataset_text_field=content" in refused.what


def test_launch_dry_run_of_a_local_run_says_what_the_tokenizer_finds(tiny_model_dir, tmp_path):
    """The command explore29 ran: `ftctl launch --dry-run` of a local run said nothing of rows its trainer refused
    seconds in; now the dry run stops at them, naming the `ftctl data check` line."""
    from click.testing import CliRunner

    from ftctl.cli import main

    long = tmp_path / "long.jsonl"
    row = {"messages": [{"role": "user", "content": "word " * 400}, {"role": "assistant", "content": "ok"}]}
    long.write_text((json.dumps(row) + "\n") * 3)
    run = ["launch", "--dry-run", "--backend", "local", "--gpus", "cpu", "--model", str(tiny_model_dir)]
    run += ["--data", str(long), "--output", str(tmp_path / "out"), "-o", "model_max_length=64"]
    said = CliRunner().invoke(main, run)
    assert said.exit_code == 2 and "every label is masked after truncation to 64 tokens" in said.output, said.output
    assert "the launch would stop at the 1 error(s) above" in said.output


@pytest.mark.parametrize("verb", ["init", "run", "finetune", "sft", "FineTune"])
def test_another_tools_verb_names_the_command_that_runs_here(verb):
    """explore29: `ftctl init` said click's bare "No such command 'init'." (axolotl, torchtune, litgpt and TRL users
    start with init, run, finetune, sft); now one line names what to run instead. Other names stay click's."""
    from click.testing import CliRunner

    from ftctl.cli import main

    said = CliRunner().invoke(main, [verb])
    assert said.exit_code == 2 and f"error: No such command {verb!r}: " in said.output, said.output
    assert "`ftctl launch --model ORG/NAME --data FILE`" in said.output.splitlines()[-1]
    for other in (["lanch"], ["data", "init"]):
        assert "ftctl launch --model" not in CliRunner().invoke(main, other).output
