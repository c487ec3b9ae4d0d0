"""``proscribe collector serve`` with a certificate serves HTTPS only: a client pinning that
certificate enrolls and posts events; a client trusting another CA sends nothing; plain HTTP to
the port gets no answer."""

from __future__ import annotations

import http.client
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from proscribe.collector.storage import open_database
from proscribe.collector.storage.agents import create_enroll_secret
from proscribe.core.events import new_event
from tests.support.devserver import CollectorProcess
from tests.support.simulate import SimulatedAgent
from tests.support.tls_files import self_signed

pytestmark = pytest.mark.slow


@pytest.fixture
def tls_collector(tmp_path: Path) -> Iterator[tuple[CollectorProcess, Path]]:
    cert, key = self_signed(tmp_path, "collector")
    server = CollectorProcess(
        tmp_path / "srv", server_toml=f'tls_cert = "{cert}"\ntls_key = "{key}"\n'
    )
    with server:
        yield server, cert


def test_https_with_pinned_certificate(tls_collector: tuple[CollectorProcess, Path]) -> None:
    server, cert = tls_collector
    assert server.url.startswith("https://")
    db = open_database(server.database_url)
    with db.write() as conn:
        secret = create_enroll_secret(conn, "tls", 0)[1]
    db.dispose()
    pinned = ssl.create_default_context(cafile=str(cert))
    agent = SimulatedAgent(server.url, ssl_context=pinned)
    try:
        assert agent.enroll(secret).status == 200
        reply = agent.post_events(
            [new_event("dns", rule="r", action="sinkholed", dns={"qname": "chat.deepseek.com"})]
        )
        assert reply.status == 200
        assert reply.json()["results"][0]["status"] == "stored"
    finally:
        agent.close()


def test_other_ca_or_plain_http_gets_nothing(
    tls_collector: tuple[CollectorProcess, Path], tmp_path: Path
) -> None:
    server, _cert = tls_collector
    other_cert, _ = self_signed(tmp_path, "other")
    wrong = SimulatedAgent(
        server.url, ssl_context=ssl.create_default_context(cafile=str(other_cert))
    )
    with pytest.raises(ssl.SSLCertVerificationError):
        wrong.enroll("pse_x")
    wrong.close()
    plain = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        plain.request("GET", "/healthz")
        response = plain.getresponse()
        status = response.status
    except (http.client.HTTPException, OSError):
        status = None
    finally:
        plain.close()
    assert status in (None, 400)  # never a 200 over plain HTTP
