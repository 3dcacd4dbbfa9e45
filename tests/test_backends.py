"""The run directory launch writes: whole files, and never a silent overwrite of another run."""

import pytest

from ftctl.backend import prepare, write_files
from ftctl.errors import FtctlError
from ftctl.spec import build


def _prep(tmp_path, **flags):
    values = dict(
        method="lora",
        gpus="1xA100",
        backend="slurm",
        output_dir=str(tmp_path / "run"),
        model_name_or_path="lmsys/vicuna-7b-v1.5",
        data_path="s3://b/conv.json",
    )
    values.update(flags)
    return prepare(build(values))


def test_relaunch_with_other_placement_reuses_the_run_dir(tmp_path):
    write_files(_prep(tmp_path, partition="a"))
    write_files(_prep(tmp_path, partition="b", time="01:00:00"))  # where it runs may change: resume
    assert "--partition=b" in (tmp_path / "run" / "job.sbatch").read_text()
    assert not list((tmp_path / "run").glob(".*.tmp"))  # files land whole (temp file + rename)


def test_relaunch_with_other_training_settings_is_refused(tmp_path):
    write_files(_prep(tmp_path))
    before = (tmp_path / "run" / "spec.json").read_text()
    with pytest.raises(FtctlError, match="different settings \\(learning_rate\\)"):
        write_files(_prep(tmp_path, learning_rate=1e-5))
    assert (tmp_path / "run" / "spec.json").read_text() == before  # the first run's spec is untouched
