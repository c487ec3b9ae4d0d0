"""Backoff with full jitter and Retry-After parsing: pure functions of now/attempt/rng."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from proscribe.agent.reporter.backoff import (
    BACKOFF_CAP_SECONDS,
    Backoff,
    backoff_ceiling,
    backoff_delay,
    parse_retry_after,
)

NOW = datetime(2025, 1, 28, 9, 0, 0, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        ("0", 1.0),  # clamped up: never a tight loop
        ("86400", 3600.0),  # clamped down: a day becomes an hour
        ("1e9", 3600.0),
        (None, 60.0),
        ("", 60.0),
        ("soon", 60.0),
        ("-5", 60.0),
        ("nan", 60.0),
        ("inf", 60.0),
        ("Wed, 99 Foo 2025 00:00:00 GMT", 60.0),
    ],
)
def test_retry_after_values(value: str | None, expected: float) -> None:
    assert parse_retry_after(value, NOW) == expected


def test_retry_after_http_date() -> None:
    moment = datetime.fromtimestamp(NOW, UTC) + timedelta(seconds=90)
    assert parse_retry_after(format_datetime(moment, usegmt=True), NOW) == pytest.approx(90)


def test_retry_after_date_in_the_past_and_far_future_are_clamped() -> None:
    past = datetime.fromtimestamp(NOW, UTC) - timedelta(hours=1)
    future = datetime.fromtimestamp(NOW, UTC) + timedelta(days=3)
    assert parse_retry_after(format_datetime(past, usegmt=True), NOW) == 1.0
    assert parse_retry_after(format_datetime(future, usegmt=True), NOW) == 3600.0


def test_ceiling_grows_exponentially_and_is_capped_at_15_minutes() -> None:
    assert [backoff_ceiling(n) for n in range(1, 6)] == [1, 2, 4, 8, 16]
    assert backoff_ceiling(10) == 512
    assert backoff_ceiling(11) == BACKOFF_CAP_SECONDS == 900
    assert backoff_ceiling(10_000) == 900  # no overflow
    assert backoff_ceiling(0) == 0


def test_delay_is_jittered_within_the_window() -> None:
    rng = random.Random(1)
    draws = [backoff_delay(8, rng) for _ in range(200)]
    assert all(0.5 <= d <= 128 for d in draws)
    assert len({round(d, 6) for d in draws}) > 150  # really random, not a fixed schedule
    assert min(draws) < 30 and max(draws) > 100  # spread over the full window
    capped = [backoff_delay(40, rng) for _ in range(200)]
    assert max(capped) <= 900
    assert max(capped) > 800


def test_backoff_state_resets_on_success() -> None:
    b = Backoff(random.Random(7))
    times = [b.failure(NOW) - NOW for _ in range(12)]
    assert b.attempt == 12
    assert times[0] <= 1.0
    assert max(times) <= 900
    b.success()
    assert b.attempt == 0
    assert b.failure(NOW) - NOW <= 1.0


def test_same_seed_same_schedule() -> None:
    a = Backoff(random.Random(3))
    b = Backoff(random.Random(3))
    assert [a.failure(NOW) for _ in range(5)] == [b.failure(NOW) for _ in range(5)]
