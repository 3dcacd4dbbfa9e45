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
| ``hf://datasets/O/N/f`` | huggingface_hub's HfFileSystem (read only) |
| ``memory://a/b``     | fsspec's in-process memory (tests)      |

Credentials come only from each store's standard chain (for S3: ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, ``AWS_PROFILE`` and ``~/.aws/*``, instance
roles; for the Hub: ``HF_TOKEN``, and ``HF_ENDPOINT`` for a mirror). ftctl never logs or writes them
(store errors it logs go through :func:`redact`); a job elsewhere gets those it needs by name
(:func:`job_env`, :func:`home_credentials`). The S3 endpoint for S3-compatible stores is the
``endpoint_url`` argument, else ``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL`` (the variables
boto3 itself reads). gcsfs reaches a GCS emulator through ``STORAGE_EMULATOR_HOST`` (its own variable), which a job
elsewhere gets by name as it gets AWS_ENDPOINT_URL.

Store errors (no credentials, no such bucket, access denied, endpoint unreachable, timeout) become
one :class:`StorageError` line that says which and what to set: :func:`storage_errors` around the
calls at the edges (``ftctl sync``, preflight, data reading), :func:`store_error` to classify one.

fsspec and its store packages are imported inside the functions, so importing this module is free.
"""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import random
import shlex
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ftctl import hub
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
    "hf": ("hf", "huggingface_hub"),
}
#: the package -> ftctl's extra that installs it (pyproject.toml); s3fs and huggingface_hub come with ftctl[train]
PACKAGE_EXTRAS = {"gcsfs": "gcs", "adlfs": "azure"}
#: schemes ftctl reads data from but never writes to (outputs, checkpoints, merged models)
READ_ONLY_SCHEMES = {"hf"}


@dataclass(frozen=True)
class S3Limits:
    """How long one S3 request may take before it counts as failed: seconds to connect and to wait for the next
    bytes of an answer; botocore's ``attempts`` of a request the store answered 500/502/503/504 (SlowDown,
    InternalError), throttled or dropped (reset, closed), retried after backoff (0-1, 0-2, 0-4, 0-8 s: standard mode);
    of those, ``waits``: attempts of a request that got no answer in time; and s3fs's ``tries`` around those (a
    timeout, a body cut off mid-read, SlowDown). A store that accepts and never answers costs
    ``waits * tries * read_s`` per request (it was 30 min: s3fs's default of 5 tries around 3 attempts of 120 s)."""

    connect_s: float
    read_s: float
    attempts: int
    tries: int
    waits: int | None = None  # None: as many as attempts

    @property
    def backoff_s(self) -> float:
        """The longest botocore pauses between a busy store's attempts, all together (standard mode: 0-1, 0-2, 0-4, 0-8
        s ..., each at most 20 s)."""
        return float(sum(min(2**i, 20) for i in range(self.attempts - 1)))

    @property
    def tag(self) -> str:
        """The client's user-agent suffix that tells :func:`_unanswered_retried` its ``waits``."""
        return f"{_WAITS_TAG}{self.attempts if self.waits is None else self.waits}"


_WAITS_TAG = "ftctl-waits/"

#: the one place S3 waits are set. "ask": listings, a manifest, trainer_state.json, a marker, a lease, a delete: small
#: answers that someone waits on (sync ls, status, the preflight, a resume's listing, the lease's renewal): a busy or
#: failing store's answer retried for up to ~15 s, a silent one given up after one wait; "transfer": a checkpoint's
#: or a dataset's files, where a large part's answer may be slow (the checkpoint uploader retries on its own). GCS
#: (gcsfs) takes their connect_s and read_s; its tries are gcsfs's own (6, pausing 1+2+4+8+16 s between them). Azure
#: (adlfs) takes connect_s, read_s, attempts and waits (_azure_limits)
S3_LIMITS = {
    "ask": S3Limits(connect_s=10, read_s=10, attempts=5, tries=1, waits=1),
    "transfer": S3Limits(connect_s=10, read_s=120, attempts=5, tries=2, waits=2),
}


def scheme(uri: str) -> str:
    """The URI scheme in lower case ('' for a plain path)."""
    head, sep, _ = str(uri).partition("://")
    return head.lower() if sep else ""


def misspelt_uri(value: str) -> str | None:
    """``s3:/bucket/key`` or ``gs:bucket``: a store's scheme without its two slashes, which would otherwise be read
    as a local directory named ``s3:``. The URI meant, or None."""
    head, sep, rest = str(value).partition(":")
    if sep and not rest.startswith("//") and (head.lower() in REMOTE_SCHEMES or head.lower() == "file"):
        return f"{head}://{rest.lstrip('/')}" if head.lower() != "file" else f"file:///{rest.lstrip('/')}"
    return None


def not_on_this_node(path: str) -> str:
    """For a local ``path`` missing where a Slurm job runs on a node other than the host it was submitted from:
    what to do, as a clause (it may exist only there: its /tmp, a local disk); else ''."""
    submit, node = os.environ.get("SLURM_SUBMIT_HOST", ""), os.environ.get("SLURMD_NODENAME", "")
    if scheme(path) or not submit or not node or submit.split(".")[0] == node.split(".")[0]:
        return ""
    return (
        f"this node ({node}) does not see it; if it is on {submit}, where the job was submitted, put it on a "
        "filesystem the nodes share (home, project or scratch space), not /tmp or a local disk."
    )


def looks_like_path(value: str) -> bool:
    """A local path, not a hub id (a model's or a dataset's): by its form, or its first part a directory here
    (``runs/r1`` where runs/ is)."""
    first = value.split("/", 1)[0]
    return (
        value.startswith(("/", "./", "../", "~", ".\\"))
        or value in (".", "..")
        or value.endswith("/")
        or ("/" in value and os.path.isdir(first))
    )


def local_path(uri: str) -> str:
    """The local path a ``file://`` URI names (``file:///a/b`` is ``/a/b``); any other value as it is."""
    return uri.split("://", 1)[1] if scheme(uri) in ("file", "local") else uri


def place_problem(value: str, what: str) -> str | None:
    """Why ``value`` (``what``: the argument, RUN or JOB) names no place ftctl can look in, as a sentence with the fix;
    None where it may be one: a URI whose scheme is none of the stores' (s4://b/r was read as the local directory
    s4:/b/r), or a path in the home of a user there is none of here (~nouser/x: pathlib's RuntimeError)."""
    value = str(value)
    if "://" in value and not is_remote(value) and scheme(value) not in ("file", "local"):
        known = ", ".join(sorted(f"{s}://" for s in REMOTE_SCHEMES))
        return (
            f"{what} {value!r}: unknown storage scheme {scheme(value)}://; use a local path, file:// or one of {known}."
        )
    if value.startswith("~") and os.path.expanduser(value).startswith("~"):
        user = value[1:].split("/")[0]
        return f"{what} {value!r}: there is no user {user!r} here, whose home ~{user} would be: write the path in full."
    return None if is_remote(value) else long_name_problem(value, what)


NAME_MAX, PATH_MAX = 255, 4096  # bytes of one name in a path, and of a whole path (Linux's and macOS's file systems)


def long_name_problem(path: str, what: str, commas: bool = False) -> str | None:
    """Why local ``path`` is no file system's, as a sentence with the fix (None where it may be one): a name over
    NAME_MAX bytes, or the whole over PATH_MAX (asking whether it exists raised ENAMETOOLONG: a traceback). A list of
    paths (``commas``: data_path's) is judged by its names alone, split at its commas too."""
    path_bytes = os.fsencode(os.path.expanduser(local_path(path)))
    names = (path_bytes.replace(b",", b"/") if commas else path_bytes).split(b"/")
    if long := next((n for n in names if len(n) > NAME_MAX), None):
        return (
            f"{what}: the name {long.decode(errors='replace')[:24] + '...'!r} is {len(long)} bytes, and file systems "
            f"take at most {NAME_MAX} bytes a name: give a shorter one."
        )
    if len(path_bytes) > PATH_MAX and not commas:
        return (
            f"{what} is {len(path_bytes)} bytes long, and file systems take at most {PATH_MAX} bytes a path: give a "
            "shorter one."
        )
    return None


def temp_beside(path: Path) -> Path:
    """Where a file is written before it is renamed into place (write_whole): a hidden sibling."""
    return path.with_name(f".{path.name}.tmp")


def write_whole(path: str | os.PathLike, text: str) -> None:
    """``text`` into ``path`` whole or not at all (a kill or a full disk mid-write leaves the earlier file as it was,
    and no temp file)."""
    path = Path(path)
    tmp = temp_beside(path)
    try:
        tmp.write_text(text)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def is_remote(uri: str | os.PathLike) -> bool:
    """True for an object-store URI (s3://, gs://, az://), False for a local path or file://."""
    return scheme(str(uri)) in REMOTE_SCHEMES


def s3_endpoint(endpoint_url: str | None = None, uri: str | os.PathLike | None = None) -> str | None:
    """The S3 endpoint to use: the argument, else AWS_ENDPOINT_URL_S3, else AWS_ENDPOINT_URL, else the one a run's
    launch recorded for the bucket of ``uri`` (:func:`use_recorded_endpoint`)."""
    env = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return endpoint_url or env or (recorded_endpoint(uri) if uri is not None else None) or None


#: a run's URI (its output, a checkpoint or merge in it) -> the S3 endpoint its launch recorded, for this process
_RECORDED_ENDPOINTS: dict[str, str] = {}


def use_recorded_endpoint(uri: str, endpoint: str) -> None:
    """Read ``uri`` (a run's output in an S3 store: its files, its checkpoints' run above them, a merge written into
    it) at ``endpoint`` in this process, where neither an argument nor the environment names one: `ftctl eval A B` of
    two runs whose launches recorded other endpoints (-o s3_endpoint_url) reads each at its own (the first one's, set
    as AWS_ENDPOINT_URL for the process, read B there), buckets of one name in two stores too
    (:func:`recorded_endpoint`)."""
    _RECORDED_ENDPOINTS[os.fspath(uri).rstrip("/")] = endpoint


def recorded_endpoint(uri: str | os.PathLike) -> str | None:
    """The endpoint :func:`use_recorded_endpoint` set for a URI in the bucket of the s3:// ``uri``: of those, the one
    whose path shares most of ``uri``'s leading parts (a run's lease above its checkpoint; runs/a at A's endpoint where
    B's bucket of the same name was recorded after it); None where none is in that bucket."""
    uri = os.fspath(uri)
    if not _RECORDED_ENDPOINTS or scheme(uri) != "s3":
        return None
    parts = uri.split("://", 1)[1].strip("/").split("/")
    same = [(k.split("://", 1)[1].strip("/").split("/"), e) for k, e in _RECORDED_ENDPOINTS.items()]
    same = [(k, e) for k, e in same if k[0] == parts[0]]  # (the bucket)
    if not same:
        return None

    def shared(key: list[str]) -> int:
        return next((n for n, (a, b) in enumerate(zip(key, parts)) if a != b), min(len(key), len(parts)))

    return max(same, key=lambda ke: shared(ke[0]))[1]


def gcs_emulator() -> str | None:
    """The GCS emulator gcsfs talks to instead of Google Cloud Storage: ``STORAGE_EMULATOR_HOST`` (gcsfs's and
    google-cloud-storage's own variable; fake-gcs-server, gcp-storage-emulator), as a URL; None for GCS itself."""
    host = os.environ.get("STORAGE_EMULATOR_HOST", "").strip()
    if host in ("", "default"):
        return None
    return host if host.startswith(("http://", "https://")) else f"http://{host}"


#: the S3 credential chain's settings (each variable's name and a digest of its value) when the S3 filesystems fsspec
#: keeps were made
_S3_CREDENTIALS_SEEN: list[str] = []


def _credentials_as_now(cls) -> None:
    """fsspec keeps one S3 filesystem per set of arguments, and its client the credentials found when it was made: in
    a process where AWS_ACCESS_KEY_ID, AWS_PROFILE ... were set (or unset) since, a store whose endpoint refuses
    connections was said to lack credentials, or one lacking them as unreachable. Where those settings (any AWS_*
    variable, HOME: ~/.aws) differ from the kept filesystems', these are dropped, and the next ones read the chain
    anew. Values are kept as digests only."""
    import hashlib

    now = sorted(
        f"{name}={hashlib.sha256(value.encode()).hexdigest()[:16]}"
        for name, value in os.environ.items()
        if name.startswith("AWS_") or name == "HOME"
    )
    with _CREDENTIALS_LOCK:
        if _S3_CREDENTIALS_SEEN != now:
            if _S3_CREDENTIALS_SEEN:
                cls.clear_instance_cache()
            _S3_CREDENTIALS_SEEN[:] = now


_CREDENTIALS_LOCK = threading.Lock()


def filesystem(uri: str | os.PathLike, endpoint_url: str | None = None, quick: bool = False) -> tuple[Any, str]:
    """``(fs, path)`` for a local path or object-store URI.

    ``path`` is what the fsspec methods of ``fs`` take: ``bucket/key`` for object stores, an
    absolute path for local files. ``endpoint_url`` applies to s3:// only. ``quick``: the "ask" limits of
    :data:`S3_LIMITS` (questions with small answers), else those of "transfer".
    """
    uri = os.fspath(uri)
    kind = scheme(uri)
    if kind in ("", "file", "local"):
        import fsspec

        return fsspec.filesystem("file"), os.path.abspath(os.path.expanduser(local_path(uri)))
    if kind == "memory":  # fsspec's in-process filesystem (tests, notebooks): never seen by another process
        import fsspec

        fs = fsspec.filesystem("memory")
        return fs, fs._strip_protocol(uri)
    if kind not in REMOTE_SCHEMES:
        known = ", ".join(sorted({f"{s}://" for s in REMOTE_SCHEMES} | {"file://"}))
        raise FtctlError(f"Unknown storage scheme in {uri!r}: use a local path or one of {known}.")
    protocol, package = REMOTE_SCHEMES[kind]
    try:
        import fsspec

        cls = fsspec.get_filesystem_class(protocol)
    except ImportError as exc:
        install = (
            f"pip install 'ftctl[{PACKAGE_EXTRAS[package]}]'" if package in PACKAGE_EXTRAS else f"pip install {package}"
        )
        raise FtctlError(f"{uri!r} needs the {package} package: {install}") from exc
    path = uri.split("://", 1)[1].strip("/")
    if protocol == "s3":
        _credentials_as_now(cls)
        client_kwargs = {}
        endpoint = s3_endpoint(endpoint_url, uri)
        if endpoint:
            client_kwargs["endpoint_url"] = endpoint
        _no_100_continue()
        _retry_handlers()
        limits = S3_LIMITS["ask" if quick else "transfer"]
        fs = cls(
            client_kwargs=client_kwargs,
            config_kwargs={
                "connect_timeout": limits.connect_s,
                "read_timeout": limits.read_s,
                "retries": {"total_max_attempts": limits.attempts, "mode": "standard"},  # max_attempts: retries
                "user_agent_extra": limits.tag,  # read by _unanswered_retried
                "max_pool_connections": POOL_CONNECTIONS,
            },
            # Listings change under us (other nodes, other runs): never answer from a cache.
            use_listings_cache=False,
        )
        fs.retries = limits.tries  # s3fs's own retry loop (5 tries with backoff by default) around botocore's
    elif protocol == "gcs":
        import aiohttp

        _quiet_gcsfs_retries()
        limits = S3_LIMITS["ask" if quick else "transfer"]
        # gcsfs passes requests_timeout to each aiohttp request, where None is no timeout at all: a GCS endpoint that
        # accepts and never answers held a read of the lease, `ftctl sync ls`, forever. As S3's: seconds to connect
        # and to wait for the next bytes of an answer (a large transfer's whole length is not bounded)
        timeout = aiohttp.ClientTimeout(sock_connect=limits.connect_s, sock_read=limits.read_s)
        if gcs_emulator():  # gcsfs's default class (2026.x) asks each bucket's layout of Google's gRPC storage-control
            # API, which an emulator lacks: a warning at every call ("Could not determine bucket type")
            from gcsfs.core import GCSFileSystem as cls
        fs = cls(requests_timeout=timeout)
    elif protocol == "hf":  # HF_ENDPOINT read at each call, not once at huggingface_hub's import; a fresh
        # instance, so that no listing or "not found" cached before HF_TOKEN was set answers for it
        fs = cls(endpoint=os.environ.get("HF_ENDPOINT") or None, skip_instance_cache=True)
    elif protocol == "abfs":  # adlfs reads its variables as it is made, and fsspec keeps the filesystem it made for
        # the same arguments: passed as arguments, a changed variable (another account, a rotated key) gets a fresh one;
        # the limits' timeouts too, so that an "ask" and a "transfer" each have a filesystem of their own
        limits = S3_LIMITS["ask" if quick else "transfer"]
        credentials = {arg: next(filter(None, map(os.environ.get, names)), None) for arg, names in _ADLFS_ENV.items()}
        if not any(credentials[arg] for arg in ("connection_string", "account_key", "sas_token", "client_id")):
            if os.environ.get("AZURE_STORAGE_ANON", "").lower() in ("", "false", "0", "f"):  # adlfs's own test
                credentials["credential"] = _azure_identity()
        fs = cls(**credentials, connection_timeout=limits.connect_s, read_timeout=limits.read_s)
        _azure_limits(fs, limits)
    else:
        fs = cls()
    return fs, path


#: adlfs's arguments and the variables it reads them from where they are not given (the first one set); the account
#: key also from AZURE_STORAGE_KEY, the Azure CLI's name for it (adlfs reads only AZURE_STORAGE_ACCOUNT_KEY: a key set
#: there was not used, and the account name alone went to DefaultAzureCredential)
_ADLFS_ENV = {
    "connection_string": ("AZURE_STORAGE_CONNECTION_STRING",),
    "account_name": ("AZURE_STORAGE_ACCOUNT_NAME",),
    "account_key": ("AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_KEY"),
    "sas_token": ("AZURE_STORAGE_SAS_TOKEN",),
    "client_id": ("AZURE_STORAGE_CLIENT_ID",),
    "client_secret": ("AZURE_STORAGE_CLIENT_SECRET",),
    "tenant_id": ("AZURE_STORAGE_TENANT_ID",),
}

#: DefaultAzureCredential of this process, per the identity variables it was made under (a changed one: a fresh one)
_AZURE_IDENTITIES: dict[tuple, Any] = {}


def _azure_identity():
    """The Azure identity adlfs gets for an account with no key, SAS or connection string: azure-identity's
    DefaultAzureCredential (environment, workload identity, managed identity, Azure CLI ...) as adlfs would make it,
    except that where it finds none, the request fails at once instead of being retried. azure-storage-blob's retry
    policy retried a token that could not be had as it retries a store that is down: the whole chain again after each
    pause (azure-storage-blob's own pauses, 15 s + 3**n: 86 s to the error; S3_LIMITS' ~35 s). One try of the chain is
    already bounded by azure-identity: the managed identity endpoint (IMDS) is probed with a 1 s connect and no
    retries, the CLIs with a 10 s limit, so that a VM's managed identity, a pod's workload identity and `az login` work
    as before. One instance per process (per its identity variables), kept open: fsspec's cache of filesystems keys on
    it, and a token it got is reused."""
    key = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(("AZURE_", "MSI_", "IDENTITY_"))))
    if key not in _AZURE_IDENTITIES:
        from azure.identity.aio import DefaultAzureCredential

        _AZURE_IDENTITIES[key] = _FailOnce(DefaultAzureCredential())
    return _AZURE_IDENTITIES[key]


