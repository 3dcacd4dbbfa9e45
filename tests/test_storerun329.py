"""`ftctl chat/eval/merge` of a run whose output is in object storage, named by the local directory `ftctl jobs` and
`ftctl status` name for it (runs/NAME: the launch's spec.json, script and logs; the weights are in the store), or by
its s3:// URI where the shell sets no endpoint but the run's job recorded one (-o s3_endpoint_url: MinIO, R2).
explore66 #7 and #3's open note: the run directory said "No model or LoRA adapter ... pass the output directory of a
run", and the URI "Cannot reach AWS S3 (no endpoint set)". A real CPU lora run of the tiny model trained into a real
S3 server on loopback (moto), once for the module; its run directory written and its job recorded as `ftctl launch`
does."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from tests.s3_fixtures import assert_no_secrets, fake_aws
from tests.trainer_fixtures import make_run

TURNS = [
    [{"role": "user", "content": "What is the code?"}, {"role": "assistant", "content": "AMBER-42."}],
    [{"role": "user", "content": "Name a river."}, {"role": "assistant", "content": "The Danube."}],
]


@pytest.fixture(scope="module")
def trained(tiny_model_dir, moto_s3, tmp_path_factory):
    """(the directory the launch ran from, the run's JobRef): a lora run trained into the store with -o
    s3_endpoint_url, its run directory runs/r1 written as a launch writes it."""
    import torch

    from ftctl.backend import JobRef, prepare, write_files
    from ftctl.trainer.run import train

    where = tmp_path_factory.mktemp("storerun")
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        fake_aws(mp, where, moto_s3.endpoint)
        mp.chdir(where)
        mp.setenv("FTCTL_CACHE", str(where / "cache"))
        torch.set_num_threads(1)  # a tiny model trains faster on one thread than on two busy ones
        (where / "train.jsonl").write_text("".join(json.dumps({"messages": t}) + "\n" for t in TURNS * 4))
        (where / "held.jsonl").write_text(json.dumps({"messages": TURNS[0]}) + "\n")
        output = f"s3://{moto_s3.make_bucket()}/runs/r1"
        spec, plan = make_run(
            tiny_model_dir, where / "train.jsonl", output, "lora", max_steps=1, save_steps=1, lora_r=4,
            backend="local", s3_endpoint_url=moto_s3.endpoint, run_name="r1",
        )  # fmt: skip
        try:
            train(spec, plan, echo=lambda line: None)
        finally:
            torch.set_num_threads(threads)
        rendered = prepare(spec)
        write_files(rendered)
    run_dir = str(rendered.paths.root)
    return where, JobRef("local", run_dir, run_dir, spec.name, output)


@pytest.fixture
def store_run(trained, monkeypatch, tmp_path):
    """The run's JobRef, its job recorded here, from the directory it was launched in, in a shell with the AWS
    credentials but no endpoint variable (the user gave -o s3_endpoint_url)."""
    from ftctl.backend import record_job

    where, ref = trained
    fake_aws(monkeypatch, tmp_path)
    for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):  # unset, and unset again after (the command may set it)
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)
    monkeypatch.chdir(where)
    record_job(ref)
    return ref


def test_chat_of_a_store_runs_directory_loads_its_output_with_the_endpoint_its_job_recorded(store_run, moto_s3):
    from ftctl.cli import main

    output = store_run.output
    got = CliRunner().invoke(main, ["chat", "runs/r1", "-p", "hi", "--max-new-tokens", "2"])
    assert got.exit_code == 0, got.output  # was 2: "No model or LoRA adapter ... in runs/r1"
    said = got.stderr.splitlines()
    assert said[:2] == [
        f"loading {output} (the output of runs/r1)",
        f"{output}: using the S3 endpoint {moto_s3.endpoint}, as its launch recorded it (-o s3_endpoint_url; "
        "AWS_ENDPOINT_URL sets another)",
    ]
    assert f"loading the LoRA adapter {output} on " in got.stderr
    assert_no_secrets(got.output)

    # the run directory copied to a machine whose jobs record does not name it: its spec.json says the same
    os.remove(os.environ["FTCTL_HOME"] + "/jobs.jsonl")
    os.environ.pop("AWS_ENDPOINT_URL", None)  # as the shell was
    again = CliRunner().invoke(main, ["chat", store_run.run_dir, "-p", "hi", "--max-new-tokens", "2"])
    assert again.exit_code == 0, again.output
    assert again.stderr.startswith(f"loading {output} (the output of {store_run.run_dir})\n{output}: using the S3 ")


def test_chat_of_the_s3_uri_takes_the_endpoint_its_job_recorded_where_the_shell_sets_none(store_run, moto_s3):
    from ftctl.cli import main

    output = store_run.output
    got = CliRunner().invoke(main, ["chat", output, "-p", "hi", "--max-new-tokens", "2"])
    assert got.exit_code == 0, got.output  # was 2: "Cannot reach AWS S3 (no endpoint set)"
    assert got.stderr.startswith(f"{output}: using the S3 endpoint {moto_s3.endpoint}, as its launch recorded it")

    # its job's id (a Slurm job's, say): the output of that job, with the endpoint its launch recorded
    from dataclasses import replace

    from ftctl.backend import record_job

    record_job(replace(store_run, backend="slurm", job_id="4242"))
    os.environ.pop("AWS_ENDPOINT_URL", None)
    got = CliRunner().invoke(main, ["chat", "4242", "-p", "hi", "--max-new-tokens", "2"])
    assert got.exit_code == 0, got.output
    assert got.stderr.startswith(f"RUN 4242: the output of job 4242, {output}\n{output}: using the S3 endpoint ")

    # one of its checkpoints: the job launched into the run above it; a shell that names another endpoint is used
    os.environ["AWS_ENDPOINT_URL"] = "http://127.0.0.1:9"
    got = CliRunner().invoke(main, ["chat", f"{output}/checkpoint-1", "-p", "hi"])
    # said as the endpoint, whatever an earlier S3 call of this process found for credentials (CI's run: "set
    # AWS_ACCESS_KEY_ID": test_status149 had asked this endpoint with none set, and its client was kept; test_store_errors335)
    assert got.exit_code == 2 and "error: Cannot reach the S3 endpoint http://127.0.0.1:9 for " in got.stderr, (
        got.stderr
    )
    assert got.stderr.startswith(
        f"note: {output}/checkpoint-1's launch recorded the S3 endpoint {moto_s3.endpoint}; AWS_ENDPOINT_URL names "
        "http://127.0.0.1:9, which is used\n"
    )
    os.environ.pop("AWS_ENDPOINT_URL", None)
    got = CliRunner().invoke(main, ["chat", f"{output}/checkpoint-1", "-p", "hi", "--max-new-tokens", "2"])
    assert got.exit_code == 0, got.output


def test_eval_and_merge_of_a_store_runs_directory_use_its_output(store_run, tmp_path):
    from ftctl.cli import main

    output = store_run.output
    scored = CliRunner().invoke(main, ["eval", "runs/r1", "--data", "held.jsonl"])
    assert scored.exit_code == 0, scored.output  # was 2: nothing to load in runs/r1
    assert scored.stderr.startswith(f"loading {output} (the output of runs/r1)\n{output}: using the S3 endpoint ")
    assert "(1 row, " in scored.stdout

    os.environ.pop("AWS_ENDPOINT_URL", None)
    merged = CliRunner().invoke(main, ["merge", "runs/r1"])
    assert merged.exit_code == 0, merged.output
    assert f"merged into {output}/merged (" in merged.stdout  # into the store, beside the adapter, as of its URI
    os.environ.pop("AWS_ENDPOINT_URL", None)
    got = CliRunner().invoke(main, ["chat", f"{output}/merged", "-p", "hi", "--max-new-tokens", "2"])  # its `next:`
    assert got.exit_code == 0, got.output
    assert got.stderr.startswith(f"{output}/merged: using the S3 endpoint ")


def test_an_endpoint_recorded_with_a_user_and_password_is_neither_taken_nor_repeated(monkeypatch):
    """A spec.json written before the launch refused s3_endpoint_url=http://USER:PASSWORD@HOST: its endpoint is not
    set for this process, and the line about it names neither."""
    from ftctl.trainer.trained import take_endpoint

    for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)
    said = take_endpoint("http://minio:Secret-pw-77@127.0.0.1:9000", "s3://b/r")
    assert said.startswith("note: s3://b/r's launch recorded an S3 endpoint with a user and password (not repeated")
    assert "Secret-pw-77" not in said and "minio" not in said and "AWS_ENDPOINT_URL" not in os.environ
    assert take_endpoint(None, "s3://b/r") is None and "AWS_ENDPOINT_URL" not in os.environ
