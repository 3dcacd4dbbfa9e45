"""explore52 (helper 254, /work/notes/explore52-secrets.md): secrets that still reached a rendered file, a failure
record or an error line, and copyable commands whose user paths were unquoted.

The tests marked ``needs_patch`` check the changes of /work/notes/task-254-extra.patch (cli.py, spec.py and the
hint lines of the trainer, checkpoints, backends and progress): they fail until it is applied (xfail here; the patch
removes the mark).
"""

from __future__ import annotations

import ast
import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from ftctl import envvars, failures, secret_checks
from ftctl.errors import FtctlError
from tests.render_fixtures import make_spec

HF = "hf_ProbeSecretHFvalue0123456789abcdXY"
AWS = "Pr0beSecretAccessKey/with+slash=xyz"
HEX = "0123456789abcdef0123456789abcdef01234567"  # a classic GitHub token's shape, as a URL's user
SIG = "SigProbeVALUE123"
SECRETS = {"HF_TOKEN": HF, "AWS_SECRET_ACCESS_KEY": AWS, "AWS_ACCESS_KEY_ID": "AKIAPROBE7SECRET0ID1"}


def needs_patch(test):  # the patch is applied: every test runs
    return test


@pytest.fixture
def secrets_set(monkeypatch):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)


def _refused(overrides=(), **flags) -> str:
    """The one line spec.build refuses ``flags`` with (as launch builds a run)."""
    base = dict(backend="slurm", gpus="1xA100", model_name_or_path="org/m", model_params="1b", output_dir="/o")
    with pytest.raises(FtctlError) as e:
        make_spec(list(overrides), **{**base, **flags})
    return str(e.value)


# ------------------------------------------------------------------------------ S1, S2: setup lines and env values
WRITTEN = [
    (f"git clone https://{HEX}@github.com/x/y", HEX),
    (f"git clone https://{SIG}abc@github.com/x/y", SIG),
    ("curl -u admin:SUPERpass9 https://x/y -o z", "SUPERpass9"),
    (f"curl -H 'Authorization: Bearer {SIG}abc' https://x", SIG),
    (f"curl -H 'PRIVATE-TOKEN: {SIG}abc' https://gitlab/x", SIG),
    (f"aws configure set aws_secret_access_key {SIG}abc", SIG),
    ("echo 'machine h login u password SUPERpass9' > ~/.netrc", "SUPERpass9"),
    ("mytool --password SUPERpass9 sync", "SUPERpass9"),
]


@pytest.mark.parametrize("line,value", WRITTEN, ids=range(len(WRITTEN)))
def test_a_credential_in_a_setup_line_is_refused_unrepeated(line, value):
    said = _refused(setup=[line])
    assert "not repeated here" in said and value not in said, said


ENV_WRITTEN = [
    f"REPO=https://{SIG}abc@github.com/x/y",
    "OPTS=--password SUPERpass9",
    f"EXTRA=--token={SIG}abc",
    f"HDR=Authorization: Bearer {SIG}abc",
    "DSN=host=db user=u password=SUPERpass9",
]


@pytest.mark.parametrize("kv", ENV_WRITTEN, ids=range(len(ENV_WRITTEN)))
def test_a_credential_in_an_env_value_is_refused_unrepeated(kv):
    said = _refused([f"env={kv}"])
    value = kv.split("=", 1)[1]
    assert "not repeated here" in said and value not in said and "SUPERpass9" not in said and SIG not in said, said


ALLOWED = [
    "git clone https://$GITHUB_TOKEN@github.com/x/y",
    "git clone https://git@github.com/x/y",
    'curl -u "$USER:$PASS" https://x',
    "docker run -u 1000:1000 img true",
    "docker run -u root:wheel img true",
    "python -u train.py",
    'curl -H "Authorization: Bearer $TOKEN" https://x',
    "mytool --password-file /run/secrets/p",
    "mytool --token /run/secrets/t",
    "huggingface-cli login --token ~/.hf/token",
    "huggingface-cli login --token $HF_TOKEN",
    "module load cuda/12.4",
    "pip install --index-url https://pypi.org/simple x",
]


@pytest.mark.parametrize("line", ALLOWED, ids=range(len(ALLOWED)))
def test_references_and_lookalikes_stay_allowed(line):
    assert secret_checks.credential_in(line) is None
    assert secret_checks.setup_secret_problem(line) is None
    make_spec(["env=X=" + line], backend="slurm", gpus="1xA100", model_params="1b", output_dir="/o", setup=[line])


# ------------------------------------------------------------------------------ S3: FTCTL_ settings' refusals
@pytest.mark.parametrize("name", [envvars.THREADS_ENV, envvars.STOP_POLL_ENV])
def test_a_settings_refusal_repeats_no_secret(name, secrets_set):
    for value in (HF, AWS, "SUPERpass9"):
        said = _refused([f"env={name}={value}"])
        assert value not in said and name in said, said
    assert f"{name}=-5" in envvars.setting_problem(name, "-5")  # a number is what is mistaken there: said


