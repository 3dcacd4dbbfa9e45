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


def _put(local, uri: str) -> None:
    from ftctl import storage

    for f in sorted(p for p in local.rglob("*") if p.is_file()):
        storage.put_file(str(f), f"{uri}/{f.relative_to(local).as_posix()}")


def test_an_output_inside_another_runs_output_is_said_and_refused_where_that_run_deletes_it(s3_bucket, tmp_path):
    """What happens, on a real S3 server: the outer run's retention (upload.prune) deletes a checkpoint-N without a
    manifest below its newest, so an inner run launched as s3://bkt/r1/checkpoint-2 goes with it; one named otherwise
    is left by retention, but `ftctl sync pull` of the outer run downloads it as its own files."""
    from ftctl import storage
    from ftctl.backend import inside_a_run
    from ftctl.checkpoints.manifest import write_manifest
    from ftctl.checkpoints.upload import prune
    from tests.s3_fixtures import make_checkpoint

    outer = f"{s3_bucket}/r1"
    write_manifest(str(make_checkpoint(tmp_path / "outer", 3, {"adapter_model.safetensors": b"3"})), 3, 1, "h")
    _put(tmp_path / "outer", outer)
    assert inside_a_run(outer) is None and inside_a_run(f"{s3_bucket}/r2/exp2") is None  # no run above it

    with pytest.raises(FtctlError) as got:
        inside_a_run(f"{outer}/checkpoint-2")
    assert str(got.value) == (
        f"--output {outer}/checkpoint-2 is inside the output of another run, {outer} (checkpoint-3 is there), as its "
        "checkpoint-2: that run's retention, leases and relaunches write and delete a checkpoint-N that has no "
        f"manifest there, this run's files with them. Give a prefix beside it: --output {s3_bucket}/r1-checkpoint-2"
    )
    (tmp_path / "inner" / "checkpoint-1").mkdir(parents=True)
    (tmp_path / "inner" / "spec.json").write_text("{}")
    (tmp_path / "inner" / "checkpoint-1" / "adapter_model.safetensors").write_bytes(b"1")
    _put(tmp_path / "inner", f"{outer}/checkpoint-2")  # had the launch gone ahead: the outer run's next prune
    assert prune(outer, keep_last=1) == [f"{outer}/checkpoint-2"]
    assert not storage.file_sizes(f"{outer}/checkpoint-2")

    _put(tmp_path / "inner", f"{outer}/exp2/a")
    assert inside_a_run(f"{outer}/exp2/a/b") == (  # the outermost run above it, r1
        f"warning: --output {outer}/exp2/a/b is inside the output of another run, {outer} (checkpoint-3 is there): "
        f"`ftctl sync pull {outer}` downloads this run with that one's files, and deleting that run's prefix deletes "
        f"this one; a prefix beside it keeps them apart (--output {s3_bucket}/r1-exp2-a-b)."
    )
    assert prune(outer, keep_last=1) == []  # retention leaves a prefix of another name


def test_a_launch_inside_another_runs_output_says_so(
    s3_bucket, tiny_model_dir, tiny_data, tmp_path, monkeypatch, capsys
):
    from ftctl.backend import prepare, write_files
    from ftctl.spec import RunSpec

    monkeypatch.chdir(tmp_path)
    (tmp_path / "outer").mkdir()
    (tmp_path / "outer" / "spec.json").write_text("{}")
    _put(tmp_path / "outer", f"{s3_bucket}/r1")
    spec = RunSpec(
        model_name_or_path=str(tiny_model_dir), data_path=str(tiny_data), output_dir=f"{s3_bucket}/r1/exp2",
        method="lora", backend="local", gpus="cpu", run_name="exp2",
    )  # fmt: skip
    write_files(prepare(spec))
    assert (
        f"warning: --output {s3_bucket}/r1/exp2 is inside the output of another run, {s3_bucket}/r1 (its spec.json "
        in (capsys.readouterr().err)
    )
