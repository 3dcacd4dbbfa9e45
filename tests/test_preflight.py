"""The preflight: every problem before launch, at once, each with its fix; against a real S3
protocol server (moto_server) for the object-store checks."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from ftctl import preflight, storage
from ftctl.errors import FtctlError
from ftctl.plan import make_plan
from ftctl.preflight import ERROR, WARNING, check_data, check_disk, check_gpus, check_model, check_output
from ftctl.spec import RunSpec
from tests.s3_fixtures import free_port

FTCTL = Path(sys.executable).parent / "ftctl"
CONV = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]}


def levels(findings):
    return [f.level for f in findings]


def only(findings, level=ERROR) -> str:
    assert levels(findings) == [level], findings
    return findings[0].text


@pytest.fixture
def model_dir(tmp_path) -> Path:
    d = tmp_path / "my-model"
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "tokenizer.json").write_text("{}")
    return d


@pytest.fixture
def forget_credentials(monkeypatch):
    """Call it to have no AWS credentials from then on. fsspec caches S3 clients by their arguments,
    which do not include the credentials: the cache is emptied then and after the test."""
    import s3fs

    def forget():
        monkeypatch.delenv("AWS_ACCESS_KEY_ID")
        monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
        s3fs.S3FileSystem.clear_instance_cache()

    yield forget
    s3fs.S3FileSystem.clear_instance_cache()


def deny_policy(bucket: str, actions: list[str]) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Deny", "Principal": "*", "Action": actions, "Resource": f"arn:aws:s3:::{bucket}/*"}
            ],
        }
    )


# ------------------------------------------------------------------------------------------ model
def test_model_directory_or_hub_id(tmp_path, model_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert check_model(str(model_dir)) == [] and check_model("./my-model") == []
    assert check_model("HuggingFaceTB/SmolLM2-135M-Instruct") == []  # the demo model
    assert check_model("lmsys/vicuna-7b-v1.5") == []
    for missing in ("./missing-dir", "/x/y", "../elsewhere/model", "~/models/none/"):
        assert only(check_model(missing)).endswith(
            "no such directory; pass a model directory (with config.json) or a hub id such as org/name."
        )
    for bad in ("my model", "org/name/extra", "org/na me", "org--x/y", "just-a-name"):
        assert "not a hub id (org/name)" in only(check_model(bad)), bad
    (tmp_path / "empty").mkdir()
    assert "holds no config.json" in only(check_model(str(tmp_path / "empty")))
    # a LoRA run's output (PEFT's adapter files, its checkpoints) given as --model: what trains on from it
    (tmp_path / "run" / "checkpoint-3").mkdir(parents=True)
    (tmp_path / "run" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "org/base"}))
    assert only(check_model("run")) == (
        "--model run: a LoRA adapter of org/base, not a model; to train these adapters on with their optimizer and "
        "schedule, relaunch their run (--model org/base --output run, a larger -o max_steps) or start a new run from a "
        "checkpoint (--model org/base -o resume=run/checkpoint-3 --output NEW); with a fresh optimizer and schedule, "
        "--model org/base -o lora_model_dir=run --output NEW; for new adapters (or fft) over it, merge it first "
        "(ftctl merge run), then --model run/merged."
    )
    (tmp_path / "run" / "checkpoint-3").rmdir()  # PEFT's save_pretrained: no checkpoints
    assert only(check_model("run")).endswith(
        "not a model; to train these adapters on with a fresh optimizer and schedule, --model org/base -o "
        "lora_model_dir=run --output NEW; for new adapters (or fft) over it, merge it first (ftctl merge run), then "
        "--model run/merged."
    )
    assert "a file, not a model directory" in only(check_model(str(model_dir / "config.json")))
    assert "not a URI" in only(check_model("s3://bucket/model"))
    # weights without their tokenizer: said before the job (the trainer's tokenizer load said it in transformers'
    # words, about sentencepiece); any of the tokenizer files transformers saves or ships will do
    (model_dir / "tokenizer.json").unlink()
    assert only(check_model(str(model_dir))) == (
        f"--model {model_dir}: the directory holds a model but no tokenizer (tokenizer.json, tokenizer.model or "
        "vocabulary files); save the tokenizer beside it (tokenizer.save_pretrained(DIR)), or copy its tokenizer "
        "files there."
    )
    for name in ("tokenizer.model", "vocab.json", "qwen.tiktoken"):
        (model_dir / name).write_text("x")
        assert check_model(str(model_dir)) == [], name
        (model_dir / name).unlink()


def test_lora_target_modules_are_matched_against_the_models_modules_before_the_job(tiny_model_dir, monkeypatch):
    """A typo in lora_target_modules was said by the trainer only, on a cluster after the queue wait: the preflight
    builds the model on the meta device from its config.json and says it in the trainer's words. Without a config
    to read (the demo model not built yet, a known id offline) it builds a layer of the known shape's architecture:
    the demo's dry run said nothing of a typo (the plan's known shape, passed in)."""
    from ftctl.spec import DEMO_MODEL, build

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for model in (DEMO_MODEL, "meta-llama/Llama-3.1-8B-Instruct", "google/gemma-2-9b-it"):
        for targets, found in (("q_prj", 1), ("down_proj", 0)):
            spec = build({"model_name_or_path": model, "lora_target_modules": targets, "gpus": "1xH100"})
            said = preflight.check_lora_targets(spec, make_plan(spec).model)
            assert len(said) == found and all(f"no module of {model} is named 'q_prj'. Did you" in f.what for f in said)

    spec = build({"model_name_or_path": str(tiny_model_dir), "lora_target_modules": "q_prj,v_proj"})
    (found,) = preflight.check_lora_targets(spec)
    assert found.level == ERROR and "no module of" in found.what and "Did you mean 'q_proj'?" in found.what
    assert preflight.check_lora_targets(build({**spec.to_dict(), "lora_target_modules": ["q_proj", "v_proj"]})) == []
    assert preflight.check_lora_targets(build({**spec.to_dict(), "method": "fft"})) == []  # no adapters
    unread = build({"model_name_or_path": "org/unread", "lora_target_modules": "q_prj", "model_params": "1b"})
    assert preflight.check_lora_targets(unread) == []  # no config to build it from: the trainer checks


def test_a_slurm_jobs_rows_go_through_the_tokenizer_before_the_queue_wait(tiny_model_dir, tiny_data, tmp_path):
    """Rows with nothing left to train after model_max_length (or a template that refuses their roles) failed the
    job on its node: before a Slurm job, local data of TOKENIZE_BYTES at most is tokenized as the trainer does."""
    from ftctl.spec import build

    long = tmp_path / "long.jsonl"
    row = {"messages": [{"role": "user", "content": "word " * 400}, {"role": "assistant", "content": "ok"}]}
    long.write_text((json.dumps(row) + "\n") * 3)
    spec = build({"model_name_or_path": str(tiny_model_dir), "data_path": str(long), "model_max_length": 64})
    (found,) = preflight.check_tokenized(spec)
    assert found.level == ERROR and "every label is masked after truncation to 64 tokens" in found.what
    assert f"ftctl data check {long} --model {tiny_model_dir} --max-length 64 --show 2`" in found.fix
    refusing = tmp_path / "refusing.jinja"  # a template that refuses every row: said in the command it suggests
    refusing.write_text("{{ raise_exception('roles must alternate') }}")
    over = {"assistant_only_loss": False, "chat_template_path": str(refusing), "data_path": str(tiny_data)}
    (refused,) = preflight.check_tokenized(build({**spec.to_dict(), **over}))
    assert refused.fix.endswith(
        f"--chat-template-path {refusing} --every-token` lists every row and shows what it trains."
    )
    broken = tmp_path / "broken-model"  # a tokenizer this machine cannot load: the trainer's to say, no traceback
    shutil.copytree(tiny_model_dir, broken)
    (broken / "tokenizer.json").write_text("{not json")
    assert preflight.check_tokenized(build({**spec.to_dict(), "model_name_or_path": str(broken)})) == []
    assert preflight.check_tokenized(build({**spec.to_dict(), "data_path": str(tiny_data)})) == []
    assert preflight.check_tokenized(build({**spec.to_dict(), "model_name_or_path": "org/not-cached"})) == []


def test_a_local_run_of_a_hub_id_this_machine_cannot_download_stops_before_the_trainer(monkeypatch, tmp_path):
    """explore16: `launch --backend local --model Qwen/Qwen2.5-0.5B-Instruct` with no network and no cache started
    the trainer (torch's imports, 13 s on this CPU), which stopped at the tokenizer's download. A cluster's or a
    cloud's nodes may reach the Hub: only a run here is refused."""
    from click.testing import CliRunner

    from ftctl.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert only(check_model("nobody-e16/not-cached", here=True)) == (
        "--model nobody-e16/not-cached: not in this machine's Hugging Face cache, and HF_HUB_OFFLINE is set; download "
        "it where the Hub answers (hf download nobody-e16/not-cached --local-dir DIR) and give DIR instead, or set HF_ENDPOINT to a "
        "mirror this machine reaches (HF_TOKEN for a gated model)"
    )
    assert check_model("nobody-e16/not-cached") == []
    run = ["launch", "--dry-run", "--gpus", "cpu", "--model", "nobody-e16/not-cached", "--model-params", "135m"]
    run += ["--output", str(tmp_path / "run")]
    here = CliRunner().invoke(main, [*run, "--backend", "local"])
    assert here.exit_code == 2 and "not in this machine's Hugging Face cache" in here.output, here.output
    elsewhere = CliRunner().invoke(main, [*run, "--backend", "slurm"])  # its nodes may have their own cache: a warning
    assert (
        elsewhere.exit_code == 0 and "warning: --model nobody-e16/not-cached: not in this machine's" in elsewhere.output
    )


def test_chat_of_a_hub_id_the_hub_cannot_give_is_said_in_seconds(tmp_path):
    """explore16: `ftctl chat Qwen/Qwen2.5-0.5B-Instruct` with no network waited ~50 s on huggingface_hub's retries
    (with one of its lines) before the error; resolve_model asks the Hub once, quickly, as preflight does."""
    from tests.trainer_fixtures import subprocess_env

    hub = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = subprocess_env(HF_ENDPOINT=hub, HF_HUB_CACHE=str(tmp_path / "hub"))
    start = time.monotonic()
    said = subprocess.run(
        [str(FTCTL), "chat", "nobody-e16/not-cached", "-p", "hi"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert said.returncode == 2 and "Traceback" not in said.stderr, said.stderr
    assert said.stderr.splitlines() == [
        f"error: Cannot load nobody-e16/not-cached: it is not a directory here (in {tmp_path}), and as a model id: not in "
        f"this machine's Hugging Face cache, and the Hub ({hub}) did not answer (ConnectError); download it where the "
        "Hub answers (hf download nobody-e16/not-cached --local-dir DIR) and give DIR instead, or set HF_ENDPOINT to a mirror this "
        "machine reaches (HF_TOKEN for a gated model)"
    ]
    assert time.monotonic() - start < 20


def test_gated_model_wants_hf_token(monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    text = only(check_model("meta-llama/Llama-3.1-8B"), WARNING)
    assert "gated" in text and "HF_TOKEN" in text
    monkeypatch.setenv("HF_TOKEN", "hf_dummy")
    assert check_model("meta-llama/Llama-3.1-8B") == []


def test_trainer_refuses_a_missing_model_directory_in_preflight_words(tmp_path):
    from ftctl.trainer.model import resolve_model

    with pytest.raises(FtctlError, match="no such directory"):
        resolve_model(str(tmp_path / "missing-dir"))


def test_an_output_holding_files_of_no_run_is_refused_before_anything_is_written(tmp_path):
    """--output proj where proj holds the user's README.md: the run's model card would have replaced it."""
    from ftctl.backend import prepare, write_files
    from ftctl.spec import build

    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / ".git").mkdir()  # hidden names are no run's files: an empty directory still
    (proj / "slurm-7.out").write_text("a job script's own log, written before ftctl train starts")
    assert check_output(str(proj)) == []
    (proj / "README.md").write_text("my notes")
    said = (
        f"--output {proj} holds files of no ftctl run (README.md): the run would write its model, README.md, "
        "checkpoints and metrics among them, replacing any of the same name. Choose a new or empty directory."
    )
    assert only(check_output(str(proj))) == said
    rendered = prepare(build({"method": "lora", "gpus": "1xA100", "backend": "slurm", "output_dir": str(proj)}))
    with pytest.raises(FtctlError, match="holds files of no ftctl run"):  # `ftctl train` goes straight here
        write_files(rendered)
    assert sorted(p.name for p in proj.iterdir()) == [".git", "README.md", "slurm-7.out"]
    assert (proj / "README.md").read_text() == "my notes"
    write_files(
        prepare(build({"method": "lora", "gpus": "1xA100", "backend": "slurm", "output_dir": str(tmp_path / "r")}))
    )
    (tmp_path / "r" / "notes.txt").write_text("x")  # a run's own directory: relaunched as before
    assert check_output(str(tmp_path / "r")) == []


def test_a_path_missing_on_a_slurm_node_says_it_may_be_the_submit_hosts(tmp_path, monkeypatch):
    """The trainer on a Slurm node other than the one the job came from: a data file or model directory it cannot
    see is likely on the login node's /tmp or disk (the launch's preflight saw it there)."""
    from ftctl.trainer.model import resolve_model

    monkeypatch.setenv("SLURM_SUBMIT_HOST", "login1.hpc.example.edu")
    monkeypatch.setenv("SLURMD_NODENAME", "gpu017")
    where = r"this node \(gpu017\) does not see it; if it is on login1.hpc.example.edu, where the job was submitted"
    assert re.search(rf"No data at .*missing\.json: {where}", only(check_data(str(tmp_path / "missing.json"))))
    with pytest.raises(FtctlError, match=rf"no such directory; {where}"):
        resolve_model(str(tmp_path / "missing-dir"))
    assert storage.not_on_this_node("s3://b/missing.json") == ""  # a URI is no node's own
    monkeypatch.setenv("SLURMD_NODENAME", "login1")  # a job on the host it came from: the usual advice
    assert "give a .json" in only(check_data(str(tmp_path / "missing.json")))


# ------------------------------------------------------------------------------------------- data
def test_the_rows_own_problems_are_said_before_the_job(tmp_path, monkeypatch):
    """A broken line, fields of no known format: said at launch (and by --dry-run), as the trainer would list them,
    not once a queued job or a paid GPU reached its data; data too large to read whole is left to the trainer."""
    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(json.dumps({"question": f"q{i}", "answer": "a"}) + "\n" for i in range(40)))
    said = only(check_data(str(qa)))
    assert said.startswith(f"--data {qa}: qa.jsonl lines 1-40 (all 40 rows): not a conversation: keys 'question', ")
    assert said.endswith(f"; `ftctl data check {qa}` lists them (--all: every row's problem).")
    named = only(check_data(str(qa), run_args=["--model", "org/m"]))  # the run's template, not the default model's
    assert f"; `ftctl data check {qa} --model org/m` lists them (--all: every row's problem)." in named
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(CONV) + "\n" + '{"messages": [oops\n')
    assert "broken.jsonl line 2: invalid JSON" in only(check_data(str(broken)))
    assert check_data(str(broken), flag="--eval-data", held_out=False) != []  # held-out data too
    monkeypatch.setattr(preflight, "ROW_CHECK_BYTES", 10)
    # larger than read before the job: not read, and said (the trainer would refuse its rows after tokenizing them)
    assert "its rows were not checked before the launch" in only(check_data(str(broken)), WARNING)
    monkeypatch.undo()
    split = tmp_path / "split"
    split.mkdir()
    (split / "train.jsonl").write_text(json.dumps({"question": "q"}) + "\n")
    (split / "test.jsonl").write_text(json.dumps({"question": "q"}) + "\n")
    assert f"`ftctl data check {split} --held-out`" in only(check_data(str(split), flag="--eval-data"))
    gone = tmp_path / "gone"
    gone.mkdir()
    (gone / "a.jsonl").write_text(json.dumps(CONV) + "\n")
    (gone / "b.jsonl").symlink_to(tmp_path / "nowhere.jsonl")  # listed, not readable: a finding, not a traceback
    assert "cannot read" in only(check_data(str(gone)))


def test_local_data(tmp_path):
    assert check_data("builtin:demo") == []
    (tmp_path / "d.jsonl").write_text(json.dumps(CONV) + "\n")
    assert check_data(str(tmp_path / "d.jsonl")) == [] and check_data(str(tmp_path)) == []
    assert "No data at" in only(check_data(str(tmp_path / "missing.json")))
    (tmp_path / "empty").mkdir()
    assert "holds no .json" in only(check_data(str(tmp_path / "empty")))


def test_data_with_no_rows_and_a_split_that_leaves_none_are_said_before_the_job(tmp_path):
    """An empty (or blank-lines) file and eval_split of a one-row file passed the dry run: the trainer stopped on
    them after the queue wait. "lower it" cannot help a one-row file."""
    for text in ("", "\n\n  \n"):
        (tmp_path / "e.jsonl").write_text(text)
        assert only(check_data(str(tmp_path / "e.jsonl"))).startswith(f"--data {tmp_path}/e.jsonl: no rows: the data")
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps(CONV) + "\n")
    spec = RunSpec(data_path=str(one), eval_split=0.05)
    assert only(preflight.check_row_counts(spec)) == (
        f"eval_split=0.05 of {one}'s 1 row leaves none to train on: give held-out data with --eval-data FILE, or "
        "train without evaluation: -o eval_split=0"
    )
    one.write_text(2 * (json.dumps(CONV) + "\n"))
    assert "of " + str(one) + "'s 2 rows leaves none to train on: lower it below 0.5, give" in only(
        preflight.check_row_counts(replace(spec, eval_split=0.6))
    )
    assert preflight.check_row_counts(replace(spec, eval_split=0.5)) == []  # one row held out, one trained
    assert preflight.check_row_counts(replace(spec, eval_data_path=str(one))) == []  # held-out data of its own
    many = tmp_path / "many.jsonl"
    many.write_text(20 * (json.dumps(CONV) + "\n"))
    mixed = RunSpec(data_path=f"{one},{many}", data_weights="1,0.01")  # 20 x 0.01 rounds to no row: it was said
    assert only(preflight.check_row_counts(mixed)) == (
        f"data_weights: {many}'s 20 rows x 0.01 give none an epoch: raise its weight above 0.025, or leave it out of "
        "data_path"
    )
    assert preflight.check_row_counts(replace(mixed, data_weights="1,0.03")) == []


