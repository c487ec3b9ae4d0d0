"""The reporter against a real loopback collector double: delivery, backoff, TLS, enrollment."""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from proscribe.agent.config import load_agent_config
from proscribe.agent.reporter import (
    IdentityStore,
    Reporter,
    ReporterConfig,
    Transport,
    TransportError,
    build_reporter,
    read_status,
    reporter_for_url,
)
from proscribe.agent.spool import Spool
from proscribe.core.errors import ConfigError
from proscribe.core.events import new_event
from tests.support.agent_harness import write_secret
from tests.support.clock import ManualClock
from tests.support.collector_double import CollectorDouble
from tests.support.waits import wait_for

HOST = {"hostname": "ws-01", "os": "linux", "agent_version": "test"}


def violation(**kw: Any) -> dict[str, Any]:
    return new_event(
        "process",
        rule=kw.pop("rule", "deepseek"),
        action="killed",
        process={"pid": 42, "name": "deepseek", "exe": kw.pop("exe", "/opt/ds/deepseek")},
        **kw,
    )


class Agent:
    """A spool, identity and reporter wired as the daemon would, for one test."""

    def __init__(
        self,
        tmp: Path,
        url: str,
        ca_file: Path | None = None,
        max_events: int = 100_000,
        clock: Callable[[], float] = time.time,
        **config: Any,
    ) -> None:
        self.spool = Spool(tmp / "spool.db", max_events=max_events)
        secret = tmp / "enroll.secret"
        write_secret(secret, "s3cret\n")
        self.identity = IdentityStore(tmp / "state", secret, HOST)
        self.transport = Transport(url, ca_file=ca_file, timeout=(2.0, 5.0))
        defaults: dict[str, Any] = {
            "heartbeat_interval": 3600.0,
            "heartbeat_jitter": 0.0,
            "policy_interval": 3600.0,
            "idle_check": 30.0,
            "backoff_base": 0.05,
            "backoff_cap": 0.3,
        }
        defaults.update(config)
        self.policies: list[tuple[bytes, bytes]] = []
        self.reporter = Reporter(
            self.spool,
            self.transport,
            self.identity,
            ReporterConfig(**defaults),
            clock,
            heartbeat_source=lambda: {"mode": "enforce", "sensors": {"process": "netlink"}},
            on_policy=lambda data, sig: self.policies.append((data, sig)),
            rng=random.Random(0),
        )

    def add(self, n: int, **kw: Any) -> list[str]:
        ids = []
        for _ in range(n):
            event = violation(**kw)
            assert self.spool.append(event)
            ids.append(event["id"])
        return ids

    def close(self) -> None:
        self.reporter.stop(5)
        self.transport.close()
        self.spool.close()


@pytest.fixture
def collector() -> Iterator[CollectorDouble]:
    server = CollectorDouble().start()
    yield server
    server.stop()


@pytest.fixture
def agent_factory(tmp_path: Path) -> Iterator[Callable[..., Agent]]:
    made: list[Agent] = []

    def make(url: str, ca_file: Path | None = None, **config: Any) -> Agent:
        agent = Agent(tmp_path / f"agent{len(made)}", url, ca_file, **config)
        made.append(agent)
        return agent

    yield make
    for agent in made:
        agent.close()


# -- delivery -------------------------------------------------------------------------------


