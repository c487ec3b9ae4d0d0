"""Turning a ``POST /api/v1/events`` body into stored rows, one verdict per event.

The envelope (valid UTF-8 JSON, ``{"events": [...]}`` with at most 500 items) is all or
nothing: 422. Inside it each event is judged alone, so one bad event is ``rejected`` (the agent
dead-letters it) without holding back the good ones beside it — whatever is wrong with it: a
schema violation, a time out of the calendar or more than :data:`MAX_FUTURE_SKEW_S` ahead of
the collector's clock, a row the database refuses (see
:func:`proscribe.collector.storage.events.insert_events_isolated`), or a bug met while judging
it. Each rejection carries a reason and is counted by cause (:data:`REJECT_CAUSES`).

The host identity of every stored event is the *authenticated* agent's host record: whatever
``host.agent_id`` and ``host.hostname`` the body claims are overwritten by the enrolled agent's
id and its recorded hostname, so an agent can only ever speak for itself. A hostname in the body
that disagrees is kept in the stored body as ``host.claimed_hostname`` (evidence that the agent
claimed it) and is never indexed, filtered or counted. The recorded hostname changes only
through heartbeats, and each change is a row of the host's history.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from proscribe.collector.api.errors import ApiError, validation_detail
from proscribe.collector.api.schema import EVENT_DEFAULT_SEVERITY, EVENT_DICT, EventBatch
from proscribe.collector.storage import to_us
from proscribe.core.events import MAX_EVENTS_PER_BATCH, parse_time
from proscribe.core.wire.auth import MAX_SKEW_SECONDS

log = logging.getLogger(__name__)

MAX_JSON_DEPTH_ERROR = "JSON nested too deeply"
# An agent whose clock is further ahead cannot sign a request the collector accepts (the same
# window), so an event from further in the future than this is a broken or forged time; stored,
# it would sit on top of every newest-first list for ever.
MAX_FUTURE_SKEW_S = MAX_SKEW_SECONDS
REJECT_CAUSES = ("invalid", "future_time", "storage", "internal")


@dataclass(frozen=True, slots=True)
class EventVerdict:
    id: str | None
    status: str  # stored | duplicate | rejected
    error: str | None = None
    cause: str | None = None  # for a rejection: one of REJECT_CAUSES (metrics only)

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "status": self.status, "error": self.error}


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _number(text: str) -> float | int:
    """JSON has one number type: ``12.0`` is an integer (to JSON Schema, and to some agents'
    encoders), so it becomes the int the strict models expect; ``1e400`` is no number at all
    (it would be stored as Infinity, which JSON cannot carry out again)."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return int(value) if value.is_integer() else value


