"""Files on local disk and in object storage, through fsspec.

One function, :func:`filesystem`, turns a path or URI into an ``(fs, path)`` pair; everything else
in ftctl that reads or writes checkpoints or datasets goes through it.

| URI                  | filesystem                              |
|----------------------|-----------------------------------------|
| ``/a/b``, ``a/b``    | local                                   |
| ``file:///a/b``      | local                                   |
| ``s3://bucket/key``  | s3fs (AWS, MinIO, Cloudflare R2, ...)   |
| ``gs://bucket/key``  | gcsfs                                   |
| ``az://container/k`` | adlfs (also ``abfs://``)                |

Credentials come only from each store's standard chain (for S3: ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, ``AWS_PROFILE`` and ``~/.aws/*``, instance
roles). ftctl never passes, logs or writes them (store errors it logs go through
:func:`redact`). The S3 endpoint for S3-compatible stores is the
``endpoint_url`` argument, else ``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL`` (the variables
boto3 itself reads).

fsspec and its store packages are imported inside the functions, so importing this module is free.
"""

from __future__ import annotations

import os
import posixpath
from typing import IO, Any

from ftctl.errors import FtctlError

#: URI scheme -> (fsspec protocol, the pip package that provides it)
REMOTE_SCHEMES = {
    "s3": ("s3", "s3fs"),
    "s3a": ("s3", "s3fs"),
    "gs": ("gcs", "gcsfs"),
    "gcs": ("gcs", "gcsfs"),
    "az": ("abfs", "adlfs"),
    "abfs": ("abfs", "adlfs"),
    "abfss": ("abfs", "adlfs"),
}

#: seconds an S3 request may wait to connect / for a response before it counts as failed (the
#: checkpoint uploader retries on its own, so a store that is down must fail fast, not hang)
S3_CONNECT_TIMEOUT = 10
S3_READ_TIMEOUT = 120


def scheme(uri: str) -> str:
    """The URI scheme in lower case ('' for a plain path)."""
    head, sep, _ = str(uri).partition("://")
    return head.lower() if sep else ""


def is_remote(uri: str | os.PathLike) -> bool:
    """True for an object-store URI (s3://, gs://, az://), False for a local path or file://."""
    return scheme(str(uri)) in REMOTE_SCHEMES


def s3_endpoint(endpoint_url: str | None = None) -> str | None:
    """The S3 endpoint to use: the argument, else AWS_ENDPOINT_URL_S3, else AWS_ENDPOINT_URL."""
    return endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def filesystem(uri: str | os.PathLike, endpoint_url: str | None = None) -> tuple[Any, str]:
    """``(fs, path)`` for a local path or object-store URI.

    ``path`` is what the fsspec methods of ``fs`` take: ``bucket/key`` for object stores, an
    absolute path for local files. ``endpoint_url`` applies to s3:// only.
    """
    uri = os.fspath(uri)
    kind = scheme(uri)
    if kind in ("", "file", "local"):
        import fsspec

        path = uri.split("://", 1)[1] if kind else uri
        return fsspec.filesystem("file"), os.path.abspath(os.path.expanduser(path))
    if kind not in REMOTE_SCHEMES:
        known = ", ".join(sorted({f"{s}://" for s in REMOTE_SCHEMES} | {"file://"}))
        raise FtctlError(f"Unknown storage scheme in {uri!r}: use a local path or one of {known}.")
    protocol, package = REMOTE_SCHEMES[kind]
    try:
        import fsspec

        cls = fsspec.get_filesystem_class(protocol)
    except ImportError as exc:
        raise FtctlError(f"{uri!r} needs the {package} package: pip install {package}") from exc
    path = uri.split("://", 1)[1].strip("/")
    if protocol == "s3":
        client_kwargs = {}
        endpoint = s3_endpoint(endpoint_url)
        if endpoint:
            client_kwargs["endpoint_url"] = endpoint
        fs = cls(
            client_kwargs=client_kwargs,
            config_kwargs={
                "connect_timeout": S3_CONNECT_TIMEOUT,
                "read_timeout": S3_READ_TIMEOUT,
                "retries": {"max_attempts": 2, "mode": "standard"},
            },
            # Listings change under us (other nodes, other runs): never answer from a cache.
            use_listings_cache=False,
        )
    else:
        fs = cls()
    return fs, path


def join(uri: str, *parts: str) -> str:
    """``uri`` joined with ``parts`` by '/' (object stores) or the OS separator (local paths)."""
    uri = os.fspath(uri)
    if scheme(uri):
        return posixpath.join(uri.rstrip("/"), *parts)
    return os.path.join(uri, *parts)


def open_file(uri: str | os.PathLike, mode: str = "rb", endpoint_url: str | None = None) -> IO:
    """An open file object for a local path or object-store URI (use it as a context manager).

    The data loader reads datasets on object storage through this.
    """
    fs, path = filesystem(uri, endpoint_url)
    try:
        return fs.open(path, mode)
    except FileNotFoundError as exc:
        raise FtctlError(f"{uri} does not exist: check the path or URI.") from exc


def read_bytes(uri: str | os.PathLike, endpoint_url: str | None = None) -> bytes:
    """The whole content of a file given by a local path or object-store URI."""
    with open_file(uri, "rb", endpoint_url) as f:
        return f.read()