def test_notify_sends_a_violation_at_once_not_at_the_next_check(
    collector: CollectorDouble, agent_factory: Callable[..., Agent], clock: ManualClock
) -> None:
    # The reporter's clock is frozen, so none of its timers (the next idle check is 30 s away)
    # can come due: an event that arrives was sent because notify() woke the loop. How fast
    # that is on a real machine is bench.reporter_latency's figure, not this test's.
    agent = agent_factory(collector.url, clock=clock)
    agent.reporter.start()
    # enrolled, first heartbeat and policy poll done: the loop goes idle
    assert wait_for(lambda: len(collector.log) >= 3)
    # Let it reach its idle wait (not observable). Were it still in the turn, the event would
    # go in that turn: the test would pass without proving notify, never fail wrongly.
    time.sleep(0.2)
    [event_id] = agent.add(1)
    agent.reporter.notify()
    assert wait_for(lambda: event_id in collector.events, timeout=10)  # < the 30 s idle check
    post = collector.event_posts()[-1]
    assert post.gzip and post.status == 200
    assert wait_for(lambda: agent.spool.stats().depth == 0)
    assert agent.spool.recent(1)[0].state == "sent"
    status = agent.reporter.status()
    assert status["enrolled"] and status["agent_id"] in collector.agents
    assert status["last_upload"] is not None


def test_heartbeat_carries_spool_figures_and_policy_is_handed_over(
    collector: CollectorDouble, agent_factory: Callable[..., Agent]
) -> None:
    collector.policy = (b"[meta]\nschema = 1\n", b'{"signatures": []}')
    agent = agent_factory(collector.url, policy_interval=0.2, max_events=2)
    for detail in ("a", "b", "c"):  # the third evicts the first: one drop
        agent.spool.append(new_event("health", rule=None, action="reported", detail=detail))
    agent.reporter.start()
    assert wait_for(lambda: len(collector.heartbeats) >= 1)
    beat = collector.heartbeats[0]
    assert beat["mode"] == "enforce" and beat["hostname"] == "ws-01"
    assert beat["spool"]["dropped"] == 1
    assert set(beat["spool"]) == {"depth", "bytes", "dropped"}
    assert wait_for(lambda: len(agent.policies) == 1)
    assert agent.policies[0] == collector.policy
    # later polls send If-None-Match and get 304: the callback is not called again
    assert wait_for(
        lambda: any(e.path == "/api/v1/policy" and e.status == 304 for e in collector.log)
    )
    assert len(agent.policies) == 1


@contextlib.contextmanager
def clocked_reporter(
    collector: CollectorDouble, tmp_path: Path, config: ReporterConfig, now: list[float], **kw: Any
) -> Iterator[tuple[Reporter, Spool]]:
    """A reporter whose clock is ``now[0]`` (the test moves it), with its spool; closed after."""
    secret = tmp_path / "enroll.secret"
    write_secret(secret, "s3cret")
    spool = Spool(tmp_path / "spool.db")
    transport = Transport(collector.url, timeout=(2.0, 5.0))
    reporter = Reporter(
        spool,
        transport,
        IdentityStore(tmp_path / "state", secret, HOST),
        config,
        clock=lambda: now[0],
        rng=random.Random(5),
        **kw,
    )
    try:
        yield reporter, spool
    finally:
        transport.close()
        spool.close()


def test_heartbeat_schedule_and_backoff_reset_with_an_injected_clock(
    collector: CollectorDouble, tmp_path: Path
) -> None:
    now = [1_000_000.0]
    config = ReporterConfig(policy_interval=3600.0, idle_check=3600.0)  # heartbeats: 60 s ± 6 s
    with clocked_reporter(collector, tmp_path, config, now) as (reporter, spool):
        reporter.run_once()  # enroll, first heartbeat, first policy poll
        assert len(collector.heartbeats) == 1
        sleep = reporter.run_once()
        assert 54.0 <= sleep <= 66.0  # next heartbeat due in 60 s ± 6 s
        now[0] += 53.9
        reporter.run_once()
        assert len(collector.heartbeats) == 1
        now[0] += 12.2
        reporter.run_once()
        assert len(collector.heartbeats) == 2

        # failures grow the wait (full jitter, capped), a success resets it (502: the collector
        # is unreachable behind its proxy, which is never searched for a bad event)
        collector.script["/api/v1/events"] = [(502, {}, {"error": "boom"})] * 6
        spool.append(violation())
        ceilings = []
        for _ in range(6):
            reporter.run_once()
            ceilings.append(reporter._blocked_until - now[0])
            now[0] = reporter._blocked_until
        assert all(0.5 <= c <= 900 for c in ceilings)
        assert ceilings[-1] > ceilings[0]
        assert reporter._backoff.attempt == 6
        reporter.run_once()
        assert spool.stats().depth == 0
        assert reporter._backoff.attempt == 0