# ------------------------------------------------------------------------------ S6: failure records
def test_a_failure_record_masks_credentials(tmp_path, monkeypatch, secrets_set):
    error_file = tmp_path / "attempt" / "0" / "error.json"
    error_file.parent.mkdir(parents=True)
    monkeypatch.setenv(envvars.ELASTIC_ERROR_ENV, str(error_file))
    message = (
        f"HTTPError: 401 for url https://h/x?token={HF} (key {AWS}); s3://KEYID:{SIG}word@bucket/x; "
        f"https://h/o?X-Amz-Signature={SIG}; /scratch/hf_cache kept"
    )
    path = failures.record("error", message, str(tmp_path / "failures"))
    kept = path.read_text() + error_file.read_text()
    assert not [v for v in (HF, AWS, SIG) if v in kept], kept
    said = json.loads(path.read_text())["message"]
    assert "<AWS_SECRET_ACCESS_KEY>" in said and "/scratch/hf_cache kept" in said, said


def test_redacted_keeps_what_is_no_credential(secrets_set):
    text = "s3://b/x, http://minio:9000/b@x, /scratch/hf_cache, HF_TOKEN, gs://b/o?generation=12345678, 1234"
    assert secret_checks.redacted(text) == text
    assert secret_checks.redacted(f"see https://{HEX}@github.com/x") == "see https://<credentials>@github.com/x"


# ------------------------------------------------------------------------------ S5: arguments of other commands
ARGUMENTS = [
    "s3://AKIAPROBE7SECRET0ID1:SUPERpass9@b/x",
    f"hf://{HF}@org/m",
    f"s3://b/x.json?X-Amz-Signature={SIG}",
    f"https://acct.blob.core.windows.net/c/x.json?sv=2020&sig={SIG}",
    HF,
    AWS,
]


@pytest.mark.parametrize("value", ARGUMENTS, ids=range(len(ARGUMENTS)))
def test_argument_problem_says_it_without_the_value(value, secrets_set):
    said = secret_checks.argument_problem("URI", value)
    assert said and not [v for v in (HF, AWS, SIG, "SUPERpass9") if v in said], said


@pytest.mark.parametrize("value", ["4242", "ftctl-lora-x", "/scratch/hf_cache/run", "s3://b/run", "hf://org/m"])
def test_argument_problem_passes_plain_arguments(value, secrets_set):
    assert secret_checks.argument_problem("URI", value) is None


COMMANDS = [
    ["sync", "push", "{run}", "s3://AKIAPROBE7SECRET0ID1:SUPERpass9@b/x"],
    ["sync", "ls", "s3://b/x", "--endpoint-url", "https://u:SUPERpass9@127.0.0.1:9"],
    ["sync", "ls", "s3://b/x", "--endpoint-url", f"http://127.0.0.1:9/?X-Amz-Signature={SIG}"],
    ["sync", "pull", f"hf://{HF}@org/m", "{run}"],
    ["chat", f"hf://{HF}@org/m"],
    ["eval", "s3://AKIAPROBE7SECRET0ID1:SUPERpass9@b/run", "--data", "x.json"],
    ["eval", "{run}", "--data", f"s3://b/x.json?X-Amz-Signature={SIG}"],
    ["merge", f"hf://org/m?token={SIG}"],
    ["data", "check", f"https://h/x.json?sig={SIG}"],
    ["status", HF],
    ["logs", HF],
    ["cancel", HF],
    ["build", "--dry-run", "--gpus", "A100", "--push", f"ghcr.io/{HF}"],
]


@needs_patch
@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(c[:2]) + str(i) for i, c in enumerate(COMMANDS)])
def test_other_commands_refuse_a_credential_in_one_line(argv, tmp_path, monkeypatch, secrets_set):
    from ftctl.cli import main

    monkeypatch.setenv("FTCTL_HOME", str(tmp_path / "home"))
    for name, value in {"AWS_MAX_ATTEMPTS": "1", "HF_HUB_OFFLINE": "1"}.items():  # unpatched: no retries, no Hub
        monkeypatch.setenv(name, value)
    (tmp_path / "run").mkdir()
    r = CliRunner().invoke(main, [a.replace("{run}", str(tmp_path / "run")) for a in argv])
    assert r.exit_code == 2 and isinstance(r.exception, SystemExit), (r.exception, r.output)
    assert "Traceback" not in r.output and "not repeated" in r.output, r.output
    assert not [v for v in (HF, AWS, SIG, "SUPERpass9") if v in r.output], r.output


