"""RunSpec: YAML < flags < -o precedence, unknown keys, type errors, aliases, validation."""

from __future__ import annotations

import pytest
import yaml

from ftctl import spec as spec_mod
from ftctl import tool_vocabulary
from ftctl.errors import FtctlError
from ftctl.spec import FIELDS, RunSpec, build, parse_size


def _yaml(tmp_path, text: str) -> str:
    p = tmp_path / "run.yaml"
    p.write_text(text)
    return str(p)


def test_defaults():
    s = build()
    assert s == RunSpec()
    assert s.method == "lora" and s.model_name_or_path == spec_mod.DEMO_MODEL
    assert s.secrets == ["HF_TOKEN"]  # WANDB_API_KEY only where report_to has wandb (spec.default_secrets)
    assert s.lr == spec_mod.METHOD_LEARNING_RATE["lora"]
    assert s.name == "ftctl-lora-smollm2-135m-instruct"
    assert s.output == "runs/ftctl-lora-smollm2-135m-instruct"


def test_yaml_then_flags_then_overrides(tmp_path):
    cfg = _yaml(
        tmp_path,
        "method: sft\nlearning_rate: 1.0e-4\nlora_r: 8\nmodel_max_length: 1024\n"
        "gpus: 8xA100\nsetup: [module load cuda]\n",
    )
    s = build(cfg, {"method": "lora", "lora_r": 32, "gpus": None}, ["lora_r=4", "warmup_ratio=0.1"])
    assert s.method == "lora"  # flag over YAML
    assert s.lora_r == 4  # -o over flag over YAML
    assert s.learning_rate == 1e-4  # YAML only
    assert s.model_max_length == 1024
    assert s.gpus == "8xA100"  # a flag left unset (None) does not erase the YAML value
    assert s.warmup_ratio == 0.1
    assert s.setup == ["module load cuda"]


def test_config_as_dict_and_later_override_wins():
    s = build({"lora_r": 8}, None, ["lora_r=2", "lora_r=3"])
    assert s.lora_r == 3


def test_max_requeues_is_zero_or_more():
    """-1 was taken and acted as 0 ("not requeueing: -1 requeues reached")."""
    assert build({"max_requeues": 0}).max_requeues == 0
    with pytest.raises(FtctlError, match="max_requeues must be 0 .never requeue. or more, not -1"):
        build({"max_requeues": -1})


def test_list_flags_add_to_the_list():
    s = build({"secrets": ["HF_TOKEN"]}, {"secrets": ["MY_KEY"]}, ["secret=OTHER_KEY"])
    assert s.secrets == ["HF_TOKEN", "MY_KEY", "OTHER_KEY"]
    # one item per -o for other lists: a comma belongs to the value (--nodelist=n1,n2)
    s = build(None, {"sbatch_args": ["--mem=64G"]}, ["sbatch_arg=--nodelist=n1,n2", "sbatch_arg=--mem=64G"])
    assert s.sbatch_args == ["--mem=64G", "--nodelist=n1,n2"]
    # a run file replaces a list's default
    assert build({"secrets": []}).secrets == []
    # none clears, as it does a mapping's (it was an item: a setup line `none` that failed the job, a secret "none")
    run = {"setup": ["module load cuda/12.4"], "sbatch_args": ["--mem=64G"]}
    cleared = build(run, None, ["setup=none", "sbatch_arg=null"])
    assert cleared.setup == [] and cleared.sbatch_args == []
    assert build(run, None, ["setup=none", "setup=module load cuda/12.6"]).setup == ["module load cuda/12.6"]
    assert build(None, {"secrets": ["none"]}).secrets == [] and build(None, None, ["secrets=none"]).secrets == []


def test_env_pairs_merge():
    s = build({"env": {"A": "1", "B": 2}}, None, ["env=B=3", "env=C=x=y"])
    assert s.env == {"A": "1", "B": "3", "C": "x=y"}


@pytest.mark.parametrize(
    "key, value, field, want",
    [
        ("max_seq_length", "1024", "model_max_length", 1024),
        ("max_length", "512", "model_max_length", 512),
        ("lr", "3e-4", "learning_rate", 3e-4),
        ("epochs", "2", "num_train_epochs", 2.0),
        ("model", "org/m", "model_name_or_path", "org/m"),
        ("data", "s3://b/x", "data_path", "s3://b/x"),
        ("output", "/o", "output_dir", "/o"),
        ("use_spot", "true", "spot", True),
        ("name", "my-run", "run_name", "my-run"),
        ("per-device-train-batch-size", "2", "per_device_train_batch_size", 2),  # dashes read as underscores
    ],
)
def test_aliases(key, value, field, want):
    assert getattr(build(None, None, [f"{key}={value}"]), field) == want


def test_alias_in_yaml(tmp_path):
    assert build(_yaml(tmp_path, "max_seq_length: 4096\n")).model_max_length == 4096


@pytest.mark.parametrize("source", ["yaml", "flag", "-o"])
def test_unknown_key_suggests(source, tmp_path):
    if source == "yaml":
        args = (_yaml(tmp_path, "num_train_epoch: 3\n"), None, None)
    elif source == "flag":
        args = (None, {"num_train_epoch": 3}, None)
    else:
        args = (None, None, ["num_train_epoch=3"])
    with pytest.raises(FtctlError) as e:
        build(*args)
    msg = str(e.value)
    assert "Unknown key 'num_train_epoch'" in msg
    assert "Did you mean 'num_train_epochs'?" in msg


def test_unknown_key_far_from_anything():
    with pytest.raises(FtctlError) as e:
        build(None, None, ["zzzqqq=1"])
    assert "Unknown key 'zzzqqq'" in str(e.value) and "Did you mean" not in str(e.value)


def test_all_errors_are_reported_together(tmp_path):
    cfg = _yaml(tmp_path, "learning_rat: 1e-4\nlora_r: many\n")
    with pytest.raises(FtctlError) as e:
        build(cfg, None, ["bf16=maybe", "warmup=0.1", "max_steps=ten"])
    msg = str(e.value)
    assert msg.startswith("5 problems")
    for part in [
        "'learning_rat'",
        "'learning_rate'",
        "lora_r='many'",
        "whole number",
        "bf16='maybe'",
        "true or false",
        "'warmup'",
        "Did you mean 'warmup_steps'?",
        "max_steps='ten'",
    ]:
        assert part in msg, part
    assert msg.count("\n  - ") == 5


def test_validation_errors_are_reported_together():
    with pytest.raises(FtctlError) as e:
        build(
            None,
            {"method": "full", "backend": "k8s"},
            ["lora_r=0", "learning_rate=5", "bf16=true", "fp16=true", "strategy=zero4"],
        )
    msg = str(e.value)
    assert msg.startswith("6 problems")
    assert "method='full' is not one of fft, sft, lora, qlora" in msg
    assert "backend='k8s'" in msg
    assert "Did you mean 'zero2'?" in msg or "Did you mean 'zero3'?" in msg
    assert "lora_r must be at least 1" in msg
    assert "learning_rate=5.0 is outside (0, 1)" in msg
    assert "bf16 and fp16 are both on" in msg


@pytest.mark.parametrize(
    "pair, words",
    [
        ("lora_r=abc", "expects a whole number"),
        ("lora_r=1.5", "expects a whole number"),
        ("learning_rate=fast", "expects a number"),
        ("gradient_checkpointing=perhaps", "expects true or false"),
        ("model_max_length=", "expects a whole number"),
    ],
)
def test_type_errors(pair, words):
    with pytest.raises(FtctlError, match=words) as e:
        build(None, None, [pair])
    assert pair.split("=")[0] in str(e.value)
    assert "(-o)" in str(e.value)


def test_yaml_types_are_checked(tmp_path):
    with pytest.raises(FtctlError, match=r"lora_r=\[1, 2\] \(run file\): expects a whole number"):
        build(_yaml(tmp_path, "lora_r: [1, 2]\n"))
    with pytest.raises(FtctlError, match="model_name_or_path.*expects a single value"):
        build(_yaml(tmp_path, "model_name_or_path: {a: 1}\n"))
    # left empty, a key asks for nothing (axolotl's example files list lora_target_modules: so), a run file's or not
    empty = build(_yaml(tmp_path, "method:\nlora_target_modules:\nlora_target_linear: true\n"))
    assert (empty.method, empty.lora_target_modules) == ("lora", "all-linear")
    for value in ("5", "[q_proj, 7]"):  # read as layer names "5": PEFT's error and a dump of every module, in the job
        with pytest.raises(FtctlError, match=r"lora_target_modules=.* \(run file\): expects layer names"):
            build(_yaml(tmp_path, f"lora_target_modules: {value}\n"))
    assert build(_yaml(tmp_path, "lora_target_modules: [q_proj, v_proj]\n")).lora_target_modules == "q_proj,v_proj"


def test_coercions():
    s = build(
        None,
        None,
        [
            "gradient_checkpointing=yes",
            "bf16=0",
            "per_device_train_batch_size=auto",
            "num_train_epochs=3",
            "lora_dropout=0",
        ],
    )
    assert s.gradient_checkpointing is True and s.bf16 is False
    assert s.per_device_train_batch_size is None  # "auto": the planner decides
    assert s.num_train_epochs == 3.0 and isinstance(s.num_train_epochs, float)
    assert build({"max_steps": 40.0}).max_steps == 40


def test_bad_overrides_syntax():
    with pytest.raises(FtctlError, match="expected key=value"):
        build(None, None, ["learning_rate"])


def test_run_file_problems(tmp_path):
    with pytest.raises(FtctlError, match="does not exist"):
        build(str(tmp_path / "missing.yaml"))
    with pytest.raises(FtctlError, match="not valid YAML"):
        build(_yaml(tmp_path, "a: [\n"))
    with pytest.raises(FtctlError, match="mapping"):
        build(_yaml(tmp_path, "- a\n- b\n"))
    assert build(_yaml(tmp_path, "")) == RunSpec()


@pytest.mark.parametrize(
    "over, words",
    [
        (["secret=hf_abc-123"], "not an environment variable NAME"),
        (["env=1BAD=x"], "not a valid environment variable name"),
        (["run_name=my run"], "run_name 'my run'"),
        (["container=apptainer:"], "names no image"),
        (["max_steps=0"], "max_steps must be"),
        (["warmup_ratio=1"], "warmup_ratio must be in"),
        (["num_train_epochs=0"], "num_train_epochs must be positive"),
        (["num_train_epochs=nan"], r"num_train_epochs must be positive and finite, not nan \(to train a number"),
        (["num_train_epochs=inf"], "num_train_epochs must be positive and finite, not inf"),
        (["max_grad_norm=-1"], r"max_grad_norm must be 0 \(no clipping\) or a finite number above, not -1.0"),
        (["max_grad_norm=nan"], "max_grad_norm must be 0"),
        (["weight_decay=-5"], r"weight_decay must be 0 \(none\) or a finite number above, not -5.0; typical: 0 to 0.1"),
        (["host_memory_gb=-10"], r"host_memory_gb must be the GB of CPU RAM a node has, above 0, not -10.0 \(leave"),
        (["host_memory_gb=0"], "host_memory_gb must be the GB of CPU RAM a node has, above 0, not 0.0"),
        (["nodes=0"], "nodes must be at least 1"),
        (["attn_implementation=flash"], "attn_implementation='flash'"),
        (["output_dir=s3:/b/runs/x"], r"output_dir='s3:/b/runs/x' would be a local path: did you mean s3://b/runs/x\?"),
        (["data_path=gs:b/chats.jsonl"], r"did you mean gs://b/chats.jsonl\?"),
        (["data_path=a.jsonl,file:/tmp/b.jsonl"], r"did you mean file:///tmp/b.jsonl\?"),
        (["lora_target_modules=all-linear,q_proj"], r"give all-linear \(alone"),
        (["lora_target_modules=,"], r"lora_target_modules=',': give all-linear"),
    ],
)
def test_validation(over, words):
    with pytest.raises(FtctlError, match=words):
        build(None, None, over)


def test_nodes_conflict_between_flag_and_gpus():
    from ftctl.plan import make_plan

    s = build(None, {"gpus": "2x8xH100", "nodes": 3})
    with pytest.raises(FtctlError, match="says 2 nodes but --nodes says 3"):
        make_plan(s)


def test_digest_ignores_placement():
    a = build(None, {"gpus": "8xA100", "backend": "slurm", "partition": "gpu"})
    b = build(None, {"gpus": "2x8xH100", "backend": "sky", "output_dir": "s3://b/x"})
    c = build(None, {"method": "lora"}, ["learning_rate=1e-5"])  # (with no method: asks which, test_foreign150)
    assert a.digest() == b.digest() == build().digest()
    assert c.digest() != a.digest()