@pytest.mark.parametrize(
    ("told", "interval"),
    [
        (300, 300.0),  # a large fleet's setting, adopted
        (5, 15.0),  # below the floor: clamped, never a flood
        (86_400, 3600.0),  # above the ceiling: clamped, the host still shows as alive
        ("300", 60.0),  # not a number: the current interval stays
        (True, 60.0),
    ],
)
def test_the_collector_sets_the_heartbeat_interval_within_bounds(
    collector: CollectorDouble, tmp_path: Path, told: object, interval: float
) -> None:
    now = [1_000_000.0]
    collector.heartbeat_interval = told
    config = ReporterConfig(policy_interval=86_400.0, idle_check=86_400.0)
    with clocked_reporter(collector, tmp_path, config, now) as (reporter, _spool):
        reporter.run_once()  # enroll, first heartbeat: the answer names the interval
        assert reporter.heartbeat_interval == interval
        sleep = reporter.run_once()
        assert interval * 0.9 <= sleep <= interval * 1.1  # ± 10 % jitter
        now[0] += interval * 0.89
        reporter.run_once()
        assert len(collector.heartbeats) == 1
        now[0] += interval * 0.22
        reporter.run_once()
        assert len(collector.heartbeats) == 2


def test_the_policy_is_polled_as_a_fallback_only_a_new_hash_fetches_it_at_once(
    collector: CollectorDouble, tmp_path: Path
) -> None:
    now = [1_000_000.0]
    policies: list[tuple[bytes, bytes]] = []

    def polls() -> int:
        return sum(e.path == "/api/v1/policy" for e in collector.log)

    config = ReporterConfig(idle_check=86_400.0)  # the product's heartbeat and policy intervals
    with clocked_reporter(
        collector, tmp_path, config, now, on_policy=lambda data, sig: policies.append((data, sig))
    ) as (reporter, _spool):
        reporter.run_once()  # enroll, first heartbeat, first poll (404: none yet)
        assert polls() == 1
        for _ in range(5):  # five minutes of heartbeats: no poll
            now[0] += 67.0
            reporter.run_once()
        assert len(collector.heartbeats) == 6 and polls() == 1
        collector.policy = (b"[meta]\nschema = 1\n", b'{"signatures": []}')
        now[0] += 67.0
        reporter.run_once()  # the heartbeat names a new hash: fetched in the same round
        reporter.run_once()
        assert polls() == 2 and len(policies) == 1


def test_413_halves_the_batch_until_it_fits(
    collector: CollectorDouble, agent_factory: Callable[..., Agent]
) -> None:
    collector.max_batch = 3
    agent = agent_factory(collector.url)
    ids = agent.add(10)
    agent.reporter.start()
    assert wait_for(lambda: set(ids) <= set(collector.events))
    sizes = [(p.n_events, p.status) for p in collector.event_posts()]
    assert sizes[:3] == [(10, 413), (5, 413), (2, 200)]
    assert all(n <= 3 for n, status in sizes if status == 200)
    assert agent.spool.stats().dead_lettered == 0


def test_single_event_still_413_is_dead_lettered_and_the_rest_flows(
    collector: CollectorDouble, agent_factory: Callable[..., Agent]
) -> None:
    agent = agent_factory(collector.url)
    first = agent.add(2)
    [huge] = agent.add(1, detail="pretend this is too large")
    last = agent.add(2)
    collector.too_large_ids = {huge}
    agent.reporter.start()
    assert wait_for(lambda: set(first + last) <= set(collector.events))
    assert wait_for(lambda: agent.spool.stats().dead_lettered == 1)
    [dead] = [r for r in agent.spool.recent(10) if r.state == "dead"]
    assert dead.id == huge and "413" in (dead.error or "")
    assert huge not in collector.events