@needs_patch
def test_the_cli_masks_a_credential_in_any_error_line(secrets_set):
    import click

    from ftctl import cli

    @click.group(cls=cli._Group)
    def group():
        pass

    @group.command()
    def fails():
        raise FtctlError(f"the store said: bad key {AWS} for https://h/x?X-Amz-Signature={SIG}")

    r = CliRunner().invoke(group, ["fails"])
    assert r.exit_code == 2 and AWS not in r.output and SIG not in r.output, r.output
    assert "<AWS_SECRET_ACCESS_KEY>" in r.output and "<signature>" in r.output, r.output


# ------------------------------------------------------------------------------ S4: a run file's YAML error
@needs_patch
@pytest.mark.parametrize(
    "text", [f"env:\n  MY_TOKEN: {HF}: x\n", f"max_steps: 3\nhub_token {HF}\nlr: 1\n", f"a: [1\nb: {HF}: 2\n"]
)
def test_a_yaml_error_does_not_repeat_a_credential_line(text, tmp_path):
    from ftctl import spec

    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(FtctlError) as e:
        spec.load_yaml(str(path))
    assert HF not in str(e.value) and "not repeated here" in str(e.value), str(e.value)


# ------------------------------------------------------------------------------ Q1: copyable commands
HOSTILE = "/tmp/a b/$(touch PWNED)`id`;x'q.json"


@needs_patch
def test_write_valid_command_quotes_the_file():
    from ftctl.trainer.data import write_valid_command

    said = write_valid_command(HOSTILE, 64, "org/m")
    assert f"`ftctl data check {shlex.quote(HOSTILE)} --model org/m --max-length 64 --write-valid OUT`" in said, said


# a placeholder naming a user's path or URI inside a backticked command, as a message prints it for pasting
_USER_VALUE = re.compile(r"\b(?:output|uri|local_dir|remote_uri|model|data|root)\b|\.path\b")


@needs_patch
def test_copyable_commands_quote_the_paths_they_hold():
    root = Path(__file__).resolve().parent.parent / "ftctl"
    unquoted = []
    for path in root.rglob("*.py"):
        source = path.read_text()
        if "`ftctl " not in source:
            continue
        for node in ast.walk(ast.parse(source)):
            if not isinstance(node, ast.JoinedStr):
                continue
            text = ""
            for part in node.values:
                if isinstance(part, ast.Constant):
                    text += str(part.value)
                else:
                    expr = ast.unparse(part.value)
                    text += "{" + ("QUOTED" if expr.startswith(("shlex.", "_model_flag(")) else expr) + "}"
            for command in re.findall(r"`ftctl [^`]*`", text):
                unquoted += [
                    f"{path.relative_to(root)}:{node.lineno}: {command}"
                    for expr in re.findall(r"\{([^}]*)\}", command)
                    if _USER_VALUE.search(expr)
                ]
    assert not unquoted, "\n".join(unquoted)


def test_hint_paths_paste_back_whole():
    """What shlex.quote gives a hostile path is one word to bash (the form the patch prints)."""
    r = subprocess.run(["bash", "-c", f"printf '%s\\0' {shlex.quote(HOSTILE)}"], capture_output=True, text=True)
    assert r.stdout.split("\0")[:-1] == [HOSTILE]


@needs_patch
def test_the_trainers_error_line_masks_credentials(monkeypatch, capsys, secrets_set):
    """Where no launcher reports the records (a Slurm job, a container), the trainer prints its error into the log."""
    from ftctl.trainer.__main__ import Failure

    for name in (envvars.FAILURE_DIR_ENV, envvars.STATUS_ENV, envvars.ELASTIC_ERROR_ENV, "FTCTL_DEBUG"):
        monkeypatch.delenv(name, raising=False)
    message = f"HTTPError: 401 for url https://h/x?X-Amz-Signature={SIG} with {AWS}"
    assert Failure(0).report("error", message, 1, RuntimeError(message)) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: HTTPError") and SIG not in err and AWS not in err, err


@needs_patch
def test_an_error_line_shows_control_characters_instead_of_sending_them():
    """A value's escape sequence (a run file's path holding ESC]0;TITLE BEL: the terminal's title, or worse) is shown."""
    import click

    from ftctl import cli

    @click.group(cls=cli._Group)
    def group():
        pass

    @group.command()
    def fails():
        raise FtctlError("No data at /tmp/x\x1b]0;PWNED\x07\x9b2J.json: give a file.\nsecond line\tkept")

    r = CliRunner().invoke(group, ["fails"])
    assert r.exit_code == 2 and "\x1b" not in r.output and "\x07" not in r.output and "\x9b" not in r.output, r.output
    assert "/tmp/x\\x1b]0;PWNED\\x07\\x9b2J.json" in r.output and "\nsecond line\tkept" in r.output, r.output