@pytest.mark.parametrize(
    "text, want", [("7b", 7.0), ("1.5B", 1.5), ("135m", 0.135), ("70B", 70.0), ("7000000000", 7.0), ("500k", 0.0005)]
)
def test_parse_size(text, want):
    assert parse_size(text) == pytest.approx(want)


@pytest.mark.parametrize("text", ["seven", "7 billion", "", "-7b"])
def test_parse_size_refuses(text):
    with pytest.raises(FtctlError, match="write it like 7b"):
        parse_size(text)


def test_keys_ftctl_decides_itself_say_so_instead_of_unknown():
    """A FastChat train command turned into a run file: its --fsdp, --tf32 and friends are taken with a note where
    they ask for what ftctl does anyway (the file was refused whole, seven problems), explained where they ask for
    something else, never 'unknown'."""
    from ftctl.tool_vocabulary import AGREES, DECIDED

    fastchat = {
        "fsdp": "full_shard auto_wrap",
        "fsdp_transformer_layer_cls_to_wrap": "LlamaDecoderLayer",
        "tf32": True,
        "evaluation_strategy": "no",
        "save_strategy": "steps",
        "per_device_eval_batch_size": 2,
        "lazy_preprocess": True,
        "model_max_length": 2048,
        "bf16": True,
    }
    notes = []
    spec = build(fastchat, notes=notes)
    assert spec.strategy == "fsdp" and spec.model_max_length == 2048 and spec.per_device_eval_batch_size == 2
    assert notes == [
        "'fsdp' (run file): FSDP's full sharding is strategy=fsdp here (FSDP2, each layer sharded)",
        "fsdp_transformer_layer_cls_to_wrap, tf32, evaluation_strategy, save_strategy, lazy_preprocess (run file): "
        "left to ftctl, which does what the values given ask",
    ]
    assert build({"fsdp": ""}).strategy is None  # FastChat's default: no FSDP asked
    assert build(yaml.safe_load("eval_strategy: no\npush_to_hub: no")).evaluates is False  # YAML's no is False
    with pytest.raises(FtctlError, match="evaluation_strategy: no, beside held-out data"):
        build({"evaluation_strategy": "no", "eval_split": 0.1})  # the note would have said it does as asked
    with pytest.raises(FtctlError, match="eval_strategy: steps, without held-out data: give it"):
        build({"eval_strategy": "steps"})
    assert build({"eval_strategy": "steps", "eval_data_path": "held.jsonl"}).evaluates
    other = {"fsdp": "full_shard auto_wrap offload", "save_strategy": "best"}
    with pytest.raises(FtctlError) as e:
        build({**other, "deepspeed": "ds.json", "model_max_length": 2048})
    text = str(e.value)
    assert text.startswith("3 problems in the run description:") and "Unknown key" not in text
    assert "'fsdp' (run file) is not set by hand here: the planner chooses single, DDP, DeepSpeed ZeRO or FSDP2" in text
    assert f"'save_strategy' (run file) is not set by hand here: {DECIDED['save_strategy']}." in text
    with pytest.raises(FtctlError, match="'strategy' and 'fsdp' .* are both strategy here: keep one"):
        build({"strategy": "zero3", "fsdp": "full_shard"})
    assert not set(DECIDED) & set(FIELDS) and set(AGREES) <= set(DECIDED)  # never a key that exists


# --- secrets pass by name only ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, flags",
    [
        ("HF_TOKEN", None),  # a default secret
        ("WANDB_API_KEY", None),
        ("MY_CREDENTIAL", {"secrets": ["MY_CREDENTIAL"]}),  # one of the run's --secret names
        ("AWS_SECRET_ACCESS_KEY", None),  # names that look like credentials
        ("AWS_ACCESS_KEY_ID", None),  # a store's (storage.SECRET_ENV)
        ("OPENAI_API_KEY", None),
        ("GITHUB_TOKEN", None),
        ("PGPASSWORD", None),
        ("CLIENT_SECRET", None),
    ],
)
def test_a_secret_in_env_is_refused_without_echoing_its_value(name, flags):
    """-o env=HF_TOKEN=... would be written in plain text into the sbatch/SkyPilot YAML and spec.json."""
    with pytest.raises(FtctlError) as e:
        build(None, flags, [f"env={name}=s3cr3t-value"])
    msg = str(e.value)
    assert msg == (
        f"env {name} is a secret, and env values are written into the rendered job files and spec.json: "
        f"export {name} where you launch and pass --secret {name} instead (secrets pass by name only)."
    )
    assert "s3cr3t" not in msg
    with pytest.raises(FtctlError, match=f"pass --secret {name} instead"):  # a run file's env: the same
        build({"env": {name: "s3cr3t-value"}, **(flags or {})})


def test_plain_env_names_that_mention_tokens_pass():
    env = ["TOKENIZERS_PARALLELISM=true", "MAX_NEW_TOKENS=64", "OMP_NUM_THREADS=4", "WANDB_PROJECT=p", "HF_HOME=/h"]
    env += ["TIKTOKEN_CACHE_DIR=/c", "HF_TOKEN_PATH=/t", "HF_HUB_DISABLE_IMPLICIT_TOKEN=1", "PAD_TOKEN_ID=0"]
    env += ["PASSWORD_STORE_DIR=/p"]  # a credential's word, then another: a setting, not a secret
    # PWD and OLDPWD are the shell's working directories; PASS inside a word (BYPASS) is no password; a PASS that
    # is a switch (1/true) holds no secret either
    env += ["PWD=/work", "OLDPWD=/home", "HTTP_PROXY_BYPASS=*.local", "COMPASS_HEADING=north", "SKIP_PASS=1"]
    s = build(None, None, [f"env={e}" for e in env])
    assert s.env == dict(e.split("=", 1) for e in env)


@pytest.mark.parametrize(
    "env, said",
    [
        ("GITHUB_PAT=ghp_0123456789abcdefABCDEF0123456789abcd", "is a secret"),  # a name in _PAT
        ("MY_CRED=ghp_0123456789abcdefABCDEF0123456789abcd", "holds a token"),  # any name: the value's shape
        ("HUB=hf_AbCdEfGhIjKlMnOpQrStUvWxYz01234567", "holds a token"),
        ("DATABASE_URL=postgres://app:hunter2secret@db:5432/x", "holds a URL's password"),
    ],
)
def test_an_env_value_shaped_like_a_credential_is_refused_without_echoing_it(env, said):
    """-o env=GITHUB_PAT=ghp_... and -o env=DATABASE_URL=postgres://user:pw@... were written as they are."""
    with pytest.raises(FtctlError) as e:
        build(None, None, [f"env={env}"])
    name, value = env.split("=", 1)
    assert said in str(e.value) and f"pass --secret {name} instead" in str(e.value)
    assert value not in str(e.value) and "hunter2" not in str(e.value)
    # a URL without a password, or with a variable for it, and a path list are no credential
    plain = ["DATABASE_URL=postgres://app@db:5432/x", "GIT_URL=https://me:$GIT_TOKEN@github.com/o/r"]
    plain += ["PIP_INDEX_URL=http://mirror:8080/simple", "LD_LIBRARY_PATH=/opt/lib:/usr/lib", "X=hf_transfer"]
    assert build(None, None, [f"env={e}" for e in plain]).env == dict(e.split("=", 1) for e in plain)


@pytest.mark.parametrize(
    "line, said",
    [
        ("git clone https://me:ghp_0123456789abcdefABCDEF0123456789abcd@github.com/o/r /tmp/r", "a URL's password"),
        ("pip install git+https://oauth2:glpat-abcdefghij0123456789@gitlab.com/o/r", "a URL's password"),
        ("curl -H 'Authorization: Bearer hf_AbCdEfGhIjKlMnOpQrStUvWxYz01234567' https://x/y", "a token"),
    ],
)
def test_a_setup_line_holding_a_credential_is_refused_without_echoing_it(line, said):
    with pytest.raises(FtctlError) as e:
        build(None, {"setup": [line]})
    assert f"setup line holds {said} (not repeated here)" in str(e.value)
    assert "0123456789" not in str(e.value) and "AbCdEf" not in str(e.value)
    assert build(None, {"setup": ["git clone https://me:$GIT_TOKEN@github.com/o/r /tmp/r"]}).setup


@pytest.mark.parametrize("name", ["DB_PASS", "SMTP_PASS", "MYSQL_PWD", "DB_PWD", "GPG_PASSPHRASE", "PASS"])
def test_password_names_of_other_spellings_are_secrets(name):
    """-o env=DB_PASS=hunter2 would be written in plain text like PASSWORD's spelling."""
    with pytest.raises(FtctlError) as e:
        build(None, None, [f"env={name}=hunter2"])
    assert f"pass --secret {name} instead" in str(e.value) and "hunter2" not in str(e.value)


TOKEN = "hf_AbCdEfGhIjKlMnOpQrStUvWxYz01234567"  # the shape of a Hugging Face token


@pytest.mark.parametrize(
    "value, said",
    [
        (TOKEN, "a secret looks like a token"),
        ("ghp_0123456789abcdefABCDEF0123456789abcd", "a secret looks like a token"),
        ("AKIAFTCTLTESTKEY0001", "a secret looks like a token"),  # an AWS key id: upper case, as a name is
        ("f0123456789abcdef0123456789abcdef0123456", "a secret looks like a token"),  # W&B's 40 hex digits
        ("sk-proj-AbCd0123", "a secret is not an environment variable NAME"),
    ],
)
def test_a_secret_given_as_its_value_is_refused_without_echoing_it(value, said, monkeypatch):
    """`--secret $HF_TOKEN` (the value, not the name) would be written into the task YAML's secrets and
    spec.json, and docker's -e."""
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(FtctlError) as e:
        build(None, {"secrets": [value]})
    assert said in str(e.value) and "pass the variable's name, e.g. --secret HF_TOKEN" in str(e.value)
    assert value not in str(e.value)


def test_a_secret_that_is_the_value_of_a_variable_names_the_variable(monkeypatch):
    monkeypatch.setenv("MY_SERVICE_CRED", "Opensesame")  # no token's shape: only its being a value gives it away
    with pytest.raises(FtctlError) as e:
        build(None, None, ["secret=Opensesame"])
    assert str(e.value) == (
        "a secret is the value of MY_SERVICE_CRED (set here), not a variable's name: pass the variable's name, "
        "e.g. --secret HF_TOKEN (its value is taken from where you launch, never written)."
    )
    monkeypatch.setenv("Opensesame", "x")  # a variable of that name is set: a name, whatever else holds it
    assert build(None, None, ["secret=Opensesame"]).secrets[-1] == "Opensesame"


def test_render_refuses_a_secret_value_and_writes_nothing(monkeypatch, tmp_path):
    """The user's report, through the command line: ftctl render --backend sky|docker --secret $HF_TOKEN."""
    from click.testing import CliRunner

    from ftctl.cli import main

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.chdir(tmp_path)
    for backend, gpus in (("sky", "1xL4"), ("docker", "cpu")):
        args = ["render", "--backend", backend, "--gpus", gpus, "--output", str(tmp_path / "o"), "--secret", TOKEN]
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 2 and "a secret is the value of HF_TOKEN (set here)" in r.output, r.output
        assert TOKEN not in r.output and not list(tmp_path.rglob("*.json"))


@pytest.mark.parametrize(
    "config, over, want",
    [
        (None, ["secret=HF_TOKEN=hf_abc"], "secret HF_TOKEN=...: pass the name alone (--secret HF_TOKEN)"),
        (None, ["secret=hf_abc-123"], "a secret is not an environment variable NAME"),
        (None, ["env=hf_abc"], "env (-o): expects NAME=VALUE pairs"),
        ({"secrets": {"HF_TOKEN": "hf_abc"}}, None, "secrets (run file): names only, HF_TOKEN is given a value here"),
    ],
)
def test_a_secret_value_is_never_echoed(config, over, want):
    with pytest.raises(FtctlError) as e:
        build(config, None, over)
    assert want in str(e.value) and "hf_abc" not in str(e.value)


