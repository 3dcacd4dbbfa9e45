"""A SkyPilot launch --dry-run checks the data as a local or docker one does (helper 139): its rows through the
tokenizer where they are here or small in a store, and a note of what it tokenized, or did not and why."""

from __future__ import annotations

import json
import sys

import pytest

from ftctl import preflight, storage
from ftctl.plan import make_plan
from ftctl.preflight import ERROR, NOTE
from ftctl.spec import build

LONG_ROW = {"messages": [{"role": "user", "content": "word " * 400}, {"role": "assistant", "content": "ok"}]}


def _said(spec, backend="sky", dry_run=True):
    return [f for f in preflight.preflight(spec, make_plan(spec), backend, dry_run=dry_run) if f.level in (ERROR, NOTE)]


def test_a_skypilot_dry_run_tokenizes_the_rows_before_the_node_is_paid_for(
    tiny_model_dir, tiny_data, tmp_path, monkeypatch
):
    """A row with nothing left to train after model_max_length was found by the trainer once the cloud node was up
    and set up (minutes, paid for); a local or docker dry run said it in seconds, a SkyPilot one did not. Nor did
    any dry run where another error was found first (an output bucket without credentials here)."""
    long = tmp_path / "long.jsonl"
    long.write_text((json.dumps(LONG_ROW) + "\n") * 3)
    over = {"model_name_or_path": str(tiny_model_dir), "data_path": str(long), "model_max_length": 64, "gpus": "cpu"}
    spec = build({**over, "output_dir": str(tmp_path / "out")})
    said = _said(spec)
    assert any(f.level == ERROR and "every label is masked after truncation to 64 tokens" in f.what for f in said)
    assert not any("masked after" in f.what for f in _said(spec, dry_run=False))  # the launch: the trainer's
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    both = [f.what for f in _said(build({**spec.to_dict(), "output_dir": "s3://b/runs/x"})) if f.level == ERROR]
    assert any("No credentials for s3://b/runs/x" in w for w in both), both
    assert any("every label is masked after truncation" in w for w in both), both
    good = _said(build({**spec.to_dict(), "data_path": str(tiny_data), "model_max_length": 2048}))
    (note,) = [f for f in good if f.level == NOTE]  # what was checked, said
    assert note.text.startswith(f"data_path: {tiny_data} in the run file: 48 rows tokenized here as the trainer will (")


def test_a_dry_run_reads_small_data_in_a_store_and_says_what_it_did_not(
    tiny_model_dir, tmp_path, s3_bucket, monkeypatch
):
    """Data in a bucket was never tokenized before a launch; up to TOKENIZE_BYTES it is now, in a dry run only. Larger
    data is not downloaded: a note says so, and the `ftctl data check` that reads it."""
    uri = f"{s3_bucket}/data/long.jsonl"
    with storage.open_file(uri, "wb") as fh:
        fh.write(((json.dumps(LONG_ROW) + "\n") * 3).encode())
    over = {"model_name_or_path": str(tiny_model_dir), "data_path": uri, "model_max_length": 64, "gpus": "cpu"}
    spec = build({**over, "output_dir": str(tmp_path / "out")})
    assert any("every label is masked after truncation" in f.what for f in _said(spec) if f.level == ERROR)
    assert preflight.check_tokenized(spec) == []  # a Slurm launch's: local data only, as before
    monkeypatch.setattr(preflight, "TOKENIZE_BYTES", 100)
    monkeypatch.setattr("ftctl.trainer.data.check_data", lambda *a, **k: pytest.fail("read data over the limit"))
    (note,) = _said(spec)
    assert note.level == NOTE and note.what == (
        f"data_path: {uri} in the run file: not tokenized here (6,264 bytes in its store, over the 100 bytes read here): the trainer does it"
    )
    assert note.fix == (f"`ftctl data check {uri} --model {tiny_model_dir} --max-length 64 --show 2` does it here.")


def test_a_dry_run_says_why_it_did_not_tokenize(tiny_data, tiny_model_dir, tmp_path, monkeypatch):
    """A hub id this machine has not cached (the nodes download it), or ftctl in SkyPilot's own python: said."""
    spec = build(
        {"model_name_or_path": "org/not-cached", "data_path": str(tiny_data), "gpus": "cpu", "model_params": "1b"}
    )
    (note,) = [f for f in preflight.check_tokenized(spec, dry_run=True)]
    assert note.what == (
        f"data_path: {tiny_data} in the run file: not tokenized here (org/not-cached's tokenizer is not in this machine's Hugging Face "
        "cache): the trainer does it"
    )
    assert preflight.check_tokenized(spec) == []  # outside a dry run: nothing said, as before
    monkeypatch.setitem(sys.modules, "transformers.utils", None)  # SkyPilot's venv: no transformers
    spec = build({**spec.to_dict(), "model_name_or_path": str(tiny_model_dir)})
    (note,) = preflight.check_tokenized(spec, dry_run=True)
    assert "not tokenized here (this python has no transformers)" in note.what
    assert note.fix.startswith("run ftctl from the trainer's environment")


def test_skypilots_options_name_skypilot_as_backend(monkeypatch):
    """`ftctl launch --infra aws --method lora ...` (no --backend, no --gpus), a SkyPilot user's first line, went to
    this machine and was refused ("infra is an option of --backend sky ... add --backend sky"); with --gpus H100 it
    listed four backends, SkyPilot's "unavailable" for want of a running API server (SkyPilot starts one itself)."""
    from click.testing import CliRunner

    from ftctl.backend import implied_backend
    from ftctl.cli import main

    monkeypatch.delenv("FTCTL_BACKEND", raising=False)
    args = ["launch", "--infra", "aws", "--method", "lora", "--data", "builtin:demo", "--output", "s3://b/x"]
    r = CliRunner().invoke(main, [*args, "--dry-run"])
    assert r.exit_code == 2 and r.output.startswith("error: --gpus is required for --backend sky: "), r.output
    assert implied_backend(build({"infra": "aws", "spot": True})) == ("sky", "infra, spot: options of sky alone")
    assert implied_backend(build({"partition": "gpu"})) == ("slurm", "partition: an option of slurm alone")
    assert implied_backend(build({"container": "docker:img"})) is None  # slurm's, sky's and docker's
    assert implied_backend(build({})) is None


def test_a_build_dry_run_says_an_arm_image_is_emulated_here(monkeypatch):
    from click.testing import CliRunner

    from ftctl.cli import main

    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    r = CliRunner().invoke(main, ["build", "--gpus", "GH200", "--dry-run"])
    assert r.exit_code == 0 and "--platform linux/arm64" in r.stdout
    assert r.stderr.startswith("note: this machine is amd64, the image linux/arm64: docker buildx runs its steps")