def test_remote_data(s3_bucket, forget_credentials):
    with storage.open_file(f"{s3_bucket}/data/a.jsonl", "wb") as f:
        f.write((json.dumps(CONV) + "\n").encode())
    assert check_data(f"{s3_bucket}/data") == [] and check_data(f"{s3_bucket}/data/a.jsonl") == []
    assert "No data at" in only(check_data(f"{s3_bucket}/data/missing.jsonl"))
    assert "No bucket 'no-such-bucket-x'" in only(check_data("s3://no-such-bucket-x/data.jsonl"))
    forget_credentials()
    text = only(check_data(f"{s3_bucket}/data"))
    assert text.startswith(f"--data {s3_bucket}/data: No credentials") and "AWS_ACCESS_KEY_ID" in text


# ----------------------------------------------------------------------------------------- output
def test_remote_output_is_written_and_the_marker_removed(s3_bucket, moto_s3):
    assert check_output(f"{s3_bucket}/run") == []
    bucket = s3_bucket.split("://")[1]
    assert moto_s3.client().list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


def test_remote_output_missing_bucket_no_credentials_wrong_endpoint(s3_bucket, forget_credentials):
    text = only(check_output("s3://no-such-bucket-y/run"))
    assert "No bucket 'no-such-bucket-y'" in text and "create it" in text

    dead = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    text = only(check_output(f"{s3_bucket}/run", endpoint_url=dead))
    assert f"Cannot reach the S3 endpoint {dead}" in text and "s3_endpoint_url" in text
    assert time.monotonic() - start < 10  # one attempt, no retries

    forget_credentials()
    text = only(check_output(f"{s3_bucket}/run"))
    assert "No credentials" in text and "AWS_ACCESS_KEY_ID" in text and "AWS_PROFILE" in text