# --- report_to and resume: refused before a job starts, in the trainer's words -------------------------------------
def test_report_to_is_checked_before_the_job():
    with pytest.raises(FtctlError) as e:
        build(None, None, ["report_to=mlflow"])
    assert str(e.value) == (  # what works instead (transformers' report_to=mlflow is not set up by ftctl)
        "report_to='mlflow': ftctl does not report to mlflow; it reports to tensorboard or wandb (comma-separated; W&B "
        "without a server: -o env=WANDB_MODE=offline), or none. Every logged step is in the output's metrics.jsonl "
        "either way (a JSON row a step: step, loss, lr, grad_norm; an evaluation's: eval_loss), to log to mlflow after "
        "the run."
    )
    with pytest.raises(FtctlError, match="report_to='trackio': ftctl does not report to trackio; it reports to"):
        build(None, None, ["report_to=tensorboard,trackio"])
    with pytest.raises(FtctlError, match="report_to='tensorbord'.*Did you mean 'tensorboard'"):
        build(None, None, ["report_to=wandb,tensorbord"])
    assert build(None, None, ["report_to=wandb, tensorboard"]).report_to == "wandb, tensorboard"
    assert spec_mod.report_integrations("none") == [] and spec_mod.report_integrations("wandb,none") == ["wandb"]


def test_resume_is_checked_before_the_job(tmp_path):
    with pytest.raises(FtctlError) as e:
        build(None, None, ["resume=maybe"])
    assert str(e.value) == (
        "resume=maybe is not auto, never or a checkpoint directory (not named checkpoint-<step>): pass a "
        "checkpoint-<step> directory, or resume=auto."
    )
    with pytest.raises(FtctlError, match="resume=s3://b/r/checkpoint-2: a checkpoint in object storage is resumed"):
        build(None, None, ["resume=s3://b/r/checkpoint-2"])
    own = build(None, {"output_dir": "s3://b/r/"}, ["resume=s3://b/r/checkpoint-2"])  # the run's own store output's
    assert own.resume == "s3://b/r/checkpoint-2"
    # where the job runs elsewhere the checkpoint may exist there only: its form is checked, not its existence
    on_cluster = "/scratch/me/runs/r/checkpoint-200"
    assert build(None, {"backend": "slurm"}, [f"resume={on_cluster}"]).resume == on_cluster
    assert build(None, None, [f"resume={on_cluster}"]).resume == on_cluster  # backend chosen later
    # where it runs here, the directory must be a checkpoint here
    with pytest.raises(FtctlError, match=r"checkpoint-200 is not auto, never .*\(no trainer_state.json\)"):
        build(None, {"backend": "local"}, [f"resume={on_cluster}"])
    ckpt = tmp_path / "best"
    ckpt.mkdir()
    (ckpt / "trainer_state.json").write_text("{}")
    for backend in ("local", "slurm"):  # a checkpoint here, whatever its name
        assert build(None, {"backend": backend}, [f"resume={ckpt}"]).resume == str(ckpt)


# --- YAML lists for comma-separated keys --------------------------------------------------------------------------
def test_yaml_lists_of_comma_separated_keys_are_joined(tmp_path):
    s = build(_yaml(tmp_path, "lora_target_modules: [q_proj, v_proj]\nreport_to: [wandb, tensorboard]\n"))
    assert s.lora_target_modules == "q_proj,v_proj" and s.report_to == "wandb,tensorboard"
    with pytest.raises(FtctlError) as e:
        build(_yaml(tmp_path, "gpus: [8xA100]\n"))
    assert (
        str(e.value)
        == "gpus=['8xA100'] (run file): expects a single value, not a list: write gpus: VALUE (-o gpus=VALUE)."
    )
    with pytest.raises(FtctlError, match=r"expects NAME=VALUE pairs: env: \{NAME: VALUE\} in a run file"):
        build(_yaml(tmp_path, "env: [A=1]\n"))


# --- keys users bring from TRL / transformers ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "key, words",
    [
        ("use_peft", "--method lora (or qlora"),
        ("torch_dtype", "the planner chooses the precision"),
        ("trust_remote_code", "remote code stays off"),
        ("lora_modules_to_save", "train only the adapters (no modules_to_save)"),
        ("lora_weight_path", "-o lora_model_dir=RUN (axolotl's name; a fresh optimizer and schedule)"),  # FastChat's
    ],
)
def test_trl_keys_are_explained_not_mistaken_for_an_alias(key, words):
    with pytest.raises(FtctlError) as e:
        build(None, None, [f"{key}=x"])
    assert str(e.value).startswith(f"'{key}' (-o) is not set by hand here: ") and words in str(e.value)
    assert "Did you mean" not in str(e.value)
    assert key not in tool_vocabulary.ALIASES


def test_an_alias_is_suggested_only_for_a_near_typo_of_it():
    with pytest.raises(FtctlError, match="Did you mean 'max_seq_length'"):
        build(None, None, ["max_seq_lenght=1"])
    with pytest.raises(FtctlError) as e:
        build(None, None, ["use_pfft=1"])  # not 'use_spot': an alias for another key (spot)
    assert "use_spot" not in str(e.value)


# --- ftctl keys shows and finds aliases ---------------------------------------------------------------------------
def test_an_axolotl_run_file_reads_as_written():
    """axolotl's names for the keys ftctl has; train_on_inputs is assistant_only_loss's inverse."""
    axolotl = {"base_model": "o/m", "adapter": "qlora", "sequence_len": 1024, "val_set_size": 0.05}
    spec = build({**axolotl, "micro_batch_size": 2})
    assert (spec.method, spec.model_max_length, spec.eval_split, spec.per_device_train_batch_size) == (
        "qlora", 1024, 0.05, 2
    )  # fmt: skip
    assert build(yaml.safe_load("adapter:\nbase_model: o/m\n")).method == "fft"  # axolotl's full fine-tune
    assert build({**axolotl, "train_on_inputs": False}).assistant_only_loss is True


def test_keys_show_and_find_aliases():
    from click.testing import CliRunner

    from ftctl.cli import main

    said = {key: text for _, key, _, text in spec_mod.described_keys()}
    assert said["model_max_length"].startswith(
        "(also: max_seq_length, max_length, max_seq_len, sequence_len, cutoff_len)"
    )
    for alias, key in tool_vocabulary.ALIASES.items():
        assert alias in said[key].split(")")[0], alias
    found = CliRunner().invoke(main, ["keys", "max_seq_length"])
    assert found.exit_code == 0 and "model_max_length = 2048  (also: max_seq_length" in found.stdout
    # axolotl's keys read as another one here: `ftctl keys train_on` found nothing
    found = CliRunner().invoke(main, ["keys", "train_on"])
    assert found.exit_code == 0 and "assistant_only_loss = true  (also: completion_only_loss: TRL's" in found.stdout
    assert {key for key, _ in spec_mod.TURNED.values()} == {
        "assistant_only_loss",
        "lora_target_modules",
        "data_path",
        "eval_data_path",
    }
    for name in spec_mod.TURNED:  # each is what _axolotl turns
        assert spec_mod._axolotl(name, True if "datasets" not in name else [{"path": "a.jsonl"}])[0] != name


# --- model size ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["0b", "0", "0.0m"])
def test_a_model_of_no_parameters_is_refused(text):
    want = f"--model-params {text!r}: a model has more than 0 parameters; write its size like 7b or 135m."
    with pytest.raises(FtctlError) as e:
        parse_size(text)
    assert str(e.value) == want
    with pytest.raises(FtctlError) as e:  # at spec validation, with the run's other problems
        build(None, {"model_params": text})
    assert str(e.value) == want


@pytest.mark.parametrize(
    "time,seconds", [("60", 3600), ("30:15", 1815), ("12:00:00", 43200), ("1-12:30", 131400), ("UNLIMITED", None)]
)
def test_slurm_time_limits_read_as_sbatch_reads_them(time, seconds):
    from ftctl.spec import slurm_time_s

    assert slurm_time_s(time) == seconds
    assert build({"time": time}).time == time


def test_a_time_limit_sbatch_refuses_or_too_short_to_train_is_said_before_the_job():
    with pytest.raises(FtctlError) as e:
        build({"time": "12h"})
    assert str(e.value).startswith("time='12h': Slurm reads minutes, MM:SS, HH:MM:SS, D-HH")
    with pytest.raises(FtctlError, match=r"time=00:01:00 \(60 s, as Slurm reads it\) is not longer than signal_lead_s"):
        build({"time": "00:01:00"})
    notes: list[str] = []  # 12:00 meant as 12 hours is 12 minutes to Slurm: found at the first requeue
    assert build({"time": "12:00"}, notes=notes).time == "12:00"
    assert "time=12:00: Slurm reads MM:SS, 12 minutes 0 seconds; 12 hours is --time 12:00:00" in notes
    assert build({"time": "00:01:00", "signal_lead_s": 30}).signal_lead_s == 30
    assert build({"time": "0"}).time == "0"  # sbatch's "no limit"


def test_two_names_of_one_key_are_said_not_the_last_taken():
    """lr and learning_rate, a data_path mapping beside
    data_weights: one layer naming a key twice is refused (which one wins would be a guess); -o repeating a
    list or mapping key adds to it, as before; a later layer overrides an earlier one under another name."""
    with pytest.raises(FtctlError) as e:
        build({"learning_rate": 1e-4, "lr": 2e-4, "max_seq_length": 512, "model_max_length": 1024})
    assert str(e.value).splitlines() == [
        "2 problems in the run description:",
        "  - 'learning_rate' and 'lr' (run file) are both learning_rate here: keep one.",
        "  - 'max_seq_length' and 'model_max_length' (run file) are both model_max_length here: keep one.",
    ]
    assert build({"assistant_only_loss": True, "completion_only_loss": True}).assistant_only_loss  # TRL's two switches
    with pytest.raises(FtctlError, match="'data_path' is a mapping of datasets to weights, and 'data_weights'"):
        build({"data_path": {"a.jsonl": 1}, "data_weights": [2]})
    with pytest.raises(FtctlError, match=r"'lr' and 'learning_rate' \(-o\)"):
        build(None, None, ["lr=1e-4", "learning_rate=2e-4"])
    assert build(None, None, ["env=A=1", "env=B=2"]).env == {"A": "1", "B": "2"}
    assert build(None, None, ["secret=A", "secrets=B"]).secrets[-2:] == ["A", "B"]  # -o's lists add up
    assert build({"lr": 1e-4}, None, ["learning_rate=2e-4"]).learning_rate == 2e-4


def test_a_key_written_twice_in_a_run_file_is_said(tmp_path):
    """YAML takes the last of a key written twice, silently; the run file says which and where."""
    run = tmp_path / "run.yaml"
    run.write_text("method: lora\nlora_r: 8\nenv:\n  A: '1'\nlora_r: 16\n")
    with pytest.raises(FtctlError) as e:
        build(str(run))
    assert str(e.value) == f"{run} line 5: 'lora_r' is set twice (first on line 2): keep one."
    run.write_text("method: lora\nlora_r: 8\nenv:\n  A: '1'\n")
    assert build(str(run)).lora_r == 8 and build(str(run)).env == {"A": "1"}
    # YAML's merge key is no key written twice: what follows it overrides what it brings
    run.write_text("env:\n  <<: {A: '1', B: '2'}\n  A: '3'\n")
    assert build(str(run)).env == {"A": "3", "B": "2"}


def test_a_method_in_other_case_is_pointed_at():
    with pytest.raises(FtctlError, match="method='LoRA' is not one of fft, sft, lora, qlora. Did you mean 'lora'"):
        build({"method": "LoRA"})


def test_an_endpoint_with_a_password_in_it_is_refused_without_echoing_it():
    """The endpoint is written into the rendered files and spec.json as it is: a user:pass in it would be too."""
    with pytest.raises(FtctlError) as e:
        build({"s3_endpoint_url": "https://minio:s3cr3t-pw@store.lab:9000"})
    assert "s3cr3t-pw" not in str(e.value) and "s3_endpoint_url holds a user and password" in str(e.value)
    assert build({"s3_endpoint_url": "https://store.lab:9000"}).s3_endpoint_url == "https://store.lab:9000"