class _FailOnce:
    """An async token credential (azure-core's protocol) that is ``inner``, except that no token raises what
    azure-storage-blob's retry policy does not retry (its AzureSigningError, from the chain's own error): one try."""

    def __init__(self, inner):
        self.inner = inner

    async def get_token(self, *scopes, **kwargs):
        return await self._once(self.inner.get_token, *scopes, **kwargs)

    async def get_token_info(self, *scopes, **kwargs):
        return await self._once(self.inner.get_token_info, *scopes, **kwargs)

    async def _once(self, call, *args, **kwargs):
        from azure.core.exceptions import ClientAuthenticationError

        try:
            return await call(*args, **kwargs)
        except ClientAuthenticationError as exc:  # CredentialUnavailableError too
            try:
                from azure.storage.blob._shared.authentication import AzureSigningError
            except ImportError:  # a changed SDK: retried as before
                raise exc from None
            raise AzureSigningError(str(exc)) from exc

    async def close(self) -> None:
        """Kept open: shared by every filesystem of this process (adlfs closes its credential with each one)."""

    async def __aenter__(self):
        return self

    async def __aexit__(self, *args) -> None:
        pass


def _azure_limits(fs, limits: S3Limits) -> None:
    """An Azure request bounded as an S3 one (:data:`S3_LIMITS`): seconds to connect and to wait for the next bytes of
    an answer, ``attempts`` of a request the store answered busy or failing (503 ServerBusy, 500), of those ``waits``
    of one that got no answer or no connection, after pauses of about 1, 3, 5, 9 s. azure-storage-blob's own (15 s
    pauses growing by 3**n, 20 s to connect, 60 s to read, 4 attempts of each) made an "ask" of an endpoint that refuses
    connections take 85 s (`ftctl sync ls`, the lease's read), and of one that never answers about 5 minutes: a lease
    renewal then outlived STALE_S. adlfs passes none of these to the client it makes: they are set on it (its retry
    policy and transport settings, which every blob client it makes shares)."""
    client = getattr(fs, "service_client", None)
    policy = getattr(getattr(client, "_config", None), "retry_policy", None)
    transport = getattr(getattr(client, "_pipeline", None), "_transport", None)
    if policy is not None and hasattr(policy, "initial_backoff"):
        waits = limits.attempts if limits.waits is None else limits.waits
        policy.total_retries = policy.status_retries = limits.attempts - 1
        policy.connect_retries = policy.read_retries = waits - 1
        policy.initial_backoff, policy.increment_base, policy.random_jitter_range = 1, 2, 1
    config = getattr(transport, "connection_config", None)
    if config is not None:
        config.timeout, config.read_timeout = limits.connect_s, limits.read_s


