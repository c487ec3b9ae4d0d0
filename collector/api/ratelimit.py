"""Token buckets for enrollment (one per client address plus one global) and for failed
dashboard sign-ins (one per client address and one per user name).

In memory, per replica: with N replicas the global rate is N times the configured one, which
is fine for a flood guard (the enroll secret and the password are the actual gates).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from proscribe.collector.config import EnrollLimits

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
    def __init__(self, limits: EnrollLimits, clock: Callable[[], float]) -> None:
        self._limits = limits
        self._clock = clock
        self._lock = threading.Lock()
        self._global = TokenBucket(limits.global_rate, limits.global_burst, clock())
        self._per_ip: OrderedDict[str, TokenBucket] = OrderedDict()

    def check(self, client: str) -> float:
        """0 to proceed, else the Retry-After in seconds."""
        now = self._clock()
        with self._lock:
            limits = self._limits
            bucket = lru_bucket(self._per_ip, client, limits.per_ip_rate, limits.per_ip_burst, now)
            wait = bucket.take(now)
            if wait:
                return wait
            return self._global.take(now)


# Failed sign-ins: 10 at once, then one more every 30 s per address and every 60 s per name.
LOGIN_BURST = 10.0
LOGIN_IP_RATE = 1 / 30
LOGIN_NAME_RATE = 1 / 60


class LoginThrottle:
    """Guesses cost tokens; a sign-in is refused (429) while the address or the name has
    none left. Only failures take tokens, so people who type their password right are never
    slowed; an attacker gets ~2 guesses a minute per address, and no more than one a minute
    per name from any number of addresses (the price: someone guessing a name can keep its
    owner out for as long as they keep guessing)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buckets: OrderedDict[tuple[str, str], TokenBucket] = OrderedDict()

    def _bucket(self, key: tuple[str, str], now: float) -> TokenBucket:
        rate = LOGIN_IP_RATE if key[0] == "ip" else LOGIN_NAME_RATE
        return lru_bucket(self._buckets, key, rate, LOGIN_BURST, now)

    def wait(self, client: str, name: str, now: float) -> float:
        """Seconds until a sign-in may be tried (0: now); takes nothing."""
        with self._lock:
            waits = []
            for key in (("ip", client), ("name", name.casefold())):
                bucket = self._bucket(key, now)
                waits.append(bucket.peek(now))
            return max(waits)

    def failed(self, client: str, name: str, now: float) -> None:
        with self._lock:
            for key in (("ip", client), ("name", name.casefold())):
                self._bucket(key, now).take(now)
