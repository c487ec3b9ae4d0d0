"""The kernel's DNS sender map (eBPF cgroup programs) with real sockets on loopback.

Needs root and cgroup v2 with BPF. Each case sends from a real process to a server on a
127.53.1.x address this test binds, and reads the map as the resolver would: by the query's
source (address, port) as the server received it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from proscribe.agent.sensors.dns.sender_map import BpfUnavailable, SenderMap

pytestmark = [pytest.mark.root, pytest.mark.linux]
SERVER = "127.53.1.1"


@pytest.fixture(scope="module")
def senders() -> Iterator[SenderMap]:
    try:
        sender_map = SenderMap()
    except BpfUnavailable as err:
        pytest.skip(f"no cgroup BPF here: {err}")
    yield sender_map
    sender_map.close()


def _server(port: int, kind: int = socket.SOCK_DGRAM) -> socket.socket:
    sock = socket.socket(socket.AF_INET, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((SERVER, port))
    sock.settimeout(5)
    if kind == socket.SOCK_STREAM:
        sock.listen()
    return sock


def test_an_exited_sender_is_still_known_by_its_source_port(senders: SenderMap) -> None:
    with _server(53) as server:
        child = subprocess.run(
            [
                sys.executable,
                "-c",
                "import socket,sys; socket.socket(socket.AF_INET, "
                f"socket.SOCK_DGRAM).sendto(b'q' * 12, ({SERVER!r}, 53))",
            ],
            check=True,
        )
        assert child.returncode == 0
        _data, (ip, port) = server.recvfrom(512)
    found = senders.lookup("udp", ip, port)
    assert found is not None
    assert found.uid == os.getuid()
    assert found.comm.startswith("python")
    assert found.pid != os.getpid()  # the child, gone by now
    assert senders.lookup("tcp", ip, port) is None  # the protocol is part of the key


def test_connected_udp_and_tcp_are_recorded(senders: SenderMap) -> None:
    with _server(53) as server, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.connect((SERVER, 53))  # port unbound before connect: the egress hook finds it
        client.send(b"q" * 12)
        _data, (ip, port) = server.recvfrom(512)
    found = senders.lookup("udp", ip, port)
    assert found is not None and found.pid == os.getpid()
    with _server(53, socket.SOCK_STREAM) as listener, socket.create_connection((SERVER, 53)) as c:
        accepted, (ip, port) = listener.accept()
        accepted.close()
        assert c.getsockname()[1] == port
    found = senders.lookup("tcp", ip, port)
    assert found is not None and found.pid == os.getpid()


def test_other_ports_are_not_recorded(senders: SenderMap) -> None:
    """The innocent look-alike: the same traffic to port 5353 is none of the map's business."""
    with _server(5353) as server, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.sendto(b"q" * 12, (SERVER, 5353))
        _data, (ip, port) = server.recvfrom(512)  # and it was delivered: record-only
    assert senders.lookup("udp", ip, port) is None


def test_bad_lookups_answer_none(senders: SenderMap) -> None:
    assert senders.lookup("sctp", "127.0.0.1", 53) is None
    assert senders.lookup("udp", "not an address", 53) is None
