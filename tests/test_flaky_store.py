"""An object store that misbehaves (explore23): a fault-injecting HTTP proxy between ftctl and moto_server.

Real S3, MinIO, R2 and GCS's S3 API answer 503 SlowDown and 500 InternalError, drop connections mid-request, cut
bodies short and stall. :class:`FlakyProxy` forwards every request to the moto server and, for the requests its rules
pick, answers one of those instead."""

from __future__ import annotations

import http.client
import re
import socket
import socketserver
import struct
import threading
import time
from dataclasses import dataclass, field

import pytest

SLOWDOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message><RequestId>flaky</RequestId></Error>"
)
FULL = (  # MinIO's answer where its drives are full (Ceph RGW answers a bucket over its quota 403 QuotaExceeded)
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>XMinioStorageFull</Code>'
    b"<Message>Storage backend has reached its minimum free drive threshold.</Message><RequestId>flaky</RequestId>"
    b"</Error>"
)
INTERNAL = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code>'
    b"<Message>We encountered an internal error. Please try again.</Message><RequestId>flaky</RequestId></Error>"
)


@dataclass
class Rule:
    """Requests whose ``METHOD path?query`` matches ``pattern`` (re.search) get ``action``: "503", "500", "507" (a
    full store: MinIO's XMinioStorageFull), "reset"
    (the connection closed before any answer), "truncate" (the answer's headers, then half its body, then closed),
    "delay:S" (the answer after S seconds). ``times``: how many matching requests (None: every one); ``skip``: how
    many matching requests pass first."""

    pattern: str
    action: str
    times: int | None = 1
    skip: int = 0
    hits: int = 0
    seen: int = 0

    def pick(self, line: str) -> bool:
        if not re.search(self.pattern, line):
            return False
        self.seen += 1
        if self.seen <= self.skip or (self.times is not None and self.hits >= self.times):
            return False
        self.hits += 1
        return True


