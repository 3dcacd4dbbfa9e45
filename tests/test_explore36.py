"""Nothing of the user's is lost (explore36, helper 195): a run training on deleted the user's directories named
checkpoint-* beside its checkpoints (a backup `cp -r checkpoint-12 checkpoint-12.bak`), as transformers' rotation globs
checkpoint-*; and `ftctl merge RUN/checkpoint-N` wrote into the checkpoint, which that rotation deleted whole."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from click.testing import CliRunner

from tests.trainer_fixtures import make_run


def test_rotation_leaves_the_users_checkpoint_named_directories_alone(tmp_path):
    from ftctl.trainer.sync_callback import rotate

    for i, name in enumerate(["checkpoint-3.bak", "checkpoint-good", "checkpoint-1", "checkpoint-2", "checkpoint-3"]):
        (tmp_path / name).mkdir()
        (tmp_path / name / "adapter_model.safetensors").write_text(name)
        os.utime(tmp_path / name, (1000 + i, 1000 + i))  # the user's are the oldest: rotation's first choice
    rotate(str(tmp_path), 2, None)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint-2",
        "checkpoint-3",
        "checkpoint-3.bak",
        "checkpoint-good",
    ]


def test_a_checkpoints_merge_and_backup_outlive_the_checkpoint(tiny_model_dir, tiny_data, tmp_path, one_thread):
    from ftctl.cli import main
    from ftctl.trainer.run import train

    out = tmp_path / "run"
    first = dict(method="lora", lora_r=4, max_steps=2, save_steps=2, save_total_limit=1)
    train(*make_run(tiny_model_dir, tiny_data, out, **first), echo=lambda line: None)
    shutil.copytree(out / "checkpoint-2", out / "checkpoint-2.bak")  # the user keeps a copy of a good one

    merged = CliRunner().invoke(main, ["merge", str(out / "checkpoint-2")])
    assert merged.exit_code == 0, merged.output
    assert f"merged into {out / 'merged-checkpoint-2'} " in merged.output
    assert not (out / "checkpoint-2" / "merged").exists()

    on = dict(first, max_steps=4, resume="auto")
    train(*make_run(tiny_model_dir, tiny_data, out, **on), echo=lambda line: None)
    assert not (out / "checkpoint-2").exists()  # rotated away (save_total_limit=1), as it was before
    assert (out / "merged-checkpoint-2" / "model.safetensors").is_file()
    assert (out / "checkpoint-2.bak" / "adapter_model.safetensors").is_file()


def test_the_default_merge_out_of_a_checkpoint_is_beside_it():
    from ftctl.trainer.merge import default_out

    assert default_out("runs/a") == str(Path("runs/a/merged"))
    assert default_out("runs/a/checkpoint-5/") == "runs/a/merged-checkpoint-5"
    assert default_out("checkpoint-5") == "merged-checkpoint-5"
    assert default_out("s3://b/run/checkpoint-3") == "s3://b/run/merged-checkpoint-3"
    assert default_out("s3://b/run") == "s3://b/run/merged"


def test_a_launch_over_a_final_model_without_checkpoints_is_refused(tiny_model_dir, tiny_data, tmp_path):
    """A finished run whose checkpoints the user deleted to save room: a relaunch (the same, or another lr or
    method) trained from step 0 and replaced its final adapter (a method change left adapter_model.safetensors
    without its adapter_config.json), rc 0 and no word."""
    from ftctl.preflight import ERROR, Finding, check_resume

    out = tmp_path / "run"
    out.mkdir()
    (out / "adapter_config.json").write_text("{}")  # the mark of a final adapter (checkpoints.settings.final_saved)
    (out / "adapter_model.safetensors").write_text("the user's")
    (out / "spec.json").write_text("{}")  # a run's output
    said = (
        f"{out} holds a finished run's final model but no checkpoint to go on from (deleted, or none saved): this "
        "run would train from step 0 and write over it. Give another --output, or move that model out of it first."
    )
    for resume in ("auto", "never"):
        assert check_resume(*make_run(tiny_model_dir, tiny_data, out, "lora", resume=resume)) == [Finding(ERROR, said)]
    (out / "spec.json").unlink()  # no run's output (a checkpoint-N named as --output): refused as files of no run
    assert check_resume(*make_run(tiny_model_dir, tiny_data, out, "lora", resume="auto")) == []
    (out / "spec.json").write_text("{}")
    (out / "adapter_config.json").unlink()  # no final model: nothing to say
    assert check_resume(*make_run(tiny_model_dir, tiny_data, out, "lora", resume="auto")) == []


def test_ftctl_train_over_a_final_model_without_checkpoints_is_refused(tiny_model_dir, tiny_data, tmp_path, one_thread):
    """`ftctl train` (no preflight) into such an output: the trainer refuses before its first step."""
    import pytest

    from ftctl.errors import FtctlError
    from ftctl.trainer.run import train

    out = tmp_path / "run"
    done = dict(method="lora", lora_r=4, max_steps=2, save_steps=2)
    train(*make_run(tiny_model_dir, tiny_data, out, **done), echo=lambda line: None)
    shutil.rmtree(out / "checkpoint-2")  # kept only the final adapter, to save room
    adapter = (out / "adapter_model.safetensors").read_bytes()
    with pytest.raises(FtctlError, match="holds a finished run's final model but no checkpoint to go on from"):
        train(*make_run(tiny_model_dir, tiny_data, out, **dict(done, resume="auto")), echo=lambda line: None)
    assert (out / "adapter_model.safetensors").read_bytes() == adapter
