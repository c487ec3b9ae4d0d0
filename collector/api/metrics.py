"""Prometheus text exposition, written by hand (a handful of counters and one histogram)."""

from __future__ import annotations

import bisect
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from proscribe.collector.ingest import REJECT_CAUSES

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.events: Counter[str] = Counter()  # stored / duplicate / rejected
        self.dead_letters: Counter[str] = Counter()  # rejected events by cause
        self.requests: Counter[tuple[str, str, int]] = Counter()
        self._hist: dict[str, list[int]] = {}
        self._sum: dict[str, float] = {}
        self._count: Counter[str] = Counter()

    def count_events(self, outcomes: Counter[str], rejected_by_cause: Counter[str]) -> None:
        """Add one batch's verdicts: outcomes (stored/duplicate/rejected) and, for the rejected
        ones, their causes (the events the agent dead-letters)."""
        with self._lock:
            self.events.update(outcomes)
            self.dead_letters.update(rejected_by_cause)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(method, route, status)] += 1
            buckets = self._hist.setdefault(route, [0] * (len(BUCKETS) + 1))
            buckets[bisect.bisect_left(BUCKETS, seconds)] += 1
            self._sum[route] = self._sum.get(route, 0.0) + seconds
            self._count[route] += 1

    def render(self, gauges: dict[str, tuple[str, float]]) -> str:
        out: list[str] = []
        with self._lock:
            out += [
                "# HELP proscribe_events_total Events received from agents, by outcome.",
                "# TYPE proscribe_events_total counter",
            ]
            for outcome in ("stored", "duplicate", "rejected"):
                out.append(f'proscribe_events_total{{outcome="{outcome}"}} {self.events[outcome]}')
            out += [
                "# HELP proscribe_events_dead_letter_total Events refused for good (the agent "
                "dead-letters them), by cause.",
                "# TYPE proscribe_events_dead_letter_total counter",
            ]
            for cause in REJECT_CAUSES:
                out.append(
                    f'proscribe_events_dead_letter_total{{cause="{cause}"}} '
                    f"{self.dead_letters[cause]}"
                )
            out += [
                "# HELP proscribe_http_requests_total HTTP requests by method, route, status.",
                "# TYPE proscribe_http_requests_total counter",
            ]
            for (method, route, status), n in sorted(self.requests.items()):
                out.append(
                    f'proscribe_http_requests_total{{method="{method}",route="{route}",'
                    f'status="{status}"}} {n}'
                )
            out += [
                "# HELP proscribe_http_request_seconds Request latency by route.",
                "# TYPE proscribe_http_request_seconds histogram",
            ]
            for route, counts in sorted(self._hist.items()):
                running = 0
                for bound, n in zip(BUCKETS, counts, strict=False):
                    running += n
                    out.append(
                        f'proscribe_http_request_seconds_bucket{{route="{route}",le="{bound}"}} '
                        f"{running}"
                    )
                running += counts[-1]
                out.append(
                    f'proscribe_http_request_seconds_bucket{{route="{route}",le="+Inf"}} {running}'
                )
                out.append(
                    f'proscribe_http_request_seconds_sum{{route="{route}"}} {self._sum[route]}'
                )
                out.append(f'proscribe_http_request_seconds_count{{route="{route}"}} {running}')
        for name, (help_text, value) in sorted(gauges.items()):
            out += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {value}"]
        return "\n".join(out) + "\n"


class MetricsMiddleware:
    """Pure ASGI (no per-request task overhead); labels are route templates, never raw paths,
    so a scanner cannot blow up the label set."""

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: Callable[[], set[str]]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        holder: dict[str, Any] = {}

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            path = scope.get("path", "")
            route = path if path in self.routes() else "other"
            holder["route"] = route
            self.metrics.observe(scope["method"], route, status, time.perf_counter() - start)
