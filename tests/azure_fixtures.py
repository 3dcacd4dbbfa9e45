"""An Azure Blob server on loopback for tests: Azurite's blob service (Microsoft's emulator, a node program that
scripts/setup.sh installs into .azurite/ at the version pinned there), in memory, in a process of its own.

adlfs reaches it as a user reaches an Azure storage account: through AZURE_STORAGE_CONNECTION_STRING, with Azurite's
well-known development account (devstoreaccount1, its published key: no secret of anyone's) and BlobEndpoint naming
the loopback port. Stopping the process is a real outage (SIGKILL: the port refuses connections from then on).

Without node and npm (or before scripts/setup.sh ran) the tests that use it fail, saying how to install it: a skipped
test would read as a passing one.

    from tests.azure_fixtures import Azurite
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: where scripts/setup.sh installs Azurite (npm --prefix; ignored by git)
AZURITE_HOME = REPO / ".azurite"
AZURITE_BIN = AZURITE_HOME / "node_modules" / ".bin" / "azurite-blob"
#: Azurite's development account and key, published in its README (the same on every machine)
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
_LISTENS = re.compile(r"successfully listens on (https?://\S+):(\d+)")


def not_installed() -> str | None:
    """Why Azurite cannot start here (not installed, or no node to run it), as the fix; None where it can."""
    import shutil

    if AZURITE_BIN.exists() and shutil.which("node"):
        return None
    return (
        f"Azurite (the Azure Blob emulator these tests run against) is not installed in {AZURITE_HOME}: install node "
        "(v18 or later) and npm (Debian/Ubuntu: apt-get install nodejs npm; else https://nodejs.org), then run "
        "bash scripts/test.sh again (its set-up installs it there: FTCTL_SETUP_TESTS=1 bash scripts/setup.sh)"
    )


class Azurite:
    """An azurite-blob process on loopback, in memory; ``connection_string`` is what AZURE_STORAGE_CONNECTION_STRING
    takes."""

    def __init__(self, workdir: Path, host: str = "127.0.0.1"):
        self.host = host
        self.port: int | None = None
        self.workdir = Path(workdir)
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        """The account's blob endpoint (Azurite's path-style URL: the account is the first part of the path)."""
        return f"http://{self.host}:{self.port}/{ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint={self.endpoint};"
        )

    def start(self) -> None:
        if (why := not_installed()) is not None:
            pytest.fail(why, pytrace=False)
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = self.workdir / "azurite.log"
        # port 0: the kernel's pick (no race with another listener, or the other xdist worker's Azurite), named in
        # its "successfully listens on" line. --skipApiVersionCheck: the azure-storage-blob of constraints.txt may
        # speak a newer API version than this Azurite knows (it answers 400 to each request otherwise)
        args = [str(AZURITE_BIN), "--blobHost", self.host, "--blobPort", str(self.port or 0), "--inMemoryPersistence"]
        args += ["--extentMemoryLimit", "256", "--disableTelemetry", "--skipApiVersionCheck"]
        self.proc = subprocess.Popen(
            args,
            cwd=self.workdir,  # anything it writes (none in memory) stays in the test's folder
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            text=True,
        )
        seen = []
        for (
            line
        ) in self.proc.stdout:  # its start lines, then the access log (read on by a thread: the pipe never fills)
            seen.append(line)
            if m := _LISTENS.search(line):
                self.port = int(m.group(2))
                break
        else:
            self.proc.kill()
            log.write_text("".join(seen))
            raise RuntimeError(f"Azurite did not start: see {log}")
        import threading

        def drain(out=self.proc.stdout, path=log):
            with open(path, "a") as f:
                f.writelines(seen)
                for line in out:
                    f.write(line)

        threading.Thread(target=drain, daemon=True, name="azurite-log").start()

    def kill(self) -> None:
        """A hard outage: SIGKILL; the port refuses connections from now on."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def make_container(self, name: str | None = None) -> str:
        from azure.storage.blob import BlobServiceClient

        name = name or f"ftctl-{uuid.uuid4().hex[:12]}"
        with BlobServiceClient.from_connection_string(self.connection_string) as client:
            client.create_container(name)
        return name


@pytest.fixture(scope="session")
def azurite(tmp_path_factory):
    server = Azurite(tmp_path_factory.mktemp("azurite"))
    server.start()
    yield server
    server.kill()


@pytest.fixture
def azure_env(monkeypatch):
    """No Azure account, key, token or identity of this machine's: only what the test sets."""
    for var in list(os.environ):
        if var.startswith(("AZURE_", "MSI_", "IDENTITY_")):
            monkeypatch.delenv(var)


@pytest.fixture
def az_container(azurite, azure_env, monkeypatch) -> str:
    """``az://<fresh container>`` on the session's Azurite, reached through AZURE_STORAGE_CONNECTION_STRING (adlfs's
    variable, as on Azure itself)."""
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    return f"az://{azurite.make_container()}"
