"""az:// for real: ftctl's storage layer, `ftctl sync` and the trainer's lease against Azurite's blob service
(tests/azure_fixtures.py), reached as a user reaches an Azure storage account: adlfs with
AZURE_STORAGE_CONNECTION_STRING. Azurite honours ETag conditions (If-Match, If-None-Match) as Azure does, so the lease's
conditional writes are tested here, not only in units."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from ftctl import checkpoints as C
from ftctl import lease, storage
from ftctl.cli import main
from ftctl.errors import FtctlError
from tests.azure_fixtures import ACCOUNT_KEY
from tests.s3_fixtures import make_checkpoint


def test_files_are_written_read_listed_and_deleted_through_ftctl_storage(az_container, tmp_path):
    uri = f"{az_container}/run"
    local = tmp_path / "weights.bin"
    local.write_bytes(os.urandom(3000))
    storage.put_file(str(local), storage.join(uri, "checkpoint-1", "model.safetensors"))
    assert storage.put_if(storage.join(uri, "notes.txt"), b"hello") is not None  # created, its ETag given back
    with pytest.raises(FileExistsError):  # create-only: If-None-Match *
        storage.put_if(storage.join(uri, "notes.txt"), b"again")

    assert storage.read_bytes(storage.join(uri, "notes.txt")) == b"hello"
    assert storage.exists(storage.join(uri, "notes.txt")) and not storage.exists(storage.join(uri, "nothing"))
    assert storage.ls(uri) == [
        {"name": "checkpoint-1", "type": "directory", "size": 0},
        {"name": "notes.txt", "type": "file", "size": 5},
    ]
    assert storage.file_sizes(uri) == {"checkpoint-1/model.safetensors": 3000, "notes.txt": 5}
    storage.get_file(storage.join(uri, "checkpoint-1", "model.safetensors"), str(tmp_path / "got" / "w.bin"))
    assert (tmp_path / "got" / "w.bin").read_bytes() == local.read_bytes()

    storage.rm(storage.join(uri, "notes.txt"))
    storage.rm(storage.join(uri, "notes.txt"))  # absent: no error
    assert storage.file_sizes(uri) == {"checkpoint-1/model.safetensors": 3000}
    storage.rm(uri, recursive=True)
    assert storage.ls(uri) == [] and storage.file_sizes(uri) == {}
    assert storage.bucket_exists(uri) and not storage.bucket_exists("az://no-such-container/run")


def test_sync_pushes_lists_and_pulls_checkpoints(az_container, tmp_path):
    run, uri = tmp_path / "run", f"{az_container}/runs/r1"
    for step in (1, 2):
        C.write_manifest(str(make_checkpoint(run, step)), step, world_size=1, spec_hash="spec-abc")
    make_checkpoint(run, 3)  # no manifest: incomplete, not pushed

    said = CliRunner().invoke(main, ["sync", "push", str(run), uri])
    assert said.exit_code == 0, said.output
    said = CliRunner().invoke(main, ["sync", "ls", uri])
    assert said.exit_code == 0, said.output
    rows = [line.split()[:4] for line in said.output.splitlines() if line.startswith("checkpoint-")]
    assert rows == [["checkpoint-1", "step", "1", "complete"], ["checkpoint-2", "step", "2", "complete"]], said.output

    said = CliRunner().invoke(main, ["sync", "pull", uri, str(tmp_path / "pulled")])
    assert said.exit_code == 0, said.output
    pulled = tmp_path / "pulled"
    assert sorted(os.listdir(pulled)) == ["checkpoint-1", "checkpoint-2"]
    for step in (1, 2):
        assert C.verify(str(pulled / f"checkpoint-{step}")) == []
        for f in (run / f"checkpoint-{step}").rglob("*"):
            if f.is_file():
                assert (pulled / f"checkpoint-{step}" / f.relative_to(run / f"checkpoint-{step}")).read_bytes() == (
                    f.read_bytes()
                )


def test_a_stale_etag_neither_writes_nor_deletes(az_container):
    """put_if and delete_if on Azure: If-Match the ETag read. Before, a write on an ETag outside S3 was refused as
    unconditional (NoConditionalWrites), and adlfs's answers (key ``etag``) read as giving none."""
    uri = f"{az_container}/lease.json"
    first = storage.put_if(uri, b"1")
    second = storage.put_if(uri, b"2", etag=first)
    assert first and second and first != second
    with pytest.raises(FileExistsError):  # 412 ConditionNotMet: the version read was replaced since
        storage.put_if(uri, b"3", etag=first)
    with pytest.raises(FileExistsError):
        storage.delete_if(uri, first)
    assert storage.read_bytes(uri) == b"2"
    storage.delete_if(uri, second)
    assert not storage.exists(uri)
    with pytest.raises(FileExistsError):  # gone: nothing to replace or delete
        storage.put_if(uri, b"4", etag=second)
    with pytest.raises(FileExistsError):
        storage.delete_if(uri, second)


# the lease's takeover and two trainers' race on az://: tests/test_gcs_conditions.py, one test each for gs:// and az://


