"""The violations filter as people type it, parsed once for every entry point.

``GET /api/v1/violations``, the dashboard's violations page and its CSV/JSON exports, the
report pages and ``proscribe collector report`` all hand the values they were given to
:func:`parse_violation_filter`, so one query gives one answer everywhere:

* an empty (or all-blank) value is no filter; leading and trailing blanks are ignored;
* ``since``/``until``: ``30d``, ``12h``, ``15m``, ``90s`` ago or RFC 3339 with a zone, a real
  calendar moment (years 1–9999 UTC); ``since`` at or after ``until`` matches nothing (a
  report's period, :func:`parse_period`, must be a real interval);
* ``host``/``user``/``rule``: exact match, at most :data:`MAX_FILTER_TEXT` characters, no NUL,
  valid UTF-8;
* ``kind``/``action``/``severity``: one of the event schema's values.

Anything else raises :class:`FilterError` naming the parameter; each entry point turns it
into its own answer (422 JSON, a message on the page, one line and exit 2).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from proscribe.collector.storage import to_us
from proscribe.collector.storage.queries import ViolationFilter
from proscribe.collector.timespec import parse_moment
from proscribe.core.events import EVENT_ACTIONS, KINDS, SEVERITIES

FILTER_KEYS = ("since", "until", "host", "user", "rule", "kind", "action", "severity")
TEXT_KEYS = ("host", "user", "rule")
CHOICES: dict[str, tuple[str, ...]] = {
    "kind": tuple(KINDS),
    "action": tuple(EVENT_ACTIONS),
    "severity": tuple(SEVERITIES),
}
MAX_FILTER_TEXT = 4096


class FilterError(ValueError):
    """A filter value that cannot be used; ``param`` names it, ``reason`` says why."""

    def __init__(self, param: str, reason: str) -> None:
        super().__init__(f"{param}: {reason}")
        self.param = param
        self.reason = reason


def _moment_us(name: str, value: str, now: float) -> int | None:
    if not value:
        return None
    try:
        return to_us(parse_moment(value, now))
    except ValueError as err:
        raise FilterError(name, str(err)) from err


def _text(name: str, value: str) -> str | None:
    if not value:
        return None
    if len(value) > MAX_FILTER_TEXT:
        raise FilterError(name, f"at most {MAX_FILTER_TEXT} characters")
    if "\x00" in value:
        raise FilterError(name, "contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise FilterError(name, "is not valid UTF-8") from err
    return value


def _choice(name: str, value: str) -> str | None:
    if not value:
        return None
    allowed = CHOICES[name]
    if value not in allowed:
        raise FilterError(name, f"must be one of {', '.join(allowed)}")
    return value


def normalise(values: Mapping[str, str | None]) -> dict[str, str]:
    """Every filter key with its value stripped (``""`` when absent): what the person typed,
    to refill a form or build a link."""
    return {key: (values.get(key) or "").strip() for key in FILTER_KEYS}


def parse_violation_filter(
    values: Mapping[str, str | None], now: float, *, agent_id: str | None = None
) -> ViolationFilter:
    """The filter for ``values`` (keys of :data:`FILTER_KEYS`; others are ignored), relative
    times counted back from ``now``; :class:`FilterError` for the first bad value."""
    typed = normalise(values)
    since_us = _moment_us("since", typed["since"], now)
    until_us = _moment_us("until", typed["until"], now)
    return ViolationFilter(
        since_us=since_us,
        until_us=until_us,
        host=_text("host", typed["host"]),
        user=_text("user", typed["user"]),
        rule=_text("rule", typed["rule"]),
        kind=_choice("kind", typed["kind"]),
        action=_choice("action", typed["action"]),
        severity=_choice("severity", typed["severity"]),
        agent_id=agent_id,
    )


def parse_period(
    values: Mapping[str, str | None], now: float, *, default_since_s: float
) -> ViolationFilter:
    """A report's filter: :func:`parse_violation_filter`, with an empty ``since`` meaning
    ``default_since_s`` seconds ago and an empty ``until`` now; a period that is empty or
    reversed is a :class:`FilterError` (a report over nothing is a mistake worth saying)."""
    flt = parse_violation_filter(values, now)
    since_us = flt.since_us if flt.since_us is not None else to_us(now - default_since_s)
    until_us = flt.until_us if flt.until_us is not None else to_us(now)
    if since_us >= until_us:
        raise FilterError("until", "must be later than since")
    return dataclasses.replace(flt, since_us=since_us, until_us=until_us)