def test_remote_output_silent_endpoint_times_out(silent_s3):
    # accepts connections and never answers: the "ask" read limit ends it
    start = time.monotonic()
    text = only(check_output("s3://bucket/run", endpoint_url=silent_s3.endpoint))
    assert "did not answer in time" in text, text
    assert time.monotonic() - start < 8


def test_a_store_whose_package_is_missing_is_said_not_timed_out(monkeypatch, capsys):
    """gs:// without gcsfs: the check's own line (it had died in its thread: a traceback, then a timeout)."""
    import fsspec

    def missing(protocol):
        raise ImportError(f"no {protocol}")

    monkeypatch.setattr(fsspec, "get_filesystem_class", missing)
    start = time.monotonic()
    text = only(check_output("gs://b/x"))
    assert text.startswith("--output gs://b/x: 'gs://b/x/") and text.endswith(
        "needs the gcsfs package: pip install 'ftctl[gcs]'"
    )
    assert time.monotonic() - start < 5 and "Traceback" not in capsys.readouterr().err


def test_read_only_bucket(s3_bucket, moto_s3):
    """moto enforces bucket policies: a Deny on PutObject makes the bucket read-only."""
    bucket = s3_bucket.split("://")[1]
    moto_s3.client().put_bucket_policy(Bucket=bucket, Policy=deny_policy(bucket, ["s3:PutObject"]))
    text = only(check_output(f"{s3_bucket}/run"))
    assert text.startswith(f"--output {s3_bucket}/run: Access denied") and "write" in text