def azure_endpoint() -> str | None:
    """The blob endpoint that AZURE_STORAGE_CONNECTION_STRING names (``BlobEndpoint=``: Azurite, a private endpoint),
    None where it names none (the account's own, https://ACCOUNT.blob.core.windows.net)."""
    parts = dict(p.split("=", 1) for p in os.environ.get("AZURE_STORAGE_CONNECTION_STRING", "").split(";") if "=" in p)
    return parts.get("BlobEndpoint", "").strip().rstrip("/") or None


def azure_account() -> str | None:
    """The storage account adlfs uses: the connection string's AccountName, else AZURE_STORAGE_ACCOUNT_NAME."""
    parts = dict(p.split("=", 1) for p in os.environ.get("AZURE_STORAGE_CONNECTION_STRING", "").split(";") if "=" in p)
    return parts.get("AccountName", "").strip() or os.environ.get("AZURE_STORAGE_ACCOUNT_NAME", "").strip() or None


def is_azure(fs) -> bool:
    """Whether ``fs`` is adlfs's (Azure Blob)."""
    return "abfs" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def azure_blob(fs, path: str, call):
    """``await call(blob_client)`` for the blob ``path`` (container/blob) of adlfs's ``fs``, run on its loop: what adlfs
    does not pass on (a condition on a delete, the answer's headers)."""
    from fsspec.asyn import sync

    container, blob, _ = fs.split_path(path)

    async def run():
        async with fs.service_client.get_blob_client(container=container, blob=blob) as client:
            return await call(client)

    return sync(fs.loop, run)


