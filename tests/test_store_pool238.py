"""What `ftctl sync push` runs at once against a real S3 server (moto, behind a proxy that counts and holds requests):
every file it sends at once has a connection of its own (storage.POOL_CONNECTIONS: aiobotocore's aiohttp pool was
botocore's 10, and 32 files took turns on it), and the memory those files take stays within storage.TRANSFER_MEMORY
(s3fs reads each file under 100 MiB whole before sending it: 8 checkpoints x 4 files of 64 MiB held 2 GiB at once)."""

from __future__ import annotations

import os
import re
import socket
import threading
import time

import pytest

from ftctl import storage
from ftctl.checkpoints import list_checkpoints, sync, write_manifest
from tests.s3_fixtures import make_checkpoint

FILE = re.compile(rb"^PUT /[^/]+/run/checkpoint-\d+/f\d\.bin ")


class HoldingProxy:
    """A TCP proxy on loopback before moto (which closes each connection after one answer: a connection is a request).
    A checkpoint file's PUT is held ``hold_s`` once its body has gone on; ``most`` is the most of those under way at
    once, ``most_bytes`` the most of their bodies' bytes at once."""

    def __init__(self, upstream: tuple[str, int], hold_s: float):
        self.upstream, self.hold_s = upstream, hold_s
        self.server = socket.create_server(("127.0.0.1", 0), backlog=256)
        self.lock, self.now, self.now_bytes, self.most, self.most_bytes, self.files = threading.Lock(), 0, 0, 0, 0, 0
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.getsockname()[1]}"

    def _accept(self) -> None:
        while True:
            try:
                client = self.server.accept()[0]
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with client, socket.create_connection(self.upstream) as up:
            head = b""
            while b"\r\n\r\n" not in head:
                if not (chunk := client.recv(65536)):
                    return
                head += chunk
            length = int((re.search(rb"(?im)^content-length:\s*(\d+)", head) or [0, b"0"])[1])
            counted = bool(FILE.match(head))
            if counted:
                with self.lock:
                    self.now, self.now_bytes, self.files = self.now + 1, self.now_bytes + length, self.files + 1
                    self.most, self.most_bytes = max(self.most, self.now), max(self.most_bytes, self.now_bytes)
            try:
                up.sendall(head)
                sent = len(head) - head.index(b"\r\n\r\n") - 4
                while sent < length and (chunk := client.recv(1 << 20)):
                    up.sendall(chunk)
                    sent += len(chunk)
                if counted:
                    time.sleep(self.hold_s)
                while chunk := up.recv(65536):
                    client.sendall(chunk)
            finally:
                if counted:
                    with self.lock:
                        self.now, self.now_bytes = self.now - 1, self.now_bytes - length

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def proxied(s3_bucket, moto_s3, monkeypatch):
    """(s3://bucket, the proxy) with AWS_ENDPOINT_URL the proxy's."""
    proxy = HoldingProxy((moto_s3.host, moto_s3.port), hold_s=0.3)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    yield s3_bucket, proxy
    proxy.close()


def run_of(tmp_path, size: int):
    run = tmp_path / "run"
    for step in range(1, sync.AT_ONCE + 1):
        files = {f"f{i}.bin": os.urandom(size) for i in range(storage.FILES_AT_ONCE)}
        write_manifest(str(make_checkpoint(run, step, files=files)), step, 1, "spec-238")
    return run


def pushed_whole(uri: str) -> None:
    assert [(c.step, c.complete) for c in list_checkpoints(uri)] == [(s, True) for s in range(1, sync.AT_ONCE + 1)]