def test_bucket_that_refuses_deletes_is_a_warning(s3_bucket, moto_s3):
    bucket = s3_bucket.split("://")[1]
    moto_s3.client().put_bucket_policy(Bucket=bucket, Policy=deny_policy(bucket, ["s3:DeleteObject"]))
    text = only(check_output(f"{s3_bucket}/run"), WARNING)
    assert "can write but not delete" in text and "save_total_limit" in text


def test_local_output(tmp_path):
    assert check_output(str(tmp_path / "new" / "run")) == []
    assert check_output(f"file://{tmp_path}/run") == []
    (tmp_path / "file").write_text("x")
    # tests run as root, who may write anywhere: a path below a regular file cannot be created
    assert "is a file" in only(check_output(str(tmp_path / "file" / "run")))
    assert "not a directory" in only(check_output(str(tmp_path / "file")))
    assert not list(tmp_path.glob(".ftctl-preflight-*"))  # the write test leaves nothing


# -------------------------------------------------------------------------------------- GPUs, disk
def plan_for(gpus: str, method: str = "lora", params: str = "1b"):
    return make_plan(RunSpec(method=method, gpus=gpus, model_params=params, model_name_or_path="org/model"))


@pytest.mark.parametrize("store", [False, True], ids=["local", "s3"])
def test_a_relaunch_is_checked_against_the_outputs_newest_checkpoint(tmp_path, store, request):
    """Before the job is paid for: settings the newest checkpoint cannot continue under are an error, changed ones
    are said, and resume=never does not write over it (the trainer checks the same at its start)."""
    from ftctl.checkpoints import push, write_manifest
    from ftctl.checkpoints.settings import settings
    from ftctl.preflight import check_resume
    from ftctl.spec import build

    run = tmp_path / "run"
    spec = build({"method": "lora", "lora_r": 8, "output_dir": str(run), "gpus": "1xA100", "model_params": "1b"})
    for step in (20, 40):
        ckpt = run / f"checkpoint-{step}"
        ckpt.mkdir(parents=True)
        (ckpt / "adapter_model.safetensors").write_bytes(b"weights")
        (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step, "max_steps": 100}))
        write_manifest(str(ckpt), step, 1, spec.digest(), settings=settings(spec, make_plan(spec)))
    output = str(run)
    if store:
        output = f"{request.getfixturevalue('s3_bucket')}/run"
        push(str(run), output, echo=lambda *_: None)
    spec = replace(spec, output_dir=output)

    def check(**changed):
        new = replace(spec, **changed)
        return check_resume(new, make_plan(new))

    assert check() == []
    assert only(check(lora_r=16)) == (
        f"{storage.join(output, 'checkpoint-40')} was trained with lora_r=8; this run asks for lora_r=16, which "
        "cannot continue it. Relaunch with lora_r: 8 in the run file to resume it, or give another --output to train "
        "from the start."  # as the spec gave it (build's dict: a run file's), settings.compare's spec
    )
    assert only(check(learning_rate=1e-5), WARNING) == (
        "checkpoint-40 was saved with other settings: learning_rate 0.0002 -> 1e-05; the run goes on from step 40 "
        "with the new ones; another --output starts a new run instead"
    )
    assert only(check(resume="never")).startswith(f"resume=never, but {output} holds an earlier run's checkpoints")
    assert check(resume=str(run / "checkpoint-40")) == []  # a checkpoint named, its settings unchanged
    # named, it is checked as the newest is (its manifest read from the store, nothing else of it), before the job
    named = storage.join(output, "checkpoint-40")
    assert only(check(lora_r=16, resume=named)) == only(check(lora_r=16))
    assert only(check(learning_rate=1e-5, resume=named), WARNING) == only(check(learning_rate=1e-5), WARNING)
    missing = check(learning_rate=1e-5, resume=storage.join(output, "checkpoint-99"))
    if store:  # not in the store (deleted by save_total_limit, or a typo): refused before the job (c192cf6)
        assert "it holds checkpoint-20, checkpoint-40: resume=auto goes on from checkpoint-40" in only(missing)
    else:  # a local path is the trainer's to say
        assert missing == []
    # one before the newest: the run would write over checkpoint-40, and a requeue could not tell it from its own
    back = only(check(resume=str(run / "checkpoint-20")))
    assert back.startswith(f"resume={run / 'checkpoint-20'} goes back to step 20, but {output} holds later ")
    assert "(checkpoint-40). To continue them (a relaunch after an interruption), use resume=auto" in back
    # other data with resume=auto: a new experiment that would go on from this one (refused by --dry-run too)
    assert only(check(data_path="other.jsonl")) == (
        f"{output} holds checkpoint-40 of a run trained on data_path=builtin:demo; this launch names other data. To "
        f"go on training that run on it: -o resume={storage.join(output, 'checkpoint-40')}. For a new run: another "
        "--output."
    )
    assert only(check(data_path="other.jsonl", resume=named), WARNING) == (
        "checkpoint-40 was saved with other settings: data_path builtin:demo -> other.jsonl; the run goes on from step "
        "40 with the new ones (the new data from its start); another --output starts a new run instead"
    )
    # trained to the end, and its final adapter saved: nothing is left to train (trainer_state.json and the adapter
    # read from the store); without the final adapter it resumes to write it
    assert [f.level for f in check(max_steps=40)] == [WARNING]
    (tmp_path / "adapter_config.json").write_text("{}")
    storage.put_file(str(tmp_path / "adapter_config.json"), storage.join(output, "adapter_config.json"))
    assert only(check(max_steps=40)) == (
        f"{output} holds this run trained to step 40 of 40 (checkpoint-40): nothing is left to train. To train it "
        "further, raise -o max_steps; to start another run, give another --output."
    )
    assert [f.level for f in check(max_steps=41)] == [WARNING]  # steps left: said, not refused


