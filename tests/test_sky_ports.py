"""The ports of the real-SkyPilot fixture (tests/sky_fixtures.py): the API port it gives SkyPilot's API server
is one whose derived request-queue port is free too, both stay held from outgoing connections while the server
starts, and a start that still meets a port in use is undone and retried on fresh ports. CI once lost both
SkyPilot launch tests to "port 56902 is already in use by another process" (the queue port of its API port)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.sky_fixtures import InfraPorts, reserved_ports, sky_bin, sky_server_ports, start_with_fresh_ports

RULE_CHECK = """
import os, sys
from sky.server.requests.queues import mp_queue
for port in sys.argv[1:]:
    os.environ["SKYPILOT_API_SERVER_LOCAL_PORT"] = port
    print(port, mp_queue.get_queue_manager_port())
"""


HELD_FROM_CONNECTIONS = """
import socket
from tests.sky_fixtures import _hold
open("/proc/sys/net/ipv4/ip_local_port_range", "w").write("40000 40003")  # this namespace's own
peer = socket.socket()
peer.bind(("127.0.0.1", 45000))
peer.listen()
held, given = _hold(40001), []
while True:
    conn = socket.socket()
    try:
        conn.connect(("127.0.0.1", 45000))
    except OSError:
        break
    given.append(conn.getsockname()[1])
print(sorted(given))
"""


def _bind_like_skypilot(port: int) -> socket.socket:
    """What SkyPilot's API server does with each of its ports: SO_REUSEADDR, bind on localhost, listen."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port))
        s.listen()
    except OSError:
        s.close()
        raise
    return s


def _free_api_port() -> int:
    with reserved_ports() as ports:
        return ports.api


def test_the_port_rule_is_skypilots_own():
    ports = ["46580", "46581", "40000", "36569", "56569", "60999"]
    r = subprocess.run(
        [str(sky_bin() / "python"), "-c", RULE_CHECK, *ports],
        env={**os.environ, "SKYPILOT_DISABLE_USAGE_COLLECTION": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    theirs = {int(a): int(q) for a, q in (line.split() for line in r.stdout.splitlines())}
    assert theirs == {int(p): sky_server_ports(int(p))[1] for p in ports}


def test_an_api_port_whose_queue_port_a_connection_holds_is_passed_over():
    """As in CI: an outgoing connection of another test has the queue port of the port first at hand."""
    taken, other = _free_api_port(), _free_api_port()
    queue = sky_server_ports(taken)[1]
    with socket.socket() as peer, socket.socket() as conn:
        peer.bind(("127.0.0.1", 0))
        peer.listen()
        conn.bind(("127.0.0.1", queue))  # the source port a connect() was given
        conn.connect(peer.getsockname())
        with reserved_ports(candidates=[taken, other]) as ports:
            assert ports.api == other
            assert queue not in (ports.api, ports.ssh, sky_server_ports(ports.api)[1])


def test_held_ports_still_let_skypilot_and_sshd_bind_them():
    with reserved_ports() as ports:
        bound = [_bind_like_skypilot(p) for p in (*sky_server_ports(ports.api), ports.ssh)]
        for s in bound:
            s.close()


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root and unshare")
def test_a_held_port_is_given_to_no_outgoing_connection():
    """In a network namespace of its own whose ephemeral range is 40000-40003, with 40001 held."""
    r = subprocess.run(
        ["unshare", "-n", "sh", "-c", f'ip link set lo up && exec "{sys.executable}" -c "$0"', HELD_FROM_CONNECTIONS],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[0] == "[40000, 40002, 40003]"


def test_a_start_that_meets_a_port_in_use_is_undone_and_retried_on_fresh_ports():
    """A port taken after the choice (a listener of its own SO_REUSEADDR socket, which no hold keeps out)."""
    tried: list[InfraPorts] = []
    downs: list[InfraPorts] = []

    def up(ports: InfraPorts) -> tuple[bool, str]:
        tried.append(ports)
        queue = sky_server_ports(ports.api)[1]
        thief = _bind_like_skypilot(queue) if len(tried) == 1 else None
        try:
            bound = [_bind_like_skypilot(p) for p in sky_server_ports(ports.api)]
        except OSError:
            return False, f"RuntimeError: SkyPilot API server fails to start as port {queue!r} is already in use"
        finally:
            if thief:
                thief.close()
        for s in bound:
            s.close()
        return True, "ready"

    ports, notes = start_with_fresh_ports(up, lambda: downs.append(tried[-1]))
    assert len(tried) == 2 and downs == tried[:1] and ports == tried[1]
    assert ports.api != tried[0].api
    assert "attempt 1" in notes and "already in use" in notes


def test_other_failures_fail_at_once_with_the_logs_tail():
    tried = []

    def up(ports: InfraPorts) -> tuple[bool, str]:
        tried.append(ports)
        return False, "\n".join(f"line {i}" for i in range(100)) + "\nsky check slurm: Slurm: disabled"

    with pytest.raises(pytest.fail.Exception) as failed:
        start_with_fresh_ports(up, lambda: pytest.fail("nothing to undo"))
    assert len(tried) == 1
    assert "did not start (attempt 1 of 3)" in str(failed.value)
    assert "Slurm: disabled" in str(failed.value) and "line 99" in str(failed.value)
    assert "line 10\n" not in str(failed.value)


def test_the_last_of_the_attempts_fails_with_what_each_met():
    def up(ports: InfraPorts) -> tuple[bool, str]:
        return False, f"E Port {ports.api} is not available, exiting."

    with pytest.raises(pytest.fail.Exception) as failed:
        start_with_fresh_ports(up, lambda: None, attempts=2)
    message = str(failed.value)
    assert "attempt 2 of 2" in message and "attempt 1 (" in message and message.count("is not available") == 2
