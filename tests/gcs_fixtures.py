"""A GCS-protocol server on loopback for tests: gcp-storage-emulator (pure Python, in memory), in a process of its own.

gcsfs reaches it through STORAGE_EMULATOR_HOST, its own variable (anonymous access, no credentials), as a trainer in
a subprocess does. Stopping the process is a real outage (SIGKILL: the port refuses connections from then on).

    from tests.gcs_fixtures import GcsEmulator
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

# binds port 0 (the kernel's pick: no race with another test's listener or the other xdist worker's server) and
# prints the port it got once it serves
_SERVE = """
import sys, time
from gcp_storage_emulator.server import create_server
server = create_server(sys.argv[1], int(sys.argv[2]), in_memory=True)
server.start()
print("port", server._api._httpd.server_address[1], flush=True)
while True:
    time.sleep(3600)
"""


class GcsEmulator:
    """A gcp-storage-emulator process on loopback; ``endpoint`` is what STORAGE_EMULATOR_HOST takes."""

    def __init__(self, workdir: Path, host: str = "127.0.0.1"):
        self.host = host
        self.port: int | None = None
        self.workdir = Path(workdir)
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = self.workdir / "gcs-emulator.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _SERVE, self.host, str(self.port or 0)],
            stdout=subprocess.PIPE,
            stderr=open(log, "ab"),
            env={k: v for k, v in os.environ.items() if not k.startswith(("STORAGE_EMULATOR", "GOOGLE_"))},
            start_new_session=True,
            text=True,
        )
        line = self.proc.stdout.readline()  # the server's "port N", or '' where it exited
        if not line.startswith("port "):
            self.proc.kill()
            raise RuntimeError(f"gcp-storage-emulator did not start: see {log}")
        self.port = int(line.split()[1])

    def kill(self) -> None:
        """A hard outage: SIGKILL; the port refuses connections from now on."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def make_bucket(self, name: str | None = None) -> str:
        import requests

        name = name or f"ftctl-{uuid.uuid4().hex[:12]}"
        r = requests.post(f"{self.endpoint}/storage/v1/b", json={"name": name}, params={"project": "test"}, timeout=30)
        r.raise_for_status()
        return name


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory):
    server = GcsEmulator(tmp_path_factory.mktemp("gcs"))
    server.start()
    yield server
    server.kill()


@pytest.fixture
def gcs_env(monkeypatch):
    """No Google credentials or project of this machine's: gcsfs against an emulator goes anonymous."""
    for var in list(os.environ):
        if var.startswith(("GOOGLE_", "GCLOUD_", "CLOUDSDK_", "STORAGE_EMULATOR")):
            monkeypatch.delenv(var)
    monkeypatch.setenv("CLOUDSDK_CONFIG", "/nonexistent/gcloud")  # no ~/.config/gcloud application default


@pytest.fixture
def gcs_bucket(gcs_emulator, gcs_env, monkeypatch) -> str:
    """``gs://<fresh bucket>`` on the session's emulator, reached through STORAGE_EMULATOR_HOST (gcsfs's variable)."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator.endpoint)
    return f"gs://{gcs_emulator.make_bucket()}"


def wait_until(predicate, seconds: float = 10.0) -> bool:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()
