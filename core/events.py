"""The event wire schema (owned by the agent; the collector validates against the same limits).

An event is a JSON object. Its ``id`` (uuid4) is generated once, at detection, before the event is
committed to the spool, and is the idempotency key end to end::

    {"id": "uuid4", "time": "2025-01-28T09:14:03.120Z", "kind": "process|dns|file|model|…",
     "rule": "deepseek-web", "policy": {"id": "…", "serial": 7, "sha256": "…"},
     "action": "reported|would_block|killed|exited|denied|sinkholed|exempted|quarantined|failed",
     "severity": "high",
     "host": {"agent_id": "…", "hostname": "…", "os": "linux"},
     "process": {"pid": 4242, "ppid": 1, "name": "…", "exe": "…", "cmdline": ["…"],
                 "user": "alice", "uid": 1000, "euid": 1000, "sha256": "…"},
     "dns": {"qname": "chat.deepseek.com", "qtype": "A", "resolver": "127.0.0.53"},
     "file": {"path": "…", "owner": "alice", "uid": 1000, "size": 1, "mtime": "…", "sha256": "…",
              "model": {"format": "gguf", "name": "…", "evidence": ["GGUF general.name = …"],
                        "digests": ["sha256:…"]}},
     "detail": "free text", "count": 1}

A ``model`` event is a local AI model a ``[[model]]`` rule denies (agent/model_guard.py): the
file found (``file``; ``action`` reported, quarantined, or would_block for a quarantine in
monitor mode) or a program that loads it (``process`` and ``file``; killed, would_block,
reported).

``would_block`` is what monitor mode reports where enforce mode would have acted. ``exited`` is a
process a ``block`` rule matched that had already exited when the agent came to kill it: seen,
not blocked (reports do not count it as a block). ``count`` is the
number of occurrences folded into this event by de-duplication (1 when absent). A process's
``user`` and ``uid`` are its real uid (who ran it); ``euid`` is its effective uid, which differs
for a setuid program.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Final

KINDS: Final = ("process", "dns", "file", "model", "tamper", "health")
EVENT_ACTIONS: Final = (
    "reported",
    "would_block",
    "killed",
    "denied",
    "sinkholed",
    "exempted",
    "failed",
    "exited",
    "quarantined",
)
SEVERITIES: Final = ("low", "medium", "high", "critical")
# The one built-in rule id (not from a policy): a connection to an encrypted DNS resolver, which
# goes around every domain rule (agent/sensors/dns/encrypted.py). Reports count it with every
# policy, as they do tamper events.
ENCRYPTED_DNS_RULE: Final = "encrypted-dns"

# Limits shared by the agent (it truncates) and the collector (it rejects with 422).
MAX_EVENTS_PER_BATCH: Final = 500
MAX_BATCH_BYTES: Final = 1024 * 1024
MAX_STRING: Final = 4096  # any single string field
MAX_CMDLINE_ITEMS: Final = 256
MAX_DETAIL: Final = 8192

Event = dict[str, Any]


def utc_now_iso(now: datetime | None = None) -> str:
    """RFC 3339 UTC timestamp with milliseconds and a ``Z`` suffix."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


OUTSIDE_CALENDAR = "outside years 1-9999 in UTC"  # in parse_time's message for such a time


def parse_time(value: str) -> datetime:
    """Parse an event timestamp (``…Z`` or with an offset) into an aware UTC datetime.

    ValueError for anything else, including a time whose UTC form leaves the calendar
    (``0001-01-01T00:00:00+01:00``, ``9999-12-31T23:59:59-01:00``: ``astimezone`` would raise
    OverflowError, which validators and callers do not expect)."""
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"timestamp without a zone: {value!r}")
    try:
        return moment.astimezone(UTC)
    except OverflowError as err:
        raise ValueError(f"timestamp {OUTSIDE_CALENDAR}: {value[:40]!r}") from err


def clip(text: str, limit: int = MAX_STRING) -> str:
    """Truncate a string the agent is about to send so the collector will accept it."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def new_event(
    kind: str,
    *,
    rule: str | None,
    action: str,
    severity: str = "high",
    policy: dict[str, Any] | None = None,
    host: dict[str, Any] | None = None,
    process: dict[str, Any] | None = None,
    dns: dict[str, Any] | None = None,
    file: dict[str, Any] | None = None,
    detail: str = "",
    now: datetime | None = None,
    event_id: str | None = None,
) -> Event:
    """Build an event with a fresh id; optional sections are omitted when ``None``."""
    if kind not in KINDS:
        raise ValueError(f"unknown event kind {kind!r}")
    if action not in EVENT_ACTIONS:
        raise ValueError(f"unknown event action {action!r}")
    event: Event = {
        "id": event_id or str(uuid.uuid4()),
        "time": utc_now_iso(now),
        "kind": kind,
        "rule": rule,
        "action": action,
        "severity": severity,
    }
    for key, value in (
        ("policy", policy),
        ("host", host),
        ("process", process),
        ("dns", dns),
        ("file", file),
    ):
        if value is not None:
            event[key] = value
    if detail:
        event["detail"] = clip(detail, MAX_DETAIL)
    return event