def test_scheduler_arguments_are_checked_against_the_scheduler():
    """cosine_with_min_lr without its floor raised in transformers at the first step, after the GPUs were paid for."""
    with pytest.raises(FtctlError, match=r"cosine_with_min_lr decays to a floor: .*min_lr_rate=0.1"):
        build({"lr_scheduler_type": "cosine_with_min_lr"})
    spec = build({"lr_scheduler_type": "cosine_with_min_lr", "lr_scheduler_kwargs": {"min_lr_rate": 0.1}})
    from ftctl.spec import scheduler_kwargs

    assert scheduler_kwargs(spec) == {"min_lr_rate": 0.1}
    with pytest.raises(FtctlError, match="min_lr_rate is no argument of linear: it takes none"):
        build(None, None, ["lr_scheduler_type=linear", "lr_scheduler_kwargs=min_lr_rate=0.1"])
    with pytest.raises(FtctlError, match="num_cycles='half': give a number"):
        build(None, None, ["lr_scheduler_kwargs=num_cycles=half"])
    # a run file's floor, cleared by -o for another scheduler or another floor
    floor = {"lr_scheduler_type": "cosine_with_min_lr", "lr_scheduler_kwargs": {"min_lr": 1e-6}}
    with pytest.raises(FtctlError, match=r"min_lr is no argument of linear: .*lr_scheduler_kwargs=none clears"):
        build(floor, None, ["lr_scheduler_type=linear"])
    assert build(floor, None, ["lr_scheduler_type=linear", "lr_scheduler_kwargs=none"]).lr_scheduler_kwargs == {}
    again = build(floor, None, ["lr_scheduler_kwargs=none", "lr_scheduler_kwargs=min_lr_rate=0.1"])
    assert again.lr_scheduler_kwargs == {"min_lr_rate": "0.1"}


def test_an_optimizer_transformers_does_not_know_is_refused_before_the_job():
    """optim=bogus passed plan and --dry-run and failed in the trainer (transformers' OptimizerNames); the names
    ftctl checks against are transformers' own, all of them."""
    from transformers.training_args import OptimizerNames

    from ftctl.spec import OPTIMIZERS

    assert set(OPTIMIZERS) == {o.value for o in OptimizerNames}
    with pytest.raises(FtctlError, match=r"optim='paged_adamw8bit' is no optimizer .* Did you mean 'paged_adamw_8bit'"):
        build({"optim": "paged_adamw8bit"})
    assert build({"optim": "adafactor"}).optim == "adafactor"


def test_pefts_and_axolotls_names_are_taken_and_misleading_neighbours_are_explained():
    """r and target_modules (PEFT's LoraConfig), micro_batch_size and base_model (axolotl's) are their keys here;
    freeze_layers, q_lora, dataset and batch_size were answered with a spelling neighbour of another meaning
    (trainable_layers, lora_r, data_weights, global_batch_size)."""
    peft = {"r": 8, "target_modules": ["q_proj", "v_proj"], "adapter": "lora"}  # (no adapter: axolotl's fft)
    spec = build({**peft, "micro_batch_size": 2, "base_model": "org/m"})
    assert (spec.lora_r, spec.lora_target_modules, spec.per_device_train_batch_size) == (8, "q_proj,v_proj", 2)
    assert spec.model_name_or_path == "org/m"
    for key, said in [
        ("freeze_layers", "--method sft trains the top trainable_layers blocks"),
        ("q_lora", "--method qlora"),
        ("dataset", "Datasets are data_path"),
        ("batch_size", "per_device_train_batch_size; per optimizer step, global_batch_size"),
    ]:
        with pytest.raises(FtctlError) as e:
            build({key: 1})
        assert said in str(e.value) and "Did you mean" not in str(e.value), str(e.value)


def test_a_store_output_with_a_trailing_slash_is_the_same_run():
    """s3://b/x/ and s3://b/x were two runs to ftctl: two cache directories, two one-trainer locks, two jobs; a
    second trainer started into the first's output, and each pruned the other's checkpoints."""
    from ftctl.trainer.run import output_dirs

    plain, slashed = RunSpec(output_dir="s3://b/runs/x"), RunSpec(output_dir="s3://b/runs/x/")
    assert slashed.output == plain.output == "s3://b/runs/x"
    assert output_dirs(slashed) == output_dirs(plain)
    assert RunSpec(output_dir="runs/x/").output == "runs/x/"  # a local path is read by the file system


TOKEN = "hf_" + "AbCdEfGh12345678IjKl"  # the shape of a token, not one


@pytest.mark.parametrize(
    "line, said",
    [
        (f"export HF_TOKEN={TOKEN}", "setup line sets HF_TOKEN to a value (not repeated here)"),
        (f"WANDB_API_KEY={TOKEN} python3 -c pass", "setup line sets WANDB_API_KEY to a value"),
        (f"huggingface-cli login --token {TOKEN}", "setup line gives --token a value (not repeated here), which "),
        (
            f"huggingface-cli login --token={TOKEN}",
            '("$HF_TOKEN"), export it where you launch and pass --secret HF_TOKEN',
        ),
        (f"wandb login {TOKEN}", '("$WANDB_API_KEY"), export it where you launch and pass --secret WANDB_API_KEY'),
    ],
)
def test_a_credential_in_a_setup_line_is_refused(line, said):
    """docs/configuration.md says secrets pass by name only, but `-o setup='export HF_TOKEN=hf_...'` (the usual first
    try) was written into job.sbatch, spec.json and, where the line failed, the job's log."""
    with pytest.raises(FtctlError) as e:
        build({"setup": [line]})
    assert said in str(e.value) and TOKEN not in str(e.value) and "--secret" in str(e.value)


@pytest.mark.parametrize(
    "line",
    [
        'huggingface-cli login --token "$HF_TOKEN"',
        "export HF_TOKEN=$MY_HF_TOKEN",
        "export HF_HUB_DISABLE_IMPLICIT_TOKEN=1",
        "pip install git+https://github.com/o/r@3f2a9c1d3f2a9c1d3f2a9c1d3f2a9c1d3f2a9c1d",
        "source /opt/venv/bin/activate",
        "export GIT_SSH_KEY=~/.ssh/id_ed25519",  # a key's file, not a key
        "export SIGNING_KEY=/etc/keys/sign.pem",
        "docker build --secret id=hf,env=HF_TOKEN .",  # BuildKit's way of passing one by name
        "docker login myregistry2024westeurope.azurecr.io",
    ],
)
def test_setup_lines_that_name_a_credential_by_reference_are_taken(line):
    assert build({"setup": [line]}).setup == [line]


def test_a_negative_signal_lead_is_refused():
    """-o signal_lead_s=-5 rendered #SBATCH --signal=B:USR2@-5, for sbatch to refuse after the render."""
    with pytest.raises(FtctlError, match="signal_lead_s must be 0 or more seconds before the time limit, not -5"):
        build({"signal_lead_s": -5})


@pytest.mark.parametrize("value", ["", " , ", ","])
def test_a_data_path_that_names_no_data_is_refused_before_the_job(value):
    """`--data "$DATA"` with DATA unset passed plan, the preflight and --dry-run, and the trainer then said
    "1 error(s) in the data ; ...: no rows" after the queue's wait, leaving a run directory behind."""
    with pytest.raises(FtctlError, match="names no data: give a file, a directory, a pattern, a URI or builtin:demo"):
        build(None, {"data_path": value})


