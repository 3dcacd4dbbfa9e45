"""ftctl.storage against a real S3 protocol server on loopback (moto_server) and file://."""

from __future__ import annotations

import importlib.util
import os

import pytest

from ftctl import storage
from ftctl.errors import FtctlError
from tests.s3_fixtures import FAKE_SECRET, free_port


@pytest.fixture(params=["s3", "file"])
def root(request, tmp_path):
    """A run root in the store under test: s3://<bucket>/run or file:///tmp/.../run."""
    if request.param == "s3":
        return request.getfixturevalue("s3_bucket") + "/run"
    return f"file://{tmp_path}/store/run"


def test_is_remote_and_paths(tmp_path):
    assert storage.is_remote("s3://b/k") and storage.is_remote("gs://b/k")
    assert storage.is_remote("az://c/k")
    assert not storage.is_remote("/x/y") and not storage.is_remote("file:///x/y")
    fs, path = storage.filesystem(f"file://{tmp_path}/a")
    assert path == f"{tmp_path}/a" and "file" in fs.protocol
    fs, path = storage.filesystem("rel/dir")
    assert path == os.path.abspath("rel/dir")
    assert storage.join("s3://b/run/", "checkpoint-1", "x") == "s3://b/run/checkpoint-1/x"


def test_unknown_scheme_says_what_works():
    with pytest.raises(FtctlError, match="s3://"):
        storage.filesystem("ftp://host/x")


@pytest.mark.skipif(importlib.util.find_spec("gcsfs") is not None, reason="gcsfs is installed")
def test_missing_store_package_says_how_to_install():
    with pytest.raises(FtctlError, match="pip install gcsfs"):
        storage.filesystem("gs://bucket/run")


def test_put_get_ls_read(root, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("alpha")
    (src / "sub" / "b.bin").write_bytes(b"\x00\x01" * 1000)
    storage.put_dir(str(src), root)

    assert [(e["name"], e["type"]) for e in storage.ls(root)] == [
        ("a.txt", "file"),
        ("sub", "directory"),
    ]
    assert storage.file_sizes(root) == {"a.txt": 5, "sub/b.bin": 2000}
    assert storage.read_text(storage.join(root, "a.txt")) == "alpha"
    with storage.open_file(storage.join(root, "sub", "b.bin")) as f:
        assert f.read(4) == b"\x00\x01\x00\x01"
    assert storage.exists(storage.join(root, "a.txt"))

    dest = tmp_path / "dest"
    storage.get_dir(root, str(dest))
    assert (dest / "sub" / "b.bin").read_bytes() == b"\x00\x01" * 1000

    storage.rm(root, recursive=True)
    assert storage.ls(root) == [] and storage.file_sizes(root) == {}


def test_missing_file_is_a_user_error(root):
    with pytest.raises(FtctlError, match="does not exist"):
        storage.read_text(storage.join(root, "nope.json"))


def test_endpoint_argument_beats_environment(s3_bucket, moto_s3, monkeypatch, tmp_path):
    # The environment points at a port nobody listens on; the argument at the real server.
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_port()}")
    (tmp_path / "f").write_text("x")
    storage.put_file(str(tmp_path / "f"), s3_bucket + "/f", endpoint_url=moto_s3.endpoint)
    assert storage.read_text(s3_bucket + "/f", endpoint_url=moto_s3.endpoint) == "x"
    # AWS_ENDPOINT_URL_S3 wins over AWS_ENDPOINT_URL (boto3's own order)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_s3.endpoint)
    assert storage.s3_endpoint() == moto_s3.endpoint
    assert storage.read_text(s3_bucket + "/f") == "x"


def test_redact_masks_credentials(s3_env):
    assert FAKE_SECRET not in storage.redact(f"error: bad signature {FAKE_SECRET}")
    assert "<AWS_SECRET_ACCESS_KEY>" in storage.redact(f"x{FAKE_SECRET}x")