def test_a_one_off_400_for_a_batch_dead_letters_nothing(
    collector: CollectorDouble, agent_factory: Callable[..., Agent]
) -> None:
    # The batch is searched for a bad event; none fails alone, so every event arrives.
    collector.script["/api/v1/events"] = [(400, {}, {"error": "bad_request"})]
    agent = agent_factory(collector.url)
    ids = agent.add(3)
    agent.reporter.start()
    assert wait_for(lambda: set(ids) <= set(collector.events))
    assert wait_for(lambda: agent.spool.stats().depth == 0)
    assert agent.spool.stats().dead_lettered == 0
    assert collector.duplicates == 0


def test_rejected_event_is_dead_lettered_alone(
    collector: CollectorDouble, agent_factory: Callable[..., Agent]
) -> None:
    agent = agent_factory(collector.url)
    ids = agent.add(4)
    collector.reject_ids = {ids[1]}
    agent.reporter.start()
    assert wait_for(lambda: agent.spool.stats().depth == 0)
    assert set(collector.events) == {ids[0], ids[2], ids[3]}
    stats = agent.spool.stats()
    assert (stats.sent, stats.dead_lettered) == (3, 1)


def test_503_retry_after_is_honoured(
    collector: CollectorDouble, agent_factory: Callable[..., Agent], clock: ManualClock
) -> None:
    collector.script["/api/v1/events"] = [(503, {"Retry-After": "1"}, {"error": "busy"})]
    agent = agent_factory(collector.url, clock=clock)
    [event_id] = agent.add(1)
    # the loop's turns by hand, on the injected clock: enroll, then the batch is refused
    assert agent.reporter.run_once() == pytest.approx(1.0, abs=1e-3)
    assert [post.status for post in collector.event_posts()] == [503]
    assert agent.reporter.status()["next_attempt"] is not None
    clock.advance(0.9)
    agent.reporter.notify()  # a notify does not jump the queue while throttled
    assert agent.reporter.run_once() == pytest.approx(0.1, abs=1e-3)
    assert len(collector.event_posts()) == 1
    clock.advance(0.2)  # the second has passed
    agent.reporter.run_once()
    assert [post.status for post in collector.event_posts()] == [503, 200]
    assert event_id in collector.events


def test_collector_down_then_up_every_event_arrives_once(
    collector: CollectorDouble, agent_factory: Callable[..., Agent]
) -> None:
    agent = agent_factory(collector.url)
    agent.reporter.start()
    assert wait_for(lambda: agent.identity.enrolled)
    port = collector.port
    collector.stop()
    ids = agent.add(30)
    agent.reporter.notify()
    assert wait_for(lambda: (agent.reporter.status()["last_error"] or "").startswith("events"))
    time.sleep(1.0)  # several failed attempts, backing off
    more = agent.add(20)
    collector.start(port)
    assert wait_for(lambda: set(ids + more) <= set(collector.events), timeout=10)
    assert wait_for(lambda: agent.spool.stats().depth == 0)
    assert len(collector.events) == 50
    assert collector.duplicates == 0


def test_lost_acknowledgement_resend_is_stored_once(
    collector: CollectorDouble, agent_factory: Callable[..., Agent]
) -> None:
    collector.lose_ack_once = True
    agent = agent_factory(collector.url)
    ids = agent.add(5)
    agent.reporter.start()
    assert wait_for(lambda: agent.spool.stats().depth == 0, timeout=5)
    assert set(collector.events) == set(ids)
    assert collector.duplicates == 5  # the resend, acknowledged as duplicate
    assert agent.spool.stats().sent == 5


