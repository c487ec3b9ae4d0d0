"""What every destination shares: the stored event as a dict, its one-line summary, and its
Elastic Common Schema (ECS) document. docs/integrations.md has the field table; a test checks
that every field of the event schema is mapped.

An event that cannot be rendered (a stored body that is not a JSON object, a field of the wrong
type) raises :class:`RenderError`: the forwarder dead-letters it and goes on.
"""

from __future__ import annotations

import json
from typing import Any

from proscribe.core.events import Event, parse_time

ECS_VERSION = "8.11.0"
# ECS event.severity is a number; these follow Elastic's detection-rule risk scores.
ECS_SEVERITY = {"low": 21, "medium": 47, "high": 73, "critical": 99}
# event.category by event kind (ECS allowed values).
ECS_CATEGORY = {
    "process": ["process"],
    "dns": ["network"],
    "file": ["file"],
    "model": ["file"],
    "tamper": ["configuration"],
    "health": ["host"],
}
# Actions that prevented something (ECS event.type "denied"); the others are "info".
PREVENTED = ("killed", "denied", "sinkholed", "quarantined")


class RenderError(ValueError):
    """This event cannot be sent in this destination's format (dead-lettered, skipped)."""


def parse_body(body: str) -> Event:
    try:
        event = json.loads(body)
    except ValueError as err:
        raise RenderError(f"stored body is not JSON: {err}") from err
    if not isinstance(event, dict) or not isinstance(event.get("id"), str):
        raise RenderError("stored body is not an event object with an id")
    return event


def section(event: Event, name: str) -> dict[str, Any]:
    value = event.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RenderError(f"{name} is not an object")
    return value


def _model(file: dict[str, Any]) -> dict[str, Any]:
    model = file.get("model")
    if model is None:
        return {}
    if not isinstance(model, dict):
        raise RenderError("file.model is not an object")
    return model


def model_of(event: Event) -> dict[str, Any]:
    """``file.model`` of the event, ``{}`` when absent."""
    return _model(section(event, "file"))


def joined(value: Any, sep: str = " ") -> str | None:
    """A list field as one string (syslog and CEF values), None when absent."""
    if value is None:
        return None
    if not isinstance(value, list):
        raise RenderError("a list field is not a list")
    return sep.join(str(v) for v in value) or None


def epoch_seconds(event: Event) -> float:
    try:
        return parse_time(str(event.get("time"))).timestamp()
    except ValueError as err:
        raise RenderError(f"time: {err}") from err


def summary(event: Event, limit: int = 300) -> str:
    """One human line: ``killed deepseek-web on host-1 (alice): deepseek --chat``."""
    host = section(event, "host")
    process = section(event, "process")
    dns = section(event, "dns")
    file = section(event, "file")
    who = f" ({process['user']})" if process.get("user") else ""
    what = ""
    if process.get("cmdline"):
        what = " ".join(str(a) for a in process["cmdline"])
    elif process.get("name"):
        what = str(process["name"])
    elif dns.get("qname"):
        what = f"DNS {dns.get('qtype') or ''} {dns['qname']}".replace("  ", " ")
    elif file.get("path"):
        what = str(file["path"])
    elif event.get("detail"):
        what = str(event["detail"])
    rule = event.get("rule") or event.get("kind")
    line = f"{event.get('action')} {rule} on {host.get('hostname') or '?'}{who}"
    if what:
        line += f": {what}"
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _put(doc: dict[str, Any], dotted: str, value: Any) -> None:
    if value is None or value in ("", []):
        return
    where = doc
    *parents, leaf = dotted.split(".")
    for part in parents:
        where = where.setdefault(part, {})
    where[leaf] = value