@dataclass
class FlakyProxy:
    """A threaded HTTP/1.1 proxy on loopback in front of ``upstream`` (host, port); ``rules`` are looked at in order,
    the first that picks a request decides its fate. ``log``: (time, request line, action) of every request."""

    upstream: tuple[str, int]
    rules: list[Rule] = field(default_factory=list)
    log: list[tuple[float, str, str]] = field(default_factory=list)

    def __post_init__(self):
        proxy = self
        self.lock = threading.Lock()

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                while proxy._one(self.rfile, self.connection):
                    pass

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def add(self, pattern: str, action: str, times: int | None = 1, skip: int = 0) -> Rule:
        rule = Rule(pattern, action, times, skip)
        with self.lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self.lock:
            self.rules.clear()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _one(self, rfile, conn) -> bool:
        """Serve one request of a connection; False where the connection is done."""
        start = rfile.readline(65537)
        if not start.strip():
            return False
        method, target, _ = start.decode("latin-1").split(" ", 2)
        headers = []
        while True:
            line = rfile.readline(65537)
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            headers.append((name.strip(), value.strip()))
        low = {k.lower(): v for k, v in headers}
        if "chunked" in low.get("transfer-encoding", "").lower():
            body = b""
            while True:
                size = int(rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                body += rfile.read(size)
                rfile.readline()
            headers = [(k, v) for k, v in headers if k.lower() != "transfer-encoding"]
            headers.append(("Content-Length", str(len(body))))
        else:
            body = rfile.read(int(low.get("content-length", "0") or 0))
        line = f"{method} {target}"
        with self.lock:
            action = next((r.action for r in self.rules if r.pick(line)), "pass")
            self.log.append((time.monotonic(), line, action))
        if action == "reset":
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()
            return False
        if action in ("503", "500", "507"):
            text = {"503": SLOWDOWN, "500": INTERNAL, "507": FULL}[action]
            reason = {"503": "Slow Down", "500": "Internal Server Error", "507": "Insufficient Storage"}[action]
            conn.sendall(
                f"HTTP/1.1 {action} {reason}\r\nContent-Type: application/xml\r\nContent-Length: {len(text)}\r\n"
                f"x-amz-request-id: flaky\r\n\r\n".encode()
                + (b"" if method == "HEAD" else text)  # a HEAD answer has no body: one would spoil the next answer
            )
            return True
        if action.startswith("delay:"):
            time.sleep(float(action.split(":", 1)[1]))
        up = http.client.HTTPConnection(*self.upstream, timeout=120)
        try:
            up.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
            for k, v in headers:
                if k.lower() not in ("connection", "keep-alive", "expect"):
                    up.putheader(k, v)
            up.endheaders(body if body or method in ("PUT", "POST") else None)
            resp = up.getresponse()
            data = resp.read()
            out = [(k, v) for k, v in resp.getheaders() if k.lower() not in ("connection", "transfer-encoding")]
            if not any(k.lower() == "content-length" for k, _ in out):
                out.append(("Content-Length", str(len(data))))
        finally:
            up.close()
        head = f"HTTP/1.1 {resp.status} {resp.reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in out) + "\r\n"
        if action == "truncate" and method != "HEAD" and len(data) > 1:
            conn.sendall(head.encode("latin-1") + data[: len(data) // 2])
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()
            return False
        conn.sendall(head.encode("latin-1") + (b"" if method == "HEAD" else data))
        return True

    def count(self, pattern: str, action: str | None = None) -> int:
        return sum(1 for _, line, a in self.log if re.search(pattern, line) and (action is None or a == action))


@pytest.fixture
def flaky(moto_s3, s3_env, monkeypatch):
    """A fresh bucket on the session's moto server, reached through a :class:`FlakyProxy` (AWS_ENDPOINT_URL):
    ``(proxy, "s3://bucket")``."""
    proxy = FlakyProxy((moto_s3.host, moto_s3.port))
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    bucket = moto_s3.make_bucket()
    yield proxy, f"s3://{bucket}"
    proxy.close()


@pytest.fixture
def quick_backoff(monkeypatch):
    """botocore's backoff between attempts (0-1, 0-2, 0-4, 0-8 s) at 10 ms: a test of retries waits no seconds."""
    from botocore.retries import standard

    monkeypatch.setattr(standard.ExponentialBackoff, "delay_amount", lambda self, context: 0.01)


def fewer_attempts(monkeypatch, kind: str, attempts: int) -> None:
    from dataclasses import replace

    from ftctl import storage

    monkeypatch.setitem(storage.S3_LIMITS, kind, replace(storage.S3_LIMITS[kind], attempts=attempts))


@pytest.mark.parametrize("fault", ["503", "500", "reset"])
def test_a_busy_or_failing_store_is_asked_again_not_given_up(flaky, quick_backoff, fault):
    """A listing, a manifest's read and the lease's conditional write meeting 503 SlowDown, 500 InternalError or a
    dropped connection twice: each answered on a later attempt (each was one attempt: the first 503 failed a resume's
    listing, a run's start, or turned the lease's renewals unconditional for good)."""
    from ftctl import storage

    proxy, bucket = flaky
    storage.filesystem(f"{bucket}/run")[0].pipe_file(f"{bucket[5:]}/run/ckpt/m.json", b'{"a": 1}')
    for pattern in (r"^GET .*list-type", r"^GET .*/m\.json", r"^PUT .*/lease"):
        proxy.add(pattern, fault, times=2)
    assert [e["name"] for e in storage.ls(f"{bucket}/run")] == ["ckpt"]
    assert storage.read_text(f"{bucket}/run/ckpt/m.json") == '{"a": 1}'
    assert storage.put_if(f"{bucket}/run/lease", b"mine") is not None
    assert [r.hits for r in proxy.rules] == [2, 2, 2]


def test_a_silent_or_absent_store_still_costs_one_wait_of_an_ask(s3_env, monkeypatch):
    """Timeouts are not retried as a 503 is: a store that accepts and never answers costs an "ask" one wait and a
    transfer its ``waits``, however many attempts a busy store gets."""
    from ftctl import storage
    from tests.s3_fixtures import SilentEndpoint, within

    monkeypatch.setitem(storage.S3_LIMITS, "ask", storage.S3Limits(0.3, 0.3, attempts=5, tries=1, waits=1))
    monkeypatch.setitem(storage.S3_LIMITS, "transfer", storage.S3Limits(0.3, 0.3, attempts=5, tries=1, waits=2))
    silent = SilentEndpoint()
    monkeypatch.setenv("AWS_ENDPOINT_URL", silent.endpoint)
    try:
        with pytest.raises(storage.StorageError, match="did not answer in time"), storage.storage_errors("s3://b/r"):
            within(10, storage.ls, "s3://b/r")
        assert silent.requests == 1
        with pytest.raises(storage.StorageError, match="did not answer in time"), storage.storage_errors("s3://b/r"):
            within(10, storage.get_file, "s3://b/r/x", "/nonexistent/x")
        assert silent.requests == 1 + 2
    finally:
        silent.close()


@pytest.mark.parametrize("fault", ["503", "500"])
def test_a_store_that_keeps_failing_is_one_line_naming_it_and_what_to_do(flaky, quick_backoff, monkeypatch, fault):
    """`ftctl sync ls` of a store that answers every request 503 SlowDown (or 500): one line, exit 2 (it was
    OSError's '[Errno 16] Please reduce your request rate.' with a traceback)."""
    from click.testing import CliRunner

    from ftctl.cli import main

    proxy, bucket = flaky
    fewer_attempts(monkeypatch, "ask", 2)
    proxy.add(".", fault, times=None)
    r = CliRunner().invoke(main, ["sync", "ls", f"{bucket}/run"])
    assert r.exit_code == 2 and r.stdout == "", r.output
    where = f"error: the S3 endpoint {proxy.endpoint}"
    said = {
        "503": f"{where} kept refusing requests for {bucket}/run as too many (503 SlowDown), through ftctl's retries: "
        "it throttles this bucket now: try again in a few minutes (many jobs or nodes writing one bucket at once "
        "slow it down).",
        "500": f"{where} kept failing requests for {bucket}/run (500 InternalError), through ftctl's retries: an "
        "error on the store's side: try again in a few minutes; if it lasts, check the store's status page or its "
        "operator (or -o s3_endpoint_url=URL (ftctl sync: --endpoint-url URL) or AWS_ENDPOINT_URL if it names the "
        "wrong store).",
    }
    assert r.stderr.strip().splitlines() == [said[fault]]


def holder(out: str, monkeypatch, **kw):
    from ftctl import lease

    monkeypatch.setenv("SLURM_JOB_ID", "901")
    return lease.Holder(out, None, "r", **kw)


def test_a_renewal_refused_as_busy_stays_conditional_and_still_sees_a_takeover(flaky, quick_backoff, monkeypatch):
    """A 503 on the lease's conditional renewal is the store failing, not the store refusing the condition: the
    renewal is tried again conditionally, and a later takeover is still seen (the 503 read as NoConditionalWrites
    made every later renewal a plain write, over the lease of a job that took the output over)."""
    import json
    import time

    from ftctl import lease, storage

    proxy, bucket = flaky
    out = f"{bucket}/runs/busy"
    mine = holder(out, monkeypatch, renew_s=60)  # renewed by hand here
    mine.take()
    fewer_attempts(monkeypatch, "ask", 2)
    proxy.add(r"^PUT .*train-lease", "503", times=2)
    with pytest.raises(OSError) as err:
        storage.put_if(lease.uri_of(out), b"x", etag='"0"')
    assert storage.store_error(err.value, out).kind == "busy"
    proxy.add(r"^PUT .*train-lease", "503", times=2)
    assert mine.renew() and not mine.lost.is_set() and not mine._plain
    other = json.dumps({"holder": "Slurm job 902", "renewed_unix": time.time()}).encode()
    storage.filesystem(out)[0].pipe_file(lease.uri_of(out)[5:], other)  # the store was silent for STALE_S: taken over
    assert mine.renew() is False and mine.lost.is_set()
    assert json.loads(storage.read_text(lease.uri_of(out)))["holder"] == "Slurm job 902"
    mine.close()


def test_a_lease_renewal_failing_once_goes_on_and_failing_for_the_lease_life_stops_the_trainer(
    flaky, quick_backoff, monkeypatch
):
    """A renewal the store does not take is tried at the next turn; renewals failing for so long that the lease goes
    stale before the next one set ``lost`` (the trainer stops at its next step, saving nothing into the output), and
    the lease, maybe another job's by then, is neither renewed nor removed (they failed for good unseen)."""
    import time

    from ftctl import lease, storage

    proxy, bucket = flaky
    out = f"{bucket}/runs/renew"
    fewer_attempts(monkeypatch, "ask", 1)
    mine = holder(out, monkeypatch, renew_s=0.3, stale_s=2.0)
    mine.take()
    start = time.monotonic()
    proxy.add(r"^PUT .*train-lease", "503", times=None)
    while not proxy.count(r"^PUT .*train-lease", "503") and time.monotonic() < start + 5:
        time.sleep(0.02)
    assert proxy.count(r"^PUT .*train-lease", "503") and not mine.lost.is_set()  # said, and the trainer goes on
    assert mine.lost.wait(5)
    assert 2.0 - 0.3 - 0.3 <= time.monotonic() - start < 2.0 + 2.0
    assert mine.lost_why.startswith(f"the lease {lease.uri_of(out)} has not been renewed for ")
    assert "(the S3 endpoint " in mine.lost_why and "(503 SlowDown), through ftctl's retries)" in mine.lost_why
    assert mine.lost_why.endswith("once the store answers again.") and "\n" not in mine.lost_why
    proxy.clear()
    puts = proxy.count(r"^PUT .*train-lease")
    mine.close()
    time.sleep(0.4)
    assert proxy.count(r"^PUT .*train-lease") == puts and proxy.count(r"^DELETE ") == 0
    assert storage.exists(lease.uri_of(out))


def test_a_run_into_a_flaky_store_completes_with_every_checkpoint_whole(
    flaky, quick_backoff, tiny_model_dir, tiny_data, tmp_path, one_thread, monkeypatch
):
    """A tiny lora run whose store answers its resume's listing, its lease, its checkpoint's files and manifest and its
    final model with 503s, 500s and dropped connections now and then: it completes, and the store holds each
    checkpoint whole and the final model (its start failed on the first 503 of the listing or the lease)."""
    from ftctl import storage
    from ftctl.checkpoints.resume import list_checkpoints
    from ftctl.trainer.run import train
    from tests.trainer_fixtures import make_run

    proxy, bucket = flaky
    uri = f"{bucket}/runs/flaky"
    proxy.add(r"list-type", "503", times=2)
    proxy.add(r"^PUT .*train-lease", "503", times=1)
    proxy.add(r"^PUT .*/checkpoint-2/", "500", times=2)
    proxy.add(r"^PUT .*/checkpoint-2/", "reset", times=1)
    proxy.add(r"^PUT .*/checkpoint-2/ftctl-manifest", "503", times=1)
    proxy.add(r"^PUT .*/flaky/adapter_model", "503", times=1)
    monkeypatch.setenv("FTCTL_LOCAL_DIR", str(tmp_path / "node"))
    spec, plan = make_run(tiny_model_dir, tiny_data, uri, "lora", max_steps=2, save_steps=2, lora_r=4, lora_alpha=8)
    assert train(spec, plan, echo=lambda line: None).status == "complete"
    assert [r.hits for r in proxy.rules] == [2, 1, 2, 1, 1, 1]
    assert [(c.name, c.complete) for c in list_checkpoints(uri)] == [("checkpoint-2", True)]
    assert {"adapter_model.safetensors", "adapter_config.json"} <= set(storage.file_sizes(uri))


def test_a_renewal_the_store_took_after_its_answer_was_given_up_is_the_holders_own(flaky, monkeypatch):
    """A slow store: the renewal's PUT lands after the renewal stopped waiting for its answer. The next renewal's
    condition (the ETag before it) fails, and the lease read is this holder's own write: renewed on it (it was taken
    for another job's, and the run stopped saying that job took the output over, naming this very trainer)."""
    import time

    from ftctl import lease, storage

    proxy, bucket = flaky
    out = f"{bucket}/runs/slow"
    mine = holder(out, monkeypatch, renew_s=60)  # renewed by hand here
    mine.take()
    monkeypatch.setitem(storage.S3_LIMITS, "ask", storage.S3Limits(0.5, 0.5, attempts=1, tries=1, waits=1))
    proxy.add(r"^PUT .*train-lease", "delay:0.8", times=1)
    assert mine.renew() and not mine.lost.is_set()  # timed out: said, tried at the next turn
    time.sleep(1.0)  # the delayed write lands
    assert mine.renew() and not mine.lost.is_set()
    assert lease.read(out)["holder"] == "Slurm job 901"
    mine.close()
    assert lease.read(out) is None  # its own last write: released


def test_a_download_cut_off_mid_way_again_and_again_is_started_again(flaky, tmp_path):
    """A file whose answer is cut off mid-body three times in a row (a resume's checkpoint file, a pull): downloaded
    whole on a later start (s3fs picks it up where it was cut off twice, then gave up: the resume failed the run)."""
    import os

    from ftctl import storage

    proxy, bucket = flaky
    data = os.urandom(300_000)
    (tmp_path / "w.bin").write_bytes(data)
    storage.put_file(str(tmp_path / "w.bin"), f"{bucket}/run/checkpoint-4/w.bin")
    proxy.add(r"^GET .*/w\.bin", "truncate", times=3)
    storage.get_file(f"{bucket}/run/checkpoint-4/w.bin", str(tmp_path / "got" / "w.bin"))
    assert (tmp_path / "got" / "w.bin").read_bytes() == data and proxy.rules[0].hits == 3
