"""``proscribe collector serve`` with a certificate serves HTTPS only: a client pinning that
certificate enrolls and posts events; a client trusting another CA sends nothing; plain HTTP to
the port gets no answer."""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from proscribe.collector.storage import open_database
from proscribe.collector.storage.agents import create_enroll_secret
from proscribe.core.events import new_event
from tests.support.devserver import CollectorProcess
from tests.support.simulate import SimulatedAgent

pytestmark = pytest.mark.slow


def _self_signed(folder: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path = folder / f"{name}.crt"
    key_path = folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


@pytest.fixture
def tls_collector(tmp_path: Path) -> Iterator[tuple[CollectorProcess, Path]]:
    cert, key = _self_signed(tmp_path, "collector")
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
    other_cert, _ = _self_signed(tmp_path, "other")
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
