"""When to try the collector again: exponential backoff with full jitter, and Retry-After.

Everything here is a pure function of ``now``, the attempt number and an injected random source,
so tests pin time and randomness exactly.
"""

from __future__ import annotations

import email.utils
import math
import random
from dataclasses import dataclass, field

#: The longest the reporter ever waits between attempts after failures.
BACKOFF_CAP_SECONDS = 15 * 60.0
BACKOFF_BASE_SECONDS = 1.0
#: A draw of ~0 from full jitter must not turn into a tight retry loop.
BACKOFF_FLOOR_SECONDS = 0.5

RETRY_AFTER_DEFAULT = 60.0
RETRY_AFTER_MIN = 1.0
RETRY_AFTER_MAX = 3600.0


def backoff_ceiling(
    attempt: int, base: float = BACKOFF_BASE_SECONDS, cap: float = BACKOFF_CAP_SECONDS
) -> float:
    """The upper bound of the jitter window after ``attempt`` consecutive failures (1-based)."""
    if attempt <= 0:
        return 0.0
    # 2**attempt overflows a float around attempt 1024; the cap is reached long before.
    exponent = min(attempt - 1, 64)
    return min(cap, base * math.pow(2.0, exponent))


def backoff_delay(
    attempt: int,
    rng: random.Random,
    base: float = BACKOFF_BASE_SECONDS,
    cap: float = BACKOFF_CAP_SECONDS,
) -> float:
    """Full jitter (AWS architecture blog): uniform over [floor, ceiling]; 0 when attempt is 0."""
    ceiling = backoff_ceiling(attempt, base, cap)
    if ceiling <= 0:
        return 0.0
    floor = min(BACKOFF_FLOOR_SECONDS, ceiling)
    return rng.uniform(floor, ceiling)


def parse_retry_after(
    value: str | None,
    now: float,
    default: float = RETRY_AFTER_DEFAULT,
    minimum: float = RETRY_AFTER_MIN,
    maximum: float = RETRY_AFTER_MAX,
) -> float:
    """Seconds to wait from a ``Retry-After`` header (delay-seconds or an HTTP date).

    Missing or unparseable → ``default`` (60 s). The result is clamped to
    [``minimum``, ``maximum``]: a date in the past still waits a second; a server asking for a
    week is retried within the hour.
    """
    seconds = default
    text = (value or "").strip()
    if text:
        try:
            seconds = float(text)
            if not math.isfinite(seconds) or seconds < 0:
                seconds = default
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(text)
            except (TypeError, ValueError, IndexError):
                when = None
            if when is not None and when.tzinfo is not None:
                seconds = when.timestamp() - now
    return max(minimum, min(maximum, seconds))


@dataclass
class Backoff:
    """Consecutive-failure state: ``failure`` gives the next allowed time, ``success`` resets."""

    rng: random.Random = field(default_factory=random.Random)
    base: float = BACKOFF_BASE_SECONDS
    cap: float = BACKOFF_CAP_SECONDS
    attempt: int = 0

    def failure(self, now: float) -> float:
        self.attempt += 1
        return now + backoff_delay(self.attempt, self.rng, self.base, self.cap)

    def success(self) -> None:
        self.attempt = 0
