"""Helper 262: `ftctl build --push me@ghcr.io/org` (a registry user, no password) was refused as holding "a user and
password" (not repeated here): no password was there, and the line read as a credential leak. docker and podman refuse
such a reference themselves ("invalid reference format": '@' starts a digest there), so it is still refused before the
build, saying what it is: an image's path takes no user; the user goes to `docker login -u USER HOST`."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from ftctl.cli import main
from ftctl.docker import image
from ftctl.docker.build import push_credentials
from ftctl.errors import FtctlError


@pytest.mark.parametrize(
    ("push", "login", "then"),
    [
        ("me@ghcr.io/my-org", "-u me ghcr.io", "ghcr.io/my-org"),
        ("https://me@registry.lab:5000/team", "-u me registry.lab:5000", "registry.lab:5000/team"),
        ("o'brien@ghcr.io/my-org", "-u 'o'\"'\"'brien' ghcr.io", "ghcr.io/my-org"),
    ],
)
def test_a_push_with_a_user_alone_is_said_as_a_user_not_a_password(push, login, then):
    said = CliRunner().invoke(main, ["build", "--gpus", "H100", "--push", push, "--dry-run"])
    assert said.exit_code == 2 and "Traceback" not in said.output and said.output.count("\n") == 1, said.output
    assert said.output.startswith(f"error: --push {push!r}: an image's path takes no user"), said.output
    assert "password" not in said.output and "not repeated" not in said.output and "credential." not in said.output
    assert f"`docker login {login}`" in said.output and f"`podman login {login}`" in said.output, said.output
    assert said.output.rstrip().endswith(f"then give --push {then}."), said.output


def test_docker_refuses_the_user_in_the_reference_and_takes_the_suggested_one():
    """image.check_reference is docker's reference grammar (distribution/reference): the image build --push would
    tag is no reference with the user, one without it."""
    with pytest.raises(FtctlError, match="no image reference docker takes"):
        image.check_reference(f"me@ghcr.io/my-org/{image.REPOSITORY}:cu124", "tag")
    assert image.check_reference(f"ghcr.io/my-org/{image.REPOSITORY}:cu124", "tag")


def test_a_password_or_a_token_as_the_user_is_still_a_credential_not_repeated():
    said = push_credentials("me:PASSw0rd9@ghcr.io/org")
    assert said.startswith("--push holds a user and password before the registry's host (not repeated here)")
    token = "ghp_" + "A1b2" * 9
    said = push_credentials(f"{token}@ghcr.io/org")
    assert said.startswith("--push holds a token as its user before the registry's host (not repeated here)")
    assert token not in said and "password" not in said
    assert push_credentials("ghcr.io/org") is None and push_credentials("ghcr.io/org@foo") is None
