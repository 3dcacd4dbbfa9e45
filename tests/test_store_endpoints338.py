"""storage.use_recorded_endpoint (trained.take_endpoint's, for `ftctl eval A B` of runs whose launches recorded other
S3 endpoints): buckets of one name in two stores (a MinIO's and an R2's `models`) are each read at their own run's
endpoint. Keyed by the bucket alone, B's record replaced A's, and A's checkpoint was read at B's store."""

from __future__ import annotations

from tests.s3_fixtures import fake_aws


def test_runs_in_buckets_of_one_name_at_two_endpoints_are_each_read_at_their_own(monkeypatch, tmp_path):
    from ftctl import storage

    fake_aws(monkeypatch, tmp_path)
    monkeypatch.setattr(storage, "_RECORDED_ENDPOINTS", {})
    a, b = "http://127.0.0.1:1", "http://127.0.0.1:2"
    storage.use_recorded_endpoint("s3://models/runs/a/checkpoint-5", a)  # eval A B: both taken before any read
    storage.use_recorded_endpoint("s3://models/runs/b", b)

    def endpoint(uri: str) -> str | None:
        return storage.filesystem(uri)[0].client_kwargs.get("endpoint_url")

    assert endpoint("s3://models/runs/a/checkpoint-5/adapter_model.safetensors") == a
    assert endpoint("s3://models/runs/a/spec.json") == a  # the run above the checkpoint
    assert endpoint("s3://models/runs/b/checkpoint-3") == b
    assert storage.recorded_endpoint("s3://other/runs/a") is None
    assert storage.storage_error("unreachable", "s3://models/runs/a", None).what == (
        f"Cannot reach the S3 endpoint {a} for s3://models/runs/a"
    )
