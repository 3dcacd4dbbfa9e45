"""What `ftctl` says where an S3 store cannot be used, in whichever order its causes come in one process: an endpoint
whose port refuses connections ("Cannot reach the S3 endpoint URL ...: check -o s3_endpoint_url=URL ... or
AWS_ENDPOINT_URL"), no credentials ("No credentials ... set AWS_ACCESS_KEY_ID ..."), and both at once (the
credentials, and the endpoint too: botocore signs before it connects, so the closed port was never said). fsspec
keeps one S3 filesystem per set of arguments, its client with the credentials found when it was made: on CI's run
test_status149 had asked http://127.0.0.1:9 with no credentials in the environment, and test_storerun329's chat
there, with its dummy keys set, was told to set AWS_ACCESS_KEY_ID. A real S3 server on loopback (moto's)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from tests.s3_fixtures import FAKE_KEY_ID, FAKE_SECRET, assert_no_secrets, fake_aws, free_port


def _ls(uri: str, endpoint: str, credentials: bool, monkeypatch) -> str:
    """``ftctl sync ls URI`` with AWS_ENDPOINT_URL=endpoint, the dummy keys set or not: its stderr (exit 2)."""
    from ftctl.cli import main

    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    if credentials:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", FAKE_KEY_ID)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET)
    else:
        monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
        monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    got = CliRunner().invoke(main, ["sync", "ls", uri])
    assert got.exit_code == 2 and got.stderr.count("error: ") == 1 and "Traceback" not in got.stderr, got.output
    assert_no_secrets(got.output)
    return got.stderr.strip()


@pytest.mark.parametrize("order", ["credentials first", "none first"])
def test_a_closed_port_and_missing_credentials_are_each_said_in_either_order(order, moto_s3, monkeypatch, tmp_path):
    fake_aws(monkeypatch, tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.aws
    uri = f"s3://{moto_s3.make_bucket()}/runs/r1"
    closed = f"http://127.0.0.1:{free_port()}"
    fix = "check -o s3_endpoint_url=URL (ftctl sync: --endpoint-url URL) or AWS_ENDPOINT_URL (is the store running there?)"
    no_credentials = (
        f"error: No credentials for {uri}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
    )
    said = {
        (True, closed): f"error: Cannot reach the S3 endpoint {closed} for {uri}: {fix} and the network.",
        (False, moto_s3.endpoint): no_credentials + ".",
        (False, closed): f"{no_credentials}; and cannot reach the S3 endpoint {closed} for {uri} either: {fix} and the "
        "network.",
    }
    steps = [(True, closed), (False, moto_s3.endpoint), (False, closed), (True, closed)]
    for credentials, endpoint in steps if order == "credentials first" else steps[::-1]:
        assert _ls(uri, endpoint, credentials, monkeypatch) == said[credentials, endpoint], (credentials, endpoint)


def test_an_endpoint_recorded_for_a_bucket_is_its_own_where_the_environment_names_none(monkeypatch, tmp_path):
    """storage.use_recorded_endpoint (trained.take_endpoint's, for `ftctl eval A B` of runs in two stores): the run's
    bucket is read at its launch's endpoint, another bucket is not, and an endpoint the environment names wins."""
    from ftctl import storage

    fake_aws(monkeypatch, tmp_path)
    monkeypatch.setattr(storage, "_RECORDED_ENDPOINTS", {})
    storage.use_recorded_endpoint("s3://bkt-a/runs/a", "http://127.0.0.1:1")
    storage.use_recorded_endpoint("s3://bkt-b/runs/b", "http://127.0.0.1:2")
    assert storage.filesystem("s3://bkt-a/runs/spec.json")[0].client_kwargs["endpoint_url"] == "http://127.0.0.1:1"
    assert storage.filesystem("s3://bkt-b/runs/b/checkpoint-1")[0].client_kwargs["endpoint_url"] == "http://127.0.0.1:2"
    assert "endpoint_url" not in storage.filesystem("s3://bkt-c/r")[0].client_kwargs
    said = storage.storage_error("unreachable", "s3://bkt-b/runs/b", None)
    assert said.what == "Cannot reach the S3 endpoint http://127.0.0.1:2 for s3://bkt-b/runs/b"
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:3")
    assert storage.s3_endpoint(None, "s3://bkt-a/runs/a") == "http://127.0.0.1:3"
    assert storage.s3_endpoint("http://127.0.0.1:4", "s3://bkt-a/runs/a") == "http://127.0.0.1:4"
