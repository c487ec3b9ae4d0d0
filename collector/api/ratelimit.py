"""Token buckets for enrollment: one per client address plus one global.

In memory, per replica: with N replicas the global rate is N times the configured one, which
is fine for a flood guard (the enroll secret is the actual gate).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

from proscribe.collector.config import EnrollLimits

_MAX_TRACKED = 10_000


class TokenBucket:
    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def take(self, now: float) -> float:
        """0 if a token was taken, else the seconds until one will be available."""
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate if self.rate > 0 else 3600.0


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
            bucket = self._per_ip.get(client)
            if bucket is None:
                bucket = TokenBucket(self._limits.per_ip_rate, self._limits.per_ip_burst, now)
                self._per_ip[client] = bucket
                if len(self._per_ip) > _MAX_TRACKED:
                    self._per_ip.popitem(last=False)
            else:
                self._per_ip.move_to_end(client)
            wait = bucket.take(now)
            if wait:
                return wait
            return self._global.take(now)
