"""The Jinja2 environment: autoescape on (set explicitly), and the filters
that turn stored values into text a person can trust."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import ChainableUndefined, Environment, FileSystemLoader

from proscribe.collector.literal import show_html, visible_text
from proscribe.core.events import parse_time

TEMPLATES = Path(__file__).resolve().parent / "templates"
STATIC = Path(__file__).resolve().parent / "static"


def fmt_us(value: int | None, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    """Microseconds since the epoch as a UTC time (the dashboard shows UTC everywhere)."""
    if value is None:
        return "—"
    return datetime.fromtimestamp(value / 1_000_000, UTC).strftime(fmt) + " UTC"


def fmt_dt(value: datetime | None, fmt: str = "%Y-%m-%d %H:%M") -> str:
    if value is None:
        return "—"
    return value.astimezone(UTC).strftime(fmt) + " UTC"


def fmt_event_time(value: object) -> str:
    """An event's RFC 3339 ``time`` as shown in tables (the raw value if it will not parse)."""
    if not isinstance(value, str):
        return "—"
    try:
        return parse_time(value).strftime("%Y-%m-%d %H:%M:%S") + " UTC"
    except ValueError:
        return visible_text(value)


def fmt_ago(value_us: int | None, now_us: int) -> str:
    if value_us is None:
        return "never"
    seconds = max(0, (now_us - value_us) // 1_000_000)
    for unit, size in (("d", 86_400), ("h", 3_600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


def _fmt_value(value: object) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_fmt_value(v)}" for k, v in sorted(value.items())) or "none"
    return str(value)


def describe_history(kind: str, detail: dict[str, object]) -> tuple[str, list[str]]:
    """A heartbeat-history row as a title and plain-text lines (the template escapes them)."""
    if kind == "first":
        return "first heartbeat", [f"{k}: {_fmt_value(v)}" for k, v in sorted(detail.items())]
    if kind == "resumed":
        silent = detail.get("silent_s")
        minutes = int(silent) // 60 if isinstance(silent, int) else None
        gap = f"{minutes} min" if minutes is not None else "a while"
        return "reporting again", [f"silent for {gap} (longer than the heartbeat window)"]
    lines = []
    for label, change in sorted(detail.items()):
        if isinstance(change, list) and len(change) == 2:
            lines.append(f"{label}: {_fmt_value(change[0])} → {_fmt_value(change[1])}")
        else:
            lines.append(f"{label}: {_fmt_value(change)}")
    return "changed", lines


def fmt_num(value: int | float) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:,.1f}"


def build_environment(templates: Path = TEMPLATES) -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(templates)),
        autoescape=True,  # explicit: every endpoint string is untrusted
        # Event bodies have optional sections and keys: a missing one renders as empty.
        undefined=ChainableUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["show"] = show_html
    env.filters["plain"] = visible_text
    env.filters["us"] = fmt_us
    env.filters["dt"] = fmt_dt
    env.filters["etime"] = fmt_event_time
    env.filters["num"] = fmt_num
    env.globals["ago"] = fmt_ago
    env.globals["describe_history"] = describe_history
    return env


def render(env: Environment, name: str, context: dict[str, Any]) -> str:
    return env.get_template(name).render(**context)