def test_trl_s_qlora_recipe_keys_are_taken_where_the_method_does_what_they_ask():
    """TRL's sft.py QLoRA recipe (use_peft, load_in_4bit, bnb_4bit_quant_type, use_bnb_nested_quant) was refused
    with --method qlora, which does exactly that; the same keys beside a method that does not are refused, saying
    which method they ask for."""
    recipe = {"use_peft": True, "load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "use_bnb_nested_quant": True}
    notes: list[str] = []
    assert build({"method": "qlora", **recipe}, notes=notes).method == "qlora"
    assert notes[0] == (
        "use_peft, load_in_4bit, bnb_4bit_quant_type, use_bnb_nested_quant (run file): left to ftctl, which does what "
        "the values given ask"
    )
    assert notes[1].startswith("model_max_length 1024, lr_scheduler_type linear, warmup_ratio 0, ")  # TRL's defaults
    assert build({"method": "lora", "use_peft": True, "load_in_4bit": False}).method == "lora"
    with pytest.raises(FtctlError) as refused:
        build({"method": "fft", **recipe})
    said = str(refused.value)
    assert "'use_peft' (run file): true asks for --method lora or qlora, not fft" in said
    assert "'bnb_4bit_quant_type' (run file): nf4 asks for --method qlora, not fft" in said
    with pytest.raises(FtctlError, match="'bnb_4bit_quant_type' .* is not set by hand here"):
        build({"method": "qlora", "bnb_4bit_quant_type": "fp4"})  # ftctl's 4 bits are NF4


def test_env_values_of_a_run_file_are_taken_as_written(tmp_path):
    """YAML's `FLAG: true`, `OCT: 010` and `RATIO: 1e-3` became True, 8 and 0.001 through str(), an empty value the
    word None: a job that compares "true" or reads a umask got something else."""
    run = tmp_path / "run.yaml"
    run.write_text("env:\n  FLAG: true\n  OCT: 010\n  RATIO: 1e-3\n  EMPTY:\n  SAID: 'True'\n  PORT: 8080\n")
    assert build(str(run)).env == {
        "FLAG": "true",
        "OCT": "010",
        "RATIO": "1e-3",
        "EMPTY": "",
        "SAID": "True",
        "PORT": "8080",
    }
    assert build({"env": {"FLAG": False, "EMPTY": None}}).env == {"FLAG": "false", "EMPTY": ""}  # a dict from Python


AXOLOTL_QLORA = """\
base_model: meta-llama/Llama-3.1-8B
load_in_8bit: false
load_in_4bit: true
strict: false
datasets:
  - path: data/chats.jsonl
    type: chat_template
  - path: mhenrichsen/alpaca_2k_test
    type: alpaca
dataset_prepared_path:
val_set_size: 0.05
output_dir: ./outputs/qlora-out
adapter: qlora
lora_model_dir:
sequence_len: 4096
sample_packing: true
pad_to_sequence_len: true
lora_r: 32
lora_alpha: 16
lora_dropout: 0.05
lora_target_linear: true
wandb_project:
wandb_entity:
gradient_accumulation_steps: 4
micro_batch_size: 2
num_epochs: 4
optimizer: paged_adamw_32bit
lr_scheduler: cosine
learning_rate: 0.0002
train_on_inputs: false
group_by_length: false
bf16: auto
fp16:
tf32: false
gradient_checkpointing: true
resume_from_checkpoint:
local_rank:
logging_steps: 1
xformers_attention:
flash_attention: true
warmup_steps: 10
debug:
deepspeed:
weight_decay: 0.0
evals_per_epoch: 4
saves_per_epoch: 1
fsdp:
fsdp_config:
special_tokens:
"""


def test_an_axolotl_example_file_is_taken_as_it_is_written(tmp_path):
    """axolotl's example QLoRA file (examples/llama-3/qlora.yml's keys) was refused twenty ways: its empty fsdp:,
    deepspeed:, wandb_project: ... (YAML null asks for nothing), train_on_inputs: false (the default here, said so
    and refused), lora_target_linear, optimizer, lr_scheduler, sample_packing and datasets: [{path, type}]."""
    run = tmp_path / "qlora.yml"
    run.write_text(AXOLOTL_QLORA)
    notes: list[str] = []
    spec = build(str(run), notes=notes)
    assert (spec.method, spec.model_max_length, spec.per_device_train_batch_size, spec.eval_split) == (
        "qlora",
        4096,
        2,
        0.05,
    )
    assert spec.data_path == "data/chats.jsonl,hf://datasets/mhenrichsen/alpaca_2k_test"
    assert spec.lora_target_modules == "all-linear" and spec.assistant_only_loss is True and spec.packing is True
    assert (spec.optim, spec.lr_scheduler_type) == ("paged_adamw_32bit", "cosine")
    assert (spec.saves_per_epoch, spec.evals_per_epoch) == (1, 4)
    # a value equal to the default is given all the same (it was read as not given, and lost silently)
    for given in ({"save_steps": 50, "saves_per_epoch": 2}, {"save_steps": 100, "saves_per_epoch": 2}):
        with pytest.raises(FtctlError, match="save_steps and saves_per_epoch both given: keep one"):
            build(given)
    said: list[str] = []
    assert build({"warmup_steps": 10, "warmup_ratio": 0.03}, notes=said).warmup == 10  # transformers' way, said
    assert said == ["warmup_ratio=0.03 unused: warmup_steps=10 wins (as in transformers)"]
    assert (build({}).warmup, build({"warmup_steps": 10}).warmup, build({"warmup_ratio": 0.1}).warmup) == (
        0.03,
        10,
        0.1,
    )
    assert (build({}).checkpoint_every, build({}).global_batch) == (100, 32)
    assert (
        "datasets (run file): their paths are data_path; each row's format is read from its fields (not from their type)"
        in notes
    )
    chats = {"path": "c.jsonl", "type": "chat_template", "field_messages": "messages", "roles_to_train": ["assistant"]}
    said: list[str] = []
    build({"datasets": [{**chats, "train_on_eos": "turn", "split": "train"}]}, notes=said)  # as ftctl does anyway
    assert "each row's format is read from its fields (not from their type)" in said[0]
    with pytest.raises(FtctlError) as e:  # other rows or tokens than ftctl would train: dropped, they trained those
        build({"datasets": [{**chats, "roles_to_train": ["user", "assistant"], "split": "test"}]})
    assert "c.jsonl's split: 'test': a Hub dataset's train split is read; for another, name its files" in str(e.value)
    assert "c.jsonl's roles_to_train: ['user', 'assistant']: the assistant's turns are trained" in str(e.value)
    said = []  # a turn's training flag by a name the data reader honours, the tokenizer's own template: as ftctl does
    build(
        {"datasets": [{**chats, "message_field_training": "train", "chat_template": "tokenizer_default"}]}, notes=said
    )
    with pytest.raises(FtctlError) as e:  # a flag the reader would pass over (its turns trained), another template
        build({"datasets": [{**chats, "message_field_training": "keep", "chat_template": "llama3"}]})
    assert (
        "c.jsonl's message_field_training: 'keep': a turn says whether it trains in a field named training, train"
        in (str(e.value))
    )
    # (an entry's chat_template by name is checked against the model's own template as the top-level one is, once the
    # entries are read: tests/test_migrate337.py)
    assert "chat_template" not in str(e.value)
    assert any(n.startswith("load_in_8bit, load_in_4bit, strict, dataset_prepared_path") for n in notes)
    assert build({"train_on_inputs": True}).assistant_only_loss is False  # the loss on every token
    empty = {"load_in_8bit": None, "use_peft": None, "train_on_inputs": None, "lora_target_linear": None}
    assert build({"method": "lora", **empty}).assistant_only_loss is True  # left empty, each asks for nothing
    with pytest.raises(FtctlError, match="'lora_target_linear' .*: false: name the modules instead"):
        build({"lora_target_linear": False})
    with pytest.raises(
        FtctlError, match="'flash_attention' .* is not set by hand here: the plan chooses the attention"
    ):
        build({"flash_attention": False})


def test_trl_and_fastchat_recipes_say_their_method_and_what_ftctl_decides(tmp_path):
    """TRL's `trl sft --use_peft --load_in_4bit` is QLoRA, and without use_peft a full fine-tune; FastChat's q_lora
    likewise. With no method given they chose lora (the default) and refused what they said. A FastChat full
    fine-tuning file (learning_rate 2e-5, no LoRA key, no method) trained LoRA adapters at a full fine-tune's rate,
    said by one word in the plan. Keys of their recipes that ask for what ftctl does are taken with a note."""
    notes: list[str] = []
    qlora = build({"use_peft": True, "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}, notes=notes)
    assert qlora.method == "qlora" and any(n.startswith("method qlora: what 'use_peft' (run file)") for n in notes)
    assert build({"use_peft": False}).method == "fft"  # TRL without PEFT trains every weight
    assert build({"q_lora": True}).method == "qlora" and build({"q_lora": False}).method == "lora"
    assert build({"use_peft": True, "method": "qlora"}).method == "qlora"  # given: the method said wins, as before
    with pytest.raises(FtctlError, match="'load_in_4bit' .*: true asks for --method qlora, not lora"):
        build({"method": "lora", "load_in_4bit": True})
    fastchat = _yaml(tmp_path, "learning_rate: 2e-5\nfsdp: full_shard auto_wrap\nmodel_max_length: 2048\n")
    with pytest.raises(
        FtctlError, match=r"learning_rate=2e-05 \(run file\) with no method given: .* give --method fft"
    ):
        build(fastchat)
    assert build(fastchat, {"method": "fft"}).learning_rate == 2e-5
    assert build(_yaml(tmp_path, "learning_rate: 2e-5\nlora_r: 8\n")).method == "lora"  # FastChat's train_lora.sh
    recipe = {
        "torch_dtype": "bfloat16",
        "use_liger_kernel": True,
        "gradient_checkpointing_kwargs": {"use_reentrant": False},
        "lora_task_type": "CAUSAL_LM",
        "logging_strategy": "steps",
        "dataset_num_proc": 8,
        "model_type": "LlamaForCausalLM",
        "tokenizer_type": "LlamaTokenizer",
        "eval_table_size": None,
        "lora_fan_in_fan_out": None,
    }
    notes = []
    build(recipe, notes=notes)
    assert any(n.startswith("torch_dtype, use_liger_kernel, gradient_checkpointing_kwargs") for n in notes), notes
    for key, value, said in [
        ("torch_dtype", "float32", "the planner chooses the precision"),
        ("gradient_checkpointing_kwargs", {"use_reentrant": True}, "gradient checkpointing .* runs non-reentrant"),
        ("save_only_model", True, "checkpoints keep the optimizer"),
        ("flash_attn", False, "the plan chooses the attention"),
        ("model_type", None, None),
    ]:
        if said is None:
            build({key: value})
            continue
        with pytest.raises(FtctlError, match=f"'{key}' .* is not set by hand here: {said}"):
            build({key: value})


def test_axolotls_llama2_qlora_example_reads_as_written(tmp_path):
    """examples/llama-2/qlora.yml word for word (the dataset's path aside) was refused eight ways: model_type and
    tokenizer_type, an empty lora_target_modules beside lora_target_linear, lora_fan_in_fan_out, eval_table_size,
    evals_per_epoch and saves_per_epoch."""
    text = AXOLOTL_QLORA.replace("base_model: meta-llama/Llama-3.1-8B\n", "base_model: NousResearch/Llama-2-7b-hf\n")
    text = text.replace("lora_target_linear: true\n", "lora_target_modules:\nlora_target_linear: true\n")
    run = tmp_path / "qlora.yml"
    run.write_text(
        "model_type: LlamaForCausalLM\ntokenizer_type: LlamaTokenizer\n"
        + text
        + "lora_fan_in_fan_out:\neval_table_size:\n"
    )
    spec = build(str(run))
    assert (spec.method, spec.lora_target_modules, spec.saves_per_epoch) == ("qlora", "all-linear", 1)


def test_a_path_naming_a_shell_variable_is_refused_with_how_to_give_it(tmp_path):
    """output_dir: $SCRATCH/runs/r1 in a run file made a directory named '$SCRATCH' in the working directory, and
    trained there: checkpoints nobody looked for, on the small home quota."""
    with pytest.raises(FtctlError) as e:
        build(_yaml(tmp_path, "output_dir: $SCRATCH/runs/r1\ndata_path: [a.json, '${DATA}/b.json']\n"))
    said = str(e.value)
    assert "output_dir='$SCRATCH/runs/r1' names $SCRATCH, and ftctl expands no variables" in said
    assert '(-o output_dir="$SCRATCH/runs/r1")' in said
    assert "data_path='${DATA}/b.json' names $DATA" in said
    real = tmp_path / "cost$HOME"  # a path that is there as written is taken
    real.mkdir()
    assert build(_yaml(tmp_path, f"output_dir: {real}\n")).output_dir == str(real)
    quoted = str(tmp_path / "new$HOME")  # on the command line the shell expands: a $ left there was quoted
    assert build(flags={"output_dir": quoted}).output_dir == quoted


def test_lora_target_modules_apart_by_spaces_as_trls_flag_gives_them():
    """TRL's `--lora_target_modules q_proj k_proj v_proj` (nargs) copied into -o or a run file was one name, 'q_proj
    k_proj v_proj', which no module has: the launch stopped at it."""
    from ftctl.spec import lora_target_names

    assert lora_target_names("q_proj k_proj v_proj") == ["q_proj", "k_proj", "v_proj"]
    assert lora_target_names("q_proj, v_proj,q_proj") == ["q_proj", "v_proj"]
    assert build({"lora_target_modules": "q_proj v_proj"}).lora_target_modules == "q_proj v_proj"
    from ftctl.plan import make_plan

    spaced, commas = (build({"lora_target_modules": t, "gpus": "1xA100"}) for t in ("q_proj v_proj", "q_proj,v_proj"))
    assert make_plan(spaced).trainable_params_b == make_plan(commas).trainable_params_b  # planned as the same two


def test_data_given_where_a_run_file_goes_says_to_give_it_with_data(tmp_path):
    """`ftctl plan data.jsonl` (as `ftctl data check data.jsonl` takes it) said the file "is not valid YAML"."""
    rows = tmp_path / "chats.jsonl"
    rows.write_text('{"text": "a"}\n')
    listed = tmp_path / "chats.json"
    listed.write_text('[{"text": "a"}]')
    for path in (rows, listed):
        with pytest.raises(FtctlError, match=f"looks like data, not a run file .* give the data with --data {path}"):
            build(str(path))
    run = tmp_path / "run.json"  # a run file may be written in JSON: a mapping
    run.write_text('{"method": "qlora"}')
    assert build(str(run)).method == "qlora"


def test_trl_keys_ftctl_decides_are_explained_not_unknown():
    """TRL's dtype, eos_token, padding_free, do_eval ... were "Unknown key" with nothing more; packing_strategy and
    overwrite_output_dir got a "Did you mean" for another key (strategy, output_dir). (eos_token: checked against the
    chat template, test_trls_eos_token_is_taken_where_the_chat_template_ends_turns_with_it.)"""
    notes: list[str] = []
    given = {"dtype": "bfloat16", "padding_free": True, "packing_strategy": "bfd", "dataloader_num_workers": 4}
    build({**given, "remove_unused_columns": False, "ddp_find_unused_parameters": False, "do_train": True}, notes=notes)
    assert any(n.startswith("dtype, padding_free, packing_strategy, dataloader_num_workers") for n in notes), notes
    for key, value, said in [
        ("packing_strategy", "wrapped", "packing places whole rows best-fit decreasing"),
        ("dtype", "float32", "the planner chooses the precision"),
    ]:
        with pytest.raises(FtctlError) as e:
            build({key: value})
        assert f"'{key}' (run file) is not set by hand here: {said}" in str(e.value) and "Did you mean" not in str(
            e.value
        )
    with pytest.raises(FtctlError, match="do_eval: true, without held-out data: give it"):
        build({"do_eval": True})
    assert build({"do_eval": True, "eval_split": 0.1}).evaluates
    with pytest.raises(FtctlError) as e:
        build({"lr_scheduler_type": "cosine_with_restarts"})
    assert "restarts are not offered" in str(e.value) and "Did you mean" not in str(e.value)


def test_two_pairs_in_one_dict_override_are_refused_not_read_as_one_value():
    """-o env=NCCL_DEBUG=INFO,WANDB_PROJECT=p set NCCL_DEBUG to 'INFO,WANDB_PROJECT=p' (--data a,b splits)."""
    for o in ("env=NCCL_DEBUG=INFO,WANDB_PROJECT=p", "lr_scheduler_kwargs=min_lr_rate=0.1,num_cycles=1"):
        with pytest.raises(FtctlError, match="one NAME=VALUE a -o, a comma is part of the value"):
            build(None, None, [o])
    commas = [
        "env=CUDA_VISIBLE_DEVICES=0,1",
        "env=PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True,max_split_size_mb:64",
    ]
    assert build(None, None, commas).env["CUDA_VISIBLE_DEVICES"] == "0,1"


def test_a_run_file_that_is_not_yaml_says_where(tmp_path):
    """PyYAML's first line ("while parsing a flow sequence") said neither where nor what."""
    bad = tmp_path / "run.yaml"
    bad.write_text("method: lora\nlora_target_modules: [q_proj, v_proj\n")
    with pytest.raises(FtctlError, match=r"run.yaml is not valid YAML: line 3, column 1: expected ',' or ']'"):
        build(str(bad))


# --- explore8: other tools' run files as they are written ---------------------------------------------------------
AXOLOTL_QLORA_1B = """\
base_model: NousResearch/Llama-3.2-1B
load_in_8bit: false
load_in_4bit: true
datasets:
  - path: teknium/GPT4-LLM-Cleaned
    type: alpaca
dataset_prepared_path: last_run_prepared
val_set_size: 0.1
output_dir: ./outputs/qlora-out
adapter: qlora
lora_model_dir:
sequence_len: 2048
sample_packing: true
eval_sample_packing: true
lora_r: 32
lora_alpha: 16
lora_dropout: 0.05
lora_target_modules:
  - gate_proj
  - q_proj
wandb_project:
gradient_accumulation_steps: 4
micro_batch_size: 2
num_epochs: 1
optimizer: adamw_bnb_8bit
lr_scheduler: cosine
learning_rate: 0.0002
bf16: auto
tf32: false
gradient_checkpointing: true
resume_from_checkpoint:
logging_steps: 1
attn_implementation: flash_attention_2
loss_watchdog_threshold: 5.0
loss_watchdog_patience: 3
warmup_ratio: 0.1
evals_per_epoch: 4
saves_per_epoch: 1
weight_decay: 0.0
special_tokens:
  pad_token: "<|end_of_text|>"
"""


def test_axolotls_llama3_qlora_1b_example_reads_as_written(tmp_path):
    """axolotl's examples/llama-3/qlora-1b.yml was refused four ways although docs/other-tools.md says axolotl's
    example files launch as written: eval_sample_packing ('did you mean eval_split?'), the loss watchdog's two keys, and
    special_tokens holding only a pad_token (padding carries no loss)."""
    notes: list[str] = []
    spec = build(_yaml(tmp_path, AXOLOTL_QLORA_1B), notes=notes)
    assert (spec.method, spec.eval_split, spec.optim, spec.lora_target_modules) == (
        "qlora", 0.1, "adamw_bnb_8bit", "gate_proj,q_proj"
    )  # fmt: skip
    assert any(n.startswith("loss_watchdog_threshold, loss_watchdog_patience (run file): left out, ") for n in notes)
    assert any("eval_sample_packing" in n and "special_tokens" in n for n in notes)
    with pytest.raises(FtctlError, match="'special_tokens' .* a pad_token alone may stay"):
        build({"special_tokens": {"pad_token": "<pad>", "eos_token": "<|eot_id|>"}})  # an eos changes what trains


LLAMA_FACTORY_QLORA = """\
### model
model_name_or_path: meta-llama/Meta-Llama-3-8B-Instruct
quantization_bit: 4
quantization_method: bitsandbytes
### method
stage: sft
do_train: true
finetuning_type: lora
lora_target: all
### dataset
data_path: data/identity.json
cutoff_len: 2048
overwrite_cache: true
preprocessing_num_workers: 16
### output
output_dir: saves/llama3-8b/lora/sft
logging_steps: 10
save_steps: 500
plot_loss: true
### train
per_device_train_batch_size: 1
gradient_accumulation_steps: 8
learning_rate: 1.0e-4
num_train_epochs: 3.0
lr_scheduler_type: cosine
warmup_ratio: 0.1
bf16: true
ddp_timeout: 180000000
### eval
val_size: 0.1
per_device_eval_batch_size: 1
eval_strategy: steps
eval_steps: 500
"""


def test_a_llama_factory_run_file_trains_what_it_says(tmp_path):
    """LLaMA-Factory's examples/train_qlora/llama3_lora_sft_otfq.yaml: none of its method keys were read (stage was
    answered 'did you mean strategy?', lora_target 'lora_target_modules?', which took all as a module's name).
    finetuning_type and quantization_bit are the method, lora_target: all is all-linear, cutoff_len and val_size
    are model_max_length and eval_split, and LLaMA-Factory's LoRA defaults (rank 8, alpha twice it, no dropout) are
    what its file trains with."""
    notes: list[str] = []
    spec = build(_yaml(tmp_path, LLAMA_FACTORY_QLORA), notes=notes)
    assert (spec.method, spec.lora_target_modules, spec.model_max_length, spec.eval_split) == (
        "qlora", "all-linear", 2048, 0.1
    )  # fmt: skip
    assert (spec.lora_r, spec.lora_alpha, spec.lora_dropout) == (8, 16, 0.0)
    assert "lora_r 8, lora_dropout 0, lora_alpha 16: LLaMA-Factory's defaults" in " ".join(notes)
    given = build({"finetuning_type": "lora", "lora_rank": 32, "lora_alpha": 8, "lora_dropout": 0.1})
    assert (given.method, given.lora_r, given.lora_alpha, given.lora_dropout) == ("lora", 32, 8, 0.1)
    assert build({"finetuning_type": "lora", "lora_rank": 32}).lora_alpha == 64
    assert build({"finetuning_type": "full", "learning_rate": 1e-5}).method == "fft"
    freeze = {"finetuning_type": "freeze", "freeze_trainable_layers": 4}
    with pytest.raises(FtctlError, match="freeze asks for --method sft, not lora: .*output head too: give method: sft"):
        build(freeze)  # LLaMA-Factory's freeze trains the blocks alone: sft trains the head too
    assert (build({**freeze, "method": "sft"}).trainable_layers, build({**freeze, "method": "sft"}).method) == (
        4,
        "sft",
    )
    for key, value, said in [
        ("stage", "dpo", "pre-training and reward or preference training (pt, rm, ppo, dpo, kto) are not offered"),
        ("template", "llama3", "give chat_template_path: a Jinja file of the llama3 template"),
        ("dataset", "identity,alpaca_en_demo", "give their file_name files"),
        ("max_samples", 1000, "cut the file"),
        ("quantization_bit", 8, "--method qlora trains over a 4-bit base"),
    ]:
        with pytest.raises(FtctlError) as e:
            build({key: value})
        assert said in str(e.value) and "Did you mean" not in str(e.value), str(e.value)


def test_a_llama_factory_run_files_plan_names_it_beside_packing_it_did_not_ask_for(tmp_path):
    """LLaMA-Factory's sft leaves packing off (its packing: None is on for pre-training only), as FastChat, TRL and
    axolotl do: the plan's note on packing that a batch of conversations did not ask for named those three only."""
    from ftctl.plan import make_plan

    spec = build(
        _yaml(tmp_path, LLAMA_FACTORY_QLORA), {"gpus": "1xH100", "model_name_or_path": "meta-llama/Llama-3.1-8B"}
    )
    said = [n for n in make_plan(spec).notes if n.startswith("packing: each of the 8 sequences")]
    assert said and "LLaMA-Factory's default: -o packing=false" in said[0], make_plan(spec).notes


def test_the_qlora_papers_run_file_is_its_qlora():
    """qlora.py's arguments (its guanaco scripts): bits, double_quant, quant_type and full_finetune say the method,
    lora_modules: all is all-linear, eval_dataset_size a number of held-out rows (it was answered 'did you mean
    eval_data_path?'), train_on_source assistant_only_loss's opposite."""
    qlora = {"bits": 4, "double_quant": True, "quant_type": "nf4", "full_finetune": False, "lora_modules": "all"}
    spec = build({**qlora, "eval_dataset_size": 1024, "train_on_source": False, "adam_beta2": 0.999})
    assert (spec.method, spec.lora_target_modules, spec.eval_split, spec.assistant_only_loss) == (
        "qlora", "all-linear", 1024, True
    )  # fmt: skip
    assert build({"train_on_source": True}).assistant_only_loss is False
    assert build({"full_finetune": True, "bits": 16, "learning_rate": 1e-5}).method == "fft"
    with pytest.raises(FtctlError, match="'bits' \\(run file\\): 4 asks for --method qlora, not lora"):
        build({"bits": 4, "method": "lora"})
    with pytest.raises(FtctlError, match="give model_max_length \\(their sum"):
        build({"target_max_len": 512})


@pytest.mark.parametrize(
    "config, overrides",
    [
        ({"lora_target_modules": "all"}, []),
        ({"lora_target": "all"}, []),
        ({"lora_target_modules": ["all"]}, []),
        (None, ["lora_target_modules=all"]),
    ],
)
def test_lora_target_all_is_every_linear_layer(config, overrides):
    """LLaMA-Factory's and qlora.py's `all` was taken as the name of a module (found at preflight, if at all)."""
    assert build(config, None, overrides).lora_target_modules == "all-linear"
    said = {key: text for _, key, _, text in spec_mod.described_keys()}
    assert "all (LLaMA-Factory's) is all-linear" in said["lora_target_modules"]  # ftctl keys says so


def test_a_yaml_list_given_with_o_is_the_list():
    """-o lora_target_modules=[q_proj,v_proj] trained modules named '[q_proj' and 'v_proj]'."""
    spec = build(None, None, ["lora_target_modules=[q_proj, 'v_proj']", "report_to=[wandb,tensorboard]"])
    assert (spec.lora_target_modules, spec.report_to) == ("q_proj,v_proj", "wandb,tensorboard")
    assert spec_mod.lora_target_names(spec.lora_target_modules) == ["q_proj", "v_proj"]


def test_axolotls_fsdp_list_is_fsdp_as_fastchats_string_is():
    notes: list[str] = []
    assert build({"fsdp": ["full_shard", "auto_wrap"], "method": "fft"}, notes=notes).strategy == "fsdp"
    assert notes[0].startswith("'fsdp' (run file): FSDP's full sharding is strategy=fsdp")
    with pytest.raises(FtctlError, match="'fsdp' \\(run file\\) is not set by hand here"):
        build({"fsdp": ["full_shard", "offload"]})


def test_a_deepspeed_config_is_the_strategy_of_its_zero_stage(tmp_path):
    """axolotl's deepspeed: deepspeed_configs/zero3_bf16.json and LLaMA-Factory's ds_z3_config.json were refused with
    '-o strategy=NAME forces one', which did not say which."""
    import json

    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}}))
    notes: list[str] = []
    fft = {"method": "fft"}  # (adapters train without ZeRO: test_fastchats_deepspeed_configs_are_read_by_their_names)
    assert build({**fft, "deepspeed": str(ds)}, notes=notes).strategy == "zero2_offload"
    assert "as its zero_optimization (stage 2) says" in notes[0]
    assert build({**fft, "deepspeed": "deepspeed_configs/zero3_bf16.json"}).strategy == "zero3"  # not here: its name
    assert build({**fft, "deepspeed": "examples/deepspeed/ds_z3_offload_config.json"}).strategy == "zero3_offload"
    with pytest.raises(FtctlError, match="ZeRO stage 2 or 3 is read as strategy=zero2 or zero3"):
        build({"deepspeed": "zero1.json"})
    with pytest.raises(FtctlError, match="'deepspeed' and 'strategy' .* are both strategy here: keep one"):
        build({"deepspeed": "zero3.json", "strategy": "fsdp"})