class _GcsfsRetriesSaid(logging.Filter):
    """gcsfs logs a request that failed for good ("out of retries", "non-retriable exception") at ERROR with its
    traceback, before ftctl says the store's error in one line (:func:`store_error`): lowered to DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        if record.levelno >= logging.ERROR and (" out of retries " in message or " non-retriable " in message):
            record.levelno, record.levelname, record.exc_info, record.exc_text = logging.DEBUG, "DEBUG", None, None
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


def _quiet_gcsfs_retries() -> None:
    gcsfs_log = logging.getLogger("gcsfs")
    if not any(isinstance(f, _GcsfsRetriesSaid) for f in gcsfs_log.filters):
        gcsfs_log.addFilter(_GcsfsRetriesSaid())


def _no_100_continue() -> None:
    """Uploads send their body at once. botocore asks every S3 upload (PutObject, UploadPart) to wait for the store's
    '100 Continue' first, and aiohttp waits for it with no timeout (its read timeout starts once the body is sent), so
    a store that accepts and never answers held an upload, and `ftctl sync push`, forever. Sessions made from now on
    in this process lack that header (botocore's handler list is read when a session is made); the store's answer to
    the whole request is then bounded by S3_LIMITS as any other."""
    from botocore import handlers

    handlers.BUILTIN_HANDLERS[:] = [h for h in handlers.BUILTIN_HANDLERS if h[1] is not handlers.add_expect_header]


def _retry_handlers() -> None:
    """botocore retries a request that timed out, or could not connect, as it retries a 503 (standard mode: up to
    S3Limits.attempts); S3 sessions made from now on in this process retry those only up to their limits' ``waits``
    (_unanswered_retried), so a busy store's 503s and dropped connections are retried several times while a silent
    store, or none at the endpoint, still costs one wait of an "ask"."""
    from botocore import handlers

    entry = ("needs-retry.s3", _unanswered_retried)
    if entry not in handlers.BUILTIN_HANDLERS:
        handlers.BUILTIN_HANDLERS.append(entry)


def _unanswered_retried(caught_exception=None, attempts=0, request_dict=None, **_) -> None:
    """botocore's needs-retry event: a request that got no answer in time, or no connection (refused, no such host),
    after its limits' ``waits`` attempts is raised as it is (not retried); anything else is left to botocore's own
    retry handler."""
    from botocore.exceptions import ConnectTimeoutError, EndpointConnectionError, ReadTimeoutError

    if isinstance(caught_exception, EndpointConnectionError) and not isinstance(caught_exception, ConnectTimeoutError):
        cause = caught_exception.kwargs.get("error")  # aiohttp's: a connection refused, or one reset mid-request
        if not {c.__name__ for c in type(cause).__mro__} & {"ClientConnectorError", "gaierror"}:
            return None
    elif not isinstance(caught_exception, (ConnectTimeoutError, ReadTimeoutError)):
        return None
    config = ((request_dict or {}).get("context") or {}).get("client_config")
    extra = str(getattr(config, "user_agent_extra", None) or "")
    waits = next((w for w in extra.split() if w.startswith(_WAITS_TAG)), "")
    if waits and attempts >= int(waits[len(_WAITS_TAG) :] or 1):
        raise caught_exception
    return None


def require_writable(uri: str | os.PathLike, what: str) -> None:
    """FtctlError for a destination ftctl only reads from (``what``: the flag or key that named it)."""
    if scheme(os.fspath(uri)) in READ_ONLY_SCHEMES:
        raise FtctlError(
            f"{what} {os.fspath(uri)!r}: the Hugging Face Hub is read here (datasets), not written: write to a "
            "local directory or s3:// gs:// az://, then publish with `hf upload` (after `ftctl merge` for an adapter)."
        )


def root_output(uri: str, run: str = "RUN") -> str | None:
    """What is wrong with ``uri`` as a run's output where it is an object store's bucket (container) root: a run keeps
    its checkpoints, spec.json, final model and lease under its output, `ftctl sync pull` and a final upload list all of
    it, and retention deletes checkpoint-N there; None for a prefix in a bucket (or no store URI). ``run``: the name
    suggested for a prefix."""
    if not is_remote(uri) or scheme(uri) == "hf":
        return None
    bucket, _, rest = uri.split("://", 1)[1].strip("/").partition("/")
    if not bucket or rest.strip("/"):
        return None
    return (
        f"--output {uri} is the root of {'container' if scheme(uri) in ('az', 'abfs', 'abfss') else 'bucket'} "
        f"{bucket!r}: a run keeps its checkpoints, spec.json, final model and lease under its output, and lists, "
        f"pulls and prunes all of it; give the run a prefix of its own: --output {shlex.quote(uri.rstrip('/') + '/' + run)}"
    )


def join(uri: str, *parts: str) -> str:
    """``uri`` joined with ``parts`` by '/' (object stores) or the OS separator (local paths)."""
    uri = os.fspath(uri)
    if scheme(uri):
        return posixpath.join(uri.rstrip("/"), *parts)
    return os.path.join(uri, *parts)


def open_file(uri: str | os.PathLike, mode: str = "rb", endpoint_url: str | None = None, quick: bool = False) -> IO:
    """An open file object for a local path or object-store URI (use it as a context manager).

    The data loader reads datasets on object storage through this (``quick``: see :func:`filesystem`).
    """
    fs, path = filesystem(uri, endpoint_url, quick=quick)
    try:
        return fs.open(path, mode)
    except FileNotFoundError as exc:
        raise FtctlError(f"{uri} does not exist: check the path or URI.") from exc


def read_bytes(uri: str | os.PathLike, endpoint_url: str | None = None, quick: bool = False) -> bytes:
    """The whole content of a file given by a local path or object-store URI (``quick``: see :func:`filesystem`); an
    answer cut off mid-body is asked again (:func:`read_whole`)."""
    try:
        return read_whole(uri, endpoint_url, quick)
    except FileNotFoundError as exc:
        raise FtctlError(f"{uri} does not exist: check the path or URI.") from exc


def read_whole(uri: str | os.PathLike, endpoint_url: str | None = None, quick: bool = True) -> bytes:
    """The whole content of a file (a manifest, trainer_state.json, the lease: asked with the "ask" limits unless
    ``quick`` is False); FileNotFoundError where there is none. One whose answer was cut off mid-body (a connection
    dropped while it came) is asked again, up to CUT_OFF_STARTS in all, as a download is: an "ask" gets one try of
    s3fs's, and a listing's manifest or the lease cut off once failed `ftctl sync ls`, `status` or a renewal."""
    fs, path = filesystem(uri, endpoint_url, quick=quick)

    def once() -> bytes:
        with fs.open(path, "rb") as f:
            return f.read()

    return _again_if_cut_off(once)


def _again_if_cut_off(call):
    """``call()``, made again where its answer was cut off mid-body or the object was written again while it was read
    (CUT_OFF_STARTS in all, after a pause of up to 0.5, 1, 2 s); any other error is raised at once."""
    for start in range(CUT_OFF_STARTS):
        try:
            return call()
        except Exception as exc:
            names = {cls.__name__ for e in _chain(exc) for cls in type(e).__mro__}
            if start + 1 == CUT_OFF_STARTS or not names & (_CUT_OFF | _REWRITTEN):
                raise
            time.sleep(random.random() * 0.5 * 2**start)


def read_text(uri: str | os.PathLike, endpoint_url: str | None = None, encoding="utf-8") -> str:
    """The whole content of a small text file (a manifest, trainer_state.json, a template) given by a local path or
    object-store URI: asked with the "ask" limits."""
    return read_bytes(uri, endpoint_url, quick=True).decode(encoding)


def exists(uri: str | os.PathLike, endpoint_url: str | None = None) -> bool:
    fs, path = filesystem(uri, endpoint_url, quick=True)
    return fs.exists(path)


def ls(uri: str | os.PathLike, endpoint_url: str | None = None) -> list[dict]:
    """Entries directly under ``uri``: dicts with ``name`` (the base name), ``type``
    ('file' or 'directory') and ``size``. An absent directory lists as empty."""
    fs, path = filesystem(uri, endpoint_url, quick=True)
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


def size_text(nbytes: float) -> str:
    """A size as people read it: "1.2 GB", "31.4 MB", "48 KB", "0 bytes" (a disk's free space or a model's below 1 GB
    was "0 GB"; a tiny model's data cache, or a full disk's free space, "0.0 MB"). The one place sizes in bytes are
    said: the plan's estimates in GB are plan._gb's."""
    if nbytes >= 1e8:
        return f"{nbytes / 1e9:.1f} GB"
    if nbytes >= 5e4:  # said as 0.1 MB and up
        return f"{nbytes / 1e6:.1f} MB"
    return f"{nbytes / 1e3:.0f} KB" if nbytes >= 1e3 else f"{nbytes:.0f} bytes"


def file_sizes(uri: str | os.PathLike, endpoint_url: str | None = None) -> dict[str, int]:
    """``{relative path: size}`` of every file below ``uri`` (recursively; '/'-separated). An absent
    directory has none; an absent bucket is a :class:`StorageError` ('no-bucket')."""
    fs, path = filesystem(uri, endpoint_url, quick=True)
    root = path.rstrip("/")
    try:
        found = fs.find(root, detail=True)
    except FileNotFoundError:
        found = {}
    if not found and not bucket_exists(uri, endpoint_url, quick=True):
        raise storage_error("no-bucket", uri, endpoint_url)
    out = {}
    for name, info in found.items():
        if info.get("type") == "directory":
            continue
        rel = posixpath.relpath(str(name).replace(os.sep, "/"), root.replace(os.sep, "/"))
        out[rel] = int(info.get("size") or 0)
    return out


def put_file(local_path: str, uri: str, endpoint_url: str | None = None, fs=None) -> None:
    """Upload one local file to ``uri`` (its full destination name)."""
    require_writable(uri, "upload to")
    if fs is None:
        fs, path = filesystem(uri, endpoint_url)
    else:
        path = _path_for(fs, uri)
    parent = posixpath.dirname(path) if is_remote(uri) else os.path.dirname(path)
    if not is_remote(uri):
        os.makedirs(parent, exist_ok=True)
        fs.put_file(local_path, path)
        return
    with _memory.held(in_memory(fs, os.path.getsize(local_path), upload=True)):
        fs.put_file(local_path, path)


class NoConditionalWrites(Exception):
    """The store, or its fsspec library, cannot make this write conditional (:func:`put_if`)."""


#: error codes of a conditional write that did not hold: PreconditionFailed (412; Azure's ConditionNotMet), and S3's 409
#: for two conditional writes of one object at once ("A conflicting conditional operation is currently in progress");
#: Azure's BlobNotFound: the version a delete was made on is gone (removed since)
_LOST = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409", "ConditionNotMet", "BlobNotFound"}


def put_if(uri: str, data: bytes, endpoint_url: str | None = None, etag: str | None = None) -> str | None:
    """Write the small object ``uri`` only where it is absent (``etag`` None: If-None-Match *; S3 since 2024-08, GCS's
    ifGenerationMatch=0, Azure's If-None-Match through s3fs/gcsfs/adlfs ``mode="create"``) or is still the version
    read (its ``etag``: If-Match, S3 since 2024-11, Azure; on GCS its generation: ifGenerationMatch). FileExistsError where it is not (another writer came first,
    or removed it), NoConditionalWrites where the store or the library refuses the condition (an S3-compatible without
    them); a store that does not answer raises as any write. A store (or an
    s3fs/botocore too old to send the header) that ignores the condition writes as a plain write would: ask again to
    find out. The ETag of the version written, None where the store gave none (:func:`etag_of`)."""
    fs, path = filesystem(uri, endpoint_url, quick=True)
    protocol = REMOTE_SCHEMES.get(scheme(uri), ("",))[0]
    if etag is not None and protocol not in ("s3", "abfs", "gcs"):
        raise NoConditionalWrites(f"{scheme(uri)}:// through fsspec replaces an object only unconditionally")
    with _condition_held(uri, endpoint_url):
        if etag is None:
            return etag_of(fs.pipe_file(path, data, mode="create"))
        if protocol == "gcs":
            return _gcs_put_if(fs, path, data, etag)
        if protocol == "abfs":  # adlfs passes these on to azure-storage-blob's upload_blob: If-Match
            from azure.core import MatchConditions

            return etag_of(fs.pipe_file(path, data, etag=etag, match_condition=MatchConditions.IfNotModified))
        return etag_of(fs.pipe_file(path, data, IfMatch=etag))


@contextlib.contextmanager
def _condition_held(uri: str, endpoint_url: str | None):
    """A conditional write's or delete's errors as put_if and delete_if raise them: FileExistsError where the condition
    did not hold (another writer came first), NoConditionalWrites where the store refused the condition, the store's own
    error (no bucket, credentials, denied, not answering) as it is."""
    try:
        yield
    except (FileExistsError, FileNotFoundError) as exc:
        if _codes(exc) & _NO_BUCKET:
            raise
        raise FileExistsError(uri) from exc
    except Exception as exc:
        if _codes(exc) & _LOST:
            raise FileExistsError(uri) from exc
        if store_error(exc, uri, endpoint_url) is not None:  # no credentials, denied, not answering: not the condition
            raise
        raise NoConditionalWrites(f"the store refused the condition: {redact(str(exc)) or type(exc).__name__}") from exc


def _gcs_put_if(fs, path: str, data: bytes, generation: str) -> str | None:
    """Write ``data`` to ``path`` of gcsfs's ``fs`` where the object is still ``generation`` (ifGenerationMatch): the
    upload gcsfs's pipe_file makes (multipart), with the condition it passes only as 0 (mode="create")."""
    import json
    from urllib.parse import quote

    bucket, key, _ = fs.split_path(path)
    head = f"--==0==\nContent-Type: application/json; charset=UTF-8\n\n{json.dumps({'name': key})}\n--==0==\n"
    body = (head + "Content-Type: application/octet-stream\n\n").encode() + data + b"\n--==0==--"
    try:
        answer = fs.call(
            "POST",
            f"{fs._location}/upload/storage/v1/b/{quote(bucket)}/o",
            uploadType="multipart",
            headers={"Content-Type": 'multipart/related; boundary="==0=="'},
            data=body,
            json_out=True,
            ifGenerationMatch=str(generation),
        )
    finally:
        fs.invalidate_cache(path)
    return etag_of(answer)


def etag_of(answer) -> str | None:
    """The ETag in a store's answer to a write (s3fs's pipe_file returns S3's PutObject answer, adlfs's Azure's
    upload_blob answer, whose key is ``etag``); on GCS (gcsfs's answer: the object's resource) its generation, which
    its conditions name (ifGenerationMatch); None in any other."""
    if isinstance(answer, dict) and answer.get("kind") == "storage#object":
        return str(answer["generation"]) if answer.get("generation") else None
    tag = (answer.get("ETag") or answer.get("etag")) if isinstance(answer, dict) else None
    return tag if isinstance(tag, str) and tag else None


def delete_if(uri: str, etag: str, endpoint_url: str | None = None) -> None:
    """Delete the small object ``uri`` only where it is still the version ``etag`` (If-Match on S3's DeleteObject,
    on Azure's Delete Blob). FileExistsError where it is another version now (another writer replaced it) or is gone,
    On GCS ``etag`` is the object's generation (ifGenerationMatch on its DELETE).
    NoConditionalWrites where the store or the library refuses the condition (an S3-compatible
    without it); a store that does not answer raises as any delete. A store that ignores the condition deletes as a
    plain delete would."""
    fs, path = filesystem(uri, endpoint_url, quick=True)
    protocol = REMOTE_SCHEMES.get(scheme(uri), ("",))[0]
    if protocol == "gcs":
        bucket, key, _ = fs.split_path(path)
        try:
            with _condition_held(uri, endpoint_url):
                fs.call("DELETE", "b/{}/o/{}", bucket, key, ifGenerationMatch=str(etag))
        finally:
            fs.invalidate_cache(path)
        return
    if protocol == "abfs":  # adlfs's rm passes no condition on: azure-storage-blob's own delete_blob
        from azure.core import MatchConditions

        try:
            with _condition_held(uri, endpoint_url):
                azure_blob(
                    fs, path, lambda blob: blob.delete_blob(etag=etag, match_condition=MatchConditions.IfNotModified)
                )
        finally:
            fs.invalidate_cache(path)
        return
    if protocol != "s3":
        raise NoConditionalWrites(f"{scheme(uri)}:// through fsspec deletes an object only unconditionally")
    bucket, key, _ = fs.split_path(path)
    try:
        with _condition_held(uri, endpoint_url):
            fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=etag)
    finally:
        fs.invalidate_cache(path)


#: how many times a download whose answer is cut off mid-body (a connection dropped while the file came) is started in
#: all: s3fs picks it up where it was cut off only S3Limits.tries times, and a resume's checkpoint of many large files
#: failed the run's start on a second drop of one of them
CUT_OFF_STARTS = 4


def get_file(uri: str, local_path: str, endpoint_url: str | None = None, fs=None, size: int | None = None) -> None:
    """Download one file from ``uri`` to ``local_path`` (parents created); one cut off mid-way is downloaded again
    (CUT_OFF_STARTS), after a pause of up to 0.5, 1, 2 s. ``size`` (the file's, where known: a manifest's, a listing's):
    it waits for its share of TRANSFER_MEMORY first where its library holds it in memory."""
    if fs is None:
        fs, path = filesystem(uri, endpoint_url)
    else:
        path = _path_for(fs, uri)
    os.makedirs(os.path.dirname(os.path.abspath(local_path)), exist_ok=True)
    with _memory.held(in_memory(fs, size or 0, upload=False) if is_remote(uri) else 0):
        _again_if_cut_off(lambda: fs.get_file(path, local_path))


#: a checkpoint's (or a final model's) files sent to, or fetched from, a store at once (each_at_once). One after another,
#: each small file was a round trip of its own and a file under s3fs's multipart size (100 MiB) one request alone; a
#: large file sends its parts max_concurrency (10) x 50 MiB at a time, so up to this many x 500 MiB of parts in memory
FILES_AT_ONCE = 4


#: checkpoints `ftctl sync push` (pull) sends to (fetches from) a store at once (sync.AT_ONCE)
CHECKPOINTS_AT_ONCE = 8
#: connections each S3 filesystem of this process keeps open at most (botocore's max_pool_connections, which aiobotocore
#: makes its aiohttp connector's limit): one for each file `ftctl sync` sends at once. At botocore's default of 10, 32
#: files (8 checkpoints x 4) took turns on 10 connections: aiohttp queues a request beyond the limit (nothing is made and
#: thrown away, as urllib3's "Connection pool is full" would), so 22 waited. gcsfs and adlfs keep aiohttp's own limit of
#: 100 a filesystem.
POOL_CONNECTIONS = CHECKPOINTS_AT_ONCE * FILES_AT_ONCE
#: memory this process's transfers to and from stores hold at once, all of them together (the trainer's uploader and
#: `ftctl sync` run in processes beside others: a trainer, its data loaders). s3fs reads a file under 100 MiB whole
#: before sending it, a larger one 10 parts of 50 MiB at a time, and a download over 50 MiB 10 ranges of 50 MiB at a
#: time, each twice in memory for a while (in_memory): 8 checkpoints x 4 files of 64 MiB pushed at once read 2 GiB of
#: files, and the push's memory grew by 4.3 GB (moto on loopback); within this, by 1.25 GB. A transfer waits, in the
#: order they came, for its share; one larger than the whole (a part of over 100 MiB: a file of over 1 TB) goes alone.
TRANSFER_MEMORY = 1 << 30
#: what a GCS or Azure transfer holds at most (gcsfs: 50 MiB chunks of an upload one after another, a download's
#: prefetch 2 x 4 x 16 MiB; adlfs: a file up to 64 MiB sent whole, larger in 4 MiB blocks; a download 32 MiB then 4 MiB)
OTHER_STORE_MEMORY = 128 << 20


def in_memory(fs, size: int, upload: bool) -> int:
    """The memory a ``size``-byte file takes while ``fs``'s library moves it to (``upload``) or from a store: twice what
    it reads at once (an upload's bytes are copied into aiohttp's send buffer as far as the store has not taken them;
    a download's pieces are joined). s3fs's put_file reads a file under 2 parts (of 50 MiB; more for a file of more
    than 10,000 of them) whole, a larger one max_concurrency parts at a time; its get_file streams a file up to
    default_block_size and fetches a larger one in max_concurrency ranges of it at a time. gcsfs and adlfs:
    OTHER_STORE_MEMORY at most."""
    if not hasattr(fs, "call_s3"):
        return 2 * min(size, OTHER_STORE_MEMORY)
    concurrency = max(1, int(getattr(fs, "max_concurrency", 1) or 1))
    if upload:
        try:
            from s3fs.core import calculate_chunksize

            part = calculate_chunksize(size)
        except ImportError:
            part = 50 << 20
        return 2 * (size if size < min(5 << 30, 2 * part) else min(size, concurrency * part))
    block = int(getattr(fs, "default_block_size", None) or 50 << 20)
    return 0 if size <= block or concurrency == 1 else 2 * min(size, concurrency * block)


class _Memory:
    """TRANSFER_MEMORY, shared by the transfers of this process: each holds its bytes while it runs; those waiting go
    in the order they came (a large file is not passed for ever by small ones)."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.held_now = 0
        self.waiting: list[object] = []

    @contextlib.contextmanager
    def held(self, nbytes: int):
        nbytes = min(nbytes, TRANSFER_MEMORY)
        if nbytes <= 0:
            yield
            return
        turn = object()
        with self.cond:
            self.waiting.append(turn)
            try:
                while self.waiting[0] is not turn or self.held_now + nbytes > TRANSFER_MEMORY:
                    self.cond.wait()
            finally:
                self.waiting.remove(turn)
                self.cond.notify_all()
            self.held_now += nbytes
        try:
            yield
        finally:
            with self.cond:
                self.held_now -= nbytes
                self.cond.notify_all()


_memory = _Memory()


def files_at_once(uri: str | os.PathLike) -> int:
    """How many files of one checkpoint go to, or come from, ``uri`` at once: FILES_AT_ONCE for a store, 1 for a disk
    (one after another, in the manifest's order: what a full disk's clean-up counts on)."""
    return FILES_AT_ONCE if is_remote(uri) else 1


def by_size(entries: list[dict], at_once: int) -> list[dict]:
    """A manifest's file ``entries`` the largest first where several go ``at_once`` (none left to go alone at the
    end), else as they are."""
    return sorted(entries, key=lambda e: -e["size"]) if at_once > 1 else list(entries)


def at_once(work: Callable, items: list, workers: int) -> Iterator[tuple]:
    """``(item, work(item))`` for each of ``items``, in their order, up to ``workers`` of them under way at once (each
    said as soon as it and those before it are done). After a failure nothing more starts; those under way finish and
    are yielded, then the first failure in ``items``' order is raised: said once, as one after another said it. The
    threads are daemons: a Ctrl-C ends the command at once, as it did one after another, what was under way left
    uncommitted (a checkpoint's manifest goes last; a download is moved into place once whole)."""
    if workers <= 1 or len(items) <= 1:
        for item in items:
            yield item, work(item)
        return
    futures = [Future() for _ in items]
    queued = iter(zip(items, futures))
    lock, failed = threading.Lock(), threading.Event()

    def worker() -> None:
        while True:
            with lock:
                item, future = next(queued, (None, None))
            if future is None:
                return
            if failed.is_set():
                future.cancel()
                continue
            future.set_running_or_notify_cancel()
            try:
                future.set_result(work(item))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                failed.set()
                future.set_exception(exc)

    for n in range(min(workers, len(items))):
        threading.Thread(target=worker, name=f"ftctl-sync-{n}", daemon=True).start()
    first = None
    try:
        for item, future in zip(items, futures):
            try:
                result = future.result()
            except CancelledError:
                continue
            except Exception as exc:  # noqa: BLE001 - raised below, once the rest is said
                first = first or exc
                continue
            yield item, result
    finally:
        failed.set()  # a Ctrl-C, or the caller stopped: nothing more starts
    if first is not None:
        raise first


def each_at_once(call: Callable, items, workers: int = FILES_AT_ONCE) -> None:
    """``call(item)`` for each of ``items``, up to ``workers`` at once (at_once: after a failure none more starts, those
    under way finish, then the first failure in ``items``' order is raised, alone)."""
    for _ in at_once(call, list(items), workers):
        pass


def put_dir(local_dir: str, uri: str, endpoint_url: str | None = None) -> None:
    """Upload every file below ``local_dir`` to the same relative names below ``uri``."""
    fs, _ = filesystem(uri, endpoint_url)
    for rel in sorted(local_files(local_dir)):
        put_file(os.path.join(local_dir, rel), join(uri, *rel.split("/")), fs=fs)


def outside(rel) -> bool:
    """Whether ``rel``, a '/'-separated name a store gave (a listing's, a manifest's), would leave the directory it is
    written below: absolute, or with a '..' part. A bucket's names are whoever wrote it's to choose: S3 keeps the key
    run/checkpoint-7/../../../x as written, and a download of it wrote x beside the pull's directory."""
    return not isinstance(rel, str) or rel.startswith("/") or "\0" in rel or ".." in rel.replace("\\", "/").split("/")


def get_dir(uri: str, local_dir: str, endpoint_url: str | None = None) -> None:
    """Download every file below ``uri`` to the same relative names below ``local_dir``; nothing where one of them
    would leave it (outside)."""
    fs, _ = filesystem(uri, endpoint_url)
    sizes = file_sizes(uri, endpoint_url)
    if bad := sorted(rel for rel in sizes if outside(rel)):
        raise FtctlError(
            f"{uri} holds a file named {bad[0]!r}, which would be written outside {local_dir}: nothing downloaded. "
            "No ftctl writes such a name: look at who else writes to this store."
        )
    for rel, size in sorted(sizes.items()):
        get_file(join(uri, *rel.split("/")), os.path.join(local_dir, *rel.split("/")), fs=fs, size=size)


def rm(uri: str, recursive: bool = False, endpoint_url: str | None = None) -> None:
    """Delete a file (or, with ``recursive``, a directory tree); absent paths are no error."""
    fs, path = filesystem(uri, endpoint_url, quick=True)
    try:
        fs.rm(path, recursive=recursive)
    except FileNotFoundError:
        pass


def delete_command(uri: str, endpoint_url: str | None = None, folder: bool = True) -> str:
    """The store's own command line that deletes ``uri`` (``folder``: everything under it, and nothing of a sibling
    whose name it begins), for a message that asks the user to delete it: ftctl deletes nothing of a store on a
    refusal's word, and "delete it from the store" left the user to look the command up. A local path: rm."""
    kind = REMOTE_SCHEMES.get(scheme(uri), ("",))[0]
    _, _, rest = uri.partition("://")
    rest = rest.rstrip("/")
    where = rest + "/" if folder else rest
    if kind == "s3":
        endpoint = s3_endpoint(endpoint_url, uri)
        also = f" --endpoint-url {shlex.quote(endpoint)}" if endpoint else ""
        return f"aws s3 rm{' --recursive' if folder else ''} {shlex.quote('s3://' + where)}{also}"
    if kind == "gcs":
        return f"gcloud storage rm{' --recursive' if folder else ''} {shlex.quote('gs://' + where)}"
    if kind == "abfs":  # az://container/key, abfs://container@account.dfs.core.windows.net/key
        bucket, _, key = rest.partition("/")
        container, _, host = bucket.partition("@")
        account = f" --account-name {shlex.quote(host.split('.')[0])}" if host else ""
        if folder:
            pattern = shlex.quote(f"{key}/*")
            return f"az storage blob delete-batch --source {shlex.quote(container)} --pattern {pattern}{account}"
        return f"az storage blob delete --container-name {shlex.quote(container)} --name {shlex.quote(key)}{account}"
    return f"rm {'-r ' if folder else ''}{shlex.quote(uri.removeprefix('file://'))}"


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


# ------------------------------------------------------------------------------- store errors
class StorageError(FtctlError):
    """A store refused or could not be reached: ``kind`` says which (one of :data:`ERROR_KINDS`),
    ``what`` the failure and ``fix`` what to set; the message is both on one line."""

    def __init__(self, kind: str, what: str, fix: str):
        super().__init__(f"{what}: {fix}")
        self.kind, self.what, self.fix = kind, what, fix


#: what :func:`store_error` tells apart
ERROR_KINDS = ("no-credentials", "bad-credentials", "no-bucket", "denied", "timeout", "unreachable", "bad-endpoint")
ERROR_KINDS += ("offline",)  # HF_HUB_OFFLINE beside an hf:// URI, which is read from the Hub itself
ERROR_KINDS += ("busy", "failing")  # 503 SlowDown (throttled) and a store's own 5xx or a cut-off answer: transient
ERROR_KINDS += ("full",)  # a write refused for the bucket's quota or the store's space (507, QuotaExceeded)

#: per fsspec protocol: (what to set for credentials, the same in short, what its buckets are called)
_STORE_HINTS = {
    "s3": ("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)", "AWS_ACCESS_KEY_ID / AWS_PROFILE", "bucket"),
    "gcs": (
        "GOOGLE_APPLICATION_CREDENTIALS (or `gcloud auth application-default login`)",
        "GOOGLE_APPLICATION_CREDENTIALS",
        "bucket",
    ),
    "abfs": (
        "AZURE_STORAGE_ACCOUNT_NAME with AZURE_STORAGE_KEY or AZURE_STORAGE_SAS_TOKEN (or "
        "AZURE_STORAGE_CONNECTION_STRING; or `az login`, or a managed identity with a Storage Blob Data role)",
        "AZURE_STORAGE_*",
        "container",
    ),
    "hf": ("HF_TOKEN (and accept a gated dataset's conditions on its page)", "HF_TOKEN", "repository"),
}


def _container(uri: str) -> str:
    """The bucket (container) an object-store URI names; on the Hub the repository (``datasets/ORG/NAME``)."""
    path = uri.split("://", 1)[-1].strip("/")
    if scheme(uri) == "hf":
        parts = path.split("/")
        return "/".join(parts[:3] if parts[0] in ("datasets", "spaces") else parts[:2])
    return path.split("/", 1)[0]


# exception class names (botocore, aiohttp, google-auth, azure) and error codes of each kind
_NO_CREDENTIALS = {"NoCredentialsError", "PartialCredentialsError", "ProfileNotFound", "DefaultCredentialsError"}
_NO_CREDENTIALS |= {"CredentialUnavailableError"}  # azure-identity's: no identity of any kind found
#: said where no credentials were found: adlfs with neither a connection string nor an account; azure-identity's chain
#: (an account name alone) finding none
_NO_CREDENTIALS_SAID = ("must provide either a connection_string or account_name", "failed to retrieve a token")
_AZURE_NO_IDENTITY = "defaultazurecredential failed to retrieve a token"
_BAD_CREDENTIALS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"}
_BAD_CREDENTIALS |= {"AuthenticationFailed", "InvalidAuthenticationInfo"}  # Azure's: a wrong key, a bad SAS
_AZURE_UNSIGNED = "server failed to authenticate the request"  # Azure's message for a signature its key refuses
_DENIED = {"AccessDenied", "AllAccessDisabled", "403", "Forbidden", "AuthorizationFailure"}
_DENIED |= {"AuthorizationPermissionMismatch", "AuthorizationResourceTypeMismatch", "InsufficientAccountPermissions"}
_NO_BUCKET = {"NoSuchBucket", "ContainerNotFound"}
_TIMEOUT = {"ConnectTimeoutError", "ReadTimeoutError", "ServerTimeoutError", "TimeoutError", "TimeoutException"}
#: a store that throttles (S3's 503 SlowDown, GCS's 429) and one failing on its side (500, 502, 504, an answer cut off
#: mid-body): what S3_LIMITS' attempts retry; 501 NotImplemented (a condition the store lacks) is neither
_BUSY = {"SlowDown", "503", "ServiceUnavailable", "Throttling", "ThrottlingException", "RequestLimitExceeded", "429"}
_BUSY |= {"TooManyRequests", "TooManyRequestsException", "SlowDownRead", "SlowDownWrite", "ServerBusy"}
_FAILING = {"InternalError", "500", "502", "504", "BadGateway", "GatewayTimeout", "InternalServerError"}
#: a write refused because the store (or the bucket's quota) is full: Ceph RGW's 403 QuotaExceeded, MinIO's 507
#: XMinioStorageFull and bucket quota, WebDAV-style 507 Insufficient Storage of S3-compatible gateways
_FULL = {"QuotaExceeded", "XMinioStorageFull", "XMinioAdminBucketQuotaExceeded", "507", "InsufficientStorage"}
_CUT_OFF = {"ClientPayloadError", "IncompleteRead", "ResponseStreamingError", "ContentLengthError"}
# s3fs's, where the object was written again between its size asked and its bytes read (it reads by the ETag it was
# told): a lease its holder renewed meanwhile, every renew_s. Asked again, it is the new one.
_REWRITTEN = {"FileExpired"}
_UNREACHABLE = {
    "ConnectError",  # httpx's (huggingface_hub)
    "EndpointConnectionError",
    "ClientConnectorError",
    "ConnectionRefusedError",
    "ServerDisconnectedError",
    "ProxyConnectionError",
    "ConnectionClosedError",
}


def storage_error(kind: str, uri: str | os.PathLike, endpoint_url: str | None = None, detail: str = "") -> StorageError:
    """The one-line error of ``kind`` (one of :data:`ERROR_KINDS`) for ``uri``: which failure,
    and what to set."""
    uri = os.fspath(uri)
    protocol = REMOTE_SCHEMES.get(scheme(uri), ("s3",))[0]
    creds, creds_short, bucket_word = _STORE_HINTS.get(protocol, ("the store's credentials",) * 2 + ("bucket",))
    bucket = _container(uri)
    if protocol == "s3":
        endpoint = s3_endpoint(endpoint_url, uri)
        where = f"the S3 endpoint {endpoint}" if endpoint else "AWS S3 (no endpoint set)"
        endpoint_fix = "-o s3_endpoint_url=URL (ftctl sync: --endpoint-url URL) or AWS_ENDPOINT_URL"
    elif protocol == "hf":
        endpoint = os.environ.get("HF_ENDPOINT")
        where = f"the Hugging Face Hub at {endpoint}" if endpoint else "the Hugging Face Hub"
        endpoint_fix = "the repository id (hf://datasets/ORG/NAME/FILES) or HF_ENDPOINT"
    elif protocol == "gcs":
        emulator = gcs_emulator()
        where = f"the GCS emulator at {emulator}" if emulator else "Google Cloud Storage"
        endpoint_fix = "STORAGE_EMULATOR_HOST"  # gcsfs's endpoint: an emulator's, unset for GCS itself
    elif protocol == "abfs":
        endpoint, account = azure_endpoint(), azure_account()
        if endpoint:  # Azurite, a private endpoint
            where, endpoint_fix = (
                f"the Azure blob endpoint {endpoint}",
                "BlobEndpoint in AZURE_STORAGE_CONNECTION_STRING",
            )
        else:
            where = f"Azure storage account {account!r}" if account else "Azure Blob Storage"
            endpoint_fix = "AZURE_STORAGE_ACCOUNT_NAME (or the AccountName in AZURE_STORAGE_CONNECTION_STRING)"
    else:
        where, endpoint_fix = f"the {protocol} store", "the store's account settings"
    messages = {
        "no-credentials": (f"No credentials for {uri}{detail}", f"set {creds}."),
        "bad-credentials": (
            f"{where} rejected the credentials for {uri}{detail}",
            f"check {creds}, and that {endpoint_fix} names the store they belong to.",
        ),
        "no-bucket": (
            f"No {bucket_word} {bucket!r} at {where}",
            f"create it, or fix the {bucket_word} name in {uri} (or {endpoint_fix} if it lives on another store).",
        ),
        "denied": (
            f"Access denied to {uri} at {where}{detail}",
            f"the credentials in use ({creds_short}) need read, list, write and delete rights on {bucket_word} "
            f"{bucket!r}; grant them or use other credentials.",
        ),
        "timeout": (
            f"{where} did not answer in time for {uri}",
            f"check {endpoint_fix} and the network (proxy, VPN, firewall).",
        ),
        "unreachable": (
            f"Cannot reach {where} for {uri}",
            f"check {endpoint_fix} (is the store running there?) and the network.",
        ),
        "bad-endpoint": (f"{where} is not a usable URL{detail}", f"fix {endpoint_fix} (e.g. http://host:9000)."),
        "busy": (
            f"{where} kept refusing requests for {uri} as too many{detail}, through ftctl's retries",
            f"it throttles this {bucket_word} now: try again in a few minutes (many jobs or nodes writing one "
            f"{bucket_word} at once slow it down).",
        ),
        "full": (
            f"{where} is full for {uri}{detail}: it refuses new objects for lack of space or the {bucket_word}'s quota",
            f"free space in {bucket_word} {bucket!r} (`ftctl sync ls` lists a run's checkpoints; older runs) or raise "
            "its quota; a trainer keeps its checkpoints on its node meanwhile and uploads them once the store takes "
            "them.",
        ),
        "failing": (
            f"{where} kept failing requests for {uri}{detail}, through ftctl's retries",
            "an error on the store's side: try again in a few minutes; if it lasts, check the store's status "
            f"page or its operator (or {endpoint_fix} if it names the wrong store).",
        ),
    }
    if protocol == "hf":  # read only, and a private or gated repository answers as a missing one
        network = "check the network (proxy, firewall: the nodes need the Hub), or HF_ENDPOINT for a mirror."
        messages["no-bucket"] = (
            f"No dataset repository {bucket!r} on {where}, or it is private or gated",
            f"check the id in {uri} (hf://datasets/ORG/NAME/FILES); for a private or gated one set {creds}.",
        )
        messages["unreachable"] = (f"Cannot reach {where} for {uri}", network)
        messages["timeout"] = (f"{where} did not answer in time for {uri}", network)
        messages["offline"] = (
            f"HF_HUB_OFFLINE is set, and {uri} is read from {where} itself (its files are listed there)",
            "unset HF_HUB_OFFLINE where the Hub can be reached (the job's machines too), or download the files "
            "(hf download ORG/NAME --repo-type dataset --local-dir DIR) and give their path.",
        )
    if protocol == "gcs" and not gcs_emulator():  # Google's own endpoint: only the network can be wrong
        network = "check the network (proxy, firewall: the nodes need storage.googleapis.com)."
        messages["unreachable"] = (f"Cannot reach {where} for {uri}", network)
        messages["timeout"] = (f"{where} did not answer in time for {uri}", network)
    what, fix = messages[kind]
    return StorageError(kind, redact(what), redact(fix))


def store_error(exc: BaseException, uri: str | os.PathLike, endpoint_url: str | None = None) -> StorageError | None:
    """The one-line :class:`StorageError` for a failure of the store holding ``uri``, or None when
    ``exc`` is none of :data:`ERROR_KINDS` (a missing object, a bug: the caller lets it through)."""
    if isinstance(exc, StorageError):
        return exc
    if not is_remote(uri):
        return None
    chain = _chain(exc)
    names = {cls.__name__ for e in chain for cls in type(e).__mro__}
    if "OfflineModeIsEnabled" in names or (_is_hf(uri) and hub.offline()):  # whatever failed, offline is why
        return storage_error("offline", uri, endpoint_url)
    responses = [getattr(e, "response", None) for e in chain]  # botocore's are dicts; httpx's are not
    codes = {str(r.get("Error", {}).get("Code", "")) for r in responses if isinstance(r, dict)} - {""}
    codes |= {code for e in chain if (code := _azure_code(e))}
    text = " ".join(str(e) for e in chain).lower()
    if names & _NO_CREDENTIALS or any(said in text for said in _NO_CREDENTIALS_SAID):
        profile = os.environ.get("AWS_PROFILE")
        detail = f" (AWS_PROFILE={profile!r} is no profile in ~/.aws)" if "ProfileNotFound" in names else ""
        if _AZURE_NO_IDENTITY in text:  # an account name alone: DefaultAzureCredential tried and found none
            detail = (
                f" (Azure storage account {azure_account()!r} with no key, SAS or connection string, and no Azure "
                "identity found here: no managed identity, workload identity, AZURE_CLIENT_ID/AZURE_CLIENT_SECRET/"
                "AZURE_TENANT_ID or Azure CLI login)"
            )
        said = storage_error("no-credentials", uri, endpoint_url, detail)
        endpoint = s3_endpoint(endpoint_url, uri) if scheme(os.fspath(uri)) == "s3" else None
        if endpoint and not _answers(endpoint):  # botocore signs before it connects: a closed port is never reached
            down = storage_error("unreachable", uri, endpoint_url)
            fix = f"{said.fix.rstrip('.')}; and {down.what[0].lower()}{down.what[1:]} either: {down.fix}"
            return StorageError("no-credentials", said.what, fix)
        return said
    if codes & _BAD_CREDENTIALS or _AZURE_UNSIGNED in text:  # Azure says a wrong key so (Azurite: with the code
        # AuthorizationFailure, which Azure itself gives to a request its firewall or a SAS's rights refuse)
        bad = codes & _BAD_CREDENTIALS or codes & {"AuthorizationFailure"} or {"403"}
        return storage_error("bad-credentials", uri, endpoint_url, f" ({', '.join(sorted(bad))})")
    if codes & _NO_BUCKET or "bucket does not exist" in text:
        return storage_error("no-bucket", uri, endpoint_url)
    if _codes(exc) & _FULL or "insufficient storage" in text:
        status = {c for c in _codes(exc) if c.isdigit()}
        return storage_error("full", uri, endpoint_url, f" ({_said((_codes(exc) & _FULL) | status or {'507'})})")
    if codes & _DENIED or "PermissionError" in names:
        return storage_error("denied", uri, endpoint_url)
    busy, failing = _codes(exc) & _BUSY, _codes(exc) & _FAILING
    if busy:
        return storage_error("busy", uri, endpoint_url, f" ({_said(busy)})")
    if failing:
        return storage_error("failing", uri, endpoint_url, f" ({_said(failing)})")
    if names & _CUT_OFF:
        return storage_error("failing", uri, endpoint_url, " (its answers were cut off mid-way)")
    if names & _TIMEOUT:
        return storage_error("timeout", uri, endpoint_url)
    if names & _UNREACHABLE or "ConnectionError" in names:
        return storage_error("unreachable", uri, endpoint_url)
    if "ValueError" in names and "endpoint" in text:
        return storage_error("bad-endpoint", uri, endpoint_url)
    return None


def _answers(endpoint: str, timeout_s: float = 1.0) -> bool:
    """Whether a TCP connection to the host and port of the URL ``endpoint`` opens within ``timeout_s``."""
    import socket
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(endpoint)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        with socket.create_connection((parts.hostname or "", port), timeout=timeout_s):
            return True
    except (OSError, ValueError):  # refused, no route, no such host, no answer in time; a port that is no number
        return False


#: StorageError kinds of a store that is down for now (503 SlowDown, 5xx, a cut-off answer, no answer in time, a
#: connection refused or reset): what may pass; the others (credentials, access, no bucket, a bad endpoint) are settings
DOWN_KINDS = ("busy", "failing", "timeout", "unreachable")
_NO_NAME = {"gaierror", "ClientConnectorDNSError"}  # a host name that does not resolve: a setting, not an outage


def store_down(exc: BaseException, uri: str | os.PathLike, endpoint_url: str | None = None) -> StorageError | None:
    """:func:`store_error` of ``exc`` where it says the store is down for now (DOWN_KINDS: asking again later may
    succeed); None for anything else (a setting to fix: credentials, bucket, endpoint, a host name that does not
    resolve; or no store error at all)."""
    said = store_error(exc, uri, endpoint_url)
    if said is None or said.kind not in DOWN_KINDS:
        return None
    if {cls.__name__ for e in _chain(exc) for cls in type(e).__mro__} & _NO_NAME:
        return None
    return said


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from (s3fs's OSError from botocore's ClientError ...)."""
    chain, e = [], exc
    while e is not None and e not in chain and len(chain) < 8:
        chain.append(e)
        e = e.__cause__ or e.__context__
    return chain


def _said(codes: set[str]) -> str:
    """'503 SlowDown': a store's HTTP status and error code as it answered them."""
    return " ".join(sorted(codes, key=lambda c: (not c.isdigit(), c)))


def _codes(exc: BaseException) -> set[str]:
    """The store's error codes and HTTP statuses in ``exc``'s chain (botocore's responses, azure-core's errors)."""
    chain = _chain(exc)
    responses = [r for e in chain if isinstance(r := getattr(e, "response", None), dict)]
    codes = {str(r.get("Error", {}).get("Code", "")) for r in responses}
    codes |= {str(r.get("ResponseMetadata", {}).get("HTTPStatusCode", "")) for r in responses}
    for e in chain:
        if type(e).__module__.startswith("azure."):  # HttpResponseError: status_code, and the x-ms-error-code
            codes |= {str(getattr(e, "status_code", None) or ""), _azure_code(e) or ""}
    return codes - {""}


def _azure_code(exc: BaseException) -> str | None:
    """Azure's error code (x-ms-error-code: ContainerNotFound, AuthenticationFailed, ConditionNotMet ...) of an
    azure-core error; None for any other."""
    if not type(exc).__module__.startswith("azure."):
        return None
    code = getattr(exc, "error_code", None)
    return str(getattr(code, "value", code) or "") or None


@contextlib.contextmanager
def storage_errors(uri: str | os.PathLike, endpoint_url: str | None = None):
    """Inside the block, a failure of the store holding ``uri`` becomes its one-line
    :class:`StorageError` (no traceback for the user); anything else passes through unchanged."""
    try:
        yield
    except Exception as exc:
        err = store_error(exc, uri, endpoint_url)
        if err is None or err is exc:
            raise
        raise err from exc


def _is_hf(uri) -> bool:
    return REMOTE_SCHEMES.get(scheme(os.fspath(uri)), ("",))[0] == "hf"


def bucket_exists(uri: str | os.PathLike, endpoint_url: str | None = None, quick: bool = False) -> bool:
    """Whether the bucket (container) of an object-store URI exists; True for anything else."""
    if not is_remote(uri):
        return True
    if _is_hf(uri) and hub.offline():  # its exists() would answer False
        raise storage_error("offline", uri, endpoint_url)
    fs, _ = filesystem(uri, endpoint_url, quick=quick)
    bucket = _container(os.fspath(uri))
    if not hasattr(fs, "call_s3"):
        return bool(fs.exists(bucket))
    try:  # s3fs's exists() answers False for every failure (no credentials, endpoint down): ask directly
        fs.call_s3("head_bucket", Bucket=bucket)
    except FileNotFoundError:
        return False
    return True


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
    "HF_TOKEN",
)


