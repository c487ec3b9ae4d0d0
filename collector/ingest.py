"""Turning a ``POST /api/v1/events`` body into stored rows, one verdict per event.

The envelope (valid UTF-8 JSON, ``{"events": [...]}`` with at most 500 items) is all or
nothing: 422. Inside it each event is judged alone, so one malformed event is ``rejected``
(the agent dead-letters it) without holding back the good ones beside it. The host identity
of every stored event is the *authenticated* agent: whatever ``host.agent_id`` the body claims
is overwritten, so an agent can only ever speak for itself.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from proscribe.collector.api.errors import ApiError, validation_detail
from proscribe.collector.api.schema import EventBatch, EventIn
from proscribe.collector.storage import to_us
from proscribe.core.events import parse_time

MAX_JSON_DEPTH_ERROR = "JSON nested too deeply"


@dataclass(frozen=True, slots=True)
class EventVerdict:
    id: str | None
    status: str  # stored | duplicate | rejected
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "status": self.status, "error": self.error}


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json_body(body: bytes) -> Any:
    """Strict UTF-8 JSON (no NaN/Infinity); 422 with the reason otherwise."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ApiError(422, "invalid_body", f"body is not valid UTF-8 at byte {err.start}") from err
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError as err:
        raise ApiError(422, "invalid_body", MAX_JSON_DEPTH_ERROR) from err
    except ValueError as err:
        raise ApiError(422, "invalid_body", f"body is not valid JSON: {err}") from err


def parse_batch(body: bytes) -> list[dict[str, Any]]:
    data = parse_json_body(body)
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
    rows to insert, in order; an id repeated inside the batch is a duplicate of its first."""
    verdicts: list[EventVerdict | None] = []
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for raw in raw_events:
        try:
            event = EventIn.model_validate(raw)
        except ValidationError as err:
            verdicts.append(EventVerdict(_claimed_id(raw), "rejected", _reason(err)))
            continue
        if event.id in seen:
            verdicts.append(EventVerdict(event.id, "duplicate"))
            continue
        seen.add(event.id)
        # The raw dict passed strict validation (no coercion, no unknown keys): store it as
        # sent, with the host identity replaced by the authenticated one.
        body = dict(raw)
        host = dict(body.get("host") or {})
        body["host"] = host
        host["agent_id"] = agent_id
        if not host.get("hostname"):
            host["hostname"] = hostname
        rows.append(
            {
                "event_id": event.id,
                "agent_id": agent_id,
                "time_us": to_us(parse_time(event.time).timestamp()),
                "received_us": now_us,
                "hostname": host["hostname"],
                "username": event.process.user if event.process else None,
                "rule": event.rule,
                "kind": event.kind,
                "action": event.action,
                "severity": event.severity,
                "body": json.dumps(body, separators=(",", ":"), ensure_ascii=False),
            }
        )
        verdicts.append(None)
    return verdicts, rows


def final_verdicts(
    verdicts: list[EventVerdict | None], rows: list[dict[str, Any]], stored: set[str]
) -> list[EventVerdict]:
    row_ids = iter(r["event_id"] for r in rows)
    result = []
    for verdict in verdicts:
        if verdict is not None:
            result.append(verdict)
            continue
        event_id = next(row_ids)
        result.append(EventVerdict(event_id, "stored" if event_id in stored else "duplicate"))
    return result
