"""Forwarding to Debian's real rsyslogd (imtcp on loopback, octet-counted framing): every stored
event arrives once, in order, with its fields in RFC 5424 structured data as rsyslog parses
them; a receiver down for an hour is caught up without loss; collector restarts keep the
cursor; a poison event is dead-lettered and never blocks the rest."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from proscribe.collector.config import settings_from_mapping
from proscribe.collector.forward.runner import POLL_S, Forwarder
from proscribe.collector.forward.settings import ForwardSettings
from proscribe.collector.forward.store import ForwardStore
from proscribe.collector.forward.syslog import SyslogDestination
from proscribe.collector.storage.events import insert_events
from proscribe.collector.storage.tables import forward_dead_letters
from proscribe.core.events import new_event
from tests.support.clock import ManualClock
from tests.support.forward_env import events, forwarding_collector
from tests.support.rsyslog import Rsyslog, available, sd_params, tls_available
from tests.support.tls_files import self_signed
from tests.support.waits import wait_for

pytestmark = [
    pytest.mark.linux,
    pytest.mark.skipif(
        not available(), reason="rsyslog is not installed (apt-get install rsyslog)"
    ),
]


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Rsyslog]:
    with Rsyslog(tmp_path / "rsyslog") as running:
        yield running


def _settings(port: int, **over: object) -> ForwardSettings:
    return settings_from_mapping({"forward": _forward(port, **over)}).forwards[0]


def _forward(port: int, **over: object) -> list[dict[str, object]]:
    table: dict[str, object] = {
        "name": "siem",
        "kind": "syslog",
        "url": f"tcp://127.0.0.1:{port}",
        "batch_size": 20,
        "rate": 1000.0,
        "retry_max": 1.0,
    }
    table.update(over)
    return [table]


def _ids(receiver: Rsyslog) -> list[str]:
    return [sd_params(r.sd)["id"] for r in receiver.received()]


def test_events_reach_rsyslog_in_order_with_every_field(tmp_path: Path, receiver: Rsyslog) -> None:
    hostile = new_event(
        "process",
        rule='rule]with"quote\\and',
        action="killed",
        severity="critical",
        policy={"id": "ai-ban", "serial": 7, "sha256": "ab" * 32},
        process={
            "pid": 4242,
            "ppid": 1,
            "name": "deep seek",
            "exe": "/opt/d]s/bin",
            "cmdline": ["ds", '--q="x]"', "C:\\path"],
            "user": "alice",
            "uid": 1000,
            "euid": 0,
            "sha256": "cd" * 32,
        },
        detail="détail 漢字",
    )
    with forwarding_collector(tmp_path, _forward(receiver.port)) as env:
        posted = [*events(25), hostile, *events(24, start=25)]
        env.post(posted[:10])
        env.post(posted[10:])
        assert wait_for(lambda: len(receiver.received()) >= 50, timeout=30)
        assert wait_for(lambda: env.status()["siem"].lag_events == 0)
        status = env.status()["siem"]
    got = receiver.received()
    assert [sd_params(r.sd)["id"] for r in got] == [e["id"] for e in posted]
    assert status.sent == 50 and status.dead_letters == 0 and status.last_error is None
    line = got[25]
    params = sd_params(line.sd)
    assert params["rule"] == 'rule]with"quote\\and'
    assert params["cmdline"] == 'ds --q="x]" C:\\path'
    assert params["exe"] == "/opt/d]s/bin"
    assert params["detail"] == "détail 漢字"
    assert params["policy_serial"] == "7" and params["euid"] == "0" and params["uid"] == "1000"
    assert params["agent_id"] == env.agent[0] and params["hostname"] == "ws-fw"
    assert line.pri == str(10 * 8 + 2)  # authpriv, crit
    assert line.msgid == "process" and line.app == "proscribe" and line.hostname == "ws-fw"
    assert line.msg.startswith('killed rule]with"quote\\and on ws-fw (alice)')


def test_receiver_down_an_hour_catches_up_without_loss(tmp_path: Path) -> None:
    clock = ManualClock()
    receiver = Rsyslog(tmp_path / "rsyslog")
    receiver.start()
    try:
        with forwarding_collector(tmp_path, _forward(receiver.port), clock=clock) as env:
            env.post(events(5))
            assert wait_for(lambda: len(receiver.received()) == 5, timeout=30)
            receiver.stop()
            down = events(60, start=5)
            env.post(down[:30])
            clock.advance(3600)
            env.post(down[30:])
            assert wait_for(lambda: env.status()["siem"].last_error, timeout=30)
            status = env.status()["siem"]
            assert status.lag_events == 60 and status.lag_seconds >= 3600
            receiver.start()
            assert wait_for(lambda: env.status()["siem"].lag_events == 0, timeout=60)
            assert wait_for(lambda: len(receiver.received()) >= 65, timeout=30)
            assert env.status()["siem"].last_error is None
    finally:
        receiver.stop()
    ids = _ids(receiver)
    expected = [e["id"] for e in events_posted(env)]
    assert set(ids) == set(expected)  # nothing lost
    assert ids == expected  # in order, and no duplicate (nothing was in flight when it stopped)


def events_posted(env: object) -> list[dict[str, object]]:
    from sqlalchemy import select as sel

    from proscribe.collector.storage.tables import events as table

    with env.db.read() as conn:  # type: ignore[attr-defined]
        bodies = conn.execute(sel(table.c.body).order_by(table.c.seq)).scalars().all()
    return [json.loads(b) for b in bodies]


def test_collector_restarts_keep_the_cursor(tmp_path: Path, receiver: Rsyslog) -> None:
    forwards = _forward(receiver.port)
    with forwarding_collector(tmp_path, forwards) as env:
        agent = env.agent
        env.post(events(15))
        assert wait_for(lambda: env.status()["siem"].lag_events == 0, timeout=30)
    # stopped: events stored meanwhile (by a collector without forwarding) wait for it
    with forwarding_collector(tmp_path, [], agent=agent) as env:
        env.post(events(10, start=15))
    with forwarding_collector(tmp_path, forwards, agent=agent) as env:
        assert wait_for(lambda: env.status()["siem"].lag_events == 0, timeout=30)
        env.post(events(5, start=25))
        assert wait_for(lambda: len(receiver.received()) >= 30, timeout=30)
        posted = [e["id"] for e in events_posted(env)]
    assert _ids(receiver) == posted  # each once, in order, across both restarts


def test_a_crash_before_the_cursor_moves_resends_only_the_batch_in_flight(
    tmp_path: Path, receiver: Rsyslog
) -> None:
    with forwarding_collector(tmp_path, []) as env:
        env.post(events(30))
        fw_settings = _settings(receiver.port, batch_size=10)
        first = Forwarder(env.db, fw_settings, owner="replica-a", clock=env.clock)
        assert first.run_round() == 0.0  # batch 1 sent and settled
        crash = first.store.advance

        def crashing(*_a: object, **_k: object) -> bool:
            raise RuntimeError("killed between send and cursor update")

        first.store.advance = crashing  # type: ignore[method-assign]
        with pytest.raises(RuntimeError):
            first.run_round()  # batch 2 sent, never settled
        first.store.advance = crash  # type: ignore[method-assign]
        first.store.release()
        first.destination.close()
        again = Forwarder(env.db, fw_settings, owner="replica-a2", clock=env.clock)
        while again.run_round() == 0.0:
            pass
        again.destination.close()
        posted = [e["id"] for e in events_posted(env)]
        assert wait_for(lambda: len(receiver.received()) >= 40, timeout=30)
    ids = _ids(receiver)
    assert ids == posted[:20] + posted[10:30]  # batch 2 twice, same ids; nothing lost
    assert len(set(ids)) == 30


def test_a_poison_event_is_dead_lettered_and_the_rest_flow(
    tmp_path: Path, receiver: Rsyslog
) -> None:
    with forwarding_collector(tmp_path, _forward(receiver.port)) as env:
        env.post(events(3))
        with env.db.write() as conn:  # a row no destination can render
            insert_events(
                conn,
                [
                    {
                        "event_id": "00000000-0000-4000-8000-00000000dead",
                        "agent_id": env.agent[0],
                        "time_us": 1,
                        "received_us": 1,
                        "hostname": "ws-fw",
                        "username": None,
                        "rule": None,
                        "kind": "process",
                        "action": "killed",
                        "severity": "high",
                        "body": "{not json",
                    }
                ],
            )
        env.post(events(3, start=3))
        assert wait_for(lambda: env.status()["siem"].lag_events == 0, timeout=30)
        assert wait_for(lambda: len(receiver.received()) >= 6, timeout=30)
        status = env.status()["siem"]
        with env.db.read() as conn:
            dead = conn.execute(select(forward_dead_letters)).all()
    assert status.sent == 6 and status.dead_letters == 1
    assert [d.event_id for d in dead] == ["00000000-0000-4000-8000-00000000dead"]
    assert "cannot render" in dead[0].reason
    assert len(_ids(receiver)) == 6


def test_only_one_replica_forwards_a_destination(tmp_path: Path, receiver: Rsyslog) -> None:
    clock = ManualClock()
    with forwarding_collector(tmp_path, [], clock=clock) as env:
        env.post(events(10))
        fw = _settings(receiver.port)
        a = Forwarder(env.db, fw, owner="a", clock=clock)
        b = Forwarder(env.db, fw, owner="b", clock=clock)
        a.store.ensure(0, "beginning")
        assert a.store.acquire(int(clock.now * 1e6))
        assert not b.store.acquire(int(clock.now * 1e6))
        assert b.run_round() > 0 and ForwardStore(env.db, "siem", "x").cursor() == 0
        clock.advance(31)  # a stopped renewing: its lease expires, b takes over
        assert b.run_round() == POLL_S
        # a's late cursor update is fenced by the lease
        assert not a.store.advance(10, sent=10, skipped=0, dead=[], now_us=0)
        a.destination.close()
        b.destination.close()
        assert wait_for(lambda: len(receiver.received()) >= 10, timeout=30)
    assert len(_ids(receiver)) == 10


@pytest.mark.skipif(not tls_available(), reason="apt-get install rsyslog-openssl")
def test_tls_to_rsyslog_and_a_certificate_it_does_not_trust(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path, "rsyslog-tls")
    other, _ = self_signed(tmp_path, "someone-else")
    with Rsyslog(tmp_path / "rsyslog", tls=(cert, key)) as receiver:
        url = f"tls://127.0.0.1:{receiver.port}"
        forwards = [
            {**_forward(receiver.port)[0], "url": url, "ca_file": str(cert), "format": "cef"},
            {**_forward(receiver.port)[0], "name": "untrusted", "url": url, "ca_file": str(other)},
        ]
        with forwarding_collector(tmp_path, forwards) as env:
            posted = events(12)
            env.post(posted)
            assert wait_for(lambda: env.status()["siem"].lag_events == 0, timeout=30)
            assert wait_for(lambda: len(receiver.received()) >= 12, timeout=30)
            assert wait_for(lambda: env.status()["untrusted"].last_error, timeout=30)
            untrusted = env.status()["untrusted"]
    assert "CERTIFICATE_VERIFY_FAILED" in (untrusted.last_error or "")
    assert untrusted.sent == 0 and untrusted.lag_events == 12
    got = receiver.received()
    assert len(got) == 12  # only the trusted forwarder's
    ids = [re.search(r"externalId=([0-9a-f-]+)", r.msg).group(1) for r in got]  # type: ignore[union-attr]
    assert ids == [e["id"] for e in posted]
    assert got[0].msg.startswith("CEF:0|Proscribe|Proscribe|")


@pytest.mark.skipif(not tls_available(), reason="apt-get install rsyslog-openssl")
def test_one_tls_connection_serves_many_batches_and_a_closed_one_is_replaced(
    tmp_path: Path,
) -> None:
    cert, key = self_signed(tmp_path, "rsyslog-tls")
    with Rsyslog(tmp_path / "rsyslog", tls=(cert, key)) as receiver:
        settings = settings_from_mapping(
            {
                "forward": [
                    {
                        "name": "s",
                        "kind": "syslog",
                        "ca_file": str(cert),
                        "url": f"tls://127.0.0.1:{receiver.port}",
                    }
                ]
            }
        ).forwards[0]
        dest = SyslogDestination(settings)
        batches = [events(5, start=5 * i) for i in range(3)]
        dest.send([dest.render(e) for e in batches[0]])
        first = dest._sock
        time.sleep(0.3)  # TLS 1.3 session tickets arrive: readable, yet alive
        dest.send([dest.render(e) for e in batches[1]])
        assert dest._sock is first
        receiver.stop()
        receiver.start()  # the old connection is gone: found before sending, not after
        assert wait_for(lambda: not dest._alive(first), timeout=10)
        dest.send([dest.render(e) for e in batches[2]])
        assert dest._sock is not first
        dest.close()
        assert wait_for(lambda: len(receiver.received()) >= 15, timeout=30)
    ids = [re.search(r'id="([0-9a-f-]+)"', r.sd).group(1) for r in receiver.received()]  # type: ignore[union-attr]
    assert ids == [e["id"] for batch in batches for e in batch]