def test_gpus_asked_versus_present():
    plan = plan_for("8xA100")
    assert "this machine has no GPU" in only(check_gpus(plan, "local", detected="cpu"))
    text = only(check_gpus(plan, "docker", detected="1xH200"))
    assert "asks for 8 GPUs; this machine has 1xH200" in text and "--gpus 1xH200" in text
    assert check_gpus(plan, "slurm", detected=None) == []  # a cluster's GPUs are asked elsewhere
    assert check_gpus(plan_for("2xH200"), "local", detected="2xH200") == []
    assert "--gpus 1xH200" in only(check_gpus(plan_for("1xA100"), "local", detected="1xH200"), WARNING)
    assert check_gpus(plan_for("cpu"), "local", detected="cpu") == []
    # less memory than planned, or no bf16 where it plans bf16: the run would fail there, an error
    assert only(check_gpus(plan_for("1xA100-80GB"), "local", detected="1xRTX4090")) == (
        "--gpus 1xA100-80GB plans for 80 GB a GPU; this machine has 1xRTX4090, 24 GB each; use --gpus 1xRTX4090 so "
        "that memory and precision are planned for the GPUs that will run it."
    )
    assert "plans bf16; this machine has 1xTITANRTX, without bf16" in only(
        check_gpus(plan_for("1xRTX4090"), "docker", detected="1xTITANRTX")
    )