def test_fastchats_deepspeed_configs_are_read_by_their_names():
    """FastChat's README passes --deepspeed playground/deepspeed_config_s2.json (s3 for ZeRO-3): refused where the
    file is not here, the name saying s2, not zero2. Both files offload to CPU (s2 the optimizer, s3 the weights too).
    Its README passes them to train_lora.py: adapters, which ftctl trains without ZeRO, so there the plan chooses."""
    notes: list[str] = []
    fft = {"method": "fft", "deepspeed": "playground/deepspeed_config_s2.json"}
    assert build(fft, notes=notes).strategy == "zero2_offload"
    assert "strategy=zero2_offload here, as its name (FastChat's playground file, CPU offload) says" in notes[0]
    fft["deepspeed"] = "/data/FastChat/playground/deepspeed_config_s3.json"
    assert build(fft).strategy == "zero3_offload"
    assert build({**fft, "deepspeed": "deepspeed_config_lora_s2.json"}).strategy == "zero2_offload"  # earlier name
    notes.clear()
    qlora = build({"q_lora": True, "deepspeed": "playground/deepspeed_config_s2.json"}, notes=notes)
    assert (qlora.method, qlora.strategy) == ("qlora", None)
    assert (
        "'deepspeed' (run file): left out: its name (FastChat's playground file, CPU offload) says zero2_offload, "
        "which qlora does not train under here (its 4-bit base is not sharded" in " ".join(notes)
    )
    assert not any("strategy=zero2_offload here" in n for n in notes)
    from ftctl.plan import make_plan

    assert make_plan(qlora, "1xH100").strategy == "single"  # was: zero2_offload is not one ftctl runs qlora with
    assert build({"deepspeed": "zero3.json"}).strategy is None  # lora, the default, the same
    # sft trains under ZeRO-2/3 but not offloaded: left to the plan too, saying why
    notes.clear()
    assert build({"method": "sft", "deepspeed": "playground/deepspeed_config_s3.json"}, notes=notes).strategy is None
    assert "which sft does not train under here (sft's frozen blocks" in " ".join(notes)
    assert build({"method": "sft", "deepspeed": "zero3.json"}).strategy == "zero3"
    with_strategy = build({"deepspeed": "zero3.json"}, overrides=["strategy=ddp"])
    assert with_strategy.strategy == "ddp"
    assert build({"deepspeed": "zero3.json"}, overrides=["strategy=zero3"]).strategy == "zero3"  # forced: as asked


