"""The daemon wired to the DNS proxy: a denied name is sinkholed and a ``dns`` event committed;
an allowed name is forwarded to the (loopback) upstream; monitor mode only reports."""

from __future__ import annotations

import secrets
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype
import pytest

from proscribe.agent.config import load_agent_config
from proscribe.agent.daemon import build
from tests.support.agent_harness import Signer, policy_text, spool_events, write_config
from tests.support.ports import free_udp_port
from tests.support.waits import wait_for


class Upstream:
    """A loopback DNS server answering every A query with 192.0.2.1."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.queries: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while not self.stop.is_set():
            try:
                data, addr = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            query = dns.message.from_wire(data)
            self.queries.append(str(query.question[0].name))
            reply = dns.message.make_response(query)
            reply.answer.append(
                dns.rrset.from_text(query.question[0].name, 60, "IN", "A", "192.0.2.1")
            )
            self.sock.sendto(reply.to_wire(), addr)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)
        self.sock.close()


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream()
    yield server
    server.close()


def addresses(reply: dns.message.Message) -> list[str]:
    return [r.address for rrset in reply.answer for r in rrset if r.rdtype == dns.rdatatype.A]


@pytest.mark.parametrize("mode", ["enforce", "monitor"])
def test_denied_name_through_the_proxy(tmp_path: Path, upstream: Upstream, mode: str) -> None:
    token = secrets.token_hex(3)
    signer = Signer()
    domain = f"deepseek-{token}.test"
    signer.write(
        tmp_path / "policy.toml",
        policy_text(
            token,
            extra=f'[[domain]]\nid = "deepseek-web"\nnames = ["{domain}"]\naction = "block"\n',
        ),
    )
    port = free_udp_port()
    config_path = write_config(
        tmp_path,
        signer,
        mode=mode,
        process="off",
        extra=f'[dns]\nproxy_listen = "127.0.0.1:{port}"\n'
        f'upstreams = ["127.0.0.1:{upstream.port}"]\n',
    )
    text = config_path.read_text().replace('dns = "off"', 'dns = "proxy"')
    config_path.write_text(text)
    daemon = build(load_agent_config(config_path), with_reporter=False)
    daemon.start()
    try:
        assert daemon.dns_state == "running", daemon.dns_state
        allowed = dns.query.udp(dns.message.make_query("example.org", "A"), "127.0.0.1", 3, port)
        assert addresses(allowed) == ["192.0.2.1"]
        denied = dns.query.udp(dns.message.make_query(f"chat.{domain}", "A"), "127.0.0.1", 3, port)
        if mode == "enforce":
            assert "192.0.2.1" not in addresses(denied)
        else:
            assert addresses(denied) == ["192.0.2.1"]
        state = tmp_path / "state"
        events = wait_for(lambda: [e for e in spool_events(state) if e["kind"] == "dns"], 5)
        assert len(events) == 1, events
        event = events[0]
        assert event["rule"] == "deepseek-web"
        assert event["dns"]["qname"] == f"chat.{domain}"
        assert event["action"] == ("sinkholed" if mode == "enforce" else "would_block")
        assert event["policy"]["id"] == "test-ban"
        # the same name again is folded, not a second row
        dns.query.udp(dns.message.make_query(f"chat.{domain}", "A"), "127.0.0.1", 3, port)
        assert wait_for(lambda: daemon.dns.guard.counts["folded"] >= 1, 5)
        assert len([e for e in spool_events(state) if e["kind"] == "dns"]) == 1
    finally:
        daemon.stop()
        daemon.shutdown()


def test_dns_capture_without_privileges_degrades_and_the_agent_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Asked for capture where it cannot run: process enforcement goes on, status says why."""
    signer = Signer()
    signer.write(tmp_path / "policy.toml", policy_text("abc123"))
    config_path = write_config(tmp_path, signer, process="off")
    config_path.write_text(config_path.read_text().replace('dns = "off"', 'dns = "capture"'))

    from proscribe.agent.sensors.dns import capture

    def refuse(self: object) -> None:  # what opening a packet socket does without root
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(capture.DnsCapture, "start", refuse)
    daemon = build(load_agent_config(config_path), with_reporter=False)
    daemon.start()
    try:
        assert daemon.dns_state.startswith(("failed", "unavailable")), daemon.dns_state
        assert daemon.status()["sensors"]["dns"]["state"] == daemon.dns_state
    finally:
        daemon.stop()
        daemon.shutdown()


@pytest.mark.root
@pytest.mark.linux
def test_encrypted_dns_connection_becomes_an_event(tmp_path: Path, upstream: Upstream) -> None:
    """A process holding a connection to a DoH resolver (here 127.0.0.2:443, added with
    ``[dns] doh_resolvers``) is reported as ``encrypted-dns`` with that process."""
    import subprocess
    import sys

    signer = Signer()
    signer.write(tmp_path / "policy.toml", policy_text("doh123"))
    port = free_udp_port()
    config_path = write_config(
        tmp_path,
        signer,
        process="off",
        extra=f'[dns]\nproxy_listen = "127.0.0.1:{port}"\n'
        f'upstreams = ["127.0.0.1:{upstream.port}"]\ndoh_resolvers = ["127.0.0.2"]\n',
    )
    config_path.write_text(config_path.read_text().replace('dns = "off"', 'dns = "proxy"'))
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.2", 443))
    listener.listen(4)
    daemon = build(load_agent_config(config_path), with_reporter=False)
    daemon.start()
    client = subprocess.Popen(
        [sys.executable, "-c", "import socket, time\n"
         "s = socket.create_connection(('127.0.0.2', 443))\ntime.sleep(120)\n"]
    )  # fmt: skip
    try:
        state = tmp_path / "state"

        def reported() -> list[dict[str, object]]:
            return [e for e in spool_events(state) if e.get("rule") == "encrypted-dns"]

        # the watch looks every 5 s, longer when many sockets (TIME_WAIT from other tests) exist
        events = wait_for(reported, 45)
        assert len(events) == 1, spool_events(state)
        event = events[0]
        assert event["process"]["pid"] == client.pid  # type: ignore[index]
        assert event["dns"] == {"qname": "127.0.0.2", "qtype": "DoH", "resolver": "127.0.0.2:443"}
        assert event["action"] == "reported" and event["kind"] == "dns"
        assert daemon.status()["sensors"]["dns"]["encrypted_dns"]["reported"] == 1
    finally:
        client.kill()
        client.wait(10)
        daemon.stop()
        daemon.shutdown()
        listener.close()