def parse_json_body(body: bytes) -> Any:
    """Strict UTF-8 JSON (no NaN/Infinity, numbers finite); 422 with the reason otherwise."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ApiError(422, "invalid_body", f"body is not valid UTF-8 at byte {err.start}") from err
    try:
        return json.loads(text, parse_constant=_reject_constant, parse_float=_number)
    except RecursionError as err:
        raise ApiError(422, "invalid_body", MAX_JSON_DEPTH_ERROR) from err
    except ValueError as err:
        raise ApiError(422, "invalid_body", f"body is not valid JSON: {err}") from err


def parse_batch(body: bytes) -> list[dict[str, Any]]:
    data = parse_json_body(body)
    events = data.get("events") if type(data) is dict and len(data) == 1 else None
    if (
        type(events) is list
        and len(events) <= MAX_EVENTS_PER_BATCH
        and all(type(e) is dict for e in events)
    ):
        # What EventBatch accepts, checked without copying every event (json.loads made these
        # lists and dicts); anything else goes to EventBatch for its 422 and reason.
        return events
    try:
        batch = EventBatch.model_validate(data)
    except ValidationError as err:
        raise ApiError(422, "invalid_batch", validation_detail(err.errors())) from err
    return batch.events


def _claimed_id(raw: dict[str, Any]) -> str | None:
    value = raw.get("id")
    if isinstance(value, str) and len(value) <= 64:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return None
        return value if "\x00" not in value else None
    return None


def _reason(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "event"
    msg = str(first["msg"]).encode("utf-8", "backslashreplace").decode("utf-8")
    more = f" (+{err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{where}: {msg[:200]}{more}"


def judge_events(
    raw_events: Sequence[dict[str, Any]], *, agent_id: str, hostname: str, now_us: int
) -> tuple[list[EventVerdict | None], list[dict[str, Any]]]:
    """Validate each event. Returns verdicts (``None`` where the database decides) and the
    rows to insert, in order; an id repeated inside the batch is a duplicate of its first.
    A row's ``body`` is the event to store as a JSON object (see
    :func:`proscribe.collector.storage.events.body_text` for its text)."""
    verdicts: list[EventVerdict | None] = []
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    latest_us = now_us + MAX_FUTURE_SKEW_S * 1_000_000
    for raw in raw_events:
        try:
            verdict, row = _judge_one(raw, agent_id, hostname, now_us, latest_us, seen)
        except Exception:  # a poison event: its own rejection, never the batch's failure
            log.exception("event %r could not be judged; rejected", _claimed_id(raw))
            verdict = EventVerdict(
                _claimed_id(raw), "rejected", "could not be processed", "internal"
            )
            row = None
        verdicts.append(verdict)
        if row is not None:
            seen.add(row["event_id"])
            rows.append(row)
    return verdicts, rows


def _judge_one(
    raw: dict[str, Any],
    agent_id: str,
    hostname: str,
    now_us: int,
    latest_us: int,
    seen: set[str],
) -> tuple[EventVerdict | None, dict[str, Any] | None]:
    try:
        event: dict[str, Any] = EVENT_DICT.validate_python(raw)  # EventIn's checks, as a dict
    except ValidationError as err:
        return EventVerdict(_claimed_id(raw), "rejected", _reason(err), "invalid"), None
    event_id: str = event["id"]
    if event_id in seen:
        return EventVerdict(event_id, "duplicate"), None
    time_us = to_us(parse_time(event["time"]).timestamp())
    if time_us > latest_us:
        reason = (
            f"time: more than {MAX_FUTURE_SKEW_S} s ahead of the collector's clock "
            "(fix the agent's clock)"
        )
        return EventVerdict(event_id, "rejected", reason, "future_time"), None
    # The raw dict passed strict validation (no coercion, no unknown keys): store it as
    # sent (its keys in the agent's order), with the host identity replaced by the
    # authenticated one.
    body = dict(raw)
    host = dict(body.get("host") or {})
    body["host"] = host
    host["agent_id"] = agent_id
    claimed = host.get("hostname")
    host["hostname"] = hostname
    if claimed and claimed != hostname:
        host["claimed_hostname"] = claimed
    else:
        host.pop("claimed_hostname", None)
    process, file = event.get("process"), event.get("file")
    row = {
        "event_id": event_id,
        "agent_id": agent_id,
        "time_us": time_us,
        "received_us": now_us,
        "hostname": hostname,
        # who ran it; for a model file found on disk, whose file it is
        "username": process.get("user")
        if process is not None
        else (file.get("owner") if file is not None else None),
        "rule": event.get("rule"),
        "kind": event["kind"],
        "action": event["action"],
        "severity": event.get("severity", EVENT_DEFAULT_SEVERITY),
        # encoded with the whole batch (storage.events.insert_events), not one by one here
        "body": body,
    }
    return None, row


def final_verdicts(
    verdicts: list[EventVerdict | None],
    rows: list[dict[str, Any]],
    stored: set[str],
    refused: dict[str, str] | None = None,
) -> list[EventVerdict]:
    """Fill in the database's answers: ``stored``, ``duplicate`` (already there), or
    ``rejected`` for a row the database refused (``refused``: id → reason)."""
    refused = refused or {}
    row_ids = iter(r["event_id"] for r in rows)
    result = []
    for verdict in verdicts:
        if verdict is not None:
            result.append(verdict)
            continue
        event_id = next(row_ids)
        if event_id in refused:
            result.append(EventVerdict(event_id, "rejected", refused[event_id], "storage"))
        else:
            result.append(EventVerdict(event_id, "stored" if event_id in stored else "duplicate"))
    return result
