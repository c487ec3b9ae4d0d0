"""``kind = "webhook"``: batches of events POSTed over HTTPS, signed with HMAC-SHA256.

Formats (``format``):

* ``json``  — ``{"forwarder": NAME, "events": [EVENT, …]}`` (events as stored, schema in
  core/events.py), ``Content-Type: application/json``;
* ``ecs``   — one ECS document per line (``application/x-ndjson``), see docs/integrations.md;
* ``slack`` — ``{"text": …}``: one line per event, for a Slack incoming webhook;
* ``teams`` — a MessageCard (``@type``/``sections``/``facts``) for a Teams connector or
  workflow.

With ``secret_file`` every request carries ``X-Proscribe-Signature: t=UNIX_SECONDS,v1=HEX``
where ``HEX = HMAC-SHA256(secret, f"{t}." + body)`` (the raw body bytes). The receiver
recomputes it, compares in constant time and refuses a ``t`` older than it tolerates (five
minutes, say) so a captured request cannot be replayed later (docs/integrations.md shows the
check in Python).

Answers: 2xx acknowledges the batch. 400, 413, 415 and 422 refuse it (the runner retries one
event at a time and dead-letters the one refused alone). Anything else — 401/403 (a wrong
secret must not dead-letter every event), 408, 429, 5xx, redirects, connection errors — is
"unavailable": retried with backoff, honouring ``Retry-After``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import requests

from proscribe.collector.forward.base import Refused, Unavailable, redact_url
from proscribe.collector.forward.render import RenderError, section, summary, to_ecs
from proscribe.collector.forward.settings import ForwardSettings
from proscribe.core.events import Event

SIGNATURE_HEADER = "X-Proscribe-Signature"
FORWARDER_HEADER = "X-Proscribe-Forwarder"
REFUSING = (400, 413, 415, 422)
MAX_RETRY_AFTER = 3600.0


def sign(secret: bytes, body: bytes, now: float) -> str:
    """The value of ``X-Proscribe-Signature`` for ``body`` sent at ``now``."""
    stamp = int(now)
    digest = hmac.new(secret, f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={stamp},v1={digest}"


def verify(secret: bytes, body: bytes, header: str, now: float, tolerance: float = 300) -> bool:
    """What a receiver does (docs/integrations.md; the tests' receiver uses it)."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        stamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs(now - stamp) > tolerance:
        return False
    expected = hmac.new(secret, f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields.get("v1", ""))


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return min(MAX_RETRY_AFTER, max(0.0, float(value)))
    except ValueError:
        return None


class HttpPoster:
    """POST with the answers sorted into acknowledged, refused and unavailable."""

    def __init__(self, settings: ForwardSettings, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self.session = requests.Session()
        # Per request: a Session's own verify is overridden by REQUESTS_CA_BUNDLE.
        self.verify: str | bool = settings.ca_file or True
        self.where = redact_url(settings.url)

    def post(self, body: bytes, headers: dict[str, str]) -> requests.Response:
        sent = {"User-Agent": "proscribe-collector", FORWARDER_HEADER: self.settings.name}
        sent.update(headers)
        if self.settings.secret:
            sent[SIGNATURE_HEADER] = sign(self.settings.secret, body, self.clock())
        try:
            reply = self.session.post(
                self.settings.url,
                data=body,
                headers=sent,
                timeout=self.settings.timeout,
                allow_redirects=False,
                verify=self.verify,
            )
        except requests.RequestException as err:
            raise Unavailable(
                f"{self.where}: {type(err).__name__}: {self._redact(str(err))}"
            ) from err
        if 200 <= reply.status_code < 300:
            return reply
        text = reply.text[:200].replace("\n", " ")
        problem = f"{self.where}: HTTP {reply.status_code}: {text}"
        if reply.status_code in REFUSING:
            raise Refused(problem)
        raise Unavailable(problem, _retry_after(reply.headers.get("Retry-After")))

    def _redact(self, text: str) -> str:
        """requests names the URL in its errors; its path and query may be the secret."""
        parts = urlsplit(self.settings.url)
        secret = parts.path + (f"?{parts.query}" if parts.query else "")
        for value in (self.settings.url, secret, parts.path):
            if len(value) > 1:
                text = text.replace(value, "/…")
        return text

    def close(self) -> None:
        self.session.close()


def slack_line(event: Event) -> str:
    return f"*{event.get('severity')}* {summary(event)} (id {event.get('id')})"


def teams_section(event: Event) -> dict[str, Any]:
    host = section(event, "host")
    process = section(event, "process")
    facts = [
        ("Action", event.get("action")),
        ("Rule", event.get("rule")),
        ("Severity", event.get("severity")),
        ("Host", host.get("hostname")),
        ("User", process.get("user")),
        ("Time", event.get("time")),
        ("Event id", event.get("id")),
    ]
    return {
        "activityTitle": summary(event, 200),
        "facts": [{"name": n, "value": str(v)} for n, v in facts if v not in (None, "")],
    }


def _encodable(item: Any) -> None:
    """A value that cannot become UTF-8 JSON (a lone surrogate) fails here, for this event
    alone, not later for its whole batch."""
    try:
        json.dumps(item, ensure_ascii=False).encode("utf-8")
    except (UnicodeEncodeError, TypeError, ValueError) as err:
        raise RenderError(f"not encodable as UTF-8 JSON: {err}") from err


class WebhookDestination:
    def __init__(self, settings: ForwardSettings) -> None:
        self.settings = settings
        self.poster = HttpPoster(settings)

    def render(self, event: Event) -> Any:
        fmt = self.settings.format
        item: Any
        if fmt == "ecs":
            item = json.dumps(to_ecs(event), ensure_ascii=False, separators=(",", ":"))
        elif fmt == "slack":
            item = slack_line(event)
        elif fmt == "teams":
            item = teams_section(event)
        else:
            section(event, "host")  # the one shape check json needs
            item = event
        _encodable(item)
        return item

    def body(self, items: list[Any]) -> tuple[bytes, str]:
        fmt = self.settings.format
        if fmt == "ecs":
            return ("\n".join(items) + "\n").encode(), "application/x-ndjson"
        if fmt == "slack":
            payload: Any = {"text": "Proscribe:\n" + "\n".join(items)}
        elif fmt == "teams":
            payload = {
                "@type": "MessageCard",
                "@context": "https://schema.org/extensions",
                "summary": f"Proscribe: {len(items)} event(s)",
                "title": f"Proscribe: {len(items)} event(s)",
                "sections": items,
            }
        else:
            payload = {"forwarder": self.settings.name, "events": items}
        return json.dumps(payload, ensure_ascii=False).encode(), "application/json"

    def send(self, items: list[Any]) -> None:
        body, content_type = self.body(items)
        self.poster.post(body, {"Content-Type": content_type})

    def close(self) -> None:
        self.poster.close()
