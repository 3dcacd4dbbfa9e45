"""`--output` at an object store's bucket root (explore66 #9): a run keeps its checkpoints, spec.json, final model and
lease under its output and lists, pulls and prunes all of it, so a bucket's root made every other object in the bucket
part of the run (the final upload and `ftctl sync pull` list the whole bucket). Refused before anything is planned or
written, naming a prefix to give; a prefix is taken as before."""

from __future__ import annotations

import pytest

from ftctl.errors import FtctlError


@pytest.mark.parametrize("output", ["s3://bkt", "s3://bkt/", "gs://bkt", "az://box"])
def test_a_bucket_root_as_output_is_refused_naming_a_prefix(output, tmp_path, monkeypatch):
    from ftctl.backend import prepare
    from ftctl.spec import RunSpec

    monkeypatch.chdir(tmp_path)
    spec = RunSpec(model_name_or_path="m", data_path="d.json", output_dir=output, backend="local", run_name="exp 2")
    with pytest.raises(FtctlError) as got:
        prepare(spec)
    word = "container 'box'" if output.startswith("az") else "bucket 'bkt'"
    assert str(got.value) == (
        f"--output {output.rstrip('/')} is the root of {word}: a run keeps its checkpoints, spec.json, final model and lease "
        f"under its output, and lists, pulls and prunes all of it; give the run a prefix of its own: --output "
        f"'{output.rstrip('/')}/exp 2'"
    )
    assert not (tmp_path / "runs").exists()


def test_a_prefix_in_a_bucket_is_no_root():
    from ftctl.storage import root_output

    assert root_output("s3://bkt/r1") is None and root_output("s3://bkt/r1/exp2/") is None
    assert root_output("hf://datasets/org/name") is None and root_output("runs/r1") is None
