"""review-57's findings in the secret checks: arguments launch accepts are not refused by the other commands."""

from __future__ import annotations

import pytest

from ftctl.secret_checks import argument_problem


@pytest.mark.parametrize(
    "value",
    [
        "data/sk-wikipedia-conversations-2024.jsonl",
        "runs/sk-learning-rate-sweep-lora-01",
        "myorg/sk-learning-rate-sweep-lora-01",
        "runs/hf_Llama3InstructLoraFinetune8B",
        "sk-learning-rate-sweep-lora-01",
    ],
)
def test_a_path_run_name_or_model_id_shaped_like_a_token_is_not_refused(value):
    """B1: status, chat, merge, eval and data check refused a relative path, a run name or a hub id that launch had
    accepted ("RUN holds a token"): the loose token shape was asked of every value not starting with / ~ ./ ../."""
    assert argument_problem("RUN", value, {}) is None


def test_a_real_token_in_an_argument_is_still_refused():
    token = "hf_" + "aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3"
    said = argument_problem("RUN", token, {})
    assert said and token not in said


def test_a_working_directory_set_in_a_setup_line_is_not_a_password():
    """N1: `export PWD=/scratch/lab/run` (PWD, the case-insensitive pwd= of a DSN) was refused as a password option;
    a path there is no password, as for --password /run/secrets/p. A DSN's password= is still refused."""
    from ftctl.secret_checks import CREDENTIAL_VALUE, OPTION

    option = CREDENTIAL_VALUE[OPTION]
    for line in ("export PWD=/scratch/lab/run", "cd ~/x && PWD=~/x make", "PWD=./here make"):
        assert not option.search(line), line
    assert option.search("psql 'host=db password=hunter2secret'")


def test_an_azure_account_key_quoted_alone_is_masked_in_error_lines():
    """R5: secret_checks.redacted (every error line the CLI prints, failure records) masked a connection string's
    AccountKey only where the whole string was quoted; storage.redact, the stores' own, masked the key alone. One now
    starts with the other."""
    from ftctl.secret_checks import redacted

    key = "Zm9vYmFyYmF6cXV4" * 4 + "=="
    environ = {"AZURE_STORAGE_CONNECTION_STRING": f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={key}"}
    said = redacted(f"auth failed for key {key}", environ)
    assert key not in said and "<AccountKey of AZURE_STORAGE_CONNECTION_STRING>" in said


def test_a_push_password_holding_at_or_slash_is_not_repeated():
    """review-57b B2: `--push user:p@ss@ghcr.io/org` said `docker login ss` (the password's tail) and
    `user:pa/ss@ghcr.io/org` was repeated whole: the user and password run to the last '@'."""
    from ftctl.docker.build import push_credentials

    for push in ("user:p@ssw0rdXY@ghcr.io/org", "user:pa/ssw0rdXY@ghcr.io/org", "https://u:a@b/cdXY@ghcr.io/org"):
        said = push_credentials(push)
        assert said and "ssw0rdXY" not in said and "cdXY" not in said and "docker login ghcr.io" in said, said
    assert push_credentials("ghcr.io/org") is None


def test_a_key_given_as_null_is_not_given():
    """RunSpec.gave: a run file's `disk_size:` left empty, or spec.json's nulls read back (plan.load_run), is unset,
    not given at its default: SkyPilot's disk was not sized for such a run (sky/render's `not spec.gave`)."""
    from ftctl.spec import build

    spec = build({"data_path": "a.jsonl", "disk_size": None, "max_requeues": None, "idle_minutes": 30})
    assert not spec.gave("disk_size") and not spec.gave("max_requeues") and spec.gave("idle_minutes")