def test_unknown_agent_reenrolls_and_keeps_the_spool(
    collector: CollectorDouble, agent_factory: Callable[..., Agent]
) -> None:
    agent = agent_factory(collector.url)
    agent.reporter.start()
    assert wait_for(lambda: agent.identity.enrolled)
    first_id = agent.identity.agent_id
    with collector.lock:
        collector.agents.clear()  # the collector lost its database
    pending = agent.add(7)
    agent.reporter.notify()
    assert wait_for(lambda: set(pending) <= set(collector.events), timeout=5)
    assert agent.reporter.enrollments == 2
    assert agent.identity.agent_id != first_id
    assert collector.public_keys[0] == collector.public_keys[1]  # same key for unknown_agent
    assert wait_for(lambda: agent.spool.stats().depth == 0)


def test_revoked_agent_reenrolls_with_a_new_key(
    collector: CollectorDouble, agent_factory: Callable[..., Agent]
) -> None:
    agent = agent_factory(collector.url)
    agent.reporter.start()
    assert wait_for(lambda: agent.identity.enrolled)
    with collector.lock:
        collector.revoked.add(str(agent.identity.agent_id))
    pending = agent.add(3)
    agent.reporter.notify()
    assert wait_for(lambda: set(pending) <= set(collector.events), timeout=5)
    assert len(set(collector.public_keys)) == 2
    key = (agent.identity.state_dir / "agent.key").stat().st_mode & 0o777
    assert key == 0o600


def test_enrollment_flood_429_waits_for_retry_after(
    collector: CollectorDouble, agent_factory: Callable[..., Agent], clock: ManualClock
) -> None:
    collector.script["/api/v1/enroll"] = [(429, {"Retry-After": "1"}, {"error": "rate_limited"})]
    agent = agent_factory(collector.url, clock=clock)
    assert agent.reporter.run_once() == pytest.approx(1.0, abs=1e-3)  # told to wait 1 s
    clock.advance(0.9)
    assert agent.reporter.run_once() == pytest.approx(0.1, abs=1e-3)  # not yet: no request
    assert not agent.identity.enrolled
    clock.advance(0.2)
    agent.reporter.run_once()
    assert agent.identity.enrolled
    enrolls = [e for e in collector.log if e.path == "/api/v1/enroll"]
    assert [e.status for e in enrolls] == [429, 200]


def test_bad_enroll_secret_is_reported_and_nothing_is_lost(
    collector: CollectorDouble, agent_factory: Callable[..., Agent]
) -> None:
    collector.secret = "another"
    agent = agent_factory(collector.url)
    agent.add(2)
    assert agent.reporter.run_once() > 0
    assert "enroll refused: HTTP 401 bad_secret" in (agent.reporter.status()["last_error"] or "")
    assert not agent.identity.enrolled
    assert agent.spool.stats().depth == 2


def test_reporter_for_url_writes_status_for_agent_status(
    collector: CollectorDouble, tmp_path: Path
) -> None:
    secret = tmp_path / "enroll.secret"
    write_secret(secret, "s3cret")
    spool = Spool(tmp_path / "state" / "spool.db")
    reporter = reporter_for_url(
        spool,
        url=collector.url,
        ca_file=None,
        enroll_secret_file=secret,
        state_dir=tmp_path / "state",
        host_facts=HOST,
    )
    try:
        event = violation()
        event_id = event["id"]
        assert spool.append(event)
        reporter.start()
        status_file = tmp_path / "state" / "reporter.json"
        assert wait_for(lambda: (read_status(status_file) or {}).get("last_upload") is not None)
        status = read_status(status_file)
        assert status is not None and status["enrolled"] and status["last_error"] is None
        assert event_id in collector.events
        assert (tmp_path / "state" / "agent.key").stat().st_mode & 0o777 == 0o600
    finally:
        reporter.stop()
        reporter.transport.close()
        spool.close()


