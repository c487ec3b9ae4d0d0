"""Token buckets for enrollment (one per client address plus one global) and for failed
dashboard sign-ins (one per client address and one per user name).

Shared by replicas: the buckets that decide are rows in the database
(:mod:`proscribe.collector.storage.buckets`), so N replicas behind a load balancer allow what
one would — an attacker spreading guesses over replicas gains nothing. Enrollment also keeps
the same buckets in memory in front of the database ones: they refuse a flood before it
becomes database writes (at most ``global_rate`` writes a second per replica get through).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from proscribe.collector.config import EnrollLimits
from proscribe.collector.storage import Database, to_us
from proscribe.collector.storage import buckets as shared

_MAX_TRACKED = 10_000


class TokenBucket:
    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def peek(self, now: float) -> float:
        """0 if a token is available, else the seconds until one will be; takes nothing."""
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            return 0.0
        return (1 - self.tokens) / self.rate if self.rate > 0 else 3600.0

    def take(self, now: float) -> float:
        """0 if a token was taken, else the seconds until one will be available."""
        wait = self.peek(now)
        if not wait:
            self.tokens -= 1
        return wait


def lru_bucket(
    buckets: OrderedDict[Any, TokenBucket], key: Any, rate: float, burst: float, now: float
) -> TokenBucket:
    """``key``'s bucket, made on first use; at most ``_MAX_TRACKED`` kept, least recent out."""
    bucket = buckets.get(key)
    if bucket is None:
        bucket = buckets[key] = TokenBucket(rate, burst, now)
        if len(buckets) > _MAX_TRACKED:
            buckets.popitem(last=False)
    else:
        buckets.move_to_end(key)
    return bucket


class EnrollRateLimiter:
    def __init__(
        self, limits: EnrollLimits, clock: Callable[[], float], db: Database | None = None
    ) -> None:
        self._limits = limits
        self._clock = clock
        self._db = db
        self._lock = threading.Lock()
        self._global = TokenBucket(limits.global_rate, limits.global_burst, clock())
        self._per_ip: OrderedDict[str, TokenBucket] = OrderedDict()

    def check(self, client: str) -> float:
        """0 to proceed, else the Retry-After in seconds."""
        now = self._clock()
        limits = self._limits
        with self._lock:
            bucket = lru_bucket(self._per_ip, client, limits.per_ip_rate, limits.per_ip_burst, now)
            wait = bucket.take(now) or self._global.take(now)
        if wait or self._db is None:
            return wait
        now_us = to_us(now)
        with self._db.write(durable=False) as conn:
            return shared.take(
                conn, f"enroll:ip:{client}", limits.per_ip_rate, limits.per_ip_burst, now_us
            ) or shared.take(conn, "enroll:global", limits.global_rate, limits.global_burst, now_us)


# Failed sign-ins: 10 at once, then one more every 30 s per address and every 60 s per name.
LOGIN_BURST = 10.0
LOGIN_IP_RATE = 1 / 30
LOGIN_NAME_RATE = 1 / 60


class LoginThrottle:
    """Guesses cost tokens; a sign-in is refused (429) while the address or the name has
    none left. Only failures take tokens, so people who type their password right are never
    slowed; an attacker gets ~2 guesses a minute per address, and no more than one a minute
    per name from any number of addresses — and of replicas: the buckets are database rows
    (the price: someone guessing a name can keep its owner out for as long as they keep
    guessing)."""

    @staticmethod
    def _keys(client: str, name: str) -> tuple[tuple[str, float], tuple[str, float]]:
        return (
            (f"login:ip:{client}", LOGIN_IP_RATE),
            (f"login:name:{name.casefold()}", LOGIN_NAME_RATE),
        )

    def wait(self, db: Database, client: str, name: str, now: float) -> float:
        """Seconds until a sign-in may be tried (0: now); takes nothing."""
        with db.read() as conn:
            return max(
                shared.peek(conn, key, rate, LOGIN_BURST, to_us(now))
                for key, rate in self._keys(client, name)
            )

    def failed(self, db: Database, client: str, name: str, now: float) -> None:
        with db.write(durable=False) as conn:
            for key, rate in self._keys(client, name):
                shared.take(conn, key, rate, LOGIN_BURST, to_us(now))