@pytest.mark.parametrize(
    "pair, said",
    [
        ("save_steps=0.1", "or saves_per_epoch: N"),
        ("eval_steps=0.25", "or evals_per_epoch: N"),
        ("warmup_steps=0.1", "give warmup_ratio: the share instead"),
    ],
)
def test_a_share_of_the_steps_is_refused_saying_what_to_write(pair, said):
    """transformers reads save_steps: 0.1 as a share of the training's steps; it was 'expects a whole number'."""
    with pytest.raises(FtctlError, match="transformers' share of the training's steps") as e:
        build(None, None, [pair])
    assert said in str(e.value)


def test_whole_numbers_written_as_decimals_are_taken(tmp_path):
    """-o lora_alpha=16.0 was refused while a run file's 16.0 was taken; YAML reads 1e3 as a string."""
    assert build(None, None, ["lora_alpha=16.0"]).lora_alpha == 16
    assert build(_yaml(tmp_path, "max_steps: 1e3\n")).max_steps == 1000


def test_trls_keys_are_taken_where_they_ask_for_what_ftctl_does():
    """TRL's dataset_name is its data_path (as axolotl's datasets path is); its SFTConfig's defaults written out
    (eval_packing, pad_token, loss_type: nll ...) were unknown keys, some with a misleading neighbour."""
    notes: list[str] = []
    spec = build({"dataset_name": "trl-lib/Capybara", "dataset_test_split": "test", "loss_type": "nll"}, notes=notes)
    assert spec.data_path == "hf://datasets/trl-lib/Capybara"
    assert "dataset_name (run file): data_path hf://datasets/trl-lib/Capybara" in notes
    build({"eval_packing": False, "pad_token": "<|endoftext|>", "gradient_checkpointing_use_reentrant": False})
    for key, value in [("loss_type", "dft"), ("activation_offloading", True), ("dataset_config", "en")]:
        with pytest.raises(FtctlError) as e:
            build({key: value})
        assert "is not set by hand here" in str(e.value) and "Did you mean" not in str(e.value)
    with pytest.raises(FtctlError, match="'save_strategy' .* or saves_per_epoch: N times an epoch"):
        build({"save_strategy": "best"})


def test_transformers_epoch_strategies_are_once_an_epoch():
    """save_strategy: epoch / eval_strategy: epoch (transformers, TRL, the alignment handbook) were refused; they are
    saves_per_epoch / evals_per_epoch 1. save_steps or eval_steps beside them in one file is unused, as in
    transformers; across layers the later one wins."""
    notes: list[str] = []
    spec = build({"save_strategy": "epoch", "save_steps": 500}, notes=notes)
    assert (spec.saves_per_epoch, spec.save_steps) == (1, None)
    assert notes == [
        "'save_strategy' (run file): epoch is saves_per_epoch=1 here (at each epoch's end)",
        "save_steps=500 unused: save_strategy: epoch (run file) wins, as in transformers",
    ]
    spec = build({"eval_strategy": "epoch", "eval_steps": 20, "eval_split": 0.1})
    assert (spec.evals_per_epoch, spec.eval_steps, spec.eval_when) == (1, None, "once an epoch")
    assert build({"evaluation_strategy": "epoch", "eval_data_path": "held.jsonl"}).evals_per_epoch == 1
    with pytest.raises(FtctlError, match="eval_strategy: epoch, without held-out data: give it"):
        build({"eval_strategy": "epoch"})
    notes = []
    spec = build({"save_strategy": "epoch"}, None, ["save_steps=50"], notes=notes)
    assert (spec.saves_per_epoch, spec.save_steps) == (None, 50)
    assert "save_strategy: epoch (run file) unused: save_steps (-o) wins" in notes
    spec = build({"save_steps": 50}, None, ["save_strategy=epoch"])
    assert (spec.saves_per_epoch, spec.save_steps) == (1, None)
    with pytest.raises(FtctlError, match="'save_strategy' and 'saves_per_epoch' .* are both saves_per_epoch"):
        build({"save_strategy": "epoch", "saves_per_epoch": 2})
    assert "epoch is read as saves_per_epoch: 1" in tool_vocabulary.not_a_key("save_strategy")


def test_save_strategy_no_is_taken_saying_checkpoints_are_written_all_the_same():
    """The alignment handbook's save_strategy: "no" was refused; ftctl checkpoints for resume whatever it says, so it
    is left out with a note naming save_total_limit (a YAML no is false)."""
    notes: list[str] = []
    assert build(yaml.safe_load("save_strategy: no\nsave_total_limit: 1"), notes=notes).save_total_limit == 1
    assert notes == [
        "'save_strategy' (run file): no is left out: checkpoints are written all the same, every save_steps (or "
        "saves_per_epoch), as a stopped or preempted run resumes from them; save_total_limit bounds how many are kept"
    ]
    with pytest.raises(FtctlError, match="is not set by hand here"):
        build({"save_strategy": "best"})


def test_eval_strategy_no_gives_way_to_held_out_data_a_later_layer_gives():
    """FastChat's script says --evaluation_strategy no; its run file with --eval-data on the command line was refused
    ('leave one of them out'): the later layer wins, noted. In one layer, or no given after the data, which was meant
    is a guess: refused, saying both fixes."""
    notes: list[str] = []
    spec = build({"evaluation_strategy": "no"}, {"eval_data_path": "held.jsonl"}, notes=notes)
    assert spec.evaluates
    assert (
        "evaluation_strategy: no (run file) gives way to eval_data_path (flag): the held-out loss is measured every "
        "100 steps and at the end" in notes
    )
    assert build({"eval_strategy": False}, None, ["eval_split=0.05"]).eval_split == 0.05
    for config, overrides in [
        ({"eval_strategy": "no", "eval_split": 0.1}, None),
        ({"eval_split": 0.1}, ["eval_strategy=no"]),
    ]:
        with pytest.raises(FtctlError, match="leave eval_strategy out to measure it, or the held-out data out"):
            build(config, None, overrides)


@pytest.mark.parametrize(
    "config, overrides",
    [({"max_length": None}, None), ({"max_seq_length": None}, None), (None, ["max_length=null"])],
)
def test_trls_null_max_length_is_refused_not_trained_at_2048(config, overrides):
    """TRL's max_length: null is "no truncation"; it was read as "asks for nothing" and trained at 2048, silently."""
    with pytest.raises(FtctlError, match="null is TRL's 'no truncation'.* it takes a number"):
        build(config, None, overrides)


def test_an_empty_sequence_len_still_asks_for_nothing():
    """axolotl's and LLaMA-Factory's own defaults are 2048, as here: their empty keys stay taken."""
    assert build({"sequence_len": None, "cutoff_len": None}).model_max_length == 2048


def test_trls_model_init_kwargs_and_dataset_kwargs_are_read_key_by_key():
    """TRL's SFTConfig model_init_kwargs got "Did you mean 'model_params'?", dataset_kwargs "'data_weights'?": each
    of their keys is read as the key it is here (torch_dtype, attn_implementation, revision: model_revision ...),
    taken where it asks for what ftctl does, refused saying why where not."""
    notes: list[str] = []
    spec = build(
        {
            "model_init_kwargs": {"torch_dtype": "bfloat16", "attn_implementation": "sdpa", "use_cache": False},
            "dataset_kwargs": {"skip_prepare_dataset": False},
            "model_revision": "main",
        },
        notes=notes,
    )
    assert spec.attn_implementation == "sdpa" and spec.model_revision is None  # (the demo model has no revisions)
    assert notes[0] == (
        "model_init_kwargs.torch_dtype, model_init_kwargs.use_cache, dataset_kwargs.skip_prepare_dataset (run file): "
        "left to ftctl, which does what the values given ask"
    )
    hub_model = {"model_name_or_path": "Qwen/Qwen2.5-0.5B", "model_init_kwargs": {"revision": "v2"}}
    assert build(hub_model).model_revision == "v2"  # (helper 275: launch records the commit it is)
    assert build(None, None, ['model_init_kwargs={"attn_implementation": "eager"}']).attn_implementation == "eager"
    assert build({"model_init_kwargs": None, "dataset_kwargs": {}}) == RunSpec()
    with pytest.raises(FtctlError) as e:
        build(
            {
                "model_init_kwargs": {"revision": "v2", "trust_remote_code": "x", "rope_scaling": {}},
                "dataset_kwargs": {"skip_prepare_dataset": True},
            }
        )
    text = str(e.value)
    assert text.startswith("3 problems") and "Did you mean" not in text
    assert "'model_init_kwargs.rope_scaling' (run file) is not offered: ftctl loads the model itself" in text
    assert "'dataset_kwargs.skip_prepare_dataset' (run file) is not set by hand here: ftctl prepares every row" in text
    with pytest.raises(FtctlError, match="'model_init_kwargs.attn_implementation' and 'attn_implementation'"):
        build({"model_init_kwargs": {"attn_implementation": "sdpa"}, "attn_implementation": "eager"})
    assert "read key by key" in tool_vocabulary.not_a_key("model_init_kwargs")


def test_a_hub_model_id_is_refused_not_dropped_and_pefts_bias_none_is_taken():
    """explore16: axolotl pushes the model to its hub_model_id; ftctl took the key with 'left to ftctl' and pushed
    nothing. PEFT's LoraConfig(bias="none"), copied into a run file, was an unknown key."""
    with pytest.raises(FtctlError, match="'hub_model_id' .* ftctl pushes nothing to the Hub .*`hf upload HUB_ID RUN/"):
        build({"adapter": "qlora", "hub_model_id": "me/llama3-qlora"})
    assert build({"adapter": "qlora", "hub_model_id": None}).method == "qlora"  # axolotl's examples leave it empty
    notes: list[str] = []
    assert build({"method": "lora", "bias": "none", "task_type": "CAUSAL_LM"}, notes=notes).method == "lora"
    assert notes == ["bias, task_type (run file): left to ftctl, which does what the values given ask"]
    with pytest.raises(FtctlError, match="'bias' .* no bias terms"):
        build({"method": "lora", "bias": "lora_only"})


def test_axolotls_top_level_chat_template_and_auto_resume_say_what_they_are():
    """explore16: axolotl's `chat_template: chatml` was "Unknown key ... Did you mean 'chat_template_path'?" (a file,
    not a template's name) and `auto_resume_from_checkpoints: true` an unknown key, in a file otherwise taken."""
    notes: list[str] = []
    run = {"adapter": "qlora", "auto_resume_from_checkpoints": True, "chat_template": "tokenizer_default"}
    assert build(run, notes=notes).resume == "auto"
    assert notes[0] == (
        "auto_resume_from_checkpoints, chat_template (run file): left to ftctl, which does what the values given ask"
    )
    assert all("axolotl's" in n for n in notes[1:]), notes  # its defaults, and the batch kept (helper 327)
    with pytest.raises(FtctlError) as e:  # (a named one over the model's own: tests/test_migrate333.py)
        build({**run, "chat_template": "chatml"})
    text = str(e.value)
    assert "Did you mean" not in text and "chat_template: chatml (run file): ftctl trains with the model's own" in text
    with pytest.raises(FtctlError) as e:
        build({**run, "auto_resume_from_checkpoints": False})
    assert "'auto_resume_from_checkpoints' (run file) is not set by hand here: resume=auto continues" in str(e.value)


def test_axolotls_wandb_keys_log_to_wandb_as_axolotl_does():
    """explore16: `wandb_project: NAME`, in nearly every axolotl file, was refused ("not set by hand here: W&B logging
    is -o report_to=wandb ..."): it asks for exactly that, and is taken so, noted; left empty it asks for nothing."""
    notes: list[str] = []
    spec = build({"adapter": "qlora", "wandb_project": "proj", "wandb_entity": "me", "wandb_watch": None}, notes=notes)
    assert spec.report_to == "wandb" and spec.env == {"WANDB_PROJECT": "proj", "WANDB_ENTITY": "me"}
    assert notes[0] == (
        "wandb_project, wandb_entity (run file): report_to=wandb, and WANDB_PROJECT=proj WANDB_ENTITY=me in the job's "
        "environment (W&B's key: export WANDB_API_KEY; ftctl passes it by name)"
    )
    assert "WANDB_API_KEY" in spec.secrets
    told = build({"wandb_project": "proj", "report_to": "tensorboard"})  # the file's own report_to stays
    assert told.report_to == "tensorboard" and told.env == {"WANDB_PROJECT": "proj"}
    assert build({"wandb_project": None}).report_to == "none"


