"""The encrypted-DNS watch against the real kernel: a real child process opens TCP
connections to a "DoT" listener on 127.0.0.1:853 and to a "DoH resolver" on 127.0.0.2:443
(added to the resolver table, as ``[dns] doh_resolvers`` does); the watch reads
/proc/net/tcp* and names that process. A plain HTTPS connection is not reported."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from proscribe.agent.sensors.dns import ProcessAttributor
from proscribe.agent.sensors.dns.encrypted import (
    EncryptedDnsConnection,
    EncryptedDnsWatch,
    resolver_table,
)

pytestmark = [pytest.mark.root, pytest.mark.linux]

CLIENT = r"""
import socket, sys, time
conns = [socket.create_connection((h, int(p))) for h, p in (a.split(":") for a in sys.argv[1:])]
print("connected", flush=True)
time.sleep(30)
"""


@pytest.fixture
def listeners() -> Iterator[list[socket.socket]]:
    socks = []
    for address in (("127.0.0.1", 853), ("127.0.0.2", 443), ("127.0.0.3", 443)):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(8)
        socks.append(sock)
    yield socks
    for sock in socks:
        sock.close()


def test_real_connections_are_reported_with_their_process(listeners: list[socket.socket]) -> None:
    reports: list[EncryptedDnsConnection] = []
    attributor = ProcessAttributor()

    def attribute(connection: object) -> tuple[object, str | None] | None:
        c: Any = connection
        found = attributor.attribute(c.transport, c.local, c.remote)
        return None if found.forwarded else (found.process, found.reason)

    watch = EncryptedDnsWatch(
        reports.append,
        attribute,
        resolvers=resolver_table(["127.0.0.2"]),  # type: ignore[arg-type]
    )
    watch.poll()  # whatever this machine already has open
    reports.clear()
    client = subprocess.Popen(
        [sys.executable, "-c", CLIENT, "127.0.0.1:853", "127.0.0.2:443", "127.0.0.3:443"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert client.stdout is not None and client.stdout.readline().strip() == "connected"
        watch.poll()
        mine = {r.resolver: r for r in reports if r.process and r.process["pid"] == client.pid}
        assert set(mine) == {("127.0.0.1", 853), ("127.0.0.2", 443)}, reports
        assert mine[("127.0.0.1", 853)].protocol == "DoT"
        assert mine[("127.0.0.2", 443)].protocol == "DoH"
        process = mine[("127.0.0.2", 443)].process
        assert process is not None
        assert os.path.realpath(process["exe"]) == os.path.realpath(sys.executable)
        reports.clear()
        watch.poll()
        assert reports == []  # same sockets, already reported
    finally:
        client.kill()
        client.wait(10)
        if client.stdout is not None:
            client.stdout.close()

    # DNS over QUIC: a connected UDP socket to port 853 (no listener needed for UDP)
    quic = subprocess.Popen(
        [sys.executable, "-c", "import socket, time\n"
         "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
         "s.connect(('127.0.0.1', 853))\nprint('connected', flush=True)\ntime.sleep(30)\n"],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert quic.stdout is not None and quic.stdout.readline().strip() == "connected"
        watch.poll()
        mine = [r for r in reports if r.process and r.process["pid"] == quic.pid]
        assert [(r.protocol, r.resolver) for r in mine] == [("DoQ", ("127.0.0.1", 853))]
    finally:
        quic.kill()
        quic.wait(10)
        if quic.stdout is not None:
            quic.stdout.close()
        attributor.close()
