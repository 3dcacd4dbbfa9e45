"""The lines that say a checkpoint or the final model was not uploaded within upload_wait_s name why: the store's
last error as ftctl.storage classifies it (full, unreachable, credentials...: what to do, never a credential), or
that no error came and the upload was still under way. A real moto_server behind tests.test_flaky_store's
fault-injecting proxy."""

from __future__ import annotations

import time

import pytest

from ftctl import checkpoints as C
from ftctl.trainer.sync_callback import CheckpointSyncCallback
from tests.s3_fixtures import assert_no_secrets, make_checkpoint
from tests.test_flaky_store import FlakyProxy


@pytest.fixture
def proxied(moto_s3, s3_env, monkeypatch):
    """``(proxy, "s3://bucket/run")``: a fresh bucket reached through a FlakyProxy; botocore's retries quick."""
    from botocore.retries import standard

    monkeypatch.setattr(standard.ExponentialBackoff, "delay_amount", lambda self, context: 0.01)
    proxy = FlakyProxy((moto_s3.host, moto_s3.port))
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    yield proxy, f"s3://{moto_s3.make_bucket()}/run"
    proxy.close()


def _queued(tmp_path, out: str) -> tuple[C.Uploader, CheckpointSyncCallback]:
    ckpt = make_checkpoint(tmp_path, 2)
    C.write_manifest(str(ckpt), 2, 1, "h")
    sync = CheckpointSyncCallback(out)
    sync.uploader = C.Uploader(out, backoff=(0.05, 0.1))
    sync.uploader.submit(str(ckpt))
    return sync.uploader, sync


def _refused(proxy, action: str, up: C.Uploader) -> None:
    deadline = time.monotonic() + 20
    while up.last_error() is None and time.monotonic() < deadline:  # tried, refused
        time.sleep(0.02)
    assert up.wait(0.05) is False and proxy.count(r"^PUT ", action) >= 1


@pytest.mark.parametrize(
    "action, cause",
    [
        ("507", "the store's last error: the S3 endpoint {endpoint} is full for {out} (507 XMinioStorageFull): it "
                "refuses new objects for lack of space or the bucket's quota: free space in bucket"),
        ("reset", "the store's last error: Cannot reach the S3 endpoint {endpoint} for {out}: check"),
    ],
)  # fmt: skip
def test_an_upload_not_in_within_upload_wait_s_names_the_stores_last_error(proxied, tmp_path, action, cause):
    proxy, out = proxied
    proxy.add(r"^PUT ", action, times=None)
    up, sync = _queued(tmp_path, out)
    try:
        _refused(proxy, action, up)
        said = sync.why_unsent()
        assert said.startswith(cause.format(endpoint=proxy.endpoint, out=out)), said
        assert "\n" not in said and len(said) < 600
        assert_no_secrets(said)
        proxy.clear()  # the store takes it again: no error is left to name
        assert up.wait(10) is True and up.last_error() is None
    finally:
        up.close(0)


def test_an_upload_still_under_way_says_no_error_came(proxied, tmp_path):
    proxy, out = proxied
    proxy.add(r"^PUT ", "delay:1.5", times=1)
    up, sync = _queued(tmp_path, out)
    try:
        assert up.wait(0.2) is False
        assert sync.why_unsent() == (
            "the store reported no error: the upload was still under way (a slow link or a large model: raise "
            "-o upload_wait_s)"
        )
        assert up.wait(15) is True
    finally:
        up.close(0)
    assert CheckpointSyncCallback(None).why_unsent() == "no store to upload to"