def test_a_local_launch_on_a_smaller_gpu_than_planned_is_refused(tmp_path):
    """nvidia-smi (a stand-in) lists an RTX 4090; --gpus 1xA100-80GB was planned for 80 GB: the launch stops."""
    smi = tmp_path / "nvidia-smi"
    smi.write_text('#!/bin/sh\necho "NVIDIA GeForce RTX 4090, 24564"\n')
    smi.chmod(0o755)
    args = ["launch", "--dry-run", "--backend", "local", "--gpus", "1xA100-80GB", "--model-params", "1b"]
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    r = subprocess.run([str(FTCTL), *args], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "error: --gpus 1xA100-80GB plans for 80 GB a GPU; this machine has 1xRTX4090, 24 GB each" in r.stderr


def test_disk_space_for_checkpoints(tmp_path, monkeypatch):
    spec = RunSpec(method="fft", gpus="8xH100", model_params="8b", output_dir=str(tmp_path / "run"))
    plan = make_plan(spec)
    one, final = preflight.checkpoint_gb(plan)
    assert plan.strategy == "zero2" and (one, final) == (128, 16)  # 16-bit weights twice, fp32 masters, two moments
    # by strategy, as measured on an H200 (bench/NOTES.md v66): FSDP2 writes the model twice, ZeRO keeps fp32 masters;
    # the final model in the run's bf16 whatever the strategy (plan.final_dtype)
    each = {s: preflight.checkpoint_gb(make_plan(replace(spec, strategy=s))) for s in ("zero3", "fsdp")}
    each["single"] = preflight.checkpoint_gb(make_plan(replace(spec, gpus="1xH200", model_params="1b")))
    assert each == {"zero3": (112, 16), "fsdp": (128, 16), "single": (12, 2)}
    on_cpu = make_plan(replace(spec, gpus="cpu", model_params="135m", strategy="zero3"))
    assert preflight.checkpoint_gb(on_cpu) == pytest.approx((0.135 * 16, 0.135 * 4))  # measured on CPU: fp32 there

    def free(gb):
        usage = shutil.disk_usage(tmp_path)._replace(free=int(gb * 1e9))
        monkeypatch.setattr(preflight.shutil, "disk_usage", lambda path: usage)

    free(10_000)
    assert check_disk(spec, plan) == []
    free(300)  # 3 checkpoints and the model: 400 GB
    assert "lower -o save_total_limit" in only(check_disk(spec, plan), WARNING)
    one_kept = replace(spec, save_total_limit=1, eval_split=0.05)  # held-out data: the lowest loss's is kept too
    free(200)  # 2 checkpoints and the model: 272 GB
    assert only(check_disk(one_kept, plan), WARNING).startswith(f"--output {spec.output}: 2 checkpoints")
    free(200)  # 1 checkpoint kept, and the next one written before it is deleted: 256 GB (not 1 and the model: 144)
    said = only(check_disk(replace(spec, save_total_limit=1), plan), WARNING)
    assert said.startswith(f"--output {spec.output}: 1 checkpoint and the next one (written before the oldest")
    free(100)
    assert "one checkpoint and the final model need" in only(check_disk(spec, plan))
    lora = make_plan(replace(spec, method="lora"))
    assert check_disk(spec, lora) == []  # adapters only
    free(0.00001)  # a full disk, an adapter below 1 GB: "need ~1 GB; has 0 GB free" said little
    one, final = preflight.checkpoint_gb(lora)
    said = only(check_disk(spec, lora))
    assert f"need ~{(one + final):.1f} GB" in said and "has 10 KB free" in said
    assert check_disk(replace(spec, output_dir="s3://b/run"), plan) == []  # cannot tell


def test_the_disk_a_store_run_is_staged_on_has_room_for_what_stays_there(tmp_path, monkeypatch):
    """A run into s3:// writes each checkpoint to its staging directory first (FTCTL_CACHE/runs/...), which holds
    the kept ones and the next as a local output does: checked where the launcher names it (a local run's), refused
    with the variable that moves it; a relaunch's checkpoints already there are among those kept."""
    from ftctl.checkpoints.staging import STAGING_ENV
    from ftctl.trainer.run import LOCAL_DIR_ENV

    assert STAGING_ENV == LOCAL_DIR_ENV == "FTCTL_LOCAL_DIR"  # the variable the trainer reads, named by the fix
    spec = RunSpec(method="fft", gpus="8xH100", model_params="8b", output_dir="s3://b/run")
    plan = make_plan(spec)
    staging = tmp_path / "cache" / "runs" / "b-run-0123abcd"

    def free(gb):
        usage = shutil.disk_usage(tmp_path)._replace(free=int(gb * 1e9))
        monkeypatch.setattr(preflight.shutil, "disk_usage", lambda path: usage)

    free(600)  # 3 kept and the next one: 512 GB
    assert check_disk(spec, plan, str(staging)) == []
    free(300)
    said = only(check_disk(spec, plan, str(staging)))
    assert said.startswith(f"--output s3://b/run is staged in {staging} before its upload: 3 checkpoints and the next")
    assert f"need ~512.0 GB there (fft of 8B parameters); {tmp_path} has 300.0 GB free" in said
    assert "export FTCTL_LOCAL_DIR=DIR (or -o env=FTCTL_LOCAL_DIR=DIR)" in said and "save_total_limit (now 3" in said
    assert check_disk(spec, plan) == []  # staged on the nodes' own disks: not seen here
    (staging / "checkpoint-100").mkdir(parents=True)  # a relaunch: 250 GB staged already, among the 3 kept
    with open(staging / "checkpoint-100" / "optimizer.pt", "wb") as f:
        f.truncate(int(250e9))  # sparse
    assert check_disk(spec, plan, str(staging)) == []
    # save_total_limit=0 keeps every checkpoint: as many as the run writes
    every = replace(spec, save_total_limit=0, max_steps=10_000, save_steps=2_000)
    said = only(check_disk(every, make_plan(every), str(staging)))
    assert "every checkpoint (save_total_limit=0: 5 at least) and the next one" in said


def test_host_memory_reads_meminfo():
    kib = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal:"))
    assert 0 < preflight.host_memory_gb() <= kib * 1024 / 1e9


# ------------------------------------------------------------------------------------- all at once
def test_every_problem_reported_together(tmp_path, s3_env, moto_s3, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_s3.endpoint)
    import ftctl.local.backend

    monkeypatch.setattr(ftctl.local.backend, "local_gpus", lambda: "1xA100")
    spec = RunSpec(
        method="lora",
        gpus="4xA100",
        model_params="1b",
        model_name_or_path="./my-model",
        data_path=str(tmp_path / "missing.jsonl"),
        eval_data_path=str(tmp_path / "missing-eval.jsonl"),
        output_dir="s3://no-such-bucket-z/run",
    )
    findings = preflight.preflight(spec, make_plan(spec), "local", detected="1xA100")
    assert levels(findings) == [ERROR] * 5, findings
    with pytest.raises(FtctlError) as e:
        preflight.raise_if_errors(findings)
    lines = str(e.value).splitlines()
    assert lines[0] == "5 problems to fix first:"
    assert any("asks for 4 GPUs" in line for line in lines)
    assert any("--model ./my-model: no such directory" in line for line in lines)
    assert any(line.startswith("  - --data: No data at") and "missing.jsonl" in line for line in lines)
    assert any(line.startswith("  - --eval-data: No data at") and "missing-eval.jsonl" in line for line in lines)
    assert any("No bucket 'no-such-bucket-z'" in line for line in lines)

    spec = replace(spec, output_dir=str(tmp_path / "x"), model_name_or_path="meta-llama/Llama-3.1-8B")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    spec = replace(spec, gpus="1xA100", data_path="builtin:demo", eval_data_path=None)
    # (docker: a local run of a hub id the Hub cannot give, as here, is refused instead)
    findings = preflight.preflight(spec, make_plan(spec), "docker", detected="1xA100")
    assert levels(findings) == [WARNING, WARNING]
    preflight.raise_if_errors(findings)  # warnings pass
    assert preflight.render(findings).startswith("warning: --model meta-llama/Llama-3.1-8B is gated")
    assert "meta-llama/Llama-3.1-8B trains on the demo's bundled conversations" in preflight.render(findings)


# -------------------------------------------------------------------------------------------- CLI
def test_data_check_says_missing_file_and_model_dir_before_loading_anything(tmp_path):
    start = time.monotonic()
    r = subprocess.run(
        [str(FTCTL), "data", "check", "missing.json", "--model", "./missing-dir"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "No data at missing.json" in r.stderr and "--model ./missing-dir: no such directory" in r.stderr
    assert "Repo id" not in r.stderr
    assert time.monotonic() - start < 5  # no tokenizer, no transformers


def test_a_secret_asked_for_but_not_set_here_is_a_warning(monkeypatch, tmp_path):
    """--secret NAME, or wandb's key for report_to=wandb, not set where the launch runs: the job would get none."""
    from ftctl.preflight import check_secrets
    from ftctl.spec import build

    for name in ("MY_TOKEN", "WANDB_API_KEY", "WANDB_MODE", "HF_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", "/nonexistent/netrc")
    spec = build({"secrets": ["HF_TOKEN", "WANDB_API_KEY", "MY_TOKEN"], "report_to": "wandb"})
    said = check_secrets(spec)
    assert levels(said) == [WARNING, WARNING]  # HF_TOKEN unset is usual: public models
    assert said[0].text == "secret MY_TOKEN is not set here, so the job gets none; export MY_TOKEN before the launch."
    assert "WANDB_API_KEY" in said[1].text
    monkeypatch.setenv("MY_TOKEN", "x")
    assert check_secrets(build({"secrets": ["MY_TOKEN"], "report_to": "wandb", "env": {"WANDB_MODE": "offline"}})) == []
    netrc = tmp_path / "netrc"  # `wandb login` keeps the key there, where the job reads it too
    netrc.write_text("machine api.wandb.ai\n  login user\n  password k\n")
    monkeypatch.setenv("NETRC", str(netrc))
    assert check_secrets(build({"report_to": "wandb"})) == []


def test_a_job_sent_elsewhere_without_model_or_data_is_told_it_trains_the_demo():
    from ftctl.preflight import check_demo_defaults
    from ftctl.spec import build

    spec = build({})
    said = [f.text for f in check_demo_defaults(spec, "slurm")]
    assert said == [
        f"the model is the demo's {spec.model_name_or_path} (what trains without --model); give yours with --model "
        "ORG/NAME or --model DIR.",
        "the data is the demo's bundled conversations (builtin:demo, the default without --data); give your data "
        "with --data PATH.",
    ]
    # a model of the user's sent to a cluster without --data: its 8B job on 300 demo rows, said as here, with the fix
    (mine,) = check_demo_defaults(build({"model_name_or_path": "org/m"}), "slurm")
    assert mine.text == (
        "org/m trains on the demo's bundled conversations (builtin:demo, the default without --data); give your "
        "data with --data PATH."
    )
    assert check_demo_defaults(spec, "local") == check_demo_defaults(spec, "docker") == []  # the demo, on purpose
    assert check_demo_defaults(build({"model_name_or_path": "org/m", "data_path": "d.jsonl"}), "sky") == []
    # here, a model of the user's with no --data is a --data left out, not the demo
    (mine,) = check_demo_defaults(build({"model_name_or_path": "org/m"}), "docker")
    assert mine.text == (
        "org/m trains on the demo's bundled conversations (builtin:demo, the default without --data); give your "
        "data with --data PATH."
    )


def test_an_s3_endpoint_on_this_machines_loopback_is_said_for_jobs_on_other_machines(monkeypatch):
    from ftctl.preflight import check_endpoint_reach
    from ftctl.spec import build

    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://localhost:9000")  # taken where -o s3_endpoint_url is not set
    [said] = check_endpoint_reach(build({}), "sky")
    assert str(said) == (
        "warning: the S3 endpoint http://localhost:9000 is this machine's loopback: the job's sky nodes reach their "
        "own; give an address they can reach (-o s3_endpoint_url=http://HOST:PORT)."
    )
    assert check_endpoint_reach(build({"s3_endpoint_url": "http://127.0.0.1:1"}), "slurm")
    assert check_endpoint_reach(build({}), "local") == check_endpoint_reach(build({}), "docker") == []  # host network
    assert check_endpoint_reach(build({"s3_endpoint_url": "http://10.0.0.5:9000"}), "sky") == []


def test_a_mistyped_template_file_in_a_directory_is_said_before_the_job(tmp_path):
    """templates/chat.jinja looks like a hub id (ORG/NAME), which the preflight left to the trainer: a typo was found
    after the queue's wait, in words about connecting to huggingface.co. A Jinja file's name is never a hub id."""
    from click.testing import CliRunner

    from ftctl.cli import main
    from ftctl.preflight import ERROR, check_chat_template

    (found,) = check_chat_template("templates/chat.jinja")
    assert found.level == ERROR and found.text.startswith("chat_template_path templates/chat.jinja: no such file")
    assert check_chat_template("meta-llama/Llama-3.1-8B-Instruct") == []  # a hub id: the trainer reads it
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "a"}\n')
    got = CliRunner().invoke(main, ["data", "check", str(data), "--chat-template-path", str(tmp_path / "nope.jinja")])
    assert got.exit_code == 2 and f"chat_template_path {tmp_path / 'nope.jinja'}: no such file" in got.output


def test_a_checkpoint_that_takes_longer_to_write_than_slurms_signal_lead_is_said():
    """USR2 comes signal_lead_s (120 s) before the time limit; 8B fft's checkpoint (ZeRO-2's: 16-bit weights twice,
    fp32 masters and two moments, ~128 GB) took longer than that to write on a cluster's shared filesystem, and the job was killed mid-save at its
    limit: every step since the last checkpoint lost, each time limit."""
    from ftctl.preflight import check_signal_lead
    from ftctl.spec import build

    def said(**keys):
        spec = build({"model_name_or_path": "meta-llama/Llama-3.1-8B", "gpus": "8xA100-80GB", **keys})
        return check_signal_lead(spec, make_plan(spec))

    (found,) = said(method="fft", output_dir="/shared/runs/r1")
    step = make_plan(build({"model_name_or_path": "meta-llama/Llama-3.1-8B", "gpus": "8xA100-80GB", "method": "fft"}))
    step = step.step_s  # the step under way: twice the plan's predicted step (was 60 s, assumed: ~317 s, lead 360)
    assert found.level == WARNING and found.what.startswith(
        f"the save at Slurm's USR2 needs ~{257 + 2 * step:.0f} s: the step under way ends (up to {2 * step:g} s: "
        f"twice the plan's {step:g} s step), then a checkpoint of ~128.5 GB is written at 0.5 GB/s (257 s)"
    )  # the step's 60 s were said as the checkpoint's: "a checkpoint of 0.4 MB ... needs ~60 s"
    assert found.fix == "give it more: -o signal_lead_s=300."
    (uploaded,) = said(method="fft", output_dir="s3://b/r1")  # written on the node, then sent: twice the time
    assert "written and uploaded" in uploaded.what and uploaded.fix == "give it more: -o signal_lead_s=540."
    assert said(method="fft", output_dir="/shared/runs/r1", signal_lead_s=300) == []
    assert said(method="lora", output_dir="/shared/runs/r1") == []  # adapters: a few hundred MB


def test_an_env_value_naming_a_variable_is_said_with_the_setup_line_that_expands_it():
    """-o env=PATH=/opt/bin:$PATH was written as export PATH='/opt/bin:$PATH' before the job's srun and python3:
    the job lost /usr/bin and failed with "command not found". Taken as written (a value may hold a $), and said."""
    from ftctl.preflight import check_env_values
    from ftctl.spec import build

    said = check_env_values(build({"env": {"PATH": "/opt/bin:$PATH", "NCCL_DEBUG": "INFO", "PRICE": "5$"}}))
    assert [f.what for f in said] == [
        "env PATH='/opt/bin:$PATH' names $PATH, and env values are taken as written (no variable is expanded)"
    ]
    assert said[0].level == WARNING and said[0].fix.endswith("""-o setup='export PATH="/opt/bin:$PATH"'.""")
    # what expands it where the run goes: local and docker take no setup line (the advice was refused there)
    spaced = build({"env": {"FOO": "a b$c"}})
    assert check_env_values(spaced)[0].fix.endswith("""-o setup='export FOO="a b$c"'.""")  # one value, not two
    assert 'export FOO="a b$c" before the launch' in check_env_values(spaced, "local")[0].fix
    assert "setup" not in check_env_values(spaced, "docker")[0].fix
