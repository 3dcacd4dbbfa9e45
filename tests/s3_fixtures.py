"""A real S3-protocol server on loopback for tests: moto's standalone ``moto_server``.

It runs as its own process, so stopping it is a real outage (SIGKILL: every connection drops,
the port refuses). moto keeps objects in memory, so a restarted server starts empty; with
``record=True`` it journals every request (moto's recorder) and :meth:`MotoS3.restart` can
replay the journal, which gives back the objects it had acknowledged: a store that comes back
with its data, as S3, MinIO or R2 do after an outage.

    from tests.s3_fixtures import MotoS3, FAKE_SECRET, FAKE_KEY_ID
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

FAKE_KEY_ID = "AKIAFTCTLTESTKEY0001"
FAKE_SECRET = "ftctl+test+secret/MUST-NOT-LEAK/0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoS3:
    """A ``moto_server`` process on host:port (loopback unless a host address is given)."""

    def __init__(self, workdir: Path, port: int | None = None, record: bool = False, host: str = "127.0.0.1"):
        self.host = host
        self.port = port  # None: the kernel's pick, read from the server's own line (no race with another binder)
        self.workdir = Path(workdir)
        self.record = record
        self.journal = self.workdir / "moto-journal.jsonl"
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        if self.record:
            env.update(MOTO_ENABLE_RECORDING="True", MOTO_RECORDER_FILEPATH=str(self.journal))
        self.workdir.mkdir(parents=True, exist_ok=True)
        path = self.workdir / "moto-server.log"
        start = path.stat().st_size if path.exists() else 0  # this start's lines: the log is appended to
        log = open(path, "ab")
        # port 0 the first time: the server binds a port the kernel picks and names it in its "Running on" line. A
        # port picked here (free_port) and bound by the server a second later could be taken meanwhile by another
        # test's listener or the other xdist worker's server, which this check then connected to.
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port or 0)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto_server exited: see {path}")
            if self.port is None:
                with open(path, "rb") as fh:
                    fh.seek(start)
                    found = re.search(rb"Running on http://[^:/\s]+:(\d+)", fh.read())
                if found:
                    self.port = int(found.group(1))
            if self.port is not None:
                try:
                    with socket.create_connection((self.host, self.port), timeout=0.2):
                        return
                except OSError:
                    pass
            time.sleep(0.05)
        raise RuntimeError("moto_server did not start within 30 s")

    def kill(self) -> None:
        """A hard outage: SIGKILL; the port refuses connections from now on."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def restart(self, replay: bool) -> None:
        """Start again on the same port; ``replay`` restores the acknowledged objects."""
        self.start()
        if replay:
            import requests

            r = requests.post(f"{self.endpoint}/moto-api/recorder/replay-recording", timeout=60)
            r.raise_for_status()

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=FAKE_KEY_ID,
            aws_secret_access_key=FAKE_SECRET,
        )

    def make_bucket(self, name: str | None = None) -> str:
        name = name or f"ftctl-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name


@pytest.fixture(scope="session")
def moto_s3(tmp_path_factory):
    server = MotoS3(tmp_path_factory.mktemp("moto"))
    server.start()
    yield server
    server.kill()


class SilentEndpoint:
    """A TCP server on loopback that accepts every connection and never answers (a hung store, a proxy that
    swallows requests); ``requests`` counts the connections it was sent, each an attempt of some request."""

    def __init__(self):
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(64)
        self.server.settimeout(0.1)
        self.held: list[socket.socket] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.getsockname()[1]}"

    @property
    def requests(self) -> int:
        return len(self.held)

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                self.held.append(self.server.accept()[0])
            except OSError:
                pass

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        for c in self.held:
            c.close()
        self.server.close()


@pytest.fixture
def silent_s3(s3_env, monkeypatch):
    """A :class:`SilentEndpoint`, with :data:`ftctl.storage.S3_LIMITS` shortened so that a test waits seconds: "ask"
    reads 1 s, one attempt; "transfer" 1 s, 2 attempts x 2 tries (the limits' shape, not their values)."""
    from ftctl import storage

    monkeypatch.setitem(storage.S3_LIMITS, "ask", storage.S3Limits(connect_s=1, read_s=1, attempts=1, tries=1))
    monkeypatch.setitem(storage.S3_LIMITS, "transfer", storage.S3Limits(connect_s=1, read_s=1, attempts=2, tries=2))
    server = SilentEndpoint()
    yield server
    server.close()


def within(seconds: float, call, *args, **kwargs):
    """``call(*args, **kwargs)``'s result or exception, failing the test where it takes longer than ``seconds`` (it is
    left running in a daemon thread, so a hang fails the test instead of stopping the suite)."""
    box: list = []

    def run():
        try:
            box.append(("ok", call(*args, **kwargs)))
        except BaseException as e:  # noqa: BLE001 - handed to the test
            box.append(("raised", e))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert box, f"{getattr(call, '__name__', call)} took more than {seconds} s"
    kind, value = box[0]
    if kind == "raised":
        raise value
    return value


def fake_aws(monkeypatch, tmp_path: Path, endpoint: str | None = None) -> None:
    """The standard AWS variables, pointing at nothing real: dummy credentials (that the tests look for in logs and
    manifests), no config files, one region; ``endpoint``: AWS_ENDPOINT_URL (the session's moto server). For a
    module's fixture, ``monkeypatch`` is a ``pytest.MonkeyPatch.context()``."""
    for var in list(os.environ):
        if var.startswith("AWS_"):
            monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", FAKE_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    if endpoint:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)


@pytest.fixture
def s3_env(monkeypatch, tmp_path):
    """fake_aws for a test."""
    fake_aws(monkeypatch, tmp_path)


@pytest.fixture
def s3_bucket(moto_s3, s3_env, monkeypatch) -> str:
    """``s3://<fresh bucket>`` on the session's moto server, reached through AWS_ENDPOINT_URL."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_s3.endpoint)
    return f"s3://{moto_s3.make_bucket()}"


def assert_no_secrets(*texts: str, key_id: bool = True) -> None:
    """Neither the secret key nor (with ``key_id``) the access key id is in any of ``texts``.

    botocore's own DEBUG log prints the Authorization header, which names the key id (never the
    secret); pass such text with ``key_id=False``, and ftctl's records through
    :func:`ftctl_log_text`."""
    for text in texts:
        assert FAKE_SECRET not in text
        if key_id:
            assert FAKE_KEY_ID not in text


def ftctl_log_text(caplog) -> str:
    """Every record ftctl itself logged, formatted with its arguments."""
    return "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("ftctl"))


def assert_logs_clean(caplog) -> None:
    """No credential in ftctl's log records; no secret in any library's (botocore DEBUG names
    the access key id in the Authorization header it prints)."""
    assert_no_secrets(ftctl_log_text(caplog))
    assert_no_secrets(caplog.text, key_id=False)


def make_checkpoint(run_dir: Path, step: int, files: dict[str, bytes] | None = None) -> Path:
    """A checkpoint-<step> directory with some files (no manifest)."""
    ckpt = Path(run_dir) / f"checkpoint-{step}"
    ckpt.mkdir(parents=True, exist_ok=True)
    files = files or {
        "model.safetensors": os.urandom(3000) + bytes([step % 256]),
        "optimizer.pt": os.urandom(5000),
        "trainer_state.json": f'{{"global_step": {step}}}'.encode(),
        "global_step/zero_pp_rank_0_optim_states.pt": os.urandom(700),
    }
    for rel, data in files.items():
        p = ckpt / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return ckpt
