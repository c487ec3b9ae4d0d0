"""Time filters as people type them: ``30d``, ``12h``, ``15m``, ``90s`` ago, or RFC 3339."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from proscribe.core.events import OUTSIDE_CALENDAR, parse_time

# At most 999999 s/m/h or 99999 d/w ago: always a real calendar moment (the OpenAPI
# document states this pattern, so generated "valid" values are valid here).
RELATIVE_PATTERN = r"^(\d{1,6}[smh]|\d{1,5}[dw])$"
_RELATIVE = re.compile(r"^(\d{1,6})([smh])$|^(\d{1,5})([dw])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
FORMS = "use e.g. 30d, 12h, or 2025-01-28T09:00:00Z"


def parse_moment(text: str, now: float) -> float:
    """Seconds since the epoch; ValueError naming the accepted forms. The moment must be a
    real calendar time (years 1 to 9999 in UTC): every report and export prints it."""
    text = text.strip()
    match = _RELATIVE.match(text)
    if match:
        count, unit = match.group(1, 2) if match.group(1) else match.group(3, 4)
        moment = now - int(count) * _UNIT[unit]
    else:
        try:
            moment = parse_time(text).timestamp()
        except ValueError as err:
            problem = (
                "is out of range (years 1 to 9999)"
                if OUTSIDE_CALENDAR in str(err)
                else "is not a time"
            )
            raise ValueError(f"{text[:40]!r} {problem} ({FORMS})") from err
    try:
        datetime.fromtimestamp(moment, UTC)
    except (OverflowError, OSError, ValueError) as err:
        raise ValueError(f"{text[:40]!r} is out of range (years 1 to 9999; {FORMS})") from err
    return moment