#: per fsspec protocol: the variables of its credential chain (and its endpoint and region) that a job reaching
#: the store must find set, as they are where it is launched; a name ending in ``*`` stands for every name it begins
JOB_ENV = {
    "s3": (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_DEFAULT_REGION",
        "AWS_REGION",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_PROFILE",
        "AWS_SHARED_CREDENTIALS_FILE",
        "AWS_CONFIG_FILE",
    ),
    "gcs": ("GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT", "STORAGE_EMULATOR_HOST"),
    "abfs": ("AZURE_STORAGE_*", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET", "AZURE_TENANT_ID"),
    "hf": ("HF_TOKEN", "HF_ENDPOINT"),
}
#: of those, the ones whose value is the path of a file of this machine
PATH_ENV = ("AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "GOOGLE_APPLICATION_CREDENTIALS")
#: the ones that mean this machine's files: those paths, and a profile of ~/.aws (AWS_PROFILE). A job that cannot see
#: the files must not get them: boto3 fails on a profile it cannot find even where AWS_ACCESS_KEY_ID is set.
FILE_ENV = ("AWS_PROFILE", *PATH_ENV)
#: per fsspec protocol: where its credentials live in a home directory, when no variable names them (aws configure,
#: gcloud auth application-default login)
HOME_CREDENTIALS = {"s3": ".aws", "gcs": ".config/gcloud"}


def job_env(uris, files: bool, environ=None) -> list[str]:
    """The NAMES (never values) of the credential variables set here that a job reaching the object stores of
    ``uris`` needs, sorted: it passes them by name (docker's ``-e NAME``, SkyPilot's secrets). ``files``: the job
    sees this machine's credential files (docker mounts them); without, FILE_ENV is left out."""
    environ = os.environ if environ is None else environ
    wanted = {name for p in _protocols(uris) for name in JOB_ENV.get(p, ())}
    names = {n for n in environ if n in wanted or any(w.endswith("*") and n.startswith(w[:-1]) for w in wanted)}
    return sorted(n for n in names if environ[n] and (files or n not in FILE_ENV))


def home_credentials(uris, home: str | None = None) -> list[str]:
    """The directories of this machine's home holding credentials of the stores of ``uris`` (~/.aws ...) that
    exist, as paths relative to the home."""
    home = home or os.path.expanduser("~")
    rels = sorted({HOME_CREDENTIALS[p] for p in _protocols(uris) if p in HOME_CREDENTIALS})
    return [rel for rel in rels if os.path.isdir(os.path.join(home, rel))]


def _protocols(uris) -> set[str]:
    return {REMOTE_SCHEMES[scheme(u)][0] for u in uris if u and is_remote(u)}


def redact(text: str, environ=None) -> str:
    """``text`` with the value of every store credential variable in the environment (``environ``, default
    os.environ) masked; every store error ftctl logs goes through this, and secret_checks.redacted (every error line
    the CLI prints) starts with it."""
    environ = os.environ if environ is None else environ
    for var in SECRET_ENV:
        value = environ.get(var)
        if value and len(value) >= 4:
            text = text.replace(value, f"<{var}>")
    # the connection string's secrets where a message quotes them alone (azure-core's errors never the whole string)
    for part in environ.get("AZURE_STORAGE_CONNECTION_STRING", "").split(";"):
        name, _, value = part.partition("=")
        if name.strip() in ("AccountKey", "SharedAccessSignature") and len(value) >= 4:
            text = text.replace(value, f"<{name.strip()} of AZURE_STORAGE_CONNECTION_STRING>")
    return text


def _path_for(fs, uri: str) -> str:
    """The fsspec path of ``uri`` for an already-made ``fs``."""
    uri = os.fspath(uri)
    kind = scheme(uri)
    if kind in ("", "file", "local"):
        path = uri.split("://", 1)[1] if kind else uri
        return os.path.abspath(os.path.expanduser(path))
    if kind == "memory":
        return fs._strip_protocol(uri)
    return uri.split("://", 1)[1].strip("/")