def _iso(epoch: Any) -> str | None:
    """Seconds since the epoch as RFC 3339 UTC (ECS dates), None when absent."""
    if epoch is None:
        return None
    from datetime import UTC, datetime

    try:
        moment = datetime.fromtimestamp(float(epoch), UTC)
    except (TypeError, ValueError, OverflowError, OSError) as err:
        raise RenderError(f"process.start_time: {err}") from err
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def to_ecs(event: Event) -> dict[str, Any]:
    """The event as an ECS document (nested objects, ECS 8.11 field names)."""
    host = section(event, "host")
    policy = section(event, "policy")
    process = section(event, "process")
    dns = section(event, "dns")
    file = section(event, "file")
    model = _model(file)
    epoch_seconds(event)  # a time that does not parse is a render error here, not downstream
    action = event.get("action")
    doc: dict[str, Any] = {"@timestamp": event.get("time"), "ecs": {"version": ECS_VERSION}}
    fields: list[tuple[str, Any]] = [
        ("event.id", event.get("id")),
        ("event.kind", "event" if event.get("kind") == "health" else "alert"),
        ("event.category", ECS_CATEGORY.get(str(event.get("kind")), ["host"])),
        ("event.type", ["denied"] if action in PREVENTED else ["info"]),
        ("event.action", action),
        ("event.outcome", "failure" if action == "failed" else "success"),
        ("event.severity", ECS_SEVERITY.get(str(event.get("severity")))),
        ("log.level", event.get("severity")),
        ("event.module", "proscribe"),
        ("event.dataset", f"proscribe.{event.get('kind')}"),
        ("rule.id", event.get("rule")),
        ("rule.name", event.get("rule")),
        ("rule.ruleset", policy.get("id")),
        ("rule.version", None if policy.get("serial") is None else str(policy["serial"])),
        ("proscribe.policy.sha256", policy.get("sha256")),
        ("proscribe.kind", event.get("kind")),
        ("proscribe.count", event.get("count", 1)),
        ("agent.id", host.get("agent_id")),
        ("agent.type", "proscribe"),
        ("host.name", host.get("hostname")),
        ("host.hostname", host.get("hostname")),
        ("host.os.type", host.get("os")),
        ("process.pid", process.get("pid")),
        ("process.parent.pid", process.get("ppid")),
        ("process.name", process.get("name")),
        ("process.executable", process.get("exe")),
        ("process.args", process.get("cmdline")),
        (
            "process.command_line",
            " ".join(str(a) for a in process["cmdline"]) if process.get("cmdline") else None,
        ),
        ("process.args_count", len(process["cmdline"]) if process.get("cmdline") else None),
        ("user.name", process.get("user")),
        ("user.id", None if process.get("uid") is None else str(process["uid"])),
        ("process.real_user.name", process.get("user")),
        ("process.real_user.id", None if process.get("uid") is None else str(process["uid"])),
        ("process.user.id", None if process.get("euid") is None else str(process["euid"])),
        ("process.hash.sha256", process.get("sha256")),
        ("proscribe.process.argv0", process.get("argv0")),
        ("process.start", _iso(process.get("start_time"))),
        ("dns.question.name", dns.get("qname")),
        ("dns.question.type", dns.get("qtype")),
        ("destination.address", dns.get("resolver")),
        ("file.path", file.get("path")),
        ("file.hash.sha256", file.get("sha256")),
        ("file.owner", file.get("owner")),
        ("file.uid", None if file.get("uid") is None else str(file["uid"])),
        ("file.size", file.get("size")),
        ("file.mtime", file.get("mtime")),
        ("proscribe.model.format", model.get("format")),
        ("proscribe.model.name", model.get("name")),
        ("proscribe.model.evidence", model.get("evidence")),
        ("proscribe.model.digests", model.get("digests")),
        ("proscribe.quarantine.id", file.get("quarantine")),
        ("message", event.get("detail") or summary(event)),
        ("observer.vendor", "Proscribe"),
        ("observer.product", "Proscribe"),
    ]
    for dotted, value in fields:
        _put(doc, dotted, value)
    return doc
