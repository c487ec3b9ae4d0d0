"""Time filters as people type them: ``30d``, ``12h``, ``15m``, ``90s`` ago, or RFC 3339."""

from __future__ import annotations

import re

from proscribe.core.events import parse_time

_RELATIVE = re.compile(r"^(\d{1,6})([smhdw])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_moment(text: str, now: float) -> float:
    """Seconds since the epoch; ValueError naming the accepted forms."""
    text = text.strip()
    match = _RELATIVE.match(text)
    if match:
        return now - int(match.group(1)) * _UNIT[match.group(2)]
    try:
        return parse_time(text).timestamp()
    except ValueError as err:
        raise ValueError(
            f"{text[:40]!r} is not a time (use e.g. 30d, 12h, or 2025-01-28T09:00:00Z)"
        ) from err
