"""RunSpec: YAML < flags < -o precedence, unknown keys, type errors, aliases, validation."""

from __future__ import annotations

import pytest

from ftctl import spec as spec_mod
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
    assert s.secrets == ["HF_TOKEN", "WANDB_API_KEY"]
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


def test_list_flags_add_to_the_list():
    s = build({"secrets": ["HF_TOKEN"]}, {"secrets": ["MY_KEY"]}, ["secret=OTHER_KEY"])
    assert s.secrets == ["HF_TOKEN", "MY_KEY", "OTHER_KEY"]
    # one item per -o for other lists: a comma belongs to the value (--nodelist=n1,n2)
    s = build(None, {"sbatch_args": ["--mem=64G"]}, ["sbatch_arg=--nodelist=n1,n2", "sbatch_arg=--mem=64G"])
    assert s.sbatch_args == ["--mem=64G", "--nodelist=n1,n2"]
    # a run file replaces a list's default
    assert build({"secrets": []}).secrets == []


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
    with pytest.raises(FtctlError, match="method=None.*may not be empty"):
        build(_yaml(tmp_path, "method:\n"))


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
        (["nodes=0"], "nodes must be at least 1"),
        (["attn_implementation=flash"], "attn_implementation='flash'"),
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
    c = build(None, None, ["learning_rate=1e-5"])
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
    """A FastChat train command turned into a run file: its --fsdp, --tf32 and friends are explained, not 'unknown'."""
    from ftctl.spec import DECIDED

    fastchat = {"fsdp": "full_shard auto_wrap", "tf32": True, "evaluation_strategy": "no", "lazy_preprocess": True}
    with pytest.raises(FtctlError) as e:
        build({**fastchat, "model_max_length": 2048, "bf16": True})
    text = str(e.value)
    assert text.startswith("4 problems in the run description:") and "Unknown key" not in text
    assert "'fsdp' (run file) is not set by hand here: the planner chooses single, DDP, DeepSpeed ZeRO or FSDP2" in text
    assert f"'tf32' (run file) is not set by hand here: {DECIDED['tf32']}." in text
    assert not set(DECIDED) & set(FIELDS)  # never a key that exists
