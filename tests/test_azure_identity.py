"""az:// with an account name and no key, SAS or connection string: adlfs hands it to azure-identity's
DefaultAzureCredential (environment, workload identity, managed identity, Azure CLI ...). Where none of those has an
identity, ftctl says so in one line within seconds (it took 86 s: azure-storage-blob retried the whole credential chain
as it retries a store that is down); where a managed identity answers, its token is used as before. The managed
identity endpoint (IMDS) is a local fake here (AZURE_POD_IDENTITY_AUTHORITY_HOST, azure-identity's own variable for
it), as an Azure VM's would answer: 400 "Identity not found" without one, a token with one."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from click.testing import CliRunner

from ftctl import storage
from ftctl.cli import main


class FakeImds:
    """An IMDS token endpoint on 127.0.0.1 that counts the token requests and answers ``token`` (None: 400, no identity
    assigned to this machine)."""

    def __init__(self, token: str | None):
        self.token, self.asked = token, 0
        imds = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                imds.asked += 1
                if imds.token is None:
                    status = 400
                    body = {"error": "invalid_request", "error_description": "Identity not found"}
                else:
                    status = 200
                    body = {
                        "access_token": imds.token,
                        "expires_in": "3599",
                        "expires_on": str(int(time.time()) + 3599),
                        "resource": "https://storage.azure.com",
                        "token_type": "Bearer",
                    }
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def account_alone(azure_env, monkeypatch, tmp_path):
    """An account name and nothing else; no Azure CLI login (a fresh HOME)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_NAME", "ftctlaccount")


def test_an_account_without_key_or_identity_fails_in_seconds_saying_what_to_set(account_alone, monkeypatch):
    imds = FakeImds(token=None)
    monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", imds.url)
    try:
        t0 = time.monotonic()
        said = CliRunner().invoke(main, ["sync", "ls", "az://runs/run"])
        took = time.monotonic() - t0
    finally:
        imds.close()
    assert said.exit_code != 0 and len(said.output.splitlines()) == 1, said.output
    assert said.output.startswith(
        "error: No credentials for az://runs/run (Azure storage account 'ftctlaccount' with no key, SAS or connection "
        "string, and no Azure identity found here: "
    ), said.output
    for fix in ("AZURE_STORAGE_KEY", "AZURE_STORAGE_SAS_TOKEN", "AZURE_STORAGE_CONNECTION_STRING", "`az login`"):
        assert fix in said.output
    assert "Traceback" not in said.output
    # one try of the credential chain per request (it was tried again after each of the retry policy's pauses)
    assert imds.asked <= 2, imds.asked
    assert took < 30, took


def test_a_managed_identity_still_gives_its_token(account_alone, monkeypatch):
    """Bounding the chain's failure must not cost the VM's managed identity: ftctl's credential gives its token."""
    from fsspec.asyn import sync

    imds = FakeImds(token="token-of-the-vm")
    monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", imds.url)
    try:
        fs, _ = storage.filesystem("az://runs/run", quick=True)
        token = sync(fs.loop, fs.credential.get_token, "https://storage.azure.com/.default")
    finally:
        imds.close()
    assert token.token == "token-of-the-vm" and imds.asked == 1


def test_the_azure_cli_s_key_variable_is_used(azure_env, monkeypatch):
    """AZURE_STORAGE_KEY (the Azure CLI's name, the one ftctl's messages say) is the account key: adlfs reads only
    AZURE_STORAGE_ACCOUNT_KEY, so a key set there was not used and the account went to DefaultAzureCredential."""
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_NAME", "ftctlaccount")
    monkeypatch.setenv("AZURE_STORAGE_KEY", "a2V5")
    fs, _ = storage.filesystem("az://runs/run", quick=True)
    assert fs.account_key == "a2V5" and fs.credential is None
