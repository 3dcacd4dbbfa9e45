"""Helper 272 (review 58, finding 2): `ftctl build --push TOKEN@HOST/NS` without a scheme took a Docker Hub PAT, a
registry's 32 hex digits or a base64 robot token as a registry *user*, and repeated it twice in the line (`--push
'TOKEN@...'` and `docker login -u TOKEN`). A user part with a token's shape is a credential: refused, not repeated."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from ftctl.cli import main
from ftctl.secret_checks import credential_in, holds_credential

TOKENS = [
    "dckr_pat_AbCdEfGhIjKlMnOpQrStUvWxYz1",  # Docker Hub's personal access token
    "7f3c9a1be2d84c6f9a0b1c2d3e4f5a6b",  # a registry token of 32 hex digits
    "Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MGFiY2RlZg",  # a base64 robot token
]


@pytest.mark.parametrize("token", TOKENS)
@pytest.mark.parametrize("host", ["docker.io/me", "myreg.azurecr.io/team", "quay.io/org"])
def test_a_token_before_the_host_without_a_scheme_is_refused_and_never_repeated(token, host):
    said = CliRunner().invoke(main, ["build", "--gpus", "H100", "--push", f"{token}@{host}", "--dry-run"])
    assert said.exit_code == 2 and "Traceback" not in said.output and said.output.count("\n") == 1, said.output
    assert token not in said.output, said.output
    assert said.output.startswith("error: --push holds a token as its user before the registry's host"), said.output
    assert "(not repeated here)" in said.output and f"then give --push {host}." in said.output, said.output


def test_a_user_name_is_still_said_as_one():
    said = CliRunner().invoke(main, ["build", "--gpus", "H100", "--push", "first.last@ghcr.io/org", "--dry-run"])
    assert said.exit_code == 2 and "`docker login -u first.last ghcr.io`" in said.output, said.output


def test_a_docker_hub_token_is_a_tokens_shape_anywhere():
    """secret_checks' token shapes (the one owner) hold Docker Hub's: in a value and in a path or URI."""
    pat = TOKENS[0]
    assert holds_credential(f"DOCKER_LOGIN={pat}") and credential_in(f"x {pat} y") == "a token"
    assert credential_in(f"s3://bucket/{pat}/x", path=True) == "a token"
    assert credential_in("dckr_pat_notes/run", path=True) is None