def test_build_reporter_from_the_agent_config(collector: CollectorDouble, tmp_path: Path) -> None:
    write_secret(tmp_path / "enroll.secret", "s3cret\n")
    (tmp_path / "agent.toml").write_text(
        f"""
[agent]
state_dir = "{tmp_path / "state"}"
hostname = "pinned-name"

[collector]
url = "{collector.url}"
enroll_secret_file = "{tmp_path / "enroll.secret"}"
"""
    )
    config = load_agent_config(tmp_path / "agent.toml")
    spool = Spool(config.spool_path)
    reporter = build_reporter(config, spool=spool, heartbeat_source=lambda: {"mode": "monitor"})
    try:
        reporter.start()
        assert wait_for(lambda: len(collector.heartbeats) == 1)
        assert collector.heartbeats[0]["hostname"] == "pinned-name"
        assert reporter.status()["agent_id"] in collector.agents
    finally:
        reporter.stop()
        reporter.transport.close()
        spool.close()


# -- transport ------------------------------------------------------------------------------


def test_plain_http_only_to_loopback_and_https_needs_a_ca(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"collector\.url: plain http"):
        Transport("http://collector.example:8443")
    with pytest.raises(ConfigError, match=r"collector\.ca_file"):
        Transport("https://collector.example:8443")
    with pytest.raises(ConfigError, match=r"collector\.ca_file"):
        Transport("https://collector.example:8443", ca_file=tmp_path / "missing.pem")
    with pytest.raises(ConfigError, match=r"collector\.url"):
        Transport("ftp://collector.example")
    Transport("http://127.0.0.1:1").close()
    Transport("http://[::1]:1").close()
    Transport("http://localhost:1").close()


def test_a_server_that_never_answers_times_out() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
                accepted.append(conn)  # hold it open, never answer
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept)
    thread.start()
    transport = Transport(f"http://127.0.0.1:{listener.getsockname()[1]}", timeout=(0.5, 0.5))
    try:
        started = time.monotonic()
        with pytest.raises(TransportError, match="timed out"):
            transport.post_json("/api/v1/events", {"events": []})
        # Real socket timeouts, so the wall clock: the call gave up instead of hanging (0.5 s
        # to connect and 0.5 s to read; the bound is generous for a loaded machine).
        assert time.monotonic() - started < 3
        assert accepted
    finally:
        stop.set()
        thread.join()
        transport.close()
        for conn in accepted:
            conn.close()
        listener.close()


def test_an_endless_reply_is_cut_off_at_the_cap() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    sent = [0]

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n")
            chunk = b"A" * 65536
            try:
                while sent[0] < 64 * 1024 * 1024:  # bounded, far past the cap
                    conn.sendall(chunk)
                    sent[0] += len(chunk)
            except OSError:
                pass  # the client hung up: what we want

    thread = threading.Thread(target=serve)
    thread.start()
    transport = Transport(
        f"http://127.0.0.1:{listener.getsockname()[1]}",
        timeout=(2.0, 5.0),
        max_response_bytes=1024 * 1024,
    )
    try:
        with pytest.raises(TransportError, match="larger than"):
            transport.get("/api/v1/policy")
    finally:
        transport.close()
        thread.join(10)
        listener.close()
    assert sent[0] < 64 * 1024 * 1024


# -- TLS ------------------------------------------------------------------------------------