def test_every_file_a_push_sends_at_once_has_a_connection_of_its_own(proxied, tmp_path):
    bucket, proxy = proxied
    uri = f"{bucket}/run"
    sync.push(str(run_of(tmp_path, 2000)), uri, echo=lambda line: None)
    pushed_whole(uri)
    assert proxy.files == sync.AT_ONCE * storage.FILES_AT_ONCE
    # 8 checkpoints x 4 files under way at once, each request held 0.3 s at the store: all 32 were sent together (the
    # pool of botocore's default, 10 connections, let 10 through and queued the others)
    assert proxy.most > 24
    fs, _ = storage.filesystem(uri)
    assert fs.s3.meta.config.max_pool_connections == storage.POOL_CONNECTIONS >= proxy.files
    connectors = [s.connector.limit for s in fs.s3._endpoint.http_session._sessions.values()]
    assert connectors == [storage.POOL_CONNECTIONS]  # aiobotocore's aiohttp pool, the one that queues


def test_the_files_a_push_reads_into_memory_at_once_stay_within_the_bound(proxied, tmp_path, monkeypatch):
    bucket, proxy = proxied
    uri = f"{bucket}/run"
    size = 256 << 10
    fs, _ = storage.filesystem(uri)
    assert storage.in_memory(fs, size, upload=True) == 2 * size  # s3fs reads a file under 100 MiB whole
    monkeypatch.setattr(storage, "TRANSFER_MEMORY", 4 * 2 * size)  # 4 such files at once
    proxy.hold_s = 0.15
    sync.push(str(run_of(tmp_path, size)), uri, echo=lambda line: None)
    pushed_whole(uri)
    assert proxy.files == sync.AT_ONCE * storage.FILES_AT_ONCE
    assert 2 <= proxy.most <= 4  # 32 files to send: the pool would let 32 through
    assert proxy.most_bytes <= 4 * size + 4 * 4096  # a body may carry an aws-chunked frame around the file


def test_what_s3fs_holds_of_a_file_in_memory_at_its_settings(s3_bucket):
    fs, _ = storage.filesystem(f"{s3_bucket}/run")
    mib = 1 << 20
    assert (fs.max_concurrency, fs.default_block_size) == (10, 50 * mib)  # s3fs's; in_memory reads them
    assert storage.in_memory(fs, 64 * mib, upload=True) == 128 * mib  # one PutObject of the whole file
    assert storage.in_memory(fs, 99 * mib, upload=True) == 198 * mib
    assert storage.in_memory(fs, 5 << 30, upload=True) == 2 * 10 * 50 * mib  # 10 parts of 50 MiB at a time
    assert storage.in_memory(fs, 40 * mib, upload=False) == 0  # streamed
    assert storage.in_memory(fs, 64 * mib, upload=False) == 128 * mib  # 2 ranges at once
    assert storage.in_memory(fs, 5 << 30, upload=False) == 2 * 10 * 50 * mib
    # the largest a single file takes fits the bound: a checkpoint's multi-GB shard is not held back for good
    assert storage.in_memory(fs, 5 << 30, upload=True) <= storage.TRANSFER_MEMORY


def test_a_transfer_larger_than_the_bound_goes_alone_and_waiting_ones_go_in_turn(monkeypatch):
    monkeypatch.setattr(storage, "TRANSFER_MEMORY", 10)
    memory, order, lock = storage._Memory(), [], threading.Lock()
    gate = threading.Event()

    def hold(name: str, nbytes: int) -> None:
        with memory.held(nbytes):
            with lock:
                order.append((name, memory.held_now))
            gate.wait(5)

    first = threading.Thread(target=hold, args=("big", 50))  # clamped to 10: alone
    first.start()
    while not order:
        time.sleep(0.01)
    later = [threading.Thread(target=hold, args=(name, n)) for name, n in (("a", 4), ("b", 4), ("c", 4))]
    for t in later:
        t.start()
        time.sleep(0.05)
    assert order == [("big", 10)]  # the others wait
    gate.set()
    for t in (first, *later):
        t.join(5)
    assert order[0] == ("big", 10) and [name for name, _ in order[1:]] == ["a", "b", "c"]
    assert max(held for _, held in order[1:]) <= 10 and memory.held_now == 0
