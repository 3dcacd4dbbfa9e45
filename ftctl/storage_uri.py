"""URI facts that need no storage library (kept apart from ftctl/storage.py, which imports fsspec)."""

REMOTE_SCHEMES = ("s3://", "gs://", "gcs://", "az://", "abfs://", "r2://")


def is_remote(uri: str) -> bool:
    return str(uri).startswith(REMOTE_SCHEMES)
