"""Webhook and Splunk HEC forwarding against a real local HTTPS server: signed JSON batches in
order, retries with backoff through 5xx/429/401, a refused event dead-lettered alone, the
per-destination rate limit, the Slack/Teams/ECS formats and the HEC token."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from proscribe.collector.storage.tables import forward_dead_letters
from tests.support.forward_env import ForwardEnv, events, forwarding_collector
from tests.support.waits import wait_for
from tests.support.webhook_receiver import Behaviour, WebhookReceiver

SECRET = b"webhook-test-secret-0123456789"


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "hook.key"
    path.write_bytes(SECRET + b"\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[WebhookReceiver]:
    with WebhookReceiver(tmp_path, Behaviour(secret=SECRET)) as running:
        yield running


def _hook(receiver: WebhookReceiver, **over: Any) -> list[dict[str, Any]]:
    table: dict[str, Any] = {
        "name": "hook",
        "kind": "webhook",
        "url": receiver.url,
        "ca_file": str(receiver.cert),
        "secret_file": "hook.key",
        "batch_size": 10,
        "rate": 1000.0,
        "retry_max": 1.0,
    }
    table.update(over)
    return [table]


def _delivered_ids(receiver: WebhookReceiver) -> list[str]:
    return [e["id"] for r in receiver.accepted() for e in json.loads(r.body)["events"]]


def _settled(env: ForwardEnv, name: str = "hook") -> bool:
    return env.status()[name].lag_events == 0


def test_signed_json_batches_arrive_in_order(
    tmp_path: Path, secret_file: Path, receiver: WebhookReceiver
) -> None:
    with forwarding_collector(tmp_path, _hook(receiver)) as env:
        env.post(events(25))
        assert wait_for(lambda: _settled(env), timeout=30)
        posted = [r["id"] for r in _stored(env)]
        status = env.status()["hook"]
    assert _delivered_ids(receiver) == posted
    assert [len(json.loads(r.body)["events"]) for r in receiver.accepted()] == [10, 10, 5]
    first = receiver.accepted()[0]
    assert first.signature_ok is True
    assert first.headers["x-proscribe-forwarder"] == "hook"
    assert first.headers["content-type"] == "application/json"
    assert status.sent == 25 and status.destination == f"https://127.0.0.1:{receiver.port}"


def _stored(env: ForwardEnv) -> list[dict[str, Any]]:
    from proscribe.collector.storage.tables import events as table

    with env.db.read() as conn:
        return [
            json.loads(b)
            for b in conn.execute(select(table.c.body).order_by(table.c.seq)).scalars()
        ]


def test_a_wrong_secret_is_refused_by_the_receiver_and_never_dead_letters(
    tmp_path: Path, receiver: WebhookReceiver
) -> None:
    wrong = tmp_path / "hook.key"
    wrong.write_bytes(b"not-the-receivers-secret-000")
    wrong.chmod(0o600)
    with forwarding_collector(tmp_path, _hook(receiver)) as env:
        env.post(events(3))
        assert wait_for(lambda: len(receiver.requests) >= 2, timeout=30)
        status = env.status()["hook"]
    assert all(r.status == 401 and r.signature_ok is False for r in receiver.requests)
    assert status.dead_letters == 0 and status.lag_events == 3
    assert status.last_error is not None and "HTTP 401" in status.last_error


def test_retries_through_unavailable_answers_with_backoff(
    tmp_path: Path, secret_file: Path, receiver: WebhookReceiver
) -> None:
    receiver.behaviour.script = [503, 502, 429, 408]
    receiver.behaviour.retry_after = "0"
    with forwarding_collector(tmp_path, _hook(receiver)) as env:
        env.post(events(4))
        assert wait_for(lambda: _settled(env), timeout=30)
        status = env.status()["hook"]
    statuses = [r.status for r in receiver.requests]
    assert statuses == [503, 502, 429, 408, 200]
    gaps = [b.at - a.at for a, b in itertools.pairwise(receiver.requests)]
    assert gaps[0] >= 0.75  # the first retry waits about FIRST_RETRY_S (0.8-1.0 s)
    assert gaps[2] < 0.75  # Retry-After: 0 after the 429
    assert status.sent == 4 and status.dead_letters == 0 and status.last_error is None
    assert len(_delivered_ids(receiver)) == 4


def test_an_event_the_receiver_refuses_is_dead_lettered_alone(
    tmp_path: Path, secret_file: Path, receiver: WebhookReceiver
) -> None:
    receiver.behaviour.refuse_marker = b"POISON-AT-DESTINATION"
    with forwarding_collector(tmp_path, _hook(receiver)) as env:
        evs = events(5)
        evs[2]["detail"] = "POISON-AT-DESTINATION"
        env.post(evs)
        env.post(events(3, start=5))
        assert wait_for(lambda: _settled(env), timeout=30)
        status = env.status()["hook"]
        with env.db.read() as conn:
            dead = conn.execute(select(forward_dead_letters)).all()
    ids = _delivered_ids(receiver)
    assert evs[2]["id"] not in ids and len(ids) == 7
    assert [d.event_id for d in dead] == [evs[2]["id"]]
    assert "HTTP 400" in dead[0].reason
    assert status.dead_letters == 1 and status.sent == 7


def test_rate_limit_spaces_the_requests(
    tmp_path: Path, secret_file: Path, receiver: WebhookReceiver
) -> None:
    with forwarding_collector(tmp_path, _hook(receiver, batch_size=1, rate=5.0)) as env:
        env.post(events(6))
        assert wait_for(lambda: _settled(env), timeout=30)
    arrivals = [r.at for r in receiver.requests]
    assert len(arrivals) == 6
    # at most 5 requests a second. Measured between arrivals 2 and 6: the first carries the
    # TLS handshake, and one late arrival must not shorten the gap after it (only the span
    # of several intervals is immune to scheduling jitter at the receiver)
    assert arrivals[-1] - arrivals[1] >= 4 * 0.2 * 0.9


@pytest.mark.parametrize("fmt", ["slack", "teams", "ecs"])
def test_message_formats(
    tmp_path: Path, secret_file: Path, receiver: WebhookReceiver, fmt: str
) -> None:
    with forwarding_collector(tmp_path, _hook(receiver, format=fmt, min_severity="high")) as env:
        low = events(2, severity="low")
        high = events(2, start=2, severity="high")
        env.post(low + high)
        assert wait_for(lambda: _settled(env), timeout=30)
        status = env.status()["hook"]
    assert status.skipped == 2 and status.sent == 2
    (request,) = receiver.accepted()
    assert request.signature_ok is True
    if fmt == "slack":
        text = json.loads(request.body)["text"]
        assert all(e["id"] in text for e in high) and not any(e["id"] in text for e in low)
        assert "*high* killed deepseek-desktop on ws-fw (alice): deepseek --n=2" in text
    elif fmt == "teams":
        card = json.loads(request.body)
        assert card["@type"] == "MessageCard" and len(card["sections"]) == 2
        facts = {f["name"]: f["value"] for f in card["sections"][0]["facts"]}
        assert facts["Event id"] == high[0]["id"] and facts["User"] == "alice"
    else:
        assert request.headers["content-type"] == "application/x-ndjson"
        docs = [json.loads(line) for line in request.body.decode().splitlines()]
        assert [d["event"]["id"] for d in docs] == [e["id"] for e in high]
        assert docs[0]["process"]["args"] == ["deepseek", "--n=2"]
        assert docs[0]["ecs"]["version"] and docs[0]["@timestamp"] == high[0]["time"]


def test_splunk_hec_with_its_token(tmp_path: Path) -> None:
    token = "hec-token-0123456789abcdef"
    (tmp_path / "hec.token").write_text(token)
    (tmp_path / "hec.token").chmod(0o600)
    with WebhookReceiver(tmp_path, Behaviour(hec_token=token)) as hec:
        table = {
            "name": "splunk",
            "kind": "splunk-hec",
            "url": f"https://127.0.0.1:{hec.port}/services/collector/event",
            "ca_file": str(hec.cert),
            "secret_file": "hec.token",
            "format": "ecs",
            "retry_max": 1.0,
        }
        with forwarding_collector(tmp_path, [table]) as env:
            posted = events(3)
            env.post(posted)
            assert wait_for(lambda: _settled(env, "splunk"), timeout=30)
    (request,) = hec.accepted()
    assert request.path == "/services/collector/event"
    assert request.headers["authorization"] == f"Splunk {token}"
    assert "x-proscribe-signature" not in request.headers  # the token is not an HMAC key
    objs = [json.loads(line) for line in request.body.decode().splitlines()]
    assert [o["event"]["event"]["id"] for o in objs] == [e["id"] for e in posted]
    assert objs[0]["sourcetype"] == "proscribe:ecs" and objs[0]["host"] == "ws-fw"
    assert isinstance(objs[0]["time"], float)


def test_splunk_hec_bad_token_is_retried_not_dead_lettered(tmp_path: Path) -> None:
    (tmp_path / "hec.token").write_text("wrong-token-0123456789")
    (tmp_path / "hec.token").chmod(0o600)
    with WebhookReceiver(tmp_path, Behaviour(hec_token="right-token-0123456789")) as hec:
        table = {
            "name": "splunk",
            "kind": "splunk-hec",
            "url": f"https://127.0.0.1:{hec.port}/services/collector/event",
            "ca_file": str(hec.cert),
            "secret_file": "hec.token",
            "retry_max": 1.0,
        }
        with forwarding_collector(tmp_path, [table]) as env:
            env.post(events(2))
            assert wait_for(lambda: len(hec.requests) >= 2, timeout=30)
            status = env.status()["splunk"]
    assert status.dead_letters == 0 and status.lag_events == 2
    assert "HTTP 403" in (status.last_error or "")


def test_start_now_skips_what_was_stored_before_and_a_restart_keeps_the_cursor(
    tmp_path: Path, secret_file: Path, receiver: WebhookReceiver
) -> None:
    with forwarding_collector(tmp_path, []) as env:
        env.post(events(4))  # stored before the destination was configured
        agent = env.agent
    forwards = _hook(receiver, start="now")
    with forwarding_collector(tmp_path, forwards, agent=agent) as env:
        assert wait_for(lambda: env.status()["hook"].started, timeout=30)
        later = events(3, start=4)
        env.post(later)
        assert wait_for(lambda: _settled(env), timeout=30)
    # "now" applies when the row is made; the next start resumes from the cursor
    with forwarding_collector(tmp_path, forwards, agent=agent) as env:
        more = events(2, start=7)
        env.post(more)
        assert wait_for(lambda: _settled(env), timeout=30)
    assert _delivered_ids(receiver) == [e["id"] for e in later + more]


def test_forward_test_sends_one_synthetic_event_and_reports_a_failure(
    tmp_path: Path, secret_file: Path, receiver: WebhookReceiver
) -> None:
    import subprocess
    import sys

    config = tmp_path / "collector.toml"
    config.write_text(
        f'[database]\nurl = "sqlite:///{tmp_path / "c.db"}"\n'
        f'[[forward]]\nname = "hook"\nkind = "webhook"\nurl = "{receiver.url}"\n'
        f'ca_file = "{receiver.cert}"\nsecret_file = "hook.key"\n'
        f'[[forward]]\nname = "down"\nkind = "syslog"\nurl = "tcp://127.0.0.1:1"\n'
    )
    cli = [sys.executable, "-m", "proscribe.cli", "collector", "forward", "test"]
    ok = subprocess.run([*cli, "hook", "--config", str(config)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("sent a test event (id ")
    (request,) = receiver.accepted()
    (event,) = json.loads(request.body)["events"]
    assert event["kind"] == "health" and "forward test hook" in event["detail"]
    assert request.signature_ok is True
    down = subprocess.run([*cli, "down", "--config", str(config)], capture_output=True, text=True)
    assert down.returncode == 1 and "forward test down: syslog 127.0.0.1:1" in down.stderr
    assert len(down.stderr.strip().splitlines()) == 1
    unknown = subprocess.run(
        [*cli, "nope", "--config", str(config)], capture_output=True, text=True
    )
    assert unknown.returncode == 2 and "fix: one of hook, down" in unknown.stderr