def test_the_alignment_handbooks_recipe_keys_say_what_they_are():
    """The alignment handbook's SFT recipes (zephyr-7b-beta config_full.yaml): use_flash_attention_2, hub_model_id,
    hub_strategy, log_level and dataset_splits were unknown keys, two with a misleading neighbour ('data_weights?',
    'strategy?')."""
    notes: list[str] = []
    build(
        {"use_flash_attention_2": True, "hub_model_id": None, "hub_strategy": "every_save"},
        {"log_level": "info"},
        notes=notes,
    )
    assert notes == [
        "use_flash_attention_2, hub_model_id, hub_strategy (run file): left to ftctl, which does what the values given "
        "ask",
        "log_level (flag): left to ftctl, which does what the values given ask",
    ]
    with pytest.raises(FtctlError) as e:
        build({"dataset_splits": ["train_sft", "test_sft"], "use_flash_attention_2": False})
    text = str(e.value)
    assert "Did you mean" not in text and "name its files (data_path: hf://datasets/ORG/NAME/data/train_sft-" in text
    assert "'use_flash_attention_2' (run file) is not set by hand here: the plan chooses the attention" in text


TRL_SFT_LORA = """\
model_name_or_path: Qwen/Qwen2-0.5B
dataset_name: trl-lib/Capybara
learning_rate: 2.0e-4
num_train_epochs: 1
packing: true
per_device_train_batch_size: 2
gradient_accumulation_steps: 8
gradient_checkpointing: true
eval_strategy: steps
eval_steps: 100
use_peft: true
lora_r: 32
lora_alpha: 16
output_dir: Qwen2-0.5B-SFT
"""


def test_a_trl_run_file_trains_with_trls_defaults_where_it_leaves_them_out(tmp_path):
    """TRL's sft.py LoRA example (its flags as YAML) trained at 2048 tokens, where TRL's SFTConfig cuts at 1024
    (max_length; older TRL's max_seq_length at most 1024 too), on a cosine schedule after 3% warm-up where TRL's is
    linear without, and adapted every linear layer where TRL's LoRA adapts PEFT's default modules for the model's
    type (q_proj and v_proj in Qwen2: peft-default, named by the plan, tests/test_peft_targets.py): twice the tokens,
    another schedule, eight times the adapters, without a word. A file in TRL's vocabulary takes TRL's, noted with
    ftctl's own; what a layer gives wins, and a file without TRL's keys keeps ftctl's."""
    notes: list[str] = []
    spec = build(_yaml(tmp_path, TRL_SFT_LORA), None, ["eval_split=0.05"], notes=notes)
    assert (spec.model_max_length, spec.lr_scheduler_type, spec.warmup, spec.lora_target_modules) == (
        1024, "linear", 0.0, "peft-default"
    )  # fmt: skip
    assert (
        "model_max_length 1024, lr_scheduler_type linear, warmup_ratio 0, lora_target_modules peft-default: TRL's "
        "defaults, which a run file in its vocabulary (dataset_name, use_peft) trains with where it leaves them out; "
        "ftctl's own: -o model_max_length=2048 -o lr_scheduler_type=cosine -o warmup_ratio=0.03 "
        "-o lora_target_modules=all-linear"
    ) in notes
    kept = build(_yaml(tmp_path, TRL_SFT_LORA + "max_length: 4096\nwarmup_steps: 10\n"), None, ["eval_split=0.05"])
    assert (kept.model_max_length, kept.warmup_ratio, kept.warmup_steps) == (4096, None, 10)
    assert build({"dataset_name": "trl-lib/Capybara"}, None, ["model_max_length=2048"]).model_max_length == 2048
    full = build({"use_peft": False, "learning_rate": 2e-5, "method": "fft"})
    assert (full.model_max_length, full.lora_target_modules) == (1024, "all-linear")  # no adapters: no LoRA default
    assert build({"data_path": "a.jsonl", "learning_rate": 2e-4}) == RunSpec(data_path="a.jsonl", learning_rate=2e-4)
    assert build({"dataset_kwargs": {}}).model_max_length == 2048  # left empty, it asks for nothing


def test_a_trl_run_file_that_leaves_assistant_only_loss_out_is_told_ftctls_differs(tmp_path):
    """TRL trains a conversation's every token unless told (assistant_only_loss false), ftctl its assistant turns only:
    a TRL user's file trained another loss without a word. ftctl's default stays; a note says how to have TRL's."""
    notes: list[str] = []
    spec = build(_yaml(tmp_path, TRL_SFT_LORA), None, ["eval_split=0.05"], notes=notes)
    assert spec.assistant_only_loss is True
    said = [n for n in notes if n.startswith("assistant_only_loss true, ftctl's default, in a run file in TRL's")]
    assert said and "TRL trains a conversation's every token" in said[0] and "-o assistant_only_loss=false" in said[0]
    notes.clear()
    build({**yaml.safe_load(TRL_SFT_LORA), "assistant_only_loss": False, "eval_split": 0.05}, notes=notes)
    assert not any(n.startswith("assistant_only_loss") for n in notes), notes
    notes.clear()  # TRL's completion_only_loss says nothing of conversations (test_trl_keys260)
    build({**yaml.safe_load(TRL_SFT_LORA), "completion_only_loss": True, "eval_split": 0.05}, notes=notes)
    trl = [n for n in notes if n.startswith("assistant_only_loss true, ftctl's default")]
    assert trl == [said[0].replace("use_peft)", "use_peft, completion_only_loss)")], notes
    notes.clear()
    build(_yaml(tmp_path, TRL_SFT_LORA), None, ["eval_split=0.05", "assistant_only_loss=false"], notes=notes)
    assert not any(n.startswith("assistant_only_loss") for n in notes)
    notes.clear()
    build({"data_path": "a.jsonl"}, notes=notes)  # not TRL's vocabulary: nothing to say
    assert not any(n.startswith("assistant_only_loss") for n in notes)


CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LLAMA3 = "{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>' + m['content'] + '<|eot_id|>' }}{% endfor %}"


def _tokenizer_dir(where, template: str | None, eos: str, in_jinja: bool = False):
    """A model directory's tokenizer files as a ChatML or Llama 3 model ships them (the template in
    tokenizer_config.json, or in chat_template.jinja as transformers 5 saves it)."""
    import json

    where.mkdir(parents=True)
    config = {"eos_token": {"content": eos, "special": True}}
    if template and in_jinja:
        (where / "chat_template.jinja").write_text(template)
    elif template:
        config["chat_template"] = template
    (where / "tokenizer_config.json").write_text(json.dumps(config))
    return str(where)


def test_trls_eos_token_is_taken_where_the_chat_template_ends_turns_with_it(tmp_path, monkeypatch):
    """TRL's sft.py example gives eos_token: '<|im_end|>' for Qwen2-0.5B (whose eos is <|endoftext|>, its ChatML
    template ending each turn with <|im_end|>): refused, though the template ends turns with it already. Taken there,
    noted; refused where the template never writes it, and where its files cannot be read here, saying why."""
    qwen = _tokenizer_dir(tmp_path / "qwen2", CHATML, "<|endoftext|>")
    trl = {"model_name_or_path": qwen, "dataset_name": "trl-lib/Capybara", "eos_token": "<|im_end|>"}
    notes: list[str] = []
    build(trl, notes=notes)
    assert (
        f"'eos_token' (run file): '<|im_end|>' taken: {qwen}'s chat template ends turns with it already, so a "
        "conversation trains as in TRL; plain-text and prompt-completion rows end with the tokenizer's eos "
        "('<|endoftext|>'), not with it"
    ) in notes
    saved = _tokenizer_dir(tmp_path / "saved", CHATML, "<|endoftext|>", in_jinja=True)
    assert build({**trl, "model_name_or_path": saved}).model_name_or_path == saved
    assert build({**trl, "eos_token": "<|endoftext|>"}).model_name_or_path == qwen  # its own eos
    llama = _tokenizer_dir(tmp_path / "llama3", LLAMA3, "<|end_of_text|>")
    with pytest.raises(FtctlError, match=f"'<|im_end|>': {llama}'s chat template never writes it, .* give "
                       "chat_template_path: a template whose turns end with it"):  # fmt: skip
        build({**trl, "model_name_or_path": llama})
    template = tmp_path / "chatml.jinja"
    template.write_text(CHATML)
    assert build({**trl, "model_name_or_path": llama, "chat_template_path": str(template)}).chat_template_path
    base = _tokenizer_dir(tmp_path / "base", None, "</s>")
    with pytest.raises(FtctlError, match="chat template is none .FastChat's Vicuna one ends turns with the eos."):
        build({**trl, "model_name_or_path": base})
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(FtctlError) as e:
        build({**trl, "model_name_or_path": "Qwen/Qwen2-0.5B"})
    assert "Qwen/Qwen2-0.5B's is not on this machine to read" in str(e.value)
    assert "hf download Qwen/Qwen2-0.5B --include 'tokenizer*' --include 'chat_template*')" in str(e.value)
    snapshot = tmp_path / "hub" / "models--Qwen--Qwen2-0.5B" / "snapshots" / "abc"
    _tokenizer_dir(snapshot, CHATML, "<|endoftext|>")
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc")
    assert build({**trl, "model_name_or_path": "Qwen/Qwen2-0.5B"}).model_name_or_path == "Qwen/Qwen2-0.5B"  # cached
    assert build({**trl, "eos_token": None}).model_name_or_path == qwen  # left empty, it asks for nothing


def test_a_fastchat_lora_run_file_adapts_what_fastchats_does():
    """FastChat's train_lora.py (its README's QLoRA command, q_lora: true) adapts q_proj and v_proj at rank 8 unless
    told; ftctl adapted every linear layer, silently another run. Its LoRA defaults are taken where it leaves them out."""
    notes: list[str] = []
    spec = build({"q_lora": True, "lora_dropout": 0.05, "learning_rate": 2e-5}, notes=notes)
    assert (spec.method, spec.lora_r, spec.lora_alpha, spec.lora_target_modules) == ("qlora", 8, 16, "q_proj,v_proj")
    assert any(
        n.startswith(
            "model_max_length 512, num_train_epochs 3, lora_r 8, lora_alpha 16, lora_target_modules q_proj,v_proj: FastChat's"
        )
        for n in notes
    ), notes
    assert spec.model_max_length == 512  # its TrainingArguments' (train.py's too)
    given = build({"q_lora": False, "lora_r": 64, "lora_target_modules": ["q_proj", "k_proj"]})
    assert (given.method, given.lora_r, given.lora_alpha, given.lora_target_modules) == (
        "lora", 64, 16, "q_proj,k_proj"
    )  # fmt: skip


def test_eval_strategy_steps_without_eval_steps_evaluates_every_logging_steps():
    """transformers' eval_strategy: steps without eval_steps evaluates every logging_steps (TrainingArguments'
    __post_init__); ftctl measured the held-out loss every save_steps instead (100 where the file said 10). Where a
    layer gives logging_steps, eval_steps is it; where none does, a note says when it is measured here."""
    notes: list[str] = []
    asked = {"eval_strategy": "steps", "eval_split": 0.1, "logging_steps": 10, "save_steps": 500}
    spec = build(asked, notes=notes)
    assert (spec.eval_steps, spec.eval_every, spec.save_steps) == (10, 10, 500)
    assert (
        "eval_steps 10: eval_strategy (run file) without eval_steps evaluates every logging_steps (run file), as in "
        "transformers; -o eval_steps=N for another"
    ) in notes
    assert build({**asked, "evaluation_strategy": "steps"} | {"eval_strategy": None}).eval_steps == 10  # FastChat's
    assert build(asked, None, ["eval_steps=50"]).eval_steps == 50
    assert build({**asked, "evals_per_epoch": 2}).eval_steps is None
    assert build({k: v for k, v in asked.items() if k != "eval_strategy"}).eval_steps is None  # ftctl's: save_steps
    notes.clear()
    unsaid = build({"eval_strategy": "steps", "eval_split": 0.1}, notes=notes)
    assert unsaid.eval_steps is None and unsaid.eval_every == 100
    assert (
        "eval_strategy (run file) without eval_steps: the held-out loss is measured every 100 steps here; transformers "
        "measures it every logging_steps (its default 500, TRL's 10): -o eval_steps=N for another"
    ) in notes


def test_counts_of_one_are_said_in_the_singular():
    """The plan said 'cosine after 1 warmup steps' and 'every 1 steps' (helper 187, a newcomer's walk-through)."""
    from ftctl.plan import _schedule

    spec = build({"gpus": "cpu"}, overrides=["warmup_steps=1", "eval_split=2", "eval_steps=1"])
    assert _schedule(spec).endswith("after 1 warmup step") and spec.eval_when == "every step"
    spec = build({"gpus": "cpu"}, overrides=["warmup_steps=2", "eval_split=2", "eval_steps=2"])
    assert _schedule(spec).endswith("after 2 warmup steps") and spec.eval_when == "every 2 steps"
