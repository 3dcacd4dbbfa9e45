"""A secret's value in any user value a backend writes into the job's files is refused by name (task 113).

Each string a backend writes into job.sbatch, task.yaml, the docker run line, spec.json or a manifest (sbatch args,
Slurm's and SkyPilot's options, the container, paths, report_to, scheduler arguments ...) is refused in one line
that names the variable holding it and says --secret NAME, never repeating the value; a URI holding a user and
password (s3://KEY:SECRET@bucket/x, https://user:pass@host) is refused with the store's own credential variables
instead. Also: the preflight's line for data too large to row-check names the run's own `ftctl data check`, and a
Slurm container gets another run's checkpoint to resume bound into it.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import subprocess
import typing

import pytest

from ftctl import preflight
from ftctl import spec as spec_mod
from ftctl.backend import prepare
from ftctl.errors import FtctlError
from ftctl.slurm import render as slurm_render
from tests.render_fixtures import make_spec, write_model_config

SECRET = "hf_SecretValueOne7f3a9cHF12"  # a Hugging Face token's shape, 16 characters or more
WANDB_KEY = "0123456789abcdefdeadbeef0123456789abcdef"  # W&B's 40 hex digits: no shape, only its holder knows it


@pytest.fixture
def secrets(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.setenv("WANDB_API_KEY", WANDB_KEY)


def _refused(overrides=(), config=None, **flags) -> str:
    """The one line a spec holding a secret is refused with; the value never in it."""
    with pytest.raises(FtctlError) as e:
        make_spec(overrides, config, **flags)
    said = str(e.value)
    assert "\n" not in said and SECRET not in said and WANDB_KEY not in said, said
    return said


def _written_keys() -> list[str]:
    """Every RunSpec key holding user text (a string, a list of them, a mapping of them), but those checked apart."""
    keys = []
    for name in spec_mod.FIELDS:
        typ = typing.get_type_hints(spec_mod.RunSpec)[name]
        args = {a for a in typing.get_args(typ) if a is not type(None)} or {typ}
        texts = any(a is str or typing.get_origin(a) in (list, dict) for a in args)
        if texts and name not in ("secrets", "env", "setup"):  # their own checks: test_spec_values, test_spec
            keys.append(name)
    return keys


# a value of each kind of key that holds the secret as a user would have put it there
_SHAPED = {
    "sbatch_args": ["--comment=run for {s}"],
    "lr_scheduler_kwargs": {"min_lr_rate": "{s}"},
    "data_columns": {"/data/d.jsonl": "{s}"},  # a dataset's own field names (axolotl's), as JSON text
    "lora_target_modules": "q_proj,{s}",
    "container": "pyxis:ghcr.io/x/img:{s}",
    "report_to": "wandb:{s}",
    "data_path": "/data/{s}.jsonl",
    "s3_endpoint_url": "http://minio:9000/{s}",
}


@pytest.mark.parametrize("key", _written_keys())
def test_every_written_value_holding_a_secret_is_refused_by_its_name(key, secrets):
    """-o KEY=...$HF_TOKEN... (the launching shell's expansion): whatever the key, refused before any check that
    would repeat the value (optim's, time's, the container's name each did), naming HF_TOKEN and --secret."""
    shaped = _SHAPED.get(key, "x-{s}")
    value = (
        [v.format(s=SECRET) for v in shaped]
        if isinstance(shaped, list)
        else {k: v.format(s=SECRET) for k, v in shaped.items()}
        if isinstance(shaped, dict)
        else shaped.format(s=SECRET)
    )
    said = _refused(config={key: value})
    assert said.startswith(f"{key} holds the value of HF_TOKEN (set here; not repeated), and {key} is written into")
    assert "--secret HF_TOKEN (the job reads HF_TOKEN)" in said


@pytest.mark.parametrize(
    "overrides",
    [
        ["sbatch_args=--comment=" + WANDB_KEY],  # a key of no shape: only its holder tells
        ["report_to=wandb,tensorboard," + WANDB_KEY],
        ["cluster=" + WANDB_KEY],
        ["optim=" + WANDB_KEY],  # optim's own line repeated the value
        ["wandb_project=" + WANDB_KEY],  # axolotl's W&B keys are env values (WANDB_ENV): env's own line
    ],
)
def test_a_secret_of_no_shape_is_found_by_its_holder(overrides, secrets):
    assert "holds the value of WANDB_API_KEY (set here; not repeated)" in _refused(overrides)


@pytest.mark.parametrize(
    "overrides, what",
    [
        (["sbatch_args=--comment=ghp_0123456789abcdefABCDEF0123456789abcd"], "a token"),  # set nowhere here
        (["partition=sk-proj-0123456789abcdefghijABCDEF"], "a token"),
        (["container=pyxis:https://me:hunter2pw@registry.lab/img"], "a URI with a user and password"),
    ],
)
def test_a_credential_by_its_shape_is_refused(overrides, what):
    said = _refused(overrides)
    assert said.startswith(f"{overrides[0].split('=')[0]} holds {what} (not repeated here)"), said
    assert "ghp_0123" not in said and "sk-proj" not in said and "hunter2pw" not in said


@pytest.mark.parametrize(
    "key, value, bare, keys",
    [
        ("data_path", "s3://AKIAIOSFODNN7EXAMPLE:wJalrXUtnFEMI/K7MDENG@bucket/d.jsonl", "s3://bucket/d.jsonl", "AWS_"),
        ("eval_data_path", "gs://me:pw0rd@bucket/e.jsonl", "gs://bucket/e.jsonl", "GOOGLE_APPLICATION_CREDENTIALS"),
        ("output_dir", "s3://key:secret@bucket/runs/r1", "s3://bucket/runs/r1", "AWS_ACCESS_KEY_ID"),
        ("resume", "s3://key:secret@bucket/runs/r1/checkpoint-5", "s3://bucket/runs/r1/checkpoint-5", "AWS_"),
        ("model_name_or_path", "hf://u:pw0rd@org/m", "hf://org/m", "HF_TOKEN"),
        ("chat_template_path", "https://user:pass@host/t.jinja", "https://host/t.jinja", "AWS_ACCESS_KEY_ID"),
        ("data_path", "https://hf_AbCdEfGhIjKlMnOpQrStUv@host/d.jsonl", "https://host/d.jsonl", "HF_TOKEN"),
    ],
)
def test_a_uri_with_a_user_and_password_is_refused_for_the_stores_variables(key, value, bare, keys):
    """An https:// data path said 'unknown storage scheme' with the password in the line; an s3:// one was written
    into every file as it was."""
    said = _refused(config={key: value})
    assert said.startswith(f"{key} holds a URI with a user and password (not repeated here)"), said
    assert f"give it without them ({bare}) and the store's keys in its own variables" in said and keys in said
    for part in ("wJalr", "pw0rd", "secret@", "pass@", "hf_AbCd"):
        assert part not in said


def test_the_endpoint_says_its_own_fix(secrets):
    said = _refused(config={"s3_endpoint_url": "https://minio:s3cr3t-pw@store.lab:9000"})
    assert said.startswith("s3_endpoint_url holds a user and password") and "s3cr3t" not in said


@pytest.mark.parametrize(
    "config",
    [
        {"data_path": "s3://bucket/a@b.jsonl,hf://datasets/org/name@main/train.jsonl"},  # '@' in a key, a revision
        {"s3_endpoint_url": "http://minio:9000/x@y"},  # a port, no password
        {"output_dir": "s3://bucket/runs/a:b"},
        {"model_name_or_path": "/models/sk-llama-2-7b-finetuned-chat-v2"},  # a path may look like a token
        {"partition": "gpu", "account": "lab", "sbatch_args": ["--mem=64G", "--comment=nightly"]},
    ],
)
def test_values_of_no_secret_pass(config, secrets, monkeypatch):
    monkeypatch.setenv("SHORT_PASSWORD", "auto")  # a value at its key's default (resume=auto) is nobody's secret
    monkeypatch.setenv("GITLAB_TOKEN", "none")
    spec = make_spec(config=config)
    assert all(getattr(spec, k) == v for k, v in config.items())


def test_a_value_refused_for_its_type_is_not_repeated(secrets):
    """-o max_steps=$HF_TOKEN: the key's own complaint, without the value."""
    said = _refused([f"max_steps={SECRET}"])
    assert said.startswith("max_steps (-o): ")


@pytest.mark.parametrize("key, holder", [("hub_token", "HF_TOKEN"), ("wandb_api_key", "WANDB_API_KEY")])
def test_a_credential_key_says_its_variable(key, holder, secrets):
    said = _refused([f"{key}={SECRET}"])
    assert said.startswith(f"Unknown key {key!r} (-o).") and f"export {holder} where you launch" in said


@pytest.mark.parametrize(
    "backend, gpus, flags",
    [
        ("slurm", "cpu", ["--sbatch-arg", f"--comment={SECRET}"]),
        ("sky", "1xL4", ["-o", f"cluster=c-{SECRET}"]),
        ("docker", "cpu", ["--container", f"docker:ghcr.io/x/img:{SECRET}"]),
    ],
)
def test_render_refuses_it_in_one_line_and_writes_nothing(backend, gpus, flags, secrets, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from ftctl.cli import main

    monkeypatch.chdir(tmp_path)
    args = ["render", "--backend", backend, "--gpus", gpus, "--output", str(tmp_path / "o"), *flags]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
    assert "holds the value of HF_TOKEN" in r.output and "--secret HF_TOKEN" in r.output and SECRET not in r.output
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


# ------------------------------------------------------------------------------ data too large to row-check
def test_the_unchecked_data_line_names_the_runs_own_check(tmp_path, monkeypatch):
    """It said `ftctl data check PATH --model MODEL`: now the run's model, length, template and loss, shell-quoted."""
    model = write_model_config(tmp_path / "my model")
    data = tmp_path / "big data's.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n' * 4)
    template = tmp_path / "t.jinja"
    template.write_text("{{ messages }}")
    spec = make_spec(
        ["model_max_length=512", "assistant_only_loss=false", f"chat_template_path={template}"],
        model_name_or_path=str(model),
        data_path=str(data),
        eval_data_path=str(data),
    )
    monkeypatch.setattr(preflight, "ROW_CHECK_BYTES", 10)
    run = preflight.data_check_args(spec)
    found = [f for flag, p in spec.data_sources for f in preflight.check_data(p, flag=flag, run_args=run)]
    want = [
        shlex.join(["ftctl", "data", "check", str(data), *held, "--model", str(model), "--max-length", "512"])
        + f" --chat-template-path {template} --every-token"
        for held in ([], ["--held-out"])
    ]
    assert [f.fix for f in found] == [f"`{w}` checks them first." for w in want]
    assert shlex.split(want[0])[4:6] == ["--model", str(model)]  # copy-pasteable: the quotes read back
    # the launch's preflight passes them
    spec = make_spec(model_name_or_path=str(model), data_path=str(data), backend="local", gpus="cpu")
    monkeypatch.setattr(preflight, "check_data", lambda *a, **k: [preflight.Finding(preflight.WARNING, repr(k))])
    findings = preflight.preflight(spec, prepare(spec).plan, "local")
    assert any(f"'run_args': {preflight.data_check_args(spec)!r}" in f.what for f in findings)


# ------------------------------------------------------------------------------ slurm: another run's checkpoint
@pytest.mark.parametrize("container", ["apptainer:/img/x.sif", "pyxis:ghcr.io/x/img:1"])
def test_another_runs_checkpoint_is_bound_into_a_slurm_container(container, tmp_path):
    """-o resume=OTHER/checkpoint-N outside the output: the container saw no such directory and the resume failed
    inside it. Bound at its own path (read-write: a DeepSpeed checkpoint on another world size converts beside
    itself), quoted; one inside the output is reached through the output's bind."""
    ckpt = tmp_path / "other run's" / "checkpoint-5"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text("{}")
    inside = tmp_path / "o" / "checkpoint-3"
    texts = {}
    for resume in (ckpt, inside, "auto"):
        spec = make_spec(
            [f"resume={resume}"], backend="slurm", gpus="1xA100", output_dir=str(tmp_path / "o"), container=container
        )
        texts[str(resume)] = prepare(spec).text
        r = subprocess.run(["bash", "-n"], input=texts[str(resume)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    (step,) = [line for line in texts[str(ckpt)].splitlines() if line.startswith("srun ") and "ftctl.trainer " in line]
    words = shlex.split(step.removesuffix(" &"))
    if container.startswith("apptainer"):
        binds = [words[i + 1] for i, w in enumerate(words) if w == "--bind"]
        assert str(ckpt) in binds and str(tmp_path / "o") in binds
    else:
        (mounts,) = [w.split("=", 1)[1] for w in words if w.startswith("--container-mounts=")]
        assert f"{ckpt}:{ckpt}" in mounts.split(",")

    def step_of(text):
        return [line for line in text.splitlines() if line.startswith("srun ") and "ftctl.trainer " in line]

    assert step_of(texts[str(inside)]) == step_of(texts["auto"])  # inside the output: bound with it already
    assert slurm_render.resumed_elsewhere(make_spec([f"resume={inside}"], output_dir=str(tmp_path / "o"))) is None


def test_a_relative_or_remote_resume_is_not_bound():
    for resume in ("s3://b/o/checkpoint-5", "runs/a/checkpoint-5", "never"):
        spec = dataclasses.replace(make_spec(output_dir="s3://b/o"), resume=resume)
        assert slurm_render.resumed_elsewhere(spec) is None, resume
    assert os.path.isabs(slurm_render.resumed_elsewhere(dataclasses.replace(make_spec(), resume="/x/checkpoint-5")))


@pytest.mark.parametrize("backend, container", [("docker", None), ("slurm", "apptainer:/img/x.sif")])
def test_a_relative_resume_is_the_one_here(backend, container, tmp_path, monkeypatch):
    """-o resume=runs/a/checkpoint-5 passed the launch's check here, then the job read it from its run directory
    (docker's -w, Slurm's working directory), where there is none; and the container was bound no such path."""
    monkeypatch.chdir(tmp_path)
    ckpt = tmp_path / "runs" / "a" / "checkpoint-5"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text("{}")
    spec = make_spec(
        ["resume=runs/a/checkpoint-5"], backend=backend, gpus="cpu", output_dir=str(tmp_path / "o"), container=container
    )
    prep = prepare(spec)
    assert prep.spec.resume == str(ckpt) and f'"resume": "{ckpt}"' in prep.files["spec.json"]
    assert str(ckpt) in prep.text  # mounted (docker) or bound (apptainer) at that path
