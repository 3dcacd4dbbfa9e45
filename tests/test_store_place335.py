"""`ftctl chat/eval` of runs whose output is in object storage, named by what is on this disk: RUN_DIR/checkpoint-N
(the run directory here, runs/NAME as `ftctl jobs` and `status` name it, holds its spec.json and logs; the checkpoint
is in the store), which said "not a directory"; and two runs whose launches recorded different S3 endpoints (-o
s3_endpoint_url: MinIO, R2), where the second was read at the first's. Real S3 servers on loopback (moto's), a LoRA
adapter of the tests' tiny model saved in them."""

from __future__ import annotations

import json

from click.testing import CliRunner

from tests.s3_fixtures import MotoS3, fake_aws

TURNS = [{"role": "user", "content": "What is the code?"}, {"role": "assistant", "content": "AMBER-42."}]


def _store_run(tmp_path, tiny_model_dir, server, name: str, under: str = "") -> str:
    """runs/NAME here (its spec.json recording ``server``'s endpoint), its output in a fresh bucket of ``server``: a
    LoRA adapter with a manifest at ``under`` (checkpoint-1) or at the output's top (its final adapter)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from ftctl import storage
    from ftctl.checkpoints.manifest import write_manifest

    output = f"s3://{server.make_bucket()}/runs/{name}"
    saved = tmp_path / "staged" / name
    lora = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"])
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), lora).save_pretrained(saved)
    if under:
        write_manifest(str(saved), 1, 1, "h")
    for f in sorted(saved.iterdir()):
        storage.put_file(str(f), "/".join(filter(None, (output, under, f.name))), server.endpoint)
    (tmp_path / "runs" / name).mkdir(parents=True)
    spec = {"output_dir": output, "s3_endpoint_url": server.endpoint, "model_name_or_path": str(tiny_model_dir)}
    (tmp_path / "runs" / name / "spec.json").write_text(json.dumps({"spec": spec}))
    return output


def test_chat_of_a_checkpoint_under_a_store_runs_directory_loads_it_from_the_store(
    tiny_model_dir, moto_s3, monkeypatch, tmp_path
):
    from ftctl.cli import main

    fake_aws(monkeypatch, tmp_path)  # no endpoint in the shell: the run's spec.json names it
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FTCTL_HOME", str(tmp_path / "home"))
    output = _store_run(tmp_path, tiny_model_dir, moto_s3, "r1", under="checkpoint-1")
    got = CliRunner().invoke(main, ["chat", "runs/r1/checkpoint-1", "-p", "hi", "--max-new-tokens", "2"])
    assert got.exit_code == 0, got.output  # was 2: "runs/r1/checkpoint-1 is not a directory"
    assert got.stderr.startswith(
        f"loading {output}/checkpoint-1 (runs/r1/checkpoint-1: the run directory runs/r1's output is in the "
        f"store)\n{output}/checkpoint-1: using the S3 endpoint {moto_s3.endpoint}, as its launch recorded it"
    ), got.stderr


def test_eval_of_two_store_runs_with_other_endpoints_reads_each_at_its_own(
    tiny_model_dir, moto_s3, monkeypatch, tmp_path
):
    from ftctl.cli import main

    fake_aws(monkeypatch, tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FTCTL_HOME", str(tmp_path / "home"))
    other = MotoS3(tmp_path / "moto2")
    other.start()
    try:
        a = _store_run(tmp_path, tiny_model_dir, moto_s3, "a")
        b = _store_run(tmp_path, tiny_model_dir, other, "b")
        (tmp_path / "held.jsonl").write_text(json.dumps({"messages": TURNS}) + "\n")
        got = CliRunner().invoke(main, ["eval", a, b, "--data", "held.jsonl"])
    finally:
        other.kill()
    assert got.exit_code == 0, got.output  # was 2: b read at a's endpoint, "No bucket ... at the S3 endpoint <a's>"
    assert f"{a}: using the S3 endpoint {moto_s3.endpoint}, as its launch recorded it" in got.stderr
    assert f"{b}: using the S3 endpoint {other.endpoint}, as its launch recorded it" in got.stderr, got.stderr