def test_store_errors_on_az_are_one_line(az_container, azurite, monkeypatch):
    """A container that is not there, a wrong account key, no credentials at all: each one line naming what to set
    (the key itself never). Before, the wrong key and the missing credentials were azure-core's and adlfs's
    tracebacks, and a lease written with the wrong key read as a store refusing conditions."""
    said = CliRunner().invoke(main, ["sync", "ls", "az://no-such-container/run"])
    assert said.exit_code != 0 and said.output == (
        f"error: No container 'no-such-container' at the Azure blob endpoint {azurite.endpoint}: create it, or fix "
        "the container name in az://no-such-container/run (or BlobEndpoint in AZURE_STORAGE_CONNECTION_STRING if it "
        "lives on another store).\n"
    ), said.output

    wrong = azurite.connection_string.replace(ACCOUNT_KEY, "A" * 86 + "==")
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", wrong)
    said = CliRunner().invoke(main, ["sync", "ls", f"{az_container}/run"])
    assert said.exit_code != 0 and said.output.startswith(
        f"error: the Azure blob endpoint {azurite.endpoint} rejected the credentials for {az_container}/run "
        "(AuthorizationFailure): check AZURE_STORAGE_ACCOUNT_NAME with AZURE_STORAGE_KEY or AZURE_STORAGE_SAS_TOKEN (or "
        "AZURE_STORAGE_CONNECTION_STRING;"
    ), said.output
    assert "A" * 86 not in said.output and len(said.output.splitlines()) == 1
    with pytest.raises(FtctlError, match=r"cannot read the trainer's lease .*rejected the credentials"):
        lease.Holder(f"{az_container}/run", None, "r").take()
    with pytest.raises(Exception) as e:  # the store's refusal, not a store without conditional writes
        storage.put_if(lease.uri_of(f"{az_container}/run"), b"{}")
    assert not isinstance(e.value, storage.NoConditionalWrites)
    assert storage.store_error(e.value, f"{az_container}/run").kind == "bad-credentials"

    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING")
    said = CliRunner().invoke(main, ["sync", "ls", f"{az_container}/run"])
    assert said.exit_code != 0 and said.output == (
        f"error: No credentials for {az_container}/run: set AZURE_STORAGE_ACCOUNT_NAME with AZURE_STORAGE_KEY or "
        "AZURE_STORAGE_SAS_TOKEN (or AZURE_STORAGE_CONNECTION_STRING; or `az login`, or a managed identity with a "
        "Storage Blob Data role).\n"
    ), said.output


def test_an_azure_endpoint_that_refuses_or_never_answers_is_given_up_on(azure_env, monkeypatch):
    """azure-storage-blob's own retries (pauses of 15 s and more, 20 s to connect, 60 s to read, 4 attempts) made
    `ftctl sync ls` of an endpoint that refuses connections take 85 s, and a read of the lease from one that never
    answers about 5 minutes (a renewal outliving STALE_S). Now S3_LIMITS apply: "ask" is one wait (here 0.5 s)."""
    from tests.s3_fixtures import SilentEndpoint, free_port, within

    def connect(endpoint: str) -> None:
        cs = f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={ACCOUNT_KEY};BlobEndpoint={endpoint};"
        monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", cs)

    refusing = f"http://127.0.0.1:{free_port()}/devstoreaccount1"
    connect(refusing)
    t0 = time.monotonic()
    said = within(30, CliRunner().invoke, main, ["sync", "ls", "az://ftctl-down/run"])
    assert said.exit_code != 0 and said.output == (
        f"error: Cannot reach the Azure blob endpoint {refusing} for az://ftctl-down/run: check BlobEndpoint in "
        "AZURE_STORAGE_CONNECTION_STRING (is the store running there?) and the network.\n"
    ), said.output
    assert time.monotonic() - t0 < 10

    monkeypatch.setitem(
        storage.S3_LIMITS, "ask", storage.S3Limits(connect_s=0.5, read_s=0.5, attempts=3, tries=1, waits=1)
    )
    server = SilentEndpoint()
    try:
        connect(f"{server.endpoint}/devstoreaccount1")
        with pytest.raises(Exception) as e:
            within(20, storage.read_text, "az://ftctl-silent/run/trainer_state.json")
        said = storage.store_error(e.value, "az://ftctl-silent/run/trainer_state.json")
        assert said is not None and said.kind == "timeout", repr(e.value)
        assert server.requests == 1  # one wait: no answer is not asked again
    finally:
        server.close()


def test_a_job_elsewhere_gets_the_connection_string_by_name_and_its_key_is_never_said(azurite, monkeypatch):
    env = {"AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string, "AWS_ENDPOINT_URL": "http://x"}
    assert storage.job_env(["az://c/run"], files=False, environ=env) == ["AZURE_STORAGE_CONNECTION_STRING"]
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    said = storage.redact(f"failed: {azurite.connection_string} (key {ACCOUNT_KEY})")
    assert said == "failed: <AZURE_STORAGE_CONNECTION_STRING> (key <AccountKey of AZURE_STORAGE_CONNECTION_STRING>)"


def test_without_azurite_the_tests_fail_saying_how_to_install_it(monkeypatch, tmp_path):
    from tests import azure_fixtures

    monkeypatch.setattr(azure_fixtures, "AZURITE_BIN", Path(tmp_path / "none" / "azurite-blob"))
    with pytest.raises(pytest.fail.Exception, match=r"Azurite .* is not installed in .*apt-get install nodejs npm"):
        azure_fixtures.Azurite(tmp_path).start()