class Pki:
    """Throwaway CAs and server certificates, written under a temp dir."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.now = dt.datetime.now(dt.UTC)

    def _name(self, cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def ca(self, name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(self._name(name))
            .issuer_name(self._name(name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self.now - dt.timedelta(days=1))
            .not_valid_after(self.now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        path = self.root / f"{name}.pem"
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return key, cert, path

    def server(
        self,
        ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate, Path],
        name: str,
        *,
        ip: str | None = "127.0.0.1",
        dns: str | None = None,
        expired: bool = False,
    ) -> ssl.SSLContext:
        ca_key, ca_cert, _ = ca
        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = []
        if ip:
            sans.append(x509.IPAddress(ipaddress.ip_address(ip)))
        if dns:
            sans.append(x509.DNSName(dns))
        start = self.now - dt.timedelta(days=10 if expired else 1)
        end = self.now - dt.timedelta(days=2) if expired else self.now + dt.timedelta(days=10)
        cert = (
            x509.CertificateBuilder()
            .subject_name(self._name(name))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        cert_path = self.root / f"{name}.crt"
        key_path = self.root / f"{name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert_path, key_path)
        return ctx


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    root = tmp_path / "pki"
    root.mkdir()
    return Pki(root)


def _tls_collector(ctx: ssl.SSLContext) -> CollectorDouble:
    return CollectorDouble(tls=ctx).start()


def test_pinned_ca_delivers_over_tls(pki: Pki, agent_factory: Callable[..., Agent]) -> None:
    ca = pki.ca("pinned-ca")
    server = _tls_collector(pki.server(ca, "good"))
    try:
        agent = agent_factory(server.url, ca_file=ca[2])
        ids = agent.add(2)
        agent.reporter.start()
        assert wait_for(lambda: set(ids) <= set(server.events))
    finally:
        server.stop()


@pytest.mark.parametrize("case", ["other_ca", "expired", "wrong_hostname"])
def test_bad_server_certificate_means_nothing_is_sent(
    case: str, pki: Pki, agent_factory: Callable[..., Agent]
) -> None:
    pinned = pki.ca("pinned-ca")
    if case == "other_ca":
        ctx = pki.server(pki.ca("rogue-ca"), "rogue")
    elif case == "expired":
        ctx = pki.server(pinned, "expired", expired=True)
    else:
        ctx = pki.server(pinned, "elsewhere", ip=None, dns="collector.elsewhere.example")
    server = _tls_collector(ctx)
    try:
        agent = agent_factory(server.url, ca_file=pinned[2])
        agent.add(1)
        with pytest.raises(TransportError, match="TLS verification failed") as caught:
            agent.transport.post_json("/api/v1/events", {"events": []})
        assert "\n" not in str(caught.value) and "_ssl.c" not in str(caught.value)
        expected = {"other_ca": "unable to get local issuer", "expired": "expired"}
        assert expected.get(case, "mismatch") in str(caught.value)
        agent.reporter.run_once()  # enrollment over the same channel fails the same way
        assert "TLS verification failed" in (agent.reporter.status()["last_error"] or "")
        assert server.handled == 0  # the handshake failed before any request was read
        assert not agent.identity.enrolled
        assert agent.spool.stats().depth == 1
    finally:
        server.stop()


def test_requests_ca_bundle_cannot_override_the_pinned_ca(
    pki: Pki, agent_factory: Callable[..., Agent], monkeypatch: pytest.MonkeyPatch
) -> None:
    pinned = pki.ca("pinned-ca")
    rogue = pki.ca("rogue-ca")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(rogue[2]))
    monkeypatch.setenv("CURL_CA_BUNDLE", str(rogue[2]))
    rogue_server = _tls_collector(pki.server(rogue, "rogue"))
    good_server = _tls_collector(pki.server(pinned, "good"))
    try:
        agent = agent_factory(rogue_server.url, ca_file=pinned[2])
        with pytest.raises(TransportError, match="TLS verification failed"):
            agent.transport.post_json("/api/v1/events", {"events": []})
        assert rogue_server.handled == 0
        # and the environment does not break the pinned CA either
        honest = agent_factory(good_server.url, ca_file=pinned[2])
        reply = honest.transport.post_json("/api/v1/events", {"events": []})
        assert reply.status == 401  # reached the server: unsigned, so unknown_agent
        assert good_server.handled == 1
    finally:
        rogue_server.stop()
        good_server.stop()


def test_public_names() -> None:
    import proscribe.agent.reporter as pkg

    assert sorted(pkg.__all__) == [
        "Backoff",
        "IdentityStore",
        "Reply",
        "Reporter",
        "ReporterConfig",
        "Transport",
        "TransportError",
        "backoff_delay",
        "build_identity",
        "build_reporter",
        "check_collector_url",
        "parse_retry_after",
        "read_status",
        "reporter_for_url",
    ]
    assert all(hasattr(pkg, name) for name in pkg.__all__)