def read_text(uri: str | os.PathLike, endpoint_url: str | None = None, encoding="utf-8") -> str:
    """The whole content of a text file given by a local path or object-store URI."""
    return read_bytes(uri, endpoint_url).decode(encoding)


def exists(uri: str | os.PathLike, endpoint_url: str | None = None) -> bool:
    fs, path = filesystem(uri, endpoint_url)
    return fs.exists(path)


def ls(uri: str | os.PathLike, endpoint_url: str | None = None) -> list[dict]:
    """Entries directly under ``uri``: dicts with ``name`` (the base name), ``type``
    ('file' or 'directory') and ``size``. An absent directory lists as empty."""
    fs, path = filesystem(uri, endpoint_url)
    try:
        entries = fs.ls(path, detail=True)
    except FileNotFoundError:
        return []
    out = []
    for e in entries:
        name = posixpath.basename(str(e["name"]).rstrip("/"))
        if not name or str(e["name"]).rstrip("/") == path.rstrip("/"):
            continue
        out.append({"name": name, "type": e.get("type", "file"), "size": e.get("size") or 0})
    return sorted(out, key=lambda e: e["name"])


def file_sizes(uri: str | os.PathLike, endpoint_url: str | None = None) -> dict[str, int]:
    """``{relative path: size}`` of every file below ``uri`` (recursively; '/'-separated)."""
    fs, path = filesystem(uri, endpoint_url)
    root = path.rstrip("/")
    try:
        found = fs.find(root, detail=True)
    except FileNotFoundError:
        return {}
    out = {}
    for name, info in found.items():
        if info.get("type") == "directory":
            continue
        rel = posixpath.relpath(str(name).replace(os.sep, "/"), root.replace(os.sep, "/"))
        out[rel] = int(info.get("size") or 0)
    return out


def put_file(local_path: str, uri: str, endpoint_url: str | None = None, fs=None) -> None:
    """Upload one local file to ``uri`` (its full destination name)."""
    if fs is None:
        fs, path = filesystem(uri, endpoint_url)
    else:
        path = _path_for(fs, uri)
    parent = posixpath.dirname(path) if is_remote(uri) else os.path.dirname(path)
    if not is_remote(uri):
        os.makedirs(parent, exist_ok=True)
    fs.put_file(local_path, path)


def get_file(uri: str, local_path: str, endpoint_url: str | None = None, fs=None) -> None:
    """Download one file from ``uri`` to ``local_path`` (parents created)."""
    if fs is None:
        fs, path = filesystem(uri, endpoint_url)
    else:
        path = _path_for(fs, uri)
    os.makedirs(os.path.dirname(os.path.abspath(local_path)), exist_ok=True)
    fs.get_file(path, local_path)


def put_dir(local_dir: str, uri: str, endpoint_url: str | None = None) -> None:
    """Upload every file below ``local_dir`` to the same relative names below ``uri``."""
    fs, _ = filesystem(uri, endpoint_url)
    for rel in sorted(local_files(local_dir)):
        put_file(os.path.join(local_dir, rel), join(uri, *rel.split("/")), fs=fs)


def get_dir(uri: str, local_dir: str, endpoint_url: str | None = None) -> None:
    """Download every file below ``uri`` to the same relative names below ``local_dir``."""
    fs, _ = filesystem(uri, endpoint_url)
    for rel in sorted(file_sizes(uri, endpoint_url)):
        get_file(join(uri, *rel.split("/")), os.path.join(local_dir, *rel.split("/")), fs=fs)


def rm(uri: str, recursive: bool = False, endpoint_url: str | None = None) -> None:
    """Delete a file (or, with ``recursive``, a directory tree); absent paths are no error."""
    fs, path = filesystem(uri, endpoint_url)
    try:
        fs.rm(path, recursive=recursive)
    except FileNotFoundError:
        pass


def local_files(local_dir: str) -> list[str]:
    """'/'-separated relative paths of every regular file below ``local_dir``, sorted."""
    out = []
    for root, dirs, files in os.walk(local_dir):
        dirs.sort()
        for f in files:
            full = os.path.join(root, f)
            if os.path.isfile(full):
                out.append(os.path.relpath(full, local_dir).replace(os.sep, "/"))
    return sorted(out)


#: environment variables whose values are secrets of some store
SECRET_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "GOOGLE_APPLICATION_CREDENTIALS_JSON",
    "AZURE_STORAGE_KEY",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_CLIENT_SECRET",
)


def redact(text: str) -> str:
    """``text`` with the value of every credential variable in the environment masked; every
    store error ftctl logs goes through this."""
    for var in SECRET_ENV:
        value = os.environ.get(var)
        if value and len(value) >= 4:
            text = text.replace(value, f"<{var}>")
    return text


def _path_for(fs, uri: str) -> str:
    """The fsspec path of ``uri`` for an already-made ``fs``."""
    uri = os.fspath(uri)
    kind = scheme(uri)
    if kind in ("", "file", "local"):
        path = uri.split("://", 1)[1] if kind else uri
        return os.path.abspath(os.path.expanduser(path))
    return uri.split("://", 1)[1].strip("/")
